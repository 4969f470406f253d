//! Connection tracking, NAT and a stateful firewall for IPv4 routers, as
//! mirage-nat and the Qubes mirage firewall are for MirageOS: sans I/O,
//! `no_std` + `alloc`, in memory fixed when it starts.
//!
//! The caller owns the interfaces, the routing table and the clock. It
//! hands each IPv4 packet that arrives (the IP header onward) to
//! [`Nat::process`] with the interface it came in on and the time in
//! milliseconds; the packet is checked, its flow found or started (the
//! firewall decides new flows), and it is rewritten in place (masquerade,
//! port forwards, TTL). The answer is a [`Verdict`]: send it out of an
//! interface, deliver it to the router itself, or drop it, the reason
//! counted in [`Stats`]. Packets the router sends itself go through
//! [`Nat::output`] so that their replies are known. [`Nat::expire`]
//! forgets flows whose time is up ([`Nat::next_expiry`] says when).
//!
//! ```
//! use core::net::{Ipv4Addr, SocketAddrV4};
//! use mirage_nat::{Config, Forward, Interface, Masquerade, Nat, Protocol, Route, Rules, Verdict};
//!
//! let (uplink, inside) = (Interface(0), Interface(1));
//! let rules = Rules::parse(
//!     "allow in on inside                              # inside may go anywhere\n\
//!      allow in on uplink proto tcp to 10.0.0.5 port 80 # the port forward\n",
//!     &[("uplink", uplink), ("inside", inside)],
//! ).unwrap();
//! let mut nat = Nat::new(Config {
//!     masquerade: Some(Masquerade { interface: uplink, address: Ipv4Addr::new(192, 0, 2, 1), ports: (10000, 49151) }),
//!     forwards: vec![Forward { protocol: Protocol::Tcp, port: 8080, to: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 80) }],
//!     rules,
//!     ..Config::default()
//! }).unwrap();
//!
//! // A UDP datagram from 10.0.0.7:5000 to 198.51.100.9:53, TTL 64.
//! let mut packet = [
//!     0x45, 0, 0, 29, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 7, 198, 51, 100, 9,
//!     0x13, 0x88, 0, 53, 0, 9, 0, 0, 0xab,
//! ];
//! let c = mirage_nat::checksum(&packet[..20]);
//! packet[10..12].copy_from_slice(&c.to_be_bytes());
//! let route = |dst: Ipv4Addr| if dst.octets()[0] == 10 { Route::Interface(inside) } else { Route::Interface(uplink) };
//! assert_eq!(nat.process(0, inside, &mut packet, route), Verdict::Forward(uplink));
//! assert_eq!(&packet[12..16], &[192, 0, 2, 1]); // masqueraded
//! assert_eq!(packet[8], 63); // TTL decremented
//! assert_eq!(nat.stats().flows, 1);
//! ```
//!
//! What is bounded: the flow table holds at most [`Config::max_flows`]
//! flows, allocated up front ([`FLOW_BYTES`] bytes each, four 8-byte
//! index slots, and two 8-byte slots counting each host's flows); when it
//! is full, a new flow is refused and counted
//! ([`Reason::TableFull`]) after the flows whose time is up are expired.
//! Flows started from outside (on the masquerade interface) hold at most
//! half of it ([`Reason::InboundFull`]), so that outside hosts never take
//! the inside's room, and the flows one source address started at most
//! [`Config::max_flows_per_host`] (half the table unless given;
//! [`Reason::HostFull`]), so that one host never takes the others';
//! an echo request to the router itself makes no flow.
//! Masquerade hands out each external port (ICMP identifier) of its range
//! to one flow at a time, so a port is used again only after its flow
//! expired. Nothing allocates after [`Nat::new`].
//!
//! What is dropped and counted, never a panic: packets too short for
//! their headers, bad IPv4 header checksums and lengths, IP options,
//! fragments (the ports are only in the first; there is no reassembly),
//! protocols other than TCP, UDP and ICMP, ICMP other than echo and
//! errors, ICMP errors about unknown flows, TCP segments other than a SYN
//! without a flow, TTL exhausted, martian addresses, and sources the
//! routing table would not reach through the interface they came in on
//! (strict reverse-path filtering).
//!
//! TTL: forwarded packets leave with their TTL one less (the header
//! checksum updated); a packet that would leave with TTL 0 is dropped
//! with [`Reason::TtlExceeded`] (once it is known to be allowed: of a
//! known flow, or a new one the rules allow; a new flow the rules deny
//! is [`Reason::Denied`] whatever its TTL, so that it draws no error),
//! and sending the ICMP Time Exceeded is the
//! caller's choice ([`build::icmp_error`] makes it). Send such errors of
//! the router's own directly, not through [`Nat::output`]: they quote a
//! packet as it arrived, which no flow's tuple matches, and `output` would
//! drop them as [`Reason::UnknownIcmpError`]. Packets to or from the
//! router itself keep their TTL.
//!
//! Checksums are updated incrementally (RFC 1624), never recomputed:
//! the cost does not grow with the payload, and a packet that arrived
//! with a bad transport checksum leaves with one, for its receiver to drop.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod build;
mod rules;
mod table;
mod wire;

use alloc::collections::TryReserveError;
use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

pub use rules::{Action, ParseError, RuleInfo, Rules};
pub use table::FLOW_BYTES;
pub use wire::checksum;

use rules::Candidate;
use table::{CLASSES, Class, F_DNAT, F_FIN_ORIG, F_FIN_REPLY, F_REPLIED, F_SNAT, Flow, Hosts, Ports, Table};
use wire::{Delta, IP_HEADER, L4, Tuple, be16, put16, put32};

/// The router itself, as an interface of a flow.
pub(crate) const LOCAL: u8 = u8::MAX;

/// The flow table's size unless configured: 16,384 flows, 1.9 MiB.
pub const DEFAULT_MAX_FLOWS: usize = 16_384;

/// An interface of the router, numbered by the caller from 0 to 254.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interface(pub u8);

