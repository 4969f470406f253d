//! End-to-end tests of the tenders: real unikernels on `solo5-hvt` (KVM)
//! and `solo5-spt` (seccomp).
//!
//! Each test builds (once) the guests in `tests/guests` for its target and
//! boots them; the network tests run the tender in a network namespace of
//! their own with a tap device, and ping it. A test this machine cannot run
//! (no `/dev/kvm`, no network namespaces) is reported as SKIPPED with the
//! reason and counted as ignored in the summary; it never passes silently.
//! The examples, the TCP/IP stack, HTTP and the `mirage` tool are tested end
//! to end by the top-level `tests/e2e` crate.

mod block;
mod boot;
mod cli;
mod debug;
mod elftool;
mod hostile;
mod net;

use testkit::harness::{Case, Needs, case};

fn main() {
    testkit::set_tenders(
        env!("CARGO_BIN_EXE_solo5-hvt").into(),
        env!("CARGO_BIN_EXE_solo5-spt").into(),
        env!("CARGO_BIN_EXE_solo5-elftool").into(),
    );
    let mut cases = Vec::new();
    boot::cases(&mut cases);
    block::cases(&mut cases);
    debug::cases(&mut cases);
    hostile::cases(&mut cases);
    cli::cases(&mut cases);
    elftool::cases(&mut cases);
    net::cases(&mut cases);
    testkit::harness::run(cases)
}
