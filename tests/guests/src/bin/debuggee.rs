//! A guest for the GDB server's tests: a start function to break at, a
//! function with arguments and a global to read, and an exit status that
//! says the program ran to its end (`debuggee [N]`: exits with the sum of
//! 1..=N, modulo 256; N is 4 if absent).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

/// Updated on every call of `add`, for gdb to read.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Adds `n` to `total`: a frame of its own, for breakpoints and backtraces.
#[inline(never)]
fn add(total: u64, n: u64) -> u64 {
    CALLS.fetch_add(1, Ordering::Relaxed);
    core::hint::black_box(total + n)
}

fn start(si: &solo5::StartInfo) -> i32 {
    let limit: u64 = si.cmdline.trim().parse().unwrap_or(4);
    let mut total = 0;
    for n in 1..=limit {
        total = add(total, n);
    }
    solo5::println!("debuggee: sum {total}, {} calls", CALLS.load(Ordering::Relaxed));
    (total % 256) as i32
}
