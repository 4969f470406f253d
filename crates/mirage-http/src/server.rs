//! The connection loop: read a head, read its body, ask the handler,
//! write the response; again while the connection persists.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt::Write as _;
use core::net::SocketAddr;
use core::time::Duration;

use mirage_devices::flow::{self, Flow};
use mirage_devices::stack::{self, TcpListener};
use mirage_devices::time::WallClock;
use mirage_runtime::time::{now, sleep_until};
use mirage_runtime::{Either, select, spawn};

use crate::request::{self, Chunk, Framing, Head, Refusal, Request};

/// What a server accepts, and how long it waits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request target, in bytes (414 beyond).
    pub max_uri: usize,
    /// The largest head (request line and header fields), in bytes (431
    /// beyond).
    pub max_header_bytes: usize,
    /// The most header fields (431 beyond).
    pub max_headers: usize,
    /// The largest request body, in bytes (413 beyond).
    pub max_body: u64,
    /// How long a head, or a body, may take to arrive once begun (408).
    pub header_timeout: Duration,
    /// How long a persistent connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a response may take to be taken by the peer.
    pub send_timeout: Duration,
    /// The most connections served at once; more are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_uri: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// A response: status, header fields (the server adds `Date`,
/// `Content-Length` and `Connection`), and a body.
#[derive(Debug)]
pub struct Response<B> {
    /// The status code.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(&'static str, String)>,
    /// The body; a `HEAD` request, a 304 and a 204 get only its length.
    pub body: B,
}

impl<B> Response<B> {
    /// A response with no header fields yet.
    pub fn new(status: u16, body: B) -> Response<B> {
        Response { status, headers: Vec::new(), body }
    }

    /// Adds a header field.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response<B> {
        self.headers.push((name, value.into()));
        self
    }
}

/// A response body of known length.
pub trait Body {
    /// Its length in bytes.
    fn len(&self) -> u64;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body, when it is in memory: the server then sends a
    /// small one in the same segment as the head.
    fn bytes(&self) -> Option<&[u8]>;

    /// Writes the body to `flow`.
    async fn write_to<F: Flow>(&mut self, flow: &mut F) -> Result<(), flow::Error>;
}

impl Body for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn bytes(&self) -> Option<&[u8]> {
        Some(self)
    }

    async fn write_to<F: Flow>(&mut self, flow: &mut F) -> Result<(), flow::Error> {
        flow.write_all(self).await
    }
}

/// What answers requests.
pub trait Handler {
    /// The body of its responses.
    type Body: Body;

    /// The response to `request`.
    async fn handle(&self, request: &Request) -> Response<Self::Body>;
}

/// The reason phrase of a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Counters of a server, for its operator.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub open: Cell<usize>,
    /// Connections accepted.
    pub accepted: Cell<u64>,
    /// Connections closed at once because [`Limits::max_connections`] were open.
    pub refused: Cell<u64>,
    /// Responses sent.
    pub responses: Cell<u64>,
    /// Requests refused for their form (4xx and 5xx from the server itself).
    pub refusals: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Accepts connections on `listener` and serves each in its own task
/// until the listener fails.
pub async fn serve<L, H, W>(listener: L, handler: Rc<H>, limits: Rc<Limits>, clock: Rc<W>, stats: Rc<Stats>) -> stack::Error
where
    L: TcpListener,
    L::Flow: 'static,
    H: Handler + 'static,
    W: WallClock + 'static,
{
    loop {
        let (flow, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => return e,
        };
        bump(&stats.accepted);
        if stats.open.get() >= limits.max_connections {
            bump(&stats.refused);
            log::warn!(target: "http", "{peer}: refused, {} connections open", stats.open.get());
            let _ = flow.close().await;
            continue;
        }
        stats.open.set(stats.open.get() + 1);
        let (handler, limits, clock, stats) = (handler.clone(), limits.clone(), clock.clone(), stats.clone());
        // The task is detached: it ends with its connection.
        drop(spawn(async move {
            serve_connection(flow, peer, &*handler, &limits, &*clock, &stats).await;
            stats.open.set(stats.open.get() - 1);
        }));
    }
}

/// Why reading stopped.
enum Stop {
    /// The peer closed, or went quiet between requests: close quietly.
    Quiet,
    /// Answer with this status, then close.
    Refuse(u16),
}

