//! Unikernels as containers: `mirage package --oci` images imported into a
//! real containerd (Debian's, started by each test with its own root,
//! state and socket, stopped afterwards) and run by its runc shim with
//! `mirage-runc` as the runtime, in network namespaces the tests make:
//! the static website answering at the container's address from another
//! namespace, kill, delete and remove leaving no process, tap device,
//! address change or mount behind, a crash reported with the tender's own
//! exit status, malformed images and bundles refused with their reason and
//! nothing left, ordinary bundles handed to runc, fifty containers at
//! once, and containers grouped under one shim.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mirage_oci::image::Entry;
use mirage_oci::{Target, Unikernel};
use testkit::harness::{Case, Needs, case};
use testkit::oci::{Containerd, GROUP_ANNOTATION, Link, Runtime, SEQ, index_html, ip, runc, website};
use testkit::{Run, Scratch, TestResult, run_with};

const PROGRAMS: &[(&str, &str)] =
    &[("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"), ("curl", "curl"), ("tc", "iproute2")];

/// An image holding test guest `guest` with `cmdline`, packed by the
/// library as the tool packs a unikernel; `adjust` may spoil the
/// description.
fn guest_image(
    target: &str,
    guest: &str,
    cmdline: &str,
    scratch: &Scratch,
    adjust: impl FnOnce(&mut Unikernel),
) -> Result<(String, PathBuf), String> {
    guest_image_with(target, guest, cmdline, scratch, adjust, Vec::new())
}

/// As [`guest_image`], with more files in the image.
fn guest_image_with(
    target: &str,
    guest: &str,
    cmdline: &str,
    scratch: &Scratch,
    adjust: impl FnOnce(&mut Unikernel),
    more: Vec<Entry>,
) -> Result<(String, PathBuf), String> {
    let binary = format!("/unikernel/{guest}.{target}");
    let tender = format!("/unikernel/solo5-{target}");
    let mut u = Unikernel {
        target: if target == "hvt" { Target::Hvt } else { Target::Spt },
        binary: binary.clone(),
        tender: tender.clone(),
        cmdline: cmdline.into(),
        mem_mib: None,
        nets: vec![],
        blocks: vec![],
        version: "test".into(),
    };
    adjust(&mut u);
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut files = vec![
        Entry { path: binary, mode: 0o644, data: read(&testkit::guest(target, guest)?)? },
        Entry { path: tender, mode: 0o755, data: read(&testkit::tender(target))? },
    ];
    files.extend(more);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let reference = format!("localhost/mirage/{guest}-{n}:{target}");
    let path = scratch.0.join(format!("{guest}-{n}.oci.tar"));
    let mut data = Vec::new();
    mirage_oci::image::write(&reference, &u, &files, &mut data).map_err(|e| e.to_string())?;
    std::fs::write(&path, data).map_err(|e| e.to_string())?;
    Ok((reference, path))
}

