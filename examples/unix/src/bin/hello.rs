//! hello on unix.
fn main() {
    if let Err(code) = mirage_unix::boot("hello", &[]) {
        std::process::exit(code);
    }
    std::process::exit(mirage_unix::run(hello::start(mirage_unix::Console, mirage_runtime::time::Clock)));
}
