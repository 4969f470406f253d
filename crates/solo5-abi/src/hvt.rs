//! The hvt (KVM) tender interface: hypercalls, boot information, low memory.
//!
//! A guest makes hypercall `nr` by executing `outl %eax, %dx` with
//! `dx = HYPERCALL_PIO_BASE + nr` and `eax` the 32-bit guest-physical
//! address of the argument struct. The tender bounds-checks every address
//! and length before it touches guest memory.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `HVT_ABI_VERSION`.
pub const ABI_VERSION: u32 = 2;
/// `HVT_GUEST_MIN_BASE`: the lowest address an hvt executable may load at.
pub const GUEST_MIN_BASE: u64 = 0x10_0000;
/// `HVT_HYPERCALL_PIO_BASE`: hypercall `nr` is an `outl` to this port + `nr`.
pub const HYPERCALL_PIO_BASE: u16 = 0x500;
/// `HVT_HYPERCALL_MAX`: hypercall numbers are below this.
pub const HYPERCALL_MAX: u16 = 9;
/// `HVT_RING_KICK_PIO_BASE`: an `outl` here wakes the net ring's I/O thread.
pub const RING_KICK_PIO_BASE: u16 = 0x600;
/// Ours, offered with [`FEATURE_RING_SERVE`]: an `outl` here exits to the
/// tender, whose vCPU thread serves the ring's pending entries itself
/// before the guest resumes. Solo5's tenders have no such port.
pub const RING_SERVE_PIO: u16 = 0x601;
/// Ours: an `outl` here with the address of an [`HcBlockFlush`] makes
/// the tender sync a block device to stable storage. Offered only for a
/// device whose manifest entry carries the grant
/// ([`crate::mft::MftEntry::block_flush`]); Solo5's tenders have no such
/// port and never grant it.
pub const BLOCK_FLUSH_PIO: u16 = 0x602;
/// Ours: an `outl` here with the address of an [`HcBlockWrite`] makes the
/// tender write the block device and then sync it, as BLOCK_WRITE and a
/// flush would, in one exit. Offered for a device whose manifest entry
/// carries the grant ([`crate::mft::MftEntry::block_write_sync`]).
pub const BLOCK_WRITE_SYNC_PIO: u16 = 0x603;
/// Ours, offered with [`FEATURE_NET_RX_OFFLOAD`]: an `outl` here with the
/// address of an [`HcNetRxOffload`] asks the tender for receive offload
/// on a network device, as a virtio-net driver sets its guest offloads
/// (`VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET`): from then on a frame read
/// through the ring may be one TCP segment of up to 64 KiB that the host
/// did not cut to the MTU, and its checksum may be partial, as the
/// commit's flags say ([`crate::ring::RingCommit::flags`]). A NET_READ
/// hypercall still reads such frames, without the flags: a guest that
/// asks reads the device through the ring.
pub const NET_RX_OFFLOAD_PIO: u16 = 0x604;
/// `HVT_HALT_COOKIE_MAX`: bytes at a HALT cookie the tender may read.
pub const HALT_COOKIE_MAX: u64 = 512;
/// `HVT_CMDLINE_SIZE`: room for the guest command line, NUL included.
pub const CMDLINE_SIZE: usize = 8192;
/// `X86_BOOT_INFO_BASE`: where [`BootInfo`] is placed; `%rdi` at entry.
pub const BOOT_INFO_BASE: u64 = 0x1_0000;
/// `HVT_FEATURE_RING_IO`: bit of [`BootInfo::host_features`] set when the
/// tender serves the net ring.
pub const FEATURE_RING_IO: u32 = 1 << 0;
/// Ours (Solo5 defines bit 0 only): set with [`FEATURE_RING_IO`] when the
/// tender also serves the ring's pending entries on the vCPU's thread: on
/// an `outl` to [`RING_SERVE_PIO`], and before every hypercall. A guest
/// waiting on the ring asks for it when the I/O thread is asleep or does
/// not answer, so that its progress never depends on that thread being
/// scheduled, and it may leave writes in the ring without waking the
/// thread: the next hypercall (a POLL before it sleeps) sends them. A guest
/// that ignores the bit spins and kicks, as Solo5's do.
pub const FEATURE_RING_SERVE: u32 = 1 << 1;
/// Ours: set with [`FEATURE_RING_IO`] when the tender's taps carry
/// virtio-net headers, which the tender writes and reads itself: a ring
/// write entry may then ask the host to complete its frame's TCP or UDP
/// checksum ([`crate::ring::RingEntry::csum`]). A guest that ignores the
/// bit leaves the field zero and sums its frames itself.
pub const FEATURE_NET_CSUM: u32 = 1 << 2;
/// Ours: set with [`FEATURE_NET_CSUM`] when the tender's taps take
/// segmentation offload (as every tap with virtio-net headers does): a
/// ring write entry that leaves its TCP checksum may then also hold a
/// segment size ([`crate::ring::csum_entry_segmented`]), and its frame may
/// be one TCP segment of up to 64 KiB that the host's kernel cuts into
/// segments of that size (virtio-net's GSO, Linux's TSO).
pub const FEATURE_NET_TSO: u32 = 1 << 3;
/// Ours: set with [`FEATURE_NET_CSUM`] when the tender takes
/// [`NET_RX_OFFLOAD_PIO`], and says in each read's commit what the frame's
/// virtio-net header said ([`crate::ring::RingCommit::flags`]).
pub const FEATURE_NET_RX_OFFLOAD: u32 = 1 << 4;
/// Ours: the ring also takes [`crate::ring::OP_BLOCK_WRITE_SYNC`] for the
/// block devices granted flushes ([`crate::mft::MftEntry::block_flush`]),
/// and the tender sets a ring up for such a device even where no network
/// device is attached. A durable write then costs no exit while the I/O
/// thread is awake: the thread writes and syncs, the vCPU waits in the
/// guest. A guest that ignores the bit makes the BLOCK_WRITE_SYNC_PIO
/// hypercall, as before.
pub const FEATURE_RING_BLOCK: u32 = 1 << 5;
/// Ours: the ring also takes [`crate::ring::OP_NET_POST_READ`], receive
/// buffers the guest posts for the I/O thread to fill as frames arrive,
/// as a virtio-net driver fills its receive queue. The thread takes such
/// an entry at once and keeps the buffer; it blocks in `epoll` on the
/// taps it holds buffers for (and its kick eventfd), and posts a commit,
/// with the entry's id, for each frame it reads into one. A guest that
/// posts reads a device only that way from then on, and consumes commits
/// without waiting for or asking anyone; it makes POLL only when no
/// buffer is filled. The tender's POLL answers at once while commits wait,
/// and otherwise fills the posted buffers of the taps that end its wait
/// itself before it answers, so that a frame never waits for the I/O
/// thread to be scheduled. A guest that ignores the bit reads as Solo5's
/// guests do.
pub const FEATURE_RING_POSTED: u32 = 1 << 6;

