//! The manifest: `solo5_abi::mft` on untrusted bytes.

use solo5_abi::mft::{
    self, MFT_ENTRY_SIZE, MFT_HEADER_SIZE, MFT_MAX_ENTRIES, MFT_NAME_MAX, MftEntry, MftError, MftType,
};

/// The input is a manifest (an MFT1 note's content) and, when it is text,
/// a manifest source.
pub fn run(data: &[u8]) {
    check(data);
    if let Ok(text) = std::str::from_utf8(data) {
        check_source(text);
    }
}

/// What must hold for any manifest bytes:
/// - `read` gives the same verdict at every alignment of the bytes, and
///   `validate` the same as `read` or `Misaligned`;
/// - an accepted manifest obeys every rule, element by element;
/// - lookups by name and index agree with the entries.
pub fn check(bytes: &[u8]) {
    let verdict = mft::read(bytes).map(|m| m.entries().to_vec());
    let mut storage = vec![0u64; bytes.len() / 8 + 2];
    for shift in 0..8 {
        let buf = &mut zerocopy::IntoBytes::as_mut_bytes(&mut storage[..])[shift..shift + bytes.len()];
        buf.copy_from_slice(bytes);
        let shifted = mft::read(buf).map(|m| m.entries().to_vec());
        assert_eq!(shifted, verdict, "read depends on the alignment of its input (shift {shift})");
        match mft::validate(buf) {
            Err(MftError::Misaligned) => assert_ne!(buf.as_ptr() as usize % 8, 0, "Misaligned for aligned entries"),
            in_place => assert_eq!(in_place.map(<[MftEntry]>::to_vec), verdict, "validate and read disagree"),
        }
    }
    let _ = verdict.as_ref().map_err(|e| e.to_string());
    let Ok(entries) = verdict else { return };
    assert_eq!(bytes.len(), MFT_HEADER_SIZE + entries.len() * MFT_ENTRY_SIZE);
    assert!((1..=MFT_MAX_ENTRIES as usize).contains(&entries.len()));
    assert_eq!(entries[0].mtype, MftType::ReservedFirst as u32);
    assert_eq!(entries[0].name[0], 0);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.name[MFT_NAME_MAX], 0);
        assert_eq!(e.attached, 0);
        let name = e.name_str();
        assert!(name.len() <= MFT_NAME_MAX);
        assert!(e.name_is(name), "entry {i}: name_is does not match name_str {name:?}");
        let _ = format!("{e:?}");
        for t in [MftType::BlockBasic, MftType::NetBasic, MftType::ReservedFirst] {
            let by_index = mft::get_by_index(&entries, i as u64, t);
            assert_eq!(by_index.is_some(), e.mtype == t as u32);
            // The first entry of that name and type comes first.
            if let Some(j) = mft::find_by_name(&entries, name, t) {
                assert!(j <= i || e.mtype != t as u32);
                assert_eq!(entries[j].mtype, t as u32);
            }
        }
    }
    assert!(mft::get_by_index(&entries, entries.len() as u64, MftType::NetBasic).is_none());
}

/// The manifest source `solo5-elftool gen-manifest` reads (JSON), when the
/// input is text. An accepted source makes a binary manifest that
/// [`check`] and `mft::read` accept with the same devices, and the JSON
/// `solo5-elftool query-manifest` prints for it reads back as the same
/// devices: source, binary and query output agree.
pub fn check_source(text: &str) {
    use tender::elftool::{manifest_json, parse_manifest};
    let Ok(devices) = parse_manifest(text, "fuzz.json") else { return };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&mft::MFT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(devices.len() as u32 + 1).to_le_bytes());
    bytes.extend_from_slice(zerocopy::IntoBytes::as_bytes(&MftEntry::reserved_first()));
    for d in &devices {
        bytes.extend_from_slice(zerocopy::IntoBytes::as_bytes(&MftEntry::device(&d.name, d.mtype)));
    }
    check(&bytes);
    let copy = mft::read(&bytes).expect("the manifest of an accepted source is valid");
    let listed: Vec<_> = copy.entries()[1..].iter().map(|e| (e.name_str().to_string(), e.mtype)).collect();
    let declared: Vec<_> = devices.iter().map(|d| (d.name.clone(), d.mtype as u32)).collect();
    assert_eq!(listed, declared);
    let query = manifest_json(copy.entries());
    let again = parse_manifest(&query, "query.json")
        .unwrap_or_else(|e| panic!("query-manifest output does not parse: {e}\n{query}"));
    assert_eq!(again, devices, "query-manifest output reads back as other devices");
}
