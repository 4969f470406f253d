//! `solo5-hvt`: runs a unikernel as a KVM virtual machine.
//!
//! The set-up follows Solo5's `hvt_main.c` step for step, so that errors
//! come out in the same order: command line, executable and manifest,
//! device options, memory size, KVM, ELF load, net ring reservation, vCPU
//! state, device set-up, boot information, seccomp, then the vCPU loop.
//!
//! The guest starts in 64-bit mode at CPL 0 with Solo5's page tables and
//! GDT ([`x86`]); it talks to the tender only through port I/O hypercalls
//! ([`hypercall`]) and the net ring ([`ring`]).

use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd};
use solo5_abi::hvt::{
    self, BootInfo, FEATURE_NET_CSUM, FEATURE_NET_RX_OFFLOAD, FEATURE_NET_TSO, FEATURE_RING_BLOCK, FEATURE_RING_IO,
    FEATURE_RING_POSTED, FEATURE_RING_SERVE, GUEST_MAX_MEM_SIZE, GUEST_PAGE_SIZE, TrapRegs,
};
use solo5_abi::mft::MftType;
use solo5_abi::note::AbiTarget;
use solo5_abi::ring::RING_RESERVED_SIZE;

use crate::cli;
use crate::devices::{BLOCK_USAGE, Devices, NET_USAGE};
use crate::host;
use crate::seccomp::{Arg, Policy};
use crate::{Exit, exe, fatal, strerror, warn};

pub mod dumpcore;
pub mod gdb;
pub mod hypercall;
pub mod memory;
pub mod ring;
pub mod state;
pub mod x86;

use dumpcore::DumpCore;
use hypercall::{Hypercalls, Outcome};
use memory::GuestMemory;
use ring::{Failure, RingThread, VcpuStopper};

/// The usage text.
pub fn usage(prog: &str) -> String {
    cli::usage(
        prog,
        true,
        &[
            ("core", Some(crate::MAP_IMAGE_USAGE)),
            ("block", Some(BLOCK_USAGE)),
            ("net", Some(NET_USAGE)),
            ("gdb", Some(gdb::USAGE)),
            ("dumpcore", Some(dumpcore::USAGE)),
        ],
    )
}

/// The `--version` text.
pub fn version(prog: &str) -> String {
    cli::version(prog, hvt::ABI_VERSION)
}

/// Rounds the memory size down to whole 2 MiB pages (at least one) and
/// checks the 4 GiB limit, as `hvt_x86_mem_size`.
pub fn adjust_mem_size(requested: u64) -> Result<u64, Exit> {
    let mut mem = requested / GUEST_PAGE_SIZE * GUEST_PAGE_SIZE;
    if mem == 0 {
        mem = GUEST_PAGE_SIZE;
    }
    if mem != requested {
        warn(format_args!("adjusting memory to {mem} bytes"));
    }
    if mem > GUEST_MAX_MEM_SIZE {
        return Err(fatal!("guest memory size {mem} bytes exceeds the max size {GUEST_MAX_MEM_SIZE} bytes"));
    }
    Ok(mem)
}

static SIGNAL_PREFIX: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

extern "C" fn on_signal(signo: libc::c_int) {
    // Only async-signal-safe calls: write(2) and _exit(2).
    let mut msg = [0u8; 128];
    let prefix = SIGNAL_PREFIX.get().map(Vec::as_slice).unwrap_or(b"solo5-hvt: ");
    let text = b"Exiting on signal ";
    let mut n = 0;
    for &b in prefix.iter().chain(text.iter()).take(100) {
        msg[n] = b;
        n += 1;
    }
    let mut digits = [0u8; 10];
    let mut d = 0;
    let mut v = signo.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        msg[n] = digits[d];
        n += 1;
    }
    msg[n] = b'\n';
    n += 1;
    // SAFETY: writing a stack buffer to stderr, then exiting without running
    // any handlers: both async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), n);
        libc::_exit(1);
    }
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Nothing: the signal only interrupts KVM_RUN or a POLL's epoll_pwait.
}

