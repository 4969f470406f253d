//! What the connections of a server hold, and which of them give memory
//! back when the memory budget is reached.
//!
//! A connection's buffers (the request head being read, the body, a
//! response assembled in memory, the buffer a streamed response is read
//! into), and those its flow keeps itself (a TLS connection's records,
//! which the flow counts in a meter: `Flow::meter`), are memory held on a
//! peer's behalf. Every
//! growth asks [`mirage_runtime::memory::may_hold`] first and allocates
//! fallibly, so a peer can never make the server abort. When the budget is
//! reached the largest holders are shed first: asked to answer 503 (or 413
//! in the middle of a body) and close, which frees their buffers before
//! the one who asked tries again. Of holders of about a size (within
//! [`MIN_SHED`]), the one that has gone longest without progress (its
//! buffers growing as its peer's bytes arrive, or bytes written to it)
//! goes first. Connections that hold little, idle ones above all, are never
//! shed; when nothing large is left to shed, it is the asking connection
//! that is refused.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::cmp::Reverse;
use core::task::{Poll, Waker};

use mirage_devices::flow::Meter;
use mirage_runtime::memory::{self, may_hold};
use mirage_runtime::yield_now;

use crate::Stats;

/// Connections holding less than this are never shed: what an idle or a
/// small request costs, which shedding would not win back.
pub(crate) const MIN_SHED: usize = 8 * 1024;

/// How many holders one request for memory may shed before giving up.
const SHED_ROUNDS: usize = 4;

/// How many times one request for memory yields to the tasks that give
/// back what another layer was asked for: the stack's driver sends the
/// reset, the connection's task lets its flow go, the driver frees the
/// socket.
const OTHERS_ROUNDS: usize = 8;

/// The connections of one server, by what they hold.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    accounts: RefCell<Vec<Rc<Account>>>,
    /// Counts progress made by all connections: an account's stamp is its
    /// value at the connection's last.
    clock: Cell<u64>,
    /// Whether a request for memory waits for what it asked of the other
    /// layers ([`Ledger::make_room`]): others short meanwhile wait with
    /// it rather than ask again, as each ask resets another idle
    /// connection there, where the first may free enough for all.
    asking: Cell<bool>,
}

/// A request's ask of the other layers, in flight while it lives.
struct Asking<'a>(&'a Cell<bool>);

