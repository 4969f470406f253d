//! ping on Solo5: the interface is the manifest's "service".
#![no_std]
#![no_main]

use mirage_runtime::args::{Arg, Ipv4Cidr};
use mirage_solo5 as solo5;

solo5::manifest!(net "service");
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let specs = [
        Arg::new::<Ipv4Cidr>("ipv4", Some("10.0.0.2/24"), "The address to answer for."),
        Arg::new::<u64>("limit", Some("0"), "Exit after this many pings (0: never)."),
        Arg::new::<bool>("pattern", Some("false"), "Check ping -p deadbeef payloads."),
    ];
    let args = match solo5::dev::boot("ping", si.cmdline, &specs) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let net = match solo5::dev::Net::acquire("service") {
        Ok(n) => n,
        Err(e) => {
            solo5::println!("ping: cannot acquire network interface service: {e}");
            return 1;
        }
    };
    let ip = args.get::<Ipv4Cidr>("ipv4").addr;
    let limit = Some(args.get::<u64>("limit")).filter(|&l| l > 0);
    let pattern = args.get::<bool>("pattern");
    solo5::dev::run(ping::start(solo5::dev::Console, net, ip, limit, pattern))
}
