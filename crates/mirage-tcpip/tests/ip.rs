//! The IP layer (`IpLayer`) against the stack, back to back on a
//! simulated link and clock: ARP and NDP resolution both ways, packets
//! held while a neighbour is resolved and sent when it answers, the bounds
//! on what waits, the neighbour-cache policy against forged ARP and
//! NDP, and the DHCP client leasing from mirage-dhcpd.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    link_with(stack, false)
}

/// As [`link`], with IPv6 on both ends too when `ipv6`: ROUTER6 and
/// HOST6 on fd00::/64, the host's IPv6 gateway the layer.
fn link_with(stack: bool, ipv6: bool) -> (Link, Option<Stack>) {
    let a = Rc::new(RefCell::new(Wire::default()));
    let b = Rc::new(RefCell::new(Wire::default()));
    let sent = Rc::new(RefCell::new(Vec::new()));
    let ip_net = SimNet { mac: MacAddr(ROUTER_MAC), rx: a.clone(), tx: b.clone(), sent: sent.clone() };
    let config = IpConfig::new((ROUTER, 24), None).with_ipv6(ipv6.then_some((ROUTER6, 64)), None);
    let ip = IpLayer::new(ip_net, config).unwrap();
    let host = stack.then(|| {
        let net = SimNet { mac: MacAddr(HOST_MAC), rx: b, tx: a.clone(), sent: Rc::new(RefCell::new(Vec::new())) };
        let mut c = Config::static_ipv4(HOST, 24, Some(ROUTER));
        if ipv6 {
            c.ipv6 = Some((HOST6, 64));
            c.ipv6_gateway = Some(ROUTER6);
        }
        Stack::new(net, c).unwrap()
    });
    (Link { ip, sent, to_ip: a }, host)
}

/// An Ethernet frame from HOST_MAC to `dst`.
fn eth(dst: [u8; 6], ethertype: [u8; 2], packet: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(packet);
    f
}

/// Sends `p` to `to` `n` times; how many the layer took.
fn send_n(ip: &mut IpLayer<SimNet>, to: IpAddr, p: &[u8], n: usize) -> usize {
    (0..n).filter(|_| ip.send(NextHop::Ip(to), p.len(), |b| b.copy_from_slice(p)).is_ok()).count()
}

/// A UDP datagram from `src:sport` to `dst:dport`, as an IPv4 packet.
fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0; 28 + data.len()];
    wire::write_udp_ipv4(&mut p, src, sport, dst, dport, data).unwrap();
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
fn a_neighbour_in_use_is_asked_for_again_before_its_entry_ends() {
    // A router forwarding to its gateway every second for three minutes:
    // after the first ARP round trip, no packet waits for the neighbour to
    // be resolved again (its entry lasts 60 s; before, each expiry held,
    // and past 32 packets dropped, what was forwarded meanwhile).
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, host) = link(true);
        let host = host.unwrap();
        let _sock = host.bind(7).await.unwrap();
        let p = udp(Ipv4Addr::new(192, 0, 2, 9), 4000, HOST, 7, b"tick");
        l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), p.len(), |b| b.copy_from_slice(&p)).unwrap();
        let _ = recv(&mut l.ip, Duration::from_secs(1)).await;
        let is_ip = |f: &Vec<u8>| f[12..14] == [8, 0];
        let is_arp = |f: &Vec<u8>| f[12..14] == [8, 6];
        let arps = l.sent.borrow().iter().filter(|f| is_arp(f)).count();
        for second in 0..180 {
            let before = l.sent.borrow().len();
            l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), p.len(), |b| b.copy_from_slice(&p)).unwrap();
            assert!(l.sent.borrow()[before..].iter().any(is_ip), "the packet waited for ARP at {second} s");
            // The layer takes the host's answers meanwhile.
            let _ = recv(&mut l.ip, Duration::from_secs(1)).await;
        }
        let asked = l.sent.borrow().iter().filter(|f| is_arp(f)).count() - arps;
        assert!((3..=6).contains(&asked), "{asked} ARP requests in three minutes");
        assert_eq!(l.ip.stats().tx_dropped, 0);
    });
}

