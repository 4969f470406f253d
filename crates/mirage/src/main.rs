//! `mirage`: configures, builds, runs and describes unikernels.
//!
//! ```text
//! mirage configure -t unix|hvt|spt|virtio [--net=socket|direct] [--no-dhcp]
//! mirage build [-t TARGET]
//! mirage run [-t TARGET] [--tap=NAME] [--accel=kvm|tcg] [-- ARGS...]
//! mirage package --oci [-t TARGET] [--output=FILE] [--name=REF] [-- ARGS...]
//! mirage package --iso [--output=FILE] [-- ARGS...]
//! mirage clean
//! mirage query [name|target|files|manifest|packages]
//! mirage describe [--dot] [--svg=FILE]
//! mirage new NAME
//! ```
//!
//! Every command works on the unikernel crate in the current directory
//! (`-C DIR` for another), whose `mirage.toml` declares its devices and
//! boot arguments.

mod install;
mod kv;
mod package;
mod run;

use std::path::{Path, PathBuf};
use std::process::Command;

use mirage::config::{self, Config};
use mirage::describe;
use mirage::generate::{self, Libraries, Options, Target, UnixNet};
use mirage::template::{self, Template};

/// A failure: one line of cause, one of fix.
#[derive(Debug)]
pub struct Failure {
    pub cause: String,
    pub fix: String,
    pub status: i32,
}

impl Failure {
    pub fn new(cause: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure { cause: cause.into(), fix: fix.into(), status: 1 }
    }

    /// A wrong command line (status 64, as the unikernels').
    pub fn usage(cause: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure { status: 64, ..Failure::new(cause, fix) }
    }
}

impl From<config::Error> for Failure {
    fn from(e: config::Error) -> Failure {
        let cause = match e.line {
            0 => format!("{}: {}", e.file.display(), e.cause),
            l => format!("{}:{l}: {}", e.file.display(), e.cause),
        };
        Failure::new(cause, e.fix)
    }
}

const USAGE: &str = "\
usage: mirage [-C DIR] COMMAND [OPTIONS]

Configures, builds and runs the unikernel crate in the current directory
(or DIR), as its mirage.toml declares.

commands:
  configure   write the wiring for a target (-t unix|hvt|spt|virtio)
  build       build dist/NAME, dist/NAME.hvt, dist/NAME.spt or dist/NAME.virtio
  run         boot the image with its tender and devices
  package     pack the image, its tender and disks as an OCI image (--oci)
  clean       remove the wiring and dist/
  query       print the name, target, files, manifest or packages
  describe    print the device graph (--dot for Graphviz)
  new NAME    start a unikernel crate from a template
  kv          list, read, write and check the disk image of a kv-rw store
  install-runtime
              install the containerd shim, mirage-runc and static tenders

`mirage COMMAND --help` describes each.";

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match real_main(argv) {
        Ok(()) => {}
        Err(f) => {
            eprintln!("mirage: {}", f.cause);
            if !f.fix.is_empty() {
                eprintln!("  fix: {}", f.fix);
            }
            std::process::exit(f.status);
        }
    }
}

/// Command-line options of one command: flags and `--key=value`s, plus
/// what follows `--`.
struct Args {
    values: Vec<(String, Option<String>)>,
    positional: Vec<String>,
    rest: Vec<String>,
}

impl Args {
    /// Parses `argv` against the options `known` (names; a trailing `=`
    /// takes a value).
    fn parse(command: &str, argv: &[String], known: &[&str]) -> Result<Args, Failure> {
        let mut a = Args { values: Vec::new(), positional: Vec::new(), rest: Vec::new() };
        let mut i = 0;
        while i < argv.len() {
            let arg = &argv[i];
            i += 1;
            if arg == "--" {
                a.rest = argv[i..].to_vec();
                break;
            }
            let Some(opt) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-').filter(|o| o.len() == 1)) else {
                a.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (opt, None),
            };
            let name = match name {
                "t" => "target",
                "h" => "help",
                n => n,
            };
            let takes_value = known.contains(&format!("{name}=").as_str());
            if !takes_value && !known.contains(&name) {
                return Err(Failure::usage(
                    format!("{command}: unknown option {arg}"),
                    format!("see `mirage {command} --help`"),
                ));
            }
            let value = match (takes_value, inline) {
                (true, Some(v)) => Some(v),
                (true, None) => {
                    let v = argv.get(i).cloned().ok_or_else(|| {
                        Failure::usage(format!("{command}: --{name} needs a value"), format!("write --{name}=VALUE"))
                    })?;
                    i += 1;
                    Some(v)
                }
                (false, Some(_)) => {
                    return Err(Failure::usage(
                        format!("{command}: --{name} takes no value"),
                        format!("write --{name}"),
                    ));
                }
                (false, None) => None,
            };
            a.values.push((name.to_string(), value));
        }
        Ok(a)
    }

    fn flag(&self, name: &str) -> bool {
        self.values.iter().any(|(n, _)| n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }
}

