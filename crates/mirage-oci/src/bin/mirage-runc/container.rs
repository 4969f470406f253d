//! The life of a unikernel container: create (every check first, then the
//! network and the waiting process, undone if a later step fails), start,
//! state, kill and delete, with the state in `ROOT/ID/mirage-runc.json`
//! (runc's root is shared: runc keeps `state.json` there, so the file
//! tells whose a container is).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirage_oci::{DESCRIPTION_FILE, Target, Unikernel, quote};

use crate::cgroup;
use crate::net::{self, Uplink};
use crate::{Failure, Global};

/// The hidden command the container's process runs before it becomes the
/// tender.
pub const INIT: &str = "__init";
const STATE: &str = "mirage-runc.json";
const FIFO: &str = "exec.fifo";
/// What the tender itself needs beside the guest's memory, in MiB: left
/// out of `--mem` when the container has a memory limit.
const TENDER_MIB: i64 = 2;
/// The largest config.json read (runc's are a few KiB).
const MAX_SPEC: u64 = 4 << 20;

#[derive(Debug)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// runc's rule for IDs, plus a length that fits a file name.
pub fn check_id(id: &str) -> Result<(), Failure> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if !ok {
        return Err(Failure::new(
            format!("invalid container ID {id:?}"),
            "use letters, digits, _, +, - and . (at most 200)",
        ));
    }
    Ok(())
}

fn dir(global: &Global, id: &str) -> PathBuf {
    global.root.join(id)
}

pub fn is_ours(global: &Global, id: &str) -> bool {
    dir(global, id).join(STATE).is_file()
}

/// Hands the whole command line to runc, for a container that is no
/// unikernel; refuses clearly when runc is not installed.
pub fn delegate(_global: &Global, what: &str) -> Result<(), Failure> {
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let runc = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|d| d.join("runc")).find(|p| p.is_file() && p.canonicalize().ok() != me)
    });
    let Some(runc) = runc else {
        return Err(Failure::new(
            format!("{what} is not a mirage-rs unikernel container, and runc is not installed to run it"),
            "install runc (apt-get install runc) for ordinary containers, or pack the unikernel with mirage package --oci",
        ));
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let e = Command::new(&runc).args(args).exec();
    Err(Failure::new(format!("cannot run {}: {e}", runc.display()), "check the runc installation"))
}

/// A bounded read of a small file.
fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    let f = File::open(path).map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the bundle"))?;
    let mut data = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the bundle"))?;
    if data.len() as u64 > limit {
        return Err(Failure::new(format!("{} is over {limit} bytes", path.display()), "check the bundle"));
    }
    Ok(data)
}

/// The parts of a bundle's config.json a unikernel uses.
struct Spec {
    rootfs: PathBuf,
    annotations: BTreeMap<String, String>,
    args: Vec<String>,
    terminal: bool,
    /// `Some(path)` to join, `Some(None)` for a new namespace, `None` for
    /// the host's.
    netns: Option<Option<PathBuf>>,
    memory_limit: Option<i64>,
    /// (destination, source, read-only) of bind mounts.
    binds: Vec<(String, PathBuf, bool)>,
    /// The root file system is mounted read-only (`root.readonly`).
    root_readonly: bool,
    cgroups_path: Option<String>,
}

fn spec_error(what: impl std::fmt::Display) -> Failure {
    Failure::new(format!("config.json: {what}"), "the bundle's config.json must follow the OCI runtime specification")
}

