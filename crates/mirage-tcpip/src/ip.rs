//! The IP layer on its own: whole IPv4 and IPv6 packets in and out of one
//! network interface, ARP and NDP done beneath ([`mirage_devices::ip::Ip`]),
//! for routers, NATs and firewalls that handle packets rather than
//! connections.
//!
//! ```no_run
//! # async fn f(net: impl mirage_devices::net::Net) {
//! use mirage_devices::ip::{Ip, NextHop};
//! let config = mirage_tcpip::IpConfig::new(("10.0.0.2".parse().unwrap(), 24), None);
//! let mut ip = mirage_tcpip::IpLayer::new(net, config).unwrap();
//! loop {
//!     let _ = ip.readable().await;
//!     while let Ok(Some(len)) = ip.try_recv(|packet| packet.len()) {
//!         // route it: ip.send(NextHop::Ip(next_hop), len, |buf| ...)
//! #       let _ = len;
//!     }
//! }
//! # }
//! ```
//!
//! * **Checked before it is handed up.** Every frame goes through
//!   [`crate::wire::parse`] (lengths, the IPv4 header checksum, and the
//!   ICMP, UDP or TCP checksum of a packet that is not a fragment); frames
//!   not sent to the interface's hardware address or to broadcast, and
//!   malformed ones, are dropped and counted (`IpStats::rx_dropped`).
//!   Ethernet padding is cut off: the packet handed up is as long as its
//!   IP header says. Fragments are handed up as they are (the caller
//!   decides).
//! * **IPv6** is carried when the interface has an IPv6 address
//!   ([`IpConfig::with_ipv6`], `--ipv6=ADDR/N`); without one, IPv6 frames
//!   are dropped and counted. Packets are checked as IPv4's are (lengths,
//!   extension headers, the ICMPv6, UDP or TCP checksum). Frames to the
//!   interface's solicited-node multicast address (`33:33:ff:…`) are taken
//!   for neighbour discovery only.
//! * **ARP** answers requests for the interface's address and resolves
//!   next hops, under the stack's neighbour-cache policy (ARCHITECTURE.md,
//!   "The neighbour-cache policy"): only solicited replies create or
//!   change an entry, requests aimed at this host may create one, nothing
//!   unsolicited changes a live one; refusals are counted. The cache holds
//!   256 neighbours, each for 60 s from its last confirmation; a neighbour
//!   in use is asked for again in its entry's last 10 s, so that
//!   its traffic never waits for it to be resolved anew.
//! * **NDP** (RFC 4861) is done the same way, under the same policy and
//!   cache: a neighbour solicitation for the interface's IPv6 address,
//!   to it or to its solicited-node multicast address, is answered with a
//!   solicited advertisement; a next hop is resolved by a solicitation to
//!   its solicited-node address, and only a solicited advertisement (one
//!   for an address asked in the last 3 s) creates or changes an entry.
//!   Neighbour discovery messages are the layer's own and never handed
//!   up (router solicitations and advertisements and redirects included:
//!   the layer configures nothing from them). A malformed one (RFC 4861,
//!   7.1: a hop limit other than 255, a code other than 0, a multicast
//!   target, a bad option, a solicitation from the unspecified address
//!   with a link-layer option) is dropped and counted
//!   (`IpStats::nd_refused`), as is one the policy refuses. Solicitations
//!   for other targets cost nothing: they are dropped without state.
//! * **DHCP.** An interface configured by DHCP ([`IpConfig::dhcp`],
//!   `--ipv4=dhcp`) runs the client of [`crate::dhcpc`] beneath: until it
//!   holds a lease its IPv4 address is `0.0.0.0/0` and IPv4 next hops are
//!   unreachable; a lease sets the address, prefix, gateway (its router)
//!   and name servers ([`IpInfo`]), renewed at T1, rebound at T2, dropped
//!   when it expires or a server refuses it. DHCP replies (UDP from port
//!   67 to 68) are the layer's own and never handed up; those that do
//!   not answer this client are dropped and counted
//!   (`IpStats::dhcp_dropped`). A static gateway is ignored then.
//! * **Bounded waiting.** A packet for a neighbour not yet resolved waits:
//!   at most [`PER_NEIGHBOR`] packets each for at most [`MAX_UNRESOLVED`]
//!   neighbours, and [`HELD_BYTES`] in all, copied into buffers allocated
//!   fallibly. The request is
//!   sent again after a second, three times in all; then the packets are
//!   dropped and counted. A peer making the layer ARP (or solicit) for many
//!   addresses (a scan through a router) costs that much memory and no
//!   more. IPv4 and IPv6 neighbours share these bounds.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mirage_devices::ip::{Error, Ip, IpInfo, IpStats, NextHop};
use mirage_devices::net::{MacAddr, Net, PartialChecksum, RxMeta};
use mirage_runtime::args::{Arg, Args, Ipv4Cidr, Ipv6Cidr};
use mirage_runtime::time::{Duration, Instant, now};
use smoltcp::wire::NdiscRepr;

use crate::device::buffer;
use crate::neighbor::{Kind, Neighbors};
use crate::wire::{self, Packet};

