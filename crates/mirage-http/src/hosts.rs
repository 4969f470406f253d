//! How many connections each host has open: an open-addressed map from a
//! host (an IPv4 address, an IPv6 /64) to its count, allocated when the
//! server starts and never grown. Every host counted has a connection
//! open, so with twice as many slots as connections it is never more than
//! half full.

use alloc::vec::Vec;
use core::net::IpAddr;

/// The most slots: a server allowed more connections than half this
/// counts at most this many hosts at once, and refuses the next host.
const MAX_SLOTS: usize = 1 << 21;

#[derive(Debug)]
pub(crate) struct Hosts {
    /// A host's id and its count; a count of 0 is an empty slot.
    slots: Vec<(u64, u32)>,
    /// Slots in use.
    len: usize,
    /// The hash's key, so that peers cannot choose addresses whose slots
    /// meet (were they to, a probe would walk at most as many slots as
    /// connections are open: microseconds, not a stall).
    key: u64,
}

/// One id for a host: an IPv6 host may use any address of its /64. (An
/// IPv4 address is kept where no IPv6 /64 is routed: ffff:ffff::/32 is
/// reserved.)
pub(crate) fn host_id(peer: IpAddr) -> u64 {
    match peer {
        IpAddr::V4(a) => 0xffff_ffff_0000_0000 | u64::from(u32::from(a)),
        IpAddr::V6(a) => (u128::from(a) >> 64) as u64,
    }
}

impl Hosts {
    /// The map for a server of at most `connections` connections, its
    /// hash keyed by `key`; empty (counting nothing) for `connections` 0.
    /// `None` without the memory.
    pub fn new(connections: usize, key: u64) -> Option<Hosts> {
        let mut slots = Vec::new();
        if connections > 0 {
            let len = connections.saturating_mul(2).clamp(2, MAX_SLOTS).next_power_of_two();
            slots.try_reserve_exact(len).ok()?;
            slots.resize(len, (0, 0));
        }
        Some(Hosts { slots, len: 0, key: key | 1 })
    }

    fn home(&self, id: u64) -> usize {
        // A folded multiply, keyed: the low bits of an address spread over
        // the table.
        let p = u128::from(id ^ self.key.rotate_left(32)) * u128::from(self.key | 0x9e37_79b9_7f4a_7c15);
        ((p as u64) ^ ((p >> 64) as u64)) as usize & (self.slots.len() - 1)
    }

    /// The slot of `id`, or the empty slot where it would go.
    fn slot(&self, id: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        while self.slots[i].1 != 0 && self.slots[i].0 != id {
            i = (i + 1) & mask;
        }
        i
    }

    /// A map that counts nothing (no share for a host).
    pub fn none() -> Hosts {
        Hosts { slots: Vec::new(), len: 0, key: 1 }
    }

    /// Counts a new connection of `id` unless its host has `share` open
    /// (`Err(true)`) or the map would be more than half full
    /// (`Err(false)`, only past 2^20 hosts with connections open at once).
    pub fn admit(&mut self, id: u64, share: usize) -> Result<(), bool> {
        if self.count(id) as usize >= share {
            return Err(true);
        }
        if !self.add(id) {
            return Err(false);
        }
        Ok(())
    }

    /// Connections `id` has open.
    pub fn count(&self, id: u64) -> u32 {
        if self.slots.is_empty() { 0 } else { self.slots[self.slot(id)].1 }
    }

    /// One more for `id`; false (nothing counted) when the map would be
    /// more than half full.
    pub fn add(&mut self, id: u64) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let i = self.slot(id);
        if self.slots[i].1 == 0 {
            if self.len + 1 > self.slots.len() / 2 {
                return false;
            }
            self.len += 1;
        }
        self.slots[i] = (id, self.slots[i].1 + 1);
        true
    }

    /// One fewer for `id` (which [`Hosts::add`] counted); at none its slot
    /// is emptied, later entries of its probe chain shifted back so that
    /// no tombstone is left.
    pub fn sub(&mut self, id: u64) {
        if self.slots.is_empty() {
            return;
        }
        let mut i = self.slot(id);
        match self.slots[i].1 {
            0 => return,
            1 => {}
            n => {
                self.slots[i].1 = n - 1;
                return;
            }
        }
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.1 == 0 {
                break;
            }
            let ideal = self.home(s.0);
            if (j.wrapping_sub(ideal) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
        }
        self.slots[i] = (0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twelve hosts counted up and down at random, at most 8 connections
    /// at once in a map of 16 slots (so probe chains meet and wrap): every
    /// count agrees with a model after each step.
    #[test]
    fn counts_agree_with_a_model_under_churn() {
        for seed in 1..20u64 {
            let mut h = Hosts::new(8, seed).unwrap();
            let mut model = [0u32; 12];
            let mut x = seed;
            for _ in 0..5_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let a = (x % 12) as usize;
                let id = host_id(IpAddr::from([10, 0, 0, a as u8]));
                if x & 0x100 != 0 && model.iter().sum::<u32>() < 8 {
                    assert!(h.add(id));
                    model[a] += 1;
                } else if model[a] > 0 {
                    h.sub(id);
                    model[a] -= 1;
                }
                for (b, &m) in model.iter().enumerate() {
                    assert_eq!(h.count(host_id(IpAddr::from([10, 0, 0, b as u8]))), m, "seed {seed}, host {b}");
                }
                assert_eq!(h.len, model.iter().filter(|&&m| m > 0).count());
            }
        }
    }

    #[test]
    fn an_ipv6_host_is_its_slash_64_and_a_full_map_refuses_a_new_host() {
        let a: IpAddr = "2001:db8:0:1::5".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:ffff::9".parse().unwrap();
        assert_eq!(host_id(a), host_id(b));
        let mut h = Hosts::new(1, 7).unwrap();
        assert!(h.add(host_id(a)));
        assert!(h.add(host_id(b)), "the same host again");
        assert!(!h.add(host_id("10.0.0.1".parse().unwrap())), "a second host in a map for one");
        h.sub(host_id(a));
        h.sub(host_id(a));
        assert!(h.add(host_id("10.0.0.1".parse().unwrap())));
    }

    #[test]
    fn no_limit_counts_nothing() {
        let mut h = Hosts::new(0, 7).unwrap();
        assert!(h.add(1));
        assert_eq!(h.count(1), 0);
        h.sub(1);
    }
}
