//! Two stacks back to back through a simulated link that loses,
//! duplicates, reorders and corrupts frames, on a simulated clock that
//! jumps to the next deadline: minutes of retransmission timers pass in
//! milliseconds, and every run with a seed is the same run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::task::{Poll, Waker};

use mirage_devices::flow::{self, Flow as _};
use mirage_devices::net::{self, MacAddr, Net, NetInfo};
use mirage_devices::stack::{self, Tcp, TcpListener, Udp, UdpSocket};
use mirage_runtime::time::{Duration, Instant, now, sleep, sleep_until};
use mirage_runtime::{Interest, Platform, Source, select, spawn};
use mirage_tcpip::{Config, Stack};

/// A clock that jumps to each deadline.
#[derive(Default)]
struct Sim {
    now: u64,
}

impl Platform for Sim {
    fn now(&self) -> u64 {
        self.now
    }
    fn wait(&mut self, deadline: Option<u64>, _io: &[(Source, Interest)], _ready: &mut dyn FnMut(Source, Interest)) {
        // Nothing to wait for means every task waits on the others: a
        // deadlock, which a test must report rather than hang on.
        let d = deadline.expect("deadlock: every task waits and no timer is set");
        self.now = self.now.max(d);

    }
}

/// What the link does to frames, in percent.
#[derive(Clone, Copy, Default)]
struct Faults {
    loss: u64,
    duplicate: u64,
    reorder: u64,
    corrupt: u64,
    /// Drop everything (a cable pulled).
    cut: bool,
}

/// One direction of the link: frames by delivery time.
#[derive(Default)]
struct Wire {
    frames: BTreeMap<(u64, u64), Vec<u8>>,
    seq: u64,
    generation: u64,
    waker: Option<Waker>,
}

struct Shared {
    faults: Cell<Faults>,
    rng: Cell<u64>,
    delivered: Cell<u64>,
}

impl Shared {
    fn rand(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }
    fn chance(&self, percent: u64) -> bool {
        percent > 0 && self.rand() % 100 < percent
    }
}

struct SimNet {
    mac: MacAddr,
    rx: Rc<RefCell<Wire>>,
    tx: Rc<RefCell<Wire>>,
    link: Rc<Shared>,
    /// A copy of every frame sent, for tests that watch a stack's answers.
    sent: Option<Rc<RefCell<Vec<Vec<u8>>>>>,
}

/// One-way latency.
const LATENCY: u64 = 1_000_000;

fn push(wire: &RefCell<Wire>, at: u64, frame: Vec<u8>) {
    let mut w = wire.borrow_mut();
    let seq = w.seq;
    w.seq += 1;
    w.frames.insert((at, seq), frame);
    w.generation += 1;
    if let Some(waker) = w.waker.take() {
        waker.wake();
    }
}

impl Net for SimNet {
    fn info(&self) -> NetInfo {
        NetInfo::new(self.mac, 1500)
    }

    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, net::Error> {
        let t = now().as_nanos();
        let mut w = self.rx.borrow_mut();
        let Some((&key, _)) = w.frames.iter().next() else { return Ok(None) };
        if key.0 > t {
            return Ok(None);
        }
        let mut frame = w.frames.remove(&key).unwrap();
        drop(w);
        self.link.delivered.set(self.link.delivered.get() + 1);
        Ok(Some(f(&mut frame)))
    }

