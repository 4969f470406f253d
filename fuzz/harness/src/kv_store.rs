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

/// Makes the checksums of both superblocks, and of the index each names,
/// hold (a second reading of the format: superblock fields at fixed
/// offsets, index blocks chained by the first 8 bytes of each).
fn reseal(image: &mut [u8]) {
    for slot in 0..2 {
        let at = slot * 4096;
        if image.len() < at + 112 || &image[at..at + 8] != b"MIRAGEKV" {
            continue;
        }
        let u64_at = |img: &[u8], o: usize| u64::from_le_bytes(img[o..o + 8].try_into().expect("8 bytes"));
        let block = u32::from_le_bytes(image[at + 12..at + 16].try_into().expect("4 bytes")) as usize;
        let (head, len) = (u64_at(image, at + 32), u64_at(image, at + 40));
        if (512..=1 << 16).contains(&block) && len < image.len() as u64 {
            let mut blob = Vec::new();
            let mut b = head;
            let mut hops = 0;
            while (blob.len() as u64) < len && hops < image.len() / block {
                let Some(start) = usize::try_from(b).ok().and_then(|b| b.checked_mul(block)) else { break };
                if start + block > image.len() {
                    break;
                }
                let n = (len as usize - blob.len()).min(block - 8);
                blob.extend_from_slice(&image[start + 8..start + 8 + n]);
                b = u64_at(image, start);
                hops += 1;
            }
            let sha: [u8; 32] = Sha256::digest(&blob).into();
            image[at + 48..at + 80].copy_from_slice(&sha);
        }
        let sha: [u8; 32] = Sha256::digest(&image[at..at + 80]).into();
        image[at + 80..at + 112].copy_from_slice(&sha);
    }
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
