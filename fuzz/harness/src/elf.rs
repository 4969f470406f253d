//! The ELF loader (`solo5_elf::load_plan`) and the note readers the
//! tenders run on an executable (`tender::exe::abi`, `tender::exe::manifest`).

use solo5_abi::hvt::{GUEST_MAX_MEM_SIZE, GUEST_MIN_BASE};
use solo5_abi::mft;
use solo5_abi::note::{
    ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE, ABI1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE, MFT1_NOTE_TYPE,
};
use solo5_elf::{LoadPlan, PAGE_SIZE, load_note, load_plan};

/// The smallest guest memory a tender gives (`--mem=2`).
const SMALL_MEM: u64 = 2 << 20;

/// The input is an executable.
pub fn run(data: &[u8]) {
    let small = load_plan(data, SMALL_MEM, GUEST_MIN_BASE);
    let large = load_plan(data, GUEST_MAX_MEM_SIZE, GUEST_MIN_BASE);
    for (plan, mem) in [(&small, SMALL_MEM), (&large, GUEST_MAX_MEM_SIZE)] {
        match plan {
            Ok(plan) => check_plan(data, plan, mem),
            Err(e) => drop(e.to_string()),
        }
    }
    // Every rule bounds addresses by the memory size from above: more
    // memory never refuses an executable that loads in less, nor changes
    // how it loads.
    if let Ok(plan) = &small {
        assert_eq!(large.as_ref(), Ok(plan), "loads in 2 MiB but not the same way in 4 GiB");
    }
    notes(data);
}

/// What a plan promises the tender, which copies and protects memory by it
/// without further checks.
fn check_plan(data: &[u8], plan: &LoadPlan, mem: u64) {
    assert!((GUEST_MIN_BASE..mem).contains(&plan.entry), "entry {:#x} outside the guest", plan.entry);
    let mut last_end = 0;
    for s in &plan.segments {
        assert!(s.prot_start >= GUEST_MIN_BASE && s.prot_start <= s.vaddr, "{s:?}");
        assert!(s.filesz <= s.memsz && s.filesz > 0, "{s:?}");
        let mem_end = s.vaddr.checked_add(s.memsz).expect("segment end overflows");
        assert!(mem_end <= s.prot_end && s.prot_end <= mem, "{s:?} past memory {mem:#x}");
        assert_eq!(s.prot_start % PAGE_SIZE, 0, "{s:?}");
        assert_eq!(s.prot_end % PAGE_SIZE, 0, "{s:?}");
        assert!(!(s.prot.write && s.prot.exec), "{s:?} is writable and executable");
        assert!(s.prot_start >= last_end, "{s:?} overlaps a segment before it");
        last_end = s.prot_end;
        let bytes = plan.file_bytes(data, s);
        assert_eq!(bytes.len() as u64, s.filesz, "{s:?}");
        let at = s.file_offset as usize;
        assert_eq!(bytes, &data[at..at + bytes.len()]);
    }
    assert_eq!(plan.kernel_end, last_end);
}

/// Whether `part` lies inside `whole`.
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

/// The notes, read as the tenders and `solo5-elftool` read them.
fn notes(data: &[u8]) {
    let abi = load_note(data, ABI1_NOTE_TYPE, ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE);
    match &abi {
        Ok(Some(n)) => assert!(!n.is_empty() && n.len() <= ABI1_NOTE_MAX_SIZE && within(n, data)),
        Ok(None) => {}
        Err(e) => drop(e.to_string()),
    }
    assert_eq!(tender::exe::abi("fuzz", data).is_ok(), matches!(abi, Ok(Some(_))));

    let note = load_note(data, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE);
    let tender = tender::exe::manifest("fuzz", data);
    let Ok(Some(n)) = note else {
        assert!(tender.is_err());
        return;
    };
    assert!(!n.is_empty() && n.len() <= MFT1_NOTE_MAX_SIZE && within(n, data));
    crate::manifest::check(n);
    // The tender accepts exactly the manifests Solo5 does, at any offset
    // (fuzz/regressions/elf/manifest-at-unaligned-offset).
    let solo5 = mft::read(n).map(|m| m.entries().to_vec());
    assert_eq!(tender.as_ref().ok(), solo5.as_ref().ok(), "the tender and mft::read disagree");
}
