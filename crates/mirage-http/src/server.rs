//! The connection loop: read a head, read its body, ask the handler,
//! write the response; again while the connection persists.
//!
//! Memory: a connection's buffers grow only as bytes arrive, never past
//! what the request's framing needs (a head up to
//! [`Limits::max_header_bytes`], a body up to its length), by fallible
//! allocations within the memory budget (see `ledger.rs`). An idle
//! connection keeps a small read buffer. When the budget is reached, a new
//! connection is answered 503 (once its head arrives) and closed, a request
//! that no longer fits is answered 503 or 413 and closed, and the largest
//! holders are shed first to make room for the others.
//!
//! Connections: at most [`Limits::max_connections`] open, and at most
//! [`Limits::max_connections_per_host`] from one host (an IPv4 address,
//! an IPv6 /64); more are closed as they are accepted.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::fmt::Write as _;
use core::net::SocketAddr;
use core::time::Duration;

use mirage_devices::flow::{self, Flow};
use mirage_devices::stack::{self, TcpListener};
use mirage_devices::time::WallClock;
use mirage_runtime::memory;
use mirage_runtime::time::{now, sleep_until};
use mirage_runtime::{Either, select, spawn};

use crate::hosts::{Hosts, host_id};
use crate::ledger::{Holder, Ledger};
use crate::request::{self, ChunkLine, Framing, Head, Request};

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
    /// How long a head, or a body, may take to arrive once begun (408);
    /// and how long a new connection may take to send its first head
    /// whole, from its start (a TLS handshake included): nothing sent in
    /// that time is a quiet close, a part of a head is 408.
    pub header_timeout: Duration,
    /// How long a persistent connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a response may take to be taken by the peer; past it,
    /// the connection is reset.
    pub send_timeout: Duration,
    /// The most connections served at once; more are closed at once.
    pub max_connections: usize,
    /// The most connections one host (an IPv4 address, an IPv6 /64) may
    /// have open at once, so that one host cannot take them all from the
    /// others; more are closed at once. 0: no limit (nor is there one,
    /// with a warning, when the count of each host's connections cannot be
    /// allocated as `serve` starts).
    pub max_connections_per_host: usize,
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
            max_connections_per_host: 512,
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

    /// Bytes of heap it holds while it is written, when it is not in
    /// memory whole: the buffer it is read into piece by piece. The
    /// server counts them as held for the peer, so that a download the
    /// peer stopped reading can be shed when memory is short.
    fn buffer(&self) -> usize {
        0
    }

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
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
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
    /// Connections closed at once because their host had
    /// [`Limits::max_connections_per_host`] open (or, past 2^20 hosts
    /// with connections open at once, because no more hosts are counted).
    pub refused_host: Cell<u64>,
    /// Responses sent.
    pub responses: Cell<u64>,
    /// Requests refused for their form (4xx and 5xx from the server itself).
    pub refusals: Cell<u64>,
    /// Connections refused for want of memory: new ones while the memory
    /// budget is reached (503 once their head arrives, or closed), and
    /// requests whose head or body no longer fit in it (503 or 413); each
    /// then closed.
    pub refused_memory: Cell<u64>,
    /// Connections shed to give memory back to others, largest holders
    /// first: 503 between requests, 413 in the middle of a body, or closed
    /// without an answer in the middle of a response.
    pub shed: Cell<u64>,
    /// Bytes the connections' buffers hold now: heads and bodies read,
    /// responses assembled in memory.
    pub held: Cell<usize>,
    /// The most they held at once.
    pub peak_held: Cell<usize>,
    /// Connections the listener could not take (out of descriptors or
    /// memory for them), each waited out before the next accept.
    pub accept_failed: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// What a new connection needs before it can be served: its task, its
/// first read buffer, the head it parses. Without room for it in the
/// memory budget (after shedding), the connection is refused.
const CONNECTION_COST: usize = 16 * 1024;

/// The wait after an accept that failed for want of room, doubling up to
/// the most while they go on failing.
const ACCEPT_BACKOFF_LEAST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MOST: Duration = Duration::from_secs(1);

/// The read buffer of a new or idle connection; it grows as a request
/// needs, and shrinks back to this when the request is done.
const INITIAL: usize = 2048;

/// A read buffer with less room than this grows before reading.
const MIN_READ: usize = 1024;

