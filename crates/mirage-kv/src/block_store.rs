//! A crash-safe read-write store over any block device (MirageOS's
//! chamelon has the same job): copy-on-write records appended to a log,
//! with two alternating superblocks as checkpoints.
//!
//! # Layout
//!
//! The device is cut into blocks of `block_size` bytes (4 KiB by default,
//! a multiple of the sector size). The sectors at bytes 0 and 4096 hold the
//! two superblock slots, wherever the sector size puts them (512 to 4096
//! bytes: an image moves between devices of either); the blocks from byte
//! 8192 on are data. A generation of the store is a *record*: a chain of
//! blocks, each beginning with the number of the next, whose payloads
//! concatenated are a header (generation, the block reserved for the next
//! record, the index's length and SHA-256, and the header's own SHA-256)
//! and the serialized index (every key with its size, time, SHA-256 and
//! either the bytes of a small value inline or the extents of a larger
//! one). A superblock names one record, with its length and SHA-256.
//!
//! # Why it survives a crash
//!
//! A change never writes a block the committed state refers to. Its new
//! value's blocks go to free blocks, and are flushed; then the record of
//! generation `g + 1` is written in one run from the block that record
//! `g` reserved for it, and the device is flushed; only then does the
//! future complete. A change of small values (inline) or a removal is one
//! write and one flush, as a database's write-ahead-log commit is.
//! Opening reads the newest superblock whose checksum holds, its record,
//! then follows the log: the block each record reserved, while it holds a
//! whole record (both checksums) of the next generation. A crash while
//! record `g + 1` was written leaves there a record that is torn (its
//! checksums fail) or whole: the store opens at `g`, the last acknowledged
//! state, or at `g + 1`, never between. A reserved block is zeroed in the
//! flush of the record that reserves it (and `format` zeroes the one its
//! first record reserves), so before its own record it holds zeros: not
//! what it held before, which could be an older store's record of that
//! generation, or a freed value's bytes that spell one. Where opening stopped at a damaged record, the
//! rest of that log may still hold whole records of later generations:
//! the next change then takes a generation 2^32 ahead, in a record a
//! superblock names at once, so that none of them is ever taken for a
//! record after it.
//!
//! Every [`LOG_MAX`] records (or sooner, when space runs short) a
//! checkpoint writes a superblock naming the last record into the slot not
//! holding the last checkpoint, and flushes; the records before it are
//! free after that. Until then they stay in use, so that the log from the
//! last checkpoint is whole. A torn checkpoint fails its checksum and
//! opening takes the other slot, whose log still reaches the last record.
//! A value is read from the blocks of one committed generation, so it is
//! never seen half old, half new; `get` also checks its SHA-256.
//!
//! Opening reads at most one superblock's record and the log after it
//! ([`LOG_MAX`] records, four times that at most where checkpoints kept
//! failing; a longer log is damage): no journal to replay, no scan of
//! the data. Free
//! space is what the state does not name: the blocks of a replaced or
//! removed value are free as soon as the change is committed, those of the
//! log at the next checkpoint. A change must leave room for one more
//! record, so that a full store still answers `remove` (which is how it
//! is made less full): past that it answers [`Error::NoSpace`], and stays
//! readable.
//!
//! Stores of the first format (version 1: superblocks naming a bare index,
//! a superblock written by every change) open as they are; their first
//! change writes a record and a superblock naming it.
//!
//! # Damaged images
//!
//! Everything read from the device is untrusted. No panic on any contents:
//! fields are parsed with checked conversions; block numbers are checked
//! against the device; the index is checked (SHA-256, keys sorted, valid
//! and forming one tree, extents inside the device and not overlapping
//! each other or the log, sizes matching). If the newest superblock's
//! record is damaged the store opens the older one and its log; if a
//! record in the log is damaged the store opens the one before it; either
//! way it says so ([`BlockStore::recovery`]). If no superblock's record is
//! whole, [`BlockStore::open`] answers an [`OpenError`] that names the
//! problem. A value whose blocks are damaged answers [`Error::Io`] from
//! `get`; [`BlockStore::check`] reads every value and names the damaged
//! ones. A fuzz target opens arbitrary images.
//!
//! # Costs
//!
//! Each change rewrites the whole index (a few dozen bytes per key plus
//! the small values inline), so the store suits thousands of keys, not
//! millions; a change of small values costs one flush, one of a larger
//! value two (its blocks must be on the disk before a record names them).
//! Operations run one at a time (an asynchronous lock), so that a reader
//! never sees blocks reused by a concurrent writer.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::fmt;
use core::future::poll_fn;
use core::task::{Poll, Waker};

use mirage_devices::block::{self, Block};
use mirage_devices::kv::{Digest, Error, Key, Kind, KvRo, KvRw};
use mirage_devices::time::{Timestamp, WallClock};
use sha2::{Digest as _, Sha256};

use crate::tree;

const MAGIC: &[u8; 8] = b"MIRAGEKV";
/// The format written: superblocks name a record (header and index),
/// whose header names the block of the next record.
const VERSION: u32 = 2;
/// The first format, still opened: its superblocks name a bare index,
/// and it has no log (its first change writes a superblock).
const VERSION_1: u32 = 1;
/// The first bytes of a record's header.
const REC_MAGIC: &[u8; 8] = b"MKVLOG02";
/// Bytes of a record's header: fields (64) and their SHA-256 (32).
const REC_HDR: usize = 96;
/// Records written after a checkpoint before the next: bounds what
/// opening follows, and what the log holds.
pub const LOG_MAX: u32 = 32;
/// The longest log a store writes (checkpoints that keep failing let it
/// pass [`LOG_MAX`]; past this a change fails until one succeeds), and
/// so the most records opening follows.
const LOG_LIMIT: u32 = 4 * LOG_MAX;
/// How far the generation moves at the first change after opening
/// stopped at a damaged record: past any record the abandoned rest of
/// that log may hold (at most [`LOG_LIMIT`] of them), so that none is
/// ever taken for the next one.
const GENERATION_JUMP: u64 = 1 << 32;
/// Bytes of a superblock: fields (80) and their SHA-256 (32).
const SUPER_LEN: usize = 112;
/// The block size [`BlockStore::format`] picks when asked for none.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Values up to this size live in the index itself (no block of their own).
const INLINE_MAX: u64 = 128;
/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Data is read and written in runs of at most this many bytes.
const CHUNK: usize = 256 * 1024;
/// Bytes between the two superblock slots.
const SLOT: u32 = 4096;
/// Block numbers in an index block header.
const NEXT_LEN: usize = 8;

/// Why a store could not be opened or formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// The device failed.
    Block(block::Error),
    /// Neither superblock slot holds a store.
    NotAStore,
    /// The device is too small for a store of this block size.
    TooSmall {
        /// Blocks the device holds.
        blocks: u64,
    },
    /// The block size is not a power of two multiple of the sector size.
    BadBlockSize(u32),
    /// The store is larger than the device: the image was truncated.
    Truncated {
        /// Bytes the store spans.
        store: u64,
        /// Bytes the device holds.
        device: u64,
    },
    /// The store is damaged: every generation failed a check, named here.
    Damaged(String),
    /// The device's sectors are larger than 4096 bytes.
    SectorTooLarge(u32),
    /// The device is read-only (formatting).
    ReadOnly,
    /// Not enough memory to hold the index.
    OutOfMemory,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Block(e) => write!(f, "reading the store's device: {e}"),
            OpenError::NotAStore => f.write_str(
                "the device holds no key-value store (no superblock); format it (`mirage kv format IMAGE`) first",
            ),
            OpenError::TooSmall { blocks } => {
                write!(f, "the device has room for {blocks} blocks; a store needs at least 8")
            }
            OpenError::BadBlockSize(b) => {
                write!(f, "block size {b} is not a power of two and a multiple of the sector size")
            }
            OpenError::Truncated { store, device } => write!(
                f,
                "the store spans {store} bytes but the device holds {device}: the image was truncated; restore it \
                 from a copy or grow the file back to {store} bytes"
            ),
            OpenError::Damaged(why) => write!(
                f,
                "the store is damaged and no generation of it is whole ({why}); restore the image from a copy"
            ),
            OpenError::SectorTooLarge(s) => {
                write!(f, "the device has sectors of {s} bytes; the store takes sectors of 512 to 4096 bytes")
            }
            OpenError::ReadOnly => f.write_str("the device is read-only"),
            OpenError::OutOfMemory => f.write_str("not enough memory to hold the store's index"),
        }
    }
}

impl From<block::Error> for OpenError {
    fn from(e: block::Error) -> OpenError {
        OpenError::Block(e)
    }
}

/// How a value is held.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    /// In the index.
    Inline(Vec<u8>),
    /// In runs of blocks: (first block, number of blocks).
    Extents(Vec<(u64, u64)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    modified: Timestamp,
    size: u64,
    digest: [u8; 32],
    data: Data,
}

/// A superblock's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Super {
    /// [`VERSION`] or [`VERSION_1`].
    version: u32,
    block_size: u32,
    blocks: u64,
    generation: u64,
    index_head: u64,
    index_len: u64,
    index_sha: [u8; 32],
}

/// Fields laid end to end, then their SHA-256: how superblocks and record
/// headers are sealed.
fn sealed<const N: usize>(fields: &[&[u8]]) -> [u8; N] {
    let mut b = [0u8; N];
    let mut at = 0;
    for f in fields {
        b[at..at + f.len()].copy_from_slice(f);
        at += f.len();
    }
    let sha: [u8; 32] = Sha256::digest(&b[..N - 32]).into();
    b[N - 32..].copy_from_slice(&sha);
    b
}

/// Whether the last 32 of the first `n` bytes of `b` are the SHA-256 of
/// those before them.
fn seal_holds(b: &[u8], n: usize) -> bool {
    let sha: [u8; 32] = Sha256::digest(&b[..n - 32]).into();
    sha[..] == b[n - 32..n]
}

