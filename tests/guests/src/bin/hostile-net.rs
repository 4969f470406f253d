//! A guest with a network interface that makes hostile network requests:
//! `hostile-net WHAT [poll]`. Through the NET_READ and NET_WRITE hypercalls, with
//! argument structs or buffers in its read-only text; and straight through
//! the shared-memory net ring (bypassing the bindings), where the tender's
//! I/O thread finds the bad entry and must stop the guest through the
//! vCPU loop with a message and status 1. On spt, the one `ioctl` the
//! filter allows a tap granted receive offload, and others it does not.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::Ordering;

use mirage_solo5::{self as solo5, abi::hvt::*, abi::ring::*, abi::vnet};

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
    if POLL_AFTER.load(Ordering::Relaxed) {
        // Asleep in POLL, a minute at a time, when the I/O thread finds
        // the entry: the tender must wake it and stop the guest at once.
        loop {
            let mut p = HcPoll { timeout_nsecs: 60_000_000_000, ready_set: 0, ret: 0, _pad: 0 };
            call(Hypercall::Poll, &mut p);
        }
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Whether [`submit`] waits in POLL rather than spinning.
static POLL_AFTER: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A raw system call (spt), whatever its arguments.
fn syscall3(nr: u64, a0: u64, a1: u64, a2: u64) -> i64 {
    let ret: i64;
    // SAFETY: deliberately hostile; the filter checks every call.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a0, in("rsi") a1, in("rdx") a2,
             lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

/// The host descriptor of the tap (spt): entry 1 of the manifest.
fn tap_fd() -> u64 {
    // SAFETY: the tender wrote the boot information there before the jump.
    let bi = unsafe { core::ptr::read_volatile(solo5::abi::spt::BOOT_INFO_BASE as *const solo5::abi::spt::BootInfo) };
    // SAFETY: the tender's copy of the manifest: a header, then entry 0
    // (reserved), then this image's network device.
    let e = unsafe { &*((bi.mft + 8) as *const solo5::abi::mft::MftEntry).add(1) };
    solo5::println!("hostile: rx offload granted: {}", e.net_rx_offload());
    solo5::console::flush();
    e.hostfd() as u64
}

/// NET_RX_OFFLOAD_PIO for `handle` (hvt): the tender's answer.
fn rx_offload(handle: u64) -> u32 {
    let mut a = HcNetRxOffload { handle, ret: 99, _pad: 0 };
    raw(NET_RX_OFFLOAD_PIO, &mut a as *mut HcNetRxOffload as u64);
    a.ret
}

fn start(si: &solo5::StartInfo) -> i32 {
    let what = si.cmdline.split_whitespace().next().unwrap_or("");
    POLL_AFTER.store(si.cmdline.split_whitespace().nth(1) == Some("poll"), Ordering::Relaxed);
    solo5::println!("hostile: {what}");
    solo5::console::flush();
    let mut frame = [0u8; 64];
    match what {
        "netread-arg-ro" => raw(Hypercall::NetRead.port(), text()),
        "netwrite-arg-ro" => raw(Hypercall::NetWrite.port(), text()),
        "netread-data-ro" => {
            let mut r = HcNetRead { handle: 1, data: text(), len: 1514, ret: 0, flags: 0 };
            call(Hypercall::NetRead, &mut r);
        }
        "rx-offload-arg-ro" => raw(NET_RX_OFFLOAD_PIO, text()),
        "rx-offload-handles" => {
            // The reserved entry, one past the manifest, then the device.
            let answers = [rx_offload(0), rx_offload(7), rx_offload(1 << 40), rx_offload(1)];
            solo5::println!("hostile: rx offload answers: {answers:?}");
            return 0;
        }
        "rx-offload-repeated" => {
            let ok = (0..1000).filter(|_| rx_offload(1) == 0).count();
            solo5::println!("hostile: rx offload asked 1000 times, {ok} answered OK");
            return 0;
        }
        "ioctl-granted" => {
            let r = syscall3(16, tap_fd(), vnet::TUNSETOFFLOAD, vnet::RX_OFFLOAD_FLAGS);
            solo5::println!("hostile: TUNSETOFFLOAD with receive offload's flags: {r}");
            return 0;
        }
        // UFO besides: not the request granted.
        "ioctl-other-flags" => _ = syscall3(16, tap_fd(), vnet::TUNSETOFFLOAD, vnet::RX_OFFLOAD_FLAGS | 0x08),
        // TUNSETIFF, whose argument is a pointer.
        "ioctl-other-request" => _ = syscall3(16, tap_fd(), 0x4004_54ca, vnet::RX_OFFLOAD_FLAGS),
        "netwrite-data-oob" => {
            let mut w = HcNetWrite { handle: 1, data: 0xfff0_0000, len: 60, ret: 0, _pad: 0 };
            call(Hypercall::NetWrite, &mut w);
        }
        "post-flood" => {
            let Some(ring) = ring() else {
                solo5::println!("hostile: the tender offers no net ring");
                return 2;
            };
            // Receive buffers beyond the RING_SIZE the tender keeps, 1000
            // entries at a time, each served at once.
            static mut BUF: [u8; 2048] = [0; 2048];
            let data = core::ptr::addr_of_mut!(BUF) as u64;
            for round in 0..3u32 {
                let tail = ring.ent_tail.load(Ordering::Relaxed);
                for i in 0..1000u32 {
                    let e = &ring.entries[(tail.wrapping_add(i) & RING_MASK) as usize];
                    e.operation.store(OP_NET_POST_READ, Ordering::Relaxed);
                    e.handle.store(1, Ordering::Relaxed);
                    e.data.store(data, Ordering::Relaxed);
                    e.len.store(2048, Ordering::Relaxed);
                    e.id.store(round * 1000 + i, Ordering::Relaxed);
                    e.csum.store(0, Ordering::Relaxed);
                }
                ring.ent_tail.store(tail.wrapping_add(1000), Ordering::SeqCst);
                raw(RING_SERVE_PIO, 0);
            }
            solo5::println!("hostile: 3000 buffers posted");
        }
        "post-bad-handle" => {
            let Some(ring) = ring() else {
                solo5::println!("hostile: the tender offers no net ring");
                return 2;
            };
            let tail = ring.ent_tail.load(Ordering::Relaxed);
            let head = ring.com_head.load(Ordering::Relaxed);
            let e = &ring.entries[(tail & RING_MASK) as usize];
            e.operation.store(OP_NET_POST_READ, Ordering::Relaxed);
            e.handle.store(7, Ordering::Relaxed);
            e.data.store(frame.as_mut_ptr() as u64, Ordering::Relaxed);
            e.len.store(64, Ordering::Relaxed);
            e.id.store(77, Ordering::Relaxed);
            ring.ent_tail.store(tail.wrapping_add(1), Ordering::SeqCst);
            raw(RING_SERVE_PIO, 0);
            let c = &ring.commits[(head & RING_MASK) as usize];
            let posted = ring.com_tail.load(Ordering::SeqCst).wrapping_sub(head);
            solo5::println!(
                "hostile: a buffer posted for handle 7: {posted} commit, id {}, ret {}",
                c.id.load(Ordering::Relaxed),
                c.ret.load(Ordering::Relaxed)
            );
            return 0;
        }
        "ring-read-ro" | "ring-write-oob" | "ring-overflow" | "ring-bad-csum" | "ring-bad-tso" | "serve-read-ro"
        | "serve-write-oob" | "serve-overflow" | "serve-bad-csum" | "serve-bad-tso" | "ring-post-ro"
        | "serve-post-ro" | "ring-tso-udp" | "ring-tso-tiny" => {
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
                // A receive buffer in read-only text (FEATURE_RING_POSTED).
                "post-ro" => submit(ring, port, OP_NET_POST_READ, text(), 1514, 1, 0),
                "write-oob" => submit(ring, port, OP_NET_WRITE, 0xfff0_0000, 60, 1, 0),
                // A checksum field past the frame's end (FEATURE_NET_CSUM).
                "bad-csum" => submit(ring, port, OP_NET_WRITE, frame.as_mut_ptr() as u64, 60, 1, csum_entry(60, 16)),
                // A segment to cut in a frame that holds no TCP/IP headers
                // (FEATURE_NET_TSO).
                "bad-tso" => {
                    let csum = csum_entry_segmented(34, 16, 1448);
                    submit(ring, port, OP_NET_WRITE, frame.as_mut_ptr() as u64, 60, 1, csum)
                }
                // A segment to cut in a frame whose IPv4 header says UDP,
                // with a TCP header's data offset where TCP's would be.
                "tso-udp" => {
                    frame[12..14].copy_from_slice(&[0x08, 0x00]);
                    (frame[14], frame[23], frame[34 + 12]) = (0x45, 17, 5 << 4);
                    let csum = csum_entry_segmented(34, 16, 1448);
                    submit(ring, port, OP_NET_WRITE, frame.as_mut_ptr() as u64, 60, 1, csum)
                }
                // A TCP segment to cut into segments of one byte each: the
                // host would make a frame of every byte.
                "tso-tiny" => {
                    frame[12..14].copy_from_slice(&[0x08, 0x00]);
                    (frame[14], frame[23], frame[34 + 12]) = (0x45, 6, 5 << 4);
                    let csum = csum_entry_segmented(34, 16, 1);
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