fn read_spec(bundle: &Path) -> Result<Spec, Failure> {
    let data = read_small(&bundle.join("config.json"), MAX_SPEC)?;
    let v: serde_json::Value = serde_json::from_slice(&data).map_err(spec_error)?;
    let root = v["root"]["path"].as_str().ok_or_else(|| spec_error("no root.path"))?;
    let rootfs = bundle.join(root);
    let mut annotations = BTreeMap::new();
    if let Some(map) = v["annotations"].as_object() {
        for (k, val) in map {
            let s = val.as_str().ok_or_else(|| spec_error(format!("annotation {k} is not a string")))?;
            annotations.insert(k.clone(), s.to_string());
        }
    }
    let args = match &v["process"]["args"] {
        serde_json::Value::Null => Vec::new(),
        a => a
            .as_array()
            .ok_or_else(|| spec_error("process.args is not a list"))?
            .iter()
            .map(|w| w.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| spec_error("process.args holds a non-string"))?,
    };
    let netns = v["linux"]["namespaces"].as_array().and_then(|list| {
        list.iter()
            .find(|n| n["type"] == "network")
            .map(|n| n["path"].as_str().filter(|p| !p.is_empty()).map(PathBuf::from))
    });
    let binds = v["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["type"] == "bind"
                || m["options"].as_array().is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
        })
        .filter_map(|m| {
            let ro = m["options"].as_array().is_some_and(|o| o.iter().any(|x| x == "ro"));
            Some((m["destination"].as_str()?.to_string(), PathBuf::from(m["source"].as_str()?), ro))
        })
        .collect();
    Ok(Spec {
        rootfs,
        annotations,
        args,
        terminal: v["process"]["terminal"].as_bool().unwrap_or(false),
        netns,
        memory_limit: v["linux"]["resources"]["memory"]["limit"].as_i64(),
        binds,
        root_readonly: v["root"]["readonly"].as_bool().unwrap_or(false),
        cgroups_path: v["linux"]["cgroupsPath"].as_str().filter(|p| !p.is_empty()).map(String::from),
    })
}

/// The unikernel a bundle describes: its annotations, else the image's
/// `/urunc.json`; `None` for an ordinary container.
fn describe(spec: &Spec) -> Result<Option<Unikernel>, Failure> {
    let bad = |e: mirage_oci::Invalid| Failure::new(format!("the unikernel's description: {}", e.cause), e.fix);
    if let Some(u) = Unikernel::from_annotations(&spec.annotations).map_err(bad)? {
        return Ok(Some(u));
    }
    let file = spec.rootfs.join(DESCRIPTION_FILE);
    // A link could point anywhere on the host.
    match std::fs::symlink_metadata(&file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Failure::new(format!("/{DESCRIPTION_FILE} in the image is not a file"), "repack the image"));
        }
        Err(_) => return Ok(None),
    }
    Unikernel::from_description_file(&read_small(&file, 1 << 20)?).map_err(bad)
}

/// Where `path` in the container lies on the host: the bind mount with
/// the longest destination that holds it, else the root file system; its
/// host directory, the rest of the path below it, and whether that mount
/// is read-only.
fn mount_of(spec: &Spec, path: &str) -> (PathBuf, String, bool) {
    let under = |dest: &str| {
        let dest = dest.trim_end_matches('/');
        path == dest || path.strip_prefix(dest).is_some_and(|r| r.starts_with('/')) || dest.is_empty()
    };
    match spec.binds.iter().filter(|(d, _, _)| under(d)).max_by_key(|(d, _, _)| d.len()) {
        Some((dest, source, ro)) => (source.clone(), path[dest.trim_end_matches('/').len()..].to_string(), *ro),
        None => (spec.rootfs.clone(), path.to_string(), spec.root_readonly),
    }
}

/// The host path of `path` in the container: under the bind mount with
/// the longest destination that holds it, else in the root file system;
/// a regular file that stays there once links are followed.
fn resolve(spec: &Spec, what: &str, path: &str) -> Result<PathBuf, Failure> {
    let (base, rest, _) = mount_of(spec, path);
    let candidate = if rest.is_empty() { base.clone() } else { base.join(rest.trim_start_matches('/')) };
    let missing = |e: std::io::Error| {
        Failure::new(
            format!("the {what} {path} is not in the container ({}: {e})", candidate.display()),
            "repack the image with mirage package --oci, or mount the file there",
        )
    };
    let real = candidate.canonicalize().map_err(missing)?;
    let base = base.canonicalize().map_err(missing)?;
    if !real.starts_with(&base) {
        return Err(Failure::new(
            format!("the {what} {path} leads out of the container (to {})", real.display()),
            "the image must hold the file itself, not a link out of it",
        ));
    }
    if !real.is_file() {
        return Err(Failure::new(format!("the {what} {path} is not a regular file"), "repack the image"));
    }
    Ok(real)
}

