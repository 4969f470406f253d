//! The read-write store on a block device of mirage-kv (`BlockStore`):
//! opening damaged or hostile images.

use std::cell::RefCell;

use mirage_devices::block::{self, Block, BlockInfo};
use mirage_devices::kv::{Key, Kind, KvRo, KvRw};
use mirage_devices::time::{Timestamp, WallClock};
use mirage_kv::BlockStore;
use sha2::{Digest as _, Sha256};

use crate::sim::now;

/// A writable block device over a byte image.
#[derive(Debug)]
pub struct Disk {
    bytes: RefCell<Vec<u8>>,
    info: BlockInfo,
}

impl Disk {
    /// A device of `sector`-byte sectors holding `image`, zero-padded to a
    /// whole sector.
    pub fn new(image: &[u8], sector: u32) -> Disk {
        let mut bytes = image.to_vec();
        bytes.resize(image.len().div_ceil(sector as usize) * sector as usize, 0);
        let info = BlockInfo::new(sector, (bytes.len() / sector as usize) as u64, false);
        Disk { bytes: RefCell::new(bytes), info }
    }

    /// What the device holds.
    pub fn image(&self) -> Vec<u8> {
        self.bytes.borrow().clone()
    }
}

impl Block for Disk {
    fn info(&self) -> BlockInfo {
        self.info
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), block::Error> {
        self.info.check(sector, buf.len())?;
        let at = (sector * u64::from(self.info.sector_size)) as usize;
        buf.copy_from_slice(&self.bytes.borrow()[at..at + buf.len()]);
        Ok(())
    }

    async fn write(&self, sector: u64, data: &[u8]) -> Result<(), block::Error> {
        self.info.check(sector, data.len())?;
        let at = (sector * u64::from(self.info.sector_size)) as usize;
        self.bytes.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), block::Error> {
        Ok(())
    }
}

/// A clock that stands still.
#[derive(Debug)]
pub struct Still;

impl WallClock for Still {
    fn now(&self) -> Timestamp {
        Timestamp(1_700_000_000)
    }
}

/// The input is a disk image, opened with 512- and 4096-byte sectors,
/// as it is and resealed (its checksums made to hold, so that what they
/// guard is reached too). An image the store opens must list, read and
/// take a change; after the change it must open again and hold it.
pub fn run(data: &[u8]) {
    for sector in [512, 4096] {
        for sealed in [false, true] {
            let mut image = data.to_vec();
            if sealed {
                reseal(&mut image);
            }
            let disk = Disk::new(&image, sector);
            let store = match now(BlockStore::open(&disk, Still)) {
                Ok(s) => s,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    continue;
                }
            };
            if let Some(why) = store.recovery() {
                assert!(!why.is_empty());
            }
            check_store(&store);
            let key = Key::parse("/fuzz/new").expect("a key");
            let value = b"written after opening a fuzzed image".repeat(5);
            let wrote = now(store.set(&key, &value)).is_ok();
            let values = store.usage().values;
            drop(store);
            let again = now(BlockStore::open(&disk, Still)).unwrap_or_else(|e| panic!("reopening after a change: {e}"));
            if wrote {
                assert_eq!(now(again.get(&key)).expect("the value written"), value);
            }
            assert_eq!(again.usage().values, values);
            check_store(&again);
        }
    }
}

/// Every value is reachable by listing from the root, and reads back
/// whole (or answers an I/O error for damaged blocks, never torn).
fn check_store<B: Block, C: WallClock>(store: &BlockStore<B, C>) {
    let mut values = 0;
    let mut pending = vec![Key::root()];
    while let Some(dir) = pending.pop() {
        for (key, kind) in now(store.list(&dir)).unwrap_or_else(|e| panic!("listing {dir}: {e}")) {
            assert_eq!(now(store.exists(&key)), Ok(Some(kind)));
            match kind {
                Kind::Dictionary => pending.push(key),
                Kind::Value => {
                    values += 1;
                    let size = now(store.size(&key)).expect("a listed value has a size");
                    if let Ok(data) = now(store.get(&key)) {
                        assert_eq!(data.len() as u64, size);
                        let digest = now(store.digest(&key)).expect("a digest");
                        assert_eq!(digest.0, <[u8; 32]>::from(Sha256::digest(&data)));
                    }
                    let mut buf = [0u8; 100];
                    let n = now(store.get_partial(&key, size.saturating_sub(10), &mut buf)).expect("a read");
                    assert_eq!(n as u64, size.min(10));
                }
            }
        }
    }
    assert_eq!(values, store.usage().values, "some values are not reachable by listing");
}