fn install_signal_handlers() -> Result<(), Exit> {
    let _ = SIGNAL_PREFIX.set(format!("{}: ", crate::prog()).into_bytes());
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // async-signal-safe extern "C" fn; sa_mask is filled before use.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigfillset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(fatal!("Could not install signal handler: {}", strerror(&std::io::Error::last_os_error())));
            }
        }
    }
    // SAFETY: as above; no SA_RESTART, so that the signal interrupts the
    // system call under way.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop_signal as *const () as usize;
        libc::sigfillset(&mut sa.sa_mask);
        if libc::sigaction(ring::STOP_SIGNAL, &sa, std::ptr::null_mut()) != 0 {
            return Err(fatal!("Could not install signal handler: {}", strerror(&std::io::Error::last_os_error())));
        }
    }
    Ok(())
}

/// Runs `solo5-hvt` with `args` (program name excluded); returns the guest's
/// exit status.
pub fn run(args: &[OsString]) -> Result<i32, Exit> {
    let cl = cli::split(args)?;
    let exe = exe::open(&cl.kernel, AbiTarget::Hvt, hvt::ABI_VERSION)?;
    let mut devices = Devices::new(exe.manifest.clone());
    // The tender reads and writes the taps: with virtio-net headers, so
    // that the guest may leave checksums and TCP segmentation to the host
    // (FEATURE_NET_CSUM, FEATURE_NET_TSO), and ask for receive offload
    // (FEATURE_NET_RX_OFFLOAD).
    devices.tender_vnet_hdr = true;
    let mut dump_dir = None;
    let mut gdb_options = gdb::Options::default();
    let mut bad_option = None;
    let mut map_image = false;
    let mem_size = host::parse_options(&cl, &mut devices, hvt::DEFAULT_MEM_SIZE, |arg| {
        if arg == crate::MAP_IMAGE {
            map_image = true;
            return true;
        }
        if let Some(r) = gdb_options.option(arg) {
            bad_option = bad_option.take().or(r.err());
            return true;
        }
        dumpcore::option(arg).map(|d| dump_dir = Some(d.to_string())).is_some()
    })?;
    if let Some(e) = bad_option {
        return Err(e);
    }
    let dumpcore = dump_dir.as_deref().map(DumpCore::open).transpose()?;
    install_signal_handlers()?;

    let mut mem_size = adjust_mem_size(mem_size)?;
    // The ring carries frames, and durable block writes
    // (FEATURE_RING_BLOCK) for a device granted flushes.
    let wants_ring =
        devices.has_net() || devices.attached(MftType::BlockBasic).any(|i| devices.flush_fd(i as u64).is_some());
    if wants_ring {
        mem_size = (mem_size + RING_RESERVED_SIZE).min(GUEST_MAX_MEM_SIZE);
    }
    let vm = Vm::new(mem_size)?;

    // The ring takes the top 2 MiB; the guest's memory ends below it, and
    // so must the image: a segment reaching into the ring would share its
    // pages (and a read-only one would fault the I/O thread's writes).
    let mut ring_gpa = None;
    if wants_ring {
        if mem_size < 2 * RING_RESERVED_SIZE {
            warn("Not enough guest memory for ring allocation");
        } else {
            let gpa = mem_size - RING_RESERVED_SIZE;
            vm.mem.set_guest_size(gpa);
            ring_gpa = Some(gpa);
        }
    }
    let guest_size = ring_gpa.unwrap_or(mem_size);
    let plan = solo5_elf::load_plan(&exe.bytes, guest_size, hvt::GUEST_MIN_BASE)
        .map_err(|e| crate::load_error(&exe.name, &e, guest_size))?;
    load(&vm.mem, &plan, &exe.bytes, &exe.name, exe.bytes.file().filter(|_| map_image))?;
    drop(exe);
    let (mut vcpu, tsc_hz) = vm.init_vcpu(plan.entry)?;

    devices.setup_block()?;
    devices.setup_net()?;
    let nics: Vec<ring::Nic> = devices
        .attached(MftType::NetBasic)
        .filter_map(|i| devices.get(i as u64, MftType::NetBasic).map(|(_, fd)| (i as u32, fd, devices.vnet[i])))
        .collect();
    let blocks: Vec<ring::RingBlock> = devices
        .attached(MftType::BlockBasic)
        .filter_map(|i| {
            let (e, _) = devices.get(i as u64, MftType::BlockBasic)?;
            Some((i as u32, devices.flush_fd(i as u64)?, e.block_capacity()))
        })
        .collect();
    let flushing: ring::Flushing = devices.entries.iter().map(|_| AtomicBool::new(false)).collect();
    let failure = Arc::new(Failure::new(VcpuStopper::for_this_thread(&mut vcpu))?);
    let mut ring_thread = None;
    if let (Some(gpa), true) = (ring_gpa, vm.has_ioeventfd)
        && let Some(efd) = ring::kick_eventfd(&vm.vm)
    {
        let served = (nics.clone(), blocks, flushing.clone());
        ring_thread = Some(RingThread::start(vm.mem.clone(), gpa, served, efd, failure.clone())?);
    }
    devices.check_all_attached()?;

    let manifest = devices.manifest_bytes();
    let cmdline = cli::guest_cmdline(&cl.guest_args, hvt::CMDLINE_SIZE)?;
    let mft_gpa = hvt::BOOT_INFO_BASE + std::mem::size_of::<BootInfo>() as u64;
    let cmdline_gpa = mft_gpa + manifest.len() as u64;
    let ring_active = ring_thread.is_some();
    let bi = BootInfo {
        mem_size: vm.mem.guest_size(),
        kernel_end: plan.kernel_end,
        cpu_cycle_freq: tsc_hz,
        cmdline: cmdline_gpa,
        mft: mft_gpa,
        host_features: match &ring_thread {
            Some(r) => {
                let net = if r.offers_csum() { FEATURE_NET_CSUM | FEATURE_NET_TSO | FEATURE_NET_RX_OFFLOAD } else { 0 };
                let block = if r.offers_block() { FEATURE_RING_BLOCK } else { 0 };
                FEATURE_RING_IO | FEATURE_RING_SERVE | FEATURE_RING_POSTED | net | block
            }
            None => 0,
        },
        guest_features: 0,
        net_ring: if ring_active { ring_gpa.unwrap_or(0) } else { 0 },
    };
    let low = |e| fatal!("boot information does not fit low memory: {e}");
    vm.mem.load(hvt::BOOT_INFO_BASE, zerocopy::IntoBytes::as_bytes(&bi)).map_err(low)?;
    vm.mem.load(mft_gpa, &manifest).map_err(low)?;
    vm.mem.load(cmdline_gpa, &cmdline).map_err(low)?;

    let mut hypercalls = Hypercalls::new(&vm.mem, devices, failure.clone(), flushing)?;
    let mut debugger = None;
    if gdb_options.enabled {
        gdb::make_writable(&vm.mem)?;
        debugger = Some(gdb::Server::accept(gdb_options.port, &vcpu)?);
    }
    drop_privileges(&hypercalls, &vcpu, &nics, ring_thread.as_ref(), dumpcore.as_ref(), debugger.as_ref())?;
    let stopped = match debugger.as_mut().map(|d| d.first_stop(&vcpu, &vm.mem)).transpose()? {
        Some(gdb::Resume::Kill) => Err(fatal!("GDB: Debugger asked us to quit")),
        _ => vcpu_loop(&mut vcpu, &mut hypercalls, ring_thread.as_ref(), &failure, &vm.mem, debugger.as_mut()),
    };
    if let Some(d) = &mut debugger {
        match &stopped {
            Ok(Stopped::Halt(status, trap)) => {
                if *status == 255 {
                    // Show gdb where the program died before it goes.
                    let signal = if trap.is_some() { libc::SIGSEGV } else { libc::SIGABRT };
                    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
                        return Err(fatal!("GDB: KVM: cannot read the guest's registers"));
                    };
                    let mut g = state::user_view(&vm.mem, &regs, &sregs);
                    if let Some(t) = trap {
                        g.apply_trap(t);
                    }
                    d.post_mortem(&vcpu, &vm.mem, &g, signal)?;
                }
                d.exited(*status)
            }
            _ => d.killed(),
        }
    }
    let status = match stopped {
        Ok(Stopped::Halt(status, trap)) => {
            if let (Some(dc), 255) = (&dumpcore, status) {
                // A trap frame means a CPU exception; no frame, an abort.
                let signal = if trap.is_some() { libc::SIGSEGV } else { libc::SIGABRT };
                dump(dc, &vcpu, &vm.mem, trap.as_ref(), signal);
            }
            Ok(status)
        }
        Ok(Stopped::Fault(e)) => {
            if let Some(dc) = &dumpcore {
                dump(dc, &vcpu, &vm.mem, None, libc::SIGSEGV);
            }
            Err(e)
        }
        Err(e) => Err(e),
    };
    if let Some(mut t) = ring_thread {
        t.stop();
    }
    // The I/O thread may have failed while the guest was halting.
    match failure.take() {
        Some(e) => Err(e),
        None => status,
    }
}

