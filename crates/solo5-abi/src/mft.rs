//! The application manifest (`include/mft_abi.h`).
//!
//! A Solo5 executable declares the devices it uses in a manifest carried in
//! its MFT1 ELF note. The tender validates it ([`validate`]), attaches a host
//! resource to every entry, and hands a copy with the host details filled in
//! to the guest, whose handles are manifest indices.
//!
//! [`read`] and [`validate`] treat their input as untrusted and never
//! panic. [`read`] copies the manifest out of bytes of any alignment (a
//! note at any offset of an executable, as Solo5 accepts it); [`validate`]
//! checks it in place and needs bytes aligned for [`MftEntry`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MFT_VERSION`.
pub const MFT_VERSION: u32 = 1;
/// `MFT_MAX_ENTRIES`, the mandatory first entry included.
pub const MFT_MAX_ENTRIES: u32 = 64;
/// `MFT_NAME_SIZE`: bytes of a name, NUL included.
pub const MFT_NAME_SIZE: usize = 68;
/// Ours: the bit of a block entry's flags that grants flushes
/// ([`MftEntry::block_flush`]).
pub const BLOCK_FLUSH_GRANTED: u8 = 1;
/// Ours: the bit of a block entry's flags that grants runs
/// ([`MftEntry::block_runs`]).
pub const BLOCK_RUNS_GRANTED: u8 = 2;
/// Ours: the bit of a block entry's flags that grants hvt's write-and-
/// sync port ([`MftEntry::block_write_sync`]).
pub const BLOCK_WRITE_SYNC_GRANTED: u8 = 4;
/// Ours: the bit of a network entry's flags by which the guest's image
/// says it reads and writes frames behind a virtio-net header where its
/// tender grants one ([`MftEntry::net_vnet_hdr`]).
pub const NET_VNET_HDR_WANTED: u8 = 1;
/// Ours: the bit of a network entry's flags by which the tender grants the
/// header ([`MftEntry::net_vnet_hdr`]).
pub const NET_VNET_HDR_GRANTED: u8 = 2;
/// Ours: the bit of a network entry's flags by which our spt tender lets
/// the guest ask for receive offload ([`MftEntry::net_rx_offload`]).
pub const NET_RX_OFFLOAD_GRANTED: u8 = 4;
/// Ours: the most bytes one call through a descriptor granted runs may
/// carry.
pub const BLOCK_RUN_MAX: u64 = 1 << 20;
/// `MFT_NAME_MAX`: the longest name.
pub const MFT_NAME_MAX: usize = MFT_NAME_SIZE - 1;
/// Size of the manifest header (`version`, `entries`).
pub const MFT_HEADER_SIZE: usize = 8;
/// Size of one [`MftEntry`].
pub const MFT_ENTRY_SIZE: usize = 104;

/// The size in bytes of a manifest of `entries` entries.
pub const fn manifest_size(entries: usize) -> usize {
    MFT_HEADER_SIZE + MFT_ENTRY_SIZE * entries
}

/// `mft_type_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MftType {
    /// `MFT_DEV_BLOCK_BASIC`: a block device.
    BlockBasic = 1,
    /// `MFT_DEV_NET_BASIC`: a network interface.
    NetBasic = 2,
    /// `MFT_RESERVED_FIRST`: the mandatory first entry.
    ReservedFirst = 0x4000_0000,
}

impl MftType {
    /// Decodes a raw type; `None` if it is not one Solo5 v0.12.1 defines.
    pub const fn from_raw(raw: u32) -> Option<MftType> {
        match raw {
            1 => Some(MftType::BlockBasic),
            2 => Some(MftType::NetBasic),
            0x4000_0000 => Some(MftType::ReservedFirst),
            _ => None,
        }
    }