/// Where the caller's routing table sends a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Out of this interface.
    Interface(Interface),
    /// To the router itself (one of its addresses, or a broadcast it
    /// listens to).
    Local,
    /// Nowhere: the packet is dropped ([`Reason::NoRoute`]).
    Unreachable,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it (as rewritten) out of this interface.
    Forward(Interface),
    /// Deliver it (as rewritten) to the router's own stack.
    Local,
    /// Drop it; the reason is counted.
    Drop(Reason),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Shorter than its headers say.
    Truncated,
    /// Not IPv4, or a header length or total length that cannot be.
    Malformed,
    /// The IPv4 header checksum is wrong.
    Checksum,
    /// A fragment (more fragments, or an offset): not tracked, no
    /// reassembly.
    Fragment,
    /// IPv4 options, which are not handled.
    Options,
    /// A protocol other than TCP, UDP and ICMP, or ICMP other than echo
    /// and errors.
    Unsupported,
    /// A source or destination no router forwards: loopback, multicast,
    /// broadcast, 0.0.0.0, or the masquerade address from outside.
    Martian,
    /// Its TTL would reach 0 here.
    TtlExceeded,
    /// The routing table has no route for it.
    NoRoute,
    /// The firewall denied its new flow.
    Denied,
    /// Not the first packet of a flow (a TCP segment other than a SYN, an
    /// echo reply), and no flow has it.
    NoFlow,
    /// An ICMP error about a flow the table does not hold.
    UnknownIcmpError,
    /// A flow's packet arrived on an interface the flow does not use
    /// (spoofed).
    WrongInterface,
    /// A TCP reset or FIN whose sequence number lies outside the window of
    /// its connection (a blind attempt to end it, or to shorten its
    /// timeout), or a first reply that does not acknowledge the SYN:
    /// dropped, and the flow left as it was.
    OutOfWindow,
    /// The flow table is full: a new flow refused.
    TableFull,
    /// Flows started from the masquerade interface (from outside) hold
    /// half the table: a new one refused, so that outside hosts cannot
    /// take the room of the inside's own flows.
    InboundFull,
    /// The source address holds its share of the table
    /// ([`Config::max_flows_per_host`]): a new flow of its refused, so
    /// that one host cannot take the room of the others.
    HostFull,
    /// Masquerade has no free port (or ICMP identifier) in its range.
    PortsExhausted,
    /// The flow's translated tuple is already another flow's.
    Conflict,
    /// [`Nat::process`] was given interface 255, which is reserved.
    BadInterface,
}

impl Reason {
    /// Every reason, in the order of [`Stats::dropped`]'s counts.
    pub const ALL: [Reason; 20] = [
        Reason::Truncated,
        Reason::Malformed,
        Reason::Checksum,
        Reason::Fragment,
        Reason::Options,
        Reason::Unsupported,
        Reason::Martian,
        Reason::TtlExceeded,
        Reason::NoRoute,
        Reason::Denied,
        Reason::NoFlow,
        Reason::UnknownIcmpError,
        Reason::WrongInterface,
        Reason::OutOfWindow,
        Reason::TableFull,
        Reason::InboundFull,
        Reason::HostFull,
        Reason::PortsExhausted,
        Reason::Conflict,
        Reason::BadInterface,
    ];

    /// A short name for counters: `truncated`, `table-full`, ….
    pub fn name(self) -> &'static str {
        match self {
            Reason::Truncated => "truncated",
            Reason::Malformed => "malformed",
            Reason::Checksum => "checksum",
            Reason::Fragment => "fragment",
            Reason::Options => "options",
            Reason::Unsupported => "unsupported",
            Reason::Martian => "martian",
            Reason::TtlExceeded => "ttl-exceeded",
            Reason::NoRoute => "no-route",
            Reason::Denied => "denied",
            Reason::NoFlow => "no-flow",
            Reason::UnknownIcmpError => "unknown-icmp-error",
            Reason::WrongInterface => "wrong-interface",
            Reason::OutOfWindow => "out-of-window",
            Reason::TableFull => "table-full",
            Reason::InboundFull => "inbound-full",
            Reason::HostFull => "host-full",
            Reason::PortsExhausted => "ports-exhausted",
            Reason::Conflict => "conflict",
            Reason::BadInterface => "bad-interface",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A transport protocol a port forward names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (echo).
    Icmp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => wire::TCP,
            Protocol::Udp => wire::UDP,
            Protocol::Icmp => wire::ICMP,
        }
    }
}

/// How long a flow lasts without a packet, in milliseconds, by state.
///
/// The defaults are Linux's `nf_conntrack` defaults (net.netfilter.
/// nf_conntrack_*_timeout). TCP's states are followed from the flags seen,
/// without sequence-number window tracking; CLOSE_WAIT and LAST_ACK are
/// folded into `tcp_fin_wait` (one side has sent FIN) and `tcp_time_wait`
/// (both have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A SYN sent, no answer yet (Linux: 120 s).
    pub tcp_syn_sent: u64,
    /// SYN-ACK seen, waiting for the handshake's last ACK (60 s).
    pub tcp_syn_recv: u64,
    /// Established (Linux: 5 days).
    pub tcp_established: u64,
    /// One side has sent FIN (Linux FIN_WAIT: 120 s).
    pub tcp_fin_wait: u64,
    /// Both sides have sent FIN (Linux TIME_WAIT: 120 s).
    pub tcp_time_wait: u64,
    /// Reset (Linux CLOSE: 10 s).
    pub tcp_close: u64,
    /// UDP with no reply yet (30 s).
    pub udp_unreplied: u64,
    /// UDP that has had a reply (Linux "stream": 120 s).
    pub udp_replied: u64,
    /// ICMP echo (30 s).
    pub icmp: u64,
}

impl Timeouts {
    /// Linux's defaults.
    pub const LINUX: Timeouts = Timeouts {
        tcp_syn_sent: 120_000,
        tcp_syn_recv: 60_000,
        tcp_established: 432_000_000,
        tcp_fin_wait: 120_000,
        tcp_time_wait: 120_000,
        tcp_close: 10_000,
        udp_unreplied: 30_000,
        udp_replied: 120_000,
        icmp: 30_000,
    };

    fn of(&self, class: usize) -> u64 {
        [
            self.tcp_syn_sent,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_fin_wait,
            self.tcp_time_wait,
            self.tcp_close,
            self.udp_unreplied,
            self.udp_replied,
            self.icmp,
        ][class]
    }
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::LINUX
    }
}

/// Source NAT: flows from other interfaces leaving by `interface` leave
/// from `address`, with a port (or ICMP echo identifier) of `ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masquerade {
    /// The uplink.
    pub interface: Interface,
    /// The uplink's address.
    pub address: Ipv4Addr,
    /// The external ports and identifiers handed out, inclusive. Keep them
    /// apart from the ports the router's own stack uses on the uplink
    /// (smoltcp's are 49152 to 65535), e.g. 10000 to 49151.
    pub ports: (u16, u16),
}

/// A port forward (destination NAT): flows to the masquerade address and
/// `port` arriving on the masquerade interface go to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The external port.
    pub port: u16,
    /// The inside host and port.
    pub to: SocketAddrV4,
}

