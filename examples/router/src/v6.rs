//! IPv6 in the router: routed between the interfaces as it is, without
//! NAT (mirage-nat, like MirageOS's, is IPv4 only), under the same
//! firewall rules and the same default deny.
//!
//! * A new flow (a TCP SYN, a UDP datagram, an ICMPv6 echo request) is
//!   decided by the rules ([`mirage_nat::Rules::decide_ipv6`]): the first
//!   rule without an address that matches it decides, and a flow no rule
//!   matches is denied. Allowed flows are tracked, and their packets pass
//!   both ways; so do ICMPv6 errors about them, to the sender of the
//!   packet they quote (Packet Too Big for path MTU discovery among
//!   them). Anything else is dropped and counted.
//! * Flows are tracked in a table of at most [`MAX_FLOWS`] (or
//!   `--max-flows`, if smaller); when it is full, a new flow is refused and
//!   counted; flows that started on the uplink (from outside) hold at
//!   most half of it, as the NAT's do, and the flows one host started at
//!   most `--max-flows-per-host`, half the table unless given: a host is
//!   an address on the router's own links, and a /64 behind a gateway
//!   (where one host may use any address of its prefix). A host inventing
//!   addresses on the router's link gets a share for each, as an IPv4
//!   host forging addresses of its subnet does. A flow's state is followed as the IPv4 NAT follows its own
//!   ([`mirage_nat::FlowState`]: TCP's from the flags seen, UDP's from
//!   whether a reply came), and it lasts from its last packet as long as
//!   the NAT's [`Timeouts`] give that state: a SYN never answered
//!   120 s, a reset connection 10 s, an established one 5 days; UDP
//!   30 s, or 120 s once answered (`--udp-timeout` for both); ICMPv6 echo
//!   30 s. So SYNs sent once hold the table for two minutes, not for as
//!   long as a connection may be idle. A TCP reset or FIN changes its
//!   flow only within the window of its connection, as the NAT's; a
//!   blind one is dropped and counted (`out-of-window`).
//! * A flow is bound to the interfaces it started between: its packets
//!   pass only in on the interface of their direction. A packet whose
//!   source the routing table would not reach through the interface it
//!   came in on is dropped (strict reverse-path filtering, as IPv4's), so
//!   that an outside host cannot open a flow in an inside host's name.
//!   A full table is swept for flows past their time at most once a
//!   second, not once a refused packet.
//! * The router answers echo requests to its own IPv6 addresses (as the
//!   rules allow traffic to `local`). Multicast, link-local and
//!   unspecified addresses are not forwarded, nor are fragments (the
//!   ports are only in the first) or packets with extension headers other
//!   than those `wire` walks. A packet whose hop limit runs out here (of
//!   a known flow, or one the rules allow to start one) is
//!   dropped and counted, and answered with an ICMPv6 Time Exceeded
//!   ([`V6::time_exceeded`]; the router limits how many it sends, with
//!   IPv4's).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::Ipv6Addr;

use mirage_nat::{Action, FlowState, Interface, Protocol, Refused, Rules, Timeouts};
use mirage_tcpip::route::{Routes, Via};
use mirage_tcpip::wire;

/// The most IPv6 flows tracked at once.
pub const MAX_FLOWS: usize = 4096;

const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// The host a flow counts against. One on a link of the router's own is
/// its address, so that its neighbours each have a share of their own;
/// one behind a gateway is its /64, as it may use any address of its
/// prefix (SLAAC's privacy addresses alone take a new one a day). The two
/// kinds are kept apart: an address whose low half is zero is not the /64
/// of that name behind a gateway. A host that invents addresses on the
/// router's link (reverse-path filtering lets any address of the prefix
/// through) gets a share for each, as an IPv4 host forging addresses of
/// its subnet does: the share bounds a host that keeps to its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Owner {
    on_link: bool,
    key: u128,
}

impl Owner {
    fn of(src: Ipv6Addr, on_link: bool) -> Owner {
        let a = u128::from(src);
        Owner { on_link, key: if on_link { a } else { a & (u128::MAX << 64) } }
    }
}

/// A flow, as its first packet went: from `a` to `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    proto: u8,
    a: [u8; 16],
    a_port: u16,
    b: [u8; 16],
    b_port: u16,
}

