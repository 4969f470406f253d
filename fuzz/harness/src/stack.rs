//! The direct TCP/IP stack (`mirage_tcpip::Stack`) fed frames as any host
//! on its link may send them, or a lying DHCP server: the input is a byte
//! of configuration (bit 0: DHCP rather than a static address; bit 1:
//! IPv6 too), then frames, each after a byte of tens of milliseconds to
//! let pass and a 16-bit length. A listener on port 80 echoes what a
//! connection sends, a UDP socket on 5353 each datagram. Whatever
//! arrives, nothing panics (the engine under the stack asserts on what it
//! is told: a lease's router, a server's address), and every frame the
//! stack sends is well formed, with right checksums, within the MTU.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::rc::Rc;
use std::task::{Poll, Waker};

use mirage_devices::flow::Flow;
use mirage_devices::net::{self, MacAddr, Net, NetInfo};
use mirage_devices::stack::{Tcp, TcpListener, Udp, UdpSocket};
use mirage_runtime::spawn;
use mirage_runtime::time::{Duration, sleep};
use mirage_tcpip::{Config, Stack};

/// The stack's hardware address and addresses, as `wire::built` frames
/// them (to 02:00:00:00:00:01).
pub const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const MTU: u16 = 1500;

#[derive(Default)]
struct Link {
    frames: VecDeque<Vec<u8>>,
    waker: Option<Waker>,
}

struct FuzzNet {
    link: Rc<RefCell<Link>>,
}

impl Net for FuzzNet {
    fn info(&self) -> NetInfo {
        NetInfo::new(MacAddr(MAC), MTU)
    }

    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, net::Error> {
        Ok(self.link.borrow_mut().frames.pop_front().map(|mut frame| f(&mut frame)))
    }

    async fn readable(&mut self) -> Result<(), net::Error> {
        poll_fn(|cx| {
            let mut link = self.link.borrow_mut();
            if link.frames.is_empty() {
                link.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        })
        .await
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, net::Error> {
        assert!(len <= 14 + MTU as usize, "a {len}-byte frame on an interface of MTU {MTU}");
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        if let Err(e) = mirage_tcpip::wire::parse(&frame) {
            panic!("the stack sent a malformed frame ({e:?}): {frame:02x?}");
        }
        Ok(r)
    }
}

/// The frames of an input, each with the time to let pass before it.
fn frames(data: &[u8]) -> Vec<(Duration, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [wait, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        out.push((Duration::from_millis(u64::from(*wait) * 10), &tail[..len]));
        rest = &tail[len..];
    }
    out
}

pub fn run(data: &[u8]) {
    let Some((&setup, rest)) = data.split_first() else { return };
    let frames = frames(rest);
    crate::sim::run(async move {
        let link = Rc::new(RefCell::new(Link::default()));
        let mut config = if setup & 1 != 0 {
            Config::default()
        } else {
            Config::static_ipv4(ADDR, 24, Some(Ipv4Addr::new(10, 0, 0, 254)))
        };
        if setup & 2 != 0 {
            config.ipv6 = Some((ADDR6, 64));
        }
        config.random_seed = 7;
        let stack = Stack::new(FuzzNet { link: link.clone() }, config).expect("a stack");
        let listener = stack.listen(80, 8).await.expect("port 80");
        spawn(async move {
            while let Ok((mut flow, _)) = listener.accept().await {
                spawn(async move {
                    let mut buf = [0u8; 2048];
                    while let Ok(n @ 1..) = flow.read(&mut buf).await {
                        if flow.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = flow.close().await;
                });
            }
        });
        let udp = stack.bind(5353).await.expect("port 5353");
        spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
        for (wait, frame) in frames {
            sleep(wait).await;
            let mut l = link.borrow_mut();
            l.frames.push_back(frame.to_vec());
            if let Some(w) = l.waker.take() {
                w.wake();
            }
        }
        // Every timer the frames set runs out: retransmissions, the
        // stack's expiry, the DHCP client's renewals.
        sleep(Duration::from_secs(90)).await;
        let stats = stack.stats();
        assert!(stats.tcp_sockets <= 64, "{stats:?}");
    });
}

/// Seeds: each configuration with frames a host on the link sends first
/// (an ARP request, a SYN to port 80, a datagram to 5353, an echo
/// request, the same over IPv6).
pub fn seeds() -> Vec<crate::seeds::Seed> {
    let v4 = |recipe: u8, body: &[u8]| {
        let mut input = vec![recipe];
        input.extend_from_slice(&[10, 0, 0, 2]);
        input.extend_from_slice(&ADDR.octets());
        input.resize(33, 0);
        input.extend_from_slice(body);
        crate::wire::built(&input).expect("a recipe")
    };
    let v6 = |recipe: u8, body: &[u8]| {
        let mut input = vec![recipe];
        input.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).octets());
        input.extend_from_slice(&ADDR6.octets());
        input.extend_from_slice(body);
        crate::wire::built(&input).expect("a recipe")
    };
    let syn = [0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0, 2, 4, 5, 0xb4];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 0, 0, 2]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    let input = |setup: u8, frames: &[&[u8]]| {
        let mut input = vec![setup];
        for f in frames {
            input.push(1);
            input.extend_from_slice(&(f.len() as u16).to_be_bytes());
            input.extend_from_slice(f);
        }
        input
    };
    let (syn4, udp4, echo4) =
        (v4(0x04, &syn), v4(0x02, &[0x04, 0xd2, 0x14, 0xe9, 0, 0, 0, 0, b'q']), v4(0x00, &[8, 0, 0, 0, 0, 1, 0, 7]));
    let (syn6, udp6) = (v6(0x05, &syn), v6(0x03, &[0x04, 0xd2, 0x14, 0xe9, 0, 0, 0, 0, b'q']));
    vec![
        ("stack", "static-arp-syn-udp-echo", input(0, &[&arp, &syn4, &udp4, &echo4])),
        ("stack", "static-ipv6-syn-udp", input(2, &[&arp, &syn6, &udp6])),
        ("stack", "dhcp-arp-syn", input(1, &[&arp, &syn4])),
    ]
}
