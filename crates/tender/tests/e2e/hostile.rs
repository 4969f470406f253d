//! Hostile guests: every bad pointer, length, handle or port ends the guest
//! with a message from the tender and status 1; the tender never panics
//! and is never killed by a signal, not even when the guest asks it to
//! write into the guest's own read-only text.

use std::time::Duration;

use crate::{Case, Needs, case};
use testkit::{Background, Netns, Scratch, boot, guest, tender};

const HVT: Needs = Needs::Target("hvt");

/// Boots the block-declaring hostile guest on hvt with case `what`.
fn hostile(what: &str) -> Result<testkit::Run, String> {
    let dir = Scratch::new("hostile");
    let disk = dir.file("disk.img", 1 << 20);
    let r = boot("hvt", &[&format!("--block:storage={}", disk.display())], "hostile", &[what])?;
    no_panic(&r)?;
    Ok(r)
}

/// The same with "storage" granted flushes (`--block-dsync:`), so that
/// the tender offers the ring for durable writes; the run and the disk.
fn hostile_dsync(what: &str) -> Result<(testkit::Run, Vec<u8>), String> {
    let dir = Scratch::new("hostile");
    let disk = dir.file("disk.img", 1 << 20);
    let r = boot("hvt", &[&format!("--block-dsync:storage={}", disk.display())], "hostile", &[what])?;
    no_panic(&r)?;
    let bytes = std::fs::read(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    Ok((r, bytes))
}

fn no_panic(r: &testkit::Run) -> Result<(), String> {
    if r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE") {
        return Err(format!("the tender panicked\n{}", r.dump()));
    }
    Ok(())
}

/// The address a case used, as the guest printed it (`hostile: gpa=0x...`).
fn printed_gpa(out: &str) -> Result<String, String> {
    out.lines()
        .find_map(|l| l.strip_prefix("hostile: gpa="))
        .map(str::to_string)
        .ok_or_else(|| format!("the guest did not print its address:\n{out}"))
}

/// The memory the host must not write for the guest: what the tender says
/// for each case, given the address the guest used.
const PROTECTED: &[(&str, &str, u64)] = &[
    ("walltime-ro", "Walltime", 8),
    ("poll-ro", "Poll", 24),
    ("blkread-arg-ro", "BlockRead", 40),
    ("blkwrite-arg-ro", "BlockWrite", 40),
    ("blkread-data-ro", "BlockRead", 512),
    ("blkread-data-edge", "BlockRead", 512),
    ("poll-edge", "Poll", 24),
    ("walltime-zero-low", "Walltime", 8),
    ("poll-pagetables-low", "Poll", 24),
    ("walltime-bootinfo-low", "Walltime", 8),
    ("blkread-data-low", "BlockRead", 512),
    ("flush-ro", "BlockFlush", 16),
    ("wsync-ro", "BlockWriteSync", 40),
];

