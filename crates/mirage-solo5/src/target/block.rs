//! Block devices (`solo5_block_*`).
//!
//! Solo5's API reads and writes one block per call. These functions take any
//! whole number of blocks: on hvt the run goes to the tender in one
//! hypercall (the hvt tender accepts any length within the device), on spt
//! it is split into one system call per block, the most the seccomp filter
//! allows.
//!
//! Solo5's interface has no flush: a write is done when the host has it in
//! its page cache. Our tenders grant a device attached with
//! `--block-dsync:` flushes (in its manifest entry, see
//! [`solo5_abi::mft::MftEntry::block_flush`]): [`Block::flush`] then syncs
//! it to stable storage, through the hvt tender's flush port or, on spt,
//! an `fdatasync` of the cached descriptor the tender gave, which the
//! guest's writes then go through. Without the grant (Solo5's tenders, or
//! `--block:`) `flush` returns at once, as it always did.

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
    flush: bool,
    /// The most bytes one read or write call may carry on spt: a block
    /// (Solo5's filter), or a run of 2^k blocks up to `BLOCK_RUN_MAX`
    /// through a descriptor our tender granted runs.
    max_call: u64,
    /// The tender takes a write and a flush as one request
    /// (`MftEntry::block_write_sync`): one exit instead of two on hvt.
    write_sync: bool,
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
        let info = BlockInfo { capacity: e.block_capacity(), block_size: bs };
        // With a grant, spt writes go through the descriptor it names (the
        // tender's own copy of the file opened without O_DSYNC); hvt's go
        // through the tender, which switches at the first flush.
        let (fd, flush) = match e.block_flush() {
            Some(flush_fd) if cfg!(feature = "spt") => (flush_fd, true),
            Some(_) => (e.hostfd(), true),
            None => (e.hostfd(), false),
        };
        let max_call = if e.block_runs() { mft::BLOCK_RUN_MAX.max(bs) } else { bs };
        let write_sync = flush && e.block_write_sync();
        Ok(Block { handle: i as u64, fd, info, flush, max_call, write_sync })
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
        if len == 0 || !len.is_multiple_of(bs) || !offset.is_multiple_of(bs) {
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
        platform::block_read(self.handle, self.fd, self.info.block_size, self.max_call, offset, buf)
    }

    /// Writes whole blocks from `data` at byte `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        platform::block_write(self.handle, self.fd, self.info.block_size, self.max_call, offset, data)
    }

    /// Whether the tender granted flushes: [`Block::flush`] then puts
    /// every write before it on stable storage.
    pub fn flushes(&self) -> bool {
        self.flush
    }

    /// Puts every write made so far on stable storage, if the tender
    /// granted flushes; otherwise returns at once (Solo5's semantics: a
    /// write is done when it is in the host's page cache).
    pub fn flush(&self) -> Result<(), Error> {
        if !self.flush {
            return Ok(());
        }
        platform::block_flush(self.handle, self.fd)
    }

    /// Writes whole blocks from `data` at byte `offset`, then flushes
    /// ([`Block::flush`]): with our hvt tender's grant, in one exit.
    pub fn write_and_flush(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        if self.write_sync {
            return platform::block_write_sync(self.handle, self.fd, self.info.block_size, self.max_call, offset, data);
        }
        self.write(offset, data)?;
        self.flush()
    }
}
