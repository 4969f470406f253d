//! The ELF notes and `.interp` every Solo5 executable carries, as assembly
//! for the same `global_asm!` block as the entry point, so that they always
//! end up in the linked image with it.
//!
//! * `.interp` names `/nonexistent/solo5/`, so the host refuses to `exec`
//!   the image directly;
//! * the ABI1 note names the target (operand `abi_target`) and ABI version 2;
//! * the OpenBSD note keeps OpenBSD from taking the image for its own.
//!
//! The entry point also refers to `__mirage_solo5_manifest_declared`, which
//! [`crate::manifest!`] defines: a guest without a manifest fails to link.

macro_rules! solo5_notes_asm {
    () => {
        r#"
    .section .interp, "a"
    .asciz "/nonexistent/solo5/"
    .balign 8

    .section .note.solo5.abi, "a"
    .balign 4
    .long 6, 16, 0x31494241     /* namesz, descsz, "ABI1" */
    .asciz "Solo5"
    .balign 4
    .long {abi_target}, 2, 0, 0 /* target, version 2, reserved */

    .section .note.solo5.not_openbsd, "a"
    .balign 4
    .long 8, 4, 1               /* namesz, descsz, NT_VERSION */
    .asciz "OpenBSD"
    .long 0

    .section .rodata.mirage_solo5_manifest_ref, "a"
    .balign 8
    .quad __mirage_solo5_manifest_declared
"#
    };
}
pub(crate) use solo5_notes_asm;
