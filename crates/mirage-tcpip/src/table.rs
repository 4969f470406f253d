//! A hash table for state that remote hosts make the stack keep: the
//! records of connections, half-open handshakes, neighbours.
//!
//! Two things set it apart from a `BTreeMap`. Its keys are chosen by
//! peers, so it hashes them with SipHash under a secret key: nobody can
//! aim many keys at one bucket. And it never aborts for memory: it grows
//! with fallible allocation (`try_reserve`) up to a maximum number of
//! entries, and an insertion that would pass either limit is refused, for
//! the caller to answer (drop a SYN, send a reset).
//!
//! Open addressing with linear probing, at most half full; removal shifts
//! the following entries back instead of leaving tombstones, so a table
//! that has seen a flood is as fast afterwards as before.

use alloc::vec::Vec;
use core::hash::{Hash, Hasher};

/// SipHash (Aumasson and Bernstein): SipHash-2-4, the keyed hash of SYN
/// cookies and keys, and SipHash-1-3 for the tables (as Rust's standard
/// `HashMap`), which hash a connection's addresses for every segment.
#[derive(Debug, Clone)]
pub(crate) struct SipHasher {
    v: [u64; 4],
    /// Bytes not yet a whole word, and how many.
    tail: u64,
    ntail: usize,
    length: usize,
    /// Compression and finalisation rounds.
    c: u8,
    d: u8,
}

impl SipHasher {
    /// SipHash-2-4.
    pub(crate) fn new(key: (u64, u64)) -> SipHasher {
        SipHasher::with_rounds(key, 2, 4)
    }

    /// SipHash-1-3.
    pub(crate) fn fast(key: (u64, u64)) -> SipHasher {
        SipHasher::with_rounds(key, 1, 3)
    }

    fn with_rounds(key: (u64, u64), c: u8, d: u8) -> SipHasher {
        let (k0, k1) = key;
        SipHasher {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
            c,
            d,
        }
    }

    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn word(&mut self, m: u64) {
        self.v[3] ^= m;
        for _ in 0..self.c {
            SipHasher::round(&mut self.v);
        }
        self.v[0] ^= m;
    }
}

impl Hasher for SipHasher {
    fn write(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len();
        // Fill the pending word, then whole words, then keep the rest.
        while self.ntail > 0 && !bytes.is_empty() {
            self.tail |= (bytes[0] as u64) << (8 * self.ntail);
            self.ntail += 1;
            bytes = &bytes[1..];
            if self.ntail == 8 {
                let m = self.tail;
                self.word(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= (b as u64) << (8 * i);
        }
        self.ntail = words.remainder().len();
    }

    fn write_u64(&mut self, n: u64) {
        if self.ntail == 0 {
            self.length += 8;
            self.word(n);
        } else {
            self.write(&n.to_le_bytes());
        }
    }

    fn finish(&self) -> u64 {
        let mut v = self.v;
        let m = self.tail | ((self.length as u64 & 0xff) << 56);
        v[3] ^= m;
        for _ in 0..self.c {
            SipHasher::round(&mut v);
        }
        v[0] ^= m;
        v[2] ^= 0xff;
        for _ in 0..self.d {
            SipHasher::round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }
}

/// Why an insertion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The table holds its maximum number of entries.
    Limit,
    /// Growing the table would need memory the heap does not have.
    Memory,
}

pub(crate) struct Table<K, V> {
    slots: Vec<Option<(K, V)>>,
    len: usize,
    max: usize,
    key: (u64, u64),
}

impl<K, V> core::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Table").field("len", &self.len).field("capacity", &self.slots.len()).finish()
    }
}

impl<K: Hash + Eq, V> Table<K, V> {
    /// An empty table (nothing allocated yet) of at most `max` entries,
    /// hashing under `key`.
    pub(crate) fn new(key: (u64, u64), max: usize) -> Table<K, V> {
        Table { slots: Vec::new(), len: 0, max, key }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.max
    }

    fn home(&self, k: &K) -> usize {
        let mut h = SipHasher::fast(self.key);
        k.hash(&mut h);
        h.finish() as usize & (self.slots.len() - 1)
    }

    fn find(&self, k: &K) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(k);
        loop {
            match &self.slots[i] {
                None => return None,
                Some((key, _)) if key == k => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.find(k).and_then(|i| self.slots[i].as_ref()).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.find(k).and_then(|i| self.slots[i].as_mut()).map(|(_, v)| v)
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.find(k).is_some()
    }

    /// Puts `v` under `k` (replacing what was there) unless the table is at
    /// its limit or cannot grow; then the entry comes back with the reason.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Result<(), (Full, K, V)> {
        self.insert_within(k, v, |_| true)
    }

