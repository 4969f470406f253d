//! The spt platform: the guest runs inside the tender's process and talks to
//! the host with the raw system calls the tender's seccomp filter allows
//! (anything else ends the process with SIGSYS).

use core::arch::{asm, global_asm};

use solo5_abi::spt::{BootInfo, sys};

use super::{Boot, Global, rt};
use crate::Error;

global_asm!(
    super::notes::solo5_notes_asm!(),
    r#"
    .section .text.boot, "ax"
    .global _start
    .type _start, @function
_start:
    /* %rdi = boot information, %rsp = top of guest memory - 8. */
    xorl %ebp, %ebp
    jmp mirage_solo5_spt_start
    .size _start, . - _start
"#,
    abi_target = const solo5_abi::note::AbiTarget::Spt as u32,
    options(att_syntax)
);

/// A raw system call with one argument; the kernel's result (a negative
/// errno on failure).
///
/// # Safety
/// The call and its arguments must be valid for the kernel, and every
/// pointer among them must name memory valid for what the kernel does with
/// it (read or written, and how much): the kernel writes through pointers
/// without Rust's knowledge.
#[inline(always)]
unsafe fn syscall1(nr: u64, a0: u64) -> i64 {
    let ret: i64;
    // SAFETY: a raw system call; the kernel reads only the registers given
    // and clobbers rcx and r11; the caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a0, lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

/// [`syscall1`] with two arguments.
///
/// # Safety
/// As [`syscall1`].
#[inline(always)]
unsafe fn syscall2(nr: u64, a0: u64, a1: u64) -> i64 {
    let ret: i64;
    // SAFETY: as syscall1.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a0, in("rsi") a1, lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

/// [`syscall1`] with four arguments.
///
/// # Safety
/// As [`syscall1`].
#[inline(always)]
unsafe fn syscall4(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    // SAFETY: as syscall1.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a0, in("rsi") a1, in("rdx") a2, in("r10") a3,
             lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

/// [`syscall1`] with six arguments.
///
/// # Safety
/// As [`syscall1`].
#[inline(always)]
unsafe fn syscall6(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: as syscall1.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a0, in("rsi") a1, in("rdx") a2, in("r10") a3,
             in("r8") a4, in("r9") a5, lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

#[repr(C)]
#[derive(Default)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Itimerspec {
    interval: Timespec,
    value: Timespec,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct EpollEvent {
    events: u32,
    data: u64,
}

/// Blocking waits made (see `super::exits`).
pub(crate) static EXITS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

struct Fds {
    epoll: i32,
    timer: i32,
    /// NICs in the wait set: the size of the events buffer.
    npollfds: usize,
}

static FDS: Global<Fds> = Global::new(Fds { epoll: -1, timer: -1, npollfds: 0 });

/// The entry point's Rust half.
#[unsafe(no_mangle)]
extern "C" fn mirage_solo5_spt_start(bi: *const BootInfo) -> ! {
    // SAFETY: the tender wrote the boot information at this address.
    let bi = unsafe { bi.read() };
    let mft = super::manifest(bi.mft);
    let nics = mft.iter().filter(|e| e.mtype == solo5_abi::mft::MftType::NetBasic as u32).count();
    FDS.with(|f| *f = Fds { epoll: bi.epollfd, timer: bi.timerfd, npollfds: nics });
    rt::start(Boot { mem_size: bi.mem_size, cmdline: super::cstr(bi.cmdline, solo5_abi::spt::CMDLINE_SIZE), mft })
}

pub(crate) fn puts(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) reads bytes.len() bytes of a live slice.
        let n = unsafe { syscall4(sys::WRITE, 1, bytes.as_ptr() as u64, bytes.len() as u64, 0) };
        if n == sys::EINTR {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

pub(crate) fn halt(status: i32, _cookie: u64) -> ! {
    loop {
        // SAFETY: exit_group(2) takes no pointer.
        unsafe { syscall1(sys::EXIT_GROUP, status as u32 as u64) };
    }
}

fn clock(id: u64) -> u64 {
    let mut ts = Timespec::default();
    // SAFETY: clock_gettime(2) writes one timespec, which `ts` is.
    unsafe { syscall2(sys::CLOCK_GETTIME, id, &mut ts as *mut Timespec as u64) };
    (ts.sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.nsec as u64)
}

pub(crate) fn monotonic() -> u64 {
    clock(sys::CLOCK_MONOTONIC)
}

pub(crate) fn wall() -> u64 {
    clock(sys::CLOCK_REALTIME)
}

pub(crate) fn poll(deadline: u64) -> u64 {
    let (epoll, timer, npollfds) = FDS.with(|f| (f.epoll, f.timer, f.npollfds));
    // The monotonic clock is CLOCK_MONOTONIC, so the deadline is the
    // timer's absolute expiry. Never zero, which would disarm it.
    let it = Itimerspec {
        interval: Timespec::default(),
        value: Timespec { sec: (deadline / 1_000_000_000) as i64, nsec: ((deadline % 1_000_000_000) | 1) as i64 },
    };
    // SAFETY: timerfd_settime(2) reads one itimerspec, which `it` is, and
    // writes nothing (no old value is asked for).
    unsafe { syscall4(sys::TIMERFD_SETTIME, timer as u64, sys::TFD_TIMER_ABSTIME, &it as *const Itimerspec as u64, 0) };
    EXITS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut events = [EpollEvent::default(); 65];
    let max = (npollfds + 1).min(events.len());
    let n = loop {
        // SAFETY: epoll_pwait(2) writes at most `max` events, and `events`
        // holds at least that many; no signal mask is passed.
        let n =
            unsafe { syscall6(sys::EPOLL_PWAIT, epoll as u64, events.as_mut_ptr() as u64, max as u64, u64::MAX, 0, 8) };
        if n != sys::EINTR {
            break n;
        }
    };
    let mut ready = 0u64;
    for ev in events.iter().take(n.max(0) as usize) {
        let data = ev.data;
        if data != solo5_abi::spt::INTERNAL_TIMERFD && data < 64 {
            ready |= 1 << data;
        }
    }
    ready
}

pub(crate) fn net_read(_handle: u64, fd: i32, buf: &mut [u8]) -> Result<usize, Error> {
    // SAFETY: read(2) writes at most buf.len() bytes into a live slice.
    let n = unsafe { syscall4(sys::READ, fd as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0) };
    if n == sys::EAGAIN {
        Err(Error::Again)
    } else if n < 0 {
        Err(Error::Unspecified)
    } else {
        Ok(n as usize)
    }
}

pub(crate) fn net_write(_handle: u64, fd: i32, frame: &[u8]) -> Result<(), Error> {
    // SAFETY: write(2) reads frame.len() bytes of a live slice.
    let n = unsafe { syscall4(sys::WRITE, fd as u64, frame.as_ptr() as u64, frame.len() as u64, 0) };
    if n == frame.len() as i64 { Ok(()) } else { Err(Error::Unspecified) }
}

/// `struct iovec`.
#[repr(C)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Reads a frame behind its virtio-net header (a tap our tender granted
/// one): the header into `hdr`, the frame into `buf`; the frame's length.
pub(crate) fn net_read_hdr(fd: i32, hdr: &mut [u8], buf: &mut [u8]) -> Result<usize, Error> {
    let iov = [
        IoVec { base: hdr.as_mut_ptr() as u64, len: hdr.len() as u64 },
        IoVec { base: buf.as_mut_ptr() as u64, len: buf.len() as u64 },
    ];
    // SAFETY: readv(2) writes at most each vector's length into the live,
    // exclusive slices they name.
    let n = unsafe { syscall4(sys::READV, fd as u64, iov.as_ptr() as u64, 2, 0) };
    if n == sys::EAGAIN {
        Err(Error::Again)
    } else if n < 0 {
        Err(Error::Unspecified)
    } else {
        // A read without a whole header (which the host never makes) is
        // an empty frame, which the reader drops as malformed.
        Ok((n as usize).saturating_sub(hdr.len()).min(buf.len()))
    }
}

/// Asks the host for receive offload on the tap at `fd` (where the tender
/// granted it: `solo5_abi::mft::MftEntry::net_rx_offload`).
pub(crate) fn net_rx_offload(fd: i32) -> Result<(), Error> {
    use solo5_abi::vnet::{RX_OFFLOAD_FLAGS, TUNSETOFFLOAD};
    // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is named.
    let n = unsafe { syscall4(sys::IOCTL, fd as u64, TUNSETOFFLOAD, RX_OFFLOAD_FLAGS, 0) };
    if n < 0 { Err(Error::Unspecified) } else { Ok(()) }
}

/// Writes a frame behind its virtio-net header, as [`net_read_hdr`] reads.
pub(crate) fn net_write_hdr(fd: i32, hdr: &[u8], frame: &[u8]) -> Result<(), Error> {
    let iov = [
        IoVec { base: hdr.as_ptr() as u64, len: hdr.len() as u64 },
        IoVec { base: frame.as_ptr() as u64, len: frame.len() as u64 },
    ];
    // SAFETY: writev(2) reads each vector's length from the live slices
    // they name.
    let n = unsafe { syscall4(sys::WRITEV, fd as u64, iov.as_ptr() as u64, 2, 0) };
    if n == (hdr.len() + frame.len()) as i64 { Ok(()) } else { Err(Error::Unspecified) }
}

/// One system call per block, which is all Solo5's seccomp filter allows;
/// through a descriptor our tender granted runs (`max_call` above `bs`),
/// one per run of 2^k blocks of at most `max_call` bytes, the lengths its
/// filter allows.
///
/// # Safety
///
/// `buf` is valid for `len` bytes, a whole number of blocks of `bs`: read
/// for `PWRITE64`, written for `PREAD64`.
unsafe fn block_io(
    fd: i32,
    bs: u64,
    max_call: u64,
    offset: u64,
    buf: *mut u8,
    len: usize,
    nr: u64,
) -> Result<(), Error> {
    if bs == 0 || !bs.is_power_of_two() || !(len as u64).is_multiple_of(bs) {
        return Err(Error::Invalid);
    }
    let mut done = 0;
    while done < len as u64 {
        let left = len as u64 - done;
        // The largest 2^k blocks within what is left and the grant.
        let mut n = bs;
        while n * 2 <= left.min(max_call) {
            n *= 2;
        }
        // SAFETY: [buf + done, buf + done + n) lies in the caller's buffer.
        let r = unsafe { syscall4(nr, fd as u64, buf as u64 + done, n, offset + done) };
        if r != n as i64 {
            return Err(Error::Unspecified);
        }
        done += n;
    }
    Ok(())
}

pub(crate) fn block_read(
    _handle: u64,
    fd: i32,
    bs: u64,
    max_call: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    // SAFETY: pread64 writes into `buf`, a live, exclusive slice.
    unsafe { block_io(fd, bs, max_call, offset, buf.as_mut_ptr(), buf.len(), sys::PREAD64) }
}

pub(crate) fn block_write(
    _handle: u64,
    fd: i32,
    bs: u64,
    max_call: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    // SAFETY: pwrite64 only reads `data`, a live slice; nothing writes
    // through the pointer despite its type.
    unsafe { block_io(fd, bs, max_call, offset, data.as_ptr().cast_mut(), data.len(), sys::PWRITE64) }
}

/// A write and a flush: two system calls on spt, which a seccomp filter
/// cannot merge (`pwritev2`'s lengths are in memory it cannot bound).
pub(crate) fn block_write_sync(
    handle: u64,
    fd: i32,
    bs: u64,
    max_call: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    block_write(handle, fd, bs, max_call, offset, data)?;
    block_flush(handle, fd)
}

/// Syncs the cached descriptor a tender granted for flushes; its filter
/// allows `fdatasync` on that descriptor only.
pub(crate) fn block_flush(_handle: u64, fd: i32) -> Result<(), Error> {
    // SAFETY: fdatasync takes a descriptor and touches no memory.
    let n = unsafe { syscall1(sys::FDATASYNC, fd as u64) };
    if n != 0 { Err(Error::Unspecified) } else { Ok(()) }
}
