//! Private keys: ECDSA P-256, Ed25519 and RSA, from PKCS#8, SEC1 or PKCS#1
//! DER.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use signature::{RandomizedSigner, SignatureEncoding};

use crate::rng::Rng;

/// Loads any supported private key; the error names the formats accepted.
pub(crate) fn load(der: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
    use pkcs8::DecodePrivateKey;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    match der {
        PrivateKeyDer::Pkcs8(k) => {
            let k = k.secret_pkcs8_der();
            if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_der(k) {
                return Ok(Arc::new(EcdsaP256(key)));
            }
            if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_der(k) {
                return Ok(Arc::new(Ed25519(key)));
            }
            if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_der(k) {
                return rsa_key(key);
            }
            Err(unsupported())
        }
        PrivateKeyDer::Sec1(k) => p256::SecretKey::from_sec1_der(k.secret_sec1_der())
            .map(|k| Arc::new(EcdsaP256(k.into())) as Arc<dyn SigningKey>)
            .map_err(|_| unsupported()),
        PrivateKeyDer::Pkcs1(k) => {
            rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der()).map_err(|_| unsupported()).and_then(rsa_key)
        }
        _ => Err(unsupported()),
    }
}

fn unsupported() -> rustls::Error {
    rustls::Error::General(String::from(
        "unsupported private key: expected ECDSA P-256 (PKCS#8 or SEC1), Ed25519 (PKCS#8) or RSA of 2048 to 8192 bits (PKCS#8 or PKCS#1)",
    ))
}

fn rsa_key(key: rsa::RsaPrivateKey) -> Result<Arc<dyn SigningKey>, rustls::Error> {
    use rsa::traits::PublicKeyParts;
    let bits = key.n().bits();
    if !(2048..=8192).contains(&bits) {
        return Err(unsupported());
    }
    Ok(Arc::new(Rsa(Arc::new(key))))
}

fn spki(alg: pki_types::AlgorithmIdentifier, public: &[u8]) -> Option<SubjectPublicKeyInfoDer<'static>> {
    Some(rustls::sign::public_key_to_spki(&alg, public))
}

#[derive(Debug)]
struct EcdsaP256(p256::ecdsa::SigningKey);

impl SigningKey for EcdsaP256 {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(EcdsaP256Signer(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        let point = self.0.verifying_key().to_encoded_point(false);
        spki(pki_types::alg_id::ECDSA_P256, point.as_bytes())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct EcdsaP256Signer(p256::ecdsa::SigningKey);

impl Signer for EcdsaP256Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // Deterministic nonces (RFC 6979) plus fresh randomness, so a
        // weak source alone cannot leak the key.
        let sig: p256::ecdsa::Signature = self
            .0
            .try_sign_with_rng(&mut Rng::get()?, message)
            .map_err(|_| rustls::Error::General(String::from("ECDSA signing failed")))?;
        Ok(sig.to_der().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[derive(Debug)]
struct Ed25519(ed25519_dalek::SigningKey);

impl SigningKey for Ed25519 {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&SignatureScheme::ED25519).then(|| Box::new(Ed25519(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        spki(pki_types::alg_id::ED25519, self.0.verifying_key().as_bytes())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

impl Signer for Ed25519 {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use signature::Signer as _;
        Ok(self.0.sign(message).to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The RSA schemes in order of preference: PSS first (TLS 1.3 allows only
/// PSS for handshake signatures).
pub(crate) const RSA_SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

struct Rsa(Arc<rsa::RsaPrivateKey>);

/// The key's size, never its parts: `rsa`'s own `Debug` prints the private
/// exponent and primes, and a configuration holding this key is `Debug`.
fn rsa_debug(f: &mut core::fmt::Formatter<'_>, name: &str, key: &rsa::RsaPrivateKey) -> core::fmt::Result {
    use rsa::traits::PublicKeyParts;
    f.debug_struct(name).field("bits", &key.n().bits()).finish_non_exhaustive()
}

impl core::fmt::Debug for Rsa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        rsa_debug(f, "Rsa", &self.0)
    }
}

impl SigningKey for Rsa {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = RSA_SCHEMES.iter().copied().find(|s| offered.contains(s))?;
        Some(Box::new(RsaSigner { key: self.0.clone(), scheme }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        use rsa::pkcs1::EncodeRsaPublicKey;
        let der = self.0.to_public_key().to_pkcs1_der().ok()?;
        spki(pki_types::alg_id::RSA_ENCRYPTION, der.as_bytes())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

struct RsaSigner {
    key: Arc<rsa::RsaPrivateKey>,
    scheme: SignatureScheme,
}

impl core::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        rsa_debug(f, "RsaSigner", &self.key)
    }
}

fn rsa_sign<S, K>(key: K, message: &[u8]) -> Result<Vec<u8>, rustls::Error>
where
    S: SignatureEncoding,
    K: RandomizedSigner<S>,
{
    // Both paddings draw randomness: PSS its salt, PKCS#1 v1.5 the blinding
    // that keeps the private operation's timing independent of the key.
    key.try_sign_with_rng(&mut Rng::get()?, message)
        .map(|s| s.to_vec())
        .map_err(|_| rustls::Error::General(String::from("RSA signing failed")))
}

impl Signer for RsaSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use rsa::{pkcs1v15, pss};
        use sha2::{Sha256, Sha384, Sha512};
        let k = (*self.key).clone();
        match self.scheme {
            SignatureScheme::RSA_PSS_SHA256 => rsa_sign(pss::BlindedSigningKey::<Sha256>::new(k), message),
            SignatureScheme::RSA_PSS_SHA384 => rsa_sign(pss::BlindedSigningKey::<Sha384>::new(k), message),
            SignatureScheme::RSA_PSS_SHA512 => rsa_sign(pss::BlindedSigningKey::<Sha512>::new(k), message),
            SignatureScheme::RSA_PKCS1_SHA256 => rsa_sign(pkcs1v15::SigningKey::<Sha256>::new(k), message),
            SignatureScheme::RSA_PKCS1_SHA384 => rsa_sign(pkcs1v15::SigningKey::<Sha384>::new(k), message),
            _ => rsa_sign(pkcs1v15::SigningKey::<Sha512>::new(k), message),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
