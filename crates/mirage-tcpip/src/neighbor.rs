//! The neighbour-cache policy: which ARP and NDP packets may reach the
//! engine, whose cache takes the sender's hardware address from any that
//! is aimed at this host.
//!
//! * A hardware address that is zero, broadcast or multicast is never
//!   accepted, in an ARP sender field or an NDP link-layer option.
//! * A reply (ARP reply, neighbour advertisement) is *solicited* when this
//!   host asked for that address in the last few seconds. A solicited
//!   reply may create an entry or change one.
//! * An unsolicited reply, or a request (whose sender the engine also
//!   learns), may refresh an entry with the same hardware address. A
//!   request may create an entry that does not exist, the gateway's too
//!   (refusing it would leave a gateway that speaks first unanswered), but
//!   only [`REQUEST_BUDGET`] live entries at once: past that, the adapter
//!   answers a request from an unknown sender itself and the engine never
//!   sees it, so that made-up senders cannot flush the engine's 16
//!   entries. Nothing unsolicited changes the hardware address of a live
//!   entry.
//! * Gratuitous ARP (sender and target address the same) is not aimed at
//!   this host and the engine ignores it: it changes nothing.
//!
//! * The cache is bounded (256 entries). When it is full of live entries,
//!   an answer to this host's own question still gets in: it takes the
//!   place of an entry a request made (the one that expires first), never
//!   of a gateway's or another answer's. So a host on the link that sends
//!   requests from many made-up addresses, and keeps sending them, can
//!   fill the cache with them but cannot keep this host from learning the
//!   neighbours it asks for, its gateway first.
//!
//! So a host whose hardware address really changes is reached again when
//! the old entry expires (60 s) and the engine asks anew. Entries are
//! followed here as the engine makes them (60 s from the last fill, or
//! from the last IP packet from that address and hardware address); when
//! the engine forgets one sooner (its cache holds 16) it asks, and the
//! answer is solicited.

use core::net::IpAddr;

use mirage_runtime::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, NdiscRepr};

use crate::table::Table;
use crate::wire;

/// How long the engine keeps an entry (smoltcp's `ENTRY_LIFETIME`).
const LIFETIME: Duration = Duration::from_secs(60);
/// How long after asking a reply counts as solicited.
const ASKED: Duration = Duration::from_secs(3);

/// The most live entries requests may have made in the engine's cache,
/// which holds 16 and, when full, evicts whichever expires first: past
/// this, the adapter answers a request from an unknown sender itself and
/// the engine never sees it, so that requests from made-up senders cannot
/// flush the gateway and the neighbours this host asked for.
pub(crate) const REQUEST_BUDGET: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An ARP request or neighbour solicitation aimed at this host.
    Request,
    /// An ARP reply or neighbour advertisement.
    Reply,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    mac: [u8; 6],
    until: Instant,
    /// Made by an answer to this host's question (not by a request).
    asked: bool,
}

pub(crate) struct Neighbors {
    known: Table<IpAddr, Known>,
    asked: Table<IpAddr, Instant>,
    pub gateways: [Option<IpAddr>; 2],
}

impl core::fmt::Debug for Neighbors {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Neighbors").field("known", &self.known).field("gateways", &self.gateways).finish()
    }
}

/// Whether a hardware address can be a neighbour's.
pub(crate) fn unicast(mac: [u8; 6]) -> bool {
    mac != [0; 6] && mac[0] & 1 == 0
}

impl Neighbors {
    pub(crate) fn new(key: (u64, u64)) -> Neighbors {
        Neighbors { known: Table::new(key, 256), asked: Table::new((key.1, key.0), 256), gateways: [None; 2] }
    }

    /// Whether a packet telling that `ip` is at `mac` may reach the engine.
    pub(crate) fn judge(&mut self, ip: IpAddr, mac: [u8; 6], kind: Kind, now: Instant) -> bool {
        if !unicast(mac) {
            return false;
        }
        let until = now + LIFETIME;
        if kind == Kind::Reply && self.asked.get(&ip).is_some_and(|&t| now < t) {
            self.asked.remove(&ip);
            return self.learn(ip, mac, now, true);
        }
        match self.known.get_mut(&ip) {
            Some(k) if now < k.until => {
                if k.mac != mac {
                    return false;
                }
                k.until = until;
                true
            }
            // A request may create an entry, the gateway's too: dropping
            // the gateway's requests would leave a host that speaks first
            // unanswered. Once live, no request or unsolicited reply
            // changes it.
            _ => kind == Kind::Request && self.learn(ip, mac, now, false),
        }
    }

