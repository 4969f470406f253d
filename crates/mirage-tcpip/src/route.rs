//! A routing table: IPv4 prefixes to interfaces and gateways, looked up by
//! longest-prefix match, with a default route (the prefix `0.0.0.0/0`).
//!
//! The table is a list kept sorted from the longest prefix to the
//! shortest, so a lookup returns the first route that matches: a few
//! routes per interface is what a unikernel router holds, and a scan of
//! them costs less than a trie's pointer chasing. Nothing here allocates
//! per packet; [`Routes::add`] allocates fallibly.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use mirage_tcpip::route::{Routes, Via};
//! let mut routes = Routes::new();
//! routes.add(Ipv4Addr::new(10, 0, 1, 0), 24, None, "inside").unwrap();
//! routes.add(Ipv4Addr::new(10, 0, 0, 0), 24, None, "uplink").unwrap();
//! routes.add(Ipv4Addr::UNSPECIFIED, 0, Some(Ipv4Addr::new(10, 0, 0, 1)), "uplink").unwrap();
//! let r = routes.lookup(Ipv4Addr::new(10, 0, 1, 7)).unwrap();
//! assert_eq!((r.interface, r.via), ("inside", Via::Direct(Ipv4Addr::new(10, 0, 1, 7))));
//! let r = routes.lookup(Ipv4Addr::new(192, 0, 2, 1)).unwrap();
//! assert_eq!((r.interface, r.via), ("uplink", Via::Gateway(Ipv4Addr::new(10, 0, 0, 1))));
//! ```

use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<T> {
    /// The network, its host bits zero.
    pub network: Ipv4Addr,
    /// The prefix length, 0 (the default route) to 32.
    pub prefix: u8,
    /// The gateway, or `None` for a network on the interface's link.
    pub gateway: Option<Ipv4Addr>,
    /// The interface the route goes out of.
    pub interface: T,
}

/// The neighbour a packet goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The destination itself, on the link.
    Direct(Ipv4Addr),
    /// A gateway on the link.
    Gateway(Ipv4Addr),
}

impl Via {
    /// The neighbour's address.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Via::Direct(a) | Via::Gateway(a) => a,
        }
    }
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop<T> {
    /// The interface.
    pub interface: T,
    /// The neighbour on its link.
    pub via: Via,
}

/// Why a route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// A prefix longer than 32.
    BadPrefix,
    /// The heap has no room for it.
    NoMemory,
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RouteError::BadPrefix => "a prefix length is at most 32",
            RouteError::NoMemory => "no memory for the route",
        })
    }
}

/// The mask of a prefix length of at most 32.
fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0)
}

/// A routing table over interfaces named by `T`.
#[derive(Debug, Clone, Default)]
pub struct Routes<T> {
    routes: Vec<Route<T>>,
}

impl<T: Copy + PartialEq> Routes<T> {
    /// An empty table.
    pub const fn new() -> Routes<T> {
        Routes { routes: Vec::new() }
    }

    /// Adds a route to `network/prefix` (its host bits are cleared) out of
    /// `interface`, through `gateway` if given. A route to the same
    /// network and prefix replaces the old one.
    pub fn add(
        &mut self,
        network: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        interface: T,
    ) -> Result<(), RouteError> {
        if prefix > 32 {
            return Err(RouteError::BadPrefix);
        }
        let network = Ipv4Addr::from(u32::from(network) & mask(prefix));
        let route = Route { network, prefix, gateway, interface };
        if let Some(r) = self.routes.iter_mut().find(|r| r.network == network && r.prefix == prefix) {
            *r = route;
            return Ok(());
        }
        self.routes.try_reserve(1).map_err(|_| RouteError::NoMemory)?;
        // Longest prefix first; among equals, the order they came in.
        let at = self.routes.iter().position(|r| r.prefix < prefix).unwrap_or(self.routes.len());
        self.routes.insert(at, route);
        Ok(())
    }

