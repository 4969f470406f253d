//! The guest side of the hvt net ring (see [`solo5_abi::ring`]): frames go
//! to and from the tender's I/O thread through shared memory, without an
//! exit unless the thread sleeps and must be kicked.
//!
//! Writes are fire-and-forget: the frame is copied into an arena of
//! write buffers and the call returns. Reads wait for the thread's commit.
//!
//! The arena is a circular buffer of bytes, not a buffer per slot: frames
//! take what they need, so that a tap with a large MTU (up to 64 KiB) has
//! its large frames carried by the ring too, without an exit each. Frames
//! are placed one after the other, in the order of their entries (a frame
//! that would straddle the arena's end starts again at its beginning), and
//! the bytes of an entry are free once the thread has moved `ent_head`
//! past it. The tender checks only that an entry's buffer is guest
//! memory, whatever its length, so nothing changes on its side.

use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, Ordering, fence};

use solo5_abi::SoloResult;
use solo5_abi::ring::{OP_NET_READ, OP_NET_WRITE, RING_BUF_SIZE, RING_MASK, RING_SIZE, Ring};

/// Bytes of write buffers: as much as a buffer per slot of
/// [`RING_BUF_SIZE`] bytes would take (2 MiB), shared by frames of any
/// size. A power of two, so that free-running `u32` positions wrap with it.
const ARENA: u32 = RING_SIZE * RING_BUF_SIZE as u32;
/// The largest frame the ring carries; larger ones take the hypercall.
const MAX_FRAME: usize = ARENA as usize / 4;
const _: () = assert!(ARENA.is_power_of_two());

use super::RING_INFO;
use crate::Error;

pub(crate) struct GuestRing {
    ring: &'static Ring,
    /// The arena of write buffers, [`ARENA`] bytes.
    bufs: *mut u8,
    /// Where the next frame goes in the arena (free-running, modulo ARENA).
    wr: AtomicU32,
    /// For each slot, where the arena stood when its entry was submitted:
    /// the entry's bytes (none for a read) start there or after it.
    starts: [AtomicU32; RING_SIZE as usize],
    next_id: AtomicU32,
}

const UNINIT: u8 = 0;
const ABSENT: u8 = 1;
const READY: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static RING: AtomicPtr<GuestRing> = AtomicPtr::new(core::ptr::null_mut());

/// The ring, if the tender offers one; set up on first use (it needs the
/// heap for its 2 MiB of write buffers).
pub(crate) fn get() -> Option<&'static GuestRing> {
    match STATE.load(Ordering::Relaxed) {
        READY => {
            // SAFETY: set once below to a leaked, never-freed GuestRing.
            Some(unsafe { &*RING.load(Ordering::Relaxed) })
        }
        ABSENT => None,
        _ => {
            let (features, gpa) = RING_INFO.with(|r| *r);
            if features & solo5_abi::hvt::FEATURE_RING_IO == 0 || gpa == 0 {
                STATE.store(ABSENT, Ordering::Relaxed);
                return None;
            }
            let size = ARENA as usize;
            let layout = core::alloc::Layout::from_size_align(size, 64).ok()?;
            // SAFETY: a non-zero-sized layout.
            let bufs = unsafe { alloc::alloc::alloc(layout) };
            if bufs.is_null() {
                STATE.store(ABSENT, Ordering::Relaxed);
                return None;
            }
            // SAFETY: the tender reserved and zeroed the ring at `gpa`
            // (2 MiB aligned, mapped by map_memory); it lives
            // as long as the guest; all of Ring's fields are atomics shared
            // with the tender's thread.
            let ring = unsafe { &*(gpa as *const Ring) };
            let r = alloc::boxed::Box::leak(alloc::boxed::Box::new(GuestRing {
                ring,
                bufs,
                wr: AtomicU32::new(0),
                starts: [const { AtomicU32::new(0) }; RING_SIZE as usize],
                next_id: AtomicU32::new(0),
            }));
            RING.store(r, Ordering::Relaxed);
            STATE.store(READY, Ordering::Relaxed);
            Some(r)
        }
    }
}

fn kick() {
    super::EXITS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: a write to the kick port, which the tender binds to an
    // ioeventfd; it traps to the CPL-0 #GP stub like a hypercall.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") solo5_abi::hvt::RING_KICK_PIO_BASE, in("eax") 0u32, options(nostack, preserves_flags));
    }
}

impl GuestRing {
    /// Waits for a free slot; returns the tail to fill.
    fn reserve(&self) -> u32 {
        let tail = self.ring.ent_tail.load(Ordering::Relaxed);
        while tail.wrapping_sub(self.ring.ent_head.load(Ordering::Acquire)) >= RING_SIZE - 1 {
            core::hint::spin_loop();
        }
        tail
    }