#[test]
fn what_waits_for_a_silent_neighbour_is_bounded_and_dropped() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link(false);
        let p = udp(ROUTER, 1, HOST, 2, &[0; 100]);
        assert_eq!(send_n(&mut l.ip, IpAddr::V4(HOST), &p, 100), mirage_tcpip::ip::PER_NEIGHBOR);
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
        // Those of the 100 refused for HOST, the 64th neighbour's, the one
        // off the link, the one too large, and those that waited (for HOST
        // and for 63 others).
        let held = mirage_tcpip::ip::PER_NEIGHBOR as u64;
        assert_eq!(s.tx_dropped, (100 - held) + 1 + 1 + 1 + held + 63, "{s:?}");
        assert_eq!(s.tx_packets, 0);
    });
}

#[test]
fn what_waits_for_all_silent_neighbours_is_bounded_in_bytes() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link(false);
        // Packets of the MTU for eight neighbours, as many as each may hold:
        // the bytes held in all stop them first.
        let p = udp(ROUTER, 1, HOST, 2, &[0; 1472]);
        let per = mirage_tcpip::ip::PER_NEIGHBOR;
        let held: usize =
            (0..8u8).map(|i| send_n(&mut l.ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i)), &p, per)).sum();
        assert_eq!(held, mirage_tcpip::ip::HELD_BYTES / p.len());
        assert!(held < 8 * per);
        // Once they are dropped, room is back.
        assert_eq!(recv(&mut l.ip, Duration::from_secs(5)).await, None);
        assert_eq!(send_n(&mut l.ip, IpAddr::V4(HOST), &p, per), per);
    });
}

/// An ARP packet (`op` 1, request; 2, reply) in a frame to `dst`.
fn arp(op: u8, dst: [u8; 6], sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, op]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn requests_from_made_up_senders_do_not_keep_a_neighbour_unknown() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link(false);
        // One host on the link sends requests from 1,000 made-up
        // addresses: the cache fills with them.
        let frames: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| {
                arp(1, [0xff; 6], [2, 0, 0, 0x66, (i >> 8) as u8, i as u8], Ipv4Addr::from(0xc612_0000 + i), ROUTER)
            })
            .collect();
        l.to_ip.borrow_mut().frames.extend(frames);
        assert_eq!(recv(&mut l.ip, Duration::from_millis(100)).await, None);
        let s = l.ip.stats();
        assert_eq!((s.neighbors, s.arp_in, s.arp_refused), (256, 256, 744), "{s:?}");
        // A packet for HOST: asked, answered, sent to HOST's address.
        let p = udp(ROUTER, 1, HOST, 2, b"still reached");
        l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), p.len(), |b| b.copy_from_slice(&p)).unwrap();
        assert!(l.sent.borrow().iter().any(|f| f[12..14] == [8, 6] && f[21] == 1 && f[38..42] == HOST.octets()));
        l.to_ip.borrow_mut().frames.push_back(arp(2, ROUTER_MAC, HOST_MAC, HOST, ROUTER));
        assert_eq!(recv(&mut l.ip, Duration::from_millis(100)).await, None);
        let last = l.sent.borrow().last().cloned().unwrap();
        assert_eq!((&last[0..6], &last[14..]), (&HOST_MAC[..], &p[..]));
        let s = l.ip.stats();
        assert_eq!((s.neighbors, s.tx_packets, s.tx_dropped), (256, 1, 0), "{s:?}");
    });
}

#[test]
fn forged_arp_and_bad_frames_are_refused_and_counted() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link(false);
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
            frames.push(eth(dst, [8, 0], &packet));
        }
        // A good packet, with Ethernet padding the layer cuts off.
        let good = udp(HOST, 1, ROUTER, 2, b"ok");
        let mut f = eth(ROUTER_MAC, [8, 0], &good);
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

const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);

