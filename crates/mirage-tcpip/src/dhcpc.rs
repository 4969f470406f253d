//! The DHCPv4 client of the IP layer (RFC 2131), sans I/O: it says what
//! to send and when, and what it learnt; [`crate::ip::IpLayer`] carries
//! its messages and applies its leases.
//!
//! DISCOVER, then REQUEST for the first acceptable OFFER, then BOUND on
//! the ACK; at T1 a unicast REQUEST renews with the server that gave the
//! lease, at T2 a broadcast one rebinds with any, and when the lease
//! expires the address is dropped and the client starts again. A NAK
//! while requesting, renewing or rebinding drops the address and starts
//! again. Messages are sent again after 1 s, then 2, 4, ... up to 32 s
//! (while selecting and requesting; REQUEST four times before starting
//! again), and while renewing or rebinding after half the time left, at
//! least 4 s.
//!
//! Replies are taken only when they answer this client: a DHCP reply
//! (op 2) with the transaction ID of the exchange in progress and this
//! interface's hardware address, of the type the state expects, offering
//! a usable unicast address with a contiguous subnet mask, a server
//! identifier, and a lease of at least [`MIN_LEASE_SECS`]; an ACK must
//! come from the server asked (any, when rebinding). Anything else
//! is dropped and counted (the layer's `IpStats::dhcp_dropped`). A
//! lease longer than [`MAX_LEASE_SECS`] (or infinite) is held for that
//! long and renewed; T1 and T2 that are not `MIN_LEASE_SECS` / 2 <= T1 <
//! T2 < lease are replaced by RFC 2131's defaults (half and seven
//! eighths), so that no server has the client renew every second. A router
//! option off the leased subnet is ignored: the lease then has no
//! gateway.

use core::net::Ipv4Addr;

use mirage_runtime::time::{Duration, Instant};
use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};

/// The shortest lease taken: a server granting less is misconfigured or
/// hostile, and would have the client renew without pause.
pub const MIN_LEASE_SECS: u32 = 10;
/// The longest a lease is held before it is renewed, whatever the server
/// said (30 days; `0xffffffff`, infinite, included).
pub const MAX_LEASE_SECS: u32 = 30 * 24 * 3600;
/// Name servers kept from a lease.
pub const MAX_DNS: usize = 3;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(32);
const MIN_RENEW_RETRY: Duration = Duration::from_secs(4);
const REQUEST_TRIES: u32 = 4;

/// A lease the client holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The address, and the prefix length of its subnet mask.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
    /// The router on the subnet, if the server gave one on it.
    pub router: Option<Ipv4Addr>,
    /// Name servers, at most [`MAX_DNS`].
    pub dns: [Option<Ipv4Addr>; MAX_DNS],
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// When the client renews (T1), rebinds (T2), and drops the address.
    pub t1: Instant,
    /// T2.
    pub t2: Instant,
    /// The end of the lease.
    pub expires: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Selecting,
    Requesting { server: Ipv4Addr, addr: Ipv4Addr },
    Bound,
    Renewing,
    Rebinding,
}

/// A message to send: its DHCP payload (the UDP payload from port 68 to
/// 67), from `src`, to `dst` (the limited broadcast, or the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The DHCP message.
    pub payload: alloc::vec::Vec<u8>,
    /// The IPv4 source: unspecified, or the leased address when renewing
    /// or rebinding.
    pub src: Ipv4Addr,
    /// The IPv4 destination.
    pub dst: Ipv4Addr,
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Nothing the layer must apply.
    None,
    /// A lease was taken or renewed: the layer uses its address.
    Bound(Lease),
    /// The lease expired or was refused: the layer has no address.
    Lost,
}

/// A DHCP reply, as the client needs it (owned: read inside the
/// receive closure, used after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    kind: DhcpMessageType,
    xid: u32,
    chaddr: [u8; 6],
    your_ip: Ipv4Addr,
    server_id: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    dns: [Option<Ipv4Addr>; MAX_DNS],
    lease: Option<u32>,
    t1: Option<u32>,
    t2: Option<u32>,
}

