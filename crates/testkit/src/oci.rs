//! Unikernels as containers, for the end-to-end tests and the benchmarks:
//! a containerd of the caller's own (root, state and socket of its own,
//! the CRI plugin off), stopped when dropped after force-deleting what is
//! left in it; pairs of network namespaces joined by a veth; the static
//! website packed by `mirage package --oci`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{Run, Scratch, TestResult, root, run_with};

/// Where the tests install what runs unikernel containers, as a user
/// does (`mirage install-runtime`, README.md, "Containers"): our shim and
/// `mirage-runc` as built, the tenders linked statically. Once per run.
pub fn runtime_dir() -> Result<PathBuf, String> {
    static INSTALLED: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = installed.as_ref() {
        return r.clone();
    }
    let result = (|| {
        let dir = root().join("target/oci-runtime");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let prefix = format!("--prefix={}", dir.display());
        let r = crate::mirage_in(&root(), &["install-runtime", &prefix])?;
        if r.status() != 0 {
            return Err(format!("mirage install-runtime: {}", r.dump()));
        }
        Ok(dir)
    })();
    *installed = Some(result.clone());
    result
}

/// `mirage-runc`, installed by [`runtime_dir`].
pub fn runc() -> Result<PathBuf, String> {
    Ok(runtime_dir()?.join("mirage-runc"))
}

/// Which of the two ways containerd runs a unikernel container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's runc shim, with `mirage-runc` as its runc.
    RuncShim,
    /// Our own shim, `containerd-shim-mirage-v2`
    /// (`io.containerd.mirage.v2`), which runs `mirage-runc` itself.
    MirageShim,
}

impl Runtime {
    /// The shim binary's name, as it shows in a process listing.
    pub fn shim(self) -> &'static str {
        match self {
            Runtime::RuncShim => "containerd-shim-runc-v2",
            Runtime::MirageShim => "containerd-shim-mirage-v2",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::RuncShim => "runc_shim",
            Runtime::MirageShim => "mirage_shim",
        }
    }
}

pub static SEQ: AtomicU32 = AtomicU32::new(0);

/// The OCI annotation by which containerd's runc shim (v2) serves every
/// container that carries the same value from one shim process, where
/// each would otherwise get its own (`ctr run --annotation`; Kubernetes
/// groups a pod's containers by `io.kubernetes.cri.sandbox-id`).
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// A containerd of the test's own, stopped and its directories removed
/// when dropped.
#[derive(Debug)]
pub struct Containerd {
    child: std::process::Child,
    dir: Scratch,
    state: PathBuf,
    address: String,
    pub namespace: String,
}

