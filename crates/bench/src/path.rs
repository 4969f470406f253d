//! A long path: the static-website and network examples, and nginx and
//! Linux's own discard service beside them, reached by a client across a
//! link with a delay, a rate and a queue, in the same run. Every benchmark
//! over a bare tap runs at round trips of tens of microseconds, where a
//! sender's first window and its slow start cost nothing; across the
//! Internet they cost round trips of tens of milliseconds each.
//!
//! This kernel may have no `netem` qdisc (these machines have none), so the
//! link is a relay in this process: it holds one end of a tap device in the
//! client's namespace and one end of another in the server's, where a
//! bridge joins it to the server (the unikernel's tap, or a veth pair to a
//! namespace where nginx and Linux's discard run). Each frame waits its
//! turn for the link's rate, is dropped if the queue before the link is
//! full, and arrives `delay` after it leaves the link: a bottleneck router
//! with a tail-drop queue, then a wire. Neither end's offloads cross it: a
//! tap opened without virtio-net headers takes no segment larger than its
//! MTU (1500 here), so the kernel cuts a sender's large segments to fit.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::{Background, Netns, example, root};

use crate::{Options, machine, median};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The files fetched, by name and size: a page of a few segments, one of a
/// few round trips in slow start, and ones the link's rate bounds.
const FILES: [(&str, usize); 3] = [("64k.bin", 64 << 10), ("1m.bin", 1 << 20), ("4m.bin", 4 << 20)];

/// Bytes sent to the discard service in each upload.
const UPLOAD: u64 = 16 << 20;

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
#[derive(Clone, Copy)]
struct Shape {
    delay: Duration,
    rate: f64,
    queue: usize,
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
struct Link {
    client: Netns,
    server_side: Netns,
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
    /// Frames carried (client to server, server to client) and dropped.
    fn counts(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.counts[i].load(Ordering::Relaxed))
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
fn path(shape: Shape) -> Result<Link, String> {
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

/// Linux's side: a namespace with 10.0.0.2 on a veth pair whose other end
/// is on the bridge, in place of the unikernel.
fn linux_server(p: &Link) -> Result<Netns, String> {
    let s = Netns::empty()?;
    let out = std::process::Command::new("ip")
        .args(["link", "add", "lps0", "netns", &s.name, "type", "veth", "peer", "name", "lps1", "netns"])
        .arg(&p.server_side.name)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("ip link add veth: {}", String::from_utf8_lossy(&out.stderr)));
    }
    s.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "lps0"])?;
    s.ip(&["link", "set", "lps0", "up"])?;
    p.server_side.ip(&["link", "set", "lps1", "master", "br0"])?;
    p.server_side.ip(&["link", "set", "lps1", "up"])?;
    Ok(s)
}

/// Fetches `file` over a new connection: the time from the connect to the
/// last byte, the handshake's round trip included.
fn fetch(file: &str, size: usize) -> Result<Duration, String> {
    let to = SocketAddr::new(SERVER.into(), 80);
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET /{file} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("GET /{file}: {e}"))?;
    let mut got = Vec::with_capacity(size + 512);
    s.read_to_end(&mut got).map_err(|e| format!("GET /{file}: {e}"))?;
    let d = start.elapsed();
    let body = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |at| got.len() - at - 4);
    if body != size || !got.starts_with(b"HTTP/1.1 200") {
        return Err(format!("GET /{file}: {} bytes of body, {size} expected", body));
    }
    Ok(d)
}

/// Sends `UPLOAD` bytes to the discard service and waits for its close.
fn upload() -> Result<Duration, String> {
    let to = SocketAddr::new(SERVER.into(), 9);
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 1 << 20];
    for _ in 0..UPLOAD / buf.len() as u64 {
        s.write_all(&buf).map_err(|e| format!("upload: {e}"))?;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(|e| format!("upload: waiting for the close: {e}"))?;
    Ok(start.elapsed())
}

/// The static website with the fetched files in its htdocs, built for
/// `target`.
fn site(target: &str) -> Result<PathBuf, String> {
    let dir = crate::http::site_copy("static-website", &[])?;
    for (i, (file, size)) in FILES.iter().enumerate() {
        let path = dir.join("htdocs").join(file);
        let bytes = testkit::noise(0x9e37_79b9_7f4a_7c15 ^ i as u64, *size);
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        }
    }
    crate::http::build_named(&dir, target, "static-website")
}

