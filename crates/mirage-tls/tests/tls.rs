//! TLS between a server and a client of this crate, over flows in memory:
//! each key type and protocol version, SNI, ALPN, resumption, refused
//! certificates with their reason, and hostile peers.

#[path = "../../mirage-http/tests/common/mod.rs"]
mod common;
mod pki;

use std::sync::Arc;

use common::{End, pair};
use mirage_devices::flow::Flow;
use mirage_devices::kv::Key;
use mirage_devices::time::{Timestamp, WallClock};
use mirage_runtime::join;
use mirage_runtime::time::Duration;
use mirage_tls::rustls::{self, CertificateError, HandshakeKind, ProtocolVersion};
use mirage_tls::{Certificates, Error, ServerOptions, TlsClient, TlsServer, config};
use pki::Pki;

/// The host's clock, shifted by `skew` seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Clock {
    skew: i64,
}

impl WallClock for Clock {
    fn now(&self) -> Timestamp {
        let now = mirage_unix::WallClock.now().0 as i64;
        Timestamp((now + self.skew * 1_000_000_000) as u64)
    }
}

fn setup() {
    mirage_tls::rng::install(mirage_unix::Random).expect("the kernel's random source is fit for keys");
}

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

fn certs(pki: &Pki, files: &[&str]) -> Certificates {
    let keys = files
        .iter()
        .map(|f| {
            let ck = config::certified_key(
                &pki.read(&format!("{f}.pem")),
                &pki.read(&format!("{f}.key")),
                &key(&format!("{f}.pem")),
                &key(&format!("{f}.key")),
            )
            .unwrap();
            (f.to_string(), Arc::new(ck))
        })
        .collect();
    Certificates::new(keys)
}

fn server_config(pki: &Pki, files: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let options = ServerOptions { alpn: alpn.iter().map(|a| a.to_vec()).collect() };
    Arc::new(mirage_tls::server_config(certs(pki, files), &options, Clock::default()).unwrap())
}

/// A CA and one leaf of `kind` for "server.test" in a PKI named `name`: the
/// server's configuration with it, and a client's trusting the CA.
fn one_leaf(name: &str, kind: &str) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let pki = Pki::new(name);
    pki.leaf(kind, kind, &["server.test"]);
    (server_config(&pki, &[kind], &[]), client_config(&pki, 0, None, &[]))
}

fn client_config(
    pki: &Pki,
    skew: i64,
    versions: Option<&'static rustls::SupportedProtocolVersion>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let roots = config::roots(&pki.read("ca.pem"), &key("ca.pem")).unwrap();
    let mut c = mirage_tls::client_config(roots, alpn.iter().map(|a| a.to_vec()).collect(), Clock { skew }).unwrap();
    if let Some(v) = versions {
        // Only this version: rebuild with the same verifier and resumption.
        let mut only = rustls::ClientConfig::builder_with_details(
            Arc::new(mirage_tls::provider::provider()),
            Arc::new(mirage_tls::WallTime(Clock { skew })),
        )
        .with_protocol_versions(&[v])
        .unwrap()
        .with_webpki_verifier(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(config::roots(&pki.read("ca.pem"), &key("ca.pem")).unwrap()),
                Arc::new(mirage_tls::provider::provider()),
            )
            .build()
            .unwrap(),
        )
        .with_no_client_auth();
        only.alpn_protocols = c.alpn_protocols.clone();
        only.resumption = c.resumption.clone();
        c = only;
    }
    Arc::new(c)
}

/// What a side saw: version, handshake kind, ALPN protocol.
type Seen = (Option<ProtocolVersion>, Option<HandshakeKind>, Option<Vec<u8>>);

/// What one connection saw, from each side (the client also what it read).
struct Outcome {
    server: Result<Seen, Error>,
    #[allow(clippy::type_complexity)]
    client: Result<(Option<ProtocolVersion>, Option<HandshakeKind>, Option<Vec<u8>>, Vec<u8>), Error>,
}

