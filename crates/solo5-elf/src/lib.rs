//! Solo5's ELF loader rules, as pure functions from bytes to checked results.
//!
//! The tenders load untrusted executables. Everything that decides whether
//! and how an executable is loaded lives here, with no I/O, so that it can be
//! tested exhaustively and fuzzed:
//!
//! * [`load_note`] finds a Solo5 note (ABI1 or MFT1) the way Solo5's
//!   `elf_load_note` does: only the first note of each `PT_NOTE` segment.
//! * [`load_plan`] checks the header and every `PT_LOAD` segment against
//!   the guest memory size and returns a [`LoadPlan`]: what to copy where,
//!   what to zero, and the protection of each range.
//!
//! The rules, their order and the error messages are those of Solo5 v0.12.1
//! (`tenders/common/elf.c`), so a bad executable is refused with the same
//! words on our tenders as on Solo5's. Each [`ElfError`] displays as the text
//! that follows `"<file>: "` in the tender's message.
//!
//! # Panics
//!
//! None of these functions panics, whatever the input: every offset and size
//! read from the file is checked before use (see the tests, including the
//! randomized mutation test).
//!
//! ```
//! use solo5_elf::{load_plan, ElfError};
//! let not_elf = b"#!/bin/sh\necho hello\n";
//! assert!(matches!(load_plan(not_elf, 512 << 20, 0x100000), Err(ElfError::ShortHeader { .. })));
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

use solo5_abi::note::{SOLO5_NHDR_SIZE, SOLO5_NOTE_NAMESZ};

/// Size of `Elf64_Ehdr`.
pub const EHDR_SIZE: usize = 64;
/// Size of `Elf64_Phdr`.
pub const PHDR_SIZE: usize = 56;
/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;
/// `PF_X`.
pub const PF_X: u32 = 1;
/// `PF_W`.
pub const PF_W: u32 = 2;
/// `PF_R`.
pub const PF_R: u32 = 4;
/// `ET_EXEC`.
pub const ET_EXEC: u16 = 2;
/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// The architectural page size that segment bounds must be aligned to.
pub const PAGE_SIZE: u64 = 0x1000;