impl Super {
    fn encode(&self) -> [u8; SUPER_LEN] {
        sealed(&[
            MAGIC,
            &self.version.to_le_bytes(),
            &self.block_size.to_le_bytes(),
            &self.blocks.to_le_bytes(),
            &self.generation.to_le_bytes(),
            &self.index_head.to_le_bytes(),
            &self.index_len.to_le_bytes(),
            &self.index_sha,
        ])
    }

    /// `None` if the slot holds no superblock at all (no magic), else the
    /// superblock or why it is damaged.
    fn decode(b: &[u8]) -> Option<Result<Super, String>> {
        if b.len() < SUPER_LEN || &b[0..8] != MAGIC {
            return None;
        }
        if !seal_holds(b, SUPER_LEN) {
            return Some(Err(String::from("its checksum fails (a torn write or a damaged sector)")));
        }
        let mut r = Reader { b: &b[8..80] };
        let (version, block_size) = (r.u32()?, r.u32()?);
        if version != VERSION && version != VERSION_1 {
            return Some(Err(format!(
                "it is of format version {version}; this reader knows {VERSION_1} and {VERSION}"
            )));
        }
        let (blocks, generation, index_head, index_len) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let index_sha = r.bytes(32)?.try_into().ok()?;
        Some(Ok(Super { version, block_size, blocks, generation, index_head, index_len, index_sha }))
    }
}

/// A record's header: the first [`REC_HDR`] bytes of its chain's payload,
/// before the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    generation: u64,
    /// The block reserved for the record of `generation + 1` (0: none).
    next: u64,
    index_len: u64,
    index_sha: [u8; 32],
}

impl Record {
    fn encode(&self) -> [u8; REC_HDR] {
        sealed(&[
            REC_MAGIC,
            &self.generation.to_le_bytes(),
            &self.next.to_le_bytes(),
            &self.index_len.to_le_bytes(),
            &self.index_sha,
        ])
    }

    /// `None` if `b` holds no record (no magic); `Some(Err(g))` if its
    /// checksum fails, `g` being what its generation field says.
    fn decode(b: &[u8]) -> Option<Result<Record, u64>> {
        if b.len() < REC_HDR || &b[0..8] != REC_MAGIC {
            return None;
        }
        let mut r = Reader { b: &b[8..64] };
        let (generation, next, index_len) = (r.u64()?, r.u64()?, r.u64()?);
        if !seal_holds(b, REC_HDR) {
            return Some(Err(generation));
        }
        let index_sha = r.bytes(32)?.try_into().ok()?;
        Some(Ok(Record { generation, next, index_len, index_sha }))
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
}

/// The sector of superblock slot `slot` (0 or 1).
fn slot_sector(slot: u64, sector: u64) -> u64 {
    slot * u64::from(SLOT) / sector
}

/// The geometry of a store on a device.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Bytes per block.
    block: u64,
    /// Sectors per block.
    spb: u64,
    /// Blocks of the store.
    blocks: u64,
    /// The first data block (past the two superblock sectors).
    first: u64,
}

impl Geometry {
    fn new(sector: u32, block_size: u32, blocks: u64) -> Result<Geometry, OpenError> {
        if !block_size.is_power_of_two() || block_size < sector || block_size < 512 {
            return Err(OpenError::BadBlockSize(block_size));
        }
        let block = u64::from(block_size);
        if sector > SLOT {
            return Err(OpenError::SectorTooLarge(sector));
        }
        let first = (2 * u64::from(SLOT)).div_ceil(block);
        if blocks < (first + 6).max(8) {
            return Err(OpenError::TooSmall { blocks });
        }
        Ok(Geometry { block, spb: block / u64::from(sector), blocks, first })
    }

    fn payload(&self) -> usize {
        self.block as usize - NEXT_LEN
    }

    fn index_blocks(&self, len: usize) -> u64 {
        (len.div_ceil(self.payload()) as u64).max(1)
    }
}

/// Blocks in use, one bit each.
#[derive(Debug, Clone)]
struct Bitmap {
    words: Vec<u64>,
    free: u64,
}

impl Bitmap {
    fn new(g: &Geometry) -> Result<Bitmap, Error> {
        let n = g.blocks.div_ceil(64) as usize;
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| Error::NoSpace)?;
        words.resize(n, 0);
        let mut m = Bitmap { words, free: g.blocks };
        for b in 0..g.first {
            m.set(b);
        }
        // Bits past the last block are never free.
        for b in g.blocks..(n as u64 * 64) {
            m.words[(b / 64) as usize] |= 1 << (b % 64);
        }
        Ok(m)
    }

    fn used(&self, b: u64) -> bool {
        self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn set(&mut self, b: u64) {
        if !self.used(b) {
            self.words[(b / 64) as usize] |= 1 << (b % 64);
            self.free -= 1;
        }
    }

    /// Marks a run used; false if any block of it already was.
    fn claim(&mut self, start: u64, count: u64) -> bool {
        for b in start..start + count {
            if self.used(b) {
                return false;
            }
            self.set(b);
        }
        true
    }

    /// Takes `n` free blocks, first fit from `from`, in as few runs as the
    /// free space allows.
    fn alloc(&mut self, n: u64, from: u64, blocks: u64) -> Result<Vec<(u64, u64)>, Error> {
        if n > self.free {
            return Err(Error::NoSpace);
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut left = n;
        let mut b = from.min(blocks);
        let mut scanned = 0u64;
        while left > 0 && scanned < blocks {
            if b >= blocks {
                b = 0;
            }
            // Skip whole used words quickly.
            if b.is_multiple_of(64) && self.words[(b / 64) as usize] == u64::MAX {
                b += 64;
                scanned += 64;
                continue;
            }
            if !self.used(b) {
                self.set(b);
                left -= 1;
                match runs.last_mut() {
                    Some((s, c)) if *s + *c == b => *c += 1,
                    _ => runs.push((b, 1)),
                }
            }
            b += 1;
            scanned += 1;
        }
        if left > 0 {
            return Err(Error::NoSpace);
        }
        Ok(runs)
    }
}

/// What a change writes: a slice, or zeros.
#[derive(Clone, Copy)]
enum Source<'a> {
    Bytes(&'a [u8]),
    Zeros(u64),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Zeros(n) => *n,
        }
    }

    /// Fills `buf` from byte `at`, zeros past the end.
    fn fill(&self, at: u64, buf: &mut [u8]) {
        buf.fill(0);
        if let Source::Bytes(b) = self {
            let start = (at as usize).min(b.len());
            let n = buf.len().min(b.len() - start);
            buf[..n].copy_from_slice(&b[start..start + n]);
        }
    }

    fn digest(&self) -> [u8; 32] {
        match self {
            Source::Bytes(b) => Sha256::digest(b).into(),
            Source::Zeros(n) => {
                let zeros = [0u8; 4096];
                let mut h = Sha256::new();
                let mut left = *n;
                while left > 0 {
                    let k = left.min(zeros.len() as u64) as usize;
                    h.update(&zeros[..k]);
                    left -= k as u64;
                }
                h.finalize().into()
            }
        }
    }
}

/// One operation at a time: a lock that waits without blocking the
/// executor.
#[derive(Debug, Default)]
pub(crate) struct Lock {
    busy: Cell<bool>,
    waiters: RefCell<VecDeque<Waker>>,
}

pub(crate) struct Guard<'a>(&'a Lock);

impl Lock {
    pub(crate) async fn lock(&self) -> Guard<'_> {
        poll_fn(|cx| {
            if self.busy.get() {
                let mut w = self.waiters.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push_back(cx.waker().clone());
                }
                Poll::Pending
            } else {
                self.busy.set(true);
                Poll::Ready(())
            }
        })
        .await;
        Guard(self)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.busy.set(false);
        // Every waiter tries again; the first to run takes the lock.
        let waiters: VecDeque<Waker> = core::mem::take(&mut *self.0.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// The committed state.
#[derive(Debug)]
struct State {
    generation: u64,
    /// The superblock slot holding it; a change writes the other.
    slot: u64,
    entries: BTreeMap<String, Entry>,
    used: Bitmap,
    /// Where the next allocation starts looking.
    cursor: u64,
    /// A change failed after its record or superblock may have reached
    /// the device: the state in memory may no longer be the one on it.
    poisoned: bool,
    /// The committed generation's record: its blocks, in chain order,
    /// its length and SHA-256 (what a checkpoint's superblock names).
    record: Vec<u64>,
    rec_len: u64,
    rec_sha: [u8; 32],
    /// The block reserved for the next record (0: none, a version-1
    /// store, whose first change writes a superblock).
    next: u64,
    /// Blocks of the records before the committed one since the last
    /// checkpoint: opening follows the log through them, so they stay in
    /// use until the next checkpoint.
    held: Vec<u64>,
    /// Records written since the last checkpoint.
    log_len: u32,
    /// Opening stopped at a damaged record: records of later generations
    /// may still lie past it, so the next change takes a generation
    /// [`GENERATION_JUMP`] ahead, in a record a superblock names at once.
    jump: bool,
}

/// A read-write store on a block device; `C` stamps modification times.
pub struct BlockStore<B, C> {
    block: B,
    clock: C,
    geo: Geometry,
    sector: u64,
    state: RefCell<State>,
    lock: Lock,
    recovery: Option<String>,
}

impl<B, C> fmt::Debug for BlockStore<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("BlockStore")
            .field("generation", &s.generation)
            .field("values", &s.entries.len())
            .field("free_blocks", &s.used.free)
            .finish()
    }
}

/// Usage figures of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks of the store.
    pub blocks: u64,
    /// Blocks free.
    pub free_blocks: u64,
    /// Blocks of the log's records before the committed one: free again
    /// at the next checkpoint (at most every 32 changes, or sooner when
    /// space runs short).
    pub log_blocks: u64,
    /// Values stored.
    pub values: usize,
    /// The committed generation.
    pub generation: u64,
}

