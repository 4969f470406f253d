//! The hypercall handlers.
//!
//! Each handler reads its argument struct through the checked path, checks
//! the device handle and every pointer and length in it, performs the host
//! operation and writes the results back. Guest mistakes that Solo5 reports
//! as results (a bad handle, an out-of-range block) become `SOLO5_R_EINVAL`;
//! guest memory violations and host I/O failures end the guest.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use solo5_abi::hvt::{
    HcBlockRead, HcHalt, HcNetRead, HcNetWrite, HcPoll, HcPuts, HcWalltime, Hypercall, HALT_COOKIE_MAX,
};
use solo5_abi::mft::MftType;
use solo5_abi::{SoloResult, spt::INTERNAL_TIMERFD};

// BLOCK_READ is served with BLOCK_WRITE's code: same fields, same offsets.
const _: () = assert!(
    std::mem::size_of::<solo5_abi::hvt::HcBlockWrite>() == std::mem::size_of::<HcBlockRead>()
        && std::mem::offset_of!(solo5_abi::hvt::HcBlockWrite, ret) == std::mem::offset_of!(HcBlockRead, ret)
        && std::mem::offset_of!(solo5_abi::hvt::HcBlockWrite, data) == std::mem::offset_of!(HcBlockRead, data)
);

use super::memory::{GuestMemory, InvalidAccess};
use crate::devices::Devices;
use crate::{Exit, fatal, strerror};

/// What the vCPU loop does after a hypercall.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resume the guest.
    Resume,
    /// The guest halted with this status.
    Halt(i32),
}

/// The state the hypercalls need.
#[derive(Debug)]
pub struct Hypercalls<'m> {
    mem: &'m GuestMemory,
    devices: Devices,
    block: bool,
    net: bool,
    epoll: OwnedFd,
    timerfd: OwnedFd,
    npollfds: usize,
}

fn guest(hc: Hypercall) -> impl Fn(InvalidAccess) -> Exit {
    move |e| fatal!("{hc:?} hypercall: {e}")
}

