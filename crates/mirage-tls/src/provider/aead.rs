//! Record protection: AES-GCM and ChaCha20-Poly1305 for TLS 1.3 and 1.2.
//!
//! Every length taken from a record is checked before it is used: a record
//! shorter than its tag (or than TLS 1.2's explicit nonce) is a decryption
//! error, never an underflow.

use alloc::boxed::Box;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::generic_array::typenum::U12;
use aes_gcm::aead::{AeadInPlace, Buffer, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use rustls::crypto::cipher::{
    self, AeadKey, BorrowedPayload, InboundOpaqueMessage, InboundPlainMessage, Iv, KeyBlockShape, MessageDecrypter,
    MessageEncrypter, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls12AeadAlgorithm,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion};

/// The authentication tag of every AEAD here.
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM carries 8 bytes of its nonce in each record (RFC 5288).
const GCM_EXPLICIT_NONCE_LEN: usize = 8;

/// One AEAD, as the record layer needs it.
pub(crate) trait Aead: AeadInPlace<NonceSize = U12> + KeyInit + Send + Sync + 'static {
    /// TLS 1.2: whether records carry an explicit nonce (GCM) or the nonce
    /// is the IV xor the sequence number (ChaCha20-Poly1305, RFC 7905).
    const EXPLICIT_NONCE: bool;
    /// The key and IV, for `dangerous_extract_secrets` (kernel TLS).
    fn secrets(key: AeadKey, iv: Iv) -> ConnectionTrafficSecrets;
}

impl Aead for Aes128Gcm {
    const EXPLICIT_NONCE: bool = true;
    fn secrets(key: AeadKey, iv: Iv) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
    }
}

impl Aead for Aes256Gcm {
    const EXPLICIT_NONCE: bool = true;
    fn secrets(key: AeadKey, iv: Iv) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    }
}

impl Aead for ChaCha20Poly1305 {
    const EXPLICIT_NONCE: bool = false;
    fn secrets(key: AeadKey, iv: Iv) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    }
}

/// The AEAD algorithm `A`, as a TLS 1.3 or TLS 1.2 record protection.
pub(crate) struct Algorithm<A>(core::marker::PhantomData<A>);

impl<A> Algorithm<A> {
    pub(crate) const fn new() -> Self {
        Algorithm(core::marker::PhantomData)
    }
}

fn key<A: Aead>(key: &AeadKey) -> A {
    // rustls derives keys of exactly `key_len()` bytes.
    A::new_from_slice(key.as_ref()).unwrap_or_else(|_| unreachable!("AEAD key of the wrong length"))
}

fn key_len<A: Aead>() -> usize {
    use aes_gcm::aead::KeySizeUser;
    <A as KeySizeUser>::key_size()
}

impl<A: Aead> Tls13AeadAlgorithm for Algorithm<A> {
    fn encrypter(&self, k: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Tls13Cipher { aead: key::<A>(&k), iv })
    }

    fn decrypter(&self, k: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Tls13Cipher { aead: key::<A>(&k), iv })
    }

    fn key_len(&self) -> usize {
        key_len::<A>()
    }

    fn extract_keys(&self, key: AeadKey, iv: Iv) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(A::secrets(key, iv))
    }
}

impl<A: Aead> Tls12AeadAlgorithm for Algorithm<A> {
    fn encrypter(&self, k: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        Box::new(Tls12Cipher { aead: key::<A>(&k), iv: tls12_iv::<A>(iv, extra) })
    }

    fn decrypter(&self, k: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        Box::new(Tls12Cipher { aead: key::<A>(&k), iv: tls12_iv::<A>(iv, &[]) })
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        if A::EXPLICIT_NONCE {
            KeyBlockShape { enc_key_len: key_len::<A>(), fixed_iv_len: 4, explicit_nonce_len: 8 }
        } else {
            KeyBlockShape { enc_key_len: key_len::<A>(), fixed_iv_len: 12, explicit_nonce_len: 0 }
        }
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(A::secrets(key, tls12_iv::<A>(iv, explicit)))
    }
}

/// The 12-byte nonce base: for GCM the 4-byte salt and 8 bytes that rustls
/// drew at random for the explicit part (the encrypter's; the decrypter
/// reads it from each record); for ChaCha20 the whole IV.
fn tls12_iv<A: Aead>(fixed: &[u8], extra: &[u8]) -> Iv {
    let mut iv = [0u8; 12];
    if A::EXPLICIT_NONCE {
        iv[..4].copy_from_slice(&fixed[..4]);
        let n = extra.len().min(8);
        iv[4..4 + n].copy_from_slice(&extra[..n]);
    } else {
        iv.copy_from_slice(&fixed[..12]);
    }
    Iv::new(iv)
}

struct Tls13Cipher<A> {
    aead: A,
    iv: Iv,
}

