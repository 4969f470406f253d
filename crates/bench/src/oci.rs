//! `mirage-bench oci`: the static website as a container under containerd,
//! on hvt and spt, started by our shim (`io.containerd.mirage.v2`) and by
//! containerd's runc shim with mirage-runc, beside nginx in a runc
//! container from a local image (Debian's nginx-light binary and its
//! libraries, the same files), each with `ctr run` in a network namespace
//! of its own: the time from `ctr run` to the first
//! HTTP answer, the memory of a running instance (the proportional set
//! size of the container's processes, and with its shim), and so how many
//! fit in 1 GiB.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirage_oci::image::Entry;
use testkit::oci::{Containerd, GROUP_ANNOTATION, Link, Runtime, website};
use testkit::{Scratch, root};

use crate::{Options, machine, median};

/// The files of an nginx image: the host's nginx, the libraries it links,
/// a configuration with one worker, and the static website's htdocs.
fn nginx_image(scratch: &Scratch) -> Result<(String, PathBuf), String> {
    let nginx = PathBuf::from("/usr/sbin/nginx");
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e} (apt-get install nginx-light)", p.display()));
    let mut files = vec![Entry { path: "/usr/sbin/nginx".into(), mode: 0o755, data: read(&nginx)? }];
    let ldd = Command::new("ldd").arg(&nginx).output().map_err(|e| format!("ldd: {e}"))?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or the
        // loader, "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(Entry { path: path.into(), mode: 0o755, data: read(Path::new(path))? });
        }
    }
    let conf = "user root;\nworker_processes 1;\ndaemon off;\nerror_log stderr warn;\npid /tmp/nginx.pid;\n\
                events { worker_connections 1024; }\nhttp {\n  include /etc/nginx/mime.types;\n  access_log off;\n\
                sendfile on;\n  client_body_temp_path /tmp;\n  proxy_temp_path /tmp;\n  fastcgi_temp_path /tmp;\n\
                uwsgi_temp_path /tmp;\n  scgi_temp_path /tmp;\n  server { listen 80; root /htdocs; }\n}\n";
    files.push(Entry { path: "/etc/nginx/nginx.conf".into(), mode: 0o644, data: conf.into() });
    files.push(Entry {
        path: "/etc/nginx/mime.types".into(),
        mode: 0o644,
        data: read(Path::new("/etc/nginx/mime.types"))?,
    });
    files.push(Entry { path: "/etc/passwd".into(), mode: 0o644, data: b"root:x:0:0::/:/bin/false\n".to_vec() });
    files.push(Entry { path: "/etc/group".into(), mode: 0o644, data: b"root:x:0:\n".to_vec() });
    files.push(Entry { path: "/tmp/.keep".into(), mode: 0o644, data: Vec::new() });
    let htdocs = root().join("examples/static-website/htdocs");
    let mut stack = vec![htdocs.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&htdocs).map_err(|e| e.to_string())?;
                files.push(Entry { path: format!("/htdocs/{}", rel.display()), mode: 0o644, data: read(&p)? });
            }
        }
    }
    let reference = "localhost/mirage-bench/nginx:latest".to_string();
    let entrypoint: Vec<String> =
        ["/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf"].map(String::from).to_vec();
    let mut data = Vec::new();
    mirage_oci::image::write_plain(&reference, &entrypoint, &files, &mut data).map_err(|e| e.to_string())?;
    let path = scratch.0.join("nginx.oci.tar");
    std::fs::write(&path, data).map_err(|e| e.to_string())?;
    Ok((reference, path))
}

/// Asks for `/` at `addr` from the calling thread's namespace until a
/// whole 200 answer comes; when it came.
fn first_answer(addr: SocketAddr) -> Result<Instant, String> {
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(30) {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(5)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut answer = Vec::new();
            if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").is_ok()
                && s.read_to_end(&mut answer).is_ok()
                && answer.starts_with(b"HTTP/1.1 200")
            {
                return Ok(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(format!("no answer from {addr} within 30 s"))
}

/// Starts [`first_answer`] for the container of `link` on a thread in
/// the link's client namespace.
fn ask_from_client(link: &Link) -> Result<std::thread::JoinHandle<Result<Instant, String>>, String> {
    let addr: SocketAddr = format!("{}:80", link.address).parse().map_err(|e| format!("{e}"))?;
    let path = format!("/var/run/netns/{}", link.client);
    Ok(std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace file this thread opened; it moves
        // only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        first_answer(addr)
    }))
}

/// The proportional set size of process `pid`, in KiB.
fn pss(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .unwrap_or(0)
}

/// How a row's containers are started: by containerd's runc shim with
/// this runc (runc itself when `None`), or by our shim.
#[derive(Debug, Clone)]
enum Way {
    RuncShim(Option<PathBuf>),
    MirageShim,
}

impl Way {
    fn run(&self, ctd: &Containerd, options: &[&str], image: &str, id: &str) -> Result<testkit::Run, String> {
        match self {
            Way::RuncShim(runc) => ctd.run_with(runc.as_deref(), options, image, id, &[]),
            Way::MirageShim => ctd.run_on(Runtime::MirageShim, options, image, id, &[]),
        }
    }

    /// Every shim process of the namespace.
    fn shims(&self, ctd: &Containerd) -> Vec<i32> {
        match self {
            Way::RuncShim(_) => ctd.shims(),
            Way::MirageShim => ctd.shims_of(Runtime::MirageShim),
        }
    }
}

/// The pids of task `id` (`ctr task ps`) and of its shim (ours serves
/// the namespace, so it is every one of ours there).
fn processes(ctd: &Containerd, way: &Way, id: &str) -> Result<(Vec<i32>, Vec<i32>), String> {
    let r = ctd.ctr(&["task", "ps", id])?;
    let task: Vec<i32> = r.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    if let Way::MirageShim = way {
        return Ok((task, way.shims(ctd)));
    }
    let mut shim = Vec::new();
    for e in std::fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let words: Vec<&str> = cmdline.split('\0').collect();
        if words.first().is_some_and(|w| w.ends_with("containerd-shim-runc-v2"))
            && words.windows(2).any(|w| w == ["-namespace", ctd.namespace.as_str()])
            && words.windows(2).any(|w| w == ["-id", id])
        {
            shim.push(pid);
        }
    }
    Ok((task, shim))
}