    /// The name Solo5 prints for a raw type (`mft_type_to_string`).
    pub const fn name_of(raw: u32) -> &'static str {
        match MftType::from_raw(raw) {
            Some(MftType::BlockBasic) => "BLOCK_BASIC",
            Some(MftType::NetBasic) => "NET_BASIC",
            Some(MftType::ReservedFirst) => "RESERVED_FIRST",
            None => "<undefined type>",
        }
    }

    /// Parses the name used in manifest JSON (`"BLOCK_BASIC"`, `"NET_BASIC"`).
    pub fn from_name(name: &str) -> Option<MftType> {
        match name {
            "BLOCK_BASIC" => Some(MftType::BlockBasic),
            "NET_BASIC" => Some(MftType::NetBasic),
            _ => None,
        }
    }
}

/// `struct mft_entry`. The C unions `u` and `b` are kept as raw bytes with
/// typed accessors, so that any byte pattern is a valid value.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MftEntry {
    /// NUL-terminated, alphanumeric name.
    pub name: [u8; MFT_NAME_SIZE],
    /// Raw [`MftType`].
    pub mtype: u32,
    /// `union { struct mft_block_basic; struct mft_net_basic; } u`.
    pub u: [u8; 16],
    /// `union { int hostfd; void *data; } b`.
    pub b: u64,
    /// `bool attached`.
    pub attached: u8,
    /// Padding to 104 bytes.
    pub _pad: [u8; 7],
}

impl core::fmt::Debug for MftEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MftEntry")
            .field("name", &self.name_str())
            .field("type", &MftType::name_of(self.mtype))
            .field("attached", &self.attached)
            .finish()
    }
}

impl MftEntry {
    /// An all-zero entry.
    pub const ZERO: MftEntry =
        MftEntry { name: [0; MFT_NAME_SIZE], mtype: 0, u: [0; 16], b: 0, attached: 0, _pad: [0; 7] };

    /// The mandatory first entry.
    pub const fn reserved_first() -> MftEntry {
        let mut e = MftEntry::ZERO;
        e.mtype = MftType::ReservedFirst as u32;
        e
    }

