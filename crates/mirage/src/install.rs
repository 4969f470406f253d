//! `mirage install-runtime`: installs what containerd needs to run
//! mirage-rs unikernels (our shim, `mirage-runc` and the tenders) into one
//! directory on its PATH; and the statically linked tenders it installs,
//! which `mirage package --oci` packs too.

use std::path::{Path, PathBuf};

use crate::generate::Target;
use crate::{Args, Failure, cache_dir, cargo, crates_dir, help, lock};

pub const INSTALL_HELP: &str = "\
usage: mirage install-runtime [--prefix=DIR]

Installs containerd-shim-mirage-v2 (the runtime io.containerd.mirage.v2),
mirage-runc and the tenders solo5-hvt and solo5-spt into DIR (default
/usr/local/bin), which must be on containerd's PATH (README.md,
\"Containers\"). The shim and mirage-runc are the ones built beside this
tool (cargo build --release). The tenders are built from the mirage-rs
sources and linked statically: such a tender writes no copy of the
loader's and the C library's relocated pages, 60 to 80 KiB less for each
running unikernel (BENCHMARKS.md, \"static tenders\"), and it runs
whatever C library the host has. Files already there are replaced as a
whole, so running containers keep theirs.";

/// The files that run unikernel containers, beside the tenders.
const RUNTIME: [&str; 2] = ["containerd-shim-mirage-v2", "mirage-runc"];

pub fn install_runtime(argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("install-runtime", argv, &["prefix=", "help"])?;
    if help(&args, INSTALL_HELP) {
        return Ok(());
    }
    if let Some(p) = args.positional.first().or(args.rest.first()) {
        return Err(Failure::usage(
            format!("install-runtime: unexpected argument {p:?}"),
            "give the directory as --prefix=DIR",
        ));
    }
    let prefix = PathBuf::from(args.value("prefix").unwrap_or("/usr/local/bin"));
    if !prefix.is_dir() {
        return Err(Failure::new(
            format!("{}: not a directory", prefix.display()),
            "create it, or give another with --prefix=DIR",
        ));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .ok_or_else(|| Failure::new("cannot tell where this mirage tool lies", "run it by its path"))?;
    let mut files = Vec::new();
    for name in RUNTIME {
        let p = beside.join(name);
        if !p.is_file() {
            return Err(Failure::new(
                format!("{name} is not beside this tool, in {}", beside.display()),
                "build it with `cargo build --release` in the mirage-rs repository, then run that build's target/release/mirage",
            ));
        }
        files.push((name.to_string(), p));
    }
    for target in [Target::Hvt, Target::Spt] {
        files.push((format!("solo5-{}", target.name()), static_tender(target)?));
    }
    for (name, from) in &files {
        let to = prefix.join(name);
        install(from, &to)?;
        println!("installed {}", to.display());
    }
    Ok(())
}

/// Copies `from` to `to` as a new file put in place by a rename: a
/// running program keeps the file it was started from, and no one ever
/// sees half a copy.
fn install(from: &Path, to: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let dir = to.parent().unwrap_or(Path::new("."));
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let fail = |e: std::io::Error, what: &Path| {
        let _ = std::fs::remove_file(&tmp);
        Failure::new(format!("{}: {e}", what.display()), "check the directory's permissions and free space")
    };
    std::fs::copy(from, &tmp).map_err(|e| fail(e, &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(|e| fail(e, &tmp))?;
    std::fs::rename(&tmp, to).map_err(|e| fail(e, to))
}

/// The tender of `target` linked statically, built (once; cargo keeps it
/// up to date) from the mirage-rs sources the tool takes its crates from,
/// into a target directory of its own: `$CARGO_TARGET_DIR/tenders`, else
/// `target/tenders` in the tool's cache, else in the repository.
///
/// Why not the tender `cargo build` makes: it is linked against the build
/// host's C library, dynamically, so each process writes its own copy of
/// the loader's and the libraries' relocated pages (about 80 KiB of each
/// hvt instance), and a host with an older glibc refuses it. Cargo cannot
/// link one binary of a workspace statically (`+crt-static` in RUSTFLAGS
/// reaches the proc-macro crates too, which then fail to build), so this
/// is `cargo rustc` with the flag for the tender's own final link, where
/// the C library is chosen.
pub fn static_tender(target: Target) -> Result<PathBuf, Failure> {
    let name = format!("solo5-{}", target.name());
    let root = crates_dir()?.join("..");
    let manifest = root.join("Cargo.toml");
    let dir = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("tenders"),
        None => cache_dir().map(|c| c.join("target")).unwrap_or_else(|| root.join("target")).join("tenders"),
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::new(
            format!("{}: {e}", dir.display()),
            "set CARGO_TARGET_DIR or MIRAGE_CACHE to a directory you may write",
        )
    })?;
    let _lock = lock(&dir.join(".mirage-lock"))?;
    let out = cargo("rustc", &manifest, &dir)
        .args(["--quiet", "--color", "never", "-p", "tender", "--bin", &name])
        .args(["--", "-C", "target-feature=+crt-static"])
        // Cargo reads its configuration from the working directory up:
        // the repository's, not whatever directory the tool runs in.
        .current_dir(&root)
        .output()
        .map_err(|e| {
            Failure::new(format!("cannot run cargo: {e}"), "install Rust (rustup.rs) and put cargo on PATH")
        })?;
    if !out.status.success() {
        return Err(Failure::new(
            format!(
                "cargo failed to build {name} linked statically from {}:\n{}",
                manifest.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
            "see cargo's messages; the static C library comes with glibc's development files (Debian: apt-get install libc6-dev)",
        ));
    }
    Ok(dir.join("release").join(name))
}
