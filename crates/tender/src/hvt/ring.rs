//! The host side of the net ring: an I/O thread that serves the guest's
//! network requests from shared memory (see [`solo5_abi::ring`]), and its
//! durable block writes where offered
//! ([`solo5_abi::hvt::FEATURE_RING_BLOCK`]). A block write is the one
//! entry taken (`ent_head` moved past it) before it is done: a serve
//! request waits for it.
//!
//! The thread spins a while on `ent_tail` after each batch, then sets
//! `needs_kick` and sleeps on an eventfd that KVM signals when the guest
//! writes to the kick port (an ioeventfd: no exit to this process). Writes
//! are batched; a read first publishes the writes before it, then posts its
//! commit. Every guest address in an entry is bounds-checked, and a guest
//! that breaks the protocol is stopped with a message.
//!
//! The vCPU's thread may serve the ring too ([`RingThread::serve_now`], on
//! the guest's `outl` to [`solo5_abi::hvt::RING_SERVE_PIO`]). A guest that
//! waits for a read's commit would otherwise spin until the I/O thread
//! runs; on a host whose cores are all busy, that thread may wait a whole
//! time slice behind the spinning vCPU, and a flood of frames then drains
//! at a few a millisecond. A lock keeps the two servers apart.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use solo5_abi::SoloResult;
use solo5_abi::ring::{
    OP_BLOCK_WRITE_SYNC, OP_NET_READ, OP_NET_WRITE, RING_MASK, RING_POLL_ITERS, RING_SIZE, Ring, csum_request,
};
use vmm_sys_util::eventfd::EventFd;

use super::memory::{Gpa, GuestMemory};
use crate::{Exit, fatal, strerror, warn};

/// The running I/O thread.
#[derive(Debug)]
pub struct RingThread {
    stop: Arc<AtomicBool>,
    eventfd: Arc<EventFd>,
    server: Arc<Server>,
    handle: Option<JoinHandle<()>>,
}

/// A NIC the thread may serve: manifest index, tap descriptor, and whether
/// the tap carries virtio-net headers.
pub type Nic = (u32, i32, bool);

/// A block device granted flushes, which the thread may write and sync
/// ([`solo5_abi::ring::OP_BLOCK_WRITE_SYNC`]): manifest index, the cached
/// descriptor flushes go through, and the capacity in bytes.
pub type RingBlock = (u32, i32, u64);

/// Per manifest index, whether the guest has flushed that block device
/// (its writes then go through the cached descriptor): shared by the
/// hypercalls and the ring's servers.
pub type Flushing = Arc<[AtomicBool]>;

/// Creates the kick eventfd and binds it to the kick port of `vm`. On
/// failure the tender falls back to hypercalls, as Solo5 does.
pub fn kick_eventfd(vm: &VmFd) -> Option<EventFd> {
    let efd = match EventFd::new(libc::EFD_CLOEXEC) {
        Ok(efd) => efd,
        Err(e) => {
            warn(format_args!("eventfd() failed, falling back to hypercalls: {}", strerror(&e)));
            return None;
        }
    };
    let port = IoEventAddress::Pio(u64::from(solo5_abi::hvt::RING_KICK_PIO_BASE));
    if let Err(e) = vm.register_ioevent(&efd, &port, NoDatamatch) {
        let e = std::io::Error::from_raw_os_error(e.errno());
        warn(format_args!("KVM_IOEVENTFD failed, falling back to hypercalls: {}", strerror(&e)));
        return None;
    }
    Some(efd)
}

/// How the I/O thread ends the guest: it leaves its error here and stops
/// the vCPU, whose loop returns the error to the one place that maps errors
/// to exit statuses ([`crate::exit_with`]). Only that thread exits the
/// process.
#[derive(Debug)]
pub struct Failure {
    exit: Mutex<Option<Exit>>,
    /// The vCPU to stop; none where hypercalls are served without one (a
    /// test or fuzz harness driving the handlers directly).
    vcpu: Option<VcpuStopper>,
}