/// The engine's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The flow table's size (at most 2^24).
    pub max_flows: usize,
    /// Most flows one source address may have started and hold at once
    /// (`None`: half of `max_flows`), so that one host, inside or out,
    /// cannot take the whole table from the others. The router's own flows
    /// are not counted.
    pub max_flows_per_host: Option<usize>,
    /// How long flows last.
    pub timeouts: Timeouts,
    /// Source NAT, if any.
    pub masquerade: Option<Masquerade>,
    /// Port forwards (need `masquerade`: they use its interface and
    /// address).
    pub forwards: Vec<Forward>,
    /// The firewall.
    pub rules: Rules,
    /// A random number: the key of the flow table's hash, so that peers
    /// cannot choose tuples that collide.
    pub seed: u64,
}

impl Default for Config {
    /// [`DEFAULT_MAX_FLOWS`], Linux's timeouts, no NAT, every flow denied.
    fn default() -> Config {
        Config {
            max_flows: DEFAULT_MAX_FLOWS,
            max_flows_per_host: None,
            timeouts: Timeouts::LINUX,
            masquerade: None,
            forwards: Vec::new(),
            rules: Rules::deny_all(),
            seed: 0x5eed,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_flows` is 0 or above 2^24.
    MaxFlows(usize),
    /// `max_flows_per_host` is 0.
    MaxFlowsPerHost,
    /// The masquerade port range is empty or includes port 0.
    PortRange(u16, u16),
    /// Interface 255 is reserved (the router itself).
    Interface,
    /// A port forward without masquerade, which gives its address.
    ForwardWithoutMasquerade,
    /// A port forward for ICMP: forwards are for TCP and UDP.
    ForwardProtocol,
    /// Two port forwards of one protocol and port.
    ForwardTwice(u16),
    /// The table could not be allocated.
    OutOfMemory,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::MaxFlows(n) => write!(f, "a flow table of {n} flows: give between 1 and {}", table::MAX_FLOWS),
            ConfigError::MaxFlowsPerHost => {
                write!(
                    f,
                    "a share of 0 flows a host would refuse every flow: give 1 or more, or none for half the table"
                )
            }
            ConfigError::PortRange(lo, hi) => {
                write!(f, "masquerade ports {lo}-{hi}: give a range from low to high without port 0")
            }
            ConfigError::Interface => {
                write!(f, "interface 255 is reserved for the router itself: number interfaces 0 to 254")
            }
            ConfigError::ForwardWithoutMasquerade => {
                write!(f, "a port forward needs masquerade, whose interface and address it uses")
            }
            ConfigError::ForwardProtocol => write!(f, "port forwards are for tcp and udp, not icmp"),
            ConfigError::ForwardTwice(p) => {
                write!(f, "port {p} is forwarded twice: forward each protocol and port once")
            }
            ConfigError::OutOfMemory => write!(f, "not enough memory for the flow table: give a smaller max_flows"),
        }
    }
}

impl core::error::Error for ConfigError {}

impl From<TryReserveError> for ConfigError {
    fn from(_: TryReserveError) -> ConfigError {
        ConfigError::OutOfMemory
    }
}

/// Counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Packets sent on by [`Verdict::Forward`].
    pub forwarded: u64,
    /// Packets delivered to the router by [`Verdict::Local`].
    pub local: u64,
    /// Flows in the table now.
    pub flows: usize,
    /// The table's size.
    pub max_flows: usize,
    /// Flows started.
    pub created: u64,
    /// Flows expired (or forgotten by [`Nat::set_masquerade_address`]).
    pub expired: u64,
    dropped: [u64; Reason::ALL.len()],
}

impl Stats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: Reason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Packets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

impl fmt::Display for Stats {
    /// One line: `flows 3/16384 created 10 expired 7 forwarded 120 local 4
    /// dropped 5 (denied 3, no-flow 2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flows {}/{} created {} expired {} forwarded {} local {} dropped {}",
            self.flows,
            self.max_flows,
            self.created,
            self.expired,
            self.forwarded,
            self.local,
            self.dropped_total()
        )?;
        let mut first = true;
        for r in Reason::ALL {
            let n = self.dropped(r);
            if n > 0 {
                write!(f, "{}{} {n}", if first { " (" } else { ", " }, r.name())?;
                first = false;
            }
        }
        if !first {
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Connection tracking, NAT and the firewall of one router.
#[derive(Debug)]
pub struct Nat {
    table: Table,
    /// Masquerade's ports, for TCP, UDP and ICMP identifiers.
    ports: [Ports; 3],
    timeouts: Timeouts,
    masquerade: Option<Masquerade>,
    forwards: Vec<Forward>,
    rules: Rules,
    stats: Stats,
    now: u64,
    /// Flows in the table that started on the masquerade interface.
    inbound: usize,
    /// Flows each source address started (the router's own not counted).
    hosts: Hosts,
    per_host: usize,
}

fn port_index(proto: u8) -> usize {
    match proto {
        wire::TCP => 0,
        wire::UDP => 1,
        _ => 2,
    }
}

fn verdict(out_if: u8) -> Verdict {
    if out_if == LOCAL { Verdict::Local } else { Verdict::Forward(Interface(out_if)) }
}

/// Addresses no packet may come from.
fn bad_source(a: u32) -> bool {
    let o = a >> 24;
    o == 127 || (224..=255).contains(&o)
}

/// Addresses a router does not forward to.
fn bad_forward_destination(a: u32) -> bool {
    let o = a >> 24;
    a == 0 || o == 127 || (224..=255).contains(&o)
}

impl Nat {
    /// Allocates the table and checks the configuration.
    pub fn new(config: Config) -> Result<Nat, ConfigError> {
        if config.max_flows == 0 || config.max_flows > table::MAX_FLOWS {
            return Err(ConfigError::MaxFlows(config.max_flows));
        }
        let (lo, hi) = config.masquerade.map_or((1, 1), |m| m.ports);
        if lo == 0 || lo > hi {
            return Err(ConfigError::PortRange(lo, hi));
        }
        if config.masquerade.is_some_and(|m| m.interface.0 == LOCAL) {
            return Err(ConfigError::Interface);
        }
        let mut ports = [Ports::new(lo, hi)?, Ports::new(lo, hi)?, Ports::new(lo, hi)?];
        for (i, f) in config.forwards.iter().enumerate() {
            if config.masquerade.is_none() {
                return Err(ConfigError::ForwardWithoutMasquerade);
            }
            if f.protocol == Protocol::Icmp {
                return Err(ConfigError::ForwardProtocol);
            }
            if config.forwards[..i].iter().any(|g| g.protocol == f.protocol && g.port == f.port) {
                return Err(ConfigError::ForwardTwice(f.port));
            }
            // Masquerade never hands out a forwarded port.
            ports[port_index(f.protocol.number())].hold(f.port);
        }
        if config.max_flows_per_host == Some(0) {
            return Err(ConfigError::MaxFlowsPerHost);
        }
        let table = Table::new(config.max_flows, config.seed)?;
        let hosts = Hosts::new(config.max_flows, config.seed)?;
        Ok(Nat {
            stats: Stats {
                forwarded: 0,
                local: 0,
                flows: 0,
                max_flows: table.capacity(),
                created: 0,
                expired: 0,
                dropped: [0; Reason::ALL.len()],
            },
            table,
            ports,
            timeouts: config.timeouts,
            masquerade: config.masquerade,
            forwards: config.forwards,
            rules: config.rules,
            now: 0,
            inbound: 0,
            hosts,
            per_host: config.max_flows_per_host.unwrap_or((config.max_flows / 2).max(1)),
        })
    }

    /// Handles a packet (the IPv4 header onward; bytes past its total
    /// length are ignored) that arrived on `iface` at `now_ms`; `route` is
    /// asked where a new flow's destination goes (after a port forward has
    /// rewritten it). The packet is rewritten in place; its length never
    /// changes.
    pub fn process<R: FnMut(Ipv4Addr) -> Route>(
        &mut self,
        now_ms: u64,
        iface: Interface,
        packet: &mut [u8],
        route: R,
    ) -> Verdict {
        self.process_partial(now_ms, iface, packet, false, route)
    }

    /// As [`Nat::process`], for a packet whose TCP or UDP checksum field
    /// holds only the pseudo-header's sum, if `partial` (a host's
    /// `CHECKSUM_PARTIAL`, which it completes when the packet leaves: the
    /// router's interfaces with forward offload). The field is then updated
    /// for changed addresses without the complements, as Linux's
    /// `inet_proto_csum_replace4` does for such a packet, and not for
    /// changed ports: the host's sum takes them in.
    pub fn process_partial<R: FnMut(Ipv4Addr) -> Route>(
        &mut self,
        now_ms: u64,
        iface: Interface,
        packet: &mut [u8],
        partial: bool,
        mut route: R,
    ) -> Verdict {
        let v = if iface.0 == LOCAL {
            Err(Reason::BadInterface)
        } else {
            self.handle(now_ms, iface.0, packet, partial, &mut route)
        };
        self.count(v)
    }

    /// Handles a packet the router itself sends out of `out`: its flow is
    /// tracked so that replies come back ([`Verdict::Local`]), and the
    /// firewall decides new flows as from interface `local`. The verdict
    /// is [`Verdict::Forward`] with the interface to use, or a drop.
    pub fn output(&mut self, now_ms: u64, out: Interface, packet: &mut [u8]) -> Verdict {
        let v = if out.0 == LOCAL {
            Err(Reason::BadInterface)
        } else {
            self.handle(now_ms, LOCAL, packet, false, &mut |_| Route::Interface(out))
        };
        self.count(v)
    }

    /// Forgets the flows whose time is up at `now_ms`, freeing their
    /// records and ports; returns how many. Costs what it frees.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let now = self.clock(now_ms);
        let mut n = 0;
        for c in 0..CLASSES {
            let timeout = self.timeouts.of(c);
            while let Some(f) = self.table.oldest(c) {
                if self.table.get(f).last.saturating_add(timeout) > now {
                    break;
                }
                self.release(f);
                n += 1;
            }
        }
        self.stats.expired += n as u64;
        self.stats.flows = self.table.len();
        n
    }

    /// When the next flow expires, if any: call [`Nat::expire`] then.
    pub fn next_expiry(&self) -> Option<u64> {
        (0..CLASSES)
            .filter_map(|c| self.table.oldest(c).map(|f| self.table.get(f).last.saturating_add(self.timeouts.of(c))))
            .min()
    }

    /// Changes the masquerade address (the uplink got a new lease): the
    /// flows translated to the old one are forgotten.
    pub fn set_masquerade_address(&mut self, address: Ipv4Addr) {
        let Some(m) = &mut self.masquerade else { return };
        if m.address == address {
            return;
        }
        m.address = address;
        // Walked in place, each flow's successor taken before it goes: a
        // list of them would be an allocation of up to 64 KiB in the
        // router's loop, with no way to answer its failure.
        for class in 0..CLASSES {
            let mut next = self.table.oldest(class);
            while let Some(f) = next {
                next = self.table.next_in_class(f);
                if self.table.get(f).flags & (F_SNAT | F_DNAT) != 0 {
                    self.release(f);
                    self.stats.expired += 1;
                }
            }
        }
        self.stats.flows = self.table.len();
    }

    /// Most flows one source address may hold ([`Config::max_flows_per_host`]).
    pub fn max_flows_per_host(&self) -> usize {
        self.per_host
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The firewall's rules and their hit counts.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The same rules, to decide IPv6 flows with ([`Rules::decide_ipv6`]):
    /// a router that routes IPv6 beside the NAT keeps one set of rules and
    /// counters.
    pub fn rules_mut(&mut self) -> &mut Rules {
        &mut self.rules
    }

    /// Bytes held by the flow table, the count of each host's flows and the
    /// port maps, all allocated by
    /// [`Nat::new`].
    pub fn memory(&self) -> usize {
        self.table.bytes() + self.hosts.bytes() + 3 * 1024 * 8
    }

    fn clock(&mut self, now: u64) -> u64 {
        // A clock that steps back is read as standing still.
        self.now = self.now.max(now);
        self.now
    }

    fn count(&mut self, v: Result<Verdict, Reason>) -> Verdict {
        let v = v.unwrap_or_else(Verdict::Drop);
        match v {
            Verdict::Forward(_) => self.stats.forwarded += 1,
            Verdict::Local => self.stats.local += 1,
            Verdict::Drop(r) => self.stats.dropped[r.index()] += 1,
        }
        self.stats.flows = self.table.len();
        v
    }

    /// The flow and direction of `t`, unless it is past its time (then it
    /// is expired now, whether or not [`Nat::expire`] has been called).
    fn find(&mut self, t: &Tuple, now: u64) -> Option<(u32, usize)> {
        let (f, d) = self.table.find(t)?;
        let fl = self.table.get(f);
        if fl.last.saturating_add(self.timeouts.of(fl.class as usize)) <= now {
            self.release(f);
            self.stats.expired += 1;
            return None;
        }
        Some((f, d))
    }

    fn release(&mut self, f: u32) {
        let fl: Flow = self.table.remove(f);
        if self.masquerade.is_some_and(|m| m.interface.0 == fl.iface[0]) {
            self.inbound -= 1;
        }
        if fl.iface[0] != LOCAL {
            self.hosts.sub(fl.key[0].src);
        }
        if fl.flags & F_SNAT != 0 {
            // The external port is the reply's destination port (for ICMP
            // echo, the reply's identifier, kept there too).
            self.ports[port_index(fl.key[1].proto)].release(fl.key[1].dport);
        }
    }

    fn handle(
        &mut self,
        now: u64,
        in_if: u8,
        p: &mut [u8],
        partial: bool,
        route: &mut dyn FnMut(Ipv4Addr) -> Route,
    ) -> Result<Verdict, Reason> {
        let a = Arrival { now: self.clock(now), in_if, ip: wire::ip(p)?, partial };
        match wire::l4(p, &a.ip)? {
            L4::Flow { tuple, tcp_flags } => match self.find(&tuple, a.now) {
                Some((f, d)) => self.known(&a, p, f, d, tcp_flags),
                None => self.start(&a, p, tuple, tcp_flags, route),
            },
            L4::IcmpError { inner } => self.icmp_error(&a, p, inner),
        }
    }

    /// A packet of flow `f` in direction `d`.
    fn known(&mut self, a: &Arrival, p: &mut [u8], f: u32, d: usize, tcp_flags: u8) -> Result<Verdict, Reason> {
        let fl = *self.table.get(f);
        // Requests go the way the flow started, replies back: an echo of
        // identifier 0 has the same tuple either way.
        if a.ip.proto == wire::ICMP && (p[IP_HEADER] == wire::ICMP_ECHO_REQUEST) != (d == 0) {
            return Err(Reason::NoFlow);
        }
        let (out_if, forwarding) = a.leaving(&fl, d)?;
        let mut noted = true;
        if a.ip.proto == wire::TCP {
            let s = wire::tcp_seq(p, &a.ip);
            let seen = d == 0 || fl.flags & F_REPLIED != 0;
            // A connection over (or reset, or never answered) may start
            // again on its tuple.
            let reopen = matches!(fl.class, Class::TimeWait | Class::Close) || fl.flags & F_REPLIED == 0;
            match self.table.get_mut(f).tcp.judge(d, &s, seen, reopen) {
                Judged::Refuse => return Err(Reason::OutOfWindow),
                Judged::Pass => noted = false,
                Judged::Note => {}
            }
        }
        translate(p, &a.ip, &fl.key[d], &fl.key[1 - d].inverse(), forwarding, a.partial);
        if !noted {
            // Passed on, changing nothing: no state, no time renewed.
            return Ok(verdict(out_if));
        }
        let mut flags = fl.flags;
        let class = advance(fl.class, &mut flags, d, a.ip.proto, tcp_flags);
        self.table.get_mut(f).flags = flags;
        self.table.touch(f, class, a.now);
        Ok(verdict(out_if))
    }

    /// The first packet of a new flow.
    fn start(
        &mut self,
        a: &Arrival,
        p: &mut [u8],
        t: Tuple,
        tcp_flags: u8,
        route: &mut dyn FnMut(Ipv4Addr) -> Route,
    ) -> Result<Verdict, Reason> {
        let (now, in_if, ip) = (a.now, a.in_if, &a.ip);
        // The router's answer to an echo request to itself: such requests
        // are not tracked (below), and the answer needs no translation.
        let local_echo_reply = in_if == LOCAL && t.proto == wire::ICMP && p[IP_HEADER] == wire::ICMP_ECHO_REPLY;
        let first = match t.proto {
            wire::TCP => tcp_flags & (wire::TCP_SYN | wire::TCP_ACK | wire::TCP_RST | wire::TCP_FIN) == wire::TCP_SYN,
            wire::ICMP => p[IP_HEADER] == wire::ICMP_ECHO_REQUEST || local_echo_reply,
            _ => true,
        };
        if !first {
            return Err(Reason::NoFlow);
        }
        let masq = self.masquerade;
        if bad_source(t.src) || (in_if != LOCAL && masq.is_some_and(|m| u32::from(m.address) == t.src)) {
            return Err(Reason::Martian);
        }
        // A source the routing table would not reach through the interface
        // it came in on is spoofed (strict reverse-path filtering, as
        // Linux's rp_filter=1): an inside address from the uplink would
        // reach a forwarded port as a host of the inside network, or have
        // the router send it an ICMP error.
        if in_if != LOCAL && t.src != 0 && !matches!(route(Ipv4Addr::from(t.src)), Route::Interface(i) if i.0 == in_if)
        {
            return Err(Reason::Martian);
        }
        let mut out = t;
        let mut flags = 0;
        if masq.is_some_and(|m| m.interface.0 == in_if && u32::from(m.address) == t.dst)
            && let Some(fw) = self.forwards.iter().find(|fw| fw.protocol.number() == t.proto && fw.port == t.dport)
        {
            out.dst = u32::from(*fw.to.ip());
            out.dport = fw.to.port();
            flags |= F_DNAT;
        }
        let out_if = match route(Ipv4Addr::from(out.dst)) {
            Route::Interface(i) if i.0 == LOCAL => return Err(Reason::BadInterface),
            Route::Interface(i) => i.0,
            Route::Local => LOCAL,
            Route::Unreachable => return Err(Reason::NoRoute),
        };
        let forwarding = in_if != LOCAL && out_if != LOCAL;
        if out_if != LOCAL && (t.src == 0 || bad_forward_destination(out.dst)) {
            return Err(Reason::Martian);
        }
        let candidate = Candidate {
            in_if,
            out_if,
            proto: t.proto,
            src: t.src,
            sport: if t.proto == wire::ICMP { 0 } else { t.sport },
            dst: out.dst,
            dport: out.dport,
        };
        if local_echo_reply {
            return Ok(verdict(out_if));
        }
        if self.rules.decide(&candidate) == Action::Deny {
            return Err(Reason::Denied);
        }
        // Only now, so that traffic the rules deny draws no Time Exceeded
        // (nor shows a traceroute the router).
        if forwarding && ip.ttl <= 1 {
            return Err(Reason::TtlExceeded);
        }
        // An echo request to the router itself is answered at once: a flow
        // for each would let any host allowed to ping fill the table with
        // made-up identifiers.
        if out_if == LOCAL && t.proto == wire::ICMP {
            return Ok(Verdict::Local);
        }
        let inbound = masq.is_some_and(|m| m.interface.0 == in_if);
        if inbound && self.inbound >= self.table.capacity() / 2 {
            self.expire(now);
            if self.inbound >= self.table.capacity() / 2 {
                return Err(Reason::InboundFull);
            }
        }
        // A host's own share before the table's: a host at its share is
        // told so even when the table is full too.
        if in_if != LOCAL && self.hosts.count(t.src) as usize >= self.per_host {
            self.expire(now);
            if self.hosts.count(t.src) as usize >= self.per_host {
                return Err(Reason::HostFull);
            }
        }
        if self.table.is_full() {
            self.expire(now);
            if self.table.is_full() {
                return Err(Reason::TableFull);
            }
        }
        if let Some(m) = masq.filter(|m| forwarding && m.interface.0 == out_if && m.interface.0 != in_if)
            && flags & F_DNAT == 0
        {
            out.src = u32::from(m.address);
            out.sport = self.pick_port(out)?;
            flags |= F_SNAT;
        }
        let key = [t, out.inverse()];
        if key[1] == key[0] || self.table.find(&key[1]).is_some() {
            if flags & F_SNAT != 0 {
                self.ports[port_index(t.proto)].release(out.sport);
            }
            return Err(Reason::Conflict);
        }
        let f = self.table.insert(key, [in_if, out_if], first_class(t.proto), flags, now);
        if t.proto == wire::TCP {
            self.table.get_mut(f).tcp.judge(0, &wire::tcp_seq(p, ip), true, true);
        }
        self.inbound += usize::from(inbound);
        if in_if != LOCAL {
            self.hosts.add(t.src);
        }
        self.stats.created += 1;
        translate(p, ip, &t, &out, forwarding, a.partial);
        Ok(verdict(out_if))
    }

    /// An external port for `out` (whose source is the masquerade
    /// address), held for the new flow: the inside port if it is free,
    /// else the next free one of the range whose reply tuple no flow has.
    fn pick_port(&mut self, mut out: Tuple) -> Result<u16, Reason> {
        let ports = &mut self.ports[port_index(out.proto)];
        // A port forwarded or held by the router's own flows is skipped;
        // after a few such clashes the range is taken as exhausted rather
        // than searched further for this packet.
        let mut want = out.sport;
        for _ in 0..16 {
            let p = ports.pick(want).ok_or(Reason::PortsExhausted)?;
            out.sport = p;
            if self.table.find(&out.inverse()).is_none() {
                ports.hold(p);
                return Ok(p);
            }
            want = 0;
        }
        Err(Reason::PortsExhausted)
    }

    /// An ICMP error quoting a packet at `at`.
    fn icmp_error(&mut self, a: &Arrival, p: &mut [u8], at: usize) -> Result<Verdict, Reason> {
        let ip = &a.ip;
        let inner = wire::inner(p, ip, at)?;
        // The quoted packet went the other way: the error travels in the
        // direction whose tuple is the quote's turned around.
        let (f, d) = self.find(&inner.tuple.inverse(), a.now).ok_or(Reason::UnknownIcmpError)?;
        let fl = *self.table.get(f);
        if fl.key[d].dst != ip.dst {
            return Err(Reason::UnknownIcmpError);
        }
        // The checks a new flow's first packet gets: an error's sender is
        // never loopback, multicast, or our own address from outside.
        let masq = self.masquerade;
        if bad_source(ip.src) || (a.in_if != LOCAL && masq.is_some_and(|m| u32::from(m.address) == ip.src)) {
            return Err(Reason::Martian);
        }
        let (out_if, forwarding) = a.leaving(&fl, d)?;
        // Packets of direction d leave as `to`; the quote becomes the
        // packet of the other direction as it was before translation.
        let to = fl.key[1 - d].inverse();
        let quote = fl.key[1 - d];
        let mut icmp = Delta::default();
        let mut iip = Delta::default();
        let mut il4 = Delta::default();
        let pseudo = matches!(inner.tuple.proto, wire::TCP | wire::UDP);
        for (off, old, new) in [(at + 12, inner.tuple.src, quote.src), (at + 16, inner.tuple.dst, quote.dst)] {
            if old != new {
                iip.addr(old, new);
                icmp.addr(old, new);
                if pseudo {
                    il4.addr(old, new);
                }
                put32(p, off, new);
            }
        }
        let ports: [(usize, u16); 2] = if pseudo {
            [(inner.l4, quote.sport), (inner.l4 + 2, quote.dport)]
        } else {
            // The quoted echo's identifier (its type says which field of
            // the tuple holds it).
            let id = if p[inner.l4] == wire::ICMP_ECHO_REQUEST { quote.sport } else { quote.dport };
            [(inner.l4 + 4, id), (inner.l4 + 4, id)]
        };
        for (off, new) in ports {
            let old = be16(p, off);
            if old != new {
                il4.word(old, new);
                icmp.word(old, new);
                put16(p, off, new);
            }
        }
        if inner.l4_checksum {
            let (old, new) =
                il4.apply_at(p, inner.l4 + wire::checksum_offset(inner.tuple.proto), inner.tuple.proto == wire::UDP);
            icmp.word(old, new);
        }
        let (old, new) = iip.apply_at(p, at + 10, false);
        icmp.word(old, new);
        icmp.apply_at(p, IP_HEADER + 2, false);
        // The outer header: to the flow's endpoint; and where the flow's
        // packets of this direction leave from another source (masquerade,
        // a port forward's reply), so does the error, whoever on the way
        // sent it, as Linux's NAT does: no address from behind the NAT
        // leaves it, and none is left for a sender to forge.
        let src = if fl.key[d].src != to.src { to.src } else { ip.src };
        let mut outer = Delta::default();
        rewrite_addrs(p, ip, src, to.dst, &mut outer, None);
        if forwarding {
            decrement_ttl(p, &mut outer);
        }
        outer.apply_at(p, 10, false);
        Ok(verdict(out_if))
    }
}

/// A packet being handled: when, where it came in, its IP header.
struct Arrival {
    now: u64,
    in_if: u8,
    ip: wire::Ip,
    /// The transport checksum field holds a partial sum
    /// ([`Nat::process_partial`]).
    partial: bool,
}

impl Arrival {
    /// Where a packet of `flow`'s direction `d` leaves, and whether that
    /// is forwarding (between two interfaces, so its TTL goes down); an
    /// error if it came in elsewhere than the flow's packets come in, or
    /// its TTL is spent.
    fn leaving(&self, flow: &Flow, d: usize) -> Result<(u8, bool), Reason> {
        if flow.iface[d] != self.in_if {
            return Err(Reason::WrongInterface);
        }
        let out_if = flow.iface[1 - d];
        let forwarding = self.in_if != LOCAL && out_if != LOCAL;
        if forwarding && self.ip.ttl <= 1 {
            return Err(Reason::TtlExceeded);
        }
        Ok((out_if, forwarding))
    }
}

/// Writes the IP source and destination, noting the changes in `ip` (the
/// header checksum) and `l4` (a pseudo-header checksum), if any.
fn rewrite_addrs(p: &mut [u8], hdr: &wire::Ip, src: u32, dst: u32, ip: &mut Delta, mut l4: Option<&mut Delta>) {
    for (off, old, new) in [(12, hdr.src, src), (16, hdr.dst, dst)] {
        if old != new {
            ip.addr(old, new);
            if let Some(l4) = l4.as_deref_mut() {
                l4.addr(old, new);
            }
            put32(p, off, new);
        }
    }
}

fn decrement_ttl(p: &mut [u8], ip: &mut Delta) {
    let old = be16(p, 8);
    p[8] -= 1;
    ip.word(old, be16(p, 8));
}

/// Rewrites a flow's packet from tuple `from` to `to`, and its TTL; with
/// `partial`, its transport checksum field holds a partial sum, which only
/// the pseudo-header's changes (the addresses) go into.
fn translate(p: &mut [u8], hdr: &wire::Ip, from: &Tuple, to: &Tuple, forwarding: bool, partial: bool) {
    let mut ip = Delta::default();
    let mut l4 = Delta::default();
    let l = IP_HEADER;
    match hdr.proto {
        wire::TCP | wire::UDP => {
            rewrite_addrs(p, hdr, to.src, to.dst, &mut ip, Some(&mut l4));
            let mut ports = Delta::default();
            for (off, old, new) in [(l, from.sport, to.sport), (l + 2, from.dport, to.dport)] {
                if old != new {
                    ports.word(old, new);
                    put16(p, off, new);
                }
            }
            let at = l + wire::checksum_offset(hdr.proto);
            if partial {
                l4.apply_partial_at(p, at);
            } else {
                l4.add(&ports);
                l4.apply_at(p, at, hdr.proto == wire::UDP);
            }
        }
        _ => {
            rewrite_addrs(p, hdr, to.src, to.dst, &mut ip, None);
            let old = be16(p, l + 4);
            let new = if p[l] == wire::ICMP_ECHO_REQUEST { to.sport } else { to.dport };
            if old != new {
                l4.word(old, new);
                put16(p, l + 4, new);
            }
            // ICMP's sum has no pseudo-header: a partial one is the
            // host's to take the identifier into.
            if !partial {
                l4.apply_at(p, l + 2, false);
            }
        }
    }
    if forwarding {
        decrement_ttl(p, &mut ip);
    }
    ip.apply_at(p, 10, false);
}

/// A new flow's timeout class, by its protocol.
fn first_class(proto: u8) -> Class {
    match proto {
        wire::TCP => Class::SynSent,
        wire::UDP => Class::UdpUnreplied,
        _ => Class::Icmp,
    }
}

/// A flow's state as the NAT follows it (TCP's from the flags seen,
/// UDP's from whether a reply came), for a flow table kept elsewhere (the
/// router's IPv6 flows, which are not translated): the same states, and
/// the same [`Timeouts`], as the NAT's own flows.
/// A TCP flow's resets and FINs are judged by the window of its
/// connection, as the NAT's are ([`Reason::OutOfWindow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowState {
    class: Class,
    flags: u8,
    tcp: TcpWindow,
}

/// Why [`FlowState`] refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A TCP segment too short for its header, or with a wrong data
    /// offset.
    Malformed,
    /// A TCP reset or FIN outside the window of its connection.
    OutOfWindow,
}

impl FlowState {
    /// A flow of IP protocol `proto` (6 TCP, 17 UDP; any other is an
    /// echo) whose first packet, with `l4` its transport header and
    /// payload, has gone.
    pub fn new(proto: u8, l4: &[u8]) -> Result<FlowState, Refused> {
        let mut tcp = TcpWindow::NEW;
        if proto == wire::TCP {
            tcp.judge(0, &wire::tcp_segment(l4).ok_or(Refused::Malformed)?, true, true);
        }
        Ok(FlowState { class: first_class(proto), flags: 0, tcp })
    }

