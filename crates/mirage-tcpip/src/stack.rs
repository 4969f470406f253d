//! The stack: configuration, the shared state its sockets and driver use.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::hash::Hasher;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::task::Waker;

use mirage_devices::net::Net;
use mirage_devices::time::Duration;
use mirage_runtime::args::{Arg, Args, Ipv4Cidr, Ipv6Cidr};
use smoltcp::iface::{Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{AnySocket, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::conns::{Conns, Tuple};
use crate::device::{self, Link};
use crate::handshake::Handshakes;
use crate::inbound::{Challenges, Linger};
use crate::neighbor::Neighbors;
use crate::table::{SipHasher, Table};
use crate::{driver, tcp};

/// A secret key for one of the stack's uses (`n`), from its seed.
fn key(seed: u64, n: u64) -> (u64, u64) {
    let mut h = SipHasher::new((seed, n));
    h.write_u64(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let a = h.finish();
    h.write_u64(a);
    (a, h.finish())
}

/// [`Config::tcp_buffer_max`]'s default, 2 MiB: one round trip's receive
/// window for 10 Gbit/s at 1.6 ms, or 160 Mbit/s over 100 ms. A unikernel
/// of the default 512 MiB holds four connections' worth
/// (`Config::buffers`).
pub(crate) const DEFAULT_TCP_BUFFER_MAX: usize = 2 << 20;

/// Where halving a largest buffer that memory would not hold stops
/// (`Config::buffers`): 1 MiB, whose window bounds a stream over 100 ms
/// round trips near 80 Mbit/s. Below it the least is what a connection
/// gets.
pub(crate) const HALVED_TCP_BUFFER_MAX: usize = 1 << 20;

/// The largest send buffer a connection with large buffers gets: its
/// receive buffer may be larger. What a sender has queued bounds its
/// flight, and the engine recovers from loss slowly (no SACK recovery, a
/// timeout of 1 s at least): through a queue that slow start overflows,
/// a 2 MiB flight lost 830 frames where 1 MiB lost 610, and a 4 MiB
/// download took 5.2 to 6.3 s against 2.8. A receive window costs no
/// such thing: the peer's sender recovers.
pub(crate) const SEND_BUFFER_MAX: usize = 1 << 20;

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
    /// Bytes of receive and of send buffer per TCP connection, allocated
    /// when its handshake completes: the least a connection gets, and what
    /// each gets once memory is short. Above 64 KiB the stack uses TCP
    /// window scaling.
    pub tcp_buffer: usize,
    /// Bytes of receive buffer for a connection made while the stack's
    /// buffers, with these, are within [`Config::plenty`]: one round trip
    /// carries a window this large, where `tcp_buffer`'s would bound a fast
    /// link's throughput. Its send buffer is as large up to 1 MiB
    /// (`Config::send_buffer`). At or below `tcp_buffer`, every connection gets
    /// `tcp_buffer` each way.
    pub tcp_buffer_max: usize,
    /// Whether the stack may hold this many bytes of TCP buffers (all its
    /// connections', with a new one's large buffers, or with a socket kept
    /// for reuse). By default a sixteenth of the memory budget
    /// (`mirage_runtime::memory::plenty`): large buffers while the stack
    /// holds little, so that a peer opening connections gains little from
    /// the first ones.
    pub plenty: fn(usize) -> bool,
    /// Bytes of buffer per UDP socket and direction.
    pub udp_buffer: usize,
    /// Send keep-alive probes on idle connections this often.
    pub keep_alive: Option<Duration>,
    /// Close a connection whose peer stops answering for this long, and
    /// one closed on this side whose data and FIN make no progress for this
    /// long.
    pub timeout: Option<Duration>,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Frames processed per wake-up before other tasks get to run.
    pub batch: usize,
    /// Seed for initial sequence numbers, ports and the keys of SYN
    /// cookies and hash tables: set it from the platform's random source
    /// ([`Config::seed`]), or a peer can predict them.
    pub random_seed: u64,
    /// Most TCP connections at once: established, closing, or waiting to
    /// be accepted. Beyond it a new connection is refused with a reset.
    pub max_connections: usize,
    /// Most half-open connections remembered (their SYN-ACK is
    /// retransmitted); past it, handshakes go on with SYN cookies alone.
    pub syn_queue: usize,
    /// How long a connection closed on this side waits for the peer to
    /// close its side (FIN-WAIT-2) before it is forgotten. (A closed
    /// connection whose unacknowledged data and FIN make no progress, in
    /// FIN-WAIT-1, CLOSING or LAST-ACK, is reset after `timeout`.)
    pub linger: Duration,
    /// Reset a connection the peer has closed (CLOSE-WAIT) when the
    /// application neither closes it nor sends on it for this long.
    pub close_wait_timeout: Option<Duration>,
    /// When a new connection does not fit ([`Config::max_connections`],
    /// [`Config::may_hold`]), reset the connection that has gone longest
    /// without data either way, if that is at least this long, to make
    /// room (connections the application closed whose data has made no
    /// progress for as long go first, those holding the most unsent data
    /// first); the new connection's completing ACK is dropped and its
    /// client's retry finds the room. `None`: nothing of the stack's own is
    /// reset (a new connection may still wait for closed connections to
    /// drain, or for the application to give memory back,
    /// [`mirage_runtime::memory::Reclaim`]); it is refused with a reset
    /// otherwise.
    pub shed_idle: Option<Duration>,
    /// Whether the heap may hold this many more bytes on a peer's behalf:
    /// asked before each new connection, which is refused with a reset when
    /// the answer is no. The platform's memory budget by default
    /// (`mirage_runtime::memory::may_hold`).
    pub may_hold: fn(usize) -> bool,
    /// Whether TCP segments larger than the MTU are handed to an interface
    /// that cuts them up itself ([`mirage_devices::net::Net::segmentation_offload`]):
    /// the engine then writes one segment of up to 64 KiB where it would
    /// write dozens. No effect on an interface without the offload.
    pub segmentation_offload: bool,
    /// Whether the interface is asked for receive offload
    /// ([`mirage_devices::net::Net::receive_offload`]): the host then hands
    /// over TCP segments of up to 64 KiB where it would have cut them to
    /// the MTU, and checks or vouches for their checksums. No effect on an
    /// interface without the offload.
    pub receive_offload: bool,
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
            tcp_buffer_max: DEFAULT_TCP_BUFFER_MAX,
            plenty: mirage_runtime::memory::plenty,
            udp_buffer: 64 * 1024,
            keep_alive: None,
            timeout: Some(Duration::from_secs(120)),
            connect_timeout: Duration::from_secs(30),
            batch: 64,
            random_seed: 0x6d69_7261_6765,
            max_connections: 4096,
            syn_queue: 4096,
            linger: Duration::from_secs(60),
            close_wait_timeout: Some(Duration::from_secs(120)),
            shed_idle: Some(Duration::from_millis(500)),
            may_hold: mirage_runtime::memory::may_hold,
            segmentation_offload: true,
            receive_offload: true,
        }
    }
}

