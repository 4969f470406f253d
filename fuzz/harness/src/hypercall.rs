//! hvt hypercall handling in-process: the tender's own `Hypercalls` on a
//! real guest memory mapping, loaded and protected from a Solo5 executable
//! as `solo5-hvt` does it (read-only text and rodata are read-only host
//! pages, so a stray host write is a SIGSEGV the fuzzer reports), with a
//! block device on a real file and a network interface on a datagram
//! socket pair standing for the tap device.
//!
//! The input is a sequence of guest actions: writing its own memory,
//! queueing a frame on the wire, and hypercalls with addresses drawn near
//! every boundary (low memory, the image's segments, the end of memory,
//! the net ring, wrapping). After each hypercall:
//! - the outcome is the one Solo5's rules give, computed here from the
//!   guest's memory: resume, halt, or exit with "Invalid guest access"
//!   naming the range that failed;
//! - the host changed no byte of guest memory except in the argument
//!   struct and the buffer the hypercall fills, and never where the guest
//!   may not write;
//! - what was read or written is what the file, the wire and the clock hold.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arbitrary::{Arbitrary, Unstructured};
use solo5_abi::SoloResult;
use solo5_abi::hvt::{GUEST_MIN_BASE, HALT_COOKIE_MAX, HcBlockRead, HcNetRead, HcPoll, HcPuts, Hypercall};
use solo5_abi::mft::{MftEntry, MftType};
use solo5_elf::{LoadPlan, load_plan};
use tender::Exit;
use tender::devices::Devices;
use tender::hvt::hypercall::{Hypercalls, Outcome};
use tender::hvt::memory::{Gpa, GuestMemory};
use tender::hvt::ring::Failure;
use zerocopy::FromBytes;

use crate::seeds::{Layout, executable};

/// Guest memory: the image at 1 MiB and room after it.
const ALLOC: u64 = 0x12_0000;
/// Where the guest's memory ends when the top is reserved for a net ring.
const RING_AT: u64 = 0x11_8000;
/// The block device's capacity.
const CAPACITY: u64 = 64 * 1024;
/// Manifest indices, the guest's device handles.
const NET: u64 = 1;
const BLOCK: u64 = 2;

