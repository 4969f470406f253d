//! What the end-to-end tests and the benchmarks share: building the test
//! guests, running tenders with a deadline, network namespaces with a tap
//! device, and deciding what this machine can run.
//!
//! Tenders are found with [`set_tenders`] (the tests pass the paths cargo
//! gives them) or, by default, in `target/release`.

pub mod attack;
pub mod crash;
pub mod echo;
pub mod harness;
pub mod oci;
pub mod path;
pub mod router;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub type TestResult = Result<(), String>;

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_program_is_a_reason_to_skip() {
        let why = super::missing_program("mirage-no-such-program", "nothing").expect("the program does not exist");
        assert!(why.contains("`mirage-no-such-program` is not installed (apt-get install nothing"), "{why}");
        assert_eq!(super::missing_program("sh", "dash"), None);
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|_| PathBuf::from("."))
}

static TENDERS: OnceLock<[PathBuf; 3]> = OnceLock::new();

/// Uses these binaries for `solo5-hvt`, `solo5-spt` and `solo5-elftool`.
pub fn set_tenders(hvt: PathBuf, spt: PathBuf, elftool: PathBuf) {
    let _ = TENDERS.set([hvt, spt, elftool]);
}

/// The path of `solo5-hvt` (`"hvt"`), `solo5-spt` (`"spt"`),
/// `solo5-virtio` (`"virtio"`, built beside the others) or `solo5-elftool`
/// (`"elftool"`).
pub fn tender(name: &str) -> PathBuf {
    if name == "virtio" {
        return root().join("target/release/solo5-virtio");
    }
    let t = TENDERS.get_or_init(|| {
        let dir = root().join("target/release");
        [dir.join("solo5-hvt"), dir.join("solo5-spt"), dir.join("solo5-elftool")]
    });
    match name {
        "hvt" => t[0].clone(),
        "spt" => t[1].clone(),
        _ => t[2].clone(),
    }
}

