//! A guest that stays at CPL 0 with the tender's own page tables, as a
//! Solo5 C guest does, and executes one instruction no hypercall allows,
//! chosen by the first character of its command line:
//!
//! * `i`: `inl` from a hypercall port; `b`: `outb`; `w`: `outw`;
//! * `r`: `rep outsl` of two words; `h`: `hlt`; `t`: a triple fault.
//!
//! It does not use the bindings; everything is assembly, with its own notes.
#![no_std]
#![no_main]

use core::arch::global_asm;

global_asm!(
    r#"
    .section .interp, "a"
    .asciz "/nonexistent/solo5/"
    .section .note.solo5.abi, "a"
    .balign 4
    .long 6, 16, 0x31494241
    .asciz "Solo5"
    .balign 4
    .long 1, 2, 0, 0
    .section .note.solo5.not_openbsd, "a"
    .balign 4
    .long 8, 4, 1
    .asciz "OpenBSD"
    .long 0
    .section .note.solo5.manifest, "a"
    .balign 8
    .long 6, 116, 0x3154464d
    .asciz "Solo5"
    .balign 8
    .long 1, 1
    .fill 68, 1, 0
    .long 0x40000000
    .fill 32, 1, 0

    .section .text.boot, "ax"
    .global _start
_start:
    movq 24(%rdi), %rsi         /* boot_info.cmdline */
    movzbl (%rsi), %eax
    movw $0x502, %dx
    cmpb $'i', %al
    je 1f
    cmpb $'b', %al
    je 2f
    cmpb $'w', %al
    je 3f
    cmpb $'r', %al
    je 4f
    cmpb $'h', %al
    je 5f
    cmpb $'t', %al
    je 6f
    jmp 9f
1:  inl (%dx), %eax
    jmp 9f
2:  outb %al, (%dx)
    jmp 9f
3:  outw %ax, (%dx)
    jmp 9f
4:  leaq args(%rip), %rsi
    movl $2, %ecx
    rep outsl
    jmp 9f
5:  hlt
    jmp 9f
6:  lidt null_idt(%rip)
    int3
9:  /* survived: halt with status 7 */
    leaq halt(%rip), %rax
    movw $0x508, %dx
    outl %eax, (%dx)
    hlt

    .section .rodata
    .balign 8
halt:
    .quad 0
    .long 7, 0
args:
    .long 0, 0
null_idt:
    .word 0
    .quad 0
"#,
    options(att_syntax)
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