    /// A device entry, as a guest declares it. Panics (at compile time, in a
    /// `const`) if `name` is empty, longer than [`MFT_NAME_MAX`] or not
    /// alphanumeric, the rules `solo5-elftool` and the tenders enforce.
    pub const fn device(name: &str, mtype: MftType) -> MftEntry {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty(), "a Solo5 device name may not be empty");
        assert!(bytes.len() <= MFT_NAME_MAX, "a Solo5 device name has at most 67 characters");
        let mut e = MftEntry::ZERO;
        let mut i = 0;
        while i < bytes.len() {
            assert!(bytes[i].is_ascii_alphanumeric(), "a Solo5 device name must be alphanumeric");
            e.name[i] = bytes[i];
            i += 1;
        }
        e.mtype = mtype as u32;
        e
    }

    /// The name up to its NUL (lossy: bytes that are not UTF-8 give `"?"`).
    pub fn name_str(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(MFT_NAME_SIZE);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// Whether the name equals `name` (`strncmp(.., MFT_NAME_SIZE)`).
    pub fn name_is(&self, name: &str) -> bool {
        name.len() < MFT_NAME_SIZE && self.name_str() == name
    }

    /// `u.block_basic.capacity`, in bytes.
    pub fn block_capacity(&self) -> u64 {
        u64::from_le_bytes([self.u[0], self.u[1], self.u[2], self.u[3], self.u[4], self.u[5], self.u[6], self.u[7]])
    }

    /// `u.block_basic.block_size`.
    pub fn block_size(&self) -> u16 {
        u16::from_le_bytes([self.u[8], self.u[9]])
    }

    /// Sets `u.block_basic`.
    pub fn set_block_basic(&mut self, capacity: u64, block_size: u16) {
        self.u[..8].copy_from_slice(&capacity.to_le_bytes());
        self.u[8..10].copy_from_slice(&block_size.to_le_bytes());
    }

    /// Ours: the flush grant of a block entry, in bytes of `u` that
    /// `struct mft_block_basic` leaves as padding (10: flags, bit 0 the
    /// grant; 12..16: a descriptor). Our tenders grant flushes for a device
    /// attached with `--block-dsync:`; the descriptor is the one an spt
    /// guest then writes through and syncs (`fdatasync`), opened without
    /// `O_DSYNC`. Solo5's tenders leave these bytes as the guest's image
    /// has them: zero, no grant.
    pub fn block_flush(&self) -> Option<i32> {
        (self.u[10] & BLOCK_FLUSH_GRANTED != 0)
            .then(|| i32::from_le_bytes([self.u[12], self.u[13], self.u[14], self.u[15]]))
    }

    /// Ours: whether the device's descriptors (the manifest's, and the
    /// one of a flush grant) take runs: one `pread64` or `pwrite64` of 2^k
    /// whole blocks, at most [`BLOCK_RUN_MAX`] bytes, where Solo5's seccomp
    /// filter allows one block a call (flags bit 1). Our tenders grant it
    /// for every block device: an spt guest then reads a 1 MiB value in
    /// one call instead of 2,048. (hvt's block hypercalls take any length
    /// within the device on Solo5's tender and ours alike.)
    pub fn block_runs(&self) -> bool {
        self.u[10] & BLOCK_RUNS_GRANTED != 0
    }

    /// Sets or clears the grant of runs ([`MftEntry::block_runs`]).
    pub fn set_block_runs(&mut self, runs: bool) {
        self.u[10] = (self.u[10] & !BLOCK_RUNS_GRANTED) | if runs { BLOCK_RUNS_GRANTED } else { 0 };
    }

    /// Ours: whether the hvt tender takes a write and a sync of this
    /// device in one exit ([`crate::hvt::BLOCK_WRITE_SYNC_PIO`]; flags bit
    /// 2). Our tenders grant it with the flush: a commit that ends with a
    /// write and a flush then costs the guest one exit, not two.
    pub fn block_write_sync(&self) -> bool {
        self.u[10] & BLOCK_WRITE_SYNC_GRANTED != 0 && self.block_flush().is_some()
    }

    /// Sets or clears the flush grant ([`MftEntry::block_flush`]) and,
    /// with it, the grant of the write-and-sync port
    /// ([`MftEntry::block_write_sync`]); the grant of runs is left as it
    /// is.
    pub fn set_block_flush(&mut self, fd: Option<i32>) {
        let runs = self.u[10] & BLOCK_RUNS_GRANTED;
        self.u[10] = runs | if fd.is_some() { BLOCK_FLUSH_GRANTED | BLOCK_WRITE_SYNC_GRANTED } else { 0 };
        self.u[11] = 0;
        self.u[12..16].copy_from_slice(&fd.unwrap_or(0).to_le_bytes());
    }

    /// Ours: this entry, as an image that reads and writes its frames
    /// behind a virtio-net header where granted declares it (a network
    /// entry's flags, byte 8 of `u`, which `struct mft_net_basic` leaves as
    /// padding: bit 0).
    pub const fn wanting_vnet_hdr(mut self) -> MftEntry {
        self.u[8] |= NET_VNET_HDR_WANTED;
        self
    }

    /// Ours: whether the image asks for the header
    /// ([`MftEntry::wanting_vnet_hdr`]).
    pub fn net_vnet_hdr_wanted(&self) -> bool {
        self.u[8] & NET_VNET_HDR_WANTED != 0
    }

    /// Ours: whether the tender grants the header (bit 1 of byte 8): the
    /// descriptor of an spt guest is then a tap opened with
    /// `IFF_VNET_HDR`, and every frame read or written through it is
    /// preceded by a 10-byte `struct virtio_net_hdr`, so that the guest may
    /// leave TCP and UDP checksums for the host's kernel to complete. The
    /// host is asked for no offload the other way, unless the guest asks
    /// where granted ([`MftEntry::net_rx_offload`]): frames it sends carry
    /// complete checksums and are no larger than the MTU. Our spt tender
    /// grants it to an image that asks; Solo5's tenders, and our hvt
    /// tender, which reads and writes the tap itself, leave the bit clear.
    pub fn net_vnet_hdr(&self) -> bool {
        self.u[8] & NET_VNET_HDR_GRANTED != 0
    }

    /// Sets or clears the grant of the header ([`MftEntry::net_vnet_hdr`]).
    pub fn set_net_vnet_hdr(&mut self, granted: bool) {
        self.u[8] = (self.u[8] & !NET_VNET_HDR_GRANTED) | if granted { NET_VNET_HDR_GRANTED } else { 0 };
    }

    /// Ours: whether the tender lets an spt guest ask for receive offload
    /// on the tap it was granted with a virtio-net header (bit 2 of byte 8;
    /// only with [`MftEntry::net_vnet_hdr`]): the seccomp filter then
    /// allows `ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 |
    /// TUN_F_TSO6)` on the descriptor, and nothing else of `ioctl`. From the
    /// call on, the host may hand the guest one TCP segment of up to 64 KiB
    /// where it would have cut it to the MTU, with a partial checksum the
    /// header marks (`VIRTIO_NET_HDR_F_NEEDS_CSUM`), as a virtio-net guest
    /// gets once it negotiated `GUEST_TSO4`, `GUEST_TSO6` and `GUEST_CSUM`.
    pub fn net_rx_offload(&self) -> bool {
        self.u[8] & NET_RX_OFFLOAD_GRANTED != 0 && self.net_vnet_hdr()
    }

    /// Sets or clears the grant of receive offload
    /// ([`MftEntry::net_rx_offload`]).
    pub fn set_net_rx_offload(&mut self, granted: bool) {
        self.u[8] = (self.u[8] & !NET_RX_OFFLOAD_GRANTED) | if granted { NET_RX_OFFLOAD_GRANTED } else { 0 };
    }

    /// `u.net_basic.mac`.
    pub fn net_mac(&self) -> [u8; 6] {
        [self.u[0], self.u[1], self.u[2], self.u[3], self.u[4], self.u[5]]
    }

    /// `u.net_basic.mtu`.
    pub fn net_mtu(&self) -> u16 {
        u16::from_le_bytes([self.u[6], self.u[7]])
    }

    /// Sets `u.net_basic`.
    pub fn set_net_basic(&mut self, mac: [u8; 6], mtu: u16) {
        self.u[..6].copy_from_slice(&mac);
        self.u[6..8].copy_from_slice(&mtu.to_le_bytes());
    }

    /// `b.hostfd`.
    pub fn hostfd(&self) -> i32 {
        self.b as u32 as i32
    }

    /// Sets `b.hostfd` (the upper half of `b` is cleared).
    pub fn set_hostfd(&mut self, fd: i32) {
        self.b = fd as u32 as u64;
    }
}

