//! What the adapter knows of each TCP connection the engine carries, from
//! the segments it sees go out: the record that lets it correct the
//! engine's segments and judge the peer's before the engine does.
//!
//! * **Sequence translation.** A connection accepted by this stack is set
//!   up in the engine only once its handshake has completed
//!   ([`crate::handshake`]), and the engine then picks an initial sequence
//!   number of its own, not the one the peer was given (a SYN cookie). The
//!   record holds the difference: every sequence number the engine sends
//!   is moved back by it, every acknowledgment number it receives forward.
//! * **Pure ACKs at the highest sequence number sent.** After a
//!   retransmission timeout the engine rewinds its next sequence number
//!   to the oldest unacknowledged byte and sends pure ACKs with it. A peer
//!   that already has those bytes finds such an ACK outside its window and
//!   drops it, acknowledgment included (RFC 9293, 3.10.7.4). Between two
//!   such engines, both with data outstanding, each drops the other's
//!   ACKs and the connection stalls for good. Linux sends ACKs with its
//!   highest sequence number, or the right edge of the peer's window where
//!   that lies before it (`tcp_acceptable_seq`); the adapter does the same
//!   to the engine's ACKs. The edge matters when the peer's window is
//!   closed: a peer whose buffer is full takes a segment only at RCV.NXT,
//!   so an ACK numbered past data it dropped would be dropped too, and with
//!   it the acknowledgment that would let its own sender drain (two
//!   applications each blocked writing to the other stall for good).
//!   Keep-alive probes, one below on purpose, carry a byte and are left
//!   alone. A fix in the engine would be to send ACKs at that number; the
//!   engine keeps no such number, so the adapter keeps it.
//! * **What RFC 5961 needs.** The acknowledgment number and window last
//!   sent (the peer's view of RCV.NXT and RCV.WND), the highest
//!   acknowledgment received and the largest window the peer offered
//!   (SND.UNA and MAX.SND.WND).
//!
//! Frames are read and changed through smoltcp's typed packet accessors
//! (`EthernetFrame`, `Ipv4Packet`, `Ipv6Packet`, `TcpPacket`), whose
//! `new_checked` constructors refuse a buffer too short for what they
//! read; checksums are updated incrementally (RFC 1624).

use alloc::vec::Vec;
use core::net::IpAddr;

use mirage_runtime::time::Instant;
use smoltcp::iface::SocketHandle;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, TcpOption, TcpPacket, TcpSeqNumber,
};

use crate::table::{Full, Table};

/// A connection's addresses and ports, seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_port: u16,
    pub remote_port: u16,
}

impl core::hash::Hash for Tuple {
    /// Whole words, for the hash of every segment: two for IPv4, five for
    /// IPv6.
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        let ports = (self.local_port as u64) << 16 | self.remote_port as u64;
        match (self.local, self.remote) {
            (IpAddr::V4(l), IpAddr::V4(r)) => {
                h.write_u64((u32::from(l) as u64) << 32 | u32::from(r) as u64);
                h.write_u64(ports);
            }
            (l, r) => {
                let bits = |a: IpAddr| match a {
                    IpAddr::V4(a) => a.to_ipv6_mapped().to_bits(),
                    IpAddr::V6(a) => a.to_bits(),
                };
                let (l, r) = (bits(l), bits(r));
                h.write_u64((l >> 64) as u64);
                h.write_u64(l as u64);
                h.write_u64((r >> 64) as u64);
                h.write_u64(r as u64);
                h.write_u64(ports | 1 << 32);
            }
        }
    }
}

/// A connection whose engine socket waits for the replayed handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay {
    /// The initial sequence number the peer was given.
    pub wire_isn: u32,
    /// The engine's own, once its SYN-ACK has been seen.
    pub engine_isn: Option<u32>,
    /// The peer's initial sequence number and its window, for the
    /// made-up ACK that completes the engine's handshake.
    pub peer_isn: u32,
    pub window: u16,
    pub since: Instant,
}

#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub handle: SocketHandle,
    /// The engine's initial sequence number less the peer's idea of it.
    pub delta: u32,
    pub replay: Option<Replay>,
    /// End of the furthest segment sent (engine numbering).
    pub snd_max: Option<u32>,
    /// Acknowledgment number and window (bytes) of the last segment sent.
    pub rcv_nxt: Option<u32>,
    pub rcv_wnd: u32,
    /// The furthest right edge of the windows sent (`rcv_nxt + rcv_wnd`
    /// at its largest): the peer may have sent up to there.
    pub rcv_edge: Option<u32>,
    /// Highest acknowledgment received (engine numbering), the window that
    /// came with it and the largest window the peer offered, in bytes.
    pub snd_una: Option<u32>,
    pub snd_wnd: u32,
    pub max_snd_wnd: u32,
    /// Window scale shifts: ours (from our SYN) and the peer's (from its
    /// SYN); scaling is on when both are known.
    pub our_shift: Option<u8>,
    pub peer_shift: Option<u8>,
    /// The shift the peer was told in the adapter's SYN-ACK (passive opens
    /// with scaling), where it differs from the engine's: the socket got
    /// buffers smaller than the largest, and its windows are rescaled.
    pub wire_shift: Option<u8>,
    /// Where the peer's FIN ends (its sequence number plus one), once one
    /// came: the engine owes it an acknowledgment until `rcv_nxt` is there.
    pub fin_end: Option<u32>,
    /// The end of the last zero-window probe sent (a byte past a closed
    /// window), which is not data in flight.
    pub probe_end: Option<u32>,
    /// Where the data in flight ended when the engine last sent data again
    /// (a loss): until it is all acknowledged, acknowledgments go to the
    /// engine as they came (`inbound::count_each_segment`).
    pub resent_below: Option<u32>,
    /// When data last went out and came in, and since when the connection
    /// has been seen in CLOSE-WAIT with nothing to send: for the CLOSE-WAIT
    /// timeout and for shedding idle connections.
    pub last_sent: Instant,
    pub last_heard: Instant,
    pub close_wait: Option<Instant>,
    /// The peer's Ethernet address as last seen, to answer it directly.
    pub peer_mac: [u8; 6],
}

