//! kv-ro on Solo5, with the data directory compiled in.
#![no_std]
#![no_main]

use mirage_solo5 as solo5;

include!(concat!(env!("OUT_DIR"), "/data.rs"));

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    if let Err(code) = solo5::dev::boot("kv-ro", si.cmdline, &[]) {
        return code;
    }
    solo5::dev::run(kv_ro::start(solo5::dev::Console, DATA))
}
