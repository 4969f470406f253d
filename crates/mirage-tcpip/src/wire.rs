//! The Ethernet and IP layers on their own: parsing and checking of
//! Ethernet, ARP, IPv4, IPv6, ICMP, UDP and TCP headers, for applications
//! that work on raw frames (a responder, a firewall) and need no TCP.
//!
//! [`parse`] checks a frame completely: lengths at every layer and every
//! checksum (IPv4 header, ICMP, ICMPv6, UDP, TCP, behind IPv6 extension
//! headers too). The stack runs it on each frame it receives and drops
//! those it rejects, counting them, so the protocol engine only ever sees
//! well-formed frames.
//!
//! # Panics
//!
//! No function of this module panics, whatever the bytes it is given: the
//! parsers check each length before they read, return [`Malformed`] for
//! what does not fit, and read nothing past the slice they were given
//! (the unit tests feed them 400,000 damaged IPv4 and IPv6 frames, and
//! they are meant for fuzzing with arbitrary input). [`parse`] is the checked entry
//! point for untrusted frames; the others parse one layer of a frame
//! whose outer layers were checked, and check their own layer as
//! thoroughly. The checksum functions accept any length.

use core::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its headers.
    Truncated,
    /// A length field disagrees with the frame.
    BadLength,
    /// A checksum does not match.
    BadChecksum,
    /// A header field has an impossible value (IP version, header length,
    /// ARP address sizes).
    BadHeader,
}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Malformed::Truncated => "truncated frame",
            Malformed::BadLength => "length field disagrees with the frame",
            Malformed::BadChecksum => "bad checksum",
            Malformed::BadHeader => "impossible header field",
        })
    }
}

/// The one's-complement sum of `data` (RFC 1071) added to `sum`, unfolded.
fn add(mut sum: u64, data: &[u8]) -> u64 {
    // The bulk in native byte order, eight bytes at a time: its two 32-bit
    // halves are added to a 64-bit accumulator, which cannot overflow
    // before 16 GiB, so no carry is handled in the loop; two accumulators
    // let the additions overlap. The one's-complement sum of 16-bit words
    // does not depend on byte order but for a swap of its folded result
    // (RFC 1071, 2(B)). This is what makes a 64 KiB segment cheap to sum.
    let mut chunks = data.chunks_exact(16);
    let (mut a, mut b) = (0u64, 0u64);
    for c in &mut chunks {
        let (lo, hi) = c.split_at(8);
        let x = u64::from_ne_bytes([lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7]]);
        let y = u64::from_ne_bytes([hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7]]);
        a += (x & 0xffff_ffff) + (x >> 32);
        b += (y & 0xffff_ffff) + (y >> 32);
    }
    let native = fold16(a) as u64 + fold16(b) as u64;
    sum += u16::from_be(fold16(native)) as u64;
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = rest.remainder() {
        sum += (*b as u64) << 8;
    }
    sum
}

/// `sum` folded to 16 bits with end-around carries, not complemented.
fn fold16(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn fold(sum: u64) -> u16 {
    !fold16(sum)
}

/// The Internet checksum of `data`: 0 over data that includes a correct
/// checksum field.
pub fn checksum(data: &[u8]) -> u16 {
    fold(add(0, data))
}

/// The Internet checksum of an upper-layer packet under the IPv4
/// pseudo-header.
pub fn checksum_ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, data: &[u8]) -> u16 {
    let mut sum = add(0, &src.octets());
    sum = add(sum, &dst.octets());
    sum += protocol as u64 + data.len() as u64;
    fold(add(sum, data))
}

/// The Internet checksum of an upper-layer packet under the IPv6
/// pseudo-header.
pub fn checksum_ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, data: &[u8]) -> u16 {
    let mut sum = add(0, &src.octets());
    sum = add(sum, &dst.octets());
    sum += next_header as u64 + data.len() as u64;
    fold(add(sum, data))
}

