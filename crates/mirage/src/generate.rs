//! The wiring `mirage configure` writes: a Cargo project in
//! `mirage/TARGET/` whose `main.rs` builds each declared device for the
//! target and calls the unikernel's start function, with the Solo5
//! manifest from the declared network and block devices and the link
//! settings in its build script.
//!
//! The generated code is written to read well: one statement per device,
//! in declaration order, formatted as rustfmt would.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use crate::config::{ArgType, Config, Kind};

/// The targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Unix,
    Hvt,
    Spt,
    /// A Multiboot image for QEMU (`-kernel`) or GRUB, with virtio devices.
    Virtio,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "unix" => Some(Target::Unix),
            "hvt" => Some(Target::Hvt),
            "spt" => Some(Target::Spt),
            "virtio" => Some(Target::Virtio),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Unix => "unix",
            Target::Hvt => "hvt",
            Target::Spt => "spt",
            Target::Virtio => "virtio",
        }
    }

    pub fn solo5(self) -> bool {
        self != Target::Unix
    }

    /// The image's file name in `dist/`.
    pub fn image(self, name: &str) -> String {
        match self {
            Target::Unix => name.to_string(),
            t => format!("{name}.{}", t.name()),
        }
    }
}

/// Which stack a `stack` device is on unix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixNet {
    /// The host's sockets (MirageOS's default on unix).
    Socket,
    /// mirage-tcpip on a tap device.
    Direct,
}

/// The keys of `mirage configure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub target: Target,
    pub net: UnixNet,
    /// Ask DHCP for an address when none is given (MirageOS's default);
    /// with `--no-dhcp`, the default address is static.
    pub dhcp: bool,
    /// Every kv-ro store is a tar archive on a block device
    /// (`--kv-ro=tar`), whatever its `store`.
    pub kv_tar: bool,
    /// Every kv-rw store on a block device is a FAT volume
    /// (`--kv-rw=fat`), whatever its `store`.
    pub kv_fat: bool,
}

impl Options {
    /// The command line that produces this configuration.
    pub fn command(&self) -> String {
        let mut c = format!("mirage configure -t {}", self.target.name());
        if self.target == Target::Unix && self.net == UnixNet::Direct {
            c.push_str(" --net=direct");
        }
        if !self.dhcp {
            c.push_str(" --no-dhcp");
        }
        if self.kv_tar {
            c.push_str(" --kv-ro=tar");
        }
        if self.kv_fat {
            c.push_str(" --kv-rw=fat");
        }
        c
    }

    /// The block device holding the tar archive of kv-ro device `name`,
    /// or `None` when its directory is compiled into the image.
    pub fn tar(&self, name: &str, kind: &Kind) -> Option<String> {
        match kind {
            Kind::KvRo { tar: Some(t), .. } => Some(t.clone()),
            Kind::KvRo { tar: None, .. } if self.kv_tar => Some(name.to_string()),
            _ => None,
        }
    }

    /// Whether the kv-rw store on block device `b` is a FAT volume.
    pub fn fat(&self, b: &crate::config::KvBlock) -> bool {
        b.fat || self.kv_fat
    }

    /// Whether kv-ro device `name` is compiled into the image.
    fn crunch(&self, name: &str, kind: &Kind) -> bool {
        matches!(kind, Kind::KvRo { .. }) && self.tar(name, kind).is_none()
    }

    /// Whether stacks are mirage-tcpip (rather than host sockets).
    fn direct(&self) -> bool {
        self.target.solo5() || self.net == UnixNet::Direct
    }
}

/// Where the wiring takes the mirage-rs libraries from: the same place as
/// the unikernel crate takes them, so that both see one `mirage-devices`
/// (two copies of it would make two sets of unrelated traits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Libraries {
    /// A directory holding the crates side by side (a checkout's `crates/`).
    Path(PathBuf),
    /// A git repository, with its `branch`, `tag` or `rev` key if any.
    Git { url: String, reference: Option<(String, String)> },
    /// The registry, with a version requirement (`"0.1"`).
    Registry(String),
}

impl Libraries {
    /// The dependency on library `name` as Cargo.toml writes it, from a
    /// project in `from`, with `features`.
    pub fn dependency(&self, name: &str, from: &Path, features: &[&str]) -> String {
        let mut keys = match self {
            Libraries::Path(dir) => vec![format!("path = {}", lit(&path_from(&dir.join(name), from)))],
            Libraries::Git { url, reference } => {
                let mut k = vec![format!("git = {}", lit(url))];
                if let Some((key, value)) = reference {
                    k.push(format!("{key} = {}", lit(value)));
                }
                k
            }
            Libraries::Registry(version) => vec![format!("version = {}", lit(version))],
        };
        if !features.is_empty() {
            let f: Vec<String> = features.iter().map(|f| lit(f)).collect();
            keys.push(format!("features = [{}]", f.join(", ")));
        }
        format!("{name} = {{ {} }}", keys.join(", "))
    }
}

/// A generated file: its path inside the generated directory and text.
#[derive(Debug)]
pub struct File {
    pub path: &'static str,
    pub text: String,
}

/// The directory the wiring for `target` goes to.
pub fn dir(config: &Config, target: Target) -> PathBuf {
    config.dir.join("mirage").join(target.name())
}

