//! network on unix, over either stack: `--stack=direct` (the default) runs
//! mirage-tcpip on a tap device (`--tap=NAME`); `--stack=socket` uses the
//! host's sockets.
use mirage_runtime::args::Arg;

fn main() {
    let mut specs = vec![
        Arg::new::<String>("stack", Some("direct"), "direct: mirage-tcpip on a tap device; socket: the host's sockets."),
        Arg::new::<String>("tap", Some("tap0"), "The tap device of the direct stack."),
        Arg::new::<u16>("echo-port", Some("7"), "TCP and UDP echo port."),
        Arg::new::<u16>("discard-port", Some("9"), "TCP discard port."),
        Arg::new::<u16>("chargen-port", Some("19"), "TCP chargen port."),
    ];
    specs.extend(mirage_tcpip::Config::args(""));
    let args = match mirage_unix::boot("network", &specs) {
        Ok(a) => a,
        Err(code) => std::process::exit(code),
    };
    let ports = network::Ports {
        echo: args.get("echo-port"),
        discard: args.get("discard-port"),
        chargen: args.get("chargen-port"),
    };
    let stack: String = args.get("stack");
    let code = match stack.as_str() {
        "socket" => mirage_unix::run(network::start(mirage_unix::Console, mirage_unix::SocketStack, ports)),
        "direct" => {
            let tap: String = args.get("tap");
            let net = match mirage_unix::TapNet::open(&tap, None) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("network: cannot attach tap device {tap}: {e}");
                    std::process::exit(1);
                }
            };
            let config = mirage_tcpip::Config::from_args(&args);
            mirage_unix::run(async move {
                let stack = mirage_tcpip::Stack::new(net, config).map_err(|e| format!("network: {e}"))?;
                stack.configured().await;
                network::start(mirage_unix::Console, stack, ports).await.map_err(|e| format!("network: {e}"))
            })
        }
        other => {
            eprintln!("network: --stack={other}: expected direct or socket");
            64
        }
    };
    std::process::exit(code);
}
