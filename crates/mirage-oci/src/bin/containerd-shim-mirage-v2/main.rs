//! `containerd-shim-mirage-v2`: containerd's runtime v2 shim for mirage-rs
//! unikernels (`ctr run --runtime io.containerd.mirage.v2`, or a
//! Kubernetes RuntimeClass whose handler names that runtime type).
//!
//! containerd's runc shim serves unikernels too, with `mirage-runc` as
//! its runc; this shim does the same job with `mirage-runc`, for less.
//! One shim process serves every container of a containerd namespace,
//! and a container costs it a few hundred bytes of state and no thread
//! of its own: the tender writes its console straight into the stdout
//! containerd gives (a FIFO or a log file), where the runc shim copies
//! each container's output through pipes of its own. What it keeps per
//! container is its id, bundle, pid and status.
//!
//! ```text
//! containerd-shim-mirage-v2 -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start|delete
//! ```
//!
//! `start` (run by containerd in the bundle's directory) prints the
//! address of the namespace's shim, starting it if it is not running;
//! `delete` cleans up after a shim that died: it force-deletes the
//! container with `mirage-runc` and unmounts its root file system.
//! Without an action, the process is the shim itself, serving the ttrpc
//! socket `start` passed it as descriptor 3 (see `task.rs`).

mod mount;
mod reaper;
mod task;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What containerd passes on the command line.
#[derive(Debug, Default, Clone)]
pub struct Args {
    pub namespace: String,
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub debug: bool,
    pub action: Option<String>,
}

const USAGE: &str = "\
usage: containerd-shim-mirage-v2 -namespace NS -address ADDR [-publish-binary BIN] -id ID [-debug] [start|delete]

containerd's runtime v2 shim for mirage-rs unikernels; containerd runs it
for the runtime io.containerd.mirage.v2, for example
  ctr run --runtime io.containerd.mirage.v2 IMAGE ID
It boots each container with mirage-runc, installed beside it.";

fn parse(argv: &[OsString]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let word = argv[i].to_str().ok_or_else(|| format!("an argument is not UTF-8: {:?}", argv[i]))?;
        // Go's flag package takes -flag, --flag, -flag=value and -flag value.
        let flag = word.trim_start_matches('-');
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if !word.starts_with('-') {
            if a.action.is_some() {
                return Err(format!("unexpected argument {word:?}"));
            }
            a.action = Some(word.to_string());
            i += 1;
            continue;
        }
        if name == "debug" || name == "v" {
            a.debug = inline.as_deref() != Some("false");
            if name == "v" {
                println!("containerd-shim-mirage-v2 {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            i += 1;
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                argv.get(i).and_then(|v| v.to_str()).ok_or_else(|| format!("-{name} needs a value"))?.to_string()
            }
        };
        match name {
            "namespace" => a.namespace = value,
            "address" => a.address = value,
            "publish-binary" => a.publish_binary = value,
            "id" => a.id = value,
            // Flags of later containerd versions the shim has no use for.
            "bundle" | "socket" | "ttrpc-address" => {}
            _ => return Err(format!("unknown flag -{name}")),
        }
        i += 1;
    }
    if a.namespace.is_empty() {
        return Err("-namespace is required".into());
    }
    Ok(a)
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-mirage-v2: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let result = match args.action.as_deref() {
        Some("start") => start(&args),
        Some("delete") => delete(&args),
        None => task::serve(&args),
        Some(other) => Err(format!("unknown action {other:?}: the actions are start and delete")),
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-mirage-v2: {e}");
        std::process::exit(1);
    }
}

/// The state directory of `mirage-runc` for the namespace: runc's, as
/// containerd's runc shim gives it (`/run/containerd/runc/NS`), so either
/// shim finds the other's containers.
pub fn runc_root(namespace: &str) -> PathBuf {
    Path::new("/run/containerd/runc").join(namespace)
}

/// `mirage-runc`: the one installed beside this binary, or on PATH.
pub fn mirage_runc() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.join("mirage-runc").is_file()
    {
        return dir.join("mirage-runc");
    }
    PathBuf::from("mirage-runc")
}

/// The socket of the namespace's shim: as Go shims name theirs
/// (`/run/containerd/s/` and a SHA-256), of containerd's address and the
/// namespace, so that one shim serves the namespace of one containerd.
fn socket_path(args: &Args) -> PathBuf {
    let digest = Sha256::digest(format!("{}/{}/mirage-shim", args.address, args.namespace).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Path::new("/run/containerd/s").join(hex)
}

/// `start`: prints the address of the namespace's shim, after starting
/// it if none answers there. Several containers start at once: a lock
/// file keeps two from starting two shims.
fn start(args: &Args) -> Result<(), String> {
    let path = socket_path(args);
    let address = format!("unix://{}", path.display());
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let _lock = lock(&path)?;
    if UnixStream::connect(&path).is_err() {
        // A stale socket of a shim that died.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
        spawn_shim(args, &listener)?;
    }
    // containerd reads the address from the bundle too when it restarts.
    let _ = std::fs::write("address", &address);
    print!("{address}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    Ok(())
}

/// Removes the name of the namespace's shim's socket, under the lock
/// `start` takes: a `start` after it begins a new shim.
pub fn unlink_socket(args: &Args) {
    let path = socket_path(args);
    let Ok(_lock) = lock(&path) else { return };
    let _ = std::fs::remove_file(&path);
}

/// Takes the lock file beside the socket `path`, which `start` and a
/// leaving shim hold while they look at or remove the socket's name;
/// released when the file is dropped.
fn lock(path: &Path) -> Result<std::fs::File, String> {
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when it is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("cannot lock {}: {}", lock_path.display(), std::io::Error::last_os_error()));
    }
    Ok(lock)
}

