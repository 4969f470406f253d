//! Hostile guests: every bad pointer, length, handle or port ends the guest
//! with a message from the tender and status 1; the tender never panics.

use testkit::{Scratch, boot};
use crate::{Case, Needs, case};

const HVT: Needs = Needs::Target("hvt");

fn no_panic(r: &testkit::Run) -> Result<(), String> {
    if r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE") {
        return Err(format!("the tender panicked\n{}", r.dump()));
    }
    Ok(())
}

pub fn cases(v: &mut Vec<Case>) {
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
    ];
    for &(what, message) in fatal {
        v.push(case(format!("hvt::hostile_{what}"), HVT, move || {
            let dir = Scratch::new("hostile");
            let disk = dir.file("disk.img", 1 << 20);
            let r = boot("hvt", &[&format!("--block:storage={}", disk.display())], "hostile", &[what])?;
            no_panic(&r)?;
            r.expect_status(1)?;
            r.expect_stderr(message)?;
            if r.stdout.contains("the tender accepted") {
                return Err(format!("the tender accepted {what}\n{}", r.dump()));
            }
            Ok(())
        }));
    }
    v.push(case("hvt::hostile_block_requests_get_einval", HVT, || {
        let dir = Scratch::new("hostile");
        let disk = dir.file("disk.img", 1 << 20);
        let r = boot("hvt", &[&format!("--block:storage={}", disk.display())], "hostile", &["blk-einval"])?;
        no_panic(&r)?;
        r.expect_status(0)?;
        r.expect_stdout("SUCCESS")
    }));
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