    /// As [`Table::insert`], but a growth of the table must also be
    /// allowed by `may_hold` (the bytes of the new slots): for tables a
    /// peer fills, which must stay within the memory budget.
    pub(crate) fn insert_within(&mut self, k: K, v: V, may_hold: impl Fn(usize) -> bool) -> Result<(), (Full, K, V)> {
        if let Some(i) = self.find(&k) {
            self.slots[i] = Some((k, v));
            return Ok(());
        }
        if self.len >= self.max {
            return Err((Full::Limit, k, v));
        }
        if (self.len + 1) * 2 > self.slots.len() {
            let capacity = ((self.len + 1) * 2).next_power_of_two().max(16);
            if !may_hold(capacity * core::mem::size_of::<Option<(K, V)>>()) || !self.resize(capacity) {
                return Err((Full::Memory, k, v));
            }
        }
        self.place(k, v);
        self.len += 1;
        Ok(())
    }

    fn place(&mut self, k: K, v: V) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(&k);
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some((k, v));
    }

    /// Rehashes into `capacity` slots; false if the memory is not there.
    fn resize(&mut self, capacity: usize) -> bool {
        let mut slots = Vec::new();
        if slots.try_reserve_exact(capacity).is_err() {
            return false;
        }
        slots.resize_with(capacity, || None);
        let old = core::mem::replace(&mut self.slots, slots);
        for (k, v) in old.into_iter().flatten() {
            self.place(k, v);
        }
        true
    }

    /// Gives memory back after a flood: a table a sixteenth full halves.
    pub(crate) fn shrink(&mut self) {
        while self.slots.len() > 16 && self.len * 16 < self.slots.len() {
            if !self.resize(self.slots.len() / 2) {
                return;
            }
        }
        if self.len == 0 {
            self.slots = Vec::new();
        }
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.find(k)?;
        Some(self.remove_at(i).1)
    }

    /// Removes the entry at `i`, shifting back the entries after it that
    /// probed past it.
    fn remove_at(&mut self, mut i: usize) -> (K, V) {
        let mask = self.slots.len() - 1;
        // `find` or the caller found an entry at `i`.
        let removed = self.slots[i].take().unwrap_or_else(|| unreachable!());
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.slots[j] else { break };
            let home = self.home(k);
            // The entry at `j` may move to `i` unless its home lies
            // cyclically in (i, j].
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.slots[i] = self.slots[j].take();
                i = j;
            }
        }
        removed
    }

    /// Keeps the entries for which `f` says true; `f` sees each entry once.
    pub(crate) fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        let Some(start) = self.slots.iter().position(|s| s.is_none()) else { return };
        let n = self.slots.len();
        let mask = n - 1;
        // Starting after an empty slot, the shifts of `remove_at` only
        // bring entries not yet seen back to the current position.
        let mut step = 1;
        while step < n {
            let i = (start + step) & mask;
            let keep = match &mut self.slots[i] {
                Some((k, v)) => f(k, v),
                None => true,
            };
            if keep {
                step += 1;
            } else {
                self.remove_at(i);
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(k, v)| (k, v)))
    }

    /// Bytes of heap the table holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Option<(K, V)>>()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The paper's appendix A: key 00..0f, message 00..0e.
        let key = (u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]), u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]));
        let mut h = SipHasher::new(key);
        h.write(&(0u8..15).collect::<Vec<u8>>());
        assert_eq!(h.finish(), 0xa129_ca61_49be_45e5);
        // Written in pieces, the same.
        let message: Vec<u8> = (0u8..15).collect();
        for cut in 0..=15 {
            let mut h = SipHasher::new(key);
            h.write(&message[..cut]);
            h.write(&message[cut..]);
            assert_eq!(h.finish(), 0xa129_ca61_49be_45e5, "cut at {cut}");
        }
        // SipHash-1-3 under the zero key is the standard library's
        // `DefaultHasher`.
        let mut std13 = std::hash::DefaultHasher::new();
        std13.write(&message);
        let mut h = SipHasher::fast((0, 0));
        h.write(&message);
        assert_eq!(h.finish(), std13.finish());
    }

    #[test]
    fn behaves_as_a_map_through_inserts_removals_and_retains() {
        let mut t: Table<u32, u32> = Table::new((1, 2), 3000);
        let mut model = BTreeMap::new();
        let mut x: u32 = 12345;
        for round in 0..40_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let k = x % 4000;
            match round % 7 {
                0..=3 => {
                    let full = model.len() >= 3000 && !model.contains_key(&k);
                    let r = t.insert(k, round);
                    assert_eq!(r.is_err(), full, "insert {k}");
                    if !full {
                        model.insert(k, round);
                    }
                }
                4 | 5 => assert_eq!(t.remove(&k), model.remove(&k)),
                _ => {
                    t.retain(|k, v| {
                        *v += 1;
                        k % 5 != 0
                    });
                    model.retain(|k, _| k % 5 != 0);
                    for v in model.values_mut() {
                        *v += 1;
                    }
                    t.shrink();
                }
            }
            assert_eq!(t.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(t.get(k), Some(v));
        }
        assert_eq!(t.iter().count(), model.len());
    }
}