/// Why an executable was refused. `Display` gives Solo5's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// The file is shorter than an ELF header.
    ShortHeader {
        /// Bytes available.
        got: usize,
    },
    /// The header is not that of an x86_64 little-endian ELF64 executable.
    InvalidHeader,
    /// The program header table extends past the end of the file.
    ShortPhdrs {
        /// Bytes available.
        got: usize,
        /// Bytes the table needs.
        want: usize,
    },
    /// A `PT_NOTE` is smaller than a note header.
    NoteTooSmall {
        /// Program header index.
        ph: usize,
        /// Its `p_filesz`.
        filesz: u64,
    },
    /// The note header lies past the end of the file.
    NoteHeaderShort {
        /// Program header index.
        ph: usize,
        /// Bytes available.
        got: usize,
    },
    /// The note's `n_descsz` is 0 or larger than allowed.
    NoteDescsz {
        /// Program header index.
        ph: usize,
        /// `n_descsz`.
        descsz: u32,
        /// The largest allowed.
        max: usize,
    },
    /// The note's content is larger than its segment.
    NoteDescPastSegment {
        /// Program header index.
        ph: usize,
        /// `p_filesz`.
        filesz: u64,
        /// Header plus content size.
        want: u64,
    },
    /// The content is smaller than its own alignment padding (the case of
    /// Solo5's `buggyelf` test).
    NoteSizeUnderflow {
        /// Program header index.
        ph: usize,
        /// `n_descsz - pad`, computed modulo 2^64 as Solo5 does.
        size: u64,
        /// `n_descsz`.
        descsz: u32,
    },
    /// The note's content lies past the end of the file.
    NoteContentShort {
        /// Program header index.
        ph: usize,
        /// Bytes available.
        got: usize,
        /// Bytes wanted.
        want: usize,
    },
    /// `e_entry` is outside `[min_base, mem_size)`.
    EntryOutOfRange {
        /// `e_entry`.
        entry: u64,
        /// Lowest load address.
        min: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// `e_entry` lies in no executable segment (ours: Solo5 loads such an
    /// image, whose first instruction then faults).
    EntryNotExecutable {
        /// `e_entry`.
        entry: u64,
    },
    /// A segment starts below the lowest load address.
    VaddrBelowBase {
        /// Program header index.
        ph: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// Lowest load address.
        min: u64,
    },
    /// Segments are not sorted by address.
    NotAscending {
        /// Program header index.
        ph: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// The previous segment's `p_vaddr`.
        last: u64,
    },
    /// `p_align` is not a power of two.
    BadAlign {
        /// Program header index.
        ph: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_align`.
        align: u64,
    },
    /// The aligned start is below the lowest load address.
    StartBelowBase {
        /// Program header index.
        ph: usize,
        /// Aligned start.
        start: u64,
        /// Lowest load address.
        min: u64,
    },
    /// The segment overlaps the previous one.
    Overlap {
        /// Program header index.
        ph: usize,
        /// Aligned start.
        start: u64,
        /// End of the previous segments.
        end: u64,
    },
    /// `p_vaddr` is past the end of guest memory.
    VaddrPastMem {
        /// Program header index.
        ph: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// `p_vaddr + p_filesz` overflows.
    FileEndOverflow {
        /// Program header index.
        ph: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_filesz`.
        filesz: u64,
    },
    /// `p_vaddr + p_filesz` is past the end of guest memory.
    FileEndPastMem {
        /// Program header index.
        ph: usize,
        /// `p_vaddr + p_filesz`.
        end: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// `p_memsz < p_filesz`.
    MemszBelowFilesz {
        /// Program header index.
        ph: usize,
        /// `p_memsz`.
        memsz: u64,
        /// `p_filesz`.
        filesz: u64,
    },
    /// `p_vaddr + p_memsz` overflows.
    MemEndOverflow {
        /// Program header index.
        ph: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// Aligning the end up overflows.
    MemEndAlign {
        /// Program header index.
        ph: usize,
        /// Unaligned end.
        end: u64,
        /// `p_align`.
        align: u64,
    },
    /// The aligned end is past the end of guest memory.
    MemEndPastMem {
        /// Program header index.
        ph: usize,
        /// Aligned end.
        end: u64,
        /// Guest memory size.
        mem: u64,
    },
    /// The segment's bytes lie past the end of the file.
    SegmentShort {
        /// Program header index.
        ph: usize,
        /// Bytes available.
        got: usize,
        /// `p_filesz`.
        filesz: u64,
    },
    /// The aligned start is not page-aligned.
    StartNotPageAligned {
        /// Program header index.
        ph: usize,
        /// Aligned start.
        start: u64,
    },
    /// The aligned end is not page-aligned.
    EndNotPageAligned {
        /// Program header index.
        ph: usize,
        /// Aligned end.
        end: u64,
    },
    /// The segment is both writable and executable.
    WriteAndExec {
        /// Program header index.
        ph: usize,
    },
    /// An offset in the file is beyond what `pread` accepts (`EINVAL`).
    ReadFailed,
}

const INV_EXE: &str = "invalid executable";

impl ElfError {
    /// Whether the image would load into more guest memory: its entry
    /// point or a segment lies past the end of the memory given. Solo5
    /// reports such an image as invalid; a tender can also say that a
    /// larger `--mem` fits it.
    pub fn needs_more_memory(&self) -> bool {
        use ElfError::*;
        match *self {
            EntryOutOfRange { entry, min, mem } => entry >= min && entry >= mem,
            VaddrPastMem { .. } | FileEndPastMem { .. } | MemEndPastMem { .. } => true,
            _ => false,
        }
    }
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ElfError::*;
        match *self {
            ShortHeader { got } => {
                write!(f, "{INV_EXE}: elf header does not match the expected size ({got} != {EHDR_SIZE})")
            }
            InvalidHeader => {
                write!(f, "{INV_EXE}: invalid or unsupported executable (elf header invalid while loading note)")
            }
            ShortPhdrs { got, want } => write!(
                f,
                "{INV_EXE}: program header does not match the expected size ({got} != {want} while loading note)"
            ),
            NoteTooSmall { ph, filesz } => {
                write!(f, "{INV_EXE}: phdr[{ph}].p_filesz note does not fall within valid size ({filesz} < 12)")
            }
            NoteHeaderShort { ph, got } => {
                write!(f, "phdr[{ph}] bytes read mismatches note size ({got} != {SOLO5_NHDR_SIZE})")
            }
            NoteDescsz { ph, descsz, max } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] note does not fall within valid size ({descsz} < 1 || {descsz} > {max})"
            ),
            NoteDescPastSegment { ph, filesz, want } => {
                write!(f, "{INV_EXE}: phdr[{ph}] note does not fall within valid size ({filesz} < {want})")
            }
            NoteSizeUnderflow { ph, size, descsz } => {
                write!(f, "INV_EXE: phdr[{ph}] note does not fall within valid size ({size} <= 0 || {size} > {descsz})")
            }
            NoteContentShort { ph, got, want } => {
                write!(f, "phdr[{ph}] bytes read mismatches note size ({got} != {want})")
            }
            EntryOutOfRange { entry, min, mem } => write!(
                f,
                "{INV_EXE}: e_entry does not fall within the memory allocation range ({entry} < {min} || {entry} >= {mem})"
            ),
            EntryNotExecutable { entry } => write!(
                f,
                "{INV_EXE}: e_entry ({entry:#x}) is in no executable segment: the first instruction would fault (check the linker script)"
            ),
            VaddrBelowBase { ph, vaddr, min } => {
                write!(f, "{INV_EXE}: phdr[{ph}].p_vaddr outside of valid memory range ({vaddr} < {min})")
            }
            NotAscending { ph, vaddr, last } => {
                write!(f, "{INV_EXE}: phdr[{ph}].p_vaddr is not in ascending order ({vaddr} < {last})")
            }
            BadAlign { ph, vaddr, align } => write!(
                f,
                "{INV_EXE}: phdr[{ph}].p_vaddr is outside of memory range (align_down with {vaddr} (p_vaddr) and {align} (p_align) failed)"
            ),
            StartBelowBase { ph, start, min } => write!(
                f,
                "{INV_EXE}: phdr[{ph}].p_vaddr_start is outside of memory range ({start} < {min} (p_min_loadaddr))"
            ),
            Overlap { ph, start, end } => {
                write!(f, "{INV_EXE}: phdr[{ph}].p_vaddr_start is outside of memory range ({start} < {end} (e_end))")
            }
            VaddrPastMem { ph, vaddr, mem } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program file segment falls outside of valid range ({vaddr} >= {mem} (mem_size))"
            ),
            FileEndOverflow { ph, vaddr, filesz } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program file segment falls outside of valid range ({vaddr} (p_vaddr) + {filesz} (p_filesz) overflow)"
            ),
            FileEndPastMem { ph, end, mem } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program file segment falls outside of valid range ({end} (p_vaddr + p_filesz) > {mem} (mem_size))"
            ),
            MemszBelowFilesz { ph, memsz, filesz } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program memory segment falls outside of valid range ({memsz} (p_memsz) < {filesz} (p_filesz))"
            ),
            MemEndOverflow { ph, vaddr, memsz } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program memory segment falls outside of valid range ({vaddr} (p_vaddr) + {memsz} (p_memsz) overflow)"
            ),
            MemEndAlign { ph, end, align } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program memory segment falls outside of valid range (align_up with {end} (p_vaddr_end) and {align} (p_align) failed)"
            ),
            MemEndPastMem { ph, end, mem } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] program memory segment falls outside of valid range ({end} (p_vaddr + p_memsz) > {mem} (mem_size))"
            ),
            SegmentShort { ph, got, filesz } => write!(
                f,
                "phdr[{ph}] host file segment mismatched (pread_in_full returned {got} != {filesz} (p_filesz))"
            ),
            StartNotPageAligned { ph, start } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] p_vaddr_start not aligned with architectural page size ({start} & (4096 - 1))"
            ),
            EndNotPageAligned { ph, end } => write!(
                f,
                "{INV_EXE}: phdr[{ph}] p_vaddr_end not aligned with architectural page size ({end} & (4096 - 1))"
            ),
            WriteAndExec { ph } => write!(f, "{INV_EXE}: phdr[{ph}] requests WRITE and EXEC permissions"),
            ReadFailed => write!(f, "read of the executable failed (offset out of range)"),
        }
    }
}