impl Record {
    pub(crate) fn new(handle: SocketHandle, now: Instant) -> Record {
        Record {
            handle,
            delta: 0,
            replay: None,
            snd_max: None,
            rcv_nxt: None,
            rcv_wnd: 0,
            rcv_edge: None,
            snd_una: None,
            snd_wnd: 0,
            max_snd_wnd: 0,
            our_shift: None,
            peer_shift: None,
            wire_shift: None,
            fin_end: None,
            probe_end: None,
            resent_below: None,
            last_sent: now,
            last_heard: now,
            close_wait: None,
            peer_mac: [0; 6],
        }
    }

    fn scaling(&self) -> bool {
        self.our_shift.is_some() && self.peer_shift.is_some()
    }

    /// Whether the engine has acknowledged the peer's FIN (or none came).
    pub(crate) fn fin_acknowledged(&self) -> bool {
        match (self.fin_end, self.rcv_nxt) {
            (Some(end), Some(nxt)) => seq_le(end, nxt),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// When data last went either way.
    pub(crate) fn last_data(&self) -> Instant {
        self.last_sent.max(self.last_heard)
    }

    /// Where a segment without payload that starts at `seq`, past the
    /// window last offered but within one offered before (the window
    /// shrank under the peer), is moved to so that the engine takes its
    /// acknowledgment: the last byte of the window, or its left edge when
    /// it is closed. `None` for a segment the engine takes as it is, and
    /// for one past any window offered.
    ///
    /// The engine rounds its window down to its scale, so its right edge
    /// can move back by a few bytes that the peer may already have sent;
    /// its window then closes with the peer's next sequence number past
    /// it. The engine judges every segment, a pure ACK too, against its
    /// last window, and one that starts past it has its acknowledgment
    /// ignored (RFC 9293 asks that valid ACKs be taken even by a zero
    /// window). With the peer's ACKs ignored the engine's sent data is
    /// never acknowledged, its send buffer stays full, an application that
    /// echoes does not read, and the window stays closed: both ends wait
    /// for ever. A pure ACK carries no data, so the number it starts at is
    /// free to move within what the peer was allowed.
    pub(crate) fn ack_seq(&self, seq: u32) -> Option<u32> {
        let (nxt, edge) = (self.rcv_nxt?, self.rcv_edge?);
        let last = if self.rcv_wnd == 0 { nxt } else { nxt.wrapping_add(self.rcv_wnd - 1) };
        (seq_lt(last, seq) && seq_le(seq, edge)).then_some(last)
    }

    /// Whether a segment starting at `seq` falls in the window last
    /// offered (or is a keep-alive probe just before it), as the engine
    /// requires before it takes the segment's acknowledgment.
    pub(crate) fn in_window(&self, seq: u32) -> bool {
        self.rcv_nxt
            .is_none_or(|nxt| seq_le(nxt.wrapping_sub(1), seq) && seq_lt(seq, nxt.wrapping_add(self.rcv_wnd.max(1))))
    }

    /// Notes a segment from the peer (after translation): its
    /// acknowledgment, if the engine takes it (in the window, no more than
    /// was sent), and its window. Whether the acknowledgment was taken.
    pub(crate) fn heard(&mut self, seq: u32, ack: Option<u32>, window: u16, syn: bool) -> bool {
        let window = (window as u32) << if syn { 0 } else { self.peer_scale() };
        let mut taken = false;
        if let (Some(ack), Some(max)) = (ack, self.snd_max)
            && self.in_window(seq)
            && seq_le(ack, max)
            && self.snd_una.is_none_or(|una| seq_le(una, ack))
        {
            self.snd_una = Some(ack);
            self.snd_wnd = window;
            if self.resent_below.is_some_and(|below| seq_le(below, ack)) {
                self.resent_below = None;
            }
            taken = true;
        }
        self.max_snd_wnd = self.max_snd_wnd.max(window);
        taken
    }

    /// The shift of the peer's window fields after the handshake.
    fn peer_scale(&self) -> u8 {
        if self.scaling() { self.peer_shift.unwrap_or(0) } else { 0 }
    }

    /// The window field to show the engine in place of a zero window that
    /// came with data in flight past it (`None` when the window is open
    /// or nothing is in flight): one that covers exactly what was sent.
    ///
    /// A peer that closes its window below data it was sent (it shrinks
    /// the window, and drops that data) leaves the engine stuck: smoltcp
    /// then runs its zero-window probe timer in place of its
    /// retransmission timer, and when the window opens it stops the probe
    /// timer and arms nothing, while the dropped bytes still count as in
    /// flight and fill the congestion window, so it never sends again.
    /// Linux probes a zero window only with nothing in flight and leaves
    /// data in flight to its retransmission timer; shown a window that
    /// ends where its data does, the engine does the same: it sends
    /// nothing new, and retransmits from the acknowledgment on its timer
    /// (with backoff) until the window opens. A zero-window probe's byte
    /// does not count: with nothing else in flight, the engine's probe
    /// timer is the right one.
    pub(crate) fn zero_window_cover(&self, ack: u32, window: u16) -> Option<u16> {
        let max = self.snd_max?;
        // A probe's byte is past the window by design (and the engine's
        // probe timer is what sends it again).
        let max = if self.probe_end == Some(max) { max.wrapping_sub(1) } else { max };
        if window != 0 || !seq_lt(ack, max) {
            return None;
        }
        let shift = self.peer_scale();
        let bytes = max.wrapping_sub(ack);
        // Rounded up: a window that stops short of the data would leave
        // the engine waiting on the bytes past it.
        Some(bytes.div_ceil(1 << shift).min(u16::MAX as u32) as u16)
    }

    /// The sequence number a pure ACK goes out with (Linux's
    /// `tcp_acceptable_seq`): the highest sent, or the right edge of the
    /// peer's window where that lies before it. `None` before anything
    /// was sent.
    fn acceptable_seq(&self) -> Option<u32> {
        let max = self.snd_max?;
        Some(match self.snd_una {
            Some(una) if seq_lt(una.wrapping_add(self.snd_wnd), max) => una.wrapping_add(self.snd_wnd),
            _ => max,
        })
    }
}

/// `a < b` in sequence space.
pub(crate) fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

pub(crate) fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// Whether a frame the engine wrote may go out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    Send,
    /// The engine's SYN-ACK of a replayed handshake: the peer had its own.
    Keep,
    /// Data sent again that the peer has acknowledged selectively: it has
    /// the bytes ([`Conns::note_sack`]).
    Sacked,
    /// As `Sacked`, but the frame's acknowledgment or window is news to
    /// the peer: it goes as a pure ACK, cut to its first `len` bytes (its
    /// headers), its sequence number one the peer takes.
    AckOnly {
        len: usize,
    },
    /// Data sent again of which the peer holds some: only the first
    /// `count` of [`Conns::runs`] go, each as a segment of its own
    /// (`piece`); `header` is where the payload starts in the frame.
    Runs {
        header: usize,
        count: usize,
    },
}

/// Runs of a segment sent in pieces, at most: a segment the peer holds in
/// more pieces goes whole.
pub(crate) const MAX_RUNS: usize = 32;

/// Connections whose peer's selective acknowledgments are kept at once,
/// and the ranges kept for each (the lowest, which the engine sends again
/// first): about 1 KiB for each, only while the peer holds data out of
/// order.
const SACK_CONNS: usize = 64;
const SACK_RANGES: usize = 128;

pub(crate) struct Conns {
    pub table: Table<Tuple, Record>,
    /// Records waiting for the engine's SYN-ACK.
    pub replaying: usize,
    /// What each peer holding data out of order has acknowledged
    /// selectively (engine numbering, in order, apart): the engine
    /// ignores SACK blocks, and after a timeout sends everything from the
    /// first byte unacknowledged again.
    pub sacked: Table<Tuple, Vec<(u32, u32)>>,
    /// The runs of payload (offset, length) of the last frame answered
    /// [`Outgoing::Runs`].
    pub runs: [(u32, u32); MAX_RUNS],
}

impl core::fmt::Debug for Conns {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conns")
            .field("table", &self.table)
            .field("replaying", &self.replaying)
            .field("sacked", &self.sacked)
            .finish()
    }
}

