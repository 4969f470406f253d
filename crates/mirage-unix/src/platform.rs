//! The executor's platform on unix: `CLOCK_MONOTONIC` and `ppoll(2)`.

use mirage_runtime::{Interest, Platform, Source};

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps in `ppoll(2)` on the descriptors the executor waits for, until
/// the next timer deadline (nanosecond precision).
#[derive(Debug, Default)]
pub struct UnixPlatform {
    fds: Vec<libc::pollfd>,
}

impl UnixPlatform {
    /// A platform.
    pub fn new() -> UnixPlatform {
        UnixPlatform::default()
    }
}

impl Platform for UnixPlatform {
    fn now(&self) -> u64 {
        monotonic_ns()
    }

    fn clock(&self) -> Option<fn() -> u64> {
        Some(monotonic_ns)
    }

    fn wait(&mut self, deadline: Option<u64>, io: &[(Source, Interest)], ready: &mut dyn FnMut(Source, Interest)) {
        self.fds.clear();
        for &(Source(fd), interest) in io {
            let events = match interest {
                Interest::Read => libc::POLLIN,
                Interest::Write => libc::POLLOUT,
            };
            match self.fds.iter_mut().find(|p| p.fd == fd as i32) {
                Some(p) => p.events |= events,
                None => self.fds.push(libc::pollfd { fd: fd as i32, events, revents: 0 }),
            }
        }
        let ts = deadline.map(|d| {
            let left = d.saturating_sub(monotonic_ns());
            libc::timespec { tv_sec: (left / 1_000_000_000) as i64, tv_nsec: (left % 1_000_000_000) as i64 }
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: fds holds fds.len() pollfds; tsp is null or a valid
        // timespec; no signal mask is passed.
        let n = unsafe { libc::ppoll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, tsp, std::ptr::null()) };
        if n <= 0 {
            return;
        }
        for p in &self.fds {
            // Errors and hang-ups wake both directions: the operation will
            // report them.
            let bad = p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
            if p.revents & libc::POLLIN != 0 || bad {
                ready(Source(p.fd as u64), Interest::Read);
            }
            if p.revents & libc::POLLOUT != 0 || bad {
                ready(Source(p.fd as u64), Interest::Write);
            }
        }
    }
}
