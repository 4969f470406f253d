//! The router simulated: packets built by hand go through `Nat` as they
//! would arrive on its interfaces, on a clock the test moves, and what
//! comes out is checked field by field, with every checksum computed
//! again in full by smoltcp.

mod common;

use std::net::Ipv4Addr;

use common::*;
use mirage_nat::build::{self, flags};
use mirage_nat::{Config, FLOW_BYTES, Interface, Nat, Reason, Timeouts, Verdict};

const SEC: u64 = 1000;

fn through(nat: &mut Nat, now: u64, iface: Interface, p: &mut [u8]) -> Verdict {
    nat.process(now, iface, p, route)
}

#[test]
fn udp_is_masqueraded_and_the_reply_comes_back() {
    let mut nat = router();
    let host = sa(inside_host(1), 5353);
    let mut p = build::udp(host, sa(SERVER, 53), b"query");
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Forward(UPLINK));
    valid(&p);
    let (src, dst) = ends(&p);
    assert_eq!(*src.ip(), EXTERNAL);
    // The inside port is kept when it is free and in the range.
    assert_eq!(src.port(), 5353.max(PORTS.0).min(src.port()));
    assert_eq!(dst, sa(SERVER, 53));
    assert_eq!(p[8], 63, "TTL one less");
    assert_eq!(&p[28..], b"query");

    let mut r = build::udp(dst, src, b"answer");
    assert_eq!(through(&mut nat, 10, UPLINK, &mut r), Verdict::Forward(INSIDE));
    valid(&r);
    assert_eq!(ends(&r), (sa(SERVER, 53), host));
    assert_eq!(nat.stats().flows, 1);
    assert_eq!(nat.stats().forwarded, 2);
}

#[test]
fn an_inside_port_in_the_range_is_kept() {
    let mut nat = router();
    let host = sa(inside_host(1), 20000);
    let mut p = build::udp(host, sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut p);
    assert_eq!(ends(&p).0, sa(EXTERNAL, 20000));
    // Another host with the same port gets another one.
    let mut p = build::udp(sa(inside_host(2), 20000), sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut p);
    assert_ne!(ends(&p).0.port(), 20000);
}

#[test]
fn tcp_timeouts_follow_the_state() {
    let t = Timeouts::LINUX;
    let mut nat = router();
    let host = sa(inside_host(1), 40000);
    let mut syn = build::tcp(host, sa(SERVER, 443), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, 0, INSIDE, &mut syn), Verdict::Forward(UPLINK));
    let ext = ends(&syn).0;
    // SYN sent: gone after 120 s, not before.
    assert_eq!(nat.next_expiry(), Some(t.tcp_syn_sent));
    assert_eq!(nat.expire(t.tcp_syn_sent - 1), 0);
    assert_eq!(nat.expire(t.tcp_syn_sent), 1);
    assert_eq!(nat.stats().flows, 0);

    // A full handshake: established for days.
    let mut now = 200 * SEC;
    let mut syn = build::tcp(host, sa(SERVER, 443), flags::SYN, 1, 0, b"");
    through(&mut nat, now, INSIDE, &mut syn);
    let ext2 = ends(&syn).0;
    assert_eq!(ext2.port(), ext.port(), "the port is free again and kept");
    let mut synack = build::tcp(sa(SERVER, 443), ext2, flags::SYN | flags::ACK, 9, 2, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut synack), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_syn_recv));
    let mut ack = build::tcp(host, sa(SERVER, 443), flags::ACK, 2, 10, b"");
    through(&mut nat, now, INSIDE, &mut ack);
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_established));
    now += 3600 * SEC;
    assert_eq!(nat.expire(now), 0);
    let mut data = build::tcp(sa(SERVER, 443), ext2, flags::ACK | flags::PSH, 10, 2, b"hello");
    assert_eq!(through(&mut nat, now, UPLINK, &mut data), Verdict::Forward(INSIDE));
    valid(&data);

    // One FIN: FIN_WAIT's 120 s; both: TIME_WAIT's.
    let mut fin = build::tcp(host, sa(SERVER, 443), flags::FIN | flags::ACK, 2, 15, b"");
    through(&mut nat, now, INSIDE, &mut fin);
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_fin_wait));
    now += SEC;
    let mut fin2 = build::tcp(sa(SERVER, 443), ext2, flags::FIN | flags::ACK, 15, 3, b"");
    through(&mut nat, now, UPLINK, &mut fin2);
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_time_wait));
    assert_eq!(nat.expire(now + t.tcp_time_wait), 1);

    // A reset: CLOSE's 10 s.
    let mut syn = build::tcp(host, sa(SERVER, 443), flags::SYN, 1, 0, b"");
    now += 1000 * SEC;
    through(&mut nat, now, INSIDE, &mut syn);
    let mut rst = build::tcp(sa(SERVER, 443), ends(&syn).0, flags::RST | flags::ACK, 0, 2, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut rst), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_close));
    // A new SYN on the closed tuple opens it again.
    let mut syn = build::tcp(host, sa(SERVER, 443), flags::SYN, 100, 0, b"");
    assert_eq!(through(&mut nat, now + 1, INSIDE, &mut syn), Verdict::Forward(UPLINK));
    assert_eq!(nat.next_expiry(), Some(now + 1 + t.tcp_syn_sent));
    assert_eq!(nat.stats().created, 3);
}

#[test]
fn udp_lasts_longer_once_answered_and_icmp_30_s() {
    let t = Timeouts::LINUX;
    let mut nat = router();
    let mut q = build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut q);
    assert_eq!(nat.next_expiry(), Some(t.udp_unreplied));
    let mut a = build::udp(sa(SERVER, 53), ends(&q).0, b"a");
    through(&mut nat, 5 * SEC, UPLINK, &mut a);
    assert_eq!(nat.next_expiry(), Some(5 * SEC + t.udp_replied));
    // Traffic keeps it: another query at 100 s.
    let mut q = build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q");
    through(&mut nat, 100 * SEC, INSIDE, &mut q);
    assert_eq!(nat.expire(5 * SEC + t.udp_replied), 0);
    assert_eq!(nat.expire(100 * SEC + t.udp_replied), 1);

    let mut ping = build::echo(inside_host(1), SERVER, true, 7, 1, b"ping");
    through(&mut nat, 1000 * SEC, INSIDE, &mut ping);
    assert_eq!(nat.next_expiry(), Some(1000 * SEC + t.icmp));
}

#[test]
fn a_flow_past_its_time_is_gone_without_a_call_to_expire() {
    let mut nat = router();
    let mut q = build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut q);
    let ext = ends(&q).0;
    let mut a = build::udp(sa(SERVER, 53), ext, b"a");
    assert_eq!(through(&mut nat, 30 * SEC - 1, UPLINK, &mut a.clone()), Verdict::Forward(INSIDE));
    // Answered at 30 s - 1 ms: 120 s more.
    let late = 30 * SEC - 1 + Timeouts::LINUX.udp_replied;
    assert_eq!(through(&mut nat, late, UPLINK, &mut a), Verdict::Drop(Reason::Denied));
    assert_eq!(nat.stats().expired, 1);
    assert_eq!(nat.stats().flows, 0);
    let err = build::icmp_error(SERVER, build::ICMP_UNREACHABLE, 3, &q).unwrap();
    through(&mut nat, late, INSIDE, &mut build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q"));
    assert_eq!(through(&mut nat, late + 31 * SEC, UPLINK, &mut err.clone()), Verdict::Drop(Reason::UnknownIcmpError));
}

