//! The executor: tasks, their wakers, the run loop, and small combinators.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::{Pin, pin};
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

use crate::Platform;
use crate::core_state::{BoxFuture, Core, install, with_core};
use crate::io::{Interest, Source};

/// The id of the main future in the ready queue.
const MAIN: usize = usize::MAX;

/// Task ids woken and not yet polled. Shared with the wakers.
type ReadyQueue = spin::Mutex<VecDeque<usize>>;

/// What a waker holds: which task to queue, and whether it is queued.
struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.lock().push_back(self.id);
        }
    }
}

struct Task {
    future: BoxFuture,
    waker: Arc<TaskWaker>,
}

/// Spawns `future` on the running runtime; its output comes from the
/// returned handle. The task runs whether or not the handle is kept.
///
/// # Panics
/// Outside [`run`].
pub fn spawn<F: Future + 'static>(future: F) -> JoinHandle<F::Output>
where
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState { result: None, waiter: None }));
    let s = state.clone();
    let task: BoxFuture = Box::pin(async move {
        let r = future.await;
        let mut st = s.borrow_mut();
        st.result = Some(r);
        if let Some(w) = st.waiter.take() {
            w.wake();
        }
    });
    with_core(|c| c.spawned.push(task)).expect("mirage_runtime::spawn outside the runtime");
    JoinHandle { state }
}

struct JoinState<T> {
    result: Option<T>,
    waiter: Option<Waker>,
}

/// The handle of a spawned task: a future of its output.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> core::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("JoinHandle").field("finished", &self.is_finished()).finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Lets every other ready task run once before continuing.
pub async fn yield_now() {
    let mut yielded = false;
    core::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// After this many rounds of polling without waiting, the executor asks the
/// platform for ready I/O without sleeping, so busy tasks cannot starve
/// devices.
const ROUNDS_BEFORE_IO_CHECK: u32 = 64;

/// Runs `main` to completion on `platform`, with every task it spawns.
/// Returns `main`'s output; tasks still pending then are dropped.
///
/// # Panics
/// If a runtime is already running on this thread.
pub fn run<P: Platform, F: Future>(platform: &mut P, main: F) -> F::Output {
    let mut core = Core::new();
    core.now = platform.now();
    core.clock = platform.clock();
    assert!(install(Some(core)).is_none(), "mirage_runtime::run: a runtime is already running");
    // Uninstalls the core however run_loop ends (a panicking test, say).
    struct Installed;
    impl Drop for Installed {
        fn drop(&mut self) {
            install(None);
        }
    }
    let _installed = Installed;
    run_loop(platform, main)
}

fn run_loop<P: Platform, F: Future>(platform: &mut P, main: F) -> F::Output {
    let ready: Arc<ReadyQueue> = Arc::new(spin::Mutex::new(VecDeque::new()));
    let main_waker = Arc::new(TaskWaker { id: MAIN, queued: AtomicBool::new(false), ready: ready.clone() });
    let main_waker_w = Waker::from(main_waker.clone());
    let mut main = pin!(main);
    let mut tasks: Vec<Option<Task>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut woken: Vec<Waker> = Vec::new();
    let mut interest: Vec<(Source, Interest)> = Vec::new();
    let mut rounds_without_wait = 0u32;
    ready.lock().push_back(MAIN);
    main_waker.queued.store(true, Ordering::Release);
    loop {
        // Adopt newly spawned tasks.
        let spawned = with_core(|c| core::mem::take(&mut c.spawned)).unwrap_or_default();
        for future in spawned {
            let id = free.pop().unwrap_or_else(|| {
                tasks.push(None);
                tasks.len() - 1
            });
            let waker = Arc::new(TaskWaker { id, queued: AtomicBool::new(true), ready: ready.clone() });
            tasks[id] = Some(Task { future, waker });
            ready.lock().push_back(id);
        }
        // Poll what is ready.
        let now = platform.now();
        with_core(|c| c.now = now);
        let batch: Vec<usize> = ready.lock().drain(..).collect();
        for id in &batch {
            if *id == MAIN {
                main_waker.queued.store(false, Ordering::Release);
                if let Poll::Ready(out) = main.as_mut().poll(&mut Context::from_waker(&main_waker_w)) {
                    return out;
                }
                continue;
            }
            let Some(task) = tasks.get_mut(*id).and_then(Option::as_mut) else { continue };
            task.waker.queued.store(false, Ordering::Release);
            let waker = Waker::from(task.waker.clone());
            if task.future.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
                tasks[*id] = None;
                free.push(*id);
            }
        }
        // Timers.
        let now = platform.now();
        let next = with_core(|c| {
            c.now = now;
            c.timers.expire(now, &mut woken);
            c.timers.next_deadline()
        })
        .flatten();
        for w in woken.drain(..) {
            w.wake();
        }
        let busy = !ready.lock().is_empty() || with_core(|c| !c.spawned.is_empty()).unwrap_or(false);
        if busy && rounds_without_wait < ROUNDS_BEFORE_IO_CHECK {
            rounds_without_wait += 1;
            continue;
        }
        // Sleep until the next deadline or I/O; just collect ready I/O if busy.
        rounds_without_wait = 0;
        interest.clear();
        with_core(|c| interest.extend(c.io.keys().copied()));
        let deadline = if busy { Some(now) } else { next };
        platform.wait(deadline, &interest, &mut |source, which| {
            if let Some(ws) = with_core(|c| c.io.remove(&(source, which))).flatten() {
                woken.extend(ws.into_iter().map(|(_, w)| w));
            }
        });
        for w in woken.drain(..) {
            w.wake();
        }
    }
}

