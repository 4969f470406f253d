//! `mirage-bench`: measurements that print figures, for BENCHMARKS.md.
//!
//! ```text
//! mirage-bench boot    [--runs N] [--solo5 DIR]   # hello, start to exit, and peak RSS
//! mirage-bench ping    [--count N] [--solo5 DIR]  # flood-ping rate and round-trip times
//! mirage-bench compute [--solo5 DIR]              # 10^8 iterations of integer and float work
//! mirage-bench block   [--count MIB]              # sequential block throughput, beside dd
//! mirage-bench timers  [--count N]                # lateness of sleeps on each target
//! mirage-bench tcp     [--count GIB] [--buffers KIB,KIB] # TCP bulk, short connections and ping, beside Linux (0 KiB: the stack's default buffers)
//! mirage-bench path    [--delay MS,MS] [--rate MBIT] [--count N] # fetches and uploads across a link with a delay (a relay), beside nginx and Linux
//! mirage-bench http    [--runs SECONDS]           # wrk against static-website, beside nginx
//!     (tcp and http: [--mtu 1500,65520] the tap MTUs measured, [--targets unix,hvt,spt] the targets,
//!     [--boot-args "ARG ..."] boot arguments added to the unikernel's)
//! mirage-bench images  [--solo5 DIR]              # image sizes, least memory, configure and build times
//! mirage-bench oci     [--runs N] [--at-once N] [--only at-once] # containers: ctr run to first HTTP answer, memory, N at once, beside nginx with runc
//! mirage-bench soak    [--runs SECONDS] [--target T] # persistent and short HTTP connections, errors and memory
//! mirage-bench attack  [--runs SECONDS] [--only WORD]... # a good client's service under each attack, beside nginx
//! mirage-bench crash   [--count N]                # N SIGKILL trials of the store on a block device (hvt, spt)
//! mirage-bench store   [--runs SECONDS] [--count ROUNDS] [--only WORD]... # durable writes of the store, beside SQLite (WAL), rows taking turns
//! mirage-bench tls-handshake [--count N]          # TLS handshakes/s in memory, per crypto provider and key type
//! mirage-bench tls     [--runs SECONDS]           # static-website-tls on spt and hvt beside nginx with OpenSSL
//! mirage-bench router  [--targets T,T] [--mtu M,M] [--only tcp] [--count ROUNDS] [--boot-args "ARG ..."] # the router example beside Linux with nftables: iperf3, UDP, conn/s, RTT (with --boot-args, each target also with them, same run; rounds taking turns, with each target's median share of Linux)
//! mirage-bench nat     [--count N]                # mirage-nat's packets/s and new flows/s, in process
//! mirage-bench debug   [--runs N]                 # image and debug-file sizes, --dumpcore's time for 32 MiB
//! mirage-bench virtio  [--runs N] [--count N]     # virtio under QEMU beside hvt: boot, sizes, ping flood, HTTP
//! ```
//!
//! `--only WORD` (repeatable) keeps the attack rows whose attack or server
//! names contain every WORD, e.g. `--only half-open --only hvt`, and the
//! store rows whose target and option do (`--only dsync`); SQLite's rows
//! always run. For `http`, `--only small`, `--only big` and `--only N`
//! keep the rows of that file and of N connections (nginx's included).
//! For `router`, `--only tcp` measures the TCP columns alone.
//! For `oci`, `--only at-once` measures the instances running at once
//! alone (with a shim each, then all under one shim).
//!
//! `--solo5 DIR` names a Solo5 v0.12.1 build tree (built by hand from its
//! source; nothing of it is part of this project) whose tenders and test
//! programs are measured in the same run, as the reference. Run as root:
//! the network benchmarks create a network namespace with a tap device.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Background, Netns, guest, tender};

mod attack;
mod debug;
mod fat;
mod http;
mod images;
mod nat;
mod oci;
mod path;
mod router;
mod store;
mod tcp;
mod tls;
mod virtio;