#[test]
fn echo_identifiers_are_translated() {
    let mut nat = router();
    // Two inside hosts ping the server with the same identifier.
    let mut a = build::echo(inside_host(1), SERVER, true, 20000, 1, b"from a");
    let mut b = build::echo(inside_host(2), SERVER, true, 20000, 1, b"from b");
    assert_eq!(through(&mut nat, 0, INSIDE, &mut a), Verdict::Forward(UPLINK));
    assert_eq!(through(&mut nat, 0, INSIDE, &mut b), Verdict::Forward(UPLINK));
    valid(&a);
    valid(&b);
    let id = |p: &[u8]| u16::from_be_bytes([p[24], p[25]]);
    assert_eq!(id(&a), 20000);
    assert_ne!(id(&b), 20000);
    for (p, host) in [(&b, inside_host(2)), (&a, inside_host(1))] {
        let mut reply = build::echo(SERVER, EXTERNAL, false, id(p), 1, &p[28..]);
        assert_eq!(through(&mut nat, 1, UPLINK, &mut reply), Verdict::Forward(INSIDE));
        valid(&reply);
        assert_eq!(&reply[16..20], &host.octets());
        assert_eq!(id(&reply), 20000);
    }
    // A reply nobody asked for, of any identifier.
    for id in [999, 0] {
        let mut stray = build::echo(SERVER, EXTERNAL, false, id, 1, b"");
        assert_eq!(through(&mut nat, 1, UPLINK, &mut stray), Verdict::Drop(Reason::NoFlow));
        let mut stray = build::echo(SERVER, inside_host(1), false, id, 1, b"");
        assert_eq!(through(&mut nat, 1, UPLINK, &mut stray), Verdict::Drop(Reason::NoFlow));
    }
    // Pings to the router itself are answered, and tracked by no flow:
    // a host allowed to ping cannot fill the table with identifiers.
    let flows = nat.stats().flows;
    for id in 0..100 {
        let mut req = build::echo(inside_host(3), ROUTER_INSIDE, true, id, 1, b"");
        assert_eq!(through(&mut nat, 1, INSIDE, &mut req), Verdict::Local);
        let mut reply = build::echo(ROUTER_INSIDE, inside_host(3), false, id, 1, b"");
        assert_eq!(nat.output(1, INSIDE, &mut reply), Verdict::Forward(INSIDE));
    }
    assert_eq!(nat.stats().flows, flows);
}

#[test]
fn a_new_uplink_address_forgets_the_translated_flows() {
    let mut nat = router();
    let mut q = build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut q);
    let mut own = build::udp(sa(EXTERNAL, 50000), sa(SERVER, 53), b"q");
    nat.output(0, UPLINK, &mut own);
    assert_eq!(nat.stats().flows, 2);
    let new = Ipv4Addr::new(192, 0, 2, 99);
    nat.set_masquerade_address(new);
    assert_eq!((nat.stats().flows, nat.stats().expired), (1, 1));
    let mut a = build::udp(sa(SERVER, 53), ends(&q).0, b"a");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut a), Verdict::Drop(Reason::Denied));
    let mut q = build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q");
    through(&mut nat, 2, INSIDE, &mut q);
    assert_eq!(*ends(&q).0.ip(), new);

    // Many, of two classes, among the router's own: every translated one
    // goes, in one walk, and the others stay.
    let mut nat = router();
    for n in 0..20u16 {
        let mut q = build::udp(sa(inside_host(u32::from(n) + 1), 1000 + n), sa(SERVER, 53), b"q");
        assert_eq!(through(&mut nat, 0, INSIDE, &mut q), Verdict::Forward(UPLINK));
        let mut e = build::echo(inside_host(u32::from(n) + 1), SERVER, true, n, 1, b"");
        assert_eq!(through(&mut nat, 0, INSIDE, &mut e), Verdict::Forward(UPLINK));
        let mut own = build::udp(sa(EXTERNAL, 40000 + n), sa(SERVER, 53), b"q");
        nat.output(0, UPLINK, &mut own);
    }
    assert_eq!(nat.stats().flows, 60);
    nat.set_masquerade_address(new);
    assert_eq!((nat.stats().flows, nat.stats().expired), (20, 40));
}

#[test]
fn a_port_is_used_again_only_after_its_flow_expired() {
    // Two ports: two flows hold them, the third is refused until one
    // expires.
    let mut nat = Nat::new(config(100, (30000, 30001))).unwrap();
    let mut held = Vec::new();
    for n in 0..2 {
        let mut p = build::udp(sa(inside_host(n), 5000), sa(SERVER, 53), b"q");
        assert_eq!(through(&mut nat, n as u64 * SEC, INSIDE, &mut p), Verdict::Forward(UPLINK));
        held.push(ends(&p).0.port());
    }
    held.sort();
    assert_eq!(held, [30000, 30001]);
    let mut third = build::udp(sa(inside_host(9), 5000), sa(SERVER, 53), b"q");
    assert_eq!(through(&mut nat, 2 * SEC, INSIDE, &mut third.clone()), Verdict::Drop(Reason::PortsExhausted));
    // The flow of 0 s expires at 30 s; its port goes to the newcomer.
    let mut again = third.clone();
    assert_eq!(through(&mut nat, 30 * SEC - 1, INSIDE, &mut again), Verdict::Drop(Reason::PortsExhausted));
    nat.expire(30 * SEC);
    assert_eq!(through(&mut nat, 30 * SEC, INSIDE, &mut third), Verdict::Forward(UPLINK));
    assert_eq!(nat.stats().dropped(Reason::PortsExhausted), 2);
    // Which port was freed decides which is handed out.
    let mut first = build::udp(sa(inside_host(0), 5000), sa(SERVER, 53), b"q");
    through(&mut nat, 30 * SEC, INSIDE, &mut first);
    assert_eq!(nat.stats().dropped(Reason::PortsExhausted), 3, "both ports held again");
}

#[test]
fn ports_go_round_the_range_before_coming_back() {
    let mut nat = Nat::new(config(100, (40000, 40009))).unwrap();
    let mut seen = Vec::new();
    for n in 0..30u64 {
        // Inside port outside the range: the allocator chooses.
        let mut p = build::udp(sa(inside_host(1), 5000 + n as u16), sa(SERVER, 53), b"q");
        assert_eq!(through(&mut nat, n * 40 * SEC, INSIDE, &mut p), Verdict::Forward(UPLINK));
        seen.push(ends(&p).0.port());
        nat.expire(n * 40 * SEC + 30 * SEC);
    }
    assert_eq!(seen[..10], (40000..40010).collect::<Vec<_>>()[..], "{seen:?}");
    assert_eq!(seen[10..20], seen[..10]);
}

#[test]
fn checksums_agree_with_a_full_computation() {
    let mut nat = Nat::new(config(20_000, PORTS)).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut replies = 0;
    for i in 0..20_000u64 {
        let host = sa(Ipv4Addr::from(0x0a00_0000 | rng.below(1 << 16) as u32 | 0x100), rng.next() as u16 | 1);
        let server = sa(Ipv4Addr::from(0x4000_0000 + rng.below(1 << 24) as u32), 1 + rng.below(65535) as u16);
        let len = rng.below(300) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut p = match i % 3 {
            0 => build::udp(host, server, &payload),
            1 => build::tcp(host, server, flags::SYN, rng.next() as u32, 0, &payload),
            _ => build::echo(*host.ip(), *server.ip(), true, host.port(), i as u16, &payload),
        };
        build::set_ttl(&mut p, 2 + rng.below(250) as u8);
        let before = p.clone();
        let v = through(&mut nat, i, INSIDE, &mut p);
        if v == Verdict::Drop(Reason::Conflict) {
            continue;
        }
        assert_eq!(v, Verdict::Forward(UPLINK), "{i}");
        valid(&p);
        assert_eq!(p[8], before[8] - 1);
        assert_eq!(p[28 + if i % 3 == 1 { 12 } else { 0 }..], before[28 + if i % 3 == 1 { 12 } else { 0 }..]);
        // And back: the reply as the server would send it.
        if i % 3 == 0 {
            let (src, dst) = ends(&p);
            let mut r = build::udp(dst, src, &payload);
            assert_eq!(through(&mut nat, i, UPLINK, &mut r), Verdict::Forward(INSIDE));
            valid(&r);
            assert_eq!(ends(&r), (server, host));
            replies += 1;
        }
    }
    assert!(replies > 6000);
}

