//! The random source of every key, nonce and ticket: the unikernel's own
//! [`Random`] device, installed once, never a system call.
//!
//! rustls reaches randomness through `'static` objects (its key-exchange
//! groups and its `SecureRandom`), so the device is kept in one global, set
//! by [`install`]. The device must say it is fit for keys
//! ([`Random::weakness`] is `None`): a target without a hardware or kernel
//! source refuses to start TLS rather than make guessable keys.

use alloc::boxed::Box;
use core::fmt;

use mirage_devices::random::Random;

type Fill = dyn Fn(&mut [u8]) + Send + Sync;

static SOURCE: spin::Once<Box<Fill>> = spin::Once::new();

/// The random source cannot make keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakRandom(pub &'static str);

impl fmt::Display for WeakRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS refuses to start: the random source is not fit for keys ({})", self.0)
    }
}

/// Makes `random` the source of all TLS randomness, if it is fit for keys.
///
/// The first device installed stays: a unikernel has one random source, and
/// keys must not change source mid-run. Installing again is harmless.
pub fn install<R: Random + Send + Sync + 'static>(random: R) -> Result<(), WeakRandom> {
    if let Some(why) = random.weakness() {
        return Err(WeakRandom(why));
    }
    SOURCE.call_once(|| Box::new(move |buf: &mut [u8]| random.fill(buf)));
    Ok(())
}

/// Whether a source is installed.
pub fn installed() -> bool {
    SOURCE.is_completed()
}

/// Fills `buf` from the installed source.
pub(crate) fn fill(buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
    match SOURCE.get() {
        Some(f) => {
            f(buf);
            Ok(())
        }
        None => Err(rustls::crypto::GetRandomFailed),
    }
}

/// The installed source as a `rand_core` generator, for the RustCrypto
/// primitives. Only made once a source is installed, so it never fails.
pub(crate) struct Rng(&'static Fill);

impl Rng {
    pub(crate) fn get() -> Result<Rng, rustls::Error> {
        SOURCE.get().map(|f| Rng(&**f)).ok_or(rustls::Error::FailedToGetRandomBytes)
    }
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rng")
    }
}

impl rand_core::RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        (self.0)(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        (self.0)(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        (self.0)(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Rng {}

/// The installed source as rustls' `SecureRandom`.
#[derive(Debug)]
pub(crate) struct SecureRandom;

impl rustls::crypto::SecureRandom for SecureRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        fill(buf)
    }
}
