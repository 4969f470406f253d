//! `--gdb [--gdb-port=N]`: a GDB remote-protocol server, with the
//! behaviour of Solo5's `hvt_module_gdb.c`: the tender waits for gdb
//! before the guest's first instruction, then serves registers (`g`, `G`,
//! `p`, `P`), memory (`m`, `M`), software breakpoints (`Z0`, `z0`), single
//! steps (`s`), hardware breakpoints (`Z1`, `z1`), `c`, `?`, `k`, `D` and
//! `qSupported`, and reports the
//! guest's exit (`W`) or the tender's end (`X`).
//!
//! # Breakpoints and steps without KVM's help
//!
//! Solo5 asks KVM to intercept the guest's `int3` and to single-step it
//! (`KVM_SET_GUEST_DEBUG` with `USE_SW_BP` and `SINGLESTEP`). On this
//! project's machines (nested, paravirtual KVM) neither works where our
//! guests run, at CPL 3: code there runs natively and its #BP and #DB go to
//! the guest's own IDT, not to KVM. What does work is a hardware
//! breakpoint on an instruction that runs at CPL 0 (emulated there), and
//! KVM's single step at CPL 0. So the server puts hardware breakpoints
//! (DR0, DR1) on the guest's own #DB and #BP handlers, read from its IDT:
//! when the program hits an `int3` or finishes a step with `RFLAGS.TF`
//! set, the CPU enters the handler, KVM stops there, and the server
//! undoes the exception as the handler's `iretq` would ([`unwind`]), so
//! gdb sees the program at CPL 3 where it stopped. Steps at CPL 3 set
//! `RFLAGS.TF`; steps at CPL 0 use KVM's single step. Until the guest has
//! loaded its IDT (its first instructions), `c` single-steps it at CPL 0,
//! checking for breakpoints, and installs the hooks as soon as the IDT is
//! there. The same hooks work on hardware virtualisation, where KVM would
//! also have intercepted.
//!
//! What this machine's KVM cannot do: an `int3` at CPL 0 (a Solo5 guest's
//! code, or our CPL-0 stubs) is an internal error of its instruction
//! emulator, so software breakpoints there end the guest; hardware
//! breakpoints (`Z1`, gdb's `hbreak`, two of them in DR2 and DR3) fire at
//! CPL 0 only, which makes them the way to break in a Solo5 guest and
//! useless in ours; and a running guest cannot be interrupted with Ctrl-C
//! (as with Solo5).
//!
//! # A hostile client
//!
//! The server listens on the loopback address only and accepts one
//! connection. Packets are bounded ([`MAX_PACKET`]); bad checksums are
//! refused (`-`); every address is checked against guest memory and every
//! length against the packet size, and a request that fails a check gets
//! an error reply (`E01`), never a panic or an access outside guest memory.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, kvm_debug_exit_arch, kvm_guest_debug,
    kvm_regs,
};
use kvm_ioctls::VcpuFd;

use super::memory::GuestMemory;
use super::state::{self, Frame, GuestRegs};
use crate::{Exit, fatal, strerror, warn};

/// The usage lines.
pub const USAGE: &str =
    "--gdb (optional flag for running in a gdb debug session)\n      [ --gdb-port=1234 ] (port to use)";

/// The largest packet the server accepts or sends (its data, in bytes),
/// as it tells gdb in `qSupported`.
pub const MAX_PACKET: usize = 4096;

/// The most software breakpoints at once.
pub const MAX_BREAKPOINTS: usize = 256;

const INT3: u8 = 0xcc;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_RF: u64 = 1 << 16;
const SIGTRAP: u8 = 5;

/// `--gdb` and `--gdb-port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Whether to wait for a debugger.
    pub enabled: bool,
    /// The TCP port on 127.0.0.1 (0: one the kernel chooses, printed).
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options { enabled: false, port: 1234 }
    }
}

impl Options {
    /// Takes `arg` if it is one of ours: `Some(Ok)` if taken, `Some(Err)`
    /// if malformed, `None` if it is another module's.
    pub fn option(&mut self, arg: &str) -> Option<Result<(), Exit>> {
        if arg == "--gdb" {
            self.enabled = true;
            return Some(Ok(()));
        }
        let port = arg.strip_prefix("--gdb-port=")?;
        Some(match port.parse::<u16>() {
            Ok(p) => {
                self.port = p;
                Ok(())
            }
            Err(_) => Err(fatal!("Malformed argument to --gdb-port")),
        })
    }
}

// ---------------------------------------------------------------------
// The wire: packets, checksums, acknowledgements.

