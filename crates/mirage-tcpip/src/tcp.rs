//! TCP: listeners with a backlog, connections as flows.
//!
//! A listener holds no socket: the adapter answers the handshakes for its
//! port ([`crate::handshake`]) and the driver puts each completed
//! connection's socket in the listener's queue, waking the task that
//! waits in [`Listener::accept`]. While `backlog` connections wait there,
//! new SYNs are dropped (the clients retry). A flow that is dropped or
//! closed sends its FIN and is left to the driver (an orphan), which
//! removes its socket once the connection has ended, keeps a small record
//! instead while the peer has yet to close its side, and resets it when a
//! per-state timeout passes or the heap is past its budget.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use core::cell::Cell;
use core::future::poll_fn;
use core::net::{IpAddr, SocketAddr};
use core::task::{Poll, Waker};

use mirage_devices::flow;
use mirage_devices::stack::{self, Error};
use mirage_runtime::time::{Duration, Instant};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::conns::{Record, Tuple};
use crate::device::buffer;
use crate::inbound::Linger;
use crate::{Inner, Stack};

fn to_smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

pub(crate) fn from_endpoint(ep: IpEndpoint) -> SocketAddr {
    SocketAddr::new(IpAddr::from(ep.addr), ep.port)
}

/// A connection handed over by the application (or never accepted), for
/// the driver to see to its end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Orphan {
    handle: SocketHandle,
    tuple: Option<Tuple>,
    /// The ephemeral port it holds, for connections this side opened.
    port: Option<u16>,
    /// When its data and FIN last made progress.
    progress: Instant,
    /// Bytes it had still to send at the last look.
    queued: usize,
    /// When it was handed over, and the bytes it had to send then: its
    /// pace since, for whether a new connection waits for it.
    since: Instant,
    at_start: usize,
}

/// How long an orphan's data may take to leave at its pace so far: one
/// slower is shed for a new connection, as one stalled is. Otherwise a
/// peer reading its response a kilobyte at a time (always some progress,
/// never stalled) would hold new connections out for as long as it
/// liked.
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How long an orphan's pace is watched, at least, before it is judged:
/// long enough for slow start over a long path to show its pace (a
/// megabyte over 100 ms round trips looks four seconds from done at 700
/// ms, and is done at 1.2 s), short enough that newcomers wait about a
/// second at most for orphans read at a trickle.
const PACE_WATCH: Duration = Duration::from_secs(1);

impl Inner {
    /// The receive buffer of a connection made now (its send buffer is
    /// `Config::send_buffer`'s): the largest
    /// (`Config::tcp_buffer_max`) while the stack's buffers, with these,
    /// are within `Config::plenty` (and the heap may hold them), else the
    /// least (`Config::tcp_buffer`). Linux grows a busy connection's
    /// buffers; the engine's are fixed when its socket is made, so the
    /// choice is made then, by how much the stack holds. A unikernel whose
    /// share would not hold four connections' large buffers (below about
    /// 170 MiB with the defaults, where `Config::buffers` has halved the
    /// largest to 1 MiB) keeps to the least: there one large
    /// connection would be a tenth of the share, and the budget would
    /// fill that much sooner under a flood of connections.
    pub(crate) fn buffer_size(&self) -> usize {
        let (least, most) = self.config.buffers();
        let both = self.config.both_ways(most);
        // A pooled socket's buffers are counted already.
        let more = if self.pooled(most) { 0 } else { both };
        let plenty = self.config.plenty;
        if most > least && plenty(4 * both) && plenty(self.tcp_bytes() + more) && (self.config.may_hold)(more) {
            most
        } else {
            least
        }
    }

    /// Whether the pool holds a socket with buffers of `n` bytes.
    pub(crate) fn pooled(&self, n: usize) -> bool {
        self.pool.iter().any(|s| s.recv_capacity() == n)
    }