impl Key {
    fn new(proto: u8, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Key {
        Key { proto, a: src.octets(), a_port: sport, b: dst.octets(), b_port: dport }
    }

    fn reversed(self) -> Key {
        Key { proto: self.proto, a: self.b, a_port: self.b_port, b: self.a, b_port: self.a_port }
    }
}

/// IPv6 counters, for the `--stats` line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Packets forwarded.
    pub forwarded: u64,
    /// Echo requests to the router answered.
    pub echoes: u64,
    /// New flows the rules denied, and packets of no known flow that
    /// cannot start one.
    pub denied: u64,
    /// Packets to a destination no route takes.
    pub no_route: u64,
    /// Packets whose hop limit ran out here.
    pub hop_limit: u64,
    /// New flows refused because the table was full.
    pub full: u64,
    /// New flows from outside refused because flows from outside held
    /// half the table.
    pub inbound_full: u64,
    /// New flows refused because their source's host held its share.
    pub host_full: u64,
    /// TCP resets and FINs outside the window of their connection (blind
    /// attempts to end a flow, or to shorten its time).
    pub out_of_window: u64,
    /// Other packets dropped: fragments, multicast or link-local
    /// addresses, protocols not tracked, traffic to the router it does
    /// not serve.
    pub dropped: u64,
}

/// What to do with an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it (rewritten in place) out of this interface, to this
    /// neighbour.
    Forward(u8, Ipv6Addr),
    /// Nothing: it was dropped and counted.
    Drop,
    /// Dropped and counted, its hop limit spent: a Time Exceeded may go
    /// back ([`V6::time_exceeded`]).
    HopLimit,
}

/// The router's IPv6 state.
#[derive(Debug)]
pub struct V6 {
    /// Each interface's IPv6 address and prefix.
    own: [Option<(Ipv6Addr, u8)>; 2],
    routes: Routes<u8, Ipv6Addr>,
    /// Flows: when each expires, in milliseconds, its state, the
    /// interfaces its first packet came in on and went out by, and whom it
    /// counts against.
    flows: BTreeMap<Key, (u64, FlowState, [u8; 2], Owner)>,
    /// When a full table was last swept (`expire`), in milliseconds.
    swept: Option<u64>,
    /// Flows that started on the uplink (from outside).
    inbound: usize,
    /// Flows each host started (an address on the router's links, a /64
    /// behind a gateway), and the most one may hold.
    hosts: BTreeMap<Owner, u32>,
    per_host: usize,
    max_flows: usize,
    timeouts: Timeouts,
    /// Counters.
    pub counters: Counters,
}

