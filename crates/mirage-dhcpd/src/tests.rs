//! The server against clients made of smoltcp's DHCP representation, as
//! the stack's own client builds its messages.

use alloc::vec::Vec;
use core::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress};

use super::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
const R: [u8; 6] = [2, 0, 0, 0, 0, 0xc];

fn config() -> Config {
    Config {
        server: SERVER,
        prefix: 24,
        pool: (Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 0, 109)),
        router: Some(SERVER),
        dns: vec![Ipv4Addr::new(10, 1, 0, 53), Ipv4Addr::new(9, 9, 9, 9)],
        lease_secs: 3600,
        reservations: vec![(R, Ipv4Addr::new(10, 1, 0, 7))],
    }
}

fn server() -> Server {
    Server::new(config()).unwrap()
}

fn message(kind: DhcpMessageType, mac: [u8; 6], xid: u32) -> DhcpRepr<'static> {
    DhcpRepr {
        message_type: kind,
        transaction_id: xid,
        secs: 0,
        client_hardware_address: EthernetAddress(mac),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: Some(EthernetAddress(mac)),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 51]),
        dns_servers: None,
        max_size: Some(1500),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    }
}

fn bytes(m: &DhcpRepr<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut DhcpPacket::new_unchecked(&mut buf[..])).unwrap();
    buf
}

/// What a reply says, parsed back.
#[derive(Debug)]
struct Answer {
    kind: DhcpMessageType,
    xid: u32,
    yiaddr: Ipv4Addr,
    server: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    lease: Option<u32>,
    renew: Option<u32>,
    rebind: Option<u32>,
    dns: Vec<Ipv4Addr>,
    to: Destination,
}

fn answer(r: Reply) -> Answer {
    let p = DhcpPacket::new_checked(&r.payload[..]).unwrap();
    let m = DhcpRepr::parse(&p).unwrap();
    Answer {
        kind: m.message_type,
        xid: m.transaction_id,
        yiaddr: m.your_ip,
        server: m.server_identifier,
        mask: m.subnet_mask,
        router: m.router,
        lease: m.lease_duration,
        renew: m.renew_duration,
        rebind: m.rebind_duration,
        dns: m.dns_servers.map(|d| d.iter().copied().collect()).unwrap_or_default(),
        to: r.to,
    }
}

fn send(s: &mut Server, m: &DhcpRepr<'_>, now: u64) -> Option<Answer> {
    s.input(&bytes(m), now).map(answer)
}

/// A DECLINE of `a` by `mac`, to this server.
fn decline(mac: [u8; 6], a: Ipv4Addr, xid: u32) -> DhcpRepr<'static> {
    let mut m = message(DhcpMessageType::Decline, mac, xid);
    m.requested_ip = Some(a);
    m.server_identifier = Some(SERVER);
    m
}

/// DISCOVER, OFFER, REQUEST, ACK: the address bound.
fn lease(s: &mut Server, mac: [u8; 6], now: u64) -> Ipv4Addr {
    let offer = send(s, &message(DhcpMessageType::Discover, mac, 1), now).expect("an offer");
    assert_eq!(offer.kind, DhcpMessageType::Offer);
    let mut req = message(DhcpMessageType::Request, mac, 2);
    req.requested_ip = Some(offer.yiaddr);
    req.server_identifier = offer.server;
    let ack = send(s, &req, now).expect("an ack");
    assert_eq!(ack.kind, DhcpMessageType::Ack, "{ack:?}");
    assert_eq!(ack.yiaddr, offer.yiaddr);
    ack.yiaddr
}

#[test]
fn a_client_gets_a_lease_with_the_options() {
    let mut s = server();
    let offer = send(&mut s, &message(DhcpMessageType::Discover, A, 77), 0).unwrap();
    assert_eq!(offer.kind, DhcpMessageType::Offer);
    assert_eq!(offer.xid, 77);
    assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 1, 0, 100));
    assert_eq!(offer.server, Some(SERVER));
    assert_eq!(offer.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(offer.router, Some(SERVER));
    assert_eq!(offer.dns, vec![Ipv4Addr::new(10, 1, 0, 53), Ipv4Addr::new(9, 9, 9, 9)]);
    assert_eq!((offer.lease, offer.renew, offer.rebind), (Some(3600), Some(1800), Some(3150)));
    assert_eq!(offer.to, Destination::Broadcast);
    assert_eq!(lease(&mut s, A, 1), Ipv4Addr::new(10, 1, 0, 100));
    assert_eq!(lease(&mut s, B, 1), Ipv4Addr::new(10, 1, 0, 101));
    let l: Vec<_> = s.leases().collect();
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|(_, l)| l.state == State::Bound(3601)), "{l:?}");
    assert_eq!((s.stats().offers, s.stats().acks), (3, 2));
}

