//! The dictionary view of a read-write store whose values sit in a map
//! from path to value ([`Mem`](crate::Mem),
//! [`BlockStore`](crate::BlockStore)): dictionaries exist while a value is
//! stored under them.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use mirage_devices::kv::{Error, Key, Kind};
use mirage_devices::time::Timestamp;

/// `key/` as a prefix of the paths below it.
pub(crate) fn prefix(key: &Key) -> String {
    if key.is_root() { String::from("/") } else { alloc::format!("{}/", key.as_str()) }
}

/// The values under dictionary `key`, in path order.
fn under<'a, V>(map: &'a BTreeMap<String, V>, key: &Key) -> impl Iterator<Item = (&'a String, &'a V)> {
    let p = prefix(key);
    map.range(p.clone()..).take_while(move |(k, _)| k.starts_with(&p))
}

/// What `key` names.
pub(crate) fn kind<V>(map: &BTreeMap<String, V>, key: &Key) -> Option<Kind> {
    if map.contains_key(key.as_str()) {
        Some(Kind::Value)
    } else if key.is_root() || under(map, key).next().is_some() {
        Some(Kind::Dictionary)
    } else {
        None
    }
}

/// The value at `key`, or why there is none.
pub(crate) fn value<'a, V>(map: &'a BTreeMap<String, V>, key: &Key) -> Result<&'a V, Error> {
    match map.get(key.as_str()) {
        Some(v) => Ok(v),
        None if kind(map, key) == Some(Kind::Dictionary) => Err(Error::ValueExpected),
        None => Err(Error::NotFound),
    }
}

/// The children of dictionary `key`.
pub(crate) fn list<V>(map: &BTreeMap<String, V>, key: &Key) -> Result<Vec<(Key, Kind)>, Error> {
    match kind(map, key) {
        None => return Err(Error::NotFound),
        Some(Kind::Value) => return Err(Error::DictionaryExpected),
        Some(Kind::Dictionary) => {}
    }
    let skip = prefix(key).len();
    let mut out: Vec<(Key, Kind)> = Vec::new();
    for (path, _) in under(map, key) {
        let rest = &path[skip..];
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

/// A value's time, or a dictionary's latest.
pub(crate) fn last_modified<V>(
    map: &BTreeMap<String, V>,
    key: &Key,
    modified: impl Fn(&V) -> Timestamp,
) -> Result<Timestamp, Error> {
    if let Some(v) = map.get(key.as_str()) {
        return Ok(modified(v));
    }
    under(map, key).map(|(_, v)| modified(v)).max().ok_or(Error::NotFound)
}

/// Refuses to store a value where a dictionary is, or under a value.
pub(crate) fn check_parents<V>(map: &BTreeMap<String, V>, key: &Key) -> Result<(), Error> {
    if key.is_root() || kind(map, key) == Some(Kind::Dictionary) {
        return Err(Error::ValueExpected);
    }
    let mut p = key.parent();
    while !p.is_root() {
        if map.contains_key(p.as_str()) {
            return Err(Error::DictionaryExpected);
        }
        p = p.parent();
    }
    Ok(())
}

/// Removes the value or dictionary at `key`; false if there was none.
pub(crate) fn remove<V>(map: &mut BTreeMap<String, V>, key: &Key) -> bool {
    if key.is_root() {
        map.clear();
        return true;
    }
    if map.remove(key.as_str()).is_some() {
        return true;
    }
    let p = prefix(key);
    let before = map.len();
    map.retain(|k, _| !k.starts_with(&p));
    map.len() != before
}

/// Moves the value or dictionary at `from` to `to`, replacing what is
/// there.
pub(crate) fn rename<V>(map: &mut BTreeMap<String, V>, from: &Key, to: &Key) -> Result<(), Error> {
    if from == to {
        return if kind(map, from).is_some() { Ok(()) } else { Err(Error::NotFound) };
    }
    if from.is_root() || to.is_root() || to.as_str().starts_with(&prefix(from)) {
        return Err(Error::InvalidKey);
    }
    let mut up = to.parent();
    while !up.is_root() {
        if map.contains_key(up.as_str()) {
            return Err(Error::DictionaryExpected);
        }
        up = up.parent();
    }
    let moved: Vec<(String, V)> = if let Some(v) = map.remove(from.as_str()) {
        alloc::vec![(String::from(to.as_str()), v)]
    } else {
        let keys: Vec<String> = under(map, from).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return Err(Error::NotFound);
        }
        keys.into_iter()
            .filter_map(|k| {
                let v = map.remove(&k)?;
                Some((alloc::format!("{}{}", to.as_str(), &k[from.as_str().len()..]), v))
            })
            .collect()
    };
    // What was at `to` is replaced.
    let p = prefix(to);
    map.retain(|k, _| k != to.as_str() && !k.starts_with(&p));
    map.extend(moved);
    Ok(())
}
