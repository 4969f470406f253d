//! The guest's registers as its own program sees them, for core dumps and
//! the GDB server.
//!
//! A Solo5 guest runs at CPL 0, so the vCPU's registers are the program's.
//! Ours run at CPL 3 and enter CPL 0 only in short stubs: a hypercall from
//! CPL 3 is a #GP whose CPL-0 handler performs the `outl` on its behalf,
//! and every other exception enters a CPL-0 handler through the guest's
//! IDT. When the tender sees the vCPU in such a stub, the registers that
//! matter to someone debugging (where the program was, its stack) are in
//! the interrupt frame the CPU pushed, not in the vCPU: [`user_view`]
//! recognises the frame and puts the CPL-3 program's view back together.
//! The general registers need no repair: the stubs restore what they touch
//! before the `outl`, and a handler entry has touched nothing yet.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use solo5_abi::hvt::TrapRegs;

use super::memory::{Gpa, GuestMemory};

/// The registers of a stopped guest, in the terms of Linux's
/// `struct user_regs_struct` and GDB's x86-64 register set.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestRegs {
    /// The general registers, `rip` and `rflags`.
    pub regs: kvm_regs,
    /// Segment selectors: cs, ss, ds, es, fs, gs.
    pub seg: [u16; 6],
    /// `%fs` and `%gs` bases.
    pub fs_base: u64,
    /// See `fs_base`.
    pub gs_base: u64,
}

impl GuestRegs {
    /// The vCPU's registers as they are.
    pub fn from_kvm(regs: &kvm_regs, sregs: &kvm_sregs) -> GuestRegs {
        GuestRegs {
            regs: *regs,
            seg: [
                sregs.cs.selector,
                sregs.ss.selector,
                sregs.ds.selector,
                sregs.es.selector,
                sregs.fs.selector,
                sregs.gs.selector,
            ],
            fs_base: sregs.fs.base,
            gs_base: sregs.gs.base,
        }
    }

    /// Where the program was, from an interrupt frame.
    fn apply(&mut self, f: &Frame) {
        self.regs.rip = f.rip;
        self.regs.rflags = f.rflags;
        self.regs.rsp = f.rsp;
        self.seg[0] = f.cs as u16;
        self.seg[1] = f.ss as u16;
    }

    /// Applies a HALT cookie (Solo5's `struct x86_trap_regs`), as Solo5's
    /// dumpcore does: the trapped instruction and stack replace the
    /// reporter's.
    pub fn apply_trap(&mut self, t: &TrapRegs) {
        self.apply(&Frame { rip: t.rip, cs: t.cs, rflags: t.rflags, rsp: t.rsp, ss: t.ss });
    }

    /// The current privilege level.
    pub fn cpl(&self) -> u16 {
        self.seg[0] & 3
    }
}

/// The five words an x86-64 CPU pushes when it takes an exception.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Frame {
    /// Where the interrupted program was (or, for a trap such as #BP, the
    /// instruction after).
    pub rip: u64,
    /// Its code segment; the low two bits are its privilege level.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// The `outl %eax,(%dx)` opcode, the one hypercall instruction.
const OUTL: u8 = 0xef;

/// Reads an interrupt frame at `gpa` if it records an interruption of CPL 3
/// (both selectors with RPL 3): what a CPL-0 handler of this guest finds on
/// its stack.
pub fn user_frame(mem: &GuestMemory, gpa: u64) -> Option<Frame> {
    frame(mem, gpa).filter(|f| f.cs & 3 == 3 && f.ss & 3 == 3)
}

/// Reads an interrupt frame at `gpa`, if it lies in guest memory and its
/// selectors are selectors.
pub fn frame(mem: &GuestMemory, gpa: u64) -> Option<Frame> {
    let words: [u64; 5] = mem.read_obj(Gpa(gpa)).ok()?;
    let f = Frame { rip: words[0], cs: words[1], rflags: words[2], rsp: words[3], ss: words[4] };
    (f.cs <= 0xffff && f.ss <= 0xffff).then_some(f)
}

