//! The ELF notes that make an executable a Solo5 unikernel
//! (`include/elf_abi.h`).
//!
//! Each note lives in its own section and its own `PT_NOTE` segment, because
//! the tenders read only the first note of each `PT_NOTE`:
//!
//! * ABI1 (`.note.solo5.abi`): the target (hvt, spt, ...) and ABI version;
//! * MFT1 (`.note.solo5.manifest`): the manifest ([`crate::mft`]);
//! * the OpenBSD ident note (`.note.solo5.not_openbsd`), which must be in
//!   the first `PT_NOTE` so that OpenBSD's kernel does not take the image for
//!   one of its own programs.
//!
//! The structs here are the exact images of those notes, for a guest to
//! place in its sections as statics.

use crate::mft::{Manifest, MftEntry};

/// `n_namesz` of a Solo5 note: `"Solo5\0"`.
pub const SOLO5_NOTE_NAMESZ: u32 = 6;
/// The name of a Solo5 note, padded to 8 bytes as it sits in the file.
pub const SOLO5_NOTE_NAME: [u8; 8] = *b"Solo5\0\0\0";
/// Size of a Solo5 note header: `Elf64_Nhdr` (12) + padded name (8).
pub const SOLO5_NHDR_SIZE: usize = 20;
/// Size of a bare `Elf64_Nhdr`.
pub const ELF_NHDR_SIZE: usize = 12;

/// `ABI1_NOTE_TYPE` ("ABI1").
pub const ABI1_NOTE_TYPE: u32 = 0x3149_4241;
/// `ABI1_NOTE_ALIGN`.
pub const ABI1_NOTE_ALIGN: usize = 4;
/// `ABI1_NOTE_MAX_SIZE`.
pub const ABI1_NOTE_MAX_SIZE: usize = 32;
/// `MFT1_NOTE_TYPE` ("MFT1").
pub const MFT1_NOTE_TYPE: u32 = 0x3154_464d;
/// `MFT1_NOTE_ALIGN`: the manifest is 8-aligned inside the note.
pub const MFT1_NOTE_ALIGN: usize = 8;
/// `MFT1_NOTE_MAX_SIZE`: a manifest of [`crate::mft::MFT_MAX_ENTRIES`] plus padding.
pub const MFT1_NOTE_MAX_SIZE: usize = 6668;
/// `NT_VERSION`, the type of the OpenBSD ident note.
pub const OPENBSD_NOTE_TYPE: u32 = 1;

/// The path in `PT_INTERP`: it makes a direct `exec` by the host fail.
pub const INTERP: &[u8; 20] = b"/nonexistent/solo5/\0";

/// `abi_target` values.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiTarget {
    /// `solo5-hvt`.
    Hvt = 1,
    /// `solo5-spt`.
    Spt = 2,
    /// virtio (QEMU, Firecracker).
    Virtio = 3,
    /// Muen.
    Muen = 4,
    /// Genode.
    Genode = 5,
    /// Xen.
    Xen = 6,
}

impl AbiTarget {
    /// The name `solo5-elftool query-abi` prints for a raw target.
    pub const fn name_of(raw: u32) -> &'static str {
        match raw {
            1 => "hvt",
            2 => "spt",
            3 => "virtio",
            4 => "muen",
            5 => "genode",
            6 => "xen",
            _ => "unknown",
        }
    }
}

/// `struct abi1_info`: the content of the ABI1 note.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abi1Info {
    /// Raw [`AbiTarget`].
    pub abi_target: u32,
    /// ABI version of that target.
    pub abi_version: u32,
    /// Reserved, 0.
    pub reserved0: u32,
    /// Reserved, 0.
    pub reserved1: u32,
}

/// A Solo5 note header with its padded name.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Solo5Nhdr {
    /// `n_namesz` = 6.
    pub namesz: u32,
    /// `n_descsz`: content size, internal alignment padding included.
    pub descsz: u32,
    /// `n_type`.
    pub ntype: u32,
    /// `"Solo5"` padded to 8 bytes.
    pub name: [u8; 8],
}

/// The complete ABI1 note.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy)]
pub struct Abi1Note {
    /// Header.
    pub h: Solo5Nhdr,
    /// Content.
    pub info: Abi1Info,
}

impl Abi1Note {
    /// The note for `target` at `version`.
    pub const fn new(target: AbiTarget, version: u32) -> Abi1Note {
        Abi1Note {
            h: Solo5Nhdr {
                namesz: SOLO5_NOTE_NAMESZ,
                descsz: core::mem::size_of::<Abi1Info>() as u32,
                ntype: ABI1_NOTE_TYPE,
                name: SOLO5_NOTE_NAME,
            },
            info: Abi1Info { abi_target: target as u32, abi_version: version, reserved0: 0, reserved1: 0 },
        }
    }
}

/// The complete MFT1 note of a manifest of `N` entries.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct Mft1Note<const N: usize> {
    /// Header.
    pub h: Solo5Nhdr,
    /// Padding that 8-aligns the manifest; counted in `descsz`.
    pub _pad: [u8; 4],
    /// The manifest.
    pub m: Manifest<N>,
}

impl<const N: usize> Mft1Note<N> {
    /// The note carrying `entries` (`entries[0]` is the reserved entry).
    pub const fn new(entries: [MftEntry; N]) -> Mft1Note<N> {
        Mft1Note {
            h: Solo5Nhdr {
                namesz: SOLO5_NOTE_NAMESZ,
                descsz: (4 + core::mem::size_of::<Manifest<N>>()) as u32,
                ntype: MFT1_NOTE_TYPE,
                name: SOLO5_NOTE_NAME,
            },
            _pad: [0; 4],
            m: Manifest::new(entries),
        }
    }
}

/// The OpenBSD ident note.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy)]
pub struct OpenBsdNote {
    /// 8.
    pub namesz: u32,
    /// 4.
    pub descsz: u32,
    /// [`OPENBSD_NOTE_TYPE`].
    pub ntype: u32,
    /// `"OpenBSD\0"`.
    pub name: [u8; 8],
    /// 0.
    pub desc: u32,
}

impl OpenBsdNote {
    /// The note.
    pub const NOTE: OpenBsdNote =
        OpenBsdNote { namesz: 8, descsz: 4, ntype: OPENBSD_NOTE_TYPE, name: *b"OpenBSD\0", desc: 0 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mft::MftType;
    use core::mem::{offset_of, size_of};

    #[test]
    fn note_layouts_match_solo5() {
        assert_eq!(size_of::<Solo5Nhdr>(), SOLO5_NHDR_SIZE);
        assert_eq!(size_of::<Abi1Note>(), 36);
        assert_eq!(Abi1Note::new(AbiTarget::Hvt, 2).h.descsz, 16);
        assert_eq!(size_of::<OpenBsdNote>(), 24);
        // test_hello: one device entry besides the reserved one, descsz 0x74.
        let n = Mft1Note::new([MftEntry::reserved_first(), MftEntry::device("x", MftType::NetBasic)]);
        assert_eq!(n.h.descsz, 4 + 8 + 2 * 104);
        let hello = Mft1Note::new([MftEntry::reserved_first()]);
        assert_eq!(hello.h.descsz, 0x74);
        assert_eq!(offset_of!(Mft1Note<1>, m), 24);
        assert_eq!(size_of::<Mft1Note<1>>(), 136);
        assert_eq!(MFT1_NOTE_MAX_SIZE, 4 + crate::mft::manifest_size(64));
    }
}
