//! The global allocator: talc over the memory between the end of the image
//! and the stack.

use core::alloc::{GlobalAlloc, Layout};

use talc::TalcCell;
use talc::source::Manual;

/// talc's single-threaded allocator, shared as the global allocator.
struct Heap(TalcCell<Manual>);

// SAFETY: TalcCell may not be used from two threads, or from an interrupt
// or signal handler, at once. A Solo5 guest has one thread and takes no
// interrupts or signals.
unsafe impl Sync for Heap {}

// SAFETY: every method delegates to TalcCell's GlobalAlloc implementation.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static HEAP: Heap = Heap(TalcCell::new(Manual));

/// The size of the range the allocator was given, 0 before [`init`].
static SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The heap's size in bytes.
pub(crate) fn size() -> usize {
    SIZE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Bytes allocated and not yet freed.
pub(crate) fn in_use() -> usize {
    HEAP.0.counters().allocated_bytes
}

/// Gives the allocator `[start, start + size)`.
///
/// # Safety
/// The range is memory the guest owns and uses for nothing else.
pub(crate) unsafe fn init(start: usize, size: usize) -> bool {
    SIZE.store(size, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: the caller hands over the range for the allocator's exclusive use.
    unsafe { HEAP.0.claim(start as *mut u8, size).is_some() }
}