impl Containerd {
    pub fn start() -> Result<Containerd, String> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = Scratch::new("containerd");
        // The socket's path must fit a sockaddr_un: state goes in /run.
        let state = PathBuf::from(format!("/run/mirage-oci-{}-{n}", std::process::id()));
        let address = format!("{}/c.sock", state.display());
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.tracing.processor.v1.otlp\", \
             \"io.containerd.internal.v1.tracing\"]\n\
             [grpc]\n  address = \"{address}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{root}/opt\"\n",
            root = dir.0.join("root").display(),
            state = state.display(),
        );
        let config_path = dir.0.join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.0.join("containerd.log")).map_err(|e| e.to_string())?;
        // containerd finds a runtime's shim on its PATH: ours is
        // installed beside mirage-runc.
        let path = format!(
            "{}:{}",
            runtime_dir()?.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new("containerd")
            .env("PATH", path)
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        let c = Containerd { child, dir, state, address, namespace: format!("mirage-test-{}-{n}", std::process::id()) };
        let start = Instant::now();
        while !Path::new(&c.address).exists() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("containerd did not start within 20 s:\n{}", c.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Result<Run, String> {
        let mut c = Command::new("ctr");
        c.args(["--address", &self.address, "--namespace", &self.namespace]).args(args);
        run_with(c, Duration::from_secs(120))
    }

    /// The bundle containerd made for container `id`'s task.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state.join("io.containerd.runtime.v2.task").join(&self.namespace).join(id)
    }

    /// `ctr events`, running until killed: what containerd publishes for
    /// this namespace, one event a line.
    pub fn events(&self) -> Result<std::process::Child, String> {
        Command::new("ctr")
            .args(["--address", &self.address, "--namespace", &self.namespace, "events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run ctr events: {e}"))
    }

    pub fn import(&self, tarball: &Path) -> TestResult {
        self.ctr(&["images", "import", &tarball.display().to_string()])?.expect_status(0)
    }

    /// `ctr run` with mirage-runc as the runc shim's binary.
    pub fn run(&self, options: &[&str], image: &str, id: &str, args: &[&str]) -> Result<Run, String> {
        self.run_with(Some(&runc()?), options, image, id, args)
    }

    /// `ctr run` of a unikernel container by `runtime`.
    pub fn run_on(
        &self,
        runtime: Runtime,
        options: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Result<Run, String> {
        match runtime {
            Runtime::RuncShim => self.run(options, image, id, args),
            Runtime::MirageShim => {
                let mut a = vec!["run", "--runtime", "io.containerd.mirage.v2"];
                a.extend_from_slice(options);
                a.push(image);
                a.push(id);
                a.extend_from_slice(args);
                self.ctr(&a)
            }
        }
    }

    /// `ctr run` by the runc shim with `binary` (runc when `None`).
    pub fn run_with(
        &self,
        binary: Option<&Path>,
        options: &[&str],
        image: &str,
        id: &str,
        args: &[&str],
    ) -> Result<Run, String> {
        let binary = binary.map(|b| b.display().to_string());
        let mut a = vec!["run", "--runtime", "io.containerd.runc.v2"];
        if let Some(b) = &binary {
            a.extend_from_slice(&["--runc-binary", b]);
        }
        a.extend_from_slice(options);
        a.push(image);
        a.push(id);
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// The pids of the runc shims serving this namespace's containers:
    /// one per container, or one per group of containers started with the
    /// same [`GROUP_ANNOTATION`].
    pub fn shims(&self) -> Vec<i32> {
        self.shims_of(Runtime::RuncShim)
    }

    /// The pids of `runtime`'s shims serving this namespace's containers.
    pub fn shims_of(&self, runtime: Runtime) -> Vec<i32> {
        let mut shims = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let words: Vec<&str> = cmdline.split('\0').collect();
            if words.first().is_some_and(|w| w.ends_with(runtime.shim()))
                && words.windows(2).any(|w| w == ["-namespace", self.namespace.as_str()])
            {
                shims.push(pid);
            }
        }
        shims
    }

    /// The task's status column in `ctr task ls` (RUNNING, STOPPED), if it
    /// is listed.
    pub fn task(&self, id: &str) -> Result<Option<(i32, String)>, String> {
        let r = self.ctr(&["task", "ls"])?;
        Ok(r.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].parse().unwrap_or(0), f.get(2).unwrap_or(&"").to_string()))
        }))
    }

    pub fn wait_stopped(&self, id: &str) -> TestResult {
        let start = Instant::now();
        loop {
            match self.task(id)? {
                Some((_, s)) if s == "STOPPED" => return Ok(()),
                _ if start.elapsed() > Duration::from_secs(20) => {
                    return Err(format!("task {id} did not stop within 20 s"));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The cgroup directories of container `id` (ctr's cgroupsPath is
    /// `/NAMESPACE/ID`), in each hierarchy that has one.
    pub fn cgroups(&self, id: &str) -> Vec<PathBuf> {
        let rel = Path::new(&self.namespace).join(id);
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path().join(&rel))
            .filter(|d| d.is_dir())
            .collect();
        let unified = Path::new("/sys/fs/cgroup").join(&rel);
        if unified.is_dir() {
            dirs.push(unified);
        }
        dirs
    }

    /// What the runtime keeps for container `id`: nothing, once deleted.
    pub fn leftovers(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let runc_dir = Path::new("/run/containerd/runc").join(&self.namespace).join(id);
        if runc_dir.exists() {
            left.push(format!("the runtime's state {}", runc_dir.display()));
        }
        for d in self.cgroups(id) {
            left.push(format!("the cgroup {}", d.display()));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mounts.lines().filter(|l| l.contains(&format!("/{}/{id}/", self.namespace))) {
            left.push(format!("a mount: {m}"));
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: its tasks (their shims would
        // outlive containerd, holding the root file systems mounted) and
        // containers.
        if let Ok(r) = self.ctr(&["task", "ls", "-q"]) {
            for id in r.stdout.split_whitespace() {
                let _ = self.ctr(&["task", "delete", "--force", id]);
            }
        }
        if let Ok(r) = self.ctr(&["container", "ls", "-q"]) {
            for id in r.stdout.split_whitespace() {
                let _ = self.ctr(&["container", "rm", id]);
            }
        }
        // SAFETY: kill(2) on the containerd this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The namespace's cgroup, in each hierarchy (runtimes remove only
        // the containers' own).
        for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(h.path().join(&self.namespace));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.namespace));
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// Two network namespaces joined by a veth pair: the container's
/// (`10.77.N.2/24`, default route through `.1`) and a client's
/// (`10.77.N.1/24`). Deleted when dropped.
#[derive(Debug)]
pub struct Link {
    pub container: String,
    pub client: String,
    pub address: String,
}

pub fn ip(args: &[&str]) -> TestResult {
    let r = crate::run("ip", args)?;
    if r.status() != 0 {
        return Err(format!("ip {}: {}", args.join(" "), r.stderr.trim()));
    }
    Ok(())
}

impl Link {
    pub fn new(n: u32) -> Result<Link, String> {
        let tag = format!("{}-{n}", std::process::id());
        let link =
            Link { container: format!("moc-{tag}"), client: format!("moh-{tag}"), address: format!("10.77.{n}.2") };
        ip(&["netns", "add", &link.container])?;
        ip(&["netns", "add", &link.client])?;
        ip(&[
            "link",
            "add",
            "v0",
            "netns",
            &link.container,
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            &link.client,
        ])?;
        ip(&["-n", &link.container, "link", "set", "lo", "up"])?;
        ip(&["-n", &link.container, "addr", "add", &format!("{}/24", link.address), "dev", "v0"])?;
        ip(&["-n", &link.container, "link", "set", "v0", "up"])?;
        ip(&["-n", &link.container, "route", "add", "default", "via", &format!("10.77.{n}.1")])?;
        ip(&["-n", &link.client, "addr", "add", &format!("10.77.{n}.1/24"), "dev", "v1"])?;
        ip(&["-n", &link.client, "link", "set", "v1", "up"])?;
        Ok(link)
    }

    pub fn netns(&self) -> String {
        format!("network:/var/run/netns/{}", self.container)
    }

    /// The container's namespace as `ip` shows it: addresses, devices,
    /// routes and queueing disciplines, to compare before and after.
    pub fn snapshot(&self) -> Result<String, String> {
        let show = |args: &[&str]| -> Result<String, String> {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.container]).args(args);
            Ok(run_with(c, Duration::from_secs(10))?.stdout)
        };
        let links: String = show(&["ip", "-o", "link"])?
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ") + "\n")
            .collect();
        let addrs: String = show(&["ip", "-o", "-4", "addr"])?;
        Ok(format!("{links}{addrs}{}{}", show(&["ip", "route"])?, show(&["tc", "qdisc", "show", "dev", "v0"])?))
    }

    /// Fetches `/` from the container's address in the client's namespace.
    pub fn get(&self) -> Result<Run, String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client, "curl", "-s", "-m", "2"]).arg(format!("http://{}/", self.address));
        run_with(c, Duration::from_secs(10))
    }

    pub fn wait_served(&self, want: &str) -> TestResult {
        let start = Instant::now();
        loop {
            let r = self.get()?;
            if r.status() == 0 && r.stdout == want {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("{} served no index.html within 20 s\n{}", self.address, r.dump()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.container]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

/// The static website packed by `mirage package --oci` for `target`, once
/// per run; its image reference and tarball.
pub fn website(target: &str) -> Result<(String, PathBuf), String> {
    static PACKED: Mutex<Vec<(String, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let reference = format!("localhost/mirage/static-website:{target}");
    // Built (and cached) as the other tests build it.
    crate::example(target, "static-website")?;
    let mut packed = PACKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = packed.iter().find(|(t, _)| t == target) {
        return r.clone().map(|p| (reference, p));
    }
    let result = (|| {
        let _lock = crate::examples_lock();
        let dir = root().join("examples/static-website");
        let out_dir = root().join("target/e2e-images/oci");
        std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
        let out = out_dir.join(format!("static-website-{target}.oci.tar"));
        let output = format!("--output={}", out.display());
        for step in
            [&["configure", "-t", target][..], &["build", "-t", target], &["package", "--oci", "-t", target, &output]]
        {
            let r = crate::mirage_in(&dir, step)?;
            if r.status() != 0 {
                return Err(format!("mirage {}: {}", step.join(" "), r.dump()));
            }
        }
        Ok(out)
    })();
    packed.push((target.to_string(), result.clone()));
    result.map(|p| (reference, p))
}

pub fn index_html() -> Result<String, String> {
    std::fs::read_to_string(root().join("examples/static-website/htdocs/index.html")).map_err(|e| e.to_string())
}
