//! The kv-server example end to end on unix, hvt and spt: values stored
//! over HTTP (GET, PUT, DELETE under /kv/) in a crash-safe store on a disk
//! image are there after the unikernel is killed with SIGKILL and booted
//! again, and the host's `mirage kv` reads the same image; configured
//! `--kv-rw=fat`, it shares a FAT image with the host's mtools.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{Background, Netns, Scratch, example_with, mirage, noise, run, run_with};

use crate::{Case, Needs, case};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Boots the kv-server on `disk` as `mirage run` does for a durable store:
/// `--block-dsync:` on hvt and spt, whose flushes sync.
fn start(ns: &Netns, t: &str, image: &Path, disk: &Path) -> Result<Background, String> {
    start_attached(ns, t, image, disk, if t == "unix" { "--block" } else { "--block-dsync" })
}

/// Boots the kv-server on `disk` attached with `attach`.
fn start_attached(ns: &Netns, t: &str, image: &Path, disk: &Path, attach: &str) -> Result<Background, String> {
    let block = format!("{attach}:data={}", disk.display());
    let mut c = ns.unikernel(t, image, &["--net:service=tap0", &block]);
    c.arg("--ipv4=10.0.0.2/24");
    let mut bg = Background::start(c)?;
    bg.wait_for("kv-server: serving", Duration::from_secs(30))?;
    Ok(bg)
}

/// `method path` with `body` through curl in `ns`: the status and the
/// response body.
fn http(ns: &Netns, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), String> {
    let scratch = Scratch::new("kv-curl");
    let out = scratch.0.join("out");
    let mut c: Command = ns.command("curl");
    c.args(["-s", "-S", "--path-as-is", "--max-time", "30", "-X", method, "-o"]).arg(&out).args(["-w", "%{http_code}"]);
    if let Some(b) = body {
        let input = scratch.0.join("in");
        std::fs::write(&input, b).map_err(|e| e.to_string())?;
        c.arg("--data-binary").arg(format!("@{}", input.display()));
    }
    c.arg(format!("http://{GUEST}{path}"));
    let r = run_with(c, Duration::from_secs(40))?;
    let status = r.stdout.trim().parse().map_err(|_| format!("curl {method} {path}: {}", r.dump()))?;
    Ok((status, std::fs::read(&out).unwrap_or_default()))
}

fn expect(got: (u16, Vec<u8>), status: u16, body: Option<&[u8]>, what: &str) -> Result<(), String> {
    if got.0 != status {
        return Err(format!("{what}: status {} (want {status}): {}", got.0, String::from_utf8_lossy(&got.1)));
    }
    if let Some(b) = body
        && got.1 != b
    {
        return Err(format!("{what}: {} bytes came back, not the {} stored", got.1.len(), b.len()));
    }
    Ok(())
}

