//! What happens to a received frame before the engine sees it: the
//! driver asks [`judge`] for each well-formed frame.
//!
//! * Packets from a source address that cannot send (one of ours: a LAND
//!   attack; multicast, broadcast, loopback) are dropped and counted.
//! * IP fragments are dropped and counted: the stack does not reassemble.
//! * ARP and NDP go through the neighbour-cache policy ([`crate::neighbor`]).
//! * TCP for a listener is answered here ([`crate::handshake`]); TCP for a
//!   connection is checked against RFC 5961 and translated
//!   ([`crate::conns`]); TCP for a connection closed on this side and
//!   waiting for the peer's FIN is answered from its small record.
//!
//! RFC 5961 in the engine (smoltcp 0.14): it answers an acknowledgment
//! above SND.NXT with a challenge ACK (section 5), rate-limited to one a
//! second per connection, and drops out-of-window resets; it ends a
//! connection on any in-window reset and ignores a SYN on a synchronized
//! connection. Here, a reset not exactly at RCV.NXT and a SYN are turned
//! into a segment the engine answers with its challenge ACK (an ACK above
//! SND.NXT, no payload): the engine fills in its true numbers and applies
//! its per-connection limit, and a stack-wide limit of about a thousand a
//! second, randomised each second (as Linux since 4.7, so that the count
//! does not reveal to an off-path attacker which of its guesses hit),
//! comes first. Segments acknowledging below SND.UNA by more than the
//! largest window the peer offered are dropped with a challenge ACK; the
//! engine drops any segment acknowledging below SND.UNA, so data whose
//! acknowledgment is merely old (within that window) has it raised to
//! SND.UNA and is accepted, as section 5.2 says.

use alloc::vec::Vec;
use core::net::IpAddr;

use mirage_devices::net::Net;
use mirage_runtime::time::{Duration, Instant};
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpAddress, IpListenEndpoint, NdiscRepr, TcpControl, TcpRepr, TcpSeqNumber};

use crate::conns::{Record, Replay, TcpFrame, Tuple, seq_le, seq_lt};
use crate::device::{Adapter, Summary};
use crate::handshake::{self, Asked, Opts};
use crate::neighbor::{Kind, ndisc};
use crate::wire;
use crate::{Inner, smol_now};

/// What becomes of a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The engine takes it.
    Engine,
    /// It is dropped (or was answered here).
    Drop,
    /// The engine takes it, and it completes a connection for the
    /// listener on this port.
    Accept(u16, SocketHandle, Tuple),
}

/// A replayed handshake the engine has not answered in this long is given
/// up (its neighbour never resolved).
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn judge<N: Net>(inner: &mut Inner, net: &mut N, now: Instant) -> Verdict {
    let Some(fetched) = inner.link.fetched() else { return Verdict::Drop };
    // What the engine would ignore as not addressed to this host (no
    // checksum covers the Ethernet header) is dropped before anything is
    // judged on it.
    let to_us = fetched.dst == inner.link.mac;
    if !to_us && fetched.dst[0] & 1 == 0 {
        return Verdict::Drop;
    }
    match fetched.summary {
        Summary::Arp(arp) => {
            // Only what is aimed at one of our addresses reaches the cache.
            if !inner.iface.has_ip_addr(IpAddress::Ipv4(arp.target_ip)) && neighbor_ok(arp.sender_mac) {
                return Verdict::Engine;
            }
            // Neither a request nor a reply: the engine ignores it, and
            // taken as a reply it would use up the mark of a question
            // this host asked.
            if !(1..=2).contains(&arp.op) {
                inner.link.stats.neighbor_refused += 1;
                return Verdict::Drop;
            }
            let kind = if arp.op == 1 { Kind::Request } else { Kind::Reply };
            let ours = inner.iface.has_ip_addr(IpAddress::Ipv4(arp.sender_ip));
            if arp.sender_ip.is_unspecified() && arp.op == 1 && neighbor_ok(arp.sender_mac) {
                // An address probe (RFC 5227): it teaches nothing.
                return Verdict::Engine;
            }
            // The engine learns nothing from a sender off its subnets:
            // neither may the policy.
            let on_link = inner.iface.ip_addrs().iter().any(|c| c.contains_addr(&IpAddress::Ipv4(arp.sender_ip)));
            if !on_link {
                inner.link.stats.neighbor_refused += 1;
                return Verdict::Drop;
            }
            if !ours
                && kind == Kind::Request
                && !inner.link.neighbors.request_fits(IpAddr::V4(arp.sender_ip), now)
                && neighbor_ok(arp.sender_mac)
            {
                inner.link.stats.neighbor_answered += 1;
                answer_arp(inner, net, &arp);
                return Verdict::Drop;
            }
            if ours || !inner.link.neighbors.judge(IpAddr::V4(arp.sender_ip), arp.sender_mac, kind, now) {
                inner.link.stats.neighbor_refused += 1;
                log::debug!(target: "tcpip", "refused ARP: {} at {:02x?} (op {})", arp.sender_ip, arp.sender_mac, arp.op);
                return Verdict::Drop;
            }
            Verdict::Engine
        }
        Summary::Ip { src, upper, fragment, extensions, at, len, .. } => {
            let to_dhcp_server = upper == Some(wire::PROTO_UDP)
                && inner.link.frame().get(at + 2..at + 4) == Some(&67u16.to_be_bytes()[..])
                && len >= 8;
            if martian(inner, src, to_dhcp_server) {
                inner.link.stats.martians += 1;
                return Verdict::Drop;
            }
            if to_us {
                inner.link.neighbors.refresh(src, fetched.src, now);
            }
            if fragment {
                inner.link.stats.fragments += 1;
                log::debug!(
                    target: "tcpip",
                    "dropped an IP fragment: the stack does not reassemble ({} so far)",
                    inner.link.stats.fragments
                );
                return Verdict::Drop;
            }
            if !to_us && !for_a_group(inner, upper, at, len) {
                inner.link.stats.group_dropped += 1;
                return Verdict::Drop;
            }
            match upper {
                // TCP behind IPv6 extension headers would pass the checks
                // below unseen; nothing legitimate sends it.
                Some(wire::PROTO_TCP) if extensions => {
                    inner.link.stats.malformed += 1;
                    Verdict::Drop
                }
                // TCP sent to a broadcast or multicast Ethernet address is
                // not for one host (as Linux, `PACKET_HOST`).
                Some(wire::PROTO_TCP) if to_us => tcp_in(inner, net, fetched.src, now),
                Some(wire::PROTO_TCP) => Verdict::Drop,
                Some(wire::PROTO_ICMPV6) if src.is_ipv6() => {
                    let IpAddr::V6(src) = src else { return Verdict::Engine };
                    let told = match ndisc(&inner.link.frame()[at..at + len]) {
                        Some(NdiscRepr::NeighborSolicit { lladdr: Some(ll), target_addr }) => {
                            Some((Kind::Request, ll, Some(target_addr)))
                        }
                        Some(NdiscRepr::NeighborAdvert { lladdr: Some(ll), .. }) => Some((Kind::Reply, ll, None)),
                        _ => None,
                    };
                    let Some((kind, ll, target)) = told else { return Verdict::Engine };
                    // RFC 4861 7.1: a hop limit of 255 proves the message
                    // came from the link; the engine drops the rest, and
                    // the policy must not learn from them either.
                    if inner.link.frame().get(14 + 7) != Some(&255) {
                        inner.link.stats.neighbor_refused += 1;
                        return Verdict::Drop;
                    }
                    let mac = <[u8; 6]>::try_from(ll.as_bytes()).unwrap_or([0; 6]);
                    if let Some(target) = target.filter(|t| inner.iface.has_ip_addr(IpAddress::Ipv6(*t)))
                        && neighbor_ok(mac)
                        && !inner.link.neighbors.request_fits(IpAddr::V6(src), now)
                    {
                        inner.link.stats.neighbor_answered += 1;
                        answer_ns(inner, net, src, mac, target);
                        return Verdict::Drop;
                    }
                    if !inner.link.neighbors.judge(IpAddr::V6(src), mac, kind, now) {
                        inner.link.stats.neighbor_refused += 1;
                        log::debug!(target: "tcpip", "refused NDP: {src} at {mac:02x?}");
                        return Verdict::Drop;
                    }
                    Verdict::Engine
                }
                _ => Verdict::Engine,
            }
        }
        Summary::Other => Verdict::Engine,
    }
}