/// Default guest memory (512 MiB), as `solo5-hvt`.
pub const DEFAULT_MEM_SIZE: u64 = 0x2000_0000;
/// Guest memory is a whole number of these (`X86_GUEST_PAGE_SIZE`, 2 MiB).
pub const GUEST_PAGE_SIZE: u64 = 0x20_0000;
/// `X86_GUEST_MAX_MEM_SIZE`: at most 4 GiB, so that addresses fit in `eax`.
pub const GUEST_MAX_MEM_SIZE: u64 = 2048 * GUEST_PAGE_SIZE;

/// The hypercall numbers (`HVT_HYPERCALL_*`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    /// Wall-clock time ([`HcWalltime`]).
    Walltime = 1,
    /// Console output ([`HcPuts`]).
    Puts = 2,
    /// Wait for a timeout or network input ([`HcPoll`]).
    Poll = 3,
    /// Block write ([`HcBlockWrite`]).
    BlockWrite = 4,
    /// Block read ([`HcBlockRead`]).
    BlockRead = 5,
    /// Network write ([`HcNetWrite`]).
    NetWrite = 6,
    /// Network read ([`HcNetRead`]).
    NetRead = 7,
    /// Stop the guest ([`HcHalt`]).
    Halt = 8,
}

impl Hypercall {
    /// Decodes a hypercall number; `None` for 0 and anything unknown.
    pub const fn from_nr(nr: u16) -> Option<Hypercall> {
        Some(match nr {
            1 => Hypercall::Walltime,
            2 => Hypercall::Puts,
            3 => Hypercall::Poll,
            4 => Hypercall::BlockWrite,
            5 => Hypercall::BlockRead,
            6 => Hypercall::NetWrite,
            7 => Hypercall::NetRead,
            8 => Hypercall::Halt,
            _ => return None,
        })
    }

