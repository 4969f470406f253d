//! TLS for mirage-rs: a server and a client over any [`Flow`](mirage_devices::flow::Flow) that are
//! themselves a `Flow`, so the HTTP server and any TCP service run over
//! TLS unchanged (MirageOS's `tls-mirage`).
//!
//! Built on rustls (TLS 1.3 and 1.2, nothing older) with its own crypto
//! [`provider`] on the RustCrypto crates, which takes its randomness from
//! the unikernel's [`Random`](mirage_devices::random::Random) device
//! ([`rng::install`]) and its time from the unikernel's wall clock
//! ([`WallTime`]): no system call, so the same code runs on unix and in
//! Solo5 guests.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![allow(async_fn_in_trait)]

extern crate alloc;

pub mod config;
pub mod device;
pub mod flow;
pub mod limit;
pub mod listener;
pub mod provider;
pub mod rng;

pub use config::{
    Certificates, ConfigError, ServerOptions, WallTime, client_config, load_certificates, load_roots, server_config,
};
pub use device::{Client, HANDSHAKE_WAIT, Server};
pub use flow::{CLOSE_NOTIFY_WAIT, Error, TlsClient, TlsFlow, TlsServer};
pub use limit::HandshakeLimit;
pub use listener::TlsListener;
pub use rustls;
