//! router: an IPv4 and IPv6 router, IPv4 NAT and firewall between two
//! interfaces, generic over any IP-layer device ([`mirage_devices::ip::Ip`]).
//!
//! * `uplink` (interface 0) has a static address and a gateway, the
//!   default route, or leases them by DHCP (`--uplink-ipv4=dhcp`: the
//!   router waits for the lease before it starts, masquerades behind the
//!   leased address, follows renewals and gives the lease's name servers
//!   to the inside when `--dns` is empty); `inside` (interface 1) a
//!   static address, the gateway of its network, to which it hands out
//!   addresses by DHCP (mirage-dhcpd).
//! * Every other packet goes through mirage-nat: connection tracking,
//!   masquerade of what leaves by the uplink, the port forwards of
//!   `--forward`, and the firewall of the rules file (read from the
//!   `config` store at start: a bad rule stops the router with its line).
//!   One host (an IPv4 address; an IPv6 address on the router's links, a
//!   /64 behind a gateway) starts at most
//!   `--max-flows-per-host` of the table's flows, half unless given.
//!   The router answers pings to its own addresses, and a packet whose TTL
//!   (or hop limit) runs out here, if the rules allow it, with an ICMP
//!   (ICMPv6) Time Exceeded
//!   (100 a second at most, both families together);
//!   other traffic to it is dropped and counted.
//! * IPv6, when an interface has an IPv6 address (`--uplink-ipv6`,
//!   `--inside-ipv6`, `--uplink-ipv6-gateway`), is routed without NAT
//!   under the same rules: see [`v6`].
//! * Every `--stats` seconds a line of counters goes to the console:
//!   per interface, the NAT's (flows in the table, its size, drops by
//!   reason), the DHCP server's and each rule's hits.
//!
//! DHCP requests on the inside are answered before the firewall (a client
//! without an address cannot be matched by rules on addresses anyway).
#![no_std]

extern crate alloc;

pub mod v6;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

use mirage_devices::console::Console;
use mirage_devices::ip::{Ip, IpInfo, IpStats, NextHop};
use mirage_devices::kv::{Key, KvRo};
use mirage_devices::net::{MacAddr, PartialChecksum, RxMeta};
use mirage_devices::random::Random;
use mirage_devices::time::Duration;
use mirage_dhcpd::Destination;
use mirage_nat::{Forward, Interface, Masquerade, Nat, Protocol, Reason, Route, Rules, Verdict};
use mirage_runtime::{Either, select};
use mirage_tcpip::route::Routes;
use mirage_tcpip::wire;

/// The uplink's interface number, and the inside's.
pub const UPLINK: u8 = 0;
/// The inside network's interface number.
pub const INSIDE: u8 = 1;

/// Packets taken from one interface before the other gets its turn.
const BATCH: usize = 64;
/// How often flows and leases are expired.
const TICK: Duration = Duration::from_secs(1);

/// The port forwards of `--forward`: `PROTO:PORT:ADDRESS:PORT`, several
/// separated by commas; empty for none.
pub fn parse_forwards(s: &str) -> Result<Vec<Forward>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("--forward: {item:?} is not PROTO:PORT:ADDRESS:PORT (as tcp:8080:10.0.1.100:80)");
        let parts: Vec<&str> = item.split(':').collect();
        let [proto, port, addr, to_port] = parts[..] else { return Err(bad()) };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad()),
        };
        let port = port.parse().map_err(|_| bad())?;
        let to = SocketAddrV4::new(addr.parse().map_err(|_| bad())?, to_port.parse().map_err(|_| bad())?);
        out.push(Forward { protocol, port, to });
    }
    Ok(out)
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0)
}

/// The DHCP pool: `FIRST-LAST`, or, empty, hosts .100 to .199 of the
/// inside network (which must then be a /24 or larger).
pub fn parse_pool(s: &str, (own, prefix): (Ipv4Addr, u8)) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    if s.is_empty() {
        if prefix > 24 {
            return Err(format!(
                "--dhcp-pool: the inside network {own}/{prefix} is smaller than a /24: give the pool as FIRST-LAST"
            ));
        }
        let net = u32::from(own) & mask(prefix);
        return Ok((Ipv4Addr::from(net + 100), Ipv4Addr::from(net + 199)));
    }
    let bad = || format!("--dhcp-pool: {s:?} is not FIRST-LAST (as 10.0.1.100-10.0.1.199)");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// A UDP datagram from `src:sport` to `dst:dport` in an IPv4 packet with
/// TTL 64, checksums filled in.
pub fn udp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 28 + payload.len()];
    // The buffer is the datagram's length; a DHCP answer is far below
    // 64 KiB.
    let _ = wire::write_udp_ipv4(&mut p, src, sport, dst, dport, payload);
    p
}

