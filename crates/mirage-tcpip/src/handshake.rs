//! Passive opens. The adapter answers the SYNs for a listener itself, and
//! the engine gets a connection only when its handshake is complete, with
//! its buffers allocated then: a half-open connection costs a SYN-queue
//! entry of about a hundred bytes, or nothing at all.
//!
//! The initial sequence number sent in the SYN-ACK is always a SYN cookie:
//! a keyed hash (SipHash) of the connection's addresses and ports, the
//! peer's initial sequence number and a 64-second period, with the peer's
//! MSS and window scale encoded in its top bits. A handshake whose entry
//! is in the SYN queue completes with the options the SYN carried, and
//! its SYN-ACK is retransmitted (after 1, 2 and 4 s, then the entry goes:
//! the SYN-RECEIVED timeout). When the queue is full the SYN is answered
//! all the same, and the ACK that comes back is checked against the
//! cookie: a flood of SYNs from addresses that never answer fills the
//! queue and costs nothing more, while a real client's handshake
//! completes. What a cookie cannot carry is lost on that path: selective
//! acknowledgments, and an MSS other than the four it encodes (rounded
//! down).
//!
//! To hand the connection to the engine, the stack replays the handshake
//! into a fresh listening socket: a made-up SYN with the peer's options,
//! then the peer's ACK. The engine chooses its own initial sequence number
//! on the way; its SYN-ACK is kept from the wire, and the connection's
//! record ([`crate::conns`]) translates between the two numbers from then
//! on.

use core::net::IpAddr;

use mirage_runtime::time::{Duration, Instant};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::conns::Tuple;
use crate::table::{SipHasher, Table};
use core::hash::{Hash, Hasher};

/// The options of a handshake that matter to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opts {
    pub mss: u16,
    pub wscale: Option<u8>,
    pub sack: bool,
}

/// A half-open connection: a SYN answered, its ACK awaited.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HalfOpen {
    pub peer_isn: u32,
    pub isn: u32,
    pub opts: Opts,
    /// Where the SYN came from, on the link.
    pub mac: [u8; 6],
    pub tries: u8,
    pub next: Instant,
    /// When the peer's ACK came and room was asked for it (a connection
    /// shed, closed ones left to drain, or memory asked back of the
    /// application): a copy of that ACK within `inbound::ASKED` waits for
    /// the room and asks no more; a later one is judged again.
    pub made_room: Option<Instant>,
}

/// The MSS values a cookie can carry (the common ones: the IPv4 minimum,
/// the IPv6 minimum less headers, and Ethernet's over IPv6 and IPv4).
const MSS: [u16; 4] = [536, 1220, 1440, 1460];
/// A cookie's period; it is valid in its period and the next.
const PERIOD: u64 = 64;
/// SYN-ACK retransmissions before a half-open entry is given up.
const RETRIES: u8 = 3;
const FIRST_RTO: Duration = Duration::from_secs(1);

pub(crate) struct Handshakes {
    pub queue: Table<Tuple, HalfOpen>,
    key: (u64, u64),
    /// The memory budget, asked before the queue grows.
    may_hold: fn(usize) -> bool,
    /// Handshakes the queue could not hold (the SYN answered by a cookie
    /// alone, the budget reached) whose ACK asked for room: the newest
    /// few, in a ring that takes no memory of the heap. Copies of the ACK
    /// wait for that room instead of each shedding another connection
    /// (the queue cannot grow just when room is short, which is when room
    /// is asked), and the client's next segments complete the handshake as
    /// with a queued entry, where the cookie checks only the first (the
    /// second segment of a request would otherwise reach the engine, which
    /// knows no such connection and resets it).
    asked: [Option<Asked>; ASKED_RING],
}

/// A handshake in the ring of [`Handshakes::asked`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked {
    pub t: Tuple,
    pub peer_isn: u32,
    pub isn: u32,
    pub opts: Opts,
    /// When room was asked for it.
    pub at: Instant,
}

/// Handshakes noted in [`Handshakes::asked`], at most.
const ASKED_RING: usize = 16;

impl core::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Handshakes").field("queue", &self.queue).finish()
    }
}

impl Handshakes {
    pub(crate) fn new(key: (u64, u64), max: usize, may_hold: fn(usize) -> bool) -> Handshakes {
        Handshakes { queue: Table::new((key.0 ^ 0x5eed, key.1), max), key, may_hold, asked: [None; ASKED_RING] }
    }