/// Copies the segments of `plan` from `bytes` into guest memory and gives
/// each the host protection the tender gives it: guest-executable pages are
/// readable, never executable, on the host, and KVM turns host read-only
/// into guest write protection. With `file` (`--x-map-image`), the whole
/// pages of read-only segments are mapped from it instead
/// ([`GuestMemory::map_file`]). `name` is the executable's, for messages.
pub fn load(
    mem: &GuestMemory,
    plan: &solo5_elf::LoadPlan,
    bytes: &[u8],
    name: &str,
    file: Option<&std::fs::File>,
) -> Result<(), Exit> {
    for s in &plan.segments {
        let mapped = match file {
            Some(f) => {
                crate::mappable(s).map_or(Ok(0), |whole| mem.map_file(s.vaddr, whole, f, s.file_offset).map(|()| whole))
            }
            None => Ok(0),
        }
        .map_err(|e| fatal!("{name}: mapping the image into guest memory failed: {}", strerror(&e)))?;
        mem.load(s.vaddr + mapped, &plan.file_bytes(bytes, s)[mapped as usize..]).map_err(|e| fatal!("{name}: {e}"))?;
        let mut prot = libc::PROT_NONE;
        if s.prot.read || s.prot.exec {
            prot |= libc::PROT_READ;
        }
        if s.prot.write {
            prot |= libc::PROT_WRITE;
        }
        mem.protect(s.prot_start, s.prot_end, prot).map_err(|e| fatal!("{name}: mprotect failed: {}", strerror(&e)))?;
    }
    Ok(())
}