fn real_main(mut argv: Vec<String>) -> Result<(), Failure> {
    let mut dir = PathBuf::from(".");
    if argv.first().map(String::as_str) == Some("-C") {
        let d = argv
            .get(1)
            .cloned()
            .ok_or_else(|| Failure::usage("-C needs a directory", "write mirage -C DIR COMMAND"))?;
        dir = PathBuf::from(d);
        argv.drain(..2);
    }
    let Some(command) = argv.first().cloned() else {
        println!("{USAGE}");
        return Err(Failure { cause: "no command".into(), fix: "give one of the commands above".into(), status: 64 });
    };
    let rest = &argv[1..];
    match command.as_str() {
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "--version" => {
            println!("mirage {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "configure" => configure(&dir, rest),
        "build" => build(&dir, rest),
        "run" => run::run(&dir, rest),
        "package" => package::package(&dir, rest),
        "clean" => clean(&dir, rest),
        "query" => query(&dir, rest),
        "describe" => describe(&dir, rest),
        "new" => new(&dir, rest),
        "kv" => kv::kv(rest),
        "install-runtime" => install::install_runtime(rest),
        other => Err(Failure::usage(
            format!("unknown command {other:?}"),
            "use one of configure, build, run, package, clean, query, describe, new, kv, install-runtime (mirage --help)",
        )),
    }
}

fn help(args: &Args, text: &str) -> bool {
    if args.flag("help") {
        println!("{text}");
        return true;
    }
    false
}

/// The directory holding the mirage-rs crates the wiring depends on: the
/// repository this tool was built from, or `$MIRAGE_RS/crates`.
pub(crate) fn crates_dir() -> Result<PathBuf, Failure> {
    let root = match std::env::var_os("MIRAGE_RS") {
        Some(r) => PathBuf::from(r),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    };
    let crates = root.join("crates");
    if !crates.join("mirage-runtime/Cargo.toml").is_file() {
        return Err(Failure::new(
            format!("the mirage-rs crates are not in {}", crates.display()),
            "set MIRAGE_RS to the mirage-rs repository",
        ));
    }
    crates
        .canonicalize()
        .map_err(|e| Failure::new(format!("{}: {e}", crates.display()), "set MIRAGE_RS to the mirage-rs repository"))
}

/// Where the wiring of `config` takes the mirage-rs libraries from: where
/// the unikernel crate takes them, else the crates beside this tool.
fn libraries(config: &Config) -> Result<Libraries, Failure> {
    match &config.libraries {
        Some(l) => Ok(l.clone()),
        None => crates_dir().map(Libraries::Path),
    }
}

fn load(dir: &Path) -> Result<Config, Failure> {
    let dir = dir
        .canonicalize()
        .map_err(|e| Failure::new(format!("{}: {e}", dir.display()), "name an existing directory with -C"))?;
    Ok(config::load(&dir)?)
}

fn parse_target(s: &str) -> Result<Target, Failure> {
    Target::parse(s)
        .ok_or_else(|| Failure::usage(format!("unknown target {s:?}"), "use -t unix, -t hvt, -t spt or -t virtio"))
}

/// Where `configure` records its keys, for `build` and `run`.
fn state_file(config: &Config) -> PathBuf {
    config.dir.join("mirage/configured")
}

fn save_state(config: &Config, opts: &Options) -> std::io::Result<()> {
    let net = if opts.net == UnixNet::Direct { "direct" } else { "socket" };
    std::fs::write(state_file(config), format!("target={}\nnet={net}\ndhcp={}\n", opts.target.name(), opts.dhcp))
}

/// The keys of the last `configure`, or of `configure -t TARGET` for an
/// explicit target that was configured before.
fn load_state(config: &Config, target: Option<Target>) -> Result<Options, Failure> {
    let not_configured = |t: &str| {
        Failure::new(
            format!("{} is not configured for {t}", config.name),
            format!("run `mirage configure -t {t}` first"),
        )
    };
    let text = std::fs::read_to_string(state_file(config)).unwrap_or_default();
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(String::from);
    let last = get("target").and_then(|t| Target::parse(&t));
    let target = match (target, last) {
        (Some(t), _) => t,
        (None, Some(t)) => t,
        (None, None) => {
            return Err(Failure::new(
                format!("{} is not configured", config.name),
                "run `mirage configure -t unix` (or -t hvt, -t spt) first",
            ));
        }
    };
    let generated = generate::dir(config, target).join("Cargo.toml");
    if !generated.is_file() {
        return Err(not_configured(target.name()));
    }
    // The keys apply to the target they were given for; another target
    // configured earlier keeps its own in its generated main.rs header.
    let header = std::fs::read_to_string(generate::dir(config, target).join("main.rs")).unwrap_or_default();
    let first = header.lines().next().unwrap_or_default().to_string();
    Ok(Options {
        target,
        net: if first.contains("--net=direct") { UnixNet::Direct } else { UnixNet::Socket },
        dhcp: !first.contains("--no-dhcp"),
        kv_tar: first.contains("--kv-ro=tar"),
        kv_fat: first.contains("--kv-rw=fat"),
    })
}

const CONFIGURE_HELP: &str = "\
usage: mirage configure [-t TARGET] [--net=socket|direct] [--no-dhcp] [--kv-ro=tar]
                        [--kv-rw=fat]

Writes the wiring for TARGET into mirage/TARGET/: a Cargo project whose
main builds each device declared in mirage.toml and calls the start
function, with the Solo5 manifest and link settings.

  -t, --target=TARGET   unix (a Linux process, the default), hvt (KVM), spt (seccomp)
                        or virtio (QEMU, or GRUB from an ISO)
  --net=socket|direct   unix: stacks on the host's sockets (default) or
                        mirage-tcpip on a tap device (the other targets are always direct)
  --no-dhcp             stacks default to the static 10.0.0.2/24 (gateway
                        10.0.0.1) instead of asking DHCP when no --ipv4 is given
  --kv-ro=tar           every kv-ro store is a tar archive of its directory on a
                        block device of the store's name (made by mirage build),
                        rather than compiled into the image
  --kv-rw=fat           every kv-rw store on a block device (store = \"block\")
                        is a FAT volume instead (store = \"fat\")

The reference of mirage.toml (each device kind, its keys, their types and
defaults, the boot-argument types, the conventions):";

/// Where the reference of mirage.toml is: in the repository this tool
/// comes from, or named in it.
fn reference() -> String {
    match crates_dir().map(|c| c.join("../docs/mirage-toml.md")) {
        Ok(p) if p.is_file() => p.canonicalize().unwrap_or(p).display().to_string(),
        _ => "docs/mirage-toml.md in the mirage-rs repository".to_string(),
    }
}

fn write_wiring(config: &Config, opts: &Options) -> Result<Vec<PathBuf>, Failure> {
    let libraries = libraries(config)?;
    let dir = generate::dir(config, opts.target);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::new(format!("{}: {e}", dir.display()), "check the directory's permissions"))?;
    let mut written = Vec::new();
    for f in generate::files_formatted(config, opts, &libraries) {
        let path = dir.join(f.path);
        // Unchanged files keep their time, so nothing is rebuilt for them.
        if std::fs::read_to_string(&path).is_ok_and(|old| old == f.text) {
            written.push(path);
            continue;
        }
        std::fs::write(&path, f.text)
            .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the directory's permissions"))?;
        written.push(path);
    }
    // Start from the versions mirage-rs is tested with: those of the
    // checkout the libraries come from, else of the tool's own (cargo
    // re-resolves what differs).
    let lock = dir.join("Cargo.lock");
    let tested = match &libraries {
        Libraries::Path(crates) => Some(crates.clone()),
        _ => crates_dir().ok(),
    };
    if let Some(crates) = tested
        && !lock.exists()
    {
        let _ = std::fs::copy(crates.join("../Cargo.lock"), &lock);
    }
    // A build script of an earlier configuration that this one does not
    // write.
    if !written.iter().any(|p| p.ends_with("build.rs")) {
        let _ = std::fs::remove_file(dir.join("build.rs"));
    }
    save_state(config, opts).map_err(|e| {
        Failure::new(format!("{}: {e}", state_file(config).display()), "check the directory's permissions")
    })?;
    Ok(written)
}

fn configure(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("configure", argv, &["target=", "net=", "no-dhcp", "kv-ro=", "kv-rw=", "help"])?;
    if help(&args, &format!("{CONFIGURE_HELP}\n  {}", reference())) {
        return Ok(());
    }
    if let Some(p) = args.positional.first() {
        return Err(Failure::usage(format!("configure: unexpected argument {p:?}"), "see `mirage configure --help`"));
    }
    let target = parse_target(args.value("target").unwrap_or("unix"))?;
    let net = match args.value("net") {
        None | Some("socket") => UnixNet::Socket,
        Some("direct") => UnixNet::Direct,
        Some(other) => {
            return Err(Failure::usage(format!("--net={other}: unknown stack"), "use --net=socket or --net=direct"));
        }
    };
    if target != Target::Unix && args.value("net") == Some("socket") {
        return Err(Failure::usage(
            format!("--net=socket: {} has no host sockets", target.name()),
            "drop --net (Solo5 targets use mirage-tcpip), or configure -t unix",
        ));
    }
    let config = load(dir)?;
    let kv_tar = match args.value("kv-ro") {
        None | Some("default") => false,
        Some("tar") => true,
        Some(other) => {
            return Err(Failure::usage(
                format!("--kv-ro={other}: unknown store"),
                "use --kv-ro=tar, or leave it out for each store's own",
            ));
        }
    };
    let kv_fat = match args.value("kv-rw") {
        None | Some("default") => false,
        Some("fat") => true,
        Some(other) => {
            return Err(Failure::usage(
                format!("--kv-rw={other}: unknown store"),
                "use --kv-rw=fat, or leave it out for each store's own",
            ));
        }
    };
    let opts = Options {
        target,
        net: if target == Target::Unix { net } else { UnixNet::Direct },
        dhcp: !args.flag("no-dhcp"),
        kv_tar,
        kv_fat,
    };
    let written = write_wiring(&config, &opts)?;
    println!(
        "configured {} for {} in {}",
        config.name,
        target.name(),
        generate::relative(&generate::dir(&config, target), &std::env::current_dir().unwrap_or_default())
    );
    for w in written {
        println!("  wrote {}", w.file_name().and_then(|n| n.to_str()).unwrap_or(""));
    }
    println!("next: mirage build");
    Ok(())
}

const BUILD_HELP: &str = "\
usage: mirage build [-t TARGET]

Builds the configured unikernel (the last target configured, or TARGET)
into dist/NAME (unix), dist/NAME.hvt, dist/NAME.spt or dist/NAME.virtio
(a Multiboot image for QEMU or GRUB), with cargo's
progress. Reconfigures first when mirage.toml changed.

Every unikernel shares one cargo target directory per target, under the
cache $MIRAGE_CACHE (default $XDG_CACHE_HOME/mirage, or ~/.cache/mirage):
the libraries are built once for all. $CARGO_TARGET_DIR, when set, is
used for every target instead. Removing the cache is safe.";

/// The cargo target directory of `target`: `$CARGO_TARGET_DIR`, else one
/// per target under the tool's cache, shared by every unikernel (so the
/// libraries are compiled once), else, without a home, the unikernel's
/// own `mirage/target`.
fn target_dir(config: &Config, target: Target) -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    match cache_dir() {
        Some(c) => c.join("target").join(target.name()),
        None => config.dir.join("mirage/target"),
    }
}

/// The tool's cache: `$MIRAGE_CACHE`, else `$XDG_CACHE_HOME/mirage`, else
/// `~/.cache/mirage`; `None` without a home.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("MIRAGE_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|c| c.join("mirage")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/mirage")))
}

/// `cargo SUBCOMMAND --release` (the cargo that runs the tool, under
/// `cargo run` or a test, else the one on PATH) for the package at
/// `manifest`, into `target_dir`, without the caller's RUSTFLAGS: what the
/// tool builds takes its flags from its own configuration.
pub(crate) fn cargo(subcommand: &str, manifest: &Path, target_dir: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args([subcommand, "--release", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    c
}

/// An exclusive lock on `path` (created if missing), held until dropped.
pub(crate) fn lock(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the directory's permissions"))?;
    // SAFETY: flock on a descriptor this function owns; the lock goes with
    // the file when it is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Failure::new(format!("locking {}: {e}", path.display()), "check the file system supports flock"));
    }
    Ok(f)
}

/// Builds the image; its path.
pub fn build_image(config: &Config, opts: &Options) -> Result<PathBuf, Failure> {
    let gen_dir = generate::dir(config, opts.target);
    // A configuration edited since configure is applied now.
    let stale = |p: &Path| -> bool {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        match (m(&config.dir.join(config::FILE)), m(p)) {
            (Some(c), Some(g)) => c > g,
            _ => true,
        }
    };
    if stale(&gen_dir.join("main.rs")) {
        write_wiring(config, opts)?;
    }
    let target_dir = target_dir(config, opts.target);
    std::fs::create_dir_all(&target_dir).map_err(|e| {
        Failure::new(
            format!("{}: {e}", target_dir.display()),
            "set CARGO_TARGET_DIR or MIRAGE_CACHE to a directory you may write",
        )
    })?;
    // One build at a time in a target directory, from cargo to the copy
    // into dist/: two unikernels of one name write the same binary there.
    let _lock = lock(&target_dir.join(".mirage-lock"))?;
    // Cargo tells packages apart by their path relative to their
    // workspace, and every generated project is a workspace of its own:
    // two unikernels of the same name built into one target directory
    // (a shared $CARGO_TARGET_DIR) look like one package to it. Their
    // build scripts share an output directory, so one image could be
    // built with the other's crunched files. When the last build of this
    // name came from another directory, cargo is made to forget both
    // packages and build them afresh.
    let owner = target_dir.join(format!(".mirage-built-{}-{}", config.name, opts.target.name()));
    let me = config.dir.display().to_string();
    if std::fs::read_to_string(&owner).is_ok_and(|o| o != me) {
        let wiring = format!("{}-{}-", config.name, opts.target.name());
        let package = format!("{}-", config.package);
        if let Ok(entries) = std::fs::read_dir(target_dir.join("release/.fingerprint")) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&wiring) || n.starts_with(&package) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    // Cargo's messages pass through mirage, which reads where rustc's
    // errors point (in colour when they go to a terminal).
    // SAFETY: isatty only inspects descriptor 2.
    let colour = if unsafe { libc::isatty(2) } == 1 { "always" } else { "never" };
    let mut child = cargo("build", &gen_dir.join("Cargo.toml"), &target_dir)
        .args(["--color", colour])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Failure::new(format!("cannot run cargo: {e}"), "install Rust (rustup.rs) and put cargo on PATH")
        })?;
    let mut output = String::new();
    if let Some(stderr) = child.stderr.take() {
        use std::io::{BufRead, Write};
        let mut out = std::io::stderr().lock();
        for line in std::io::BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
            output.push_str(&strip_ansi(&String::from_utf8_lossy(&line)));
            output.push('\n');
        }
    }
    let status = child.wait().map_err(|e| Failure::new(format!("waiting for cargo: {e}"), ""))?;
    if !status.success() {
        let main = std::fs::read_to_string(gen_dir.join("main.rs")).unwrap_or_default();
        let toml = std::fs::read_to_string(config.dir.join(config::FILE)).unwrap_or_default();
        let places = mirage::diagnose::explain(config, opts, &main, &toml, &mirage::diagnose::places(&output));
        let wiring = format!("mirage/{}/", opts.target.name());
        if !places.is_empty() {
            return Err(Failure::new(
                format!(
                    "cargo failed to build {} for {}: rustc's errors point into the wiring {wiring}main.rs, where mirage.toml and start disagree:\n  {}",
                    config.name,
                    opts.target.name(),
                    places.join("\n  ")
                ),
                format!(
                    "make mirage.toml and start agree (mirage.toml's reference: {}), then mirage build again; {wiring} is generated from mirage.toml, so do not edit it",
                    reference()
                ),
            ));
        }
        return Err(Failure::new(
            format!("cargo failed to build {} for {}", config.name, opts.target.name()),
            format!(
                "see cargo's messages above. The wiring in {wiring} is generated from mirage.toml: where rustc points into it, \
                 correct mirage.toml (see its reference, {}) or the start function, not the generated file",
                reference()
            ),
        ));
    }
    let _ = std::fs::write(&owner, &me);
    let built = target_dir.join("release").join(&config.name);
    let dist = config.dir.join("dist");
    std::fs::create_dir_all(&dist)
        .map_err(|e| Failure::new(format!("{}: {e}", dist.display()), "check the directory's permissions"))?;
    let image = dist.join(opts.target.image(&config.name));
    // Replace, not overwrite in place: a running copy keeps its file.
    let _ = std::fs::remove_file(&image);
    std::fs::copy(&built, &image).map_err(|e| {
        Failure::new(
            format!("copying {} to {}: {e}", built.display(), image.display()),
            "check the directory's permissions",
        )
    })?;
    if opts.target.solo5()
        && let Some(trimmed) = std::fs::read(&image).ok().and_then(|elf| mirage::trim::strip_section_headers(&elf))
    {
        // The untrimmed ELF, with its symbols, call-frame and debug
        // information, is what gdb reads beside the image it runs (a core
        // file, or solo5-hvt --gdb): the same addresses, nothing loaded.
        let debug = dist.join(format!("{}.debug", opts.target.image(&config.name)));
        let _ = std::fs::remove_file(&debug);
        std::fs::rename(&image, &debug)
            .map_err(|e| Failure::new(format!("{}: {e}", debug.display()), "check the directory's permissions"))?;
        std::fs::write(&image, trimmed)
            .map_err(|e| Failure::new(format!("{}: {e}", image.display()), "check the free space"))?;
        if let Ok(m) = std::fs::metadata(&debug) {
            let _ = std::fs::set_permissions(&image, m.permissions());
        }
    }
    for d in &config.devices {
        if let config::Kind::KvRw { block: Some(b) } = &d.kind {
            let disk = dist.join(format!("{}.img", b.interface));
            if kv::ensure(&disk, b, opts.fat(b), &config.dir)? {
                let filled = b.directory.as_ref().map(|d| format!(", filled from {}", d.display())).unwrap_or_default();
                println!(
                    "made {} (a kv-rw store{filled}) for store {}",
                    generate::relative(&disk, &config.dir),
                    d.name
                );
            }
        }
        if let (Some(interface), config::Kind::KvRo { directory, fat: true, .. }) =
            (opts.tar(&d.name, &d.kind), &d.kind)
        {
            let disk = dist.join(format!("{interface}.img"));
            if kv::ensure_fat_ro(&disk, &config.dir.join(directory))? {
                println!(
                    "made {} (a FAT volume of {}) for store {}",
                    generate::relative(&disk, &config.dir),
                    directory.display(),
                    d.name
                );
            }
        } else if let (Some(interface), config::Kind::KvRo { directory, .. }) = (opts.tar(&d.name, &d.kind), &d.kind) {
            let disk = tar_image(&config.dir.join(directory), &dist.join(format!("{interface}.img")))?;
            println!(
                "made {} (a tar archive of {}) for store {}",
                generate::relative(&disk, &config.dir),
                directory.display(),
                d.name
            );
        }
    }
    Ok(image)
}

