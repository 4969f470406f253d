//! Debugging on hvt: core files (`--dumpcore`) that gdb reads, and the
//! GDB server (`--gdb`) driven by gdb in batch mode and by a hostile
//! client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Case, Needs, case};
use testkit::{Background, Scratch, boot, guest, run_with, tender};

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
    gdb_cases(v);
    v.push(case("hvt::dumpcore_of_a_page_fault_shows_the_faulting_function", HVT_AND_GDB, || {
        // The frame the CPL-3 program faulted in, not the CPL-0 stub that
        // caught the fault nor the reporter that halted.
        fault_core(
            "zeropage",
            "core::ptr::write_volatile<u8> (dst=0x8",
            &["signal SIGSEGV", "fault::start (si=", "at src/bin/fault.rs:", "mirage_solo5::target::rt::start"],
        )
    }));
    v.push(case("hvt::dumpcore_of_a_panic_shows_the_panicking_function", HVT_AND_GDB, || {
        // Frame #0 is the HALT hypercall the bindings make at CPL 3, not
        // the CPL-0 stub that performs it.
        fault_core(
            "panic",
            "mirage_solo5::target::hvt::hypercall",
            &["signal SIGABRT", "panicking::panic_fmt", "fault::start (si="],
        )
    }));
    v.push(case("hvt::dumpcore_of_an_abort_shows_its_caller", HVT_AND_GDB, || {
        fault_core(
            "abort",
            "mirage_solo5::target::hvt::hypercall",
            &["signal SIGABRT", "hvt::halt (status=255", "mirage_solo5::target::rt::abort", "fault::start (si="],
        )
    }));
    v.push(case("hvt::dumpcore_of_an_invalid_opcode", HVT_AND_GDB, || {
        fault_core("ud2", "fault::start", &["signal SIGSEGV"])
    }));
    v.push(case("hvt::dumpcore_writes_touched_memory_and_leaves_the_rest_as_holes", Needs::Target("hvt"), || {
        use std::os::unix::fs::MetadataExt;
        let dir = Scratch::new("core");
        let r = boot("hvt", &["--mem=32", &format!("--dumpcore={}", dir.0.display())], "fault", &["touch", "8"])?;
        r.expect_status(255)?;
        r.expect_stdout("fault: touched 2048 pages")?;
        let core = the_core(&dir.0, &r.stderr)?;
        let m = std::fs::metadata(&core).map_err(|e| e.to_string())?;
        let on_disk = m.blocks() * 512;
        // All 32 MiB are in the file; the 8 MiB written (and the image,
        // stack and tables) are on disk, the rest are holes.
        if m.len() != (32 << 20) + 4096 || !(8 << 20..=12 << 20).contains(&on_disk) {
            return Err(format!("core of {} bytes, {on_disk} on disk\n{}", m.len(), r.dump()));
        }
        r.expect_stderr("dumpcore: dumped ")?;
        r.expect_stderr(" pages of total 8192 pages")
    }));
    v.push(case("hvt::dumpcore_of_an_image_with_a_segment_without_permissions", Needs::Target("hvt"), || {
        // The fault guest with its INTERP header made a PT_LOAD of one
        // page at 2 MiB with no permissions (PROT_NONE on the host, its
        // zero byte from the file loaded first): the core is still written,
        // that page a hole.
        let dir = Scratch::new("core");
        let mut elf = std::fs::read(guest("hvt", "fault")?).map_err(|e| e.to_string())?;
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
        let mut headers: Vec<Vec<u8>> =
            (0..phnum).map(|i| elf[phoff + i * 56..phoff + (i + 1) * 56].to_vec()).collect();
        let kind = |h: &Vec<u8>| u32::from_le_bytes(h[0..4].try_into().unwrap());
        let interp = headers.iter().position(|h| kind(h) == 3).ok_or("the fault guest has no INTERP header")?;
        headers.remove(interp);
        let offset = elf.len().next_multiple_of(4096) as u64;
        elf.resize(offset as usize + 4096, 0);
        let mut ph = Vec::new();
        for v in [1u32, 0] {
            ph.extend_from_slice(&v.to_le_bytes());
        }
        for v in [offset, 0x20_0000, 0x20_0000, 4096, 4096, 4096] {
            ph.extend_from_slice(&v.to_le_bytes());
        }
        // After the last PT_LOAD: loadable segments go in ascending order.
        let after = headers.iter().rposition(|h| kind(h) == 1).ok_or("the fault guest has no PT_LOAD")?;
        headers.insert(after + 1, ph);
        elf[phoff..phoff + phnum * 56].copy_from_slice(&headers.concat());
        let image = dir.0.join("no-permissions.hvt");
        std::fs::write(&image, &elf).map_err(|e| e.to_string())?;
        let mut c = Command::new(tender("hvt"));
        c.arg(format!("--dumpcore={}", dir.0.display())).arg(&image).arg("abort");
        let r = run_with(c, Duration::from_secs(60))?;
        r.expect_status(255)?;
        let core = the_core(&dir.0, &r.stderr)?;
        let bytes = std::fs::read(&core).map_err(|e| e.to_string())?;
        // The image's code is in the core, where the guest had it.
        let text = &elf[0x1000..0x1100];
        if bytes.get(4096 + 0x10_0000..4096 + 0x10_0100) != Some(text) {
            return Err(format!("the core does not hold the guest's code\n{}", r.dump()));
        }
        r.expect_stderr("dumpcore: dumped ")
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

// ---------------------------------------------------------------------
// The GDB server.

/// `solo5-hvt --gdb --gdb-port=0 [options] GUEST ARGS` in the background,
/// with the port it listens on.
fn gdb_tender(options: &[&str], guest_name: &str, args: &[&str]) -> Result<(Background, u16), String> {
    let mut c = Command::new(tender("hvt"));
    c.args(["--gdb", "--gdb-port=0"]).args(options).arg(guest("hvt", guest_name)?).args(args);
    let mut bg = Background::start(c)?;
    let port = testkit::gdb_port(&mut bg)?;
    Ok((bg, port))
}

fn gdb_session(debuggee_args: &[&str], commands: &[&str]) -> Result<(String, i32, String), String> {
    let (mut bg, port) = gdb_tender(&[], "debuggee", debuggee_args)?;
    let mut all = vec![format!("target remote localhost:{port}")];
    all.extend(commands.iter().map(|c| c.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = gdb(&guest("hvt", "debuggee")?, None, &all)?;
    let status = bg.wait(Duration::from_secs(30)).map_err(|e| format!("{e}\ngdb said:\n{out}"))?;
    Ok((out, status, bg.output()))
}

/// A raw remote-protocol client, for what gdb would never send.
struct Client(TcpStream);

impl Client {
    fn connect(port: u16) -> Result<Client, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        Ok(Client(s))
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0.write_all(bytes).map_err(|e| format!("the tender hung up: {e}"))
    }

    fn byte(&mut self) -> Result<u8, String> {
        let mut b = [0u8];
        loop {
            // A signal to the test process (a child of another test
            // exiting) interrupts the read; the reply is still coming.
            return match self.0.read(&mut b) {
                Ok(1) => Ok(b[0]),
                Ok(_) => Err("the tender closed the connection".into()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(format!("no reply from the tender: {e}")),
            };
        }
    }

    /// The next packet from the tender (skipping acknowledgements), acked.
    fn reply(&mut self) -> Result<String, String> {
        while self.byte()? != b'$' {}
        let mut data = Vec::new();
        loop {
            match self.byte()? {
                b'#' => break,
                c => data.push(c),
            }
        }
        let (h, l) = (self.byte()?, self.byte()?);
        let sum = data.iter().fold(0u8, |s, &c| s.wrapping_add(c));
        if format!("{sum:02x}").as_bytes() != [h, l] {
            return Err(format!("bad checksum on {:?}", String::from_utf8_lossy(&data)));
        }
        self.raw(b"+")?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    fn packet(data: &[u8]) -> Vec<u8> {
        let sum = data.iter().fold(0u8, |s, &c| s.wrapping_add(c));
        let mut p = b"$".to_vec();
        p.extend_from_slice(data);
        p.extend_from_slice(format!("#{sum:02x}").as_bytes());
        p
    }

    /// Sends a well-formed packet and returns the reply.
    fn ask(&mut self, data: &[u8]) -> Result<String, String> {
        self.raw(&Client::packet(data))?;
        self.reply()
    }
}

fn expect_reply(c: &mut Client, ask: &[u8], want: &str) -> Result<(), String> {
    let got = c.ask(ask)?;
    if got != want {
        return Err(format!("{:?} got {got:?}, not {want:?}", String::from_utf8_lossy(ask)));
    }
    Ok(())
}

fn gdb_cases(v: &mut Vec<Case>) {
    v.push(case("hvt::gdb_breaks_steps_reads_and_continues_to_exit", HVT_AND_GDB, || {
        let (out, status, tender_out) = gdb_session(
            &[],
            &[
                "info registers rip",
                "break debuggee::start",
                "break debuggee::add",
                "continue",
                "bt",
                "continue",
                "info args",
                "print debuggee::CALLS.v.value",
                "bt",
                "next",
                "stepi",
                "info registers rip",
                "continue",
                "print total",
                "delete",
                "continue",
            ],
        )?;
        let ctx = |e: String| format!("{e}\ntender:\n{tender_out}");
        // Stopped before the first instruction, at the entry point.
        expect_all(&out, &["rip            0x100020"]).map_err(ctx)?;
        expect_all(
            &out,
            &[
                "Breakpoint 1, debuggee::start",
                "at src/bin/debuggee.rs:25",
                "#0  debuggee::start",
                "mirage_solo5::target::rt::start",
                "Breakpoint 2, debuggee::add (total=0, n=1) at src/bin/debuggee.rs:20",
                "#1  0x",
                "in debuggee::start",
                "$1 = 0",
                // `next` moves to the next line of add.
                "21\t    core::hint::black_box(total + n)",
                "<debuggee::add+",
                // The second call: the first has run, and its result.
                "Breakpoint 2, debuggee::add (total=1, n=2)",
                "$2 = 1",
                "exited with code 012",
            ],
        )
        .map_err(ctx)?;
        if status != 10 {
            return Err(format!("the tender exited with {status}, not the guest's 10\n{out}\n{tender_out}"));
        }
        expect_all(&tender_out, &["Connection from debugger at 127.0.0.1", "debuggee: sum 10, 4 calls"])
    }));
    v.push(case("hvt::gdb_steps_instructions_at_cpl3", HVT_AND_GDB, || {
        // Ten single instructions from the start function: each stops one
        // instruction further on, and the program still runs to its end.
        let mut cmds = vec!["break debuggee::add", "continue", "delete"];
        cmds.extend(std::iter::repeat_n("stepi", 10));
        cmds.extend(["info registers rip cs", "continue"]);
        let (out, status, tender_out) = gdb_session(&["3"], &cmds)?;
        // Stepping runs add to its `ret` and back into its caller, at CPL 3.
        let back_in_start = out.lines().any(|l| l.starts_with("0x") && l.contains(" in debuggee::start (si="));
        if !back_in_start || !out.contains("cs             0x23") || status != 6 {
            return Err(format!("stepping failed (status {status}):\n{out}\n{tender_out}"));
        }
        Ok(())
    }));
    v.push(case(
        "hvt::gdb_hardware_breakpoint_in_solo5s_test_hello",
        Needs::All(&[Needs::Target("hvt"), GDB, Needs::Solo5Tests]),
        || {
            // Solo5's guests run at CPL 0, where this machine's KVM cannot
            // run an int3: hbreak (DR2, DR3) and stepi (KVM's single step).
            let kernel = testkit::solo5_tests()?.join("test_hello/test_hello.hvt");
            let mut c = Command::new(tender("hvt"));
            c.args(["--gdb", "--gdb-port=0"]).arg(&kernel).arg("Hi_gdb");
            let mut bg = Background::start(c)?;
            let port = testkit::gdb_port(&mut bg)?;
            let target = format!("target remote localhost:{port}");
            let cmds = [
                target.as_str(),
                "hbreak solo5_app_main",
                "continue",
                "bt",
                "print si->cmdline",
                "stepi",
                "stepi",
                "info registers rip",
                "delete",
                "continue",
            ];
            let out = gdb(&kernel, None, &cmds)?;
            let status = bg.wait(Duration::from_secs(30))?;
            let ctx = |e: String| format!("{e}\ntender:\n{}", bg.output());
            expect_all(
                &out,
                &["Breakpoint 1, solo5_app_main", "test_hello.c:", "in _start", "\"Hi_gdb\"", "exited normally"],
            )
            .map_err(ctx)?;
            if status != 0 {
                return Err(ctx(format!("status {status}\n{out}")));
            }
            Ok(())
        },
    ));
    for (what, signal, needle) in [
        ("zeropage", "SIGSEGV, Segmentation fault", "fault::start"),
        ("panic", "SIGABRT, Aborted", "panicking::panic_fmt"),
    ] {
        v.push(case(format!("hvt::gdb_stops_where_a_guest_{what}_ends_it"), HVT_AND_GDB, move || {
            // The guest's own trap reporter halts it; the server shows gdb
            // the program where it died, then lets it go.
            let (mut bg, port) = gdb_tender(&[], "fault", &[what])?;
            let target = format!("target remote localhost:{port}");
            let out = gdb(&guest("hvt", "fault")?, None, &[target.as_str(), "continue", "bt", "continue"])?;
            let status = bg.wait(Duration::from_secs(30))?;
            let ctx = |e: String| format!("{e}\ntender:\n{}", bg.output());
            expect_all(&out, &[&format!("Program received signal {signal}"), needle, "exited with code 0377"])
                .map_err(ctx)?;
            if status != 255 {
                return Err(ctx(format!("status {status}\n{out}")));
            }
            Ok(())
        }));
    }
    v.push(case("hvt::gdb_kill_ends_the_tender", Needs::Target("hvt"), || {
        let (mut bg, port) = gdb_tender(&[], "debuggee", &[])?;
        let mut c = Client::connect(port)?;
        let stop = c.reply()?;
        if stop != "S05" {
            return Err(format!("first stop {stop:?}"));
        }
        c.raw(&Client::packet(b"k"))?;
        let status = bg.wait(Duration::from_secs(30))?;
        if status != 1 || !bg.output().contains("GDB: Debugger asked us to quit") {
            return Err(format!("status {status}\n{}", bg.output()));
        }
        Ok(())
    }));
    v.push(case("hvt::gdb_port_must_be_a_port", Needs::Target("hvt"), || {
        for bad in ["--gdb-port=70000", "--gdb-port=x", "--gdb-port="] {
            let r = boot("hvt", &["--gdb", bad], "hello", &[])?;
            r.expect_status(1)?;
            r.expect_stderr("Malformed argument to --gdb-port")?;
        }
        Ok(())
    }));
    v.push(case("hvt::gdb_hostile_client_never_crashes_the_tender", Needs::Target("hvt"), || {
        let (mut bg, port) = gdb_tender(&[], "debuggee", &[])?;
        let mut c = Client::connect(port)?;
        let ctx = |e: String, bg: &Background| format!("{e}\ntender:\n{}", bg.output());
        let r = (|| {
            expect_reply(&mut c, b"?", "S05").ok();
            // Garbage outside packets, a bad checksum (refused with '-'),
            // non-hex checksums, bytes that are not ASCII.
            c.raw(b"\x00\xff\x03garbage+-+")?;
            c.raw(b"$g#00")?;
            let mut b = c.byte()?;
            while b == b'$' || b == b'S' {
                b = c.byte()?;
            }
            if b != b'-' {
                return Err(format!("a bad checksum got {:?}, not '-'", b as char));
            }
            c.raw(b"$m0,1#zz")?;
            c.raw(&Client::packet(b"\xff\xfe\x80"))?;
            c.reply()?;
            // A packet far larger than the server takes, then a good one.
            let mut huge = b"$M100000,ffffff:".to_vec();
            huge.extend(std::iter::repeat_n(b'0', 1 << 20));
            huge.extend_from_slice(b"#00");
            c.raw(&huge)?;
            expect_reply(&mut c, b"?", "S05")?;
            // Addresses and lengths out of range or absurd.
            for bad in [
                &b"m20000000,1"[..],
                b"m1fffffff,2",
                b"mffffffffffffffff,10",
                b"m0,ffffffffffffffff",
                b"m100000,100000",
                b"m,",
                b"mxyz",
                b"M20000000,1:00",
                b"Mfffffffffffffff0,20:00",
                b"M100000,2:00",
                b"M100000,1:0",
                b"Z0,20000000,1",
                b"Z0,ffffffffffffffff,1",
                b"Z0,100000,8",
                b"z0,100000,1",
                b"Z1,20000000,1",
                b"z1,100000,1",
                b"G00",
                b"Gzz",
                b"P10=00",
                b"P99999999999999999=0011223344556677",
            ] {
                let got = c.ask(bad)?;
                if got != "E01" {
                    return Err(format!("{:?} got {got:?}, not E01", String::from_utf8_lossy(bad)));
                }
            }
            for unsupported in [&b"vMustReplyEmpty"[..], b"X100000,1:a", b"Z2,100000,1", b"c100000", b"!", b"p99"] {
                expect_reply(&mut c, unsupported, "")?;
            }
            // Still serving: registers, memory, then the guest runs to its
            // end, its image untouched by all of the above.
            let regs = c.ask(b"g")?;
            if !regs.starts_with('0') || regs.len() != 2 * (17 * 8 + 7 * 4) {
                return Err(format!("g gave {regs:?}"));
            }
            expect_reply(&mut c, b"m1ffffffc,4", "00000000")?;
            expect_reply(&mut c, b"qSupported:swbreak+", "PacketSize=1000;swbreak+;hwbreak+")?;
            c.raw(&Client::packet(b"c"))?;
            let exit = c.reply()?;
            if exit != "W0a" {
                return Err(format!("exit reported as {exit:?}, not W0a"));
            }
            Ok(())
        })();
        r.map_err(|e| ctx(e, &bg))?;
        let status = bg.wait(Duration::from_secs(30))?;
        if status != 10 {
            return Err(ctx(format!("the tender exited with {status}, not the guest's 10"), &bg));
        }
        Ok(())
    }));
    v.push(case("hvt::gdb_client_that_hangs_up_ends_the_tender_cleanly", Needs::Target("hvt"), || {
        let (mut bg, port) = gdb_tender(&[], "debuggee", &[])?;
        let mut c = Client::connect(port)?;
        c.reply()?;
        c.raw(b"$m100000,4")?;
        drop(c);
        let status = bg.wait(Duration::from_secs(30))?;
        if status != 1 || !bg.output().contains("GDB: Exiting as we could not talk to the debugger") {
            return Err(format!("status {status}\n{}", bg.output()));
        }
        Ok(())
    }));
}
