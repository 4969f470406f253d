//! The disk images of `store = "block"` and `store = "fat"` stores: made
//! by `mirage build` and `mirage run` when missing, and read and written
//! from the host by `mirage kv` (which tells the two formats apart by
//! their first sector).

use std::io::{Read, Seek, Write};
use std::path::Path;

use mirage::config::KvBlock;
use mirage_devices::kv::{Key, Kind, KvRo, KvRw};
use mirage_kv::BlockStore;
use mirage_kv::fat::{self, Fat, FatType, FormatOptions};
use mirage_unix::{FileBlock, WallClock};

use crate::{Args, Failure, help};

/// The sector size the tenders attach a device with by default.
const SECTOR: u32 = 512;

/// Runs a future of the store on this thread.
fn block_on<F: Future>(f: F) -> F::Output {
    mirage_runtime::run(&mut mirage_unix::UnixPlatform::new(), f)
}

fn io(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(format!("{}: {e}", path.display()), "check the path and its permissions")
}

/// An image of either format.
enum Store {
    Block(BlockStore<FileBlock, WallClock>),
    Fat(Fat<FileBlock, WallClock>),
}

/// Runs `$body` with `$s` bound to the store, whichever its format.
macro_rules! with_store {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Block($s) => $body,
            Store::Fat($s) => $body,
        }
    };
}

fn open(path: &Path, read_only: bool) -> Result<Store, Failure> {
    let block = FileBlock::open(path, SECTOR, read_only).map_err(|e| io(path, e))?;
    let mut first = [0u8; 512];
    block_on(mirage_devices::block::Block::read(&block, 0, &mut first))
        .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the image"))?;
    let failed = |e: &dyn std::fmt::Display| Failure::new(format!("{}: {e}", path.display()), "see `mirage kv --help`");
    if fat::is_fat(&first) {
        return Ok(Store::Fat(block_on(Fat::open(block, WallClock)).map_err(|e| failed(&e))?));
    }
    let store = block_on(BlockStore::open(block, WallClock)).map_err(|e| failed(&e))?;
    if let Some(why) = store.recovery() {
        eprintln!("mirage: {}: {why}", path.display());
    }
    Ok(Store::Block(store))
}

/// Stores the files of `dir` in `store`.
async fn fill<S: KvRw>(store: &S, path: &Path, dir: &Path) -> Result<(), Failure> {
    let read = |e: std::io::Error| Failure::new(format!("reading {}: {e}", dir.display()), "check the directory");
    for (key, file) in mirage_kv::crunch::files(dir).map_err(read)? {
        let data = std::fs::read(&file).map_err(read)?;
        let k = Key::parse(&key).map_err(|e| Failure::new(format!("{key}: {e}"), "rename the file"))?;
        store.set(&k, &data).await.map_err(|e| {
            Failure::new(
                format!("{}: storing {key}: {e}", path.display()),
                "give the store a larger size (size = \"...\" in mirage.toml)",
            )
        })?;
    }
    Ok(())
}

/// Gives every block of `file` (`size` bytes, all of it still zero) its
/// place on the disk: zeros written and synced. A sparse image costs a
/// durable store dearly: each sync that reaches a block the file has not
/// allocated yet also allocates it and writes the inode, which more than
/// halves the durable small-change rate on ext4 (BENCHMARKS.md); an
/// unwritten extent (`fallocate`) costs the same at its first write.
fn allocate(file: &mut std::fs::File, size: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = 0;
    file.rewind()?;
    while at < size {
        let n = (size - at).min(CHUNK);
        file.write_all(&zeros[..n as usize])?;
        at += n;
    }
    file.sync_all()
}