/// Packets held for one unresolved neighbour; more are dropped. A router
/// forwarding a burst to a host it has not yet met must not lose the
/// burst's head to the ARP round trip (Linux holds about a hundred).
pub const PER_NEIGHBOR: usize = 32;
/// Neighbours being resolved at once; packets for more are dropped.
pub const MAX_UNRESOLVED: usize = 64;
/// Bytes held for all unresolved neighbours together; packets past this
/// are dropped.
pub const HELD_BYTES: usize = 256 * 1024;
/// Time between ARP requests (or neighbour solicitations) for a neighbour
/// that does not answer.
const RETRY: Duration = Duration::from_secs(1);
/// ARP requests sent before the waiting packets are dropped.
const TRIES: u8 = 3;
/// How long before a neighbour's entry ends a packet to it has the layer
/// ask for it again (every 3 s, as an answer counts as asked for that
/// long): three tries while the entry still serves.
const REFRESH: Duration = Duration::from_secs(10);
/// How often expired neighbours are forgotten.
const EXPIRY: Duration = Duration::from_secs(10);

/// Why the layer could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpError {
    /// The interface's MAC address is not a unicast address.
    BadMac,
    /// The address is not a usable unicast address, or the prefix is
    /// longer than 32.
    BadAddress,
    /// The gateway is not on the interface's subnet, or is its own address.
    BadGateway,
    /// The IPv6 address is unspecified, multicast or loopback.
    BadIpv6Address,
    /// The IPv6 gateway is neither on the interface's IPv6 prefix nor
    /// link-local, or is its own address, or there is no IPv6 address.
    BadIpv6Gateway,
}

impl core::fmt::Display for IpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            IpError::BadMac => "the interface's MAC address is not unicast",
            IpError::BadAddress => "the IPv4 address is not a usable unicast address with a prefix of at most 32",
            IpError::BadGateway => "the gateway is not another address of the interface's subnet",
            IpError::BadIpv6Address => "the IPv6 address is not a usable unicast address",
            IpError::BadIpv6Gateway => {
                "the IPv6 gateway is not another address of the interface's IPv6 prefix or a link-local one (or the interface has no IPv6 address)"
            }
        })
    }
}

/// How an IP-layer interface is configured: its address, and the
/// gateway the unikernel's routing table may take as its default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpConfig {
    /// IPv4 address and prefix length.
    pub ipv4: (Ipv4Addr, u8),
    /// A gateway on the interface's link.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 address and prefix length, if the interface carries IPv6.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// An IPv6 gateway on the interface's link.
    pub gateway6: Option<Ipv6Addr>,
    /// Whether the IPv4 address comes from a DHCP server (then `ipv4`
    /// and `gateway` are not used).
    pub dhcp: bool,
}

/// The value of `--ipv4` for an IP-layer interface: an address and
/// prefix, or `dhcp` (or empty, as the stack's `--ipv4`) for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Setting {
    /// A static address.
    Static(Ipv4Cidr),
    /// A lease from a DHCP server.
    Dhcp,
}

impl mirage_runtime::args::FromArg for Ipv4Setting {
    const TYPE: &'static str = "IPV4/N|dhcp";
    fn from_arg(s: &str) -> Result<Self, alloc::string::String> {
        match s {
            "" | "dhcp" => Ok(Ipv4Setting::Dhcp),
            _ => Ipv4Cidr::from_arg(s).map(Ipv4Setting::Static).map_err(|e| alloc::format!("{e}, or dhcp")),
        }
    }
}

impl IpConfig {
    /// A configuration, IPv4 only.
    pub fn new(ipv4: (Ipv4Addr, u8), gateway: Option<Ipv4Addr>) -> IpConfig {
        IpConfig { ipv4, gateway, ipv6: None, gateway6: None, dhcp: false }
    }

    /// An interface whose IPv4 address, gateway and name servers come from
    /// a DHCP server.
    pub fn dhcp() -> IpConfig {
        IpConfig { dhcp: true, ..IpConfig::new((Ipv4Addr::UNSPECIFIED, 0), None) }
    }

    /// The same, with an IPv6 address and prefix and an IPv6 gateway.
    pub fn with_ipv6(mut self, ipv6: Option<(Ipv6Addr, u8)>, gateway6: Option<Ipv6Addr>) -> IpConfig {
        self.ipv6 = ipv6;
        self.gateway6 = gateway6;
        self
    }

    /// The boot arguments that configure an IP-layer interface: `--ipv4`
    /// and `--ipv4-gateway`, with these defaults (an empty gateway: none),
    /// and `--ipv6` and `--ipv6-gateway`, empty by default (no IPv6).
    pub fn args(default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        alloc::vec![
            Arg::new::<Ipv4Setting>(
                "ipv4",
                Some(default_ipv4),
                "IPv4 address and prefix length of the interface, or dhcp for a lease."
            ),
            Arg::new::<Option<Ipv4Addr>>(
                "ipv4-gateway",
                Some(default_gateway),
                "IPv4 gateway on the interface's link (not used with DHCP)."
            ),
            Arg::new::<Option<Ipv6Cidr>>(
                "ipv6",
                Some(""),
                "IPv6 address and prefix length of the interface (empty: no IPv6)."
            ),
            Arg::new::<Option<Ipv6Addr>>("ipv6-gateway", Some(""), "IPv6 gateway on the interface's link."),
        ]
    }

