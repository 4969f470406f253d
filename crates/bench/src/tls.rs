//! `mirage-bench tls-handshake`: full and resumed TLS handshakes per second
//! in memory (no network), for each crypto provider that can be built
//! here, each certificate key type and each protocol version. Both sides
//! run in this process on one core; the figure is handshakes (client and
//! server work together) per second, and the server's own share is shown
//! by pairing every server with the same client (ring's, the fastest).
//!
//! The candidates: mirage-tls's own provider on the RustCrypto crates
//! (runs in Solo5 guests), and rustls' ring provider (C and assembly, and
//! getrandom for randomness: it does not build for a freestanding guest
//! here, so it is measured on unix only, as the reference).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mirage_devices::flow::{self, Flow};
use mirage_tls::rustls::{self, ClientConfig, HandshakeKind, ServerConfig, SupportedProtocolVersion};
use mirage_tls::{Certificates, TlsClient, TlsServer, WallTime, config};

/// One direction of an in-memory connection.
#[derive(Default)]
struct Pipe {
    data: VecDeque<u8>,
    closed: bool,
}

/// One end: reads from `rx`, writes to `tx`. A read with nothing to read
/// yields to the other side's task.
struct End {
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
}

fn pair() -> (End, End) {
    let (a, b) = (Rc::new(RefCell::new(Pipe::default())), Rc::new(RefCell::new(Pipe::default())));
    (End { rx: a.clone(), tx: b.clone() }, End { rx: b, tx: a })
}

impl Flow for End {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, flow::Error> {
        loop {
            {
                let mut rx = self.rx.borrow_mut();
                if !rx.data.is_empty() {
                    let n = buf.len().min(rx.data.len());
                    for (b, d) in buf.iter_mut().zip(rx.data.drain(..n)) {
                        *b = d;
                    }
                    return Ok(n);
                }
                if rx.closed {
                    return Ok(0);
                }
            }
            mirage_runtime::yield_now().await;
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<usize, flow::Error> {
        self.tx.borrow_mut().data.extend(data);
        Ok(data.len())
    }

    async fn flush(&mut self) -> Result<(), flow::Error> {
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), flow::Error> {
        self.tx.borrow_mut().closed = true;
        Ok(())
    }

    async fn close(self) -> Result<(), flow::Error> {
        self.tx.borrow_mut().closed = true;
        Ok(())
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// A self-signed certificate for `bench.test` with a key of `kind`.
fn certificate(dir: &Path, kind: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let newkey: &[&str] = match kind {
        "ecdsa-p256" => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "rsa-2048" => &["-newkey", "rsa:2048"],
        _ => &["-newkey", "ed25519"],
    };
    let (key, pem) = (format!("{kind}.key"), format!("{kind}.pem"));
    let mut args = vec!["req", "-x509"];
    args.extend(newkey);
    args.extend(["-nodes", "-keyout", &key, "-out", &pem, "-days", "2", "-subj", "/CN=bench.test"]);
    args.extend(["-addext", "subjectAltName=DNS:bench.test", "-addext", "basicConstraints=critical,CA:FALSE"]);
    openssl(dir, &args)?;
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| e.to_string());
    Ok((read(&pem)?, read(&key)?))
}

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    RustCrypto,
    Ring,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::RustCrypto => "mirage-tls (RustCrypto)",
            Provider::Ring => "ring",
        }
    }

    fn get(self) -> rustls::crypto::CryptoProvider {
        match self {
            Provider::RustCrypto => mirage_tls::provider::provider(),
            Provider::Ring => rustls::crypto::ring::default_provider(),
        }
    }
}

