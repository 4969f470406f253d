//! A long path between two namespaces, where this kernel has no `netem`
//! qdisc (these machines have none): a relay in this process that holds
//! one end of a tap device in the client's namespace (`lp0`, 10.0.0.1/24)
//! and one end of another in the server side's (`lr1`), where a bridge
//! `br0` joins it to the server: the unikernel's tap `tap0`, made here, or
//! a veth pair to a namespace of its own ([`Link::linux_server`]). Each
//! frame waits its turn for the link's rate, is dropped if the queue
//! before the link is full, and arrives `delay` after it leaves the link:
//! a bottleneck router with a tail-drop queue, then a wire. Neither end's
//! offloads cross it: a tap opened without virtio-net headers takes no
//! segment larger than its MTU (1500), so the kernel cuts a sender's large
//! segments to fit.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Netns;

/// The client's address, on `lp0`.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The server's address: the unikernel's, or [`Link::linux_server`]'s.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// One direction of the link.
struct Direction {
    /// Frames on their way, and when each arrives; in order, since every
    /// frame leaves the link after the one before it and waits as long.
    wire: VecDeque<(Instant, Vec<u8>)>,
    /// When the link is free for the next frame.
    free_at: Instant,
    frames: u64,
    dropped: u64,
}

/// The link's shape: the one-way delay, the rate in bits a second, and the
/// bytes that may wait for the link before a frame is dropped.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub delay: Duration,
    pub rate: f64,
    pub queue: usize,
}

impl Shape {
    /// A link of `ms` milliseconds each way and `mbit` Mbit/s, whose queue
    /// holds a round trip's worth at that rate (at least 64 KB).
    pub fn new(ms: u64, mbit: u64) -> Shape {
        let (delay, rate) = (Duration::from_millis(ms), mbit as f64 * 1e6);
        Shape { delay, rate, queue: (rate / 8.0 * (delay * 2).as_secs_f64()).max(64e3) as usize }
    }
}

impl Direction {
    fn new() -> Direction {
        Direction { wire: VecDeque::new(), free_at: Instant::now(), frames: 0, dropped: 0 }
    }

    /// A frame that came in at `now`: queued for the link, or dropped if
    /// the bytes already waiting for it fill the queue.
    fn offer(&mut self, frame: Vec<u8>, now: Instant, shape: Shape) {
        let start = self.free_at.max(now);
        let waiting = (start - now).as_secs_f64() * shape.rate / 8.0;
        if waiting + frame.len() as f64 > shape.queue as f64 {
            self.dropped += 1;
            return;
        }
        let leaves = start + Duration::from_secs_f64(frame.len() as f64 * 8.0 / shape.rate);
        self.free_at = leaves;
        self.frames += 1;
        self.wire.push_back((leaves + shape.delay, frame));
    }
}

/// Reads every frame waiting on non-blocking `fd` (at most 256 a turn, so
/// the other side is served too) into `dir`.
fn take(fd: &OwnedFd, dir: &mut Direction, shape: Shape, buf: &mut [u8]) {
    for _ in 0..256 {
        // SAFETY: read(2) writes at most buf.len() bytes into buf.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        dir.offer(buf[..n as usize].to_vec(), Instant::now(), shape);
    }
}

/// Writes to `fd` every frame of `dir` that has arrived by `now`.
fn deliver(fd: &OwnedFd, dir: &mut Direction, now: Instant) {
    while let Some((at, _)) = dir.wire.front() {
        if *at > now {
            return;
        }
        let (_, frame) = dir.wire.pop_front().expect("a front frame");
        // SAFETY: write(2) reads frame.len() bytes of frame. A tap's write
        // hands the frame to the kernel's receive path and does not block;
        // one it refuses is a frame lost on the wire.
        let _ = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    }
}