/// `to` relative to `from` (both absolute or both relative to the same
/// place), with `/` separators, for paths in generated files that must not
/// depend on where the repository is checked out.
pub fn relative(to: &Path, from: &Path) -> String {
    let norm = |p: &Path| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
                Component::RootDir | Component::Prefix(_) => out.clear(),
                Component::CurDir => {}
            }
        }
        out
    };
    let (to, from) = (norm(to), norm(from));
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(to[common..].iter().cloned());
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

/// The directory of kv-rw store `name` on unix, relative to the
/// unikernel's directory: `mirage run` creates it and `mirage clean`
/// keeps it (it is data).
pub fn kv_rw_directory(name: &str) -> String {
    format!("dist/{name}.kv")
}

/// `to` as a path dependency of a project in `from` writes it: relative
/// when both are in one tree (a checkout moves as a whole), absolute when
/// they only share the root (a unikernel outside the checkout).
pub fn path_from(to: &Path, from: &Path) -> String {
    fn top(p: &Path) -> Option<Component<'_>> {
        p.components().find(|c| matches!(c, Component::Normal(_)))
    }
    if to.is_absolute() && from.is_absolute() && top(to) != top(from) {
        return to.to_string_lossy().replace('\\', "/");
    }
    relative(to, from)
}

fn ident(name: &str) -> String {
    name.replace('-', "_")
}

/// `KV_NAME`: the static a kv-ro device's directory is compiled into.
fn kv_static(name: &str) -> String {
    format!("KV_{}", ident(name).to_uppercase())
}

/// A Rust string literal.
fn lit(s: &str) -> String {
    format!("{s:?}")
}

/// The network interfaces, in declaration order. The `i`-th has the
/// subnet 10.0.i.0/24 on the host side: `mirage run` gives its tap device
/// 10.0.i.1, and a stack on it defaults (with `--no-dhcp`) to 10.0.i.2
/// with the gateway 10.0.i.1. Interfaces keep their numbers on every
/// target, whether or not the target attaches them to a tap device.
pub fn network_interfaces(config: &Config) -> Vec<&str> {
    config
        .devices
        .iter()
        .filter_map(|d| match &d.kind {
            Kind::Net { interface } | Kind::Stack { interface, .. } | Kind::Ip { interface, .. } => {
                Some(interface.as_str())
            }
            _ => None,
        })
        .collect()
}

/// The third byte of the subnet of network interface `interface`
/// (10.0.N.0/24), see [`network_interfaces`].
pub fn subnet(config: &Config, interface: &str) -> u8 {
    let i = network_interfaces(config).iter().position(|i| *i == interface).unwrap_or(0);
    // Solo5's manifest holds at most 63 devices.
    u8::try_from(i).unwrap_or(u8::MAX)
}

/// The default address of the stack's or IP layer's `--ipv4` and
/// `--ipv4-gateway`.
fn stack_defaults(config: &Config, kind: &Kind, opts: &Options) -> (String, String) {
    match kind {
        Kind::Stack { interface, ipv4, gateway } => {
            let n = subnet(config, interface);
            match (ipv4, opts.dhcp) {
                (Some(a), _) => (a.clone(), gateway.clone().unwrap_or_default()),
                (None, true) => (String::new(), gateway.clone().unwrap_or_default()),
                // MirageOS's static defaults, in the interface's own subnet.
                (None, false) => (format!("10.0.{n}.2/24"), gateway.clone().unwrap_or_else(|| format!("10.0.{n}.1"))),
            }
        }
        // An IP layer has no DHCP client: its address is static, and it has
        // a gateway only if mirage.toml gives one (a router's inside
        // interface has none).
        Kind::Ip { interface, ipv4, gateway } => (
            ipv4.clone().unwrap_or_else(|| format!("10.0.{}.2/24", subnet(config, interface))),
            gateway.clone().unwrap_or_default(),
        ),
        _ => (String::new(), String::new()),
    }
}

/// Whether the stacks' and IP layers' boot arguments are prefixed with
/// their device's name (`--uplink-ipv4`): when there are several, as
/// MirageOS groups them. A single one keeps the plain names (`--ipv4`).
fn prefixed(config: &Config) -> bool {
    config.devices.iter().filter(|d| matches!(d.kind, Kind::Stack { .. } | Kind::Ip { .. })).count() > 1
}

/// The statement that adds the boot arguments of stack or IP layer
/// `name` to the specs.
fn network_args(config: &Config, name: &str, kind: &Kind, opts: &Options) -> String {
    let (ipv4, gateway) = stack_defaults(config, kind, opts);
    let ty = if matches!(kind, Kind::Ip { .. }) { "IpConfig" } else { "Config" };
    if prefixed(config) {
        format!("specs.extend(mirage_tcpip::{ty}::args_prefixed({}, {}, {}));", lit(name), lit(&ipv4), lit(&gateway))
    } else {
        format!("specs.extend(mirage_tcpip::{ty}::args({}, {}));", lit(&ipv4), lit(&gateway))
    }
}

/// The expression of the configuration of stack or IP layer `name`.
fn network_config(config: &Config, name: &str, kind: &Kind) -> String {
    let ty = if matches!(kind, Kind::Ip { .. }) { "IpConfig" } else { "Config" };
    if prefixed(config) {
        format!("mirage_tcpip::{ty}::from_args_prefixed(&args, {})", lit(name))
    } else {
        format!("mirage_tcpip::{ty}::from_args(&args)")
    }
}

