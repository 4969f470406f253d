//! The dictionary view of a store whose values are a list sorted by key:
//! dictionaries are the path prefixes of values.

use alloc::vec::Vec;

use mirage_devices::kv::{Error, Key, Kind};
use mirage_devices::time::Timestamp;

/// A value of a sorted index.
pub(crate) trait Indexed {
    /// Its key, `/a/b`.
    fn path(&self) -> &str;
    /// When it was last modified.
    fn modified(&self) -> Timestamp;
}

/// Entries sorted by path, one per path.
pub(crate) struct Index<'a, T>(pub &'a [T]);

impl<'a, T: Indexed> Index<'a, T> {
    pub(crate) fn value(&self, key: &Key) -> Option<&'a T> {
        self.0.binary_search_by(|e| e.path().cmp(key.as_str())).ok().map(|i| &self.0[i])
    }

    /// The entries under dictionary `key` (all of them for the root).
    pub(crate) fn under<'k>(&self, key: &'k Key) -> impl Iterator<Item = &'a T> + 'k
    where
        'a: 'k,
    {
        let prefix = key.as_str();
        let root = key.is_root();
        self.0.iter().filter(move |e| {
            let p = e.path();
            root || (p.len() > prefix.len() && p.starts_with(prefix) && p.as_bytes()[prefix.len()] == b'/')
        })
    }

    pub(crate) fn kind(&self, key: &Key) -> Option<Kind> {
        if self.value(key).is_some() {
            Some(Kind::Value)
        } else if key.is_root() || self.under(key).next().is_some() {
            Some(Kind::Dictionary)
        } else {
            None
        }
    }

    pub(crate) fn value_or_err(&self, key: &Key) -> Result<&'a T, Error> {
        match self.value(key) {
            Some(e) => Ok(e),
            None if self.kind(key) == Some(Kind::Dictionary) => Err(Error::ValueExpected),
            None => Err(Error::NotFound),
        }
    }

    /// The children of dictionary `key`. The entries under a dictionary
    /// are contiguous in path order, so a child repeats only in a run.
    pub(crate) fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        match self.kind(key) {
            None => return Err(Error::NotFound),
            Some(Kind::Value) => return Err(Error::DictionaryExpected),
            Some(Kind::Dictionary) => {}
        }
        let skip = if key.is_root() { 1 } else { key.as_str().len() + 1 };
        let mut out: Vec<(Key, Kind)> = Vec::new();
        for e in self.under(key) {
            let rest = &e.path()[skip..];
            let (child, kind) = match rest.split_once('/') {
                Some((c, _)) => (c, Kind::Dictionary),
                None => (rest, Kind::Value),
            };
            let k = key.join(child)?;
            if out.last().map(|(l, _)| l != &k).unwrap_or(true) {
                out.push((k, kind));
            }
        }
        Ok(out)
    }

    /// A value's time, or a dictionary's latest.
    pub(crate) fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        if let Some(e) = self.value(key) {
            return Ok(e.modified());
        }
        self.under(key).map(|e| e.modified()).max().ok_or(Error::NotFound)
    }
}
