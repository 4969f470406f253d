//! kv-ro on unix, with the data directory compiled in.
include!(concat!(env!("OUT_DIR"), "/data.rs"));

fn main() {
    if let Err(code) = mirage_unix::boot("kv-ro", &[]) {
        std::process::exit(code);
    }
    std::process::exit(mirage_unix::run(kv_ro::start(mirage_unix::Console, DATA)));
}