    async fn readable(&mut self) -> Result<(), net::Error> {
        loop {
            let (next, generation) = {
                let w = self.rx.borrow();
                (w.frames.keys().next().map(|k| k.0), w.generation)
            };
            if next.is_some_and(|t| t <= now().as_nanos()) {
                return Ok(());
            }
            let rx = self.rx.clone();
            let changed = poll_fn(move |cx| {
                let mut w = rx.borrow_mut();
                if w.generation != generation {
                    Poll::Ready(())
                } else {
                    w.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            match next {
                Some(t) => {
                    select(sleep_until(Instant(t)), changed).await;
                }
                None => changed.await,
            }
        }
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, net::Error> {
        if len > 1514 {
            return Err(net::Error::TooLarge);
        }
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        if let Some(sent) = &self.sent {
            sent.borrow_mut().push(frame.clone());
        }
        let link = &self.link;
        let faults = link.faults.get();
        if faults.cut || link.chance(faults.loss) {
            return Ok(r);
        }
        if link.chance(faults.corrupt) && !frame.is_empty() {
            let i = (link.rand() as usize) % frame.len();
            frame[i] ^= (link.rand() % 255 + 1) as u8;
        }
        let t = now().as_nanos();
        let copies = if link.chance(faults.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let extra = if link.chance(faults.reorder) { link.rand() % 5_000_000 } else { 0 };
            push(&self.tx, t + LATENCY + extra, frame.clone());
        }
        Ok(r)
    }
}

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn config(addr: Ipv4Addr, seed: u64) -> Config {
    let mut c = Config::static_ipv4(addr, 24, None);
    c.random_seed = seed;
    // At 30% loss each way a lone retransmission fails half the time:
    // give the link all the time it needs.
    c.timeout = None;
    c.connect_timeout = Duration::from_secs(3600);
    c
}

/// Two stacks joined by a link.
struct Pair {
    a: Stack,
    b: Stack,
    link: Rc<Shared>,
    /// Frames from a to b.
    ab: Rc<RefCell<Wire>>,
    /// Every frame b sent.
    from_b: Rc<RefCell<Vec<Vec<u8>>>>,
}

fn pair_with(seed: u64, faults: Faults, ca: Config, cb: Config) -> Pair {
    let link = Rc::new(Shared { faults: Cell::new(faults), rng: Cell::new(seed * 2 + 1), delivered: Cell::new(0) });
    let ab = Rc::new(RefCell::new(Wire::default()));
    let ba = Rc::new(RefCell::new(Wire::default()));
    let from_b = Rc::new(RefCell::new(Vec::new()));
    let na = SimNet { mac: MacAddr(MAC_A), rx: ba.clone(), tx: ab.clone(), link: link.clone(), sent: None };
    let nb = SimNet { mac: MacAddr(MAC_B), rx: ab.clone(), tx: ba, link: link.clone(), sent: Some(from_b.clone()) };
    Pair { a: Stack::new(na, ca).unwrap(), b: Stack::new(nb, cb).unwrap(), link, ab, from_b }
}

/// Two stacks joined by a link with `faults`.
fn pair(seed: u64, faults: Faults) -> (Stack, Stack, Rc<Shared>) {
    let p = pair_with(seed, faults, config(A, seed), config(B, seed.wrapping_mul(31)));
    (p.a, p.b, p.link)
}

fn run<F: Future>(f: F) -> F::Output {
    mirage_runtime::run(&mut Sim::default(), f)
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    testkit::noise(seed | 1, len)
}

async fn read_to_end(f: &mut impl flow::Flow) -> Result<Vec<u8>, flow::Error> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

const HARSH: Faults = Faults { loss: 30, duplicate: 10, reorder: 20, corrupt: 10, cut: false };

/// Sends `payload` from `a` to `b` and back at the same time.
async fn exchange(a: &Stack, b: &Stack, payload: Vec<u8>) {
    let listener = b.listen(80, 4).await.unwrap();
    let expected = payload.clone();
    let server = spawn(async move {
        let (mut f, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), A);
        // Echo everything back while it arrives, then close.
        let mut buf = vec![0u8; 8192];
        let mut got = Vec::new();
        loop {
            let n = f.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            f.write_all(&buf[..n]).await.unwrap();
        }
        f.close().await.unwrap();
        got
    });
    let c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
    // Write and read at once: the echo fills both windows.
    let (mut r, mut w) = c.split();
    let sender = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().unwrap();
    };
    let receiver = async {
        let mut back = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return back;
            }
            back.extend_from_slice(&buf[..n]);
        }
    };
    let ((), back) = mirage_runtime::join(sender, receiver).await;
    let got = server.await;
    assert!(got == expected, "server got {} bytes, expected {}", got.len(), expected.len());
    assert!(back == expected, "client got {} bytes back, expected {}", back.len(), expected.len());
}

