//! The router benchmark: the `router` example between a client and a
//! server namespace (`testkit::router`), on each target, beside Linux
//! doing the same job in a namespace of its own (two veth pairs,
//! forwarding, nftables masquerade), in the same run. Each row: iperf3 TCP
//! throughput from the client to the server through masquerade with 1 and
//! 8 streams, the rate of 64-byte UDP datagrams that arrive (iperf3,
//! unlimited), new TCP connections a second through NAT, and UDP round
//! trips through the router (p50 and p99); with taps (and veths) of MTU
//! 1500 and 65520 (`--mtu`). `--only tcp` measures the TCP columns alone
//! (the others print `-`), for short runs while working on the path.
//! `--count ROUNDS` measures every row that many times, taking turns, and
//! ends with each target's TCP figures as shares of its round's Linux
//! figure: their median and range.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use testkit::router::{CLIENT, Lab, SERVER};
use testkit::{Background, run_with};

use crate::{Options, machine, median, percentile};

/// Seconds each iperf3 run lasts.
const SECONDS: u64 = 5;

struct Row {
    tcp1: f64,
    tcp8: f64,
    udp_pps: f64,
    conns: f64,
    p50: f64,
    p99: f64,
}

/// The number after `"key":` in `json` at or after `from`.
fn number_after(json: &str, from: usize, key: &str) -> Option<f64> {
    let at = json[from..].find(&format!("\"{key}\":"))? + from + key.len() + 3;
    let rest = json[at..].trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))?;
    rest[..end].parse().ok()
}

/// Runs the iperf3 client in the client namespace against the server's
/// (started for one test); its JSON report.
fn iperf3(lab: &Lab, args: &[&str]) -> Result<String, String> {
    let mut s = lab.server.command("iperf3");
    s.args(["-s", "-1", "-B", &SERVER.to_string()]);
    let _server = Background::start(s)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut c = lab.client.command("iperf3");
    c.args(["-c", &SERVER.to_string(), "-J", "-t", &SECONDS.to_string()]).args(args);
    let r = run_with(c, Duration::from_secs(SECONDS + 30))?;
    if r.status() != 0 {
        return Err(format!("iperf3 {args:?}: {}", r.dump()));
    }
    Ok(r.stdout)
}

/// TCP throughput in Mbit/s received, with `streams` streams.
fn tcp(lab: &Lab, streams: usize) -> Result<f64, String> {
    let json = iperf3(lab, &["-P", &streams.to_string()])?;
    let at = json.find("\"sum_received\"").ok_or("iperf3: no sum_received")?;
    Ok(number_after(&json, at, "bits_per_second").ok_or("iperf3: no bits_per_second")? / 1e6)
}

/// 64-byte UDP datagrams that arrived, per second.
fn udp(lab: &Lab) -> Result<f64, String> {
    let json = iperf3(lab, &["-u", "-l", "64", "-b", "0"])?;
    let at = json.rfind("\"sum\"").ok_or("iperf3: no sum")?;
    let packets = number_after(&json, at, "packets").ok_or("iperf3: no packets")?;
    let lost = number_after(&json, at, "lost_packets").ok_or("iperf3: no lost_packets")?;
    let seconds = number_after(&json, at, "seconds").ok_or("iperf3: no seconds")?;
    Ok((packets - lost) / seconds)
}

