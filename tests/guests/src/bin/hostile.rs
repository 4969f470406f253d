//! A guest that makes hypercalls with hostile arguments: `hostile WHAT`.
//! Each one must end the guest with a message from the tender and status 1,
//! or (for bad handles and block ranges) fail with EINVAL. The manifest
//! declares one block device, "storage", so the block hypercalls exist.
//!
//! The `-ro`, `-low` and `-edge` cases name memory the host must not write
//! on the guest's behalf: the image's text (mapped read-only on the host, so
//! a write there would kill the tender with SIGSEGV), low memory (the
//! tender's page tables and the boot information), and ranges straddling
//! the end of the read-only segment. The guest prints the address it uses
//! (`hostile: gpa=0x...`) so the test can check the tender's message.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::Ordering;
use mirage_solo5::{self as solo5, abi::hvt::*, abi::ring::*};

solo5::manifest!(block "storage");
solo5::main!(start);

/// Makes hypercall port `port` with `gpa` in %eax, whatever they are.
fn raw(port: u16, gpa: u64) {
    // SAFETY: deliberately hostile; the tender must cope.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") gpa as u32) };
}

fn call<T>(hc: Hypercall, arg: &mut T) {
    raw(hc.port(), arg as *mut T as u64);
}

unsafe extern "C" {
    /// The end of the read-only segment's contents (the linker script's).
    static _erodata: u8;
}

/// An address in the image's text.
fn text() -> u64 {
    start as *const () as u64
}

/// Eight bytes before the end of the last read-only page: an argument
/// there straddles into the writable data after it.
fn ro_edge() -> u64 {
    let end = core::ptr::addr_of!(_erodata) as u64;
    end.next_multiple_of(0x1000) - 8
}

/// Shows the address a case uses, then makes hypercall `hc` with it.
fn at(hc: Hypercall, gpa: u64) {
    solo5::println!("hostile: gpa=0x{gpa:x}");
    solo5::console::flush();
    raw(hc.port(), gpa);
}

/// A block request whose data buffer is at `data`.
fn block_at(hc: Hypercall, data: u64) {
    solo5::println!("hostile: gpa=0x{data:x}");
    solo5::console::flush();
    let mut r = HcBlockRead { handle: 1, offset: 0, data, len: 512, ret: 0, _pad: 0 };
    call(hc, &mut r);
}

/// The ring, if the tender offers durable block writes through it.
fn block_ring() -> Option<&'static Ring> {
    // SAFETY: the boot information is at BOOT_INFO_BASE, mapped read-only
    // for the guest; the tender wrote it before the guest started.
    let bi = unsafe { core::ptr::read_volatile(BOOT_INFO_BASE as *const BootInfo) };
    if bi.host_features & FEATURE_RING_BLOCK == 0 || bi.net_ring == 0 {
        return None;
    }
    // SAFETY: the tender placed the ring there, in memory mapped for the
    // guest; every field is atomic, as the tender shares it.
    Some(unsafe { &*(bi.net_ring as *const Ring) })
}

/// Puts an OP_BLOCK_WRITE_SYNC on the ring, wakes the tender through
/// `port` (the kick, or the serve port), and returns the commit's result.
fn ring_block(ring: &Ring, port: u16, handle: u32, offset: u64, data: u64, len: u32) -> u32 {
    solo5::println!("hostile: gpa=0x{data:x}");
    solo5::console::flush();
    let tail = ring.ent_tail.load(Ordering::Relaxed);
    let head = ring.com_head.load(Ordering::Relaxed);
    let e = &ring.entries[(tail & RING_MASK) as usize];
    e.operation.store(OP_BLOCK_WRITE_SYNC, Ordering::Relaxed);
    e.handle.store(handle, Ordering::Relaxed);
    e.data.store(data, Ordering::Relaxed);
    e.len.store(len, Ordering::Relaxed);
    e.id.store(tail, Ordering::Relaxed);
    e.csum.store(offset, Ordering::Relaxed);
    ring.ent_tail.store(tail.wrapping_add(1), Ordering::SeqCst);
    raw(port, 0);
    while ring.com_tail.load(Ordering::Acquire) == head {
        core::hint::spin_loop();
    }
    let c = &ring.commits[(head & RING_MASK) as usize];
    let ret = c.ret.load(Ordering::Relaxed);
    if c.id.load(Ordering::Relaxed) != tail {
        solo5::println!("hostile: the commit answers another entry");
    }
    ring.com_head.store(head.wrapping_add(1), Ordering::Release);
    ret
}

