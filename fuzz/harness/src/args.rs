//! Boot arguments, from the command line a Solo5 guest receives to typed
//! values: `mirage_solo5::cmdline::parse` (the bindings' `--solo5:`
//! options), `mirage_runtime::args::split_cmdline` and `args::parse`, as
//! `mirage-solo5` calls them at boot.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use mirage_runtime::args::{Arg, ArgError, FromArg, Ipv4Cidr, Ipv6Cidr, parse, split_cmdline};
use mirage_runtime::logger::LogSpec;

/// One argument of every type, all with defaults.
fn specs() -> Vec<Arg> {
    vec![
        Arg::new::<String>("hello", Some("Hello World!"), "A string."),
        Arg::new::<bool>("verbose", Some("false"), "A flag."),
        Arg::new::<u8>("u8", Some("1"), "An integer."),
        Arg::new::<u16>("port", Some("8080"), "A port."),
        Arg::new::<u32>("u32", Some("0"), "An integer."),
        Arg::new::<u64>("u64", Some("0"), "An integer."),
        Arg::new::<usize>("usize", Some("0"), "An integer."),
        Arg::new::<i32>("i32", Some("-1"), "An integer."),
        Arg::new::<i64>("i64", Some("0"), "An integer."),
        Arg::new::<Ipv4Addr>("gateway", Some("10.0.0.1"), "An IPv4 address."),
        Arg::new::<Ipv6Addr>("v6", Some("::1"), "An IPv6 address."),
        Arg::new::<IpAddr>("ip", Some("10.0.0.9"), "An address."),
        Arg::new::<SocketAddr>("peer", Some("10.0.0.1:80"), "An address and port."),
        Arg::new::<Ipv4Cidr>("ipv4", Some("10.0.0.2/24"), "An address and prefix."),
        Arg::new::<Ipv6Cidr>("ipv6", Some("fd00::2/64"), "An IPv6 address and prefix."),
        Arg::new::<Duration>("timeout", Some("10s"), "A duration."),
        Arg::new::<Option<u16>>("maybe", Some(""), "An optional port."),
    ]
}

/// The input is the command line as the tender passes it.
pub fn run(data: &[u8]) {
    // The bindings refuse a command line that is not UTF-8 before parsing.
    let Ok(line) = std::str::from_utf8(data) else { return };
    let (_level, rest) = mirage_solo5::cmdline::parse(line);
    let rest: &str = &rest;
    assert_eq!(rest, rest.trim_start(), "cmdline::parse left leading blanks");
    assert!(rest.len() <= line.len(), "cmdline::parse made the line longer");
    // The bindings' options are taken out wherever they stand: none is
    // left as a word of its own, and parsing again changes nothing.
    let (_, again) = mirage_solo5::cmdline::parse(rest);
    assert_eq!(again, rest, "cmdline::parse left an option behind");

    let words = match split_cmdline(rest) {
        Ok(words) => words,
        Err(e) => {
            assert_eq!(e, ArgError::UnterminatedQuote);
            assert!(rest.contains(['\'', '"']), "unterminated quote without a quote");
            return;
        }
    };
    // Without quotes or escapes, words are what a split on blanks gives.
    if !rest.contains(['\'', '"', '\\']) {
        assert_eq!(words, rest.split_whitespace().collect::<Vec<_>>());
    }
    // Quoting is the splitter's inverse.
    let quoted = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    assert_eq!(split_cmdline(&quoted).as_ref(), Ok(&words), "quoted as {quoted:?}");

    for specs in [specs(), [specs(), vec![Arg::new::<String>("name", None, "Required.")]].concat()] {
        check_parse(&specs, &words);
    }
    for w in &words {
        typed(w);
        typed(w.split_once('=').map_or(w.as_str(), |(_, v)| v));
    }
}

/// Single quotes around each word, a quote itself as `'\''`, as a shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn check_parse(specs: &[Arg], words: &[String]) {
    match parse("fuzz", specs, words) {
        Ok(args) => {
            // Every value, given or default, was checked: reading it as its
            // declared type cannot fail (`get` panics if it does).
            let _: String = args.get("hello");
            let _: bool = args.get("verbose");
            let _: u8 = args.get("u8");
            let _: u16 = args.get("port");
            let _: u32 = args.get("u32");
            let _: u64 = args.get("u64");
            let _: usize = args.get("usize");
            let _: i32 = args.get("i32");
            let _: i64 = args.get("i64");
            let _: Ipv4Addr = args.get("gateway");
            let _: Ipv6Addr = args.get("v6");
            let _: IpAddr = args.get("ip");
            let _: SocketAddr = args.get("peer");
            let _: Ipv4Cidr = args.get("ipv4");
            let _: Ipv6Cidr = args.get("ipv6");
            let _: Duration = args.get("timeout");
            let _: Option<u16> = args.get("maybe");
            assert!(args.logs.max_level() >= args.logs.level_for("fuzz::target"));
            if specs.iter().any(|s| s.name == "name") {
                assert!(words.iter().any(|w| w.starts_with("--name")), "a required argument was not given");
            }
        }
        Err(ArgError::Help(text)) => {
            assert!(words.iter().any(|w| w == "--help" || w == "-h"));
            for s in specs {
                assert!(text.contains(&format!("--{}", s.name)), "--help does not list --{}", s.name);
            }
        }
        Err(e) => {
            assert_eq!(e.exit_status(), 64);
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Each type's parser on `s`; where the value prints back, the printed
/// form parses to the same value.
fn typed(s: &str) {
    fn round_trip<T: FromArg + ToString + PartialEq + std::fmt::Debug>(s: &str) {
        if let Ok(v) = T::from_arg(s) {
            assert_eq!(T::from_arg(&v.to_string()).as_ref(), Ok(&v), "{s:?} as {}", T::TYPE);
        }
    }
    round_trip::<bool>(s);
    round_trip::<u8>(s);
    round_trip::<u16>(s);
    round_trip::<u32>(s);
    round_trip::<u64>(s);
    round_trip::<usize>(s);
    round_trip::<i32>(s);
    round_trip::<i64>(s);
    round_trip::<Ipv4Addr>(s);
    round_trip::<Ipv6Addr>(s);
    round_trip::<IpAddr>(s);
    round_trip::<SocketAddr>(s);
    round_trip::<Ipv4Cidr>(s);
    round_trip::<String>(s);
    if let Ok(c) = Ipv6Cidr::from_arg(s) {
        assert_eq!(Ipv6Cidr::from_arg(&format!("{}/{}", c.addr, c.prefix)), Ok(c));
    }
    if let Ok(d) = Duration::from_arg(s) {
        assert_eq!(d.subsec_nanos() % 1_000_000, 0);
        let text = if d.subsec_nanos() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) };
        assert_eq!(Duration::from_arg(&text), Ok(d));
    }
    if let Ok(spec) = LogSpec::parse(s) {
        let _ = spec.level_for(s);
        assert!(spec.max_level() >= spec.level_for(s));
    }
}