struct Options {
    runs: usize,
    count: usize,
    solo5: Option<PathBuf>,
    target: String,
    only: Vec<String>,
    /// The tap MTUs the tcp and http benchmarks measure each target with.
    mtus: Vec<u16>,
    /// The targets the tcp and http benchmarks measure.
    targets: Vec<String>,
    /// How many containers the oci benchmark runs at once for its density
    /// figures.
    at_once: usize,
    /// Boot arguments the tcp and http benchmarks add to the unikernel's
    /// (`--boot-args "--tcp-segmentation-offload=false"`), to measure a
    /// change with and without; the router benchmark measures each target
    /// both without and with them.
    boot_args: Vec<String>,
    /// The TCP buffers (`--tcp-buffer-kib`) the tcp benchmark gives the
    /// unikernel, in KiB; 0 for the stack's default (no argument).
    buffers: Vec<u32>,
    /// The one-way delays, in milliseconds, the path benchmark's link has.
    delays: Vec<u64>,
    /// The path benchmark's link rate, in Mbit/s.
    rate_mbit: u64,
}

/// The tap MTU `mirage run` gives the devices it creates (its
/// `LARGE_MTU`), which the benchmarks measure beside Ethernet's 1500.
const LARGE_MTU: u16 = 65520;

/// A comma-separated list of values, or `None` if one does not parse.
fn list<T: std::str::FromStr>(v: &str) -> Option<Vec<T>> {
    v.split(',').map(|x| x.trim().parse().ok()).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = Options {
        runs: 50,
        count: 20_000,
        solo5: None,
        target: "hvt".into(),
        mtus: vec![1500, LARGE_MTU],
        targets: ["unix", "hvt", "spt"].map(String::from).to_vec(),
        only: Vec::new(),
        at_once: 20,
        boot_args: Vec::new(),
        buffers: vec![0, 1024],
        delays: vec![10, 50],
        rate_mbit: 1000,
    };
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => opts.runs = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(opts.runs),
            "--at-once" => {
                opts.at_once = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(opts.at_once).clamp(1, 200)
            }
            "--count" => opts.count = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(opts.count),
            "--solo5" => opts.solo5 = args.get(i + 1).map(PathBuf::from),
            "--target" => opts.target = args.get(i + 1).cloned().unwrap_or(opts.target),
            "--only" => opts.only.extend(args.get(i + 1).cloned()),
            "--mtu" => opts.mtus = args.get(i + 1).and_then(|v| list(v)).unwrap_or(opts.mtus),
            "--buffers" => opts.buffers = args.get(i + 1).and_then(|v| list(v)).unwrap_or(opts.buffers),
            "--delay" => opts.delays = args.get(i + 1).and_then(|v| list(v)).unwrap_or(opts.delays),
            "--rate" => opts.rate_mbit = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(opts.rate_mbit).max(1),
            "--targets" => opts.targets = args.get(i + 1).and_then(|v| list(v)).unwrap_or(opts.targets),
            "--boot-args" => {
                opts.boot_args.extend(args.get(i + 1).into_iter().flat_map(|v| v.split_whitespace().map(String::from)))
            }
            other => {
                eprintln!("mirage-bench: unknown option {other}");
                std::process::exit(64);
            }
        }
        i += 2;
    }
    if let Some(why) = args.first().and_then(|b| missing(b)) {
        eprintln!("mirage-bench {}: {why}", args[0]);
        std::process::exit(1);
    }
    let result = match args.first().map(String::as_str) {
        Some("boot") => boot(&opts),
        Some("ping") => ping(&opts),
        Some("compute") => compute(&opts),
        Some("block") => block(&opts),
        Some("timers") => timers(&opts),
        Some("tcp") => tcp::tcp(&opts),
        Some("path") => path::path_bench(&opts),
        Some("http") => http::http(&opts),
        Some("images") => images::images(&opts),
        Some("oci") => oci::oci(&opts),
        Some("debug") => debug::debug(&opts),
        Some("soak") => http::soak(&opts, &opts.target.clone()),
        Some("attack") => attack::attack(&opts),
        Some("crash") => store::crash(&opts),
        Some("store") => store::store(&opts),
        Some("fat") => fat::fat(&opts),
        Some("tls-handshake") => tls::handshakes(opts.count),
        Some("tls") => tls::serving(opts.runs as u64),
        Some("router") => router::router(&opts),
        Some("nat") => nat::nat(opts.count),
        Some("virtio") => virtio::virtio(&opts),
        _ => {
            eprintln!(
                "usage: mirage-bench boot|ping|compute|block|timers|tcp|path|http|images|soak|attack|crash|store|fat|tls-handshake|tls|nat|router|oci|debug|virtio [--runs N] [--count N] [--at-once N] [--solo5 DIR] [--target T] [--mtu M,M] [--targets T,T] [--buffers KIB,KIB] [--delay MS,MS] [--rate MBIT] [--only WORD] [--boot-args \"ARG ...\"]"
            );
            std::process::exit(64);
        }
    };
    if let Err(e) = result {
        eprintln!("mirage-bench: {e}");
        std::process::exit(1);
    }
}