/// Turns the ICMP echo request `p` (a checked IPv4 packet to this
/// router) into its reply, in place; whether it was one.
pub fn echo_reply(p: &mut [u8]) -> bool {
    let Ok(ip) = wire::parse_ipv4(p) else { return false };
    if ip.protocol != wire::PROTO_ICMP || ip.fragment || ip.payload.first() != Some(&8) {
        return false;
    }
    let (hl, end) = (ip.header_len, ip.header_len + ip.payload.len());
    let (src, dst) = (ip.src, ip.dst);
    p[12..16].copy_from_slice(&dst.octets());
    p[16..20].copy_from_slice(&src.octets());
    p[8] = 64;
    p[10..12].copy_from_slice(&[0, 0]);
    let c = wire::checksum(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[hl] = 0;
    p[hl + 2..hl + 4].copy_from_slice(&[0, 0]);
    let c = wire::checksum(&p[hl..end]);
    p[hl + 2..hl + 4].copy_from_slice(&c.to_be_bytes());
    true
}

fn dst_of(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[16], p[17], p[18], p[19])
}

/// Whether `p` is a DHCP request (UDP to port 67) to `own` or to the
/// limited broadcast.
fn is_dhcp_request(p: &[u8], own: Ipv4Addr) -> bool {
    let hl = (p[0] & 0x0f) as usize * 4;
    let dst = dst_of(p);
    p[9] == wire::PROTO_UDP
        && p.len() >= hl + 8
        && p[hl + 2..hl + 4] == 67u16.to_be_bytes()
        && (dst == own || dst == Ipv4Addr::BROADCAST)
}

/// Whether the DHCP request `p` (checked by [`is_dhcp_request`]) names
/// `mac` as its client's hardware address (BOOTP's `chaddr`). A client on
/// the link sends from its own address: one host asking for leases under
/// made-up addresses must forge its frames' too.
fn dhcp_client_is(p: &[u8], mac: [u8; 6]) -> bool {
    let bootp = (p[0] & 0x0f) as usize * 4 + 8;
    p.get(bootp + 28..bootp + 34).is_some_and(|c| c == mac)
}

/// What a received packet left for the router to do once the interface
/// it came from is free again.
enum Later {
    /// Nothing: it was forwarded or dropped.
    Done,
    /// The packet in `scratch` goes out of this interface.
    Forward(u8),
    /// The packet in `scratch` is for the router itself.
    Local,
    /// The packet in `scratch` is a DHCP request.
    Dhcp,
    /// The packet in `scratch` came in on this interface with its TTL
    /// spent: a Time Exceeded goes back.
    TimeExceeded(u8),
    /// The IPv6 packet in `scratch` goes out of this interface to this
    /// neighbour.
    Forward6(u8, Ipv6Addr),
    /// The IPv6 packet in `scratch` came in on this interface with its
    /// hop limit spent.
    TimeExceeded6(u8),
}

/// ICMP errors the router sends a second, at most: a peer that makes it
/// send them (TTL 1 packets) gets no more, however fast it sends.
const ICMP_ERRORS_PER_TICK: u32 = 100;

/// Counters of the router's own.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Pings to the router answered.
    echoes: u64,
    /// Packets to the router itself that it does not serve.
    local_dropped: u64,
    /// Forwarded packets an interface refused.
    tx_failed: u64,
    /// Time Exceeded errors sent, and those the rate limit held back.
    time_exceeded: u64,
    icmp_limited: u64,
    /// Packets forwarded with their checksum left to the host (forward
    /// offload), and of those, TCP segments longer than the outgoing
    /// interface's MTU, for its host to cut.
    partial: u64,
    segmented: u64,
    /// Packets with a partial checksum the router could not place (not
    /// TCP or UDP, or a fragment), dropped.
    unsummable: u64,
    /// DHCP requests whose client hardware address is not the frame's
    /// source, dropped.
    dhcp_forged: u64,
}

/// The router's state, apart from the interfaces.
struct Router {
    nat: Nat,
    routes: Routes<u8>,
    dhcp: mirage_dhcpd::Server,
    /// Each interface's address and prefix.
    own: [(Ipv4Addr, u8); 2],
    scratch: Vec<u8>,
    len: usize,
    counters: Counters,
    /// ICMP errors sent since the last tick.
    icmp_errors: u32,
    /// IPv6 routing and its flows.
    v6: v6::V6,
    /// The uplink's gateway, as last applied; whether the uplink is
    /// configured by DHCP.
    uplink_gateway: Option<Ipv4Addr>,
    uplink_dhcp: bool,
    /// The uplink lease last refused for overlapping the inside network
    /// (said once).
    uplink_refused: Option<(Ipv4Addr, u8)>,
    /// The DHCP server gives the name servers of the uplink's lease (no
    /// `--dns`), as they are now.
    dns_from_uplink: bool,
}