/// Opens the disk image of block device `name` at `path` in the
/// container, read-write, for the tender to take from the container's
/// process by its descriptor: the file checked is the file the guest gets,
/// whatever the container (or another sharing the volume) does to the
/// path between `create` and `start`. Refused on a read-only mount, and
/// if the path changed while it was opened.
fn open_disk(spec: &Spec, name: &str, path: &str) -> Result<File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = format!("disk image of block device {name}");
    let real = resolve(spec, &what, path)?;
    if mount_of(spec, path).2 {
        return Err(Failure::new(
            format!("the {what} {path} is on a read-only mount, and the unikernel writes to its block devices"),
            "mount it read-write in config.json, or give the unikernel no such device",
        ));
    }
    let changed = || Failure::new(format!("the {what} {path} changed while it was opened"), "try again");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&real)
        .map_err(|e| Failure::new(format!("the {what} {path}: {}: {e}", real.display()), "check the file"))?;
    // What was opened, as the kernel names it: the checked path, or the
    // path was swapped (a directory of it made a link) in between.
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(|_| changed())?;
    if opened != real || !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(changed());
    }
    Ok(f)
}

/// The tender to run: the one installed beside mirage-runc (or on PATH);
/// the image's own only when `MIRAGE_RUNC_IMAGE_TENDER=1`, because a
/// tender runs on the host, as root, outside any sandbox: code from an
/// image must not, unless the operator trusts the images.
fn tender(spec: &Spec, unikernel: &Unikernel) -> Result<PathBuf, Failure> {
    if image_tender() {
        return resolve(spec, "tender", &unikernel.tender);
    }
    let name = format!("solo5-{}", unikernel.target.name());
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(&name)));
    let on_path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(&name)).find(|p| p.is_file()));
    beside.filter(|p| p.is_file()).or(on_path).ok_or_else(|| {
        Failure::new(
            format!("{name} is not installed beside mirage-runc nor on PATH"),
            format!(
                "install {name} (cargo build --release in mirage-rs makes it) beside mirage-runc; the image's own tender is used only with MIRAGE_RUNC_IMAGE_TENDER=1"
            ),
        )
    })
}

/// Whether the operator asked for the image's own tender.
fn image_tender() -> bool {
    std::env::var_os("MIRAGE_RUNC_IMAGE_TENDER").is_some_and(|v| v == "1")
}

/// What `create` made so far, undone when dropped unless disarmed: a
/// failed create leaves nothing behind.
struct Made {
    dir: Option<PathBuf>,
    netns: Option<File>,
    netns_created: Option<String>,
    taps: Vec<String>,
    uplink: Option<Uplink>,
    child: Option<std::process::Child>,
    cgroups: Vec<PathBuf>,
}

impl Drop for Made {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        cgroup::remove(&self.cgroups);
        if !self.taps.is_empty() {
            net::teardown(self.netns.as_ref(), &self.taps, self.uplink.as_ref());
        }
        if let Some(name) = &self.netns_created {
            net::del_netns(name);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), which
/// tells it from a later process given the same pid; `None` once it is
/// gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn open_pty() -> Result<(OwnedFd, OwnedFd), Failure> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given integers; the
    // name, termios and window-size pointers may be null.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    if r != 0 {
        return Err(Failure::new(
            format!("cannot open a terminal: {}", std::io::Error::last_os_error()),
            "check /dev/pts",
        ));
    }
    // SAFETY: openpty succeeded, so both are open descriptors owned by no
    // one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Sends the terminal's master to `socket` (runc's console socket: one