/// Whether a packet that came in a broadcast or multicast frame is one
/// the stack takes from a group: neighbour discovery and group membership,
/// and UDP to a bound port (or to the DHCP client's). The engine answers
/// the rest too (echo requests, port and protocol unreachable), so that
/// one forged packet to a group would have every host of the link answer
/// its forged source (a Smurf), against RFC 1122 3.2.2 and RFC 4443 2.4.
fn for_a_group(inner: &Inner, upper: Option<u8>, at: usize, len: usize) -> bool {
    let upper_bytes = inner.link.frame().get(at..at + len).unwrap_or(&[]);
    match upper {
        Some(wire::PROTO_UDP) => {
            let port = upper_bytes.get(2..4).map_or(0, |p| u16::from_be_bytes([p[0], p[1]]));
            inner.udp_ports.contains(&port) || (inner.dhcp.is_some() && port == 68)
        }
        // Router and neighbour discovery, redirects, and multicast
        // listener queries and reports.
        Some(wire::PROTO_ICMPV6) => upper_bytes.first().is_some_and(|t| matches!(t, 130..=137 | 143)),
        Some(PROTO_IGMP) => true,
        _ => false,
    }
}

/// IGMP (IPv4 group membership).
const PROTO_IGMP: u8 = 2;

/// Answers an ARP request for one of our addresses without the engine
/// (past `neighbor::REQUEST_BUDGET`): the sender learns us, the engine
/// learns nothing, and asks in its turn when it has something to send.
fn answer_arp<N: Net>(inner: &mut Inner, net: &mut N, arp: &wire::Arp) {
    let mac = inner.link.mac;
    let (to_mac, to_ip, ours) = (arp.sender_mac, arp.sender_ip, arp.target_ip);
    Adapter { net, link: &mut inner.link }.send(42, |f| {
        f[..6].copy_from_slice(&to_mac);
        f[6..12].copy_from_slice(&mac);
        f[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&ours.octets());
        f[32..38].copy_from_slice(&to_mac);
        f[38..42].copy_from_slice(&to_ip.octets());
    });
}

/// Answers a neighbour solicitation for `target`, one of our addresses,
/// without the engine, as [`answer_arp`].
fn answer_ns<N: Net>(
    inner: &mut Inner,
    net: &mut N,
    to: core::net::Ipv6Addr,
    to_mac: [u8; 6],
    target: core::net::Ipv6Addr,
) {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr,
        NdiscNeighborFlags, RawHardwareAddress,
    };
    let mac = inner.link.mac;
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from_bytes(&mac)),
    });
    let ip = Ipv6Repr {
        src_addr: target,
        dst_addr: to,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let len = 14 + ip.buffer_len() + icmp.buffer_len();
    Adapter { net, link: &mut inner.link }.send(len, |buf| {
        let mut frame = EthernetFrame::new_unchecked(buf);
        frame.set_dst_addr(smoltcp::wire::EthernetAddress(to_mac));
        frame.set_src_addr(smoltcp::wire::EthernetAddress(mac));
        frame.set_ethertype(EthernetProtocol::Ipv6);
        let mut packet = Ipv6Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet);
        icmp.emit(
            &target,
            &to,
            &mut Icmpv6Packet::new_unchecked(packet.payload_mut()),
            &ChecksumCapabilities::default(),
        );
    });
}

fn neighbor_ok(mac: [u8; 6]) -> bool {
    crate::neighbor::unicast(mac)
}

/// Whether `src` cannot be a packet's source: one of our addresses,
/// multicast, broadcast, loopback, or unspecified but for a DHCP client's
/// request (`to_dhcp_server`; nothing else comes from no address, and the
/// engine's DHCP client would take such a server's address and later send
/// to it, which the engine refuses with a panic).
fn martian(inner: &Inner, src: IpAddr, to_dhcp_server: bool) -> bool {
    if inner.iface.has_ip_addr(IpAddress::from(src)) {
        return true;
    }
    if src.is_unspecified() && !(src.is_ipv4() && to_dhcp_server) {
        return true;
    }
    match src {
        IpAddr::V4(a) => {
            let directed = inner.ipv4.is_some_and(|(ours, prefix)| {
                prefix < 31 && {
                    let host = u32::MAX >> prefix;
                    u32::from(a) & !host == u32::from(ours) & !host && u32::from(a) & host == host
                }
            });
            a.is_multicast() || a.is_broadcast() || a.is_loopback() || directed
        }
        IpAddr::V6(a) => a.is_multicast() || a.is_loopback(),
    }
}

