//! Executor tests on a simulated clock.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::time::{self, Duration, Instant};
use crate::{Interest, Platform, Source, io, spawn};

/// A platform whose clock jumps to each deadline, with I/O events that
/// become ready at given times.
#[derive(Default)]
struct Sim {
    now: u64,
    waits: u32,
    /// (time, source) events, in time order.
    events: Vec<(u64, Source)>,
}

impl Platform for Sim {
    fn now(&self) -> u64 {
        self.now
    }
    fn wait(&mut self, deadline: Option<u64>, io: &[(Source, Interest)], ready: &mut dyn FnMut(Source, Interest)) {
        self.waits += 1;
        let next_event = self.events.first().map(|e| e.0);
        let until = match (deadline, next_event) {
            (Some(d), Some(e)) => d.min(e),
            (Some(d), None) => d,
            (None, Some(e)) => e,
            (None, None) => panic!("the executor waits forever"),
        };
        self.now = self.now.max(until);
        while let Some(&(t, src)) = self.events.first() {
            if t > self.now {
                break;
            }
            self.events.remove(0);
            if io.contains(&(src, Interest::Read)) {
                ready(src, Interest::Read);
            }
        }
    }
}

/// xorshift, so the test is reproducible.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn ten_thousand_tasks_wake_exactly_at_their_deadlines() {
    let mut sim = Sim::default();
    let log: Rc<RefCell<Vec<(u64, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    crate::run(&mut sim, async move {
        let mut seed = 0x1234_5678_9abc_def1;
        let mut handles = Vec::new();
        for i in 0..10_000u64 {
            let deadline = rng(&mut seed) % 60_000_000_000;
            let l = l.clone();
            handles.push(spawn(async move {
                time::sleep_until(Instant(deadline)).await;
                l.borrow_mut().push((deadline, time::now().0));
                i
            }));
        }
        let ids = crate::join_all(handles).await;
        assert_eq!(ids, (0..10_000).collect::<Vec<_>>());
    });
    let log = log.borrow();
    assert_eq!(log.len(), 10_000);
    for &(deadline, woke) in log.iter() {
        assert_eq!(woke, deadline, "a task woke at {woke} for its deadline {deadline}");
    }
    assert!(log.windows(2).all(|w| w[0].0 <= w[1].0), "tasks woke out of deadline order");
    // One wait per distinct deadline at most: no spinning.
    assert!(sim.waits <= 10_001, "{} waits", sim.waits);
}

#[test]
fn a_long_sleep_is_one_wait() {
    let mut sim = Sim::default();
    crate::run(&mut sim, time::sleep(Duration::from_secs(1)));
    assert_eq!(sim.now, 1_000_000_000);
    assert_eq!(sim.waits, 1);
}

#[test]
fn cancelled_timers_do_not_accumulate() {
    let mut sim = Sim::default();
    crate::run(&mut sim, async {
        for _ in 0..10_000 {
            // A timeout that never fires: its timer is cancelled.
            let r = time::timeout(Duration::from_secs(3600), async { 7 }).await;
            assert_eq!(r, Ok(7));
            let r = time::timeout(Duration::from_millis(1), time::sleep(Duration::from_secs(1))).await;
            assert_eq!(r, Err(time::Elapsed));
        }
        let heap = crate::core_state::with_core(|c| c.timers.heap_len()).unwrap();
        assert!(heap < 200, "{heap} timer entries left");
    });
    assert_eq!(sim.now, 10_000 * 1_000_000);
}

#[test]
fn join_select_and_join_handles() {
    let mut sim = Sim::default();
    let out = crate::run(&mut sim, async {
        let slow = async {
            time::sleep(Duration::from_secs(2)).await;
            "slow"
        };
        let fast = async {
            time::sleep(Duration::from_secs(1)).await;
            "fast"
        };
        let first = crate::select(slow, fast).await;
        assert_eq!(first, crate::Either::Right("fast"));
        let (a, b) = crate::join(time::sleep(Duration::from_secs(1)), async { 5 }).await;
        assert_eq!((a, b), ((), 5));
        let h = spawn(async {
            let inner = spawn(async { 40 });
            inner.await + 2
        });
        h.await
    });
    assert_eq!(out, 42);
    assert_eq!(sim.now, 2_000_000_000);
}