impl<'a> Asking<'a> {
    fn new(flag: &'a Cell<bool>) -> Asking<'a> {
        flag.set(true);
        Asking(flag)
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// How many times a request for memory yields, at most, to asks of the
/// other layers made by other requests, before it asks itself or gives
/// up.
const BEHIND_ROUNDS: usize = 4 * OTHERS_ROUNDS;

/// One connection's entry in the ledger.
#[derive(Default)]
struct Account {
    /// Its index in [`Ledger::accounts`].
    slot: Cell<usize>,
    /// Bytes its buffers hold.
    held: Cell<usize>,
    /// Bytes its flow holds in buffers of its own (a TLS connection's
    /// records), kept current by the flow ([`Flow::meter`]).
    ///
    /// [`Flow::meter`]: mirage_devices::flow::Flow::meter
    flow: Meter,
    /// The ledger's clock at its last progress.
    stamp: Cell<u64>,
    /// Whether it has been asked to give its memory back.
    shed: Cell<bool>,
    /// The task to wake when it is.
    waker: Cell<Option<Waker>>,
}

impl Account {
    /// All it holds: its buffers and its flow's.
    fn total(&self) -> usize {
        self.held.get().saturating_add(self.flow.get())
    }

    /// Whether it may be asked to give its memory back for one holding
    /// `than`: not asked yet, and holding at least [`MIN_SHED`] and more.
    fn sheddable(&self, than: usize) -> bool {
        !self.shed.get() && self.total() >= MIN_SHED && self.total() > than
    }
}

impl core::fmt::Debug for Account {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Account")
            .field("held", &self.held.get())
            .field("flow", &self.flow.get())
            .field("shed", &self.shed.get())
            .finish()
    }
}

impl Ledger {
    /// Opens an account for a connection; it is closed when dropped.
    pub(crate) fn open<'a>(&'a self, stats: &'a Stats) -> Holder<'a> {
        let account = Rc::new(Account::default());
        let mut accounts = self.accounts.borrow_mut();
        account.slot.set(accounts.len());
        accounts.push(account.clone());
        let holder = Holder { ledger: self, stats, account };
        holder.progressed();
        holder
    }

    /// Asks the largest holder that holds more than `than` (and at least
    /// [`MIN_SHED`]), and has not been asked yet, to give its memory back;
    /// false if there is none. Sizes are compared in steps of [`MIN_SHED`]
    /// (requests differ by a few bytes of head), and of holders in the same
    /// step the one longest without progress goes.
    fn shed_largest(&self, than: usize) -> bool {
        let accounts = self.accounts.borrow();
        let victim = accounts
            .iter()
            .filter(|a| a.sheddable(than))
            .max_by_key(|a| (a.total() / MIN_SHED, Reverse(a.stamp.get())));
        match victim {
            Some(v) => {
                v.shed.set(true);
                if let Some(w) = v.waker.take() {
                    w.wake();
                }
                true
            }
            None => false,
        }
    }

    /// Whether [`Ledger::shed_largest`] would find a holder.
    fn sheddable(&self) -> bool {
        self.accounts.borrow().iter().any(|a| a.sheddable(0))
    }

    /// Makes room for `bytes` more within the memory budget by shedding
    /// the largest holders (or what other layers hold); whether there is
    /// room.
    pub(crate) async fn relieve(&self, bytes: usize) -> bool {
        self.make_room(0, || may_hold(bytes), || false).await
    }

    /// Makes room until `fits` does: sheds holders here larger than
    /// `than`, one a round (at most [`SHED_ROUNDS`]), then asks the other
    /// layers once ([`memory::reclaim_others`]: the stack gives back the
    /// sockets it keeps for reuse, else resets a connection idle past its
    /// `shed_idle`, which this ledger never sheds, holding little here
    /// but its socket's buffers there) and waits for that memory. While
    /// another request's ask is in flight it waits for that one instead
    /// (at most [`BEHIND_ROUNDS`]). False if it does not fit, or the
    /// asker was shed meanwhile (`shed`).
    async fn make_room(&self, than: usize, mut fits: impl FnMut() -> bool, shed: impl Fn() -> bool) -> bool {
        let mut rounds = 0;
        let mut behind = 0;
        let mut waiting: Option<usize> = None;
        let mut _asking = None;
        loop {
            if shed() {
                return false;
            }
            if fits() {
                return true;
            }
            match waiting {
                Some(0) => return false,
                Some(n) => waiting = Some(n - 1),
                None if rounds < SHED_ROUNDS && self.shed_largest(than) => rounds += 1,
                None if self.asking.get() && behind < BEHIND_ROUNDS => behind += 1,
                None if !self.asking.get() && memory::reclaim_others(self) => {
                    _asking = Some(Asking::new(&self.asking));
                    waiting = Some(OTHERS_ROUNDS);
                }
                None => return false,
            }
            // The holder just woken runs first, and frees its buffers.
            yield_now().await;
        }
    }
}

/// Another layer short of memory (the TCP stack, at a new connection)
/// sheds the largest holder here before it refuses a peer.
impl mirage_runtime::memory::Reclaim for Ledger {
    fn reclaimable(&self) -> bool {
        self.sheddable()
    }

    fn reclaim(&self) -> bool {
        self.shed_largest(0)
    }
}

/// A connection's hold on its account.
#[derive(Debug)]
pub(crate) struct Holder<'a> {
    ledger: &'a Ledger,
    stats: &'a Stats,
    account: Rc<Account>,
}

impl Holder<'_> {
    /// Bytes its buffers hold.
    pub(crate) fn held(&self) -> usize {
        self.account.held.get()
    }

