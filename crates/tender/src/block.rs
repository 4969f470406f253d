//! Block devices: a file (or a host block device) opened read-write.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use crate::{Exit, fatal, strerror};

/// The default sector size when `--block-sector-size` is not given.
pub const DEFAULT_BLOCK_SIZE: u16 = 512;

/// `block_attach`: opens `path` read-write and returns it with its size.
///
/// Solo5's block interface has no flush: a write is done when it is in the
/// host's page cache, which survives the guest and the tender being killed
/// but not the host losing power. With `dsync` (`--block-dsync:`, this
/// tender's own option) the file is opened `O_DSYNC`, so that each write
/// (the guest's `pwrite64` on spt, the tender's on hvt) returns only once
/// its data is on stable storage.
pub fn attach(path: &str, dsync: bool) -> Result<(File, u64), Exit> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if dsync { libc::O_DSYNC } else { 0 })
        .open(path)
        .map_err(|e| fatal!("Could not open block device: {path}: {}", strerror(&e)))?;
    let capacity =
        file.seek(SeekFrom::End(0)).map_err(|e| fatal!("{path}: Could not determine capacity: {}", strerror(&e)))?;
    Ok((file, capacity))
}

/// Whether `size` is a valid sector size: a power of two of at least 512.
pub fn valid_block_size(size: u64) -> bool {
    size >= 512 && size <= u16::MAX as u64 && size.is_power_of_two()
}

/// Checks a device's size against its sector size, with Solo5's messages.
pub fn check_capacity(name: &str, capacity: u64, block_size: u16) -> Result<(), Exit> {
    if capacity & (block_size as u64 - 1) != 0 {
        return Err(fatal!("{name}: Backing storage size must be block aligned ({block_size} bytes)"));
    }
    if capacity < block_size as u64 {
        return Err(fatal!("{name}: Backing storage must be at least 1 block ({block_size} bytes) in size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_sizes() {
        for ok in [512, 1024, 4096, 32768] {
            assert!(valid_block_size(ok));
        }
        for bad in [0, 256, 511, 521, 3000, 65536, 1 << 20] {
            assert!(!valid_block_size(bad), "{bad}");
        }
    }

    #[test]
    fn capacity_rules() {
        assert!(check_capacity("s", 4 << 20, 512).is_ok());
        assert!(
            matches!(check_capacity("s", 6 << 10, 4096), Err(Exit::Fatal(m)) if m == "s: Backing storage size must be block aligned (4096 bytes)")
        );
        assert!(
            matches!(check_capacity("s", 0, 512), Err(Exit::Fatal(m)) if m.contains("at least 1 block (512 bytes)"))
        );
    }

    #[test]
    fn attach_reports_missing_files() {
        let e = attach("/nonexistent/disk.img", false).unwrap_err();
        assert!(
            matches!(e, Exit::Fatal(m) if m == "Could not open block device: /nonexistent/disk.img: No such file or directory")
        );
    }

    #[test]
    fn dsync_opens_the_file_o_dsync() {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("tender-dsync-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        for dsync in [false, true] {
            let (file, capacity) = attach(path.to_str().unwrap(), dsync).unwrap();
            assert_eq!(capacity, 4096);
            // SAFETY: F_GETFL on a descriptor this test owns reads its flags only.
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(flags & libc::O_DSYNC == libc::O_DSYNC, dsync);
        }
        std::fs::remove_file(&path).unwrap();
    }
}