/// The sum of `p`'s IPv4 pseudo-header (addresses, protocol, transport
/// length), folded and not complemented: what a host leaves in the
/// checksum field of a `CHECKSUM_PARTIAL` packet.
fn pseudo_sum(p: &[u8]) -> u16 {
    let mut sum = 0u64;
    for w in p[12..20].chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    sum += u64::from(p[9]) + (p.len() as u64 - 20);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes the partial checksum at `at` as the host would: the
/// complement of the sum of the transport bytes, the field included.
fn complete(p: &mut [u8], at: usize) {
    let mut sum = 0u64;
    for w in p[20..].chunks(2) {
        sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[test]
fn partial_checksums_are_updated_as_the_host_completes_them() {
    let mut nat = Nat::new(config(20_000, PORTS)).unwrap();
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    for i in 0..10_000u64 {
        let host = sa(Ipv4Addr::from(0x0a00_0000 | rng.below(1 << 16) as u32 | 0x100), rng.next() as u16 | 1);
        let server = sa(Ipv4Addr::from(0x4000_0000 + rng.below(1 << 24) as u32), 1 + rng.below(65535) as u16);
        let len = rng.below(3000) as usize;
        let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let (mut p, at) = match i % 2 {
            0 => (build::udp(host, server, &payload), 26),
            _ => (build::tcp(host, server, flags::SYN, rng.next() as u32, 0, &payload), 36),
        };
        // As the sender's host hands it over: the field holds the
        // pseudo-header's sum.
        let ps = pseudo_sum(&p);
        p[at..at + 2].copy_from_slice(&ps.to_be_bytes());
        let v = nat.process_partial(i, INSIDE, &mut p, true, route);
        if v == Verdict::Drop(Reason::Conflict) {
            continue;
        }
        assert_eq!(v, Verdict::Forward(UPLINK), "{i}");
        // What Linux leaves after its own NAT of such a packet: the new
        // pseudo-header's sum (0 and 0xffff are the same ones'-complement
        // number).
        let field = u16::from_be_bytes([p[at], p[at + 1]]);
        let want = pseudo_sum(&p);
        assert!(
            field == want || (field, want) == (0, 0xffff) || (field, want) == (0xffff, 0),
            "{i}: {field:#x} {want:#x}"
        );
        // Completed by the receiving host, it checks out in full.
        complete(&mut p, at);
        valid(&p);
        // And back, the server's reply partial as well.
        let (src, dst) = ends(&p);
        let mut r = if i % 2 == 0 {
            build::udp(dst, src, &payload)
        } else {
            // Acknowledging the SYN and its payload, as a reply must.
            let isn = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
            let ack = isn.wrapping_add(len as u32 + 1);
            build::tcp(dst, src, flags::SYN | flags::ACK, rng.next() as u32, ack, &payload)
        };
        let ps = pseudo_sum(&r);
        r[at..at + 2].copy_from_slice(&ps.to_be_bytes());
        assert_eq!(nat.process_partial(i, UPLINK, &mut r, true, route), Verdict::Forward(INSIDE), "{i}");
        complete(&mut r, at);
        valid(&r);
        assert_eq!(ends(&r), (server, host));
    }
}

#[test]
fn a_udp_datagram_without_checksum_keeps_none() {
    let mut nat = router();
    let mut p = build::udp(sa(inside_host(1), 7), sa(SERVER, 7), b"no checksum");
    p[26] = 0;
    p[27] = 0;
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Forward(UPLINK));
    assert_eq!(&p[26..28], &[0, 0]);
    valid(&p);
}

#[test]
fn the_table_refuses_new_flows_when_full_and_recovers() {
    let mut nat = Nat::new(config(100, PORTS)).unwrap();
    let mut flows = Vec::new();
    for n in 0..100u16 {
        let mut p = build::udp(sa(inside_host(1), 1000 + n), sa(SERVER, 53), b"q");
        assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Forward(UPLINK));
        flows.push(ends(&p));
    }
    for n in 0..50u16 {
        let mut p = build::tcp(sa(inside_host(2), 1000 + n), sa(SERVER, 80), flags::SYN, 0, 0, b"");
        assert_eq!(through(&mut nat, SEC, INSIDE, &mut p), Verdict::Drop(Reason::TableFull));
    }
    assert_eq!(nat.stats().dropped(Reason::TableFull), 50);
    assert_eq!(nat.stats().flows, 100);
    // The flows held still work, both ways.
    for (src, dst) in &flows {
        let mut r = build::udp(*dst, *src, b"a");
        assert_eq!(through(&mut nat, 2 * SEC, UPLINK, &mut r), Verdict::Forward(INSIDE));
    }
    // Unanswered flows are gone after 30 s, the answered ones after 120:
    // new flows are taken again then, without a call to expire.
    let mut p = build::tcp(sa(inside_host(2), 1), sa(SERVER, 80), flags::SYN, 0, 0, b"");
    assert_eq!(through(&mut nat, 121 * SEC, INSIDE, &mut p.clone()), Verdict::Drop(Reason::TableFull));
    assert_eq!(through(&mut nat, 122 * SEC + 1, INSIDE, &mut p), Verdict::Forward(UPLINK));
    assert_eq!(nat.stats().flows, 1);
    assert_eq!(nat.stats().expired, 100);
}

#[test]
fn ten_thousand_concurrent_flows() {
    let mut nat = Nat::new(config(16_384, PORTS)).unwrap();
    let mut out = Vec::new();
    for n in 0..10_000u32 {
        let host = sa(inside_host(n), 1024 + (n / 240) as u16);
        let server = sa(Ipv4Addr::from(u32::from(SERVER) + n % 7), 443);
        let mut p =
            if n % 2 == 0 { build::tcp(host, server, flags::SYN, n, 0, b"") } else { build::udp(host, server, b"q") };
        assert_eq!(through(&mut nat, u64::from(n), INSIDE, &mut p), Verdict::Forward(UPLINK), "flow {n}");
        out.push((n, host, server, ends(&p).0));
    }
    assert_eq!(nat.stats().flows, 10_000);
    // Every reply finds its host, in another order.
    for &(n, host, server, ext) in out.iter().rev() {
        let mut r = if n % 2 == 0 {
            build::tcp(server, ext, flags::SYN | flags::ACK, 5, n + 1, b"")
        } else {
            build::udp(server, ext, b"a")
        };
        assert_eq!(through(&mut nat, 20 * SEC, UPLINK, &mut r), Verdict::Forward(INSIDE));
        assert_eq!(ends(&r), (server, host));
    }
    let m = nat.memory();
    eprintln!("{FLOW_BYTES} bytes a flow record; {m} bytes for 16,384 flows ({} a flow)", m / 16_384);
    assert!(m / 16_384 <= 128);
    // The UDP flows outlive 30 s once answered; the TCP ones are in SYN_RECV.
    assert_eq!(nat.expire(20 * SEC + 60 * SEC), 5_000);
    assert_eq!(nat.expire(20 * SEC + 120 * SEC), 5_000);
    assert_eq!(nat.stats().flows, 0);
}

#[test]
fn churn_keeps_the_index_right() {
    // Flows come and go many times over in a small table; every flow
    // still in it is found both ways, every gone one not.
    let mut nat =
        Nat::new(Config { timeouts: Timeouts { udp_unreplied: 1000, ..Timeouts::LINUX }, ..config(64, PORTS) })
            .unwrap();
    let mut rng = Rng(99);
    let mut live: Vec<(u64, std::net::SocketAddrV4, std::net::SocketAddrV4)> = Vec::new();
    for now in 0..20_000u64 {
        let host = sa(inside_host(rng.below(4) as u32), 1 + rng.below(200) as u16);
        let mut p = build::udp(host, sa(SERVER, 53), b"q");
        match through(&mut nat, now, INSIDE, &mut p) {
            Verdict::Forward(UPLINK) => {
                live.retain(|(_, h, _)| *h != host);
                live.push((now, host, ends(&p).0));
            }
            Verdict::Drop(Reason::TableFull) => assert_eq!(nat.stats().flows, 64),
            v => panic!("{v:?}"),
        }
        live.retain(|(t, _, _)| now < t + 1000);
        // Expiry is lazy (when the table is full, or on expire), so the
        // table holds at least the live flows.
        assert!(nat.stats().flows >= live.len());
        if now % 97 == 0 {
            for (_, h, ext) in &live {
                // A packet from inside finds its flow (not an answer,
                // which would give the flow a longer timeout).
                let mut q = build::udp(*h, sa(SERVER, 53), b"q");
                assert_eq!(through(&mut nat, now, INSIDE, &mut q), Verdict::Forward(UPLINK), "{h}");
                assert_eq!(ends(&q).0, *ext);
            }
            for l in live.iter_mut() {
                l.0 = now;
            }
        }
    }
}

#[test]
fn port_forward_reaches_the_inside_server() {
    let mut nat = router();
    let client = sa(SERVER, 51000);
    let mut syn = build::tcp(client, sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut syn), Verdict::Forward(INSIDE));
    valid(&syn);
    assert_eq!(ends(&syn), (client, WEB));
    let mut synack = build::tcp(WEB, client, flags::SYN | flags::ACK, 7, 2, b"");
    assert_eq!(through(&mut nat, 1, INSIDE, &mut synack), Verdict::Forward(UPLINK));
    valid(&synack);
    assert_eq!(ends(&synack), (sa(EXTERNAL, 8080), client));
    // Another external port is not forwarded: it is the router's, and
    // the rules do not let it in.
    let mut other = build::tcp(client, sa(EXTERNAL, 8081), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut other), Verdict::Drop(Reason::Denied));
    // Masquerade never hands out the forwarded port.
    let mut p = build::tcp(sa(inside_host(3), 8080), sa(SERVER, 80), flags::SYN, 1, 0, b"");
    through(&mut nat, 2, INSIDE, &mut p);
    assert_ne!(ends(&p).0.port(), 8080);
}

