//! Network interfaces (`Mirage_net`): Ethernet frames in and out.
//!
//! Frames are lent, not returned: [`Net::try_recv`] hands the next frame to
//! a closure, in whatever buffer the backend read it into, and [`Net::send`]
//! asks the closure to fill a buffer the backend provides (a slot of a
//! shared-memory ring, say). The TCP/IP stack drives an interface with these
//! non-blocking calls and sleeps on [`Net::readable`] between them.

use core::fmt;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What an interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetInfo {
    /// Its MAC address.
    pub mac: MacAddr,
    /// The largest IP packet it carries (the Ethernet header excluded).
    pub mtu: u16,
}

impl NetInfo {
    /// An interface description.
    pub const fn new(mac: MacAddr, mtu: u16) -> NetInfo {
        NetInfo { mac, mtu }
    }

    /// The largest frame: MTU plus the 14-byte Ethernet header.
    pub const fn max_frame(&self) -> usize {
        self.mtu as usize + 14
    }
}

/// Why a network operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The frame is larger than the interface carries.
    TooLarge,
    /// No room to send now (transmit queue full); try again later.
    WouldBlock,
    /// The interface is gone.
    Disconnected,
    /// The host failed.
    Io,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::TooLarge => "frame larger than the MTU",
            Error::WouldBlock => "transmit queue full",
            Error::Disconnected => "interface gone",
            Error::Io => "network I/O failed",
        })
    }
}