impl Reply {
    /// Reads the DHCP message in a UDP payload; `None` when it is not a
    /// well-formed DHCP reply.
    pub fn parse(payload: &[u8]) -> Option<Reply> {
        let packet = DhcpPacket::new_checked(payload).ok()?;
        // op 2: BOOTREPLY. smoltcp's parse does not look at it.
        if payload[0] != 2 {
            return None;
        }
        let r = DhcpRepr::parse(&packet).ok()?;
        let mut dns = [None; MAX_DNS];
        for (slot, a) in dns.iter_mut().zip(r.dns_servers.iter().flatten()) {
            *slot = Some(*a);
        }
        Some(Reply {
            kind: r.message_type,
            xid: r.transaction_id,
            chaddr: r.client_hardware_address.0,
            your_ip: r.your_ip,
            server_id: r.server_identifier,
            mask: r.subnet_mask,
            router: r.router,
            dns,
            lease: r.lease_duration,
            t1: r.renew_duration,
            t2: r.rebind_duration,
        })
    }
}

/// The client's state machine.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    state: State,
    xid: u32,
    rng: u64,
    /// When the next message goes (or the next timer of the lease).
    next: Instant,
    retry: Duration,
    tries: u32,
    lease: Option<Lease>,
    /// Replies dropped: not for this client, malformed or unacceptable.
    pub dropped: u64,
    /// Leases taken or renewed.
    pub acks: u64,
}

/// The prefix length of a contiguous subnet mask.
fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let p = m.leading_ones();
    (m.checked_shl(p).unwrap_or(0) == 0 && (1..=30).contains(&p)).then_some(p as u8)
}

fn usable(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// Whether a host may take `addr` on a subnet of `prefix` bits: a usable
/// address, a prefix of 1 to 30, and neither the subnet's network address
/// nor its broadcast.
pub(crate) fn address_ok(addr: Ipv4Addr, prefix: u8) -> bool {
    if !usable(addr) || !(1..=30).contains(&prefix) {
        return false;
    }
    let mask = u32::MAX << (32 - prefix);
    let host = u32::from(addr) & !mask;
    host != 0 && host != !mask
}

/// Whether `router` can be the gateway of `addr/prefix` (an
/// [`address_ok`] pair): another usable host address of the same subnet.
pub(crate) fn router_ok(addr: Ipv4Addr, prefix: u8, router: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - prefix);
    router != addr && u32::from(router) & mask == u32::from(addr) & mask && address_ok(router, prefix)
}

/// Whether `dns` can be a name server for `addr/prefix`: a usable address,
/// not our own, and not the network or broadcast address of our subnet.
fn dns_ok(addr: Ipv4Addr, prefix: u8, dns: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - prefix);
    let ours = u32::from(dns) & mask == u32::from(addr) & mask;
    usable(dns) && dns != addr && (!ours || address_ok(dns, prefix))
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(s as u64)
}

impl Client {
    /// A client for the interface with hardware address `mac`; `seed`
    /// varies its transaction IDs. It starts selecting at the first
    /// [`Client::poll`].
    pub fn new(mac: [u8; 6], seed: u64) -> Client {
        Client {
            mac,
            state: State::Selecting,
            xid: 0,
            rng: seed | 1,
            next: Instant(0),
            retry: FIRST_RETRY,
            tries: 0,
            lease: None,
            dropped: 0,
            acks: 0,
        }
    }

    /// Mixes `entropy` (the clock at start) into the transaction IDs.
    pub fn mix(&mut self, entropy: u64) {
        self.rng = (self.rng ^ entropy.rotate_left(17)).max(1);
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }

