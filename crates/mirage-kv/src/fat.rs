//! FAT12, FAT16 and FAT32 volumes over any block device (MirageOS's
//! `fat`): a read-write store whose images the host's tools share
//! (`mtools`, `mkfs.fat`, `fsck.fat`, a loop mount).
//!
//! Keys are paths (`/dir/file.txt`), dictionaries are directories. Names
//! are long file names (VFAT): a name that is not a plain 8.3 name is
//! written as LFN entries followed by a generated short name (`BASIS~N`)
//! whose checksum they carry, as Linux and mtools do; names compare
//! without regard to case, as FAT's do. Times are the store's wall clock,
//! written as FAT's local time read as UTC.
//!
//! # Not a crash-safe store
//!
//! FAT has no journal. A change here is ordered so that a crash loses at
//! most that change and leaks clusters rather than corrupting others: a
//! value's new clusters are written and chained first, then its directory
//! entry is pointed at them, then its old clusters are freed, then the
//! device is flushed. A crash between those steps leaves the old or the
//! new value, and clusters marked used that no file names (`fsck.fat`
//! reclaims them); a crash in the middle of writing a directory sector or
//! a FAT sector mirrored to two FATs can leave the two FATs differing.
//! [`BlockStore`](crate::BlockStore) is the store that survives a crash;
//! FAT is for exchanging images with the host.
//!
//! # Damaged and hostile images
//!
//! Everything read from the device is untrusted. The boot sector's fields
//! are checked before use ([`FatError`] names the field); a cluster chain
//! is walked at most as many steps as the volume has clusters (a loop is
//! an error, not a hang); a cluster outside the volume, a free or bad
//! cluster inside a chain, a file larger than its chain, or a directory
//! larger than FAT allows (65,536 entries) answers [`Error::Io`], and
//! [`Fat::check`] names the problem. A broken LFN sequence (wrong order,
//! wrong checksum) is ignored, as Linux and `fsck.fat` do: the file is
//! then seen under its short name. No allocation is larger than a
//! directory (2 MiB at most), a value asked for whole (once its chain is
//! known to cover it), or a run of clusters read at once (256 KiB).
//!
//! # Memory
//!
//! The FAT is not held in memory: its sectors go through a cache of 16
//! sectors (written back, to every copy of the FAT, at the end of each
//! step of a change). The count of free clusters is computed by reading
//! the FAT once, at the first change.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use mirage_devices::block::{self, Block};
use mirage_devices::kv::{Digest, Error, Key, Kind, KvRo, KvRw};
use mirage_devices::time::{Timestamp, WallClock};
use sha2::{Digest as _, Sha256};

use crate::block_store::Lock;

/// The three kinds of FAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit entries: fewer than 4,085 clusters.
    Fat12,
    /// 16-bit entries: fewer than 65,525 clusters.
    Fat16,
    /// 28-bit entries.
    Fat32,
}

impl fmt::Display for FatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

/// Why a volume could not be opened or formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FatError {
    /// The device failed.
    Block(block::Error),
    /// The first sector is not a FAT boot sector.
    NotFat,
    /// A field of the boot sector is impossible; the text names it.
    BadBootSector(String),
    /// The volume is larger than the device: the image was truncated.
    Truncated {
        /// Bytes the volume spans.
        volume: u64,
        /// Bytes the device holds.
        device: u64,
    },
    /// The device's sectors are larger than the volume's.
    SectorSize {
        /// The volume's sector size.
        volume: u32,
        /// The device's.
        device: u32,
    },
    /// The device is too small for a volume of the type asked for.
    TooSmall(String),
    /// The device is read-only (formatting).
    ReadOnly,
}

impl fmt::Display for FatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatError::Block(e) => write!(f, "reading the FAT volume's device: {e}"),
            FatError::NotFat => f.write_str(
                "the device holds no FAT volume (no boot sector signature); format it (`mkfs.fat`, or `mirage kv \
                 format --fat`) first",
            ),
            FatError::BadBootSector(why) => {
                write!(f, "the FAT boot sector is damaged: {why}; restore the image or format it again")
            }
            FatError::Truncated { volume, device } => write!(
                f,
                "the FAT volume spans {volume} bytes but the device holds {device}: the image was truncated; \
                 restore it from a copy or grow the file back to {volume} bytes"
            ),
            FatError::SectorSize { volume, device } => write!(
                f,
                "the FAT volume has sectors of {volume} bytes but the device has sectors of {device}; attach it \
                 with sectors of {volume} bytes or less"
            ),
            FatError::TooSmall(why) => write!(f, "the device is too small: {why}"),
            FatError::ReadOnly => f.write_str("the device is read-only"),
        }
    }
}

impl From<block::Error> for FatError {
    fn from(e: block::Error) -> FatError {
        FatError::Block(e)
    }
}

/// Most entries a directory may hold (FAT's limit): 2 MiB.
const MAX_DIR_ENTRIES: usize = 65536;
/// FAT sectors the cache holds.
const CACHE: usize = 16;
/// Data is read and written in runs of at most this many bytes.
const CHUNK: u64 = 256 * 1024;
/// The largest value FAT holds.
const MAX_FILE: u64 = u32::MAX as u64;
/// Directory levels a removal or check descends at most.
const MAX_DEPTH: usize = 256;

const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LFN: u8 = 0x0f;
const DELETED: u8 = 0xe5;

/// Where things are on the volume, from the boot sector.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    kind: FatType,
    /// Bytes per volume sector.
    bps: u64,
    /// Sectors per cluster.
    spc: u64,
    /// Device sectors per volume sector.
    dps: u64,
    /// First sector of the first FAT.
    fat_start: u64,
    /// Sectors of one FAT.
    fat_sectors: u64,
    fats: u64,
    /// The fixed root directory of FAT12/16: first sector and sectors.
    root_start: u64,
    root_sectors: u64,
    /// First sector of cluster 2.
    data_start: u64,
    /// Clusters of the data region: they are numbered 2..clusters + 2.
    clusters: u32,
    /// The root directory's first cluster (FAT32).
    root_cluster: u32,
    /// The FSInfo sector (FAT32).
    fsinfo: Option<u64>,
}

impl Geometry {
    fn cluster_bytes(&self) -> u64 {
        self.bps * self.spc
    }

    fn cluster_sector(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * self.spc
    }

    /// The highest cluster number of the volume.
    fn last(&self) -> u32 {
        self.clusters + 1
    }

    fn in_range(&self, c: u32) -> bool {
        (2..=self.last()).contains(&c)
    }

    fn eoc(&self) -> u32 {
        match self.kind {
            FatType::Fat12 => 0xfff,
            FatType::Fat16 => 0xffff,
            FatType::Fat32 => 0x0fff_ffff,
        }
    }

    fn is_eoc(&self, v: u32) -> bool {
        v >= self.eoc() - 7
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads and checks the boot sector's fields.
fn parse_boot(b: &[u8], device_sector: u32, device_bytes: u64) -> Result<Geometry, FatError> {
    let bad = |s: String| Err(FatError::BadBootSector(s));
    if b[510] != 0x55 || b[511] != 0xaa {
        return Err(FatError::NotFat);
    }
    let bps = u64::from(le16(b, 11));
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return bad(format!("{bps} bytes per sector (512, 1024, 2048 or 4096)"));
    }
    let spc = u64::from(b[13]);
    if !spc.is_power_of_two() {
        return bad(format!("{spc} sectors per cluster (a power of two)"));
    }
    if bps * spc > 256 * 1024 {
        return bad(format!("clusters of {} bytes (256 KiB at most)", bps * spc));
    }
    let reserved = u64::from(le16(b, 14));
    if reserved == 0 {
        return bad(String::from("no reserved sector"));
    }
    let fats = u64::from(b[16]);
    if !(1..=4).contains(&fats) {
        return bad(format!("{fats} FATs (1 to 4)"));
    }
    let root_entries = u64::from(le16(b, 17));
    let total = match le16(b, 19) {
        0 => u64::from(le32(b, 32)),
        n => u64::from(n),
    };
    if total == 0 {
        return bad(String::from("a volume of 0 sectors"));
    }
    let fat16_size = u64::from(le16(b, 22));
    let fat32 = fat16_size == 0;
    let fat_sectors = if fat32 { u64::from(le32(b, 36)) } else { fat16_size };
    if fat_sectors == 0 {
        return bad(String::from("FATs of 0 sectors"));
    }
    if fat32 && root_entries != 0 {
        return bad(format!("a FAT32 volume with {root_entries} fixed root entries"));
    }
    if !fat32 && root_entries == 0 {
        return bad(String::from("a FAT12/16 volume with no root directory entries"));
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let root_start = reserved + fats * fat_sectors;
    let data_start = root_start + root_sectors;
    if data_start >= total {
        return bad(format!("its FATs and root directory ({data_start} sectors) fill the volume ({total} sectors)"));
    }
    let clusters = (total - data_start) / spc;
    let kind = if fat32 {
        FatType::Fat32
    } else if clusters < 4085 {
        FatType::Fat12
    } else if clusters < 65525 {
        FatType::Fat16
    } else {
        return bad(format!("{clusters} clusters, too many for FAT16, with a FAT16 layout"));
    };
    if clusters == 0 {
        return bad(String::from("no data cluster"));
    }
    if kind == FatType::Fat32 && clusters > 0x0fff_fff4 {
        return bad(format!("{clusters} clusters, too many for FAT32"));
    }
    let bits = match kind {
        FatType::Fat12 => 12,
        FatType::Fat16 => 16,
        FatType::Fat32 => 32,
    };
    if (clusters + 2) * bits > fat_sectors * bps * 8 {
        return bad(format!("FATs of {fat_sectors} sectors, too small for {clusters} clusters"));
    }
    let volume = total * bps;
    if volume > device_bytes {
        return Err(FatError::Truncated { volume, device: device_bytes });
    }
    if bps < u64::from(device_sector) || bps % u64::from(device_sector) != 0 {
        return Err(FatError::SectorSize { volume: bps as u32, device: device_sector });
    }
    let clusters = clusters as u32;
    let (root_cluster, fsinfo) = if kind == FatType::Fat32 {
        let rc = le32(b, 44) & 0x0fff_ffff;
        if !(2..=clusters + 1).contains(&rc) {
            return bad(format!("root directory cluster {rc} outside the volume"));
        }
        let fi = u64::from(le16(b, 48));
        (rc, (fi >= 1 && fi < reserved).then_some(fi))
    } else {
        (0, None)
    };
    Ok(Geometry {
        kind,
        bps,
        spc,
        dps: bps / u64::from(device_sector),
        fat_start: reserved,
        fat_sectors,
        fats,
        root_start,
        root_sectors,
        data_start,
        clusters,
        root_cluster,
        fsinfo,
    })
}

/// A directory: FAT12/16's fixed root, or a cluster chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Root,
    Chain(u32),
}

/// A directory read whole: its sectors and their bytes.
#[derive(Debug)]
struct DirData {
    sectors: Vec<u64>,
    bytes: Vec<u8>,
}

/// An entry of a directory, as parsed.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    attr: u8,
    cluster: u32,
    size: u32,
    date: u16,
    time: u16,
    /// The first of its slots (its first LFN entry) and its short entry.
    first: usize,
    slot: usize,
}