/// Packet framing over a byte stream: `$data#xx`, with `+`/`-`
/// acknowledgements.
#[derive(Debug)]
pub struct Wire<S> {
    stream: S,
    inbuf: Vec<u8>,
    pos: usize,
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl<S: Read + Write> Wire<S> {
    /// Frames packets on `stream`.
    pub fn new(stream: S) -> Wire<S> {
        Wire { stream, inbuf: Vec::new(), pos: 0 }
    }

    fn byte(&mut self) -> io::Result<u8> {
        if self.pos == self.inbuf.len() {
            self.inbuf.resize(4096, 0);
            let n = loop {
                match self.stream.read(&mut self.inbuf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            self.inbuf.truncate(n);
            self.pos = 0;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the debugger closed the connection"));
            }
        }
        self.pos += 1;
        Ok(self.inbuf[self.pos - 1])
    }

    /// The next packet with a good checksum, acknowledged; what is not a
    /// packet (acknowledgements, Ctrl-C, noise) is skipped, an oversized or
    /// corrupt packet refused with `-`.
    pub fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            while self.byte()? != b'$' {}
            let mut data = Vec::new();
            let mut sum = 0u8;
            let mut too_long = false;
            let mut restart = false;
            loop {
                let c = self.byte()?;
                match c {
                    b'#' => break,
                    b'$' => {
                        restart = true;
                        break;
                    }
                    _ if data.len() >= MAX_PACKET => too_long = true,
                    _ => {
                        sum = sum.wrapping_add(c);
                        data.push(c);
                    }
                }
            }
            if restart {
                // A new start: the previous packet was cut short. Go back
                // one byte so the loop above finds this '$'.
                self.pos -= 1;
                continue;
            }
            let (h, l) = (self.byte()?, self.byte()?);
            let good = matches!((hexval(h), hexval(l)), (Some(h), Some(l)) if h << 4 | l == sum);
            if good && !too_long {
                self.stream.write_all(b"+")?;
                return Ok(data);
            }
            self.stream.write_all(b"-")?;
        }
    }

    /// Sends `data` and waits for gdb's `+` (resending on `-`, a few times).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let mut p = Vec::with_capacity(data.len() + 4);
        p.push(b'$');
        let mut sum = 0u8;
        for &c in data {
            // '$', '#' and '}' would need escaping; no reply of ours has them
            // except by mistake, so a mistake is visible rather than garbled.
            debug_assert!(!matches!(c, b'$' | b'#' | b'}' | b'*'));
            sum = sum.wrapping_add(c);
            p.push(c);
        }
        p.extend_from_slice(&[b'#', HEX[(sum >> 4) as usize], HEX[(sum & 15) as usize]]);
        for _ in 0..10 {
            self.stream.write_all(&p)?;
            loop {
                match self.byte()? {
                    b'+' => return Ok(()),
                    b'-' => break,
                    _ => {} // noise, or Ctrl-C: the guest is stopped already
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "the debugger refused a reply ten times"))
    }

    /// The stream, back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends without waiting for the acknowledgement (the last words of a
    /// tender that is exiting).
    pub fn send_no_ack(&mut self, data: &[u8]) {
        let sum = data.iter().fold(0u8, |s, &c| s.wrapping_add(c));
        let mut p = vec![b'$'];
        p.extend_from_slice(data);
        p.extend_from_slice(&[b'#', HEX[(sum >> 4) as usize], HEX[(sum & 15) as usize]]);
        let _ = self.stream.write_all(&p);
    }
}

// ---------------------------------------------------------------------
// Requests.

/// A request from gdb, parsed; anything malformed is `Bad`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `?`: why the guest stopped.
    Why,
    /// `g`.
    ReadRegs,
    /// `G`: the register block.
    WriteRegs(Vec<u8>),
    /// `p n`.
    ReadReg(usize),
    /// `P n=v`.
    WriteReg(usize, Vec<u8>),
    /// `m addr,len`.
    ReadMem(u64, u64),
    /// `M addr,len:bytes`.
    WriteMem(u64, Vec<u8>),
    /// `Z0,addr,kind`.
    InsertBreak(u64),
    /// `z0,addr,kind`.
    RemoveBreak(u64),
    /// `Z1,addr,kind`: a hardware breakpoint.
    InsertHwBreak(u64),
    /// `z1,addr,kind`.
    RemoveHwBreak(u64),
    /// `c`.
    Continue,
    /// `s`.
    Step,
    /// `k`.
    Kill,
    /// `D`.
    Detach,
    /// `qSupported`.
    Supported,
    /// A query with a fixed answer.
    Fixed(&'static str),
    /// Not supported: the empty reply.
    Unsupported,
    /// Malformed: an error reply.
    Bad,
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |v, &c| Some(v << 4 | u64::from(hexval(c)?)))
}

fn hex_bytes(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2).map(|p| Some(hexval(p[0])? << 4 | hexval(p[1])?)).collect()
}