/// The blocks a state uses: its log's records, the block reserved for
/// the next, and its values'.
fn used_by(g: &Geometry, st: &State) -> Result<Bitmap, Error> {
    let mut used = Bitmap::new(g)?;
    for &b in st.held.iter().chain(&st.record) {
        used.set(b);
    }
    if st.next != 0 {
        used.set(st.next);
    }
    for e in st.entries.values() {
        if let Data::Extents(x) = &e.data {
            for &(s, c) in x {
                used.claim(s, c);
            }
        }
    }
    Ok(used)
}

fn serialize(entries: &BTreeMap<String, Entry>) -> Result<Vec<u8>, Error> {
    let mut len = 8usize;
    for (k, e) in entries {
        len += 2 + k.len() + 8 + 8 + 32 + 1;
        len += match &e.data {
            Data::Inline(b) => b.len(),
            Data::Extents(x) => 4 + 16 * x.len(),
        };
    }
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| Error::NoSpace)?;
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, e) in entries {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&e.modified.0.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.digest);
        match &e.data {
            Data::Inline(b) => {
                out.push(0);
                out.extend_from_slice(b);
            }
            Data::Extents(x) => {
                out.push(1);
                out.extend_from_slice(&(x.len() as u32).to_le_bytes());
                for (s, c) in x {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

/// Parses and checks an index; marks the blocks its values use in `used`.
fn parse_index(blob: &[u8], g: &Geometry, used: &mut Bitmap) -> Result<BTreeMap<String, Entry>, String> {
    let short = || String::from("the index ends in the middle of an entry");
    let mut r = Reader { b: blob };
    let count = r.u64().ok_or_else(short)?;
    let mut entries = BTreeMap::new();
    let mut last: Option<String> = None;
    for i in 0..count {
        let klen = r.u16().ok_or_else(short)? as usize;
        if klen > MAX_KEY {
            return Err(format!("entry {i} has a key of {klen} bytes (at most {MAX_KEY})"));
        }
        let kb = r.bytes(klen).ok_or_else(short)?;
        let key = core::str::from_utf8(kb).map_err(|_| format!("entry {i} has a key that is not UTF-8"))?;
        match Key::parse(key) {
            Ok(k) if k.as_str() == key && !k.is_root() => {}
            _ => return Err(format!("entry {i} has the key {key:?}, which is not a valid key")),
        }
        if last.as_deref().is_some_and(|l| l >= key) {
            return Err(format!("the keys of the index are not sorted at {key:?}"));
        }
        let modified = Timestamp(r.u64().ok_or_else(short)?);
        let size = r.u64().ok_or_else(short)?;
        let digest: [u8; 32] = r.bytes(32).ok_or_else(short)?.try_into().map_err(|_| short())?;
        let data = match r.u8().ok_or_else(short)? {
            0 if size <= INLINE_MAX => Data::Inline(r.bytes(size as usize).ok_or_else(short)?.to_vec()),
            1 if size > INLINE_MAX => {
                let n = r.u32().ok_or_else(short)?;
                let mut x = Vec::new();
                let mut total = 0u64;
                for _ in 0..n {
                    let (s, c) = (r.u64().ok_or_else(short)?, r.u64().ok_or_else(short)?);
                    let inside = c > 0 && s >= g.first && s.checked_add(c).is_some_and(|e| e <= g.blocks);
                    if !inside {
                        return Err(format!("{key} names blocks {s}+{c}, outside the store"));
                    }
                    if !used.claim(s, c) {
                        return Err(format!("{key} names blocks {s}+{c}, which another value or the index uses"));
                    }
                    total += c;
                    x.push((s, c));
                }
                if total != size.div_ceil(g.block) {
                    return Err(format!("{key} is {size} bytes but names {total} blocks"));
                }
                Data::Extents(x)
            }
            t => return Err(format!("{key} has a storage tag {t} that does not fit its size {size}")),
        };
        last = Some(String::from(key));
        entries.insert(String::from(key), Entry { modified, size, digest, data });
    }
    if !r.b.is_empty() {
        return Err(String::from("the index has bytes past its last entry"));
    }
    // A value's parents are dictionaries, never values.
    for k in entries.keys() {
        let mut p = Key::parse(k).map_err(|_| format!("{k:?} is not a valid key"))?.parent();
        while !p.is_root() {
            if entries.contains_key(p.as_str()) {
                return Err(format!("{p} is a value and also holds {k}"));
            }
            p = p.parent();
        }
    }
    Ok(entries)
}

impl<B: Block, C: WallClock> BlockStore<B, C> {
    /// Writes an empty store on `block`, with blocks of `block_size` bytes
    /// (`None`: 4 KiB, or the sector size if larger), and opens it.
    /// Whatever the device held is lost.
    pub async fn format(block: B, clock: C, block_size: Option<u32>) -> Result<BlockStore<B, C>, OpenError> {
        let info = block.info();
        if info.read_only {
            return Err(OpenError::ReadOnly);
        }
        let bs = block_size.unwrap_or(DEFAULT_BLOCK_SIZE.max(info.sector_size));
        let g = Geometry::new(info.sector_size, bs, info.capacity() / u64::from(bs))?;
        let sector = u64::from(info.sector_size);
        let index = serialize(&BTreeMap::new()).map_err(|_| OpenError::OutOfMemory)?;
        // The first record, and the block after it for the second.
        let head = g.first;
        let blob = record(1, head + 1, &index).map_err(|_| OpenError::OutOfMemory)?;
        // The record, and the block it reserves for the next one zeroed:
        // a device that held a store before holds its second record there,
        // which opening would otherwise follow, old contents and all.
        let mut buf = vec![0u8; 2 * g.block as usize];
        buf[NEXT_LEN..NEXT_LEN + blob.len()].copy_from_slice(&blob);
        block.write(head * g.spb, &buf).await?;
        let sb = Super {
            version: VERSION,
            block_size: bs,
            blocks: g.blocks,
            generation: 1,
            index_head: head,
            index_len: blob.len() as u64,
            index_sha: Sha256::digest(&blob).into(),
        };
        let mut s0 = vec![0u8; sector as usize];
        s0[..SUPER_LEN].copy_from_slice(&sb.encode());
        block.write(slot_sector(1, sector), &vec![0u8; sector as usize]).await?;
        block.write(slot_sector(0, sector), &s0).await?;
        block.flush().await?;
        Self::open(block, clock).await
    }

    /// Opens the store on `block`: reads both superblocks and the newest
    /// whole generation's index. If the newest is damaged, the older is
    /// opened and [`BlockStore::recovery`] says what was lost.
    pub async fn open(block: B, clock: C) -> Result<BlockStore<B, C>, OpenError> {
        let info = block.info();
        let sector = u64::from(info.sector_size);
        let mut slots = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        for slot in 0..2u64 {
            let mut buf = vec![0u8; sector as usize];
            if sector > u64::from(SLOT) {
                return Err(OpenError::SectorTooLarge(info.sector_size));
            }
            if (slot + 1) * u64::from(SLOT) > info.capacity() {
                return Err(OpenError::TooSmall { blocks: info.capacity() / u64::from(SLOT) });
            }
            block.read(slot_sector(slot, sector), &mut buf).await?;
            match Super::decode(&buf) {
                None => {}
                Some(Ok(s)) => slots.push((slot, s)),
                Some(Err(why)) => problems.push(format!("superblock {slot}: {why}")),
            }
        }
        if slots.is_empty() && problems.is_empty() {
            return Err(OpenError::NotAStore);
        }
        slots.sort_by_key(|(_, s)| core::cmp::Reverse(s.generation));
        let newest_damaged = !problems.is_empty();
        // A superblock whose store is larger than the device: the image was
        // cut short (then every slot says so, and that is the answer), or
        // this slot lies, and the other may still open.
        let mut truncated = None;
        for (i, (slot, s)) in slots.iter().enumerate() {
            let g = match Geometry::new(info.sector_size, s.block_size, s.blocks) {
                Ok(g) => g,
                Err(e) => {
                    problems.push(format!("superblock {slot}: {e}"));
                    continue;
                }
            };
            let store_bytes = s.blocks.saturating_mul(g.block);
            if store_bytes > info.capacity() {
                problems.push(format!(
                    "superblock {slot}: a store of {store_bytes} bytes on a device of {}",
                    info.capacity()
                ));
                truncated.get_or_insert(OpenError::Truncated { store: store_bytes, device: info.capacity() });
                continue;
            }
            match Self::load(&block, &g, s).await {
                Ok(l) => {
                    let recovery = if i > 0 || newest_damaged {
                        let log = l.note.as_deref().map(|n| format!("; {n}")).unwrap_or_default();
                        Some(format!(
                            "opened generation {} from superblock {slot} and its log; a newer change, if any, was \
                             lost: {}{log}",
                            l.generation,
                            problems.join("; ")
                        ))
                    } else {
                        l.note.as_deref().map(|n| {
                            format!(
                                "opened generation {}; {n}: the change in flight when it stopped was lost",
                                l.generation
                            )
                        })
                    };
                    let cursor = if l.next == 0 { g.first } else { l.next + 1 };
                    // Past a damaged record, the next change goes where a
                    // superblock names it, not into the block the last
                    // whole record reserved (which the damaged one took);
                    // so after opening an older superblock than the newest,
                    // whose log may have gone on past what was read.
                    let jump = l.note.is_some() || i > 0 || newest_damaged;
                    let state = State {
                        generation: l.generation,
                        slot: *slot,
                        entries: l.entries,
                        used: l.used,
                        cursor,
                        poisoned: false,
                        record: l.record,
                        rec_len: l.rec_len,
                        rec_sha: l.rec_sha,
                        next: if jump { 0 } else { l.next },
                        held: l.held,
                        log_len: l.log_len,
                        jump,
                    };
                    return Ok(BlockStore {
                        block,
                        clock,
                        geo: g,
                        sector,
                        state: RefCell::new(state),
                        lock: Lock::default(),
                        recovery,
                    });
                }
                Err(LoadError::Block(e)) => return Err(OpenError::Block(e)),
                Err(LoadError::OutOfMemory) => return Err(OpenError::OutOfMemory),
                Err(LoadError::Damaged(why)) => {
                    problems.push(format!("generation {} (superblock {slot}): {why}", s.generation))
                }
            }
        }
        Err(truncated.unwrap_or_else(|| OpenError::Damaged(problems.join("; "))))
    }

    /// Reads and checks the record (or, in a version-1 store, the index)
    /// a superblock names, then follows the log from it: the record in
    /// the block each names for the next, while that holds a whole record
    /// of the next generation. The state is the last such record's.
    async fn load(block: &B, g: &Geometry, s: &Super) -> Result<Loaded, LoadError> {
        let least = if s.version == VERSION_1 { 8 } else { REC_HDR as u64 + 8 };
        if s.index_len < least {
            return Err(LoadError::Damaged(format!("an index of {} bytes cannot be", s.index_len)));
        }
        let mut chain = Bitmap::new(g).map_err(|_| LoadError::OutOfMemory)?;
        let mut record = Vec::new();
        let blob = read_chain(block, g, s.index_head, s.index_len, &mut chain, &mut record).await?;
        let sha: [u8; 32] = Sha256::digest(&blob).into();
        if sha != s.index_sha {
            return Err(LoadError::Damaged(String::from("the index fails its checksum")));
        }
        let (index, next) = if s.version == VERSION_1 {
            (&blob[..], 0)
        } else {
            let r = match Record::decode(&blob[..REC_HDR]) {
                Some(Ok(r)) => r,
                _ => return Err(LoadError::Damaged(String::from("the header of its record is damaged"))),
            };
            let index_sha: [u8; 32] = Sha256::digest(&blob[REC_HDR..]).into();
            if r.generation != s.generation || r.index_len != (blob.len() - REC_HDR) as u64 || r.index_sha != index_sha
            {
                return Err(LoadError::Damaged(String::from("its record does not match the superblock")));
            }
            (&blob[REC_HDR..], r.next)
        };
        let (entries, used) = state_of(g, index, &chain, next).map_err(LoadError::Damaged)?;
        let mut l = Loaded {
            entries,
            used,
            generation: s.generation,
            record,
            rec_len: s.index_len,
            rec_sha: s.index_sha,
            next,
            held: Vec::new(),
            log_len: 0,
            note: None,
        };
        while l.next != 0 {
            let Some(expect) = l.generation.checked_add(1) else { break };
            if l.log_len >= LOG_LIMIT {
                l.note = Some(format!("the log goes on past {LOG_LIMIT} records, more than the store writes"));
                break;
            }
            let mut bits = chain.clone();
            let mut blocks = Vec::new();
            let (r, blob) = match follow(block, g, l.next, expect, &mut bits, &mut blocks).await {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(LoadError::Damaged(why)) => {
                    l.note = Some(format!("the record of generation {expect} {why}"));
                    break;
                }
                Err(e) => return Err(e),
            };
            let (entries, used) = match state_of(g, &blob[REC_HDR..], &bits, r.next) {
                Ok(x) => x,
                Err(why) => {
                    l.note = Some(format!("the record of generation {expect} is damaged: {why}"));
                    break;
                }
            };
            chain = bits;
            l.held.append(&mut l.record);
            l = Loaded {
                entries,
                used,
                generation: expect,
                record: blocks,
                rec_len: blob.len() as u64,
                rec_sha: Sha256::digest(&blob).into(),
                next: r.next,
                held: l.held,
                log_len: l.log_len + 1,
                note: None,
            };
        }
        Ok(l)
    }

    /// What opening repaired, if anything: the newest generation was
    /// damaged (or torn by a crash) and the one before it was opened.
    pub fn recovery(&self) -> Option<&str> {
        self.recovery.as_deref()
    }

    /// Blocks, free blocks, values.
    pub fn usage(&self) -> Usage {
        let s = self.state.borrow();
        Usage {
            block_size: self.geo.block as u32,
            blocks: self.geo.blocks,
            free_blocks: s.used.free,
            log_blocks: s.held.len() as u64,
            values: s.entries.len(),
            generation: s.generation,
        }
    }

    /// Reads every value and checks its SHA-256; the keys of the damaged
    /// ones, with why.
    pub async fn check(&self) -> Result<Vec<(Key, Error)>, Error> {
        let keys: Vec<String> = self.state.borrow().entries.keys().cloned().collect();
        let mut bad = Vec::new();
        for k in keys {
            let key = Key::parse(&k)?;
            match self.get(&key).await {
                Ok(_) | Err(Error::NotFound) => {}
                Err(e) => bad.push((key, e)),
            }
        }
        Ok(bad)
    }

    /// The underlying device.
    pub fn device(&self) -> &B {
        &self.block
    }

    fn kind(&self, key: &Key) -> Option<Kind> {
        tree::kind(&self.state.borrow().entries, key)
    }

    fn entry(&self, key: &Key) -> Result<Entry, Error> {
        tree::value(&self.state.borrow().entries, key).cloned()
    }

    /// Reads bytes `offset..offset + buf.len()` of a value (inside it).
    async fn read_value(&self, e: &Entry, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let extents = match &e.data {
            Data::Inline(b) => {
                let s = offset as usize;
                buf.copy_from_slice(&b[s..s + buf.len()]);
                return Ok(());
            }
            Data::Extents(x) => x,
        };
        let end = offset + buf.len() as u64;
        let bs = self.geo.block;
        let mut tmp = Vec::new();
        let mut ext_at = 0u64; // byte offset in the value of this extent
        for &(start, count) in extents {
            let ext_end = ext_at + count * bs;
            let (lo, hi) = (offset.max(ext_at), end.min(ext_end));
            let mut pos = lo;
            while pos < hi {
                // Whole blocks covering pos.., at most CHUNK bytes.
                let first = (pos - ext_at) / bs;
                let last = ((hi - ext_at).div_ceil(bs)).min(first + (CHUNK as u64 / bs).max(1));
                let n = ((last - first) * bs) as usize;
                tmp.resize(n, 0);
                self.block.read((start + first) * self.geo.spb, &mut tmp).await.map_err(|_| Error::Io)?;
                let skip = (pos - ext_at - first * bs) as usize;
                let take = (n - skip).min((hi - pos) as usize);
                let out = (pos - offset) as usize;
                buf[out..out + take].copy_from_slice(&tmp[skip..skip + take]);
                pos += take as u64;
            }
            ext_at = ext_end;
            if ext_at >= end {
                break;
            }
        }
        Ok(())
    }

    /// Commits a new index as the record of the next generation: the
    /// value's blocks (`extents`, filled from `src`) are written to free
    /// blocks and flushed, then the record (its header and the index) in
    /// one run from the block the committed record reserved for it, and
    /// flushed: one write and one flush for a change of small values.
    /// Every [`LOG_MAX`] records a checkpoint writes a superblock naming
    /// the last (see [`BlockStore::checkpoint`]).
    async fn commit(
        &self,
        entries: BTreeMap<String, Entry>,
        mut scratch: Bitmap,
        value: Option<(&[(u64, u64)], Source<'_>)>,
        reserve: bool,
    ) -> Result<(), Error> {
        let g = self.geo;
        let index = serialize(&entries)?;
        if self.state.borrow().log_len >= LOG_LIMIT {
            // Checkpoints have failed since LOG_MAX records: no longer
            // log than opening follows.
            self.checkpoint().await?;
        }
        let (generation, reserved, cursor) = {
            let s = self.state.borrow();
            let step = if s.jump { GENERATION_JUMP } else { 1 };
            // A generation no counter reaches but an image can claim: the
            // store stays readable and takes no change.
            (s.generation.checked_add(step).ok_or(Error::Io)?, s.next, s.cursor)
        };
        let n = g.index_blocks(REC_HDR + index.len());
        // A version-1 store reserved no block: its first record goes
        // anywhere, and a superblock names it at once.
        let named = reserved == 0;
        let mut blocks: Vec<u64> = Vec::new();
        if named {
            for (s, c) in scratch.alloc(n, cursor, g.blocks)? {
                blocks.extend(s..s + c);
            }
        } else {
            blocks.push(reserved);
            for (s, c) in scratch.alloc(n - 1, reserved + 1, g.blocks)? {
                blocks.extend(s..s + c);
            }
        }
        let last = blocks.last().copied().unwrap_or(g.first);
        let next = scratch.alloc(1, last + 1, g.blocks)?[0].0;
        // Room for one more record, so that a full store can still remove
        // (a removal shrinks the index and frees the old one: it needs no
        // such room).
        if reserve && scratch.free < n {
            return Err(Error::NoSpace);
        }
        if let Some((extents, src)) = value {
            self.write_value(extents, src).await?;
            // Value blocks must be durable before a record names them: the
            // record's checksum does not cover them.
            self.block.flush().await.map_err(|_| Error::Io)?;
        }
        let blob = record(generation, next, &index)?;
        let rec_sha: [u8; 32] = Sha256::digest(&blob).into();
        // From here on the device may hold the new generation even if the
        // call fails: the state in memory can no longer be trusted.
        if self.write_chain(&blocks, &blob, next).await.is_err() {
            self.state.borrow_mut().poisoned = true;
            return Err(Error::Io);
        }
        {
            let mut st = self.state.borrow_mut();
            let done = core::mem::replace(&mut st.record, blocks);
            st.held.extend(done);
            st.entries = entries;
            st.generation = generation;
            st.rec_len = blob.len() as u64;
            st.rec_sha = rec_sha;
            st.next = next;
            st.cursor = next + 1;
            st.log_len += 1;
            st.jump = false;
            // The blocks in use with the new generation. Without them
            // (memory short) later changes could take blocks it holds: the
            // store takes no more changes (the device holds the change,
            // which opening again finds).
            match used_by(&g, &st) {
                Ok(used) => st.used = used,
                Err(e) => {
                    st.poisoned = true;
                    return Err(e);
                }
            }
        }
        let held = {
            let st = self.state.borrow();
            st.held.len() as u64 + st.record.len() as u64
        };
        if named {
            // Only a superblock reaches this record: the change is not
            // acknowledged without one.
            if self.checkpoint().await.is_err() {
                self.state.borrow_mut().poisoned = true;
                return Err(Error::Io);
            }
        } else if self.state.borrow().log_len >= LOG_MAX || held > self.state.borrow().used.free / 4 {
            // The change is acknowledged without it (the log reaches it);
            // a checkpoint that fails frees nothing and is tried again
            // after the next change.
            let _ = self.checkpoint().await;
        }
        Ok(())
    }

    /// Writes `blob` across `blocks` (in chain order: each block begins
    /// with the number of the next), one write a run, and flushes with the
    /// last (one request where the device takes both at once). Block
    /// `next`, reserved for the next record, is zeroed in the same flush
    /// (in the last run's write where it follows it, as it mostly does): a
    /// free block may hold anything, a record of the next generation
    /// among it (a value's bytes, an old store's log), which opening would
    /// follow.
    async fn write_chain(&self, blocks: &[u64], blob: &[u8], next: u64) -> Result<(), block::Error> {
        let g = self.geo;
        let pl = g.payload();
        let mut buf = Vec::new();
        let mut i = 0;
        while i < blocks.len() {
            let start = blocks[i];
            let mut c = 1;
            while i + c < blocks.len() && blocks[i + c] == start + c as u64 {
                c += 1;
            }
            buf.clear();
            buf.resize(c * g.block as usize, 0);
            for j in 0..c {
                let at = j * g.block as usize;
                let next = blocks.get(i + j + 1).copied().unwrap_or(0);
                buf[at..at + NEXT_LEN].copy_from_slice(&next.to_le_bytes());
                let from = ((i + j) * pl).min(blob.len());
                let n = (blob.len() - from).min(pl);
                buf[at + NEXT_LEN..at + NEXT_LEN + n].copy_from_slice(&blob[from..from + n]);
            }
            i += c;
            if i == blocks.len() {
                if next == start + c as u64 {
                    buf.resize((c + 1) * g.block as usize, 0);
                } else {
                    self.block.write(next * g.spb, &vec![0u8; g.block as usize]).await?;
                }
                return self.block.write_and_flush(start * g.spb, &buf).await;
            }
            self.block.write(start * g.spb, &buf).await?;
        }
        self.block.write_and_flush(next * g.spb, &vec![0u8; g.block as usize]).await
    }

    /// Writes a superblock naming the committed record, into the slot not
    /// holding the last, and flushes; then the records before it are
    /// free. If it fails, the other slot still names a record whose log
    /// reaches the committed one, and nothing is freed.
    async fn checkpoint(&self) -> Result<(), Error> {
        let g = self.geo;
        let (sb, slot) = {
            let s = self.state.borrow();
            let sb = Super {
                version: VERSION,
                block_size: g.block as u32,
                blocks: g.blocks,
                generation: s.generation,
                index_head: s.record.first().copied().ok_or(Error::Io)?,
                index_len: s.rec_len,
                index_sha: s.rec_sha,
            };
            (sb, 1 - s.slot)
        };
        let mut sector = vec![0u8; self.sector as usize];
        sector[..SUPER_LEN].copy_from_slice(&sb.encode());
        self.block.write_and_flush(slot_sector(slot, self.sector), &sector).await.map_err(|_| Error::Io)?;
        let mut st = self.state.borrow_mut();
        st.slot = slot;
        st.held.clear();
        st.log_len = 0;
        st.used = used_by(&g, &st)?;
        Ok(())
    }

    async fn write_value(&self, extents: &[(u64, u64)], src: Source<'_>) -> Result<(), Error> {
        let g = self.geo;
        let mut buf = Vec::new();
        let mut at = 0u64;
        for &(start, count) in extents {
            let mut done = 0u64;
            while done < count {
                let n = (count - done).min((CHUNK as u64 / g.block).max(1));
                buf.resize((n * g.block) as usize, 0);
                src.fill(at, &mut buf);
                self.block.write((start + done) * g.spb, &buf).await.map_err(|_| Error::Io)?;
                at += n * g.block;
                done += n;
            }
        }
        Ok(())
    }

    fn writable(&self) -> Result<(), Error> {
        if self.state.borrow().poisoned {
            return Err(Error::Io);
        }
        if self.block.info().read_only {
            return Err(Error::Io);
        }
        Ok(())
    }

    fn check_parents(&self, key: &Key) -> Result<(), Error> {
        if key.as_str().len() > MAX_KEY {
            return Err(Error::InvalidKey);
        }
        tree::check_parents(&self.state.borrow().entries, key)
    }

    /// Stores `src` at `key` (the caller holds the lock). A store short
    /// of space checkpoints, which frees the log's older records, and
    /// tries again.
    async fn put(&self, key: &Key, src: Source<'_>) -> Result<(), Error> {
        self.writable()?;
        self.check_parents(key)?;
        match self.try_put(key, src).await {
            Err(Error::NoSpace) if self.state.borrow().log_len > 0 => {
                self.checkpoint().await?;
                self.try_put(key, src).await
            }
            r => r,
        }
    }

    async fn try_put(&self, key: &Key, src: Source<'_>) -> Result<(), Error> {
        let size = src.len();
        let digest = src.digest();
        let modified = self.clock.now();
        let (mut entries, mut scratch, cursor) = {
            let s = self.state.borrow();
            (s.entries.clone(), s.used.clone(), s.cursor)
        };
        let (data, extents) = if size <= INLINE_MAX {
            let mut v = vec![0u8; size as usize];
            src.fill(0, &mut v);
            (Data::Inline(v), Vec::new())
        } else {
            let x = scratch.alloc(size.div_ceil(self.geo.block), cursor, self.geo.blocks)?;
            (Data::Extents(x.clone()), x)
        };
        entries.insert(String::from(key.as_str()), Entry { modified, size, digest, data });
        let value = if extents.is_empty() { None } else { Some((&extents[..], src)) };
        self.commit(entries, scratch, value, true).await
    }

    /// Commits `entries` with no new value blocks.
    async fn put_index(&self, entries: BTreeMap<String, Entry>, reserve: bool) -> Result<(), Error> {
        let scratch = self.state.borrow().used.clone();
        match self.commit(entries.clone(), scratch, None, reserve).await {
            Err(Error::NoSpace) if self.state.borrow().log_len > 0 => {
                self.checkpoint().await?;
                let scratch = self.state.borrow().used.clone();
                self.commit(entries, scratch, None, reserve).await
            }
            r => r,
        }
    }
}

/// A generation as opening found it.
struct Loaded {
    entries: BTreeMap<String, Entry>,
    used: Bitmap,
    generation: u64,
    record: Vec<u64>,
    rec_len: u64,
    rec_sha: [u8; 32],
    next: u64,
    held: Vec<u64>,
    log_len: u32,
    /// Why the log ended at a record that was there but not whole.
    note: Option<String>,
}

/// A zeroed buffer of one block: the block size comes from the image's
/// superblock, so it may be larger than the heap holds.
fn block_buffer(g: &Geometry) -> Result<Vec<u8>, LoadError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(g.block as usize).map_err(|_| LoadError::OutOfMemory)?;
    buf.resize(g.block as usize, 0);
    Ok(buf)
}

/// A record's bytes: its header, then `index`.
fn record(generation: u64, next: u64, index: &[u8]) -> Result<Vec<u8>, Error> {
    let header =
        Record { generation, next, index_len: index.len() as u64, index_sha: Sha256::digest(index).into() }.encode();
    let mut blob = Vec::new();
    blob.try_reserve_exact(REC_HDR + index.len()).map_err(|_| Error::NoSpace)?;
    blob.extend_from_slice(&header);
    blob.extend_from_slice(index);
    Ok(blob)
}

/// Reads the chain of blocks from `head` whose payloads hold `len` bytes;
/// claims its blocks in `chain` and lists them in `blocks`.
async fn read_chain<B: Block>(
    block: &B,
    g: &Geometry,
    head: u64,
    len: u64,
    chain: &mut Bitmap,
    blocks: &mut Vec<u64>,
) -> Result<Vec<u8>, LoadError> {
    let room = (g.blocks - g.first).saturating_mul(g.payload() as u64);
    if len > room {
        return Err(LoadError::Damaged(format!("an index of {len} bytes cannot be")));
    }
    let len = len as usize;
    let mut blob = Vec::new();
    blob.try_reserve_exact(len).map_err(|_| LoadError::OutOfMemory)?;
    let mut buf = block_buffer(g)?;
    let mut at = head;
    while blob.len() < len {
        if at < g.first || at >= g.blocks {
            return Err(LoadError::Damaged(format!("the index names block {at}, outside the store")));
        }
        // A loop in the chain, or a record over another, meets a block
        // already claimed.
        if !chain.claim(at, 1) {
            return Err(LoadError::Damaged(format!("the index chain meets block {at} twice")));
        }
        blocks.push(at);
        block.read(at * g.spb, &mut buf).await.map_err(LoadError::Block)?;
        let n = (len - blob.len()).min(g.payload());
        blob.extend_from_slice(&buf[NEXT_LEN..NEXT_LEN + n]);
        at = u64::from_le_bytes(buf[..NEXT_LEN].try_into().unwrap_or([0; 8]));
    }
    Ok(blob)
}

/// The record of generation `expect` at block `at`, if one is there:
/// `None` if the block holds something else (no record, or one of another
/// generation: what a reserved block holds before its record is written),
/// an error if it holds one that is not whole (torn by a crash, or
/// damaged).
async fn follow<B: Block>(
    block: &B,
    g: &Geometry,
    at: u64,
    expect: u64,
    chain: &mut Bitmap,
    blocks: &mut Vec<u64>,
) -> Result<Option<(Record, Vec<u8>)>, LoadError> {
    let torn = || LoadError::Damaged(String::from("fails its checksum (torn by a crash, or damaged)"));
    let mut buf = block_buffer(g)?;
    block.read(at * g.spb, &mut buf).await.map_err(LoadError::Block)?;
    let r = match Record::decode(&buf[NEXT_LEN..NEXT_LEN + REC_HDR]) {
        None => return Ok(None),
        Some(Err(generation)) => return if generation == expect { Err(torn()) } else { Ok(None) },
        Some(Ok(r)) if r.generation != expect => return Ok(None),
        Some(Ok(r)) => r,
    };
    let len = r.index_len.checked_add(REC_HDR as u64).ok_or_else(torn)?;
    let blob = read_chain(block, g, at, len, chain, blocks).await?;
    let sha: [u8; 32] = Sha256::digest(&blob[REC_HDR..]).into();
    if sha != r.index_sha {
        return Err(torn());
    }
    Ok(Some((r, blob)))
}

/// The entries of `index` and the blocks in use with it: the log's
/// (`chain`), the one reserved for the next record, and its values'.
fn state_of(
    g: &Geometry,
    index: &[u8],
    chain: &Bitmap,
    next: u64,
) -> Result<(BTreeMap<String, Entry>, Bitmap), String> {
    let mut used = chain.clone();
    if next != 0 {
        if next < g.first || next >= g.blocks {
            return Err(format!("it reserves block {next} for the next record, outside the store"));
        }
        if !used.claim(next, 1) {
            return Err(format!("it reserves block {next} for the next record, which the log uses"));
        }
    }
    let entries = parse_index(index, g, &mut used)?;
    Ok((entries, used))
}

#[derive(Debug)]
enum LoadError {
    Block(block::Error),
    Damaged(String),
    OutOfMemory,
}

impl<B: Block, C: WallClock> KvRo for BlockStore<B, C> {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        Ok(self.kind(key))
    }

    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error> {
        let _g = self.lock.lock().await;
        let e = self.entry(key)?;
        let n = usize::try_from(e.size).map_err(|_| Error::NoSpace)?;
        let mut out = Vec::new();
        out.try_reserve_exact(n).map_err(|_| Error::NoSpace)?;
        out.resize(n, 0);
        self.read_value(&e, 0, &mut out).await?;
        let sha: [u8; 32] = Sha256::digest(&out).into();
        if sha != e.digest {
            return Err(Error::Io);
        }
        Ok(out)
    }

    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let _g = self.lock.lock().await;
        let e = self.entry(key)?;
        let start = offset.min(e.size);
        let n = (buf.len() as u64).min(e.size - start) as usize;
        self.read_value(&e, start, &mut buf[..n]).await?;
        Ok(n)
    }

    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        tree::list(&self.state.borrow().entries, key)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        tree::last_modified(&self.state.borrow().entries, key, |e| e.modified)
    }

    async fn digest(&self, key: &Key) -> Result<Digest, Error> {
        Ok(Digest(self.entry(key)?.digest))
    }

    async fn size(&self, key: &Key) -> Result<u64, Error> {
        Ok(self.entry(key)?.size)
    }
}

