//! The virtio platform: a guest that a Multiboot loader (QEMU's `-kernel`,
//! GRUB from an ISO) boots on a PC, with the serial line COM1 as its
//! console, the TSC (calibrated against the PIT) as its monotonic clock,
//! the CMOS RTC as its wall clock, and virtio-net and virtio-blk devices
//! over legacy PCI found by scanning PCI configuration space.
//!
//! Devices are given to the manifest's entries in PCI order: the first
//! virtio-net device to the first `net` entry, and so on; a manifest entry
//! left without a device stops the boot with a message naming it, as a
//! Solo5 tender refuses to start without it.
//!
//! The guest runs with interrupts off, and takes them only while it waits
//! ([`poll`]): with the 8259s unmasked for the PIT and the net devices'
//! interrupt lines, it halts until the PIT's one-shot count reaches the
//! deadline or a device has filled a receive buffer, so a waiting guest
//! leaves the host's CPU idle. (A net device without an interrupt line
//! makes the wait poll its rings and the clock instead.)
//!
//! The guest exits through QEMU's `isa-debug-exit` device (port 0x501,
//! which `solo5-virtio` attaches), which ends QEMU with status `2 * v + 1`
//! for the byte `v` written (the bindings write the status plus one);
//! without it, through the ACPI power-off of QEMU's PC machine, and
//! failing both the CPU halts.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use solo5_abi::hvt::TrapRegs;
use solo5_abi::mft::{MFT_MAX_ENTRIES, MftEntry, MftType};

use super::{Boot, Global, rt};
use crate::Error;

mod boot;
mod pci;
mod virtq;

/// Device notifications, halts and the exit: what leaves the guest for the
/// host on purpose (see `super::exits`).
pub(crate) static EXITS: AtomicU64 = AtomicU64::new(0);

/// # Safety
/// Writing `v` to `port` has no effect on memory the compiler knows of.
#[inline(always)]
pub(super) unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
}

/// # Safety
/// Reading `port` has no effect on memory the compiler knows of.
#[inline(always)]
pub(super) unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// As [`outb`].
#[inline(always)]
pub(super) unsafe fn outw(port: u16, v: u16) {
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags)) }
}

/// # Safety
/// As [`inb`].
#[inline(always)]
pub(super) unsafe fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags)) };
    v
}

/// # Safety
/// As [`outb`].
#[inline(always)]
pub(super) unsafe fn outl(port: u16, v: u32) {
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) }
}

/// # Safety
/// As [`inb`].
#[inline(always)]
pub(super) unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: the caller vouches for the port.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags)) };
    v
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

const COM1: u16 = 0x3f8;
const DEBUG_EXIT_PORT: u16 = 0x501;

/// The parts of the Multiboot information the guest reads.
#[repr(C)]
struct MultibootInfo {
    flags: u32,
    mem_lower: u32,
    mem_upper: u32,
    boot_device: u32,
    cmdline: u32,
    mods_count: u32,
    mods_addr: u32,
    syms: [u32; 4],
    mmap_length: u32,
    mmap_addr: u32,
}

const MB_INFO_MEMORY: u32 = 1 << 0;
const MB_INFO_CMDLINE: u32 = 1 << 2;
const MB_INFO_MMAP: u32 = 1 << 6;

/// The command line's copy: the loader's lies past the image, in what
/// becomes the heap.
const CMDLINE_SIZE: usize = 8192;
static CMDLINE: Global<[u8; CMDLINE_SIZE]> = Global::new([0; CMDLINE_SIZE]);

/// The manifest with the devices found attached, read by `net` and
/// `block` through [`Boot::mft`]; written once, at boot.
static MFT: Global<([MftEntry; MFT_MAX_ENTRIES as usize], usize)> =
    Global::new(([MftEntry::ZERO; MFT_MAX_ENTRIES as usize], 0));

unsafe extern "C" {
    /// The manifest's ELF note in the image (see link/virtio.lds).
    static mirage_solo5_mft_note: u8;
    static _end: u8;
    fn mirage_solo5_switch_stack(arg: usize, stack_top: usize, f: extern "C" fn(usize) -> !) -> !;
}

/// The largest memory the boot page tables map (and so the guest uses).
const MAPPED: u64 = 4 << 30;

