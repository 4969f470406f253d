//! How many handshakes one host may start: a server answers a ClientHello
//! with a key exchange and a signature (an RSA 2048 signature is about
//! 5 ms of a core), while the client need do no work at all, replaying
//! one captured ClientHello. So each host (an IPv4 address, an IPv6 /64)
//! gets a rate of new connections, with a burst, and the connections
//! beyond it are reset as they are accepted, before any crypto.
//!
//! The rate is kept as the generic cell rate algorithm keeps it: one
//! instant per host, when its allowance is next whole
//! ("theoretical arrival time"); a connection is allowed if that instant
//! is at most `burst - 1` intervals away, and moves it one interval on.
//! Hosts are kept in a fixed table of [`SLOTS`] slots, two candidates a
//! host (by a hash keyed at random, so that peers cannot aim at a slot);
//! a host with neither takes the slot whose allowance comes back first,
//! which a host within its rate has already got back. So the table never
//! grows, and a host over its rate keeps its slot unless a newcomer finds
//! both its candidates held by hosts over their rate (it then takes the
//! one nearer its allowance, whose host starts afresh when it returns:
//! many flooding hosts at once can win back a burst this way).

use alloc::vec::Vec;
use core::net::IpAddr;

/// Slots in the table of hosts: hosts that started a connection within
/// the last `burst` intervals each hold one.
pub const SLOTS: usize = 1024;

/// The rate of new connections (TLS handshakes) one host may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimit {
    /// Connections a second, on average (0: no limit).
    pub per_second: u32,
    /// Connections at once, after a pause (at least 1).
    pub burst: u32,
}

impl HandshakeLimit {
    /// 50 a second and 100 at once: one host cannot take more than about
    /// a quarter of a core with RSA 2048 handshakes, or 5% with ECDSA
    /// P-256, and a browser's handful of connections is far within it.
    pub const DEFAULT: HandshakeLimit = HandshakeLimit { per_second: 50, burst: 100 };
    /// No limit.
    pub const NONE: HandshakeLimit = HandshakeLimit { per_second: 0, burst: 1 };
}

impl Default for HandshakeLimit {
    fn default() -> HandshakeLimit {
        HandshakeLimit::DEFAULT
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The host's keyed hash (0: empty).
    host: u64,
    /// When its allowance is next whole, in nanoseconds.
    tat: u64,
    /// Whether its last connection was refused (so a refusal is logged
    /// once a run of them).
    refusing: bool,
}

/// The verdict on one new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Within the host's rate.
    Yes,
    /// Beyond it; `first` for the first of a run of refusals.
    No { first: bool },
}

/// The hosts' allowances.
#[derive(Debug)]
pub(crate) struct Hosts {
    slots: Vec<Slot>,
    key: [u64; 2],
    interval: u64,
    tolerance: u64,
}

