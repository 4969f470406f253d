//! Clocks (`solo5_clock_monotonic`, `solo5_clock_wall`).

use super::platform;

/// Nanoseconds on a clock that never goes back, from an arbitrary origin.
/// On hvt it is read from the TSC without leaving the guest.
pub fn monotonic() -> u64 {
    platform::monotonic()
}

/// Nanoseconds since the Unix epoch.
pub fn wall() -> u64 {
    platform::wall()
}