/// The programs each benchmark runs beside the unikernels, with the
/// Debian packages that have them: checked before it starts, so that a
/// missing one is named with its package rather than found half way.
const NEEDS: &[(&str, &[(&str, &str)])] = &[
    ("ping", &[("ping", "iputils-ping")]),
    ("tcp", &[("ping", "iputils-ping")]),
    ("path", &[("nginx", "nginx-light")]),
    ("http", &[("wrk", "wrk"), ("nginx", "nginx-light"), ("ethtool", "ethtool")]),
    ("soak", &[("wrk", "wrk")]),
    ("attack", &[("nginx", "nginx-light"), ("nft", "nftables"), ("prlimit", "util-linux")]),
    ("store", &[("python3", "python3")]),
    ("tls", &[("wrk", "wrk"), ("nginx", "nginx-light"), ("openssl", "openssl")]),
    ("router", &[("iperf3", "iperf3"), ("busybox", "busybox"), ("nft", "nftables")]),
    (
        "virtio",
        &[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("wrk", "wrk"),
            ("grub-mkrescue", "grub-common grub-pc-bin xorriso mtools"),
        ],
    ),
    ("oci", &[("containerd", "containerd"), ("runc", "runc"), ("nginx", "nginx-light")]),
];

/// What benchmark `bench` needs and this machine lacks, with how to get it.
fn missing(bench: &str) -> Option<String> {
    let (_, programs) = NEEDS.iter().find(|(b, _)| *b == bench)?;
    let lacking: Vec<String> = programs
        .iter()
        .filter(|(name, _)| {
            let found = Command::new(name).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
            matches!(found, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(|(name, package)| format!("`{name}` is not installed (apt-get install {package})"))
        .collect();
    (!lacking.is_empty()).then(|| lacking.join("; "))
}

pub(crate) fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("machine: {cpu}, {cores} cores, Linux {}", kernel.trim());
}

/// One process run: wall time from spawn to reap.
fn measure(cmd: &mut Command) -> Result<(Duration, i32), String> {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    Ok((start.elapsed(), status.code().unwrap_or(-1)))
}

/// The peak resident set of a process, read from `/proc/PID/status`
/// (VmHWM) when it is about to exit. The usual `ru_maxrss` would report
/// the launcher's own size: it counts the pre-`exec` copy of the parent.
fn peak_rss(cmd: &mut Command) -> Result<u64, String> {
    use std::os::unix::process::CommandExt;
    // SAFETY: PTRACE_TRACEME in the child before exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child =
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null()).spawn().map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let mut status = 0;
    let mut hwm = 0;
    loop {
        // SAFETY: waiting for our own traced child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            break;
        }
        let event = (status >> 16) & 0xff;
        let mut sig = 0;
        if event == libc::PTRACE_EVENT_EXIT {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            hwm = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if libc::WSTOPSIG(status) == libc::SIGTRAP && event == 0 {
            // The stop at exec: ask to stop again at exit.
            // SAFETY: the child is stopped under our trace.
            unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, libc::PTRACE_O_TRACEEXIT as usize) };
        } else {
            sig = libc::WSTOPSIG(status);
        }
        // SAFETY: resuming our stopped tracee, passing on any real signal.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, sig as usize) };
    }
    Ok(hwm)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn solo5_file(dir: &Option<PathBuf>, rel: &str) -> Option<PathBuf> {
    dir.as_ref().map(|d| d.join(rel)).filter(|p| p.exists())
}

