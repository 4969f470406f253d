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
}

impl<R: Random> Random for &R {
    fn fill(&self, buf: &mut [u8]) {
        (**self).fill(buf)
    }
}
