//! The device traits of mirage-rs: MirageOS's module types, in Rust.
//!
//! A unikernel is written once, as code generic over these traits, and the
//! `mirage` tool wires it to implementations for a target: host sockets and
//! files on `unix`, Solo5 devices on `hvt` and `spt`, a TCP/IP stack over
//! any [`net::Net`]. Nothing here names a target.
//!
//! ```
//! use mirage_devices::console::Console;
//! use mirage_devices::time::{Sleep, Duration};
//!
//! /// The `hello` unikernel: generic over a console and a sleep.
//! pub async fn start(console: impl Console, time: impl Sleep) {
//!     for _ in 0..4 {
//!         let _ = console.write(b"hello\n").await;
//!         time.sleep(Duration::from_secs(1)).await;
//!     }
//! }
//! ```
//!
//! Design rules:
//! * one trait per kind of device; errors are small enums per kind, never
//!   strings;
//! * operations take the caller's buffers, so nothing allocates unless the
//!   operation produces data of unknown size (a key-value `get`, a `list`);
//! * frames are lent to closures ([`net::Net::try_recv`], [`net::Net::send`])
//!   so a backend can hand out its own buffers without a copy;
//! * everything runs on one core under a cooperative executor: futures need
//!   not be `Send`, and methods take `&self` where several tasks may share a
//!   device.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// The traits are used through generics on one thread: no Send bounds.
#![allow(async_fn_in_trait)]

extern crate alloc;

pub mod block;
pub mod console;
pub mod flow;
pub mod ip;
pub mod kv;
pub mod net;
pub mod random;
pub mod stack;
pub mod time;