/// Counters an interface keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// A checksum an interface completes for the sender (virtio-net's
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`, Linux's `CHECKSUM_PARTIAL`): the 16-bit
/// field `offset` bytes into the data at `start` (a TCP or UDP header)
/// holds the sum of the pseudo-header, folded and not complemented; the
/// checksum is the complement of the sum of the frame's bytes from `start`
/// to its end, that field included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Where the checksummed data begins, from the frame's first byte.
    pub start: u16,
    /// Where the field lies, from `start`.
    pub offset: u16,
    /// TCP segmentation left to the host as well (virtio-net's GSO,
    /// Linux's TSO): 0, or the payload bytes of each segment the host cuts
    /// the frame's one TCP segment into, each segment with its own headers
    /// and checksum. Only where the interface offers it
    /// ([`Net::segmentation_offload`]); `start` is then the TCP header.
    pub segment: u16,
}

impl PartialChecksum {
    /// A checksum to complete, without segmentation.
    pub const fn new(start: u16, offset: u16) -> PartialChecksum {
        PartialChecksum { start, offset, segment: 0 }
    }

    /// Completes the checksum of `frame` in software, as the host would;
    /// false (and `frame` left as it is) if the field lies outside it.
    pub fn complete(self, frame: &mut [u8]) -> bool {
        let (start, field) = (self.start as usize, self.start as usize + self.offset as usize);
        if field + 2 > frame.len() {
            return false;
        }
        let mut sum: u64 = 0;
        let mut chunks = frame[start..].chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            let (s, carry) = sum.overflowing_add(w);
            sum = s + carry as u64;
        }
        let mut rest = chunks.remainder();
        while rest.len() >= 2 {
            let (s, carry) = sum.overflowing_add(u16::from_be_bytes([rest[0], rest[1]]) as u64);
            sum = s + carry as u64;
            rest = &rest[2..];
        }
        if let [b] = rest {
            let (s, carry) = sum.overflowing_add((*b as u64) << 8);
            sum = s + carry as u64;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        frame[field..field + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        true
    }
}

/// `f`, with the checksum it leaves completed in software: for a sender
/// whose interface cannot leave it to the host.
pub fn completing<R>(f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>)) -> impl FnOnce(&mut [u8]) -> R {
    |buf| {
        let (r, partial) = f(buf);
        if let Some(p) = partial {
            p.complete(buf);
        }
        r
    }
}

/// What the host says of a received frame, where the interface passes it
/// on ([`Net::try_recv_meta`]): virtio-net's header flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RxMeta {
    /// The host vouches for the frame's TCP or UDP checksum: it checked it
    /// (`VIRTIO_NET_HDR_F_DATA_VALID`), or the frame never left the host
    /// and the field holds only the pseudo-header's sum, as a sender with
    /// checksum offload leaves it (`VIRTIO_NET_HDR_F_NEEDS_CSUM`). Either
    /// way the field is not to be checked, and in the second case is not a
    /// checksum at all.
    pub checksum_valid: bool,
    /// Of those, the frame whose one TCP or UDP checksum field holds only
    /// the pseudo-header's sum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, Linux's
    /// `CHECKSUM_PARTIAL`): a receiver that passes the packet on (a router)
    /// must send it on with the checksum still left to the host
    /// ([`Net::send_partial`]), or complete it, and must update the field
    /// for a changed address as Linux's `inet_proto_csum_replace4` does for
    /// such a packet (without the complements), and not at all for a
    /// changed port.
    pub partial: bool,
}

impl RxMeta {
    /// A frame whose checksums the host vouches for, or not.
    pub const fn new(checksum_valid: bool) -> RxMeta {
        RxMeta { checksum_valid, partial: false }
    }

    /// What a virtio-net header with `flags` (its first byte) says:
    /// `NEEDS_CSUM` (1) is a partial checksum, `DATA_VALID` (2) one the
    /// host checked.
    pub const fn from_vnet_flags(flags: u8) -> RxMeta {
        let partial = flags & 1 != 0;
        RxMeta { checksum_valid: partial || flags & 2 != 0, partial }
    }
}

/// A network interface carrying Ethernet frames.
pub trait Net {
    /// MAC and MTU.
    fn info(&self) -> NetInfo;

    /// Hands the next received frame to `f`, if one is waiting.
    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, Error>;

    /// As [`Net::try_recv`], with what the host says of the frame. An
    /// interface that says nothing (the default) checks nothing for the
    /// caller: every checksum is the caller's to check.
    fn try_recv_meta<R>(&mut self, f: impl FnOnce(&mut [u8], RxMeta) -> R) -> Result<Option<R>, Error> {
        self.try_recv(|frame| f(frame, RxMeta::default()))
    }

    /// Reads the next received frame into `buf`, with what the host says
    /// of it: the frame's length, which is more than `buf` holds for a
    /// frame too long for it (only `buf.len()` bytes of it were written
    /// then). The default copies what [`Net::try_recv_meta`] lends; an
    /// interface that reads frames into a buffer of its own anyway reads
    /// straight into `buf` instead, one copy fewer.
    fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<(usize, RxMeta)>, Error> {
        self.try_recv_meta(|frame, meta| {
            let n = frame.len().min(buf.len());
            buf[..n].copy_from_slice(&frame[..n]);
            (frame.len(), meta)
        })
    }

    /// Asks for receive offload: from now on the interface may hand over
    /// one TCP segment of up to 64 KiB where the host would have cut it to
    /// the MTU (Linux's TSO and GRO towards a virtio-net guest), and frames
    /// whose checksum the host vouches for ([`RxMeta::checksum_valid`]).
    /// Only a receiver that takes TCP segments whole (a TCP/IP stack, not
    /// a router, which would have to cut them again) asks. The largest
    /// frame [`Net::try_recv_meta`] may now hand over; 0 where the host
    /// does not offer it (the default), and then no frame is longer than
    /// [`NetInfo::max_frame`].
    fn receive_offload(&mut self) -> usize {
        0
    }

    /// Waits until a frame may be waiting (readiness: the next
    /// [`Net::try_recv`] may still find none).
    async fn readable(&mut self) -> Result<(), Error>;

    /// Sends a frame of `len` bytes that `f` writes into the buffer it is
    /// given. Does not wait: [`Error::WouldBlock`] if there is no room.
    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error>;

    /// Whether the host completes checksums of frames sent with
    /// [`Net::send_partial`] (an offload): if not, those checksums are
    /// completed in software, and a sender gains nothing by leaving them.
    fn checksum_offload(&self) -> bool {
        false
    }

    /// The largest frame [`Net::send_partial`] takes when the host cuts it
    /// into TCP segments ([`PartialChecksum::segment`]); 0 where the host
    /// does not (the default), and then no frame may be longer than
    /// [`NetInfo::max_frame`]. An interface offering it also offers
    /// [`Net::checksum_offload`].
    fn segmentation_offload(&self) -> usize {
        0
    }

    /// As [`Net::send`], where `f` may leave one checksum for the host to
    /// complete. Without the offload the interface completes it here.
    fn send_partial<R>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>),
    ) -> Result<R, Error> {
        self.send(len, completing(f))
    }

    /// Sends `frame` as it is, its one checksum and TCP segment left to
    /// the host as [`Net::send_partial`] leaves them. The default copies
    /// it into the buffer `send_partial` gives; an interface that can send
    /// it from where it lies does so, one copy fewer for a frame received
    /// and sent on (hvt's ring sends a frame lent from one of its posted
    /// receive buffers in place, and keeps the buffer until the host has
    /// read it). The caller leaves the frame as it is once sent.
    fn send_frame(&mut self, frame: &mut [u8], partial: Option<PartialChecksum>) -> Result<(), Error> {
        self.send_partial(frame.len(), |buf| {
            buf.copy_from_slice(frame);
            ((), partial)
        })
    }

    /// Waits for the next frame and hands it to `f`.
    async fn recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        let mut f = Some(f);
        loop {
            // `f` is taken only when a frame is there, and then returned.
            if let Some(Some(r)) = self.try_recv(|frame| f.take().map(|f| f(frame)))? {
                return Ok(r);
            }
            self.readable().await?;
        }
    }

    /// Counters.
    fn stats(&self) -> Stats {
        Stats::default()
    }
}

impl<N: Net> Net for &mut N {
    fn info(&self) -> NetInfo {
        (**self).info()
    }
    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, Error> {
        (**self).try_recv(f)
    }
    fn try_recv_meta<R>(&mut self, f: impl FnOnce(&mut [u8], RxMeta) -> R) -> Result<Option<R>, Error> {
        (**self).try_recv_meta(f)
    }
    fn receive_offload(&mut self) -> usize {
        (**self).receive_offload()
    }
    fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<(usize, RxMeta)>, Error> {
        (**self).try_recv_into(buf)
    }
    async fn readable(&mut self) -> Result<(), Error> {
        (**self).readable().await
    }
    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        (**self).send(len, f)
    }
    fn checksum_offload(&self) -> bool {
        (**self).checksum_offload()
    }
    fn segmentation_offload(&self) -> usize {
        (**self).segmentation_offload()
    }
    fn send_partial<R>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>),
    ) -> Result<R, Error> {
        (**self).send_partial(len, f)
    }
    fn send_frame(&mut self, frame: &mut [u8], partial: Option<PartialChecksum>) -> Result<(), Error> {
        (**self).send_frame(frame, partial)
    }
    fn stats(&self) -> Stats {
        (**self).stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_checksums_complete_within_the_frame() {
        // An odd number of bytes after start; the field holds 0x0102.
        let mut f = [0u8, 0, 0x45, 0x00, 0x01, 0x02, 0xff];
        assert!(PartialChecksum::new(2, 2).complete(&mut f));
        // 0x4500 + 0x0102 + 0xff00 = 0x14502 -> 0x4503, complemented.
        assert_eq!(&f[4..6], &(!0x4503u16).to_be_bytes());
        for (start, offset) in [(6, 0), (2, 4), (7, 0), (u16::MAX, u16::MAX)] {
            let before = f;
            assert!(!PartialChecksum::new(start, offset).complete(&mut f), "{start}+{offset}");
            assert_eq!(f, before);
        }
    }
}
