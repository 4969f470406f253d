//! Everything that exists only in a guest built for a Solo5 target.

use core::cell::UnsafeCell;

mod notes;

pub mod block;
pub mod console;
pub mod dev;
mod heap;
mod mem;
pub mod net;
mod rt;
pub mod time;

#[cfg(feature = "hvt")]
mod hvt;
#[cfg(feature = "hvt")]
use hvt as platform;

#[cfg(feature = "spt")]
mod spt;
#[cfg(feature = "spt")]
use spt as platform;

#[cfg(feature = "virtio")]
mod virtio;
#[cfg(feature = "virtio")]
use virtio as platform;

#[cfg(any(feature = "hvt", feature = "virtio"))]
mod stack;
#[cfg(any(feature = "hvt", feature = "virtio"))]
mod trap_stubs;

pub use rt::{abort, exit};

use crate::HandleSet;

/// The name of the target the guest was built for.
pub const TARGET: &str = if cfg!(feature = "hvt") {
    "hvt"
} else if cfg!(feature = "virtio") {
    "virtio"
} else {
    "spt"
};

/// A global of the guest. A Solo5 guest has one thread and takes no
/// interrupts or signals, so there is never concurrent access; the only
/// code that can run "in the middle" of other code is the fatal trap path,
/// which does not return.
pub(crate) struct Global<T>(UnsafeCell<T>);

// SAFETY: see the type's documentation: a single thread of execution.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub(crate) const fn new(v: T) -> Global<T> {
        Global(UnsafeCell::new(v))
    }

    /// Runs `f` with exclusive access. `f` must not call back into code
    /// that uses the same global (none of the bindings' globals nest).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single thread, and callers do not nest accesses to the
        // same global (see above), so this is the only reference.
        f(unsafe { &mut *self.0.get() })
    }
}

/// What the bindings learnt at boot.
#[derive(Clone, Copy)]
pub(crate) struct Boot {
    pub mem_size: u64,
    pub cmdline: &'static [u8],
    pub mft: &'static [solo5_abi::mft::MftEntry],
}

static BOOT: Global<Option<Boot>> = Global::new(None);

pub(crate) fn boot() -> Boot {
    BOOT.with(|b| *b).unwrap_or(Boot { mem_size: 0, cmdline: b"", mft: &[] })
}

use solo5_abi::mft::{MftEntry, MftHeader};

/// The NUL-terminated string at `addr`, at most `max` bytes.
pub(crate) fn cstr(addr: u64, max: usize) -> &'static [u8] {
    if addr == 0 {
        return b"";
    }
    // SAFETY: the tender placed the command line there, in low memory that
    // stays mapped, read-only and unchanged for the guest's whole life.
    let all = unsafe { core::slice::from_raw_parts(addr as *const u8, max) };
    &all[..all.iter().position(|&b| b == 0).unwrap_or(max)]
}

/// The tender's copy of the manifest at `addr`.
pub(crate) fn manifest(addr: u64) -> &'static [MftEntry] {
    if addr == 0 {
        return &[];
    }
    // SAFETY: the tender wrote a validated manifest there (header, then
    // `entries` entries, at most 64), in low memory that stays mapped and
    // unchanged; MftEntry accepts any bytes.
    unsafe {
        let h = (addr as *const MftHeader).read();
        let n = (h.entries as usize).min(solo5_abi::mft::MFT_MAX_ENTRIES as usize);
        core::slice::from_raw_parts((addr + 8) as *const MftEntry, n)
    }
}

/// How many times the guest has left to the host so far: hypercalls and
/// net ring kicks on hvt, blocking waits (`epoll_pwait`) on spt, device
/// notifications and halts on virtio. For measurements.
pub fn exits() -> u64 {
    platform::EXITS.load(core::sync::atomic::Ordering::Relaxed)
}

/// Sleeps until the monotonic clock reaches `deadline` (nanoseconds, see
/// [`time::monotonic`]) or a network device has input, whichever comes
/// first, and returns the set of devices ready (`solo5_yield`). Flushes the
/// console first.
pub fn yield_until(deadline: u64) -> HandleSet {
    console::flush();
    HandleSet(platform::poll(deadline))
}
