//! Random numbers (`Mirage_random`).

/// A source of cryptographically secure random bytes.
pub trait Random {
    /// Fills `buf`.
    fn fill(&self, buf: &mut [u8]);

    /// A random `u64`.
    fn next_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// Why this source must not make keys, or `None` if it may: it is a
    /// cryptographically secure generator seeded (and reseeded) from a
    /// source an attacker cannot predict, such as the CPU's RDSEED/RDRAND
    /// or the host kernel. TLS refuses to start on a source that answers
    /// `Some`. A source that cannot tell says so: the default is `Some`.
    fn weakness(&self) -> Option<&'static str> {
        Some("this random source does not say that it is seeded from hardware or a kernel")
    }
}

impl<R: Random> Random for &R {
    fn fill(&self, buf: &mut [u8]) {
        (**self).fill(buf)
    }

    fn weakness(&self) -> Option<&'static str> {
        (**self).weakness()
    }
}
