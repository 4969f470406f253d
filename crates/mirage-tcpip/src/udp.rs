//! UDP sockets.

use alloc::vec;
use core::future::poll_fn;
use core::net::SocketAddr;
use core::task::Poll;

use mirage_devices::stack::{self, Error};
use mirage_runtime::time::{Duration, Instant};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::Stack;
use crate::tcp::from_endpoint;

/// Datagrams a socket queues each way, besides the byte budget.
const SLOTS: usize = 64;

/// How long the first datagram of a send queue may wait before the queue
/// is cleared: about as long as Linux tries to resolve a neighbour (three
/// probes a second apart).
///
/// The engine keeps a datagram it cannot send at the head of its
/// socket's queue, and retries it each second for ever: one datagram to
/// an address that never answers ARP or NDP (a forged source, a host that
/// left), or with no route, would stop every later datagram of the
/// socket, and `send_to` would wait for good once the queue filled. The
/// engine offers no way to drop only the head, so the whole queue is
/// cleared (the socket stays bound; datagrams waiting to be read are
/// lost with it), and counted in `Stats::udp_queues_cleared`.
pub const STUCK: Duration = Duration::from_secs(3);

/// A socket's send queue, as [`watch`] follows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queue {
    handle: SocketHandle,
    port: u16,
    /// Its length before this round's sending.
    before: usize,
    /// Since when its first datagram has not left.
    waiting: Option<Instant>,
}

/// Notes each send queue's length before the engine sends.
pub(crate) fn before_egress(inner: &mut crate::Inner) {
    for q in &mut inner.udp_queues {
        q.before = inner.sockets.get::<udp::Socket>(q.handle).send_queue();
    }
}

/// After the engine sent: a queue that shrank made progress; one that did
/// not has waited since it last did.
pub(crate) fn after_egress(inner: &mut crate::Inner, now: Instant) {
    for q in &mut inner.udp_queues {
        let len = inner.sockets.get::<udp::Socket>(q.handle).send_queue();
        if len == 0 {
            q.waiting = None;
        } else if len < q.before || q.waiting.is_none() {
            q.waiting = Some(now);
        }
    }
}

/// Clears the queues whose first datagram has waited [`STUCK`].
pub(crate) fn watch(inner: &mut crate::Inner, now: Instant) {
    for q in &mut inner.udp_queues {
        if q.waiting.is_some_and(|t| now.saturating_duration_since(t) >= STUCK) {
            let s = inner.sockets.get_mut::<udp::Socket>(q.handle);
            s.close();
            // Cannot fail: the port is not 0 and the socket was closed.
            let _ = s.bind(q.port);
            q.waiting = None;
            inner.link.stats.udp_queues_cleared += 1;
            log::warn!(
                target: "tcpip",
                "UDP port {}: a datagram could not be sent for {} s (no answer to ARP or NDP, or no route): the port's send queue was cleared",
                q.port,
                STUCK.as_secs()
            );
        }
    }
}

/// Removes a UDP socket and frees its port.
fn remove(inner: &mut crate::Inner, handle: SocketHandle, port: u16) {
    inner.remove_socket(handle);
    inner.udp_ports.remove(&port);
    inner.udp_queues.retain(|q| q.handle != handle);
}

/// A bound UDP socket.
pub struct UdpSocket {
    stack: Stack,
    handle: SocketHandle,
    port: u16,
}

impl core::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UdpSocket").field("port", &self.port).finish()
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        // Datagrams already accepted by `send_to` still go out: a socket
        // with a queue is removed by the driver once it is empty.
        let queued = self.stack.with(|inner| {
            if inner.sockets.get::<udp::Socket>(self.handle).send_queue() > 0 {
                inner.udp_orphans.push((self.handle, self.port));
                true
            } else {
                remove(inner, self.handle, self.port);
                false
            }
        });
        if queued {
            self.stack.kick();
        }
    }
}

impl stack::UdpSocket for UdpSocket {
    async fn send_to(&self, data: &[u8], to: SocketAddr) -> Result<(), Error> {
        if to.port() == 0 || to.ip().is_unspecified() {
            return Err(Error::InvalidAddress);
        }
        let (max, configured) = self.stack.with(|inner| {
            let header = if to.is_ipv4() { 20 + 8 } else { 40 + 8 };
            let mtu = inner.mtu;
            let configured = match to.ip() {
                core::net::IpAddr::V4(_) => inner.ipv4.is_some(),
                core::net::IpAddr::V6(_) => {
                    inner.iface.ip_addrs().iter().any(|a| matches!(a.address(), IpAddress::Ipv6(_)))
                }
            };
            (mtu.saturating_sub(header).min(inner.config.udp_buffer), configured)
        });
        // The stack does not fragment: a datagram must fit one frame.
        if data.len() > max {
            return Err(Error::TooLarge);
        }
        if !configured {
            return Err(Error::Unreachable);
        }
        let remote = IpEndpoint::new(IpAddress::from(to.ip()), to.port());
        poll_fn(|cx| {
            self.stack.with(|inner| {
                let s = inner.sockets.get_mut::<udp::Socket>(self.handle);
                match s.send_slice(data, remote) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(udp::SendError::BufferFull) => {
                        s.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    Err(udp::SendError::Unaddressable) => Poll::Ready(Err(Error::InvalidAddress)),
                }
            })
        })
        .await?;
        self.stack.kick();
        Ok(())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error> {
        poll_fn(|cx| {
            self.stack.with(|inner| {
                let s = inner.sockets.get_mut::<udp::Socket>(self.handle);
                match s.recv() {
                    Ok((data, meta)) => {
                        let n = data.len().min(buf.len());
                        buf[..n].copy_from_slice(&data[..n]);
                        Poll::Ready(Ok((n, from_endpoint(meta.endpoint))))
                    }
                    Err(_) => {
                        s.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                }
            })
        })
        .await
    }

    fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED), self.port)
    }
}

impl stack::Udp for Stack {
    type Socket = UdpSocket;

    async fn bind(&self, port: u16) -> Result<UdpSocket, Error> {
        let (handle, port) = self.with(|inner| {
            let port = if port == 0 { inner.ephemeral_port().ok_or(Error::NoSpace)? } else { port };
            if !inner.udp_ports.insert(port) {
                return Err(Error::AddrInUse);
            }
            let n = inner.config.udp_buffer;
            let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; SLOTS], vec![0; n]);
            let mut s = udp::Socket::new(buffer(), buffer());
            // Cannot fail: the port is not 0 and the socket is new.
            let _ = s.bind(port);
            match inner.add_socket(s) {
                Some(h) => {
                    inner.udp_queues.push(Queue { handle: h, port, before: 0, waiting: None });
                    Ok((h, port))
                }
                None => {
                    inner.udp_ports.remove(&port);
                    Err(Error::NoSpace)
                }
            }
        })?;
        Ok(UdpSocket { stack: self.clone(), handle, port })
    }
}

/// Removes dropped sockets whose queued datagrams have gone out.
pub(crate) fn reap(inner: &mut crate::Inner) {
    let mut i = 0;
    while i < inner.udp_orphans.len() {
        let (h, port) = inner.udp_orphans[i];
        if inner.sockets.get::<udp::Socket>(h).send_queue() > 0 {
            i += 1;
            continue;
        }
        remove(inner, h, port);
        inner.udp_orphans.swap_remove(i);
    }
}
