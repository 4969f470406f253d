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
//! and ping (and the server's ICMP errors come back translated); the
//! server reaches the client through the port forward;
//! traffic the rules deny is dropped and counted on the `--stats` line.
//!
//! The uplink can lease its address too: dnsmasq serves DHCP on the
//! server's side, the router leases from it and masquerades behind the
//! leased address.
//!
//! IPv6 is routed between static addresses, without NAT: ping and TCP
//! cross the router with the client's own address, and a connection
//! opened from the uplink side is denied by the rules.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use testkit::router::{CLIENT, CLIENT6, INSIDE, INSIDE6, IPV6_ARGS, Lab, SERVER, SERVER6, UPLINK, UPLINK6};
use testkit::{Netns, run_with};

use crate::{Case, Needs, case};

/// The count after `label` in a stats line (`denied 5` → 5), 0 if absent.
fn count(line: &str, label: &str) -> u64 {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split([',', ')', ';', ' ']).find(|w| !w.is_empty()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn ping(ns: &Netns, to: impl Into<IpAddr>) -> Result<(), String> {
    let to = to.into();
    let mut c = ns.command("ping");
    c.arg(if to.is_ipv6() { "-6" } else { "-4" });
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
    through_with(t, true)
}

fn through_without_offload(t: &str) -> Result<(), String> {
    through_with(t, false)
}

/// Everything the router does, with forward offload or without: with it
/// (and taps of MTU 1500), the 200 KB each way cross the router as TCP
/// segments of up to 64 KiB, checksums left to the host, which cuts
/// them; byte-exact either way.
fn through_with(t: &str, offload: bool) -> Result<(), String> {
    let lab = Lab::start(t, if offload { &[] } else { &["--offload=false"] })?;
    let started = lab.output();
    if started.contains("; forward offload") != offload {
        return Err(format!("forward offload is not {}:\n{started}", if offload { "on" } else { "off" }));
    }
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
    // Four streams at once, 16 MiB each way, byte-exact: both interfaces'
    // frames in flight together, where hvt sends each on from the
    // receive buffer it arrived in and posts the buffer again only once
    // the host has taken it.
    let mut streams = Vec::new();
    for port in 7010..7014 {
        let at = SocketAddr::from((SERVER, port));
        streams.push((tcp_echo_once(&lab.server, at)?, at));
    }
    std::thread::scope(|scope| -> Result<(), String> {
        let client = &lab.client;
        let clients: Vec<_> =
            streams.iter().map(|&(_, at)| scope.spawn(move || tcp_exchange(client, at, 16 << 20))).collect();
        for c in clients {
            c.join().map_err(|_| "client panicked")??;
        }
        Ok(())
    })?;
    for (server, _) in streams {
        server.join().map_err(|_| "server panicked")??;
    }
    let line = lab.stats_after(lab.stats_lines())?;
    let (partial, segmented) = (count(&line, "partial "), count(&line, "segmented "));
    if offload && (partial == 0 || segmented == 0) {
        return Err(format!("no segment crossed the router whole:\n{line}"));
    }
    if !offload && partial + segmented != 0 {
        return Err(format!("segments crossed whole without forward offload:\n{line}"));
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
    // A packet whose TTL runs out at the router is answered with a Time
    // Exceeded from the router's inside address.
    let mut c = lab.client.command("ping");
    c.args(["-c", "1", "-t", "1", "-W", "3"]).arg(SERVER.to_string());
    let r = run_with(c, Duration::from_secs(10))?;
    if !r.stdout.contains(&format!("From {INSIDE}")) || !r.stdout.contains("Time to live exceeded") {
        return Err(format!("no Time Exceeded from the router: {}", r.dump()));
    }
    // An ICMP error about a flow comes back translated: the server's port
    // unreachable reaches the client's connected socket as a refusal.
    lab.client.enter(|| -> Result<(), String> {
        let s = UdpSocket::bind((CLIENT, 0)).map_err(|e| e.to_string())?;
        s.connect((SERVER, 7009)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        s.send(b"anyone?").map_err(|e| e.to_string())?;
        match s.recv(&mut [0; 16]) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("the port unreachable did not come back translated: {other:?}")),
        }
    })??;
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
    if count(&line, "leases ") != 1 || count(&line, "echoes ") < 3 || count(&line, "time-exceeded ") != 1 {
        return Err(format!("one lease, three echoes and a Time Exceeded are not counted:\n{line}"));
    }
    Ok(())
}

/// The `N/M` after `flows ` in a stats line.
fn flows(line: &str) -> (u64, u64) {
    let Some(rest) = line.split(" flows ").nth(1) else { return (0, 0) };
    let word = rest.split(' ').next().unwrap_or("");
    let (n, m) = word.split_once('/').unwrap_or(("0", "0"));
    (n.parse().unwrap_or(0), m.parse().unwrap_or(0))
}

/// A UDP round trip from the client to the server's echo at `port`.
fn udp_round_trip(lab: &Lab, port: u16) -> Result<(), String> {
    let udp = lab.server.enter(|| UdpSocket::bind((SERVER, port)))?.map_err(|e| e.to_string())?;
    udp.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = [0; 64];
        let (n, from) = udp.recv_from(&mut buf).map_err(|e| format!("server's UDP: {e}"))?;
        udp.send_to(&buf[..n], from).map(drop).map_err(|e| e.to_string())
    });
    lab.client.enter(|| -> Result<(), String> {
        let s = UdpSocket::bind((CLIENT, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        s.send_to(b"again", (SERVER, port)).map_err(|e| e.to_string())?;
        let mut buf = [0; 64];
        s.recv_from(&mut buf).map(drop).map_err(|e| format!("no UDP answer: {e}"))
    })??;
    echo.join().map_err(|_| "server panicked")?
}

/// One host holds at most its share of the flow table, and a second host
/// the rest; a full table refuses new flows and counts them, and takes
/// new ones again once the old have expired.
fn table_full(t: &str) -> Result<(), String> {
    let lab = Lab::start(t, &["--max-flows=100", "--max-flows-per-host=60", "--udp-timeout=2"])?;
    lab.lease()?;
    // The client's second address (outside the DHCP pool): a second host.
    let second = Ipv4Addr::new(10, 0, 1, 50);
    lab.client.ip(&["addr", "add", &format!("{second}/24"), "dev", "tap-in"])?;
    let sink = lab.server.enter(|| UdpSocket::bind((SERVER, 7002)))?.map_err(|e| e.to_string())?;
    sink.set_read_timeout(Some(Duration::from_millis(1000))).map_err(|e| e.to_string())?;
    // 150 flows from 150 ports of each host, a datagram each, sockets
    // kept open: the first host's first 60 pass, then the second's first
    // 40 fill the table.
    let _sockets = lab.client.enter(|| -> Result<Vec<UdpSocket>, String> {
        let mut v = Vec::new();
        for host in [CLIENT, second] {
            for _ in 0..150 {
                let s = UdpSocket::bind((host, 0)).map_err(|e| e.to_string())?;
                s.send_to(b"one flow", (SERVER, 7002)).map_err(|e| e.to_string())?;
                v.push(s);
                // The tap's queue holds 500 frames; this keeps well within it.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(v)
    })??;
    let mut sources = std::collections::BTreeSet::new();
    let mut buf = [0; 64];
    while let Ok((_, from)) = sink.recv_from(&mut buf) {
        sources.insert(from);
    }
    let before = lab.stats_lines();
    let line = lab.stats_after(before)?;
    let (n, m) = flows(&line);
    if m != 100 || n != 100 || sources.len() as u64 > m || sources.len() < 95 {
        return Err(format!("{} flows reached the server, the table holds {n}/{m}:\n{line}", sources.len()));
    }
    if !lab.output().contains("100 flows at most, 60 a host") {
        return Err(format!("the start line does not give the share:\n{}", lab.output()));
    }
    if count(&line, "host-full ") < 85 || count(&line, "table-full ") < 105 {
        return Err(format!(
            "the first host's 90 flows past its share and the 110 past a full table are not counted:\n{line}"
        ));
    }
    // After the UDP timeout (2 s) and the next expiry (1 s), the table has
    // room again: new flows go through, TCP and UDP.
    std::thread::sleep(Duration::from_millis(3500));
    let line = lab.stats_after(lab.stats_lines())?;
    if flows(&line).0 != 0 || count(&line, "expired ") < 100 {
        return Err(format!("the flows did not expire:\n{line}"));
    }
    let at = SocketAddr::from((SERVER, 7000));
    let server = tcp_echo_once(&lab.server, at)?;
    tcp_exchange(&lab.client, at, 10_000)?;
    server.join().map_err(|_| "server panicked")??;
    udp_round_trip(&lab, 7004)
}

/// An IPv4 packet from `src` to `dst` of protocol `proto`, header checksum
/// filled in, in an Ethernet frame to broadcast from a made-up address.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, flags_offset: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0x51, 0x51, 0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let fo = flags_offset.to_be_bytes();
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 7, fo[0], fo[1], 64, proto, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = sum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of `d`, plus `extra` (a pseudo-header's sum).
fn sum(d: &[u8], extra: u32) -> u16 {
    let mut s: u32 =
        extra + d.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum::<u32>();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// `segment` (TCP or UDP, its checksum field zero) with its checksum.
fn with_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, mut segment: Vec<u8>, at: usize) -> Vec<u8> {
    let pseudo: u32 = [src.octets(), dst.octets()]
        .iter()
        .flat_map(|o| [u16::from_be_bytes([o[0], o[1]]) as u32, u16::from_be_bytes([o[2], o[3]]) as u32])
        .sum::<u32>()
        + proto as u32
        + segment.len() as u32;
    let c = sum(&segment, pseudo);
    segment[at..at + 2].copy_from_slice(&c.to_be_bytes());
    segment
}

/// Malformed and truncated packets, fragments, ICMP errors about unknown
/// flows, TCP segments of no flow and DHCP requests under another
/// hardware address than the frame's are dropped and counted, and the
/// router goes on serving.
fn malformed(t: &str) -> Result<(), String> {
    let lab = Lab::start(t, &[])?;
    lab.lease()?;
    let udp = with_checksum(CLIENT, SERVER, 17, vec![0x13, 0x88, 0x15, 0xb3, 0, 12, 0, 0, 1, 2, 3, 4], 6);
    let good = frame(CLIENT, SERVER, 17, 0, &udp);
    let mut bad_header = good.clone();
    bad_header[24] ^= 0x55; // the header checksum
    let mut bad_udp = good.clone();
    *bad_udp.last_mut().unwrap() ^= 1;
    let truncated = good[..14 + 12].to_vec();
    let mut long = good.clone();
    long[16..18].copy_from_slice(&200u16.to_be_bytes()); // total length past the frame
    let fragment = frame(CLIENT, SERVER, 17, 0x2000, &udp); // more fragments
    // Port unreachable about SERVER:5555 -> CLIENT:4444, a flow never seen.
    let mut quoted = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0];
    quoted.extend_from_slice(&SERVER.octets());
    quoted.extend_from_slice(&CLIENT.octets());
    let c = sum(&quoted, 0);
    quoted[10..12].copy_from_slice(&c.to_be_bytes());
    quoted.extend_from_slice(&[0x15, 0xb3, 0x11, 0x5c, 0, 8, 0, 0]);
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    let c = sum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let icmp_error = frame(CLIENT, SERVER, 1, 0, &icmp);
    // An ACK of no connection.
    let mut tcp = vec![0x13, 0x88, 0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0];
    tcp = with_checksum(CLIENT, SERVER, 6, tcp, 16);
    let no_flow = frame(CLIENT, SERVER, 6, 0, &tcp);
    // A DHCP DISCOVER whose client hardware address is not the frame's
    // source (02:00:00:00:51:51): a host asking under a made-up address.
    let mut bootp = vec![1, 1, 6, 0, 0, 0, 0x51, 0x52, 0, 0, 0x80, 0];
    bootp.extend_from_slice(&[0; 16]);
    bootp.extend_from_slice(&[2, 0, 0, 0, 0x99, 0x99]);
    bootp.extend_from_slice(&[0; 10 + 64 + 128]);
    bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
    let len = (8 + bootp.len()) as u16;
    let mut dhcp = vec![0, 68, 0, 67, (len >> 8) as u8, len as u8, 0, 0];
    dhcp.extend_from_slice(&bootp);
    let dhcp = with_checksum(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, dhcp, 6);
    let forged_dhcp = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, 0, &dhcp);
    let mut frames = Vec::new();
    for _ in 0..10 {
        frames.extend(
            [&bad_header, &bad_udp, &truncated, &long, &fragment, &icmp_error, &no_flow, &forged_dhcp]
                .map(Clone::clone),
        );
    }
    let before = lab.stats_lines();
    lab.client.enter(|| testkit::send_frames("tap-in", &frames))??;
    std::thread::sleep(Duration::from_millis(500));
    let line = lab.stats_after(before)?;
    let inside = line.split(" inside ").nth(1).unwrap_or("");
    let want = [
        ("rx-dropped ", inside, 40),
        ("fragment ", &line, 10),
        ("unknown-icmp-error ", &line, 10),
        ("no-flow ", &line, 10),
        ("forged ", &line, 10),
    ];
    for (label, text, n) in want {
        if count(text, label) < n {
            return Err(format!("{n} of {label:?} are not counted:\n{line}"));
        }
    }
    // And it still routes.
    ping(&lab.client, SERVER)?;
    udp_round_trip(&lab, 7005)
}

/// 10,000 UDP flows at once through masquerade, each answered: the server
/// redirects ports 20000 to 29999 to one echo socket (nftables), so that
/// each port is a flow of its own in the router.
fn ten_thousand_flows(t: &str) -> Result<(), String> {
    const FLOWS: u16 = 10_000;
    let lab = Lab::start(t, &[])?;
    lab.lease()?;
    testkit::attack::nft(
        &lab.server,
        "table ip mirage_router_test {\n  chain pre {\n    type nat hook prerouting priority -100; policy accept;\n    udp dport 20000-29999 redirect to :7003\n  }\n}\n",
    )?;
    let echo = lab.server.enter(|| UdpSocket::bind((SERVER, 7003)))?.map_err(|e| e.to_string())?;
    echo.set_read_timeout(Some(Duration::from_millis(300))).map_err(|e| e.to_string())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = [0; 64];
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let started = Instant::now();
    let answered = lab.client.enter(|| -> Result<usize, String> {
        let s = UdpSocket::bind((CLIENT, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
        let mut answered = vec![false; FLOWS as usize];
        let mut buf = [0; 64];
        for _round in 0..10 {
            let missing: Vec<u16> = (0..FLOWS).filter(|&i| !answered[i as usize]).collect();
            if missing.is_empty() {
                break;
            }
            // Windows of 100 datagrams, each window read back before the
            // next: within the taps' queues.
            for w in missing.chunks(100) {
                for &i in w {
                    s.send_to(&i.to_be_bytes(), (SERVER, 20000 + i)).map_err(|e| e.to_string())?;
                }
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    let port = from.port().wrapping_sub(20000);
                    if n == 2 && u16::from_be_bytes([buf[0], buf[1]]) == port && port < FLOWS {
                        answered[port as usize] = true;
                    }
                    if w.iter().all(|&i| answered[i as usize]) {
                        break;
                    }
                }
            }
        }
        Ok(answered.iter().filter(|a| **a).count())
    })??;
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    let line = lab.stats_after(lab.stats_lines())?;
    if answered != FLOWS as usize {
        return Err(format!("{answered} of {FLOWS} flows answered in {took:?}:\n{line}"));
    }
    // All at once in the table (UDP flows last 120 s once answered).
    let (n, _) = flows(&line);
    if n < FLOWS as u64 || count(&line, "table-full ") > 0 || count(&line, "host-full ") > 0 {
        return Err(format!("the table does not hold the {FLOWS} flows at once:\n{line}"));
    }
    eprintln!("{t}::router: {FLOWS} UDP flows answered through NAT in {took:?}");
    Ok(())
}

/// IPv6 routed between the client and the server, without NAT, under the
/// rules: the router answers ping on both its addresses, the client's
/// ping and TCP reach the server, which sees the client's own address;
/// a connection from the server to the client is denied and counted.
fn ipv6(t: &str) -> Result<(), String> {
    let lab = Lab::start(t, &IPV6_ARGS)?;
    lab.ipv6()?;
    if !lab.output().contains("IPv6 (routed, no NAT): uplink fd00::2/64") {
        return Err(format!("the start line does not give the IPv6 addresses:\n{}", lab.output()));
    }
    ping(&lab.client, INSIDE6)?;
    ping(&lab.server, UPLINK6)?;
    ping(&lab.client, SERVER6)?;
    let at = SocketAddr::from((SERVER6, 7000));
    let server = tcp_echo_once(&lab.server, at)?;
    tcp_exchange(&lab.client, at, 300_000)?;
    let peer = server.join().map_err(|_| "server panicked")??;
    if peer.ip() != CLIENT6 {
        return Err(format!("the server saw {peer}, not the client's own address {CLIENT6}"));
    }
    // A hop limit spent at the router: a Time Exceeded from its inside
    // address.
    let mut c = lab.client.command("ping");
    c.args(["-6", "-c", "1", "-t", "1", "-W", "3"]).arg(SERVER6.to_string());
    let r = run_with(c, Duration::from_secs(10))?;
    if !r.stdout.contains(&format!("From {INSIDE6}")) || !r.stdout.contains("Time exceeded") {
        return Err(format!("no ICMPv6 Time Exceeded from the router: {}", r.dump()));
    }
    // Nothing lets the uplink open a flow to the inside over IPv6 (the
    // port forward's rule names an IPv4 address).
    let before = lab.stats_lines();
    let listener = lab.client.enter(|| TcpListener::bind((CLIENT6, 80)))?.map_err(|e| format!("bind: {e}"))?;
    let to = SocketAddr::from((CLIENT6, 80));
    let r = lab.server.enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))?;
    if let Ok(s) = r {
        return Err(format!("a connection from the uplink side reached the client: {s:?}"));
    }
    drop(listener);
    let line = lab.stats_after(before)?;
    let v6 = line.split(" ipv6 ").nth(1).unwrap_or_default();
    // 300 KB each way: some hundreds of packets at MTU 1500, some tens
    // when TCP crosses in 64 KiB segments (forward offload).
    if count(v6, "denied ") < 1 || count(v6, "forwarded ") < 20 || count(v6, "echoes ") < 6 {
        return Err(format!("IPv6 forwarding, echoes and the denied SYN are not counted:\n{line}"));
    }
    Ok(())
}

/// The uplink leases its address from dnsmasq on the server's link: the
/// start line gives the lease, and the client (leased by the router)
/// reaches the server through masquerade behind the leased address.
fn uplink_dhcp(t: &str) -> Result<(), String> {
    let mut lab = Lab::start(t, &["--uplink-ipv4=dhcp"])?;
    if !lab.output().contains("router: uplink waiting for a DHCP lease") {
        return Err(format!("the router does not say it waits for a lease:\n{}", lab.output()));
    }
    let _dnsmasq = testkit::dnsmasq(
        &lab.server,
        "tap-up",
        "10.0.0.50,10.0.0.59,255.255.255.0,1h",
        &["--dhcp-option=option:dns-server,10.0.0.53"],
    )?;
    let router = lab.router.as_mut().ok_or("no router")?;
    router.wait_for("(leased by DHCP, gateway 10.0.0.1)", Duration::from_secs(30))?;
    let out = lab.output();
    let line = out.lines().find(|l| l.contains("leased by DHCP")).unwrap_or_default();
    let leased: Ipv4Addr = line
        .strip_prefix("router: uplink ")
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no leased address in {line:?}\n{out}"))?;
    if !(50..60).contains(&leased.octets()[3]) || leased.octets()[..3] != [10, 0, 0] || !line.contains("/24 ") {
        return Err(format!("leased {line:?}, outside dnsmasq's 10.0.0.50-59/24"));
    }
    lab.lease()?;
    ping(&lab.client, SERVER)?;
    let at = SocketAddr::from((SERVER, 7000));
    let server = tcp_echo_once(&lab.server, at)?;
    tcp_exchange(&lab.client, at, 100_000)?;
    let peer = server.join().map_err(|_| "server panicked")??;
    if peer.ip() != leased {
        return Err(format!("the server saw {peer}, not the leased address {leased}"));
    }
    // The port forward follows the leased address too.
    let inside = tcp_echo_once(&lab.client, SocketAddr::from((CLIENT, 80)))?;
    tcp_exchange(&lab.server, SocketAddr::from((leased, 8080)), 10_000)?;
    inside.join().map_err(|_| "client panicked")??;
    let line = lab.stats_after(lab.stats_lines())?;
    if count(&line, "uplink-dhcp acks ") != 1 {
        return Err(format!("the lease is not counted:\n{line}"));
    }
    Ok(())
}

/// A configuration the router cannot work with stops it at start, with
/// status 1 and a message naming what is wrong.
fn refuses(t: &str) -> Result<(), String> {
    let image = testkit::example(t, "router")?;
    let ns = Netns::empty()?;
    for tap in ["tap-up", "tap-in"] {
        ns.ip(&["tuntap", "add", tap, "mode", "tap"])?;
        ns.ip(&["link", "set", tap, "up"])?;
    }
    let bad: [(&[&str], &str); 7] = [
        (&["--rules=/no-such-file"], "the firewall rules /no-such-file"),
        (&["--forward=icmp:1:10.0.1.5:1"], "is not PROTO:PORT:ADDRESS:PORT"),
        (
            &["--dhcp-pool=10.0.0.10-10.0.0.20"],
            "the DHCP server: the pool 10.0.0.10-10.0.0.20 is not inside 10.0.1.0/24",
        ),
        (&["--max-flows=0"], "the NAT: a flow table of 0 flows"),
        (
            &["--uplink-ipv4=10.0.0.2/24", "--inside-ipv4=10.0.0.9/16"],
            "--uplink-ipv4=10.0.0.2/24 overlaps --inside-ipv4=10.0.0.9/16: give each interface a subnet of its own",
        ),
        (&["--uplink-ipv4-gateway=192.0.2.1"], "cannot configure the IP layer \"uplink\""),
        (
            &["--uplink-ipv6=fd00::2/64", "--uplink-ipv6-gateway=fd00:9::1"],
            "the IPv6 gateway is not another address of the interface's IPv6 prefix",
        ),
    ];
    for (args, want) in bad {
        let mut c = ns.unikernel(t, &image, &["--net:uplink=tap-up", "--net:inside=tap-in"]);
        c.args(args);
        let r = run_with(c, Duration::from_secs(30))?;
        if r.status() != 1 || !format!("{}{}", r.stdout, r.stderr).contains(want) {
            return Err(format!("{args:?}: not refused with {want:?}: status {}\n{}", r.status(), r.dump()));
        }
    }
    // An address without its prefix is a usage error (status 64), which
    // says what to write.
    let mut c = ns.unikernel(t, &image, &["--net:uplink=tap-up", "--net:inside=tap-in"]);
    c.arg("--uplink-ipv4=10.0.0.2");
    let r = run_with(c, Duration::from_secs(30))?;
    let want = "expected an IPv4 address and prefix length (A.B.C.D/N, N at most 32), or dhcp";
    if r.status() != 64 || !format!("{}{}", r.stdout, r.stderr).contains(want) {
        return Err(format!("--uplink-ipv4=10.0.0.2: not refused with {want:?}: status {}\n{}", r.status(), r.dump()));
    }
    Ok(())
}

pub fn cases(cases: &mut Vec<Case>) {
    type Test = fn(&str) -> Result<(), String>;
    let tests: [(&str, Test); 7] = [
        ("refuses_a_bad_configuration", refuses),
        ("dhcp_nat_forward_and_firewall", through),
        ("dhcp_nat_forward_and_firewall_without_offload", through_without_offload),
        ("a_host_share_and_a_full_table_refuse_and_recover", table_full),
        ("malformed_dropped_and_counted", malformed),
        ("10000_flows", ten_thousand_flows),
        ("routes_ipv6_without_nat", ipv6),
    ];
    for t in ["unix", "hvt", "spt"] {
        for (name, test) in tests {
            cases.push(case(
                format!("{t}::router_{name}"),
                Needs::NetProgram { target: t, name: "busybox", package: "busybox" },
                move || test(t),
            ));
        }
        cases.push(case(
            format!("{t}::router_uplink_leases_by_dhcp"),
            Needs::NetPrograms(t, &[("busybox", "busybox"), ("dnsmasq", "dnsmasq-base")]),
            move || uplink_dhcp(t),
        ));
    }
}
