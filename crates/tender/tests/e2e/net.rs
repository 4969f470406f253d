//! Networking through a real tap device in a network namespace of the
//! test's own: the responder answers ping, a flood of 10,000 pings comes
//! back without loss, the MTU reaches the guest, and on hvt the ring
//! carries payloads intact.

use std::process::Command;
use std::time::Duration;

use crate::{Case, Needs, case};
use testkit::{Background, Netns, guest, run_with, tender};

fn start(ns: &Netns, t: &str, args: &[&str]) -> Result<Background, String> {
    let mut c = ns.command(tender(t));
    c.arg("--net:service=tap0").arg(guest(t, "net")?).args(args);
    let mut bg = Background::start(c)?;
    bg.wait_for("net: serving", Duration::from_secs(20))?;
    Ok(bg)
}

fn ping(ns: &Netns, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut c: Command = ns.command("ping");
    c.args(args).arg("10.0.0.2");
    let r = run_with(c, limit)?;
    if r.status() != 0 {
        return Err(format!("ping {args:?} failed: {}", r.dump()));
    }
    Ok(r.stdout)
}

pub fn cases(v: &mut Vec<Case>) {
    for t in ["hvt", "spt"] {
        let n = Needs::Net(t);
        v.push(case(format!("{t}::net_answers_ping"), n, move || {
            let ns = Netns::new()?;
            let mut g = start(&ns, t, &["limit=3"])?;
            let out = ping(&ns, &["-c", "3", "-i", "0.2", "-W", "5"], Duration::from_secs(20))?;
            if !out.contains("3 received") {
                return Err(format!("ping lost packets:\n{out}"));
            }
            let status = g.wait(Duration::from_secs(10))?;
            if status != 0 || !g.output().contains("answered 3 pings") {
                return Err(format!("responder exited with {status}:\n{}", g.output()));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::net_flood_of_10000_pings_without_loss"), n, move || {
            let ns = Netns::new()?;
            let mut g = start(&ns, t, &["limit=10001"])?;
            ping(&ns, &["-c", "1", "-W", "5"], Duration::from_secs(10))?;
            let out = ping(&ns, &["-f", "-c", "10000", "-q"], Duration::from_secs(120))?;
            if !out.contains("10000 packets transmitted, 10000 received, 0% packet loss") {
                return Err(format!("flood ping lost packets:\n{out}"));
            }
            let status = g.wait(Duration::from_secs(10))?;
            if status != 0 {
                return Err(format!("responder exited with {status}:\n{}", g.output()));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::net_payloads_arrive_intact"), n, move || {
            let ns = Netns::new()?;
            let mut g = start(&ns, t, &["pattern", "limit=2001"])?;
            ping(&ns, &["-c", "1", "-W", "5", "-p", "deadbeef"], Duration::from_secs(10))?;
            let out = ping(&ns, &["-f", "-c", "2000", "-q", "-p", "deadbeef", "-s", "1000"], Duration::from_secs(60))?;
            if !out.contains("2000 received") {
                return Err(format!("flood ping lost packets:\n{out}"));
            }
            let status = g.wait(Duration::from_secs(10))?;
            if status != 0 {
                return Err(format!("responder exited with {status}:\n{}", g.output()));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::net_virtio_header_granted_on_spt_alone"), n, move || {
            // Our spt tender opens the tap with IFF_VNET_HDR for an image
            // that asks (ours do), so that the guest may leave checksums to
            // the host; hvt's tender reads the tap itself and grants none,
            // but takes checksums to complete in the ring.
            let ns = Netns::new()?;
            let mut c = ns.command(tender(t));
            c.arg("--net:service=tap0").arg(guest(t, "net")?).arg("mtu");
            let r = run_with(c, Duration::from_secs(30))?;
            r.expect_status(0)?;
            r.expect_stdout(if t == "spt" { "virtio-net header: granted" } else { "virtio-net header: not granted" })?;
            r.expect_stdout("checksums left to the host: yes")
        }));
        v.push(case(format!("{t}::net_mtu_reaches_the_guest"), n, move || {
            let ns = Netns::new()?;
            ns.ip(&["link", "set", "tap0", "mtu", "9000"])?;
            let mut c = ns.command(tender(t));
            c.arg("--net:service=tap0").arg(guest(t, "net")?).arg("mtu");
            let r = run_with(c, Duration::from_secs(30))?;
            r.expect_status(0)?;
            r.expect_stdout("MTU is 9000")
        }));
        v.push(case(format!("{t}::net_mac_option_reaches_the_guest"), n, move || {
            let ns = Netns::new()?;
            let mut c = ns.command(tender(t));
            c.args(["--net:service=tap0", "--net-mac:service=02:aa:bb:cc:dd:01"]).arg(guest(t, "net")?).arg("limit=0");
            let r = run_with(c, Duration::from_secs(30))?;
            r.expect_stdout("(02:aa:bb:cc:dd:01, mtu 1500)")
        }));
        v.push(case(format!("{t}::net_interface_down_is_refused"), n, move || {
            let ns = Netns::new()?;
            ns.ip(&["link", "set", "tap0", "down"])?;
            let mut c = ns.command(tender(t));
            c.arg("--net:service=tap0").arg(guest(t, "net")?);
            let r = run_with(c, Duration::from_secs(30))?;
            r.expect_status(1)?;
            r.expect_stderr("Could not attach interface: tap0: Network is down")?;
            r.expect_stderr("  fix: bring it up (as root): ip link set tap0 up")
        }));
        v.push(case(format!("{t}::net_interface_busy_is_refused_with_the_fix"), n, move || {
            // A second tender on a tap device the first holds.
            let ns = Netns::new()?;
            let _first = start(&ns, t, &[])?;
            let mut c = ns.command(tender(t));
            c.arg("--net:service=tap0").arg(guest(t, "net")?);
            let r = run_with(c, Duration::from_secs(30))?;
            r.expect_status(1)?;
            r.expect_stderr("Could not attach interface: tap0: Device or resource busy")?;
            r.expect_stderr("  fix: another process (a unikernel still running?) has tap0 attached")?;
            if r.stderr.contains("usage:") {
                return Err(format!("the usage follows an attach error:\n{}", r.dump()));
            }
            Ok(())
        }));
    }
}