/// A connection: the client sends a request, the server echoes it in
/// upper case and closes.
async fn connect_over(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
    (s_end, c_end): (End, End),
) -> Outcome {
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let serve = async move {
        let mut tls = TlsServer::server(s_end, server)?;
        tls.handshake().await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await.map_err(Error::Flow)?;
        tls.write_all(&buf[..n].to_ascii_uppercase()).await.map_err(Error::Flow)?;
        let seen = (tls.protocol_version(), tls.handshake_kind(), tls.alpn_protocol().map(<[u8]>::to_vec));
        tls.close_tls().await?;
        Ok(seen)
    };
    let talk = async move {
        let mut tls = TlsClient::client(c_end, client, name)?;
        tls.handshake().await?;
        tls.write_all(b"hello over tls").await.map_err(Error::Flow)?;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match tls.read(&mut buf).await.map_err(Error::Flow)? {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        Ok((tls.protocol_version(), tls.handshake_kind(), tls.alpn_protocol().map(<[u8]>::to_vec), got))
    };
    let (server, client) = join(serve, talk).await;
    Outcome { server, client }
}

fn connect(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>, name: &str) -> Outcome {
    common::run(connect_over(server.clone(), client.clone(), name, pair(64 * 1024)))
}

#[test]
fn every_key_type_on_both_versions() {
    setup();
    let pki = Pki::new("keys");
    for kind in ["ec", "ed25519", "rsa"] {
        pki.leaf(kind, kind, &["server.test"]);
        let server = server_config(&pki, &[kind], &[]);
        for (version, want) in
            [(&rustls::version::TLS13, ProtocolVersion::TLSv1_3), (&rustls::version::TLS12, ProtocolVersion::TLSv1_2)]
        {
            let client = client_config(&pki, 0, Some(version), &[]);
            let o = connect(&server, &client, "server.test");
            let (v, kind_seen, _, got) = o.client.unwrap_or_else(|e| panic!("{kind} {want:?}: {e}"));
            assert_eq!(got, b"HELLO OVER TLS", "{kind} {want:?}");
            assert_eq!(v, Some(want), "{kind}");
            assert_eq!(kind_seen, Some(HandshakeKind::Full));
            assert_eq!(o.server.unwrap().0, Some(want));
        }
    }
}

#[test]
fn sni_chooses_the_certificate_and_alpn_agrees() {
    setup();
    let pki = Pki::new("sni");
    pki.leaf("a", "ec", &["a.test"]);
    pki.leaf("b", "ed25519", &["b.test", "*.b.test"]);
    let server = server_config(&pki, &["a", "b"], &[b"h2", b"http/1.1"]);
    let client = client_config(&pki, 0, None, &[b"http/1.1"]);
    for name in ["a.test", "b.test", "www.b.test"] {
        let o = connect(&server, &client, name);
        let (_, _, alpn, got) = o.client.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, b"HELLO OVER TLS");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    // A name no certificate covers gets the first, which the client refuses.
    let o = connect(&server, &client, "c.test");
    match o.client {
        Err(Error::Tls(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)))
        | Err(Error::Tls(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))) => {}
        other => panic!("c.test: {:?}", other.map(|o| o.3)),
    }
}

#[test]
fn sessions_resume_on_both_versions() {
    setup();
    let pki = Pki::new("resume");
    pki.leaf("ec", "ec", &["server.test"]);
    let server = server_config(&pki, &["ec"], &[]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = client_config(&pki, 0, Some(version), &[]);
        let first = connect(&server, &client, "server.test").client.unwrap();
        assert_eq!(first.1, Some(HandshakeKind::Full));
        let second = connect(&server, &client, "server.test").client.unwrap();
        assert_eq!(second.1, Some(HandshakeKind::Resumed), "{version:?}");
        assert_eq!(second.3, b"HELLO OVER TLS");
    }
}

fn refused(o: Outcome) -> (Error, Error) {
    let c = o.client.expect_err("the client refuses");
    let s = o.server.expect_err("the server fails too");
    (c, s)
}

#[test]
fn wrong_certificates_are_refused_with_the_reason() {
    setup();
    let pki = Pki::new("wrong");
    pki.leaf("good", "ec", &["server.test"]);
    pki.ca("other");
    pki.leaf_by("other", "stranger", "ec", &["server.test"], 30);
    // Expired: the client's clock is 40 days ahead of a 30-day certificate.
    let (c, s) = refused(connect(
        &server_config(&pki, &["good"], &[]),
        &client_config(&pki, 40 * 86400, None, &[]),
        "server.test",
    ));
    assert!(
        matches!(
            c,
            Error::Tls(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{c}"
    );
    assert!(c.to_string().contains("has expired"), "{c}");
    // Not valid yet: the client's clock is 2 days behind.
    let (c, _) = refused(connect(
        &server_config(&pki, &["good"], &[]),
        &client_config(&pki, -2 * 86400, None, &[]),
        "server.test",
    ));
    assert!(c.to_string().contains("not valid yet"), "{c}");
    assert!(matches!(s, Error::Tls(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired))), "{s}");
    // Unknown issuer.
    let (c, s) =
        refused(connect(&server_config(&pki, &["stranger"], &[]), &client_config(&pki, 0, None, &[]), "server.test"));
    assert!(matches!(c, Error::Tls(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))), "{c}");
    assert!(c.to_string().contains("unknown issuer"), "{c}");
    assert!(matches!(s, Error::Tls(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA))), "{s}");
    // Another name.
    let (c, _) =
        refused(connect(&server_config(&pki, &["good"], &[]), &client_config(&pki, 0, None, &[]), "other.test"));
    assert!(c.to_string().contains("not valid for the name"), "{c}");
    assert!(
        matches!(c, Error::Tls(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))),
        "{c}"
    );
}

