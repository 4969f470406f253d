//! The end-to-end test runner shared by the test crates: each test says
//! what it needs from the machine, and a test the machine cannot run is
//! reported as SKIPPED with the reason and counted as ignored in the
//! summary; it never passes silently.

use libtest_mimic::{Arguments, Failed, Trial};

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Runs anywhere.
    Nothing,
    /// Boots guests on this target (`hvt` needs /dev/kvm).
    Target(&'static str),
    /// As `Target`, plus network namespaces and tap devices.
    Net(&'static str),
    /// A program on PATH (`dot`), with the Debian package that has it.
    Program { name: &'static str, package: &'static str },
    /// As `Net`, plus a program on PATH, with its Debian package.
    NetProgram { target: &'static str, name: &'static str, package: &'static str },
    /// As `Net`, plus programs on PATH, each with its Debian package.
    NetPrograms(&'static str, &'static [(&'static str, &'static str)]),
    /// Solo5 v0.12.1's own test programs, built ([`crate::solo5_tests`]).
    Solo5Tests,
    /// Everything in the list.
    All(&'static [Needs]),
}

impl Needs {
    /// Why this machine cannot meet the need, if it cannot.
    pub fn missing(&self) -> Option<String> {
        match *self {
            Needs::Nothing => None,
            Needs::Target(t) => crate::missing(t),
            Needs::Net(t) => crate::missing(t).or_else(crate::missing_net),
            Needs::Program { name, package } => crate::missing_program(name, package),
            Needs::NetProgram { target, name, package } => {
                crate::missing(target).or_else(crate::missing_net).or_else(|| crate::missing_program(name, package))
            }
            Needs::NetPrograms(t, programs) => crate::missing(t)
                .or_else(crate::missing_net)
                .or_else(|| programs.iter().find_map(|(name, package)| crate::missing_program(name, package))),
            Needs::Solo5Tests => crate::solo5_tests().err(),
            Needs::All(all) => all.iter().find_map(Needs::missing),
        }
    }
}

/// One end-to-end test.
pub struct Case {
    /// The test's name, as filters match it.
    pub name: String,
    /// What it needs from the machine.
    pub needs: Needs,
    /// The test itself.
    pub run: Box<dyn FnOnce() -> crate::TestResult + Send + std::panic::UnwindSafe>,
    /// Whether it runs with no other test of the binary beside it. For the
    /// tests that measure how a server serves a good client while one host
    /// floods it: run beside another test's builds and guests on a
    /// two-core machine, they would measure that test as much as the
    /// server.
    pub alone: bool,
}

/// Tests that run alone hold it for writing, every other test for reading.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).field("needs", &self.needs).finish()
    }
}

/// A test named `name` that needs `needs`.
pub fn case(
    name: impl Into<String>,
    needs: Needs,
    run: impl FnOnce() -> crate::TestResult + Send + std::panic::UnwindSafe + 'static,
) -> Case {
    Case { name: name.into(), needs, run: Box::new(run), alone: false }
}

/// Runs `cases` with libtest's command line and summary, and exits.
pub fn run(cases: Vec<Case>) -> ! {
    let args = Arguments::from_args();
    let mut skipped = Vec::new();
    let trials = cases
        .into_iter()
        .map(|c| {
            let why = c.needs.missing();
            match why {
                Some(reason) => {
                    skipped.push(format!("SKIPPED {}: {reason}", c.name));
                    Trial::test(c.name, || Ok(())).with_ignored_flag(true)
                }
                None => {
                    let (run, alone) = (c.run, c.alone);
                    Trial::test(c.name, move || {
                        // A failed test poisons the lock; the next ones run
                        // all the same.
                        let _machine = if alone {
                            Ok(MACHINE.write().unwrap_or_else(|e| e.into_inner()))
                        } else {
                            Err(MACHINE.read().unwrap_or_else(|e| e.into_inner()))
                        };
                        run().map_err(Failed::from)
                    })
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
