//! A routing table: IPv4 or IPv6 prefixes to interfaces and gateways,
//! looked up by longest-prefix match, with a default route (the prefix
//! `0.0.0.0/0`, or `::/0`). A table holds one family ([`Address`]): a
//! router keeps one of each.
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
//!
//! use core::net::Ipv6Addr;
//! let mut routes6 = Routes::new();
//! routes6.add("fd00:1::".parse::<Ipv6Addr>().unwrap(), 64, None, "inside").unwrap();
//! routes6.add(Ipv6Addr::UNSPECIFIED, 0, Some("fd00::1".parse().unwrap()), "uplink").unwrap();
//! assert_eq!(routes6.lookup("fd00:1::7".parse().unwrap()).unwrap().interface, "inside");
//! assert_eq!(routes6.lookup("2001:db8::1".parse().unwrap()).unwrap().via.addr(), "fd00::1".parse::<Ipv6Addr>().unwrap());
//! ```

use alloc::vec::Vec;
use core::net::{Ipv4Addr, Ipv6Addr};

/// An address family a table routes: its addresses as bits.
pub trait Address: Copy + Eq + core::fmt::Debug {
    /// The address's length in bits: the longest prefix.
    const BITS: u8;
    /// The address as an integer, in the low bits.
    fn bits(self) -> u128;
    /// The address of an integer from [`Address::bits`].
    fn from_bits(bits: u128) -> Self;
}

impl Address for Ipv4Addr {
    const BITS: u8 = 32;
    fn bits(self) -> u128 {
        u32::from(self) as u128
    }
    fn from_bits(bits: u128) -> Self {
        Ipv4Addr::from(bits as u32)
    }
}

impl Address for Ipv6Addr {
    const BITS: u8 = 128;
    fn bits(self) -> u128 {
        u128::from(self)
    }
    fn from_bits(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<T, A = Ipv4Addr> {
    /// The network, its host bits zero.
    pub network: A,
    /// The prefix length, 0 (the default route) to the address's length.
    pub prefix: u8,
    /// The gateway, or `None` for a network on the interface's link.
    pub gateway: Option<A>,
    /// The interface the route goes out of.
    pub interface: T,
}

/// The neighbour a packet goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<A = Ipv4Addr> {
    /// The destination itself, on the link.
    Direct(A),
    /// A gateway on the link.
    Gateway(A),
}

impl<A: Copy> Via<A> {
    /// The neighbour's address.
    pub fn addr(self) -> A {
        match self {
            Via::Direct(a) | Via::Gateway(a) => a,
        }
    }
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop<T, A = Ipv4Addr> {
    /// The interface.
    pub interface: T,
    /// The neighbour on its link.
    pub via: Via<A>,
}

/// Why a route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// A prefix longer than the address (32 bits for IPv4, 128 for IPv6).
    BadPrefix,
    /// The heap has no room for it.
    NoMemory,
}

impl core::fmt::Display for RouteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RouteError::BadPrefix => "a prefix length is at most 32 for IPv4, 128 for IPv6",
            RouteError::NoMemory => "no memory for the route",
        })
    }
}

/// The mask of a prefix length of at most `A::BITS`, in the low bits.
fn mask<A: Address>(prefix: u8) -> u128 {
    let width = u128::MAX >> (128 - A::BITS as u32);
    width & u128::MAX.checked_shl((A::BITS - prefix.min(A::BITS)) as u32).unwrap_or(0)
}

/// A routing table over interfaces named by `T`, for addresses `A`
/// (IPv4 unless said).
#[derive(Debug, Clone)]
pub struct Routes<T, A = Ipv4Addr> {
    routes: Vec<Route<T, A>>,
}

impl<T, A> Default for Routes<T, A> {
    fn default() -> Self {
        Routes { routes: Vec::new() }
    }
}

impl<T: Copy + PartialEq, A: Address> Routes<T, A> {
    /// An empty table.
    pub const fn new() -> Routes<T, A> {
        Routes { routes: Vec::new() }
    }