/// The fields of `Elf64_Ehdr` the loader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `e_entry`.
    pub entry: u64,
    /// `e_phoff`.
    pub phoff: u64,
    /// `e_phnum`.
    pub phnum: u16,
}

/// One `Elf64_Phdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phdr {
    /// `p_type`.
    pub ptype: u32,
    /// `p_flags`.
    pub flags: u32,
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// `p_align`.
    pub align: u64,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// What `pread_in_full(count, offset)` returns on a file holding `bytes`:
/// up to `count` bytes, fewer at the end of the file; `Err` for an offset
/// the kernel refuses (above `i64::MAX`).
fn pread(bytes: &[u8], offset: u64, count: usize) -> Result<&[u8], ElfError> {
    if offset > i64::MAX as u64 {
        return Err(ElfError::ReadFailed);
    }
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    let end = start.saturating_add(count).min(bytes.len());
    Ok(&bytes[start..end])
}

/// Reads and checks the ELF header (`ehdr_is_valid`).
pub fn parse_header(bytes: &[u8]) -> Result<Header, ElfError> {
    let h = pread(bytes, 0, EHDR_SIZE)?;
    if h.len() != EHDR_SIZE {
        return Err(ElfError::ShortHeader { got: h.len() });
    }
    let ident_ok = h[..4] == *b"\x7fELF"
        && h[4] == 2 // ELFCLASS64
        && h[5] == 1 // ELFDATA2LSB
        && u32_at(h, 20) == 1; // EV_CURRENT
    let valid = ident_ok
        && u16_at(h, 52) as usize == EHDR_SIZE
        && u16_at(h, 56) >= 1
        && u16_at(h, 54) as usize == PHDR_SIZE
        && u16_at(h, 16) == ET_EXEC
        && u16_at(h, 18) == EM_X86_64;
    if !valid {
        return Err(ElfError::InvalidHeader);
    }
    Ok(Header { entry: u64_at(h, 24), phoff: u64_at(h, 32), phnum: u16_at(h, 56) })
}

