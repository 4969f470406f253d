//! The IP layer (`IpLayer`) against the stack, back to back on a
//! simulated link and clock: ARP resolution both ways, packets held while
//! a neighbour is resolved and sent when it answers, the bounds on what
//! waits, and the neighbour-cache policy.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::task::{Poll, Waker};

use mirage_devices::ip::{Error, Ip, NextHop};
use mirage_devices::net::{self, MacAddr, Net, NetInfo};
use mirage_devices::stack::{Udp, UdpSocket};
use mirage_runtime::time::{Duration, sleep};
use mirage_runtime::{Interest, Platform, Source, select};
use mirage_tcpip::wire;
use mirage_tcpip::{Config, IpConfig, IpLayer, Stack};

#[derive(Default)]
struct Sim {
    now: u64,
}

impl Platform for Sim {
    fn now(&self) -> u64 {
        self.now
    }
    fn wait(&mut self, deadline: Option<u64>, _io: &[(Source, Interest)], _ready: &mut dyn FnMut(Source, Interest)) {
        self.now = self.now.max(deadline.expect("deadlock: every task waits and no timer is set"));
    }
}

#[derive(Default)]
struct Wire {
    frames: VecDeque<Vec<u8>>,
    waker: Option<Waker>,
}

/// One end of a lossless link with no delay; every frame sent is also
/// kept in `sent`.
struct SimNet {
    mac: MacAddr,
    rx: Rc<RefCell<Wire>>,
    tx: Rc<RefCell<Wire>>,
    sent: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl Net for SimNet {
    fn info(&self) -> NetInfo {
        NetInfo::new(self.mac, 1500)
    }
    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, net::Error> {
        let frame = self.rx.borrow_mut().frames.pop_front();
        Ok(frame.map(|mut fr| f(&mut fr)))
    }
    async fn readable(&mut self) -> Result<(), net::Error> {
        let rx = self.rx.clone();
        poll_fn(move |cx| {
            let mut w = rx.borrow_mut();
            if w.frames.is_empty() {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        })
        .await
    }
    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, net::Error> {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.sent.borrow_mut().push(frame.clone());
        let mut w = self.tx.borrow_mut();
        w.frames.push_back(frame);
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
        Ok(r)
    }
}

const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

struct Link {
    ip: IpLayer<SimNet>,
    /// Frames the IP layer sent.
    sent: Rc<RefCell<Vec<Vec<u8>>>>,
    /// Frames to the IP layer (to inject forged ones).
    to_ip: Rc<RefCell<Wire>>,
}

/// The IP layer at ROUTER, and a stack at HOST whose gateway it is (or
/// nothing on the other end, with `stack` false).
fn link(stack: bool) -> (Link, Option<Stack>) {
    let a = Rc::new(RefCell::new(Wire::default()));
    let b = Rc::new(RefCell::new(Wire::default()));
    let sent = Rc::new(RefCell::new(Vec::new()));
    let ip_net = SimNet { mac: MacAddr(ROUTER_MAC), rx: a.clone(), tx: b.clone(), sent: sent.clone() };
    let ip = IpLayer::new(ip_net, IpConfig::new((ROUTER, 24), None)).unwrap();
    let host = stack.then(|| {
        let net = SimNet { mac: MacAddr(HOST_MAC), rx: b, tx: a.clone(), sent: Rc::new(RefCell::new(Vec::new())) };
        Stack::new(net, Config::static_ipv4(HOST, 24, Some(ROUTER))).unwrap()
    });
    (Link { ip, sent, to_ip: a }, host)
}

/// A UDP datagram from `src:sport` to `dst:dport`, as an IPv4 packet.
fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let total = 28 + data.len();
    let mut p = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = wire::checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let ulen = (8 + data.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&ulen.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = wire::checksum_ipv4(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&u);
    p
}

/// Receives packets on the IP layer for up to `limit`.
async fn recv(ip: &mut IpLayer<SimNet>, limit: Duration) -> Option<Vec<u8>> {
    let wait = async {
        loop {
            if let Ok(Some(p)) = ip.try_recv(|p| p.to_vec()) {
                return p;
            }
            ip.readable().await.unwrap();
        }
    };
    match select(wait, sleep(limit)).await {
        mirage_runtime::Either::Left(p) => Some(p),
        mirage_runtime::Either::Right(()) => None,
    }
}

#[test]
fn packets_wait_for_arp_and_go_both_ways() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, host) = link(true);
        let host = host.unwrap();
        let sock = host.bind(7).await.unwrap();
        // Sent before the host is known: held, ARP asked, then delivered.
        let p = udp(Ipv4Addr::new(192, 0, 2, 9), 4000, HOST, 7, b"through the router");
        l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), p.len(), |b| b.copy_from_slice(&p)).unwrap();
        let arp = l.sent.borrow().first().cloned().unwrap();
        assert_eq!((&arp[0..6], &arp[12..14]), (&[0xff; 6][..], &[8, 6][..]), "an ARP request goes first");
        // The IP layer must run to take the ARP reply.
        let mut buf = [0u8; 64];
        let got = select(sock.recv_from(&mut buf), recv(&mut l.ip, Duration::from_secs(2))).await;
        let mirage_runtime::Either::Left(Ok((n, from))) = got else { panic!("the datagram did not arrive") };
        assert_eq!(&buf[..n], b"through the router");
        assert_eq!(from, SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 4000));
        // The host answers off its subnet: through its gateway, this layer,
        // which the host resolves by ARP and the layer answers.
        sock.send_to(b"back", from).await.unwrap();
        let back = recv(&mut l.ip, Duration::from_secs(2)).await.expect("the answer reaches the layer");
        let p = wire::parse_ipv4(&back).unwrap();
        assert_eq!((p.src, p.dst, p.protocol), (HOST, Ipv4Addr::new(192, 0, 2, 9), 17));
        assert_eq!(&p.payload[8..], b"back");
        let s = l.ip.stats();
        assert_eq!((s.rx_packets, s.tx_packets, s.tx_dropped), (1, 1, 0), "{s:?}");
        // The host's answer to the request taught each side the other.
        assert!(s.arp_in == 1 && s.neighbors == 1, "{s:?}");
    });
}

