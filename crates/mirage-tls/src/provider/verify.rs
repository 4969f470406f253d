//! Signature verification, for certificate chains (webpki) and handshake
//! signatures: ECDSA P-256 and P-384, Ed25519, RSA PKCS#1 v1.5 and PSS.
//!
//! Each verifier parses the public key and signature itself and answers
//! `InvalidSignature` for anything malformed.

use pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm, alg_id};
use rustls::SignatureScheme;
use rustls::crypto::WebPkiSupportedAlgorithms;
use signature::Verifier;

#[derive(Debug)]
struct EcdsaP256Sha256;
#[derive(Debug)]
struct EcdsaP256Sha384;
#[derive(Debug)]
struct EcdsaP384Sha384;
#[derive(Debug)]
struct EcdsaP384Sha256;
#[derive(Debug)]
struct Ed25519;

macro_rules! ecdsa {
    ($name:ident, $curve:ident, $digest:ty, $key_alg:expr, $sig_alg:expr) => {
        impl SignatureVerificationAlgorithm for $name {
            fn verify_signature(
                &self,
                public_key: &[u8],
                message: &[u8],
                signature: &[u8],
            ) -> Result<(), InvalidSignature> {
                use sha2::Digest;
                use signature::hazmat::PrehashVerifier;
                let key = $curve::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
                let sig = $curve::ecdsa::DerSignature::try_from(signature).map_err(|_| InvalidSignature)?;
                let sig = $curve::ecdsa::Signature::try_from(sig).map_err(|_| InvalidSignature)?;
                key.verify_prehash(&<$digest>::digest(message), &sig).map_err(|_| InvalidSignature)
            }

            fn public_key_alg_id(&self) -> AlgorithmIdentifier {
                $key_alg
            }

            fn signature_alg_id(&self) -> AlgorithmIdentifier {
                $sig_alg
            }
        }
    };
}

ecdsa!(EcdsaP256Sha256, p256, sha2::Sha256, alg_id::ECDSA_P256, alg_id::ECDSA_SHA256);
ecdsa!(EcdsaP256Sha384, p256, sha2::Sha384, alg_id::ECDSA_P256, alg_id::ECDSA_SHA384);
ecdsa!(EcdsaP384Sha384, p384, sha2::Sha384, alg_id::ECDSA_P384, alg_id::ECDSA_SHA384);
ecdsa!(EcdsaP384Sha256, p384, sha2::Sha256, alg_id::ECDSA_P384, alg_id::ECDSA_SHA256);

impl SignatureVerificationAlgorithm for Ed25519 {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        let key: &[u8; 32] = public_key.try_into().map_err(|_| InvalidSignature)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|_| InvalidSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| InvalidSignature)?;
        key.verify_strict(message, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }
}

/// RSA keys shorter than this are refused (as webpki and browsers do).
const RSA_MIN_BITS: usize = 2048;
/// Longer keys would let a peer make us spend seconds per signature.
const RSA_MAX_BITS: usize = 8192;

fn rsa_key(der: &[u8]) -> Result<rsa::RsaPublicKey, InvalidSignature> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|_| InvalidSignature)?;
    let bits = key.n().bits();
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(InvalidSignature);
    }
    Ok(key)
}

macro_rules! rsa {
    ($name:ident, $scheme:ident, $digest:ty, $sig_alg:expr) => {
        #[derive(Debug)]
        struct $name;

        impl SignatureVerificationAlgorithm for $name {
            fn verify_signature(
                &self,
                public_key: &[u8],
                message: &[u8],
                signature: &[u8],
            ) -> Result<(), InvalidSignature> {
                let key = rsa::$scheme::VerifyingKey::<$digest>::new(rsa_key(public_key)?);
                let sig = rsa::$scheme::Signature::try_from(signature).map_err(|_| InvalidSignature)?;
                key.verify(message, &sig).map_err(|_| InvalidSignature)
            }

            fn public_key_alg_id(&self) -> AlgorithmIdentifier {
                alg_id::RSA_ENCRYPTION
            }

            fn signature_alg_id(&self) -> AlgorithmIdentifier {
                $sig_alg
            }
        }
    };
}

rsa!(RsaPkcs1Sha256, pkcs1v15, sha2::Sha256, alg_id::RSA_PKCS1_SHA256);
rsa!(RsaPkcs1Sha384, pkcs1v15, sha2::Sha384, alg_id::RSA_PKCS1_SHA384);
rsa!(RsaPkcs1Sha512, pkcs1v15, sha2::Sha512, alg_id::RSA_PKCS1_SHA512);
rsa!(RsaPssSha256, pss, sha2::Sha256, alg_id::RSA_PSS_SHA256);
rsa!(RsaPssSha384, pss, sha2::Sha384, alg_id::RSA_PSS_SHA384);
rsa!(RsaPssSha512, pss, sha2::Sha512, alg_id::RSA_PSS_SHA512);

/// What the provider verifies: every algorithm for chains, and for each
/// handshake signature scheme the algorithms that implement it.
pub(crate) static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        &EcdsaP256Sha256,
        &EcdsaP256Sha384,
        &EcdsaP384Sha384,
        &EcdsaP384Sha256,
        &Ed25519,
        &RsaPkcs1Sha256,
        &RsaPkcs1Sha384,
        &RsaPkcs1Sha512,
        &RsaPssSha256,
        &RsaPssSha384,
        &RsaPssSha512,
    ],
    mapping: &[
        (SignatureScheme::ECDSA_NISTP384_SHA384, &[&EcdsaP384Sha384, &EcdsaP256Sha384]),
        (SignatureScheme::ECDSA_NISTP256_SHA256, &[&EcdsaP256Sha256, &EcdsaP384Sha256]),
        (SignatureScheme::ED25519, &[&Ed25519]),
        (SignatureScheme::RSA_PSS_SHA512, &[&RsaPssSha512]),
        (SignatureScheme::RSA_PSS_SHA384, &[&RsaPssSha384]),
        (SignatureScheme::RSA_PSS_SHA256, &[&RsaPssSha256]),
        (SignatureScheme::RSA_PKCS1_SHA512, &[&RsaPkcs1Sha512]),
        (SignatureScheme::RSA_PKCS1_SHA384, &[&RsaPkcs1Sha384]),
        (SignatureScheme::RSA_PKCS1_SHA256, &[&RsaPkcs1Sha256]),
    ],
};
