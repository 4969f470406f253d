//! `solo5-hvt`: run a Solo5 unikernel on KVM.
//!
//! `no_main`: the Rust runtime's start-up (signal stacks, handlers, thread
//! bookkeeping) costs a tender that lives a few milliseconds a measurable
//! share of its time and memory, and nothing here needs it.
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let mut args = std::env::args_os();
    tender::set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    let result = tender::hvt::run(&args);
    tender::exit_with(result, || tender::hvt::usage(tender::prog()), || tender::hvt::version(tender::prog()))
}