    /// Follows a later packet of the flow, `l4` its transport header and
    /// payload; `reply` when it goes the other way from the first. A TCP
    /// segment that is malformed, a first reply that answers the SYN with
    /// other numbers, or a reset or FIN outside its connection's window, is
    /// refused, and the state left as it was: drop the packet. `Ok(false)`:
    /// a segment that passes but is not the connection's as the flow knows
    /// it (a blind sender's, or an answer about another connection), which
    /// changes nothing, its flow's time not renewed; `Ok(true)`: noted, the
    /// flow's time renewed.
    pub fn advance(&mut self, reply: bool, proto: u8, l4: &[u8]) -> Result<bool, Refused> {
        let d = usize::from(reply);
        let mut tcp_flags = 0;
        if proto == wire::TCP {
            let s = wire::tcp_segment(l4).ok_or(Refused::Malformed)?;
            let seen = d == 0 || self.flags & F_REPLIED != 0;
            let reopen = matches!(self.class, Class::TimeWait | Class::Close) || self.flags & F_REPLIED == 0;
            match self.tcp.judge(d, &s, seen, reopen) {
                Judged::Refuse => return Err(Refused::OutOfWindow),
                Judged::Pass => return Ok(false),
                Judged::Note => {}
            }
            tcp_flags = s.flags;
        }
        self.class = advance(self.class, &mut self.flags, d, proto, tcp_flags);
        Ok(true)
    }

