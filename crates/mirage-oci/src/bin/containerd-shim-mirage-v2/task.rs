//! The shim's ttrpc service, `containerd.task.v2.Task` (containerd's
//! `api/runtime/task/v2/shim.proto`), for the containers of one
//! namespace, each run by `mirage-runc` as containerd's runc shim runs
//! runc: `create` with the container's standard streams, `start`,
//! `kill`, `delete --force`. Exits are reported to containerd as events
//! (`/tasks/exit` and the others, over its ttrpc socket) and to `Wait`.
//!
//! Each connection has a thread that reads its calls; each call runs on a
//! short-lived thread of its own, so that a `Wait`, answered only when
//! the container exits, holds up nothing else.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::SystemTime;

use mirage_oci::proto::{Malformed, Reader, Value, Writer, any, timestamp};
use mirage_oci::ttrpc::{self, Reply, code};

use crate::mount::{self, Mount};
use crate::reaper::Reaper;
use crate::{Args, mirage_runc, runc_root};

const SERVICE: &str = "containerd.task.v2.Task";

/// `containerd.v1.types.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created = 1,
    Running = 2,
    Stopped = 3,
}

/// What the shim keeps of a container.
#[derive(Debug)]
struct Task {
    bundle: PathBuf,
    pid: u32,
    status: Status,
    exit: Option<(u32, SystemTime)>,
    stdio: [String; 3],
    /// `/tasks/start` is published: containerd expects a task's events
    /// in the order of its life, so an exit that comes first (a unikernel
    /// that fails at once, or one killed before it started) is published
    /// after it, or with the delete.
    started: bool,
    exit_unpublished: bool,
}

impl Task {
    /// `TaskExit`: container_id = 1, id = 2 (the task's own process has
    /// the container's id), pid = 3, exit_status = 4, exited_at = 5.
    fn exit_event(&self, id: &str) -> Option<Writer> {
        let (code, at) = self.exit?;
        let mut ev = Writer::new();
        ev.string(1, id).string(2, id).uint(3, u64::from(self.pid)).uint(4, u64::from(code)).message(5, &timestamp(at));
        Some(ev)
    }
}

struct Shim {
    args: Args,
    tasks: Mutex<HashMap<String, Task>>,
    /// A task stopped: `Wait` looks again.
    stopped: Condvar,
    reaper: OnceLock<Arc<Reaper>>,
    /// A shutdown with no container left is under way.
    leaving: AtomicBool,
    events: std::sync::mpsc::Sender<(&'static str, &'static str, Writer)>,
}

/// Serves the socket `start` passed until containerd shuts the shim down
/// with no container left.
pub fn serve(args: &Args) -> Result<(), String> {
    let listener = crate::inherited_listener()?;
    // One malloc arena: the threads here are few and mostly asleep.
    // SAFETY: mallopt with integer arguments, before any other thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let (tx, rx) = std::sync::mpsc::channel();
    let shim = Arc::new(Shim {
        args: args.clone(),
        tasks: Mutex::new(HashMap::new()),
        stopped: Condvar::new(),
        reaper: OnceLock::new(),
        leaving: AtomicBool::new(false),
        events: tx,
    });
    let publisher_args = args.clone();
    spawn_small("events", move || publish_events(&publisher_args, rx))?;
    let me = shim.clone();
    let reaper = Reaper::start(Box::new(move |pid, code| me.exited(pid, code)))?;
    let _ = shim.reaper.set(reaper);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shim = shim.clone();
        if let Err(e) = spawn_small("conn", move || shim.connection(conn)) {
            eprintln!("containerd-shim-mirage-v2: {e}");
        }
    }
    Ok(())
}

