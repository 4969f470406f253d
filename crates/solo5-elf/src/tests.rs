//! Tests: a builder for small Solo5 executables, one test per rule, and a
//! randomized mutation test asserting that no input makes the loader panic.

use super::*;
use alloc::vec;
use solo5_abi::note::{
    ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE, ABI1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE, MFT1_NOTE_TYPE,
};

const MEM: u64 = 512 << 20;
const BASE: u64 = 0x10_0000;

/// A program header to emit.
#[derive(Clone, Copy)]
struct P {
    ptype: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// An executable shaped like our hvt guests: text (X), rodata with the two
/// Solo5 notes (R), data (RW), bss (RW, no file bytes), and a PT_NOTE each.
struct Image {
    bytes: Vec<u8>,
    phdrs: Vec<P>,
}

const TEXT_OFF: u64 = 0x1000;
const NOTE_OFF: u64 = 0x2000;
const DATA_OFF: u64 = 0x3000;

fn note(ntype: u32, desc: &[u8], align: usize) -> Vec<u8> {
    let mut n = Vec::new();
    let pad = (20usize.div_ceil(align) * align) - 20;
    n.extend_from_slice(&6u32.to_le_bytes());
    n.extend_from_slice(&((pad + desc.len()) as u32).to_le_bytes());
    n.extend_from_slice(&ntype.to_le_bytes());
    n.extend_from_slice(b"Solo5\0\0\0");
    n.extend(core::iter::repeat_n(0u8, pad));
    n.extend_from_slice(desc);
    n
}

fn manifest_one_net() -> Vec<u8> {
    use solo5_abi::mft::{MftEntry, MftType};
    use zerocopy::IntoBytes;
    let mut m = Vec::new();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(MftEntry::reserved_first().as_bytes());
    m.extend_from_slice(MftEntry::device("service", MftType::NetBasic).as_bytes());
    m
}

impl Image {
    fn hvt() -> Image {
        let abi = note(ABI1_NOTE_TYPE, &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], ABI1_NOTE_ALIGN);
        let mft = note(MFT1_NOTE_TYPE, &manifest_one_net(), MFT1_NOTE_ALIGN);
        let mut bytes = vec![0u8; 0x4000];
        bytes[TEXT_OFF as usize..TEXT_OFF as usize + 4].copy_from_slice(&[0xf4, 0xeb, 0xfd, 0x90]);
        let mft_at = NOTE_OFF as usize;
        bytes[mft_at..mft_at + mft.len()].copy_from_slice(&mft);
        let abi_at = mft_at + mft.len().next_multiple_of(8);
        bytes[abi_at..abi_at + abi.len()].copy_from_slice(&abi);
        bytes[DATA_OFF as usize..DATA_OFF as usize + 7].copy_from_slice(b"RUCCESS");
        let phdrs = vec![
            P { ptype: PT_LOAD, flags: PF_X, offset: TEXT_OFF, vaddr: BASE, filesz: 4, memsz: 4, align: 0x1000 },
            P {
                ptype: PT_LOAD,
                flags: PF_R,
                offset: NOTE_OFF,
                vaddr: BASE + 0x1000,
                filesz: 0x200,
                memsz: 0x200,
                align: 0x1000,
            },
            P {
                ptype: PT_LOAD,
                flags: PF_R | PF_W,
                offset: DATA_OFF,
                vaddr: BASE + 0x2000,
                filesz: 8,
                memsz: 8,
                align: 0x1000,
            },
            // An empty tdata LOAD at address 0, as the toolchain emits: skipped.
            P { ptype: PT_LOAD, flags: PF_R, offset: 0, vaddr: 0, filesz: 0, memsz: 0, align: 0x1000 },
            P {
                ptype: PT_LOAD,
                flags: PF_R | PF_W,
                offset: 0,
                vaddr: BASE + 0x3000,
                filesz: 0,
                memsz: 0x5000,
                align: 0x1000,
            },
            P {
                ptype: PT_NOTE,
                flags: PF_R,
                offset: abi_at as u64,
                vaddr: 0,
                filesz: abi.len() as u64,
                memsz: 0,
                align: 4,
            },
            P {
                ptype: PT_NOTE,
                flags: PF_R,
                offset: mft_at as u64,
                vaddr: 0,
                filesz: mft.len() as u64,
                memsz: 0,
                align: 8,
            },
        ];
        Image { bytes, phdrs }
    }

