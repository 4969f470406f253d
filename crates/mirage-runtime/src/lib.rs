//! The mirage-rs runtime: a single-core cooperative executor, its timers and
//! device readiness, boot arguments and logging. `no_std` + `alloc`; the
//! `std` feature is for host builds.
//!
//! A unikernel's `start` is an `async fn`. A target runs it with [`run`],
//! giving a [`Platform`]: the one call that sleeps until the next timer
//! deadline or until a device is ready (`solo5_yield` on Solo5, `poll(2)` on
//! unix). Between such waits the executor polls every task that was woken;
//! it never spins.
//!
//! ```
//! use mirage_runtime::{time, Platform, Source, Interest};
//!
//! /// A platform with a simulated clock: waiting jumps to the deadline.
//! struct Sim(u64);
//! impl Platform for Sim {
//!     fn now(&self) -> u64 { self.0 }
//!     fn wait(&mut self, deadline: Option<u64>, _io: &[(Source, Interest)], _ready: &mut dyn FnMut(Source, Interest)) {
//!         if let Some(d) = deadline { self.0 = self.0.max(d) }
//!     }
//! }
//!
//! let mut sim = Sim(0);
//! let out = mirage_runtime::run(&mut sim, async {
//!     let a = mirage_runtime::spawn(async { time::sleep(time::Duration::from_secs(2)).await; 2 });
//!     time::sleep(time::Duration::from_secs(1)).await;
//!     a.await + 1
//! });
//! assert_eq!(out, 3);
//! assert_eq!(sim.now(), 2_000_000_000);
//! ```
//!
//! # Threads
//!
//! One runtime runs on one thread. With `std` each thread may run its own;
//! without it (a unikernel) there is one thread in all. Wakers may be
//! called from anywhere, but a wake from another thread is noticed only
//! when the runtime next wakes up by itself.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![deny(missing_docs)]

extern crate alloc;

pub mod args;
mod core_state;
pub mod entry;
mod exec;
pub mod io;
pub mod logger;
pub mod memory;
pub mod time;

#[cfg(test)]
mod tests;

pub use entry::{Outcome, boot, boot_with};
pub use exec::{Either, JoinHandle, join, join_all, run, select, spawn, yield_now};
pub use io::{Interest, Source};

/// What the executor needs from the target: a monotonic clock and a way to
/// sleep until a deadline or until I/O is ready.
pub trait Platform {
    /// Monotonic time in nanoseconds.
    fn now(&self) -> u64;

    /// Sleeps until the monotonic clock reaches `deadline` (forever if
    /// `None`), or until one of the sources in `io` is ready for its
    /// interest; calls `ready` for each. May return early. A deadline at or
    /// before now asks only to collect what is ready, without sleeping.
    fn wait(&mut self, deadline: Option<u64>, io: &[(Source, Interest)], ready: &mut dyn FnMut(Source, Interest));

    /// A function that reads the same clock as [`Platform::now`] from
    /// anywhere, for [`time::now`]; `None` if the clock lives only in the
    /// platform (a simulated one), in which case `time::now` gives the time
    /// the executor last read.
    fn clock(&self) -> Option<fn() -> u64> {
        None
    }
}
