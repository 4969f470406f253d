//! `mirage-runc`: an OCI runtime with runc's command line, for containerd's
//! runc shim (`io.containerd.runc.v2` with `BinaryName` set to it), that
//! boots mirage-rs unikernels on solo5-hvt or solo5-spt inside the
//! container's network namespace. A bundle that describes no unikernel is
//! handed to runc, when runc is installed.
//!
//! ```text
//! mirage-runc [--root DIR] [--log FILE] [--log-format text|json] [--systemd-cgroup] COMMAND
//!   create --bundle DIR [--pid-file FILE] [--console-socket SOCKET] ID
//!   start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID | ps ID | features
//! ```
//!
//! What the shim expects, and how it is met (containerd's
//! `pkg/process` and go-runc): `create` returns once the container's
//! process exists and waits, its pid in the pid file; that process, whose
//! standard streams are those `create` was given, is left to the shim
//! (a child subreaper), which reaps it and reports its exit status. Here
//! it is `mirage-runc` itself (`init`), waiting on a FIFO until `start`
//! opens it, then exec'ing the tender. Errors are one JSON line
//! (`level`, `msg`, `time`) in the `--log` file, which the shim reads to
//! tell the user why, and on standard error.

mod cgroup;
mod container;
mod net;

use std::ffi::OsString;
use std::path::PathBuf;

/// A failure: one line of cause, one of fix.
#[derive(Debug)]
pub struct Failure {
    pub cause: String,
    pub fix: String,
}

impl Failure {
    pub fn new(cause: impl Into<String>, fix: impl Into<String>) -> Failure {
        Failure { cause: cause.into(), fix: fix.into() }
    }

    fn message(&self) -> String {
        if self.fix.is_empty() { self.cause.clone() } else { format!("{} (fix: {})", self.cause, self.fix) }
    }
}

/// The global options, as runc takes them.
#[derive(Debug, Default)]
pub struct Global {
    pub root: PathBuf,
    pub log: Option<PathBuf>,
    pub json_log: bool,
    pub systemd_cgroup: bool,
}

const USAGE: &str = "\
usage: mirage-runc [--root DIR] [--log FILE] [--log-format text|json] [--systemd-cgroup] COMMAND [OPTIONS] ID

An OCI runtime with runc's command line that boots mirage-rs unikernels
(images made by `mirage package --oci`) on solo5-hvt or solo5-spt, in the
container's network namespace. containerd runs it through its runc shim:
ctr run --runtime io.containerd.runc.v2 --runc-binary /usr/local/bin/mirage-runc ...
A bundle that is no unikernel is handed to runc.

commands:
  create --bundle DIR [--pid-file FILE] [--console-socket SOCKET] ID
  start ID
  state ID
  kill [--all] ID [SIGNAL]
  delete [--force] ID
  ps [--format json] ID
  features";

fn main() {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    // The container's process, before it becomes the tender.
    if argv.first().is_some_and(|a| a == container::INIT) {
        container::init(&argv[1..]);
    }
    let mut global = Global { root: PathBuf::from("/run/mirage-runc"), ..Global::default() };
    match real_main(&argv, &mut global) {
        Ok(()) => {}
        Err(f) => {
            log_error(&global, &f.message());
            std::process::exit(1);
        }
    }
}

/// Writes `msg` to standard error and, as runc does, to the log file.
fn log_error(global: &Global, msg: &str) {
    eprintln!("mirage-runc: {msg}");
    let Some(path) = &global.log else { return };
    let time = rfc3339(std::time::SystemTime::now());
    let line = if global.json_log {
        format!("{}\n", serde_json::json!({ "level": "error", "msg": msg, "time": time }))
    } else {
        format!("time=\"{time}\" level=error msg={:?}\n", msg)
    };
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// `t` as RFC 3339 in UTC, with nanoseconds (what Go's time parses).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Options of one command: flags, `--key value` or `--key=value`, and
/// positional arguments.
struct Args {
    values: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

impl Args {
    /// `known`: option names (without dashes), a trailing `=` for those
    /// taking a value; short names are given as aliases `(short, long)`.
    fn parse(argv: &[String], known: &[&str], short: &[(&str, &str)]) -> Result<Args, Failure> {
        let mut a = Args { values: Vec::new(), positional: Vec::new() };
        let mut i = 0;
        while i < argv.len() {
            let arg = &argv[i];
            i += 1;
            let Some(opt) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|o| !o.is_empty()) else {
                a.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (opt, None),
            };
            let name = short.iter().find(|(s, _)| *s == name).map_or(name, |(_, l)| l);
            let takes = known.contains(&format!("{name}=").as_str());
            if !takes && !known.contains(&name) {
                return Err(Failure::new(format!("unknown option {arg}"), "see mirage-runc --help"));
            }
            let value = if takes {
                match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = argv.get(i).cloned().ok_or_else(|| {
                            Failure::new(format!("{arg} needs a value"), format!("write {arg} VALUE"))
                        })?;
                        i += 1;
                        Some(v)
                    }
                }
            } else {
                inline
            };
            a.values.push((name.to_string(), value));
        }
        Ok(a)
    }

    fn flag(&self, name: &str) -> bool {
        self.values.iter().any(|(n, v)| n == name && v.as_deref() != Some("false"))
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    fn id(&self) -> Result<&str, Failure> {
        let id = self.positional.first().map(String::as_str).ok_or_else(|| {
            Failure::new("no container ID given", "write the container's ID after the command's options")
        })?;
        container::check_id(id)?;
        Ok(id)
    }
}

