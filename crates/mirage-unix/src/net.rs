//! A network interface on a Linux tap device.

use std::os::fd::{AsRawFd, OwnedFd};

use mirage_devices::net::{Error, MacAddr, Net, NetInfo, Stats};
use mirage_runtime::{Interest, Source, io};

/// The unikernel's end of a tap device: frames read from and written to it.
/// The unikernel has its own MAC address (the tap's is the host's).
#[derive(Debug)]
pub struct TapNet {
    fd: OwnedFd,
    info: NetInfo,
    rx: Vec<u8>,
    tx: Vec<u8>,
    stats: Stats,
}

impl TapNet {
    /// Attaches to tap interface `ifname`, which must exist and be up;
    /// `mac` is the unikernel's address (a random one if `None`).
    pub fn open(ifname: &str, mac: Option<MacAddr>) -> std::io::Result<TapNet> {
        let (fd, mtu) = tap::attach(ifname)?;
        let mac = match mac {
            Some(m) => m,
            None => MacAddr(tap::generate_mac()?),
        };
        let info = NetInfo::new(mac, mtu);
        Ok(TapNet { fd, info, rx: vec![0; info.max_frame()], tx: vec![0; info.max_frame()], stats: Stats::default() })
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
        // SAFETY: rx is a writable buffer of rx.len() bytes; the descriptor
        // is ours and non-blocking.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), self.rx.as_mut_ptr().cast(), self.rx.len()) };
        if n < 0 {
            return match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
                _ => Err(Error::Io),
            };
        }
        let n = n as usize;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += n as u64;
        Ok(Some(f(&mut self.rx[..n])))
    }

    async fn readable(&mut self) -> Result<(), Error> {
        io::ready(self.source(), Interest::Read).await;
        Ok(())
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        if len > self.tx.len() {
            return Err(Error::TooLarge);
        }
        let r = f(&mut self.tx[..len]);
        // SAFETY: tx holds at least len initialised bytes.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), self.tx.as_ptr().cast(), len) };
        if n < 0 {
            return match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock => Err(Error::WouldBlock),
                _ => Err(Error::Io),
            };
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(r)
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}
