//! Block devices (`Mirage_block`): fixed-size sectors, read and written in
//! runs.

use core::fmt;

/// What a block device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockInfo {
    /// Bytes per sector: a power of two, at least 512.
    pub sector_size: u32,
    /// Number of sectors.
    pub sectors: u64,
    /// Whether writes are refused.
    pub read_only: bool,
}

impl BlockInfo {
    /// A device description.
    pub const fn new(sector_size: u32, sectors: u64, read_only: bool) -> BlockInfo {
        BlockInfo { sector_size, sectors, read_only }
    }

    /// The size in bytes.
    pub const fn capacity(&self) -> u64 {
        self.sectors * self.sector_size as u64
    }

    /// Checks a request of `len` bytes at `sector`: a whole number of
    /// sectors, inside the device.
    pub fn check(&self, sector: u64, len: usize) -> Result<(), Error> {
        let ss = self.sector_size as u64;
        if len == 0 || !(len as u64).is_multiple_of(ss) {
            return Err(Error::Misaligned);
        }
        match sector.checked_add(len as u64 / ss) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(Error::OutOfRange),
        }
    }
}

/// Why a block operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The request reaches past the last sector.
    OutOfRange,
    /// The buffer is empty or not a whole number of sectors.
    Misaligned,
    /// The device is read-only.
    ReadOnly,
    /// The host failed.
    Io,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::OutOfRange => "request past the end of the device",
            Error::Misaligned => "buffer is not a whole number of sectors",
            Error::ReadOnly => "device is read-only",
            Error::Io => "block I/O failed",
        })
    }
}

/// A block device.
pub trait Block {
    /// Sector size, sector count, read-only flag.
    fn info(&self) -> BlockInfo;

    /// Reads `buf.len()` bytes (whole sectors) starting at `sector`.
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error>;

    /// Writes `data` (whole sectors) starting at `sector`.
    async fn write(&self, sector: u64, data: &[u8]) -> Result<(), Error>;

    /// Waits until everything written is on stable storage.
    async fn flush(&self) -> Result<(), Error>;

    /// Writes `data` at `sector`, then flushes: what a commit does last.
    /// A device that can do both in one request overrides it (on hvt, one
    /// exit instead of two).
    async fn write_and_flush(&self, sector: u64, data: &[u8]) -> Result<(), Error> {
        self.write(sector, data).await?;
        self.flush().await
    }
}

impl<B: Block> Block for &B {
    fn info(&self) -> BlockInfo {
        (**self).info()
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        (**self).read(sector, buf).await
    }
    async fn write(&self, sector: u64, data: &[u8]) -> Result<(), Error> {
        (**self).write(sector, data).await
    }
    async fn flush(&self) -> Result<(), Error> {
        (**self).flush().await
    }
    async fn write_and_flush(&self, sector: u64, data: &[u8]) -> Result<(), Error> {
        (**self).write_and_flush(sector, data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let i = BlockInfo::new(512, 8, false);
        assert_eq!(i.capacity(), 4096);
        assert_eq!(i.check(0, 512), Ok(()));
        assert_eq!(i.check(7, 512), Ok(()));
        assert_eq!(i.check(0, 4096), Ok(()));
        assert_eq!(i.check(8, 512), Err(Error::OutOfRange));
        assert_eq!(i.check(7, 1024), Err(Error::OutOfRange));
        assert_eq!(i.check(u64::MAX, 512), Err(Error::OutOfRange));
        assert_eq!(i.check(0, 0), Err(Error::Misaligned));
        assert_eq!(i.check(0, 100), Err(Error::Misaligned));
    }
}
