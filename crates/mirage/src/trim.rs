//! Trimming a Solo5 image after the link: the section headers and the
//! section-name table, which no loader reads (Solo5's tenders load by
//! program headers and find the notes through PT_NOTE), are cut off the
//! end of the file, as `sstrip` does. A small unikernel loses a few KiB:
//! for hello, a twentieth of its size.

/// The image without what follows its last segment, and with no section
/// headers; `None` if `elf` is not a 64-bit little-endian ELF file whose
/// section headers come after every segment (then it is left as it is).
pub fn strip_section_headers(elf: &[u8]) -> Option<Vec<u8>> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if elf.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let shoff = u64_at(0x28)?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize != 56 || phnum == 0 {
        return None;
    }
    let mut end = phoff.checked_add(phentsize.checked_mul(phnum)?)?;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let offset = usize::try_from(u64_at(ph + 8)?).ok()?;
        let filesz = usize::try_from(u64_at(ph + 32)?).ok()?;
        // A segment with nothing in the file (bss) may point anywhere.
        if filesz > 0 {
            end = end.max(offset.checked_add(filesz)?);
        }
    }
    if end > elf.len() || (shoff != 0 && (shoff as usize) < end) {
        return None;
    }
    let mut out = elf[..end].to_vec();
    // e_shoff, then e_shentsize, e_shnum and e_shstrndx.
    out[0x28..0x30].fill(0);
    out[0x3a..0x40].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::strip_section_headers;

    /// An ELF header, one program header covering `[0x1000, 0x1000 + 16)`
    /// and one of a bss segment (nothing in the file, offset 0x2000), 16
    /// bytes of segment, then `tail` bytes of section data and headers.
    fn image(tail: usize) -> Vec<u8> {
        let mut e = vec![0u8; 0x1010 + tail];
        e[64 + 56 + 8..64 + 56 + 16].copy_from_slice(&0x2000u64.to_le_bytes());
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x28..0x30].copy_from_slice(&0x1010u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        e[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        e[64 + 8..64 + 16].copy_from_slice(&0x1000u64.to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&16u64.to_le_bytes());
        e
    }

    #[test]
    fn cuts_what_follows_the_last_segment() {
        let e = image(200);
        let t = strip_section_headers(&e).unwrap();
        assert_eq!(t.len(), 0x1010);
        assert_eq!(&t[..0x28], &e[..0x28]);
        assert!(t[0x28..0x30].iter().all(|&b| b == 0) && t[0x3a..0x40].iter().all(|&b| b == 0));
        assert_eq!(&t[64..64 + 112], &e[64..64 + 112]);
    }

    #[test]
    fn leaves_what_it_does_not_understand() {
        assert_eq!(strip_section_headers(b"not an elf"), None);
        let mut e = image(200);
        e[4] = 1; // 32-bit
        assert_eq!(strip_section_headers(&e), None);
        let mut e = image(200);
        e[0x28..0x30].copy_from_slice(&0x100u64.to_le_bytes()); // sections inside a segment
        assert_eq!(strip_section_headers(&e), None);
        let mut e = image(0);
        e.truncate(0x1008); // a segment past the end of the file
        assert_eq!(strip_section_headers(&e), None);
    }
}