/// Whether the subnets of `a` and `b` (address, prefix length) share
/// addresses: the shorter prefix's network holds the other.
fn overlaps((a, p): (Ipv4Addr, u8), (b, q): (Ipv4Addr, u8)) -> bool {
    let m = u32::MAX.checked_shl(32 - u32::from(p.min(q))).unwrap_or(0);
    u32::from(a) & m == u32::from(b) & m
}

fn now_ms() -> u64 {
    mirage_runtime::time::now().as_nanos() / 1_000_000
}

/// Where the routing table sends `dst`, as the NAT asks.
fn route(routes: &Routes<u8>, own: &[(Ipv4Addr, u8); 2], dst: Ipv4Addr) -> Route {
    let local = own.iter().any(|&(a, p)| dst == a || (p < 31 && u32::from(dst) == u32::from(a) | !mask(p)));
    if local || dst == Ipv4Addr::BROADCAST {
        return Route::Local;
    }
    match routes.lookup(dst) {
        Some(h) => Route::Interface(Interface(h.interface)),
        None => Route::Unreachable,
    }
}

/// The neighbour a packet to `dst` goes to.
fn next_hop(routes: &Routes<u8>, dst: Ipv4Addr) -> NextHop {
    match routes.lookup(dst) {
        Some(h) => NextHop::Ip(h.via.addr().into()),
        None => NextHop::Ip(dst.into()),
    }
}

/// The checksum a forwarded packet `p` leaves to the host of the outgoing
/// interface (of MTU `mtu`): none unless it came with one partial, at
/// `field` ([`wire::transport_checksum_field`]); a TCP segment longer
/// than the MTU is also left for the host to cut, into segments as large
/// as the MTU holds with the packet's own headers.
fn offloaded(p: &[u8], field: Option<(u16, u16, u8)>, mtu: usize, counters: &mut Counters) -> Option<PartialChecksum> {
    let (start, offset, proto) = field?;
    counters.partial += 1;
    let mut c = PartialChecksum::new(start, offset);
    if p.len() > mtu && proto == wire::PROTO_TCP {
        let headers = start as usize + (p.get(start as usize + 12).map_or(5, |o| o >> 4) as usize) * 4;
        c.segment = mtu.saturating_sub(headers).clamp(1, u16::MAX as usize) as u16;
        counters.segmented += 1;
    }
    Some(c)
}

impl Router {
    /// Takes the next packet from `from` (interface `fi`), forwarding it
    /// straight to `to` (interface `ti`) when that is where it goes; what
    /// else it needs is left in `scratch`. `None`: no packet waited.
    fn pump(&mut self, from: &mut impl Ip, fi: u8, to: &mut impl Ip, ti: u8) -> Option<Later> {
        let Router { nat, routes, own, scratch, len, counters, v6, .. } = self;
        let inside_own = own[INSIDE as usize].0;
        let out_mtu = to.info().mtu as usize;
        // The packet comes inside its frame, so that it goes on where it
        // lies where the interfaces can (`Ip::send_in_place`).
        let got = from.try_recv_framed(|frame, at, meta| {
            // The sender's hardware address, where the packet came framed.
            let eth_src: Option<[u8; 6]> = frame.get(6..12).filter(|_| at >= 14).and_then(|m| m.try_into().ok());
            let p = &mut frame[at..];
            // A partial checksum (forward offload) is passed on as it is
            // to the other interface; a packet kept for later, or that
            // cannot be, is completed or dropped here.
            let field = match meta {
                RxMeta { partial: true, .. } => match wire::transport_checksum_field(p) {
                    Some(f) => Some(f),
                    None => {
                        counters.unsummable += 1;
                        return Later::Done;
                    }
                },
                _ => None,
            };
            let mut keep = |p: &mut [u8]| {
                if let Some((start, offset, _)) = field {
                    PartialChecksum::new(start, offset).complete(p);
                }
                *len = p.len().min(scratch.len());
                scratch[..*len].copy_from_slice(&p[..*len]);
            };
            let out = |p: &[u8], counters: &mut Counters| offloaded(p, field, out_mtu, counters);
            if p.first().is_some_and(|b| b >> 4 == 6) {
                // The IP layer checked the packet (or its host did).
                return match v6.process_checked(now_ms(), fi, p, nat.rules_mut(), true) {
                    v6::Decision::Forward(i, via) if i == ti => {
                        let partial = out(p, counters);
                        if to.send_in_place(NextHop::Ip(IpAddr::V6(via)), frame, at, partial).is_err() {
                            counters.tx_failed += 1;
                        }
                        Later::Done
                    }
                    v6::Decision::Forward(i, via) => {
                        keep(p);
                        Later::Forward6(i, via)
                    }
                    v6::Decision::HopLimit => {
                        keep(p);
                        Later::TimeExceeded6(fi)
                    }
                    v6::Decision::Drop => Later::Done,
                };
            }
            if fi == INSIDE && is_dhcp_request(p, inside_own) {
                if eth_src.is_some_and(|m| !dhcp_client_is(p, m)) {
                    counters.dhcp_forged += 1;
                    return Later::Done;
                }
                keep(p);
                return Later::Dhcp;
            }
            match nat.process_partial(now_ms(), Interface(fi), p, field.is_some(), |dst| route(routes, own, dst)) {
                Verdict::Forward(Interface(i)) if i == ti => {
                    let hop = next_hop(routes, dst_of(p));
                    let partial = out(p, counters);
                    if to.send_in_place(hop, frame, at, partial).is_err() {
                        counters.tx_failed += 1;
                    }
                    Later::Done
                }
                Verdict::Forward(Interface(i)) => {
                    keep(p);
                    Later::Forward(i)
                }
                Verdict::Local => {
                    keep(p);
                    Later::Local
                }
                Verdict::Drop(Reason::TtlExceeded) => {
                    keep(p);
                    Later::TimeExceeded(fi)
                }
                Verdict::Drop(_) => Later::Done,
            }
        });
        got.ok().flatten()
    }