#[test]
fn ten_mebibytes_arrive_byte_exact_over_a_harsh_link() {
    for seed in [1u64, 2, 3] {
        run(async move {
            let (a, b, link) = pair(seed, HARSH);
            let payload = data(10 << 20, seed);
            let listener = b.listen(80, 4).await.unwrap();
            let expected = payload.clone();
            let server = spawn(async move {
                let (mut f, _) = listener.accept().await.unwrap();
                let got = read_to_end(&mut f).await.unwrap();
                f.write_all(b"thanks").await.unwrap();
                f.close().await.unwrap();
                got
            });
            let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
            c.write_all(&payload).await.unwrap();
            c.shutdown().await.unwrap();
            assert_eq!(read_to_end(&mut c).await.unwrap(), b"thanks");
            let got = server.await;
            assert!(got == expected, "seed {seed}: got {} bytes, expected {}", got.len(), expected.len());
            let (sa, sb) = (a.stats(), b.stats());
            // Corruption happened and was caught before the engine.
            assert!(sa.malformed + sb.malformed > 0, "seed {seed}: no corrupted frame was counted");
            eprintln!(
                "seed {seed}: {} frames delivered, {} malformed dropped, {:.0} s simulated",
                link.delivered.get(),
                sa.malformed + sb.malformed,
                now().as_nanos() as f64 / 1e9
            );
        });
    }
}

#[test]
fn echo_both_ways_at_once_over_a_harsh_link() {
    run(async {
        // Both ends retransmit at once here: this is the case where the
        // engine's rewound ACKs would stall the connection (see
        // `device::AckSeq`).
        for seed in [7, 8] {
            let (a, b, _) = pair(seed, HARSH);
            exchange(&a, &b, data(4 << 20, seed)).await;
        }
    });
}

/// Simulated time to send `len` bytes one way with `buffer`-byte windows.
async fn one_way(buffer: usize, len: usize) -> Duration {
    let (mut ca, mut cb) = (config(A, 1), config(B, 2));
    ca.tcp_buffer = buffer;
    cb.tcp_buffer = buffer;
    let Pair { a, b, .. } = pair_with(9, Faults::default(), ca, cb);
    let l = b.listen(80, 1).await.unwrap();
    let server = spawn(async move {
        let (mut f, _) = l.accept().await.unwrap();
        read_to_end(&mut f).await.unwrap().len()
    });
    let start = now();
    let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
    c.write_all(&data(len, 1)).await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(server.await, len);
    now().saturating_duration_since(start)
}

#[test]
fn window_scaling_with_large_buffers() {
    run(async {
        // 16 MiB over a 2 ms round trip: 64 KiB windows need at least 256
        // round trips. Scaled 1 MiB windows do better than twice as well
        // (the clock is simulated: the figures are the same every run).
        let small = one_way(64 << 10, 16 << 20).await;
        let large = one_way(1 << 20, 16 << 20).await;
        assert!(small >= Duration::from_millis(512), "64 KiB windows took {small:?}");
        assert!(large * 2 < small, "1 MiB windows took {large:?}, 64 KiB ones {small:?}: the window did not scale");
    });
}

#[test]
fn client_closes_first() {
    run(async {
        let (a, b, _) = pair(11, HARSH);
        let l = b.listen(80, 1).await.unwrap();
        let server = spawn(async move {
            let (mut f, _) = l.accept().await.unwrap();
            let got = read_to_end(&mut f).await.unwrap();
            // Writing after the peer's FIN still works (half close).
            f.write_all(b"late reply").await.unwrap();
            f.close().await.unwrap();
            got
        });
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(c.write(b"more").await, Err(flow::Error::Closed));
        assert_eq!(read_to_end(&mut c).await.unwrap(), b"late reply");
        c.close().await.unwrap();
        assert_eq!(server.await, b"hello");
    });
}

#[test]
fn server_closes_first() {
    run(async {
        let (a, b, _) = pair(12, HARSH);
        let l = b.listen(80, 1).await.unwrap();
        let server = spawn(async move {
            let (mut f, _) = l.accept().await.unwrap();
            f.write_all(b"banner").await.unwrap();
            f.shutdown().await.unwrap();
            read_to_end(&mut f).await.unwrap()
        });
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        assert_eq!(read_to_end(&mut c).await.unwrap(), b"banner");
        c.write_all(b"bye").await.unwrap();
        c.close().await.unwrap();
        assert_eq!(server.await, b"bye");
    });
}

