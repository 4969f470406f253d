//! Block devices (`solo5_block_*`).
//!
//! Solo5's API reads and writes one block per call. These functions take any
//! whole number of blocks: on hvt the run goes to the tender in one
//! hypercall (the hvt tender accepts any length within the device), on spt
//! it is split into one system call per block, the most the seccomp filter
//! allows.

use solo5_abi::mft::{self, MftType};

use super::{boot, platform};
use crate::Error;

/// What the tender attached for a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Size in bytes.
    pub capacity: u64,
    /// Size of a block in bytes (a power of two, at least 512).
    pub block_size: u64,
}

/// An acquired block device.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    handle: u64,
    fd: i32,
    info: BlockInfo,
}

impl Block {
    /// Acquires the device the manifest names `name`.
    pub fn acquire(name: &str) -> Result<Block, Error> {
        let entries = boot().mft;
        let i = mft::find_by_name(entries, name, MftType::BlockBasic).ok_or(Error::Invalid)?;
        let e = &entries[i];
        let bs = e.block_size() as u64;
        if e.attached == 0 || bs == 0 || !bs.is_power_of_two() {
            return Err(Error::Invalid);
        }
        Ok(Block { handle: i as u64, fd: e.hostfd(), info: BlockInfo { capacity: e.block_capacity(), block_size: bs } })
    }

    /// The device's size and block size.
    pub fn info(&self) -> BlockInfo {
        self.info
    }

    /// The handle (manifest index).
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// `offset` must be block-aligned, `len` a non-zero multiple of the
    /// block size, and the range inside the device.
    fn check(&self, offset: u64, len: usize) -> Result<(), Error> {
        let bs = self.info.block_size;
        let len = len as u64;
        if len == 0 || len % bs != 0 || offset % bs != 0 {
            return Err(Error::Invalid);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.info.capacity => Ok(()),
            _ => Err(Error::Invalid),
        }
    }

    /// Reads whole blocks at byte `offset` into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check(offset, buf.len())?;
        platform::block_read(self.handle, self.fd, self.info.block_size, offset, buf)
    }

    /// Writes whole blocks from `data` at byte `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        platform::block_write(self.handle, self.fd, self.info.block_size, offset, data)
    }
}
