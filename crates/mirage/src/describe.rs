//! `mirage describe`: the device graph of a configured unikernel, as text
//! and as Graphviz DOT.

use std::fmt::Write as _;

use crate::config::{Config, Kind};
use crate::generate::{Options, Target, UnixNet};

/// What implements a device on a target, and what it sits on.
fn implementation(name: &str, kind: &Kind, opts: &Options) -> (String, Option<String>) {
    let solo5 = opts.target != Target::Unix;
    let platform = if solo5 { "mirage_solo5::dev" } else { "mirage_unix" };
    match kind {
        Kind::Console => (format!("{platform}::Console"), None),
        Kind::Time => ("mirage_runtime::time::Clock".into(), None),
        Kind::WallClock => (format!("{platform}::WallClock"), None),
        Kind::Random => (format!("{platform}::Random"), None),
        Kind::Net { interface } => net(interface, solo5),
        Kind::Block { interface, .. } => {
            if solo5 {
                ("mirage_solo5::dev::Block".into(), Some(format!("Solo5 BLOCK_BASIC {interface:?}")))
            } else {
                ("mirage_unix::FileBlock".into(), Some(format!("--block:{interface}=PATH")))
            }
        }
        Kind::Stack { interface, .. } => {
            if solo5 || opts.net == UnixNet::Direct {
                let (n, below) = net(interface, solo5);
                ("mirage_tcpip::Stack".into(), Some(format!("{n} ({})", below.unwrap_or_default())))
            } else {
                ("mirage_unix::SocketStack".into(), Some("the host's sockets".into()))
            }
        }
        Kind::Ip { interface, .. } => {
            let (n, below) = net(interface, solo5);
            ("mirage_tcpip::IpLayer".into(), Some(format!("{n} ({})", below.unwrap_or_default())))
        }
        Kind::KvRo { directory, .. } => match opts.tar(name, kind) {
            None => ("mirage_kv::Crunched".into(), Some(format!("{} compiled in", directory.display()))),
            Some(i) if matches!(kind, Kind::KvRo { fat: true, .. }) => (
                "mirage_kv::Fat".into(),
                Some(format!("a FAT volume on block device {i}, made from {} when missing", directory.display())),
            ),
            Some(i) => {
                ("mirage_kv::Tar".into(), Some(format!("a tar archive of {} on block device {i}", directory.display())))
            }
        },
        Kind::KvRw { block: Some(b) } if opts.fat(b) => (
            "mirage_kv::Fat".into(),
            Some(format!("a FAT volume on block device {} (--block:{}=PATH)", b.interface, b.interface)),
        ),
        Kind::KvRw { block: Some(b) } => {
            let on = match (b.durable, solo5) {
                (true, true) => format!("--block-dsync:{}=PATH, durable: a flush syncs", b.interface),
                (false, true) => format!("--block:{}=PATH, not durable: in the host's page cache", b.interface),
                (_, false) => format!("--block:{}=PATH, durable: a flush is fdatasync", b.interface),
            };
            ("mirage_kv::BlockStore".into(), Some(format!("a crash-safe store on block device {} ({on})", b.interface)))
        }
        Kind::KvRw { block: None } => {
            if solo5 {
                ("mirage_kv::Mem".into(), Some("memory".into()))
            } else {
                (
                    "mirage_unix::DirKv".into(),
                    Some(format!(
                        "a host directory, {} by default (--kv-rw:{name}=DIR)",
                        crate::generate::kv_rw_directory(name)
                    )),
                )
            }
        }
        Kind::Tls { server, stack, store, path, alpn } => tls(*server, stack, store, path, alpn),
    }
}

fn tls(server: bool, stack: &str, store: &str, path: &str, alpn: &[String]) -> (String, Option<String>) {
    let what = if server { "certificates in" } else { "CA certificates in" };
    let alpn = if alpn.is_empty() { String::new() } else { format!(", ALPN {}", alpn.join(",")) };
    (
        format!("mirage_tls::{}", if server { "Server" } else { "Client" }),
        Some(format!("stack {stack}, {what} {path} of store {store}{alpn}")),
    )
}

