//! End-to-end tests: real unikernels on the real tenders.
//!
//! Each test builds (once) the guests in `tests/guests` for its target and
//! boots them on `solo5-hvt` (KVM) or `solo5-spt` (seccomp); the network
//! tests run the tender in a network namespace of their own with a tap
//! device, and ping it. A test this machine cannot run (no `/dev/kvm`, no
//! network namespaces) is reported as SKIPPED with the reason and counted
//! as ignored in the summary; it never passes silently.

mod block;
mod boot;
mod cli;
mod elftool;
mod examples;
mod hostile;
mod net;
mod http;
mod tcpip;
mod tool;

use libtest_mimic::{Arguments, Failed, Trial};

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    Target(&'static str),
    Net(&'static str),
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).field("needs", &self.needs).finish()
    }
}

/// One end-to-end test.
pub struct Case {
    pub name: String,
    pub needs: Needs,
    pub run: Box<dyn FnOnce() -> testkit::TestResult + Send + std::panic::UnwindSafe>,
}

pub fn case(name: impl Into<String>, needs: Needs, run: impl FnOnce() -> testkit::TestResult + Send + std::panic::UnwindSafe + 'static) -> Case {
    Case { name: name.into(), needs, run: Box::new(run) }
}

fn main() {
    let args = Arguments::from_args();
    testkit::set_tenders(
        env!("CARGO_BIN_EXE_solo5-hvt").into(),
        env!("CARGO_BIN_EXE_solo5-spt").into(),
        env!("CARGO_BIN_EXE_solo5-elftool").into(),
    );
    let mut cases = Vec::new();
    boot::cases(&mut cases);
    block::cases(&mut cases);
    hostile::cases(&mut cases);
    cli::cases(&mut cases);
    elftool::cases(&mut cases);
    examples::cases(&mut cases);
    net::cases(&mut cases);
    http::cases(&mut cases);
    tcpip::cases(&mut cases);
    tool::cases(&mut cases);

    let mut skipped = Vec::new();
    let trials = cases
        .into_iter()
        .map(|c| {
            let why = match c.needs {
                Needs::Nothing => None,
                Needs::Target(t) => testkit::missing(t),
                Needs::Net(t) => testkit::missing(t).or_else(testkit::missing_net),
            };
            match why {
                Some(reason) => {
                    skipped.push(format!("SKIPPED {}: {reason}", c.name));
                    Trial::test(c.name, || Ok(())).with_ignored_flag(true)
                }
                None => {
                    let run = c.run;
                    Trial::test(c.name, move || run().map_err(Failed::from))
                }
            }
        })
        .collect();
    for s in &skipped {
        eprintln!("*** {s}");
    }
    let mut args = args;
    if !skipped.is_empty() {
        // Skipped tests are reported as ignored; run the rest.
        args.include_ignored = false;
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if !skipped.is_empty() {
        eprintln!("*** {} end-to-end tests SKIPPED on this machine (see the reasons above)", skipped.len());
    }
    conclusion.exit()
}
