//! Benchmark unikernels, generic over the device traits so that one source
//! measures every target. Each prints one line of figures that
//! `mirage-bench` parses.
#![no_std]
#![deny(missing_docs)]
#![allow(async_fn_in_trait)]

extern crate alloc;

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use mirage_devices::block::Block;
use mirage_devices::console::Console;
use mirage_devices::time::{Duration, Instant, Sleep};

/// Sequential write, then read, of `total` bytes in requests of `chunk`
/// bytes through the Block trait. Prints
/// `blockbench: write W MiB/s read R MiB/s (T MiB in C KiB requests)`.
pub async fn block(
    console: impl Console,
    block: impl Block,
    clock: impl Sleep,
    total: u64,
    chunk: usize,
) -> Result<(), &'static str> {
    let info = block.info();
    let ss = info.sector_size as usize;
    let chunk = (chunk / ss).max(1) * ss;
    let total = total.min(info.capacity()) / chunk as u64 * chunk as u64;
    if total == 0 {
        return Err("the device is smaller than one request");
    }
    let mut buf: Vec<u8> = (0..chunk).map(|i| i as u8).collect();
    let per = (chunk / ss) as u64;
    let t0 = clock.now();
    let mut sector = 0;
    while sector * (ss as u64) < total {
        block.write(sector, &buf).await.map_err(|_| "write failed")?;
        sector += per;
    }
    block.flush().await.map_err(|_| "flush failed")?;
    let t1 = clock.now();
    let mut sector = 0;
    while sector * (ss as u64) < total {
        block.read(sector, &mut buf).await.map_err(|_| "read failed")?;
        sector += per;
    }
    let t2 = clock.now();
    let mib = |d: Duration| total as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9);
    let line = format!(
        "blockbench: write {:.1} MiB/s read {:.1} MiB/s ({} MiB in {} KiB requests)",
        mib(t1 - t0),
        mib(t2 - t1),
        total >> 20,
        chunk >> 10
    );
    console.log(&line).await.map_err(|_| "console failed")
}

/// Sleeps `count` times for each of 1 ms, 10 ms and 100 ms and reports
/// how late the wake-ups were. Prints, per period,
/// `timerbench: sleep P ms: mean L us, p99 Q us, max M us (N sleeps)`.
pub async fn timers(console: impl Console, clock: impl Sleep, count: usize) -> Result<(), &'static str> {
    for period_ms in [1u64, 10, 100] {
        let period = Duration::from_millis(period_ms);
        let n = if period_ms == 100 { count.min(20) } else { count };
        let mut late: Vec<u64> = vec![0; n];
        for l in late.iter_mut() {
            let deadline: Instant = clock.now() + period;
            clock.sleep_until(deadline).await;
            *l = (clock.now() - deadline).as_nanos() as u64;
        }
        late.sort_unstable();
        let mean = late.iter().sum::<u64>() / n as u64;
        let p99 = late[((n - 1) * 99) / 100];
        let line = format!(
            "timerbench: sleep {period_ms} ms: mean {} us, p99 {} us, max {} us ({n} sleeps)",
            mean / 1000,
            p99 / 1000,
            late[n - 1] / 1000
        );
        console.log(&line).await.map_err(|_| "console failed")?;
    }
    Ok(())
}
