//! The global allocator: talc over the memory between the end of the image
//! and the stack.
//!
//! On hvt and spt the tender hands the guest fresh anonymous memory, which
//! is zero and which the host backs with a page only once it is touched.
//! A zeroed allocation (`vec![0; n]`: every TCP connection's buffers, the
//! network's 64 KiB frame buffers) carved from memory no block has ever
//! covered is therefore zero already, and writing the zeros would make the
//! host back every page of it: for the static website, some 200 KiB of a
//! running instance's 450 KiB, in buffers whose first page alone is ever
//! used. So the allocator remembers the highest address any block has
//! reached (the mark) and writes zeros only where memory may hold
//! something: below the mark, and where talc keeps its own boundary tags
//! (a free gap's header at its start, its footer at its end, a block's
//! tag just after it): above the mark, that is the few words after it and
//! the last pages of the heap, where the one gap above the mark ends.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use talc::TalcCell;
use talc::source::Manual;

/// talc's single-threaded allocator, shared as the global allocator.
struct Heap(TalcCell<Manual>);

// SAFETY: TalcCell may not be used from two threads, or from an interrupt
// or signal handler, at once. A Solo5 guest has one thread and takes no
// interrupts or signals.
unsafe impl Sync for Heap {}

const PAGE: usize = solo5_abi::PAGE_SIZE as usize;

/// Below this address the heap's memory may hold anything; above it, only
/// talc's boundary tags (see the module's documentation). `usize::MAX`
/// where the platform does not promise zeroed memory (virtio: a boot
/// loader ran in it) or before [`init`].
static MARK: AtomicUsize = AtomicUsize::new(usize::MAX);

/// What talc may write when it claims the heap (its bins, about 1 KiB),
/// at the heap's start, with room to spare: treated as used from the start.
const CLAIM_METADATA: usize = 16 * 1024;

/// How far past the mark talc's boundary tags may lie: talc rounds a
/// block's chunk up to 32 bytes with its 8-byte tag at the end, and the
/// gap after it starts with a 32-byte header, so both end within 72 bytes
/// of the block's end; with room to spare.
const TAGS: usize = 512;

/// The size of the last allocation the heap could not give, 0 once one
/// succeeds after it: an allocation failure the program did not answer
/// ends in a panic right after it, which then says what ran out.
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// The allocation that failed last, if nothing was allocated since.
pub(crate) fn failed() -> Option<usize> {
    match FAILED.load(Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// Notes whether an allocation of `size` bytes was given.
fn outcome(ptr: *mut u8, size: usize) {
    FAILED.store(if ptr.is_null() { size.max(1) } else { 0 }, Relaxed);
}

/// Notes that `[ptr, ptr + size)` is handed out: it may be written.
fn touched(ptr: *mut u8, size: usize) {
    let end = (ptr as usize).saturating_add(size);
    if MARK.load(Relaxed) < end {
        MARK.store(end, Relaxed);
    }
}

// SAFETY: every method delegates to TalcCell's GlobalAlloc implementation;
// alloc_zeroed leaves unwritten only bytes that are zero (see the module's
// documentation).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.0.alloc(layout) };
        outcome(p, layout.size());
        touched(p, layout.size());
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let mark = MARK.load(Relaxed);
        // SAFETY: forwarded contract.
        let p = unsafe { self.0.alloc(layout) };
        outcome(p, layout.size());
        if p.is_null() {
            return p;
        }
        let (start, size) = (p as usize, layout.size());
        let end = start + size;
        // Zeros up to just past the mark (old data below it, the header of
        // the gap the block was carved from just above it), and near the
        // heap's end (that gap's footer).
        let clean_from = mark.max(start).saturating_add(TAGS).min(end);
        let heap_end = END.load(Relaxed);
        let tail = if end.saturating_add(2 * PAGE) > heap_end { (end - 1) & !(PAGE - 1) } else { end }.max(clean_from);
        // SAFETY: both ranges lie within the block just allocated.
        unsafe {
            core::ptr::write_bytes(p, 0, clean_from - start);
            core::ptr::write_bytes(tail as *mut u8, 0, end - tail);
        }
        touched(p, size);
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        outcome(p, new_size);
        touched(p, new_size);
        p
    }
}

/// The size of the range the allocator was given, 0 before [`init`].
static SIZE: AtomicUsize = AtomicUsize::new(0);

/// The end of that range.
static END: AtomicUsize = AtomicUsize::new(0);

/// The heap's size in bytes.
pub(crate) fn size() -> usize {
    SIZE.load(Relaxed)
}

/// Bytes allocated and not yet freed.
pub(crate) fn in_use() -> usize {
    HEAP.0.counters().allocated_bytes
}

#[global_allocator]
static HEAP: Heap = Heap(TalcCell::new(Manual));

/// Gives the allocator `[start, start + size)`; `zeroed`: the platform
/// promises that the range holds zeros, as the tender's fresh memory does.
///
/// # Safety
/// The range is memory the guest owns and uses for nothing else, and holds
/// only zeros if `zeroed` is set.
pub(crate) unsafe fn init(start: usize, size: usize, zeroed: bool) -> bool {
    SIZE.store(size, Relaxed);
    END.store(start.saturating_add(size), Relaxed);
    if zeroed {
        MARK.store(start.saturating_add(CLAIM_METADATA), Relaxed);
    }
    // SAFETY: the caller hands over the range for the allocator's exclusive use.
    unsafe { HEAP.0.claim(start as *mut u8, size).is_some() }
}
