//! An ICMP echo flood that counts what was lost, not what was slow.
//!
//! `ping -f -c N` ends when it has sent N requests and then waited twice
//! the longest round trip seen so far: a reply later than that is counted
//! lost, though it arrived. Under nested emulation (the virtio target's
//! guest runs at CPL 0, which KVM emulates here) one late reply among
//! thousands is ordinary, and a test judged by ping's figure then fails
//! for a guest that answered everything. This client paces like
//! `ping -f` (the next request when the reply comes, or after 10 ms
//! without one), keeps every request's sequence number, and waits a fixed
//! grace for the last replies, so that only a request never answered
//! counts as lost.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::Netns;

/// What a flood gave.
#[derive(Debug)]
pub struct Flood {
    /// Requests the flood was to send.
    pub asked: u32,
    pub sent: u32,
    /// Distinct requests answered, with a correct payload.
    pub answered: u32,
    /// Replies for a request answered before.
    pub duplicates: u32,
    /// Replies whose payload differs from the request's.
    pub corrupt: u32,
    /// The first few requests never answered, by sequence number.
    pub lost: Vec<u32>,
    pub rtt_max: Duration,
    pub rtt_avg: Duration,
    pub elapsed: Duration,
}

impl Flood {
    /// Every request sent and answered once, with its own payload.
    pub fn whole(&self) -> bool {
        self.sent == self.asked && self.answered == self.sent && self.duplicates == 0 && self.corrupt == 0
    }
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} requests sent, {} answered, {} duplicates, {} corrupt in {:?}; rtt avg {:?} max {:?}",
            self.sent,
            self.asked,
            self.answered,
            self.duplicates,
            self.corrupt,
            self.elapsed,
            self.rtt_avg,
            self.rtt_max
        )?;
        if !self.lost.is_empty() {
            write!(f, "; never answered: {:?}", self.lost)?;
        }
        Ok(())
    }
}

/// Payload bytes after the 8-byte header: 56, as ping sends.
const PAYLOAD: usize = 56;
/// Without a reply, the next request goes after this (as `ping -f`).
const PACE: Duration = Duration::from_millis(10);

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn payload(seq: u32) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p
}

fn request(id: u16, seq: u32) -> Vec<u8> {
    let mut m = vec![8u8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(seq as u16).to_be_bytes());
    m.extend_from_slice(&payload(seq));
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A raw ICMP socket, closed when dropped.
struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor this value owns.
        unsafe { libc::close(self.0) };
    }
}

/// Floods `addr` with `count` echo requests from inside `ns`, then waits up
/// to `grace` for the replies still due. A flood that hears no reply for
/// `grace` while it sends (the host is gone) ends there, not whole.
pub fn flood(ns: &Netns, addr: Ipv4Addr, count: u32, grace: Duration) -> Result<Flood, String> {
    ns.enter(|| flood_here(addr, count, grace))?
}

/// [`flood`] from the calling thread's namespace.
pub fn flood_here(addr: Ipv4Addr, count: u32, grace: Duration) -> Result<Flood, String> {
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // address and timeout structures are fully initialised.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(format!("raw ICMP socket: {}", std::io::Error::last_os_error()));
        }
        let s = Socket(fd);
        // Without it a silent host would hold `recv` for ever.
        let tv = libc::timeval { tv_sec: 0, tv_usec: 2_000 };
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        ) != 0
        {
            return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
        }
        s
    };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // Each flood its own identifier: a late reply to an earlier flood of
    // this process is not taken for one of this flood's.
    static FLOODS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let nth = FLOODS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = (std::process::id() as u16) ^ 0x6d72 ^ nth.wrapping_mul(0x9e37);
    let mut sent_at: Vec<Option<Instant>> = vec![None; count as usize];
    let mut answered = vec![false; count as usize];
    let (mut n_answered, mut duplicates, mut corrupt) = (0u32, 0u32, 0u32);
    let (mut rtt_max, mut rtt_sum) = (Duration::ZERO, Duration::ZERO);
    let mut sent = 0u32;
    let mut last_send = Instant::now() - PACE;
    let mut awaiting = false;
    let start = Instant::now();
    let mut end: Option<Instant> = None;
    let mut heard = start;
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if sent < count && (!awaiting || now >= last_send + PACE) {
            let m = request(id, sent);
            // SAFETY: a buffer and address that outlive the call.
            let n = unsafe {
                libc::sendto(
                    sock.0,
                    m.as_ptr().cast(),
                    m.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // The socket's buffer is full: try again after the next
                // look for replies (2 ms at most).
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(format!("sending echo request {sent}: {e}"));
                }
            } else {
                sent_at[sent as usize] = Some(now);
                sent += 1;
                last_send = now;
                awaiting = true;
            }
        }
        if sent == count && end.is_none() {
            end = Some(Instant::now() + grace);
        }
        let now = Instant::now();
        if n_answered == count || end.is_some_and(|e| now >= e) || now.duration_since(heard) > grace {
            break;
        }
        // SAFETY: a buffer this function owns, of the length given.
        let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                continue;
            }
            return Err(format!("receiving echo replies: {e}"));
        }
        let p = &buf[..n as usize];
        // The raw socket gives the IP header too.
        let Some(ihl) = p.first().map(|b| usize::from(b & 0x0f) * 4) else { continue };
        if ihl < 20 || p.len() < ihl + 8 || p[12..16] != addr.octets() {
            continue;
        }
        let m = &p[ihl..];
        if m[0] != 0 || m[1] != 0 || u16::from_be_bytes([m[4], m[5]]) != id {
            continue;
        }
        let seq16 = u16::from_be_bytes([m[6], m[7]]);
        // The full sequence number is the payload's first four bytes; the
        // header's 16 bits must agree with it.
        let Some(seq) = m.get(8..12).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]])) else {
            corrupt += 1;
            continue;
        };
        if seq >= sent || seq as u16 != seq16 || m[8..] != payload(seq) || checksum(m) != 0 {
            corrupt += 1;
            continue;
        }
        if answered[seq as usize] {
            duplicates += 1;
            continue;
        }
        answered[seq as usize] = true;
        n_answered += 1;
        heard = Instant::now();
        if let Some(t) = sent_at[seq as usize] {
            let rtt = t.elapsed();
            rtt_max = rtt_max.max(rtt);
            rtt_sum += rtt;
        }
        if seq + 1 == sent {
            awaiting = false;
        }
    }
    let lost = (0..sent).filter(|&s| !answered[s as usize]).take(16).collect();
    Ok(Flood {
        asked: count,
        sent,
        answered: n_answered,
        duplicates,
        corrupt,
        lost,
        rtt_max,
        rtt_avg: if n_answered > 0 { rtt_sum / n_answered } else { Duration::ZERO },
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_valid_checksum_and_their_sequence() {
        let m = request(0x1234, 70_000);
        assert_eq!(checksum(&m), 0);
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), 70_000u32 as u16);
        assert_eq!(m[8..12], 70_000u32.to_be_bytes());
        assert_eq!(m.len(), 8 + PAYLOAD);
    }
}
