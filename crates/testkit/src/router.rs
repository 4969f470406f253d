//! The router's laboratory, shared by its end-to-end tests and its
//! benchmark: three network namespaces, a client on the inside link, the
//! router between two links, a server on the uplink; the router is the
//! `router` example on a target, or Linux with nftables masquerade (the
//! reference).
//!
//! For the unikernel, the taps are made in the router's namespace, the
//! unikernel attaches them, and then each is moved into its peer's
//! namespace (an attached tap keeps working there), so that the client and
//! the server reach each other only through the router.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Background, Netns, Scratch, example, run_with};

/// The server, on the uplink's link.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The router's address on the uplink (the masquerade address).
pub const UPLINK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The router's address on the inside link: the client's gateway.
pub const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// The client: the first address of the router's default pool, its lease.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

/// The server's IPv6 address, on the uplink's link.
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// The router's IPv6 address on the uplink.
pub const UPLINK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The router's IPv6 address on the inside link: the client's gateway.
pub const INSIDE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// The client's IPv6 address (static: the router hands out no IPv6).
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x100);
/// The router's boot arguments for those addresses.
pub const IPV6_ARGS: [&str; 2] = ["--uplink-ipv6=fd00::2/64", "--inside-ipv6=fd00:1::2/64"];

/// The three namespaces with the router running between them.
#[derive(Debug)]
pub struct Lab {
    pub client: Netns,
    pub server: Netns,
    /// The router unikernel; `None` when Linux routes ([`Lab::linux`]).
    pub router: Option<Background>,
    _router_ns: Netns,
}

impl Lab {
    /// The router example on `t` with boot arguments `args` after the defaults',
    /// the taps moved out to the client and the server, the server's
    /// address set; the client has none yet.
    pub fn start(t: &str, args: &[&str]) -> Result<Lab, String> {
        Lab::start_with_mtu(t, 1500, args)
    }