/// The same through the network hypercalls and the net ring: the message,
/// with `{gpa}` for the address the guest printed.
const PROTECTED_NET: &[(&str, &str)] = &[
    ("netread-arg-ro", "NetRead hypercall: Invalid guest access: gpa={gpa}, sz=32"),
    ("netwrite-arg-ro", "NetWrite hypercall: Invalid guest access: gpa={gpa}, sz=32"),
    ("netread-data-ro", "NetRead hypercall: Invalid guest access: gpa={gpa}, sz=1514"),
    ("netwrite-data-oob", "NetWrite hypercall: Invalid guest access: gpa=0xfff00000, sz=60"),
    ("rx-offload-arg-ro", "NetRxOffload hypercall: Invalid guest access: gpa={gpa}, sz=16"),
    ("ring-read-ro", "net ring read: Invalid guest access: gpa={gpa}, sz=1514"),
    ("ring-write-oob", "net ring write: Invalid guest access: gpa=0xfff00000, sz=60"),
    ("ring-overflow", "net ring: guest submitted 1025 entries, the ring holds 1024"),
    ("ring-bad-csum", "net ring: a write asks for a checksum the frame does not hold: 0x10010003c for 60 bytes"),
    (
        "ring-bad-tso",
        "net ring: a write asks to cut a TCP segment the frame does not hold: 0x5a8000100100022 for 60 bytes",
    ),
    (
        "ring-tso-udp",
        "net ring: a write asks to cut a TCP segment the frame does not hold: 0x5a8000100100022 for 60 bytes",
    ),
    ("ring-tso-tiny", "net ring: a write asks to cut a TCP segment with a segment size of 1, below 32 bytes"),
    // The same entries, served on the vCPU's thread at the guest's request.
    ("serve-read-ro", "net ring read: Invalid guest access: gpa={gpa}, sz=1514"),
    ("serve-write-oob", "net ring write: Invalid guest access: gpa=0xfff00000, sz=60"),
    ("serve-overflow", "net ring: guest submitted 1025 entries, the ring holds 1024"),
    // Receive buffers posted (FEATURE_RING_POSTED): in read-only memory,
    // and more than the tender keeps.
    ("ring-post-ro", "net ring posted read: Invalid guest access: gpa={gpa}, sz=1514"),
    ("serve-post-ro", "net ring posted read: Invalid guest access: gpa={gpa}, sz=1514"),
    ("post-flood", "net ring: guest posted more than 1024 receive buffers"),
    ("serve-bad-csum", "net ring: a write asks for a checksum the frame does not hold: 0x10010003c for 60 bytes"),
    (
        "serve-bad-tso",
        "net ring: a write asks to cut a TCP segment the frame does not hold: 0x5a8000100100022 for 60 bytes",
    ),
];

/// Runs `hostile-net WHAT` on hvt with a tap in a namespace of its own:
/// its exit status and output.
fn hostile_net(what: &str) -> Result<(i32, String), String> {
    let ns = Netns::new()?;
    let mut c = ns.command(tender("hvt"));
    c.arg("--net:service=tap0").arg(guest("hvt", "hostile-net")?).args(what.split(' '));
    let mut g = Background::start(c)?;
    let status = g.wait(Duration::from_secs(30))?;
    Ok((status, g.output()))
}

