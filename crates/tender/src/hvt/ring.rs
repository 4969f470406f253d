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
//! Where the guest posts receive buffers
//! ([`solo5_abi::hvt::FEATURE_RING_POSTED`], [`OP_NET_POST_READ`]), the
//! thread keeps them and fills them as frames arrive: it sleeps in `epoll`
//! on its eventfd and, edge-triggered, on the taps the guest posted
//! buffers for, so that a frame wakes it and a guest consumes frames
//! without waiting for or asking anyone. The guest's POLL answers at once
//! if commits wait, and otherwise fills them on the vCPU's thread from the
//! taps that end its wait, before it answers ([`RingThread::poll`]).
//!
//! The vCPU's thread may serve the ring too ([`RingThread::serve_now`], on
//! the guest's `outl` to [`solo5_abi::hvt::RING_SERVE_PIO`]). A guest that
//! waits for a read's commit would otherwise spin until the I/O thread
//! runs; on a host whose cores are all busy, that thread may wait a whole
//! time slice behind the spinning vCPU, and a flood of frames then drains
//! at a few a millisecond. A lock keeps the two servers apart.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use solo5_abi::SoloResult;
use solo5_abi::ring::{
    OP_BLOCK_WRITE_SYNC, OP_NET_POST_READ, OP_NET_READ, OP_NET_WRITE, RING_MASK, RING_POLL_ITERS, RING_SIZE, Ring,
    csum_request,
};
use vmm_sys_util::eventfd::EventFd;

use super::memory::{Gpa, GuestMemory};
use crate::{Exit, fatal, strerror, warn};

/// The running I/O thread.
#[derive(Debug)]
pub struct RingThread {
    stop: Arc<AtomicBool>,
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
    /// Written once at the failure, and never read: in POLL's wait set,
    /// it wakes a POLL that began after the signal was sent (between its
    /// look at the slot and its wait), which the signal alone would leave
    /// sleeping until its deadline.
    wake: Option<EventFd>,
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
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            // The system call, not glibc's gettid(): the standard library
            // declares that symbol weak, so a statically linked tender (the
            // one `mirage package --oci` packs) would call a null pointer.
            // SAFETY: gettid takes no arguments and cannot fail.
            tid: unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t,
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
    pub fn new(vcpu: VcpuStopper) -> Result<Failure, Exit> {
        let wake = EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)
            .map_err(|e| fatal!("eventfd() failed: {}", strerror(&e)))?;
        Ok(Failure { exit: Mutex::new(None), vcpu: Some(vcpu), wake: Some(wake) })
    }

    /// A failure slot with no vCPU to stop, for serving hypercalls outside
    /// a VM (tests, fuzzing).
    pub fn detached() -> Failure {
        Failure { exit: Mutex::new(None), vcpu: None, wake: None }
    }

    /// The descriptor POLL's wait set holds to be woken by a failure (the
    /// seccomp policy lets the failing thread write it).
    pub fn wake_fd(&self) -> Option<i32> {
        self.wake.as_ref().map(|w| w.as_raw_fd())
    }

    /// Records `exit` (the first one wins) and stops the vCPU.
    fn fail(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
        }
        drop(slot);
        if let Some(w) = &self.wake {
            // A counter of 1 cannot overflow; nothing else writes it.
            let _ = w.write(1);
        }
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
    /// The I/O thread's wait set: its eventfd, and (edge-triggered) the
    /// taps the guest has posted receive buffers for.
    epoll: OwnedFd,
    /// The guest has posted a receive buffer: its POLL then goes through
    /// [`RingThread::poll`].
    posting: AtomicBool,
    /// The I/O thread woke for work while the vCPU's thread held the lock,
    /// and left the work to it instead of waiting (see [`Server::run`]).
    pending: AtomicBool,
    /// The I/O thread's kick eventfd: the guest's kicks (an ioeventfd),
    /// a stop, and the vCPU's thread waking it to spin or for work it left
    /// as it let go of the lock.
    eventfd: EventFd,
    serving: Mutex<Serving>,
}

