//! `solo5-spt`: run a Solo5 unikernel as a seccomp-sandboxed process.
//!
//! `no_main`, as `solo5-hvt`: the Rust runtime's start-up is skipped.
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let mut args = std::env::args_os();
    tender::set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    let result = tender::spt::run(&args);
    tender::exit_with(result.map(|never| match never {}), || tender::spt::usage(tender::prog()), || tender::spt::version(tender::prog()))
}