#[test]
fn resets_and_fins_outside_the_window_change_nothing() {
    let t = Timeouts::LINUX;
    let mut nat = router();
    let host = sa(inside_host(1), 40000);
    let server = sa(SERVER, 443);
    let mut syn = build::tcp(host, server, flags::SYN, 1000, 0, b"");
    through(&mut nat, 0, INSIDE, &mut syn);
    let ext = ends(&syn).0;
    // Refused: only a reset that acknowledges the SYN exactly ends it.
    let mut blind = build::tcp(server, ext, flags::RST | flags::ACK, 0, 77, b"");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut blind), Verdict::Drop(Reason::OutOfWindow));
    let mut blind = build::tcp(server, ext, flags::RST, 0, 0, b"");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut blind), Verdict::Drop(Reason::OutOfWindow));
    let mut refused = build::tcp(server, ext, flags::RST | flags::ACK, 0, 1001, b"");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut refused), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(t.tcp_close));

    // A connection with data both ways, then idle.
    let now = 100 * SEC;
    let mut syn = build::tcp(host, server, flags::SYN, 1000, 0, b"");
    through(&mut nat, now, INSIDE, &mut syn);
    let mut synack = build::tcp(server, ext, flags::SYN | flags::ACK, 5000, 1001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut synack), Verdict::Forward(INSIDE));
    let mut ack = build::tcp(host, server, flags::ACK, 1001, 5001, &[7; 1000]);
    through(&mut nat, now, INSIDE, &mut ack);
    let mut data = build::tcp(server, ext, flags::ACK, 5001, 2001, &[8; 1000]);
    assert_eq!(through(&mut nat, now, UPLINK, &mut data), Verdict::Forward(INSIDE));
    // Blind resets and FINs from outside, far from where the server's
    // numbers are (each side of them): dropped, the flow established.
    for seq in [6001u32.wrapping_add(1 << 20), 6001u32.wrapping_sub(1 << 20), 6001 ^ 0x8000_0000] {
        for f in [flags::RST, flags::RST | flags::ACK, flags::FIN | flags::ACK] {
            let mut p = build::tcp(server, ext, f, seq, 2001, b"");
            assert_eq!(through(&mut nat, now, UPLINK, &mut p), Verdict::Drop(Reason::OutOfWindow), "{seq} {f:#x}");
        }
    }
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_established));
    // Nor from inside, about the client's numbers.
    let mut p = build::tcp(host, server, flags::RST, 2001 + (1 << 24), 0, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut p), Verdict::Drop(Reason::OutOfWindow));
    assert_eq!(nat.stats().dropped(Reason::OutOfWindow), 12);
    // A retransmission behind the window's edge, and a FIN at it, pass.
    let mut again = build::tcp(server, ext, flags::ACK, 5001, 2001, &[8; 1000]);
    assert_eq!(through(&mut nat, now, UPLINK, &mut again), Verdict::Forward(INSIDE));
    let mut fin = build::tcp(server, ext, flags::FIN | flags::ACK, 6001, 2001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut fin), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_fin_wait));
    // The real reset, where the client's numbers are, ends it.
    let mut rst = build::tcp(host, server, flags::RST, 2001, 0, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut rst), Verdict::Forward(UPLINK));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_close));
}

#[test]
fn segments_far_outside_the_window_do_not_carry_it_to_a_blind_reset() {
    // A blind attacker who knows a flow's tuple, not its numbers: bare
    // ACKs a quarter of the sequence space apart, each followed by a
    // reset at the same number, would put one reset within the window if
    // the ACKs moved where the flow's numbers are taken to be.
    let t = Timeouts::LINUX;
    let mut nat = router();
    let host = sa(inside_host(1), 40000);
    let server = sa(SERVER, 443);
    let now = 100 * SEC;
    let mut syn = build::tcp(host, server, flags::SYN, 1000, 0, b"");
    through(&mut nat, now, INSIDE, &mut syn);
    let ext = ends(&syn).0;
    // Before the server answers, only a reply that acknowledges the SYN
    // counts: a forged SYN-ACK would set the server's numbers. A bare ACK
    // passes (it may be the server's answer about an older connection),
    // noting nothing.
    let mut forged = build::tcp(server, ext, flags::SYN | flags::ACK, 0x4000_0000, 77, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut forged), Verdict::Drop(Reason::OutOfWindow));
    let mut forged = build::tcp(server, ext, flags::RST | flags::ACK, 0x4000_0000, 999, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut forged), Verdict::Drop(Reason::OutOfWindow));
    let mut forged = build::tcp(server, ext, flags::ACK, 0x4000_0000, 1001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut forged), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_syn_sent), "a bare ACK is not the answer");
    let mut synack = build::tcp(server, ext, flags::SYN | flags::ACK, 5000, 1001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut synack), Verdict::Forward(INSIDE));
    let mut ack = build::tcp(host, server, flags::ACK, 1001, 5001, b"");
    through(&mut nat, now, INSIDE, &mut ack);
    let mut dropped = 0;
    for k in 1..4u32 {
        let seq = 5001u32.wrapping_add(k << 30);
        // Passed on (the server's peer answers it, if at all), but it
        // moves nothing.
        let mut walk = build::tcp(server, ext, flags::ACK, seq, 1001, b"");
        assert_eq!(through(&mut nat, now, UPLINK, &mut walk), Verdict::Forward(INSIDE));
        for f in [flags::RST, flags::FIN | flags::ACK] {
            let mut p = build::tcp(server, ext, f, seq, 1001, b"");
            assert_eq!(through(&mut nat, now, UPLINK, &mut p), Verdict::Drop(Reason::OutOfWindow), "{k} {f:#x}");
            dropped += 1;
        }
    }
    assert_eq!(nat.stats().dropped(Reason::OutOfWindow), 2 + dropped);
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_established));
    // The flow's own segments still pass and end it.
    let mut data = build::tcp(server, ext, flags::ACK, 5001, 1001, &[8; 1000]);
    assert_eq!(through(&mut nat, now, UPLINK, &mut data), Verdict::Forward(INSIDE));
    let mut fin = build::tcp(server, ext, flags::FIN | flags::ACK, 6001, 1001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut fin), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_fin_wait));
}

