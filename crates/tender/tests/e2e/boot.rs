//! Booting: hello, exit statuses, faults, quiet mode, memory sizes, and
//! compute speed on both targets.

use crate::{Case, Needs, case};
use testkit::{boot, run, tender};

const TARGETS: [&str; 2] = ["hvt", "spt"];

pub fn cases(v: &mut Vec<Case>) {
    for t in TARGETS {
        let n = Needs::Target(t);
        v.push(case(format!("{t}::hello_echoes_its_command_line"), n, move || {
            let r = boot(t, &[], "hello", &["Hello_Solo5", "--and", "more"])?;
            r.expect_status(0)?;
            r.expect_stdout("Hello, World")?;
            r.expect_stdout("Command line is: 'Hello_Solo5 --and more'")?;
            r.expect_stdout(&format!("mirage-rs 0.1.0, {t})"))?;
            r.expect_stdout("Solo5: solo5_exit(0) called")
        }));
        v.push(case(format!("{t}::quiet_prints_nothing_of_solo5"), n, move || {
            let r = boot(t, &[], "hello", &["--solo5:quiet", "x"])?;
            r.expect_status(0)?;
            r.expect_stdout("Command line is: 'x'")?;
            if r.stdout.contains("Solo5:") || r.stderr.contains("Solo5:") {
                return Err(format!("--solo5:quiet printed Solo5 messages\n{}", r.dump()));
            }
            Ok(())
        }));
        for code in [0, 1, 42, 255] {
            v.push(case(format!("{t}::exit_status_{code}_propagates"), n, move || {
                boot(t, &[], "fault", &["exit", &code.to_string()])?.expect_status(code)
            }));
        }
        v.push(case(format!("{t}::panic_exits_255_with_its_message"), n, move || {
            let r = boot(t, &[], "fault", &["panic"])?;
            r.expect_status(255)?;
            r.expect_stdout("Solo5: ABORT: src/bin/fault.rs:")?;
            r.expect_stdout("deliberate panic")
        }));
        v.push(case(format!("{t}::running_out_of_memory_says_so_and_names_the_fix"), n, move || {
            // The heap guest allocates 32 MiB outright: in 16 it cannot.
            let r = boot(t, &["--mem=16"], "heap", &[])?;
            r.expect_status(255)?;
            r.expect_stdout("Solo5: ABORT: ")?;
            r.expect_stdout("Solo5: out of memory: 65536 bytes could not be had with ")?;
            r.expect_stdout("give the unikernel more memory (the tender's --mem)")
        }));
        v.push(case(format!("{t}::abort_exits_255"), n, move || {
            let r = boot(t, &[], "fault", &["abort"])?;
            r.expect_status(255)?;
            r.expect_stdout("Solo5: ABORT: solo5_abort() called")
        }));
        v.push(case(format!("{t}::floating_point_and_sse_work"), n, move || {
            let r = boot(t, &[], "fault", &["float"])?;
            r.expect_status(0)?;
            r.expect_stdout("float: 527.485 inf")
        }));
    }

    // CPU faults: on hvt the guest reports the trap and halts with 255; on
    // spt the host kernel ends the process with SIGSEGV (139), as Solo5's.
    for (what, cr2) in [("zeropage", "cr2=0x8"), ("unmapped", "cr2=0x400000000"), ("bootinfo", "cr2=0x10000")] {
        let spt_faults = what != "bootinfo"; // spt's boot information is ordinary writable memory
        v.push(case(format!("hvt::fault_{what}_is_reported"), Needs::Target("hvt"), move || {
            let r = boot("hvt", &[], "fault", &[what])?;
            r.expect_status(255)?;
            r.expect_stdout("Solo5: trap: type=#PF")?;
            r.expect_stdout(cr2)?;
            r.expect_stdout("Solo5: ABORT: Fatal trap")
        }));
        if spt_faults {
            v.push(case(format!("spt::fault_{what}_is_sigsegv"), Needs::Target("spt"), move || {
                boot("spt", &[], "fault", &[what])?.expect_status(139)
            }));
        }
    }
    for (what, name) in [("ud2", "#UD"), ("divide", "#DE"), ("int3", "#BP")] {
        v.push(case(format!("hvt::exception_{what}_is_reported"), Needs::Target("hvt"), move || {
            let r = boot("hvt", &[], "fault", &[what])?;
            r.expect_status(255)?;
            r.expect_stdout(&format!("Solo5: trap: type={name}"))
        }));
    }
    v.push(case("hvt::write_to_text_is_a_translation_fault", Needs::Target("hvt"), || {
        let r = boot("hvt", &[], "fault", &["text"])?;
        r.expect_status(1)?;
        r.expect_stderr("KVM: host/guest translation fault")
    }));
    v.push(case("spt::write_to_text_is_sigsegv", Needs::Target("spt"), || {
        boot("spt", &[], "fault", &["text"])?.expect_status(139)
    }));

    v.push(case("hvt::memory_sizes", Needs::Target("hvt"), || {
        // The smallest guest memory, one 2 MiB page, is enough for hello.
        let r = boot("hvt", &["--mem=1"], "hello", &[])?;
        r.expect_status(0)?;
        r.expect_stderr("adjusting memory to 2097152 bytes")?;
        let r = boot("hvt", &["--mem=3"], "hello", &[])?;
        r.expect_status(0)?;
        r.expect_stderr("adjusting memory to 2097152 bytes")?;
        r.expect_stdout("Memory map: 2 MB addressable")?;
        // Above 1 GiB the bindings map the rest of memory themselves.
        let r = boot("hvt", &["--mem=2048"], "hello", &[])?;
        r.expect_status(0)?;
        r.expect_stdout("Memory map: 2048 MB addressable")?;
        let r = boot("hvt", &["--mem=4098"], "hello", &[])?;
        r.expect_status(1)?;
        r.expect_stderr("exceeds the max size 4294967296 bytes")
    }));
    v.push(case("spt::memory_sizes", Needs::Target("spt"), || {
        let r = boot("spt", &["--mem=1"], "hello", &[])?;
        r.expect_status(1)?;
        r.expect_stderr("e_entry does not fall within the memory allocation range")?;
        r.expect_stderr("does not fit in --mem=1 MiB: give it more memory")?;
        let r = boot("spt", &["--mem=2"], "hello", &[])?;
        r.expect_status(0)?;
        let r = boot("spt", &["--mem=3"], "hello", &[])?;
        r.expect_status(0)?;
        r.expect_stdout("Memory map: 3 MB addressable")?;
        let r = boot("spt", &["--mem=2048"], "hello", &[])?;
        r.expect_status(0)
    }));

    for t in TARGETS {
        v.push(case(format!("{t}::the_image_cannot_be_executed_directly"), Needs::Nothing, move || {
            let g = testkit::guest(t, "hello")?;
            match std::process::Command::new(&g).output() {
                Ok(o) if o.status.success() => Err("the host ran a unikernel image as a program".into()),
                _ => Ok(()),
            }
        }));
    }

    // The same work takes about as long on hvt as on spt: on hvt the guest
    // runs at CPL 3, natively, not in the CPL-0 emulator.
    v.push(case("hvt_and_spt_compute_at_the_same_speed", Needs::Target("hvt"), || {
        let time = |t: &str| -> Result<(u64, std::time::Duration), String> {
            let r = boot(t, &[], "compute", &["--solo5:quiet", "100000000"])?;
            r.expect_status(0)?;
            let ns = r
                .stdout
                .split("iterations in ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no timing in output\n{}", r.dump()))?;
            Ok((ns, r.elapsed))
        };
        // The best of three runs each, so that another test running on the
        // other core does not decide the comparison.
        let best = |t: &str| -> Result<(u64, std::time::Duration), String> {
            let runs = [time(t)?, time(t)?, time(t)?];
            Ok((runs.iter().map(|r| r.0).min().unwrap_or(0), runs.iter().map(|r| r.1).min().unwrap_or_default()))
        };
        let (hvt, hvt_wall) = best("hvt")?;
        let (spt, spt_wall) = best("spt")?;
        let ratio = hvt as f64 / spt as f64;
        let wall_ratio = hvt_wall.as_secs_f64() / spt_wall.as_secs_f64();
        if !(1.0 / 1.5..=1.5).contains(&ratio) || wall_ratio > 1.5 {
            return Err(format!(
                "10^8 iterations: hvt {hvt} ns, spt {spt} ns (ratio {ratio:.2}); processes {hvt_wall:?} vs {spt_wall:?}"
            ));
        }
        Ok(())
    }));

    for t in TARGETS {
        let n = Needs::Target(t);
        v.push(case(format!("{t}::yield_sleeps_until_the_deadline"), n, move || {
            let r = boot(t, &[], "sleep", &["--solo5:quiet", "1000"])?;
            r.expect_status(0)?;
            r.expect_stdout("SUCCESS")?;
            // A sleep is one wait for the host, not a busy loop.
            let wakeups: u32 = r
                .stdout
                .split(" wake-ups")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no wake-up count\n{}", r.dump()))?;
            if wakeups > 3 {
                return Err(format!("a one-second sleep took {wakeups} wake-ups"));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::the_largest_manifest"), n, move || {
            let dir = testkit::Scratch::new("maxdev");
            let opts: Vec<String> = (0..63)
                .map(|i| format!("--block:storage{i}={}", dir.file(&format!("s{i}.img"), 4096).display()))
                .collect();
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            let r = boot(t, &opts, "maxdev", &["--solo5:quiet"])?;
            r.expect_status(0)?;
            r.expect_stdout("storage62: handle 63, 4096 bytes")
        }));
    }
    v.push(case("hvt::sigterm_and_sigint_end_the_tender", Needs::Target("hvt"), || {
        for (sig, name) in [(libc_sig::SIGTERM, "15"), (libc_sig::SIGINT, "2")] {
            let mut c = std::process::Command::new(tender("hvt"));
            c.arg(testkit::guest("hvt", "sleep")?).arg("60000");
            let mut g = testkit::Background::start(c)?;
            g.wait_for("Solo5: Bindings version", std::time::Duration::from_secs(10))?;
            std::thread::sleep(std::time::Duration::from_millis(100));
            libc_sig::kill(g.child.id(), sig);
            let status = g.wait(std::time::Duration::from_secs(10))?;
            if status != 1 || !g.output().contains(&format!("solo5-hvt: Exiting on signal {name}")) {
                return Err(format!("signal {name}: status {status}\n{}", g.output()));
            }
        }
        Ok(())
    }));
    for t in TARGETS {
        v.push(case(format!("{t}::the_running_tender_is_confined_by_seccomp"), Needs::Target(t), move || {
            let mut c = std::process::Command::new(tender(t));
            c.arg(testkit::guest(t, "sleep")?).arg("5000");
            let mut g = testkit::Background::start(c)?;
            g.wait_for("Solo5: Bindings version", std::time::Duration::from_secs(10))?;
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", g.child.id())).map_err(|e| e.to_string())?;
            if !status.lines().any(|l| l.starts_with("Seccomp:") && l.ends_with('2')) {
                return Err(format!("the tender runs without a seccomp filter:\n{status}"));
            }
            if !status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')) {
                return Err("no_new_privs is not set".into());
            }
            Ok(())
        }));
    }
    for t in TARGETS {
        // The guest's zeroed allocations leave memory the host never
        // backed as it is: 32 MiB of zeroed buffers, none used, cost the
        // tender almost nothing resident; and every zeroed block is zero,
        // wherever it was carved from.
        v.push(case(format!("{t}::zeroed_allocations_do_not_touch_fresh_memory"), Needs::Target(t), move || {
            let mut c = std::process::Command::new(tender(t));
            c.arg("--mem=128").arg(testkit::guest(t, "heap")?);
            let mut g = testkit::Background::start(c)?;
            g.wait_for("heap: 32 MiB allocated", std::time::Duration::from_secs(10))?;
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", g.child.id())).map_err(|e| e.to_string())?;
            let rss_kib: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| format!("no VmRSS in\n{status}"))?;
            if rss_kib > 16 * 1024 {
                return Err(format!("32 MiB of unused zeroed buffers left the tender {rss_kib} KiB resident"));
            }
            let code = g.wait(std::time::Duration::from_secs(60))?;
            if code != 0 || !g.output().contains("SUCCESS") {
                return Err(format!("status {code}\n{}", g.output()));
            }
            eprintln!("{t}: {rss_kib} KiB resident with 32 MiB of unused zeroed buffers");
            Ok(())
        }));
        v.push(case(format!("{t}::random_bytes_differ_between_boots"), Needs::Target(t), move || {
            let a = boot(t, &[], "random", &["--solo5:quiet"])?;
            let b = boot(t, &[], "random", &["--solo5:quiet"])?;
            a.expect_status(0)?;
            b.expect_status(0)?;
            let word = |r: &testkit::Run| r.stdout.lines().find_map(|l| l.strip_prefix("random: ")).map(String::from);
            let (x, y) = (word(&a).ok_or("no output")?, word(&b).ok_or("no output")?);
            if x == y || x.len() != 64 {
                return Err(format!("two boots gave {x} and {y}"));
            }
            if a.stdout.contains("no hardware random source") {
                return Err("the generator was seeded without RDSEED/RDRAND".into());
            }
            Ok(())
        }));
    }
    // --x-map-image: the guest's code comes from the image's file (shared
    // with every tender running it), its writable data does not, and the
    // guest runs as it does when copied.
    for t in TARGETS {
        v.push(case(format!("{t}::map_image_maps_the_code_from_the_file"), Needs::Target(t), move || {
            let image = testkit::guest(t, "sleep")?;
            let image_path = std::fs::canonicalize(&image).map_err(|e| e.to_string())?;
            for map in [true, false] {
                let mut c = std::process::Command::new(tender(t));
                if map {
                    c.arg("--x-map-image");
                }
                c.arg(&image).arg("3000");
                let mut g = testkit::Background::start(c)?;
                g.wait_for("Solo5: Bindings version", std::time::Duration::from_secs(10))?;
                let maps =
                    std::fs::read_to_string(format!("/proc/{}/maps", g.child.id())).map_err(|e| e.to_string())?;
                let from_file: Vec<&str> = maps
                    .lines()
                    .filter(|l| l.ends_with(&*image_path.to_string_lossy()) && !l.contains(" rw"))
                    .collect();
                // The tender's own mapping of the file is gone once the guest
                // is loaded: what is left is guest memory, the code first
                // (at offset 0x1000 in these images).
                if map && !from_file.iter().any(|l| l.split_whitespace().nth(2) == Some("00001000")) {
                    return Err(format!(
                        "with --x-map-image the guest's code is not mapped from {}:\n{maps}",
                        image_path.display()
                    ));
                }
                if !map && !from_file.is_empty() {
                    return Err(format!("without --x-map-image guest memory maps the file:\n{maps}"));
                }
                let status = g.wait(std::time::Duration::from_secs(20))?;
                if status != 0 || !g.output().contains("SUCCESS") {
                    return Err(format!("--x-map-image {map}: status {status}\n{}", g.output()));
                }
            }
            Ok(())
        }));
    }
    v.push(case("spt::sigterm_kills_the_guest", Needs::Target("spt"), || {
        let mut c = std::process::Command::new(tender("spt"));
        c.arg(testkit::guest("spt", "sleep")?).arg("60000");
        let mut g = testkit::Background::start(c)?;
        g.wait_for("Solo5: Bindings version", std::time::Duration::from_secs(10))?;
        libc_sig::kill(g.child.id(), libc_sig::SIGTERM);
        let status = g.wait(std::time::Duration::from_secs(10))?;
        if status != 128 + libc_sig::SIGTERM {
            return Err(format!("status {status} instead of 143\n{}", g.output()));
        }
        Ok(())
    }));

    v.push(case("version_and_help", Needs::Nothing, || {
        for t in TARGETS {
            let r = run(tender(t), &["--version"])?;
            r.expect_status(0)?;
            r.expect_stderr(&format!("solo5-{t} tender, version v0.12.1"))?;
            r.expect_stderr("ABI version 2")?;
            let r = run(tender(t), &["--help"])?;
            r.expect_status(1)?;
            r.expect_stderr(&format!("usage: solo5-{t} [ CORE OPTIONS ]"))?;
            r.expect_stderr("--block:NAME=PATH")?;
            r.expect_stderr("--net:NAME=IFACE")?;
        }
        Ok(())
    }));
}

/// Sending signals to a tender under test.
mod libc_sig {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;

    pub fn kill(pid: u32, sig: i32) {
        let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    }
}
