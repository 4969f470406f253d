//! Server and client configurations: certificates and keys from a kv-ro
//! store, SNI, ALPN, session tickets, CA certificates, the wall clock.
//!
//! A certificate store is a directory of a [`KvRo`] store holding pairs
//! `NAME.pem` (the chain, end entity first) and `NAME.key` (its private
//! key: ECDSA P-256, Ed25519 or RSA, PKCS#8, SEC1 or PKCS#1 PEM). The
//! server answers each client with the first pair (in name order) whose
//! certificate is valid for the name it asked for (SNI) and whose key can
//! sign with a scheme it offers; a client that names nothing, or a name no
//! certificate covers, gets the first pair that fits its schemes (and a
//! client whose schemes no key fits, the first pair, which rustls then
//! refuses with a handshake_failure alert).

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit};
use mirage_devices::kv::{self, Key, Kind, KvRo};
use mirage_devices::time::WallClock;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::lock::{Lock, MakeMutex, MutexGuard, Poisoned};
use rustls::server::{ClientHello, ParsedCertificate, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::time_provider::TimeProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{provider, rng};

/// Why a configuration could not be made.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No random source is installed ([`rng::install`]) or it is weak.
    Random(rng::WeakRandom),
    /// The store could not be read.
    Store(Key, kv::Error),
    /// A file is not the PEM it should be.
    Pem(Key, String),
    /// rustls refused a key or a certificate.
    Tls(Key, rustls::Error),
    /// The certificate directory holds no `NAME.pem` with its `NAME.key`.
    NoCertificates(Key),
    /// A CA file holds no certificate.
    NoRoots(Key),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Random(e) => write!(f, "{e}"),
            ConfigError::Store(k, e) => write!(f, "TLS: cannot read {k} from the certificate store: {e}"),
            ConfigError::Pem(k, why) => write!(f, "TLS: {k}: {why}"),
            ConfigError::Tls(k, e) => write!(f, "TLS: {k}: {e}"),
            ConfigError::NoCertificates(k) => write!(
                f,
                "TLS: the certificate store has no certificate in {k}: put a chain NAME.pem and its private key NAME.key there"
            ),
            ConfigError::NoRoots(k) => write!(f, "TLS: {k} holds no PEM CERTIFICATE block to trust"),
        }
    }
}

/// The unikernel's wall clock as rustls' time: certificate validity and
/// ticket ages are judged by it.
#[derive(Debug)]
pub struct WallTime<W>(pub W);

impl<W: WallClock + Send + Sync + fmt::Debug> TimeProvider for WallTime<W> {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(core::time::Duration::from_nanos(self.0.now().0)))
    }
}

/// rustls' locks on `no_std`: spin locks. The executor runs one task at a
/// time and no lock is held across an await, so they are never contended
/// in a unikernel (tests on unix run several threads).
#[derive(Debug)]
pub struct SpinLock;

struct SpinMutex<T>(spin::Mutex<T>);

impl<T> fmt::Debug for SpinMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpinMutex")
    }
}

impl<T: Send> Lock<T> for SpinMutex<T> {
    fn lock(&self) -> Result<MutexGuard<'_, T>, Poisoned> {
        Ok(Box::new(self.0.lock()))
    }
}

impl MakeMutex for SpinLock {
    fn make_mutex<T: Send + 'static>(value: T) -> Arc<dyn Lock<T>> {
        Arc::new(SpinMutex(spin::Mutex::new(value)))
    }
}

/// How long a session ticket is valid (six hours, as rustls' own
/// ticketers); the ticket key changes every such period and the previous
/// key is kept one more, so a ticket lives at most two periods.
pub const TICKET_LIFETIME: u32 = 6 * 3600;

/// Session tickets (RFC 5077, RFC 8446 section 4.6.1), sealed with
/// ChaCha20-Poly1305 under a key drawn from [`rng`] and rotated on the
/// wall clock. A ticket is: key name (8 bytes), nonce (12), sealed state.
pub struct Ticketer {
    keys: spin::Mutex<TicketKeys>,
    time: Arc<dyn TimeProvider>,
}

struct TicketKey {
    name: [u8; 8],
    aead: ChaCha20Poly1305,
}

