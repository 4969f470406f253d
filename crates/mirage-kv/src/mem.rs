//! A read-write store in memory (MirageOS's `Mirage_kv_mem`): the kv-rw
//! device of targets without a host file system. Dictionaries exist while
//! something is stored under them, as in the other stores.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use mirage_devices::kv::{Digest, Error, Key, Kind, KvRo, KvRw};
use mirage_devices::time::{Timestamp, WallClock};
use sha2::{Digest as _, Sha256};

struct Value {
    data: Vec<u8>,
    modified: Timestamp,
}

/// A read-write store in memory; `C` stamps modification times.
pub struct Mem<C> {
    clock: C,
    values: RefCell<BTreeMap<String, Value>>,
}

impl<C> core::fmt::Debug for Mem<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mem").field("values", &self.values.borrow().len()).finish()
    }
}

impl<C: WallClock> Mem<C> {
    /// An empty store.
    pub fn new(clock: C) -> Mem<C> {
        Mem { clock, values: RefCell::new(BTreeMap::new()) }
    }

    /// `key/` as a prefix of the paths below it.
    fn prefix(key: &Key) -> String {
        if key.is_root() { String::from("/") } else { alloc::format!("{}/", key.as_str()) }
    }

    fn kind(&self, key: &Key) -> Option<Kind> {
        let values = self.values.borrow();
        if values.contains_key(key.as_str()) {
            return Some(Kind::Value);
        }
        let p = Self::prefix(key);
        if key.is_root() || values.range(p.clone()..).next().is_some_and(|(k, _)| k.starts_with(&p)) {
            return Some(Kind::Dictionary);
        }
        None
    }

    fn with_value<R>(&self, key: &Key, f: impl FnOnce(&Value) -> R) -> Result<R, Error> {
        match self.values.borrow().get(key.as_str()) {
            Some(v) => Ok(f(v)),
            None => Err(if self.kind(key) == Some(Kind::Dictionary) { Error::ValueExpected } else { Error::NotFound }),
        }
    }

    /// Refuses to store a value where a dictionary is, or under a value.
    fn check_parents(&self, key: &Key) -> Result<(), Error> {
        if key.is_root() || self.kind(key) == Some(Kind::Dictionary) {
            return Err(Error::ValueExpected);
        }
        let mut p = key.parent();
        while !p.is_root() {
            if self.values.borrow().contains_key(p.as_str()) {
                return Err(Error::DictionaryExpected);
            }
            p = p.parent();
        }
        Ok(())
    }
}

impl<C: WallClock> KvRo for Mem<C> {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        Ok(self.kind(key))
    }

    async fn get(&self, key: &Key) -> Result<Vec<u8>, Error> {
        self.with_value(key, |v| v.data.clone())
    }

    async fn get_partial(&self, key: &Key, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        self.with_value(key, |v| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(v.data.len());
            let n = buf.len().min(v.data.len() - start);
            buf[..n].copy_from_slice(&v.data[start..start + n]);
            n
        })
    }

    async fn list(&self, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
        match self.kind(key) {
            None => return Err(Error::NotFound),
            Some(Kind::Value) => return Err(Error::DictionaryExpected),
            Some(Kind::Dictionary) => {}
        }
        let p = Self::prefix(key);
        let mut out: Vec<(Key, Kind)> = Vec::new();
        for path in self.values.borrow().range(p.clone()..).map(|(k, _)| k).take_while(|k| k.starts_with(&p)) {
            let rest = &path[p.len()..];
            let (child, kind) = match rest.split_once('/') {
                Some((c, _)) => (c, Kind::Dictionary),
                None => (rest, Kind::Value),
            };
            let k = key.join(child)?;
            if out.last().is_none_or(|(l, _)| l != &k) {
                out.push((k, kind));
            }
        }
        Ok(out)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        if let Ok(t) = self.with_value(key, |v| v.modified) {
            return Ok(t);
        }
        let p = Self::prefix(key);
        let values = self.values.borrow();
        values
            .range(p.clone()..)
            .take_while(|(k, _)| k.starts_with(&p))
            .map(|(_, v)| v.modified)
            .max()
            .ok_or(Error::NotFound)
    }

    async fn digest(&self, key: &Key) -> Result<Digest, Error> {
        self.with_value(key, |v| Digest(Sha256::digest(&v.data).into()))
    }

    async fn size(&self, key: &Key) -> Result<u64, Error> {
        self.with_value(key, |v| v.data.len() as u64)
    }
}

impl<C: WallClock> KvRw for Mem<C> {
    async fn set(&self, key: &Key, value: &[u8]) -> Result<(), Error> {
        self.check_parents(key)?;
        let modified = self.clock.now();
        self.values.borrow_mut().insert(String::from(key.as_str()), Value { data: value.to_vec(), modified });
        Ok(())
    }

