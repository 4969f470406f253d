//! The configuration of a unikernel: `mirage.toml`, beside its Cargo.toml
//! (MirageOS's config.ml). Parsed with spans, so that every error names
//! the line and says how to fix it.
//!
//! ```toml
//! [unikernel]
//! name = "hello-key"
//! start = "hello_key::start"
//! # What start is given, in order: devices, then boot arguments.
//! arguments = ["console", "time", "hello"]
//!
//! [devices]
//! console = "console"
//! time = "time"
//!
//! [boot.hello]
//! type = "string"
//! default = "Hello World!"
//! doc = "How to say hello."
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, Table, Value};

use crate::generate::Libraries;

/// The configuration file's name.
pub const FILE: &str = "mirage.toml";

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The unikernel crate's directory.
    pub dir: PathBuf,
    /// The crate's package name (from its Cargo.toml).
    pub package: String,
    /// Where the crate takes the mirage-rs libraries from (its dependency
    /// on one of them, `mirage-devices` first), if it names one.
    pub libraries: Option<Libraries>,
    /// The unikernel's name: the image is `dist/NAME[.hvt|.spt]`.
    pub name: String,
    /// The start function's path, from the crate root (`hello::start`).
    pub start: String,
    /// What start is given, in order: device and boot argument names.
    pub arguments: Vec<String>,
    /// The devices, in declaration order.
    pub devices: Vec<Device>,
    /// The unikernel's own boot arguments, in declaration order.
    pub boot: Vec<BootArg>,
}

/// A device the unikernel uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Its name in the configuration (and the variable in the wiring).
    pub name: String,
    pub kind: Kind,
}

/// The kinds of device, and what each needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// The console.
    Console,
    /// The monotonic clock and sleep.
    Time,
    /// The wall clock (POSIX time).
    WallClock,
    /// Random bytes.
    Random,
    /// A network interface carrying raw Ethernet frames.
    Net { interface: String },
    /// A block device; `size` is what `mirage run` creates when the disk
    /// image is missing.
    Block { interface: String, size: u64 },
    /// A TCP/IP stack on a network interface (the direct stack on Solo5,
    /// the direct or host-socket stack on unix).
    Stack { interface: String, ipv4: Option<String>, gateway: Option<String> },
    /// An IP layer on a network interface (mirage-tcpip's `IpLayer` on
    /// every target): whole IP packets, ARP done beneath, a static address.
    Ip { interface: String, ipv4: Option<String>, gateway: Option<String> },
    /// A read-only key-value store of a directory: compiled into the image
    /// (crunch), or, with `store = "tar"`, a tar archive of it on block
    /// device `tar` that `mirage build` makes; with `store = "fat"`
    /// (`fat`), a FAT image on block device `tar`, made from the
    /// directory when missing and kept as data.
    KvRo { directory: PathBuf, tar: Option<String>, fat: bool },
    /// A read-write key-value store: a host directory on unix, memory on
    /// Solo5; with `store = "block"`, a crash-safe store on a block device
    /// on every target; with `store = "fat"`, a FAT volume on one.
    KvRw { block: Option<KvBlock> },
    /// A TLS server (certificates from directory `path` of kv-ro store
    /// `store`) or client (CA certificates from file `path` of `store`),
    /// used over stack `stack`; ALPN protocols `alpn`.
    Tls { server: bool, stack: String, store: String, path: String, alpn: Vec<String> },
}

/// The block device of a `store = "block"` or `store = "fat"` kv-rw
/// store.
#[derive(Debug, Clone, PartialEq)]
pub struct KvBlock {
    /// A FAT volume (`store = "fat"`) rather than a `BlockStore`.
    pub fat: bool,
    /// The block device (`interface`, the device's name by default).
    pub interface: String,
    /// The size of the disk image `mirage build` or `mirage run` formats
    /// when it is missing.
    pub size: u64,
    /// A directory whose files a new image is filled with.
    pub directory: Option<PathBuf>,
    /// Whether an acknowledged change must be on the disk (hvt and spt:
    /// the device attached with `--block-dsync:`, whose flushes sync),
    /// or may be in the host's page cache (`--block:`, Solo5's).
    pub durable: bool,
}

impl Kind {
    /// The name used in `mirage.toml`.
    pub fn keyword(&self) -> &'static str {
        match self {
            Kind::Console => "console",
            Kind::Time => "time",
            Kind::WallClock => "wall-clock",
            Kind::Random => "random",
            Kind::Net { .. } => "net",
            Kind::Block { .. } => "block",
            Kind::Stack { .. } => "stack",
            Kind::Ip { .. } => "ip",
            Kind::KvRo { .. } => "kv-ro",
            Kind::KvRw { .. } => "kv-rw",
            Kind::Tls { .. } => "tls",
        }
    }

    /// The host interface or block device it is attached to, if any.
    pub fn interface(&self) -> Option<&str> {
        match self {
            Kind::Net { interface }
            | Kind::Block { interface, .. }
            | Kind::Stack { interface, .. }
            | Kind::Ip { interface, .. } => Some(interface),
            Kind::KvRo { tar: Some(interface), .. } => Some(interface),
            Kind::KvRw { block: Some(b) } => Some(&b.interface),
            _ => None,
        }
    }
}

/// The device kinds, as `mirage.toml` names them.
pub const KINDS: [&str; 11] =
    ["console", "time", "wall-clock", "random", "net", "block", "stack", "ip", "kv-ro", "kv-rw", "tls"];

/// The keys a device of kind `kind` may have in its table (besides the
/// short form `name = "kind"`).
pub fn keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "net" => &["kind", "interface"],
        "block" => &["kind", "interface", "size"],
        "stack" | "ip" => &["kind", "interface", "ipv4", "gateway"],
        "kv-ro" => &["kind", "directory", "store", "interface"],
        "kv-rw" => &["kind", "store", "interface", "size", "directory", "durable"],
        "tls" => &["kind", "role", "stack", "store", "path", "alpn"],
        _ => &["kind"],
    }
}