/// What stays for the life of the process: the failure slot, the devices'
/// host ends, the image.
struct World {
    failure: Arc<Failure>,
    block: File,
    /// The tender's end of the wire, and the peer's.
    net: OwnedFd,
    peer: OwnedFd,
    plan: LoadPlan,
    /// Guest memory, loaded and protected once (protections cannot be
    /// undone); each input starts from `initial`.
    mem: GuestMemory,
    initial: Vec<u8>,
    /// Ranges the host may not write: low memory and read-only segments.
    read_only: Vec<(u64, u64)>,
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors; the result is checked.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl World {
    fn new() -> World {
        // `Hypercalls` reports through a failure slot that stops the vCPU
        // for the net I/O thread, which this harness does not run.
        let failure = Arc::new(Failure::detached());
        let path = std::env::temp_dir().join(format!("mirage-fuzz-block-{}", std::process::id()));
        let block =
            File::options().read(true).write(true).create(true).truncate(true).open(&path).expect("a block file");
        let _ = std::fs::remove_file(&path);
        block.set_len(CAPACITY).expect("sized");
        let (net, peer) = socketpair();
        let image = executable(
            Layout { target: 1, manifest: true, mft_skew: 0 },
            &[("net0", MftType::NetBasic), ("blk0", MftType::BlockBasic)],
        );
        let plan = load_plan(&image, ALLOC, GUEST_MIN_BASE).expect("the image loads");
        let mem = memory(&image, &plan);
        let mut read_only = vec![(0, GUEST_MIN_BASE)];
        read_only.extend(plan.segments.iter().filter(|s| !s.prot.write).map(|s| (s.prot_start, s.prot_end)));
        let initial = snapshot(&mem);
        World { failure, block, net, peer, plan, mem, initial, read_only }
    }

    /// The memory as it was loaded, with the guest's size; the read-only
    /// pages cannot have changed (a host write there is a SIGSEGV).
    fn reset(&self, ring: bool) {
        self.mem.set_guest_size(if ring { RING_AT } else { ALLOC });
        let mut at = 0;
        let read_only = self.plan.segments.iter().filter(|s| !s.prot.write).map(|s| (s.prot_start, s.prot_end));
        for (start, end) in read_only.chain([(ALLOC, ALLOC)]) {
            let p = self.mem.host_ptr(at, start - at).expect("inside the mapping");
            // SAFETY: [at, start) is inside the mapping, on pages the tender
            // left writable; `initial` is host memory of ALLOC bytes.
            unsafe { std::ptr::copy_nonoverlapping(self.initial[at as usize..].as_ptr(), p, (start - at) as usize) };
            at = end;
        }
    }

    fn devices(&self) -> Devices {
        let mut net = MftEntry::device("net0", MftType::NetBasic);
        net.set_net_basic([2, 0, 0, 0, 0, 1], 1500);
        net.attached = 1;
        let mut block = MftEntry::device("blk0", MftType::BlockBasic);
        block.set_block_basic(CAPACITY, 512);
        block.attached = 1;
        let dup = |fd: &OwnedFd| Some(fd.try_clone().expect("dup"));
        Devices {
            entries: vec![MftEntry::reserved_first(), net, block],
            fds: vec![None, dup(&self.net), Some(OwnedFd::from(self.block.try_clone().expect("dup")))],
            flush_fds: vec![None, None, None],
            offer_vnet_hdr: false,
            tender_vnet_hdr: false,
            // A socket pair stands for the tap: plain frames.
            vnet: vec![false, false, false],
            rx_offload: vec![None, None, None],
        }
    }

    /// Empties both ends of the wire.
    fn drain(&self) {
        let mut buf = [0u8; 2048];
        for fd in [&self.net, &self.peer] {
            // SAFETY: buf is a valid buffer of its length; the socket is non-blocking.
            while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        }
    }
}

/// Guest memory as `solo5-hvt` leaves it before the first instruction:
/// each segment copied, then protected as the tender protects it.
fn memory(image: &[u8], plan: &LoadPlan) -> GuestMemory {
    let mem = GuestMemory::new(ALLOC).expect("guest memory");
    tender::hvt::load(&mem, plan, image, "fuzz", None).expect("the image loads");
    mem
}

thread_local! {
    static WORLD: World = World::new();
}

/// A guest action.
#[derive(Debug)]
enum Action {
    /// The guest writes its own memory (where it may).
    Poke { at: u64, bytes: Vec<u8> },
    /// A frame arrives on the wire.
    Frame(Vec<u8>),
    /// A hypercall; `arg`, if any, is written at `gpa` first, as a guest
    /// prepares its argument struct.
    Call { nr: u16, gpa: u64, arg: Option<[u64; 5]> },
}

/// Addresses near every boundary a check must get right.
fn address(u: &mut Unstructured) -> arbitrary::Result<u64> {
    const ANCHORS: &[u64] = &[
        0,
        0x1000,
        solo5_abi::hvt::BOOT_INFO_BASE,
        GUEST_MIN_BASE,
        GUEST_MIN_BASE + 0x1000,
        GUEST_MIN_BASE + 0x2000,
        GUEST_MIN_BASE + 0x3000,
        GUEST_MIN_BASE + 0x6000,
        0x11_0000,
        RING_AT,
        ALLOC,
        1 << 32,
        1 << 63,
        u64::MAX,
    ];
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let base = *u.choose(ANCHORS)?;
    let delta = i64::from(u.arbitrary::<i8>()?);
    Ok(base.wrapping_add_signed(delta))
}

/// Lengths: small, page-sized, up to the whole memory, and huge.
fn length(u: &mut Unstructured) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0..=4)? {
        0 => u.int_in_range(0..=64)?,
        1 => 512 * u.int_in_range(0..=130)?,
        2 => u.int_in_range(0..=ALLOC + 64)?,
        3 => u64::MAX - u.int_in_range(0..=64)?,
        _ => u.arbitrary()?,
    })
}