#[test]
fn a_client_keeps_its_address_and_asks_for_one() {
    let mut s = server();
    let a = lease(&mut s, A, 0);
    // Its DISCOVER after a reboot offers the same address again.
    assert_eq!(send(&mut s, &message(DhcpMessageType::Discover, A, 3), 5).unwrap().yiaddr, a);
    // A new client asking for a free address gets it.
    let mut d = message(DhcpMessageType::Discover, B, 4);
    d.requested_ip = Some(Ipv4Addr::new(10, 1, 0, 105));
    assert_eq!(send(&mut s, &d, 5).unwrap().yiaddr, Ipv4Addr::new(10, 1, 0, 105));
    // Asking for a taken or foreign one gets a free one instead.
    for wanted in [a, Ipv4Addr::new(192, 168, 1, 5), Ipv4Addr::new(10, 1, 0, 7)] {
        let mut d = message(DhcpMessageType::Discover, [2, 0, 0, 0, 1, 1], 5);
        d.requested_ip = Some(wanted);
        let got = send(&mut s, &d, 5).unwrap().yiaddr;
        assert!(got != wanted && got != a, "{wanted} -> {got}");
    }
}

#[test]
fn reservations_are_kept_for_their_client() {
    let mut s = server();
    assert_eq!(lease(&mut s, R, 0), Ipv4Addr::new(10, 1, 0, 7));
    let mut d = message(DhcpMessageType::Discover, R, 1);
    d.requested_ip = Some(Ipv4Addr::new(10, 1, 0, 100));
    assert_eq!(send(&mut s, &d, 1).unwrap().yiaddr, Ipv4Addr::new(10, 1, 0, 7));
    // Another client asking for the reserved address is refused it.
    let mut req = message(DhcpMessageType::Request, A, 2);
    req.requested_ip = Some(Ipv4Addr::new(10, 1, 0, 7));
    assert_eq!(send(&mut s, &req, 1).unwrap().kind, DhcpMessageType::Nak);
}

#[test]
fn renewal_is_unicast_and_extends_the_lease() {
    let mut s = server();
    let a = lease(&mut s, A, 0);
    let mut renew = message(DhcpMessageType::Request, A, 9);
    renew.client_ip = a;
    let ack = send(&mut s, &renew, 1800).unwrap();
    assert_eq!((ack.kind, ack.yiaddr, ack.to), (DhcpMessageType::Ack, a, Destination::Unicast(a, A)));
    assert_eq!(s.leases().find(|(x, _)| *x == a).unwrap().1.state, State::Bound(5400));
    // Renewing an address held by another client is refused.
    let mut theft = message(DhcpMessageType::Request, B, 10);
    theft.client_ip = a;
    assert_eq!(send(&mut s, &theft, 1801).unwrap().kind, DhcpMessageType::Nak);
    assert_eq!(s.stats().naks, 1);
}

#[test]
fn expired_leases_go_back_to_the_pool() {
    let mut s = server();
    let a = lease(&mut s, A, 0);
    // Offers not taken up lapse after OFFER_SECS.
    let b = send(&mut s, &message(DhcpMessageType::Discover, B, 1), 0).unwrap().yiaddr;
    s.expire(OFFER_SECS);
    assert!(s.leases().all(|(x, _)| x != b));
    s.expire(3599);
    assert_eq!(s.leases().count(), 1);
    s.expire(3600);
    assert_eq!(s.leases().count(), 0);
    // Now B may have A's old address.
    let mut d = message(DhcpMessageType::Discover, B, 2);
    d.requested_ip = Some(a);
    assert_eq!(send(&mut s, &d, 3601).unwrap().yiaddr, a);
}