/// message, the descriptor as SCM_RIGHTS).
fn send_console(socket: &Path, master: &OwnedFd) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::new(format!("console socket {}: {e}", socket.display()), "check the socket the shim gave")
    };
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(fail)?;
    let name = b"/dev/ptmx";
    let mut iov = libc::iovec { iov_base: name.as_ptr() as *mut libc::c_void, iov_len: name.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zero is a valid value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer is CMSG_SPACE(sizeof(int)) bytes, so the
    // first header and its int payload fit in it; sendmsg reads only the
    // buffers msg points to, which live until it returns.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), master.as_raw_fd());
        libc::sendmsg(stream.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn create(global: &Global, id: &str, options: &CreateOptions) -> Result<(), Failure> {
    let bundle = options.bundle.canonicalize().map_err(|e| {
        Failure::new(format!("the bundle {}: {e}", options.bundle.display()), "give --bundle an existing directory")
    })?;
    let spec = read_spec(&bundle)?;
    let Some(unikernel) = describe(&spec)? else {
        return delegate(global, &format!("the bundle {}", bundle.display()));
    };
    let dir = dir(global, id);
    if dir.exists() {
        return Err(Failure::new(format!("container {id} already exists"), "delete it first, or choose another ID"));
    }
    // Every check before anything is made.
    let image = resolve(&spec, "unikernel", &unikernel.binary)?;
    let tender = tender(&spec, &unikernel)?;
    if unikernel.target == Target::Hvt {
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map_err(|e| {
            Failure::new(format!("/dev/kvm: {e}"), "run hvt unikernels on a host with KVM, or pack an spt image")
        })?;
    }
    let mut disks = Vec::new();
    for (name, path) in &unikernel.blocks {
        disks.push((name.clone(), open_disk(&spec, name, path)?));
    }
    let mem = match spec.memory_limit.filter(|&l| l > 0) {
        Some(limit) => {
            let mib = limit >> 20;
            if mib < 2 {
                return Err(Failure::new(
                    format!("the memory limit, {limit} bytes, is under the 2 MiB a unikernel needs"),
                    "give the container at least 2 MiB",
                ));
            }
            // The cgroup holds the tender too: its own pages (about 1 MiB)
            // come out of the limit, so the guest fitting in its memory
            // never gets the container killed.
            Some((mib - TENDER_MIB).clamp(2, 65536) as u32)
        }
        None => unikernel.mem_mib,
    };
    let extra: &[String] = match spec.args.split_first() {
        Some((first, rest)) if *first == unikernel.binary => rest,
        _ => &spec.args,
    };
    let mut cmdline = unikernel.cmdline.clone();
    let netns_path = match (&spec.netns, unikernel.nets.is_empty()) {
        (_, true) => None,
        (None, false) => {
            return Err(Failure::new(
                "the container would share the host's network namespace, whose interface a unikernel would take",
                "give the container a network namespace of its own (no --net-host, no hostNetwork)",
            ));
        }
        (Some(p), false) => Some(p.clone()),
    };
    let console = match (&options.console_socket, spec.terminal) {
        (Some(socket), true) => Some(socket.clone()),
        (None, true) => {
            return Err(Failure::new("process.terminal is set but no --console-socket was given", "give one"));
        }
        _ => None,
    };

    let cgroup_dir = spec.cgroups_path.as_deref().map(|p| cgroup::relative(p, global.systemd_cgroup)).transpose()?;

    // From here on, what is made is undone on failure.
    std::fs::create_dir_all(&global.root).map_err(|e| {
        Failure::new(format!("{}: {e}", global.root.display()), "give --root a directory you may write")
    })?;
    std::fs::create_dir(&dir).map_err(|e| {
        Failure::new(format!("{}: {e}", dir.display()), "another create of this ID may be under way; choose another ID")
    })?;
    let mut made = Made {
        dir: Some(dir.clone()),
        netns: None,
        netns_created: None,
        taps: Vec::new(),
        uplink: None,
        child: None,
        cgroups: Vec::new(),
    };
    let mut tender_args: Vec<String> = Vec::new();
    if let Some(m) = mem {
        tender_args.push(format!("--mem={m}"));
    }
    // The image lies in the container's root file system, a snapshot of
    // the container image that nothing rewrites while the container runs:
    // our tenders map its code and read-only data from the file, so that
    // every container of the image shares those pages. (The image's own
    // tender may be Solo5's, which has no such option.)
    if !image_tender() {
        tender_args.push("--x-map-image".into());
    }
    if let Some(path) = netns_path {
        let path = match path {
            Some(p) => p,
            None => {
                let name = format!("mirage-runc-{id}");
                let p = net::add_netns(&name)?;
                made.netns_created = Some(name);
                PathBuf::from(p)
            }
        };
        let ns = File::open(&path).map_err(|e| {
            Failure::new(format!("the network namespace {}: {e}", path.display()), "give an existing namespace")
        })?;
        let links = net::links(Some(&ns))?;
        let uplink = links.uplink();
        let taps: Vec<(String, u32)> = (0..unikernel.nets.len())
            .map(|n| (net::tap_name(n), if n == 0 { uplink.as_ref().map_or(1500, |u| u.mtu) } else { 1500 }))
            .collect();
        // Recorded first: a failure half-way is undone whole.
        made.taps = taps.iter().map(|(t, _)| t.clone()).collect();
        made.uplink = uplink.clone();
        if let Err(e) = net::set_up(Some(&ns), &links, &taps, uplink.as_ref()) {
            // A tap that existed before is not ours to remove.
            if e.cause.contains("already") {
                made.taps.clear();
                made.uplink = None;
            }
            return Err(e);
        }
        for (interface, tap) in unikernel.nets.iter().zip(&made.taps) {
            tender_args.push(format!("--net:{interface}={tap}"));
        }
        if let Some(u) = uplink {
            let first = &unikernel.nets[0];
            if !u.mac.is_empty() {
                tender_args.push(format!("--net-mac:{first}={}", u.mac));
            }
            // The container's address first: the image's command line and
            // the container's arguments come after, and may override it.
            let mut net_args = format!("--ipv4={}/{}", u.address, u.prefix);
            if let Some(gw) = &u.gateway {
                net_args.push_str(&format!(" --ipv4-gateway={gw}"));
            }
            cmdline = if cmdline.is_empty() { net_args } else { format!("{net_args} {cmdline}") };
        }
        made.netns = Some(ns);
    }
    for (name, file) in &disks {
        // The container's process, and the tender it becomes, inherit the
        // descriptor (it is not closed on exec); the tender opens the file
        // again through it.
        // SAFETY: F_SETFD on a descriptor this function owns.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
            return Err(Failure::new(
                format!("cannot pass block device {name}: {}", std::io::Error::last_os_error()),
                "check the host",
            ));
        }
        tender_args.push(format!("--block:{name}=/proc/self/fd/{}", file.as_raw_fd()));
    }
    for word in extra {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&quote(word));
    }
    if cmdline.len() > mirage_oci::MAX_CMDLINE {
        return Err(Failure::new(
            format!("the command line is {} bytes", cmdline.len()),
            format!("keep it under {} bytes", mirage_oci::MAX_CMDLINE),
        ));
    }

    let fifo = dir.join(FIFO);
    let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
        .map_err(|_| Failure::new("the state directory's path holds a NUL", "give another --root"))?;
    // SAFETY: mkfifo reads a NUL-terminated path.
    if unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) } != 0 {
        return Err(Failure::new(
            format!("cannot make {}: {}", fifo.display(), std::io::Error::last_os_error()),
            "give --root a directory on a file system with FIFOs",
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(format!("cannot find mirage-runc's own binary: {e}"), "check /proc"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(INIT).arg(&fifo).arg(&tender).args(&tender_args).arg(&image);
    if !cmdline.is_empty() {
        // The tender joins the words after the image with spaces; one word
        // carries the command line through unchanged.
        cmd.arg(&cmdline);
    }
    cmd.env_clear();
    let terminal = match &console {
        Some(socket) => {
            let (master, slave) = open_pty()?;
            send_console(socket, &master)?;
            let dup = |f: &OwnedFd| {
                f.try_clone().map_err(|e| Failure::new(format!("cannot duplicate the terminal: {e}"), ""))
            };
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(dup(&slave)?);
            Some(slave)
        }
        None => None,
    };
    let ns_fd = made.netns.as_ref().map(|f| f.as_raw_fd());
    let with_terminal = terminal.is_some();
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls (setns, setsid, ioctl) on
    // descriptors the parent keeps open across the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = ns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if with_terminal && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        Failure::new(format!("cannot start the container's process: {e}"), "check the network namespace")
    })?;
    drop(terminal);
    let pid = child.id() as i32;
    made.child = Some(child);
    let started = start_time(pid).ok_or_else(|| {
        Failure::new("the container's process ended at once", "run mirage-runc create by hand to see why")
    })?;
    if let Some(rel) = &cgroup_dir {
        cgroup::enter(rel, pid, spec.memory_limit.filter(|&l| l > 0), &mut made.cgroups)?;
    }
    let state = serde_json::json!({
        "id": id,
        "pid": pid,
        "start_time": started,
        "bundle": bundle,
        "rootfs": spec.rootfs,
        "created": crate::rfc3339(std::time::SystemTime::now()),
        "annotations": spec.annotations,
        "netns": made.netns.as_ref().and(spec.netns.clone().flatten()),
        "netns_created": made.netns_created,
        "taps": made.taps,
        "uplink": made.uplink.as_ref().map(Uplink::to_json),
        "tender": tender,
        "cgroups": made.cgroups,
        "args": cmd.get_args().skip(2).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>(),
    });
    write_atomic(&dir.join(STATE), state.to_string().as_bytes())?;
    if let Some(p) = &options.pid_file {
        write_atomic(p, pid.to_string().as_bytes())?;
    }
    // The process is the shim's now (it reaps it as the subreaper once
    // this one exits); what was made stays for delete.
    if let Some(c) = made.child.take() {
        std::mem::forget(c);
    }
    made.taps.clear();
    made.cgroups.clear();
    made.netns_created = None;
    made.dir = None;
    Ok(())
}

/// Writes `data` to `path` by a rename, so no reader sees half of it.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check that the directory is writable"))
}

