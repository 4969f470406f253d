//! The adapter between a [`Net`] interface and the protocol engine.
//!
//! The engine pulls frames through a token pair; `Net` lends a frame to a
//! closure. The adapter copies each received frame into its own buffer
//! (one copy, into cache-warm memory), checks it with [`crate::wire::parse`]
//! and only then hands it on, so malformed frames are counted here and the
//! engine sees none. Sent frames are written by the engine straight into the
//! buffer the interface provides.

use alloc::vec;
use alloc::vec::Vec;

use mirage_devices::net::{self, Net};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};

use crate::Stats;
use crate::wire::{self, Packet};
use core::net::IpAddr;

pub(crate) struct Adapter<N> {
    pub net: N,
    rx: Vec<u8>,
    /// Scratch space for a frame the interface refused.
    scratch: Vec<u8>,
    mtu: usize,
    pub stats: Stats,
    /// Length of the checked frame in `rx` that the engine takes next.
    pending: Option<usize>,
    /// When that frame is a TCP SYN without ACK: its source address, source
    /// port and destination port.
    pub syn: Option<(IpAddr, u16, u16)>,
    /// The interface failed or is gone.
    pub failed: Option<net::Error>,
    acks: AckSeq,
}

impl<N: Net> Adapter<N> {
    #[cold]
    fn malformed(&mut self, why: impl core::fmt::Display) {
        self.stats.malformed += 1;
        log::debug!("dropped a malformed frame: {why} ({} so far)", self.stats.malformed);
    }

    /// Drops the frame [`Adapter::fetch`] read.
    pub fn skip(&mut self) {
        self.pending = None;
    }

    /// Reads the next well-formed frame for the engine, counting and
    /// skipping malformed ones; whether there is one.
    pub fn fetch(&mut self) -> bool {
        if self.pending.is_some() {
            return true;
        }
        loop {
            let rx = &mut self.rx;
            let got = match self.net.try_recv(|frame| {
                let n = frame.len().min(rx.len());
                rx[..n].copy_from_slice(&frame[..n]);
                // A frame longer than the MTU allows is malformed.
                if frame.len() > rx.len() { None } else { Some(n) }
            }) {
                Ok(got) => got,
                Err(e) => {
                    self.failed = Some(e);
                    return false;
                }
            };
            let Some(got) = got else { return false };
            self.stats.rx_frames += 1;
            let len = match got {
                None => {
                    self.malformed("longer than the MTU");
                    continue;
                }
                Some(n) => n,
            };
            match wire::parse(&self.rx[..len]) {
                Ok((_, packet)) => self.syn = syn_of(&packet),
                Err(e) => {
                    self.malformed(e);
                    continue;
                }
            }
            self.pending = Some(len);
            return true;
        }
    }


    pub fn new(net: N) -> Adapter<N> {
        let max = net.info().max_frame();
        Adapter {
            net,
            rx: vec![0; max],
            scratch: vec![0; max],
            mtu: max,
            stats: Stats::default(),
            pending: None,
            syn: None,
            failed: None,
            acks: AckSeq::new(),
        }
    }
}

/// The source address, source port and destination port of a TCP SYN
/// without ACK.
fn syn_of(packet: &Packet<'_>) -> Option<(IpAddr, u16, u16)> {
    let (src, proto, payload) = match *packet {
        Packet::Ipv4(p) if !p.fragment => (IpAddr::V4(p.src), p.protocol, p.payload),
        Packet::Ipv6(p) => (IpAddr::V6(p.src), p.next_header, p.payload),
        _ => return None,
    };
    // `parse` checked that the TCP header is there.
    if proto != wire::PROTO_TCP || payload[13] & 0x12 != 0x02 {
        return None;
    }
    Some((src, u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]])))
}

pub(crate) struct Rx<'a>(&'a [u8]);

pub(crate) struct Tx<'a, N> {
    net: &'a mut N,
    acks: &'a mut AckSeq,
    scratch: &'a mut [u8],
    stats: &'a mut Stats,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<N: Net> phy::TxToken for Tx<'_, N> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // The engine never asks for more than the MTU it was given; a
        // frame the interface cannot take now is dropped and counted, as a
        // full transmit queue drops it on any host (TCP retransmits). The
        // engine still needs the closure's result: if the interface never
        // ran it, it runs on scratch space.
        let mut f = Some(f);
        let mut out = None;
        let acks = self.acks;
        let sent = self.net.send(len, |buf| {
            if let Some(f) = f.take() {
                out = Some(f(buf));
                acks.outgoing(buf);
            }
        });
        match sent {
            Ok(()) => self.stats.tx_frames += 1,
            Err(_) => self.stats.tx_dropped += 1,
        }
        match (out, f) {
            (Some(r), _) => r,
            (None, Some(f)) => {
                let len = len.min(self.scratch.len());
                f(&mut self.scratch[..len])
            }
            // `f` is taken only where `out` is set.
            (None, None) => unreachable!(),
        }
    }
}

