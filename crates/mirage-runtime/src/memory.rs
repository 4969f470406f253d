//! How much heap is in use, for an operator's statistics (a soak test
//! watching for leaks). Each platform says how to measure it; where none
//! has, the answer is `None`.

/// The platform's measure: bytes allocated and not yet freed.
static PROBE: spin::Mutex<Option<fn() -> usize>> = spin::Mutex::new(None);

/// Sets how the heap in use is measured; the platform calls it at boot.
pub fn set_heap_probe(probe: fn() -> usize) {
    *PROBE.lock() = Some(probe);
}

/// Bytes of heap allocated and not yet freed, if the platform can tell.
pub fn heap_in_use() -> Option<usize> {
    let probe = *PROBE.lock();
    probe.map(|f| f())
}