/// The container's process: waits until `start` opens the FIFO, then
/// becomes the tender. Never returns.
pub fn init(argv: &[OsString]) -> ! {
    use std::io::Write;
    let fail = |msg: String| -> ! {
        eprintln!("mirage-runc: {msg}");
        std::process::exit(127);
    };
    let [fifo, tender, args @ ..] = argv else { fail("init: wrong arguments".into()) };
    // Blocks until start opens the other end.
    match std::fs::OpenOptions::new().write(true).open(fifo) {
        Ok(mut f) => {
            let _ = f.write_all(b"0");
        }
        Err(e) => fail(format!("init: {}: {e}", Path::new(fifo).display())),
    }
    let e = Command::new(tender).args(args).exec();
    fail(format!("cannot run {}: {e}", Path::new(tender).display()))
}

/// The state of container `id`, if it is a unikernel container.
fn load(global: &Global, id: &str) -> Result<Option<serde_json::Value>, Failure> {
    let path = dir(global, id).join(STATE);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "delete the container with --force")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::new(format!("{}: {e}", path.display()), "check --root")),
    }
}

/// The state, or runc's answer for a container that is not ours.
fn ours(global: &Global, id: &str) -> Result<serde_json::Value, Failure> {
    if let Some(s) = load(global, id)? {
        return Ok(s);
    }
    // runc keeps its containers in the same root.
    if dir(global, id).join("state.json").exists() {
        delegate(global, &format!("container {id}"))?;
    }
    // containerd reads "does not exist" as "already gone".
    Err(Failure::new(format!("container {id} does not exist"), ""))
}

