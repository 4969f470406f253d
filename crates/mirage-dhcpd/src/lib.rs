//! A DHCPv4 server (RFC 2131) for unikernels that hand out addresses, as
//! charrua does for MirageOS: leases from a pool, static reservations by
//! hardware address, the router, DNS and subnet options, lease expiry and
//! renewal, declines and releases.
//!
//! The server is sans-I/O: [`Server::input`] takes the payload of a UDP
//! datagram that arrived on port 67 and the time, and answers with the
//! payload to send from port 67 to port 68 and where to send it. The
//! caller owns the socket and the clock; [`Server::expire`] forgets
//! leases whose time is up.
//!
//! What a peer can make it hold is bounded by the pool: one record per
//! address, never per client. A flood of DISCOVERs from made-up hardware
//! addresses takes the addresses as offers, which last [`OFFER_SECS`]; when
//! no address is free, the oldest offer not yet accepted is given to the
//! newcomer, so a flood churns offers but cannot keep a real client, whose
//! REQUEST follows its DISCOVER at once, from a lease, and bound leases are
//! never taken. A peer that goes on to REQUEST under each made-up address
//! binds the addresses, as with any DHCP server: the caller should pass
//! on only requests whose client hardware address is their frame's
//! source (the router example does), and what stops a peer that forges
//! its frames too is the link (port security), not the server. A client
//! holds one address at a time: a REQUEST granted for another address
//! gives back the one it held, so a host under its own hardware address
//! cannot bind the pool address by address. A client is known by its
//! hardware address alone: a client identifier (option 61), which RFC
//! 2131 prefers where present, is not used, because it is a free string
//! the frame-source check cannot vouch for, and with it one host could
//! bind the pool under made-up identifiers. Only a bound lease can be
//! declined, and at most a quarter of the pool is kept out as declined at
//! once (the oldest decline is forgotten for a new one), so that a client
//! that takes and declines address after address cannot empty the pool.
//! Malformed messages are counted and dropped.

#![no_std]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};

/// Seconds an offer is kept for the client's REQUEST.
pub const OFFER_SECS: u64 = 30;
/// Seconds a declined address (one the client found in use) is kept out of
/// the pool.
pub const DECLINED_SECS: u64 = 600;

/// DHCP option 6, domain name servers.
const OPT_DNS: u8 = 6;
/// DHCP options 58 and 59, the renewal (T1) and rebinding (T2) times.
const OPT_RENEWAL: u8 = 58;
const OPT_REBINDING: u8 = 59;
/// The largest reply: the fixed header, and options for a message type,
/// server identifier, lease, renewal and rebinding times, subnet mask,
/// router and up to 8 name servers.
const MAX_REPLY: usize = 576;

/// What the server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server's own address on the link: the server identifier.
    pub server: Ipv4Addr,
    /// The prefix length of the link's subnet.
    pub prefix: u8,
    /// The first and last address of the pool, inclusive, inside the subnet.
    pub pool: (Ipv4Addr, Ipv4Addr),
    /// The router option, if any.
    pub router: Option<Ipv4Addr>,
    /// Name servers (at most 8).
    pub dns: Vec<Ipv4Addr>,
    /// The lease time, in seconds.
    pub lease_secs: u32,
    /// Addresses always given to one hardware address; each may be inside
    /// or outside the pool, but inside the subnet.
    pub reservations: Vec<([u8; 6], Ipv4Addr)>,
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub alloc::string::String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a reply goes: to the link's broadcast address, or to a client
/// that can already receive unicast (it has an address: a renewal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255 (and the broadcast hardware address).
    Broadcast,
    /// This address, at this hardware address.
    Unicast(Ipv4Addr, [u8; 6]),
}

/// A message to send from port 67 to port 68.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The UDP payload.
    pub payload: Vec<u8>,
    /// Where to send it.
    pub to: Destination,
}

