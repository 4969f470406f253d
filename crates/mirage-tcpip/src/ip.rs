//! The IP layer on its own: whole IPv4 packets in and out of one network
//! interface, ARP done beneath ([`mirage_devices::ip::Ip`]), for routers,
//! NATs and firewalls that handle packets rather than connections.
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
//!   IPv4 header says. Fragments are handed up as they are (the caller
//!   decides); IPv6 is not carried yet (dropped and counted).
//! * **ARP** answers requests for the interface's address and resolves
//!   next hops, under the stack's neighbour-cache policy (ARCHITECTURE.md,
//!   "The neighbour-cache policy"): only solicited replies create or
//!   change an entry, requests aimed at this host may create one, nothing
//!   unsolicited changes a live one; refusals are counted. The cache holds
//!   256 neighbours, each for 60 s from its last confirmation.
//! * **Bounded waiting.** A packet for a neighbour not yet resolved waits:
//!   at most [`PER_NEIGHBOR`] packets each for at most [`MAX_UNRESOLVED`]
//!   neighbours, copied into buffers allocated fallibly. The request is
//!   sent again after a second, three times in all; then the packets are
//!   dropped and counted. A peer making the layer ARP for many addresses
//!   (a scan through a router) costs that much memory and no more.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr};

use mirage_devices::ip::{Error, Ip, IpInfo, IpStats, NextHop};
use mirage_devices::net::{MacAddr, Net};
use mirage_runtime::args::{Arg, Args, Ipv4Cidr};
use mirage_runtime::time::{Duration, Instant, now};

use crate::device::buffer;
use crate::neighbor::{Kind, Neighbors};
use crate::wire::{self, Packet};

/// Packets held for one unresolved neighbour; more are dropped.
pub const PER_NEIGHBOR: usize = 4;
/// Neighbours being resolved at once; packets for more are dropped.
pub const MAX_UNRESOLVED: usize = 64;
/// Time between ARP requests for a neighbour that does not answer.
const RETRY: Duration = Duration::from_secs(1);
/// ARP requests sent before the waiting packets are dropped.
const TRIES: u8 = 3;
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
}

impl core::fmt::Display for IpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            IpError::BadMac => "the interface's MAC address is not unicast",
            IpError::BadAddress => "the IPv4 address is not a usable unicast address with a prefix of at most 32",
            IpError::BadGateway => "the gateway is not another address of the interface's subnet",
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
}

impl IpConfig {
    /// A configuration.
    pub fn new(ipv4: (Ipv4Addr, u8), gateway: Option<Ipv4Addr>) -> IpConfig {
        IpConfig { ipv4, gateway }
    }

    /// The boot arguments that configure an IP-layer interface: `--ipv4`
    /// and `--ipv4-gateway`, with these defaults (an empty gateway: none).
    pub fn args(default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        alloc::vec![
            Arg::new::<Ipv4Cidr>("ipv4", Some(default_ipv4), "IPv4 address and prefix length of the interface."),
            Arg::new::<Option<Ipv4Addr>>(
                "ipv4-gateway",
                Some(default_gateway),
                "IPv4 gateway on the interface's link."
            ),
        ]
    }

    /// The arguments of [`IpConfig::args`] for one of several devices:
    /// `--PREFIX-ipv4`, `--PREFIX-ipv4-gateway`.
    pub fn args_prefixed(prefix: &str, default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        IpConfig::args(default_ipv4, default_gateway).into_iter().map(|a| a.prefixed(prefix)).collect()
    }

    /// The configuration the arguments of [`IpConfig::args`] give.
    pub fn from_args(args: &Args) -> IpConfig {
        let c: Ipv4Cidr = args.get("ipv4");
        IpConfig { ipv4: (c.addr, c.prefix), gateway: args.get("ipv4-gateway") }
    }

    /// The configuration the arguments of [`IpConfig::args_prefixed`] give.
    pub fn from_args_prefixed(args: &Args, prefix: &str) -> IpConfig {
        let c: Ipv4Cidr = args.get(&alloc::format!("{prefix}-ipv4"));
        IpConfig { ipv4: (c.addr, c.prefix), gateway: args.get(&alloc::format!("{prefix}-ipv4-gateway")) }
    }
}

/// A neighbour being resolved, and what waits for it.
#[derive(Debug)]
struct Unresolved {
    ip: Ipv4Addr,
    packets: VecDeque<Vec<u8>>,
    /// When the next request goes, and how many went.
    retry: Instant,
    tries: u8,
}

/// What a received frame was.
enum Received<R> {
    Packet(R),
    Arp(wire::Arp),
    Dropped,
}