/// `line` without ANSI colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one letter.
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes the tar archive of `dir` to `out`: the disk image of a
/// `--kv-ro=tar` store, whole 512-byte sectors.
fn tar_image(dir: &Path, out: &Path) -> Result<PathBuf, Failure> {
    let read =
        |e: std::io::Error| Failure::new(format!("reading {}: {e}", dir.display()), "check the store's directory");
    let mut files = Vec::new();
    for (key, path) in mirage_kv::crunch::files(dir).map_err(read)? {
        let meta = std::fs::metadata(&path).map_err(read)?;
        let mtime =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        files.push((key, std::fs::read(&path).map_err(read)?, mtime));
    }
    let archive = mirage_kv::tar::write_archive(files.iter().map(|(p, d, m)| (p.as_str(), d.as_slice(), *m)), 512);
    // Replace, not overwrite in place: a running unikernel keeps its disk.
    let _ = std::fs::remove_file(out);
    std::fs::write(out, archive)
        .map_err(|e| Failure::new(format!("{}: {e}", out.display()), "check the directory's permissions"))?;
    Ok(out.to_path_buf())
}

fn build(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("build", argv, &["target=", "help"])?;
    if help(&args, BUILD_HELP) {
        return Ok(());
    }
    let config = load(dir)?;
    let target = args.value("target").map(parse_target).transpose()?;
    let opts = load_state(&config, target)?;
    let image = build_image(&config, &opts)?;
    let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    println!("built dist/{} ({} KiB)", opts.target.image(&config.name), size.div_ceil(1024));
    Ok(())
}