#[test]
fn a_weak_random_source_is_refused() {
    #[derive(Clone, Copy)]
    struct Clocky;
    impl mirage_devices::random::Random for Clocky {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(4)
        }
    }
    let e = mirage_tls::rng::install(Clocky).unwrap_err();
    assert!(e.to_string().contains("not fit for keys"), "{e}");
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused() {
    setup();
    let pki = Pki::new("mismatch");
    pki.leaf("a", "ec", &["a.test"]);
    pki.leaf("b", "ec", &["b.test"]);
    let e = config::certified_key(&pki.read("a.pem"), &pki.read("b.key"), &key("a.pem"), &key("b.key")).unwrap_err();
    assert!(e.to_string().contains("b.key"), "{e}");
    let e = config::certified_key(b"not pem", &pki.read("b.key"), &key("a.pem"), &key("b.key")).unwrap_err();
    assert!(e.to_string().contains("a.pem"), "{e}");
}

/// A server fed `bytes` by a raw peer: it must fail cleanly (an error, no
/// panic, no hang), answering an alert where TLS has one.
fn hostile(bytes: &[u8]) -> (Error, Vec<u8>) {
    setup();
    let pki = Pki::new("hostile");
    pki.leaf("ec", "ec", &["server.test"]);
    let server = server_config(&pki, &["ec"], &[]);
    let bytes = bytes.to_vec();
    common::run(async move {
        let (s_end, mut peer) = pair(256 * 1024);
        let serve = async move {
            let mut tls = TlsServer::server(s_end, server).unwrap();
            tls.handshake().await.expect_err("a hostile peer is refused")
        };
        let attack = async move {
            peer.write_all(&bytes).await.unwrap();
            peer.shutdown().await.unwrap();
            peer.read_to_end(1 << 20).await
        };
        join(serve, attack).await
    })
}

#[test]
fn hostile_peers_fail_cleanly() {
    // Not TLS at all.
    let (e, answer) = hostile(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(e, Error::Tls(_)), "{e}");
    assert_eq!(answer.first(), Some(&21), "an alert record answers");
    // A handshake record announcing a 16 MiB message, then nothing.
    let (e, _) = hostile(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]);
    assert!(matches!(e, Error::Tls(_) | Error::TooLarge | Error::Eof), "{e}");
    // A record longer than TLS allows.
    let (e, _) = hostile(&[22, 3, 1, 0xff, 0xff]);
    assert!(matches!(e, Error::Tls(_)), "{e}");
    // A truncated ClientHello: the peer closes midway.
    let (e, _) = hostile(&[22, 3, 1, 0, 100, 1, 0, 0, 96, 3, 3]);
    assert_eq!(e, Error::Eof);
}

/// A flow that passes one byte per write: records arrive a byte at a time.
struct Trickle(End);

impl Flow for Trickle {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, mirage_devices::flow::Error> {
        let n = buf.len().min(1);
        self.0.read(&mut buf[..n]).await
    }
    async fn write(&mut self, data: &[u8]) -> Result<usize, mirage_devices::flow::Error> {
        self.0.write(&data[..data.len().min(1)]).await
    }
    async fn flush(&mut self) -> Result<(), mirage_devices::flow::Error> {
        self.0.flush().await
    }
    async fn shutdown(&mut self) -> Result<(), mirage_devices::flow::Error> {
        self.0.shutdown().await
    }
    async fn close(self) -> Result<(), mirage_devices::flow::Error> {
        self.0.close().await
    }
}