/// The keys of `[unikernel]`.
pub const UNIKERNEL_KEYS: [&str; 3] = ["name", "start", "arguments"];

/// The keys of a `[boot.NAME]` table.
pub const BOOT_KEYS: [&str; 3] = ["type", "default", "doc"];

/// A boot argument of the unikernel's own.
#[derive(Debug, Clone, PartialEq)]
pub struct BootArg {
    pub name: String,
    pub ty: ArgType,
    /// `None`: the argument must be given.
    pub default: Option<String>,
    pub doc: String,
}

/// The types a boot argument may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    String,
    Bool,
    Int,
    U16,
    U32,
    U64,
    Ipv4,
    Ipv4Cidr,
}

impl ArgType {
    fn parse(s: &str) -> Option<ArgType> {
        Some(match s {
            "string" => ArgType::String,
            "bool" => ArgType::Bool,
            "int" => ArgType::Int,
            "u16" => ArgType::U16,
            "u32" => ArgType::U32,
            "u64" => ArgType::U64,
            "ipv4" => ArgType::Ipv4,
            "ipv4-cidr" => ArgType::Ipv4Cidr,
            _ => return None,
        })
    }

    /// The Rust type the wiring parses it into.
    pub fn rust(self) -> &'static str {
        match self {
            ArgType::String => "String",
            ArgType::Bool => "bool",
            ArgType::Int => "i64",
            ArgType::U16 => "u16",
            ArgType::U32 => "u32",
            ArgType::U64 => "u64",
            ArgType::Ipv4 => "core::net::Ipv4Addr",
            ArgType::Ipv4Cidr => "mirage_runtime::args::Ipv4Cidr",
        }
    }

    /// Whether `value` is a valid value of the type (checked at configure
    /// time for defaults, so a bad default never reaches a boot).
    fn accepts(self, value: &str) -> bool {
        match self {
            ArgType::String => true,
            ArgType::Bool => matches!(value, "true" | "false"),
            ArgType::Int => value.parse::<i64>().is_ok(),
            ArgType::U16 => value.parse::<u16>().is_ok(),
            ArgType::U32 => value.parse::<u32>().is_ok(),
            ArgType::U64 => value.parse::<u64>().is_ok(),
            ArgType::Ipv4 => value.parse::<std::net::Ipv4Addr>().is_ok(),
            ArgType::Ipv4Cidr => valid_cidr(value),
        }
    }
}

/// The boot-argument types, as `mirage.toml` names them.
pub const TYPES: [&str; 8] = ["string", "bool", "int", "u16", "u32", "u64", "ipv4", "ipv4-cidr"];

fn valid_cidr(s: &str) -> bool {
    s.split_once('/')
        .is_some_and(|(a, p)| a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32))
}

/// A configuration error: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    pub cause: String,
    pub fix: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.cause)?,
            l => write!(f, "{}:{l}: {}", self.file.display(), self.cause)?,
        }
        write!(f, "\n  fix: {}", self.fix)
    }
}

struct Parser<'a> {
    file: PathBuf,
    text: &'a str,
}

