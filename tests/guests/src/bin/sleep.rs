//! Sleeps with `yield_until` and checks the clocks, after Solo5's test_time:
//! `sleep [MILLISECONDS]` (default 1000). The monotonic clock must advance
//! by at least the time slept and not much more; the wall clock must be
//! after 2017.
#![no_std]
#![no_main]

use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let ms: u64 = si.cmdline.split_whitespace().next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let t0 = solo5::time::monotonic();
    let deadline = t0 + ms * 1_000_000;
    let mut wakeups = 0;
    while solo5::time::monotonic() < deadline {
        solo5::yield_until(deadline);
        wakeups += 1;
    }
    let slept = solo5::time::monotonic() - t0;
    let wall = solo5::time::wall();
    solo5::println!("slept {slept} ns in {wakeups} wake-ups; wall clock {wall} ns");
    if slept < ms * 1_000_000 {
        solo5::println!("FAILURE: slept too little");
        return 1;
    }
    if slept > ms * 1_000_000 + 200_000_000 {
        solo5::println!("FAILURE: slept too long");
        return 1;
    }
    if wall < 1_483_228_800_000_000_000 {
        solo5::println!("FAILURE: the wall clock is before 2017");
        return 1;
    }
    solo5::println!("SUCCESS");
    0
}