/// A UDP datagram from `src:sport` to `dst:dport`, as an IPv6 packet.
fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let ulen = (8 + data.len()) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&ulen.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&ulen.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = wire::checksum_ipv6(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&u);
    p
}

/// A neighbour solicitation (type 135) or advertisement (136) in an
/// Ethernet frame: `flags` the advertisement's first byte, `option` the
/// link-layer address option's type (1 source, 2 target) and address.
#[allow(clippy::too_many_arguments)]
fn nd_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    kind: u8,
    flags: u8,
    target: Ipv6Addr,
    option: Option<(u8, [u8; 6])>,
) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, flags, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    if let Some((t, mac)) = option {
        icmp.extend_from_slice(&[t, 1]);
        icmp.extend_from_slice(&mac);
    }
    let c = wire::checksum_ipv6(src, dst, 58, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth_dst.to_vec();
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, hop_limit]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The solicited-node group of ROUTER6, and its hardware address.
fn group() -> (Ipv6Addr, [u8; 6]) {
    let g = mirage_tcpip::ip::solicited_node(ROUTER6);
    (g, mirage_tcpip::ip::multicast_mac(g))
}

/// Whether `f` is a neighbour solicitation for `target`.
fn is_ns_for(f: &[u8], target: Ipv6Addr) -> bool {
    f.len() >= 14 + 40 + 24 && f[12..14] == [0x86, 0xdd] && f[54] == 135 && f[62..78] == target.octets()
}

#[test]
fn ipv6_packets_wait_for_ndp_and_go_both_ways() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, host) = link_with(true, true);
        let host = host.unwrap();
        let sock = host.bind(7).await.unwrap();
        // Sent before the host is known: held, a solicitation goes to the
        // host's solicited-node group, then the packet is delivered.
        let p = udp6(FAR6, 4000, HOST6, 7, b"through the router");
        l.ip.send(NextHop::Ip(IpAddr::V6(HOST6)), p.len(), |b| b.copy_from_slice(&p)).unwrap();
        let ns = l.sent.borrow().first().cloned().unwrap();
        assert!(is_ns_for(&ns, HOST6), "a solicitation goes first: {ns:02x?}");
        let g = mirage_tcpip::ip::solicited_node(HOST6);
        assert_eq!((&ns[0..6], &ns[21], &ns[38..54]), (&mirage_tcpip::ip::multicast_mac(g)[..], &255, &g.octets()[..]));
        let mut buf = [0u8; 64];
        let got = select(sock.recv_from(&mut buf), recv(&mut l.ip, Duration::from_secs(2))).await;
        let mirage_runtime::Either::Left(Ok((n, from))) = got else { panic!("the datagram did not arrive") };
        assert_eq!(&buf[..n], b"through the router");
        assert_eq!(from, SocketAddr::new(IpAddr::V6(FAR6), 4000));
        // The host answers off its prefix through its gateway, this layer,
        // which it resolves by NDP (to the layer's solicited-node group).
        sock.send_to(b"back", from).await.unwrap();
        let back = recv(&mut l.ip, Duration::from_secs(2)).await.expect("the answer reaches the layer");
        let p = wire::parse_ipv6(&back).unwrap();
        assert_eq!((p.src, p.dst, p.next_header), (HOST6, FAR6, 17));
        assert_eq!(&p.payload[8..], b"back");
        let s = l.ip.stats();
        assert_eq!((s.rx_packets, s.tx_packets, s.tx_dropped), (1, 1, 0), "{s:?}");
        // The host's advertisement (it learnt the layer from the
        // solicitation's option, and asked nothing).
        assert!(s.nd_in == 1 && s.nd_refused == 0 && s.neighbors == 1, "{s:?}");
        // IPv4 still works beside it.
        let p4 = udp(Ipv4Addr::new(192, 0, 2, 9), 4000, HOST, 7, b"v4");
        l.ip.send(NextHop::Ip(IpAddr::V4(HOST)), p4.len(), |b| b.copy_from_slice(&p4)).unwrap();
        let got = select(sock.recv_from(&mut buf), recv(&mut l.ip, Duration::from_secs(2))).await;
        let mirage_runtime::Either::Left(Ok((n, _))) = got else { panic!("the IPv4 datagram did not arrive") };
        assert_eq!(&buf[..n], b"v4");
    });
}

