//! The DHCP server (`mirage-dhcpd`) fed a sequence of messages, as any
//! host on the link may send them: the input is a series of messages, each
//! a byte of seconds to let pass and a 16-bit length before it. Whatever
//! arrives, the server never holds more records than its pool and
//! reservations have addresses, every record is one of those addresses,
//! no address is bound to two clients, and every reply parses back as a
//! DHCP reply to the message's transaction.

use std::net::Ipv4Addr;

use mirage_dhcpd::{Config, Server, State};
use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr};

const POOL: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 0, 107));
const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 7);

/// The server every input starts with.
pub fn server() -> Server {
    Server::new(Config {
        server: Ipv4Addr::new(10, 1, 0, 1),
        prefix: 24,
        pool: POOL,
        router: Some(Ipv4Addr::new(10, 1, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 1, 0, 53)],
        lease_secs: 120,
        reservations: vec![([2, 0, 0, 0, 0, 0x0c], RESERVED)],
    })
    .expect("a valid configuration")
}

/// Splits `data` into (seconds to wait, message) pairs.
pub fn messages(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [wait, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        out.push((*wait, &tail[..len]));
        rest = &tail[len..];
    }
    out
}

/// Frames `msgs` as [`messages`] reads them.
pub fn frame(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (wait, m) in msgs {
        out.push(*wait);
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

pub fn run(data: &[u8]) {
    let mut s = server();
    let mut now = 0u64;
    let pool = u32::from(POOL.0)..=u32::from(POOL.1);
    for (wait, msg) in messages(data) {
        now += u64::from(wait);
        let xid = DhcpPacket::new_checked(msg).ok().map(|p| p.transaction_id());
        if let Some(reply) = s.input(msg, now) {
            let p = DhcpPacket::new_checked(&reply.payload[..]).expect("a reply long enough to parse");
            let r = DhcpRepr::parse(&p).expect("a reply that parses");
            assert!(matches!(r.message_type, DhcpMessageType::Offer | DhcpMessageType::Ack | DhcpMessageType::Nak));
            assert_eq!(Some(r.transaction_id), xid, "a reply to another transaction");
        }
        let leases: Vec<_> = s.leases().collect();
        assert!(leases.len() <= pool.clone().count() + 1, "{} records", leases.len());
        for (a, l) in &leases {
            assert!(pool.contains(&u32::from(*a)) || *a == RESERVED, "a record of {a}, outside the pool");
            if matches!(l.state, State::Bound(_)) {
                assert_eq!(leases.iter().filter(|(b, _)| b == a).count(), 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The seeds reach the server's paths, not only its parser: the lease
    /// seed is offered, acknowledged, renewed, declined and released.
    #[test]
    fn the_seeds_are_served() {
        for (target, name, bytes) in crate::seeds::all() {
            if target != "dhcpd" {
                continue;
            }
            let mut s = super::server();
            let mut now = 0;
            for (wait, m) in super::messages(&bytes) {
                now += u64::from(wait);
                s.input(m, now);
            }
            let st = s.stats();
            eprintln!("{name}: {st:?}");
            assert_eq!(st.dropped, 0, "{name}: {st:?}");
            assert!(st.offers > 0, "{name}: {st:?}");
            if name.starts_with("lease") {
                assert!(st.acks >= 3 && st.declines == 1 && st.releases == 1, "{name}: {st:?}");
            }
        }
    }
}