fn boot(o: &Options) -> Result<(), String> {
    machine();
    let mut rows: Vec<(String, PathBuf, PathBuf)> = vec![
        ("mirage-rs solo5-hvt, mirage-rs hello".into(), tender("hvt"), guest("hvt", "hello")?),
        ("mirage-rs solo5-spt, mirage-rs hello".into(), tender("spt"), guest("spt", "hello")?),
    ];
    let s_hvt = solo5_file(&o.solo5, "tenders/hvt/solo5-hvt");
    let s_spt = solo5_file(&o.solo5, "tenders/spt/solo5-spt");
    let s_hello_hvt = solo5_file(&o.solo5, "tests/test_hello/test_hello.hvt");
    let s_hello_spt = solo5_file(&o.solo5, "tests/test_hello/test_hello.spt");
    if let (Some(t), Some(g)) = (&s_hvt, &s_hello_hvt) {
        rows.push(("Solo5 solo5-hvt, Solo5 test_hello".into(), t.clone(), g.clone()));
        rows.push(("Solo5 solo5-hvt, mirage-rs hello".into(), t.clone(), guest("hvt", "hello")?));
        rows.push(("mirage-rs solo5-hvt, Solo5 test_hello".into(), tender("hvt"), g.clone()));
    }
    if let (Some(t), Some(g)) = (&s_spt, &s_hello_spt) {
        rows.push(("Solo5 solo5-spt, Solo5 test_hello".into(), t.clone(), g.clone()));
        rows.push(("Solo5 solo5-spt, mirage-rs hello".into(), t.clone(), guest("spt", "hello")?));
        rows.push(("mirage-rs solo5-spt, Solo5 test_hello".into(), tender("spt"), g.clone()));
    }
    println!("hello, from tender start to exit: median, p90 and min of {} runs; peak RSS (median)", o.runs);
    println!();
    println!("| tender, guest | median | p90 | min | peak RSS |");
    println!("|---|---|---|---|---|");
    for (name, t, g) in rows {
        let mut times = Vec::new();
        let mut rss = Vec::new();
        for i in 0..o.runs + 3 {
            let (d, status) = measure(Command::new(&t).arg(&g).arg("--solo5:quiet"))?;
            if status != 0 {
                return Err(format!("{name}: exit status {status}"));
            }
            if i >= 3 {
                times.push(d.as_secs_f64() * 1e3);
            }
        }
        for _ in 0..5 {
            rss.push(peak_rss(Command::new(&t).arg(&g).arg("--solo5:quiet"))? as f64);
        }
        let med = median(&mut times);
        let p90 = percentile(&mut times, 0.9);
        let min = times[0];
        println!("| {name} | {med:.2} ms | {p90:.2} ms | {min:.2} ms | {:.0} KiB |", median(&mut rss));
    }
    Ok(())
}

fn compute(o: &Options) -> Result<(), String> {
    machine();
    let mut rows = vec![
        ("mirage-rs solo5-hvt".to_string(), tender("hvt"), guest("hvt", "compute")?),
        ("mirage-rs solo5-spt".to_string(), tender("spt"), guest("spt", "compute")?),
    ];
    if let Some(t) = solo5_file(&o.solo5, "tenders/hvt/solo5-hvt") {
        rows.push(("Solo5 solo5-hvt".into(), t, guest("hvt", "compute")?));
    }
    if let Some(t) = solo5_file(&o.solo5, "tenders/spt/solo5-spt") {
        rows.push(("Solo5 solo5-spt".into(), t, guest("spt", "compute")?));
    }
    println!("10^8 iterations of integer and floating-point work in the mirage-rs compute guest; best of 3");
    println!();
    println!("| tender | loop (guest clock) | whole run |");
    println!("|---|---|---|");
    for (name, t, g) in rows {
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let start = Instant::now();
            let out = Command::new(&t).arg(&g).arg("--solo5:quiet").output().map_err(|e| e.to_string())?;
            let wall = start.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&out.stdout);
            let ns: f64 = text
                .split("iterations in ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("{name}: no timing in {text:?}"))?;
            best = (best.0.min(ns / 1e6), best.1.min(wall * 1e3));
        }
        println!("| {name} | {:.0} ms | {:.0} ms |", best.0, best.1);
    }
    Ok(())
}

struct Responder {
    name: String,
    tender: PathBuf,
    guest: PathBuf,
    net_option: &'static str,
    args: Vec<&'static str>,
    ready: &'static str,
}