/// Reads the program header table.
pub fn parse_phdrs(bytes: &[u8], header: &Header) -> Result<Vec<Phdr>, ElfError> {
    let want = header.phnum as usize * PHDR_SIZE;
    let table = pread(bytes, header.phoff, want)?;
    if table.len() != want {
        return Err(ElfError::ShortPhdrs { got: table.len(), want });
    }
    Ok(table
        .chunks_exact(PHDR_SIZE)
        .map(|p| Phdr {
            ptype: u32_at(p, 0),
            flags: u32_at(p, 4),
            offset: u64_at(p, 8),
            vaddr: u64_at(p, 16),
            filesz: u64_at(p, 32),
            memsz: u64_at(p, 40),
            align: u64_at(p, 48),
        })
        .collect())
}

/// `elf_load_note`: the content of the Solo5 note of type `note_type`, with
/// the `align`-ment padding at its start removed. `Ok(None)` if the
/// executable has no such note; `Err` if it is malformed.
pub fn load_note(bytes: &[u8], note_type: u32, align: usize, max_size: usize) -> Result<Option<&[u8]>, ElfError> {
    let header = parse_header(bytes)?;
    let phdrs = parse_phdrs(bytes, &header)?;
    for (ph, p) in phdrs.iter().enumerate() {
        if p.ptype != PT_NOTE {
            continue;
        }
        if p.filesz < 12 {
            return Err(ElfError::NoteTooSmall { ph, filesz: p.filesz });
        }
        if p.filesz < SOLO5_NHDR_SIZE as u64 {
            continue;
        }
        let nhdr = pread(bytes, p.offset, SOLO5_NHDR_SIZE)?;
        if nhdr.len() != SOLO5_NHDR_SIZE {
            return Err(ElfError::NoteHeaderShort { ph, got: nhdr.len() });
        }
        let (namesz, descsz, ntype) = (u32_at(nhdr, 0), u32_at(nhdr, 4), u32_at(nhdr, 8));
        // strncmp(name, "Solo5", 6): the NUL must match too.
        if namesz != SOLO5_NOTE_NAMESZ || nhdr[12..18] != *b"Solo5\0" || ntype != note_type {
            continue;
        }
        if descsz < 1 || descsz as usize > max_size {
            return Err(ElfError::NoteDescsz { ph, descsz, max: max_size });
        }
        let want = SOLO5_NHDR_SIZE as u64 + descsz as u64;
        if p.filesz < want {
            return Err(ElfError::NoteDescPastSegment { ph, filesz: p.filesz, want });
        }
        let offset = SOLO5_NHDR_SIZE.div_ceil(align) * align;
        let pad = (offset - SOLO5_NHDR_SIZE) as u64;
        let size = (descsz as u64).wrapping_sub(pad);
        if size == 0 || size > descsz as u64 {
            return Err(ElfError::NoteSizeUnderflow { ph, size, descsz });
        }
        let content = pread(bytes, p.offset.saturating_add(offset as u64), size as usize)?;
        if content.len() != size as usize {
            return Err(ElfError::NoteContentShort { ph, got: content.len(), want: size as usize });
        }
        return Ok(Some(content));
    }
    Ok(None)
}

