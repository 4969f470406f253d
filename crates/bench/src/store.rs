//! The crash-safe store on a block device: crash trials (`crash`), and
//! durable writes beside SQLite (`store`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Background, Scratch, example_with, mirage, tender};

use crate::{Options, machine};

/// A formatted store of `size` in `dir`.
fn formatted(dir: &Scratch, size: &str) -> Result<std::path::PathBuf, String> {
    let disk = dir.0.join("data.img");
    let r = testkit::run(
        mirage()?,
        &["kv".as_ref(), "format".as_ref(), disk.as_os_str(), format!("--size={size}").as_ref()],
    )?;
    r.expect_status(0)?;
    Ok(disk)
}

/// `mirage-bench crash [--count N]`: N crash trials (1,000 by default) of
/// the kv-writer on hvt and on spt.
pub fn crash(o: &Options) -> Result<(), String> {
    machine();
    let trials = if o.count == 20_000 { 1000 } else { o.count };
    println!(
        "crash trials: kv-writer killed with SIGKILL at a random moment up to 300 ms after it starts, {trials} times in a \
         row on one 64 MiB image; after each kill the image is opened on the host and must hold a prefix of the \
         writer's changes that keeps every acknowledged one, every value whole"
    );
    println!();
    println!(
        "| target | trials | acknowledged changes | lost | torn | killed before the first | longest open | time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for t in ["hvt", "spt"] {
        let image = example_with(t, "kv-writer", &[])?;
        let dir = Scratch::new("crash");
        let disk = formatted(&dir, "64M")?;
        let out = testkit::crash::run(t, &image, &disk, trials, Duration::from_millis(300), &mut |_| {})?;
        println!(
            "| mirage-rs {t} | {} | {} | 0 | 0 | {} | {:.1} ms | {:.0} s |",
            out.trials,
            out.acknowledged,
            out.before_any,
            out.max_open.as_secs_f64() * 1e3,
            out.seconds
        );
    }
    Ok(())
}

/// Acknowledged changes per second of the kv-writer on `target` storing
/// `len`-byte values for `secs`, with `attach` (`--block` or
/// `--block-dsync`).
fn writer_rate(target: &str, attach: &str, len: usize, secs: u64) -> Result<f64, String> {
    let keys: &[&str] = if target == "unix" { &["--net=direct"] } else { &[] };
    let image = example_with(target, "kv-writer", keys)?;
    let dir = Scratch::new("storebench");
    let disk = formatted(&dir, "64M")?;
    let block = format!("{attach}:data={}", disk.display());
    let mut cmd = if target == "unix" {
        let mut c = Command::new(&image);
        c.arg(&block);
        c
    } else {
        let mut c = Command::new(tender(target));
        c.arg(&block).arg(&image).arg("--solo5:quiet");
        c
    };
    cmd.args([format!("--len={len}"), "--pause-us=0".into()]);
    let mut bg = Background::start(cmd)?;
    bg.wait_for("kv-writer: ready", Duration::from_secs(30))?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let _ = bg.child.kill();
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = bg.child.wait();
    let acks = bg.output().lines().filter(|l| l.starts_with("kv-writer: ack ")).count();
    Ok(acks as f64 / elapsed)
}

/// SQLite in WAL mode, `synchronous` as given, on a file of `dir`: each
/// change one transaction (INSERT OR REPLACE of a `len`-byte value on 24
/// keys) for `secs`; changes per second.
fn sqlite_rate(dir: &Path, synchronous: &str, len: usize, secs: u64) -> Result<f64, String> {
    let db = dir.join(format!("bench-{synchronous}.db"));
    let script = format!(
        "import sqlite3, time, os\n\
         db = sqlite3.connect({db:?}, isolation_level=None)\n\
         db.execute('PRAGMA journal_mode=WAL')\n\
         db.execute('PRAGMA synchronous={synchronous}')\n\
         db.execute('CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)')\n\
         v = os.urandom({len})\n\
         n = 0\n\
         end = time.monotonic() + {secs}\n\
         t0 = time.monotonic()\n\
         while time.monotonic() < end:\n\
         \x20   db.execute('INSERT OR REPLACE INTO kv VALUES (?, ?)', ('/k%d' % (n % 24), v))\n\
         \x20   n += 1\n\
         print(n / (time.monotonic() - t0))\n",
        db = db.display().to_string()
    );
    let out = Command::new("python3").arg("-c").arg(script).output().map_err(|e| format!("python3: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("sqlite: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `mirage-bench store [--runs SECONDS]`: durable writes of 100-byte and
/// 1 MiB values, beside SQLite, on files of the same disk.
pub fn store(o: &Options) -> Result<(), String> {
    machine();
    let secs = if o.runs == 50 { 5 } else { o.runs as u64 };
    println!(
        "acknowledged writes per second (each one change: its future completed, or its transaction committed), \
         {secs} s a row, values rewritten over 24 keys; files on the same disk (/tmp)"
    );
    println!();
    println!("| store | durable when | 100 B writes/s | 1 MiB writes/s | 1 MiB MB/s |");
    println!("|---|---|---|---|---|");
    let rows: [(&str, &str, &str); 5] = [
        ("unix", "--block", "flush is fdatasync: on the disk"),
        ("hvt", "--block", "in the host's page cache (Solo5: no flush)"),
        ("spt", "--block", "in the host's page cache (Solo5: no flush)"),
        ("hvt", "--block-dsync", "on the disk (O_DSYNC)"),
        ("spt", "--block-dsync", "on the disk (O_DSYNC)"),
    ];
    for (t, attach, when) in rows {
        let small = writer_rate(t, attach, 100, secs)?;
        let big = writer_rate(t, attach, 1 << 20, secs)?;
        println!("| mirage-rs {t} {attach} | {when} | {small:.0} | {big:.1} | {:.1} |", big * 1.048576);
    }
    let dir = Scratch::new("sqlitebench");
    for sync in ["FULL", "NORMAL"] {
        let small = sqlite_rate(&dir.0, sync, 100, secs)?;
        let big = sqlite_rate(&dir.0, sync, 1 << 20, secs)?;
        let when = if sync == "FULL" { "on the disk" } else { "on the disk at checkpoints (WAL)" };
        println!("| SQLite WAL synchronous={sync} | {when} | {small:.0} | {big:.1} | {:.1} |", big * 1.048576);
    }
    Ok(())
}
