//! network: the classic small TCP and UDP services, generic over any
//! TCP/IP stack (the direct stack over a network interface, or the host's
//! sockets on unix).
//!
//! - echo (RFC 862), TCP and UDP: what comes in goes back out;
//! - discard (RFC 863), TCP: reads and drops everything;
//! - chargen (RFC 864), TCP: writes a repeating pattern until the client
//!   goes away.
//!
//! Each connection is its own task. Discard and chargen make the bulk
//! throughput benchmark's two directions.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::vec;
use core::cell::Cell;

use mirage_devices::console::Console;
use mirage_devices::flow::Flow;
use mirage_devices::stack::{self, Stack, TcpListener, UdpSocket};
use mirage_runtime::spawn;

/// Connections a listener keeps waiting for acceptance.
const BACKLOG: usize = 128;

/// The unikernel: echo on TCP and UDP port `echo`, discard and chargen on
/// TCP ports `discard` and `chargen` (7, 9 and 19 by default); serves until
/// the stack fails.
pub async fn start<S>(
    console: impl Console,
    stack: S,
    echo: u16,
    discard: u16,
    chargen: u16,
) -> Result<(), stack::Error>
where
    S: Stack + 'static,
    S::Flow: 'static,
    S::Listener: 'static,
    S::Socket: 'static,
{
    let ports = (echo, discard, chargen);
    let echo = stack.listen(ports.0, BACKLOG).await?;
    let discard = stack.listen(ports.1, BACKLOG).await?;
    let chargen = stack.listen(ports.2, BACKLOG).await?;
    let udp = stack.bind(ports.0).await?;
    let addr = match stack.ipv4() {
        Some((a, p)) => format!("{a}/{p}"),
        None => "no IPv4 address".into(),
    };
    let _ = console
        .log(&format!(
            "network: {addr}: echo on TCP and UDP port {}, discard on {}, chargen on {}",
            ports.0, ports.1, ports.2
        ))
        .await;
    let udp_task = spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await?;
            // A reply that cannot be sent (no route, a full queue) is
            // dropped, as UDP may.
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    let tcp = mirage_runtime::join_all([
        serve(echo, Service::Echo),
        serve(discard, Service::Discard),
        serve(chargen, Service::Chargen),
    ]);
    match mirage_runtime::select(tcp, udp_task).await {
        mirage_runtime::Either::Left(results) => results.into_iter().collect(),
        mirage_runtime::Either::Right(r) => r,
    }
}

#[derive(Clone, Copy)]
enum Service {
    Echo,
    Discard,
    Chargen,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Discard => "discard",
            Service::Chargen => "chargen",
        }
    }
}

async fn serve<L: TcpListener + 'static>(listener: L, service: Service) -> Result<(), stack::Error>
where
    L::Flow: 'static,
{
    let count = Cell::new(0u64);
    loop {
        let (flow, peer) = listener.accept().await?;
        count.set(count.get() + 1);
        log::debug!("{}: connection {} from {peer}", service.name(), count.get());
        spawn(async move {
            // A connection that fails (reset, timed out) ends its task
            // only.
            let _ = match service {
                Service::Echo => echo(flow).await,
                Service::Discard => discard(flow).await,
                Service::Chargen => chargen(flow).await,
            };
        });
    }
}

async fn echo<F: Flow>(mut flow: F) -> Result<(), mirage_devices::flow::Error> {
    let mut buf = vec![0u8; 16384];
    loop {
        let n = flow.read(&mut buf).await?;
        if n == 0 {
            return flow.close().await;
        }
        flow.write_all(&buf[..n]).await?;
    }
}

async fn discard<F: Flow>(mut flow: F) -> Result<(), mirage_devices::flow::Error> {
    let mut buf = vec![0u8; 65536];
    while flow.read(&mut buf).await? > 0 {}
    flow.close().await
}

/// The RFC 864 pattern: lines of 72 printable characters, each starting
/// one character further along.
fn pattern() -> alloc::vec::Vec<u8> {
    let mut out = vec![];
    // 95 lines make the pattern repeat: a buffer of them streams seamlessly.
    for line in 0..95 {
        for i in 0..72 {
            out.push(b' ' + ((line + i) % 95) as u8);
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn chargen<F: Flow>(mut flow: F) -> Result<(), mirage_devices::flow::Error> {
    let block = pattern();
    loop {
        flow.write_all(&block).await?;
    }
}