impl<'a> Arbitrary<'a> for Action {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Action> {
        Ok(match u.int_in_range(0..=5)? {
            0 => {
                let at = address(u)?;
                let n = u.int_in_range(0..=64)?;
                Action::Poke { at, bytes: u.bytes(n)?.to_vec() }
            }
            1 => {
                let n = u.int_in_range(0..=1600)?;
                Action::Frame(u.bytes(n.min(u.len()))?.to_vec())
            }
            _ => {
                let nr = if u.ratio(1, 16)? { u.arbitrary()? } else { u.int_in_range(1..=8)? };
                let gpa = address(u)?;
                let arg = if u.ratio(3, 4)? {
                    // handle, then the fields each struct has in turn.
                    let handle = if u.ratio(3, 4)? { u.int_in_range(0..=3)? } else { u.arbitrary()? };
                    Some([handle, address(u)?, address(u)?, length(u)?, u.arbitrary()?])
                } else {
                    None
                };
                Action::Call { nr, gpa, arg }
            }
        })
    }
}

/// The input: whether the net ring is reserved, then up to 16 actions.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ring) = u.arbitrary::<bool>() else { return };
    let mut actions = Vec::new();
    while actions.len() < 16 && !u.is_empty() {
        match Action::arbitrary(&mut u) {
            Ok(a) => actions.push(a),
            Err(_) => break,
        }
    }
    WORLD.with(|w| {
        let _quiet = Quiet::stdout();
        play(w, ring, &actions);
    });
}

/// Sends standard output (where PUTS writes) to /dev/null while it lives.
struct Quiet {
    saved: i32,
}

impl Quiet {
    fn stdout() -> Quiet {
        let null = File::options().write(true).open("/dev/null").expect("/dev/null");
        // SAFETY: plain descriptor calls on descriptors this process owns;
        // results checked.
        unsafe {
            let saved = libc::dup(1);
            assert!(saved >= 0 && libc::dup2(null.as_raw_fd(), 1) == 1, "redirecting stdout");
            Quiet { saved }
        }
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        // SAFETY: restores the descriptor saved in stdout(), then closes the copy.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
    }
}

/// The rules, independent of the tender's code: Solo5's bounds check
/// (strictly inside the guest's memory, no wrapping), and where the host
/// may write on the guest's behalf.
struct Rules {
    size: u64,
    /// Ranges the host may not write: low memory and the image's read-only
    /// segments.
    read_only: Vec<(u64, u64)>,
}

impl Rules {
    fn in_bounds(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| gpa < self.size && end < self.size)
    }

    fn readable(&self, gpa: u64, len: u64) -> bool {
        self.in_bounds(gpa, len)
    }

    fn writable(&self, gpa: u64, len: u64) -> bool {
        // An empty range is refused where a byte there would be.
        let end = gpa.saturating_add(len.max(1));
        self.in_bounds(gpa, len) && self.read_only.iter().all(|&(s, e)| end <= s || gpa >= e)
    }

    /// Whether the guest itself could write byte `at` (its own stores).
    fn guest_writable(&self, at: u64) -> bool {
        at < ALLOC && self.read_only.iter().all(|&(s, e)| at < s || at >= e)
    }
}

/// What a hypercall must do.
#[derive(Debug, PartialEq)]
enum Expect {
    Resume {
        ret: Option<u32>,
    },
    Halt(i32),
    /// Exit with "{hypercall:?} hypercall: Invalid guest access: ...".
    Invalid(Hypercall, u64, u64),
    Unknown(u16),
    /// A host I/O error may end the guest (a frame the wire will not take).
    ResumeOrIoError,
}