pub fn cases(v: &mut Vec<Case>) {
    spt_cases(v);
    for &(what, hc, size) in PROTECTED {
        v.push(case(format!("hvt::hostile_{what}"), HVT, move || {
            let r = hostile(what)?;
            r.expect_status(1)?;
            let gpa = printed_gpa(&r.stdout)?;
            r.expect_stderr(&format!("{hc} hypercall: Invalid guest access: gpa={gpa}, sz={size}\n"))
        }));
    }
    for (what, status, out) in [("blkwrite-data-ro", 0, "SUCCESS"), ("halt-cookie-ro", 7, "hostile: halt-cookie-ro")] {
        v.push(case(format!("hvt::hostile_{what}_is_allowed"), HVT, move || {
            let r = hostile(what)?;
            r.expect_status(status)?;
            r.expect_stdout(out)
        }));
    }
    for &(what, message) in PROTECTED_NET {
        v.push(case(format!("hvt::hostile_{what}"), Needs::Net("hvt"), move || {
            let (status, out) = hostile_net(what)?;
            if out.contains("panicked") || out.contains("the tender accepted") {
                return Err(format!("the tender accepted {what} or panicked:\n{out}"));
            }
            if status != 1 {
                return Err(format!("status {status} instead of 1 (a signal is 128 + its number):\n{out}"));
            }
            let want =
                if message.contains("{gpa}") { message.replace("{gpa}", &printed_gpa(&out)?) } else { message.into() };
            if !out.contains(&want) {
                return Err(format!("expected {want:?}:\n{out}"));
            }
            Ok(())
        }));
    }
    v.push(case("hvt::hostile_ring_entry_found_while_the_guest_sleeps_in_poll", Needs::Net("hvt"), || {
        // The guest kicks a bad entry and sleeps in POLL for a minute at a
        // time: the I/O thread's failure must wake it, and the guest end
        // with the message, at once.
        let started = std::time::Instant::now();
        let (status, out) = hostile_net("ring-write-oob poll")?;
        let took = started.elapsed();
        let want = "net ring write: Invalid guest access: gpa=0xfff00000, sz=60";
        if status != 1 || !out.contains(want) || took > Duration::from_secs(10) {
            return Err(format!("status {status} after {took:?}, expected 1 with {want:?} at once:\n{out}"));
        }
        Ok(())
    }));
    for (flags, what) in [(PF_R, "read-only"), (PF_R | PF_W, "writable")] {
        v.push(case(format!("hvt::an_image_reaching_into_the_ring_is_refused_{what}"), HVT, move || {
            // The hostile guest's last segment (its .bss) made to end one
            // page past 2 MiB: with --mem=2 and a device granted flushes,
            // the ring takes the 2 MiB above the guest's 2, so the segment
            // would cover its first page. Loaded, a read-only one killed
            // the tender (SIGSEGV) at the I/O thread's first write there.
            let dir = Scratch::new("ring-image");
            let disk = dir.file("disk.img", 1 << 20);
            let image = dir.0.join("reaching.hvt");
            let mut elf = std::fs::read(guest("hvt", "hostile")?).map_err(|e| e.to_string())?;
            reach_past_2_mib(&mut elf, flags)?;
            std::fs::write(&image, &elf).map_err(|e| e.to_string())?;
            let run = |mem: &str| {
                let mut c = std::process::Command::new(tender("hvt"));
                c.arg(mem).arg(format!("--block-dsync:storage={}", disk.display())).arg(&image).arg("no-case");
                testkit::run_with(c, Duration::from_secs(60))
            };
            let r = run("--mem=2")?;
            no_panic(&r)?;
            r.expect_status(1)?;
            r.expect_stderr("does not fit in --mem=2 MiB: give it more memory")?;
            // With room below the ring it loads, and the guest runs (an
            // unknown case ends it with 64).
            if flags & PF_W != 0 {
                let r = run("--mem=4")?;
                r.expect_status(64)?;
                r.expect_stdout("hostile: unknown case 'no-case'")?;
            }
            Ok(())
        }));
    }
    v.push(case("hvt::ring_post_for_what_is_not_a_tap_is_committed_einval", Needs::Net("hvt"), || {
        let (status, out) = hostile_net("post-bad-handle")?;
        // Committed at once, with the entry's id, EINVAL (2).
        if status != 0 || !out.contains("hostile: a buffer posted for handle 7: 1 commit, id 77, ret 2") {
            return Err(format!("status {status}:\n{out}"));
        }
        Ok(())
    }));
    v.push(case("hvt::net_rx_offload_answers_einval_for_what_is_not_a_tap", Needs::Net("hvt"), || {
        let (status, out) = hostile_net("rx-offload-handles")?;
        // EINVAL (2) for the reserved entry, a handle past the manifest
        // and a huge one; OK (0) for the tap.
        if status != 0 || !out.contains("hostile: rx offload answers: [2, 2, 2, 0]") {
            return Err(format!("status {status}:\n{out}"));
        }
        Ok(())
    }));
    // Asked again and again, the tender turns receive offload on once:
    // TUNSETOFFLOAD takes the host's network-wide RTNL lock.
    let strace = Needs::NetProgram { target: "hvt", name: "strace", package: "strace" };
    v.push(case("hvt::net_rx_offload_asked_in_a_loop_reaches_the_host_once", strace, || {
        let dir = Scratch::new("rx-offload");
        let trace = dir.0.join("ioctls");
        let ns = Netns::new()?;
        let mut c = ns.command("strace");
        c.args(["-f", "-qq", "-e", "trace=ioctl", "-o"]).arg(&trace).arg(tender("hvt"));
        c.arg("--net:service=tap0").arg(guest("hvt", "hostile-net")?).arg("rx-offload-repeated");
        let mut g = Background::start(c)?;
        let status = g.wait(Duration::from_secs(60))?;
        let out = g.output();
        if status != 0 || !out.contains("hostile: rx offload asked 1000 times, 1000 answered OK") {
            return Err(format!("status {status}:\n{out}"));
        }
        let ioctls = std::fs::read_to_string(&trace).map_err(|e| format!("strace's output: {e}"))?;
        // The tap's attachment clears the offloads first (flags 0).
        let n = ioctls.lines().filter(|l| l.contains("TUNSETOFFLOAD") && !l.contains("TUNSETOFFLOAD, 0)")).count();
        if n != 1 {
            return Err(format!("{n} TUNSETOFFLOAD calls turning offloads on, not 1:\n{ioctls}"));
        }
        Ok(())
    }));
    let fatal: &[(&str, &str)] = &[
        ("puts-ptr", "Puts hypercall: Invalid guest access: gpa=0xffff0000, sz=16"),
        ("puts-len", "Puts hypercall: Invalid guest access: gpa=0x"),
        ("puts-wrap", "Puts hypercall: Invalid guest access: gpa=0x200000, sz=18446744073708503039"),
        ("puts-top", "Puts hypercall: Invalid guest access: gpa=0x1ffffff8, sz=8"),
        ("arg-oob", "Puts hypercall: Invalid guest access: gpa=0xffffff00, sz=16"),
        ("arg-straddle", "Puts hypercall: Invalid guest access: gpa=0x1ffffff8, sz=16"),
        ("poll-oob", "Poll hypercall: Invalid guest access: gpa=0xfff00000, sz=24"),
        ("walltime-oob", "Walltime hypercall: Invalid guest access: gpa=0xfff00000, sz=8"),
        ("halt-cookie", "Halt hypercall: Invalid guest access: gpa=0xfffff000, sz=512"),
        ("blk-data", "BlockRead hypercall: Invalid guest access: gpa=0xfff00000, sz=512"),
        ("nr0", "Invalid guest hypercall: num=0"),
        ("net-read", "Invalid guest hypercall: num=7"),
        ("port-high", "Invalid guest port access: port=0x509"),
        ("port-low", "Invalid guest port access: port=0x4ff"),
        ("kick", "Invalid guest port access: port=0x600"),
        ("serve", "Invalid guest port access: port=0x601"),
        ("flush-oob", "BlockFlush hypercall: Invalid guest access: gpa=0xfff00000, sz=16"),
        ("wsync-oob", "BlockWriteSync hypercall: Invalid guest access: gpa=0xfff00000, sz=40"),
    ];
    for &(what, message) in fatal {
        v.push(case(format!("hvt::hostile_{what}"), HVT, move || {
            let r = hostile(what)?;
            r.expect_status(1)?;
            r.expect_stderr(message)?;
            if r.stdout.contains("the tender accepted") {
                return Err(format!("the tender accepted {what}\n{}", r.dump()));
            }
            Ok(())
        }));
    }
    // Durable writes through the ring (FEATURE_RING_BLOCK): a buffer
    // outside guest memory ends the guest, whichever thread serves it.
    for what in ["ring-block-oob", "serve-block-oob"] {
        v.push(case(format!("hvt::hostile_{what}"), HVT, move || {
            let (r, _) = hostile_dsync(what)?;
            r.expect_status(1)?;
            r.expect_stderr("block ring write: Invalid guest access: gpa=0xfff00000, sz=512")
        }));
    }
    v.push(case("hvt::ring_block_writes_answer_einval_outside_the_device_and_land_inside_it", HVT, || {
        let (r, disk) = hostile_dsync("ring-block-answers")?;
        r.expect_status(0)?;
        // Handles 0, 99 and 2^32 - 1; an offset at the end, a range past
        // it, an offset that overflows: EINVAL (2). Then the good write.
        r.expect_stdout("hostile: block ring answers: [2, 2, 2, 2, 2, 2, 0]")?;
        if disk[4096..5120].iter().any(|&b| b != 0xa5) || disk[..4096].iter().chain(&disk[5120..]).any(|&b| b != 0) {
            return Err(format!("the disk does not hold exactly the one good write\n{}", r.dump()));
        }
        Ok(())
    }));
    v.push(case("hvt::a_serve_request_waits_for_the_block_write_the_thread_has_taken", HVT, || {
        let (r, _) = hostile_dsync("ring-block-serve-waits")?;
        r.expect_status(0)?;
        r.expect_stdout("hostile: committed when the serve returned: true")
    }));
    v.push(case("hvt::ring_block_is_not_offered_without_a_flush_grant", HVT, || {
        let r = hostile("ring-block-answers")?;
        r.expect_status(0)?;
        r.expect_stdout("hostile: the tender offers no block ring")
    }));
    for what in ["blk-einval", "flush-einval", "wsync-einval"] {
        v.push(case(format!("hvt::hostile_{what}"), HVT, move || {
            let r = hostile(what)?;
            r.expect_status(0)?;
            r.expect_stdout("SUCCESS")
        }));
    }
    // A guest at CPL 0 with the tender's page tables, as Solo5's C guests
    // run, doing what no hypercall allows.
    let raw: &[(&str, &str)] = &[
        ("i", "Invalid guest port access: port=0x502"),
        ("b", "Invalid guest port access: port=0x502"),
        ("w", "Invalid guest port access: port=0x502"),
        ("h", "KVM: unhandled exit: exit_reason=0x5"),
        // A triple fault: the hypervisor reports a shutdown or, when its
        // instruction emulator gives up first, an internal error.
        ("t", "KVM: "),
    ];
    for &(what, message) in raw {
        v.push(case(format!("hvt::raw_cpl0_{what}"), HVT, move || {
            let r = boot("hvt", &[], "raw", &[what])?;
            no_panic(&r)?;
            r.expect_status(1)?;
            r.expect_stderr(message)
        }));
    }
}