impl Entry {
    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }

    fn kind(&self) -> Kind {
        if self.is_dir() { Kind::Dictionary } else { Kind::Value }
    }
}

/// The short-name checksum LFN entries carry.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// The name of a short entry, with the lower-case flags Windows NT and
/// Linux set.
fn short_name(e: &[u8]) -> String {
    let flags = e[12];
    let part = |b: &[u8], lower: bool| -> String {
        let mut s: String = b.iter().map(|&c| char::from(c)).collect();
        while s.ends_with(' ') {
            s.pop();
        }
        if lower { s.to_ascii_lowercase() } else { s }
    };
    let mut base = [0u8; 8];
    base.copy_from_slice(&e[..8]);
    if base[0] == 0x05 {
        base[0] = DELETED;
    }
    let mut name = part(&base, flags & 0x08 != 0);
    let ext = part(&e[8..11], flags & 0x10 != 0);
    if !ext.is_empty() {
        name.push('.');
        name.push_str(&ext);
    }
    name
}

/// Whether `name` can be a key's segment.
fn valid_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Parses a directory's entries; the short names in use (for new names).
fn parse_dir(bytes: &[u8]) -> (Vec<Entry>, BTreeSet<[u8; 11]>) {
    let mut out = Vec::new();
    let mut shorts = BTreeSet::new();
    // The LFN sequence being read: its units, checksum, next order
    // expected, first slot.
    let mut lfn: Option<(Vec<u16>, u8, u8, usize)> = None;
    for (i, e) in bytes.chunks_exact(32).enumerate() {
        match e[0] {
            0 => break,
            DELETED => {
                lfn = None;
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3f == ATTR_LFN {
            let ord = e[0];
            let n = ord & 0x1f;
            let sum = e[13];
            let units = || {
                let mut u = [0u16; 13];
                for (k, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].into_iter().enumerate() {
                    u[k] = le16(e, at);
                }
                u
            };
            if ord & 0x40 != 0 && (1..=20).contains(&n) {
                let mut buf = vec![0u16; usize::from(n) * 13];
                let at = usize::from(n - 1) * 13;
                buf[at..at + 13].copy_from_slice(&units());
                lfn = Some((buf, sum, n - 1, i));
            } else {
                lfn = match lfn.take() {
                    Some((mut buf, s, want, first)) if ord & 0x40 == 0 && n == want && n >= 1 && s == sum => {
                        let at = usize::from(n - 1) * 13;
                        buf[at..at + 13].copy_from_slice(&units());
                        Some((buf, s, n - 1, first))
                    }
                    _ => None,
                };
            }
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        shorts.insert(short);
        let seq = lfn.take();
        if attr & ATTR_VOLUME != 0 || e[0] == b'.' {
            continue;
        }
        let long = match seq {
            Some((buf, sum, 0, first)) if sum == lfn_checksum(&short) => {
                let end = buf.iter().position(|&u| u == 0).unwrap_or(buf.len());
                String::from_utf16(&buf[..end]).ok().filter(|s| valid_segment(s)).map(|s| (s, first))
            }
            _ => None,
        };
        let (name, first) = match long {
            Some(x) => x,
            None => (short_name(e), i),
        };
        if !valid_segment(&name) {
            continue;
        }
        let hi = le16(e, 20);
        out.push(Entry {
            name,
            attr,
            cluster: u32::from(hi) << 16 | u32::from(le16(e, 26)),
            size: le32(e, 28),
            date: le16(e, 24),
            time: le16(e, 22),
            first,
            slot: i,
        });
    }
    (out, shorts)
}

/// Whether `a` and `b` name the same file: FAT compares names without
/// regard to case.
fn same_name(a: &str, b: &str) -> bool {
    a.chars().flat_map(char::to_uppercase).eq(b.chars().flat_map(char::to_uppercase))
}

/// Checks that `name` can be a FAT long name.
fn check_name(name: &str) -> Result<(), Error> {
    let units = name.encode_utf16().count();
    if units == 0
        || units > 255
        || name.ends_with(['.', ' '])
        || name.chars().any(|c| (c as u32) < 0x20 || "\"*/:<>?\\|\u{7f}".contains(c))
    {
        return Err(Error::InvalidKey);
    }
    Ok(())
}

const SHORT_OK: &[u8] = b"$%'-_@~`!(){}^#&";

/// The 8.3 form of `name` if it is one exactly, with the NT lower-case
/// flags: `README.TXT`, `readme.txt`, `Makefile` is not (mixed case).
fn plain_short(name: &str) -> Option<([u8; 11], u8)> {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || (name.contains('.') && ext.is_empty()) {
        return None;
    }
    let ok = |s: &str| s.bytes().all(|c| c.is_ascii_alphanumeric() || SHORT_OK.contains(&c));
    if !ok(base) || !ok(ext) {
        return None;
    }
    let case = |s: &str| -> Option<u8> {
        if s.bytes().any(|c| c.is_ascii_lowercase()) {
            if s.bytes().any(|c| c.is_ascii_uppercase()) { None } else { Some(1) }
        } else {
            Some(0)
        }
    };
    let flags = (case(base)? * 0x08) | (case(ext)? * 0x10);
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base.to_ascii_uppercase().as_bytes());
    short[8..8 + ext.len()].copy_from_slice(ext.to_ascii_uppercase().as_bytes());
    if short[0] == DELETED {
        return None;
    }
    Some((short, flags))
}

/// A short name `BASIS~N.EXT` for long name `name` that `taken` lacks.
fn generate_short(name: &str, taken: &BTreeSet<[u8; 11]>) -> Result<[u8; 11], Error> {
    let conv = |s: &str, max: usize| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii_alphanumeric() || (u.is_ascii() && SHORT_OK.contains(&(u as u8))) {
                    u as u8
                } else {
                    b'_'
                }
            })
            .take(max)
            .collect()
    };
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rsplit_once('.') {
        Some((b, e)) => (conv(b, 8), conv(e, 3)),
        None => (conv(trimmed, 8), Vec::new()),
    };
    let base = if base.is_empty() { vec![b'_'] } else { base };
    for n in 1..1_000_000u32 {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        let mut short = [b' '; 11];
        short[..keep].copy_from_slice(&base[..keep]);
        short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        short[8..8 + ext.len()].copy_from_slice(&ext);
        if !taken.contains(&short) {
            return Ok(short);
        }
    }
    Err(Error::NoSpace)
}

