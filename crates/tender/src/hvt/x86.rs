//! The x86_64 machine state a Solo5 guest starts in: low-memory GDT and
//! identity page tables, long mode, interrupts off.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use solo5_abi::hvt::{BOOT_INFO_BASE, GUEST_PAGE_SIZE, cpu, layout};

use super::memory::GuestMemory;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

fn write_u64(mem: &GuestMemory, gpa: u64, value: u64) {
    let p = mem.host_ptr(gpa, 8).expect("low memory is inside every guest");
    // SAFETY: host_ptr checked the 8 bytes are inside the mapping; the guest
    // is not running yet.
    unsafe { p.cast::<u64>().write_unaligned(value) };
}

/// Writes the GDT at 0x1000 (null, code, data).
pub fn setup_gdt(mem: &GuestMemory) {
    write_u64(mem, layout::GDT_BASE, 0);
    write_u64(mem, layout::GDT_BASE + 8, cpu::GDT_CODE);
    write_u64(mem, layout::GDT_BASE + 16, cpu::GDT_DATA);
}

/// Writes 4-level identity page tables covering `alloc_size` bytes: 4 KiB
/// pages for the first 2 MiB (the zero page and the tender's structures not
/// present, boot information read-only), 2 MiB pages for the rest.
pub fn setup_pagetables(mem: &GuestMemory, alloc_size: u64) {
    write_u64(mem, layout::PML4_BASE, layout::PDPT_BASE | PTE_P | PTE_RW);
    for i in 0..4 {
        write_u64(mem, layout::PDPT_BASE + i * 8, (layout::PDE_BASE + i * 0x1000) | PTE_P | PTE_RW);
    }
    write_u64(mem, layout::PDE_BASE, layout::PT0_BASE | PTE_P | PTE_RW);
    for i in 0..512u64 {
        let addr = i << 12;
        let entry = if addr < layout::INPUT_BASE {
            0
        } else if addr < layout::INPUT_END {
            addr | PTE_P
        } else {
            addr | PTE_P | PTE_RW
        };
        write_u64(mem, layout::PT0_BASE + i * 8, entry);
    }
    let mut addr = GUEST_PAGE_SIZE;
    let mut k = 1;
    while addr < alloc_size {
        write_u64(mem, layout::PDE_BASE + k * 8, addr | PTE_P | PTE_RW | PTE_PS);
        addr += GUEST_PAGE_SIZE;
        k += 1;
    }
}

fn segment(selector: u16, type_: u8, db: u8, l: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The special registers at entry: long mode with paging, the low GDT.
pub fn initial_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let code = segment(cpu::SEL_CODE, 9, 0, 1);
    let data = segment(cpu::SEL_DATA, 3, 1, 0);
    s.cs = code;
    s.ss = data;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.tr = kvm_segment { type_: 11, present: 1, ..Default::default() };
    s.ldt = kvm_segment { unusable: 1, ..Default::default() };
    s.gdt.base = layout::GDT_BASE;
    s.gdt.limit = layout::GDTR_LIMIT;
    s.cr0 = cpu::CR0_INIT;
    s.cr3 = layout::PML4_BASE;
    s.cr4 = cpu::CR4_INIT;
    s.efer = cpu::EFER_INIT;
    s
}

/// The general registers at entry: the x86_64 ABI's stack alignment,
/// `%rdi` pointing at the boot information.
pub fn initial_regs(entry: u64, guest_size: u64) -> kvm_regs {
    kvm_regs { rip: entry, rflags: cpu::RFLAGS_INIT, rsp: guest_size - 8, rdi: BOOT_INFO_BASE, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mem: &GuestMemory, gpa: u64) -> u64 {
        // SAFETY: test-only read of low memory inside the mapping.
        unsafe { mem.host_ptr(gpa, 8).unwrap().cast::<u64>().read_unaligned() }
    }

    #[test]
    fn page_tables_match_solo5() {
        let mem = GuestMemory::new(8 << 20).unwrap();
        setup_pagetables(&mem, 8 << 20);
        assert_eq!(read(&mem, 0x2000), 0x3003);
        assert_eq!(read(&mem, 0x3000), 0x4003);
        assert_eq!(read(&mem, 0x3018), 0x7003);
        assert_eq!(read(&mem, 0x4000), 0x8003);
        assert_eq!(read(&mem, 0x8000), 0, "zero page not present");
        assert_eq!(read(&mem, 0x8000 + 15 * 8), 0);
        assert_eq!(read(&mem, 0x8000 + 16 * 8), 0x10001, "boot info read-only");
        assert_eq!(read(&mem, 0x8000 + 255 * 8), 0xff001);
        assert_eq!(read(&mem, 0x8000 + 256 * 8), 0x100003);
        assert_eq!(read(&mem, 0x4008), 0x200083);
        assert_eq!(read(&mem, 0x4018), 0x600083);
        assert_eq!(read(&mem, 0x4020), 0, "nothing past the allocation");
        setup_gdt(&mem);
        assert_eq!(read(&mem, 0x1008), 0x00AF_9900_0000_FFFF);
        let r = initial_regs(0x100020, 8 << 20);
        assert_eq!((r.rsp + 8) % 16, 0);
    }
}
