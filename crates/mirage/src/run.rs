//! `mirage run`: boots the built image with the right tender and device
//! options, setting up what its devices need on the host (tap devices with
//! the host's address, disk images) and removing what it created.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Config, Kind};
use crate::generate::{self, Options, Target, UnixNet};
use crate::{Args, Failure, help, load, load_state, parse_target};

pub const RUN_HELP: &str = "\
usage: mirage run [-t TARGET] [--tap=NAME] [--host-address=CIDR] [--mem=MIB]
                  [--accel=kvm|tcg] [-- ARGS...]

Boots dist/NAME[.hvt|.spt|.virtio], building it first if it is missing or
older than its configuration: on hvt, spt and virtio with solo5-hvt,
solo5-spt or solo5-virtio (found beside mirage, or on PATH), on unix as a
process. solo5-virtio boots the image under qemu-system-x86_64, with KVM
where /dev/kvm can run it, else with TCG (emulation), and says which;
--accel chooses. ARGS are the unikernel's boot arguments, each word one
argument on every target (on Solo5, mirage quotes them into the one
command line the tender passes).

Each network interface gets a tap device: NAME if --tap is given (it must
exist; first interface only), else tap-INTERFACE, created and removed at
exit, which needs root (CAP_NET_ADMIN); without it, mirage prints the
commands to run. A tap device mirage creates has an MTU of 65520, so that
the host and the unikernel exchange TCP segments of up to 64 KiB in one
frame (the unikernel learns the MTU from the device; a virtio unikernel's
is 1500, and so is the tap device mirage creates for it); give --tap=NAME
with a device of MTU 1500 to bridge it to an Ethernet network. The n-th interface (from 0, in mirage.toml's order) has
the subnet 10.0.n.0/24: its tap device gets 10.0.n.1/24 (the first's is
--host-address), and a stack on it configured --no-dhcp defaults to
10.0.n.2. Each block device is dist/INTERFACE.img, created with the size
in mirage.toml if missing; on unix each kv-rw store is the directory
dist/NAME.kv, created if missing.";

pub use mirage_oci::quote;

/// A tap device this run created, removed when dropped.
struct CreatedTap(String);

impl Drop for CreatedTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

pub fn tender_path(target: Target) -> Result<PathBuf, Failure> {
    let name = format!("solo5-{}", target.name());
    let mut looked = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(dir.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(&name);
            if p.is_file() {
                return Ok(p);
            }
        }
        looked.push("PATH".into());
    }
    Err(Failure::new(
        format!("no {name} tender found (looked in {})", looked.join(" and ")),
        format!(
            "build the tenders with `cargo build --release` in the mirage-rs repository (they go beside mirage), or put {name} on PATH"
        ),
    ))
}

fn check_kvm() -> Result<(), Failure> {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::new(
            format!("no access to /dev/kvm ({e})"),
            match e.kind() {
                std::io::ErrorKind::NotFound => "enable KVM on this machine, or configure for spt: mirage configure -t spt".to_string(),
                _ => "add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again), or configure for spt: mirage configure -t spt".to_string(),
            },
        )),
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
}

/// The MTU of the tap devices `mirage run` creates: the host and the
/// unikernel then exchange TCP segments of up to 64 KiB (less headers) in
/// one frame, one system call or ring entry on each side where 1500 bytes
/// would take 45 (BENCHMARKS.md). A tap takes up to 65535; 65520 keeps a
/// frame (MTU plus the Ethernet header) within 64 KiB and 16-byte aligned.
/// Such a device is for a host-only link: bridged to an Ethernet network,
/// frames over that network's MTU would be dropped, so a bridged device
/// is made by hand with that MTU and given with `--tap`.
pub const LARGE_MTU: u16 = 65520;

/// The MTU of a virtio unikernel's interfaces (its receive buffers hold a
/// frame of that MTU), and so of the tap devices made for it.
pub const VIRTIO_MTU: u16 = 1500;

/// The tap device for `interface`: given, existing, or created.
fn tap(
    interface: &str,
    given: Option<&str>,
    host: &str,
    mtu: u16,
    created: &mut Vec<CreatedTap>,
) -> Result<String, Failure> {
    if let Some(t) = given {
        if !Path::new("/sys/class/net").join(t).exists() {
            return Err(Failure::new(
                format!("there is no network device {t}"),
                format!("create it (ip tuntap add {t} mode tap), or drop --tap"),
            ));
        }
        return Ok(t.to_string());
    }
    let name: String = format!("tap-{interface}").chars().take(15).collect();
    if Path::new("/sys/class/net").join(&name).exists() {
        return Ok(name);
    }
    let commands = format!(
        "sudo ip tuntap add {name} mode tap user $USER && sudo ip addr add {host} dev {name} && sudo ip link set {name} mtu {mtu} up"
    );
    if let Err(e) = ip(&["tuntap", "add", "dev", &name, "mode", "tap"]) {
        return Err(Failure::new(
            format!("no right to create the tap device {name} ({e})"),
            format!("run mirage as root, or create it first: {commands}"),
        ));
    }
    created.push(CreatedTap(name.clone()));
    let mtu = mtu.to_string();
    ip(&["addr", "add", host, "dev", &name]).and_then(|()| ip(&["link", "set", &name, "mtu", &mtu, "up"])).map_err(
        |e| Failure::new(format!("cannot set up the tap device {name}: {e}"), format!("set it up by hand: {commands}")),
    )?;
    Ok(name)
}

