//! A connection whose flow holds much of its own (a TLS record half
//! received, counted by the flow's meter) is the one shed when another
//! needs the memory, and it is reset at once rather than answered: an
//! answer would keep the flow's buffers until it was written and the flow
//! closed. The heap is this process's, measured by a counting allocator.
//!
//! One test in this binary: the budget is the process's.

mod common;
mod counting;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use common::{Clock, End, Listener, run};
use counting::{Counting, in_use};
use mirage_devices::flow::{self, Flow, Meter};
use mirage_devices::stack::{self, TcpListener};
use mirage_http::{Limits, Static, Stats, serve};
use mirage_kv::Mem;
use mirage_runtime::time::Duration;
use mirage_runtime::{memory, spawn};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A server end whose meter says it holds `own` bytes of its own, as a
/// TLS flow with a record half received does; whether it was reset.
struct Metered {
    end: End,
    own: usize,
    aborted: Rc<Cell<bool>>,
}

impl Flow for Metered {
    fn meter(&mut self, meter: Meter) {
        meter.set(self.own);
    }
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        self.end.read(buf).await
    }
    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        self.end.write(data).await
    }
    async fn flush(&mut self) -> Result<(), flow::Error> {
        self.end.flush().await
    }
    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.end.shutdown().await
    }
    async fn close(self) -> Result<(), flow::Error> {
        self.end.close().await
    }
    async fn abort(self) {
        self.aborted.set(true);
        self.end.abort().await;
    }
}

/// The test's listener: its first connection holds 100 KiB in its flow.
#[derive(Clone)]
struct Accepting {
    inner: Listener,
    accepted: Rc<Cell<usize>>,
    aborted: Rc<Cell<bool>>,
}

impl TcpListener for Accepting {
    type Flow = Metered;

    async fn accept(&self) -> Result<(Metered, SocketAddr), stack::Error> {
        let (end, peer) = self.inner.accept().await?;
        let n = self.accepted.get();
        self.accepted.set(n + 1);
        let own = if n == 0 { 100 * 1024 } else { 0 };
        Ok((Metered { end, own, aborted: self.aborted.clone() }, peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
}

#[test]
fn a_connection_shed_for_what_its_flow_holds_is_reset() {
    run(async {
        let handler = Rc::new(Static::new(Rc::new(Mem::new(Clock))));
        let limits = Rc::new(Limits { max_body: 1 << 20, ..Limits::default() });
        let stats = Rc::new(Stats::default());
        let inner = Listener::default();
        let accepting =
            Accepting { inner: inner.clone(), accepted: Rc::new(Cell::new(0)), aborted: Rc::new(Cell::new(false)) };
        memory::set_heap_probe(in_use);
        let budget = in_use() + (4 << 20);
        memory::set_heap_size(budget / 6 * 8 + 8);
        let budget = memory::budget().unwrap();
        drop(spawn(serve(accepting.clone(), handler, limits, Rc::new(Clock), stats.clone())));
        // The holder: connected, its flow holding 100 KiB, sending nothing.
        let _holder = inner.connect(64 * 1024);
        mirage_runtime::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(accepting.accepted.get(), 1);
        // The heap all but full, then a request whose body needs room.
        let ballast = vec![1u8; budget.saturating_sub(in_use() + 16 * 1024)];
        let mut asker = inner.connect(256 * 1024);
        let head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n";
        asker.write_all(head.as_bytes()).await.unwrap();
        asker.write_all(&vec![b'x'; 200_000]).await.unwrap();
        mirage_runtime::time::sleep(Duration::from_millis(100)).await;
        drop(ballast);
        assert!(stats.shed.get() >= 1, "the holder was shed");
        assert!(accepting.aborted.get(), "the holder, shed for its flow's bytes, was reset, not answered");
    });
}