struct Row {
    name: String,
    times: Vec<f64>,
    returned: Vec<f64>,
    task_kib: Vec<f64>,
    shim_kib: Vec<f64>,
}

/// `runs` containers of `image` one after the other, each in a fresh pair
/// of namespaces.
fn measure(ctd: &Containerd, name: &str, way: &Way, image: &str, runs: usize) -> Result<Row, String> {
    let mut row =
        Row { name: name.into(), times: Vec::new(), returned: Vec::new(), task_kib: Vec::new(), shim_kib: Vec::new() };
    for i in 0..runs {
        let link = Link::new(i as u32 % 200 + 1)?;
        // The client asks for the container's address by ARP every 10 ms
        // rather than every second: a probe unanswered while the server
        // starts would otherwise cost a second, to nginx and the
        // unikernels alike.
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &link.client, "sh", "-c", "echo 10 > /proc/sys/net/ipv4/neigh/v1/retrans_time_ms"]);
        c.status().map_err(|e| e.to_string())?;
        let id: String = format!("{name}-{i}").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let netns = link.netns();
        let client = ask_from_client(&link)?;
        let start = Instant::now();
        let r = way.run(ctd, &["-d", "--with-ns", &netns, "--memory-limit", "67108864"], image, &id)?;
        if r.status() != 0 {
            return Err(format!("ctr run {image}: {}", r.dump()));
        }
        row.returned.push(r.elapsed.as_secs_f64() * 1000.0);
        let answered = client.join().map_err(|_| "the client panicked".to_string())??;
        row.times.push(answered.saturating_duration_since(start).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(200));
        let (task, shim) = processes(ctd, way, &id)?;
        row.task_kib.push(task.iter().map(|&p| pss(p)).sum::<u64>() as f64);
        row.shim_kib.push(shim.iter().map(|&p| pss(p)).sum::<u64>() as f64);
        ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id])?;
        ctd.wait_stopped(&id)?;
        ctd.ctr(&["task", "delete", &id])?.expect_status(0)?;
        ctd.ctr(&["container", "rm", &id])?.expect_status(0)?;
    }
    Ok(row)
}

/// What `n` instances running at once cost: the proportional set size
/// of all their processes, then with their shims, per instance (shared
/// pages counted once among them). The host's `MemAvailable` was tried
/// too (it would count the kernel's share: page tables, taps,
/// namespaces), but it moves by more than the instances hold with
/// whatever else the host does.
struct AtOnce {
    task_kib: f64,
    shim_kib: f64,
}