    /// A TCP socket for a new connection, with its buffers
    /// ([`Inner::buffer_size`]) and the configured timers: one of the pool
    /// if it holds one of that size, else a new one; `None` when the heap
    /// cannot give its buffers.
    pub(crate) fn tcp_socket(&mut self) -> Option<SocketHandle> {
        let n = self.buffer_size();
        let mut s = match self.pool.iter().position(|s| s.recv_capacity() == n) {
            // Its `listen` or `connect` clears its state and buffers (the
            // bytes stay: the engine sends and hands over only what was
            // queued or received since).
            Some(i) => self.pool.swap_remove(i),
            None => {
                let (rx, tx) = (buffer(n)?, buffer(self.config.send_buffer(n))?);
                tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx))
            }
        };
        // A fresh congestion window: the engine's reset keeps the
        // controller of the socket's last connection.
        s.set_congestion_control(s.congestion_control());
        s.set_keep_alive(self.config.keep_alive.map(to_smol));
        s.set_timeout(self.config.timeout.map(to_smol));
        // Applications write whole messages; Nagle's algorithm would only
        // hold back their last segment behind the peer's delayed ACK.
        s.set_nagle_enabled(false);
        let (large, bytes) = (self.is_large(&s), s.recv_capacity() + s.send_capacity());
        let handle = self.add_socket(s)?;
        // Undone in `remove_socket`.
        self.large += large as usize;
        self.buffered += bytes;
        Some(handle)
    }

    /// Hands a socket to the driver, which removes it (and its record)
    /// when the connection is over.
    pub(crate) fn orphan(&mut self, handle: SocketHandle, tuple: Option<Tuple>, port: Option<u16>, now: Instant) {
        let queued = self.sockets.get::<tcp::Socket>(handle).send_queue();
        // The list never holds more than the sockets there are, for which
        // room was made when each was added (`add_socket`).
        self.orphans.push(Orphan { handle, tuple, port, progress: now, queued, since: now, at_start: queued });
    }
}

/// A listener's connections, established and not yet accepted.
pub(crate) struct Listening {
    ready: VecDeque<(SocketHandle, Tuple)>,
    pub backlog: usize,
    waker: Option<Waker>,
}

impl Listening {
    /// Connections waiting to be accepted.
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len()
    }
}

