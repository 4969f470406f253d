//! `solo5-virtio`: boots a virtio unikernel under QEMU with the command line
//! of the other tenders, as Solo5's `solo5-virtio-run` script does for its
//! own, so that `mirage run` and the tests treat the three targets alike.
//!
//! ```text
//! solo5-virtio [--mem=MiB] [--accel=kvm|tcg] [--block:NAME=PATH]
//!              [--block-sector-size:NAME=N] [--net:NAME=TAP]
//!              [--net-mac:NAME=MAC] [--] KERNEL [ARGS...]
//! ```
//!
//! It checks what a tender checks before QEMU starts: the image is a
//! virtio executable, every option names a device of its manifest, every
//! device is attached, each block file opens and each tap device attaches
//! (then is let go, for QEMU to take). Then it runs `qemu-system-x86_64`
//! with a virtio-net-pci device per network interface and a virtio-blk-pci
//! device per block device, in manifest order (the guest gives the n-th
//! device of a kind to the n-th manifest entry of that kind), the serial
//! line on standard input and output, and `isa-debug-exit`, through which
//! the guest's exit status comes back.
//!
//! QEMU uses KVM when `/dev/kvm` works for such a guest, else TCG
//! (emulation), and the tender says which on standard error. A host whose
//! `/dev/kvm` is PVM (a paravirtual nested KVM) emulates guest code at CPL
//! 0 and cannot run most SSE instructions there, which the virtio guest
//! (at CPL 0, as Solo5's) uses: such a host gets TCG.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use solo5_abi::mft::{self, MftType};
use solo5_abi::note::AbiTarget;

use crate::cli::{self, device_option};
use crate::devices::{BLOCK_USAGE, Devices, NET_USAGE};
use crate::{Exit, exe, fatal, host, warn};

/// The ABI version of the virtio bindings.
pub const ABI_VERSION: u32 = 2;

/// Guest memory without `--mem` (as solo5-hvt's).
pub const DEFAULT_MEM_SIZE: u64 = 512 << 20;

/// The most memory the guest maps (its boot page tables cover 4 GiB).
const MAX_MEM_MIB: u64 = 4096;

const QEMU: &str = "qemu-system-x86_64";

const CORE_USAGE: &str = "--accel=kvm|tcg (QEMU's accelerator; default: KVM where it can run the guest, else TCG)";

/// The usage text.
pub fn usage(prog: &str) -> String {
    cli::usage(prog, false, &[("core", Some(CORE_USAGE)), ("net", Some(NET_USAGE)), ("block", Some(BLOCK_USAGE))])
}

/// The `--version` text.
pub fn version(prog: &str) -> String {
    cli::version(prog, ABI_VERSION)
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

/// The accelerator for `given` (`--accel`), else KVM when `/dev/kvm` opens
/// and is not PVM, else TCG; with the reason.
pub fn choose_accel(given: Option<&str>) -> Result<(Accel, String), Exit> {
    match given {
        Some("kvm") => return Ok((Accel::Kvm, "as --accel=kvm asks".into())),
        Some("tcg") => return Ok((Accel::Tcg, "as --accel=tcg asks".into())),
        Some(a) => return Err(fatal!("--accel={a}: unknown accelerator\n  fix: give --accel=kvm or --accel=tcg")),
        None => {}
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Ok((Accel::Tcg, format!("/dev/kvm cannot be used: {e}")));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Ok((Accel::Tcg, "/dev/kvm is PVM, which cannot run a CPL-0 guest's SSE instructions".into()));
    }
    Ok((Accel::Kvm, "/dev/kvm works".into()))
}

/// `qemu-system-x86_64` on PATH.
fn qemu_path() -> Result<std::path::PathBuf, Exit> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            fatal!(
                "no {QEMU} on PATH: a virtio unikernel boots under QEMU\n  fix: install QEMU (Debian: apt-get install qemu-system-x86), or build the unikernel for hvt"
            )
        })
}

/// QEMU's option syntax doubles a comma inside a value.
fn escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The guest's exit status from QEMU's: the bindings write `status + 1`
/// (127 for a status above 125, an abort's 255 among them) to
/// `isa-debug-exit`, and QEMU exits with twice that plus one. Otherwise
/// QEMU failed (status 1, its message already printed) or the guest
/// powered off without a status.
pub fn guest_status(status: ExitStatus) -> Result<i32, Exit> {
    match status.code() {
        Some(1) => Err(fatal!("QEMU failed before the unikernel ended (its message is above)")),
        Some(0) => Err(fatal!("the unikernel powered off without an exit status")),
        Some(c) if c % 2 == 1 => {
            let v = c >> 1;
            Ok(if v == 127 { 255 } else { v - 1 })
        }
        Some(c) => Err(fatal!("QEMU exited with status {c}")),
        None => Err(fatal!("QEMU was killed ({status})")),
    }
}

/// The devices of the command line, by manifest index.
#[derive(Default)]
struct Attach {
    taps: Vec<(usize, String)>,
    blocks: Vec<(usize, String)>,
    sector_sizes: Vec<(usize, String)>,
}