/// Reads more bytes into `buf` before `deadline`; `Ok(0)` at the end of
/// the stream.
async fn fill<F: Flow>(flow: &mut F, buf: &mut Vec<u8>, deadline: mirage_devices::time::Instant) -> Result<usize, Option<flow::Error>> {
    let len = buf.len();
    if buf.capacity() - len < 2048 {
        buf.reserve(8192);
    }
    buf.resize(buf.capacity(), 0);
    let r = select(flow.read(&mut buf[len..]), sleep_until(deadline)).await;
    let n = match r {
        Either::Left(Ok(n)) => n,
        Either::Left(Err(e)) => {
            buf.truncate(len);
            return Err(Some(e));
        }
        Either::Right(()) => {
            buf.truncate(len);
            return Err(None);
        }
    };
    buf.truncate(len + n);
    Ok(n)
}

/// Serves one connection until it closes, fails, or times out.
pub async fn serve_connection<F: Flow, H: Handler, W: WallClock>(
    mut flow: F,
    peer: SocketAddr,
    handler: &H,
    limits: &Limits,
    clock: &W,
    stats: &Stats,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let stop = loop {
        // The head: nothing at all until the idle deadline is a quiet
        // close; a head begun must be complete by the header deadline.
        let idle_deadline = now() + limits.idle_timeout;
        let mut head_deadline = if buf.is_empty() { None } else { Some(now() + limits.header_timeout) };
        let (mut request, head_len, framing) = loop {
            if !buf.is_empty() {
                match request::parse(&buf, limits, peer) {
                    Ok(Head::Complete { request, len, framing }) => break (request, len, framing),
                    Ok(Head::Partial) => {}
                    Err(r) => return close(flow, Stop::Refuse(r.status()), &mut out, clock, stats, peer).await,
                }
            }
            let deadline = head_deadline.unwrap_or(idle_deadline);
            match fill(&mut flow, &mut buf, deadline).await {
                Ok(0) if buf.iter().all(|b| *b == b'\r' || *b == b'\n') => return close(flow, Stop::Quiet, &mut out, clock, stats, peer).await,
                Ok(0) => return close(flow, Stop::Refuse(400), &mut out, clock, stats, peer).await,
                Ok(_) => {
                    if head_deadline.is_none() {
                        head_deadline = Some(now() + limits.header_timeout);
                    }
                }
                Err(Some(_)) => return close(flow, Stop::Quiet, &mut out, clock, stats, peer).await,
                Err(None) if head_deadline.is_some() => return close(flow, Stop::Refuse(408), &mut out, clock, stats, peer).await,
                Err(None) => return close(flow, Stop::Quiet, &mut out, clock, stats, peer).await,
            }
        };
        buf.drain(..head_len);

        // The body, by its framing, before the body deadline.
        let body_deadline = now() + limits.header_timeout;
        let expects_body = framing != Framing::Length(0);
        if expects_body
            && request.version >= 1
            && request.header_list("expect").any(|e| e.eq_ignore_ascii_case("100-continue"))
            && write_timed(&mut flow, b"HTTP/1.1 100 Continue\r\n\r\n", limits.send_timeout).await.is_err()
        {
            break Stop::Quiet;
        }
        match read_body(&mut flow, &mut buf, framing, limits, body_deadline).await {
            Ok(body) => request.body = body,
            Err(stop) => break stop,
        }

        let keep = request.keep_alive();
        let mut response = handler.handle(&request).await;
        let head_only = request.method == "HEAD";
        if write_response(&mut flow, &mut out, &request, &mut response, keep, head_only, clock, limits).await.is_err() {
            break Stop::Quiet;
        }
        bump(&stats.responses);
        log::info!(target: "http", "{peer} \"{} {} HTTP/1.{}\" {} {}", request.method, request.target, request.version, response.status, response.body.len());
        if !keep {
            break Stop::Quiet;
        }
    };
    close(flow, stop, &mut out, clock, stats, peer).await
}

