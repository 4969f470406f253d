//! Boot arguments: typed values parsed from the command line.
//!
//! A unikernel declares its arguments ([`Arg`]), each with a type, a
//! default and a line of documentation; the target hands [`parse`] the
//! command line (on Solo5, one string, split with [`split_cmdline`]). Errors
//! name the argument; the target reports them and exits with status 64
//! (`EX_USAGE`), as MirageOS does. `--help` lists the arguments. Two are
//! built in: `-l`/`--logs` (log levels, see [`crate::logger::LogSpec`]) and
//! `--help`.
//!
//! ```
//! use mirage_runtime::args::{Arg, parse};
//! let specs = [Arg::new::<String>("hello", Some("Hello World!"), "How to say hello.")];
//! let args = parse("hello-key", &specs, &["--hello=Hola!".into()]).unwrap();
//! assert_eq!(args.get::<String>("hello"), "Hola!");
//! ```

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;

use crate::logger::LogSpec;

/// A type a boot argument can have.
pub trait FromArg: Sized {
    /// Its name in `--help` (`STRING`, `IPV4/N`, ...).
    const TYPE: &'static str;
    /// Parses a value; the error says what was expected.
    fn from_arg(s: &str) -> Result<Self, String>;
}

impl FromArg for String {
    const TYPE: &'static str = "STRING";
    fn from_arg(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
}

impl FromArg for bool {
    const TYPE: &'static str = "BOOL";
    fn from_arg(s: &str) -> Result<Self, String> {
        match s {
            "true" | "yes" | "1" | "on" => Ok(true),
            "false" | "no" | "0" | "off" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
}

macro_rules! from_arg_int {
    ($($t:ty),*) => {$(
        impl FromArg for $t {
            const TYPE: &'static str = "INT";
            fn from_arg(s: &str) -> Result<Self, String> {
                s.parse().map_err(|_| format!("expected an integer from {} to {}", <$t>::MIN, <$t>::MAX))
            }
        }
    )*};
}
from_arg_int!(u8, u16, u32, u64, usize, i32, i64);

impl FromArg for Ipv4Addr {
    const TYPE: &'static str = "IPV4";
    fn from_arg(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| "expected an IPv4 address (A.B.C.D)".into())
    }
}

impl FromArg for Ipv6Addr {
    const TYPE: &'static str = "IPV6";
    fn from_arg(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| "expected an IPv6 address".into())
    }
}

impl FromArg for IpAddr {
    const TYPE: &'static str = "IP";
    fn from_arg(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| "expected an IP address".into())
    }
}

impl FromArg for SocketAddr {
    const TYPE: &'static str = "IP:PORT";
    fn from_arg(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| "expected an address and port (A.B.C.D:PORT or [V6]:PORT)".into())
    }
}

/// An IPv4 address with its prefix length: `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl From<Ipv4Cidr> for Ipv4Addr {
    fn from(c: Ipv4Cidr) -> Ipv4Addr {
        c.addr
    }
}

