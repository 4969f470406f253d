//! Block throughput through the Block trait: `--mib=N --chunk-kib=K`.
#![no_std]
#![no_main]

use mirage_runtime::args::Arg;
use mirage_solo5 as solo5;

solo5::manifest!(block "storage");
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let specs = [
        Arg::new::<u64>("mib", Some("64"), "MiB to write, then read."),
        Arg::new::<usize>("chunk-kib", Some("1024"), "KiB per request."),
    ];
    let args = match solo5::dev::boot("blockbench", si.cmdline, &specs) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let disk = match solo5::dev::Block::acquire("storage") {
        Ok(d) => d,
        Err(_) => return 1,
    };
    let total = args.get::<u64>("mib") << 20;
    let chunk = args.get::<usize>("chunk-kib") << 10;
    solo5::dev::run(bench_apps::block(solo5::dev::Console, disk, mirage_runtime::time::Clock, total, chunk))
}
