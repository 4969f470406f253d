//! Ours: the virtio-net header before each frame on a tap opened with
//! `IFF_VNET_HDR` (`struct virtio_net_hdr`, without `num_buffers`), as our
//! tenders and the unix target write it and our spt guests where their
//! tender grants one (`mft::MftEntry::net_vnet_hdr`).

/// Its size.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the host is to complete a checksum
/// (`csum_start`, `csum_offset`).
pub const VNET_F_NEEDS_CSUM: u8 = 1;

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