/// Puts a connection just established for the listener on `port` in its
/// queue and wakes its acceptor; resets it if the listener is gone or its
/// queue cannot grow.
pub(crate) fn accepted(inner: &mut Inner, port: u16, handle: SocketHandle, tuple: Tuple, now: Instant) {
    let state = inner.sockets.get::<tcp::Socket>(handle).state();
    let fine = !matches!(state, State::Closed | State::Listen | State::SynReceived);
    if let Some(l) = inner.listeners.get_mut(&port)
        && fine
        && l.ready.try_reserve(1).is_ok()
    {
        l.ready.push_back((handle, tuple));
        if let Some(w) = l.waker.take() {
            w.wake();
        }
        return;
    }
    inner.sockets.get_mut::<tcp::Socket>(handle).abort();
    inner.orphan(handle, Some(tuple), None, now);
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
    /// a listener (it keeps one waker).
    async fn accept(&self) -> Result<(Flow, SocketAddr), Error> {
        let (handle, tuple, peer) = poll_fn(|cx| {
            self.stack.with(|inner| {
                let now = crate::now();
                loop {
                    let Some(l) = inner.listeners.get_mut(&self.port) else { return Poll::Ready(Err(Error::Io)) };
                    let Some((h, t)) = l.ready.pop_front() else {
                        l.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    };
                    match inner.sockets.get::<tcp::Socket>(h).remote_endpoint() {
                        Some(peer) => return Poll::Ready(Ok((h, t, peer))),
                        // Reset before it was accepted.
                        None => inner.orphan(h, Some(t), None, now),
                    }
                }
            })
        })
        .await?;
        // The driver may reap what was found reset.
        self.stack.kick();
        let flow = Flow { conn: Conn::new(self.stack.clone(), handle, Some(tuple), None) };
        Ok((flow, from_endpoint(peer)))
    }

    fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED), self.port)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stack.with(|inner| {
            let Some(l) = inner.listeners.remove(&self.port) else { return };
            let now = crate::now();
            for (h, t) in l.ready {
                // A connection never accepted: reset it, then let the
                // driver reap it.
                inner.sockets.get_mut::<tcp::Socket>(h).abort();
                inner.orphan(h, Some(t), None, now);
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
    tuple: Option<Tuple>,
    /// The ephemeral port it holds, for connections this side opened.
    port: Cell<Option<u16>>,
}

impl Conn {
    fn new(stack: Stack, handle: SocketHandle, tuple: Option<Tuple>, port: Option<u16>) -> Conn {
        Conn { stack, handle: Cell::new(Some(handle)), tuple, port: Cell::new(port) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> Result<R, flow::Error> {
        let h = self.handle.get().ok_or(flow::Error::Closed)?;
        Ok(self.stack.with(|inner| f(inner.sockets.get_mut::<tcp::Socket>(h))))
    }

    /// As `with`, with the whole stack and the socket's handle.
    fn with_inner<R>(&self, f: impl FnOnce(&mut Inner, SocketHandle) -> R) -> Result<R, flow::Error> {
        let h = self.handle.get().ok_or(flow::Error::Closed)?;
        Ok(self.stack.with(|inner| f(inner, h)))
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
            inner.orphan(h, self.tuple, port, crate::now());
        });
        self.stack.kick();
    }

    /// Queues what of `data` the socket's send buffer takes ([`Inner::send_limit`]),
    /// once the write holds a stream if it is large ([`Inner::stream_start`]):
    /// how much.
    async fn send(&self, data: &[u8], turn: &mut Turn<'_>) -> Result<usize, flow::Error> {
        if data.is_empty() {
            return Ok(0);
        }
        let r = poll_fn(|cx| {
            self.with_inner(|inner, h| {
                let limit = inner.send_limit(inner.sockets.get::<tcp::Socket>(h));
                let s = inner.sockets.get_mut::<tcp::Socket>(h);
                if !s.may_send() {
                    return Poll::Ready(Err(dead(s)));
                }
                let queued = s.send_queue();
                let len = data.len().min(limit.saturating_sub(queued));
                let sending = turn.ticket.is_some() && turn.since.is_none();
                if len > 0
                    && !sending
                    && !inner.stream_start((h, self.tuple), data.len(), &mut turn.ticket, &mut turn.since, cx.waker())
                {
                    return Poll::Pending;
                }
                let s = inner.sockets.get_mut::<tcp::Socket>(h);
                match s.send_slice(&data[..len]) {
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
        let mut turn = Turn { stack: &self.stack, ticket: None, since: None };
        self.send(data, &mut turn).await
    }

    async fn write_all(&self, mut data: &[u8]) -> Result<(), flow::Error> {
        // One stream for the whole of it (`Inner::stream_start`).
        let mut turn = Turn { stack: &self.stack, ticket: None, since: None };
        while !data.is_empty() {
            let n = self.send(data, &mut turn).await?;
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

/// A write's stream ([`Inner::stream_start`]): its ticket, and since when
/// it waits (`None` once it sends). Dropped, it gives the stream (or its
/// place in the queue) up, so that a write that ended or gave up (a
/// timeout, a closed connection) holds nobody up.
struct Turn<'a> {
    stack: &'a Stack,
    ticket: Option<u64>,
    since: Option<Instant>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.stack.with(|inner| inner.stream_done(t));
        }
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

    async fn write_all(&mut self, data: &[u8]) -> Result<(), flow::Error> {
        self.conn.write_all(data).await
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

    async fn abort(self) {
        Flow::abort(self);
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
            let backlog = backlog.clamp(1, 4096);
            inner.listeners.insert(port, Listening { ready: VecDeque::new(), backlog, waker: None });
            Ok(())
        })?;
        Ok(Listener { stack: self.clone(), port })
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Flow, Error> {
        let remote = IpEndpoint::new(IpAddress::from(addr.ip()), addr.port());
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(Error::InvalidAddress);
        }
        let (handle, tuple, port) = self.with(|inner| {
            let local = inner.iface.get_source_address(&remote.addr).ok_or(Error::Unreachable)?;
            let port = inner.ephemeral_port().ok_or(Error::NoSpace)?;
            let tuple =
                Tuple { local: IpAddr::from(local), remote: addr.ip(), local_port: port, remote_port: addr.port() };
            let h = inner.tcp_socket().ok_or(Error::NoSpace)?;
            if inner.link.conns.insert(tuple, Record::new(h, crate::now())).is_err() {
                inner.remove_socket(h);
                return Err(Error::NoSpace);
            }
            let Inner { iface, sockets, .. } = inner;
            match sockets.get_mut::<tcp::Socket>(h).connect(iface.context(), remote, port) {
                Ok(()) => {
                    inner.tcp_ports.insert(port);
                    Ok((h, tuple, port))
                }
                Err(e) => {
                    inner.link.conns.remove(&tuple);
                    inner.remove_socket(h);
                    Err(match e {
                        tcp::ConnectError::Unaddressable => Error::Unreachable,
                        tcp::ConnectError::InvalidState => Error::Io,
                    })
                }
            }
        })?;
        // The flow owns the socket from here: dropping it (on timeout)
        // releases the socket and the port.
        let flow = Flow { conn: Conn::new(self.clone(), handle, Some(tuple), Some(port)) };
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

impl Inner {
    /// Forgets an orphan's socket, its record and its port.
    fn forget(&mut self, o: &Orphan) {
        if let Some(t) = o.tuple
            && self.link.conns.table.get(&t).is_some_and(|r| r.handle == o.handle)
        {
            self.link.conns.remove(&t);
        }
        if let Some(p) = o.port {
            self.tcp_ports.remove(&p);
        }
        self.remove_socket(o.handle);
    }
}

/// Removes the orphans whose connection ended; keeps a small record of
/// those waiting for the peer's FIN instead of their socket.
pub(crate) fn reap(inner: &mut Inner, now: Instant) {
    let mut i = 0;
    while i < inner.orphans.len() {
        let o = inner.orphans[i];
        let s = inner.sockets.get::<tcp::Socket>(o.handle);
        let done = match s.state() {
            // The connection is over: both FINs are acknowledged, once
            // the engine has sent the ACK of the peer's (it delays it, as
            // any ACK, up to 10 ms; freed before, the socket would never
            // send it, and the peer would wait in LAST-ACK for its
            // retransmission timeout, then be reset). The engine would keep the
            // whole socket, buffers and all, for its 10 s of TIME-WAIT; a
            // server closing a few hundred connections a second would hold
            // hundreds of megabytes in them. Linux keeps a small record
            // instead; this keeps none. A FIN retransmitted because our
            // ACK was lost is answered with a reset, which ends the peer's
            // side as well, and a SYN reusing the address pair reaches the
            // listener at once.
            State::TimeWait => o
                .tuple
                .and_then(|t| inner.link.conns.table.get(&t).filter(|r| r.handle == o.handle))
                .is_none_or(|r| r.fin_acknowledged()),
            // All we sent is acknowledged, our FIN too; the peer has yet to
            // close its side, and nobody reads what it may still send. The
            // socket goes, and a record of some tens of bytes answers the
            // peer's FIN (or resets it if it sends data) until `linger`
            // passes, as Linux turns such a socket into a FIN-WAIT-2
            // time-wait record.
            State::FinWait2 => {
                if let Some(t) = o.tuple
                    && let Some(r) = inner.link.conns.table.get(&t).filter(|r| r.handle == o.handle)
                    && let (Some(snd), Some(rcv)) = (r.snd_max, r.rcv_nxt)
                {
                    let until = now + inner.config.linger;
                    let linger = Linger { snd_nxt: snd.wrapping_sub(r.delta), rcv_nxt: rcv, rcv_wnd: r.rcv_wnd, until };
                    if inner.lingering.is_full() {
                        inner.lingering.retain(|_, l| now < l.until);
                    }
                    // When the table is full, or would grow past the
                    // memory budget, nothing is kept: the peer's FIN will
                    // get a reset.
                    let _ = inner.lingering.insert_within(t, linger, inner.config.may_hold);
                }
                true
            }
            // Aborted: the engine sends the reset at its next egress and
            // only then forgets the peer.
            State::Closed => s.remote_endpoint().is_none(),
            _ => false,
        };
        if done {
            inner.forget(&o);
            inner.orphans.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

/// The per-state timeouts, and shedding past the memory budget; run by
/// the driver a few times a second.
pub(crate) fn expire(inner: &mut Inner, now: Instant) {
    // Orphans whose data and FIN make no progress for `timeout`: a peer
    // that stopped reading (its zero window answered to the engine's
    // probes, so the engine's own timeout never fires), or vanished
    // (FIN-WAIT-1, CLOSING, LAST-ACK). Their progress is noted with or
    // without a timeout: shedding asks it too.
    let timeout = inner.config.timeout;
    let Inner { orphans, sockets, link, .. } = inner;
    for o in orphans.iter_mut() {
        let s = sockets.get_mut::<tcp::Socket>(o.handle);
        o.note(s, now);
        if let Some(limit) = timeout
            && now.saturating_duration_since(o.progress) >= limit
            && !matches!(s.state(), State::Closed | State::TimeWait)
        {
            s.abort();
            link.stats.timed_out += 1;
        }
    }
    // Connections the peer closed and the application neither closes nor
    // writes to (CLOSE-WAIT).
    if let Some(limit) = inner.config.close_wait_timeout {
        let Inner { sockets, link, .. } = inner;
        let mut timed_out = 0;
        link.conns.table.retain(|_, r| {
            let s = sockets.get_mut::<tcp::Socket>(r.handle);
            if s.state() != State::CloseWait || s.send_queue() > 0 {
                r.close_wait = None;
                return true;
            }
            let since = *r.close_wait.get_or_insert(now);
            if now.saturating_duration_since(since.max(r.last_sent)) >= limit {
                s.abort();
                timed_out += 1;
            }
            true
        });
        link.stats.timed_out += timed_out;
    }
    inner.lingering.retain(|_, l| now < l.until);
    inner.lingering.shrink();
    // Past plenty: the pool's memory goes back to the heap first.
    if !inner.pool.is_empty() && !(inner.config.plenty)(inner.tcp_bytes()) {
        inner.drain_pool();
    }
    // Past the budget: shed, a few each round, until the heap is back
    // under it.
    let stall = inner.config.shed_idle.unwrap_or_default();
    for _ in 0..inner.orphans.len().div_ceil(4).min(64) {
        if (inner.config.may_hold)(0) || !shed_orphan(inner, now, stall) {
            break;
        }
    }
}

impl Orphan {
    /// Notes whether its data went out since the last look.
    fn note(&mut self, s: &tcp::Socket, now: Instant) {
        let queued = s.send_queue();
        if queued < self.queued {
            self.progress = now;
        }
        self.queued = queued;
    }

    /// Whether it may be reset to give its memory back: it is not over,
    /// and its data and FIN have made no progress for `stall`. One just
    /// closed, its last response still to go out in the next round, would
    /// otherwise be reset before a byte of it left.
    fn sheddable(&self, s: &tcp::Socket, now: Instant, stall: Duration) -> bool {
        !matches!(s.state(), State::Closed | State::TimeWait) && now.saturating_duration_since(self.progress) >= stall
    }

    /// How long its data would take to leave at its pace so far, once
    /// that pace has been watched for `watch`, and for [`PACE_WATCH`] at
    /// least (before, a response just written has not had its chance;
    /// nothing sent yet, the time is unbounded).
    fn eta(&self, now: Instant, watch: Duration) -> Option<Duration> {
        let age = now.saturating_duration_since(self.since);
        if age < watch.max(PACE_WATCH) {
            return None;
        }
        let sent = self.at_start.saturating_sub(self.queued) as u128;
        if sent == 0 {
            return Some(Duration::MAX);
        }
        let ms = (self.queued as u128).saturating_mul(age.as_millis()) / sent;
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    /// Whether it is not over, and its data would take longer than
    /// [`DRAIN_WAIT`] to leave at its pace.
    fn slow(&self, s: &tcp::Socket, now: Instant, watch: Duration) -> bool {
        !matches!(s.state(), State::Closed | State::TimeWait) && self.eta(now, watch).is_some_and(|t| t > DRAIN_WAIT)
    }
}

/// Resets the orphan holding the most unsent data of those that have
/// stalled for `stall`; whether there was one.
pub(crate) fn shed_orphan(inner: &mut Inner, now: Instant, stall: Duration) -> bool {
    let Inner { orphans, sockets, link, .. } = inner;
    for o in orphans.iter_mut() {
        o.note(sockets.get::<tcp::Socket>(o.handle), now);
    }
    let largest = orphans
        .iter()
        .filter(|o| o.sheddable(sockets.get::<tcp::Socket>(o.handle), now, stall))
        .max_by_key(|o| o.queued);
    let Some(o) = largest else { return false };
    sockets.get_mut::<tcp::Socket>(o.handle).abort();
    link.stats.shed += 1;
    true
}

/// Makes room for a new connection: resets an orphan, or else the
/// connection idle the longest, if its data has made no progress for
/// [`crate::Config::shed_idle`]; or else the orphan whose data would take
/// the longest to leave at its pace, if that is past [`DRAIN_WAIT`]
/// (an idle connection costs its client least: it is reset between
/// requests, where a slow orphan loses the rest of a response). Whether
/// one was reset.
pub(crate) fn shed(inner: &mut Inner, now: Instant) -> bool {
    let Some(idle) = inner.config.shed_idle else { return false };
    if shed_orphan(inner, now, idle) {
        return true;
    }
    if let Some(h) = idlest(inner, now, idle) {
        inner.sockets.get_mut::<tcp::Socket>(h).abort();
        inner.link.stats.shed += 1;
        return true;
    }
    let Inner { orphans, sockets, link, .. } = inner;
    let slowest = orphans
        .iter()
        .filter(|o| o.slow(sockets.get::<tcp::Socket>(o.handle), now, idle))
        .max_by_key(|o| o.eta(now, idle));
    let Some(o) = slowest else { return false };
    sockets.get_mut::<tcp::Socket>(o.handle).abort();
    link.stats.shed += 1;
    true
}

/// Whether [`shed`] would find a connection to reset.
pub(crate) fn could_shed(inner: &mut Inner, now: Instant) -> bool {
    let Some(idle) = inner.config.shed_idle else { return false };
    let Inner { orphans, sockets, .. } = inner;
    for o in orphans.iter_mut() {
        o.note(sockets.get::<tcp::Socket>(o.handle), now);
    }
    let orphan = orphans.iter().any(|o| {
        let s = sockets.get::<tcp::Socket>(o.handle);
        o.sheddable(s, now, idle) || o.slow(s, now, idle)
    });
    orphan || idlest(inner, now, idle).is_some()
}

/// Whether room for a new connection is on its way: an orphan that is not
/// over and, with shedding, not slow (it frees its memory as it ends, or
/// is shed once stalled or found slow).
pub(crate) fn draining(inner: &Inner, now: Instant) -> bool {
    inner.orphans.iter().any(|o| {
        let s = inner.sockets.get::<tcp::Socket>(o.handle);
        !matches!(s.state(), State::Closed | State::TimeWait)
            && inner.config.shed_idle.is_none_or(|watch| !o.slow(s, now, watch))
    })
}

/// Whether room for a new connection is on its way ([`draining`]), or
/// could be made: [`shed`] would find a connection to reset, or the
/// application could give memory back
/// ([`mirage_runtime::memory::reclaimable`]). Decided at most every
/// 10 ms: a flood of SYNs must not make the driver search each time.
pub(crate) fn sheddable(inner: &mut Inner, now: Instant) -> bool {
    if let Some((at, found)) = inner.last_shed
        && now.saturating_duration_since(at) < Duration::from_millis(10)
    {
        return found;
    }
    // An orphan not over drains, or is shed once stalled or found slow.
    let live = inner
        .orphans
        .iter()
        .any(|o| !matches!(inner.sockets.get::<tcp::Socket>(o.handle).state(), State::Closed | State::TimeWait));
    let found = live
        || inner.config.shed_idle.is_some_and(|idle| idlest(inner, now, idle).is_some())
        || mirage_runtime::memory::reclaimable();
    inner.last_shed = Some((now, found));
    found
}

/// The established connection that has gone longest without data, if
/// that is at least `idle`.
fn idlest(inner: &Inner, now: Instant, idle: Duration) -> Option<SocketHandle> {
    let Inner { sockets, link, .. } = inner;
    link.conns
        .table
        .iter()
        .filter(|(_, r)| r.replay.is_none())
        .filter(|(_, r)| matches!(sockets.get::<tcp::Socket>(r.handle).state(), State::Established | State::CloseWait))
        .min_by_key(|(_, r)| r.last_data())
        .filter(|(_, r)| now.saturating_duration_since(r.last_data()) >= idle)
        .map(|(_, r)| r.handle)
}
