//! The disk images of `store = "block"` kv-rw stores: made by `mirage
//! build` and `mirage run` when missing, and read and written from the
//! host by `mirage kv`.

use std::io::{Read, Write};
use std::path::Path;

use mirage::config::KvBlock;
use mirage_devices::kv::{Key, Kind, KvRo, KvRw};
use mirage_kv::BlockStore;
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

type Store = BlockStore<FileBlock, WallClock>;

fn open(path: &Path, read_only: bool) -> Result<Store, Failure> {
    let block = FileBlock::open(path, SECTOR, read_only).map_err(|e| io(path, e))?;
    let store = block_on(BlockStore::open(block, WallClock))
        .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "see `mirage kv --help`"))?;
    if let Some(why) = store.recovery() {
        eprintln!("mirage: {}: {why}", path.display());
    }
    Ok(store)
}

/// Creates the image at `path` of `size` bytes, formats it, and fills it
/// with the files of `directory`, if any. The image must not exist: a
/// data image is never replaced.
pub fn create(path: &Path, size: u64, directory: Option<&Path>) -> Result<(), Failure> {
    if path.exists() {
        return Err(Failure::new(
            format!("{} exists: its data would be lost", path.display()),
            "remove it first if you mean to start an empty store",
        ));
    }
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| io(path, e))?;
    let made = (|| {
        file.set_len(size).map_err(|e| io(path, e))?;
        drop(file);
        let block = FileBlock::open(path, SECTOR, false).map_err(|e| io(path, e))?;
        let store = block_on(BlockStore::format(block, WallClock, None))
            .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "give the store a larger size"))?;
        if let Some(dir) = directory {
            let read =
                |e: std::io::Error| Failure::new(format!("reading {}: {e}", dir.display()), "check the directory");
            for (key, file) in mirage_kv::crunch::files(dir).map_err(read)? {
                let data = std::fs::read(&file).map_err(read)?;
                let k = Key::parse(&key).map_err(|e| Failure::new(format!("{key}: {e}"), "rename the file"))?;
                block_on(store.set(&k, &data)).map_err(|e| {
                    Failure::new(
                        format!("{}: storing {key}: {e}", path.display()),
                        "give the store a larger size (size = \"...\" in mirage.toml)",
                    )
                })?;
            }
        }
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// The image of a kv-rw store at `path`: made (formatted, filled from its
/// directory) when missing, left alone when present. True if it was made.
pub fn ensure(path: &Path, block: &KvBlock, config_dir: &Path) -> Result<bool, Failure> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let dir = block.directory.as_ref().map(|d| config_dir.join(d));
    create(path, block.size, dir.as_deref())?;
    Ok(true)
}

pub const KV_HELP: &str = "\
usage: mirage kv COMMAND IMAGE [ARGS]

Reads and writes the disk image of a kv-rw store (store = \"block\") from
the host. Do not use it on an image a running unikernel has attached.

  mirage kv format IMAGE [--size=4M]   create IMAGE (it must not exist) and
                                       format it, empty
  mirage kv ls IMAGE [KEY]             list the values under KEY (all), with
                                       their sizes
  mirage kv get IMAGE KEY              write the value at KEY to stdout
  mirage kv put IMAGE KEY [FILE]       store FILE (stdin if none) at KEY
  mirage kv rm IMAGE KEY               remove the value or dictionary KEY
  mirage kv check IMAGE                read every value and check its
                                       SHA-256; exit 1 if any is damaged";

pub fn kv(argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("kv", argv, &["size=", "help"])?;
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
            create(image, size, None)?;
            println!("formatted {} ({} KiB)", image.display(), size / 1024);
        }
        "ls" => {
            let store = open(image, true)?;
            let top = if p.len() > 2 { key(2)? } else { Key::root() };
            let mut pending = vec![top];
            while let Some(dir) = pending.pop() {
                if block_on(store.exists(&dir)) == Ok(Some(Kind::Value)) {
                    let size = block_on(store.size(&dir)).map_err(|e| failed(dir.as_str(), e))?;
                    println!("{size:>12}  {dir}");
                    continue;
                }
                let mut children = block_on(store.list(&dir)).map_err(|e| failed(dir.as_str(), e))?;
                children.reverse();
                pending.extend(children.into_iter().map(|(k, _)| k));
            }
        }
        "get" => {
            let store = open(image, true)?;
            let k = key(2)?;
            let v = block_on(store.get(&k)).map_err(|e| failed(k.as_str(), e))?;
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
            block_on(store.set(&k, &data)).map_err(|e| failed(k.as_str(), e))?;
        }
        "rm" => {
            let store = open(image, false)?;
            let k = key(2)?;
            block_on(store.remove(&k)).map_err(|e| failed(k.as_str(), e))?;
        }
        "check" => {
            let store = open(image, true)?;
            let bad = block_on(store.check()).map_err(|e| failed("checking", e))?;
            for (k, e) in &bad {
                println!("damaged: {k}: {e}");
            }
            println!("{}: {}", image.display(), store.usage());
            if !bad.is_empty() {
                return Err(Failure::new(
                    format!("{}: {} damaged values", image.display(), bad.len()),
                    "remove them (mirage kv rm) and store them again",
                ));
            }
        }
        _ => return Err(usage()),
    }
    Ok(())
}
