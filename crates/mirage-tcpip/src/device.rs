//! The adapter between a [`Net`] interface and the protocol engine.
//!
//! The engine pulls frames through a token pair; `Net` lends a frame to a
//! closure. The adapter has each received frame read into its own buffer
//! (`Net::try_recv_into`: straight from the host where the interface can,
//! or one copy, into cache-warm memory), checks it with [`crate::wire::parse`]
//! and only then lets the driver judge it ([`crate::inbound`]) and hand it
//! on, so malformed frames are counted here and the engine sees none. Sent
//! frames are written by the engine straight into the buffer the interface
//! provides, and looked at on the way ([`crate::conns`],
//! [`crate::neighbor`]).
//!
//! [`Link`] is the adapter's state, kept in the stack's shared state where
//! the sockets' side can reach it too; [`Adapter`] joins it to the
//! interface for one round of the driver.

use alloc::vec::Vec;

use mirage_devices::net::{self, Net, PartialChecksum};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};

use core::net::IpAddr;

use crate::Stats;
use crate::conns::{Conns, Outgoing};
use crate::neighbor::Neighbors;
use crate::wire::{self, Packet};

pub(crate) struct Link {
    rx: Vec<u8>,
    /// A frame made up for the engine (a replayed handshake's SYN or ACK),
    /// given to it before the received one.
    made: Vec<u8>,
    made_len: Option<usize>,
    /// Room for a frame the interface refused, or one held back.
    scratch: Vec<u8>,
    /// The largest frame sent whole (the MTU's).
    max_frame: usize,
    /// The largest frame holding a TCP segment that the interface cuts to
    /// `max_frame` (segmentation offload), or `max_frame` without it.
    segmented_frame: usize,
    /// Length of the checked frame in `rx`, until the engine takes it,
    /// and what its check found.
    pending: Option<usize>,
    fetched: Option<Fetched>,
    pub mac: [u8; 6],
    pub stats: Stats,
    /// The interface failed or is gone.
    pub failed: Option<net::Error>,
    pub conns: Conns,
    pub neighbors: Neighbors,
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link").field("stats", &self.stats).field("conns", &self.conns).finish()
    }
}

/// A zeroed buffer, or `None` when the heap cannot give it.
pub(crate) fn buffer(len: usize) -> Option<Vec<u8>> {
    mirage_runtime::memory::zeroed(len)
}

impl Link {
    /// A link for frames of at most `max_frame` bytes; with `tso` (the
    /// interface's [`Net::segmentation_offload`], or 0) the engine writes
    /// TCP segments of up to 64 KiB, which the interface cuts to the
    /// segment size the engine names (the peer's MSS, or what the MTU
    /// leaves). With `rx_frame` (what [`Net::receive_offload`] answered, or
    /// 0) received frames may be as long as that.
    pub(crate) fn new(
        max_frame: usize,
        tso: usize,
        rx_frame: usize,
        mac: [u8; 6],
        conns: Conns,
        neighbors: Neighbors,
    ) -> Option<Link> {
        let segmented_frame = tso.min(SEGMENTED_FRAME).max(max_frame);
        Some(Link {
            rx: buffer(rx_frame.max(max_frame))?,
            made: buffer(max_frame)?,
            made_len: None,
            scratch: buffer(segmented_frame)?,
            max_frame,
            segmented_frame,
            pending: None,
            fetched: None,
            mac,
            stats: Stats::default(),
            failed: None,
            conns,
            neighbors,
        })
    }

    #[cold]
    fn malformed(&mut self, why: impl core::fmt::Display) {
        self.stats.malformed += 1;
        log::debug!(target: "tcpip", "dropped a malformed frame: {why} ({} so far)", self.stats.malformed);
    }

    /// The received frame waiting for the engine.
    pub(crate) fn frame(&self) -> &[u8] {
        &self.rx[..self.pending.unwrap_or(0)]
    }

