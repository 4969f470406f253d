//! The heap: how much is in use (for an operator's statistics, a soak
//! test watching for leaks) and how much the unikernel may let its peers
//! make it hold (the memory budget).
//!
//! A network service holds memory on behalf of remote hosts: socket
//! buffers, request bodies. A peer that opens and holds enough of them
//! would exhaust the heap, and on Solo5 an allocation failure ends the
//! unikernel. So code that allocates on a peer's behalf asks
//! [`may_hold`] first and refuses the peer (a reset, a 503) when the
//! answer is no. The budget is a share of the heap the platform reports
//! ([`set_heap_size`]): on Solo5 the memory given with `--mem` less the
//! image and the stack; on unix, where the process has no fixed heap, the
//! platform sets a default that `--mem`-like limits can lower.

/// The platform's measure: bytes allocated and not yet freed.
static PROBE: spin::Mutex<Option<fn() -> usize>> = spin::Mutex::new(None);

/// The heap's size in bytes, 0 while the platform has not said.
static HEAP_SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The share of the heap that peers may make the unikernel hold, in
/// eighths. The rest is left for the application's own allocations and
/// for the allocator's fragmentation.
const BUDGET_EIGHTHS: usize = 6;

/// Sets how the heap in use is measured; the platform calls it at boot.
pub fn set_heap_probe(probe: fn() -> usize) {
    *PROBE.lock() = Some(probe);
}

/// Bytes of heap allocated and not yet freed, if the platform can tell.
pub fn heap_in_use() -> Option<usize> {
    let probe = *PROBE.lock();
    probe.map(|f| f())
}

/// Sets the heap's size; the platform calls it at boot.
pub fn set_heap_size(bytes: usize) {
    HEAP_SIZE.store(bytes, core::sync::atomic::Ordering::Relaxed);
}