#[test]
fn a_closed_connection_is_forgotten_without_waiting_out_time_wait() {
    run(async {
        let (a, b, _) = pair(14, Faults::default());
        let l = b.listen(80, 4).await.unwrap();
        let (mut f, _) = {
            let (c, accepted) = mirage_runtime::join(a.connect(SocketAddr::new(B.into(), 80)), l.accept()).await;
            drop(c.unwrap());
            accepted.unwrap()
        };
        assert_eq!(read_to_end(&mut f).await.unwrap(), b"");
        f.close().await.unwrap();
        sleep(Duration::from_secs(1)).await;
        let idle = b.stats().tcp_sockets;
        for i in 0..20u8 {
            let (c, accepted) = mirage_runtime::join(a.connect(SocketAddr::new(B.into(), 80)), l.accept()).await;
            let (mut f, mut c) = (accepted.unwrap().0, c.unwrap());
            f.write_all(&[i; 100]).await.unwrap();
            // The server closes first: its side enters TIME-WAIT.
            f.close().await.unwrap();
            assert_eq!(read_to_end(&mut c).await.unwrap(), [i; 100]);
            c.close().await.unwrap();
        }
        // Well inside the engine's 10 s of TIME-WAIT.
        sleep(Duration::from_secs(1)).await;
        let held = b.stats().tcp_sockets;
        assert!(held <= idle, "{held} TCP sockets held after 20 closed connections ({idle} before)");
    });
}

#[test]
fn both_close_at_once() {
    run(async {
        let (a, b, _) = pair(13, HARSH);
        let l = b.listen(80, 1).await.unwrap();
        let server = spawn(async move {
            let (mut f, _) = l.accept().await.unwrap();
            f.write_all(b"from b").await.unwrap();
            f.shutdown().await.unwrap();
            read_to_end(&mut f).await.unwrap()
        });
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        c.write_all(b"from a").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut c).await.unwrap(), b"from b");
        assert_eq!(server.await, b"from a");
        drop(c);
        // Both sides' sockets are gone once the closing handshakes end.
        sleep(Duration::from_secs(600)).await;
    });
}

#[test]
fn connecting_to_a_closed_port_is_refused_then_a_listener_accepts() {
    run(async {
        let (a, b, _) = pair(14, Faults::default());
        let to = SocketAddr::new(B.into(), 8080);
        assert_eq!(a.connect(to).await.err(), Some(stack::Error::Refused));
        let l = b.listen(8080, 1).await.unwrap();
        let server = spawn(async move { l.accept().await.map(|(_, peer)| peer) });
        let c = a.connect(to).await.unwrap();
        assert_eq!(server.await.unwrap().ip(), A);
        drop(c);
    });
}

#[test]
fn a_reset_reaches_the_peer() {
    run(async {
        let (a, b, _) = pair(15, Faults::default());
        let l = b.listen(80, 1).await.unwrap();
        let server = spawn(async move {
            let (f, _) = l.accept().await.unwrap();
            f.abort();
        });
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        server.await;
        let mut buf = [0u8; 10];
        assert_eq!(c.read(&mut buf).await, Err(flow::Error::Reset));
        assert_eq!(c.write(b"x").await, Err(flow::Error::Reset));
    });
}

#[test]
fn dropping_a_listener_resets_connections_not_yet_accepted() {
    run(async {
        let (a, b, _) = pair(16, Faults::default());
        let l = b.listen(80, 4).await.unwrap();
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        drop(l);
        let mut buf = [0u8; 10];
        assert_eq!(c.read(&mut buf).await, Err(flow::Error::Reset));
        // The port is free again.
        let _again = b.listen(80, 1).await.unwrap();
        assert_eq!(b.listen(80, 1).await.err(), Some(stack::Error::AddrInUse));
    });
}

