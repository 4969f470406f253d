//! The container's network, given to the unikernel: a tap device in the
//! container's network namespace joined to the namespace's interface
//! (the veth a CNI plugin or the user made) by two tc `mirred` redirects,
//! as urunc does. The interface's IPv4 address, prefix and default
//! gateway become the unikernel's boot arguments, and the address leaves
//! the interface, so that the host's stack in the namespace neither
//! answers for it nor sends from it; the unikernel uses the interface's
//! MAC address, so neighbours and static entries made for the interface
//! stay right. `teardown` puts the address and route back.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::Failure;

/// The tap device of the first network interface; further ones are
/// `tapN_mirage`, unconnected.
pub fn tap_name(n: usize) -> String {
    format!("tap{n}_mirage")
}

/// The namespace's interface, as it was before the unikernel took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub address: String,
    pub prefix: u8,
    pub gateway: Option<String>,
    pub mac: String,
    pub mtu: u32,
}

impl Uplink {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "address": self.address, "prefix": self.prefix,
            "gateway": self.gateway, "mac": self.mac, "mtu": self.mtu,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Uplink> {
        Some(Uplink {
            name: v["name"].as_str()?.to_string(),
            address: v["address"].as_str()?.to_string(),
            prefix: u8::try_from(v["prefix"].as_u64()?).ok()?,
            gateway: v["gateway"].as_str().map(String::from),
            mac: v["mac"].as_str()?.to_string(),
            mtu: u32::try_from(v["mtu"].as_u64()?).ok()?,
        })
    }
}