/// The folded multiply (as foldhash's): keyed, peers cannot aim at a slot.
fn mix(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hosts {
    /// The table for `limit`, keyed by `seed`; `None` when the memory for
    /// it cannot be had.
    pub fn new(limit: HandshakeLimit, seed: u64) -> Option<Hosts> {
        let mut slots = Vec::new();
        if limit.per_second > 0 {
            slots.try_reserve_exact(SLOTS).ok()?;
            slots.resize(SLOTS, Slot { host: 0, tat: 0, refusing: false });
        }
        let interval = 1_000_000_000 / u64::from(limit.per_second.max(1));
        Some(Hosts {
            slots,
            key: [seed | 1, mix(seed, 0x9e37_79b9_7f4a_7c15) | 1],
            interval,
            tolerance: interval * u64::from(limit.burst.max(1) - 1),
        })
    }

    fn hash(&self, peer: IpAddr) -> u64 {
        let (tag, id) = match peer {
            IpAddr::V4(a) => (4, u64::from(u32::from(a))),
            // A host may use any address of its /64.
            IpAddr::V6(a) => (6, (u128::from(a) >> 64) as u64),
        };
        mix(mix(id ^ self.key[0], tag ^ self.key[1]), self.key[0]).max(1)
    }

    /// Whether there is a limit at all.
    pub fn limits(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Whether `peer` may start a connection at `now_ns`.
    pub fn admit(&mut self, peer: IpAddr, now_ns: u64) -> Admit {
        if self.slots.is_empty() {
            return Admit::Yes;
        }
        let h = self.hash(peer);
        let a = (h as usize) & (SLOTS - 1);
        let b = a ^ (1 + ((h >> 32) as usize & (SLOTS - 2)));
        let i = if self.slots[a].host == h {
            a
        } else if self.slots[b].host == h {
            b
        } else {
            // The slot whose allowance comes back first: a host within its
            // rate has it back already.
            let i = if self.slots[a].tat <= self.slots[b].tat { a } else { b };
            self.slots[i] = Slot { host: h, tat: 0, refusing: false };
            i
        };
        let s = &mut self.slots[i];
        let tat = s.tat.max(now_ns);
        if tat - now_ns > self.tolerance {
            let first = !s.refusing;
            s.refusing = true;
            return Admit::No { first };
        }
        s.tat = tat + self.interval;
        s.refusing = false;
        Admit::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    const MS: u64 = 1_000_000;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_burst_then_the_rate_then_the_burst_again_after_a_pause() {
        let mut h = Hosts::new(HandshakeLimit { per_second: 10, burst: 5 }, 7).unwrap();
        let p = v4(1);
        let admitted = |h: &mut Hosts, at: u64, n: usize| (0..n).filter(|_| h.admit(p, at) == Admit::Yes).count();
        assert_eq!(admitted(&mut h, 0, 20), 5, "the burst");
        assert_eq!(h.admit(p, 0), Admit::No { first: false }, "a run of refusals is logged once");
        // One interval (100 ms) later, one more.
        assert_eq!(admitted(&mut h, 100 * MS, 20), 1);
        // Over a second at the rate: ten.
        let mut n = 0;
        for ms in (110..=1100).step_by(10) {
            n += admitted(&mut h, ms * MS, 1);
        }
        assert_eq!(n, 10);
        // After a pause as long as the burst takes, the burst again.
        assert_eq!(admitted(&mut h, 2_000 * MS, 20), 5);
        // Another host was never held back by this one.
        assert_eq!(h.admit(v4(2), 2_000 * MS), Admit::Yes);
    }

    #[test]
    fn one_refusal_in_a_run_is_the_first() {
        let mut h = Hosts::new(HandshakeLimit { per_second: 1, burst: 1 }, 7).unwrap();
        let p = v4(1);
        assert_eq!(h.admit(p, 0), Admit::Yes);
        assert_eq!(h.admit(p, 0), Admit::No { first: true });
        assert_eq!(h.admit(p, MS), Admit::No { first: false });
        assert_eq!(h.admit(p, 1_000 * MS), Admit::Yes);
        assert_eq!(h.admit(p, 1_000 * MS), Admit::No { first: true });
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64() {
        let mut h = Hosts::new(HandshakeLimit { per_second: 1, burst: 2 }, 7).unwrap();
        let a = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, n));
        assert_eq!(h.admit(a(1), 0), Admit::Yes);
        assert_eq!(h.admit(a(2), 0), Admit::Yes);
        assert_eq!(h.admit(a(3), 0), Admit::No { first: true });
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(h.admit(other, 0), Admit::Yes);
    }

    /// Twice as many hosts as slots, each within its rate: none is refused,
    /// and a host over its rate among them stays held to it (its slot is
    /// never the one given away while its allowance is out).
    #[test]
    fn many_hosts_within_their_rate_are_never_refused() {
        let mut h = Hosts::new(HandshakeLimit { per_second: 10, burst: 2 }, 99).unwrap();
        let flooder = v4(0x00ff_ffff);
        let (mut flood_admitted, mut t) = (0, 0);
        for round in 0..50u64 {
            for n in 0..(SLOTS as u32 * 2) {
                t = round * 1_000 * MS + u64::from(n) * 100_000;
                assert_eq!(h.admit(v4(n), t), Admit::Yes, "host {n} in round {round}");
                if n % 64 == 0 && h.admit(flooder, t) == Admit::Yes {
                    flood_admitted += 1;
                }
            }
        }
        // 50 s at 10 a second, and the burst.
        assert!(flood_admitted <= 50 * 10 + 2, "{flood_admitted} admitted of the flooding host");
        let _ = t;
    }

    #[test]
    fn no_limit_admits_everything_and_holds_nothing() {
        let mut h = Hosts::new(HandshakeLimit::NONE, 1).unwrap();
        assert!(h.slots.is_empty());
        assert!((0..10_000).all(|_| h.admit(v4(1), 0) == Admit::Yes));
    }
}
