//! Guest bindings for the Solo5 targets: what a `#![no_std]` unikernel
//! links against to boot on `solo5-hvt` (KVM), `solo5-spt` (seccomp) or
//! virtio (a Multiboot image for QEMU or GRUB, with virtio devices).
//!
//! The same guest source builds for every target; the crate feature `hvt`,
//! `spt` or `virtio` picks one. The bindings provide the entry point, the
//! ELF notes, a heap (`alloc` works), a panic handler, and the Solo5 API in
//! Rust: `console`, `time`, `yield_until`, `net`, `block`, `exit` and
//! `abort` (built with one of those features only).
//!
//! A minimal guest:
//!
//! ```text
//! #![no_std]
//! #![no_main]
//! use mirage_solo5 as solo5;
//!
//! solo5::manifest!(net "service");
//! solo5::main!(start);
//!
//! fn start(si: &solo5::StartInfo) -> i32 {
//!     solo5::console::write(b"Hello, World\n");
//!     0
//! }
//! ```
//!
//! with a build script that forwards the link settings:
//!
//! ```text
//! fn main() {
//!     if let Ok(args) = std::env::var("DEP_MIRAGE_SOLO5_LINK_ARGS") {
//!         for a in args.split(' ') {
//!             println!("cargo:rustc-link-arg-bins={a}");
//!         }
//!     }
//! }
//! ```
//!
//! # On hvt
//!
//! The tender starts the guest at CPL 0, as the Solo5 ABI requires. On the
//! nested, paravirtualised KVM this project runs on, code at CPL 0 is
//! emulated instruction by instruction (about 1.6 million per second) while
//! code at CPL 3 runs natively, so the bindings spend a few dozen
//! instructions at CPL 0, installing their own GDT, TSS, IDT and page tables
//! (static data in the image), and run everything else, the unikernel
//! included, at CPL 3. A hypercall's `out` instruction then traps to a
//! ten-instruction CPL-0 handler that performs it and returns. CPU
//! exceptions are reported at CPL 3 with the trap frame, then the guest
//! halts with status 255. See [`hvt`](crate#on-hvt) and ARCHITECTURE.md.
//!
//! Console output is buffered on hvt (each flush is an exit) and flushed
//! when the guest yields, exits, aborts or fills the buffer; on spt and
//! virtio it is written at once.
//!
//! # On virtio
//!
//! A Multiboot loader starts the guest in 32-bit mode; the bindings switch
//! to long mode with static page tables and run everything at CPL 0, as
//! Solo5's virtio bindings do: the console is COM1, the clocks the TSC
//! (calibrated against the PIT) and the CMOS RTC, the devices virtio-net
//! and virtio-blk over legacy PCI, and a waiting guest halts until the PIT
//! or a network device interrupts. See ARCHITECTURE.md.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

#[cfg(any(
    all(feature = "hvt", feature = "spt"),
    all(feature = "hvt", feature = "virtio"),
    all(feature = "spt", feature = "virtio")
))]
compile_error!("mirage-solo5: enable exactly one of the features `hvt`, `spt` and `virtio`");

extern crate alloc;

pub mod cmdline;
#[doc(hidden)]
pub mod macros;

#[cfg(any(feature = "hvt", feature = "spt", feature = "virtio"))]
mod target;
#[cfg(any(feature = "hvt", feature = "spt", feature = "virtio"))]
pub use target::*;

pub use solo5_abi as abi;

/// Errors of the Solo5 calls (`solo5_result_t` other than `SOLO5_R_OK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `SOLO5_R_AGAIN`: nothing available now (no frame to read).
    Again,
    /// `SOLO5_R_EINVAL`: a bad argument (unknown device, misaligned or
    /// out-of-range block I/O, wrong size).
    Invalid,
    /// `SOLO5_R_EUNSPEC`: the host failed.
    Unspecified,
}

impl Error {
    /// From a raw `solo5_result_t`: `Ok(())` for `SOLO5_R_OK`.
    pub fn check(raw: u32) -> Result<(), Error> {
        match solo5_abi::SoloResult::from_raw(raw) {
            solo5_abi::SoloResult::Ok => Ok(()),
            solo5_abi::SoloResult::Again => Err(Error::Again),
            solo5_abi::SoloResult::Inval => Err(Error::Invalid),
            solo5_abi::SoloResult::Unspec => Err(Error::Unspecified),
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::Again => "try again",
            Error::Invalid => "invalid argument",
            Error::Unspecified => "unspecified error",
        })
    }
}

/// A set of device handles (bit `i` for manifest index `i`), as returned by
/// [`yield_until`](crate#yield_until).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandleSet(pub u64);

impl HandleSet {
    /// Whether device `handle` is in the set.
    pub fn contains(self, handle: u64) -> bool {
        handle < 64 && self.0 & (1 << handle) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What the bindings hand to the application's `main`.
#[derive(Debug, Clone, Copy)]
pub struct StartInfo {
    /// The command line after the kernel path, without the bindings' own
    /// `--solo5:` options.
    pub cmdline: &'static str,
    /// Start of the heap the global allocator serves.
    pub heap_start: usize,
    /// Its size in bytes.
    pub heap_size: usize,
}
