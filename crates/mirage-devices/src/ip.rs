//! IP-layer interfaces (`Mirage_ip`): whole IP packets in and out of one
//! network interface, IPv4 and IPv6, with the link layer (ARP and NDP)
//! done beneath.
//!
//! This is what a router, a NAT or a firewall works on: it sees every IP
//! packet that arrives on the interface, addressed to this host or not,
//! and sends packets towards a next hop it chose (from its routing table),
//! leaving the neighbour's hardware address to the layer. Like
//! [`crate::net::Net`], packets are lent to closures: [`Ip::try_recv`]
//! hands the next packet to a closure in the layer's own buffer, and
//! [`Ip::send`] has the closure write the packet into the buffer it will
//! send from.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::net::{MacAddr, PartialChecksum, RxMeta};

/// Where a packet goes on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// A neighbour on the link (the destination itself, or a gateway): its
    /// hardware address is resolved by the layer (ARP for IPv4, NDP for
    /// IPv6), and the packet waits, within a bound, while it is.
    Ip(IpAddr),
    /// Every host on the link (the broadcast hardware address).
    Broadcast,
    /// This hardware address, unresolved: for a host that has no address
    /// yet (a DHCP server's answer to a client's request).
    Mac(MacAddr),
}

/// What an interface is, at the IP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpInfo {
    /// The interface's hardware address.
    pub mac: MacAddr,
    /// The largest IP packet it carries.
    pub mtu: u16,
    /// Its IPv4 address and prefix length: `0.0.0.0/0` while an interface
    /// configured by DHCP has no lease.
    pub ipv4: (Ipv4Addr, u8),
    /// The gateway configured on its link, if any: where the unikernel's
    /// routing table may send what no other route takes.
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 address and prefix length, if it has one.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The IPv6 gateway on its link, if any.
    pub gateway6: Option<Ipv6Addr>,
    /// Whether the IPv4 address, gateway and name servers come from a
    /// DHCP server (and change with its leases).
    pub dhcp: bool,
    /// Name servers the DHCP server gave.
    pub dns: [Option<Ipv4Addr>; 3],
}

impl IpInfo {
    /// An interface description.
    pub const fn new(mac: MacAddr, mtu: u16, ipv4: (Ipv4Addr, u8)) -> IpInfo {
        IpInfo { mac, mtu, ipv4, gateway: None, ipv6: None, gateway6: None, dhcp: false, dns: [None; 3] }
    }

    /// The same, with an IPv6 address and prefix, and an IPv6 gateway.
    pub const fn with_ipv6(mut self, ipv6: Option<(Ipv6Addr, u8)>, gateway6: Option<Ipv6Addr>) -> IpInfo {
        self.ipv6 = ipv6;
        self.gateway6 = gateway6;
        self
    }

    /// The same, with a gateway.
    pub const fn with_gateway(mut self, gateway: Option<Ipv4Addr>) -> IpInfo {
        self.gateway = gateway;
        self
    }

    /// Whether `a` is on the interface's IPv4 subnet.
    pub fn on_link(&self, a: Ipv4Addr) -> bool {
        let (own, prefix) = self.ipv4;
        let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
        u32::from(a) & mask == u32::from(own) & mask
    }

    /// Whether `a` is on the link for IPv6: on the interface's IPv6
    /// prefix, or link-local (`fe80::/10`, on every link).
    pub fn on_link6(&self, a: Ipv6Addr) -> bool {
        if a.segments()[0] & 0xffc0 == 0xfe80 {
            return true;
        }
        let Some((own, prefix)) = self.ipv6 else { return false };
        let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
        u128::from(a) & mask == u128::from(own) & mask
    }
}

/// Why an IP-layer operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The packet is larger than the interface carries.
    TooLarge,
    /// No room to send now, or too many packets wait for neighbours
    /// already; the packet is dropped (and counted).
    WouldBlock,
    /// The next hop is not on this interface's link, or not an address
    /// the layer can resolve.
    Unreachable,
    /// The interface is gone.
    Disconnected,
    /// The host failed.
    Io,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::TooLarge => "packet larger than the MTU",
            Error::WouldBlock => "no room to send or to wait for the neighbour",
            Error::Unreachable => "next hop not on the link",
            Error::Disconnected => "interface gone",
            Error::Io => "network I/O failed",
        })
    }
}

/// Counters an IP-layer interface keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpStats {
    /// IP packets handed up.
    pub rx_packets: u64,
    /// IP packets sent (including those that waited for a neighbour).
    pub tx_packets: u64,
    /// Frames dropped on the way in: malformed, not for this host's
    /// hardware address, or of a protocol the layer does not carry.
    pub rx_dropped: u64,
    /// Packets dropped on the way out: no room, a neighbour that never
    /// answered, or too many waiting.
    pub tx_dropped: u64,
    /// ARP requests and replies received and accepted.
    pub arp_in: u64,
    /// ARP packets refused by the neighbour-cache policy.
    pub arp_refused: u64,
    /// Neighbour solicitations and advertisements received and accepted.
    pub nd_in: u64,
    /// Neighbour discovery messages refused: malformed, a hop limit other
    /// than 255, or refused by the neighbour-cache policy.
    pub nd_refused: u64,
    /// Neighbours known now.
    pub neighbors: usize,
    /// DHCP leases taken or renewed (an interface configured by DHCP).
    pub dhcp_acks: u64,
    /// DHCP replies dropped: malformed, not for this client (another
    /// transaction or hardware address), or unacceptable (a bad address
    /// or mask, an absurd lease).
    pub dhcp_dropped: u64,
}