/// The program's view of a guest stopped at a hypercall exit: if the vCPU
/// is at CPL 0 performing an `outl` that CPL 3 attempted (a #GP handler,
/// its error code popped or not, the CPL-3 instruction an `outl`), the
/// CPL-3 state from the frame; otherwise the vCPU's own registers.
pub fn user_view(mem: &GuestMemory, regs: &kvm_regs, sregs: &kvm_sregs) -> GuestRegs {
    let mut g = GuestRegs::from_kvm(regs, sregs);
    if g.cpl() != 0 {
        return g;
    }
    // Our #GP stub pops the error code before the `outl`; allow for a stub
    // that does not.
    for at in [regs.rsp.wrapping_add(8), regs.rsp.wrapping_add(16)] {
        if let Some(f) = user_frame(mem, at)
            && mem.read_obj::<u8>(Gpa(f.rip)).ok() == Some(OUTL)
        {
            g.apply(&f);
            return g;
        }
    }
    g
}

/// The vCPU state that resumes the program of `g` at CPL 3, as the `iretq`
/// of the stub it interrupted would: its instruction, flags and stack, and
/// flat 64-bit user segments with the selectors the frame held.
pub fn resume_user(sregs: &mut kvm_sregs, g: &GuestRegs) {
    let seg = |selector: u16, code: bool| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = seg(g.seg[0], true);
    sregs.ss = seg(g.seg[1], false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_with(at: u64, words: &[u64]) -> GuestMemory {
        let mem = GuestMemory::new(4 << 20).unwrap();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        mem.load(at, &bytes).unwrap();
        mem
    }

    #[test]
    fn a_cpl3_hypercall_shows_the_cpl3_program() {
        // The #GP stub's stack at the `outl`: error code, then the frame.
        let mem = mem_with(0x20_0000, &[0, 0x10_0040, 0x23, 0x202, 0x30_0000, 0x1b]);
        mem.load(0x10_0040, &[OUTL]).unwrap();
        let regs = kvm_regs { rip: 0x10_0100, rsp: 0x20_0000, rbp: 7, ..Default::default() };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x08;
        sregs.ss.selector = 0x10;
        let g = user_view(&mem, &regs, &sregs);
        assert_eq!(
            (g.regs.rip, g.regs.rsp, g.regs.rflags, g.seg[0], g.seg[1]),
            (0x10_0040, 0x30_0000, 0x202, 0x23, 0x1b)
        );
        assert_eq!(g.regs.rbp, 7, "general registers are the program's own");
        assert_eq!(g.cpl(), 3);
    }

    #[test]
    fn a_cpl0_guest_is_shown_as_it_is() {
        // A Solo5 guest halting at CPL 0: whatever its stack holds, no
        // frame with CPL-3 selectors pointing at an `outl`.
        let mem = mem_with(0x20_0000, &[0, 0x10_0040, 0x08, 0x202, 0x30_0000, 0x10]);
        mem.load(0x10_0040, &[OUTL]).unwrap();
        let regs = kvm_regs { rip: 0x10_0100, rsp: 0x20_0000, ..Default::default() };
        let g = user_view(&mem, &regs, &kvm_sregs::default());
        assert_eq!(g.regs.rip, 0x10_0100);
        // A frame that names CPL 3 but not at an `outl` is not a hypercall.
        let mem = mem_with(0x20_0000, &[0, 0x10_0040, 0x23, 0x202, 0x30_0000, 0x1b]);
        assert_eq!(user_view(&mem, &regs, &kvm_sregs::default()).regs.rip, 0x10_0100);
        // A stack pointer out of memory reads nothing.
        let regs = kvm_regs { rsp: u64::MAX - 4, ..regs };
        assert_eq!(user_view(&mem, &regs, &kvm_sregs::default()).regs.rip, 0x10_0100);
    }
}