/// A received TCP segment, as the judge needs it.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// Seen from this side: local is the destination.
    t: Tuple,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    window: u16,
    opts: Opts,
    /// SACK blocks (wire numbering).
    sack: [Option<(u32, u32)>; 3],
    len: u32,
    mac: [u8; 6],
}

fn segment(inner: &mut Inner, mac: [u8; 6]) -> Option<Seg> {
    let frame = TcpFrame::new(inner.link.frame_mut())?;
    let tcp = frame.tcp();
    let (src, dst) = (IpAddress::from(frame.src()), IpAddress::from(frame.dst()));
    // Segments the engine would refuse (bad flag combinations, port 0,
    // broken options) are refused here.
    let repr = TcpRepr::parse(&tcp, &src, &dst, &ChecksumCapabilities::ignored()).ok()?;
    Some(Seg {
        t: Tuple { local: frame.dst(), remote: frame.src(), local_port: repr.dst_port, remote_port: repr.src_port },
        control: repr.control.quash_psh(),
        seq: repr.seq_number.0 as u32,
        ack: repr.ack_number.map(|a| a.0 as u32),
        window: repr.window_len,
        opts: Opts { mss: repr.max_seg_size.unwrap_or(536), wscale: repr.window_scale, sack: repr.sack_permitted },
        sack: repr.sack_ranges,
        len: repr.payload.len() as u32,
        mac,
    })
}

fn tcp_in<N: Net>(inner: &mut Inner, net: &mut N, mac: [u8; 6], now: Instant) -> Verdict {
    let Some(seg) = segment(inner, mac) else { return Verdict::Drop };
    if !inner.iface.has_ip_addr(IpAddress::from(seg.t.local)) {
        return Verdict::Drop;
    }
    if let Some(rec) = inner.link.conns.table.get(&seg.t).cloned() {
        return connection(inner, net, seg, rec, now);
    }
    if inner.lingering.contains(&seg.t) {
        match lingering(inner, net, seg, now) {
            Some(v) => return v,
            // A SYN: the peer starts anew.
            None => {
                inner.lingering.remove(&seg.t);
            }
        }
    }
    if inner.listeners.contains_key(&seg.t.local_port) {
        return listener(inner, net, seg, now);
    }
    // No connection and no listener: the engine answers with a reset.
    Verdict::Engine
}

/// A segment for a connection the engine carries, whose record is `rec`.
fn connection<N: Net>(inner: &mut Inner, net: &mut N, seg: Seg, rec: Record, now: Instant) -> Verdict {
    let handle = rec.handle;
    let state = inner.sockets.get::<tcp::Socket>(handle).state();
    if let Some(replay) = rec.replay {
        // The engine's side of the handshake is not done: the peer's
        // retransmissions wait; its reset ends it.
        if seg.control == TcpControl::Rst && seg.seq == replay.peer_isn.wrapping_add(1) {
            inner.sockets.get_mut::<tcp::Socket>(handle).abort();
            inner.link.conns.remove(&seg.t);
            inner.orphan(handle, None, None, now);
        } else if seg.len > 0 || seg.control == TcpControl::Fin {
            // Data (a request sent right after the handshake) while the
            // engine asks where the peer is: kept for the engine, which
            // the neighbour's answer lets finish within a round trip;
            // dropped, it would cost the peer's retransmission time
            // (200 ms on Linux).
            keep_early(inner, seg.t, now);
        }
        return Verdict::Drop;
    }
    let synchronized = !matches!(state, State::Closed | State::Listen | State::SynSent | State::SynReceived);
    if seg.control == TcpControl::Syn && seg.ack.is_none() && matches!(state, State::TimeWait | State::Closed) {
        // The peer has forgotten the old connection and reuses its port
        // (a client that lets the server close first has no TIME-WAIT of
        // its own). Linux accepts such a SYN, and so does this: the old
        // socket is closed, and the SYN is a new connection's.
        inner.sockets.get_mut::<tcp::Socket>(handle).abort();
        inner.link.conns.remove(&seg.t);
        return if inner.listeners.contains_key(&seg.t.local_port) {
            listener(inner, net, seg, now)
        } else {
            Verdict::Drop
        };
    }
    if seg.control == TcpControl::Syn && synchronized {
        inner.link.stats.syn_challenged += 1;
        return challenge(inner, seg.t, now);
    }
    let ack = seg.ack.map(|a| a.wrapping_add(rec.delta));
    if seg.control == TcpControl::Rst && synchronized {
        match rec.rcv_nxt {
            Some(nxt) if seg.seq == nxt => {}
            Some(nxt) if seq_lt(nxt, seg.seq) && rec.in_window(seg.seq) => {
                inner.link.stats.rst_challenged += 1;
                return challenge(inner, seg.t, now);
            }
            Some(_) => return Verdict::Drop,
            None => {}
        }
    }
    let mut ack = ack;
    if synchronized
        && seg.control != TcpControl::Rst
        && let (Some(a), Some(una)) = (ack, rec.snd_una)
        && seq_lt(a, una)
    {
        if una.wrapping_sub(a) > rec.max_snd_wnd.max(1) {
            inner.link.stats.ack_challenged += 1;
            return challenge(inner, seg.t, now);
        }
        if seg.len > 0 || seg.control == TcpControl::Fin {
            ack = Some(una);
        }
    }
    if let (Some(a), Some(old)) = (ack, seg.ack)
        && a != old
        && let Some(mut frame) = TcpFrame::new(inner.link.frame_mut())
    {
        // The engine does not check received checksums.
        frame.tcp_mut().set_ack_number(TcpSeqNumber(a as i32));
    }
    // An acknowledgment that starts past a window that shrank under the
    // peer reaches the engine inside it (`Record::ack_seq`): a pure ACK,
    // or a zero-window probe whose data the closed window drops anyway
    // when it acknowledges new data (cut, the engine does not answer it;
    // the next probe is answered, and the engine announces its window as
    // it opens).
    let new_ack = matches!((ack, rec.snd_una), (Some(a), Some(una)) if seq_lt(una, a));
    let plain = matches!(seg.control, TcpControl::None);
    let probe = seg.len > 0 && rec.rcv_wnd == 0 && new_ack && rec.rcv_nxt == Some(seg.seq);
    let mut seq = seg.seq;
    if synchronized && plain && (seg.len == 0 || probe) {
        let moved = if probe { rec.rcv_nxt } else { rec.ack_seq(seg.seq) };
        if let Some(to) = moved
            && let Some(mut frame) = TcpFrame::new(inner.link.frame_mut())
        {
            if probe {
                frame.cut_payload();
            }
            frame.tcp_mut().set_seq_number(TcpSeqNumber(to as i32));
            inner.link.stats.acks_moved_into_window += 1;
            seq = to;
        }
    }
    // The peer's window after this segment, if the engine takes its
    // acknowledgment.
    let mut took = None;
    if let Some(r) = inner.link.conns.table.get_mut(&seg.t) {
        if state == State::SynSent && seg.control == TcpControl::Syn && ack.is_some() {
            // The SYN-ACK of a connection this side opened: the peer's
            // window scale (the engine takes it from here too).
            r.peer_shift = seg.opts.wscale;
        }
        let taken = r.heard(seq, ack, seg.window, seg.control == TcpControl::Syn);
        took = taken.then_some(r.snd_wnd);
        let cover = ack.filter(|_| taken && synchronized && seg.control != TcpControl::Rst);
        let window = cover.and_then(|a| r.zero_window_cover(a, seg.window));
        if seg.control == TcpControl::Fin {
            // Only a FIN the engine can take ends the stream: one that
            // reaches the next byte expected (or a copy of it). One past
            // that, out of order or far outside the window, would set an
            // end the reaper waits to see acknowledged for ever, while
            // its copies restarted the engine's TIME-WAIT timer.
            let end = seg.seq.wrapping_add(seg.len).wrapping_add(1);
            if r.rcv_nxt.is_none_or(|nxt| seq_le(seg.seq, nxt) && seq_le(nxt, end)) {
                r.fin_end = Some(end);
            }
        }
        r.peer_mac = seg.mac;
        if seg.len > 0 {
            r.last_heard = now;
        }
        if let Some(window) = window
            && let Some(mut frame) = TcpFrame::new(inner.link.frame_mut())
        {
            // The engine does not check received checksums.
            frame.tcp_mut().set_window_len(window);
            inner.link.stats.zero_windows_covered += 1;
        }
    }
    if synchronized
        && seg.control != TcpControl::Rst
        && let (Some(a), Some(_)) = (ack, took)
    {
        inner.link.conns.note_sack(&seg.t, a, &seg.sack);
    }
    if synchronized
        && plain
        && seg.len == 0
        && let (Some(a), Some(window)) = (ack, took)
    {
        count_each_segment(inner, net, &rec, a, window);
    }
    Verdict::Engine
}

