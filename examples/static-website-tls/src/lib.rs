//! static-website-tls: serves a read-only key-value store over HTTPS, with
//! certificates from another store, and redirects HTTP to HTTPS with HSTS
//! (MirageOS's `static_website_tls`). One host may start
//! `--handshakes-per-host` new HTTPS connections a second (50), twice as
//! many at once; those beyond are reset before their handshake costs
//! anything.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use core::time::Duration;

use mirage_devices::console::Console;
use mirage_devices::kv::KvRo;
use mirage_devices::stack::Stack;
use mirage_devices::time::WallClock;
use mirage_http::{Handler, Limits, Request, Response, Static, Stats};
use mirage_runtime::{Either, select};
use mirage_tls::HandshakeLimit;

/// Connections a listener keeps waiting for acceptance.
const BACKLOG: usize = 256;

/// The HTTPS site: the files, each response with HSTS.
struct Hsts<K> {
    files: Static<K>,
    header: Option<String>,
}

impl<K: KvRo> Handler for Hsts<K> {
    type Body = mirage_http::StaticBody<K>;

    async fn handle(&self, request: &Request) -> Response<Self::Body> {
        let response = self.files.handle(request).await;
        match &self.header {
            Some(h) => response.with("Strict-Transport-Security", h.clone()),
            None => response,
        }
    }
}

/// The HTTP site: every request is sent to the same place over HTTPS.
struct Redirect {
    https_port: u16,
}

impl Handler for Redirect {
    type Body = alloc::vec::Vec<u8>;

    async fn handle(&self, request: &Request) -> Response<Self::Body> {
        let host = request.header("host").and_then(|h| core::str::from_utf8(h).ok()).unwrap_or("");
        let host = without_port(host);
        if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/') {
            return Response::new(400, b"a Host field is needed to redirect to HTTPS\n".to_vec());
        }
        let target = if request.target.starts_with('/') { request.target.as_str() } else { "/" };
        let location = match self.https_port {
            443 => format!("https://{host}{target}"),
            p => format!("https://{host}:{p}{target}"),
        };
        Response::new(301, vec![]).with("Location", location)
    }
}

/// The host of a Host field, its port (the HTTP one) dropped: what
/// follows the last `:`, unless that is inside an IPv6 literal's
/// brackets (`[::1]` has no port; `[::1]:8080` has).
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => h,
        _ => host,
    }
}

/// The error that stops the unikernel: its message names the cause.
#[derive(Debug)]
pub struct Failed(String);

impl core::fmt::Display for Failed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The unikernel: HTTPS on `https_port` with the TLS server `tls` (its
/// certificates loaded by the wiring), HTTP on `http_port` redirecting to
/// it (none if 0).
#[allow(clippy::too_many_arguments)]
pub async fn start<S, K, W>(
    console: impl Console,
    stack: S,
    htdocs: K,
    tls: mirage_tls::Server,
    clock: W,
    https_port: u16,
    http_port: u16,
    hsts_max_age: u32,
    header_timeout: u32,
    idle_timeout: u32,
    handshakes_per_host: u32,
    max_connections_per_host: u32,
) -> Result<(), Failed>
where
    S: Stack,
    S::Flow: 'static,
    K: KvRo + 'static,
    W: WallClock + 'static,
{
    let limits = Rc::new(Limits {
        header_timeout: Duration::from_secs(header_timeout.into()),
        idle_timeout: Duration::from_secs(idle_timeout.into()),
        max_connections_per_host: max_connections_per_host as usize,
        ..Limits::default()
    });
    let clock = Rc::new(clock);
    let limit = match handshakes_per_host {
        0 => HandshakeLimit::NONE,
        n => HandshakeLimit { per_second: n, burst: n.saturating_mul(2) },
    };
    let https = tls
        .handshake_limit(limit)
        .listen(&stack, https_port, BACKLOG)
        .await
        .map_err(|e| Failed(format!("listening on {https_port}: {e}")))?;
    let header = (hsts_max_age > 0).then(|| format!("max-age={hsts_max_age}"));
    let site = Rc::new(Hsts { files: Static::new(Rc::new(htdocs)), header });
    let addr = match stack.ipv4() {
        Some((a, _)) => format!("https://{a}:{https_port}/"),
        None => format!("port {https_port}"),
    };
    let _ = console.log(&format!("static-website-tls: serving on {addr}")).await;
    let secure = mirage_http::serve(https, site, limits.clone(), clock.clone(), Rc::new(Stats::default()));
    let plain = async {
        if http_port == 0 {
            return core::future::pending().await;
        }
        match stack.listen(http_port, BACKLOG).await {
            Ok(l) => {
                let redirect = Rc::new(Redirect { https_port });
                mirage_http::serve(l, redirect, limits.clone(), clock.clone(), Rc::new(Stats::default())).await
            }
            Err(e) => e,
        }
    };
    let e = match select(secure, plain).await {
        Either::Left(e) | Either::Right(e) => e,
    };
    Err(Failed(format!("the stack failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::without_port;

    #[test]
    fn the_port_is_dropped_and_an_ipv6_literal_kept_whole() {
        assert_eq!(without_port("example.com:8080"), "example.com");
        assert_eq!(without_port("example.com"), "example.com");
        assert_eq!(without_port("10.0.0.2:80"), "10.0.0.2");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
        assert_eq!(without_port("[fd00::2]:"), "[fd00::2]");
    }
}