    pub(crate) fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.rx[..self.pending.unwrap_or(0)]
    }

    /// What the check of the received frame found.
    pub(crate) fn fetched(&self) -> Option<Fetched> {
        self.fetched
    }

    /// Checks the `len` bytes in `rx` (their checksums, unless the host
    /// vouches for them), and makes them the received frame if they pass;
    /// the reason if not.
    fn check(&mut self, len: usize, vouched: bool) -> Result<(), wire::Malformed> {
        let frame = &self.rx[..len];
        let (eth, packet) = wire::parse_vouched(frame, vouched)?;
        let at = |part: &[u8]| part.as_ptr() as usize - frame.as_ptr() as usize;
        let summary = match packet {
            Packet::Arp(arp) => Summary::Arp(arp),
            Packet::Ipv4(p) => Summary::Ip {
                src: IpAddr::V4(p.src),
                upper: Some(p.protocol),
                fragment: p.fragment,
                extensions: false,
                at: at(p.payload),
                len: p.payload.len(),
            },
            Packet::Ipv6(p) => {
                let (upper, data, fragment) = wire::ipv6_upper_layer(&p);
                Summary::Ip {
                    src: IpAddr::V6(p.src),
                    upper,
                    fragment,
                    extensions: upper != Some(p.next_header),
                    at: if upper.is_some() { at(data) } else { 0 },
                    len: data.len(),
                }
            }
            Packet::Other => Summary::Other,
        };
        self.fetched = Some(Fetched { dst: eth.dst, src: eth.src, summary });
        self.pending = Some(len);
        Ok(())
    }

    /// Makes `frame` (a copy of one received and checked earlier) the
    /// received frame. Its checksum was checked then, or vouched for and
    /// perhaps left partial: it is not checked again.
    pub(crate) fn load(&mut self, frame: &[u8]) {
        let len = frame.len().min(self.rx.len());
        self.rx[..len].copy_from_slice(&frame[..len]);
        let _ = self.check(len, true);
    }

    /// Drops the received frame.
    pub(crate) fn skip(&mut self) {
        self.pending = None;
    }

    /// Puts a copy of the received frame, changed by `f`, before it;
    /// whether there was one to copy and `f` changed it (an unchanged
    /// copy is not put: to the engine it would be the frame twice).
    pub(crate) fn copy_before(&mut self, f: impl FnOnce(&mut [u8]) -> bool) -> bool {
        let Some(len) = self.pending.filter(|&len| len <= self.made.len()) else { return false };
        self.made[..len].copy_from_slice(&self.rx[..len]);
        if !f(&mut self.made[..len]) {
            return false;
        }
        self.made_len = Some(len);
        true
    }

    /// Forgets a made-up frame the engine did not take.
    pub(crate) fn forget_made(&mut self) {
        self.made_len = None;
    }

    /// Puts a made-up frame of `len` bytes (written by `f`) before the
    /// received one.
    pub(crate) fn make(&mut self, len: usize, f: impl FnOnce(&mut [u8])) {
        let len = len.min(self.made.len());
        f(&mut self.made[..len]);
        self.made_len = Some(len);
    }
}

/// What [`wire::parse`] found in a received frame, kept so that nothing
/// checks it twice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fetched {
    /// Ethernet destination and source.
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub summary: Summary,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Summary {
    Arp(wire::Arp),
    Ip {
        src: IpAddr,
        /// The protocol after any IPv6 extension headers (`None`: they run
        /// past the packet), whether one was a fragment header or the
        /// packet an IPv4 fragment, whether there were extension headers,
        /// and where the upper layer is in the frame.
        upper: Option<u8>,
        fragment: bool,
        extensions: bool,
        at: usize,
        len: usize,
    },
    Other,
}

/// The link and the interface, for one round of the driver.
pub(crate) struct Adapter<'a, N> {
    pub net: &'a mut N,
    pub link: &'a mut Link,
}