fn split2(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&c| c == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

/// `addr,len` of `m`, `M`, `Z`, `z`.
fn addr_len(s: &[u8]) -> Option<(u64, u64)> {
    let (a, l) = split2(s, b',')?;
    Some((hex_u64(a)?, hex_u64(l)?))
}

/// Parses one packet. Never panics, whatever the bytes.
pub fn parse(p: &[u8]) -> Request {
    let Some((&first, rest)) = p.split_first() else {
        return Request::Unsupported;
    };
    let parsed = match first {
        b'?' => Some(Request::Why),
        b'g' if rest.is_empty() => Some(Request::ReadRegs),
        b'G' => hex_bytes(rest).map(Request::WriteRegs),
        b'p' => hex_u64(rest).map(|n| Request::ReadReg(n.min(usize::MAX as u64) as usize)),
        b'P' => split2(rest, b'=').and_then(|(n, v)| {
            let v = hex_bytes(v).filter(|v| !v.is_empty())?;
            Some(Request::WriteReg(hex_u64(n)?.min(usize::MAX as u64) as usize, v))
        }),
        b'm' => addr_len(rest).map(|(a, l)| Request::ReadMem(a, l)),
        b'M' => split2(rest, b':').and_then(|(al, data)| {
            let (a, l) = addr_len(al)?;
            let bytes = hex_bytes(data)?;
            (bytes.len() as u64 == l).then_some(Request::WriteMem(a, bytes))
        }),
        b'Z' | b'z' => match rest.split_first() {
            Some((&t @ (b'0' | b'1'), r)) => r.strip_prefix(b",").and_then(addr_len).map(|(a, kind)| {
                // kind 1: the one-byte int3 of x86, or one byte of code.
                match (first, t, kind) {
                    (_, _, k) if k != 1 => Request::Bad,
                    (b'Z', b'0', _) => Request::InsertBreak(a),
                    (_, b'0', _) => Request::RemoveBreak(a),
                    (b'Z', _, _) => Request::InsertHwBreak(a),
                    _ => Request::RemoveHwBreak(a),
                }
            }),
            _ => Some(Request::Unsupported),
        },
        // With an address, `c`/`s` resume elsewhere; gdb does not use that.
        b'c' => Some(if rest.is_empty() { Request::Continue } else { Request::Unsupported }),
        b's' => Some(if rest.is_empty() { Request::Step } else { Request::Unsupported }),
        // With a signal: the guest has no signals to deliver, so the same
        // as `c` and `s` (gdb sends these after a SIGSEGV stop).
        b'C' if hex_u64(rest).is_some() => Some(Request::Continue),
        b'S' if hex_u64(rest).is_some() => Some(Request::Step),
        b'k' => Some(Request::Kill),
        b'D' => Some(Request::Detach),
        b'q' if rest.starts_with(b"Supported") => Some(Request::Supported),
        b'q' if rest == b"Attached" => Some(Request::Fixed("1")),
        b'q' if rest == b"C" => Some(Request::Fixed("QC1")),
        b'q' if rest == b"fThreadInfo" => Some(Request::Fixed("m1")),
        b'q' if rest == b"sThreadInfo" => Some(Request::Fixed("l")),
        b'q' if rest.starts_with(b"Symbol") => Some(Request::Fixed("OK")),
        b'H' | b'T' => Some(Request::Fixed("OK")),
        _ => Some(Request::Unsupported),
    };
    parsed.unwrap_or(Request::Bad)
}

// ---------------------------------------------------------------------
// Registers in gdb's x86-64 layout.

/// The `g` block: 16 general registers and `rip` (8 bytes each), then
/// `eflags`, `cs`, `ss`, `ds`, `es`, `fs`, `gs` (4 bytes each). The x87,
/// SSE and other registers are not sent; gdb shows them as unavailable.
const GPRS: usize = 17;
const REGS_LEN: usize = GPRS * 8 + 7 * 4;

fn gpr_mut(r: &mut kvm_regs, n: usize) -> Option<&mut u64> {
    Some(match n {
        0 => &mut r.rax,
        1 => &mut r.rbx,
        2 => &mut r.rcx,
        3 => &mut r.rdx,
        4 => &mut r.rsi,
        5 => &mut r.rdi,
        6 => &mut r.rbp,
        7 => &mut r.rsp,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        15 => &mut r.r15,
        16 => &mut r.rip,
        _ => return None,
    })
}

/// Register `n` in gdb's numbering, as little-endian bytes.
fn reg_bytes(g: &GuestRegs, n: usize) -> Option<Vec<u8>> {
    let mut r = g.regs;
    if let Some(v) = gpr_mut(&mut r, n) {
        return Some(v.to_le_bytes().to_vec());
    }
    match n {
        17 => Some((g.regs.rflags as u32).to_le_bytes().to_vec()),
        18..=23 => Some(u32::from(g.seg[n - 18]).to_le_bytes().to_vec()),
        _ => None,
    }
}

/// The `g` reply's bytes.
pub fn regs_block(g: &GuestRegs) -> Vec<u8> {
    (0..24).filter_map(|n| reg_bytes(g, n)).flatten().collect()
}

/// Writes register `n` from `bytes` into `r`; segment selectors are not
/// writable (a selector without its descriptor would break the guest).
fn set_reg(r: &mut kvm_regs, n: usize, bytes: &[u8]) -> bool {
    if let (Some(v), Ok(b)) = (gpr_mut(r, n), <[u8; 8]>::try_from(bytes)) {
        *v = u64::from_le_bytes(b);
        return true;
    }
    if let (17, Ok(b)) = (n, <[u8; 4]>::try_from(bytes)) {
        r.rflags = (r.rflags & !0xffff_ffff) | u64::from(u32::from_le_bytes(b));
        return true;
    }
    (18..=23).contains(&n) && bytes.len() == 4
}

fn to_hex(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&b| [HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]).collect()
}

