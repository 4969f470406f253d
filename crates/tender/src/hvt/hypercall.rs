//! The hypercall handlers.
//!
//! Each handler reads its argument struct through the checked path, checks
//! the device handle and every pointer and length in it, performs the host
//! operation and writes the results back. Guest mistakes that Solo5 reports
//! as results (a bad handle, an out-of-range block) become `SOLO5_R_EINVAL`;
//! guest memory violations and host I/O failures end the guest.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use solo5_abi::hvt::{
    HALT_COOKIE_MAX, HcBlockFlush, HcBlockRead, HcHalt, HcNetRead, HcNetRxOffload, HcNetWrite, HcPoll, HcPuts,
    HcWalltime, Hypercall, TrapRegs,
};
use solo5_abi::mft::MftType;
use solo5_abi::{SoloResult, spt::INTERNAL_TIMERFD};

/// The epoll data of the net I/O thread's failure eventfd in POLL's wait
/// set (not a NIC's handle, nor the timer's).
const FAILURE_DATA: u64 = INTERNAL_TIMERFD - 1;

// BLOCK_READ is served with BLOCK_WRITE's code: same fields, same offsets.
const _: () = assert!(
    std::mem::size_of::<solo5_abi::hvt::HcBlockWrite>() == std::mem::size_of::<HcBlockRead>()
        && std::mem::offset_of!(solo5_abi::hvt::HcBlockWrite, ret) == std::mem::offset_of!(HcBlockRead, ret)
        && std::mem::offset_of!(solo5_abi::hvt::HcBlockWrite, data) == std::mem::offset_of!(HcBlockRead, data)
);

use super::memory::{Gpa, GuestMemory, InvalidAccess};
use super::ring::{Failure, Flushing};
use crate::devices::Devices;
use crate::host::{Tender, WaitSet};
use crate::{Exit, block, fatal, strerror};

/// What the vCPU loop does after a hypercall.
#[derive(Debug)]
pub enum Outcome {
    /// Resume the guest.
    Resume,
    /// The guest halted with this status.
    Halt(i32, Option<TrapRegs>),
}