    /// When [`Client::poll`] has work.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    fn new_xid(&mut self) {
        // xorshift64*: transaction IDs differ between exchanges; they are
        // no secret from a host on the link, which sees them.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.xid = (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32;
    }

    fn backoff(&mut self, now: Instant) {
        self.next = now + self.retry;
        self.retry = (self.retry + self.retry).min(MAX_RETRY);
    }

    /// Starts over: DISCOVER.
    fn restart(&mut self, now: Instant) -> (Option<Message>, Event) {
        let lost = self.lease.take().is_some();
        self.state = State::Selecting;
        self.new_xid();
        self.retry = FIRST_RETRY;
        self.tries = 0;
        self.next = now;
        let (m, _) = self.poll(now);
        (m, if lost { Event::Lost } else { Event::None })
    }

    /// Does what is due at `now`: a message to send (again), or a change
    /// of the lease's state.
    pub fn poll(&mut self, now: Instant) -> (Option<Message>, Event) {
        if now < self.next {
            return (None, Event::None);
        }
        if let Some(l) = self.lease
            && now >= l.expires
        {
            return self.restart(now);
        }
        match self.state {
            State::Selecting => {
                if self.xid == 0 {
                    self.new_xid();
                }
                self.backoff(now);
                (Some(self.message(DhcpMessageType::Discover, None, None, Ipv4Addr::BROADCAST)), Event::None)
            }
            State::Requesting { server, addr } => {
                if self.tries >= REQUEST_TRIES {
                    return self.restart(now);
                }
                self.tries += 1;
                self.backoff(now);
                let m = self.message(DhcpMessageType::Request, Some(addr), Some(server), Ipv4Addr::BROADCAST);
                (Some(m), Event::None)
            }
            State::Bound | State::Renewing | State::Rebinding => {
                let Some(l) = self.lease else { return self.restart(now) };
                if now < l.t1 {
                    self.next = l.t1;
                    return (None, Event::None);
                }
                let rebinding = now >= l.t2;
                if rebinding && self.state != State::Rebinding || !rebinding && self.state == State::Bound {
                    self.new_xid();
                }
                self.state = if rebinding { State::Rebinding } else { State::Renewing };
                let until = if rebinding { l.expires } else { l.t2 };
                let half = Duration::from_nanos(until.as_nanos().saturating_sub(now.as_nanos()) / 2);
                self.next = (now + half.max(MIN_RENEW_RETRY)).min(until);
                let dst = if rebinding { Ipv4Addr::BROADCAST } else { l.server };
                let mut m = self.message(DhcpMessageType::Request, None, None, dst);
                m.src = l.addr;
                (Some(m), Event::None)
            }
        }
    }

    /// A message of `kind` in the current exchange.
    fn message(
        &self,
        kind: DhcpMessageType,
        requested: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
        dst: Ipv4Addr,
    ) -> Message {
        let renewing = matches!(self.state, State::Renewing | State::Rebinding | State::Bound);
        let client_ip = match (renewing, self.lease) {
            (true, Some(l)) => l.addr,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        // Subnet mask, router, DNS.
        const ASK: [u8; 3] = [1, 3, 6];
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: self.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(self.mac),
            client_ip,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: Some(EthernetAddress(self.mac)),
            server_identifier: server,
            parameter_request_list: Some(&ASK),
            dns_servers: None,
            max_size: Some(1500),
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut payload = alloc::vec![0u8; repr.buffer_len()];
        // The buffer is as long as the message needs.
        let _ = repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]));
        Message { payload, src: Ipv4Addr::UNSPECIFIED, dst }
    }

    /// Takes a reply received at `now`.
    pub fn input(&mut self, r: &Reply, now: Instant) -> (Option<Message>, Event) {
        if r.xid != self.xid || r.chaddr != self.mac {
            self.dropped += 1;
            return (None, Event::None);
        }
        match (self.state, r.kind) {
            (State::Selecting, DhcpMessageType::Offer) => {
                let Some(server) = r.server_id.filter(|s| usable(*s)) else {
                    self.dropped += 1;
                    return (None, Event::None);
                };
                if self.check(r, now).is_none() {
                    self.dropped += 1;
                    return (None, Event::None);
                }
                self.state = State::Requesting { server, addr: r.your_ip };
                self.retry = FIRST_RETRY;
                self.tries = 0;
                self.next = now;
                self.poll(now)
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, DhcpMessageType::Nak) => {
                // From the server asked (any, when rebinding).
                let from = r.server_id;
                let asked = match self.state {
                    State::Requesting { server, .. } => Some(server),
                    State::Renewing => self.lease.map(|l| l.server),
                    _ => None,
                };
                if asked.is_some() && from != asked {
                    self.dropped += 1;
                    return (None, Event::None);
                }
                self.restart(now)
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, DhcpMessageType::Ack) => {
                // The address asked for, from the server asked (any,
                // when rebinding).
                let (want, asked) = match self.state {
                    State::Requesting { addr, server } => (addr, Some(server)),
                    State::Renewing => {
                        (self.lease.map_or(Ipv4Addr::UNSPECIFIED, |l| l.addr), self.lease.map(|l| l.server))
                    }
                    _ => (self.lease.map_or(Ipv4Addr::UNSPECIFIED, |l| l.addr), None),
                };
                let lease = match self.check(r, now) {
                    Some(l) if l.addr == want && asked.is_none_or(|s| s == l.server) => l,
                    _ => {
                        self.dropped += 1;
                        return (None, Event::None);
                    }
                };
                self.lease = Some(lease);
                self.state = State::Bound;
                self.next = lease.t1;
                self.acks += 1;
                (None, Event::Bound(lease))
            }
            _ => {
                self.dropped += 1;
                (None, Event::None)
            }
        }
    }

    /// The lease an OFFER or ACK describes, if it is acceptable.
    fn check(&self, r: &Reply, now: Instant) -> Option<Lease> {
        let server = r.server_id.filter(|s| usable(*s))?;
        let prefix = prefix_of(r.mask?)?;
        let addr = r.your_ip;
        // A server that leases its own address would have renewals sent
        // to ourselves.
        if !address_ok(addr, prefix) || addr == server {
            return None;
        }
        let lease = r.lease?;
        if lease < MIN_LEASE_SECS {
            return None;
        }
        let lease = lease.min(MAX_LEASE_SECS);
        let (mut t1, mut t2) = (r.t1.unwrap_or(lease / 2), r.t2.unwrap_or((lease as u64 * 7 / 8) as u32));
        // A renewal no sooner than half the shortest lease: a T1 of a
        // second would have the client renew every second.
        if !(MIN_LEASE_SECS / 2 <= t1 && t1 < t2 && t2 < lease) {
            (t1, t2) = (lease / 2, (lease as u64 * 7 / 8) as u32);
        }
        let router = r.router.filter(|g| router_ok(addr, prefix, *g));
        Some(Lease {
            addr,
            prefix,
            router,
            dns: r.dns.map(|d| d.filter(|a| dns_ok(addr, prefix, *a))),
            server,
            t1: now + secs(t1),
            t2: now + secs(t2),
            expires: now + secs(lease),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

    /// What the client sent, as a server reads it.
    struct Sent {
        message_type: DhcpMessageType,
        transaction_id: u32,
        client_ip: Ipv4Addr,
        requested_ip: Option<Ipv4Addr>,
        server_identifier: Option<Ipv4Addr>,
    }

    fn sent(m: &Message) -> Sent {
        let p = DhcpPacket::new_checked(&m.payload[..]).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        assert_eq!(r.client_hardware_address.0, MAC);
        Sent {
            message_type: r.message_type,
            transaction_id: r.transaction_id,
            client_ip: r.client_ip,
            requested_ip: r.requested_ip,
            server_identifier: r.server_identifier,
        }
    }

    fn reply(kind: DhcpMessageType, xid: u32, lease: Option<u32>) -> Reply {
        Reply {
            kind,
            xid,
            chaddr: MAC,
            your_ip: ADDR,
            server_id: Some(SERVER),
            mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            router: Some(SERVER),
            dns: [Some(SERVER), None, None],
            lease,
            t1: None,
            t2: None,
        }
    }

    /// Emits `r` as a server would, for `Reply::parse`.
    fn emit(r: &Reply) -> Vec<u8> {
        let dns: Vec<u8> = r.dns.iter().flatten().flat_map(|a| a.octets()).collect();
        let options = [smoltcp::wire::DhcpOption { kind: 6, data: &dns }];
        let repr = DhcpRepr {
            message_type: r.kind,
            transaction_id: r.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(r.chaddr),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: r.your_ip,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: r.router,
            subnet_mask: r.mask,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: None,
            client_identifier: None,
            server_identifier: r.server_id,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: r.lease,
            renew_duration: r.t1,
            rebind_duration: r.t2,
            additional_options: &options,
        };
        let mut b = alloc::vec![0; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut b[..])).unwrap();
        b[0] = 2; // BOOTREPLY
        b
    }

    fn t(s: u64) -> Instant {
        Instant(s * 1_000_000_000)
    }

    /// A client bound at time 0 to ADDR with a lease of `lease` seconds.
    fn bound(lease: u32) -> (Client, u32) {
        let mut c = Client::new(MAC, 42);
        let (m, _) = c.poll(t(0));
        let xid = sent(&m.unwrap()).transaction_id;
        let (m, e) = c.input(&reply(DhcpMessageType::Offer, xid, Some(lease)), t(0));
        assert_eq!(e, Event::None);
        let req = sent(m.as_ref().unwrap());
        assert_eq!(
            (req.message_type, req.requested_ip, req.server_identifier),
            (DhcpMessageType::Request, Some(ADDR), Some(SERVER))
        );
        let (_, e) = c.input(&reply(DhcpMessageType::Ack, xid, Some(lease)), t(0));
        assert!(matches!(e, Event::Bound(l) if l.addr == ADDR && l.prefix == 24 && l.router == Some(SERVER)));
        (c, xid)
    }

    #[test]
    fn a_lease_is_taken_renewed_rebound_and_lost() {
        let (mut c, _) = bound(100);
        let l = c.lease().unwrap();
        assert_eq!((l.t1, l.t2, l.expires, l.dns[0]), (t(50), t(87), t(100), Some(SERVER)));
        assert_eq!(c.poll(t(49)), (None, Event::None));
        // T1: a unicast REQUEST from the leased address, ciaddr set.
        let (m, _) = c.poll(t(50));
        let m = m.unwrap();
        assert_eq!((m.src, m.dst), (ADDR, SERVER));
        let r = sent(&m);
        assert_eq!((r.message_type, r.client_ip, r.requested_ip), (DhcpMessageType::Request, ADDR, None));
        let xid = r.transaction_id;
        // Again after half the time left to T2 (18.5 s).
        assert_eq!(c.poll(t(60)).0, None);
        assert!(c.poll(t(69)).0.is_some());
        // T2: broadcast.
        let (m, _) = c.poll(t(87));
        let m = m.unwrap();
        assert_eq!((m.src, m.dst), (ADDR, Ipv4Addr::BROADCAST));
        assert_ne!(sent(&m).transaction_id, xid, "rebinding is a new exchange");
        let xid = sent(&m).transaction_id;
        // An ACK renews.
        let (_, e) = c.input(&reply(DhcpMessageType::Ack, xid, Some(100)), t(90));
        assert!(matches!(e, Event::Bound(l) if l.expires == t(190)));
        // No answer at all: the lease expires and the client starts again.
        let mut lost = false;
        for s in 190..200 {
            let (_, e) = c.poll(t(s));
            lost |= e == Event::Lost;
        }
        assert!(lost && c.lease().is_none());
        assert_eq!(c.acks, 2);
    }

    #[test]
    fn a_nak_starts_again() {
        let (mut c, _) = bound(100);
        let (m, _) = c.poll(t(50));
        let xid = sent(&m.unwrap()).transaction_id;
        // A NAK from another server, while renewing with ours: ignored.
        let mut nak = reply(DhcpMessageType::Nak, xid, None);
        nak.server_id = Some(Ipv4Addr::new(10, 0, 0, 66));
        assert_eq!(c.input(&nak, t(51)), (None, Event::None));
        nak.server_id = Some(SERVER);
        let (m, e) = c.input(&nak, t(51));
        assert_eq!(e, Event::Lost);
        assert_eq!(sent(&m.unwrap()).message_type, DhcpMessageType::Discover);
    }

    #[test]
    fn hostile_replies_are_dropped_and_counted() {
        let mut c = Client::new(MAC, 7);
        let (m, _) = c.poll(t(0));
        let xid = sent(&m.unwrap()).transaction_id;
        let ok = reply(DhcpMessageType::Offer, xid, Some(3600));
        let bad = [
            Reply { xid: xid ^ 1, ..ok },
            Reply { chaddr: [2, 0, 0, 0, 0, 8], ..ok },
            Reply { kind: DhcpMessageType::Ack, ..ok },
            Reply { lease: Some(0), ..ok },
            Reply { lease: Some(MIN_LEASE_SECS - 1), ..ok },
            Reply { lease: None, ..ok },
            Reply { mask: Some(Ipv4Addr::new(255, 0, 255, 0)), ..ok },
            Reply { mask: None, ..ok },
            Reply { your_ip: Ipv4Addr::BROADCAST, ..ok },
            Reply { your_ip: Ipv4Addr::new(10, 0, 0, 255), ..ok },
            Reply { your_ip: Ipv4Addr::new(224, 0, 0, 1), ..ok },
            Reply { server_id: None, ..ok },
            // The server leasing its own address.
            Reply { your_ip: SERVER, ..ok },
        ];
        for (i, r) in bad.iter().enumerate() {
            assert_eq!(c.input(r, t(0)), (None, Event::None), "reply {i}");
        }
        assert_eq!(c.dropped, bad.len() as u64);
        // An infinite lease is held for 30 days; a router off the subnet
        // is no gateway; T1/T2 out of order are replaced.
        let (m, _) = c.input(&Reply { lease: Some(u32::MAX), ..ok }, t(0));
        assert!(m.is_some());
        // Name servers that are our own address or our subnet's
        // broadcast are none; one beyond the subnet is kept.
        let ack = Reply {
            kind: DhcpMessageType::Ack,
            lease: Some(u32::MAX),
            router: Some(Ipv4Addr::new(192, 0, 2, 1)),
            t1: Some(500),
            t2: Some(100),
            dns: [Some(ADDR), Some(Ipv4Addr::new(10, 0, 0, 255)), Some(Ipv4Addr::new(192, 0, 2, 53))],
            ..ok
        };
        let (_, e) = c.input(&ack, t(0));
        let Event::Bound(l) = e else { panic!("{e:?}") };
        assert_eq!((l.router, l.expires), (None, t(MAX_LEASE_SECS as u64)));
        assert_eq!(l.dns, [None, None, Some(Ipv4Addr::new(192, 0, 2, 53))]);
        assert_eq!(l.t1, t(MAX_LEASE_SECS as u64 / 2));
        // A second ACK for the finished exchange: dropped.
        assert_eq!(c.input(&ack, t(1)), (None, Event::None));
    }

    #[test]
    fn only_the_server_asked_acknowledges_and_renewals_wait_half_the_shortest_lease() {
        let mut c = Client::new(MAC, 9);
        let (m, _) = c.poll(t(0));
        let xid = sent(&m.unwrap()).transaction_id;
        let offer = reply(DhcpMessageType::Offer, xid, Some(3600));
        assert!(c.input(&offer, t(0)).0.is_some());
        // Another server's ACK for the address asked of ours: dropped.
        let other = Reply { kind: DhcpMessageType::Ack, server_id: Some(Ipv4Addr::new(10, 0, 0, 66)), ..offer };
        assert_eq!(c.input(&other, t(0)), (None, Event::None));
        assert_eq!(c.dropped, 1);
        // Ours, with a T1 of one second: renewal comes at half the lease.
        let ack = Reply { kind: DhcpMessageType::Ack, t1: Some(1), t2: Some(3000), ..offer };
        let (_, e) = c.input(&ack, t(0));
        let Event::Bound(l) = e else { panic!("{e:?}") };
        assert_eq!((l.t1, l.t2), (t(1800), t(3150)));
        // The lower bound itself is kept.
        let mut c = Client::new(MAC, 10);
        let (m, _) = c.poll(t(0));
        let xid = sent(&m.unwrap()).transaction_id;
        let offer = reply(DhcpMessageType::Offer, xid, Some(3600));
        c.input(&offer, t(0));
        let ack = Reply { kind: DhcpMessageType::Ack, t1: Some(MIN_LEASE_SECS / 2), t2: Some(3000), ..offer };
        let Event::Bound(l) = c.input(&ack, t(0)).1 else { panic!() };
        assert_eq!(l.t1, t(u64::from(MIN_LEASE_SECS / 2)));
    }

    #[test]
    fn replies_parse_and_garbage_does_not() {
        let ok = reply(DhcpMessageType::Offer, 1234, Some(60));
        assert_eq!(Reply::parse(&emit(&ok)), Some(ok));
        let mut b = emit(&ok);
        b[0] = 1; // a request, not a reply
        assert_eq!(Reply::parse(&b), None);
        // Truncations, and random bytes, never panic.
        let good = emit(&ok);
        for n in 0..good.len() {
            let _ = Reply::parse(&good[..n]);
        }
        let mut x = 99u64;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            let _ = Reply::parse(&b);
        }
    }

    #[test]
    fn requesting_gives_up_and_selecting_backs_off() {
        let mut c = Client::new(MAC, 3);
        let times: Vec<u64> = (0..200).filter(|&s| c.poll(t(s)).0.is_some()).collect();
        assert_eq!(times[..7], [0, 1, 3, 7, 15, 31, 63]);
        let mut c = Client::new(MAC, 3);
        let (m, _) = c.poll(t(0));
        let xid = sent(&m.unwrap()).transaction_id;
        c.input(&reply(DhcpMessageType::Offer, xid, Some(60)), t(0));
        // Three more REQUESTs, then a DISCOVER.
        let kinds: Vec<_> = (1..20).filter_map(|s| c.poll(t(s)).0).map(|m| sent(&m).message_type).take(4).collect();
        assert_eq!(
            kinds,
            [DhcpMessageType::Request, DhcpMessageType::Request, DhcpMessageType::Request, DhcpMessageType::Discover]
        );
    }
}
