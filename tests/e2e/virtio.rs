//! The virtio target end to end, under QEMU (TCG on this project's
//! machines, whose /dev/kvm is PVM; see solo5-virtio): the network example
//! answering ping, a ping flood, TCP echo and UDP echo through a tap device
//! in a namespace; static-website serving curl, from its compiled-in site
//! and from a tar disk image on a virtio-blk device; the ISO of `mirage
//! package --iso` booting under GRUB; and the errors for a missing or bad
//! device, from solo5-virtio and from the guest itself; exit statuses,
//! panics and CPU exceptions of the `fault` test guest. The examples'
//! tests (hello, block, ping, kv-ro) run on virtio in examples.rs, and
//! `mirage run -t virtio` in tool.rs.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use testkit::{Background, Netns, Scratch, example, example_with, guest, mirage_in, root, run_with, tender};

use crate::{Case, Needs, case};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn ping(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let mut c = ns.command("ping");
    c.args(args).arg(GUEST.to_string());
    let r = run_with(c, Duration::from_secs(120))?;
    if r.status() != 0 {
        return Err(format!("ping {args:?} failed: {}", r.dump()));
    }
    Ok(r.stdout)
}

/// QEMU booting `iso` from its CD drive, with the exit device the
/// bindings use: the Run, status decoded as solo5-virtio does.
fn boot_iso(iso: &std::path::Path) -> Result<testkit::Run, String> {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit"])
        .args(["-accel", "tcg", "-m", "128", "-cdrom"])
        .arg(iso);
    run_with(c, Duration::from_secs(120))
}