#[test]
fn connect_times_out_when_nobody_answers() {
    run(async {
        let link = Rc::new(Shared {
            faults: Cell::new(Faults { cut: true, ..Faults::default() }),
            rng: Cell::new(3),
            delivered: Cell::new(0),
        });
        let ab = Rc::new(RefCell::new(Wire::default()));
        let ba = Rc::new(RefCell::new(Wire::default()));
        let na = SimNet { mac: MacAddr(MAC_A), rx: ba, tx: ab, link, sent: None };
        let mut cfg = config(A, 1);
        cfg.connect_timeout = Duration::from_secs(10);
        let a = Stack::new(na, cfg).unwrap();
        let started = now();
        assert_eq!(a.connect(SocketAddr::new(B.into(), 80)).await.err(), Some(stack::Error::TimedOut));
        let took = now().saturating_duration_since(started);
        assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(11), "took {took:?}");
    });
}

#[test]
fn the_timeout_ends_a_connection_whose_peer_vanished() {
    run(async {
        let mut ca = config(A, 1);
        ca.timeout = Some(Duration::from_secs(30));
        ca.keep_alive = Some(Duration::from_secs(10));
        let Pair { a, b, link, .. } = pair_with(5, Faults::default(), ca, config(B, 2));
        let l = b.listen(80, 1).await.unwrap();
        let server = spawn(async move { l.accept().await.unwrap().0 });
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        let server_flow = server.await;
        link.faults.set(Faults { cut: true, ..Faults::default() });
        // Idle, the connection is probed by keep-alives; unanswered, it
        // ends after the timeout.
        let mut buf = [0u8; 4];
        let started = now();
        assert_eq!(c.read(&mut buf).await, Err(flow::Error::Reset));
        let took = now().saturating_duration_since(started);
        // 30 s after the last segment heard, which came just before.
        assert!(took >= Duration::from_secs(29) && took < Duration::from_secs(45), "took {took:?}");
        drop(server_flow);
    });
}

#[test]
fn a_hundred_concurrent_connections_over_a_harsh_link() {
    run(async {
        let n = 100u64;
        let (a, b, _) = pair(21, HARSH);
        let l = b.listen(7, 128).await.unwrap();
        let server = spawn(async move {
            let mut handlers = Vec::new();
            for _ in 0..n {
                let (mut f, _) = l.accept().await.unwrap();
                handlers.push(spawn(async move {
                    let got = read_to_end(&mut f).await.unwrap();
                    f.write_all(&got).await.unwrap();
                    f.close().await.unwrap();
                }));
            }
            for h in handlers {
                h.await;
            }
        });
        let clients: Vec<_> = (0..n)
            .map(|i| {
                let a = a.clone();
                spawn(async move {
                    let msg = data(1000 + i as usize * 100, i);
                    let mut c = a.connect(SocketAddr::new(B.into(), 7)).await.unwrap();
                    c.write_all(&msg).await.unwrap();
                    c.shutdown().await.unwrap();
                    assert!(read_to_end(&mut c).await.unwrap() == msg, "client {i}: echo differs");
                })
            })
            .collect();
        for c in clients {
            c.await;
        }
        server.await;
    });
}

#[test]
fn udp_datagrams_cross_and_oversized_ones_are_refused() {
    run(async {
        let (a, b, _) = pair(31, Faults::default());
        let sb = b.bind(5353).await.unwrap();
        let sa = a.bind(0).await.unwrap();
        assert_eq!(b.bind(5353).await.err(), Some(stack::Error::AddrInUse));
        let echo = spawn(async move {
            let mut buf = [0u8; 2048];
            for _ in 0..3 {
                let (n, from) = sb.recv_from(&mut buf).await.unwrap();
                sb.send_to(&buf[..n], from).await.unwrap();
            }
        });
        for len in [1usize, 0, 1472] {
            let msg = data(len, len as u64);
            sa.send_to(&msg, SocketAddr::new(B.into(), 5353)).await.unwrap();
            let mut buf = [0u8; 2048];
            let (n, from) = sa.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, SocketAddr::new(B.into(), 5353));
            assert!(buf[..n] == msg[..]);
        }
        echo.await;
        assert_eq!(sa.send_to(&[0; 1473], SocketAddr::new(B.into(), 1)).await, Err(stack::Error::TooLarge));
    });
}