/// The most bytes one read may take: the spare room is zeroed before each
/// read, and a large body must not cost that for every segment.
const MAX_READ: usize = 16 * 1024;

/// The read buffer of a chunked body: chunk data moves from it to the
/// body as it arrives, so it holds at most a size line, the trailers, and
/// the start of the next request.
const CHUNK_WINDOW: usize = 16 * 1024;

/// The least a chunked body is given room for at first.
const MIN_BODY: usize = 256;

/// How long a connection refused for want of memory may take to send its
/// head before it is closed without an answer.
const REFUSE_WAIT: Duration = Duration::from_secs(5);

/// Where the head in `buf` ends (after its blank line), if it is all
/// there: a line feed followed by an empty line, with or without its
/// carriage return, as the parser takes them; blank lines before the
/// request line (which the parser skips) are not its end.
#[cfg(test)]
fn head_end(buf: &[u8]) -> Option<usize> {
    HeadScan::default().end(buf)
}

/// [`head_end`] over a buffer that grows between calls, looking at each
/// byte once: a head sent a byte a segment would otherwise be scanned
/// whole at every byte, its cost the square of its length.
#[derive(Debug, Default)]
struct HeadScan {
    /// Where the request line starts, once found.
    start: Option<usize>,
    /// Where the next look begins.
    scanned: usize,
}

