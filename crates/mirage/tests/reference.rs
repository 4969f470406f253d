//! The reference of mirage.toml (`docs/mirage-toml.md`) against the
//! parser: every device kind, key and boot-argument type the parser takes
//! is documented, and the template and `configure --help` lead to it.

use std::path::Path;

use mirage::config;

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/mirage-toml.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_kind_key_and_type_is_documented() {
    let doc = reference();
    let mut missing = Vec::new();
    for kind in config::KINDS {
        // A row of the table of kinds, and its keys in the table of keys.
        if !doc.contains(&format!("| `{kind}` |")) {
            missing.push(format!("device kind {kind}"));
        }
        for key in config::keys(kind) {
            let documented = doc.lines().any(|l| {
                l.starts_with(&format!("| `{key}` |")) && (l.contains(&format!("`{kind}`")) || l.contains("| all |"))
            });
            if !documented {
                missing.push(format!("key {key} of {kind}"));
            }
        }
    }
    for ty in config::TYPES {
        if !doc.lines().any(|l| l.starts_with('|') && l.contains(&format!("`{ty}`"))) {
            missing.push(format!("type {ty}"));
        }
    }
    for key in config::UNIKERNEL_KEYS.iter().chain(&config::BOOT_KEYS) {
        if !doc.contains(&format!("| `{key}` |")) {
            missing.push(format!("key {key}"));
        }
    }
    for convention in ["**`service`**", "**`storage`**"] {
        if !doc.contains(convention) {
            missing.push(format!("the convention {convention}"));
        }
    }
    assert!(missing.is_empty(), "docs/mirage-toml.md does not document: {}", missing.join(", "));
}

#[test]
fn the_template_and_configure_help_lead_to_the_reference() {
    let mirage = env!("CARGO_BIN_EXE_mirage");
    let out = std::process::Command::new(mirage).args(["configure", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/mirage-toml.md").canonicalize().unwrap();
    assert!(help.contains(&doc.display().to_string()), "configure --help does not name {}:\n{help}", doc.display());

    let dir = std::env::temp_dir().join(format!("mirage-reference-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(mirage).arg("-C").arg(&dir).args(["new", "app"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let toml = std::fs::read_to_string(dir.join("app/mirage.toml")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(toml.contains(&doc.display().to_string()), "the template does not name the reference:\n{toml}");
}
