//! The tar store over real files: archives made by GNU tar in its three
//! formats and by `write_archive`, on 512- and 4096-byte sectors, and
//! damaged archives refused with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use mirage_devices::kv::{Key, Kind, KvRo};
use mirage_kv::tar::{Tar, TarError, write_archive};
use mirage_unix::FileBlock;

mod common;
use common::{Dir, block_on};

const LONG: &str = "a-directory-name-long-enough-to-need-more-than-one-hundred-bytes/and-then-another-quite-long-one-too/file-with-a-long-name.txt";

/// A tree of files with a long path and a 300 KiB value.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let files = vec![
        ("index.html".to_string(), b"<h1>home</h1>\n".to_vec()),
        ("css/site.css".to_string(), b"body { color: black }\n".to_vec()),
        ("empty".to_string(), Vec::new()),
        ("big.bin".to_string(), big),
        (LONG.to_string(), b"far away\n".to_vec()),
    ];
    for (p, data) in &files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
    files
}

/// Pads `archive` to whole sectors, as a disk image must be.
fn image(dir: &Path, archive: &[u8], sector: usize) -> PathBuf {
    let mut data = archive.to_vec();
    data.resize(data.len().div_ceil(sector) * sector, 0);
    let p = dir.join(format!("disk-{sector}.img"));
    std::fs::write(&p, data).unwrap();
    p
}

fn check(img: &Path, sector: u32, files: &[(String, Vec<u8>)]) {
    let block = FileBlock::open(img, sector, true).unwrap();
    block_on(async {
        let tar = Tar::new(block).await.unwrap_or_else(|e| panic!("{}: {e}", img.display()));
        assert_eq!(tar.len(), files.len());
        for (p, data) in files {
            let key = Key::parse(p).unwrap();
            assert_eq!(tar.exists(&key).await.unwrap(), Some(Kind::Value), "{p}");
            assert_eq!(&tar.get(&key).await.unwrap(), data, "{p}");
            assert_eq!(tar.size(&key).await.unwrap(), data.len() as u64);
            // Reads at odd offsets cross sector boundaries.
            let mut buf = vec![0u8; 1000];
            let off = data.len().min(777);
            let n = tar
                .get_partial(&key, off as u64, &mut buf)
                .await
                .unwrap_or_else(|e| panic!("{p} at {off} of {}: {e}", img.display()));
            assert_eq!(&buf[..n], &data[off..(off + 1000).min(data.len())], "{p} at {off}");
        }
        assert_eq!(tar.exists(&Key::parse("css").unwrap()).await.unwrap(), Some(Kind::Dictionary));
        assert_eq!(tar.exists(&Key::parse("nope").unwrap()).await.unwrap(), None);
        let root: Vec<String> = tar.list(&Key::root()).await.unwrap().into_iter().map(|(k, _)| k.to_string()).collect();
        assert!(root.contains(&"/css".to_string()) && root.contains(&"/index.html".to_string()), "{root:?}");
        assert_eq!(tar.get(&Key::parse("css").unwrap()).await, Err(mirage_devices::kv::Error::ValueExpected));
        // The digest is the SHA-256 of the value, as sha256sum computes it.
        let d = tar.digest(&Key::parse("index.html").unwrap()).await.unwrap();
        assert_eq!(d.to_string(), "25bd9226c1514c5b63d541ca4f280ab769a4dab6f9e0c510669713d16d686065");
    });
}

fn gnu_tar(root: &Path, out: &Path, format: &str) {
    let st = Command::new("tar")
        .args(["--format", format, "--sort=name", "-C"])
        .arg(root)
        .arg("-cf")
        .arg(out)
        .args([
            "index.html",
            "css",
            "empty",
            "big.bin",
            "a-directory-name-long-enough-to-need-more-than-one-hundred-bytes",
        ])
        .status()
        .expect("GNU tar runs");
    assert!(st.success());
}

#[test]
fn archives_made_by_gnu_tar_in_each_format() {
    let dir = Dir::new("tar-gnu");
    let root = dir.0.join("site");
    let files = tree(&root);
    for format in ["gnu", "pax", "ustar"] {
        let out = dir.0.join(format!("{format}.tar"));
        gnu_tar(&root, &out, format);
        let archive = std::fs::read(&out).unwrap();
        for sector in [512usize, 4096] {
            check(&image(&dir.0, &archive, sector), sector as u32, &files);
        }
    }
}

#[test]
fn archives_written_for_the_tool_and_read_by_gnu_tar() {
    let dir = Dir::new("tar-ours");
    let root = dir.0.join("site");
    let files = tree(&root);
    let archive = write_archive(files.iter().map(|(p, d)| (p.as_str(), d.as_slice(), 1_700_000_000)), 4096);
    assert_eq!(archive.len() % 4096, 0);
    check(&image(&dir.0, &archive, 4096), 4096, &files);
    // GNU tar extracts the same tree from it.
    let tar = dir.0.join("ours.tar");
    std::fs::write(&tar, &archive).unwrap();
    let out = dir.0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new("tar").arg("-C").arg(&out).arg("-xf").arg(&tar).status().unwrap();
    assert!(st.success());
    for (p, data) in &files {
        assert_eq!(&std::fs::read(out.join(p)).unwrap(), data, "{p}");
    }
}