/// The header of `struct mft`; the entries follow it.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MftHeader {
    /// [`MFT_VERSION`].
    pub version: u32,
    /// Number of entries.
    pub entries: u32,
}

/// `struct mft` with `N` entries, as laid out in a guest image.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Manifest<const N: usize> {
    /// Version and count.
    pub header: MftHeader,
    /// The entries, the reserved first one included.
    pub e: [MftEntry; N],
}

impl<const N: usize> Manifest<N> {
    /// A manifest of the given entries; `e[0]` must be
    /// [`MftEntry::reserved_first`].
    pub const fn new(e: [MftEntry; N]) -> Manifest<N> {
        assert!(N >= 1 && N <= MFT_MAX_ENTRIES as usize, "a Solo5 manifest holds 1 to 64 entries");
        assert!(e[0].mtype == MftType::ReservedFirst as u32, "e[0] must be the reserved entry");
        Manifest { header: MftHeader { version: MFT_VERSION, entries: N as u32 }, e }
    }
}

/// Why [`validate`] rejected a manifest. The tenders print one message for
/// all of them ("Solo5 manifest is invalid"), as Solo5 does; the variants say
/// which rule failed, for tools and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MftError {
    /// Fewer bytes than the header.
    TooShort,
    /// `version` is not [`MFT_VERSION`].
    BadVersion(u32),
    /// More than [`MFT_MAX_ENTRIES`] entries.
    TooManyEntries(u32),
    /// The size is not exactly header + entries.
    SizeMismatch {
        /// The size of the note's content.
        size: usize,
        /// The size its entry count implies.
        expected: usize,
    },
    /// No entries, or `e[0]` is not an unnamed `RESERVED_FIRST`.
    BadFirstEntry,
    /// An entry's name is not NUL-terminated.
    UnterminatedName(u32),
    /// An entry is already marked attached.
    Attached(u32),
    /// [`validate`] was given entries not aligned for [`MftEntry`] in
    /// memory; [`read`] copies them out of bytes of any alignment.
    Misaligned,
}

