//! `mirage-bench nat`: the packet rate of mirage-nat's connection
//! tracking and translation, in process (no device, no copy but one of
//! each packet into the buffer it is rewritten in, as a router's receive
//! buffer would be); and the DHCP server's rate of DISCOVERs with a pool
//! of 65,535 addresses, filling it and then full (each a made-up client,
//! as a flood of them would be).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use mirage_nat::build::{self, flags};
use mirage_nat::{Config, Interface, Masquerade, Nat, Route, Rules, Timeouts, Verdict};

const UPLINK: Interface = Interface(0);
const INSIDE: Interface = Interface(1);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn route(dst: Ipv4Addr) -> Route {
    if dst.octets()[0] == 10 { Route::Interface(INSIDE) } else { Route::Interface(UPLINK) }
}

fn router(max_flows: usize) -> Result<Nat, String> {
    let rules =
        Rules::parse("allow in on inside\n", &[("uplink", UPLINK), ("inside", INSIDE)]).map_err(|e| e.to_string())?;
    Nat::new(Config {
        max_flows,
        max_flows_per_host: None,
        timeouts: Timeouts::LINUX,
        masquerade: Some(Masquerade { interface: UPLINK, address: EXTERNAL, ports: (10000, 60000) }),
        forwards: Vec::new(),
        rules,
        seed: 0x5eed,
    })
    .map_err(|e| e.to_string())
}

fn host(n: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + 2 + (n % 4000) as u32), 1024 + (n / 4000) as u16)
}

fn server(n: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + (n % 50) as u32), 443)
}

/// Time on the CPU of this thread, in nanoseconds (the first field of
/// /proc/thread-self/schedstat), so that the rates hold on a loaded
/// machine too.
fn cpu_ns() -> Result<u64, String> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").map_err(|e| format!("schedstat: {e}"))?;
    s.split_whitespace().next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("schedstat: {s:?}"))
}

/// A rate per second of wall time and per second on the CPU.
struct Rate {
    wall: f64,
    cpu: f64,
}

fn measure(count: usize, mut work: impl FnMut(usize) -> Result<(), String>) -> Result<Rate, String> {
    let (start, cpu) = (Instant::now(), cpu_ns()?);
    for i in 0..count {
        work(i)?;
    }
    let cpu = (cpu_ns()? - cpu) as f64 / 1e9;
    Ok(Rate { wall: count as f64 / start.elapsed().as_secs_f64(), cpu: count as f64 / cpu })
}

/// The headers of a UDP packet: what differs between the flows' packets.
const HEADERS: usize = 28;

/// Packets through `flows` established flows, both ways, of `payload`
/// bytes each. Each packet's headers are copied into one receive buffer
/// whose payload all flows share (so their checksums stay right), as a
/// packet just received would be there, in cache.
fn established(flows: usize, payload: usize, count: usize) -> Result<Rate, String> {
    let mut nat = router(flows)?;
    let data = vec![0x5a; payload];
    let mut headers = Vec::with_capacity(2 * flows * HEADERS);
    let mut ifaces = Vec::with_capacity(2 * flows);
    for n in 0..flows {
        let mut out = build::udp(host(n), server(n), &data);
        headers.extend_from_slice(&out[..HEADERS]);
        if nat.process(0, INSIDE, &mut out, route) != Verdict::Forward(UPLINK) {
            return Err(format!("flow {n} was not started: {}", nat.stats()));
        }
        let ext = SocketAddrV4::new(EXTERNAL, u16::from_be_bytes([out[20], out[21]]));
        headers.extend_from_slice(&build::udp(server(n), ext, &data)[..HEADERS]);
        ifaces.extend([INSIDE, UPLINK]);
    }
    let mut buf = build::udp(host(0), server(0), &data);
    let packets = ifaces.len();
    measure(count, |i| {
        // Flows in a scattered order, so the table is not read in turn.
        let k = i.wrapping_mul(7919) % packets;
        buf[..HEADERS].copy_from_slice(&headers[k * HEADERS..(k + 1) * HEADERS]);
        match nat.process(1, ifaces[k], &mut buf, route) {
            Verdict::Drop(r) => Err(format!("a packet was dropped ({r:?}): {}", nat.stats())),
            _ => Ok(()),
        }
    })
}