/// What the server has done, for statistics lines and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Offers sent.
    pub offers: u64,
    /// Acknowledgements sent (leases granted or renewed, and INFORMs).
    pub acks: u64,
    /// Refusals sent (NAK).
    pub naks: u64,
    /// Addresses declined by clients.
    pub declines: u64,
    /// Leases released by clients.
    pub releases: u64,
    /// Offers withdrawn to make room for a newer client.
    pub offers_reclaimed: u64,
    /// Declined addresses given back to the pool early, to keep at most a
    /// quarter of it declined.
    pub declines_forgotten: u64,
    /// DISCOVERs left unanswered: no address was free.
    pub exhausted: u64,
    /// Messages dropped: malformed, not for this server, or replies.
    pub dropped: u64,
}

/// What an address of the pool (or a reservation) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Offered to a client, until the time given (seconds).
    Offered(u64),
    /// Leased to a client, until the time given (seconds).
    Bound(u64),
    /// Declined by a client (in use by someone else), until the time given.
    Declined(u64),
}

/// One address's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The client's hardware address (zero for a declined address).
    pub client: [u8; 6],
    /// What the address is doing.
    pub state: State,
}

impl Lease {
    fn until(&self) -> u64 {
        match self.state {
            State::Offered(t) | State::Bound(t) | State::Declined(t) => t,
        }
    }
}

/// The server.
#[derive(Debug)]
pub struct Server {
    config: Config,
    netmask: u32,
    /// Every address given out, offered or declined; at most one per
    /// address of the pool and reservation.
    leases: Records,
    /// The reserved addresses, sorted.
    reserved: Vec<u32>,
    /// The time of the last [`Server::expire`] made by [`Server::input`]:
    /// one pass over the records a second, whatever the rate of messages.
    expired_at: Option<u64>,
    stats: Stats,
}

/// The records, and indexes that keep each message's work to a few
/// lookups however large the pool: by client, offers and declines by when
/// they end, and a bit for each pool address that has a record. Walking
/// the records instead, a DISCOVER took a third of a millisecond with a
/// full pool of 65,536, and a flood of them from one host would have held
/// the router's processor.
#[derive(Debug)]
struct Records {
    by_addr: BTreeMap<Ipv4Addr, Lease>,
    /// The address each client holds (offered or bound; a declined
    /// address has no client): one at most.
    by_client: BTreeMap<[u8; 6], Ipv4Addr>,
    offers: BTreeSet<(u64, Ipv4Addr)>,
    declines: BTreeSet<(u64, Ipv4Addr)>,
    /// A bit for each pool address from the first, set where it has a
    /// record; and, fixed, where it is reserved.
    taken: Vec<u64>,
    reserved: Vec<u64>,
    first: u32,
    len: u32,
}

impl Records {
    fn new((first, last): (Ipv4Addr, Ipv4Addr), reserved: &[u32]) -> Records {
        let len = bits(last) - bits(first) + 1;
        let words = (len as usize).div_ceil(64);
        let mut r = Records {
            by_addr: BTreeMap::new(),
            by_client: BTreeMap::new(),
            offers: BTreeSet::new(),
            declines: BTreeSet::new(),
            taken: vec![0; words],
            reserved: vec![0; words],
            first: bits(first),
            len,
        };
        for &a in reserved {
            if let Some(i) = r.index(a) {
                r.reserved[i / 64] |= 1 << (i % 64);
            }
        }
        r
    }

    /// The bit of pool address `a`.
    fn index(&self, a: u32) -> Option<usize> {
        let i = a.wrapping_sub(self.first);
        (i < self.len).then_some(i as usize)
    }

    fn mark(&mut self, a: Ipv4Addr, on: bool) {
        if let Some(i) = self.index(bits(a)) {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            self.taken[w] = if on { self.taken[w] | b } else { self.taken[w] & !b };
        }
    }

    fn get(&self, a: &Ipv4Addr) -> Option<&Lease> {
        self.by_addr.get(a)
    }

    /// The address client `mac` holds, offered or bound.
    fn of_client(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.by_client.get(&mac).copied()
    }

