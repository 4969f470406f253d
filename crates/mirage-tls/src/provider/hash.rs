//! SHA-256 and SHA-384, and HMAC over them (for HKDF and the TLS 1.2 PRF,
//! which rustls builds from HMAC).

use alloc::boxed::Box;

use ::hmac::Mac;
use rustls::crypto::hash::{self, HashAlgorithm};
use rustls::crypto::hmac;
use sha2::Digest;

/// A RustCrypto digest as a rustls hash.
pub(crate) struct Hash<D>(core::marker::PhantomData<D>);

pub(crate) static SHA256: Hash<sha2::Sha256> = Hash(core::marker::PhantomData);
pub(crate) static SHA384: Hash<sha2::Sha384> = Hash(core::marker::PhantomData);

/// Which rustls algorithm a digest is.
pub(crate) trait Named: Digest + Clone + Send + Sync + 'static {
    const ALGORITHM: HashAlgorithm;
}

impl Named for sha2::Sha256 {
    const ALGORITHM: HashAlgorithm = HashAlgorithm::SHA256;
}

impl Named for sha2::Sha384 {
    const ALGORITHM: HashAlgorithm = HashAlgorithm::SHA384;
}

impl<D: Named> hash::Hash for Hash<D> {
    fn start(&self) -> Box<dyn hash::Context> {
        Box::new(Context(D::new()))
    }

    fn hash(&self, data: &[u8]) -> hash::Output {
        hash::Output::new(&D::digest(data))
    }

    fn output_len(&self) -> usize {
        <D as Digest>::output_size()
    }

    fn algorithm(&self) -> HashAlgorithm {
        D::ALGORITHM
    }
}

struct Context<D>(D);

impl<D: Named> hash::Context for Context<D> {
    fn fork_finish(&self) -> hash::Output {
        hash::Output::new(&self.0.clone().finalize())
    }

    fn fork(&self) -> Box<dyn hash::Context> {
        Box::new(Context(self.0.clone()))
    }

    fn finish(self: Box<Self>) -> hash::Output {
        hash::Output::new(&self.0.finalize())
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
}

/// HMAC over a digest.
pub(crate) struct Hmac<D>(core::marker::PhantomData<D>);

pub(crate) static HMAC_SHA256: Hmac<sha2::Sha256> = Hmac(core::marker::PhantomData);
pub(crate) static HMAC_SHA384: Hmac<sha2::Sha384> = Hmac(core::marker::PhantomData);

macro_rules! hmac_for {
    ($digest:ty) => {
        impl hmac::Hmac for Hmac<$digest> {
            fn with_key(&self, key: &[u8]) -> Box<dyn hmac::Key> {
                // HMAC takes keys of any length.
                Box::new(HmacKey(
                    ::hmac::Hmac::<$digest>::new_from_slice(key)
                        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length")),
                ))
            }

            fn hash_output_len(&self) -> usize {
                <$digest as Digest>::output_size()
            }
        }
    };
}

hmac_for!(sha2::Sha256);
hmac_for!(sha2::Sha384);

struct HmacKey<M>(M);

impl<M: Mac + Clone + Send + Sync> hmac::Key for HmacKey<M> {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> hmac::Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for m in middle {
            mac.update(m);
        }
        mac.update(last);
        hmac::Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        <M as ::hmac::digest::OutputSizeUser>::output_size()
    }
}