/// What the Solo5 manifest declares, in declaration order: network
/// interfaces (a stack's too) and block devices (a tar store's too).
pub fn manifest(config: &Config, opts: &Options) -> Vec<(ManifestKind, String)> {
    config
        .devices
        .iter()
        .filter_map(|d| match &d.kind {
            Kind::Net { interface } | Kind::Stack { interface, .. } | Kind::Ip { interface, .. } => {
                Some((ManifestKind::Net, interface.clone()))
            }
            Kind::Block { interface, .. } => Some((ManifestKind::Block, interface.clone())),
            Kind::KvRo { .. } => opts.tar(&d.name, &d.kind).map(|i| (ManifestKind::Block, i)),
            Kind::KvRw { block: Some(b) } => Some((ManifestKind::Block, b.interface.clone())),
            _ => None,
        })
        .collect()
}

/// The kinds of device a Solo5 manifest declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// `NET_BASIC`.
    Net,
    /// `BLOCK_BASIC`.
    Block,
}

/// The manifest as the JSON `solo5-elftool gen-manifest` reads.
pub fn manifest_json(config: &Config, opts: &Options) -> String {
    let devices: Vec<String> = manifest(config, opts)
        .iter()
        .map(|(kind, name)| {
            let t = if *kind == ManifestKind::Net { "NET_BASIC" } else { "BLOCK_BASIC" };
            format!("{{ \"name\": {}, \"type\": \"{t}\" }}", lit(name))
        })
        .collect();
    let devices = if devices.is_empty() { String::new() } else { format!(" {} ", devices.join(", ")) };
    format!("{{\n  \"type\": \"solo5.manifest\",\n  \"version\": 1,\n  \"devices\": [{devices}]\n}}")
}

/// Formats Rust source with rustfmt (default settings, edition 2024), as
/// the wiring is written; the text unchanged if rustfmt is missing or
/// fails.
pub fn format(text: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("rustfmt")
        // Rustfmt's defaults, whatever rustfmt.toml lies around (it looks
        // from the current directory up): an empty configuration.
        .args(["--edition", "2024", "--emit", "stdout", "--config-path", "/dev/null"])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return text.to_string() };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    match child.wait_with_output() {
        Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap_or_else(|_| text.to_string()),
        _ => text.to_string(),
    }
}

/// Every file of the wiring, Rust sources formatted by rustfmt, with the
/// mirage-rs libraries from `libraries`.
pub fn files_formatted(config: &Config, opts: &Options, libraries: &Libraries) -> Vec<File> {
    let mut files = files(config, opts, libraries);
    for f in &mut files {
        if f.path.ends_with(".rs") {
            f.text = format(&f.text);
        }
    }
    files
}

/// Every file of the wiring, as generated, with the mirage-rs libraries
/// from `libraries`.
pub fn files(config: &Config, opts: &Options, libraries: &Libraries) -> Vec<File> {
    let dir = dir(config, opts.target);
    let header = format!(
        "Generated by `{}` from mirage.toml: edit that\n# file and configure again rather than this one.",
        opts.command()
    );
    let mut files = vec![File { path: "Cargo.toml", text: cargo_toml(config, opts, libraries, &dir, &header) }];
    files.push(File { path: "main.rs", text: main_rs(config, opts) });
    if let Some(b) = build_rs(config, opts) {
        files.push(File { path: "build.rs", text: b });
    }
    files
}

fn uses(config: &Config, f: impl Fn(&Kind) -> bool) -> bool {
    config.devices.iter().any(|d| f(&d.kind))
}

fn cargo_toml(config: &Config, opts: &Options, libraries: &Libraries, dir: &Path, header: &str) -> String {
    let dep = |name: &str, features: &[&str]| libraries.dependency(name, dir, features);
    let mut t = String::new();
    let _ = writeln!(t, "# {header}");
    t.push_str("[package]\n");
    let _ = writeln!(t, "name = \"{}-{}\"", config.name, opts.target.name());
    t.push_str("version = \"0.0.0\"\nedition = \"2024\"\npublish = false\n");
    if build_rs(config, opts).is_some() {
        t.push_str("build = \"build.rs\"\n");
    }
    t.push_str("\n[[bin]]\n");
    let _ = writeln!(t, "name = \"{}\"", config.name);
    t.push_str("path = \"main.rs\"\n\n[dependencies]\n");
    let _ = writeln!(t, "{} = {{ path = \"{}\" }}", config.package, relative(&config.dir, dir));
    let stack = uses(config, |k| matches!(k, Kind::Stack { .. } | Kind::Ip { .. }));
    let kv = uses(config, |k| matches!(k, Kind::KvRo { .. } | Kind::KvRw { block: Some(_) }))
        || (opts.target.solo5() && uses(config, |k| matches!(k, Kind::KvRw { .. })));
    if kv {
        let _ = writeln!(t, "{}", dep("mirage-kv", &[]));
    }
    match opts.target {
        Target::Unix => {
            let _ = writeln!(t, "{}", dep("mirage-runtime", &["std"]));
            if stack {
                let _ = writeln!(t, "{}", dep("mirage-tcpip", &[]));
            }
            let _ = writeln!(t, "{}", dep("mirage-unix", &[]));
        }
        target => {
            let _ = writeln!(t, "{}", dep("mirage-runtime", &[]));
            let _ = writeln!(t, "{}", dep("mirage-solo5", &[target.name()]));
            if stack {
                let _ = writeln!(t, "{}", dep("mirage-tcpip", &[]));
            }
        }
    }
    if uses(config, |k| matches!(k, Kind::Tls { .. })) {
        let _ = writeln!(t, "{}", dep("mirage-tls", &[]));
    }
    if config.devices.iter().any(|d| opts.crunch(&d.name, &d.kind)) {
        t.push_str("\n[build-dependencies]\n");
        let _ = writeln!(t, "{}", dep("mirage-kv", &["crunch"]));
    }
    t.push_str("\n[profile.release]\n");
    if opts.target.solo5() {
        // Small images: there is no unwinding on Solo5, and size matters
        // more than the last percent of speed. Debug information costs the
        // image nothing: it lies after every segment, where `mirage build`
        // cuts the image off, and stays in dist/NAME.TARGET.debug for gdb.
        t.push_str("panic = \"abort\"\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\ndebug = \"full\"\n\n[profile.dev]\npanic = \"abort\"\n");
    } else {
        t.push_str("lto = true\ncodegen-units = 1\n");
    }
    t.push_str("\n# The wiring is a project of its own, outside any enclosing workspace.\n[workspace]\n");
    t
}

