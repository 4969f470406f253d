//! Network interfaces (`solo5_net_*`): Ethernet frames in and out of a
//! device the manifest declares.

use solo5_abi::mft::{self, MftType};

use super::{boot, platform};
use crate::Error;

/// Whether frames go through the tender's shared-memory ring (hvt, when the
/// tender offers one) or through one hypercall each. The ring is the
/// default and the faster; turning it off is for measurements.
pub fn use_ring(enabled: bool) {
    #[cfg(feature = "hvt")]
    super::hvt::set_ring_enabled(enabled);
    #[cfg(not(feature = "hvt"))]
    let _ = enabled;
}

/// What the tender attached for an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetInfo {
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU of the host interface (the largest IP packet, Ethernet header
    /// excluded).
    pub mtu: u16,
}

/// An acquired network interface.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    handle: u64,
    fd: i32,
    info: NetInfo,
}

impl Net {
    /// Acquires the interface the manifest names `name`.
    pub fn acquire(name: &str) -> Result<Net, Error> {
        let entries = boot().mft;
        let i = mft::find_by_name(entries, name, MftType::NetBasic).ok_or(Error::Invalid)?;
        let e = &entries[i];
        if e.attached == 0 {
            return Err(Error::Invalid);
        }
        Ok(Net { handle: i as u64, fd: e.hostfd(), info: NetInfo { mac: e.net_mac(), mtu: e.net_mtu() } })
    }

    /// The handle (manifest index), as in [`crate::HandleSet`].
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// The interface's MAC and MTU.
    pub fn info(&self) -> NetInfo {
        self.info
    }

    /// Reads one frame into `buf`; its length, or [`Error::Again`] if none
    /// is waiting. `buf` should hold `mtu + 14` bytes.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        platform::net_read(self.handle, self.fd, buf)
    }

    /// Sends one frame.
    pub fn write(&self, frame: &[u8]) -> Result<(), Error> {
        platform::net_write(self.handle, self.fd, frame)
    }
}