impl Conns {
    pub(crate) fn new(key: (u64, u64), max: usize) -> Conns {
        Conns {
            table: Table::new(key, max),
            replaying: 0,
            sacked: Table::new(key, SACK_CONNS),
            runs: [(0, 0); MAX_RUNS],
        }
    }

    /// Notes the SACK blocks of a segment from the peer whose
    /// acknowledgment `ack` (engine numbering) the engine takes.
    ///
    /// The engine does no SACK-based recovery: a fast retransmit sends
    /// one segment, and a timeout sends everything from `ack` on again,
    /// from a window of one segment. After a slow start that overflowed a
    /// bottleneck's queue (every other segment lost, say), that means
    /// sending again the half the peer has, whose duplicates the peer
    /// answers with duplicate ACKs that start fast retransmits and halve
    /// the window again: a 4 MiB download over 50 ms round trips at 50
    /// Mbit/s took 6.5 s, where Linux, with SACK, took 1.0 s. Kept here,
    /// the blocks let the adapter leave out of what the engine sends again
    /// every segment the peer holds ([`Outgoing::Sacked`]).
    ///
    /// Blocks below `ack` (D-SACK) or past what was sent are ignored. An
    /// acknowledgment without blocks means the peer holds nothing out of
    /// order (a receiver that permitted SACK sends them on every ACK while
    /// it does, RFC 2018), and forgets what was kept: a peer that
    /// dropped data it had acknowledged selectively is sent it again.
    pub(crate) fn note_sack(&mut self, t: &Tuple, ack: u32, blocks: &[Option<(u32, u32)>; 3]) {
        if blocks.iter().all(Option::is_none) {
            if self.sacked.len() > 0 {
                self.sacked.remove(t);
            }
            return;
        }
        let Some(r) = self.table.get(t) else { return };
        let (delta, Some(max)) = (r.delta, r.snd_max) else { return };
        let mut valid = blocks
            .iter()
            .flatten()
            .map(|&(l, r)| (l.wrapping_add(delta), r.wrapping_add(delta)))
            .filter(|&(l, r)| seq_lt(ack, l) && seq_lt(l, r) && seq_le(r, max))
            .peekable();
        if self.sacked.get(t).is_none() && (valid.peek().is_none() || self.sacked.insert(*t, Vec::new()).is_err()) {
            return;
        }
        let Some(ranges) = self.sacked.get_mut(t) else { return };
        if ranges.iter().any(|&(l, r)| seq_lt(l, ack) && seq_lt(ack, r)) {
            // The peer acknowledges up to the middle of a range it had
            // acknowledged selectively: it dropped the rest (RFC 2018
            // allows it), and what is kept is no longer true.
            ranges.clear();
        }
        // No range is left that the ACK reaches into: those it passed go.
        ranges.retain(|&(_, r)| seq_lt(ack, r));
        for block in valid {
            add_range(ranges, block);
        }
        if ranges.is_empty() {
            self.sacked.remove(t);
        }
    }