    /// Does what [`Router::pump`] left, with both interfaces at hand.
    fn finish(&mut self, later: Later, uplink: &mut impl Ip, inside: &mut impl Ip) {
        let out = match later {
            Later::Done => return,
            Later::Forward(i) => i,
            Later::Local => {
                let p = &mut self.scratch[..self.len];
                // Only pings to one of the router's own addresses: the
                // reply to one sent to a broadcast address would come from
                // that address.
                let to = dst_of(p);
                if !self.own.iter().any(|&(a, _)| a == to) || !echo_reply(p) {
                    self.counters.local_dropped += 1;
                    return;
                }
                let dst = dst_of(p);
                let Route::Interface(Interface(i)) = route(&self.routes, &self.own, dst) else {
                    self.counters.local_dropped += 1;
                    return;
                };
                match self.nat.output(now_ms(), Interface(i), p) {
                    Verdict::Forward(Interface(i)) => {
                        self.counters.echoes += 1;
                        i
                    }
                    _ => return,
                }
            }
            Later::Dhcp => return self.dhcp(inside),
            Later::TimeExceeded(fi) => match self.time_exceeded(fi) {
                Some(i) => i,
                None => return,
            },
            Later::Forward6(i, via) => return self.send6(i, via, uplink, inside),
            Later::TimeExceeded6(fi) => {
                if self.icmp_errors >= ICMP_ERRORS_PER_TICK {
                    self.counters.icmp_limited += 1;
                    return;
                }
                let Some((e, out, via)) = self.v6.time_exceeded(fi, &self.scratch[..self.len]) else { return };
                if e.len() > self.scratch.len() {
                    return;
                }
                self.icmp_errors += 1;
                self.counters.time_exceeded += 1;
                self.scratch[..e.len()].copy_from_slice(&e);
                self.len = e.len();
                return self.send6(out, via, uplink, inside);
            }
        };
        let p = &self.scratch[..self.len];
        let hop = next_hop(&self.routes, dst_of(p));
        let sent = match out {
            UPLINK => uplink.send(hop, p.len(), |b| b.copy_from_slice(p)),
            _ => inside.send(hop, p.len(), |b| b.copy_from_slice(p)),
        };
        if sent.is_err() {
            self.counters.tx_failed += 1;
        }
    }

    /// Sends the IPv6 packet in `scratch` out of interface `out` to `via`.
    fn send6(&mut self, out: u8, via: Ipv6Addr, uplink: &mut impl Ip, inside: &mut impl Ip) {
        let p = &self.scratch[..self.len];
        let hop = NextHop::Ip(IpAddr::V6(via));
        let sent = match out {
            UPLINK => uplink.send(hop, p.len(), |b| b.copy_from_slice(p)),
            _ => inside.send(hop, p.len(), |b| b.copy_from_slice(p)),
        };
        if sent.is_err() {
            self.counters.tx_failed += 1;
        }
    }

