//! The host side of the net ring: an I/O thread that serves the guest's
//! network requests from shared memory (see [`solo5_abi::ring`]).
//!
//! The thread spins a while on `ent_tail` after each batch, then sets
//! `needs_kick` and sleeps on an eventfd that KVM signals when the guest
//! writes to the kick port (an ioeventfd: no exit to this process). Writes
//! are batched; a read first publishes the writes before it, then posts its
//! commit. Every guest address in an entry is bounds-checked, and a guest
//! that breaks the protocol is stopped with a message.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::thread::JoinHandle;

use solo5_abi::SoloResult;
use solo5_abi::ring::{OP_NET_READ, OP_NET_WRITE, RING_MASK, RING_POLL_ITERS, RING_SIZE, Ring};

use super::memory::GuestMemory;
use crate::{Exit, fatal, strerror, warn};

/// The running I/O thread.
#[derive(Debug)]
pub struct RingThread {
    stop: Arc<AtomicBool>,
    eventfd: Arc<OwnedFd>,
    handle: Option<JoinHandle<()>>,
}

/// A NIC the thread may serve: manifest index and tap descriptor.
pub type Nic = (u32, i32);

/// `KVM_IOEVENTFD` = `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`.
const KVM_IOEVENTFD: libc::c_ulong = 0x4040_AE79;
const KVM_IOEVENTFD_FLAG_PIO: u32 = 1 << 1;

/// Creates the kick eventfd and binds it to the kick port of `vm_fd`. On
/// failure the tender falls back to hypercalls, as Solo5 does.
pub fn kick_eventfd(vm_fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain eventfd(2); the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        warn(format_args!("eventfd() failed, falling back to hypercalls: {}", strerror(&std::io::Error::last_os_error())));
        return None;
    }
    // SAFETY: efd is fresh and owned by nothing else.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let mut ioev = kvm_bindings::kvm_ioeventfd {
        datamatch: 0,
        addr: solo5_abi::hvt::RING_KICK_PIO_BASE as u64,
        len: 4,
        fd: efd.as_raw_fd(),
        flags: KVM_IOEVENTFD_FLAG_PIO,
        ..Default::default()
    };
    // SAFETY: KVM_IOEVENTFD reads a struct kvm_ioeventfd, which ioev is.
    if unsafe { libc::ioctl(vm_fd, KVM_IOEVENTFD, &mut ioev) } < 0 {
        warn(format_args!(
            "KVM_IOEVENTFD failed, falling back to hypercalls: {}",
            strerror(&std::io::Error::last_os_error())
        ));
        return None;
    }
    Some(efd)
}

struct Worker {
    mem: Arc<GuestMemory>,
    ring_gpa: u64,
    nics: Vec<Nic>,
    eventfd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
}

impl RingThread {
    /// Starts serving the ring at `ring_gpa`.
    pub fn start(mem: Arc<GuestMemory>, ring_gpa: u64, nics: Vec<Nic>, eventfd: OwnedFd) -> Result<RingThread, Exit> {
        if mem.host_ptr(ring_gpa, std::mem::size_of::<Ring>() as u64).is_none() {
            return Err(fatal!("net ring at 0x{ring_gpa:x} is outside guest memory"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let eventfd = Arc::new(eventfd);
        let worker = Worker { mem, ring_gpa, nics, eventfd: eventfd.clone(), stop: stop.clone() };
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
        Ok(RingThread { stop, eventfd, handle: Some(handle) })
    }

    /// Stops the thread and waits for it (the HALT hook).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let one = 1u64;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
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

/// Ends the tender from the I/O thread: the guest broke the protocol or the
/// host failed.
fn die(msg: String) -> ! {
    warn(msg);
    std::process::exit(1)
}

impl Worker {
    fn ring(&self) -> &Ring {
        let p = self.mem.host_ptr(self.ring_gpa, std::mem::size_of::<Ring>() as u64).expect("checked in start()");
        // SAFETY: the range is inside the guest mapping, which lives as long
        // as self.mem; the ring GPA is 2 MiB aligned, so the struct is
        // aligned; every field of Ring is an atomic, so sharing it with the
        // guest (which may write anything at any time) is sound.
        unsafe { &*p.cast::<Ring>() }
    }

    fn nic_fd(&self, handle: u32) -> Option<i32> {
        self.nics.iter().find(|(i, _)| *i == handle).map(|&(_, fd)| fd)
    }

    fn run(self) {
        let ring = self.ring();
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
                if ring.ent_head.load(Ordering::Acquire) == ring.ent_tail.load(Ordering::Acquire) {
                    let mut val = 0u64;
                    // SAFETY: reading 8 bytes into a live u64 from our eventfd.
                    let r = unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut val as *mut u64).cast(), 8) };
                    if r <= 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                        break;
                    }
                }
                ring.needs_kick.store(0, Ordering::Release);
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.process(ring);
        }
    }

    fn process(&self, ring: &Ring) {
        let tail = ring.ent_tail.load(Ordering::Acquire);
        let mut head = ring.ent_head.load(Ordering::Relaxed);
        if tail.wrapping_sub(head) > RING_SIZE {
            die(format!(
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
                    if let Some(fd) = self.nic_fd(handle) {
                        let p = self
                            .mem
                            .check(data, len as u64)
                            .unwrap_or_else(|e| die(format!("net ring write: {e}")));
                        // SAFETY: the frame was checked to lie in guest memory.
                        let n = unsafe { libc::write(fd, p.cast(), len as usize) };
                        if n < 0 {
                            die(format!("Fatal write error on net device: {}", strerror(&std::io::Error::last_os_error())));
                        }
                        if n as u64 != len as u64 {
                            die(format!("Fatal write error: wrote only {n} out of {len} bytes"));
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
                    let (ret, got) = match self.nic_fd(handle) {
                        None => (SoloResult::Inval, 0),
                        Some(fd) => {
                            let p = self
                                .mem
                                .check(data, len as u64)
                                .unwrap_or_else(|e| die(format!("net ring read: {e}")));
                            // SAFETY: the buffer was checked to lie in guest memory.
                            let n = unsafe { libc::read(fd, p.cast(), len as usize) };
                            if n > 0 {
                                (SoloResult::Ok, n as u32)
                            } else if n == 0
                                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
                            {
                                (SoloResult::Again, 0)
                            } else {
                                (SoloResult::Inval, 0)
                            }
                        }
                    };
                    let com_tail = ring.com_tail.load(Ordering::Relaxed);
                    let c = &ring.commits[(com_tail & RING_MASK) as usize];
                    c.id.store(id, Ordering::Relaxed);
                    c.ret.store(ret as u32, Ordering::Relaxed);
                    c.len.store(got, Ordering::Relaxed);
                    head = head.wrapping_add(1);
                    ring.com_tail.store(com_tail.wrapping_add(1), Ordering::Release);
                    ring.ent_head.store(head, Ordering::Release);
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
    }
}
