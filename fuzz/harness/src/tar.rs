//! The tar reader of mirage-kv (`Tar`, a read-only store over a block
//! device) and its writer (`tar::write_archive`).

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use mirage_devices::kv::{Key, Kind, KvRo};
use mirage_devices::time::Timestamp;
use mirage_kv::Tar;
use mirage_kv::tar::write_archive;
use sha2::{Digest as _, Sha256};

use crate::sim::{MemBlock, now};

/// The input is a disk image: opened with 512- and 4096-byte sectors,
/// and every file it holds read back through each call of the store.
pub fn run(data: &[u8]) {
    for sector in [512, 4096] {
        let block = MemBlock::new(data, sector);
        match now(Tar::new(&block)) {
            Ok(tar) => check_store(&tar),
            Err(e) => drop(e.to_string()),
        }
    }
}

/// What holds for any store the reader opens: a key is a value or a
/// dictionary, never both (as in every other store: `Mem` refuses a value
/// under a value); listing from the root reaches every value; each value
/// reads back the same through `get`, `get_partial`, `size` and `digest`.
fn check_store<B: mirage_devices::block::Block>(tar: &Tar<B>) {
    let mut values = 0;
    let mut pending = vec![Key::root()];
    while let Some(dir) = pending.pop() {
        let children = now(tar.list(&dir)).unwrap_or_else(|e| panic!("listing {dir}: {e}"));
        let mut latest = None;
        for (key, kind) in children {
            assert_eq!(key.parent(), dir);
            assert_eq!(now(tar.exists(&key)), Ok(Some(kind)), "{key} is listed as {kind:?}");
            let modified = now(tar.last_modified(&key)).unwrap_or_else(|e| panic!("{key}: {e}"));
            latest = latest.max(Some(modified));
            match kind {
                Kind::Dictionary => pending.push(key),
                Kind::Value => {
                    values += 1;
                    check_value(tar, &key);
                }
            }
        }
        if !dir.is_root() {
            assert_eq!(now(tar.last_modified(&dir)).ok(), latest, "a dictionary's time is its latest value's");
        }
    }
    assert_eq!(values, tar.len(), "some values are not reachable by listing");
}

fn check_value<B: mirage_devices::block::Block>(tar: &Tar<B>, key: &Key) {
    let data = now(tar.get(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(now(tar.size(key)), Ok(data.len() as u64));
    let digest = now(tar.digest(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(digest.0, <[u8; 32]>::from(Sha256::digest(&data)));
    assert!(now(tar.list(key)).is_err(), "a value lists as a dictionary");
    for offset in [0, 1, 511, 512, 513, data.len().saturating_sub(1), data.len(), data.len() + 1] {
        let mut buf = [0u8; 700];
        let n = now(tar.get_partial(key, offset as u64, &mut buf)).unwrap_or_else(|e| panic!("{key}: {e}"));
        let want = data.get(offset..).unwrap_or(&[]);
        assert_eq!(&buf[..n], &want[..want.len().min(buf.len())], "{key} at {offset}");
    }
}

/// A file for the writer: a path made of valid key segments (some long
/// enough for ustar's prefix field or a pax record), contents and a time.
#[derive(Debug)]
struct File {
    path: String,
    data: Vec<u8>,
    mtime: u64,
}

impl<'a> Arbitrary<'a> for File {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<File> {
        const CHARS: &[&str] = &["a", "b", "z", "0", "9", "-", "_", ".", "~", " ", "é", "日"];
        let mut path = String::new();
        for _ in 0..u.int_in_range(1..=5)? {
            let mut segment = String::new();
            for _ in 0..u.int_in_range(1..=60)? {
                segment.push_str(u.choose(CHARS)?);
            }
            if segment == "." || segment == ".." {
                segment.push('x');
            }
            path.push('/');
            path.push_str(&segment);
        }
        let len = u.int_in_range(0..=1500)?;
        let data = u.bytes(len.min(u.len()))?.to_vec();
        Ok(File { path, data, mtime: u.arbitrary()? })
    }
}

/// The input chooses files; `write_archive` writes them and the reader
/// must give each back as written (the last of a repeated path wins, as
/// tar extracts), with its time.
pub fn run_roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(files) = Vec::<File>::arbitrary(&mut u) else { return };
    let sector = if u.arbitrary::<bool>().unwrap_or(false) { 4096 } else { 512 };
    let mut expect: BTreeMap<String, &File> = BTreeMap::new();
    let mut written = Vec::new();
    for f in &files {
        let key = Key::parse(&f.path).expect("generated paths are keys").to_string();
        // A path under a file, or a file where a dictionary is, is not an
        // archive of a directory tree: not written.
        let conflict = expect
            .keys()
            .any(|k| k != &key && (key.starts_with(&format!("{k}/")) || k.starts_with(&format!("{key}/"))));
        if !conflict {
            expect.insert(key, f);
            written.push((f.path.as_str(), f.data.as_slice(), f.mtime));
        }
    }
    let image = write_archive(written, sector);
    assert_eq!(image.len() % sector, 0);
    let block = MemBlock::new(&image, sector as u32);
    let tar = now(Tar::new(&block)).unwrap_or_else(|e| panic!("the reader refuses what the writer wrote: {e}"));
    assert_eq!(tar.len(), expect.len());
    for (key, f) in &expect {
        let key = Key::parse(key).expect("a key");
        assert_eq!(now(tar.get(&key)).as_ref(), Ok(&f.data), "{key}");
        let mtime = Timestamp(f.mtime.saturating_mul(1_000_000_000));
        assert_eq!(now(tar.last_modified(&key)), Ok(mtime), "{key}: mtime {} s", f.mtime);
    }
    check_store(&tar);
}