#[test]
fn what_waits_for_a_silent_ipv6_neighbour_is_bounded_and_dropped() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link_with(false, true);
        let p = udp6(ROUTER6, 1, HOST6, 2, &[0; 100]);
        assert_eq!(send_n(&mut l.ip, IpAddr::V6(HOST6), &p, 100), mirage_tcpip::ip::PER_NEIGHBOR);
        // IPv6 neighbours share the bound with IPv4's.
        let v4 = udp(ROUTER, 1, HOST, 2, &[0; 10]);
        assert_eq!(send_n(&mut l.ip, IpAddr::V4(HOST), &v4, 1), 1);
        for i in 0..mirage_tcpip::ip::MAX_UNRESOLVED as u16 {
            let to = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, i);
            let r = l.ip.send(NextHop::Ip(IpAddr::V6(to)), p.len(), |b| b.copy_from_slice(&p));
            assert_eq!(r.is_ok(), i < mirage_tcpip::ip::MAX_UNRESOLVED as u16 - 2, "neighbour {to}");
        }
        // Off the link, our own address, and a layer-less family: refused.
        for to in [FAR6, ROUTER6, Ipv6Addr::LOCALHOST] {
            assert_eq!(l.ip.send(NextHop::Ip(IpAddr::V6(to)), 40, |_| ()), Err(Error::Unreachable), "{to}");
        }
        // A link-local neighbour is on every link.
        let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7);
        assert_eq!(l.ip.send(NextHop::Ip(IpAddr::V6(ll)), 40, |_| ()), Err(Error::WouldBlock), "bound reached");
        // Three solicitations a neighbour, a second apart; then what
        // waited is dropped and counted.
        assert_eq!(recv(&mut l.ip, Duration::from_secs(5)).await, None);
        let asked = l.sent.borrow().iter().filter(|f| is_ns_for(f, HOST6)).count();
        assert_eq!(asked, 3);
        let s = l.ip.stats();
        // Those of the 100 refused for HOST6, 2 neighbours beyond the
        // bound, 3 refused next hops, the link-local one; those that waited
        // for HOST6, and 1 + 62 more.
        let held = mirage_tcpip::ip::PER_NEIGHBOR as u64;
        assert_eq!(s.tx_dropped, (100 - held) + 2 + 3 + 1 + held + 1 + 62, "{s:?}");
        assert_eq!(s.tx_packets, 0);
        // Without an IPv6 address, IPv6 goes nowhere.
        let (mut l4, _) = link(false);
        assert_eq!(l4.ip.send(NextHop::Ip(IpAddr::V6(HOST6)), 40, |_| ()), Err(Error::Unreachable));
    });
}