/// Acknowledgments, at most, that one covering many segments is shown to
/// the engine as ([`count_each_segment`]): the engine's work for an ACK
/// is bounded.
const ACK_PIECES: u32 = 16;

/// Shows the engine an acknowledgment of many segments as one for each
/// segment (up to [`ACK_PIECES`]) while its congestion window is what
/// holds its sending back.
///
/// The engine's congestion control (smoltcp's Reno) grows its window by
/// at most a segment for each ACK, as RFC 5681 allows; Linux counts the
/// segments acknowledged. A receiver that acknowledges a whole flight at
/// once (receive offload makes one segment of many, and a stack that
/// works in batches, this one among them, answers a batch with one ACK)
/// then gets a slow start that adds a segment a round trip: a megabyte
/// over 100 ms round trips took 4.0 s, and 1.4 s doubling. The ACKs
/// before the received one are made-up copies of it, evenly spaced a
/// segment or more apart; the engine takes them as it would a
/// receiver's that acknowledged every segment or two.
///
/// Only for an acknowledgment the engine takes (`window`, the peer's
/// window it brings): one it drops would make its copies dropped too,
/// and a peer could have the engine look at each of its segments
/// seventeen times. Only while data waits that the peer's window would
/// take: otherwise the congestion window is not what holds the sender.
/// Not while what was sent again (a loss) is being acknowledged
/// (`Record::resent_below`): after a timeout the window restarts at a
/// segment and grows by one an ACK, and the engine does not pace what a
/// window grown at once would send.
fn count_each_segment<N: Net>(inner: &mut Inner, net: &mut N, rec: &Record, ack: u32, window: u32) {
    let (Some(una), Some(max)) = (rec.snd_una, rec.snd_max) else { return };
    if rec.resent_below.is_some_and(|below| seq_lt(una, below)) {
        return;
    }
    // The largest segment the link carries (IPv4 headers without
    // options): fewer pieces, each a segment or more, where a smaller
    // guess would split an ACK of one segment in two.
    let mss = (inner.mtu as u32).saturating_sub(40).max(536);
    let acked = ack.wrapping_sub(una);
    let pieces = (acked / mss).min(ACK_PIECES + 1);
    if !seq_lt(una, ack) || !seq_le(ack, max) || pieces < 2 {
        return;
    }
    let queued = inner.sockets.get::<tcp::Socket>(rec.handle).send_queue();
    let in_flight = max.wrapping_sub(ack);
    if queued <= max.wrapping_sub(una) as usize || in_flight.saturating_add(mss) > window {
        return;
    }
    for k in 1..pieces {
        // At most acked * 16 / 17: no overflow for any u32 `acked` in u64.
        let at = una.wrapping_add((acked as u64 * k as u64 / pieces as u64) as u32);
        let copied = inner.link.copy_before(|f| {
            let Some(mut frame) = TcpFrame::new(f) else { return false };
            frame.tcp_mut().set_ack_number(TcpSeqNumber(at as i32));
            true
        });
        if !copied {
            return;
        }
        crate::driver::ingest(inner, net);
        inner.link.forget_made();
        inner.link.stats.acks_per_segment += 1;
    }
}