impl Config {
    /// A static IPv4 configuration.
    pub fn static_ipv4(addr: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> Config {
        Config { ipv4: Some((addr, prefix)), ipv4_gateway: gateway, dhcp: false, ..Config::default() }
    }

    /// The least and the largest receive buffer a TCP connection gets (its
    /// send buffer is [`Config::send_buffer`]'s). Large buffers are given only
    /// while [`Config::plenty`] would hold four connections' worth
    /// (`Inner::buffer_size`); a largest size
    /// set above what the memory allows (`--tcp-buffer-max-kib=8192` where
    /// plenty is 24 MiB, or the default 2 MiB in a unikernel of 192 MiB)
    /// is halved until it would, down to [`HALVED_TCP_BUFFER_MAX`], so
    /// that asking for more gives what fits rather than the least. Below
    /// that the rule stands as it is.
    pub(crate) fn buffers(&self) -> (usize, usize) {
        let least = self.tcp_buffer;
        let mut most = least.max(self.tcp_buffer_max);
        while most > HALVED_TCP_BUFFER_MAX.max(least) && !(self.plenty)(self.both_ways(most).saturating_mul(4)) {
            most = (most / 2).max(HALVED_TCP_BUFFER_MAX).max(least);
        }
        (least, most)
    }

    /// The send buffer of a connection whose receive buffer is `rx` bytes:
    /// capped at [`SEND_BUFFER_MAX`] for large buffers, never below the
    /// least (`tcp_buffer`).
    pub(crate) fn send_buffer(&self, rx: usize) -> usize {
        let least = self.tcp_buffer;
        if rx > least { rx.min(SEND_BUFFER_MAX.max(least)) } else { rx }
    }

    /// The bytes of buffer, both ways, of a connection that receives into
    /// `rx` bytes.
    pub(crate) fn both_ways(&self, rx: usize) -> usize {
        rx.saturating_add(self.send_buffer(rx))
    }

    /// Seeds the stack's randomness from `random` (the platform's source).
    pub fn seed(mut self, random: &impl mirage_devices::random::Random) -> Config {
        self.random_seed = random.next_u64();
        self
    }

    /// The boot arguments that configure the stack, MirageOS's names:
    /// `--ipv4`, `--ipv4-gateway`, `--ipv6`, `--ipv6-gateway`,
    /// `--tcp-buffer-kib`, `--tcp-buffer-max-kib`, with the given defaults
    /// for the first two. An empty `--ipv4` means DHCP.
    pub fn args(default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        vec![
            Arg::new::<Option<Ipv4Cidr>>("ipv4", Some(default_ipv4), "IPv4 address and prefix length (empty: DHCP)."),
            Arg::new::<Option<Ipv4Addr>>("ipv4-gateway", Some(default_gateway), "IPv4 default gateway."),
            Arg::new::<Option<Ipv6Cidr>>("ipv6", Some(""), "IPv6 address and prefix length."),
            Arg::new::<Option<Ipv6Addr>>("ipv6-gateway", Some(""), "IPv6 default gateway."),
            Arg::new::<Option<u32>>(
                "tcp-buffer-kib",
                Some(""),
                "Receive and send buffer of every TCP connection, in KiB (default: 64; while memory is plentiful, receive up to --tcp-buffer-max-kib and send up to 1024).",
            ),
            Arg::new::<u32>(
                "tcp-buffer-max-kib",
                Some("2048"),
                "Receive buffer of a TCP connection made while memory is plentiful, in KiB (its send buffer: at most 1024).",
            ),
            Arg::new::<bool>(
                "tcp-segmentation-offload",
                Some("true"),
                "Let the host cut TCP segments to the MTU, where the interface offers it.",
            ),
            Arg::new::<bool>(
                "tcp-receive-offload",
                Some("true"),
                "Take TCP segments the host has not cut to the MTU, where the interface offers it.",
            ),
        ]
    }

    /// The arguments of [`Config::args`] for one of several stacks, each
    /// named `--PREFIX-NAME` (`--uplink-ipv4`), as MirageOS groups them.
    pub fn args_prefixed(prefix: &str, default_ipv4: &'static str, default_gateway: &'static str) -> Vec<Arg> {
        Config::args(default_ipv4, default_gateway).into_iter().map(|a| a.prefixed(prefix)).collect()
    }

    /// The configuration the arguments of [`Config::args`] give.
    pub fn from_args(args: &Args) -> Config {
        Config::from_args_named(args, |n| n.into())
    }

    /// The configuration the arguments of [`Config::args_prefixed`] give.
    pub fn from_args_prefixed(args: &Args, prefix: &str) -> Config {
        Config::from_args_named(args, |n| alloc::format!("{prefix}-{n}"))
    }

    fn from_args_named(args: &Args, name: impl Fn(&str) -> alloc::string::String) -> Config {
        let ipv4 = args.get::<Option<Ipv4Cidr>>(&name("ipv4")).map(|c| (c.addr, c.prefix));
        let fixed = args.get::<Option<u32>>(&name("tcp-buffer-kib"));
        let kib = |n: u32| (n as usize).clamp(4, 1 << 16) * 1024;
        Config {
            ipv4,
            ipv4_gateway: args.get(&name("ipv4-gateway")),
            ipv6: args.get::<Option<Ipv6Cidr>>(&name("ipv6")).map(|c| (c.addr, c.prefix)),
            ipv6_gateway: args.get(&name("ipv6-gateway")),
            dhcp: ipv4.is_none(),
            tcp_buffer: kib(fixed.unwrap_or(64)),
            // A size given is every connection's (as SO_RCVBUF turns off
            // Linux's tuning).
            tcp_buffer_max: kib(fixed.unwrap_or(args.get::<u32>(&name("tcp-buffer-max-kib")))),
            segmentation_offload: args.get(&name("tcp-segmentation-offload")),
            receive_offload: args.get(&name("tcp-receive-offload")),
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
    /// TCP sockets held now: connections established, closing, or waiting
    /// to be accepted (listeners and half-open connections hold none).
    pub tcp_sockets: usize,
    /// TCP sockets of ended connections kept with their buffers for new
    /// ones (the pool).
    pub tcp_pooled: usize,
    /// Half-open connections remembered now (the SYN queue).
    pub syn_queue: usize,
    /// Handshakes answered with a SYN cookie alone (the SYN queue was full).
    pub syn_cookies: u64,
    /// Connections established from a SYN cookie (no SYN queue entry).
    pub cookies_accepted: u64,
    /// SYNs dropped because the listener's backlog of connections waiting
    /// to be accepted was full (the client retries).
    pub listen_overflows: u64,
    /// Connections refused with a reset for the memory budget
    /// ([`Config::may_hold`]).
    pub refused_memory: u64,
    /// Connections refused with a reset at [`Config::max_connections`].
    pub refused_limit: u64,
    /// Connections reset to make room: past the memory budget, closed ones
    /// holding the most unsent data first; for a new connection that did
    /// not fit, the one idle the longest ([`Config::shed_idle`]).
    pub shed: u64,
    /// Connections reset by a per-state timeout: SYN-RECEIVED, FIN-WAIT-1,
    /// CLOSING, LAST-ACK, CLOSE-WAIT (see [`Config::linger`]).
    pub timed_out: u64,
    /// Connections closed on this side and waiting for the peer's FIN now,
    /// kept as a small record without their socket.
    pub fin_wait2: usize,
    /// Packets dropped for their source address: one of ours (a LAND
    /// attack), multicast, broadcast, loopback, or unspecified (but for a
    /// DHCP client's request).
    pub martians: u64,
    /// In-window resets not at the expected sequence number: dropped, and
    /// answered with a challenge ACK within the rate limits instead of
    /// ending the connection (RFC 5961, 3).
    pub rst_challenged: u64,
    /// SYNs on synchronized connections: dropped, and answered with a
    /// challenge ACK within the rate limits (RFC 5961, 4).
    pub syn_challenged: u64,
    /// Segments acknowledging data older than the peer's largest window:
    /// dropped, and answered with a challenge ACK within the rate limits
    /// (RFC 5961, 5).
    pub ack_challenged: u64,
    /// Zero windows that came with data in flight past them (the peer
    /// shrank its window), shown to the engine as the window that covers
    /// that data, so that it retransmits rather than stalls
    /// (`Record::zero_window_cover`).
    pub zero_windows_covered: u64,
    /// Acknowledgments that started past a window of ours that shrank
    /// under the peer, moved inside it for the engine to take
    /// (`Record::ack_seq`).
    pub acks_moved_into_window: u64,
    /// Acknowledgments made up for the engine, a segment apart, before
    /// one that acknowledged many while its congestion window held its
    /// sending back: its slow start then doubles the window each round
    /// trip, as Linux's does (`inbound::count_each_segment`).
    pub acks_per_segment: u64,
    /// Segments the engine sent again that the peer had acknowledged
    /// selectively (SACK), left out: the engine ignores SACK blocks
    /// (`Conns::note_sack`).
    pub sacked_unsent: u64,
    /// Large writes that waited their turn to send (at most 64 send at
    /// once, so that the send buffers in use stay within the caches).
    pub stream_waits: u64,
    /// Large writes that went without their turn after waiting 250 ms.
    pub stream_waits_timed_out: u64,
    /// Challenge ACKs held back by the stack-wide rate limit (about 1,000
    /// a second; the engine also sends at most one a second per
    /// connection).
    pub challenges_limited: u64,
    /// ARP and NDP packets refused by the neighbour-cache policy.
    pub neighbor_refused: u64,
    /// ARP requests and neighbour solicitations from unknown senders
    /// answered by the adapter, not the engine, once requests had made
    /// `REQUEST_BUDGET` (8) of the engine's 16 entries: so requests from
    /// made-up senders cannot flush the neighbours in use.
    pub neighbor_answered: u64,
    /// IP fragments dropped (the stack does not reassemble).
    pub fragments: u64,
    /// Packets in broadcast or multicast frames dropped for asking an
    /// answer of every host on the link: echo requests, UDP to a port
    /// nobody bound, other protocols (neighbour discovery, group
    /// membership and UDP to bound ports pass).
    pub group_dropped: u64,
    /// UDP send queues cleared because their first datagram could not
    /// leave for [`crate::UDP_STUCK`] (its next hop never answered ARP or
    /// NDP, or there was no route), with every datagram behind it.
    pub udp_queues_cleared: u64,
    /// DHCP leases refused (an address that is not a host of its subnet)
    /// and routers left out of leases (not another host of the subnet).
    pub dhcp_refused: u64,
}

/// Why the stack could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The interface's MAC address is not a unicast address.
    BadMac,
    /// A configured address is not a usable unicast address.
    BadAddress,
    /// The heap has no room for the stack's buffers.
    NoMemory,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::BadMac => "the interface's MAC address is not unicast",
            Error::BadAddress => "a configured address is not a usable unicast address",
            Error::NoMemory => "the heap has no room for the stack's buffers (give the unikernel more memory)",
        })
    }
}