fn alive(state: &serde_json::Value) -> Option<i32> {
    let pid = i32::try_from(state["pid"].as_i64()?).ok()?;
    (start_time(pid)? == state["start_time"].as_u64()?).then_some(pid)
}

fn status(global: &Global, id: &str, state: &serde_json::Value) -> &'static str {
    match alive(state) {
        None => "stopped",
        Some(_) if dir(global, id).join(FIFO).exists() => "created",
        Some(_) => "running",
    }
}

pub fn start(global: &Global, id: &str) -> Result<(), Failure> {
    let state = ours(global, id)?;
    let fifo = dir(global, id).join(FIFO);
    if alive(&state).is_none() {
        return Err(Failure::new(format!("container {id} has stopped"), "delete it"));
    }
    if !fifo.exists() {
        return Err(Failure::new(format!("container {id} is running already"), ""));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .map_err(|e| Failure::new(format!("{}: {e}", fifo.display()), "delete the container with --force"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pfd = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one descriptor this function owns.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            let mut byte = [0u8; 1];
            use std::io::Read;
            let _ = (&f).read(&mut byte);
            break;
        }
        if alive(&state).is_none() {
            let _ = std::fs::remove_file(&fifo);
            return Err(Failure::new(format!("container {id}'s process ended before it started"), "delete it"));
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                format!("container {id}'s process did not answer start within 10 s"),
                "delete it with --force",
            ));
        }
    }
    let _ = std::fs::remove_file(&fifo);
    Ok(())
}