fn ping_stats(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = ns.command("ping").args(args).arg("10.0.0.2").output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("ping {args:?}: {}", String::from_utf8_lossy(&out.stdout)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A flood of `count` pings (`ping -f`) to 10.0.0.2 from `ns`: replies per
/// second and the loss ping reports.
fn flood(ns: &Netns, count: usize) -> Result<(f64, String), String> {
    let start = Instant::now();
    let out = ping_stats(ns, &["-f", "-q", "-c", &count.to_string()])?;
    let secs = start.elapsed().as_secs_f64();
    let received: f64 =
        out.split(" received").next().and_then(|s| s.rsplit(' ').next()).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let loss = out.split(", ").find(|s| s.contains("packet loss")).unwrap_or("?").replace(" packet loss", "");
    Ok((received / secs, loss))
}

/// The round-trip times of `n` pings 2 ms apart, in ms.
fn round_trips(ns: &Netns, n: usize) -> Result<Vec<f64>, String> {
    let out = ping_stats(ns, &["-c", &n.to_string(), "-i", "0.002"])?;
    let rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split(' ').next())
        .filter_map(|t| t.parse().ok())
        .collect();
    if rtts.is_empty() {
        return Err("no round-trip times".into());
    }
    Ok(rtts)
}

fn ping(o: &Options) -> Result<(), String> {
    machine();
    let mut rows = vec![
        Responder {
            name: "mirage-rs solo5-hvt, net ring".into(),
            tender: tender("hvt"),
            guest: guest("hvt", "net")?,
            net_option: "--net:service=tap0",
            args: vec![],
            ready: "net: serving",
        },
        Responder {
            name: "mirage-rs solo5-hvt, hypercalls".into(),
            tender: tender("hvt"),
            guest: guest("hvt", "net")?,
            net_option: "--net:service=tap0",
            args: vec!["noring"],
            ready: "net: serving",
        },
        Responder {
            name: "mirage-rs solo5-spt".into(),
            tender: tender("spt"),
            guest: guest("spt", "net")?,
            net_option: "--net:service=tap0",
            args: vec![],
            ready: "net: serving",
        },
    ];
    if let Some(t) = solo5_file(&o.solo5, "tenders/hvt/solo5-hvt") {
        rows.push(Responder {
            name: "Solo5 solo5-hvt, mirage-rs net".into(),
            tender: t.clone(),
            guest: guest("hvt", "net")?,
            net_option: "--net:service=tap0",
            args: vec![],
            ready: "net: serving",
        });
        if let Some(g) = solo5_file(&o.solo5, "tests/test_net/test_net.hvt") {
            rows.push(Responder {
                name: "Solo5 solo5-hvt, Solo5 test_net".into(),
                tender: t,
                guest: g.clone(),
                net_option: "--net:service0=tap0",
                args: vec![],
                ready: "Serving ping",
            });
            rows.push(Responder {
                name: "mirage-rs solo5-hvt, Solo5 test_net".into(),
                tender: tender("hvt"),
                guest: g,
                net_option: "--net:service0=tap0",
                args: vec![],
                ready: "Serving ping",
            });
        }
    }
    if let Some(t) = solo5_file(&o.solo5, "tenders/spt/solo5-spt") {
        rows.push(Responder {
            name: "Solo5 solo5-spt, mirage-rs net".into(),
            tender: t,
            guest: guest("spt", "net")?,
            net_option: "--net:service=tap0",
            args: vec![],
            ready: "net: serving",
        });
    }
    println!(
        "ICMP echo from the host (ping, in a network namespace with a tap device): flood rate over {} pings (`ping -f`), round-trip times of 500 pings 2 ms apart",
        o.count
    );
    println!();
    println!("| responder | flood pings/s | flood loss | RTT p50 | RTT p99 | RTT max |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let ns = Netns::new()?;
        let mut c = ns.command(&r.tender);
        c.arg(r.net_option).arg(&r.guest).args(&r.args);
        let mut g = Background::start(c)?;
        g.wait_for(r.ready, Duration::from_secs(30))?;
        ping_stats(&ns, &["-c", "3", "-i", "0.1", "-W", "5"])?;
        // Solo5's C guest is slow (its code runs in the CPL-0 emulator), so
        // it gets fewer pings.
        let count = if r.name.contains("test_net") { (o.count / 10).max(1000) } else { o.count };
        let (rate, loss) = flood(&ns, count)?;
        let mut rtts = round_trips(&ns, 500).map_err(|e| format!("{}: {e}", r.name))?;
        let p50 = percentile(&mut rtts, 0.5);
        let p99 = percentile(&mut rtts, 0.99);
        let max = rtts[rtts.len() - 1];
        println!("| {} | {:.0} | {} | {:.3} ms | {:.3} ms | {:.3} ms |", r.name, rate, loss, p50, p99, max);
        drop(g);
    }
    Ok(())
}

/// The figures line a bench unikernel printed.
fn figures(out: &[u8], prefix: &str) -> Vec<String> {
    String::from_utf8_lossy(out).lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
}

fn block(o: &Options) -> Result<(), String> {
    machine();
    let mib = if o.count == 20_000 { 256 } else { o.count as u64 };
    let dir = testkit::Scratch::new("blockbench");
    let disk = dir.file("disk.img", mib << 20);
    let disk_s = disk.display().to_string();
    // Every row writes over pages already in the page cache, so that the
    // first row does not pay for allocating them.
    Command::new("dd")
        .args(["if=/dev/zero", &format!("of={disk_s}"), "bs=1M", &format!("count={mib}"), "conv=notrunc"])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    println!(
        "sequential write then read of {mib} MiB through the Block trait, 1 MiB requests, on a file in the page cache"
    );
    println!();
    println!("| target | write | read |");
    println!("|---|---|---|");
    let parse = |line: &str| -> (String, String) {
        let w = line.split("write ").nth(1).and_then(|s| s.split(" read").next()).unwrap_or("?").to_string();
        let r = line.split("read ").nth(1).and_then(|s| s.split(" (").next()).unwrap_or("?").to_string();
        (w, r)
    };
    for t in ["hvt", "spt"] {
        let out = Command::new(tender(t))
            .arg(format!("--block:storage={disk_s}"))
            .arg(guest(t, "blockbench")?)
            .args(["--solo5:quiet", &format!("--mib={mib}"), "--chunk-kib=1024"])
            .output()
            .map_err(|e| e.to_string())?;
        let lines = figures(&out.stdout, "blockbench:");
        let (w, r) =
            parse(lines.first().ok_or_else(|| format!("{t}: no figures: {}", String::from_utf8_lossy(&out.stdout)))?);
        println!("| mirage-rs {t} | {w} | {r} |");
    }
    let line = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let file = mirage_unix::FileBlock::open(&disk, 512, false).map_err(|e| e.to_string())?;
        let capture = Capture(line.clone());
        mirage_unix::run(bench_apps::block(capture, file, mirage_runtime::time::Clock, mib << 20, 1 << 20));
    }
    let (w, r) = parse(&line.lock().map_err(|e| e.to_string())?);
    println!("| mirage-rs unix | {w} | {r} |");
    // dd on the same file, same request size, through the page cache.
    let dd = |args: &[&str]| -> Result<String, String> {
        let out = Command::new("dd").args(args).output().map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let rate = err.lines().last().and_then(|l| l.rsplit(", ").next()).unwrap_or("?").to_string();
        Ok(rate)
    };
    let w = dd(&["if=/dev/zero", &format!("of={disk_s}"), "bs=1M", &format!("count={mib}"), "conv=notrunc"])?;
    let r = dd(&[&format!("if={disk_s}"), "of=/dev/null", "bs=1M"])?;
    println!("| dd (host) | {w} | {r} |");
    Ok(())
}