/// An IP layer over a network interface: see the module documentation.
pub struct IpLayer<N> {
    net: N,
    info: IpInfo,
    neighbors: Neighbors,
    unresolved: Vec<Unresolved>,
    stats: IpStats,
    next_expiry: Instant,
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
        if p > 32 || a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
            return Err(IpError::BadAddress);
        }
        if config.gateway.is_some_and(|g| g == a || !IpInfo::new(info.mac, info.mtu, ipv4).on_link(g)) {
            return Err(IpError::BadGateway);
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
            info: IpInfo::new(info.mac, info.mtu, ipv4).with_gateway(config.gateway),
            neighbors: Neighbors::new((key, key.rotate_left(32))),
            unresolved: Vec::new(),
            stats: IpStats::default(),
            next_expiry: Instant(0),
        })
    }

    /// The interface beneath.
    pub fn net(&self) -> &N {
        &self.net
    }

    fn own(&self) -> Ipv4Addr {
        self.info.ipv4.0
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

    /// Sends `packet` (already written) to `mac`.
    fn frame(&mut self, mac: [u8; 6], len: usize, write: impl FnOnce(&mut [u8])) -> Result<(), Error> {
        let src = self.info.mac.0;
        let sent = self.net.send(14 + len, |buf| {
            buf[0..6].copy_from_slice(&mac);
            buf[6..12].copy_from_slice(&src);
            buf[12..14].copy_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());
            write(&mut buf[14..]);
        });
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
        if arp.target_ip != self.own() || arp.sender_ip == self.own() {
            // Not aimed at this host (gratuitous ARP among them): the
            // policy lets it change nothing.
            return;
        }
        let kind = if arp.op == 1 { Kind::Request } else { Kind::Reply };
        if arp.op > 2 || !self.neighbors.judge(IpAddr::V4(arp.sender_ip), arp.sender_mac, kind, t) {
            self.stats.arp_refused += 1;
            return;
        }
        self.stats.arp_in += 1;
        if arp.op == 1 {
            self.arp(2, arp.sender_mac, arp.sender_ip);
        }
        // Whatever waited for this neighbour goes now.
        if let Some(i) = self.unresolved.iter().position(|u| u.ip == arp.sender_ip) {
            let u = self.unresolved.swap_remove(i);
            for p in u.packets {
                let _ = self.frame(arp.sender_mac, p.len(), |buf| buf.copy_from_slice(&p));
            }
        }
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
                self.stats.tx_dropped += u.packets.len() as u64;
                continue;
            }
            u.tries += 1;
            u.retry = t + RETRY;
            let ip = u.ip;
            self.arp(1, [0; 6], ip);
            i += 1;
        }
        if t >= self.next_expiry {
            self.next_expiry = t + EXPIRY;
            self.neighbors.expire(t);
        }
    }

    /// The earliest time the layer has work of its own.
    fn deadline(&self) -> Option<Instant> {
        self.unresolved.iter().map(|u| u.retry).min()
    }

    /// Holds a packet for `to` while it is resolved.
    fn hold<R>(&mut self, to: Ipv4Addr, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error> {
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
        let room = u.packets.len() < PER_NEIGHBOR && u.packets.try_reserve(1).is_ok();
        let Some(mut p) = buffer(len).filter(|_| room) else {
            self.stats.tx_dropped += 1;
            return Err(Error::WouldBlock);
        };
        let r = f(&mut p);
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
        let t = now();
        if self.deadline().is_some_and(|d| t >= d) || t >= self.next_expiry {
            self.maintain(t);
        }
        let mut f = Some(f);
        let mac = self.info.mac.0;
        loop {
            let got = self.net.try_recv(|frame| {
                let Ok((eth, packet)) = wire::parse(frame) else { return Received::Dropped };
                if eth.dst != mac && eth.dst != [0xff; 6] {
                    return Received::Dropped;
                }
                match packet {
                    Packet::Arp(arp) => Received::Arp(arp),
                    Packet::Ipv4(p) => {
                        let len = p.header_len + p.payload.len();
                        match f.take() {
                            Some(f) => Received::Packet(f(&mut frame[14..14 + len])),
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
        if len > self.info.mtu as usize {
            self.stats.tx_dropped += 1;
            return Err(Error::TooLarge);
        }
        let mac = match to {
            NextHop::Broadcast => [0xff; 6],
            NextHop::Mac(MacAddr(m)) => m,
            NextHop::Ip(IpAddr::V4(a)) => {
                let (own, prefix) = self.info.ipv4;
                if a.is_broadcast() || a == broadcast(own, prefix) {
                    [0xff; 6]
                } else if !self.info.on_link(a) || a == own || a.is_multicast() || a.is_unspecified() {
                    self.stats.tx_dropped += 1;
                    return Err(Error::Unreachable);
                } else {
                    match self.neighbors.lookup(IpAddr::V4(a), now()) {
                        Some(m) => m,
                        None => return self.hold(a, len, f),
                    }
                }
            }
            NextHop::Ip(IpAddr::V6(_)) => {
                self.stats.tx_dropped += 1;
                return Err(Error::Unreachable);
            }
        };
        let mut out = None;
        self.frame(mac, len, |buf| out = Some(f(buf)))?;
        // `frame` succeeded: the closure ran.
        out.ok_or(Error::Io)
    }

    fn stats(&self) -> IpStats {
        let mut s = self.stats;
        s.neighbors = self.neighbors.len();
        s
    }
}
