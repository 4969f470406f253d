//! hello on Solo5.
#![no_std]
#![no_main]

use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    if let Err(code) = solo5::dev::boot("hello", si.cmdline, &[]) {
        return code;
    }
    solo5::dev::run(hello::start(solo5::dev::Console, mirage_runtime::time::Clock))
}