/// A command run in the network namespace `ns`.
fn command(ns: Option<&File>, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    if let Some(ns) = ns {
        let fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and
        // makes one async-signal-safe system call on a descriptor the
        // parent keeps open across the spawn.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c
}

/// Runs `program args` in `ns`; its standard output, or its error.
fn run(ns: Option<&File>, program: &str, args: &[&str]) -> Result<String, String> {
    batch(ns, program, args, "")
}

/// Runs `program args` in `ns` with `input` on its standard input (the
/// `-batch -` of ip and tc: one process for many commands, where each
/// costs a process start, milliseconds on a busy host).
fn batch(ns: Option<&File>, program: &str, args: &[&str], input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = command(ns, program, args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        let what = if input.is_empty() { args.join(" ") } else { input.trim().replace('\n', "; ") };
        return Err(format!("{program} {what}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn failure(step: &str, e: String) -> Failure {
    Failure::new(
        format!("{step}: {e}"),
        "mirage-runc needs iproute2's ip and tc, and the kernel's tun, u32 and mirred; check that the namespace's interface is up",
    )
}

/// The namespace's devices and default routes, as `ip -j` gives them.
pub struct Links {
    links: serde_json::Value,
    routes: serde_json::Value,
}

/// Lists the devices, addresses and default routes of `ns`, in one `ip`.
pub fn links(ns: Option<&File>) -> Result<Links, Failure> {
    let out = batch(ns, "ip", &["-j", "-batch", "-"], "addr show\nroute show default\n")
        .map_err(|e| failure("listing the namespace's devices", e))?;
    Ok(Links::parse(&out))
}

impl Links {
    /// Reads the two JSON documents of `links`' batch; what is not JSON
    /// reads as no devices.
    fn parse(text: &str) -> Links {
        let mut values = serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>();
        let mut next = || values.next().and_then(Result::ok).unwrap_or(serde_json::Value::Null);
        Links { links: next(), routes: next() }
    }

    /// Whether device `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.links.as_array().into_iter().flatten().any(|l| l["ifname"] == name)
    }

    /// The interface the unikernel takes: the first, other than the
    /// loopback, with a global IPv4 address. `None` when there is none (a
    /// namespace with no network: the unikernel gets an unconnected tap
    /// device, as a container there gets only a loopback).
    pub fn uplink(&self) -> Option<Uplink> {
        for link in self.links.as_array().into_iter().flatten() {
            let Some(name) = link["ifname"].as_str() else { continue };
            if name == "lo" || name.starts_with("tap") && name.ends_with("_mirage") {
                continue;
            }
            let Some(inet) = link["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["family"] == "inet" && a["scope"] == "global")
            else {
                continue;
            };
            let (Some(address), Some(prefix)) = (inet["local"].as_str(), inet["prefixlen"].as_u64()) else {
                continue;
            };
            let gateway = self
                .routes
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["dev"] == name)
                .and_then(|r| r["gateway"].as_str())
                .map(String::from);
            return Some(Uplink {
                name: name.to_string(),
                address: address.to_string(),
                prefix: prefix as u8,
                gateway,
                mac: link["address"].as_str().unwrap_or_default().to_string(),
                mtu: link["mtu"].as_u64().unwrap_or(1500) as u32,
            });
        }
        None
    }
}

/// Creates the tap devices `taps` (name, MTU) in `ns`, up, and joins the
/// first to `uplink`, taking the address off the uplink: one `ip` and
/// one `tc`.
pub fn set_up(
    ns: Option<&File>,
    links: &Links,
    taps: &[(String, u32)],
    uplink: Option<&Uplink>,
) -> Result<(), Failure> {
    if let Some((tap, _)) = taps.iter().find(|(t, _)| links.has(t)) {
        return Err(Failure::new(
            format!("the network namespace has a device {tap} already: another unikernel container uses it"),
            "give each unikernel container a network namespace of its own (one unikernel per pod)",
        ));
    }
    let mut ip_commands = String::new();
    for (tap, mtu) in taps {
        ip_commands.push_str(&format!("tuntap add dev {tap} mode tap\nlink set dev {tap} mtu {mtu} up\n"));
    }
    let (Some(u), Some((tap, _))) = (uplink, taps.first()) else {
        return batch(ns, "ip", &["-batch", "-"], &ip_commands)
            .map(drop)
            .map_err(|e| failure("creating the tap devices", e));
    };
    // Redirect each way on ingress, then move the address.
    let redirect = |from: &str, to: &str| {
        format!(
            "qdisc add dev {from} ingress\nfilter add dev {from} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {to}\n"
        )
    };
    ip_commands.push_str(&format!("addr del {}/{} dev {}\n", u.address, u.prefix, u.name));
    let (first, moved) = ip_commands.split_at(ip_commands.find("addr del").unwrap_or(ip_commands.len()));
    batch(ns, "ip", &["-batch", "-"], first).map_err(|e| failure("creating the tap devices", e))?;
    let tc = format!("{}{}", redirect(&u.name, tap), redirect(tap, &u.name));
    batch(ns, "tc", &["-batch", "-"], &tc).map_err(|e| failure("joining the tap device to the interface", e))?;
    batch(ns, "ip", &["-batch", "-"], moved).map_err(|e| failure("moving the address to the unikernel", e))?;
    Ok(())
}

/// Undoes `set_up`, as far as it went: every step is tried,
/// each failure ignored (the device or queue may not exist), so that a
/// half-made network is cleaned up as well as a whole one.
pub fn teardown(ns: Option<&File>, taps: &[String], uplink: Option<&Uplink>) {
    if let Some(u) = uplink {
        let _ = run(ns, "tc", &["qdisc", "del", "dev", &u.name, "ingress"]);
    }
    for tap in taps {
        let _ = run(ns, "ip", &["link", "del", "dev", tap]);
    }
    if let Some(u) = uplink {
        let cidr = format!("{}/{}", u.address, u.prefix);
        let _ = run(ns, "ip", &["addr", "add", &cidr, "dev", &u.name]);
        if let Some(gw) = &u.gateway {
            let _ = run(ns, "ip", &["route", "add", "default", "via", gw, "dev", &u.name]);
        }
    }
}

/// Creates the named network namespace `name` (`/var/run/netns/NAME`),
/// for a container whose configuration asks for a new one.
pub fn add_netns(name: &str) -> Result<String, Failure> {
    run(None, "ip", &["netns", "add", name]).map_err(|e| failure("creating a network namespace", e))?;
    Ok(format!("/var/run/netns/{name}"))
}

pub fn del_netns(name: &str) {
    let _ = run(None, "ip", &["netns", "del", name]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -j -batch -` with `addr show` and `route show default`, as
    /// iproute2 6.1 prints them for a CNI-like namespace.
    const IP: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,"address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},{"ifindex":3,"ifname":"tap0_mirage","mtu":1500,"address":"aa:aa:aa:aa:aa:aa","addr_info":[]},{"ifindex":2,"link_index":2,"ifname":"eth0","mtu":1450,"address":"ba:ff:78:21:18:f8","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},{"family":"inet","local":"10.244.1.7","prefixlen":24,"scope":"global"}]}]
[{"dst":"default","gateway":"10.244.1.1","dev":"eth0","flags":[]}]
"#;

    fn parse(text: &str) -> Links {
        Links::parse(text)
    }

    #[test]
    fn the_uplink_is_the_first_global_ipv4_interface() {
        let links = parse(IP);
        let u = links.uplink().unwrap();
        assert_eq!(
            u,
            Uplink {
                name: "eth0".into(),
                address: "10.244.1.7".into(),
                prefix: 24,
                gateway: Some("10.244.1.1".into()),
                mac: "ba:ff:78:21:18:f8".into(),
                mtu: 1450,
            }
        );
        assert_eq!(Uplink::from_json(&u.to_json()), Some(u));
        assert!(links.has("tap0_mirage") && !links.has("tap1_mirage"));
    }

    #[test]
    fn a_namespace_without_an_address_has_no_uplink() {
        let links = parse(
            r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]}] []"#,
        );
        assert_eq!(links.uplink(), None);
        // Output ip did not give (an old iproute2 without -j): no uplink,
        // not a panic.
        assert_eq!(parse("garbage").uplink(), None);
    }
}