/// Opens `bytes` as a disk of 512-byte sectors: the number of files, or why not.
fn open_count(dir: &Dir, bytes: &[u8]) -> Result<usize, TarError> {
    let img = image(&dir.0, bytes, 512);
    let block = FileBlock::open(&img, 512, true).unwrap();
    block_on(async { Tar::new(block).await.map(|t| t.len()) })
}

#[test]
fn damaged_archives_are_refused_with_the_reason() {
    let dir = Dir::new("tar-bad");
    let open = |bytes: &[u8]| open_count(&dir, bytes);
    let good = write_archive([("a.txt", &b"hello"[..], 1), ("b.txt", &[7u8; 2000][..], 2)], 512);
    assert_eq!(open(&good), Ok(2));

    let mut bad_sum = good.clone();
    bad_sum[0] = b'z';
    assert_eq!(open(&bad_sum), Err(TarError::BadHeader(0)));

    // The second file's data cut off by the end of the disk.
    let cut = &good[..512 * 3];
    assert_eq!(open(cut), Err(TarError::Truncated(1024)));

    let escape = write_archive([("../etc/passwd", &b"x"[..], 1)], 512);
    assert!(matches!(open(&escape), Err(TarError::BadPath(_))));

    // Random bytes are not an archive; an empty disk is an empty store.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert!(matches!(open(&noise), Err(TarError::BadHeader(0))));
    assert_eq!(open(&[0u8; 4096]), Ok(0));
    let msg = TarError::BadHeader(0).to_string();
    assert!(msg.contains("tar archive"), "{msg}");
}

/// A directory header whose size (base-256) is almost 2^64: the next
/// header's offset wrapped round, and the index read panicked on a slice
/// past its window. A path of a megabyte of `a/a/…` cost the walk of its
/// half a million parents. Both are refused by name now.
#[test]
fn sizes_past_the_device_and_paths_past_a_key_are_refused() {
    let dir = Dir::new("tar-huge");
    let open = |bytes: &[u8]| open_count(&dir, bytes);
    let mut huge = write_archive([("d", &b""[..], 1)], 512);
    huge[156] = b'5';
    huge[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0]);
    huge[148..156].copy_from_slice(b"        ");
    let sum: u64 = huge[..512].iter().map(|&b| u64::from(b)).sum();
    huge[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    assert_eq!(open(&huge), Err(TarError::Truncated(0)));
    let deep = "a/".repeat(600) + "f";
    assert_eq!(open(&write_archive([(deep.as_str(), &b"x"[..], 1)], 512)), Err(TarError::BadPath(deep.clone())));
    let fits = "a/".repeat(400) + "f";
    assert_eq!(open(&write_archive([(fits.as_str(), &b"x"[..], 1)], 512)), Ok(1));
}

/// Found by fuzzing (fuzz/regressions/tar): a file whose path names the
/// root made the root a value, so that nothing could be listed; a file
/// under another file made a key both a value and a dictionary, and the
/// file under it unreachable by listing. Both are refused by name.
#[test]
fn paths_that_are_not_one_tree_are_refused() {
    let dir = Dir::new("tar-tree");
    let open = |bytes: &[u8]| open_count(&dir, bytes);
    assert_eq!(open(&write_archive([("/", &b"x"[..], 1)], 512)), Err(TarError::BadPath(String::new())));
    let both = write_archive([("a/b/c", &b"x"[..], 1), ("a/b", b"y", 1)], 512);
    assert_eq!(open(&both), Err(TarError::Conflict("/a/b".into())));
    assert!(TarError::Conflict("/a/b".into()).to_string().contains("both as a file and as a directory"));
    assert_eq!(open(&write_archive([("a/b", &b"x"[..], 1), ("a/c", b"y", 1), ("ab", b"z", 1)], 512)), Ok(3));
}

/// Found by fuzzing (fuzz/regressions/tar_roundtrip): a time that needs
/// more than the field's eleven octal digits was written cut to its low
/// digits; it is now written in GNU's base-256, which both GNU tar and
/// the reader read back.
#[test]
fn times_past_the_octal_range_round_trip() {
    let dir = Dir::new("tar-mtime");
    let late = 10_507_614_452u64; // in 2302; 8^11 seconds is in 2242
    let archive = write_archive([("late", &b"x"[..], late), ("early", b"y", 8u64.pow(11) - 1)], 512);
    let img = image(&dir.0, &archive, 512);
    let block = FileBlock::open(&img, 512, true).unwrap();
    block_on(async {
        let tar = Tar::new(block).await.unwrap();
        let t = tar.last_modified(&Key::parse("late").unwrap()).await.unwrap();
        assert_eq!(t.as_secs(), late);
        let t = tar.last_modified(&Key::parse("early").unwrap()).await.unwrap();
        assert_eq!(t.as_secs(), 8u64.pow(11) - 1);
    });
    let out = Command::new("tar").args(["--utc", "-tvf"]).arg(&img).output().expect("GNU tar runs");
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("2302-"), "{listing}");
}
