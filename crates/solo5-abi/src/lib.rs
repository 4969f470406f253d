//! The Solo5 v0.12.1 binary interface, as Rust types and constants.
//!
//! This crate is the single source of truth shared by the tenders
//! (`solo5-hvt`, `solo5-spt`, `solo5-elftool`) and the guest bindings
//! (`mirage-solo5`). Every struct is `#[repr(C)]` with the size and field
//! offsets of Solo5's C headers on x86_64, checked by the tests at the bottom
//! of each module, so that guests and tenders built from this crate are
//! binary-compatible with Solo5's own.
//!
//! * [`hvt`]: the KVM tender's hypercalls, boot information and low memory
//!   layout (`include/hvt_abi.h`);
//! * [`ring`]: the shared-memory network ring (`include/hvt_ring.h`);
//! * [`spt`]: the seccomp tender's boot information (`include/spt_abi.h`);
//! * [`mft`]: the application manifest (`include/mft_abi.h`);
//! * [`note`]: the ELF notes that identify a Solo5 executable
//!   (`include/elf_abi.h`).
//!
//! ```
//! use solo5_abi::{hvt, mft};
//! assert_eq!(hvt::ABI_VERSION, 2);
//! assert_eq!(core::mem::size_of::<hvt::BootInfo>(), 56);
//! assert_eq!(mft::manifest_size(2), 8 + 2 * 104);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod hvt;
pub mod mft;
pub mod note;
pub mod ring;
pub mod spt;
pub mod vnet;

/// The Solo5 release whose interface this crate describes.
pub const SOLO5_VERSION: &str = "v0.12.1";

/// `solo5_result_t`: the result of a Solo5 call.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoloResult {
    /// `SOLO5_R_OK`: the operation completed.
    Ok = 0,
    /// `SOLO5_R_AGAIN`: nothing to do now (no packet to read); try later.
    Again = 1,
    /// `SOLO5_R_EINVAL`: an argument was invalid.
    Inval = 2,
    /// `SOLO5_R_EUNSPEC`: the operation failed for another reason.
    Unspec = 3,
}

impl SoloResult {
    /// Decodes a raw `solo5_result_t`; unknown values become [`SoloResult::Unspec`].
    pub const fn from_raw(raw: u32) -> SoloResult {
        match raw {
            0 => SoloResult::Ok,
            1 => SoloResult::Again,
            2 => SoloResult::Inval,
            _ => SoloResult::Unspec,
        }
    }
}

/// `SOLO5_EXIT_SUCCESS`.
pub const EXIT_SUCCESS: i32 = 0;
/// `SOLO5_EXIT_FAILURE`.
pub const EXIT_FAILURE: i32 = 1;
/// `SOLO5_EXIT_ABORT`: the status of an abort, a panic or a CPU exception.
pub const EXIT_ABORT: i32 = 255;

/// Size of a guest page on x86_64.
pub const PAGE_SIZE: u64 = 0x1000;

/// Rounds `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}
