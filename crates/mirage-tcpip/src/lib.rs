//! The direct TCP/IP stack: IPv4 and IPv6, ARP and NDP, ICMP echo, UDP,
//! TCP and a DHCPv4 client, over any [`Net`](mirage_devices::net::Net) interface.
//!
//! The protocol engine is smoltcp, behind this crate's adapter: nothing of
//! it shows in the API, which is the stack traits of `mirage-devices`
//! ([`mirage_devices::stack`]) and [`Stack`]'s own few methods, so the
//! engine could be replaced. A driver task owns the interface: each time it
//! wakes (a frame arrived, a timer is due, a socket has something to send)
//! it processes a batch of frames, sends what the sockets queued and sleeps
//! until the engine's next deadline.
//!
//! ```no_run
//! # async fn f(net: impl mirage_devices::net::Net + 'static) {
//! use mirage_devices::stack::{Tcp, TcpListener};
//! use mirage_devices::flow::Flow;
//! let config = mirage_tcpip::Config::static_ipv4("10.0.0.2".parse().unwrap(), 24, None);
//! let stack = mirage_tcpip::Stack::new(net, config).unwrap();
//! let listener = stack.listen(7, 16).await.unwrap();
//! let (mut flow, _peer) = listener.accept().await.unwrap();
//! let mut buf = [0; 1500];
//! let n = flow.read(&mut buf).await.unwrap();
//! flow.write_all(&buf[..n]).await.unwrap();
//! # }
//! ```
//!
//! Frames that are malformed (short, bad lengths, bad checksums) are
//! dropped before the engine sees them and counted ([`Stats`]). The stack
//! is built for hostile networks: the adapter answers handshakes itself
//! with SYN cookies and gives the engine a connection, with its buffers,
//! only once it is complete; it applies RFC 5961 to resets, SYNs and old
//! acknowledgments, times connections out by state, keeps within the
//! memory budget ([`Config::may_hold`]) with fallible allocation, refuses
//! bogus neighbour information, and drops martian packets and fragments.
//! ARCHITECTURE.md says how, and each defence has its counter in
//! [`Stats`].
//!
//! Without the default `stack` feature the crate is only [`wire`]: the
//! Ethernet and IP layers on their own, for raw-frame applications, with no
//! protocol engine compiled in.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod route;
pub mod wire;

#[cfg(feature = "stack")]
mod conns;
#[cfg(feature = "stack")]
mod device;
#[cfg(feature = "stack")]
pub mod dhcpc;
#[cfg(feature = "stack")]
mod driver;
#[cfg(feature = "stack")]
mod handshake;
#[cfg(feature = "stack")]
mod inbound;
#[cfg(feature = "stack")]
pub mod ip;
#[cfg(feature = "stack")]
mod neighbor;
#[cfg(feature = "stack")]
mod stack;
#[cfg(feature = "stack")]
mod table;
#[cfg(feature = "stack")]
mod tcp;
#[cfg(feature = "stack")]
mod udp;

#[cfg(feature = "stack")]
pub use ip::{IpConfig, IpError, IpLayer};
#[cfg(feature = "stack")]
pub use stack::{Config, Error, Stack, Stats};
#[cfg(feature = "stack")]
pub(crate) use stack::{Inner, Shared, now, smol_now};
#[cfg(feature = "stack")]
pub use tcp::{Flow, Listener, ReadHalf, WriteHalf};
#[cfg(feature = "stack")]
pub use udp::{STUCK as UDP_STUCK, UdpSocket};
