//! TLS end to end: the `static-website-tls` example on unix (on a tap
//! device), hvt and spt, each in a network namespace of the test's own,
//! with certificates made at test time by the openssl command (a CA, and
//! leaves with ECDSA P-256, RSA 2048 and Ed25519 keys) in a tar archive on
//! the block device "certs": curl and `openssl s_client` on TLS 1.3 and
//! 1.2, each key type chosen by SNI, ALPN, resumption, the redirect from
//! HTTP with HSTS, refusals with their reason, old protocols refused, and
//! hostile peers while a good client keeps being served. And the
//! `tls-client` example against `openssl s_server` and nginx.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testkit::{Background, Netns, Scratch, example_with, root, run_with};

use crate::{Case, Needs, case};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// The names of the certificates: one per key type, in the store's order
/// (the first is the default for clients that send no SNI).
const SITES: [(&str, &str); 3] = [("a-ec", "ec.test"), ("b-rsa", "rsa.test"), ("c-ed25519", "ed.test")];

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Makes the CA and the three leaves in `dir`, and the tar archive of the
/// leaves; the archive's path.
fn certificates(dir: &Path) -> Result<PathBuf, String> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=mirage-rs e2e CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    )?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store).map_err(|e| e.to_string())?;
    for (file, name) in SITES {
        let newkey: &[&str] = match file {
            "a-ec" => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "b-rsa" => &["-newkey", "rsa:2048"],
            _ => &["-newkey", "ed25519"],
        };
        let (key, csr, pem, ext) =
            (format!("store/{file}.key"), format!("{file}.csr"), format!("store/{file}.pem"), format!("{file}.ext"));
        let mut args = vec!["req", "-new"];
        args.extend(newkey);
        let subj = format!("/CN={name}");
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args)?;
        std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"))
            .map_err(|e| e.to_string())?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        )?;
    }
    let img = dir.join("certs.img");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&store).arg("-cf").arg(&img);
    for (file, _) in SITES {
        tar.args([format!("{file}.pem"), format!("{file}.key")]);
    }
    if !tar.status().map_err(|e| e.to_string())?.success() {
        return Err("tar failed".into());
    }
    Ok(img)
}

/// Starts static-website-tls on `t` in `ns` with the certificate archive.
fn start(ns: &Netns, t: &str, certs: &Path) -> Result<Background, String> {
    start_with(ns, t, certs, &[])
}

/// As [`start`], with more boot arguments.
fn start_with(ns: &Netns, t: &str, certs: &Path, more: &[&str]) -> Result<Background, String> {
    let keys: &[&str] = if t == "unix" { &["--net=direct"] } else { &[] };
    let image = example_with(t, "static-website-tls", keys)?;
    let block = format!("--block:certs={}", certs.display());
    let mut c = ns.unikernel(t, &image, &["--net:service=tap0", &block]);
    c.args(["--ipv4=10.0.0.2/24", "--header-timeout=3", "--idle-timeout=5"]).args(more);
    let mut bg = Background::start(c)?;
    bg.wait_for("static-website-tls: serving", Duration::from_secs(60))?;
    Ok(bg)
}

/// curl in `ns`: exit status, `%{http_code}`, head, body, stderr.
struct Curl {
    code: i32,
    status: String,
    head: String,
    body: Vec<u8>,
    err: String,
}

