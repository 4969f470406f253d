//! network on Solo5: mirage-tcpip on the manifest's "service" interface.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use mirage_runtime::args::Arg;
use mirage_solo5 as solo5;

solo5::manifest!(net "service");
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let mut specs: Vec<Arg> = Vec::new();
    specs.push(Arg::new::<u16>("echo-port", Some("7"), "TCP and UDP echo port."));
    specs.push(Arg::new::<u16>("discard-port", Some("9"), "TCP discard port."));
    specs.push(Arg::new::<u16>("chargen-port", Some("19"), "TCP chargen port."));
    specs.extend(mirage_tcpip::Config::args(""));
    let args = match solo5::dev::boot("network", si.cmdline, &specs) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let net = match solo5::dev::Net::acquire("service") {
        Ok(n) => n,
        Err(e) => {
            solo5::println!("network: cannot acquire network interface service: {e}");
            return 1;
        }
    };
    let ports = network::Ports {
        echo: args.get("echo-port"),
        discard: args.get("discard-port"),
        chargen: args.get("chargen-port"),
    };
    let config = mirage_tcpip::Config::from_args(&args);
    solo5::dev::run(async move {
        let stack = mirage_tcpip::Stack::new(net, config).map_err(|e| format!("network: {e}"))?;
        stack.configured().await;
        network::start(solo5::dev::Console, stack, ports).await.map_err(|e| format!("network: {e}"))
    })
}