impl<N: Net> phy::Device for Adapter<N> {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(Rx<'_>, Tx<'_, N>)> {
        let len = self.pending.take()?;
        Some((Rx(&self.rx[..len]), Tx { net: &mut self.net, acks: &mut self.acks, scratch: &mut self.scratch, stats: &mut self.stats }))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Tx<'_, N>> {
        Some(Tx { net: &mut self.net, acks: &mut self.acks, scratch: &mut self.scratch, stats: &mut self.stats })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu;
        // Received frames were checked by `wire::parse`: the engine only
        // computes checksums of what it sends.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

/// Keeps the sequence number of pure ACKs at the highest sequence number
/// sent.
///
/// After a retransmission timeout the engine rewinds its "next sequence
/// number" to the oldest unacknowledged byte, and its pure ACKs carry that
/// number. A peer that already received those bytes finds such an ACK
/// outside its window and drops it, acknowledgment included (RFC 793).
/// When both ends run this engine and both have data outstanding, each
/// drops the other's ACKs and the connection stalls for good. Linux sends
/// ACKs with its highest sequence number (`tcp_acceptable_seq`); this does
/// the same to the frames the engine emits. Keep-alive probes, which use
/// the number just below on purpose, are left alone.
struct AckSeq {
    slots: Vec<Option<(Tuple, u32)>>,
}

/// (local address, remote address, local port, remote port)
type Tuple = (IpAddr, IpAddr, u16, u16);

const ACK_SLOTS: usize = 256;

impl AckSeq {
    fn new() -> AckSeq {
        AckSeq { slots: vec![None; ACK_SLOTS] }
    }

    fn slot(t: &Tuple) -> usize {
        let mut h: u32 = 0x811c_9dc5;
        let mut mix = |b: u8| h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        for b in t.2.to_be_bytes().into_iter().chain(t.3.to_be_bytes()) {
            mix(b);
        }
        if let IpAddr::V4(a) = t.1 {
            a.octets().into_iter().for_each(&mut mix);
        } else if let IpAddr::V6(a) = t.1 {
            a.octets().into_iter().for_each(&mut mix);
        }
        h as usize % ACK_SLOTS
    }

    /// Looks at a frame the engine wrote, and fixes it if it is a rewound
    /// pure ACK.
    fn outgoing(&mut self, frame: &mut [u8]) {
        let Some((tuple, tcp_at, tcp_len)) = tcp_of(frame) else { return };
        let tcp = &mut frame[tcp_at..tcp_at + tcp_len];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let flags = tcp[13];
        let header = (tcp[12] >> 4) as usize * 4;
        if flags & 0x04 != 0 || header > tcp.len() {
            return;
        }
        let len = (tcp.len() - header) as u32 + (flags & 0x02 != 0) as u32 + (flags & 0x01 != 0) as u32;
        let slot = &mut self.slots[AckSeq::slot(&tuple)];
        if len > 0 {
            let end = seq.wrapping_add(len);
            match slot {
                Some((t, max)) if *t == tuple && flags & 0x02 == 0 => {
                    if (end.wrapping_sub(*max) as i32) > 0 {
                        *max = end;
                    }
                }
                _ => *slot = Some((tuple, end)),
            }
            return;
        }
        let Some((t, max)) = slot else { return };
        // More than one behind: a rewound ACK, not a keep-alive probe.
        if *t != tuple || flags & 0x10 == 0 || (max.wrapping_sub(seq) as i32) <= 1 {
            return;
        }
        let new = *max;
        tcp[4..8].copy_from_slice(&new.to_be_bytes());
        // RFC 1624 incremental update: HC' = ~(~HC + ~m + m') per word.
        let mut sum = !u16::from_be_bytes([tcp[16], tcp[17]]) as u32;
        for (old, new) in [((seq >> 16) as u16, (new >> 16) as u16), (seq as u16, new as u16)] {
            sum += !old as u32 + new as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
}

/// The connection, offset and length of the TCP segment in a frame the
/// engine wrote (well formed: no need to check it all).
fn tcp_of(f: &[u8]) -> Option<(Tuple, usize, usize)> {
    if f.len() < 14 {
        return None;
    }
    let ip = &f[14..];
    let (src, dst, at, len) = match u16::from_be_bytes([f[12], f[13]]) {
        wire::ETHERTYPE_IPV4 if ip.len() >= 20 && ip[9] == wire::PROTO_TCP => {
            let ihl = (ip[0] & 0xf) as usize * 4;
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
            let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
            (src, dst, 14 + ihl, total.checked_sub(ihl)?)
        }
        wire::ETHERTYPE_IPV6 if ip.len() >= 40 && ip[6] == wire::PROTO_TCP => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&ip[8..24]);
            let src = IpAddr::from(a);
            a.copy_from_slice(&ip[24..40]);
            (src, IpAddr::from(a), 14 + 40, u16::from_be_bytes([ip[4], ip[5]]) as usize)
        }
        _ => return None,
    };
    if len < 20 || at + len > f.len() {
        return None;
    }
    let seg = &f[at..];
    Some(((src, dst, u16::from_be_bytes([seg[0], seg[1]]), u16::from_be_bytes([seg[2], seg[3]])), at, len))
}
