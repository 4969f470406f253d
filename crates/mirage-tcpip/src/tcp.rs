//! TCP: listeners with a backlog, connections as flows.
//!
//! A listener owns `backlog` engine sockets listening on its port; each
//! takes one incoming connection. [`Listener::accept`] hands over a socket
//! whose handshake is done and puts a fresh listening socket in its place,
//! so up to `backlog` connections wait, fully established, for the
//! application. A flow that is dropped or closed sends its FIN and is left
//! to the driver, which removes its socket once the connection has ended.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::future::poll_fn;
use core::net::{IpAddr, SocketAddr};
use core::task::Poll;

use mirage_devices::flow;
use mirage_devices::stack::{self, Error};
use mirage_runtime::time::{Duration, Instant};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::{Inner, Stack};

/// How long a closed flow whose data and FIN were acknowledged waits for
/// the peer's FIN before it resets the connection.
const LINGER: Duration = Duration::from_secs(60);

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

pub(crate) fn from_endpoint(ep: IpEndpoint) -> SocketAddr {
    SocketAddr::new(IpAddr::from(ep.addr), ep.port)
}

impl Inner {
    /// A new TCP socket with the configured buffers and timers.
    fn tcp_socket(&mut self) -> SocketHandle {
        let n = self.config.tcp_buffer;
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; n]), tcp::SocketBuffer::new(vec![0; n]));
        s.set_keep_alive(self.config.keep_alive.map(to_smol));
        s.set_timeout(self.config.timeout.map(to_smol));
        // Applications write whole messages; Nagle's algorithm would only
        // hold back their last segment behind the peer's delayed ACK.
        s.set_nagle_enabled(false);
        self.sockets.add(s)
    }
}

/// The sockets of a listener: one listening, the others in or past their
/// handshake and not yet accepted.
pub(crate) struct Listening {
    sockets: Vec<SocketHandle>,
    backlog: usize,
}

impl Inner {
    fn new_listening(&mut self, port: u16) -> SocketHandle {
        let h = self.tcp_socket();
        // Cannot fail: the socket is new and the port is not 0.
        let _ = self.sockets.get_mut::<tcp::Socket>(h).listen(port);
        h
    }

    /// Makes sure the listener on `port` has a socket listening, unless its
    /// backlog is full; whether one listens. Sockets are made on demand, so
    /// a large backlog of large buffers costs memory only when used.
    pub(crate) fn replenish(&mut self, port: u16) -> bool {
        let Some(l) = self.listeners.get(&port) else { return false };
        let mut listening = false;
        for &h in &l.sockets {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if s.state() == State::Closed {
                // A connection came and went before it was accepted.
                let _ = s.listen(port);
            }
            listening |= s.state() == State::Listen;
        }
        if listening {
            return true;
        }
        if l.sockets.len() >= l.backlog {
            return false;
        }
        let h = self.new_listening(port);
        if let Some(l) = self.listeners.get_mut(&port) {
            l.sockets.push(h);
        }
        true
    }
}

/// A listening TCP socket.
pub struct Listener {
    stack: Stack,
    port: u16,
}

impl core::fmt::Debug for Listener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Listener").field("port", &self.port).finish()
    }
}

impl stack::TcpListener for Listener {
    type Flow = Flow;

    /// Waits for the next connection. One task at a time should accept on
    /// a listener (the engine keeps one waker per socket).
    async fn accept(&self) -> Result<(Flow, SocketAddr), Error> {
        poll_fn(|cx| {
            self.stack.with(|inner| {
                // A socket made here must get the waker too: a connection
                // completed on it would otherwise wake nobody.
                inner.replenish(self.port);
                let Some(l) = inner.listeners.get_mut(&self.port) else { return Poll::Ready(Err(Error::Io)) };
                let mut ready = None;
                for (i, &h) in l.sockets.iter().enumerate() {
                    let s = inner.sockets.get_mut::<tcp::Socket>(h);
                    match s.state() {
                        State::Listen | State::SynReceived | State::Closed => s.register_recv_waker(cx.waker()),
                        _ => {
                            if let Some(peer) = s.remote_endpoint() {
                                ready = Some((i, peer));
                                break;
                            }
                        }
                    }
                }
                let Some((i, peer)) = ready else { return Poll::Pending };
                let handle = l.sockets.swap_remove(i);
                inner.replenish(self.port);
                let flow = Flow { conn: Conn::new(self.stack.clone(), handle, None) };
                Poll::Ready(Ok((flow, from_endpoint(peer))))
            })
        })
        .await
    }

    fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED), self.port)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stack.with(|inner| {
            let Some(l) = inner.listeners.remove(&self.port) else { return };
            for h in l.sockets {
                let s = inner.sockets.get_mut::<tcp::Socket>(h);
                if matches!(s.state(), State::Listen | State::Closed) {
                    inner.sockets.remove(h);
                } else {
                    // A handshake in progress or a connection never
                    // accepted: reset it, then let the driver reap it.
                    s.abort();
                    inner.orphans.push((h, None, crate::now() + LINGER));
                }
            }
        });
        self.stack.kick();
    }
}

