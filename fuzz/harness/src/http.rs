//! The HTTP server of mirage-http: the request head parser (httparse
//! behind `request::parse`), body framing, and the connection state
//! machine (`serve_connection`), driven over an in-memory flow on a
//! simulated clock, answering with the real static-file handler.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use mirage_devices::kv::{Key, KvRw};
use mirage_http::{Handler, Limits, Request, Response, Static, Stats, serve_connection};
use mirage_kv::Mem;

use crate::sim::{self, AtEnd, FixedWall, Stream};

/// Small limits, so that inputs of a few hundred bytes reach every one.
fn limits() -> Limits {
    Limits {
        max_uri: 256,
        max_header_bytes: 2048,
        max_headers: 16,
        max_body: 4096,
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(5),
        max_connections: 4,
        max_connections_per_host: 2,
    }
}

/// The files served: distinct sizes, one larger than the server sends
/// with the head (so it goes out in pieces), a directory index.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let pattern = |n: usize| (0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>();
    vec![
        ("/index.html", b"<h1>hello</h1>".to_vec()),
        ("/a/index.html", b"<p>the a directory</p>".to_vec()),
        ("/a/b.txt", pattern(100)),
        ("/big.bin", pattern(40_000)),
        ("/empty", Vec::new()),
    ]
}

/// Records each request the server hands over, then answers as `H`.
struct Recorder<H> {
    inner: H,
    seen: RefCell<Vec<Request>>,
}

impl<H: Handler> Handler for Recorder<H> {
    type Body = H::Body;

    async fn handle(&self, request: &Request) -> Response<H::Body> {
        self.seen.borrow_mut().push(request.clone());
        self.inner.handle(request).await
    }
}

/// What one connection did.
struct Session {
    requests: Vec<Request>,
    output: Vec<u8>,
    stats: Stats,
}

/// Serves one connection whose peer sends `input` in reads of `pieces`
/// bytes, then does `end`.
fn serve(input: &[u8], pieces: Vec<usize>, end: AtEnd) -> Session {
    let store = Mem::new(FixedWall);
    for (path, data) in files() {
        sim::now(store.set(&Key::parse(path).expect("a key"), &data)).expect("stored");
    }
    let handler = Recorder { inner: Static::new(Rc::new(store)), seen: RefCell::default() };
    let stream = Stream::new(input, pieces, end);
    let (output, closed) = (stream.output.clone(), stream.closed.clone());
    let stats = Stats::default();
    let peer = SocketAddr::from(([10, 0, 0, 1], 40000));
    let limits = limits();
    let ((), _elapsed) = sim::run(serve_connection(stream, peer, &handler, &limits, &FixedWall, &stats));
    assert!(closed.get(), "the connection was not closed");
    let output = output.take();
    Session { requests: handler.seen.into_inner(), output, stats }
}

/// One response read back from what the server wrote.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads a response at the start of `out`; `head_only` for the answer to
/// a HEAD request, whose body is not sent.
fn read_answer(out: &[u8], head_only: bool) -> (Answer, usize) {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut fields);
    let len = match r.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("the server wrote a malformed response ({other:?}): {:?}", String::from_utf8_lossy(out)),
    };
    assert_eq!(r.version, Some(1));
    let status = r.code.expect("a status");
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8(h.value.to_vec()).expect("header values are text")))
        .collect();
    let mut a = Answer { status, headers, body: Vec::new() };
    // RFC 9110 section 6.6.1: Date in every final response.
    assert!(a.header("date").is_some() || status < 200, "no Date: {a:?}");
    let no_body = status == 304 || status == 204 || (100..200).contains(&status);
    let length = a.header("content-length").map(|v| v.parse::<usize>().expect("a Content-Length"));
    assert_eq!(length.is_none(), no_body, "{a:?}");
    let body_len = if no_body || head_only { 0 } else { length.unwrap_or(0) };
    assert!(out.len() >= len + body_len, "a response is cut short: {a:?}");
    a.body = out[len..len + body_len].to_vec();
    (a, len + body_len)
}

/// Checks what the server wrote against the requests it handed over:
/// one well-formed response per request, in order; at most one refusal,
/// last, with `Connection: close`; bodies that are the files served.
fn check(session: &Session) {
    let limits = limits();
    let files = files();
    let out = &session.output;
    let mut at = 0;
    for request in &session.requests {
        assert!(request.version <= 1);
        assert!(request.target.len() <= limits.max_uri);
        assert!(request.headers.len() <= limits.max_headers);
        assert!(request.body.len() as u64 <= limits.max_body);
        let answer = loop {
            let (a, n) = read_answer(&out[at..], request.method == "HEAD");
            at += n;
            if a.status != 100 {
                break a;
            }
        };
        if request.method == "HEAD" {
            continue;
        }
        match (answer.status, answer.header("content-range")) {
            (200, _) if answer.header("etag").is_some() => {
                assert!(files.iter().any(|(_, f)| *f == answer.body), "a 200 body that is no file: {answer:?}");
            }
            (206, Some(range)) => {
                let (span, size) = range.strip_prefix("bytes ").and_then(|r| r.split_once('/')).expect("a byte range");
                let (a, b) = span.split_once('-').expect("a span");
                let (a, b, size): (usize, usize, usize) =
                    (a.parse().unwrap(), b.parse().unwrap(), size.parse().unwrap());
                assert!(a <= b && b < size, "{range}");
                assert!(
                    files.iter().any(|(_, f)| f.len() == size && f[a..=b] == answer.body[..]),
                    "a 206 body that is not the range of a file: {range}"
                );
            }
            (206, None) => panic!("a partial response without Content-Range"),
            _ => {}
        }
    }
    let mut refusals = 0;
    while at < out.len() {
        let (a, n) = read_answer(&out[at..], false);
        at += n;
        if a.status == 100 {
            continue;
        }
        refusals += 1;
        assert!([400, 408, 413, 414, 431, 501, 505].contains(&a.status), "not a refusal: {a:?}");
        assert_eq!(a.header("connection"), Some("close"));
        assert_eq!(a.body, format!("{} {}\n", a.status, mirage_http::reason(a.status)).as_bytes());
    }
    assert_eq!(at, out.len());
    assert!(refusals <= 1, "more than one refusal");
    assert_eq!(session.stats.refusals.get(), refusals);
    assert_eq!(session.stats.responses.get(), session.requests.len() as u64);
}

