//! [`TlsListener`]: a TCP listener whose flows are TLS server connections,
//! so that a server written for TCP (`mirage_http::serve`) serves TLS.

use alloc::rc::Rc;
use alloc::sync::Arc;
use core::cell::{Cell, RefCell};
use core::net::SocketAddr;

use mirage_devices::flow::Flow;
use mirage_devices::stack::{self, TcpListener};
use rustls::ServerConfig;

use crate::flow::TlsServer;
use crate::limit::{Admit, HandshakeLimit, Hosts};

/// Accepts TCP connections on `L` and wraps each in a TLS server
/// connection. The handshake is not run here but on the connection's first
/// read, in the connection's own task and under its own timeouts, so that
/// a slow or silent client never holds up the next accept. A connection
/// from a host beyond its [`HandshakeLimit`] is reset here, before any
/// crypto, and counted ([`TlsListener::refused`]).
#[derive(Debug)]
pub struct TlsListener<L> {
    listener: L,
    config: Arc<ServerConfig>,
    limit: HandshakeLimit,
    hosts: RefCell<Hosts>,
    refused: Rc<Cell<u64>>,
}

impl<L: TcpListener> TlsListener<L> {
    /// Serves TLS with `config` on `listener`, each host held to `limit`;
    /// `seed` keys the table of hosts (a random number, which peers must
    /// not know). `Error::NoSpace` when the table cannot be allocated.
    pub fn new(
        listener: L,
        config: Arc<ServerConfig>,
        limit: HandshakeLimit,
        seed: u64,
    ) -> Result<TlsListener<L>, stack::Error> {
        let hosts = Hosts::new(limit, seed).ok_or(stack::Error::NoSpace)?;
        Ok(TlsListener { listener, config, limit, hosts: RefCell::new(hosts), refused: Rc::new(Cell::new(0)) })
    }

    /// The count of connections reset because their host was beyond its
    /// limit: a handle that can still be read once the listener has moved
    /// into a server.
    pub fn refused(&self) -> Rc<Cell<u64>> {
        self.refused.clone()
    }
}

impl<L: TcpListener> TcpListener for TlsListener<L> {
    type Flow = TlsServer<L::Flow>;

    async fn accept(&self) -> Result<(Self::Flow, SocketAddr), stack::Error> {
        loop {
            let (flow, peer) = self.listener.accept().await?;
            // The borrow ends here, before any await. Without a limit the
            // clock is not read (nor needed: any executor will do).
            let verdict = {
                let mut hosts = self.hosts.borrow_mut();
                if hosts.limits() { hosts.admit(peer.ip(), mirage_runtime::time::now().as_nanos()) } else { Admit::Yes }
            };
            if let Admit::No { first } = verdict {
                self.refused.set(self.refused.get() + 1);
                if first {
                    log::warn!(
                        target: "tls",
                        "{}: more than {} new connections a second ({} at once): reset until it slows down",
                        peer.ip(),
                        self.limit.per_second,
                        self.limit.burst
                    );
                }
                flow.abort().await;
                // A flood of connections must not keep this loop from
                // letting the connections already served run.
                mirage_runtime::yield_now().await;
                continue;
            }
            // rustls refuses a new connection only for a config it cannot
            // use (no protocol version in common with its provider): the
            // config here is made by `server_config`, which checks that.
            let tls = TlsServer::server(flow, self.config.clone()).map_err(|e| {
                log::error!(target: "tls", "{peer}: {e}");
                stack::Error::NoSpace
            })?;
            return Ok((tls, peer));
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
}
