//! ping on unix: the interface is a tap device (`--tap=NAME`).
use mirage_runtime::args::{Arg, Ipv4Cidr};

fn main() {
    let specs = [
        Arg::new::<String>("tap", Some("tap0"), "The tap device to answer on."),
        Arg::new::<Ipv4Cidr>("ipv4", Some("10.0.0.2/24"), "The address to answer for."),
        Arg::new::<u64>("limit", Some("0"), "Exit after this many pings (0: never)."),
        Arg::new::<bool>("pattern", Some("false"), "Check ping -p deadbeef payloads."),
    ];
    let args = match mirage_unix::boot("ping", &specs) {
        Ok(a) => a,
        Err(code) => std::process::exit(code),
    };
    let tap: String = args.get("tap");
    let net = match mirage_unix::TapNet::open(&tap, None) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("ping: cannot attach tap device {tap}: {e}");
            std::process::exit(1);
        }
    };
    let ip = args.get::<Ipv4Cidr>("ipv4").addr;
    let limit = Some(args.get::<u64>("limit")).filter(|&l| l > 0);
    let pattern = args.get::<bool>("pattern");
    std::process::exit(mirage_unix::run(ping::start(mirage_unix::Console, net, ip, limit, pattern)));
}