    /// Whether a request from `ip` should reach the engine: it has a live
    /// entry here (the request refreshes it), or the entries requests made
    /// are fewer than [`REQUEST_BUDGET`]. One pass over the table, only
    /// for a sender not known.
    pub(crate) fn request_fits(&self, ip: IpAddr, now: Instant) -> bool {
        if self.lookup(ip, now).is_some() {
            return true;
        }
        let gateways = self.gateways;
        let made = self
            .known
            .iter()
            .filter(|(a, k)| !k.asked && now < k.until && !gateways.contains(&Some(**a)))
            .take(REQUEST_BUDGET)
            .count();
        made < REQUEST_BUDGET
    }

    /// Extends the entry of `ip` if it is live at `mac`: the engine
    /// extends its own on every unicast IP packet from that neighbour, and
    /// an entry followed here for less long would let a request from
    /// anyone change a neighbour the engine still uses.
    pub(crate) fn refresh(&mut self, ip: IpAddr, mac: [u8; 6], now: Instant) {
        if let Some(k) = self.known.get_mut(&ip).filter(|k| k.mac == mac && now < k.until) {
            k.until = now + LIFETIME;
        }
    }

    /// Follows an entry the engine makes (`asked`: from an answer to this
    /// host's question); false when it cannot be followed (then the engine
    /// must not make it).
    fn learn(&mut self, ip: IpAddr, mac: [u8; 6], now: Instant, asked: bool) -> bool {
        if self.known.is_full() {
            self.known.retain(|_, k| now < k.until);
        }
        if asked && self.known.is_full() && !self.known.contains(&ip) {
            // Room for what this host asked about: a request's entry gives
            // way, never a gateway's. At most one pass over the 256
            // entries, and only for an answer that was asked for.
            let gateways = self.gateways;
            let give_way = self
                .known
                .iter()
                .filter(|(a, k)| !k.asked && !gateways.contains(&Some(**a)))
                .min_by_key(|(_, k)| k.until)
                .map(|(a, _)| *a);
            if let Some(a) = give_way {
                self.known.remove(&a);
            }
        }
        self.known.insert(ip, Known { mac, until: now + LIFETIME, asked }).is_ok()
    }

    /// Notes the ARP requests and neighbour solicitations this host sends.
    pub(crate) fn outgoing(&mut self, frame: &[u8], now: Instant) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else { return };
        let target = match eth.ethertype() {
            EthernetProtocol::Arp => match wire::parse_arp(eth.payload()) {
                Ok(arp) if arp.op == 1 => IpAddr::V4(arp.target_ip),
                _ => return,
            },
            EthernetProtocol::Ipv6 => {
                let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else { return };
                if ip.next_header() != IpProtocol::Icmpv6 {
                    return;
                }
                match ndisc(ip.payload()) {
                    Some(NdiscRepr::NeighborSolicit { target_addr, .. }) => IpAddr::V6(target_addr),
                    _ => return,
                }
            }
            _ => return,
        };
        if self.asked.is_full() {
            self.asked.retain(|_, t| now < *t);
        }
        let _ = self.asked.insert(target, now + ASKED);
    }

    /// Whether the live entry of `ip` ends within `within` and nobody
    /// asked for `ip` lately: time to ask again while the entry is still
    /// used, so that a neighbour in use never expires under its traffic
    /// (the answer, solicited, extends it; Linux's STALE and PROBE states).
    pub(crate) fn expiring(&self, ip: IpAddr, now: Instant, within: Duration) -> bool {
        self.known.get(&ip).is_some_and(|k| now < k.until && k.until < now + within)
            && self.asked.get(&ip).is_none_or(|&t| now >= t)
    }

    /// The hardware address of `ip`, while its entry lives (the IP layer
    /// keeps no other cache).
    pub(crate) fn lookup(&self, ip: IpAddr, now: Instant) -> Option<[u8; 6]> {
        self.known.get(&ip).filter(|k| now < k.until).map(|k| k.mac)
    }

    /// Neighbours known now (expired entries included until the next
    /// [`Neighbors::expire`]).
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    /// Forgets what expired.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.known.retain(|_, k| now < k.until);
        self.asked.retain(|_, t| now < *t);
        self.known.shrink();
        self.asked.shrink();
    }
}

