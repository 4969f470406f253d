//! Snapshot tests of the generated wiring, as `mirage configure` writes it
//! (Rust sources formatted by rustfmt): every example on every target, and
//! the configurations of `tests/fixtures` the examples do not cover,
//! compared with the files under `tests/snapshots/EXAMPLE/TARGET/`. After
//! a deliberate change, `UPDATE_SNAPSHOTS=1 cargo test -p mirage` rewrites
//! them; review the diff. Every generated file is also checked for what no
//! snapshot review should have to catch: unused imports, doubled words.

use std::path::{Path, PathBuf};

use mirage::config;
use mirage::generate::{self, Libraries, Options, Target, UnixNet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

const EXAMPLES: [&str; 9] =
    ["hello", "hello-key", "block", "kv-ro", "ping", "network", "static-website", "static-website-tls", "router"];

/// Configurations under `tests/fixtures`, with every variant.
const FIXTURES: [&str; 3] = ["two-nets", "fat-stores", "three-nets"];

/// Each configuration to snapshot: its name and directory.
fn configurations() -> Vec<(&'static str, PathBuf)> {
    let root = root();
    let mut c: Vec<_> = EXAMPLES.iter().map(|e| (*e, root.join("examples").join(e))).collect();
    c.extend(FIXTURES.iter().map(|f| (*f, Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(f))));
    c
}

/// Every generated file of every configuration and variant:
/// (configuration, variant, file).
fn generated() -> Vec<(&'static str, &'static str, generate::File)> {
    let libraries = Libraries::Path(root().join("crates"));
    let mut out = Vec::new();
    for (name, dir) in configurations() {
        let c = config::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (variant, opts) in variants() {
            for f in generate::files_formatted(&c, &opts, &libraries) {
                out.push((name, variant, f));
            }
        }
    }
    out
}

fn variants() -> Vec<(&'static str, Options)> {
    let o = |target, net, dhcp| Options { target, net, dhcp, kv_tar: false, kv_fat: false };
    let tar = |target| Options { target, net: UnixNet::Direct, dhcp: true, kv_tar: true, kv_fat: false };
    vec![
        ("unix", o(Target::Unix, UnixNet::Socket, true)),
        ("unix-direct", o(Target::Unix, UnixNet::Direct, true)),
        ("hvt", o(Target::Hvt, UnixNet::Direct, true)),
        ("spt", o(Target::Spt, UnixNet::Direct, true)),
        ("virtio", o(Target::Virtio, UnixNet::Direct, true)),
        ("hvt-no-dhcp", o(Target::Hvt, UnixNet::Direct, false)),
        ("unix-tar", tar(Target::Unix)),
        ("hvt-tar", tar(Target::Hvt)),
    ]
}

#[test]
fn generated_wiring_matches_the_snapshots() {
    let root = root();
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut differ = Vec::new();
    let mut checked = 0;
    for (ex, dir) in configurations() {
        let c = config::load(&dir).unwrap_or_else(|e| panic!("{ex}: {e}"));
        for (variant, opts) in variants() {
            // The variants that only matter with a stack are taken for the
            // network example alone.
            if variant.contains('-') && !variant.ends_with("-tar") && ex != "network" && !FIXTURES.contains(&ex) {
                continue;
            }
            // The tar variants, for the examples with kv-ro stores.
            if variant.ends_with("-tar") && !["kv-ro", "static-website"].contains(&ex) {
                continue;
            }
            let snap_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(ex).join(variant);
            for f in generate::files_formatted(&c, &opts, &Libraries::Path(root.join("crates"))) {
                // hvt, spt and virtio share their Rust code, but for the
                // command named in the header: spt and virtio keep only
                // their Cargo.toml.
                if (variant == "spt" || variant == "virtio") && f.path.ends_with(".rs") {
                    let hvt = generate::files_formatted(
                        &c,
                        &Options { target: Target::Hvt, ..opts },
                        &Libraries::Path(root.join("crates")),
                    );
                    let same = hvt
                        .iter()
                        .find(|h| h.path == f.path)
                        .map(|h| h.text.replace("-t hvt", &format!("-t {variant}")));
                    if same.as_deref() != Some(f.text.as_str()) {
                        differ.push(format!("{ex}: {variant}'s {} differs from hvt's beyond the header", f.path));
                    }
                    checked += 1;
                    continue;
                }
                let path = snap_dir.join(f.path);
                checked += 1;
                if update {
                    std::fs::create_dir_all(&snap_dir).unwrap();
                    std::fs::write(&path, &f.text).unwrap();
                    continue;
                }
                match std::fs::read_to_string(&path) {
                    Ok(want) if want == f.text => {}
                    Ok(_) => differ.push(format!("{} differs", path.display())),
                    Err(e) => differ.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} files checked");
    assert!(
        differ.is_empty(),
        "generated files differ from their snapshots (UPDATE_SNAPSHOTS=1 to accept):\n{}",
        differ.join("\n")
    );
}

#[test]
fn rustfmt_is_there_to_format_the_wiring() {
    // The snapshots are rustfmt's output: without rustfmt they would be
    // compared with unformatted code and fail for the wrong reason.
    let out = std::process::Command::new("rustfmt").arg("--version").output();
    assert!(out.is_ok_and(|o| o.status.success()), "rustfmt (part of the Rust toolchain) is missing");
    let messy = "fn  main( ) { let x=1 ; }";
    assert_eq!(generate::format(messy), "fn main() {\n    let x = 1;\n}\n");
    // rustfmt's defaults (100 columns), whatever rustfmt.toml lies in the
    // directories rustfmt would search (a 120-column one in /tmp changed
    // every snapshot once).
    let long = "fn main() { let link = std::env::var(\"DEP_MIRAGE_SOLO5_LINK_ARGS\").expect(\"mirage-solo5 publishes its link arguments\"); }";
    assert_eq!(
        generate::format(long),
        "fn main() {\n    let link = std::env::var(\"DEP_MIRAGE_SOLO5_LINK_ARGS\")\n        .expect(\"mirage-solo5 publishes its link arguments\");\n}\n"
    );
}

#[test]
fn generated_code_imports_only_what_it_uses() {
    let mut unused = Vec::new();
    for (name, variant, f) in generated() {
        if !f.path.ends_with(".rs") {
            continue;
        }
        for line in f.text.lines() {
            let Some(path) = line.strip_prefix("use ").and_then(|l| l.strip_suffix(';')) else { continue };
            let imported = path.rsplit([':', ' ']).next().unwrap_or(path);
            let uses = f.text.matches(imported).count();
            if uses < 2 {
                unused.push(format!("{name} ({variant}) {}: `{line}` imports {imported}, which nothing uses", f.path));
            }
        }
    }
    assert!(unused.is_empty(), "{}", unused.join("\n"));
}

/// `word word`, as in "the store store": the name of a device or argument
/// written where its kind belongs.
fn doubled_words(text: &str) -> Vec<String> {
    // A word ends before its punctuation; a quoted name is not the word.
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace())
        .map(|w| w.trim_end_matches([':', ',', '.', ';', ')']))
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .filter(|w| w[0] == w[1] && w[0].chars().all(|c| c.is_ascii_alphabetic()) && w[0].len() > 1)
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect()
}

#[test]
fn generated_messages_say_each_word_once() {
    assert_eq!(doubled_words("cannot open the store store: no"), ["store store"]);
    let mut found = Vec::new();
    for (name, variant, f) in generated() {
        for d in doubled_words(&f.text) {
            found.push(format!("{name} ({variant}) {}: \"{d}\"", f.path));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn each_interface_has_its_own_subnet() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two-nets");
    let c = config::load(&dir).unwrap();
    assert_eq!(generate::network_interfaces(&c), ["service", "admin"]);
    assert_eq!((generate::subnet(&c, "service"), generate::subnet(&c, "admin")), (0, 1));
    // The stack is on the second interface: its static defaults are in
    // 10.0.1.0/24, which mirage run gives tap-admin.
    let opts = Options { target: Target::Hvt, net: UnixNet::Direct, dhcp: false, kv_tar: false, kv_fat: false };
    let main = generate::files(&c, &opts, &Libraries::Path(root().join("crates")))
        .into_iter()
        .find(|f| f.path == "main.rs")
        .unwrap();
    assert!(main.text.contains("mirage_tcpip::Config::args(\"10.0.1.2/24\", \"10.0.1.1\")"), "{}", main.text);
}

#[test]
fn several_stacks_and_ip_layers_have_their_own_arguments() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/three-nets");
    let c = config::load(&dir).unwrap();
    let opts = Options { target: Target::Hvt, net: UnixNet::Direct, dhcp: false, kv_tar: false, kv_fat: false };
    let main = generate::files(&c, &opts, &Libraries::Path(root().join("crates")))
        .into_iter()
        .find(|f| f.path == "main.rs")
        .unwrap();
    for line in [
        // Each in its own subnet, with mirage.toml's address where given.
        "mirage_tcpip::Config::args_prefixed(\"front\", \"10.0.0.2/24\", \"10.0.0.1\")",
        "mirage_tcpip::Config::args_prefixed(\"back\", \"192.168.5.1/24\", \"\")",
        "mirage_tcpip::IpConfig::args_prefixed(\"wan\", \"10.0.2.2/24\", \"10.0.2.1\")",
        "mirage_tcpip::Config::from_args_prefixed(&args, \"front\")",
        "mirage_tcpip::IpConfig::from_args_prefixed(&args, \"wan\")",
    ] {
        assert!(main.text.contains(line), "no {line} in\n{}", main.text);
    }
    // The boot arguments the wiring declares parse, apart.
    let mut specs = mirage_tcpip::Config::args_prefixed("front", "10.0.0.2/24", "10.0.0.1");
    specs.extend(mirage_tcpip::Config::args_prefixed("back", "192.168.5.1/24", ""));
    specs.extend(mirage_tcpip::IpConfig::args_prefixed("wan", "10.0.2.2/24", "10.0.2.1"));
    let words = ["--back-ipv4=192.168.9.1/24".to_string(), "--wan-ipv4-gateway=10.0.2.254".to_string()];
    let args = mirage_runtime::args::parse("three-nets", &specs, &words).unwrap();
    let front = mirage_tcpip::Config::from_args_prefixed(&args, "front");
    let back = mirage_tcpip::Config::from_args_prefixed(&args, "back");
    let wan = mirage_tcpip::IpConfig::from_args_prefixed(&args, "wan");
    assert_eq!(front.ipv4, Some(("10.0.0.2".parse().unwrap(), 24)));
    assert_eq!(back.ipv4, Some(("192.168.9.1".parse().unwrap(), 24)));
    assert_eq!(back.ipv4_gateway, None);
    assert_eq!(wan.ipv4, ("10.0.2.2".parse().unwrap(), 24));
    assert_eq!(wan.gateway, Some("10.0.2.254".parse().unwrap()));
}

#[test]
fn examples_do_not_restate_their_configuration() {
    // A default of mirage.toml written again in the crate drifts from it.
    let root = root();
    let mut restated = Vec::new();
    for ex in EXAMPLES {
        let dir = root.join("examples").join(ex);
        let c = config::load(&dir).unwrap();
        let sources = mirage_kv::crunch::files(&dir.join("src")).unwrap();
        for (key, path) in sources {
            let text = std::fs::read_to_string(&path).unwrap();
            for b in &c.boot {
                if let Some(d) = b.default.as_deref().filter(|d| d.len() >= 4)
                    && text.contains(&format!("{d:?}"))
                {
                    restated.push(format!("{ex}/src{key} restates the default {d:?} of --{}", b.name));
                }
            }
        }
    }
    assert!(restated.is_empty(), "{}", restated.join("\n"));
}