    /// The I/O port a guest writes to make this hypercall.
    pub const fn port(self) -> u16 {
        HYPERCALL_PIO_BASE + self as u16
    }
}

/// `struct hvt_hc_walltime`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcWalltime {
    /// OUT: nanoseconds since the Unix epoch.
    pub nsecs: u64,
}

/// `struct hvt_hc_puts`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcPuts {
    /// IN: guest address of the bytes.
    pub data: u64,
    /// IN: number of bytes.
    pub len: u64,
}

/// `struct hvt_hc_poll`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcPoll {
    /// IN: relative timeout in nanoseconds.
    pub timeout_nsecs: u64,
    /// OUT: bit `i` set if the device with manifest index `i` is ready.
    pub ready_set: u64,
    /// OUT: the number of devices ready.
    pub ret: i32,
    /// Padding to the C struct size.
    pub _pad: u32,
}

/// `struct hvt_hc_block_write`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcBlockWrite {
    /// IN: the device handle (manifest index).
    pub handle: u64,
    /// IN: byte offset on the device.
    pub offset: u64,
    /// IN: guest address of the data.
    pub data: u64,
    /// IN: number of bytes.
    pub len: u64,
    /// OUT: a [`crate::SoloResult`].
    pub ret: u32,
    /// Padding to the C struct size.
    pub _pad: u32,
}

/// `struct hvt_hc_block_read`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcBlockRead {
    /// IN: the device handle (manifest index).
    pub handle: u64,
    /// IN: byte offset on the device.
    pub offset: u64,
    /// IN: guest address of the buffer.
    pub data: u64,
    /// IN/OUT: number of bytes.
    pub len: u64,
    /// OUT: a [`crate::SoloResult`].
    pub ret: u32,
    /// Padding to the C struct size.
    pub _pad: u32,
}

/// Ours: the argument of an `outl` to [`BLOCK_FLUSH_PIO`].
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcBlockFlush {
    /// IN: the device handle (manifest index).
    pub handle: u64,
    /// OUT: a [`crate::SoloResult`]: `EINVAL` for a handle that is not a
    /// block device granted flushes.
    pub ret: u32,
    /// Padding to a multiple of 8 bytes.
    pub _pad: u32,
}

/// Ours: the argument of an `outl` to [`NET_RX_OFFLOAD_PIO`], laid out as
/// [`HcBlockFlush`]: IN the device handle, OUT a [`crate::SoloResult`]
/// (`EINVAL` for a handle that is not a network device whose tap carries
/// virtio-net headers, `UNSPEC` if the host refused).
pub type HcNetRxOffload = HcBlockFlush;

/// `struct hvt_hc_net_write`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcNetWrite {
    /// IN: the device handle (manifest index).
    pub handle: u64,
    /// IN: guest address of the frame.
    pub data: u64,
    /// IN: frame length.
    pub len: u64,
    /// OUT: a [`crate::SoloResult`].
    pub ret: u32,
    /// Padding to the C struct size.
    pub _pad: u32,
}