#[test]
fn a_declined_address_is_kept_out_and_a_released_one_comes_back() {
    let mut s = server();
    let a = lease(&mut s, A, 0);
    assert!(send(&mut s, &decline(A, a, 3), 1).is_none());
    assert_eq!(s.stats().declines, 1);
    let b = lease(&mut s, A, 2);
    assert_ne!(a, b, "the declined address was offered again");
    // Nobody gets it until DECLINED_SECS have passed.
    let mut d = message(DhcpMessageType::Discover, B, 4);
    d.requested_ip = Some(a);
    assert_ne!(send(&mut s, &d, 3).unwrap().yiaddr, a);
    let mut d = message(DhcpMessageType::Discover, [2, 0, 0, 0, 2, 2], 4);
    d.requested_ip = Some(a);
    assert_eq!(send(&mut s, &d, 1 + DECLINED_SECS).unwrap().yiaddr, a);
    // A release frees the lease at once; a forged one (another client's
    // hardware address) does not.
    let mut forged = message(DhcpMessageType::Release, B, 5);
    forged.client_ip = b;
    forged.server_identifier = Some(SERVER);
    send(&mut s, &forged, 700);
    assert!(s.leases().any(|(x, _)| x == b));
    let mut release = message(DhcpMessageType::Release, A, 5);
    release.client_ip = b;
    release.server_identifier = Some(SERVER);
    assert!(send(&mut s, &release, 700).is_none());
    assert!(s.leases().all(|(x, _)| x != b));
    assert_eq!(s.stats().releases, 1);
}

#[test]
fn one_client_cannot_bind_the_pool_address_by_address() {
    // A host under its own hardware address asks for each address in turn
    // as a rebooting client would (no server identifier): each is granted,
    // and each gives back the one before.
    let mut s = server();
    for i in 100..110u8 {
        let mut req = message(DhcpMessageType::Request, A, u32::from(i));
        req.requested_ip = Some(Ipv4Addr::new(10, 1, 0, i));
        assert_eq!(send(&mut s, &req, 1).unwrap().kind, DhcpMessageType::Ack);
        let held: Vec<_> = s.leases().filter(|(_, l)| l.client == A).map(|(a, _)| a).collect();
        assert_eq!(held, [Ipv4Addr::new(10, 1, 0, i)]);
    }
    // An offer it held goes back too.
    let offered = send(&mut s, &message(DhcpMessageType::Discover, B, 1), 2).unwrap().yiaddr;
    let mut req = message(DhcpMessageType::Request, B, 2);
    req.requested_ip = Some(if offered == Ipv4Addr::new(10, 1, 0, 100) {
        Ipv4Addr::new(10, 1, 0, 101)
    } else {
        Ipv4Addr::new(10, 1, 0, 100)
    });
    assert_eq!(send(&mut s, &req, 2).unwrap().kind, DhcpMessageType::Ack);
    assert_eq!(s.leases().filter(|(_, l)| l.client == B).count(), 1);
    // Eight addresses are left for others.
    for i in 0..8u8 {
        lease(&mut s, [2, 0, 0, 0, 4, i], 3);
    }
}

#[test]
fn offers_cannot_be_declined_and_declines_keep_most_of_the_pool() {
    let mut s = server();
    // An offer, never granted, declined: nothing happens.
    let offered = send(&mut s, &message(DhcpMessageType::Discover, A, 1), 0).unwrap().yiaddr;
    assert!(send(&mut s, &decline(A, offered, 2), 0).is_none());
    assert_eq!(s.stats().declines, 0);
    // A client that takes and declines address after address keeps at
    // most a quarter of the pool (3 of 10) declined.
    for round in 0..40u32 {
        let a = lease(&mut s, A, 1);
        send(&mut s, &decline(A, a, round), 1);
        let declined = s.leases().filter(|(_, l)| matches!(l.state, State::Declined(_))).count();
        assert!(declined <= 3, "{declined} addresses declined after round {round}");
    }
    assert_eq!(s.stats().declines, 40);
    assert_eq!(s.stats().declines_forgotten, 37);
    // The rest of the pool serves seven other clients.
    for i in 0..7u8 {
        lease(&mut s, [2, 0, 0, 0, 5, i], 2);
    }
}

#[test]
fn a_declined_reservation_waits_out_its_decline() {
    let mut s = server();
    let r = lease(&mut s, R, 0);
    send(&mut s, &decline(R, r, 2), 1);
    assert!(send(&mut s, &message(DhcpMessageType::Discover, R, 3), 2).is_none());
    assert_eq!(lease(&mut s, R, 1 + DECLINED_SECS), r);
}

#[test]
fn a_client_that_chose_another_server_returns_the_offer() {
    let mut s = server();
    let offered = send(&mut s, &message(DhcpMessageType::Discover, A, 1), 0).unwrap().yiaddr;
    let mut req = message(DhcpMessageType::Request, A, 2);
    req.requested_ip = Some(Ipv4Addr::new(10, 1, 0, 200));
    req.server_identifier = Some(Ipv4Addr::new(10, 1, 0, 2));
    assert!(send(&mut s, &req, 1).is_none());
    assert!(s.leases().all(|(x, _)| x != offered));
}

