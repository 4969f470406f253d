//! A guest with a network interface that makes hostile network requests:
//! `hostile-net WHAT`. Through the NET_READ and NET_WRITE hypercalls, with
//! argument structs or buffers in its read-only text; and straight through
//! the shared-memory net ring (bypassing the bindings), where the tender's
//! I/O thread finds the bad entry and must stop the guest through the
//! vCPU loop with a message and status 1.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::Ordering;

use mirage_solo5::{self as solo5, abi::hvt::*, abi::ring::*};

solo5::manifest!(net "service");
solo5::main!(start);

fn raw(port: u16, gpa: u64) {
    // SAFETY: deliberately hostile; the tender must cope.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") gpa as u32) };
}

fn call<T>(hc: Hypercall, arg: &mut T) {
    raw(hc.port(), arg as *mut T as u64);
}

/// An address in the image's text, shown for the test to check the message.
fn text() -> u64 {
    let gpa = start as *const () as u64;
    solo5::println!("hostile: gpa=0x{gpa:x}");
    solo5::console::flush();
    gpa
}

/// The net ring the tender offers, if it does.
fn ring() -> Option<&'static Ring> {
    // SAFETY: the boot information is at BOOT_INFO_BASE, mapped read-only
    // for the guest; the tender wrote it before the guest started.
    let bi = unsafe { core::ptr::read_volatile(BOOT_INFO_BASE as *const BootInfo) };
    if bi.host_features & FEATURE_RING_IO == 0 || bi.net_ring == 0 {
        return None;
    }
    // SAFETY: the tender placed the ring there, in memory mapped for the
    // guest; every field is atomic, as the tender shares it.
    Some(unsafe { &*(bi.net_ring as *const Ring) })
}

/// Puts one entry on the ring, kicks the I/O thread (or, with `port`
/// RING_SERVE_PIO, has the tender serve the ring on the vCPU's thread) and
/// waits: the tender must end the guest.
fn submit(ring: &Ring, port: u16, op: u32, data: u64, len: u32, count: u32, csum: u64) -> ! {
    let tail = ring.ent_tail.load(Ordering::Relaxed);
    let e = &ring.entries[(tail & RING_MASK) as usize];
    e.operation.store(op, Ordering::Relaxed);
    e.handle.store(1, Ordering::Relaxed);
    e.data.store(data, Ordering::Relaxed);
    e.len.store(len, Ordering::Relaxed);
    e.id.store(1, Ordering::Relaxed);
    e.csum.store(csum, Ordering::Relaxed);
    ring.ent_tail.store(tail.wrapping_add(count), Ordering::SeqCst);
    raw(port, 0);
    solo5::println!("hostile: submitted; waiting for the tender to stop the guest");
    solo5::console::flush();
    loop {
        core::hint::spin_loop();
    }
}

fn start(si: &solo5::StartInfo) -> i32 {
    let what = si.cmdline.split_whitespace().next().unwrap_or("");
    solo5::println!("hostile: {what}");
    solo5::console::flush();
    let mut frame = [0u8; 64];
    match what {
        "netread-arg-ro" => raw(Hypercall::NetRead.port(), text()),
        "netwrite-arg-ro" => raw(Hypercall::NetWrite.port(), text()),
        "netread-data-ro" => {
            let mut r = HcNetRead { handle: 1, data: text(), len: 1514, ret: 0, _pad: 0 };
            call(Hypercall::NetRead, &mut r);
        }
        "netwrite-data-oob" => {
            let mut w = HcNetWrite { handle: 1, data: 0xfff0_0000, len: 60, ret: 0, _pad: 0 };
            call(Hypercall::NetWrite, &mut w);
        }
        "ring-read-ro" | "ring-write-oob" | "ring-overflow" | "ring-bad-csum" | "ring-bad-tso" | "serve-read-ro"
        | "serve-write-oob" | "serve-overflow" | "serve-bad-csum" | "serve-bad-tso" => {
            let Some(ring) = ring() else {
                solo5::println!("hostile: the tender offers no net ring");
                return 2;
            };
            let (port, case) = match what.strip_prefix("serve-") {
                Some(case) => (RING_SERVE_PIO, case),
                None => (RING_KICK_PIO_BASE, what.trim_start_matches("ring-")),
            };
            match case {
                "read-ro" => submit(ring, port, OP_NET_READ, text(), 1514, 1, 0),
                "write-oob" => submit(ring, port, OP_NET_WRITE, 0xfff0_0000, 60, 1, 0),
                // A checksum field past the frame's end (FEATURE_NET_CSUM).
                "bad-csum" => submit(ring, port, OP_NET_WRITE, frame.as_mut_ptr() as u64, 60, 1, csum_entry(60, 16)),
                // A segment to cut in a frame that holds no TCP/IP headers
                // (FEATURE_NET_TSO).
                "bad-tso" => {
                    let csum = csum_entry_segmented(34, 16, 1448);
                    submit(ring, port, OP_NET_WRITE, frame.as_mut_ptr() as u64, 60, 1, csum)
                }
                _ => submit(ring, port, OP_NET_WRITE, frame.as_mut_ptr() as u64, 60, RING_SIZE + 1, 0),
            }
        }
        _ => {
            solo5::println!("hostile: unknown case '{what}'");
            return 64;
        }
    }
    solo5::println!("hostile: the tender accepted {what}");
    1
}
