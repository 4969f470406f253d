//! `mirage-bench attack`: each attack of the end-to-end attack tests, run
//! for a fixed time against the static-website example on unix (the
//! direct stack on a tap device), hvt and spt, and against nginx on Linux
//! (one worker, across a veth pair) under the same attack in the same run.
//! A well-behaved client asks for a page every 50 ms on fresh connections
//! and on a keep-alive one throughout; for each attack and server the
//! table gives its success rate and longest outage, the CPU time the
//! server's process used (all its threads, and nginx's workers; not the
//! kernel's work for the veth or tap in interrupt context), its memory
//! at its highest (the unikernel's heap in use, from its statistics
//! lines; nginx's resident set, master and worker, sampled every 250 ms)
//! and whether the server survived.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::attack::{self, Crowd, GoodClient, Hold, Raw, Report, Rng, Segment, Wire, flags};
use testkit::{Background, Netns, root};

use crate::{Options, machine};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 80;

/// The unikernels' memory: `--mem` on Solo5, the data limit on unix.
const MEM_MIB: u64 = 256;

/// The unikernels' statistics interval, in seconds: their heap is read
/// from these lines. Not shorter: the timer wakes the server, which would
/// hide a listener that fails to wake.
const STATS_SECS: &str = "5";

/// Held connections per attack, at the most: within this process's
/// descriptors and the client's ephemeral ports.
const MAX_HELD: usize = 12_000;
/// Body-holding connections at the most: each leaves half a MiB in the
/// client's send buffer when the server stops reading.
const MAX_BODIES: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SynFlood,
    SynDataLand,
    HalfClosed,
    Idle,
    Bodies,
    Blind,
    Arp(usize),
}

const ATTACKS: [(Kind, &str); 9] = [
    (Kind::SynFlood, "half-open SYNs, 5,000/s, resets dropped"),
    (Kind::SynDataLand, "SYNs with data and LAND packets, 10/s each"),
    (Kind::HalfClosed, "half-closed HTTP/1.0 connections"),
    (Kind::Idle, "idle connections"),
    (Kind::Bodies, "connections holding half a 1 MiB body"),
    (Kind::Blind, "in-window RST and SYN on every request seen"),
    (Kind::Arp(0), "ARP: the client at 00:00:00:00:00:00, 10/s"),
    (Kind::Arp(1), "ARP: the client at ff:ff:ff:ff:ff:ff, 10/s"),
    (Kind::Arp(2), "ARP: the client at a multicast address, 10/s"),
];

enum Server {
    Unikernel(&'static str, PathBuf),
    Nginx,
}

impl Server {
    fn name(&self) -> String {
        match self {
            Server::Unikernel(t, _) => format!("mirage-rs {t}"),
            Server::Nginx => "nginx 1 worker, veth".into(),
        }
    }
}

/// A server process.
enum Process {
    Unikernel(Background),
    Nginx(crate::http::Nginx),
}

impl Process {
    fn background(&self) -> &Background {
        match self {
            Process::Unikernel(b) => b,
            Process::Nginx(n) => &n.0,
        }
    }
}

/// A server running, and the client's side of its link.
struct Setup {
    process: Process,
    /// The client's namespace, and the server's when it has its own.
    client: Netns,
    _server: Option<Netns>,
    ifname: &'static str,
    unikernel: bool,
}

fn up(server: &Server) -> Result<Setup, String> {
    match server {
        Server::Unikernel(t, image) => {
            let ns = Netns::new()?;
            attack::long_queue(&ns, "tap0")?;
            let mut c = if *t == "unix" {
                let mut c = ns.command("prlimit");
                c.arg(format!("--data={}", MEM_MIB << 20)).arg(image).arg("--net:service=tap0");
                c
            } else {
                ns.unikernel(t, image, &[&format!("--mem={MEM_MIB}"), "--net:service=tap0"])
            };
            c.args(["--ipv4=10.0.0.2/24", "--logs=http:warn", &format!("--stats={STATS_SECS}")]);
            // The attacker and the good client are one host here, as
            // beside nginx, which has no limit for a host: what is measured
            // is what the server holds.
            c.arg("--max-connections-per-host=0");
            let mut g = Background::start(c)?;
            g.wait_for("static-website: serving", Duration::from_secs(30))?;
            Ok(Setup { process: Process::Unikernel(g), client: ns, _server: None, ifname: "tap0", unikernel: true })
        }
        Server::Nginx => {
            let a = Netns::new()?;
            let b = Netns::new()?;
            // Each namespace comes with a tap device on the same subnet.
            a.ip(&["link", "del", "tap0"])?;
            b.ip(&["link", "del", "tap0"])?;
            let out = Command::new("ip")
                .args([
                    "link", "add", "atk-a", "netns", &a.name, "type", "veth", "peer", "name", "atk-b", "netns", &b.name,
                ])
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("ip link add veth: {}", String::from_utf8_lossy(&out.stderr)));
            }
            a.ip(&["addr", "add", "10.0.0.1/24", "dev", "atk-a"])?;
            a.ip(&["link", "set", "atk-a", "up"])?;
            b.ip(&["addr", "add", "10.0.0.2/24", "dev", "atk-b"])?;
            b.ip(&["link", "set", "atk-b", "up"])?;
            let scratch = root().join("target/bench-attack/nginx");
            let g = crate::http::nginx(&b, SERVER, &root().join("examples/static-website/htdocs"), &scratch)?;
            Ok(Setup { process: Process::Nginx(g), client: a, _server: Some(b), ifname: "atk-a", unikernel: false })
        }
    }
}