/// Turns the received segment into one the engine answers with a
/// challenge ACK and nothing else: an ACK above anything it sent, without
/// payload. Dropped instead past the stack-wide rate limit.
fn challenge(inner: &mut Inner, t: Tuple, now: Instant) -> Verdict {
    let Some(max) = inner.link.conns.table.get(&t).and_then(|r| r.snd_max) else { return Verdict::Drop };
    if !inner.challenges.allow(now) {
        inner.link.stats.challenges_limited += 1;
        return Verdict::Drop;
    }
    let Some(mut frame) = TcpFrame::new(inner.link.frame_mut()) else { return Verdict::Drop };
    frame.cut_payload();
    let mut tcp = frame.tcp_mut();
    tcp.clear_flags();
    tcp.set_ack(true);
    tcp.set_ack_number(TcpSeqNumber(max.wrapping_add(1 << 30) as i32));
    Verdict::Engine
}

/// A handshake's completing segment, waiting for the memory of a
/// connection shed to make room for it.
#[derive(Debug)]
pub(crate) struct Deferred {
    frame: Vec<u8>,
    since: Instant,
    /// The connection it is for.
    t: Tuple,
    /// Where the segment ends (the peer's numbering): a reset from the
    /// peer that gives up the handshake after it comes from there.
    end: u32,
}

/// Segments waiting so at most, their bytes at most, and for how long.
/// They wait when memory is short, so they are not asked of the budget,
/// but bounded in bytes: with receive offload a segment is up to 64 KiB.
const DEFERRED: usize = 64;
const DEFERRED_BYTES: usize = 128 * 1024;
const DEFER: Duration = Duration::from_secs(3);

/// How long copies of a handshake's last ACK wait for the room it asked
/// of others (closed connections draining, the application's memory)
/// before it is judged again: a client with a request to send retransmits
/// it from 200 ms, doubling, on Linux, so a copy past it comes at 1.4 s,
/// before a client's patience of a few seconds runs out (one with nothing
/// to send is brought back by the SYN-ACK's retransmission, a second
/// on). It also bounds how often one pending handshake asks for room: at
/// most once per ASKED.
const ASKED: Duration = Duration::from_secs(1);

/// Keeps a copy of the received frame, a segment of `t` that ends at
/// `end`, to judge again once there is room.
fn defer(inner: &mut Inner, t: Tuple, end: u32, now: Instant) {
    let frame = inner.link.frame();
    let mut copy = Vec::new();
    let held: usize = inner.deferred.iter().map(|d| d.frame.len()).sum();
    if inner.deferred.len() >= DEFERRED
        || held.saturating_add(frame.len()) > DEFERRED_BYTES
        || inner.deferred.try_reserve(1).is_err()
        || copy.try_reserve_exact(frame.len()).is_err()
    {
        return;
    }
    copy.extend_from_slice(frame);
    inner.deferred.push_back(Deferred { frame: copy, since: now, t, end });
}

/// Segments kept for handshakes the engine has yet to finish, at most,
/// and their bytes at most. Like deferred segments they are not asked of
/// the budget: a handshake admitted at the budget's edge has just taken
/// the room there was, and its client's request, come with the ACK,
/// would otherwise be dropped for the client's retransmission (a second,
/// for some stacks).
const EARLY: usize = 16;
const EARLY_BYTES: usize = 64 * 1024;

/// Keeps a copy of the received frame, a segment for the replayed
/// handshake of `t`, to judge again once the engine has finished it.
fn keep_early(inner: &mut Inner, t: Tuple, now: Instant) {
    let frame = inner.link.frame();
    let mut copy = Vec::new();
    let held: usize = inner.early.iter().map(|d| d.frame.len()).sum();
    if inner.early.len() >= EARLY
        || held.saturating_add(frame.len()) > EARLY_BYTES
        || inner.early.try_reserve(1).is_err()
        || copy.try_reserve_exact(frame.len()).is_err()
    {
        return;
    }
    copy.extend_from_slice(frame);
    inner.early.push_back(Deferred { frame: copy, since: now, t, end: 0 });
}

/// Puts the oldest segment kept by [`keep_early`] whose connection's
/// handshake is done back as the received frame (whether there is one);
/// forgets those whose connection is gone or still waits after [`DEFER`].
pub(crate) fn release_early(inner: &mut Inner, now: Instant) -> bool {
    let conns = &inner.link.conns.table;
    inner.early.retain(|d| {
        conns.get(&d.t).is_some_and(|r| r.replay.is_none() || now.saturating_duration_since(d.since) <= DEFER)
    });
    let Some(i) = inner.early.iter().position(|d| conns.get(&d.t).is_some_and(|r| r.replay.is_none())) else {
        return false;
    };
    let Some(d) = inner.early.remove(i) else { return false };
    inner.link.load(&d.frame);
    true
}

/// Puts a deferred segment back as the received frame: first one whose
/// connection has been made meanwhile (a copy of its handshake's ACK, or
/// the request sent with it), which needs no room; else the oldest, if a
/// connection fits now. Whether it did.
pub(crate) fn resume(inner: &mut Inner, now: Instant) -> bool {
    while inner.deferred.front().is_some_and(|d| now.saturating_duration_since(d.since) > DEFER) {
        inner.deferred.pop_front();
    }
    let i = match made(inner) {
        Some(i) => i,
        None if deferred_fits(inner) => 0,
        None => return false,
    };
    let Some(d) = inner.deferred.remove(i) else { return false };
    inner.link.load(&d.frame);
    true
}

/// The first deferred segment whose connection has been made.
fn made(inner: &Inner) -> Option<usize> {
    inner.deferred.iter().position(|d| inner.link.conns.table.get(&d.t).is_some())
}

/// Whether a deferred segment waits and can be judged now: its
/// connection made, or a connection fits.
pub(crate) fn deferred_fits(inner: &Inner) -> bool {
    !inner.deferred.is_empty()
        && (made(inner).is_some()
            || !inner.link.conns.table.is_full() && (inner.config.may_hold)(connection_cost(inner)))
}

/// Forgets a pending handshake refused or reset, and the segments kept
/// for it: judged later, they could make a connection its client has
/// given up.
fn give_up(inner: &mut Inner, t: &Tuple) {
    inner.handshakes.forget(t);
    inner.deferred.retain(|d| d.t != *t);
}

/// The stack-wide limit on challenge ACKs.
#[derive(Debug)]
pub(crate) struct Challenges {
    second: u64,
    left: u32,
    rng: u64,
}