    /// Records `l` for `a`, in place of what `a` had, and of any other
    /// address its client held.
    fn insert(&mut self, a: Ipv4Addr, l: Lease) {
        self.remove(&a);
        if l.client != [0; 6] {
            if let Some(b) = self.of_client(l.client) {
                self.remove(&b);
            }
            self.by_client.insert(l.client, a);
        }
        match l.state {
            State::Offered(t) => drop(self.offers.insert((t, a))),
            State::Declined(t) => drop(self.declines.insert((t, a))),
            State::Bound(_) => {}
        }
        self.mark(a, true);
        self.by_addr.insert(a, l);
    }

    fn remove(&mut self, a: &Ipv4Addr) -> Option<Lease> {
        let l = self.by_addr.remove(a)?;
        if self.by_client.get(&l.client) == Some(a) {
            self.by_client.remove(&l.client);
        }
        match l.state {
            State::Offered(t) => drop(self.offers.remove(&(t, *a))),
            State::Declined(t) => drop(self.declines.remove(&(t, *a))),
            State::Bound(_) => {}
        }
        self.mark(*a, false);
        Some(l)
    }

    /// Forgets the records whose time is up: one pass, made at most once
    /// a second.
    fn expire(&mut self, now: u64) {
        let gone: Vec<Ipv4Addr> = self.by_addr.iter().filter(|(_, l)| l.until() <= now).map(|(a, _)| *a).collect();
        for a in gone {
            self.remove(&a);
        }
    }

    /// The lowest pool address with no record that is not reserved.
    fn lowest_free(&self) -> Option<Ipv4Addr> {
        let (w, bits) =
            self.taken.iter().zip(&self.reserved).map(|(t, r)| !(t | r)).enumerate().find(|(_, f)| *f != 0)?;
        let i = w as u32 * 64 + bits.trailing_zeros();
        (i < self.len).then(|| Ipv4Addr::from(self.first + i))
    }

    /// The offer that ends first.
    fn oldest_offer(&self) -> Option<Ipv4Addr> {
        self.offers.first().map(|&(_, a)| a)
    }

    /// The decline that ends first, and how many there are.
    fn declines(&self) -> (usize, Option<Ipv4Addr>) {
        (self.declines.len(), self.declines.first().map(|&(_, a)| a))
    }

    fn iter(&self) -> impl Iterator<Item = (&Ipv4Addr, &Lease)> {
        self.by_addr.iter()
    }
}

/// The most addresses a pool holds.
pub const MAX_POOL: u32 = 65_536;