pub(crate) struct Inner {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    /// Slots of `sockets`, and sockets in them: the set grows only here
    /// ([`Inner::add_socket`]), with fallible allocation.
    slots: usize,
    live: usize,
    pub link: Link,
    pub handshakes: Handshakes,
    /// Connections closed on this side, their socket gone, waiting for
    /// the peer's FIN.
    pub lingering: Table<Tuple, Linger>,
    pub challenges: Challenges,
    /// When a refusal for memory was last logged (at most one a
    /// [`crate::inbound::REFUSAL_LOG_EVERY`]).
    pub refusal_logged: Option<mirage_runtime::time::Instant>,
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
    /// Every UDP socket's send queue, watched for a datagram that cannot
    /// leave (`udp::watch`).
    pub udp_queues: Vec<crate::udp::Queue>,
    /// Connections the application let go, until they end.
    pub orphans: Vec<tcp::Orphan>,
    /// Completed handshakes waiting for room.
    pub deferred: alloc::collections::VecDeque<crate::inbound::Deferred>,
    /// Segments that came before the engine's side of their handshake
    /// ended, kept until it does.
    pub early: alloc::collections::VecDeque<crate::inbound::Deferred>,
    pub config_waiters: Vec<Waker>,
    /// When the per-state timeouts are looked at next.
    pub next_expiry: mirage_runtime::time::Instant,
    /// When it was last decided whether a connection could be shed for a
    /// new one, and the answer.
    pub last_shed: Option<(mirage_runtime::time::Instant, bool)>,
    /// TCP sockets whose connection ended, kept with their buffers for
    /// new connections ([`Inner::remove_socket`]); freed once the stack's
    /// buffers pass [`Config::plenty`], and before a connection is refused
    /// or shed for memory.
    pub pool: Vec<smoltcp::socket::tcp::Socket<'static>>,
    /// Sockets to be removed that go back to the heap, not to the pool:
    /// one for each connection reset because another layer asked for
    /// memory back (the first removed may be another's; either way that
    /// memory is given).
    pub give_back: usize,
    /// Live TCP sockets with the largest buffers.
    pub large: usize,
    /// TCP sockets with data to send, counted by the driver once a round
    /// while there are large buffers ([`Inner::send_limit`]).
    pub senders: core::cell::Cell<Option<usize>>,
    /// Large writes sending now, and those waiting their turn
    /// ([`Streams`]).
    pub streams: Streams,
    /// Bytes of buffer the live TCP sockets hold.
    pub buffered: usize,
}