#[test]
fn garbage_frames_are_counted_and_change_nothing() {
    run(async {
        // A third party on the wire sends b random bytes, truncated and
        // damaged frames while a real connection runs.
        let Pair { a, b, ab, .. } = pair_with(41, Faults::default(), config(A, 1), config(B, 2));
        let l = b.listen(80, 1).await.unwrap();
        let server = spawn(async move {
            let (mut f, _) = l.accept().await.unwrap();
            read_to_end(&mut f).await.unwrap()
        });
        let mut c = a.connect(SocketAddr::new(B.into(), 80)).await.unwrap();
        let before = b.stats().malformed;
        let mut sent = 0;
        let mut rng = 99u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let valid = {
            // A valid frame from a's side to mutate: an ARP request.
            let mut f = vec![0xffu8; 6];
            f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&[10, 0, 0, 2]);
            f
        };
        for i in 0..2000 {
            let frame: Vec<u8> = match i % 4 {
                0 => (0..next() % 1600).map(|_| next() as u8).collect(),
                1 => valid[..(next() as usize % valid.len())].to_vec(),
                2 => {
                    // An IPv4 header with a bogus total length.
                    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 9, 8, 0, 0x45, 0, 0xff, 0xff];
                    f.resize(60, 0);
                    f
                }
                _ => {
                    // TCP to b with a bad checksum.
                    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 9, 8, 0];
                    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 9, 10, 0, 0, 2];
                    let c = mirage_tcpip::wire::checksum(&ip);
                    ip[10..12].copy_from_slice(&c.to_be_bytes());
                    f.extend_from_slice(&ip);
                    f.extend_from_slice(&[0, 80, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xde, 0xad, 0, 0]);
                    f
                }
            };
            push(&ab, now().as_nanos(), frame);
            sent += 1;
            if i % 100 == 0 {
                c.write_all(b"0123456789").await.unwrap();
            }
        }
        c.shutdown().await.unwrap();
        let got = server.await;
        assert_eq!(got.len(), 200);
        let dropped = b.stats().malformed - before;
        assert!(dropped >= sent * 3 / 4, "{dropped} of {sent} junk frames counted as malformed");
    });
}


#[test]
fn a_full_backlog_delays_connections_instead_of_refusing_them() {
    run(async {
        let (a, b, _) = pair(51, Faults::default());
        let l = b.listen(80, 2).await.unwrap();
        let connect = |n| -> Vec<_> {
            (0..n)
                .map(|_| {
                    let a = a.clone();
                    spawn(async move { a.connect(SocketAddr::new(B.into(), 80)).await })
                })
                .collect()
        };
        let mut clients = connect(2);
        sleep(Duration::from_millis(100)).await;
        clients.extend(connect(3));
        // Nobody accepts for a while: two connections wait in the backlog;
        // the SYNs that come while they wait are dropped and retried.
        sleep(Duration::from_millis(500)).await;
        assert_eq!(clients.iter().filter(|c| c.is_finished()).count(), 2);
        let mut accepted = Vec::new();
        for _ in 0..5 {
            accepted.push(l.accept().await.unwrap());
        }
        for c in clients {
            assert!(c.await.is_ok(), "a connection was refused");
        }
    });
}

// Attacks. A third host on the link (address X, MAC_X) sends hand-made
// frames to b while a well-behaved client on a keeps asking b's server for
// an answer; each test states the longest the client had to wait.