fn curl(ns: &Netns, dir: &Path, url: &str, args: &[&str]) -> Result<Curl, String> {
    let scratch = Scratch::new("tls-curl");
    let (head, body) = (scratch.0.join("head"), scratch.0.join("body"));
    let mut c = ns.command("curl");
    c.args(["-s", "-S", "--max-time", "30", "-D"]).arg(&head).arg("-o").arg(&body).args(["-w", "%{http_code}"]);
    for (_, name) in SITES {
        c.args(["--resolve", &format!("{name}:443:{GUEST}"), "--resolve", &format!("{name}:80:{GUEST}")]);
    }
    c.args(["--resolve", &format!("other.test:443:{GUEST}")]);
    c.current_dir(dir).args(args).arg(url);
    let r = run_with(c, Duration::from_secs(40))?;
    Ok(Curl {
        code: r.code.unwrap_or(-1),
        status: r.stdout.trim().to_string(),
        head: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        err: r.stderr.clone(),
    })
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn index() -> Vec<u8> {
    std::fs::read(root().join("examples/static-website-tls/htdocs/index.html")).unwrap_or_default()
}

/// `openssl s_client` in `ns` with `args`, given `input`; its output.
fn s_client(ns: &Netns, dir: &Path, args: &[&str], input: &str) -> Result<String, String> {
    let mut c = ns.command("timeout");
    c.args(["30", "openssl", "s_client", "-connect", &format!("{GUEST}:443"), "-CAfile", "ca.pem"]);
    c.args(args).current_dir(dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("openssl s_client: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
        // s_client reads its input, then waits a moment for the answer.
        std::thread::sleep(Duration::from_millis(1500));
        drop(stdin);
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn serves_over_tls(ns: &Netns, dir: &Path) -> Result<(), String> {
    let ca = ["--cacert", "ca.pem"];
    // Each key type, chosen by SNI, on TLS 1.3 and on TLS 1.2.
    for (_, name) in SITES {
        for version in [["--tlsv1.3", "--tls-max", "1.3"], ["--tlsv1.2", "--tls-max", "1.2"]] {
            let mut args = ca.to_vec();
            args.extend(version);
            let g = curl(ns, dir, &format!("https://{name}/"), &args)?;
            if g.code != 0 || g.status != "200" || g.body != index() {
                return Err(format!("{name} {version:?}: curl {} status {}: {}", g.code, g.status, g.err));
            }
            if header(&g.head, "strict-transport-security").as_deref() != Some("max-age=31536000") {
                return Err(format!("{name}: no HSTS header:\n{}", g.head));
            }
        }
    }
    // HTTP is sent to HTTPS.
    let g = curl(ns, dir, "http://ec.test/docs/?q=1", &[])?;
    if g.status != "301" || header(&g.head, "location").as_deref() != Some("https://ec.test/docs/?q=1") {
        return Err(format!("the HTTP redirect: {} {}", g.status, g.head));
    }
    // And curl follows it.
    let g = curl(ns, dir, "http://ec.test/", &["-L", "--cacert", "ca.pem"])?;
    if g.body != index() {
        return Err(format!("following the redirect: {} {}", g.status, g.err));
    }
    // Refusals, each with curl's reason: an unknown CA, another name.
    let g = curl(ns, dir, "https://ec.test/", &[])?;
    if g.code != 60 || !g.err.contains("local issuer certificate") {
        return Err(format!("without the CA: curl {} {}", g.code, g.err));
    }
    let g = curl(ns, dir, "https://other.test/", &ca)?;
    if g.code != 60 || !g.err.contains("other.test") {
        return Err(format!("another name: curl {} {}", g.code, g.err));
    }
    // openssl s_client: ALPN, the version and suite, the certificate by SNI.
    let out = s_client(ns, dir, &["-servername", "rsa.test", "-alpn", "http/1.1", "-tls1_3"], "")?;
    for want in ["ALPN protocol: http/1.1", "TLSv1.3", "Verify return code: 0 (ok)", "CN = rsa.test"] {
        if !out.contains(want) {
            return Err(format!("s_client -tls1_3 rsa.test: no {want:?} in\n{out}"));
        }
    }
    let out = s_client(ns, dir, &["-servername", "ed.test", "-tls1_2"], "")?;
    for want in ["Protocol  : TLSv1.2", "CN = ed.test", "Verify return code: 0 (ok)"] {
        if !out.contains(want) {
            return Err(format!("s_client -tls1_2 ed.test: no {want:?} in\n{out}"));
        }
    }
    // Resumption. TLS 1.2: s_client reconnects five times with the session
    // it got. TLS 1.3: the ticket comes after the handshake, which
    // -reconnect does not wait for; a first connection saves it, a
    // second offers it.
    let out = s_client(ns, dir, &["-servername", "ec.test", "-tls1_2", "-reconnect"], "")?;
    let reused = out.matches("Reused, TLSv1.2").count();
    if reused < 4 {
        return Err(format!("s_client -tls1_2 -reconnect: {reused} sessions reused\n{out}"));
    }
    s_client(ns, dir, &["-servername", "ec.test", "-tls1_3", "-sess_out", "session.pem"], "")?;
    let out = s_client(ns, dir, &["-servername", "ec.test", "-tls1_3", "-sess_in", "session.pem"], "")?;
    if !out.contains("Reused, TLSv1.3") {
        return Err(format!("s_client -tls1_3 -sess_in: not resumed\n{out}"));
    }
    // Older protocols are refused.
    for version in ["-tls1_1", "-tls1"] {
        let out = s_client(ns, dir, &["-servername", "ec.test", version, "-cipher", "DEFAULT@SECLEVEL=0"], "")?;
        // rustls answers with a handshake_failure alert: no version in common.
        if !out.contains("Cipher is (NONE)") || !out.contains("no peer certificate available") || !out.contains("alert")
        {
            return Err(format!("s_client {version} was not refused:\n{out}"));
        }
    }
    Ok(())
}

/// A client that fetches the page over HTTPS in a loop until stopped.
struct Good {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Good {
    fn start(ns: &Netns, dir: &Path) -> Good {
        let (stop, served, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, ok, bad) = (stop.clone(), served.clone(), failed.clone());
        let mut cmd = ns.command("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cacert", "ca.pem"]);
        cmd.args(["--resolve", &format!("ec.test:443:{GUEST}"), "https://ec.test/"]).current_dir(dir);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match cmd.output() {
                    Ok(o) if o.stdout == b"200" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Good { stop, served, failed, thread: Some(thread) }
    }

    /// Stops; (served, failed).
    fn stop(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.served.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

fn connect() -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&SocketAddr::from((GUEST, 443)), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Sends `bytes` and reads what comes back until the server closes.
fn answer_to(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = connect()?;
    // A server that refuses what it has read so far may close before the
    // rest is written: the write then fails with a broken pipe or a reset,
    // and what the server answered is still read.
    if let Err(e) = s.write_all(bytes)
        && !matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
    {
        return Err(e.to_string());
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    Ok(got)
}

/// A real ClientHello, as openssl sends it: captured on a local listener.
fn client_hello() -> Result<Vec<u8>, String> {
    client_hello_for("ec.test")
}

/// The ClientHello openssl sends to `name`.
fn client_hello_for(name: &str) -> Result<Vec<u8>, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let mut child = Command::new("timeout")
        .args(["5", "openssl", "s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    drop(s);
    let _ = child.wait();
    Ok([&head[..], &body].concat())
}

fn hostile_peers(ns: &Netns, dir: &Path, t: &str) -> Result<(), String> {
    let hello = client_hello()?;
    let good = Good::start(ns, dir);
    let started = Instant::now();
    let result = ns.enter(|| -> Result<(), String> {
        // Not TLS: an alert answers (record type 21), then the close.
        let got = answer_to(b"GET / HTTP/1.1\r\nHost: ec.test\r\n\r\n")?;
        if got.first() != Some(&21) {
            return Err(format!("plain HTTP on 443: answered {got:?}"));
        }
        // Garbage records of every content type.
        for typ in [20u8, 21, 22, 23, 24, 99] {
            let mut rec = vec![typ, 3, 3, 0, 64];
            rec.extend(testkit::noise(u64::from(typ) + 7, 64));
            answer_to(&rec)?;
        }
        // A handshake message announcing 16 MiB, in records that follow.
        let mut big = vec![22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff];
        big.extend(vec![0u8; 0x4000 - 4]);
        for _ in 0..5 {
            big.extend([22, 3, 1, 0x40, 0]);
            big.extend(vec![0u8; 0x4000]);
        }
        answer_to(&big)?;
        // A record longer than TLS allows.
        answer_to(&[22, 3, 1, 0xff, 0xff])?;
        // A truncated ClientHello, then the close.
        answer_to(&hello[..hello.len() / 2])?;
        // The ClientHello a byte at a time: the server answers with its
        // ServerHello (a handshake record).
        let mut s = connect()?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        for b in &hello {
            s.write_all(&[*b]).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut first = [0u8; 1];
        s.read_exact(&mut first).map_err(|e| format!("no answer to a trickled ClientHello: {e}"))?;
        if first[0] != 22 {
            return Err(format!("a trickled ClientHello was answered with a record of type {}", first[0]));
        }
        drop(s);
        // A ClientHello trickled too slowly to end in time (a byte every
        // 250 ms): the connection is closed at the header timeout (3 s)
        // from its start, not at the idle timeout (5 s), however steadily
        // the bytes come.
        let mut s = connect()?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut reader = s.try_clone().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let watch = std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            started.elapsed()
        });
        for b in &hello {
            if watch.is_finished() || s.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(8) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let closed = watch.join().map_err(|_| "the watching thread panicked".to_string())?;
        if !(Duration::from_millis(2500)..Duration::from_millis(4800)).contains(&closed) {
            return Err(format!("a trickled handshake was closed after {closed:?}, not at the header timeout (3 s)"));
        }
        drop(s);
        // 1000 half-open handshakes: each sends half a ClientHello and
        // waits; the server keeps serving, and times them out.
        let mut open = Vec::new();
        for _ in 0..1000 {
            match connect() {
                Ok(mut s) => {
                    let _ = s.write_all(&hello[..hello.len() / 2]);
                    open.push(s);
                }
                Err(_) => break,
            }
        }
        if open.len() < 1000 {
            return Err(format!("only {} half-open handshakes were accepted", open.len()));
        }
        std::thread::sleep(Duration::from_secs(2));
        drop(open);
        Ok(())
    })?;
    // Renegotiation on TLS 1.2: rustls refuses it; the connection is not
    // upset beyond that.
    let out = s_client(ns, dir, &["-servername", "ec.test", "-tls1_2"], "R\n")?;
    if !out.contains("Protocol  : TLSv1.2") {
        return Err(format!("the renegotiating client did not connect:\n{out}"));
    }
    let (served, failed) = good.stop();
    eprintln!(
        "{t}: hostile TLS peers for {:?}: the good client was served {served} times, failed {failed}",
        started.elapsed()
    );
    result?;
    if served < 5 || failed > served / 10 {
        return Err(format!("the good client was served {served} times and failed {failed} times"));
    }
    Ok(())
}

/// The address the flooding host sends from: a second address of the
/// test's end of the tap.
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

/// One host replays a captured ClientHello (for the RSA certificate, the
/// costliest handshake to answer) from eight threads for 6 s, each
/// connection closed once the first record comes back, while a good
/// client from the other address is served every 100 ms: the flooding
/// host gets at most its handshake allowance answered (the rest reset
/// before any crypto), and the good client is served every time. Prints
/// both sides' figures.
fn handshake_flood(ns: &Netns, dir: &Path, t: &str) -> Result<(), String> {
    let hello = Arc::new(client_hello_for("rsa.test")?);
    ns.ip(&["addr", "add", &format!("{FLOODER}/24"), "dev", "tap0"])?;
    let stop = Arc::new(AtomicBool::new(false));
    // The good client: curl, its time for each request.
    let mut cmd = ns.command("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "10", "--cacert", "ca.pem"]);
    cmd.args(["--resolve", &format!("rsa.test:443:{GUEST}"), "https://rsa.test/"]).current_dir(dir);
    let s = stop.clone();
    let good = std::thread::spawn(move || {
        let (mut times, mut failed) = (Vec::new(), 0);
        while !s.load(Ordering::Relaxed) {
            match cmd.output() {
                Ok(o) if o.stdout.starts_with(b"200 ") => {
                    let secs: f64 = String::from_utf8_lossy(&o.stdout[4..]).trim().parse().unwrap_or(10.0);
                    times.push(Duration::from_secs_f64(secs));
                }
                _ => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (times, failed)
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let flood = ns.enter(|| {
        (0..8)
            .map(|_| {
                let (hello, stop) = (hello.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut answered, mut refused) = (0u32, 0u32);
                    let to = socket2::SockAddr::from(SocketAddr::from((GUEST, 443)));
                    let from = socket2::SockAddr::from(SocketAddr::from((FLOODER, 0)));
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) else {
                            break;
                        };
                        if sock.bind(&from).is_err() || sock.connect_timeout(&to, Duration::from_secs(2)).is_err() {
                            refused += 1;
                            continue;
                        }
                        let mut s: TcpStream = sock.into();
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut first = [0u8; 1];
                        match s.write_all(&hello).and_then(|()| s.read_exact(&mut first)) {
                            Ok(()) if first[0] == 22 => answered += 1,
                            _ => refused += 1,
                        }
                    }
                    (answered, refused)
                })
            })
            .collect::<Vec<_>>()
    })?;
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut refused) = (0, 0);
    for h in flood {
        let (a, r) = h.join().map_err(|_| "a flooding thread panicked")?;
        answered += a;
        refused += r;
    }
    let took = started.elapsed();
    let (mut times, failed) = good.join().map_err(|_| "the good client panicked")?;
    times.sort();
    let pick = |q: f64| times.get(((times.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    eprintln!(
        "{t}: one host replaying ClientHellos for {took:.1?}: {answered} answered ({:.0}/s), {refused} refused; the good client served {} times (p50 {:?}, p90 {:?}, max {:?}), failed {failed}",
        f64::from(answered) / took.as_secs_f64(),
        times.len(),
        pick(0.5),
        pick(0.9),
        pick(1.0),
    );
    if times.len() < 20 || failed > 0 {
        return Err(format!("the good client was served {} times and failed {failed} times", times.len()));
    }
    // The default allowance: 100 at once, then 50 a second (and a tenth
    // more, for the clocks' difference).
    let allowed = 100.0 + 50.0 * took.as_secs_f64() * 1.1;
    if f64::from(answered) > allowed || refused == 0 {
        return Err(format!("the flooding host had {answered} handshakes answered, more than its {allowed:.0}"));
    }
    Ok(())
}

pub fn cases(v: &mut Vec<Case>) {
    client_cases(v);
    scanner_cases(v);
    for t in ["unix", "hvt", "spt"] {
        v.push(case(format!("{t}::tls_serves_https_to_curl_and_openssl"), Needs::Net(t), move || {
            let scratch = Scratch::new("tls");
            let certs = certificates(&scratch.0)?;
            let ns = Netns::new()?;
            let g = start(&ns, t, &certs)?;
            serves_over_tls(&ns, &scratch.0).map_err(|e| format!("{e}\n{}", g.output()))
        }));
        v.push(case(format!("{t}::tls_handshake_flood_from_one_host"), Needs::Net(t), move || {
            let scratch = Scratch::new("tls");
            let certs = certificates(&scratch.0)?;
            let ns = Netns::new()?;
            let g = start(&ns, t, &certs)?;
            handshake_flood(&ns, &scratch.0, t).map_err(|e| format!("{e}\n{}", g.output()))
        }));
        v.push(case(format!("{t}::tls_survives_hostile_peers"), Needs::Net(t), move || {
            let scratch = Scratch::new("tls");
            let certs = certificates(&scratch.0)?;
            let ns = Netns::new()?;
            // Its thousand half-open handshakes come from one host, beyond
            // a host's allowance of new connections (tested apart, above):
            // here they test what the server holds for them.
            let g = start_with(&ns, t, &certs, &["--handshakes-per-host=0", "--max-connections-per-host=0"])?;
            hostile_peers(&ns, &scratch.0, t).map_err(|e| format!("{e}\n{}", g.output()))
        }));
    }
}

/// Waits until something listens on 10.0.0.1:`port` in `ns`.
fn listening(ns: &Netns, port: u16, what: &Background) -> Result<(), String> {
    let to = SocketAddr::from(([10, 0, 0, 1], port));
    let started = Instant::now();
    while ns.enter(|| TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_err())? {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("nothing listens on {to}:\n{}", what.output()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs tls-client on `t` in `ns` against 10.0.0.1:`port` for `name`; its
/// exit status and output.
fn fetch(ns: &Netns, t: &str, cas: &Path, port: u16, name: &str) -> Result<(i32, String), String> {
    fetch_with(ns, t, cas, port, name, &[])
}

/// As [`fetch`], with more boot arguments.
fn fetch_with(ns: &Netns, t: &str, cas: &Path, port: u16, name: &str, more: &[&str]) -> Result<(i32, String), String> {
    let keys: &[&str] = if t == "unix" { &["--net=direct"] } else { &[] };
    let image = example_with(t, "tls-client", keys)?;
    let block = format!("--block:cas={}", cas.display());
    let mut c = ns.unikernel(t, &image, &["--net:service=tap0", &block]);
    c.args(["--ipv4=10.0.0.2/24", "--server=10.0.0.1", &format!("--port={port}"), &format!("--name={name}")]);
    c.args(more);
    let mut bg = Background::start(c)?;
    let code = bg.wait(Duration::from_secs(60))?;
    Ok((code, bg.output()))
}

fn client_fetches(ns: &Netns, dir: &Path, t: &str) -> Result<(), String> {
    // The CA as the client's trust store.
    let cas = dir.join("cas.img");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&cas)
        .arg("ca.pem")
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("tar failed".into());
    }
    // openssl s_server, TLS 1.3, with the ECDSA certificate; a fresh one
    // for each fetch (it serves one connection at a time, and one that
    // lingers would hold up the next).
    let s_server = || -> Result<Background, String> {
        let mut c = ns.command("openssl");
        c.args(["s_server", "-accept", "4433", "-cert", "store/a-ec.pem", "-key", "store/a-ec.key", "-www"]);
        c.current_dir(dir);
        let s = Background::start(c)?;
        listening(ns, 4433, &s)?;
        Ok(s)
    };
    let server = s_server()?;
    let (code, out) = fetch(ns, t, &cas, 4433, "ec.test")?;
    if code != 0 || !out.contains("as ec.test: TLSv1_3") || !out.contains("HTTP/1.0 200 ok") {
        return Err(format!("tls-client against openssl s_server: status {code}\n{out}\n{}", server.output()));
    }
    drop(server);
    // The same server for a name its certificate does not carry: refused,
    // with the reason.
    let server = s_server()?;
    let (code, out) = fetch(ns, t, &cas, 4433, "rsa.test")?;
    if code == 0 || !out.contains("not valid for the name") {
        return Err(format!("tls-client for the wrong name: status {code}\n{out}\n{}", server.output()));
    }
    drop(server);
    // nginx, TLS 1.2 only, with the RSA certificate (one process: a
    // SIGKILL ends it whole).
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
    let conf = dir.join("nginx.conf");
    let text = format!(
        "master_process off;\ndaemon off;\nerror_log stderr warn;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{\n    listen 10.0.0.1:8443 ssl;\n    ssl_protocols TLSv1.2;\n    ssl_certificate {d}/store/b-rsa.pem;\n    ssl_certificate_key {d}/store/b-rsa.key;\n    location / {{ return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(&conf, text).map_err(|e| e.to_string())?;
    let mut c = ns.command("nginx");
    c.arg("-c").arg(&conf).arg("-p").arg(dir);
    let nginx = Background::start(c)?;
    listening(ns, 8443, &nginx)?;
    let (code, out) = fetch(ns, t, &cas, 8443, "rsa.test")?;
    if code != 0 || !out.contains("as rsa.test: TLSv1_2") || !out.contains("hello from nginx") {
        return Err(format!("tls-client against nginx: status {code}\n{out}\nnginx:\n{}", nginx.output()));
    }
    drop(nginx);
    // A server that completes the handshake, takes the request and then
    // sends nothing (openssl s_server without -www, its input held open):
    // the client gives up after 30 s of silence, with a message.
    let mut c = ns.command("bash");
    c.arg("-c")
        .arg("exec openssl s_server -naccept 2 -accept 4434 -cert store/a-ec.pem -key store/a-ec.key < <(sleep 90)");
    c.current_dir(dir);
    let silent = Background::start(c)?;
    // The look for a listener is the first of the two connections.
    listening(ns, 4434, &silent)?;
    let started = Instant::now();
    let (code, out) = fetch(ns, t, &cas, 4434, "ec.test")?;
    let took = started.elapsed();
    if code == 0 || !out.contains("ec.test sent nothing for 30 s after 0 bytes") || !(29..50).contains(&took.as_secs())
    {
        return Err(format!("tls-client against a silent server: status {code} after {took:?}\n{out}"));
    }
    drop(silent);
    // A server that trickles its response, a byte a second, never silent
    // for long: the client gives up at its deadline (5 s here), with a
    // message.
    let mut c = ns.command("bash");
    c.arg("-c").arg(
        "exec openssl s_server -naccept 2 -accept 4435 -cert store/a-ec.pem -key store/a-ec.key < <(while :; do printf x; sleep 1; done)",
    );
    c.current_dir(dir);
    let trickle = Background::start(c)?;
    listening(ns, 4435, &trickle)?;
    let started = Instant::now();
    let (code, out) = fetch_with(ns, t, &cas, 4435, "ec.test", &["--deadline=5"])?;
    let took = started.elapsed();
    if code == 0 || !out.contains("ec.test: no whole response within 5 s (--deadline)") || took.as_secs() > 30 {
        return Err(format!("tls-client against a trickling server: status {code} after {took:?}\n{out}"));
    }
    Ok(())
}

pub fn client_cases(v: &mut Vec<Case>) {
    for t in ["unix", "hvt", "spt"] {
        let needs = Needs::Program { name: "nginx", package: "nginx-light" };
        v.push(case(format!("{t}::tls_client_fetches_from_openssl_and_nginx"), needs, move || {
            if let Some(why) = testkit::missing(t).or_else(testkit::missing_net) {
                return Err(why);
            }
            let scratch = Scratch::new("tls-client");
            certificates(&scratch.0)?;
            let ns = Netns::new()?;
            client_fetches(&ns, &scratch.0, t)
        }));
    }
}

/// sslyze's verdict on the server, from its JSON: what a scanner finds
/// offered must be TLS 1.2 and 1.3 only, with ECDHE and AEAD suites only,
/// no compression, no insecure renegotiation, no Heartbleed, no ROBOT.
fn scanned(ns: &Netns, dir: &Path) -> Result<String, String> {
    let json = dir.join("sslyze.json");
    let mut c = ns.command("sslyze");
    c.args(["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--reneg", "--compression"]);
    c.args(["--heartbleed", "--robot", "--fallback", "--elliptic_curves", "--json_out"]).arg(&json);
    c.arg(format!("ec.test:443{{{GUEST}}}"));
    let r = run_with(c, Duration::from_secs(300))?;
    let text = std::fs::read_to_string(&json).map_err(|e| format!("sslyze wrote no JSON ({e}): {}", r.dump()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("sslyze's JSON: {e}"))?;
    let result = &v["server_scan_results"][0]["scan_result"];
    let accepted = |key: &str| -> Result<Vec<String>, String> {
        let r = &result[key];
        if r["status"] != "COMPLETED" {
            return Err(format!("sslyze did not complete {key}: {}", r));
        }
        Ok(r["result"]["accepted_cipher_suites"]
            .as_array()
            .ok_or(format!("no accepted_cipher_suites in {key}"))?
            .iter()
            .map(|s| s["cipher_suite"]["name"].as_str().unwrap_or("?").to_string())
            .collect())
    };
    let mut problems = Vec::new();
    for old in ["ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"] {
        let a = accepted(old)?;
        if !a.is_empty() {
            problems.push(format!("{old} accepted: {a:?}"));
        }
    }
    let tls12 = accepted("tls_1_2_cipher_suites")?;
    let tls13 = accepted("tls_1_3_cipher_suites")?;
    if tls12.is_empty() || tls13.is_empty() {
        problems.push(format!("TLS 1.2 suites {tls12:?}, TLS 1.3 suites {tls13:?}: both should be offered"));
    }
    for s in &tls12 {
        if !s.starts_with("TLS_ECDHE_") || !(s.contains("_GCM_") || s.contains("CHACHA20_POLY1305")) {
            problems.push(format!("weak TLS 1.2 suite accepted: {s}"));
        }
    }
    let flag = |key: &str, field: &str| result[key]["result"][field].clone();
    if flag("heartbleed", "is_vulnerable_to_heartbleed") != serde_json::Value::Bool(false) {
        problems.push(format!("heartbleed: {}", result["heartbleed"]));
    }
    if flag("tls_compression", "supports_compression") != serde_json::Value::Bool(false) {
        problems.push(format!("compression: {}", result["tls_compression"]));
    }
    if flag("session_renegotiation", "is_vulnerable_to_client_renegotiation_dos") != serde_json::Value::Bool(false) {
        problems.push(format!("renegotiation: {}", result["session_renegotiation"]));
    }
    let robot = flag("robot", "robot_result").as_str().unwrap_or("?").to_string();
    if !robot.starts_with("NOT_VULNERABLE") {
        problems.push(format!("ROBOT: {robot}"));
    }
    if problems.is_empty() {
        Ok(format!("TLS 1.3 {tls13:?}; TLS 1.2 {tls12:?}; ROBOT {robot}"))
    } else {
        Err(problems.join("\n"))
    }
}

pub fn scanner_cases(v: &mut Vec<Case>) {
    for t in ["unix", "hvt", "spt"] {
        let needs = Needs::Program { name: "sslyze", package: "sslyze (PyPI: pip install sslyze)" };
        v.push(case(format!("{t}::tls_offers_no_weak_protocol_or_cipher"), needs, move || {
            if let Some(why) = testkit::missing(t).or_else(testkit::missing_net) {
                return Err(why);
            }
            let scratch = Scratch::new("tls-scan");
            let certs = certificates(&scratch.0)?;
            let ns = Netns::new()?;
            // A scanner opens a few hundred connections in seconds, beyond
            // a host's allowance.
            let g = start_with(&ns, t, &certs, &["--handshakes-per-host=0"])?;
            let verdict = scanned(&ns, &scratch.0).map_err(|e| format!("{e}\n{}", g.output()))?;
            eprintln!("{t}: sslyze: {verdict}");
            Ok(())
        }));
    }
}
