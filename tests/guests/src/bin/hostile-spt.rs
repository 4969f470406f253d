//! A guest for spt that makes the system calls its seccomp filter allows
//! with hostile arguments: `hostile-spt efault` passes bad pointers (its own
//! read-only text, the unmapped zero page and tender area, past the end of
//! memory, wrapping, huge lengths) to every allowed call and expects the
//! kernel to refuse each with EFAULT, which is what protects the tender:
//! on spt the guest is the tender's process, and after the jump to the
//! guest no tender code runs; the kernel checks every pointer, and the
//! filter every call and descriptor. `hostile-spt CALL` makes a call the
//! filter forbids, and the kernel ends the process with SIGSYS.
#![no_std]
#![no_main]

use core::arch::asm;

use mirage_solo5::{self as solo5, abi::mft::MftType, abi::spt::*};

solo5::manifest!(block "storage");
solo5::main!(start);

const EFAULT: i64 = -14;

/// A raw system call, whatever its arguments.
fn syscall(nr: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: deliberately hostile; the kernel checks every pointer and the
    // filter every call. Nothing here is memory this program relies on.
    unsafe {
        asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
             in("r10") a[3], in("r8") a[4], in("r9") a[5], lateout("rcx") _, lateout("r11") _, options(nostack))
    };
    ret
}