/// New TCP flows (a SYN each, masqueraded) in a full table whose oldest
/// flows expire as time passes.
fn new_flows(table: usize, count: usize) -> Result<Rate, String> {
    let mut nat = router(table)?;
    let timeouts = Timeouts::LINUX;
    let syns: Vec<Vec<u8>> =
        (0..table * 2).map(|n| build::tcp(host(n), server(n), flags::SYN, n as u32, 0, b"")).collect();
    // Time moves so that each flow expires just as the table fills.
    let step = timeouts.tcp_syn_sent / table as u64 + 1;
    let mut buf = Vec::new();
    measure(count, |i| {
        buf.clear();
        buf.extend_from_slice(&syns[i % syns.len()]);
        match nat.process(i as u64 * step, INSIDE, &mut buf, route) {
            Verdict::Forward(UPLINK) => Ok(()),
            v => Err(format!("flow {i}: {v:?}: {}", nat.stats())),
        }
    })
}

/// A DHCPDISCOVER from `mac`: BOOTP's fixed part, the magic cookie, the
/// message type.
fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    (p[0], p[1], p[2]) = (1, 1, 6);
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1, 255]);
    p
}

/// DISCOVERs from made-up clients, `count` of them, to a server whose
/// pool of 65,535 addresses holds `filled` offers first.
fn discovers(filled: usize, count: usize) -> Result<Rate, String> {
    let mut s = mirage_dhcpd::Server::new(mirage_dhcpd::Config {
        server: Ipv4Addr::new(10, 1, 0, 1),
        prefix: 16,
        pool: (Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 255, 254)),
        router: None,
        dns: Vec::new(),
        lease_secs: 3600,
        reservations: Vec::new(),
    })
    .map_err(|e| e.0)?;
    let mac = |n: usize| [2, (n >> 24) as u8, (n >> 16) as u8, (n >> 8) as u8, n as u8, 1];
    for n in 0..filled {
        s.input(&discover(mac(n), n as u32), 1).ok_or("no offer while filling the pool")?;
    }
    measure(count, |i| {
        let n = filled + i;
        match s.input(&discover(mac(n), n as u32), 1) {
            Some(_) => Ok(()),
            None => Err(format!("DISCOVER {n} was not answered: {:?}", s.stats())),
        }
    })
}

fn show(what: &str, r: &Rate, unit: &str) {
    println!(
        "  {what}: {:>6.2} M{unit}/s on the CPU ({:.0} ns each), {:>6.2} M{unit}/s wall",
        r.cpu / 1e6,
        1e9 / r.cpu,
        r.wall / 1e6
    );
}

pub(crate) fn nat(count: usize) -> Result<(), String> {
    crate::machine();
    let n = count.max(10_000);
    println!(
        "mirage-nat in process, one thread: packets through established flows both ways (find + translate + TTL + checksums), and new flows"
    );
    for (flows, payload) in [(1, 18), (10_000, 18), (10_000, 1472), (50_000, 18)] {
        let r = established(flows, payload, n * 100)?;
        show(&format!("established, {flows:>6} flows, UDP {:>4} B packets", payload + 28), &r, "packets");
    }
    let r = new_flows(16_384, n * 20)?;
    show("new TCP flows (SYN, rules, masquerade, expiry), table of 16384", &r, "flows");
    println!("mirage-dhcpd in process: DISCOVERs from made-up clients, a pool of 65,535 addresses");
    let r = discovers(0, 60_000)?;
    show("DISCOVERs filling the pool (the lowest free address each)", &r, "messages");
    let r = discovers(65_535, 20_000)?;
    show("DISCOVERs with the pool full (the oldest offer taken back each)", &r, "messages");
    Ok(())
}
