//! The HTTP server end to end: the `static-website` example on unix (on a
//! tap device), hvt and spt, each in a network namespace of the test's
//! own, against curl and against raw sockets: every status the server
//! gives, persistent connections and pipelining, conditional and range
//! requests, the request details of issue 18 (redirects on this host,
//! Host fields), files from a tar disk image made by GNU tar, and hostile
//! clients (fuzzed heads, trickling clients, oversize bodies) while a
//! well-behaved client keeps being served.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::attack::{GoodClient, MAX_OUTAGE, MIN_RATE};
use testkit::{Background, Netns, Scratch, example_with, root, run_with};

use crate::{Case, Needs, case};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 80;

fn addr() -> SocketAddr {
    SocketAddr::new(GUEST.into(), PORT)
}

/// The limits the tests run the server with: short timeouts, a small body.
const LIMITS: [&str; 4] = ["--ipv4=10.0.0.2/24", "--header-timeout=2", "--idle-timeout=3", "--max-body=4096"];

fn keys(t: &str, tar: bool) -> Vec<&'static str> {
    let mut k = Vec::new();
    if t == "unix" {
        k.push("--net=direct");
    }
    if tar {
        k.push("--kv-ro=tar");
    }
    k
}

/// Starts static-website on `t` in `ns`; `disk` is the tar image of a
/// `--kv-ro=tar` build.
fn start(ns: &Netns, t: &str, disk: Option<&Path>) -> Result<Background, String> {
    start_with(ns, t, disk, &[])
}

fn start_with(ns: &Netns, t: &str, disk: Option<&Path>, args: &[&str]) -> Result<Background, String> {
    let image = example_with(t, "static-website", &keys(t, disk.is_some()))?;
    let block = disk.map(|d| format!("--block:htdocs={}", d.display()));
    let mut devices = vec!["--net:service=tap0"];
    devices.extend(block.as_deref());
    let mut c = ns.unikernel(t, &image, &devices);
    c.args(LIMITS).args(args);
    let mut bg = Background::start(c)?;
    bg.wait_for("static-website: serving", Duration::from_secs(30))?;
    Ok(bg)
}

/// A response as curl saw it.
struct Got {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Runs curl in `ns` on `path` with `args`; the last response's status,
/// head and body.
fn curl(ns: &Netns, path: &str, args: &[&str]) -> Result<Got, String> {
    let scratch = Scratch::new("curl");
    let head = scratch.0.join("head");
    let body = scratch.0.join("body");
    let mut c: Command = ns.command("curl");
    c.args(["-s", "-S", "--max-time", "20", "-D"]).arg(&head).arg("-o").arg(&body).args(["-w", "%{http_code}"]);
    c.args(args).arg(format!("http://{GUEST}:{PORT}{path}"));
    let r = run_with(c, Duration::from_secs(30))?;
    if r.status() != 0 {
        return Err(format!("curl {args:?} {path} failed: {}", r.dump()));
    }
    let status = r.stdout.trim().parse().map_err(|_| format!("curl printed no status: {}", r.dump()))?;
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    // After a 100 Continue, the last head is the response's.
    let head = head.rsplit("\r\n\r\n").find(|h| !h.trim().is_empty()).unwrap_or("").to_string();
    Ok(Got { status, head, body: std::fs::read(&body).unwrap_or_default() })
}

fn expect(got: &Got, status: u16, what: &str) -> Result<(), String> {
    if got.status != status {
        return Err(format!("{what}: status {} (want {status})\n{}", got.status, got.head));
    }
    Ok(())
}

/// One response read from a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response (framed by Content-Length) from `s`, with what was
/// left over from the previous read in `buf`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Raw, String> {
    read_response_to(s, buf, false)
}

