//! A read-only store over a block device holding a tar archive (MirageOS's
//! `tar_kv_ro`): each regular file of the archive is a value, its path the
//! key.
//!
//! The archive is indexed once, when the store is opened: headers are read
//! (in 64 KiB windows), checked (checksum, numeric fields, bounds) and kept
//! as a sorted index; values are read from the device on demand. POSIX
//! ustar, GNU long names (`L`) and pax `path`/`size`/`mtime` records are
//! understood, so archives made by GNU tar, bsdtar and `mirage build` all
//! work. Directories are implied by paths; links, devices and FIFOs are
//! skipped.
//!
//! # Panics
//!
//! None on any device contents. The archive is untrusted input: every
//! header field is parsed with a checked conversion, every offset and size
//! is checked against the device before use (a file reaching past its end
//! is [`TarError::Truncated`]), and slicing is bounded by what was checked.
//! [`Tar::new`] answers a damaged archive with a [`TarError`] naming the
//! byte offset; reads of values answer [`Error::Io`] if the device fails.
//! A fuzz target feeds arbitrary images to `new` and every read.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use mirage_devices::block::{self, Block};
use mirage_devices::kv::{Digest, Error, Key, Kind, KvRo};
use mirage_devices::time::Timestamp;
use sha2::{Digest as _, Sha256};

use crate::index::{Index, Indexed};

/// The longest path taken, as [`crate::block_store::MAX_KEY`] is the
/// longest key the writable store takes.
const MAX_PATH: usize = 1024;

/// `len` zero bytes, or `None` where the heap cannot give them.
fn zeroed(len: usize) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).ok()?;
    v.resize(len, 0);
    Some(v)
}

/// Why an archive could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarError {
    /// Reading the device failed.
    Block(block::Error),
    /// A header at this byte offset is damaged (bad checksum or field).
    BadHeader(u64),
    /// The file at this offset reaches past the end of the device.
    Truncated(u64),
    /// A path of the archive is not a valid key (`..`, NUL), or names no
    /// file (empty, `/`).
    BadPath(String),
    /// A path is both a file and, as the parent of another file, a
    /// directory.
    Conflict(String),
    /// The index of the archive does not fit in memory.
    NoMemory,
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::Block(e) => write!(f, "reading the archive: {e}"),
            TarError::BadHeader(at) => {
                write!(f, "the tar header at byte {at} is damaged (bad checksum or field); is the disk a tar archive?")
            }
            TarError::Truncated(at) => write!(
                f,
                "the file whose header is at byte {at} reaches past the end of the disk; the archive is truncated"
            ),
            TarError::BadPath(p) => {
                write!(f, "the archive holds {p:?}, which is not a valid key (a file name, no `..`, no NUL)")
            }
            TarError::Conflict(p) => write!(
                f,
                "the archive holds {p:?} both as a file and as a directory; make the image from one directory tree"
            ),
            TarError::NoMemory => {
                f.write_str("the archive's index does not fit in memory; give the unikernel more (--mem) or the archive fewer files")
            }
        }
    }
}

/// One file of the archive.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    offset: u64,
    size: u64,
    modified: Timestamp,
}

/// The store.
#[derive(Debug)]
pub struct Tar<B> {
    block: B,
    sector: u64,
    capacity: u64,
    entries: Vec<Entry>,
}

const HEADER: u64 = 512;
const WINDOW: u64 = 64 * 1024;

/// Parses a numeric header field: octal digits padded with spaces or
/// NULs, or GNU's base-256 (high bit of the first byte set).
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text = field.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = core::str::from_utf8(text).ok()?.trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A NUL-terminated string field.
fn string(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or(&[])
}

/// Whether the header's checksum holds (unsigned, or signed as some old
/// tars computed it).
fn checksum_ok(h: &[u8]) -> bool {
    let Some(want) = number(&h[148..156]) else { return false };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
}