/// The Rust entry, on the boot stack, with the Multiboot information.
#[unsafe(no_mangle)]
extern "C" fn mirage_solo5_virtio_start(mbi: u32) -> ! {
    serial_init();
    pic_init();
    trap_init();
    // SAFETY: the loader placed the information at this address, identity
    // mapped; it is read before anything can overwrite it.
    let info = unsafe { (mbi as usize as *const MultibootInfo).read_unaligned() };
    let mem_size = memory_size(&info).min(MAPPED);
    if info.flags & MB_INFO_CMDLINE != 0 {
        let raw = super::cstr(info.cmdline as u64, CMDLINE_SIZE - 1);
        CMDLINE.with(|c| c[..raw.len()].copy_from_slice(raw));
    }
    clock_init();
    // SAFETY: the top of memory is below the identity-mapped 4 GiB, past
    // the image, and unused; the boot stack is left behind for good.
    unsafe { mirage_solo5_switch_stack(mem_size as usize, (mem_size & !15) as usize, main_stack) }
}

extern "C" fn main_stack(mem_size: usize) -> ! {
    let cmdline = CMDLINE.with(|c| {
        let len = c.iter().position(|&b| b == 0).unwrap_or(CMDLINE_SIZE);
        // SAFETY: CMDLINE is written once, above, before this; from here on
        // it is only read, so a shared reference for the guest's life is
        // sound.
        unsafe { core::slice::from_raw_parts(c.as_ptr(), len) }
    });
    // The loader's command line starts with the kernel's path (QEMU,
    // GRUB); Solo5's starts with the first argument.
    let cmdline = match cmdline.iter().position(|&b| b == b' ') {
        Some(i) => cmdline[i + 1..].trim_ascii_start(),
        None => b"",
    };
    let mft = attach_devices();
    rt::start(Boot { mem_size: mem_size as u64, cmdline, mft })
}

/// The end of the RAM region that holds the image, from the memory map (or
/// `mem_upper` when there is none).
fn memory_size(info: &MultibootInfo) -> u64 {
    // SAFETY: a linker-script symbol; only its address is used.
    let end = unsafe { &_end as *const u8 as u64 };
    if info.flags & MB_INFO_MMAP != 0 {
        let mut p = info.mmap_addr as u64;
        let stop = p + info.mmap_length as u64;
        while p < stop {
            // SAFETY: the loader's memory map: entries of `size` (at p) then
            // base, length and type, `size + 4` bytes apart.
            let (size, base, len, kind) = unsafe {
                (
                    (p as *const u32).read_unaligned(),
                    ((p + 4) as *const u64).read_unaligned(),
                    ((p + 12) as *const u64).read_unaligned(),
                    ((p + 20) as *const u32).read_unaligned(),
                )
            };
            if kind == 1 && base <= 0x100000 && base + len >= end {
                return base + len;
            }
            p += size as u64 + 4;
        }
    }
    if info.flags & MB_INFO_MEMORY != 0 {
        return 0x100000 + ((info.mem_upper as u64) << 10);
    }
    0
}

/// Gives each `net` and `block` entry of the manifest the next virtio
/// device of its kind; stops the boot if one is left without.
fn attach_devices() -> &'static [MftEntry] {
    // SAFETY: the note lies in the image's read-only data; the linker
    // script places the symbol at its start, and the manifest follows the
    // 20-byte header and 4 bytes of padding (solo5_abi::note::Mft1Note).
    let image = super::manifest(unsafe { &mirage_solo5_mft_note as *const u8 as u64 } + 24);
    let found = pci::scan();
    let (mut nets, mut blks) = (0usize, 0usize);
    MFT.with(|(m, len)| {
        *len = image.len();
        for (i, e) in image.iter().enumerate() {
            let mut e = *e;
            if e.mtype == MftType::NetBasic as u32 {
                match virtq::net_attach(&found, nets, i as u64) {
                    Some(mac) => {
                        e.set_net_basic(mac, 1500);
                        e.set_hostfd(nets as i32);
                        e.attached = 1;
                    }
                    None => missing("net", &e, "virtio-net-pci", nets),
                }
                nets += 1;
            } else if e.mtype == MftType::BlockBasic as u32 {
                match virtq::blk_attach(&found, blks) {
                    Some((capacity, block_size, flush)) => {
                        e.set_block_basic(capacity, block_size);
                        e.set_block_flush(flush.then_some(blks as i32));
                        e.set_hostfd(blks as i32);
                        e.attached = 1;
                    }
                    None => missing("block", &e, "virtio-blk-pci", blks),
                }
                blks += 1;
            }
            m[i] = e;
        }
        // SAFETY: MFT is written only here, once, before anything reads it;
        // from here on it is only read, so a shared reference for the
        // guest's life is sound.
        unsafe { core::slice::from_raw_parts(m.as_ptr(), *len) }
    })
}

