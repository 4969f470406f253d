//! The stack: configuration, the shared state its sockets and driver use.


use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::net::{Ipv4Addr, Ipv6Addr};
use core::task::Waker;

use mirage_devices::net::Net;
use mirage_devices::time::Duration;
use mirage_runtime::args::{Arg, Args, Ipv4Cidr, Ipv6Cidr};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::{device, driver, tcp};



/// How the stack is configured.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Static IPv4 address and prefix length; with `None` and `dhcp`, DHCP.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv4 default gateway.
    pub ipv4_gateway: Option<Ipv4Addr>,
    /// Static IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// IPv6 default gateway.
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// Ask DHCPv4 for an address when `ipv4` is `None`.
    pub dhcp: bool,
    /// Bytes of receive and of send buffer per TCP connection. Above 64 KiB
    /// the stack uses TCP window scaling.
    pub tcp_buffer: usize,
    /// Bytes of buffer per UDP socket and direction.
    pub udp_buffer: usize,
    /// Send keep-alive probes on idle connections this often.
    pub keep_alive: Option<Duration>,
    /// Close a connection whose peer stops answering for this long.
    pub timeout: Option<Duration>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Frames processed per wake-up before other tasks get to run.
    pub batch: usize,
    /// Seed for initial sequence numbers and ports.
    pub random_seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            ipv4: None,
            ipv4_gateway: None,
            ipv6: None,
            ipv6_gateway: None,
            dhcp: true,
            tcp_buffer: 64 * 1024,
            udp_buffer: 64 * 1024,
            keep_alive: None,
            timeout: Some(Duration::from_secs(120)),
            connect_timeout: Duration::from_secs(30),
            batch: 64,
            random_seed: 0x6d69_7261_6765,
        }
    }
}

impl Config {
    /// A static IPv4 configuration.
    pub fn static_ipv4(addr: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> Config {
        Config { ipv4: Some((addr, prefix)), ipv4_gateway: gateway, dhcp: false, ..Config::default() }
    }

    /// The boot arguments that configure the stack, MirageOS's names:
    /// `--ipv4`, `--ipv4-gateway`, `--ipv6`, `--ipv6-gateway`,
    /// `--tcp-buffer-kib`, with the given defaults for the first two. An
    /// empty `--ipv4` means DHCP.
    pub fn args(default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        vec![
            Arg::new::<Option<Ipv4Cidr>>("ipv4", Some(default_ipv4), "IPv4 address and prefix length (empty: DHCP)."),
            Arg::new::<Option<Ipv4Addr>>("ipv4-gateway", Some(default_gateway), "IPv4 default gateway."),
            Arg::new::<Option<Ipv6Cidr>>("ipv6", Some(""), "IPv6 address and prefix length."),
            Arg::new::<Option<Ipv6Addr>>("ipv6-gateway", Some(""), "IPv6 default gateway."),
            Arg::new::<u32>("tcp-buffer-kib", Some("64"), "Receive and send buffer per TCP connection, in KiB."),
        ]
    }

    /// The configuration the arguments of [`Config::args`] give.
    pub fn from_args(args: &Args) -> Config {
        let ipv4 = args.get::<Option<Ipv4Cidr>>("ipv4").map(|c| (c.addr, c.prefix));
        Config {
            ipv4,
            ipv4_gateway: args.get("ipv4-gateway"),
            ipv6: args.get::<Option<Ipv6Cidr>>("ipv6").map(|c| (c.addr, c.prefix)),
            ipv6_gateway: args.get("ipv6-gateway"),
            dhcp: ipv4.is_none(),
            tcp_buffer: (args.get::<u32>("tcp-buffer-kib") as usize).clamp(4, 1 << 16) * 1024,
            ..Config::default()
        }
    }
}

/// Counters of the stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames received from the interface.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Frames dropped as malformed before the engine saw them.
    pub malformed: u64,
    /// Frames the interface refused to send.
    pub tx_dropped: u64,
    /// TCP sockets held now: listening, connected, and closing ones not
    /// yet forgotten.
    pub tcp_sockets: usize,
}

/// Why the stack could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The interface's MAC address is not a unicast address.
    BadMac,
    /// A configured address is not a usable unicast address.
    BadAddress,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::BadMac => "the interface's MAC address is not unicast",
            Error::BadAddress => "a configured address is not a usable unicast address",
        })
    }
}

pub(crate) struct Inner {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub config: Config,
    /// The interface's IP MTU.
    pub mtu: usize,
    pub dhcp: Option<SocketHandle>,
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub next_port: u16,
    /// Ephemeral ports of connections this side opened.
    pub tcp_ports: BTreeSet<u16>,
    /// Listeners by port.
    pub listeners: BTreeMap<u16, tcp::Listening>,
    /// Bound UDP ports.
    pub udp_ports: BTreeSet<u16>,
    /// Dropped UDP sockets (and their ports) with datagrams still queued.
    pub udp_orphans: Vec<(SocketHandle, u16)>,
    /// Closed flows (socket, ephemeral port, when to give up on a clean
    /// close), removed once their connections end.
    pub orphans: Vec<(SocketHandle, Option<u16>, mirage_runtime::time::Instant)>,
    pub config_waiters: Vec<Waker>,
    pub stats: Stats,
}