impl core::fmt::Display for MftError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MftError::TooShort => write!(f, "manifest shorter than its header"),
            MftError::BadVersion(v) => write!(f, "manifest version {v}, expected {MFT_VERSION}"),
            MftError::TooManyEntries(n) => {
                write!(f, "{n} manifest entries, at most {MFT_MAX_ENTRIES}")
            }
            MftError::SizeMismatch { size, expected } => {
                write!(f, "manifest is {size} bytes, its entry count needs {expected}")
            }
            MftError::BadFirstEntry => write!(f, "first manifest entry is not RESERVED_FIRST"),
            MftError::UnterminatedName(i) => write!(f, "manifest entry {i} has an unterminated name"),
            MftError::Attached(i) => write!(f, "manifest entry {i} is marked attached"),
            MftError::Misaligned => {
                write!(f, "manifest entries are not 8-byte aligned in memory (read them with mft::read)")
            }
        }
    }
}

/// The header rules of `mft_validate`, on a copy of the header (any
/// alignment): version, entry count, and a size of exactly header plus
/// entries.
fn check_header(bytes: &[u8]) -> Result<MftHeader, MftError> {
    let (header, _) = MftHeader::read_from_prefix(bytes).map_err(|_| MftError::TooShort)?;
    if header.version != MFT_VERSION {
        return Err(MftError::BadVersion(header.version));
    }
    if header.entries > MFT_MAX_ENTRIES {
        return Err(MftError::TooManyEntries(header.entries));
    }
    let expected = manifest_size(header.entries as usize);
    if bytes.len() != expected {
        return Err(MftError::SizeMismatch { size: bytes.len(), expected });
    }
    Ok(header)
}

/// The entry rules of `mft_validate`.
fn check_entries(entries: &[MftEntry]) -> Result<(), MftError> {
    match entries.first() {
        Some(e0) if e0.mtype == MftType::ReservedFirst as u32 && e0.name[0] == 0 => {}
        _ => return Err(MftError::BadFirstEntry),
    }
    for (i, e) in entries.iter().enumerate() {
        if e.name[MFT_NAME_MAX] != 0 {
            return Err(MftError::UnterminatedName(i as u32));
        }
        if e.attached != 0 {
            return Err(MftError::Attached(i as u32));
        }
    }
    Ok(())
}

/// `mft_validate` in place: checks an untrusted manifest and returns its
/// entries. The entries must be 8-byte aligned in memory
/// ([`MftError::Misaligned`] otherwise); bytes read from a file at an
/// arbitrary offset go through [`read`].
pub fn validate(bytes: &[u8]) -> Result<&[MftEntry], MftError> {
    check_header(bytes)?;
    // check_header proved bytes.len() == manifest_size(entries) >= the header.
    let entries = <[MftEntry]>::ref_from_bytes(&bytes[MFT_HEADER_SIZE..]).map_err(|_| MftError::Misaligned)?;
    check_entries(entries)?;
    Ok(entries)
}

/// A manifest copied out of untrusted bytes by [`read`].
#[derive(Clone, Copy)]
pub struct ManifestCopy {
    len: usize,
    e: [MftEntry; MFT_MAX_ENTRIES as usize],
}

impl ManifestCopy {
    /// The validated entries, the reserved first one included.
    pub fn entries(&self) -> &[MftEntry] {
        &self.e[..self.len]
    }
}

impl core::fmt::Debug for ManifestCopy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.entries()).finish()
    }
}

