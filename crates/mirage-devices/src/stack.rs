//! TCP/IP stacks (`Mirage_stack`): what both the host-socket stack of the
//! unix target and the direct stack over a network interface provide.

use core::fmt;
pub use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::flow::Flow;

/// Why a stack operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The local address or port is taken.
    AddrInUse,
    /// The peer refused the connection.
    Refused,
    /// No route to the peer.
    Unreachable,
    /// The peer did not answer in time.
    TimedOut,
    /// The address is not usable here (wrong family, not configured).
    InvalidAddress,
    /// No more sockets or buffers.
    NoSpace,
    /// The datagram is larger than the stack carries.
    TooLarge,
    /// The host or the stack failed.
    Io,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::AddrInUse => "address in use",
            Error::Refused => "connection refused",
            Error::Unreachable => "network unreachable",
            Error::TimedOut => "timed out",
            Error::InvalidAddress => "invalid address",
            Error::NoSpace => "no sockets or buffers left",
            Error::TooLarge => "datagram too large",
            Error::Io => "network stack failed",
        })
    }
}

/// A listening TCP socket.
pub trait TcpListener {
    /// The flows it accepts.
    type Flow: Flow;

    /// Waits for the next connection.
    async fn accept(&self) -> Result<(Self::Flow, SocketAddr), Error>;

    /// The address it listens on.
    fn local_addr(&self) -> SocketAddr;
}

/// TCP.
pub trait Tcp {
    /// A connection.
    type Flow: Flow;
    /// A listening socket.
    type Listener: TcpListener<Flow = Self::Flow>;

    /// Listens on `port` of every local address, queueing up to `backlog`
    /// connections not yet accepted.
    async fn listen(&self, port: u16, backlog: usize) -> Result<Self::Listener, Error>;

    /// Connects to `addr`.
    async fn connect(&self, addr: SocketAddr) -> Result<Self::Flow, Error>;
}

/// A UDP socket.
pub trait UdpSocket {
    /// Sends a datagram to `to`.
    async fn send_to(&self, data: &[u8], to: SocketAddr) -> Result<(), Error>;

    /// Waits for a datagram; its length (truncated to `buf`) and sender.
    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error>;

    /// The address it is bound to.
    fn local_addr(&self) -> SocketAddr;
}

/// UDP.
pub trait Udp {
    /// A bound socket.
    type Socket: UdpSocket;

    /// Binds `port` on every local address (0: any free port).
    async fn bind(&self, port: u16) -> Result<Self::Socket, Error>;
}

/// A TCP/IP stack: TCP, UDP and its addresses.
pub trait Stack: Tcp + Udp {
    /// The IPv4 address and prefix length, if configured.
    fn ipv4(&self) -> Option<(Ipv4Addr, u8)>;

    /// The IPv6 addresses, if any.
    fn ipv6(&self) -> alloc::vec::Vec<(Ipv6Addr, u8)> {
        alloc::vec::Vec::new()
    }
}
