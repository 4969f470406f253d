//! The router example end to end, on unix, hvt and spt, in three network
//! namespaces: a client on the inside tap, the router unikernel holding
//! both taps, a server on the uplink tap. The taps are made in the
//! router's namespace, the unikernel attaches them, and then each is moved
//! into its peer's namespace (an attached tap keeps working there), so
//! that the client and the server reach each other only through the
//! router.
//!
//! The client takes its address from the router's DHCP server with
//! busybox's udhcpc, reaches the server through masquerade over TCP, UDP
//! and ping; the server reaches the client through the port forward;
//! traffic the rules deny is dropped and counted on the `--stats` line.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Background, Netns, Scratch, example, run_with};

use crate::{Case, Needs, case};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const UPLINK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// The first address of the router's default pool: the client's lease.
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

/// The three namespaces with the router running between them.
struct Lab {
    client: Netns,
    server: Netns,
    router: Background,
    _router_ns: Netns,
}

impl Lab {
    /// The router on `t` with boot arguments `args` after the defaults',
    /// the taps moved out to the client and the server, the server's
    /// address set; the client has none yet.
    fn start(t: &str, args: &[&str]) -> Result<Lab, String> {
        let image = example(t, "router")?;
        let router_ns = Netns::empty()?;
        let client = Netns::empty()?;
        let server = Netns::empty()?;
        for tap in ["tap-up", "tap-in"] {
            router_ns.ip(&["tuntap", "add", tap, "mode", "tap"])?;
            // Up while the unikernel attaches it (moved, it goes down, and
            // its new namespace sets it up again).
            router_ns.ip(&["link", "set", tap, "up"])?;
        }
        let mut c = router_ns.unikernel(t, &image, &["--net:uplink=tap-up", "--net:inside=tap-in"]);
        c.args(["--stats=1"]).args(args);
        let mut router = Background::start(c)?;
        router.wait_for("router: uplink", Duration::from_secs(30))?;
        router_ns.ip(&["link", "set", "tap-up", "netns", &server.name])?;
        router_ns.ip(&["link", "set", "tap-in", "netns", &client.name])?;
        server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "tap-up"])?;
        server.ip(&["link", "set", "tap-up", "up"])?;
        client.ip(&["link", "set", "tap-in", "up"])?;
        Ok(Lab { client, server, router, _router_ns: router_ns })
    }

    /// Takes a lease with udhcpc; the address and the default route it
    /// set.
    fn lease(&self) -> Result<String, String> {
        let scratch = Scratch::new("udhcpc");
        let script = scratch.0.join("script");
        // udhcpc runs it with the lease in the environment; $mask is the
        // prefix length.
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in\nbound|renew)\n  ip addr flush dev \"$interface\"\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; break; done\n  ;;\nesac\n",
        )
        .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let mut c: Command = self.client.command("busybox");
        c.args(["udhcpc", "-f", "-q", "-n", "-t", "10", "-T", "1", "-i", "tap-in", "-s"]).arg(&script);
        let r = run_with(c, Duration::from_secs(30))?;
        if r.status() != 0 {
            return Err(format!("udhcpc got no lease: {}\n--- router:\n{}", r.dump(), self.router.output()));
        }
        let mut out = String::new();
        for args in [&["-4", "addr", "show", "tap-in"][..], &["route", "show", "default"]] {
            let mut c = self.client.command("ip");
            c.args(args);
            out += &run_with(c, Duration::from_secs(5))?.stdout;
        }
        Ok(out)
    }

    /// The last `--stats` line, once more than `since` were printed.
    fn stats_after(&self, since: usize) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.router.output();
            let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("stats:")).collect();
            if lines.len() > since {
                return Ok(lines[lines.len() - 1].to_string());
            }
            if Instant::now() > deadline {
                return Err(format!("no new stats line\n{out}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stats_lines(&self) -> usize {
        self.router.output().lines().filter(|l| l.starts_with("stats:")).count()
    }
}

/// The count after `label` in a stats line (`denied 5` → 5), 0 if absent.
fn count(line: &str, label: &str) -> u64 {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split([',', ')', ';', ' ']).find(|w| !w.is_empty()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn ping(ns: &Netns, to: Ipv4Addr) -> Result<(), String> {
    let mut c = ns.command("ping");
    c.args(["-c", "3", "-i", "0.2", "-W", "2"]).arg(to.to_string());
    let r = run_with(c, Duration::from_secs(20))?;
    if r.status() != 0 {
        return Err(format!("ping {to}: {}", r.dump()));
    }
    Ok(())
}

/// A TCP echo server on `at` in `ns`, for one connection; the peer it
/// saw.
fn tcp_echo_once(ns: &Netns, at: SocketAddr) -> Result<std::thread::JoinHandle<Result<SocketAddr, String>>, String> {
    let listener = ns.enter(|| TcpListener::bind(at))?.map_err(|e| format!("bind {at}: {e}"))?;
    Ok(std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut buf = vec![0; 65536];
        loop {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(peer);
            }
            s.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
    }))
}

/// Connects from `ns` to `to`, sends `len` bytes and reads them back.
fn tcp_exchange(ns: &Netns, to: SocketAddr, len: usize) -> Result<(), String> {
    ns.enter(|| {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let data = testkit::noise(len as u64, len);
        let mut r = s.try_clone().map_err(|e| e.to_string())?;
        let reader = std::thread::spawn(move || {
            let mut back = Vec::new();
            r.read_to_end(&mut back).map(|_| back)
        });
        s.write_all(&data).map_err(|e| format!("write: {e}"))?;
        s.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
        let back = reader.join().map_err(|_| "reader panicked")?.map_err(|e| format!("read: {e}"))?;
        if back != data {
            return Err(format!("sent {len} bytes to {to}, {} came back different", back.len()));
        }
        Ok(())
    })?
}

fn through(t: &str) -> Result<(), String> {
    let lab = Lab::start(t, &[])?;
    let lease = lab.lease()?;
    if !lease.contains(&format!("{CLIENT}/24")) || !lease.contains(&format!("default via {INSIDE}")) {
        return Err(format!("the lease is not {CLIENT}/24 via {INSIDE}:\n{lease}"));
    }
    // Ping: the router itself, then the server through masquerade.
    ping(&lab.client, INSIDE)?;
    ping(&lab.client, SERVER)?;
    // TCP through masquerade: the server sees the uplink's address.
    let at = SocketAddr::from((SERVER, 7000));
    let server = tcp_echo_once(&lab.server, at)?;
    tcp_exchange(&lab.client, at, 200_000)?;
    let peer = server.join().map_err(|_| "server panicked")??;
    if peer.ip() != UPLINK {
        return Err(format!("the server saw {peer}, not the masquerade address {UPLINK}"));
    }
    // UDP through masquerade, both ways.
    let udp = lab.server.enter(|| UdpSocket::bind((SERVER, 7001)))?.map_err(|e| e.to_string())?;
    udp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> Result<SocketAddr, String> {
        let mut buf = [0; 2048];
        let (n, from) = udp.recv_from(&mut buf).map_err(|e| format!("server's UDP: {e}"))?;
        udp.send_to(&buf[..n], from).map_err(|e| e.to_string())?;
        Ok(from)
    });
    lab.client.enter(|| -> Result<(), String> {
        let s = UdpSocket::bind((CLIENT, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        s.send_to(b"through the router", (SERVER, 7001)).map_err(|e| e.to_string())?;
        let mut buf = [0; 64];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| format!("no UDP answer: {e}"))?;
        if &buf[..n] != b"through the router" || from != SocketAddr::from((SERVER, 7001)) {
            return Err(format!("UDP answer {:?} from {from}", &buf[..n]));
        }
        Ok(())
    })??;
    let from = echo.join().map_err(|_| "server panicked")??;
    if from.ip() != UPLINK {
        return Err(format!("the server's UDP saw {from}, not {UPLINK}"));
    }
    // The port forward: the uplink's 8080 is the client's 80.
    let inside = tcp_echo_once(&lab.client, SocketAddr::from((CLIENT, 80)))?;
    tcp_exchange(&lab.server, SocketAddr::from((UPLINK, 8080)), 50_000)?;
    let peer = inside.join().map_err(|_| "client panicked")??;
    if peer.ip() != SERVER {
        return Err(format!("the forwarded connection came from {peer}, not the server {SERVER}"));
    }
    // Denied: UDP to port 9, which the rules forbid the inside.
    let before = lab.stats_lines();
    let discard = lab.server.enter(|| UdpSocket::bind((SERVER, 9)))?.map_err(|e| e.to_string())?;
    discard.set_read_timeout(Some(Duration::from_millis(1500))).map_err(|e| e.to_string())?;
    lab.client.enter(|| -> Result<(), String> {
        let s = UdpSocket::bind((CLIENT, 0)).map_err(|e| e.to_string())?;
        for _ in 0..5 {
            s.send_to(b"denied", (SERVER, 9)).map_err(|e| e.to_string())?;
        }
        Ok(())
    })??;
    let mut buf = [0; 64];
    if let Ok((n, from)) = discard.recv_from(&mut buf) {
        return Err(format!("a denied datagram arrived: {:?} from {from}", &buf[..n]));
    }
    let line = lab.stats_after(before)?;
    if count(&line, "denied ") < 5 {
        return Err(format!("5 denied datagrams are not counted:\n{line}"));
    }
    // The deny rule (line 6 of config/rules) decided it; the allow rules
    // the rest.
    if count(&line, "line6:") < 1 || count(&line, "line8:") < 1 || count(&line, "line11:") < 1 {
        return Err(format!("the rules' hits are not counted:\n{line}"));
    }
    if count(&line, "leases ") != 1 || count(&line, "echoes ") < 3 {
        return Err(format!("one lease and three echoes are not counted:\n{line}"));
    }
    Ok(())
}

pub fn cases(cases: &mut Vec<Case>) {
    for t in ["unix", "hvt", "spt"] {
        cases.push(case(
            format!("router_{t}_dhcp_nat_forward_and_firewall"),
            Needs::NetProgram { target: t, name: "busybox", package: "busybox" },
            move || through(t),
        ));
    }
}