fn special(a: Ipv6Addr) -> bool {
    a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.segments()[0] & 0xffc0 == 0xfe80
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl V6 {
    /// The state for interfaces with these IPv6 addresses; the default
    /// route goes to `gateway` on `gateway_if`; flows last as `timeouts`
    /// say (the NAT's); one host starts at most `per_host` of the
    /// `max_flows` (0: half).
    pub fn new(
        own: [Option<(Ipv6Addr, u8)>; 2],
        gateway: Option<(Ipv6Addr, u8)>,
        max_flows: usize,
        per_host: usize,
        timeouts: Timeouts,
    ) -> Result<V6, mirage_tcpip::route::RouteError> {
        let mut routes = Routes::new();
        for (i, o) in own.iter().enumerate() {
            if let Some((a, p)) = *o {
                routes.add(a, p, None, i as u8)?;
            }
        }
        if let Some((g, i)) = gateway {
            routes.add(Ipv6Addr::UNSPECIFIED, 0, Some(g), i)?;
        }
        Ok(V6 {
            own,
            routes,
            flows: BTreeMap::new(),
            swept: None,
            inbound: 0,
            hosts: BTreeMap::new(),
            per_host: if per_host == 0 { (max_flows.min(MAX_FLOWS) / 2).max(1) } else { per_host },
            max_flows: max_flows.min(MAX_FLOWS),
            timeouts,
            counters: Counters::default(),
        })
    }

    /// Whether any interface routes IPv6.
    pub fn enabled(&self) -> bool {
        self.own.iter().any(Option::is_some)
    }

    /// Flows tracked now.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Forgets flows whose time is up.
    pub fn expire(&mut self, now_ms: u64) {
        let (inbound, hosts) = (&mut self.inbound, &mut self.hosts);
        self.flows.retain(|_, (until, _, ifs, owner)| {
            let keep = *until > now_ms;
            if !keep {
                if ifs[0] == crate::UPLINK {
                    *inbound -= 1;
                }
                if let Some(n) = hosts.get_mut(owner) {
                    *n -= 1;
                    if *n == 0 {
                        hosts.remove(owner);
                    }
                }
            }
            keep
        });
    }

    /// Decides the IPv6 packet `p` (checked by the IP layer) that came in
    /// on interface `fi`, rewriting it in place: the hop limit, or the
    /// whole of an echo request to the router, which becomes its reply.
    pub fn process(&mut self, now_ms: u64, fi: u8, p: &mut [u8], rules: &mut Rules) -> Decision {
        self.process_checked(now_ms, fi, p, rules, false)
    }

    /// As [`V6::process`]; with `checked`, the packet's upper-layer
    /// checksum is not checked again: the IP layer did, or the host
    /// vouched for it (and it may hold a partial sum, which the router
    /// passes on).
    pub fn process_checked(&mut self, now_ms: u64, fi: u8, p: &mut [u8], rules: &mut Rules, checked: bool) -> Decision {
        let Ok(ip) = wire::parse_ipv6_vouched(p, checked) else { return self.drop() };
        let (upper, data, fragment) = wire::ipv6_upper_layer(&ip);
        let (src, dst, hop_limit, extensions) = (ip.src, ip.dst, ip.hop_limit, ip.next_header != upper.unwrap_or(0));
        let Some(proto) = upper.filter(|_| !fragment && !extensions) else { return self.drop() };
        // Spoofed: a source the routes would not reach through `fi`.
        let back = self.routes.lookup(src).filter(|h| h.interface == fi && !special(src));
        let Some(back) = back else { return self.drop() };
        let owner = Owner::of(src, matches!(back.via, Via::Direct(_)));
        // The ports (echo identifiers), and whether the packet may start
        // a flow.
        let icmp_type = data.first().copied().unwrap_or(0);
        let tcp_flags = if proto == wire::PROTO_TCP { data.get(13).copied().unwrap_or(0) } else { 0 };
        let (protocol, sport, dport, opener) = match proto {
            wire::PROTO_TCP => {
                (Protocol::Tcp, be16(data, 0).unwrap_or(0), be16(data, 2).unwrap_or(0), tcp_flags & 0x12 == 0x02)
            }
            wire::PROTO_UDP => (Protocol::Udp, be16(data, 0).unwrap_or(0), be16(data, 2).unwrap_or(0), true),
            wire::PROTO_ICMPV6 if icmp_type == ECHO_REQUEST || icmp_type == ECHO_REPLY => {
                let id = be16(data, 4).unwrap_or(0);
                (Protocol::Icmp, id, id, icmp_type == ECHO_REQUEST)
            }
            wire::PROTO_ICMPV6 if (1..=4).contains(&icmp_type) => {
                return self.icmp_error(p, dst, hop_limit);
            }
            _ => return self.drop(),
        };
        if self.own.iter().flatten().any(|&(a, _)| a == dst) {
            if icmp_type != ECHO_REQUEST || proto != wire::PROTO_ICMPV6 {
                return self.drop();
            }
            if rules.decide_ipv6(Interface(fi), None, protocol, sport, dport) == Action::Deny {
                self.counters.denied += 1;
                return Decision::Drop;
            }
            return self.echo_reply(p, src, dst);
        }
        if special(dst) {
            return self.drop();
        }
        let Some(hop) = self.routes.lookup(dst) else {
            self.counters.no_route += 1;
            return Decision::Drop;
        };
        // Its hop limit is looked at once the packet is known to be
        // allowed: traffic the rules deny draws no Time Exceeded.
        let spent = |v: &mut V6| {
            v.counters.hop_limit += 1;
            Decision::HopLimit
        };
        let key = Key::new(proto, src, sport, dst, dport);
        let t = self.timeouts;
        let known = match self.flows.get_mut(&key) {
            Some(e) => Some((e, false)),
            None => self.flows.get_mut(&key.reversed()).map(|e| (e, true)),
        };
        if let Some(((until, state, ifs, _), reply)) = known {
            // In on the interface of its direction, out by the other's;
            // echo requests the way the flow started, replies back (as
            // the NAT's): a host pinged from inside would otherwise ping
            // back in under the flow, whatever the rules say.
            let (came, goes) = if reply { (ifs[1], ifs[0]) } else { (ifs[0], ifs[1]) };
            let wrong_echo = proto == wire::PROTO_ICMPV6 && (icmp_type == ECHO_REQUEST) == reply;
            if came != fi || goes != hop.interface || wrong_echo {
                self.counters.denied += 1;
                return Decision::Drop;
            }
            if hop_limit <= 1 {
                return spent(self);
            }
            match state.advance(reply, proto, data) {
                // Noted: the flow's time is renewed.
                Ok(true) => *until = now_ms + state.timeout(&t),
                // Not the connection's as the flow knows it: passed on,
                // changing nothing.
                Ok(false) => {}
                Err(Refused::OutOfWindow) => {
                    self.counters.out_of_window += 1;
                    return Decision::Drop;
                }
                Err(Refused::Malformed) => return self.drop(),
            }
        } else {
            if !opener
                || rules.decide_ipv6(Interface(fi), Some(Interface(hop.interface)), protocol, sport, dport)
                    == Action::Deny
            {
                self.counters.denied += 1;
                return Decision::Drop;
            }
            if hop_limit <= 1 {
                return spent(self);
            }
            // Flows from outside hold at most half the table (as the
            // NAT's): a flood of them, spoofed from anywhere the uplink
            // routes, leaves the inside room to start its own. One host
            // holds at most its share.
            let inbound = fi == crate::UPLINK;
            let held = |v: &V6| v.hosts.get(&owner).is_some_and(|&n| n as usize >= v.per_host);
            let full = |v: &V6| v.flows.len() >= v.max_flows || inbound && v.inbound >= v.max_flows / 2 || held(v);
            if full(self) {
                if self.swept.is_none_or(|at| now_ms.saturating_sub(at) >= 1000) {
                    self.swept = Some(now_ms);
                    self.expire(now_ms);
                }
                if full(self) {
                    if held(self) {
                        self.counters.host_full += 1;
                    } else if self.flows.len() >= self.max_flows {
                        self.counters.full += 1;
                    } else {
                        self.counters.inbound_full += 1;
                    }
                    return Decision::Drop;
                }
            }
            let Ok(state) = FlowState::new(proto, data) else { return self.drop() };
            self.flows.insert(key, (now_ms + state.timeout(&t), state, [fi, hop.interface], owner));
            self.inbound += usize::from(inbound);
            *self.hosts.entry(owner).or_insert(0) += 1;
        }
        p[7] = hop_limit - 1;
        self.counters.forwarded += 1;
        Decision::Forward(hop.interface, hop.via.addr())
    }

    /// The ICMPv6 Time Exceeded (RFC 4443, 3.3) for `p`, which came in on
    /// `fi` with its hop limit spent: from the router's address on `fi`,
    /// quoting as much of `p` as fits in 1,280 bytes, with the interface
    /// and neighbour it goes to. `None` when `p` is an ICMPv6 error itself,
    /// its source cannot be answered, or no route leads back.
    pub fn time_exceeded(&self, fi: u8, p: &[u8]) -> Option<(Vec<u8>, u8, Ipv6Addr)> {
        let (own, _) = (*self.own.get(fi as usize)?)?;
        let ip = wire::parse_ipv6(p).ok()?;
        let (upper, data, _) = wire::ipv6_upper_layer(&ip);
        if upper == Some(wire::PROTO_ICMPV6) && data.first().is_none_or(|&t| t < 128) || special(ip.src) {
            return None;
        }
        let hop = self.routes.lookup(ip.src)?;
        let quoted = &p[..p.len().min(1280 - 48)];
        let mut icmp = alloc::vec![3, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let c = wire::checksum_ipv6(own, ip.src, wire::PROTO_ICMPV6, &icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut out = alloc::vec![0x60, 0, 0, 0];
        out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        out.extend_from_slice(&[wire::PROTO_ICMPV6, 64]);
        out.extend_from_slice(&own.octets());
        out.extend_from_slice(&ip.src.octets());
        out.extend_from_slice(&icmp);
        Some((out, hop.interface, hop.via.addr()))
    }

    fn drop(&mut self) -> Decision {
        self.counters.dropped += 1;
        Decision::Drop
    }

    /// An ICMPv6 error passes when the packet it quotes belongs to a
    /// tracked flow.
    fn icmp_error(&mut self, p: &mut [u8], dst: Ipv6Addr, hop_limit: u8) -> Decision {
        // The quoted packet follows the 40-byte header and the error's 8.
        let Some(quoted) = p.get(48..).filter(|q| q.len() >= 48 && q[0] >> 4 == 6) else { return self.drop() };
        let mut a = [0; 16];
        a.copy_from_slice(&quoted[8..24]);
        let mut b = [0; 16];
        b.copy_from_slice(&quoted[24..40]);
        let proto = quoted[6];
        let (sport, dport) = match proto {
            wire::PROTO_TCP | wire::PROTO_UDP => (be16(quoted, 40).unwrap_or(0), be16(quoted, 42).unwrap_or(0)),
            wire::PROTO_ICMPV6 if quoted[40] == ECHO_REQUEST || quoted[40] == ECHO_REPLY => {
                let id = be16(quoted, 44).unwrap_or(0);
                (id, id)
            }
            _ => return self.drop(),
        };
        let key = Key::new(proto, Ipv6Addr::from(a), sport, Ipv6Addr::from(b), dport);
        // An error goes back to the sender of the packet it quotes: one
        // aimed anywhere else would let whoever knows a flow send errors
        // to every host behind the router.
        if dst != Ipv6Addr::from(a) || !self.flows.contains_key(&key) && !self.flows.contains_key(&key.reversed()) {
            self.counters.denied += 1;
            return Decision::Drop;
        }
        if special(dst) || hop_limit <= 1 {
            return self.drop();
        }
        let Some(hop) = self.routes.lookup(dst) else {
            self.counters.no_route += 1;
            return Decision::Drop;
        };
        p[7] = hop_limit - 1;
        self.counters.forwarded += 1;
        Decision::Forward(hop.interface, hop.via.addr())
    }

    /// Turns the echo request in `p` (no extension headers) into its
    /// reply, from `dst` back to `src`.
    fn echo_reply(&mut self, p: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr) -> Decision {
        let Some(hop) = self.routes.lookup(src) else {
            self.counters.no_route += 1;
            return Decision::Drop;
        };
        let len = 40 + be16(p, 4).unwrap_or(0) as usize;
        p[7] = 64;
        p[8..24].copy_from_slice(&dst.octets());
        p[24..40].copy_from_slice(&src.octets());
        let icmp = &mut p[40..len];
        icmp[0] = ECHO_REPLY;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let c = wire::checksum_ipv6(dst, src, wire::PROTO_ICMPV6, icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        self.counters.echoes += 1;
        Decision::Forward(hop.interface, hop.via.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    const UP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const IN: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
    const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x100);
    const SERVER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const FAR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    /// An IPv6 packet of `proto` carrying `l4`, its checksum filled in at
    /// `sum` (the offset in `l4`).
    fn packet(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, proto: u8, mut l4: Vec<u8>, sum: usize) -> Vec<u8> {
        let c = wire::checksum_ipv6(src, dst, proto, &l4);
        l4[sum..sum + 2].copy_from_slice(&c.to_be_bytes());
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        p.extend_from_slice(&[proto, hop]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&l4);
        p
    }

    fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[0, 10, 0, 0, 0xab, 0xcd]);
        packet(src, dst, 64, wire::PROTO_UDP, u, 6)
    }

    fn syn(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
        let mut t = vec![0; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = 0x02;
        packet(src, dst, 64, wire::PROTO_TCP, t, 16)
    }

    fn echo(src: Ipv6Addr, dst: Ipv6Addr, hop: u8) -> Vec<u8> {
        packet(src, dst, hop, wire::PROTO_ICMPV6, vec![ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1, 9, 9], 2)
    }

    /// A router with room for `max` flows, with no share for a host.
    fn setup(max: usize) -> (V6, Rules) {
        setup_shared(max, usize::MAX)
    }

    fn setup_shared(max: usize, per_host: usize) -> (V6, Rules) {
        let rules = Rules::parse(
            include_str!("../config/rules"),
            &[("uplink", Interface(crate::UPLINK)), ("inside", Interface(crate::INSIDE))],
        )
        .unwrap();
        let v6 =
            V6::new([Some((UP, 64)), Some((IN, 64))], Some((SERVER, crate::UPLINK)), max, per_host, Timeouts::LINUX)
                .unwrap();
        (v6, rules)
    }

    #[test]
    fn inside_goes_out_replies_come_back_nothing_else_comes_in() {
        let (mut v, mut rules) = setup(100);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        // Out: forwarded unchanged but for the hop limit, to the server
        // directly, and far away through the gateway.
        let mut p = udp(CLIENT, 5000, SERVER, 53);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        assert_eq!(p[7], 63);
        assert!(wire::parse_ipv6(&p).is_ok(), "no checksum covers the hop limit");
        let mut p = syn(CLIENT, 40000, FAR, 80);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        // Back: the reply passes; a new flow in is denied, as is TCP that
        // is not a SYN; the rules' port forward names an IPv4 address.
        let mut p = udp(SERVER, 53, CLIENT, 5000);
        assert_eq!(v.process(1, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
        let mut p = udp(SERVER, 53, CLIENT, 5001);
        assert_eq!(v.process(1, up, &mut p, &mut rules), Decision::Drop);
        let mut p = syn(SERVER, 40000, CLIENT, 80);
        assert_eq!(v.process(1, up, &mut p, &mut rules), Decision::Drop);
        // A bare ACK of no known flow.
        let mut p = with_flags(syn(CLIENT, 40001, SERVER, 80), 0x10);
        assert_eq!(v.process(1, ins, &mut p, &mut rules), Decision::Drop);
        assert_eq!((v.counters.forwarded, v.counters.denied, v.flows()), (3, 3, 2));
        // Flows expire: the reply no longer passes.
        let replied = Timeouts::LINUX.udp_replied;
        v.expire(replied + 1);
        let mut p = udp(SERVER, 53, CLIENT, 5000);
        assert_eq!(v.process(replied + 1, up, &mut p, &mut rules), Decision::Drop);
    }

    /// `p` with TCP flags `flags`, its checksum made again.
    #[test]
    fn spoofed_sources_and_flows_from_the_wrong_side_are_dropped() {
        let (mut v, mut rules) = setup(100);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        let mut p = udp(CLIENT, 5000, SERVER, 53);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        // The flow's own packet, in from outside with the client's
        // source: an inside address on the uplink is spoofed.
        let mut p = udp(CLIENT, 5000, SERVER, 53);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Drop);
        // An outside source from inside, answering the flow.
        let mut p = udp(SERVER, 53, CLIENT, 5000);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Drop);
        // A ping to the router in the name of an inside host, from outside.
        let mut p = echo(CLIENT, UP, 64);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Drop);
        assert_eq!(v.counters.dropped, 3);
        // The real reply still comes back.
        let mut p = udp(SERVER, 53, CLIENT, 5000);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
    }

    fn with_flags(mut p: Vec<u8>, flags: u8) -> Vec<u8> {
        p[40 + 13] = flags;
        p[40 + 16..40 + 18].copy_from_slice(&[0, 0]);
        let (src, dst) = (
            Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()),
            Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()),
        );
        let c = wire::checksum_ipv6(src, dst, wire::PROTO_TCP, &p[40..]);
        p[40 + 16..40 + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn tcp_flows_last_as_their_state_allows() {
        let (mut v, mut rules) = setup(4096);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        let t = Timeouts::LINUX;
        // A table's worth of SYNs, each sent once and never answered...
        for port in 0..4095u16 {
            let mut p = syn(CLIENT, 10_000 + port, SERVER, 80);
            assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        }
        // ...and one connection that is answered and established.
        let mut p = syn(CLIENT, 9000, SERVER, 80);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        // The SYN-ACK acknowledges the SYN (sequence number 0).
        let mut p = segment(SERVER, 80, CLIENT, 9000, 0, 1, 0x12);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
        let mut p = with_flags(syn(CLIENT, 9000, SERVER, 80), 0x10);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        // Full: a new flow is refused.
        let mut p = udp(CLIENT, 5000, SERVER, 53);
        assert_eq!(v.process(1000, ins, &mut p, &mut rules), Decision::Drop);
        assert_eq!(v.counters.full, 1);
        // The unanswered SYNs go after 120 s, the connection stays.
        let later = t.tcp_syn_sent + 1;
        let mut p = udp(CLIENT, 5000, SERVER, 53);
        assert_eq!(v.process(later, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        assert_eq!(v.flows(), 2);
        let mut p = with_flags(syn(SERVER, 80, CLIENT, 9000), 0x10);
        assert_eq!(v.process(later, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
        // A reset ends it 10 s later.
        let mut p = with_flags(syn(SERVER, 80, CLIENT, 9000), 0x14);
        assert_eq!(v.process(later, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
        v.expire(later + t.tcp_close + 1);
        let mut p = with_flags(syn(CLIENT, 9000, SERVER, 80), 0x10);
        assert_eq!(v.process(later + t.tcp_close + 1, ins, &mut p, &mut rules), Decision::Drop);
    }

    /// A TCP segment with sequence number `seq`, acknowledgment `ack`,
    /// flags `flags` and a window of 64,000 bytes.
    fn segment(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
        let mut p = syn(src, sport, dst, dport);
        p[40 + 4..40 + 8].copy_from_slice(&seq.to_be_bytes());
        p[40 + 8..40 + 12].copy_from_slice(&ack.to_be_bytes());
        p[40 + 14..40 + 16].copy_from_slice(&64_000u16.to_be_bytes());
        with_flags(p, flags)
    }

    /// An outside host that knows a connection's addresses and ports but
    /// not where its sequence numbers are cannot end its flow with a reset
    /// or a FIN: those are dropped and counted, and the connection goes
    /// on; the real reset still ends it.
    #[test]
    fn blind_resets_and_fins_leave_the_flow_as_it_was() {
        let (mut v, mut rules) = setup(100);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        let t = Timeouts::LINUX;
        let (c, s) = (1_000_000u32, 3_000_000_000u32);
        let mut go = |at: u64, fi: u8, mut p: Vec<u8>| v.process(at, fi, &mut p, &mut rules);
        assert_eq!(go(0, ins, segment(CLIENT, 9000, SERVER, 80, c, 0, 0x02)), Decision::Forward(up, SERVER));
        // Before the SYN is answered, a reset must acknowledge it.
        assert_eq!(go(0, up, segment(SERVER, 80, CLIENT, 9000, 0, c - 7, 0x14)), Decision::Drop);
        assert_eq!(go(0, up, segment(SERVER, 80, CLIENT, 9000, s, c + 1, 0x12)), Decision::Forward(ins, CLIENT));
        assert_eq!(go(0, ins, segment(CLIENT, 9000, SERVER, 80, c + 1, s + 1, 0x10)), Decision::Forward(up, SERVER));
        // Resets and FINs from far outside the window, either way.
        for (fi, p) in [
            (up, segment(SERVER, 80, CLIENT, 9000, s + 1 + 10_000_000, 0, 0x04)),
            (up, segment(SERVER, 80, CLIENT, 9000, s.wrapping_sub(1_000_000), c + 1, 0x11)),
            (ins, segment(CLIENT, 9000, SERVER, 80, c + 500_000_000, s + 1, 0x14)),
        ] {
            assert_eq!(go(1, fi, p), Decision::Drop);
        }
        // The connection is still established: past the time a reset
        // flow would have lasted, it passes.
        let later = 2 * t.tcp_close + 1;
        assert_eq!(
            go(later, up, segment(SERVER, 80, CLIENT, 9000, s + 1, c + 1, 0x10)),
            Decision::Forward(ins, CLIENT)
        );
        // A reset where the connection is passes, and ends the flow soon.
        assert_eq!(
            go(later, up, segment(SERVER, 80, CLIENT, 9000, s + 1, c + 1, 0x14)),
            Decision::Forward(ins, CLIENT)
        );
        assert_eq!(v.counters.out_of_window, 4);
        v.expire(later + t.tcp_close + 1);
        assert_eq!(v.flows(), 0);
        // A segment too short for its header is dropped, not followed.
        let mut p = segment(CLIENT, 9001, SERVER, 80, c, 0, 0x02);
        p[40 + 12] = 0xf0;
        let mut p = with_flags(p, 0x02);
        assert_eq!(v.process(later, ins, &mut p, &mut rules), Decision::Drop);
        assert_eq!(v.flows(), 0);
    }

    #[test]
    fn echoes_hop_limits_errors_and_a_full_table() {
        let (mut v, mut rules) = setup(2);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        // A ping to the router's uplink address, from the server: answered
        // ("allow in on uplink out on local proto icmp").
        let mut p = echo(SERVER, UP, 64);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Forward(up, SERVER));
        let r = wire::parse_ipv6(&p).expect("the reply's checksum holds");
        assert_eq!((r.src, r.dst, r.payload[0]), (UP, SERVER, ECHO_REPLY));
        // Hop limit 1: dropped and counted, and answered from the inside
        // address with a Time Exceeded quoting it.
        let mut p = echo(CLIENT, SERVER, 1);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::HopLimit);
        assert_eq!(v.counters.hop_limit, 1);
        let (e, out, via) = v.time_exceeded(ins, &p).unwrap();
        assert_eq!((out, via), (ins, CLIENT));
        let r = wire::parse_ipv6(&e).expect("the error's checksum holds");
        assert_eq!((r.src, r.dst, r.payload[0], &r.payload[8..]), (IN, CLIENT, 3, &p[..]));
        // No error about an error.
        assert_eq!(v.time_exceeded(ins, &e), None);
        // A new flow the rules deny draws no Time Exceeded, whatever its
        // hop limit: it is denied.
        let mut p = syn(SERVER, 40000, CLIENT, 22);
        p[7] = 1;
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Drop);
        assert_eq!((v.counters.hop_limit, v.counters.denied), (1, 1));
        // Link-local and multicast are not forwarded; no route for a
        // destination without a default route is counted.
        for dst in ["fe80::1", "ff02::1"] {
            let mut p = echo(CLIENT, dst.parse().unwrap(), 64);
            assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Drop);
        }
        assert_eq!(v.counters.dropped, 2);
        // Two flows fill the table; a third is refused.
        for port in [1, 2, 3] {
            let mut p = udp(CLIENT, port, SERVER, 53);
            let want = if port < 3 { Decision::Forward(up, SERVER) } else { Decision::Drop };
            assert_eq!(v.process(0, ins, &mut p, &mut rules), want);
        }
        assert_eq!(v.counters.full, 1);
        // An ICMPv6 error about a known flow comes back to the sender of
        // the packet it quotes; about another flow, or to another address
        // (another host inside), not.
        let other = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x99);
        for (port, to, want) in
            [(1, CLIENT, Decision::Forward(ins, CLIENT)), (9, CLIENT, Decision::Drop), (1, other, Decision::Drop)]
        {
            let quoted = udp(CLIENT, port, SERVER, 53);
            let mut err = vec![1, 4, 0, 0, 0, 0, 0, 0];
            err.extend_from_slice(&quoted);
            let mut p = packet(SERVER, to, 64, wire::PROTO_ICMPV6, err, 2);
            assert_eq!(v.process(0, up, &mut p, &mut rules), want, "port {port} to {to}");
        }
        // Garbage never panics.
        for len in 0..120 {
            let mut p = echo(CLIENT, SERVER, 64);
            p.truncate(len);
            let _ = v.process(0, ins, &mut p, &mut rules);
            let mut e = vec![1, 4, 0, 0, 0, 0, 0, 0];
            e.extend_from_slice(&vec![0x60; len]);
            let mut p = packet(SERVER, CLIENT, 64, wire::PROTO_ICMPV6, e, 2);
            let _ = v.process(0, up, &mut p, &mut rules);
        }
    }

    #[test]
    fn echo_requests_pass_only_the_way_their_flow_started() {
        let (mut v, mut rules) = setup(100);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        let reply = |src, dst| packet(src, dst, 64, wire::PROTO_ICMPV6, vec![ECHO_REPLY, 0, 0, 0, 0x12, 0x34, 0, 1], 2);
        let mut p = echo(CLIENT, SERVER, 64);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        // The server pings the client with the flow's identifier: the
        // rules deny pings in, and the flow is not theirs to pass.
        let mut p = echo(SERVER, CLIENT, 64);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Drop);
        // Nor does the client answer through it.
        let mut p = reply(CLIENT, SERVER);
        assert_eq!(v.process(0, ins, &mut p, &mut rules), Decision::Drop);
        assert_eq!(v.counters.denied, 2);
        // The server's answer comes back.
        let mut p = reply(SERVER, CLIENT);
        assert_eq!(v.process(0, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
    }

    #[test]
    fn flows_from_outside_hold_at_most_half_the_table() {
        let (mut v, _) = setup(10);
        let mut rules = Rules::parse(
            "allow in on uplink proto tcp to any port 80\nallow in on inside\n",
            &[("uplink", Interface(crate::UPLINK)), ("inside", Interface(crate::INSIDE))],
        )
        .unwrap();
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        let t = Timeouts::LINUX;
        // SYNs from outside (a flood, from ever new ports): half the table.
        for port in 0..10u16 {
            let mut p = syn(SERVER, 1000 + port, CLIENT, 80);
            let want = if port < 5 { Decision::Forward(ins, CLIENT) } else { Decision::Drop };
            assert_eq!(v.process(0, up, &mut p, &mut rules), want, "{port}");
        }
        assert_eq!((v.counters.inbound_full, v.counters.full), (5, 0));
        // The inside has the other half.
        for port in 1..=6u16 {
            let mut p = udp(CLIENT, port, SERVER, 53);
            let want = if port <= 5 { Decision::Forward(up, SERVER) } else { Decision::Drop };
            assert_eq!(v.process(1, ins, &mut p, &mut rules), want, "{port}");
        }
        assert_eq!((v.counters.inbound_full, v.counters.full), (5, 1));
        // The unanswered SYNs expire: outside hosts may start flows again.
        let later = t.tcp_syn_sent + 1;
        let mut p = syn(SERVER, 2000, CLIENT, 80);
        assert_eq!(v.process(later, up, &mut p, &mut rules), Decision::Forward(ins, CLIENT));
        assert_eq!(v.flows(), 1);
    }

    /// One host holds at most its share of the table and another still
    /// gets room; a host is an address on the router's own link, and a
    /// /64 behind a gateway; the share comes back as flows expire.
    #[test]
    fn one_host_holds_at_most_its_share() {
        let (mut v, mut rules) = setup_shared(20, 4);
        let (up, ins) = (crate::UPLINK, crate::INSIDE);
        let t = Timeouts::LINUX;
        let tries = |v: &mut V6, rules: &mut Rules, src: &dyn Fn(u16) -> Ipv6Addr, n: u16| {
            (1..=n)
                .filter(|&port| {
                    let mut p = udp(src(port), port, SERVER, 53);
                    v.process(0, ins, &mut p, rules) == Decision::Forward(up, SERVER)
                })
                .count()
        };
        // The client, on the inside link: its share, then refused.
        assert_eq!(tries(&mut v, &mut rules, &|_| CLIENT, 6), 4);
        // Its neighbour on the same /64 is another host.
        assert_eq!(tries(&mut v, &mut rules, &|_| Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x101), 6), 4);
        // Addresses on the link are hosts of their own, each with its
        // share.
        assert_eq!(tries(&mut v, &mut rules, &|port| Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 1, port), 2), 2);
        // Behind a gateway inside, every address of a /64 is one host's.
        let gw = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0xfe);
        v.routes.add(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0), 64, Some(gw), ins).unwrap();
        assert_eq!(tries(&mut v, &mut rules, &|port| Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 1, port), 6), 4);
        assert_eq!((v.counters.host_full, v.counters.full, v.flows(), v.hosts.len()), (6, 0, 14, 5));
        // The client's flows expire (unanswered UDP): it may start again.
        let later = t.udp_unreplied + 1;
        let mut p = udp(CLIENT, 9, SERVER, 53);
        assert_eq!(v.process(later, ins, &mut p, &mut rules), Decision::Forward(up, SERVER));
        assert_eq!((v.flows(), v.hosts.len()), (1, 1));
    }
}