/// The values of pax records `path`, `size` and `mtime`.
fn pax(data: &[u8]) -> (Option<String>, Option<u64>, Option<u64>) {
    let (mut path, mut size, mut mtime) = (None, None, None);
    let mut rest = data;
    while let Some(sp) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = core::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse::<usize>().ok()) else { break };
        if len <= sp + 1 || len > rest.len() {
            break;
        }
        let record = &rest[sp + 1..len - 1];
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let value = core::str::from_utf8(&record[eq + 1..]).ok();
            match &record[..eq] {
                b"path" => path = value.map(String::from),
                b"size" => size = value.and_then(|v| v.parse().ok()),
                b"mtime" => mtime = value.and_then(|v| v.split('.').next()).and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    (path, size, mtime)
}

impl<B: Block> Tar<B> {
    /// Opens the archive on `block` and indexes it.
    pub async fn new(block: B) -> Result<Tar<B>, TarError> {
        let info = block.info();
        let mut tar =
            Tar { sector: u64::from(info.sector_size), capacity: info.capacity(), block, entries: Vec::new() };
        tar.read_index().await?;
        Ok(tar)
    }

    /// The number of files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive holds no file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads `buf.len()` bytes at byte `offset` of the device, through
    /// whole sectors.
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), block::Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / self.sector;
        let end = offset + buf.len() as u64;
        let last = end.div_ceil(self.sector);
        let skip = (offset - first * self.sector) as usize;
        if skip == 0 && (buf.len() as u64).is_multiple_of(self.sector) {
            return self.block.read(first, buf).await;
        }
        // Fallible: a file's bytes as large as the device would otherwise
        // end the unikernel when memory is short.
        let mut tmp = zeroed(((last - first) * self.sector) as usize).ok_or(block::Error::Io)?;
        self.block.read(first, &mut tmp).await?;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    async fn read_index(&mut self) -> Result<(), TarError> {
        let mut window: Vec<u8> = Vec::new();
        let mut window_at = u64::MAX;
        let mut at = 0u64;
        let mut long_name: Option<String> = None;
        let mut pax_next: (Option<String>, Option<u64>, Option<u64>) = (None, None, None);
        let mut entries = Vec::new();
        while at.checked_add(HEADER).is_some_and(|end| end <= self.capacity) {
            if window_at == u64::MAX || at < window_at || at + HEADER > window_at + window.len() as u64 {
                window_at = at - at % self.sector;
                let len = WINDOW.max(self.sector).min(self.capacity - window_at);
                window.resize(len as usize, 0);
                self.read_at(window_at, &mut window).await.map_err(TarError::Block)?;
            }
            let off = (at - window_at) as usize;
            let h = &window[off..off + HEADER as usize];
            if h.iter().all(|&b| b == 0) {
                break; // the end-of-archive marker
            }
            if !checksum_ok(h) {
                return Err(TarError::BadHeader(at));
            }
            let mut size = number(&h[124..136]).ok_or(TarError::BadHeader(at))?;
            let mtime = number(&h[136..148]).ok_or(TarError::BadHeader(at))?;
            let kind = h[156];
            let name = string(&h[0..100]);
            let mut path = if &h[257..262] == b"ustar" && h[345] != 0 {
                let mut p = Vec::from(string(&h[345..500]));
                p.push(b'/');
                p.extend_from_slice(name);
                String::from_utf8_lossy(&p).into_owned()
            } else {
                String::from_utf8_lossy(name).into_owned()
            };
            let header_at = at;
            if kind == b'x' {
                // Pax records apply to the next header.
                let mut data =
                    alloc::vec![0u8; usize::try_from(size).map_err(|_| TarError::BadHeader(at))?.min(1 << 20)];
                self.read_at(at + HEADER, &mut data).await.map_err(|_| TarError::Truncated(header_at))?;
                pax_next = pax(&data);
            } else if kind == b'L' {
                let mut data =
                    alloc::vec![0u8; usize::try_from(size).map_err(|_| TarError::BadHeader(at))?.min(1 << 16)];
                self.read_at(at + HEADER, &mut data).await.map_err(|_| TarError::Truncated(header_at))?;
                long_name = Some(String::from_utf8_lossy(string(&data)).into_owned());
            } else {
                let (pax_path, pax_size, pax_mtime) = core::mem::take(&mut pax_next);
                if let Some(p) = long_name.take().or(pax_path) {
                    path = p;
                }
                // As the writable stores allow: a pax path of a megabyte
                // of `a/a/…` would cost its every parent's walk.
                if path.len() > MAX_PATH {
                    return Err(TarError::BadPath(path));
                }
                size = pax_size.unwrap_or(size);
                if kind == b'0' || kind == 0 || kind == b'7' {
                    let key = Key::parse(&path).map_err(|_| TarError::BadPath(path.clone()))?;
                    // A file named "", "/" or "./" would be the root, which
                    // is the dictionary of everything.
                    if key.is_root() {
                        return Err(TarError::BadPath(path));
                    }
                    let data_at = at + HEADER;
                    if data_at.checked_add(size).is_none_or(|end| end > self.capacity) {
                        return Err(TarError::Truncated(header_at));
                    }
                    let modified = Timestamp(pax_mtime.unwrap_or(mtime).saturating_mul(1_000_000_000));
                    entries.try_reserve(1).map_err(|_| TarError::NoMemory)?;
                    entries.push(Entry { path: String::from(key.as_str()), offset: data_at, size, modified });
                }
            }
            let data_blocks = size.div_ceil(HEADER);
            // Every member's data within the device, whatever its kind: a
            // directory or link claiming 2^64 bytes would wrap `at` round.
            at = data_blocks
                .checked_mul(HEADER)
                .and_then(|d| d.checked_add(at + HEADER))
                .filter(|&next| next <= self.capacity.next_multiple_of(HEADER))
                .ok_or(TarError::Truncated(header_at))?;
        }
        entries.sort_by(|a: &Entry, b: &Entry| a.path.cmp(&b.path));
        // A later member of the same path replaces an earlier one, as tar
        // extracts; the sort is stable, so the last is the latest.
        let mut dedup: Vec<Entry> = Vec::new();
        dedup.try_reserve_exact(entries.len()).map_err(|_| TarError::NoMemory)?;
        for e in entries {
            match dedup.last_mut() {
                Some(last) if last.path == e.path => *last = e,
                _ => dedup.push(e),
            }
        }
        // A key is a value or a dictionary, never both (as in every store):
        // no file may sit under another.
        // Each parent is a prefix of the path: looked up in place, not
        // copied.
        for e in &dedup {
            for (i, _) in e.path.match_indices('/').filter(|&(i, _)| i > 0) {
                let parent = &e.path[..i];
                if dedup.binary_search_by(|x| x.path.as_str().cmp(parent)).is_ok() {
                    return Err(TarError::Conflict(String::from(parent)));
                }
            }
        }
        self.entries = dedup;
        Ok(())
    }

    fn index(&self) -> Index<'_, Entry> {
        Index(&self.entries)
    }
}