/// The directory entries (LFN entries, then the short entry) naming
/// `name` in a directory whose short names are `taken`.
fn make_entries(
    name: &str,
    taken: &BTreeSet<[u8; 11]>,
    attr: u8,
    cluster: u32,
    size: u32,
    (date, time): (u16, u16),
) -> Result<Vec<[u8; 32]>, Error> {
    check_name(name)?;
    let (short, flags, long) = match plain_short(name) {
        Some((s, f)) if !taken.contains(&s) => (s, f, false),
        _ => (generate_short(name, taken)?, 0, true),
    };
    let mut out = Vec::new();
    if long {
        let units: Vec<u16> = name.encode_utf16().collect();
        let n = units.len().div_ceil(13);
        let sum = lfn_checksum(&short);
        for k in (0..n).rev() {
            let mut e = [0u8; 32];
            e[0] = (k + 1) as u8 | if k + 1 == n { 0x40 } else { 0 };
            e[11] = ATTR_LFN;
            e[13] = sum;
            for (j, at) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].into_iter().enumerate() {
                let i = k * 13 + j;
                let u = match i.cmp(&units.len()) {
                    core::cmp::Ordering::Less => units[i],
                    core::cmp::Ordering::Equal => 0,
                    core::cmp::Ordering::Greater => 0xffff,
                };
                e[at..at + 2].copy_from_slice(&u.to_le_bytes());
            }
            out.push(e);
        }
    }
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(&short);
    e[11] = attr;
    e[12] = flags;
    fill_short(&mut e, cluster, size, (date, time));
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    out.push(e);
    Ok(out)
}

/// Sets a short entry's cluster, size, and write and access times.
fn fill_short(e: &mut [u8], cluster: u32, size: u32, (date, time): (u16, u16)) {
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
}

/// Days since 1970-01-01 of a civil date, and back (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// FAT's (date, time) of a timestamp, clamped to 1980..=2107.
fn fat_time(t: Timestamp) -> (u16, u16) {
    let secs = t.as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    if y < 1980 {
        return (1 << 5 | 1, 0);
    }
    if y > 2107 {
        return (127 << 9 | 12 << 5 | 31, 23 << 11 | 59 << 5 | 29);
    }
    let s = secs.rem_euclid(86_400) as u32;
    let date = ((y - 1980) as u16) << 9 | (m as u16) << 5 | d as u16;
    let time = ((s / 3600) as u16) << 11 | ((s / 60 % 60) as u16) << 5 | (s % 60 / 2) as u16;
    (date, time)
}

/// The timestamp of FAT's (date, time); an impossible date is the epoch.
fn from_fat_time(date: u16, time: u16) -> Timestamp {
    let (y, m, d) = (1980 + i64::from(date >> 9), u32::from(date >> 5 & 15), u32::from(date & 31));
    if !(1..=12).contains(&m) || d == 0 {
        return Timestamp(0);
    }
    let secs = days_from_civil(y, m, d) * 86_400
        + i64::from(time >> 11) * 3600
        + i64::from(time >> 5 & 63) * 60
        + i64::from(time & 31) * 2;
    Timestamp(u64::try_from(secs).unwrap_or(0).saturating_mul(1_000_000_000))
}

/// A sector of the first FAT in the cache.
#[derive(Debug)]
struct Slot {
    sector: u64,
    data: Vec<u8>,
    dirty: bool,
    used: u64,
}

/// What changes as the store is used; taken by one operation at a time.
#[derive(Debug, Default)]
struct State {
    cache: Vec<Slot>,
    tick: u64,
    /// Free clusters, once counted.
    free: Option<u32>,
    /// Where the search for a free cluster starts.
    hint: u32,
}

/// Holds the state for one operation and puts it back when done, even if
/// the operation's future is dropped half-way.
struct Held<'a> {
    cell: &'a RefCell<Option<State>>,
    state: Option<State>,
}

impl core::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.state.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl core::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.state.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.cell.borrow_mut() = self.state.take();
    }
}

/// Usage figures of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FatUsage {
    /// FAT12, FAT16 or FAT32.
    pub kind: FatType,
    /// Bytes per cluster.
    pub cluster_bytes: u64,
    /// Data clusters of the volume.
    pub clusters: u32,
    /// Free clusters.
    pub free: u32,
}

impl fmt::Display for FatUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} clusters of {} bytes, {} free ({} KiB)",
            self.kind,
            self.clusters,
            self.cluster_bytes,
            self.free,
            u64::from(self.free) * self.cluster_bytes / 1024
        )
    }
}

/// The direction of [`Fat::transfer`].
enum Transfer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// Where a key leads.
enum Found {
    Root,
    /// An entry, in the directory `parent`.
    Entry(Dir, Entry),
}

/// A FAT volume on a block device; `C` stamps modification times.
pub struct Fat<B, C> {
    block: B,
    clock: C,
    geo: Geometry,
    state: RefCell<Option<State>>,
    lock: Lock,
}

impl<B, C> fmt::Debug for Fat<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fat").field("kind", &self.geo.kind).field("clusters", &self.geo.clusters).finish()
    }
}

fn io<T>(_: T) -> Error {
    Error::Io
}

impl<B: Block, C: WallClock> Fat<B, C> {
    /// Opens the FAT volume on `block`: reads and checks its boot sector.
    pub async fn open(block: B, clock: C) -> Result<Fat<B, C>, FatError> {
        let info = block.info();
        let mut buf = vec![0u8; (info.sector_size as usize).max(512)];
        if info.capacity() < 512 || info.sector_size > 4096 {
            return Err(FatError::NotFat);
        }
        let n = buf.len().div_ceil(info.sector_size as usize) * info.sector_size as usize;
        buf.resize(n, 0);
        block.read(0, &mut buf).await?;
        let geo = parse_boot(&buf, info.sector_size, info.capacity())?;
        Ok(Fat { block, clock, geo, state: RefCell::new(Some(State::default())), lock: Lock::default() })
    }

    /// FAT12, FAT16 or FAT32.
    pub fn kind(&self) -> FatType {
        self.geo.kind
    }

    /// The underlying device.
    pub fn device(&self) -> &B {
        &self.block
    }

    /// Clusters, their size, and how many are free (counted by reading the
    /// FAT, the first time).
    pub async fn usage(&self) -> Result<FatUsage, Error> {
        let (mut st, _g) = self.hold().await;
        let free = self.free_count(&mut st).await?;
        Ok(FatUsage { kind: self.geo.kind, cluster_bytes: self.geo.cluster_bytes(), clusters: self.geo.clusters, free })
    }

    async fn hold(&self) -> (Held<'_>, crate::block_store::Guard<'_>) {
        let g = self.lock.lock().await;
        let state = self.state.borrow_mut().take();
        (Held { cell: &self.state, state }, g)
    }

    async fn read_sectors(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.block.read(sector * self.geo.dps, buf).await.map_err(io)
    }

    async fn write_sectors(&self, sector: u64, data: &[u8]) -> Result<(), Error> {
        if self.block.info().read_only {
            return Err(Error::Io);
        }
        self.block.write(sector * self.geo.dps, data).await.map_err(io)
    }

    /// The cache slot of sector `s` of the FAT, read if need be.
    async fn fat_slot(&self, st: &mut State, s: u64) -> Result<usize, Error> {
        st.tick += 1;
        let tick = st.tick;
        if let Some(i) = st.cache.iter().position(|x| x.sector == s) {
            st.cache[i].used = tick;
            return Ok(i);
        }
        let mut data = vec![0u8; self.geo.bps as usize];
        self.read_sectors(self.geo.fat_start + s, &mut data).await?;
        if st.cache.len() < CACHE {
            st.cache.push(Slot { sector: s, data, dirty: false, used: tick });
            return Ok(st.cache.len() - 1);
        }
        let i = (0..st.cache.len()).min_by_key(|&i| st.cache[i].used).unwrap_or(0);
        if st.cache[i].dirty {
            self.write_back(&st.cache[i]).await?;
        }
        st.cache[i] = Slot { sector: s, data, dirty: false, used: tick };
        Ok(i)
    }

    /// Writes a FAT sector to every copy of the FAT.
    async fn write_back(&self, slot: &Slot) -> Result<(), Error> {
        for k in 0..self.geo.fats {
            self.write_sectors(self.geo.fat_start + k * self.geo.fat_sectors + slot.sector, &slot.data).await?;
        }
        Ok(())
    }

    /// Writes every changed FAT sector.
    async fn sync_fat(&self, st: &mut State) -> Result<(), Error> {
        for i in 0..st.cache.len() {
            if st.cache[i].dirty {
                self.write_back(&st.cache[i]).await?;
                st.cache[i].dirty = false;
            }
        }
        Ok(())
    }

    async fn fat_byte(&self, st: &mut State, at: u64) -> Result<u8, Error> {
        let i = self.fat_slot(st, at / self.geo.bps).await?;
        Ok(st.cache[i].data[(at % self.geo.bps) as usize])
    }

    async fn set_fat_byte(&self, st: &mut State, at: u64, v: u8) -> Result<(), Error> {
        let i = self.fat_slot(st, at / self.geo.bps).await?;
        st.cache[i].data[(at % self.geo.bps) as usize] = v;
        st.cache[i].dirty = true;
        Ok(())
    }

