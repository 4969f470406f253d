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
//! memory, whatever its length, so nothing changes on its side. A tender that
//! offers [`solo5_abi::hvt::FEATURE_RING_SERVE`] (ours) serves the ring on
//! the vCPU's own thread when asked; the guest asks when the I/O thread is
//! asleep or has not answered within [`SERVE_AFTER_NS`], so that a busy host
//! cannot leave the vCPU spinning through its time slice while the thread
//! it waits for waits behind it. Without the feature the guest spins, as
//! Solo5's guests do.
//!
//! Where the tender offers [`solo5_abi::hvt::FEATURE_RING_POSTED`] (ours),
//! reads are not requests the guest waits for: each interface keeps
//! receive buffers posted with the tender ([`OP_NET_POST_READ`]), which
//! its I/O thread fills as frames arrive, and a read takes the next filled
//! one, or answers that there is none, without waiting or exiting. A
//! buffer is posted again as soon as its frame is handed out. The guest's
//! POLL, which it makes when it has nothing to do (after a short spin
//! for input while the I/O thread is awake), has the tender fill the
//! buffers of the taps that end its wait itself before it answers.

use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use solo5_abi::ring::{
    OP_BLOCK_WRITE_SYNC, OP_NET_POST_READ, OP_NET_READ, OP_NET_WRITE, RING_BUF_SIZE, RING_MASK, RING_SIZE, Ring,
};

/// Bytes of write buffers at most: as much as a buffer per slot of
/// [`RING_BUF_SIZE`] bytes would take (2 MiB), shared by frames of any
/// size. A power of two, so that free-running `u32` positions wrap with it.
const ARENA: u32 = RING_SIZE * RING_BUF_SIZE as u32;
/// ... and at least: a quarter of it (the largest frame the ring carries,
/// [`GuestRing::max_frame`]) holds a 64 KiB segment with its headers.
const ARENA_LEAST: u32 = 512 * 1024;
const _: () = assert!(ARENA.is_power_of_two() && ARENA_LEAST.is_power_of_two() && ARENA_LEAST <= ARENA);
const _: () = assert!(ARENA_LEAST as usize / 4 >= solo5_abi::vnet::VNET_MAX_SEGMENTED);

/// The share of the heap each of the ring's two sets of buffers (the
/// write arena, and the receive buffers posted) may take, in sixteenths.
/// Both are the platform's, outside any peer's doing, yet they count
/// against the memory budget like the rest of the heap: at their largest
/// (2 MiB each) a unikernel of `--mem=8` (a 5 MiB heap, a budget of
/// 3.9 MiB) had no room left for a single connection.
const RING_SHARE_SIXTEENTHS: usize = 1;

/// The heap's share for one set of the ring's buffers, and the most
/// either may take whatever its floor (a quarter of the heap, so that a
/// tiny unikernel's application still has the rest), if the platform
/// gave the heap's size.
fn ring_share() -> Option<(usize, usize)> {
    mirage_runtime::memory::heap_size().map(|heap| (heap / 16 * RING_SHARE_SIXTEENTHS, heap / 4))
}

/// The write arena's size: [`ARENA`], or in a small heap the largest
/// power of two within [`ring_share`] and at least [`ARENA_LEAST`]; 0 (no
/// arena: frames go by hypercall, and the host cuts no segments) in a
/// heap whose quarter would not hold that.
fn arena_size() -> u32 {
    match ring_share() {
        Some((share, most)) if share < ARENA as usize => {
            let size = (1u32 << (share as u32).max(1).ilog2()).max(ARENA_LEAST);
            if size as usize <= most { size } else { 0 }
        }
        _ => ARENA,
    }
}

/// Bytes of receive buffers of `size` bytes for one interface: `bytes`,
/// or in a small heap [`ring_share`] and at least [`RX_LEAST`] buffers,
/// within a quarter of the heap. Less than `size` (no buffer) in a heap
/// too small: frames are then read one at a time into the caller's buffer.
fn rx_bytes(bytes: usize, size: usize) -> usize {
    match ring_share() {
        Some((share, most)) => bytes.min(share.max(RX_LEAST * size)).min(most),
        None => bytes,
    }
}

/// Receive buffers an interface keeps at least where the heap allows.
const RX_LEAST: usize = 4;

use super::RING_INFO;
use crate::Error;
use crate::target::Global;

pub(crate) struct GuestRing {
    ring: &'static Ring,
    /// The arena of write buffers, `arena` bytes, allocated at the first
    /// frame written or when the interface is asked for segmentation
    /// offload, which needs it (a guest whose ring carries only block
    /// writes never allocates it); null until then.
    bufs: AtomicPtr<u8>,
    /// The arena's size ([`arena_size`]): a power of two, or 0 for none.
    arena: u32,
    /// Where the next frame goes in the arena (free-running, modulo
    /// `arena`).
    wr: AtomicU32,
    /// For each slot, where the arena stood when its entry was submitted:
    /// the entry's bytes (none for a read) start there or after it.
    starts: [AtomicU32; RING_SIZE as usize],
    next_id: AtomicU32,
    /// Whether the tender serves the ring on request (RING_SERVE_PIO) and
    /// before each hypercall.
    serve: bool,
    /// Whether reads go through posted receive buffers
    /// ([`solo5_abi::hvt::FEATURE_RING_POSTED`]).
    posted: bool,
    /// Writes left in the ring for a sleeping I/O thread since it was last
    /// served or woken.
    unwoken: AtomicU32,
    /// When (monotonic ns, never 0) the I/O thread last failed to answer
    /// within SERVE_AFTER_NS; 0 if it never did.
    slow_at: AtomicU64,
}