fn real_main(argv: &[OsString], global: &mut Global) -> Result<(), Failure> {
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.to_str().map(String::from))
        .collect::<Option<_>>()
        .ok_or_else(|| Failure::new("an argument is not UTF-8", "give paths and IDs in UTF-8"))?;
    // Global options come before the command.
    let command_at = {
        let mut i = 0;
        loop {
            match argv.get(i).map(String::as_str) {
                Some("--root" | "--log" | "--log-format" | "--criu") => i += 2,
                Some(a) if a.starts_with('-') => i += 1,
                _ => break i,
            }
        }
    };
    let globals = Args::parse(
        &argv[..command_at.min(argv.len())],
        &["root=", "log=", "log-format=", "criu=", "rootless=", "debug", "systemd-cgroup", "help", "version"],
        &[("h", "help"), ("v", "version")],
    )?;
    if let Some(r) = globals.value("root") {
        global.root = PathBuf::from(r);
    }
    global.log = globals.value("log").map(PathBuf::from);
    global.json_log = globals.value("log-format") == Some("json");
    global.systemd_cgroup = globals.flag("systemd-cgroup");
    if globals.flag("version") {
        println!("mirage-runc version {}\nspec: 1.0.2", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let Some(command) = argv.get(command_at) else {
        println!("{USAGE}");
        return Ok(());
    };
    if globals.flag("help") || command == "help" {
        println!("{USAGE}");
        return Ok(());
    }
    let rest = &argv[command_at + 1..];
    match command.as_str() {
        "create" => {
            let a = Args::parse(
                rest,
                &[
                    "bundle=",
                    "pid-file=",
                    "console-socket=",
                    "pidfd-socket=",
                    "no-pivot",
                    "no-new-keyring",
                    "preserve-fds=",
                    "detach",
                ],
                &[("b", "bundle"), ("d", "detach")],
            )?;
            if a.value("preserve-fds").is_some_and(|n| n != "0") {
                return Err(Failure::new(
                    "--preserve-fds: a unikernel takes no extra descriptors",
                    "drop --preserve-fds",
                ));
            }
            if a.value("pidfd-socket").is_some() {
                return Err(Failure::new("--pidfd-socket is not supported", "use --pid-file"));
            }
            let bundle = PathBuf::from(a.value("bundle").unwrap_or("."));
            let options = container::CreateOptions {
                bundle,
                pid_file: a.value("pid-file").map(PathBuf::from),
                console_socket: a.value("console-socket").map(PathBuf::from),
            };
            container::create(global, a.id()?, &options)
        }
        "start" => container::start(global, Args::parse(rest, &[], &[])?.id()?),
        "state" => container::state(global, Args::parse(rest, &[], &[])?.id()?),
        "kill" => {
            let a = Args::parse(rest, &["all"], &[("a", "all")])?;
            let signal = a.positional.get(1).map_or("SIGTERM", String::as_str);
            container::kill(global, a.id()?, signal)
        }
        "delete" => {
            let a = Args::parse(rest, &["force"], &[("f", "force")])?;
            container::delete(global, a.id()?, a.flag("force"))
        }
        "ps" => {
            let a = Args::parse(rest, &["format="], &[("f", "format")])?;
            container::ps(global, a.id()?, a.value("format").unwrap_or("table"))
        }
        "features" => {
            container::features();
            Ok(())
        }
        other => {
            // Anything else of runc's (exec, pause, update, checkpoint, ...)
            // is runc's for its containers; a unikernel has no such thing.
            let id = rest.iter().rev().find(|a| !a.starts_with('-'));
            match id {
                Some(id) if container::is_ours(global, id) => Err(Failure::new(
                    format!("{other} is not supported for unikernel containers"),
                    "a unikernel container supports create, start, state, kill, delete and ps",
                )),
                _ => container::delegate(global, &format!("`{other}`")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_780_000_000, 5);
        assert_eq!(super::rfc3339(t), "2026-05-28T20:26:40.000000005Z");
        assert_eq!(super::rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(super::rfc3339(leap), "2000-02-29T00:00:00.000000000Z");
    }
}