    /// The FAT's entry for cluster `c`.
    async fn entry(&self, st: &mut State, c: u32) -> Result<u32, Error> {
        let c = u64::from(c);
        Ok(match self.geo.kind {
            FatType::Fat12 => {
                let at = c + c / 2;
                let v = u16::from(self.fat_byte(st, at).await?) | u16::from(self.fat_byte(st, at + 1).await?) << 8;
                u32::from(if c & 1 == 1 { v >> 4 } else { v & 0xfff })
            }
            FatType::Fat16 => {
                u32::from(self.fat_byte(st, 2 * c).await?) | u32::from(self.fat_byte(st, 2 * c + 1).await?) << 8
            }
            FatType::Fat32 => {
                let mut v = 0u32;
                for k in 0..4 {
                    v |= u32::from(self.fat_byte(st, 4 * c + k).await?) << (8 * k);
                }
                v & 0x0fff_ffff
            }
        })
    }

    async fn set_entry(&self, st: &mut State, c: u32, v: u32) -> Result<(), Error> {
        let c = u64::from(c);
        match self.geo.kind {
            FatType::Fat12 => {
                let at = c + c / 2;
                let (lo, hi) = (self.fat_byte(st, at).await?, self.fat_byte(st, at + 1).await?);
                let old = u16::from(lo) | u16::from(hi) << 8;
                let v = v as u16 & 0xfff;
                let new = if c & 1 == 1 { (old & 0x000f) | v << 4 } else { (old & 0xf000) | v };
                self.set_fat_byte(st, at, new as u8).await?;
                self.set_fat_byte(st, at + 1, (new >> 8) as u8).await?;
            }
            FatType::Fat16 => {
                self.set_fat_byte(st, 2 * c, v as u8).await?;
                self.set_fat_byte(st, 2 * c + 1, (v >> 8) as u8).await?;
            }
            FatType::Fat32 => {
                // The top four bits are reserved: kept as they are.
                let top = self.fat_byte(st, 4 * c + 3).await? & 0xf0;
                let b = (v & 0x0fff_ffff).to_le_bytes();
                for k in 0..3 {
                    self.set_fat_byte(st, 4 * c + k, b[k as usize]).await?;
                }
                self.set_fat_byte(st, 4 * c + 3, top | b[3]).await?;
            }
        }
        Ok(())
    }

    /// The cluster after `c` in its chain, `None` at its end; a free, bad
    /// or out-of-range entry is damage.
    async fn next(&self, st: &mut State, c: u32) -> Result<Option<u32>, Error> {
        let v = self.entry(st, c).await?;
        if self.geo.is_eoc(v) {
            Ok(None)
        } else if self.geo.in_range(v) {
            Ok(Some(v))
        } else {
            Err(Error::Io)
        }
    }

    /// The clusters of the chain from `first`, at most `max`, as runs of
    /// consecutive clusters, given to `f` one run at a time. A loop is
    /// cut by the step count: no chain is longer than the volume.
    async fn runs(
        &self,
        st: &mut State,
        first: u32,
        max: u64,
        mut f: impl AsyncFnMut(&mut State, u32, u32) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        if max == 0 {
            return Ok(0);
        }
        if !self.geo.in_range(first) {
            return Err(Error::Io);
        }
        let per_run = (CHUNK / self.geo.cluster_bytes()).max(1) as u32;
        let (mut start, mut len, mut steps) = (first, 1u32, 1u64);
        let mut c = first;
        loop {
            if steps >= max {
                break;
            }
            let Some(n) = self.next(st, c).await? else { break };
            steps += 1;
            if steps > u64::from(self.geo.clusters) {
                return Err(Error::Io);
            }
            if n == c + 1 && len < per_run {
                len += 1;
            } else {
                f(st, start, len).await?;
                start = n;
                len = 1;
            }
            c = n;
        }
        f(st, start, len).await?;
        Ok(steps)
    }

    /// The clusters a value of `size` bytes needs.
    fn clusters_for(&self, size: u64) -> u64 {
        size.div_ceil(self.geo.cluster_bytes())
    }

    /// Checks that the chain from `first` covers `size` bytes and ends: it
    /// is walked to its end, so that a loop is found whatever the size.
    async fn covers(&self, st: &mut State, first: u32, size: u64) -> Result<(), Error> {
        let need = self.clusters_for(size);
        if need == 0 {
            return Ok(());
        }
        if need > u64::from(self.geo.clusters) {
            return Err(Error::Io);
        }
        let got = self.runs(st, first, u64::MAX, async |_, _, _| Ok(())).await?;
        if got < need { Err(Error::Io) } else { Ok(()) }
    }

    /// Reads bytes `offset..offset + buf.len()` of the chain from `first`
    /// (the caller checked that they are inside the value).
    async fn read_at(&self, st: &mut State, first: u32, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.transfer(st, first, offset, Transfer::Read(buf)).await
    }

    /// Writes `data` at byte `offset` of the chain from `first`, which
    /// covers it; partial sectors are read, changed and written.
    async fn write_at(&self, st: &mut State, first: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.transfer(st, first, offset, Transfer::Write(data)).await
    }

    /// Moves bytes between `io` and the chain from `first` at `offset`, a
    /// run of consecutive clusters at a time.
    async fn transfer(&self, st: &mut State, first: u32, offset: u64, mut io: Transfer<'_>) -> Result<(), Error> {
        let len = match &io {
            Transfer::Read(b) => b.len(),
            Transfer::Write(d) => d.len(),
        };
        if len == 0 {
            return Ok(());
        }
        let cb = self.geo.cluster_bytes();
        let end = offset + len as u64;
        let need = end.div_ceil(cb);
        let mut at = 0u64; // byte offset in the value of the run
        let mut tmp = Vec::new();
        let got = self
            .runs(st, first, need, async |_, start, count| {
                let run_end = at + u64::from(count) * cb;
                let (lo, hi) = (offset.max(at), end.min(run_end));
                if lo < hi {
                    // Whole sectors covering lo..hi.
                    let bps = self.geo.bps;
                    let s0 = (lo - at) / bps;
                    let s1 = (hi - at).div_ceil(bps);
                    tmp.resize(((s1 - s0) * bps) as usize, 0);
                    let skip = (lo - at - s0 * bps) as usize;
                    let n = (hi - lo) as usize;
                    let from = (lo - offset) as usize;
                    let sector = self.geo.cluster_sector(start) + s0;
                    match &mut io {
                        Transfer::Read(buf) => {
                            self.read_sectors(sector, &mut tmp).await?;
                            buf[from..from + n].copy_from_slice(&tmp[skip..skip + n]);
                        }
                        Transfer::Write(data) => {
                            if skip != 0 || n != tmp.len() {
                                self.read_sectors(sector, &mut tmp).await?;
                            }
                            tmp[skip..skip + n].copy_from_slice(&data[from..from + n]);
                            self.write_sectors(sector, &tmp).await?;
                        }
                    }
                }
                at = run_end;
                Ok(())
            })
            .await?;
        if got < need { Err(Error::Io) } else { Ok(()) }
    }

    /// Counts the free clusters, once.
    async fn free_count(&self, st: &mut State) -> Result<u32, Error> {
        if let Some(f) = st.free {
            return Ok(f);
        }
        let mut free = 0u32;
        if self.geo.kind == FatType::Fat12 {
            // At most 4,084 entries, some across two sectors.
            for c in 2..=self.geo.last() {
                if self.entry(st, c).await? == 0 {
                    free += 1;
                }
            }
        } else {
            // Whole runs of FAT sectors, as written so far.
            self.sync_fat(st).await?;
            let width = if self.geo.kind == FatType::Fat16 { 2 } else { 4 };
            let end = (u64::from(self.geo.last()) + 1) * width;
            let mut buf = vec![0u8; CHUNK as usize];
            let mut at = 0u64;
            while at < end {
                let n = (end - at).min(CHUNK).div_ceil(self.geo.bps) * self.geo.bps;
                self.read_sectors(self.geo.fat_start + at / self.geo.bps, &mut buf[..n as usize]).await?;
                for (i, e) in buf[..n as usize].chunks_exact(width as usize).enumerate() {
                    let c = at / width + i as u64;
                    let v = if width == 2 { u32::from(le16(e, 0)) } else { le32(e, 0) & 0x0fff_ffff };
                    if (2..end / width).contains(&c) && v == 0 {
                        free += 1;
                    }
                }
                at += n;
            }
        }
        st.free = Some(free);
        if st.hint < 2 {
            st.hint = 2;
        }
        Ok(free)
    }

    /// Takes a free cluster, marked as the end of a chain.
    async fn alloc(&self, st: &mut State) -> Result<u32, Error> {
        if self.free_count(st).await? == 0 {
            return Err(Error::NoSpace);
        }
        let n = self.geo.clusters;
        let start = if self.geo.in_range(st.hint) { st.hint } else { 2 };
        for i in 0..n {
            let c = 2 + (start - 2 + i) % n;
            if self.entry(st, c).await? == 0 {
                self.set_entry(st, c, self.geo.eoc()).await?;
                st.free = st.free.map(|f| f.saturating_sub(1));
                st.hint = if c < self.geo.last() { c + 1 } else { 2 };
                return Ok(c);
            }
        }
        st.free = Some(0);
        Err(Error::NoSpace)
    }

