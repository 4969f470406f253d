//! The hvt network ring (`include/hvt_ring.h`, Solo5 v0.11 and later).
//!
//! A single-producer, single-consumer ring in guest memory carries network
//! requests from the guest to an I/O thread of the tender, so that a packet
//! does not cost a VM exit. The guest fills an [`RingEntry`] and advances
//! `ent_tail`; the tender's thread performs the write or read on the tap
//! device, advances `ent_head` and, for reads, posts a [`RingCommit`] at
//! `com_tail`. When the thread has gone to sleep it sets `needs_kick`, and
//! the guest wakes it by writing to port [`crate::hvt::RING_KICK_PIO_BASE`]
//! (an ioeventfd, so KVM signals the thread without leaving the kernel).
//!
//! Our tenders also carry durable block writes on it where they offer
//! [`crate::hvt::FEATURE_RING_BLOCK`] ([`OP_BLOCK_WRITE_SYNC`]): the one
//! entry whose `ent_head` moves before the work is done, and whose commit
//! says when it is.
//!
//! Indices are free-running `u32`s; the slot is `index & RING_MASK`.
//! Every field is an atomic: the two sides run concurrently on shared
//! memory, and either may be hostile to the other.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

/// `HVT_RING_SIZE`: entries (and commits) in the ring.
pub const RING_SIZE: u32 = 1024;
/// `HVT_RING_MASK`.
pub const RING_MASK: u32 = RING_SIZE - 1;
/// `HVT_RING_BUF_SIZE`: the largest frame the guest sends through the ring;
/// larger frames go through the NET_WRITE hypercall.
pub const RING_BUF_SIZE: usize = 2048;
/// `HVT_RING_POLL_ITERS`: spins of the I/O thread before it sleeps.
pub const RING_POLL_ITERS: u32 = 4096;
/// `HVT_RING_NET_WRITE`.
pub const OP_NET_WRITE: u32 = 1;
/// `HVT_RING_NET_READ`.
pub const OP_NET_READ: u32 = 2;
/// Ours, where the tender offers [`crate::hvt::FEATURE_RING_BLOCK`]: the
/// write of `len` bytes at `data` to the block device `handle`, at the
/// byte offset held in [`RingEntry::csum`], then a flush of the device, as
/// [`crate::hvt::BLOCK_WRITE_SYNC_PIO`] does. The tender moves `ent_head`
/// past the entry when it takes it, before the write (the bytes are the
/// guest's own buffer, not the arena's), so that a guest waiting for the
/// commit knows the thread is at work and not asleep; the commit (`ret`,
/// and `len` the bytes written) is posted once the flush is done. A device
/// not granted flushes, or a range outside it, gets `ret` EINVAL and
/// nothing is written. Solo5's tenders skip the unknown operation.
pub const OP_BLOCK_WRITE_SYNC: u32 = 0x100;
/// Ours, where the tender offers [`crate::hvt::FEATURE_RING_POSTED`]: a
/// receive buffer of `len` bytes at `data` for the network device
/// `handle`. The tender takes the entry at once (moves `ent_head` past it)
/// and keeps the buffer; a guest that posts more than [`RING_SIZE`] of them
/// in all, or a buffer that is not writable guest memory, is stopped. The
/// buffers of a device are filled one frame each, the one posted last
/// first (so that buffers given back and posted again are used while warm
/// in the caches, and the pages of those light traffic never needs are
/// never touched, nor backed by the host), and each filled buffer gets a
/// commit with the entry's id, its length and its header's flags: a
/// device's commits come in the order its frames arrived. A frame is read into a buffer only while fewer than
/// [`RING_SIZE`] commits wait for the guest. A failed read of the tap uses
/// the buffer up, committed with `ret` EINVAL. A buffer of no bytes, or for
/// a handle that is not a network device, is committed at once with `ret`
/// EINVAL. Once a device has buffers posted, the tender waits on its tap
/// for as long as the guest runs. Entries are served in the ring's order,
/// a write's frame sent before the next entry is taken: a guest may send a
/// frame from a filled buffer ([`OP_NET_WRITE`] with `data` in it, as a
/// router sends on what it received) and post the buffer again in a later
/// entry at once. Solo5's tenders skip the unknown operation.
pub const OP_NET_POST_READ: u32 = 0x101;