/// A thread with a small stack: the shim's threads parse small messages
/// and run commands.
fn spawn_small(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(f)
        .map(drop)
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// A call's failure: a gRPC status code and a message for the user.
type Failed = (i32, String);

fn malformed(e: Malformed) -> Failed {
    (code::INVALID_ARGUMENT, e.to_string())
}

/// The fields of a request, those named by number.
#[derive(Debug, Default)]
struct Fields {
    strings: HashMap<u32, String>,
    numbers: HashMap<u32, u64>,
    mounts: Vec<Mount>,
}

impl Fields {
    /// `mounts` is the field whose elements are `Mount` messages.
    fn parse(b: &[u8], mounts: Option<u32>) -> Result<Fields, Failed> {
        let mut f = Fields::default();
        let mut r = Reader::new(b);
        while let Some((n, v)) = r.next_field().map_err(malformed)? {
            match v {
                Value::Varint(x) => {
                    f.numbers.insert(n, x);
                }
                Value::Bytes(b) if Some(n) == mounts => f.mounts.push(Mount::decode(b).map_err(malformed)?),
                Value::Bytes(_) => {
                    // Strings only: an `Any` (options) is never read here.
                    if let Ok(s) = v.string() {
                        f.strings.insert(n, s);
                    }
                }
                Value::Fixed => {}
            }
        }
        Ok(f)
    }

    fn string(&self, n: u32) -> &str {
        self.strings.get(&n).map_or("", String::as_str)
    }

    fn number(&self, n: u32) -> u64 {
        self.numbers.get(&n).copied().unwrap_or(0)
    }
}

/// `CreateTaskResponse` and `StartResponse`: pid = 1.
fn pid_reply(pid: u32) -> Reply {
    let mut w = Writer::new();
    w.uint(1, u64::from(pid));
    Ok(w.into_bytes())
}

/// The task's id in a request that may name a process of it (exec_id =
/// 2): only the task's own is served.
fn task_only(f: &Fields) -> Result<&str, Failed> {
    let id = f.string(1);
    if !f.string(2).is_empty() {
        return Err((
            code::NOT_FOUND,
            format!("process {} of {id}: no such process (exec is not supported)", f.string(2)),
        ));
    }
    Ok(id)
}

fn not_found(id: &str) -> Failed {
    (code::NOT_FOUND, format!("container {id}: not found"))
}

impl Shim {
    fn connection(self: Arc<Self>, conn: UnixStream) {
        // Only containerd, which runs as this shim's user, may call: a
        // peer of another user is dropped unheard, as Go shims do.
        if let Err(e) = same_user(&conn) {
            eprintln!("containerd-shim-mirage-v2: refusing a connection: {e}");
            return;
        }
        let Ok(writer) = conn.try_clone() else { return };
        let writer = Arc::new(Mutex::new(writer));
        // Unbuffered: a call is a header and a payload, two reads, and a
        // buffer would cost each of a namespace's connections 8 KiB.
        let mut reader = conn;
        loop {
            let frame = match ttrpc::read_frame(&mut reader) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    eprintln!("containerd-shim-mirage-v2: dropping a connection: {e}");
                    return;
                }
            };
            if frame.kind != ttrpc::REQUEST {
                continue;
            }
            let (shim, writer) = (self.clone(), writer.clone());
            let call = move || {
                let reply = match ttrpc::Request::decode(&frame.payload) {
                    Ok(req) if req.service == SERVICE => shim.call(&req.method, &req.payload),
                    Ok(req) => Err((code::UNIMPLEMENTED, format!("service {} is not served here", req.service))),
                    Err(e) => Err(malformed(e)),
                };
                let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                let _ = ttrpc::write_frame(&mut *w, frame.stream, ttrpc::RESPONSE, &ttrpc::encode_response(&reply));
            };
            if let Err(e) = spawn_small("call", call) {
                eprintln!("containerd-shim-mirage-v2: {e}");
            }
        }
    }

    fn call(self: &Arc<Self>, method: &str, payload: &[u8]) -> Reply {
        match method {
            "Create" => self.create(payload),
            "Start" => self.start(payload),
            "State" => self.state(payload),
            "Kill" => self.kill(payload),
            "Delete" => self.delete(payload),
            "Wait" => self.wait(payload),
            "Pids" => self.pids(payload),
            "Connect" => self.connect(payload),
            "Shutdown" => self.shutdown(payload),
            // No standard input is kept open to close.
            "CloseIO" => Ok(Vec::new()),
            "Stats" => {
                Err((code::UNIMPLEMENTED, "statistics: read the container's cgroup (the tender is in it)".into()))
            }
            "Exec" | "ResizePty" | "Pause" | "Resume" | "Checkpoint" | "Update" => {
                Err((code::UNIMPLEMENTED, format!("{method} is not supported for unikernel containers")))
            }
            _ => Err((code::UNIMPLEMENTED, format!("method {method} is not served here"))),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reaper(&self) -> &Reaper {
        self.reaper.get().expect("the reaper starts before the first connection")
    }

    /// `mirage-runc` with the namespace's root and, for a container's
    /// calls, its bundle's log, which says why a command failed.
    fn runc(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(mirage_runc());
        c.arg("--root").arg(runc_root(&self.args.namespace));
        if let Some(l) = log {
            c.arg("--log").arg(l).args(["--log-format", "json"]);
        }
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    }

    /// Why a command failed: the last error in the log, or what it said.
    fn why(log: &Path, stderr: &str) -> String {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let from_log = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("msg")?.as_str().map(str::to_owned));
        from_log.unwrap_or_else(|| stderr.trim().trim_start_matches("mirage-runc: ").to_string())
    }

    fn create(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, Some(3))?;
        let (id, bundle) = (f.string(1).to_string(), PathBuf::from(f.string(2)));
        if id.is_empty() || !bundle.is_absolute() {
            return Err((code::INVALID_ARGUMENT, "a task needs an id and an absolute bundle path".into()));
        }
        if f.number(4) != 0 {
            return Err((
                code::INVALID_ARGUMENT,
                "a terminal is not supported by the mirage shim: the unikernel's console is the task's output; run without -t".into(),
            ));
        }
        if !f.string(8).is_empty() {
            return Err((code::UNIMPLEMENTED, "checkpoints are not supported for unikernel containers".into()));
        }
        if self.tasks().contains_key(&id) {
            return Err((code::ALREADY_EXISTS, format!("container {id}: already exists")));
        }
        let stdio = [f.string(5).to_string(), f.string(6).to_string(), f.string(7).to_string()];
        let out = open_output(&stdio[1]).map_err(|e| (code::INVALID_ARGUMENT, e))?;
        let err = if stdio[2] == stdio[1] {
            out.try_clone().map_err(|e| (code::UNKNOWN, e.to_string()))?
        } else {
            open_output(&stdio[2]).map_err(|e| (code::INVALID_ARGUMENT, e))?
        };
        let mounted = mount::mount_rootfs(&bundle, &f.mounts).map_err(|e| (code::UNKNOWN, e))?;
        let (log, pid_file) = (bundle.join("log.json"), bundle.join("init.pid"));
        let mut cmd = self.runc(Some(&log));
        cmd.arg("create").arg("--bundle").arg(&bundle).arg("--pid-file").arg(&pid_file).arg(&id);
        cmd.stdout(out).stderr(err);
        let result = self.reaper().run_command(&mut cmd, false);
        let pid = match result {
            Ok(o) if o.code == 0 => std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok()),
            Ok(o) => {
                if mounted {
                    mount::unmount_rootfs(&bundle);
                }
                return Err((code::UNKNOWN, format!("OCI runtime create failed: {}", Self::why(&log, &o.stderr))));
            }
            Err(e) => {
                if mounted {
                    mount::unmount_rootfs(&bundle);
                }
                return Err((code::UNKNOWN, e));
            }
        };
        let Some(pid) = pid else {
            let _ = self.reaper().run_command(self.runc(None).args(["delete", "--force", &id]), true);
            if mounted {
                mount::unmount_rootfs(&bundle);
            }
            return Err((code::UNKNOWN, format!("OCI runtime create failed: no pid in {}", pid_file.display())));
        };
        // An exit before the task was recorded is waiting to be claimed.
        self.reaper().claim(pid as i32, |exit| {
            let exit = exit.map(|c| (c, SystemTime::now()));
            let status = if exit.is_some() { Status::Stopped } else { Status::Created };
            let task = Task {
                bundle: bundle.clone(),
                pid,
                status,
                exit,
                stdio: stdio.clone(),
                started: false,
                exit_unpublished: exit.is_some(),
            };
            self.tasks().insert(id.clone(), task);
        });
        let mut io = Writer::new();
        io.string(1, &stdio[0]).string(2, &stdio[1]).string(3, &stdio[2]);
        let mut ev = Writer::new();
        ev.string(1, &id).string(2, &bundle.display().to_string()).message(4, &io).uint(6, u64::from(pid));
        self.event("/tasks/create", "containerd.events.TaskCreate", ev);
        pid_reply(pid)
    }

    fn start(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let id = task_only(&f)?;
        let (bundle, pid) = match self.tasks().get(id) {
            None => return Err(not_found(id)),
            Some(t) if t.status != Status::Created => {
                return Err((code::FAILED_PRECONDITION, format!("container {id} is not in the created state")));
            }
            Some(t) => (t.bundle.clone(), t.pid),
        };
        let log = bundle.join("log.json");
        let o = self
            .reaper()
            .run_command(self.runc(Some(&log)).args(["start", id]), true)
            .map_err(|e| (code::UNKNOWN, e))?;
        if o.code != 0 {
            return Err((code::UNKNOWN, format!("OCI runtime start failed: {}", Self::why(&log, &o.stderr))));
        }
        let mut tasks = self.tasks();
        if let Some(t) = tasks.get_mut(id) {
            if t.status == Status::Created {
                t.status = Status::Running;
            }
            // Sent with the lock held, so that an exit's event follows.
            t.started = true;
            let mut ev = Writer::new();
            ev.string(1, id).uint(2, u64::from(pid));
            self.event("/tasks/start", "containerd.events.TaskStart", ev);
            if std::mem::take(&mut t.exit_unpublished)
                && let Some(ev) = t.exit_event(id)
            {
                self.event("/tasks/exit", "containerd.events.TaskExit", ev);
            }
        }
        drop(tasks);
        pid_reply(pid)
    }

    fn state(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let id = f.string(1);
        let tasks = self.tasks();
        let t = tasks.get(id).ok_or_else(|| not_found(id))?;
        let mut w = Writer::new();
        w.string(1, id).string(2, &t.bundle.display().to_string()).uint(3, u64::from(t.pid)).uint(4, t.status as u64);
        w.string(5, &t.stdio[0]).string(6, &t.stdio[1]).string(7, &t.stdio[2]);
        if let Some((code, at)) = t.exit {
            w.uint(9, u64::from(code)).message(10, &timestamp(at));
        }
        Ok(w.into_bytes())
    }

    fn kill(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let id = f.string(1);
        let (signal, all) = (f.number(3), f.number(4) != 0);
        let bundle = match self.tasks().get(id) {
            None => return Err(not_found(id)),
            // containerd reads NotFound from a kill as "already finished".
            Some(t) if t.status == Status::Stopped => {
                return Err((code::NOT_FOUND, format!("container {id}: process already finished")));
            }
            Some(t) => t.bundle.clone(),
        };
        let signal = if signal == 0 { libc::SIGTERM as u64 } else { signal };
        let log = bundle.join("log.json");
        let mut cmd = self.runc(Some(&log));
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        let o = self.reaper().run_command(&mut cmd, true).map_err(|e| (code::UNKNOWN, e))?;
        if o.code != 0 {
            let why = Self::why(&log, &o.stderr);
            if why.contains("not running") {
                return Err((code::NOT_FOUND, format!("container {id}: process already finished")));
            }
            return Err((code::UNKNOWN, format!("OCI runtime kill failed: {why}")));
        }
        Ok(Vec::new())
    }

    fn delete(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let id = task_only(&f)?.to_string();
        let bundle = match self.tasks().get(&id) {
            None => return Err(not_found(&id)),
            Some(t) if t.status == Status::Running => {
                return Err((code::FAILED_PRECONDITION, format!("container {id} is running: kill it first")));
            }
            Some(t) => t.bundle.clone(),
        };
        // A created container's process is killed; a stopped one's state,
        // network and cgroups removed.
        let log = bundle.join("log.json");
        let o = self
            .reaper()
            .run_command(self.runc(Some(&log)).args(["delete", "--force", &id]), true)
            .map_err(|e| (code::UNKNOWN, e))?;
        if o.code != 0 && !Self::why(&log, &o.stderr).contains("does not exist") {
            return Err((code::UNKNOWN, format!("OCI runtime delete failed: {}", Self::why(&log, &o.stderr))));
        }
        mount::unmount_rootfs(&bundle);
        // Its exit, if the kill above ended it, is in the task by now.
        let mut tasks = self.tasks();
        let t = tasks.remove(&id).ok_or_else(|| not_found(&id))?;
        if t.exit_unpublished
            && let Some(ev) = t.exit_event(&id)
        {
            self.event("/tasks/exit", "containerd.events.TaskExit", ev);
        }
        drop(tasks);
        self.stopped.notify_all();
        let (code, at) = t.exit.unwrap_or((128 + libc::SIGKILL as u32, SystemTime::now()));
        let mut ev = Writer::new();
        ev.string(1, &id).uint(2, u64::from(t.pid)).uint(3, u64::from(code)).message(4, &timestamp(at)).string(5, &id);
        self.event("/tasks/delete", "containerd.events.TaskDelete", ev);
        let mut w = Writer::new();
        w.uint(1, u64::from(t.pid)).uint(2, u64::from(code)).message(3, &timestamp(at));
        Ok(w.into_bytes())
    }

    fn wait(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let id = f.string(1);
        let mut tasks = self.tasks();
        loop {
            match tasks.get(id) {
                None => return Err(not_found(id)),
                Some(Task { exit: Some((code, at)), .. }) => {
                    let mut w = Writer::new();
                    w.uint(1, u64::from(*code)).message(2, &timestamp(*at));
                    return Ok(w.into_bytes());
                }
                Some(_) => tasks = self.stopped.wait(tasks).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    fn pids(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let id = f.string(1);
        let tasks = self.tasks();
        let t = tasks.get(id).ok_or_else(|| not_found(id))?;
        let mut w = Writer::new();
        if t.status != Status::Stopped {
            let mut info = Writer::new();
            info.uint(1, u64::from(t.pid));
            w.message(1, &info);
        }
        Ok(w.into_bytes())
    }

    fn connect(&self, payload: &[u8]) -> Reply {
        let f = Fields::parse(payload, None)?;
        let task_pid = self.tasks().get(f.string(1)).map_or(0, |t| t.pid);
        let mut w = Writer::new();
        w.uint(1, u64::from(std::process::id())).uint(2, u64::from(task_pid)).string(3, env!("CARGO_PKG_VERSION"));
        Ok(w.into_bytes())
    }

    /// containerd shuts a shim down after deleting each of its tasks: the
    /// namespace's shim goes only once it serves none. Its socket's name
    /// is removed first, under the lock `start` takes, so that a later
    /// `start` begins a new shim; a container whose `start` found this one
    /// just before may still arrive, so the shim leaves only if none has
    /// a second later.
    fn shutdown(self: &Arc<Self>, _payload: &[u8]) -> Reply {
        if self.tasks().is_empty() && !self.leaving.swap(true, Ordering::SeqCst) {
            let me = self.clone();
            let _ = spawn_small("leave", move || {
                crate::unlink_socket(&me.args);
                std::thread::sleep(std::time::Duration::from_secs(1));
                if me.tasks().is_empty() {
                    std::process::exit(0);
                }
                me.leaving.store(false, Ordering::SeqCst);
            });
        }
        Ok(Vec::new())
    }

    /// The reaper's report of a child's end: whether it was a container's.
    fn exited(&self, pid: i32, code: u32) -> bool {
        let mut tasks = self.tasks();
        let Some((id, t)) = tasks.iter_mut().find(|(_, t)| t.pid as i32 == pid && t.exit.is_none()) else {
            return false;
        };
        t.status = Status::Stopped;
        t.exit = Some((code, SystemTime::now()));
        if t.started {
            if let Some(ev) = t.exit_event(id) {
                self.event("/tasks/exit", "containerd.events.TaskExit", ev);
            }
        } else {
            t.exit_unpublished = true;
        }
        drop(tasks);
        self.stopped.notify_all();
        true
    }

    fn event(&self, topic: &'static str, type_url: &'static str, ev: Writer) {
        let _ = self.events.send((topic, type_url, ev));
    }
}

/// Whether the peer of `conn` runs as this process's user.
fn same_user(conn: &UnixStream) -> Result<(), String> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(conn),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!("SO_PEERCRED: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid != me {
        return Err(format!("the peer (pid {}) runs as user {}, the shim as {me}", cred.pid, cred.uid));
    }
    Ok(())
}

/// Where the container's output goes, as containerd gives it: a FIFO
/// (opened for reading and writing, so that opening never waits for a
/// reader and writing never fails for want of one), a `file://` log or
/// another path (appended to), or nowhere.
fn open_output(spec: &str) -> Result<File, String> {
    if spec.is_empty() {
        return File::options().write(true).open("/dev/null").map_err(|e| format!("/dev/null: {e}"));
    }
    if let Some(path) = spec.strip_prefix("file://") {
        return File::options()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| format!("the log file {path}: {e}"));
    }
    if spec.contains("://") {
        return Err(format!(
            "the output {spec:?} is not supported by the mirage shim: give a file:// log URI, or none"
        ));
    }
    let is_fifo = std::fs::metadata(spec).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    if is_fifo {
        return File::options().read(true).write(true).open(spec).map_err(|e| format!("the output FIFO {spec}: {e}"));
    }
    File::options().create(true).append(true).mode(0o640).open(spec).map_err(|e| format!("the output file {spec}: {e}"))
}