/// `mft_validate` on bytes of any alignment, such as an MFT1 note's content
/// where the executable placed it: the same rules, in the same order, as
/// [`validate`], on a copy of the entries.
pub fn read(bytes: &[u8]) -> Result<ManifestCopy, MftError> {
    let header = check_header(bytes)?;
    let mut copy = ManifestCopy { len: header.entries as usize, e: [MftEntry::ZERO; MFT_MAX_ENTRIES as usize] };
    for (e, raw) in copy.e.iter_mut().zip(bytes[MFT_HEADER_SIZE..].chunks_exact(MFT_ENTRY_SIZE)) {
        *e = MftEntry::read_from_bytes(raw).map_err(|_| MftError::TooShort)?;
    }
    check_entries(copy.entries())?;
    Ok(copy)
}

/// `mft_get_by_name`: the index of the entry named `name` of type `mtype`.
pub fn find_by_name(entries: &[MftEntry], name: &str, mtype: MftType) -> Option<usize> {
    entries.iter().position(|e| e.mtype == mtype as u32 && e.name_is(name))
}

/// `mft_get_by_index`: the entry at `index` if it has type `mtype`.
pub fn get_by_index(entries: &[MftEntry], index: u64, mtype: MftType) -> Option<&MftEntry> {
    let e = entries.get(usize::try_from(index).ok()?)?;
    (e.mtype == mtype as u32).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn entry_layout_matches_solo5() {
        assert_eq!(size_of::<MftEntry>(), 104);
        assert_eq!(core::mem::align_of::<MftEntry>(), 8);
        assert_eq!(offset_of!(MftEntry, mtype), 68);
        assert_eq!(offset_of!(MftEntry, u), 72);
        assert_eq!(offset_of!(MftEntry, b), 88);
        assert_eq!(offset_of!(MftEntry, attached), 96);
        assert_eq!(size_of::<MftHeader>(), 8);
        assert_eq!(size_of::<Manifest<2>>(), 8 + 2 * 104);
        assert_eq!(offset_of!(Manifest<2>, e), 8);
    }

    fn bytes_of<const N: usize>(m: &Manifest<N>) -> [u8; 1024] {
        let mut out = [0u8; 1024];
        out[..8].copy_from_slice(m.header.as_bytes());
        for (i, e) in m.e.iter().enumerate() {
            out[8 + i * 104..8 + (i + 1) * 104].copy_from_slice(e.as_bytes());
        }
        out
    }

    #[test]
    fn a_well_formed_manifest_validates() {
        let m = Manifest::new([
            MftEntry::reserved_first(),
            MftEntry::device("service", MftType::NetBasic),
            MftEntry::device("storage", MftType::BlockBasic),
        ]);
        let raw = bytes_of(&m);
        let entries = validate(&raw[..manifest_size(3)]).expect("valid");
        assert_eq!(entries.len(), 3);
        assert_eq!(find_by_name(entries, "storage", MftType::BlockBasic), Some(2));
        assert_eq!(find_by_name(entries, "storage", MftType::NetBasic), None);
        assert!(get_by_index(entries, 1, MftType::NetBasic).is_some());
        assert!(get_by_index(entries, 0, MftType::NetBasic).is_none());
        assert!(get_by_index(entries, u64::MAX, MftType::NetBasic).is_none());
    }

    #[test]
    fn every_rule_rejects() {
        let m = Manifest::new([MftEntry::reserved_first(), MftEntry::device("a", MftType::NetBasic)]);
        let good = bytes_of(&m);
        let n = manifest_size(2);
        assert_eq!(validate(&good[..4]), Err(MftError::TooShort));
        assert!(matches!(validate(&good[..n - 1]), Err(MftError::SizeMismatch { .. })));
        assert!(matches!(validate(&good[..n + 1]), Err(MftError::SizeMismatch { .. })));

        let mut bad = good;
        bad[0] = 2;
        assert_eq!(validate(&bad[..n]), Err(MftError::BadVersion(2)));

        let mut bad = good;
        bad[4] = 65;
        assert_eq!(validate(&bad[..n]), Err(MftError::TooManyEntries(65)));

        let mut bad = good;
        bad[4] = 0;
        assert_eq!(validate(&bad[..8]), Err(MftError::BadFirstEntry));

        let mut bad = good;
        bad[8] = b'x';
        assert_eq!(validate(&bad[..n]), Err(MftError::BadFirstEntry));

        let mut bad = good;
        bad[8 + 104 + 67] = b'x';
        assert_eq!(validate(&bad[..n]), Err(MftError::UnterminatedName(1)));

        let mut bad = good;
        bad[8 + 104 + 96] = 1;
        assert_eq!(validate(&bad[..n]), Err(MftError::Attached(1)));
    }

    /// A manifest in a note at an offset of the file that is not a
    /// multiple of 8 (which Solo5 loads): `read` takes it at every
    /// alignment, with the verdict and entries of an aligned copy, and
    /// `validate` says why it cannot look at it in place.
    #[test]
    fn read_takes_any_alignment() {
        let m = Manifest::new([MftEntry::reserved_first(), MftEntry::device("a", MftType::NetBasic)]);
        let good = bytes_of(&m);
        let n = manifest_size(2);
        let mut bad = good;
        bad[8 + 104 + 96] = 1;
        let mut storage = [0u64; 1024 / 8 + 1];
        for shift in 0..8 {
            let buf = &mut storage.as_mut_bytes()[shift..shift + n];
            buf.copy_from_slice(&good[..n]);
            let copy = read(buf).expect("valid at any alignment");
            assert_eq!(copy.entries(), validate(&good[..n]).unwrap());
            match validate(buf) {
                Ok(e) => assert_eq!((shift, e), (0, copy.entries())),
                Err(e) => assert_eq!((shift != 0, e), (true, MftError::Misaligned)),
            }
            buf.copy_from_slice(&bad[..n]);
            assert_eq!(read(buf).unwrap_err(), MftError::Attached(1));
            assert_eq!(read(&buf[..n - 1]).unwrap_err(), MftError::SizeMismatch { size: n - 1, expected: n });
        }
        assert_eq!(read(&good[..4]).unwrap_err(), MftError::TooShort);
    }

    #[test]
    fn typed_accessors_round_trip() {
        let mut e = MftEntry::device("x", MftType::BlockBasic);
        e.set_block_basic(4 << 20, 4096);
        assert_eq!(e.block_flush(), None, "a declared entry grants nothing");
        e.set_block_flush(Some(7));
        assert_eq!(e.block_flush(), Some(7));
        assert!(e.block_write_sync(), "hvt's write-and-sync port is granted with the flush");
        assert!(!e.block_runs(), "runs are a grant of their own");
        e.set_block_runs(true);
        assert!(e.block_runs() && e.block_flush() == Some(7));
        e.set_block_flush(None);
        assert!(e.block_runs() && !e.block_write_sync());
        e.set_block_runs(false);
        assert_eq!((e.block_capacity(), e.block_size()), (4 << 20, 4096), "the grant is in the padding");
        e.set_block_flush(None);
        assert_eq!((e.block_flush(), &e.u[10..]), (None, &[0u8; 6][..]));
        assert_eq!(e.block_capacity(), 4 << 20);
        assert_eq!(e.block_size(), 4096);
        e.set_net_basic([2, 1, 2, 3, 4, 5], 9000);
        assert_eq!(e.net_mac(), [2, 1, 2, 3, 4, 5]);
        assert_eq!(e.net_mtu(), 9000);
        e.set_hostfd(-1);
        assert_eq!(e.hostfd(), -1);
        assert_eq!(e.b, 0xFFFF_FFFF);
        let mut n = MftEntry::device("service", MftType::NetBasic);
        assert!(!n.net_vnet_hdr_wanted() && !n.net_vnet_hdr());
        n = n.wanting_vnet_hdr();
        assert!(n.net_vnet_hdr_wanted() && !n.net_vnet_hdr(), "asking grants nothing");
        n.set_net_basic([2, 0, 0, 0, 0, 9], 65520);
        n.set_net_vnet_hdr(true);
        assert!(n.net_vnet_hdr() && n.net_vnet_hdr_wanted());
        assert_eq!((n.net_mac(), n.net_mtu()), ([2, 0, 0, 0, 0, 9], 65520), "the flags are in the padding");
        n.set_net_vnet_hdr(false);
        assert!(!n.net_vnet_hdr() && n.net_vnet_hdr_wanted());
    }
}
