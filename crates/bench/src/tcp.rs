//! TCP/IP benchmarks: the `network` example (discard, chargen, echo) on
//! unix over a tap device, on hvt and on spt, driven by the host's Linux
//! stack from inside a network namespace; beside the same services served
//! by Linux to Linux across a veth pair between two namespaces.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Background, Netns, example};

use crate::{Options, machine, percentile};

/// What one row measures against.
struct Figures {
    upload_mbit: f64,
    download_mbit: f64,
    conns_per_s: f64,
    p50: f64,
    p99: f64,
}

fn mbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
}

/// Sends `bytes` to the discard service and waits for it to close.
fn upload(to: SocketAddr, bytes: u64) -> Result<Duration, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).map_err(|e| format!("upload: {e}"))?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // The server closes once it has read everything.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(|e| format!("upload: waiting for the close: {e}"))?;
    Ok(start.elapsed())
}

/// Reads `bytes` from the chargen service.
fn download(to: SocketAddr, bytes: u64) -> Result<Duration, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).map_err(|e| format!("download: {e}"))?;
        if n == 0 {
            return Err(format!("download: the server closed after {got} bytes"));
        }
        got += n as u64;
    }
    let d = start.elapsed();
    drop(s);
    Ok(d)
}

/// Short connections to the echo service, `threads` at a time: connect,
/// send 32 bytes, read them back, close. Connections per second.
fn connections(to: SocketAddr, total: usize, threads: usize) -> Result<f64, String> {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> Result<(), String> {
                let msg = [0x42u8; 32];
                let mut back = [0u8; 32];
                for _ in 0..total / threads {
                    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
                        .map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
                    s.set_nodelay(true).map_err(|e| e.to_string())?;
                    s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
                    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a client thread panicked")??;
    }
    Ok((total / threads * threads) as f64 / start.elapsed().as_secs_f64())
}

/// Round trips of 1000 pings 2 ms apart: p50 and p99 in milliseconds.
fn rtt(ns: &Netns, to: Ipv4Addr) -> Result<(f64, f64), String> {
    let out = ns
        .command("ping")
        .args(["-c", "1000", "-i", "0.002"])
        .arg(to.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split(' ').next())
        .filter_map(|t| t.parse().ok())
        .collect();
    if rtts.len() < 990 {
        return Err(format!("ping {to}: {} of 1000 answered", rtts.len()));
    }
    Ok((percentile(&mut rtts, 0.5), percentile(&mut rtts, 0.99)))
}

/// All measurements against `ip`, from inside `ns`.
fn measure(ns: &Netns, ip: Ipv4Addr, bytes: u64, conns: usize) -> Result<Figures, String> {
    let (p50, p99) = rtt(ns, ip)?;
    ns.enter(|| {
        let up = upload(SocketAddr::new(ip.into(), 9), bytes)?;
        let down = download(SocketAddr::new(ip.into(), 19), bytes)?;
        let c = connections(SocketAddr::new(ip.into(), 7), conns, 4)?;
        Ok(Figures { upload_mbit: mbit(bytes, up), download_mbit: mbit(bytes, down), conns_per_s: c, p50, p99 })
    })?
}

/// Linux's own discard, chargen and echo, thread per connection.
fn linux_services(ip: Ipv4Addr) -> Result<(), String> {
    for port in [7u16, 9, 19] {
        let l = TcpListener::bind(SocketAddr::new(ip.into(), port)).map_err(|e| format!("bind {ip}:{port}: {e}"))?;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || serve(s, port));
            }
        });
    }
    Ok(())
}

fn serve(mut s: TcpStream, port: u16) {
    let mut buf = vec![0u8; 1 << 16];
    match port {
        9 => while matches!(s.read(&mut buf), Ok(n) if n > 0) {},
        19 => {
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = b' ' + (i % 95) as u8);
            while s.write_all(&buf).is_ok() {}
        }
        _ => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        },
    }
}

/// Two namespaces joined by a veth pair: 10.0.1.1 (client side, `a`) and
/// 10.0.1.2 (`b`).
pub fn veth() -> Result<(Netns, Netns), String> {
    let a = Netns::new()?;
    let b = Netns::new()?;
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(&["link", "add", "mbench-a", "netns", &a.name, "type", "veth", "peer", "name", "mbench-b", "netns", &b.name])?;
    a.ip(&["addr", "add", "10.0.1.1/24", "dev", "mbench-a"])?;
    a.ip(&["link", "set", "mbench-a", "up"])?;
    b.ip(&["addr", "add", "10.0.1.2/24", "dev", "mbench-b"])?;
    b.ip(&["link", "set", "mbench-b", "up"])?;
    Ok((a, b))
}

pub fn tcp(o: &Options) -> Result<(), String> {
    machine();
    let gib = if o.count == 20_000 { 1 } else { o.count as u64 };
    let bytes = gib << 30;
    let conns = 4000;
    println!(
        "TCP from the host's Linux stack (in a network namespace) to the network example: {gib} GiB to discard (upload) and from chargen (download), \
         {conns} short echo connections 4 at a time (connect, 32 bytes each way, close), 1000 pings 2 ms apart"
    );
    println!();
    println!("| server | upload Mbit/s | download Mbit/s | connections/s | ping p50 | ping p99 |");
    println!("|---|---|---|---|---|---|");
    let print = |name: &str, f: &Figures| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.3} ms | {:.3} ms |",
            f.upload_mbit, f.download_mbit, f.conns_per_s, f.p50, f.p99
        );
    };
    let guest = Ipv4Addr::new(10, 0, 0, 2);
    for target in &o.targets {
        let tender = if target == "unix" { "unix (tap)".to_string() } else { format!("solo5-{target}") };
        for &mtu in &o.mtus {
            for &buffer in &o.buffers {
                let window = match buffer {
                    0 => "default buffers".to_string(),
                    n if n % 1024 == 0 => format!("{} MiB buffers", n / 1024),
                    n => format!("{n} KiB buffers"),
                };
                let name = format!("mirage-rs {tender}, tap MTU {mtu}, {window}");
                let ns = Netns::with_mtu(mtu)?;
                let mut c = ns.unikernel(target, &example(target, "network")?, &["--net:service=tap0"]);
                c.arg("--ipv4=10.0.0.2/24");
                if buffer != 0 {
                    c.arg(format!("--tcp-buffer-kib={buffer}"));
                }
                c.args(&o.boot_args);
                let mut g = Background::start(c)?;
                g.wait_for("network: ", Duration::from_secs(30))?;
                let f = measure(&ns, guest, bytes, conns).map_err(|e| format!("{name}: {e}\n{}", g.output()))?;
                print(&name, &f);
            }
        }
    }
    let (a, b) = veth()?;
    let server = Ipv4Addr::new(10, 0, 1, 2);
    b.enter(|| linux_services(server))??;
    // The reference varies from run to run on a shared machine (one
    // stream's upload from 14 to 26 Gbit/s here): three runs, each shown.
    for run in 1..=3 {
        let f = measure(&a, server, bytes, conns)?;
        print(&format!("Linux to Linux, veth pair, run {run}"), &f);
    }
    Ok(())
}
