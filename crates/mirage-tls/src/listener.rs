//! [`TlsListener`]: a TCP listener whose flows are TLS server connections,
//! so that a server written for TCP (`mirage_http::serve`) serves TLS.

use alloc::sync::Arc;
use core::net::SocketAddr;

use mirage_devices::stack::{self, TcpListener};
use rustls::ServerConfig;

use crate::flow::TlsServer;

/// Accepts TCP connections on `L` and wraps each in a TLS server
/// connection. The handshake is not run here but on the connection's first
/// read, in the connection's own task and under its own timeouts, so that
/// a slow or silent client never holds up the next accept.
#[derive(Debug)]
pub struct TlsListener<L> {
    listener: L,
    config: Arc<ServerConfig>,
}

impl<L: TcpListener> TlsListener<L> {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: L, config: Arc<ServerConfig>) -> TlsListener<L> {
        TlsListener { listener, config }
    }
}

impl<L: TcpListener> TcpListener for TlsListener<L> {
    type Flow = TlsServer<L::Flow>;

    async fn accept(&self) -> Result<(Self::Flow, SocketAddr), stack::Error> {
        let (flow, peer) = self.listener.accept().await?;
        // rustls refuses a new connection only for a config it cannot use
        // (no protocol version in common with its provider): the config
        // here is made by `server_config`, which checks that.
        let tls = TlsServer::server(flow, self.config.clone()).map_err(|e| {
            log::error!(target: "tls", "{peer}: {e}");
            stack::Error::NoSpace
        })?;
        Ok((tls, peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
}