/// Writes left for a sleeping I/O thread before it is woken anyway: a
/// kick costs an exit, which the next read or hypercall makes in any case
/// (and serves them), but a stream of writes with nothing in between is
/// best sent by the thread, in parallel.
const WAKE_AFTER_WRITES: u32 = 16;

/// How long the guest spins for the I/O thread before it asks the tender
/// to serve the ring itself. A woken thread answers within some tens of
/// microseconds when a core is free for it; past that it is queued behind
/// other work, possibly this vCPU's, and asking costs one exit (38 µs from
/// CPL 3 on the nested KVM of DESIGN.md, far less on hardware
/// virtualisation).
const SERVE_AFTER_NS: u64 = 50_000;

/// How long the guest spins for a durable block write the I/O thread has
/// taken before it has the tender wait for it instead: a sync on a disk
/// with a cache takes some tens of microseconds, and spinning through a
/// slow disk's milliseconds would burn the core its thread may need.
const SYNC_SPIN_NS: u64 = 1_000_000;

/// How long after the I/O thread was slow the guest stops waking it and has
/// the ring served at once: a kick that goes unanswered costs an exit for
/// nothing, and a host busy enough to queue the thread stays busy a while.
const TRUST_AGAIN_NS: u64 = 1_000_000;

const UNINIT: u8 = 0;
const ABSENT: u8 = 1;
const READY: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static RING: AtomicPtr<GuestRing> = AtomicPtr::new(core::ptr::null_mut());