impl<N: Net> Adapter<'_, N> {
    /// Reads the next well-formed frame, counting and skipping malformed
    /// ones; whether there is one.
    pub(crate) fn fetch(&mut self) -> bool {
        if self.link.pending.is_some() {
            return true;
        }
        loop {
            let got = match self.net.try_recv_into(&mut self.link.rx) {
                Ok(got) => got,
                Err(e) => {
                    self.link.failed = Some(e);
                    return false;
                }
            };
            let Some((len, meta)) = got else { return false };
            self.link.stats.rx_frames += 1;
            // A frame longer than the MTU allows (or, with receive
            // offload, the largest segment) is malformed.
            if len > self.link.rx.len() {
                self.link.malformed("longer than the MTU");
                continue;
            }
            let vouched = meta.checksum_valid;
            if let Err(e) = self.link.check(len, vouched) {
                self.link.malformed(e);
                continue;
            }
            return true;
        }
    }

    /// Sends a frame of the stack's own (an answer the adapter gives
    /// without the engine), written by `f`.
    pub(crate) fn send(&mut self, len: usize, f: impl FnOnce(&mut [u8])) {
        match self.net.send(len, f) {
            Ok(()) => self.link.stats.tx_frames += 1,
            Err(_) => self.link.stats.tx_dropped += 1,
        }
    }
}

/// The largest frame the engine is told it may write with segmentation
/// offload: an IPv4 packet with its largest headers (60 bytes of IP, 60 of
/// TCP) then stays within the 65,535 bytes its length field holds.
const SEGMENTED_FRAME: usize = 14 + 65_535 - 120;

/// Leaves a TCP segment's checksum to the host, or fills it in where it
/// cannot be left (a frame with padding); other frames are left alone.
/// With `segment` (the segment size the engine asks for), a segment whose
/// payload is larger than it, or than the MTU (`max_frame`) allows, is
/// also left to the host to cut. `Err` for a frame longer than
/// `max_frame` that cannot be cut.
fn offload(frame: &mut [u8], segment: Option<u16>, max_frame: usize) -> Result<Option<PartialChecksum>, ()> {
    let Some((start, offset)) = wire::partial_tcp_checksum(frame) else {
        if frame.len() > max_frame {
            return Err(());
        }
        wire::fill_tcp_checksum(frame);
        return Ok(None);
    };
    let mut partial = PartialChecksum::new(start, offset);
    if let Some(mss) = segment {
        // `partial_tcp_checksum` found a whole TCP header at `start`.
        let tcp_end = start as usize + (frame[start as usize + 12] >> 4) as usize * 4;
        let payload = frame.len().saturating_sub(tcp_end);
        let fits = max_frame.saturating_sub(tcp_end).min(mss as usize);
        if payload > fits {
            if fits == 0 {
                return Err(());
            }
            partial.segment = fits as u16;
        }
    }
    if partial.segment == 0 && frame.len() > max_frame {
        return Err(());
    }
    Ok(Some(partial))
}

/// Sends `len` bytes of the payload of TCP segment `frame` from `off`
/// as a segment of its own ([`crate::conns::piece`]), its checksum left to
/// the host or filled here, cut by the host as the whole would have been.
#[allow(clippy::too_many_arguments)]
fn send_piece<N: Net>(
    net: &mut N,
    frame: &mut [u8],
    header: usize,
    off: u32,
    len: u32,
    segment: Option<u16>,
    max_frame: usize,
    stats: &mut Stats,
) {
    let offloading = net.checksum_offload();
    let mut sent_whole = true;
    let sent = net.send_partial(header + len as usize, |buf| {
        let mut partial = None;
        match crate::conns::piece(frame, header, off, len, buf) {
            Some(_) if offloading => match offload(buf, segment, max_frame) {
                Ok(p) => partial = p,
                Err(()) => {
                    sent_whole = false;
                    buf.fill(0);
                }
            },
            Some(_) => {
                wire::fill_tcp_checksum(buf);
            }
            None => {
                sent_whole = false;
                buf.fill(0);
            }
        }
        ((), partial)
    });
    match sent {
        Ok(()) if sent_whole => stats.tx_frames += 1,
        _ => stats.tx_dropped += 1,
    }
}