impl FromArg for Ipv4Cidr {
    const TYPE: &'static str = "IPV4/N";
    fn from_arg(s: &str) -> Result<Self, String> {
        let bad = || String::from("expected an IPv4 address and prefix length (A.B.C.D/N, N at most 32)");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 address with its prefix length: `fd00::2/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    /// The address.
    pub addr: Ipv6Addr,
    /// The prefix length, 0 to 128.
    pub prefix: u8,
}

impl FromArg for Ipv6Cidr {
    const TYPE: &'static str = "IPV6/N";
    fn from_arg(s: &str) -> Result<Self, String> {
        let bad = || String::from("expected an IPv6 address and prefix length (ADDR/N, N at most 128)");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 128 {
            return Err(bad());
        }
        Ok(Ipv6Cidr { addr, prefix })
    }
}

impl FromArg for Duration {
    const TYPE: &'static str = "DURATION";
    fn from_arg(s: &str) -> Result<Self, String> {
        let bad = || String::from("expected a duration: a number and ms, s, m or h (500ms, 10s)");
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = s[..digits].parse().map_err(|_| bad())?;
        let d = match &s[digits..] {
            "ms" => Duration::from_millis(n),
            "s" | "" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        Ok(d)
    }
}

impl<T: FromArg> FromArg for Option<T> {
    const TYPE: &'static str = T::TYPE;
    fn from_arg(s: &str) -> Result<Self, String> {
        if s.is_empty() { Ok(None) } else { T::from_arg(s).map(Some) }
    }
}

/// A boot argument a unikernel accepts.
#[derive(Clone)]
pub struct Arg {
    /// `--NAME`: a literal, or made at boot for a prefixed argument
    /// ([`Arg::prefixed`]).
    pub name: Cow<'static, str>,
    /// The default value, as text; `None` makes the argument required.
    pub default: Option<&'static str>,
    /// One line of documentation.
    pub doc: &'static str,
    /// The type's name for `--help`.
    pub type_name: &'static str,
    is_bool: bool,
    check: fn(&str) -> Result<(), String>,
}

impl fmt::Debug for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arg").field("name", &self.name).field("default", &self.default).finish()
    }
}

fn check<T: FromArg>(s: &str) -> Result<(), String> {
    T::from_arg(s).map(drop)
}

impl Arg {
    /// An argument of type `T`.
    pub fn new<T: FromArg>(name: &'static str, default: Option<&'static str>, doc: &'static str) -> Arg {
        Arg {
            name: Cow::Borrowed(name),
            default,
            doc,
            type_name: T::TYPE,
            is_bool: T::TYPE == bool::TYPE,
            check: check::<T>,
        }
    }

    /// The same argument for one of several devices: `--PREFIX-NAME`, as
    /// MirageOS groups the arguments of each of several stacks
    /// (`--uplink-ipv4`, `--inside-ipv4`).
    pub fn prefixed(mut self, prefix: &str) -> Arg {
        self.name = Cow::Owned(format!("{prefix}-{}", self.name));
        self
    }

    /// The same argument with another default.
    pub fn with_default(mut self, default: Option<&'static str>) -> Arg {
        self.default = default;
        self
    }
}

/// Why the command line was refused, or `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// `--help`: the text to print (status 0).
    Help(String),
    /// An argument nobody declared.
    Unknown(String),
    /// A required argument is missing.
    Missing(String),
    /// An argument that needs a value has none.
    NoValue(String),
    /// A value that does not parse.
    Invalid {
        /// The argument.
        name: String,
        /// The value given.
        value: String,
        /// What was expected.
        why: String,
    },
    /// A quote is not closed.
    UnterminatedQuote,
}

impl ArgError {
    /// The exit status for this error: 0 for `--help`, 64 otherwise.
    pub fn exit_status(&self) -> i32 {
        if matches!(self, ArgError::Help(_)) { 0 } else { 64 }
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Help(text) => f.write_str(text),
            ArgError::Unknown(a) => write!(f, "unknown argument '{a}'; try --help"),
            ArgError::Missing(n) => write!(f, "required argument --{n} is missing"),
            ArgError::NoValue(n) => write!(f, "argument '{n}' needs a value (--{}=VALUE)", n.trim_start_matches('-')),
            ArgError::Invalid { name, value, why } => write!(f, "invalid value '{value}' for --{name}: {why}"),
            ArgError::UnterminatedQuote => write!(f, "the command line has an unterminated quote"),
        }
    }
}

/// Parsed arguments.
#[derive(Debug, Clone)]
pub struct Args {
    values: Vec<(Cow<'static, str>, Option<String>)>,
    /// The log levels (`-l`).
    pub logs: LogSpec,
}

impl Args {
    /// The value of `name` as a `T`.
    ///
    /// # Panics
    /// If no argument `name` was declared, or it was declared with another
    /// type: a mistake in the unikernel, not in its command line.
    pub fn get<T: FromArg>(&self, name: &str) -> T {
        let v = self
            .values
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("boot argument --{name} was not declared"));
        match T::from_arg(v.1.as_deref().unwrap_or("")) {
            Ok(x) => x,
            Err(e) => panic!("boot argument --{name} was declared with another type: {e}"),
        }
    }
}

