//! hello-key on Solo5.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::String;
use mirage_runtime::args::Arg;
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let (name, default, doc) = hello_key::HELLO;
    let args = match solo5::dev::boot("hello-key", si.cmdline, &[Arg::new::<String>(name, Some(default), doc)]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let hello: String = args.get(name);
    solo5::dev::run(async move { hello_key::start(solo5::dev::Console, mirage_runtime::time::Clock, &hello).await })
}
