//! The first instructions of a virtio guest: a Multiboot header, the 32-bit
//! entry a Multiboot loader (QEMU's `-kernel`, GRUB) jumps to, the switch to
//! long mode, and the exception stubs.
//!
//! Multiboot loaders only load 32-bit ELF files, so the header sets the
//! "a.out kludge" flag and gives the load addresses itself: the loader then
//! copies the file from the header's position on as one flat image (text,
//! rodata and data contiguous from 0x100000 up to the end of .data, which the linker
//! script guarantees), zeroes up to `_ebss` and jumps to `_start32` in
//! 32-bit protected mode with paging off.
//!
//! `_start32` loads a GDT with a 64-bit code segment, turns on PAE and
//! long mode, loads page tables that are static data in the image (the
//! first 4 GiB identity-mapped, the zero page left out, so that no code
//! has to build them) and jumps to 64-bit code, which enables SSE (Rust
//! uses it for copies and floating point) and calls
//! `mirage_solo5_virtio_start` with the Multiboot information on a boot
//! stack in .bss.
//!
//! The guest runs at CPL 0 as Solo5's virtio guests do: there is no
//! hypervisor interface to protect, and port I/O to the serial line and
//! the virtio devices needs no trap. CPU exceptions go through the IDT,
//! which the Rust side fills from `mirage_solo5_virtio_trap_table`, to
//! `mirage_solo5_virtio_trap`, which reports them and ends the guest.

use core::arch::global_asm;

global_asm!(
    super::super::notes::solo5_notes_asm!(),
    r#"
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00010003   /* page-align modules, memory info, a.out kludge */
    .set MB_BOOT_MAGIC, 0x2BADB002

    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
    .long multiboot_header      /* header_addr */
    .long 0x100000              /* load_addr: the start of the image */
    .long mirage_solo5_load_end /* load_end_addr: the file ends here */
    .long _ebss                 /* bss_end_addr: zeroed up to here */
    .long _start32              /* entry_addr */

    .section .text.boot, "ax"
    .code32
    .global _start32
    .type _start32, @function
_start32:
    cld
    cmpl $MB_BOOT_MAGIC, %eax
    jne 9f
    movl $virtio_boot_stack_top, %esp
    movl %ebx, %esi             /* the Multiboot information, kept for Rust */
    lgdt gdtr32
    ljmp $0x18, $1f
1:  movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movl %cr4, %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl $virtio_pml4, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax       /* PG */
    movl %eax, %cr0
    ljmp $0x08, $2f
9:  cli                         /* not started by a Multiboot loader */
    hlt
    jmp 9b

    .code64
2:  movq %cr0, %rax
    andq $~4, %rax              /* EM off */
    orq $0x22, %rax             /* MP, NE */
    movq %rax, %cr0
    movq %cr4, %rax
    orq $0x600, %rax            /* OSFXSR, OSXMMEXCPT */
    movq %rax, %cr4
    ldmxcsr mxcsr_default(%rip)
    movl $virtio_boot_stack_top, %esp
    xorl %ebp, %ebp
    movl %esi, %edi
    call mirage_solo5_virtio_start
3:  cli
    hlt
    jmp 3b
    .size _start32, . - _start32

    /* Exception stubs (trap_stubs.rs), and #GP's, which is an
       ordinary fault here; their addresses by vector, for the IDT. */
"#,
    super::super::trap_stubs::trap_stubs_asm!(),
    r#"
    TRAP_EC 13

    .section .rodata.virtio_traps, "a"
    .balign 8
    .global mirage_solo5_virtio_trap_table
mirage_solo5_virtio_trap_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_\n
    .endr

    .section .text.boot, "ax"
    .code64

    /* The 8259s' interrupts, taken only inside the halt of a wait (the
       guest runs with interrupts off otherwise): end of interrupt, and
       back to the wait with interrupts off (IF cleared in the saved
       flags), which looks at what woke it and acknowledges the devices.
       Returning with IF set would take a level-triggered device's
       interrupt again at once, forever, before the wait could lower it. */
    .global mirage_solo5_virtio_irq_master
mirage_solo5_virtio_irq_master:
    pushq %rax
    movb $0x20, %al
    outb %al, $0x20
    andq $~0x200, 24(%rsp)
    popq %rax
    iretq
    .global mirage_solo5_virtio_irq_slave
mirage_solo5_virtio_irq_slave:
    pushq %rax
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
    andq $~0x200, 24(%rsp)
    popq %rax
    iretq

    /* Stack: vector, error code, rip, cs, rflags, rsp, ss. Fill Solo5's
       struct x86_trap_regs (cr2, ec, rip, cs, rflags, rsp, ss) and report
       on the trap stack; a fault while reporting halts at once. */
trap_common:
    cmpb $0, in_trap(%rip)
    jne 5f
    movb $1, in_trap(%rip)
    movq %cr2, %rax
    movq %rax, trap_regs+0(%rip)
    movq 8(%rsp), %rax
    movq %rax, trap_regs+8(%rip)
    movq 16(%rsp), %rax
    movq %rax, trap_regs+16(%rip)
    movq 24(%rsp), %rax
    movq %rax, trap_regs+24(%rip)
    movq 32(%rsp), %rax
    movq %rax, trap_regs+32(%rip)
    movq 40(%rsp), %rax
    movq %rax, trap_regs+40(%rip)
    movq 48(%rsp), %rax
    movq %rax, trap_regs+48(%rip)
    movq (%rsp), %rdi
    leaq trap_regs(%rip), %rsi
    leaq virtio_trap_stack_top(%rip), %rsp
    call mirage_solo5_virtio_trap
5:  cli
    hlt
    jmp 5b

    .section .data.boot, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: code, 64-bit */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00CF9A000000FFFF    /* 0x18: code, 32-bit, for the first jump */
gdt_end:
gdtr32:
    .word gdt_end - gdt - 1
    .long gdt
mxcsr_default:
    .long 0x1f80

    /* The first 4 GiB, identity-mapped, read-write, executable: static
       data, so the 32-bit entry only loads CR3. 2 MiB pages, but 4 KiB
       pages under the first 2 MiB, where the zero page is left out, so
       that a null pointer faults. */
    .balign 4096
virtio_pml4:
    .quad virtio_pdpt + 3
    .fill 511, 8, 0
virtio_pdpt:
    .quad virtio_pd + 3
    .quad virtio_pd + 0x1003
    .quad virtio_pd + 0x2003
    .quad virtio_pd + 0x3003
    .fill 508, 8, 0
virtio_pd:
    .quad virtio_pt0 + 3
    .set page, 1
    .rept 2047
    .quad (page << 21) | 0x83
    .set page, page + 1
    .endr
virtio_pt0:
    .quad 0
    .set page, 1
    .rept 511
    .quad (page << 12) | 3
    .set page, page + 1
    .endr

    .section .bss.boot, "aw", @nobits
    .balign 16
    .fill 65536, 1, 0
virtio_boot_stack_top:
    .fill 16384, 1, 0
virtio_trap_stack_top:
    .balign 8
trap_regs:
    .fill 56, 1, 0
in_trap:
    .byte 0
"#,
    abi_target = const solo5_abi::note::AbiTarget::Virtio as u32,
    options(att_syntax)
);
