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

use crate::tree;

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

    fn with_value<R>(&self, key: &Key, f: impl FnOnce(&Value) -> R) -> Result<R, Error> {
        tree::value(&self.values.borrow(), key).map(f)
    }
}

impl<C: WallClock> KvRo for Mem<C> {
    async fn exists(&self, key: &Key) -> Result<Option<Kind>, Error> {
        Ok(tree::kind(&self.values.borrow(), key))
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
        tree::list(&self.values.borrow(), key)
    }

    async fn last_modified(&self, key: &Key) -> Result<Timestamp, Error> {
        tree::last_modified(&self.values.borrow(), key, |v| v.modified)
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
        tree::check_parents(&self.values.borrow(), key)?;
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
        if tree::remove(&mut self.values.borrow_mut(), key) { Ok(()) } else { Err(Error::NotFound) }
    }

    async fn rename(&self, from: &Key, to: &Key) -> Result<(), Error> {
        tree::rename(&mut self.values.borrow_mut(), from, to)
    }

    async fn allocate(&self, key: &Key, size: u64) -> Result<(), Error> {
        if tree::kind(&self.values.borrow(), key).is_some() {
            return Err(Error::AlreadyPresent);
        }
        tree::check_parents(&self.values.borrow(), key)?;
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
