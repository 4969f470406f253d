//! What the server tests share: flows in memory, a listener that accepts
//! them, a clock, and a platform whose time jumps to the next deadline
//! when every task waits (so a test of timeouts takes no real time, and
//! runs the same way every time).
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};

use mirage_devices::flow::{self, Flow};
use mirage_devices::stack::{self, TcpListener};
use mirage_devices::time::{Timestamp, WallClock};
use mirage_runtime::{Interest, Platform, Source};

/// The wall clock of the tests: 14 November 2023, 22:13:20 GMT.
pub const NOW: u64 = 1_700_000_000;

/// One direction of a connection: bytes in flight, at most `window` of
/// them, as a TCP receive window bounds them.
#[derive(Default)]
struct Pipe {
    data: VecDeque<u8>,
    window: usize,
    /// The writer shut down: the reader reads the end of the stream.
    shut: bool,
    /// The reader is gone: writes fail.
    gone: bool,
    /// The writer reset the connection: what was not read is dropped, and
    /// reads fail.
    reset: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Pipe {
    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// One end of a connection in memory.
pub struct End {
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
}

/// A connection: two ends, each direction holding up to `window` bytes,
/// allocated from the start (as a TCP socket's buffers are).
pub fn pair(window: usize) -> (End, End) {
    let pipe = || Rc::new(RefCell::new(Pipe { window, data: VecDeque::with_capacity(window), ..Pipe::default() }));
    let (a, b) = (pipe(), pipe());
    (End { rx: a.clone(), tx: b.clone() }, End { rx: b, tx: a })
}

impl End {
    /// Reads until the end of the stream or `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while all.len() < limit {
            match self.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        all
    }

    /// Whether the peer has shut down its side and everything it sent
    /// has been read.
    pub fn at_end(&self) -> bool {
        let rx = self.rx.borrow();
        rx.shut && rx.data.is_empty()
    }

    /// Bytes sent to this end and not read yet.
    pub fn pending(&self) -> usize {
        self.rx.borrow().data.len()
    }

    fn hang_up(&self) {
        let mut tx = self.tx.borrow_mut();
        tx.shut = true;
        tx.wake_reader();
        drop(tx);
        let mut rx = self.rx.borrow_mut();
        rx.gone = true;
        rx.data.clear();
        rx.wake_writer();
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.hang_up();
    }
}

impl Flow for End {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        std::future::poll_fn(|cx| {
            let mut rx = self.rx.borrow_mut();
            if rx.reset {
                return Poll::Ready(Err(flow::Error::Reset));
            }
            if !rx.data.is_empty() {
                let n = buf.len().min(rx.data.len());
                for (b, d) in buf.iter_mut().zip(rx.data.drain(..n)) {
                    *b = d;
                }
                rx.wake_writer();
                return Poll::Ready(Ok(n));
            }
            if rx.shut || rx.gone || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            rx.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        std::future::poll_fn(|cx| {
            let mut tx = self.tx.borrow_mut();
            if tx.gone {
                return Poll::Ready(Err(flow::Error::Reset));
            }
            if tx.shut {
                return Poll::Ready(Err(flow::Error::Closed));
            }
            let room = tx.window - tx.data.len();
            if room == 0 && !data.is_empty() {
                tx.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = room.min(data.len());
            tx.data.extend(&data[..n]);
            tx.wake_reader();
            Poll::Ready(Ok(n))
        })
        .await
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        let mut tx = self.tx.borrow_mut();
        tx.shut = true;
        tx.wake_reader();
        Ok(())
    }

    async fn close(self) -> Result<(), flow::Error> {
        drop(self);
        Ok(())
    }

    async fn abort(self) {
        let mut tx = self.tx.borrow_mut();
        tx.data.clear();
        tx.reset = true;
        tx.wake_reader();
    }
}

/// Connections not yet accepted, and the task waiting to accept one.
type Backlog = (VecDeque<(End, SocketAddr)>, Option<Waker>);

/// A listener whose connections clients open with [`Listener::connect`].
#[derive(Clone, Default)]
pub struct Listener {
    queue: Rc<RefCell<Backlog>>,
    next_port: Rc<RefCell<u16>>,
}

impl Listener {
    /// Opens a connection from 10.0.0.1; the client's end, with `window`
    /// bytes each way.
    pub fn connect(&self, window: usize) -> End {
        self.connect_from(std::net::Ipv4Addr::new(10, 0, 0, 1), window)
    }

    /// Opens a connection from `host`.
    pub fn connect_from(&self, host: std::net::Ipv4Addr, window: usize) -> End {
        let (client, server) = pair(window);
        let mut port = self.next_port.borrow_mut();
        *port = port.wrapping_add(1);
        let peer = SocketAddr::from((host, 1024 + *port));
        let mut q = self.queue.borrow_mut();
        q.0.push_back((server, peer));
        if let Some(w) = q.1.take() {
            w.wake();
        }
        client
    }
}

impl TcpListener for Listener {
    type Flow = End;

    async fn accept(&self) -> Result<(End, SocketAddr), stack::Error> {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            match q.0.pop_front() {
                Some(c) => Poll::Ready(Ok(c)),
                None => {
                    q.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], 80))
    }
}

/// A wall clock that says [`NOW`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl WallClock for Clock {
    fn now(&self) -> Timestamp {
        Timestamp(NOW * 1_000_000_000)
    }
}

/// A platform whose monotonic clock jumps to the next deadline when every
/// task waits. It has no I/O sources: flows in memory wake their tasks
/// themselves.
#[derive(Debug, Default)]
pub struct Sim {
    pub now: u64,
}

impl Platform for Sim {
    fn now(&self) -> u64 {
        self.now
    }
    fn wait(&mut self, deadline: Option<u64>, _io: &[(Source, Interest)], _ready: &mut dyn FnMut(Source, Interest)) {
        match deadline {
            Some(d) => self.now = self.now.max(d),
            None => panic!("every task waits, with no deadline: the test is stuck"),
        }
    }
}

/// Runs `test` on a fresh simulated platform.
pub fn run<F: std::future::Future>(test: F) -> F::Output {
    mirage_runtime::run(&mut Sim::default(), test)
}

/// Writes `request` on a new connection, reads everything the server
/// sends until it closes, and returns it.
pub async fn exchange<F: Flow>(mut flow: F, request: &[u8]) -> Vec<u8> {
    let _ = flow.write_all(request).await;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match flow.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    all
}

/// The status of the first response in `bytes`; 0 if there is none.
pub fn status(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The value of header `name` in the first response in `bytes`.
pub fn header(bytes: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Prints the server's log lines (with `--nocapture`), so that a failing
/// test shows what the server did.
pub fn log_to_stderr() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
