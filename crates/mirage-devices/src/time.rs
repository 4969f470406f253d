//! Clocks and sleeping.
//!
//! Monotonic time is an [`Instant`] in nanoseconds from an arbitrary origin
//! (the boot of the unikernel, usually); wall-clock time is a [`Timestamp`]
//! in nanoseconds since the Unix epoch.

pub use core::time::Duration;

/// A point on a monotonic clock, in nanoseconds from the clock's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl core::ops::Sub for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// A wall-clock time: nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }
}

/// A monotonic clock (`Mirage_clock.MCLOCK`): never goes back.
pub trait MonotonicClock {
    /// The current time.
    fn now(&self) -> Instant;
}

/// A wall clock (`Mirage_clock.PCLOCK`): may jump.
pub trait WallClock {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// Sleeping (`Mirage_time`): waits without using the CPU.
pub trait Sleep: MonotonicClock {
    /// Waits until the monotonic clock reaches `deadline`.
    async fn sleep_until(&self, deadline: Instant);

    /// Waits for `d`.
    async fn sleep(&self, d: Duration) {
        let deadline = self.now() + d;
        self.sleep_until(deadline).await
    }
}

impl<T: MonotonicClock> MonotonicClock for &T {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

impl<T: Sleep> Sleep for &T {
    async fn sleep_until(&self, deadline: Instant) {
        (**self).sleep_until(deadline).await
    }
}

impl<T: WallClock> WallClock for &T {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant(10);
        assert_eq!(t + Duration::from_nanos(5), Instant(15));
        assert_eq!(Instant(u64::MAX - 1) + Duration::from_secs(1), Instant(u64::MAX));
        assert_eq!(Instant(3) - Instant(10), Duration::ZERO);
        assert_eq!(Instant(10) - Instant(3), Duration::from_nanos(7));
        assert_eq!(Timestamp(1_500_000_000_000_000_000).as_secs(), 1_500_000_000);
    }
}