/// `struct hvt_ring_entry`: one request from the guest.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingEntry {
    /// [`OP_NET_WRITE`], [`OP_NET_READ`], [`OP_BLOCK_WRITE_SYNC`] or
    /// [`OP_NET_POST_READ`].
    pub operation: AtomicU32,
    /// The device handle (manifest index).
    pub handle: AtomicU32,
    /// Guest address of the frame or buffer.
    pub data: AtomicU64,
    /// Frame length or buffer size.
    pub len: AtomicU32,
    /// Request id, echoed in the commit.
    pub id: AtomicU32,
    /// Reserved in Solo5's ring. Ours, where the tender offers
    /// [`crate::hvt::FEATURE_NET_CSUM`]: on a write, 0, or a checksum the
    /// host is to complete ([`csum_entry`]); on an [`OP_BLOCK_WRITE_SYNC`],
    /// the byte offset on the device.
    pub csum: AtomicU64,
}

/// Bit 32 of [`RingEntry::csum`]: the checksum is to be completed.
pub const CSUM_NEEDED: u64 = 1 << 32;

/// The [`RingEntry::csum`] of a frame whose checksum the host completes:
/// the field at `offset` from `start` (virtio-net's `csum_start` and
/// `csum_offset`, in bits 0 to 15 and 16 to 31) holds the pseudo-header's
/// sum.
pub const fn csum_entry(start: u16, offset: u16) -> u64 {
    CSUM_NEEDED | start as u64 | (offset as u64) << 16
}

/// The [`RingEntry::csum`] of a frame whose checksum the host completes
/// (as [`csum_entry`]) and whose one TCP segment (its header at `start`)
/// it cuts into segments of `segment` payload bytes (bits 48 to 63), where
/// the tender offers [`crate::hvt::FEATURE_NET_TSO`].
pub const fn csum_entry_segmented(start: u16, offset: u16, segment: u16) -> u64 {
    csum_entry(start, offset) | (segment as u64) << 48
}

/// A [`RingEntry::csum`] that asks for a field outside its frame, for
/// segmentation where it is not offered, or sets unknown bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCsum;

/// What [`RingEntry::csum`] asks of a frame of `len` bytes: nothing, or a
/// checksum (`csum_start`, `csum_offset`) and a segment size (0: none; only
/// where `segmentation` is offered).
pub fn csum_request(csum: u64, len: u32, segmentation: bool) -> Result<Option<(u16, u16, u16)>, BadCsum> {
    if csum == 0 {
        return Ok(None);
    }
    let segment = (csum >> 48) as u16;
    if (csum >> 32) & 0xffff != 1 || (segment != 0 && !segmentation) {
        return Err(BadCsum);
    }
    let (start, offset) = (csum as u16, (csum >> 16) as u16);
    if start as u64 + offset as u64 + 2 > len as u64 {
        return Err(BadCsum);
    }
    Ok(Some((start, offset, segment)))
}

/// `struct hvt_ring_commit`: the completion of a read (or of an
/// [`OP_BLOCK_WRITE_SYNC`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingCommit {
    /// The id of the request.
    pub id: AtomicU32,
    /// A [`crate::SoloResult`].
    pub ret: AtomicU32,
    /// Bytes read.
    pub len: AtomicU32,
    /// Reserved in Solo5's ring. Ours, where the tender offers
    /// [`crate::hvt::FEATURE_NET_RX_OFFLOAD`]: the flags of the frame's
    /// virtio-net header (`VIRTIO_NET_HDR_F_NEEDS_CSUM`,
    /// `VIRTIO_NET_HDR_F_DATA_VALID`; [`crate::vnet::vnet_checksum_valid`]),
    /// 0 where the tap has none.
    pub flags: AtomicU32,
}

