//! Prints 32 bytes from the bindings' random generator, in hex.
#![no_std]
#![no_main]

use mirage_devices::random::Random;
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    if let Err(code) = solo5::dev::boot("random", si.cmdline, &[]) {
        return code;
    }
    let mut b = [0u8; 32];
    solo5::dev::Random.fill(&mut b);
    solo5::print!("random: ");
    for x in b {
        solo5::print!("{x:02x}");
    }
    solo5::println!();
    0
}
