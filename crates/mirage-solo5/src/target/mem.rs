//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, which the compiler
//! emits calls to and which nothing else provides in a freestanding guest.
//!
//! Copies and fills use `rep movsb` / `rep stosb` (fast on every CPU with
//! ERMS); comparisons compare eight bytes at a time. None of them is written
//! as a plain byte loop, which the compiler could turn back into a call to
//! the very function being defined.

use core::arch::asm;

/// # Safety
/// `dest` and `src` are valid for `n` bytes and do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; rep movsb copies exactly n
    // bytes forwards (the direction flag is clear per the ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _, options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `dest` and `src` are valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap: dest is below src, or past its end.
        // SAFETY: as memcpy; forward copying is correct here.
        unsafe {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _, options(nostack, preserves_flags));
        }
    } else {
        // dest overlaps the end of src: copy backwards.
        // SAFETY: the pointers are to the last byte of each range; the
        // direction flag is set only for this instruction and cleared again.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack)
            );
        }
    }
    dest
}

/// # Safety
/// `dest` is valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; rep stosb writes n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within both ranges; unaligned loads are fine.
        let (x, y) = unsafe { ((a.add(i) as *const u64).read_unaligned(), (b.add(i) as *const u64).read_unaligned()) };
        if x != y {
            // The first differing byte decides; in little-endian it is the
            // lowest differing one, so compare big-endian values.
            return if x.swap_bytes() < y.swap_bytes() { -1 } else { 1 };
        }
        i += 8;
    }
    while i < n {
        // SAFETY: i < n. Volatile keeps this tail loop from becoming a call
        // to memcmp itself.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` refers to the unwinder's personality routine even
/// with `panic = "abort"`; nothing ever calls it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// The precompiled `alloc` has landing pads that resume unwinding; with
/// `panic = "abort"` no unwinding ever starts, so this is never reached.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume(_exception: *mut u8) -> ! {
    super::rt::abort_with(format_args!("unwinding is not supported"))
}
