//! An HTTP/1.1 server (RFC 9110, RFC 9112) over any [`Flow`], for
//! unikernels: `no_std` with `alloc`, one task per connection on the
//! mirage-rs runtime, parsing by httparse.
//!
//! - persistent connections and pipelining; HTTP/1.0 keep-alive on request;
//! - request bodies framed by `Content-Length` or `chunked`, with
//!   `Expect: 100-continue`; responses framed by `Content-Length`;
//! - limits with their statuses: 400 malformed, 408 a head or body that
//!   does not arrive in time, 413 a body over [`Limits::max_body`], 414 a
//!   target over [`Limits::max_uri`], 431 too many or too large header
//!   fields, 501 an unknown transfer coding, 505 a version other than 1.x;
//!   an idle keep-alive connection is closed after [`Limits::idle_timeout`],
//!   and a new one that has not sent its first head whole (a TLS handshake
//!   included) within [`Limits::header_timeout`] of its start;
//! - an access log through `log` (target `http`, level info), one line
//!   per response.
//!
//! What a request gets is up to a [`Handler`]; [`Static`] serves files
//! from any key-value store, with conditional and range requests.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// The handler trait is used by static dispatch in a single-threaded
// runtime: its futures need not be Send.
#![allow(async_fn_in_trait)]

extern crate alloc;

mod date;
mod hosts;
mod ledger;
mod mime;
mod request;
mod server;
mod statik;

pub use date::{format_http_date, parse_http_date};
pub use mime::mime_type;
pub use request::Request;
pub use server::{Body, Handler, Limits, Response, Stats, reason, serve, serve_connection};
pub use statik::{Static, StaticBody};

pub use mirage_devices::flow::Flow;
