//! The CPL-0 part of the hvt guest: entry, descriptor tables, page tables,
//! trap stubs. Everything here is hand-written assembly, because code at
//! CPL 0 is emulated on nested paravirtual KVM (slow, and most SSE
//! instructions fail there): it must be short and use no SSE.
//!
//! At entry (`_start`, CPL 0, the tender's page tables) the code loads its
//! own GDT (with user segments and a TSS) and IDT, builds its page tables,
//! switches to a static boot stack and `iretq`s to [`super::start`] at CPL
//! 3. The descriptor tables are static data assembled at link time; the
//! page tables are in .bss, so that they cost nothing in the image:
//!
//! * `_start` maps only the image, with 2 MiB pages of a boot page
//!   directory (one store per 2 MiB of image). At CPL 3, where code runs
//!   natively, [`super::map_memory`] fills the real page directory (2 MiB
//!   pages) and the 4 KiB table under the first 2 MiB (the zero page and
//!   the tender's structures not present, the boot information read-only)
//!   while nothing refers to them, puts the directory in place of the boot
//!   one with a single store, and drops the boot directory's stale
//!   translation of the first 2 MiB with a CPL-3 `invlpg`, which the #GP
//!   stub performs (always for address 0, whatever CPL 3 asked for). The
//!   choices are this machine's nested KVM's: a loop filling the entries
//!   at CPL 0 would cost 5 ms of emulation; every store to a table in use
//!   traps to the hypervisor, which shadows the tables (filling the
//!   directory in use cost 4.5 ms); and any load of CR3 costs 0.2 ms.
//! * the IDT and TSS descriptors hold 16-bit relocations of addresses in
//!   the first 64 KiB of the image (`.text.boot` is placed first by the
//!   linker script), so no code has to split addresses into descriptor
//!   fields at run time. The linker fails if they do not fit.
//!
//! A CPL-3 `out` (a hypercall) raises #GP. The #GP stub checks that the
//! fault came from CPL 3 at an `out %eax,(%dx)` instruction, executes it
//! and returns past it: eleven instructions. It does the same for `invlpg`,
//! as a TLB flush of the first 2 MiB. Any other exception saves the
//! trap frame (Solo5's `struct x86_trap_regs`) and `iretq`s to
//! [`super::trap`] at CPL 3 on a dedicated stack, which reports it and
//! halts. A fault while reporting a fault halts at once with status 255.

use core::arch::global_asm;