/// The input is what a client sends. It is served twice: in one read and
/// then a close, and in small reads and then silence (so that the
/// server's timers end the connection).
pub fn run_server(data: &[u8]) {
    check(&serve(data, vec![usize::MAX], AtEnd::Close));
    let small = vec![1 + data.len() % 13, 1, 64, 2, 700];
    let stalled = serve(data, small, AtEnd::Stall);
    check(&stalled);
}

/// A request the client sends, and how.
#[derive(Debug)]
struct Sent {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body in chunks of these sizes (HTTP/1.1), else by Content-Length.
    chunks: Option<Vec<usize>>,
}

fn text(u: &mut Unstructured, chars: &[u8], len: std::ops::RangeInclusive<usize>) -> arbitrary::Result<String> {
    let n = u.int_in_range(len)?;
    (0..n).map(|_| u.choose(chars).map(|&c| c as char)).collect()
}

const TOKEN: &[u8] = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const TARGET: &[u8] = b"/abcxyz019.-_~?=&%!$'()*+,;:@";
const VALUE: &[u8] = b" \tabcXYZ019!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// Fields the sender sets itself, by the framing and version it picked.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "host", "connection", "expect", "te"];

impl<'a> Arbitrary<'a> for Sent {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Sent> {
        let method = if u.arbitrary()? {
            u.choose(&["GET", "HEAD", "POST", "PUT"])?.to_string()
        } else {
            text(u, TOKEN, 1..=8)?
        };
        let target = format!("/{}", text(u, TARGET, 0..=40)?);
        let version = u.int_in_range(0..=1)?;
        let mut headers = Vec::new();
        for _ in 0..u.int_in_range(0..=6)? {
            let name = text(u, TOKEN, 1..=12)?;
            if FRAMING.iter().any(|f| name.eq_ignore_ascii_case(f)) {
                continue;
            }
            // Field values have no blanks at either end (they are not part of the value).
            let value = text(u, VALUE, 0..=30)?.trim_matches([' ', '\t']).to_string();
            headers.push((name, value));
        }
        let len = u.int_in_range(0..=300)?;
        let body = u.bytes(len.min(u.len()))?.to_vec();
        let chunks = if version == 1 && u.arbitrary()? {
            Some((0..u.int_in_range(0..=4)?).map(|_| u.int_in_range(1..=100)).collect::<arbitrary::Result<_>>()?)
        } else {
            None
        };
        Ok(Sent { method, target, version, headers, body, chunks })
    }
}

impl Sent {
    /// The request as bytes; the fields the server must report, in order.
    fn encode(&self) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
        let mut fields: Vec<(String, String)> = Vec::new();
        if self.version == 1 {
            fields.push(("Host".into(), "fuzz.example".into()));
        } else {
            fields.push(("Connection".into(), "keep-alive".into()));
        }
        fields.extend(self.headers.iter().cloned());
        let mut body = Vec::new();
        match &self.chunks {
            Some(sizes) => {
                fields.push(("Transfer-Encoding".into(), "chunked".into()));
                let mut rest = &self.body[..];
                let mut sizes = sizes.iter().cycle();
                while !rest.is_empty() {
                    let n = (*sizes.next().unwrap_or(&rest.len())).min(rest.len());
                    body.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
                    body.extend_from_slice(&rest[..n]);
                    body.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                body.extend_from_slice(b"0\r\nTrailer-Field: x\r\n\r\n");
            }
            None => {
                fields.push(("Content-Length".into(), self.body.len().to_string()));
                body.extend_from_slice(&self.body);
            }
        }
        let mut bytes = format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.version).into_bytes();
        for (n, v) in &fields {
            bytes.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&body);
        (bytes, fields.into_iter().map(|(n, v)| (n, v.into_bytes())).collect())
    }
}

/// The input chooses well-formed requests within the limits, pipelined on
/// one connection and read in pieces it also chooses; the server must
/// hand each to the handler exactly as sent (method, target, version,
/// fields, decoded body) and answer each.
pub fn run_request(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(sent) =
        (0..u.int_in_range(1..=3).unwrap_or(1)).map(|_| Sent::arbitrary(&mut u)).collect::<arbitrary::Result<Vec<_>>>()
    else {
        return;
    };
    let pieces: Vec<usize> = (0..4).map(|_| u.int_in_range(1..=200).unwrap_or(1)).collect();
    let mut stream = Vec::new();
    let mut fields = Vec::new();
    for s in &sent {
        let (bytes, f) = s.encode();
        stream.extend_from_slice(&bytes);
        fields.push(f);
    }
    let session = serve(&stream, pieces, AtEnd::Close);
    check(&session);
    assert_eq!(session.requests.len(), sent.len(), "requests lost: {:?}", String::from_utf8_lossy(&stream));
    for ((got, s), f) in session.requests.iter().zip(&sent).zip(&fields) {
        assert_eq!((&got.method, &got.target, got.version), (&s.method, &s.target, s.version));
        assert_eq!(&got.headers, f);
        assert_eq!(got.body, s.body);
        assert!(got.keep_alive());
    }
}
