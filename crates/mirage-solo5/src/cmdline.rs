//! The bindings' own command-line options.
//!
//! As in Solo5, the command line may hold `--solo5:quiet`, `--solo5:error`,
//! `--solo5:warn`, `--solo5:info` or `--solo5:debug`, which set the level
//! of the messages the bindings print; they are removed before the
//! application sees the rest. Unlike Solo5's bindings, which read them only
//! at the start, they are taken anywhere on the command line, as words
//! (a quoted word or part of one is the application's), so that
//! `mirage run -- ARGS --solo5:debug` works; the last one wins. `quiet`
//! and `error` both leave only errors (so `--solo5:quiet` prints nothing
//! containing "Solo5:" unless the guest fails).

use alloc::borrow::Cow;
use alloc::string::String;

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

/// The option as `--help` lists it, and its line of documentation.
pub const HELP: (&str, &str) = (
    "--solo5:LEVEL",
    "The Solo5 bindings' messages: quiet, error, warn, info (the default) or debug (with the count of exits to the host); anywhere on the command line.",
);

/// The level an option word sets, if it is one.
fn option(word: &str) -> Option<Level> {
    Some(match word {
        "--solo5:quiet" | "--solo5:error" => Level::Error,
        "--solo5:warn" => Level::Warn,
        "--solo5:info" => Level::Info,
        "--solo5:debug" => Level::Debug,
        _ => return None,
    })
}

/// The words of `cmdline` as byte ranges of its text, split as
/// `mirage_runtime::args::split_cmdline` splits them (blanks separate,
/// quotes group, a backslash escapes); an unterminated quote runs to the
/// end (the application's splitting reports it).
fn words(cmdline: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    // Blanks are what `split_cmdline` takes them to be, `char::is_whitespace`
    // (a vertical tab or a no-break space too), so that an option is a word
    // here exactly where it is a word there.
    let mut chars = cmdline.char_indices().peekable();
    core::iter::from_fn(move || {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let &(start, _) = chars.peek()?;
        let mut quote = None;
        while let Some(&(_, c)) = chars.peek() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                // The escaped character, whatever it is, belongs to the word.
                (None, '\\') | (Some('"'), '\\') => {
                    chars.next();
                }
                (None, q @ ('\'' | '"')) => quote = Some(q),
                (Some(q), c) if c == q => quote = None,
                _ => {}
            }
            chars.next();
        }
        let end = chars.peek().map_or(cmdline.len(), |&(i, _)| i);
        Some((start, end))
    })
}

/// The level the options in `cmdline` set (the last one wins; `Info`
/// without any).
pub fn level(cmdline: &str) -> Level {
    words(cmdline).filter_map(|(s, e)| option(&cmdline[s..e])).last().unwrap_or(Level::Info)
}

/// `cmdline` without the options, each taken with the blanks before it;
/// borrowed when none stands after the application's first word.
pub fn strip(cmdline: &str) -> Cow<'_, str> {
    // The text before `copied` is dealt with: copied to `kept`, or dropped.
    let mut kept: Option<String> = None;
    let mut copied = 0;
    let mut last_kept = None;
    for (s, e) in words(cmdline) {
        if option(&cmdline[s..e]).is_none() {
            last_kept = Some(e);
            continue;
        }
        match last_kept {
            // Leading options: the application's text starts after them.
            None => copied = e,
            // The option goes with the blanks before it: keep the text up
            // to the end of the last word kept (or of what was copied
            // already, when options follow each other).
            Some(end) => {
                let from = end.max(copied);
                kept.get_or_insert_with(String::new).push_str(&cmdline[copied..from]);
                copied = e;
            }
        }
    }
    match kept {
        None => Cow::Borrowed(cmdline[copied..].trim_start()),
        Some(mut out) => {
            out.push_str(&cmdline[copied..]);
            Cow::Owned(String::from(out.trim_start()))
        }
    }
}

/// The level and the command line without the options.
pub fn parse(cmdline: &str) -> (Level, Cow<'_, str>) {
    (level(cmdline), strip(cmdline))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> (Level, String) {
        let (l, rest) = parse(s);
        (l, rest.into_owned())
    }

    #[test]
    fn options_following_each_other_after_a_word_are_stripped() {
        // Found by fuzzing: the second option sliced backwards.
        assert_eq!(p("a --solo5:quiet --solo5:debug b"), (Level::Debug, "a b".into()));
        assert_eq!(p("a\t--solo5:quiet --solo5:debug"), (Level::Debug, "a".into()));
        assert_eq!(p("--solo5:quiet a --solo5:quiet --solo5:debug b --solo5:quiet c"), (Level::Error, "a b c".into()));
    }

    #[test]
    fn blanks_are_the_applications_blanks() {
        // Found by fuzzing: a vertical tab (and any Unicode blank) separates
        // words for `split_cmdline`, so it must here too.
        assert_eq!(p("\x0b--solo5:quiet --solo5x=1"), (Level::Error, "--solo5x=1".into()));
        assert_eq!(p("a\u{a0}--solo5:debug\u{2003}b"), (Level::Debug, "a\u{2003}b".into()));
        assert_eq!(p("\u{3000}--solo5:warn"), (Level::Warn, "".into()));
        // A multi-byte character escaped stays whole.
        assert_eq!(p("\\\u{e9}--solo5:quiet"), (Level::Info, "\\\u{e9}--solo5:quiet".into()));
    }

    #[test]
    fn options_are_stripped() {
        assert_eq!(p(""), (Level::Info, "".into()));
        assert_eq!(p("--solo5:quiet"), (Level::Error, "".into()));
        assert_eq!(p("--solo5:debug --solo5:warn  Hello_Solo5 x"), (Level::Warn, "Hello_Solo5 x".into()));
        assert_eq!(p("--solo5:quietly"), (Level::Info, "--solo5:quietly".into()));
    }

    #[test]
    fn options_are_taken_anywhere() {
        assert_eq!(p("a --solo5:quiet"), (Level::Error, "a".into()));
        assert_eq!(p("--hello=x --solo5:debug --port=80"), (Level::Debug, "--hello=x --port=80".into()));
        assert_eq!(p("--solo5:warn a  --solo5:debug\tb --solo5:info"), (Level::Info, "a\tb".into()));
        // Borrowed when the options all lead.
        assert!(matches!(strip("--solo5:quiet --a=1"), Cow::Borrowed("--a=1")));
    }

    #[test]
    fn quoted_words_are_the_applications() {
        assert_eq!(p("'--hello=a --solo5:debug' b"), (Level::Info, "'--hello=a --solo5:debug' b".into()));
        assert_eq!(p("--hello=\"x --solo5:quiet\""), (Level::Info, "--hello=\"x --solo5:quiet\"".into()));
        assert_eq!(p("a\\ --solo5:quiet"), (Level::Info, "a\\ --solo5:quiet".into()));
        assert_eq!(p("'unterminated --solo5:quiet"), (Level::Info, "'unterminated --solo5:quiet".into()));
    }
}