fn start(si: &solo5::StartInfo) -> i32 {
    let what = si.cmdline.split_whitespace().next().unwrap_or("");
    // SAFETY: the tender wrote the boot information there before the jump.
    let bi = unsafe { core::ptr::read_volatile(BOOT_INFO_BASE as *const BootInfo) };
    // SAFETY: the tender's copy of the manifest: a header, then its entries.
    let entries = unsafe {
        let n = (*(bi.mft as *const solo5::abi::mft::MftHeader)).entries.min(64) as usize;
        core::slice::from_raw_parts((bi.mft + 8) as *const solo5::abi::mft::MftEntry, n)
    };
    let Some(blk) = entries.iter().find(|e| e.mtype == MftType::BlockBasic as u32) else {
        solo5::println!("hostile-spt: no block device in the manifest");
        return 2;
    };
    let (fd, bs, cap) = (blk.hostfd() as u64, blk.block_size() as u64, blk.block_capacity());
    let text = start as *const () as u64;
    let (epoll, timer) = (bi.epollfd as u64, bi.timerfd as u64);
    let top = bi.mem_size;
    let mut good = [0u8; 4096];
    let good = good.as_mut_ptr() as u64;
    // The descriptor of a flush grant (`--block-dsync:`, ours), which also
    // takes runs of 2^k blocks up to 1 MiB, never past the end.
    let granted = blk.block_flush().map(|f| f as u64);
    match what {
        "efault" => {
            // Make the timer due so that epoll_pwait has an event to write.
            let due: [i64; 4] = [0, 0, 0, 1];
            syscall(sys::TIMERFD_SETTIME, [timer, 0, due.as_ptr() as u64, 0, 0, 0]);
            let cases: &[(&str, u64, [u64; 6])] = &[
                ("write from the zero page", sys::WRITE, [1, 0, 16, 0, 0, 0]),
                ("write from unmapped memory", sys::WRITE, [1, 0xffff_0000_0000, 16, 0, 0, 0]),
                ("write wrapping", sys::WRITE, [1, u64::MAX - 7, 16, 0, 0, 0]),
                ("clock_gettime into text", sys::CLOCK_GETTIME, [sys::CLOCK_MONOTONIC, text, 0, 0, 0, 0]),
                ("clock_gettime into the zero page", sys::CLOCK_GETTIME, [sys::CLOCK_REALTIME, 8, 0, 0, 0, 0]),
                ("clock_gettime past the end", sys::CLOCK_GETTIME, [sys::CLOCK_MONOTONIC, top, 0, 0, 0, 0]),
                ("timerfd_settime from unmapped memory", sys::TIMERFD_SETTIME, [timer, 0, 0xffff_0000_0000, 0, 0, 0]),
                ("epoll_pwait into text", sys::EPOLL_PWAIT, [epoll, text, 1, u64::MAX, 0, 8]),
                ("pread64 into text", sys::PREAD64, [fd, text, bs, 0, 0, 0]),
                ("pread64 into the zero page", sys::PREAD64, [fd, 0x200, bs, 0, 0, 0]),
                ("pread64 straddling the start of memory", sys::PREAD64, [fd, HOST_MEM_BASE - bs / 2, bs, 0, 0, 0]),
                ("pwrite64 from unmapped memory", sys::PWRITE64, [fd, 0xffff_0000_0000, bs, 0, 0, 0]),
            ];
            for &(name, nr, args) in cases {
                let r = syscall(nr, args);
                if r != EFAULT {
                    solo5::println!("FAILURE: {name}: {r} instead of EFAULT");
                    return 1;
                }
            }
            // A buffer straddling the end of memory: the kernel takes what is
            // mapped and says how much, or refuses the whole.
            let r = syscall(sys::PWRITE64, [fd, top - bs / 2, bs, 0, 0, 0]);
            if r != EFAULT && !(0..bs as i64).contains(&r) {
                solo5::println!("FAILURE: pwrite64 straddling the end gave {r}");
                return 1;
            }
            // The same calls with good pointers still work.
            let r = syscall(sys::PREAD64, [fd, good, bs, 0, 0, 0]);
            if r != bs as i64 {
                solo5::println!("FAILURE: a good pread64 gave {r}");
                return 1;
            }
            solo5::println!("SUCCESS: {} hostile system calls got EFAULT", cases.len());
            0
        }
        // Calls outside the filter: the kernel ends the process (SIGSYS).
        "getpid" => syscall(39, [0; 6]) as i32,
        "open" => syscall(2, [text, 0, 0, 0, 0, 0]) as i32,
        "mprotect-exec" => syscall(10, [text & !0xfff, 0x1000, 7, 0, 0, 0]) as i32,
        "pwrite-past-end" => syscall(sys::PWRITE64, [fd, good, bs, cap, 0, 0]) as i32,
        // Our filter takes runs of 2^k blocks (MftEntry::block_runs), no
        // other length, none past the end.
        "pwrite-three-blocks" => syscall(sys::PWRITE64, [fd, good, 3 * bs, 0, 0, 0]) as i32,
        "pwrite-run-past-end" => syscall(sys::PWRITE64, [fd, good, 2 * bs, cap - bs, 0, 0]) as i32,
        "run" => {
            let r = syscall(sys::PREAD64, [fd, good, 2 * bs, cap - 2 * bs, 0, 0]);
            if r != 2 * bs as i64 || !blk.block_runs() {
                solo5::println!("FAILURE: a run of 2 blocks gave {r}; runs granted: {}", blk.block_runs());
                return 1;
            }
            solo5::println!("SUCCESS: a run of 2 blocks through the manifest's descriptor");
            0
        }
        "write-other-fd" => syscall(sys::WRITE, [2, good, 1, 0, 0, 0]) as i32,
        // Runs through the granted descriptor: 2^k blocks, inside the
        // device, are allowed; any other length, or past the end, is not.
        "granted-run" => {
            let Some(g) = granted else { return 2 };
            let r = syscall(sys::PREAD64, [g, good, 2 * bs, cap - 2 * bs, 0, 0]);
            let w = syscall(sys::PWRITE64, [g, good, 4 * bs, 0, 0, 0]);
            if r != 2 * bs as i64 || w != 4 * bs as i64 {
                solo5::println!("FAILURE: runs through the granted descriptor gave {r} and {w}");
                return 1;
            }
            solo5::println!("SUCCESS: runs of 2 and 4 blocks through the granted descriptor");
            0
        }
        "granted-run-past-end" => syscall(sys::PWRITE64, [granted.unwrap_or(fd), good, 2 * bs, cap - bs, 0, 0]) as i32,
        "granted-run-of-3" => syscall(sys::PWRITE64, [granted.unwrap_or(fd), good, 3 * bs, 0, 0, 0]) as i32,
        "granted-run-over-1-mib" => syscall(sys::PREAD64, [granted.unwrap_or(fd), good, 2 << 20, 0, 0, 0]) as i32,
        // Only the descriptor a flush grant names may be synced.
        "fdatasync-hostfd" => syscall(sys::FDATASYNC, [fd, 0, 0, 0, 0, 0]) as i32,
        _ => {
            solo5::println!("hostile-spt: unknown case '{what}'");
            64
        }
    }
}
