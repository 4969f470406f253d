//! The console: the tender's standard output.
//!
//! On hvt every write to the host is a VM exit, so output collects in a
//! buffer and goes out in one `PUTS` when the buffer fills, when the guest
//! yields, and when it exits or aborts. On spt a write is a cheap system
//! call, and on virtio a few port writes to the serial line: it goes out
//! at once.

use core::sync::atomic::{AtomicU8, Ordering};

pub use crate::cmdline::Level;

use super::platform;

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub(crate) fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether the bindings print messages of `level`.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

#[cfg(feature = "hvt")]
mod buffer {
    use super::super::Global;

    pub const SIZE: usize = 8192;
    pub struct Buf {
        pub len: usize,
        pub data: [u8; SIZE],
    }
    pub static BUF: Global<Buf> = Global::new(Buf { len: 0, data: [0; SIZE] });
}

/// Writes `bytes` to the console (`solo5_console_write`).
pub fn write(bytes: &[u8]) {
    #[cfg(feature = "hvt")]
    {
        let mut rest = bytes;
        while !rest.is_empty() {
            let full = buffer::BUF.with(|b| {
                let n = rest.len().min(buffer::SIZE - b.len);
                b.data[b.len..b.len + n].copy_from_slice(&rest[..n]);
                b.len += n;
                rest = &rest[n..];
                b.len == buffer::SIZE
            });
            if full {
                flush();
            }
        }
    }
    #[cfg(not(feature = "hvt"))]
    platform::puts(bytes);
}

/// Sends buffered output to the host now.
pub fn flush() {
    #[cfg(feature = "hvt")]
    buffer::BUF.with(|b| {
        if b.len > 0 {
            platform::puts(&b.data[..b.len]);
            b.len = 0;
        }
    });
}

/// A `core::fmt::Write` for the console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Writer;

impl core::fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}

/// Prints a message of the bindings at `level`.
pub fn log(level: Level, args: core::fmt::Arguments<'_>) {
    if enabled(level) {
        let _ = core::fmt::Write::write_fmt(&mut Writer, args);
    }
}

/// Prints to the console, like `print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Writer, format_args!($($arg)*));
    }};
}

/// Prints a line to the console, like `println!`.
#[macro_export]
macro_rules! println {
    () => { $crate::console::write(b"\n") };
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Writer, format_args!($($arg)*));
        $crate::console::write(b"\n");
    }};
}