pub(crate) struct Rx<'a>(&'a [u8]);

pub(crate) struct Tx<'a, N> {
    net: &'a mut N,
    /// The largest frame sent whole.
    max_frame: usize,
    /// The payload of each segment the interface is to cut the frame's
    /// TCP segment into, as the engine asks (`PacketMeta`).
    segment: Option<u16>,
    scratch: &'a mut [u8],
    stats: &'a mut Stats,
    conns: &'a mut Conns,
    neighbors: &'a mut Neighbors,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<N: Net> phy::TxToken for Tx<'_, N> {
    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.segment = meta.segmentation_offload_size.map(|s| s.get());
    }

    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Tx { net, max_frame, segment, scratch, stats, conns, neighbors } = self;
        let now = crate::now();
        if conns.replaying > 0 || conns.sacked.len() > 0 {
            // A handshake waits for the engine's SYN-ACK, which must not
            // go out, or a peer holds data the engine may send again:
            // frames are written aside and sent after a look.
            let len = len.min(scratch.len());
            let frame = &mut scratch[..len];
            let r = f(frame);
            neighbors.outgoing(frame, now);
            let len = match conns.outgoing(frame, now) {
                Outgoing::Send => len,
                Outgoing::AckOnly { len } => {
                    stats.sacked_unsent += 1;
                    len
                }
                Outgoing::Keep => return r,
                Outgoing::Sacked => {
                    stats.sacked_unsent += 1;
                    return r;
                }
                Outgoing::Runs { header, count } => {
                    stats.sacked_unsent += 1;
                    for &(off, len) in &conns.runs[..count] {
                        send_piece(net, frame, header, off, len, segment, max_frame, stats);
                    }
                    return r;
                }
            };
            let frame = &mut frame[..len];
            let sent = if net.checksum_offload() {
                match offload(frame, segment, max_frame) {
                    Ok(partial) => net.send_partial(frame.len(), |buf| {
                        buf.copy_from_slice(frame);
                        ((), partial)
                    }),
                    Err(()) => Err(net::Error::TooLarge),
                }
            } else {
                wire::fill_tcp_checksum(frame);
                net.send(frame.len(), |buf| buf.copy_from_slice(frame))
            };
            match sent {
                Ok(()) => stats.tx_frames += 1,
                Err(_) => stats.tx_dropped += 1,
            }
            return r;
        }
        // The engine never asks for more than the MTU it was given; a
        // frame the interface cannot take now is dropped and counted, as a
        // full transmit queue drops it on any host (TCP retransmits). The
        // engine still needs the closure's result: if the interface never
        // ran it, it runs on scratch space.
        let mut f = Some(f);
        let mut out = None;
        let mut unfit = false;
        // With the host completing checksums, the segment's bytes are not
        // read again here: only its pseudo-header is summed.
        let offloading = net.checksum_offload();
        let sent = net.send_partial(len, |buf| {
            let mut partial = None;
            if let Some(f) = f.take() {
                out = Some(f(buf));
                neighbors.outgoing(buf, now);
                conns.outgoing(buf, now);
                if offloading {
                    match offload(buf, segment, max_frame) {
                        Ok(p) => partial = p,
                        Err(()) => {
                            // Longer than the MTU and not a TCP segment the
                            // host can cut (the engine writes none such):
                            // without a segment size the interface refuses
                            // it, and it is zeroed in case one would not.
                            unfit = true;
                            buf.fill(0);
                        }
                    }
                } else {
                    wire::fill_tcp_checksum(buf);
                }
            }
            ((), partial)
        });
        match sent {
            Ok(()) if !unfit => stats.tx_frames += 1,
            _ => stats.tx_dropped += 1,
        }
        match (out, f) {
            (Some(r), _) => r,
            (None, Some(f)) => {
                let len = len.min(scratch.len());
                f(&mut scratch[..len])
            }
            // `f` is taken only where `out` is set.
            (None, None) => unreachable!(),
        }
    }
}