    /// As [`Lab::start`], with taps of MTU `mtu` (the unikernel takes its
    /// interfaces' MTU from them; the client's and server's links are
    /// host-only, as `mirage run`'s taps of 65520).
    pub fn start_with_mtu(t: &str, mtu: u16, args: &[&str]) -> Result<Lab, String> {
        let image = example(t, "router")?;
        let router_ns = Netns::empty()?;
        let client = Netns::empty()?;
        let server = Netns::empty()?;
        for tap in ["tap-up", "tap-in"] {
            router_ns.ip(&["tuntap", "add", tap, "mode", "tap"])?;
            router_ns.ip(&["link", "set", tap, "mtu", &mtu.to_string()])?;
            // Up while the unikernel attaches it (moved, it goes down, and
            // its new namespace sets it up again).
            router_ns.ip(&["link", "set", tap, "up"])?;
        }
        let mut c = router_ns.unikernel(t, &image, &["--net:uplink=tap-up", "--net:inside=tap-in"]);
        c.args(["--stats=1"]).args(args);
        let mut router = Background::start(c)?;
        router.wait_for("router: uplink", Duration::from_secs(30))?;
        router_ns.ip(&["link", "set", "tap-up", "netns", &server.name])?;
        router_ns.ip(&["link", "set", "tap-in", "netns", &client.name])?;
        server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "tap-up"])?;
        server.ip(&["link", "set", "tap-up", "up"])?;
        client.ip(&["link", "set", "tap-in", "up"])?;
        Ok(Lab { client, server, router: Some(router), _router_ns: router_ns })
    }

    /// Takes a lease with udhcpc; the address and the default route it
    /// set.
    pub fn lease(&self) -> Result<String, String> {
        let scratch = Scratch::new("udhcpc");
        let script = scratch.0.join("script");
        // udhcpc runs it with the lease in the environment; $mask is the
        // prefix length.
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in\nbound|renew)\n  ip addr flush dev \"$interface\"\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; break; done\n  ;;\nesac\n",
        )
        .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let mut c: Command = self.client.command("busybox");
        c.args(["udhcpc", "-f", "-q", "-n", "-t", "10", "-T", "1", "-i", "tap-in", "-s"]).arg(&script);
        let r = run_with(c, Duration::from_secs(30))?;
        if r.status() != 0 {
            return Err(format!("udhcpc got no lease: {}\n--- router:\n{}", r.dump(), self.output()));
        }
        let mut out = String::new();
        for args in [&["-4", "addr", "show", "tap-in"][..], &["route", "show", "default"]] {
            let mut c = self.client.command("ip");
            c.args(args);
            out += &run_with(c, Duration::from_secs(5))?.stdout;
        }
        Ok(out)
    }

    /// Gives the server and the client their IPv6 addresses ([`SERVER6`],
    /// [`CLIENT6`], without duplicate address detection, which would keep
    /// them unusable for a second), and routes to each other's prefix
    /// through the router (started with [`IPV6_ARGS`]).
    pub fn ipv6(&self) -> Result<(), String> {
        self.server.ip(&["-6", "addr", "add", &format!("{SERVER6}/64"), "dev", "tap-up", "nodad"])?;
        self.server.ip(&["-6", "route", "add", "fd00:1::/64", "via", &UPLINK6.to_string()])?;
        self.client.ip(&["-6", "addr", "add", &format!("{CLIENT6}/64"), "dev", "tap-in", "nodad"])?;
        self.client.ip(&["-6", "route", "add", "default", "via", &INSIDE6.to_string()])?;
        Ok(())
    }

    /// The last `--stats` line, once more than `since` were printed.
    pub fn stats_after(&self, since: usize) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.output();
            let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("stats:")).collect();
            if lines.len() > since {
                return Ok(lines[lines.len() - 1].to_string());
            }
            if Instant::now() > deadline {
                return Err(format!("no new stats line\n{out}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stats_lines(&self) -> usize {
        self.output().lines().filter(|l| l.starts_with("stats:")).count()
    }

    /// The router unikernel's output so far (empty for Linux).
    pub fn output(&self) -> String {
        self.router.as_ref().map(Background::output).unwrap_or_default()
    }

    /// The same three namespaces with Linux routing between them: two veth
    /// pairs of MTU `mtu`, forwarding on, nftables masquerade out of the uplink, a
    /// destination NAT of the router's port 8080 to the client's 80 as
    /// the example's default forward; the client's address is static
    /// ([`CLIENT`], through [`INSIDE`]).
    pub fn linux(mtu: u16) -> Result<Lab, String> {
        let router_ns = Netns::empty()?;
        let client = Netns::empty()?;
        let server = Netns::empty()?;
        router_ns.ip(&["link", "add", "r-up", "type", "veth", "peer", "name", "tap-up", "netns", &server.name])?;
        router_ns.ip(&["link", "add", "r-in", "type", "veth", "peer", "name", "tap-in", "netns", &client.name])?;
        router_ns.ip(&["addr", "add", &format!("{UPLINK}/24"), "dev", "r-up"])?;
        router_ns.ip(&["addr", "add", &format!("{INSIDE}/24"), "dev", "r-in"])?;
        for dev in ["r-up", "r-in"] {
            router_ns.ip(&["link", "set", dev, "mtu", &mtu.to_string(), "up"])?;
        }
        server.ip(&["link", "set", "tap-up", "mtu", &mtu.to_string()])?;
        client.ip(&["link", "set", "tap-in", "mtu", &mtu.to_string()])?;
        server.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "tap-up"])?;
        server.ip(&["link", "set", "tap-up", "up"])?;
        client.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "tap-in"])?;
        client.ip(&["link", "set", "tap-in", "up"])?;
        client.ip(&["route", "add", "default", "via", &INSIDE.to_string()])?;
        let mut sysctl = router_ns.command("sysctl");
        sysctl.args(["-qw", "net.ipv4.ip_forward=1"]);
        let r = run_with(sysctl, Duration::from_secs(5))?;
        if r.status() != 0 {
            return Err(format!("sysctl ip_forward: {}", r.dump()));
        }
        crate::attack::nft(
            &router_ns,
            &format!(
                "table ip router {{\n  chain pre {{\n    type nat hook prerouting priority -100; policy accept;\n    iifname \"r-up\" tcp dport 8080 dnat to {CLIENT}:80\n  }}\n  chain post {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"r-up\" masquerade\n  }}\n}}\n"
            ),
        )?;
        Ok(Lab { client, server, router: None, _router_ns: router_ns })
    }
}
