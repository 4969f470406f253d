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

/// The error of an image that does not load into `mem_size` bytes of
/// guest memory: Solo5's words, and where a larger `--mem` would fit the
/// image, that too.
pub fn load_error(name: &str, e: &solo5_elf::ElfError, mem_size: u64) -> Exit {
    if e.needs_more_memory() {
        fatal!("{name}: {e}; the image does not fit in --mem={} MiB: give it more memory", mem_size >> 20)
    } else {
        fatal!("{name}: {e}")
    }
}

static PROG: OnceLock<String> = OnceLock::new();

/// Ours, on hvt and spt: the image's read-only segments (its code and
/// constants) are mapped from its file rather than copied into guest
/// memory, so that every tender running the same file shares their pages
/// (the page cache's), as processes share an executable's. For an image
/// that does not change while it runs, such as one in a container image's
/// snapshot (`mirage-runc` gives it): a file rewritten in place would
/// change a running guest's code under it (replace a file by renaming a
/// new one over it, as package managers replace libraries).
pub const MAP_IMAGE: &str = "--x-map-image";

/// The usage line of [`MAP_IMAGE`].
pub const MAP_IMAGE_USAGE: &str = "--x-map-image (map the image's code from its file, shared by every tender running it; the file must not change while the guest runs)";

/// The whole pages of segment `s` that [`MAP_IMAGE`] maps from the file
/// (`None`: none, it is copied): a read-only segment starting on a page
/// in memory and in the file, the bytes of its last partial page copied.
pub fn mappable(s: &solo5_elf::Segment) -> Option<u64> {
    let page = solo5_abi::PAGE_SIZE;
    let whole = s.filesz & !(page - 1);
    (!s.prot.write && s.vaddr.is_multiple_of(page) && s.file_offset.is_multiple_of(page) && whole > 0).then_some(whole)
}

/// Maps `len` bytes of `file` from `offset` at `at`, privately and
/// read-only, replacing the pages there ([`MAP_IMAGE`]).
///
/// # Safety
/// `[at, at + len)` is memory of this process that nothing references
/// (guest memory before the guest runs); its pages are replaced.
pub unsafe fn map_file_at(at: *mut u8, len: u64, file: &std::fs::File, offset: u64) -> std::io::Result<()> {
    let einval = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let page = solo5_abi::PAGE_SIZE;
    if !(at as u64).is_multiple_of(page) || !len.is_multiple_of(page) || !offset.is_multiple_of(page) || len == 0 {
        return Err(einval());
    }
    let offset = libc::off_t::try_from(offset).map_err(|_| einval())?;
    // SAFETY: the caller gives the range over; MAP_FIXED replaces only its
    // pages. The mapping is private: nothing written to it reaches the file.
    let q = unsafe {
        libc::mmap(
            at.cast(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset,
        )
    };
    if q != at.cast() {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

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

/// Opens `/dev/null` on each of descriptors 0, 1 and 2 that is closed, as
/// the Rust runtime's start-up does for an ordinary `main` (the tenders'
/// is `no_main`). Otherwise the next file opened takes the number: a disk
/// opened as descriptor 1 would take the guest's console writes, which
/// the seccomp filter allows on descriptor 1 whatever it is, and could be
/// grown without bound. False if `/dev/null` cannot be opened.
fn standard_fds_open() -> bool {
    for fd in 0..=2 {
        // SAFETY: F_GETFD reads a descriptor's flags and touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF)
        {
            continue;
        }
        // SAFETY: the path is a NUL-terminated literal; open(2) returns
        // the lowest free descriptor, which is `fd`, left open for good.
        let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if got != fd {
            return false;
        }
    }
    true
}

/// The `main` of a tender binary: records the program name, runs `run` on
/// the arguments and exits as Solo5 does ([`exit_with`]).
pub fn tender_main(
    run: fn(&[std::ffi::OsString]) -> Result<i32, Exit>,
    usage: fn(&str) -> String,
    version: fn(&str) -> String,
) -> ! {
    if !standard_fds_open() {
        // Nothing to report on: standard error may be among the closed.
        std::process::exit(1);
    }
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
