//! Just enough of IPv4, TCP, UDP and ICMP to track and translate a packet,
//! read in place, and the Internet checksum (RFC 1071) with its
//! incremental update (RFC 1624).
//!
//! Panic contract: every function here takes any bytes. Lengths are
//! checked before each read; a packet too short for what its header
//! claims is an error ([`Reason::Truncated`] or [`Reason::Malformed`]),
//! never a panic.

use crate::Reason;

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const ICMP: u8 = 1;

pub(crate) const ICMP_ECHO_REPLY: u8 = 0;
pub(crate) const ICMP_UNREACHABLE: u8 = 3;
pub(crate) const ICMP_SOURCE_QUENCH: u8 = 4;
pub(crate) const ICMP_ECHO_REQUEST: u8 = 8;
pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;
pub(crate) const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub(crate) use crate::build::flags::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};

/// A flow's identity in one direction, as the packets of that direction
/// carry it. For ICMP echo, a request has its identifier as `sport` and 0
/// as `dport`, a reply the other way round, so that the reply of a request
/// has the request's tuple turned around, as for TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a packet going the other way.
    pub fn inverse(&self) -> Tuple {
        Tuple { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, proto: self.proto }
    }
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum of `data` (RFC 1071): the ones' complement of the
/// ones' complement sum of its 16-bit words, an odd last byte padded with
/// zero. A header whose checksum field is right sums to 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// The ones' complement sum of `data` added to `acc`, not yet folded.
pub(crate) fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum of 16-bit words into 16 bits with end-around carry.
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The changes to the words under one checksum, to apply at once
/// (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`, summed over every
/// changed word `m`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Delta(u64);

impl Delta {
    /// Word `old` becomes `new`.
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Two words (an address) change.
    pub fn addr(&mut self, old: u32, new: u32) {
        self.word((old >> 16) as u16, (new >> 16) as u16);
        self.word(old as u16, new as u16);
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The changes of `other` as well.
    pub fn add(&mut self, other: &Delta) {
        self.0 += other.0;
    }

    /// Applies the changes to the partial sum at `at` of `b` (a field a
    /// host completes: the pseudo-header's sum, folded and not
    /// complemented), as Linux's `inet_proto_csum_replace4` does for a
    /// `CHECKSUM_PARTIAL` packet: `S' = S + ~m + m'`.
    pub fn apply_partial_at(&self, b: &mut [u8], at: usize) {
        if !self.is_empty() {
            put16(b, at, fold(u64::from(be16(b, at)) + self.0));
        }
    }

    /// The checksum `hc` after the changes.
    pub fn apply(&self, hc: u16) -> u16 {
        !fold(u64::from(!hc) + self.0)
    }

    /// Applies the changes to the checksum field at `at` of `b`, returning
    /// the field's old and new values. A UDP checksum of 0 means "none" and
    /// stays 0; a computed 0 is sent as 0xffff (RFC 768), which `udp` asks
    /// for.
    pub fn apply_at(&self, b: &mut [u8], at: usize, udp: bool) -> (u16, u16) {
        let old = be16(b, at);
        if self.is_empty() || (udp && old == 0) {
            return (old, old);
        }
        let mut new = self.apply(old);
        if udp && new == 0 {
            new = 0xffff;
        }
        put16(b, at, new);
        (old, new)
    }
}

/// The IPv4 header of a packet this crate handles: 20 bytes, no options,
/// not a fragment, its checksum right and its total length within the
/// buffer. Bytes past the total length (link padding) are ignored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ip {
    pub ttl: u8,
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
    /// The end of the packet: the header's total length.
    pub end: usize,
}

/// The IPv4 header length this crate handles: no options.
pub(crate) const IP_HEADER: usize = 20;

pub(crate) fn ip(p: &[u8]) -> Result<Ip, Reason> {
    if p.len() < IP_HEADER {
        return Err(Reason::Truncated);
    }
    if p[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < IP_HEADER {
        return Err(Reason::Malformed);
    }
    if ihl > IP_HEADER {
        return Err(Reason::Options);
    }
    let end = usize::from(be16(p, 2));
    if end < ihl {
        return Err(Reason::Malformed);
    }
    if end > p.len() {
        return Err(Reason::Truncated);
    }
    if checksum(&p[..IP_HEADER]) != 0 {
        return Err(Reason::Checksum);
    }
    // More fragments, or a fragment offset: the ports are in the first
    // fragment only, so fragments cannot be tracked without reassembly.
    if be16(p, 6) & 0x3fff != 0 {
        return Err(Reason::Fragment);
    }
    Ok(Ip { ttl: p[8], proto: p[9], src: be32(p, 12), dst: be32(p, 16), end })
}

/// What a TCP segment says about its sequence space.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpSeq {
    pub seq: u32,
    pub ack: u32,
    /// Where the segment ends: its sequence number, its payload, one for a
    /// SYN and one for a FIN.
    pub end: u32,
    pub window: u16,
    /// The window scale option of a SYN (at most 14).
    pub wscale: Option<u8>,
    pub flags: u8,
}

/// Reads the sequence space of a TCP segment that [`l4`] has checked.
pub(crate) fn tcp_seq(p: &[u8], ip: &Ip) -> TcpSeq {
    // `l4` checked the header's length and its data offset.
    tcp_segment(&p[IP_HEADER..ip.end]).unwrap_or(TcpSeq { seq: 0, ack: 0, end: 0, window: 0, wscale: None, flags: 0 })
}

