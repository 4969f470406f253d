//! The router's connection tracking, NAT and firewall (`mirage-nat`) fed
//! packets from any side, as hosts on its links may send them: the input
//! is a series of packets, each a byte naming the interface, a byte of
//! half-seconds to let pass and a 16-bit length before it. Whatever
//! arrives, nothing panics, the table never holds more than its size, a
//! packet sent on whose checksums were right leaves with right checksums
//! (smoltcp computes them in full), what masquerade sends out of the uplink
//! comes from the uplink's address and a port of its range (or the port
//! forward's), and after `expire` no flow is due.

use std::net::{Ipv4Addr, SocketAddrV4};

use mirage_nat::build::{self, flags};
use mirage_nat::{Config, Forward, Interface, Masquerade, Nat, Protocol, Route, Rules, Timeouts, Verdict};
use smoltcp::wire::{Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

const UPLINK: Interface = Interface(0);
const INSIDE: Interface = Interface(1);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 80);
/// A small table and port range, so that inputs reach both limits.
const MAX_FLOWS: usize = 16;
const PORTS: (u16, u16) = (20000, 20011);

const RULES: &str = "\
deny in on inside proto udp to any port 9
allow in on inside
allow in on uplink proto tcp to 10.0.0.5 port 80
allow in on uplink out on local proto icmp
allow in on local
";

/// The router every input starts with.
pub fn router() -> Nat {
    let rules = Rules::parse(RULES, &[("uplink", UPLINK), ("inside", INSIDE)]).expect("rules that parse");
    Nat::new(Config {
        max_flows: MAX_FLOWS,
        max_flows_per_host: None,
        timeouts: Timeouts::LINUX,
        masquerade: Some(Masquerade { interface: UPLINK, address: EXTERNAL, ports: PORTS }),
        forwards: vec![Forward { protocol: Protocol::Tcp, port: 8080, to: WEB }],
        rules,
        seed: 1,
    })
    .expect("a valid configuration")
}

fn route(dst: Ipv4Addr) -> Route {
    match dst.octets() {
        [192, 0, 2, 1] | [10, 0, 0, 1] | [255, 255, 255, 255] => Route::Local,
        [10, ..] => Route::Interface(INSIDE),
        [203, ..] => Route::Unreachable,
        _ => Route::Interface(UPLINK),
    }
}

/// Where a packet comes from: an interface, or the router itself.
#[derive(Debug, Clone, Copy)]
pub enum From {
    Uplink,
    Inside,
    Router,
    /// An interface no route uses.
    Other,
}

/// Splits `data` into (from, half-seconds to wait, packet) triples.
pub fn packets(data: &[u8]) -> Vec<(From, u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [side, wait, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let from = [From::Uplink, From::Inside, From::Router, From::Other][usize::from(side & 3)];
        out.push((from, *wait, &tail[..len]));
        rest = &tail[len..];
    }
    out
}