    fn with(mut self, f: impl FnOnce(&mut Vec<P>)) -> Image {
        f(&mut self.phdrs);
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        let phoff = 64usize;
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        h[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[24..32].copy_from_slice(&BASE.to_le_bytes());
        h[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes());
        h[54..56].copy_from_slice(&56u16.to_le_bytes());
        h[56..58].copy_from_slice(&(self.phdrs.len() as u16).to_le_bytes());
        out[..64].copy_from_slice(&h);
        for (i, p) in self.phdrs.iter().enumerate() {
            let o = phoff + i * 56;
            out[o..o + 4].copy_from_slice(&p.ptype.to_le_bytes());
            out[o + 4..o + 8].copy_from_slice(&p.flags.to_le_bytes());
            out[o + 8..o + 16].copy_from_slice(&p.offset.to_le_bytes());
            out[o + 16..o + 24].copy_from_slice(&p.vaddr.to_le_bytes());
            out[o + 24..o + 32].copy_from_slice(&p.vaddr.to_le_bytes());
            out[o + 32..o + 40].copy_from_slice(&p.filesz.to_le_bytes());
            out[o + 40..o + 48].copy_from_slice(&p.memsz.to_le_bytes());
            out[o + 48..o + 56].copy_from_slice(&p.align.to_le_bytes());
        }
        out
    }
}

fn plan(bytes: &[u8]) -> Result<LoadPlan, ElfError> {
    load_plan(bytes, MEM, BASE)
}

#[test]
fn a_good_image_loads() {
    let elf = Image::hvt().build();
    let p = plan(&elf).expect("loads");
    assert_eq!(p.entry, BASE);
    assert_eq!(p.segments.len(), 3, "the empty tdata and bss LOADs are skipped");
    assert_eq!(p.kernel_end, BASE + 0x3000);
    assert_eq!(p.segments[0].prot, Prot { read: false, write: false, exec: true });
    assert_eq!(p.file_bytes(&elf, &p.segments[2]), b"RUCCESS\0");
    let abi = load_note(&elf, ABI1_NOTE_TYPE, ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE).unwrap().unwrap();
    assert_eq!(abi.len(), 16);
    assert_eq!(&abi[..8], &[1, 0, 0, 0, 2, 0, 0, 0]);
    let mft = load_note(&elf, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE).unwrap().unwrap();
    assert_eq!(mft.len(), 8 + 2 * 104);
    let entries = solo5_abi::mft::validate(mft).expect("valid manifest");
    assert_eq!(entries[1].name_str(), "service");
}

#[test]
fn missing_notes_are_none() {
    let elf = Image::hvt().with(|p| p.retain(|p| p.ptype != PT_NOTE)).build();
    assert_eq!(load_note(&elf, ABI1_NOTE_TYPE, 4, 32), Ok(None));
    // A note of another type, or not named Solo5, is not ours.
    let elf = Image::hvt().build();
    assert_eq!(load_note(&elf, 0x1234, 4, 32), Ok(None));
}

#[test]
fn header_rules() {
    let good = Image::hvt().build();
    assert_eq!(plan(&good[..63]), Err(ElfError::ShortHeader { got: 63 }));
    assert_eq!(plan(&[]), Err(ElfError::ShortHeader { got: 0 }));
    for (off, val) in [(0usize, 0u8), (4, 1), (5, 2), (20, 0), (52, 63), (54, 55), (56, 0), (16, 3), (18, 3)] {
        let mut e = good.clone();
        e[off] = val;
        if off == 56 {
            e[57] = 0;
        }
        assert_eq!(plan(&e), Err(ElfError::InvalidHeader), "byte {off} = {val}");
        assert_eq!(load_note(&e, ABI1_NOTE_TYPE, 4, 32), Err(ElfError::InvalidHeader));
    }
    // OSABI is deliberately not checked.
    let mut e = good.clone();
    e[7] = 9;
    assert!(plan(&e).is_ok());
}

#[test]
fn program_header_table_past_the_end() {
    let mut e = Image::hvt().build();
    let near_end = e.len() as u64 - 10;
    e[32..40].copy_from_slice(&near_end.to_le_bytes());
    assert_eq!(plan(&e), Err(ElfError::ShortPhdrs { got: 10, want: 7 * 56 }));
    e[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(plan(&e), Err(ElfError::ReadFailed));
}

#[test]
fn entry_point_rules() {
    let mut e = Image::hvt().build();
    e[24..32].copy_from_slice(&(BASE - 1).to_le_bytes());
    assert!(matches!(plan(&e), Err(ElfError::EntryOutOfRange { .. })));
    // Below the base no memory helps; past the end, more would.
    assert!(!plan(&e).unwrap_err().needs_more_memory());
    e[24..32].copy_from_slice(&MEM.to_le_bytes());
    assert!(matches!(plan(&e), Err(ElfError::EntryOutOfRange { .. })));
    assert!(plan(&e).unwrap_err().needs_more_memory());
    let msg = alloc::format!("{}", plan(&e).unwrap_err());
    assert_eq!(
        msg,
        "invalid executable: e_entry does not fall within the memory allocation range (1048576 < 1048576 || 536870912 >= 536870912)"
            .replace("1048576 < 1048576", "536870912 < 1048576")
    );
}

#[test]
fn the_entry_point_must_be_in_an_executable_segment() {
    // In the read-only notes, in the data, past the text's 4 bytes.
    for entry in [BASE + 0x1000, BASE + 0x2000, BASE + 4] {
        let mut e = Image::hvt().build();
        e[24..32].copy_from_slice(&entry.to_le_bytes());
        assert_eq!(plan(&e), Err(ElfError::EntryNotExecutable { entry }));
    }
    let mut e = Image::hvt().build();
    e[24..32].copy_from_slice(&(BASE + 3).to_le_bytes());
    assert!(plan(&e).is_ok(), "the text's last byte");
    // No executable segment at all.
    let e = Image::hvt().with(|p| p[0].flags = PF_R).build();
    assert_eq!(plan(&e), Err(ElfError::EntryNotExecutable { entry: BASE }));
    assert_eq!(
        alloc::format!("{}", plan(&e).unwrap_err()),
        "invalid executable: e_entry (0x100000) is in no executable segment: the first instruction would fault (check the linker script)"
    );
}

fn load_err(f: impl FnOnce(&mut Vec<P>)) -> ElfError {
    plan(&Image::hvt().with(f).build()).unwrap_err()
}

#[test]
fn segment_rules_in_solo5_order() {
    assert!(matches!(load_err(|p| p[0].vaddr = BASE - 0x1000), ElfError::VaddrBelowBase { ph: 0, .. }));
    assert!(matches!(
        load_err(|p| {
            p[0].vaddr = BASE + 0x1000;
            p[1].vaddr = BASE;
        }),
        ElfError::NotAscending { ph: 1, .. }
    ));
    assert!(matches!(load_err(|p| p[0].align = 3), ElfError::BadAlign { ph: 0, .. }));
    assert!(matches!(load_err(|p| p[0].align = 0), ElfError::BadAlign { ph: 0, .. }));
    assert!(matches!(load_err(|p| p[1].align = 0x20_0000), ElfError::StartBelowBase { ph: 1, .. }));
    assert!(matches!(load_err(|p| p[0].memsz = 0x1001), ElfError::Overlap { ph: 1, .. }));
    assert!(matches!(
        load_err(|p| {
            p[2].vaddr = MEM;
        }),
        ElfError::VaddrPastMem { ph: 2, .. }
    ));
    assert!(matches!(
        load_err(|p| {
            p[2].vaddr = MEM - 0x1000;
            p[2].filesz = 0x1001;
            p[2].memsz = 0x1001;
        }),
        ElfError::FileEndPastMem { ph: 2, .. }
    ));
    assert!(matches!(load_err(|p| p[2].memsz = 4), ElfError::MemszBelowFilesz { ph: 2, .. }));
    assert!(matches!(
        load_err(|p| {
            p[2].vaddr = MEM - 0x1000;
            p[2].memsz = 0x1001;
        }),
        ElfError::MemEndPastMem { ph: 2, .. }
    ));
    assert!(matches!(load_err(|p| p[2].memsz = u64::MAX), ElfError::MemEndOverflow { ph: 2, .. }));
    assert!(matches!(
        load_err(|p| {
            p[2].vaddr = 0xFFFF_FFFF_FFFF_F000;
            p[2].memsz = 0x10;
        }),
        ElfError::VaddrPastMem { ph: 2, .. }
    ));
    assert!(matches!(load_err(|p| p[2].offset = 0x3ffc), ElfError::SegmentShort { ph: 2, got: 4, .. }));
    assert!(matches!(
        load_err(|p| {
            p[2].vaddr = BASE + 0x2010;
            p[2].align = 8;
        }),
        ElfError::StartNotPageAligned { ph: 2, .. }
    ));
    assert!(matches!(load_err(|p| p[2].align = 8), ElfError::EndNotPageAligned { ph: 2, .. }));
    assert!(matches!(load_err(|p| p[2].flags = PF_R | PF_W | PF_X), ElfError::WriteAndExec { ph: 2 }));
}

#[test]
fn file_end_overflow_is_caught() {
    // vaddr < mem and vaddr + filesz overflowing needs filesz near 2^64.
    let e = load_err(|p| p[2].filesz = u64::MAX - 0x1000);
    assert!(matches!(e, ElfError::FileEndOverflow { ph: 2, .. }), "{e:?}");
}

#[test]
fn note_rules() {
    let e = Image::hvt().with(|p| p[5].filesz = 11).build();
    assert_eq!(load_note(&e, ABI1_NOTE_TYPE, 4, 32), Err(ElfError::NoteTooSmall { ph: 5, filesz: 11 }));
    // Between 12 and 20 bytes the note is skipped.
    let e = Image::hvt().with(|p| p[5].filesz = 19).build();
    assert_eq!(load_note(&e, ABI1_NOTE_TYPE, 4, 32), Ok(None));
    let e = Image::hvt().with(|p| p[5].offset = 0x3ff0).build();
    assert_eq!(load_note(&e, ABI1_NOTE_TYPE, 4, 32), Err(ElfError::NoteHeaderShort { ph: 5, got: 16 }));
    let e = Image::hvt().with(|p| p[5].filesz = 35).build();
    assert_eq!(
        load_note(&e, ABI1_NOTE_TYPE, 4, 32),
        Err(ElfError::NoteDescPastSegment { ph: 5, filesz: 35, want: 36 })
    );
    let e = Image::hvt().build();
    assert_eq!(load_note(&e, ABI1_NOTE_TYPE, 4, 15), Err(ElfError::NoteDescsz { ph: 5, descsz: 16, max: 15 }));
}

/// Solo5's `buggyelf` test: an MFT1 note whose `n_descsz` (1) is smaller
/// than the 4 bytes of padding that align its content.
#[test]
fn buggyelf_descsz_smaller_than_padding() {
    let mut e = Image::hvt().build();
    let mft_note = NOTE_OFF as usize;
    e[mft_note + 4..mft_note + 8].copy_from_slice(&1u32.to_le_bytes());
    let err = load_note(&e, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE).unwrap_err();
    assert_eq!(err, ElfError::NoteSizeUnderflow { ph: 6, size: u64::MAX - 2, descsz: 1 });
    assert_eq!(
        alloc::format!("{err}"),
        "INV_EXE: phdr[6] note does not fall within valid size (18446744073709551613 <= 0 || 18446744073709551613 > 1)"
    );
    // descsz equal to the padding leaves nothing: refused too.
    e[mft_note + 4..mft_note + 8].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        load_note(&e, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE),
        Err(ElfError::NoteSizeUnderflow { size: 0, .. })
    ));
}

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Interesting values for integer fields: boundaries around the rules.
const SPECIAL: [u64; 12] = [0, 1, 11, 12, 19, 20, 0xfff, 0x1000, 0x10_0000, MEM, i64::MAX as u64 + 1, u64::MAX];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut e = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        if e.is_empty() {
            return e;
        }
        match rng.below(6) {
            0 => {
                let i = rng.below(e.len());
                e[i] = rng.next() as u8;
            }
            1 => {
                // An integer field in the header or a program header.
                let i = rng.below(64 + 7 * 56 - 8) & !3;
                let v = SPECIAL[rng.below(SPECIAL.len())].wrapping_add(rng.below(3) as u64).wrapping_sub(1);
                if i + 8 <= e.len() {
                    e[i..i + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            2 => {
                let n = rng.below(e.len());
                e.truncate(n);
            }
            3 => {
                // Note headers.
                let i = (NOTE_OFF as usize + rng.below(0x100)) & !3;
                if i + 4 <= e.len() {
                    let v = SPECIAL[rng.below(SPECIAL.len())] as u32;
                    e[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            4 => {
                let i = rng.below(e.len());
                e[i] ^= 1 << rng.below(8);
            }
            _ => e.extend(core::iter::repeat_n(rng.next() as u8, rng.below(64))),
        }
    }
    e
}

/// Whatever the bytes, the loader returns a result, and a plan it returns
/// obeys its own invariants.
#[test]
fn randomized_mutations_never_panic() {
    let base = Image::hvt().build();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut loaded = 0;
    for _ in 0..200_000 {
        let e = mutate(&mut rng, &base);
        let _ = load_note(&e, ABI1_NOTE_TYPE, ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE);
        if let Ok(Some(m)) = load_note(&e, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE) {
            let _ = solo5_abi::mft::validate(m);
        }
        if let Ok(plan) = load_plan(&e, MEM, BASE) {
            loaded += 1;
            assert!(plan.entry >= BASE && plan.entry < MEM);
            for s in &plan.segments {
                assert!(s.prot_start >= BASE && s.prot_start <= s.vaddr);
                assert!(s.vaddr + s.memsz <= s.prot_end && s.prot_end <= MEM);
                assert!(s.prot_start % PAGE_SIZE == 0 && s.prot_end % PAGE_SIZE == 0);
                assert_eq!(plan.file_bytes(&e, s).len() as u64, s.filesz);
                assert!(!(s.prot.write && s.prot.exec));
                assert!(s.prot_end <= plan.kernel_end);
            }
            for w in plan.segments.windows(2) {
                assert!(w[0].prot_end <= w[1].prot_start, "segments overlap");
            }
        }
    }
    assert!(loaded > 1000, "the mutations should leave many images loadable ({loaded})");
}