#[test]
fn name_servers_changed_are_given_from_then_on() {
    let mut s = server();
    s.set_dns(vec![Ipv4Addr::new(192, 0, 2, 53)]).unwrap();
    let offer = send(&mut s, &message(DhcpMessageType::Discover, A, 1), 0).unwrap();
    assert_eq!(offer.dns, [Ipv4Addr::new(192, 0, 2, 53)]);
    assert!(s.set_dns(vec![Ipv4Addr::new(192, 0, 2, 53); 9]).is_err());
}

#[test]
fn inform_gets_the_options_and_no_lease() {
    let mut s = server();
    let mut inform = message(DhcpMessageType::Inform, A, 8);
    inform.client_ip = Ipv4Addr::new(10, 1, 0, 50);
    let ack = send(&mut s, &inform, 0).unwrap();
    assert_eq!(ack.kind, DhcpMessageType::Ack);
    assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.lease, None);
    assert_eq!(ack.to, Destination::Unicast(Ipv4Addr::new(10, 1, 0, 50), A));
    assert_eq!(s.leases().count(), 0);
}

#[test]
fn a_flood_of_discovers_cannot_keep_a_client_from_a_lease() {
    let mut s = server();
    let a = lease(&mut s, A, 0);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..10_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut mac = x.to_le_bytes()[..6].try_into().unwrap_or([2; 6]);
        mac[0] = 2;
        send(&mut s, &message(DhcpMessageType::Discover, mac, i), 1);
        // Bounded by the pool (10 addresses) and the reservation, never
        // by the number of clients.
        assert!(s.leases().count() <= 10, "{} records", s.leases().count());
    }
    // The bound lease was never taken.
    assert!(s.leases().any(|(x, l)| x == a && l.client == A && matches!(l.state, State::Bound(_))));
    // A real client, whose REQUEST follows its DISCOVER, is served.
    let b = lease(&mut s, B, 2);
    assert_ne!(a, b);
    assert!(s.stats().offers_reclaimed > 9_000, "{:?}", s.stats());
}

#[test]
fn the_pool_runs_out_without_harm() {
    let mut s = server();
    for i in 0..10u8 {
        lease(&mut s, [2, 0, 0, 0, 3, i], 0);
    }
    assert!(send(&mut s, &message(DhcpMessageType::Discover, B, 1), 1).is_none());
    assert_eq!(s.stats().exhausted, 1);
}

#[test]
fn malformed_and_foreign_messages_are_dropped() {
    let mut s = server();
    let good = bytes(&message(DhcpMessageType::Discover, A, 1));
    // Every truncation, and every single-byte corruption of the options.
    for n in 0..good.len() {
        let _ = s.input(&good[..n], 0);
    }
    for i in 236..good.len() {
        for v in [0u8, 1, 0x35, 0xff] {
            let mut m = good.clone();
            m[i] = v;
            let _ = s.input(&m, 0);
        }
    }
    let mut x: u64 = 1;
    for len in 0..2000usize {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let junk: Vec<u8> = (0..len % 700).map(|i| (x >> (i % 56)) as u8).collect();
        assert!(s.input(&junk, 0).is_none() || junk.len() >= 240);
    }
    // Replies, relayed requests, broadcast and zero hardware addresses.
    let before = s.stats().dropped;
    assert!(send(&mut s, &message(DhcpMessageType::Offer, A, 1), 0).is_none());
    let mut relayed = message(DhcpMessageType::Discover, A, 1);
    relayed.relay_agent_ip = Ipv4Addr::new(10, 9, 9, 9);
    assert!(send(&mut s, &relayed, 0).is_none());
    assert!(send(&mut s, &message(DhcpMessageType::Discover, [0xff; 6], 1), 0).is_none());
    assert!(send(&mut s, &message(DhcpMessageType::Discover, [0; 6], 1), 0).is_none());
    assert_eq!(s.stats().dropped, before + 4);
    assert!(s.leases().count() <= 10);
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    type Change = fn(&mut Config);
    let cases: [(Change, &str); 8] = [
        (|c| c.prefix = 31, "prefix /31"),
        (
            |c| {
                c.prefix = 8;
                c.pool = (Ipv4Addr::new(10, 1, 0, 10), Ipv4Addr::new(10, 200, 0, 1));
            },
            "holds 13041656 addresses: at most 65536",
        ),
        (|c| c.pool = (Ipv4Addr::new(10, 1, 0, 9), Ipv4Addr::new(10, 1, 0, 1)), "is empty"),
        (|c| c.pool = (Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 1, 5)), "is not inside 10.1.0.0/24"),
        (|c| c.pool = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 5)), "server's own address"),
        (|c| c.router = Some(Ipv4Addr::new(10, 2, 0, 1)), "router 10.2.0.1"),
        (|c| c.lease_secs = 10, "too short"),
        (|c| c.reservations.push((R, Ipv4Addr::new(10, 1, 0, 8))), "reserved twice"),
    ];
    for (change, want) in cases {
        let mut c = config();
        change(&mut c);
        let e = Server::new(c).unwrap_err();
        assert!(e.0.contains(want), "{e} (wanted {want:?})");
    }
}