/// The heap's size in bytes, if the platform has said.
pub fn heap_size() -> Option<usize> {
    match HEAP_SIZE.load(core::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// The memory budget: how many bytes of heap may be in use before
/// allocations made on a peer's behalf are refused. `None` when the
/// platform gives no heap size (nothing is refused for memory then).
pub fn budget() -> Option<usize> {
    heap_size().map(|n| n / 8 * BUDGET_EIGHTHS)
}

/// Whether `bytes` more may be allocated on a peer's behalf without the
/// heap in use passing the budget. True when the platform cannot measure
/// the heap or gives no size.
pub fn may_hold(bytes: usize) -> bool {
    match (budget(), heap_in_use()) {
        (Some(budget), Some(used)) => used.saturating_add(bytes) <= budget,
        _ => true,
    }
}

/// Something that holds memory for peers and can give some back on
/// demand: a server that sheds the connections holding the most.
///
/// A subsystem that must refuse a peer for memory (the TCP stack, at a new
/// connection) asks the reclaimers first, so that memory one layer holds
/// does not make another refuse newcomers while it could be freed.
pub trait Reclaim {
    /// Whether [`Reclaim::reclaim`] would find something to give back;
    /// nothing is done.
    fn reclaimable(&self) -> bool;

    /// Starts giving something back; whether it did. The memory comes back
    /// once the tasks that hold it run, not before this returns.
    ///
    /// It is called from inside another subsystem (the TCP stack, in the
    /// middle of judging a segment): it must only mark what is to go and
    /// wake the tasks that hold it, never reach into them, or into that
    /// subsystem, before it returns.
    fn reclaim(&self) -> bool;
}

/// Registers `r` with the running runtime until the returned guard is
/// dropped. Outside the runtime nothing is registered.
pub fn add_reclaimer(r: alloc::rc::Rc<dyn Reclaim>) -> Reclaimer {
    let id = crate::core_state::with_core(|c| {
        let id = c.next_reclaimer;
        c.next_reclaimer += 1;
        c.reclaimers.push((id, r));
        id
    });
    Reclaimer { id }
}

/// A registration made by [`add_reclaimer`]; dropped, it ends.
#[derive(Debug)]
#[must_use = "the reclaimer is removed when this is dropped"]
pub struct Reclaimer {
    id: Option<u64>,
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        // Taken out first, and dropped outside the runtime's core: the
        // reclaimer's own drop may reach the runtime.
        let gone = crate::core_state::with_core(|c| {
            let i = c.reclaimers.iter().position(|(n, _)| *n == id)?;
            Some(c.reclaimers.swap_remove(i).1)
        });
        drop(gone);
    }
}

/// Whether `f` holds for one of the registered reclaimers, each taken out
/// of the core in turn so that `f` runs outside it (a reclaimer wakes
/// tasks). Nothing is allocated: this is asked when memory is short.
fn any_reclaimer(f: impl Fn(&dyn Reclaim) -> bool) -> bool {
    let mut i = 0;
    while let Some(r) = crate::core_state::with_core(|c| c.reclaimers.get(i).map(|(_, r)| r.clone())).flatten() {
        if f(&*r) {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether some registered [`Reclaim`] could give memory back.
pub fn reclaimable() -> bool {
    any_reclaimer(|r| r.reclaimable())
}

/// Asks the registered reclaimers, in turn, to give memory back; whether
/// one started to (the memory comes back once its tasks run).
pub fn reclaim() -> bool {
    any_reclaimer(|r| r.reclaim())
}

/// As [`reclaim`], passing over `own` (the asking subsystem's registered
/// reclaimer, which has already given back what it would): a server
/// whose own largest holders are not enough asks the other layers (the
/// TCP stack, its idle connections) without shedding its own again.
pub fn reclaim_others(own: &dyn Reclaim) -> bool {
    any_reclaimer(|r| !core::ptr::addr_eq(r as *const dyn Reclaim, own as *const dyn Reclaim) && r.reclaim())
}

/// Whether a subsystem may hold `bytes` on its peers' behalf beyond the
/// least they need (the TCP stack: its connections' buffers, for large
/// windows while they fit): `bytes` within a sixteenth of the budget,
/// about where Linux's TCP starts its memory pressure. The rest of the
/// budget then holds peers at the least they need, so that a peer opening
/// connections gains little from the first ones being generous. A platform
/// that measures the heap but has no fixed size (unix without a data
/// limit) counts a sixteenth of the budget a 512 MiB unikernel has,
/// 24 MiB. False when the heap cannot be measured.
pub fn plenty(bytes: usize) -> bool {
    let share = match budget() {
        Some(budget) => budget / 16,
        None => UNBOUNDED_BUDGET / 16,
    };
    heap_in_use().is_some() && bytes <= share
}

/// [`plenty`]'s budget where the heap has no fixed size: that of a
/// 512 MiB unikernel.
const UNBOUNDED_BUDGET: usize = 384 << 20;

/// A buffer of `len` zero bytes, or `None` when the heap cannot give it
/// (where `vec![0; len]` would end the unikernel).
///
/// It asks the allocator for zeroed memory, where `try_reserve` and
/// `resize` would write every byte: on Solo5 the guest's allocator leaves
/// memory the host never backed as it is, so a 64 KiB socket or frame
/// buffer costs the host only the pages that are ever used.
pub fn zeroed(len: usize) -> Option<alloc::vec::Vec<u8>> {
    if len == 0 {
        return Some(alloc::vec::Vec::new());
    }
    let layout = core::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: the layout's size is not zero.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` was allocated by the global allocator with the layout of
    // `len` bytes of alignment 1, all initialised (to zero): what a Vec of
    // that capacity and length owns.
    Some(unsafe { alloc::vec::Vec::from_raw_parts(p, len, len) })
}

#[cfg(test)]
mod zeroed_tests {
    #[test]
    fn gives_zeros_of_the_length_asked() {
        for len in [0, 1, 4095, 65_536, 1 << 20] {
            let v = super::zeroed(len).expect("a small allocation");
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&b| b == 0));
        }
        assert!(super::zeroed(usize::MAX).is_none(), "a size past isize::MAX is refused");
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn budget_is_a_share_of_the_heap_and_refuses_past_it() {
        fn used() -> usize {
            500
        }
        set_heap_probe(used);
        set_heap_size(1024);
        assert_eq!(budget(), Some(768));
        assert!(may_hold(268));
        assert!(!may_hold(269));
        assert!(!may_hold(usize::MAX));
        // Plenty: a sixteenth of the budget, 192 bytes.
        set_heap_size(4096);
        assert_eq!(budget(), Some(3072));
        assert!(plenty(192));
        assert!(!plenty(193));
        assert!(!plenty(usize::MAX));
    }
}