/// On spt the guest is the tender's process and no tender code runs after
/// the jump to it: what protects the host is the kernel, which checks every
/// pointer of every system call (EFAULT, never a crash), and the seccomp
/// filter, which kills the process (SIGSYS, status 159, as Solo5's) for any
/// call, descriptor or block range it does not allow.
fn spt_cases(v: &mut Vec<Case>) {
    const SPT: Needs = Needs::Target("spt");
    // A tap granted receive offload: the filter allows the one ioctl that
    // asks for it, and kills the guest for any other.
    let net = |what: &str| -> Result<(i32, String), String> {
        let ns = Netns::new()?;
        let mut c = ns.command(tender("spt"));
        c.arg("--net:service=tap0").arg(guest("spt", "hostile-net")?).arg(what);
        let mut g = Background::start(c)?;
        let status = g.wait(Duration::from_secs(30))?;
        Ok((status, g.output()))
    };
    v.push(case("spt::the_receive_offload_ioctl_is_allowed_on_a_granted_tap", Needs::Net("spt"), move || {
        let (status, out) = net("ioctl-granted")?;
        if status != 0 || !out.contains("granted: true") || !out.contains("receive offload's flags: 0") {
            return Err(format!("status {status}:\n{out}"));
        }
        Ok(())
    }));
    for what in ["ioctl-other-flags", "ioctl-other-request"] {
        v.push(case(format!("spt::hostile_{what}_is_killed_by_the_filter"), Needs::Net("spt"), move || {
            let (status, out) = net(what)?;
            if status != 159 || !out.contains("granted: true") {
                return Err(format!("status {status} instead of 159 (SIGSYS):\n{out}"));
            }
            Ok(())
        }));
    }
    // `attach` is `--block` (Solo5's) or `--block-dsync` (ours, which
    // grants a second descriptor).
    let run_with = |attach: &str, what: &str| -> Result<testkit::Run, String> {
        let dir = Scratch::new("hostile-spt");
        let disk = dir.file("disk.img", 4 << 20);
        boot("spt", &[&format!("{attach}:storage={}", disk.display())], "hostile-spt", &[what])
    };
    let run = move |what: &str| run_with("--block", what);
    v.push(case("spt::hostile_pointers_get_efault", SPT, move || {
        let r = run("efault")?;
        r.expect_status(0)?;
        r.expect_stdout("SUCCESS: 12 hostile system calls got EFAULT")
    }));
    for what in [
        "getpid",
        "open",
        "mprotect-exec",
        "pwrite-past-end",
        "pwrite-three-blocks",
        "pwrite-run-past-end",
        "write-other-fd",
        "fdatasync-hostfd",
    ] {
        v.push(case(format!("spt::hostile_{what}_is_killed_by_the_filter"), SPT, move || {
            let r = run(what)?;
            if r.stdout.contains("hostile-spt: unknown") {
                return Err(r.dump());
            }
            r.expect_status(159)
        }));
    }
    // With `--block-dsync:` the granted descriptor takes runs of 2^k
    // blocks up to 1 MiB inside the device, and nothing else.
    let granted = move |what: &str| run_with("--block-dsync", what);
    v.push(case("spt::runs_of_2k_blocks_are_allowed", SPT, move || {
        let r = run("run")?;
        r.expect_status(0)?;
        r.expect_stdout("SUCCESS: a run of 2 blocks")
    }));
    v.push(case("spt::granted_runs_of_2k_blocks_are_allowed", SPT, move || {
        let r = granted("granted-run")?;
        r.expect_status(0)?;
        r.expect_stdout("SUCCESS: runs of 2 and 4 blocks")
    }));
    for what in ["granted-run-past-end", "granted-run-of-3", "granted-run-over-1-mib"] {
        v.push(case(format!("spt::hostile_{what}_is_killed_by_the_filter"), SPT, move || {
            let r = granted(what)?;
            if r.stdout.contains("hostile-spt: unknown") {
                return Err(r.dump());
            }
            r.expect_status(159)
        }));
    }
}

