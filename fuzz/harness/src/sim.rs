//! A simulated world for the async code under test: a platform whose
//! clock jumps to each deadline, a flow that plays a byte stream in
//! pieces, and a block device in memory. Each input runs the same way
//! every time, and minutes of timeouts pass in microseconds.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use mirage_devices::block::{self, Block, BlockInfo};
use mirage_devices::flow::{self, Flow};
use mirage_devices::time::{Timestamp, WallClock};
use mirage_runtime::{Interest, Platform, Source};

/// The clock jumps to each deadline; with no deadline, every task waits on
/// another: a deadlock, which is a finding.
#[derive(Debug, Default)]
pub struct Sim {
    now: u64,
}

impl Platform for Sim {
    fn now(&self) -> u64 {
        self.now
    }

    fn wait(&mut self, deadline: Option<u64>, _io: &[(Source, Interest)], _ready: &mut dyn FnMut(Source, Interest)) {
        let d = deadline.expect("deadlock: every task waits and no timer is set");
        self.now = self.now.max(d);
    }
}

/// Runs `f` to completion on a fresh simulated platform; returns its output
/// and the simulated time it took, in nanoseconds.
pub fn run<F: Future>(f: F) -> (F::Output, u64) {
    let mut sim = Sim::default();
    let out = mirage_runtime::run(&mut sim, f);
    (out, sim.now)
}

/// Runs a future that never waits (the block device here is memory).
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a future over memory devices waited"),
    }
}

/// A fixed wall clock: 2026-11-01T00:00:00Z.
#[derive(Debug, Clone, Copy)]
pub struct FixedWall;

impl WallClock for FixedWall {
    fn now(&self) -> Timestamp {
        Timestamp(1_793_491_200 * 1_000_000_000)
    }
}

/// What a [`Stream`] does once its bytes are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// Reads return 0: the peer closed its side.
    Close,
    /// Reads never complete: the peer went quiet, only timers end the wait.
    Stall,
}

/// A flow whose reads play `input` in pieces of the sizes `pieces` gives
/// (cycled), and whose writes are collected.
#[derive(Debug)]
pub struct Stream {
    input: Vec<u8>,
    at: usize,
    pieces: Vec<usize>,
    piece: usize,
    end: AtEnd,
    /// Everything written, shared with the test.
    pub output: Rc<RefCell<Vec<u8>>>,
    /// Set by `shutdown` and `close`.
    pub closed: Rc<Cell<bool>>,
}

impl Stream {
    /// A stream of `input`, read in `pieces`-sized reads (at least one byte each).
    pub fn new(input: &[u8], pieces: Vec<usize>, end: AtEnd) -> Stream {
        Stream {
            input: input.to_vec(),
            at: 0,
            pieces: if pieces.is_empty() { vec![usize::MAX] } else { pieces },
            piece: 0,
            end,
            output: Rc::default(),
            closed: Rc::default(),
        }
    }
}

impl Flow for Stream {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        if self.at == self.input.len() {
            if self.end == AtEnd::Stall {
                poll_fn(|_| Poll::<()>::Pending).await;
            }
            return Ok(0);
        }
        let want = self.pieces[self.piece % self.pieces.len()].max(1);
        self.piece += 1;
        let n = want.min(buf.len()).min(self.input.len() - self.at);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        if self.closed.get() {
            return Err(flow::Error::Closed);
        }
        self.output.borrow_mut().extend_from_slice(data);
        Ok(data.len())
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.closed.set(true);
        Ok(())
    }

    async fn close(self) -> Result<(), flow::Error> {
        self.closed.set(true);
        Ok(())
    }
}

/// A read-only block device over a byte image, with the bounds and
/// alignment rules of a real one ([`BlockInfo::check`]).
#[derive(Debug)]
pub struct MemBlock {
    bytes: Vec<u8>,
    info: BlockInfo,
}

impl MemBlock {
    /// A device of `sector`-byte sectors holding `image`, zero-padded to a
    /// whole sector.
    pub fn new(image: &[u8], sector: u32) -> MemBlock {
        let mut bytes = image.to_vec();
        bytes.resize(image.len().div_ceil(sector as usize) * sector as usize, 0);
        let info = BlockInfo::new(sector, (bytes.len() / sector as usize) as u64, true);
        MemBlock { bytes, info }
    }
}

impl Block for MemBlock {
    fn info(&self) -> BlockInfo {
        self.info
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), block::Error> {
        self.info.check(sector, buf.len())?;
        let at = (sector * u64::from(self.info.sector_size)) as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    async fn write(&self, _sector: u64, _data: &[u8]) -> Result<(), block::Error> {
        Err(block::Error::ReadOnly)
    }

    async fn flush(&self) -> Result<(), block::Error> {
        Ok(())
    }
}
