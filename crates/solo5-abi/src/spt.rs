//! The spt (seccomp) tender interface.
//!
//! The guest runs inside the tender's process: guest address = host virtual
//! address, memory mapped from [`HOST_MEM_BASE`]. The tender jumps to the
//! entry point with `%rdi` = [`BOOT_INFO_BASE`]; the guest then talks to the
//! host only through the raw system calls the seccomp filter allows.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `SPT_ABI_VERSION`.
pub const ABI_VERSION: u32 = 2;
/// `SPT_GUEST_MIN_BASE`.
pub const GUEST_MIN_BASE: u64 = 0x10_0000;
/// `SPT_HOST_MEM_BASE`: guest memory is mapped from here (`vm.mmap_min_addr`).
pub const HOST_MEM_BASE: u64 = 0x1_0000;
/// `SPT_BOOT_INFO_BASE`.
pub const BOOT_INFO_BASE: u64 = 0x1_1000;
/// `SPT_CMDLINE_SIZE`.
pub const CMDLINE_SIZE: usize = 8192;
/// `SPT_INTERNAL_TIMERFD`: epoll data of the tender's timerfd.
pub const INTERNAL_TIMERFD: u64 = !1u32 as u64;
/// Default guest memory (512 MiB).
pub const DEFAULT_MEM_SIZE: u64 = 0x2000_0000;

/// `struct spt_boot_info`, at [`BOOT_INFO_BASE`].
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootInfo {
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// End of the loaded executable, page-aligned.
    pub kernel_end: u64,
    /// Address of the NUL-terminated command line.
    pub cmdline: u64,
    /// Address of the tender's copy of the manifest (with host fds).
    pub mft: u64,
    /// The epoll instance holding the timerfd and every NIC.
    pub epollfd: i32,
    /// A `CLOCK_MONOTONIC` timerfd for `solo5_yield` deadlines.
    pub timerfd: i32,
}

/// x86_64 Linux system call numbers the spt bindings use.
pub mod sys {
    /// `read`.
    pub const READ: u64 = 0;
    /// `write`.
    pub const WRITE: u64 = 1;
    /// `pread64`.
    pub const PREAD64: u64 = 17;
    /// `readv` (a frame behind its virtio-net header, on a tap granted
    /// one; ours).
    pub const READV: u64 = 19;
    /// `writev` (as `readv`).
    pub const WRITEV: u64 = 20;
    /// `pwrite64`.
    pub const PWRITE64: u64 = 18;
    /// `ioctl` (`TUNSETOFFLOAD` with receive offload's flags, on a tap
    /// granted it; ours).
    pub const IOCTL: u64 = 16;
    /// `fdatasync` (a flush of a block device granted flushes; ours).
    pub const FDATASYNC: u64 = 75;
    /// `arch_prctl`.
    pub const ARCH_PRCTL: u64 = 158;
    /// `clock_gettime`.
    pub const CLOCK_GETTIME: u64 = 228;
    /// `exit_group`.
    pub const EXIT_GROUP: u64 = 231;
    /// `epoll_pwait`.
    pub const EPOLL_PWAIT: u64 = 281;
    /// `timerfd_settime`.
    pub const TIMERFD_SETTIME: u64 = 286;
    /// `CLOCK_REALTIME`.
    pub const CLOCK_REALTIME: u64 = 0;
    /// `CLOCK_MONOTONIC`.
    pub const CLOCK_MONOTONIC: u64 = 1;
    /// `TFD_TIMER_ABSTIME`.
    pub const TFD_TIMER_ABSTIME: u64 = 1;
    /// `ARCH_SET_FS`.
    pub const ARCH_SET_FS: u64 = 0x1002;
    /// `EAGAIN`, negated as the kernel returns it.
    pub const EAGAIN: i64 = -11;
    /// `EINTR`, negated as the kernel returns it.
    pub const EINTR: i64 = -4;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn boot_info_layout_matches_solo5() {
        assert_eq!(size_of::<BootInfo>(), 40);
        assert_eq!(offset_of!(BootInfo, kernel_end), 8);
        assert_eq!(offset_of!(BootInfo, cmdline), 16);
        assert_eq!(offset_of!(BootInfo, mft), 24);
        assert_eq!(offset_of!(BootInfo, epollfd), 32);
        assert_eq!(offset_of!(BootInfo, timerfd), 36);
        assert_eq!(INTERNAL_TIMERFD, 0xFFFF_FFFE);
    }
}
