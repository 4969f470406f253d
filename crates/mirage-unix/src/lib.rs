//! The unix target: a unikernel as an ordinary Linux process, for
//! development and tests.
//!
//! The device traits of `mirage-devices` over the host: [`Console`] on
//! standard output, [`TapNet`] on a tap device, [`FileBlock`] on a file,
//! [`DirKv`] on a directory, [`WallClock`], [`Random`] from the kernel, and
//! [`SocketStack`], TCP and UDP over the host's own sockets. The executor
//! sleeps in `ppoll(2)` until the next timer or a descriptor is ready.
//!
//! A unikernel's `main` on unix:
//!
//! ```no_run
//! use mirage_runtime::args::Arg;
//! let specs = [Arg::new::<String>("hello", Some("Hello World!"), "How to say hello.")];
//! let args = match mirage_unix::boot("hello", &specs) {
//!     Ok(a) => a,
//!     Err(code) => std::process::exit(code),
//! };
//! std::process::exit(mirage_unix::run(async move {
//!     let console = mirage_unix::Console;
//!     mirage_devices::console::Console::log(&console, &args.get::<String>("hello")).await
//! }));
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

mod block;
mod kv;
mod net;
mod platform;
mod socket;

pub use block::FileBlock;
pub use kv::DirKv;
pub use net::TapNet;
pub use platform::{UnixPlatform, monotonic_ns};
pub use socket::{SocketListener, SocketStack, SocketUdp, TcpFlow};

use mirage_devices::time::Timestamp;
use mirage_runtime::Outcome;
use mirage_runtime::args::{Arg, Args};
use mirage_runtime::logger::Sink;

fn write_stdout(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Parses the process's arguments for `program` against `specs` and sets up
/// logging; on `--help` or a bad argument, prints and returns the exit
/// status (0 or 64).
pub fn boot(program: &str, specs: &[Arg]) -> Result<Args, i32> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    mirage_runtime::memory::set_heap_probe(heap_in_use);
    if let Some(limit) = data_limit() {
        mirage_runtime::memory::set_heap_size(limit);
    }
    mirage_runtime::boot(program, specs, &argv, Sink { write: write_stdout, wall: Some(wall_ns) })
}

/// The process's data limit (`RLIMIT_DATA`, as `prlimit --data` sets it),
/// which bounds the heap, if there is one. A process without one has no
/// fixed heap, and its memory budget is the host's to enforce.
fn data_limit() -> Option<usize> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut lim) };
    (r == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// glibc's count of bytes allocated and not yet freed (main arena and
/// mmapped chunks).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

/// Runs `start` to completion on this thread; its exit status.
pub fn run<F: std::future::Future>(start: F) -> i32
where
    F::Output: Outcome,
{
    let mut platform = UnixPlatform::new();
    mirage_runtime::run(&mut platform, start).exit_code()
}

/// The console: standard output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl mirage_devices::console::Console for Console {
    async fn write(&self, bytes: &[u8]) -> Result<(), mirage_devices::console::Error> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => mirage_devices::console::Error::Closed,
            _ => mirage_devices::console::Error::Io,
        })
    }
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl mirage_devices::time::WallClock for WallClock {
    fn now(&self) -> Timestamp {
        Timestamp(wall_ns())
    }
}

/// Random bytes from the kernel (`getrandom(2)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl mirage_devices::random::Random for Random {
    fn fill(&self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: the range [done, len) of buf is writable.
            let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
            if n > 0 {
                done += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // getrandom(2) fails only without kernel support; a unikernel
                // must not go on with predictable randomness.
                panic!("getrandom failed: {}", std::io::Error::last_os_error());
            }
        }
    }

    fn weakness(&self) -> Option<&'static str> {
        // The kernel's generator is seeded from the hardware and reseeded
        // by the kernel; getrandom(2) blocks until it is initialised.
        None
    }
}