/// The parent of process `pid`.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// The static website as a container: served at the container's address
/// from another namespace, console in the task's log, memory limit as
/// --mem; then kill, delete and remove leave the namespace as it was and
/// nothing of the container behind.
fn serves_and_leaves_nothing(target: &'static str, rt: Runtime) -> TestResult {
    let (image, tarball) = website(target)?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let link = Link::new(SEQ.fetch_add(1, Ordering::Relaxed) % 200 + 1)?;
    let before = link.snapshot()?;
    let scratch = Scratch::new("oci-log");
    let log = scratch.0.join("console.log");
    let id = format!("web-{target}");
    let netns = link.netns();
    let log_uri = format!("file://{}", log.display());
    let options = ["-d", "--with-ns", &netns, "--memory-limit", "67108864", "--log-uri", &log_uri];
    ctd.run_on(rt, &options, &image, &id, &[])?.expect_status(0)?;
    link.wait_served(&index_html()?)?;
    let (pid, status) = ctd.task(&id)?.ok_or("the task is not listed")?;
    if status != "RUNNING" {
        return Err(format!("task {id} is {status}"));
    }
    // The runtime's shim serves it: the tender is its child.
    let shims = ctd.shims_of(rt);
    if shims.len() != 1 || parent(pid) != Some(shims[0]) {
        return Err(format!("the tender {pid} is a child of {:?}, not of the {} {shims:?}", parent(pid), rt.shim()));
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| e.to_string())?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ");
    if !exe.ends_with(format!("solo5-{target}")) || !cmdline.contains("--mem=62 ") {
        return Err(format!("the task's process is {} {cmdline}", exe.display()));
    }
    if !cmdline.contains(&format!("--ipv4={}/24 --ipv4-gateway=", link.address)) {
        return Err(format!("the unikernel was not given the container's address: {cmdline}"));
    }
    // A second unikernel in the same namespace is refused, and the first
    // goes on serving.
    let second = format!("{id}-second");
    let r = ctd.run_on(rt, &["--rm", "--with-ns", &netns], &image, &second, &[])?;
    if r.status() == 0 || !r.stderr.contains("another unikernel container uses it") {
        return Err(format!("a second unikernel in the namespace was not refused\n{}", r.dump()));
    }
    link.wait_served(&index_html()?)?;
    let left = ctd.leftovers(&second);
    if !left.is_empty() {
        return Err(format!("the refused container left: {}", left.join("; ")));
    }
    // The tender is in the container's cgroup, under its memory limit.
    let cgroups = ctd.cgroups(&id);
    let procs_in = |d: &PathBuf| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
    if cgroups.is_empty() || !cgroups.iter().all(|d| procs_in(d).lines().any(|l| l == pid.to_string())) {
        return Err(format!("the tender {pid} is not in the container's cgroups {cgroups:?}"));
    }
    let limit = |d: &PathBuf| {
        ["memory.limit_in_bytes", "memory.max"].iter().find_map(|f| std::fs::read_to_string(d.join(f)).ok())
    };
    if !cgroups.iter().filter_map(limit).any(|l| l.trim() == "67108864") {
        return Err(format!("no cgroup of {cgroups:?} limits the memory to 64 MiB"));
    }
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    if !console.contains("Solo5: Bindings version") {
        return Err(format!("the console is not in the task's log: {console:?}"));
    }
    ctd.ctr(&["task", "kill", &id])?.expect_status(0)?;
    ctd.wait_stopped(&id)?;
    ctd.ctr(&["task", "delete", &id])?.expect_status(0)?;
    ctd.ctr(&["container", "rm", &id])?.expect_status(0)?;
    if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe) {
        return Err(format!("the tender {pid} is still running"));
    }
    let after = link.snapshot()?;
    if after != before {
        return Err(format!("the namespace changed:\n--- before\n{before}--- after\n{after}"));
    }
    let left = ctd.leftovers(&id);
    if !left.is_empty() {
        return Err(format!("left behind: {}", left.join("; ")));
    }
    // The address is the container's again: nothing answers it.
    if link.get()?.status() == 0 {
        return Err("something still answers at the container's address".into());
    }
    Ok(())
}

/// A container given no network namespace gets one of its own, with an
/// unconnected tap device (as a runc container there gets only its
/// loopback), removed with the container.
fn own_namespace(target: &'static str) -> TestResult {
    let (image, tarball) = website(target)?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let id = format!("alone-{target}");
    ctd.run(&["-d"], &image, &id, &[])?.expect_status(0)?;
    let ns = format!("mirage-runc-{id}");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns, "ip", "-o", "link"]);
    let links = run_with(c, Duration::from_secs(10))?;
    if !links.stdout.contains("tap0_mirage") {
        return Err(format!("no namespace {ns} with the tap device\n{}", links.dump()));
    }
    let (_, status) = ctd.task(&id)?.ok_or("the task is not listed")?;
    if status != "RUNNING" {
        return Err(format!("task {id} is {status}"));
    }
    ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id])?.expect_status(0)?;
    ctd.wait_stopped(&id)?;
    ctd.ctr(&["task", "delete", &id])?.expect_status(0)?;
    ctd.ctr(&["container", "rm", &id])?.expect_status(0)?;
    if Path::new("/var/run/netns").join(&ns).exists() {
        return Err(format!("the namespace {ns} outlived its container"));
    }
    let left = ctd.leftovers(&id);
    if !left.is_empty() {
        return Err(format!("left behind: {}", left.join("; ")));
    }
    Ok(())
}

/// A unikernel that faults is reported with the tender's own status.
/// A block device on a disk image in the image: the runtime opens it once
/// and hands the tender its descriptor, and the guest writes and reads it
/// back through that.
fn block_device_from_the_image(target: &'static str, rt: Runtime) -> TestResult {
    let scratch = Scratch::new("oci-block");
    let disk = Entry { path: "/unikernel/disk.img".into(), mode: 0o644, data: vec![0; 1 << 20] };
    let (image, tarball) = guest_image_with(
        target,
        "blk",
        "",
        &scratch,
        |u| u.blocks = vec![("storage".into(), "/unikernel/disk.img".into())],
        vec![disk],
    )?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let r = ctd.run_on(rt, &["--rm"], &image, &format!("block-{target}"), &[])?;
    r.expect_status(0)?;
    r.expect_stdout("verified 205 blocks")?;
    r.expect_stdout("SUCCESS")
}