const CLEAN_HELP: &str = "\
usage: mirage clean

Removes the wiring (mirage/) and what mirage build made in dist/: the
images and the tar archives of kv-ro directories. Data stays: the disk
images of block devices, kv-rw stores and FAT stores (store = \"fat\") and
the directories of kv-rw stores are never removed (delete them yourself when you mean to). The shared build cache
(see `mirage build --help`) stays too.";

/// What `mirage clean` may remove from dist/: what `mirage build` makes
/// from sources, never a device's data.
fn built_files(config: &Config) -> Vec<String> {
    let mut files: Vec<String> =
        [Target::Unix, Target::Hvt, Target::Spt, Target::Virtio].iter().map(|t| t.image(&config.name)).collect();
    // The debug files gdb reads beside the Solo5 images.
    files.extend([Target::Hvt, Target::Spt, Target::Virtio].iter().map(|t| format!("{}.debug", t.image(&config.name))));
    // The bootable ISO of mirage package --iso.
    files.push(format!("{}.iso", config.name));
    let data: Vec<&str> = config
        .devices
        .iter()
        .filter_map(|d| match &d.kind {
            config::Kind::Block { interface, .. } => Some(interface.as_str()),
            config::Kind::KvRw { block: Some(b) } => Some(b.interface.as_str()),
            // A FAT image is data: the user may have prepared or changed it.
            config::Kind::KvRo { tar: Some(i), fat: true, .. } => Some(i.as_str()),
            _ => None,
        })
        .collect();
    for d in &config.devices {
        if let config::Kind::KvRo { tar, .. } = &d.kind {
            // The block device a tar store would be on, with or without
            // --kv-ro=tar.
            let interface = tar.clone().unwrap_or_else(|| d.name.clone());
            if !data.contains(&interface.as_str()) {
                files.push(format!("{interface}.img"));
            }
        }
    }
    files
}

fn clean(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("clean", argv, &["help"])?;
    if help(&args, CLEAN_HELP) {
        return Ok(());
    }
    let config = load(dir)?;
    let perm = |p: &Path, e: std::io::Error| {
        Failure::new(format!("{}: {e}", p.display()), "check the directory's permissions")
    };
    let wiring = config.dir.join("mirage");
    if wiring.exists() {
        std::fs::remove_dir_all(&wiring).map_err(|e| perm(&wiring, e))?;
        println!("removed mirage/");
    }
    let dist = config.dir.join("dist");
    for f in built_files(&config) {
        let p = dist.join(&f);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| perm(&p, e))?;
            println!("removed dist/{f}");
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dist) {
        let mut kept: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        kept.sort();
        if kept.is_empty() {
            std::fs::remove_dir(&dist).map_err(|e| perm(&dist, e))?;
            println!("removed dist/");
        } else {
            println!("kept dist/{} (data, which mirage clean never removes)", kept.join(", dist/"));
        }
    }
    Ok(())
}