pub fn state(global: &Global, id: &str) -> Result<(), Failure> {
    let s = ours(global, id)?;
    let out = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "pid": if alive(&s).is_some() { s["pid"].clone() } else { serde_json::json!(0) },
        "status": status(global, id, &s),
        "bundle": s["bundle"],
        "rootfs": s["rootfs"],
        "created": s["created"],
        "annotations": s["annotations"],
        "owner": "",
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// A signal by number or name (`9`, `KILL`, `SIGKILL`).
fn signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    let table = [
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("WINCH", libc::SIGWINCH),
    ];
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

pub fn kill(global: &Global, id: &str, sig: &str) -> Result<(), Failure> {
    let state = ours(global, id)?;
    let signo =
        signal(sig).ok_or_else(|| Failure::new(format!("unknown signal {sig:?}"), "give a number or a name (TERM)"))?;
    // containerd reads "container not running" as "already finished".
    let pid = alive(&state).ok_or_else(|| Failure::new("container not running", ""))?;
    // SAFETY: kill(2) on the container's process, checked above to be the
    // one create started (same start time).
    if unsafe { libc::kill(pid, signo) } != 0 {
        return Err(Failure::new(format!("kill {pid}: {}", std::io::Error::last_os_error()), ""));
    }
    Ok(())
}

pub fn delete(global: &Global, id: &str, force: bool) -> Result<(), Failure> {
    let state = ours(global, id)?;
    if let Some(pid) = alive(&state) {
        if !force {
            return Err(Failure::new(
                format!("cannot delete container {id} that is not stopped: {}", status(global, id, &state)),
                "kill it first, or delete --force",
            ));
        }
        // SAFETY: as in kill: the container's own process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(&state).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let cgroups: Vec<PathBuf> =
        state["cgroups"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(PathBuf::from)).collect();
    cgroup::remove(&cgroups);
    let taps: Vec<String> =
        state["taps"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect();
    let uplink = Uplink::from_json(&state["uplink"]);
    let created = state["netns_created"].as_str();
    let ns_path =
        state["netns"].as_str().map(PathBuf::from).or(created.map(|n| PathBuf::from(format!("/var/run/netns/{n}"))));
    if let Some(path) = ns_path
        && let Ok(ns) = File::open(&path)
    {
        net::teardown(Some(&ns), &taps, uplink.as_ref());
    }
    if let Some(name) = created {
        net::del_netns(name);
    }
    std::fs::remove_dir_all(dir(global, id))
        .map_err(|e| Failure::new(format!("removing {}: {e}", dir(global, id).display()), "check --root"))?;
    Ok(())
}

pub fn ps(global: &Global, id: &str, format: &str) -> Result<(), Failure> {
    let state = ours(global, id)?;
    let pids: Vec<i32> = alive(&state).into_iter().collect();
    if format == "json" {
        println!("{}", serde_json::json!(pids));
    } else {
        println!("PID");
        for p in pids {
            println!("{p}");
        }
    }
    Ok(())
}

/// What this runtime supports, in the OCI features document's shape.
pub fn features() {
    let f = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": [],
        "mountOptions": ["bind", "rbind"],
        "linux": {
            "namespaces": ["network"],
            "capabilities": [],
            "cgroup": { "v1": false, "v2": false, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "org.mirage-rs.runtime": "mirage-runc",
            "org.mirage-rs.runtime.tenders": "solo5-hvt,solo5-spt",
        },
    });
    println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(signal("9"), Some(9));
        assert_eq!(signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal("KILL"), Some(libc::SIGKILL));
        assert_eq!(signal("0"), None);
        assert_eq!(signal("BOGUS"), None);
    }

    #[test]
    fn ids_follow_runcs_rule() {
        assert!(check_id("static-website_1.x").is_ok());
        for bad in ["", "..", "a/b", "a b", &"x".repeat(201)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn our_own_process_has_a_start_time() {
        assert!(start_time(std::process::id() as i32).is_some());
        assert_eq!(start_time(i32::MAX), None);
    }

    fn spec(root: &Path, binds: Vec<(String, PathBuf, bool)>) -> Spec {
        Spec {
            rootfs: root.to_path_buf(),
            annotations: BTreeMap::new(),
            args: vec![],
            terminal: false,
            netns: None,
            memory_limit: None,
            binds,
            root_readonly: false,
            cgroups_path: None,
        }
    }

    #[test]
    fn paths_resolve_in_the_rootfs_or_a_mount_and_never_out() {
        let base = std::env::temp_dir().join(format!("mirage-runc-resolve-{}", std::process::id()));
        let root = base.join("rootfs");
        let data = base.join("data");
        std::fs::create_dir_all(root.join("unikernel")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(root.join("unikernel/web.hvt"), b"x").unwrap();
        std::fs::write(data.join("disk.img"), b"y").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("unikernel/evil")).unwrap();
        std::os::unix::fs::symlink("web.hvt", root.join("unikernel/alias")).unwrap();
        let s = spec(&root, vec![("/data".into(), data.clone(), false)]);
        assert_eq!(
            resolve(&s, "unikernel", "/unikernel/web.hvt").unwrap(),
            root.join("unikernel/web.hvt").canonicalize().unwrap()
        );
        assert!(resolve(&s, "unikernel", "/unikernel/alias").is_ok());
        assert!(resolve(&s, "disk", "/data/disk.img").unwrap().starts_with(data.canonicalize().unwrap()));
        let e = resolve(&s, "unikernel", "/unikernel/evil").unwrap_err();
        assert!(e.cause.contains("leads out of the container"), "{e:?}");
        let e = resolve(&s, "unikernel", "/unikernel/none").unwrap_err();
        assert!(e.cause.contains("is not in the container"), "{e:?}");
        assert!(resolve(&s, "unikernel", "/unikernel").unwrap_err().cause.contains("not a regular file"));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn disks_are_opened_once_and_never_on_a_read_only_mount() {
        let base = std::env::temp_dir().join(format!("mirage-runc-disks-{}", std::process::id()));
        let (root, data, ro) = (base.join("rootfs"), base.join("data"), base.join("ro"));
        for d in [&root, &data, &ro] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(data.join("disk.img"), b"y").unwrap();
        std::fs::write(ro.join("disk.img"), b"z").unwrap();
        let mut s = spec(&root, vec![("/data".into(), data.clone(), false), ("/ro".into(), ro.clone(), true)]);
        let f = open_disk(&s, "storage", "/data/disk.img").unwrap();
        assert_eq!(std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap(), b"y");
        // The path made a link to a host file afterwards: the descriptor
        // still names the file that was checked.
        std::fs::rename(data.join("disk.img"), data.join("moved.img")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", data.join("disk.img")).unwrap();
        assert_eq!(std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap(), b"y");
        let e = open_disk(&s, "storage", "/ro/disk.img").unwrap_err();
        assert!(e.cause.contains("read-only mount"), "{e:?}");
        std::fs::write(root.join("disk.img"), b"r").unwrap();
        assert!(open_disk(&s, "storage", "/disk.img").is_ok());
        s.root_readonly = true;
        assert!(open_disk(&s, "storage", "/disk.img").unwrap_err().cause.contains("read-only mount"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