fn build_rs(config: &Config, opts: &Options) -> Option<String> {
    let kvs: Vec<(&str, &Path)> = config
        .devices
        .iter()
        .filter_map(|d| match &d.kind {
            Kind::KvRo { directory, .. } if opts.crunch(&d.name, &d.kind) => {
                Some((d.name.as_str(), directory.as_path()))
            }
            _ => None,
        })
        .collect();
    if !opts.target.solo5() && kvs.is_empty() {
        return None;
    }
    let mut b = format!("//! Generated by `{}` from mirage.toml.\n", opts.command());
    match (opts.target.solo5(), kvs.is_empty()) {
        (true, true) => b.push_str("//! Links the unikernel for Solo5.\n\n"),
        (true, false) => {
            b.push_str("//! Links the unikernel for Solo5 and compiles its kv-ro directories into\n//! the image.\n\n")
        }
        _ => b.push_str("//! Compiles the unikernel's kv-ro directories into the image.\n\n"),
    }
    b.push_str("fn main() {\n");
    if opts.target.solo5() {
        b.push_str("    let link = std::env::var(\"DEP_MIRAGE_SOLO5_LINK_ARGS\").expect(\"mirage-solo5 publishes its link arguments\");\n");
        b.push_str("    for arg in link.split(' ') {\n        println!(\"cargo:rustc-link-arg-bins={arg}\");\n    }\n");
    }
    if !kvs.is_empty() {
        b.push_str(
            "    let out = std::path::PathBuf::from(std::env::var(\"OUT_DIR\").expect(\"cargo sets OUT_DIR\"));\n",
        );
        b.push_str("    let unikernel = std::path::Path::new(env!(\"CARGO_MANIFEST_DIR\")).join(\"../..\");\n");
        for (name, directory) in kvs {
            let d = directory.to_string_lossy().replace('\\', "/");
            let _ = writeln!(
                b,
                "    mirage_kv::crunch::generate_named(&unikernel.join({}), &out.join(\"{}.rs\"), \"{}\")\n        .expect({});",
                lit(&d),
                ident(name),
                kv_static(name),
                lit(&format!("compiling the kv-ro directory {d}"))
            );
        }
    }
    b.push_str("}\n");
    Some(b)
}

/// Boot argument declarations, one per line, and the statements that add
/// the stacks' and IP layers' own.
fn specs(config: &Config, opts: &Options) -> (Vec<String>, Vec<String>) {
    let mut specs = Vec::new();
    // The stacks' and IP layers' own, from mirage-tcpip.
    let mut stack = Vec::new();
    for a in &config.boot {
        let default = a.default.as_deref().map_or("None".to_string(), |d| format!("Some({})", lit(d)));
        specs.push(format!("Arg::new::<{}>({}, {default}, {})", a.ty.rust(), lit(&a.name), lit(&a.doc)));
    }
    for d in &config.devices {
        match &d.kind {
            Kind::Net { interface } if !opts.target.solo5() => {
                specs.push(format!(
                    "Arg::new::<String>(\"net:{interface}\", Some(\"tap0\"), \"The tap device of network interface {interface}.\")"
                ));
            }
            Kind::Stack { interface, .. } if opts.target == Target::Unix && opts.net == UnixNet::Direct => {
                specs.push(format!(
                    "Arg::new::<String>(\"net:{interface}\", Some(\"tap0\"), \"The tap device of network interface {interface}.\")"
                ));
                stack.push(network_args(config, &d.name, &d.kind, opts));
            }
            Kind::Stack { .. } => stack.push(network_args(config, &d.name, &d.kind, opts)),
            Kind::Ip { interface, .. } => {
                if !opts.target.solo5() {
                    specs.push(format!(
                        "Arg::new::<String>(\"net:{interface}\", Some(\"tap0\"), \"The tap device of network interface {interface}.\")"
                    ));
                }
                stack.push(network_args(config, &d.name, &d.kind, opts));
            }
            Kind::Block { interface, .. } if !opts.target.solo5() => {
                specs.push(format!(
                    "Arg::new::<String>(\"block:{interface}\", None, \"The disk image of block device {interface}.\")"
                ));
            }
            Kind::KvRo { fat, .. } if !opts.target.solo5() => {
                if let Some(interface) = opts.tar(&d.name, &d.kind) {
                    let what = if *fat { "a FAT volume" } else { "a tar archive" };
                    specs.push(format!(
                        "Arg::new::<String>(\"block:{interface}\", None, \"The disk image ({what}) of the kv-ro store \\\"{}\\\".\")",
                        d.name
                    ));
                }
            }
            Kind::KvRw { block: Some(b) } if !opts.target.solo5() => {
                specs.push(format!(
                    "Arg::new::<String>(\"block:{}\", None, \"The disk image of the kv-rw store \\\"{}\\\".\")",
                    b.interface, d.name
                ));
            }
            Kind::KvRw { block: None } if !opts.target.solo5() => {
                specs.push(format!(
                    "Arg::new::<String>(\"kv-rw:{0}\", Some({1}), \"The directory of the kv-rw store \\\"{0}\\\".\")",
                    d.name,
                    lit(&kv_rw_directory(&d.name))
                ));
            }
            _ => {}
        }
    }
    (specs, stack)
}