    /// The arguments of [`IpConfig::args`] for one of several devices:
    /// `--PREFIX-ipv4`, `--PREFIX-ipv4-gateway`, `--PREFIX-ipv6`,
    /// `--PREFIX-ipv6-gateway`.
    pub fn args_prefixed(prefix: &str, default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        IpConfig::args(default_ipv4, default_gateway).into_iter().map(|a| a.prefixed(prefix)).collect()
    }

    /// The configuration the arguments of [`IpConfig::args`] give.
    pub fn from_args(args: &Args) -> IpConfig {
        IpConfig::from_named(args, |n| n.into())
    }

    /// The configuration the arguments of [`IpConfig::args_prefixed`] give.
    pub fn from_args_prefixed(args: &Args, prefix: &str) -> IpConfig {
        IpConfig::from_named(args, |n| alloc::format!("{prefix}-{n}"))
    }

    fn from_named(args: &Args, name: impl Fn(&str) -> alloc::string::String) -> IpConfig {
        let c6: Option<Ipv6Cidr> = args.get(&name("ipv6"));
        let v4 = match args.get(&name("ipv4")) {
            Ipv4Setting::Static(c) => IpConfig::new((c.addr, c.prefix), args.get(&name("ipv4-gateway"))),
            Ipv4Setting::Dhcp => IpConfig::dhcp(),
        };
        v4.with_ipv6(c6.map(|c| (c.addr, c.prefix)), args.get(&name("ipv6-gateway")))
    }
}

/// A neighbour being resolved, and what waits for it.
#[derive(Debug)]
struct Unresolved {
    ip: IpAddr,
    packets: VecDeque<Vec<u8>>,
    /// When the next request goes, and how many went.
    retry: Instant,
    tries: u8,
}

/// A neighbour discovery message that passed RFC 4861's checks.
#[derive(Debug, Clone, Copy)]
struct Nd {
    /// A solicitation (else an advertisement).
    solicit: bool,
    src: Ipv6Addr,
    target: Ipv6Addr,
    /// The link-layer address option: source's in a solicitation,
    /// target's in an advertisement.
    lladdr: Option<[u8; 6]>,
    /// The frame's source hardware address.
    eth_src: [u8; 6],
}

/// What a received frame was.
enum Received<R> {
    Packet(R),
    Arp(wire::Arp),
    Nd(Nd),
    /// A DHCP reply to the client (`None`: malformed).
    Dhcp(Option<crate::dhcpc::Reply>),
    /// A neighbour discovery message dropped: malformed, or not one the
    /// layer takes.
    NdRefused,
    Dropped,
}

/// ICMPv6 types of neighbour discovery (RFC 4861): router solicitation
/// to redirect.
const ND_TYPES: core::ops::RangeInclusive<u8> = 133..=137;
const ND_SOLICIT: u8 = 135;
const ND_ADVERT: u8 = 136;
/// The advertisement's flags: solicited, override.
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;

/// The solicited-node multicast address of `a` (RFC 4291, 2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([0xff02, 0, 0, 0, 0, 1, 0xff00 | o[13] as u16, u16::from_be_bytes([o[14], o[15]])])
}

/// The hardware address an IPv6 multicast address maps to (RFC 2464, 7).
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// Checks a received neighbour discovery message (its checksum already
/// checked by `wire::parse`): `None` for one to drop.
fn nd_check(ip: &wire::Ipv6<'_>, icmp: &[u8], eth_src: [u8; 6]) -> Option<Nd> {
    // RFC 4861, 7.1.1 and 7.1.2: a hop limit of 255 proves the message
    // was not forwarded; no extension headers in between for these.
    if ip.hop_limit != 255 || ip.next_header != wire::PROTO_ICMPV6 || icmp.get(1) != Some(&0) {
        return None;
    }
    let solicit = match icmp[0] {
        ND_SOLICIT => true,
        ND_ADVERT => false,
        _ => return None,
    };
    let (target, lladdr) = match crate::neighbor::ndisc(icmp)? {
        NdiscRepr::NeighborSolicit { target_addr, lladdr } if solicit => (target_addr, lladdr),
        NdiscRepr::NeighborAdvert { target_addr, lladdr, flags } if !solicit => {
            // A solicited advertisement is never sent to a multicast
            // address.
            if ip.dst.is_multicast() && flags.contains(smoltcp::wire::NdiscNeighborFlags::SOLICITED) {
                return None;
            }
            (target_addr, lladdr)
        }
        _ => return None,
    };
    let lladdr = match lladdr {
        Some(ll) => Some(<[u8; 6]>::try_from(ll.as_bytes()).ok()?),
        None => None,
    };
    if target.is_multicast() || ip.src.is_multicast() {
        return None;
    }
    // Duplicate address detection: from the unspecified address, to a
    // solicited-node address, without a link-layer option.
    if ip.src.is_unspecified() && (!solicit || lladdr.is_some() || ip.dst != solicited_node(target)) {
        return None;
    }
    Some(Nd { solicit, src: ip.src, target, lladdr, eth_src })
}