fn os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl<'m> Hypercalls<'m> {
    /// Sets up the wait set (a timerfd and every attached NIC) and enables
    /// the block and net hypercalls if such devices are attached.
    pub fn new(mem: &'m GuestMemory, devices: Devices) -> Result<Hypercalls<'m>, Exit> {
        // SAFETY: plain epoll_create1/timerfd_create calls; results checked.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(fatal!("Could not create wait set: {}", strerror(&os_error())));
        }
        // SAFETY: epfd is a fresh descriptor owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        // SAFETY: as above.
        let tfd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if tfd < 0 {
            return Err(fatal!("Could not create wait set timerfd: {}", strerror(&os_error())));
        }
        // SAFETY: as above.
        let timerfd = unsafe { OwnedFd::from_raw_fd(tfd) };
        let mut hc = Hypercalls {
            mem,
            block: devices.has_block(),
            net: devices.has_net(),
            devices,
            epoll,
            timerfd,
            npollfds: 0,
        };
        hc.add_pollfd(hc.timerfd.as_raw_fd(), INTERNAL_TIMERFD)?;
        let nics: Vec<(usize, i32)> = hc
            .devices
            .attached(MftType::NetBasic)
            .filter_map(|i| hc.devices.get(i as u64, MftType::NetBasic).map(|(_, fd)| (i, fd)))
            .collect();
        for (i, fd) in nics {
            hc.add_pollfd(fd, i as u64)?;
            hc.npollfds += 1;
        }
        Ok(hc)
    }

    fn add_pollfd(&self, fd: i32, data: u64) -> Result<(), Exit> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
        // SAFETY: both descriptors are open; ev is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(fatal!("epoll_ctl(EPOLL_CTL_ADD) failed: {}", strerror(&os_error())));
        }
        Ok(())
    }

    /// The devices, for the net ring.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// The descriptors the seccomp policy must allow: (epoll, timerfd).
    pub fn wait_fds(&self) -> (i32, i32) {
        (self.epoll.as_raw_fd(), self.timerfd.as_raw_fd())
    }

    /// Handles hypercall `nr` with its argument at `gpa`.
    pub fn handle(&mut self, nr: u16, gpa: u64) -> Result<Outcome, Exit> {
        let hc = match Hypercall::from_nr(nr) {
            Some(Hypercall::BlockRead | Hypercall::BlockWrite) if !self.block => None,
            Some(Hypercall::NetRead | Hypercall::NetWrite) if !self.net => None,
            other => other,
        };
        match hc {
            Some(Hypercall::Walltime) => self.walltime(gpa),
            Some(Hypercall::Puts) => self.puts(gpa),
            Some(Hypercall::Poll) => self.poll(gpa),
            Some(Hypercall::BlockWrite) => self.block_io(gpa, true),
            Some(Hypercall::BlockRead) => self.block_io(gpa, false),
            Some(Hypercall::NetWrite) => self.net_write(gpa),
            Some(Hypercall::NetRead) => self.net_read(gpa),
            Some(Hypercall::Halt) => return self.halt(gpa),
            None => return Err(fatal!("Invalid guest hypercall: num={nr}")),
        }?;
        Ok(Outcome::Resume)
    }

    fn walltime(&self, gpa: u64) -> Result<(), Exit> {
        let err = guest(Hypercall::Walltime);
        self.mem.check(gpa, std::mem::size_of::<HcWalltime>() as u64).map_err(&err)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.mem.write_obj(gpa, &HcWalltime { nsecs: now.as_nanos() as u64 }).map_err(&err)
    }

    fn puts(&self, gpa: u64) -> Result<(), Exit> {
        let err = guest(Hypercall::Puts);
        let p: HcPuts = self.mem.read_obj(gpa).map_err(&err)?;
        let data = self.mem.check(p.data, p.len).map_err(&err)?;
        let mut off = 0usize;
        while off < p.len as usize {
            // SAFETY: [data, data + len) was checked to lie in guest memory.
            let n = unsafe { libc::write(1, data.add(off).cast(), p.len as usize - off) };
            if n < 0 {
                let e = os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(fatal!("Console write failed: {}", strerror(&e)));
            }
            off += n as usize;
        }
        Ok(())
    }

    fn poll(&self, gpa: u64) -> Result<(), Exit> {
        let err = guest(Hypercall::Poll);
        let mut p: HcPoll = self.mem.read_obj(gpa).map_err(&err)?;
        let it = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (p.timeout_nsecs / 1_000_000_000).min(i64::MAX as u64) as i64,
                // Never zero, which would disarm the timer and sleep forever.
                tv_nsec: ((p.timeout_nsecs % 1_000_000_000) | 1) as i64,
            },
        };
        // SAFETY: timerfd is ours; it points to a valid itimerspec.
        if unsafe { libc::timerfd_settime(self.timerfd.as_raw_fd(), 0, &it, std::ptr::null_mut()) } < 0 {
            return Err(fatal!("timerfd_settime() failed: {}", strerror(&os_error())));
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 65];
        let max = (self.npollfds + 1).min(events.len());
        let n = loop {
            // SAFETY: events has room for `max` entries.
            let n = unsafe {
                libc::epoll_pwait(self.epoll.as_raw_fd(), events.as_mut_ptr(), max as i32, -1, std::ptr::null())
            };
            if n >= 0 {
                break n as usize;
            }
            let e = os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(fatal!("epoll_pwait() failed: {}", strerror(&e)));
            }
        };
        let mut ready = 0u64;
        let mut count = 0;
        for ev in &events[..n] {
            let data = ev.u64;
            if data != INTERNAL_TIMERFD && data < 64 {
                ready |= 1 << data;
                count += 1;
            }
        }
        p.ready_set = ready;
        p.ret = count;
        self.mem.write_obj(gpa, &p).map_err(&err)
    }

    fn block_entry(&self, handle: u64, offset: u64, len: u64) -> Option<i32> {
        let (e, fd) = self.devices.get(handle, MftType::BlockBasic)?;
        let capacity = e.block_capacity();
        if len > isize::MAX as u64 || offset >= capacity {
            return None;
        }
        match offset.checked_add(len) {
            Some(end) if end <= capacity && end <= i64::MAX as u64 => Some(fd),
            _ => None,
        }
    }

    /// BLOCK_WRITE and BLOCK_READ, whose argument structs share a layout.
    fn block_io(&self, gpa: u64, write: bool) -> Result<(), Exit> {
        let err = guest(if write { Hypercall::BlockWrite } else { Hypercall::BlockRead });
        let mut a: HcBlockRead = self.mem.read_obj(gpa).map_err(&err)?;
        a.ret = match self.block_entry(a.handle, a.offset, a.len) {
            None => SoloResult::Inval as u32,
            Some(fd) => {
                let data = self.mem.check(a.data, a.len).map_err(&err)?;
                // SAFETY: the range was checked to lie in guest memory.
                let n = unsafe {
                    if write {
                        libc::pwrite(fd, data.cast(), a.len as usize, a.offset as i64)
                    } else {
                        libc::pread(fd, data.cast(), a.len as usize, a.offset as i64)
                    }
                };
                let (doing, done) = if write { ("writing", "wrote") } else { ("reading", "read") };
                if n < 0 {
                    return Err(fatal!("Fatal error when {doing}: {}", strerror(&os_error())));
                }
                if n as u64 != a.len {
                    return Err(fatal!("Fatal error: {done} only {n} out of {} bytes", a.len));
                }
                SoloResult::Ok as u32
            }
        };
        self.mem.write_obj(gpa, &a).map_err(&err)
    }

    fn net_write(&self, gpa: u64) -> Result<(), Exit> {
        let err = guest(Hypercall::NetWrite);
        let mut w: HcNetWrite = self.mem.read_obj(gpa).map_err(&err)?;
        w.ret = match self.devices.get(w.handle, MftType::NetBasic) {
            None => SoloResult::Inval as u32,
            Some((_, fd)) => {
                let data = self.mem.check(w.data, w.len).map_err(&err)?;
                // SAFETY: the frame was checked to lie in guest memory.
                let n = unsafe { libc::write(fd, data.cast(), w.len as usize) };
                if n < 0 {
                    return Err(fatal!("Fatal error when writing: {}", strerror(&os_error())));
                }
                if n as u64 != w.len {
                    return Err(fatal!("Fatal error: wrote only {n} out of {} bytes", w.len));
                }
                SoloResult::Ok as u32
            }
        };
        self.mem.write_obj(gpa, &w).map_err(&err)
    }

    fn net_read(&self, gpa: u64) -> Result<(), Exit> {
        let err = guest(Hypercall::NetRead);
        let mut r: HcNetRead = self.mem.read_obj(gpa).map_err(&err)?;
        match self.devices.get(r.handle, MftType::NetBasic) {
            None => r.ret = SoloResult::Inval as u32,
            Some((_, fd)) => {
                let data = self.mem.check(r.data, r.len).map_err(&err)?;
                // SAFETY: the buffer was checked to lie in guest memory.
                let n = unsafe { libc::read(fd, data.cast(), r.len as usize) };
                if n > 0 {
                    r.len = n as u64;
                    r.ret = SoloResult::Ok as u32;
                } else if n == 0 || os_error().raw_os_error() == Some(libc::EAGAIN) {
                    r.ret = SoloResult::Again as u32;
                } else {
                    return Err(fatal!("Fatal error when reading: {}", strerror(&os_error())));
                }
            }
        }
        self.mem.write_obj(gpa, &r).map_err(&err)
    }

    fn halt(&self, gpa: u64) -> Result<Outcome, Exit> {
        let err = guest(Hypercall::Halt);
        let h: HcHalt = self.mem.read_obj(gpa).map_err(&err)?;
        if h.cookie != 0 {
            // The cookie points at the guest's trap frame; a debug tender
            // would dump it. Checked all the same, as Solo5 does.
            self.mem.check(h.cookie, HALT_COOKIE_MAX).map_err(&err)?;
        }
        Ok(Outcome::Halt(h.exit_status))
    }
}