/// The neighbour discovery message in an ICMPv6 packet, if it is one.
pub(crate) fn ndisc(icmp: &[u8]) -> Option<NdiscRepr<'_>> {
    let packet = Icmpv6Packet::new_checked(icmp).ok()?;
    // Received checksums were checked by `wire::parse`; sent ones are
    // the engine's own. Only the message's shape matters here.
    let any = core::net::Ipv6Addr::UNSPECIFIED;
    match Icmpv6Repr::parse(&any, &any, &packet, &smoltcp::phy::ChecksumCapabilities::ignored()).ok()? {
        Icmpv6Repr::Ndisc(n) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    const GW: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    const M1: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const M2: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn the_policy() {
        let t = Instant(1_000_000_000);
        let mut n = Neighbors::new((1, 2));
        n.gateways[0] = Some(GW);
        // Nonsense addresses, whatever the kind.
        for bad in [[0; 6], [0xff; 6], [1, 0, 0x5e, 0, 0, 1], [0x33, 0x33, 0, 0, 0, 1]] {
            assert!(!n.judge(HOST, bad, Kind::Request, t));
            assert!(!n.judge(HOST, bad, Kind::Reply, t));
        }
        // A request creates, an unsolicited reply does not.
        assert!(!n.judge(HOST, M1, Kind::Reply, t));
        assert!(n.judge(HOST, M1, Kind::Request, t));
        // Refresh with the same address; no change to another.
        assert!(n.judge(HOST, M1, Kind::Reply, t));
        assert!(!n.judge(HOST, M2, Kind::Request, t));
        assert!(!n.judge(HOST, M2, Kind::Reply, t));
        // The gateway: learnt from its request; then nothing unsolicited
        // changes it.
        assert!(n.judge(GW, M1, Kind::Request, t));
        assert!(!n.judge(GW, M2, Kind::Request, t));
        assert!(!n.judge(GW, M2, Kind::Reply, t));
        let mut arp = alloc::vec![0xffu8; 6];
        arp.extend_from_slice(&M2);
        arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&M2);
        arp.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        n.outgoing(&arp, t);
        assert!(n.judge(GW, M1, Kind::Reply, t + Duration::from_secs(1)));
        // A second, unsolicited reply may not move it.
        assert!(!n.judge(GW, M2, Kind::Reply, t + Duration::from_secs(2)));
        // Once the entry has expired, a request may create it again.
        let later = t + Duration::from_secs(120);
        assert!(n.judge(HOST, M2, Kind::Request, later));
        assert!(n.judge(GW, M2, Kind::Request, later));
    }

    /// The ARP request this host would send for `target`.
    fn asking(target: Ipv4Addr) -> alloc::vec::Vec<u8> {
        let mut arp = alloc::vec![0xffu8; 6];
        arp.extend_from_slice(&M2);
        arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&M2);
        arp.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0]);
        arp.extend_from_slice(&target.octets());
        arp
    }

    #[test]
    fn requests_from_made_up_senders_never_crowd_out_an_answer() {
        let t = Instant(1_000_000_000);
        let mut n = Neighbors::new((1, 2));
        n.gateways[0] = Some(GW);
        assert!(n.judge(GW, M1, Kind::Request, t));
        // 255 more senders fill the cache, and keep it full.
        let fake = |i: u32| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i));
        for i in 0..255 {
            assert!(n.judge(fake(i), [2, 0, 0, 1, 0, i as u8], Kind::Request, t));
        }
        assert!(!n.judge(fake(999), M2, Kind::Request, t), "a full cache takes no more requests");
        // Answers to this host's questions still get in, each in place of
        // a request's entry, the gateway's kept: as many as the cache holds.
        let host = |i: u32| Ipv4Addr::new(10, 0, 1, i as u8);
        let later = t + Duration::from_secs(1);
        for i in 0..255 {
            n.outgoing(&asking(host(i)), later);
            assert!(n.judge(IpAddr::V4(host(i)), M1, Kind::Reply, later), "answer {i}");
        }
        assert_eq!(n.len(), 256);
        assert_eq!(n.lookup(GW, later), Some(M1));
        assert!((0..255).all(|i| n.lookup(fake(i), later).is_none()));
        // Full of answers and the gateway, an answer finds no room: what
        // this host asked about is never given up for another.
        n.outgoing(&asking(Ipv4Addr::new(10, 0, 2, 1)), later);
        assert!(!n.judge(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), M1, Kind::Reply, later));
        assert!((0..255).all(|i| n.lookup(IpAddr::V4(host(i)), later) == Some(M1)));
    }
}