// ---------------------------------------------------------------------
// The server.

/// How the guest was set running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Freely.
    Free,
    /// One instruction at CPL 3, with `RFLAGS.TF`.
    StepTf,
    /// One instruction at CPL 0, with KVM's single step.
    StepKvm,
    /// Freely, but single-stepping at CPL 0 until the guest's IDT is
    /// loaded and the hooks can go in.
    SeekIdt,
}

/// What the vCPU loop does after a debug exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Run the guest.
    Go,
    /// The debugger killed it.
    Kill,
}

/// A connected debugger and the breakpoints it set.
#[derive(Debug)]
pub struct Server {
    wire: Wire<TcpStream>,
    fd: i32,
    /// Software breakpoints: address, the byte the `int3` replaced.
    breakpoints: BTreeMap<u64, u8>,
    /// The guest's #DB and #BP handlers, once its IDT is loaded.
    hooks: Option<[u64; 2]>,
    /// Hardware breakpoints (DR2, DR3): on this machine's KVM they fire
    /// in CPL-0 code only, such as a Solo5 guest's.
    hw: Vec<u64>,
    /// The IDT at entry (the tender's), to tell when the guest has its own.
    entry_idt: (u64, u16),
    run: Run,
    /// The last stop reply, for `?`.
    last_stop: Vec<u8>,
    detached: bool,
}

fn kvm(what: &str) -> impl Fn(kvm_ioctls::Error) -> Exit + '_ {
    move |e| fatal!("GDB: KVM: ioctl ({what}) failed: {}", strerror(&io::Error::from_raw_os_error(e.errno())))
}

fn wire_err(e: io::Error) -> Exit {
    fatal!("GDB: Exiting as we could not talk to the debugger: {}", strerror(&e))
}