/// One row of the table.
struct Row {
    report: Report,
    /// CPU seconds the server's process used during the attack.
    cpu: f64,
    memory: String,
    survived: String,
    what: String,
}

fn run(server: &Server, kind: Kind, secs: u64) -> Result<Row, String> {
    attack::raise_fd_limit();
    let setup = up(server)?;
    let pid = setup.process.background().child.id();
    let mut good = GoodClient::start(&setup.client, SocketAddr::new(SERVER.into(), PORT), "/")?;
    let wire = Wire::learn(&setup.client, setup.ifname, CLIENT, SERVER)?;
    let raw = Raw::open(&setup.client, setup.ifname)?;
    // nginx's memory, sampled while the attack runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(attack::rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = attack::cpu_ticks(pid);
    let from = Instant::now();
    let until = from + Duration::from_secs(secs);
    let alive = move || attack::alive(pid);
    let what = match kind {
        Kind::SynFlood => {
            attack::suppress_resets(&setup.client)?;
            let mut rng = Rng::new();
            let mut sent = 0;
            while Instant::now() < until {
                // Half a second's worth at a time, each from a random port.
                raw.send_paced(&attack::syn_flood(&wire, PORT, attack::FORGED_PORTS, 2500, &mut rng), 5000)?;
                sent += 2500;
            }
            format!("{sent} SYNs")
        }
        Kind::SynDataLand => {
            attack::suppress_resets(&setup.client)?;
            let mut rng = Rng::new();
            let me = SocketAddrV4::new(SERVER, PORT);
            let mut sent = 0;
            while Instant::now() < until {
                let port = 1024 + (rng.next_u64() % 30000) as u16;
                let mut syn = Segment::syn(SocketAddrV4::new(CLIENT, port), me, rng.next_u64() as u32);
                syn.payload = b"GET / HTTP/1.1\r\nHost: in-the-syn\r\n\r\n".to_vec();
                raw.send(&syn.frame(wire.mac, wire.server_mac, rng.next_u64() as u16))?;
                raw.send(&Segment::syn(me, me, rng.next_u64() as u32).frame(
                    wire.mac,
                    wire.server_mac,
                    rng.next_u64() as u16,
                ))?;
                sent += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            format!("{sent} of each")
        }
        Kind::HalfClosed | Kind::Idle | Kind::Bodies => {
            let (hold, cap) = match kind {
                Kind::HalfClosed => (Hold::HalfClosed, MAX_HELD),
                Kind::Idle => (Hold::Idle, MAX_HELD),
                _ => (Hold::Body, MAX_BODIES),
            };
            let crowd = Crowd::new();
            crowd.fill(&setup.client, SocketAddr::new(SERVER.into(), PORT), hold, cap, 4, until, &alive)?;
            let opened_by = from.elapsed();
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
            }
            crowd.sweep();
            let what = format!(
                "{} held at the end, {} refused or shed{}",
                crowd.holding(),
                crowd.refused.load(Ordering::Relaxed),
                if opened_by < Duration::from_secs(secs) {
                    format!(" (the {cap} opened in {:.0} s)", opened_by.as_secs_f64())
                } else {
                    String::new()
                }
            );
            crowd.release();
            what
        }
        Kind::Blind => {
            let mut injected = 0;
            let server = SocketAddrV4::new(SERVER, PORT);
            while let Some(f) = raw.recv(until) {
                let Some(seg) = Segment::parse(&f) else { continue };
                // Each request the good client sends shows where its
                // connection's window is.
                if seg.dst == server && *seg.src.ip() == CLIENT && !seg.payload.is_empty() {
                    for (fl, offset) in [(flags::RST, 1000), (flags::SYN, 500)] {
                        let forged = Segment {
                            src: seg.src,
                            dst: server,
                            seq: seg.end().wrapping_add(offset),
                            ack: 0,
                            flags: fl,
                            window: 64240,
                            payload: Vec::new(),
                        };
                        raw.send(&forged.frame(wire.mac, wire.server_mac, 4242))?;
                        injected += 1;
                    }
                }
            }
            format!("{injected} segments forged")
        }
        Kind::Arp(i) => {
            let frames = attack::bogus_arp(&wire, attack::BOGUS_MACS[i].1);
            let mut sent = 0;
            while Instant::now() < until {
                frames.iter().try_for_each(|f| raw.send(f))?;
                sent += frames.len();
                std::thread::sleep(Duration::from_millis(100));
            }
            format!("{sent} ARP packets")
        }
    };
    let end = Instant::now().max(until);
    let cpu = (attack::cpu_ticks(pid).saturating_sub(cpu_before)) as f64 / attack::clock_ticks_per_second() as f64;
    let report = good.report(from, end);
    good.stop();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let survived = if alive() {
        "yes".to_string()
    } else {
        let out = setup.process.background().output();
        let why = out
            .lines()
            .rev()
            .find(|l| l.contains("ABORT") || l.contains("memory allocation"))
            .unwrap_or("exited")
            .to_string();
        format!("**no**: {}", why.split(": ").last().unwrap_or(&why))
    };
    let memory = if setup.unikernel {
        match attack::heap_kib(&setup.process.background().output()).into_iter().max() {
            Some(k) => format!("heap {:.1} MiB", k as f64 / 1024.0),
            None => "heap not reported".into(),
        }
    } else {
        format!("RSS {:.1} MiB", peak_rss.load(Ordering::Relaxed) as f64 / 1024.0)
    };
    Ok(Row { report, cpu, memory, survived, what })
}