/// Runs the unikernel under QEMU; the guest's exit status.
pub fn run(args: &[OsString]) -> Result<i32, Exit> {
    let cl = cli::split(args)?;
    let exe = exe::open(&cl.kernel, AbiTarget::Virtio, ABI_VERSION)?;
    let mut devices = Devices::new(exe.manifest.clone());
    let mut accel = None;
    // The same checks as the other tenders' (each option names a device
    // of the manifest; files open; taps attach), and a note of what each
    // option gives, for QEMU.
    let mut attach = Attach::default();
    for opt in &cl.options {
        let arg = cli::option_str(opt);
        let find = |prefix: &str, mtype: MftType| {
            device_option(arg, prefix, 4096)
                .and_then(|(name, v)| mft::find_by_name(&exe.manifest, name, mtype).map(|i| (i, v.to_string())))
        };
        if let Some(d) = find("--net:", MftType::NetBasic) {
            attach.taps.push(d);
        } else if let Some(d) =
            find("--block:", MftType::BlockBasic).or_else(|| find("--block-dsync:", MftType::BlockBasic))
        {
            attach.blocks.push(d);
        } else if let Some(d) = find("--block-sector-size:", MftType::BlockBasic) {
            attach.sector_sizes.push(d);
        }
    }
    let mem_size =
        host::parse_options(&cl, &mut devices, DEFAULT_MEM_SIZE, |arg| match arg.strip_prefix("--accel=") {
            Some(a) => {
                accel = Some(a.to_string());
                true
            }
            None => false,
        })?;
    devices.setup_block()?;
    devices.setup_net()?;
    devices.check_all_attached()?;
    let mem_mib = mem_size >> 20;
    if mem_mib > MAX_MEM_MIB {
        return Err(fatal!(
            "--mem={mem_mib}: the virtio guest maps at most {MAX_MEM_MIB} MiB\n  fix: give --mem={MAX_MEM_MIB} or less"
        ));
    }
    let line = cli::guest_cmdline(&cl.guest_args, 8192)?;
    let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
    let qemu = qemu_path()?;
    let (accel, why) = choose_accel(accel.as_deref())?;
    warn(format_args!(
        "QEMU with {} ({why})",
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG, emulating the CPU",
        }
    ));

    let mut cmd = Command::new(qemu);
    // No display, rather than -nographic, which would also have SeaBIOS
    // print its banner and terminal escapes on the serial line before the
    // unikernel's output.
    cmd.args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit"])
        .args(["-machine", "pc", "-accel", if accel == Accel::Kvm { "kvm" } else { "tcg" }])
        .args(["-m", &mem_mib.to_string()])
        .arg("-kernel")
        .arg(&cl.kernel)
        .arg("-append")
        .arg(line);
    if accel == Accel::Kvm {
        cmd.args(["-cpu", "host"]);
    }
    // Manifest order within each kind: the guest takes the devices of a
    // kind in PCI slot order, which is the order of -device here.
    attach.taps.sort();
    attach.blocks.sort();
    for (n, (i, tap)) in attach.taps.iter().enumerate() {
        let mac = devices.entries[*i].net_mac();
        let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        // `@NN` is a tap device open as descriptor NN, which QEMU inherits.
        let netdev = match tap.strip_prefix('@') {
            Some(fd) => format!("tap,id=net{n},fd={}", escape(fd)),
            None => format!("tap,id=net{n},ifname={},script=no,downscript=no", escape(tap)),
        };
        cmd.arg("-netdev")
            .arg(netdev)
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=net{n},mac={mac},disable-legacy=off"));
    }
    for (n, (i, path)) in attach.blocks.iter().enumerate() {
        let size = attach.sector_sizes.iter().rev().find(|(j, _)| j == i).map(|(_, s)| s.clone());
        let size = size.map(|s| format!(",logical_block_size={s},physical_block_size={s}")).unwrap_or_default();
        cmd.arg("-drive")
            .arg(format!("file={},if=none,format=raw,id=blk{n}", escape(path)))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=blk{n},disable-legacy=off{size}"));
    }
    // The checks held the tap devices and files open; QEMU opens them
    // itself (a tap device takes one owner at a time).
    drop(devices);
    // SAFETY: prctl(PR_SET_PDEATHSIG) in the child before exec touches no
    // memory of the parent: QEMU is killed if this tender dies, so that a
    // killed tender leaves no guest running.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    forward_signals();
    let mut child = cmd.spawn().map_err(|e| fatal!("cannot run {QEMU}: {e}"))?;
    CHILD.store(child.id() as i32, std::sync::atomic::Ordering::Relaxed);
    let status = child.wait().map_err(|e| fatal!("waiting for {QEMU}: {e}"))?;
    guest_status(status)
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// SIGINT, SIGTERM and SIGHUP go on to QEMU, which ends, and the tender
/// then exits with what QEMU's end means.
fn forward_signals() {
    extern "C" fn forward(sig: libc::c_int) {
        let pid = CHILD.load(std::sync::atomic::Ordering::Relaxed);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe; pid is our child.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler (it only calls
        // kill) in this process.
        unsafe {
            libc::signal(sig, forward as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn status(c: i32) -> Option<i32> {
        guest_status(ExitStatus::from_raw(c << 8)).ok()
    }

    #[test]
    fn guest_statuses_come_back_from_qemus() {
        assert_eq!(status(3), Some(0));
        assert_eq!(status(2 * 65 + 1), Some(64));
        assert_eq!(status(255), Some(255));
        assert_eq!(status(1), None);
        assert_eq!(status(0), None);
        assert_eq!(status(4), None);
    }

    #[test]
    fn commas_in_values_are_doubled() {
        assert_eq!(escape("/a,b/c.img"), "/a,,b/c.img");
    }

    #[test]
    fn an_unknown_accelerator_is_refused() {
        assert!(choose_accel(Some("hax")).is_err());
        assert_eq!(choose_accel(Some("tcg")).map(|(a, _)| a).ok(), Some(Accel::Tcg));
    }
}
