//! `solo5-hvt`: run a Solo5 unikernel on KVM.
//!
//! `no_main`: the Rust runtime's start-up (signal stacks, handlers, thread
//! bookkeeping) costs a tender that lives a few milliseconds a measurable
//! share of its time and memory, and nothing here needs it.
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    tender::tender_main(tender::hvt::run, tender::hvt::usage, tender::hvt::version)
}