fn missing(kind: &str, e: &MftEntry, device: &str, n: usize) -> ! {
    rt::abort_with(format_args!(
        "the manifest's {kind} device {:?} has no {device} device: {n} found; attach one per {kind} device, in manifest order (QEMU: -device {device},...)",
        e.name_str()
    ))
}

/// Remaps the 8259s to vectors 32 to 47, clear of the exceptions, with
/// every IRQ masked; [`poll`] unmasks the ones it waits for.
fn pic_init() {
    // SAFETY: the 8259s' command and data ports; ICW1 to ICW4 in order
    // (edge or level as the firmware's ELCR says, cascade on IRQ 2, 8086
    // mode), then the masks.
    unsafe {
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, 32);
        outb(0xa1, 40);
        outb(0x21, 4);
        outb(0xa1, 2);
        outb(0x21, 1);
        outb(0xa1, 1);
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
}

fn serial_init() {
    // SAFETY: COM1's registers: interrupts off, 115200 baud, 8N1, FIFOs
    // on; no memory is touched.
    unsafe {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }
}

pub(crate) fn puts(bytes: &[u8]) {
    for &b in bytes {
        // Wait for room in the transmitter, but not forever: a line that
        // never drains (no UART at all) must not hang the guest.
        for _ in 0..100_000 {
            // SAFETY: COM1's line status register.
            if unsafe { inb(COM1 + 5) } & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: COM1's transmit register.
        unsafe { outb(COM1, b) };
    }
}

pub(crate) fn halt(status: i32, _cookie: u64) -> ! {
    // isa-debug-exit makes QEMU exit with 2 * v + 1, so v = status + 1
    // keeps QEMU's own failure (1) apart; 127 stands for every status it
    // cannot carry (255 from an abort among them).
    let v = if (0..126).contains(&status) { status as u8 + 1 } else { 127 };
    EXITS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the exit device's port, then the PIIX4 ACPI power-off of
    // QEMU's PC machine (SLP_EN | S5); neither touches guest memory.
    unsafe {
        outb(DEBUG_EXIT_PORT, v);
        outw(0x604, 0x2000);
    }
    loop {
        // SAFETY: halting with interrupts off stops the CPU for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

struct Clock {
    tsc_base: u64,
    /// Nanoseconds per TSC tick in 32.32 fixed point.
    mult: u64,
    /// Wall-clock time at `tsc_base`.
    wall_base: u64,
}

static CLOCK: Global<Clock> = Global::new(Clock { tsc_base: 0, mult: 1 << 32, wall_base: 0 });

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;

/// The TSC's frequency, measured over 10 ms of the PIT's channel 2 (whose
/// gate and output the keyboard controller's port 0x61 exposes); 0 if the
/// PIT never counted down.
fn tsc_frequency() -> u64 {
    const COUNT: u64 = PIT_HZ / 100;
    // SAFETY: the PIT's and port 0x61's registers; no memory is touched.
    unsafe {
        let p61 = inb(0x61);
        outb(0x61, (p61 & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0xb0); // channel 2, low then high byte, mode 0
        outb(0x42, COUNT as u8);
        outb(0x42, (COUNT >> 8) as u8);
        let t0 = rdtsc();
        let mut done = false;
        for _ in 0..50_000_000u32 {
            if inb(0x61) & 0x20 != 0 {
                done = true;
                break;
            }
        }
        let t1 = rdtsc();
        outb(0x61, p61);
        if !done {
            return 0;
        }
        (t1 - t0) * PIT_HZ / COUNT
    }
}

fn clock_init() {
    let mut freq = tsc_frequency();
    if freq == 0 {
        // The clock would be wrong, not stopped: say so and go on.
        puts(b"Solo5: warning: the PIT did not count; assuming a 1 GHz TSC\n");
        freq = 1_000_000_000;
    }
    let wall = rtc_read();
    CLOCK.with(|c| {
        c.tsc_base = rdtsc();
        c.mult = ((1_000_000_000u128 << 32) / freq as u128) as u64;
        c.wall_base = wall;
    });
}

pub(crate) fn monotonic() -> u64 {
    let (base, mult) = CLOCK.with(|c| (c.tsc_base, c.mult));
    ((rdtsc().wrapping_sub(base) as u128 * mult as u128) >> 32) as u64
}

pub(crate) fn wall() -> u64 {
    CLOCK.with(|c| c.wall_base).wrapping_add(monotonic())
}

fn cmos(reg: u8) -> u8 {
    // SAFETY: the CMOS index and data ports; NMIs stay enabled (bit 7 clear).
    unsafe {
        outb(0x70, reg);
        inb(0x71)
    }
}

/// The RTC's time in nanoseconds since the epoch (whole seconds).
fn rtc_read() -> u64 {
    let read = || {
        for _ in 0..1_000_000 {
            if cmos(0x0a) & 0x80 == 0 {
                break;
            }
        }
        [cmos(0x00), cmos(0x02), cmos(0x04), cmos(0x07), cmos(0x08), cmos(0x09), cmos(0x32)]
    };
    // Read until two reads agree, so that no update falls between fields.
    let mut t = read();
    for _ in 0..10 {
        let u = read();
        if u == t {
            break;
        }
        t = u;
    }
    let status_b = cmos(0x0b);
    let bcd = |v: u8| if status_b & 0x04 == 0 { (v & 0x0f) + (v >> 4) * 10 } else { v };
    let pm = t[2] & 0x80 != 0;
    let mut hour = bcd(t[2] & 0x7f) as u64;
    if status_b & 0x02 == 0 {
        // 12-hour mode: 12 AM is 0, 12 PM is 12.
        hour = (hour % 12) + if pm { 12 } else { 0 };
    }
    let century = match bcd(t[6]) {
        c @ 19..=21 => c as i64,
        _ => 20,
    };
    let year = century * 100 + bcd(t[5]) as i64;
    let days = days_from_civil(year, bcd(t[4]) as i64, bcd(t[3]) as i64);
    let secs = days * 86400 + hour as i64 * 3600 + bcd(t[1]) as i64 * 60 + bcd(t[0]) as i64;
    (secs.max(0) as u64) * 1_000_000_000
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian
/// calendar (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The 8259 IRQs unmasked now (bit n for IRQ n).
static UNMASKED: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);

/// Unmasks exactly `irqs` (and the cascade, for the slave's).
fn unmask(irqs: u16) {
    let irqs = if irqs & 0xff00 != 0 { irqs | 1 << 2 } else { irqs };
    if UNMASKED.swap(irqs, Ordering::Relaxed) != irqs {
        // SAFETY: the 8259s' mask registers.
        unsafe {
            outb(0x21, !(irqs as u8));
            outb(0xa1, !((irqs >> 8) as u8));
        }
    }
}

/// The longest the PIT's 16-bit count covers: about 55 ms.
const PIT_MAX_NS: u64 = 65535 * 1_000_000_000 / PIT_HZ;

/// Arms the PIT's channel 0 to interrupt (IRQ 0) once, after `ns` or
/// [`PIT_MAX_NS`], whichever is shorter.
fn pit_oneshot(ns: u64) {
    let count = ((ns.min(PIT_MAX_NS) as u128 * PIT_HZ as u128) / 1_000_000_000).clamp(1, 65535) as u16;
    // SAFETY: the PIT's mode and channel 0 registers: mode 0 (interrupt on
    // terminal count), low then high byte.
    unsafe {
        outb(0x43, 0x30);
        outb(0x40, count as u8);
        outb(0x40, (count >> 8) as u8);
    }
}

/// Waits with the CPU halted until the deadline or a frame: the PIT
/// interrupts at the deadline (or every 55 ms before a later one), each
/// net device when it has filled a receive buffer. With a net device
/// that has no interrupt line, the wait polls instead.
pub(crate) fn poll(deadline: u64) -> u64 {
    loop {
        let ready = virtq::net_ready();
        let now = monotonic();
        if ready != 0 || now >= deadline {
            return ready;
        }
        let Some(irqs) = virtq::net_irqs() else {
            core::hint::spin_loop();
            continue;
        };
        unmask(irqs | 1);
        pit_oneshot(deadline - now);
        EXITS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: interrupts are taken only here, between `sti` and the
        // end of `hlt` (an interrupt pending before `sti` ends the `hlt`
        // at once); the stubs end the interrupt and return. Not `nostack`:
        // the CPU pushes the interrupt frame below %rsp, so the compiler
        // keeps nothing there.
        unsafe { asm!("sti", "hlt", "cli", options(nomem)) };
        virtq::net_ack();
    }
}

pub(crate) fn net_read(_handle: u64, dev: i32, buf: &mut [u8]) -> Result<usize, Error> {
    virtq::net_read(dev as usize, buf)
}

pub(crate) fn net_write(_handle: u64, dev: i32, frame: &[u8]) -> Result<(), Error> {
    virtq::net_write(dev as usize, frame)
}

pub(crate) fn block_read(
    _handle: u64,
    dev: i32,
    _bs: u64,
    _max_call: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    virtq::blk_io(dev as usize, virtq::BlkOp::Read, offset, buf.as_mut_ptr(), buf.len())
}

pub(crate) fn block_write(
    _handle: u64,
    dev: i32,
    _bs: u64,
    _max_call: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    // The device only reads `data` for a write, despite the pointer's type.
    virtq::blk_io(dev as usize, virtq::BlkOp::Write, offset, data.as_ptr().cast_mut(), data.len())
}

/// A write and a flush: two requests on the queue.
pub(crate) fn block_write_sync(
    handle: u64,
    dev: i32,
    bs: u64,
    max_call: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    block_write(handle, dev, bs, max_call, offset, data)?;
    block_flush(handle, dev)
}

pub(crate) fn block_flush(_handle: u64, dev: i32) -> Result<(), Error> {
    virtq::blk_io(dev as usize, virtq::BlkOp::Flush, 0, core::ptr::null_mut(), 0)
}

/// The IDT: 48 gates of 16 bytes, one per exception vector (0 to 31) and
/// per 8259 IRQ (32 to 47).
#[repr(C, align(16))]
struct Idt([u64; 96]);

static IDT: Global<Idt> = Global::new(Idt([0; 96]));

unsafe extern "C" {
    /// The stubs' addresses by vector (boot.rs).
    static mirage_solo5_virtio_trap_table: [u64; 32];
    /// The IRQ stubs (boot.rs), for the master's and the slave's IRQs.
    fn mirage_solo5_virtio_irq_master();
    fn mirage_solo5_virtio_irq_slave();
}

/// Fills the IDT with the exception stubs and loads it. At CPL 0 under a
/// PC emulator this is cheap, unlike on hvt, so it is built at run time.
fn trap_init() {
    IDT.with(|idt| {
        // SAFETY: a table of 32 addresses in the image's read-only data.
        let traps = unsafe { &mirage_solo5_virtio_trap_table };
        let master = mirage_solo5_virtio_irq_master as *const () as u64;
        let slave = mirage_solo5_virtio_irq_slave as *const () as u64;
        let irqs = [master; 8].into_iter().chain([slave; 8]);
        for (n, a) in traps.iter().copied().chain(irqs).enumerate() {
            // Present 64-bit interrupt gate, DPL 0, code selector 0x08.
            idt.0[2 * n] = (a & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((a >> 16) & 0xffff) << 48;
            idt.0[2 * n + 1] = a >> 32;
        }
        #[repr(C, packed)]
        struct Idtr {
            limit: u16,
            base: u64,
        }
        let r = Idtr { limit: (core::mem::size_of::<Idt>() - 1) as u16, base: idt.0.as_ptr() as u64 };
        // SAFETY: the IDT is static and filled with the stubs above: the
        // exceptions' never return into the faulting code, the IRQs' return
        // to the halt they interrupted.
        unsafe { asm!("lidt [{}]", in(reg) &r, options(readonly, nostack, preserves_flags)) };
    });
}

/// Reports a CPU exception and ends the guest with status 255.
#[unsafe(no_mangle)]
extern "C" fn mirage_solo5_virtio_trap(vector: u64, regs: *const TrapRegs) -> ! {
    // SAFETY: the stub filled the static frame before calling.
    rt::report_trap(vector, &unsafe { regs.read() });
    halt(solo5_abi::EXIT_ABORT, 0)
}