    /// Frees the chain from `first` (a damaged chain is freed up to the
    /// damage).
    async fn free_chain(&self, st: &mut State, first: u32) -> Result<(), Error> {
        let mut c = first;
        let mut steps = 0u32;
        while self.geo.in_range(c) && steps < self.geo.clusters {
            let v = self.entry(st, c).await?;
            if v == 0 {
                break;
            }
            self.set_entry(st, c, 0).await?;
            st.free = st.free.map(|f| f.saturating_add(1));
            if self.geo.is_eoc(v) {
                break;
            }
            c = v;
            steps += 1;
        }
        Ok(())
    }

    /// Extends the chain ending at `last` (0: a new chain) by `n`
    /// clusters; its first cluster. The new clusters are zeroed when
    /// `zero`. On failure the new clusters are freed again.
    async fn grow(&self, st: &mut State, last: u32, n: u64, zero: bool) -> Result<u32, Error> {
        if n == 0 {
            return Ok(0);
        }
        if u64::from(self.free_count(st).await?) < n {
            return Err(Error::NoSpace);
        }
        let mut first = 0u32;
        let mut prev = last;
        let zeros = if zero { vec![0u8; self.geo.cluster_bytes() as usize] } else { Vec::new() };
        let r = async {
            for _ in 0..n {
                let c = self.alloc(st).await?;
                if first == 0 {
                    first = c;
                }
                if prev != 0 {
                    self.set_entry(st, prev, c).await?;
                }
                prev = c;
                if zero {
                    self.write_sectors(self.geo.cluster_sector(c), &zeros).await?;
                }
            }
            Ok(first)
        }
        .await;
        if r.is_err() {
            if last != 0 {
                let eoc = self.geo.eoc();
                self.set_entry(st, last, eoc).await?;
            }
            if first != 0 {
                self.free_chain(st, first).await?;
            }
        }
        r
    }

    /// Reads directory `dir` whole.
    async fn read_dir(&self, st: &mut State, dir: Dir) -> Result<DirData, Error> {
        let g = self.geo;
        let mut sectors = Vec::new();
        match dir {
            Dir::Root => sectors.extend(g.root_start..g.root_start + g.root_sectors),
            Dir::Chain(first) => {
                let max = (MAX_DIR_ENTRIES as u64 * 32).div_ceil(g.cluster_bytes()) + 1;
                let n = self
                    .runs(st, first, max, async |_, start, len| {
                        let s = g.cluster_sector(start);
                        sectors.extend(s..s + u64::from(len) * g.spc);
                        Ok(())
                    })
                    .await?;
                if n >= max {
                    return Err(Error::Io);
                }
            }
        }
        let mut bytes = vec![0u8; sectors.len() * g.bps as usize];
        // Consecutive sectors are read at once.
        let mut i = 0;
        while i < sectors.len() {
            let mut j = i + 1;
            while j < sectors.len() && sectors[j] == sectors[j - 1] + 1 && (j - i) as u64 * g.bps < CHUNK {
                j += 1;
            }
            let (a, b) = (i * g.bps as usize, j * g.bps as usize);
            self.read_sectors(sectors[i], &mut bytes[a..b]).await?;
            i = j;
        }
        Ok(DirData { sectors, bytes })
    }

    /// Writes the sectors of `d` holding slots `from..to`.
    async fn write_slots(&self, d: &DirData, from: usize, to: usize) -> Result<(), Error> {
        let bps = self.geo.bps as usize;
        for s in from * 32 / bps..(to * 32).div_ceil(bps) {
            self.write_sectors(d.sectors[s], &d.bytes[s * bps..(s + 1) * bps]).await?;
        }
        Ok(())
    }

    /// The directory an entry names.
    fn child_dir(&self, e: &Entry) -> Result<Dir, Error> {
        match e.cluster {
            // A subdirectory pointing at cluster 0 is the root to some
            // tools; to us it is damage.
            c if self.geo.in_range(c) => Ok(Dir::Chain(c)),
            _ => Err(Error::Io),
        }
    }

    fn root(&self) -> Dir {
        if self.geo.kind == FatType::Fat32 { Dir::Chain(self.geo.root_cluster) } else { Dir::Root }
    }

    /// The cluster `..` names for directory `dir`.
    fn dotdot(&self, dir: Dir) -> u32 {
        match dir {
            Dir::Chain(c) if self.root() != Dir::Chain(c) => c,
            _ => 0,
        }
    }

    async fn lookup(&self, st: &mut State, dir: Dir, name: &str) -> Result<Option<Entry>, Error> {
        let d = self.read_dir(st, dir).await?;
        Ok(parse_dir(&d.bytes).0.into_iter().find(|e| same_name(&e.name, name)))
    }

    /// What `key` names; `None` if nothing (a value in the way included).
    async fn resolve(&self, st: &mut State, key: &Key) -> Result<Option<Found>, Error> {
        let mut found = Found::Root;
        for seg in key.segments() {
            let dir = match &found {
                Found::Root => self.root(),
                Found::Entry(_, e) if e.is_dir() => self.child_dir(e)?,
                Found::Entry(..) => return Ok(None),
            };
            match self.lookup(st, dir, seg).await? {
                Some(e) => found = Found::Entry(dir, e),
                None => return Ok(None),
            }
        }
        Ok(Some(found))
    }

    /// The value at `key`.
    async fn value(&self, st: &mut State, key: &Key) -> Result<(Dir, Entry), Error> {
        match self.resolve(st, key).await? {
            None => Err(Error::NotFound),
            Some(Found::Root) => Err(Error::ValueExpected),
            Some(Found::Entry(_, e)) if e.is_dir() => Err(Error::ValueExpected),
            Some(Found::Entry(d, e)) => Ok((d, e)),
        }
    }

    /// The directory `key`, made (with its parents) if missing.
    async fn mkdirs(&self, st: &mut State, key: &Key) -> Result<Dir, Error> {
        let mut dir = self.root();
        for seg in key.segments() {
            dir = match self.lookup(st, dir, seg).await? {
                Some(e) if e.is_dir() => self.child_dir(&e)?,
                Some(_) => return Err(Error::DictionaryExpected),
                None => {
                    check_name(seg)?;
                    let c = self.grow(st, 0, 1, true).await?;
                    let now = fat_time(self.clock.now());
                    let mut dots = [[0u8; 32]; 2];
                    for (k, e) in dots.iter_mut().enumerate() {
                        e[..11].copy_from_slice(if k == 0 { b".          " } else { b"..         " });
                        e[11] = ATTR_DIR;
                        fill_short(e, if k == 0 { c } else { self.dotdot(dir) }, 0, now);
                        e[14..16].copy_from_slice(&now.1.to_le_bytes());
                        e[16..18].copy_from_slice(&now.0.to_le_bytes());
                    }
                    let r = async {
                        let mut first = vec![0u8; self.geo.bps as usize];
                        first[..64].copy_from_slice(dots.as_flattened());
                        self.write_sectors(self.geo.cluster_sector(c), &first).await?;
                        self.sync_fat(st).await?;
                        self.add_entry(st, dir, seg, ATTR_DIR, c, 0).await
                    }
                    .await;
                    if let Err(e) = r {
                        self.free_chain(st, c).await?;
                        return Err(e);
                    }
                    Dir::Chain(c)
                }
            };
        }
        Ok(dir)
    }

    /// Adds the entries naming `name` to `dir`, growing it if need be.
    async fn add_entry(
        &self,
        st: &mut State,
        dir: Dir,
        name: &str,
        attr: u8,
        cluster: u32,
        size: u32,
    ) -> Result<(), Error> {
        let mut d = self.read_dir(st, dir).await?;
        let (_, taken) = parse_dir(&d.bytes);
        let entries = make_entries(name, &taken, attr, cluster, size, fat_time(self.clock.now()))?;
        let n = entries.len();
        loop {
            let slots = d.bytes.len() / 32;
            let end = (0..slots).find(|&i| d.bytes[i * 32] == 0).unwrap_or(slots);
            let free = |i: usize| i >= end || d.bytes[i * 32] == DELETED;
            let mut run = 0;
            let mut at = None;
            for i in 0..slots {
                run = if free(i) { run + 1 } else { 0 };
                if run == n {
                    at = Some(i + 1 - n);
                    break;
                }
            }
            if let Some(at) = at {
                for (k, e) in entries.iter().enumerate() {
                    d.bytes[(at + k) * 32..(at + k + 1) * 32].copy_from_slice(e);
                }
                let mut to = at + n;
                // Past the end marker, the next slot becomes the end.
                if to < slots && to > end {
                    d.bytes[to * 32] = 0;
                    to += 1;
                }
                return self.write_slots(&d, at, to).await;
            }
            // No room: a fixed root is full; a chain takes a cluster more.
            let Dir::Chain(first) = dir else { return Err(Error::NoSpace) };
            if slots + self.geo.cluster_bytes() as usize / 32 > MAX_DIR_ENTRIES {
                return Err(Error::NoSpace);
            }
            let mut last = first;
            while let Some(n) = self.next(st, last).await? {
                last = n;
            }
            let c = self.grow(st, last, 1, true).await?;
            self.sync_fat(st).await?;
            let s = self.geo.cluster_sector(c);
            d.sectors.extend(s..s + self.geo.spc);
            d.bytes.resize(d.bytes.len() + self.geo.cluster_bytes() as usize, 0);
        }
    }

