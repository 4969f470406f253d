//! The hvt platform: hypercalls, the TSC clock, the CPL-3 side of boot and
//! traps.

use core::arch::asm;

use solo5_abi::hvt::{
    BootInfo, HcBlockRead, HcBlockWrite, HcHalt, HcNetRead, HcNetWrite, HcPoll, HcPuts, HcWalltime, Hypercall, TrapRegs,
};

use super::{Boot, Global, rt};
use crate::Error;

mod boot;
mod ring;

/// The argument struct of one hypercall: the type names the call, so no
/// struct can be passed to a hypercall that expects another layout. Sealed:
/// only the ABI's structs are arguments.
pub(crate) trait HypercallArg: sealed::Sealed {
    /// The hypercall that takes this struct.
    const CALL: Hypercall;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! hypercall_args {
    ($($ty:ty => $call:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl HypercallArg for $ty {
            const CALL: Hypercall = Hypercall::$call;
        }
    )*};
}

hypercall_args! {
    HcWalltime => Walltime,
    HcPuts => Puts,
    HcPoll => Poll,
    HcBlockWrite => BlockWrite,
    HcBlockRead => BlockRead,
    HcNetWrite => NetWrite,
    HcNetRead => NetRead,
    HcHalt => Halt,
}

/// Makes the hypercall that takes `arg`.
///
/// The `out` traps to the CPL-0 #GP stub, which performs it; the tender
/// reads and writes `arg` in guest memory while the guest is stopped. The
/// asm block is a compiler barrier, so results are read after it.
///
/// # Safety
/// Every guest address inside `arg` names memory valid for what the tender
/// does with it: read for the data of PUTS, BLOCK_WRITE and NET_WRITE and
/// for HALT's cookie (`len` bytes, or the cookie's 512), written for the
/// buffers of BLOCK_READ and NET_READ (`len` bytes), which the tender fills
/// without the compiler's knowledge.
#[inline(always)]
unsafe fn hypercall<A: HypercallArg>(arg: &mut A) {
    EXITS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let gpa = arg as *mut A as usize as u32;
    // SAFETY: `arg` is a live struct of the layout its hypercall expects, in
    // guest memory below 4 GiB (all of it is), so its address fits in %eax;
    // the caller vouches for the addresses inside it.
    unsafe {
        asm!("out dx, eax", in("dx") A::CALL.port(), in("eax") gpa, options(nostack, preserves_flags));
    }
}

/// Hypercalls and kicks made (see `super::exits`).
pub(crate) static EXITS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

struct Clock {
    /// TSC at boot.
    tsc_base: u64,
    /// Nanoseconds per TSC tick in 32.32 fixed point.
    mult: u64,
    /// Wall-clock time at `tsc_base`, read once on first use.
    wall_base: Option<u64>,
}

static CLOCK: Global<Clock> = Global::new(Clock { tsc_base: 0, mult: 0, wall_base: None });
static RING_INFO: Global<(u32, u64)> = Global::new((0, 0));
static RING_ENABLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

pub(crate) fn set_ring_enabled(enabled: bool) {
    RING_ENABLED.store(enabled, core::sync::atomic::Ordering::Relaxed);
}

fn ring() -> Option<&'static ring::GuestRing> {
    if RING_ENABLED.load(core::sync::atomic::Ordering::Relaxed) { ring::get() } else { None }
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects (CR4.TSD is clear: it works at CPL 3).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The page directories that map 1 to 4 GiB, filled in only for guests with
/// more than 1 GiB of memory.
#[repr(C, align(4096))]
struct HighPds([u64; 3 * 512]);

static HIGH_PDS: Global<HighPds> = Global::new(HighPds([0; 3 * 512]));

unsafe extern "C" {
    /// The page tables of `boot.rs`, in .bss, filled by map_memory.
    static mut mirage_solo5_pdpt: [u64; 512];
    static mut mirage_solo5_pd0: [u64; 512];
    static mut mirage_solo5_pt0: [u64; 512];
    fn mirage_solo5_switch_stack(arg: usize, stack_top: usize, f: extern "C" fn(usize) -> !) -> !;
}

/// Maps guest memory up to `top` (at most 4 GiB): 2 MiB pages, user
/// read-write, above 2 MiB; 4 KiB pages below, with the zero page and the
/// tender's structures (below 64 KiB) not present and the boot information
/// (up to 1 MiB) read-only, in place of the boot page directory of
/// `boot.rs`, which maps only the image. Building the tables here, at CPL
/// 3, while they are not in use, costs nothing at CPL 0, one trap to the
/// hypervisor, and nothing in the image. Memory above `top` stays unmapped,
/// so a stray access faults in the guest.
fn map_memory(top: u64) {
    const GIB: u64 = 1 << 30;
    const PAGE: u64 = 2 << 20;
    let top = top.min(4 * GIB);
    // SAFETY: these are the guest's own page tables in .bss, in the image
    // that boot.rs maps read-write at CPL 3. pt0 and pd0 are not in use
    // until the PDPT's first entry points at pd0 instead of the boot
    // directory; that store changes the translation of the first 2 MiB
    // only (above, the boot directory mapped the image as pd0 does), so
    // only that translation is flushed. The other PDPT entries were not
    // present: no stale translation. Volatile: the page walker reads them.
    unsafe {
        let pdpt = &raw mut mirage_solo5_pdpt;
        let pd0 = &raw mut mirage_solo5_pd0;
        let pt0 = &raw mut mirage_solo5_pt0;
        for i in 16..512u64 {
            let flags = if i < 256 { 5 } else { 7 };
            core::ptr::write_volatile(&mut (*pt0)[i as usize], (i << 12) | flags);
        }
        core::ptr::write_volatile(&mut (*pd0)[0], pt0 as u64 | 7);
        let mut addr = PAGE;
        while addr < top.min(GIB) {
            core::ptr::write_volatile(&mut (*pd0)[(addr / PAGE) as usize], addr | 0x87);
            addr += PAGE;
        }
        core::ptr::write_volatile(&mut (*pdpt)[0], pd0 as u64 | 7);
        // The #GP stub of boot.rs performs this at CPL 0, for address 0
        // whatever %rax holds.
        core::arch::asm!("invlpg [rax]", in("rax") 0u64, options(nostack));
        if top > GIB {
            HIGH_PDS.with(|pds| {
                let mut addr = GIB;
                while addr < top {
                    pds.0[((addr - GIB) / PAGE) as usize] = addr | 0x87;
                    addr += PAGE;
                }
                let base = pds.0.as_ptr() as u64;
                for k in 1..4u64 {
                    if k * GIB < top {
                        core::ptr::write_volatile(&mut (*pdpt)[k as usize], (base + (k - 1) * 4096) | 7);
                    }
                }
            });
        }
    }
}

/// The CPL-3 entry, on the boot stack, with `%rdi` = the boot information.
#[unsafe(no_mangle)]
extern "C" fn mirage_solo5_hvt_start(bi: *const BootInfo) -> ! {
    // SAFETY: the tender placed the boot information at this address (read-
    // only low memory, mapped by boot.rs).
    let bi = unsafe { bi.read() };
    let ring_top = if bi.net_ring != 0 { bi.net_ring + solo5_abi::ring::RING_RESERVED_SIZE } else { 0 };
    map_memory(bi.mem_size.max(ring_top));
    let stack_top = bi.mem_size & !15;
    // SAFETY: the top of guest memory is mapped and unused; the boot stack is
    // left behind for good.
    unsafe { mirage_solo5_switch_stack(&bi as *const BootInfo as usize, stack_top as usize, main_stack) }
}

extern "C" fn main_stack(bi: usize) -> ! {
    // SAFETY: `bi` points at the copy on the boot stack, which is still
    // intact: nothing has been pushed there since the switch.
    let bi = unsafe { (bi as *const BootInfo).read() };
    let freq = bi.cpu_cycle_freq.max(1);
    CLOCK.with(|c| {
        c.tsc_base = rdtsc();
        c.mult = (((1_000_000_000u128) << 32) / freq as u128) as u64;
    });
    if bi.host_features & solo5_abi::hvt::FEATURE_RING_IO != 0 {
        RING_INFO.with(|r| *r = (bi.host_features, bi.net_ring));
    }
    rt::start(Boot {
        mem_size: bi.mem_size,
        cmdline: super::cstr(bi.cmdline, solo5_abi::hvt::CMDLINE_SIZE),
        mft: super::manifest(bi.mft),
    })
}

pub(crate) fn puts(bytes: &[u8]) {
    let mut p = HcPuts { data: bytes.as_ptr() as u64, len: bytes.len() as u64 };
    // SAFETY: the tender reads `bytes`, a live slice of p.len bytes.
    unsafe { hypercall(&mut p) };
}

pub(crate) fn halt(status: i32, cookie: u64) -> ! {
    let mut h = HcHalt { cookie, exit_status: status, _pad: 0 };
    loop {
        // SAFETY: the cookie is 0 or the trap frame the caller passes,
        // which the tender only reads.
        unsafe { hypercall(&mut h) };
    }
}

pub(crate) fn monotonic() -> u64 {
    let (base, mult) = CLOCK.with(|c| (c.tsc_base, c.mult));
    let delta = rdtsc().wrapping_sub(base);
    ((delta as u128 * mult as u128) >> 32) as u64
}

pub(crate) fn wall() -> u64 {
    let base = CLOCK.with(|c| c.wall_base);
    let base = match base {
        Some(b) => b,
        None => {
            let mut w = HcWalltime::default();
            // SAFETY: WALLTIME's struct holds no address.
            unsafe { hypercall(&mut w) };
            let b = w.nsecs.wrapping_sub(monotonic());
            CLOCK.with(|c| c.wall_base = Some(b));
            b
        }
    };
    base.wrapping_add(monotonic())
}

/// A wait for input longer than this marks traffic as sparse (see
/// `ring::GuestRing::bypass`).
const SPARSE_WAIT_NS: u64 = 1_000_000;
static SPARSE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(true);

fn sparse_traffic() -> bool {
    SPARSE.load(core::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn poll(deadline: u64) -> u64 {
    // Frames the ring read ahead are input waiting: no need to ask. Input
    // found without a wait is dense traffic too: a guest kept busy by a
    // flood never makes POLL, and would otherwise keep the verdict of the
    // last long wait before it.
    let queued = ring::ready_set();
    if queued != 0 {
        SPARSE.store(false, core::sync::atomic::Ordering::Relaxed);
        return queued;
    }
    if let Some(r) = ring() {
        let ready = r.spin_for_input(deadline);
        if ready != 0 {
            SPARSE.store(false, core::sync::atomic::Ordering::Relaxed);
            return ready;
        }
    }
    let start = monotonic();
    let timeout = deadline.saturating_sub(start);
    let mut p = HcPoll { timeout_nsecs: timeout, ..Default::default() };
    // SAFETY: POLL's struct holds no address.
    unsafe { hypercall(&mut p) };
    if p.ready_set != 0 {
        SPARSE.store(monotonic().wrapping_sub(start) > SPARSE_WAIT_NS, core::sync::atomic::Ordering::Relaxed);
    }
    p.ready_set
}

pub(crate) fn block_write(
    handle: u64,
    _fd: i32,
    _bs: u64,
    _max_call: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    let mut w = HcBlockWrite { handle, offset, data: data.as_ptr() as u64, len: data.len() as u64, ret: 0, _pad: 0 };
    // SAFETY: the tender reads `data`, a live slice of w.len bytes.
    unsafe { hypercall(&mut w) };
    Error::check(w.ret)
}

pub(crate) fn block_read(
    handle: u64,
    _fd: i32,
    _bs: u64,
    _max_call: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    let mut r = HcBlockRead { handle, offset, data: buf.as_mut_ptr() as u64, len: buf.len() as u64, ret: 0, _pad: 0 };
    // SAFETY: the tender writes at most r.len bytes into `buf`, a live,
    // exclusive slice.
    unsafe { hypercall(&mut r) };
    Error::check(r.ret)
}

/// An `outl` of the address of `arg` to one of our ports, which traps to
/// the CPL-0 #GP stub like a hypercall.
///
/// # Safety
///
/// `arg` must have the layout the port expects, and every address in it
/// must be live memory the tender may access as the port says.
unsafe fn our_port<T>(port: u16, arg: &mut T) {
    EXITS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    // Guest memory lies below 4 GiB.
    let gpa = arg as *mut T as usize as u32;
    // SAFETY: per the caller; the tender writes only the argument's `ret`.
    // The asm block is a compiler barrier, so `ret` is read after it.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") gpa, options(nostack, preserves_flags));
    }
}

/// Asks the tender to sync a block device it granted flushes (ours: an
/// `outl` to [`solo5_abi::hvt::BLOCK_FLUSH_PIO`]).
pub(crate) fn block_flush(handle: u64, _fd: i32) -> Result<(), Error> {
    let mut f = solo5_abi::hvt::HcBlockFlush { handle, ret: 0, _pad: 0 };
    // SAFETY: `f` is the flush port's argument and holds no address.
    unsafe { our_port(solo5_abi::hvt::BLOCK_FLUSH_PIO, &mut f) };
    Error::check(f.ret)
}

/// A write and a flush as one request, for a device granted both: through
/// the ring's I/O thread without an exit where it is offered and awake
/// (`FEATURE_RING_BLOCK`, ours), else in one exit (ours: an `outl` to
/// [`solo5_abi::hvt::BLOCK_WRITE_SYNC_PIO`] with the address of a
/// BLOCK_WRITE argument).
pub(crate) fn block_write_sync(
    handle: u64,
    _fd: i32,
    _bs: u64,
    _max_call: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    if let Some(done) = ring().and_then(|r| r.block_write_sync(handle, offset, data)) {
        return done;
    }
    let mut w = HcBlockWrite { handle, offset, data: data.as_ptr() as u64, len: data.len() as u64, ret: 0, _pad: 0 };
    // SAFETY: `w` is a BLOCK_WRITE argument whose `data` is a live slice
    // of `len` bytes, which the tender only reads.
    unsafe { our_port(solo5_abi::hvt::BLOCK_WRITE_SYNC_PIO, &mut w) };
    Error::check(w.ret)
}

/// Whether frames may leave a checksum for the host to complete: the
/// tender offers it (`FEATURE_NET_CSUM`, ours) and the ring is in use.
pub(crate) fn net_checksum_offload() -> bool {
    RING_INFO.with(|r| r.0) & solo5_abi::hvt::FEATURE_NET_CSUM != 0 && ring().is_some()
}

/// The largest frame the host cuts into TCP segments: where the tender
/// offers it (`FEATURE_NET_TSO`, ours) and the ring is in use with its
/// write arena (allocated now: such a segment goes through it alone), a
/// 64 KiB segment; 0 elsewhere.
pub(crate) fn net_segmentation_offload() -> usize {
    let offered = RING_INFO.with(|r| r.0) & solo5_abi::hvt::FEATURE_NET_TSO != 0;
    let arena = ring().is_some_and(|r| r.has_arena());
    if offered && net_checksum_offload() && arena { solo5_abi::vnet::VNET_MAX_SEGMENTED } else { 0 }
}

/// Asks the tender for receive offload on device `handle`: where it offers
/// it (`FEATURE_NET_RX_OFFLOAD`, ours) and the ring is in use, through
/// which alone the device is read from then on.
pub(crate) fn net_rx_offload(handle: u64) -> Result<(), Error> {
    if RING_INFO.with(|r| r.0) & solo5_abi::hvt::FEATURE_NET_RX_OFFLOAD == 0 || ring().is_none() {
        return Err(Error::Unspecified);
    }
    let mut a = solo5_abi::hvt::HcNetRxOffload { handle, ret: 0, _pad: 0 };
    // SAFETY: `a` is the port's argument and holds no address.
    unsafe { our_port(solo5_abi::hvt::NET_RX_OFFLOAD_PIO, &mut a) };
    Error::check(a.ret)?;
    ring::set_rx_offload(handle);
    Ok(())
}

/// What the host is asked to do with a frame's checksum at `partial`
/// (`csum_start`, `csum_offset`, segment size), as the ring's entry says
/// it: complete it (and cut the segment) where the tender offers it, else
/// `None`.
fn ring_csum(partial: (u16, u16, u16)) -> Option<u64> {
    let (start, offset, segment) = partial;
    let features = RING_INFO.with(|r| r.0);
    // The tender refuses segments smaller than VNET_MIN_SEGMENT (it ends
    // the guest): such a frame is not sent.
    let offered = features & solo5_abi::hvt::FEATURE_NET_CSUM != 0
        && (segment == 0
            || features & solo5_abi::hvt::FEATURE_NET_TSO != 0 && segment >= solo5_abi::vnet::VNET_MIN_SEGMENT);
    offered.then(|| solo5_abi::ring::csum_entry_segmented(start, offset, segment))
}

/// Sends a frame of `len` bytes that `fill` writes straight into the
/// ring's arena (one copy fewer than writing it elsewhere first), `fill`
/// returning its result and the checksum it leaves for the host (as
/// [`net_write_partial`] takes it). `None`, and `fill` not called, where
/// the ring does not take the frame now.
pub(crate) fn net_write_in_place<R>(
    handle: u64,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(R, Option<(u16, u16, u16)>), Error>,
) -> Option<Result<R, Error>> {
    ring()?.write_with(handle, len, |buf| {
        let (r, partial) = fill(&mut *buf)?;
        let csum = match partial {
            None => 0,
            Some(p) => match ring_csum(p) {
                Some(csum) => csum,
                // Neither the ring nor a hypercall can take it.
                None if p.2 != 0 => return Err(Error::Invalid),
                None => {
                    mirage_devices::net::PartialChecksum::new(p.0, p.1).complete(buf);
                    0
                }
            },
        };
        Ok((r, csum))
    })
}

/// Sends `frame`, whose checksum at `partial` (`csum_start`,
/// `csum_offset`) the host completes through the ring where it can; when
/// the frame goes by hypercall instead, it is completed here first. A
/// segment size (the third number, if not 0) goes only through the ring.
pub(crate) fn net_write_partial(handle: u64, frame: &mut [u8], partial: Option<(u16, u16, u16)>) -> Result<(), Error> {
    let Some((start, offset, segment)) = partial else { return net_write(handle, 0, frame) };
    if let Some(csum) = ring_csum((start, offset, segment))
        && let Some(r) = ring()
        && let Some(result) = r.write(handle, frame, csum)
    {
        return result;
    }
    if segment != 0 {
        // Neither the ring nor a hypercall can take it now.
        return Err(Error::Invalid);
    }
    mirage_devices::net::PartialChecksum::new(start, offset).complete(frame);
    net_write(handle, 0, frame)
}

pub(crate) fn net_write(handle: u64, _fd: i32, frame: &[u8]) -> Result<(), Error> {
    if let Some(r) = ring()
        && let Some(result) = r.write(handle, frame, 0)
    {
        return result;
    }
    let mut w = HcNetWrite { handle, data: frame.as_ptr() as u64, len: frame.len() as u64, ret: 0, _pad: 0 };
    // SAFETY: the tender reads `frame`, a live slice of w.len bytes.
    unsafe { hypercall(&mut w) };
    Error::check(w.ret)
}

/// Reads a frame into `buf`: its length, and its virtio-net header's flags
/// (where the device has receive offload, which the flags of its commit
/// say; 0 otherwise).
pub(crate) fn net_read_meta(handle: u64, buf: &mut [u8]) -> Result<(usize, u8), Error> {
    if let Some(result) = ring().and_then(|r| r.read(handle, buf)) {
        return result.map(|(n, flags)| (n, flags as u8));
    }
    // Only our tender grants receive offload, and it gives the flags in
    // the hypercall's padding (HcNetRead::flags); Solo5's leave it alone.
    let (n, flags) = net_read_hypercall(handle, buf)?;
    Ok((n, if ring::rx_offload(handle) { flags } else { 0 }))
}

/// Reads a frame and lends it to `f` where the ring layer read it, with
/// its header's flags; `None` when it must be read with
/// [`net_read_meta`] instead. `size` is what the caller's own buffer
/// holds.
pub(crate) fn net_read_lent<R>(
    handle: u64,
    size: usize,
    f: impl FnOnce(&mut [u8], u8) -> R,
) -> Option<Result<(usize, R), Error>> {
    ring()?.read_lent(handle, size, |frame, flags| f(frame, flags as u8))
}

pub(crate) fn net_read(handle: u64, _fd: i32, buf: &mut [u8]) -> Result<usize, Error> {
    if let Some(result) = ring().and_then(|r| r.read(handle, buf)) {
        return result.map(|(n, _)| n);
    }
    net_read_hypercall(handle, buf).map(|(n, _)| n)
}

/// One NET_READ hypercall: the frame's length and what the tender put in
/// the flags.
fn net_read_hypercall(handle: u64, buf: &mut [u8]) -> Result<(usize, u8), Error> {
    let mut r = HcNetRead { handle, data: buf.as_mut_ptr() as u64, len: buf.len() as u64, ret: 0, flags: 0 };
    // SAFETY: the tender writes at most r.len bytes into `buf`, a live,
    // exclusive slice.
    unsafe { hypercall(&mut r) };
    // The tender's length is clamped to the buffer, as the ring's is: a
    // faulty tender must not make a reader index past it.
    Error::check(r.ret).map(|()| ((r.len as usize).min(buf.len()), r.flags as u8))
}

/// Reports a CPU exception, at CPL 3 on the trap stack, then halts with
/// status 255 and the trap frame as cookie, as Solo5 guests do.
#[unsafe(no_mangle)]
extern "C" fn mirage_solo5_hvt_trap(vector: u64, regs: *const TrapRegs) -> ! {
    // SAFETY: the CPL-0 stub filled the static frame before coming here.
    rt::report_trap(vector, &unsafe { regs.read() });
    halt(solo5_abi::EXIT_ABORT, regs as u64)
}