/// Fills in the TCP checksum of `frame`, an Ethernet frame carrying TCP
/// over IPv4, or over IPv6 without extension headers (as the stack sends
/// it); whether it did. Any other frame, or one whose lengths do not hold
/// together, is left as it is.
///
/// The stack sends its segments through this rather than have the engine
/// sum them: it is the one pass over a segment's bytes after the last
/// change to its header (the sequence number translation of
/// the connection table), and it sums eight bytes at a time.
pub fn fill_tcp_checksum(frame: &mut [u8]) -> bool {
    let Some((start, end, sum)) = tcp_pseudo_sum(frame) else { return false };
    let segment = &mut frame[start..end];
    segment[16] = 0;
    segment[17] = 0;
    let sum = fold(add(sum, segment));
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Leaves the TCP checksum of `frame` (as [`fill_tcp_checksum`] takes it)
/// for the host to complete: the field gets the pseudo-header's sum, and
/// the answer says where the segment begins in the frame and where the
/// field lies in the segment (virtio-net's `csum_start` and
/// `csum_offset`). `None`, and the frame left as it is, for any other
/// frame, or one with bytes after the segment (the host would sum them).
pub fn partial_tcp_checksum(frame: &mut [u8]) -> Option<(u16, u16)> {
    let (start, end, sum) = tcp_pseudo_sum(frame)?;
    if end != frame.len() {
        // The host sums to the frame's end: padding would count.
        return None;
    }
    // The folded sum, not complemented: the host adds the segment's bytes
    // (this field among them) and complements the total.
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    frame[start + 16..start + 18].copy_from_slice(&(s as u16).to_be_bytes());
    Some((start as u16, 16))
}

/// Where the TCP segment of `frame` begins and ends, and the unfolded sum
/// of its pseudo-header, if `frame` carries TCP over IPv4 or over IPv6
/// without extension headers and its lengths hold together (the segment
/// then holds at least a TCP header).
fn tcp_pseudo_sum(frame: &[u8]) -> Option<(usize, usize, u64)> {
    let (eth, ip) = frame.split_at_checked(14)?;
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETHERTYPE_IPV4 => {
            let &[vihl, _, t0, t1, ..] = ip.get(..20)? else { return None };
            let (ihl, total) = ((vihl & 0x0f) as usize * 4, u16::from_be_bytes([t0, t1]) as usize);
            if vihl >> 4 != 4 || ihl < 20 || ip[9] != PROTO_TCP || total < ihl + 20 || total > ip.len() {
                return None;
            }
            let mut sum = add(0, &ip[12..20]);
            sum += PROTO_TCP as u64 + (total - ihl) as u64;
            Some((14 + ihl, 14 + total, sum))
        }
        ETHERTYPE_IPV6 => {
            let &[v, _, _, _, l0, l1, next, _] = ip.get(..8)? else { return None };
            let len = u16::from_be_bytes([l0, l1]) as usize;
            if v >> 4 != 6 || next != PROTO_TCP || len < 20 || ip.len() < 40 + len {
                return None;
            }
            let mut sum = add(0, &ip[8..40]);
            sum += PROTO_TCP as u64 + len as u64;
            Some((14 + 40, 14 + 40 + len, sum))
        }
        _ => None,
    }
}

/// An Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet<'a> {
    /// Destination MAC address.
    pub dst: [u8; 6],
    /// Source MAC address.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
    /// What follows the header (including any padding).
    pub payload: &'a [u8],
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1: request, 2: reply.
    pub op: u16,
    /// Sender MAC address.
    pub sender_mac: [u8; 6],
    /// Sender IPv4 address.
    pub sender_ip: Ipv4Addr,
    /// Target MAC address.
    pub target_mac: [u8; 6],
    /// Target IPv4 address.
    pub target_ip: Ipv4Addr,
}

/// An IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Header length in bytes.
    pub header_len: usize,
    /// Whether this is a fragment (the payload's own header was not
    /// checked: it may be in another fragment).
    pub fragment: bool,
    /// The payload, cut at the total length (Ethernet padding removed).
    pub payload: &'a [u8],
}

/// An IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6<'a> {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header of the fixed header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// The payload, cut at the payload length.
    pub payload: &'a [u8],
}