/// Starts the shim: this binary with no action, in a session of its own
/// (containerd's signals to `start` must not reach it), the listening
/// socket as descriptor 3, standard streams to /dev/null.
fn spawn_shim(args: &Args, listener: &UnixListener) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["-namespace", &args.namespace, "-address", &args.address, "-id", &args.id]);
    if !args.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &args.publish_binary]);
    }
    // The shim must not keep a bundle's directory busy.
    cmd.current_dir("/");
    // containerd reads all `start` prints, standard error too, until the
    // pipes close: the shim must not hold them. Its complaints go to the
    // bundle's `log` FIFO, which containerd copies into its own log, never
    // waiting on it (non-blocking: a line is lost, rather than the shim
    // stalled, should containerd stop reading).
    let log = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log);
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // dup2 and fcntl.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot start the shim: {e}"))?;
    // It is the shim's now: not waited for here (it outlives this process).
    drop(child);
    Ok(())
}

/// The listener `start` passed as descriptor 3.
pub fn inherited_listener() -> Result<UnixListener, String> {
    // SAFETY: fstat on a descriptor number only reads its status.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    if unsafe { libc::fstat(3, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err("descriptor 3 is not a socket: the shim is started by `containerd-shim-mirage-v2 ... start`".into());
    }
    // SAFETY: descriptor 3 is an open socket given to this process, owned
    // from here on.
    let l = unsafe { UnixListener::from_raw_fd(3) };
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(l)
}

/// `delete`: after a shim died, containerd asks a new process to clean
/// up the container (run in its bundle's directory): it is killed and
/// deleted by `mirage-runc`, its root file system unmounted, and the
/// answer is a `DeleteResponse` on stdout, as if killed by SIGKILL.
fn delete(args: &Args) -> Result<(), String> {
    let bundle = std::env::current_dir().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(mirage_runc())
        .arg("--root")
        .arg(runc_root(&args.namespace))
        .args(["delete", "--force", &args.id])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run mirage-runc: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        // Nothing left to delete is what a cleanup wants.
        if !said.contains("does not exist") && !said.contains("not found") {
            eprintln!("containerd-shim-mirage-v2: mirage-runc delete {}: {}", args.id, said.trim());
        }
    }
    mount::unmount_rootfs(&bundle);
    let mut w = mirage_oci::proto::Writer::new();
    w.uint(2, 128 + libc::SIGKILL as u64).message(3, &mirage_oci::proto::timestamp(std::time::SystemTime::now()));
    std::io::stdout().write_all(&w.into_bytes()).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn containerds_command_lines_parse() {
        let a = parse(&os(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/c.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "web",
            "start",
        ]))
        .unwrap();
        assert_eq!((a.namespace.as_str(), a.address.as_str(), a.id.as_str()), ("k8s.io", "/run/c.sock", "web"));
        assert_eq!(a.action.as_deref(), Some("start"));
        let a = parse(&os(&["--namespace=default", "-debug", "-id", "x", "delete"])).unwrap();
        assert!(a.debug);
        assert_eq!(a.action.as_deref(), Some("delete"));
        assert!(parse(&os(&["-id", "x", "start"])).unwrap_err().contains("-namespace"));
        assert!(parse(&os(&["-namespace", "n", "-bogus", "1"])).unwrap_err().contains("unknown flag -bogus"));
        assert!(parse(&os(&["-namespace"])).unwrap_err().contains("needs a value"));
        assert!(parse(&os(&["-namespace", "n", "start", "again"])).unwrap_err().contains("unexpected"));
    }

    #[test]
    fn one_socket_per_namespace_and_containerd() {
        let a = |ns: &str, addr: &str| Args { namespace: ns.into(), address: addr.into(), ..Args::default() };
        assert_eq!(socket_path(&a("n", "/c")), socket_path(&Args { id: "other".into(), ..a("n", "/c") }));
        assert_ne!(socket_path(&a("n", "/c")), socket_path(&a("m", "/c")));
        assert_ne!(socket_path(&a("n", "/c")), socket_path(&a("n", "/d")));
        // Short enough for a sockaddr_un (108 bytes).
        assert!(socket_path(&a("n", "/c")).as_os_str().len() < 100);
    }
}
