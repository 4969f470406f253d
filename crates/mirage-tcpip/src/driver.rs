//! The driver task: it owns the interface and runs the engine.
//!
//! Each wake-up processes at most `Config::batch` received frames, sends
//! everything the sockets have queued, handles DHCP events and reaps closed
//! connections; then it sleeps until a frame may have arrived, the engine's
//! next deadline (a retransmission, a keep-alive, a DHCP renewal) passes,
//! or a socket queues data. When a batch fills, it yields to the other tasks
//! and goes on without sleeping.

use alloc::rc::Rc;
use core::future::poll_fn;
use core::task::Poll;

use mirage_devices::net::Net;
use mirage_runtime::time::Duration;
use mirage_runtime::{Either, select};
use alloc::vec::Vec;
use core::net::IpAddr;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::wire::{IpAddress, IpCidr};

use crate::device::Adapter;
use crate::{Inner, Shared, smol_now};

pub(crate) async fn run<N: Net>(shared: Rc<Shared>, mut dev: Adapter<N>) {
    loop {
        shared.kicked.set(false);
        let (delay, busy) = {
            let mut inner = shared.inner.borrow_mut();
            step(&mut inner, &mut dev)
        };
        if let Some(e) = dev.failed.take() {
            log::error!("network interface failed: {e}; the stack stops");
            return;
        }
        if busy {
            // Frames are still waiting: let the sockets' tasks drain what
            // this batch delivered, then go on.
            mirage_runtime::yield_now().await;
            continue;
        }
        if shared.kicked.get() {
            continue;
        }
        let kicked = poll_fn(|cx| {
            if shared.kicked.get() {
                Poll::Ready(())
            } else {
                *shared.driver.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let timer = async {
            match delay {
                Some(d) => mirage_runtime::time::sleep(d).await,
                None => core::future::pending().await,
            }
        };
        let woken = select(dev.net.readable(), select(timer, kicked)).await;
        shared.driver.borrow_mut().take();
        if let Either::Left(Err(e)) = woken {
            log::error!("network interface failed: {e}; the stack stops");
            return;
        }
    }
}

/// One round of the engine; the delay until its next deadline and whether
/// frames may still be waiting.
fn step<N: Net>(inner: &mut Inner, dev: &mut Adapter<N>) -> (Option<Duration>, bool) {
    let now = smol_now();
    inner.iface.poll_maintenance(now);
    let mut busy = false;
    for _ in 0..inner.config.batch.max(1) {
        if !dev.fetch() {
            busy = false;
            break;
        }
        busy = true;
        let mut hidden = Vec::new();
        if let Some(syn) = dev.syn
            && inner.listeners.contains_key(&syn.2)
        {
            match existing_connection(inner, syn) {
                true => hidden = hide_listeners(inner, syn.2),
                false if !inner.replenish(syn.2) => {
                    // The backlog is full: drop the SYN, as Linux does, and
                    // let the client retry, rather than have the engine
                    // refuse the connection.
                    dev.skip();
                    continue;
                }
                false => {}
            }
        }
        let Inner { iface, sockets, .. } = inner;
        iface.poll_ingress_single(now, dev, sockets);
        for &(h, port) in &hidden {
            let _ = inner.sockets.get_mut::<tcp::Socket>(h).listen(port);
        }
    }
    let Inner { iface, sockets, .. } = inner;
    // Egress is bounded per call; loop while it reports progress, so that
    // everything sockets queued (including replies to this batch) goes out.
    for _ in 0..64 {
        if iface.poll_egress(now, dev, sockets) == smoltcp::iface::PollResult::None {
            break;
        }
    }
    dhcp(inner);
    let now = crate::now();
    crate::tcp::reap(inner, now);
    crate::udp::reap(inner);
    inner.stats = dev.stats;
    let mut delay = inner.iface.poll_delay(smol_now(), &inner.sockets).map(|d| Duration::from_micros(d.total_micros()));
    // Lingering connections are reset when their time is up.
    let lingering = inner.orphans.iter().filter(|o| inner.sockets.get::<tcp::Socket>(o.0).state() == tcp::State::FinWait2);
    if let Some(soonest) = lingering.map(|o| o.2).min() {
        let d = soonest.saturating_duration_since(now);
        delay = Some(delay.map_or(d, |x| x.min(d)));
    }
    (delay, busy)
}

/// Whether a SYN belongs to a connection that already has its socket (the
/// SYN was retransmitted because the SYN-ACK was lost, or the network
/// duplicated it).
///
/// A SYN for the address pair of a connection this side closed, still in
/// TIME-WAIT, starts a new connection instead: the client has forgotten
/// the old one and reuses its port (a client that lets the server close
/// first has no TIME-WAIT of its own, and may reuse a port at once). The
/// engine would give the SYN to the TIME-WAIT socket, which answers
/// nothing useful, and the client would retry until the 10 s wait ends;
/// Linux accepts such a SYN, and so does this: the old socket is closed,
/// here, and a listener takes the SYN.
fn existing_connection(inner: &mut Inner, (src, sport, dport): (IpAddr, u16, u16)) -> bool {
    let mut existing = false;
    for (_, s) in inner.sockets.iter_mut() {
        let smoltcp::socket::Socket::Tcp(s) = s else { continue };
        let same_pair = s.local_endpoint().is_some_and(|l| l.port == dport)
            && s.remote_endpoint().is_some_and(|r| r.port == sport && IpAddr::from(r.addr) == src);
        if !same_pair || matches!(s.state(), tcp::State::Listen | tcp::State::Closed) {
            continue;
        }
        if s.state() == tcp::State::TimeWait {
            s.abort();
        } else {
            existing = true;
        }
    }
    existing
}

/// The engine gives a segment to the first socket that accepts it, and a
/// listening socket accepts any SYN for its port: a SYN of a connection
/// that already has its socket would start a second, bogus handshake whose
/// failure resets the real connection. For such a SYN the listening
/// sockets of the port are closed while the engine processes it, and
/// listen again after. The sockets to restore.
fn hide_listeners(inner: &mut Inner, port: u16) -> Vec<(SocketHandle, u16)> {
    let listening: Vec<SocketHandle> = inner
        .sockets
        .iter()
        .filter_map(|(h, s)| match s {
            smoltcp::socket::Socket::Tcp(s) if s.state() == tcp::State::Listen && s.listen_endpoint().port == port => Some(h),
            _ => None,
        })
        .collect();
    listening
        .into_iter()
        .map(|h| {
            inner.sockets.get_mut::<tcp::Socket>(h).close();
            (h, port)
        })
        .collect()
}

/// Applies DHCP leases: addresses, default route, and wakes whoever waits
/// for the stack to be configured.
fn dhcp(inner: &mut Inner) {
    let Some(handle) = inner.dhcp else { return };
    let event = inner.sockets.get_mut::<dhcpv4::Socket>(handle).poll();
    match event {
        None => {}
        Some(dhcpv4::Event::Configured(c)) => {
            let (addr, prefix) = (c.address.address(), c.address.prefix_len());
            log::info!("DHCP: leased {addr}/{prefix}, router {:?}", c.router);
            inner.iface.update_ip_addrs(|addrs| {
                addrs.retain(|a| !matches!(a.address(), IpAddress::Ipv4(_)));
                let _ = addrs.push(IpCidr::Ipv4(c.address));
            });
            match c.router {
                Some(r) => {
                    let _ = inner.iface.routes_mut().add_default_ipv4_route(r);
                }
                None => {
                    inner.iface.routes_mut().remove_default_ipv4_route();
                }
            }
            inner.ipv4 = Some((addr, prefix));
            for w in inner.config_waiters.drain(..) {
                w.wake();
            }
        }
        Some(dhcpv4::Event::Deconfigured) => {
            // The engine reports this once at start as well.
            if inner.ipv4.is_some() {
                log::warn!("DHCP: lease lost");
            }
            inner.iface.update_ip_addrs(|addrs| addrs.retain(|a| !matches!(a.address(), IpAddress::Ipv4(_))));
            inner.iface.routes_mut().remove_default_ipv4_route();
            inner.ipv4 = None;
        }
    }
}
