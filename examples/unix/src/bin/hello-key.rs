//! hello-key on unix.
use mirage_runtime::args::Arg;

fn main() {
    let (name, default, doc) = hello_key::HELLO;
    let args = match mirage_unix::boot("hello-key", &[Arg::new::<String>(name, Some(default), doc)]) {
        Ok(a) => a,
        Err(code) => std::process::exit(code),
    };
    let hello: String = args.get(name);
    std::process::exit(mirage_unix::run(async move {
        hello_key::start(mirage_unix::Console, mirage_runtime::time::Clock, &hello).await
    }));
}