    fn mac(&self, t: &Tuple, peer_isn: u32, period: u64, bits: u32) -> u32 {
        let mut h = SipHasher::new(self.key);
        t.hash(&mut h);
        peer_isn.hash(&mut h);
        period.hash(&mut h);
        bits.hash(&mut h);
        h.finish() as u32 & 0x00ff_ffff
    }

    /// The cookie for a SYN, and the options it carries.
    pub(crate) fn cookie(&self, t: &Tuple, peer_isn: u32, opts: Opts, now: Instant) -> u32 {
        let period = now.as_nanos() / 1_000_000_000 / PERIOD;
        let mss = MSS.iter().rposition(|&m| m <= opts.mss).unwrap_or(0) as u32;
        let ws = opts.wscale.map_or(0, |s| s.min(14) as u32 + 1);
        let bits = ((period as u32 & 3) << 30) | (mss << 28) | (ws << 24);
        bits | self.mac(t, peer_isn, period, bits)
    }

    /// The options of a valid cookie.
    pub(crate) fn check(&self, t: &Tuple, peer_isn: u32, isn: u32, now: Instant) -> Option<Opts> {
        let current = now.as_nanos() / 1_000_000_000 / PERIOD;
        let bits = isn & 0xff00_0000;
        let period = [current, current.wrapping_sub(1)].into_iter().find(|p| *p as u32 & 3 == isn >> 30)?;
        if self.mac(t, peer_isn, period, bits) != isn & 0x00ff_ffff {
            return None;
        }
        let ws = (isn >> 24) & 0xf;
        Some(Opts { mss: MSS[(isn >> 28) as usize & 3], wscale: (ws > 0).then(|| ws as u8 - 1), sack: false })
    }

    /// Remembers a half-open connection; false when the queue is full.
    pub(crate) fn remember(
        &mut self,
        t: Tuple,
        peer_isn: u32,
        isn: u32,
        opts: Opts,
        mac: [u8; 6],
        now: Instant,
    ) -> bool {
        let entry = HalfOpen { peer_isn, isn, opts, mac, tries: 0, next: now + FIRST_RTO, made_room: None };
        // Within the memory budget too: a flood of spoofed SYNs grows the
        // queue to its limit, and past the budget the cookie answers alone.
        self.queue.insert_within(t, entry, self.may_hold).is_ok()
    }

    /// Notes that room was asked, at `at`, for the handshake of `a.t`: in
    /// its queued entry, or in the ring if it has none. The ring's slot is
    /// the handshake's own, else a free one, else one whose cookie has
    /// run out, else the one that asked longest ago: that handshake is
    /// returned, for what was kept of it to be forgotten too.
    pub(crate) fn note_asked(&mut self, a: Asked, now: Instant) -> Option<Tuple> {
        if let Some(h) = self.queue.get_mut(&a.t) {
            h.made_room = Some(a.at);
            self.forget_asked(&a.t);
            return None;
        }
        // The lowest rank; of live ones (rank 3), the oldest.
        let rank = |x: &Option<Asked>| match x {
            Some(x) if x.t == a.t => (0, None),
            None => (1, None),
            Some(x) if self.check(&x.t, x.peer_isn, x.isn, now).is_none() => (2, None),
            Some(x) => (3, Some(x.at)),
        };
        let slot = (0..ASKED_RING).min_by_key(|&i| rank(&self.asked[i]))?;
        let evicted = self.asked[slot].filter(|_| rank(&self.asked[slot]).0 == 3).map(|x| x.t);
        self.asked[slot] = Some(a);
        evicted
    }

    /// The handshake of `t` in the ring, while its cookie is valid (a
    /// minute or two: the ring is not a way around the cookie's period).
    pub(crate) fn asked(&self, t: &Tuple, now: Instant) -> Option<Asked> {
        self.asked
            .iter()
            .flatten()
            .find(|a| a.t == *t)
            .filter(|a| self.check(t, a.peer_isn, a.isn, now).is_some())
            .copied()
    }

    /// The peer's initial sequence number in the handshake of `t` that is
    /// pending: queued, or in the ring.
    pub(crate) fn peer_isn(&self, t: &Tuple, now: Instant) -> Option<u32> {
        self.queue.get(t).map(|h| h.peer_isn).or_else(|| self.asked(t, now).map(|a| a.peer_isn))
    }

