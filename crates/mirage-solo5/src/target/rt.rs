//! The guest's life: start-up after the platform entry, the application's
//! `main`, exit, abort and panic.

use core::fmt::Write;

use super::console::{self, Level};
use super::{BOOT, Boot, heap, platform};
use crate::StartInfo;

unsafe extern "Rust" {
    /// Defined by the application with [`crate::main!`].
    fn __mirage_solo5_app_main(si: &StartInfo) -> i32;
}

unsafe extern "C" {
    static _stext: u8;
    static _etext: u8;
    static _erodata: u8;
    static _end: u8;
}

/// The least memory between the image and the top of memory.
const MIN_FREE: u64 = 512 << 10;

fn addr(sym: &u8) -> u64 {
    sym as *const u8 as u64
}

/// Continues the boot on the guest's own stack, at the top of memory, once
/// the platform code has read its boot information.
pub(crate) fn start(boot: Boot) -> ! {
    BOOT.with(|b| *b = Some(boot));
    let Ok(cmdline) = core::str::from_utf8(boot.cmdline) else {
        abort_with(format_args!("the command line is not valid UTF-8"));
    };
    console::set_level(crate::cmdline::level(cmdline));

    // SAFETY: linker-script symbols; only their addresses are used.
    let (stext, etext, erodata, end) = unsafe { (addr(&_stext), addr(&_etext), addr(&_erodata), addr(&_end)) };
    let heap_start = solo5_abi::align_up(end, solo5_abi::PAGE_SIZE).unwrap_or(u64::MAX);
    if heap_start.saturating_add(MIN_FREE) > boot.mem_size {
        abort_with(format_args!("Not enough memory"));
    }
    let free = boot.mem_size - heap_start;
    let stack = if free >= 16 << 20 { 1 << 20 } else { (free / 4) & !(solo5_abi::PAGE_SIZE - 1) };
    let heap_size = free - stack;

    console::log(
        Level::Info,
        format_args!(
            "Solo5: Bindings version {} (mirage-rs {}, {})\n",
            solo5_abi::SOLO5_VERSION,
            env!("CARGO_PKG_VERSION"),
            super::TARGET
        ),
    );
    console::log(Level::Info, format_args!("Solo5: Memory map: {} MB addressable:\n", boot.mem_size >> 20));
    console::log(Level::Info, format_args!("Solo5:   reserved @ (0x0 - 0x{:x})\n", stext - 1));
    console::log(Level::Info, format_args!("Solo5:       text @ (0x{stext:x} - 0x{:x})\n", etext - 1));
    console::log(Level::Info, format_args!("Solo5:     rodata @ (0x{etext:x} - 0x{:x})\n", erodata - 1));
    console::log(Level::Info, format_args!("Solo5:       data @ (0x{erodata:x} - 0x{:x})\n", end - 1));
    console::log(Level::Info, format_args!("Solo5:       heap >= 0x{heap_start:x} < stack < 0x{:x}\n", boot.mem_size));
    // hvt's and spt's tenders (ours and Solo5's) give the guest fresh
    // anonymous memory and write nothing past the image's end; on virtio a
    // boot loader has run in it.
    let zeroed = cfg!(any(feature = "hvt", feature = "spt"));
    // SAFETY: [heap_start, heap_start + heap_size) lies between the end of
    // the image and the stack, memory nothing else uses, zero as above.
    if !unsafe { heap::init(heap_start as usize, heap_size as usize, zeroed) } {
        abort_with(format_args!("heap initialisation failed"));
    }
    // Options after the application's first word need a copy without them
    // (the boot information's is not ours to change); it lives as long as
    // the unikernel.
    let cmdline: &'static str = match crate::cmdline::strip(cmdline) {
        alloc::borrow::Cow::Borrowed(s) => s,
        alloc::borrow::Cow::Owned(s) => alloc::boxed::Box::leak(s.into_boxed_str()),
    };
    let si = StartInfo { cmdline, heap_start: heap_start as usize, heap_size: heap_size as usize };
    // SAFETY: the application defines this function with main!; its
    // signature is checked there.
    let status = unsafe { __mirage_solo5_app_main(&si) };
    exit(status)
}

/// Ends the unikernel with `status` (`solo5_exit`).
pub fn exit(status: i32) -> ! {
    console::log(Level::Debug, format_args!("Solo5: {} exits to the host\n", super::exits()));
    console::log(Level::Info, format_args!("Solo5: solo5_exit({status}) called\n"));
    console::flush();
    platform::halt(status, 0)
}

/// Ends the unikernel with status 255 (`solo5_abort`).
pub fn abort() -> ! {
    abort_with(format_args!("solo5_abort() called"))
}

pub(crate) fn abort_with(msg: core::fmt::Arguments<'_>) -> ! {
    console::log(Level::Error, format_args!("Solo5: ABORT: {msg}\n"));
    console::flush();
    platform::halt(solo5_abi::EXIT_ABORT, 0)
}

/// Reports a CPU exception as Solo5 guests do (its vector's name, the
/// error code, the trap frame, `%cr2` for a page fault), flushed; the
/// caller then halts.
#[cfg(any(feature = "hvt", feature = "virtio"))]
pub(crate) fn report_trap(vector: u64, r: &solo5_abi::hvt::TrapRegs) {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "#NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
        "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    let name = NAMES.get(vector as usize).copied().unwrap_or("#??");
    console::log(
        Level::Error,
        format_args!(
            "Solo5: trap: type={name} ec=0x{:x} rip=0x{:x} rsp=0x{:x} rflags=0x{:x}\n",
            r.ec, r.rip, r.rsp, r.rflags
        ),
    );
    if vector == 14 {
        console::log(Level::Error, format_args!("Solo5: trap: cr2=0x{:x}\n", r.cr2));
    }
    console::log(Level::Error, format_args!("Solo5: ABORT: Fatal trap\n"));
    console::flush();
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut w = console::Writer;
    let _ = write!(w, "Solo5: ABORT: ");
    if let Some(loc) = info.location() {
        let _ = write!(w, "{}:{}:{}: ", loc.file(), loc.line(), loc.column());
    }
    let _ = writeln!(w, "{}", info.message());
    if let Some(n) = heap::failed() {
        // The panic of an allocation that failed (`handle_alloc_error`):
        // say what ran out, and the fix.
        let _ = writeln!(
            w,
            "Solo5: out of memory: {n} bytes could not be had with {} KiB of the heap's {} KiB in use; \
             give the unikernel more memory (the tender's --mem)",
            heap::in_use() / 1024,
            heap::size() / 1024
        );
    }
    console::flush();
    platform::halt(solo5_abi::EXIT_ABORT, 0)
}
