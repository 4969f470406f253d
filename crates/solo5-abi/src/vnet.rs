//! Ours: the virtio-net header before each frame on a tap opened with
//! `IFF_VNET_HDR` (`struct virtio_net_hdr`, without `num_buffers`), as our
//! tenders and the unix target write it and our spt guests where their
//! tender grants one (`mft::MftEntry::net_vnet_hdr`).

/// Its size.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the host is to complete a checksum
/// (`csum_start`, `csum_offset`).
pub const VNET_F_NEEDS_CSUM: u8 = 1;

/// Linux's `TUNSETOFFLOAD` ioctl, which says what a tap with virtio-net
/// headers may hand over (by default: whole frames, complete checksums).
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// The `TUNSETOFFLOAD` flags of receive offload: `TUN_F_CSUM` (partial
/// checksums), `TUN_F_TSO4` and `TUN_F_TSO6` (uncut TCP segments).
pub const RX_OFFLOAD_FLAGS: u64 = 0x01 | 0x02 | 0x04;

/// `VIRTIO_NET_HDR_F_DATA_VALID`: the host checked the frame's checksum.
pub const VNET_F_DATA_VALID: u8 = 2;

/// The largest frame a host with receive offload hands over (one TCP
/// segment of up to 64 KiB, as [`VNET_MAX_SEGMENTED`] is sent).
pub const VNET_MAX_RECEIVED: usize = VNET_MAX_SEGMENTED;

/// Whether the host vouches for the checksums of the frame behind a
/// received header with `flags` (its first byte): it checked them ([`VNET_F_DATA_VALID`]), or it
/// left the frame's one checksum partial, as a sender on the host itself
/// does ([`VNET_F_NEEDS_CSUM`]; a segment it did not cut, `gso_type` other
/// than none, always carries it). Linux's tap sets nothing else when asked
/// for receive offload (`TUNSETOFFLOAD`), and without it, nothing at all.
pub const fn vnet_checksum_valid(flags: u8) -> bool {
    flags & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) != 0
}

/// The header of a frame sent without segmentation offload: `partial` is
/// a checksum the host is to complete, as (`csum_start`, `csum_offset`).
/// Little-endian, the tap's byte order on x86.
pub const fn vnet_hdr(partial: Option<(u16, u16)>) -> [u8; VNET_HDR_LEN] {
    let mut hdr = [0; VNET_HDR_LEN];
    if let Some((start, offset)) = partial {
        let (s, o) = (start.to_le_bytes(), offset.to_le_bytes());
        // flags, gso_type (none), hdr_len, gso_size, csum_start, csum_offset.
        hdr = [VNET_F_NEEDS_CSUM, 0, 0, 0, 0, 0, s[0], s[1], o[0], o[1]];
    }
    hdr
}

/// `VIRTIO_NET_HDR_GSO_TCPV4`: the frame is one TCPv4 segment the host
/// cuts into segments of `gso_size` payload bytes.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VNET_GSO_TCPV6: u8 = 4;

/// The largest frame sent with segmentation offload: an IP packet of at
/// most 64 KiB with its Ethernet header.
pub const VNET_MAX_SEGMENTED: usize = 14 + 65_535;

/// The fewest payload bytes a segment may be asked to hold (segmentation
/// offload). The host cuts a frame into as many segments as the size
/// asks, in its own kernel, on the guest's behalf: one 64 KiB frame cut
/// into segments of 1 byte is 65,535 frames of 55 bytes, 3.6 MB of work
/// for one write. At 32, the host makes at most 2,048 segments of a frame
/// and a little over twice its bytes. No TCP of ours asks for less:
/// smoltcp takes a peer's MSS as 48 bytes at least, 36 with its
/// timestamps.
pub const VNET_MIN_SEGMENT: u16 = 32;