impl Indexed for Entry {
    fn path(&self) -> &str {
        &self.path
    }

    fn modified(&self) -> Timestamp {
        self.modified
    }
}

impl<B: Block> KvRo for Tar<B> {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        Ok(self.index().kind(key))
    }

    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error> {
        let e = self.index().value_or_err(key)?;
        let len = usize::try_from(e.size).map_err(|_| Error::NoSpace)?;
        let mut data = zeroed(len).ok_or(Error::NoSpace)?;
        self.read_at(e.offset, &mut data).await.map_err(|_| Error::Io)?;
        Ok(data)
    }

    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let e = self.index().value_or_err(key)?;
        let start = offset.min(e.size);
        let n = (buf.len() as u64).min(e.size - start) as usize;
        if n > 0 {
            self.read_at(e.offset + start, &mut buf[..n]).await.map_err(|_| Error::Io)?;
        }
        Ok(n)
    }

    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        self.index().list(key)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        self.index().last_modified(key)
    }

    async fn digest(&self, key: &Key) -> Result<Digest, Error> {
        let e = self.index().value_or_err(key)?;
        let mut hash = Sha256::new();
        let mut piece = alloc::vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < e.size {
            let n = (e.size - at).min(piece.len() as u64) as usize;
            self.read_at(e.offset + at, &mut piece[..n]).await.map_err(|_| Error::Io)?;
            hash.update(&piece[..n]);
            at += n as u64;
        }
        Ok(Digest(hash.finalize().into()))
    }

    async fn size(&self, key: &Key) -> Result<u64, Error> {
        Ok(self.index().value_or_err(key)?.size)
    }
}