/// One of two outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first future finished first.
    Left(A),
    /// The second future finished first.
    Right(B),
}

/// Waits for the first of `a` and `b`; the other is dropped.
pub async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    core::future::poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(y) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(y));
        }
        Poll::Pending
    })
    .await
}

/// Waits for both `a` and `b`.
pub async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut ra = None;
    let mut rb = None;
    core::future::poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(x) = a.as_mut().poll(cx)
        {
            ra = Some(x);
        }
        if rb.is_none()
            && let Poll::Ready(y) = b.as_mut().poll(cx)
        {
            rb = Some(y);
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                ra = x;
                rb = y;
                Poll::Pending
            }
        }
    })
    .await
}

/// Which of [`join_all`]'s futures were woken, and whom to wake then.
struct JoinAllShared {
    woken: Vec<usize>,
    parent: Option<Waker>,
}

struct ChildWaker {
    index: usize,
    shared: Arc<spin::Mutex<JoinAllShared>>,
}

impl Wake for ChildWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let parent = {
            let mut s = self.shared.lock();
            s.woken.push(self.index);
            s.parent.clone()
        };
        if let Some(p) = parent {
            p.wake();
        }
    }
}

/// Waits for all of `futures`, polled concurrently; their outputs in
/// order. Only the futures that were woken are polled again, so joining
/// many is linear in the work done.
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let shared = Arc::new(spin::Mutex::new(JoinAllShared { woken: (0..futs.len()).collect(), parent: None }));
    let wakers: Vec<Waker> =
        (0..futs.len()).map(|index| Waker::from(Arc::new(ChildWaker { index, shared: shared.clone() }))).collect();
    let mut left = futs.len();
    core::future::poll_fn(|cx| {
        let woken = {
            let mut s = shared.lock();
            s.parent = Some(cx.waker().clone());
            core::mem::take(&mut s.woken)
        };
        for i in woken {
            if outs[i].is_none()
                && let Poll::Ready(x) = futs[i].as_mut().poll(&mut Context::from_waker(&wakers[i]))
            {
                outs[i] = Some(x);
                left -= 1;
            }
        }
        if left == 0 { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outs.into_iter().flatten().collect()
}