/// New TCP connections a second, 8 threads: connect, one byte each way,
/// close.
fn connections(lab: &Lab, total: usize) -> Result<f64, String> {
    let at = SocketAddr::from((SERVER, 7100));
    let listener = lab.server.enter(|| TcpListener::bind(at))?.map_err(|e| format!("bind: {e}"))?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    lab.client.enter(|| {
        let start = Instant::now();
        let workers: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || -> Result<(), String> {
                    for _ in 0..total / 8 {
                        let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(10))
                            .map_err(|e| format!("connect: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
                        s.write_all(b"x").map_err(|e| e.to_string())?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a client panicked")??;
        }
        Ok((total / 8 * 8) as f64 / start.elapsed().as_secs_f64())
    })?
}

/// UDP round trips through the router, one at a time: p50 and p99 in µs.
fn latency(lab: &Lab, count: usize) -> Result<(f64, f64), String> {
    let echo = lab.server.enter(|| UdpSocket::bind((SERVER, 7101)))?.map_err(|e| e.to_string())?;
    echo.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    lab.client.enter(|| -> Result<(f64, f64), String> {
        let s = UdpSocket::bind((CLIENT, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..count as u32 {
            let t = Instant::now();
            s.send_to(&i.to_be_bytes(), (SERVER, 7101)).map_err(|e| e.to_string())?;
            // A late answer to an earlier round is skipped.
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                if n == 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    break;
                }
            }
        }
        if rtts.len() < count / 2 {
            return Err(format!("only {} of {count} round trips answered", rtts.len()));
        }
        Ok((percentile(&mut rtts, 0.50), percentile(&mut rtts, 0.99)))
    })?
}

/// A row's TCP figures over the rounds, per MTU and row label: each
/// round's share of that round's Linux figure, one and eight streams.
type Shares = (u16, String, Vec<(f64, f64)>);

fn measure(lab: &Lab, tcp_only: bool) -> Result<Row, String> {
    let tcp1 = tcp(lab, 1)?;
    let tcp8 = tcp(lab, 8)?;
    if tcp_only {
        let nan = f64::NAN;
        return Ok(Row { tcp1, tcp8, udp_pps: nan, conns: nan, p50: nan, p99: nan });
    }
    let udp_pps = udp(lab)?;
    let conns = connections(lab, 2000)?;
    let (p50, p99) = latency(lab, 2000)?;
    Ok(Row { tcp1, tcp8, udp_pps, conns, p50, p99 })
}

/// The unikernel's CPU time so far (user + system), in seconds, from
/// `/proc` (the tender's process on hvt and spt).
fn cpu_seconds(bg: &Background) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", bg.child.id())).unwrap_or_default();
    // `ip netns exec` execs the program: the pid is the unikernel's.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

pub fn router(opts: &Options) -> Result<(), String> {
    machine();
    println!(
        "router: client -> router -> server; iperf3 {SECONDS} s per figure; the machine's other load disturbs every row"
    );
    println!(
        "{:<40} {:>12} {:>12} {:>14} {:>10} {:>10} {:>10} {:>10}",
        "router", "TCP 1 Mbit/s", "TCP 8 Mbit/s", "UDP64 pkt/s", "conn/s", "p50 µs", "p99 µs", "CPU s"
    );
    let tcp_only = match opts.only.as_slice() {
        [] => false,
        [w] if w == "tcp" => true,
        other => return Err(format!("router: --only {other:?}: the one word it takes is `tcp`")),
    };
    // A figure not measured (`--only tcp`) is a `-`.
    let fig = |v: f64| if v.is_nan() { "-".to_string() } else { format!("{v:.0}") };
    let print = |name: &str, r: &Row, cpu: Option<f64>| {
        println!(
            "{:<40} {:>12} {:>12} {:>14} {:>10} {:>10} {:>10} {:>10}",
            name,
            fig(r.tcp1),
            fig(r.tcp8),
            fig(r.udp_pps),
            fig(r.conns),
            fig(r.p50),
            fig(r.p99),
            cpu.map_or("-".to_string(), |c| format!("{c:.1}"))
        );
    };
    // Rows taking turns (`--count ROUNDS`): Linux, then each target, again
    // and again, so that the machine's drift over minutes, which moves
    // Linux's figure by a third, falls on every row alike; each
    // unikernel figure is compared with the Linux figure of its own round.
    let rounds = if opts.count == 20_000 { 1 } else { opts.count.max(1) };
    let mut shares: Vec<Shares> = Vec::new();
    for &mtu in &opts.mtus {
        for round in 0..rounds {
            if rounds > 1 {
                println!("MTU {mtu}, round {} of {rounds}", round + 1);
            }
            let linux = Lab::linux(mtu)?;
            let base = measure(&linux, tcp_only)?;
            print(&format!("Linux nftables, MTU {mtu}"), &base, None);
            drop(linux);
            for t in &opts.targets {
                // The router as it comes, and again with --boot-args (as
                // `--offload=false`) in the same run, where given.
                let mut variants = vec![vec!["--stats=0"]];
                if !opts.boot_args.is_empty() {
                    variants.push(["--stats=0"].into_iter().chain(opts.boot_args.iter().map(String::as_str)).collect());
                }
                for args in variants {
                    let lab = Lab::start_with_mtu(t, mtu, &args)?;
                    lab.lease()?;
                    let row = measure(&lab, tcp_only)?;
                    let cpu = lab.router.as_ref().map(cpu_seconds);
                    let with = args[1..].join(" ");
                    let label = if with.is_empty() { format!("mirage {t}") } else { format!("mirage {t}, {with}") };
                    print(&format!("{label}, MTU {mtu}"), &row, cpu);
                    let share = (row.tcp1 / base.tcp1, row.tcp8 / base.tcp8);
                    match shares.iter_mut().find(|(m, l, _)| *m == mtu && *l == label) {
                        Some((_, _, v)) => v.push(share),
                        None => shares.push((mtu, label, vec![share])),
                    }
                }
            }
        }
    }
    if rounds > 1 {
        println!();
        println!(
            "TCP throughput as a share of the same round's Linux figure, over {rounds} rounds: median (lowest to highest)"
        );
        println!("{:<40} {:>24} {:>24}", "router", "1 stream", "8 streams");
        let cell = |v: &mut Vec<f64>| {
            let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{:.0}% ({:.0}% to {:.0}%)", median(v) * 100.0, lo * 100.0, hi * 100.0)
        };
        for (mtu, label, v) in &shares {
            let mut one: Vec<f64> = v.iter().map(|s| s.0).collect();
            let mut eight: Vec<f64> = v.iter().map(|s| s.1).collect();
            println!("{:<40} {:>24} {:>24}", format!("{label}, MTU {mtu}"), cell(&mut one), cell(&mut eight));
        }
    }
    Ok(())
}
