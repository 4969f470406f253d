//! The frame parsers of mirage-tcpip (`wire`), which decide what the
//! protocol engine sees. Checked three ways: the Internet checksum against
//! a plain reference sum; every frame `wire` accepts against smoltcp's own
//! length and checksum checks (the engine's parsers must not refuse what
//! got through); and frames that smoltcp builds, with the fuzz input as
//! addresses, ports and payload, must be accepted and read back field for
//! field (no false refusal).

use std::net::{Ipv4Addr, Ipv6Addr};

use mirage_tcpip::wire::{
    self, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Packet,
};
use smoltcp::wire::{self as smol, IpAddress, IpProtocol};

/// The input is a frame, and the recipe for one.
pub fn run(data: &[u8]) {
    assert_eq!(wire::checksum(data), reference_checksum(0, data), "checksum of {} bytes", data.len());
    // Where a router leaves a partial checksum: within the packet, and
    // only TCP's or UDP's, whatever the bytes.
    if let Some((start, offset, proto)) = wire::transport_checksum_field(data) {
        assert!(usize::from(start) + usize::from(offset) + 2 <= data.len(), "a field past the packet");
        assert!(matches!((proto, offset), (wire::PROTO_TCP, 16) | (wire::PROTO_UDP, 6)), "{proto} at {offset}");
    }
    check_parse(data);
    if let Some((frame, expect)) = build(data) {
        let (_, packet) =
            wire::parse(&frame).unwrap_or_else(|e| panic!("a well-formed frame is refused ({e}): {frame:02x?}"));
        match (packet, expect) {
            (Packet::Ipv4(p), Expect::V4 { src, dst, protocol, payload }) => {
                assert_eq!((p.src, p.dst, p.protocol, p.payload), (src, dst, protocol, &payload[..]));
            }
            (Packet::Ipv6(p), Expect::V6 { src, dst, protocol, payload }) => {
                assert_eq!((p.src, p.dst, p.next_header, p.payload), (src, dst, protocol, &payload[..]));
            }
            (p, _) => panic!("read back as another packet: {p:?}"),
        }
    }
}

/// RFC 1071 one 16-bit word at a time, the last odd byte padded with zero.
fn reference_checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u32 {
    let mut head = Vec::new();
    head.extend_from_slice(src);
    head.extend_from_slice(dst);
    head.extend_from_slice(&(len as u32).to_be_bytes());
    head.extend_from_slice(&[0, 0, 0, protocol]);
    u32::from(!reference_checksum(0, &head))
}

/// Whatever `wire::parse` accepts holds together, and smoltcp's checks
/// agree with it.
fn check_parse(frame: &[u8]) {
    let Ok((eth, packet)) = wire::parse(frame) else { return };
    assert_eq!(eth.payload, &frame[14..]);
    match packet {
        Packet::Arp(_) => assert!(smol::ArpPacket::new_checked(eth.payload).is_ok()),
        Packet::Ipv4(p) => {
            let smol_ip =
                smol::Ipv4Packet::new_checked(eth.payload).expect("smoltcp refuses an IPv4 packet wire accepts");
            assert!(smol_ip.verify_checksum());
            assert_eq!(p.header_len, usize::from(smol_ip.header_len()));
            assert_eq!(p.payload, smol_ip.payload());
            assert_eq!(reference_checksum(0, &eth.payload[..p.header_len]), 0);
            if !p.fragment {
                check_transport(p.protocol, p.payload, IpAddress::Ipv4(p.src), IpAddress::Ipv4(p.dst));
                if matches!(p.protocol, wire::PROTO_TCP | wire::PROTO_UDP) {
                    let field = wire::transport_checksum_field(eth.payload).map(|f| f.0);
                    assert_eq!(field, Some(p.header_len as u16), "the checksum field of a packet wire accepts");
                }
            }
        }
        Packet::Ipv6(p) => {
            let smol_ip =
                smol::Ipv6Packet::new_checked(eth.payload).expect("smoltcp refuses an IPv6 packet wire accepts");
            assert_eq!(p.payload, smol_ip.payload());
            check_transport(p.next_header, p.payload, IpAddress::Ipv6(p.src), IpAddress::Ipv6(p.dst));
        }
        Packet::Other => assert!(![ETHERTYPE_IPV4, ETHERTYPE_IPV6, wire::ETHERTYPE_ARP].contains(&eth.ethertype)),
    }
}

fn check_transport(protocol: u8, data: &[u8], src: IpAddress, dst: IpAddress) {
    let v6 = matches!(src, IpAddress::Ipv6(_));
    let octets = |a: IpAddress| match a {
        IpAddress::Ipv4(a) => a.octets().to_vec(),
        IpAddress::Ipv6(a) => a.octets().to_vec(),
    };
    let pseudo = |len: usize| pseudo_sum(&octets(src), &octets(dst), protocol, len);
    match protocol {
        PROTO_ICMP if !v6 => {
            let p = smol::Icmpv4Packet::new_checked(data).expect("smoltcp refuses an ICMP message wire accepts");
            assert!(p.verify_checksum());
            assert_eq!(reference_checksum(0, data), 0);
        }
        PROTO_ICMPV6 if v6 => {
            let (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) = (src, dst) else { unreachable!() };
            // wire checks the 4-byte header common to all ICMPv6 messages;
            // the engine itself drops types it does not know and messages
            // shorter than their type's fixed part.
            let p = smol::Icmpv6Packet::new_unchecked(data);
            let known = !matches!(p.msg_type(), smol::Icmpv6Message::Unknown(_) | smol::Icmpv6Message::RplControl);
            if known && data.len() >= p.header_len().max(8) {
                assert!(
                    smol::Icmpv6Packet::new_checked(data).is_ok(),
                    "smoltcp refuses an ICMPv6 message wire accepts"
                );
            }
            assert!(p.verify_checksum(&s, &d));
            assert_eq!(reference_checksum(pseudo(data.len()), data), 0);
        }
        PROTO_UDP => {
            let p = smol::UdpPacket::new_checked(data).expect("smoltcp refuses a UDP datagram wire accepts");
            assert!(p.verify_checksum(&src, &dst));
            let len = usize::from(p.len());
            assert!((p.checksum() == 0 && !v6) || reference_checksum(pseudo(len), &data[..len]) == 0);
        }
        PROTO_TCP => {
            let p = smol::TcpPacket::new_checked(data).expect("smoltcp refuses a TCP segment wire accepts");
            assert!(p.verify_checksum(&src, &dst));
            assert_eq!(reference_checksum(pseudo(data.len()), data), 0);
        }
        _ => {}
    }
}