/// What only the server holding the lock touches.
#[derive(Debug)]
struct Serving {
    /// Per NIC (as `Server::nics` lists them): the receive buffers posted
    /// and not yet filled, in the order posted, filled from the back (see
    /// [`OP_NET_POST_READ`]): entry id, guest address, length.
    posted: Vec<VecDeque<(u32, u64, u32)>>,
    /// Buffers posted across NICs, at most [`RING_SIZE`].
    total: usize,
    /// Per NIC: its tap is in the I/O thread's wait set.
    armed: Vec<bool>,
}

/// The epoll data of the I/O thread's eventfd; a tap's is its NIC's index.
const EVENTFD_DATA: u64 = u64::MAX;

/// How long the I/O thread spins for the guest's next entry before it
/// sleeps, once the guest posts receive buffers, and once woken by a POLL
/// that ends with frames: the guest is then about to answer or forward
/// them, and a spinning thread sends its frames while the vCPU is still
/// on its way out to POLL, a VM exit sooner (about 40 µs on the nested
/// KVM of DESIGN.md, where the round trips through the router took twice
/// as long without it). Between its looks the thread yields its core
/// (`sched_yield`) to any thread waiting for it there: on a host with
/// fewer cores than busy threads (the vCPU, this thread, the peer's
/// process) the one it waits for is often that thread, which a spin that
/// held the core would keep from producing the work.
const POSTED_SPIN_NS: u64 = 50_000;

struct Worker {
    server: Arc<Server>,
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
        let csum = !nics.is_empty() && nics.iter().all(|&(_, _, hdr)| hdr);
        let epoll = crate::host::epoll_create().map_err(|e| fatal!("epoll_create1() failed: {}", strerror(&e)))?;
        epoll_add(&epoll, eventfd.as_raw_fd(), libc::EPOLLIN as u32, EVENTFD_DATA)?;
        let serving = Serving {
            posted: nics.iter().map(|_| VecDeque::new()).collect(),
            total: 0,
            armed: vec![false; nics.len()],
        };
        let server = Arc::new(Server {
            mem,
            ring_gpa,
            nics,
            csum,
            blocks,
            flushing,
            block_in_flight: AtomicBool::new(false),
            epoll,
            posting: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            eventfd,
            serving: Mutex::new(serving),
        });
        let worker = Worker { server: server.clone(), stop: stop.clone(), failure };
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
        Ok(RingThread { stop, server, handle: Some(handle) })
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
        let mut s = self.server.lock();
        self.server.entries(&mut s, ring)?;
        self.server.release(s, ring)
    }

    /// Whether the guest posts receive buffers: its POLL hypercalls must
    /// then go through [`RingThread::poll`].
    pub fn posting(&self) -> bool {
        self.server.posting.load(Ordering::Relaxed)
    }

    /// Serves a POLL hypercall of a guest that posts receive buffers:
    /// serves the ring's pending entries, then has `answer` answer the POLL
    /// at once with the devices that have frames waiting in commits
    /// (`Some`), or wait as POLL does (`None`) and say which devices are
    /// ready, the ring's lock held: the I/O thread cannot take a frame
    /// from a tap the POLL waits on (it waits on the lock, with nothing
    /// else to do while the guest is in this exit), so the frame that ends
    /// the wait is still there to fill, here, before the guest resumes.
    /// Frames a tap held before the wait end it at once (the wait is
    /// level-triggered), so they need no read before it. The caller arms
    /// the POLL's timeout first: the writes the entries hold are answered
    /// soon, and an answer that came before the wait began would wake the
    /// I/O thread instead of this one.
    pub fn poll(&self, answer: impl FnOnce(Option<u64>) -> Result<u64, Exit>) -> Result<(), Exit> {
        let ring = self
            .server
            .ring()
            .ok_or_else(|| fatal!("net ring at 0x{:x} is outside guest memory", self.server.ring_gpa))?;
        let mut s = self.server.lock();
        self.server.entries(&mut s, ring)?;
        if ring.com_tail.load(Ordering::Relaxed) != ring.com_head.load(Ordering::Acquire) {
            // Which devices the waiting commits are for is the guest's to
            // sort out: every device with buffers may be.
            answer(Some(self.server.armed_handles(&s)))?;
        } else {
            let ready = answer(None)?;
            // Frames came after a wait: the guest is about to answer or
            // forward them. A sleeping I/O thread is woken, now so that
            // it is up by then, to spin for the guest's writes.
            if ready & self.server.armed_handles(&s) != 0 && ring.needs_kick.load(Ordering::Acquire) != 0 {
                let _ = self.server.eventfd.write(1);
            }
            self.server.fill_only(&mut s, ring, ready)?;
        }
        self.server.release(s, ring)
    }

    /// The thread's eventfd, which the seccomp policy must let it read.
    pub fn eventfd(&self) -> i32 {
        self.server.eventfd.as_raw_fd()
    }

    /// The thread's epoll descriptor, which the seccomp policy must let it
    /// wait on and add taps to.
    pub fn epoll(&self) -> i32 {
        self.server.epoll.as_raw_fd()
    }

    /// Stops the thread and waits for it (the HALT hook).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.server.eventfd.write(1);
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

    fn lock(&self) -> MutexGuard<'_, Serving> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handles, as a POLL ready set, of the NICs the guest posts
    /// receive buffers for.
    fn armed_handles(&self, s: &Serving) -> u64 {
        self.nics
            .iter()
            .zip(&s.armed)
            .filter(|&(&(handle, _, _), &armed)| armed && handle < 64)
            .fold(0, |set, (&(handle, _, _), _)| set | 1 << handle)
    }
}

