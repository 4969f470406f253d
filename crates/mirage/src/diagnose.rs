//! What rustc's errors in the generated wiring mean in terms of
//! `mirage.toml`. The wiring is generated, so an error rustc reports in it
//! (a start function that takes another type than a boot argument is
//! declared with, a device start cannot take, a count of arguments that
//! differs) is a disagreement between `mirage.toml` and start: `mirage
//! build` reads the places rustc names in `main.rs` and says which
//! declaration each one is, and where it is in `mirage.toml`.

use crate::config::{Config, Kind};
use crate::generate::{Options, Target, call_arguments};

/// The places (`line`, `column`, both from 1) of rustc's `--> main.rs:L:C`
/// lines in `output`: errors in the wiring's main.rs.
pub fn places(output: &str) -> Vec<(usize, usize)> {
    output
        .lines()
        .filter_map(|l| {
            let at = l.trim_start().strip_prefix("--> ")?;
            let mut parts = at.rsplitn(3, ':');
            let column = parts.next()?.trim().parse().ok()?;
            let line = parts.next()?.parse().ok()?;
            (parts.next()? == "main.rs").then_some((line, column))
        })
        .collect()
}

/// The line of `mirage.toml` (from 1) that declares `name` under
/// `[devices]` or as `[boot.NAME]`, if found.
fn declaration_line(text: &str, name: &str, boot: bool) -> Option<usize> {
    let mut in_devices = false;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            in_devices = l == "[devices]";
            if l == format!("[boot.{name}]") && boot || l == format!("[devices.{name}]") && !boot {
                return Some(i + 1);
            }
            continue;
        }
        let key = l.split('=').next().unwrap_or_default().trim().trim_matches('"');
        if in_devices && !boot && key == name {
            return Some(i + 1);
        }
    }
    None
}

/// The trait of `mirage-devices` a device of `kind` implements.
fn device_trait(kind: &Kind) -> &'static str {
    match kind {
        Kind::Console => "mirage_devices::console::Console",
        Kind::Time => "mirage_devices::time::Sleep",
        Kind::WallClock => "mirage_devices::time::WallClock",
        Kind::Random => "mirage_devices::random::Random",
        Kind::Net { .. } => "mirage_devices::net::Net",
        Kind::Block { .. } => "mirage_devices::block::Block",
        Kind::Stack { .. } => "mirage_devices::stack::Stack",
        Kind::Ip { .. } => "mirage_devices::ip::Ip",
        Kind::KvRo { .. } => "mirage_devices::kv::KvRo",
        Kind::KvRw { .. } => "mirage_devices::kv::KvRw",
        Kind::Tls { server: true, .. } => "mirage_tls::Server",
        Kind::Tls { server: false, .. } => "mirage_tls::Client",
    }
}