    pub(crate) fn insert(&mut self, t: Tuple, r: Record) -> Result<(), Full> {
        let replay = r.replay.is_some();
        // What a connection on this tuple before was acknowledged is not
        // this one's.
        self.sacked.remove(&t);
        self.table.insert(t, r).map_err(|(why, _, _)| why)?;
        self.replaying += replay as usize;
        Ok(())
    }

    pub(crate) fn remove(&mut self, t: &Tuple) -> Option<Record> {
        let r = self.table.remove(t)?;
        self.sacked.remove(t);
        self.replaying -= r.replay.is_some() as usize;
        Some(r)
    }

    /// Ends the replay of a record whose handshake the engine completed.
    pub(crate) fn replayed(&mut self, t: &Tuple) {
        if let Some(r) = self.table.get_mut(t)
            && r.replay.take().is_some()
        {
            self.replaying -= 1;
        }
    }

    /// Looks at a frame the engine wrote: notes what the record needs,
    /// fixes a rewound pure ACK, translates sequence numbers.
    pub(crate) fn outgoing(&mut self, frame: &mut [u8], now: Instant) -> Outgoing {
        let Some(mut seg) = TcpFrame::new(frame) else { return Outgoing::Send };
        let t = seg.tuple();
        let Conns { table, sacked, runs: kept, .. } = self;
        let Some(r) = table.get_mut(&t) else { return Outgoing::Send };
        let tcp = seg.tcp();
        let seq = tcp.seq_number().0 as u32;
        let (syn, fin, rst, ack) = (tcp.syn(), tcp.fin(), tcp.rst(), tcp.ack());
        let len = tcp.payload().len() as u32 + syn as u32 + fin as u32;
        // Data the peer holds, sent again (never from the first byte it
        // lacks, which the engine's timer always sends: the connection
        // goes on whatever the blocks said).
        let held = match sacked.get(&t) {
            Some(ranges) if !(syn || fin || rst) && len > 0 && r.snd_una != Some(seq) => {
                lacking(ranges, seq, seq.wrapping_add(len))
            }
            _ => None,
        };
        let header = seg.at + tcp.header_len() as usize;
        if let Some(replay) = &mut r.replay
            && syn
            && ack
        {
            // The engine's answer to the replayed SYN: its initial
            // sequence number gives the translation.
            replay.engine_isn = Some(seq);
            r.delta = seq.wrapping_sub(replay.wire_isn);
            r.snd_max = Some(seq.wrapping_add(1));
            r.our_shift = window_scale(tcp.options());
            // What the peer was told: RCV.NXT and the window (unscaled in
            // a SYN), before the engine sends anything else.
            r.rcv_nxt = Some(tcp.ack_number().0 as u32);
            r.rcv_wnd = tcp.window_len() as u32;
            return Outgoing::Keep;
        }
        if syn {
            r.our_shift = window_scale(tcp.options());
        }
        let mut new_seq = seq;
        let mut window = None;
        // What the peer was last told, for a frame left out that tells it
        // more.
        let told = (r.rcv_nxt, r.rcv_wnd);
        if !rst {
            if len > 0 {
                let end = seq.wrapping_add(len);
                if len == 1
                    && !syn
                    && !fin
                    && r.snd_max == Some(seq)
                    && r.snd_una.is_some_and(|una| seq_le(una.wrapping_add(r.snd_wnd), seq))
                {
                    // One new byte past the peer's window: a zero-window
                    // probe (data never goes past it).
                    r.probe_end = Some(end);
                }
                if !syn
                    && tcp.payload().len() > 1
                    && let Some(max) = r.snd_max
                    && seq_lt(seq, max)
                {
                    r.resent_below = Some(max);
                }
                if r.snd_max.is_none_or(|max| seq_lt(max, end)) {
                    r.snd_max = Some(end);
                }
                if tcp.payload().len() > 1 {
                    r.last_sent = now;
                }
            } else if let Some(max) = r.snd_max
                && ack
                && max.wrapping_sub(seq) != 1
                && let Some(acceptable) = r.acceptable_seq()
            {
                // Not one behind, as a keep-alive probe is: a pure ACK,
                // perhaps rewound, perhaps past a closed window.
                new_seq = acceptable;
            }
            if ack {
                r.rcv_nxt = Some(tcp.ack_number().0 as u32);
                let field = tcp.window_len();
                r.rcv_wnd = match (r.scaling() && !syn, r.our_shift.unwrap_or(0), r.wire_shift) {
                    (false, _, _) => field as u32,
                    (true, engine, Some(wire)) if wire != engine => {
                        // In the peer's scale, rounded down: never more
                        // room than the buffer has.
                        let bytes = (field as u32) << engine;
                        let scaled = (bytes >> wire).min(u16::MAX as u32) as u16;
                        window = Some((field, scaled));
                        (scaled as u32) << wire
                    }
                    (true, engine, _) => (field as u32) << engine,
                };
                let edge = (tcp.ack_number().0 as u32).wrapping_add(r.rcv_wnd);
                if r.rcv_edge.is_none_or(|e| seq_lt(e, edge)) {
                    r.rcv_edge = Some(edge);
                }
            }
        }
        // Left out whole, a frame would take with it an acknowledgment or
        // a window the peer has not had (the engine counts them sent):
        // those go in a pure ACK.
        let ack_only = matches!(held, Some((_, 0))) && ack && (r.rcv_nxt, r.rcv_wnd) != told;
        if ack_only {
            seg.cut_payload();
            new_seq = r.acceptable_seq().unwrap_or(seq);
        }
        if let Some((old, new)) = window {
            let mut tcp = seg.tcp_mut();
            let sum = update_checksum(tcp.checksum(), old as u32, new as u32);
            tcp.set_window_len(new);
            tcp.set_checksum(sum);
        }
        let wire_seq = new_seq.wrapping_sub(r.delta);
        if wire_seq != seq {
            let mut tcp = seg.tcp_mut();
            let sum = update_checksum(tcp.checksum(), seq, wire_seq);
            tcp.set_seq_number(TcpSeqNumber(wire_seq as i32));
            tcp.set_checksum(sum);
        }
        match held {
            Some((_, 0)) if ack_only => Outgoing::AckOnly { len: header },
            Some((_, 0)) => Outgoing::Sacked,
            Some((runs, count)) => {
                *kept = runs;
                Outgoing::Runs { header, count }
            }
            None => Outgoing::Send,
        }
    }
}