/// An IP layer over a network interface: see the module documentation.
pub struct IpLayer<N> {
    net: N,
    info: IpInfo,
    neighbors: Neighbors,
    unresolved: Vec<Unresolved>,
    /// Bytes of the packets in `unresolved`.
    held: usize,
    stats: IpStats,
    next_expiry: Instant,
    /// The DHCP client, for an interface configured by DHCP; whether it
    /// has been seeded with the clock yet.
    dhcp: Option<crate::dhcpc::Client>,
    dhcp_seeded: bool,
    /// Whether forward offload was granted ([`Ip::forward_offload`]): the
    /// largest frame the interface sends as a segment for the host to cut,
    /// 0 if not.
    offload: usize,
}

impl<N> core::fmt::Debug for IpLayer<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IpLayer").field("info", &self.info).field("stats", &self.stats).finish()
    }
}

fn broadcast(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a) | u32::MAX.checked_shr(prefix as u32).unwrap_or(0))
}

impl<N: Net> IpLayer<N> {
    /// The layer on `net` configured with `config`.
    pub fn new(net: N, config: IpConfig) -> Result<IpLayer<N>, IpError> {
        let ipv4 = config.ipv4;
        let info = net.info();
        if !crate::neighbor::unicast(info.mac.0) {
            return Err(IpError::BadMac);
        }
        let (a, p) = ipv4;
        let gateway = if config.dhcp { None } else { config.gateway };
        if !config.dhcp && (p > 32 || a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()) {
            return Err(IpError::BadAddress);
        }
        if gateway.is_some_and(|g| g == a || !IpInfo::new(info.mac, info.mtu, ipv4).on_link(g)) {
            return Err(IpError::BadGateway);
        }
        if let Some((a6, p6)) = config.ipv6
            && (p6 > 128 || a6.is_unspecified() || a6.is_multicast() || a6.is_loopback())
        {
            return Err(IpError::BadIpv6Address);
        }
        let mut with6 =
            IpInfo::new(info.mac, info.mtu, ipv4).with_gateway(gateway).with_ipv6(config.ipv6, config.gateway6);
        with6.dhcp = config.dhcp;
        if let Some(g) = config.gateway6
            && (config.ipv6.is_none_or(|(a6, _)| a6 == g) || g.is_multicast() || !with6.on_link6(g))
        {
            return Err(IpError::BadIpv6Gateway);
        }
        // The policy's tables are keyed with SipHash: the key need not be
        // secret for a bounded table whose entries only neighbours make,
        // but differs per interface.
        let mac = info.mac.0;
        // (The layer is made before the runtime runs, as the other
        // devices are: it reads no clock here.)
        let key = u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], p, 0]) ^ u32::from(a) as u64;
        Ok(IpLayer {
            net,
            info: with6,
            neighbors: Neighbors::new((key, key.rotate_left(32))),
            unresolved: Vec::new(),
            held: 0,
            stats: IpStats::default(),
            next_expiry: Instant(0),
            dhcp: config.dhcp.then(|| crate::dhcpc::Client::new(mac, key)),
            dhcp_seeded: false,
            offload: 0,
        })
    }

    /// The interface beneath.
    pub fn net(&self) -> &N {
        &self.net
    }

    fn own(&self) -> Ipv4Addr {
        self.info.ipv4.0
    }

    fn own6(&self) -> Option<Ipv6Addr> {
        self.info.ipv6.map(|(a, _)| a)
    }

    /// Sends a neighbour solicitation for `target` (to its solicited-node
    /// address), or an advertisement for our address to `to_mac`/`to_ip`.
    fn nd(&mut self, solicit: bool, to_mac: [u8; 6], to_ip: Ipv6Addr, target: Ipv6Addr) {
        let Some(own) = self.own6() else { return };
        let mac = self.info.mac.0;
        let (dst_mac, dst) = if solicit {
            let group = solicited_node(target);
            (multicast_mac(group), group)
        } else {
            (to_mac, to_ip)
        };
        let mut frame = [0u8; 14 + 40 + 32];
        frame[0..6].copy_from_slice(&dst_mac);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&wire::ETHERTYPE_IPV6.to_be_bytes());
        let ip = &mut frame[14..];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&32u16.to_be_bytes());
        ip[6] = wire::PROTO_ICMPV6;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&own.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        let icmp = &mut ip[40..];
        icmp[0] = if solicit { ND_SOLICIT } else { ND_ADVERT };
        if !solicit {
            icmp[4] = NA_SOLICITED | NA_OVERRIDE;
        }
        icmp[8..24].copy_from_slice(&target.octets());
        // The source (solicitation) or target (advertisement) link-layer
        // address option.
        icmp[24] = if solicit { 1 } else { 2 };
        icmp[25] = 1;
        icmp[26..32].copy_from_slice(&mac);
        let c = wire::checksum_ipv6(own, dst, wire::PROTO_ICMPV6, icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        if solicit {
            self.neighbors.outgoing(&frame, now());
        }
        if self.net.send(frame.len(), |buf| buf.copy_from_slice(&frame)).is_err() {
            self.stats.tx_dropped += 1;
        }
    }

    /// Asks for `ip`'s hardware address.
    fn solicit(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.arp(1, [0; 6], a),
            IpAddr::V6(a) => self.nd(true, [0; 6], Ipv6Addr::UNSPECIFIED, a),
        }
    }

    /// Handles a neighbour discovery message that passed the checks.
    fn nd_in(&mut self, nd: Nd, t: Instant) {
        let Some(own) = self.own6() else { return };
        if nd.solicit {
            if nd.target != own || nd.src.is_unspecified() {
                // For another host: nothing to do, and no state kept. Or
                // another host checking whether our address is free: it
                // is not, but this layer does not defend it (RFC 4862's
                // reply would go to all nodes); nothing is learnt.
                self.stats.nd_refused += 1;
                return;
            }
            // The sender is learnt from its option; a unicast solicitation
            // may come without one (RFC 4861, 7.2.4): answered to the
            // frame's source, nothing learnt.
            if let Some(mac) = nd.lladdr
                && !self.neighbors.judge(IpAddr::V6(nd.src), mac, Kind::Request, t)
            {
                self.stats.nd_refused += 1;
                return;
            }
            self.stats.nd_in += 1;
            let to = nd.lladdr.unwrap_or(nd.eth_src);
            if !crate::neighbor::unicast(to) {
                self.stats.nd_refused += 1;
                return;
            }
            self.nd(false, to, nd.src, own);
            if let Some(mac) = nd.lladdr {
                self.release(IpAddr::V6(nd.src), mac);
            }
            return;
        }
        // An advertisement tells where its target is; without the option
        // it tells nothing this layer uses.
        let Some(mac) = nd.lladdr else {
            self.stats.nd_refused += 1;
            return;
        };
        if nd.target == own || !self.neighbors.judge(IpAddr::V6(nd.target), mac, Kind::Reply, t) {
            self.stats.nd_refused += 1;
            return;
        }
        self.stats.nd_in += 1;
        self.release(IpAddr::V6(nd.target), mac);
    }

    /// Sends whatever waited for `ip`, now known to be at `mac`.
    fn release(&mut self, ip: IpAddr, mac: [u8; 6]) {
        if let Some(i) = self.unresolved.iter().position(|u| u.ip == ip) {
            let u = self.unresolved.swap_remove(i);
            self.held -= u.packets.iter().map(Vec::len).sum::<usize>();
            for p in u.packets {
                let _ = self.frame(mac, p.len(), |buf| buf.copy_from_slice(&p));
            }
        }
    }

    /// Sends an ARP packet: a request for `target`, or a reply to
    /// `to_mac`/`to_ip`.
    fn arp(&mut self, op: u16, to_mac: [u8; 6], to_ip: Ipv4Addr) {
        let (mac, own) = (self.info.mac.0, self.own());
        let dst = if op == 1 { [0xff; 6] } else { to_mac };
        let target_mac = if op == 1 { [0; 6] } else { to_mac };
        let mut frame = [0u8; 42];
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&wire::ETHERTYPE_ARP.to_be_bytes());
        frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        frame[22..28].copy_from_slice(&mac);
        frame[28..32].copy_from_slice(&own.octets());
        frame[32..38].copy_from_slice(&target_mac);
        frame[38..42].copy_from_slice(&to_ip.octets());
        if op == 1 {
            self.neighbors.outgoing(&frame, now());
        }
        if self.net.send(frame.len(), |buf| buf.copy_from_slice(&frame)).is_err() {
            self.stats.tx_dropped += 1;
        }
    }

    /// Sends `packet` (already written) to `mac`, with the EtherType of
    /// the IP version it says.
    fn frame(&mut self, mac: [u8; 6], len: usize, write: impl FnOnce(&mut [u8])) -> Result<(), Error> {
        self.frame_partial(mac, len, |p| {
            write(p);
            None
        })
    }

    /// As [`IpLayer::frame`], where `write` may leave a checksum for the
    /// host (its `start` counted from the IP header).
    fn frame_partial(
        &mut self,
        mac: [u8; 6],
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Option<PartialChecksum>,
    ) -> Result<(), Error> {
        let src = self.info.mac.0;
        let sent = self.net.send_partial(14 + len, |buf| {
            let partial = write(&mut buf[14..]);
            eth_header(buf, mac, src);
            ((), partial.map(|p| PartialChecksum { start: p.start + 14, ..p }))
        });
        self.sent(sent)
    }

    /// Refuses, and counts, a packet of `len` bytes longer than the MTU
    /// that is not a segment the host cuts (where it does).
    fn check_len(&mut self, len: usize) -> Result<(), Error> {
        if len > self.info.mtu as usize && 14 + len > self.offload {
            self.stats.tx_dropped += 1;
            return Err(Error::TooLarge);
        }
        Ok(())
    }

    /// Counts a frame sent, or not, and gives the IP layer's error.
    fn sent(&mut self, sent: Result<(), mirage_devices::net::Error>) -> Result<(), Error> {
        match sent {
            Ok(()) => {
                self.stats.tx_packets += 1;
                Ok(())
            }
            Err(e) => {
                self.stats.tx_dropped += 1;
                Err(match e {
                    mirage_devices::net::Error::TooLarge => Error::TooLarge,
                    mirage_devices::net::Error::Disconnected => Error::Disconnected,
                    mirage_devices::net::Error::Io => Error::Io,
                    _ => Error::WouldBlock,
                })
            }
        }
    }

    /// Handles an ARP packet that passed the checks.
    fn arp_in(&mut self, arp: wire::Arp, t: Instant) {
        if self.own().is_unspecified() || arp.target_ip != self.own() || arp.sender_ip == self.own() {
            // Not aimed at this host (gratuitous ARP among them): the
            // policy lets it change nothing.
            return;
        }
        let kind = if arp.op == 1 { Kind::Request } else { Kind::Reply };
        if !(1..=2).contains(&arp.op) || !self.neighbors.judge(IpAddr::V4(arp.sender_ip), arp.sender_mac, kind, t) {
            self.stats.arp_refused += 1;
            return;
        }
        self.stats.arp_in += 1;
        if arp.op == 1 {
            self.arp(2, arp.sender_mac, arp.sender_ip);
        }
        // Whatever waited for this neighbour goes now.
        self.release(IpAddr::V4(arp.sender_ip), arp.sender_mac);
    }

    /// Asks again for neighbours that did not answer, drops what waited
    /// for those that never did, and forgets expired neighbours.
    fn maintain(&mut self, t: Instant) {
        let mut i = 0;
        while i < self.unresolved.len() {
            let u = &mut self.unresolved[i];
            if t < u.retry {
                i += 1;
                continue;
            }
            if u.tries >= TRIES {
                let u = self.unresolved.swap_remove(i);
                self.held -= u.packets.iter().map(Vec::len).sum::<usize>();
                self.stats.tx_dropped += u.packets.len() as u64;
                continue;
            }
            u.tries += 1;
            u.retry = t + RETRY;
            let ip = u.ip;
            self.solicit(ip);
            i += 1;
        }
        if t >= self.next_expiry {
            self.next_expiry = t + EXPIRY;
            self.neighbors.expire(t);
        }
        if let Some(c) = &mut self.dhcp {
            if !self.dhcp_seeded {
                // Transaction IDs differ between boots too.
                c.mix(t.as_nanos());
                self.dhcp_seeded = true;
            }
            let out = c.poll(t);
            self.dhcp_out(out);
        }
    }

    /// Sends what the DHCP client asked to, and applies what it learnt.
    fn dhcp_out(&mut self, (message, event): (Option<crate::dhcpc::Message>, crate::dhcpc::Event)) {
        use crate::dhcpc::Event;
        match event {
            Event::None => {}
            Event::Bound(l) => {
                self.info.ipv4 = (l.addr, l.prefix);
                self.info.gateway = l.router;
                self.info.dns = l.dns;
            }
            Event::Lost => {
                self.info.ipv4 = (Ipv4Addr::UNSPECIFIED, 0);
                self.info.gateway = None;
                self.info.dns = [None; 3];
            }
        }
        if let Some(c) = &self.dhcp {
            self.stats.dhcp_acks = c.acks;
            self.stats.dhcp_dropped = c.dropped;
        }
        let Some(m) = message else { return };
        let len = 28 + m.payload.len();
        let write = |buf: &mut [u8]| {
            let _ = wire::write_udp_ipv4(buf, m.src, 68, m.dst, 67, &m.payload);
        };
        // A failed send is counted; the client sends again.
        let _ = if m.dst.is_broadcast() {
            self.send(NextHop::Broadcast, len, write)
        } else {
            // Renewing: to the server, through the gateway if it is off
            // the link (a relay's).
            let hop = match self.info.gateway {
                Some(g) if !self.info.on_link(m.dst) => g,
                _ => m.dst,
            };
            self.send(NextHop::Ip(IpAddr::V4(hop)), len, write)
        };
    }

    /// The earliest time the layer has work of its own.
    fn deadline(&self) -> Option<Instant> {
        let dhcp = self.dhcp.as_ref().map(|c| c.deadline());
        self.unresolved.iter().map(|u| u.retry).chain(dhcp).min()
    }

    /// As [`IpLayer::hold`], for a packet that may leave its checksum to
    /// the host: it is completed now (held packets go out plain), and one
    /// too long to go out plain is dropped.
    fn hold_partial<R>(
        &mut self,
        to: IpAddr,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>),
    ) -> Result<R, Error> {
        if len > self.info.mtu as usize {
            self.stats.tx_dropped += 1;
            return Err(Error::TooLarge);
        }
        self.hold(to, len, mirage_devices::net::completing(f))
    }

    /// Holds a packet for `to` while it is resolved.
    fn hold<R>(&mut self, to: IpAddr, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        let t = now();
        let i = match self.unresolved.iter().position(|u| u.ip == to) {
            Some(i) => i,
            None => {
                if self.unresolved.len() >= MAX_UNRESOLVED || self.unresolved.try_reserve(1).is_err() {
                    self.stats.tx_dropped += 1;
                    return Err(Error::WouldBlock);
                }
                self.unresolved.push(Unresolved { ip: to, packets: VecDeque::new(), retry: t, tries: 0 });
                self.unresolved.len() - 1
            }
        };
        let u = &mut self.unresolved[i];
        let room = u.packets.len() < PER_NEIGHBOR
            && self.held.saturating_add(len) <= HELD_BYTES
            && u.packets.try_reserve(1).is_ok();
        let Some(mut p) = buffer(len).filter(|_| room) else {
            self.stats.tx_dropped += 1;
            return Err(Error::WouldBlock);
        };
        let r = f(&mut p);
        self.held += p.len();
        u.packets.push_back(p);
        // A new neighbour is asked for at once.
        self.maintain(t);
        Ok(r)
    }
}

