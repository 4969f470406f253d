//! Prints a greeting and its command line, like Solo5's test_hello.
#![no_std]
#![no_main]

use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    solo5::println!("\n**** Solo5 standalone test_hello ****\n");
    solo5::println!("Hello, World");
    solo5::println!("Command line is: '{}'", si.cmdline);
    solo5::println!("SUCCESS");
    0
}