pub fn cases(v: &mut Vec<Case>) {
    v.push(case("virtio::tcpip_answers_ping_a_flood_tcp_and_udp_echo", Needs::Net("virtio"), || {
        let ns = Netns::new()?;
        let mut c = ns.unikernel("virtio", &example("virtio", "network")?, &["--net:service=tap0"]);
        c.arg("--ipv4=10.0.0.2/24");
        let mut g = Background::start(c)?;
        g.wait_for("network: 10.0.0.2/24", Duration::from_secs(60))?;
        let out = ping(&ns, &["-c", "3", "-i", "0.2", "-W", "5"])?;
        if !out.contains("3 received") {
            return Err(format!("ping lost packets:\n{out}"));
        }
        // Not `ping -f`, which counts a slow last reply as lost.
        let flood = testkit::echo::flood(&ns, GUEST, 20_000, Duration::from_secs(5))?;
        if !flood.whole() {
            return Err(format!("the flood was not all answered: {flood}\n{}", g.output()));
        }
        crate::tcpip::tcp_echo_clients(&ns, SocketAddr::new(GUEST.into(), 7), 20, 100_000)?;
        crate::tcpip::udp_echo(&ns, SocketAddr::new(GUEST.into(), 7), "10.0.0.1".parse().unwrap())?;
        if let Ok(Some(s)) = g.child.try_wait() {
            return Err(format!("the unikernel exited ({s}):\n{}", g.output()));
        }
        Ok(())
    }));
    v.push(case(
        "virtio::http_serves_curl_from_the_image_and_from_a_tar_disk",
        Needs::NetProgram { target: "virtio", name: "curl", package: "curl" },
        crate::http::virtio_serves_curl,
    ));
    v.push(case(
        "virtio::iso_boots_under_grub_and_says_hello",
        Needs::All(&[
            Needs::Target("virtio"),
            Needs::Program { name: "grub-mkrescue", package: "grub-common grub-pc-bin xorriso mtools" },
        ]),
        || {
            // Configured and built like the other virtio tests.
            example("virtio", "hello-key")?;
            let _lock = testkit::examples_lock();
            let dir = root().join("examples/hello-key");
            let scratch = Scratch::new("virtio-iso");
            let iso = scratch.0.join("hello-key.iso");
            let out = format!("--output={}", iso.display());
            let r = mirage_in(
                &dir,
                &["package", "--iso", "-t", "virtio", &out, "--", "--solo5:quiet", "--hello=Hola ISO!"],
            )?;
            r.expect_status(0)?;
            let r = boot_iso(&iso)?;
            // isa-debug-exit: QEMU exits with 2 * (status + 1) + 1.
            r.expect_status(3)?;
            if r.stdout.lines().filter(|l| l.trim_start_matches('\r') == "Hola ISO!").count() != 4 {
                return Err(format!("GRUB did not boot the unikernel with its arguments\n{}", r.dump()));
            }
            Ok(())
        },
    ));
    v.push(case("virtio::a_missing_or_bad_device_is_a_clear_error", Needs::Target("virtio"), || {
        let image = example("virtio", "block")?;
        let run = |args: &[&str]| {
            let mut c = Command::new(tender("virtio"));
            c.args(args).arg(&image);
            run_with(c, Duration::from_secs(60))
        };
        // Not attached: refused before QEMU starts.
        let r = run(&[])?;
        r.expect_status(1)?;
        if !r.stderr.contains("Device 'storage' of type BLOCK_BASIC declared but not attached.") {
            return Err(format!("no word of the missing device\n{}", r.dump()));
        }
        let r = run(&["--block:storage=/nonexistent/disk.img"])?;
        r.expect_status(1)?;
        if !r.stderr.contains("Could not open block device: /nonexistent/disk.img: No such file or directory") {
            return Err(format!("no word of the missing file\n{}", r.dump()));
        }
        let r = run(&["--block:storage=/dev/null", "--net:nosuch=tap0"])?;
        r.expect_status(1)?;
        if !r.stderr.contains("Resource not declared in manifest: 'nosuch'") {
            return Err(format!("no word of the undeclared device\n{}", r.dump()));
        }
        // No QEMU on PATH.
        let mut c = Command::new(tender("virtio"));
        let scratch = Scratch::new("virtio-nodisk");
        let disk = scratch.file("disk.img", 1 << 20);
        c.arg(format!("--block:storage={}", disk.display())).arg(&image).env("PATH", "/nonexistent");
        let r = run_with(c, Duration::from_secs(60))?;
        r.expect_status(1)?;
        if !r.stderr.contains("no qemu-system-x86_64 on PATH") || !r.stderr.contains("apt-get install qemu-system-x86")
        {
            return Err(format!("no word of the missing QEMU and its fix\n{}", r.dump()));
        }
        // QEMU without the device: the guest itself names what is missing.
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit"])
            .args(["-accel", "tcg", "-m", "64", "-kernel"])
            .arg(&image);
        let r = run_with(c, Duration::from_secs(60))?;
        // 255 (an abort) comes back as 2 * 127 + 1.
        r.expect_status(255)?;
        r.expect_stdout("Solo5: ABORT: the manifest's block device \"storage\" has no virtio-blk-pci device")
    }));
    v.push(case("virtio::exits_faults_and_panics_end_the_guest_as_on_solo5", Needs::Target("virtio"), || {
        let fault = guest("virtio", "fault")?;
        let run = |args: &[&str]| {
            let mut c = Command::new(tender("virtio"));
            c.arg(&fault).args(args);
            run_with(c, Duration::from_secs(60))
        };
        let r = run(&["exit", "7"])?;
        r.expect_status(7)?;
        r.expect_stdout("Solo5: solo5_exit(7) called")?;
        // Rust's floating point and SSE at CPL 0 (TCG runs them).
        let r = run(&["float"])?;
        r.expect_status(0)?;
        r.expect_stdout("float: ")?;
        let r = run(&["panic"])?;
        r.expect_status(255)?;
        r.expect_stdout("Solo5: ABORT: src/bin/fault.rs")?;
        let r = run(&["ud2"])?;
        r.expect_status(255)?;
        r.expect_stdout("Solo5: trap: type=#UD ec=0x0")?;
        r.expect_stdout("Solo5: ABORT: Fatal trap")?;
        // The zero page is not mapped: a null pointer faults.
        let r = run(&["zeropage"])?;
        r.expect_status(255)?;
        r.expect_stdout("Solo5: trap: type=#PF ec=0x2")?;
        r.expect_stdout("Solo5: trap: cr2=0x8")?;
        let r = run(&["unmapped"])?;
        r.expect_status(255)?;
        r.expect_stdout("Solo5: trap: cr2=0x400000000")
    }));
    v.push(case("virtio::a_sleeping_guest_leaves_the_cpu_idle", Needs::Target("virtio"), || {
        // hello sleeps four times a second: halted, QEMU uses a fraction of
        // that in processor time; polling, it would use all of it.
        let image = example("virtio", "hello")?;
        let mut c = Command::new("bash");
        c.arg("-c").arg(r#""$0" "$1" --solo5:quiet >/dev/null 2>&1; echo "status $?"; times"#);
        c.arg(tender("virtio")).arg(&image);
        let r = run_with(c, Duration::from_secs(60))?;
        r.expect_stdout("status 0")?;
        // `times`: the shell's user and system time, then its children's.
        let children = r.stdout.lines().last().unwrap_or_default();
        let secs: f64 = children
            .split_whitespace()
            .filter_map(|t| {
                let (m, s) = t.strip_suffix('s')?.split_once('m')?;
                Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
            })
            .sum();
        if !(0.0..1.5).contains(&secs) || children.is_empty() {
            return Err(format!("QEMU used {secs:.2} s of processor time over four seconds of sleep\n{}", r.dump()));
        }
        Ok(())
    }));
    v.push(case("virtio::an_image_for_another_target_is_refused", Needs::Target("virtio"), || {
        let image = example_with("hvt", "hello", &[])?;
        let mut c = Command::new(tender("virtio"));
        c.arg(&image);
        let r = run_with(c, Duration::from_secs(60))?;
        r.expect_status(1)?;
        if !r.stderr.contains("Executable is not for the solo5-virtio target") {
            return Err(format!("the hvt image was not refused by name\n{}", r.dump()));
        }
        Ok(())
    }));
}