/// `struct hvt_hc_net_read`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcNetRead {
    /// IN: the device handle (manifest index).
    pub handle: u64,
    /// IN: guest address of the buffer.
    pub data: u64,
    /// IN: buffer size; OUT: frame length.
    pub len: u64,
    /// OUT: a [`crate::SoloResult`].
    pub ret: u32,
    /// Padding to the C struct size in Solo5's. Ours: OUT, the flags of
    /// the frame's virtio-net header (`VIRTIO_NET_HDR_F_NEEDS_CSUM`,
    /// `VIRTIO_NET_HDR_F_DATA_VALID`; 0 where the tap has none), as
    /// [`crate::ring::RingCommit::flags`] carries them: what a guest that
    /// asked for receive offload ([`NET_RX_OFFLOAD_PIO`]) reads a frame
    /// with. Solo5's tenders leave it as it is; our guests read it only
    /// from a tender that granted receive offload.
    pub flags: u32,
}

/// `struct hvt_hc_halt`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HcHalt {
    /// IN: guest address of a [`TrapRegs`] (for core dumps), or 0.
    pub cookie: u64,
    /// IN: the exit status of the tender.
    pub exit_status: i32,
    /// Padding to the C struct size.
    pub _pad: u32,
}

/// `struct hvt_boot_info`, at [`BOOT_INFO_BASE`], read-only to the guest.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootInfo {
    /// Guest memory in bytes, the net ring excluded.
    pub mem_size: u64,
    /// End of the loaded executable, page-aligned.
    pub kernel_end: u64,
    /// TSC frequency in Hz.
    pub cpu_cycle_freq: u64,
    /// Guest address of the NUL-terminated command line.
    pub cmdline: u64,
    /// Guest address of the tender's copy of the manifest.
    pub mft: u64,
    /// `HVT_FEATURE_*` bits offered by the tender.
    pub host_features: u32,
    /// Always 0 (reserved for the guest, which never writes it).
    pub guest_features: u32,
    /// Guest address of the [`crate::ring::Ring`], 0 if none.
    pub net_ring: u64,
}

/// `struct x86_trap_regs`: the CPU state at a trap, passed as HALT cookie.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TrapRegs {
    /// Faulting address of a page fault.
    pub cr2: u64,
    /// Error code.
    pub ec: u64,
    /// Instruction pointer.
    pub rip: u64,
    /// Code segment.
    pub cs: u64,
    /// Flags.
    pub rflags: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Stack segment.
    pub ss: u64,
}

/// Fixed low-memory layout of an hvt guest (guest-physical addresses).
pub mod layout {
    /// GDT written by the tender (3 entries).
    pub const GDT_BASE: u64 = 0x1000;
    /// GDTR limit of the tender's GDT.
    pub const GDTR_LIMIT: u16 = 3 * 8 - 1;
    /// PML4 of the tender's page tables (CR3 at entry).
    pub const PML4_BASE: u64 = 0x2000;
    /// PDPT of the tender's page tables.
    pub const PDPT_BASE: u64 = 0x3000;
    /// First of the four page directories (PD0..PD3).
    pub const PDE_BASE: u64 = 0x4000;
    /// 4 KiB page table for the first 2 MiB.
    pub const PT0_BASE: u64 = 0x8000;
    /// Start of the read-only "input from tender" area (boot info onwards).
    pub const INPUT_BASE: u64 = super::BOOT_INFO_BASE;
    /// End of low memory: the guest image starts here.
    pub const INPUT_END: u64 = super::GUEST_MIN_BASE;
}