impl<A: Aead> MessageEncrypter for Tls13Cipher<A> {
    fn encrypt(&mut self, m: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, rustls::Error> {
        let total = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&m.payload);
        payload.extend_from_slice(&m.typ.to_array());
        let nonce = cipher::Nonce::new(&self.iv, seq).0;
        let aad = cipher::make_tls13_aad(total);
        self.aead
            .encrypt_in_place(GenericArray::from_slice(&nonce), &aad, &mut Encrypting(&mut payload))
            .map_err(|_| rustls::Error::EncryptError)?;
        Ok(OutboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl<A: Aead> MessageDecrypter for Tls13Cipher<A> {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, rustls::Error> {
        if m.payload.len() < TAG_LEN {
            return Err(rustls::Error::DecryptError);
        }
        let nonce = cipher::Nonce::new(&self.iv, seq).0;
        let aad = cipher::make_tls13_aad(m.payload.len());
        self.aead
            .decrypt_in_place(GenericArray::from_slice(&nonce), &aad, &mut Decrypting(&mut m.payload))
            .map_err(|_| rustls::Error::DecryptError)?;
        m.into_tls13_unpadded_message()
    }
}

struct Tls12Cipher<A> {
    aead: A,
    iv: Iv,
}

impl<A: Aead> MessageEncrypter for Tls12Cipher<A> {
    fn encrypt(&mut self, m: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, rustls::Error> {
        let total = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        let nonce = cipher::Nonce::new(&self.iv, seq).0;
        if A::EXPLICIT_NONCE {
            // The explicit part is the random value xor the sequence
            // number: unique per record, as RFC 5288 requires.
            payload.extend_from_slice(&nonce[4..]);
        }
        payload.extend_from_chunks(&m.payload);
        let aad = cipher::make_tls12_aad(seq, m.typ, m.version, m.payload.len());
        let start = if A::EXPLICIT_NONCE { GCM_EXPLICIT_NONCE_LEN } else { 0 };
        let mut body = Tail { payload: &mut payload, start };
        self.aead
            .encrypt_in_place(GenericArray::from_slice(&nonce), &aad, &mut body)
            .map_err(|_| rustls::Error::EncryptError)?;
        Ok(OutboundOpaqueMessage::new(m.typ, m.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + TAG_LEN + if A::EXPLICIT_NONCE { GCM_EXPLICIT_NONCE_LEN } else { 0 }
    }
}

impl<A: Aead> MessageDecrypter for Tls12Cipher<A> {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, rustls::Error> {
        let explicit = if A::EXPLICIT_NONCE { GCM_EXPLICIT_NONCE_LEN } else { 0 };
        let len = m.payload.len();
        if len < explicit + TAG_LEN {
            return Err(rustls::Error::DecryptError);
        }
        let nonce = if A::EXPLICIT_NONCE {
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&self.iv.as_ref()[..4]);
            n[4..].copy_from_slice(&m.payload[..GCM_EXPLICIT_NONCE_LEN]);
            n
        } else {
            cipher::Nonce::new(&self.iv, seq).0
        };
        let aad = cipher::make_tls12_aad(seq, m.typ, m.version, len - explicit - TAG_LEN);
        let body = &mut m.payload[explicit..];
        let mut plain = Slice { bytes: body, len: len - explicit };
        self.aead
            .decrypt_in_place(GenericArray::from_slice(&nonce), &aad, &mut plain)
            .map_err(|_| rustls::Error::DecryptError)?;
        let plain_len = plain.len;
        Ok(m.into_plain_message_range(explicit..explicit + plain_len))
    }
}

/// An outgoing payload as an `aead::Buffer` (it grows by the tag).
struct Encrypting<'a>(&'a mut PrefixedPayload);

impl AsRef<[u8]> for Encrypting<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl AsMut<[u8]> for Encrypting<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut()
    }
}

impl Buffer for Encrypting<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aes_gcm::aead::Result<()> {
        self.0.extend_from_slice(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.0.truncate(len)
    }
}

/// The part of an outgoing payload after the explicit nonce.
struct Tail<'a> {
    payload: &'a mut PrefixedPayload,
    start: usize,
}

impl AsRef<[u8]> for Tail<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.payload.as_ref()[self.start..]
    }
}

impl AsMut<[u8]> for Tail<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.payload.as_mut()[self.start..]
    }
}

impl Buffer for Tail<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aes_gcm::aead::Result<()> {
        self.payload.extend_from_slice(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.payload.truncate(self.start + len)
    }
}

/// An incoming payload as an `aead::Buffer`: decryption only shrinks it.
struct Decrypting<'a, 'p>(&'a mut BorrowedPayload<'p>);

impl AsRef<[u8]> for Decrypting<'_, '_> {
    fn as_ref(&self) -> &[u8] {
        self.0
    }
}

impl AsMut<[u8]> for Decrypting<'_, '_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0
    }
}

impl Buffer for Decrypting<'_, '_> {
    fn extend_from_slice(&mut self, _: &[u8]) -> aes_gcm::aead::Result<()> {
        // decrypt_in_place never grows its buffer.
        Err(aes_gcm::aead::Error)
    }

    fn truncate(&mut self, len: usize) {
        self.0.truncate(len)
    }
}

/// A mutable slice with a shrinking length, as an `aead::Buffer`.
struct Slice<'a> {
    bytes: &'a mut [u8],
    len: usize,
}

impl AsRef<[u8]> for Slice<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl AsMut<[u8]> for Slice<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

impl Buffer for Slice<'_> {
    fn extend_from_slice(&mut self, _: &[u8]) -> aes_gcm::aead::Result<()> {
        Err(aes_gcm::aead::Error)
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
