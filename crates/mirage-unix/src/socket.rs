//! The socket stack: TCP and UDP over the host's own sockets, non-blocking,
//! driven by the executor's `ppoll`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;

use mirage_devices::flow::{self, Flow};
use mirage_devices::stack::{self, Stack, Tcp, TcpListener as _, Udp};
use mirage_runtime::{Interest, Source, io};
use socket2::{Domain, Protocol, Socket, Type};

fn stack_err(e: &std::io::Error) -> stack::Error {
    match e.kind() {
        ErrorKind::AddrInUse => stack::Error::AddrInUse,
        ErrorKind::ConnectionRefused => stack::Error::Refused,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => stack::Error::Unreachable,
        ErrorKind::TimedOut => stack::Error::TimedOut,
        ErrorKind::AddrNotAvailable | ErrorKind::InvalidInput => stack::Error::InvalidAddress,
        _ => stack::Error::Io,
    }
}

fn flow_err(e: &std::io::Error) -> flow::Error {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => flow::Error::Reset,
        ErrorKind::TimedOut => flow::Error::TimedOut,
        _ => flow::Error::Io,
    }
}

fn source(fd: &impl AsRawFd) -> Source {
    Source(fd.as_raw_fd() as u64)
}

/// TCP and UDP through the host's network stack. Listening sockets bind
/// every host address; the unikernel's addresses are the host's.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketStack;

/// A listening TCP socket.
#[derive(Debug)]
pub struct SocketListener {
    listener: TcpListener,
    addr: SocketAddr,
}

/// A TCP connection.
#[derive(Debug)]
pub struct TcpFlow {
    stream: TcpStream,
    write_shut: bool,
}

/// A UDP socket.
#[derive(Debug)]
pub struct SocketUdp {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Tcp for SocketStack {
    type Flow = TcpFlow;
    type Listener = SocketListener;

    async fn listen(&self, port: u16, backlog: usize) -> Result<SocketListener, stack::Error> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| stack_err(&e))?;
        s.set_reuse_address(true).map_err(|e| stack_err(&e))?;
        s.set_nonblocking(true).map_err(|e| stack_err(&e))?;
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        s.bind(&addr.into()).map_err(|e| stack_err(&e))?;
        s.listen(backlog.clamp(1, i32::MAX as usize) as i32).map_err(|e| stack_err(&e))?;
        let listener: TcpListener = s.into();
        let addr = listener.local_addr().map_err(|e| stack_err(&e))?;
        Ok(SocketListener { listener, addr })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpFlow, stack::Error> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| stack_err(&e))?;
        s.set_nonblocking(true).map_err(|e| stack_err(&e))?;
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                io::ready(source(&s), Interest::Write).await;
                if let Some(e) = s.take_error().map_err(|e| stack_err(&e))? {
                    return Err(stack_err(&e));
                }
            }
            Err(e) => return Err(stack_err(&e)),
        }
        let stream: TcpStream = s.into();
        let _ = stream.set_nodelay(true);
        Ok(TcpFlow { stream, write_shut: false })
    }
}

impl stack::TcpListener for SocketListener {
    type Flow = TcpFlow;

    async fn accept(&self) -> Result<(TcpFlow, SocketAddr), stack::Error> {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    stream.set_nonblocking(true).map_err(|e| stack_err(&e))?;
                    let _ = stream.set_nodelay(true);
                    return Ok((TcpFlow { stream, write_shut: false }, peer));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    io::ready(source(&self.listener), Interest::Read).await;
                }
                // A connection that died in the backlog: take the next one;
                // so for the network errors accept(2) passes on from the
                // connection, which it says to treat as EAGAIN.
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(
                            libc::ENETDOWN
                                | libc::EPROTO
                                | libc::ENOPROTOOPT
                                | libc::EHOSTDOWN
                                | libc::ENONET
                                | libc::EHOSTUNREACH
                                | libc::EOPNOTSUPP
                                | libc::ENETUNREACH
                        )
                    ) => {}
                // Out of descriptors or memory: this connection cannot be
                // taken now, and the listener is still there.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    return Err(stack::Error::NoSpace);
                }
                Err(e) => return Err(stack_err(&e)),
            }
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl SocketListener {
    /// The port it listens on (useful after listening on port 0).
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }
}

impl Flow for TcpFlow {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    io::ready(source(&self.stream), Interest::Read).await;
                }
                Err(e) => return Err(flow_err(&e)),
            }
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        if self.write_shut {
            return Err(flow::Error::Closed);
        }
        if data.is_empty() {
            return Ok(0);
        }
        loop {
            match self.stream.write(data) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    io::ready(source(&self.stream), Interest::Write).await;
                }
                Err(e) => return Err(flow_err(&e)),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.write_shut = true;
        match self.stream.shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(flow_err(&e)),
        }
    }

    async fn close(self) -> Result<(), flow::Error> {
        drop(self.stream);
        Ok(())
    }

    /// A zero linger time makes the kernel's close a reset, unsent data
    /// dropped, rather than a FIN queued behind it.
    async fn abort(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(std::time::Duration::ZERO));
        drop(self.stream);
    }
}

impl Udp for SocketStack {
    type Socket = SocketUdp;

    async fn bind(&self, port: u16) -> Result<SocketUdp, stack::Error> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| stack_err(&e))?;
        socket.set_nonblocking(true).map_err(|e| stack_err(&e))?;
        let addr = socket.local_addr().map_err(|e| stack_err(&e))?;
        Ok(SocketUdp { socket, addr })
    }
}

impl stack::UdpSocket for SocketUdp {
    async fn send_to(&self, data: &[u8], to: SocketAddr) -> Result<(), stack::Error> {
        loop {
            match self.socket.send_to(data, to) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    io::ready(source(&self.socket), Interest::Write).await;
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Err(stack::Error::TooLarge),
                Err(e) => return Err(stack_err(&e)),
            }
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), stack::Error> {
        loop {
            match self.socket.recv_from(buf) {
                Ok(r) => return Ok(r),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                    io::ready(source(&self.socket), Interest::Read).await;
                }
                Err(e) => return Err(stack_err(&e)),
            }
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Stack for SocketStack {
    fn ipv4(&self) -> Option<(Ipv4Addr, u8)> {
        None
    }
}