const QUERY_HELP: &str = "\
usage: mirage query [-t TARGET] [name|target|files|manifest|packages]

  name       the unikernel's name
  target     the target configured last
  files      the generated files and the image
  manifest   the Solo5 manifest (JSON, as solo5-elftool gen-manifest reads)
  packages   the crates the wiring depends on
Without a question, all of them.";

fn query(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("query", argv, &["target=", "help"])?;
    if help(&args, QUERY_HELP) {
        return Ok(());
    }
    let config = load(dir)?;
    let target = args.value("target").map(parse_target).transpose()?;
    let what = args.positional.first().map(String::as_str);
    let opts = || load_state(&config, target);
    // The manifest follows the configuration (a tar store is a block
    // device); before any configure, that of the defaults.
    let manifest = || {
        let opts = opts().unwrap_or(Options {
            target: Target::Hvt,
            net: UnixNet::Direct,
            dhcp: true,
            kv_tar: false,
            kv_fat: false,
        });
        generate::manifest_json(&config, &opts)
    };
    let files = |opts: &Options| -> Vec<String> {
        let gen_dir = generate::relative(&generate::dir(&config, opts.target), &config.dir);
        let mut f: Vec<String> = generate::files(&config, opts, &Libraries::Path("/crates".into()))
            .iter()
            .map(|f| format!("{gen_dir}/{}", f.path))
            .collect();
        f.push(format!("dist/{}", opts.target.image(&config.name)));
        f
    };
    let packages = |opts: &Options| -> Vec<String> {
        let toml = generate::files(&config, opts, &Libraries::Path("/crates".into()))
            .into_iter()
            .find(|f| f.path == "Cargo.toml")
            .map(|f| f.text)
            .unwrap_or_default();
        toml.lines()
            .skip_while(|l| *l != "[dependencies]")
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter_map(|l| l.split_once(" = ").map(|(n, _)| n.to_string()))
            .collect()
    };
    match what {
        Some("name") => println!("{}", config.name),
        Some("target") => println!("{}", opts()?.target.name()),
        Some("files") => println!("{}", files(&opts()?).join("\n")),
        Some("manifest") => println!("{}", manifest()),
        Some("packages") => println!("{}", packages(&opts()?).join("\n")),
        None => {
            println!("name: {}", config.name);
            match opts() {
                Ok(o) => {
                    println!("target: {} ({})", o.target.name(), o.command());
                    println!("files:\n  {}", files(&o).join("\n  "));
                    println!("packages: {}", packages(&o).join(", "));
                }
                Err(_) => println!("target: not configured"),
            }
            println!("manifest: {}", manifest().replace('\n', " ").split_whitespace().collect::<Vec<_>>().join(" "));
        }
        Some(other) => {
            return Err(Failure::usage(
                format!("query: unknown question {other:?}"),
                "ask name, target, files, manifest or packages",
            ));
        }
    }
    Ok(())
}

