//! Block devices: a file (or a host block device) opened read-write.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use crate::{Exit, fatal, strerror};

/// The default sector size when `--block-sector-size` is not given.
pub const DEFAULT_BLOCK_SIZE: u16 = 512;

/// A block device's host file(s).
#[derive(Debug)]
pub struct Attached {
    /// What the guest's reads and writes go to: opened `O_DSYNC` with
    /// `dsync`.
    pub file: File,
    /// Its size in bytes.
    pub capacity: u64,
    /// With `dsync`, the same file opened again without `O_DSYNC`, for a
    /// guest that asks for durability by flushing instead (see
    /// [`solo5_abi::mft::MftEntry::block_flush`]).
    pub flush: Option<File>,
}

/// `block_attach`: opens `path` read-write and returns it with its size.
///
/// Solo5's block interface has no flush: a write is done when it is in the
/// host's page cache, which survives the guest and the tender being killed
/// but not the host losing power. With `dsync` (`--block-dsync:`, this
/// tender's own option) every acknowledged write must reach stable
/// storage: the file is opened `O_DSYNC`, so that each write (the guest's
/// `pwrite64` on spt, the tender's on hvt) returns only once its data is
/// on the disk, which is what a guest that knows nothing of flushes gets;
/// and it is opened a second time without, for a guest that flushes: its
/// writes are cached and each flush is one `fdatasync`.
pub fn attach(path: &str, dsync: bool) -> Result<Attached, Exit> {
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| fatal!("Could not open block device: {path}: {}", strerror(&e)))
    };
    let mut file = open(if dsync { libc::O_DSYNC } else { 0 })?;
    let capacity =
        file.seek(SeekFrom::End(0)).map_err(|e| fatal!("{path}: Could not determine capacity: {}", strerror(&e)))?;
    let flush = if dsync { Some(open(0)?) } else { None };
    Ok(Attached { file, capacity, flush })
}

/// Syncs a block device's data to stable storage (a guest's flush).
pub fn sync(fd: i32) -> std::io::Result<()> {
    // SAFETY: fdatasync takes a descriptor and touches no memory.
    if unsafe { libc::fdatasync(fd) } < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether a request of `len` bytes at `offset` lies inside a device of
/// `capacity` bytes, and its end is a valid file offset (Solo5's check;
/// outside it a request is EINVAL).
pub fn in_range(offset: u64, len: u64, capacity: u64) -> bool {
    len <= isize::MAX as u64
        && offset < capacity
        && offset.checked_add(len).is_some_and(|end| end <= capacity && end <= i64::MAX as u64)
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
        // SAFETY: F_GETFL on a descriptor this test owns reads its flags only.
        let dsync_flag = |f: &File| unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) } & libc::O_DSYNC != 0;
        for dsync in [false, true] {
            let a = attach(path.to_str().unwrap(), dsync).unwrap();
            assert_eq!(a.capacity, 4096);
            assert_eq!(dsync_flag(&a.file), dsync);
            // The second descriptor, for flushing guests, is cached.
            assert_eq!(a.flush.as_ref().map(dsync_flag), dsync.then_some(false));
            if let Some(f) = &a.flush {
                sync(f.as_raw_fd()).unwrap();
            }
        }
        assert_eq!(sync(-1).unwrap_err().raw_os_error(), Some(libc::EBADF));
        std::fs::remove_file(&path).unwrap();
    }
}