/// `struct hvt_ring`: indices on separate cache lines, then the entries and
/// the commits.
#[repr(C)]
#[derive(Debug)]
pub struct Ring {
    /// Written by the guest: next entry to fill.
    pub ent_tail: AtomicU32,
    /// Written by the guest: next commit to consume.
    pub com_head: AtomicU32,
    // Atomic like every other byte of the ring, which the guest may write
    // at any time: a `&Ring` over plain bytes another party writes would
    // not be sound.
    _pad0: [AtomicU8; 56],
    /// Written by the tender: next entry to process.
    pub ent_head: AtomicU32,
    /// Written by the tender: next commit to post.
    pub com_tail: AtomicU32,
    /// Written by the tender: non-zero when its thread sleeps and must be kicked.
    pub needs_kick: AtomicU32,
    _pad1: [AtomicU8; 52],
    /// Requests.
    pub entries: [RingEntry; RING_SIZE as usize],
    /// Completions of reads.
    pub commits: [RingCommit; RING_SIZE as usize],
}

/// `sizeof(struct hvt_ring)`.
pub const RING_STRUCT_SIZE: usize = core::mem::size_of::<Ring>();

/// Guest memory reserved for the ring: its size rounded up to a 2 MiB page.
pub const RING_RESERVED_SIZE: u64 = crate::hvt::GUEST_PAGE_SIZE;

const _: () = assert!(RING_STRUCT_SIZE as u64 <= RING_RESERVED_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn ring_layout_matches_solo5() {
        assert_eq!(size_of::<RingEntry>(), 32);
        assert_eq!(offset_of!(RingEntry, handle), 4);
        assert_eq!(offset_of!(RingEntry, data), 8);
        assert_eq!(offset_of!(RingEntry, len), 16);
        assert_eq!(offset_of!(RingEntry, id), 20);
        assert_eq!(size_of::<RingCommit>(), 16);
        assert_eq!(core::mem::align_of::<RingCommit>(), 4);
        assert_eq!(offset_of!(RingCommit, ret), 4);
        assert_eq!(offset_of!(RingCommit, len), 8);
        assert_eq!(size_of::<Ring>(), 49_280);
        assert_eq!(offset_of!(Ring, com_head), 4);
        assert_eq!(offset_of!(Ring, ent_head), 64);
        assert_eq!(offset_of!(Ring, com_tail), 68);
        assert_eq!(offset_of!(Ring, needs_kick), 72);
        assert_eq!(offset_of!(Ring, entries), 128);
        assert_eq!(offset_of!(Ring, commits), 32_896);
        assert_eq!(offset_of!(RingEntry, csum), 24);
    }

    #[test]
    fn csum_requests_are_checked_against_the_frame() {
        assert_eq!(csum_request(0, 0, false), Ok(None));
        assert_eq!(csum_request(csum_entry(34, 16), 54, false), Ok(Some((34, 16, 0))));
        assert_eq!(csum_request(csum_entry(34, 16), 51, false), Err(BadCsum), "the field ends past the frame");
        assert_eq!(csum_request(csum_entry(u16::MAX, u16::MAX), u32::MAX, false), Ok(Some((u16::MAX, u16::MAX, 0))));
        assert_eq!(csum_request(csum_entry(u16::MAX, u16::MAX), 131_071, false), Err(BadCsum));
        assert_eq!(csum_request(34 | 16 << 16, 1000, false), Err(BadCsum), "without the bit");
        assert_eq!(csum_request(csum_entry(34, 16) | 1 << 40, 1000, true), Err(BadCsum), "unknown bits");
        let seg = csum_entry_segmented(34, 16, 1448);
        assert_eq!(csum_request(seg, 65_000, true), Ok(Some((34, 16, 1448))));
        assert_eq!(csum_request(seg, 65_000, false), Err(BadCsum), "segmentation not offered");
        assert_eq!(csum_request(seg, 40, true), Err(BadCsum), "the field ends past the frame");
    }
}