impl HeadScan {
    fn end(&mut self, buf: &[u8]) -> Option<usize> {
        let start = match self.start {
            Some(s) => s,
            None => {
                let Some(p) = buf[self.scanned.min(buf.len())..].iter().position(|&b| b != b'\r' && b != b'\n') else {
                    self.scanned = buf.len();
                    return None;
                };
                let s = self.scanned + p;
                self.start = Some(s);
                s
            }
        };
        let from = self.scanned.max(start);
        let end = (from..buf.len()).find_map(|i| match (buf[i], buf.get(i + 1), buf.get(i + 2)) {
            (b'\n', Some(b'\n'), _) => Some(i + 2),
            (b'\n', Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        });
        // The last two bytes are looked at again: the blank line may end
        // in what comes next.
        self.scanned = buf.len().saturating_sub(2).max(start);
        end
    }
}

/// How much a partial head must grow without ending a line before it is
/// parsed again (for a request line or a field that is already too long):
/// a parse costs the whole head, and a head sent a byte at a time would
/// cost its square; a line ended (at most `max_headers` of them) is parsed
/// at once.
const REPARSE_AFTER: usize = 1024;

/// What a parsed header field costs beyond its bytes: a `String` and a
/// `Vec` of 24 bytes each in the request, and the allocator's rounding of
/// each of them.
const FIELD_COST: usize = 80;

/// Accepts connections on `listener` and serves each in its own task
/// until the listener fails.
pub async fn serve<L, H, W>(
    listener: L,
    handler: Rc<H>,
    limits: Rc<Limits>,
    clock: Rc<W>,
    stats: Rc<Stats>,
) -> stack::Error
where
    L: TcpListener,
    L::Flow: 'static,
    H: Handler + 'static,
    W: WallClock + 'static,
{
    let ledger = Rc::new(Ledger::default());
    // The stack asks it for room before it refuses a new connection.
    let _reclaimer = memory::add_reclaimer(ledger.clone());
    let mut per_host = limits.max_connections_per_host;
    // Keyed by the clock at start, which differs from run to run: a peer
    // can guess it only roughly, and a guess that made probes meet would
    // cost each at most as many slots as connections are open.
    let key = now().as_nanos();
    let hosts = Hosts::new(if per_host > 0 { limits.max_connections } else { 0 }, key).unwrap_or_else(|| {
        // Serving without the share beats not serving: the memory budget
        // still bounds what connections hold.
        log::warn!(
            target: "http",
            "no memory to count each host's connections: serving without a share for each host (give a smaller max_connections)"
        );
        per_host = 0;
        Hosts::none()
    });
    let hosts = Rc::new(RefCell::new(hosts));
    // The host whose connection was last refused for its share: a run of
    // them is logged once.
    let mut refusing_host = None;
    // When the last such line was written, in nanoseconds.
    let mut warned: Option<u64> = None;
    let mut backoff = ACCEPT_BACKOFF_LEAST;
    loop {
        let (flow, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = ACCEPT_BACKOFF_LEAST;
                x
            }
            // Out of descriptors, sockets or memory for one connection
            // (a host that opens more than the process may hold): the
            // listener is still there, and connections that end give the
            // room back. Waited out, the wait doubling, as Go's server
            // does, so that a listener still ready is not spun on.
            Err(e @ (stack::Error::NoSpace | stack::Error::TimedOut | stack::Error::Refused)) => {
                bump(&stats.accept_failed);
                log::warn!(target: "http", "accept: {e}; trying again in {} ms", backoff.as_millis());
                mirage_runtime::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MOST);
                continue;
            }
            Err(e) => return e,
        };
        bump(&stats.accepted);
        if stats.open.get() >= limits.max_connections {
            bump(&stats.refused);
            log::warn!(target: "http", "{peer}: refused, {} connections open", stats.open.get());
            let _ = flow.close().await;
            continue;
        }
        let id = host_id(peer.ip());
        if per_host > 0 {
            let admitted = hosts.borrow_mut().admit(id, per_host);
            if let Err(at_share) = admitted {
                bump(&stats.refused_host);
                // A line for each new run, at most one a second: hosts
                // refused in turn must not flood the console.
                let t = now().as_nanos();
                if refusing_host != Some(id) && warned.is_none_or(|w| t.saturating_sub(w) >= 1_000_000_000) {
                    warned = Some(t);
                    let n = stats.refused_host.get();
                    if at_share {
                        log::warn!(target: "http", "{}: refused, {per_host} connections open from it ({n} so refused)", peer.ip());
                    } else {
                        log::warn!(target: "http", "{}: refused, as many hosts have connections open as are counted", peer.ip());
                    }
                }
                refusing_host = Some(id);
                let _ = flow.close().await;
                continue;
            }
        }
        refusing_host = None;
        stats.open.set(stats.open.get() + 1);
        let fits = memory::may_hold(CONNECTION_COST) || ledger.relieve(CONNECTION_COST).await;
        if !fits {
            bump(&stats.refused_memory);
            log::warn!(
                target: "http",
                "{peer} refused: 503 Service Unavailable, memory budget reached ({} of {} bytes in use)",
                memory::heap_in_use().unwrap_or(0),
                memory::budget().unwrap_or(0)
            );
        }
        let (limits, clock, stats, hosts) = (limits.clone(), clock.clone(), stats.clone(), hosts.clone());
        // Each task is detached: it ends with its connection. A refused
        // connection's task is a future of its own, under a third of the
        // size of one that serves (880 bytes against 2,928 over the tests'
        // flows), where one future for both was as large as the larger:
        // refusals come when memory is short.
        if fits {
            let (handler, ledger) = (handler.clone(), ledger.clone());
            let task = async move {
                connection(flow, peer, &*handler, &limits, &*clock, &stats, &ledger).await;
                stats.open.set(stats.open.get() - 1);
                hosts.borrow_mut().sub(id);
            };
            drop(spawn(task));
        } else {
            let task = async move {
                refuse_for_memory(flow, &limits, &*clock).await;
                stats.open.set(stats.open.get() - 1);
                hosts.borrow_mut().sub(id);
            };
            drop(spawn(task));
        }
    }
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The peer closed, or went quiet between requests: close quietly.
    Quiet,
    /// The request is refused for its form or its timing: answer with
    /// this status, then close.
    Refuse(u16),
    /// Shed to give memory back: answer with this status, then close; in
    /// the middle of a response (no status), reset.
    Shed { status: Option<u16>, held: usize },
    /// The request no longer fits in the memory budget: answer with this
    /// status, then close.
    NoMemory(u16),
    /// The response was cut short (its write failed or timed out): reset.
    Cut,
}

/// What a read brought.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    /// This many bytes; 0 at the end of the stream.
    Read(usize),
    /// The flow failed.
    Failed,
    /// Nothing came before the deadline.
    TimedOut,
    /// The connection was shed meanwhile.
    Shed,
    /// No room to read into within the memory budget.
    Short,
    /// The buffer is at the limit given: the caller's bug, answered 400.
    Full,
}

impl Fill {
    /// How a request ends when a read brought nothing: `status` (413 in a
    /// body, 503 otherwise) if the connection was shed or memory is short.
    fn stop(self, me: &Holder<'_>, status: u16) -> Stop {
        match self {
            Fill::Read(_) | Fill::Failed => Stop::Quiet,
            Fill::TimedOut => Stop::Refuse(408),
            Fill::Shed => Stop::Shed { status: Some(status), held: me.held() },
            Fill::Short if me.is_shed() => Stop::Shed { status: Some(status), held: me.held() },
            Fill::Short => Stop::NoMemory(status),
            Fill::Full => Stop::Refuse(400),
        }
    }
}