fn start(si: &solo5::StartInfo) -> i32 {
    let what = si.cmdline.split_whitespace().next().unwrap_or("");
    let msg = b"hostile\n";
    let mem_top = (si.heap_start + si.heap_size) as u64 + (1 << 20);
    solo5::println!("hostile: {what}");
    solo5::console::flush();
    match what {
        "puts-ptr" => call(Hypercall::Puts, &mut HcPuts { data: 0xffff_0000, len: 16 }),
        "puts-len" => call(Hypercall::Puts, &mut HcPuts { data: msg.as_ptr() as u64, len: 1 << 40 }),
        "puts-wrap" => call(Hypercall::Puts, &mut HcPuts { data: 0x20_0000, len: u64::MAX - 0x10_0000 }),
        "puts-top" => call(Hypercall::Puts, &mut HcPuts { data: mem_top - 8, len: 8 }),
        "arg-oob" => raw(Hypercall::Puts.port(), 0xffff_ff00),
        "arg-straddle" => raw(Hypercall::Puts.port(), mem_top - 8),
        "poll-oob" => raw(Hypercall::Poll.port(), 0xfff0_0000),
        "walltime-oob" => raw(Hypercall::Walltime.port(), 0xfff0_0000),
        "halt-cookie" => call(Hypercall::Halt, &mut HcHalt { cookie: 0xffff_f000, exit_status: 3, _pad: 0 }),
        "walltime-ro" => at(Hypercall::Walltime, text()),
        "poll-ro" => at(Hypercall::Poll, text()),
        "blkread-arg-ro" => at(Hypercall::BlockRead, text()),
        "blkwrite-arg-ro" => at(Hypercall::BlockWrite, text()),
        "blkread-data-ro" => block_at(Hypercall::BlockRead, text()),
        "blkread-data-edge" => block_at(Hypercall::BlockRead, ro_edge() - 256),
        "poll-edge" => at(Hypercall::Poll, ro_edge()),
        "walltime-zero-low" => at(Hypercall::Walltime, 0),
        "poll-pagetables-low" => at(Hypercall::Poll, 0x2000),
        "walltime-bootinfo-low" => at(Hypercall::Walltime, 0x10000),
        "blkread-data-low" => block_at(Hypercall::BlockRead, 0xf_ff00),
        "blkwrite-data-ro" => {
            // Reading the guest's text to write it to disk is allowed.
            let mut r = HcBlockWrite { handle: 1, offset: 0, data: text(), len: 512, ret: 0, _pad: 0 };
            call(Hypercall::BlockWrite, &mut r);
            if r.ret != 0 {
                solo5::println!("FAILURE: writing the text to disk gave {}", r.ret);
                return 1;
            }
            solo5::println!("SUCCESS: the text went to disk");
            return 0;
        }
        "halt-cookie-ro" => {
            // The cookie is only read: a trap frame in read-only memory is fine.
            call(Hypercall::Halt, &mut HcHalt { cookie: text(), exit_status: 7, _pad: 0 });
        }
        "nr0" => raw(0x500, 0),
        "port-high" => raw(0x509, 0),
        "port-low" => raw(0x4ff, 0),
        "kick" => raw(RING_KICK_PIO_BASE, 0),
        "serve" => raw(RING_SERVE_PIO, 0),
        "flush-oob" => raw(BLOCK_FLUSH_PIO, 0xfff0_0000),
        "flush-ro" => {
            solo5::println!("hostile: gpa=0x{:x}", text());
            solo5::console::flush();
            raw(BLOCK_FLUSH_PIO, text());
        }
        "wsync-oob" => raw(BLOCK_WRITE_SYNC_PIO, 0xfff0_0000),
        "wsync-ro" => {
            solo5::println!("hostile: gpa=0x{:x}", text());
            solo5::console::flush();
            raw(BLOCK_WRITE_SYNC_PIO, text());
        }
        "wsync-einval" => {
            // Handle 1 is "storage", attached without a grant: the write
            // is refused whole, as a flush is.
            let buf = [0u8; 512];
            for handle in [0, 1, 99, 1 << 40] {
                let mut w =
                    HcBlockWrite { handle, offset: 0, data: buf.as_ptr() as u64, len: 512, ret: 0, _pad: 0 };
                raw(BLOCK_WRITE_SYNC_PIO, &mut w as *mut HcBlockWrite as u64);
                if w.ret != 2 {
                    solo5::println!("FAILURE: write-sync of handle {handle}: ret={} instead of EINVAL", w.ret);
                    return 1;
                }
            }
            solo5::println!("SUCCESS: every write-sync without a grant gave EINVAL");
            return 0;
        }
        "flush-einval" => {
            // Handle 1 is "storage", attached without a flush grant.
            for handle in [0, 1, 99, 1 << 40] {
                let mut f = HcBlockFlush { handle, ret: 0, _pad: 0 };
                raw(BLOCK_FLUSH_PIO, &mut f as *mut HcBlockFlush as u64);
                if f.ret != 2 {
                    solo5::println!("FAILURE: flush of handle {handle}: ret={} instead of EINVAL", f.ret);
                    return 1;
                }
            }
            solo5::println!("SUCCESS: every flush without a grant gave EINVAL");
            return 0;
        }
        "ring-block-oob" | "serve-block-oob" => {
            // Attached with a flush grant: the tender offers the block ring.
            let Some(ring) = block_ring() else {
                solo5::println!("hostile: the tender offers no block ring");
                return 1;
            };
            let port = if what.starts_with("serve") { RING_SERVE_PIO } else { RING_KICK_PIO_BASE };
            ring_block(ring, port, 1, 0, 0xfff0_0000, 512);
            loop {
                core::hint::spin_loop();
            }
        }
        "ring-block-serve-waits" => {
            // A whole-device write (1 MiB, then a sync: milliseconds), and
            // a serve request as soon as the thread has taken it: the
            // tender must answer only once the commit is posted.
            let Some(ring) = block_ring() else {
                solo5::println!("hostile: the tender offers no block ring");
                return 1;
            };
            let tail = ring.ent_tail.load(Ordering::Relaxed);
            let head = ring.com_head.load(Ordering::Relaxed);
            let e = &ring.entries[(tail & RING_MASK) as usize];
            e.operation.store(OP_BLOCK_WRITE_SYNC, Ordering::Relaxed);
            e.handle.store(1, Ordering::Relaxed);
            e.data.store(si.heap_start as u64, Ordering::Relaxed);
            e.len.store(1 << 20, Ordering::Relaxed);
            e.id.store(7, Ordering::Relaxed);
            e.csum.store(0, Ordering::Relaxed);
            ring.ent_tail.store(tail.wrapping_add(1), Ordering::SeqCst);
            raw(RING_KICK_PIO_BASE, 0);
            while ring.ent_head.load(Ordering::Acquire) == tail {
                core::hint::spin_loop();
            }
            raw(RING_SERVE_PIO, 0);
            let posted = ring.com_tail.load(Ordering::Acquire) != head;
            solo5::println!("hostile: committed when the serve returned: {posted}");
            return 0;
        }
        "ring-block-answers" => {
            let Some(ring) = block_ring() else {
                solo5::println!("hostile: the tender offers no block ring");
                return 0;
            };
            // Bad handles, ranges outside the 1 MiB device, then a good
            // write of 0xa5 at 4 KiB, which the test finds in the file.
            let buf = [0xa5u8; 1024];
            let p = buf.as_ptr() as u64;
            let mut rets = [0u32; 7];
            let cases = [(0, 0, 512), (99, 0, 512), (u32::MAX, 0, 512), (1, 1 << 20, 512), (1, (1 << 20) - 512, 1024), (1, u64::MAX - 10, 512), (1, 4096, 1024)];
            for (r, (handle, offset, len)) in rets.iter_mut().zip(cases) {
                *r = ring_block(ring, RING_KICK_PIO_BASE, handle, offset, p, len);
            }
            solo5::println!("hostile: block ring answers: {rets:?}");
            return 0;
        }
        "net-read" => call(Hypercall::NetRead, &mut HcNetRead::default()),
        "blk-data" => {
            let mut r = HcBlockRead { handle: 1, offset: 0, data: 0xfff0_0000, len: 512, ret: 0, _pad: 0 };
            call(Hypercall::BlockRead, &mut r);
        }
        "blk-einval" => {
            let mut buf = [0u8; 512];
            let p = buf.as_mut_ptr() as u64;
            let cases = [
                ("handle 0", HcBlockRead { handle: 0, offset: 0, data: p, len: 512, ret: 0, _pad: 0 }),
                ("handle 99", HcBlockRead { handle: 99, offset: 0, data: p, len: 512, ret: 0, _pad: 0 }),
                ("handle 2^40", HcBlockRead { handle: 1 << 40, offset: 0, data: p, len: 512, ret: 0, _pad: 0 }),
                ("offset at end", HcBlockRead { handle: 1, offset: 1 << 20, data: p, len: 512, ret: 0, _pad: 0 }),
                ("range past end", HcBlockRead { handle: 1, offset: (1 << 20) - 256, data: p, len: 512, ret: 0, _pad: 0 }),
                ("huge len", HcBlockRead { handle: 1, offset: 0, data: p, len: u64::MAX, ret: 0, _pad: 0 }),
                ("offset overflow", HcBlockRead { handle: 1, offset: u64::MAX - 10, data: p, len: 512, ret: 0, _pad: 0 }),
            ];
            for (name, mut c) in cases {
                call(Hypercall::BlockRead, &mut c);
                if c.ret != 2 {
                    solo5::println!("FAILURE: {name}: ret={} instead of EINVAL", c.ret);
                    return 1;
                }
            }
            solo5::println!("SUCCESS: every bad block request gave EINVAL");
            return 0;
        }
        _ => {
            solo5::println!("hostile: unknown case '{what}'");
            return 64;
        }
    }
    solo5::println!("hostile: the tender accepted {what}");
    1
}