impl Parser<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> usize {
        span.map_or(0, |s| self.text[..s.start.min(self.text.len())].matches('\n').count() + 1)
    }

    fn err(&self, span: Option<std::ops::Range<usize>>, cause: impl Into<String>, fix: impl Into<String>) -> Error {
        Error { file: self.file.clone(), line: self.line(span), cause: cause.into(), fix: fix.into() }
    }

    fn table<'t>(&self, doc: &'t Table, key: &str, fix: &str) -> Result<&'t Table, Error> {
        match doc.get(key) {
            Some(Item::Table(t)) => Ok(t),
            Some(other) => Err(self.err(other.span(), format!("`{key}` must be a table"), fix)),
            None => Err(self.err(None, format!("no [{key}] table"), fix)),
        }
    }

    fn string(&self, t: &Table, key: &str, table: &str) -> Result<Option<(String, usize)>, Error> {
        match t.get(key) {
            None => Ok(None),
            Some(Item::Value(Value::String(s))) => Ok(Some((s.value().clone(), self.line(s.span())))),
            Some(other) => Err(self.err(
                other.span(),
                format!("`{key}` in [{table}] must be a string"),
                format!("write it in quotes: {key} = \"...\""),
            )),
        }
    }

    fn unknown_keys(&self, t: &Table, table: &str, allowed: &[&str]) -> Result<(), Error> {
        for (k, item) in t.iter() {
            if !allowed.contains(&k) {
                return Err(self.err(
                    t.key(k).and_then(|k| k.span()).or_else(|| item.span()),
                    format!("unknown key `{k}` in [{table}]"),
                    format!("the keys of [{table}] are: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

/// A name usable as a device or argument name: it becomes a Rust variable
/// and a command-line option.
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Names the wiring itself uses for variables and options.
const RESERVED: &[&str] = &["args", "specs", "si", "help", "logs", "start"];

/// Reads and checks `dir/mirage.toml`.
pub fn load(dir: &Path) -> Result<Config, Error> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error {
        file: path.clone(),
        line: 0,
        cause: format!("cannot read it: {e}"),
        fix: if e.kind() == std::io::ErrorKind::NotFound {
            "run mirage in the unikernel's directory (the one with mirage.toml), or start one with `mirage new NAME`"
                .into()
        } else {
            "check the file's permissions".into()
        },
    })?;
    let krate = crate_info(dir)?;
    let mut config = parse(&path, &text, dir, krate.package)?;
    config.libraries = krate.libraries;
    check_start(&config, &krate.lib.unwrap_or_else(|| ident(&config.package)), &path, &text)?;
    Ok(config)
}

/// What the tool reads of the unikernel's Cargo.toml.
struct CrateInfo {
    package: String,
    /// `[lib] name`, when given.
    lib: Option<String>,
    libraries: Option<Libraries>,
}

/// The mirage-rs libraries a unikernel may depend on, in the order their
/// dependency is looked at to find where they come from.
pub const LIBRARIES: [&str; 9] = [
    "mirage-devices",
    "mirage-runtime",
    "mirage-http",
    "mirage-kv",
    "mirage-tcpip",
    "mirage-unix",
    "mirage-solo5",
    "solo5-abi",
    "solo5-elf",
];

/// Where `dependency` (one entry of `[dependencies]` of the crate in `dir`)
/// takes its library from: its path's directory, its git repository,
/// or the registry. `None` for a form that says nothing (`workspace = true`).
fn source(dir: &Path, dependency: &Item) -> Option<Libraries> {
    if let Some(version) = dependency.as_str() {
        return Some(Libraries::Registry(version.to_string()));
    }
    let t = dependency.as_table_like()?;
    let get = |k: &str| t.get(k).and_then(|v| v.as_str()).map(String::from);
    if let Some(path) = get("path") {
        let at = dir.join(path);
        // The libraries sit side by side: the directory holding this one.
        let crates = at.canonicalize().unwrap_or(at).parent()?.to_path_buf();
        return Some(Libraries::Path(crates));
    }
    if let Some(url) = get("git") {
        let reference = ["branch", "tag", "rev"].iter().find_map(|k| get(k).map(|v| (k.to_string(), v)));
        return Some(Libraries::Git { url, reference });
    }
    get("version").map(Libraries::Registry)
}

/// The package name, library name and mirage-rs dependency of
/// `dir/Cargo.toml`.
fn crate_info(dir: &Path) -> Result<CrateInfo, Error> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error {
        file: path.clone(),
        line: 0,
        cause: format!("cannot read it: {e}"),
        fix: "a unikernel is a Rust library crate: mirage.toml sits beside its Cargo.toml".into(),
    })?;
    let doc = ImDocument::parse(text.as_str()).map_err(|e| Error {
        file: path.clone(),
        line: e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        cause: e.message().trim().to_string(),
        fix: "correct the TOML syntax".into(),
    })?;
    let package =
        doc.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).map(String::from).ok_or_else(|| {
            Error {
                file: path,
                line: 0,
                cause: "no [package] name".into(),
                fix: "add name = \"...\" under [package]".into(),
            }
        })?;
    let lib = doc.get("lib").and_then(|l| l.get("name")).and_then(|n| n.as_str()).map(String::from);
    let deps = doc.get("dependencies").and_then(Item::as_table_like);
    let libraries = deps.and_then(|d| LIBRARIES.iter().find_map(|name| d.get(name).and_then(|item| source(dir, item))));
    Ok(CrateInfo { package, lib, libraries })
}

/// A crate name as Rust code names it.
fn ident(package: &str) -> String {
    package.replace('-', "_")
}

/// The start function must be the unikernel crate's: the wiring calls it
/// from outside, where nothing else is in scope (and `start` alone would
/// name the wiring's own function).
fn check_start(config: &Config, lib: &str, path: &Path, text: &str) -> Result<(), Error> {
    let first = config.start.split("::").next().unwrap_or_default();
    if config.start.contains("::") && first == lib {
        return Ok(());
    }
    let line = text.lines().position(|l| l.trim_start().starts_with("start")).map_or(0, |i| i + 1);
    Err(Error {
        file: path.to_path_buf(),
        line,
        cause: format!(
            "start = {:?} is not a function of the unikernel crate {lib}: the wiring calls it from outside the crate",
            config.start
        ),
        fix: format!(
            "name it from the crate root, as in start = \"{lib}::{}\"",
            config.start.rsplit("::").next().unwrap_or("start")
        ),
    })
}

/// Parses and checks the text of a configuration.
pub fn parse(path: &Path, text: &str, dir: &Path, package: String) -> Result<Config, Error> {
    let p = Parser { file: path.to_path_buf(), text };
    let doc = ImDocument::parse(text).map_err(|e| {
        let msg = e.message().trim().to_string();
        let fix = if msg.contains("duplicate key") {
            "declare each device and argument once: remove or rename the second".to_string()
        } else {
            "correct the TOML syntax at that line".to_string()
        };
        p.err(e.span(), msg, fix)
    })?;
    let root = doc.as_table();
    p.unknown_keys(root, "top level", &["unikernel", "devices", "boot"])?;
    let u = p.table(root, "unikernel", "start the file with [unikernel] and its name, start and arguments")?;
    p.unknown_keys(u, "unikernel", &UNIKERNEL_KEYS)?;
    let (name, name_line) = p
        .string(u, "name", "unikernel")?
        .ok_or_else(|| p.err(u.span(), "[unikernel] has no name", "add name = \"...\": the image is dist/NAME"))?;
    if !valid_name(&name) {
        return Err(Error {
            file: p.file.clone(),
            line: name_line,
            cause: format!("the name {name:?} is not usable as a file name and program name"),
            fix: "use lowercase letters, digits, - and _, starting with a letter".into(),
        });
    }
    let (start, start_line) = p.string(u, "start", "unikernel")?.ok_or_else(|| {
        p.err(
            u.span(),
            "[unikernel] has no start function",
            format!("add start = \"{}::start\"", package.replace('-', "_")),
        )
    })?;
    if start.split("::").any(|seg| seg.is_empty() || !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return Err(Error {
            file: p.file.clone(),
            line: start_line,
            cause: format!("start = {start:?} is not a Rust path"),
            fix: format!("name the function from the crate root, as in \"{}::start\"", ident(&package)),
        });
    }
    if !start.contains("::") {
        let lib = ident(&package);
        return Err(Error {
            file: p.file.clone(),
            line: start_line,
            cause: format!(
                "start = {start:?} is not a function of the unikernel crate {lib}: the wiring calls it from outside the crate (and `{start}` alone names the wiring's own function)"
            ),
            fix: format!("name it from the crate root, as in start = \"{lib}::{start}\""),
        });
    }

    // Devices.
    let mut devices = Vec::new();
    let mut interfaces: Vec<(String, &'static str, String)> = Vec::new();
    if let Some(item) = root.get("devices") {
        let Item::Table(t) = item else {
            return Err(p.err(item.span(), "`devices` must be a table", "write [devices] and one line per device"));
        };
        for (key, item) in t.iter() {
            let key_span = t.key(key).and_then(|k| k.span());
            if !valid_name(key) || RESERVED.contains(&key) {
                return Err(p.err(
                    key_span,
                    format!("the device name {key:?} cannot be a Rust variable here"),
                    "use lowercase letters, digits, - and _, starting with a letter (and not args, specs, si, help, logs, start)",
                ));
            }
            let kind = device(&p, key, item, dir)?;
            if let Some(iface) = kind.interface() {
                let class = if matches!(kind, Kind::Block { .. } | Kind::KvRo { .. } | Kind::KvRw { .. }) {
                    "block"
                } else {
                    "network"
                };
                if let Some((other, _, _)) = interfaces.iter().find(|(_, c, i)| *c == class && i == iface) {
                    return Err(p.err(
                        key_span,
                        format!("devices {other} and {key} are both on the {class} device {iface:?}: a device declared twice"),
                        format!("give {key} its own interface (interface = \"...\"), or use {other} for both"),
                    ));
                }
                interfaces.push((key.to_string(), class, iface.to_string()));
            }
            devices.push(Device { name: key.to_string(), kind });
        }
    }

    // Boot arguments.
    let mut boot = Vec::new();
    if let Some(item) = root.get("boot") {
        let Item::Table(t) = item else {
            return Err(p.err(
                item.span(),
                "`boot` must be a table",
                "declare each argument as [boot.NAME] with type, default and doc",
            ));
        };
        for (key, item) in t.iter() {
            let key_span = t.key(key).and_then(|k| k.span());
            if !valid_name(key) || RESERVED.contains(&key) {
                return Err(p.err(
                    key_span,
                    format!("the argument name {key:?} is not usable"),
                    "use lowercase letters, digits, - and _, starting with a letter",
                ));
            }
            if devices.iter().any(|d| d.name == key) {
                return Err(p.err(
                    key_span,
                    format!("{key} is both a device and a boot argument: a name declared twice"),
                    "rename one of them",
                ));
            }
            let Item::Table(a) = item else {
                return Err(p.err(
                    item.span(),
                    format!("boot.{key} must be a table"),
                    format!("write [boot.{key}] with type = \"...\""),
                ));
            };
            let table = format!("boot.{key}");
            p.unknown_keys(a, &table, &BOOT_KEYS)?;
            let (ty, ty_line) = p.string(a, "type", &table)?.ok_or_else(|| {
                p.err(
                    key_span.clone(),
                    format!("[boot.{key}] has no type"),
                    format!("add type = \"...\", one of {}", TYPES.join(", ")),
                )
            })?;
            let ty = ArgType::parse(&ty).ok_or_else(|| Error {
                file: p.file.clone(),
                line: ty_line,
                cause: format!("unknown argument type {ty:?}"),
                fix: format!("use one of {}", TYPES.join(", ")),
            })?;
            let default = match a.get("default") {
                None => None,
                Some(Item::Value(v)) => {
                    let s = match v {
                        Value::String(s) => s.value().clone(),
                        Value::Boolean(b) => b.value().to_string(),
                        Value::Integer(i) => i.value().to_string(),
                        _ => {
                            return Err(p.err(
                                v.span(),
                                "a default is a string, a boolean or an integer",
                                "write it as in the command line",
                            ));
                        }
                    };
                    if !ty.accepts(&s) {
                        return Err(p.err(
                            v.span(),
                            format!("the default {s:?} is not a valid {}", ty.keyword()),
                            "give a default of the argument's type",
                        ));
                    }
                    Some(s)
                }
                Some(other) => return Err(p.err(other.span(), "a default is a value", "write default = \"...\"")),
            };
            let doc = p.string(a, "doc", &table)?.map(|d| d.0).unwrap_or_default();
            boot.push(BootArg { name: key.to_string(), ty, default, doc });
        }
    }

    // What start takes.
    let mut arguments = Vec::new();
    match u.get("arguments") {
        None => {}
        Some(Item::Value(Value::Array(a))) => {
            let mut seen = BTreeSet::new();
            for v in a.iter() {
                let Value::String(s) = v else {
                    return Err(p.err(
                        v.span(),
                        "arguments are names in quotes",
                        "write arguments = [\"console\", ...]",
                    ));
                };
                let n = s.value();
                if !devices.iter().any(|d| &d.name == n) && !boot.iter().any(|b| &b.name == n) {
                    return Err(p.err(
                        s.span(),
                        format!("start's argument {n:?} is neither a device nor a boot argument"),
                        format!("declare it under [devices] or as [boot.{n}], or remove it"),
                    ));
                }
                if !seen.insert(n.clone()) {
                    return Err(p.err(
                        s.span(),
                        format!("{n:?} is given to start twice"),
                        "list each device or argument once",
                    ));
                }
                arguments.push(n.clone());
            }
        }
        Some(other) => {
            return Err(p.err(other.span(), "`arguments` must be a list", "write arguments = [\"console\", ...]"));
        }
    }
    // A TLS device names a stack and a kv-ro store declared here.
    for d in &devices {
        if let Kind::Tls { stack, store, .. } = &d.kind {
            let is = |name: &str, f: &dyn Fn(&Kind) -> bool| devices.iter().any(|x| x.name == name && f(&x.kind));
            let line = device_line(p.text, &d.name);
            if !is(stack, &|k| matches!(k, Kind::Stack { .. })) {
                return Err(Error {
                    file: p.file.clone(),
                    line,
                    cause: format!("the TLS device {} names stack {stack:?}, which is not a stack device", d.name),
                    fix: format!("declare {stack} = {{ kind = \"stack\" }}, or name the stack you have"),
                });
            }
            if !is(store, &|k| matches!(k, Kind::KvRo { .. })) {
                return Err(Error {
                    file: p.file.clone(),
                    line,
                    cause: format!("the TLS device {} names store {store:?}, which is not a kv-ro device", d.name),
                    fix: format!(
                        "declare {store} = {{ kind = \"kv-ro\", directory = \"tls\" }}, or name the store you have"
                    ),
                });
            }
        }
    }
    for d in &devices {
        // A store read by a TLS device need not reach start itself.
        let read_by_tls = devices.iter().any(|x| matches!(&x.kind, Kind::Tls { store, .. } if *store == d.name));
        if !arguments.contains(&d.name) && !read_by_tls {
            return Err(Error {
                file: p.file.clone(),
                line: 0,
                cause: format!("the device {} is declared but not given to start", d.name),
                fix: format!("add \"{}\" to arguments in [unikernel], or remove the device", d.name),
            });
        }
    }
    Ok(Config { dir: dir.to_path_buf(), package, libraries: None, name, start, arguments, devices, boot })
}

/// The line that declares device `name` (`name = ...` or `[devices.name]`),
/// 0 if none is found.
fn device_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l == format!("[devices.{name}]")
                || l.strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

impl ArgType {
    /// The type's name in `mirage.toml`.
    pub fn keyword(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Bool => "bool",
            ArgType::Int => "int",
            ArgType::U16 => "u16",
            ArgType::U32 => "u32",
            ArgType::U64 => "u64",
            ArgType::Ipv4 => "ipv4",
            ArgType::Ipv4Cidr => "ipv4-cidr",
        }
    }
}

/// Parses sizes such as `4M`, `512K`, `1G` or a byte count.
/// A size such as `4M`, `512K` or `1G` in bytes.
pub fn size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => (
            &s[..i],
            match s[i..].trim().trim_end_matches(['B', 'b']).trim_end_matches('i') {
                "K" | "k" => 1 << 10,
                "M" | "m" => 1 << 20,
                "G" | "g" => 1 << 30,
                "" => 1,
                _ => return None,
            },
        ),
    };
    // A size past u64 is no size (rather than one wrapped round).
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

