//! Host plumbing both tenders share: the option loop, the personality
//! check, and the wait set (an epoll instance holding a timerfd and every
//! attached NIC) behind POLL on hvt and `solo5_yield` on spt.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::cli::{self, CommandLine, option_str};
use crate::devices::{Devices, Handled};
use crate::{Exit, fatal, strerror};

/// Which tender is speaking: each keeps Solo5's own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tender {
    /// `solo5-hvt`.
    Hvt,
    /// `solo5-spt`.
    Spt,
}

/// Hands each option before the executable to `--mem`, then `extra` (a
/// tender's own options), then the block and net modules; returns the
/// memory size (`default_mem` unless given). An option nobody takes is
/// Solo5's "Invalid option" with the usage.
pub fn parse_options(
    cl: &CommandLine,
    devices: &mut Devices,
    default_mem: u64,
    mut extra: impl FnMut(&str) -> bool,
) -> Result<u64, Exit> {
    let mut mem_size = default_mem;
    for opt in &cl.options {
        let arg = option_str(opt);
        let handled = if let Some(m) = cli::parse_mem(arg) {
            mem_size = m?;
            true
        } else {
            extra(arg) || devices.block_option(arg)? == Handled::Yes || devices.net_option(arg)? == Handled::Yes
        };
        if !handled {
            return Err(invalid_option(opt));
        }
    }
    Ok(mem_size)
}

fn invalid_option(opt: &OsString) -> Exit {
    Exit::Usage(Some(format!("Invalid option: `{}'", opt.to_string_lossy())))
}

/// Refuses to run with `READ_IMPLIES_EXEC`, under which every readable
/// page of the guest would be executable on the host, as Solo5 does.
pub fn refuse_read_implies_exec() -> Result<(), Exit> {
    // SAFETY: personality(0xffffffff) only queries the current persona.
    let persona = unsafe { libc::personality(0xffff_ffff) };
    if persona >= 0 && persona & libc::READ_IMPLIES_EXEC != 0 {
        return Err(fatal!(
            "Cowardly refusing to run with a sys_personality of READ_IMPLIES_EXEC. Please report a bug, with details of your Linux distribution and GCC version"
        ));
    }
    Ok(())
}

/// The wait set: an epoll instance holding a monotonic timerfd (the
/// deadline) and, added later, every attached NIC.
#[derive(Debug)]
pub struct WaitSet {
    tender: Tender,
    /// The epoll instance.
    pub epoll: OwnedFd,
    /// The deadline's timer, registered with `timer_data`.
    pub timerfd: OwnedFd,
}

fn os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl WaitSet {
    /// A wait set holding its timer, registered with `timer_data`.
    pub fn new(tender: Tender, timer_data: u64) -> Result<WaitSet, Exit> {
        let (no_epoll, no_timer) = match tender {
            Tender::Hvt => ("Could not create wait set", "Could not create wait set timerfd"),
            Tender::Spt => ("epoll_create1() failed", "timerfd_create() failed"),
        };
        let epoll = epoll_create().map_err(|e| fatal!("{no_epoll}: {}", strerror(&e)))?;
        // SAFETY: plain timerfd_create; the result is checked.
        let tfd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if tfd < 0 {
            return Err(fatal!("{no_timer}: {}", strerror(&os_error())));
        }
        // SAFETY: as above.
        let timerfd = unsafe { OwnedFd::from_raw_fd(tfd) };
        let w = WaitSet { tender, epoll, timerfd };
        w.add(w.timerfd.as_raw_fd(), timer_data)?;
        Ok(w)
    }

    /// Adds `fd`, reported ready with `data`.
    pub fn add(&self, fd: i32, data: u64) -> Result<(), Exit> {
        self.add_events(fd, data, libc::EPOLLIN as u32)
    }

    /// Adds `fd`, reported ready with `data`, to be woken exclusively
    /// (`EPOLLEXCLUSIVE`): where another thread's wait set holds `fd` the
    /// same way, a frame wakes one of the two, this one first when it is
    /// waiting (it was registered first). hvt's POLL and the net ring's I/O
    /// thread both wait on a tap the guest posts receive buffers for
    /// ([`solo5_abi::hvt::FEATURE_RING_POSTED`]); waking both for each
    /// frame doubled the latency a frame saw.
    pub fn add_exclusive(&self, fd: i32, data: u64) -> Result<(), Exit> {
        self.add_events(fd, data, (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32)
    }

    fn add_events(&self, fd: i32, data: u64, events: u32) -> Result<(), Exit> {
        epoll_add(&self.epoll, fd, events, data).map_err(|e| {
            let e = strerror(&e);
            match self.tender {
                Tender::Hvt => fatal!("epoll_ctl(EPOLL_CTL_ADD) failed: {e}"),
                Tender::Spt => fatal!("epoll_ctl(EPOLL_CTL_ADD, hostfd={fd}) failed: {e}"),
            }
        })
    }
}

/// A new epoll instance, closed on exec.
pub fn epoll_create() -> std::io::Result<OwnedFd> {
    // SAFETY: plain epoll_create1; the result is checked.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(os_error());
    }
    // SAFETY: epfd is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(epfd) })
}

/// Adds `fd` to the wait set `epoll` for `events`, reported ready with
/// `data`.
pub fn epoll_add(epoll: &OwnedFd, fd: i32, events: u32, data: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: both descriptors are open; ev is a valid epoll_event.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(os_error());
    }
    Ok(())
}
