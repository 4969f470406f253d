//! The connection-tracking table: a fixed array of flows, a hash index
//! over both directions' tuples, one list per timeout class ordered by
//! last activity, and the port and identifier allocator of masquerade.
//!
//! Everything is allocated when the table is made and never grows: a
//! flow is [`FLOW_BYTES`] bytes plus four index slots of 8 bytes (the
//! index keeps at most a quarter of its slots in use, so probes stay
//! short). A lookup is a hash and a short linear probe; a packet moves
//! its flow to the tail of its class's list; expiry pops list heads whose
//! time is up, so it costs what it frees.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

use crate::TcpWindow;
use crate::wire::Tuple;

/// Marks an empty index slot or the end of a list.
const NONE: u32 = u32::MAX;
const EMPTY: u64 = u64::MAX;

/// The largest table: flow numbers and directions fit in 31 bits.
pub(crate) const MAX_FLOWS: usize = 1 << 24;

/// Bytes of one flow record, without its index slots.
pub const FLOW_BYTES: usize = core::mem::size_of::<Flow>();

/// The timeout classes: the TCP states, UDP before and after a reply, and
/// ICMP echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Class {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    TimeWait,
    Close,
    UdpUnreplied,
    UdpReplied,
    Icmp,
}

pub(crate) const CLASSES: usize = 9;

/// The flow was made by masquerade, and holds its external port.
pub(crate) const F_SNAT: u8 = 1;
/// A packet of the reply direction was seen.
pub(crate) const F_REPLIED: u8 = 2;
/// A FIN went in the original, or in the reply direction.
pub(crate) const F_FIN_ORIG: u8 = 4;
pub(crate) const F_FIN_REPLY: u8 = 8;
/// The flow was made by a port forward.
pub(crate) const F_DNAT: u8 = 16;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    /// The tuples of the original direction (as it arrives, before any
    /// translation) and of the reply direction (as replies arrive).
    pub key: [Tuple; 2],
    /// When the last packet passed, in milliseconds.
    pub last: u64,
    /// The neighbours in the class list; `next` links free records.
    prev: u32,
    next: u32,
    /// The interfaces the original direction comes in on and goes out by
    /// ([`crate::LOCAL`] for the router itself).
    pub iface: [u8; 2],
    pub class: Class,
    pub flags: u8,
    /// TCP: where each direction's sequence numbers are.
    pub tcp: TcpWindow,
}

const BLANK: Tuple = Tuple { src: 0, dst: 0, sport: 0, dport: 0, proto: 0 };

pub(crate) struct Table {
    flows: Vec<Flow>,
    free: u32,
    len: usize,
    /// Open addressing with linear probing: the low 32 bits of the hash,
    /// then the flow number times 2 plus the direction.
    slots: Vec<u64>,
    mask: usize,
    key: [u64; 3],
    head: [u32; CLASSES],
    tail: [u32; CLASSES],
}

impl core::fmt::Debug for Table {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Table").field("len", &self.len).field("capacity", &self.flows.len()).finish()
    }
}

