//! `solo5-spt`: run a Solo5 unikernel as a seccomp-sandboxed process.
//!
//! `no_main`, as `solo5-hvt`: the Rust runtime's start-up is skipped.
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    tender::tender_main(
        |args| tender::spt::run(args).map(|never| match never {}),
        tender::spt::usage,
        tender::spt::version,
    )
}