impl Server {
    /// Listens on 127.0.0.1:`port` and waits for one debugger.
    pub fn accept(port: u16, vcpu: &VcpuFd) -> Result<Server, Exit> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| fatal!("GDB: cannot listen on 127.0.0.1:{port}: {}", strerror(&e)))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        warn("Waiting for a debugger. Connect to it like this:");
        warn(format_args!("\tgdb --ex=\"target remote localhost:{port}\" KERNEL"));
        let (stream, peer) = listener.accept().map_err(|e| fatal!("GDB: accept failed: {}", strerror(&e)))?;
        drop(listener);
        let _ = stream.set_nodelay(true);
        warn(format_args!("Connection from debugger at {}", peer.ip()));
        let sregs = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?;
        Ok(Server {
            fd: stream.as_raw_fd(),
            wire: Wire::new(stream),
            breakpoints: BTreeMap::new(),
            hooks: None,
            hw: Vec::new(),
            entry_idt: (sregs.idt.base, sregs.idt.limit),
            run: Run::Free,
            last_stop: format!("S{SIGTRAP:02x}").into_bytes(),
            detached: false,
        })
    }

    /// The connection's descriptor (for the seccomp filter).
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// The first stop, before the guest's first instruction.
    pub fn first_stop(&mut self, vcpu: &VcpuFd, mem: &GuestMemory) -> Result<Resume, Exit> {
        self.serve(vcpu, mem)
    }

    /// A `KVM_EXIT_DEBUG`: a hook, a step, or the search for the IDT.
    pub fn on_debug(&mut self, vcpu: &VcpuFd, mem: &GuestMemory, arch: &kvm_debug_exit_arch) -> Result<Resume, Exit> {
        let mut regs = vcpu.get_regs().map_err(kvm("GET_REGS"))?;
        let mut sregs = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?;
        let hook = self.hooks.and_then(|h| h.iter().position(|&a| a == arch.pc && a == regs.rip));
        let mut swbreak = false;
        if let Some(which) = hook {
            // The guest took #DB (0) or #BP (1); its handler has not run.
            // Undo the exception, as the handler's iretq would.
            let Some(f) = state::frame(mem, regs.rsp) else {
                return Err(fatal!("GDB: the guest's exception frame at 0x{:x} is not in its memory", regs.rsp));
            };
            let mut g = GuestRegs::from_kvm(&regs, &sregs);
            unwind(&mut g, &f, self.run == Run::StepTf);
            if which == 1 && self.breakpoints.contains_key(&f.rip.wrapping_sub(1)) {
                // Stopped at our int3: gdb wants the breakpoint's address.
                g.regs.rip = f.rip - 1;
                swbreak = true;
            }
            regs = g.regs;
            if g.cpl() == 3 {
                state::resume_user(&mut sregs, &g);
                vcpu.set_sregs(&sregs).map_err(kvm("SET_SREGS"))?;
            }
            vcpu.set_regs(&regs).map_err(kvm("SET_REGS"))?;
        } else if self.hw.contains(&regs.rip) {
            self.last_stop = b"T05hwbreak:;".to_vec();
            return self.serve(vcpu, mem);
        } else if self.run == Run::SeekIdt {
            // Single-stepping the guest's first instructions at CPL 0.
            if !self.breakpoints.contains_key(&regs.rip) {
                // Once the IDT is there, run freely with the hooks in.
                self.arm(vcpu, mem, false)?;
                return Ok(Resume::Go);
            }
            swbreak = true;
        }
        self.last_stop = if swbreak { b"T05swbreak:;".to_vec() } else { format!("S{SIGTRAP:02x}").into_bytes() };
        self.serve(vcpu, mem)
    }

    /// Reads the guest's IDT once it has loaded one, and hooks its #DB and
    /// #BP handlers with DR0 and DR1.
    fn install_hooks(&mut self, vcpu: &VcpuFd, mem: &GuestMemory) -> Result<(), Exit> {
        if self.hooks.is_some() {
            return Ok(());
        }
        let sregs = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?;
        if (sregs.idt.base, sregs.idt.limit) == self.entry_idt || sregs.idt.limit < 4 * 16 - 1 {
            return Ok(());
        }
        let handler = |v: u64| -> Option<u64> {
            let gate: [u8; 16] = mem.read_obj(super::memory::Gpa(sregs.idt.base.checked_add(v * 16)?)).ok()?;
            let present = gate[5] & 0x80 != 0;
            let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
            let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
            let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
            present.then_some(lo | mid << 16 | hi << 32)
        };
        if let (Some(db), Some(bp)) = (handler(1), handler(3)) {
            self.hooks = Some([db, bp]);
        }
        Ok(())
    }

    /// Tells KVM how to run the guest next.
    fn arm(&mut self, vcpu: &VcpuFd, mem: &GuestMemory, step: bool) -> Result<(), Exit> {
        self.install_hooks(vcpu, mem)?;
        let mut regs = vcpu.get_regs().map_err(kvm("GET_REGS"))?;
        let cpl3 = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?.cs.selector & 3 == 3;
        self.run = match (step, cpl3, self.hooks.is_some()) {
            (true, true, true) => Run::StepTf,
            (true, _, _) => Run::StepKvm,
            (false, _, true) => Run::Free,
            (false, _, false) => Run::SeekIdt,
        };
        let mut dbg = kvm_guest_debug::default();
        if let Some([db, bp]) = self.hooks {
            dbg.arch.debugreg[0] = db;
            dbg.arch.debugreg[1] = bp;
            // G0 and G1: execution breakpoints of one byte.
            dbg.arch.debugreg[7] |= (1 << 1) | (1 << 3);
        }
        for (i, &addr) in self.hw.iter().enumerate() {
            dbg.arch.debugreg[2 + i] = addr;
            dbg.arch.debugreg[7] |= 1 << (5 + 2 * i); // G2, G3
        }
        if dbg.arch.debugreg[7] != 0 {
            dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[7] |= (1 << 9) | (1 << 10); // GE, and bit 10 (always 1)
        }
        if matches!(self.run, Run::StepKvm | Run::SeekIdt) {
            dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
        }
        if self.run == Run::StepTf {
            regs.rflags |= RFLAGS_TF;
        }
        // A CPL-0 stop at a hook address must not fire again at once.
        regs.rflags |= RFLAGS_RF;
        vcpu.set_regs(&regs).map_err(kvm("SET_REGS"))?;
        vcpu.set_guest_debug(&dbg).map_err(kvm("SET_GUEST_DEBUG"))
    }

    /// Answers requests until gdb resumes the guest.
    fn serve(&mut self, vcpu: &VcpuFd, mem: &GuestMemory) -> Result<Resume, Exit> {
        if self.detached {
            return Ok(Resume::Go);
        }
        let stop = self.last_stop.clone();
        self.wire.send(&stop).map_err(wire_err)?;
        loop {
            let packet = self.wire.recv().map_err(wire_err)?;
            let reply: Vec<u8> = match parse(&packet) {
                Request::Why => self.last_stop.clone(),
                Request::ReadRegs => {
                    let g = self.regs(vcpu)?;
                    to_hex(&regs_block(&g))
                }
                Request::WriteRegs(bytes) => {
                    let mut regs = vcpu.get_regs().map_err(kvm("GET_REGS"))?;
                    let ok = bytes.len() >= REGS_LEN
                        && (0..24).all(|n| {
                            let (at, len) = if n < GPRS { (n * 8, 8) } else { (GPRS * 8 + (n - GPRS) * 4, 4) };
                            set_reg(&mut regs, n, &bytes[at..at + len])
                        });
                    if ok {
                        vcpu.set_regs(&regs).map_err(kvm("SET_REGS"))?;
                        b"OK".to_vec()
                    } else {
                        b"E01".to_vec()
                    }
                }
                Request::ReadReg(n) => {
                    let g = self.regs(vcpu)?;
                    reg_bytes(&g, n).map(|b| to_hex(&b)).unwrap_or_default()
                }
                Request::WriteReg(n, bytes) => {
                    let mut regs = vcpu.get_regs().map_err(kvm("GET_REGS"))?;
                    if set_reg(&mut regs, n, &bytes) {
                        vcpu.set_regs(&regs).map_err(kvm("SET_REGS"))?;
                        b"OK".to_vec()
                    } else {
                        b"E01".to_vec()
                    }
                }
                Request::ReadMem(addr, len) => match read_mem(mem, addr, len) {
                    Some(bytes) => to_hex(&bytes),
                    None => b"E01".to_vec(),
                },
                Request::WriteMem(addr, bytes) => {
                    if write_mem(mem, addr, &bytes) {
                        b"OK".to_vec()
                    } else {
                        b"E01".to_vec()
                    }
                }
                Request::InsertBreak(addr) => self.insert(mem, addr),
                Request::RemoveBreak(addr) => self.remove(mem, addr),
                Request::InsertHwBreak(addr) => {
                    if self.hw.contains(&addr) {
                        b"OK".to_vec()
                    } else if self.hw.len() < 2 && mem.host_ptr(addr, 1).is_some() {
                        self.hw.push(addr);
                        b"OK".to_vec()
                    } else {
                        b"E01".to_vec()
                    }
                }
                Request::RemoveHwBreak(addr) => match self.hw.iter().position(|&a| a == addr) {
                    Some(i) => {
                        self.hw.remove(i);
                        b"OK".to_vec()
                    }
                    None => b"E01".to_vec(),
                },
                r @ (Request::Continue | Request::Step) => {
                    self.arm(vcpu, mem, r == Request::Step)?;
                    return Ok(Resume::Go);
                }
                Request::Kill => return Ok(Resume::Kill),
                Request::Detach => {
                    let _ = self.wire.send(b"OK");
                    warn("Debugger detached");
                    for (addr, byte) in std::mem::take(&mut self.breakpoints) {
                        write_mem(mem, addr, &[byte]);
                    }
                    self.detached = true;
                    self.hooks = None;
                    self.hw.clear();
                    vcpu.set_guest_debug(&kvm_guest_debug::default()).map_err(kvm("SET_GUEST_DEBUG"))?;
                    return Ok(Resume::Go);
                }
                Request::Supported => format!("PacketSize={MAX_PACKET:x};swbreak+;hwbreak+").into_bytes(),
                Request::Fixed(s) => s.as_bytes().to_vec(),
                Request::Unsupported => Vec::new(),
                Request::Bad => b"E01".to_vec(),
            };
            self.wire.send(&reply).map_err(wire_err)?;
        }
    }

    fn regs(&self, vcpu: &VcpuFd) -> Result<GuestRegs, Exit> {
        let regs = vcpu.get_regs().map_err(kvm("GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?;
        Ok(GuestRegs::from_kvm(&regs, &sregs))
    }

    fn insert(&mut self, mem: &GuestMemory, addr: u64) -> Vec<u8> {
        if self.breakpoints.contains_key(&addr) {
            return b"OK".to_vec();
        }
        if self.breakpoints.len() >= MAX_BREAKPOINTS {
            return b"E01".to_vec();
        }
        match read_mem(mem, addr, 1) {
            Some(old) if write_mem(mem, addr, &[INT3]) => {
                self.breakpoints.insert(addr, old[0]);
                b"OK".to_vec()
            }
            _ => b"E01".to_vec(),
        }
    }

    fn remove(&mut self, mem: &GuestMemory, addr: u64) -> Vec<u8> {
        match self.breakpoints.remove(&addr) {
            Some(old) if write_mem(mem, addr, &[old]) => b"OK".to_vec(),
            _ => b"E01".to_vec(),
        }
    }

    /// A guest that aborted or faulted, stopped for gdb where its program
    /// was (as in its core file, [`super::dumpcore`]) before the tender
    /// exits: gdb can read its backtrace, registers and memory. Resuming
    /// it, or killing it, ends it.
    pub fn post_mortem(&mut self, vcpu: &VcpuFd, mem: &GuestMemory, g: &GuestRegs, signal: i32) -> Result<(), Exit> {
        if self.detached {
            return Ok(());
        }
        let mut sregs = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?;
        if g.cpl() == 3 {
            state::resume_user(&mut sregs, g);
            vcpu.set_sregs(&sregs).map_err(kvm("SET_SREGS"))?;
        }
        vcpu.set_regs(&g.regs).map_err(kvm("SET_REGS"))?;
        self.last_stop = format!("S{:02x}", signal as u8).into_bytes();
        // Whatever gdb does now (resume, kill, hang up), the guest is over
        // and the tender exits with its status.
        let _ = self.serve(vcpu, mem);
        Ok(())
    }

    /// Tells gdb the guest exited with `status` (`W`).
    pub fn exited(&mut self, status: i32) {
        if !self.detached {
            self.wire.send_no_ack(format!("W{:02x}", status as u8).as_bytes());
        }
    }

    /// Tells gdb the tender is ending the guest (`X`, SIGKILL).
    pub fn killed(&mut self) {
        if !self.detached {
            self.wire.send_no_ack(b"X09");
        }
    }
}

/// Undoes an exception taken at `f`, as the handler's `iretq` would; a
/// trace flag the server set for a step is not the program's.
pub fn unwind(g: &mut GuestRegs, f: &Frame, our_tf: bool) {
    let mut f = *f;
    if our_tf {
        f.rflags &= !RFLAGS_TF;
    }
    f.rflags &= !RFLAGS_RF;
    g.regs.rip = f.rip;
    g.regs.rflags = f.rflags;
    g.regs.rsp = f.rsp;
    g.seg[0] = f.cs as u16;
    g.seg[1] = f.ss as u16;
}

/// `len` bytes of guest memory at `addr`, if all of it is guest memory
/// and the reply fits a packet.
pub fn read_mem(mem: &GuestMemory, addr: u64, len: u64) -> Option<Vec<u8>> {
    if len > (MAX_PACKET / 2) as u64 {
        return None;
    }
    let p = mem.host_ptr(addr, len)?;
    // SAFETY: host_ptr checked [addr, addr+len) is inside the mapping; the
    // guest is stopped.
    Some(unsafe { std::slice::from_raw_parts(p, len as usize) }.to_vec())
}

/// Writes `bytes` at `addr` if all of it is guest memory (made writable
/// for the debugger at start).
pub fn write_mem(mem: &GuestMemory, addr: u64, bytes: &[u8]) -> bool {
    match mem.host_ptr(addr, bytes.len() as u64) {
        Some(p) => {
            // SAFETY: as in read_mem; the host mapping is read-write under
            // --gdb (see make_writable).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
            true
        }
        None => false,
    }
}

/// Makes all guest memory writable on the host, as Solo5 does for its
/// debugger: breakpoints are written into the guest's code. (The guest
/// can then write its code too; so can any program under a debugger.)
pub fn make_writable(mem: &GuestMemory) -> Result<(), Exit> {
    mem.protect(0, mem.alloc_size(), libc::PROT_READ | libc::PROT_WRITE)
        .map_err(|e| fatal!("GDB: Cannot remove guest memory protection: {}", strerror(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that reads from `input` and records what is written.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.input.read(b)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn wire(input: &[u8]) -> Wire<Pipe> {
        Wire::new(Pipe { input: Cursor::new(input.to_vec()), output: Vec::new() })
    }

    #[test]
    fn packets_are_checked_and_acknowledged() {
        let mut w = wire(b"+-\x03$g#67$m0,4#00$m0,4#fd");
        assert_eq!(w.recv().unwrap(), b"g");
        // The bad checksum is refused, the good one taken.
        assert_eq!(w.recv().unwrap(), b"m0,4");
        assert_eq!(w.stream.output, b"+-+");
        assert!(w.recv().is_err(), "end of stream is an error, not a hang");
    }

    #[test]
    fn oversized_and_cut_packets_are_refused() {
        let mut big = b"$".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_PACKET + 10));
        big.extend_from_slice(b"#00$?#3f");
        let mut w = wire(&big);
        assert_eq!(w.recv().unwrap(), b"?");
        assert_eq!(w.stream.output, b"-+");
        // A packet cut short by a new '$' is dropped for the new one.
        let mut w = wire(b"$m12$?#3f");
        assert_eq!(w.recv().unwrap(), b"?");
    }

    #[test]
    fn replies_are_framed_and_resent_on_nak() {
        let mut w = wire(b"-+");
        w.send(b"OK").unwrap();
        assert_eq!(w.stream.output, b"$OK#9a$OK#9a");
    }

    #[test]
    fn requests_parse_and_garbage_is_an_error() {
        assert_eq!(parse(b"m100000,10"), Request::ReadMem(0x100000, 0x10));
        assert_eq!(parse(b"M10,2:abcd"), Request::WriteMem(0x10, vec![0xab, 0xcd]));
        assert_eq!(parse(b"M10,3:abcd"), Request::Bad);
        assert_eq!(parse(b"Z0,100123,1"), Request::InsertBreak(0x100123));
        assert_eq!(parse(b"z0,100123,1"), Request::RemoveBreak(0x100123));
        assert_eq!(parse(b"Z0,100123,4"), Request::Bad);
        assert_eq!(parse(b"Z1,100123,1"), Request::InsertHwBreak(0x100123));
        assert_eq!(parse(b"z1,100123,1"), Request::RemoveHwBreak(0x100123));
        assert_eq!(parse(b"Z2,100123,1"), Request::Unsupported);
        assert_eq!(parse(b"C0b"), Request::Continue);
        assert_eq!(parse(b"S05"), Request::Step);
        assert_eq!(parse(b"C0b;100000"), Request::Unsupported);
        assert_eq!(parse(b"P10=0100000000000000"), Request::WriteReg(16, vec![1, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(parse(b"qSupported:multiprocess+;swbreak+"), Request::Supported);
        for junk in [
            &b"m"[..],
            b"m,",
            b"mzz,1",
            b"m1,ffffffffffffffffff",
            b"G0",
            b"Gzz",
            b"P",
            b"P1=",
            b"p",
            b"Z0,",
            b"Z0,1",
            b"M1,1:",
            b"\xff\xfe",
        ] {
            let r = parse(junk);
            assert!(matches!(r, Request::Bad | Request::Unsupported), "{junk:?} gave {r:?}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        assert_eq!(read_mem(&mem, 0x1000, 4), Some(vec![0; 4]));
        assert_eq!(read_mem(&mem, (4 << 20) - 4, 4), Some(vec![0; 4]));
        assert_eq!(read_mem(&mem, (4 << 20) - 3, 4), None);
        assert_eq!(read_mem(&mem, u64::MAX, 2), None);
        assert_eq!(read_mem(&mem, 0, MAX_PACKET as u64), None, "a reply must fit a packet");
        assert!(write_mem(&mem, 0x2000, &[1, 2]));
        assert!(!write_mem(&mem, 4 << 20, &[1]));
        assert!(!write_mem(&mem, u64::MAX - 1, &[1, 2, 3]));
    }

    #[test]
    fn registers_round_trip_in_gdbs_layout() {
        let g = GuestRegs {
            regs: kvm_regs { rax: 1, rsp: 0x1000, rip: 0x100020, rflags: 0x202, ..Default::default() },
            seg: [0x23, 0x1b, 0, 0, 0, 0],
            ..Default::default()
        };
        let b = regs_block(&g);
        assert_eq!(b.len(), REGS_LEN);
        assert_eq!(&b[0..8], &1u64.to_le_bytes());
        assert_eq!(&b[7 * 8..8 * 8], &0x1000u64.to_le_bytes());
        assert_eq!(&b[16 * 8..17 * 8], &0x100020u64.to_le_bytes());
        assert_eq!(&b[17 * 8..17 * 8 + 4], &0x202u32.to_le_bytes());
        assert_eq!(&b[17 * 8 + 4..17 * 8 + 8], &0x23u32.to_le_bytes());
        let mut r = kvm_regs::default();
        assert!(set_reg(&mut r, 16, &0x1234u64.to_le_bytes()));
        assert!(!set_reg(&mut r, 16, &[1, 2]));
        assert!(!set_reg(&mut r, 99, &[0; 8]));
        assert_eq!(r.rip, 0x1234);
    }

    #[test]
    fn unwinding_drops_our_trace_flag_only() {
        let mut g = GuestRegs::default();
        let f = Frame { rip: 0x100100, cs: 0x23, rflags: 0x302, rsp: 0x8000, ss: 0x1b };
        unwind(&mut g, &f, true);
        assert_eq!((g.regs.rip, g.regs.rflags, g.regs.rsp, g.cpl()), (0x100100, 0x202, 0x8000, 3));
        unwind(&mut g, &f, false);
        assert_eq!(g.regs.rflags, 0x302);
    }

    #[test]
    fn options() {
        let mut o = Options::default();
        assert!(matches!(o.option("--gdb"), Some(Ok(()))));
        assert!(matches!(o.option("--gdb-port=0"), Some(Ok(()))));
        assert_eq!(o, Options { enabled: true, port: 0 });
        assert!(matches!(o.option("--gdb-port=70000"), Some(Err(_))));
        assert!(matches!(o.option("--gdb-port="), Some(Err(_))));
        assert!(o.option("--gdbx").is_none());
    }
}