fn device(p: &Parser<'_>, key: &str, item: &Item, dir: &Path) -> Result<Kind, Error> {
    let (kind, table, span) = match item {
        Item::Value(Value::String(s)) => (s.value().clone(), None, s.span()),
        Item::Value(Value::InlineTable(t)) => {
            let kind = t.get("kind").and_then(|v| v.as_str()).map(String::from);
            let kind = kind.ok_or_else(|| {
                p.err(
                    t.span(),
                    format!("device {key} has no kind"),
                    format!("add kind = \"...\", one of {}", KINDS.join(", ")),
                )
            })?;
            (kind, Some(t.clone().into_table()), t.span())
        }
        Item::Table(t) => {
            let kind = p
                .string(t, "kind", &format!("devices.{key}"))?
                .ok_or_else(|| {
                    p.err(
                        t.span(),
                        format!("device {key} has no kind"),
                        format!("add kind = \"...\", one of {}", KINDS.join(", ")),
                    )
                })?
                .0;
            (kind, Some(t.clone()), t.span())
        }
        other => {
            return Err(p.err(
                other.span(),
                format!("device {key} must be a kind or a table"),
                format!("write {key} = \"console\", or {key} = {{ kind = \"stack\", interface = \"service\" }}"),
            ));
        }
    };
    let t = table.unwrap_or_default();
    let tname = format!("devices.{key}");
    let opt = |k: &str| -> Result<Option<String>, Error> {
        match t.get(k) {
            None => Ok(None),
            Some(i) => i.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                p.err(
                    i.span().or(span.clone()),
                    format!("`{k}` of device {key} must be a string"),
                    format!("write {k} = \"...\""),
                )
            }),
        }
    };
    let interface = |default: &str| -> Result<String, Error> {
        let i = opt("interface")?.unwrap_or_else(|| default.to_string());
        if i.is_empty() || i.len() > 67 || !i.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(p.err(
                span.clone(),
                format!("interface {i:?} of device {key} is not a valid Solo5 device name"),
                "use up to 67 letters, digits, - and _",
            ));
        }
        Ok(i)
    };
    let sectors = |default: u64| -> Result<u64, Error> {
        match opt("size")? {
            None => Ok(default),
            Some(s) => size(&s).filter(|&n| n > 0 && n % 512 == 0).ok_or_else(|| {
                p.err(
                    span.clone(),
                    format!("size {s:?} of device {key} is not a size in whole sectors"),
                    "write a size such as \"4M\" or \"512K\"",
                )
            }),
        }
    };
    let directory = |d: &str| -> Result<PathBuf, Error> {
        if !dir.join(d).is_dir() {
            return Err(p.err(
                span.clone(),
                format!("the directory {d:?} of device {key} does not exist"),
                "create it, or name an existing directory (relative to mirage.toml)",
            ));
        }
        Ok(PathBuf::from(d))
    };
    let k = match kind.as_str() {
        "console" => Kind::Console,
        "time" => Kind::Time,
        "wall-clock" => Kind::WallClock,
        "random" => Kind::Random,
        "net" => Kind::Net { interface: interface("service")? },
        "block" => Kind::Block { interface: interface("storage")?, size: sectors(1 << 20)? },
        "stack" | "ip" => {
            let ipv4 = opt("ipv4")?;
            // An IP layer may lease its address ("dhcp"); a stack does
            // when it is given none.
            if let Some(a) = &ipv4
                && !valid_cidr(a)
                && !(kind == "ip" && a == "dhcp")
            {
                let fix = if kind == "ip" {
                    "write it as \"10.0.0.2/24\", or \"dhcp\" for a lease"
                } else {
                    "write it as \"10.0.0.2/24\", or leave it out for a DHCP lease"
                };
                return Err(p.err(
                    span.clone(),
                    format!("ipv4 {a:?} of device {key} is not an address with a prefix length"),
                    fix,
                ));
            }
            let gateway = opt("gateway")?;
            if let Some(g) = &gateway
                && g.parse::<std::net::Ipv4Addr>().is_err()
            {
                return Err(p.err(
                    span.clone(),
                    format!("gateway {g:?} of device {key} is not an IPv4 address"),
                    "write it as \"10.0.0.1\"",
                ));
            }
            let interface = interface("service")?;
            if kind == "ip" { Kind::Ip { interface, ipv4, gateway } } else { Kind::Stack { interface, ipv4, gateway } }
        }
        "kv-ro" => {
            let d = opt("directory")?.ok_or_else(|| {
                p.err(
                    span.clone(),
                    format!("the kv-ro device {key} has no directory"),
                    format!("write {key} = {{ kind = \"kv-ro\", directory = \"data\" }}"),
                )
            })?;
            let d = directory(&d)?;
            let store = opt("store")?;
            let fat = store.as_deref() == Some("fat");
            let tar = match store.as_deref() {
                None | Some("crunch") => None,
                Some("tar" | "fat") => Some(interface(key)?),
                Some(other) => {
                    return Err(p.err(
                        span.clone(),
                        format!("unknown store {other:?} of device {key}"),
                        "use store = \"crunch\" (compiled into the image), store = \"tar\" (a disk image) or \
                         store = \"fat\" (a FAT disk image)",
                    ));
                }
            };
            if tar.is_none() && opt("interface")?.is_some() {
                return Err(p.err(
                    span.clone(),
                    format!("device {key} has an interface but is compiled into the image"),
                    "add store = \"tar\", or drop interface",
                ));
            }
            Kind::KvRo { directory: d, tar, fat }
        }
        "kv-rw" => match opt("store")?.as_deref() {
            None | Some("host") => {
                if let Some(k) = ["interface", "size", "directory", "durable"].into_iter().find(|k| t.contains_key(k)) {
                    return Err(p.err(
                        span.clone(),
                        format!("device {key} has `{k}` but is not on a block device"),
                        format!("add store = \"block\", or drop {k}"),
                    ));
                }
                Kind::KvRw { block: None }
            }
            Some(store @ ("block" | "fat")) => Kind::KvRw {
                block: Some(KvBlock {
                    fat: store == "fat",
                    interface: interface(key)?,
                    size: sectors(4 << 20)?,
                    directory: opt("directory")?.map(|d| directory(&d)).transpose()?,
                    durable: match t.get("durable") {
                        None => true,
                        Some(i) => i.as_bool().ok_or_else(|| {
                            p.err(
                                i.span().or(span.clone()),
                                format!("`durable` of device {key} must be true or false"),
                                "write durable = true (an acknowledged change is on the disk) or durable = false \
                                 (in the host's page cache: it survives the unikernel, not a power loss)",
                            )
                        })?,
                    },
                }),
            },
            Some(other) => {
                return Err(p.err(
                    span.clone(),
                    format!("unknown store {other:?} of device {key}"),
                    "use store = \"block\" (a crash-safe store on a disk image, every target), store = \"fat\" (a FAT \
                     disk image, every target), or leave store out (a host directory on unix, memory on hvt and spt)",
                ));
            }
        },
        "tls" => {
            let server = match opt("role")?.as_deref() {
                None | Some("server") => true,
                Some("client") => false,
                Some(other) => {
                    return Err(p.err(
                        span.clone(),
                        format!("unknown role {other:?} of TLS device {key}"),
                        "use role = \"server\" or role = \"client\"",
                    ));
                }
            };
            let required = |k: &str, what: &str| -> Result<String, Error> {
                opt(k)?.ok_or_else(|| {
                    p.err(
                        span.clone(),
                        format!("the TLS device {key} has no {k}"),
                        format!("add {k} = \"NAME\", the name of {what} device"),
                    )
                })
            };
            let stack = required("stack", "a stack")?;
            let store = required("store", "a kv-ro")?;
            let path = opt("path")?.unwrap_or_else(|| if server { "/".into() } else { "ca.pem".into() });
            let alpn: Vec<String> = opt("alpn")?
                .map(|a| a.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
                .unwrap_or_default();
            if let Some(bad) = alpn.iter().find(|p| p.len() > 255 || p.contains('"') || p.contains('\\')) {
                return Err(p.err(
                    span.clone(),
                    format!("ALPN protocol {bad:?} of TLS device {key} is not a protocol name"),
                    "write alpn = \"http/1.1\" (several separated by commas)",
                ));
            }
            Kind::Tls { server, stack, store, path, alpn }
        }
        other => {
            return Err(p.err(
                span.clone(),
                format!("unknown device kind {other:?}"),
                format!("use one of {}", KINDS.join(", ")),
            ));
        }
    };
    p.unknown_keys(&t, &tname, keys(k.keyword()))?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, Error> {
        parse(Path::new("mirage.toml"), text, Path::new("."), "demo".into())
    }

    const GOOD: &str = r#"
[unikernel]
name = "demo"
start = "demo::start"
arguments = ["console", "net", "greeting", "port"]

[devices]
console = "console"
net = { kind = "stack", interface = "service", ipv4 = "10.0.0.2/24" }

[boot.greeting]
type = "string"
default = "hi"
doc = "What to say."

[boot.port]
type = "u16"
default = 8080
"#;

    #[test]
    fn a_kv_rw_store_on_a_block_device() {
        let good = GOOD.replace("\"port\"]", "\"port\", \"kv\"]");
        let c =
            check(&good.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", store = \"block\", size = \"8M\" }"))
                .unwrap();
        let kv = c.devices.iter().find(|d| d.name == "kv").unwrap();
        assert_eq!(
            kv.kind,
            Kind::KvRw {
                block: Some(KvBlock {
                    fat: false,
                    interface: "kv".into(),
                    size: 8 << 20,
                    directory: None,
                    durable: true
                })
            }
        );
        assert_eq!(kv.kind.interface(), Some("kv"));
        // A FAT volume, on every target too.
        let c = check(&good.replace(
            "[devices]",
            "[devices]\nkv = { kind = \"kv-rw\", store = \"fat\", size = \"8M\", directory = \".\" }",
        ))
        .unwrap();
        assert!(matches!(&c.devices[0].kind, Kind::KvRw { block: Some(b) } if b.fat && b.size == 8 << 20));
        let ro = GOOD.replace("\"port\"]", "\"port\", \"ro\"]");
        let c =
            check(&ro.replace("[devices]", "[devices]\nro = { kind = \"kv-ro\", directory = \".\", store = \"fat\" }"))
                .unwrap();
        assert!(matches!(&c.devices[0].kind, Kind::KvRo { tar: Some(i), fat: true, .. } if i == "ro"));
        let c = check(&good.replace("[devices]", "[devices]\nkv = \"kv-rw\"")).unwrap();
        assert_eq!(c.devices[0].kind, Kind::KvRw { block: None });
        // durable = false: the page cache is enough.
        let c = check(
            &good.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", store = \"block\", durable = false }"),
        )
        .unwrap();
        assert!(matches!(&c.devices[0].kind, Kind::KvRw { block: Some(b) } if !b.durable));
        let e = check(
            &good.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", store = \"block\", durable = \"yes\" }"),
        )
        .unwrap_err();
        assert!(
            e.cause.contains("`durable` of device kv must be true or false") && e.fix.contains("durable = false"),
            "{e}"
        );
        let e = check(&good.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", durable = true }")).unwrap_err();
        assert!(e.cause.contains("has `durable` but is not on a block device"), "{e}");
    }

    #[test]
    fn a_good_configuration() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.name, "demo");
        assert_eq!(c.arguments, ["console", "net", "greeting", "port"]);
        assert_eq!(
            c.devices[1].kind,
            Kind::Stack { interface: "service".into(), ipv4: Some("10.0.0.2/24".into()), gateway: None }
        );
        assert_eq!(c.boot[1].default.as_deref(), Some("8080"));
    }

    fn error(text: &str) -> Error {
        check(text).expect_err("the configuration should be refused")
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let e = error(&GOOD.replace("\"console\"\nnet", "\"consle\"\nnet"));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.cause.contains("unknown device kind \"consle\"") && e.fix.contains("console, time"), "{e}");

        let e = error(&GOOD.replace("net = {", "console = \"console\"\nnet = {"));
        assert_eq!(e.line, 9, "{e}");
        assert!(e.cause.contains("duplicate key") && e.fix.contains("once"), "{e}");

        let e = error(&GOOD.replace("default = 8080", "default = 80800"));
        assert!(e.cause.contains("not a valid u16"), "{e}");
        assert_eq!(e.line, 18);

        let e = error(&GOOD.replace("\"port\"]", "\"prot\"]"));
        assert!(e.cause.contains("\"prot\" is neither"), "{e}");
        assert_eq!(e.line, 5);

        let e = error(&GOOD.replace("type = \"u16\"", "type = \"short\""));
        assert!(e.cause.contains("unknown argument type") && e.fix.contains("u16"), "{e}");

        let e = error(&GOOD.replace("ipv4 = \"10.0.0.2/24\"", "ipv4 = \"10.0.0.2\""));
        assert!(e.fix.contains("10.0.0.2/24"), "{e}");
        // "dhcp" is an IP layer's, not a stack's.
        let e = error(&GOOD.replace("ipv4 = \"10.0.0.2/24\"", "ipv4 = \"dhcp\""));
        assert!(e.fix.contains("leave it out"), "{e}");
        let ip = GOOD.replace(
            "kind = \"stack\", interface = \"service\", ipv4 = \"10.0.0.2/24\"",
            "kind = \"ip\", interface = \"service\", ipv4 = \"dhcp\"",
        );
        assert!(ip.contains("ipv4 = \"dhcp\""));
        let c = check(&ip).unwrap();
        assert_eq!(
            c.devices[1].kind,
            Kind::Ip { interface: "service".into(), ipv4: Some("dhcp".into()), gateway: None }
        );

        let e = error(
            &GOOD
                .replace("[devices]", "[devices]\nnet2 = { kind = \"net\" }")
                .replace("\"port\"]", "\"port\", \"net2\"]"),
        );
        assert!(e.cause.contains("declared twice"), "{e}");

        let e = error(&GOOD.replace("name = \"demo\"\n", ""));
        assert!(e.cause.contains("no name"), "{e}");

        let e = error(&GOOD.replace("[unikernel]", "[unikernel]\nflavour = \"x\""));
        assert!(e.cause.contains("unknown key `flavour`") && e.line == 3, "{e}");

        let e = error(
            &GOOD.replace("[devices]", "[devices]\nkv = { kind = \"kv-ro\", directory = \".\", store = \"zip\" }"),
        );
        assert!(e.cause.contains("unknown store \"zip\"") && e.fix.contains("store = \"tar\""), "{e}");

        let e = error(
            &GOOD.replace("[devices]", "[devices]\nkv = { kind = \"kv-ro\", directory = \".\", interface = \"disk\" }"),
        );
        assert!(e.cause.contains("compiled into the image") && e.fix.contains("store = \"tar\""), "{e}");

        let e = error(&GOOD.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", store = \"sqlite\" }"));
        assert!(e.cause.contains("unknown store \"sqlite\"") && e.fix.contains("store = \"block\""), "{e}");

        let e = error(&GOOD.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", size = \"4M\" }"));
        assert!(
            e.cause.contains("has `size` but is not on a block device") && e.fix.contains("store = \"block\""),
            "{e}"
        );

        let e = error(&GOOD.replace(
            "[devices]",
            "[devices]\nkv = { kind = \"kv-rw\", store = \"block\", interface = \"disk\" }\nd = { kind = \"block\", interface = \"disk\" }",
        ));
        assert!(e.cause.contains("both on the block device \"disk\""), "{e}");

        let e = error(
            &GOOD.replace("[devices]", "[devices]\nkv = { kind = \"kv-rw\", store = \"block\", size = \"1000\" }"),
        );
        assert!(e.cause.contains("not a size in whole sectors"), "{e}");

        let e = error("[unikernel\nname = 1");
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn tls_devices_name_a_stack_and_a_store() {
        let tls = GOOD
            .replace("[devices]", "[devices]\ncerts = { kind = \"kv-ro\", directory = \".\" }\ntls = { kind = \"tls\", stack = \"net\", store = \"certs\", alpn = \"h2, http/1.1\" }")
            .replace("\"port\"]", "\"port\", \"tls\"]");
        // The store is read by the TLS device: start need not get it.
        let c = check(&tls).unwrap();
        assert_eq!(
            c.devices[1].kind,
            Kind::Tls {
                server: true,
                stack: "net".into(),
                store: "certs".into(),
                path: "/".into(),
                alpn: vec!["h2".into(), "http/1.1".into()]
            }
        );
        let client = check(&tls.replace("alpn = \"h2, http/1.1\"", "role = \"client\"")).unwrap();
        assert!(matches!(&client.devices[1].kind, Kind::Tls { server: false, path, .. } if path == "ca.pem"));
        let e = error(&tls.replace("role = \"client\"", "").replace("alpn =", "role = \"middle\", alpn ="));
        assert!(e.cause.contains("unknown role \"middle\"") && e.fix.contains("role = \"client\""), "{e}");
        let e = error(&tls.replace("stack = \"net\"", "stack = \"console\""));
        assert!(e.cause.contains("not a stack device") && e.line == 9, "{e}");
        let e = error(&tls.replace("store = \"certs\"", "store = \"net\""));
        assert!(e.cause.contains("not a kv-ro device"), "{e}");
        let e = error(&tls.replace("store = \"certs\", ", ""));
        assert!(e.cause.contains("has no store"), "{e}");
    }

    #[test]
    fn every_device_must_reach_start() {
        let e = error(&GOOD.replace("\"console\", \"net\", ", "\"console\", "));
        assert!(e.cause.contains("net is declared but not given"), "{e}");
    }

    #[test]
    fn start_is_the_crates_own() {
        // `start` alone would call the wiring's own function (E0061).
        let e = error(&GOOD.replace("start = \"demo::start\"", "start = \"start\""));
        assert_eq!(e.line, 4, "{e}");
        assert!(e.cause.contains("start = \"start\" is not a function of the unikernel crate demo"), "{e}");
        assert!(e.fix.contains("start = \"demo::start\""), "{e}");
        // Another crate's function is out of the wiring's reach.
        let dir = scratch("start");
        write(&dir, "Cargo.toml", "[package]\nname = \"demo\"\n");
        write(&dir, FILE, &GOOD.replace("demo::start", "other::start"));
        let e = load(&dir).unwrap_err();
        assert!(e.cause.contains("is not a function of the unikernel crate demo") && e.line == 4, "{e}");
        // A library renamed by [lib] name.
        write(&dir, "Cargo.toml", "[package]\nname = \"demo\"\n[lib]\nname = \"other\"\n");
        assert!(load(&dir).is_ok());
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mirage-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn the_libraries_come_from_where_the_crate_takes_them() {
        let dir = scratch("libraries");
        let libs = |deps: &str| {
            write(&dir, "Cargo.toml", &format!("[package]\nname = \"demo\"\n\n[dependencies]\nlog = \"0.4\"\n{deps}"));
            write(&dir, FILE, GOOD);
            load(&dir).unwrap().libraries
        };
        assert_eq!(libs(""), None);
        std::fs::create_dir_all(dir.join("rs/crates/mirage-devices")).unwrap();
        let crates = dir.join("rs/crates").canonicalize().unwrap();
        assert_eq!(
            libs("mirage-devices = { path = \"rs/crates/mirage-devices\" }"),
            Some(Libraries::Path(crates.clone()))
        );
        assert_eq!(
            libs("[dependencies.mirage-http]\npath = \"rs/crates/mirage-http\"\n"),
            Some(Libraries::Path(crates))
        );
        assert_eq!(
            libs("mirage-devices = { git = \"https://example.org/mirage-rs\", tag = \"v0.1.0\" }"),
            Some(Libraries::Git {
                url: "https://example.org/mirage-rs".into(),
                reference: Some(("tag".into(), "v0.1.0".into()))
            })
        );
        assert_eq!(libs("mirage-devices = \"0.1\""), Some(Libraries::Registry("0.1".into())));
        assert_eq!(
            libs("mirage-runtime = { version = \"0.1.2\", features = [\"std\"] }"),
            Some(Libraries::Registry("0.1.2".into()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes() {
        assert_eq!(size("4M"), Some(4 << 20));
        assert_eq!(size("512 KiB"), Some(512 << 10));
        assert_eq!(size("1024"), Some(1024));
        assert_eq!(size("3X"), None);
        // Past u64: refused, not wrapped round to a small size.
        assert_eq!(size("17179869184G"), None);
        assert_eq!(size("17179869185G"), None);
        assert_eq!(size("16777215G"), Some(16_777_215 << 30));
    }
}