fn keeps_its_data(t: &str) -> Result<(), String> {
    let keys: &[&str] = if t == "unix" { &["--net=direct"] } else { &[] };
    let image = example_with(t, "kv-server", keys)?;
    // `mirage build` formatted the example's own image.
    let made = testkit::root().join("examples/kv-server/dist/data.img");
    run(mirage()?, &["kv".as_ref(), "check".as_ref(), made.as_os_str()])?.expect_status(0)?;
    let scratch = Scratch::new("kv-server");
    let disk = scratch.0.join("data.img");
    let tool = mirage()?;
    let r = run(&tool, &["kv".as_ref(), "format".as_ref(), disk.as_os_str(), "--size=8M".as_ref()])?;
    r.expect_status(0)?;
    let big = noise(7, 1 << 20);
    let ns = Netns::new()?;
    {
        let g = start(&ns, t, &image, &disk)?;
        if g.output().contains("warning") {
            return Err(format!("a warning with flushes granted:\n{}", g.output()));
        }
        expect(http(&ns, "PUT", "/kv/a/b", Some(b"one"))?, 204, None, "PUT /kv/a/b")?;
        expect(http(&ns, "PUT", "/kv/a/b", Some(b"two"))?, 204, None, "overwriting /kv/a/b")?;
        expect(http(&ns, "PUT", "/kv/big", Some(&big))?, 204, None, "PUT of 1 MiB")?;
        expect(http(&ns, "PUT", "/kv/empty", Some(b""))?, 204, None, "PUT of nothing")?;
        expect(http(&ns, "PUT", "/kv/gone", Some(b"x"))?, 204, None, "PUT /kv/gone")?;
        expect(http(&ns, "DELETE", "/kv/gone", None)?, 204, None, "DELETE /kv/gone")?;
        expect(http(&ns, "GET", "/kv/gone", None)?, 404, None, "GET of a removed key")?;
        expect(http(&ns, "DELETE", "/kv/never", None)?, 404, None, "DELETE of a missing key")?;
        expect(http(&ns, "PUT", "/kv/a/b/c", Some(b"x"))?, 409, None, "PUT under a value")?;
        expect(http(&ns, "PUT", "/kv/a/../b", Some(b"x"))?, 400, None, "PUT of an invalid key")?;
        expect(http(&ns, "POST", "/kv/a/b", Some(b"x"))?, 405, None, "POST")?;
        expect(http(&ns, "GET", "/kv/", None)?, 200, Some(b"a/\nbig\nempty\n"), "GET /kv/ (the listing)")?;
        // Dropping the guard kills the unikernel with SIGKILL: no chance
        // to flush anything more.
    }
    {
        let _g = start(&ns, t, &image, &disk)?;
        expect(http(&ns, "GET", "/kv/a/b", None)?, 200, Some(b"two"), "GET /kv/a/b after a restart")?;
        expect(http(&ns, "GET", "/kv/big", None)?, 200, Some(&big), "GET of 1 MiB after a restart")?;
        expect(http(&ns, "GET", "/kv/empty", None)?, 200, Some(b""), "GET of nothing after a restart")?;
        expect(http(&ns, "GET", "/kv/gone", None)?, 404, None, "GET of a removed key after a restart")?;
        expect(http(&ns, "DELETE", "/kv/a", None)?, 204, None, "DELETE of a dictionary")?;
    }
    // The host reads the same image.
    let r = run(&tool, &["kv".as_ref(), "get".as_ref(), disk.as_os_str(), "/empty".as_ref()])?;
    r.expect_status(0)?;
    let r = run(&tool, &["kv".as_ref(), "ls".as_ref(), disk.as_os_str()])?;
    r.expect_status(0)?;
    if r.stdout.contains("/a/b") || !r.stdout.contains(&format!("{}  /big", 1 << 20)) {
        return Err(format!("mirage kv ls after the changes: {}", r.dump()));
    }
    run(&tool, &["kv".as_ref(), "check".as_ref(), disk.as_os_str()])?.expect_status(0)
}