/// Creates the image at `path` of `size` bytes, allocated on the disk
/// unless `sparse`, formats it (a FAT volume of type `fat`, or a
/// `BlockStore`), and fills it with the files of `directory`, if any. The
/// image must not exist: a data image is never replaced.
pub fn create(
    path: &Path,
    size: u64,
    directory: Option<&Path>,
    fat: Option<Option<FatType>>,
    sparse: bool,
) -> Result<(), Failure> {
    if path.exists() {
        return Err(Failure::new(
            format!("{} exists: its data would be lost", path.display()),
            "remove it first if you mean to start an empty store",
        ));
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| io(path, e))?;
    let made = (|| {
        file.set_len(size).map_err(|e| io(path, e))?;
        if !sparse {
            allocate(&mut file, size).map_err(|e| {
                Failure::new(format!("{}: allocating {size} bytes: {e}", path.display()), "check the free space")
            })?;
        }
        drop(file);
        let block = FileBlock::open(path, SECTOR, false).map_err(|e| io(path, e))?;
        let larger = |e: &dyn std::fmt::Display| {
            Failure::new(format!("{}: {e}", path.display()), "give the store a larger size")
        };
        match fat {
            Some(kind) => {
                let id = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as u32 ^ d.subsec_nanos());
                block_on(fat::format(&block, FormatOptions::new(kind, id))).map_err(|e| larger(&e))?;
                let store = block_on(Fat::open(block, WallClock)).map_err(|e| larger(&e))?;
                if let Some(dir) = directory {
                    block_on(fill(&store, path, dir))?;
                }
            }
            None => {
                let store = block_on(BlockStore::format(block, WallClock, None)).map_err(|e| larger(&e))?;
                if let Some(dir) = directory {
                    block_on(fill(&store, path, dir))?;
                }
            }
        }
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// The size of a FAT image for the files of `dir`: twice what they take
/// in 4 KiB clusters, and 1 MiB more, at least 2 MiB.
pub fn fat_size_for(dir: &Path) -> Result<u64, Failure> {
    let read = |e: std::io::Error| Failure::new(format!("reading {}: {e}", dir.display()), "check the directory");
    let mut bytes = 0u64;
    for (_, file) in mirage_kv::crunch::files(dir).map_err(read)? {
        bytes += std::fs::metadata(&file).map_err(read)?.len().div_ceil(4096) * 4096 + 4096;
    }
    Ok((2 * bytes + (1 << 20)).max(2 << 20).div_ceil(512) * 512)
}

/// The FAT image of a kv-ro store at `path`: made from `directory` when
/// missing, left alone when present (the user may have prepared it with
/// mtools). True if it was made.
pub fn ensure_fat_ro(path: &Path, directory: &Path) -> Result<bool, Failure> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    // Read-only: no sync will ever reach it, so it may stay sparse.
    create(path, fat_size_for(directory)?, Some(directory), Some(None), true)?;
    Ok(true)
}

/// The image of a kv-rw store at `path`: made (formatted, a FAT volume if
/// `fat`, filled from its directory) when missing, left alone when
/// present. True if it was made.
pub fn ensure(path: &Path, block: &KvBlock, fat: bool, config_dir: &Path) -> Result<bool, Failure> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let dir = block.directory.as_ref().map(|d| config_dir.join(d));
    create(path, block.size, dir.as_deref(), fat.then_some(None), false)?;
    Ok(true)
}

pub const KV_HELP: &str = "\
usage: mirage kv COMMAND IMAGE [ARGS]