#[test]
fn what_waits_for_a_silent_neighbour_is_bounded_and_dropped() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link(false);
        let p = udp(ROUTER, 1, HOST, 2, &[0; 100]);
        let mut held = 0;
        for _ in 0..100 {
            if l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), p.len(), |b| b.copy_from_slice(&p)).is_ok() {
                held += 1;
            }
        }
        assert_eq!(held, mirage_tcpip::ip::PER_NEIGHBOR);
        // As many silent neighbours as the layer resolves at once, and one
        // more, which is refused.
        for i in 0..mirage_tcpip::ip::MAX_UNRESOLVED as u8 {
            let to = Ipv4Addr::new(10, 0, 0, 10 + i);
            let r = l.ip.send(NextHop::Ip(IpAddr::V4(to)), p.len(), |b| b.copy_from_slice(&p));
            assert_eq!(r.is_ok(), i < mirage_tcpip::ip::MAX_UNRESOLVED as u8 - 1, "neighbour {to}");
        }
        // Off the link: refused.
        let r = l.ip.send(NextHop::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))), 20, |_| ());
        assert_eq!(r, Err(Error::Unreachable));
        assert_eq!(l.ip.send(NextHop::Broadcast, 1501, |_| ()), Err(Error::TooLarge));
        // Three requests a neighbour, a second apart; then what waited is
        // dropped and counted.
        assert_eq!(recv(&mut l.ip, Duration::from_secs(5)).await, None);
        let requests = l.sent.borrow().iter().filter(|f| f[12..14] == [8, 6] && f[38..42] == HOST.octets()).count();
        assert_eq!(requests, 3);
        let s = l.ip.stats();
        // 96 refused for HOST, the 64th neighbour's, the one off the link,
        // the one too large, and the 4 + 63 that waited.
        assert_eq!(s.tx_dropped, 96 + 1 + 1 + 1 + 4 + 63, "{s:?}");
        assert_eq!(s.tx_packets, 0);
    });
}

#[test]
fn forged_arp_and_bad_frames_are_refused_and_counted() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link(false);
        let arp = |op: u8, dst: [u8; 6], sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr| {
            let mut f = dst.to_vec();
            f.extend_from_slice(&sender_mac);
            f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, op]);
            f.extend_from_slice(&sender_mac);
            f.extend_from_slice(&sender.octets());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&target.octets());
            f
        };
        let evil = [2, 0, 0, 0, 0, 0x66];
        let frames = [
            // An unsolicited reply: refused.
            arp(2, ROUTER_MAC, evil, HOST, ROUTER),
            // A request from a multicast address: refused.
            arp(1, [0xff; 6], [1, 0, 0x5e, 0, 0, 1], HOST, ROUTER),
            // A real request: learnt and answered.
            arp(1, [0xff; 6], HOST_MAC, HOST, ROUTER),
            // Then a request that would move HOST: refused.
            arp(1, [0xff; 6], evil, HOST, ROUTER),
        ];
        let mut bad = udp(HOST, 1, ROUTER, 2, b"x");
        bad[10] ^= 1; // header checksum
        let mut frames: Vec<Vec<u8>> = frames.into();
        for (dst, packet) in [(ROUTER_MAC, bad), ([2, 0, 0, 0, 0, 9], udp(HOST, 1, ROUTER, 2, b"not my MAC"))] {
            let mut f = dst.to_vec();
            f.extend_from_slice(&HOST_MAC);
            f.extend_from_slice(&[8, 0]);
            f.extend_from_slice(&packet);
            frames.push(f);
        }
        // A good packet, with Ethernet padding the layer cuts off.
        let good = udp(HOST, 1, ROUTER, 2, b"ok");
        let mut f = ROUTER_MAC.to_vec();
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(&good);
        f.resize(60, 0);
        frames.push(f);
        l.to_ip.borrow_mut().frames.extend(frames);
        let got = recv(&mut l.ip, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got, good);
        let s = l.ip.stats();
        assert_eq!((s.arp_in, s.arp_refused, s.rx_dropped, s.rx_packets), (1, 3, 2, 1), "{s:?}");
        // The answer to the real request went to HOST_MAC.
        let replies: Vec<_> = l.sent.borrow().iter().filter(|f| f[12..14] == [8, 6] && f[21] == 2).cloned().collect();
        assert_eq!(replies.len(), 1);
        assert_eq!(&replies[0][0..6], &HOST_MAC);
        // HOST is known at its real address: a packet goes straight there.
        l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), good.len(), |b| b.copy_from_slice(&good)).unwrap();
        assert_eq!(&l.sent.borrow().last().unwrap()[0..6], &HOST_MAC);
    });
}