global_asm!(
    super::super::notes::solo5_notes_asm!(),
    r#"
    .set USER_DS, 0x1b
    .set USER_CS, 0x23
    .set TSS_SEL, 0x28
    .set IMAGE_BASE, 0x100000
    .set HALT_PORT, 0x508

    .section .text.boot, "ax"
    .code64

    .global _start
    .type _start, @function
_start:
    /* %rdi = boot information (0x10000), kept for the CPL-3 entry. */
    lgdt gdtr(%rip)
    lidt idtr(%rip)
    movw $TSS_SEL, %ax
    ltr %ax
    /* The page tables are in .bss (zero). Here only the image is mapped,
       with 2 MiB pages of a boot page directory, user read-write (one
       page unless the image is larger): every instruction here is
       emulated. CPL 3 builds the real tables (map_memory in mod.rs)
       natively, while nothing refers to them, and switches to them. */
    movq $pdpt + 7, %rax
    movq %rax, pml4(%rip)
    movq $pd_boot + 7, %rax
    movq %rax, pdpt(%rip)
    movq $0x87, %rax
    leaq pd_boot(%rip), %rcx
3:  movq %rax, (%rcx)
    addq $8, %rcx
    addq $0x200000, %rax
    cmpq $_end + 0x87, %rax
    jb 3b
    movq $pml4, %rax
    movq %rax, %cr3
    leaq boot_stack_top(%rip), %rsp
    pushq $USER_DS
    pushq $boot_stack_top - 8
    pushq $2
    pushq $USER_CS
    pushq $mirage_solo5_hvt_start
    iretq
    .size _start, . - _start

    /* #GP: a CPL-3 hypercall, a CPL-3 TLB flush, or a real fault. */
gp_stub:
    pushq %rax
    testb $3, 24(%rsp)          /* saved %cs: from CPL 3? */
    jz 1f
    movq 16(%rsp), %rax         /* saved %rip */
    cmpb $0xef, (%rax)          /* outl %eax, (%dx) */
    jne 2f
    popq %rax
    outl %eax, (%dx)
    addq $8, %rsp               /* the error code */
    incq (%rsp)                 /* past the one-byte instruction */
    iretq
2:  cmpw $0x010f, (%rax)        /* invlpg (%rax) (0f 01 38) */
    jne 1f
    cmpb $0x38, 2(%rax)
    jne 1f
    xorl %eax, %eax             /* the first 2 MiB, whatever %rax CPL 3 */
    invlpg (%rax)               /* gave: it chooses nothing */
    popq %rax
    addq $8, %rsp
    addq $3, (%rsp)
    iretq
1:  popq %rax
    pushq $13
    jmp trap_common

"#,
    super::super::trap_stubs::trap_stubs_asm!(),
    r#"

    /* Stack: vector, error code, rip, cs, rflags, rsp, ss. */
trap_common:
    cmpb $0, in_trap(%rip)
    jne double_fault
    movb $1, in_trap(%rip)
    pushq %rax
    movq %cr2, %rax
    movq %rax, mirage_solo5_trap_regs+0(%rip)
    movq 16(%rsp), %rax
    movq %rax, mirage_solo5_trap_regs+8(%rip)
    movq 24(%rsp), %rax
    movq %rax, mirage_solo5_trap_regs+16(%rip)
    movq 32(%rsp), %rax
    movq %rax, mirage_solo5_trap_regs+24(%rip)
    movq 40(%rsp), %rax
    movq %rax, mirage_solo5_trap_regs+32(%rip)
    movq 48(%rsp), %rax
    movq %rax, mirage_solo5_trap_regs+40(%rip)
    movq 56(%rsp), %rax
    movq %rax, mirage_solo5_trap_regs+48(%rip)
    movq 8(%rsp), %rdi
    leaq mirage_solo5_trap_regs(%rip), %rsi
    pushq $USER_DS
    pushq $trap_stack_top - 8
    pushq $2
    pushq $USER_CS
    pushq $mirage_solo5_hvt_trap
    iretq

double_fault:
    movl $double_fault_halt, %eax
    movw $HALT_PORT, %dx
    outl %eax, (%dx)
    jmp double_fault

    .balign 16
tss:
    .long 0
    .quad kstack_top            /* rsp0: CPL-3 traps land here */
    .quad 0, 0
    .quad 0
    .quad ist1_top              /* ist1: #DF, NMI, #MC */
    .quad 0, 0, 0, 0, 0, 0
    .quad 0
    .word 0
    .word 104                   /* no I/O permission bitmap */

    .macro GATE handler, ist=0
    .word \handler - IMAGE_BASE /* the handler lies in the first 64 KiB */
    .word 0x08
    .byte \ist
    .byte 0x8e                  /* present, DPL 0, 64-bit interrupt gate */
    .word IMAGE_BASE >> 16
    .long 0
    .long 0
    .endm

    .balign 16
idt:
    GATE trap_0
    GATE trap_1
    GATE trap_2, 1
    GATE trap_3
    GATE trap_4
    GATE trap_5
    GATE trap_6
    GATE trap_7
    GATE trap_8, 1
    GATE trap_9
    GATE trap_10
    GATE trap_11
    GATE trap_12
    GATE gp_stub
    GATE trap_14
    GATE trap_15
    GATE trap_16
    GATE trap_17
    GATE trap_18, 1
    GATE trap_19
    GATE trap_20
    GATE trap_21
    GATE trap_22
    GATE trap_23
    GATE trap_24
    GATE trap_25
    GATE trap_26
    GATE trap_27
    GATE trap_28
    GATE trap_29
    GATE trap_30
    GATE trap_31
idt_end:

    .section .data.boot, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF    /* 0x08: code, DPL 0, 64-bit */
    .quad 0x00CF93000000FFFF    /* 0x10: data, DPL 0 */
    .quad 0x00CFF3000000FFFF    /* 0x18: data, DPL 3 */
    .quad 0x00AFFB000000FFFF    /* 0x20: code, DPL 3, 64-bit */
    .word 103                   /* 0x28: TSS, limit */
    .word tss - IMAGE_BASE      /* base 0..15 (first 64 KiB of the image) */
    .byte IMAGE_BASE >> 16      /* base 16..23 */
    .byte 0x89                  /* present, available 64-bit TSS */
    .byte 0
    .byte 0
    .long 0
    .long 0
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
idtr:
    .word idt_end - idt - 1
    .quad idt

    .balign 8
double_fault_halt:
    .quad 0                     /* struct hvt_hc_halt: no cookie */
    .long 255                   /* SOLO5_EXIT_ABORT */
    .long 0

    .section .bss.boot, "aw", @nobits
    .balign 4096
pml4:
    .fill 4096, 1, 0
    .global mirage_solo5_pdpt
mirage_solo5_pdpt:
pdpt:
    .fill 4096, 1, 0
pd_boot:
    .fill 4096, 1, 0
    .global mirage_solo5_pd0
mirage_solo5_pd0:
pd0:
    .fill 4096, 1, 0
    .global mirage_solo5_pt0
mirage_solo5_pt0:
    .fill 4096, 1, 0
kstack:
    .fill 4096, 1, 0
kstack_top:
    .fill 4096, 1, 0
ist1_top:
    .fill 8192, 1, 0
boot_stack_top:
    .fill 32768, 1, 0
trap_stack_top:
    .balign 8
    .global mirage_solo5_trap_regs
mirage_solo5_trap_regs:
    .fill 56, 1, 0
in_trap:
    .byte 0
"#,
    abi_target = const solo5_abi::note::AbiTarget::Hvt as u32,
    options(att_syntax)
);