/// Reads the sequence space of the TCP segment `t` (its header and
/// payload); `None` if its header is short or its data offset wrong.
pub(crate) fn tcp_segment(t: &[u8]) -> Option<TcpSeq> {
    let off = usize::from(*t.get(12)? >> 4) * 4;
    if off < 20 || off > t.len() {
        return None;
    }
    let (seq, flags) = (be32(t, 4), t[13]);
    let len = (t.len() - off) as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    let mut wscale = None;
    if flags & TCP_SYN != 0 {
        let mut o = &t[20..off];
        while let [kind, rest @ ..] = o {
            match kind {
                0 => break,
                1 => o = rest,
                _ => {
                    let Some(&l) = rest.first() else { break };
                    let l = usize::from(l);
                    if l < 2 || l > o.len() {
                        break;
                    }
                    if *kind == 3 && l == 3 {
                        wscale = Some(o[2].min(14));
                    }
                    o = &o[l..];
                }
            }
        }
    }
    Some(TcpSeq { seq, ack: be32(t, 8), end: seq.wrapping_add(len), window: be16(t, 14), wscale, flags })
}

/// What the transport header says, for tracking.
#[derive(Debug, Clone, Copy)]
pub(crate) enum L4 {
    /// TCP or UDP, or an ICMP echo request or reply: a flow's packet.
    Flow { tuple: Tuple, tcp_flags: u8 },
    /// An ICMP error about another packet, whose IP header starts at
    /// `inner` (an offset in the packet).
    IcmpError { inner: usize },
}

/// Reads the transport header of a packet whose IP header `ip` describes.
pub(crate) fn l4(p: &[u8], ip: &Ip) -> Result<L4, Reason> {
    let t = &p[IP_HEADER..ip.end];
    let tuple = |sport, dport| Tuple { src: ip.src, dst: ip.dst, sport, dport, proto: ip.proto };
    match ip.proto {
        TCP => {
            if t.len() < 20 {
                return Err(Reason::Truncated);
            }
            let off = usize::from(t[12] >> 4) * 4;
            if off < 20 || off > t.len() {
                return Err(Reason::Malformed);
            }
            Ok(L4::Flow { tuple: tuple(be16(t, 0), be16(t, 2)), tcp_flags: t[13] })
        }
        UDP => {
            if t.len() < 8 {
                return Err(Reason::Truncated);
            }
            let len = usize::from(be16(t, 4));
            if len < 8 || len > t.len() {
                return Err(Reason::Malformed);
            }
            Ok(L4::Flow { tuple: tuple(be16(t, 0), be16(t, 2)), tcp_flags: 0 })
        }
        ICMP => {
            if t.len() < 8 {
                return Err(Reason::Truncated);
            }
            match t[0] {
                ICMP_ECHO_REQUEST => Ok(L4::Flow { tuple: tuple(be16(t, 4), 0), tcp_flags: 0 }),
                ICMP_ECHO_REPLY => Ok(L4::Flow { tuple: tuple(0, be16(t, 4)), tcp_flags: 0 }),
                ICMP_UNREACHABLE | ICMP_SOURCE_QUENCH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    Ok(L4::IcmpError { inner: IP_HEADER + 8 })
                }
                _ => Err(Reason::Unsupported),
            }
        }
        _ => Err(Reason::Unsupported),
    }
}

/// The packet an ICMP error quotes: its IP header and the first 8 bytes
/// of its transport header at least (RFC 792), as far as the error holds
/// it. The quoted packet's own lengths are not checked against what is
/// there: errors quote a prefix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inner {
    /// The offset of its transport header in the outer packet.
    pub l4: usize,
    /// Its tuple, as it was sent.
    pub tuple: Tuple,
    /// Whether its transport checksum is within the quote.
    pub l4_checksum: bool,
}

pub(crate) fn inner(p: &[u8], ip: &Ip, at: usize) -> Result<Inner, Reason> {
    let q = &p[at..ip.end];
    if q.len() < IP_HEADER {
        return Err(Reason::Truncated);
    }
    let ihl = usize::from(q[0] & 0x0f) * 4;
    if q[0] >> 4 != 4 || ihl < IP_HEADER {
        return Err(Reason::Malformed);
    }
    if ihl > IP_HEADER {
        return Err(Reason::Options);
    }
    // A quoted non-first fragment has no ports to find the flow by.
    if be16(q, 6) & 0x1fff != 0 {
        return Err(Reason::Fragment);
    }
    if q.len() < ihl + 8 {
        return Err(Reason::Truncated);
    }
    let (src, dst, proto) = (be32(q, 12), be32(q, 16), q[9]);
    let t = &q[ihl..];
    let (sport, dport, l4_checksum) = match proto {
        TCP => (be16(t, 0), be16(t, 2), t.len() >= 18),
        UDP => (be16(t, 0), be16(t, 2), true),
        ICMP => match t[0] {
            ICMP_ECHO_REQUEST => (be16(t, 4), 0, true),
            ICMP_ECHO_REPLY => (0, be16(t, 4), true),
            // An error about an error is never sent (RFC 1122 3.2.2).
            _ => return Err(Reason::Unsupported),
        },
        _ => return Err(Reason::Unsupported),
    };
    Ok(Inner { l4: at + ihl, tuple: Tuple { src, dst, sport, dport, proto }, l4_checksum })
}

/// The offset of a transport checksum in its header.
pub(crate) fn checksum_offset(proto: u8) -> usize {
    match proto {
        TCP => 16,
        UDP => 6,
        _ => 2,
    }
}
