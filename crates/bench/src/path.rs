//! A long path: the static-website and network examples, and nginx and
//! Linux's own discard service beside them, reached by a client across a
//! link with a delay, a rate and a queue, in the same run. Every benchmark
//! over a bare tap runs at round trips of tens of microseconds, where a
//! sender's first window and its slow start cost nothing; across the
//! Internet they cost round trips of tens of milliseconds each.
//!
//! The link is `testkit::path`'s relay between two taps (this kernel has
//! no `netem`): a bottleneck with a rate and a tail-drop queue of a round
//! trip's worth, then a wire with a delay.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::path::{SERVER, Shape, link};
use testkit::{Background, Netns, example, root};

use crate::{Options, machine, median};

/// The files fetched, by name and size: a page of a few segments, one of a
/// few round trips in slow start, and ones the link's rate bounds.
const FILES: [(&str, usize); 3] = [("64k.bin", 64 << 10), ("1m.bin", 1 << 20), ("4m.bin", 4 << 20)];

/// Bytes sent to the discard service in each upload.
const UPLOAD: u64 = 16 << 20;

/// Fetches `file` over a new connection: the time from the connect to the
/// last byte, the handshake's round trip included.
fn fetch(file: &str, size: usize) -> Result<Duration, String> {
    let to = SocketAddr::new(SERVER.into(), 80);
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET /{file} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("GET /{file}: {e}"))?;
    let mut got = Vec::with_capacity(size + 512);
    s.read_to_end(&mut got).map_err(|e| format!("GET /{file}: {e}"))?;
    let d = start.elapsed();
    let body = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |at| got.len() - at - 4);
    if body != size || !got.starts_with(b"HTTP/1.1 200") {
        return Err(format!("GET /{file}: {} bytes of body, {size} expected", body));
    }
    Ok(d)
}

/// Sends `UPLOAD` bytes to the discard service and waits for its close.
fn upload() -> Result<Duration, String> {
    let to = SocketAddr::new(SERVER.into(), 9);
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let buf = vec![0x5au8; 1 << 20];
    for _ in 0..UPLOAD / buf.len() as u64 {
        s.write_all(&buf).map_err(|e| format!("upload: {e}"))?;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).map_err(|e| format!("upload: waiting for the close: {e}"))?;
    Ok(start.elapsed())
}

/// The static website with the fetched files in its htdocs, built for
/// `target`.
fn site(target: &str) -> Result<PathBuf, String> {
    let dir = crate::http::site_copy("static-website", &[])?;
    for (i, (file, size)) in FILES.iter().enumerate() {
        let path = dir.join("htdocs").join(file);
        let bytes = testkit::noise(0x9e37_79b9_7f4a_7c15 ^ i as u64, *size);
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        }
    }
    crate::http::build_named(&dir, target, "static-website")
}

/// Linux's discard service on 10.0.0.2 in `ns`.
fn linux_discard(ns: &Netns) -> Result<(), String> {
    ns.enter(|| -> Result<(), String> {
        let l = std::net::TcpListener::bind(SocketAddr::new(SERVER.into(), 9)).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        Ok(())
    })?
}

fn row(name: &str, shape: Shape, times: &[f64], up: f64, counts: [u64; 4]) {
    println!(
        "| {name} | {} ms | {} | {up:.0} | {} / {} | {} / {} |",
        (shape.delay * 2).as_millis(),
        times.iter().map(|t| format!("{t:.1} ms")).collect::<Vec<_>>().join(" | "),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
    );
}

pub fn path_bench(o: &Options) -> Result<(), String> {
    machine();
    let rounds = if o.count == 20_000 { 3 } else { o.count.max(1) };
    println!(
        "A long path: a relay between two taps, one way {:?} ms, {} Mbit/s, a tail-drop queue of one round trip at that rate; MTU 1500. \
         A fetch is a new connection's GET to its last byte (handshake included), the median of {rounds}; the upload is {} MiB to discard, \
         the median rate of {rounds}.",
        o.delays,
        o.rate_mbit,
        UPLOAD >> 20
    );
    println!();
    println!(
        "| server | round trip | {} | upload Mbit/s | frames to server / dropped | to client / dropped |",
        FILES.iter().map(|(f, _)| format!("GET {f}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}---|---|---|", "---|".repeat(FILES.len()));
    let images: Vec<(String, PathBuf, PathBuf)> =
        o.targets.iter().map(|t| Ok((t.clone(), site(t)?, example(t, "network")?))).collect::<Result<_, String>>()?;
    let htdocs = root().join("target/bench-http/static-website/htdocs");
    for &ms in &o.delays {
        let shape = Shape::new(ms, o.rate_mbit);
        for (target, site, network) in &images {
            let p = link(shape)?;
            let start = |image: &Path, ready: &str| -> Result<Background, String> {
                let mut c = p.server_side.unikernel(target, image, &["--net:service=tap0"]);
                c.args([&format!("--ipv4={SERVER}/24"), "--logs=http:warn"]).args(&o.boot_args);
                let mut g = Background::start(c)?;
                g.wait_for(ready, Duration::from_secs(30))?;
                Ok(g)
            };
            // Each service in turn on the same path; the fetches first.
            let g = start(site, "static-website: serving")?;
            let times = fetches(&p.client, rounds).map_err(|e| format!("{target}: {e}\n{}", g.output()))?;
            drop(g);
            // A new unikernel has a new MAC address: the client's cached one
            // would hold its frames for seconds.
            p.client.ip(&["neigh", "flush", "dev", "lp0"])?;
            let g = start(network, "network: ")?;
            let up = uploads(&p.client, rounds).map_err(|e| format!("{target}: {e}\n{}", g.output()))?;
            drop(g);
            row(&format!("mirage-rs {target}"), shape, &times, up, p.counts());
        }
        let p = link(shape)?;
        let s = p.linux_server()?;
        let scratch = root().join("target/bench-path/nginx");
        let _n = crate::http::nginx(&s, SERVER, &htdocs, &scratch)?;
        linux_discard(&s)?;
        let times = fetches(&p.client, rounds)?;
        let up = uploads(&p.client, rounds)?;
        row("Linux (nginx, discard)", shape, &times, up, p.counts());
    }
    Ok(())
}

/// Each file's median fetch time, in milliseconds, from `client`.
fn fetches(client: &Netns, rounds: usize) -> Result<Vec<f64>, String> {
    client.enter(|| {
        FILES
            .iter()
            .map(|&(file, size)| {
                let mut t: Vec<f64> =
                    (0..rounds).map(|_| fetch(file, size).map(|d| d.as_secs_f64() * 1e3)).collect::<Result<_, _>>()?;
                Ok(median(&mut t))
            })
            .collect()
    })?
}

/// The uploads' median rate, in Mbit/s, from `client`.
fn uploads(client: &Netns, rounds: usize) -> Result<f64, String> {
    client.enter(|| {
        let mut up: Vec<f64> = (0..rounds)
            .map(|_| upload().map(|d| UPLOAD as f64 * 8.0 / d.as_secs_f64() / 1e6))
            .collect::<Result<_, _>>()?;
        Ok(median(&mut up))
    })?
}
