//! What each fuzz target checks. Every target of `fuzz/` is one call to a
//! `run` function here, so that the same checks replay the committed
//! corpus and regressions under `cargo test` with no fuzzer at all.
//!
//! A check fails by panicking (libFuzzer records the input as a crash):
//! a panic of the code under test, or an assertion here about what must
//! hold for every input: invariants of a parser's result, agreement with
//! an independent reading of the same bytes, and round trips where a
//! parser has an inverse.
//!
//! [`seeds`] makes each target's starting corpus from the project's own
//! builders (`fuzz/run seeds` writes it under `fuzz/corpus/`).

pub mod args;
pub mod dhcpd;
pub mod elf;
pub mod fat;
pub mod gdb_remote;
pub mod http;
pub mod hypercall;
pub mod kv_store;
pub mod manifest;
pub mod nat;
pub mod seeds;
pub mod sim;
pub mod stack;
pub mod tar;
pub mod wire;

/// A target: the name of its binary and corpus directory, and the
/// function it runs on each input.
pub type Target = (&'static str, fn(&[u8]));

/// The targets.
pub const TARGETS: &[Target] = &[
    ("elf", elf::run),
    ("manifest", manifest::run),
    ("hypercall", hypercall::run),
    ("http_server", http::run_server),
    ("http_request", http::run_request),
    ("tar", tar::run),
    ("tar_roundtrip", tar::run_roundtrip),
    ("kv_store", kv_store::run),
    ("fat", fat::run),
    ("wire", wire::run),
    ("gdb_remote", gdb_remote::run),
    ("args", args::run),
    ("dhcpd", dhcpd::run),
    ("nat", nat::run),
    ("stack", stack::run),
];
