//! Builds IPv4 packets with their checksums computed in full: for tests,
//! benchmarks and fuzz seeds, and for the ICMP errors a router sends
//! (Time Exceeded when [`crate::Reason::TtlExceeded`] drops a packet).
//!
//! Every function returns the packet from its IP header on, with TTL 64
//! (change it with [`set_ttl`]), no options, identification 0 and the
//! don't-fragment bit clear.

use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::{self, IP_HEADER, be16, fold, put16, sum};

/// ICMP type 3, destination unreachable.
pub const ICMP_UNREACHABLE: u8 = wire::ICMP_UNREACHABLE;
/// ICMP type 11, time exceeded (code 0: TTL exceeded in transit).
pub const ICMP_TIME_EXCEEDED: u8 = wire::ICMP_TIME_EXCEEDED;

/// The bytes of a packet an ICMP error quotes at most: a reply stays
/// within 576 bytes (RFC 1812 4.3.2.3).
pub const QUOTE_MAX: usize = 576 - IP_HEADER - 8;

/// An IPv4 packet of protocol `proto` around `payload`, whose transport
/// checksum (at `csum_at` of the payload, with the pseudo-header if
/// `pseudo`) is computed in full.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, mut payload: Vec<u8>, csum_at: usize, pseudo: bool) -> Vec<u8> {
    put16(&mut payload, csum_at, 0);
    let mut acc = 0;
    if pseudo {
        acc = sum(&src.octets(), acc);
        acc = sum(&dst.octets(), acc);
        acc += u64::from(proto) + payload.len() as u64;
    }
    let mut c = !fold(sum(&payload, acc));
    if proto == wire::UDP && c == 0 {
        c = 0xffff;
    }
    put16(&mut payload, csum_at, c);
    let total = IP_HEADER + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let h = wire::checksum(&p[..IP_HEADER]);
    put16(&mut p, 10, h);
    p.extend_from_slice(&payload);
    p
}

/// A UDP datagram.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4(*src.ip(), *dst.ip(), wire::UDP, u, 6, true)
}

/// TCP flag bits, for [`tcp`].
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// A TCP segment with `flags` (see [`flags`]), a 20-byte header and a
/// window of 65535.
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&src.port().to_be_bytes());
    t.extend_from_slice(&dst.port().to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    ipv4(*src.ip(), *dst.ip(), wire::TCP, t, 16, true)
}

/// An ICMP echo request (`request`) or reply.
pub fn echo(src: Ipv4Addr, dst: Ipv4Addr, request: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let kind = if request { wire::ICMP_ECHO_REQUEST } else { wire::ICMP_ECHO_REPLY };
    let mut m = Vec::with_capacity(8 + payload.len());
    m.extend_from_slice(&[kind, 0, 0, 0]);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    ipv4(src, dst, wire::ICMP, m, 2, false)
}

/// An ICMP error of `kind` and `code` from `from` about `packet` (its IP
/// header on), sent back to its source and quoting as much of it as
/// [`QUOTE_MAX`] allows. `None` if `packet` has no IPv4 header to quote.
pub fn icmp_error(from: Ipv4Addr, kind: u8, code: u8, packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < IP_HEADER || packet[0] >> 4 != 4 {
        return None;
    }
    let to = Ipv4Addr::from(wire::be32(packet, 12));
    let end = usize::from(be16(packet, 2)).clamp(IP_HEADER, packet.len());
    let quote = &packet[..end.min(QUOTE_MAX)];
    let mut m = Vec::with_capacity(8 + quote.len());
    m.extend_from_slice(&[kind, code, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(quote);
    Some(ipv4(from, to, wire::ICMP, m, 2, false))
}

/// Sets a packet's TTL, updating its header checksum.
pub fn set_ttl(packet: &mut [u8], ttl: u8) {
    if packet.len() >= IP_HEADER {
        packet[8] = ttl;
        put16(packet, 10, 0);
        let c = wire::checksum(&packet[..IP_HEADER]);
        put16(packet, 10, c);
    }
}