fn server(p: Provider, pem: &[u8], key: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let k = mirage_devices::kv::Key::root();
    let ck = config::certified_key(pem, key, &k, &k).map_err(|e| e.to_string())?;
    // The ring provider signs with its own key type.
    let ck = if p == Provider::Ring {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
        let signing = p.get().key_provider.load_private_key(der).map_err(|e| e.to_string())?;
        rustls::sign::CertifiedKey::new(ck.cert.clone(), signing)
    } else {
        ck
    };
    let certs = Certificates::new(vec![("bench".into(), Arc::new(ck))]);
    let time = Arc::new(WallTime(mirage_unix::WallClock));
    let mut c = ServerConfig::builder_with_details(Arc::new(p.get()), time.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    c.session_storage = rustls::server::ServerSessionMemoryCache::new::<config::SpinLock>(1024);
    c.ticketer = Arc::new(config::Ticketer::new(time).map_err(|e| e.to_string())?);
    Ok(Arc::new(c))
}

fn client(p: Provider, pem: &[u8], version: &'static SupportedProtocolVersion) -> Result<Arc<ClientConfig>, String> {
    let roots = config::roots(pem, &mirage_devices::kv::Key::root()).map_err(|e| e.to_string())?;
    let provider = Arc::new(p.get());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut c = ClientConfig::builder_with_details(provider, Arc::new(WallTime(mirage_unix::WallClock)))
        .with_protocol_versions(&[version])
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::store(Arc::new(rustls::client::ClientSessionMemoryCache::new::<
        config::SpinLock,
    >(64)));
    Ok(Arc::new(c))
}

/// One connection: handshake, one byte each way (so that TLS 1.3 tickets
/// reach the client), close. Whether it resumed.
async fn connection(s: Arc<ServerConfig>, c: Arc<ClientConfig>) -> Result<bool, String> {
    let (a, b) = pair();
    let name = rustls::pki_types::ServerName::try_from("bench.test").map_err(|e| e.to_string())?;
    let serve = async move {
        let mut t = TlsServer::server(a, s).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        t.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        t.write_all(&buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let talk = async move {
        let mut t = TlsClient::client(b, c, name).map_err(|e| e.to_string())?;
        t.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        t.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(t.handshake_kind() == Some(HandshakeKind::Resumed))
    };
    let (s, c) = mirage_runtime::join(serve, talk).await;
    s?;
    c
}

/// Handshakes per second over `count` connections; full ones use a fresh
/// client config each time (nothing to resume).
fn rate(
    s: &Arc<ServerConfig>,
    make_client: &dyn Fn() -> Result<Arc<ClientConfig>, String>,
    count: usize,
    resumed: bool,
) -> Result<f64, String> {
    let shared = make_client()?;
    let mut platform = mirage_unix::UnixPlatform::new();
    if resumed {
        // The first connection gets the session.
        mirage_runtime::run(&mut platform, connection(s.clone(), shared.clone()))?;
    }
    let start = Instant::now();
    for _ in 0..count {
        let c = if resumed { shared.clone() } else { make_client()? };
        let r = mirage_runtime::run(&mut platform, connection(s.clone(), c))?;
        if r != resumed {
            return Err(format!("a connection {} resumed", if r { "was" } else { "was not" }));
        }
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

pub fn handshakes(count: usize) -> Result<(), String> {
    mirage_tls::rng::install(mirage_unix::Random).map_err(|e| e.to_string())?;
    let scratch = testkit::Scratch::new("tls-bench");
    println!("TLS handshakes per second, in memory, client and server on one core ({count} connections each)");
    println!(
        "{:<26} {:<11} {:<8} {:>10} {:>10} {:>10}",
        "server provider", "key", "version", "full", "full*", "resumed"
    );
    println!("{:<26} {:<11} {:<8} {:>10} {:>10} {:>10}", "", "", "", "", "(ring cli)", "");
    for kind in ["ecdsa-p256", "rsa-2048", "ed25519"] {
        let (pem, key) = certificate(&scratch.0, kind)?;
        for p in [Provider::RustCrypto, Provider::Ring] {
            let s = server(p, &pem, &key)?;
            for (vname, version) in [("TLS1.3", &rustls::version::TLS13), ("TLS1.2", &rustls::version::TLS12)] {
                let same = || client(p, &pem, version);
                let ring = || client(Provider::Ring, &pem, version);
                let n = if kind == "rsa-2048" && p == Provider::RustCrypto { count / 4 } else { count }.max(1);
                let full = rate(&s, &same, n, false)?;
                let full_ring = rate(&s, &ring, n, false)?;
                let resumed = rate(&s, &same, count, true)?;
                println!("{:<26} {kind:<11} {vname:<8} {full:>10.0} {full_ring:>10.0} {resumed:>10.0}", p.name());
            }
        }
    }
    Ok(())
}

/// `openssl s_time` against `addr` for `secs`: connections per second
/// (by the wall clock), full handshakes (`-new`) or resumed (`-reuse`);
/// each fetches `/small.html`.
fn s_time(ns: &testkit::Netns, addr: &str, mode: &str, secs: u64) -> Result<f64, String> {
    let out = ns
        .command("openssl")
        .args(["s_time", "-connect", addr, mode, "-time", &secs.to_string(), "-www", "/small.html"])
        .output()
        .map_err(|e| format!("openssl s_time: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "1234 connections in 11 real seconds, 1024 bytes read per connection"
    let line = text.lines().find(|l| l.contains("real seconds")).ok_or(format!("s_time printed no rate:\n{text}"))?;
    let mut words = line.split_whitespace();
    let conns: f64 = words.next().and_then(|w| w.parse().ok()).ok_or(format!("s_time: {line}"))?;
    let real: f64 = words.nth(2).and_then(|w| w.parse().ok()).ok_or(format!("s_time: {line}"))?;
    Ok(conns / real.max(1.0))
}

/// A server under test, a unikernel or nginx: held until dropped.
struct Under {
    _unikernel: Option<testkit::Background>,
    _nginx: Option<crate::http::Nginx>,
}

fn serve(ns: &testkit::Netns, target: &str, site: &Path, dir: &Path, kind: &str) -> Result<(Under, String), String> {
    if target == "nginx" {
        let conf = dir.join("nginx-tls.conf");
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
        let text = format!(
            "worker_processes 1;\ndaemon off;\nerror_log stderr warn;\npid {d}/nginx.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  ssl_session_cache shared:tls:1m;\n  ssl_session_tickets on;\n  server {{\n    listen 10.0.0.1:443 ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {d}/{kind}/a.pem;\n    ssl_certificate_key {d}/{kind}/a.key;\n    root {d}/htdocs;\n  }}\n}}\n",
            d = dir.display()
        );
        std::fs::write(&conf, text).map_err(|e| e.to_string())?;
        let mut c = ns.command("nginx");
        c.arg("-c").arg(&conf).arg("-p").arg(dir);
        let g = testkit::Background::start(c)?;
        let to = std::net::SocketAddr::from(([10, 0, 0, 1], 443));
        let started = Instant::now();
        while ns.enter(|| std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(200)).is_err())? {
            if started.elapsed().as_secs() > 10 {
                return Err(format!("nginx did not start (apt-get install nginx-light):\n{}", g.output()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        return Ok((Under { _unikernel: None, _nginx: Some(crate::http::Nginx(g)) }, "10.0.0.1".into()));
    }
    // The files are compiled in, as in `mirage-bench http`: a tar store
    // on spt reads its block device a sector per system call.
    let image = crate::http::build_named(site, target, "static-website-tls")?;
    let certs = format!("--block:certs={}", dir.join(format!("{kind}.img")).display());
    let mut c = ns.unikernel(target, &image, &["--net:service=tap0", &certs]);
    // One load generator is one host: it measures the server's capacity
    // only without the allowance that holds each host to 50 new
    // connections a second.
    c.args(["--ipv4=10.0.0.2/24", "--http-port=0", "--idle-timeout=120", "--logs=http:warn,tls:warn"]);
    c.arg("--handshakes-per-host=0");
    let mut g = testkit::Background::start(c)?;
    g.wait_for("static-website-tls: serving", std::time::Duration::from_secs(60))?;
    Ok((Under { _unikernel: Some(g), _nginx: None }, "10.0.0.2".into()))
}

/// `mirage-bench tls`: static-website-tls on spt and hvt (its files
/// compiled in) beside nginx with OpenSSL (one worker, the same
/// certificate and files): full
/// and resumed handshakes per second (openssl s_time) for ECDSA P-256 and
/// RSA 2048, requests per second for a small file over keep-alive TLS at
/// 1, 64 and 256 connections (wrk), MB/s for a 1 MiB file.
pub fn serving(secs: u64) -> Result<(), String> {
    let scratch = testkit::root().join("target/bench-tls");
    let _ = std::fs::remove_dir_all(&scratch);
    // nginx serves the files of the unikernel's copy of the example.
    let site = crate::http::site_copy("static-website-tls", &["tls/README"])?;
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(scratch.join("htdocs"));
    std::os::unix::fs::symlink(site.join("htdocs"), scratch.join("htdocs")).map_err(|e| e.to_string())?;
    let tar = |args: &[&str]| -> Result<(), String> {
        let st =
            std::process::Command::new("tar").args(args).current_dir(&scratch).status().map_err(|e| e.to_string())?;
        if st.success() { Ok(()) } else { Err(format!("tar {args:?} failed")) }
    };
    for kind in ["ecdsa-p256", "rsa-2048"] {
        let dir = scratch.join(kind);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let (pem, key) = certificate(&dir, kind)?;
        std::fs::write(dir.join("a.pem"), pem).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("a.key"), key).map_err(|e| e.to_string())?;
        tar(&["-C", kind, "-cf", &format!("{kind}.img"), "a.pem", "a.key"])?;
    }
    println!("TLS serving, {secs} s per figure; clients (openssl s_time, wrk) in the unikernel's network namespace;");
    println!(
        "nginx (one worker, OpenSSL) listens on the namespace's tap address, so its traffic does not cross the tap device."
    );
    println!("| server | key | full handshakes/s | resumed/s | req/s c=1 | req/s c=64 | req/s c=256 | 1 MiB MB/s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for target in ["spt", "hvt", "nginx"] {
        for kind in ["ecdsa-p256", "rsa-2048"] {
            let ns = testkit::Netns::new()?;
            let (under, ip) = serve(&ns, target, &site, &scratch, kind)?;
            let addr = format!("{ip}:443");
            let full = s_time(&ns, &addr, "-new", secs)?;
            let resumed = s_time(&ns, &addr, "-reuse", secs)?;
            let mut row = format!("| {target} | {kind} | {full:.0} | {resumed:.0} |");
            if kind == "ecdsa-p256" {
                for c in [1, 64, 256] {
                    let w = crate::http::wrk(&ns, &format!("https://{ip}/small.html"), c, secs)?;
                    row.push_str(&format!(" {:.0} |", w.rps));
                }
                let w = crate::http::wrk(&ns, &format!("https://{ip}/big.bin"), 1, secs)?;
                row.push_str(&format!(" {:.1} |", w.rps * (1 << 20) as f64 / 1e6));
            } else {
                row.push_str(" | | | |");
            }
            println!("{row}");
            drop(under);
        }
    }
    Ok(())
}
