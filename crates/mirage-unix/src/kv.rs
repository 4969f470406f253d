//! Key-value stores on a host directory: a key is a path below the root,
//! a value a file, a dictionary a directory.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use mirage_devices::kv::{Digest, Error, Key, Kind, KvRo, KvRw};
use mirage_devices::time::Timestamp;
use sha2::Digest as _;

/// A directory as a key-value store, read-only and read-write. Nothing
/// outside the directory is reachable: keys have no `..`, and symbolic
/// links that lead out are refused.
#[derive(Debug, Clone)]
pub struct DirKv {
    root: PathBuf,
}

fn io_err(e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::NotFound,
        ErrorKind::AlreadyExists => Error::AlreadyPresent,
        ErrorKind::IsADirectory => Error::ValueExpected,
        ErrorKind::NotADirectory => Error::DictionaryExpected,
        ErrorKind::StorageFull => Error::NoSpace,
        _ => Error::Io,
    }
}

impl DirKv {
    /// The store rooted at `root`, which must be a directory.
    pub fn open(root: &Path) -> std::io::Result<DirKv> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(DirKv { root })
    }

    fn path(&self, key: &Key) -> PathBuf {
        let mut p = self.root.clone();
        for s in key.segments() {
            p.push(s);
        }
        p
    }

    /// The path of an existing key, checked to stay inside the root.
    fn existing(&self, key: &Key) -> Result<PathBuf, Error> {
        let p = self.path(key);
        let real = p.canonicalize().map_err(io_err)?;
        if !real.starts_with(&self.root) {
            return Err(Error::NotFound);
        }
        Ok(real)
    }

    fn value(&self, key: &Key) -> Result<(PathBuf, fs::Metadata), Error> {
        let p = self.existing(key)?;
        let m = fs::metadata(&p).map_err(io_err)?;
        if m.is_dir() {
            return Err(Error::ValueExpected);
        }
        Ok((p, m))
    }

    /// Creates the parent dictionaries of `key`; its path.
    fn prepare(&self, key: &Key) -> Result<PathBuf, Error> {
        if key.is_root() {
            return Err(Error::ValueExpected);
        }
        // One dictionary at a time, each checked to stay inside the root
        // before the next is made in it: a link out of the root is never
        // made a directory in.
        let mut real = self.root.clone();
        for segment in key.parent().segments() {
            let dir = real.join(segment);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io_err(e)),
                _ => {}
            }
            real = dir.canonicalize().map_err(io_err)?;
            if !real.starts_with(&self.root) {
                return Err(Error::InvalidKey);
            }
        }
        Ok(real.join(key.basename()))
    }
}

impl KvRo for DirKv {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        match self.existing(key) {
            Ok(p) => match fs::metadata(p) {
                Ok(m) if m.is_dir() => Ok(Some(Kind::Dictionary)),
                Ok(_) => Ok(Some(Kind::Value)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(e)),
            },
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error> {
        let (p, _) = self.value(key)?;
        fs::read(p).map_err(io_err)
    }

    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let (p, _) = self.value(key)?;
        let f = fs::File::open(p).map_err(io_err)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(done)
    }

    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        let p = self.existing(key)?;
        let rd = fs::read_dir(&p).map_err(io_err)?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err)?;
            let Some(name) = entry.file_name().to_str().map(String::from) else { continue };
            let Ok(k) = key.join(&name) else { continue };
            let kind = if entry.file_type().map_err(io_err)?.is_dir() { Kind::Dictionary } else { Kind::Value };
            out.push((k, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        let p = self.existing(key)?;
        let m = fs::metadata(p).map_err(io_err)?;
        let t = m.modified().map_err(io_err)?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Ok(Timestamp(t))
    }

    async fn digest(&self, key: &Key) -> Result<Digest, Error> {
        let data = self.get(key).await?;
        Ok(Digest(sha2::Sha256::digest(&data).into()))
    }

    async fn size(&self, key: &Key) -> Result<u64, Error> {
        Ok(self.value(key)?.1.len())
    }
}

impl KvRw for DirKv {
    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), Error> {
        let p = self.prepare(key)?;
        if p.is_dir() {
            return Err(Error::ValueExpected);
        }
        // Write a temporary file and rename it: readers never see half a
        // value. The file is new (a symbolic link planted at its name is
        // not followed out of the directory) and on the disk before the
        // rename, and the rename is on the disk before `set` returns: a
        // crash leaves the old value or the new, never an empty file.
        let tmp = p.with_file_name(format!(".{}.tmp", key.basename()));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err)?;
        f.write_all(value).and_then(|()| f.sync_data()).map_err(io_err)?;
        drop(f);
        fs::rename(&tmp, &p).map_err(io_err)?;
        match p.parent() {
            Some(dir) => fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err),
            None => Ok(()),
        }
    }

    async fn set_partial(&self, key: &Key, offset: u64, data: &[u8]) -> Result<(), Error> {
        let (p, _) = self.value(key)?;
        let f = fs::OpenOptions::new().write(true).open(p).map_err(io_err)?;
        f.write_all_at(data, offset).map_err(io_err)
    }

    async fn remove(&self, key: &Key) -> Result<(), Error> {
        if key.is_root() {
            return Err(Error::InvalidKey);
        }
        let p = self.existing(key)?;
        if p.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) }.map_err(io_err)
    }

    async fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        let src = self.existing(from)?;
        let dst = self.prepare(to)?;
        if dst.is_dir() && !src.is_dir() {
            return Err(Error::ValueExpected);
        }
        if dst.is_dir() {
            fs::remove_dir_all(&dst).map_err(io_err)?;
        }
        fs::rename(src, dst).map_err(io_err)
    }

    async fn allocate(&self, key: &Key, size: u64) -> Result<(), Error> {
        let p = self.prepare(key)?;
        let f = fs::OpenOptions::new().write(true).create_new(true).open(p).map_err(io_err)?;
        f.set_len(size).map_err(io_err)
    }
}