struct TicketKeys {
    current: TicketKey,
    previous: Option<TicketKey>,
    /// Wall-clock seconds when `current` was made.
    since: u64,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticketer")
    }
}

fn ticket_key() -> Option<TicketKey> {
    let mut k = [0u8; 40];
    rng::fill(&mut k).ok()?;
    let mut name = [0u8; 8];
    name.copy_from_slice(&k[..8]);
    let aead = ChaCha20Poly1305::new_from_slice(&k[8..]).ok()?;
    zeroize::Zeroize::zeroize(&mut k);
    Some(TicketKey { name, aead })
}

impl Ticketer {
    /// A ticketer with a fresh key.
    pub fn new(time: Arc<dyn TimeProvider>) -> Result<Ticketer, rustls::Error> {
        let current = ticket_key().ok_or(rustls::Error::FailedToGetRandomBytes)?;
        let since = time.current_time().map_or(0, |t| t.as_secs());
        Ok(Ticketer { keys: spin::Mutex::new(TicketKeys { current, previous: None, since }), time })
    }

    fn rotate(&self, keys: &mut TicketKeys) {
        let now = self.time.current_time().map_or(0, |t| t.as_secs());
        if now.saturating_sub(keys.since) >= u64::from(TICKET_LIFETIME)
            && let Some(next) = ticket_key()
        {
            keys.previous = Some(core::mem::replace(&mut keys.current, next));
            keys.since = now;
        }
    }
}

const TICKET_HEADER: usize = 8 + 12;

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut keys = self.keys.lock();
        self.rotate(&mut keys);
        let mut nonce = [0u8; 12];
        rng::fill(&mut nonce).ok()?;
        let sealed = keys.current.aead.encrypt((&nonce).into(), plain).ok()?;
        let mut out = Vec::with_capacity(TICKET_HEADER + sealed.len());
        out.extend_from_slice(&keys.current.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < TICKET_HEADER + 16 {
            return None;
        }
        let (name, rest) = ticket.split_at(8);
        let (nonce, sealed) = rest.split_at(12);
        let mut keys = self.keys.lock();
        self.rotate(&mut keys);
        let key = [Some(&keys.current), keys.previous.as_ref()].into_iter().flatten().find(|k| k.name == name)?;
        key.aead.decrypt(nonce.into(), sealed).ok()
    }
}

/// The server's certificates, chosen by SNI and by the client's schemes.
#[derive(Debug)]
pub struct Certificates {
    keys: Vec<(String, Arc<CertifiedKey>)>,
}

impl Certificates {
    /// Certificates given as (name, chain and key) pairs; the first is the
    /// default.
    pub fn new(keys: Vec<(String, Arc<CertifiedKey>)>) -> Certificates {
        Certificates { keys }
    }

    /// The names of the pairs, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(n, _)| n.as_str())
    }

    fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
        let Some(end) = key.cert.first() else { return false };
        ParsedCertificate::try_from(end).is_ok_and(|c| rustls::client::verify_server_name(&c, name).is_ok())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        let fits = |k: &CertifiedKey| k.key.choose_scheme(schemes).is_some();
        let sni = hello.server_name().and_then(|n| ServerName::try_from(n).ok());
        if let Some(name) = &sni
            && let Some((_, k)) = self.keys.iter().find(|(_, k)| fits(k) && Self::covers(k, name))
        {
            return Some(k.clone());
        }
        // None would make rustls answer access_denied; the first pair lets
        // it refuse with the usual handshake_failure instead.
        self.keys.iter().find(|(_, k)| fits(k)).or(self.keys.first()).map(|(_, k)| k.clone())
    }
}

async fn read<K: KvRo>(kv: &K, key: &Key) -> Result<Vec<u8>, ConfigError> {
    kv.get(key).await.map_err(|e| ConfigError::Store(key.clone(), e))
}

/// Parses a PEM chain and its private key into a signing key.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8], chain: &Key, key: &Key) -> Result<CertifiedKey, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::Pem(chain.clone(), e.to_string()))?;
    if certs.is_empty() {
        return Err(ConfigError::Pem(chain.clone(), String::from("no PEM CERTIFICATE block")));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        ConfigError::Pem(
            key.clone(),
            alloc::format!("no private key in PEM (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY): {e}"),
        )
    })?;
    let signing = provider::sign::load(&private).map_err(|e| ConfigError::Tls(key.clone(), e))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| ConfigError::Tls(key.clone(), e))?;
    Ok(ck)
}