/// The KVM virtual machine: one vCPU, one memory slot, no interrupt
/// controller (Solo5 guests take no interrupts).
struct Vm {
    kvm: Kvm,
    vm: kvm_ioctls::VmFd,
    mem: Arc<GuestMemory>,
    has_ioeventfd: bool,
}

fn kvm_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> Exit + '_ {
    move |e| fatal!("KVM: ioctl ({what}) failed: {}", strerror(&std::io::Error::from_raw_os_error(e.errno())))
}

impl Vm {
    fn new(mem_size: u64) -> Result<Vm, Exit> {
        let kvm = Kvm::new().map_err(|e| {
            let io = std::io::Error::from_raw_os_error(e.errno());
            let hint = match e.errno() {
                libc::ENOENT | libc::ENXIO | libc::ENODEV => {
                    " (KVM is not available on this host: enable virtualization, or run the unikernel on solo5-spt)"
                }
                libc::EACCES | libc::EPERM => {
                    " (this user needs read-write access to /dev/kvm, e.g. by joining the kvm group)"
                }
                _ => "",
            };
            fatal!("Could not open: /dev/kvm: {}{hint}", strerror(&io))
        })?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(fatal!("KVM: API version is {api}, solo5-hvt requires version 12"));
        }
        let vm = kvm.create_vm().map_err(kvm_err("CREATE_VM"))?;
        if !kvm.check_extension(Cap::UserMemory) {
            return Err(fatal!("KVM: host does not support KVM_CAP_USER_MEMORY"));
        }
        let mem = GuestMemory::new(mem_size).map_err(|e| fatal!("Error allocating guest memory: {}", strerror(&e)))?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.alloc_size(),
            userspace_addr: mem.host_base(),
        };
        // SAFETY: the region is our own mapping of exactly this size, which
        // outlives the VM (the Vm owns both, and the memory is dropped last).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
        let has_ioeventfd = kvm.check_extension(Cap::Ioeventfd);
        Ok(Vm { kvm, vm, mem: Arc::new(mem), has_ioeventfd })
    }

    /// Creates the vCPU in its entry state; returns it with the TSC frequency.
    fn init_vcpu(&self, entry: u64) -> Result<(VcpuFd, u64), Exit> {
        let vcpu = self.vm.create_vcpu(0).map_err(kvm_err("CREATE_VCPU"))?;
        x86::setup_gdt(&self.mem);
        x86::setup_pagetables(&self.mem, self.mem.alloc_size());
        let cpuid = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("SET_CPUID2"))?;
        vcpu.set_sregs(&x86::initial_sregs(Default::default())).map_err(kvm_err("SET_SREGS"))?;
        if !self.kvm.check_extension(Cap::GetTscKhz) {
            return Err(fatal!("KVM: host does not support KVM_CAP_GET_TSC_KHZ"));
        }
        let khz = vcpu.get_tsc_khz().map_err(|e| {
            if e.errno() == libc::EIO {
                fatal!("KVM: host TSC is unstable, cannot continue")
            } else {
                kvm_err("KVM_GET_TSC_KHZ")(e)
            }
        })?;
        vcpu.set_regs(&x86::initial_regs(entry, self.mem.guest_size())).map_err(kvm_err("SET_REGS"))?;
        Ok((vcpu, u64::from(khz) * 1000))
    }
}