    /// Rewrites the short entry of `e` in `dir` with `f`.
    async fn update_entry(&self, st: &mut State, dir: Dir, e: &Entry, f: impl FnOnce(&mut [u8])) -> Result<(), Error> {
        let mut d = self.read_dir(st, dir).await?;
        let at = e.slot * 32;
        if at + 32 > d.bytes.len() {
            return Err(Error::Io);
        }
        f(&mut d.bytes[at..at + 32]);
        self.write_slots(&d, e.slot, e.slot + 1).await
    }

    /// Marks the slots of `e` in `dir` deleted.
    async fn delete_entry(&self, st: &mut State, dir: Dir, e: &Entry) -> Result<(), Error> {
        let mut d = self.read_dir(st, dir).await?;
        if (e.slot + 1) * 32 > d.bytes.len() {
            return Err(Error::Io);
        }
        for i in e.first..=e.slot {
            d.bytes[i * 32] = DELETED;
        }
        self.write_slots(&d, e.first, e.slot + 1).await
    }

    /// The first clusters of every chain under directory `dir` (its own
    /// included), refusing a directory met twice (a cycle).
    async fn chains_under(&self, st: &mut State, dir: Dir) -> Result<Vec<u32>, Error> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut pending = vec![(dir, 0usize)];
        while let Some((d, depth)) = pending.pop() {
            if let Dir::Chain(c) = d {
                if !seen.insert(c) {
                    return Err(Error::Io);
                }
                out.push(c);
            }
            let data = self.read_dir(st, d).await?;
            for e in parse_dir(&data.bytes).0 {
                if e.is_dir() {
                    if depth >= MAX_DEPTH {
                        return Err(Error::Io);
                    }
                    pending.push((self.child_dir(&e)?, depth + 1));
                } else if e.cluster != 0 {
                    out.push(e.cluster);
                }
            }
        }
        Ok(out)
    }

    /// Ends a change: the FAT, the FSInfo sector, a flush.
    async fn finish(&self, st: &mut State) -> Result<(), Error> {
        self.sync_fat(st).await?;
        if let (Some(fi), Some(free)) = (self.geo.fsinfo, st.free) {
            let mut s = vec![0u8; self.geo.bps as usize];
            self.read_sectors(fi, &mut s).await?;
            if le32(&s, 0) == 0x4161_5252 && le32(&s, 484) == 0x6141_7272 {
                s[488..492].copy_from_slice(&free.to_le_bytes());
                s[492..496].copy_from_slice(&st.hint.to_le_bytes());
                self.write_sectors(fi, &s).await?;
            }
        }
        self.block.flush().await.map_err(io)
    }

    fn writable(&self) -> Result<(), Error> {
        if self.block.info().read_only { Err(Error::Io) } else { Ok(()) }
    }

    /// Stores a value of `size` bytes filled by `fill(offset, buf)` at
    /// `key`: a new chain, then the entry, then the old chain freed.
    async fn put(&self, st: &mut State, key: &Key, size: u64, fill: &dyn Fn(u64, &mut [u8])) -> Result<(), Error> {
        self.writable()?;
        if key.is_root() {
            return Err(Error::ValueExpected);
        }
        if size > MAX_FILE {
            return Err(Error::NoSpace);
        }
        let name = key.basename();
        check_name(name)?;
        let parent = self.mkdirs(st, &key.parent()).await?;
        let old = self.lookup(st, parent, name).await?;
        if old.as_ref().is_some_and(Entry::is_dir) {
            return Err(Error::ValueExpected);
        }
        // The old value's chain is freed once the new one is in place, but
        // only if it is whole now: a damaged image (or a power cut between
        // the FAT's write and the directory's) can name clusters the FAT
        // calls free, which the new chain may take, and freeing them after
        // would free the new value. A damaged chain is left as it is.
        let old_whole = match &old {
            Some(e) if e.cluster != 0 => self.runs(st, e.cluster, u64::MAX, async |_, _, _| Ok(())).await.is_ok(),
            _ => false,
        };
        let first = self.grow(st, 0, self.clusters_for(size), false).await?;
        let r = async {
            let mut buf = Vec::new();
            let mut at = 0u64;
            let cb = self.geo.cluster_bytes();
            if first != 0 {
                self.runs(st, first, self.clusters_for(size), async |_, start, len| {
                    buf.resize((u64::from(len) * cb) as usize, 0);
                    buf.fill(0);
                    let n = (size - at).min(buf.len() as u64) as usize;
                    fill(at, &mut buf[..n]);
                    self.write_sectors(self.geo.cluster_sector(start), &buf).await?;
                    at += u64::from(len) * cb;
                    Ok(())
                })
                .await?;
            }
            self.sync_fat(st).await?;
            // The new chain on the disk before the entry names it, and
            // the entry before the old chain is freed: a device (or the
            // host's cache beneath it) may write in any order what one
            // flush covers, and a freed old chain still named by the entry
            // would be taken by the next file.
            self.block.flush().await.map_err(io)?;
            let now = fat_time(self.clock.now());
            match &old {
                Some(e) => {
                    self.update_entry(st, parent, e, |s| {
                        s[11] |= ATTR_ARCHIVE;
                        fill_short(s, first, size as u32, now);
                    })
                    .await
                }
                None => self.add_entry(st, parent, name, ATTR_ARCHIVE, first, size as u32).await,
            }
        }
        .await;
        if let Err(e) = r {
            if first != 0 {
                self.free_chain(st, first).await?;
            }
            self.finish(st).await?;
            return Err(e);
        }
        if let Some(e) = old
            && old_whole
        {
            self.block.flush().await.map_err(io)?;
            self.free_chain(st, e.cluster).await?;
        }
        self.finish(st).await
    }

    /// Removes what `found` names (everything, for the root).
    async fn remove_found(&self, st: &mut State, found: Found) -> Result<(), Error> {
        match found {
            Found::Root => {
                let root = self.root();
                let d = self.read_dir(st, root).await?;
                for e in parse_dir(&d.bytes).0 {
                    self.remove_entry(st, root, e).await?;
                }
                Ok(())
            }
            Found::Entry(dir, e) => self.remove_entry(st, dir, e).await,
        }
    }

    /// Removes entry `e` of `dir`, and everything below it.
    async fn remove_entry(&self, st: &mut State, dir: Dir, e: Entry) -> Result<(), Error> {
        let chains = if e.is_dir() { self.chains_under(st, self.child_dir(&e)?).await? } else { vec![e.cluster] };
        self.delete_entry(st, dir, &e).await?;
        self.sync_fat(st).await?;
        for c in chains {
            if c != 0 {
                self.free_chain(st, c).await?;
            }
        }
        Ok(())
    }

    /// Walks every directory and chain and names what is wrong: chains
    /// that loop, leave the volume, are shorter than their file or shared
    /// by two files; names that are not keys. Empty when the volume is
    /// whole. Reads the whole FAT (one bit per cluster in memory).
    pub async fn check(&self) -> Result<Vec<String>, Error> {
        let (mut st, _g) = self.hold().await;
        let st = &mut *st;
        let mut problems = Vec::new();
        let mut used = Vec::new();
        used.try_reserve_exact(self.geo.clusters as usize / 8 + 1).map_err(|_| Error::NoSpace)?;
        used.resize(self.geo.clusters as usize / 8 + 1, 0u8);
        let mut pending = vec![(self.root(), String::new(), 0usize)];
        if let Dir::Chain(c) = self.root() {
            self.claim(st, c, u64::MAX, "/", &mut used, &mut problems).await?;
        }
        while let Some((dir, path, depth)) = pending.pop() {
            let d = match self.read_dir(st, dir).await {
                Ok(d) => d,
                Err(_) => {
                    problems.push(format!("{path}/: the directory's chain is damaged or too long"));
                    continue;
                }
            };
            let (entries, _) = parse_dir(&d.bytes);
            for e in entries {
                let p = format!("{path}/{}", e.name);
                if e.is_dir() {
                    let Ok(Dir::Chain(c)) = self.child_dir(&e) else {
                        problems.push(format!("{p}: a directory with cluster {} outside the volume", e.cluster));
                        continue;
                    };
                    if depth >= MAX_DEPTH {
                        problems.push(format!("{p}: directories nested deeper than {MAX_DEPTH}"));
                        continue;
                    }
                    if self.claim(st, c, u64::MAX, &p, &mut used, &mut problems).await? {
                        pending.push((Dir::Chain(c), p, depth + 1));
                    }
                } else if e.size > 0 || e.cluster != 0 {
                    let need = self.clusters_for(u64::from(e.size));
                    if e.cluster == 0 || !self.geo.in_range(e.cluster) {
                        problems.push(format!("{p}: {} bytes but cluster {} is not in the volume", e.size, e.cluster));
                        continue;
                    }
                    self.claim(st, e.cluster, need, &p, &mut used, &mut problems).await?;
                }
            }
        }
        let mut lost = 0u64;
        for c in 2..=self.geo.last() {
            let i = (c - 2) as usize;
            if used[i / 8] & 1 << (i % 8) == 0 {
                // Free and bad clusters belong to no file.
                let v = self.entry(st, c).await?;
                if v != 0 && v != self.geo.eoc() - 8 {
                    lost += 1;
                }
            }
        }
        if lost > 0 {
            problems.push(format!("{lost} clusters are marked used but no file has them (lost clusters)"));
        }
        Ok(problems)
    }

    /// Marks the chain from `first` used, for `check`: whether it is whole.
    async fn claim(
        &self,
        st: &mut State,
        first: u32,
        need: u64,
        path: &str,
        used: &mut [u8],
        problems: &mut Vec<String>,
    ) -> Result<bool, Error> {
        let mut c = first;
        let mut n = 0u64;
        loop {
            let i = (c - 2) as usize;
            if used[i / 8] & 1 << (i % 8) != 0 {
                problems.push(format!("{path}: its chain meets cluster {c}, which another file or itself has"));
                return Ok(false);
            }
            used[i / 8] |= 1 << (i % 8);
            n += 1;
            match self.next(st, c).await {
                Ok(Some(x)) => c = x,
                Ok(None) => break,
                Err(_) => {
                    problems.push(format!("{path}: its chain leaves the volume or meets a free or bad cluster"));
                    return Ok(false);
                }
            }
        }
        if need != u64::MAX && n < need {
            problems.push(format!("{path}: the file needs {need} clusters but its chain has {n}"));
            return Ok(false);
        }
        Ok(true)
    }
}

