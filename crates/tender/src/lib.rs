//! The tenders: `solo5-hvt` (a KVM virtual machine monitor), `solo5-spt` (a
//! seccomp-sandboxed process) and `solo5-elftool`, binary-compatible with
//! Solo5 v0.12.1.
//!
//! A tender loads a unikernel, attaches the host resources its manifest
//! declares (block devices on files, network interfaces on tap devices),
//! confines itself with seccomp, and serves the guest's hypercalls (hvt) or
//! lets it make a handful of system calls (spt) until it exits.
//!
//! Everything the guest controls is untrusted: the executable
//! ([`solo5_elf`]), its manifest ([`solo5_abi::mft::read`]), and every
//! hypercall argument ([`hvt::memory::GuestMemory`], the one checked path to
//! guest memory). A bad guest ends with a message and exit status 1, never
//! with a panic of the tender.
//!
//! Module map:
//! * [`cli`]: the command line, parsed in Solo5's two passes;
//! * [`exe`]: reading the executable, its ABI and manifest notes;
//! * [`devices`], [`block`] (and the `tap` crate): attaching the manifest's devices;
//! * [`host`]: what both tenders do on the host alike (options, the wait set);
//! * [`hvt`]: the KVM tender; [`spt`]: the seccomp tender;
//! * [`virtio`]: `solo5-virtio`, which checks like a tender and boots the
//!   guest under QEMU;
//! * [`elftool`], [`json`]: `solo5-elftool`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::fmt;
use std::sync::OnceLock;

pub mod block;
pub mod cli;
pub mod devices;
pub mod elftool;
pub mod exe;
pub mod host;
pub mod hvt;
pub mod json;
pub mod seccomp;
pub mod spt;
pub mod virtio;

/// How a tender stops before (or instead of) running the guest. The
/// binaries turn this into Solo5's output and exit status.
#[derive(Debug)]
pub enum Exit {
    /// `errx(1, ...)`: the message, then status 1.
    Fatal(String),
    /// An optional warning, the usage text, then status 1.
    Usage(Option<String>),
    /// `--version`: the version text, then status 0.
    Version,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Fatal(m) => f.write_str(m),
            Exit::Usage(Some(m)) => write!(f, "{m} (usage)"),
            Exit::Usage(None) => f.write_str("usage"),
            Exit::Version => f.write_str("version"),
        }
    }
}

/// Builds an [`Exit::Fatal`] from a format string.
#[macro_export]
macro_rules! fatal {
    ($($arg:tt)*) => {
        $crate::Exit::Fatal(format!($($arg)*))
    };
}

static PROG: OnceLock<String> = OnceLock::new();

/// Records the program name (the basename of `argv[0]`) for messages.
pub fn set_prog(argv0: &std::ffi::OsStr) {
    let name = std::path::Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "solo5".to_string());
    let _ = PROG.set(name);
}

/// The program name, as `warnx` prints it.
pub fn prog() -> &'static str {
    PROG.get().map(String::as_str).unwrap_or("solo5")
}

/// `warnx`: prints `prog: message` on standard error.
pub fn warn(msg: impl fmt::Display) {
    eprintln!("{}: {msg}", prog());
}

/// The C library's text for an OS error, as `err(3)` appends it (no
/// "(os error N)" suffix).
pub fn strerror(e: &std::io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(i)) => text[..i].to_string(),
        _ => text,
    }
}

/// The `main` of a tender binary: records the program name, runs `run` on
/// the arguments and exits as Solo5 does ([`exit_with`]).
pub fn tender_main(
    run: fn(&[std::ffi::OsString]) -> Result<i32, Exit>,
    usage: fn(&str) -> String,
    version: fn(&str) -> String,
) -> ! {
    let mut args = std::env::args_os();
    set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    exit_with(run(&args), || usage(prog()), || version(prog()))
}

/// Runs a tender's body and exits as Solo5 does: the guest's status, or 1
/// with a message, or 0 for `--version`.
pub fn exit_with(result: Result<i32, Exit>, usage: impl FnOnce() -> String, version: impl FnOnce() -> String) -> ! {
    let code = match result {
        Ok(status) => status,
        Err(Exit::Fatal(msg)) => {
            warn(msg);
            1
        }
        Err(Exit::Usage(msg)) => {
            if let Some(msg) = msg {
                warn(msg);
            }
            eprint!("{}", usage());
            1
        }
        Err(Exit::Version) => {
            eprint!("{}", version());
            0
        }
    };
    std::process::exit(code)
}
