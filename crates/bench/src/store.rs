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
        let out = testkit::crash::run(t, &image, &disk, "--block", trials, Duration::from_millis(300), &mut |_| {})?;
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

/// The kv-writer on `target` with the store on `disk` attached with
/// `attach` (`--block` or `--block-dsync`) and boot arguments `args`,
/// started and ready.
fn writer(target: &str, attach: &str, disk: &Path, args: &[String]) -> Result<Background, String> {
    let keys: &[&str] = if target == "unix" { &["--net=direct"] } else { &[] };
    let image = example_with(target, "kv-writer", keys)?;
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
    cmd.args(args);
    let mut bg = Background::start(cmd)?;
    bg.wait_for("kv-writer: ready", Duration::from_secs(60))?;
    Ok(bg)
}

/// Lets `bg` run for `secs`, kills it, and returns its console and the
/// time it ran since it was ready.
fn run_for(mut bg: Background, secs: u64) -> (String, f64) {
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let _ = bg.child.kill();
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = bg.child.wait();
    (bg.output(), elapsed)
}

/// Acknowledged changes per second of the kv-writer on `target` storing
/// `len`-byte values for `secs`, with `attach` (`--block` or
/// `--block-dsync`).
fn writer_rate(target: &str, attach: &str, len: usize, secs: u64) -> Result<f64, String> {
    let dir = Scratch::new("storebench");
    let disk = formatted(&dir, "64M")?;
    let bg = writer(target, attach, &disk, &[format!("--len={len}"), "--pause-us=0".into()])?;
    let (log, elapsed) = run_for(bg, secs);
    let acks = log.lines().filter(|l| l.starts_with("kv-writer: ack ")).count();
    Ok(acks as f64 / elapsed)
}

/// Values read per second by the kv-writer on `target` (24 keys of `len`
/// bytes, each `get` whole and checked) for `secs`.
fn reader_rate(target: &str, len: usize, secs: u64) -> Result<f64, String> {
    let dir = Scratch::new("storebench");
    let disk = formatted(&dir, "64M")?;
    let every = if len > 4096 { 24 } else { 2400 };
    let bg = writer(target, "--block", &disk, &[format!("--len={len}"), format!("--reads={every}")])?;
    let (log, elapsed) = run_for(bg, secs);
    if log.contains("wrong length") {
        return Err(format!("kv-writer on {target} read a value of the wrong length:\n{log}"));
    }
    let last = log.lines().filter_map(|l| l.strip_prefix("kv-writer: read ")?.parse::<u64>().ok()).max().unwrap_or(0);
    Ok(last as f64 / elapsed)
}

/// A Python script that opens SQLite database `db` in WAL mode with a
/// `kv` table, runs `setup`, then `step` (with `n` its count) for `secs`,
/// and prints the steps per second. Both are Python lines indented by
/// nothing; `step` is run in the loop.
fn sqlite_timed(db: &Path, setup: &str, step: &str, secs: u64) -> Result<f64, String> {
    let script = format!(
        "import sqlite3, time, os\n\
         db = sqlite3.connect({db:?}, isolation_level=None)\n\
         db.execute('PRAGMA journal_mode=WAL')\n\
         db.execute('CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)')\n\
         {setup}\n\
         n = 0\n\
         end = time.monotonic() + {secs}\n\
         t0 = time.monotonic()\n\
         while time.monotonic() < end:\n\
         \x20   {step}\n\
         \x20   n += 1\n\
         print(n / (time.monotonic() - t0))\n",
        db = db.display().to_string()
    );
    python_figure(&script)
}

/// SQLite in WAL mode, `synchronous` as given, on a file of `dir`: each
/// change one transaction (INSERT OR REPLACE of a `len`-byte value on 24
/// keys) for `secs`; changes per second.
fn sqlite_rate(dir: &Path, synchronous: &str, len: usize, secs: u64) -> Result<f64, String> {
    let db = dir.join(format!("bench-{synchronous}.db"));
    let setup = format!("db.execute('PRAGMA synchronous={synchronous}'); v = os.urandom({len})");
    sqlite_timed(&db, &setup, "db.execute('INSERT OR REPLACE INTO kv VALUES (?, ?)', ('/k%d' % (n % 24), v))", secs)
}

