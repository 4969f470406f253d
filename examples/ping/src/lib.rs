//! ping: an ARP and ICMP echo responder written directly on Ethernet
//! frames, generic over any network interface; no TCP/IP stack.
//!
//! [`respond`] is the pure part: a request frame in, its reply in place.
//! Malformed frames (short, bad lengths or checksums) are dropped and
//! counted.
#![no_std]

extern crate alloc;

use alloc::vec;
use core::net::Ipv4Addr;

use mirage_devices::console::Console;
use mirage_devices::net::{self, Net};

use mirage_tcpip::wire::{self, Packet};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the first `n` bytes of the frame back: the reply.
    Reply(usize),
    /// Not for us, or not a request.
    Ignore,
    /// Malformed.
    Drop,
    /// An echo whose payload is not the `0xdeadbeef` pattern.
    BadPattern,
}

/// Turns an ARP request for `ip` or an ICMP echo request to `ip` in `f`
/// into its reply, in place. With `pattern`, an echo payload (after ping's
/// 16-byte timestamp) must repeat `0xdeadbeef`. The frame is checked by
/// the Ethernet and IP layers of `mirage-tcpip` (lengths and checksums).
pub fn respond(f: &mut [u8], mac: [u8; 6], ip: [u8; 4], pattern: bool) -> Action {
    let (eth, packet) = match wire::parse(f) {
        Ok(p) => p,
        Err(_) => return Action::Drop,
    };
    match packet {
        Packet::Arp(a) => {
            if a.op != 1 || a.target_ip.octets() != ip {
                return Action::Ignore;
            }
            let (sha, spa) = (a.sender_mac, a.sender_ip.octets());
            f[0..6].copy_from_slice(&sha);
            f[6..12].copy_from_slice(&mac);
            f[20..22].copy_from_slice(&[0, 2]);
            f[22..28].copy_from_slice(&mac);
            f[28..32].copy_from_slice(&ip);
            f[32..38].copy_from_slice(&sha);
            f[38..42].copy_from_slice(&spa);
            Action::Reply(42)
        }
        Packet::Ipv4(p) => {
            if p.protocol != wire::PROTO_ICMP || p.dst.octets() != ip || p.fragment {
                return Action::Ignore;
            }
            let icmp = 14 + p.header_len;
            let end = icmp + p.payload.len();
            if p.payload[0] != 8 || p.payload[1] != 0 {
                return Action::Ignore;
            }
            if pattern {
                let data = &p.payload[8..];
                if data.len() > 16 && data[16..].iter().enumerate().any(|(i, &b)| b != [0xde, 0xad, 0xbe, 0xef][i % 4])
                {
                    return Action::BadPattern;
                }
            }
            let (src_mac, src_ip) = (eth.src, p.src.octets());
            f[0..6].copy_from_slice(&src_mac);
            f[6..12].copy_from_slice(&mac);
            f.copy_within(30..34, 26);
            f[30..34].copy_from_slice(&src_ip);
            f[icmp] = 0;
            f[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
            let c = wire::checksum(&f[icmp..end]);
            f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            Action::Reply(end)
        }
        _ => Action::Ignore,
    }
}

/// What the responder did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Echo requests answered.
    pub pings: u64,
    /// ARP requests answered.
    pub arps: u64,
    /// Malformed frames dropped.
    pub dropped: u64,
}

/// Why the responder stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The interface failed.
    Net(net::Error),
    /// An echo payload was corrupted.
    Corrupted,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Net(e) => write!(f, "network: {e}"),
            Error::Corrupted => f.write_str("echo payload does not match the 0xdeadbeef pattern"),
        }
    }
}

/// The unikernel: answers for `ip` on `net` until `limit` pings (forever if
/// 0).
pub async fn start(
    console: impl Console,
    mut net: impl Net,
    ip: impl Into<Ipv4Addr>,
    limit: u64,
    pattern: bool,
) -> Result<(), Error> {
    let ip: Ipv4Addr = ip.into();
    let limit = Some(limit).filter(|&l| l > 0);
    let info = net.info();
    let _ = console.log(&alloc::format!("ping: serving {ip} ({}, mtu {})", info.mac, info.mtu)).await;
    let mut stats = Stats::default();
    let mut frame = vec![0u8; info.max_frame()];
    let mac = info.mac.0;
    let ip = ip.octets();
    while limit.is_none_or(|l| stats.pings < l) {
        let action = net
            .recv(|f| {
                let n = f.len().min(frame.len());
                frame[..n].copy_from_slice(&f[..n]);
                respond(&mut frame[..n], mac, ip, pattern)
            })
            .await
            .map_err(Error::Net)?;
        match action {
            Action::Reply(len) => {
                net.send(len, |tx| tx.copy_from_slice(&frame[..len])).map_err(Error::Net)?;
                if len == 42 {
                    stats.arps += 1;
                } else {
                    stats.pings += 1;
                }
            }
            Action::Ignore => {}
            Action::Drop => stats.dropped += 1,
            Action::BadPattern => return Err(Error::Corrupted),
        }
    }
    let _ = console
        .log(&alloc::format!(
            "ping: answered {} pings, {} ARP requests; dropped {} malformed frames",
            stats.pings,
            stats.arps,
            stats.dropped
        ))
        .await;
    Ok(())
}
