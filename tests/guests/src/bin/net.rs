//! An ARP and ICMP echo responder on the network device "service", after
//! Solo5's test_net. Arguments (after the kernel path):
//!
//! * `ip=A.B.C.D`: the address to answer for (default 10.0.0.2);
//! * `limit=N`: exit with status 0 after answering N pings;
//! * `pattern`: check that each echo payload, after ping's 16-byte
//!   timestamp, is the repeating 0xdeadbeef of `ping -p deadbeef`;
//! * `mtu`: print the device's MTU, whether the tender granted a
//!   virtio-net header and whether checksums are left to the host, and
//!   exit;
//! * `noring`: use one hypercall per frame even if the tender offers the
//!   shared-memory ring (hvt).
//!
//! Malformed frames are counted and dropped.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use mirage_solo5::{self as solo5, Error, net::Net};
use ping::{Action, Stats, respond};

solo5::manifest!(net "service");
solo5::main!(start);

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

fn start(si: &solo5::StartInfo) -> i32 {
    let mut ip = [10, 0, 0, 2];
    let mut limit = u64::MAX;
    let mut pattern = false;
    let mut mtu_only = false;
    for arg in si.cmdline.split_whitespace() {
        if let Some(v) = arg.strip_prefix("ip=") {
            match parse_ip(v) {
                Some(a) => ip = a,
                None => {
                    solo5::println!("net: bad address: {v}");
                    return 64;
                }
            }
        } else if let Some(v) = arg.strip_prefix("limit=") {
            limit = v.parse().unwrap_or(u64::MAX);
        } else if arg == "pattern" {
            pattern = true;
        } else if arg == "mtu" {
            mtu_only = true;
        } else if arg == "noring" {
            solo5::net::use_ring(false);
        }
    }
    let net = match Net::acquire("service") {
        Ok(n) => n,
        Err(e) => {
            solo5::println!("net: cannot acquire service: {e}");
            return 1;
        }
    };
    let info = net.info();
    if mtu_only {
        solo5::println!("MTU is {}", info.mtu);
        let granted = if net.vnet_hdr() { "granted" } else { "not granted" };
        solo5::println!("virtio-net header: {granted}");
        let offload = if net.checksum_offload() { "yes" } else { "no" };
        solo5::println!("checksums left to the host: {offload}");
        return 0;
    }
    let m = info.mac;
    solo5::println!(
        "net: serving {}.{}.{}.{} on service ({:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {})",
        ip[0], ip[1], ip[2], ip[3], m[0], m[1], m[2], m[3], m[4], m[5], info.mtu
    );
    let mut buf = vec![0u8; info.mtu as usize + 18];
    let mut stats = Stats::default();
    loop {
        loop {
            match net.read(&mut buf) {
                Ok(n) => match respond(&mut buf[..n], m, ip, pattern) {
                    Action::Reply(len) => {
                        if net.write(&buf[..len]).is_err() {
                            solo5::println!("net: write failed");
                            return 1;
                        }
                        if len == 42 {
                            stats.arps += 1;
                        } else {
                            stats.pings += 1;
                        }
                    }
                    Action::Ignore => {}
                    Action::Drop => stats.dropped += 1,
                    Action::BadPattern => {
                        solo5::println!("FAILURE: echo payload does not match the 0xdeadbeef pattern");
                        return 1;
                    }
                },
                Err(Error::Again) => break,
                Err(e) => {
                    solo5::println!("net: read failed: {e}");
                    return 1;
                }
            }
            if stats.pings >= limit {
                break;
            }
        }
        if stats.pings >= limit {
            solo5::println!("net: answered {} pings, {} ARP requests; dropped {} malformed frames", stats.pings, stats.arps, stats.dropped);
            solo5::println!("SUCCESS");
            return 0;
        }
        solo5::yield_until(solo5::time::monotonic() + 1_000_000_000);
    }
}
