//! The static-website example under attack from one remote host on its
//! link, on unix (the direct stack on a tap device), hvt and spt: half-open
//! SYN floods with the host's resets suppressed, a SYN with a payload and
//! a LAND packet, thousands of half-closed, idle and body-holding
//! connections against a small memory, downloads never read, blind
//! in-window resets and SYNs, and ARP replies that claim nonsense
//! addresses. Throughout each, a well-behaved client asks for a page every
//! 50 ms on fresh connections and on a keep-alive one; the test fails if
//! it stops being served (its success rate and longest outage are printed)
//! or if the unikernel dies.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use testkit::attack::{self, Crowd, GoodClient, Hold, MAX_OUTAGE, MIN_RATE, Raw, Rng, Segment, Tracked, Wire, flags};
use testkit::{Background, Netns, Scratch, example, example_with};

use crate::{Case, Needs, case};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PORT: u16 = 80;

fn server() -> SocketAddr {
    SocketAddr::new(GUEST.into(), PORT)
}

/// static-website on `t` with the good client asking it for `/`, and
/// what an attacker on the link has: its addresses and a raw socket.
struct Site {
    name: String,
    // Dropped in this order: the client, the unikernel, the namespace.
    good: Option<GoodClient>,
    unikernel: Background,
    wire: Wire,
    raw: Raw,
    ns: Netns,
}

/// Boots static-website on `t` in a namespace of its own with `mem_mib`
/// of memory if given (`--mem` on Solo5; on unix, a data limit, which the
/// unix platform takes as its heap size) and then statistics every second
/// (not otherwise: their timer wakes the server, which would hide a stalled
/// listener); starts the good client and lets it run for a second.
fn site(name: &str, t: &str, mem_mib: Option<u32>) -> Result<Site, String> {
    let mut s = quiet_site(name, t, mem_mib, None)?;
    s.start_good()?;
    Ok(s)
}

/// As [`site`], without the good client; with `disk`, the site built to
/// serve the tar image `disk` from a block device (`--kv-ro=tar`).
fn quiet_site(name: &str, t: &str, mem_mib: Option<u32>, disk: Option<&Path>) -> Result<Site, String> {
    quiet_site_with(name, t, mem_mib, disk, false)
}

/// As [`quiet_site`]; with `share`, each host holds at most the server's
/// default share of its connections (512).
fn quiet_site_with(
    name: &str,
    t: &str,
    mem_mib: Option<u32>,
    disk: Option<&Path>,
    share: bool,
) -> Result<Site, String> {
    attack::raise_fd_limit();
    let ns = Netns::new()?;
    attack::long_queue(&ns, "tap0")?;
    let image = match (t, disk) {
        (_, None) => example(t, "static-website")?,
        ("unix", Some(_)) => example_with(t, "static-website", &["--net=direct", "--kv-ro=tar"])?,
        (_, Some(_)) => example_with(t, "static-website", &["--kv-ro=tar"])?,
    };
    let block = disk.map(|d| format!("--block:htdocs={}", d.display()));
    let mut devices: Vec<&str> = vec!["--net:service=tap0"];
    devices.extend(block.as_deref());
    let mut c: Command = match (t, mem_mib) {
        ("unix", Some(m)) => {
            let mut c = ns.command("prlimit");
            c.arg(format!("--data={}", u64::from(m) << 20)).arg(&image).args(&devices);
            c
        }
        ("unix", None) => ns.unikernel(t, &image, &devices),
        (_, m) => {
            let mem = m.map(|m| format!("--mem={m}"));
            let mut all: Vec<&str> = mem.iter().map(String::as_str).collect();
            all.extend(&devices);
            ns.unikernel(t, &image, &all)
        }
    };
    // The access log off: thousands of connections would fill it. The
    // attacker and the good client are one host: each host's share of the
    // connections is off, so that what is tested is what the server holds
    // (`one_host_holds_its_share` tests the share, with two hosts).
    c.args(["--ipv4=10.0.0.2/24", "--logs=http:warn"]);
    if !share {
        c.arg("--max-connections-per-host=0");
    }
    if mem_mib.is_some() {
        c.arg("--stats=1");
    }
    let mut unikernel = Background::start(c)?;
    unikernel.wait_for("static-website: serving", Duration::from_secs(30))?;
    let wire = Wire::learn(&ns, "tap0", HOST, GUEST)?;
    let raw = Raw::open(&ns, "tap0")?;
    Ok(Site { name: format!("{t}: {name}"), good: None, unikernel, wire, raw, ns })
}