/// What stops the vCPU from another thread: KVM's `immediate_exit` flag in
/// the vCPU's shared `kvm_run` page, which makes the next `KVM_RUN` return
/// `EINTR` at once, and a signal that interrupts a `KVM_RUN` (or a POLL's
/// `epoll_pwait`) already under way.
#[derive(Debug)]
pub struct VcpuStopper {
    /// The process's id (asked once: the seccomp filter forbids getpid).
    pid: libc::pid_t,
    /// The vCPU thread's id.
    tid: libc::pid_t,
    /// `kvm_run.immediate_exit` in the vCPU's mapping, which lives as long
    /// as the vCPU, and so as long as the tender runs the guest.
    immediate_exit: *const AtomicU8,
}

// SAFETY: the pointer is to a byte of the kvm_run mapping, which outlives
// every thread that holds the stopper (the I/O thread is joined before the
// vCPU is dropped); the byte is only accessed atomically.
unsafe impl Send for VcpuStopper {}
// SAFETY: as above.
unsafe impl Sync for VcpuStopper {}

/// The signal that interrupts the vCPU thread; its handler does nothing.
pub const STOP_SIGNAL: libc::c_int = libc::SIGUSR1;

impl VcpuStopper {
    /// The stopper of the vCPU run on the calling thread.
    pub fn for_this_thread(vcpu: &mut kvm_ioctls::VcpuFd) -> VcpuStopper {
        let run = vcpu.get_kvm_run();
        VcpuStopper {
            // SAFETY: getpid and gettid have no preconditions.
            pid: unsafe { libc::getpid() },
            // SAFETY: as above.
            tid: unsafe { libc::gettid() },
            immediate_exit: std::ptr::addr_of_mut!(run.immediate_exit).cast::<AtomicU8>(),
        }
    }

    fn stop(&self) {
        // SAFETY: the pointer is valid (see VcpuStopper); u8 and AtomicU8
        // have the same layout.
        unsafe { &*self.immediate_exit }.store(1, Ordering::SeqCst);
        // SAFETY: signals our own process's vCPU thread; the handler of
        // STOP_SIGNAL does nothing.
        unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.tid, STOP_SIGNAL) };
    }
}

impl Failure {
    /// A failure slot for the vCPU that `vcpu` stops.
    pub fn new(vcpu: VcpuStopper) -> Failure {
        Failure { exit: Mutex::new(None), vcpu: Some(vcpu) }
    }

    /// A failure slot with no vCPU to stop, for serving hypercalls outside
    /// a VM (tests, fuzzing).
    pub fn detached() -> Failure {
        Failure { exit: Mutex::new(None), vcpu: None }
    }

    /// Records `exit` (the first one wins) and stops the vCPU.
    fn fail(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        drop(slot);
        if let Some(v) = &self.vcpu {
            v.stop();
        }
    }

    /// The error the I/O thread left, if any.
    pub fn take(&self) -> Option<Exit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether the I/O thread has failed.
    pub fn failed(&self) -> bool {
        self.exit.lock().map(|s| s.is_some()).unwrap_or(true)
    }
}

/// What serves the ring's entries: the I/O thread, or the vCPU's thread on
/// the guest's request. One at a time: `serving` is held while entries are
/// consumed, since `ent_head` and `com_tail` have a single writer each.
#[derive(Debug)]
struct Server {
    mem: Arc<GuestMemory>,
    ring_gpa: u64,
    nics: Vec<Nic>,
    /// Whether checksums and segmentation may be left to the host
    /// ([`solo5_abi::hvt::FEATURE_NET_CSUM`], [`solo5_abi::hvt::FEATURE_NET_TSO`]):
    /// every tap has headers.
    csum: bool,
    blocks: Vec<RingBlock>,
    flushing: Flushing,
    /// An [`OP_BLOCK_WRITE_SYNC`] is taken (`ent_head` past it) and not yet
    /// committed: a serve request then waits for it (on `serving`).
    block_in_flight: AtomicBool,
    serving: Mutex<()>,
}

struct Worker {
    server: Arc<Server>,
    eventfd: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    failure: Arc<Failure>,
}

impl RingThread {
    /// Whether the ring takes checksums for the host to complete and
    /// segments for it to cut ([`solo5_abi::hvt::FEATURE_NET_CSUM`],
    /// [`solo5_abi::hvt::FEATURE_NET_TSO`]).
    pub fn offers_csum(&self) -> bool {
        self.server.csum
    }

