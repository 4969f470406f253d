//! The TLS devices the `mirage` tool wires (`kind = "tls"` in
//! mirage.toml): a [`Server`] with its certificates, or a [`Client`] with
//! its CA certificates, each loaded from a kv-ro store before start runs.
//! A unikernel uses them over its stack: `server.listen(&stack, 443, 128)`,
//! `client.connect(&stack, addr, "example.org")`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Debug;
use core::net::SocketAddr;

use mirage_devices::kv::{Key, KvRo};
use mirage_devices::stack::{self, Tcp, TcpListener};
use mirage_devices::time::WallClock;
use mirage_runtime::time::{Duration, timeout};
use pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

use crate::config::{self, ConfigError, ServerOptions};
use crate::flow::{Error, TlsClient};
use crate::limit::HandshakeLimit;
use crate::listener::TlsListener;

fn key(path: &str) -> Result<Key, ConfigError> {
    Key::parse(path).map_err(|e| ConfigError::Store(Key::root(), e))
}

fn protocols(alpn: &[&str]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// A TLS server: its configuration, certificates included, and how many
/// handshakes one host may start ([`HandshakeLimit::DEFAULT`] unless
/// [`Server::handshake_limit`] says otherwise).
#[derive(Debug, Clone)]
pub struct Server {
    config: Arc<ServerConfig>,
    limit: HandshakeLimit,
}

impl Server {
    /// Loads the certificate pairs of directory `dir` of `store` (see
    /// [`config`]), offering the ALPN protocols `alpn`, with time from
    /// `clock`. The random source must be installed first
    /// ([`crate::rng::install`]).
    pub async fn load<K, W>(store: &K, dir: &str, alpn: &[&str], clock: W) -> Result<Server, ConfigError>
    where
        K: KvRo,
        W: WallClock + Send + Sync + Debug + 'static,
    {
        let certs = config::load_certificates(store, &key(dir)?).await?;
        let names: Vec<&str> = certs.names().collect();
        log::info!(target: "tls", "server certificates: {}", names.join(", "));
        let options = ServerOptions { alpn: protocols(alpn) };
        Ok(Server::new(Arc::new(config::server_config(certs, &options, clock)?)))
    }

    /// A server of `config`.
    pub fn new(config: Arc<ServerConfig>) -> Server {
        Server { config, limit: HandshakeLimit::DEFAULT }
    }

    /// The same server, holding each host to `limit` new connections
    /// ([`HandshakeLimit::NONE`]: none).
    #[must_use]
    pub fn handshake_limit(self, limit: HandshakeLimit) -> Server {
        Server { limit, ..self }
    }

    /// Its configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Listens on TCP `port` of `tcp`: a listener whose flows are TLS.
    pub async fn listen<T: Tcp>(
        &self,
        tcp: &T,
        port: u16,
        backlog: usize,
    ) -> Result<TlsListener<T::Listener>, stack::Error> {
        self.serve_on(tcp.listen(port, backlog).await?)
    }

    /// Serves TLS on the connections of `listener`. `Error::NoSpace` when
    /// the table of hosts' allowances (24 KiB) cannot be allocated, or the
    /// random source (installed by [`crate::rng::install`]) fails.
    pub fn serve_on<L: TcpListener>(&self, listener: L) -> Result<TlsListener<L>, stack::Error> {
        let mut seed = [0; 8];
        crate::rng::fill(&mut seed).map_err(|_| stack::Error::NoSpace)?;
        TlsListener::new(listener, self.config.clone(), self.limit, u64::from_le_bytes(seed))
    }
}

/// How long [`Client::connect`] gives the server to complete the handshake
/// once the TCP connection is made, unless [`Client::handshake_wait`] says
/// otherwise: as long as the HTTP server gives a client for its headers.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

/// A TLS client: its configuration, trusted CAs included.
#[derive(Debug, Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    handshake_wait: Duration,
}

impl Client {
    /// Trusts the CA certificates of the PEM file `ca_file` of `store`,
    /// asks for the ALPN protocols `alpn`, judges validity by `clock`.
    pub async fn load<K, W>(store: &K, ca_file: &str, alpn: &[&str], clock: W) -> Result<Client, ConfigError>
    where
        K: KvRo,
        W: WallClock + Send + Sync + Debug + 'static,
    {
        let roots = config::load_roots(store, &key(ca_file)?).await?;
        Ok(Client::new(Arc::new(config::client_config(roots, protocols(alpn), clock)?)))
    }

    /// A client of `config`.
    pub fn new(config: Arc<ClientConfig>) -> Client {
        Client { config, handshake_wait: HANDSHAKE_WAIT }
    }

    /// The same client, giving servers `wait` to complete a handshake
    /// (the default is [`HANDSHAKE_WAIT`]).
    #[must_use]
    pub fn handshake_wait(self, wait: Duration) -> Client {
        Client { handshake_wait: wait, ..self }
    }

    /// Its configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Connects to `addr` over `tcp` and runs the handshake; the server's
    /// certificate must be valid for `name` (a DNS name or an IP address).
    /// A server that accepts the connection and then stalls the handshake
    /// costs at most the handshake wait: [`Error::HandshakeTimeout`].
    pub async fn connect<T: Tcp>(&self, tcp: &T, addr: SocketAddr, name: &str) -> Result<TlsClient<T::Flow>, Error> {
        let server = ServerName::try_from(String::from(name)).map_err(|_| Error::Name(String::from(name)))?;
        let flow = tcp.connect(addr).await.map_err(Error::Connect)?;
        let mut tls = TlsClient::client(flow, self.config.clone(), server)?;
        match timeout(self.handshake_wait, tls.handshake()).await {
            Ok(done) => done?,
            Err(_) => {
                // The flow is dropped, which resets or closes the TCP
                // connection: nothing is left waiting on the server.
                return Err(Error::HandshakeTimeout(self.handshake_wait));
            }
        }
        Ok(tls)
    }
}