/// Most sockets the pool keeps: enough for connections that come and go
/// a few at a time, each at its full rate.
const POOL: usize = 32;

/// Bytes that the connections with data to send, together, may queue in
/// large buffers: four connections fill theirs (1 MiB, `SEND_BUFFER_MAX`),
/// sixty four get 64 KiB each.
const SEND_SHARE: usize = 4 << 20;

/// Large writes that may send at once: 64 connections sending 64 KiB each
/// keep 4 MiB of send buffer in use.
const STREAMS: usize = 64;

/// A write of more than this many bytes (a large response's body) is
/// large and waits for a stream; smaller ones (a small response, a
/// response's head, a TLS record, chargen's blocks) go at once.
const LARGE: usize = 32 << 10;

/// A stream whose peer has acknowledged nothing new for this long (it
/// reads nothing: a closed window, a slow or hostile reader) does not
/// count against [`STREAMS`].
const STALLED: Duration = Duration::from_millis(100);

/// The longest a large write waits for a stream; then it goes anyway.
/// Streams are for the caches' sake, not a limit: peers that keep
/// their data moving slowly cannot hold the others' writes for longer.
const STREAM_WAIT: Duration = Duration::from_millis(250);

/// How many large writes send at once, first come first served.
///
/// Why: the application's copy into a send buffer and the engine's copy
/// out of it into a frame are most of what a large response costs, and
/// they run at cache speed only while the send buffers in use fit in the
/// caches. With 256 connections each filling 64 KiB, the buffers cycled
/// through 16 MiB and a copy ran at a third of its speed (BENCHMARKS.md,
/// 2026-12-03). With at most [`STREAMS`] large writes sending, and the
/// others waiting their turn, a response, once begun, is sent through at
/// full speed, and the ones waiting start in the order they came.
#[derive(Debug, Default)]
pub struct Streams {
    /// The writes sending.
    sending: Vec<Stream>,
    /// The writes waiting, first come first.
    waiting: VecDeque<Waiting>,
    next: u64,
}