/// SQLite in WAL mode: values read per second (`SELECT` of one `len`-byte
/// row of 24, keys in turn, its length checked) for `secs`.
fn sqlite_read_rate(dir: &Path, len: usize, secs: u64) -> Result<f64, String> {
    let db = dir.join(format!("bench-read-{len}.db"));
    let setup = format!(
        "db.executemany('INSERT OR REPLACE INTO kv VALUES (?, ?)', [('/k%d' % i, os.urandom({len})) for i in range(24)])"
    );
    let step =
        format!("assert len(db.execute('SELECT v FROM kv WHERE k = ?', ('/k%d' % (n % 24),)).fetchone()[0]) == {len}");
    sqlite_timed(&db, &setup, &step, secs)
}

/// Runs a Python script that prints one number.
fn python_figure(script: &str) -> Result<f64, String> {
    let out = Command::new("python3").arg("-c").arg(script).output().map_err(|e| format!("python3: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("python3: {}", String::from_utf8_lossy(&out.stderr)))
}

/// SQLite killed while it writes, `trials` times: a writer of mixed
/// 100-byte and 64 KiB rows (WAL, synchronous=FULL) killed with SIGKILL
/// 50 to 300 ms after it starts, then the time a new connection takes to
/// open the database and answer its first query (the WAL's recovery), in
/// milliseconds: (median, longest).
fn sqlite_reopen(dir: &Path, trials: usize) -> Result<(f64, f64), String> {
    let db = dir.join("bench-crash.db");
    let writer = format!(
        "import sqlite3, os\n\
         db = sqlite3.connect({db:?}, isolation_level=None)\n\
         db.execute('PRAGMA journal_mode=WAL')\n\
         db.execute('PRAGMA synchronous=FULL')\n\
         db.execute('CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)')\n\
         print('ready', flush=True)\n\
         n = 0\n\
         while True:\n\
         \x20   db.execute('INSERT OR REPLACE INTO kv VALUES (?, ?)', ('/k%d' % (n % 24), os.urandom(100 if n % 3 else 65536)))\n\
         \x20   n += 1\n",
        db = db.display().to_string()
    );
    let reader = format!(
        "import sqlite3, time\n\
         t0 = time.monotonic()\n\
         db = sqlite3.connect({db:?}, isolation_level=None)\n\
         db.execute('SELECT count(*) FROM kv').fetchone()\n\
         print((time.monotonic() - t0) * 1e3)\n",
        db = db.display().to_string()
    );
    let mut times = Vec::new();
    let mut rng = 0x5eed_u64;
    for _ in 0..trials {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut c = Command::new("python3");
        c.arg("-c").arg(&writer);
        let mut bg = Background::start(c)?;
        bg.wait_for("ready", Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(50 + (rng >> 33) % 250));
        let _ = bg.child.kill();
        let _ = bg.child.wait();
        times.push(python_figure(&reader)?);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1]))
}

/// The median of `v` (not empty) and its range, as a table cell.
fn median_cell(v: &mut [f64], decimals: usize) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v[v.len() / 2];
    if v.len() == 1 {
        return format!("{m:.decimals$}");
    }
    format!("{m:.decimals$} ({:.decimals$}–{:.decimals$})", v[0], v[v.len() - 1])
}

