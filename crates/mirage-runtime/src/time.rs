//! Time inside the runtime: the monotonic clock, sleeping, timeouts.
//!
//! [`Clock`] implements the device traits [`MonotonicClock`] and [`Sleep`]
//! with the runtime's timers, on every target.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

pub use mirage_devices::time::{Duration, Instant, MonotonicClock, Sleep};

use crate::core_state::with_core;

/// The monotonic clock of the running runtime.
///
/// # Panics
/// Outside [`crate::run`].
pub fn now() -> Instant {
    let t = with_core(|c| clock_now(c));
    Instant(t.expect("mirage_runtime::time::now outside the runtime"))
}

/// A future that completes at a deadline (given, or computed from a
/// duration when first polled).
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct SleepUntil {
    deadline: Option<u64>,
    after: Duration,
    timer: Option<u64>,
}

fn clock_now(c: &crate::core_state::Core) -> u64 {
    match c.clock {
        Some(f) => f(),
        None => c.now,
    }
}

impl Future for SleepUntil {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (deadline, after, timer) = (self.deadline, self.after, self.timer);
        let state = with_core(|c| {
            let now = clock_now(c);
            let deadline = deadline.unwrap_or_else(|| (Instant(now) + after).0);
            if now >= deadline {
                if let Some(id) = timer {
                    c.timers.cancel(id);
                }
                return (deadline, None);
            }
            let id = match timer {
                Some(id) => {
                    c.timers.update(id, cx.waker());
                    id
                }
                None => c.timers.add(deadline, cx.waker().clone()),
            };
            (deadline, Some(id))
        })
        .expect("mirage_runtime sleep outside the runtime");
        self.deadline = Some(state.0);
        self.timer = state.1;
        if state.1.is_some() { Poll::Pending } else { Poll::Ready(()) }
    }
}

impl Drop for SleepUntil {
    fn drop(&mut self) {
        if let Some(id) = self.timer {
            with_core(|c| c.timers.cancel(id));
        }
    }
}

/// Waits until the monotonic clock reaches `deadline`.
pub fn sleep_until(deadline: Instant) -> SleepUntil {
    SleepUntil { deadline: Some(deadline.0), after: Duration::ZERO, timer: None }
}

/// Waits for `d`, counted from the first poll.
pub fn sleep(d: Duration) -> SleepUntil {
    SleepUntil { deadline: None, after: d, timer: None }
}

/// `fut` did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl core::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

/// Runs `fut` for at most `d`.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    match crate::select(fut, sleep(d)).await {
        crate::Either::Left(x) => Ok(x),
        crate::Either::Right(()) => Err(Elapsed),
    }
}

/// The runtime's clock and timers as devices: [`MonotonicClock`] and
/// [`Sleep`] on every target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock;

impl MonotonicClock for Clock {
    fn now(&self) -> Instant {
        now()
    }
}

impl Sleep for Clock {
    async fn sleep_until(&self, deadline: Instant) {
        sleep_until(deadline).await
    }
}

/// The civil date (year, month 1-12, day 1-31) of `days` since 1970-01-01,
/// proleptic Gregorian (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