/// Adds `fd` to the wait set `epoll` for `events`, with `data`.
fn epoll_add(epoll: &OwnedFd, fd: i32, events: u32, data: u64) -> Result<(), Exit> {
    crate::host::epoll_add(epoll, fd, events, data).map_err(|e| fatal!("epoll_ctl() failed: {}", strerror(&e)))
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
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        while !self.stop.load(Ordering::Relaxed) {
            let pending = || ring.ent_head.load(Ordering::Acquire) != ring.ent_tail.load(Ordering::Acquire);
            let mut found = false;
            if self.server.posting.load(Ordering::Relaxed) {
                // The taps are looked at too (a wait that does not sleep),
                // so that a guest spinning for input while this thread is
                // awake gets its frames without an exit (see the guest's
                // idle spin).
                let since = std::time::Instant::now();
                while !found && since.elapsed().as_nanos() < POSTED_SPIN_NS as u128 && !self.stop.load(Ordering::SeqCst)
                {
                    for _ in 0..64 {
                        if pending() {
                            found = true;
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    // A kick is work too: it may be `release`'s, for
                    // work left to this thread.
                    found = found || self.wait_events(&mut events, 0)? != (false, false);
                    if !found {
                        // SAFETY: sched_yield has no arguments and cannot
                        // fail on Linux.
                        unsafe { libc::sched_yield() };
                    }
                }
            } else {
                for _ in 0..RING_POLL_ITERS {
                    if pending() {
                        found = true;
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            if !found {
                ring.needs_kick.store(1, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                let mut woken = (false, false);
                // A stop asked for while the spin above took the eventfd's
                // count is seen here: `stop` is set before the eventfd is
                // written.
                if ring.ent_head.load(Ordering::Acquire) == ring.ent_tail.load(Ordering::Acquire)
                    && !self.stop.load(Ordering::SeqCst)
                {
                    woken = self.wait_events(&mut events, -1)?;
                }
                ring.needs_kick.store(0, Ordering::Release);
                // Woken by the vCPU to spin for the guest's writes (see
                // `RingThread::poll`): nothing to do until they come. But
                // work `release` left to this thread is done now.
                if !woken.0 && !pending() && !self.server.pending.load(Ordering::SeqCst) {
                    continue;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.server.run(ring, &self.stop)?;
        }
        Ok(())
    }

    /// Waits, up to `timeout` ms (-1: for ever, 0: not at all), for a
    /// kick, a stop, or a frame on a tap the guest posted receive buffers
    /// for: whether a tap had one, and whether the eventfd was written.
    fn wait_events(&self, events: &mut [libc::epoll_event], timeout: i32) -> Result<(bool, bool), Exit> {
        // SAFETY: events has room for its length in entries.
        let n = unsafe {
            libc::epoll_pwait(
                self.server.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok((false, false));
            }
            return Err(fatal!("net I/O thread: epoll_pwait() failed: {}", strerror(&e)));
        }
        let kicked = events[..n as usize].iter().any(|ev| ev.u64 == EVENTFD_DATA);
        if kicked {
            // Readable, so this does not block.
            if let Err(e) = self.server.eventfd.read()
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(fatal!("net I/O thread: reading its eventfd failed: {}", strerror(&e)));
            }
        }
        Ok((events[..n as usize].iter().any(|ev| ev.u64 != EVENTFD_DATA), kicked))
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

    /// The I/O thread's work once woken: serves the pending entries and
    /// fills the posted buffers until there is nothing left to do. Where
    /// the vCPU's thread holds the lock (a POLL, or a serve request), the
    /// I/O thread does not wait for it: it leaves the work to that thread,
    /// which does it as it lets go of the lock ([`Server::release`]). A
    /// frame that arrives just as the guest makes POLL wakes the I/O
    /// thread (the POLL does not wait yet), and waiting for the lock
    /// then made the two threads take turns through each frame.
    fn run(&self, ring: &Ring, stop: &AtomicBool) -> Result<(), Exit> {
        self.pending.store(true, Ordering::SeqCst);
        loop {
            let mut s = match self.serving.try_lock() {
                Ok(s) => s,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            };
            self.pending.store(false, Ordering::SeqCst);
            // Work begets work: a batch of frames filled or entries served
            // is looked for again at once, before the spin.
            while (self.entries(&mut s, ring)? | (self.fill(&mut s, ring)? != 0)) && !stop.load(Ordering::Relaxed) {}
            drop(s);
            if !self.pending.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }

    /// Lets go of the lock the vCPU's thread holds, first doing the work
    /// the I/O thread left to it meanwhile; work left as it lets go wakes
    /// the I/O thread.
    fn release(&self, mut s: MutexGuard<'_, Serving>, ring: &Ring) -> Result<(), Exit> {
        while self.pending.swap(false, Ordering::SeqCst) {
            self.entries(&mut s, ring)?;
            self.fill(&mut s, ring)?;
        }
        drop(s);
        if self.pending.load(Ordering::SeqCst) {
            let _ = self.eventfd.write(1);
        }
        Ok(())
    }

    /// Fills the posted receive buffers with the frames the taps hold,
    /// each NIC's last posted first, while fewer than [`RING_SIZE`]
    /// commits wait for the guest: the handles that got frames, as a POLL
    /// ready set.
    fn fill(&self, s: &mut Serving, ring: &Ring) -> Result<u64, Exit> {
        self.fill_only(s, ring, u64::MAX)
    }

    /// As [`Server::fill`], for the NICs whose handles are in `handles` (a
    /// POLL ready set; handles past 63 are always in it).
    fn fill_only(&self, s: &mut Serving, ring: &Ring, handles: u64) -> Result<u64, Exit> {
        let mut filled = 0u64;
        if s.total == 0 {
            return Ok(0);
        }
        for (i, &(handle, fd, hdr)) in self.nics.iter().enumerate() {
            if handle < 64 && handles & 1 << handle == 0 {
                continue;
            }
            while let Some(&(id, data, len)) = s.posted[i].back() {
                // The guest's com_head, whatever it holds, only stops this.
                let waiting = ring.com_tail.load(Ordering::Relaxed).wrapping_sub(ring.com_head.load(Ordering::Acquire));
                if waiting >= RING_SIZE {
                    return Ok(filled);
                }
                let mut buf =
                    self.mem.writable(Gpa(data), len as u64).map_err(|e| fatal!("net ring posted read: {e}"))?;
                // SAFETY: the slice is checked, writable guest memory.
                let (n, flags) = unsafe { tap::read_frame_flags(fd, hdr, buf.as_mut_ptr(), buf.len()) };
                let ret = if n > 0 {
                    SoloResult::Ok
                } else if n == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                    break;
                } else {
                    SoloResult::Inval
                };
                s.posted[i].pop_back();
                s.total -= 1;
                post_commit(ring, id, ret, n.max(0) as u32, flags as u32);
                if ret != SoloResult::Ok {
                    break;
                }
                if handle < 64 {
                    filled |= 1 << handle;
                }
            }
        }
        Ok(filled)
    }

    /// Keeps a receive buffer the guest posts for `handle`, and has the I/O
    /// thread wait on its tap from the first one on.
    fn post(&self, s: &mut Serving, ring: &Ring, (handle, id, data, len): (u32, u32, u64, u32)) -> Result<(), Exit> {
        let Some(i) = self.nics.iter().position(|n| n.0 == handle).filter(|_| len > 0) else {
            post_commit(ring, id, SoloResult::Inval, 0, 0);
            return Ok(());
        };
        self.mem.writable(Gpa(data), len as u64).map_err(|e| fatal!("net ring posted read: {e}"))?;
        if s.total >= RING_SIZE as usize {
            return Err(fatal!("net ring: guest posted more than {RING_SIZE} receive buffers"));
        }
        if !s.armed[i] {
            // Edge-triggered: a frame that arrives while no buffer is
            // posted wakes the thread once, not until one is. Exclusive:
            // a frame that arrives while the guest waits in POLL, which
            // fills the buffers itself, wakes only the POLL (see
            // `WaitSet::add_exclusive`).
            let events = libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE;
            epoll_add(&self.epoll, self.nics[i].1, events as u32, i as u64)?;
            s.armed[i] = true;
            self.posting.store(true, Ordering::Relaxed);
        }
        s.posted[i].push_back((id, data, len));
        s.total += 1;
        Ok(())
    }

    /// Serves the pending entries: whether there were any.
    fn entries(&self, s: &mut Serving, ring: &Ring) -> Result<bool, Exit> {
        let tail = ring.ent_tail.load(Ordering::Acquire);
        let mut head = ring.ent_head.load(Ordering::Relaxed);
        let start = head;
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
                        // Ethernet, IP and TCP headers fit.
                        let mut headers = [0u8; 192];
                        let mut head = 0;
                        let vnet = if hdr && self.csum {
                            let csum = ent.csum.load(Ordering::Relaxed);
                            match csum_request(csum, len, true).map_err(|_| {
                                fatal!("net ring: a write asks for a checksum the frame does not hold: {csum:#x} for {len} bytes")
                            })? {
                                None => tap::vnet_hdr(None),
                                Some((start, offset, 0)) => tap::vnet_hdr(Some((start, offset))),
                                Some((_, _, segment)) if segment < tap::VNET_MIN_SEGMENT => {
                                    return Err(fatal!(
                                        "net ring: a write asks to cut a TCP segment with a segment size of {segment}, below {} bytes",
                                        tap::VNET_MIN_SEGMENT
                                    ));
                                }
                                Some((start, offset, segment)) => {
                                    let n = frame.copy_prefix(&mut headers);
                                    let vnet = tap::vnet_hdr_segmented(&headers[..n], (start, offset), segment)
                                        .ok_or_else(|| {
                                            fatal!("net ring: a write asks to cut a TCP segment the frame does not hold: {csum:#x} for {len} bytes")
                                        })?;
                                    // The headers go from the copy they were
                                    // checked in: the guest may rewrite its
                                    // own while the host reads the frame.
                                    head = u16::from_le_bytes([vnet[2], vnet[3]]) as usize;
                                    vnet
                                }
                            }
                        } else {
                            tap::vnet_hdr(None)
                        };
                        let n = if head > 0 {
                            // SAFETY: the slice is checked, readable guest
                            // memory, and `head` (the headers' length, which
                            // `vnet_hdr_segmented` found within the copy of
                            // its first bytes) is at most its length.
                            unsafe {
                                let rest = frame.as_ptr().add(head);
                                tap::write_frame_headed(fd, vnet, &headers[..head], rest, frame.len() - head)
                            }
                        } else {
                            // SAFETY: the slice is checked, readable guest memory.
                            unsafe { tap::write_frame(fd, hdr, vnet, frame.as_ptr(), frame.len()) }
                        };
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
                OP_NET_POST_READ => {
                    let id = ent.id.load(Ordering::Relaxed);
                    self.post(s, ring, (handle, id, data, len))?;
                    pending_writes += 1;
                    head = head.wrapping_add(1);
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
        Ok(head != start)
    }
}