#[test]
fn forged_ndp_and_bad_frames_are_refused_and_counted() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link_with(false, true);
        let (g, gmac) = group();
        let evil = [2, 0, 0, 0, 0, 0x66];
        let ns = |hop, src, option| nd_frame(gmac, HOST_MAC, src, g, hop, 135, 0, ROUTER6, option);
        let na = |dst_mac, dst, flags, target, mac| {
            nd_frame(dst_mac, mac, HOST6, dst, 255, 136, flags, target, Some((2, mac)))
        };
        let mut truncated = ns(255, HOST6, Some((1, HOST_MAC)));
        truncated.truncate(14 + 40 + 20);
        truncated[18..20].copy_from_slice(&20u16.to_be_bytes());
        let c = {
            let ic = &mut truncated[54..];
            ic[2] = 0;
            ic[3] = 0;
            wire::checksum_ipv6(HOST6, g, 58, ic)
        };
        truncated[56..58].copy_from_slice(&c.to_be_bytes());
        let mut zero_option = nd_frame(gmac, HOST_MAC, HOST6, g, 255, 135, 0, ROUTER6, Some((1, HOST_MAC)));
        zero_option[54 + 25] = 0; // an option of length 0 (RFC 4861, 7.1.1)
        let c = {
            let ic = &mut zero_option[54..];
            ic[2] = 0;
            ic[3] = 0;
            wire::checksum_ipv6(HOST6, g, 58, ic)
        };
        zero_option[56..58].copy_from_slice(&c.to_be_bytes());
        let mut bad_sum = ns(255, HOST6, Some((1, HOST_MAC)));
        bad_sum[57] ^= 1;
        let frames = vec![
            // Forwarded (hop limit not 255): refused.
            ns(64, HOST6, Some((1, HOST_MAC))),
            // Truncated, and with a zero-length option: refused.
            truncated,
            zero_option,
            // An unsolicited advertisement: refused.
            na(ROUTER_MAC, ROUTER6, 0x20, HOST6, evil),
            // A "solicited" advertisement to a multicast address: malformed.
            na(gmac, g, 0x60, HOST6, evil),
            // A solicitation from a multicast hardware address: refused.
            ns(255, HOST6, Some((1, [0x33, 0x33, 0, 0, 0, 1]))),
            // Duplicate address detection with an option: malformed.
            ns(255, Ipv6Addr::UNSPECIFIED, Some((1, HOST_MAC))),
            // A solicitation for another host's address: not ours.
            nd_frame(gmac, HOST_MAC, HOST6, g, 255, 135, 0, FAR6, Some((1, HOST_MAC))),
            // A real solicitation: learnt and answered.
            ns(255, HOST6, Some((1, HOST_MAC))),
            // Then one that would move HOST6, and an unsolicited
            // advertisement that would: refused.
            ns(255, HOST6, Some((1, evil))),
            na(ROUTER_MAC, ROUTER6, 0x20, HOST6, evil),
            // A bad checksum: dropped before it is read.
            bad_sum,
        ];
        let mut frames: Vec<Vec<u8>> = frames;
        // Not for this host's hardware address, and a datagram to the
        // solicited-node group (taken for NDP only).
        let datagram = udp6(HOST6, 1, ROUTER6, 2, b"x");
        for dst in [[2, 0, 0, 0, 0, 9], gmac, [0xff; 6]] {
            frames.push(eth(dst, [0x86, 0xdd], &datagram));
        }
        // A good packet, padded.
        let good = udp6(HOST6, 1, FAR6, 2, b"ok");
        let mut f = eth(ROUTER_MAC, [0x86, 0xdd], &good);
        f.resize(f.len() + 10, 0);
        frames.push(f);
        l.to_ip.borrow_mut().frames.extend(frames);
        let got = recv(&mut l.ip, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got, good);
        let s = l.ip.stats();
        assert_eq!((s.nd_in, s.nd_refused, s.rx_dropped, s.rx_packets), (1, 10, 4, 1), "{s:?}");
        // One advertisement went, to HOST_MAC, for ROUTER6, solicited.
        let adverts: Vec<_> =
            l.sent.borrow().iter().filter(|f| f[12..14] == [0x86, 0xdd] && f[54] == 136).cloned().collect();
        assert_eq!(adverts.len(), 1);
        let a = &adverts[0];
        assert_eq!((&a[0..6], a[21], a[58], &a[62..78]), (&HOST_MAC[..], 255, 0x60, &ROUTER6.octets()[..]));
        assert!(wire::parse(a).is_ok(), "the advertisement's checksum holds");
        // HOST6 is known at its real address: a packet goes straight there.
        l.ip.send(NextHop::Ip(IpAddr::V6(HOST6)), good.len(), |b| b.copy_from_slice(&good)).unwrap();
        assert_eq!(&l.sent.borrow().last().unwrap()[0..6], &HOST_MAC);
    });
}

