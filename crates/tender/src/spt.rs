//! `solo5-spt`: runs a unikernel inside this process, confined by seccomp.
//!
//! Guest memory is mapped at its own addresses (guest address = host
//! address, from [`solo5_abi::spt::HOST_MEM_BASE`]), the executable is loaded
//! into it, and the tender installs a seccomp filter that allows the guest
//! only the system calls of the Solo5 spt ABI, each bound to the descriptors
//! and sizes it may use. Then it jumps to the guest's entry point on the
//! guest's own stack and is never returned to: the guest ends the process
//! with `exit_group`, or the kernel ends it for a fault (SIGSEGV) or a
//! forbidden call (SIGSYS).

use std::convert::Infallible;
use std::ffi::OsString;
use std::os::fd::AsRawFd;

use solo5_abi::mft::MftType;
use solo5_abi::note::AbiTarget;
use solo5_abi::spt::{self, BootInfo, sys};

use crate::cli;
use crate::devices::{BLOCK_USAGE, Devices, NET_USAGE};
use crate::host::{self, Tender, WaitSet};
use crate::seccomp::{Arg, Policy};
use crate::{Exit, exe, fatal, strerror, warn};

const CORE_USAGE: &str = "--x-exec-heap (make the heap executable). WARNING: This option is dangerous and not recommended as it makes the heap and stack executable.";

/// The usage text.
pub fn usage(prog: &str) -> String {
    let core = format!("{CORE_USAGE}\n    {}", crate::MAP_IMAGE_USAGE);
    cli::usage(prog, false, &[("core", Some(&core)), ("net", Some(NET_USAGE)), ("block", Some(BLOCK_USAGE))])
}

/// The `--version` text.
pub fn version(prog: &str) -> String {
    cli::version(prog, spt::ABI_VERSION)
}

fn os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Guest memory: `[HOST_MEM_BASE, mem_size)` of this process.
struct Memory {
    mem_size: u64,
}

impl Memory {
    fn map(mem_size: u64, exec: bool) -> Result<Memory, Exit> {
        if mem_size <= spt::HOST_MEM_BASE {
            return Err(fatal!("guest memory size {mem_size} bytes is too small"));
        }
        let len = (mem_size - spt::HOST_MEM_BASE) as usize;
        let mut prot = libc::PROT_READ | libc::PROT_WRITE;
        if exec {
            prot |= libc::PROT_EXEC;
        }
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping: if
        // anything of this process lies in the range the call fails (EEXIST)
        // and nothing changes.
        let p = unsafe {
            libc::mmap(
                spt::HOST_MEM_BASE as *mut libc::c_void,
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Err(fatal!(
                    "Error allocating guest memory: 0x{:x}-0x{mem_size:x} overlaps the tender's own memory; decrease --mem",
                    spt::HOST_MEM_BASE
                ));
            }
            return Err(fatal!("Error allocating guest memory: {}", strerror(&e)));
        }
        if p as u64 != spt::HOST_MEM_BASE {
            return Err(fatal!("Error allocating guest memory: mapped at {p:?}"));
        }
        Ok(Memory { mem_size })
    }