static GUESTS: [OnceLock<Result<PathBuf, String>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

/// Builds the test guests for `target` (once per test run) and returns the
/// directory holding them.
pub fn guests(target: &str) -> Result<PathBuf, String> {
    let slot = match target {
        "hvt" => &GUESTS[0],
        "virtio" => &GUESTS[2],
        _ => &GUESTS[1],
    };
    slot.get_or_init(|| {
        let root = root();
        let target_dir = root.join("target/guests").join(target);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--features", target, "--manifest-path"])
            .arg(root.join("tests/guests/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!("building the {target} test guests failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(target_dir.join("release"))
    })
    .clone()
}

pub fn guest(target: &str, name: &str) -> Result<PathBuf, String> {
    Ok(guests(target)?.join(name))
}

/// The `mirage` tool, built once per run (`target/release/mirage`), with
/// the tenders, `mirage-runc` and our containerd shim.
pub fn mirage() -> Result<PathBuf, String> {
    static TOOL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TOOL.get_or_init(|| {
        let root = root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", "mirage", "-p", "tender", "-p", "mirage-oci"])
            .current_dir(&root)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!("building the mirage tool failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(root.join("target/release/mirage"))
    })
    .clone()
}

/// Runs the mirage tool in `dir` with `args`; its output, or why it failed.
pub fn mirage_in(dir: &Path, args: &[&str]) -> Result<Run, String> {
    let mut c = Command::new(mirage()?);
    c.arg("-C").arg(dir).args(args);
    // Every example and target shares one cargo target directory.
    c.env("CARGO_TARGET_DIR", root().join("target/mirage"));
    run_with(c, Duration::from_secs(1200))
}

/// Held while the mirage tool works in `examples/`: configurations of one
/// example share its directory, so one runs at a time.
pub fn examples_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Configures (`mirage configure -t TARGET` plus `keys`) and builds example
/// `name` with the mirage tool, once per run for each target and keys, and
/// returns its image (copied out of the example's `dist/`, which the next
/// configuration overwrites).
pub fn example_with(target: &str, name: &str, keys: &[&str]) -> Result<PathBuf, String> {
    static BUILT: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let id = format!("{target}{}", keys.join(""));
    let _lock = examples_lock();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = built.iter().find(|(k, _)| *k == format!("{id}/{name}")) {
        return r.clone();
    }
    let result = (|| {
        let dir = root().join("examples").join(name);
        let mut configure = vec!["configure", "-t", target];
        configure.extend_from_slice(keys);
        let r = mirage_in(&dir, &configure)?;
        if r.status() != 0 {
            return Err(format!("mirage configure failed: {}", r.dump()));
        }
        let r = mirage_in(&dir, &["build", "-t", target])?;
        if r.status() != 0 {
            return Err(format!("mirage build failed: {}", r.dump()));
        }
        let image = if target == "unix" { name.to_string() } else { format!("{name}.{target}") };
        let out_dir = root().join("target/e2e-images").join(id.replace("--", "-").replace('=', "-"));
        std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
        let out = out_dir.join(&image);
        let _ = std::fs::remove_file(&out);
        std::fs::copy(dir.join("dist").join(&image), &out).map_err(|e| format!("copying {image}: {e}"))?;
        // The debug file gdb reads beside a Solo5 image, where there is one.
        let debug = format!("{image}.debug");
        let _ = std::fs::remove_file(out_dir.join(&debug));
        if dir.join("dist").join(&debug).is_file() {
            std::fs::copy(dir.join("dist").join(&debug), out_dir.join(&debug))
                .map_err(|e| format!("copying {debug}: {e}"))?;
        }
        Ok(out)
    })();
    built.push((format!("{id}/{name}"), result.clone()));
    result
}

/// Example `name` built for `target` (`unix`, `hvt` or `spt`) with the
/// default keys, except that on unix stacks are direct (on a tap device).
pub fn example(target: &str, name: &str) -> Result<PathBuf, String> {
    if target == "unix" { example_with(target, name, &["--net=direct"]) } else { example_with(target, name, &[]) }
}

/// The outcome of a process.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The shell's view of the status: the code, or 128 + the signal.
    pub fn status(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }

    pub fn expect_status(&self, want: i32) -> TestResult {
        if self.status() != want {
            return Err(format!("exit status {} instead of {want}\n{}", self.status(), self.dump()));
        }
        Ok(())
    }

    pub fn expect_stdout(&self, needle: &str) -> TestResult {
        if !self.stdout.contains(needle) {
            return Err(format!("stdout lacks {needle:?}\n{}", self.dump()));
        }
        Ok(())
    }

    pub fn expect_stderr(&self, needle: &str) -> TestResult {
        if !self.stderr.contains(needle) {
            return Err(format!("stderr lacks {needle:?}\n{}", self.dump()));
        }
        Ok(())
    }

    pub fn dump(&self) -> String {
        format!("--- stdout:\n{}--- stderr:\n{}---", self.stdout, self.stderr)
    }
}

/// Runs `cmd`, killing it after `limit`.
pub fn run_with(mut cmd: Command, limit: Duration) -> Result<Run, String> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            return Err(format!(
                "{cmd:?} did not finish within {limit:?}\n--- stdout:\n{stdout}--- stderr:\n{stderr}---"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    Ok(Run {
        code: status.code(),
        signal: status.signal(),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned(),
        elapsed,
    })
}

/// Runs `program` with `args`, with a 60-second limit.
pub fn run<S: AsRef<std::ffi::OsStr>>(program: impl AsRef<std::ffi::OsStr>, args: &[S]) -> Result<Run, String> {
    let mut c = Command::new(program);
    c.args(args);
    run_with(c, Duration::from_secs(60))
}

/// Runs a tender: `tender(target) options... guest guest_args...`.
pub fn boot(target: &str, options: &[&str], guest_name: &str, guest_args: &[&str]) -> Result<Run, String> {
    let mut c = Command::new(tender(target));
    c.args(options).arg(guest(target, guest_name)?).args(guest_args);
    run_with(c, Duration::from_secs(60))
}

/// A scratch directory removed when dropped.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

static SCRATCH: AtomicU32 = AtomicU32::new(0);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mirage-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn file(&self, name: &str, size: u64) -> PathBuf {
        let p = self.0.join(name);
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(size).expect("set_len");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why this machine cannot run `target` guests, if it cannot.
pub fn missing(target: &str) -> Option<String> {
    match target {
        "hvt" => match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => None,
            Err(e) => Some(format!("/dev/kvm is not usable ({e})")),
        },
        "virtio" => missing_program("qemu-system-x86_64", "qemu-system-x86"),
        _ => None,
    }
}

/// Why this machine cannot run program `name` (from Debian's `package`),
/// if it cannot: it is not on PATH.
pub fn missing_program(name: &str, package: &str) -> Option<String> {
    match Command::new(name).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("`{name}` is not installed (apt-get install {package}; .ci/run installs it)"))
        }
        Err(e) => Some(format!("`{name}` cannot be run: {e}")),
        Ok(_) => None,
    }
}

/// The directory of Solo5 v0.12.1's built test programs (`tests/` of a
/// Solo5 source tree after `./configure.sh && make`): `$SOLO5_TESTS`, or
/// `/tmp/solo5/tests`; or why there is none.
pub fn solo5_tests() -> Result<PathBuf, String> {
    let dir = std::env::var_os("SOLO5_TESTS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/solo5/tests"));
    if dir.join("test_hello/test_hello.hvt").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "Solo5's test programs are not in {} (build Solo5 v0.12.1 from source, `./configure.sh && make`, and set SOLO5_TESTS to its tests/ directory)",
            dir.display()
        ))
    }
}

