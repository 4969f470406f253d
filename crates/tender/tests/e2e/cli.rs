//! Bad command lines, undeclared and missing devices, malformed executables
//! and manifests: Solo5's messages, status 1, and never a panic.

use crate::{Case, Needs, case};
use testkit::{Scratch, boot, guest, run, tender};

fn expect_fatal(r: &testkit::Run, message: &str) -> Result<(), String> {
    if r.stderr.contains("panicked") {
        return Err(format!("the tender panicked\n{}", r.dump()));
    }
    r.expect_status(1)?;
    r.expect_stderr(message)
}

/// Offset of the MFT1 note header in an image: the 12-byte `Elf64_Nhdr`
/// whose type is "MFT1", followed by the name "Solo5".
fn mft1_note(bytes: &[u8]) -> Option<usize> {
    bytes.windows(16).position(|w| w[0..4] == [6, 0, 0, 0] && &w[8..12] == b"MFT1" && &w[12..16] == b"Solo")
}

pub fn cases(v: &mut Vec<Case>) {
    for t in ["hvt", "spt"] {
        let n = Needs::Target(t);
        let other = if t == "hvt" { "spt" } else { "hvt" };
        v.push(case(format!("{t}::cli_errors"), n, move || {
            let bin = tender(t);
            let r = run(&bin, &["--mem=64"])?;
            expect_fatal(&r, "Missing KERNEL operand")?;
            r.expect_stderr("usage:")?;
            let hello = guest(t, "hello")?;
            let h = hello.to_str().unwrap_or_default();
            let r = run(&bin, &["--foo", h])?;
            expect_fatal(&r, "Invalid option: `--foo'")?;
            r.expect_stderr("usage:")?;
            for m in ["--mem=0", "--mem=abc", "--mem=", "--mem=-8"] {
                expect_fatal(&run(&bin, &[m, h])?, "Malformed argument to --mem")?;
            }
            expect_fatal(
                &run(&bin, &["/nonexistent.hvt"])?,
                "/nonexistent.hvt: Could not open: No such file or directory",
            )?;
            let long = "x".repeat(8192);
            expect_fatal(&run(&bin, &[h, &long])?, "Guest command line too long (max=8191 characters)")?;
            // Options after the kernel belong to the guest.
            let r = run(&bin, &[h, "--foo"])?;
            r.expect_status(0)?;
            r.expect_stdout("Command line is: '--foo'")
        }));
        v.push(case(format!("{t}::undeclared_and_missing_devices"), n, move || {
            let r = boot(t, &["--net:foo=tap0"], "hello", &[])?;
            expect_fatal(&r, "Resource not declared in manifest: 'foo'")?;
            r.expect_stderr("Invalid option: `--net:foo=tap0'")?;
            let r = boot(t, &["--block:storage=/dev/null"], "hello", &[])?;
            expect_fatal(&r, "Resource not declared in manifest: 'storage'")?;
            let r = boot(t, &[], "blk", &[])?;
            expect_fatal(&r, "Device 'storage' of type BLOCK_BASIC declared but not attached.")?;
            r.expect_stderr("All declared devices must be attached. See --help for syntax.")?;
            let r = boot(t, &[], "net", &[])?;
            expect_fatal(&r, "Device 'service' of type NET_BASIC declared but not attached.")?;
            // A tap that cannot be attached: the error and its fix, not the
            // usage (the option itself was right).
            let r = boot(t, &["--net:service=nosuchtap0"], "net", &[])?;
            expect_fatal(&r, "Could not attach interface: nosuchtap0: No such file or directory")?;
            r.expect_stderr(
                "  fix: create it (as root): ip tuntap add nosuchtap0 mode tap && ip link set nosuchtap0 up",
            )?;
            if r.stderr.contains("usage:") || r.stderr.contains("Invalid option") {
                return Err(format!("the usage follows an attach error:\n{}", r.dump()));
            }
            let r = boot(t, &["--net:service=averyveryverylongname"], "net", &[])?;
            expect_fatal(&r, "Could not attach interface: averyveryverylon")?;
            r.expect_stderr("  fix: name a tap device of at most 15 characters")?;
            let r = boot(t, &["--net-mac:service=02:00:00:00:00"], "net", &[])?;
            expect_fatal(&r, "Malformed MAC address for network service")
        }));
        v.push(case(format!("{t}::executable_for_the_other_target_is_refused"), n, move || {
            let g = guest(other, "hello")?;
            let r = run(tender(t), &[g])?;
            expect_fatal(&r, &format!("Executable is not for the solo5-{t} target"))
        }));
        v.push(case(format!("{t}::malformed_executables_are_refused"), n, move || {
            let dir = Scratch::new("elf");
            let good = std::fs::read(guest(t, "hello")?).map_err(|e| e.to_string())?;
            let bin = tender(t);
            let try_bytes = |name: &str, bytes: &[u8], message: &str| -> Result<(), String> {
                let p = dir.0.join(name);
                std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
                let r = run(&bin, &[&p])?;
                expect_fatal(&r, message).map_err(|e| format!("{name}: {e}"))
            };
            try_bytes("empty", b"", "invalid executable: elf header does not match the expected size (0 != 64)")?;
            try_bytes("script", b"#!/bin/sh\necho hi\n", "elf header does not match the expected size")?;
            let mut junk = vec![0u8; 4096];
            let mut x: u32 = 12345;
            for b in junk.iter_mut() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (x >> 16) as u8;
            }
            try_bytes("junk", &junk, "invalid or unsupported executable")?;
            try_bytes("truncated-header", &good[..40], "elf header does not match the expected size (40 != 64)")?;
            try_bytes("truncated-phdrs", &good[..100], "program header does not match the expected size")?;
            let mut elf32 = good.clone();
            elf32[4] = 1;
            try_bytes("elf32", &elf32, "invalid or unsupported executable")?;
            let note = mft1_note(&good).ok_or("no MFT1 note in hello")?;
            // Solo5's buggyelf: n_descsz smaller than the content's padding.
            let mut buggy = good.clone();
            buggy[note + 4..note + 8].copy_from_slice(&1u32.to_le_bytes());
            let ph = if t == "hvt" { 7 } else { 6 };
            try_bytes(
                "buggyelf",
                &buggy,
                &format!("INV_EXE: phdr[{ph}] note does not fall within valid size (18446744073709551613 <= 0 || 18446744073709551613 > 1)"),
            )?;
            let mut version = good.clone();
            version[note + 24] = 2;
            try_bytes("manifest-version", &version, "Solo5 manifest is invalid")?;
            let mut attached = good.clone();
            attached[note + 24 + 8 + 96] = 1;
            try_bytes("manifest-attached", &attached, "Solo5 manifest is invalid")?;
            let mut noabi = good.clone();
            let abi = noabi.windows(12).position(|w| w[0..4] == [6, 0, 0, 0] && &w[8..12] == b"ABI1").ok_or("no ABI1")?;
            noabi[abi + 8] = b'X';
            try_bytes("no-abi-note", &noabi, "No Solo5 ABI information found in executable")?;
            let mut abi_version = good.clone();
            abi_version[abi + 24] = 3;
            try_bytes("abi-version", &abi_version, "Executable requests unsupported ABI version 3")?;
            // Every prefix of the image is refused cleanly, or runs if it
            // holds every loaded segment (only symbols follow them).
            for len in (0..good.len()).step_by(good.len() / 64) {
                let p = dir.0.join("prefix");
                std::fs::write(&p, &good[..len]).map_err(|e| e.to_string())?;
                let r = run(&bin, &[&p])?;
                if !(r.status() == 1 || r.status() == 0) || r.stderr.contains("panicked") {
                    return Err(format!("prefix of {len} bytes: status {}\n{}", r.status(), r.dump()));
                }
            }
            Ok(())
        }));
    }
}