#[test]
fn a_flood_of_solicitations_is_bounded() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, _) = link_with(false, true);
        let (g, gmac) = group();
        // 2,000 senders solicit our address, and 2,000 other targets are
        // solicited: the cache stays within its 256 entries, nothing waits,
        // and the other targets leave nothing behind.
        let mut frames = Vec::new();
        for i in 0..2000u16 {
            let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, i);
            let mac = [2, 0, 0, 1, (i >> 8) as u8, i as u8];
            frames.push(nd_frame(gmac, mac, src, g, 255, 135, 0, ROUTER6, Some((1, mac))));
            let other = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 3, i);
            let og = mirage_tcpip::ip::solicited_node(other);
            frames.push(nd_frame(
                mirage_tcpip::ip::multicast_mac(og),
                mac,
                src,
                og,
                255,
                135,
                0,
                other,
                Some((1, mac)),
            ));
        }
        l.to_ip.borrow_mut().frames.extend(frames);
        assert_eq!(recv(&mut l.ip, Duration::from_secs(1)).await, None);
        let s = l.ip.stats();
        assert!(s.neighbors <= 256, "{s:?}");
        // Each solicitation was answered or refused; the other groups'
        // frames were not for this host.
        assert_eq!(s.nd_in + s.nd_refused, 2000, "{s:?}");
        assert_eq!(s.rx_dropped, 2000, "{s:?}");
    });
}

#[test]
fn ipv6_configurations_are_checked() {
    let net = || SimNet {
        mac: MacAddr(ROUTER_MAC),
        rx: Rc::new(RefCell::new(Wire::default())),
        tx: Rc::new(RefCell::new(Wire::default())),
        sent: Rc::new(RefCell::new(Vec::new())),
    };
    let c = |a: Option<(Ipv6Addr, u8)>, gw: Option<Ipv6Addr>| IpConfig::new((ROUTER, 24), None).with_ipv6(a, gw);
    let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    assert!(IpLayer::new(net(), c(Some((ROUTER6, 64)), Some(HOST6))).is_ok());
    assert!(IpLayer::new(net(), c(Some((ROUTER6, 64)), Some(ll))).is_ok());
    for (config, want) in [
        (c(Some((Ipv6Addr::UNSPECIFIED, 64)), None), mirage_tcpip::IpError::BadIpv6Address),
        (c(Some((Ipv6Addr::LOCALHOST, 128)), None), mirage_tcpip::IpError::BadIpv6Address),
        (c(Some(("ff02::1".parse().unwrap(), 64)), None), mirage_tcpip::IpError::BadIpv6Address),
        (c(Some((ROUTER6, 64)), Some(FAR6)), mirage_tcpip::IpError::BadIpv6Gateway),
        (c(Some((ROUTER6, 64)), Some(ROUTER6)), mirage_tcpip::IpError::BadIpv6Gateway),
        (c(None, Some(HOST6)), mirage_tcpip::IpError::BadIpv6Gateway),
    ] {
        assert_eq!(IpLayer::new(net(), config).err(), Some(want), "{config:?}");
    }
}

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
const DHCP_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// An Ethernet frame to `dst_mac` carrying a UDP datagram from port 67 to
/// 68, as a DHCP server sends it.
fn dhcp_frame(dst_mac: [u8; 6], dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&[8, 0]);
    let mut p = vec![0; 28 + payload.len()];
    wire::write_udp_ipv4(&mut p, DHCP_SERVER, 67, dst, 68, payload).unwrap();
    f.extend_from_slice(&p);
    f
}