/// Sends the packet `p` towards `to` through `ip`, copied into the buffer
/// [`Ip::send_partial`] gives: how [`Ip::send_in_place`] sends a packet
/// it cannot send where it lies.
pub fn send_copied<I: Ip + ?Sized>(
    ip: &mut I,
    to: NextHop,
    p: &[u8],
    partial: Option<PartialChecksum>,
) -> Result<(), Error> {
    ip.send_partial(to, p.len(), |b| {
        b.copy_from_slice(p);
        ((), partial)
    })
}

/// A network interface at the IP layer.
pub trait Ip {
    /// Hardware address, MTU and IP address.
    fn info(&self) -> IpInfo;

    /// Hands the next received IP packet (its IP header first) to `f`, if
    /// one is waiting. Packets not addressed to this host's IP address are
    /// handed up too: the caller routes.
    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, Error>;

    /// Waits until a packet may be waiting, or the layer has work of its
    /// own (a neighbour to ask again): call [`Ip::try_recv`] then.
    async fn readable(&mut self) -> Result<(), Error>;

    /// Sends an IP packet of `len` bytes, written by `f`, towards `to`.
    /// Does not wait: while `to`'s hardware address is resolved the packet
    /// is held (a few per neighbour, a bounded number in all).
    fn send<R>(&mut self, to: NextHop, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, Error>;

    /// As [`Ip::try_recv`], with what the host says of the packet. Only
    /// after [`Ip::forward_offload`] may a packet be longer than the MTU
    /// (one TCP segment of up to 64 KiB) or carry a partial checksum
    /// ([`RxMeta::partial`]); the default says nothing of any packet.
    fn try_recv_meta<R>(&mut self, f: impl FnOnce(&mut [u8], RxMeta) -> R) -> Result<Option<R>, Error> {
        self.try_recv(|p| f(p, RxMeta::default()))
    }

    /// Asks for what a router forwards large packets with, as a host
    /// hands them to a virtio-net guest and takes them back: from now on
    /// the interface may hand over TCP segments of up to 64 KiB whole, and
    /// packets whose checksum the host left partial ([`Ip::try_recv_meta`]),
    /// and [`Ip::send_partial`] takes the same. Whether granted: the
    /// default, and an interface whose host cannot both take and hand over
    /// such packets, answer false and change nothing.
    fn forward_offload(&mut self) -> bool {
        false
    }

    /// As [`Ip::send`], where `f` may leave the packet's one checksum for
    /// the host to complete ([`PartialChecksum`], `start` counted from the
    /// IP header) and, after [`Ip::forward_offload`] was granted, its one
    /// TCP segment for the host to cut ([`PartialChecksum::segment`]; the
    /// packet may then be up to 65,535 bytes). Without the offload the
    /// checksum is completed here (the default).
    fn send_partial<R>(
        &mut self,
        to: NextHop,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<PartialChecksum>),
    ) -> Result<R, Error> {
        self.send(to, len, crate::net::completing(f))
    }

    /// As [`Ip::try_recv_meta`], the packet handed to `f` inside the frame
    /// it came in: `f` gets the frame and where the packet starts in it.
    /// The bytes before the packet (the link's header) are the caller's to
    /// overwrite, so that [`Ip::send_in_place`] of another interface can
    /// send the packet on where it lies. The default hands over the packet
    /// alone, at 0.
    fn try_recv_framed<R>(&mut self, f: impl FnOnce(&mut [u8], usize, RxMeta) -> R) -> Result<Option<R>, Error> {
        self.try_recv_meta(|p, meta| f(p, 0, meta))
    }

    /// Sends the packet `frame[at..]` towards `to`, as [`Ip::send_partial`]
    /// with `partial` (`start` counted from the IP header), writing the
    /// link's header into the bytes before the packet where they hold it:
    /// a packet received with [`Ip::try_recv_framed`] then goes out without
    /// a copy where the interface can send a frame where it lies
    /// ([`crate::net::Net::send_frame`]). Otherwise (no room, or the
    /// neighbour not yet resolved, when the packet is held), the packet is
    /// copied, as the default does. The caller leaves the frame as it is
    /// once sent.
    fn send_in_place(
        &mut self,
        to: NextHop,
        frame: &mut [u8],
        at: usize,
        partial: Option<PartialChecksum>,
    ) -> Result<(), Error> {
        send_copied(self, to, frame.get(at..).ok_or(Error::Io)?, partial)
    }

    /// Counters.
    fn stats(&self) -> IpStats {
        IpStats::default()
    }
}
