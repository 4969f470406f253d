//! Integer and floating-point work: `compute [ITERATIONS]` (default 10^8).
//! Prints the time the loop took on the monotonic clock, so the same work
//! can be compared across targets.
#![no_std]
#![no_main]

use core::hint::black_box;
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let n: u64 = si.cmdline.split_whitespace().next().and_then(|a| a.parse().ok()).unwrap_or(100_000_000);
    let t0 = solo5::time::monotonic();
    let mut x: u64 = 1;
    let mut f: f64 = 1.0;
    for i in 0..n {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        f = black_box(f * 1.000_000_001 + 1e-9);
    }
    let ns = solo5::time::monotonic() - t0;
    solo5::println!("compute: {n} iterations in {ns} ns (x={x:016x}, f={:.6})", f);
    0
}