fn crash_is_reported(target: &'static str, rt: Runtime) -> TestResult {
    let scratch = Scratch::new("oci-crash");
    let direct = testkit::boot(target, &[], "fault", &["unmapped"])?;
    if direct.status() == 0 {
        return Err(format!("the fault guest did not fail\n{}", direct.dump()));
    }
    let (image, tarball) = guest_image(target, "fault", "unmapped", &scratch, |_| {})?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let id = format!("crash-{target}");
    let mut events = ctd.events()?;
    let r = ctd.run_on(rt, &["--rm"], &image, &id, &[])?;
    if r.status() != direct.status() {
        return Err(format!("ctr reported {} where the tender gives {}\n{}", r.status(), direct.status(), r.dump()));
    }
    r.expect_stdout("fault: unmapped")?;
    // The task's life as containerd published it, the exit with the
    // tender's status.
    let _ = events.kill();
    let mut seen = String::new();
    if let Some(mut out) = events.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut seen);
    }
    let _ = events.wait();
    // In the order of the task's life, though the unikernel fails at once.
    let mut last = None;
    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"] {
        let Some(at) = seen.lines().position(|l| l.contains(topic) && l.contains(&format!("\"{id}\""))) else {
            return Err(format!("no {topic} event for {id} was published:\n{seen}"));
        };
        if last.is_some_and(|l| l > at) {
            return Err(format!("the {topic} event for {id} came out of order:\n{seen}"));
        }
        last = Some(at);
    }
    let status = format!("\"exit_status\":{}", direct.status());
    if !seen.lines().any(|l| l.contains("/tasks/exit") && l.contains(&status)) {
        return Err(format!("the /tasks/exit event does not carry {status}:\n{seen}"));
    }
    // An exit status of the unikernel's own choosing, from the image's
    // command line and the container's arguments after it.
    let (image, tarball) = guest_image(target, "fault", "exit", &scratch, |_| {})?;
    ctd.import(&tarball)?;
    ctd.run_on(rt, &["--rm"], &image, &format!("{id}-42"), &["42"])?.expect_status(42)?;
    let left = ctd.leftovers(&id);
    if !left.is_empty() {
        return Err(format!("left behind: {}", left.join("; ")));
    }
    Ok(())
}

/// Malformed images are refused through containerd with the reason, and
/// leave nothing: no task, no runtime state, no tap, the namespace as it
/// was.
fn malformed_images_are_refused(target: &'static str, rt: Runtime) -> TestResult {
    let scratch = Scratch::new("oci-bad");
    let ctd = Containerd::start()?;
    let link = Link::new(SEQ.fetch_add(1, Ordering::Relaxed) % 200 + 1)?;
    let before = link.snapshot()?;
    let netns = link.netns();
    type Spoil = Box<dyn FnOnce(&mut Unikernel)>;
    let cases: Vec<(&str, Spoil, &[&str], &str)> = vec![
        (
            "missing",
            Box::new(|u| u.binary = "/unikernel/none.hvt".into()),
            &[],
            "the unikernel /unikernel/none.hvt is not in the container",
        ),
        ("mem", Box::new(|u| u.mem_mib = Some(1)), &[], "is not a memory size in MiB"),
        ("net", Box::new(|u| u.nets = vec!["eth0/x".into()]), &[], "names the interface \"eth0/x\""),
        ("limit", Box::new(|u| u.nets = vec!["service".into()]), &["--memory-limit", "1048576"], "under the 2 MiB"),
        ("disk", Box::new(|u| u.blocks = vec![("storage".into(), "/unikernel".into())]), &[], "is not a regular file"),
    ];
    for (name, spoil, options, want) in cases {
        let (image, tarball) = guest_image(target, "hello", "", &scratch, spoil)?;
        ctd.import(&tarball)?;
        let id = format!("bad-{name}");
        let mut o = vec!["--rm", "--with-ns", &netns];
        o.extend_from_slice(options);
        let r = ctd.run_on(rt, &o, &image, &id, &[])?;
        if r.status() == 0 || !r.stderr.contains(want) {
            return Err(format!("{name}: ctr run should fail saying {want:?}\n{}", r.dump()));
        }
        if ctd.task(&id)?.is_some() {
            return Err(format!("{name}: a task is left"));
        }
        let left = ctd.leftovers(&id);
        if !left.is_empty() {
            return Err(format!("{name}: left behind: {}", left.join("; ")));
        }
        let after = link.snapshot()?;
        if after != before {
            return Err(format!("{name}: the namespace changed:\n--- before\n{before}--- after\n{after}"));
        }
    }
    Ok(())
}

