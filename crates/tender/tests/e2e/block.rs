//! Block devices: I/O that round-trips through a real file, and backing
//! files the tenders refuse with Solo5's messages.

use crate::{Case, Needs, case};
use testkit::{Scratch, boot};

pub fn cases(v: &mut Vec<Case>) {
    for t in ["hvt", "spt"] {
        let n = Needs::Target(t);
        // `--block-dsync:` (not Solo5's) attaches the same way, and grants
        // the guest flushes: its later writes go through the tender's
        // second descriptor (hvt) or its own (spt), which must reach the
        // same file.
        for (sector, attach, what) in
            [(512u64, "--block", ""), (4096, "--block", ""), (4096, "--block-dsync", "_with_dsync")]
        {
            v.push(case(format!("{t}::block_round_trips_{sector}_byte_sectors{what}"), n, move || {
                let dir = Scratch::new("blk");
                let disk = dir.file("disk.img", 4 << 20);
                let opt = format!("{attach}:storage={}", disk.display());
                let size = format!("--block-sector-size:storage={sector}");
                let r = boot(t, &[&opt, &size], "blk", &["--solo5:quiet"])?;
                r.expect_status(0)?;
                r.expect_stdout("SUCCESS")?;
                r.expect_stdout(if attach == "--block-dsync" { "flush: granted" } else { "flush: not granted" })?;
                // The data is really in the file: block 10 holds its
                // pattern (written before the flush), the last block and
                // block 2's run theirs (after it).
                let bytes = std::fs::read(&disk).map_err(|e| e.to_string())?;
                let ss = sector as usize;
                let pattern = |k: u8, len: usize| -> Vec<u8> {
                    (0..len).map(|i| k.wrapping_mul(31).wrapping_add(i as u8)).collect()
                };
                let last = bytes.len() - ss;
                for (what, at, want) in [
                    ("block 10", 10 * ss, pattern(10, ss)),
                    ("the last block", last, pattern(0xff, ss)),
                    ("the run at block 2", 2 * ss, pattern(7, 4 * ss)),
                    ("the run of 7 blocks at block 20", 20 * ss, pattern(20, 7 * ss)),
                    ("block 31, written and flushed at once", 31 * ss, pattern(0x5a, ss)),
                    ("the run of 300 blocks at block 400", 400 * ss, pattern(400u64 as u8, 300 * ss)),
                ] {
                    if bytes[at..at + want.len()] != want[..] {
                        return Err(format!("{what} of the backing file does not hold the written pattern"));
                    }
                }
                Ok(())
            }));
        }
        v.push(case(format!("{t}::block_misaligned_backing_file_is_refused"), n, move || {
            let dir = Scratch::new("blk");
            let disk = dir.file("disk.img", 6 << 10);
            let r = boot(
                t,
                &[&format!("--block:storage={}", disk.display()), "--block-sector-size:storage=4096"],
                "blk",
                &[],
            )?;
            r.expect_status(1)?;
            r.expect_stderr("storage: Backing storage size must be block aligned (4096 bytes)")
        }));
        v.push(case(format!("{t}::block_too_small_backing_file_is_refused"), n, move || {
            let dir = Scratch::new("blk");
            let disk = dir.file("disk.img", 0);
            let r = boot(t, &[&format!("--block:storage={}", disk.display())], "blk", &[])?;
            r.expect_status(1)?;
            r.expect_stderr("storage: Backing storage must be at least 1 block (512 bytes) in size")
        }));
        for bad in ["521", "256", "0", "65536", "x"] {
            v.push(case(format!("{t}::block_sector_size_{bad}_is_refused"), n, move || {
                let dir = Scratch::new("blk");
                let disk = dir.file("disk.img", 1 << 20);
                let opt = format!("--block-sector-size:storage={bad}");
                let r = boot(t, &[&format!("--block:storage={}", disk.display()), &opt], "blk", &[])?;
                r.expect_status(1)?;
                if bad != "x" {
                    r.expect_stderr("Block size must be a multiple of 2 greater than or equal 512")?;
                }
                r.expect_stderr(&format!("Invalid option: `{opt}'"))
            }));
        }
        // Started with standard input and output closed, the tender must
        // not let the disk take descriptor 1: the guest's console writes
        // would go to the end of the disk's file (on spt the filter allows
        // writes to descriptor 1 of any length), growing it without bound.
        v.push(case(format!("{t}::closed_standard_descriptors_never_make_the_console_a_disk"), n, move || {
            use std::os::unix::process::CommandExt;
            let dir = Scratch::new("blk");
            let disk = dir.file("disk.img", 4 << 20);
            let mut c = std::process::Command::new(testkit::tender(t));
            c.arg(format!("--block:storage={}", disk.display())).arg(testkit::guest(t, "blk")?);
            // SAFETY: close(2) only, between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    libc::close(0);
                    libc::close(1);
                    Ok(())
                });
            }
            let r = testkit::run_with(c, std::time::Duration::from_secs(60))?;
            r.expect_status(0)?;
            let len = std::fs::metadata(&disk).map_err(|e| e.to_string())?.len();
            if len != 4 << 20 {
                return Err(format!("the disk's file is {len} bytes, not {}: the console wrote into it", 4 << 20));
            }
            Ok(())
        }));
        // A sector size preset in the image's manifest is checked as the
        // option's is: the image's own word is no better than the user's.
        v.push(case(format!("{t}::a_manifest_sector_size_that_is_no_power_of_two_is_refused"), n, move || {
            let dir = Scratch::new("blk");
            let disk = dir.file("disk.img", 1 << 20);
            let mut image = std::fs::read(testkit::guest(t, "blk")?).map_err(|e| e.to_string())?;
            // The manifest entry named "storage": its 68-byte name, the
            // type, then `u.block_basic` (capacity, then the sector size).
            let name = b"storage\0";
            let at = image.windows(name.len()).position(|w| w == name).ok_or("no entry named storage")?;
            image[at + 80..at + 82].copy_from_slice(&1536u16.to_le_bytes());
            let patched = dir.0.join("blk-1536");
            std::fs::write(&patched, &image).map_err(|e| e.to_string())?;
            let mut c = std::process::Command::new(testkit::tender(t));
            c.arg(format!("--block:storage={}", disk.display())).arg(&patched);
            let r = testkit::run_with(c, std::time::Duration::from_secs(60))?;
            r.expect_status(1)?;
            r.expect_stderr("storage: the image's manifest sets a sector size of 1536 bytes: it must be a power of two from 512 to 32768")
        }));
        v.push(case(format!("{t}::block_missing_file_is_refused"), n, move || {
            let r = boot(t, &["--block:storage=/nonexistent/disk.img"], "blk", &[])?;
            r.expect_status(1)?;
            r.expect_stderr("Could not open block device: /nonexistent/disk.img: No such file or directory")
        }));
    }
}