#[test]
fn a_configuration_never_prints_its_private_keys() {
    setup();
    let pki = Pki::new("debug");
    for kind in ["ec", "ed25519", "rsa"] {
        pki.leaf(kind, kind, &["server.test"]);
    }
    let server = server_config(&pki, &["ec", "ed25519", "rsa"], &[]);
    let text = format!("{server:?}");
    // The RSA key's private parts, as `rsa`'s own Debug names them.
    for secret in ["primes", "precomputed", "BoxedUint", "BigUint"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("bits"), "{text}");
}

#[test]
fn closing_never_waits_on_a_peer_that_stopped_reading() {
    setup();
    let (server, client) = one_leaf("unread", "ec");
    let (waited, closed) = common::run(async move {
        let (s_end, c_end) = pair(4096);
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        let (stalled, closed) =
            (std::rc::Rc::new(std::cell::Cell::new(false)), std::rc::Rc::new(std::cell::Cell::new(false)));
        let (s2, c2) = (stalled.clone(), closed.clone());
        let serve = async move {
            let mut tls = TlsServer::server(s_end, server).unwrap();
            let mut buf = [0u8; 16];
            let n = tls.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hello");
            // Write until the peer's window has shut, the write cancelled
            // part-way by its timeout.
            let block = [7u8; 16384];
            while mirage_runtime::time::timeout(Duration::from_secs(1), tls.write_all(&block)).await.is_ok() {}
            s2.set(true);
            let started = mirage_runtime::time::now();
            let _ = tls.close_tls().await;
            c2.set(true);
            mirage_runtime::time::now().as_nanos() - started.as_nanos()
        };
        let talk = async move {
            let mut tls = TlsClient::client(c_end, client, name).unwrap();
            tls.write_all(b"hello").await.unwrap();
            // Never reads; holds the connection a minute.
            mirage_runtime::time::sleep(Duration::from_secs(60)).await;
            drop(tls);
        };
        let (waited, ()) = join(serve, talk).await;
        assert!(stalled.get());
        (waited, closed.get())
    });
    assert!(closed);
    assert!(u128::from(waited) <= mirage_tls::CLOSE_NOTIFY_WAIT.as_nanos(), "close_tls waited {waited} ns");
}