impl Inner {
    /// An unused ephemeral port (49152 to 65535), if any is left.
    pub fn ephemeral_port(&mut self) -> Option<u16> {
        for _ in 0..16384 {
            let p = self.next_port;
            self.next_port = if self.next_port == u16::MAX { 49152 } else { self.next_port + 1 };
            if !self.tcp_ports.contains(&p) && !self.udp_ports.contains(&p) && !self.listeners.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }
}

pub(crate) struct Shared {
    pub inner: RefCell<Inner>,
    /// Something for the driver to do (a socket queued data).
    pub kicked: Cell<bool>,
    pub driver: RefCell<Option<Waker>>,
}

/// A TCP/IP stack over one network interface. Cheap to clone: clones share
/// the stack.
#[derive(Clone)]
pub struct Stack {
    pub(crate) shared: Rc<Shared>,
}

impl core::fmt::Debug for Stack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stack").field("ipv4", &self.ipv4_addr()).field("stats", &self.stats()).finish()
    }
}

pub(crate) fn now() -> mirage_runtime::time::Instant {
    mirage_runtime::time::now()
}

pub(crate) fn smol_now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((now().as_nanos() / 1000) as i64)
}

impl Stack {
    /// Creates the stack on `net` and starts its driver task (inside the
    /// runtime). With DHCP, addresses come later: see [`Stack::configured`].
    pub fn new<N: Net + 'static>(net: N, config: Config) -> Result<Stack, Error> {
        let info = net.info();
        let mac = info.mac.0;
        let ethernet = EthernetAddress(mac);
        if !ethernet.is_unicast() {
            return Err(Error::BadMac);
        }
        let mut dev = device::Adapter::new(net);
        let mut ic = smoltcp::iface::Config::new(HardwareAddress::Ethernet(ethernet));
        ic.random_seed = config.random_seed;
        let mut iface = Interface::new(ic, &mut dev, smol_now());
        let mut sockets = SocketSet::new(Vec::new());
        let mut ipv4 = None;
        iface.update_ip_addrs(|addrs| {
            if let Some((a, p)) = config.ipv4 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(a), p));
            }
            if let Some((a, p)) = config.ipv6 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(a), p));
                // The link-local address (EUI-64 from the MAC), which
                // neighbour discovery and routers on the link expect.
                let m = mac;
                let ll = Ipv6Addr::new(
                    0xfe80,
                    0,
                    0,
                    0,
                    u16::from_be_bytes([m[0] ^ 2, m[1]]),
                    u16::from_be_bytes([m[2], 0xff]),
                    u16::from_be_bytes([0xfe, m[3]]),
                    u16::from_be_bytes([m[4], m[5]]),
                );
                if ll != a {
                    let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(ll), 64));
                }
            }
        });
        if let Some((a, p)) = config.ipv6
            && (a.is_unspecified() || a.is_multicast() || a.is_loopback() || p > 128)
        {
            return Err(Error::BadAddress);
        }
        if let Some((a, p)) = config.ipv4 {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || p > 32 {
                return Err(Error::BadAddress);
            }
            ipv4 = Some((a, p));
        }
        if let Some(gw) = config.ipv4_gateway {
            iface.routes_mut().add_default_ipv4_route(gw).map_err(|_| Error::BadAddress)?;
        }
        if let Some(gw) = config.ipv6_gateway {
            iface.routes_mut().add_default_ipv6_route(gw).map_err(|_| Error::BadAddress)?;
        }
        let dhcp = (config.ipv4.is_none() && config.dhcp).then(|| sockets.add(smoltcp::socket::dhcpv4::Socket::new()));
        let next_port = 49152 + (config.random_seed % 16384) as u16;
        let inner = Inner {
            iface,
            sockets,
            config,
            mtu: info.mtu as usize,
            dhcp,
            ipv4,
            next_port,
            tcp_ports: BTreeSet::new(),
            listeners: BTreeMap::new(),
            udp_ports: BTreeSet::new(),
            udp_orphans: Vec::new(),
            orphans: Vec::new(),
            config_waiters: Vec::new(),
            stats: Stats::default(),
        };
        let shared = Rc::new(Shared { inner: RefCell::new(inner), kicked: Cell::new(false), driver: RefCell::new(None) });
        mirage_runtime::spawn(driver::run(shared.clone(), dev));
        Ok(Stack { shared })
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.shared.inner.borrow_mut())
    }

    /// Tells the driver a socket has something to send.
    pub(crate) fn kick(&self) {
        self.shared.kicked.set(true);
        if let Some(w) = self.shared.driver.borrow_mut().take() {
            w.wake();
        }
    }

    /// The IPv4 address and prefix length, once configured.
    pub fn ipv4_addr(&self) -> Option<(Ipv4Addr, u8)> {
        self.with(|i| i.ipv4)
    }

    /// Waits until the stack has an IPv4 address (at once if static; when
    /// DHCP gets a lease otherwise).
    pub async fn configured(&self) -> (Ipv4Addr, u8) {
        core::future::poll_fn(|cx| {
            self.with(|i| match i.ipv4 {
                Some(a) => core::task::Poll::Ready(a),
                None => {
                    i.config_waiters.push(cx.waker().clone());
                    core::task::Poll::Pending
                }
            })
        })
        .await
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.with(|i| {
            let tcp_sockets = i.sockets.iter().filter(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(_))).count();
            Stats { tcp_sockets, ..i.stats }
        })
    }
}

impl mirage_devices::stack::Stack for Stack {
    fn ipv4(&self) -> Option<(Ipv4Addr, u8)> {
        self.ipv4_addr()
    }

    fn ipv6(&self) -> Vec<(Ipv6Addr, u8)> {
        self.with(|i| {
            i.iface
                .ip_addrs()
                .iter()
                .filter_map(|c| match c.address() {
                    IpAddress::Ipv6(a) => Some((a, c.prefix_len())),
                    #[allow(unreachable_patterns)]
                    _ => None,
                })
                .collect()
        })
    }
}