/// What a built frame must read back as.
enum Expect {
    V4 { src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: Vec<u8> },
    V6 { src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, payload: Vec<u8> },
}

/// The frame [`build`] makes from `data`: a valid frame whose bytes are
/// also a recipe, for the seeds.
pub fn built(data: &[u8]) -> Option<Vec<u8>> {
    build(data).map(|(frame, _)| frame)
}

/// A well-formed frame made by smoltcp from the input: the first byte
/// picks IPv4 or IPv6, the transport, IPv4 options and Ethernet padding;
/// then 32 bytes of addresses; the rest is the transport header and
/// payload, whose lengths and checksums smoltcp fills in.
fn build(data: &[u8]) -> Option<(Vec<u8>, Expect)> {
    let (&recipe, rest) = data.split_first()?;
    if rest.len() < 32 {
        return None;
    }
    let (addrs, body) = rest.split_at(32);
    let body = &body[..body.len().min(1400)];
    let v6 = recipe & 1 != 0;
    let protocol = match (recipe >> 1) & 3 {
        0 if v6 => PROTO_ICMPV6,
        0 => PROTO_ICMP,
        1 => PROTO_UDP,
        2 => PROTO_TCP,
        _ => 253, // experimental: not checked beyond IP
    };
    let (src, dst): (IpAddress, IpAddress) = if v6 {
        let s: [u8; 16] = addrs[..16].try_into().ok()?;
        let d: [u8; 16] = addrs[16..].try_into().ok()?;
        (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())
    } else {
        (
            Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]).into(),
            Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]).into(),
        )
    };
    let mut l4 = body.to_vec();
    match protocol {
        PROTO_ICMP => {
            l4.resize(l4.len().max(8), 0);
            smol::Icmpv4Packet::new_unchecked(&mut l4).fill_checksum();
        }
        PROTO_ICMPV6 => {
            l4.resize(l4.len().max(4), 0);
            let (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) = (src, dst) else { return None };
            smol::Icmpv6Packet::new_unchecked(&mut l4).fill_checksum(&s, &d);
        }
        PROTO_UDP => {
            l4.resize(l4.len().max(8), 0);
            let len = l4.len() as u16;
            let mut p = smol::UdpPacket::new_unchecked(&mut l4);
            p.set_len(len);
            p.fill_checksum(&src, &dst);
        }
        PROTO_TCP => {
            l4.resize(l4.len().max(20), 0);
            // A header length from 20 bytes up to what the segment holds.
            let words = (5 + (l4[12] >> 4) % 11).min((l4.len() / 4).min(15) as u8);
            l4[12] = (words << 4) | (l4[12] & 0x0f);
            smol::TcpPacket::new_unchecked(&mut l4).fill_checksum(&src, &dst);
        }
        _ => {}
    }
    let mut ip = Vec::new();
    let expect = match (src, dst) {
        (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
            let options = 4 * usize::from((recipe >> 3) & 3);
            ip.resize(20 + options + l4.len(), 0);
            let mut p = smol::Ipv4Packet::new_unchecked(&mut ip);
            p.set_version(4);
            p.set_header_len((20 + options) as u8);
            p.set_total_len((20 + options + l4.len()) as u16);
            p.set_hop_limit(64);
            p.set_dont_frag(true);
            p.set_next_header(IpProtocol::from(protocol));
            p.set_src_addr(s);
            p.set_dst_addr(d);
            p.payload_mut().copy_from_slice(&l4);
            p.fill_checksum();
            Expect::V4 { src: s, dst: d, protocol, payload: l4 }
        }
        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            ip.resize(40 + l4.len(), 0);
            let mut p = smol::Ipv6Packet::new_unchecked(&mut ip);
            p.set_version(6);
            p.set_payload_len(l4.len() as u16);
            p.set_next_header(IpProtocol::from(protocol));
            p.set_hop_limit(64);
            p.set_src_addr(s);
            p.set_dst_addr(d);
            p.payload_mut().copy_from_slice(&l4);
            Expect::V6 { src: s, dst: d, protocol, payload: l4 }
        }
        _ => return None,
    };
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 }.to_be_bytes());
    frame.extend_from_slice(&ip);
    // Ethernet pads short frames to 60 bytes; the IP length says where the packet ends.
    if recipe & 0x20 != 0 {
        frame.resize(frame.len().max(60) + usize::from(recipe >> 6), 0xa5);
    }
    Some((frame, expect))
}