/// Adds `[l, r)` to `ranges` (in order, apart), joining the ranges it
/// meets; past [`SACK_RANGES`] the highest range is dropped.
fn add_range(ranges: &mut Vec<(u32, u32)>, (mut l, mut r): (u32, u32)) {
    let mut i = 0;
    while i < ranges.len() {
        let (a, b) = ranges[i];
        if seq_le(a, r) && seq_le(l, b) {
            l = if seq_lt(a, l) { a } else { l };
            r = if seq_lt(r, b) { b } else { r };
            ranges.remove(i);
        } else {
            i += 1;
        }
    }
    let at = ranges.iter().position(|&(a, _)| seq_lt(l, a)).unwrap_or(ranges.len());
    if ranges.len() >= SACK_RANGES {
        if at == ranges.len() {
            return;
        }
        ranges.pop();
    }
    if ranges.try_reserve(1).is_ok() {
        ranges.insert(at, (l, r));
    }
}

/// What of `[seq, end)` the peer lacks, by `ranges` (in order, apart):
/// runs of the payload (offset from `seq`, length), none if it holds it
/// all; `None` if it lacks it all, or more runs than [`MAX_RUNS`].
fn lacking(ranges: &[(u32, u32)], seq: u32, end: u32) -> Option<([(u32, u32); MAX_RUNS], usize)> {
    let mut runs = [(0, 0); MAX_RUNS];
    let (mut count, mut at) = (0, seq);
    for &(a, b) in ranges.iter().filter(|&&(a, b)| seq_lt(seq, b) && seq_lt(a, end)) {
        if seq_lt(at, a) {
            *runs.get_mut(count)? = (at.wrapping_sub(seq), a.wrapping_sub(at));
            count += 1;
        }
        if seq_lt(at, b) {
            at = b;
        }
    }
    if at == seq {
        return None;
    }
    if seq_lt(at, end) {
        *runs.get_mut(count)? = (at.wrapping_sub(seq), end.wrapping_sub(at));
        count += 1;
    }
    Some((runs, count))
}

/// Writes into `out` the TCP segment `frame` (as it goes out) cut to `len`
/// bytes of its payload from `off` (`header`: where the payload starts):
/// its headers, that payload, its sequence number and lengths set, the
/// IPv4 header's checksum filled (the TCP checksum is the sender's). The
/// piece's length; `None` if the run or the piece does not fit.
pub(crate) fn piece(frame: &mut [u8], header: usize, off: u32, len: u32, out: &mut [u8]) -> Option<usize> {
    let (ip_at, tcp_at, v4) = {
        let seg = TcpFrame::new(frame)?;
        (EthernetFrame::<&[u8]>::header_len(), seg.at, matches!(seg.src, IpAddr::V4(_)))
    };
    let (off, len) = (off as usize, len as usize);
    let total = header.checked_add(len)?;
    if header < tcp_at || header.checked_add(off)?.checked_add(len)? > frame.len() || total > out.len() {
        return None;
    }
    out[..header].copy_from_slice(&frame[..header]);
    out[header..total].copy_from_slice(&frame[header + off..header + off + len]);
    let out = &mut out[..total];
    let tcp_len = (total - tcp_at) as u16;
    if v4 {
        let mut ip = Ipv4Packet::new_unchecked(&mut out[ip_at..]);
        ip.set_total_len((tcp_at - ip_at) as u16 + tcp_len);
        ip.fill_checksum();
    } else {
        Ipv6Packet::new_unchecked(&mut out[ip_at..]).set_payload_len(tcp_len);
    }
    let mut tcp = TcpPacket::new_unchecked(&mut out[tcp_at..]);
    let seq = tcp.seq_number() + off;
    tcp.set_seq_number(seq);
    Some(total)
}