impl<N: Net> Ip for IpLayer<N> {
    fn info(&self) -> IpInfo {
        self.info
    }

    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, Error> {
        self.try_recv_meta(|p, _| f(p))
    }

    fn try_recv_meta<R>(&mut self, f: impl FnOnce(&mut [u8], RxMeta) -> R) -> Result<Option<R>, Error> {
        self.try_recv_framed(|frame, at, meta| f(&mut frame[at..], meta))
    }

    fn try_recv_framed<R>(&mut self, f: impl FnOnce(&mut [u8], usize, RxMeta) -> R) -> Result<Option<R>, Error> {
        let t = now();
        if self.deadline().is_some_and(|d| t >= d) || t >= self.next_expiry {
            self.maintain(t);
        }
        let mut f = Some(f);
        let mac = self.info.mac.0;
        let own6 = self.own6();
        let dhcp = self.dhcp.is_some();
        // Our solicited-node group's hardware address, taken for
        // neighbour discovery only.
        let group = own6.map(|a| multicast_mac(solicited_node(a)));
        loop {
            let got = self.net.try_recv_meta(|frame, meta| {
                // What the host vouches for is not checked again (a partial
                // sum is no checksum at all); lengths and the IPv4 header's
                // sum still are.
                let Ok((eth, packet)) = wire::parse_vouched(frame, meta.checksum_valid) else {
                    return Received::Dropped;
                };
                let to_us = eth.dst == mac;
                let to_group = group == Some(eth.dst);
                if !to_us && !to_group && eth.dst != [0xff; 6] {
                    return Received::Dropped;
                }
                match packet {
                    Packet::Arp(arp) if !to_group => Received::Arp(arp),
                    Packet::Ipv4(p)
                        if dhcp
                            && p.protocol == wire::PROTO_UDP
                            && !p.fragment
                            && p.payload.get(0..4) == Some(&[0, 67, 0, 68]) =>
                    {
                        // Lengths and checksum were checked: the UDP length
                        // is 8 or more and within the payload, whose bytes
                        // past it (the link's padding) are not the message's.
                        let end = wire::be16(p.payload, 4) as usize;
                        Received::Dhcp(crate::dhcpc::Reply::parse(p.payload.get(8..end).unwrap_or_default()))
                    }
                    Packet::Ipv4(p) if !to_group => {
                        let len = p.header_len + p.payload.len();
                        match f.take() {
                            Some(f) => Received::Packet(f(&mut frame[..14 + len], 14, meta)),
                            None => Received::Dropped,
                        }
                    }
                    Packet::Ipv6(p) if own6.is_some() => {
                        let (upper, data, fragment) = wire::ipv6_upper_layer(&p);
                        if upper == Some(wire::PROTO_ICMPV6)
                            && !fragment
                            && data.first().is_some_and(|t| ND_TYPES.contains(t))
                        {
                            return match nd_check(&p, data, eth.src) {
                                Some(nd) => Received::Nd(nd),
                                None => Received::NdRefused,
                            };
                        }
                        // Ethernet broadcast is not IPv6's; the group is
                        // for neighbour discovery.
                        if !to_us {
                            return Received::Dropped;
                        }
                        let len = 40 + p.payload.len();
                        match f.take() {
                            Some(f) => Received::Packet(f(&mut frame[..14 + len], 14, meta)),
                            None => Received::Dropped,
                        }
                    }
                    _ => Received::Dropped,
                }
            });
            match got {
                Ok(None) => return Ok(None),
                Ok(Some(Received::Packet(r))) => {
                    self.stats.rx_packets += 1;
                    return Ok(Some(r));
                }
                Ok(Some(Received::Arp(arp))) => self.arp_in(arp, t),
                Ok(Some(Received::Nd(nd))) => self.nd_in(nd, t),
                Ok(Some(Received::NdRefused)) => self.stats.nd_refused += 1,
                Ok(Some(Received::Dhcp(reply))) => {
                    if let Some(c) = &mut self.dhcp {
                        let out = match reply {
                            Some(r) => c.input(&r, t),
                            None => {
                                c.dropped += 1;
                                (None, crate::dhcpc::Event::None)
                            }
                        };
                        self.dhcp_out(out);
                    }
                }
                Ok(Some(Received::Dropped)) => self.stats.rx_dropped += 1,
                Err(e) => {
                    return Err(match e {
                        mirage_devices::net::Error::Disconnected => Error::Disconnected,
                        _ => Error::Io,
                    });
                }
            }
        }
    }