fn bits(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

impl Server {
    /// A server handing out `config`'s pool; refuses a configuration whose
    /// addresses do not fit its subnet.
    pub fn new(config: Config) -> Result<Server, ConfigError> {
        let err = |s: alloc::string::String| Err(ConfigError(s));
        if config.prefix == 0 || config.prefix > 30 {
            return err(alloc::format!("prefix /{} leaves no room for clients (use /1 to /30)", config.prefix));
        }
        let netmask = u32::MAX << (32 - config.prefix);
        let net = bits(config.server) & netmask;
        let inside = |a: Ipv4Addr| bits(a) & netmask == net && bits(a) != net && bits(a) != net | !netmask;
        let (first, last) = config.pool;
        if bits(first) > bits(last) {
            return err(alloc::format!("the pool {first}-{last} is empty: its first address is after its last"));
        }
        if !inside(first) || !inside(last) {
            return err(alloc::format!(
                "the pool {first}-{last} is not inside {}/{} (network and broadcast excluded)",
                Ipv4Addr::from(net),
                config.prefix
            ));
        }
        // The pool may hold a record per address, and the expiry pass
        // walks them once a second: a /8's 16 million could fill the heap.
        if bits(last) - bits(first) >= MAX_POOL {
            return err(alloc::format!(
                "the pool {first}-{last} holds {} addresses: at most {MAX_POOL} (a /16's worth)",
                u64::from(bits(last) - bits(first)) + 1
            ));
        }
        if (bits(first)..=bits(last)).contains(&bits(config.server)) {
            return err(alloc::format!("the pool {first}-{last} holds the server's own address {}", config.server));
        }
        if let Some(r) = config.router.filter(|r| !inside(*r)) {
            return err(alloc::format!("the router {r} is not inside the subnet"));
        }
        if config.dns.len() > 8 {
            return err(alloc::format!("{} name servers: at most 8", config.dns.len()));
        }
        if config.lease_secs < 60 {
            return err(alloc::format!("a lease of {} s is too short (at least 60)", config.lease_secs));
        }
        for (i, (mac, a)) in config.reservations.iter().enumerate() {
            if !inside(*a) || *a == config.server {
                return err(alloc::format!("the reservation of {a} is not a client address of the subnet"));
            }
            if config.reservations[..i].iter().any(|(m, b)| m == mac || b == a) {
                return err(alloc::format!("{a} or {:02x?} is reserved twice", mac));
            }
        }
        let mut reserved: Vec<u32> = config.reservations.iter().map(|(_, a)| bits(*a)).collect();
        reserved.sort_unstable();
        let leases = Records::new(config.pool, &reserved);
        Ok(Server { config, netmask, leases, reserved, expired_at: None, stats: Stats::default() })
    }

    /// Changes the name servers given from now on (a router whose uplink's
    /// lease brought new ones); more than 8 are refused.
    pub fn set_dns(&mut self, dns: Vec<Ipv4Addr>) -> Result<(), ConfigError> {
        if dns.len() > 8 {
            return Err(ConfigError(alloc::format!("{} name servers: at most 8", dns.len())));
        }
        self.config.dns = dns;
        Ok(())
    }

    /// The server's counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The addresses given out, offered or declined.
    pub fn leases(&self) -> impl Iterator<Item = (Ipv4Addr, &Lease)> {
        self.leases.iter().map(|(a, l)| (*a, l))
    }

    /// Forgets the records whose time is up (`now` in seconds).
    pub fn expire(&mut self, now: u64) {
        self.leases.expire(now);
    }

    /// Answers the DHCP message `payload` (a UDP datagram to port 67)
    /// received at `now` (seconds, monotonic); `None` when there is
    /// nothing to send.
    pub fn input(&mut self, payload: &[u8], now: u64) -> Option<Reply> {
        if self.expired_at != Some(now) {
            self.expire(now);
            self.expired_at = Some(now);
        }
        let packet = match DhcpPacket::new_checked(payload) {
            Ok(p) => p,
            Err(_) => return self.drop_it(),
        };
        let Ok(msg) = DhcpRepr::parse(&packet) else { return self.drop_it() };
        // Only requests from Ethernet clients; relayed messages are not
        // served (this server answers on its own link).
        if msg.relay_agent_ip != Ipv4Addr::UNSPECIFIED {
            return self.drop_it();
        }
        let mac = msg.client_hardware_address.0;
        if mac == [0; 6] || mac[0] & 1 != 0 {
            return self.drop_it();
        }
        match msg.message_type {
            DhcpMessageType::Discover => self.discover(&msg, mac, now),
            DhcpMessageType::Request => self.request(&msg, mac, now),
            DhcpMessageType::Decline => {
                // Only an address the client was granted: a client
                // declines what it found in use after the ACK (RFC 2131
                // 4.4.1), never an offer.
                if msg.server_identifier == Some(self.config.server)
                    && let Some(a) = msg.requested_ip
                    && self.leases.get(&a).is_some_and(|l| l.client == mac && matches!(l.state, State::Bound(_)))
                {
                    self.decline(a, now);
                }
                None
            }
            DhcpMessageType::Release => {
                if msg.server_identifier == Some(self.config.server)
                    && self.leases.get(&msg.client_ip).is_some_and(|l| l.client == mac)
                {
                    self.leases.remove(&msg.client_ip);
                    self.stats.releases += 1;
                }
                None
            }
            DhcpMessageType::Inform => {
                if !self.in_subnet(msg.client_ip) {
                    return self.drop_it();
                }
                self.stats.acks += 1;
                let to = Destination::Unicast(msg.client_ip, mac);
                Some(self.reply(&msg, DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED, false, to))
            }
            _ => self.drop_it(),
        }
    }

    /// Keeps `a` out of the pool for [`DECLINED_SECS`], forgetting the
    /// oldest decline first when a quarter of the pool is declined.
    fn decline(&mut self, a: Ipv4Addr, now: u64) {
        let (first, last) = self.config.pool;
        let most = ((bits(last) - bits(first)) as usize + 1).div_ceil(4);
        if let (count, Some(oldest)) = self.leases.declines()
            && count >= most
        {
            self.leases.remove(&oldest);
            self.stats.declines_forgotten += 1;
        }
        self.leases.insert(a, Lease { client: [0; 6], state: State::Declined(now + DECLINED_SECS) });
        self.stats.declines += 1;
    }

    fn drop_it(&mut self) -> Option<Reply> {
        self.stats.dropped += 1;
        None
    }

    fn in_subnet(&self, a: Ipv4Addr) -> bool {
        let net = bits(self.config.server) & self.netmask;
        bits(a) & self.netmask == net && bits(a) != net && bits(a) != net | !self.netmask && a != self.config.server
    }

    fn reserved_for(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        self.config.reservations.iter().find(|(m, _)| *m == mac).map(|(_, a)| *a)
    }

    /// Whether `a` may be given to `mac`: its reservation, or a pool
    /// address nobody else holds and not reserved for another.
    fn may_have(&self, a: Ipv4Addr, mac: [u8; 6]) -> bool {
        if let Some(r) = self.reserved_for(mac) {
            return a == r;
        }
        let (first, last) = self.config.pool;
        (bits(first)..=bits(last)).contains(&bits(a))
            && self.reserved.binary_search(&bits(a)).is_err()
            && self.leases.get(&a).is_none_or(|l| l.client == mac && !matches!(l.state, State::Declined(_)))
    }

    /// The address to offer `mac`: its reservation, the address it holds,
    /// the one it asks for if free, or the lowest free one; else the
    /// oldest offer is withdrawn for it.
    fn choose(&mut self, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(r) = self.reserved_for(mac) {
            // A reservation the client found in use waits out its
            // decline: offered at once, it would be declined again.
            return self.leases.get(&r).is_none_or(|l| !matches!(l.state, State::Declined(_))).then_some(r);
        }
        if let Some(a) = self.leases.of_client(mac) {
            return Some(a);
        }
        if let Some(a) = requested.filter(|a| self.may_have(*a, mac)) {
            return Some(a);
        }
        if let Some(free) = self.leases.lowest_free() {
            return Some(free);
        }
        let oldest = self.leases.oldest_offer()?;
        self.stats.offers_reclaimed += 1;
        self.leases.remove(&oldest);
        Some(oldest)
    }

    fn discover(&mut self, msg: &DhcpRepr<'_>, mac: [u8; 6], now: u64) -> Option<Reply> {
        let Some(a) = self.choose(mac, msg.requested_ip) else {
            self.stats.exhausted += 1;
            return None;
        };
        // An address already bound to the client stays bound.
        let state = match self.leases.get(&a) {
            Some(l) if l.client == mac && matches!(l.state, State::Bound(_)) => l.state,
            _ => State::Offered(now + OFFER_SECS),
        };
        self.leases.insert(a, Lease { client: mac, state });
        self.stats.offers += 1;
        Some(self.reply(msg, DhcpMessageType::Offer, a, true, Destination::Broadcast))
    }

    fn request(&mut self, msg: &DhcpRepr<'_>, mac: [u8; 6], now: u64) -> Option<Reply> {
        if let Some(id) = msg.server_identifier
            && id != self.config.server
        {
            // The client chose another server: our offer goes back.
            if let Some(a) = self.leases.of_client(mac)
                && self.leases.get(&a).is_some_and(|l| matches!(l.state, State::Offered(_)))
            {
                self.leases.remove(&a);
            }
            return self.drop_it();
        }
        // SELECTING and INIT-REBOOT name the address in an option;
        // RENEWING and REBINDING in ciaddr.
        let renewing = msg.requested_ip.is_none() && msg.client_ip != Ipv4Addr::UNSPECIFIED;
        let Some(a) = msg.requested_ip.or(renewing.then_some(msg.client_ip)) else {
            return self.drop_it();
        };
        let to = if renewing { Destination::Unicast(a, mac) } else { Destination::Broadcast };
        let known = self.leases.get(&a).copied();
        let grant = match known {
            Some(l) => l.client == mac && !matches!(l.state, State::Declined(_)),
            // No record: a client rebooting with an address from before a
            // restart of this server, or a SELECTING client whose offer
            // expired. Granted if it may have it (RFC 2131 4.3.2 lets a
            // server without a record stay silent; granting a free address
            // of the pool is what keeps such clients working).
            None => self.in_subnet(a) && self.may_have(a, mac),
        };
        if grant {
            // One address a client: whatever else it held goes back
            // (`Records::insert`).
            self.leases.insert(a, Lease { client: mac, state: State::Bound(now + u64::from(self.config.lease_secs)) });
            self.stats.acks += 1;
            return Some(self.reply(msg, DhcpMessageType::Ack, a, true, to));
        }
        // Another client's address, a declined one, one outside the pool
        // or the subnet (a client rebooting on another network): the
        // client must start over.
        self.stats.naks += 1;
        Some(self.nak(msg))
    }

    fn nak(&self, msg: &DhcpRepr<'_>) -> Reply {
        let repr = DhcpRepr { broadcast: true, ..self.answer(msg, DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED) };
        Reply { payload: emit(&repr), to: Destination::Broadcast }
    }

    fn reply(
        &self,
        msg: &DhcpRepr<'_>,
        kind: DhcpMessageType,
        yiaddr: Ipv4Addr,
        lease: bool,
        to: Destination,
    ) -> Reply {
        let secs = self.config.lease_secs;
        let dns: Vec<u8> = self.config.dns.iter().flat_map(|a| a.octets()).collect();
        // T1 and T2 as RFC 2131 4.4.5 suggests: half the lease and seven
        // eighths (smoltcp's emitter writes neither option, so they go here).
        let (t1, t2) = ((secs / 2).to_be_bytes(), (secs / 8 * 7).to_be_bytes());
        let mut options = Vec::with_capacity(3);
        if !dns.is_empty() {
            options.push(DhcpOption { kind: OPT_DNS, data: &dns });
        }
        if lease {
            options.push(DhcpOption { kind: OPT_RENEWAL, data: &t1 });
            options.push(DhcpOption { kind: OPT_REBINDING, data: &t2 });
        }
        let repr = DhcpRepr {
            client_ip: msg.client_ip,
            router: self.config.router,
            subnet_mask: Some(Ipv4Addr::from(self.netmask)),
            broadcast: msg.broadcast,
            lease_duration: lease.then_some(secs),
            additional_options: &options,
            ..self.answer(msg, kind, yiaddr)
        };
        Reply { payload: emit(&repr), to }
    }

    /// A bare answer of `kind` to `msg`: its transaction and client, our
    /// identifier, `yiaddr`, no other option.
    fn answer<'a>(&self, msg: &DhcpRepr<'_>, kind: DhcpMessageType, yiaddr: Ipv4Addr) -> DhcpRepr<'a> {
        DhcpRepr {
            message_type: kind,
            transaction_id: msg.transaction_id,
            secs: 0,
            client_hardware_address: msg.client_hardware_address,
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: yiaddr,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(self.config.server),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        }
    }
}

fn emit(repr: &DhcpRepr<'_>) -> Vec<u8> {
    // At least BOOTP's 300 bytes, which some clients still expect; the
    // bytes after the end option are padding.
    let len = repr.buffer_len().max(300);
    debug_assert!(len <= MAX_REPLY);
    let mut buf = vec![0u8; len];
    let mut packet = DhcpPacket::new_unchecked(&mut buf[..]);
    // The buffer is sized by buffer_len, so emit cannot run out of room.
    let _ = repr.emit(&mut packet);
    buf
}

#[cfg(test)]
mod tests;
