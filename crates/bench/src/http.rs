//! HTTP benchmarks: the static-website example on unix (tap), hvt and spt,
//! loaded by wrk from inside a network namespace, beside nginx (one
//! worker) serving the same files across a veth pair between two
//! namespaces, in the same run; and a soak of many persistent and short
//! connections that watches for errors and for memory growth.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::{Background, Netns, root};

use crate::{Options, machine};

const SMALL: &str = "small.html";
const BIG: &str = "big.bin";

/// A copy of the static-website example whose htdocs are the benchmark's
/// files: a small page and 1 MiB of random bytes.
fn site() -> Result<PathBuf, String> {
    site_copy("static-website", &[])
}

/// A copy of `example` in `target/bench-http/` whose htdocs are the
/// benchmark's files, with the example's files `extra` copied too.
pub(crate) fn site_copy(example: &str, extra: &[&str]) -> Result<PathBuf, String> {
    let src = root().join("examples").join(example);
    let dir = root().join("target/bench-http").join(example);
    let htdocs = dir.join("htdocs");
    std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&htdocs).map_err(|e| e.to_string())?;
    // Only the benchmark's two files are served; the rest go. Those two
    // are kept when unchanged (below), so that the site is not built again.
    for entry in std::fs::read_dir(&htdocs).map_err(|e| e.to_string())?.flatten() {
        if entry.file_name() != SMALL && entry.file_name() != BIG {
            let p = entry.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
    let crates = root().join("crates");
    let manifest = std::fs::read_to_string(src.join("Cargo.toml")).map_err(|e| e.to_string())?;
    write_if_changed(&dir.join("Cargo.toml"), &manifest.replace("../../crates", &crates.display().to_string()))?;
    for f in ["mirage.toml", "src/lib.rs"].iter().chain(extra) {
        if let Some(parent) = Path::new(f).parent() {
            std::fs::create_dir_all(dir.join(parent)).map_err(|e| e.to_string())?;
        }
        write_if_changed(&dir.join(f), &std::fs::read_to_string(src.join(f)).map_err(|e| e.to_string())?)?;
    }
    // Written only when they differ, as above: a new modification time
    // would make the build compile the site's files in again, every run.
    write_bytes_if_changed(
        &htdocs.join(SMALL),
        &std::fs::read(src.join("htdocs/index.html")).map_err(|e| e.to_string())?,
    )?;
    write_bytes_if_changed(&htdocs.join(BIG), &testkit::noise(0x2545_f491_4f6c_dd1d, 1 << 20))?;
    Ok(dir)
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    write_bytes_if_changed(path, text.as_bytes())
}

fn write_bytes_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(path).ok().as_deref() != Some(bytes) {
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Configures and builds the site for `target`; its image. The copy has
/// a Cargo target directory of its own: it is a different package of the
/// same name as the example, and in a shared one the two would overwrite
/// each other's binary.
fn build(dir: &Path, target: &str) -> Result<PathBuf, String> {
    build_named(dir, target, "static-website")
}

/// As [`build`], for the copy of the example named `name`.
pub(crate) fn build_named(dir: &Path, target: &str, name: &str) -> Result<PathBuf, String> {
    let mut configure = vec!["configure", "-t", target];
    if target == "unix" {
        configure.push("--net=direct");
    }
    for args in [&configure[..], &["build"][..]] {
        let mut c = Command::new(testkit::mirage()?);
        c.arg("-C").arg(dir).args(args).env("CARGO_TARGET_DIR", dir.join("mirage/target"));
        let r = testkit::run_with(c, Duration::from_secs(1800))?;
        if r.status() != 0 {
            return Err(format!("mirage {args:?}: {}", r.dump()));
        }
    }
    Ok(dir.join("dist").join(if target == "unix" { name.to_string() } else { format!("{name}.{target}") }))
}

/// Starts the site on `target` in `ns` at 10.0.0.2, access log off.
fn start(ns: &Netns, target: &str, image: &Path, extra: &[&str]) -> Result<Background, String> {
    let mut c = ns.unikernel(target, image, &["--net:service=tap0"]);
    c.args(["--ipv4=10.0.0.2/24", "--logs=http:warn"]).args(extra);
    let mut g = Background::start(c)?;
    g.wait_for("static-website: serving", Duration::from_secs(30))?;
    Ok(g)
}

/// What wrk reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wrk {
    pub(crate) rps: f64,
    /// Requests completed in the run.
    pub(crate) requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    pub(crate) errors: u64,
    /// wrk's own words for them.
    error_text: String,
}

fn ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, mul) = if let Some(v) = t.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = t.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// Runs wrk in `ns` for `secs` with `conns` connections on one thread.
pub(crate) fn wrk(ns: &Netns, url: &str, conns: usize, secs: u64) -> Result<Wrk, String> {
    let out = ns
        .command("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", "--timeout", "10s", url])
        .output()
        .map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut w = Wrk::default();
    let mut rate = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some((n, _)) = l.split_once(" requests in ") {
            w.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Requests/sec:") {
            rate = true;
            w.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            w.p50_ms = ms(v).unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("99%") {
            w.p99_ms = ms(v).unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.errors += v.trim().parse::<u64>().unwrap_or(0);
            w.error_text.push_str(l);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            w.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
            w.error_text.push_str(l);
        }
    }
    // A server that completes no request in the run gets a row of 0
    // (its latencies then read 0), not the end of the benchmark.
    if !rate {
        return Err(format!("wrk printed no rate:\n{text}"));
    }
    Ok(w)
}