    async fn readable(&mut self) -> Result<(), Error> {
        let deadline = self.deadline();
        let ready = match deadline {
            None => self.net.readable().await,
            Some(d) => match mirage_runtime::select(self.net.readable(), mirage_runtime::time::sleep_until(d)).await {
                mirage_runtime::Either::Left(r) => r,
                mirage_runtime::Either::Right(()) => Ok(()),
            },
        };
        ready.map_err(|e| match e {
            mirage_devices::net::Error::Disconnected => Error::Disconnected,
            _ => Error::Io,
        })
    }

    fn send<R>(&mut self, to: NextHop, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
        self.send_partial(to, len, |p| (f(p), None))
    }

    fn forward_offload(&mut self) -> bool {
        if self.offload != 0 {
            return true;
        }
        // Both ways or neither: a host that hands over 64 KiB segments and
        // partial sums must take them back, or the router would have to
        // cut and sum them itself.
        let segments = self.net.segmentation_offload();
        if !self.net.checksum_offload() || segments <= self.info.mtu as usize + 14 {
            return false;
        }
        if self.net.receive_offload() == 0 {
            return false;
        }
        self.offload = segments;
        true
    }

    fn send_partial<R>(
        &mut self,
        to: NextHop,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>),
    ) -> Result<R, Error> {
        // The interface would refuse a long packet that is not a segment.
        self.check_len(len)?;
        let mac = match self.resolve(to)? {
            Ok(mac) => mac,
            Err(a) => return self.hold_partial(a, len, f),
        };
        let mut out = None;
        self.frame_partial(mac, len, |buf| {
            let (r, partial) = f(buf);
            out = Some(r);
            partial
        })?;
        // `frame_partial` succeeded: the closure ran.
        out.ok_or(Error::Io)
    }

    fn send_in_place(
        &mut self,
        to: NextHop,
        frame: &mut [u8],
        at: usize,
        partial: Option<PartialChecksum>,
    ) -> Result<(), Error> {
        let len = frame.len().checked_sub(at).ok_or(Error::Io)?;
        if at < 14 {
            return mirage_devices::ip::send_copied(self, to, &frame[at..], partial);
        }
        self.check_len(len)?;
        let mac = match self.resolve(to)? {
            Ok(mac) => mac,
            Err(a) => {
                let p = &frame[at..];
                return self.hold_partial(a, len, |b| {
                    b.copy_from_slice(p);
                    ((), partial)
                });
            }
        };
        let frame = &mut frame[at - 14..];
        eth_header(frame, mac, self.info.mac.0);
        let partial = partial.map(|p| PartialChecksum { start: p.start + 14, ..p });
        let sent = self.net.send_frame(frame, partial);
        self.sent(sent)
    }

    fn stats(&self) -> IpStats {
        let mut s = self.stats;
        s.neighbors = self.neighbors.len();
        s
    }
}