impl<N> Adapter<'_, N> {
    fn tx(&mut self) -> Tx<'_, N> {
        let Link { max_frame, scratch, stats, conns, neighbors, .. } = &mut *self.link;
        Tx { net: &mut *self.net, max_frame: *max_frame, segment: None, scratch, stats, conns, neighbors }
    }
}

impl<N: Net> phy::Device for Adapter<'_, N> {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(Rx<'_>, Tx<'_, N>)> {
        let Link { rx, made, made_len, pending, max_frame, scratch, stats, conns, neighbors, .. } = &mut *self.link;
        let frame = match made_len.take() {
            Some(len) => &made[..len],
            None => &rx[..pending.take()?],
        };
        let max_frame = *max_frame;
        Some((Rx(frame), Tx { net: &mut *self.net, max_frame, segment: None, scratch, stats, conns, neighbors }))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Tx<'_, N>> {
        Some(self.tx())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.link.max_frame;
        if self.link.segmented_frame > self.link.max_frame {
            // The engine writes TCP segments of up to this size and names
            // the segment size they are to be cut to (`Tx::set_meta`).
            let size = core::num::NonZeroUsize::new(self.link.segmented_frame);
            caps.segmentation.tcpv4 = size;
            caps.segmentation.tcpv6 = size;
        }
        // Received frames were checked by `wire::parse`: the engine only
        // computes checksums of what it sends, TCP's excepted: the
        // transmit token fills those in after the adapter's last change
        // to the segment, faster than the engine would.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.tcp = Checksum::None;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// An Ethernet frame holding an IPv4 TCP segment with `options` bytes
    /// of TCP options and `payload` bytes of data.
    fn segment(options: usize, payload: usize) -> Vec<u8> {
        let tcp_len = 20 + options;
        let total = 20 + tcp_len + payload;
        let mut f = vec![0u8; 14 + total];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[14 + 9] = 6;
        f[14 + 12..14 + 20].copy_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
        f[34 + 12] = (tcp_len as u8 / 4) << 4;
        f
    }

    #[test]
    fn a_segment_larger_than_the_mtu_or_the_peer_takes_is_left_to_the_host_to_cut() {
        let max_frame = 1514;
        // Up to the MTU, and no larger than the peer's MSS: sent whole.
        let mut f = segment(0, 1460);
        assert_eq!(offload(&mut f, Some(1460), max_frame), Ok(Some(PartialChecksum::new(34, 16))));
        // Larger: cut to what a frame holds, headers and options counted.
        let mut f = segment(12, 64_000);
        let p = offload(&mut f, Some(1460), max_frame).unwrap().unwrap();
        assert_eq!((p.start, p.offset, p.segment), (34, 16, 1448));
        // A peer taking less than the MTU allows: cut to its MSS.
        let mut f = segment(0, 3000);
        assert_eq!(offload(&mut f, Some(536), max_frame).unwrap().unwrap().segment, 536);
        // A segment within the peer's MSS but past the MTU is still cut.
        let mut f = segment(0, 8000);
        assert_eq!(offload(&mut f, Some(8960), max_frame).unwrap().unwrap().segment, 1460);
        // Without segmentation a frame past the MTU cannot go.
        let mut f = segment(0, 3000);
        assert_eq!(offload(&mut f, None, max_frame), Err(()));
        // Nor can one that is not TCP.
        let mut f = segment(0, 3000);
        f[14 + 9] = 17;
        assert_eq!(offload(&mut f, Some(1460), max_frame), Err(()));
        // Headers that leave no room for data in a frame.
        let mut f = segment(40, 3000);
        assert_eq!(offload(&mut f, Some(1460), 14 + 20 + 60), Err(()));
    }
}