    /// How long the flow lasts from its last packet, in milliseconds.
    pub fn timeout(&self, t: &Timeouts) -> u64 {
        t.of(self.class as usize)
    }
}

/// The least window a reset or FIN is judged against: a connection whose
/// windows were never seen larger is still given 64 KiB.
const LEAST_WINDOW: u32 = 65_535;

/// A window scale not asked for.
const NO_SCALE: u8 = 0xff;

/// What a flow keeps of its TCP connection's sequence space, each
/// direction (0 the way the flow started): where its sequence numbers end
/// (the furthest seen), the largest window it offered the other, and the
/// window scale its SYN asked for. Each segment is judged by it
/// ([`TcpWindow::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpWindow {
    seq: [u32; 2],
    win: [u32; 2],
    shift: [u8; 2],
    /// Before the first reply was noted, one passed that acknowledged
    /// other numbers than the SYN's (a challenge ACK): its number is in
    /// `seq[1]`, where the reset that answers it will be.
    challenged: bool,
}

/// What a TCP segment does to its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Dropped, the flow left as it was.
    Refuse,
    /// Passed on, noting nothing, its flags moving no state and its
    /// flow's time not renewed: its numbers are not where the flow has its
    /// connection's (a blind sender's, an endpoint's answer about another
    /// connection); the endpoint judges it.
    Pass,
    /// Noted, and its flags move the flow's state.
    Note,
}