fn net(interface: &str, solo5: bool) -> (String, Option<String>) {
    if solo5 {
        ("mirage_solo5::dev::Net".into(), Some(format!("Solo5 NET_BASIC {interface:?}")))
    } else {
        ("mirage_unix::TapNet".into(), Some(format!("--net:{interface}=TAP")))
    }
}

/// The graph as text.
pub fn text(config: &Config, opts: &Options) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{} for {} ({})", config.name, opts.target.name(), opts.command());
    let _ = writeln!(t, "start: {}({})", config.start, config.arguments.join(", "));
    let width = config.arguments.iter().map(String::len).max().unwrap_or(0);
    for (i, a) in config.arguments.iter().enumerate() {
        if let Some(d) = config.devices.iter().find(|d| &d.name == a) {
            let (imp, below) = implementation(&d.name, &d.kind, opts);
            let _ = write!(t, "  {}. {a:width$}  {} device: {imp}", i + 1, d.kind.keyword());
            if let Some(b) = below {
                let _ = write!(t, " on {b}");
            }
            t.push('\n');
        } else if let Some(b) = config.boot.iter().find(|b| &b.name == a) {
            let default = b.default.as_deref().map_or("required".to_string(), |d| format!("default {d:?}"));
            let _ = writeln!(t, "  {}. {a:width$}  boot argument --{a}: {}, {default}", i + 1, b.ty.rust());
        }
    }
    for (d, reader) in read_by_tls(config) {
        let (imp, below) = implementation(&d.name, &d.kind, opts);
        let _ = write!(t, "  -. {:width$}  {} device: {imp}", d.name, d.kind.keyword());
        if let Some(b) = below {
            let _ = write!(t, " on {b}");
        }
        let _ = writeln!(t, ", read by TLS device {reader} before start");
    }
    t
}

/// The devices start does not get, each with the TLS device that reads it.
fn read_by_tls(config: &Config) -> Vec<(&crate::config::Device, &str)> {
    config
        .devices
        .iter()
        .filter(|d| !config.arguments.contains(&d.name))
        .filter_map(|d| {
            config.devices.iter().find_map(|x| match &x.kind {
                Kind::Tls { store, .. } if *store == d.name => Some((d, x.name.as_str())),
                _ => None,
            })
        })
        .collect()
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The graph as Graphviz DOT: devices and boot arguments flow into start,
/// each from what implements it.
pub fn dot(config: &Config, opts: &Options) -> String {
    let mut d = String::new();
    let _ = writeln!(d, "digraph {} {{", quote(&config.name));
    d.push_str("  rankdir=LR;\n  node [shape=box, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\"];\n");
    let _ =
        writeln!(d, "  start [shape=ellipse, label={}];", quote(&format!("{}\n{}", config.start, opts.target.name())));
    for (i, a) in config.arguments.iter().enumerate() {
        let node = format!("n{i}");
        if let Some(dev) = config.devices.iter().find(|x| &x.name == a) {
            let (imp, below) = implementation(&dev.name, &dev.kind, opts);
            let _ = writeln!(d, "  {node} [label={}];", quote(&format!("{a}: {}\n{imp}", dev.kind.keyword())));
            if let Some(b) = below {
                let _ = writeln!(d, "  {node}_below [shape=note, label={}];", quote(&b));
                let _ = writeln!(d, "  {node}_below -> {node};");
            }
        } else if let Some(b) = config.boot.iter().find(|x| &x.name == a) {
            let _ = writeln!(d, "  {node} [shape=parallelogram, label={}];", quote(&format!("--{a}\n{}", b.ty.rust())));
        }
        let _ = writeln!(d, "  {node} -> start [label=\"{}\"];", i + 1);
    }
    for (dev, reader) in read_by_tls(config) {
        let (imp, _) = implementation(&dev.name, &dev.kind, opts);
        let node = format!("store_{}", dev.name.replace('-', "_"));
        let _ = writeln!(d, "  {node} [label={}];", quote(&format!("{}: {}\n{imp}", dev.name, dev.kind.keyword())));
        if let Some(i) = config.arguments.iter().position(|a| a == reader) {
            let _ = writeln!(d, "  {node} -> n{i} [label=\"certificates\"];");
        }
    }
    d.push_str("}\n");
    d
}