/// What the records' indexes say, worked out again from the records
/// alone, as the server did before it kept them.
fn check_indexes(s: &Server) {
    let r = &s.leases;
    for (mac, a) in &r.by_client {
        assert_eq!(r.get(a).map(|l| l.client), Some(*mac), "{a} is indexed for a client that does not hold it");
    }
    for (a, l) in r.iter() {
        if l.client != [0; 6] {
            assert_eq!(r.of_client(l.client), Some(*a), "{a}'s client is not indexed to it");
        }
    }
    let (first, last) = s.config.pool;
    let free = (bits(first)..=bits(last))
        .find(|&a| r.get(&Ipv4Addr::from(a)).is_none() && s.reserved.binary_search(&a).is_err())
        .map(Ipv4Addr::from);
    assert_eq!(r.lowest_free(), free);
    let oldest = |want: fn(&State) -> Option<u64>| {
        r.iter().filter_map(|(a, l)| want(&l.state).map(|t| (t, *a))).min().map(|(_, a)| a)
    };
    let offered = |st: &State| if let State::Offered(t) = st { Some(*t) } else { None };
    let declined = |st: &State| if let State::Declined(t) = st { Some(*t) } else { None };
    assert_eq!(r.oldest_offer(), oldest(offered));
    let count = r.iter().filter(|(_, l)| declined(&l.state).is_some()).count();
    assert_eq!(r.declines(), (count, oldest(declined)));
}

#[test]
fn the_indexes_agree_with_the_records_through_churn() {
    // Clients that discover, request, decline, release and go quiet, over
    // a pool of 40 with a reservation inside it, for hours of expiry.
    let mut c = config();
    c.pool = (Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 0, 139));
    c.reservations = vec![(R, Ipv4Addr::new(10, 1, 0, 120))];
    c.lease_secs = 60;
    let mut s = Server::new(c).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..20_000u64 {
        let now = step / 20;
        let mac = if next(50) == 0 { R } else { [2, 0, 0, 0, 1, next(70) as u8] };
        match next(5) {
            0 | 1 => {
                let mut m = message(DhcpMessageType::Discover, mac, step as u32);
                m.requested_ip = (next(3) == 0).then(|| Ipv4Addr::new(10, 1, 0, 95 + next(50) as u8));
                send(&mut s, &m, now);
            }
            2 => {
                let mut m = message(DhcpMessageType::Request, mac, step as u32);
                m.requested_ip = Some(Ipv4Addr::new(10, 1, 0, 95 + next(50) as u8));
                m.server_identifier = (next(4) != 0).then_some(SERVER).or(Some(Ipv4Addr::new(10, 1, 0, 2)));
                send(&mut s, &m, now);
            }
            3 => {
                let a = s.leases.of_client(mac).unwrap_or(Ipv4Addr::new(10, 1, 0, 100));
                send(&mut s, &decline(mac, a, step as u32), now);
            }
            _ => {
                let mut m = message(DhcpMessageType::Release, mac, step as u32);
                m.client_ip = s.leases.of_client(mac).unwrap_or(Ipv4Addr::UNSPECIFIED);
                m.server_identifier = Some(SERVER);
                send(&mut s, &m, now);
            }
        }
        check_indexes(&s);
    }
    let st = s.stats();
    // Every path was taken, the full pool's included.
    assert!(st.acks > 20 && st.declines > 10 && st.declines_forgotten > 0, "{st:?}");
    assert!(st.offers_reclaimed > 0 && st.releases > 100 && st.naks > 0, "{st:?}");
}
