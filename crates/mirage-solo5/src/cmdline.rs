//! The bindings' own command-line options.
//!
//! As in Solo5, the command line may begin with `--solo5:quiet`,
//! `--solo5:error`, `--solo5:warn`, `--solo5:info` or `--solo5:debug`, which
//! set the level of the messages the bindings print; they are removed before
//! the application sees the rest. `quiet` and `error` both leave only errors
//! (so `--solo5:quiet` prints nothing containing "Solo5:" unless the guest
//! fails).

/// Levels of the bindings' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Failures only.
    Error = 0,
    /// Warnings.
    Warn = 1,
    /// Boot banner, memory map, exit (the default).
    Info = 2,
    /// Details.
    Debug = 3,
}

/// Strips the leading `--solo5:` options; returns the level they set (or
/// `Info`) and the rest of the command line.
pub fn parse(cmdline: &str) -> (Level, &str) {
    let mut level = Level::Info;
    let mut rest = cmdline.trim_start();
    loop {
        let word_end = rest.find(|c: char| c.is_ascii_whitespace()).unwrap_or(rest.len());
        let new = match &rest[..word_end] {
            "--solo5:quiet" | "--solo5:error" => Level::Error,
            "--solo5:warn" => Level::Warn,
            "--solo5:info" => Level::Info,
            "--solo5:debug" => Level::Debug,
            _ => return (level, rest),
        };
        level = new;
        rest = rest[word_end..].trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_stripped() {
        assert_eq!(parse(""), (Level::Info, ""));
        assert_eq!(parse("--solo5:quiet"), (Level::Error, ""));
        assert_eq!(parse("--solo5:debug --solo5:warn  Hello_Solo5 x"), (Level::Warn, "Hello_Solo5 x"));
        assert_eq!(parse("a --solo5:quiet"), (Level::Info, "a --solo5:quiet"));
        assert_eq!(parse("--solo5:quietly"), (Level::Info, "--solo5:quietly"));
    }
}
