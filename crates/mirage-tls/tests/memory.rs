//! Memory held by an idle TLS server connection after its handshake: its
//! buffers and rustls' state, counted by a global allocator that tracks
//! the bytes in use. Printed, and bounded.

#[path = "../../mirage-http/tests/common/mod.rs"]
mod common;
mod pki;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use mirage_devices::flow::Flow;
use mirage_devices::kv::Key;
use mirage_tls::{Certificates, ServerOptions, TlsClient, TlsServer, config, rustls};

struct Counting;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a
// counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        IN_USE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        IN_USE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: p was allocated by System with l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        IN_USE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as for dealloc and alloc.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 64;

#[test]
fn an_idle_server_connection_holds_little() {
    mirage_tls::rng::install(mirage_unix::Random).unwrap();
    let pki = pki::Pki::new("memory");
    pki.leaf("ec", "ec", &["server.test"]);
    let k = |s: &str| Key::parse(s).unwrap();
    let ck = config::certified_key(&pki.read("ec.pem"), &pki.read("ec.key"), &k("ec.pem"), &k("ec.key")).unwrap();
    let certs = Certificates::new(vec![("ec".into(), Arc::new(ck))]);
    let server = Arc::new(mirage_tls::server_config(certs, &ServerOptions::default(), mirage_unix::WallClock).unwrap());
    let roots = config::roots(&pki.read("ca.pem"), &k("ca.pem")).unwrap();
    let client = Arc::new(mirage_tls::client_config(roots, vec![], mirage_unix::WallClock).unwrap());
    let per_connection = common::run(async move {
        let mut pairs: Vec<_> = (0..N).map(|_| common::pair(4096)).collect();
        let before = IN_USE.load(Ordering::Relaxed);
        let mut servers = Vec::new();
        let mut ends = Vec::new();
        for (s_end, c_end) in pairs.drain(..) {
            let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
            let serve = async {
                let mut tls = TlsServer::server(s_end, server.clone()).unwrap();
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await.unwrap();
                tls
            };
            let talk = async {
                let mut tls = TlsClient::client(c_end, client.clone(), name).unwrap();
                tls.write_all(b"x").await.unwrap();
                tls
            };
            let (s, c) = mirage_runtime::join(serve, talk).await;
            // The client's TLS state goes; its end of the pipe stays.
            ends.push(c.into_flow());
            servers.push(s);
        }
        let per = (IN_USE.load(Ordering::Relaxed) - before) as usize / N;
        drop(ends);
        per
    });
    eprintln!("an idle TLS 1.3 server connection holds {per_connection} bytes (its buffers and rustls' state)");
    assert!(per_connection < 16 * 1024, "{per_connection} bytes per idle connection");
}
