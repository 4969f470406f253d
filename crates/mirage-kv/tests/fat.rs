//! The FAT store over real image files, against the host's tools:
//! volumes made by `mkfs.fat` (FAT12, FAT16, FAT32) and filled by `mcopy`
//! read back exactly; files written through `Fat` read back exactly by
//! `mcopy` and pass `fsck.fat -n`; a full volume answers `NoSpace`; damaged
//! images answer errors, never a panic or a hang.
//!
//! Needs dosfstools (`mkfs.fat`, `fsck.fat`) and mtools (`mcopy`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mirage_devices::block::{self, Block, BlockInfo};
use mirage_devices::kv::{Error, Key, Kind, KvRo, KvRw};
use mirage_devices::time::{Timestamp, WallClock};
use mirage_kv::fat::{Fat, FatError, FatType, FormatOptions, format};
use mirage_unix::FileBlock;
use sha2::{Digest as _, Sha256};

mod common;
use common::{Dir, block_on};

/// A clock at 2024-05-06 07:08:10 UTC.
struct Clock;

impl WallClock for Clock {
    fn now(&self) -> Timestamp {
        Timestamp(1_714_979_290 * 1_000_000_000)
    }
}

fn k(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (install dosfstools and mtools)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// `mkfs.fat -F bits` on a new image of `mib` MiB.
fn mkfs(dir: &Path, bits: u32, mib: u64) -> PathBuf {
    let img = dir.join(format!("fat{bits}.img"));
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    let spc = if bits == 12 { "2" } else { "1" };
    run(Command::new("mkfs.fat").args(["-F", &bits.to_string(), "-s", spc, "-n", "MIRAGE"]).arg(&img));
    img
}

/// `fsck.fat -n`: no change needed, no error.
fn fsck(img: &Path) {
    let out = Command::new("fsck.fat").args(["-n", "-V"]).arg(img).output().expect("fsck.fat (dosfstools)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fsck.fat -n {} found problems:\n{text}", img.display());
    for word in ["differ", "Orphan", "lost", "wrong", "free cluster", "bad", "Bad"] {
        assert!(!text.contains(word), "fsck.fat -n {} said {word:?}:\n{text}", img.display());
    }
}

/// `mcopy -s` of the files of `src` into the root of `img`.
fn mcopy_in(src: &Path, img: &Path) {
    let mut cmd = Command::new("mcopy");
    cmd.args(["-s", "-Q", "-i"]).arg(img);
    for e in std::fs::read_dir(src).unwrap() {
        cmd.arg(e.unwrap().path());
    }
    run(cmd.arg("::/"));
}

/// A tree of files: long names, non-ASCII names, nested directories, an
/// empty file, lower-case 8.3 names, values of several clusters.
fn tree() -> BTreeMap<String, Vec<u8>> {
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut t = BTreeMap::new();
    t.insert("/README.TXT".to_string(), b"upper case 8.3\n".to_vec());
    t.insert("/index.html".to_string(), b"<h1>home</h1>\n".to_vec());
    t.insert("/A long file name with spaces.markdown".to_string(), b"long\n".to_vec());
    t.insert("/empty".to_string(), Vec::new());
    t.insert("/big.bin".to_string(), big.clone());
    t.insert("/css/site.css".to_string(), b"body { color: black }\n".to_vec());
    t.insert("/deep/er/still deeper/and-a-name-longer-than-thirteen-units.txt".to_string(), b"far\n".to_vec());
    t.insert("/deep/Ünïcødé naïve café.txt".to_string(), "ünï\n".as_bytes().to_vec());
    t.insert("/deep/Mixed.Case".to_string(), vec![7; 5000]);
    t.insert("/.hidden".to_string(), b"dot\n".to_vec());
    t
}

fn write_host(root: &Path, t: &BTreeMap<String, Vec<u8>>) {
    for (p, data) in t {
        let path = root.join(&p[1..]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
}

fn read_host(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                pending.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(format!("/{rel}"), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Every value of a store, found by listing from the root.
fn contents<S: KvRo>(s: &S) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![Key::root()];
    while let Some(d) = pending.pop() {
        for (key, kind) in block_on(s.list(&d)).unwrap() {
            assert_eq!(block_on(s.exists(&key)).unwrap(), Some(kind), "{key}");
            match kind {
                Kind::Dictionary => pending.push(key),
                Kind::Value => {
                    let v = block_on(s.get(&key)).unwrap();
                    assert_eq!(block_on(s.size(&key)).unwrap(), v.len() as u64, "{key}");
                    let sha: [u8; 32] = Sha256::digest(&v).into();
                    assert_eq!(block_on(s.digest(&key)).unwrap().0, sha, "{key}");
                    out.insert(key.as_str().to_string(), v);
                }
            }
        }
    }
    out
}

fn open(img: &Path) -> Fat<FileBlock, Clock> {
    block_on(Fat::open(FileBlock::open(img, 512, false).unwrap(), Clock)).unwrap()
}

const KINDS: [(u32, u64, FatType); 3] = [(12, 2, FatType::Fat12), (16, 24, FatType::Fat16), (32, 40, FatType::Fat32)];

#[test]
fn volumes_made_by_mkfs_and_filled_by_mcopy_read_back_exactly() {
    let d = Dir::new("fat-read");
    let src = d.0.join("src");
    let t = tree();
    write_host(&src, &t);
    for (bits, mib, kind) in KINDS {
        let img = mkfs(&d.0, bits, mib);
        mcopy_in(&src, &img);
        let fat = open(&img);
        assert_eq!(fat.kind(), kind);
        assert_eq!(contents(&fat), t, "FAT{bits}");
        // Case does not matter to FAT.
        assert_eq!(block_on(fat.get(&k("/CSS/SITE.CSS"))).unwrap(), t["/css/site.css"]);
        assert_eq!(block_on(fat.exists(&k("/deep/er"))).unwrap(), Some(Kind::Dictionary));
        assert_eq!(block_on(fat.exists(&k("/nothing"))).unwrap(), None);
        assert_eq!(block_on(fat.exists(&k("/empty/below"))).unwrap(), None);
        assert_eq!(block_on(fat.get(&k("/deep"))), Err(Error::ValueExpected));
        assert_eq!(block_on(fat.list(&k("/empty"))), Err(Error::DictionaryExpected));
        // Partial reads across cluster and run boundaries.
        let big = &t["/big.bin"];
        for (off, len) in [(0, 10), (511, 2), (4095, 8193), (300 * 1024 - 3, 100), (400_000, 5)] {
            let mut buf = vec![0u8; len];
            let n = block_on(fat.get_partial(&k("/big.bin"), off as u64, &mut buf)).unwrap();
            let want = &big[off.min(big.len())..(off + len).min(big.len())];
            assert_eq!(&buf[..n], want, "FAT{bits} at {off}");
        }
        // mcopy keeps the host file's time; ours reads it back.
        let host = std::fs::metadata(src.join("index.html")).unwrap().modified().unwrap();
        let host = host.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let ours = block_on(fat.last_modified(&k("/index.html"))).unwrap().as_secs();
        // FAT keeps local time in 2-second steps; the tests run in UTC.
        assert!(host.abs_diff(ours) <= 2 || std::env::var_os("TZ").is_some(), "{host} vs {ours}");
        assert!(block_on(fat.check()).unwrap().is_empty());
    }
}

/// Writes through `fat`: the tree, then changes; what the store should hold.
fn write_tree(fat: &Fat<FileBlock, Clock>) -> BTreeMap<String, Vec<u8>> {
    let mut t = tree();
    for (p, v) in &t {
        block_on(fat.set(&k(p), v)).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    // Overwrite, shrink, grow, partial writes, rename, remove.
    let v = vec![9u8; 70_000];
    block_on(fat.set(&k("/index.html"), &v)).unwrap();
    t.insert("/index.html".into(), v);
    block_on(fat.set(&k("/big.bin"), b"small now")).unwrap();
    t.insert("/big.bin".into(), b"small now".to_vec());
    block_on(fat.set_partial(&k("/empty"), 3000, b"tail")).unwrap();
    let mut v = vec![0u8; 3004];
    v[3000..].copy_from_slice(b"tail");
    t.insert("/empty".into(), v);
    block_on(fat.set_partial(&k("/README.TXT"), 0, b"UPPER")).unwrap();
    t.get_mut("/README.TXT").unwrap()[..5].copy_from_slice(b"UPPER");
    block_on(fat.rename(&k("/css"), &k("/styles/moved css"))).unwrap();
    let css = t.remove("/css/site.css").unwrap();
    t.insert("/styles/moved css/site.css".into(), css);
    block_on(fat.rename(&k("/.hidden"), &k("/deep/er/Renamed with a long name"))).unwrap();
    let h = t.remove("/.hidden").unwrap();
    t.insert("/deep/er/Renamed with a long name".into(), h);
    block_on(fat.remove(&k("/deep/Mixed.Case"))).unwrap();
    t.remove("/deep/Mixed.Case");
    block_on(fat.allocate(&k("/zeros"), 10_000)).unwrap();
    t.insert("/zeros".into(), vec![0; 10_000]);
    assert_eq!(block_on(fat.allocate(&k("/zeros"), 1)), Err(Error::AlreadyPresent));
    // Many names in one directory: it grows past a cluster.
    for i in 0..60 {
        let p = format!("/many/entry number {i} with a long name.txt");
        block_on(fat.set(&k(&p), format!("{i}").as_bytes())).unwrap();
        t.insert(p, format!("{i}").into_bytes());
    }
    assert_eq!(block_on(fat.set(&k("/a:b"), b"x")), Err(Error::InvalidKey));
    assert_eq!(block_on(fat.set(&k("/README.TXT/x"), b"x")), Err(Error::DictionaryExpected));
    assert_eq!(block_on(fat.set(&k("/deep"), b"x")), Err(Error::ValueExpected));
    assert_eq!(block_on(fat.rename(&k("/deep"), &k("/deep/er/x"))), Err(Error::InvalidKey));
    assert_eq!(block_on(fat.rename(&k("/deep"), &k("/DEEP/er/x"))), Err(Error::InvalidKey));
    // Onto the directory holding it: the directory and the rest of it go,
    // as in every store, and the file's clusters stay its own.
    block_on(fat.set(&k("/up/b"), &[5u8; 5000])).unwrap();
    block_on(fat.set(&k("/up/c"), b"goes with /up")).unwrap();
    block_on(fat.rename(&k("/up/b"), &k("/up"))).unwrap();
    t.insert("/up".into(), vec![5u8; 5000]);
    assert!(block_on(fat.get(&k("/up/c"))).is_err());
    // Another case of the same name: the file is renamed, not removed.
    block_on(fat.rename(&k("/zeros"), &k("/Zeros"))).unwrap();
    assert_eq!(block_on(fat.list(&Key::root())).unwrap().iter().filter(|(k, _)| k.as_str() == "/Zeros").count(), 1);
    let z = t.remove("/zeros").unwrap();
    t.insert("/Zeros".into(), z);
    t
}

fn mcopy_out(img: &Path, to: &Path) -> BTreeMap<String, Vec<u8>> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    run(Command::new("mcopy").args(["-s", "-n", "-i"]).arg(img).arg("::/").arg(to));
    read_host(to)
}

#[test]
fn files_written_through_fat_read_back_with_mtools_and_pass_fsck() {
    let d = Dir::new("fat-write");
    for (bits, mib, kind) in KINDS {
        let img = mkfs(&d.0, bits, mib);
        let fat = open(&img);
        assert_eq!(fat.kind(), kind);
        let t = write_tree(&fat);
        assert_eq!(contents(&fat), t, "FAT{bits}");
        assert!(block_on(fat.check()).unwrap().is_empty());
        drop(fat);
        fsck(&img);
        assert_eq!(mcopy_out(&img, &d.0.join("out")), t, "FAT{bits} through mcopy");
        // mdir lists the long name, with its generated short name.
        let listing = run(Command::new("mdir").arg("-i").arg(&img).arg("::/deep/er"));
        assert!(listing.contains("Renamed with a long name"), "{listing}");
        assert!(listing.contains("RENAME~1"), "{listing}");
        // And again after opening anew.
        assert_eq!(contents(&open(&img)), t);
    }
}

#[test]
fn volumes_formatted_here_pass_fsck_and_take_mcopy() {
    let d = Dir::new("fat-format");
    for (kind, mib) in [(FatType::Fat12, 2u64), (FatType::Fat16, 20), (FatType::Fat32, 40)] {
        let img = d.0.join("ours.img");
        let _ = std::fs::remove_file(&img);
        std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let dev = FileBlock::open(&img, 512, false).unwrap();
        assert_eq!(block_on(format(&dev, FormatOptions::new(Some(kind), 0x1234_5678))).unwrap(), kind);
        fsck(&img);
        let fat = open(&img);
        assert_eq!(fat.kind(), kind);
        let t = write_tree(&fat);
        drop(fat);
        fsck(&img);
        assert_eq!(mcopy_out(&img, &d.0.join("out")), t, "{kind}");
        run(Command::new("mcopy").arg("-i").arg(&img).arg(d.0.join("out/index.html")).arg("::/from mcopy.html"));
        assert_eq!(block_on(open(&img).get(&k("/from mcopy.html"))).unwrap(), t["/index.html"]);
    }
    // By size.
    for (mib, kind) in [(1u64, FatType::Fat12), (16, FatType::Fat16), (600, FatType::Fat32)] {
        let img = d.0.join("auto.img");
        let _ = std::fs::remove_file(&img);
        std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let dev = FileBlock::open(&img, 512, false).unwrap();
        assert_eq!(block_on(format(&dev, FormatOptions::default())).unwrap(), kind);
        fsck(&img);
    }
    let img = d.0.join("tiny.img");
    std::fs::File::create(&img).unwrap().set_len(8192).unwrap();
    let dev = FileBlock::open(&img, 512, false).unwrap();
    assert!(matches!(block_on(format(&dev, FormatOptions::new(Some(FatType::Fat32), 0))), Err(FatError::TooSmall(_))));
}

#[test]
fn a_full_volume_answers_no_space_stays_readable_and_frees_on_remove() {
    let d = Dir::new("fat-full");
    for bits in [12, 16] {
        let mib = if bits == 12 { 1 } else { 9 };
        let img = mkfs(&d.0, bits, mib);
        let fat = open(&img);
        let mut t = BTreeMap::new();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut i = 0;
        let err = loop {
            let p = format!("/dir {}/file number {i}", i % 3);
            match block_on(fat.set(&k(&p), &chunk)) {
                Ok(()) => {
                    t.insert(p, chunk.clone());
                }
                Err(e) => break e,
            }
            i += 1;
            assert!(i < 10_000);
        };
        assert_eq!(err, Error::NoSpace, "FAT{bits}");
        // Small values still fit into the last clusters, then they too fail.
        let err = loop {
            let p = format!("/small {i}");
            match block_on(fat.set(&k(&p), b"x")) {
                Ok(()) => {
                    t.insert(p, b"x".to_vec());
                }
                Err(e) => break e,
            }
            i += 1;
        };
        assert_eq!(err, Error::NoSpace);
        assert_eq!(block_on(fat.usage()).unwrap().free, 0);
        assert_eq!(block_on(fat.set_partial(&k("/dir 0/file number 0"), 64 * 1024, &chunk)), Err(Error::NoSpace));
        assert_eq!(contents(&fat), t);
        drop(fat);
        fsck(&img);
        // Removing frees space for the next value.
        let fat = open(&img);
        block_on(fat.remove(&k("/dir 1"))).unwrap();
        t.retain(|p, _| !p.starts_with("/dir 1/"));
        assert!(block_on(fat.usage()).unwrap().free > 0);
        block_on(fat.set(&k("/after"), &chunk)).unwrap();
        t.insert("/after".into(), chunk.clone());
        assert_eq!(contents(&fat), t);
        drop(fat);
        fsck(&img);
        assert_eq!(mcopy_out(&img, &d.0.join("out")), t);
    }
}

/// A block device over bytes in memory, for damaged images.
struct Mem {
    bytes: RefCell<Vec<u8>>,
    info: BlockInfo,
}

impl Mem {
    fn new(mut bytes: Vec<u8>) -> Mem {
        bytes.truncate(bytes.len() / 512 * 512);
        let info = BlockInfo::new(512, bytes.len() as u64 / 512, false);
        Mem { bytes: RefCell::new(bytes), info }
    }
}

impl Block for Mem {
    fn info(&self) -> BlockInfo {
        self.info
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), block::Error> {
        self.info.check(sector, buf.len())?;
        let at = sector as usize * 512;
        buf.copy_from_slice(&self.bytes.borrow()[at..at + buf.len()]);
        Ok(())
    }
    async fn write(&self, sector: u64, data: &[u8]) -> Result<(), block::Error> {
        self.info.check(sector, data.len())?;
        let at = sector as usize * 512;
        self.bytes.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    async fn flush(&self) -> Result<(), block::Error> {
        Ok(())
    }
}

/// Reads everything, then writes: errors are fine, panics are not.
fn exercise(image: Vec<u8>) -> Result<(), String> {
    let dev = Mem::new(image);
    let fat = block_on(Fat::open(&dev, Clock)).map_err(|e| e.to_string())?;
    let mut pending = vec![(Key::root(), 0)];
    let mut steps = 0;
    while let Some((d, depth)) = pending.pop() {
        steps += 1;
        if steps > 2000 || depth > 20 {
            break;
        }
        let Ok(list) = block_on(fat.list(&d)) else { continue };
        for (key, kind) in list {
            match kind {
                Kind::Dictionary => pending.push((key, depth + 1)),
                Kind::Value => {
                    let _ = block_on(fat.get(&key));
                    let _ = block_on(fat.digest(&key));
                    let mut buf = [0u8; 700];
                    let _ = block_on(fat.get_partial(&key, 1000, &mut buf));
                    let _ = block_on(fat.last_modified(&key));
                }
            }
        }
    }
    let _ = block_on(fat.check());
    let _ = block_on(fat.set(&k("/new/a long new name.txt"), &[1u8; 5000]));
    let _ = block_on(fat.set_partial(&k("/big.bin"), 100, b"patch"));
    let _ = block_on(fat.rename(&k("/deep"), &k("/moved")));
    let _ = block_on(fat.remove(&k("/index.html")));
    let _ = block_on(fat.remove(&k("/")));
    Ok(())
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn damaged_images_give_errors_never_a_panic_or_a_hang() {
    let d = Dir::new("fat-damaged");
    let src = d.0.join("src");
    write_host(&src, &tree());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (bits, mib, _) in KINDS {
        let img = mkfs(&d.0, bits, mib);
        mcopy_in(&src, &img);
        let whole = std::fs::read(&img).unwrap();
        let g = Mem::new(whole.clone());
        let fat = block_on(Fat::open(&g, Clock)).unwrap();
        drop(fat);
        // The regions: boot sector, FAT, the start of the data (root and
        // first directories on FAT32; root directory on FAT12/16).
        let reserved = u16::from_le_bytes([whole[14], whole[15]]) as usize * 512;
        let fat16 = u16::from_le_bytes([whole[22], whole[23]]) as usize;
        let fat_len =
            if fat16 != 0 { fat16 } else { u32::from_le_bytes([whole[36], whole[37], whole[38], whole[39]]) as usize }
                * 512;
        let data = reserved + 2 * fat_len;
        let regions = [(0, 90), (reserved, 512), (data, 64 * 1024)];
        let mut refused = 0;
        for trial in 0..90 {
            let mut image = whole.clone();
            let (at, len) = regions[trial % 3];
            for _ in 0..1 + rng.next() % 8 {
                let i = at + (rng.next() as usize % len);
                image[i] ^= 1 << (rng.next() % 8);
            }
            if exercise(image).is_err() {
                refused += 1;
            }
        }
        // Some boot sector flips must be refused.
        assert!(refused > 0, "FAT{bits}");
        // Truncated: refused with both sizes.
        let dev = Mem::new(whole[..whole.len() / 2].to_vec());
        match block_on(Fat::open(&dev, Clock)) {
            Err(FatError::Truncated { volume, device }) => {
                assert_eq!(volume, whole.len() as u64);
                assert_eq!(device, whole.len() as u64 / 2);
            }
            other => panic!("{other:?}"),
        }
        // Not FAT at all.
        assert_eq!(block_on(Fat::open(Mem::new(vec![0; 1 << 20]), Clock)).err(), Some(FatError::NotFat));
    }
}

/// The byte offset of cluster `c`'s FAT16 entry, and of the data region,
/// in an image made by `mkfs.fat -F 16 -s 1`.
fn fat16_layout(img: &[u8]) -> (usize, usize) {
    let reserved = u16::from_le_bytes([img[14], img[15]]) as usize * 512;
    let fat = u16::from_le_bytes([img[22], img[23]]) as usize * 512;
    let root = u16::from_le_bytes([img[17], img[18]]) as usize * 32;
    (reserved, reserved + 2 * fat + root)
}

/// Where a FAT16 image's root directory starts (after the two FATs).
fn fat16_root(img: &[u8]) -> usize {
    let reserved = u16::from_le_bytes([img[14], img[15]]) as usize * 512;
    reserved + 2 * u16::from_le_bytes([img[22], img[23]]) as usize * 512
}

#[test]
fn entries_naming_clusters_not_theirs_never_cost_another_value() {
    let d = Dir::new("fat-claims");
    let img = mkfs(&d.0, 16, 24);
    let fat = open(&img);
    block_on(fat.set(&k("/old.bin"), &vec![3u8; 5 * 512])).unwrap();
    block_on(fat.set(&k("/other.bin"), &vec![4u8; 512])).unwrap();
    block_on(fat.set(&k("/empty"), b"")).unwrap();
    drop(fat);
    let mut image = std::fs::read(&img).unwrap();
    let (fat_at, root) = (fat16_layout(&image).0, fat16_root(&image));
    let slot = |image: &[u8], name: &[u8; 11]| (0..512).step_by(32).find(|&o| &image[root + o..root + o + 11] == name);
    // old.bin is clusters 2..=6, other.bin 7: the FAT calls old.bin's
    // free (its entry written, the FAT not, when the power went).
    for c in 2..=6 {
        image[fat_at + 2 * c..fat_at + 2 * c + 2].copy_from_slice(&[0, 0]);
    }
    // And the empty file names other.bin's cluster.
    let empty = slot(&image, b"EMPTY      ").unwrap();
    image[root + empty + 26..root + empty + 28].copy_from_slice(&7u16.to_le_bytes());
    let dev = Mem::new(image);
    let fat = block_on(Fat::open(&dev, Clock)).unwrap();
    // A new value over old.bin takes the free clusters; the old chain is
    // not freed after it (that would free the new one).
    block_on(fat.set(&k("/old.bin"), &vec![5u8; 2 * 512])).unwrap();
    assert_eq!(block_on(fat.get(&k("/old.bin"))).unwrap(), vec![5u8; 2 * 512]);
    // Written into, the empty file gets a cluster of its own.
    block_on(fat.set_partial(&k("/empty"), 0, b"mine")).unwrap();
    assert_eq!(block_on(fat.get(&k("/empty"))).unwrap(), b"mine");
    assert_eq!(block_on(fat.get(&k("/other.bin"))).unwrap(), vec![4u8; 512]);
    assert_eq!(block_on(fat.get(&k("/old.bin"))).unwrap(), vec![5u8; 2 * 512]);
}

#[test]
fn looping_and_short_chains_and_bad_names_are_errors() {
    let d = Dir::new("fat-loop");
    let img = mkfs(&d.0, 16, 24);
    let fat = open(&img);
    block_on(fat.set(&k("/looped.bin"), &vec![3u8; 5 * 512])).unwrap();
    block_on(fat.set(&k("/sub dir/x"), b"x")).unwrap();
    let first = match block_on(fat.list(&Key::root())).unwrap().as_slice() {
        [(a, _), (b, _)] => (a.clone(), b.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(first.0.as_str(), "/looped.bin");
    drop(fat);
    let whole = std::fs::read(&img).unwrap();
    let (fat_at, _) = fat16_layout(&whole);
    // The file is clusters 2..=6 (the first free ones): 6 points back at 3.
    let mut image = whole.clone();
    let e = |c: usize| fat_at + 2 * c;
    assert_eq!(u16::from_le_bytes([image[e(6)], image[e(6) + 1]]), 0xffff);
    image[e(6)..e(6) + 2].copy_from_slice(&3u16.to_le_bytes());
    // The chain is walked to its end before a read: the loop is found
    // though the file's 5 clusters come before it.
    let dev = Mem::new(image.clone());
    let fat = block_on(Fat::open(&dev, Clock)).unwrap();
    assert_eq!(block_on(fat.get(&k("/looped.bin"))), Err(Error::Io));
    let mut buf = [0u8; 10];
    assert_eq!(block_on(fat.get_partial(&k("/looped.bin"), 0, &mut buf)), Err(Error::Io));
    let problems = block_on(fat.check()).unwrap();
    assert!(problems.iter().any(|p| p.contains("/looped.bin") && p.contains("meets cluster 3")), "{problems:?}");
    drop(fat);
    // A size larger than the chain: the short entry's size is at byte 28.
    let root = fat16_root(&whole);
    let slot = (0..512).step_by(32).find(|&o| &image[root + o..root + o + 11] == b"LOOPED  BIN").unwrap();
    image[root + slot + 28..root + slot + 32].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let dev = Mem::new(image.clone());
    let fat = block_on(Fat::open(&dev, Clock)).unwrap();
    let start = std::time::Instant::now();
    assert_eq!(block_on(fat.get(&k("/looped.bin"))), Err(Error::Io));
    assert_eq!(block_on(fat.digest(&k("/looped.bin"))), Err(Error::Io));
    let mut buf = vec![0u8; 4096];
    assert_eq!(block_on(fat.get_partial(&k("/looped.bin"), 1 << 20, &mut buf)), Err(Error::Io));
    assert!(start.elapsed().as_secs() < 5);
    // Writing over it stores the new value (the looped chain is left).
    block_on(fat.set(&k("/looped.bin"), b"fixed")).unwrap();
    assert_eq!(block_on(fat.get(&k("/looped.bin"))).unwrap(), b"fixed");
    drop(fat);
    // A chain pointing outside the volume.
    let mut image = whole.clone();
    image[e(3)..e(3) + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
    let dev = Mem::new(image);
    let fat = block_on(Fat::open(&dev, Clock)).unwrap();
    assert_eq!(block_on(fat.get(&k("/looped.bin"))), Err(Error::Io));
    assert!(!block_on(fat.check()).unwrap().is_empty());
    // A broken LFN sequence: the file is seen under its short name.
    let mut image = whole.clone();
    let lfn = (0..512).step_by(32).find(|&o| image[root + o + 11] == 0x0f).unwrap();
    image[root + lfn + 13] ^= 0xff; // its checksum
    let dev = Mem::new(image);
    let fat = block_on(Fat::open(&dev, Clock)).unwrap();
    let names: Vec<String> =
        block_on(fat.list(&Key::root())).unwrap().into_iter().map(|(k, _)| k.to_string()).collect();
    assert!(names.contains(&"/SUBDIR~1".to_string()), "{names:?}");
}