    /// Whether the ring takes durable block writes
    /// ([`solo5_abi::hvt::FEATURE_RING_BLOCK`]): some device is granted
    /// flushes.
    pub fn offers_block(&self) -> bool {
        !self.server.blocks.is_empty()
    }

    /// Starts serving the ring at `ring_gpa` for `nics` and `blocks`; a
    /// failure ends up in `failure`.
    pub fn start(
        mem: Arc<GuestMemory>,
        ring_gpa: u64,
        (nics, blocks, flushing): (Vec<Nic>, Vec<RingBlock>, Flushing),
        eventfd: EventFd,
        failure: Arc<Failure>,
    ) -> Result<RingThread, Exit> {
        if mem.host_ptr(ring_gpa, std::mem::size_of::<Ring>() as u64).is_none() {
            return Err(fatal!("net ring at 0x{ring_gpa:x} is outside guest memory"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let eventfd = Arc::new(eventfd);
        let csum = !nics.is_empty() && nics.iter().all(|&(_, _, hdr)| hdr);
        let server = Arc::new(Server {
            mem,
            ring_gpa,
            nics,
            csum,
            blocks,
            flushing,
            block_in_flight: AtomicBool::new(false),
            serving: Mutex::new(()),
        });
        let worker = Worker { server: server.clone(), eventfd: eventfd.clone(), stop: stop.clone(), failure };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("net-ring".into())
            .spawn(move || {
                // Everything the C library and the Rust runtime set up for a
                // new thread (its malloc arena among them) must happen before
                // the tender installs its seccomp filter; so allocate once,
                // then tell the main thread the thread is ready.
                drop(std::hint::black_box(Box::new([0u8; 64])));
                let _ = ready_tx.send(());
                worker.run()
            })
            .map_err(|e| fatal!("Could not start the net I/O thread: {e}"))?;
        ready_rx.recv().map_err(|_| fatal!("the net I/O thread failed to start"))?;
        Ok(RingThread { stop, eventfd, server, handle: Some(handle) })
    }

    /// Serves the ring's pending entries on the calling thread (the vCPU's,
    /// on the guest's `outl` to the serve port), waiting for the I/O thread
    /// if it is serving them now, a durable block write it has taken
    /// included: every entry is done when this returns. A protocol error
    /// is returned, to end the guest as the I/O thread would.
    pub fn serve_now(&self) -> Result<(), Exit> {
        let ring = self
            .server
            .ring()
            .ok_or_else(|| fatal!("net ring at 0x{:x} is outside guest memory", self.server.ring_gpa))?;
        // Nothing pending and nothing in flight: the guest, stopped in this
        // exit, cannot add any, so the lock (taken before every hypercall)
        // is not needed.
        if ring.ent_head.load(Ordering::Acquire) == ring.ent_tail.load(Ordering::Acquire)
            && !self.server.block_in_flight.load(Ordering::Acquire)
        {
            return Ok(());
        }
        self.server.process(ring)
    }

    /// The thread's eventfd, which the seccomp policy must let it read.
    pub fn eventfd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    /// Stops the thread and waits for it (the HALT hook).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.eventfd.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RingThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Server {
    fn ring(&self) -> Option<&Ring> {
        let p = self.mem.host_ptr(self.ring_gpa, std::mem::size_of::<Ring>() as u64)?;
        // SAFETY: the range is inside the guest mapping, which lives as long
        // as self.mem; the ring GPA is 2 MiB aligned, so the struct is
        // aligned; every field of Ring is an atomic, so sharing it with the
        // guest (which may write anything at any time) is sound.
        Some(unsafe { &*p.cast::<Ring>() })
    }

    fn nic_fd(&self, handle: u32) -> Option<(i32, bool)> {
        self.nics.iter().find(|(i, _, _)| *i == handle).map(|&(_, fd, hdr)| (fd, hdr))
    }
}

impl Worker {
    fn run(self) {
        if let Err(e) = self.serve() {
            self.failure.fail(e);
        }
    }

    fn serve(&self) -> Result<(), Exit> {
        let ring = self
            .server
            .ring()
            .ok_or_else(|| fatal!("net ring at 0x{:x} is outside guest memory", self.server.ring_gpa))?;
        while !self.stop.load(Ordering::Relaxed) {
            let mut found = false;
            for _ in 0..RING_POLL_ITERS {
                if ring.ent_head.load(Ordering::Acquire) != ring.ent_tail.load(Ordering::Acquire) {
                    found = true;
                    break;
                }
                std::hint::spin_loop();
            }
            if !found {
                ring.needs_kick.store(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if ring.ent_head.load(Ordering::Acquire) == ring.ent_tail.load(Ordering::Acquire)
                    && let Err(e) = self.eventfd.read()
                    && e.kind() != std::io::ErrorKind::Interrupted
                {
                    return Err(fatal!("net I/O thread: reading its eventfd failed: {}", strerror(&e)));
                }
                ring.needs_kick.store(0, Ordering::Release);
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.server.process(ring)?;
        }
        Ok(())
    }
}

/// Posts the commit of entry `id` at `com_tail`.
fn post_commit(ring: &Ring, id: u32, ret: SoloResult, len: u32, flags: u32) {
    let com_tail = ring.com_tail.load(Ordering::Relaxed);
    let c = &ring.commits[(com_tail & RING_MASK) as usize];
    c.id.store(id, Ordering::Relaxed);
    c.ret.store(ret as u32, Ordering::Relaxed);
    c.len.store(len, Ordering::Relaxed);
    c.flags.store(flags, Ordering::Relaxed);
    ring.com_tail.store(com_tail.wrapping_add(1), Ordering::Release);
}

impl Server {
    /// An [`OP_BLOCK_WRITE_SYNC`]: the write through the device's cached
    /// descriptor, then its `fdatasync`, as the BLOCK_WRITE_SYNC_PIO
    /// hypercall does. EINVAL, and nothing written, for a device not granted
    /// flushes or a range outside it; a buffer outside guest memory, or a
    /// failing host, ends the guest.
    fn block_write_sync(&self, handle: u32, offset: u64, data: u64, len: u32) -> Result<SoloResult, Exit> {
        let Some(&(_, fd, capacity)) = self.blocks.iter().find(|b| b.0 == handle) else {
            return Ok(SoloResult::Inval);
        };
        if !crate::block::in_range(offset, len as u64, capacity) {
            return Ok(SoloResult::Inval);
        }
        let buf = self.mem.readable(Gpa(data), len as u64).map_err(|e| fatal!("block ring write: {e}"))?;
        // SAFETY: the slice is checked, readable guest memory of `len` bytes.
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset as i64) };
        if n < 0 {
            return Err(fatal!("Fatal error when writing: {}", strerror(&std::io::Error::last_os_error())));
        }
        if n as u64 != len as u64 {
            return Err(fatal!("Fatal error: wrote only {n} out of {len} bytes"));
        }
        if let Some(f) = self.flushing.get(handle as usize) {
            f.store(true, Ordering::Relaxed);
        }
        crate::block::sync(fd).map_err(|e| fatal!("Fatal error when flushing: {}", strerror(&e)))?;
        Ok(SoloResult::Ok)
    }

    fn process(&self, ring: &Ring) -> Result<(), Exit> {
        let _serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let tail = ring.ent_tail.load(Ordering::Acquire);
        let mut head = ring.ent_head.load(Ordering::Relaxed);
        if tail.wrapping_sub(head) > RING_SIZE {
            return Err(fatal!(
                "net ring: guest submitted {} entries, the ring holds {RING_SIZE}",
                tail.wrapping_sub(head)
            ));
        }
        let mut pending_writes = 0u32;
        while head != tail {
            let ent = &ring.entries[(head & RING_MASK) as usize];
            let op = ent.operation.load(Ordering::Relaxed);
            let handle = ent.handle.load(Ordering::Relaxed);
            let data = ent.data.load(Ordering::Relaxed);
            let len = ent.len.load(Ordering::Relaxed);
            match op {
                OP_NET_WRITE => {
                    if let Some((fd, hdr)) = self.nic_fd(handle) {
                        let frame =
                            self.mem.readable(Gpa(data), len as u64).map_err(|e| fatal!("net ring write: {e}"))?;
                        // A checksum to complete and a segment to cut,
                        // where offered (all taps with headers); elsewhere
                        // the field is Solo5's reserved one, and ignored.
                        let vnet = if hdr && self.csum {
                            let csum = ent.csum.load(Ordering::Relaxed);
                            match csum_request(csum, len, true).map_err(|_| {
                                fatal!("net ring: a write asks for a checksum the frame does not hold: {csum:#x} for {len} bytes")
                            })? {
                                None => tap::vnet_hdr(None),
                                Some((start, offset, 0)) => tap::vnet_hdr(Some((start, offset))),
                                Some((start, offset, segment)) => {
                                    // Ethernet, IP and TCP headers fit.
                                    let mut headers = [0u8; 192];
                                    let n = frame.copy_prefix(&mut headers);
                                    tap::vnet_hdr_segmented(&headers[..n], (start, offset), segment).ok_or_else(|| {
                                        fatal!("net ring: a write asks to cut a TCP segment the frame does not hold: {csum:#x} for {len} bytes")
                                    })?
                                }
                            }
                        } else {
                            tap::vnet_hdr(None)
                        };
                        // SAFETY: the slice is checked, readable guest memory.
                        let n = unsafe { tap::write_frame(fd, hdr, vnet, frame.as_ptr(), frame.len()) };
                        if n < 0 {
                            let e = std::io::Error::last_os_error();
                            return Err(fatal!("Fatal write error on net device: {}", strerror(&e)));
                        }
                        if n as u64 != len as u64 {
                            return Err(fatal!("Fatal write error: wrote only {n} out of {len} bytes"));
                        }
                    }
                    pending_writes += 1;
                    head = head.wrapping_add(1);
                }
                OP_NET_READ => {
                    if pending_writes > 0 {
                        ring.ent_head.store(head, Ordering::Release);
                        pending_writes = 0;
                    }
                    let id = ent.id.load(Ordering::Relaxed);
                    let (ret, got, flags) = match self.nic_fd(handle) {
                        None => (SoloResult::Inval, 0, 0),
                        Some((fd, hdr)) => {
                            let mut buf =
                                self.mem.writable(Gpa(data), len as u64).map_err(|e| fatal!("net ring read: {e}"))?;
                            // SAFETY: the slice is checked, writable guest memory.
                            let (n, flags) = unsafe { tap::read_frame_flags(fd, hdr, buf.as_mut_ptr(), buf.len()) };
                            if n > 0 {
                                (SoloResult::Ok, n as u32, flags as u32)
                            } else if n == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                                (SoloResult::Again, 0, 0)
                            } else {
                                (SoloResult::Inval, 0, 0)
                            }
                        }
                    };
                    head = head.wrapping_add(1);
                    post_commit(ring, id, ret, got, flags);
                    ring.ent_head.store(head, Ordering::Release);
                }
                OP_BLOCK_WRITE_SYNC => {
                    let id = ent.id.load(Ordering::Relaxed);
                    let offset = ent.csum.load(Ordering::Relaxed);
                    // Taken before it is done: the guest waiting for the
                    // commit then knows the thread is at work (the write's
                    // bytes are the guest's own, not the arena's, so the
                    // slot may be reused). In flight until the commit, set
                    // before `ent_head` moves so that a serve request that
                    // sees the entry taken waits for it (the lock is held).
                    self.block_in_flight.store(true, Ordering::Release);
                    head = head.wrapping_add(1);
                    ring.ent_head.store(head, Ordering::Release);
                    pending_writes = 0;
                    let ret = self.block_write_sync(handle, offset, data, len).inspect_err(|_| {
                        self.block_in_flight.store(false, Ordering::Release);
                    })?;
                    post_commit(ring, id, ret, if ret == SoloResult::Ok { len } else { 0 }, 0);
                    self.block_in_flight.store(false, Ordering::Release);
                }
                // Unknown operations are skipped, as Solo5 does.
                _ => {
                    pending_writes += 1;
                    head = head.wrapping_add(1);
                }
            }
        }
        if pending_writes > 0 {
            ring.ent_head.store(head, Ordering::Release);
        }
        Ok(())
    }
}