const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// Makes the last `PT_LOAD` of ELF64 image `elf` end one page past 2 MiB,
/// with flags `flags`, its bytes zeroes from the file (appended to it), so
/// that a read-only one is mapped read-only to its last page.
fn reach_past_2_mib(elf: &mut Vec<u8>, flags: u32) -> Result<(), String> {
    let u16_at = |e: &[u8], at: usize| u16::from_le_bytes([e[at], e[at + 1]]) as usize;
    let u64_at = |e: &[u8], at: usize| u64::from_le_bytes(e[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(elf, 0x20) as usize, u16_at(elf, 0x36), u16_at(elf, 0x38));
    let last = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1)
        .max_by_key(|&ph| u64_at(elf, ph + 0x10))
        .ok_or("the guest has no PT_LOAD")?;
    let vaddr = u64_at(elf, last + 0x10);
    if vaddr >= 0x20_0000 || vaddr % 0x1000 != 0 {
        return Err(format!("the guest's last segment starts at {vaddr:#x}"));
    }
    let size = 0x20_1000 - vaddr;
    let offset = elf.len().next_multiple_of(0x1000) as u64;
    elf.resize((offset + size) as usize, 0);
    elf[last + 4..last + 8].copy_from_slice(&flags.to_le_bytes());
    elf[last + 8..last + 0x10].copy_from_slice(&offset.to_le_bytes());
    elf[last + 0x20..last + 0x28].copy_from_slice(&size.to_le_bytes());
    elf[last + 0x28..last + 0x30].copy_from_slice(&size.to_le_bytes());
    Ok(())
}