/// Writes the core of a guest that aborted or faulted, with the
/// program's registers ([`state::user_view`]) and the trap frame it passed,
/// if any.
fn dump(dc: &DumpCore, vcpu: &VcpuFd, mem: &GuestMemory, trap: Option<&TrapRegs>, signal: i32) {
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        warn("dumpcore: Could not retrieve guest state");
        return;
    };
    let mut g = state::user_view(mem, &regs, &sregs);
    if let Some(t) = trap {
        g.apply_trap(t);
    }
    dc.write(mem, &g, signal);
}

fn drop_privileges(
    hc: &Hypercalls<'_>,
    vcpu: &VcpuFd,
    nics: &[ring::Nic],
    ring: Option<&RingThread>,
    dumpcore: Option<&DumpCore>,
    debugger: Option<&gdb::Server>,
) -> Result<(), Exit> {
    host::refuse_read_implies_exec()?;
    let mut p = policy(hc, vcpu, nics, ring.map(|r| (r.eventfd(), r.epoll())));
    if let Some(dc) = dumpcore {
        dumpcore_policy(&mut p, vcpu, dc);
    }
    if let Some(d) = debugger {
        gdb_policy(&mut p, vcpu, d.fd());
    }
    p.apply(true)
}

/// What the GDB server adds: the debugger's connection, and the vCPU
/// state it reads and changes.
fn gdb_policy(p: &mut Policy, vcpu: &VcpuFd, sock: i32) {
    use std::os::fd::AsRawFd;
    let vcpu = vcpu.as_raw_fd() as u64;
    let sock = sock as u64;
    for (request, why) in [
        (KVM_GET_SREGS, "gdb: reading segments and the IDT"),
        (KVM_SET_REGS, "gdb: writing registers, resuming after a stop"),
        (KVM_SET_SREGS, "gdb: resuming at CPL 3 after a stop in a handler"),
        (KVM_SET_GUEST_DEBUG, "gdb: breakpoint registers and single steps"),
    ] {
        p.when(libc::SYS_ioctl, &[Arg::Int(0, vcpu), Arg::Eq(1, request)], why);
    }
    for (nr, why) in [
        (libc::SYS_read, "gdb: requests"),
        (libc::SYS_recvfrom, "gdb: requests"),
        (libc::SYS_write, "gdb: replies"),
        (libc::SYS_sendto, "gdb: replies"),
    ] {
        p.when(nr, &[Arg::Int(0, sock)], why);
    }
}