    /// Forgets the pending handshake of `t`: made, refused or reset.
    pub(crate) fn forget(&mut self, t: &Tuple) {
        self.queue.remove(t);
        self.forget_asked(t);
    }

    fn forget_asked(&mut self, t: &Tuple) {
        for a in self.asked.iter_mut() {
            if a.is_some_and(|a| a.t == *t) {
                *a = None;
            }
        }
    }

    /// The half-open connections whose SYN-ACK is due again (calls `resend`
    /// for each) and forgets those out of retries; how many it forgot.
    pub(crate) fn retransmit(&mut self, now: Instant, mut resend: impl FnMut(&Tuple, &HalfOpen)) -> u64 {
        let mut forgotten = 0;
        self.queue.retain(|t, h| {
            if now < h.next {
                return true;
            }
            if h.tries >= RETRIES {
                forgotten += 1;
                return false;
            }
            h.tries += 1;
            h.next = now + FIRST_RTO * (1 << h.tries);
            resend(t, h);
            true
        });
        self.queue.shrink();
        forgotten
    }
}

/// The SYN-ACK for a handshake: what the engine would send (MSS from the
/// MTU, the window of an empty buffer, window scaling and SACK if the peer
/// offered them, no timestamps) but with `isn`. Which buffers the
/// connection gets is decided when it completes, so the window is that of
/// the least (`buffers.0`, what every connection gets) and the scale that
/// of the largest (`buffers.1`): the adapter rescales the engine's windows
/// where its buffers are smaller ([`wire_shift`]).
pub(crate) fn syn_ack(
    t: &Tuple,
    peer_isn: u32,
    isn: u32,
    opts: Opts,
    mtu: usize,
    buffers: (usize, usize),
) -> TcpRepr<'static> {
    let ip_header = if t.local.is_ipv4() { 20 } else { 40 };
    TcpRepr {
        src_port: t.local_port,
        dst_port: t.remote_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(isn as i32),
        ack_number: Some(TcpSeqNumber(peer_isn.wrapping_add(1) as i32)),
        window_len: buffers.0.min(u16::MAX as usize) as u16,
        window_scale: opts.wscale.map(|_| wire_shift(buffers)),
        max_seg_size: Some((mtu.saturating_sub(ip_header + 20)).min(u16::MAX as usize) as u16),
        sack_permitted: opts.sack,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

/// The window scale the peers of passive opens are told: the engine's for
/// the largest receive buffer a connection may get.
pub(crate) fn wire_shift((least, most): (usize, usize)) -> u8 {
    engine_shift(least.max(most))
}

/// The window scale the engine uses for a receive buffer of `capacity`
/// bytes (smoltcp's `remote_win_shift`).
pub(crate) fn engine_shift(capacity: usize) -> u8 {
    let bits = usize::BITS - capacity.leading_zeros();
    bits.saturating_sub(16).min(14) as u8
}

/// A bare segment: an RST, an ACK.
pub(crate) fn bare(t: &Tuple, control: TcpControl, seq: u32, ack: Option<u32>, window: u16) -> TcpRepr<'static> {
    TcpRepr {
        src_port: t.local_port,
        dst_port: t.remote_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

/// The length of the Ethernet frame carrying `repr` from `src` to `dst`.
pub(crate) fn frame_len(src: IpAddr, repr: &TcpRepr) -> usize {
    let ip = if src.is_ipv4() { 20 } else { 40 };
    EthernetFrame::<&[u8]>::header_len() + ip + repr.buffer_len()
}

/// Writes the frame carrying `repr` from `src` (at `src_mac`) to `dst`
/// (at `dst_mac`) into `buf`, of [`frame_len`] bytes, checksums computed.
pub(crate) fn emit(buf: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6], src: IpAddr, dst: IpAddr, repr: &TcpRepr) {
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    let ethertype = if src.is_ipv4() { EthernetProtocol::Ipv4 } else { EthernetProtocol::Ipv6 };
    EthernetRepr { src_addr: EthernetAddress(src_mac), dst_addr: EthernetAddress(dst_mac), ethertype }.emit(&mut eth);
    let caps = ChecksumCapabilities::default();
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    let len = repr.buffer_len();
    let ip = eth.payload_mut();
    let tcp = match (src, dst) {
        (IpAddr::V4(s4), IpAddr::V4(d4)) => {
            let mut p = Ipv4Packet::new_unchecked(&mut *ip);
            Ipv4Repr { src_addr: s4, dst_addr: d4, next_header: IpProtocol::Tcp, payload_len: len, hop_limit: 64 }
                .emit(&mut p, &caps);
            &mut ip[20..]
        }
        (IpAddr::V6(s6), IpAddr::V6(d6)) => {
            let mut p = Ipv6Packet::new_unchecked(&mut *ip);
            Ipv6Repr { src_addr: s6, dst_addr: d6, next_header: IpProtocol::Tcp, payload_len: len, hop_limit: 64 }
                .emit(&mut p);
            &mut ip[40..]
        }
        // A tuple's addresses are of one family.
        _ => return,
    };
    repr.emit(&mut TcpPacket::new_unchecked(&mut tcp[..len]), &s, &d, &caps);
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn tuple(port: u16) -> Tuple {
        Tuple {
            local: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            local_port: 80,
            remote_port: port,
        }
    }

    #[test]
    fn cookies_carry_their_options_and_expire() {
        let h = Handshakes::new((7, 9), 16, |_| true);
        let t0 = Instant(1000 * 1_000_000_000);
        let opts = Opts { mss: 1460, wscale: Some(7), sack: true };
        let c = h.cookie(&tuple(4000), 77, opts, t0);
        assert_eq!(h.check(&tuple(4000), 77, c, t0), Some(Opts { sack: false, ..opts }));
        // Another port, another peer sequence number, another cookie value.
        assert_eq!(h.check(&tuple(4001), 77, c, t0), None);
        assert_eq!(h.check(&tuple(4000), 78, c, t0), None);
        assert_eq!(h.check(&tuple(4000), 77, c ^ 1, t0), None);
        assert_eq!(h.check(&tuple(4000), 77, c ^ (1 << 28), t0), None);
        // Valid through the next period, not after.
        assert!(h.check(&tuple(4000), 77, c, t0 + Duration::from_secs(PERIOD)).is_some());
        assert!(h.check(&tuple(4000), 77, c, t0 + Duration::from_secs(3 * PERIOD)).is_none());
        // An MSS is rounded down to one the cookie can carry; no scaling.
        let c = h.cookie(&tuple(4000), 5, Opts { mss: 1400, wscale: None, sack: false }, t0);
        assert_eq!(h.check(&tuple(4000), 5, c, t0), Some(Opts { mss: 1220, wscale: None, sack: false }));
    }

    #[test]
    fn the_ring_of_handshakes_waiting_for_room_gives_up_the_oldest_last() {
        let mut h = Handshakes::new((7, 9), 0, |_| true);
        let t0 = Instant(1000 * 1_000_000_000);
        let opts = Opts { mss: 1460, wscale: None, sack: false };
        let asked = |h: &Handshakes, port: u16, at: Instant| {
            let isn = h.cookie(&tuple(port), 77, opts, t0);
            Asked { t: tuple(port), peer_isn: 77, isn, opts, at }
        };
        for i in 0..ASKED_RING as u16 {
            let a = asked(&h, 5000 + i, t0 + Duration::from_millis(i as u64));
            assert_eq!(h.note_asked(a, t0), None);
        }
        // Its own slot again: nothing given up.
        let again = asked(&h, 5003, t0 + Duration::from_secs(1));
        assert_eq!(h.note_asked(again, t0), None);
        // A slot freed is taken before any live one.
        h.forget(&tuple(5007));
        assert_eq!(h.note_asked(asked(&h, 6000, t0), t0), None);
        assert!(h.asked(&tuple(5000), t0).is_some());
        // Full: the one that asked longest ago goes, and is said.
        assert_eq!(h.note_asked(asked(&h, 6001, t0), t0), Some(tuple(5000)));
        assert!(h.asked(&tuple(5000), t0).is_none());
        assert!(h.asked(&tuple(6001), t0).is_some());
        // Cookies run out: those slots go first, and are not said.
        let later = t0 + Duration::from_secs(3 * PERIOD);
        let fresh = Asked { at: later, ..asked(&h, 6002, t0) };
        assert_eq!(h.note_asked(fresh, later), None);
    }

    #[test]
    fn the_engine_shift_is_smoltcps() {
        assert_eq!(engine_shift(65535), 0);
        assert_eq!(engine_shift(64 * 1024), 1);
        assert_eq!(engine_shift(1 << 20), 5);
        assert_eq!(engine_shift(4096), 0);
    }
}