/// Starts `n` containers of `image`, each in its own pair of namespaces,
/// waits until every one has answered, then measures them all. With a
/// `group`, the containers carry it as their runc shim's group
/// ([`GROUP_ANNOTATION`]) and one shim serves them all; without, each has
/// its own.
fn at_once(
    ctd: &Containerd,
    name: &str,
    way: &Way,
    image: &str,
    n: usize,
    group: Option<&str>,
) -> Result<AtOnce, String> {
    let annotation = group.map(|g| format!("{GROUP_ANNOTATION}={g}"));
    let mut links = Vec::new();
    let mut ids = Vec::new();
    let result = (|| {
        for i in 0..n {
            let link = Link::new(i as u32 % 200 + 1)?;
            let id: String =
                format!("{name}-many-{i}").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            let netns = link.netns();
            let mut options = vec!["-d", "--with-ns", &netns, "--memory-limit", "67108864"];
            if let Some(a) = &annotation {
                options.extend_from_slice(&["--annotation", a]);
            }
            let r = way.run(ctd, &options, image, &id)?;
            if r.status() != 0 {
                return Err(format!("ctr run {image}: {}", r.dump()));
            }
            ids.push(id);
            links.push(link);
        }
        for link in &links {
            ask_from_client(link)?.join().map_err(|_| "the client panicked".to_string())??;
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut task_kib = 0;
        for id in &ids {
            let (task, _) = processes(ctd, way, id)?;
            task_kib += task.iter().map(|&p| pss(p)).sum::<u64>();
        }
        // Every shim of the namespace: only these containers run in it.
        let shims = way.shims(ctd);
        let shim_kib = shims.iter().map(|&p| pss(p)).sum::<u64>();
        println!("<!-- {name}: {} shim processes for {n} containers -->", shims.len());
        let per = |kib: u64| kib as f64 / n as f64;
        Ok(AtOnce { task_kib: per(task_kib), shim_kib: per(shim_kib) })
    })();
    for id in &ids {
        let _ = ctd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = ctd.wait_stopped(id);
        let _ = ctd.ctr(&["task", "delete", id]);
        let _ = ctd.ctr(&["container", "rm", id]);
    }
    // The next row starts once these shims are gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !way.shims(ctd).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    result
}

pub(crate) fn oci(opts: &Options) -> Result<(), String> {
    machine();
    let runs = opts.runs.clamp(1, 200);
    testkit::mirage()?;
    let scratch = Scratch::new("bench-oci");
    let ctd = Containerd::start()?;
    let mut images = Vec::new();
    for t in ["hvt", "spt"] {
        let (reference, tarball) = website(t)?;
        ctd.import(&tarball)?;
        images.push((format!("static-website {t}, our shim"), Way::MirageShim, reference.clone()));
        let runc = Way::RuncShim(Some(testkit::oci::runc()?));
        images.push((format!("static-website {t}, runc shim and mirage-runc"), runc, reference));
    }
    let (nginx, tarball) = nginx_image(&scratch)?;
    ctd.import(&tarball)?;
    images.push(("nginx, runc".to_string(), Way::RuncShim(None), nginx));
    let containerd = String::from_utf8_lossy(
        &Command::new("containerd").arg("--version").output().map_err(|e| e.to_string())?.stdout,
    )
    .trim()
    .to_string();
    println!("{containerd}; ctr run -d, a fresh network namespace each, memory limit 64 MiB; {runs} runs each");
    println!();
    println!(
        "| server | ctr run -d returns | ctr run to first answer: median | min | max | memory (PSS) of the container's processes | with its shim | instances per GiB (with the shim) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    let at_once_only = opts.only.iter().any(|w| w == "at-once");
    for (name, way, image) in &images {
        rows.push((name.clone(), way.clone(), image.clone()));
        if at_once_only {
            continue;
        }
        let mut row = measure(&ctd, name, way, image, runs)?;
        let min = row.times.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = row.times.iter().cloned().fold(0.0, f64::max);
        let t = median(&mut row.times);
        let returned = median(&mut row.returned);
        let task = median(&mut row.task_kib);
        let shim = median(&mut row.shim_kib);
        let per_gib = |kib: f64| if kib > 0.0 { (1024.0 * 1024.0 / kib).floor() } else { 0.0 };
        println!(
            "| {} | {returned:.0} ms | {t:.0} ms | {min:.0} ms | {max:.0} ms | {:.1} MiB | {:.1} MiB | {:.0} ({:.0}) |",
            row.name,
            task / 1024.0,
            (task + shim) / 1024.0,
            per_gib(task),
            per_gib(task + shim)
        );
    }
    let n = opts.at_once;
    println!();
    println!(
        "{n} instances running at once (each in its own namespaces, started one after the other, all answered), per instance:"
    );
    println!();
    println!(
        "| server | PSS of the container's processes | with its shim | instances per GiB: processes / with shims |"
    );
    println!("| --- | --- | --- | --- |");
    // The runc shim both ways; ours serves a namespace from one process.
    let variants = rows.iter().flat_map(|r| match r.1 {
        Way::MirageShim => vec![(r, None)],
        Way::RuncShim(_) => vec![(r, None), (r, Some("bench"))],
    });
    for ((name, way, image), group) in variants {
        let m = at_once(&ctd, name, way, image, n, group)?;
        let per_gib = |kib: f64| if kib > 0.0 { (1024.0 * 1024.0 / kib).floor() } else { 0.0 };
        let shims = match (way, group) {
            (Way::MirageShim, _) => "one for the namespace",
            (_, Some(_)) => "one shim for all",
            _ => "a shim each",
        };
        println!(
            "| {name}, {shims} | {:.2} MiB | {:.2} MiB | {:.0} / {:.0} |",
            m.task_kib / 1024.0,
            (m.task_kib + m.shim_kib) / 1024.0,
            per_gib(m.task_kib),
            per_gib(m.task_kib + m.shim_kib),
        );
    }
    Ok(())
}