/// Writes a ustar archive of `files` (`(path, data, mtime seconds)`),
/// padded to whole sectors of `sector` bytes: the disk image a [`Tar`]
/// store reads. Paths longer than ustar holds get a pax `path` record.
pub fn write_archive<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8], u64)>, sector: usize) -> Vec<u8> {
    fn header(name: &[u8], prefix: &[u8], size: u64, mtime: u64, kind: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        // Octal digits and a NUL; GNU's base-256 (the high bit of the first
        // byte set, then big-endian) for a value that needs more digits,
        // such as a time after 2242 or a size over 8 GiB.
        let octal = |h: &mut [u8], v: u64| {
            let digits = h.len() - 1;
            let s = alloc::format!("{v:0digits$o}");
            if s.len() == digits {
                h[..digits].copy_from_slice(s.as_bytes());
            } else {
                h.fill(0);
                let be = v.to_be_bytes();
                let n = be.len().min(h.len() - 1);
                let at = h.len() - n;
                h[at..].copy_from_slice(&be[be.len() - n..]);
                h[0] = 0x80;
            }
        };
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], mtime);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let s = alloc::format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| out.resize(out.len().div_ceil(512) * 512, 0);
    for (path, data, mtime) in files {
        let path = path.trim_start_matches('/');
        let bytes = path.as_bytes();
        // ustar: a name of up to 100 bytes, after a prefix of up to 155
        // split at a `/`.
        let split = if bytes.len() <= 100 {
            Some((&b""[..], bytes))
        } else {
            bytes
                .iter()
                .enumerate()
                .filter(|&(i, &b)| b == b'/' && i <= 155 && bytes.len() - i - 1 <= 100)
                .map(|(i, _)| (&bytes[..i], &bytes[i + 1..]))
                .next()
        };
        let (prefix, name) = match split {
            Some(x) => x,
            None => {
                let record_body = alloc::format!(" path={path}\n");
                let mut len = record_body.len();
                while alloc::format!("{len}").len() + record_body.len() != len {
                    len = alloc::format!("{len}").len() + record_body.len();
                }
                let record = alloc::format!("{len}{record_body}");
                out.extend_from_slice(&header(b"././@PaxHeader", b"", record.len() as u64, mtime, b'x'));
                out.extend_from_slice(record.as_bytes());
                pad(&mut out);
                (&b""[..], &bytes[..bytes.len().min(100)])
            }
        };
        out.extend_from_slice(&header(name, prefix, data.len() as u64, mtime, b'0'));
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out.resize(out.len() + 1024, 0);
    let sector = sector.max(512);
    out.resize(out.len().div_ceil(sector) * sector, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  644 \0"), Some(0o644));
        assert_eq!(number(b"\0\0\0\0"), Some(0));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(b"0009\0"), None);
    }

    #[test]
    fn pax_records() {
        let (p, s, m) = pax(b"30 path=a/very/long/name.html\n20 mtime=1700000000.5\n");
        assert_eq!(p.as_deref(), Some("a/very/long/name.html"));
        assert_eq!(s, None);
        assert_eq!(m, Some(1_700_000_000));
        assert_eq!(pax(b"999 path=x\n"), (None, None, None));
    }

    #[test]
    fn written_headers_check() {
        let a = write_archive([("index.html", &b"hi"[..], 5)], 512);
        assert_eq!(a.len(), 512 * 4);
        assert!(checksum_ok(&a[..512]));
        assert_eq!(number(&a[124..136]), Some(2));
        assert_eq!(&a[512..514], b"hi");
    }
}