/// Initial CPU state at the guest entry point.
pub mod cpu {
    /// CR0: PE | MP=0 | NE | WP | PG.
    pub const CR0_INIT: u64 = 0x8001_0021;
    /// CR4: PAE | OSFXSR | OSXMMEXCPT.
    pub const CR4_INIT: u64 = 0x620;
    /// EFER: LME | LMA.
    pub const EFER_INIT: u64 = 0x500;
    /// RFLAGS: reserved bit 1 only (interrupts off).
    pub const RFLAGS_INIT: u64 = 0x2;
    /// Code segment descriptor (selector 0x08): 64-bit, DPL 0.
    pub const GDT_CODE: u64 = 0x00AF_9900_0000_FFFF;
    /// Data segment descriptor (selector 0x10).
    pub const GDT_DATA: u64 = 0x00CF_9300_0000_FFFF;
    /// Selector of [`GDT_CODE`].
    pub const SEL_CODE: u16 = 0x08;
    /// Selector of [`GDT_DATA`].
    pub const SEL_DATA: u16 = 0x10;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn hypercall_argument_layouts_match_solo5() {
        assert_eq!(size_of::<HcWalltime>(), 8);
        assert_eq!(size_of::<HcPuts>(), 16);
        assert_eq!(offset_of!(HcPuts, len), 8);
        assert_eq!(size_of::<HcPoll>(), 24);
        assert_eq!(offset_of!(HcPoll, ready_set), 8);
        assert_eq!(offset_of!(HcPoll, ret), 16);
        assert_eq!(size_of::<HcBlockWrite>(), 40);
        assert_eq!(offset_of!(HcBlockWrite, offset), 8);
        assert_eq!(offset_of!(HcBlockWrite, data), 16);
        assert_eq!(offset_of!(HcBlockWrite, len), 24);
        assert_eq!(offset_of!(HcBlockWrite, ret), 32);
        assert_eq!(size_of::<HcBlockRead>(), 40);
        assert_eq!(offset_of!(HcBlockRead, ret), 32);
        assert_eq!(size_of::<HcBlockFlush>(), 16);
        assert_eq!(offset_of!(HcBlockFlush, ret), 8);
        assert_eq!(size_of::<HcNetWrite>(), 32);
        assert_eq!(offset_of!(HcNetWrite, data), 8);
        assert_eq!(offset_of!(HcNetWrite, len), 16);
        assert_eq!(offset_of!(HcNetWrite, ret), 24);
        assert_eq!(size_of::<HcNetRead>(), 32);
        assert_eq!(offset_of!(HcNetRead, len), 16);
        assert_eq!(offset_of!(HcNetRead, ret), 24);
        assert_eq!(size_of::<HcHalt>(), 16);
        assert_eq!(offset_of!(HcHalt, exit_status), 8);
    }

    #[test]
    fn boot_info_layout_matches_solo5() {
        assert_eq!(size_of::<BootInfo>(), 56);
        assert_eq!(core::mem::align_of::<BootInfo>(), 8);
        assert_eq!(offset_of!(BootInfo, mem_size), 0);
        assert_eq!(offset_of!(BootInfo, kernel_end), 8);
        assert_eq!(offset_of!(BootInfo, cpu_cycle_freq), 16);
        assert_eq!(offset_of!(BootInfo, cmdline), 24);
        assert_eq!(offset_of!(BootInfo, mft), 32);
        assert_eq!(offset_of!(BootInfo, host_features), 40);
        assert_eq!(offset_of!(BootInfo, guest_features), 44);
        assert_eq!(offset_of!(BootInfo, net_ring), 48);
    }

    #[test]
    fn trap_regs_layout_matches_solo5() {
        assert_eq!(size_of::<TrapRegs>(), 56);
        assert_eq!(offset_of!(TrapRegs, rip), 16);
        assert_eq!(offset_of!(TrapRegs, ss), 48);
    }

    #[test]
    fn hypercall_numbers_and_ports() {
        assert_eq!(Hypercall::Walltime.port(), 0x501);
        assert_eq!(Hypercall::Halt.port(), 0x508);
        assert_eq!(Hypercall::from_nr(0), None);
        assert_eq!(Hypercall::from_nr(9), None);
        for nr in 1..HYPERCALL_MAX {
            assert_eq!(Hypercall::from_nr(nr).map(|h| h as u16), Some(nr));
        }
        assert_eq!(GUEST_MAX_MEM_SIZE, 4 << 30);
    }
}
