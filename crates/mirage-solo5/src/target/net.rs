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

#[cfg(feature = "spt")]
use solo5_abi::vnet::{VNET_HDR_LEN, vnet_hdr_for};

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
    vnet_hdr: bool,
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
        // Only spt's guest reads its tap itself; a grant on another target
        // would be a tender's mistake, and is not acted on.
        let vnet_hdr = cfg!(feature = "spt") && e.net_vnet_hdr();
        Ok(Net { handle: i as u64, fd: e.hostfd(), info: NetInfo { mac: e.net_mac(), mtu: e.net_mtu() }, vnet_hdr })
    }

    /// The handle (manifest index), as in [`crate::HandleSet`].
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// The interface's MAC and MTU.
    pub fn info(&self) -> NetInfo {
        self.info
    }

    /// Whether the tender granted a virtio-net header before each frame
    /// (`solo5_abi::mft::MftEntry::net_vnet_hdr`, our spt tender).
    /// [`Net::read`] and [`Net::write`] read and write plain frames either
    /// way (the header goes in a second vector of `readv` and `writev`).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Whether the host completes the checksums [`Net::write_partial`]
    /// leaves: on spt where the tender granted the header, on hvt where
    /// the tender offers it in the ring (`FEATURE_NET_CSUM`, ours).
    pub fn checksum_offload(&self) -> bool {
        #[cfg(feature = "hvt")]
        return super::hvt::net_checksum_offload();
        #[cfg(not(feature = "hvt"))]
        self.vnet_hdr
    }

    /// The largest frame [`Net::write_partial`] takes as one TCP segment
    /// for the host to cut (segmentation offload: on spt where the tender
    /// granted the header, on hvt where it offers `FEATURE_NET_TSO`, ours);
    /// 0 where the host does not cut segments.
    pub fn segmentation_offload(&self) -> usize {
        #[cfg(feature = "hvt")]
        return super::hvt::net_segmentation_offload();
        #[cfg(not(feature = "hvt"))]
        if self.vnet_hdr { solo5_abi::vnet::VNET_MAX_SEGMENTED } else { 0 }
    }

    /// Sends one frame, leaving its checksum at `partial` (`csum_start`,
    /// `csum_offset`; the field holds the pseudo-header's sum) for the host
    /// to complete, as virtio-net's `NEEDS_CSUM` does. Where the host cannot
    /// ([`Net::checksum_offload`]), it is completed here first. A third
    /// number other than 0 asks the host to cut the frame's TCP segment
    /// into segments of that many payload bytes
    /// ([`Net::segmentation_offload`]).
    pub fn write_partial(&self, frame: &mut [u8], partial: Option<(u16, u16, u16)>) -> Result<(), Error> {
        #[cfg(feature = "hvt")]
        return super::hvt::net_write_partial(self.handle, frame, partial);
        #[cfg(feature = "spt")]
        if self.vnet_hdr {
            return match vnet_hdr_for(frame, partial) {
                Some(hdr) => super::spt::net_write_hdr(self.fd, &hdr, frame),
                None => Err(Error::Invalid),
            };
        }
        #[cfg(not(feature = "hvt"))]
        {
            if let Some((start, offset, segment)) = partial {
                if segment != 0 {
                    return Err(Error::Invalid);
                }
                mirage_devices::net::PartialChecksum::new(start, offset).complete(frame);
            }
            self.write(frame)
        }
    }

    /// Asks the host for receive offload (ours): from now on a frame read
    /// may be one TCP segment of up to 64 KiB that the host did not cut to
    /// the MTU, whose checksum [`Net::read_meta`] says the host vouches
    /// for (and may have left partial). On spt where the tender granted it
    /// (`solo5_abi::mft::MftEntry::net_rx_offload`), on hvt where the
    /// tender offers it with the ring (`FEATURE_NET_RX_OFFLOAD`). Reads
    /// then need buffers of [`solo5_abi::vnet::VNET_MAX_RECEIVED`] bytes.
    /// [`Error::Unspecified`] where the host does not offer it.
    pub fn rx_offload(&self) -> Result<(), Error> {
        #[cfg(feature = "hvt")]
        super::hvt::net_rx_offload(self.handle)?;
        #[cfg(feature = "spt")]
        {
            let e = &boot().mft[self.handle as usize];
            if !self.vnet_hdr || !e.net_rx_offload() {
                return Err(Error::Unspecified);
            }
            super::spt::net_rx_offload(self.fd)?;
        }
        #[cfg(not(any(feature = "hvt", feature = "spt")))]
        return Err(Error::Unspecified);
        #[cfg(any(feature = "hvt", feature = "spt"))]
        Ok(())
    }

    /// As [`Net::read`], with the flags of the frame's virtio-net header
    /// (`solo5_abi::vnet::VNET_F_NEEDS_CSUM`, `VNET_F_DATA_VALID`): a sum
    /// the host checked (whenever it did), or one it left partial (only
    /// after [`Net::rx_offload`]). 0 where the frame came without a header.
    pub fn read_meta(&self, buf: &mut [u8]) -> Result<(usize, u8), Error> {
        #[cfg(feature = "spt")]
        if self.vnet_hdr {
            let mut hdr = [0u8; VNET_HDR_LEN];
            let n = super::spt::net_read_hdr(self.fd, &mut hdr, buf)?;
            return Ok((n, hdr[0]));
        }
        #[cfg(feature = "hvt")]
        return super::hvt::net_read_meta(self.handle, buf);
        #[cfg(not(feature = "hvt"))]
        platform::net_read(self.handle, self.fd, buf).map(|n| (n, 0))
    }

    /// Reads one frame and lends it to `f` with its header's flags (as
    /// [`Net::read_meta`] gives them) where it was read, instead of copying
    /// it into a buffer of the caller's, of `size` bytes: `f`'s result and
    /// the frame's length. `None`, and `f` not called, where frames are not
    /// read that way (only hvt's ring reads them into buffers of its own)
    /// or not now: the caller then reads with [`Net::read_meta`].
    pub fn read_lent<R>(&self, size: usize, f: impl FnOnce(&mut [u8], u8) -> R) -> Option<Result<(usize, R), Error>> {
        #[cfg(feature = "hvt")]
        return super::hvt::net_read_lent(self.handle, size, f);
        #[cfg(not(feature = "hvt"))]
        {
            let _ = (size, f);
            None
        }
    }

    /// Reads one frame into `buf`; its length, or [`Error::Again`] if none
    /// is waiting. `buf` should hold `mtu + 14` bytes (or, after
    /// [`Net::rx_offload`], [`solo5_abi::vnet::VNET_MAX_RECEIVED`]).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        #[cfg(feature = "spt")]
        if self.vnet_hdr {
            // The header is dropped: a reader that asked for receive
            // offload reads with Net::read_meta.
            let mut hdr = [0u8; VNET_HDR_LEN];
            return super::spt::net_read_hdr(self.fd, &mut hdr, buf);
        }
        platform::net_read(self.handle, self.fd, buf)
    }

    /// Sends a frame of `len` bytes that `fill` writes where the host reads
    /// it (on hvt, the ring's arena), returning its result and the checksum
    /// it leaves for the host as [`Net::write_partial`] takes it. `None`,
    /// and `fill` not called, where that cannot be done now: the caller
    /// then writes the frame into a buffer of its own and sends it.
    #[allow(clippy::type_complexity)]
    pub fn write_in_place<R>(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(R, Option<(u16, u16, u16)>), Error>,
    ) -> Option<Result<R, Error>> {
        #[cfg(feature = "hvt")]
        return super::hvt::net_write_in_place(self.handle, len, fill);
        #[cfg(not(feature = "hvt"))]
        {
            let _ = (len, fill);
            None
        }
    }

    /// Sends one frame.
    pub fn write(&self, frame: &[u8]) -> Result<(), Error> {
        #[cfg(feature = "spt")]
        if self.vnet_hdr {
            return super::spt::net_write_hdr(self.fd, &[0u8; VNET_HDR_LEN], frame);
        }
        platform::net_write(self.handle, self.fd, frame)
    }
}