/// A large write sending: its ticket and connection, the highest
/// acknowledgment the connection had when last looked at, and when that
/// last moved.
#[derive(Debug)]
struct Stream {
    ticket: u64,
    handle: SocketHandle,
    tuple: Option<Tuple>,
    acked: Option<u32>,
    moved: mirage_runtime::time::Instant,
}

/// A large write waiting for a stream: its ticket, what wakes it, and since
/// when it waits.
#[derive(Debug)]
struct Waiting {
    ticket: u64,
    waker: Waker,
    since: mirage_runtime::time::Instant,
}

impl Streams {
    fn ticket(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl Inner {
    /// Whether the application's write of `size` bytes to `handle`,
    /// holding `ticket` if it waited already, may send now; if so it holds
    /// a stream (`ticket` set) until [`Inner::stream_done`]. Otherwise it
    /// waits, woken by `waker`.
    pub fn stream_start(
        &mut self,
        (handle, tuple): (SocketHandle, Option<Tuple>),
        size: usize,
        ticket: &mut Option<u64>,
        since: &mut Option<mirage_runtime::time::Instant>,
        waker: &Waker,
    ) -> bool {
        // Where the heap cannot hold one more entry, the write goes without
        // a turn rather than abort.
        if size <= LARGE || self.streams.sending.try_reserve(1).is_err() || self.streams.waiting.try_reserve(1).is_err()
        {
            return true;
        }
        let now = now();
        let first = self.streams.waiting.front().is_none_or(|w| Some(w.ticket) == *ticket);
        let waited_out = since.is_some_and(|s| now.saturating_duration_since(s) >= STREAM_WAIT);
        let free = first && self.streams_busy(now) < STREAMS;
        if free || waited_out {
            if !free {
                self.link.stats.stream_waits_timed_out += 1;
            }
            let t = ticket.take().unwrap_or_else(|| self.streams.ticket());
            self.streams.waiting.retain(|w| w.ticket != t);
            self.streams.sending.push(Stream { ticket: t, handle, tuple, acked: None, moved: now });
            *ticket = Some(t);
            *since = None;
            // The next one looks for a stream in turn.
            self.wake_first_stream(now);
            return true;
        }
        since.get_or_insert(now);
        match *ticket {
            Some(t) => {
                if let Some(w) = self.streams.waiting.iter_mut().find(|w| w.ticket == t)
                    && !w.waker.will_wake(waker)
                {
                    w.waker = waker.clone();
                }
            }
            None => {
                let t = self.streams.ticket();
                *ticket = Some(t);
                self.streams.waiting.push_back(Waiting { ticket: t, waker: waker.clone(), since: now });
                self.link.stats.stream_waits += 1;
            }
        }
        false
    }

    /// A write holding `ticket` (sending or waiting) is done or gone.
    pub fn stream_done(&mut self, ticket: u64) {
        self.streams.sending.retain(|s| s.ticket != ticket);
        self.streams.waiting.retain(|w| w.ticket != ticket);
        self.wake_first_stream(now());
    }

    /// Once a round: wakes the first write waiting if a stream is free
    /// (one may have stalled), and those that waited [`STREAM_WAIT`].
    /// While writes still wait, how long until the next has waited that long.
    pub fn streams_round(&mut self, now: mirage_runtime::time::Instant) -> Option<Duration> {
        self.streams.waiting.front()?;
        self.wake_first_stream(now);
        let mut next: Option<Duration> = None;
        for w in &self.streams.waiting {
            let waited = now.saturating_duration_since(w.since);
            if waited >= STREAM_WAIT {
                w.waker.wake_by_ref();
            } else {
                let left = STREAM_WAIT - waited;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        next
    }

    fn wake_first_stream(&mut self, now: mirage_runtime::time::Instant) {
        if !self.streams.waiting.is_empty()
            && self.streams_busy(now) < STREAMS
            && let Some(w) = self.streams.waiting.front()
        {
            w.waker.wake_by_ref();
        }
    }

    /// The streams whose peer acknowledged new data within [`STALLED`]
    /// (or that began within it).
    fn streams_busy(&mut self, now: mirage_runtime::time::Instant) -> usize {
        let mut busy = 0;
        for s in &mut self.streams.sending {
            let table = &self.link.conns.table;
            let una = s.tuple.and_then(|t| table.get(&t)).filter(|r| r.handle == s.handle).and_then(|r| r.snd_una);
            if una != s.acked {
                s.acked = una;
                s.moved = now;
            }
            busy += (now.saturating_duration_since(s.moved) < STALLED) as usize;
        }
        busy
    }

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

    /// Adds a socket, or `None` when the heap cannot make room for it. The
    /// engine's set would grow by an allocation that aborts on failure;
    /// it is rebuilt larger here instead, and room is made in the orphan
    /// list for every socket there is.
    pub fn add_socket<T: AnySocket<'static>>(&mut self, socket: T) -> Option<SocketHandle> {
        if self.live == self.slots && !self.grow() {
            return None;
        }
        if self.orphans.capacity() <= self.live {
            self.orphans.try_reserve(self.live + 1 - self.orphans.len()).ok()?;
        }
        self.live += 1;
        Some(self.sockets.add(socket))
    }

    /// Removes a socket. A TCP socket whose connection is over goes to the
    /// pool while the stack's buffers, with it, are within
    /// [`Config::plenty`] and the heap has room for as much again, and
    /// none is owed back ([`Inner::give_back`]: memory asked for must be
    /// given; pooled, the buffers would stay taken): a new connection
    /// takes it
    /// as it is, where new buffers would be allocated zeroed, a write of
    /// every byte once the heap reuses memory (3 MiB for large buffers,
    /// more than the rest of a short connection's work).
    pub fn remove_socket(&mut self, handle: SocketHandle) {
        let socket = self.sockets.remove(handle);
        self.live -= 1;
        let smoltcp::socket::Socket::Tcp(s) = socket else { return };
        let bytes = s.recv_capacity() + s.send_capacity();
        self.buffered = self.buffered.saturating_sub(bytes);
        self.large = self.large.saturating_sub(self.is_large(&s) as usize);
        if self.give_back > 0 {
            self.give_back -= 1;
            return;
        }
        if !s.is_open()
            && self.pool.len() < POOL
            && (self.config.plenty)(self.tcp_bytes() + bytes)
            && (self.config.may_hold)(bytes)
            && self.pool.try_reserve(1).is_ok()
        {
            self.pool.push(s);
        }
    }

    /// Bytes of buffer the stack's TCP sockets hold, live and pooled.
    pub fn tcp_bytes(&self) -> usize {
        self.buffered + self.pool_bytes()
    }

    /// Whether a TCP socket has the largest buffers (not the least).
    pub fn is_large(&self, s: &smoltcp::socket::tcp::Socket) -> bool {
        let (least, most) = self.config.buffers();
        most > least && s.recv_capacity() == most
    }

    /// How much of a socket's send buffer the application may fill: all
    /// of the least buffers; of the largest, an equal share of
    /// [`SEND_SHARE`] among the connections with data to send, no less
    /// than the least. Buffers are sized when a connection is made, for
    /// what memory allows then; without the share, the connections that
    /// got large ones would take most of the link from those that did
    /// not, whose every 64 KiB waits for a round trip. The senders are
    /// counted by the driver once a round, after its sending (here only
    /// before the first round with large buffers).
    pub fn send_limit(&self, s: &smoltcp::socket::tcp::Socket) -> usize {
        let (least, _) = self.config.buffers();
        if !self.is_large(s) {
            return s.send_capacity();
        }
        let senders = self.senders.get().unwrap_or_else(|| {
            let n = self.count_senders();
            self.senders.set(Some(n));
            n
        });
        // The writer is one, its buffer empty or not (the count may be of
        // the round before it queued anything).
        let senders = (senders + (s.send_queue() == 0) as usize).max(1);
        (SEND_SHARE / senders).clamp(least, s.send_capacity())
    }

    /// TCP sockets with data to send (or acknowledgments to wait for).
    pub fn count_senders(&self) -> usize {
        self.sockets.iter().filter(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(t) if t.send_queue() > 0)).count()
    }

    /// Frees the pool's sockets; `false` if it held none.
    pub fn drain_pool(&mut self) -> bool {
        let had = !self.pool.is_empty();
        self.pool = Vec::new();
        had
    }

    /// Bytes of buffer the pool's sockets hold.
    pub fn pool_bytes(&self) -> usize {
        self.pool.iter().map(|s| s.recv_capacity() + s.send_capacity()).sum()
    }

    /// Doubles the socket set, keeping every socket at its handle.
    fn grow(&mut self) -> bool {
        let n = (self.slots * 2).max(16);
        let mut storage = Vec::new();
        let mut handles = Vec::new();
        let mut fillers = Vec::new();
        if storage.try_reserve_exact(n).is_err()
            || handles.try_reserve_exact(self.live).is_err()
            || fillers.try_reserve_exact(n).is_err()
        {
            return false;
        }
        storage.resize_with(n, SocketStorage::default);
        let mut set = SocketSet::new(storage);
        handles.extend(self.sockets.iter().map(|(h, _)| h));
        // The set hands out its first free slot: filling the slots in order,
        // with a throw-away socket where the old set has a hole, puts each
        // socket at its old index.
        let filler = || {
            udp::Socket::new(
                udp::PacketBuffer::new(Vec::new(), Vec::new()),
                udp::PacketBuffer::new(Vec::new(), Vec::new()),
            )
        };
        for h in handles {
            loop {
                let f = set.add(filler());
                if f == h {
                    set.remove(f);
                    break;
                }
                fillers.push(f);
            }
            set.add(self.sockets.remove(h));
        }
        for f in fillers {
            set.remove(f);
        }
        self.sockets = set;
        self.slots = n;
        true
    }
}

pub(crate) struct Shared {
    pub inner: RefCell<Inner>,
    /// Something for the driver to do (a socket queued data).
    pub kicked: Cell<bool>,
    pub driver: RefCell<Option<Waker>>,
    /// The stack's registration as a [`mirage_runtime::memory::Reclaim`]
    /// (see [`Room`]), ended with the stack.
    reclaimer: RefCell<Option<mirage_runtime::memory::Reclaimer>>,
}

impl Shared {
    /// Tells the driver it has something to do.
    fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }
}

/// What the stack gives back when another layer is short of memory (an
/// HTTP server that must read a request or take a new connection): the
/// sockets it keeps for reuse, else the connections it would shed for a
/// new one of its own (a closed one stalled or slow, or one idle past
/// `Config::shed_idle`), so that idle
/// connections the stack holds never make the server answer 503 while
/// they could be let go. It holds the stack weakly: the runtime keeps
/// it, and the stack's end ends its registration.
struct Room(alloc::rc::Weak<Shared>);

impl mirage_runtime::memory::Reclaim for Room {
    fn reclaimable(&self) -> bool {
        let Some(shared) = self.0.upgrade() else { return false };
        // Busy: it is the stack itself that asks.
        let Ok(mut inner) = shared.inner.try_borrow_mut() else { return false };
        !inner.pool.is_empty() || crate::tcp::could_shed(&mut inner, now())
    }

