//! Debugging on hvt: core files (`--dumpcore`) that gdb reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Case, Needs, case};
use testkit::{Scratch, boot, guest, run_with, tender};

const GDB: Needs = Needs::Program { name: "gdb", package: "gdb" };
const HVT_AND_GDB: Needs = Needs::All(&[Needs::Target("hvt"), GDB]);

/// Runs gdb in batch mode on `kernel` (and `core`, if any) with `commands`;
/// its standard output and error together.
pub fn gdb(kernel: &Path, core: Option<&Path>, commands: &[&str]) -> Result<String, String> {
    let mut c = Command::new("gdb");
    c.args(["-batch", "-nx"]);
    for cmd in commands {
        c.arg("-ex").arg(cmd);
    }
    c.arg(kernel);
    if let Some(core) = core {
        c.arg(core);
    }
    let r = run_with(c, Duration::from_secs(60))?;
    Ok(format!("{}{}", r.stdout, r.stderr))
}

/// The one core file in `dir`, checked against the tender's message.
fn the_core(dir: &Path, stderr: &str) -> Result<PathBuf, String> {
    let cores: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("core.solo5-hvt.")))
        .collect();
    let [core] = cores.as_slice() else {
        return Err(format!("expected one core file in {}, found {cores:?}\n{stderr}", dir.display()));
    };
    let said = format!("dumpcore: dumping guest core to: {}", core.display());
    if !stderr.contains(&said) {
        return Err(format!("stderr lacks {said:?}:\n{stderr}"));
    }
    Ok(core.clone())
}

fn expect_all(text: &str, needles: &[&str]) -> Result<(), String> {
    for n in needles {
        if !text.contains(n) {
            return Err(format!("gdb's output lacks {n:?}:\n{text}"));
        }
    }
    Ok(())
}

/// Checks that gdb's innermost frame is in `function`.
pub fn frame0(text: &str, function: &str) -> Result<(), String> {
    match text.lines().find(|l| l.starts_with("#0 ")) {
        Some(l) if l.contains(function) => Ok(()),
        _ => Err(format!("gdb's frame #0 is not in {function}:\n{text}")),
    }
}

/// Boots `fault WHAT` with a core directory; gdb's backtrace of the core
/// must start in `top` and show `needles`.
fn fault_core(what: &'static str, top: &'static str, needles: &'static [&'static str]) -> Result<(), String> {
    let dir = Scratch::new("core");
    let r = boot("hvt", &[&format!("--dumpcore={}", dir.0.display())], "fault", &[what])?;
    r.expect_status(255)?;
    let core = the_core(&dir.0, &r.stderr)?;
    let out = gdb(&guest("hvt", "fault")?, Some(&core), &["bt"])?;
    frame0(&out, top)?;
    expect_all(&out, needles)
}

pub fn cases(v: &mut Vec<Case>) {
    v.push(case("hvt::dumpcore_of_a_page_fault_shows_the_faulting_function", HVT_AND_GDB, || {
        // The frame the CPL-3 program faulted in, not the CPL-0 stub that
        // caught the fault nor the reporter that halted.
        fault_core("zeropage", "fault::start", &["signal SIGSEGV", "mirage_solo5::target::rt::start"])
    }));
    v.push(case("hvt::dumpcore_of_a_panic_shows_the_panicking_function", HVT_AND_GDB, || {
        fault_core(
            "panic",
            "mirage_solo5::target::hvt::halt",
            &["signal SIGABRT", "panicking::panic_fmt", "in fault::start"],
        )
    }));
    v.push(case("hvt::dumpcore_of_an_abort_shows_its_caller", HVT_AND_GDB, || {
        fault_core(
            "abort",
            "mirage_solo5::target::hvt::halt",
            &["signal SIGABRT", "mirage_solo5::target::rt::abort", "in fault::start"],
        )
    }));
    v.push(case("hvt::dumpcore_of_an_invalid_opcode", HVT_AND_GDB, || {
        fault_core("ud2", "fault::start", &["signal SIGSEGV"])
    }));
    v.push(case("hvt::dumpcore_writes_nothing_for_a_clean_exit", Needs::Target("hvt"), || {
        let dir = Scratch::new("core");
        for status in ["0", "3"] {
            let r = boot("hvt", &[&format!("--dumpcore={}", dir.0.display())], "fault", &["exit", status])?;
            r.expect_status(status.parse().unwrap_or(0))?;
            if r.stderr.contains("dumpcore") {
                return Err(format!("a clean exit dumped core:\n{}", r.dump()));
            }
        }
        let left: Vec<_> = std::fs::read_dir(&dir.0).map_err(|e| e.to_string())?.collect();
        if !left.is_empty() {
            return Err(format!("files left in the core directory: {left:?}"));
        }
        Ok(())
    }));
    v.push(case("hvt::dumpcore_refuses_a_bad_directory", Needs::Target("hvt"), || {
        let r = boot("hvt", &["--dumpcore=/nonexistent/cores"], "hello", &[])?;
        r.expect_status(1)?;
        r.expect_stderr("dumpcore: cannot open dir: /nonexistent/cores")?;
        if r.stdout.contains("Hello") {
            return Err(format!("the guest ran:\n{}", r.dump()));
        }
        let file = Scratch::new("core");
        let f = file.file("plain", 0);
        let r = boot("hvt", &[&format!("--dumpcore={}", f.display())], "hello", &[])?;
        r.expect_status(1)?;
        r.expect_stderr("Not a directory")
    }));
    v.push(case(
        "hvt::solo5_test_dumpcore_core_opens_in_gdb",
        Needs::All(&[Needs::Target("hvt"), GDB, Needs::Solo5Tests]),
        || {
            let kernel = testkit::solo5_tests()?.join("test_dumpcore/test_dumpcore.hvt");
            let dir = Scratch::new("core");
            let mut c = Command::new(tender("hvt"));
            c.arg(format!("--dumpcore={}", dir.0.display())).arg(&kernel);
            let r = run_with(c, Duration::from_secs(60))?;
            r.expect_status(255)?;
            r.expect_stdout("solo5_abort() called")?;
            let core = the_core(&dir.0, &r.stderr)?;
            let out = gdb(&kernel, Some(&core), &["bt"])?;
            frame0(&out, "platform_exit")?;
            expect_all(&out, &["signal SIGABRT", "solo5_abort", "solo5_app_main", "test_dumpcore.c"])
        },
    ));
}
