//! The state a running runtime shares with the futures it polls: timers,
//! I/O waiters, newly spawned tasks and the clock. Reached through
//! [`with_core`] from anywhere inside [`crate::run`].

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::future::Future;
use core::pin::Pin;
use core::task::Waker;

use crate::io::{Interest, Source};
use crate::memory::Reclaim;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Timers: a heap of deadlines and the wakers still waiting for them.
/// A cancelled timer leaves a stale heap entry, skipped when it comes up;
/// the heap is rebuilt when stale entries outnumber live ones.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    live: BTreeMap<u64, (u64, Waker)>,
    next_id: u64,
}

impl Timers {
    pub(crate) fn add(&mut self, deadline: u64, waker: Waker) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((deadline, id)));
        self.live.insert(id, (deadline, waker));
        id
    }

    pub(crate) fn update(&mut self, id: u64, waker: &Waker) {
        if let Some((_, w)) = self.live.get_mut(&id)
            && !w.will_wake(waker)
        {
            *w = waker.clone();
        }
    }

    pub(crate) fn cancel(&mut self, id: u64) {
        self.live.remove(&id);
        if self.heap.len() > 64 && self.heap.len() > 2 * self.live.len() {
            self.heap = self.live.iter().map(|(&id, &(d, _))| Reverse((d, id))).collect();
        }
    }

    /// Removes every timer due at `now` and returns their wakers.
    pub(crate) fn expire(&mut self, now: u64, woken: &mut Vec<Waker>) {
        while let Some(&Reverse((deadline, id))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if let Some((_, w)) = self.live.remove(&id) {
                woken.push(w);
            }
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<u64> {
        while let Some(&Reverse((deadline, id))) = self.heap.peek() {
            if self.live.contains_key(&id) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

/// Everything futures may reach while the runtime runs.
pub(crate) struct Core {
    pub timers: Timers,
    /// Wakers waiting for readiness, per source and interest, with the
    /// token of the future that waits.
    pub io: BTreeMap<(Source, Interest), Vec<(u64, Waker)>>,
    pub next_token: u64,
    /// Tasks spawned since the executor last looked.
    pub spawned: Vec<BoxFuture>,
    /// The platform's clock.
    pub now: u64,
    pub clock: Option<fn() -> u64>,
    /// What can give memory back on demand, by registration number
    /// (`crate::memory::add_reclaimer`).
    pub reclaimers: Vec<(u64, Rc<dyn Reclaim>)>,
    pub next_reclaimer: u64,
}

impl Core {
    pub(crate) fn new() -> Core {
        Core {
            timers: Timers::default(),
            io: BTreeMap::new(),
            next_token: 0,
            spawned: Vec::new(),
            now: 0,
            clock: None,
            reclaimers: Vec::new(),
            next_reclaimer: 0,
        }
    }
}

#[cfg(any(feature = "std", test))]
mod slot {
    use super::Core;
    use std::cell::RefCell;

    std::thread_local! {
        static CORE: RefCell<Option<Core>> = const { RefCell::new(None) };
    }

    pub(crate) fn with<R>(f: impl FnOnce(&mut Option<Core>) -> R) -> R {
        CORE.with(|c| f(&mut c.borrow_mut()))
    }
}

#[cfg(not(any(feature = "std", test)))]
mod slot {
    use super::Core;
    use core::cell::UnsafeCell;

    struct Slot(UnsafeCell<Option<Core>>);
    // SAFETY: without `std` the runtime runs in a unikernel, which has one
    // thread and no interrupts or signals; `with` is never re-entered (no
    // code it runs calls back into the runtime), so each access is exclusive.
    unsafe impl Sync for Slot {}
    static CORE: Slot = Slot(UnsafeCell::new(None));

    pub(crate) fn with<R>(f: impl FnOnce(&mut Option<Core>) -> R) -> R {
        // SAFETY: see the Sync impl: one thread, no re-entry.
        f(unsafe { &mut *CORE.0.get() })
    }
}

/// Runs `f` on the running runtime's core; `None` outside [`crate::run`].
/// `f` must not call back into the runtime.
pub(crate) fn with_core<R>(f: impl FnOnce(&mut Core) -> R) -> Option<R> {
    slot::with(|c| c.as_mut().map(f))
}

pub(crate) fn install(core: Option<Core>) -> Option<Core> {
    slot::with(|c| core::mem::replace(c, core))
}