/// For each place rustc named in the wiring's `main` (its text), what
/// mirage.toml (its text) declares there, as a line for the user.
pub fn explain(config: &Config, opts: &Options, main: &str, toml: &str, places: &[(usize, usize)]) -> Vec<String> {
    let lines: Vec<&str> = main.lines().collect();
    let arguments = call_arguments(config, opts);
    let mut out: Vec<String> = Vec::new();
    for &(line, column) in places {
        let Some(text) = lines.get(line.wrapping_sub(1)) else { continue };
        let token: String = text
            .chars()
            .skip(column.saturating_sub(1))
            .take_while(|c| c.is_alphanumeric() || "_&:".contains(*c))
            .collect();
        let explanation = if let Some(i) = arguments.iter().position(|a| *a == token) {
            let name = &config.arguments[i];
            if let Some(b) = config.boot.iter().find(|b| &b.name == name) {
                let given = if b.ty == crate::config::ArgType::String { "&str" } else { b.ty.rust() };
                let place = declaration_line(toml, name, true)
                    .map_or("mirage.toml".to_string(), |l| format!("mirage.toml:{l}"));
                format!(
                    "main.rs:{line}: start's argument {} is the boot argument {name}, declared at {place} with type = \"{}\": the wiring gives start a `{given}` there",
                    i + 1,
                    b.ty.keyword()
                )
            } else if let Some(d) = config.devices.iter().find(|d| &d.name == name) {
                let place = declaration_line(toml, name, false)
                    .map_or("mirage.toml".to_string(), |l| format!("mirage.toml:{l}"));
                let target = if opts.target == Target::Unix { "unix" } else { "Solo5" };
                format!(
                    "main.rs:{line}: start's argument {} is the {} device {name}, declared at {place}: the wiring gives start its {target} implementation of {}, so start takes it as `impl {}` (or a type parameter bounded by it)",
                    i + 1,
                    d.kind.keyword(),
                    device_trait(&d.kind),
                    device_trait(&d.kind).rsplit("::").next().unwrap_or_default()
                )
            } else {
                continue;
            }
        } else if token == config.start
            || token.ends_with(&format!("::{}", config.start.rsplit("::").next().unwrap_or_default()))
        {
            format!(
                "main.rs:{line}: the call of {}, with the {} arguments of mirage.toml's arguments = [{}]",
                config.start,
                config.arguments.len(),
                config.arguments.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
            )
        } else {
            continue;
        };
        if !out.contains(&explanation) {
            out.push(explanation);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::UnixNet;
    use std::path::Path;

    const TOML: &str = "[unikernel]\nname = \"d\"\nstart = \"d::start\"\narguments = [\"console\", \"htdocs\", \"port\", \"greeting\"]\n\n[devices]\nconsole = \"console\"\nhtdocs = { kind = \"kv-ro\", directory = \".\" }\n\n[boot.port]\ntype = \"u16\"\ndefault = 80\n\n[boot.greeting]\ntype = \"string\"\ndefault = \"hi\"\n";

    #[test]
    fn places_in_the_wiring() {
        let rustc = "error[E0308]: mismatched types\n  --> main.rs:29:13\n   |\nnote: function defined here\n  --> /tmp/d/src/lib.rs:3:14\n  --> main.rs:7:5\n";
        assert_eq!(places(rustc), [(29, 13), (7, 5)]);
    }

    #[test]
    fn each_place_is_named_in_mirage_toml() {
        let c = crate::config::parse(Path::new("mirage.toml"), TOML, Path::new("."), "d".into()).unwrap();
        let opts = Options { target: Target::Unix, net: UnixNet::Socket, dhcp: true, kv_tar: false, kv_fat: false };
        let main = "fn main() {\n    std::process::exit(mirage_unix::run(async move {\n        d::start(console, KV_HTDOCS, port, &greeting).await\n    }));\n}\n";
        let col = |s: &str| main.lines().nth(2).unwrap().find(s).unwrap() + 1;
        let e = explain(&c, &opts, main, TOML, &[(3, col("port"))]);
        assert_eq!(
            e,
            [
                "main.rs:3: start's argument 3 is the boot argument port, declared at mirage.toml:10 with type = \"u16\": the wiring gives start a `u16` there"
            ]
        );
        let e = explain(&c, &opts, main, TOML, &[(3, col("&greeting"))]);
        assert!(e[0].contains("the boot argument greeting, declared at mirage.toml:14 with type = \"string\": the wiring gives start a `&str`"), "{e:?}");
        let e = explain(&c, &opts, main, TOML, &[(3, col("KV_HTDOCS"))]);
        assert!(
            e[0].contains("start's argument 2 is the kv-ro device htdocs, declared at mirage.toml:8")
                && e[0].contains("`impl KvRo`"),
            "{e:?}"
        );
        let e = explain(&c, &opts, main, TOML, &[(3, col("d::start")), (1, 1)]);
        assert_eq!(
            e,
            [
                "main.rs:3: the call of d::start, with the 4 arguments of mirage.toml's arguments = [\"console\", \"htdocs\", \"port\", \"greeting\"]"
            ]
        );
    }
}