/// `mirage-runc create` on bundles made by hand: a malformed config.json,
/// bad annotations and a path out of the root file system are refused
/// with a JSON error line in the log (what the shim shows) and no state;
/// a bundle that is no unikernel goes to runc.
fn malformed_bundles_are_refused() -> TestResult {
    let scratch = Scratch::new("oci-bundle");
    let bundle = scratch.0.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/unikernel")).map_err(|e| e.to_string())?;
    std::fs::write(bundle.join("rootfs/unikernel/k.hvt"), b"not an image").map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("/etc/passwd", bundle.join("rootfs/unikernel/out.hvt")).map_err(|e| e.to_string())?;
    let state = scratch.0.join("state");
    let annotated = |extra: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"args":["x"]}},
               "annotations":{{"com.urunc.unikernel.unikernelType":"mirage","com.urunc.unikernel.hypervisor":"spt",
               "com.urunc.unikernel.binary":"/unikernel/k.hvt","org.mirage-rs.unikernel.tender":"/unikernel/solo5-spt"{extra}}}}}"#
        )
    };
    let cases = [
        ("garbage", "{ not json".to_string(), "config.json: "),
        ("noroot", r#"{"ociVersion":"1.0.2"}"#.to_string(), "config.json: no root.path"),
        ("qemu", annotated(r#","com.urunc.unikernel.hypervisor":"qemu""#), "mirage-runc runs hvt and spt"),
        ("unikraft", annotated(r#","com.urunc.unikernel.unikernelType":"unikraft""#), "not a mirage-rs unikernel"),
        ("dotdot", annotated(r#","com.urunc.unikernel.binary":"/../../etc/passwd""#), "not an absolute path inside"),
        ("link", annotated(r#","com.urunc.unikernel.binary":"/unikernel/out.hvt""#), "leads out of the container"),
        ("blocks", annotated(r#","org.mirage-rs.unikernel.block":"storage""#), "not NAME=PATH"),
        ("nofile", annotated(r#","com.urunc.unikernel.binary":"/unikernel/none""#), "is not in the container"),
    ];
    for (name, config, want) in cases {
        std::fs::write(bundle.join("config.json"), config).map_err(|e| e.to_string())?;
        let log = scratch.0.join(format!("{name}.log"));
        let mut c = Command::new(runc()?);
        c.arg("--root").arg(&state).arg("--log").arg(&log).args(["--log-format", "json", "create", "--bundle"]);
        c.arg(&bundle).arg(name);
        let r = run_with(c, Duration::from_secs(30))?;
        let line = std::fs::read_to_string(&log).unwrap_or_default();
        let entry: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        if r.status() != 1 || entry["level"] != "error" || !entry["msg"].as_str().unwrap_or("").contains(want) {
            return Err(format!(
                "{name}: want status 1 and an error log line with {want:?}; log {line:?}\n{}",
                r.dump()
            ));
        }
        if state.join(name).exists() {
            return Err(format!("{name}: state left in {}", state.join(name).display()));
        }
    }
    // No description at all: runc's, whose own error comes back.
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"terminal":true,"args":["/bin/sh"],"cwd":"/"}}"#,
    )
    .map_err(|e| e.to_string())?;
    let log = scratch.0.join("runc.log");
    let mut c = Command::new(runc()?);
    c.arg("--root").arg(&state).arg("--log").arg(&log).args(["--log-format", "json", "create", "--bundle"]);
    c.arg(&bundle).arg("plain");
    let r = run_with(c, Duration::from_secs(30))?;
    let line = std::fs::read_to_string(&log).unwrap_or_default();
    if r.status() == 0 || !line.contains("runc create failed") {
        return Err(format!("an ordinary bundle did not reach runc: log {line:?}\n{}", r.dump()));
    }
    Ok(())
}

/// Fifty static websites started at once, each in its own namespace
/// behind one bridge, all serving; then all deleted, nothing left.
fn fifty_at_once(target: &'static str, rt: Runtime) -> TestResult {
    const N: usize = 50;
    let (image, tarball) = website(target)?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let tag = format!("{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let hub = format!("moh-{tag}");
    struct Namespaces(Vec<String>);
    impl Drop for Namespaces {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = ip(&["netns", "del", n]);
            }
        }
    }
    let mut spaces = Namespaces(vec![hub.clone()]);
    ip(&["netns", "add", &hub])?;
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &hub, "addr", "add", "10.78.0.1/16", "dev", "br0"])?;
    ip(&["-n", &hub, "link", "set", "br0", "up"])?;
    for i in 0..N {
        let ns = format!("moc-{tag}-{i}");
        ip(&["netns", "add", &ns])?;
        spaces.0.push(ns.clone());
        let port = format!("p{i}");
        ip(&["link", "add", "v0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("10.78.1.{}/16", i + 10), "dev", "v0"])?;
        ip(&["-n", &ns, "link", "set", "v0", "up"])?;
    }
    let started = Instant::now();
    let results: Vec<Result<Run, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (ctd, image, tag) = (&ctd, &image, &tag);
                s.spawn(move || {
                    let netns = format!("network:/var/run/netns/moc-{tag}-{i}");
                    ctd.run_on(
                        rt,
                        &["-d", "--with-ns", &netns, "--memory-limit", "33554432"],
                        image,
                        &format!("w{i}"),
                        &[],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into()))).collect()
    });
    for (i, r) in results.into_iter().enumerate() {
        r?.expect_status(0).map_err(|e| format!("container w{i}: {e}"))?;
    }
    let want = index_html()?;
    for i in 0..N {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &hub, "curl", "-s", "-m", "2"]).arg(format!("http://10.78.1.{}/", i + 10));
            let r = run_with(c, Duration::from_secs(10))?;
            if r.status() == 0 && r.stdout == want {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("container w{i} does not serve\n{}", r.dump()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("oci: {N} {target} containers started and all serving in {:?}", started.elapsed());
    for i in 0..N {
        let id = format!("w{i}");
        ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id])?.expect_status(0)?;
    }
    for i in 0..N {
        let id = format!("w{i}");
        ctd.wait_stopped(&id)?;
        ctd.ctr(&["task", "delete", &id])?.expect_status(0)?;
        ctd.ctr(&["container", "rm", &id])?.expect_status(0)?;
        let left = ctd.leftovers(&id);
        if !left.is_empty() {
            return Err(format!("{id}: left behind: {}", left.join("; ")));
        }
    }
    for ns in &spaces.0[1..] {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "ip", "-o", "link"]);
        let links = run_with(c, Duration::from_secs(10))?.stdout;
        if links.contains("_mirage") {
            return Err(format!("{ns} keeps a tap device: {links}"));
        }
    }
    Ok(())
}

/// Three containers started with the same shim group annotation (for
/// the runc shim; ours groups a namespace's containers unasked): one shim
/// serves them all (where each runc shim would have its own), each
/// answers at its own address, killing one leaves the others serving, and
/// once all are deleted neither the shim nor anything of the containers
/// is left.
fn grouped_under_one_shim(target: &'static str, rt: Runtime) -> TestResult {
    const N: usize = 3;
    let (image, tarball) = website(target)?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let links =
        (0..N).map(|_| Link::new(SEQ.fetch_add(1, Ordering::Relaxed) % 200 + 1)).collect::<Result<Vec<_>, String>>()?;
    let before = links.iter().map(Link::snapshot).collect::<Result<Vec<_>, String>>()?;
    let group = format!("{GROUP_ANNOTATION}=web-{target}");
    let ids: Vec<String> = (0..N).map(|i| format!("grouped-{target}-{i}")).collect();
    for (id, link) in ids.iter().zip(&links) {
        let netns = link.netns();
        let mut options = vec!["-d", "--with-ns", &netns, "--memory-limit", "33554432"];
        // Our shim serves a namespace from one process without being asked.
        if rt == Runtime::RuncShim {
            options.extend_from_slice(&["--annotation", &group]);
        }
        ctd.run_on(rt, &options, &image, id, &[])?.expect_status(0)?;
    }
    let want = index_html()?;
    for link in &links {
        link.wait_served(&want)?;
    }
    let shims = ctd.shims_of(rt);
    if shims.len() != 1 {
        return Err(format!("{N} grouped containers have {} shims: {shims:?}", shims.len()));
    }
    let tenders: Vec<i32> =
        ids.iter().map(|id| Ok(ctd.task(id)?.ok_or("a task is not listed")?.0)).collect::<Result<_, String>>()?;
    for &pid in &tenders {
        let ppid = parent(pid);
        if ppid != Some(shims[0]) {
            return Err(format!("the tender {pid} is a child of {ppid:?}, not of the group's shim {}", shims[0]));
        }
    }
    // The first goes; the others serve on.
    ctd.ctr(&["task", "kill", &ids[0]])?.expect_status(0)?;
    ctd.wait_stopped(&ids[0])?;
    ctd.ctr(&["task", "delete", &ids[0]])?.expect_status(0)?;
    ctd.ctr(&["container", "rm", &ids[0]])?.expect_status(0)?;
    for link in &links[1..] {
        link.wait_served(&want)?;
    }
    if ctd.shims_of(rt) != shims {
        return Err(format!(
            "the group's shim {shims:?} did not outlive one of its containers: {:?}",
            ctd.shims_of(rt)
        ));
    }
    for id in &ids[1..] {
        ctd.ctr(&["task", "kill", "-s", "SIGKILL", id])?.expect_status(0)?;
        ctd.wait_stopped(id)?;
        ctd.ctr(&["task", "delete", id])?.expect_status(0)?;
        ctd.ctr(&["container", "rm", id])?.expect_status(0)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctd.shims_of(rt).is_empty() {
        if Instant::now() > deadline {
            return Err(format!("the group's shim outlived its containers: {:?}", ctd.shims_of(rt)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, (id, link)) in ids.iter().zip(&links).enumerate() {
        let left = ctd.leftovers(id);
        if !left.is_empty() {
            return Err(format!("{id}: left behind: {}", left.join("; ")));
        }
        let after = link.snapshot()?;
        if after != before[i] {
            return Err(format!("{id}'s namespace changed:\n--- before\n{}--- after\n{after}", before[i]));
        }
    }
    for pid in tenders {
        if std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with(format!("solo5-{target}")))
        {
            return Err(format!("the tender {pid} is still running"));
        }
    }
    Ok(())
}

/// Our shim's socket under hostile and broken callers, a container
/// serving throughout: an oversized message drops that connection alone;
/// malformed, unknown and wrong calls are answered with their error on a
/// connection that goes on working; a hundred idle connections and one
/// that stops mid-message hold nothing up; an output it cannot give is
/// refused through containerd, leaving nothing.
fn mirage_shim_survives_hostile_callers() -> TestResult {
    use mirage_oci::proto::{Reader, Writer};
    use mirage_oci::ttrpc::{self, code};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let rt = Runtime::MirageShim;
    let (image, tarball) = website("spt")?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let link = Link::new(SEQ.fetch_add(1, Ordering::Relaxed) % 200 + 1)?;
    let id = "hostile-callers";
    let netns = link.netns();
    ctd.run_on(rt, &["-d", "--with-ns", &netns], &image, id, &[])?.expect_status(0)?;
    let want = index_html()?;
    link.wait_served(&want)?;
    let address =
        std::fs::read_to_string(ctd.bundle(id).join("address")).map_err(|e| format!("the address file: {e}"))?;
    let path = address.trim().strip_prefix("unix://").ok_or(format!("address {address:?}"))?.to_string();
    let connect = || {
        let c = UnixStream::connect(&path).map_err(|e| format!("connecting to {path}: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        Ok::<_, String>(c)
    };
    let call = |c: &mut UnixStream, service: &str, method: &str, payload: Vec<u8>| {
        ttrpc::call(c, service, method, payload).map_err(|e| format!("{service}/{method}: {e}"))
    };
    let task = "containerd.task.v2.Task";
    let state_of = |c: &mut UnixStream| -> Result<u64, String> {
        let mut req = Writer::new();
        req.string(1, id);
        let reply = call(c, task, "State", req.into_bytes())?.map_err(|e| format!("State: {e:?}"))?;
        let mut r = Reader::new(&reply);
        while let Some((f, v)) = r.next_field().map_err(|e| e.to_string())? {
            if f == 4 {
                return v.uint().map_err(|e| e.to_string());
            }
        }
        Err("State gave no status".into())
    };
    // Idle connections, and one stopped halfway through a header.
    let idle = (0..100).map(|_| connect()).collect::<Result<Vec<_>, String>>()?;
    let mut half = connect()?;
    half.write_all(&[0, 0, 0]).map_err(|e| e.to_string())?;
    // A message over the limit: that connection is closed.
    let mut big = connect()?;
    big.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1, ttrpc::REQUEST, 0]).map_err(|e| e.to_string())?;
    if ttrpc::read_frame(&mut big).map_err(|e| format!("after an oversized message: {e}"))?.is_some() {
        return Err("an oversized message was answered, not dropped".into());
    }
    // Errors answered, one connection throughout.
    let mut c = connect()?;
    let expect = |got: ttrpc::Reply, want: i32, what: &str| match got {
        Err((code, _)) if code == want => Ok(()),
        other => Err(format!("{what}: {other:?}, expected code {want}")),
    };
    ttrpc::write_frame(&mut c, 1, ttrpc::REQUEST, b"\xff\xff").map_err(|e| e.to_string())?;
    let f = ttrpc::read_frame(&mut c).map_err(|e| e.to_string())?.ok_or("no answer to a malformed request")?;
    expect(
        ttrpc::decode_response(&f.payload).map_err(|e| e.to_string())?,
        code::INVALID_ARGUMENT,
        "a malformed request",
    )?;
    expect(call(&mut c, task, "State", vec![0x0a, 0x40, b'x'])?, code::INVALID_ARGUMENT, "a malformed State")?;
    expect(call(&mut c, "containerd.task.v9.Nothing", "State", vec![])?, code::UNIMPLEMENTED, "another service")?;
    expect(call(&mut c, task, "Explode", vec![])?, code::UNIMPLEMENTED, "an unknown method")?;
    expect(call(&mut c, task, "Exec", vec![])?, code::UNIMPLEMENTED, "Exec")?;
    let mut bogus = Writer::new();
    bogus.string(1, "no-such-task").uint(3, 9);
    expect(call(&mut c, task, "Kill", bogus.finish())?, code::NOT_FOUND, "Kill of an unknown task")?;
    let mut relative = Writer::new();
    relative.string(1, "rel").string(2, "bundle");
    expect(call(&mut c, task, "Create", relative.into_bytes())?, code::INVALID_ARGUMENT, "a relative bundle")?;
    let mut again = Writer::new();
    again.string(1, id).string(2, &ctd.bundle(id).display().to_string());
    expect(call(&mut c, task, "Create", again.into_bytes())?, code::ALREADY_EXISTS, "a second Create")?;
    let mut delete = Writer::new();
    delete.string(1, id);
    expect(call(&mut c, task, "Delete", delete.into_bytes())?, code::FAILED_PRECONDITION, "Delete while running")?;
    if state_of(&mut c)? != 2 {
        return Err("the container is not RUNNING after the hostile calls".into());
    }
    // containerd is still served, and the container still serves.
    let (_, status) = ctd.task(id)?.ok_or("the task is not listed")?;
    if status != "RUNNING" {
        return Err(format!("ctr task ls says {status}"));
    }
    link.wait_served(&want)?;
    drop((idle, half, c));
    // An output the shim cannot give is refused with the fix, nothing left.
    let bad = format!("{id}-binary-log");
    let r = ctd.run_on(rt, &["--log-uri", "binary:///bin/cat"], &image, &bad, &[])?;
    if r.status() == 0 || !r.stderr.contains("give a file:// log URI") {
        return Err(format!("a binary:// log was not refused\n{}", r.dump()));
    }
    let left = ctd.leftovers(&bad);
    if !left.is_empty() || ctd.task(&bad)?.is_some() {
        return Err(format!("the refused container left: {left:?}"));
    }
    ctd.ctr(&["task", "kill", id])?.expect_status(0)?;
    ctd.wait_stopped(id)?;
    ctd.ctr(&["task", "delete", id])?.expect_status(0)?;
    ctd.ctr(&["container", "rm", id])?.expect_status(0)?;
    Ok(())
}

/// Our shim killed under a serving container: containerd cleans up
/// (`shim delete`), and no tender, tap, mount or address change is left.
fn mirage_shim_killed_leaves_nothing() -> TestResult {
    let rt = Runtime::MirageShim;
    let (image, tarball) = website("spt")?;
    let ctd = Containerd::start()?;
    ctd.import(&tarball)?;
    let link = Link::new(SEQ.fetch_add(1, Ordering::Relaxed) % 200 + 1)?;
    let before = link.snapshot()?;
    let id = "shim-killed";
    let netns = link.netns();
    ctd.run_on(rt, &["-d", "--with-ns", &netns], &image, id, &[])?.expect_status(0)?;
    link.wait_served(&index_html()?)?;
    let (pid, _) = ctd.task(id)?.ok_or("the task is not listed")?;
    let shims = ctd.shims_of(rt);
    let [shim] = shims[..] else { return Err(format!("shims: {shims:?}")) };
    // SAFETY: kill(2) on the shim this test's containerd started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let tender_alive = || std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("solo5-spt"));
    while tender_alive() || ctd.task(id)?.is_some_and(|(_, s)| s != "STOPPED") {
        if Instant::now() > deadline {
            return Err(format!("20 s after its shim was killed the tender {pid} runs or the task is listed"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ctd.ctr(&["task", "delete", id]);
    ctd.ctr(&["container", "rm", id])?.expect_status(0)?;
    let left = ctd.leftovers(id);
    if !left.is_empty() {
        return Err(format!("left behind: {}", left.join("; ")));
    }
    let after = link.snapshot()?;
    if after != before {
        return Err(format!("the namespace changed:\n--- before\n{before}--- after\n{after}"));
    }
    Ok(())
}

/// `mirage package` refuses what it cannot pack, saying how to fix it.
fn package_refusals() -> TestResult {
    let scratch = Scratch::new("oci-package");
    let crate_dir = scratch.0.join("pk");
    testkit::mirage_in(&scratch.0, &["new", "pk"])?.expect_status(0)?;
    let expect = |args: &[&str], status: i32, cause: &str, fix: &str| -> TestResult {
        let r = testkit::mirage_in(&crate_dir, args)?;
        r.expect_status(status)?;
        if !r.stderr.contains(&format!("mirage: {cause}")) || !r.stderr.contains(&format!("  fix: {fix}")) {
            return Err(format!("mirage {}: expected {cause:?} and {fix:?}\n{}", args.join(" "), r.dump()));
        }
        Ok(())
    };
    expect(&["package"], 64, "package: no format given", "write mirage package --oci")?;
    expect(&["package", "--oci"], 1, "pk is not configured", "run `mirage configure -t unix`")?;
    testkit::mirage_in(&crate_dir, &["configure", "-t", "unix"])?.expect_status(0)?;
    expect(&["package", "--oci"], 64, "package --oci packs hvt and spt unikernels", "mirage configure -t hvt")?;
    expect(
        &["package", "--iso"],
        64,
        "package --iso packs virtio unikernels; this one is configured for unix",
        "mirage configure -t virtio",
    )?;
    expect(&["package", "--iso", "--oci"], 64, "package: both --oci and --iso given", "make one at a time")?;
    expect(&["package", "--oci", "extra"], 64, "package: unexpected argument \"extra\"", "boot arguments go after --")?;
    if crate_dir.join("dist").exists() {
        return Err("a refused package wrote dist/".into());
    }
    Ok(())
}

/// Whether the ELF executable `bytes` asks for a dynamic loader (has a
/// PT_INTERP program header); an error if it is no 64-bit ELF file.
fn has_interpreter(bytes: &[u8]) -> Result<bool, String> {
    let u = |at: usize, n: usize| -> Result<u64, String> {
        let b = bytes.get(at..at + n).ok_or("a truncated ELF file")?;
        Ok(b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)))
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not a 64-bit ELF file".into());
    }
    let (phoff, phentsize, phnum) = (u(0x20, 8)? as usize, u(0x36, 2)? as usize, u(0x38, 2)? as usize);
    for i in 0..phnum {
        if u(phoff + i * phentsize, 4)? == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `mirage install-runtime` puts the shim, mirage-runc and statically
/// linked tenders in one directory (the one every other test here runs
/// containerd with), the image's tender is the static one too, and a
/// wrong command line is refused.
fn install_runtime_is_static() -> TestResult {
    let dir = testkit::oci::runtime_dir()?;
    for name in ["containerd-shim-mirage-v2", "mirage-runc", "solo5-hvt", "solo5-spt"] {
        let p = dir.join(name);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 == 0 {
            return Err(format!("{} is not executable", p.display()));
        }
    }
    for t in ["hvt", "spt"] {
        let p = dir.join(format!("solo5-{t}"));
        let bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
        if has_interpreter(&bytes)? {
            return Err(format!("{} is linked dynamically", p.display()));
        }
        // Static, and a working tender: it answers --version.
        let r = run_with(
            {
                let mut c = Command::new(&p);
                c.arg("--version");
                c
            },
            Duration::from_secs(10),
        )?;
        r.expect_status(0)?;
        // The tender in the image is the same file.
        let (_, tarball) = website(t)?;
        let image = std::fs::read(&tarball).map_err(|e| e.to_string())?;
        if !image.windows(bytes.len()).any(|w| w == bytes.as_slice()) {
            return Err(format!("the image {} does not hold the static tender {}", tarball.display(), p.display()));
        }
    }
    let expect = |args: &[&str], status: i32, cause: &str| -> TestResult {
        let r = testkit::mirage_in(&dir, args)?;
        r.expect_status(status)?;
        if !r.stderr.contains(&format!("mirage: {cause}")) || !r.stderr.contains("  fix: ") {
            return Err(format!("mirage {}: expected {cause:?} and a fix\n{}", args.join(" "), r.dump()));
        }
        Ok(())
    };
    expect(&["install-runtime", "--prefix=/nonexistent/bin"], 1, "/nonexistent/bin: not a directory")?;
    expect(&["install-runtime", "bin"], 64, "install-runtime: unexpected argument \"bin\"")?;
    expect(&["install-runtime", "--into=bin"], 64, "install-runtime: unknown option --into=bin")?;
    Ok(())
}

pub fn cases(v: &mut Vec<Case>) {
    v.push(case("oci::mirage_package_refuses_what_it_cannot_pack", Needs::Nothing, package_refusals));
    v.push(case("oci::install_runtime_installs_static_tenders", Needs::Nothing, install_runtime_is_static));
    for t in ["hvt", "spt"] {
        let needs = Needs::NetPrograms(t, PROGRAMS);
        for rt in [Runtime::RuncShim, Runtime::MirageShim] {
            let n = rt.name();
            v.push(case(format!("oci::{t}_{n}_serves_http_and_leaves_nothing"), needs, move || {
                serves_and_leaves_nothing(t, rt)
            }));
            v.push(case(format!("oci::{t}_{n}_crash_is_reported_with_its_status"), needs, move || {
                crash_is_reported(t, rt)
            }));
            v.push(case(format!("oci::{t}_{n}_block_device_from_the_image"), needs, move || {
                block_device_from_the_image(t, rt)
            }));
            v.push(case(format!("oci::{t}_{n}_malformed_images_are_refused"), needs, move || {
                malformed_images_are_refused(t, rt)
            }));
            v.push(case(format!("oci::{t}_{n}_grouped_containers_share_one_shim"), needs, move || {
                grouped_under_one_shim(t, rt)
            }));
            let mut fifty = case(format!("oci::{t}_{n}_fifty_at_once"), needs, move || fifty_at_once(t, rt));
            // Fifty guests and their shims fill this machine's two cores.
            fifty.alone = true;
            v.push(fifty);
        }
        v.push(case(format!("oci::{t}_without_a_namespace_gets_one_of_its_own"), needs, move || own_namespace(t)));
    }
    v.push(case(
        "oci::mirage_shim_killed_leaves_nothing",
        Needs::NetPrograms("spt", PROGRAMS),
        mirage_shim_killed_leaves_nothing,
    ));
    v.push(case(
        "oci::mirage_shim_survives_hostile_callers",
        Needs::NetPrograms("spt", PROGRAMS),
        mirage_shim_survives_hostile_callers,
    ));
    v.push(case(
        "oci::malformed_bundles_are_refused",
        Needs::Program { name: "runc", package: "runc" },
        malformed_bundles_are_refused,
    ));
}