const X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);
const MAC_X: [u8; 6] = [2, 0, 0, 0, 0, 9];

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A TCP segment from `src` to `dst` in an Ethernet frame from `mac` to
/// b, checksums right. A SYN carries an MSS option.
fn tcp_frame(mac: [u8; 6], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let options: &[u8] = if flags & SYN != 0 { &[2, 4, 0x05, 0xb4] } else { &[] };
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&src.1.to_be_bytes());
    tcp.extend_from_slice(&dst.1.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push(((20 + options.len()) / 4 << 4) as u8);
    tcp.push(flags);
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(options);
    tcp.extend_from_slice(payload);
    let c = mirage_tcpip::wire::checksum_ipv4(src.0, dst.0, 6, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = mirage_tcpip::wire::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = MAC_B.to_vec();
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// The TCP header fields of a frame b sent: source and destination
/// endpoints, sequence and acknowledgment numbers, flags, payload length.
#[derive(Debug, Clone, Copy)]
struct Seen {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    len: usize,
}

fn seen(f: &[u8]) -> Option<Seen> {
    if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return None;
    }
    let ip = &f[14..];
    let ihl = (ip[0] & 0xf) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let t = &ip[ihl..total];
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Some(Seen {
        src: (addr(&ip[12..16]), u16::from_be_bytes([t[0], t[1]])),
        dst: (addr(&ip[16..20]), u16::from_be_bytes([t[2], t[3]])),
        seq: be32(&t[4..8]),
        ack: be32(&t[8..12]),
        flags: t[13],
        len: t.len() - (t[12] >> 4) as usize * 4,
    })
}

/// Sends a frame to b now.
fn inject(p: &Pair, frame: Vec<u8>) {
    push(&p.ab, now().as_nanos(), frame);
}

/// A server on b: each connection gets "ok\n" once its request line has
/// come, then is closed.
async fn serve(b: &Stack, port: u16, backlog: usize) {
    let l = b.listen(port, backlog).await.unwrap();
    spawn(async move {
        loop {
            let (mut f, _) = l.accept().await.unwrap();
            spawn(async move {
                let mut buf = [0u8; 512];
                let mut got = 0;
                while !buf[..got].contains(&b'\n') && got < buf.len() {
                    match f.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                if f.write_all(b"ok\n").await.is_ok() {
                    let _ = f.close().await;
                }
            });
        }
    });
}

/// What the well-behaved client saw.
#[derive(Debug, Default, Clone, Copy)]
struct Probe {
    answered: u32,
    failed: u32,
    /// The longest any request took, or waited before failing.
    worst: Duration,
}

/// Runs `attack` while a client on `a` sends a request to `to` every
/// 100 ms on a new connection (each given 60 s), and for two seconds after.
async fn probe_during<R>(a: &Stack, to: SocketAddr, attack: impl Future<Output = R>) -> (Probe, R) {
    let stop = Rc::new(Cell::new(false));
    let seen = Rc::new(Cell::new(Probe::default()));
    let client = {
        let (a, stop, seen) = (a.clone(), stop.clone(), seen.clone());
        spawn(async move {
            let mut pending = Vec::new();
            while !stop.get() {
                let (a, seen) = (a.clone(), seen.clone());
                pending.push(spawn(async move {
                    let start = now();
                    let ask = async {
                        let mut c = a.connect(to).await.map_err(|e| format!("connect: {e:?}"))?;
                        c.write_all(b"GET\n").await.map_err(|e| format!("write: {e:?}"))?;
                        let got = read_to_end(&mut c).await.map_err(|e| format!("read: {e:?}"))?;
                        if got != b"ok\n" {
                            return Err(format!("answer {got:?}"));
                        }
                        Ok(())
                    };
                    let r = mirage_runtime::time::timeout(Duration::from_secs(60), ask).await;
                    let took = now().saturating_duration_since(start);
                    let mut p = seen.get();
                    p.worst = p.worst.max(took);
                    match r {
                        Ok(Ok(())) => p.answered += 1,
                        Ok(Err(e)) => {
                            eprintln!("probe at {:?}: {e}", start);
                            p.failed += 1
                        }
                        Err(_) => {
                            eprintln!("probe at {:?}: no answer in 60 s", start);
                            p.failed += 1
                        }
                    }
                    seen.set(p);
                }));
                sleep(Duration::from_millis(100)).await;
            }
            for p in pending {
                p.await;
            }
        })
    };
    let r = attack.await;
    sleep(Duration::from_secs(2)).await;
    stop.set(true);
    client.await;
    (seen.get(), r)
}

#[test]
fn one_half_open_syn_does_not_stall_the_server() {
    run(async {
        let p = pair_with(61, Faults::default(), config(A, 1), config(B, 2));
        serve(&p.b, 80, 16).await;
        let (probe, ()) = probe_during(&p.a, SocketAddr::new(B.into(), 80), async {
            sleep(Duration::from_millis(300)).await;
            // From a host that never answers: the SYN-ACK goes nowhere and
            // no reset ever comes back.
            inject(&p, tcp_frame(MAC_X, (X, 40000), (B, 80), 1000, 0, SYN, b""));
            sleep(Duration::from_secs(5)).await;
        })
        .await;
        eprintln!("{probe:?}");
        assert!(probe.failed == 0 && probe.worst < Duration::from_millis(100), "{probe:?}");
    });
}
