//! The FAT store of mirage-kv (`Fat`): opening damaged or hostile images,
//! reading everything and writing.

use mirage_devices::kv::{Key, Kind, KvRo, KvRw};
use mirage_kv::fat::{Fat, FatType, FormatOptions, format};
use sha2::{Digest as _, Sha256};

use crate::kv_store::{Disk, Still};
use crate::sim::now;

/// The input is a disk image of 512-byte sectors. An image `Fat` opens
/// must list (every listed key exists as listed), read (a value whole
/// agrees with its digest, size and partial reads) and take a change;
/// on an image `check` finds whole, the change reads back.
pub fn run(data: &[u8]) {
    let disk = Disk::new(data, 512);
    let fat = match now(Fat::open(&disk, Still)) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let whole = now(fat.check()).is_ok_and(|p| p.is_empty());
    let mut pending = vec![(Key::root(), 0)];
    let mut listed = 0;
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = now(fat.list(&dir)) else {
            assert!(!whole, "listing {dir} of a whole volume failed");
            continue;
        };
        for (key, kind) in entries {
            listed += 1;
            if listed > 4096 {
                break;
            }
            assert!(key.as_str().starts_with(dir.as_str()));
            match now(fat.exists(&key)) {
                // Names alike but for case: the first of them is found.
                Ok(Some(k)) => assert!(k == kind || !whole, "{key} listed as {kind:?} but is {k:?}"),
                other => assert!(!whole, "{key} listed but exists says {other:?}"),
            }
            match kind {
                Kind::Dictionary if depth < 16 => pending.push((key, depth + 1)),
                Kind::Dictionary => {}
                Kind::Value => {
                    let Ok(value) = now(fat.get(&key)) else {
                        assert!(!whole, "reading {key} of a whole volume failed");
                        continue;
                    };
                    assert_eq!(now(fat.size(&key)), Ok(value.len() as u64));
                    let digest = now(fat.digest(&key)).expect("a digest of a value read whole");
                    assert_eq!(digest.0, <[u8; 32]>::from(Sha256::digest(&value)));
                    let mut buf = [0u8; 100];
                    let at = value.len().saturating_sub(40);
                    let n = now(fat.get_partial(&key, at as u64, &mut buf)).expect("a partial read");
                    assert_eq!(&buf[..n], &value[at..]);
                }
            }
        }
    }
    let key = Key::parse("/fuzz dir/a value with a long name.bin").expect("a key");
    let value = b"written after opening a fuzzed image".repeat(40);
    let wrote = now(fat.set(&key, &value)).is_ok();
    if wrote && whole {
        assert_eq!(now(fat.get(&key)).expect("the value written"), value);
        assert_eq!(now(fat.check()), Ok(Vec::new()), "a change broke a whole volume");
        now(fat.remove(&key)).expect("removing the value written");
        assert_eq!(now(fat.exists(&key)), Ok(None));
    }
    let _ = now(fat.rename(&Key::parse("/a").expect("a key"), &Key::parse("/b/c").expect("a key")));
    let _ = now(fat.set_partial(&Key::parse("/big").expect("a key"), 3000, b"tail"));
    let _ = now(fat.remove(&Key::root()));
}

/// Seeds: small FAT12 volumes as the store leaves them, and one whose boot
/// sector says FAT32 (a FAT of 32-bit entries, the root in a cluster).
pub fn seed_images() -> Vec<(&'static str, Vec<u8>)> {
    let made = |name: &'static str, fill: &dyn Fn(&Fat<&Disk, Still>)| {
        let disk = Disk::new(&[0; 96 * 1024], 512);
        now(format(&disk, FormatOptions::new(Some(FatType::Fat12), 7))).expect("formatting a seed");
        let fat = now(Fat::open(&disk, Still)).expect("opening a seed");
        fill(&fat);
        (name, disk.image())
    };
    let k = |s: &str| Key::parse(s).expect("a key");
    let mut seeds = vec![
        made("fat12-empty", &|_| {}),
        made("fat12-files", &|f| {
            now(f.set(&k("/a"), b"short")).expect("a value");
            now(f.set(&k("/big"), &[7; 3000])).expect("a value");
            now(f.set(&k("/A directory/with a long name.txt"), &[9; 600])).expect("a value");
            now(f.set(&k("/A directory/README.TXT"), b"")).expect("a value");
            now(f.remove(&k("/a"))).expect("a removal");
        }),
    ];
    // FAT32 as a layout: reserved 32 sectors, 2 FATs of 1 sector, root
    // directory at cluster 2, no fixed root; fewer clusters than FAT32
    // proper, which the store takes as Linux does (a FAT32 layout is FAT32).
    let mut img = vec![0u8; 64 * 1024];
    let boot = [
        (11, &512u16.to_le_bytes()[..]),
        (13, &[1]),
        (14, &32u16.to_le_bytes()),
        (16, &[2]),
        (21, &[0xf8]),
        (32, &128u32.to_le_bytes()),
        (36, &1u32.to_le_bytes()),
        (44, &2u32.to_le_bytes()),
        (510, &[0x55, 0xaa]),
    ];
    for (at, bytes) in boot {
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }
    for fat in [32 * 512, 33 * 512] {
        img[fat..fat + 12].copy_from_slice(&[0xf8, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x0f, 0xff, 0xff, 0xff, 0x0f]);
    }
    let disk = Disk::new(&img, 512);
    {
        let fat = now(Fat::open(&disk, Still)).expect("opening the FAT32 seed");
        now(fat.set(&k("/dir/a file.txt"), &[5; 1000])).expect("a value");
    }
    seeds.push(("fat32-layout", disk.image()));
    seeds
}