/// Reads more bytes into `buf` before `deadline`, first growing it
/// towards `limit` bytes if it has little room left.
async fn fill<F: Flow>(
    flow: &mut F,
    buf: &mut Vec<u8>,
    limit: usize,
    deadline: mirage_devices::time::Instant,
    me: &Holder<'_>,
) -> Fill {
    if me.is_shed() {
        return Fill::Shed;
    }
    let len = buf.len();
    let spare = buf.capacity() - len;
    if spare < MIN_READ.min(limit.saturating_sub(len)) {
        // Doubling, but never past what the request needs.
        let cap = limit.min((buf.capacity() * 2).max(len + MIN_READ).max(INITIAL));
        if !me.grow(buf, cap).await {
            return if me.is_shed() { Fill::Shed } else { Fill::Short };
        }
    }
    if buf.capacity() == len {
        return Fill::Full;
    }
    let end = buf.capacity().min(len + MAX_READ);
    buf.resize(end, 0);
    let read = select(select(flow.read(&mut buf[len..]), sleep_until(deadline)), me.shed()).await;
    let got = match read {
        Either::Left(Either::Left(Ok(n))) => Fill::Read(n),
        Either::Left(Either::Left(Err(_))) => Fill::Failed,
        Either::Left(Either::Right(())) => Fill::TimedOut,
        Either::Right(()) => Fill::Shed,
    };
    let n = if let Fill::Read(n) = got { n } else { 0 };
    buf.truncate(len + n);
    got
}

/// Serves one connection until it closes, fails, or times out. Its
/// buffers are held within the memory budget; this connection is the only
/// one it may shed.
pub async fn serve_connection<F: Flow, H: Handler, W: WallClock>(
    flow: F,
    peer: SocketAddr,
    handler: &H,
    limits: &Limits,
    clock: &W,
    stats: &Stats,
) {
    connection(flow, peer, handler, limits, clock, stats, &Ledger::default()).await
}

/// Serves one connection, its buffers accounted in `ledger`.
async fn connection<F: Flow, H: Handler, W: WallClock>(
    mut flow: F,
    peer: SocketAddr,
    handler: &H,
    limits: &Limits,
    clock: &W,
    stats: &Stats,
    ledger: &Ledger,
) {
    let me = ledger.open(stats);
    // What the flow buffers itself (TLS records) counts with the rest.
    flow.meter(me.meter());
    let stop = converse(&mut flow, peer, handler, limits, clock, stats, &me).await;
    // The buffers are gone with `converse`; the answer needs none of them.
    me.set(0);
    let flow_held = me.meter().get();
    drop(me);
    let status = match stop {
        // Shed for what its flow holds (a TLS record half received): an
        // answer would keep that until it was written and the flow closed,
        // seconds for a peer that does not read (and a handshake not
        // finished cannot carry one), while the one that asked for the
        // memory sheds others in vain meanwhile. A reset frees it now.
        Stop::Shed { held, .. } if flow_held >= crate::ledger::MIN_SHED => {
            bump(&stats.shed);
            log::warn!(target: "http", "{peer} shed: reset, giving back {} bytes: memory budget reached", held + flow_held);
            flow.abort().await;
            return;
        }
        Stop::Quiet => None,
        Stop::Refuse(status) => {
            bump(&stats.refusals);
            log::info!(target: "http", "{peer} refused: {status} {}", reason(status));
            Some(status)
        }
        Stop::Shed { status: Some(s), held } => {
            bump(&stats.shed);
            log::warn!(target: "http", "{peer} shed: {s} {}, giving back {held} bytes: memory budget reached", reason(s));
            Some(s)
        }
        // A response cut short can no longer be delivered whole: a reset
        // says so, and gives back at once what the stack still holds of it
        // for a peer that may never read it (one that stopped reading, or
        // was shed for it), where a close would leave it to drain.
        Stop::Shed { status: None, held } => {
            bump(&stats.shed);
            log::warn!(target: "http", "{peer} shed: reset, giving back {held} bytes: memory budget reached");
            flow.abort().await;
            return;
        }
        Stop::Cut => {
            log::info!(target: "http", "{peer} reset: the response was cut short (its write failed or timed out)");
            flow.abort().await;
            return;
        }
        Stop::NoMemory(status) => {
            bump(&stats.refused_memory);
            log::warn!(target: "http", "{peer} refused: {status} {}, memory budget reached", reason(status));
            Some(status)
        }
    };
    close(flow, status, clock).await
}