const DESCRIBE_HELP: &str = "\
usage: mirage describe [-t TARGET] [--dot] [--svg=FILE]

Prints the device graph of the configured unikernel: what start is given,
and what implements each device on the target.

  --dot        print it as Graphviz DOT instead
  --svg=FILE   render it to FILE with Graphviz's dot";

fn describe(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("describe", argv, &["target=", "dot", "svg=", "help"])?;
    if help(&args, DESCRIBE_HELP) {
        return Ok(());
    }
    let config = load(dir)?;
    let target = args.value("target").map(parse_target).transpose()?;
    let opts = load_state(&config, target)?;
    let dot = describe::dot(&config, &opts);
    if let Some(svg) = args.value("svg") {
        let mut child =
            Command::new("dot").args(["-Tsvg", "-o", svg]).stdin(std::process::Stdio::piped()).spawn().map_err(
                |e| {
                    Failure::new(
                        format!("cannot run Graphviz's dot: {e}"),
                        "install Graphviz (apt-get install graphviz), or use --dot",
                    )
                },
            )?;
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(dot.as_bytes());
        }
        let status = child.wait().map_err(|e| Failure::new(format!("dot: {e}"), "use --dot and render it yourself"))?;
        if !status.success() {
            return Err(Failure::new("dot failed to render the graph", "use --dot and check its output"));
        }
        println!("wrote {svg}");
    } else if args.flag("dot") {
        print!("{dot}");
    } else {
        print!("{}", describe::text(&config, &opts));
    }
    Ok(())
}