/// Plays the DHCP server (and ARP for its address) for the frames the
/// layer sent since `seen`, for `time` of simulated time; `tamper`
/// changes each reply's payload before it goes (`false`: not sent). The
/// IPv4 destinations of the DHCP requests seen.
async fn serve(
    l: &mut Link,
    server: &mut mirage_dhcpd::Server,
    seen: &mut usize,
    time: Duration,
    tamper: &mut dyn FnMut(&mut Vec<u8>) -> Vec<Vec<u8>>,
) -> Vec<Ipv4Addr> {
    let mut requests = Vec::new();
    let end = mirage_runtime::time::now() + time;
    while mirage_runtime::time::now() < end {
        let _ = recv(&mut l.ip, Duration::from_millis(500)).await;
        let frames: Vec<Vec<u8>> = l.sent.borrow()[*seen..].to_vec();
        *seen += frames.len();
        for f in frames {
            match wire::parse(&f) {
                Ok((_, wire::Packet::Arp(a))) if a.op == 1 && a.target_ip == DHCP_SERVER => {
                    let mut r = a.sender_mac.to_vec();
                    r.extend_from_slice(&SERVER_MAC);
                    r.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
                    r.extend_from_slice(&SERVER_MAC);
                    r.extend_from_slice(&DHCP_SERVER.octets());
                    r.extend_from_slice(&a.sender_mac);
                    r.extend_from_slice(&a.sender_ip.octets());
                    l.to_ip.borrow_mut().frames.push_back(r);
                }
                Ok((_, wire::Packet::Ipv4(p))) if p.protocol == 17 && p.payload[2..4] == [0, 67] => {
                    requests.push(p.dst);
                    let now = mirage_runtime::time::now().as_nanos() / 1_000_000_000;
                    let Some(reply) = server.input(&p.payload[8..], now) else { continue };
                    let (mac, dst) = match reply.to {
                        mirage_dhcpd::Destination::Broadcast => ([0xff; 6], Ipv4Addr::BROADCAST),
                        mirage_dhcpd::Destination::Unicast(a, m) => (m, a),
                    };
                    let mut payload = reply.payload;
                    for extra in tamper(&mut payload) {
                        l.to_ip.borrow_mut().frames.push_back(dhcp_frame(mac, dst, &extra));
                    }
                    l.to_ip.borrow_mut().frames.push_back(dhcp_frame(mac, dst, &payload));
                }
                _ => {}
            }
        }
    }
    requests
}

