//! What the mirage tool makes: the size of every example's image on every
//! target, the least memory each boots in, and how long configure and
//! build take, from clean and after a one-line change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::{Netns, Run, example_with, root, run_with, tender};

use crate::{Options, machine};

const EXAMPLES: [&str; 7] = ["hello", "hello-key", "block", "kv-ro", "ping", "network", "static-website"];

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// Boots `image` of example `name` on `target` with `--mem=mib`; whether
/// it came up: exited 0, or (a server) printed its first line.
fn boots(name: &str, target: &str, image: &Path, mib: u32, disk: &Path) -> Result<bool, String> {
    let ns = Netns::new()?;
    let mut c = ns.command(tender(target));
    c.arg(format!("--mem={mib}"));
    match name {
        "block" => {
            c.arg(format!("--block:storage={}", disk.display()));
        }
        "ping" | "network" | "static-website" => {
            c.arg("--net:service=tap0");
        }
        _ => {}
    }
    c.arg(image).arg("--solo5:quiet");
    if ["network", "static-website"].contains(&name) {
        c.arg("--ipv4=10.0.0.2/24");
    }
    let up = match name {
        "network" => Some("network: "),
        "static-website" => Some("static-website: serving"),
        "ping" => Some("ping: "),
        _ => None,
    };
    match up {
        None => {
            let r: Run = run_with(c, Duration::from_secs(20))?;
            Ok(r.status() == 0)
        }
        Some(line) => {
            let mut g = testkit::Background::start(c)?;
            Ok(g.wait_for(line, Duration::from_secs(10)).is_ok())
        }
    }
}

/// The least `--mem` (MiB) `image` boots with, by bisection. solo5-hvt
/// rounds memory up to whole 2 MiB pages, so on hvt only even sizes are
/// tried.
fn least_mem(name: &str, target: &str, image: &Path, disk: &Path) -> Result<Option<u32>, String> {
    let step = if target == "hvt" { 2 } else { 1 };
    let (mut lo, mut hi) = (1u32, 64 / step);
    if !boots(name, target, image, hi * step, disk)? {
        return Ok(None);
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if boots(name, target, image, mid * step, disk)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(hi * step))
}

/// A copy of example `name` under `target/bench-images/` with its own
/// Cargo target directory, whose dependencies point at this repository.
fn scratch_copy(name: &str) -> Result<PathBuf, String> {
    let src = root().join("examples").join(name);
    let dir = root().join("target/bench-images").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(root().join("target/bench-images")).map_err(|e| e.to_string())?;
    let out = std::process::Command::new("cp").arg("-r").arg(&src).arg(&dir).status().map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("cp -r {}", src.display()));
    }
    let _ = std::fs::remove_dir_all(dir.join("mirage"));
    let _ = std::fs::remove_dir_all(dir.join("dist"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("Cargo.toml"),
        manifest.replace("../../crates", &root().join("crates").display().to_string()),
    )
    .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `mirage configure -t target` then `mirage build` in `dir` with its own
/// target directory; the time both took.
fn configure_build(dir: &Path, target: &str) -> Result<Duration, String> {
    let t = Instant::now();
    for args in [&["configure", "-t", target][..], &["build"][..]] {
        let mut c = std::process::Command::new(testkit::mirage()?);
        c.arg("-C").arg(dir).args(args).env("CARGO_TARGET_DIR", dir.join("mirage/target"));
        let r = run_with(c, Duration::from_secs(1800))?;
        if r.status() != 0 {
            return Err(format!("mirage {args:?}: {}", r.dump()));
        }
    }
    Ok(t.elapsed())
}

pub fn images(o: &Options) -> Result<(), String> {
    machine();
    testkit::mirage()?;
    println!(
        "Image sizes: `mirage configure -t TARGET && mirage build` (unix: host sockets; Solo5: opt-level s, LTO, stripped)."
    );
    println!();
    println!("| example | unix | hvt | spt | least --mem hvt | least --mem spt |");
    println!("|---|---|---|---|---|---|");
    let scratch = testkit::Scratch::new("images");
    let disk = scratch.file("disk.img", 1 << 20);
    for ex in EXAMPLES {
        let mut sizes = Vec::new();
        let mut mems = Vec::new();
        for t in ["unix", "hvt", "spt"] {
            let image = example_with(t, ex, &[])?;
            sizes.push(kib(std::fs::metadata(&image).map_err(|e| e.to_string())?.len()));
            if t != "unix" {
                mems.push(match least_mem(ex, t, &image, &disk)? {
                    Some(m) => format!("{m} MiB"),
                    None => "does not boot in 64 MiB".into(),
                });
            }
        }
        println!("| {ex} | {} | {} | {} | {} | {} |", sizes[0], sizes[1], sizes[2], mems[0], mems[1]);
    }
    if let Some(solo5) = &o.solo5 {
        let hello = solo5.join("tests/test_hello/test_hello.hvt");
        let spt = solo5.join("tests/test_hello/test_hello.spt");
        let size = |p: &Path| std::fs::metadata(p).map(|m| kib(m.len())).unwrap_or_else(|_| "-".into());
        println!("| Solo5 v0.12.1 test_hello (C) | - | {} | {} | | |", size(&hello), size(&spt));
    }
    println!();
    println!(
        "Configure and build times of a copy of an example with a target directory of its own (every dependency compiled):"
    );
    println!();
    println!("| example | target | from clean | after a one-line change | rebuild with no change |");
    println!("|---|---|---|---|---|");
    for (ex, target) in [("hello", "hvt"), ("hello", "unix"), ("static-website", "hvt")] {
        let dir = scratch_copy(ex)?;
        let clean = configure_build(&dir, target)?;
        let lib = dir.join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).map_err(|e| e.to_string())?;
        std::fs::write(&lib, format!("{text}\n/// A line added by the benchmark.\npub const BENCH_CHANGE: u32 = 1;\n"))
            .map_err(|e| e.to_string())?;
        let changed = configure_build(&dir, target)?;
        let again = configure_build(&dir, target)?;
        println!(
            "| {ex} | {target} | {:.1} s | {:.1} s | {:.1} s |",
            clean.as_secs_f64(),
            changed.as_secs_f64(),
            again.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
