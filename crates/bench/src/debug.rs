//! Debugging on hvt: what the debug file costs (the image stays the size
//! it was; the debug information is a file beside it) and how long
//! `--dumpcore` takes to write the core of a 32 MiB guest.

use std::process::Command;

use testkit::{Scratch, example_with, guest, tender};

use crate::{Options, machine, measure, median};

/// The core's cost: the guest's run to its abort with `--dumpcore`, less
/// the same run without, median of `runs` each (interleaved, so that load
/// from elsewhere falls on both alike).
fn dump_time(o: &Options, args: &[&str]) -> Result<(f64, f64, u64), String> {
    let scratch = Scratch::new("cores");
    let fault = guest("hvt", "fault")?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut core_bytes = 0;
    for i in 0..o.runs + 2 {
        let mut c = Command::new(tender("hvt"));
        c.arg("--mem=32").arg(&fault).args(args);
        let (plain, status) = measure(&mut c)?;
        if status != 255 {
            return Err(format!("fault {args:?} exited with {status}, not 255"));
        }
        let mut c = Command::new(tender("hvt"));
        c.arg("--mem=32").arg(format!("--dumpcore={}", scratch.0.display())).arg(&fault).args(args);
        let (dumped, status) = measure(&mut c)?;
        if status != 255 {
            return Err(format!("fault {args:?} with --dumpcore exited with {status}, not 255"));
        }
        // Each core is written, measured, and removed before the next run.
        for e in std::fs::read_dir(&scratch.0).map_err(|e| e.to_string())?.flatten() {
            use std::os::unix::fs::MetadataExt;
            core_bytes = e.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
            let _ = std::fs::remove_file(e.path());
        }
        if i >= 2 {
            without.push(plain.as_secs_f64() * 1e3);
            with.push(dumped.as_secs_f64() * 1e3);
        }
    }
    Ok((median(&mut without), median(&mut with), core_bytes))
}

pub fn debug(o: &Options) -> Result<(), String> {
    machine();
    println!("Images built by mirage build for hvt, and the debug files beside them");
    println!();
    println!("| example | dist/NAME.hvt | dist/NAME.hvt.debug |");
    println!("|---|---|---|");
    for name in ["hello", "static-website"] {
        let image = example_with("hvt", name, &[])?;
        let debug = image.with_file_name(format!("{name}.hvt.debug"));
        let size =
            |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| format!("{}: {e}", p.display()));
        println!("| {name} | {} bytes | {} bytes |", size(&image)?, size(&debug)?);
    }
    println!();
    println!(
        "--dumpcore with a 32 MiB guest (--mem=32): the run to the abort without and with the core, median of {} runs",
        o.runs
    );
    println!();
    println!("| guest | without | with --dumpcore | the core's cost | core on disk |");
    println!("|---|---|---|---|---|");
    for (label, args) in [("aborts at once", &["abort"][..]), ("aborts after writing 24 MiB of heap", &["touch", "24"])]
    {
        let (without, with, bytes) = dump_time(o, args)?;
        println!(
            "| {label} | {without:.2} ms | {with:.2} ms | {:.2} ms | {:.1} MiB |",
            with - without,
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