#[test]
fn close_notify_goes_even_when_records_wait_unread() {
    setup();
    let (server, client) = one_leaf("unread-records", "ec");
    let got = common::run(async move {
        let (s_end, c_end) = pair(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        let serve = async move {
            let mut tls = TlsServer::server(s_end, server).unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(tls.read(&mut buf).await.unwrap(), 1);
            // Let the second record arrive, then close without reading it.
            mirage_runtime::time::sleep(Duration::from_millis(100)).await;
            tls.close_tls().await.unwrap();
        };
        let talk = async move {
            let mut tls = TlsClient::client(c_end, client, name).unwrap();
            tls.write_all(b"A").await.unwrap();
            tls.write_all(b"B").await.unwrap();
            let mut buf = [0u8; 16];
            tls.read(&mut buf).await
        };
        join(serve, talk).await.1
    });
    // The end of the stream, close_notify first: not a truncation.
    assert_eq!(got, Ok(0));
}

#[test]
fn records_a_byte_at_a_time() {
    setup();
    let (server, client) = one_leaf("trickle", "rsa");
    let got = common::run(async move {
        let (s_end, c_end) = pair(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        let serve = async move {
            let mut tls = TlsServer::server(s_end, server).unwrap();
            let mut buf = [0u8; 64];
            let n = tls.read(&mut buf).await.unwrap();
            tls.write_all(&buf[..n]).await.unwrap();
            tls.close_tls().await.unwrap();
        };
        let talk = async move {
            let mut tls = TlsClient::client(Trickle(c_end), client, name).unwrap();
            tls.write_all(b"slowly").await.unwrap();
            let mut buf = [0u8; 64];
            let n = tls.read(&mut buf).await.unwrap();
            buf[..n].to_vec()
        };
        join(serve, talk).await.1
    });
    assert_eq!(got, b"slowly");
}

#[test]
fn large_transfers_and_idle_memory() {
    setup();
    let (server, client) = one_leaf("large", "ec");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expect = data.clone();
    let (idle, got) = common::run(async move {
        let (s_end, c_end) = pair(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        let serve = async move {
            let mut tls = TlsServer::server(s_end, server).unwrap();
            tls.write_all(&data).await.unwrap();
            tls.flush().await.unwrap();
            // Waiting for the client's word, the connection is idle.
            let mut word = [0u8; 1];
            tls.read_exact(&mut word).await.unwrap();
            let idle = tls.buffered_capacity();
            tls.close_tls().await.unwrap();
            idle
        };
        let talk = async move {
            let mut tls = TlsClient::client(c_end, client, name).unwrap();
            let mut got = vec![0u8; 1_000_000];
            tls.read_exact(&mut got).await.unwrap();
            tls.write_all(b"!").await.unwrap();
            let mut rest = [0u8; 16];
            assert_eq!(tls.read(&mut rest).await.unwrap(), 0, "nothing follows the data");
            got
        };
        join(serve, talk).await
    });
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "the bytes arrive unchanged");
    assert!(idle <= 4096, "an idle server connection keeps {idle} bytes of buffers");
}

/// A TCP whose connections reach a server that accepts and then says
/// nothing: each server end is kept in `held`.
#[derive(Default)]
struct Silent {
    held: std::cell::RefCell<Vec<End>>,
}

impl mirage_devices::stack::Tcp for Silent {
    type Flow = End;
    type Listener = common::Listener;

    async fn listen(&self, _: u16, _: usize) -> Result<common::Listener, mirage_devices::stack::Error> {
        Err(mirage_devices::stack::Error::Io)
    }

    async fn connect(&self, _: std::net::SocketAddr) -> Result<End, mirage_devices::stack::Error> {
        let (client, server) = pair(64 * 1024);
        self.held.borrow_mut().push(server);
        Ok(client)
    }
}

#[test]
fn a_server_that_stalls_the_handshake_costs_the_client_its_wait() {
    setup();
    let (_, client) = one_leaf("stalled-handshake", "ec");
    let addr = std::net::SocketAddr::from(([10, 0, 0, 2], 443));
    let (default, short, hello) = common::run(async move {
        let tcp = Silent::default();
        let connect = |c: mirage_tls::Client| {
            let tcp = &tcp;
            async move {
                let started = mirage_runtime::time::now();
                let got = c.connect(tcp, addr, "server.test").await.map(|_| ());
                (got, mirage_runtime::time::now().as_nanos() - started.as_nanos())
            }
        };
        let default = connect(mirage_tls::Client::new(client.clone())).await;
        let short = connect(mirage_tls::Client::new(client).handshake_wait(Duration::from_millis(1500))).await;
        // The server end saw a ClientHello, then the client hang up.
        let mut server = tcp.held.borrow_mut().remove(0);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = server.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
        }
        (default, short, seen)
    });
    assert_eq!(default.0, Err(Error::HandshakeTimeout(mirage_tls::HANDSHAKE_WAIT)));
    assert_eq!(u128::from(default.1), mirage_tls::HANDSHAKE_WAIT.as_nanos(), "waited the default");
    assert_eq!(short.0, Err(Error::HandshakeTimeout(Duration::from_millis(1500))));
    assert_eq!(short.1, 1_500_000_000, "waited what it was told");
    assert!(short.0.unwrap_err().to_string().contains("within 1500 ms"));
    assert_eq!(hello.first(), Some(&22), "a handshake record went first");
}

#[test]
fn the_meter_counts_a_large_record_held_half_sent() {
    // A peer sends 16 KiB of a record of a ClientHello that says it is
    // 60,000 bytes long, and then nothing: the server's read waits, its
    // input grown (doubled to 32 KiB when the 16 KiB it had filled), and
    // its meter says so while it waits, so that the HTTP server, which
    // reads the meter, can shed it.
    setup();
    let (server, _client) = one_leaf("meter", "ec");
    let (held, failed) = common::run(async move {
        let (s_end, mut c_end) = pair(256 * 1024);
        let meter = mirage_devices::flow::Meter::default();
        let mut tls = TlsServer::server(s_end, server).unwrap();
        tls.meter(meter.clone());
        let serve = async move {
            let mut buf = [0u8; 16];
            tls.read(&mut buf).await.is_err()
        };
        let hold = async move {
            let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xea, 0x60, 0x03, 0x03];
            record.resize(16 * 1024, 0);
            c_end.write_all(&record).await.unwrap();
            mirage_runtime::time::sleep(Duration::from_secs(1)).await;
            let held = meter.get();
            drop(c_end);
            held
        };
        let (failed, held) = join(serve, hold).await;
        (held, failed)
    });
    assert!(held >= 32 * 1024, "the meter said {held} bytes while the read waited with 32 KiB of input");
    assert!(failed, "the read fails when the peer goes");
}