impl Challenges {
    pub(crate) fn new(seed: u64) -> Challenges {
        Challenges { second: u64::MAX, left: 0, rng: seed | 1 }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let second = now.as_nanos() / 1_000_000_000;
        if second != self.second {
            self.second = second;
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            // 500 to 1499 a second, 1000 on average.
            self.left = 500 + (self.rng % 1000) as u32;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// A connection closed on this side whose socket is gone: what is left
/// of it while the peer may still send its FIN (FIN-WAIT-2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Linger {
    /// Our next sequence number (after our FIN) and the peer's, as the
    /// peer numbers them.
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub rcv_wnd: u32,
    pub until: Instant,
}

/// A segment for a lingering connection; `None` for a SYN, which starts
/// a new connection.
fn lingering<N: Net>(inner: &mut Inner, net: &mut N, seg: Seg, now: Instant) -> Option<Verdict> {
    let l = *inner.lingering.get(&seg.t)?;
    let in_window = seq_le(l.rcv_nxt, seg.seq) && seq_le(seg.seq, l.rcv_nxt.wrapping_add(l.rcv_wnd.max(1)));
    let answer = match seg.control {
        TcpControl::Syn if seg.ack.is_none() => return None,
        TcpControl::Rst => {
            if seg.seq == l.rcv_nxt {
                inner.lingering.remove(&seg.t);
            } else if in_window && inner.challenges.allow(now) {
                inner.link.stats.rst_challenged += 1;
                reply(inner, net, &seg, handshake::bare(&seg.t, TcpControl::None, l.snd_nxt, Some(l.rcv_nxt), 0));
            }
            return Some(Verdict::Drop);
        }
        // Data for a connection nobody reads any more: a reset, as Linux
        // answers it (RFC 9293, 3.10.7.4, after a close).
        _ if seg.len > 0 => {
            inner.lingering.remove(&seg.t);
            handshake::bare(&seg.t, TcpControl::Rst, l.snd_nxt, None, 0)
        }
        TcpControl::Fin if in_window => {
            // The peer's close: acknowledged, and the connection is over
            // (no TIME-WAIT is kept, as for connections with a socket).
            inner.lingering.remove(&seg.t);
            handshake::bare(&seg.t, TcpControl::None, l.snd_nxt, Some(seg.seq.wrapping_add(1)), 0)
        }
        // A keep-alive probe gets its ACK; other ACKs need none.
        _ if seg.seq == l.rcv_nxt.wrapping_sub(1) => {
            handshake::bare(&seg.t, TcpControl::None, l.snd_nxt, Some(l.rcv_nxt), 0)
        }
        _ => return Some(Verdict::Drop),
    };
    reply(inner, net, &seg, answer);
    Some(Verdict::Drop)
}

/// Sends `repr` back to where `seg` came from.
fn reply<N: Net>(inner: &mut Inner, net: &mut N, seg: &Seg, repr: TcpRepr) {
    let len = handshake::frame_len(seg.t.local, &repr);
    let mac = inner.link.mac;
    Adapter { net, link: &mut inner.link }
        .send(len, |buf| handshake::emit(buf, mac, seg.mac, seg.t.local, seg.t.remote, &repr));
}

/// Refuses a connection: a reset for its SYN or its ACK.
fn refuse<N: Net>(inner: &mut Inner, net: &mut N, seg: &Seg) {
    let repr = match seg.ack {
        Some(a) => handshake::bare(&seg.t, TcpControl::Rst, a, None, 0),
        None => handshake::bare(&seg.t, TcpControl::Rst, 0, Some(seg.seq.wrapping_add(1 + seg.len)), 0),
    };
    reply(inner, net, seg, repr);
}

/// The bytes a new connection makes the heap hold: its buffers, its
/// socket, its record.
pub(crate) fn connection_cost(inner: &Inner) -> usize {
    let n = inner.buffer_size();
    // A pooled socket's buffers are in the heap already.
    let buffers = if inner.pooled(n) { 0 } else { inner.config.both_ways(n) };
    buffers + 2048 + APP_HEADROOM
}

/// Room left, beyond a connection's own buffers, for what the application
/// allocates when it accepts one (an HTTP server's first read buffer):
/// without it the stack would fill the budget to the last byte and the
/// application would refuse every connection the stack let in.
const APP_HEADROOM: usize = 32 * 1024;

/// Whether a new connection may be made now.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Yes,
    /// Room is being made by shedding a connection: the segment is
    /// dropped, and the client's retry gets in.
    Later,
    /// Refused with a reset.
    No,
}

/// Whether a new connection fits now: a free slot, and memory for its
/// buffers (the pool's sockets freed first, before any connection is
/// refused or shed).
fn room(inner: &mut Inner) -> bool {
    let fits = |inner: &Inner| (inner.config.may_hold)(connection_cost(inner));
    !inner.link.conns.table.is_full() && (fits(inner) || (inner.drain_pool() && fits(inner)))
}

/// Whether a new connection fits now; at its completing ACK (`complete`)
/// a connection is shed to make room if it does not, or the ACK waits for
/// closed connections to end, or for the application to give back memory
/// it holds for peers ([`mirage_runtime::memory::reclaim`]). Shedding waits
/// for the ACK: a SYN may come from a forged address, and a flood of them
/// must not reset real connections. A SYN is answered when room is on its
/// way or could be made, and refused otherwise.
fn admit<N: Net>(inner: &mut Inner, net: &mut N, seg: &Seg, complete: bool, now: Instant) -> Admit {
    if room(inner) {
        return Admit::Yes;
    }
    let full = inner.link.conns.table.is_full();
    match complete {
        true if crate::tcp::shed(inner, now) => return Admit::Later,
        // Closed connections still sending give their memory back as they
        // end, or are shed once stalled: the client's retry finds room.
        true if crate::tcp::draining(inner, now) => return Admit::Later,
        // The application sheds what it holds for a peer (a server, its
        // largest request or response): room once its tasks have run.
        true if mirage_runtime::memory::reclaim() => return Admit::Later,
        false if crate::tcp::sheddable(inner, now) => return Admit::Yes,
        _ => {}
    }
    if full {
        inner.link.stats.refused_limit += 1;
    } else {
        inner.link.stats.refused_memory += 1;
        log_refusal(inner, seg, now);
    }
    refuse(inner, net, seg);
    Admit::No
}

/// A refusal for memory is logged at most this often: a flood of them
/// must not become a flood of lines.
pub(crate) const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Says that a connection was refused for memory, what the heap holds,
/// and the fix, where the last such line is old enough: an operator
/// whose unikernel has too little memory for even one connection
/// otherwise sees only the peers' resets.
fn log_refusal(inner: &mut Inner, seg: &Seg, now: Instant) {
    if inner.refusal_logged.is_some_and(|at| now.saturating_duration_since(at) < REFUSAL_LOG_EVERY) {
        return;
    }
    inner.refusal_logged = Some(now);
    // Numbers only, nothing allocated: the heap is at its budget here.
    // With the default `Config::may_hold` both are known (a platform that
    // cannot measure the heap refuses nothing for memory); 0 otherwise.
    let kib = |b: Option<usize>| b.unwrap_or(0) / 1024;
    log::warn!(
        target: "tcpip",
        "refused a connection from {} for memory: {} KiB of the heap in use, {} KiB the budget peers may fill, \
         {} KiB a connection needs ({} refused so far); give the unikernel more memory (--mem on Solo5, its data \
         limit on unix)",
        core::net::SocketAddr::new(seg.t.remote, seg.t.remote_port),
        kib(mirage_runtime::memory::heap_in_use()),
        kib(mirage_runtime::memory::budget()),
        connection_cost(inner) / 1024,
        inner.link.stats.refused_memory,
    );
}

/// A segment for a listener, from a peer without a connection.
fn listener<N: Net>(inner: &mut Inner, net: &mut N, seg: Seg, now: Instant) -> Verdict {
    let port = seg.t.local_port;
    match (seg.control, seg.ack) {
        (TcpControl::Syn, None) => {
            // Data on a SYN is not taken (no TCP Fast Open): the peer sends
            // it again once the handshake is done.
            let Some(l) = inner.listeners.get(&port) else { return Verdict::Drop };
            if l.waiting() >= l.backlog {
                // The application is not accepting: drop the SYN, as Linux
                // does, and let the client retry.
                inner.link.stats.listen_overflows += 1;
                return Verdict::Drop;
            }
            if admit(inner, net, &seg, false, now) != Admit::Yes {
                return Verdict::Drop;
            }
            let isn = match inner.handshakes.queue.get(&seg.t) {
                // A retransmitted SYN: the same answer.
                Some(h) if h.peer_isn == seg.seq => h.isn,
                _ => {
                    let isn = inner.handshakes.cookie(&seg.t, seg.seq, seg.opts, now);
                    if !inner.handshakes.remember(seg.t, seg.seq, isn, seg.opts, seg.mac, now) {
                        inner.handshakes.queue.remove(&seg.t);
                        inner.link.stats.syn_cookies += 1;
                    }
                    isn
                }
            };
            let repr = handshake::syn_ack(&seg.t, seg.seq, isn, seg.opts, inner.mtu, inner.config.buffers());
            reply(inner, net, &seg, repr);
            Verdict::Drop
        }
        (TcpControl::Rst, _) => {
            // The client gives up a handshake waiting for room (queued,
            // or noted when the queue could not hold it): its copies
            // kept for later would make a connection nobody holds. Its
            // reset comes right after its SYN, or after the request it
            // sent (kept here).
            let after_syn = inner.handshakes.peer_isn(&seg.t, now).is_some_and(|p| p.wrapping_add(1) == seg.seq);
            if after_syn || inner.deferred.iter().any(|d| d.t == seg.t && d.end == seg.seq) {
                give_up(inner, &seg.t);
            }
            Verdict::Drop
        }
        (TcpControl::None | TcpControl::Fin, Some(ack)) => {
            let isn = ack.wrapping_sub(1);
            // With an entry (queued, or noted as waiting for room), any
            // segment acknowledging our SYN completes the handshake, the
            // first ACK or data after it (reordered, or the ACK was lost);
            // from a cookie alone, only the segment right after the peer's
            // SYN can be checked.
            let queued = inner.handshakes.queue.get(&seg.t).map(|h| (h.peer_isn, h.isn, h.opts, h.made_room));
            let known = queued
                .or_else(|| inner.handshakes.asked(&seg.t, now).map(|a| (a.peer_isn, a.isn, a.opts, Some(a.at))))
                .filter(|&(peer_isn, ours, ..)| {
                    ours == isn
                        && seq_le(peer_isn.wrapping_add(1), seg.seq)
                        && seq_lt(seg.seq, peer_isn.wrapping_add(1 << 30))
                });
            let found = match known {
                Some((peer_isn, _, opts, made_room)) => {
                    inner.handshakes.queue.remove(&seg.t);
                    Some((peer_isn, opts, made_room))
                }
                None => {
                    let peer_isn = seg.seq.wrapping_sub(1);
                    let opts = inner.handshakes.check(&seg.t, peer_isn, isn, now);
                    if opts.is_some() {
                        inner.handshakes.queue.remove(&seg.t);
                        inner.link.stats.cookies_accepted += 1;
                    }
                    opts.map(|o| (peer_isn, o, None))
                }
            };
            match found {
                Some((peer_isn, opts, made_room)) => {
                    // A copy of an ACK that already asked for room waits
                    // for it: each copy shedding another connection would
                    // let one handshake reset a batch of them. Past ASKED
                    // it is judged again, so that room asked for and never
                    // come (closed connections that stalled, memory given
                    // back that was too little or taken by others) is
                    // asked again: a shed, another ask of the application,
                    // or a reset, not a wait longer than its client's
                    // patience. Closed connections still draining are
                    // waited for again: that room is coming.
                    let asked = made_room.filter(|at| now.saturating_duration_since(*at) <= ASKED);
                    let admitted = if asked.is_some() && !room(inner) {
                        // Closed connections that have stalled meanwhile
                        // are nobody's: one is reset for each copy, which
                        // costs no live connection, where the room asked
                        // of others (draining, the application's memory)
                        // did not come or was taken.
                        if let Some(stall) = inner.config.shed_idle {
                            crate::tcp::shed_orphan(inner, now, stall);
                        }
                        Admit::Later
                    } else {
                        admit(inner, net, &seg, true, now)
                    };
                    match admitted {
                        Admit::Yes => {}
                        // Room is being made: the segment waits for it (or,
                        // if it cannot, the half-open entry stays for its
                        // SYN-ACK retransmission to bring the peer's ACK
                        // again).
                        Admit::Later => {
                            inner.handshakes.remember(seg.t, peer_isn, isn, opts, seg.mac, now);
                            let at = asked.unwrap_or(now);
                            let noted = Asked { t: seg.t, peer_isn, isn, opts, at };
                            if let Some(evicted) = inner.handshakes.note_asked(noted, now) {
                                // Its kept segments would make a
                                // connection its reset could no longer
                                // reach.
                                give_up(inner, &evicted);
                            }
                            defer(inner, seg.t, seg.seq.wrapping_add(seg.len), now);
                            return Verdict::Drop;
                        }
                        Admit::No => {
                            give_up(inner, &seg.t);
                            return Verdict::Drop;
                        }
                    }
                    complete(inner, net, seg, peer_isn, isn, opts, now)
                }
                // Not a handshake of ours: the engine answers with a reset.
                None => Verdict::Engine,
            }
        }
        _ => Verdict::Engine,
    }
}

/// Hands a completed handshake to the engine: a fresh socket, the
/// peer's SYN replayed into it, then (once the engine's SYN-ACK has shown
/// its sequence number) the peer's ACK.
fn complete<N: Net>(
    inner: &mut Inner,
    net: &mut N,
    seg: Seg,
    peer_isn: u32,
    isn: u32,
    opts: Opts,
    now: Instant,
) -> Verdict {
    inner.handshakes.forget(&seg.t);
    let Some(handle) = inner.tcp_socket() else {
        inner.link.stats.refused_memory += 1;
        give_up(inner, &seg.t);
        refuse(inner, net, &seg);
        return Verdict::Drop;
    };
    let endpoint = IpListenEndpoint { addr: Some(IpAddress::from(seg.t.local)), port: seg.t.local_port };
    // Cannot fail: the socket is new and the port is not 0.
    let _ = inner.sockets.get_mut::<tcp::Socket>(handle).listen(endpoint);
    let mut rec = Record::new(handle, now);
    rec.replay = Some(Replay { wire_isn: isn, engine_isn: None, peer_isn, window: seg.window, since: now });
    rec.peer_shift = opts.wscale;
    rec.wire_shift = opts.wscale.map(|_| handshake::wire_shift(inner.config.buffers()));
    rec.peer_mac = seg.mac;
    if inner.link.conns.insert(seg.t, rec).is_err() {
        inner.remove_socket(handle);
        inner.link.stats.refused_memory += 1;
        give_up(inner, &seg.t);
        refuse(inner, net, &seg);
        return Verdict::Drop;
    }
    let syn = TcpRepr {
        src_port: seg.t.remote_port,
        dst_port: seg.t.local_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(peer_isn as i32),
        ack_number: None,
        window_len: seg.window,
        window_scale: opts.wscale,
        max_seg_size: Some(opts.mss),
        sack_permitted: opts.sack,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (ours, len) = (inner.link.mac, handshake::frame_len(seg.t.remote, &syn));
    inner.link.make(len, |buf| handshake::emit(buf, seg.mac, ours, seg.t.remote, seg.t.local, &syn));
    let smol = smol_now();
    let Inner { iface, sockets, link, .. } = inner;
    let mut dev = Adapter { net, link };
    iface.poll_ingress_single(smol, &mut dev, sockets);
    for _ in 0..64 {
        let captured =
            dev.link.conns.table.get(&seg.t).is_some_and(|r| r.replay.is_some_and(|p| p.engine_isn.is_some()));
        if captured || iface.poll_egress(smol, &mut dev, sockets) == smoltcp::iface::PollResult::None {
            break;
        }
    }
    let Some(rec) = inner.link.conns.table.get(&seg.t) else { return Verdict::Drop };
    if rec.replay.is_some_and(|p| p.engine_isn.is_none()) {
        // The engine does not know where the peer is on the link yet (it
        // sent a neighbour request instead of its SYN-ACK): the handshake
        // ends when it answers ([`finish_replays`]).
        return Verdict::Drop;
    }
    inner.link.conns.replayed(&seg.t);
    let Some(rec) = inner.link.conns.table.get(&seg.t).cloned() else { return Verdict::Drop };
    match connection(inner, net, seg, rec, now) {
        Verdict::Engine => Verdict::Accept(seg.t.local_port, handle, seg.t),
        other => other,
    }
}

/// Ends the replayed handshakes whose SYN-ACK the engine sent late (and
/// gives up those it never sent): a made-up ACK from the peer completes
/// each. Calls `accepted` for each connection established.
pub(crate) fn finish_replays<N: Net>(
    inner: &mut Inner,
    net: &mut N,
    now: Instant,
    mut accepted: impl FnMut(&mut Inner, u16, SocketHandle, Tuple),
) {
    if inner.link.conns.replaying == 0 {
        return;
    }
    let mut due = None;
    let mut stale = None;
    for (t, r) in inner.link.conns.table.iter() {
        let Some(p) = r.replay else { continue };
        if p.engine_isn.is_some() {
            due = Some((*t, r.handle, p, r.peer_mac));
            break;
        }
        if now.saturating_duration_since(p.since) > REPLAY_TIMEOUT {
            stale = Some((*t, r.handle));
        }
    }
    if let Some((t, handle)) = stale {
        inner.sockets.get_mut::<tcp::Socket>(handle).abort();
        inner.link.conns.remove(&t);
        inner.link.stats.timed_out += 1;
        inner.orphan(handle, None, None, now);
    }
    // One at a time: each ingests a frame. The driver calls again on its
    // next round.
    let Some((t, handle, p, mac)) = due else { return };
    let Some(engine_isn) = p.engine_isn else { return };
    let ack = handshake::bare(
        &Tuple { local: t.remote, remote: t.local, local_port: t.remote_port, remote_port: t.local_port },
        TcpControl::None,
        p.peer_isn.wrapping_add(1),
        Some(engine_isn.wrapping_add(1)),
        p.window,
    );
    let (ours, len) = (inner.link.mac, handshake::frame_len(t.remote, &ack));
    inner.link.make(len, |buf| handshake::emit(buf, mac, ours, t.remote, t.local, &ack));
    inner.link.conns.replayed(&t);
    let smol = smol_now();
    let Inner { iface, sockets, link, .. } = inner;
    iface.poll_ingress_single(smol, &mut Adapter { net, link }, sockets);
    accepted(inner, t.local_port, handle, t);
}
