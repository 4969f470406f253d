//! Snapshot tests of the generated wiring, as `mirage configure` writes it
//! (Rust sources formatted by rustfmt): every example on every target,
//! compared with the files under `tests/snapshots/EXAMPLE/TARGET/`. After
//! a deliberate change, `UPDATE_SNAPSHOTS=1 cargo test -p mirage` rewrites
//! them; review the diff.

use std::path::{Path, PathBuf};

use mirage::config;
use mirage::generate::{self, Libraries, Options, Target, UnixNet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

const EXAMPLES: [&str; 7] = ["hello", "hello-key", "block", "kv-ro", "ping", "network", "static-website"];

fn variants() -> Vec<(&'static str, Options)> {
    let o = |target, net, dhcp| Options { target, net, dhcp, kv_tar: false };
    let tar = |target| Options { target, net: UnixNet::Direct, dhcp: true, kv_tar: true };
    vec![
        ("unix", o(Target::Unix, UnixNet::Socket, true)),
        ("unix-direct", o(Target::Unix, UnixNet::Direct, true)),
        ("hvt", o(Target::Hvt, UnixNet::Direct, true)),
        ("spt", o(Target::Spt, UnixNet::Direct, true)),
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
    for ex in EXAMPLES {
        let dir = root.join("examples").join(ex);
        let c = config::load(&dir).unwrap_or_else(|e| panic!("{ex}: {e}"));
        for (variant, opts) in variants() {
            // The variants that only matter with a stack are taken for the
            // network example alone.
            if variant.contains('-') && !variant.ends_with("-tar") && ex != "network" {
                continue;
            }
            // The tar variants, for the examples with kv-ro stores.
            if variant.ends_with("-tar") && !["kv-ro", "static-website"].contains(&ex) {
                continue;
            }
            let snap_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(ex).join(variant);
            for f in generate::files_formatted(&c, &opts, &Libraries::Path(root.join("crates"))) {
                // hvt and spt share their Rust code, but for the command
                // named in the header: spt keeps only its Cargo.toml.
                if variant == "spt" && f.path.ends_with(".rs") {
                    let hvt = generate::files_formatted(&c, &Options { target: Target::Hvt, ..opts }, &Libraries::Path(root.join("crates")));
                    let same = hvt.iter().find(|h| h.path == f.path).map(|h| h.text.replace("-t hvt", "-t spt"));
                    if same.as_deref() != Some(f.text.as_str()) {
                        differ.push(format!("{ex}: spt's {} differs from hvt's beyond the header", f.path));
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
    assert!(differ.is_empty(), "generated files differ from their snapshots (UPDATE_SNAPSHOTS=1 to accept):\n{}", differ.join("\n"));
}

#[test]
fn rustfmt_is_there_to_format_the_wiring() {
    // The snapshots are rustfmt's output: without rustfmt they would be
    // compared with unformatted code and fail for the wrong reason.
    let out = std::process::Command::new("rustfmt").arg("--version").output();
    assert!(out.is_ok_and(|o| o.status.success()), "rustfmt (part of the Rust toolchain) is missing");
    let messy = "fn  main( ) { let x=1 ; }";
    assert_eq!(generate::format(messy), "fn main() {\n    let x = 1;\n}\n");
}