#[test]
fn a_dhcp_lease_is_taken_renewed_and_lost() {
    mirage_runtime::run(&mut Sim::default(), async {
        let a = Rc::new(RefCell::new(Wire::default()));
        let sent = Rc::new(RefCell::new(Vec::new()));
        let net = SimNet {
            mac: MacAddr(HOST_MAC),
            rx: a.clone(),
            tx: Rc::new(RefCell::new(Wire::default())),
            sent: sent.clone(),
        };
        let ip = IpLayer::new(net, IpConfig::dhcp()).unwrap();
        let mut l = Link { ip, sent, to_ip: a };
        assert_eq!(l.ip.info().ipv4, (Ipv4Addr::UNSPECIFIED, 0));
        assert!(l.ip.info().dhcp);
        // No lease: no IPv4 neighbour.
        assert_eq!(l.ip.send(NextHop::Ip(IpAddr::V4(DHCP_SERVER)), 20, |_| ()), Err(Error::Unreachable));
        let mut server = mirage_dhcpd::Server::new(mirage_dhcpd::Config {
            server: DHCP_SERVER,
            prefix: 24,
            pool: (Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(10, 0, 0, 59)),
            router: Some(DHCP_SERVER),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            lease_secs: 60,
            reservations: Vec::new(),
        })
        .unwrap();
        let mut seen = 0;
        // Each reply comes after three that are not for this client: one
        // for another hardware address, one of another transaction, one cut
        // short.
        let mut hostile = |p: &mut Vec<u8>| {
            let mut other_mac = p.clone();
            other_mac[28 + 5] ^= 1;
            let mut other_xid = p.clone();
            other_xid[4] ^= 0x80;
            vec![other_mac, other_xid, p[..100].to_vec()]
        };
        let requests = serve(&mut l, &mut server, &mut seen, Duration::from_secs(3), &mut hostile).await;
        let info = l.ip.info();
        assert_eq!(info.ipv4, (Ipv4Addr::new(10, 0, 0, 50), 24), "{requests:?}");
        assert_eq!((info.gateway, info.dns[0]), (Some(DHCP_SERVER), Some(Ipv4Addr::new(10, 0, 0, 53))));
        let s = l.ip.stats();
        // DISCOVER and REQUEST were broadcast; 3 hostile copies of the
        // OFFER and of the ACK were dropped.
        assert_eq!(requests, [Ipv4Addr::BROADCAST; 2]);
        assert_eq!((s.dhcp_acks, s.dhcp_dropped, s.rx_packets), (1, 6, 0), "{s:?}");
        // At T1 (30 s) the client renews with the server, unicast (the
        // layer resolves the server by ARP).
        let requests = serve(&mut l, &mut server, &mut seen, Duration::from_secs(40), &mut |_| Vec::new()).await;
        assert_eq!(requests, [DHCP_SERVER], "one unicast REQUEST at T1");
        assert_eq!(l.ip.stats().dhcp_acks, 2);
        assert_eq!(l.ip.info().ipv4.0, Ipv4Addr::new(10, 0, 0, 50));
        // The server goes silent: the lease (renewed at about 30 s, for
        // 60 s) runs out, and the address with it.
        assert_eq!(recv(&mut l.ip, Duration::from_secs(70)).await, None);
        let asked = l.sent.borrow()[seen..].iter().filter(|f| f.len() > 40 && f[36..38] == [0, 67]).count();
        assert!(asked >= 2, "renewing, then rebinding, asked again: {asked}");
        assert_eq!(l.ip.info().ipv4, (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(l.ip.info().gateway, None);
    });
}

#[test]
fn a_packet_received_framed_is_sent_on_in_place() {
    mirage_runtime::run(&mut Sim::default(), async {
        let (mut l, host) = link(true);
        let host = host.unwrap();
        let sock = host.bind(7).await.unwrap();
        // The host's datagram to a network beyond the layer, handed over
        // inside its frame: the packet after the link's 14 bytes.
        let far = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 4000);
        sock.send_to(b"out", far).await.unwrap();
        let mut frame = None;
        for _ in 0..100 {
            if let Ok(Some(got)) = l.ip.try_recv_framed(|f, at, _| (f.to_vec(), at)) {
                frame = Some(got);
                break;
            }
            let _ = select(l.ip.readable(), sleep(Duration::from_millis(10))).await;
        }
        let (mut frame, at) = frame.expect("the host's datagram reaches the layer");
        assert_eq!(at, 14);
        assert_eq!((&frame[0..6], &frame[6..12]), (&ROUTER_MAC[..], &HOST_MAC[..]));
        let p = wire::parse_ipv4(&frame[at..]).unwrap();
        assert_eq!((p.src, p.dst, &p.payload[8..]), (HOST, Ipv4Addr::new(192, 0, 2, 9), &b"out"[..]));
        // Sent back to the host (now a known neighbour) where it lies: the
        // link's header is written over the one it came with.
        let back = udp(Ipv4Addr::new(192, 0, 2, 9), 4000, HOST, 7, b"in place");
        frame.truncate(at);
        frame.extend_from_slice(&back);
        let sent_before = l.sent.borrow().len();
        l.ip.send_in_place(NextHop::Ip(IpAddr::V4(HOST)), &mut frame, at, None).unwrap();
        assert_eq!((&frame[0..6], &frame[6..12], &frame[12..14]), (&HOST_MAC[..], &ROUTER_MAC[..], &[8, 0][..]));
        assert_eq!(l.sent.borrow()[sent_before..], [frame.clone()], "the frame goes out as it lies");
        // A packet with no room before it is copied behind a header.
        let mut bare = udp(Ipv4Addr::new(192, 0, 2, 9), 4000, HOST, 7, b"copied");
        l.ip.send_in_place(NextHop::Ip(IpAddr::V4(HOST)), &mut bare, 0, None).unwrap();
        assert_eq!(l.sent.borrow().last().map(|f| f[14..].to_vec()), Some(bare.clone()));
        // An offset past the frame's end is refused.
        assert!(l.ip.send_in_place(NextHop::Ip(IpAddr::V4(HOST)), &mut bare, 1000, None).is_err());
        let mut buf = [0u8; 64];
        for want in [&b"in place"[..], b"copied"] {
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (want, far));
        }
        assert_eq!(l.ip.stats().tx_packets, 2, "{:?}", l.ip.stats());
    });
}