impl<B: Block, C: WallClock> KvRo for Fat<B, C> {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        let (mut st, _g) = self.hold().await;
        Ok(match self.resolve(&mut st, key).await? {
            None => None,
            Some(Found::Root) => Some(Kind::Dictionary),
            Some(Found::Entry(_, e)) => Some(e.kind()),
        })
    }

    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error> {
        let (mut st, _g) = self.hold().await;
        let (_, e) = self.value(&mut st, key).await?;
        let size = u64::from(e.size);
        // The chain must hold the value before its size is allocated.
        self.covers(&mut st, e.cluster, size).await?;
        let mut out = Vec::new();
        out.try_reserve_exact(e.size as usize).map_err(|_| Error::NoSpace)?;
        out.resize(e.size as usize, 0);
        self.read_at(&mut st, e.cluster, 0, &mut out).await?;
        Ok(out)
    }

    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let (mut st, _g) = self.hold().await;
        let (_, e) = self.value(&mut st, key).await?;
        let size = u64::from(e.size);
        self.covers(&mut st, e.cluster, size).await?;
        let start = offset.min(size);
        let n = (buf.len() as u64).min(size - start) as usize;
        self.read_at(&mut st, e.cluster, start, &mut buf[..n]).await?;
        Ok(n)
    }

    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        let (mut st, _g) = self.hold().await;
        let dir = match self.resolve(&mut st, key).await? {
            None => return Err(Error::NotFound),
            Some(Found::Root) => self.root(),
            Some(Found::Entry(_, e)) if e.is_dir() => self.child_dir(&e)?,
            Some(Found::Entry(..)) => return Err(Error::DictionaryExpected),
        };
        let d = self.read_dir(&mut st, dir).await?;
        let mut out: Vec<(Key, Kind)> = Vec::new();
        for e in parse_dir(&d.bytes).0 {
            out.push((key.join(&e.name)?, e.kind()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        let (mut st, _g) = self.hold().await;
        match self.resolve(&mut st, key).await? {
            None => Err(Error::NotFound),
            Some(Found::Entry(_, e)) => Ok(from_fat_time(e.date, e.time)),
            // The root has no entry: its newest child's time.
            Some(Found::Root) => {
                let d = self.read_dir(&mut st, self.root()).await?;
                Ok(parse_dir(&d.bytes).0.iter().map(|e| from_fat_time(e.date, e.time)).max().unwrap_or(Timestamp(0)))
            }
        }
    }

    async fn digest(&self, key: &Key) -> Result<Digest, Error> {
        let (mut st, _g) = self.hold().await;
        let (_, e) = self.value(&mut st, key).await?;
        let size = u64::from(e.size);
        self.covers(&mut st, e.cluster, size).await?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK as usize];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(CHUNK) as usize;
            self.read_at(&mut st, e.cluster, at, &mut buf[..n]).await?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(Digest(h.finalize().into()))
    }

    async fn size(&self, key: &Key) -> Result<u64, Error> {
        let (mut st, _g) = self.hold().await;
        Ok(u64::from(self.value(&mut st, key).await?.1.size))
    }
}

impl<B: Block, C: WallClock> KvRw for Fat<B, C> {
    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), Error> {
        let (mut st, _g) = self.hold().await;
        let fill = |at: u64, buf: &mut [u8]| buf.copy_from_slice(&value[at as usize..at as usize + buf.len()]);
        self.put(&mut st, key, value.len() as u64, &fill).await
    }

    async fn set_partial(&self, key: &Key, offset: u64, data: &[u8]) -> Result<(), Error> {
        let (mut st, _g) = self.hold().await;
        let st = &mut *st;
        self.writable()?;
        let (dir, e) = self.value(st, key).await?;
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= MAX_FILE).ok_or(Error::NoSpace)?;
        let size = u64::from(e.size);
        self.covers(st, e.cluster, size).await?;
        let have = self.clusters_for(size);
        let want = self.clusters_for(end.max(size));
        let mut first = e.cluster;
        if want > have {
            let last = if have == 0 {
                0
            } else {
                let mut c = first;
                for _ in 1..have {
                    c = self.next(st, c).await?.ok_or(Error::Io)?;
                }
                c
            };
            let added = self.grow(st, last, want - have, false).await?;
            // An empty value owns no cluster, whatever its entry says (a
            // damaged one may name another value's, or a directory's).
            if have == 0 {
                first = added;
            }
        }
        let r = async {
            // Bytes between the old end and `offset` read as zeros.
            let zeros = vec![0u8; CHUNK as usize];
            let mut at = size;
            while at < offset {
                let n = (offset - at).min(CHUNK) as usize;
                self.write_at(st, first, at, &zeros[..n]).await?;
                at += n as u64;
            }
            self.write_at(st, first, offset, data).await?;
            self.sync_fat(st).await?;
            let now = fat_time(self.clock.now());
            let new = end.max(size) as u32;
            self.update_entry(st, dir, &e, |s| {
                s[11] |= ATTR_ARCHIVE;
                fill_short(s, first, new, now);
            })
            .await
        }
        .await;
        if r.is_err() && have == 0 && first != 0 {
            self.free_chain(st, first).await?;
        }
        self.finish(st).await?;
        r
    }

    async fn remove(&self, key: &Key) -> Result<(), Error> {
        let (mut st, _g) = self.hold().await;
        let st = &mut *st;
        self.writable()?;
        let found = self.resolve(st, key).await?.ok_or(Error::NotFound)?;
        let r = self.remove_found(st, found).await;
        self.finish(st).await?;
        r
    }

    async fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        let (mut st, _g) = self.hold().await;
        let st = &mut *st;
        self.writable()?;
        // Into itself: a directory below itself, whatever the case of the
        // names (FAT's lookups ignore it).
        let upper = |s: &str| -> String { s.chars().flat_map(char::to_uppercase).collect() };
        if from.is_root() || to.is_root() || upper(to.as_str()).starts_with(&upper(&crate::tree::prefix(from))) {
            return Err(Error::InvalidKey);
        }
        let Some(Found::Entry(from_dir, e)) = self.resolve(st, from).await? else {
            return Err(Error::NotFound);
        };
        if from == to {
            return Ok(());
        }
        check_name(to.basename())?;
        let r = async {
            let to_dir = self.mkdirs(st, &to.parent()).await?;
            let d = self.read_dir(st, from_dir).await?;
            let attr = d.bytes.get(e.slot * 32 + 11).copied().ok_or(Error::Io)?;
            // The old name goes first (its clusters stay, now named by `e`
            // alone): what `to` names may be a directory holding it (`/a/b`
            // to `/a`), whose removal would otherwise free them. Another
            // case of the same name is then no longer found below.
            self.delete_entry(st, from_dir, &e).await?;
            if let Some(old) = self.lookup(st, to_dir, to.basename()).await? {
                self.remove_entry(st, to_dir, old).await?;
            }
            self.add_entry(st, to_dir, to.basename(), attr, e.cluster, e.size).await?;
            if e.is_dir() && to_dir != from_dir {
                let child = self.child_dir(&e)?;
                let dd = self.dotdot(to_dir);
                let mut d = self.read_dir(st, child).await?;
                if d.bytes.len() >= 64 && &d.bytes[32..34] == b".." {
                    d.bytes[52..54].copy_from_slice(&((dd >> 16) as u16).to_le_bytes());
                    d.bytes[58..60].copy_from_slice(&(dd as u16).to_le_bytes());
                    self.write_slots(&d, 1, 2).await?;
                }
            }
            Ok(())
        }
        .await;
        self.finish(st).await?;
        r
    }

    async fn allocate(&self, key: &Key, size: u64) -> Result<(), Error> {
        let (mut st, _g) = self.hold().await;
        if self.resolve(&mut st, key).await?.is_some() {
            return Err(Error::AlreadyPresent);
        }
        self.put(&mut st, key, size, &|_, buf: &mut [u8]| buf.fill(0)).await
    }
}