/// What an Ethernet frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// ARP.
    Arp(Arp),
    /// IPv4.
    Ipv4(Ipv4<'a>),
    /// IPv6.
    Ipv6(Ipv6<'a>),
    /// Another EtherType, not checked.
    Other,
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Parses the Ethernet header.
pub fn ethernet(frame: &[u8]) -> Result<Ethernet<'_>, Malformed> {
    if frame.len() < 14 {
        return Err(Malformed::Truncated);
    }
    Ok(Ethernet { dst: mac(&frame[0..6]), src: mac(&frame[6..12]), ethertype: be16(frame, 12), payload: &frame[14..] })
}

/// Parses and checks a whole frame, through the transport header and its
/// checksum.
pub fn parse(frame: &[u8]) -> Result<(Ethernet<'_>, Packet<'_>), Malformed> {
    parse_vouched(frame, false)
}

/// As [`parse`]; with `vouched` (the host vouches for the frame's
/// checksums: `mirage_devices::net::RxMeta::checksum_valid`), the ICMP,
/// UDP and TCP checksums are not checked, and may hold a partial sum.
/// Lengths and the IPv4 header's checksum still are.
pub fn parse_vouched(frame: &[u8], vouched: bool) -> Result<(Ethernet<'_>, Packet<'_>), Malformed> {
    let eth = ethernet(frame)?;
    let packet = match eth.ethertype {
        ETHERTYPE_ARP => Packet::Arp(parse_arp(eth.payload)?),
        ETHERTYPE_IPV4 => Packet::Ipv4(ipv4_packet(eth.payload, !vouched)?),
        ETHERTYPE_IPV6 => Packet::Ipv6(ipv6_packet(eth.payload, !vouched)?),
        _ => Packet::Other,
    };
    Ok((eth, packet))
}

/// Parses an ARP packet (Ethernet and IPv4 addresses only).
pub fn parse_arp(p: &[u8]) -> Result<Arp, Malformed> {
    if p.len() < 28 {
        return Err(Malformed::Truncated);
    }
    if be16(p, 0) != 1 || be16(p, 2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return Err(Malformed::BadHeader);
    }
    Ok(Arp {
        op: be16(p, 6),
        sender_mac: mac(&p[8..14]),
        sender_ip: ipv4(&p[14..18]),
        target_mac: mac(&p[18..24]),
        target_ip: ipv4(&p[24..28]),
    })
}

/// Parses an IPv4 packet and checks its header checksum and, unless it is
/// a fragment, its ICMP, UDP or TCP header and checksum.
pub fn parse_ipv4(p: &[u8]) -> Result<Ipv4<'_>, Malformed> {
    ipv4_packet(p, true)
}

fn ipv4_packet(p: &[u8], sums: bool) -> Result<Ipv4<'_>, Malformed> {
    if p.len() < 20 {
        return Err(Malformed::Truncated);
    }
    if p[0] >> 4 != 4 {
        return Err(Malformed::BadHeader);
    }
    let header_len = (p[0] & 0xf) as usize * 4;
    let total = be16(p, 2) as usize;
    if header_len < 20 {
        return Err(Malformed::BadHeader);
    }
    if total < header_len || total > p.len() {
        return Err(Malformed::BadLength);
    }
    if checksum(&p[..header_len]) != 0 {
        return Err(Malformed::BadChecksum);
    }
    let flags_offset = be16(p, 6);
    let fragment = flags_offset & 0x3fff != 0;
    let packet = Ipv4 {
        src: ipv4(&p[12..16]),
        dst: ipv4(&p[16..20]),
        protocol: p[9],
        ttl: p[8],
        header_len,
        fragment,
        payload: &p[header_len..total],
    };
    if !fragment {
        let pseudo = |data: &[u8]| checksum_ipv4(packet.src, packet.dst, packet.protocol, data);
        check_transport(packet.protocol, packet.payload, pseudo, false, sums)?;
    }
    Ok(packet)
}

/// Parses an IPv6 packet and checks the ICMPv6, UDP or TCP header it
/// carries, behind any extension headers, and its checksum (not for a
/// fragment: its upper-layer header may be in another).
pub fn parse_ipv6(p: &[u8]) -> Result<Ipv6<'_>, Malformed> {
    ipv6_packet(p, true)
}

