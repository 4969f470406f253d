//! A block device on a file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use mirage_devices::block::{Block, BlockInfo, Error};

/// A file as a block device of `sector_size` sectors. A file whose size is
/// not a whole number of sectors is refused, as the Solo5 tenders do.
#[derive(Debug)]
pub struct FileBlock {
    file: File,
    info: BlockInfo,
}

impl FileBlock {
    /// Opens `path` (read-write unless `read_only`).
    pub fn open(path: &Path, sector_size: u32, read_only: bool) -> std::io::Result<FileBlock> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        if sector_size < 512 || !sector_size.is_power_of_two() {
            return Err(invalid(format!("sector size {sector_size} is not a power of two of at least 512")));
        }
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = file.metadata()?.len();
        if len % sector_size as u64 != 0 {
            return Err(invalid(format!(
                "{}: size {len} is not a multiple of {sector_size}-byte sectors",
                path.display()
            )));
        }
        if len == 0 {
            return Err(invalid(format!("{}: empty file", path.display())));
        }
        Ok(FileBlock { file, info: BlockInfo::new(sector_size, len / sector_size as u64, read_only) })
    }
}

impl Block for FileBlock {
    fn info(&self) -> BlockInfo {
        self.info
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.info.check(sector, buf.len())?;
        self.file.read_exact_at(buf, sector * self.info.sector_size as u64).map_err(|_| Error::Io)
    }

    async fn write(&self, sector: u64, data: &[u8]) -> Result<(), Error> {
        if self.info.read_only {
            return Err(Error::ReadOnly);
        }
        self.info.check(sector, data.len())?;
        self.file.write_all_at(data, sector * self.info.sector_size as u64).map_err(|_| Error::Io)
    }

    async fn flush(&self) -> Result<(), Error> {
        if self.info.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|_| Error::Io)
    }
}