impl TcpWindow {
    pub(crate) const NEW: TcpWindow = TcpWindow { seq: [0; 2], win: [0; 2], shift: [NO_SCALE; 2], challenged: false };

    /// Judges TCP segment `s` of direction `d` (`seen`: not its
    /// direction's first, or of a connection answered; `reopen`: a new
    /// flow, one whose connection is over, or one not yet answered, where
    /// a SYN of the original direction without ACK starts both directions
    /// again), noting what it says where it is the connection's.
    ///
    /// * The first reply must acknowledge the SYN (with or without the data
    ///   it carried, TCP Fast Open's: up to 64 KiB past it): a SYN-ACK, or the reset
    ///   of a refused connection; or be a SYN itself (a simultaneous open,
    ///   as hole punching makes). Another SYN or reset is refused: a blind
    ///   sender must guess the SYN's sequence number. A bare ACK passes,
    ///   noting nothing: the server holds an older connection on the tuple
    ///   (a challenge ACK, RFC 5961, or TIME_WAIT's answer), and the
    ///   client's reset at the number it acknowledges, which clears that
    ///   connection, passes too.
    /// * Later, a segment within the window ([`TcpWindow::in_window`]) is
    ///   noted. A reset or FIN outside it is refused (a blind attempt to
    ///   end the flow or cut its time); anything else outside it passes,
    ///   noting nothing: were the flow to follow any segment's numbers, a
    ///   blind sender's bare ACKs a quarter of the space apart would walk
    ///   them onto a reset of its own, and its ACKs would move a
    ///   half-open flow to the established one's five days.
    pub(crate) fn judge(&mut self, d: usize, s: &wire::TcpSeq, seen: bool, reopen: bool) -> Judged {
        let (syn, ack, rst) =
            (s.flags & wire::TCP_SYN != 0, s.flags & wire::TCP_ACK != 0, s.flags & wire::TCP_RST != 0);
        if !seen {
            // `seq[0]` is the SYN's number plus one, whatever data the SYN
            // carried (TCP Fast Open's): the answer acknowledges that, or
            // the data too.
            let acks_syn = ack && s.ack.wrapping_sub(self.seq[0]) <= LEAST_WINDOW;
            if (syn || rst) && acks_syn || syn && !ack && !rst {
                self.challenged = false;
                self.win[d] = 0;
                self.track(d, s, false, false);
                return Judged::Note;
            }
            if syn || rst || !ack {
                return Judged::Refuse;
            }
            (self.seq[1], self.challenged) = (s.ack, true);
            return Judged::Pass;
        }
        let opens = reopen && syn && d == 0 && !ack;
        if opens || self.in_window(d, s.seq) {
            self.track(d, s, true, opens);
            return Judged::Note;
        }
        if d == 0 && rst && self.challenged && s.seq == self.seq[1] {
            return Judged::Pass;
        }
        if rst || s.flags & wire::TCP_FIN != 0 { Judged::Refuse } else { Judged::Pass }
    }

