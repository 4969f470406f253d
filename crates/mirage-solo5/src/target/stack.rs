//! The switch from a boot stack to the unikernel's stack at the top of
//! guest memory (hvt and virtio, whose boot code starts on a small static
//! stack).

core::arch::global_asm!(
    r#"
    .section .text.mirage_solo5_switch_stack, "ax"
    .global mirage_solo5_switch_stack
    .type mirage_solo5_switch_stack, @function
mirage_solo5_switch_stack:
    /* The outermost frame of the unikernel's stack: a debugger's
       backtrace ends here (no return address) instead of reading past the
       top of memory. */
    .cfi_startproc
    .cfi_undefined rip
    movq %rsi, %rsp
    xorl %ebp, %ebp
    callq *%rdx
    ud2
    .cfi_endproc
"#,
    options(att_syntax)
);