/// Page protection of a loaded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prot {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

/// One segment to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Program header index.
    pub ph: usize,
    /// Guest address of the first byte.
    pub vaddr: u64,
    /// Offset of the bytes in the file.
    pub file_offset: u64,
    /// Bytes copied from the file.
    pub filesz: u64,
    /// Bytes in memory; those past `filesz` are zeroed.
    pub memsz: u64,
    /// Start of the protected range (`vaddr` aligned down to `p_align`).
    pub prot_start: u64,
    /// End of the protected range (`vaddr + memsz` aligned up).
    pub prot_end: u64,
    /// Protection from `p_flags`.
    pub prot: Prot,
}

/// A checked plan for loading an executable into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    /// Entry point.
    pub entry: u64,
    /// Highest aligned end of any loaded segment.
    pub kernel_end: u64,
    /// Segments in file order; all of their bytes are within the file and
    /// all of their ranges within `[min_base, mem_size]`.
    pub segments: Vec<Segment>,
}

impl LoadPlan {
    /// The bytes of `segment` in the file the plan was made from. Within
    /// bounds by construction; an empty slice if `bytes` is another file.
    pub fn file_bytes<'a>(&self, bytes: &'a [u8], segment: &Segment) -> &'a [u8] {
        let start = segment.file_offset as usize;
        bytes.get(start..start + segment.filesz as usize).unwrap_or(&[])
    }
}