    /// Notes what TCP segment `s` of direction `d` says: its window scale
    /// if a SYN, where its sequence numbers end, the window it offers;
    /// `opens` starts both directions again.
    fn track(&mut self, d: usize, s: &wire::TcpSeq, seen: bool, opens: bool) {
        let syn = s.flags & wire::TCP_SYN != 0;
        if syn {
            self.shift[d] = s.wscale.unwrap_or(NO_SCALE);
        }
        // Windows are scaled once both SYNs asked for it, and never a SYN's.
        let scaled = !syn && self.shift[0] != NO_SCALE && self.shift[1] != NO_SCALE;
        let win = u32::from(s.window) << if scaled { self.shift[d] } else { 0 };
        if opens {
            // Where the SYN's data would start: the answer may decline
            // the data (Fast Open refused), and the client sends it again.
            let end = s.seq.wrapping_add(1);
            (self.seq[0], self.win, self.shift[1], self.challenged) = (end, [win, 0], NO_SCALE, false);
            return;
        }
        if !seen || (s.end.wrapping_sub(self.seq[d]) as i32) > 0 {
            self.seq[d] = s.end;
        }
        self.win[d] = self.win[d].max(win);
    }

    /// Whether sequence number `seq` of direction `d` lies within the
    /// window the other side offered (at least [`LEAST_WINDOW`]) of where
    /// `d`'s sequence numbers end, either side (a retransmission lies
    /// behind). A sender's segments lie there: it sends no further than
    /// the window from what was acknowledged, which is behind that end.
    fn in_window(&self, d: usize, seq: u32) -> bool {
        let w = self.win[1 - d].max(LEAST_WINDOW);
        u64::from(seq.wrapping_sub(self.seq[d].wrapping_sub(w))) <= 2 * u64::from(w)
    }
}

