//! A rustls crypto provider on the RustCrypto crates: pure Rust, `no_std`,
//! no C, no system calls, so the same provider runs on unix and in Solo5
//! guests. Randomness comes from [`crate::rng`].
//!
//! Offered: TLS 1.3 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305;
//! TLS 1.2 with ECDHE and the same AEADs (ECDSA, Ed25519 or RSA
//! certificates); X25519 and P-256 key exchange. Nothing else: no CBC, no
//! static RSA key exchange, no finite-field DH, no SHA-1 signatures.

mod aead;
mod hash;
mod kx;
pub(crate) mod sign;
mod verify;

use alloc::sync::Arc;
use alloc::vec::Vec;

use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use rustls::crypto::tls12::PrfUsingHmac;
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{CipherSuiteCommon, CryptoProvider, KeyExchangeAlgorithm, KeyProvider, SupportedKxGroup};
use rustls::{CipherSuite, SignatureScheme, SupportedCipherSuite, Tls12CipherSuite, Tls13CipherSuite};

use crate::rng;

/// The provider: every suite and group below, randomness from [`rng`].
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        kx_groups: KX_GROUPS.to_vec(),
        signature_verification_algorithms: verify::ALGORITHMS,
        secure_random: &rng::SecureRandom,
        key_provider: &Keys,
    }
}

/// Loads private keys (see [`sign`]).
#[derive(Debug)]
struct Keys;

impl KeyProvider for Keys {
    fn load_private_key(
        &self,
        der: pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        sign::load(&der)
    }
}

/// Key-exchange groups, in order of preference.
pub static KX_GROUPS: [&dyn SupportedKxGroup; 2] = [&kx::X25519, &kx::P256];

static AES128GCM: aead::Algorithm<Aes128Gcm> = aead::Algorithm::new();
static AES256GCM: aead::Algorithm<Aes256Gcm> = aead::Algorithm::new();
static CHACHA20POLY1305: aead::Algorithm<ChaCha20Poly1305> = aead::Algorithm::new();

static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&hash::HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&hash::HMAC_SHA384);
static PRF_SHA256: PrfUsingHmac<'static> = PrfUsingHmac(&hash::HMAC_SHA256);
static PRF_SHA384: PrfUsingHmac<'static> = PrfUsingHmac(&hash::HMAC_SHA384);

/// AES-GCM records under one key before it must change: 2^24.5 full
/// records (RFC 8446 section 5.5), rounded down; rustls updates keys
/// (TLS 1.3) or closes (TLS 1.2) before reaching it.
const GCM_LIMIT: u64 = 1 << 24;

macro_rules! tls13 {
    ($name:ident, $hash:expr, $hkdf:expr, $aead:expr, $limit:expr) => {
        static $name: Tls13CipherSuite = Tls13CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::$name,
                hash_provider: $hash,
                confidentiality_limit: $limit,
            },
            hkdf_provider: $hkdf,
            aead_alg: $aead,
            quic: None,
        };
    };
}

tls13!(TLS13_AES_128_GCM_SHA256, &hash::SHA256, &HKDF_SHA256, &AES128GCM, GCM_LIMIT);
tls13!(TLS13_AES_256_GCM_SHA384, &hash::SHA384, &HKDF_SHA384, &AES256GCM, GCM_LIMIT);
tls13!(TLS13_CHACHA20_POLY1305_SHA256, &hash::SHA256, &HKDF_SHA256, &CHACHA20POLY1305, u64::MAX);

const TLS12_ECDSA: &[SignatureScheme] =
    &[SignatureScheme::ED25519, SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384];

const TLS12_RSA: &[SignatureScheme] = &sign::RSA_SCHEMES;

macro_rules! tls12 {
    ($name:ident, $suite:ident, $sign:expr, $hash:expr, $prf:expr, $aead:expr, $limit:expr) => {
        static $name: Tls12CipherSuite = Tls12CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::$suite,
                hash_provider: $hash,
                confidentiality_limit: $limit,
            },
            kx: KeyExchangeAlgorithm::ECDHE,
            sign: $sign,
            prf_provider: $prf,
            aead_alg: $aead,
        };
    };
}

tls12!(
    ECDSA_AES128,
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    TLS12_ECDSA,
    &hash::SHA256,
    &PRF_SHA256,
    &AES128GCM,
    GCM_LIMIT
);
tls12!(
    ECDSA_AES256,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    TLS12_ECDSA,
    &hash::SHA384,
    &PRF_SHA384,
    &AES256GCM,
    GCM_LIMIT
);
tls12!(
    ECDSA_CHACHA,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    TLS12_ECDSA,
    &hash::SHA256,
    &PRF_SHA256,
    &CHACHA20POLY1305,
    u64::MAX
);
tls12!(RSA_AES128, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS12_RSA, &hash::SHA256, &PRF_SHA256, &AES128GCM, GCM_LIMIT);
tls12!(RSA_AES256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS12_RSA, &hash::SHA384, &PRF_SHA384, &AES256GCM, GCM_LIMIT);
tls12!(
    RSA_CHACHA,
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    TLS12_RSA,
    &hash::SHA256,
    &PRF_SHA256,
    &CHACHA20POLY1305,
    u64::MAX
);

/// Cipher suites, in order of preference: TLS 1.3 first.
pub static CIPHER_SUITES: [SupportedCipherSuite; 9] = [
    SupportedCipherSuite::Tls13(&TLS13_AES_128_GCM_SHA256),
    SupportedCipherSuite::Tls13(&TLS13_AES_256_GCM_SHA384),
    SupportedCipherSuite::Tls13(&TLS13_CHACHA20_POLY1305_SHA256),
    SupportedCipherSuite::Tls12(&ECDSA_AES128),
    SupportedCipherSuite::Tls12(&ECDSA_AES256),
    SupportedCipherSuite::Tls12(&ECDSA_CHACHA),
    SupportedCipherSuite::Tls12(&RSA_AES128),
    SupportedCipherSuite::Tls12(&RSA_AES256),
    SupportedCipherSuite::Tls12(&RSA_CHACHA),
];

/// Every cipher suite, as a vector (for building configs).
pub fn cipher_suites() -> Vec<SupportedCipherSuite> {
    CIPHER_SUITES.to_vec()
}
