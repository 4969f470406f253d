//! UDP sockets.

use alloc::vec;
use core::future::poll_fn;
use core::net::SocketAddr;
use core::task::Poll;

use mirage_devices::stack::{self, Error};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::Stack;
use crate::tcp::from_endpoint;

/// Datagrams a socket queues each way, besides the byte budget.
const SLOTS: usize = 64;

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
                inner.remove_socket(self.handle);
                inner.udp_ports.remove(&self.port);
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
                Some(h) => Ok((h, port)),
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
        inner.remove_socket(h);
        inner.udp_ports.remove(&port);
        inner.udp_orphans.swap_remove(i);
    }
}
