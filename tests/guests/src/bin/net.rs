//! An ARP and ICMP echo responder on the network device "service", after
//! Solo5's test_net. Arguments (after the kernel path):
//!
//! * `ip=A.B.C.D`: the address to answer for (default 10.0.0.2);
//! * `limit=N`: exit with status 0 after answering N pings;
//! * `pattern`: check that each echo payload, after ping's 16-byte
//!   timestamp, is the repeating 0xdeadbeef of `ping -p deadbeef`;
//! * `mtu`: print the device's MTU and exit;
//! * `noring`: use one hypercall per frame even if the tender offers the
//!   shared-memory ring (hvt).
//!
//! Malformed frames are counted and dropped.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use mirage_solo5::{self as solo5, Error, net::Net};

solo5::manifest!(net "service");
solo5::main!(start);

#[derive(Default)]
struct Stats {
    pings: u64,
    arps: u64,
    dropped: u64,
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

enum Action {
    Reply(usize),
    Ignore,
    Drop,
    BadPattern,
}

/// Turns a request in `f` into its reply in place.
fn handle(f: &mut [u8], mac: [u8; 6], ip: [u8; 4], pattern: bool) -> Action {
    if f.len() < 14 {
        return Action::Drop;
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    match ethertype {
        0x0806 => {
            if f.len() < 42 {
                return Action::Drop;
            }
            let a = &f[14..42];
            if a[0..2] != [0, 1] || a[2..4] != [8, 0] || a[4] != 6 || a[5] != 4 {
                return Action::Drop;
            }
            if a[6..8] != [0, 1] || a[24..28] != ip {
                return Action::Ignore;
            }
            let (sha, spa) = ([a[8], a[9], a[10], a[11], a[12], a[13]], [a[14], a[15], a[16], a[17]]);
            f[0..6].copy_from_slice(&sha);
            f[6..12].copy_from_slice(&mac);
            f[20..22].copy_from_slice(&[0, 2]);
            f[22..28].copy_from_slice(&mac);
            f[28..32].copy_from_slice(&ip);
            f[32..38].copy_from_slice(&sha);
            f[38..42].copy_from_slice(&spa);
            Action::Reply(42)
        }
        0x0800 => {
            if f.len() < 34 || f[14] >> 4 != 4 {
                return Action::Drop;
            }
            let ihl = ((f[14] & 0xf) as usize) * 4;
            let total = u16::from_be_bytes([f[16], f[17]]) as usize;
            if ihl < 20 || total < ihl + 8 || 14 + total > f.len() || checksum(&f[14..14 + ihl]) != 0 {
                return Action::Drop;
            }
            if f[23] != 1 || f[30..34] != ip {
                return Action::Ignore;
            }
            let icmp = 14 + ihl;
            let end = 14 + total;
            if checksum(&f[icmp..end]) != 0 {
                return Action::Drop;
            }
            if f[icmp] != 8 || f[icmp + 1] != 0 {
                return Action::Ignore;
            }
            if pattern {
                let payload = &f[icmp + 8..end];
                if payload.len() > 16
                    && payload[16..].iter().enumerate().any(|(i, &b)| b != [0xde, 0xad, 0xbe, 0xef][i % 4])
                {
                    return Action::BadPattern;
                }
            }
            let mut tmp = [0u8; 6];
            tmp.copy_from_slice(&f[6..12]);
            f.copy_within(0..6, 6);
            f[0..6].copy_from_slice(&tmp);
            let mut src = [0u8; 4];
            src.copy_from_slice(&f[26..30]);
            f.copy_within(30..34, 26);
            f[30..34].copy_from_slice(&src);
            f[icmp] = 0;
            f[icmp + 2] = 0;
            f[icmp + 3] = 0;
            let c = checksum(&f[icmp..end]);
            f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            Action::Reply(end)
        }
        _ => Action::Ignore,
    }
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
                Ok(n) => match handle(&mut buf[..n], m, ip, pattern) {
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