/// nginx running in the background, stopped with its worker when dropped:
/// a SIGTERM to the master, which ends the worker first. (The SIGKILL that
/// stops a [`Background`] would leave the worker running, orphaned.)
pub(crate) struct Nginx(pub(crate) Background);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the pid of our own child, not yet reaped, so
        // the pid cannot name another process.
        unsafe { libc::kill(self.0.child.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait(Duration::from_secs(5));
    }
}

/// nginx with one worker in `ns`, serving `htdocs` on `ip`:80, access log
/// off, as a unikernel has none.
pub(crate) fn nginx(ns: &Netns, ip: Ipv4Addr, htdocs: &Path, scratch: &Path) -> Result<Nginx, String> {
    let conf = scratch.join("nginx.conf");
    std::fs::create_dir_all(scratch.join("tmp")).map_err(|e| e.to_string())?;
    let text = format!(
        "worker_processes 1;\ndaemon off;\nerror_log stderr warn;\npid {pid};\nevents {{ worker_connections 4096; }}\nhttp {{\n  include /etc/nginx/mime.types;\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n  server {{\n    listen {ip}:80;\n    root {root};\n  }}\n}}\n",
        pid = scratch.join("nginx.pid").display(),
        tmp = scratch.join("tmp").display(),
        root = htdocs.display(),
    );
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let mut c = ns.command("nginx");
    c.arg("-c").arg(&conf).arg("-p").arg(scratch);
    let g = Background::start(c)?;
    let to = SocketAddr::new(ip.into(), 80);
    let started = Instant::now();
    while ns.enter(|| TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err())? {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("nginx did not start (apt-get install nginx-light):\n{}", g.output()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Nginx(g))
}

/// nginx across a fresh veth pair: with the pair's segmentation and
/// receive offloads (64 KiB segments through the host stack), or without
/// them, when every segment is a 1500-byte frame as on a tap device.
fn nginx_run(
    server: Ipv4Addr,
    htdocs: &Path,
    scratch: &Path,
    file: &str,
    conns: usize,
    secs: u64,
    offloads: bool,
) -> Result<Wrk, String> {
    let (a, b) = crate::tcp::veth()?;
    if !offloads {
        for (ns, dev) in [(&a, "mbench-a"), (&b, "mbench-b")] {
            let out = ns
                .command("ethtool")
                .args(["-K", dev, "tso", "off", "gso", "off", "gro", "off"])
                .output()
                .map_err(|e| format!("ethtool: {e} (apt-get install ethtool)"))?;
            if !out.status.success() {
                return Err(format!("ethtool -K {dev}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
    }
    let _n = nginx(&b, server, htdocs, scratch)?;
    wrk(&a, &format!("http://{server}/{file}"), conns, secs)
}

pub fn http(o: &Options) -> Result<(), String> {
    machine();
    let secs = if o.runs == 50 { 10 } else { o.runs as u64 };
    let dir = site()?;
    let images: Vec<(&str, PathBuf)> =
        o.targets.iter().map(|t| build(&dir, t).map(|i| (t.as_str(), i))).collect::<Result<_, _>>()?;
    let v = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let w = Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    println!(
        "HTTP: wrk (one thread, {secs} s a run, {w}) from a network namespace; the small file is {} bytes, the big one 1 MiB.",
        std::fs::metadata(dir.join("htdocs").join(SMALL)).map(|m| m.len()).unwrap_or(0)
    );
    println!(
        "nginx ({v}, one worker, sendfile, access log off) serves the same files across a veth pair between two namespaces,"
    );
    println!(
        "with the pair's offloads (64 KiB segments) and without them (1500-byte frames, as through a tap device); the ratio is to the first."
    );
    println!();
    println!(
        "The unikernel's processor time per request is its process's user and system time over the run (on hvt the guest's time counts as user time);"
    );
    println!(
        "it depends less than requests/s on what else the machine runs. Its system time includes the host's delivery of its frames."
    );
    println!();
    println!("| file | connections | server | requests/s | p50 | p99 | errors | vs nginx | CPU per request |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let scratch = root().join("target/bench-http/nginx");
    // `--only small|big|N`: the rows of that file or that many connections.
    let files: Vec<&str> = o.only.iter().filter(|w| *w == "small" || *w == "big").map(String::as_str).collect();
    let counts: Vec<usize> = o.only.iter().filter_map(|w| w.parse().ok()).collect();
    for (file, label) in [(SMALL, "small"), (BIG, "1 MiB")] {
        if !files.is_empty() && !files.contains(&if file == SMALL { "small" } else { "big" }) {
            continue;
        }
        for conns in [1usize, 64, 256] {
            if !counts.is_empty() && !counts.contains(&conns) {
                continue;
            }
            let server = Ipv4Addr::new(10, 0, 1, 2);
            let reference = nginx_run(server, &dir.join("htdocs"), &scratch, file, conns, secs, true)?;
            let plain = nginx_run(server, &dir.join("htdocs"), &scratch, file, conns, secs, false)?;
            let row = |name: &str, r: &Wrk, cpu: &str| {
                println!(
                    "| {label} | {conns} | {name} | {:.0} | {:.3} ms | {:.3} ms | {} | {:.2} | {cpu} |",
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    r.rps / reference.rps
                );
            };
            row("nginx 1 worker, veth", &reference, "-");
            row("nginx 1 worker, veth without offloads", &plain, "-");
            for (target, image) in &images {
                for &mtu in &o.mtus {
                    let ns = Netns::with_mtu(mtu)?;
                    let extra: Vec<&str> = o.boot_args.iter().map(String::as_str).collect();
                    let g = start(&ns, target, image, &extra)?;
                    let before = testkit::attack::cpu_ticks(g.child.id());
                    let r = wrk(&ns, &format!("http://10.0.0.2/{file}"), conns, secs)
                        .map_err(|e| format!("{target}: {e}\n{}", g.output()))?;
                    let ticks = testkit::attack::cpu_ticks(g.child.id()).saturating_sub(before);
                    let hz = testkit::attack::clock_ticks_per_second() as f64;
                    let cpu = match r.requests {
                        0 => "-".to_string(),
                        n => format!("{:.1} us", ticks as f64 * 1e6 / hz / n as f64),
                    };
                    row(&format!("mirage-rs {target}, tap MTU {mtu}"), &r, &cpu);
                }
            }
        }
    }
    Ok(())
}

/// `--runs SECONDS` (default 600) on `--target` hvt|spt|unix: 256
/// persistent connections through wrk plus a stream of short connections
/// (connect, one request, close) beside them; errors and the unikernel's
/// resident memory, sampled every 30 s.
pub fn soak(o: &Options, target: &str) -> Result<(), String> {
    machine();
    let secs = if o.runs == 50 { 600 } else { o.runs as u64 };
    let dir = site()?;
    let image = build(&dir, target)?;
    let ns = Netns::new()?;
    let g = start(&ns, target, &image, &["--stats=10"])?;
    let pid = g.child.id();
    println!(
        "soak: static-website on {target} for {secs} s: wrk with 256 persistent connections on {SMALL}, and short connections (one request each) beside it"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let short_ok = Arc::new(AtomicU64::new(0));
    let short_err = Arc::new(AtomicU64::new(0));
    let shorts: Vec<_> = (0..2).map(|_| (stop.clone(), short_ok.clone(), short_err.clone())).collect();
    let short_threads = ns.enter(|| {
        shorts
            .into_iter()
            .map(|(stop, ok, err)| {
                std::thread::spawn(move || {
                    let to = SocketAddr::from(([10, 0, 0, 2], 80));
                    let mut buf = vec![0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        let r = (|| -> std::io::Result<bool> {
                            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            s.write_all(
                                format!("GET /{SMALL} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n").as_bytes(),
                            )?;
                            let mut got = Vec::new();
                            loop {
                                let n = s.read(&mut buf)?;
                                if n == 0 {
                                    break;
                                }
                                got.extend_from_slice(&buf[..n]);
                            }
                            Ok(got.starts_with(b"HTTP/1.1 200 "))
                        })();
                        match r {
                            Ok(true) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(false) => {
                                err.fetch_add(1, Ordering::Relaxed);
                                eprintln!("soak: a short connection got a status other than 200");
                            }
                            Err(e) => {
                                err.fetch_add(1, Ordering::Relaxed);
                                eprintln!("soak: a short connection failed: {e}");
                            }
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    })?;
    // wrk runs in slices of 30 s, so that memory is sampled between them.
    let started = Instant::now();
    let mut total = 0f64;
    let mut errors = 0u64;
    let mut samples = Vec::new();
    println!(
        "| after | requests/s (persistent) | short connections | errors | heap in use (unikernel's count) | tender RSS |"
    );
    println!("|---|---|---|---|---|---|");
    // The unikernel's last statistics line: its heap in use.
    let heap = |g: &Background| -> String {
        g.output()
            .lines()
            .rev()
            .find_map(|l| l.split("; heap ").nth(1).map(|h| h.trim_end_matches(" in use").to_string()))
            .unwrap_or_else(|| "-".into())
    };
    let mut heaps = Vec::new();
    while started.elapsed().as_secs() < secs {
        let slice = 30.min(secs - started.elapsed().as_secs()).max(1);
        let w = wrk(&ns, &format!("http://10.0.0.2/{SMALL}"), 256, slice)?;
        total += w.rps * slice as f64;
        errors += w.errors;
        let rss = testkit::attack::rss_kib(pid);
        samples.push(rss);
        if w.errors > 0 {
            eprintln!("soak: wrk: {}", w.error_text);
        }
        heaps.push(heap(&g));
        println!(
            "| {} s | {:.0} | {} | {} | {} | {} KiB |",
            started.elapsed().as_secs(),
            w.rps,
            short_ok.load(Ordering::Relaxed),
            errors + short_err.load(Ordering::Relaxed),
            heaps.last().map(String::as_str).unwrap_or("-"),
            rss
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in short_threads {
        let _ = t.join();
    }
    let first = samples.get(1).or(samples.first()).copied().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    println!();
    println!(
        "soak: {:.0} persistent requests, {} short connections, {} errors; heap in use {} after the first minute, {} at the end; RSS {} KiB after the first minute, {} KiB at the end",
        total,
        short_ok.load(Ordering::Relaxed),
        errors + short_err.load(Ordering::Relaxed),
        heaps.get(1).or(heaps.first()).map(String::as_str).unwrap_or("-"),
        heaps.last().map(String::as_str).unwrap_or("-"),
        first,
        last
    );
    Ok(())
}
