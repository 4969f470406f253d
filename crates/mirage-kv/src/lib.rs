//! Key-value stores that work on every target.
//!
//! [`Mem`] is a read-write store in memory.
//!
//! [`BlockStore`] is a read-write store on any block device that survives
//! a crash or power loss at any moment (copy-on-write records appended to
//! a log, two superblocks as checkpoints).
//!
//! [`Fat`] is a FAT12, FAT16 or FAT32 volume on any block device, read and
//! written (long names included), to exchange disk images with the host's
//! tools (mtools, `mkfs.fat`, a loop mount); it has no journal.
//!
//! [`Tar`] is a read-only store over a block device holding a tar
//! archive; [`tar::write_archive`] makes such an archive.
//!
//! [`Crunched`] is MirageOS's crunch: a directory compiled into the image
//! at build time, served read-only with no device at all. A build script
//! turns the directory into Rust source (`crunch::generate`, feature
//! `crunch`), which the unikernel includes:
//!
//! ```text
//! // build.rs
//! mirage_kv::crunch::generate("htdocs".as_ref(), &out_dir.join("htdocs.rs"))?;
//! // main.rs
//! include!(concat!(env!("OUT_DIR"), "/htdocs.rs"));   // defines `static HTDOCS: Crunched`
//! ```
#![cfg_attr(not(feature = "crunch"), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;

use mirage_devices::kv::{Digest, Error, Key, Kind, KvRo};
pub use mirage_devices::time::Timestamp;

pub mod block_store;
#[cfg(feature = "crunch")]
pub mod crunch;
pub mod fat;
mod index;
mod mem;
pub mod tar;
mod tree;

use index::{Index, Indexed};

pub use block_store::BlockStore;
pub use fat::Fat;
pub use mem::Mem;
pub use tar::Tar;

/// One file of a crunched directory.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its key, `/a/b`.
    pub path: &'static str,
    /// Its contents.
    pub data: &'static [u8],
    /// Its modification time at build time.
    pub modified: Timestamp,
    /// SHA-256 of its contents, computed at build time.
    pub digest: [u8; 32],
}

/// A read-only store compiled into the image. Entries are sorted by path.
#[derive(Debug, Clone, Copy)]
pub struct Crunched {
    entries: &'static [Entry],
}

impl Crunched {
    /// A store of `entries`, which the generator sorts by path.
    pub const fn new(entries: &'static [Entry]) -> Crunched {
        Crunched { entries }
    }

    /// The files, sorted by key.
    pub fn entries(&self) -> &'static [Entry] {
        self.entries
    }

    fn index(&self) -> Index<'static, Entry> {
        Index(self.entries)
    }
}

impl Indexed for Entry {
    fn path(&self) -> &str {
        self.path
    }

    fn modified(&self) -> Timestamp {
        self.modified
    }
}

impl KvRo for Crunched {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        Ok(self.index().kind(key))
    }

    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error> {
        Ok(self.index().value_or_err(key)?.data.to_vec())
    }

    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let data = self.index().value_or_err(key)?.data;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        self.index().list(key)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        self.index().last_modified(key)
    }

    async fn digest(&self, key: &Key) -> Result<Digest, Error> {
        Ok(Digest(self.index().value_or_err(key)?.digest))
    }

    async fn size(&self, key: &Key) -> Result<u64, Error> {
        Ok(self.index().value_or_err(key)?.data.len() as u64)
    }

    fn value_in_memory(&self, key: &Key) -> Option<&'static [u8]> {
        self.index().value_or_err(key).ok().map(|e| e.data)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::string::ToString;

    static KV: Crunched = Crunched::new(&[
        Entry { path: "/a/b.txt", data: b"bee", modified: Timestamp(5), digest: [1; 32] },
        Entry { path: "/a/c/d", data: b"dee", modified: Timestamp(9), digest: [2; 32] },
        Entry { path: "/ab", data: b"", modified: Timestamp(1), digest: [3; 32] },
        Entry { path: "/index.html", data: b"<h1>hi</h1>", modified: Timestamp(7), digest: [4; 32] },
    ]);

    fn k(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    /// Runs a future that never waits.
    pub(crate) fn now<F: core::future::Future>(f: F) -> F::Output {
        let mut f = core::pin::pin!(f);
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            core::task::Poll::Ready(v) => v,
            core::task::Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(now(KV.exists(&k("/a"))), Ok(Some(Kind::Dictionary)));
        assert_eq!(now(KV.exists(&k("/a/b.txt"))), Ok(Some(Kind::Value)));
        assert_eq!(now(KV.exists(&k("/ab"))), Ok(Some(Kind::Value)));
        assert_eq!(now(KV.exists(&k("/a/b"))), Ok(None));
        assert_eq!(now(KV.exists(&Key::root())), Ok(Some(Kind::Dictionary)));
        assert_eq!(now(KV.get(&k("index.html"))).unwrap(), b"<h1>hi</h1>");
        assert_eq!(now(KV.get(&k("a"))), Err(Error::ValueExpected));
        assert_eq!(now(KV.get(&k("zz"))), Err(Error::NotFound));
        let mut buf = [0u8; 4];
        assert_eq!(now(KV.get_partial(&k("index.html"), 4, &mut buf)), Ok(4));
        assert_eq!(&buf, b"hi</");
        assert_eq!(now(KV.get_partial(&k("index.html"), 400, &mut buf)), Ok(0));
        assert_eq!(now(KV.size(&k("a/c/d"))), Ok(3));
        assert_eq!(now(KV.digest(&k("ab"))).unwrap(), Digest([3; 32]));
        assert_eq!(now(KV.last_modified(&k("a"))), Ok(Timestamp(9)));
    }

    #[test]
    fn listings() {
        let names = |key: &str| -> Vec<(alloc::string::String, Kind)> {
            now(KV.list(&k(key))).unwrap().into_iter().map(|(k, t)| (k.to_string(), t)).collect()
        };
        assert_eq!(
            names("/"),
            [
                ("/a".to_string(), Kind::Dictionary),
                ("/ab".to_string(), Kind::Value),
                ("/index.html".to_string(), Kind::Value)
            ]
        );
        assert_eq!(names("/a"), [("/a/b.txt".to_string(), Kind::Value), ("/a/c".to_string(), Kind::Dictionary)]);
        assert_eq!(now(KV.list(&k("/ab"))), Err(Error::DictionaryExpected));
        assert_eq!(now(KV.list(&k("/zz"))), Err(Error::NotFound));
    }
}