Reads and writes the disk image of a kv-rw store (store = \"block\") or of a
FAT volume (store = \"fat\"; any FAT12, FAT16 or FAT32 image, such as one
made by mkfs.fat or mformat) from the host; the format is told by the
image's first sector. Do not use it on an image a running unikernel has
attached.

  mirage kv format IMAGE [--size=4M] [--fat] [--fat-bits=12|16|32]
                   [--sparse]          create IMAGE (it must not exist) and
                                       format it, empty: a crash-safe store,
                                       or with --fat a FAT volume (its type
                                       by size unless --fat-bits). Its
                                       blocks are allocated on the disk
                                       (zeros written and synced), which
                                       durable writes need to be fast;
                                       --sparse leaves it a sparse file
  mirage kv ls IMAGE [KEY]             list the values under KEY (all), with
                                       their sizes
  mirage kv get IMAGE KEY              write the value at KEY to stdout
  mirage kv put IMAGE KEY [FILE]       store FILE (stdin if none) at KEY
  mirage kv rm IMAGE KEY               remove the value or dictionary KEY
  mirage kv check IMAGE                read every value and check it (its
                                       SHA-256; on FAT, every chain and
                                       directory); exit 1 if any is damaged";

pub fn kv(argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("kv", argv, &["size=", "fat", "fat-bits=", "sparse", "help"])?;
    if help(&args, KV_HELP) {
        return Ok(());
    }
    let p = &args.positional;
    let usage = || Failure::usage("kv: wrong arguments", "see `mirage kv --help`");
    let (command, image) = match (p.first(), p.get(1)) {
        (Some(c), Some(i)) => (c.as_str(), Path::new(i)),
        _ => return Err(usage()),
    };
    let key = |i: usize| -> Result<Key, Failure> {
        let k = p.get(i).ok_or_else(usage)?;
        Key::parse(k).map_err(|e| Failure::usage(format!("kv: {k:?}: {e}"), "write a key such as /a/b"))
    };
    let failed = |what: &str, e: mirage_devices::kv::Error| {
        Failure::new(format!("{}: {what}: {e}", image.display()), "see `mirage kv ls` for what the store holds")
    };
    match command {
        "format" => {
            let size = match args.value("size") {
                None => 4 << 20,
                Some(s) => mirage::config::size(s)
                    .filter(|n| *n > 0 && n % 512 == 0)
                    .ok_or_else(|| Failure::usage(format!("kv: size {s:?}"), "write a size such as 4M"))?,
            };
            let fat = if args.flag("fat") || args.flag("fat-bits") {
                Some(match args.value("fat-bits") {
                    None => None,
                    Some("12") => Some(FatType::Fat12),
                    Some("16") => Some(FatType::Fat16),
                    Some("32") => Some(FatType::Fat32),
                    Some(other) => {
                        return Err(Failure::usage(
                            format!("kv: --fat-bits={other}"),
                            "write --fat (the type by size), or --fat-bits=12, 16 or 32",
                        ));
                    }
                })
            } else {
                None
            };
            create(image, size, None, fat, args.flag("sparse"))?;
            let what = if fat.is_some() { "a FAT volume" } else { "a crash-safe store" };
            println!("formatted {} ({what}, {} KiB)", image.display(), size / 1024);
        }
        "ls" => {
            let store = open(image, true)?;
            let top = if p.len() > 2 { key(2)? } else { Key::root() };
            with_store!(&store, s => block_on(ls(s, top)).map_err(|(k, e)| failed(k.as_str(), e))?);
        }
        "get" => {
            let store = open(image, true)?;
            let k = key(2)?;
            let v = with_store!(&store, s => block_on(s.get(&k))).map_err(|e| failed(k.as_str(), e))?;
            std::io::stdout().write_all(&v).map_err(|e| Failure::new(format!("stdout: {e}"), ""))?;
        }
        "put" => {
            let store = open(image, false)?;
            let k = key(2)?;
            let data = match p.get(3) {
                Some(f) => std::fs::read(f).map_err(|e| io(Path::new(f), e))?,
                None => {
                    let mut d = Vec::new();
                    std::io::stdin().read_to_end(&mut d).map_err(|e| Failure::new(format!("stdin: {e}"), ""))?;
                    d
                }
            };
            with_store!(&store, s => block_on(s.set(&k, &data))).map_err(|e| failed(k.as_str(), e))?;
        }
        "rm" => {
            let store = open(image, false)?;
            let k = key(2)?;
            with_store!(&store, s => block_on(s.remove(&k))).map_err(|e| failed(k.as_str(), e))?;
        }
        "check" => {
            let store = open(image, true)?;
            let (bad, usage): (Vec<String>, String) = match &store {
                Store::Block(s) => {
                    let bad = block_on(s.check()).map_err(|e| failed("checking", e))?;
                    (bad.iter().map(|(k, e)| format!("{k}: {e}")).collect(), s.usage().to_string())
                }
                Store::Fat(s) => {
                    let bad = block_on(s.check()).map_err(|e| failed("checking", e))?;
                    (bad, block_on(s.usage()).map_err(|e| failed("counting free clusters", e))?.to_string())
                }
            };
            for b in &bad {
                println!("damaged: {b}");
            }
            println!("{}: {usage}", image.display());
            if !bad.is_empty() {
                return Err(Failure::new(
                    format!("{}: {} problems", image.display(), bad.len()),
                    "remove the damaged values (mirage kv rm) and store them again; on FAT, fsck.fat repairs",
                ));
            }
        }
        _ => return Err(usage()),
    }
    Ok(())
}

/// Prints the values under `top`, with their sizes.
async fn ls<S: KvRo>(store: &S, top: Key) -> Result<(), (Key, mirage_devices::kv::Error)> {
    let mut pending = vec![top];
    while let Some(dir) = pending.pop() {
        if store.exists(&dir).await == Ok(Some(Kind::Value)) {
            let size = store.size(&dir).await.map_err(|e| (dir.clone(), e))?;
            println!("{size:>12}  {dir}");
            continue;
        }
        let mut children = store.list(&dir).await.map_err(|e| (dir.clone(), e))?;
        children.reverse();
        pending.extend(children.into_iter().map(|(k, _)| k));
    }
    Ok(())
}