/// Loads every `NAME.pem` + `NAME.key` pair of the directory `dir`.
pub async fn load_certificates<K: KvRo>(kv: &K, dir: &Key) -> Result<Certificates, ConfigError> {
    let mut entries = kv.list(dir).await.map_err(|e| ConfigError::Store(dir.clone(), e))?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keys = Vec::new();
    for (k, kind) in &entries {
        let Some(stem) = k.basename().strip_suffix(".pem") else { continue };
        if *kind != Kind::Value {
            continue;
        }
        let key_key = dir.join(&alloc::format!("{stem}.key")).map_err(|e| ConfigError::Store(k.clone(), e))?;
        if !entries.iter().any(|(e, _)| *e == key_key) {
            continue;
        }
        let ck = certified_key(&read(kv, k).await?, &read(kv, &key_key).await?, k, &key_key)?;
        keys.push((String::from(stem), Arc::new(ck)));
    }
    if keys.is_empty() {
        return Err(ConfigError::NoCertificates(dir.clone()));
    }
    Ok(Certificates::new(keys))
}

/// What a server offers besides its certificates.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// ALPN protocols in order of preference (`b"http/1.1"`); empty for no
    /// ALPN.
    pub alpn: Vec<Vec<u8>>,
}

fn provider_checked() -> Result<Arc<CryptoProvider>, ConfigError> {
    if !rng::installed() {
        return Err(ConfigError::Random(rng::WeakRandom("no random source installed: call mirage_tls::rng::install")));
    }
    Ok(Arc::new(provider::provider()))
}

/// A server configuration: TLS 1.3 and 1.2, these certificates, session
/// tickets and a bounded session cache, time from `clock`.
pub fn server_config<W>(certs: Certificates, options: &ServerOptions, clock: W) -> Result<ServerConfig, ConfigError>
where
    W: WallClock + Send + Sync + fmt::Debug + 'static,
{
    let provider = provider_checked()?;
    let time: Arc<dyn TimeProvider> = Arc::new(WallTime(clock));
    let root = Key::root();
    let mut config = ServerConfig::builder_with_details(provider, time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::Tls(root.clone(), e))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = options.alpn.clone();
    // TLS 1.2 session ids: a bounded cache (rustls evicts the oldest).
    config.session_storage = ServerSessionMemoryCache::new::<SpinLock>(1024);
    config.ticketer = Arc::new(Ticketer::new(time).map_err(|e| ConfigError::Tls(root, e))?);
    config.send_tls13_tickets = 2;
    Ok(config)
}

/// Parses a PEM bundle of CA certificates.
pub fn roots(pem: &[u8], from: &Key) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| ConfigError::Pem(from.clone(), e.to_string()))?;
        store.add(cert).map_err(|e| ConfigError::Tls(from.clone(), e))?;
    }
    if store.is_empty() {
        return Err(ConfigError::NoRoots(from.clone()));
    }
    Ok(store)
}

/// Loads the CA certificates of the PEM file `key`.
pub async fn load_roots<K: KvRo>(kv: &K, key: &Key) -> Result<RootCertStore, ConfigError> {
    roots(&read(kv, key).await?, key)
}

/// A client configuration: TLS 1.3 and 1.2, servers verified against
/// `roots` at the time of `clock`, resumption by tickets.
pub fn client_config<W>(roots: RootCertStore, alpn: Vec<Vec<u8>>, clock: W) -> Result<ClientConfig, ConfigError>
where
    W: WallClock + Send + Sync + fmt::Debug + 'static,
{
    let provider = provider_checked()?;
    let root = Key::root();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ConfigError::Tls(root.clone(), rustls::Error::General(e.to_string())))?;
    let mut config = ClientConfig::builder_with_details(provider, Arc::new(WallTime(clock)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError::Tls(root, e))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    config.resumption =
        rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new::<SpinLock>(64)));
    Ok(config)
}
