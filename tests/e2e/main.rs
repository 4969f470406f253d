//! End-to-end tests above the tenders: the examples on unix, hvt, spt and
//! virtio (under QEMU),
//! each configured and built by the `mirage` tool; the TCP/IP stack against
//! the host's Linux stack; the HTTP server against curl and raw sockets;
//! the router between three namespaces;
//! the tool's commands and errors; unikernels as containers under
//! containerd. Network tests run in network namespaces
//! each test creates and removes, with tap devices.
//!
//! The tenders and the tool are built once, at the start, into
//! `target/release`. A test this machine cannot run is reported as SKIPPED
//! with the reason and counted as ignored; it never passes silently.

mod attack;
mod examples;
mod http;
mod kv;
mod oci;
mod router;
mod tcpip;
mod tls;
mod tool;
mod virtio;

use testkit::harness::{Case, Needs, case};

fn main() {
    // Builds target/release/{mirage,solo5-hvt,solo5-spt,solo5-elftool}, which
    // testkit::tender finds there.
    if let Err(e) = testkit::mirage() {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let mut cases = Vec::new();
    attack::cases(&mut cases);
    examples::cases(&mut cases);
    http::cases(&mut cases);
    kv::cases(&mut cases);
    router::cases(&mut cases);
    oci::cases(&mut cases);
    tcpip::cases(&mut cases);
    tls::cases(&mut cases);
    tool::cases(&mut cases);
    virtio::cases(&mut cases);
    testkit::harness::run(cases)
}