const NEW_HELP: &str = "\
usage: mirage new NAME [--with=stack,http,kv-ro,kv-rw,block,random,wall-clock]

Creates the directory NAME with a unikernel crate: Cargo.toml, mirage.toml
and src/lib.rs, a hello world generic over a console and a clock, with the
devices of --with, each used in a few lines: a stack (its address), http
(htdocs/ served over a stack), kv-ro (htdocs/), kv-rw (a count of boots),
block, random, wall-clock. Cargo.toml depends on the libraries the code
uses, from the mirage-rs checkout this tool comes from, and names the
others, commented out, in the same form. Then:
  cd NAME && mirage configure -t hvt && mirage build && mirage run";

fn new(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("new", argv, &["with=", "help"])?;
    if help(&args, NEW_HELP) {
        return Ok(());
    }
    let name = match args.positional.as_slice() {
        [n] => n.clone(),
        [] => return Err(Failure::usage("new: no name given", "write mirage new NAME")),
        _ => return Err(Failure::usage("new: one name at a time", "write mirage new NAME")),
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(Failure::usage(
            format!("new: {name:?} is not a usable crate name"),
            "use lowercase letters, digits, - and _, starting with a letter",
        ));
    }
    let with: Vec<&str> =
        args.value("with").map(|w| w.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default();
    let template = Template::with(&with).map_err(|unknown| {
        Failure::usage(
            format!("new: --with={unknown}: nothing of that name"),
            format!("choose among {}", template::ADDITIONS.join(", ")),
        )
    })?;
    let root = dir.join(&name);
    if root.exists() {
        return Err(Failure::new(format!("{} exists already", root.display()), "choose another name, or remove it"));
    }
    let crates = crates_dir()?;
    let perm = |p: &Path, e: std::io::Error| {
        Failure::new(format!("{}: {e}", p.display()), "check the directory's permissions")
    };
    std::fs::create_dir_all(root.join("src")).map_err(|e| perm(&root, e))?;
    let abs = root.canonicalize().map_err(|e| perm(&root, e))?;
    let files = template::files(&name, &template, &Libraries::Path(crates), &abs, &reference());
    for (path, text) in &files {
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| perm(parent, e))?;
        }
        std::fs::write(&p, text).map_err(|e| perm(&p, e))?;
    }
    let made: Vec<&str> = files.iter().map(|(p, _)| *p).filter(|p| !p.starts_with('.')).collect();
    println!("created {name}/ ({})", made.join(", "));
    println!("next: cd {name} && mirage configure -t hvt && mirage build && mirage run");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `--help` text.
    fn helps() -> [(&'static str, &'static str); 11] {
        [
            ("mirage", USAGE),
            ("configure", CONFIGURE_HELP),
            ("build", BUILD_HELP),
            ("run", run::RUN_HELP),
            ("package", package::PACKAGE_HELP),
            ("clean", CLEAN_HELP),
            ("query", QUERY_HELP),
            ("describe", DESCRIBE_HELP),
            ("new", NEW_HELP),
            ("kv", kv::KV_HELP),
            ("install-runtime", install::INSTALL_HELP),
        ]
    }

    #[test]
    fn clean_keeps_the_image_of_a_kv_rw_store() {
        let text = "[unikernel]\nname = \"d\"\nstart = \"d::start\"\narguments = [\"kv\", \"ro\"]\n[devices]\n\
                    kv = { kind = \"kv-rw\", store = \"block\", interface = \"data\" }\n\
                    ro = { kind = \"kv-ro\", directory = \".\", store = \"tar\" }\n";
        let c = config::parse(Path::new("mirage.toml"), text, Path::new("."), "d".into()).unwrap();
        let files = built_files(&c);
        assert!(files.contains(&"ro.img".to_string()), "{files:?}");
        assert!(!files.iter().any(|f| f == "data.img"), "{files:?}");
        // FAT images, read-only or read-write, are data too.
        let text = "[unikernel]\nname = \"d\"\nstart = \"d::start\"\narguments = [\"kv\", \"ro\"]\n[devices]\n\
                    kv = { kind = \"kv-rw\", store = \"fat\", interface = \"data\" }\n\
                    ro = { kind = \"kv-ro\", directory = \".\", store = \"fat\" }\n";
        let c = config::parse(Path::new("mirage.toml"), text, Path::new("."), "d".into()).unwrap();
        let files = built_files(&c);
        assert!(!files.iter().any(|f| f == "data.img" || f == "ro.img"), "{files:?}");
    }

    #[test]
    fn help_sentences_are_not_broken_early() {
        // Prose lines (not indented, not the usage) fill the width: a
        // short one with more prose after it is a line break inside a
        // sentence.
        let mut short = Vec::new();
        for (command, text) in helps() {
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.windows(2) {
                let prose = |l: &str| !l.is_empty() && !l.starts_with(' ') && !l.starts_with("usage:");
                if prose(pair[0]) && prose(pair[1]) && pair[0].len() < 50 {
                    short.push(format!("{command}: {:?} is followed by {:?}", pair[0], pair[1]));
                }
            }
        }
        assert!(short.is_empty(), "{}", short.join("\n"));
    }
}