/// The requests of one connection, until it is to close, and why.
async fn converse<F: Flow, H: Handler, W: WallClock>(
    flow: &mut F,
    peer: SocketAddr,
    handler: &H,
    limits: &Limits,
    clock: &W,
    stats: &Stats,
    me: &Holder<'_>,
) -> Stop {
    let mut buf: Vec<u8> = Vec::new();
    // A head may be one byte over the limit: that byte tells it is too large.
    let head_limit = limits.max_header_bytes.saturating_add(1);
    // A new connection's first head must be whole within the header
    // timeout of the connection's start, as with nginx's
    // `client_header_timeout`: a peer that sends its first byte just
    // before a deadline, or spends the wait in a TLS handshake (whose
    // bytes never reach this loop), gets no second wait after it.
    let mut first_by = Some(now() + limits.header_timeout);
    loop {
        // The head: nothing at all until the idle deadline is a quiet
        // close; a head begun must be complete by the header deadline.
        let idle_deadline = first_by.unwrap_or_else(|| now() + limits.idle_timeout);
        let head_by = |first_by: Option<_>| first_by.unwrap_or_else(|| now() + limits.header_timeout);
        let mut head_deadline = if buf.is_empty() { None } else { Some(head_by(first_by)) };
        // What the parsed request will cost, claimed before it is made.
        let mut head_cost = 0;
        let mut scan = HeadScan::default();
        let mut parsed_at = 0;
        let (mut request, head_len, framing) = loop {
            if !buf.is_empty() {
                // The parsed request copies the head's fields out of the
                // buffer: as much again as the head, and an allocation or
                // two a field. Held as long as the request, by as many
                // connections as end their heads at once, it is claimed
                // before the copy, as a buffer's growth is.
                let end = scan.end(&buf);
                if head_cost == 0
                    && let Some(end) = end
                {
                    let lines = buf[..end].iter().filter(|&&b| b == b'\n').count();
                    let cost = end + lines.saturating_add(2).saturating_mul(FIELD_COST);
                    if !me.claim(cost).await {
                        return if me.is_shed() {
                            Stop::Shed { status: Some(503), held: me.held() }
                        } else {
                            Stop::NoMemory(503)
                        };
                    }
                    head_cost = cost;
                }
                // Parsed again when it may say more: its first bytes (a TLS
                // hello on this port is refused at once), each line ended,
                // every KiB, and at the limit (what is too large is
                // refused as such).
                let news = &buf[parsed_at.min(buf.len())..];
                if end.is_some()
                    || parsed_at == 0
                    || news.contains(&b'\n')
                    || buf.len() >= parsed_at + REPARSE_AFTER
                    || buf.len() >= head_limit
                {
                    parsed_at = buf.len();
                    match request::parse(&buf, limits, peer) {
                        Ok(Head::Complete { request, len, framing }) => break (request, len, framing),
                        Ok(Head::Partial) => {}
                        Err(r) => return Stop::Refuse(r.status()),
                    }
                }
            }
            let deadline = head_deadline.unwrap_or(idle_deadline);
            match fill(flow, &mut buf, head_limit, deadline, me).await {
                Fill::Read(0) if buf.iter().all(|b| *b == b'\r' || *b == b'\n') => return Stop::Quiet,
                Fill::Read(0) => return Stop::Refuse(400),
                Fill::Read(_) => {
                    if head_deadline.is_none() {
                        head_deadline = Some(head_by(first_by));
                    }
                }
                Fill::TimedOut if head_deadline.is_none() => return Stop::Quiet,
                other => return other.stop(me, 503),
            }
        };
        request.received = clock.now().as_secs();
        buf.drain(..head_len);
        first_by = None;

        // The body, by its framing, before the body deadline.
        let body_deadline = now() + limits.header_timeout;
        let expects_body = framing != Framing::Length(0);
        if expects_body
            && request.version >= 1
            && request.header_list("expect").any(|e| e.eq_ignore_ascii_case("100-continue"))
            && write_timed(flow, b"HTTP/1.1 100 Continue\r\n\r\n", limits.send_timeout, me).await.is_err()
        {
            return Stop::Quiet;
        }
        match read_body(flow, &mut buf, framing, body_deadline, limits, me).await {
            Ok(body) => request.body = body,
            Err(stop) => return stop,
        }
        me.set(buf.capacity() + request.body.capacity() + head_cost);

        let keep = request.keep_alive();
        let mut response = handler.handle(&request).await;
        let head_only = request.method == "HEAD";
        match write_response(flow, &request, &mut response, keep, head_only, clock, limits, me).await {
            Ok(()) => {}
            Err(Unwritten::NoRoom) if me.is_shed() => return Stop::Shed { status: Some(503), held: me.held() },
            Err(Unwritten::NoRoom) => return Stop::NoMemory(503),
            Err(Unwritten::Failed) if me.is_shed() => return Stop::Shed { status: None, held: me.held() },
            Err(Unwritten::Failed) => return Stop::Cut,
        }
        bump(&stats.responses);
        log::info!(target: "http", "{peer} \"{} {} HTTP/1.{}\" {} {}", request.method, request.target, request.version, response.status, response.body.len());
        drop(response);
        drop(request);
        // Between requests, give back what this one made the buffer grow
        // to, but keep a small one: an idle connection must be able to
        // read its next request even when the budget is reached.
        if buf.capacity() > INITIAL.max(buf.len()) {
            buf.shrink_to(INITIAL.max(buf.len()));
        }
        me.set(buf.capacity());
        let _ = me.grow(&mut buf, INITIAL).await;
        if !keep {
            return Stop::Quiet;
        }
    }
}