/// Makes the checksums of both superblocks, of the record each names (its
/// header's, and its index's) and of the first record of each log hold
/// (a second reading of the format: superblock fields at fixed offsets,
/// blocks chained by their first 8 bytes, a record's 96-byte header first
/// in its payload, naming the next record's block at bytes 16..24).
fn reseal(image: &mut [u8]) {
    let u64_at = |img: &[u8], o: usize| u64::from_le_bytes(img[o..o + 8].try_into().expect("8 bytes"));
    for slot in 0..2 {
        let at = slot * 4096;
        if image.len() < at + 112 || &image[at..at + 8] != b"MIRAGEKV" {
            continue;
        }
        let version = u32::from_le_bytes(image[at + 8..at + 12].try_into().expect("4 bytes"));
        let block = u32::from_le_bytes(image[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
        let (head, len) = (u64_at(image, at + 32), u64_at(image, at + 40));
        if (512..=1 << 16).contains(&block) && len < image.len() as u64 {
            let blocks = chain(image, block, head, len as usize);
            if let (2, Some(&first)) = (version, blocks.first()) {
                reseal_record(image, block, &blocks);
                // The log's next record, if a record header is there.
                let next = u64_at(image, first + 8 + 16);
                let start = usize::try_from(next).ok().and_then(|b| b.checked_mul(block));
                if let Some(start) = start.filter(|s| s + block <= image.len())
                    && &image[start + 8..start + 16] == b"MKVLOG02"
                {
                    let rec_len = u64_at(image, start + 8 + 24).saturating_add(96);
                    if rec_len < image.len() as u64 {
                        let next_blocks = chain(image, block, next, rec_len as usize);
                        reseal_record(image, block, &next_blocks);
                    }
                }
            }
            let blob = payload(image, block, &blocks, len as usize);
            let sha: [u8; 32] = Sha256::digest(&blob).into();
            image[at + 48..at + 80].copy_from_slice(&sha);
        }
        let sha: [u8; 32] = Sha256::digest(&image[at..at + 80]).into();
        image[at + 80..at + 112].copy_from_slice(&sha);
    }
}

/// The offsets of the blocks of the chain from `head` whose payloads
/// hold `len` bytes, as far as the image goes.
fn chain(image: &[u8], block: usize, head: u64, len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut b = head;
    let mut got = 0;
    while got < len && out.len() < image.len() / block {
        let Some(start) = usize::try_from(b).ok().and_then(|b| b.checked_mul(block)) else { break };
        if start + block > image.len() {
            break;
        }
        out.push(start);
        got += block - 8;
        b = u64::from_le_bytes(image[start..start + 8].try_into().expect("8 bytes"));
    }
    out
}

/// The first `len` bytes of the payloads of `blocks`.
fn payload(image: &[u8], block: usize, blocks: &[usize], len: usize) -> Vec<u8> {
    let mut blob = Vec::new();
    for &start in blocks {
        let n = (len - blob.len()).min(block - 8);
        blob.extend_from_slice(&image[start + 8..start + 8 + n]);
    }
    blob
}

/// Makes a record's index checksum and header checksum hold.
fn reseal_record(image: &mut [u8], block: usize, blocks: &[usize]) {
    let first = blocks[0];
    let index_len = u64::from_le_bytes(image[first + 8 + 24..first + 8 + 32].try_into().expect("8 bytes"));
    let Some(len) = usize::try_from(index_len).ok().and_then(|n| n.checked_add(96)) else { return };
    if len > blocks.len() * (block - 8) {
        return;
    }
    let blob = payload(image, block, blocks, len);
    let sha: [u8; 32] = Sha256::digest(&blob[96..]).into();
    image[first + 8 + 32..first + 8 + 64].copy_from_slice(&sha);
    let sha: [u8; 32] = Sha256::digest(&image[first + 8..first + 8 + 64]).into();
    image[first + 8 + 64..first + 8 + 96].copy_from_slice(&sha);
}

/// Seeds: stores as the writer leaves them, of 512-byte blocks.
pub fn seed_images() -> Vec<(&'static str, Vec<u8>)> {
    let made = |name: &'static str, fill: &dyn Fn(&BlockStore<&Disk, Still>)| {
        let disk = Disk::new(&[0; 16 * 1024], 512);
        let store = now(BlockStore::format(&disk, Still, Some(512))).expect("formatting a seed");
        fill(&store);
        (name, disk.image())
    };
    let k = |s: &str| Key::parse(s).expect("a key");
    vec![
        made("empty", &|_| {}),
        made("small-values", &|s| {
            now(s.set(&k("/a/b"), b"inline")).expect("a value");
            now(s.set(&k("/c"), b"")).expect("a value");
        }),
        made("block-values", &|s| {
            now(s.set(&k("/big"), &[7; 1500])).expect("a value");
            now(s.set(&k("/d/e"), &[9; 600])).expect("a value");
            now(s.remove(&k("/d/e"))).expect("a removal");
            now(s.set(&k("/d/f"), &[3; 200])).expect("a value");
        }),
    ]
}
