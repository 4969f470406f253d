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

/// A network interface carrying Ethernet frames.
pub trait Net {
    /// MAC and MTU.
    fn info(&self) -> NetInfo;

    /// Hands the next received frame to `f`, if one is waiting.
    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, Error>;

    /// Waits until a frame may be waiting (readiness: the next
    /// [`Net::try_recv`] may still find none).
    async fn readable(&mut self) -> Result<(), Error>;

    /// Sends a frame of `len` bytes that `f` writes into the buffer it is
    /// given. Does not wait: [`Error::WouldBlock`] if there is no room.
    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error>;

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
    async fn readable(&mut self) -> Result<(), Error> {
        (**self).readable().await
    }
    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        (**self).send(len, f)
    }
    fn stats(&self) -> Stats {
        (**self).stats()
    }
}
