//! Key-value stores (`Mirage_kv`): values addressed by paths, read-only
//! ([`KvRo`]) or read-write ([`KvRw`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::time::Timestamp;

/// A key: a path of segments, `/` for the root, `/a/b` below it.
///
/// Segments are non-empty, contain no `/`, and are neither `.` nor `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The root (`/`).
    pub fn root() -> Key {
        Key(String::from("/"))
    }

    /// Parses a path: `a/b`, `/a/b` and `/a/b/` are the same key; empty
    /// segments collapse. `.` and `..` segments are refused.
    pub fn parse(path: &str) -> Result<Key, Error> {
        let mut k = String::with_capacity(path.len() + 1);
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if seg == "." || seg == ".." || seg.contains('\0') {
                return Err(Error::InvalidKey);
            }
            k.push('/');
            k.push_str(seg);
        }
        if k.is_empty() {
            k.push('/');
        }
        Ok(Key(k))
    }

    /// The path, `/`-separated, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The segments, root first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The last segment (empty for the root).
    pub fn basename(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The key one level up (the root's parent is the root).
    pub fn parent(&self) -> Key {
        match self.0.rfind('/') {
            Some(0) | None => Key::root(),
            Some(i) => Key(String::from(&self.0[..i])),
        }
    }

    /// `self/segment`.
    pub fn join(&self, segment: &str) -> Result<Key, Error> {
        let mut p = self.0.clone();
        p.push('/');
        p.push_str(segment);
        Key::parse(&p)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0)
    }
}

/// What a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value.
    Value,
    /// A dictionary of further keys.
    Dictionary,
}

/// A digest of a value: SHA-256 in this project's stores.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No such key.
    NotFound,
    /// The key names a dictionary where a value was expected.
    ValueExpected,
    /// The key names a value where a dictionary was expected.
    DictionaryExpected,
    /// The key is malformed.
    InvalidKey,
    /// The key exists already.
    AlreadyPresent,
    /// No space left.
    NoSpace,
    /// The host failed.
    Io,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::NotFound => "no such key",
            Error::ValueExpected => "the key is a dictionary, not a value",
            Error::DictionaryExpected => "the key is a value, not a dictionary",
            Error::InvalidKey => "invalid key",
            Error::AlreadyPresent => "the key exists",
            Error::NoSpace => "no space left",
            Error::Io => "key-value I/O failed",
        })
    }
}

/// A read-only store.
pub trait KvRo {
    /// What `key` names, if anything.
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error>;

    /// The whole value at `key`.
    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error>;

    /// Reads the value at `key` from byte `offset` into `buf`; the number of
    /// bytes read (0 at or past the end).
    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;

    /// The entries of the dictionary `key`, sorted by key.
    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error>;

    /// When the value or dictionary at `key` last changed.
    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error>;

    /// A digest of the value at `key`.
    async fn digest(&self, key: &Key) -> Result<Digest, Error>;

    /// The size in bytes of the value at `key`.
    async fn size(&self, key: &Key) -> Result<u64, Error>;

    /// The value at `key` where it lies, when the store holds it in memory
    /// for the life of the program (a store compiled into the image): a
    /// server then sends it from there instead of copying it out first.
    /// `None` for any other store, or key.
    fn value_in_memory(&self, key: &Key) -> Option<&'static [u8]> {
        let _ = key;
        None
    }
}

/// A read-write store.
pub trait KvRw: KvRo {
    /// Sets the value at `key`, creating parent dictionaries.
    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), Error>;

    /// Writes `data` at byte `offset` of the value at `key`, growing it
    /// (with zeros) if needed; the value must exist.
    async fn set_partial(&self, key: &Key, offset: u64, data: &[u8]) -> Result<(), Error>;

    /// Removes the value or dictionary (and everything below) at `key`.
    async fn remove(&self, key: &Key) -> Result<(), Error>;

    /// Moves the value or dictionary at `from` to `to`, replacing what is
    /// there.
    async fn rename(&self, from: &Key, to: &Key) -> Result<(), Error>;

    /// Creates a zero-filled value of `size` bytes at `key`;
    /// [`Error::AlreadyPresent`] if the key exists.
    async fn allocate(&self, key: &Key, size: u64) -> Result<(), Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalise() {
        assert_eq!(Key::parse("a/b").unwrap(), Key::parse("/a//b/").unwrap());
        assert_eq!(Key::parse("").unwrap(), Key::root());
        assert!(Key::root().is_root());
        assert_eq!(Key::parse("/a/b").unwrap().as_str(), "/a/b");
        assert_eq!(Key::parse("/a/b").unwrap().basename(), "b");
        assert_eq!(Key::parse("/a/b").unwrap().parent().as_str(), "/a");
        assert_eq!(Key::parse("/a").unwrap().parent(), Key::root());
        assert_eq!(Key::root().join("x").unwrap().as_str(), "/x");
        assert_eq!(Key::parse("/a/../b"), Err(Error::InvalidKey));
        assert_eq!(Key::parse("./a"), Err(Error::InvalidKey));
        let k = Key::parse("/x/y/z").unwrap();
        let segs: Vec<&str> = k.segments().collect();
        assert_eq!(segs, ["x", "y", "z"]);
    }
}