/// As [`parse_ipv6`]; with `vouched` (the checksum was checked already,
/// or the host vouches for it and it may hold a partial sum), the upper
/// layer's checksum is not checked again.
pub fn parse_ipv6_vouched(p: &[u8], vouched: bool) -> Result<Ipv6<'_>, Malformed> {
    ipv6_packet(p, !vouched)
}

fn ipv6_packet(p: &[u8], sums: bool) -> Result<Ipv6<'_>, Malformed> {
    if p.len() < 40 {
        return Err(Malformed::Truncated);
    }
    if p[0] >> 4 != 6 {
        return Err(Malformed::BadHeader);
    }
    let len = be16(p, 4) as usize;
    if 40 + len > p.len() {
        return Err(Malformed::BadLength);
    }
    let packet = Ipv6 {
        src: ipv6(&p[8..24]),
        dst: ipv6(&p[24..40]),
        next_header: p[6],
        hop_limit: p[7],
        payload: &p[40..40 + len],
    };
    let (upper, data, fragment) = ipv6_upper_layer(&packet);
    match upper {
        None if !fragment => return Err(Malformed::BadLength),
        Some(proto) if !fragment => {
            let pseudo = |d: &[u8]| checksum_ipv6(packet.src, packet.dst, proto, d);
            check_transport(proto, data, pseudo, true, sums)?;
        }
        _ => {}
    }
    Ok(packet)
}

/// IPv6 extension headers: hop-by-hop options, routing, fragment,
/// destination options.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION: u8 = 60;

/// The protocol after an IPv6 packet's extension headers, what follows
/// them, and whether one was a fragment header. `None` when an extension
/// header runs past the payload (or there are more than eight).
pub fn ipv6_upper_layer<'a>(p: &Ipv6<'a>) -> (Option<u8>, &'a [u8], bool) {
    let (mut next, mut data, mut fragment) = (p.next_header, p.payload, false);
    for _ in 0..8 {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION => match data.get(1) {
                Some(&n) => (n as usize + 1) * 8,
                None => return (None, &[], fragment),
            },
            IPV6_FRAGMENT => {
                fragment = true;
                8
            }
            _ => return (Some(next), data, fragment),
        };
        if len > data.len() {
            return (None, &[], fragment);
        }
        next = data[0];
        data = &data[len..];
    }
    (None, &[], fragment)
}

/// Where the TCP or UDP checksum of the IP packet `p` (its IPv4 or IPv6
/// header first) lies, for a host to complete it: the transport header's
/// offset in `p`, the field's offset in that header, and the protocol.
/// `None` for a fragment, another protocol, or a packet whose headers do
/// not hold together (lengths are checked, checksums not).
pub fn transport_checksum_field(p: &[u8]) -> Option<(u16, u16, u8)> {
    let (start, proto) = match p.first()? >> 4 {
        4 => {
            let ip = ipv4_packet(p, false).ok()?;
            if ip.fragment {
                return None;
            }
            (ip.header_len, ip.protocol)
        }
        6 => {
            let ip = ipv6_packet(p, false).ok()?;
            let (upper, data, fragment) = ipv6_upper_layer(&ip);
            if fragment {
                return None;
            }
            (40 + ip.payload.len() - data.len(), upper?)
        }
        _ => return None,
    };
    let offset = match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return None,
    };
    if start + offset + 2 > p.len() {
        return None;
    }
    Some((start as u16, offset as u16, proto))
}