/// Splits a command line into words, as a shell would: blanks separate,
/// `'...'` and `"..."` group, `\` escapes the next character.
pub fn split_cmdline(line: &str) -> Result<Vec<String>, ArgError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(core::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            q @ ('\'' | '"') => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(ArgError::UnterminatedQuote),
                        Some(e) if e == q => break,
                        Some('\\') if q == '"' => {
                            if let Some(n) = chars.next() {
                                cur.push(n);
                            }
                        }
                        Some(e) => cur.push(e),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// The `--help` text.
pub fn help(program: &str, specs: &[Arg]) -> String {
    help_with(program, specs, &[])
}

/// The `--help` text, with the target's own options (`platform`: the
/// option as written, and its documentation) after the unikernel's, and
/// the log targets.
pub fn help_with(program: &str, specs: &[Arg], platform: &[(&str, &str)]) -> String {
    let mut rows: Vec<(String, String)> = specs
        .iter()
        .map(|a| {
            let flag = if a.is_bool { format!("--{}", a.name) } else { format!("--{}={}", a.name, a.type_name) };
            let doc = match a.default {
                Some(d) if !d.is_empty() => format!("{} (default: {d})", a.doc),
                Some(_) => a.doc.to_string(),
                None => format!("{} (required)", a.doc),
            };
            (flag, doc)
        })
        .collect();
    rows.extend(platform.iter().map(|(f, d)| (f.to_string(), d.to_string())));
    rows.push((
        "-l, --logs=LEVELS".into(),
        "Log levels: LEVEL, or TARGET:LEVEL,... with * for the other targets (default: info); LEVEL is quiet, error, warn, info, debug or trace.".into(),
    ));
    rows.push(("--help".into(), "Show this help.".into()));
    let w = rows.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
    let mut out = format!("{program}: boot arguments\n");
    for (f, d) in rows {
        out += &format!("  {f:w$}  {d}\n");
    }
    out += "Log targets (a target's level applies to its TARGET::... too):\n";
    // The unikernel's own: the log crate's default target is the module
    // path, which begins with the crate's name.
    let own = program.replace('-', "_");
    let w = crate::logger::TARGETS.iter().map(|(t, _)| t.len()).max().unwrap_or(0).max(own.len());
    for (t, d) in crate::logger::TARGETS {
        out += &format!("  {t:w$}  {d}\n");
    }
    out += &format!("  {own:w$}  the unikernel's own messages (its crate's name)\n");
    out
}

/// Parses `argv` (the words after the kernel) against `specs`.
pub fn parse(program: &str, specs: &[Arg], argv: &[String]) -> Result<Args, ArgError> {
    let mut values: Vec<(Cow<'static, str>, Option<String>)> =
        specs.iter().map(|a| (a.name.clone(), a.default.map(String::from))).collect();
    let mut logs = None;
    let mut i = 0;
    while i < argv.len() {
        let a = argv[i].as_str();
        i += 1;
        if a == "--help" || a == "-h" {
            return Err(ArgError::Help(help(program, specs)));
        }
        let (name, inline): (&str, Option<&str>) = if let Some(rest) = a.strip_prefix("--") {
            match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            }
        } else if let Some(rest) = a.strip_prefix("-l") {
            ("logs", if rest.is_empty() { None } else { Some(rest) })
        } else {
            return Err(ArgError::Unknown(a.to_string()));
        };
        if name == "logs" {
            let v = match inline {
                Some(v) => v.to_string(),
                None => argv.get(i).cloned().inspect(|_| i += 1).ok_or_else(|| ArgError::NoValue(a.to_string()))?,
            };
            logs = Some(LogSpec::parse(&v).map_err(|why| ArgError::Invalid { name: "logs".into(), value: v, why })?);
            continue;
        }
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            return Err(ArgError::Unknown(a.to_string()));
        };
        let value = match inline {
            Some(v) => v.to_string(),
            None if spec.is_bool => "true".to_string(),
            None => argv.get(i).cloned().inspect(|_| i += 1).ok_or_else(|| ArgError::NoValue(a.to_string()))?,
        };
        (spec.check)(&value).map_err(|why| ArgError::Invalid { name: name.to_string(), value: value.clone(), why })?;
        if let Some(slot) = values.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = Some(value);
        }
    }
    for (spec, (_, v)) in specs.iter().zip(&values) {
        match v {
            None => return Err(ArgError::Missing(spec.name.to_string())),
            Some(v) => (spec.check)(v).map_err(|why| ArgError::Invalid {
                name: spec.name.to_string(),
                value: v.clone(),
                why,
            })?,
        }
    }
    Ok(Args { values, logs: logs.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn specs() -> Vec<Arg> {
        vec![
            Arg::new::<String>("hello", Some("Hello World!"), "How to say hello."),
            Arg::new::<Ipv4Cidr>("ipv4", Some("10.0.0.2/24"), "The address."),
            Arg::new::<u16>("port", Some("8080"), "The port."),
            Arg::new::<bool>("verbose", Some("false"), "Say more."),
            Arg::new::<Duration>("timeout", Some("10s"), "Give up after."),
        ]
    }

    fn words(s: &str) -> Vec<String> {
        split_cmdline(s).unwrap()
    }

    #[test]
    fn values_defaults_and_types() {
        let a = parse("t", &specs(), &words("--hello=Hola! --port 80 --verbose --ipv4=192.168.1.7/16")).unwrap();
        assert_eq!(a.get::<String>("hello"), "Hola!");
        assert_eq!(a.get::<u16>("port"), 80);
        assert!(a.get::<bool>("verbose"));
        assert_eq!(a.get::<Ipv4Cidr>("ipv4"), Ipv4Cidr { addr: Ipv4Addr::new(192, 168, 1, 7), prefix: 16 });
        assert_eq!(a.get::<Duration>("timeout"), Duration::from_secs(10));
        let d = parse("t", &specs(), &[]).unwrap();
        assert_eq!(d.get::<String>("hello"), "Hello World!");
        assert!(!d.get::<bool>("verbose"));
    }

    #[test]
    fn errors_name_the_argument() {
        let e = parse("t", &specs(), &words("--port=99999")).unwrap_err();
        assert_eq!(e.to_string(), "invalid value '99999' for --port: expected an integer from 0 to 65535");
        assert_eq!(e.exit_status(), 64);
        let e = parse("t", &specs(), &words("--ipv4=10.0.0.2/33")).unwrap_err();
        assert!(e.to_string().starts_with("invalid value '10.0.0.2/33' for --ipv4"));
        assert_eq!(parse("t", &specs(), &words("--nope=1")).unwrap_err(), ArgError::Unknown("--nope=1".into()));
        assert_eq!(parse("t", &specs(), &words("stray")).unwrap_err(), ArgError::Unknown("stray".into()));
        assert!(matches!(parse("t", &specs(), &words("--port")).unwrap_err(), ArgError::NoValue(_)));
        let req = [Arg::new::<String>("name", None, "Required.")];
        assert_eq!(parse("t", &req, &[]).unwrap_err(), ArgError::Missing("name".into()));
    }

    #[test]
    fn prefixed_arguments_are_apart() {
        // Two devices with the same arguments, as the router's two
        // interfaces: each its own, with its own default.
        let ipv4 = Arg::new::<Ipv4Cidr>("ipv4", Some("10.0.0.2/24"), "The address.");
        let specs = [ipv4.clone().prefixed("uplink"), ipv4.prefixed("inside").with_default(Some("10.0.1.2/24"))];
        let a = parse("t", &specs, &words("--inside-ipv4=192.168.7.1/24")).unwrap();
        assert_eq!(a.get::<Ipv4Cidr>("uplink-ipv4").to_string(), "10.0.0.2/24");
        assert_eq!(a.get::<Ipv4Cidr>("inside-ipv4").to_string(), "192.168.7.1/24");
        assert_eq!(
            parse("t", &specs, &words("--ipv4=1.2.3.4/8")).unwrap_err(),
            ArgError::Unknown("--ipv4=1.2.3.4/8".into())
        );
        let e = parse("t", &specs, &words("--uplink-ipv4=nope")).unwrap_err();
        assert!(e.to_string().starts_with("invalid value 'nope' for --uplink-ipv4"), "{e}");
        assert!(help("t", &specs).contains("--inside-ipv4=IPV4/N"));
    }

    #[test]
    fn help_lists_everything() {
        let e = parse("hello-key", &specs(), &words("--port=1 --help")).unwrap_err();
        assert_eq!(e.exit_status(), 0);
        let ArgError::Help(text) = e else { panic!() };
        assert!(text.contains("--hello=STRING"));
        assert!(text.contains("How to say hello. (default: Hello World!)"));
        assert!(text.contains("--verbose "));
        assert!(text.contains("-l, --logs=LEVELS"));
        // The log targets, each with what logs under it.
        for t in ["mirage ", "tcpip ", "http "] {
            assert!(text.lines().any(|l| l.trim_start().starts_with(t)), "{t} is not listed:\n{text}");
        }
        let with = help_with("hello-key", &specs(), &[("--solo5:LEVEL", "The bindings' messages.")]);
        assert!(
            with.lines()
                .any(|l| l.trim_start().starts_with("--solo5:LEVEL ") && l.ends_with("The bindings' messages.")),
            "{with}"
        );
        assert!(with.contains("  hello_key  the unikernel's own messages"), "{with}");
    }

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(words(r#"--hello="Hola mundo" -l debug  'a b'\ c"#), ["--hello=Hola mundo", "-l", "debug", "a b c"]);
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words("\"\""), [""]);
        assert_eq!(split_cmdline("'abc"), Err(ArgError::UnterminatedQuote));
    }

    #[test]
    fn log_levels() {
        let a = parse("t", &specs(), &words("-l tcpip:debug,*:warn")).unwrap();
        assert_eq!(a.logs.level_for("tcpip"), log::LevelFilter::Debug);
        assert_eq!(a.logs.level_for("app"), log::LevelFilter::Warn);
        let a = parse("t", &specs(), &words("--logs=error")).unwrap();
        assert_eq!(a.logs.level_for("anything"), log::LevelFilter::Error);
        let e = parse("t", &specs(), &words("-l loud")).unwrap_err();
        assert!(e.to_string().contains("for --logs"));
    }
}