#[test]
fn a_syn_in_the_middle_of_a_connection_starts_nothing_again() {
    // A port forward: the flow starts from outside, so an outside host can
    // send a SYN on its tuple, whose sequence number would otherwise
    // become where the flow's numbers are.
    let t = Timeouts::LINUX;
    let mut nat = router();
    let client = sa(SERVER, 51000);
    let now = 10 * SEC;
    let mut syn = build::tcp(client, sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut syn), Verdict::Forward(INSIDE));
    let mut synack = build::tcp(WEB, client, flags::SYN | flags::ACK, 7, 2, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut synack), Verdict::Forward(UPLINK));
    let mut ack = build::tcp(client, sa(EXTERNAL, 8080), flags::ACK, 2, 8, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut ack), Verdict::Forward(INSIDE));
    let far = 0x9000_0000u32;
    let mut syn = build::tcp(client, sa(EXTERNAL, 8080), flags::SYN, far, 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut syn), Verdict::Forward(INSIDE));
    let mut rst = build::tcp(client, sa(EXTERNAL, 8080), flags::RST, far.wrapping_add(1), 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut rst), Verdict::Drop(Reason::OutOfWindow));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_established));
    // Once the connection is over, a SYN on the tuple opens a new one.
    let mut rst = build::tcp(client, sa(EXTERNAL, 8080), flags::RST, 2, 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut rst), Verdict::Forward(INSIDE));
    let mut syn = build::tcp(client, sa(EXTERNAL, 8080), flags::SYN, far, 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut syn), Verdict::Forward(INSIDE));
    let mut synack = build::tcp(WEB, client, flags::SYN | flags::ACK, 99, far.wrapping_add(1), b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut synack), Verdict::Forward(UPLINK));
    let mut rst = build::tcp(client, sa(EXTERNAL, 8080), flags::RST, far.wrapping_add(1), 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut rst), Verdict::Forward(INSIDE));
}

#[test]
fn fast_open_simultaneous_open_and_challenge_acks_pass() {
    let t = Timeouts::LINUX;
    let server = sa(SERVER, 443);
    let host = sa(inside_host(1), 41000);
    let now = 10 * SEC;
    // TCP Fast Open: the SYN carries 100 bytes. The SYN-ACK acknowledges
    // the SYN alone (the data declined, to be sent again), or its data too.
    for ack in [1001, 1101] {
        let mut nat = router();
        let mut syn = build::tcp(host, server, flags::SYN, 1000, 0, &[1; 100]);
        through(&mut nat, now, INSIDE, &mut syn);
        let ext = ends(&syn).0;
        let mut synack = build::tcp(server, ext, flags::SYN | flags::ACK, 5000, ack, b"");
        assert_eq!(through(&mut nat, now, UPLINK, &mut synack), Verdict::Forward(INSIDE), "{ack}");
        assert_eq!(nat.next_expiry(), Some(now + t.tcp_syn_recv));
        let mut data = build::tcp(host, server, flags::ACK, 1001, 5001, &[1; 100]);
        assert_eq!(through(&mut nat, now, INSIDE, &mut data), Verdict::Forward(UPLINK));
        assert_eq!(nat.next_expiry(), Some(now + t.tcp_established));
    }
    // A simultaneous open (hole punching): the first reply is a SYN.
    let mut nat = router();
    let mut syn = build::tcp(host, server, flags::SYN, 7000, 0, b"");
    through(&mut nat, now, INSIDE, &mut syn);
    let ext = ends(&syn).0;
    let mut theirs = build::tcp(server, ext, flags::SYN, 9000, 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut theirs), Verdict::Forward(INSIDE));
    let mut synack = build::tcp(host, server, flags::SYN | flags::ACK, 7000, 9001, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut synack), Verdict::Forward(UPLINK));
    // A server that still holds an older connection on the tuple answers
    // the SYN with an ACK of that one's numbers: it passes, and so does
    // the client's reset at the number it acknowledges (which clears the
    // old connection); another reset does not. Neither changes the flow,
    // whose SYN, sent again, is then answered.
    let mut nat = router();
    let mut syn = build::tcp(host, server, flags::SYN, 3000, 0, b"");
    through(&mut nat, now, INSIDE, &mut syn);
    let ext = ends(&syn).0;
    let mut challenge = build::tcp(server, ext, flags::ACK, 123_456, 0x7777_0000, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut challenge), Verdict::Forward(INSIDE));
    let mut wrong = build::tcp(host, server, flags::RST, 0x7777_0001, 0, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut wrong), Verdict::Drop(Reason::OutOfWindow));
    let mut rst = build::tcp(host, server, flags::RST, 0x7777_0000, 0, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut rst), Verdict::Forward(UPLINK));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_syn_sent), "still waiting for the answer");
    let mut syn = build::tcp(host, server, flags::SYN, 3000, 0, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut syn), Verdict::Forward(UPLINK));
    let mut synack = build::tcp(server, ext, flags::SYN | flags::ACK, 8000, 3001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut synack), Verdict::Forward(INSIDE));
    // A client that tries again from the same port with a new sequence
    // number before any answer is followed: its server's answer counts.
    let mut nat = router();
    let mut syn = build::tcp(host, server, flags::SYN, 100, 0, b"");
    through(&mut nat, now, INSIDE, &mut syn);
    let ext = ends(&syn).0;
    let mut again = build::tcp(host, server, flags::SYN, 0x5000_0000, 0, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut again), Verdict::Forward(UPLINK));
    let mut synack = build::tcp(server, ext, flags::SYN | flags::ACK, 42, 0x5000_0001, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut synack), Verdict::Forward(INSIDE));
}

#[test]
fn blind_acks_do_not_make_a_half_open_flow_established() {
    // A port forward's SYN answered but never completed: a blind ACK from
    // outside, with numbers of its own, passes but leaves the flow
    // half-open, to go in minutes rather than days.
    let t = Timeouts::LINUX;
    let mut nat = router();
    let client = sa(SERVER, 52000);
    let now = 10 * SEC;
    let mut syn = build::tcp(client, sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut syn), Verdict::Forward(INSIDE));
    let mut synack = build::tcp(WEB, client, flags::SYN | flags::ACK, 7, 2, b"");
    assert_eq!(through(&mut nat, now, INSIDE, &mut synack), Verdict::Forward(UPLINK));
    let mut blind = build::tcp(client, sa(EXTERNAL, 8080), flags::ACK, 0x6000_0000, 8, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut blind), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_syn_recv));
    let mut ack = build::tcp(client, sa(EXTERNAL, 8080), flags::ACK, 2, 8, b"");
    assert_eq!(through(&mut nat, now, UPLINK, &mut ack), Verdict::Forward(INSIDE));
    assert_eq!(nat.next_expiry(), Some(now + t.tcp_established));
}

#[test]
fn sources_from_the_wrong_side_are_martians() {
    // From the uplink with an inside source: to the forwarded port it
    // would reach the server as a host of the inside network; with TTL 1
    // it would have the router send an ICMP error inside.
    let mut nat = router();
    let mut syn = build::tcp(sa(inside_host(7), 51000), sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut syn), Verdict::Drop(Reason::Martian));
    let mut p = build::udp(sa(inside_host(7), 6000), sa(inside_host(8), 53), b"q");
    build::set_ttl(&mut p, 1);
    assert_eq!(through(&mut nat, 0, UPLINK, &mut p), Verdict::Drop(Reason::Martian));
    // From the inside with an outside source, or the router's own.
    let mut p = build::udp(sa(SERVER, 6000), sa(Ipv4Addr::new(198, 51, 100, 10), 53), b"q");
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Drop(Reason::Martian));
    let mut p = build::udp(sa(ROUTER_INSIDE, 6000), sa(SERVER, 53), b"q");
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Drop(Reason::Martian));
    assert_eq!(nat.stats().flows, 0);
    assert_eq!(nat.stats().dropped(Reason::Martian), 4);
}

#[test]
fn outside_hosts_take_at_most_half_the_table() {
    // SYNs from outside to the forwarded port, from ever new ports (a
    // flood, spoofed or not): half the table, then refused; the inside's
    // own flows still find the other half.
    let mut nat = Nat::new(config(100, PORTS)).unwrap();
    let mut refused = 0;
    for i in 0..200u16 {
        let mut syn = build::tcp(sa(SERVER, 1000 + i), sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
        match through(&mut nat, 0, UPLINK, &mut syn) {
            Verdict::Forward(INSIDE) => {}
            Verdict::Drop(Reason::InboundFull) => refused += 1,
            v => panic!("{v:?}"),
        }
    }
    assert_eq!((refused, nat.stats().flows), (150, 50));
    for i in 0..50u32 {
        let mut p = build::udp(sa(inside_host(i), 6000), sa(SERVER, 53), b"q");
        assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Forward(UPLINK), "{i}");
    }
    let mut p = build::udp(sa(inside_host(60), 6000), sa(SERVER, 53), b"q");
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Drop(Reason::TableFull));
    // The half-open flows expire, and outside hosts come in again.
    nat.expire(200 * SEC);
    let mut syn = build::tcp(sa(SERVER, 9), sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    assert_eq!(through(&mut nat, 200 * SEC, UPLINK, &mut syn), Verdict::Forward(INSIDE));
}