    /// Adds a route to `network/prefix` (its host bits are cleared) out of
    /// `interface`, through `gateway` if given. A route to the same
    /// network and prefix replaces the old one.
    pub fn add(&mut self, network: A, prefix: u8, gateway: Option<A>, interface: T) -> Result<(), RouteError> {
        if prefix > A::BITS {
            return Err(RouteError::BadPrefix);
        }
        let network = A::from_bits(network.bits() & mask::<A>(prefix));
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
    pub fn remove(&mut self, network: A, prefix: u8) -> bool {
        let network = A::from_bits(network.bits() & mask::<A>(prefix));
        let before = self.routes.len();
        self.routes.retain(|r| !(r.network == network && r.prefix == prefix));
        self.routes.len() != before
    }

    /// The route for `dst`: the longest prefix that holds it.
    pub fn lookup(&self, dst: A) -> Option<Hop<T, A>> {
        let d = dst.bits();
        self.routes.iter().find(|r| d & mask::<A>(r.prefix) == r.network.bits()).map(|r| Hop {
            interface: r.interface,
            via: match r.gateway {
                Some(g) => Via::Gateway(g),
                None => Via::Direct(dst),
            },
        })
    }

    /// The routes, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route<T, A>> {
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
                let n = net & mask::<Ipv4Addr>(p) as u32;
                all.retain(|(m, q, _)| !(*m == n && *q == p));
                all.push((n, p, i));
            }
            for _ in 0..100 {
                let d = (rand() as u32) & 0xc0ff_00ff;
                let want = all
                    .iter()
                    .filter(|(n, p, _)| d & mask::<Ipv4Addr>(*p) as u32 == *n)
                    .max_by_key(|(_, p, _)| *p)
                    .map(|t| t.2);
                assert_eq!(r.lookup(Ipv4Addr::from(d)).map(|h| h.interface), want);
            }
        }
    }

    #[test]
    fn ipv6_lookups_agree_with_a_brute_force_search() {
        // As for IPv4, over the whole 128 bits: prefixes that cut inside
        // each 32-bit word, and a default route.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let spread = |r: u64| -> u128 {
            // Few distinct bits in each word, so that prefixes overlap.
            let w = (r as u128 & 0x0303_0303) | ((r as u128 >> 32) & 0x0303_0303) << 64;
            w | w << 32 | 0xfd00u128 << 112
        };
        for _ in 0..200 {
            let mut r: Routes<usize, Ipv6Addr> = Routes::new();
            let mut all: Vec<(u128, u8, usize)> = Vec::new();
            for i in 0..(rand() % 20) as usize {
                let net = spread(rand());
                let p = (rand() % 129) as u8;
                r.add(Ipv6Addr::from(net), p, None, i).unwrap();
                let n = net & mask::<Ipv6Addr>(p);
                all.retain(|(m, q, _)| !(*m == n && *q == p));
                all.push((n, p, i));
            }
            for _ in 0..100 {
                let d = spread(rand());
                let want = all
                    .iter()
                    .filter(|(n, p, _)| d & mask::<Ipv6Addr>(*p) == *n)
                    .max_by_key(|(_, p, _)| *p)
                    .map(|t| t.2);
                assert_eq!(r.lookup(Ipv6Addr::from(d)).map(|h| h.interface), want);
            }
        }
        let mut r: Routes<u8, Ipv6Addr> = Routes::new();
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        r.add(Ipv6Addr::UNSPECIFIED, 0, Some(gw), 0).unwrap();
        r.add("fd00:1::".parse().unwrap(), 64, None, 1).unwrap();
        assert_eq!(r.lookup("2001:db8::1".parse().unwrap()).map(|h| h.via), Some(Via::Gateway(gw)));
        assert_eq!(r.lookup("fd00:1::9".parse().unwrap()).map(|h| h.interface), Some(1));
        assert_eq!(r.add(Ipv6Addr::UNSPECIFIED, 129, None, 0), Err(RouteError::BadPrefix));
        assert!(r.add(Ipv6Addr::UNSPECIFIED, 128, None, 0).is_ok());
    }
}