/// Sends the shim's events to containerd, one call each on its ttrpc
/// socket (`TTRPC_ADDRESS`, which containerd gives its shims):
/// `containerd.services.events.ttrpc.v1.Events/Forward` with an envelope.
fn publish_events(args: &Args, rx: std::sync::mpsc::Receiver<(&'static str, &'static str, Writer)>) {
    let address = std::env::var("TTRPC_ADDRESS").unwrap_or_else(|_| format!("{}.ttrpc", args.address));
    let path = address.strip_prefix("unix://").unwrap_or(&address).to_string();
    for (topic, type_url, ev) in rx {
        let mut envelope = Writer::new();
        envelope
            .message(1, &timestamp(SystemTime::now()))
            .string(2, &args.namespace)
            .string(3, topic)
            .message(4, &any(type_url, &ev));
        let mut req = Writer::new();
        req.message(1, &envelope);
        let sent = UnixStream::connect(&path).map_err(|e| e.to_string()).and_then(|mut c| {
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            ttrpc::call(&mut c, "containerd.services.events.ttrpc.v1.Events", "Forward", req.into_bytes())
                .map_err(|e| e.to_string())
        });
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err((code, msg))) => eprintln!("containerd-shim-mirage-v2: publishing {topic}: code {code}: {msg}"),
            Err(e) => eprintln!("containerd-shim-mirage-v2: publishing {topic} to {path}: {e}"),
        }
    }
}