/// As [`read_response`]; `head_request` when the request was HEAD, whose
/// response has no body whatever its Content-Length.
fn read_response_to(s: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Result<Raw, String> {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("not a status line: {head:?}"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let no_body = status == 304 || status == 100 || head_request;
            let total = end + 4 + if no_body { 0 } else { len };
            while buf.len() < total {
                let n = s.read(&mut chunk).map_err(|e| format!("reading a body: {e}"))?;
                if n == 0 {
                    return Err(format!("the connection closed inside a body after {head:?}"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok(Raw { status, head, body });
        }
        let n =
            s.read(&mut chunk).map_err(|e| format!("reading a head: {e} (have {:?})", String::from_utf8_lossy(buf)))?;
        if n == 0 {
            return Err(format!("the connection closed before a response (have {:?})", String::from_utf8_lossy(buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect() -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr(), Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Sends `request` on a new connection; the one response, and whether
/// the server then closed the connection.
fn raw(request: &[u8]) -> Result<(Raw, bool), String> {
    let mut s = connect()?;
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf)?;
    let mut rest = [0u8; 16];
    let closed = matches!(s.read(&mut rest), Ok(0) | Err(_));
    Ok((r, closed))
}

/// Sends each request on its own connection: each must be answered with
/// its status (named `what` in the error), and the connection closed.
fn refused(cases: &[(&[u8], u16, &str)]) -> Result<(), String> {
    for &(request, want, what) in cases {
        let (r, closed) = raw(request)?;
        if r.status != want || !closed {
            return Err(format!("{what}: {} (want {want}), closed {closed}", r.status));
        }
    }
    Ok(())
}

fn site(file: &str) -> Vec<u8> {
    std::fs::read(root().join("examples/static-website/htdocs").join(file)).unwrap_or_default()
}

/// curl against the compiled-in site: the statuses of RFC 9110 a static
/// site gives, validators, ranges.
fn serves_to_curl(ns: &Netns) -> Result<(), String> {
    let index = site("index.html");
    let g = curl(ns, "/", &[])?;
    expect(&g, 200, "GET /")?;
    if g.body != index || g.header("content-type").as_deref() != Some("text/html; charset=utf-8") {
        return Err(format!("GET / served something else:\n{}\n{}", g.head, String::from_utf8_lossy(&g.body)));
    }
    let etag = g.header("etag").ok_or("no ETag")?;
    let modified = g.header("last-modified").ok_or("no Last-Modified")?;
    if g.header("date").is_none() {
        return Err(format!("no Date:\n{}", g.head));
    }
    let g = curl(ns, "/css/site.css", &[])?;
    expect(&g, 200, "GET /css/site.css")?;
    if g.body != site("css/site.css") || !g.header("content-type").unwrap_or_default().starts_with("text/css") {
        return Err(format!("the stylesheet:\n{}", g.head));
    }
    let g = curl(ns, "/docs", &[])?;
    expect(&g, 301, "GET /docs")?;
    if g.header("location").as_deref() != Some("/docs/") {
        return Err(format!("the redirect of /docs:\n{}", g.head));
    }
    let g = curl(ns, "/docs", &["-L"])?;
    expect(&g, 200, "GET /docs, following")?;
    if g.body != site("docs/index.html") {
        return Err("/docs/ is not docs/index.html".into());
    }
    let g = curl(ns, "/", &["-I"])?;
    expect(&g, 200, "HEAD /")?;
    // (curl -I writes the head where the body would go: the raw test
    // checks that HEAD sends no body.)
    if g.header("content-length") != Some(index.len().to_string()) {
        return Err(format!("HEAD /:\n{}", g.head));
    }
    expect(&curl(ns, "/missing.html", &[])?, 404, "GET /missing.html")?;
    expect(&curl(ns, "/%2e%2e/etc/passwd", &["--path-as-is"])?, 400, "GET /../etc/passwd")?;
    let g = curl(ns, "/", &["-X", "DELETE"])?;
    expect(&g, 405, "DELETE /")?;
    if g.header("allow").as_deref() != Some("GET, HEAD") {
        return Err(format!("405 without Allow:\n{}", g.head));
    }
    // Conditional GET.
    expect(&curl(ns, "/", &["-H", &format!("If-None-Match: {etag}")])?, 304, "If-None-Match: the ETag")?;
    expect(&curl(ns, "/", &["-H", "If-None-Match: \"other\""])?, 200, "If-None-Match: another tag")?;
    expect(
        &curl(ns, "/", &["-H", &format!("If-Modified-Since: {modified}")])?,
        304,
        "If-Modified-Since: Last-Modified",
    )?;
    expect(
        &curl(ns, "/", &["-H", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"])?,
        200,
        "If-Modified-Since: 1970",
    )?;
    // Ranges.
    let g = curl(ns, "/", &["-r", "0-9"])?;
    expect(&g, 206, "Range: bytes=0-9")?;
    if g.body != index[..10] || g.header("content-range") != Some(format!("bytes 0-9/{}", index.len())) {
        return Err(format!("bytes 0-9:\n{}", g.head));
    }
    let g = curl(ns, "/", &["-r", "-5"])?;
    expect(&g, 206, "Range: bytes=-5")?;
    if g.body != index[index.len() - 5..] {
        return Err("the last 5 bytes differ".into());
    }
    let g = curl(ns, "/", &["-r", "100000-"])?;
    expect(&g, 416, "Range past the end")?;
    if g.header("content-range") != Some(format!("bytes */{}", index.len())) {
        return Err(format!("416 without Content-Range:\n{}", g.head));
    }
    expect(&curl(ns, "/", &["-r", "0-9", "-H", "If-Range: \"stale\""])?, 200, "If-Range with a stale tag")?;
    // Limits.
    let long = format!("/{}", "a".repeat(9000));
    expect(&curl(ns, &long, &[])?, 414, "a 9000-byte target")?;
    let mut many: Vec<String> = Vec::new();
    for i in 0..150 {
        many.push("-H".into());
        many.push(format!("X-Field-{i}: {i}"));
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    expect(&curl(ns, "/", &many)?, 431, "150 header fields")?;
    expect(&curl(ns, "/", &["-H", &format!("X-Big: {}", "b".repeat(20000))])?, 431, "a 20 KB field")?;
    let body = "x".repeat(5000);
    expect(&curl(ns, "/", &["--data-binary", &body])?, 413, "a 5000-byte body (limit 4096)")?;
    let g = curl(ns, "/", &["--data-binary", &body, "-H", "Transfer-Encoding: chunked"])?;
    expect(&g, 413, "a chunked 5000-byte body")?;
    let g = curl(ns, "/", &["--data-binary", "small", "-H", "Expect: 100-continue"])?;
    expect(&g, 405, "POST with Expect: 100-continue")?;
    expect(&curl(ns, "/", &["--http1.0"])?, 200, "HTTP/1.0")?;
    // Two requests in one curl run share one connection.
    let mut c: Command = ns.command("curl");
    c.args(["-s", "-v", "-o", "/dev/null", "-o", "/dev/null"])
        .arg(format!("http://{GUEST}/"))
        .arg(format!("http://{GUEST}/css/site.css"));
    let r = run_with(c, Duration::from_secs(20))?;
    if !r.stderr.contains("Re-using existing connection") && !r.stderr.contains("Reusing existing connection") {
        return Err(format!("curl did not reuse the connection:\n{}", r.stderr));
    }
    Ok(())
}

/// Raw sockets: pipelining, framing, versions, timeouts.
fn raw_requests() -> Result<(), String> {
    let index = site("index.html");
    // Three pipelined requests in one write, a chunked POST among them:
    // three responses, in order, on one connection.
    let mut s = connect()?;
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /css/site.css HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let a = read_response(&mut s, &mut buf)?;
    let b = read_response(&mut s, &mut buf)?;
    let c = read_response(&mut s, &mut buf)?;
    if (a.status, b.status, c.status) != (200, 405, 200) || a.body != index || c.body != site("css/site.css") {
        return Err(format!("pipelined: {} {} {}", a.status, b.status, c.status));
    }
    // The connection persists, until Connection: close.
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let d = read_response_to(&mut s, &mut buf, true)?;
    if d.status != 200 || !d.head.contains("Connection: close") || !d.body.is_empty() {
        return Err(format!("HEAD with close: {d:?}"));
    }
    let mut rest = [0u8; 8];
    if !matches!(s.read(&mut rest), Ok(0)) {
        return Err("the server kept the connection after Connection: close".into());
    }
    // Statuses the curl command line cannot ask for.
    refused(&[
        (&b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..], 505, "HTTP/2.0"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "no Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "two lengths"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "an unchunked coding"),
        (b"GET\x01/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "a control byte"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "a bad chunk size"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "a TLS hello"),
    ])?;
    let (r, _) = raw(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")?;
    if r.status != 200 || !r.head.contains("Connection: keep-alive") {
        return Err(format!("HTTP/1.0 keep-alive: {r:?}"));
    }
    // A head begun but not finished in the header timeout (2 s): 408.
    let started = Instant::now();
    let (r, closed) = raw(b"GET / HTTP/1.1\r\nHost: a\r\n")?;
    let took = started.elapsed();
    if r.status != 408 || !closed || took < Duration::from_millis(1500) || took > Duration::from_secs(10) {
        return Err(format!("an unfinished head: {} after {took:?}", r.status));
    }
    // A body that stops arriving: 408 too.
    let (r, _) = raw(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly this")?;
    if r.status != 408 {
        return Err(format!("an unfinished body: {}", r.status));
    }
    // A client that lets the server close first keeps no TIME-WAIT and may
    // reuse its port at once, while the server's side of the old
    // connection is still in TIME-WAIT: the new connection is accepted
    // at once, as Linux accepts it.
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    for i in 0..3 {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(|e| e.to_string())?;
        sock.set_reuse_address(true).map_err(|e| e.to_string())?;
        sock.bind(&SocketAddr::from(([10, 0, 0, 1], port)).into()).map_err(|e| format!("bind port {port}: {e}"))?;
        let started = Instant::now();
        sock.connect_timeout(&addr().into(), Duration::from_secs(5))
            .map_err(|e| format!("connection {i} from port {port}: {e}"))?;
        if started.elapsed() > Duration::from_millis(500) {
            return Err(format!("connection {i} from port {port} took {:?}", started.elapsed()));
        }
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        s.read_to_end(&mut all).map_err(|e| format!("connection {i}: {e}"))?;
        if !all.starts_with(b"HTTP/1.1 200 ") {
            return Err(format!(
                "connection {i} from port {port}: {:?}",
                String::from_utf8_lossy(&all[..all.len().min(60)])
            ));
        }
        drop(s);
        // Our FIN and the server's ACK, so that the port is free again.
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new connection that sends nothing is closed, quietly, at the
    // header timeout (2 s).
    let mut s = connect()?;
    let started = Instant::now();
    let mut one = [0u8; 1];
    match s.read(&mut one) {
        Ok(0) if (1500..2900).contains(&started.elapsed().as_millis()) => {}
        other => return Err(format!("a silent new connection: {other:?} after {:?}", started.elapsed())),
    }
    // A persistent connection, once served, at the idle timeout (3 s).
    let mut s = connect()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").map_err(|e| e.to_string())?;
    let r = read_response(&mut s, &mut Vec::new())?;
    if r.status != 200 {
        return Err(format!("the connection to be left idle: {}", r.status));
    }
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    if !(2500..5000).contains(&started.elapsed().as_millis()) {
        return Err(format!("an idle served connection was closed after {:?}", started.elapsed()));
    }
    Ok(())
}

/// The details issue 18 found: a redirect that must stay on this host, a
/// space in the target, Host fields, a future If-Modified-Since, and a
/// chunk size far past the body limit (answered at once, not after the
/// header timeout).
fn request_details() -> Result<(), String> {
    let (r, _) = raw(b"GET //docs HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
    let location = r.head.lines().find_map(|l| l.strip_prefix("Location: ")).unwrap_or("");
    if r.status != 301 || location != "/docs/" {
        return Err(format!(
            "GET //docs: {} to {location:?} (want 301 to \"/docs/\", never \"//docs/\", another host)",
            r.status
        ));
    }
    refused(&[
        (&b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"[..], 400, "a space in the target"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "two Host fields"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "Host: a b"),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "Host: a/b"),
        (b"GET / HTTP/1.1\r\nHost: u@b\r\n\r\n", 400, "Host: u@b"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "two Host fields in HTTP/1.0"),
    ])?;
    let (r, _) = raw(b"GET / HTTP/1.1\r\nHost: 10.0.0.2:80\r\nIf-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT\r\nConnection: close\r\n\r\n")?;
    if r.status != 200 || r.body != site("index.html") {
        return Err(format!(
            "If-Modified-Since in 2099: {} (want 200: a date past the server's clock is ignored)",
            r.status
        ));
    }
    // The chunk's data never comes; the connection stays open.
    let started = Instant::now();
    let (r, closed) = raw(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nabc")?;
    let took = started.elapsed();
    if r.status != 413 || !closed || took > Duration::from_millis(1500) {
        return Err(format!("a chunk of 2^60 bytes: {} after {took:?}, closed {closed} (want 413 at once)", r.status));
    }
    Ok(())
}

/// Mutations of a good request, each on its own connection: the answer is
/// a status line or a close, in time; never silence, never a crash.
fn fuzz(seed: u64, count: usize) -> Result<(), String> {
    let good = b"GET /css/site.css?x=1 HTTP/1.1\r\nHost: 10.0.0.2\r\nUser-Agent: fuzz\r\nAccept: */*\r\nRange: bytes=0-3\r\n\r\n";
    let mut x = seed | 1;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..count {
        let mut req = good.to_vec();
        for _ in 0..1 + rand() % 6 {
            let at = (rand() as usize) % req.len();
            match rand() % 5 {
                0 => req[at] = rand() as u8,
                1 => {
                    req.remove(at);
                }
                2 => req.insert(at, b"\r\n:% \0\t/"[(rand() % 8) as usize]),
                3 => {
                    let n = (rand() % 40) as usize;
                    let b = req[at];
                    req.splice(at..at, std::iter::repeat_n(b, n));
                }
                _ => req.truncate(at.max(1)),
            }
        }
        let mut s = connect()?;
        s.set_read_timeout(Some(Duration::from_secs(8))).map_err(|e| e.to_string())?;
        let _ = s.write_all(&req);
        let _ = s.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        let started = Instant::now();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => {
                return Err(format!(
                    "fuzz {i}: no answer or close in {:?} ({e}) to {:?}",
                    started.elapsed(),
                    String::from_utf8_lossy(&req)
                ));
            }
        }
        let answered = out.starts_with(b"HTTP/1.1 ") && out.len() >= 12 && out[9..12].iter().all(u8::is_ascii_digit);
        if !(out.is_empty() || answered) {
            return Err(format!(
                "fuzz {i}: not a response: {:?} to {:?}",
                String::from_utf8_lossy(&out[..out.len().min(80)]),
                String::from_utf8_lossy(&req)
            ));
        }
    }
    Ok(())
}

/// Hostile clients in parallel with a well-behaved one, which must be
/// served throughout.
fn hostile_while_serving(ns: &Netns) -> Result<(), String> {
    let index = site("index.html");
    ns.enter(|| {
        let done = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let good = {
            let (done, served) = (done.clone(), served.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = connect()?;
                let mut buf = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").map_err(|e| format!("good client: {e}"))?;
                    let r = read_response(&mut s, &mut buf)?;
                    if r.status != 200 || r.body != index {
                        return Err(format!("good client: {r:?}"));
                    }
                    if started.elapsed() > Duration::from_secs(2) {
                        return Err(format!("good client waited {:?}", started.elapsed()));
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            })
        };
        // Trickling clients: a byte every 100 ms, a head that would take
        // 6 s to arrive: each is cut off by the 2 s header timeout.
        let tricklers: Vec<_> = (0..20)
            .map(|i| {
                std::thread::spawn(move || -> Result<(), String> {
                    let mut s = connect()?;
                    let req = b"GET / HTTP/1.1\r\nHost: trickle\r\nX-Slow: yes-very-slow\r\n\r\n";
                    for b in req.iter() {
                        if s.write_all(&[*b]).is_err() {
                            break; // closed on us, as it should
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let mut buf = Vec::new();
                    match read_response(&mut s, &mut buf) {
                        Ok(r) if r.status == 408 => Ok(()),
                        Err(_) => Ok(()), // the 408 was lost to the reset of our late bytes
                        Ok(r) => Err(format!("trickler {i}: {}", r.status)),
                    }
                })
            })
            .collect();
        // Oversize bodies, declared and chunked, written in full.
        let oversize = std::thread::spawn(|| -> Result<(), String> {
            for i in 0..20 {
                let mut s = connect()?;
                let body = vec![b'z'; 200_000];
                let head = if i % 2 == 0 {
                    format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len())
                } else {
                    format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", body.len())
                };
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
                let mut buf = Vec::new();
                match read_response(&mut s, &mut buf) {
                    Ok(r) if r.status == 413 => {}
                    Ok(r) => return Err(format!("oversize body {i}: {}", r.status)),
                    Err(e) => return Err(format!("oversize body {i}: {e}")),
                }
            }
            Ok(())
        });
        let fuzzers: Vec<_> = (0..3).map(|k| std::thread::spawn(move || fuzz(0x5eed + k, 150))).collect();
        let mut errors = Vec::new();
        for f in fuzzers {
            if let Err(e) = f.join().map_err(|_| "fuzzer panicked".to_string()).and_then(|r| r) {
                errors.push(e);
            }
        }
        if let Err(e) = oversize.join().map_err(|_| "oversize panicked".to_string()).and_then(|r| r) {
            errors.push(e);
        }
        for t in tricklers {
            if let Err(e) = t.join().map_err(|_| "trickler panicked".to_string()).and_then(|r| r) {
                errors.push(e);
            }
        }
        done.store(true, Ordering::Relaxed);
        if let Err(e) = good.join().map_err(|_| "good client panicked".to_string()).and_then(|r| r) {
            errors.push(e);
        }
        if served.load(Ordering::Relaxed) < 20 {
            errors.push(format!("the good client was served only {} times", served.load(Ordering::Relaxed)));
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("\n")) }
    })?
}

/// A tar disk image made by GNU tar: a page, a 1 MiB file and a deep path.
pub(crate) fn tar_image(scratch: &Scratch) -> Result<(std::path::PathBuf, Vec<u8>), String> {
    let dir = scratch.0.join("site");
    std::fs::create_dir_all(dir.join("a/b/c")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("index.html"), "<h1>from a tar archive</h1>\n").map_err(|e| e.to_string())?;
    let big = testkit::noise(88172645463325252, 1 << 20);
    std::fs::write(dir.join("a/b/c/big.bin"), &big).map_err(|e| e.to_string())?;
    let img = scratch.0.join("htdocs.img");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&img)
        .args(["index.html", "a"])
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("tar failed".into());
    }
    Ok((img, big))
}

fn serves_a_tar_image(ns: &Netns, big: &[u8]) -> Result<(), String> {
    let g = curl(ns, "/", &[])?;
    expect(&g, 200, "GET / from the tar image")?;
    if g.body != b"<h1>from a tar archive</h1>\n" {
        return Err(format!("GET /: {:?}", String::from_utf8_lossy(&g.body)));
    }
    let g = curl(ns, "/a/b/c/big.bin", &[])?;
    expect(&g, 200, "the 1 MiB file")?;
    if g.body != big || g.header("content-type").as_deref() != Some("application/octet-stream") {
        return Err(format!("the 1 MiB file came back different ({} bytes)", g.body.len()));
    }
    let g = curl(ns, "/a/b/c/big.bin", &["-r", "500000-500999"])?;
    expect(&g, 206, "a range of the 1 MiB file")?;
    if g.body != big[500_000..501_000] {
        return Err("the range of the 1 MiB file differs".into());
    }
    expect(&curl(ns, "/a/b", &[])?, 301, "a directory")?;
    expect(&curl(ns, "/a/b/", &[])?, 404, "a directory without index.html")?;
    // Eight clients fetching the big file at once.
    ns.enter(|| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| -> Result<Vec<u8>, String> {
                    let (r, _) = raw(b"GET /a/b/c/big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
                    Ok(r.body)
                })
            })
            .collect();
        for t in threads {
            let body = t.join().map_err(|_| "client panicked".to_string())??;
            if body != big {
                return Err(format!("a concurrent download came back different ({} bytes)", body.len()));
            }
        }
        Ok(())
    })?
}

/// The 1 MiB file over a tap of MTU 1500, with the stack's segmentation
/// offload on or off: byte-exact either way, and in how many packets the
/// host received it (a segment the host cuts arrives as one).
fn one_mib_at_mtu_1500(t: &str, offload: bool) -> Result<(), String> {
    let scratch = Scratch::new(if offload { "tar-site-tso" } else { "tar-site-no-tso" });
    let (img, big) = tar_image(&scratch)?;
    let ns = Netns::new()?;
    let arg = format!("--tcp-segmentation-offload={offload}");
    let g = start_with(&ns, t, Some(&img), &[&arg])?;
    let mut packets = 0;
    for _ in 0..4 {
        let before = ns.rx_packets("tap0")?;
        let got = curl(&ns, "/a/b/c/big.bin", &[])?;
        packets += ns.rx_packets("tap0")? - before;
        expect(&got, 200, "the 1 MiB file")?;
        if got.body != big {
            return Err(format!("the 1 MiB file came back different ({} bytes)\n{}", got.body.len(), g.output()));
        }
    }
    // 1,448 payload bytes a frame at MTU 1500 (with timestamps; 1,460
    // without): at least 724 frames a download when the stack cuts them.
    let per_download = packets / 4;
    eprintln!("{t}: 1 MiB at MTU 1500, segmentation offload {offload}: {per_download} packets a download");
    if offload && per_download > 200 {
        return Err(format!("{per_download} packets a download: the host did not cut the segments"));
    }
    if !offload && per_download < 724 {
        return Err(format!("{per_download} packets a download with the offload off: frames above the MTU?"));
    }
    Ok(())
}

fn needs(t: &'static str) -> Needs {
    Needs::Net(t)
}

pub fn cases(v: &mut Vec<Case>) {
    v.push(case("unix::http_serves_over_the_host_sockets", Needs::Net("unix"), || {
        // Configured with the default keys: on unix, the host's sockets.
        let ns = Netns::new()?;
        let mut c = ns.command(example_with("unix", "static-website", &[])?);
        c.args(["--port=8080", "--header-timeout=2"]);
        let mut g = Background::start(c)?;
        g.wait_for("static-website: serving", Duration::from_secs(30))?;
        let mut curl = ns.command("curl");
        curl.args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "http://127.0.0.1:8080/docs/",
        ]);
        let r = run_with(curl, Duration::from_secs(20))?;
        let want = format!("200 {}", site("docs/index.html").len());
        if r.stdout.trim() != want {
            return Err(format!("GET /docs/ over the host's sockets: {:?} (want {want:?})\n{}", r.stdout, g.output()));
        }
        // Limits hold on this stack too: an unfinished head gets 408.
        let to = SocketAddr::from(([127, 0, 0, 1], 8080));
        ns.enter(move || -> Result<(), String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf)?;
            if r.status != 408 {
                return Err(format!("an unfinished head over the host's sockets: {}", r.status));
            }
            Ok(())
        })?
    }));
    v.push(case("unix::http_over_the_host_sockets_outlives_running_out_of_descriptors", Needs::Net("unix"), || {
        // Forty descriptors and sixty connections held open: accept fails
        // with EMFILE, which used to end the server.
        let ns = Netns::new()?;
        let mut c = ns.command("prlimit");
        c.arg("--nofile=40").arg(example_with("unix", "static-website", &[])?);
        c.args(["--port=8080", "--logs=http:warn"]);
        let mut g = Background::start(c)?;
        g.wait_for("static-website: serving", Duration::from_secs(30))?;
        let to = SocketAddr::from(([127, 0, 0, 1], 8080));
        let held = ns.enter(move || -> Result<Vec<TcpStream>, String> {
            (0..60)
                .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| e.to_string()))
                .collect()
        })??;
        std::thread::sleep(Duration::from_secs(1));
        g.wait_for("accept: no sockets or buffers left", Duration::from_secs(10))?;
        drop(held);
        let mut curl = ns.command("curl");
        curl.args(["-s", "-S", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8080/"]);
        let r = run_with(curl, Duration::from_secs(20))?;
        if r.stdout.trim() != "200" || g.child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Err(format!("after running out of descriptors: {:?}\n{}", r.stdout, g.output()));
        }
        Ok(())
    }));
    for t in ["unix", "hvt", "spt"] {
        v.push(case(format!("{t}::http_answers_curl_with_every_status"), needs(t), move || {
            let ns = Netns::new()?;
            let mut g = start(&ns, t, None)?;
            serves_to_curl(&ns)?;
            // Raw requests and the details an attacker probes, while a
            // well-behaved client is measured.
            let mut good = GoodClient::start(&ns, addr(), "/")?;
            let raw = ns.enter(raw_requests)?;
            let details = ns.enter(request_details)?;
            let report = good.stop();
            eprintln!("{t}: raw requests and the request details: good client: {report}");
            raw?;
            details?;
            report.check(&format!("{t}: raw requests and the request details"), MIN_RATE, MAX_OUTAGE)?;
            // The access log names each request.
            if !g.output().contains("\"GET /css/site.css HTTP/1.1\" 200") {
                return Err(format!("no access log line:\n{}", g.output()));
            }
            if let Ok(Some(s)) = g.child.try_wait() {
                return Err(format!("the unikernel exited ({s})"));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::http_serves_others_while_hostile_clients_misbehave"), needs(t), move || {
            let ns = Netns::new()?;
            let mut g = start(&ns, t, None)?;
            hostile_while_serving(&ns)?;
            let after = curl(&ns, "/", &[])?;
            expect(&after, 200, "GET / after the hostile clients")?;
            if let Ok(Some(s)) = g.child.try_wait() {
                return Err(format!("the unikernel exited ({s}):\n{}", g.output()));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::http_serves_a_tar_disk_image_made_by_gnu_tar"), needs(t), move || {
            let scratch = Scratch::new("tar-site");
            let (img, big) = tar_image(&scratch)?;
            let ns = Netns::new()?;
            let _g = start(&ns, t, Some(&img))?;
            serves_a_tar_image(&ns, &big)
        }));
        v.push(case(format!("{t}::http_serves_1_mib_byte_exact_over_a_tap_of_mtu_65520"), needs(t), move || {
            // The tap MTU `mirage run` gives: responses leave in frames of
            // up to 64 KiB, through the stack's checksums and the hvt ring.
            let scratch = Scratch::new("tar-site-mtu");
            let (img, big) = tar_image(&scratch)?;
            let ns = Netns::with_mtu(65520)?;
            let _g = start(&ns, t, Some(&img))?;
            serves_a_tar_image(&ns, &big)
        }));
        v.push(case(format!("{t}::http_serves_1_mib_at_mtu_1500_in_segments_the_host_cuts"), needs(t), move || {
            one_mib_at_mtu_1500(t, true)?;
            one_mib_at_mtu_1500(t, false)
        }));
    }
}

/// static-website on virtio: curl against the compiled-in site, then
/// against a tar disk image on a virtio-blk device (virtio.rs).
pub fn virtio_serves_curl() -> Result<(), String> {
    let ns = Netns::new()?;
    let g = start(&ns, "virtio", None)?;
    serves_to_curl(&ns)?;
    drop(g);
    let scratch = Scratch::new("tar-site-virtio");
    let (img, big) = tar_image(&scratch)?;
    let ns = Netns::new()?;
    let _g = start(&ns, "virtio", Some(&img))?;
    serves_a_tar_image(&ns, &big)
}