/// The timeout class after a packet of direction `d` with TCP flags
/// `tcp`, noting FINs and replies in `flags`.
fn advance(class: Class, flags: &mut u8, d: usize, proto: u8, tcp: u8) -> Class {
    if d == 1 {
        *flags |= F_REPLIED;
    }
    match proto {
        wire::UDP => {
            if *flags & F_REPLIED != 0 {
                Class::UdpReplied
            } else {
                Class::UdpUnreplied
            }
        }
        wire::TCP => {
            let syn = tcp & wire::TCP_SYN != 0;
            let ack = tcp & wire::TCP_ACK != 0;
            if tcp & wire::TCP_RST != 0 {
                return Class::Close;
            }
            if matches!(class, Class::TimeWait | Class::Close) {
                // A new SYN on the same tuple opens a new connection.
                if d == 0 && syn && !ack {
                    *flags &= !(F_FIN_ORIG | F_FIN_REPLY | F_REPLIED);
                    return Class::SynSent;
                }
                return class;
            }
            if tcp & wire::TCP_FIN != 0 {
                *flags |= if d == 0 { F_FIN_ORIG } else { F_FIN_REPLY };
            }
            if *flags & (F_FIN_ORIG | F_FIN_REPLY) == F_FIN_ORIG | F_FIN_REPLY {
                return Class::TimeWait;
            }
            if *flags & (F_FIN_ORIG | F_FIN_REPLY) != 0 {
                return Class::FinWait;
            }
            match class {
                Class::SynSent if d == 1 && syn && ack => Class::SynRecv,
                Class::SynRecv if d == 0 && ack && !syn => Class::Established,
                c => c,
            }
        }
        _ => Class::Icmp,
    }
}