    /// The host pointer for guest range `[addr, addr + len)`, inside the mapping.
    fn ptr(&self, addr: u64, len: u64) -> Result<*mut u8, Exit> {
        match addr.checked_add(len) {
            Some(end) if addr >= spt::HOST_MEM_BASE && end <= self.mem_size => Ok(addr as *mut u8),
            _ => Err(fatal!("guest range 0x{addr:x}+{len} is outside guest memory")),
        }
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Exit> {
        let p = self.ptr(addr, bytes.len() as u64)?;
        // SAFETY: ptr() checked the range is inside our guest mapping, which
        // nothing else references while the tender sets it up.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        Ok(())
    }

    /// Maps the whole pages of read-only segment `s` from `file` over its
    /// place in guest memory, where the segment and its bytes in the file
    /// start on a page; returns how many bytes of it are mapped (0: none,
    /// the caller copies them all).
    fn map_file(&self, file: &std::fs::File, s: &solo5_elf::Segment) -> Result<u64, Exit> {
        let Some(whole) = crate::mappable(s) else { return Ok(0) };
        let p = self.ptr(s.vaddr, whole)?;
        // SAFETY: the range lies inside the guest mapping (ptr checked it),
        // which nothing references while the tender sets it up.
        unsafe { crate::map_file_at(p, whole, file, s.file_offset) }
            .map_err(|e| fatal!("mapping the image into guest memory failed: {}", strerror(&e)))?;
        Ok(whole)
    }

    fn protect(&self, start: u64, end: u64, prot: i32) -> std::io::Result<()> {
        let p =
            self.ptr(start, end.saturating_sub(start)).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the range is inside the guest mapping.
        if unsafe { libc::mprotect(p.cast(), (end - start) as usize, prot) } != 0 {
            return Err(os_error());
        }
        Ok(())
    }
}

/// Runs `solo5-spt` with `args` (program name excluded). Does not return
/// unless set-up fails.
pub fn run(args: &[OsString]) -> Result<Infallible, Exit> {
    let cl = cli::split(args)?;
    let exe = exe::open(&cl.kernel, AbiTarget::Spt, spt::ABI_VERSION)?;
    let mut devices = Devices::new(exe.manifest.clone());
    // The guest reads and writes its taps itself: it may have them with
    // virtio-net headers, if its image asks.
    devices.offer_vnet_hdr = true;
    let mut exec_heap = false;
    let mut map_image = false;
    let mem_size = host::parse_options(&cl, &mut devices, spt::DEFAULT_MEM_SIZE, |arg| {
        if arg == crate::MAP_IMAGE {
            map_image = true;
            return true;
        }
        let is = arg.starts_with("--x-exec-heap");
        if is {
            warn(
                "WARNING: The use of --x-exec-heap is dangerous and not recommended as it makes the heap and stack executable.",
            );
            exec_heap = true;
        }
        is
    })?;
    host::refuse_read_implies_exec()?;
    let mem = Memory::map(mem_size, exec_heap)?;
    let wait = WaitSet::new(Tender::Spt, spt::INTERNAL_TIMERFD)?;

    let plan = solo5_elf::load_plan(&exe.bytes, mem_size, spt::GUEST_MIN_BASE)
        .map_err(|e| crate::load_error(&exe.name, &e, mem_size))?;
    for s in &plan.segments {
        let mapped = match exe.bytes.file() {
            Some(file) if map_image => mem.map_file(file, s)?,
            _ => 0,
        };
        mem.write(s.vaddr + mapped, &plan.file_bytes(&exe.bytes, s)[mapped as usize..])?;
        let mut prot = libc::PROT_NONE;
        if s.prot.read {
            prot |= libc::PROT_READ;
        }
        if s.prot.write {
            prot |= libc::PROT_WRITE;
        }
        if s.prot.exec {
            prot |= libc::PROT_EXEC;
        }
        mem.protect(s.prot_start, s.prot_end, prot)
            .map_err(|e| fatal!("{}: mprotect failed: {}", exe.name, strerror(&e)))?;
    }
    drop(exe);

    let mut policy = core_policy(wait.epoll.as_raw_fd(), wait.timerfd.as_raw_fd());
    devices.setup_net()?;
    for i in devices.attached(MftType::NetBasic).collect::<Vec<_>>() {
        if let Some((_, fd)) = devices.get(i as u64, MftType::NetBasic) {
            wait.add(fd, i as u64)?;
            policy.when(libc::SYS_read, &[Arg::Int(0, fd as u64)], "solo5_net_read").when(
                libc::SYS_write,
                &[Arg::Int(0, fd as u64)],
                "solo5_net_write",
            );
            if devices.entries[i].net_vnet_hdr() {
                // The header and the frame in two vectors (ours).
                policy.when(libc::SYS_readv, &[Arg::Int(0, fd as u64)], "net_read_hdr").when(
                    libc::SYS_writev,
                    &[Arg::Int(0, fd as u64)],
                    "net_write_hdr",
                );
            }
            if devices.entries[i].net_rx_offload() {
                // Receive offload, at the guest's request, and only that
                // request (ours; MftEntry::net_rx_offload).
                policy.when(
                    libc::SYS_ioctl,
                    &[Arg::Int(0, fd as u64), Arg::Int(1, tap::TUNSETOFFLOAD), Arg::Eq(2, tap::RX_OFFLOAD_FLAGS)],
                    "net_rx_offload",
                );
            }
        }
    }
    devices.setup_block()?;
    let blocks: Vec<usize> = devices.attached(MftType::BlockBasic).collect();
    // Runs cost the filter about twenty rules a descriptor, and a filter
    // holds 4,096 instructions: with many devices, the first ones keep
    // their runs and the rest go back to one block a call (their grant
    // cleared, so that their guest asks no more), as few as it takes.
    let mut with_runs = blocks.len();
    let base = policy;
    policy = loop {
        let mut p = base.clone();
        for (n, &i) in blocks.iter().enumerate() {
            block_rules(&mut p, &devices, i, n < with_runs);
        }
        if with_runs == 0 || p.compile().is_ok() {
            break p;
        }
        with_runs /= 2;
    };
    for &i in &blocks[with_runs..] {
        devices.entries[i].set_block_runs(false);
    }
    devices.check_all_attached()?;

    let manifest = devices.manifest_bytes();
    let cmdline = cli::guest_cmdline(&cl.guest_args, spt::CMDLINE_SIZE)?;
    let mft_addr = spt::BOOT_INFO_BASE + std::mem::size_of::<BootInfo>() as u64;
    let cmdline_addr = mft_addr + manifest.len() as u64;
    let bi = BootInfo {
        mem_size,
        kernel_end: plan.kernel_end,
        cmdline: cmdline_addr,
        mft: mft_addr,
        epollfd: wait.epoll.as_raw_fd(),
        timerfd: wait.timerfd.as_raw_fd(),
    };
    mem.write(spt::BOOT_INFO_BASE, zerocopy::IntoBytes::as_bytes(&bi))?;
    mem.write(mft_addr, &manifest)?;
    mem.write(cmdline_addr, &cmdline)?;

    // The guest owns these descriptors from now on.
    std::mem::forget(wait);
    std::mem::forget(devices);
    launch(&policy, plan.entry, mem_size)
}

/// The filter's rules for block device `i`: `pread64` and `pwrite64` on
/// its descriptors, never past the end (a guest cannot grow the backing
/// file), of one block a call as Solo5's filter allows or, with `runs`
/// (ours, granted in the manifest: `MftEntry::block_runs`), also of 2^k
/// blocks up to `BLOCK_RUN_MAX` bytes, each length with its own bound so
/// that no run ends past the device (a filter compares with constants
/// only: lengths from a fixed set are what it can bound). A device granted
/// flushes (`--block-dsync:`, ours) has a second, cached descriptor, on
/// the same terms, which the guest may also sync.
fn block_rules(policy: &mut Policy, devices: &Devices, i: usize, runs: bool) {
    let Some((e, fd)) = devices.get(i as u64, MftType::BlockBasic) else { return };
    let bs = e.block_size() as u64;
    let capacity = e.block_capacity();
    let flush_fd = devices.flush_fd(i as u64);
    let max = if runs { solo5_abi::mft::BLOCK_RUN_MAX } else { bs };
    for fd in std::iter::once(fd).chain(flush_fd) {
        let mut len = bs;
        while len <= capacity && (len == bs || len <= max) {
            let cond = [Arg::Int(0, fd as u64), Arg::Eq(2, len), Arg::Le(3, capacity - len)];
            policy.when(libc::SYS_pread64, &cond, "solo5_block_read").when(
                libc::SYS_pwrite64,
                &cond,
                "solo5_block_write",
            );
            len *= 2;
        }
    }
    if let Some(fd) = flush_fd {
        policy.when(libc::SYS_fdatasync, &[Arg::Int(0, fd as u64)], "block flush (ours)");
    }
}

/// The system calls every spt guest may make.
pub fn core_policy(epollfd: i32, timerfd: i32) -> Policy {
    let mut p = Policy::default();
    p.when(libc::SYS_write, &[Arg::Int(0, 1)], "solo5_console_write")
        .any(libc::SYS_exit_group, "solo5_exit")
        .when(libc::SYS_epoll_pwait, &[Arg::Int(0, epollfd as u64)], "solo5_yield")
        .when(libc::SYS_timerfd_settime, &[Arg::Int(0, timerfd as u64)], "solo5_yield deadline")
        .when(libc::SYS_clock_gettime, &[Arg::Int(0, sys::CLOCK_MONOTONIC)], "solo5_clock_monotonic")
        .when(libc::SYS_clock_gettime, &[Arg::Int(0, sys::CLOCK_REALTIME)], "solo5_clock_wall")
        .when(libc::SYS_arch_prctl, &[Arg::Int(0, sys::ARCH_SET_FS)], "solo5_set_tls_base");
    p
}

fn launch(policy: &Policy, entry: u64, mem_size: u64) -> Result<Infallible, Exit> {
    let prog = policy.compile()?;
    // The guest inherits this process's signal dispositions. Restore the
    // defaults the Rust runtime changed, so that a guest fault ends the
    // process with SIGSEGV (not in a handler that the filter would kill) and
    // a closed console behaves as for any program.
    for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGPIPE] {
        // SAFETY: restoring the default disposition of a signal.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    seccompiler::apply_filter(&prog).map_err(|e| fatal!("seccomp(SECCOMP_SET_MODE_FILTER) failed: {e}"))?;
    let sp = mem_size - 8;
    // SAFETY: from here on this thread is the guest. The stack is the top of
    // guest memory (mapped read-write, 16-byte aligned + 8 as after a call),
    // %rdi points to the boot information written above, and the entry
    // point lies in a loaded executable segment (checked by the load plan).
    // Nothing of the tender runs again.
    unsafe {
        std::arch::asm!(
            "mov rsp, {sp}",
            "xor ebp, ebp",
            "jmp {entry}",
            sp = in(reg) sp,
            entry = in(reg) entry,
            in("rdi") spt::BOOT_INFO_BASE,
            options(noreturn)
        )
    }
}
