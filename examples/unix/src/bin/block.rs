//! block on unix: the device is a file (`--storage=PATH`).
use mirage_runtime::args::Arg;

fn main() {
    let specs = [Arg::new::<String>("storage", Some("disk.img"), "The file backing the block device.")];
    let args = match mirage_unix::boot("block", &specs) {
        Ok(a) => a,
        Err(code) => std::process::exit(code),
    };
    let path: String = args.get("storage");
    let disk = match mirage_unix::FileBlock::open(path.as_ref(), 512, false) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("block: cannot open block device {path}: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(mirage_unix::run(block::start(mirage_unix::Console, disk)));
}