/// Writes the Ethernet header of `frame` (to `dst`, from `src`), its type
/// that of the IP packet after it.
fn eth_header(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    let v6 = frame.get(14).is_some_and(|b| b >> 4 == 6);
    let ethertype = if v6 { wire::ETHERTYPE_IPV6 } else { wire::ETHERTYPE_IPV4 };
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

impl<N: Net> IpLayer<N> {
    /// The hardware address of neighbour `ip`, if known; asked for again,
    /// while it is still used, in the last [`REFRESH`] of its entry's life,
    /// so that the traffic of a neighbour in use (a router's gateway) is
    /// never held, or dropped past what is held, while it is resolved anew.
    fn known(&mut self, ip: IpAddr) -> Option<[u8; 6]> {
        let t = now();
        let mac = self.neighbors.lookup(ip, t)?;
        if self.neighbors.expiring(ip, t, REFRESH) {
            self.solicit(ip);
        }
        Some(mac)
    }

    /// The hardware address of `to`; the neighbour's IP address where it
    /// is not yet resolved (a packet is then held); an error, counted,
    /// where it cannot be reached.
    fn resolve(&mut self, to: NextHop) -> Result<Result<[u8; 6], IpAddr>, Error> {
        Ok(Ok(match to {
            NextHop::Broadcast => [0xff; 6],
            NextHop::Mac(MacAddr(m)) => m,
            NextHop::Ip(IpAddr::V4(a)) => {
                let (own, prefix) = self.info.ipv4;
                if own.is_unspecified() {
                    // No lease yet: no IPv4 neighbour can be reached.
                    self.stats.tx_dropped += 1;
                    return Err(Error::Unreachable);
                }
                if a.is_broadcast() || a == broadcast(own, prefix) {
                    [0xff; 6]
                } else if !self.info.on_link(a) || a == own || a.is_multicast() || a.is_unspecified() {
                    self.stats.tx_dropped += 1;
                    return Err(Error::Unreachable);
                } else {
                    match self.known(IpAddr::V4(a)) {
                        Some(m) => m,
                        None => return Ok(Err(IpAddr::V4(a))),
                    }
                }
            }
            NextHop::Ip(IpAddr::V6(a)) => {
                let Some(own) = self.own6() else {
                    self.stats.tx_dropped += 1;
                    return Err(Error::Unreachable);
                };
                if a.is_multicast() {
                    multicast_mac(a)
                } else if !self.info.on_link6(a) || a == own || a.is_unspecified() || a.is_loopback() {
                    self.stats.tx_dropped += 1;
                    return Err(Error::Unreachable);
                } else {
                    match self.known(IpAddr::V6(a)) {
                        Some(m) => m,
                        None => return Ok(Err(IpAddr::V6(a))),
                    }
                }
            }
        }))
    }
}