/// Frames `packets` as [`packets`] reads them.
pub fn frame(packets: &[(u8, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (side, wait, p) in packets {
        out.extend_from_slice(&[*side, *wait]);
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Whether every checksum of `p` is right, computed in full: the IP
/// header, the transport's (with its pseudo-header), and for an ICMP
/// error the quoted IP header's.
fn checksums_right(p: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(p) else { return false };
    if !ip.verify_checksum() {
        return false;
    }
    let (s, d) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => TcpPacket::new_checked(payload).is_ok_and(|t| t.verify_checksum(&s, &d)),
        IpProtocol::Udp => UdpPacket::new_checked(payload).is_ok_and(|u| u.verify_checksum(&s, &d)),
        IpProtocol::Icmp => {
            let Ok(m) = Icmpv4Packet::new_checked(payload) else { return false };
            m.verify_checksum() && (!matches!(payload[0], 3 | 4 | 11 | 12) || quote_right(&payload[8..]))
        }
        _ => false,
    }
}

/// Whether a quoted IP header's checksum is right, if it has a header
/// length that fits (a quote may be cut anywhere after it).
fn quote_right(q: &[u8]) -> bool {
    let ihl = usize::from(q.first().map_or(0, |b| b & 0x0f)) * 4;
    if ihl < 20 || ihl > q.len() {
        return true;
    }
    // RFC 1071, a word at a time.
    let mut sum: u32 = q[..ihl].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// `p` as a host with checksum offload hands it over: its TCP or UDP
/// checksum field holding only the pseudo-header's sum; and where that
/// field is. `None` for a packet that has no such field to leave (not
/// TCP or UDP, a fragment, a UDP datagram without a checksum, lengths
/// that do not hold).
fn partial_form(p: &[u8]) -> Option<(Vec<u8>, usize)> {
    let ip = Ipv4Packet::new_checked(p).ok()?;
    if ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let (hl, total) = (usize::from(ip.header_len()), usize::from(ip.total_len()));
    let at = hl
        + match ip.next_header() {
            IpProtocol::Tcp => 16,
            IpProtocol::Udp => 6,
            _ => return None,
        };
    if at + 2 > total || (ip.next_header() == IpProtocol::Udp && p[at..at + 2] == [0, 0]) {
        return None;
    }
    // A host sums from the transport header to the packet's end: a UDP
    // datagram shorter than the IP payload (bytes after it, which its own
    // checksum leaves out) is never handed over with its sum partial.
    if ip.next_header() == IpProtocol::Udp && usize::from(u16::from_be_bytes([p[hl + 4], p[hl + 5]])) != total - hl {
        return None;
    }
    let mut sum: u32 = p[12..20].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    sum += u32::from(p[9]) + (total - hl) as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut q = p.to_vec();
    q[at..at + 2].copy_from_slice(&(sum as u16).to_be_bytes());
    Some((q, at))
}

/// Completes the partial checksum at `at` of `q` as the receiving host
/// would: the complement of the sum of the transport bytes, up to the
/// total length, the field included.
fn complete(q: &mut [u8], at: usize) {
    let hl = usize::from(q[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([q[2], q[3]]));
    let mut sum: u32 = 0;
    for w in q[hl..total].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    q[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

pub fn run(data: &[u8]) {
    let mut nat = router();
    // The same router handed every packet it can be as a host with
    // checksum offload would (Nat::process_partial): it must decide the
    // same, and once completed, its packets must be the same.
    let mut twin = router();
    let mut now = 0u64;
    for (from, wait, bytes) in packets(data) {
        now += u64::from(wait) * 500;
        let mut p = bytes.to_vec();
        let right = checksums_right(&p);
        let partial = partial_form(&p).filter(|_| right && !matches!(from, From::Router));
        let (mut q, at) = match partial {
            Some((q, at)) => (q, Some(at)),
            None => (p.clone(), None),
        };
        let v = step(&mut nat, now, from, &mut p);
        let w = match (from, at) {
            (From::Uplink, Some(_)) => twin.process_partial(now, UPLINK, &mut q, true, route),
            (From::Inside, Some(_)) => twin.process_partial(now, INSIDE, &mut q, true, route),
            (From::Other, Some(_)) => twin.process_partial(now, Interface(2), &mut q, true, route),
            _ => step(&mut twin, now, from, &mut q),
        };
        assert_eq!(v, w, "the packet with its checksum partial was decided otherwise:\n{bytes:02x?}");
        if let Some(at) = at.filter(|_| !matches!(v, Verdict::Drop(_))) {
            complete(&mut q, at);
            let (mine, theirs) = (u16::from_be_bytes([p[at], p[at + 1]]), u16::from_be_bytes([q[at], q[at + 1]]));
            // 0 and 0xffff are the same ones'-complement number.
            if (mine, theirs) == (0, 0xffff) || (mine, theirs) == (0xffff, 0) {
                q[at..at + 2].copy_from_slice(&p[at..at + 2]);
            }
            assert_eq!(p, q, "translated with its checksum partial, then completed, it differs:\n{bytes:02x?}");
        }
        assert_eq!(p.len(), bytes.len(), "a packet's length changed");
        assert!(nat.stats().flows <= MAX_FLOWS, "{} flows in a table of {MAX_FLOWS}", nat.stats().flows);
        if matches!(v, Verdict::Drop(_)) {
            assert_eq!(p, bytes, "a dropped packet was changed");
            continue;
        }
        if let Verdict::Forward(i) = v {
            assert!(i == UPLINK || i == INSIDE, "sent out of {i:?}");
        }
        assert!(!right || checksums_right(&p), "checksums broken by the translation:\n{bytes:02x?}\n{p:02x?}");
        if matches!(from, From::Inside) && v == Verdict::Forward(UPLINK) && matches!(p[9], 6 | 17) {
            let port = u16::from_be_bytes([p[20], p[21]]);
            assert_eq!(p[12..16], EXTERNAL.octets(), "masquerade left the inside address");
            assert!((PORTS.0..=PORTS.1).contains(&port) || port == 8080, "port {port} out of the range");
        }
        if wait & 1 == 1 {
            twin.expire(now);
            nat.expire(now);
            assert!(nat.next_expiry().is_none_or(|t| t > now), "a flow due at {now} outlived expire");
        }
    }
    let s = nat.stats();
    assert_eq!(s.created - s.expired, s.flows as u64, "flows lost count: {s}");
}

/// Hands `p` to the router as coming `from` at `now`.
fn step(nat: &mut Nat, now: u64, from: From, p: &mut [u8]) -> Verdict {
    match from {
        From::Uplink => nat.process(now, UPLINK, p, route),
        From::Inside => nat.process(now, INSIDE, p, route),
        From::Router => nat.output(now, UPLINK, p),
        From::Other => nat.process(now, Interface(2), p, route),
    }
}

/// The seeds: conversations through the router, and packets it drops.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let sa = SocketAddrV4::new;
    let host = sa(HOST, 5000);
    let server = sa(SERVER, 53);
    // The first masquerade port (the inside port 5000 is out of the range).
    let ext = sa(EXTERNAL, PORTS.0);
    let syn = build::tcp(host, sa(SERVER, 443), flags::SYN, 1, 0, b"");
    let tcp = vec![
        (1, 0, syn.clone()),
        (0, 1, build::tcp(sa(SERVER, 443), ext, flags::SYN | flags::ACK, 9, 2, b"")),
        (1, 0, build::tcp(host, sa(SERVER, 443), flags::ACK, 2, 10, b"")),
        (1, 0, build::tcp(host, sa(SERVER, 443), flags::ACK | flags::PSH, 2, 10, b"GET / HTTP/1.0\r\n\r\n")),
        // Time Exceeded from a router on the way, quoting the SYN as it left.
        (
            0,
            2,
            build::icmp_error(
                Ipv4Addr::new(198, 18, 0, 1),
                11,
                0,
                &build::tcp(ext, sa(SERVER, 443), flags::SYN, 1, 0, b""),
            )
            .expect("a quote"),
        ),
        (1, 0, build::tcp(host, sa(SERVER, 443), flags::FIN | flags::ACK, 20, 10, b"")),
        (0, 0, build::tcp(sa(SERVER, 443), ext, flags::FIN | flags::ACK, 10, 21, b"")),
        (0, 241, build::tcp(sa(SERVER, 443), ext, flags::ACK, 11, 21, b"")),
    ];
    let mut udp = Vec::new();
    for n in 0..20u16 {
        udp.push((1, 0, build::udp(sa(HOST, 6000 + n), server, b"query")));
    }
    // Twelve ports, then the router's own flows (no port) fill the table.
    for n in 0..6u16 {
        udp.push((2, 0, build::udp(sa(EXTERNAL, 50000 + n), server, b"the router's")));
    }
    udp.push((0, 3, build::udp(server, ext, b"answer")));
    udp.push((1, 61, build::udp(sa(HOST, 7000), server, b"after expiry")));
    // The identifier 77 is out of the range: the ping leaves with the first.
    let ping = build::echo(HOST, SERVER, true, 77, 1, b"ping");
    let ping_out = build::echo(EXTERNAL, SERVER, true, PORTS.0, 1, b"ping");
    let echo = vec![
        (1, 0, ping),
        (0, 1, build::echo(SERVER, EXTERNAL, false, PORTS.0, 1, b"ping")),
        (0, 0, build::echo(SERVER, EXTERNAL, true, 5, 1, b"to the router")),
        (2, 0, build::echo(EXTERNAL, SERVER, false, 5, 1, b"to the router")),
        (0, 0, build::icmp_error(SERVER, 3, 1, &ping_out).expect("a quote")),
    ];
    let forward = vec![
        (0, 0, build::tcp(sa(SERVER, 40000), sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"")),
        (1, 0, build::tcp(WEB, sa(SERVER, 40000), flags::SYN | flags::ACK, 5, 2, b"")),
        (0, 0, build::tcp(sa(SERVER, 40000), sa(EXTERNAL, 22), flags::SYN, 1, 0, b"")),
        (3, 0, build::udp(sa(SERVER, 1), sa(HOST, 2), b"elsewhere")),
    ];
    let mut frag = build::udp(host, server, b"fragment");
    frag[6] = 0x20;
    build::set_ttl(&mut frag, 64);
    let mut options = build::udp(host, server, b"options");
    options[0] = 0x46;
    build::set_ttl(&mut options, 64);
    let odd = vec![
        (1, 0, frag),
        (1, 0, options),
        (1, 0, syn[..30].to_vec()),
        (1, 0, build::udp(host, sa(SERVER, 9), b"denied")),
        (0, 0, build::icmp_error(SERVER, 3, 3, &build::udp(ext, server, b"unknown")).expect("a quote")),
        (1, 0, build::tcp(host, sa(SERVER, 443), flags::ACK, 1, 1, b"no flow")),
    ];
    vec![
        ("nat", "tcp-handshake-error-close", frame(&tcp)),
        ("nat", "udp-exhaustion-expiry", frame(&udp)),
        ("nat", "echo-and-local", frame(&echo)),
        ("nat", "port-forward", frame(&forward)),
        ("nat", "dropped", frame(&odd)),
    ]
}

#[cfg(test)]
mod tests {
    /// The seeds reach the engine's paths, not only its parser.
    #[test]
    fn the_seeds_are_routed() {
        for (_, name, bytes) in super::seeds() {
            let mut nat = super::router();
            let mut now = 0;
            for (from, wait, p) in super::packets(&bytes) {
                now += u64::from(wait) * 500;
                let v = super::step(&mut nat, now, from, &mut p.to_vec());
                eprintln!("{name}: {v:?}");
            }
            let s = nat.stats();
            eprintln!("{name}: {s}");
            assert!(s.forwarded > 0 || name == "dropped", "{name}: {s}");
            if name == "dropped" {
                assert_eq!(s.dropped_total(), 6, "{name}: {s}");
            }
            if name.starts_with("udp") {
                use mirage_nat::Reason::{PortsExhausted, TableFull};
                assert!(s.dropped(TableFull) > 0 && s.dropped(PortsExhausted) > 0 && s.expired > 0, "{name}: {s}");
            }
        }
    }
}