/// The window scale option of a SYN's options.
pub(crate) fn window_scale(mut options: &[u8]) -> Option<u8> {
    while !options.is_empty() {
        let Ok((rest, option)) = TcpOption::parse(options) else { return None };
        match option {
            TcpOption::EndOfList => return None,
            TcpOption::WindowScale(s) => return Some(s.min(14)),
            _ => {}
        }
        options = rest;
    }
    None
}

/// A TCP checksum after a 32-bit field changed from `old` to `new`
/// (RFC 1624: HC' = ~(~HC + ~m + m') for each 16-bit word).
pub(crate) fn update_checksum(sum: u16, old: u32, new: u32) -> u16 {
    let mut s = !sum as u32;
    for (o, n) in [((old >> 16) as u16, (new >> 16) as u16), (old as u16, new as u16)] {
        s += !o as u32 + n as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A TCP segment in an Ethernet frame, found through the typed accessors:
/// where its header starts and its addresses. Only IPv4 and IPv6 with TCP
/// right after the fixed header (what the engine sends, and all the
/// adapter judges) are recognised.
pub(crate) struct TcpFrame<'a> {
    frame: &'a mut [u8],
    at: usize,
    len: usize,
    src: IpAddr,
    dst: IpAddr,
}

impl<'a> TcpFrame<'a> {
    pub(crate) fn new(frame: &'a mut [u8]) -> Option<TcpFrame<'a>> {
        let eth = EthernetFrame::new_checked(&*frame).ok()?;
        let header = EthernetFrame::<&[u8]>::header_len();
        let (src, dst, at, len) = match eth.ethertype() {
            EthernetProtocol::Ipv4 => {
                let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
                if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                    return None;
                }
                let hl = ip.header_len() as usize;
                (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), header + hl, ip.total_len() as usize - hl)
            }
            EthernetProtocol::Ipv6 => {
                let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
                if ip.next_header() != IpProtocol::Tcp {
                    return None;
                }
                (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()), header + 40, ip.payload_len() as usize)
            }
            _ => return None,
        };
        let seg = TcpFrame { frame, at, len, src, dst };
        TcpPacket::new_checked(&seg.frame[at..at + len]).ok()?;
        Some(seg)
    }

    /// The connection, as the sender sees it.
    pub(crate) fn tuple(&self) -> Tuple {
        let tcp = self.tcp();
        Tuple { local: self.src, remote: self.dst, local_port: tcp.src_port(), remote_port: tcp.dst_port() }
    }

    pub(crate) fn src(&self) -> IpAddr {
        self.src
    }

    pub(crate) fn dst(&self) -> IpAddr {
        self.dst
    }

    pub(crate) fn tcp(&self) -> TcpPacket<&[u8]> {
        // `new` checked the length.
        TcpPacket::new_unchecked(&self.frame[self.at..self.at + self.len])
    }

    pub(crate) fn tcp_mut(&mut self) -> TcpPacket<&mut [u8]> {
        TcpPacket::new_unchecked(&mut self.frame[self.at..self.at + self.len])
    }

    /// Cuts the segment's payload, so that the engine sees its header only.
    pub(crate) fn cut_payload(&mut self) {
        let header = self.tcp().header_len() as usize;
        self.len = header;
        let eth = EthernetFrame::<&[u8]>::header_len();
        match self.src {
            IpAddr::V4(_) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut self.frame[eth..]);
                let total = ip.header_len() as u16 + header as u16;
                ip.set_total_len(total);
                // The engine does not check received checksums.
                ip.fill_checksum();
            }
            IpAddr::V6(_) => Ipv6Packet::new_unchecked(&mut self.frame[eth..]).set_payload_len(header as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use smoltcp::wire::{TcpControl, TcpRepr};

    use super::*;

    #[test]
    fn incremental_checksum_matches_a_full_one() {
        let mut data = [0u8; 40];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let sum = crate::wire::checksum(&data);
        for new in [0u32, 1, 0xffff_ffff, 0x1234_5678, 0x8000_0000] {
            let old = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            let mut changed = data;
            changed[4..8].copy_from_slice(&new.to_be_bytes());
            let full = crate::wire::checksum(&changed);
            let incremental = update_checksum(sum, old, new);
            // 0x0000 and 0xffff are the same number in one's complement.
            assert!(
                full == incremental || (full == 0 && incremental == 0xffff) || (full == 0xffff && incremental == 0),
                "{new:#x}: {full:#x} vs {incremental:#x}"
            );
        }
    }

    #[test]
    fn a_zero_window_is_covered_only_over_data_in_flight() {
        let mut r = Record::new(SocketHandle::default(), Instant(0));
        (r.our_shift, r.peer_shift) = (Some(7), Some(3));
        r.snd_max = Some(10_000);
        // Open windows, and nothing in flight, are left alone.
        assert_eq!(r.zero_window_cover(9_000, 5), None);
        assert_eq!(r.zero_window_cover(10_000, 0), None);
        // 1,001 bytes in flight at the peer's scale of 8, rounded up, and
        // across the wrap of the sequence space.
        assert_eq!(r.zero_window_cover(8_999, 0), Some(126));
        r.snd_max = Some(5);
        assert_eq!(r.zero_window_cover(u32::MAX - 995, 0), Some(126));
        // Without scaling the field is in bytes, and at most 65,535.
        r.peer_shift = None;
        r.snd_max = Some(200_000);
        assert_eq!(r.zero_window_cover(100_000, 0), Some(u16::MAX));
        // A zero-window probe's byte is not in flight.
        r.probe_end = Some(200_000);
        assert_eq!(r.zero_window_cover(199_999, 0), None);
        assert_eq!(r.zero_window_cover(199_000, 0), Some(999));
    }

    #[test]
    fn an_ack_past_a_shrunk_window_is_moved_inside_it() {
        let mut r = Record::new(SocketHandle::default(), Instant(0));
        // Before anything was offered, and inside the window, nothing moves.
        assert_eq!(r.ack_seq(5), None);
        (r.rcv_nxt, r.rcv_wnd, r.rcv_edge) = (Some(1000), 100, Some(1104));
        assert_eq!(r.ack_seq(1000), None);
        assert_eq!(r.ack_seq(1099), None);
        // Past the window but within an edge offered before: to its last
        // byte; past any edge offered: left as it is.
        assert_eq!(r.ack_seq(1100), Some(1099));
        assert_eq!(r.ack_seq(1104), Some(1099));
        assert_eq!(r.ack_seq(1105), None);
        // A closed window: to its left edge, across the wrap too.
        (r.rcv_nxt, r.rcv_wnd, r.rcv_edge) = (Some(u32::MAX - 1), 0, Some(3));
        assert_eq!(r.ack_seq(u32::MAX - 1), None);
        assert_eq!(r.ack_seq(2), Some(u32::MAX - 1));
        assert_eq!(r.ack_seq(4), None);
    }

    fn tuple() -> Tuple {
        let (local, remote) = (IpAddr::V4([10, 0, 0, 2].into()), IpAddr::V4([10, 0, 0, 1].into()));
        Tuple { local, remote, local_port: 80, remote_port: 40000 }
    }

    /// Conns with one connection that sent up to `max` (engine numbering,
    /// the peer's `delta` below it).
    fn one_connection(max: u32, delta: u32) -> Conns {
        let mut c = Conns::new((1, 2), 16);
        let mut r = Record::new(SocketHandle::default(), Instant(0));
        (r.snd_max, r.delta) = (Some(max), delta);
        c.insert(tuple(), r).unwrap();
        c
    }

    fn ranges(c: &Conns) -> Vec<(u32, u32)> {
        c.sacked.get(&tuple()).cloned().unwrap_or_default()
    }

    #[test]
    fn selective_acknowledgments_are_kept_in_order_joined_and_forgotten() {
        let t = tuple();
        let mut c = one_connection(100_000, 0);
        c.note_sack(&t, 1000, &[Some((3000, 4000)), Some((1500, 2000)), None]);
        assert_eq!(ranges(&c), [(1500, 2000), (3000, 4000)]);
        // Ranges that meet are joined; a D-SACK block (below the ACK) and
        // one past what was sent are ignored.
        c.note_sack(&t, 1000, &[Some((2000, 3000)), Some((500, 900)), Some((99_000, 100_001))]);
        assert_eq!(ranges(&c), [(1500, 4000)]);
        // The ACK reaching a range leaves it, and passing it ends it.
        c.note_sack(&t, 1500, &[Some((3000, 4000)), None, None]);
        assert_eq!(ranges(&c), [(1500, 4000)]);
        c.note_sack(&t, 4000, &[Some((5000, 6000)), None, None]);
        assert_eq!(ranges(&c), [(5000, 6000)]);
        // An ACK without blocks: the peer holds nothing out of order.
        c.note_sack(&t, 4000, &[None, None, None]);
        assert_eq!(c.sacked.len(), 0);
        // In the peer's numbering, across the wrap of the sequence space.
        let mut c = one_connection(5000, 10_000);
        c.note_sack(&t, u32::MAX - 100, &[Some((u32::MAX - 10_000, u32::MAX - 9_000)), None, None]);
        assert_eq!(ranges(&c), [(u32::MAX, 999)]);
        // Removing the connection removes its ranges, and so does a new
        // record on the same tuple.
        c.remove(&t);
        assert_eq!(c.sacked.len(), 0);
        let mut c = one_connection(100_000, 0);
        c.note_sack(&t, 1000, &[Some((3000, 4000)), None, None]);
        let r = Record::new(SocketHandle::default(), Instant(0));
        c.insert(t, r).unwrap();
        assert_eq!(c.sacked.len(), 0);
    }

    #[test]
    fn a_peer_that_dropped_what_it_acknowledged_selectively_is_believed() {
        let t = tuple();
        let mut c = one_connection(100_000, 0);
        c.note_sack(&t, 1000, &[Some((3000, 4000)), Some((5000, 6000)), None]);
        // The ACK stops inside a range: the peer holds only what this
        // ACK's blocks say.
        c.note_sack(&t, 3500, &[Some((8000, 9000)), None, None]);
        assert_eq!(ranges(&c), [(8000, 9000)]);
    }

    /// The frame of a segment of connection `t` carrying `payload`.
    fn frame_of(t: &Tuple, control: TcpControl, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Vec<u8> {
        let repr = TcpRepr { payload, ..crate::handshake::bare(t, control, seq, Some(ack), window) };
        let mut frame = vec![0u8; crate::handshake::frame_len(t.local, &repr)];
        crate::handshake::emit(&mut frame, [2; 6], [4; 6], t.local, t.remote, &repr);
        frame
    }

    /// A data segment of 200 bytes at `seq` (engine numbering), as the
    /// engine writes it, acknowledging `ack` with window `window`.
    fn data_frame(seq: u32, ack: u32, window: u16) -> Vec<u8> {
        frame_of(&tuple(), TcpControl::None, seq, ack, window, &[7u8; 200])
    }

    #[test]
    fn data_the_peer_holds_is_left_out_but_not_news_it_carries() {
        let t = tuple();
        let mut c = one_connection(10_000, 0);
        if let Some(r) = c.table.get_mut(&t) {
            (r.snd_una, r.snd_wnd, r.rcv_nxt, r.rcv_wnd) = (Some(4000), 100_000, Some(77), 1000);
        }
        c.note_sack(&t, 4000, &[Some((4500, 6000)), None, None]);
        // Held, and telling nothing new: left out.
        let mut f = data_frame(5000, 77, 1000);
        assert_eq!(c.outgoing(&mut f, Instant(0)), Outgoing::Sacked);
        // Held, with a new acknowledgment: a pure ACK at a sequence number
        // the peer takes (the highest sent), the record noting what went.
        let mut f = data_frame(5000, 90, 1000);
        let Outgoing::AckOnly { len } = c.outgoing(&mut f, Instant(0)) else { panic!("not an ACK") };
        let seg = TcpFrame::new(&mut f[..len]).unwrap();
        assert!(seg.tcp().payload().is_empty());
        assert_eq!(seg.tcp().seq_number(), TcpSeqNumber(10_000));
        assert_eq!(seg.tcp().ack_number(), TcpSeqNumber(90));
        assert_eq!(c.table.get(&t).and_then(|r| r.rcv_nxt), Some(90));
        // The first byte unacknowledged always goes, and so does a
        // segment the peer holds part of, as the part it lacks.
        assert_eq!(c.outgoing(&mut data_frame(4000, 90, 1000), Instant(0)), Outgoing::Send);
        let mut f = data_frame(4400, 90, 1000);
        assert_eq!(c.outgoing(&mut f, Instant(0)), Outgoing::Runs { header: f.len() - 200, count: 1 });
        assert_eq!(c.runs[0], (0, 100));
    }

    #[test]
    fn the_ranges_kept_are_bounded_and_the_lowest() {
        let t = tuple();
        let mut c = one_connection(1 << 30, 0);
        for i in (0..SACK_RANGES as u32 * 2).rev() {
            c.note_sack(&t, 0, &[Some((1000 + i * 100, 1050 + i * 100)), None, None]);
        }
        let kept = ranges(&c);
        assert_eq!(kept.len(), SACK_RANGES);
        assert_eq!(kept[0], (1000, 1050));
        assert!(kept.windows(2).all(|w| seq_lt(w[0].1, w[1].0)));
    }

    #[test]
    fn what_the_peer_lacks_of_a_segment() {
        let r = [(100, 200), (300, 400)];
        let runs = |seq, end| lacking(&r, seq, end).map(|(runs, n)| runs[..n].to_vec());
        assert_eq!(runs(50, 450), Some(vec![(0, 50), (150, 100), (350, 50)]));
        assert_eq!(runs(100, 400), Some(vec![(100, 100)]));
        assert_eq!(runs(120, 180), Some(vec![]));
        // Nothing of it held: sent as it is.
        assert_eq!(runs(200, 300), None);
        assert_eq!(runs(500, 600), None);
        // More pieces than a segment is cut into: sent as it is.
        let many: Vec<(u32, u32)> = (0..MAX_RUNS as u32 + 1).map(|i| (i * 10 + 5, i * 10 + 10)).collect();
        assert!(lacking(&many, 0, MAX_RUNS as u32 * 10 + 20).is_none());
    }

    #[test]
    fn a_piece_of_a_segment_is_a_segment_of_its_own() {
        let payload: Vec<u8> = (0..200u8).collect();
        let v6 = |last| IpAddr::V6([0xfe80, 0, 0, 0, 0, 0, 0, last].into());
        for (local, remote) in [(tuple().local, tuple().remote), (v6(2), v6(1))] {
            let t = Tuple { local, remote, ..tuple() };
            let mut frame = frame_of(&t, TcpControl::Psh, 5000, 77, 1000, &payload);
            let header = frame.len() - payload.len();
            let mut out = vec![0u8; 2048];
            let n = piece(&mut frame, header, 30, 50, &mut out).unwrap();
            assert_eq!(n, header + 50);
            let out = &mut out[..n];
            crate::wire::fill_tcp_checksum(out);
            let seg = TcpFrame::new(out).unwrap();
            if let (IpAddr::V4(_), Ok(eth)) = (local, EthernetFrame::new_checked(&seg.frame[..])) {
                assert!(Ipv4Packet::new_checked(eth.payload()).unwrap().verify_checksum());
            }
            let (src, dst) = (seg.src().into(), seg.dst().into());
            let tcp = seg.tcp();
            assert!(tcp.verify_checksum(&src, &dst), "{local}");
            assert_eq!(tcp.seq_number(), TcpSeqNumber(5030));
            assert_eq!(tcp.ack_number(), TcpSeqNumber(77));
            assert_eq!(tcp.payload(), &payload[30..80]);
            // A run past the payload is refused.
            assert!(piece(&mut frame, header, 190, 20, &mut [0u8; 2048]).is_none());
        }
    }

    #[test]
    fn sequence_comparisons_wrap() {
        assert!(seq_lt(0xffff_fff0, 5));
        assert!(!seq_lt(5, 0xffff_fff0));
        assert!(seq_le(7, 7));
    }
}