/// Writes a UDP datagram from `src:sport` to `dst:dport` carrying
/// `payload`, in an IPv4 packet with TTL 64, checksums filled in, at the
/// start of `buf`; its length (28 + the payload's), or `None` when `buf`
/// is too short or the datagram too long for one packet.
pub fn write_udp_ipv4(
    buf: &mut [u8],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Option<usize> {
    let total = 28 + payload.len();
    if total > usize::from(u16::MAX) || buf.len() < total {
        return None;
    }
    let p = &mut buf[..total];
    p[..12].copy_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, PROTO_UDP, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let u = &mut p[20..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    u[8..].copy_from_slice(payload);
    let c = match checksum_ipv4(src, dst, PROTO_UDP, u) {
        // A computed 0 is sent as all ones (0 means no checksum).
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// Checks the lengths and, with `sums`, the checksum of an ICMP, ICMPv6,
/// UDP or TCP header (other protocols pass). `pseudo` sums under the IP
/// pseudo-header.
fn check_transport(
    protocol: u8,
    data: &[u8],
    pseudo: impl Fn(&[u8]) -> u16,
    v6: bool,
    sums: bool,
) -> Result<(), Malformed> {
    match protocol {
        PROTO_ICMP if !v6 => {
            if data.len() < 8 {
                return Err(Malformed::Truncated);
            }
            if sums && checksum(data) != 0 {
                return Err(Malformed::BadChecksum);
            }
        }
        PROTO_ICMPV6 if v6 => {
            if data.len() < 4 {
                return Err(Malformed::Truncated);
            }
            if sums && pseudo(data) != 0 {
                return Err(Malformed::BadChecksum);
            }
        }
        PROTO_UDP => {
            if data.len() < 8 {
                return Err(Malformed::Truncated);
            }
            let len = be16(data, 4) as usize;
            if len < 8 || len > data.len() {
                return Err(Malformed::BadLength);
            }
            let sum = be16(data, 6);
            // A zero UDP checksum means "none" over IPv4 and is forbidden
            // over IPv6 (RFC 8200, 8.1).
            if sums && sum == 0 && v6 {
                return Err(Malformed::BadChecksum);
            }
            if sums && sum != 0 && pseudo(&data[..len]) != 0 {
                return Err(Malformed::BadChecksum);
            }
        }
        PROTO_TCP => {
            if data.len() < 20 {
                return Err(Malformed::Truncated);
            }
            let offset = (data[12] >> 4) as usize * 4;
            if offset < 20 || offset > data.len() {
                return Err(Malformed::BadLength);
            }
            if sums && pseudo(data) != 0 {
                return Err(Malformed::BadChecksum);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMP echo request from 10.0.0.1 to 10.0.0.2, as ping sends it.
    fn echo() -> [u8; 42] {
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = PROTO_ICMP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let icmp = &mut f[34..42];
        icmp[0] = 8;
        icmp[4..8].copy_from_slice(&[0, 1, 0, 7]);
        let c = checksum(icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071, section 3: the sum of these bytes is 0xddf2.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        // Odd lengths pad with a zero byte.
        assert_eq!(checksum(&[0x01]), !0x0100);
        let long: alloc::vec::Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let mut slow: u32 = 0;
        for c in long.chunks(2) {
            slow += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while slow >> 16 != 0 {
            slow = (slow & 0xffff) + (slow >> 16);
        }
        assert_eq!(checksum(&long), !(slow as u16));
    }

    /// RFC 1071 the slow way: 16-bit words, big-endian, folded.
    fn slow_checksum(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for c in data.chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn fast_checksum_matches_the_slow_one_at_every_length() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: alloc::vec::Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // All ones makes every carry happen.
        let ones = alloc::vec![0xffu8; 70_000];
        for data in [&noise, &ones] {
            for len in (0..300).chain([1459, 1460, 8960, 65_480, 65_535, 70_000]) {
                for start in [0, 1, 3] {
                    let d = &data[start..start + len.min(data.len() - start)];
                    assert_eq!(checksum(d), slow_checksum(d), "length {len} from {start}");
                }
            }
        }
    }

    #[test]
    fn fills_tcp_checksums_as_smoltcp_does() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet,
            Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
        };
        let all: alloc::vec::Vec<u8> = (0..9000u32).map(|i| (i * 31 + 7) as u8).collect();
        // Even and odd lengths: the host's sum pads the last byte.
        for payload in [&all[..], &all[..8999]] {
            let tcp = TcpRepr {
                src_port: 80,
                dst_port: 40000,
                control: TcpControl::Psh,
                seq_number: TcpSeqNumber(0x1234_5678),
                ack_number: Some(TcpSeqNumber(0x0bad_cafe)),
                window_len: 512,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [None; 3],
                timestamp: None,
                payload,
            };
            let caps = ChecksumCapabilities::default();
            for v6 in [false, true] {
                let (src, dst) = if v6 {
                    (IpAddress::v6(0xfe80, 0, 0, 0, 0, 0, 0, 1), IpAddress::v6(0xfe80, 0, 0, 0, 0, 0, 0, 2))
                } else {
                    (IpAddress::v4(10, 0, 0, 2), IpAddress::v4(10, 0, 0, 1))
                };
                let ip_len = if v6 { 40 } else { 20 };
                let mut frame = alloc::vec![0u8; 14 + ip_len + tcp.buffer_len()];
                let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
                EthernetRepr {
                    src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
                    dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
                    ethertype: if v6 { EthernetProtocol::Ipv6 } else { EthernetProtocol::Ipv4 },
                }
                .emit(&mut eth);
                let ip = eth.payload_mut();
                let (IpAddress::Ipv4(s4), IpAddress::Ipv4(d4)) = (src, dst) else {
                    let (IpAddress::Ipv6(s6), IpAddress::Ipv6(d6)) = (src, dst) else { unreachable!() };
                    let repr = Ipv6Repr {
                        src_addr: s6,
                        dst_addr: d6,
                        next_header: IpProtocol::Tcp,
                        payload_len: tcp.buffer_len(),
                        hop_limit: 64,
                    };
                    let mut p = Ipv6Packet::new_unchecked(&mut ip[..]);
                    repr.emit(&mut p);
                    tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &src, &dst, &caps);
                    let expected = frame.clone();
                    frame[14 + 40 + 16] ^= 0x5a;
                    assert!(fill_tcp_checksum(&mut frame));
                    assert_eq!(frame, expected, "IPv6");
                    completed_by_the_host_as_filled(&expected, 14 + 40);
                    continue;
                };
                let repr = Ipv4Repr {
                    src_addr: s4,
                    dst_addr: d4,
                    next_header: IpProtocol::Tcp,
                    payload_len: tcp.buffer_len(),
                    hop_limit: 64,
                };
                let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
                repr.emit(&mut p, &caps);
                tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &src, &dst, &caps);
                let expected = frame.clone();
                frame[14 + 20 + 16] = 0;
                frame[14 + 20 + 17] = 0;
                assert!(fill_tcp_checksum(&mut frame));
                assert_eq!(frame, expected, "IPv4");
                // Damaged frames are left alone and never make it panic.
                for cut in 0..60 {
                    let mut short = expected[..cut].to_vec();
                    assert!(!fill_tcp_checksum(&mut short), "cut at {cut}");
                    assert_eq!(short, expected[..cut]);
                }
                let mut long_total = expected.clone();
                long_total[16] = 0xff;
                assert!(!fill_tcp_checksum(&mut long_total));
                let mut udp = expected.clone();
                udp[23] = PROTO_UDP;
                assert!(!fill_tcp_checksum(&mut udp));
                assert_eq!(partial_tcp_checksum(&mut udp), None);
                completed_by_the_host_as_filled(&expected, 14 + 20);
            }
        }
    }

    /// A checksum left partial and completed as the host completes it
    /// (`PartialChecksum::complete`, the sum from `csum_start` to the
    /// frame's end) is the one `fill_tcp_checksum` fills.
    fn completed_by_the_host_as_filled(expected: &[u8], start: usize) {
        let mut frame = expected.to_vec();
        frame[start + 16] ^= 0xa5;
        let (s, offset) = partial_tcp_checksum(&mut frame).expect("a TCP frame");
        assert_eq!((s as usize, offset), (start, 16));
        assert_ne!(frame, expected, "the field holds the pseudo-header's sum");
        assert!(mirage_devices::net::PartialChecksum::new(s, offset).complete(&mut frame));
        assert_eq!(frame, expected);
        // Bytes after the segment would enter the host's sum: refused.
        let mut padded = expected.to_vec();
        padded.push(0);
        assert_eq!(partial_tcp_checksum(&mut padded), None);
        assert_eq!(&padded[..expected.len()], expected);
    }

    #[test]
    fn parses_an_echo_request() {
        let f = echo();
        let (eth, p) = parse(&f).unwrap();
        assert_eq!(eth.src, [2, 0, 0, 0, 0, 1]);
        let Packet::Ipv4(ip) = p else { panic!("not IPv4: {p:?}") };
        assert_eq!(
            (ip.src, ip.dst, ip.protocol, ip.payload.len()),
            (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1, 8)
        );
    }

    #[test]
    fn rejects_damage() {
        let f = echo();
        for cut in 0..42 {
            assert!(parse(&f[..cut]).is_err(), "truncated at {cut}");
        }
        let mut bad = f;
        bad[16] = 0xff; // total length beyond the frame
        assert_eq!(parse(&bad).unwrap_err(), Malformed::BadLength);
        let mut bad = f;
        bad[22] ^= 1; // TTL: header checksum
        assert_eq!(parse(&bad).unwrap_err(), Malformed::BadChecksum);
        let mut bad = f;
        bad[41] ^= 1; // ICMP payload
        assert_eq!(parse(&bad).unwrap_err(), Malformed::BadChecksum);
        let mut bad = f;
        bad[14] = 0x44; // header length 16
        assert_eq!(parse(&bad).unwrap_err(), Malformed::BadHeader);
    }

    #[test]
    fn a_frame_the_host_vouches_for_skips_only_the_transport_checksum() {
        let f = echo();
        let mut partial = f;
        partial[41] ^= 1; // as a sum left partial
        assert_eq!(parse(&partial).unwrap_err(), Malformed::BadChecksum);
        assert!(parse_vouched(&partial, true).is_ok());
        // Lengths and the IP header's checksum are the frame's, not the
        // host's offload's: still checked.
        let mut bad = f;
        bad[16] = 0xff;
        assert_eq!(parse_vouched(&bad, true).unwrap_err(), Malformed::BadLength);
        let mut bad = f;
        bad[22] ^= 1;
        assert_eq!(parse_vouched(&bad, true).unwrap_err(), Malformed::BadChecksum);
        assert_eq!(parse_vouched(&f[..40], true).unwrap_err(), Malformed::BadLength);
    }

    #[test]
    fn ipv6_extension_headers_are_walked_and_their_transport_checked() {
        // UDP behind a hop-by-hop header, from fe80::1 to fe80::2.
        let (src, dst) = ("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap());
        let mut udp = [0u8, 7, 0, 9, 0, 10, 0, 0, 0xab, 0xcd];
        let c = checksum_ipv6(src, dst, PROTO_UDP, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut p = alloc::vec![0x60, 0, 0, 0, 0, 18, IPV6_HOP_BY_HOP, 64];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[PROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&udp);
        let ip = parse_ipv6(&p).unwrap();
        assert_eq!(ipv6_upper_layer(&ip), (Some(PROTO_UDP), &udp[..], false));
        let mut bad = p.clone();
        bad[49] ^= 1;
        assert_eq!(parse_ipv6(&bad).unwrap_err(), Malformed::BadChecksum);
        // A header longer than the packet.
        let mut bad = p.clone();
        bad[41] = 9;
        assert_eq!(parse_ipv6(&bad).unwrap_err(), Malformed::BadLength);
        // A fragment header: not checked further, and said to be one.
        let mut frag = p.clone();
        frag[6] = IPV6_FRAGMENT;
        frag[40] = PROTO_UDP;
        frag[49] ^= 1;
        let ip = parse_ipv6(&frag).unwrap();
        assert!(ipv6_upper_layer(&ip).2);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut accepted = 0;
        // An IPv6 frame with a hop-by-hop header before UDP.
        let mut v6 = alloc::vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 18, 0, 64];
        v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        v6.extend_from_slice(&[PROTO_UDP, 0, 1, 4, 0, 0, 0, 0, 0, 7, 0, 9, 0, 10, 0, 0, 0xab, 0xcd]);
        for round in 0..400_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 100) as usize;
            let mut f = if round % 2 == 0 { echo().to_vec() } else { v6.clone() };
            let at_least = f.len();
            f.resize(len.max(at_least), 0);
            // Flip a few bytes of a valid frame, or fill with noise.
            for k in 0..(x >> 60) as usize + 1 {
                let i = ((x >> (k * 8 % 64)) as usize) % f.len();
                f[i] = (x >> 32) as u8 ^ k as u8;
            }
            f.truncate(len);
            if parse(&f).is_ok() {
                accepted += 1;
            }
        }
        // Some mutations are harmless (MAC addresses, padding).
        assert!(accepted > 0);
    }
}
