//! Findings of the fuzzer outside the fuzz workspace, each kept as a test
//! of the fix.

use mirage_fuzz_harness::seeds::{Layout, executable};
use solo5_abi::mft::{self, MftType};
use solo5_abi::note::{MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE, MFT1_NOTE_TYPE};

/// Solo5 reads the MFT1 note into a buffer of its own, so a note at a
/// file offset that is not a multiple of 8 loads. `tender::exe::manifest`
/// (and `solo5-elftool query-manifest`) checked the note in place with
/// `mft::validate`, which cannot look at misaligned entries, and said
/// "Solo5 manifest is invalid"; they read it with `mft::read` now.
#[test]
fn a_manifest_note_at_an_offset_not_a_multiple_of_8_loads() {
    let exe = executable(Layout { target: 1, manifest: true, mft_skew: 4 }, &[("service", MftType::NetBasic)]);
    let note = solo5_elf::load_note(&exe, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE).unwrap().unwrap();
    assert_ne!(note.as_ptr() as usize % 8, 0, "the note is misaligned in memory");
    assert_eq!(mft::read(note).unwrap().entries().len(), 2, "Solo5's rules accept it");
    let loaded = tender::exe::manifest("unaligned", &exe);
    assert!(loaded.is_ok(), "the tender refuses it: {}", loaded.unwrap_err());
}