impl Site {
    /// Starts the good client and lets it run for a second.
    fn start_good(&mut self) -> Result<(), String> {
        self.good = Some(GoodClient::start(&self.ns, server(), "/")?);
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    /// What the good client saw since `from`.
    fn since(&self, from: Instant) -> Result<attack::Report, String> {
        Ok(self.good.as_ref().ok_or("no good client")?.report(from, Instant::now()))
    }

    fn pid(&self) -> u32 {
        self.unikernel.child.id()
    }

    fn alive(&self) -> bool {
        attack::alive(self.pid())
    }

    /// The unikernel's last lines, for a failure's message.
    fn tail(&self) -> String {
        let out = self.unikernel.output();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Fails if the unikernel has died.
    fn check_alive(&self) -> Result<(), String> {
        if self.alive() {
            return Ok(());
        }
        Err(format!("{}: the unikernel died under the attack:\n{}", self.name, self.tail()))
    }

    /// The heap the unikernel reported, if it did: the latest and the
    /// largest figure.
    fn heap(&self) -> String {
        let h = attack::heap_kib(&self.unikernel.output());
        match (h.last(), h.iter().max()) {
            (Some(last), Some(max)) => format!("; heap {last} KiB in use, at most {max} KiB"),
            _ => String::new(),
        }
    }

    /// Stops the good client; prints what it saw, with `what` the attack
    /// did, and fails if the unikernel died or the client was not served.
    fn finish(self, what: &str) -> Result<(), String> {
        self.finish_with(what, false)
    }

    /// As [`Site::finish`]; with `keep_alive_whole`, also fails if any of
    /// the good client's keep-alive requests went unserved: where the
    /// attack holds memory the server can take back (connections idle or
    /// holding large bodies), the keep-alive connection, busy and holding
    /// little, has no reason to be refused.
    fn finish_with(mut self, what: &str, keep_alive_whole: bool) -> Result<(), String> {
        let report = self.good.as_mut().ok_or("no good client")?.stop();
        eprintln!("{}: {what}{}; good client: {report}", self.name, self.heap());
        self.check_alive()?;
        report.check(&self.name, MIN_RATE, MAX_OUTAGE)?;
        let k = &report.keep_alive;
        if keep_alive_whole && k.served < k.attempts {
            return Err(format!(
                "{}: the good client's keep-alive connection was refused while the attack held memory the server \
                 could take back: {k}; failures: {}",
                self.name,
                k.errors.join("; ")
            ));
        }
        Ok(())
    }
}

/// 10,000 SYNs from random ports of the host, whose resets to the
/// SYN-ACKs are dropped: 10,000 connections left half-open.
fn syn_flood(t: &str) -> Result<(), String> {
    let s = site("10,000 half-open SYNs", t, None)?;
    attack::suppress_resets(&s.ns)?;
    let frames = attack::syn_flood(&s.wire, PORT, attack::FORGED_PORTS, 10_000, &mut Rng::new());
    // Counts the server's answers while the flood passes.
    let sniffer = Raw::open(&s.ns, &s.wire.ifname)?;
    let counting = std::thread::spawn(move || {
        let forged = |seg: &Segment| seg.src.port() == PORT && attack::FORGED_PORTS.contains(&seg.dst.port());
        let segs = sniffer.segments(Instant::now() + Duration::from_secs(6), forged);
        let syn_acks = segs.iter().filter(|g| g.has(flags::SYN | flags::ACK)).count();
        let resets = segs.iter().filter(|g| g.has(flags::RST)).count();
        (syn_acks, resets)
    });
    let started = Instant::now();
    s.raw.send_paced(&frames, 5_000)?;
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let (syn_acks, resets) = counting.join().map_err(|_| "the sniffer panicked")?;
    s.finish(&format!(
        "10000 SYNs sent in {:.2} s, answered by {syn_acks} SYN-ACKs (retransmissions included) and {resets} resets",
        took.as_secs_f64()
    ))
}

/// One GET on a fresh connection, alone: nothing else wakes the server.
/// How long it took to be answered, or why it was not.
fn lone_get(ns: &Netns) -> Result<Duration, String> {
    ns.enter(|| {
        let started = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&server(), Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        get(&mut s, &mut buf).map_err(|e| format!("{e} after {:.2} s", started.elapsed().as_secs_f64()))?;
        Ok(started.elapsed())
    })?
}

/// One SYN carrying data, then a LAND packet (a SYN from the server's own
/// address and port to itself). Each is sent twice: first to a server no
/// one else talks to, which must then answer a lone client's GET at once
/// (a stalled listener would be woken by other clients' traffic and be
/// missed); then while the good client runs, for 3 s each.
fn syn_payload_and_land(t: &str) -> Result<(), String> {
    let mut s = quiet_site("a SYN with a payload, a LAND packet", t, None, None)?;
    attack::suppress_resets(&s.ns)?;
    let mut rng = Rng::new();
    let packets = |rng: &mut Rng| {
        let port = 1024 + (rng.next_u64() % 30000) as u16;
        let mut syn =
            Segment::syn(SocketAddrV4::new(HOST, port), SocketAddrV4::new(GUEST, PORT), rng.next_u64() as u32);
        syn.payload = b"GET / HTTP/1.1\r\nHost: in-the-syn\r\n\r\n".to_vec();
        let me = SocketAddrV4::new(GUEST, PORT);
        [("a SYN with a payload", syn), ("a LAND packet", Segment::syn(me, me, rng.next_u64() as u32))]
    };
    let mut failures = Vec::new();
    for (what, seg) in packets(&mut rng) {
        s.raw.send(&seg.frame(s.wire.mac, s.wire.server_mac, rng.next_u64() as u16))?;
        std::thread::sleep(Duration::from_millis(1500));
        let took = lone_get(&s.ns);
        eprintln!("{}: a lone GET 1.5 s after {what}: {took:?}", s.name);
        match took {
            Ok(d) if d <= Duration::from_secs(1) => {}
            Ok(d) => failures.push(format!("{what}: a lone GET 1.5 s later took {:.2} s", d.as_secs_f64())),
            Err(e) => failures.push(format!("{what}: a lone GET 1.5 s later failed: {e}")),
        }
    }
    s.start_good()?;
    for (what, seg) in packets(&mut rng) {
        let from = Instant::now();
        s.raw.send(&seg.frame(s.wire.mac, s.wire.server_mac, rng.next_u64() as u16))?;
        std::thread::sleep(Duration::from_secs(3));
        let r = s.since(from)?;
        eprintln!("{}: 3 s after {what}: {r}", s.name);
        if let Err(e) = r.check(what, MIN_RATE, MAX_OUTAGE) {
            failures.push(e);
        }
    }
    s.check_alive()?;
    let result = s.finish("a SYN with a payload and a LAND packet, twice each");
    if failures.is_empty() { result } else { Err(failures.join("\n")) }
}

/// 5,000 HTTP/1.0 requests whose responses are read and whose connections
/// are never closed by the client: the server's side waits in FIN-WAIT-2.
fn half_closed(t: &str) -> Result<(), String> {
    let s = site("5,000 half-closed connections", t, Some(256))?;
    let crowd = Crowd::new();
    let started = Instant::now();
    let pid = s.pid();
    crowd
        .fill(&s.ns, server(), Hold::HalfClosed, 5000, 8, started + Duration::from_secs(90), &|| attack::alive(pid))?;
    let took = started.elapsed();
    // Held a while longer, the good client still asking.
    std::thread::sleep(Duration::from_secs(3));
    let refusals = crowd.refusals.lock().map(|r| r.join("; ")).unwrap_or_default();
    let what = format!(
        "5000 HTTP/1.0 connections in {:.1} s: {} served and held half-closed, {} refused ({refusals})",
        took.as_secs_f64(),
        crowd.served.load(Relaxed),
        crowd.refused.load(Relaxed),
    );
    let r = s.finish(&what);
    drop(crowd);
    r
}

/// Opens connections of kind `hold` into `crowd` in rounds of `round`, a
/// round every 200 ms, until the server refuses or sheds some (or `cap`
/// are open); then keeps at that limit for 4 s, each round taking whatever
/// room the server makes, as an attacker would. How many were tried, how
/// long the first phase took, and how many were held at its end.
fn press(s: &Site, crowd: &Crowd, hold: Hold, round: usize, cap: usize) -> Result<(usize, Duration, usize), String> {
    let started = Instant::now();
    let pid = s.pid();
    let alive = || attack::alive(pid);
    let mut tried = 0;
    while tried < cap && crowd.refused.load(Relaxed) == 0 && s.alive() {
        crowd.fill(&s.ns, server(), hold, round, 4, started + Duration::from_secs(60), &alive)?;
        tried += round;
        std::thread::sleep(Duration::from_millis(200));
        crowd.sweep();
    }
    let took = started.elapsed();
    let at_limit = crowd.holding();
    let pressed = Instant::now();
    while pressed.elapsed() < Duration::from_secs(4) && s.alive() {
        crowd.fill(&s.ns, server(), hold, round, 4, pressed + Duration::from_secs(4), &alive)?;
        tried += round;
        std::thread::sleep(Duration::from_millis(200));
        crowd.sweep();
    }
    Ok((tried, took, at_limit))
}

/// Connections of kind `hold` opened in rounds of `round` until the server
/// refuses or sheds some (or `cap` are open), with 64 MiB of memory; then
/// kept at that limit for 4 s, a round every 200 ms taking whatever room
/// the server makes, as an attacker would. The server must push back, stay
/// up and keep serving the good client: it sheds what the attacker holds,
/// or keeps room for others, rather than refuse every newcomer; and it
/// never refuses the good client's keep-alive requests.
fn until_refused(t: &str, hold: Hold, what: &str, round: usize, cap: usize) -> Result<(), String> {
    let mem = 64;
    let s = site(what, t, Some(mem))?;
    let crowd = Crowd::new();
    let (tried, took, at_refusal) = press(&s, &crowd, hold, round, cap)?;
    let refused = crowd.refused.load(Relaxed);
    let refusals = crowd.refusals.lock().map(|r| r.join("; ")).unwrap_or_default();
    let summary = format!(
        "--mem {mem} MiB: {at_refusal} held at the first refusal after {:.1} s, {} held after 4 s more of pressure; \
         {tried} tried, {refused} refused or shed ({refusals})",
        took.as_secs_f64(),
        crowd.holding()
    );
    let pushed_back = refused > 0;
    let name = s.name.clone();
    let r = s.finish_with(&summary, true);
    crowd.release();
    r?;
    if !pushed_back {
        return Err(format!("{name}: {cap} connections were opened and none was refused: nothing bounds them"));
    }
    Ok(())
}

/// The good client's own address: another host than the attacker's.
const OTHER_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

/// One host opens 3,000 idle connections in rounds of 300 and keeps
/// trying for 4 s more, while a good client on another address is served:
/// the host holds at most its share (512) of the server's 4,096, the rest
/// closed at once, and the good client, fresh connections and keep-alive,
/// is served throughout.
fn one_host_holds_its_share(t: &str) -> Result<(), String> {
    let mut s = quiet_site_with("3,000 idle connections from one host", t, None, None, true)?;
    s.ns.ip(&["addr", "add", &format!("{OTHER_HOST}/24"), "dev", "tap0"])?;
    s.good = Some(GoodClient::start_from(&s.ns, server(), "/", Some(OTHER_HOST.into()))?);
    std::thread::sleep(Duration::from_secs(1));
    let crowd = Crowd::new();
    let pid = s.pid();
    let alive = || attack::alive(pid);
    let started = Instant::now();
    let mut tried = 0;
    while tried < 3000 && s.alive() {
        crowd.fill(&s.ns, server(), Hold::Idle, 300, 4, started + Duration::from_secs(60), &alive)?;
        tried += 300;
        std::thread::sleep(Duration::from_millis(200));
        crowd.sweep();
    }
    let pressed = Instant::now();
    while pressed.elapsed() < Duration::from_secs(4) && s.alive() {
        crowd.fill(&s.ns, server(), Hold::Idle, 300, 4, pressed + Duration::from_secs(4), &alive)?;
        tried += 300;
        std::thread::sleep(Duration::from_millis(200));
        crowd.sweep();
    }
    let held = crowd.holding();
    let refused = crowd.refused.load(Relaxed);
    let summary = format!("{tried} tried, {held} held at the end, {refused} closed by the server");
    let name = s.name.clone();
    let r = s.finish_with(&summary, true);
    crowd.release();
    r?;
    // A connection the server did not close, or left in its listener's
    // queue, shows as held: at most the share may be.
    if held > 512 {
        return Err(format!("{name}: one host holds more than its share of 512: {summary}"));
    }
    if refused == 0 {
        return Err(format!("{name}: nothing was closed by the server: {summary}"));
    }
    Ok(())
}

/// Downloads never read: connections that ask for the tar image's 1 MiB
/// file (from a block device) and never read it, opened in rounds of 50
/// until the server refuses or sheds some or 1,000 are open, with 64 MiB
/// of memory, then kept there for 4 s, a round every 200 ms. Each closes
/// its window once the host's receive buffer is full, and the server holds
/// the rest of what it was sending. The server must stay up and serve the
/// good client throughout, and a client that reads must get the same file
/// whole, while the crowd holds on and after it lets go. Holding them
/// all is no failure here: what each holds is bounded, and the send
/// timeout ends them.
///
/// With [`Hold::Trickle`], the same downloads read a kilobyte every
/// 200 ms through a receive buffer of a few kilobytes, throughout, the
/// reader's download included: never stalled, so never timed out, each
/// would hold its response for minutes.
fn unread_downloads(t: &str, hold: Hold) -> Result<(), String> {
    let scratch = Scratch::new("unread");
    let (img, big) = crate::http::tar_image(&scratch)?;
    let mem = 64;
    let what = match hold {
        Hold::Trickle => "downloads read at a trickle",
        _ => "downloads never read",
    };
    let mut s = quiet_site(what, t, Some(mem), Some(&img))?;
    s.start_good()?;
    let crowd = Crowd::new();
    let (tried, took, at_limit) = press(&s, &crowd, hold, 50, 1000)?;
    s.check_alive()?;
    // The trickle goes on while the reader downloads.
    let stop = AtomicBool::new(false);
    let during = std::thread::scope(|scope| {
        if hold == Hold::Trickle {
            scope.spawn(|| {
                while !stop.load(Relaxed) {
                    crowd.sweep();
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
        let during = download(&s.ns, &big);
        stop.store(true, Relaxed);
        during
    });
    let held = crowd.holding();
    let refused = crowd.refused.load(Relaxed);
    let refusals = crowd.refusals.lock().map(|r| r.join("; ")).unwrap_or_default();
    crowd.release();
    std::thread::sleep(Duration::from_millis(500));
    let after = download(&s.ns, &big);
    let summary = format!(
        "--mem {mem} MiB: {at_limit} held after {:.1} s, {held} after 4 s more of pressure; {tried} tried, \
         {refused} refused or shed ({refusals}); a reader's 1 MiB meanwhile: {}; after: {}",
        took.as_secs_f64(),
        during.as_ref().map_or_else(|e| e.clone(), |d| format!("{} ms", d.as_millis())),
        after.as_ref().map_or_else(|e| e.clone(), |d| format!("{} ms", d.as_millis())),
    );
    s.finish(&summary)?;
    during.map_err(|e| format!("{t}: a reader's download while the crowd held on: {e}"))?;
    after.map_err(|e| format!("{t}: a reader's download after the crowd let go: {e}"))?;
    Ok(())
}

/// Downloads the tar image's 1 MiB file from a fresh connection in `ns`,
/// reading it all, and checks it against `big`: how long it took.
fn download(ns: &Netns, big: &[u8]) -> Result<Duration, String> {
    ns.enter(|| {
        let start = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&server(), Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        let request = format!("GET {} HTTP/1.1\r\nHost: reader\r\nConnection: close\r\n\r\n", attack::UNREAD_PATH);
        s.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut all = Vec::new();
        s.read_to_end(&mut all).map_err(|e| format!("read after {} bytes: {e}", all.len()))?;
        let end = all.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no response head")? + 4;
        if !all.starts_with(b"HTTP/1.1 200 ") {
            return Err(format!("answered {:?}", String::from_utf8_lossy(&all[..all.len().min(16)])));
        }
        if &all[end..] != big {
            return Err(format!("the file came back different: {} bytes of {}", all.len() - end, big.len()));
        }
        Ok(start.elapsed())
    })?
}

/// A keep-alive connection to the server, one request answered on it.
fn victim(ns: &Netns) -> Result<(TcpStream, Vec<u8>), String> {
    ns.enter(|| -> Result<(TcpStream, Vec<u8>), String> {
        let mut s =
            TcpStream::connect_timeout(&server(), Duration::from_secs(5)).map_err(|e| format!("victim: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        get(&mut s, &mut buf)?;
        Ok((s, buf))
    })?
}

/// One GET on `s`, which must be answered 200.
fn get(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: victim\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    match attack::read_response(s, buf)? {
        200 => Ok(()),
        other => Err(format!("status {other}")),
    }
}

/// Forges segments with `flags` into the victim's connection, one at each
/// of `offsets` past the server's RCV.NXT, learnt by sniffing the link
/// after one request; the server's answers in the next 500 ms.
fn inject(
    s: &Site,
    conn: &mut (TcpStream, Vec<u8>),
    flags: u8,
    offsets: &[u32],
) -> Result<(Tracked, Vec<Segment>), String> {
    let client = match conn.0.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        other => return Err(format!("victim address: {other:?}")),
    };
    let to = SocketAddrV4::new(GUEST, PORT);
    s.raw.drain();
    get(&mut conn.0, &mut conn.1)?;
    let tracked = Tracked::learn(&s.raw, client, to, Instant::now() + Duration::from_millis(300))
        .ok_or("the sniffer saw no segment of the victim's connection")?;
    for &offset in offsets {
        s.raw.send(&tracked.forge(flags, offset).frame(s.wire.mac, s.wire.server_mac, 4242))?;
    }
    let answers = s.raw.segments(Instant::now() + Duration::from_millis(500), |g| g.src == to && g.dst == client);
    Ok((tracked, answers))
}

/// How many of `answers` are challenge ACKs (RFC 5961): empty ACKs that
/// acknowledge exactly the server's RCV.NXT.
fn challenge_acks(tracked: &Tracked, answers: &[Segment]) -> usize {
    answers
        .iter()
        .filter(|g| g.has(flags::ACK) && !g.has(flags::RST) && g.payload.is_empty() && g.ack == tracked.client_next)
        .count()
}

/// Blind in-window resets and SYNs on an established connection.
fn blind_rst_and_syn(t: &str) -> Result<(), String> {
    let s = site("blind in-window RST and SYN", t, None)?;
    let mut failures = Vec::new();
    // A reset inside the window but not at RCV.NXT, and an in-window SYN:
    // each must bring a challenge ACK and leave the connection open.
    for (what, f, offset) in
        [("an in-window RST 1000 bytes past RCV.NXT", flags::RST, 1000), ("an in-window SYN", flags::SYN, 500)]
    {
        let mut conn = victim(&s.ns)?;
        let (tracked, answers) = inject(&s, &mut conn, f, &[offset])?;
        let challenged = challenge_acks(&tracked, &answers) > 0;
        let survived = get(&mut conn.0, &mut conn.1);
        eprintln!("{}: {what}: challenge ACK {challenged}, connection after it: {survived:?}", s.name);
        if !challenged {
            failures.push(format!(
                "{what}: no challenge ACK (the server answered {:?})",
                answers.iter().map(|g| g.flags).collect::<Vec<_>>()
            ));
        }
        if let Err(e) = survived {
            failures.push(format!("{what}: the connection did not survive: {e}"));
        }
    }
    // A blind attacker's burst: 1,000 resets at guesses across the window.
    // Challenge ACKs are limited (one a second per connection, RFC 5961
    // section 7), so the burst cannot be turned into a flood of ACKs, and
    // the connection lives.
    let mut conn = victim(&s.ns)?;
    let guesses: Vec<u32> = (0..1000u32).map(|i| 1 + (i * 17) % 30_000).collect();
    let (tracked, answers) = inject(&s, &mut conn, flags::RST, &guesses)?;
    let challenges = challenge_acks(&tracked, &answers);
    let survived = get(&mut conn.0, &mut conn.1);
    eprintln!("{}: 1000 in-window resets: {challenges} challenge ACKs, connection after them: {survived:?}", s.name);
    if !(1..=2).contains(&challenges) {
        failures.push(format!("1000 in-window resets brought {challenges} challenge ACKs (1 or 2 wanted)"));
    }
    if let Err(e) = survived {
        failures.push(format!("1000 in-window resets: the connection did not survive: {e}"));
    }
    // The control: a reset exactly at RCV.NXT ends the connection, which
    // shows that the forged segments reach the server's TCP.
    let mut conn = victim(&s.ns)?;
    inject(&s, &mut conn, flags::RST, &[0])?;
    std::thread::sleep(Duration::from_millis(100));
    if get(&mut conn.0, &mut conn.1).is_ok() {
        failures
            .push("a reset at RCV.NXT did not end the connection: the forged segments do not reach the server".into());
    }
    let result = s.finish("in-window RST and SYN on established connections");
    if failures.is_empty() { result } else { Err(failures.join("\n")) }
}

/// ARP claiming that the host (10.0.0.1) is at a zero, broadcast or
/// multicast address, in unsolicited replies, requests and gratuitous
/// announcements, 10 times a second for 2.5 s each; the truth is told
/// between them. Beside the good client's view, a sniffer counts the IP
/// packets the server sends to the bogus address: any is a poisoned cache.
fn bogus_arp(t: &str) -> Result<(), String> {
    let s = site("bogus ARP", t, None)?;
    let mut failures = Vec::new();
    for (name, mac) in attack::BOGUS_MACS {
        let frames = attack::bogus_arp(&s.wire, mac);
        let sniffer = Raw::open(&s.ns, &s.wire.ifname)?;
        let server_mac = s.wire.server_mac;
        let until = Instant::now() + Duration::from_millis(2500);
        let counting = std::thread::spawn(move || {
            let mut n = 0;
            while let Some(f) = sniffer.recv(until) {
                n += usize::from(f.len() >= 14 && f[..6] == mac && f[6..12] == server_mac && f[12..14] == [0x08, 0x00]);
            }
            n
        });
        let from = Instant::now();
        while Instant::now() < until {
            frames.iter().try_for_each(|f| s.raw.send(f))?;
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = s.since(from)?;
        let misdirected = counting.join().map_err(|_| "the sniffer panicked")?;
        eprintln!("{}: the host claimed to be at {name}: {misdirected} IP packets sent there; {r}", s.name);
        if let Err(e) = r.check(&format!("ARP claiming {name}"), MIN_RATE, MAX_OUTAGE) {
            failures.push(e);
        }
        if misdirected > 0 {
            failures
                .push(format!("ARP claiming {name}: the server believed it and sent {misdirected} IP packets there"));
        }
        for _ in 0..3 {
            s.raw.send(&attack::true_arp(&s.wire))?;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let result = s.finish("ARP claiming zero, broadcast and multicast addresses");
    if failures.is_empty() { result } else { Err(failures.join("\n")) }
}

pub fn cases(v: &mut Vec<Case>) {
    let first = v.len();
    for t in ["unix", "hvt", "spt"] {
        let n = Needs::Net(t);
        v.push(case(format!("{t}::attack_10000_half_open_syns_with_the_resets_dropped"), n, move || syn_flood(t)));
        v.push(case(format!("{t}::attack_a_syn_with_a_payload_and_a_land_packet"), n, move || syn_payload_and_land(t)));
        v.push(case(format!("{t}::attack_5000_half_closed_connections"), n, move || half_closed(t)));
        v.push(case(format!("{t}::attack_idle_connections_until_refused"), n, move || {
            until_refused(t, Hold::Idle, "idle connections", 100, 8000)
        }));
        v.push(case(format!("{t}::attack_body_holding_connections_until_refused"), n, move || {
            until_refused(t, Hold::Body, "connections holding half a 1 MiB body", 20, 600)
        }));
        v.push(case(format!("{t}::attack_one_host_holds_its_share_of_connections"), n, move || {
            one_host_holds_its_share(t)
        }));
        v.push(case(format!("{t}::attack_downloads_never_read"), n, move || unread_downloads(t, Hold::Unread)));
        v.push(case(format!("{t}::attack_downloads_read_at_a_trickle"), n, move || unread_downloads(t, Hold::Trickle)));
        v.push(case(format!("{t}::attack_blind_in_window_rst_and_syn"), n, move || blind_rst_and_syn(t)));
        v.push(case(format!("{t}::attack_bogus_arp"), n, move || bogus_arp(t)));
    }
    // Each measures a good client's service under an attack: alone, so
    // that it measures the server and not another test's load.
    for c in &mut v[first..] {
        c.alone = true;
    }
}