/// `elf_load` without the I/O: checks every `PT_LOAD` segment with a
/// non-zero `p_filesz` for a guest of `mem_size` bytes whose executable may
/// not load below `min_base`, in Solo5's order.
pub fn load_plan(bytes: &[u8], mem_size: u64, min_base: u64) -> Result<LoadPlan, ElfError> {
    let header = parse_header(bytes)?;
    if header.entry < min_base || header.entry >= mem_size {
        return Err(ElfError::EntryOutOfRange { entry: header.entry, min: min_base, mem: mem_size });
    }
    let phdrs = parse_phdrs(bytes, &header)?;
    let mut segments = Vec::new();
    let mut e_end = 0u64;
    let mut last_vaddr = 0u64;
    for (ph, p) in phdrs.iter().enumerate() {
        // Empty segments (an empty .tdata, .bss) are skipped: memory starts zeroed.
        if p.filesz == 0 || p.ptype != PT_LOAD {
            continue;
        }
        let vaddr = p.vaddr;
        if vaddr < min_base {
            return Err(ElfError::VaddrBelowBase { ph, vaddr, min: min_base });
        }
        if vaddr < last_vaddr {
            return Err(ElfError::NotAscending { ph, vaddr, last: last_vaddr });
        }
        last_vaddr = vaddr;
        if !p.align.is_power_of_two() {
            return Err(ElfError::BadAlign { ph, vaddr, align: p.align });
        }
        let start = vaddr & p.align.wrapping_neg();
        if start < min_base {
            return Err(ElfError::StartBelowBase { ph, start, min: min_base });
        }
        if start < e_end {
            return Err(ElfError::Overlap { ph, start, end: e_end });
        }
        if vaddr >= mem_size {
            return Err(ElfError::VaddrPastMem { ph, vaddr, mem: mem_size });
        }
        let file_end = vaddr.checked_add(p.filesz).ok_or(ElfError::FileEndOverflow { ph, vaddr, filesz: p.filesz })?;
        if file_end > mem_size {
            return Err(ElfError::FileEndPastMem { ph, end: file_end, mem: mem_size });
        }
        if p.memsz < p.filesz {
            return Err(ElfError::MemszBelowFilesz { ph, memsz: p.memsz, filesz: p.filesz });
        }
        let mem_end = vaddr.checked_add(p.memsz).ok_or(ElfError::MemEndOverflow { ph, vaddr, memsz: p.memsz })?;
        let end =
            solo5_abi::align_up(mem_end, p.align).ok_or(ElfError::MemEndAlign { ph, end: mem_end, align: p.align })?;
        if end > mem_size {
            return Err(ElfError::MemEndPastMem { ph, end, mem: mem_size });
        }
        e_end = e_end.max(end);
        // file_end <= mem_size <= 4 GiB, so filesz fits in usize.
        let data = pread(bytes, p.offset, p.filesz as usize)?;
        if data.len() as u64 != p.filesz {
            return Err(ElfError::SegmentShort { ph, got: data.len(), filesz: p.filesz });
        }
        if start & (PAGE_SIZE - 1) != 0 {
            return Err(ElfError::StartNotPageAligned { ph, start });
        }
        if end & (PAGE_SIZE - 1) != 0 {
            return Err(ElfError::EndNotPageAligned { ph, end });
        }
        let prot = Prot { read: p.flags & PF_R != 0, write: p.flags & PF_W != 0, exec: p.flags & PF_X != 0 };
        if prot.write && prot.exec {
            return Err(ElfError::WriteAndExec { ph });
        }
        segments.push(Segment {
            ph,
            vaddr,
            file_offset: p.offset,
            filesz: p.filesz,
            memsz: p.memsz,
            prot_start: start,
            prot_end: end,
            prot,
        });
    }
    // Checked last, so that every one of Solo5's checks keeps its message.
    let entry = header.entry;
    if !segments.iter().any(|s| s.prot.exec && s.vaddr <= entry && entry - s.vaddr < s.memsz) {
        return Err(ElfError::EntryNotExecutable { entry });
    }
    Ok(LoadPlan { entry, kernel_end: e_end, segments })
}

#[cfg(test)]
mod tests;