/// Reads the body framed by `framing`; leftover bytes (a pipelined next
/// request) stay in `buf`.
async fn read_body<F: Flow>(
    flow: &mut F,
    buf: &mut Vec<u8>,
    framing: Framing,
    limits: &Limits,
    deadline: mirage_devices::time::Instant,
) -> Result<Vec<u8>, Stop> {
    let timed_out = |e: Option<flow::Error>| if e.is_none() { Stop::Refuse(408) } else { Stop::Quiet };
    match framing {
        Framing::Length(n) => {
            let n = n as usize; // at most max_body, checked by the parser
            while buf.len() < n {
                match fill(flow, buf, deadline).await {
                    Ok(0) => return Err(Stop::Quiet),
                    Ok(_) => {}
                    Err(e) => return Err(timed_out(e)),
                }
            }
            let rest = buf.split_off(n);
            Ok(core::mem::replace(buf, rest))
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            loop {
                match request::chunk(buf) {
                    Ok(Chunk::Data { start, end, len, last }) => {
                        if body.len() as u64 + (end - start) as u64 > limits.max_body {
                            return Err(Stop::Refuse(413));
                        }
                        body.extend_from_slice(&buf[start..end]);
                        buf.drain(..len);
                        if last {
                            return Ok(body);
                        }
                    }
                    Ok(Chunk::Partial) => {
                        // A chunk larger than the whole body may be is
                        // refused before it arrives.
                        if buf.len() as u64 > limits.max_body + 1024 {
                            return Err(Stop::Refuse(413));
                        }
                        match fill(flow, buf, deadline).await {
                            Ok(0) => return Err(Stop::Quiet),
                            Ok(_) => {}
                            Err(e) => return Err(timed_out(e)),
                        }
                    }
                    Err(Refusal::TooLarge) => return Err(Stop::Refuse(413)),
                    Err(r) => return Err(Stop::Refuse(r.status())),
                }
            }
        }
    }
}

async fn write_timed<F: Flow>(flow: &mut F, data: &[u8], limit: Duration) -> Result<(), ()> {
    match mirage_runtime::time::timeout(limit, flow.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Bodies up to this size go out with the head in one write.
const COALESCE: u64 = 32 * 1024;

#[allow(clippy::too_many_arguments)]
async fn write_response<F: Flow, B: Body, W: WallClock>(
    flow: &mut F,
    out: &mut Vec<u8>,
    request: &Request,
    response: &mut Response<B>,
    keep: bool,
    head_only: bool,
    clock: &W,
    limits: &Limits,
) -> Result<(), ()> {
    out.clear();
    let status = response.status;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\nDate: {}\r\n", reason(status), crate::format_http_date(clock.now().as_secs()));
    for (name, value) in &response.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let no_body = status == 304 || status == 204 || (100..200).contains(&status);
    if !no_body {
        let _ = write!(head, "Content-Length: {}\r\n", response.body.len());
    }
    if !keep {
        head.push_str("Connection: close\r\n");
    } else if request.version == 0 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if no_body || head_only {
        return write_timed(flow, out, limits.send_timeout).await;
    }
    if let Some(bytes) = response.body.bytes().filter(|b| b.len() as u64 <= COALESCE) {
        out.extend_from_slice(bytes);
        return write_timed(flow, out, limits.send_timeout).await;
    }
    write_timed(flow, out, limits.send_timeout).await?;
    match mirage_runtime::time::timeout(limits.send_timeout, response.body.write_to(flow)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Ends a connection: a refusal is answered first, and the connection
/// lingers, reading, so that the peer reads the answer before the close
/// (closing with unread bytes would reset the connection and lose it).
async fn close<F: Flow, W: WallClock>(mut flow: F, stop: Stop, out: &mut Vec<u8>, clock: &W, stats: &Stats, peer: SocketAddr) {
    if let Stop::Refuse(status) = stop {
        bump(&stats.refusals);
        let text = reason(status);
        out.clear();
        let _ = write!(
            Adapter(out),
            "HTTP/1.1 {status} {text}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{status} {text}\n",
            crate::format_http_date(clock.now().as_secs()),
            text.len() + 5
        );
        log::info!(target: "http", "{peer} refused: {status} {text}");
        if write_timed(&mut flow, out, Duration::from_secs(5)).await.is_ok() && flow.shutdown().await.is_ok() {
            let deadline = now() + Duration::from_secs(2);
            let mut sink = alloc::vec![0u8; 4096];
            let mut budget = 1usize << 20;
            while budget > 0 {
                match select(flow.read(&mut sink), sleep_until(deadline)).await {
                    Either::Left(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
                    _ => break,
                }
            }
        }
    }
    let _ = flow.close().await;
}

/// `fmt::Write` into a byte vector.
struct Adapter<'a>(&'a mut Vec<u8>);

impl core::fmt::Write for Adapter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