/// Runs a host tool of dosfstools or mtools on `disk`; its output.
fn host_tool(program: &str, args: &[&str], disk: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new(program)
        .args(args.iter().map(|a| a.replace("DISK", &disk.display().to_string())))
        .output()
        .map_err(|e| format!("{program}: {e} (install dosfstools and mtools)"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// The kv-server configured `--kv-rw=fat` serves a FAT image made by
/// `mkfs.fat` and filled by `mcopy`: it reads the host's file, and what it
/// writes the host reads with mtools, and `fsck.fat` finds the volume clean,
/// after a SIGKILL and a restart.
fn shares_a_fat_image_with_the_host(t: &str) -> Result<(), String> {
    let keys: &[&str] = if t == "unix" { &["--net=direct", "--kv-rw=fat"] } else { &["--kv-rw=fat"] };
    let image = example_with(t, "kv-server", keys)?;
    let scratch = Scratch::new("kv-fat");
    let disk = scratch.0.join("data.img");
    host_tool("mkfs.fat", &["-C", "-F", "16", "-n", "MIRAGE", "DISK", "16384"], &disk)?;
    let from_host = noise(3, 70_000);
    let host_file = scratch.0.join("from-host");
    std::fs::write(&host_file, &from_host).map_err(|e| e.to_string())?;
    host_tool("mmd", &["-i", "DISK", "::/notes"], &disk)?;
    let dst = "::/notes/written-by-the-host.bin";
    host_tool("mcopy", &["-i", "DISK", host_file.to_str().unwrap_or_default(), dst], &disk)?;
    let big = noise(11, 1 << 20);
    let ns = Netns::new()?;
    {
        let _g = start(&ns, t, &image, &disk)?;
        let got = http(&ns, "GET", "/kv/notes/written-by-the-host.bin", None)?;
        expect(got, 200, Some(&from_host), "GET of the host's file")?;
        let got = http(&ns, "PUT", "/kv/from-the-unikernel/a-long-file-name.bin", Some(&big))?;
        expect(got, 204, None, "PUT of 1 MiB")?;
        expect(http(&ns, "PUT", "/kv/small.txt", Some(b"small"))?, 204, None, "PUT small")?;
        expect(http(&ns, "PUT", "/kv/gone", Some(b"x"))?, 204, None, "PUT /kv/gone")?;
        expect(http(&ns, "DELETE", "/kv/gone", None)?, 204, None, "DELETE /kv/gone")?;
        // Killed with SIGKILL: every acknowledged change was flushed.
    }
    host_tool("fsck.fat", &["-n", "DISK"], &disk)?;
    let got = host_tool("mtype", &["-i", "DISK", "::/from-the-unikernel/a-long-file-name.bin"], &disk)?;
    if got != big {
        return Err(format!("mtype read {} bytes, not the 1 MiB the unikernel stored", got.len()));
    }
    let got = host_tool("mtype", &["-i", "DISK", "::/small.txt"], &disk)?;
    if got != b"small" {
        return Err(format!("mtype read {:?} of small.txt", String::from_utf8_lossy(&got)));
    }
    let listing = String::from_utf8_lossy(&host_tool("mdir", &["-i", "DISK", "::/"], &disk)?).to_string();
    if listing.contains("gone") || !listing.contains("from-the-unikernel") {
        return Err(format!("mdir after the changes: {listing}"));
    }
    // The host changes the image; the unikernel sees it after a restart.
    host_tool("mdel", &["-i", "DISK", "::/small.txt"], &disk)?;
    {
        let _g = start(&ns, t, &image, &disk)?;
        expect(http(&ns, "GET", "/kv/small.txt", None)?, 404, None, "GET of a file the host removed")?;
        let got = http(&ns, "GET", "/kv/from-the-unikernel/a-long-file-name.bin", None)?;
        expect(got, 200, Some(&big), "GET of 1 MiB after a restart")?;
    }
    host_tool("fsck.fat", &["-n", "DISK"], &disk)?;
    run(mirage()?, &["kv".as_ref(), "check".as_ref(), disk.as_os_str()])?.expect_status(0)
}

/// Crash trials in CI: enough to kill the writer in every phase of a
/// change many times over; `mirage-bench crash` runs 1,000 a target.
const TRIALS: usize = 150;

fn survives_kills(t: &str, attach: &str) -> Result<(), String> {
    let image = example_with(t, "kv-writer", &[])?;
    let scratch = Scratch::new("kv-crash");
    let disk = scratch.0.join("data.img");
    run(mirage()?, &["kv".as_ref(), "format".as_ref(), disk.as_os_str(), "--size=64M".as_ref()])?.expect_status(0)?;
    let outcome = testkit::crash::run(t, &image, &disk, attach, TRIALS, Duration::from_millis(300), &mut |line| {
        eprintln!("{t}: {line}")
    })?;
    eprintln!("{t}: {outcome}");
    if outcome.acknowledged == 0 || outcome.trials - outcome.before_any < TRIALS / 2 {
        return Err(format!("{t}: too few trials reached the writing ({outcome}): the kills came too early"));
    }
    Ok(())
}

/// The durable store attached without flushes (`--block:`, as on Solo5's
/// own tender) still serves, and says on the console what it lacks.
fn warns_without_flushes(t: &str) -> Result<(), String> {
    let image = example_with(t, "kv-server", &[])?;
    let scratch = Scratch::new("kv-unflushed");
    let disk = scratch.0.join("data.img");
    run(mirage()?, &["kv".as_ref(), "format".as_ref(), disk.as_os_str(), "--size=8M".as_ref()])?.expect_status(0)?;
    let ns = Netns::new()?;
    let g = start_attached(&ns, t, &image, &disk, "--block")?;
    let want =
        "kv-server: warning: the kv-rw store \"data\" is durable, but block device data was attached without flushes";
    if !g.output().contains(want) || !g.output().contains("--block-dsync:data=PATH") {
        return Err(format!("no warning naming the store and the fix:\n{}", g.output()));
    }
    expect(http(&ns, "PUT", "/kv/a", Some(b"one"))?, 204, None, "PUT /kv/a")?;
    expect(http(&ns, "GET", "/kv/a", None)?, 200, Some(b"one"), "GET /kv/a")
}

pub fn cases(v: &mut Vec<Case>) {
    for t in ["hvt", "spt"] {
        v.push(case(format!("{t}::kv_server_warns_when_its_durable_store_has_no_flushes"), Needs::Net(t), move || {
            warns_without_flushes(t)
        }));
    }
    for t in ["unix", "hvt", "spt"] {
        v.push(case(format!("{t}::kv_server_keeps_its_data_across_a_kill"), Needs::Net(t), move || keeps_its_data(t)));
    }
    for t in ["unix", "hvt", "spt"] {
        v.push(case(format!("{t}::kv_server_shares_a_fat_image_with_the_host"), Needs::Net(t), move || {
            shares_a_fat_image_with_the_host(t)
        }));
    }
    for t in ["hvt", "spt"] {
        v.push(case(
            format!("{t}::kv_store_keeps_every_acknowledged_change_through_sigkill"),
            Needs::Target(t),
            move || survives_kills(t, "--block"),
        ));
        // The same through flushes: writes through the tender's second
        // descriptor, each change acknowledged after its fdatasync.
        v.push(case(
            format!("{t}::kv_store_keeps_every_acknowledged_change_through_sigkill_with_flushes"),
            Needs::Target(t),
            move || survives_kills(t, "--block-dsync"),
        ));
    }
}