/// The disk image of block device `interface`, created if missing.
fn disk(config: &Config, interface: &str, size: u64) -> Result<PathBuf, Failure> {
    let path = config.dir.join("dist").join(format!("{interface}.img"));
    if !path.exists() {
        let f = std::fs::File::create(&path)
            .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the directory's permissions"))?;
        f.set_len(size).map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the free space"))?;
        eprintln!("mirage: created {} ({} KiB) for block device {interface}", path.display(), size / 1024);
    }
    Ok(path)
}

/// A device of the unikernel as the host provides it.
#[derive(Debug)]
pub enum Device {
    /// A network interface (a tap device on the host).
    Net(String),
    /// A block device and its disk image, and whether it is attached with
    /// `--block-dsync:` (a durable kv-rw store on hvt and spt).
    Block(String, PathBuf, bool),
    /// On unix, a kv-rw store's directory.
    KvRwDirectory(String, PathBuf),
}

/// The devices of the configured unikernel on the host, in mirage.toml's
/// order, with the disk images and directories they need, created (and
/// formatted, for a kv-rw store) when missing.
pub fn devices(config: &Config, opts: &Options) -> Result<Vec<Device>, Failure> {
    let mut out = Vec::new();
    for d in &config.devices {
        match &d.kind {
            Kind::Net { interface } | Kind::Ip { interface, .. } => out.push(Device::Net(interface.clone())),
            Kind::Stack { interface, .. } if opts.target != Target::Unix || opts.net == UnixNet::Direct => {
                out.push(Device::Net(interface.clone()))
            }
            Kind::Block { interface, size } => {
                std::fs::create_dir_all(config.dir.join("dist")).ok();
                out.push(Device::Block(interface.clone(), disk(config, interface, *size)?, false));
            }
            Kind::KvRo { directory, fat, .. } => {
                if let Some(interface) = opts.tar(&d.name, &d.kind) {
                    let path = config.dir.join("dist").join(format!("{interface}.img"));
                    if *fat && crate::kv::ensure_fat_ro(&path, &config.dir.join(directory))? {
                        eprintln!("mirage: created {} (FAT) for kv-ro store {}", path.display(), d.name);
                    }
                    if !path.is_file() {
                        return Err(Failure::new(
                            format!("the disk image {} of store {} is missing", path.display(), d.name),
                            "run `mirage build`, which makes it",
                        ));
                    }
                    out.push(Device::Block(interface, path, false));
                }
            }
            Kind::KvRw { block: Some(b) } => {
                let path = config.dir.join("dist").join(format!("{}.img", b.interface));
                if crate::kv::ensure(&path, b, opts.fat(b), &config.dir)? {
                    eprintln!("mirage: created {} for kv-rw store {}", path.display(), d.name);
                }
                // Durable: every acknowledged change on the disk. On unix
                // a flush is always fdatasync; our tenders sync on a
                // flush for a device attached with --block-dsync:.
                let dsync = b.durable && opts.target != Target::Unix;
                out.push(Device::Block(b.interface.clone(), path, dsync));
            }
            Kind::KvRw { block: None } if opts.target == Target::Unix => {
                let dir = config.dir.join(generate::kv_rw_directory(&d.name));
                if !dir.is_dir() {
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        Failure::new(format!("{}: {e}", dir.display()), "check the directory's permissions")
                    })?;
                    eprintln!("mirage: created {} for kv-rw store {}", dir.display(), d.name);
                }
                out.push(Device::KvRwDirectory(d.name.clone(), dir));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Builds the image when it is missing or older than its configuration;
/// its path.
pub fn ensure_built(config: &Config, opts: &Options) -> Result<PathBuf, Failure> {
    let image = config.dir.join("dist").join(opts.target.image(&config.name));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let wiring = crate::generate::dir(config, opts.target).join("main.rs");
    let sources = [modified(&wiring), modified(&config.dir.join(mirage::config::FILE))];
    if modified(&image).is_none_or(|i| sources.iter().flatten().any(|s| *s > i)) {
        crate::build_image(config, opts)?;
    }
    Ok(image)
}

pub fn run(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("run", argv, &["target=", "tap=", "host-address=", "mem=", "accel=", "help"])?;
    if help(&args, RUN_HELP) {
        return Ok(());
    }
    if let Some(p) = args.positional.first() {
        return Err(Failure::usage(
            format!("run: unexpected argument {p:?}"),
            "boot arguments go after --: mirage run -- --ipv4=10.0.0.2/24",
        ));
    }
    let config = load(dir)?;
    let target = args.value("target").map(parse_target).transpose()?;
    let opts: Options = load_state(&config, target)?;
    let image = ensure_built(&config, &opts)?;
    let mut cmd = match opts.target {
        Target::Unix => Command::new(&image),
        t => {
            if t == Target::Hvt {
                check_kvm()?;
            }
            let mut c = Command::new(tender_path(t)?);
            if let Some(m) = args.value("mem") {
                c.arg(format!("--mem={m}"));
            }
            match args.value("accel") {
                Some(a) if t == Target::Virtio => {
                    c.arg(format!("--accel={a}"));
                }
                Some(_) => return Err(Failure::usage("--accel applies to virtio", "drop --accel")),
                None => {}
            }
            c
        }
    };
    if opts.target == Target::Unix && args.value("mem").is_some() {
        return Err(Failure::usage("--mem applies to hvt, spt and virtio", "drop --mem on unix"));
    }
    if opts.target == Target::Unix && args.value("accel").is_some() {
        return Err(Failure::usage("--accel applies to virtio", "drop --accel"));
    }
    let first_host = args.value("host-address").unwrap_or("10.0.0.1/24");
    let mut created = Vec::new();
    let mut device_args = Vec::new();
    let mut first_tap = true;
    for device in devices(&config, &opts)? {
        let interface = match device {
            Device::Net(interface) => interface,
            Device::Block(interface, path, dsync) => {
                let attach = if dsync { "--block-dsync" } else { "--block" };
                device_args.push(format!("{attach}:{interface}={}", path.display()));
                continue;
            }
            Device::KvRwDirectory(name, dir) => {
                device_args.push(format!("--kv-rw:{name}={}", dir.display()));
                continue;
            }
        };
        let given = if first_tap { args.value("tap") } else { None };
        // Each interface has its own subnet (two taps in one subnet would
        // make two routes to it).
        let host = match generate::subnet(&config, &interface) {
            0 => first_host.to_string(),
            n => format!("10.0.{n}.1/24"),
        };
        first_tap = false;
        let mtu = if opts.target == Target::Virtio { VIRTIO_MTU } else { LARGE_MTU };
        let t = tap(&interface, given, &host, mtu, &mut created)?;
        device_args.push(format!("--net:{interface}={t}"));
    }
    match opts.target {
        Target::Unix => {
            cmd.args(&device_args);
        }
        _ => {
            cmd.args(&device_args).arg(&image);
        }
    }
    // A tender joins the words after the image into one command line,
    // which the unikernel splits as a shell would: each word is quoted so
    // that it arrives as the word given here, as it does on unix.
    match opts.target {
        Target::Unix => cmd.args(&args.rest),
        _ => cmd.args(args.rest.iter().map(|w| quote(w))),
    };
    let shown: Vec<String> = std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    eprintln!("mirage: {}", shown.join(" "));
    // Ctrl-C, SIGTERM and SIGHUP go to the unikernel, and mirage stays to
    // remove what it created. A handler, not SIG_IGN: an ignored signal
    // stays ignored across exec, a handled one reverts to the default in
    // the child.
    static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
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
    let mut child = cmd.spawn().map_err(|e| {
        Failure::new(format!("cannot run {}: {e}", shown[0]), "check that the file exists and is executable")
    })?;
    CHILD.store(child.id() as i32, std::sync::atomic::Ordering::Relaxed);
    let status = child.wait().map_err(|e| Failure::new(format!("waiting for {}: {e}", shown[0]), ""))?;
    drop(created);
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => {
            Err(Failure { cause: format!("{} exited with status {c}", config.name), fix: String::new(), status: c })
        }
        None => {
            Err(Failure { cause: format!("{} was killed ({status})", config.name), fix: String::new(), status: 128 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote;
    use mirage_runtime::args::split_cmdline;

    #[test]
    fn quoted_words_come_back_as_given() {
        let words = [
            "--hello=\"Hola Mundo!\"",
            "--hello=Hola Mundo!",
            "it's",
            "a\\b",
            "",
            "--solo5:quiet",
            "--ipv4=10.0.0.2/24",
            "tab\there",
            "'\"'",
        ];
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        assert_eq!(split_cmdline(&line.join(" ")).unwrap(), words);
        // Plain words stay as they are, so the command shown reads well
        // and the bindings' own options are seen.
        assert_eq!(quote("--solo5:quiet"), "--solo5:quiet");
        assert_eq!(quote("--hello=\"Hola Mundo!\""), "'--hello=\"Hola Mundo!\"'");
    }
}