/// The header of a frame sent with a checksum to complete at `partial`
/// (`csum_start`, `csum_offset`) and, if `segment` is not 0, segmentation
/// offload: the frame holds one TCP segment (its header at `csum_start`),
/// which the host cuts into segments of `segment` payload bytes. The
/// segmentation type and the headers' length come from the frame (its
/// EtherType and the TCP header's data offset); `None` if the frame does
/// not hold them: an IPv4 packet (its header's own length) or an IPv6 one
/// (without extension headers) of TCP, the checksum at the TCP header's
/// checksum field, the TCP header whole; `None` too for a segment size
/// below [`VNET_MIN_SEGMENT`]. A tender hands the host only
/// headers that say what the frame is, whatever its guest asks: Linux
/// checks them too (`virtio_net_hdr_to_skb`), but kernels before 2024
/// let some lies reach warnings that a host set to panic on a warning
/// would panic on.
pub fn vnet_hdr_segmented(frame: &[u8], partial: (u16, u16), segment: u16) -> Option<[u8; VNET_HDR_LEN]> {
    let mut hdr = vnet_hdr(Some(partial));
    if segment == 0 {
        return Some(hdr);
    }
    if segment < VNET_MIN_SEGMENT {
        return None;
    }
    // The IP header's end, which must be the TCP header's start, and its
    // protocol (next header), which must be TCP.
    let (gso_type, ip_end, proto) = match frame.get(12..14)? {
        [0x08, 0x00] => (VNET_GSO_TCPV4, 14 + (*frame.get(14)? & 0xf) as usize * 4, *frame.get(23)?),
        [0x86, 0xdd] => (VNET_GSO_TCPV6, 54, *frame.get(20)?),
        _ => return None,
    };
    let start = partial.0 as usize;
    if proto != 6 || start != ip_end || partial.1 != 16 || ip_end < 34 {
        return None;
    }
    let data_offset = (*frame.get(start + 12)? >> 4) as usize * 4;
    let hdr_len = u16::try_from(start + data_offset).ok()?;
    if data_offset < 20 || hdr_len as usize > frame.len() {
        return None;
    }
    hdr[1] = gso_type;
    hdr[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    hdr[4..6].copy_from_slice(&segment.to_le_bytes());
    Some(hdr)
}

/// The header of a frame sent with `partial` (`csum_start`,
/// `csum_offset` and a segment size, or 0), or without anything left to
/// the host: [`vnet_hdr`] or [`vnet_hdr_segmented`].
pub fn vnet_hdr_for(frame: &[u8], partial: Option<(u16, u16, u16)>) -> Option<[u8; VNET_HDR_LEN]> {
    match partial {
        Some((start, offset, segment)) => vnet_hdr_segmented(frame, (start, offset), segment),
        None => Some(vnet_hdr(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_header_vouches_for_checksums_by_its_flags() {
        assert!(!vnet_checksum_valid(0));
        assert!(vnet_checksum_valid(vnet_hdr(Some((34, 16)))[0]));
        assert!(vnet_checksum_valid(VNET_F_DATA_VALID));
        // Flags this side never set say nothing.
        assert!(!vnet_checksum_valid(0x80));
    }

    #[test]
    fn a_segmented_header_takes_its_type_and_length_from_the_frame() {
        // Ethernet, IPv4 (20 bytes), TCP with 12 bytes of options.
        let mut frame = [0u8; 14 + 20 + 32 + 100];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        (frame[14], frame[23], frame[20]) = (0x45, 6, 6);
        frame[34 + 12] = 8 << 4;
        let hdr = vnet_hdr_segmented(&frame, (34, 16), 1448).unwrap();
        assert_eq!(hdr, [VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), VNET_MIN_SEGMENT).unwrap()[4], 32);
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), VNET_MIN_SEGMENT - 1), None, "segments too small");
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 1), None, "segments too small");
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 0), Some(vnet_hdr(Some((34, 16)))));
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        frame[54 + 12] = 5 << 4;
        assert_eq!(vnet_hdr_segmented(&frame, (54, 16), 1428).unwrap()[1], VNET_GSO_TCPV6);
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 1448), None, "not IP");
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 1448).map(|_| ()), Some(()));
        assert_eq!(vnet_hdr_segmented(&frame[..60], (34, 16), 1448), None, "headers past the end");
        assert_eq!(vnet_hdr_segmented(&frame, (u16::MAX, 16), 1448), None, "start past the end");
        frame[34 + 12] = 4 << 4;
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 1448), None, "a data offset below 5 words");
        frame[34 + 12] = 5 << 4;
        // Headers that do not say what the frame is.
        assert_eq!(vnet_hdr_segmented(&frame, (0, 16), 1448), None, "the checksum before the TCP header");
        assert_eq!(vnet_hdr_segmented(&frame, (34, 6), 1448), None, "a checksum field not TCP's");
        (frame[14], frame[38 + 12]) = (0x46, 5 << 4);
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 1448), None, "the TCP header inside IPv4 options");
        assert!(vnet_hdr_segmented(&frame, (38, 16), 1448).is_some(), "after them");
        frame[14] = 0x45;
        frame[23] = 17;
        assert_eq!(vnet_hdr_segmented(&frame, (34, 16), 1448), None, "UDP");
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        frame[20] = 0;
        assert_eq!(vnet_hdr_segmented(&frame, (54, 16), 1448), None, "an IPv6 extension header");
    }
}
