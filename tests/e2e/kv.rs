//! The kv-server example end to end on unix, hvt and spt: values stored
//! over HTTP (GET, PUT, DELETE under /kv/) in a crash-safe store on a disk
//! image are there after the unikernel is killed with SIGKILL and booted
//! again, and the host's `mirage kv` reads the same image.

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
    let attach = if t == "unix" { "--block" } else { "--block-dsync" };
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
        let _g = start(&ns, t, &image, &disk)?;
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

pub fn cases(v: &mut Vec<Case>) {
    for t in ["unix", "hvt", "spt"] {
        v.push(case(format!("{t}::kv_server_keeps_its_data_across_a_kill"), Needs::Net(t), move || keeps_its_data(t)));
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