/// The ring, if the tender offers one; set up on first use.
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
            // SAFETY: the tender reserved and zeroed the ring at `gpa`
            // (2 MiB aligned, mapped by map_memory); it lives
            // as long as the guest; all of Ring's fields are atomics shared
            // with the tender's thread.
            let ring = unsafe { &*(gpa as *const Ring) };
            let serve = features & solo5_abi::hvt::FEATURE_RING_SERVE != 0;
            let posted = serve && features & solo5_abi::hvt::FEATURE_RING_POSTED != 0;
            let r = alloc::boxed::Box::leak(alloc::boxed::Box::new(GuestRing {
                ring,
                bufs: AtomicPtr::new(core::ptr::null_mut()),
                arena: arena_size(),
                wr: AtomicU32::new(0),
                starts: [const { AtomicU32::new(0) }; RING_SIZE as usize],
                next_id: AtomicU32::new(0),
                serve,
                posted,
                unwoken: AtomicU32::new(0),
                slow_at: AtomicU64::new(0),
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

/// Asks the tender to serve the ring's pending entries on the vCPU's thread;
/// they are all done when this returns (a block write the I/O thread has
/// taken included: the tender waits for it).
fn serve() {
    super::EXITS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: a write to the serve port, offered by the tender with
    // FEATURE_RING_SERVE; it traps to the CPL-0 #GP stub like a hypercall.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") solo5_abi::hvt::RING_SERVE_PIO, in("eax") 0u32, options(nostack, preserves_flags));
    }
}

impl GuestRing {
    /// The largest frame the ring carries; larger ones take the hypercall
    /// (all of them without an arena).
    fn max_frame(&self) -> usize {
        self.arena as usize / 4
    }

    /// Whether the arena of write buffers is there, allocated now if it
    /// was not.
    pub(crate) fn has_arena(&self) -> bool {
        self.arena().is_some()
    }

    /// The arena of write buffers, allocated now if it was not; `None` if
    /// memory is short (frames then take the hypercall).
    fn arena(&self) -> Option<*mut u8> {
        let bufs = self.bufs.load(Ordering::Relaxed);
        if !bufs.is_null() {
            return Some(bufs);
        }
        if self.arena == 0 {
            return None;
        }
        let layout = core::alloc::Layout::from_size_align(self.arena as usize, 64).ok()?;
        // SAFETY: a non-zero-sized layout.
        let bufs = unsafe { alloc::alloc::alloc(layout) };
        if bufs.is_null() {
            return None;
        }
        self.bufs.store(bufs, Ordering::Relaxed);
        Some(bufs)
    }

    /// Whether the I/O thread lately left the guest waiting past
    /// [`SERVE_AFTER_NS`]: waking it is then not worth its exit.
    fn thread_slow(&self, now: u64) -> bool {
        let at = self.slow_at.load(Ordering::Relaxed);
        at != 0 && now.wrapping_sub(at) < TRUST_AGAIN_NS
    }

    /// Waits until `done` holds. Spins while the I/O thread may answer;
    /// asks the tender to serve the ring (if it offers to) when the thread
    /// has not answered within [`SERVE_AFTER_NS`], or at once when it sleeps
    /// and was lately slow (it was then not woken: see `read`).
    fn wait(&self, done: impl Fn() -> bool) {
        let mut since = None;
        while !done() {
            if self.serve {
                let now = super::monotonic();
                let start = *since.get_or_insert(now);
                let late = now.wrapping_sub(start) > SERVE_AFTER_NS;
                if late || (self.ring.needs_kick.load(Ordering::Acquire) != 0 && self.thread_slow(now)) {
                    if late {
                        self.slow_at.store(now.max(1), Ordering::Relaxed);
                    }
                    serve();
                    self.unwoken.store(0, Ordering::Relaxed);
                    since = None;
                    continue;
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Records that the entry at `tail` (a read) takes no bytes of the arena.
    fn no_bytes(&self, tail: u32) {
        self.starts[(tail & RING_MASK) as usize].store(self.wr.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Waits for a free slot; returns the tail to fill.
    fn reserve(&self) -> u32 {
        let tail = self.ring.ent_tail.load(Ordering::Relaxed);
        self.wait(|| tail.wrapping_sub(self.ring.ent_head.load(Ordering::Acquire)) < RING_SIZE - 1);
        tail
    }

    /// Publishes the entry at `tail`, and wakes a sleeping I/O thread if
    /// `kick_if_asleep` (the caller may instead rely on the tender serving
    /// the ring: see `wait` and WAKE_AFTER_WRITES).
    #[allow(clippy::too_many_arguments)]
    fn submit(&self, tail: u32, op: u32, handle: u64, data: u64, len: u32, csum: u64, kick_if_asleep: bool) {
        // Below POSTED_ID: the ids of posted buffers' commits are apart.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !POSTED_ID;
        self.submit_id(tail, (op, id), handle, data, len, csum, kick_if_asleep);
    }

    /// As [`GuestRing::submit`], with the entry's operation and id given.
    #[allow(clippy::too_many_arguments)]
    fn submit_id(
        &self,
        tail: u32,
        (op, id): (u32, u32),
        handle: u64,
        data: u64,
        len: u32,
        csum: u64,
        kick_if_asleep: bool,
    ) {
        let e = &self.ring.entries[(tail & RING_MASK) as usize];
        e.operation.store(op, Ordering::Relaxed);
        e.csum.store(csum, Ordering::Relaxed);
        e.handle.store(handle as u32, Ordering::Relaxed);
        e.data.store(data, Ordering::Relaxed);
        e.len.store(len, Ordering::Relaxed);
        e.id.store(id, Ordering::Relaxed);
        self.ring.ent_tail.store(tail.wrapping_add(1), Ordering::Release);
        // Order the tail store before the needs_kick load (the thread does
        // the mirror image), so a sleeping thread is always woken.
        fence(Ordering::SeqCst);
        if self.ring.needs_kick.load(Ordering::Relaxed) == 0 {
            self.unwoken.store(0, Ordering::Relaxed);
        } else if kick_if_asleep {
            kick();
            self.unwoken.store(0, Ordering::Relaxed);
        }
    }

    /// Sends `frame`; `None` if it is too large for the ring or the ring is
    /// bypassed (the caller then makes the hypercall). `csum` is the
    /// entry's checksum request (`solo5_abi::ring::csum_entry`, where the
    /// tender offers `FEATURE_NET_CSUM`), or 0.
    ///
    /// A frame that lies in a posted buffer lent out now (received, and
    /// being sent on: [`mirage_devices::net::Net::send_frame`]) is sent
    /// where it lies, without a copy. The buffer may be posted again as
    /// soon as it is given back: the thread serves entries in the ring's
    /// order, so it has written the frame before it takes the buffer's
    /// next post, which comes after this entry.
    pub(crate) fn write(&self, handle: u64, frame: &[u8], csum: u64) -> Option<Result<(), Error>> {
        // A segment for the host to cut (bits 48 and up) has no other way.
        if frame.len() > self.max_frame() || (csum >> 48 == 0 && self.bypass()) {
            return None;
        }
        if self.posted && PX.with(|px| px.lent_holds(frame)) {
            let tail = self.reserve();
            self.no_bytes(tail);
            let wake = self.wake_for_write();
            self.submit(tail, OP_NET_WRITE, handle, frame.as_ptr() as u64, frame.len() as u32, csum, wake);
            return Some(Ok(()));
        }
        self.put(handle, frame.len(), |buf| {
            buf.copy_from_slice(frame);
            Ok(((), csum))
        })
    }

    /// Sends a frame of `len` bytes that `fill` writes straight into the
    /// arena, where [`GuestRing::write`] would copy it there: `fill`
    /// returns its own result and the entry's checksum request, or an
    /// error, and then nothing is sent. `None` (and `fill` not called) if
    /// the frame is too large for the ring or the ring is bypassed: the
    /// caller then writes the frame elsewhere and sends it with `write` or
    /// the hypercall.
    pub(crate) fn write_with<R>(
        &self,
        handle: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(R, u64), Error>,
    ) -> Option<Result<R, Error>> {
        if len > self.max_frame() || self.bypass() {
            return None;
        }
        self.put(handle, len, fill)
    }

    /// Takes `len` bytes of the arena for the next entry once the thread is
    /// done with them, has `fill` write the frame there and submits it.
    fn put<R>(
        &self,
        handle: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(R, u64), Error>,
    ) -> Option<Result<R, Error>> {
        let (arena, size) = (self.arena()?, self.arena);
        let tail = self.reserve();
        let mut start = self.wr.load(Ordering::Relaxed);
        // With nothing in flight the whole arena is free: start again at
        // its beginning, so that a guest whose writes do not queue up keeps
        // to the same few pages of it (the host backs only those it
        // touches), and to the same cache lines.
        if self.ring.ent_head.load(Ordering::Acquire) == tail {
            start = start.wrapping_add((size - start % size) % size);
        }
        // len <= max_frame(), a quarter of the arena: the callers checked.
        let len = len as u32;
        // A frame never straddles the arena's end: the rest of the arena
        // is skipped instead.
        let room = size - start % size;
        let at = if len > room { start.wrapping_add(room) } else { start };
        let end = at.wrapping_add(len);
        // Wait until the thread is done with the bytes this frame takes:
        // those of the oldest entry in flight onwards are still in use.
        self.wait(|| {
            let head = self.ring.ent_head.load(Ordering::Acquire);
            let used_from =
                if head == tail { start } else { self.starts[(head & RING_MASK) as usize].load(Ordering::Relaxed) };
            end.wrapping_sub(used_from) <= size
        });
        // SAFETY: bytes [at, end) modulo `size` lie inside the arena (the
        // frame does not straddle its end) and no entry in flight uses
        // them (checked above), so the thread is not reading them; nothing
        // else refers to them until the entry is submitted.
        let buf = unsafe { core::slice::from_raw_parts_mut(arena.add((at % size) as usize), len as usize) };
        let (r, csum) = match fill(buf) {
            Ok(filled) => filled,
            Err(e) => return Some(Err(e)),
        };
        self.starts[(tail & RING_MASK) as usize].store(start, Ordering::Relaxed);
        self.wr.store(end, Ordering::Relaxed);
        let wake = self.wake_for_write();
        self.submit(tail, OP_NET_WRITE, handle, buf.as_ptr() as u64, len, csum, wake);
        Some(Ok(r))
    }

    /// Whether a write about to be submitted should wake a sleeping I/O
    /// thread (see [`WAKE_AFTER_WRITES`]).
    fn wake_for_write(&self) -> bool {
        !self.serve
            || (self.unwoken.fetch_add(1, Ordering::Relaxed) + 1 >= WAKE_AFTER_WRITES
                && !self.thread_slow(super::monotonic()))
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

    /// Reads a frame into `buf`: its length and its virtio-net header's
    /// flags ([`solo5_abi::ring::RingCommit::flags`]); `None` when the
    /// caller should make the hypercall instead ([`Self::bypass`]).
    ///
    /// Frames are read in batches into buffers of the ring's own and handed
    /// out one a call: one wait (and at most one exit) for several frames
    /// when they queue up, as under a flood, where a frame a wait would
    /// leave the guest spending more on exits than on the frames. The batch
    /// grows while every read in it finds a frame and shrinks to two (a
    /// frame and the answer that there is no other) when traffic is light.
    pub(crate) fn read(&self, handle: u64, buf: &mut [u8]) -> Option<Result<(usize, u32), Error>> {
        if self.posted {
            let size = buf.len();
            return self.posted_read(handle, size, |frame, flags| {
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                (n, flags)
            });
        }
        if let Some(got) = RX.with(|rx| rx.pop(handle, buf)) {
            return Some(Ok(got));
        }
        // A device with receive offload (a stack's) is read only through
        // the ring, in batches of at most BATCH_BYTES_SHORT: measured
        // best for a server under many connections (BENCHMARKS.md,
        // 2026-12-02), though the hypercall gives the flags too.
        if !rx_offload(handle) && self.bypass() {
            return None;
        }
        let Some(first_error) = self.fill(handle, buf.len(), BATCH_BYTES_SHORT) else {
            return Some(self.read_one(handle, buf.as_mut_ptr() as u64, buf.len()).map(|(n, f)| (n.min(buf.len()), f)));
        };
        match RX.with(|rx| rx.pop(handle, buf)) {
            Some(got) => Some(Ok(got)),
            None => Some(Err(first_error.unwrap_or(Error::Again))),
        }
    }

    /// As [`GuestRing::read`], the frame lent to `f` where it was read (one
    /// of the ring layer's buffers of `size` bytes) instead of copied out:
    /// `f`'s result, and the frame's length. `None` when the caller should
    /// read it otherwise ([`Self::bypass`], or no buffers could be had).
    pub(crate) fn read_lent<R>(
        &self,
        handle: u64,
        size: usize,
        f: impl FnOnce(&mut [u8], u32) -> R,
    ) -> Option<Result<(usize, R), Error>> {
        if self.posted {
            return self.posted_read(handle, size, |frame, flags| (frame.len(), f(frame, flags)));
        }
        let mut first_error = None;
        if !RX.with(|rx| rx.ready(handle)) {
            // A forwarder (the IP layer lends its frames) keeps the
            // sparse-traffic bypass, and reads up to 32 frames a batch
            // whatever their size: measured best for forwarding small
            // packets and for round trips (BENCHMARKS.md, 2026-12-02).
            if self.bypass() {
                return None;
            }
            first_error = self.fill(handle, size, BATCH_BYTES)?;
        }
        let Some((frame, len, flags)) = RX.with(|rx| rx.lend(handle)) else {
            return Some(Err(first_error.unwrap_or(Error::Again)));
        };
        // SAFETY: `len` bytes of the queue's buffers from `frame`, which
        // the tender has written and is done with (its commit was taken);
        // they are not read into again while lent (`Rx::batch` refuses
        // until `give_back`), and the queue's buffers are not freed while
        // it lives, which is for ever.
        let r = f(unsafe { core::slice::from_raw_parts_mut(frame, len) }, flags);
        RX.with(|rx| rx.give_back(handle));
        Some(Ok((len, r)))
    }

    /// Hands the next frame a posted buffer of `handle` holds to `f`,
    /// where it lies, and posts the buffer again; `Again` if none is
    /// filled. On the first read of `handle`, sets up and posts its buffers
    /// of `size` bytes; `None` if they cannot be had (memory is short, or
    /// enough buffers are posted), and then nothing is posted for `handle`
    /// and the caller reads it otherwise.
    fn posted_read<R>(
        &self,
        handle: u64,
        size: usize,
        f: impl FnOnce(&mut [u8], u32) -> R,
    ) -> Option<Result<R, Error>> {
        self.drain();
        if !PX.with(|px| px.has(handle)) {
            PX.with(|px| px.add(handle, size))?;
            self.post_idle(handle);
        }
        let Some((frame, len, flags)) = PX.with(|px| px.lend(handle)) else {
            return Some(Err(PX.with(|px| px.take_error(handle)).unwrap_or(Error::Again)));
        };
        // SAFETY: `len` bytes of a posted buffer the tender has filled and
        // committed (so it no longer writes there) and that is not posted
        // again until `give_back`, below; the queue's buffers are never
        // freed.
        let r = f(unsafe { core::slice::from_raw_parts_mut(frame, len) }, flags);
        // Posted back a few at a time while traffic is dense: the I/O
        // thread then reads frames into them back to back, where one at a
        // time it looked at the other taps between each two. While it is
        // sparse, at once: the next frame then lands in the buffer just
        // used, where with batches it cycled through REPOST_BATCH of them,
        // and the host backed a page of each (16 KiB more of an idle
        // website's memory, BENCHMARKS.md "static tenders").
        let batch = if super::sparse_traffic() { 1 } else { REPOST_BATCH };
        if PX.with(|px| px.give_back(handle, batch)) {
            self.post_idle(handle);
        }
        Some(Ok(r))
    }

    /// With posted buffers, while the I/O thread is awake (it fills them as
    /// frames arrive, and looks at the taps while it spins), waits for a
    /// filled one, spinning, up to [`IDLE_SPIN_NS`] or `deadline`, instead
    /// of making POLL at once: a POLL is an exit (about 40 µs on the
    /// nested KVM of DESIGN.md), and an answer or the next frame of a flow
    /// often comes sooner. The interfaces with frames, as a POLL ready set;
    /// 0 if none came, or the thread went to sleep.
    pub(crate) fn spin_for_input(&self, deadline: u64) -> u64 {
        if !self.posted {
            return 0;
        }
        // Every buffer goes back before the guest waits.
        let mut i = 0;
        while let Some(handle) = PX.with(|px| px.queues.get(i).map(|q| q.handle)) {
            self.post_idle(handle);
            i += 1;
        }
        let end = deadline.min(super::monotonic().saturating_add(IDLE_SPIN_NS));
        loop {
            if self.ring.com_tail.load(Ordering::Acquire) != self.ring.com_head.load(Ordering::Relaxed) {
                self.drain();
                let ready = PX.with(|px| px.ready_set());
                if ready != 0 {
                    return ready;
                }
            }
            if self.ring.needs_kick.load(Ordering::Acquire) != 0 || super::monotonic() >= end {
                return 0;
            }
            core::hint::spin_loop();
        }
    }

    /// Posts the buffers of `handle` that are neither posted, filled nor
    /// lent. The I/O thread is not woken for them: a frame wakes it, and
    /// the POLL the guest makes when it runs out of frames has the tender
    /// take them.
    fn post_idle(&self, handle: u64) {
        while let Some((id, data, len)) = PX.with(|px| px.next_idle(handle)) {
            let tail = self.reserve();
            self.no_bytes(tail);
            self.submit_id(tail, (OP_NET_POST_READ, id), handle, data, len, 0, false);
        }
    }

    /// Takes the commits the tender has posted: a posted buffer's goes to
    /// its interface's queue, any other (a durable block write's) is kept
    /// for its waiter.
    fn drain(&self) {
        let mut head = self.ring.com_head.load(Ordering::Relaxed);
        let tail = self.ring.com_tail.load(Ordering::Acquire);
        if head == tail {
            return;
        }
        PX.with(|px| {
            while head != tail {
                let c = &self.ring.commits[(head & RING_MASK) as usize];
                let (id, ret) = (c.id.load(Ordering::Relaxed), c.ret.load(Ordering::Relaxed));
                let (len, flags) = (c.len.load(Ordering::Relaxed), c.flags.load(Ordering::Relaxed));
                if id & POSTED_ID != 0 {
                    px.filled(id, ret, len as usize, flags);
                } else {
                    px.other = Some((id, ret));
                }
                head = head.wrapping_add(1);
            }
        });
        self.ring.com_head.store(head, Ordering::Release);
    }

    /// Reads a batch of frames ahead for `handle` into buffers of `size`
    /// bytes: `None` if no buffers could be had, else the first error
    /// a read in it met, if any.
    fn fill(&self, handle: u64, size: usize, bytes: usize) -> Option<Option<Error>> {
        let (slots, size, count) = RX.with(|rx| rx.batch(handle, size, bytes))?;
        // A sleeping thread is woken (once, for the batch): it then serves
        // the reads that follow without exits. Unless it was lately slow to
        // answer: the vCPU then has the tender serve the reads at once (see
        // `wait`), one exit instead of two.
        let wake = !self.serve || !self.thread_slow(super::monotonic());
        let head = self.ring.com_head.load(Ordering::Relaxed);
        for i in 0..count {
            let tail = self.reserve();
            self.no_bytes(tail);
            let data = slots as u64 + (i * size) as u64;
            self.submit(tail, OP_NET_READ, handle, data, size as u32, 0, wake && i + 1 == count);
        }
        let n = count as u32;
        self.wait(|| self.ring.com_tail.load(Ordering::Acquire).wrapping_sub(head) >= n);
        let mut first_error = None;
        let mut got = 0;
        for i in 0..count {
            let c = &self.ring.commits[(head.wrapping_add(i as u32) & RING_MASK) as usize];
            match Error::check(c.ret.load(Ordering::Relaxed)) {
                Ok(()) => {
                    let len = (c.len.load(Ordering::Relaxed) as usize).min(size);
                    let flags = c.flags.load(Ordering::Relaxed);
                    RX.with(|rx| rx.push(handle, i, len, flags));
                    got += 1;
                }
                Err(Error::Again) => {}
                Err(e) => _ = first_error.get_or_insert(e),
            }
        }
        self.ring.com_head.store(head.wrapping_add(n), Ordering::Release);
        RX.with(|rx| rx.done(handle, got, count));
        Some(first_error)
    }

    /// Writes `data` at byte `offset` of block device `handle` and syncs
    /// it, through the I/O thread ([`OP_BLOCK_WRITE_SYNC`]); `None` when
    /// the tender does not offer it, or the thread sleeps and was lately
    /// slow to wake (the caller then makes the hypercall, one exit).
    ///
    /// A sleeping thread is woken: that costs an exit (the kick) once, and
    /// keeps the thread awake for the writes that follow closely.
    ///
    /// The vCPU waits in the guest, spinning, while the thread writes and
    /// syncs: no exit at all for a durable write while commits follow each
    /// other closely enough to keep the thread awake. Until the thread has
    /// taken the entry the wait is `wait`'s, which has the tender serve the
    /// ring if the thread is asleep or slow; once taken, the thread is at
    /// work, and the guest asks the tender to wait for it only after
    /// [`SYNC_SPIN_NS`].
    pub(crate) fn block_write_sync(&self, handle: u64, offset: u64, data: &[u8]) -> Option<Result<(), Error>> {
        let offered = RING_INFO.with(|r| r.0) & solo5_abi::hvt::FEATURE_RING_BLOCK != 0;
        let asleep = self.ring.needs_kick.load(Ordering::Acquire) != 0;
        if !offered || data.len() > u32::MAX as usize || (asleep && self.thread_slow(super::monotonic())) {
            return None;
        }
        let tail = self.reserve();
        self.no_bytes(tail);
        // Every read that is a request waits for its commits before it
        // returns, so none is outstanding: without posted buffers, this
        // entry's commit is the next one. With them, commits of filled
        // buffers come between, and the drain sorts them out.
        let head = self.ring.com_head.load(Ordering::Relaxed);
        let id = self.next_id.load(Ordering::Relaxed) & !POSTED_ID;
        self.submit(tail, OP_BLOCK_WRITE_SYNC, handle, data.as_ptr() as u64, data.len() as u32, offset, true);
        let taken = tail.wrapping_add(1);
        self.wait(|| self.ring.ent_head.load(Ordering::Acquire).wrapping_sub(taken) < RING_SIZE);
        // Taken: a sync usually ends within the spin; past it, the disk is
        // slow or the thread waits behind this vCPU for a core, and the
        // tender's serve request sleeps until the commit is posted.
        let since = super::monotonic();
        let ret = loop {
            if self.posted {
                self.drain();
                if let Some(ret) = PX.with(|px| px.other.take_if(|o| o.0 == id).map(|o| o.1)) {
                    break ret;
                }
            } else if self.ring.com_tail.load(Ordering::Acquire) != head {
                let c = &self.ring.commits[(head & RING_MASK) as usize];
                debug_assert_eq!(c.id.load(Ordering::Relaxed), id);
                let ret = c.ret.load(Ordering::Relaxed);
                self.ring.com_head.store(head.wrapping_add(1), Ordering::Release);
                break ret;
            }
            if super::monotonic().wrapping_sub(since) > SYNC_SPIN_NS {
                serve();
                continue;
            }
            core::hint::spin_loop();
        };
        Some(Error::check(ret))
    }

    /// One read into `data`, for when no batch buffers could be had.
    fn read_one(&self, handle: u64, data: u64, len: usize) -> Result<(usize, u32), Error> {
        let tail = self.reserve();
        self.no_bytes(tail);
        let wake = !self.serve || !self.thread_slow(super::monotonic());
        self.submit(tail, OP_NET_READ, handle, data, len.min(u32::MAX as usize) as u32, 0, wake);
        let head = self.ring.com_head.load(Ordering::Relaxed);
        self.wait(|| self.ring.com_tail.load(Ordering::Acquire) != head);
        let c = &self.ring.commits[(head & RING_MASK) as usize];
        let ret = c.ret.load(Ordering::Relaxed);
        let got = c.len.load(Ordering::Relaxed) as usize;
        let flags = c.flags.load(Ordering::Relaxed);
        self.ring.com_head.store(head.wrapping_add(1), Ordering::Release);
        Error::check(ret).map(|()| (got, flags))
    }
}

/// Reads at most this many frames in one batch.
const BATCH_MAX: usize = 32;
/// ... and at most this many bytes of buffers per interface, for large
/// frames, where frames are lent ([`GuestRing::read_lent`]): 32 of 64
/// KiB, so that a forwarder with receive offload (whose every buffer must
/// hold a 64 KiB segment) still reads a flood of small frames 32 a wait.
/// The host backs only the pages frames are read into: a small frame
/// touches one page of its buffer.
const BATCH_BYTES: usize = 32 * 64 * 1024;
/// Where frames are copied out ([`GuestRing::read`]), or memory is short
/// for [`BATCH_BYTES`], this many.
const BATCH_BYTES_SHORT: usize = 256 * 1024;

/// Frames read ahead, per interface.
struct RxQueue {
    handle: u64,
    /// At most `BATCH_MAX` buffers of `size` bytes (see `BATCH_BYTES`).
    bufs: Vec<u8>,
    size: usize,
    /// Frames read and not yet handed out, in order: buffer index, length,
    /// header flags.
    ready: VecDeque<(usize, usize, u32)>,
    /// Reads in the next batch.
    next: usize,
    /// A frame of `bufs` is lent out ([`GuestRing::read_lent`]): no batch
    /// may read into them until it is given back.
    lent: bool,
}

/// The read-ahead of every interface read through the ring.
struct Rx(Vec<RxQueue>);

static RX: Global<Rx> = Global::new(Rx(Vec::new()));

impl Rx {
    fn queue(&mut self, handle: u64) -> Option<&mut RxQueue> {
        self.0.iter_mut().find(|q| q.handle == handle)
    }

    /// Hands out the next frame read ahead for `handle`, copied into `buf`,
    /// with its flags.
    fn pop(&mut self, handle: u64, buf: &mut [u8]) -> Option<(usize, u32)> {
        let q = self.queue(handle)?;
        let (i, len, flags) = q.ready.pop_front()?;
        let n = len.min(buf.len());
        buf[..n].copy_from_slice(&q.bufs[i * q.size..i * q.size + n]);
        Some((n, flags))
    }

    /// Whether a frame is read ahead for `handle`.
    fn ready(&mut self, handle: u64) -> bool {
        self.queue(handle).is_some_and(|q| !q.ready.is_empty())
    }

    /// Lends the next frame read ahead for `handle`, where it lies: its
    /// address, length and flags. The queue reads nothing more until
    /// [`Rx::give_back`].
    fn lend(&mut self, handle: u64) -> Option<(*mut u8, usize, u32)> {
        let q = self.queue(handle).filter(|q| !q.lent)?;
        let (i, len, flags) = q.ready.pop_front()?;
        q.lent = true;
        // In bounds: `i` is a buffer of the batch, `len` at most its size.
        Some((q.bufs[i * q.size..].as_mut_ptr(), len.min(q.size), flags))
    }

    /// The frame [`Rx::lend`] lent out is done with.
    fn give_back(&mut self, handle: u64) {
        if let Some(q) = self.queue(handle) {
            q.lent = false;
        }
    }

    /// Buffers for the next batch of `handle`, each of at least `size`
    /// bytes: their address, size and count. `None` if memory is short.
    fn batch(&mut self, handle: u64, size: usize, bytes: usize) -> Option<(*mut u8, usize, usize)> {
        if size == 0 {
            return None;
        }
        if self.queue(handle).is_none() {
            self.0.try_reserve(1).ok()?;
            self.0.push(RxQueue { handle, bufs: Vec::new(), size: 0, ready: VecDeque::new(), next: 2, lent: false });
        }
        let q = self.queue(handle).filter(|q| !q.lent)?;
        let slots = |bytes: usize| BATCH_MAX.min(bytes / size).max(1);
        if q.size < size {
            // The queue is empty here: pop was asked first.
            let bytes = rx_bytes(bytes, size);
            if bytes < size {
                return None;
            }
            let bufs = mirage_runtime::memory::zeroed(slots(bytes).checked_mul(size)?)
                .or_else(|| mirage_runtime::memory::zeroed(slots(BATCH_BYTES_SHORT).checked_mul(size)?))?;
            let slots = bufs.len() / size;
            q.ready.try_reserve(slots).ok()?;
            q.bufs = bufs;
            q.size = size;
        }
        let slots = q.bufs.len() / q.size;
        Some((q.bufs.as_mut_ptr(), q.size, q.next.clamp(1, slots)))
    }

    fn push(&mut self, handle: u64, index: usize, len: usize, flags: u32) {
        if let Some(q) = self.queue(handle) {
            q.ready.push_back((index, len, flags));
        }
    }

    /// Sizes the next batch from this one: `got` frames of `count` reads.
    fn done(&mut self, handle: u64, got: usize, count: usize) {
        if let Some(q) = self.queue(handle) {
            q.next = if got == count { count * 2 } else { (got + 1).max(2) }.min(BATCH_MAX);
        }
    }

    /// The interfaces with frames read ahead, as a POLL ready set.
    fn ready_set(&mut self) -> u64 {
        self.0.iter().filter(|q| !q.ready.is_empty() && q.handle < 64).fold(0, |set, q| set | 1 << q.handle)
    }
}

/// The devices (by handle, below 64 as every manifest's) the tender turned
/// receive offload on for ([`solo5_abi::hvt::NET_RX_OFFLOAD_PIO`]).
static RX_OFFLOAD: AtomicU64 = AtomicU64::new(0);

/// Records that `handle` has receive offload: its frames' header flags
/// are read from now on, from the ring's commits or the hypercall's.
pub(crate) fn set_rx_offload(handle: u64) {
    if handle < 64 {
        RX_OFFLOAD.fetch_or(1 << handle, Ordering::Relaxed);
    }
}

/// Whether the tender turned receive offload on for `handle` (it is ours,
/// then, and gives each frame's flags).
pub(crate) fn rx_offload(handle: u64) -> bool {
    handle < 64 && RX_OFFLOAD.load(Ordering::Relaxed) & (1 << handle) != 0
}

/// The interfaces with frames read ahead and not yet handed out: ready
/// without asking the tender.
pub(crate) fn ready_set() -> u64 {
    if STATE.load(Ordering::Relaxed) != READY {
        return 0;
    }
    if let Some(r) = get()
        && r.posted
    {
        r.drain();
        return PX.with(|px| px.ready_set());
    }
    RX.with(Rx::ready_set)
}

/// The longest the guest spins for input before it makes POLL
/// ([`GuestRing::spin_for_input`]); the I/O thread stops spinning 50 µs
/// after its last work in any case.
const IDLE_SPIN_NS: u64 = 30_000;

/// Buffers handed back are posted again this many at a time while
/// traffic is dense (see [`Posted::give_back`]); the rest of the 32 stay
/// posted meanwhile.
const REPOST_BATCH: usize = 8;

/// Bit 31 of a posted buffer's entry id (and so of its commit's); the
/// queue's index is in bits 16 to 30, the buffer's in bits 0 to 15.
const POSTED_ID: u32 = 1 << 31;
/// Buffers posted at most, across interfaces: well within the ring's
/// [`RING_SIZE`] commits, which the tender never overruns.
const POSTED_MAX: usize = RING_SIZE as usize / 2;

/// Posted receive buffers, per interface.
struct PostedQueue {
    handle: u64,
    /// The buffers, `size` bytes each; the tender writes into those
    /// posted, so they are reached through this pointer, never through a
    /// reference to all of them. Leaked: posted buffers are never freed.
    bufs: *mut u8,
    size: usize,
    count: usize,
    /// Filled buffers not yet handed out, in the order of their frames:
    /// index, length, header flags.
    ready: VecDeque<(usize, usize, u32)>,
    /// Buffers to post: neither posted, filled nor lent.
    idle: Vec<usize>,
    /// The buffer lent out, given back before the next read.
    lent: Option<usize>,
    /// The first error a commit reported, for the next read that finds no
    /// frame.
    error: Option<Error>,
}

/// Every interface's posted buffers, and the commit of a request that
/// is not a posted buffer's (a durable block write's), kept for its waiter:
/// its id and result.
struct Posted {
    queues: Vec<PostedQueue>,
    total: usize,
    other: Option<(u32, u32)>,
}

static PX: Global<Posted> = Global::new(Posted { queues: Vec::new(), total: 0, other: None });

impl Posted {
    fn has(&self, handle: u64) -> bool {
        self.queues.iter().any(|q| q.handle == handle)
    }

    fn queue(&mut self, handle: u64) -> Option<&mut PostedQueue> {
        self.queues.iter_mut().find(|q| q.handle == handle)
    }

    /// Sets up the buffers of `handle`, `size` bytes each, all idle: as
    /// many as [`BATCH_BYTES`] (in a small heap, [`rx_bytes`]) and
    /// [`BATCH_MAX`] allow, within [`POSTED_MAX`]. `None` if memory is
    /// short or no more may be posted.
    fn add(&mut self, handle: u64, size: usize) -> Option<()> {
        if size == 0 || size > u32::MAX as usize || self.queues.len() >= 1 << 15 || self.total >= POSTED_MAX {
            return None;
        }
        let count = BATCH_MAX.min(rx_bytes(BATCH_BYTES, size) / size).min(POSTED_MAX - self.total);
        if count == 0 {
            return None;
        }
        let bufs = mirage_runtime::memory::zeroed(count.checked_mul(size)?)
            .or_else(|| mirage_runtime::memory::zeroed(count.min(BATCH_BYTES_SHORT / size).max(1) * size))?;
        let count = bufs.len() / size;
        let mut ready = VecDeque::new();
        ready.try_reserve(count).ok()?;
        let mut idle = Vec::new();
        idle.try_reserve(count).ok()?;
        idle.extend((0..count).rev());
        self.queues.try_reserve(1).ok()?;
        let bufs = bufs.leak().as_mut_ptr();
        self.queues.push(PostedQueue { handle, bufs, size, count, ready, idle, lent: None, error: None });
        self.total += count;
        Some(())
    }

    /// The next idle buffer of `handle` to post, now counted as posted:
    /// its entry id, address and size.
    fn next_idle(&mut self, handle: u64) -> Option<(u32, u64, u32)> {
        let qi = self.queues.iter().position(|q| q.handle == handle)?;
        let q = &mut self.queues[qi];
        let i = q.idle.pop()?;
        let id = POSTED_ID | (qi as u32) << 16 | i as u32;
        Some((id, q.bufs as u64 + (i * q.size) as u64, q.size as u32))
    }

    /// A posted buffer's commit: its frame is ready, or the buffer is idle
    /// again if the read failed. Ids the guest never gave are ignored.
    fn filled(&mut self, id: u32, ret: u32, len: usize, flags: u32) {
        let (qi, i) = (((id & !POSTED_ID) >> 16) as usize, (id & 0xffff) as usize);
        let Some(q) = self.queues.get_mut(qi).filter(|q| i < q.count) else { return };
        match Error::check(ret) {
            Ok(()) => q.ready.push_back((i, len.min(q.size), flags)),
            Err(e) => {
                q.error.get_or_insert(e);
                q.idle.push(i);
            }
        }
    }

    /// Lends the next filled buffer of `handle`: its address, the frame's
    /// length and flags.
    fn lend(&mut self, handle: u64) -> Option<(*mut u8, usize, u32)> {
        let q = self.queue(handle).filter(|q| q.lent.is_none())?;
        let (i, len, flags) = q.ready.pop_front()?;
        q.lent = Some(i);
        // SAFETY: buffer `i` lies within the allocation of count * size bytes.
        Some((unsafe { q.bufs.add(i * q.size) }, len, flags))
    }

    /// The lent buffer of `handle` is done with: idle, to post again.
    /// Whether enough are idle to post them (`batch`, or a quarter of the
    /// queue's buffers if that is fewer).
    fn give_back(&mut self, handle: u64, batch: usize) -> bool {
        let Some(q) = self.queue(handle) else { return false };
        if let Some(i) = q.lent.take() {
            q.idle.push(i);
        }
        q.idle.len() >= batch.min(q.count / 4).max(1)
    }

    /// Whether all of `frame` lies in a buffer lent out now, of any
    /// interface.
    fn lent_holds(&self, frame: &[u8]) -> bool {
        let (start, end) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
        self.queues.iter().any(|q| {
            q.lent.is_some_and(|i| {
                let buf = q.bufs as usize + i * q.size;
                start >= buf && end <= buf + q.size
            })
        })
    }

    fn take_error(&mut self, handle: u64) -> Option<Error> {
        self.queue(handle)?.error.take()
    }

    /// The interfaces with filled buffers, as a POLL ready set.
    fn ready_set(&self) -> u64 {
        self.queues.iter().filter(|q| !q.ready.is_empty() && q.handle < 64).fold(0, |set, q| set | 1 << q.handle)
    }
}