    /// Turns the packet in `scratch`, which came in on `fi` with its TTL
    /// spent, into the ICMP Time Exceeded for its source (RFC 1812,
    /// 5.3.1), unless it is an ICMP error itself, its source cannot be
    /// answered, or the rate limit is reached; the interface it goes out of.
    fn time_exceeded(&mut self, fi: u8) -> Option<u8> {
        let p = &self.scratch[..self.len];
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let hl = (p[0] & 0x0f) as usize * 4;
        let error = p[9] == wire::PROTO_ICMP && p.get(hl).is_some_and(|&t| matches!(t, 3 | 4 | 5 | 11 | 12));
        if error || src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
            return None;
        }
        if self.icmp_errors >= ICMP_ERRORS_PER_TICK {
            self.counters.icmp_limited += 1;
            return None;
        }
        let reply =
            mirage_nat::build::icmp_error(self.own[fi as usize].0, mirage_nat::build::ICMP_TIME_EXCEEDED, 0, p)?;
        let Route::Interface(Interface(out)) = route(&self.routes, &self.own, src) else { return None };
        if reply.len() > self.scratch.len() {
            return None;
        }
        self.icmp_errors += 1;
        self.counters.time_exceeded += 1;
        self.scratch[..reply.len()].copy_from_slice(&reply);
        self.len = reply.len();
        Some(out)
    }

    /// Answers the DHCP request in `scratch`.
    fn dhcp(&mut self, inside: &mut impl Ip) {
        let Ok(ip) = wire::parse_ipv4(&self.scratch[..self.len]) else { return };
        // The datagram's own bytes: not the link's padding past its length.
        let end = ip.payload.get(4..6).map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
        let Some(payload) = ip.payload.get(8..end) else { return };
        let Some(reply) = self.dhcp.input(payload, now_ms() / 1000) else { return };
        let own = self.own[INSIDE as usize].0;
        let (dst, hop) = match reply.to {
            Destination::Broadcast => (Ipv4Addr::BROADCAST, NextHop::Broadcast),
            Destination::Unicast(a, mac) => (a, NextHop::Mac(MacAddr(mac))),
        };
        let packet = udp_packet(own, 67, dst, 68, &reply.payload);
        if inside.send(hop, packet.len(), |b| b.copy_from_slice(&packet)).is_err() {
            self.counters.tx_failed += 1;
        }
    }

    /// Follows the uplink's lease: a new address is the masquerade
    /// address, and the routes follow the subnet and the router. A lease
    /// whose subnet overlaps the inside network is not followed: its
    /// route would take inside hosts' traffic out of the uplink. What
    /// changed, as a line for the console.
    fn follow_uplink(&mut self, up: &IpInfo, ins: &IpInfo) -> Option<String> {
        if up.ipv4 == self.own[UPLINK as usize] && up.gateway == self.uplink_gateway {
            return None;
        }
        if !up.ipv4.0.is_unspecified() && overlaps(up.ipv4, ins.ipv4) {
            if self.uplink_refused == Some(up.ipv4) {
                return None;
            }
            self.uplink_refused = Some(up.ipv4);
            let ((a, p), (b, q)) = (up.ipv4, ins.ipv4);
            return Some(format!(
                "router: uplink leased {a}/{p}, which overlaps the inside network {b}/{q}: not followed (give the inside interface a subnet apart with --inside-ipv4=ADDRESS/PREFIX)\n"
            ));
        }
        self.uplink_refused = None;
        if self.dns_from_uplink {
            // At most 3 from a lease: within the server's 8.
            let _ = self.dhcp.set_dns(up.dns.iter().flatten().copied().collect());
        }
        self.own[UPLINK as usize] = up.ipv4;
        self.uplink_gateway = up.gateway;
        if !up.ipv4.0.is_unspecified() {
            self.nat.set_masquerade_address(up.ipv4.0);
        }
        // Two or three routes: the heap has room for them, or the router
        // could not have started.
        if let Ok(r) = routes4(up, ins) {
            self.routes = r;
        }
        Some(match up.ipv4 {
            (a, _) if a.is_unspecified() => String::from("router: uplink lost its DHCP lease\n"),
            (a, p) => {
                format!(
                    "router: uplink leased {a}/{p} (gateway {})\n",
                    up.gateway.map_or("none".into(), |g| format!("{g}"))
                )
            }
        })
    }

    /// The `--stats` line.
    fn stats_line(&self, uplink: IpStats, inside: IpStats) -> String {
        let mut s = String::from("stats:");
        for (name, i) in [("uplink", uplink), ("inside", inside)] {
            let _ = write!(
                s,
                " {name} rx {} tx {} rx-dropped {} tx-dropped {} neighbours {};",
                i.rx_packets, i.tx_packets, i.rx_dropped, i.tx_dropped, i.neighbors
            );
        }
        if self.uplink_dhcp {
            let _ = write!(s, " uplink-dhcp acks {} dropped {};", uplink.dhcp_acks, uplink.dhcp_dropped);
        }
        let _ = write!(s, " nat {} memory {};", self.nat.stats(), self.nat.memory());
        let d = self.dhcp.stats();
        let _ = write!(
            s,
            " dhcp leases {} offers {} acks {} naks {} declines {} dropped {} forged {};",
            self.dhcp.leases().count(),
            d.offers,
            d.acks,
            d.naks,
            d.declines,
            d.dropped,
            self.counters.dhcp_forged
        );
        let c = self.counters;
        let _ = write!(
            s,
            " local echoes {} dropped {} tx-failed {} time-exceeded {} icmp-limited {};",
            c.echoes, c.local_dropped, c.tx_failed, c.time_exceeded, c.icmp_limited
        );
        let _ = write!(s, " offload partial {} segmented {} unsummable {};", c.partial, c.segmented, c.unsummable);
        if self.v6.enabled() {
            let c = self.v6.counters;
            let _ = write!(
                s,
                " ipv6 forwarded {} echoes {} flows {} denied {} no-route {} hop-limit {} full {} inbound-full {} host-full {} out-of-window {} dropped {};",
                c.forwarded,
                c.echoes,
                self.v6.flows(),
                c.denied,
                c.no_route,
                c.hop_limit,
                c.full,
                c.inbound_full,
                c.host_full,
                c.out_of_window,
                c.dropped
            );
        }
        s.push_str(" rules");
        for r in self.nat.rules().iter() {
            let _ = write!(s, " line{}:{}", r.line, r.hits);
        }
        let _ = write!(s, " default:{}", self.nat.rules().default_hits());
        s
    }
}