/// What writing a core file adds: reading the vCPU's segments, writing the
/// one unnamed file opened before, and linking it into the one directory.
fn dumpcore_policy(p: &mut Policy, vcpu: &VcpuFd, dc: &DumpCore) {
    use std::os::fd::AsRawFd;
    let (dir, file) = dc.fds();
    p.when(
        libc::SYS_ioctl,
        &[Arg::Int(0, vcpu.as_raw_fd() as u64), Arg::Eq(1, KVM_GET_SREGS)],
        "dumpcore: the guest's segments",
    )
    .when(libc::SYS_pwrite64, &[Arg::Int(0, file as u64)], "dumpcore: writing the core file")
    .when(libc::SYS_ftruncate, &[Arg::Int(0, file as u64)], "dumpcore: sizing the core file")
    .when(libc::SYS_linkat, &[Arg::Int(2, dir as u64)], "dumpcore: naming the core file in its directory")
    .any(libc::SYS_mincore, "dumpcore: which guest pages were touched")
    .any(libc::SYS_getpid, "dumpcore: the core file's name");
}

/// What the tender may do once the guest runs. `TSYNC` extends it to the
/// net I/O thread.
pub(crate) fn policy(hc: &Hypercalls<'_>, vcpu: &VcpuFd, nics: &[ring::Nic], ring_fds: Option<(i32, i32)>) -> Policy {
    use std::os::fd::AsRawFd;
    let vcpu_fd = vcpu.as_raw_fd() as u64;
    let (epoll, timer) = hc.wait_fds();
    let mut p = Policy::default();
    p.when(libc::SYS_ioctl, &[Arg::Int(0, vcpu_fd), Arg::Eq(1, KVM_RUN)], "KVM_RUN: run the guest")
        .when(
            libc::SYS_ioctl,
            &[Arg::Int(0, vcpu_fd), Arg::Eq(1, KVM_GET_REGS)],
            "KVM_GET_REGS: report a faulting guest",
        )
        .when(libc::SYS_write, &[Arg::Int(0, 1)], "PUTS: the guest console")
        .when(libc::SYS_write, &[Arg::Int(0, 2)], "error messages")
        .when(libc::SYS_epoll_pwait, &[Arg::Int(0, epoll as u64)], "POLL: wait for the timer or a NIC")
        .when(
            libc::SYS_write,
            &[Arg::Int(0, hc.failure_fd().unwrap_or(-1i32) as u64)],
            "the net I/O thread's failure, waking a POLL",
        )
        .when(libc::SYS_timerfd_settime, &[Arg::Int(0, timer as u64)], "POLL: arm the timeout")
        .any(libc::SYS_clock_gettime, "WALLTIME (the vDSO's fallback)")
        .any(libc::SYS_exit_group, "guest exit")
        .any(libc::SYS_sched_yield, "the net I/O thread's spin, letting a thread waiting for its core go first")
        .any(libc::SYS_close, "releasing descriptors at exit")
        .any(libc::SYS_exit, "net I/O thread exit")
        .any(libc::SYS_futex, "joining the net I/O thread")
        .any(libc::SYS_rt_sigreturn, "returning from a signal handler")
        .any(libc::SYS_rt_sigprocmask, "thread exit in the C library")
        .any(libc::SYS_sigaltstack, "thread exit in the Rust runtime")
        .any(libc::SYS_munmap, "freeing memory")
        .any(libc::SYS_madvise, "releasing a thread stack")
        .any(libc::SYS_brk, "allocating memory for an error message")
        .when(libc::SYS_mmap, &[Arg::NoBits(2, libc::PROT_EXEC as u64)], "allocating memory, never executable")
        .when(libc::SYS_mprotect, &[Arg::NoBits(2, libc::PROT_EXEC as u64)], "allocator guard pages, never executable");
    for e in hc.devices().attached(MftType::BlockBasic) {
        if let Some((_, fd)) = hc.devices().get(e as u64, MftType::BlockBasic) {
            p.when(libc::SYS_pread64, &[Arg::Int(0, fd as u64)], "BLOCK_READ").when(
                libc::SYS_pwrite64,
                &[Arg::Int(0, fd as u64)],
                "BLOCK_WRITE",
            );
        }
        if let Some(fd) = hc.devices().flush_fd(e as u64) {
            p.when(libc::SYS_pread64, &[Arg::Int(0, fd as u64)], "BLOCK_READ after a flush")
                .when(libc::SYS_pwrite64, &[Arg::Int(0, fd as u64)], "BLOCK_WRITE after a flush")
                .when(libc::SYS_fdatasync, &[Arg::Int(0, fd as u64)], "BLOCK_FLUSH");
        }
    }
    for &(_, fd, hdr) in nics {
        p.when(libc::SYS_read, &[Arg::Int(0, fd as u64)], "NET_READ and the ring's reads").when(
            libc::SYS_write,
            &[Arg::Int(0, fd as u64)],
            "NET_WRITE and the ring's writes",
        );
        if hdr {
            p.when(libc::SYS_readv, &[Arg::Int(0, fd as u64)], "frames behind their virtio-net header")
                .when(libc::SYS_writev, &[Arg::Int(0, fd as u64)], "frames behind their virtio-net header")
                .when(
                    libc::SYS_ioctl,
                    &[Arg::Int(0, fd as u64), Arg::Int(1, tap::TUNSETOFFLOAD), Arg::Eq(2, tap::RX_OFFLOAD_FLAGS)],
                    "NET_RX_OFFLOAD_PIO",
                );
        }
    }
    if let Some((efd, epoll)) = ring_fds {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u64;
        p.when(libc::SYS_read, &[Arg::Int(0, efd as u64), Arg::Eq(2, 8)], "the net I/O thread takes its kicks")
            .when(libc::SYS_epoll_pwait, &[Arg::Int(0, epoll as u64)], "the net I/O thread sleeps")
            .when(
                libc::SYS_epoll_ctl,
                &[Arg::Int(0, epoll as u64), Arg::Eq(1, libc::EPOLL_CTL_ADD as u64)],
                "the net I/O thread waits on a tap the guest posts receive buffers for",
            )
            .when(
                libc::SYS_write,
                &[Arg::Int(0, efd as u64), Arg::Eq(2, 8)],
                "waking the net I/O thread: to stop it, or to spin for the guest's writes",
            )
            .when(
                libc::SYS_tgkill,
                &[Arg::Int(0, pid), Arg::Int(2, ring::STOP_SIGNAL as u64)],
                "the net I/O thread stops the vCPU to report its error",
            );
    }
    p
}

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xAE80;
/// `KVM_GET_REGS` = `_IOR(KVMIO, 0x81, struct kvm_regs)`.
const KVM_GET_REGS: u64 = 0x8090_AE81;
/// `KVM_GET_SREGS` = `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
const KVM_GET_SREGS: u64 = 0x8138_AE83;
/// `KVM_SET_REGS` = `_IOW(KVMIO, 0x82, struct kvm_regs)`.
const KVM_SET_REGS: u64 = 0x4090_AE82;
/// `KVM_SET_SREGS` = `_IOW(KVMIO, 0x84, struct kvm_sregs)`.
const KVM_SET_SREGS: u64 = 0x4138_AE84;
/// `KVM_SET_GUEST_DEBUG` = `_IOW(KVMIO, 0x9b, struct kvm_guest_debug)`.
const KVM_SET_GUEST_DEBUG: u64 = 0x4048_AE9B;