#[test]
fn io_readiness_wakes_the_waiting_task_only() {
    let mut sim = Sim { events: vec![(5, Source(1)), (9, Source(2))], ..Default::default() };
    let order = crate::run(&mut sim, async {
        let order = Rc::new(RefCell::new(Vec::new()));
        let (o1, o2) = (order.clone(), order.clone());
        let a = spawn(async move {
            io::ready(Source(2), Interest::Read).await;
            o1.borrow_mut().push((2, time::now().0));
        });
        let b = spawn(async move {
            io::ready(Source(1), Interest::Read).await;
            o2.borrow_mut().push((1, time::now().0));
        });
        a.await;
        b.await;
        order.borrow().clone()
    });
    assert_eq!(order, vec![(1, 5), (2, 9)]);
}

#[test]
fn a_dropped_wait_leaves_nothing_behind() {
    let mut sim = Sim::default();
    crate::run(&mut sim, async {
        let r = time::timeout(Duration::from_secs(1), io::ready(Source(3), Interest::Read)).await;
        assert!(r.is_err());
        let left = crate::core_state::with_core(|c| c.io.len()).unwrap();
        assert_eq!(left, 0);
    });
}

#[test]
fn busy_tasks_do_not_starve_io() {
    let mut sim = Sim { events: vec![(0, Source(7))], ..Default::default() };
    crate::run(&mut sim, async {
        let stop = Rc::new(RefCell::new(false));
        let s = stop.clone();
        let spinner = spawn(async move {
            let mut n = 0u64;
            while !*s.borrow() {
                crate::yield_now().await;
                n += 1;
            }
            n
        });
        io::ready(Source(7), Interest::Read).await;
        *stop.borrow_mut() = true;
        let spins = spinner.await;
        assert!(spins < 1000, "I/O was delivered only after {spins} rounds");
    });
}

#[test]
fn runtimes_run_one_after_another() {
    for i in 0..3u64 {
        let mut sim = Sim::default();
        let v = crate::run(&mut sim, async move { i * 2 });
        assert_eq!(v, i * 2);
    }
}

#[test]
fn reclaimers_are_asked_in_turn_until_their_guard_is_dropped() {
    use crate::memory::{self, Reclaim};
    use core::cell::Cell;

    /// Gives back one unit per request while it has any.
    struct Units(Cell<u32>);
    impl Reclaim for Units {
        fn reclaimable(&self) -> bool {
            self.0.get() > 0
        }
        fn reclaim(&self) -> bool {
            let n = self.0.get();
            self.0.set(n.saturating_sub(1));
            n > 0
        }
    }

    let mut sim = Sim::default();
    crate::run(&mut sim, async {
        assert!(!memory::reclaimable() && !memory::reclaim(), "none registered");
        let (empty, two) = (Rc::new(Units(Cell::new(0))), Rc::new(Units(Cell::new(2))));
        let g1 = memory::add_reclaimer(empty.clone());
        let g2 = memory::add_reclaimer(two.clone());
        assert!(memory::reclaimable());
        // The empty one is passed over; the other gives back its two.
        assert!(memory::reclaim() && memory::reclaim());
        assert_eq!(two.0.get(), 0);
        assert!(!memory::reclaimable() && !memory::reclaim());
        // Asked by one of them, the others are asked, not it.
        two.0.set(1);
        empty.0.set(1);
        assert!(memory::reclaim_others(&*two) && empty.0.get() == 0 && two.0.get() == 1);
        assert!(!memory::reclaim_others(&*two) && two.0.get() == 1);
        drop(g2);
        assert!(!memory::reclaimable(), "a dropped guard ends its registration");
        assert_eq!(Rc::strong_count(&two), 1, "and the runtime lets go of it");
        drop(g1);
        assert_eq!(Rc::strong_count(&empty), 1);
    });
    // Outside the runtime, nothing is registered or asked.
    let g = memory::add_reclaimer(Rc::new(Units(Cell::new(1))));
    assert!(!memory::reclaimable());
    drop(g);
}