    async fn set_partial(&self, key: &Key, offset: u64, data: &[u8]) -> Result<(), Error> {
        let modified = self.clock.now();
        let mut values = self.values.borrow_mut();
        let v = values.get_mut(key.as_str()).ok_or(Error::NotFound)?;
        let start = usize::try_from(offset).map_err(|_| Error::NoSpace)?;
        let end = start.checked_add(data.len()).ok_or(Error::NoSpace)?;
        if v.data.len() < end {
            v.data.resize(end, 0);
        }
        v.data[start..end].copy_from_slice(data);
        v.modified = modified;
        Ok(())
    }

    async fn remove(&self, key: &Key) -> Result<(), Error> {
        let mut values = self.values.borrow_mut();
        if key.is_root() {
            values.clear();
            return Ok(());
        }
        if values.remove(key.as_str()).is_some() {
            return Ok(());
        }
        let p = Self::prefix(key);
        let before = values.len();
        values.retain(|k, _| !k.starts_with(&p));
        if values.len() == before { Err(Error::NotFound) } else { Ok(()) }
    }

    async fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        if from == to {
            return if self.kind(from).is_some() { Ok(()) } else { Err(Error::NotFound) };
        }
        if to.as_str().starts_with(&Self::prefix(from)) {
            return Err(Error::InvalidKey);
        }
        let moved: Vec<(String, Value)> = {
            let mut values = self.values.borrow_mut();
            if let Some(v) = values.remove(from.as_str()) {
                alloc::vec![(String::from(to.as_str()), v)]
            } else {
                let p = Self::prefix(from);
                let keys: Vec<String> =
                    values.range(p.clone()..).map(|(k, _)| k.clone()).take_while(|k| k.starts_with(&p)).collect();
                if keys.is_empty() {
                    return Err(Error::NotFound);
                }
                keys.into_iter()
                    .filter_map(|k| {
                        let v = values.remove(&k)?;
                        Some((alloc::format!("{}{}", to.as_str(), &k[from.as_str().len()..]), v))
                    })
                    .collect()
            }
        };
        let mut values = self.values.borrow_mut();
        // What was at `to` is replaced.
        let p = Self::prefix(to);
        values.retain(|k, _| k != to.as_str() && !k.starts_with(&p));
        values.extend(moved);
        Ok(())
    }

    async fn allocate(&self, key: &Key, size: u64) -> Result<(), Error> {
        if self.kind(key).is_some() {
            return Err(Error::AlreadyPresent);
        }
        self.check_parents(key)?;
        let n = usize::try_from(size).map_err(|_| Error::NoSpace)?;
        let mut data = Vec::new();
        data.try_reserve_exact(n).map_err(|_| Error::NoSpace)?;
        data.resize(n, 0);
        let modified = self.clock.now();
        self.values.borrow_mut().insert(String::from(key.as_str()), Value { data, modified });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::now;

    struct Tick(core::cell::Cell<u64>);
    impl WallClock for &Tick {
        fn now(&self) -> Timestamp {
            self.0.set(self.0.get() + 1);
            Timestamp(self.0.get())
        }
    }

    fn k(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    #[test]
    fn a_store_in_memory() {
        let clock = Tick(core::cell::Cell::new(0));
        let m = Mem::new(&clock);
        now(m.set(&k("a/b"), b"one")).unwrap();
        now(m.set(&k("a/c/d"), b"two")).unwrap();
        assert_eq!(now(m.exists(&k("a"))), Ok(Some(Kind::Dictionary)));
        assert_eq!(now(m.get(&k("a/b"))).unwrap(), b"one");
        assert_eq!(now(m.get(&k("a"))), Err(Error::ValueExpected));
        assert_eq!(now(m.set(&k("a/b/x"), b"")), Err(Error::DictionaryExpected));
        assert_eq!(now(m.set(&k("a"), b"")), Err(Error::ValueExpected));
        now(m.set_partial(&k("a/b"), 5, b"!")).unwrap();
        assert_eq!(now(m.get(&k("a/b"))).unwrap(), b"one\0\0!");
        assert_eq!(now(m.list(&k("a"))).unwrap(), [(k("a/b"), Kind::Value), (k("a/c"), Kind::Dictionary)]);
        assert_eq!(now(m.last_modified(&k("a"))), Ok(Timestamp(3)));
        now(m.rename(&k("a/c"), &k("z"))).unwrap();
        assert_eq!(now(m.get(&k("z/d"))).unwrap(), b"two");
        assert_eq!(now(m.exists(&k("a/c"))), Ok(None));
        assert_eq!(now(m.allocate(&k("z/d"), 4)), Err(Error::AlreadyPresent));
        now(m.allocate(&k("big"), 4)).unwrap();
        assert_eq!(now(m.size(&k("big"))), Ok(4));
        now(m.remove(&k("z"))).unwrap();
        assert_eq!(now(m.exists(&k("z/d"))), Ok(None));
        assert_eq!(now(m.remove(&k("nothing"))), Err(Error::NotFound));
        assert_eq!(now(m.digest(&k("big"))).unwrap().0[0], 0xdf);
    }
}