/// The socket of a connection, shared by a flow's halves.
struct Conn {
    stack: Stack,
    /// `None` once released.
    handle: Cell<Option<SocketHandle>>,
    /// The ephemeral port it holds, for connections this side opened.
    port: Cell<Option<u16>>,
}

impl Conn {
    fn new(stack: Stack, handle: SocketHandle, port: Option<u16>) -> Conn {
        Conn { stack, handle: Cell::new(Some(handle)), port: Cell::new(port) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> Result<R, flow::Error> {
        let h = self.handle.get().ok_or(flow::Error::Closed)?;
        Ok(self.stack.with(|inner| f(inner.sockets.get_mut::<tcp::Socket>(h))))
    }

    /// Hands the socket to the driver, which removes it when the
    /// connection is over; `abort` resets the connection now.
    fn release(&self, abort: bool) {
        let Some(h) = self.handle.take() else { return };
        let port = self.port.take();
        self.stack.with(|inner| {
            let s = inner.sockets.get_mut::<tcp::Socket>(h);
            if abort {
                s.abort();
            } else {
                s.close();
            }
            inner.orphans.push((h, port, crate::now() + LINGER));
        });
        self.stack.kick();
    }

    fn peer(&self) -> Option<SocketAddr> {
        self.with(|s| s.remote_endpoint().map(from_endpoint)).ok().flatten()
    }

    async fn read(&self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let r = poll_fn(|cx| {
            self.with(|s| match s.recv_slice(buf) {
                Ok(0) => {
                    s.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                Ok(n) => Poll::Ready(Ok(n)),
                Err(RecvError::Finished) => Poll::Ready(Ok(0)),
                Err(RecvError::InvalidState) => Poll::Ready(Err(dead(s))),
            })
            .unwrap_or_else(|e| Poll::Ready(Err(e)))
        })
        .await;
        if matches!(r, Ok(n) if n > 0) {
            // Reading opened the receive window: the driver may need to
            // tell the peer.
            self.stack.kick();
        }
        r
    }

    async fn write(&self, data: &[u8]) -> Result<usize, flow::Error> {
        if data.is_empty() {
            return Ok(0);
        }
        let r = poll_fn(|cx| {
            self.with(|s| {
                if !s.may_send() {
                    return Poll::Ready(Err(dead(s)));
                }
                match s.send_slice(data) {
                    Ok(0) => {
                        s.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    Ok(n) => Poll::Ready(Ok(n)),
                    Err(_) => Poll::Ready(Err(dead(s))),
                }
            })
            .unwrap_or_else(|e| Poll::Ready(Err(e)))
        })
        .await;
        if r.is_ok() {
            self.stack.kick();
        }
        r
    }

    async fn write_all(&self, mut data: &[u8]) -> Result<(), flow::Error> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), flow::Error> {
        poll_fn(|cx| {
            self.with(|s| {
                if s.send_queue() == 0 {
                    Poll::Ready(Ok(()))
                } else if s.state() == State::Closed {
                    Poll::Ready(Err(flow::Error::Reset))
                } else {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
            })
            .unwrap_or_else(|e| Poll::Ready(Err(e)))
        })
        .await
    }

    fn shutdown(&self) -> Result<(), flow::Error> {
        self.with(|s| s.close())?;
        self.stack.kick();
        Ok(())
    }
}

impl core::fmt::Debug for Conn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer()).finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.release(false);
    }
}

/// The error of a socket that can no longer carry data this way.
fn dead(s: &tcp::Socket) -> flow::Error {
    match s.state() {
        // Closed without the peer's FIN: it reset the connection, or it
        // stopped answering and the engine's timeout fired.
        State::Closed => flow::Error::Reset,
        _ => flow::Error::Closed,
    }
}

/// A TCP connection. Dropping it closes it (a FIN after the data already
/// written); [`Flow::abort`] resets it.
pub struct Flow {
    conn: Conn,
}

impl core::fmt::Debug for Flow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Flow").field("peer", &self.peer()).finish()
    }
}

impl Flow {
    /// The peer's address, while connected.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.conn.peer()
    }

    /// Bytes sent but not yet acknowledged, plus bytes not yet sent.
    pub fn send_queue(&self) -> usize {
        self.conn.with(|s| s.send_queue()).unwrap_or(0)
    }

    /// Resets the connection at once (an RST), dropping unsent data.
    pub fn abort(self) {
        self.conn.release(true);
    }

    /// Splits the flow into a reading and a writing half, for tasks that
    /// read and write at the same time. The connection closes when both
    /// halves are dropped.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        let conn = Rc::new(self.conn);
        (ReadHalf(conn.clone()), WriteHalf(conn))
    }
}

impl flow::Flow for Flow {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        self.conn.read(buf).await
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        self.conn.write(data).await
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        self.conn.flush().await
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.conn.shutdown()
    }

    async fn close(self) -> Result<(), flow::Error> {
        let r = match self.conn.with(|s| s.state()) {
            Ok(State::Closed) => Err(flow::Error::Reset),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        self.conn.release(false);
        r
    }
}