#[test]
fn icmp_errors_are_translated_both_headers() {
    let mut nat = router();
    let host = sa(inside_host(1), 33000);
    let mut syn = build::tcp(host, sa(SERVER, 443), flags::SYN, 1, 0, b"payload!");
    through(&mut nat, 0, INSIDE, &mut syn);
    // A router on the way says the TTL ran out, quoting the packet as it
    // left us; and the server says the port is unreachable.
    let hop = Ipv4Addr::new(198, 18, 0, 1);
    for (from, kind, code) in [(hop, build::ICMP_TIME_EXCEEDED, 0), (SERVER, build::ICMP_UNREACHABLE, 3)] {
        let mut err = build::icmp_error(from, kind, code, &syn).unwrap();
        assert_eq!(&err[16..20], &EXTERNAL.octets());
        assert_eq!(through(&mut nat, 1, UPLINK, &mut err), Verdict::Forward(INSIDE));
        valid(&err);
        assert_eq!(&err[12..16], &from.octets(), "the sender stays");
        assert_eq!(&err[16..20], &host.ip().octets());
        let quote = &err[28..];
        assert_eq!(ends(quote), (host, sa(SERVER, 443)), "the quote is the packet as the host sent it");
    }
    // A truncated quote (header and 8 bytes, as old routers send).
    let mut err = build::icmp_error(hop, build::ICMP_TIME_EXCEEDED, 0, &syn).unwrap();
    err.truncate(20 + 8 + 28);
    err[2..4].copy_from_slice(&56u16.to_be_bytes());
    build::set_ttl(&mut err, 64);
    let fix = |e: &mut Vec<u8>| {
        e[22] = 0;
        e[23] = 0;
        let c = mirage_nat::checksum(&e[20..]);
        e[22..24].copy_from_slice(&c.to_be_bytes());
    };
    fix(&mut err);
    assert_eq!(through(&mut nat, 1, UPLINK, &mut err), Verdict::Forward(INSIDE));
    valid(&err);
    assert_eq!(ends(&err[28..]), (host, sa(SERVER, 443)));

    // About a ping.
    let mut ping = build::echo(inside_host(2), SERVER, true, 4242, 1, b"abc");
    through(&mut nat, 2, INSIDE, &mut ping);
    let mut err = build::icmp_error(hop, build::ICMP_TIME_EXCEEDED, 0, &ping).unwrap();
    assert_eq!(through(&mut nat, 3, UPLINK, &mut err), Verdict::Forward(INSIDE));
    valid(&err);
    assert_eq!(&err[16..20], &inside_host(2).octets());
    assert_eq!(&err[28 + 12..28 + 16], &inside_host(2).octets());
    assert_eq!(u16::from_be_bytes([err[28 + 24], err[28 + 25]]), 4242);

    // From the inside server of a port forward, about its reply: the
    // error leaves from the external address.
    let client = sa(SERVER, 52000);
    let mut syn = build::tcp(client, sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    through(&mut nat, 4, UPLINK, &mut syn);
    let mut err = build::icmp_error(*WEB.ip(), build::ICMP_UNREACHABLE, 3, &syn).unwrap();
    assert_eq!(through(&mut nat, 5, INSIDE, &mut err), Verdict::Forward(UPLINK));
    valid(&err);
    assert_eq!(&err[12..16], &EXTERNAL.octets());
    assert_eq!(&err[16..20], &SERVER.octets());
    assert_eq!(ends(&err[28..]), (client, sa(EXTERNAL, 8080)));

    // From a router inside, or a host forging any source, about the reply
    // the host got: it leaves masqueraded, as every packet from inside.
    // It acknowledges the SYN, which carried 8 bytes from 1.
    let mut reply = build::tcp(sa(SERVER, 443), sa(EXTERNAL, host.port()), flags::SYN | flags::ACK, 7, 10, b"");
    assert_eq!(through(&mut nat, 6, UPLINK, &mut reply), Verdict::Forward(INSIDE));
    for from in [Ipv4Addr::new(10, 0, 1, 254), Ipv4Addr::new(8, 8, 8, 8)] {
        let mut err = build::icmp_error(from, build::ICMP_UNREACHABLE, 1, &reply).unwrap();
        assert_eq!(through(&mut nat, 7, INSIDE, &mut err), Verdict::Forward(UPLINK));
        valid(&err);
        assert_eq!(&err[12..16], &EXTERNAL.octets(), "from {from}");
        assert_eq!(&err[16..20], &SERVER.octets());
        assert_eq!(ends(&err[28..]), (sa(SERVER, 443), sa(EXTERNAL, host.port())));
    }
}

#[test]
fn icmp_errors_about_unknown_flows_are_dropped() {
    let mut nat = router();
    let ghost = build::udp(sa(EXTERNAL, 20000), sa(SERVER, 53), b"never sent");
    let mut err = build::icmp_error(SERVER, build::ICMP_UNREACHABLE, 3, &ghost).unwrap();
    assert_eq!(through(&mut nat, 0, UPLINK, &mut err), Verdict::Drop(Reason::UnknownIcmpError));
    // About a real flow, but sent to another address than the flow's.
    let mut q = build::udp(sa(inside_host(1), 6000), sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut q);
    let mut err = build::icmp_error(SERVER, build::ICMP_UNREACHABLE, 3, &q).unwrap();
    err[16..20].copy_from_slice(&[192, 0, 2, 77]);
    build::set_ttl(&mut err, 64);
    assert_eq!(through(&mut nat, 0, UPLINK, &mut err), Verdict::Drop(Reason::UnknownIcmpError));
    // An error quoting an error.
    let inner = build::icmp_error(SERVER, 3, 3, &q).unwrap();
    let mut err = build::icmp_error(SERVER, 3, 3, &inner).unwrap();
    assert_eq!(through(&mut nat, 0, UPLINK, &mut err), Verdict::Drop(Reason::Unsupported));
    assert_eq!(nat.stats().dropped(Reason::UnknownIcmpError), 2);
    // About a real flow, from loopback or from our own address outside.
    for from in [Ipv4Addr::LOCALHOST, EXTERNAL, Ipv4Addr::new(224, 0, 0, 1)] {
        let mut err = build::icmp_error(from, build::ICMP_UNREACHABLE, 3, &q).unwrap();
        assert_eq!(through(&mut nat, 0, UPLINK, &mut err), Verdict::Drop(Reason::Martian), "from {from}");
    }
}

#[test]
fn the_firewall_counts_each_rule() {
    let mut nat = router();
    // Rule 1 (line 2): from inside.
    for n in 0..3 {
        let mut p = build::udp(sa(inside_host(1), 100 + n), sa(SERVER, 53), b"q");
        through(&mut nat, 0, INSIDE, &mut p);
    }
    // Rule 2 (line 4): the forward.
    let mut p = build::tcp(sa(SERVER, 1), sa(EXTERNAL, 8080), flags::SYN, 0, 0, b"");
    through(&mut nat, 0, UPLINK, &mut p);
    // Rule 3 (line 6): a ping to the router.
    let mut ping = build::echo(SERVER, EXTERNAL, true, 1, 1, b"");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut ping), Verdict::Local);
    // Denied by default: anything else from outside.
    for port in [22, 23] {
        let mut p = build::tcp(sa(SERVER, 1), sa(EXTERNAL, port), flags::SYN, 0, 0, b"");
        assert_eq!(through(&mut nat, 0, UPLINK, &mut p), Verdict::Drop(Reason::Denied));
    }
    let mut p = build::udp(sa(SERVER, 1), sa(inside_host(1), 53), b"q");
    assert_eq!(through(&mut nat, 0, UPLINK, &mut p), Verdict::Drop(Reason::Denied));
    let hits: Vec<_> = nat.rules().iter().map(|r| (r.line, r.hits)).collect();
    assert_eq!(hits, [(2, 3), (4, 1), (6, 1), (8, 0)]);
    assert_eq!(nat.rules().default_hits(), 3);
    assert_eq!(nat.stats().dropped(Reason::Denied), 3);
    // Replies pass without the rules, and are not counted as hits.
    let mut pong = build::echo(EXTERNAL, SERVER, false, 1, 1, b"");
    assert_eq!(nat.output(1, UPLINK, &mut pong), Verdict::Forward(UPLINK));
    assert_eq!(nat.rules().iter().map(|r| r.hits).sum::<u64>(), 5);
}