/// Reads the body framed by `framing`; leftover bytes (a pipelined next
/// request) stay in `buf`.
async fn read_body<F: Flow>(
    flow: &mut F,
    buf: &mut Vec<u8>,
    framing: Framing,
    deadline: mirage_devices::time::Instant,
    limits: &Limits,
    me: &Holder<'_>,
) -> Result<Vec<u8>, Stop> {
    // Reads more into `buf`, at most up to `limit` bytes; what ends the
    // request if nothing came.
    macro_rules! more {
        ($limit:expr) => {
            match fill(flow, buf, $limit, deadline, me).await {
                Fill::Read(n) if n > 0 => {}
                other => return Err(other.stop(me, 413)),
            }
        };
    }
    match framing {
        Framing::Length(n) => {
            // At most max_body, checked by the parser.
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            while buf.len() < n {
                more!(n);
            }
            let rest = buf.split_off(n);
            Ok(core::mem::replace(buf, rest))
        }
        Framing::Chunked => {
            let mut body: Vec<u8> = Vec::new();
            // Where the unread bytes of `buf` start. What was read is cut
            // off once, before `buf` is filled again, not chunk by chunk:
            // cutting each chunk's bytes off at once shifted the rest of
            // the buffer every time, and a body of 1-byte chunks cost
            // thousands of times its bytes.
            let mut pos = 0;
            macro_rules! refill {
                () => {{
                    buf.drain(..pos);
                    pos = 0;
                    more!(CHUNK_WINDOW);
                }};
            }
            loop {
                let allowance = limits.max_body.saturating_sub(body.len() as u64);
                let size = loop {
                    match request::chunk_size(&buf[pos..], allowance) {
                        Ok(ChunkLine::Size { size, len }) => {
                            pos += len;
                            break size;
                        }
                        Ok(ChunkLine::Partial) => refill!(),
                        Err(r) => return Err(Stop::Refuse(r.status())),
                    }
                };
                if size == 0 {
                    loop {
                        match request::trailers(&buf[pos..]) {
                            Ok(Some(len)) => {
                                buf.drain(..pos + len);
                                return Ok(body);
                            }
                            Ok(None) => refill!(),
                            Err(r) => return Err(Stop::Refuse(r.status())),
                        }
                    }
                }
                // The data moves to the body as it arrives. The body grows
                // by doubling what arrived (never to more than twice the
                // bytes received, nor past the largest body), not by what
                // each chunk declares: chunks of a byte each grew it a
                // byte at a time, a reallocation a chunk.
                let mut left = usize::try_from(size).unwrap_or(usize::MAX);
                while left > 0 {
                    if pos == buf.len() {
                        refill!();
                    }
                    let take = left.min(buf.len() - pos);
                    if body.capacity() - body.len() < take {
                        let most = usize::try_from(limits.max_body).unwrap_or(usize::MAX);
                        let cap = (body.capacity() * 2).max(MIN_BODY).min(most).max(body.len() + take);
                        if !me.grow(&mut body, cap).await {
                            return Err(Fill::Short.stop(me, 413));
                        }
                    }
                    body.extend_from_slice(&buf[pos..pos + take]);
                    pos += take;
                    left -= take;
                }
                while buf.len() - pos < 2 {
                    refill!();
                }
                if buf[pos..pos + 2] != *b"\r\n" {
                    return Err(Stop::Refuse(400));
                }
                pos += 2;
            }
        }
    }
}

