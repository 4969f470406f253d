//! The CPU exception stubs of the guests that run at CPL 0 at some point
//! (hvt and virtio), as assembly for the same `global_asm!` block as their
//! boot code: `trap_N` for each vector N but 13 (#GP, whose handling
//! differs), each pushing a zero error code where the CPU pushes none and
//! then its vector, before jumping to the block's own `trap_common`.

macro_rules! trap_stubs_asm {
    () => {
        r#"
    .macro TRAP n
trap_\n:
    pushq $0
    pushq $\n
    jmp trap_common
    .endm
    .macro TRAP_EC n
trap_\n:
    pushq $\n
    jmp trap_common
    .endm

    TRAP 0
    TRAP 1
    TRAP 2
    TRAP 3
    TRAP 4
    TRAP 5
    TRAP 6
    TRAP 7
    TRAP_EC 8
    TRAP 9
    TRAP_EC 10
    TRAP_EC 11
    TRAP_EC 12
    TRAP_EC 14
    TRAP 15
    TRAP 16
    TRAP_EC 17
    TRAP 18
    TRAP 19
    TRAP 20
    TRAP_EC 21
    TRAP 22
    TRAP 23
    TRAP 24
    TRAP 25
    TRAP 26
    TRAP 27
    TRAP 28
    TRAP_EC 29
    TRAP_EC 30
    TRAP 31
"#
    };
}
pub(crate) use trap_stubs_asm;