pub fn attack(o: &Options) -> Result<(), String> {
    machine();
    let secs = if o.runs == 50 { 20 } else { o.runs as u64 };
    let mut servers = vec![Server::Nginx];
    for t in ["unix", "hvt", "spt"] {
        servers.push(Server::Unikernel(t, testkit::example(t, "static-website")?));
    }
    let v = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    println!(
        "Attacks from one host on the server's link, {secs} s each, while a good client asks for / every 50 ms on fresh connections and on a keep-alive one.\n\
         static-website on each target behind a tap device (unix: direct stack, data limit {MEM_MIB} MiB; Solo5: --mem={MEM_MIB}; statistics every {STATS_SECS} s);\n\
         nginx ({v}, one worker, 4096 connections) across a veth pair, under the same attacks. Served: requests answered 200 of those made (a failed one takes up to 2 s); outage: the longer of the two streams'."
    );
    println!();
    println!(
        "| attack | server | fresh connections served | keep-alive served | longest outage | server CPU | memory at most | survived | the attack |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (kind, name) in ATTACKS {
        for server in &servers {
            let names = format!("{name} {}", server.name());
            if !o.only.iter().all(|w| names.contains(w.as_str())) {
                continue;
            }
            let row = run(server, kind, secs).map_err(|e| format!("{name} against {}: {e}", server.name()))?;
            let served = |s: &attack::Series| format!("{}/{} ({:.0}%)", s.served, s.attempts, s.rate() * 100.0);
            println!(
                "| {name} | {} | {} | {} | {:.2} s | {:.1} s | {} | {} | {} |",
                server.name(),
                served(&row.report.fresh),
                served(&row.report.keep_alive),
                row.report.longest_outage().as_secs_f64(),
                row.cpu,
                row.memory,
                row.survived,
                row.what
            );
        }
    }
    Ok(())
}