/// The IPv4 routes: each interface's subnet, and the default route
/// through the uplink's gateway (none for an uplink without a lease).
fn routes4(up: &IpInfo, ins: &IpInfo) -> Result<Routes<u8>, String> {
    let mut routes = Routes::new();
    let err = |e| format!("a route: {e}");
    if !up.ipv4.0.is_unspecified() {
        routes.add(up.ipv4.0, up.ipv4.1, None, UPLINK).map_err(err)?;
        if let Some(gw) = up.gateway {
            routes.add(Ipv4Addr::UNSPECIFIED, 0, Some(gw), UPLINK).map_err(err)?;
        }
    }
    routes.add(ins.ipv4.0, ins.ipv4.1, None, INSIDE).map_err(err)?;
    Ok(routes)
}

/// Waits until the uplink holds a DHCP lease, saying so every 10 s;
/// what arrives meanwhile is dropped (nothing can be routed yet).
async fn wait_for_lease(console: &impl Console, uplink: &mut impl Ip) -> Result<(), String> {
    let _ = console.write(b"router: uplink waiting for a DHCP lease\n").await;
    let start = mirage_runtime::time::now();
    let every = Duration::from_secs(10);
    let mut note = start + every;
    while uplink.info().ipv4.0.is_unspecified() {
        match select(uplink.readable(), mirage_runtime::time::sleep_until(note)).await {
            Either::Left(Err(e)) => return Err(format!("the uplink failed: {e}")),
            Either::Right(()) => {
                let waited = (note.as_nanos() - start.as_nanos()) / 1_000_000_000;
                let line = format!(
                    "router: uplink still waiting for a DHCP lease after {waited} s (is a DHCP server on its link? --uplink-ipv4=ADDRESS/PREFIX sets one)\n"
                );
                let _ = console.write(line.as_bytes()).await;
                note = note + every;
            }
            Either::Left(Ok(())) => {}
        }
        while let Ok(Some(())) = uplink.try_recv(|_| ()) {}
    }
    Ok(())
}

/// The IPv6 part of the start line: empty without IPv6.
fn ipv6_summary(up: &mirage_devices::ip::IpInfo, ins: &mirage_devices::ip::IpInfo) -> String {
    let one = |i: &mirage_devices::ip::IpInfo| i.ipv6.map_or("none".into(), |(a, p)| format!("{a}/{p}"));
    if up.ipv6.is_none() && ins.ipv6.is_none() {
        return String::new();
    }
    format!(
        "; IPv6 (routed, no NAT): uplink {} (gateway {}), inside {}",
        one(up),
        up.gateway6.map_or("none".into(), |g| format!("{g}")),
        one(ins)
    )
}