/// Linux's discard service on 10.0.0.2 in `ns`.
fn linux_discard(ns: &Netns) -> Result<(), String> {
    ns.enter(|| -> Result<(), String> {
        let l = std::net::TcpListener::bind(SocketAddr::new(SERVER.into(), 9)).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Ok(())
    })?
}

fn row(name: &str, shape: Shape, times: &[f64], up: f64, counts: [u64; 4]) {
    println!(
        "| {name} | {} ms | {} | {up:.0} | {} / {} | {} / {} |",
        (shape.delay * 2).as_millis(),
        times.iter().map(|t| format!("{t:.1} ms")).collect::<Vec<_>>().join(" | "),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
    );
}

pub fn path_bench(o: &Options) -> Result<(), String> {
    machine();
    let rounds = if o.count == 20_000 { 3 } else { o.count.max(1) };
    let rate = o.rate_mbit as f64 * 1e6;
    println!(
        "A long path: a relay between two taps, one way {:?} ms, {} Mbit/s, a tail-drop queue of one round trip at that rate; MTU 1500. \
         A fetch is a new connection's GET to its last byte (handshake included), the median of {rounds}; the upload is {} MiB to discard, \
         the median rate of {rounds}.",
        o.delays,
        o.rate_mbit,
        UPLOAD >> 20
    );
    println!();
    println!(
        "| server | round trip | {} | upload Mbit/s | frames to server / dropped | to client / dropped |",
        FILES.iter().map(|(f, _)| format!("GET {f}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}---|---|---|", "---|".repeat(FILES.len()));
    let images: Vec<(String, PathBuf, PathBuf)> =
        o.targets.iter().map(|t| Ok((t.clone(), site(t)?, example(t, "network")?))).collect::<Result<_, String>>()?;
    let htdocs = root().join("target/bench-http/static-website/htdocs");
    for &ms in &o.delays {
        let delay = Duration::from_millis(ms);
        let shape = Shape { delay, rate, queue: (rate / 8.0 * (delay * 2).as_secs_f64()).max(64e3) as usize };
        for (target, site, network) in &images {
            let p = path(shape)?;
            let start = |image: &Path, ready: &str| -> Result<Background, String> {
                let mut c = p.server_side.unikernel(target, image, &["--net:service=tap0"]);
                c.args([&format!("--ipv4={SERVER}/24"), "--logs=http:warn"]).args(&o.boot_args);
                let mut g = Background::start(c)?;
                g.wait_for(ready, Duration::from_secs(30))?;
                Ok(g)
            };
            // Each service in turn on the same path; the fetches first.
            let g = start(site, "static-website: serving")?;
            let times = fetches(&p.client, rounds).map_err(|e| format!("{target}: {e}\n{}", g.output()))?;
            drop(g);
            // A new unikernel has a new MAC address: the client's cached one
            // would hold its frames for seconds.
            p.client.ip(&["neigh", "flush", "dev", "lp0"])?;
            let g = start(network, "network: ")?;
            let up = uploads(&p.client, rounds).map_err(|e| format!("{target}: {e}\n{}", g.output()))?;
            drop(g);
            row(&format!("mirage-rs {target}"), shape, &times, up, p.counts());
        }
        let p = path(shape)?;
        let s = linux_server(&p)?;
        let scratch = root().join("target/bench-path/nginx");
        let _n = crate::http::nginx(&s, SERVER, &htdocs, &scratch)?;
        linux_discard(&s)?;
        let times = fetches(&p.client, rounds)?;
        let up = uploads(&p.client, rounds)?;
        row("Linux (nginx, discard)", shape, &times, up, p.counts());
    }
    Ok(())
}

/// Each file's median fetch time, in milliseconds, from `client`.
fn fetches(client: &Netns, rounds: usize) -> Result<Vec<f64>, String> {
    client.enter(|| {
        FILES
            .iter()
            .map(|&(file, size)| {
                let mut t: Vec<f64> =
                    (0..rounds).map(|_| fetch(file, size).map(|d| d.as_secs_f64() * 1e3)).collect::<Result<_, _>>()?;
                Ok(median(&mut t))
            })
            .collect()
    })?
}

/// The uploads' median rate, in Mbit/s, from `client`.
fn uploads(client: &Netns, rounds: usize) -> Result<f64, String> {
    client.enter(|| {
        let mut up: Vec<f64> = (0..rounds)
            .map(|_| upload().map(|d| UPLOAD as f64 * 8.0 / d.as_secs_f64() / 1e6))
            .collect::<Result<_, _>>()?;
        Ok(median(&mut up))
    })?
}