/// What start is called with, one expression per argument of
/// mirage.toml's `arguments`.
pub fn call_arguments(config: &Config, opts: &Options) -> Vec<String> {
    config
        .arguments
        .iter()
        .map(|n| {
            if let Some(d) = config.devices.iter().find(|d| &d.name == n) {
                match d.kind {
                    Kind::KvRo { .. } if opts.crunch(&d.name, &d.kind) => kv_static(n),
                    _ => ident(n),
                }
            } else if config.boot.iter().any(|b| &b.name == n && b.ty == ArgType::String) {
                // String arguments are lent to start as &str.
                format!("&{}", ident(n))
            } else {
                ident(n)
            }
        })
        .collect()
}

fn call(config: &Config, opts: &Options) -> String {
    format!("{}({})", config.start, call_arguments(config, opts).join(", "))
}

fn main_rs(config: &Config, opts: &Options) -> String {
    let solo5 = opts.target.solo5();
    let name = &config.name;
    let mut m = String::new();
    let _ = writeln!(m, "//! Generated by `{}` from mirage.toml: edit that file", opts.command());
    m.push_str("//! and configure again rather than this one.\n");
    let (specs, stack) = specs(config, opts);
    if solo5 {
        m.push_str("#![no_std]\n#![no_main]\n\nextern crate alloc;\n\n");
        let opened_store = |d: &crate::config::Device| {
            opts.tar(&d.name, &d.kind).is_some() || matches!(d.kind, Kind::KvRw { block: Some(_) } | Kind::Tls { .. })
        };
        if config.devices.iter().any(|d| matches!(d.kind, Kind::Stack { .. }))
            || config.devices.iter().any(opened_store)
        {
            m.push_str("use alloc::format;\n");
        }
        if config.boot.iter().any(|a| a.ty == ArgType::String) {
            m.push_str("use alloc::string::String;\n");
        }
        if !specs.is_empty() || !stack.is_empty() {
            m.push_str("use alloc::vec;\n");
        }
    }
    // The stack's arguments come from mirage-tcpip: Arg is named only for
    // the unikernel's own and the devices'.
    if !specs.is_empty() {
        m.push_str("use mirage_runtime::args::Arg;\n");
    }
    if solo5 {
        m.push_str("use mirage_solo5 as solo5;\n");
    }
    for d in &config.devices {
        if opts.crunch(&d.name, &d.kind) {
            let _ = writeln!(m, "\ninclude!(concat!(env!(\"OUT_DIR\"), \"/{}.rs\"));", ident(&d.name));
        }
    }
    if solo5 {
        let entries: Vec<String> = manifest(config, opts)
            .iter()
            .map(|(kind, name)| format!("{} {}", if *kind == ManifestKind::Net { "net" } else { "block" }, lit(name)))
            .collect();
        let _ = writeln!(m, "\nsolo5::manifest!({});\nsolo5::main!(start);", entries.join(", "));
        m.push_str("\nfn start(si: &solo5::StartInfo) -> i32 {\n");
    } else {
        m.push_str("\nfn main() {\n");
    }

    // Boot arguments.
    match (specs.is_empty(), !stack.is_empty()) {
        // An empty list needs its type spelled out.
        (true, false) => m.push_str("    let specs: [mirage_runtime::args::Arg; 0] = [];\n"),
        (true, true) => m.push_str("    let mut specs = vec![];\n"),
        (false, mutable) => {
            let _ = writeln!(m, "    let {}specs = vec![", if mutable { "mut " } else { "" });
            for s in &specs {
                let _ = writeln!(m, "        {s},");
            }
            m.push_str("    ];\n");
        }
    }
    for s in &stack {
        let _ = writeln!(m, "    {s}");
    }
    // Boot parses the command line (and answers --help) even when nothing
    // reads the arguments.
    let boot = if solo5 {
        format!("solo5::dev::boot({}, si.cmdline, &specs)", lit(name))
    } else {
        format!("mirage_unix::boot({}, &specs)", lit(name))
    };
    let exit = if solo5 { "return code" } else { "std::process::exit(code)" };
    if specs.is_empty() && stack.is_empty() {
        let _ = writeln!(m, "    if let Err(code) = {boot} {{\n        {exit};\n    }}");
    } else {
        let _ = writeln!(
            m,
            "    let args = match {boot} {{\n        Ok(args) => args,\n        Err(code) => {exit},\n    }};"
        );
    }

    // Devices, in declaration order.
    let fail = |what: String| -> String {
        if solo5 {
            format!(
                "        Err(e) => {{\n            solo5::println!(\"{name}: {what}: {{e}}\");\n            return 1;\n        }}\n"
            )
        } else {
            format!("        Err(e) => fail(format!(\"{what}: {{e}}\")),\n")
        }
    };
    let platform = if solo5 { "solo5::dev" } else { "mirage_unix" };
    let mut stack_vars = Vec::new();
    // Statements that must await, run first inside the unikernel's task.
    let mut opening: Vec<String> = Vec::new();
    // TLS devices, made last: they read stores opened above.
    let mut tls_opening: Vec<String> = Vec::new();
    for d in &config.devices {
        let v = ident(&d.name);
        match &d.kind {
            Kind::Console => {
                let _ = writeln!(m, "    let {v} = {platform}::Console;");
            }
            Kind::Time => {
                let _ = writeln!(m, "    let {v} = mirage_runtime::time::Clock;");
            }
            Kind::WallClock => {
                let _ = writeln!(m, "    let {v} = {platform}::WallClock;");
            }
            Kind::Random => {
                let _ = writeln!(m, "    let {v} = {platform}::Random;");
            }
            Kind::Net { interface } => net(&mut m, &v, interface, solo5, &fail),
            Kind::Stack { interface, .. } => {
                if opts.direct() {
                    let net_var = format!("{v}_net");
                    net(&mut m, &net_var, interface, solo5, &fail);
                    stack_vars.push((v.clone(), net_var, network_config(config, &d.name, &d.kind)));
                } else {
                    let _ = writeln!(m, "    let {v} = mirage_unix::SocketStack;");
                }
            }
            Kind::Ip { interface, .. } => {
                let net_var = format!("{v}_net");
                net(&mut m, &net_var, interface, solo5, &fail);
                let _ = writeln!(
                    m,
                    "    let {v} = match mirage_tcpip::IpLayer::new({net_var}, {}) {{",
                    network_config(config, &d.name, &d.kind)
                );
                m.push_str("        Ok(device) => device,\n");
                m.push_str(&fail(format!("cannot configure the IP layer \\\"{}\\\" on {interface}", d.name)));
                m.push_str("    };\n");
            }
            Kind::Block { interface, .. } => block(&mut m, &v, interface, solo5, false, &fail),
            Kind::KvRo { .. } => {
                if let Some(interface) = opts.tar(&d.name, &d.kind) {
                    block(&mut m, &format!("{v}_disk"), &interface, solo5, true, &fail);
                    let open = if matches!(d.kind, Kind::KvRo { fat: true, .. }) {
                        format!("mirage_kv::Fat::open({v}_disk, {platform}::WallClock)")
                    } else {
                        format!("mirage_kv::Tar::new({v}_disk)")
                    };
                    opening.push(format!(
                        "let {v} = {open}\n            .await\n            .map_err(|e| format!(\"cannot open the kv-ro store \\\"{}\\\" on block device {interface}: {{e}}\"))?;",
                        d.name
                    ));
                }
            }
            Kind::KvRw { block: Some(b) } if opts.fat(b) => {
                let interface = &b.interface;
                block(&mut m, &format!("{v}_disk"), interface, solo5, false, &fail);
                unflushed(&mut m, &v, b, solo5, name, &d.name);
                opening.push(format!(
                    "let {v} = mirage_kv::Fat::open({v}_disk, {platform}::WallClock)\n            .await\n            .map_err(|e| format!(\"cannot open the kv-rw store \\\"{}\\\" on block device {interface}: {{e}}\"))?;",
                    d.name
                ));
            }
            Kind::KvRw { block: Some(b) } => {
                let interface = &b.interface;
                block(&mut m, &format!("{v}_disk"), interface, solo5, false, &fail);
                unflushed(&mut m, &v, b, solo5, name, &d.name);
                opening.push(format!(
                    "let {v} = mirage_kv::BlockStore::open({v}_disk, {platform}::WallClock)\n            .await\n            .map_err(|e| format!(\"cannot open the kv-rw store \\\"{}\\\" on block device {interface}: {{e}}\"))?;",
                    d.name
                ));
                // What opening repaired (a change torn by a crash, a
                // damaged generation) is said on the console.
                let say = if solo5 { "solo5::println!" } else { "eprintln!" };
                opening.push(format!(
                    "if let Some(why) = {v}.recovery() {{\n            {say}(\"{name}: kv-rw store \\\"{}\\\": {{why}}\");\n        }}",
                    d.name
                ));
            }
            Kind::Tls { server, store, path, alpn, .. } => {
                let crunched = config.devices.iter().any(|x| &x.name == store && opts.crunch(&x.name, &x.kind));
                let store_expr = if crunched { kv_static(store) } else { ident(store) };
                let ty = if *server { "Server" } else { "Client" };
                let alpn: Vec<String> = alpn.iter().map(|a| lit(a)).collect();
                let name = lit(&d.name).replace('"', "\\\"");
                // The keys come from the platform's random source, which
                // must be fit for keys (else TLS refuses to start).
                tls_opening.push(format!(
                    "mirage_tls::rng::install({platform}::Random).map_err(|e| format!(\"the TLS device {name}: {{e}}\"))?;"
                ));
                tls_opening.push(format!(
                    "let {v} = mirage_tls::{ty}::load(&{store_expr}, {}, &[{}], {platform}::WallClock)\n            .await\n            .map_err(|e| format!(\"the TLS device {name}: {{e}}\"))?;",
                    lit(path),
                    alpn.join(", ")
                ));
            }
            Kind::KvRw { block: None } => {
                if solo5 {
                    let _ = writeln!(m, "    let {v} = mirage_kv::Mem::new(solo5::dev::WallClock);");
                } else {
                    let _ = writeln!(m, "    let {v}_dir: String = args.get(\"kv-rw:{}\");", d.name);
                    let _ =
                        writeln!(m, "    let {v} = match mirage_unix::DirKv::open(std::path::Path::new(&{v}_dir)) {{");
                    m.push_str("        Ok(store) => store,\n");
                    m.push_str(&fail(format!(
                        "cannot open the directory {{{v}_dir}} of the kv-rw store \\\"{}\\\"",
                        d.name
                    )));
                    m.push_str("    };\n");
                }
            }
        }
    }
    for a in &config.boot {
        let _ = writeln!(m, "    let {}: {} = args.get({});", ident(&a.name), a.ty.rust(), lit(&a.name));
    }

    // Run.
    let run = if solo5 { "solo5::dev::run" } else { "mirage_unix::run" };
    for (v, net_var, stack_config) in &stack_vars {
        opening.push(format!(
            // Seeded from the platform's random source: the stack's initial
            // sequence numbers and SYN-cookie keys must not be guessable
            // from the image.
            "let {v} = mirage_tcpip::Stack::new({net_var}, {stack_config}.seed(&{platform}::Random))\n            .map_err(|e| format!(\"cannot start the TCP/IP stack \\\"{v}\\\": {{e}}\"))?;"
        ));
    }
    // Every stack is started before any waits for its address (DHCP on
    // each link at once).
    for (v, _, _) in &stack_vars {
        opening.push(format!("{v}.configured().await;"));
    }
    opening.extend(tls_opening);
    let body = if opening.is_empty() {
        format!("async move {{ {}.await }}", call(config, opts))
    } else {
        let mut b = String::from("async move {\n");
        for o in &opening {
            let _ = writeln!(b, "        {o}");
        }
        let string = if solo5 { "alloc::string::String" } else { "String" };
        let _ = writeln!(b, "        Ok::<_, {string}>({}.await)", call(config, opts));
        b.push_str("    }");
        b
    };
    if solo5 {
        let _ = writeln!(m, "    {run}({body})");
    } else {
        let _ = writeln!(m, "    std::process::exit({run}({body}));");
    }
    m.push_str("}\n");
    if !solo5 && needs_fail(config, opts) {
        let _ = write!(
            m,
            "\n/// Reports a device that cannot be set up, and exits.\nfn fail(message: String) -> ! {{\n    eprintln!(\"{name}: {{message}}\");\n    std::process::exit(1);\n}}\n"
        );
    }
    m
}