/// How the guest stopped, when the tender did not fail.
enum Stopped {
    /// HALT with this status and trap frame.
    Halt(i32, Option<TrapRegs>),
    /// The guest did what ends it: a triple fault, an access outside its
    /// memory, an instruction KVM cannot run. Worth a core file.
    Fault(Exit),
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
}

fn vcpu_loop(
    vcpu: &mut VcpuFd,
    hc: &mut Hypercalls<'_>,
    ring: Option<&RingThread>,
    failure: &Failure,
    mem: &GuestMemory,
    mut debugger: Option<&mut gdb::Server>,
) -> Result<Stopped, Exit> {
    let base = hvt::HYPERCALL_PIO_BASE;
    let alloc_size = mem.alloc_size();
    loop {
        if let Some(e) = failure.take() {
            return Err(e);
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) if e.errno() == libc::EFAULT => {
                return Ok(Stopped::Fault(fatal!("KVM: host/guest translation fault: rip=0x{:x}", rip(vcpu))));
            }
            Err(e) => return Err(kvm_err("RUN")(e)),
        };
        match exit {
            VcpuExit::IoOut(hvt::RING_SERVE_PIO, data) if data.len() == 4 && ring.is_some() => {
                if let Some(r) = ring {
                    r.serve_now()?;
                }
            }
            VcpuExit::IoOut(hvt::BLOCK_FLUSH_PIO, data) if data.len() == 4 => {
                let gpa = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                hc.block_flush(memory::Gpa(gpa))?;
            }
            VcpuExit::IoOut(hvt::NET_RX_OFFLOAD_PIO, data)
                if data.len() == 4 && ring.is_some_and(|r| r.offers_csum()) =>
            {
                let gpa = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                hc.net_rx_offload(memory::Gpa(gpa))?;
            }
            VcpuExit::IoOut(hvt::BLOCK_WRITE_SYNC_PIO, data) if data.len() == 4 => {
                let gpa = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                hc.block_write_sync(memory::Gpa(gpa))?;
            }
            VcpuExit::IoOut(port, data) => {
                if data.len() != 4 || !(base..base + hvt::HYPERCALL_MAX).contains(&port) {
                    return Ok(Stopped::Fault(fatal!("Invalid guest port access: port=0x{port:x}")));
                }
                let gpa = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as u64;
                // A guest that posts receive buffers has them filled before
                // its POLL answers or sleeps (FEATURE_RING_POSTED).
                // The entries are served first if the guest has not posted
                // yet: they may hold its first buffers.
                if port - base == hvt::Hypercall::Poll as u16
                    && let Some(r) = ring
                    && (r.posting() || r.serve_now().map(|()| r.posting())?)
                {
                    let gpa = memory::Gpa(gpa);
                    hc.poll_timer(gpa)?;
                    r.poll(|ready| match ready {
                        Some(ready) => hc.poll_ready(gpa, ready).map(|()| ready),
                        None => hc.poll_wait(gpa),
                    })?;
                    continue;
                }
                // Writes the guest left in the ring without waking the I/O
                // thread go out before the hypercall does anything (waits,
                // halts, or sends a frame of its own); see FEATURE_RING_SERVE.
                if let Some(r) = ring {
                    r.serve_now()?;
                }
                if let Outcome::Halt(status, trap) = hc.handle(port - base, memory::Gpa(gpa))? {
                    return Ok(Stopped::Halt(status, trap));
                }
            }
            VcpuExit::IoIn(port, _) => {
                return Ok(Stopped::Fault(fatal!("Invalid guest port access: port=0x{port:x}")));
            }
            VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => {
                // KVM reports a write to memory the host mapped read-only
                // (the guest's text and rodata) either as EFAULT or, on some
                // hosts, as an MMIO exit. Anything else is unbacked.
                let rip = rip(vcpu);
                return Ok(Stopped::Fault(if addr < alloc_size {
                    fatal!("KVM: host/guest translation fault: rip=0x{rip:x} (write to read-only memory at 0x{addr:x})")
                } else {
                    fatal!("KVM: guest accessed unbacked memory: gpa=0x{addr:x}, rip=0x{rip:x}")
                }));
            }
            VcpuExit::Debug(arch) if debugger.is_some() => {
                if let Some(d) = debugger.as_deref_mut()
                    && d.on_debug(vcpu, mem, &arch)? == gdb::Resume::Kill
                {
                    return Err(fatal!("GDB: Debugger asked us to quit"));
                }
            }
            VcpuExit::FailEntry(reason, _) => {
                return Ok(Stopped::Fault(fatal!("KVM: entry failure: hw_entry_failure_reason=0x{reason:x}")));
            }
            VcpuExit::InternalError => {
                let sub = vcpu.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the union is the valid one.
                let suberror = unsafe { sub.__bindgen_anon_1.internal.suberror };
                return Ok(Stopped::Fault(fatal!("KVM: internal error exit: suberror=0x{suberror:x}")));
            }
            VcpuExit::Shutdown => {
                return Ok(Stopped::Fault(fatal!(
                    "KVM: unhandled exit: exit_reason=0x8, rip=0x{:x} (the guest triple-faulted)",
                    rip(vcpu)
                )));
            }
            _ => {
                let reason = vcpu.get_kvm_run().exit_reason;
                return Ok(Stopped::Fault(fatal!(
                    "KVM: unhandled exit: exit_reason=0x{reason:x}, rip=0x{:x}",
                    rip(vcpu)
                )));
            }
        }
    }
}