/// Writes `data` within `limit`; fails too if the connection is shed
/// meanwhile.
async fn write_timed<F: Flow>(flow: &mut F, data: &[u8], limit: Duration, me: &Holder<'_>) -> Result<(), ()> {
    match select(mirage_runtime::time::timeout(limit, flow.write_all(data)), me.shed()).await {
        Either::Left(Ok(Ok(()))) => Ok(()),
        _ => Err(()),
    }
}

/// Bodies up to this size go out with the head in one write.
const COALESCE: u64 = 32 * 1024;

#[allow(clippy::too_many_arguments)]
async fn write_response<F: Flow, B: Body, W: WallClock>(
    flow: &mut F,
    request: &Request,
    response: &mut Response<B>,
    keep: bool,
    head_only: bool,
    clock: &W,
    limits: &Limits,
    me: &Holder<'_>,
) -> Result<(), Unwritten> {
    let status = response.status;
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nDate: {}\r\n",
        reason(status),
        crate::format_http_date(clock.now().as_secs())
    );
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
    // A response in memory, or the buffer a streamed one is read into, is
    // held for the peer while it takes it: a reader slow enough to hold
    // the most may be shed.
    let held = me.held();
    let in_memory = response.body.bytes().map_or(0, <[u8]>::len);
    // A streamed body's buffer is claimed before the head goes, shedding
    // larger holders if need be: without room for it, the response could
    // not be sent whole once begun. (A body in memory has none.)
    let buffer = if no_body || head_only { 0 } else { response.body.buffer() };
    if buffer > 0 && !me.claim(buffer).await {
        return Err(Unwritten::NoRoom);
    }
    me.set(held + head.len() + in_memory + buffer);
    let sent = if no_body || head_only {
        write_timed(flow, head.as_bytes(), limits.send_timeout, me).await
    } else {
        send_with_body(flow, head.into_bytes(), &mut response.body, limits, me).await
    }
    .map_err(|()| Unwritten::Failed);
    // On failure the account keeps what the response held: a connection
    // shed meanwhile says what it gave back.
    if sent.is_ok() {
        me.set(held);
    }
    sent
}

/// Why a response was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unwritten {
    /// Nothing was sent: no room for the buffer of its streamed body.
    NoRoom,
    /// The flow failed, timed out, or the connection was shed meanwhile.
    Failed,
}