/// How [`format()`] lays out a volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FormatOptions {
    /// The FAT type; `None`: FAT12 under 16 MiB, FAT16 under 512 MiB,
    /// FAT32 above.
    pub kind: Option<FatType>,
    /// The volume serial number.
    pub volume_id: u32,
}

impl FormatOptions {
    /// Options of a volume of type `kind` (`None`: by size).
    pub fn new(kind: Option<FatType>, volume_id: u32) -> FormatOptions {
        FormatOptions { kind, volume_id }
    }
}

/// Writes an empty FAT volume over the whole of `block` (512-byte
/// sectors, 2 FATs), as `mkfs.fat` would. Whatever the device held is lost.
pub async fn format<B: Block>(block: &B, opts: FormatOptions) -> Result<FatType, FatError> {
    let info = block.info();
    if info.read_only {
        return Err(FatError::ReadOnly);
    }
    if info.sector_size > 512 {
        return Err(FatError::SectorSize { volume: 512, device: info.sector_size });
    }
    let bps = 512u64;
    let total = (info.capacity() / bps).min(u64::from(u32::MAX));
    let kind = opts.kind.unwrap_or(if total * bps < 16 << 20 {
        FatType::Fat12
    } else if total * bps < 512 << 20 {
        FatType::Fat16
    } else {
        FatType::Fat32
    });
    let (reserved, root_entries, bits, lo, hi) = match kind {
        FatType::Fat12 => (1u64, 512u64, 12u64, 1u64, 4084u64),
        FatType::Fat16 => (1, 512, 16, 4085, 65524),
        FatType::Fat32 => (32, 0, 32, 65525, 0x0fff_fff4),
    };
    let root_sectors = root_entries * 32 / bps;
    // The smallest cluster that gives a count the type allows.
    let mut layout = None;
    for spc in [1u64, 2, 4, 8, 16, 32, 64, 128] {
        let before = reserved + root_sectors;
        if total <= before + 2 * spc {
            break;
        }
        let max = (total - before) / spc;
        let fat = ((max + 2) * bits).div_ceil(8 * bps);
        let Some(data) = total.checked_sub(before + 2 * fat) else { continue };
        let clusters = data / spc;
        if (lo..=hi).contains(&clusters) {
            layout = Some((spc, fat, clusters));
            break;
        }
    }
    let Some((spc, fat, clusters)) = layout else {
        return Err(FatError::TooSmall(format!("{kind} cannot be laid out on {total} sectors of 512 bytes")));
    };
    let mut boot = [0u8; 512];
    boot[..3].copy_from_slice(if kind == FatType::Fat32 { &[0xeb, 0x58, 0x90] } else { &[0xeb, 0x3c, 0x90] });
    boot[3..11].copy_from_slice(b"MIRAGEKV");
    boot[11..13].copy_from_slice(&(bps as u16).to_le_bytes());
    boot[13] = spc as u8;
    boot[14..16].copy_from_slice(&(reserved as u16).to_le_bytes());
    boot[16] = 2;
    boot[17..19].copy_from_slice(&(root_entries as u16).to_le_bytes());
    if total < 65536 {
        boot[19..21].copy_from_slice(&(total as u16).to_le_bytes());
    } else {
        boot[32..36].copy_from_slice(&(total as u32).to_le_bytes());
    }
    boot[21] = 0xf8;
    boot[24..26].copy_from_slice(&32u16.to_le_bytes());
    boot[26..28].copy_from_slice(&64u16.to_le_bytes());
    let ext = if kind == FatType::Fat32 {
        boot[36..40].copy_from_slice(&(fat as u32).to_le_bytes());
        boot[44..48].copy_from_slice(&2u32.to_le_bytes());
        boot[48..50].copy_from_slice(&1u16.to_le_bytes());
        boot[50..52].copy_from_slice(&6u16.to_le_bytes());
        64
    } else {
        boot[22..24].copy_from_slice(&(fat as u16).to_le_bytes());
        36
    };
    boot[ext] = 0x80;
    boot[ext + 2] = 0x29;
    boot[ext + 3..ext + 7].copy_from_slice(&opts.volume_id.to_le_bytes());
    boot[ext + 7..ext + 18].copy_from_slice(b"NO NAME    ");
    boot[ext + 18..ext + 26].copy_from_slice(match kind {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
        FatType::Fat32 => b"FAT32   ",
    });
    boot[510] = 0x55;
    boot[511] = 0xaa;
    let dps = bps / u64::from(info.sector_size);
    let write = async |sector: u64, data: &[u8]| block.write(sector * dps, data).await;
    // The reserved sectors, FATs and root directory start zeroed.
    let zeros = vec![0u8; CHUNK as usize];
    let first_data = reserved + 2 * fat + root_sectors;
    let clear = first_data + if kind == FatType::Fat32 { spc } else { 0 };
    let mut s = 0;
    while s < clear {
        let n = (clear - s).min(CHUNK / bps);
        write(s, &zeros[..(n * bps) as usize]).await?;
        s += n;
    }
    let mut fat0 = [0u8; 512];
    match kind {
        FatType::Fat12 => fat0[..3].copy_from_slice(&[0xf8, 0xff, 0xff]),
        FatType::Fat16 => fat0[..4].copy_from_slice(&[0xf8, 0xff, 0xff, 0xff]),
        FatType::Fat32 => {
            fat0[..12].copy_from_slice(&[0xf8, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x0f])
        }
    }
    for k in 0..2 {
        write(reserved + k * fat, &fat0).await?;
    }
    if kind == FatType::Fat32 {
        let mut fsinfo = [0u8; 512];
        fsinfo[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        fsinfo[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        fsinfo[488..492].copy_from_slice(&((clusters - 1) as u32).to_le_bytes());
        fsinfo[492..496].copy_from_slice(&3u32.to_le_bytes());
        fsinfo[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
        write(1, &fsinfo).await?;
        write(7, &fsinfo).await?;
        write(6, &boot).await?;
    }
    write(0, &boot).await?;
    block.flush().await?;
    Ok(kind)
}

/// Whether the first sector `sector0` is a FAT boot sector (its
/// signature and a plausible BPB), to tell a FAT image from others.
pub fn is_fat(sector0: &[u8]) -> bool {
    sector0.len() >= 512
        && sector0[510] == 0x55
        && sector0[511] == 0xaa
        && matches!(le16(sector0, 11), 512 | 1024 | 2048 | 4096)
        && sector0[13].is_power_of_two()
        && sector0[16] >= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_checksums() {
        assert_eq!(plain_short("README.TXT"), Some((*b"README  TXT", 0)));
        assert_eq!(plain_short("readme.txt"), Some((*b"README  TXT", 0x18)));
        assert_eq!(plain_short("Makefile"), None);
        assert_eq!(plain_short("a.b.c"), None);
        assert_eq!(plain_short("toolongname"), None);
        let taken = BTreeSet::new();
        assert_eq!(&generate_short("A long name.html", &taken).unwrap(), b"ALONGN~1HTM");
        assert_eq!(&generate_short(".bashrc", &taken).unwrap(), b"BASHRC~1   ");
        let mut taken = BTreeSet::new();
        taken.insert(*b"ALONGN~1HTM");
        assert_eq!(&generate_short("A long name.html", &taken).unwrap(), b"ALONGN~2HTM");
        // The checksum of the Microsoft specification's algorithm.
        let sum = |s: &[u8; 11]| {
            let mut sum = 0u8;
            for &c in s {
                sum = (if sum & 1 != 0 { 0x80u8 } else { 0 }).wrapping_add(sum >> 1).wrapping_add(c);
            }
            sum
        };
        for s in [b"ALONGN~1HTM", b"README  TXT", b"\xe5\x01\xff        "] {
            assert_eq!(lfn_checksum(s), sum(s));
        }
    }

    #[test]
    fn times_round_trip() {
        for secs in [315_532_800u64, 1_700_000_000, 4_102_444_798] {
            let (d, t) = fat_time(Timestamp(secs * 1_000_000_000));
            assert_eq!(from_fat_time(d, t).as_secs(), secs & !1, "{secs}");
        }
        assert_eq!(from_fat_time(0, 0), Timestamp(0));
        assert_eq!(fat_time(Timestamp(0)), (33, 0));
    }

    #[test]
    fn names_a_fat_cannot_hold_are_refused() {
        for bad in ["a:b", "a*", "x?", "trail.", "trail ", "a\\b", "\u{1}"] {
            assert_eq!(check_name(bad), Err(Error::InvalidKey), "{bad:?}");
        }
        assert_eq!(check_name("ünïcødé file.txt"), Ok(()));
    }
}
