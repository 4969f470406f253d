//! The driver task: it owns the interface and runs the engine.
//!
//! Each wake-up processes at most `Config::batch` received frames, each
//! judged first ([`crate::inbound`]), sends everything the sockets have
//! queued, handles DHCP events and reaps closed connections; a few times a
//! second it also retransmits SYN-ACKs and applies the per-state timeouts.
//! Then it sleeps until a frame may have arrived, the engine's next
//! deadline (a retransmission, a keep-alive, a DHCP renewal) passes, or a
//! socket queues data. When a batch fills, it yields to the other tasks
//! and goes on without sleeping.

use alloc::rc::Rc;
use core::future::poll_fn;
use core::task::Poll;

use mirage_devices::net::Net;
use mirage_runtime::time::{Duration, Instant};
use mirage_runtime::{Either, select};
use smoltcp::socket::dhcpv4;
use smoltcp::wire::{IpAddress, IpCidr};

use crate::device::Adapter;
use crate::handshake;
use crate::inbound::{self, Verdict};
use crate::{Inner, Shared, smol_now, tcp};

/// How often the half-open, lingering and closing connections are looked at.
const EXPIRY: Duration = Duration::from_millis(250);

pub(crate) async fn run<N: Net>(shared: Rc<Shared>, mut net: N) {
    loop {
        shared.kicked.set(false);
        let (delay, busy, failed) = {
            let mut inner = shared.inner.borrow_mut();
            let (delay, busy) = step(&mut inner, &mut net);
            (delay, busy, inner.link.failed.take())
        };
        if let Some(e) = failed {
            log::error!(target: "tcpip", "network interface failed: {e}; the stack stops");
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
        let woken = select(net.readable(), select(timer, kicked)).await;
        shared.driver.borrow_mut().take();
        if let Either::Left(Err(e)) = woken {
            log::error!(target: "tcpip", "network interface failed: {e}; the stack stops");
            return;
        }
    }
}

/// Judges the frame waiting in the link and does what the judge says.
fn judged<N: Net>(inner: &mut Inner, net: &mut N, now: Instant) {
    match inbound::judge(inner, net, now) {
        Verdict::Drop => inner.link.skip(),
        Verdict::Engine => ingest(inner, net),
        Verdict::Accept(port, handle, tuple) => {
            ingest(inner, net);
            tcp::accepted(inner, port, handle, tuple, now);
        }
    }
}

/// Gives the frame waiting in the link to the engine.
pub(crate) fn ingest<N: Net>(inner: &mut Inner, net: &mut N) {
    let Inner { iface, sockets, link, .. } = inner;
    iface.poll_ingress_single(smol_now(), &mut Adapter { net, link }, sockets);
}

/// One round of the engine; the delay until its next deadline and whether
/// frames may still be waiting.
fn step<N: Net>(inner: &mut Inner, net: &mut N) -> (Option<Duration>, bool) {
    let now = crate::now();
    inner.iface.poll_maintenance(smol_now());
    // Handshakes that waited for room go first.
    while inbound::resume(inner, now) {
        judged(inner, net, now);
    }
    let mut busy = false;
    for _ in 0..inner.config.batch.max(1) {
        if !(Adapter { net: &mut *net, link: &mut inner.link }).fetch() {
            busy = false;
            break;
        }
        busy = true;
        judged(inner, net, now);
    }
    egress(inner, net);
    inbound::finish_replays(inner, net, now, |inner, port, handle, tuple| {
        tcp::accepted(inner, port, handle, tuple, now)
    });
    if !inner.early.is_empty() {
        while inbound::release_early(inner, now) {
            judged(inner, net, now);
        }
        egress(inner, net);
    }
    // The connections with data to send, for the share of large buffers
    // (`Inner::send_limit`): once a round, after this round's sending,
    // while there are large buffers.
    inner.senders.set((inner.large > 0).then(|| inner.count_senders()));
    // After this round's acknowledgments: a stream may have stalled, or
    // a write waited long enough.
    let streams = inner.streams_round(now);
    dhcp(inner);
    tcp::reap(inner, now);
    crate::udp::reap(inner);
    if now >= inner.next_expiry {
        inner.next_expiry = now + EXPIRY;
        expire(inner, net, now);
        egress(inner, net);
    }
    // Reaping freed room for a handshake that waits: go on at once.
    busy |= inbound::deferred_fits(inner);
    let mut delay = inner.iface.poll_delay(smol_now(), &inner.sockets).map(|d| Duration::from_micros(d.total_micros()));
    if let Some(d) = streams {
        delay = Some(delay.map_or(d, |x| x.min(d)));
    }
    let waiting = inner.handshakes.queue.len()
        + inner.lingering.len()
        + inner.orphans.len()
        + inner.link.conns.replaying
        + inner.deferred.len()
        + inner.early.len();
    if waiting > 0 || inner.config.close_wait_timeout.is_some() && inner.link.conns.table.len() > 0 {
        let d = inner.next_expiry.saturating_duration_since(now);
        delay = Some(delay.map_or(d, |x| x.min(d)));
    }
    (delay, busy)
}

/// Sends everything the sockets queued. Egress is bounded per call; loop
/// while it reports progress, so that everything (including replies to
/// this batch) goes out.
fn egress<N: Net>(inner: &mut Inner, net: &mut N) {
    crate::udp::before_egress(inner);
    let Inner { iface, sockets, link, .. } = inner;
    let mut dev = Adapter { net, link };
    for _ in 0..64 {
        if iface.poll_egress(smol_now(), &mut dev, sockets) == smoltcp::iface::PollResult::None {
            break;
        }
    }
    crate::udp::after_egress(inner, crate::now());
}

/// The work done a few times a second.
fn expire<N: Net>(inner: &mut Inner, net: &mut N, now: Instant) {
    let Inner { handshakes, link, mtu, config, .. } = inner;
    let (mtu, buffers, mac) = (*mtu, config.buffers(), link.mac);
    let mut dev = Adapter { net, link };
    handshakes.retransmit(now, |t, h| {
        let repr = handshake::syn_ack(t, h.peer_isn, h.isn, h.opts, mtu, buffers);
        let len = handshake::frame_len(t.local, &repr);
        dev.send(len, |buf| handshake::emit(buf, mac, h.mac, t.local, t.remote, &repr));
    });
    tcp::expire(inner, now);
    crate::udp::watch(inner, now);
    inner.link.neighbors.expire(now);
    inner.link.conns.table.shrink();
    inner.link.conns.sacked.shrink();
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
            // The engine's client takes any unicast address, any mask and
            // any router; the engine then panics on a router that is not
            // unicast. A lease is held to the rules of `dhcpc` (as on
            // `IpLayer`): an unfit address is refused (the client starts
            // over), an unfit router is left out.
            if !crate::dhcpc::address_ok(addr, prefix) {
                log::warn!(target: "tcpip::dhcp", "DHCP: refused a lease of {addr}/{prefix}: not a host address of its subnet");
                inner.link.stats.dhcp_refused += 1;
                inner.sockets.get_mut::<dhcpv4::Socket>(handle).reset();
                deconfigure(inner);
                return;
            }
            let router = c.router.filter(|r| {
                let ok = crate::dhcpc::router_ok(addr, prefix, *r);
                if !ok {
                    log::warn!(target: "tcpip::dhcp", "DHCP: left out router {r}: not another host of {addr}/{prefix}");
                    inner.link.stats.dhcp_refused += 1;
                }
                ok
            });
            match router {
                Some(r) => log::info!(target: "tcpip::dhcp", "DHCP: leased {addr}/{prefix}, router {r}"),
                None => log::info!(target: "tcpip::dhcp", "DHCP: leased {addr}/{prefix}, no router"),
            }
            inner.iface.update_ip_addrs(|addrs| {
                addrs.retain(|a| !matches!(a.address(), IpAddress::Ipv4(_)));
                let _ = addrs.push(IpCidr::Ipv4(c.address));
            });
            match router {
                Some(r) => {
                    let _ = inner.iface.routes_mut().add_default_ipv4_route(r);
                }
                None => {
                    inner.iface.routes_mut().remove_default_ipv4_route();
                }
            }
            inner.link.neighbors.gateways[0] = router.map(core::net::IpAddr::V4);
            inner.ipv4 = Some((addr, prefix));
            for w in inner.config_waiters.drain(..) {
                w.wake();
            }
        }
        Some(dhcpv4::Event::Deconfigured) => {
            // The engine reports this once at start as well.
            if inner.ipv4.is_some() {
                log::warn!(target: "tcpip::dhcp", "DHCP: lease lost");
            }
            deconfigure(inner);
        }
    }
}

/// Drops the IPv4 address and default route a lease gave.
fn deconfigure(inner: &mut Inner) {
    inner.iface.update_ip_addrs(|addrs| addrs.retain(|a| !matches!(a.address(), IpAddress::Ipv4(_))));
    inner.iface.routes_mut().remove_default_ipv4_route();
    inner.link.neighbors.gateways[0] = None;
    inner.ipv4 = None;
}