/// The relay between the client's tap `a` and the server side's tap `b`,
/// until `stop`; the frames it carried each way and dropped, in `counts`.
fn relay(a: OwnedFd, b: OwnedFd, shape: Shape, stop: Arc<AtomicBool>, counts: Arc<[AtomicU64; 4]>) {
    let mut ab = Direction::new();
    let mut ba = Direction::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = [ab.wire.front(), ba.wire.front()].into_iter().flatten().map(|(t, _)| *t).min();
        let wait =
            next.map_or(Duration::from_millis(20), |t| t.saturating_duration_since(now)).min(Duration::from_millis(20));
        let mut fds = [
            libc::pollfd { fd: a.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let ts =
            libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
        // SAFETY: ppoll(2) on two pollfds this frame owns, with a timeout
        // it only reads and no signal mask.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if fds[0].revents & libc::POLLIN != 0 {
            take(&a, &mut ab, shape, &mut buf);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            take(&b, &mut ba, shape, &mut buf);
        }
        let now = Instant::now();
        deliver(&b, &mut ab, now);
        deliver(&a, &mut ba, now);
        counts[0].store(ab.frames, Ordering::Relaxed);
        counts[1].store(ab.dropped, Ordering::Relaxed);
        counts[2].store(ba.frames, Ordering::Relaxed);
        counts[3].store(ba.dropped, Ordering::Relaxed);
    }
}

/// The client's namespace, the server side's, and the relay between them,
/// stopped when dropped.
#[derive(Debug)]
pub struct Link {
    pub client: Netns,
    pub server_side: Netns,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Link {
    /// Frames carried to the server and dropped, then to the client and
    /// dropped.
    pub fn counts(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Linux's side: a namespace with 10.0.0.2 on a veth pair whose other end
    /// is on the bridge, in place of the unikernel.
    pub fn linux_server(&self) -> Result<Netns, String> {
        let s = Netns::empty()?;
        let out = std::process::Command::new("ip")
            .args(["link", "add", "lps0", "netns", &s.name, "type", "veth", "peer", "name", "lps1", "netns"])
            .arg(&self.server_side.name)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("ip link add veth: {}", String::from_utf8_lossy(&out.stderr)));
        }
        s.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "lps0"])?;
        s.ip(&["link", "set", "lps0", "up"])?;
        self.server_side.ip(&["link", "set", "lps1", "master", "br0"])?;
        self.server_side.ip(&["link", "set", "lps1", "up"])?;
        Ok(s)
    }
}

/// Makes tap `name` in `ns` and opens it, non-blocking, without
/// virtio-net headers.
fn open_tap(ns: &Netns, name: &str) -> Result<OwnedFd, String> {
    ns.ip(&["tuntap", "add", name, "mode", "tap"])?;
    ns.ip(&["link", "set", name, "up"])?;
    let (fd, _mtu) = ns.enter(|| mirage_tap::attach(name))?.map_err(|e| format!("tap {name} in {}: {e}", ns.name))?;
    Ok(fd)
}

/// The link: the client (10.0.0.1 on `lp0`) in one namespace, and in the
/// other a bridge `br0` joining the relay's tap `lr1` to the server's
/// tap `tap0` (the unikernel's, made here).
pub fn link(shape: Shape) -> Result<Link, String> {
    let client = Netns::empty()?;
    let server_side = Netns::empty()?;
    let a = open_tap(&client, "lp0")?;
    client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "lp0"])?;
    let b = open_tap(&server_side, "lr1")?;
    server_side.ip(&["link", "add", "br0", "type", "bridge"])?;
    server_side.ip(&["tuntap", "add", "tap0", "mode", "tap"])?;
    for dev in ["lr1", "tap0"] {
        server_side.ip(&["link", "set", dev, "master", "br0"])?;
        server_side.ip(&["link", "set", dev, "up"])?;
    }
    server_side.ip(&["link", "set", "br0", "up"])?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([0, 0, 0, 0].map(AtomicU64::new));
    let thread = {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::Builder::new()
            .name("path-relay".into())
            .spawn(move || relay(a, b, shape, stop, counts))
            .map_err(|e| e.to_string())?
    };
    Ok(Link { client, server_side, stop, counts, thread: Some(thread) })
}
