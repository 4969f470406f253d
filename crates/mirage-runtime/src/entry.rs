//! What every target's entry point does: parse the boot arguments, set up
//! logging, run `start`, and turn its result into an exit status.

use alloc::format;
use alloc::string::String;

use crate::args::{Arg, ArgError, Args, parse};
use crate::logger::{self, Sink};

/// What a unikernel's `start` may return; its exit status.
pub trait Outcome {
    /// The status: 0 for success.
    fn exit_code(self) -> i32;
}

impl Outcome for () {
    fn exit_code(self) -> i32 {
        0
    }
}

impl Outcome for i32 {
    fn exit_code(self) -> i32 {
        self
    }
}

impl<T: Outcome, E: core::fmt::Display> Outcome for Result<T, E> {
    fn exit_code(self) -> i32 {
        match self {
            Ok(t) => t.exit_code(),
            Err(e) => {
                log::error!(target: "mirage", "{e}");
                1
            }
        }
    }
}

/// Parses the boot arguments `argv` of `program` against `specs` and
/// installs the logger. On `--help` or a bad argument, writes the help or
/// the error through `sink` and returns the exit status (0 or 64).
pub fn boot(program: &str, specs: &[Arg], argv: &[String], sink: Sink) -> Result<Args, i32> {
    boot_with(program, specs, argv, sink, &[])
}

/// [`boot`] for a target with options of its own (taken from the command
/// line before it reaches here), which `--help` lists as `platform` says.
pub fn boot_with(
    program: &str,
    specs: &[Arg],
    argv: &[String],
    sink: Sink,
    platform: &[(&str, &str)],
) -> Result<Args, i32> {
    match parse(program, specs, argv) {
        Ok(args) => {
            logger::init(args.logs.clone(), sink);
            Ok(args)
        }
        Err(ArgError::Help(_)) => {
            (sink.write)(&crate::args::help_with(program, specs, platform));
            Err(0)
        }
        Err(e) => {
            let msg: String = format!("{program}: {e}\n");
            (sink.write)(&msg);
            Err(e.exit_status())
        }
    }
}