/// Why this machine cannot run the network tests, if it cannot.
pub fn missing_net() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        if !Path::new("/dev/net/tun").exists() {
            return Some("/dev/net/tun is missing".into());
        }
        for tool in ["ip", "ping"] {
            if Command::new(tool).arg("-V").output().is_err() {
                return Some(format!("`{tool}` is not installed (iproute2, iputils-ping)"));
            }
        }
        let probe = Netns::new();
        match probe {
            Ok(_) => None,
            Err(e) => Some(format!("cannot create a network namespace with a tap device: {e}")),
        }
    })
    .clone()
}

static NETNS: AtomicU32 = AtomicU32::new(0);

/// A network namespace holding tap device `tap0` (10.0.0.1/24, up), for one
/// test; deleted, with everything in it, when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

impl Netns {
    pub fn new() -> Result<Netns, String> {
        Netns::with_mtu(1500)
    }

    /// A namespace whose `tap0` has MTU `mtu` (Linux takes up to 65535 on
    /// a tap device).
    pub fn with_mtu(mtu: u16) -> Result<Netns, String> {
        let n = NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("mirage-test-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["tuntap", "add", "tap0", "mode", "tap"])?;
        ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "tap0"])?;
        if mtu != 1500 {
            ns.ip(&["link", "set", "tap0", "mtu", &mtu.to_string()])?;
        }
        ns.ip(&["link", "set", "tap0", "up"])?;
        Ok(ns)
    }

    /// A namespace with only its loopback device, up: for tests that
    /// lay out their own links (the router's three namespaces).
    pub fn empty() -> Result<Netns, String> {
        let n = NETNS.fetch_add(1, Ordering::Relaxed);
        let name = format!("mirage-test-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["netns", "exec", &self.name, "ip"];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Packets the host received from interface `dev` of the namespace so
    /// far (a segment the host cuts counts once: it arrives as one).
    pub fn rx_packets(&self, dev: &str) -> Result<u64, String> {
        self.counter(dev, "rx_packets")
    }

    /// Packets the host sent through interface `dev` of the namespace so
    /// far (a segment handed over uncut counts once).
    pub fn tx_packets(&self, dev: &str) -> Result<u64, String> {
        self.counter(dev, "tx_packets")
    }

    fn counter(&self, dev: &str, name: &str) -> Result<u64, String> {
        let out = self
            .command("cat")
            .arg(format!("/sys/class/net/{dev}/statistics/{name}"))
            .output()
            .map_err(|e| format!("reading {dev}'s counters: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("{dev}'s {name}: {:?}", String::from_utf8_lossy(&out.stderr).trim()))
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Unikernel `image` for `target` run inside the namespace with device
    /// options `devices` (`--net:service=tap0`, ...): the image itself on
    /// unix, which takes them, else its tender, quiet. Boot arguments go
    /// after.
    pub fn unikernel(&self, target: &str, image: &Path, devices: &[&str]) -> Command {
        if target == "unix" {
            let mut c = self.command(image);
            c.args(devices);
            c
        } else {
            let mut c = self.command(tender(target));
            c.args(devices).arg(image).arg("--solo5:quiet");
            c
        }
    }

    /// Runs `f` on a thread that has entered the namespace: the sockets it
    /// opens, and the threads it starts, live there.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, String> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a namespace file this thread opened;
                // it changes only this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| "the thread in the namespace panicked".to_string())?
        })
    }
}

/// Sends raw Ethernet frames out of interface `ifname` of the calling
/// thread's namespace (on a tap device: to whatever reads the tap).
pub fn send_frames(ifname: &str, frames: &[Vec<u8>]) -> Result<(), String> {
    let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: plain system calls on a socket this function owns; the
    // address structure is fully initialised.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(format!("{ifname}: {}", std::io::Error::last_os_error()));
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(format!("AF_PACKET socket: {}", std::io::Error::last_os_error()));
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        let mut result = Ok(());
        for f in frames {
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // Frames shorter than an Ethernet header are refused by the
                // kernel itself; they cannot reach the guest anyway.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    result = Err(format!("sendto {ifname}: {e}"));
                    break;
                }
            }
        }
        libc::close(fd);
        result
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// dnsmasq serving DHCP only (no DNS, no lease file, no ping before an
/// offer) on `interface` in `ns`, from `range` (`FIRST,LAST,MASK,TIME`),
/// with `extra` options; started and ready.
pub fn dnsmasq(ns: &Netns, interface: &str, range: &str, extra: &[&str]) -> Result<Background, String> {
    let mut d = ns.command("dnsmasq");
    d.args(["--no-daemon", "--conf-file=/dev/null", "--bind-interfaces", "--port=0", "--no-ping", "--leasefile-ro"]);
    d.arg(format!("--interface={interface}")).arg(format!("--dhcp-range={range}")).args(extra);
    let mut dnsmasq = Background::start(d)?;
    dnsmasq.wait_for("DHCP, IP range", Duration::from_secs(10))?;
    Ok(dnsmasq)
}