/// `mirage-bench store [--runs SECONDS] [--count ROUNDS]`: durable writes
/// of 100-byte and 1 MiB values, beside SQLite, on files of the same
/// disk. The rows take turns, round after round (3 by default), and each
/// cell is the median of its rounds with their range: a disk's sync cost
/// drifts over minutes, and rows measured one after another would
/// compare moments rather than stores.
pub fn store(o: &Options) -> Result<(), String> {
    machine();
    let secs = if o.runs == 50 { 5 } else { o.runs as u64 };
    let rounds = if o.count == 20_000 { 3 } else { o.count.max(1) };
    println!(
        "acknowledged writes per second (each one change: its future completed, or its transaction committed), \
         {secs} s a row, values rewritten over 24 keys; files on the same disk (/tmp); the rows take turns for \
         {rounds} rounds: median (range)"
    );
    println!();
    println!("| store | durable when | 100 B writes/s | 1 MiB writes/s | 1 MiB MB/s |");
    println!("|---|---|---|---|---|");
    let mirage: [(&str, &str, &str); 5] = [
        ("unix", "--block", "flush is fdatasync: on the disk"),
        ("hvt", "--block", "in the host's page cache (Solo5: no flush)"),
        ("spt", "--block", "in the host's page cache (Solo5: no flush)"),
        ("hvt", "--block-dsync", "on the disk (granted flush: fdatasync)"),
        ("spt", "--block-dsync", "on the disk (granted flush: fdatasync)"),
    ];
    /// A row: its name, when a write is durable, and the unikernel's
    /// target and attachment, or SQLite's `synchronous`.
    type Row<'a> = (String, &'a str, Option<(&'a str, &'a str)>, &'a str);
    let mut rows: Vec<Row> = Vec::new();
    for (t, attach, when) in mirage {
        let label = format!("{t} {attach}");
        if o.only.iter().all(|w| label.contains(w.as_str())) {
            rows.push((format!("mirage-rs {label}"), when, Some((t, attach)), ""));
        }
    }
    rows.push(("SQLite WAL synchronous=FULL".into(), "on the disk", None, "FULL"));
    rows.push(("SQLite WAL synchronous=NORMAL".into(), "on the disk at checkpoints (WAL)", None, "NORMAL"));
    let dir = Scratch::new("sqlitebench");
    let mut figures: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); rows.len()];
    for _ in 0..rounds {
        for (i, (_, _, target, sync)) in rows.iter().enumerate() {
            for (len, out) in [(100usize, 0usize), (1 << 20, 1)] {
                let rate = match target {
                    Some((t, attach)) => writer_rate(t, attach, len, secs)?,
                    None => sqlite_rate(&dir.0, sync, len, secs)?,
                };
                if out == 0 { figures[i].0.push(rate) } else { figures[i].1.push(rate) }
            }
        }
    }
    for ((name, when, _, _), (small, big)) in rows.iter().zip(&mut figures) {
        let mut mb: Vec<f64> = big.iter().map(|b| b * 1.048576).collect();
        println!(
            "| {name} | {when} | {} | {} | {} |",
            median_cell(small, 0),
            median_cell(big, 1),
            median_cell(&mut mb, 1)
        );
    }
    println!();
    println!("values read per second ({secs} s a row; 24 keys read in turn, each whole and its length checked):");
    println!();
    println!("| store | 100 B reads/s | 1 MiB reads/s | 1 MiB MB/s |");
    println!("|---|---|---|---|");
    for t in ["unix", "hvt", "spt"] {
        if !o.only.iter().all(|w| t.contains(w.as_str())) {
            continue;
        }
        let small = reader_rate(t, 100, secs)?;
        let big = reader_rate(t, 1 << 20, secs)?;
        println!("| mirage-rs {t} | {small:.0} | {big:.1} | {:.1} |", big * 1.048576);
    }
    let small = sqlite_read_rate(&dir.0, 100, secs)?;
    let big = sqlite_read_rate(&dir.0, 1 << 20, secs)?;
    println!("| SQLite WAL | {small:.0} | {big:.1} | {:.1} |", big * 1.048576);
    println!();
    let trials = 20;
    println!(
        "opening after a kill ({trials} trials each: a writer killed with SIGKILL mid-run, then the store opened on \
         the host, its index read and checked, or SQLite connected and its first query answered; \
         `mirage-bench crash` runs 1,000):"
    );
    println!();
    println!("| store | median open | longest open |");
    println!("|---|---|---|");
    for t in ["hvt", "spt"] {
        if !o.only.iter().all(|w| t.contains(w.as_str())) {
            continue;
        }
        let image = example_with(t, "kv-writer", &[])?;
        let dir = Scratch::new("crash");
        let disk = formatted(&dir, "64M")?;
        let out = testkit::crash::run(t, &image, &disk, "--block", trials, Duration::from_millis(300), &mut |_| {})?;
        println!(
            "| mirage-rs {t} (BlockStore::open) | {:.2} ms | {:.2} ms |",
            out.median_open.as_secs_f64() * 1e3,
            out.max_open.as_secs_f64() * 1e3
        );
    }
    let (median, longest) = sqlite_reopen(&dir.0, trials)?;
    println!("| SQLite WAL synchronous=FULL (connect, first query) | {median:.2} ms | {longest:.2} ms |");
    Ok(())
}
