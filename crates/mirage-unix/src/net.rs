//! A network interface on a Linux tap device.

use std::os::fd::{AsRawFd, OwnedFd};

use mirage_devices::net::{Error, MacAddr, Net, NetInfo, PartialChecksum, RxMeta, Stats};
use mirage_runtime::{Interest, Source, io};

/// The virtio-net header of `frame`, sent with `partial` left to the
/// kernel: a frame longer than the MTU (`max_frame`) goes out only as a
/// segment the kernel cuts.
fn vnet_hdr(
    frame: &[u8],
    partial: Option<PartialChecksum>,
    max_frame: usize,
) -> Result<[u8; tap::VNET_HDR_LEN], Error> {
    match tap::vnet_hdr_for(frame, partial.map(|p| (p.start, p.offset, p.segment))) {
        Some(h) if frame.len() <= max_frame || partial.is_some_and(|p| p.segment != 0) => Ok(h),
        _ => Err(Error::TooLarge),
    }
}

/// The unikernel's end of a tap device: frames read from and written to it.
/// The unikernel has its own MAC address (the tap's is the host's).
///
/// The tap is opened with virtio-net headers, so that the host's kernel
/// completes the TCP checksums of what the stack sends
/// ([`Net::checksum_offload`]); each frame read or written is preceded by
/// a header ([`tap::VNET_HDR_LEN`] bytes), kept at the front of `tx` and
/// read into a vector of its own. The header also lets the stack hand over TCP segments of up to
/// 64 KiB for the kernel to cut to the MTU ([`Net::segmentation_offload`]),
/// and, where the stack asks, take such segments whole the other way
/// ([`Net::receive_offload`]).
#[derive(Debug)]
pub struct TapNet {
    fd: OwnedFd,
    info: NetInfo,
    /// Bytes of header before each frame: 0 or [`tap::VNET_HDR_LEN`].
    hdr: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    stats: Stats,
}

impl TapNet {
    /// Attaches to tap interface `ifname`, which must exist and be up;
    /// `mac` is the unikernel's address (a random one if `None`).
    pub fn open(ifname: &str, mac: Option<MacAddr>) -> std::io::Result<TapNet> {
        let (fd, mtu, vnet) = tap::attach_with(ifname, true)?;
        let mac = match mac {
            Some(m) => m,
            None => MacAddr(tap::generate_mac()?),
        };
        let info = NetInfo::new(mac, mtu);
        let hdr = if vnet { tap::VNET_HDR_LEN } else { 0 };
        let tx_frame = if vnet { tap::VNET_MAX_SEGMENTED.max(info.max_frame()) } else { info.max_frame() };
        let (rx, tx) = (vec![0; info.max_frame()], vec![0; hdr + tx_frame]);
        Ok(TapNet { fd, info, hdr, rx, tx, stats: Stats::default() })
    }

    /// Counts a frame of `len` bytes written (`n`, `write`'s result).
    fn sent(&mut self, n: isize, len: usize) -> Result<(), Error> {
        if n < 0 {
            return match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock => Err(Error::WouldBlock),
                _ => Err(Error::Io),
            };
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }

    fn source(&self) -> Source {
        Source(self.fd.as_raw_fd() as u64)
    }
}

impl Net for TapNet {
    fn info(&self) -> NetInfo {
        self.info
    }

    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, Error> {
        self.try_recv_meta(|frame, _| f(frame))
    }

    fn try_recv_meta<R>(&mut self, f: impl FnOnce(&mut [u8], RxMeta) -> R) -> Result<Option<R>, Error> {
        let mut rx = core::mem::take(&mut self.rx);
        let got = self.try_recv_into(&mut rx);
        let r = got.map(|got| got.map(|(n, meta)| f(&mut rx[..n], meta)));
        self.rx = rx;
        r
    }

    fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<(usize, RxMeta)>, Error> {
        // Straight into the caller's buffer, the header into a vector of
        // its own.
        // SAFETY: buf is a writable buffer of buf.len() bytes; the
        // descriptor is ours and non-blocking.
        let (n, flags) =
            unsafe { tap::read_frame_flags(self.fd.as_raw_fd(), self.hdr != 0, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
                _ => Err(Error::Io),
            };
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += n as u64;
        Ok(Some((n as usize, RxMeta::from_vnet_flags(flags))))
    }

    fn receive_offload(&mut self) -> usize {
        if self.hdr == 0 || tap::receive_offload(&self.fd).is_err() {
            return 0;
        }
        // A frame longer than the buffer would be cut: from the next
        // read on it holds the largest segment.
        self.rx.resize(tap::VNET_MAX_RECEIVED.max(self.info.max_frame()), 0);
        self.rx.len()
    }

    async fn readable(&mut self) -> Result<(), Error> {
        io::ready(self.source(), Interest::Read).await;
        Ok(())
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        self.send_partial(len, |buf| (f(buf), None))
    }

    fn checksum_offload(&self) -> bool {
        self.hdr != 0
    }

    fn segmentation_offload(&self) -> usize {
        if self.hdr != 0 { self.tx.len() - self.hdr } else { 0 }
    }

    fn send_partial<R>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>),
    ) -> Result<R, Error> {
        if len > self.info.max_frame() && (self.hdr == 0 || len > self.tx.len() - self.hdr) {
            return Err(Error::TooLarge);
        }
        let (hdr, frame) = self.tx[..self.hdr + len].split_at_mut(self.hdr);
        let (r, partial) = f(frame);
        if self.hdr != 0 {
            hdr.copy_from_slice(&vnet_hdr(frame, partial, self.info.max_frame())?);
        } else if let Some(p) = partial {
            p.complete(frame);
        }
        let total = self.hdr + len;
        // SAFETY: tx holds at least `total` initialised bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), self.tx.as_ptr().cast(), total) };
        self.sent(n, len)?;
        Ok(r)
    }

    fn send_frame(&mut self, frame: &mut [u8], partial: Option<PartialChecksum>) -> Result<(), Error> {
        let len = frame.len();
        if len > self.info.max_frame() && (self.hdr == 0 || len > self.tx.len() - self.hdr) {
            return Err(Error::TooLarge);
        }
        // Written from where it lies, behind its header: no copy into tx.
        let vnet = if self.hdr != 0 {
            vnet_hdr(frame, partial, self.info.max_frame())?
        } else {
            if let Some(p) = partial {
                p.complete(frame);
            }
            [0; tap::VNET_HDR_LEN]
        };
        // SAFETY: `frame` is a live slice of `len` bytes.
        let n = unsafe { tap::write_frame(self.fd.as_raw_fd(), self.hdr != 0, vnet, frame.as_ptr(), len) };
        self.sent(n, len)
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}