/// The unikernel: routes between `uplink` and `inside` until an interface
/// fails. `rules` names the firewall's file in `config`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    console: impl Console,
    random: impl Random,
    mut uplink: impl Ip,
    mut inside: impl Ip,
    config: impl KvRo,
    rules: &str,
    forward: &str,
    dhcp_pool: &str,
    dns: &str,
    lease: u32,
    max_flows: u32,
    max_flows_per_host: u32,
    udp_timeout: u32,
    stats: u32,
    offload: bool,
) -> Result<(), String> {
    let key = Key::parse(rules).map_err(|e| format!("--rules: {rules:?} is not a key of the config store: {e}"))?;
    let text = config.get(&key).await.map_err(|e| format!("the firewall rules {key}: {e}"))?;
    let text = core::str::from_utf8(&text).map_err(|_| format!("the firewall rules {key} are not UTF-8 text"))?;
    let rules = Rules::parse(text, &[("uplink", Interface(UPLINK)), ("inside", Interface(INSIDE))])
        .map_err(|e| format!("{key}: {e}"))?;
    let forwards = parse_forwards(forward)?;
    if uplink.info().dhcp {
        wait_for_lease(&console, &mut uplink).await?;
    }
    let (up, ins) = (uplink.info(), inside.info());
    if overlaps(up.ipv4, ins.ipv4) {
        let ((a, p), (b, q)) = (up.ipv4, ins.ipv4);
        return Err(if up.dhcp {
            format!(
                "the uplink's DHCP lease {a}/{p} overlaps the inside network {b}/{q}: give the inside interface a subnet apart (--inside-ipv4=ADDRESS/PREFIX)"
            )
        } else {
            format!("--uplink-ipv4={a}/{p} overlaps --inside-ipv4={b}/{q}: give each interface a subnet of its own")
        });
    }
    let timeouts = match udp_timeout {
        0 => mirage_nat::Timeouts::LINUX,
        s => mirage_nat::Timeouts {
            udp_unreplied: s as u64 * 1000,
            udp_replied: s as u64 * 1000,
            ..mirage_nat::Timeouts::LINUX
        },
    };
    let nat = Nat::new(mirage_nat::Config {
        max_flows: max_flows as usize,
        max_flows_per_host: (max_flows_per_host > 0).then_some(max_flows_per_host as usize),
        timeouts,
        masquerade: Some(Masquerade { interface: Interface(UPLINK), address: up.ipv4.0, ports: (1024, 65535) }),
        forwards: forwards.clone(),
        rules,
        seed: random.next_u64(),
    })
    .map_err(|e| format!("the NAT: {e}"))?;
    let per_host = nat.max_flows_per_host();
    let routes = routes4(&up, &ins)?;
    let dns_from_uplink = dns.trim().is_empty() && up.dhcp;
    let dns: Result<Vec<Ipv4Addr>, _> = if dns_from_uplink {
        // The uplink's name servers, from its lease.
        Ok(up.dns.iter().flatten().copied().collect())
    } else {
        dns.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::parse).collect()
    };
    let dhcp = mirage_dhcpd::Server::new(mirage_dhcpd::Config {
        server: ins.ipv4.0,
        prefix: ins.ipv4.1,
        pool: parse_pool(dhcp_pool, ins.ipv4)?,
        router: Some(ins.ipv4.0),
        dns: dns.map_err(|_| String::from("--dns: give IPv4 addresses separated by commas"))?,
        lease_secs: lease,
        reservations: Vec::new(),
    })
    .map_err(|e| format!("the DHCP server: {e}"))?;
    let v6 = v6::V6::new(
        [up.ipv6, ins.ipv6],
        up.gateway6.map(|g| (g, UPLINK)),
        max_flows as usize,
        max_flows_per_host as usize,
        timeouts,
    )
    .map_err(|e| format!("an IPv6 route: {e}"))?;
    // Forward offload on both interfaces or, where one host refuses, said:
    // TCP segments longer than the other's MTU are then dropped.
    let offloaded = if offload { [uplink.forward_offload(), inside.forward_offload()] } else { [false; 2] };
    let offload_note = match offloaded {
        [true, true] => "; forward offload",
        [false, false] => "",
        [true, false] => "; forward offload on the uplink only (segments longer than the inside's MTU are dropped)",
        [false, true] => "; forward offload on the inside only (segments longer than the uplink's MTU are dropped)",
    };
    // Room for a whole 64 KiB segment once a host may hand one over.
    let mtu = if offloaded.contains(&true) { 65_535 } else { up.mtu.max(ins.mtu) as usize };
    let mut r = Router {
        nat,
        routes,
        dhcp,
        own: [up.ipv4, ins.ipv4],
        scratch: vec![0; mtu],
        len: 0,
        counters: Counters::default(),
        icmp_errors: 0,
        v6,
        uplink_gateway: up.gateway,
        uplink_refused: None,
        dns_from_uplink,
        uplink_dhcp: up.dhcp,
    };
    let _ = console
        .write(
            format!(
                "router: uplink {}/{} ({}gateway {}), inside {}/{}; {} flows at most, {} a host; {} port forwards{}{}\n",
                up.ipv4.0,
                up.ipv4.1,
                if up.dhcp { "leased by DHCP, " } else { "" },
                up.gateway.map_or("none".into(), |g| format!("{g}")),
                ins.ipv4.0,
                ins.ipv4.1,
                max_flows,
                per_host,
                forwards.len(),
                ipv6_summary(&up, &ins),
                offload_note
            )
            .as_bytes(),
        )
        .await;
    let every = Duration::from_secs(stats as u64);
    let start = mirage_runtime::time::now();
    let mut next_stats = start + every;
    let mut next_tick = start + TICK;
    loop {
        let mut busy = false;
        for (i, _) in [(); 2].iter().enumerate() {
            for n in 0..BATCH {
                let later = if i == 0 {
                    r.pump(&mut uplink, UPLINK, &mut inside, INSIDE)
                } else {
                    r.pump(&mut inside, INSIDE, &mut uplink, UPLINK)
                };
                let Some(later) = later else { break };
                r.finish(later, &mut uplink, &mut inside);
                busy |= n + 1 == BATCH;
            }
        }
        let now = mirage_runtime::time::now();
        if now >= next_tick {
            next_tick = now + TICK;
            r.nat.expire(now_ms());
            r.v6.expire(now_ms());
            let up = uplink.info();
            if let Some(line) = r.follow_uplink(&up, &inside.info()) {
                let _ = console.write(line.as_bytes()).await;
            }
            r.dhcp.expire(now_ms() / 1000);
            r.icmp_errors = 0;
        }
        if stats > 0 && now >= next_stats {
            next_stats = now + every;
            let line = r.stats_line(uplink.stats(), inside.stats());
            let _ = console.write(format!("{line}\n").as_bytes()).await;
        }
        if busy {
            mirage_runtime::yield_now().await;
            continue;
        }
        let wake = if stats > 0 { next_tick.min(next_stats) } else { next_tick };
        let woken = select(uplink.readable(), select(inside.readable(), mirage_runtime::time::sleep_until(wake))).await;
        match woken {
            Either::Left(Err(e)) => return Err(format!("the uplink failed: {e}")),
            Either::Right(Either::Left(Err(e))) => return Err(format!("the inside interface failed: {e}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_pools_parse_or_say_why_not() {
        let f = parse_forwards("tcp:8080:10.0.1.100:80, udp:53:10.0.1.5:5353").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[1].protocol, f[1].port, f[1].to), (Protocol::Udp, 53, "10.0.1.5:5353".parse().unwrap()));
        assert!(parse_forwards("").unwrap().is_empty());
        let e = parse_forwards("icmp:1:10.0.0.1:1").unwrap_err();
        assert!(e.contains("PROTO:PORT:ADDRESS:PORT"), "{e}");
        let own = (Ipv4Addr::new(10, 0, 1, 2), 24);
        assert_eq!(parse_pool("", own).unwrap(), (Ipv4Addr::new(10, 0, 1, 100), Ipv4Addr::new(10, 0, 1, 199)));
        assert_eq!(
            parse_pool("10.0.1.10-10.0.1.20", own).unwrap(),
            (Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 1, 20))
        );
        assert!(parse_pool("", (Ipv4Addr::new(10, 0, 1, 2), 28)).unwrap_err().contains("FIRST-LAST"));
    }

    #[test]
    fn built_packets_check_out() {
        let p = udp_packet(Ipv4Addr::new(10, 0, 1, 2), 67, Ipv4Addr::BROADCAST, 68, b"offer");
        let ip = wire::parse_ipv4(&p).expect("lengths and checksums hold");
        assert_eq!(
            (ip.src, ip.dst, ip.protocol, &ip.payload[8..]),
            (Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::BROADCAST, 17, &b"offer"[..])
        );
        // An echo request from 10.0.1.7 to 10.0.1.2, answered in place.
        let mut req = vec![0x45, 0, 0, 36, 0, 1, 0, 0, 61, 1, 0, 0, 10, 0, 1, 7, 10, 0, 1, 2];
        let c = wire::checksum(&req);
        req[10..12].copy_from_slice(&c.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        let c = wire::checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        req.extend_from_slice(&icmp);
        assert!(echo_reply(&mut req));
        let ip = wire::parse_ipv4(&req).expect("the reply checks out");
        assert_eq!((ip.src, ip.dst, ip.payload[0]), (Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 7), 0));
        assert_eq!(&ip.payload[4..], &icmp[4..]);
        assert!(!echo_reply(&mut req), "a reply is not answered");
    }

    #[test]
    fn subnets_overlap_when_the_shorter_prefix_holds_the_other() {
        let a = |s: &str, p| (s.parse::<Ipv4Addr>().unwrap(), p);
        assert!(overlaps(a("10.0.5.7", 24), a("10.0.0.1", 16)));
        assert!(overlaps(a("10.0.0.1", 16), a("10.0.5.7", 24)));
        assert!(overlaps(a("10.0.1.9", 24), a("10.0.1.2", 24)));
        assert!(overlaps(a("192.0.2.1", 0), a("10.0.1.2", 24)));
        assert!(!overlaps(a("10.0.0.2", 24), a("10.0.1.2", 24)));
        assert!(!overlaps(a("10.0.0.2", 32), a("10.0.0.3", 32)));
    }

    #[test]
    fn the_rules_file_parses() {
        let text = include_str!("../config/rules");
        let rules = Rules::parse(text, &[("uplink", Interface(UPLINK)), ("inside", Interface(INSIDE))]).unwrap();
        assert_eq!(rules.iter().count(), 4);
    }
}