/// The reading half of a [`Flow`].
#[derive(Debug)]
pub struct ReadHalf(Rc<Conn>);

impl ReadHalf {
    /// As [`flow::Flow::read`].
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        self.0.read(buf).await
    }
}

/// The writing half of a [`Flow`].
#[derive(Debug)]
pub struct WriteHalf(Rc<Conn>);

impl WriteHalf {
    /// As [`flow::Flow::write`].
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        self.0.write(data).await
    }

    /// As [`flow::Flow::write_all`].
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), flow::Error> {
        self.0.write_all(data).await
    }

    /// As [`flow::Flow::flush`].
    pub async fn flush(&mut self) -> Result<(), flow::Error> {
        self.0.flush().await
    }

    /// As [`flow::Flow::shutdown`]: the peer reads the end of the stream.
    pub fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.0.shutdown()
    }
}

impl stack::Tcp for Stack {
    type Flow = Flow;
    type Listener = Listener;

    async fn listen(&self, port: u16, backlog: usize) -> Result<Listener, Error> {
        if port == 0 {
            return Err(Error::InvalidAddress);
        }
        self.with(|inner| {
            if inner.listeners.contains_key(&port) {
                return Err(Error::AddrInUse);
            }
            inner.listeners.insert(port, Listening { sockets: Vec::new(), backlog: backlog.clamp(1, 4096) });
            inner.replenish(port);
            Ok(())
        })?;
        self.kick();
        Ok(Listener { stack: self.clone(), port })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Flow, Error> {
        let remote = IpEndpoint::new(IpAddress::from(addr.ip()), addr.port());
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(Error::InvalidAddress);
        }
        let (handle, port) = self.with(|inner| {
            let port = inner.ephemeral_port().ok_or(Error::NoSpace)?;
            let h = inner.tcp_socket();
            let Inner { iface, sockets, .. } = inner;
            match sockets.get_mut::<tcp::Socket>(h).connect(iface.context(), remote, port) {
                Ok(()) => {
                    inner.tcp_ports.insert(port);
                    Ok((h, port))
                }
                Err(e) => {
                    sockets.remove(h);
                    Err(match e {
                        tcp::ConnectError::Unaddressable => Error::Unreachable,
                        tcp::ConnectError::InvalidState => Error::Io,
                    })
                }
            }
        })?;
        // The flow owns the socket from here: dropping it (on timeout)
        // releases the socket and the port.
        let flow = Flow { conn: Conn::new(self.clone(), handle, Some(port)) };
        self.kick();
        let deadline = self.with(|i| i.config.connect_timeout);
        let established = poll_fn(|cx| {
            let r = flow.conn.with(|s| match s.state() {
                State::SynSent | State::SynReceived => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                State::Closed => Poll::Ready(Err(Error::Refused)),
                _ => Poll::Ready(Ok(())),
            });
            r.unwrap_or(Poll::Ready(Err(Error::Io)))
        });
        match mirage_runtime::time::timeout(deadline, established).await {
            Ok(Ok(())) => Ok(flow),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                flow.abort();
                Err(Error::TimedOut)
            }
        }
    }
}

/// Resets and forgets the orphans whose linger time is over; removes those
/// whose connection ended.
pub(crate) fn reap(inner: &mut Inner, now: Instant) {
    let Inner { sockets, orphans, tcp_ports, .. } = inner;
    orphans.retain(|&(h, port, deadline)| {
        let s = sockets.get_mut::<tcp::Socket>(h);
        if s.state() == State::TimeWait {
            // The connection is over: both FINs are acknowledged (this
            // step's egress sent the last ACK). The engine would keep the
            // whole socket, buffers and all, for its 10 s of TIME-WAIT; a
            // server closing a few hundred connections a second would hold
            // hundreds of megabytes in them. Linux keeps a small record
            // instead; this keeps none. A FIN retransmitted because our
            // ACK was lost is answered with a reset, which ends the peer's
            // side as well, and a SYN reusing the address pair reaches a
            // listener at once.
            if let Some(p) = port {
                tcp_ports.remove(&p);
            }
            sockets.remove(h);
            return false;
        }
        if s.state() != State::Closed {
            // Until all it sent is acknowledged the engine retransmits, and
            // its timeout (`Config::timeout`) ends a connection whose peer
            // vanished. After that, a peer that never closes its side would
            // hold the socket forever: it is reset after `LINGER`, as Linux
            // does (tcp_fin_timeout).
            if s.state() == State::FinWait2 && now >= deadline {
                s.abort();
            }
            return true;
        }
        if s.remote_endpoint().is_some() {
            // Aborted: the engine sends the reset at its next egress and
            // only then forgets the peer.
            return true;
        }
        if let Some(p) = port {
            tcp_ports.remove(&p);
        }
        sockets.remove(h);
        false
    });
}