/// A console that keeps what is written, for in-process runs.
struct Capture(std::sync::Arc<std::sync::Mutex<String>>);

impl mirage_devices::console::Console for Capture {
    async fn write(&self, bytes: &[u8]) -> Result<(), mirage_devices::console::Error> {
        if let Ok(mut s) = self.0.lock() {
            s.push_str(&String::from_utf8_lossy(bytes));
        }
        Ok(())
    }
}

fn timers(o: &Options) -> Result<(), String> {
    machine();
    let count = if o.count == 20_000 { 200 } else { o.count };
    println!("lateness of sleeps (how long after its deadline a sleep returns, on the unikernel's own clock)");
    println!();
    println!("| target | period | mean | p99 | max |");
    println!("|---|---|---|---|---|");
    let row = |t: &str, line: &str| {
        // timerbench: sleep P ms: mean L us, p99 Q us, max M us (N sleeps)
        let f = |k: &str| {
            line.split(k)
                .nth(1)
                .and_then(|s| s.split(&[',', ' ', '('][..]).find(|x| !x.is_empty()))
                .unwrap_or("?")
                .to_string()
        };
        println!("| {t} | {} ms | {} us | {} us | {} us |", f("sleep "), f("mean "), f("p99 "), f("max "));
    };
    for t in ["hvt", "spt"] {
        let out = Command::new(tender(t))
            .arg(guest(t, "timerbench")?)
            .args(["--solo5:quiet", &format!("--count={count}")])
            .output()
            .map_err(|e| e.to_string())?;
        for l in figures(&out.stdout, "timerbench:") {
            row(&format!("mirage-rs {t}"), &l);
        }
    }
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    mirage_unix::run(bench_apps::timers(Capture(text.clone()), mirage_runtime::time::Clock, count));
    for l in text.lock().map_err(|e| e.to_string())?.lines().filter(|l| l.starts_with("timerbench:")) {
        row("mirage-rs unix", l);
    }
    Ok(())
}