/// Plays the actions on a fresh guest; stops where the guest would.
/// Returns each hypercall's outcome, checked.
fn play(w: &World, ring: bool, actions: &[Action]) -> Vec<Expect> {
    let mut outcomes = Vec::new();
    w.drain();
    w.reset(ring);
    let mem = &w.mem;
    let devices = w.devices();
    let flushing = devices.entries.iter().map(|_| AtomicBool::new(false)).collect();
    let mut hc =
        Hypercalls::new(mem, devices, w.failure.clone(), flushing).unwrap_or_else(|e| panic!("Hypercalls::new: {e}"));
    let rules = Rules { size: if ring { RING_AT } else { ALLOC }, read_only: w.read_only.clone() };
    let mut wire: VecDeque<Vec<u8>> = VecDeque::new();
    for action in actions {
        match action {
            Action::Poke { at, bytes } => poke(mem, &rules, *at, bytes),
            // A tap delivers no empty frame.
            Action::Frame(frame) if !frame.is_empty() => {
                // SAFETY: frame is a valid buffer of its length.
                let n = unsafe { libc::write(w.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
                if n == frame.len() as isize {
                    wire.push_back(frame.clone());
                }
            }
            Action::Frame(_) => {}
            Action::Call { nr, gpa, arg } => {
                if let Some(arg) = arg {
                    let bytes: Vec<u8> = arg.iter().flat_map(|v| v.to_le_bytes()).collect();
                    poke(mem, &rules, *gpa, &bytes);
                }
                let outcome = call(w, mem, &mut hc, &rules, &mut wire, *nr, *gpa);
                let resumed = matches!(outcome, Expect::Resume { .. });
                outcomes.push(outcome);
                if !resumed {
                    break;
                }
            }
        }
    }
    outcomes
}

/// A copy of guest memory.
fn snapshot(mem: &GuestMemory) -> Vec<u8> {
    let p = mem.host_ptr(0, ALLOC).expect("the whole mapping");
    // SAFETY: the mapping is ALLOC bytes, all readable (the image has no
    // segment without read access), and nothing writes it meanwhile.
    unsafe { std::slice::from_raw_parts(p, ALLOC as usize) }.to_vec()
}

/// The guest's own store of `bytes` at `at`, where it may write.
fn poke(mem: &GuestMemory, rules: &Rules, at: u64, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        let Some(a) = at.checked_add(i as u64) else { return };
        if rules.guest_writable(a) {
            let p = mem.host_ptr(a, 1).expect("inside the mapping");
            // SAFETY: `a` is inside the mapping on a page the tender left
            // writable.
            unsafe { p.write(b) };
        }
    }
}

fn field<T: FromBytes>(memory: &[u8], gpa: u64) -> T {
    T::read_from_prefix(&memory[gpa as usize..]).expect("in bounds").0
}

/// What Solo5's rules say hypercall `nr` at `gpa` does, from the guest's
/// memory before the call; and the ranges it may write.
fn expect(rules: &Rules, memory: &[u8], wire: &VecDeque<Vec<u8>>, nr: u16, gpa: u64) -> (Expect, Vec<(u64, u64)>) {
    use Hypercall::*;
    let Some(hc) = Hypercall::from_nr(nr) else { return (Expect::Unknown(nr), vec![]) };
    let size = |hc| match hc {
        Walltime => 8,
        Puts | Halt => 16,
        Poll => 24,
        BlockWrite | BlockRead => 40,
        NetWrite | NetRead => 32,
    };
    let n = size(hc);
    let arg_ok = match hc {
        Puts | Halt => rules.readable(gpa, n),
        _ => rules.writable(gpa, n),
    };
    if !arg_ok {
        return (Expect::Invalid(hc, gpa, n), vec![]);
    }
    let arg = vec![(gpa, n)];
    match hc {
        Walltime | Poll => (Expect::Resume { ret: None }, arg),
        Puts => {
            let p: HcPuts = field(memory, gpa);
            if rules.readable(p.data, p.len) {
                (Expect::Resume { ret: None }, vec![])
            } else {
                (Expect::Invalid(hc, p.data, p.len), vec![])
            }
        }
        Halt => {
            let cookie: u64 = field(memory, gpa);
            let status: i32 = field(memory, gpa + 8);
            if cookie == 0 || rules.readable(cookie, HALT_COOKIE_MAX) {
                (Expect::Halt(status), vec![])
            } else {
                (Expect::Invalid(hc, cookie, HALT_COOKIE_MAX), vec![])
            }
        }
        BlockWrite | BlockRead => {
            let a: HcBlockRead = field(memory, gpa);
            let in_device =
                a.handle == BLOCK && a.offset < CAPACITY && a.offset.checked_add(a.len).is_some_and(|e| e <= CAPACITY);
            if !in_device {
                return (Expect::Resume { ret: Some(SoloResult::Inval as u32) }, arg);
            }
            let data_ok = if hc == BlockWrite { rules.readable(a.data, a.len) } else { rules.writable(a.data, a.len) };
            match (data_ok, hc) {
                (false, _) => (Expect::Invalid(hc, a.data, a.len), vec![]),
                (true, BlockRead) => (Expect::Resume { ret: Some(0) }, vec![(gpa, n), (a.data, a.len)]),
                _ => (Expect::Resume { ret: Some(0) }, arg),
            }
        }
        NetWrite | NetRead => {
            let a: HcNetRead = field(memory, gpa);
            if a.handle != NET {
                return (Expect::Resume { ret: Some(SoloResult::Inval as u32) }, arg);
            }
            let data_ok = if hc == NetWrite { rules.readable(a.data, a.len) } else { rules.writable(a.data, a.len) };
            match (data_ok, hc) {
                (false, _) => (Expect::Invalid(hc, a.data, a.len), vec![]),
                (true, NetRead) => {
                    let ret = if wire.is_empty() || a.len == 0 { SoloResult::Again } else { SoloResult::Ok };
                    (Expect::Resume { ret: Some(ret as u32) }, vec![(gpa, n), (a.data, a.len)])
                }
                _ => (Expect::ResumeOrIoError, arg),
            }
        }
    }
}

/// Makes the hypercall and checks it; its outcome (`Resume` if the guest
/// goes on).
fn call(
    w: &World,
    mem: &GuestMemory,
    hc: &mut Hypercalls<'_>,
    rules: &Rules,
    wire: &mut VecDeque<Vec<u8>>,
    nr: u16,
    gpa: u64,
) -> Expect {
    // A POLL sleeps for as long as the guest asks: 1 µs at most here.
    if nr == Hypercall::Poll as u16 && rules.writable(gpa, 24) {
        poke(mem, rules, gpa, &1000u64.to_le_bytes());
    }
    let before = snapshot(mem);
    let (expected, may_write) = expect(rules, &before, wire, nr, gpa);
    let clock_before = now_nanos();
    let result = hc.handle(nr, Gpa(gpa));
    let clock_after = now_nanos();
    let after = snapshot(mem);

    // Not a byte changed outside what the hypercall names, nor where the
    // guest may not write.
    for (page, (b, a)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        if b == a {
            continue;
        }
        for (i, _) in b.iter().zip(a).enumerate().filter(|(_, (x, y))| x != y) {
            let at = (page * 4096 + i) as u64;
            let named = may_write.iter().any(|&(s, n)| at >= s && at - s < n);
            assert!(
                named && rules.writable(at, 1),
                "hypercall {nr} at {gpa:#x} changed guest byte {at:#x} ({expected:?})"
            );
        }
    }

    let message = |e: &Exit| e.to_string();
    match (&expected, &result) {
        (Expect::Unknown(n), Err(e)) => assert_eq!(message(e), format!("Invalid guest hypercall: num={n}")),
        (Expect::Invalid(h, g, n), Err(e)) => {
            assert_eq!(message(e), format!("{h:?} hypercall: Invalid guest access: gpa={g:#x}, sz={n}"));
        }
        (Expect::Halt(status), Ok(Outcome::Halt(s, _))) => assert_eq!(s, status),
        (Expect::ResumeOrIoError, Err(e)) => assert!(message(e).starts_with("Fatal error"), "{}", message(e)),
        (Expect::Resume { .. } | Expect::ResumeOrIoError, Ok(Outcome::Resume)) => {
            let ret = match &expected {
                Expect::Resume { ret } => *ret,
                _ => None,
            };
            resumed(w, (&before, &after), wire, nr, gpa, ret, (clock_before, clock_after));
            return Expect::Resume { ret };
        }
        _ => panic!(
            "hypercall {nr} at {gpa:#x}: expected {expected:?}, got {:?}",
            result.as_ref().map_err(|e| e.to_string())
        ),
    }
    expected
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The results a hypercall that resumed the guest left in its memory
/// (`after`); what the host read is compared with guest memory `before`.
/// Where a buffer overlaps the argument struct, the struct's results win.
fn resumed(
    w: &World,
    (before, after): (&[u8], &[u8]),
    wire: &mut VecDeque<Vec<u8>>,
    nr: u16,
    gpa: u64,
    ret: Option<u32>,
    clock: (u64, u64),
) {
    let range = |data: u64, len: u64| data as usize..(data + len) as usize;
    let clear_of_arg = |data: u64, len: u64, n: u64| data.saturating_add(len) <= gpa || data >= gpa + n;
    match Hypercall::from_nr(nr) {
        Some(Hypercall::Walltime) => {
            let t: u64 = field(after, gpa);
            assert!(clock.0 <= t && t <= clock.1, "WALLTIME {t} outside [{}, {}]", clock.0, clock.1);
        }
        Some(Hypercall::Poll) => {
            let p: HcPoll = field(after, gpa);
            let ready = !wire.is_empty();
            assert_eq!(
                (p.ret, p.ready_set),
                (i32::from(ready), u64::from(ready) << NET),
                "POLL with {} frames",
                wire.len()
            );
        }
        Some(h @ (Hypercall::BlockWrite | Hypercall::BlockRead)) => {
            let a: HcBlockRead = field(after, gpa);
            assert_eq!(Some(a.ret), ret);
            if a.ret == 0 && (h == Hypercall::BlockWrite || clear_of_arg(a.data, a.len, 40)) {
                let mut file = vec![0u8; a.len as usize];
                w.block.read_exact_at(&mut file, a.offset).expect("the block file");
                let guest = if h == Hypercall::BlockWrite { before } else { after };
                assert!(
                    file == guest[range(a.data, a.len)],
                    "{h:?} of {} bytes at {}: guest and file differ",
                    a.len,
                    a.offset
                );
            }
        }
        Some(Hypercall::NetWrite) => {
            let a: HcNetRead = field(after, gpa);
            if a.ret == SoloResult::Ok as u32 {
                let mut frame = vec![0u8; a.len as usize + 1];
                // SAFETY: frame is a valid buffer of its length.
                let n = unsafe { libc::read(w.peer.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len()) };
                assert_eq!(n, a.len as isize, "NET_WRITE: the wire got another length");
                assert!(frame[..n as usize] == before[range(a.data, a.len)], "NET_WRITE: the wire got other bytes");
            } else {
                assert_eq!(Some(a.ret), ret);
            }
        }
        Some(Hypercall::NetRead) => {
            let a: HcNetRead = field(after, gpa);
            assert_eq!(Some(a.ret), ret, "NET_READ with {} frames queued", wire.len());
            if a.ret == SoloResult::Ok as u32 {
                let frame = wire.pop_front().expect("a frame was queued");
                let n = frame.len().min(a.len as usize);
                assert_eq!(a.len, n as u64, "NET_READ length");
                if clear_of_arg(a.data, a.len, 32) {
                    assert!(frame[..n] == after[range(a.data, a.len)], "NET_READ: the guest got other bytes");
                }
            } else if a.ret == SoloResult::Again as u32 && a.handle == NET {
                // A zero-length read may have taken a frame: forget the wire.
                w.drain();
                wire.clear();
            }
        }
        _ => {}
    }
}

/// Seeds: fixed pseudo-random inputs (the actions are drawn from bytes).
pub fn seeds() -> Vec<crate::seeds::Seed> {
    crate::seeds::blobs("hypercall", 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(nr: Hypercall, gpa: u64, arg: [u64; 5]) -> Action {
        Action::Call { nr: nr as u16, gpa, arg: Some(arg) }
    }

    /// Each outcome the rules know, on the tender's handlers: results
    /// through the file and the wire, refusals of read-only and low memory,
    /// the ring and wrapping. `play` asserts each against the rules.
    #[test]
    fn every_outcome_against_the_rules() {
        use Hypercall::*;
        let data = GUEST_MIN_BASE + 0x7000; // free memory past the image
        let text = GUEST_MIN_BASE;
        let cases: Vec<(bool, Vec<Action>)> = vec![
            (false, vec![call(Walltime, data, [0; 5]), call(Halt, data, [0, 7, 0, 0, 0])]),
            (false, vec![call(Walltime, text, [0; 5])]),
            (false, vec![call(Poll, solo5_abi::hvt::BOOT_INFO_BASE, [0; 5])]),
            (false, vec![call(Puts, data, [data, 5, 0, 0, 0]), call(Puts, data, [text, 16, 0, 0, 0])]),
            (false, vec![call(Puts, data, [1, u64::MAX, 0, 0, 0])]),
            (
                false,
                vec![
                    Action::Poke { at: data + 0x100, bytes: b"block data".to_vec() },
                    call(BlockWrite, data, [BLOCK, 512, data + 0x100, 10, 0]),
                    call(BlockRead, data, [BLOCK, 512, data + 0x200, 10, 0]),
                    call(BlockRead, data, [BLOCK, CAPACITY - 1, data, 2, 0]),
                    call(BlockRead, data, [BLOCK, 0, text, 512, 0]),
                ],
            ),
            (
                false,
                vec![
                    Action::Frame(b"a frame".to_vec()),
                    call(Poll, data, [0; 5]),
                    call(NetRead, data, [NET, data + 0x100, 4, 0, 0]),
                    call(NetRead, data, [NET, data + 0x100, 64, 0, 0]),
                    call(NetWrite, data, [NET, text, 60, 0, 0]),
                    call(NetWrite, data, [7, text, 60, 0, 0]),
                ],
            ),
            (true, vec![call(Walltime, RING_AT - 8, [0; 5])]),
            (true, vec![call(Walltime, RING_AT - 9, [0; 5])]),
            (false, vec![Action::Call { nr: 9, gpa: data, arg: None }]),
        ];
        let (ok, inval, again) = (Some(0), Some(SoloResult::Inval as u32), Some(SoloResult::Again as u32));
        let resume = |ret| Expect::Resume { ret };
        let want: Vec<Vec<Expect>> = vec![
            vec![resume(None), Expect::Halt(7)],
            vec![Expect::Invalid(Walltime, text, 8)],
            vec![Expect::Invalid(Poll, solo5_abi::hvt::BOOT_INFO_BASE, 24)],
            vec![resume(None), resume(None)],
            vec![Expect::Invalid(Puts, 1, u64::MAX)],
            vec![resume(ok), resume(ok), resume(inval), Expect::Invalid(BlockRead, text, 512)],
            vec![resume(None), resume(ok), resume(again), resume(None), resume(inval)],
            vec![Expect::Invalid(Walltime, RING_AT - 8, 8)],
            vec![resume(None)],
            vec![Expect::Unknown(9)],
        ];
        WORLD.with(|w| {
            let _quiet = Quiet::stdout();
            for ((ring, actions), want) in cases.iter().zip(want) {
                assert_eq!(play(w, *ring, actions), want, "{actions:?}");
            }
        });
    }
}