    fn reclaim(&self) -> bool {
        let Some(shared) = self.0.upgrade() else { return false };
        let Ok(mut inner) = shared.inner.try_borrow_mut() else { return false };
        // Sockets kept for reuse go first: they are nobody's connection.
        // Less than a connection's least buffers is not worth an ask
        // (the asker asks once): a connection is shed as well.
        let pooled = inner.pool_bytes();
        let drained = inner.drain_pool();
        if drained && pooled >= 2 * inner.config.tcp_buffer {
            return true;
        }
        let shed = crate::tcp::shed(&mut inner, now());
        inner.give_back += shed as usize;
        drop(inner);
        // The reset goes out, and the memory comes back, in the driver's
        // next round.
        if shed {
            shared.kick();
        }
        shed || drained
    }
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
        // Without the platform's random source (`Config::seed`) the seed is
        // a constant: the interface's address and the clock at start keep
        // two unikernels from sharing their numbers, though they do not
        // keep an attacker from guessing them.
        let seed = {
            let mut h = SipHasher::new((config.random_seed, 0x6d69_7261_6765));
            h.write(&mac);
            h.write_u64(now().as_nanos());
            h.finish()
        };
        let conns = Conns::new(key(seed, 1), config.max_connections);
        let tso = if config.segmentation_offload { net.segmentation_offload() } else { 0 };
        let mut net = net;
        let rx_frame = if config.receive_offload { net.receive_offload() } else { 0 };
        let link = Link::new(info.max_frame(), tso, rx_frame, mac, conns, Neighbors::new(key(seed, 2)))
            .ok_or(Error::NoMemory)?;
        let mut link = link;
        let mut ic = smoltcp::iface::Config::new(HardwareAddress::Ethernet(ethernet));
        ic.random_seed = seed;
        let mut iface = Interface::new(ic, &mut device::Adapter { net: &mut net, link: &mut link }, smol_now());
        let sockets = SocketSet::new(Vec::new());
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
            link.neighbors.gateways[0] = Some(IpAddr::V4(gw));
        }
        if let Some(gw) = config.ipv6_gateway {
            iface.routes_mut().add_default_ipv6_route(gw).map_err(|_| Error::BadAddress)?;
            link.neighbors.gateways[1] = Some(IpAddr::V6(gw));
        }
        let next_port = 49152 + (seed % 16384) as u16;
        let mut inner = Inner {
            iface,
            sockets,
            slots: 0,
            live: 0,
            link,
            handshakes: Handshakes::new(key(seed, 3), config.syn_queue, config.may_hold),
            lingering: Table::new(key(seed, 4), config.max_connections.saturating_mul(4)),
            challenges: Challenges::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            refusal_logged: None,
            mtu: info.mtu as usize,
            dhcp: None,
            ipv4,
            next_port,
            tcp_ports: BTreeSet::new(),
            listeners: BTreeMap::new(),
            udp_ports: BTreeSet::new(),
            udp_orphans: Vec::new(),
            udp_queues: Vec::new(),
            orphans: Vec::new(),
            deferred: alloc::collections::VecDeque::new(),
            early: alloc::collections::VecDeque::new(),
            config_waiters: Vec::new(),
            next_expiry: now(),
            last_shed: None,
            pool: Vec::new(),
            give_back: 0,
            large: 0,
            senders: core::cell::Cell::new(None),
            streams: Streams::default(),
            buffered: 0,
            config,
        };
        if inner.config.ipv4.is_none() && inner.config.dhcp {
            let mut client = smoltcp::socket::dhcpv4::Socket::new();
            // A lease without end (or one of years) is held for
            // `dhcpc::MAX_LEASE_SECS` at most, as on `IpLayer`.
            client.set_max_lease_duration(Some(smoltcp::time::Duration::from_secs(u64::from(
                crate::dhcpc::MAX_LEASE_SECS,
            ))));
            inner.dhcp = Some(inner.add_socket(client).ok_or(Error::NoMemory)?);
        }
        let shared = Rc::new(Shared {
            inner: RefCell::new(inner),
            kicked: Cell::new(false),
            driver: RefCell::new(None),
            reclaimer: RefCell::new(None),
        });
        let room = mirage_runtime::memory::add_reclaimer(Rc::new(Room(Rc::downgrade(&shared))));
        *shared.reclaimer.borrow_mut() = Some(room);
        mirage_runtime::spawn(driver::run(shared.clone(), net));
        Ok(Stack { shared })
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.shared.inner.borrow_mut())
    }

    /// Tells the driver a socket has something to send.
    pub(crate) fn kick(&self) {
        self.shared.kick();
    }

    /// The IPv4 address and prefix length, once configured.
    pub fn ipv4_addr(&self) -> Option<(Ipv4Addr, u8)> {
        self.with(|i| i.ipv4)
    }

    /// Waits until the stack has an IPv4 address (at once if static; when
    /// DHCP gets a lease otherwise). While DHCP waits it says so, after 5 s
    /// and then at doubling intervals up to a minute, so that a network
    /// without a DHCP server is not a silent hang.
    pub async fn configured(&self) -> (Ipv4Addr, u8) {
        let lease = core::future::poll_fn(|cx| {
            self.with(|i| match i.ipv4 {
                Some(a) => core::task::Poll::Ready(a),
                None => {
                    i.config_waiters.push(cx.waker().clone());
                    core::task::Poll::Pending
                }
            })
        });
        let mut lease = core::pin::pin!(lease);
        let (mut waited, mut interval) = (Duration::ZERO, Duration::from_secs(5));
        loop {
            match mirage_runtime::select(lease.as_mut(), mirage_runtime::time::sleep(interval)).await {
                mirage_runtime::Either::Left(a) => return a,
                mirage_runtime::Either::Right(()) => {
                    waited += interval;
                    log::warn!(
                        target: "tcpip::dhcp",
                        "DHCP: still waiting for a lease after {} s (is a DHCP server on this network? --ipv4=ADDRESS/PREFIX sets an address)",
                        waited.as_secs()
                    );
                    interval = (interval * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.with(|i| {
            let tcp_sockets = i.sockets.iter().filter(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(_))).count();
            Stats {
                tcp_sockets,
                tcp_pooled: i.pool.len(),
                syn_queue: i.handshakes.queue.len(),
                fin_wait2: i.lingering.len(),
                ..i.link.stats
            }
        })
    }

    /// Bytes of heap the stack holds for its connections now: socket
    /// buffers (the pool's too), sockets, and the tables of connections, half-open
    /// connections and lingering ones.
    pub fn memory(&self) -> usize {
        self.with(|i| {
            i.tcp_bytes()
                + i.slots * core::mem::size_of::<SocketStorage>()
                + i.link.conns.table.heap_bytes()
                + i.handshakes.queue.heap_bytes()
                + i.lingering.heap_bytes()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_connection_sends_from_at_most_a_mebibyte_and_never_less_than_the_least() {
        let (kib, mib) = (1 << 10, 1 << 20);
        let send_buffer = |rx, least| Config { tcp_buffer: least, ..Config::default() }.send_buffer(rx);
        assert_eq!(send_buffer(2 * mib, 64 * kib), mib);
        assert_eq!(send_buffer(512 * kib, 64 * kib), 512 * kib);
        // Not large: the least each way, whatever its size.
        assert_eq!(send_buffer(64 * kib, 64 * kib), 64 * kib);
        assert_eq!(send_buffer(4 * mib, 4 * mib), 4 * mib);
        // A least above the cap is still the least.
        assert_eq!(send_buffer(8 * mib, 2 * mib), 2 * mib);
    }

    #[test]
    fn the_largest_buffer_halves_to_what_four_connections_fit_and_stops_at_a_mebibyte() {
        let with = |plenty: fn(usize) -> bool| Config { plenty, ..Config::default() }.buffers();
        // 4 × (2 MiB + 1 MiB) = 12 MiB.
        assert_eq!(with(|b| b <= 12 << 20), (64 << 10, 2 << 20));
        assert_eq!(with(|b| b < 12 << 20), (64 << 10, 1 << 20));
        // Halving stops at 1 MiB; `Inner::buffer_size` then gives the least.
        assert_eq!(with(|_| false), (64 << 10, 1 << 20));
    }
}