    /// What it holds with its flow's buffers: what larger holders are
    /// judged against.
    fn total(&self) -> usize {
        self.account.total()
    }

    /// The meter its flow keeps current with the bytes the flow buffers
    /// itself ([`mirage_devices::flow::Flow::meter`]).
    pub(crate) fn meter(&self) -> Meter {
        self.account.flow.clone()
    }

    /// Records that bytes went to or came from its peer.
    pub(crate) fn progressed(&self) {
        let now = self.ledger.clock.get().wrapping_add(1);
        self.ledger.clock.set(now);
        self.account.stamp.set(now);
    }

    /// Records that its buffers now hold `bytes` (a change that comes of
    /// bytes read or written: progress).
    pub(crate) fn set(&self, bytes: usize) {
        self.progressed();
        let before = self.account.held.replace(bytes);
        let total = self.stats.held.get().saturating_sub(before).saturating_add(bytes);
        self.stats.held.set(total);
        if total > self.stats.peak_held.get() {
            self.stats.peak_held.set(total);
        }
    }

    /// Whether it has been asked to give its memory back.
    pub(crate) fn is_shed(&self) -> bool {
        self.account.shed.get()
    }

    /// Waits until it is asked to give its memory back.
    pub(crate) async fn shed(&self) {
        core::future::poll_fn(|cx| {
            if self.account.shed.get() {
                Poll::Ready(())
            } else {
                self.account.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Claims `bytes` more within the memory budget for what is allocated
    /// outside a buffer it grows (a parsed request's fields), shedding
    /// larger holders if need be; false if there is no room, or it has
    /// been shed itself. [`Holder::set`] gives it back.
    pub(crate) async fn claim(&self, bytes: usize) -> bool {
        if !self.ledger.make_room(self.total(), || may_hold(bytes), || self.is_shed()).await {
            return false;
        }
        self.set(self.held().saturating_add(bytes));
        true
    }

    /// Grows the capacity of `v` to `cap` bytes (exactly, as far as the
    /// allocator goes) within the memory budget, shedding larger holders
    /// if need be; false if there is no room, or it has been shed itself.
    pub(crate) async fn grow(&self, v: &mut Vec<u8>, cap: usize) -> bool {
        let before = v.capacity();
        if cap <= before {
            return true;
        }
        let fits = || may_hold(cap - before) && v.try_reserve_exact(cap - v.len()).is_ok();
        if !self.ledger.make_room(self.total(), fits, || self.is_shed()).await {
            return false;
        }
        self.set(self.held().saturating_add(v.capacity() - before));
        true
    }
}

impl Drop for Holder<'_> {
    fn drop(&mut self) {
        self.set(0);
        let mut accounts = self.ledger.accounts.borrow_mut();
        let slot = self.account.slot.get();
        if slot < accounts.len() && Rc::ptr_eq(&accounts[slot], &self.account) {
            accounts.swap_remove(slot);
            if let Some(moved) = accounts.get(slot) {
                moved.slot.set(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_is_shed_first_and_the_small_never() {
        let stats = Stats::default();
        let ledger = Ledger::default();
        let (a, b, c) = (ledger.open(&stats), ledger.open(&stats), ledger.open(&stats));
        a.set(100 * 1024);
        b.set(300 * 1024);
        c.set(2 * 1024);
        assert_eq!(stats.held.get(), 402 * 1024);
        assert!(ledger.shed_largest(0));
        assert!(b.is_shed() && !a.is_shed());
        // b was asked already; a is next, but not for one larger than it.
        assert!(!ledger.shed_largest(200 * 1024));
        assert!(ledger.shed_largest(0));
        assert!(a.is_shed());
        // c holds too little to be worth shedding.
        assert!(!ledger.shed_largest(0));
        assert!(!c.is_shed());
        drop(b);
        assert_eq!(stats.held.get(), 102 * 1024);
        assert_eq!(stats.peak_held.get(), 402 * 1024);
        // The account moved into b's slot is still found and removed.
        drop(c);
        drop(a);
        assert_eq!(stats.held.get(), 0);
        assert!(ledger.accounts.borrow().is_empty());
    }

    #[test]
    fn what_a_flow_buffers_itself_counts_with_the_connection() {
        // A TLS connection that holds little in the server's buffers but
        // a large record half received in its own (its flow's meter), and
        // one holding a body: the TLS one is the larger, and goes first.
        let stats = Stats::default();
        let ledger = Ledger::default();
        let (tls, body) = (ledger.open(&stats), ledger.open(&stats));
        tls.set(2 * 1024);
        body.set(40 * 1024);
        let meter = tls.meter();
        meter.set(82 * 1024);
        assert!(ledger.shed_largest(0));
        assert!(tls.is_shed() && !body.is_shed());
        // Idle with little in its flow, a connection is not worth shedding.
        let idle = ledger.open(&stats);
        idle.set(2 * 1024);
        idle.meter().set(4 * 1024);
        assert!(ledger.shed_largest(0));
        assert!(body.is_shed());
        assert!(!ledger.shed_largest(0));
        assert!(!idle.is_shed());
    }

    /// A platform whose clock only moves when every task waits.
    struct Steps(u64);

    impl mirage_runtime::Platform for Steps {
        fn now(&self) -> u64 {
            self.0
        }
        fn wait(
            &mut self,
            deadline: Option<u64>,
            _: &[(mirage_runtime::Source, mirage_runtime::Interest)],
            _: &mut dyn FnMut(mirage_runtime::Source, mirage_runtime::Interest),
        ) {
            self.0 = deadline.expect("every task waits, with no deadline").max(self.0);
        }
    }

    /// Another layer that gives memory back a couple of rounds after it
    /// is asked (a reset sent, then the socket freed).
    struct Other {
        asked: Cell<u32>,
        freed: Rc<Cell<bool>>,
    }

    impl memory::Reclaim for Other {
        fn reclaimable(&self) -> bool {
            true
        }
        fn reclaim(&self) -> bool {
            self.asked.set(self.asked.get() + 1);
            let freed = self.freed.clone();
            mirage_runtime::spawn(async move {
                yield_now().await;
                yield_now().await;
                freed.set(true);
            });
            true
        }
    }

    #[test]
    fn requests_short_at_once_ask_the_other_layers_once() {
        // Three requests short of memory at once, nothing here to shed:
        // the first asks the other layers, the others wait for what it
        // asked. (Each asked, and each ask reset another idle connection,
        // where the first freed enough for all.)
        mirage_runtime::run(&mut Steps(0), async {
            let ledger = Ledger::default();
            let freed = Rc::new(Cell::new(false));
            let other = Rc::new(Other { asked: Cell::new(0), freed: freed.clone() });
            let _registered = memory::add_reclaimer(other.clone());
            let room = || ledger.make_room(0, || freed.get(), || false);
            let ((a, b), c) = mirage_runtime::join(mirage_runtime::join(room(), room()), room()).await;
            assert!(a && b && c);
            assert_eq!(other.asked.get(), 1);
        });
    }

    #[test]
    fn of_holders_of_a_size_the_one_without_progress_goes_first() {
        let stats = Stats::default();
        let ledger = Ledger::default();
        let (stalled, reading, newer) = (ledger.open(&stats), ledger.open(&stats), ledger.open(&stats));
        // About a size: their heads differ by a few bytes.
        for (h, extra) in [(&stalled, 0), (&reading, 120), (&newer, 60)] {
            h.set(16 * 1024 + extra);
        }
        // `stalled` went quiet first; `reading` keeps taking its bytes.
        reading.progressed();
        assert!(ledger.shed_largest(0));
        assert!(stalled.is_shed() && !reading.is_shed() && !newer.is_shed());
        assert!(ledger.shed_largest(0));
        assert!(newer.is_shed() && !reading.is_shed());
        // A larger holder still goes before any of a smaller size.
        let large = ledger.open(&stats);
        large.set(64 * 1024);
        assert!(ledger.shed_largest(0));
        assert!(large.is_shed() && !reading.is_shed());
    }
}
