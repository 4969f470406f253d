//! A guest that ends badly on purpose: `fault WHAT [N]`.
//!
//! * `exit N`: returns N from main;
//! * `abort`, `panic`: the bindings' abort and panic paths (status 255);
//! * `zeropage`, `unmapped`, `bootinfo`, `text`: writes to address 8, to
//!   16 GiB, to the read-only boot information, to the guest's own code;
//! * `ud2`, `divide`, `int3`: CPU exceptions;
//! * `float`: floating-point and SSE work, which must simply work;
//! * `touch N`: writes every page of N MiB of heap, then aborts (the
//!   largest core file a guest of that size makes).
#![no_std]
#![no_main]

extern crate alloc;

use core::arch::asm;
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    let mut args = si.cmdline.split_whitespace();
    let what = args.next().unwrap_or("");
    solo5::println!("fault: {what}");
    // SAFETY (all arms): these are deliberate faults; each either works or
    // ends the guest through its trap handler.
    unsafe {
        match what {
            "exit" => return args.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            "abort" => solo5::abort(),
            "panic" => panic!("deliberate panic"),
            "zeropage" => core::ptr::write_volatile(8 as *mut u8, 1),
            "unmapped" => core::ptr::write_volatile(0x4_0000_0000 as *mut u8, 1),
            "bootinfo" => core::ptr::write_volatile(0x1_0000 as *mut u8, 1),
            "text" => core::ptr::write_volatile(start as *const () as *mut u8, 0xc3),
            "ud2" => asm!("ud2"),
            "divide" => asm!("xor ecx, ecx", "div ecx", out("eax") _, out("edx") _, out("ecx") _),
            "int3" => asm!("int3"),
            "touch" => {
                let mib: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                let mut heap = alloc::vec::Vec::<u8>::new();
                if heap.try_reserve_exact(mib << 20).is_err() {
                    solo5::println!("fault: cannot allocate {mib} MiB");
                    return 2;
                }
                heap.resize(mib << 20, 0);
                for page in heap.chunks_mut(4096) {
                    core::ptr::write_volatile(&mut page[0], 1);
                }
                solo5::println!("fault: touched {} pages", heap.len() / 4096);
                solo5::abort()
            }
            "float" => {
                let mut x = core::hint::black_box(1.5f64);
                let mut v = core::hint::black_box([1.0f32, 2.0, 3.0, 4.0]);
                for _ in 0..1000 {
                    x = x * 1.0001 + 0.5;
                    for f in v.iter_mut() {
                        *f = *f * 1.5 - 0.25;
                    }
                }
                solo5::println!("float: {:.3} {:.3}", x, v[3]);
                return 0;
            }
            _ => {
                solo5::println!("fault: unknown case '{what}'");
                return 64;
            }
        }
    }
    solo5::println!("fault: survived {what}");
    1
}