    fn submit(&self, tail: u32, op: u32, handle: u64, data: u64, len: u32) {
        let e = &self.ring.entries[(tail & RING_MASK) as usize];
        e.operation.store(op, Ordering::Relaxed);
        e.handle.store(handle as u32, Ordering::Relaxed);
        e.data.store(data, Ordering::Relaxed);
        e.len.store(len, Ordering::Relaxed);
        e.id.store(self.next_id.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        self.ring.ent_tail.store(tail.wrapping_add(1), Ordering::Release);
        // Order the tail store before the needs_kick load (the thread does
        // the mirror image), so a sleeping thread is always woken.
        fence(Ordering::SeqCst);
        if self.ring.needs_kick.load(Ordering::Relaxed) != 0 {
            kick();
        }
    }

    /// Sends `frame`; `None` if it is too large for the ring or the ring is
    /// bypassed (the caller then makes the hypercall).
    pub(crate) fn write(&self, handle: u64, frame: &[u8]) -> Option<Result<(), Error>> {
        if frame.len() > MAX_FRAME || self.bypass() {
            return None;
        }
        let tail = self.reserve();
        let start = self.wr.load(Ordering::Relaxed);
        let len = frame.len() as u32;
        // A frame never straddles the arena's end: the rest of the arena
        // is skipped instead.
        let room = ARENA - start % ARENA;
        let at = if len > room { start.wrapping_add(room) } else { start };
        let end = at.wrapping_add(len);
        // Wait until the thread is done with the bytes this frame takes:
        // those of the oldest entry in flight onwards are still in use.
        loop {
            let head = self.ring.ent_head.load(Ordering::Acquire);
            let used_from =
                if head == tail { start } else { self.starts[(head & RING_MASK) as usize].load(Ordering::Relaxed) };
            if end.wrapping_sub(used_from) <= ARENA {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: bytes [at, end) modulo ARENA lie inside the arena (the
        // frame does not straddle its end) and no entry in flight uses
        // them (checked above), so the thread is not reading them.
        let buf = unsafe {
            let b = self.bufs.add((at % ARENA) as usize);
            core::ptr::copy_nonoverlapping(frame.as_ptr(), b, frame.len());
            b
        };
        self.starts[(tail & RING_MASK) as usize].store(start, Ordering::Relaxed);
        self.wr.store(end, Ordering::Relaxed);
        self.submit(tail, OP_NET_WRITE, handle, buf as u64, len);
        Some(Ok(()))
    }

    /// Whether to leave the ring's sleeping I/O thread alone and make a
    /// hypercall instead.
    ///
    /// Waking the thread costs an exit (the kick) and a thread wake-up, and
    /// the scheduler tends to queue the woken thread behind this vCPU's,
    /// whose spin for the answer then lasts until its time slice ends. When
    /// traffic is sparse (the guest's last wait for input was long) one
    /// hypercall per frame is cheaper and steadier; when it is dense the
    /// thread stays awake and the ring carries frames without exits. Frames
    /// keep their order: the hypercall path is taken only with no write
    /// pending in the ring.
    fn bypass(&self) -> bool {
        super::sparse_traffic()
            && self.ring.needs_kick.load(Ordering::Acquire) != 0
            && self.ring.ent_head.load(Ordering::Acquire) == self.ring.ent_tail.load(Ordering::Relaxed)
    }

    /// Reads a frame into `buf`, waiting for the thread's answer; `None`
    /// when the caller should make the hypercall instead ([`Self::bypass`]).
    pub(crate) fn read(&self, handle: u64, buf: &mut [u8]) -> Option<Result<usize, Error>> {
        if self.bypass() {
            return None;
        }
        let tail = self.reserve();
        let len = buf.len().min(u32::MAX as usize) as u32;
        // A read takes no bytes of the arena.
        self.starts[(tail & RING_MASK) as usize].store(self.wr.load(Ordering::Relaxed), Ordering::Relaxed);
        self.submit(tail, OP_NET_READ, handle, buf.as_mut_ptr() as u64, len);
        let head = self.ring.com_head.load(Ordering::Relaxed);
        while self.ring.com_tail.load(Ordering::Acquire) == head {
            core::hint::spin_loop();
        }
        let c = &self.ring.commits[(head & RING_MASK) as usize];
        let ret = c.ret.load(Ordering::Relaxed);
        let got = c.len.load(Ordering::Relaxed) as usize;
        self.ring.com_head.store(head.wrapping_add(1), Ordering::Release);
        Some(match SoloResult::from_raw(ret) {
            SoloResult::Ok => Ok(got.min(buf.len())),
            SoloResult::Again => Err(Error::Again),
            SoloResult::Inval => Err(Error::Invalid),
            SoloResult::Unspec => Err(Error::Unspecified),
        })
    }
}