/// Sends `head` and the body: a small body in memory in the same write,
/// if there is room to join them.
async fn send_with_body<F: Flow, B: Body>(
    flow: &mut F,
    mut head: Vec<u8>,
    body: &mut B,
    limits: &Limits,
    me: &Holder<'_>,
) -> Result<(), ()> {
    if let Some(bytes) = body.bytes().filter(|b| b.len() as u64 <= COALESCE)
        && memory::may_hold(bytes.len())
        && head.try_reserve_exact(bytes.len()).is_ok()
    {
        head.extend_from_slice(bytes);
        return write_timed(flow, &head, limits.send_timeout, me).await;
    }
    write_timed(flow, &head, limits.send_timeout, me).await?;
    drop(head);
    // The time limit is on each write, not the whole body: a download
    // the peer keeps taking may last as long as it needs; one it stops
    // taking ends after `send_timeout`.
    let mut noted = Noted { flow, me, timeout: limits.send_timeout };
    match select(body.write_to(&mut noted), me.shed()).await {
        Either::Left(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// A flow whose writes are noted in its connection's account as progress:
/// of holders of a size, the one that has gone longest without any is
/// shed first, so a download the peer reads is kept over one it stopped
/// reading. A write that takes nothing for `timeout` fails.
struct Noted<'a, 'b, F> {
    flow: &'a mut F,
    me: &'a Holder<'b>,
    timeout: Duration,
}

impl<F: Flow> Flow for Noted<'_, '_, F> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        self.flow.read(buf).await
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        let n = mirage_runtime::time::timeout(self.timeout, self.flow.write(data))
            .await
            .map_err(|_| flow::Error::TimedOut)??;
        self.me.progressed();
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        self.flow.flush().await
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.flow.shutdown().await
    }

    /// Shuts the borrowed flow down for writing: its owner closes it.
    async fn close(self) -> Result<(), flow::Error> {
        self.flow.shutdown().await
    }
}

/// Serves a connection refused for want of memory, holding no buffer:
/// reads (and drops) its head, answers 503, and closes; closes at once if
/// the head does not come in time.
async fn refuse_for_memory<F: Flow, W: WallClock>(mut flow: F, limits: &Limits, clock: &W) {
    let deadline = now() + limits.header_timeout.min(REFUSE_WAIT);
    let mut scratch = [0u8; 128];
    let mut seen = 0usize;
    // Line ends in a row, carriage returns aside: two end the head.
    let mut line_ends = 0;
    let answer = 'read: loop {
        match select(flow.read(&mut scratch), sleep_until(deadline)).await {
            Either::Left(Ok(n)) if n > 0 => {
                for &b in &scratch[..n] {
                    match b {
                        b'\n' => line_ends += 1,
                        b'\r' => {}
                        _ => line_ends = 0,
                    }
                    if line_ends == 2 {
                        break 'read true;
                    }
                }
                seen += n;
                if seen > limits.max_header_bytes {
                    break true;
                }
            }
            _ => break false,
        }
    };
    close(flow, answer.then_some(503), clock).await
}

/// Ends a connection: a status is answered first, and the connection
/// lingers, reading, so that the peer reads the answer before the close
/// (closing with unread bytes would reset the connection and lose it).
async fn close<F: Flow, W: WallClock>(mut flow: F, status: Option<u16>, clock: &W) {
    if let Some(status) = status {
        let text = reason(status);
        let mut out = String::with_capacity(200);
        let _ = write!(
            out,
            "HTTP/1.1 {status} {text}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{status} {text}\n",
            crate::format_http_date(clock.now().as_secs()),
            text.len() + 5,
            if status == 503 { "Retry-After: 1\r\n" } else { "" },
        );
        let sent = matches!(
            mirage_runtime::time::timeout(Duration::from_secs(5), flow.write_all(out.as_bytes())).await,
            Ok(Ok(()))
        );
        drop(out);
        // A shutdown that writes (TLS's close_notify) waits on the peer's
        // window: bounded as the answer's write is.
        let shut =
            sent && matches!(mirage_runtime::time::timeout(Duration::from_secs(5), flow.shutdown()).await, Ok(Ok(())));
        if shut {
            let deadline = now() + Duration::from_secs(2);
            let mut sink = [0u8; 256];
            let mut budget = 1usize << 20;
            while budget > 0 {
                match select(flow.read(&mut sink), sleep_until(deadline)).await {
                    Either::Left(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
                    _ => break,
                }
            }
        }
    }
    // Nor may the close wait on a peer that stopped reading (a flow whose
    // close writes first, as TLS's does): past this, the flow is dropped,
    // and its connection handed to the stack, which bounds it.
    let _ = mirage_runtime::time::timeout(Duration::from_secs(10), flow.close()).await;
}

#[cfg(test)]
mod head_tests {
    use super::head_end;

    #[test]
    fn a_head_ends_after_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n"), None, "blank lines before it are no end");
        assert_eq!(head_end(b"\r\n\r\n"), None);
    }

    #[test]
    fn a_head_scanned_as_it_grows_ends_where_it_ends_whole() {
        let heads: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody",
            b"\r\n\r\nGET / HTTP/1.1\nHost: a\n\nrest",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n",
            b"\r\n\n\r\n",
        ];
        for head in heads {
            let whole = head_end(head);
            for step in 1..5 {
                let mut scan = super::HeadScan::default();
                let mut found = None;
                let mut len = 0;
                while found.is_none() && len < head.len() {
                    len = (len + step).min(head.len());
                    found = scan.end(&head[..len]);
                }
                assert_eq!(found, whole, "{head:?} by {step}");
            }
        }
    }
}