/// The folded multiply that foldhash and wyhash are built on: keyed by
/// a seed the peers do not know, so they cannot aim at one probe chain.
fn mix(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Table {
    pub fn new(capacity: usize, seed: u64) -> Result<Table, TryReserveError> {
        let slots_len = (capacity.max(1) * 4).next_power_of_two();
        let mut flows = Vec::new();
        flows.try_reserve_exact(capacity)?;
        let mut slots = Vec::new();
        slots.try_reserve_exact(slots_len)?;
        slots.resize(slots_len, EMPTY);
        for i in 0..capacity {
            let next = if i + 1 < capacity { (i + 1) as u32 } else { NONE };
            flows.push(Flow {
                key: [BLANK; 2],
                last: 0,
                prev: NONE,
                next,
                iface: [0; 2],
                class: Class::Close,
                flags: 0,
                tcp: TcpWindow::NEW,
            });
        }
        // Three keys from the seed, odd-bit-rich (splitmix64 steps).
        let mut s = seed;
        let mut next_key = || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let key = [next_key(), next_key(), next_key()];
        Ok(Table {
            free: if capacity > 0 { 0 } else { NONE },
            flows,
            len: 0,
            slots,
            mask: slots_len - 1,
            key,
            head: [NONE; CLASSES],
            tail: [NONE; CLASSES],
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.flows.len()
    }

    pub fn is_full(&self) -> bool {
        self.free == NONE
    }

    /// Bytes the table holds, all allocated when it was made.
    pub fn bytes(&self) -> usize {
        self.flows.capacity() * FLOW_BYTES + self.slots.capacity() * 8
    }

    fn hash(&self, t: &Tuple) -> u32 {
        let a = u64::from(t.src) << 32 | u64::from(t.dst);
        let b = u64::from(t.sport) << 48 | u64::from(t.dport) << 32 | u64::from(t.proto);
        mix(mix(a ^ self.key[0], b ^ self.key[1]), self.key[2]) as u32
    }

    /// The flow and direction (0 original, 1 reply) whose tuple is `t`.
    pub fn find(&self, t: &Tuple) -> Option<(u32, usize)> {
        let h = self.hash(t);
        let mut i = h as usize & self.mask;
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if (s >> 32) as u32 == h {
                let e = s as u32;
                let (f, d) = (e >> 1, (e & 1) as usize);
                if self.flows[f as usize].key[d] == *t {
                    return Some((f, d));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn get(&self, f: u32) -> &Flow {
        &self.flows[f as usize]
    }

    pub fn get_mut(&mut self, f: u32) -> &mut Flow {
        &mut self.flows[f as usize]
    }

    fn index_insert(&mut self, t: &Tuple, entry: u32) {
        let h = self.hash(t);
        let mut i = h as usize & self.mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = u64::from(h) << 32 | u64::from(entry);
    }

    /// Removes `entry` from the index, shifting later entries of its probe
    /// chain back so no tombstones are left.
    fn index_remove(&mut self, t: &Tuple, entry: u32) {
        let mask = self.mask;
        let mut i = self.hash(t) as usize & mask;
        while self.slots[i] as u32 != entry {
            i = (i + 1) & mask;
        }
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let ideal = (s >> 32) as usize & mask;
            // The entry at j may move to the hole at i unless its ideal
            // slot lies after i, up to j, in probe order.
            if (j.wrapping_sub(ideal) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = EMPTY;
    }

    /// Adds a flow; the caller has checked that neither tuple is in use
    /// and that the table is not full.
    pub fn insert(&mut self, key: [Tuple; 2], iface: [u8; 2], class: Class, flags: u8, now: u64) -> u32 {
        let f = self.free;
        debug_assert!(f != NONE);
        self.free = self.flows[f as usize].next;
        self.flows[f as usize] =
            Flow { key, last: now, prev: NONE, next: NONE, iface, class, flags, tcp: TcpWindow::NEW };
        self.index_insert(&key[0], f << 1);
        self.index_insert(&key[1], f << 1 | 1);
        self.push(f);
        self.len += 1;
        f
    }

    /// Takes a flow out; returns it so the caller can release its port.
    pub fn remove(&mut self, f: u32) -> Flow {
        self.unlink(f);
        let flow = self.flows[f as usize];
        self.index_remove(&flow.key[0], f << 1);
        self.index_remove(&flow.key[1], f << 1 | 1);
        self.flows[f as usize].next = self.free;
        self.free = f;
        self.len -= 1;
        flow
    }

    fn push(&mut self, f: u32) {
        let c = self.flows[f as usize].class as usize;
        let t = self.tail[c];
        self.flows[f as usize].prev = t;
        self.flows[f as usize].next = NONE;
        if t == NONE {
            self.head[c] = f;
        } else {
            self.flows[t as usize].next = f;
        }
        self.tail[c] = f;
    }

    fn unlink(&mut self, f: u32) {
        let Flow { prev, next, class, .. } = self.flows[f as usize];
        let c = class as usize;
        if prev == NONE {
            self.head[c] = next;
        } else {
            self.flows[prev as usize].next = next;
        }
        if next == NONE {
            self.tail[c] = prev;
        } else {
            self.flows[next as usize].prev = prev;
        }
    }

    /// A packet of flow `f` passed at `now`, leaving it in `class`.
    pub fn touch(&mut self, f: u32, class: Class, now: u64) {
        let fl = &self.flows[f as usize];
        if fl.class == class && self.tail[class as usize] == f {
            self.flows[f as usize].last = now;
            return;
        }
        self.unlink(f);
        let fl = &mut self.flows[f as usize];
        fl.class = class;
        fl.last = now;
        self.push(f);
    }

    /// The flow that has waited longest in `class`.
    pub fn oldest(&self, class: usize) -> Option<u32> {
        let h = self.head[class];
        (h != NONE).then_some(h)
    }

    /// The flow after `f` in its class's list (the next to expire).
    pub fn next_in_class(&self, f: u32) -> Option<u32> {
        let n = self.flows[f as usize].next;
        (n != NONE).then_some(n)
    }
}

/// Which external ports (or ICMP identifiers) of one protocol are held,
/// one bit each; a port is handed out again only after the flow holding
/// it is gone.
pub(crate) struct Ports {
    bits: Vec<u64>,
    lo: u16,
    hi: u16,
    /// Where the next search starts: ports are handed out in turn, so a
    /// freed port is the last to be used again.
    cursor: u16,
    held: usize,
}

impl core::fmt::Debug for Ports {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ports").field("range", &(self.lo..=self.hi)).field("held", &self.held).finish()
    }
}

impl Ports {
    pub fn new(lo: u16, hi: u16) -> Result<Ports, TryReserveError> {
        let mut bits = Vec::new();
        bits.try_reserve_exact(1024)?;
        bits.resize(1024, 0);
        Ok(Ports { bits, lo, hi, cursor: lo, held: 0 })
    }

    pub fn is_held(&self, p: u16) -> bool {
        self.bits[usize::from(p >> 6)] >> (p & 63) & 1 == 1
    }

    /// Marks `p` held (a port forward's port, or an allocation).
    pub fn hold(&mut self, p: u16) {
        if !self.is_held(p) {
            self.bits[usize::from(p >> 6)] |= 1 << (p & 63);
            self.held += 1;
        }
    }

    pub fn release(&mut self, p: u16) {
        if self.is_held(p) {
            self.bits[usize::from(p >> 6)] &= !(1 << (p & 63));
            self.held -= 1;
        }
    }

    /// A free port of the range: `want` if it is free and in the range
    /// (ports are kept where they can be), else the next free one after
    /// the cursor; `None` when every port of the range is held. The caller
    /// holds it with [`Ports::hold`].
    pub fn pick(&mut self, want: u16) -> Option<u16> {
        if (self.lo..=self.hi).contains(&want) && !self.is_held(want) {
            return Some(want);
        }
        let span = u32::from(self.hi - self.lo) + 1;
        let mut p = u32::from(self.cursor);
        let mut left = span;
        while left > 0 {
            if p > u32::from(self.hi) {
                p = u32::from(self.lo);
            }
            let word = self.bits[(p >> 6) as usize];
            if word == u64::MAX && p & 63 == 0 && p + 63 <= u32::from(self.hi) {
                // A whole word held: skip 64 ports at once.
                p += 64;
                left = left.saturating_sub(64);
                continue;
            }
            if word >> (p & 63) & 1 == 0 {
                self.cursor = if p >= u32::from(self.hi) { self.lo } else { (p + 1) as u16 };
                return Some(p as u16);
            }
            p += 1;
            left -= 1;
        }
        None
    }
}

/// How many flows each source address started: an open-addressed map
/// with linear probing, allocated when the table is made. Every address
/// counted holds at least one flow, so it never holds more addresses than
/// the table holds flows, and with twice that many slots it is never more
/// than half full.
pub(crate) struct Hosts {
    /// The address in the high 32 bits, its count in the low; 0 is empty
    /// (an address counted holds at least one flow).
    slots: Vec<u64>,
    mask: usize,
    key: [u64; 2],
}

impl core::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hosts").field("slots", &self.slots.len()).finish()
    }
}

impl Hosts {
    pub fn new(capacity: usize, seed: u64) -> Result<Hosts, TryReserveError> {
        let len = (capacity.max(1) * 2).next_power_of_two();
        let mut slots = Vec::new();
        slots.try_reserve_exact(len)?;
        slots.resize(len, 0);
        // Keyed apart from the flow index's keys, so that addresses that
        // share a probe chain here tell nothing about the index.
        let key = [mix(seed, 0xa076_1d64_78bd_642f) | 1, mix(seed ^ 0xe703_7ed1_a0b4_28db, 0x8ebc_6af0_9c88_c6e3)];
        Ok(Hosts { slots, mask: len - 1, key })
    }

    pub fn bytes(&self) -> usize {
        self.slots.capacity() * 8
    }

    fn home(&self, a: u32) -> usize {
        mix(u64::from(a) ^ self.key[0], self.key[1]) as usize & self.mask
    }

    /// The slot of `a`, or the empty slot where it would go.
    fn slot(&self, a: u32) -> usize {
        let mut i = self.home(a);
        loop {
            let s = self.slots[i];
            if s == 0 || (s >> 32) as u32 == a {
                return i;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Flows `a` holds.
    pub fn count(&self, a: u32) -> u32 {
        self.slots[self.slot(a)] as u32
    }

    /// One more flow for `a`.
    pub fn add(&mut self, a: u32) {
        let i = self.slot(a);
        let n = self.slots[i] as u32;
        self.slots[i] = u64::from(a) << 32 | u64::from(n + 1);
    }

    /// One flow fewer for `a`; at none, its slot is emptied, later entries
    /// of its probe chain shifted back so that no tombstone is left.
    pub fn sub(&mut self, a: u32) {
        let mut i = self.slot(a);
        let n = self.slots[i] as u32;
        if n > 1 {
            self.slots[i] = u64::from(a) << 32 | u64::from(n - 1);
            return;
        }
        let mask = self.mask;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let ideal = self.home((s >> 32) as u32);
            if (j.wrapping_sub(ideal) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(n: u64) -> Tuple {
        Tuple { src: (n >> 16) as u32, dst: 7, sport: n as u16, dport: 9, proto: 17 }
    }

    /// Flows are added and removed at random in a table of 8 (32 index
    /// slots, so probe chains meet and wrap); after each step every flow
    /// the model holds is found, both ways, and no other.
    #[test]
    fn the_index_agrees_with_a_model_under_churn() {
        for seed in 1..20u64 {
            let mut t = Table::new(8, seed).unwrap();
            let mut model: Vec<(u32, u64)> = Vec::new();
            let mut x = seed;
            for _ in 0..5_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = x % 40;
                if let Some(pos) = model.iter().position(|&(_, m)| m == n) {
                    let (f, _) = model.swap_remove(pos);
                    t.remove(f);
                } else if !t.is_full() {
                    let key = [tuple(n), tuple(n + 1000).inverse()];
                    model.push((t.insert(key, [0, 1], Class::Icmp, 0, 0), n));
                }
                for n in 0..40 {
                    let want = model.iter().find(|&&(_, m)| m == n).map(|&(f, _)| f);
                    assert_eq!(t.find(&tuple(n)).map(|(f, _)| f), want, "seed {seed}, tuple {n}");
                    assert_eq!(t.find(&tuple(n + 1000).inverse()), want.map(|f| (f, 1)));
                }
                assert_eq!(t.len(), model.len());
            }
        }
    }

    /// Twelve addresses are counted up and down at random, at most 8 flows
    /// at once in a map of 16 slots (so probe chains meet and wrap): every
    /// count agrees with a model after each step.
    #[test]
    fn host_counts_agree_with_a_model_under_churn() {
        for seed in 1..20u64 {
            let mut h = Hosts::new(8, seed).unwrap();
            let mut model = [0u32; 12];
            let mut x = seed;
            for _ in 0..5_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let a = (x % 12) as usize;
                // At most 8 flows in all, as the table would allow.
                if x & 0x100 != 0 && model.iter().sum::<u32>() < 8 {
                    h.add(a as u32 * 0x0101_0101);
                    model[a] += 1;
                } else if model[a] > 0 {
                    h.sub(a as u32 * 0x0101_0101);
                    model[a] -= 1;
                }
                for (b, &m) in model.iter().enumerate() {
                    assert_eq!(h.count(b as u32 * 0x0101_0101), m, "seed {seed}, address {b}");
                }
            }
        }
    }

    #[test]
    fn ports_are_picked_in_turn_and_skip_held_words() {
        let mut p = Ports::new(1, 200).unwrap();
        for q in 1..=130 {
            p.hold(q);
        }
        assert_eq!(p.pick(0), Some(131));
        p.hold(131);
        assert_eq!(p.pick(5), Some(132), "a held port is not given");
        p.release(5);
        assert_eq!(p.pick(5), Some(5), "a free port is kept");
        for q in 132..=200 {
            p.hold(q);
        }
        p.hold(5);
        assert_eq!(p.pick(0), None);
    }
}