fn needs_fail(config: &Config, opts: &Options) -> bool {
    config.devices.iter().any(|d| match d.kind {
        Kind::Net { .. } | Kind::Block { .. } | Kind::KvRw { .. } | Kind::Ip { .. } => true,
        Kind::KvRo { .. } => opts.tar(&d.name, &d.kind).is_some(),
        Kind::Stack { .. } => opts.direct(),
        _ => false,
    })
}

/// A block device `v` on `interface`; read-only on unix when `read_only`
/// (Solo5 has no read-only attachment).
/// A kv-rw store declared durable but attached without flushes (by hand
/// with `--block:`, or on Solo5's own tender) still runs, as Solo5's
/// guests do, but says so on the console.
fn unflushed(m: &mut String, v: &str, b: &crate::config::KvBlock, solo5: bool, unikernel: &str, store: &str) {
    if !solo5 || !b.durable {
        return;
    }
    let interface = &b.interface;
    let _ = writeln!(
        m,
        "    if !{v}_disk.flushes() {{\n        solo5::println!(\"{unikernel}: warning: the kv-rw store \\\"{store}\\\" is durable, but block device {interface} was attached without flushes: a change is acknowledged once it is in the host's page cache; attach it with --block-dsync:{interface}=PATH (the mirage-rs tenders)\");\n    }}"
    );
}

