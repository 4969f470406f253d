//! static-website: serves the files of a read-only key-value store over
//! HTTP/1.1: `index.html` for directories, conditional and range
//! requests, an access log on the console.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use core::time::Duration;

use mirage_devices::console::Console;
use mirage_devices::kv::KvRo;
use mirage_devices::stack::{self, Stack};
use mirage_devices::time::{Sleep, WallClock};
use mirage_http::{Limits, Static, Stats};
use mirage_runtime::{Either, select};

/// Connections a listener keeps waiting for acceptance.
const BACKLOG: usize = 256;

/// The unikernel: serves `htdocs` on TCP port `port` until the stack fails;
/// every `stats` seconds (if not 0) a line of statistics on the console.
#[allow(clippy::too_many_arguments)]
pub async fn start<S, K, W>(
    console: impl Console,
    stack: S,
    htdocs: K,
    clock: W,
    time: impl Sleep,
    port: u16,
    header_timeout: u32,
    idle_timeout: u32,
    max_body: u64,
    stats: u32,
    max_connections_per_host: u32,
) -> Result<(), stack::Error>
where
    S: Stack,
    S::Flow: 'static,
    K: KvRo + 'static,
    W: WallClock + 'static,
{
    let listener = stack.listen(port, BACKLOG).await?;
    let addr = match stack.ipv4() {
        Some((a, _)) => format!("http://{a}:{port}/"),
        None => format!("port {port}"),
    };
    let _ = console.log(&format!("static-website: serving on {addr}")).await;
    let limits = Limits {
        header_timeout: Duration::from_secs(header_timeout.into()),
        idle_timeout: Duration::from_secs(idle_timeout.into()),
        max_body,
        max_connections_per_host: max_connections_per_host as usize,
        ..Limits::default()
    };
    let handler = Rc::new(Static::new(Rc::new(htdocs)));
    let counters = Rc::new(Stats::default());
    let server = mirage_http::serve(listener, handler, Rc::new(limits), Rc::new(clock), counters.clone());
    let report = async {
        if stats == 0 {
            return core::future::pending().await;
        }
        loop {
            time.sleep(Duration::from_secs(stats.into())).await;
            let heap = match mirage_runtime::memory::heap_in_use() {
                Some(b) => format!("{} KiB", b / 1024),
                None => "unknown".into(),
            };
            let line = format!(
                "static-website: {} connections open, {} accepted, {} refused for their host, {} responses, \
                 {} refused; {} refused for memory, {} shed, {} KiB held (peak {} KiB); heap {heap} in use",
                counters.open.get(),
                counters.accepted.get(),
                counters.refused_host.get(),
                counters.responses.get(),
                counters.refusals.get(),
                counters.refused_memory.get(),
                counters.shed.get(),
                counters.held.get() / 1024,
                counters.peak_held.get() / 1024,
            );
            let _ = console.log(&line).await;
        }
    };
    match select(server, report).await {
        Either::Left(e) => Err(e),
        Either::Right(never) => never,
    }
}