/// The port a `solo5-hvt --gdb` in `bg` waits on, once it says so.
pub fn gdb_port(bg: &mut Background) -> Result<u16, String> {
    bg.wait_for("\" KERNEL", Duration::from_secs(30))?;
    let out = bg.output();
    out.split("target remote localhost:")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in the tender's message:\n{out}"))
}

/// A tender running in the background; killed when dropped.
#[derive(Debug)]
pub struct Background {
    pub child: std::process::Child,
    log: PathBuf,
    _scratch: Scratch,
}

impl Background {
    pub fn start(mut cmd: Command) -> Result<Background, String> {
        let scratch = Scratch::new("bg");
        let log = scratch.0.join("out.log");
        let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = cmd.stdout(f).stderr(f2).stdin(Stdio::null()).spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
        Ok(Background { child, log, _scratch: scratch })
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit; its status.
    pub fn wait(&mut self, limit: Duration) -> Result<i32, String> {
        use std::os::unix::process::ExitStatusExt;
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
            }
            if start.elapsed() > limit {
                return Err(format!("did not exit within {limit:?}\n{}", self.output()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> TestResult {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                return Err(format!("exited ({s}) before printing {needle:?}\n{}", self.output()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!("no {needle:?} within {limit:?}\n{}", self.output()))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64): test data that is
/// not a repeating pattern, the same on every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    // Zero is xorshift's one fixed point.
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