    /// Removes the route to `network/prefix`; whether there was one.
    pub fn remove(&mut self, network: Ipv4Addr, prefix: u8) -> bool {
        let network = Ipv4Addr::from(u32::from(network) & mask(prefix.min(32)));
        let before = self.routes.len();
        self.routes.retain(|r| !(r.network == network && r.prefix == prefix));
        self.routes.len() != before
    }

    /// The route for `dst`: the longest prefix that holds it.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Hop<T>> {
        let d = u32::from(dst);
        self.routes.iter().find(|r| d & mask(r.prefix) == u32::from(r.network)).map(|r| Hop {
            interface: r.interface,
            via: match r.gateway {
                Some(g) => Via::Gateway(g),
                None => Via::Direct(dst),
            },
        })
    }

    /// The routes, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route<T>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_prefix_wins() {
        let mut r = Routes::new();
        r.add(a("0.0.0.0"), 0, Some(a("10.0.0.1")), 0).unwrap();
        r.add(a("10.0.0.0"), 8, Some(a("10.0.0.254")), 1).unwrap();
        r.add(a("10.1.0.0"), 16, None, 2).unwrap();
        r.add(a("10.1.2.3"), 32, Some(a("10.1.0.9")), 3).unwrap();
        r.add(a("10.1.2.77"), 24, None, 4).unwrap(); // host bits cleared: 10.1.2.0/24
        let hop = |r: &Routes<i32>, d: &str| r.lookup(a(d)).map(|h| (h.interface, h.via));
        assert_eq!(hop(&r, "192.0.2.1"), Some((0, Via::Gateway(a("10.0.0.1")))));
        assert_eq!(hop(&r, "10.9.9.9"), Some((1, Via::Gateway(a("10.0.0.254")))));
        assert_eq!(hop(&r, "10.1.9.9"), Some((2, Via::Direct(a("10.1.9.9")))));
        assert_eq!(hop(&r, "10.1.2.4"), Some((4, Via::Direct(a("10.1.2.4")))));
        assert_eq!(hop(&r, "10.1.2.3"), Some((3, Via::Gateway(a("10.1.0.9")))));
        // Replacing and removing.
        r.add(a("10.1.0.0"), 16, None, 5).unwrap();
        assert_eq!(hop(&r, "10.1.9.9"), Some((5, Via::Direct(a("10.1.9.9")))));
        assert!(r.remove(a("0.0.0.0"), 0));
        assert!(!r.remove(a("0.0.0.0"), 0));
        assert_eq!(hop(&r, "192.0.2.1"), None);
        assert_eq!(r.add(a("1.2.3.4"), 33, None, 0), Err(RouteError::BadPrefix));
        let prefixes: Vec<u8> = r.iter().map(|r| r.prefix).collect();
        assert_eq!(prefixes, [32, 24, 16, 8]);
    }

    #[test]
    fn lookups_agree_with_a_brute_force_search() {
        // Random tables and addresses: the answer is the matching route
        // with the longest prefix, computed here the slow way.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let mut r = Routes::new();
            let mut all: Vec<(u32, u8, usize)> = Vec::new();
            for i in 0..(rand() % 20) as usize {
                // Few distinct high bits, so that prefixes overlap.
                let net = (rand() as u32) & 0xc0ff_00ff;
                let p = (rand() % 33) as u8;
                r.add(Ipv4Addr::from(net), p, None, i).unwrap();
                let n = net & mask(p);
                all.retain(|(m, q, _)| !(*m == n && *q == p));
                all.push((n, p, i));
            }
            for _ in 0..100 {
                let d = (rand() as u32) & 0xc0ff_00ff;
                let want = all.iter().filter(|(n, p, _)| d & mask(*p) == *n).max_by_key(|(_, p, _)| *p).map(|t| t.2);
                assert_eq!(r.lookup(Ipv4Addr::from(d)).map(|h| h.interface), want);
            }
        }
    }
}