fn block(m: &mut String, v: &str, interface: &str, solo5: bool, read_only: bool, fail: &dyn Fn(String) -> String) {
    if solo5 {
        let _ = writeln!(m, "    let {v} = match solo5::dev::Block::acquire({}) {{", lit(interface));
        m.push_str("        Ok(device) => device,\n");
        m.push_str(&fail(format!("cannot acquire block device {interface}")));
    } else {
        let _ = writeln!(m, "    let {v}_path: String = args.get(\"block:{interface}\");");
        let _ = writeln!(
            m,
            "    let {v} = match mirage_unix::FileBlock::open(std::path::Path::new(&{v}_path), 512, {read_only}) {{"
        );
        m.push_str("        Ok(device) => device,\n");
        m.push_str(&fail(format!("cannot open the disk image {{{v}_path}} of block device {interface}")));
    }
    m.push_str("    };\n");
}

fn net(m: &mut String, v: &str, interface: &str, solo5: bool, fail: &dyn Fn(String) -> String) {
    if solo5 {
        let _ = writeln!(m, "    let {v} = match solo5::dev::Net::acquire({}) {{", lit(interface));
        m.push_str("        Ok(device) => device,\n");
        m.push_str(&fail(format!("cannot acquire network interface {interface}")));
    } else {
        let _ = writeln!(m, "    let {v}_tap: String = args.get(\"net:{interface}\");");
        let _ = writeln!(m, "    let {v} = match mirage_unix::TapNet::open(&{v}_tap, None) {{");
        m.push_str("        Ok(device) => device,\n");
        m.push_str(&fail(format!("cannot attach tap device {{{v}_tap}} as network interface {interface}")));
    }
    m.push_str("    };\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_on_the_libraries() {
        let from = Path::new("/r/examples/x/mirage/hvt");
        let path = Libraries::Path("/r/crates".into());
        assert_eq!(path.dependency("mirage-kv", from, &[]), "mirage-kv = { path = \"../../../../crates/mirage-kv\" }");
        // A unikernel outside the checkout: an absolute path.
        assert_eq!(
            path.dependency("mirage-solo5", Path::new("/home/u/app/mirage/hvt"), &["hvt"]),
            "mirage-solo5 = { path = \"/r/crates/mirage-solo5\", features = [\"hvt\"] }"
        );
        let git =
            Libraries::Git { url: "https://example.org/rs".into(), reference: Some(("rev".into(), "abc".into())) };
        assert_eq!(
            git.dependency("mirage-unix", from, &[]),
            "mirage-unix = { git = \"https://example.org/rs\", rev = \"abc\" }"
        );
        let registry = Libraries::Registry("0.1".into());
        assert_eq!(
            registry.dependency("mirage-runtime", from, &["std"]),
            "mirage-runtime = { version = \"0.1\", features = [\"std\"] }"
        );
    }

    #[test]
    fn the_manifest_follows_the_configuration() {
        let text = "[unikernel]\nname = \"w\"\nstart = \"w::start\"\narguments = [\"stack\", \"htdocs\", \"disk\"]\n\n[devices]\nstack = \"stack\"\nhtdocs = { kind = \"kv-ro\", directory = \".\" }\ndisk = \"block\"\n";
        let c = crate::config::parse(Path::new("mirage.toml"), text, Path::new("."), "w".into()).unwrap();
        let mut opts = Options { target: Target::Hvt, net: UnixNet::Direct, dhcp: true, kv_tar: false, kv_fat: false };
        let names = |o: &Options| manifest(&c, o).into_iter().map(|(_, n)| n).collect::<Vec<_>>();
        assert_eq!(names(&opts), ["service", "storage"]);
        // --kv-ro=tar: the store is a block device of the image too.
        opts.kv_tar = true;
        assert_eq!(names(&opts), ["service", "htdocs", "storage"]);
        assert!(manifest_json(&c, &opts).contains("{ \"name\": \"htdocs\", \"type\": \"BLOCK_BASIC\" }"));
        // main.rs declares the same.
        let main = files(&c, &opts, &Libraries::Path("/c".into())).into_iter().find(|f| f.path == "main.rs").unwrap();
        assert!(
            main.text.contains("solo5::manifest!(net \"service\", block \"htdocs\", block \"storage\");"),
            "{}",
            main.text
        );
    }

    #[test]
    fn a_directory_name_is_never_code_in_build_rs() {
        // A kv-ro directory whose name would close a string literal.
        let name = "x\"); std::process::exit(7); (\"";
        let dir = std::env::temp_dir().join(format!("mirage-generate-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let text = format!(
            "[unikernel]\nname = \"w\"\nstart = \"w::start\"\narguments = [\"htdocs\"]\n\n[devices]\nhtdocs = {{ kind = \"kv-ro\", directory = {} }}\n",
            lit(name)
        );
        let c = crate::config::parse(Path::new("mirage.toml"), &text, &dir, "w".into());
        std::fs::remove_dir_all(&dir).unwrap();
        let opts = Options { target: Target::Hvt, net: UnixNet::Direct, dhcp: true, kv_tar: false, kv_fat: false };
        let b = build_rs(&c.unwrap(), &opts).unwrap();
        assert!(b.contains(&format!(".expect({});", lit(&format!("compiling the kv-ro directory {name}")))), "{b}");
        assert!(!b.contains("exit(7); (\"\")"), "{b}");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/r/crates/a"), Path::new("/r/examples/x/mirage/hvt")), "../../../../crates/a");
        assert_eq!(relative(Path::new("/r/examples/x"), Path::new("/r/examples/x/mirage/hvt")), "../..");
        assert_eq!(relative(Path::new("/r"), Path::new("/r")), ".");
    }
}