#[test]
fn deny_rules_and_ports() {
    let text = "deny in on inside proto tcp to any port 25,465-587\nallow in on inside\n";
    let mut nat = Nat::new(Config { rules: rules(text), ..config(100, PORTS) }).unwrap();
    for (port, want) in [(25, false), (465, false), (500, false), (587, false), (588, true), (80, true)] {
        let mut p = build::tcp(sa(inside_host(1), 1000 + port), sa(SERVER, port), flags::SYN, 0, 0, b"");
        let v = through(&mut nat, 0, INSIDE, &mut p);
        assert_eq!(v == Verdict::Forward(UPLINK), want, "port {port}: {v:?}");
    }
    let hits: Vec<_> = nat.rules().iter().map(|r| r.hits).collect();
    assert_eq!(hits, [4, 2]);
}

#[test]
fn the_routers_own_traffic_is_tracked() {
    let mut nat = router();
    // The router asks a DNS server; the answer comes back to it, though no
    // rule lets UDP in from the uplink.
    let me = sa(EXTERNAL, 50000);
    let mut q = build::udp(me, sa(SERVER, 53), b"q");
    assert_eq!(nat.output(0, UPLINK, &mut q), Verdict::Forward(UPLINK));
    assert_eq!(q[8], 64, "the router's own packets keep their TTL");
    let mut a = build::udp(sa(SERVER, 53), me, b"a");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut a), Verdict::Local);
    let mut stranger = build::udp(sa(SERVER, 53), sa(EXTERNAL, 50001), b"a");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut stranger), Verdict::Drop(Reason::Denied));
}

#[test]
fn spoofed_and_martian_packets_are_dropped() {
    let mut nat = router();
    let mut q = build::udp(sa(inside_host(1), 6000), sa(SERVER, 53), b"q");
    through(&mut nat, 0, INSIDE, &mut q);
    let ext = ends(&q).0;
    // The reply's tuple, arriving from inside.
    let mut r = build::udp(sa(SERVER, 53), ext, b"a");
    assert_eq!(through(&mut nat, 1, INSIDE, &mut r), Verdict::Drop(Reason::WrongInterface));
    for (src, dst) in [
        (Ipv4Addr::new(127, 0, 0, 1), SERVER),
        (Ipv4Addr::new(224, 0, 0, 1), SERVER),
        (inside_host(1), Ipv4Addr::new(127, 0, 0, 1)),
        (inside_host(1), Ipv4Addr::new(239, 1, 1, 1)),
        (Ipv4Addr::UNSPECIFIED, SERVER),
    ] {
        let mut p = build::udp(sa(src, 1), sa(dst, 2), b"x");
        assert_eq!(through(&mut nat, 1, INSIDE, &mut p), Verdict::Drop(Reason::Martian), "{src} -> {dst}");
    }
    // The router's own address from outside.
    let mut p = build::udp(sa(EXTERNAL, 1), sa(inside_host(1), 2), b"x");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut p), Verdict::Drop(Reason::Martian));
    // A DHCP DISCOVER from 0.0.0.0 to the router is not a martian, but no
    // rule lets it in from the uplink.
    let mut d = build::udp(sa(Ipv4Addr::UNSPECIFIED, 68), sa(Ipv4Addr::BROADCAST, 67), b"discover");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut d), Verdict::Drop(Reason::Denied));
    assert_eq!(through(&mut nat, 1, INSIDE, &mut d), Verdict::Local);
    let mut p = build::udp(sa(inside_host(1), 1), sa(Ipv4Addr::new(203, 0, 113, 1), 2), b"x");
    assert_eq!(through(&mut nat, 1, INSIDE, &mut p), Verdict::Drop(Reason::NoRoute));
}

#[test]
fn ttl_runs_out_on_forwarding_only() {
    let mut nat = router();
    let mut p = build::udp(sa(inside_host(1), 6000), sa(SERVER, 53), b"q");
    build::set_ttl(&mut p, 1);
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p.clone()), Verdict::Drop(Reason::TtlExceeded));
    assert_eq!(nat.stats().flows, 0, "no flow for a packet that cannot leave");
    // The caller may answer with Time Exceeded, built from the packet.
    let te = build::icmp_error(ROUTER_INSIDE, build::ICMP_TIME_EXCEEDED, 0, &p).unwrap();
    valid(&te);
    assert_eq!(&te[16..20], &inside_host(1).octets());
    let mut ping = build::echo(inside_host(1), ROUTER_INSIDE, true, 1, 1, b"");
    build::set_ttl(&mut ping, 1);
    assert_eq!(through(&mut nat, 0, INSIDE, &mut ping), Verdict::Local);
    assert_eq!(ping[8], 1);
}

#[test]
fn traffic_the_rules_deny_draws_no_time_exceeded() {
    // A new flow in from outside to an inside host (denied), with TTL 1:
    // denied, not a TTL run out, so the router sends nothing back.
    let mut nat = router();
    let mut p = build::tcp(sa(SERVER, 7000), sa(EXTERNAL, 22), flags::SYN, 1, 0, b"");
    build::set_ttl(&mut p, 1);
    assert_eq!(through(&mut nat, 0, UPLINK, &mut p), Verdict::Drop(Reason::Denied));
    // The port forward's, which the rules allow, runs out as before.
    let mut p = build::tcp(sa(SERVER, 7000), sa(EXTERNAL, 8080), flags::SYN, 1, 0, b"");
    build::set_ttl(&mut p, 1);
    assert_eq!(through(&mut nat, 0, UPLINK, &mut p), Verdict::Drop(Reason::TtlExceeded));
    assert_eq!((nat.stats().dropped(Reason::TtlExceeded), nat.stats().flows), (1, 0));
}