impl<B: Block, C: WallClock> KvRw for BlockStore<B, C> {
    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), Error> {
        let _g = self.lock.lock().await;
        self.put(key, Source::Bytes(value)).await
    }

    async fn set_partial(&self, key: &Key, offset: u64, data: &[u8]) -> Result<(), Error> {
        let _g = self.lock.lock().await;
        let e = self.entry(key)?;
        let start = usize::try_from(offset).map_err(|_| Error::NoSpace)?;
        let end = start.checked_add(data.len()).ok_or(Error::NoSpace)?;
        let size = usize::try_from(e.size).map_err(|_| Error::NoSpace)?;
        let mut v = Vec::new();
        v.try_reserve_exact(size.max(end)).map_err(|_| Error::NoSpace)?;
        v.resize(size, 0);
        self.read_value(&e, 0, &mut v).await?;
        let sha: [u8; 32] = Sha256::digest(&v).into();
        if sha != e.digest {
            return Err(Error::Io);
        }
        if v.len() < end {
            v.resize(end, 0);
        }
        v[start..end].copy_from_slice(data);
        self.put(key, Source::Bytes(&v)).await
    }

    async fn remove(&self, key: &Key) -> Result<(), Error> {
        let _g = self.lock.lock().await;
        self.writable()?;
        let mut entries = self.state.borrow().entries.clone();
        if !tree::remove(&mut entries, key) {
            return Err(Error::NotFound);
        }
        self.put_index(entries, false).await
    }

    async fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        let _g = self.lock.lock().await;
        self.writable()?;
        if from == to {
            return if self.kind(from).is_some() { Ok(()) } else { Err(Error::NotFound) };
        }
        let mut entries = self.state.borrow().entries.clone();
        tree::rename(&mut entries, from, to)?;
        if entries.keys().any(|k| k.len() > MAX_KEY) {
            return Err(Error::InvalidKey);
        }
        self.put_index(entries, true).await
    }

    async fn allocate(&self, key: &Key, size: u64) -> Result<(), Error> {
        let _g = self.lock.lock().await;
        if self.kind(key).is_some() {
            return Err(Error::AlreadyPresent);
        }
        self.put(key, Source::Zeros(size)).await
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} values; {} of {} blocks of {} bytes free ({} more at the next checkpoint); generation {}",
            self.values, self.free_blocks, self.blocks, self.block_size, self.log_blocks, self.generation
        )
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::tests::now;
    use alloc::string::ToString;

    /// A disk in memory that models power loss: reads see every write;
    /// a flush makes the writes before it durable; after `budget` writes
    /// and flushes the power is cut (every later call fails), and
    /// [`Disk::crash`] gives the image a restart would find: the durable
    /// bytes plus any subset of the unflushed writes, some of them torn.
    struct Disk {
        sector: u32,
        live: RefCell<Vec<u8>>,
        durable: RefCell<Vec<u8>>,
        pending: RefCell<Vec<(usize, Vec<u8>)>>,
        budget: Cell<u64>,
        writes: Cell<u64>,
        flushes: Cell<u64>,
    }

    impl Disk {
        fn new(image: Vec<u8>, sector: u32) -> Disk {
            Disk {
                sector,
                live: RefCell::new(image.clone()),
                durable: RefCell::new(image),
                pending: RefCell::new(Vec::new()),
                budget: Cell::new(u64::MAX),
                writes: Cell::new(0),
                flushes: Cell::new(0),
            }
        }

        fn blank(bytes: usize) -> Disk {
            Disk::new(vec![0; bytes], 512)
        }

        fn spend(&self) -> Result<(), block::Error> {
            match self.budget.get() {
                0 => Err(block::Error::Io),
                n => {
                    self.budget.set(n - 1);
                    Ok(())
                }
            }
        }

        fn crash(&self, rng: &mut Rng) -> Vec<u8> {
            let mut img = self.durable.borrow().clone();
            for (at, data) in self.pending.borrow().iter() {
                match rng.below(4) {
                    0 => {}
                    1 => {
                        let n = rng.below(data.len() as u64 + 1) as usize;
                        img[*at..*at + n].copy_from_slice(&data[..n]);
                    }
                    _ => img[*at..*at + data.len()].copy_from_slice(data),
                }
            }
            img
        }
    }

    impl Block for Disk {
        fn info(&self) -> block::BlockInfo {
            block::BlockInfo::new(self.sector, (self.live.borrow().len() / self.sector as usize) as u64, false)
        }
        async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), block::Error> {
            self.info().check(sector, buf.len())?;
            let at = (sector * u64::from(self.sector)) as usize;
            buf.copy_from_slice(&self.live.borrow()[at..at + buf.len()]);
            Ok(())
        }
        async fn write(&self, sector: u64, data: &[u8]) -> Result<(), block::Error> {
            self.info().check(sector, data.len())?;
            self.spend()?;
            self.writes.set(self.writes.get() + 1);
            let at = (sector * u64::from(self.sector)) as usize;
            self.live.borrow_mut()[at..at + data.len()].copy_from_slice(data);
            self.pending.borrow_mut().push((at, data.to_vec()));
            Ok(())
        }
        async fn flush(&self) -> Result<(), block::Error> {
            self.spend()?;
            self.flushes.set(self.flushes.get() + 1);
            let mut d = self.durable.borrow_mut();
            for (at, data) in self.pending.borrow_mut().drain(..) {
                d[at..at + data.len()].copy_from_slice(&data);
            }
            Ok(())
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    struct Clock;
    impl WallClock for Clock {
        fn now(&self) -> Timestamp {
            Timestamp(1_700_000_000)
        }
    }

    fn k(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut r = Rng(seed | 1);
        (0..n).map(|_| r.next() as u8).collect()
    }

    fn open(d: &Disk) -> BlockStore<&Disk, Clock> {
        now(BlockStore::open(d, Clock)).unwrap()
    }

    /// Every value, read through `get` (which checks each digest).
    fn contents<B: Block>(s: &BlockStore<B, Clock>) -> BTreeMap<String, Vec<u8>> {
        let keys: Vec<String> = s.state.borrow().entries.keys().cloned().collect();
        keys.into_iter().map(|key| (key.clone(), now(s.get(&k(&key))).unwrap())).collect()
    }

    #[test]
    fn a_store_on_a_block_device() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        assert_eq!(s.recovery(), None);
        now(s.set(&k("a/b"), b"one")).unwrap();
        now(s.set(&k("a/c/d"), &bytes(1, 5000))).unwrap();
        now(s.set(&k("empty"), b"")).unwrap();
        assert_eq!(now(s.exists(&k("a"))), Ok(Some(Kind::Dictionary)));
        assert_eq!(now(s.get(&k("a"))), Err(Error::ValueExpected));
        assert_eq!(now(s.set(&k("a/b/x"), b"")), Err(Error::DictionaryExpected));
        assert_eq!(now(s.set(&k("a"), b"")), Err(Error::ValueExpected));
        now(s.set_partial(&k("a/b"), 5, b"!")).unwrap();
        assert_eq!(now(s.get(&k("a/b"))).unwrap(), b"one\0\0!");
        assert_eq!(now(s.list(&k("a"))).unwrap(), [(k("a/b"), Kind::Value), (k("a/c"), Kind::Dictionary)]);
        let mut buf = [0u8; 10];
        assert_eq!(now(s.get_partial(&k("a/c/d"), 4095, &mut buf)), Ok(10));
        assert_eq!(buf[..], bytes(1, 5000)[4095..4105]);
        assert_eq!(now(s.get_partial(&k("a/c/d"), 4995, &mut buf)), Ok(5));
        now(s.rename(&k("a/c"), &k("z"))).unwrap();
        assert_eq!(now(s.get(&k("z/d"))).unwrap(), bytes(1, 5000));
        assert_eq!(now(s.allocate(&k("z/d"), 4)), Err(Error::AlreadyPresent));
        now(s.allocate(&k("big"), 70_000)).unwrap();
        assert_eq!(now(s.get(&k("big"))).unwrap(), vec![0; 70_000]);
        assert_eq!(now(s.digest(&k("empty"))).unwrap().0[0], 0xe3);
        let before = contents(&s);
        drop(s);
        // Everything is there after opening again.
        let s = open(&d);
        assert_eq!(contents(&s), before);
        assert_eq!(s.recovery(), None);
        // The same image on a device of 4096-byte sectors.
        let d4 = Disk::new(d.live.borrow().clone(), 4096);
        assert_eq!(contents(&open(&d4)), before);
        now(s.remove(&k("z"))).unwrap();
        assert_eq!(now(s.exists(&k("z/d"))), Ok(None));
        assert_eq!(now(s.remove(&k("nothing"))), Err(Error::NotFound));
        assert_eq!(now(s.check()), Ok(vec![]));
    }

    /// Formatting a device that held a store: its second record, in the
    /// block the new store's first reserves, was followed when it opened,
    /// and the "empty" store came back with the old contents.
    #[test]
    fn a_device_formatted_again_opens_empty() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        for i in 0..5 {
            now(s.set(&k(&format!("old{i}")), &bytes(i, 300))).unwrap();
        }
        drop(s);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        assert!(contents(&s).is_empty(), "{:?}", contents(&s).keys().collect::<Vec<_>>());
        drop(s);
        assert!(contents(&open(&d)).is_empty());
    }

    /// The block reserved for the next record holds none once the record
    /// that reserves it is on the disk, whatever it held before (a
    /// value's bytes may spell a record of the next generation).
    #[test]
    fn the_block_reserved_for_the_next_record_is_zeroed_with_the_record() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        let g = s.geo;
        for i in 0..100u64 {
            // Values of every size fill freed blocks with their bytes.
            now(s.set(&k(&format!("k{}", i % 9)), &bytes(i, (i as usize * 997) % 20_000))).unwrap();
            let next = s.state.borrow().next;
            let at = (next * g.spb * 512) as usize;
            let durable = d.durable.borrow();
            assert!(durable[at..at + g.block as usize].iter().all(|&b| b == 0), "block {next} after change {i}");
        }
    }

    /// A newest superblock whose checksum holds but whose store is larger
    /// than the device (it lies): the older slot opens, and says so. A
    /// device cut short, where both say so, is named as such.
    #[test]
    fn a_superblock_larger_than_the_device_gives_way_to_the_other() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        for i in 0..(u64::from(LOG_MAX) + 3) {
            now(s.set(&k(&format!("k{}", i % 5)), &bytes(i, 200))).unwrap();
        }
        let newest = s.state.borrow().slot;
        drop(s);
        let at = (newest * u64::from(SLOT)) as usize;
        let mut sb = match Super::decode(&d.live.borrow()[at..at + SUPER_LEN]) {
            Some(Ok(sb)) => sb,
            other => panic!("{other:?}"),
        };
        sb.blocks *= 1000;
        let mut image = d.live.borrow().clone();
        image[at..at + SUPER_LEN].copy_from_slice(&sb.encode());
        let lied = Disk::new(image.clone(), 512);
        let s = open(&lied);
        assert!(s.recovery().is_some_and(|r| r.contains("superblock")), "{:?}", s.recovery());
        // Cut short: both superblocks name more than the device holds.
        let cut = Disk::new(image[..1 << 19].to_vec(), 512);
        assert!(matches!(now(BlockStore::open(&cut, Clock)), Err(OpenError::Truncated { .. })));
    }

    #[test]
    fn values_of_several_mebibytes_in_fragmented_space() {
        let d = Disk::blank(16 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        for i in 0..64 {
            now(s.set(&k(&format!("small/{i}")), &bytes(i, 100_000))).unwrap();
        }
        for i in (0..64).step_by(2) {
            now(s.remove(&k(&format!("small/{i}")))).unwrap();
        }
        let big = bytes(99, 11 << 20);
        now(s.set(&k("big"), &big)).unwrap();
        match &s.state.borrow().entries["/big"].data {
            Data::Extents(x) => assert!(x.len() > 1, "the value fills the holes"),
            Data::Inline(_) => panic!("inline"),
        }
        let s = open(&d);
        assert_eq!(now(s.get(&k("big"))).unwrap(), big);
        let mut buf = vec![0u8; 300_000];
        assert_eq!(now(s.get_partial(&k("big"), 1_000_001, &mut buf)), Ok(300_000));
        assert_eq!(buf[..], big[1_000_001..1_300_001]);
        assert_eq!(now(s.get(&k("small/63"))).unwrap(), bytes(63, 100_000));
    }

    #[test]
    fn space_is_reclaimed() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        let free = s.usage().free_blocks;
        let v = bytes(1, 300_000);
        for _ in 0..300 {
            now(s.set(&k("v"), &v)).unwrap();
        }
        now(s.remove(&k("v"))).unwrap();
        let u = s.usage();
        assert_eq!(u.free_blocks + u.log_blocks, free);
        assert!(u.log_blocks <= u64::from(LOG_MAX), "the log is checkpointed: {u}");
    }

    #[test]
    fn a_full_store_says_so_stays_readable_and_can_be_emptied() {
        let d = Disk::blank(256 << 10);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        let mut stored = 0;
        loop {
            match now(s.set(&k(&format!("v{stored}")), &bytes(stored, 10_000))) {
                Ok(()) => stored += 1,
                Err(Error::NoSpace) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(stored > 10, "{stored}");
        // Small values go into the index until it no longer fits either.
        let mut small = 0;
        while now(s.set(&k(&format!("s{small}")), &[7; 100])).is_ok() {
            small += 1;
        }
        assert_eq!(now(s.set(&k("one-more"), &[1; 100])), Err(Error::NoSpace));
        assert_eq!(now(s.set(&k("big"), &[1; 1 << 20])), Err(Error::NoSpace));
        let s = open(&d);
        for i in 0..stored {
            assert_eq!(now(s.get(&k(&format!("v{i}")))).unwrap(), bytes(i, 10_000));
        }
        for i in 0..small {
            now(s.remove(&k(&format!("s{i}")))).unwrap();
        }
        for i in 0..stored {
            now(s.remove(&k(&format!("v{i}")))).unwrap();
        }
        now(s.set(&k("again"), &bytes(5, 100_000))).unwrap();
    }

    /// A power cut at every write or flush of a random run of changes:
    /// the store opens, holds every acknowledged change, and the change in
    /// flight entirely or not at all.
    #[test]
    fn power_loss_at_any_moment_loses_nothing_acknowledged() {
        let mut rng = Rng(0x5eed);
        let mut trials = 0;
        let mut in_flight_kept = 0;
        for budget in 0..300u64 {
            for _ in 0..2 {
                trials += 1;
                let d = Disk::blank(512 << 10);
                let s = now(BlockStore::format(&d, Clock, Some(1024))).unwrap();
                d.budget.set(budget);
                let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                let mut in_flight = None;
                for step in 0..1000 {
                    let key = format!("/k{}", rng.below(6));
                    let mut next = model.clone();
                    let r = match rng.below(4) {
                        0 | 1 => {
                            let len = [0, 50, 128, 129, 1000, 5000, 40_000][rng.below(7) as usize];
                            let v = bytes(rng.next(), len);
                            next.insert(key.clone(), v.clone());
                            now(s.set(&k(&key), &v))
                        }
                        2 => {
                            let r = now(s.remove(&k(&key)));
                            if next.remove(&key).is_none() {
                                assert_eq!(r, Err(Error::NotFound));
                                continue;
                            }
                            r
                        }
                        _ => {
                            let to = format!("/k{}", rng.below(6));
                            let r = now(s.rename(&k(&key), &k(&to)));
                            match next.remove(&key) {
                                None => {
                                    assert_eq!(r, Err(Error::NotFound));
                                    continue;
                                }
                                Some(v) => next.insert(to, v),
                            };
                            r
                        }
                    };
                    match r {
                        Ok(()) => model = next,
                        Err(Error::Io) => {
                            in_flight = Some(next);
                            break;
                        }
                        Err(e) => panic!("step {step}: {e}"),
                    }
                }
                let image = d.crash(&mut rng);
                let d2 = Disk::new(image, 512);
                let s2 = now(BlockStore::open(&d2, Clock)).unwrap_or_else(|e| panic!("budget {budget}: {e}"));
                let found = contents(&s2);
                if in_flight.as_ref() == Some(&found) && found != model {
                    in_flight_kept += 1;
                } else {
                    assert_eq!(found, model, "budget {budget}: an acknowledged change is lost or a value is torn");
                }
                // The store goes on working after the crash.
                now(s2.set(&k("after"), b"x")).unwrap();
                assert_eq!(now(BlockStore::open(&d2, Clock)).unwrap().state.borrow().entries.len(), found.len() + 1);
            }
        }
        std::println!(
            "{trials} power cuts: every acknowledged change found; {in_flight_kept} kept the change in flight"
        );
    }

    #[test]
    fn damaged_images_are_refused_or_rolled_back_never_a_panic() {
        let d = Disk::blank(256 << 10);
        let s = now(BlockStore::format(&d, Clock, Some(1024))).unwrap();
        for i in 0..20 {
            now(s.set(&k(&format!("d/{i}")), &bytes(i, (i as usize) * 500))).unwrap();
        }
        let good = d.live.borrow().clone();
        let mut rng = Rng(7);
        let (mut refused, mut opened, mut rolled_back) = (0, 0, 0);
        for trial in 0..1200 {
            let mut img = good.clone();
            match trial % 3 {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let bit = rng.below(img.len() as u64 * 8);
                        img[(bit / 8) as usize] ^= 1 << (bit % 8);
                    }
                }
                1 => {
                    let b = rng.below((img.len() / 1024) as u64) as usize;
                    img[b * 1024..(b + 1) * 1024].fill(0);
                }
                _ => {
                    // Bit flips in the superblocks and the index, where
                    // they matter most.
                    let bit = rng.below(12 * 1024 * 8);
                    img[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            }
            let dd = Disk::new(img, 512);
            match now(BlockStore::open(&dd, Clock)) {
                Err(e) => {
                    refused += 1;
                    assert!(!e.to_string().is_empty());
                }
                Ok(s) => {
                    opened += 1;
                    if s.recovery().is_some() {
                        rolled_back += 1;
                    }
                    for (key, _) in now(s.check()).unwrap() {
                        assert_eq!(now(s.get(&key)), Err(Error::Io));
                    }
                    let _ = now(s.set(&k("new"), b"value"));
                }
            }
        }
        std::println!("{refused} refused, {opened} opened ({rolled_back} rolled back)");
        assert!(opened > 0 && refused + rolled_back > 0);
    }

    #[test]
    fn a_change_after_a_roll_back_never_meets_the_abandoned_log() {
        let d = Disk::blank(64 << 10);
        let s = now(BlockStore::format(&d, Clock, Some(1024))).unwrap();
        let mut heads = Vec::new();
        for v in [b"one", b"two", b"six"] {
            now(s.set(&k("a"), v)).unwrap();
            heads.push(s.state.borrow().record[0]);
        }
        // The record of "two" damaged: the store opens at "one", and
        // "six" lies whole past it, one generation on.
        d.live.borrow_mut()[heads[1] as usize * 1024 + NEXT_LEN + REC_HDR + 12] ^= 0x40;
        let s = open(&d);
        assert!(s.recovery().is_some());
        assert_eq!(now(s.get(&k("a"))).unwrap(), b"one");
        // An acknowledged change after it survives reopening, and "six"
        // never comes back: the change's record reserved the block "six"
        // lies in, a generation on from the change.
        now(s.set(&k("b"), b"kept")).unwrap();
        let s = open(&d);
        assert_eq!(s.recovery(), None);
        assert_eq!(now(s.get(&k("a"))).unwrap(), b"one");
        assert_eq!(now(s.get(&k("b"))).unwrap(), b"kept");
        now(s.set(&k("c"), b"kept too")).unwrap();
        let s = open(&d);
        assert_eq!(now(s.get(&k("b"))).unwrap(), b"kept");
        assert_eq!(now(s.get(&k("c"))).unwrap(), b"kept too");
    }

    #[test]
    fn opening_follows_no_longer_log_than_the_store_writes() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, Some(1024))).unwrap();
        // Checkpoints that never happen: the log as a hostile image (or
        // checkpoints failing for ever) would leave it.
        for i in 0..LOG_LIMIT + 10 {
            now(s.set(&k("a"), &i.to_le_bytes())).unwrap();
            if s.state.borrow().log_len >= LOG_LIMIT {
                break;
            }
            s.state.borrow_mut().log_len = 0;
        }
        let s = open(&d);
        let why = s.recovery().unwrap();
        assert!(why.contains("past 128 records"), "{why}");
        assert_eq!(s.state.borrow().log_len, LOG_LIMIT);
    }

    #[test]
    fn a_newer_damaged_index_rolls_back_with_a_message() {
        let d = Disk::blank(64 << 10);
        let s = now(BlockStore::format(&d, Clock, Some(1024))).unwrap();
        now(s.set(&k("a"), b"first")).unwrap();
        now(s.set(&k("a"), b"second")).unwrap();
        // The last record, reached through the log: a flipped bit in its
        // index.
        let head = s.state.borrow().record[0];
        d.live.borrow_mut()[head as usize * 1024 + NEXT_LEN + REC_HDR + 12] ^= 0x40;
        let s = open(&d);
        assert_eq!(now(s.get(&k("a"))).unwrap(), b"first");
        let why = s.recovery().unwrap();
        assert!(why.contains("checksum"), "{why}");
        // The record a superblock names: the other slot's, older. The
        // first change after the roll back is named by one at once; then
        // changes until the next checkpoint, within LOG_MAX records.
        now(s.set(&k("b"), &[0; 3])).unwrap();
        assert_eq!(s.state.borrow().log_len, 0, "the first change after a roll back is checkpointed");
        for i in 1..=LOG_MAX {
            now(s.set(&k("b"), &[i as u8; 3])).unwrap();
            if s.state.borrow().log_len == 0 {
                break;
            }
        }
        assert_eq!(s.state.borrow().log_len, 0, "a checkpoint within {LOG_MAX} records");
        let slot = s.state.borrow().slot;
        let head = {
            let mut b = [0u8; 512];
            now(d.read(slot_sector(slot, 512), &mut b)).unwrap();
            Super::decode(&b).unwrap().unwrap().index_head
        };
        d.live.borrow_mut()[head as usize * 1024 + NEXT_LEN + REC_HDR + 12] ^= 0x40;
        let s = open(&d);
        let why = s.recovery().unwrap();
        assert!(why.contains("from superblock") && why.contains("checksum"), "{why}");
    }

    /// A change of small values is one write and one flush (the record
    /// appended where the last reserved); every LOG_MAX changes a
    /// checkpoint adds a superblock write and a flush. Opening follows the
    /// log to the last change.
    #[test]
    fn a_small_change_is_one_write_and_one_flush() {
        let d = Disk::blank(1 << 20);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        let changes = 3 * u64::from(LOG_MAX) + 5;
        let (w0, f0) = (d.writes.get(), d.flushes.get());
        for i in 0..changes {
            now(s.set(&k(&format!("k{}", i % 7)), &bytes(i, 100))).unwrap();
        }
        let checkpoints = changes / u64::from(LOG_MAX);
        assert_eq!(d.writes.get() - w0, changes + checkpoints);
        assert_eq!(d.flushes.get() - f0, changes + checkpoints);
        let s2 = open(&d);
        assert_eq!(contents(&s2), contents(&s));
        assert_eq!(s2.state.borrow().log_len, (changes % u64::from(LOG_MAX)) as u32);
        assert_eq!(s2.recovery(), None);
    }

    /// A store of the first format (superblocks naming a bare index, no
    /// log) opens, and its first change moves it to the current one.
    #[test]
    fn a_version_1_store_opens_and_is_carried_forward() {
        let d = Disk::blank(64 << 10);
        let g = Geometry::new(512, 1024, 64).unwrap();
        let mut entries = BTreeMap::new();
        let v = b"kept from version 1".to_vec();
        let digest = Sha256::digest(&v).into();
        entries.insert(
            String::from("/old"),
            Entry { modified: Timestamp(5), size: v.len() as u64, digest, data: Data::Inline(v.clone()) },
        );
        let index = serialize(&entries).unwrap();
        let mut block = vec![0u8; 1024];
        block[NEXT_LEN..NEXT_LEN + index.len()].copy_from_slice(&index);
        now(d.write(g.first * g.spb, &block)).unwrap();
        let sb = Super {
            version: VERSION_1,
            block_size: 1024,
            blocks: 64,
            generation: 9,
            index_head: g.first,
            index_len: index.len() as u64,
            index_sha: Sha256::digest(&index).into(),
        };
        let mut sector = vec![0u8; 512];
        sector[..SUPER_LEN].copy_from_slice(&sb.encode());
        now(d.write(0, &sector)).unwrap();
        let s = open(&d);
        assert_eq!(now(s.get(&k("/old"))).unwrap(), v);
        now(s.set(&k("/new"), b"v2")).unwrap();
        let s = open(&d);
        assert_eq!(now(s.get(&k("/old"))).unwrap(), v);
        assert_eq!(now(s.get(&k("/new"))).unwrap(), b"v2");
        let st = s.state.borrow();
        assert_eq!((st.generation, st.slot, st.log_len), (10, 1, 0));
        let mut b = [0u8; 512];
        now(d.read(slot_sector(1, 512), &mut b)).unwrap();
        assert_eq!(Super::decode(&b).unwrap().unwrap().version, VERSION);
    }

    #[test]
    fn wrong_images_are_named() {
        let d = Disk::blank(64 << 10);
        assert_eq!(now(BlockStore::open(&d, Clock)).unwrap_err(), OpenError::NotAStore);
        let s = now(BlockStore::format(&d, Clock, None)).unwrap();
        now(s.set(&k("a"), &[1; 5000])).unwrap();
        let mut img = d.live.borrow().clone();
        img.truncate(32 << 10);
        let e = now(BlockStore::open(&Disk::new(img, 512), Clock)).unwrap_err();
        assert_eq!(e, OpenError::Truncated { store: 64 << 10, device: 32 << 10 });
        assert!(e.to_string().contains("truncated"));
        assert!(matches!(now(BlockStore::format(&Disk::blank(4096), Clock, None)), Err(OpenError::TooSmall { .. })));
        assert_eq!(now(BlockStore::format(&d, Clock, Some(1000))).unwrap_err(), OpenError::BadBlockSize(1000));
        let mut img = d.live.borrow().clone();
        img[..8192].fill(0xff);
        let e = now(BlockStore::open(&Disk::new(img, 512), Clock)).unwrap_err();
        assert_eq!(e, OpenError::NotAStore);
    }
}
