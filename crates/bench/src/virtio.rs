//! `mirage-bench virtio`: the virtio target under QEMU beside hvt, in the
//! same run: boot to the first console line (QEMU with TCG, and with KVM
//! where QEMU can use it), image sizes (and the ISO's), a ping flood and
//! HTTP requests per second through a tap device of MTU 1500 in a network
//! namespace.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Background, Netns, example, root, tender};

use crate::{Options, flood, machine, median, percentile, ping_stats, round_trips};

/// Spawn to the first line on standard output, then the guest is stopped.
/// None if no line came within `limit` (the guest failed to boot).
fn first_line(cmd: &mut Command, limit: Duration) -> Result<Option<(Duration, String)>, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send((start.elapsed(), line));
    });
    let got = rx.recv_timeout(limit).ok().filter(|(_, l)| !l.is_empty());
    // SIGTERM: solo5-virtio passes it on to QEMU; then make sure.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(got)
}

fn kib(p: &Path) -> String {
    std::fs::metadata(p).map(|m| format!("{} KiB", m.len().div_ceil(1024))).unwrap_or_else(|_| "-".into())
}

/// The network example (`--ipv4=10.0.0.2/24`) or static-website on
/// `target` in `ns`, once it serves.
fn serve(ns: &Netns, target: &str, image: &Path, ready: &str, extra: &[&str]) -> Result<Background, String> {
    let mut c = ns.unikernel(target, image, &["--net:service=tap0"]);
    c.arg("--ipv4=10.0.0.2/24").args(extra);
    let mut g = Background::start(c)?;
    g.wait_for(ready, Duration::from_secs(60))?;
    Ok(g)
}

pub fn virtio(o: &Options) -> Result<(), String> {
    machine();
    let runs = if o.runs == 50 { 10 } else { o.runs };
    let hvt_hello = example("hvt", "hello")?;
    let virtio_hello = example("virtio", "hello")?;
    let (accel, why) = ::tender::virtio::choose_accel(None).map_err(|e| e.to_string())?;
    println!(
        "QEMU: {}; left to itself solo5-virtio picks {} here ({why})",
        Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_default(),
        if accel == ::tender::virtio::Accel::Kvm { "KVM" } else { "TCG" }
    );
    println!();
    println!(
        "Boot: the hello example, from the tender's start to its first console line, median and min of {runs} runs."
    );
    println!();
    println!("| tender | accelerator | median | min |");
    println!("|---|---|---|---|");
    let rows: [(&str, &str, PathBuf, &Path, &[&str]); 3] = [
        ("solo5-hvt", "KVM (PVM)", tender("hvt"), &hvt_hello, &[]),
        ("solo5-virtio (QEMU)", "TCG", tender("virtio"), &virtio_hello, &["--accel=tcg"]),
        ("solo5-virtio (QEMU)", "KVM (PVM)", tender("virtio"), &virtio_hello, &["--accel=kvm"]),
    ];
    for (name, acc, t, image, opts) in rows {
        let mut times = Vec::new();
        let mut failed = None;
        for _ in 0..runs {
            match first_line(Command::new(&t).args(opts).arg(image), Duration::from_secs(20))? {
                Some((d, line)) if line.starts_with("Solo5: ") => times.push(d.as_secs_f64() * 1e3),
                Some((_, line)) => {
                    failed = Some(format!("first line {:?}", line.trim()));
                    break;
                }
                None => {
                    failed = Some("no console line in 20 s".into());
                    break;
                }
            }
        }
        match failed {
            Some(why) => println!("| {name} | {acc} | does not boot: {why} | - |"),
            None => {
                let min = times.iter().cloned().fold(f64::MAX, f64::min);
                println!("| {name} | {acc} | {:.1} ms | {min:.1} ms |", median(&mut times));
            }
        }
    }

    println!();
    println!("Image sizes (as mirage build leaves them in dist/):");
    println!();
    println!("| example | hvt | virtio |");
    println!("|---|---|---|");
    for name in ["hello", "network", "static-website"] {
        println!("| {name} | {} | {} |", kib(&example("hvt", name)?), kib(&example("virtio", name)?));
    }
    // The ISO of hello, made as a user would.
    {
        let _lock = testkit::examples_lock();
        let iso = root().join("target/bench-virtio/hello.iso");
        std::fs::create_dir_all(iso.parent().unwrap_or(Path::new("."))).map_err(|e| e.to_string())?;
        let out = format!("--output={}", iso.display());
        let r = testkit::mirage_in(&root().join("examples/hello"), &["package", "--iso", "-t", "virtio", &out])?;
        if r.status() == 0 {
            println!("| hello, GRUB ISO (mirage package --iso) | - | {} |", kib(&iso));
        } else {
            println!("| hello, GRUB ISO | - | not made: {} |", r.stderr.trim().replace('\n', " "));
        }
    }

    println!();
    println!(
        "Ping: the network example, flood of {} pings (`ping -f`) and 200 pings 2 ms apart, through a tap device of MTU 1500 in a namespace.",
        o.count
    );
    println!();
    println!("| target | flood pings/s | loss | RTT p50 | RTT p99 |");
    println!("|---|---|---|---|---|");
    for t in ["hvt", "virtio"] {
        let ns = Netns::new()?;
        let _g = serve(&ns, t, &example(t, "network")?, "network: 10.0.0.2/24", &[])?;
        ping_stats(&ns, &["-c", "3", "-i", "0.1", "-W", "5"])?;
        let (rate, loss) = flood(&ns, o.count)?;
        let mut rtts = round_trips(&ns, 200).map_err(|e| format!("{t}: {e}"))?;
        println!(
            "| {t} | {rate:.0} | {loss} | {:.3} ms | {:.3} ms |",
            percentile(&mut rtts, 0.5),
            percentile(&mut rtts, 0.99)
        );
    }

    println!();
    println!(
        "HTTP: static-website's index page, wrk with one thread and 16 connections for 10 s, through a tap device of MTU 1500."
    );
    println!();
    println!("| target | requests/s | errors |");
    println!("|---|---|---|");
    for t in ["hvt", "virtio"] {
        let ns = Netns::new()?;
        let g = serve(&ns, t, &example(t, "static-website")?, "static-website: serving", &["--logs=http:warn"])?;
        let r = crate::http::wrk(&ns, "http://10.0.0.2/", 16, 10).map_err(|e| format!("{t}: {e}\n{}", g.output()))?;
        println!("| {t} | {:.0} | {} |", r.rps, r.errors);
    }
    Ok(())
}
