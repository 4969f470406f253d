//! What the tests share: a router with an uplink and an inside network,
//! its routing table, and an independent check of every checksum.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use mirage_nat::{Config, Forward, Interface, Masquerade, Nat, Protocol, Route, Rules, Timeouts};
use smoltcp::wire::{Icmpv4Packet, IpAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

pub const UPLINK: Interface = Interface(0);
pub const INSIDE: Interface = Interface(1);
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ROUTER_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
pub const WEB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 80);
pub const PORTS: (u16, u16) = (10000, 49151);

pub const RULES: &str = "\
# inside may start anything
allow in on inside
# the port forward to the web server
allow in on uplink proto tcp to 10.0.0.5 port 80
# pings to the router from outside
allow in on uplink out on local proto icmp
# the router's own traffic
allow in on local
";

pub fn sa(a: Ipv4Addr, p: u16) -> SocketAddrV4 {
    SocketAddrV4::new(a, p)
}

pub fn inside_host(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + 10 + n % 240)
}

/// The router's routing table.
pub fn route(dst: Ipv4Addr) -> Route {
    if dst == EXTERNAL || dst == ROUTER_INSIDE || dst == Ipv4Addr::BROADCAST {
        Route::Local
    } else if dst.octets()[..2] == [10, 0] {
        Route::Interface(INSIDE)
    } else if dst.octets()[0] == 203 {
        Route::Unreachable
    } else {
        Route::Interface(UPLINK)
    }
}

pub fn rules(text: &str) -> Rules {
    Rules::parse(text, &[("uplink", UPLINK), ("inside", INSIDE)]).expect("rules that parse")
}

pub fn config(max_flows: usize, ports: (u16, u16)) -> Config {
    Config {
        max_flows,
        // The whole table for one host unless a test shares it.
        max_flows_per_host: Some(max_flows),
        timeouts: Timeouts::LINUX,
        masquerade: Some(Masquerade { interface: UPLINK, address: EXTERNAL, ports }),
        forwards: vec![Forward { protocol: Protocol::Tcp, port: 8080, to: WEB }],
        rules: rules(RULES),
        seed: 42,
    }
}

pub fn router() -> Nat {
    Nat::new(config(1000, PORTS)).expect("a valid configuration")
}

/// Every checksum of `p` is right, read by smoltcp and computed in full:
/// the IP header, the transport checksum with its pseudo-header, and for
/// an ICMP error the quoted IP header and, when quoted whole, the quoted
/// transport checksum.
pub fn valid(p: &[u8]) {
    let ip = Ipv4Packet::new_checked(p).expect("an IPv4 packet smoltcp reads");
    assert!(ip.verify_checksum(), "IP header checksum of {p:02x?}");
    let (s, d) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(payload).expect("a TCP header");
            assert!(t.verify_checksum(&s, &d), "TCP checksum of {p:02x?}");
        }
        IpProtocol::Udp => {
            let u = UdpPacket::new_checked(payload).expect("a UDP header");
            assert!(u.verify_checksum(&s, &d), "UDP checksum of {p:02x?}");
        }
        IpProtocol::Icmp => {
            let m = Icmpv4Packet::new_checked(payload).expect("an ICMP header");
            assert!(m.verify_checksum(), "ICMP checksum of {p:02x?}");
            if matches!(payload[0], 3 | 11 | 12) {
                let q = &payload[8..];
                let inner = Ipv4Packet::new_unchecked(q);
                assert!(inner.verify_checksum(), "the quoted IP header's checksum of {p:02x?}");
                if usize::from(inner.total_len()) == q.len() {
                    valid(q);
                }
            }
        }
        other => panic!("a packet of {other}"),
    }
}

/// The source and destination of a TCP or UDP packet.
pub fn ends(p: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let a = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
    (sa(a(12), port(20)), sa(a(16), port(22)))
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
