//! tls-client: fetches one page over HTTPS, checking the server's
//! certificate, and prints what it got: the protocol agreed, then the
//! response as it came. The whole fetch has a deadline (`--deadline`),
//! and the server may be silent for at most 30 s at a time within it.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddr};

use mirage_devices::console::Console;
use mirage_devices::flow::Flow;
use mirage_devices::stack::Stack;

/// The most of a response kept (the rest is counted, not printed).
const MAX_BODY: usize = 64 * 1024;

/// How long the server may send nothing before the client gives up: a
/// server that goes silent after the handshake would otherwise hold it
/// for ever.
const SILENCE: mirage_runtime::time::Duration = mirage_runtime::time::Duration::from_secs(30);

/// The unikernel: `GET path` from `server:port`, whose certificate must be
/// valid for `name`, within `deadline` seconds.
#[allow(clippy::too_many_arguments)]
pub async fn start<S: Stack>(
    console: impl Console,
    stack: S,
    tls: mirage_tls::Client,
    server: Ipv4Addr,
    port: u16,
    name: &str,
    path: &str,
    deadline: u32,
) -> Result<(), String> {
    let limit = mirage_runtime::time::Duration::from_secs(deadline.into());
    match mirage_runtime::time::timeout(limit, fetch(&console, stack, tls, server, port, name, path)).await {
        Ok(done) => done,
        // The flow is dropped with the fetch, which closes it.
        Err(_) => Err(format!("{name}: no whole response within {deadline} s (--deadline)")),
    }
}

async fn fetch<S: Stack>(
    console: &impl Console,
    stack: S,
    tls: mirage_tls::Client,
    server: Ipv4Addr,
    port: u16,
    name: &str,
    path: &str,
) -> Result<(), String> {
    let addr = SocketAddr::from((server, port));
    let mut flow = tls.connect(&stack, addr, name).await.map_err(|e| format!("{addr} ({name}): {e}"))?;
    let version = flow.protocol_version().map_or(String::from("?"), |v| format!("{v:?}"));
    let suite = flow.cipher_suite().map_or(String::from("?"), |s| format!("{s:?}"));
    let alpn = flow.alpn_protocol().map_or(String::from("none"), |a| String::from_utf8_lossy(a).into_owned());
    let _ = console.log(&format!("tls-client: connected to {addr} as {name}: {version}, {suite}, ALPN {alpn}")).await;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\nUser-Agent: mirage-rs tls-client\r\n\r\n");
    flow.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
    let mut got = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 4096];
    loop {
        let Ok(read) = mirage_runtime::time::timeout(SILENCE, flow.read(&mut buf)).await else {
            return Err(format!("{name} sent nothing for {} s after {total} bytes", SILENCE.as_secs()));
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                let keep = n.min(MAX_BODY.saturating_sub(got.len()));
                got.extend_from_slice(&buf[..keep]);
            }
            // A server that closes without close_notify after a complete
            // response is common (HTTP/1.0 servers): what came is printed.
            Err(e) if total > 0 => {
                let _ = console.log(&format!("tls-client: the connection ended without close_notify ({e})")).await;
                break;
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    let _ = console.write(&got).await;
    let _ = console.log(&format!("\ntls-client: {total} bytes from {name}")).await;
    let _ = flow.close().await;
    Ok(())
}
