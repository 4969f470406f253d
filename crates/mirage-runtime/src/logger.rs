//! Logging through the `log` crate, with levels set at boot.
//!
//! `-l debug` sets every target's level; `-l tcpip:debug,*:info` sets one
//! target's (and its sub-targets') and the rest. The libraries log under
//! the short names of [`TARGETS`], which `--help` lists; a unikernel's own
//! messages go under its crate's name (the `log` crate's default, the
//! module path). Lines look like MirageOS's:
//!
//! ```text
//! 2026-11-25T21:50:02.118Z INF [hello] Hello World!
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The log targets of the mirage-rs libraries, and what logs under each:
/// the names `-l TARGET:LEVEL` takes. A library logs under its own name or
/// a sub-target of it (`tcpip::dhcp`), never under its module path.
pub const TARGETS: &[(&str, &str)] = &[
    ("mirage", "the runtime and the target's devices (start's error, the random source)"),
    ("tcpip", "the TCP/IP stack (DHCP, a failed interface, dropped frames)"),
    ("http", "the HTTP server (the access log, refusals, sheds)"),
];

/// Log levels per target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl Default for LogSpec {
    fn default() -> LogSpec {
        LogSpec { default: LevelFilter::Info, targets: Vec::new() }
    }
}

fn level(s: &str) -> Result<LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "quiet" | "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("expected LEVEL or TARGET:LEVEL,... with LEVEL one of quiet, error, warn, info, debug, trace".into()),
    }
}

impl LogSpec {
    /// Parses `LEVEL` or `TARGET:LEVEL,...` (`*` for every other target).
    pub fn parse(s: &str) -> Result<LogSpec, String> {
        let mut spec = LogSpec::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            match part.rsplit_once(':') {
                None => spec.default = level(part)?,
                Some(("*", l)) => spec.default = level(l)?,
                Some((t, l)) => spec.targets.push((t.to_string(), level(l)?)),
            }
        }
        Ok(spec)
    }

    /// The level for `target`: the longest matching `TARGET` (a target
    /// matches its own name and `NAME::...`), else the default.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .filter(|(t, _)| target == t || target.strip_prefix(t.as_str()).is_some_and(|r| r.starts_with("::")))
            .max_by_key(|(t, _)| t.len())
            .map(|(_, l)| *l)
            .unwrap_or(self.default)
    }

    /// The most verbose level of any target.
    pub fn max_level(&self) -> LevelFilter {
        self.targets.iter().map(|(_, l)| *l).fold(self.default, core::cmp::max)
    }
}

/// Where log lines go, and the clock for their timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Sink {
    /// Writes one complete line.
    pub write: fn(&str),
    /// Wall-clock nanoseconds since the epoch, if the target has a clock.
    pub wall: Option<fn() -> u64>,
}

struct Config {
    spec: LogSpec,
    sink: Sink,
}

static CONFIG: spin::Mutex<Option<Config>> = spin::Mutex::new(None);

struct Logger;

static LOGGER: Logger = Logger;

/// Installs the logger with `spec`, writing through `sink`. Later calls
/// replace the configuration.
pub fn init(spec: LogSpec, sink: Sink) {
    log::set_max_level(spec.max_level());
    *CONFIG.lock() = Some(Config { spec, sink });
    let _ = log::set_logger(&LOGGER);
}

fn tag(l: Level) -> &'static str {
    match l {
        Level::Error => "ERR",
        Level::Warn => "WRN",
        Level::Info => "INF",
        Level::Debug => "DBG",
        Level::Trace => "TRC",
    }
}

/// Formats `ns` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let (y, m, d) = crate::time::civil_from_days(days);
    let mut s = String::with_capacity(24);
    let _ = write!(s, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, (sod / 60) % 60, sod % 60);
    s
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        CONFIG.lock().as_ref().is_some_and(|c| m.level() <= c.spec.level_for(m.target()))
    }

    fn log(&self, r: &Record<'_>) {
        let Some((sink, enabled)) = CONFIG.lock().as_ref().map(|c| (c.sink, r.level() <= c.spec.level_for(r.target())))
        else {
            return;
        };
        if !enabled {
            return;
        }
        let mut line = String::new();
        if let Some(wall) = sink.wall {
            line += &rfc3339(wall());
            line.push(' ');
        }
        let _ = writeln!(line, "{} [{}] {}", tag(r.level()), r.target(), r.args());
        (sink.write)(&line);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_per_target() {
        let s = LogSpec::parse("tcpip:debug,tcpip::arp:error,*:warn").unwrap();
        assert_eq!(s.level_for("tcpip"), LevelFilter::Debug);
        assert_eq!(s.level_for("tcpip::tcp"), LevelFilter::Debug);
        assert_eq!(s.level_for("tcpip::arp"), LevelFilter::Error);
        assert_eq!(s.level_for("tcpipx"), LevelFilter::Warn);
        assert_eq!(s.max_level(), LevelFilter::Debug);
        assert!(LogSpec::parse("tcpip:loud").is_err());
        assert_eq!(LogSpec::parse("").unwrap(), LogSpec::default());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_107_402_118_000_000), "2025-11-25T21:50:02.118Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }
}