/// The state the hypercalls need.
#[derive(Debug)]
pub struct Hypercalls<'m> {
    mem: &'m GuestMemory,
    devices: Devices,
    block: bool,
    net: bool,
    wait: WaitSet,
    npollfds: usize,
    /// Where the net I/O thread leaves its error: a POLL it interrupts
    /// returns at once so that the vCPU loop can report it.
    failure: Arc<Failure>,
    /// Per manifest index: the guest has flushed this block device, so it
    /// knows to, and its writes go through the cached descriptor. Shared
    /// with the ring's I/O thread, which flushes too.
    flushing: Flushing,
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
    pub fn new(
        mem: &'m GuestMemory,
        devices: Devices,
        failure: Arc<Failure>,
        flushing: Flushing,
    ) -> Result<Hypercalls<'m>, Exit> {
        let wait = WaitSet::new(Tender::Hvt, INTERNAL_TIMERFD)?;
        if let Some(fd) = failure.wake_fd() {
            wait.add(fd, FAILURE_DATA)?;
        }
        let mut npollfds = 0;
        for i in devices.attached(MftType::NetBasic) {
            if let Some((_, fd)) = devices.get(i as u64, MftType::NetBasic) {
                wait.add_exclusive(fd, i as u64)?;
                npollfds += 1;
            }
        }
        Ok(Hypercalls {
            mem,
            block: devices.has_block(),
            net: devices.has_net(),
            devices,
            wait,
            npollfds,
            failure,
            flushing,
        })
    }

    /// The devices, for the net ring.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// The descriptors the seccomp policy must allow: (epoll, timerfd).
    pub fn wait_fds(&self) -> (i32, i32) {
        (self.wait.epoll.as_raw_fd(), self.wait.timerfd.as_raw_fd())
    }

    /// The descriptor the net I/O thread writes when it fails.
    pub fn failure_fd(&self) -> Option<i32> {
        self.failure.wake_fd()
    }

    /// Handles hypercall `nr` with its argument at `gpa`.
    pub fn handle(&mut self, nr: u16, gpa: Gpa) -> Result<Outcome, Exit> {
        let hc = match Hypercall::from_nr(nr) {
            Some(Hypercall::BlockRead | Hypercall::BlockWrite) if !self.block => None,
            Some(Hypercall::NetRead | Hypercall::NetWrite) if !self.net => None,
            other => other,
        };
        match hc {
            Some(Hypercall::Walltime) => self.walltime(gpa),
            Some(Hypercall::Puts) => self.puts(gpa),
            Some(Hypercall::Poll) => self.poll(gpa).map(|_| ()),
            Some(Hypercall::BlockWrite) => self.block_io(gpa, true),
            Some(Hypercall::BlockRead) => self.block_io(gpa, false),
            Some(Hypercall::NetWrite) => self.net_write(gpa),
            Some(Hypercall::NetRead) => self.net_read(gpa),
            Some(Hypercall::Halt) => return self.halt(gpa),
            None => return Err(fatal!("Invalid guest hypercall: num={nr}")),
        }?;
        Ok(Outcome::Resume)
    }

    fn walltime(&self, gpa: Gpa) -> Result<(), Exit> {
        let mut arg = self.mem.arg::<HcWalltime>(gpa).map_err(guest(Hypercall::Walltime))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        arg.set(&HcWalltime { nsecs: now.as_nanos() as u64 });
        Ok(())
    }

    fn puts(&self, gpa: Gpa) -> Result<(), Exit> {
        let err = guest(Hypercall::Puts);
        let p: HcPuts = self.mem.read_obj(gpa).map_err(&err)?;
        let data = self.mem.readable(Gpa(p.data), p.len).map_err(&err)?;
        let mut off = 0usize;
        while off < data.len() {
            // SAFETY: the slice is checked, readable guest memory of
            // data.len() bytes, and off < data.len().
            let n = unsafe { libc::write(1, data.as_ptr().add(off).cast(), data.len() - off) };
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

    /// Answers a POLL at once: the devices in `ready` have input (frames
    /// the net ring's posted buffers hold; see [`super::ring::RingThread::poll`]).
    pub fn poll_ready(&self, gpa: Gpa, ready: u64) -> Result<(), Exit> {
        let mut arg = self.mem.arg::<HcPoll>(gpa).map_err(guest(Hypercall::Poll))?;
        let mut p = arg.get();
        p.ready_set = ready;
        p.ret = ready.count_ones() as i32;
        arg.set(&p);
        Ok(())
    }

    /// POLL: waits for the timeout or a NIC, and answers; the NICs ready,
    /// as its ready set.
    pub fn poll(&self, gpa: Gpa) -> Result<u64, Exit> {
        self.poll_timer(gpa)?;
        self.poll_wait(gpa)
    }

    /// The first half of POLL: arms its timeout.
    pub fn poll_timer(&self, gpa: Gpa) -> Result<(), Exit> {
        let p = self.mem.arg::<HcPoll>(gpa).map_err(guest(Hypercall::Poll))?.get();
        let it = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (p.timeout_nsecs / 1_000_000_000).min(i64::MAX as u64) as i64,
                // Never zero, which would disarm the timer and sleep forever.
                tv_nsec: ((p.timeout_nsecs % 1_000_000_000) | 1) as i64,
            },
        };
        // SAFETY: timerfd is ours; it points to a valid itimerspec.
        if unsafe { libc::timerfd_settime(self.wait.timerfd.as_raw_fd(), 0, &it, std::ptr::null_mut()) } < 0 {
            return Err(fatal!("timerfd_settime() failed: {}", strerror(&os_error())));
        }
        Ok(())
    }

    /// The second half of POLL, once [`Hypercalls::poll_timer`] armed
    /// the timeout: waits for it or a NIC, and answers; the NICs ready,
    /// as its ready set.
    pub fn poll_wait(&self, gpa: Gpa) -> Result<u64, Exit> {
        // The I/O thread's failure stops the vCPU with a signal, which a
        // wait for the ring's lock before this one may have taken: the
        // vCPU loop reports the error next.
        if self.failure.failed() {
            return Ok(0);
        }
        let mut arg = self.mem.arg::<HcPoll>(gpa).map_err(guest(Hypercall::Poll))?;
        let mut p = arg.get();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 65];
        let max = (self.npollfds + 2).min(events.len());
        let n = loop {
            // SAFETY: events has room for `max` entries.
            let n = unsafe {
                libc::epoll_pwait(self.wait.epoll.as_raw_fd(), events.as_mut_ptr(), max as i32, -1, std::ptr::null())
            };
            if n < 0 {
                let e = os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(fatal!("epoll_pwait() failed: {}", strerror(&e)));
                }
            }
            // Woken by the failure's eventfd or its signal: the vCPU loop
            // reports the I/O thread's error next.
            if self.failure.failed() {
                return Ok(0);
            }
            if n >= 0 {
                break n as usize;
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
        arg.set(&p);
        Ok(ready)
    }

    fn block_entry(&self, handle: u64, offset: u64, len: u64) -> Option<i32> {
        let (e, mut fd) = self.devices.get(handle, MftType::BlockBasic)?;
        if self.flushing.get(handle as usize).is_some_and(|f| f.load(Ordering::Relaxed)) {
            fd = self.devices.flush_fd(handle)?;
        }
        block::in_range(offset, len, e.block_capacity()).then_some(fd)
    }

    /// BLOCK_WRITE and BLOCK_READ, whose argument structs share a layout.
    fn block_io(&self, gpa: Gpa, write: bool) -> Result<(), Exit> {
        let err = guest(if write { Hypercall::BlockWrite } else { Hypercall::BlockRead });
        let mut arg = self.mem.arg::<HcBlockRead>(gpa).map_err(&err)?;
        let mut a = arg.get();
        self.block_io_of(&mut a, write)?;
        arg.set(&a);
        Ok(())
    }

    /// As [`Self::block_io`], for an argument read once already: its
    /// `ret` set.
    fn block_io_of(&self, a: &mut HcBlockRead, write: bool) -> Result<(), Exit> {
        let err = guest(if write { Hypercall::BlockWrite } else { Hypercall::BlockRead });
        a.ret = match self.block_entry(a.handle, a.offset, a.len) {
            None => SoloResult::Inval as u32,
            Some(fd) => {
                let n = if write {
                    let data = self.mem.readable(Gpa(a.data), a.len).map_err(&err)?;
                    // SAFETY: the slice is checked, readable guest memory
                    // of a.len bytes.
                    unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), a.offset as i64) }
                } else {
                    let mut data = self.mem.writable(Gpa(a.data), a.len).map_err(&err)?;
                    // SAFETY: the slice is checked, writable guest memory
                    // of a.len bytes.
                    unsafe { libc::pread(fd, data.as_mut_ptr().cast(), data.len(), a.offset as i64) }
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
        Ok(())
    }

    /// Ours (an `outl` to [`solo5_abi::hvt::BLOCK_FLUSH_PIO`]): syncs a
    /// block device granted flushes. Writes before a guest's first flush
    /// went through the `O_DSYNC` descriptor and are on the disk already;
    /// from then on they go through the cached one, and each flush is one
    /// `fdatasync` of the file (which covers both descriptors).
    pub fn block_flush(&mut self, gpa: Gpa) -> Result<(), Exit> {
        let err = |e| fatal!("BlockFlush hypercall: {e}");
        let mut arg = self.mem.arg::<HcBlockFlush>(gpa).map_err(err)?;
        let mut f = arg.get();
        f.ret = match self.devices.flush_fd(f.handle) {
            None => SoloResult::Inval as u32,
            Some(fd) => {
                self.flushing[f.handle as usize].store(true, Ordering::Relaxed);
                block::sync(fd).map_err(|e| fatal!("Fatal error when flushing: {}", strerror(&e)))?;
                SoloResult::Ok as u32
            }
        };
        arg.set(&f);
        Ok(())
    }

    /// Ours (an `outl` to [`solo5_abi::hvt::BLOCK_WRITE_SYNC_PIO`] with
    /// the address of a BLOCK_WRITE argument): the write, then the flush,
    /// of a block device granted flushes, in one exit; `EINVAL` for any
    /// other device, and for a write BLOCK_WRITE would refuse (then
    /// nothing is synced).
    pub fn block_write_sync(&mut self, gpa: Gpa) -> Result<(), Exit> {
        let err = |e| fatal!("BlockWriteSync hypercall: {e}");
        let mut arg = self.mem.arg::<HcBlockRead>(gpa).map_err(err)?;
        let mut a = arg.get();
        let Some(fd) = self.devices.flush_fd(a.handle) else {
            a.ret = SoloResult::Inval as u32;
            arg.set(&a);
            return Ok(());
        };
        self.flushing[a.handle as usize].store(true, Ordering::Relaxed);
        // The argument as read once: the I/O thread may write guest memory
        // (a frame into a posted buffer) while this exit lasts, so what is
        // written, and whether it is synced, is decided from this copy.
        self.block_io_of(&mut a, true)?;
        arg.set(&a);
        if a.ret == SoloResult::Ok as u32 {
            block::sync(fd).map_err(|e| fatal!("Fatal error when flushing: {}", strerror(&e)))?;
        }
        Ok(())
    }

    /// Ours (an `outl` to [`solo5_abi::hvt::NET_RX_OFFLOAD_PIO`], offered
    /// with the ring's checksum offload): receive offload on a network
    /// device whose tap carries virtio-net headers (all of them, then).
    /// The ring's commits pass each frame's header flags on already.
    pub fn net_rx_offload(&mut self, gpa: Gpa) -> Result<(), Exit> {
        let err = |e| fatal!("NetRxOffload hypercall: {e}");
        let mut arg = self.mem.arg::<HcNetRxOffload>(gpa).map_err(err)?;
        let mut a = arg.get();
        a.ret = match self.devices.get(a.handle, MftType::NetBasic) {
            Some((_, fd)) if self.devices.vnet[a.handle as usize] => {
                // Once per device: TUNSETOFFLOAD takes the host's RTNL
                // lock, which a guest asking in a loop would keep busy.
                let done = &mut self.devices.rx_offload[a.handle as usize];
                if *done.get_or_insert_with(|| tap::receive_offload(&fd).is_ok()) {
                    SoloResult::Ok as u32
                } else {
                    SoloResult::Unspec as u32
                }
            }
            _ => SoloResult::Inval as u32,
        };
        arg.set(&a);
        Ok(())
    }

    fn net_write(&self, gpa: Gpa) -> Result<(), Exit> {
        let err = guest(Hypercall::NetWrite);
        let mut arg = self.mem.arg::<HcNetWrite>(gpa).map_err(&err)?;
        let mut w = arg.get();
        w.ret = match self.devices.get(w.handle, MftType::NetBasic) {
            None => SoloResult::Inval as u32,
            Some((_, fd)) => {
                let data = self.mem.readable(Gpa(w.data), w.len).map_err(&err)?;
                // SAFETY: the slice is checked, readable guest memory.
                let n = unsafe {
                    tap::write_frame(
                        fd,
                        self.devices.vnet[w.handle as usize],
                        tap::vnet_hdr(None),
                        data.as_ptr(),
                        data.len(),
                    )
                };
                if n < 0 {
                    return Err(fatal!("Fatal error when writing: {}", strerror(&os_error())));
                }
                if n as u64 != w.len {
                    return Err(fatal!("Fatal error: wrote only {n} out of {} bytes", w.len));
                }
                SoloResult::Ok as u32
            }
        };
        arg.set(&w);
        Ok(())
    }

    fn net_read(&self, gpa: Gpa) -> Result<(), Exit> {
        let err = guest(Hypercall::NetRead);
        let mut arg = self.mem.arg::<HcNetRead>(gpa).map_err(&err)?;
        let mut r = arg.get();
        match self.devices.get(r.handle, MftType::NetBasic) {
            None => r.ret = SoloResult::Inval as u32,
            Some((_, fd)) => {
                let mut data = self.mem.writable(Gpa(r.data), r.len).map_err(&err)?;
                // SAFETY: the slice is checked, writable guest memory.
                let (n, flags) = unsafe {
                    tap::read_frame_flags(fd, self.devices.vnet[r.handle as usize], data.as_mut_ptr(), data.len())
                };
                if n > 0 {
                    r.len = n as u64;
                    r.ret = SoloResult::Ok as u32;
                    // Ours, in Solo5's padding: what a guest with receive
                    // offload needs of the header (HcNetRead::flags).
                    r.flags = flags as u32;
                } else if n == 0 || os_error().raw_os_error() == Some(libc::EAGAIN) {
                    r.ret = SoloResult::Again as u32;
                } else {
                    return Err(fatal!("Fatal error when reading: {}", strerror(&os_error())));
                }
            }
        }
        arg.set(&r);
        Ok(())
    }

    fn halt(&self, gpa: Gpa) -> Result<Outcome, Exit> {
        let err = guest(Hypercall::Halt);
        let h: HcHalt = self.mem.read_obj(gpa).map_err(&err)?;
        let mut trap = None;
        if h.cookie != 0 {
            // The cookie points at the guest's trap frame, for the core
            // dump. Checked for Solo5's 512 bytes, as Solo5 does.
            self.mem.readable(Gpa(h.cookie), HALT_COOKIE_MAX).map_err(&err)?;
            trap = Some(self.mem.read_obj(Gpa(h.cookie)).map_err(&err)?);
        }
        Ok(Outcome::Halt(h.exit_status, trap))
    }
}