#[test]
fn one_host_takes_at_most_its_share() {
    // A table of 100, half of it a host's (the default share).
    let mut nat = Nat::new(Config { max_flows_per_host: None, ..config(100, PORTS) }).unwrap();
    assert_eq!(nat.max_flows_per_host(), 50);
    let send = |nat: &mut Nat, now, host: u32, port: u16| {
        let mut p = build::udp(sa(inside_host(host), port), sa(SERVER, 53), b"q");
        (through(nat, now, INSIDE, &mut p), p)
    };
    let flow = |nat: &mut Nat, now, host: u32, port: u16| send(nat, now, host, port).0;
    let (v, first) = send(&mut nat, 0, 1, 999);
    assert_eq!(v, Verdict::Forward(UPLINK));
    let (mut passed, mut refused) = (0, 0);
    for port in 1000..1079 {
        match flow(&mut nat, 0, 1, port) {
            Verdict::Forward(UPLINK) => passed += 1,
            Verdict::Drop(Reason::HostFull) => refused += 1,
            v => panic!("{v:?}"),
        }
    }
    assert_eq!((passed, refused), (49, 30));
    // The router's own flows are not a host's: they take room beside it.
    for port in 0..20 {
        let mut own = build::udp(sa(EXTERNAL, 40000 + port), sa(SERVER, 53), b"q");
        assert_eq!(nat.output(0, UPLINK, &mut own), Verdict::Forward(UPLINK));
    }
    // Another host has the rest of the table; then it is full, for a
    // third host too.
    for port in 1000..1030 {
        assert_eq!(flow(&mut nat, 0, 2, port), Verdict::Forward(UPLINK), "{port}");
    }
    assert_eq!(flow(&mut nat, 0, 2, 2000), Verdict::Drop(Reason::TableFull));
    assert_eq!(flow(&mut nat, 0, 3, 2000), Verdict::Drop(Reason::TableFull));
    // The first host at its share is told so even with the table full.
    assert_eq!(flow(&mut nat, 0, 1, 2000), Verdict::Drop(Reason::HostFull));
    assert_eq!(nat.stats().flows, 100);
    // Its answered flow lasts; its others expire and give its share back.
    let mut a = build::udp(sa(SERVER, 53), ends(&first).0, b"a");
    assert_eq!(through(&mut nat, 1, UPLINK, &mut a), Verdict::Forward(INSIDE));
    let t = Timeouts::LINUX;
    nat.expire(t.udp_unreplied + 1);
    assert_eq!(nat.stats().flows, 1);
    for port in 3000..3049 {
        assert_eq!(flow(&mut nat, t.udp_unreplied + 2, 1, port), Verdict::Forward(UPLINK), "{port}");
    }
    assert_eq!(flow(&mut nat, t.udp_unreplied + 2, 1, 3049), Verdict::Drop(Reason::HostFull));
    // A share of 0 is refused at start.
    let e = Nat::new(Config { max_flows_per_host: Some(0), ..config(10, PORTS) }).unwrap_err();
    assert_eq!(e, mirage_nat::ConfigError::MaxFlowsPerHost);
    assert!(e.to_string().contains("give 1 or more"), "{e}");
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut nat = router();
    let good = build::tcp(sa(inside_host(1), 6000), sa(SERVER, 80), flags::SYN, 0, 0, b"data");
    let fix = |p: &mut Vec<u8>| {
        let ttl = p[8];
        build::set_ttl(p, ttl);
    };
    let mut cases: Vec<(Vec<u8>, Reason)> = Vec::new();
    cases.push((vec![], Reason::Truncated));
    cases.push((good[..19].to_vec(), Reason::Truncated));
    cases.push((good[..30].to_vec(), Reason::Truncated));
    let mut p = good.clone();
    p[0] = 0x65;
    fix(&mut p);
    cases.push((p, Reason::Malformed));
    let mut p = good.clone();
    p[0] = 0x44;
    fix(&mut p);
    cases.push((p, Reason::Malformed));
    let mut p = good.clone();
    p[0] = 0x46;
    fix(&mut p);
    cases.push((p, Reason::Options));
    let mut p = good.clone();
    p[2..4].copy_from_slice(&((good.len() + 1) as u16).to_be_bytes());
    fix(&mut p);
    cases.push((p, Reason::Truncated));
    let mut p = good.clone();
    p[2..4].copy_from_slice(&10u16.to_be_bytes());
    fix(&mut p);
    cases.push((p, Reason::Malformed));
    let mut p = good.clone();
    p[10] ^= 1;
    cases.push((p, Reason::Checksum));
    for frag in [0x2000u16, 0x0001, 0x2010] {
        let mut p = good.clone();
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        fix(&mut p);
        cases.push((p, Reason::Fragment));
    }
    let mut p = good.clone();
    p[9] = 47;
    fix(&mut p);
    cases.push((p, Reason::Unsupported));
    let mut p = good.clone();
    p[32] = 0x20; // TCP data offset 2
    cases.push((p, Reason::Malformed));
    let mut p = build::udp(sa(inside_host(1), 1), sa(SERVER, 2), b"x");
    p[24..26].copy_from_slice(&100u16.to_be_bytes()); // UDP length past the end
    cases.push((p, Reason::Malformed));
    let mut p = build::echo(inside_host(1), SERVER, true, 1, 1, b"");
    p[20] = 13; // timestamp request
    cases.push((p, Reason::Unsupported));
    let mut p = good.clone();
    p[33] = flags::ACK; // not a SYN
    cases.push((p, Reason::NoFlow));
    let mut p = good.clone();
    p[33] = flags::SYN | flags::FIN;
    cases.push((p, Reason::NoFlow));
    let n = cases.len() as u64;
    for (mut p, reason) in cases {
        assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Drop(reason), "{p:02x?}");
    }
    assert_eq!(nat.stats().dropped_total(), n);
    assert_eq!(nat.stats().flows, 0);
    // Link padding after the total length is left alone.
    let mut p = good.clone();
    p.extend_from_slice(&[0xee; 6]);
    assert_eq!(through(&mut nat, 0, INSIDE, &mut p), Verdict::Forward(UPLINK));
    valid(&p[..good.len()]);
    assert_eq!(p[good.len()..], [0xee; 6]);
    assert_eq!(nat.process(0, Interface(255), &mut p, route), Verdict::Drop(Reason::BadInterface));
}

#[test]
fn random_bytes_never_panic_and_the_table_stays_bounded() {
    let mut nat = Nat::new(config(50, (20000, 20100))).unwrap();
    let mut rng = Rng(7);
    let seeds = [
        build::tcp(sa(inside_host(1), 6000), sa(SERVER, 80), flags::SYN, 0, 0, b"data"),
        build::udp(sa(inside_host(1), 6000), sa(SERVER, 80), b"data"),
        build::echo(inside_host(1), SERVER, true, 3, 3, b"data"),
        build::icmp_error(SERVER, 3, 3, &build::udp(sa(EXTERNAL, 20000), sa(SERVER, 80), b"x")).unwrap(),
    ];
    for i in 0..200_000u64 {
        let mut p = seeds[rng.below(4) as usize].clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(p.len() as u64) as usize;
            p[at] = rng.next() as u8;
        }
        if rng.below(4) == 0 {
            build::set_ttl(&mut p, 1 + rng.below(255) as u8);
        }
        if rng.below(8) == 0 {
            p.truncate(rng.below(p.len() as u64 + 1) as usize);
        }
        let iface = Interface(rng.below(3) as u8);
        let _ = nat.process(i * 10, iface, &mut p, route);
        assert!(nat.stats().flows <= 50);
    }
    let s = nat.stats();
    eprintln!("{s}");
    assert!(s.created > 100 && s.dropped_total() > 100_000);
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    use mirage_nat::{ConfigError, Forward, Masquerade, Protocol};
    let bad = |c: Config| Nat::new(c).expect_err("a bad configuration");
    assert_eq!(bad(config(0, PORTS)), ConfigError::MaxFlows(0));
    assert_eq!(bad(config((1 << 24) + 1, PORTS)), ConfigError::MaxFlows((1 << 24) + 1));
    assert_eq!(bad(config(10, (0, 100))), ConfigError::PortRange(0, 100));
    assert_eq!(bad(config(10, (200, 100))), ConfigError::PortRange(200, 100));
    let m = Masquerade { interface: Interface(255), address: EXTERNAL, ports: PORTS };
    assert_eq!(bad(Config { masquerade: Some(m), ..config(10, PORTS) }), ConfigError::Interface);
    assert_eq!(bad(Config { masquerade: None, ..config(10, PORTS) }), ConfigError::ForwardWithoutMasquerade);
    let twice = vec![Forward { protocol: Protocol::Tcp, port: 80, to: WEB }; 2];
    assert_eq!(bad(Config { forwards: twice, ..config(10, PORTS) }), ConfigError::ForwardTwice(80));
    let icmp = vec![Forward { protocol: Protocol::Icmp, port: 1, to: WEB }];
    let e = bad(Config { forwards: icmp, ..config(10, PORTS) });
    assert_eq!(e.to_string(), "port forwards are for tcp and udp, not icmp");
    // The same port may be forwarded for TCP and for UDP.
    let both = vec![
        Forward { protocol: Protocol::Tcp, port: 53, to: WEB },
        Forward { protocol: Protocol::Udp, port: 53, to: WEB },
    ];
    assert!(Nat::new(Config { forwards: both, ..config(10, PORTS) }).is_ok());
    // Without masquerade or forwards, a plain stateful firewall.
    let mut fw = Nat::new(Config { masquerade: None, forwards: vec![], ..config(10, PORTS) }).unwrap();
    let mut p = build::udp(sa(inside_host(1), 1000), sa(SERVER, 53), b"q");
    assert_eq!(through(&mut fw, 0, INSIDE, &mut p), Verdict::Forward(UPLINK));
    assert_eq!(ends(&p).0, sa(inside_host(1), 1000));
    valid(&p);
}
