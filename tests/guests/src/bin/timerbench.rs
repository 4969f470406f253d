//! Timer accuracy: `--count=N` sleeps of each period.
#![no_std]
#![no_main]

use mirage_runtime::args::Arg;
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let specs = [Arg::new::<usize>("count", Some("200"), "Sleeps of each period.")];
    let args = match solo5::dev::boot("timerbench", si.cmdline, &specs) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let count = args.get::<usize>("count");
    solo5::dev::run(bench_apps::timers(solo5::dev::Console, mirage_runtime::time::Clock, count))
}
