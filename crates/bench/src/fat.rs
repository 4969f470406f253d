//! `mirage-bench fat`: the FAT store (`mirage_kv::Fat`) on unix, in
//! process, over an image file, beside the crash-safe `BlockStore` doing
//! the same operations on an image of the same size.

use std::path::Path;
use std::time::{Duration, Instant};

use mirage_devices::kv::{Key, KvRw};
use mirage_kv::BlockStore;
use mirage_kv::fat::{Fat, FormatOptions, format};
use mirage_unix::{FileBlock, UnixPlatform, WallClock};
use testkit::{Scratch, noise};

use crate::{Options, machine};

fn block_on<F: Future>(f: F) -> F::Output {
    mirage_runtime::run(&mut UnixPlatform::new(), f)
}

/// Operations per second of `step(i)` for `secs` seconds.
fn rate(secs: u64, mut step: impl FnMut(usize) -> Result<(), String>) -> Result<f64, String> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        step(n)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Small writes, small reads, 1 MiB writes and reads per second on `s`.
fn figures<S: KvRw>(s: &S, secs: u64) -> Result<[f64; 4], String> {
    let small = noise(1, 1024);
    let big = noise(2, 1 << 20);
    let e = |e: mirage_devices::kv::Error| e.to_string();
    // 200 keys, rewritten in turn: the volume never fills.
    let key = |i: usize| Key::parse(&format!("/small/key {}", i % 200)).map_err(e);
    let w = rate(secs, |i| block_on(s.set(&key(i)?, &small)).map_err(e))?;
    let r = rate(secs, |i| block_on(s.get(&key(i % 200)?)).map(drop).map_err(e))?;
    let bkey = |i: usize| Key::parse(&format!("/big/value {}", i % 8)).map_err(e);
    let bw = rate(secs, |i| block_on(s.set(&bkey(i)?, &big)).map_err(e))?;
    let br = rate(secs, |i| block_on(s.get(&bkey(i % 8)?)).map(drop).map_err(e))?;
    Ok([w, r, bw, br])
}

fn image(dir: &Path, name: &str) -> Result<FileBlock, String> {
    let p = dir.join(name);
    std::fs::File::create(&p).and_then(|f| f.set_len(64 << 20)).map_err(|e| e.to_string())?;
    FileBlock::open(&p, 512, false).map_err(|e| e.to_string())
}

/// `mirage-bench fat [--runs SECONDS]`.
pub fn fat(o: &Options) -> Result<(), String> {
    machine();
    // --runs is seconds an operation here (3 by default).
    let secs = if o.runs == 50 { 3 } else { o.runs.clamp(1, 60) as u64 };
    println!(
        "Fat (formatted by mirage_kv::fat::format) and BlockStore, each on a 64 MiB image file on unix, in process, \
         {secs} s an operation; every change ends with fdatasync: 1 KiB values over 200 keys, 1 MiB values over 8 keys"
    );
    println!();
    println!("| store | small writes/s | small reads/s | 1 MiB writes, MB/s | 1 MiB reads, MB/s |");
    println!("|---|---|---|---|---|");
    let dir = Scratch::new("bench-fat");
    let dev = image(&dir.0, "fat.img")?;
    block_on(format(&dev, FormatOptions::default())).map_err(|e| e.to_string())?;
    let fat = block_on(Fat::open(dev, WallClock)).map_err(|e| e.to_string())?;
    let mib = (1 << 20) as f64 / 1e6;
    let usage = block_on(fat.usage()).map_err(|e| e.to_string())?;
    let [w, r, bw, br] = figures(&fat, secs)?;
    println!(
        "| Fat ({}, clusters of {} bytes) | {w:.0} | {r:.0} | {:.1} | {:.1} |",
        usage.kind,
        usage.cluster_bytes,
        bw * mib,
        br * mib
    );
    let dev = image(&dir.0, "block.img")?;
    let store = block_on(BlockStore::format(dev, WallClock, None)).map_err(|e| e.to_string())?;
    let [w, r, bw, br] = figures(&store, secs)?;
    println!("| BlockStore | {w:.0} | {r:.0} | {:.1} | {:.1} |", bw * mib, br * mib);
    Ok(())
}
