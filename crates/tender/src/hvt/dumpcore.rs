//! `--dumpcore=DIR`: an ELF core file of a guest that aborts or faults,
//! as Solo5's `hvt_module_dumpcore.c` writes it, so that
//! `gdb KERNEL DIR/core.solo5-hvt.PID` shows where it stopped.
//!
//! The file is an `ET_CORE` ELF with two program headers: a `PT_NOTE`
//! holding one `NT_PRSTATUS` (Linux's `prstatus_t`, whose `pr_reg` is a
//! `struct user_regs_struct`), and a `PT_LOAD` of all guest memory at
//! address 0 (guest memory is identity-mapped). The registers are the
//! program's view ([`super::state`]): for a CPU exception, the trap frame
//! the guest passed as HALT cookie; for an abort from CPL 3, the frame of
//! the hypercall stub. Pages the guest never touched (as `mincore` says)
//! are left as holes, so a 1 GiB guest that used 10 MiB writes 10 MiB.
//!
//! The directory is opened, and an unnamed file created in it
//! (`O_TMPFILE`), before the seccomp filter is installed; at the end the
//! file is written and linked into the directory under its name. So the
//! filter allows writes to that one descriptor and links into that one
//! directory, and a guest that never aborts leaves nothing behind.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::memory::GuestMemory;
use super::state::GuestRegs;
use crate::{Exit, fatal, strerror, warn};

/// The usage line.
pub const USAGE: &str = "--dumpcore=DIR (enable guest core dump on abort/trap)";

/// `--dumpcore=DIR`: the directory, or `None` if `arg` is another option.
pub fn option(arg: &str) -> Option<&str> {
    arg.strip_prefix("--dumpcore=")
}

/// A directory ready to receive a core file.
#[derive(Debug)]
pub struct DumpCore {
    dir_name: String,
    dir: OwnedFd,
    file: OwnedFd,
}

fn os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl DumpCore {
    /// Opens `dir` and an unnamed file in it.
    pub fn open(dir: &str) -> Result<DumpCore, Exit> {
        let c = CString::new(dir).map_err(|_| fatal!("dumpcore: cannot open dir: {dir}: contains a NUL byte"))?;
        // SAFETY: a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(fatal!("dumpcore: cannot open dir: {dir}: {}", strerror(&os_error())));
        }
        // SAFETY: fd is a descriptor we just opened and own.
        let dir_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated path relative to our directory; checked.
        let fd = unsafe {
            libc::openat(dir_fd.as_raw_fd(), c".".as_ptr(), libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC, 0o600)
        };
        if fd < 0 {
            let e = os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => " (dir not writable)",
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) => {
                    " (its file system has no unnamed temporary files, O_TMPFILE: choose a directory on ext4, xfs, btrfs or tmpfs)"
                }
                _ => "",
            };
            return Err(fatal!("dumpcore: cannot create a core file in {dir}: {}{hint}", strerror(&e)));
        }
        // SAFETY: as above.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(DumpCore { dir_name: dir.to_string(), dir: dir_fd, file })
    }

    /// The descriptors the seccomp filter must allow: the directory (for
    /// the link) and the file (for the writes).
    pub fn fds(&self) -> (i32, i32) {
        (self.dir.as_raw_fd(), self.file.as_raw_fd())
    }

    /// Writes the core of a guest with registers `regs` that stopped with
    /// `signal`, and names it `core.solo5-hvt.PID` in the directory. Errors
    /// are reported as Solo5 reports them, on standard error; the tender's
    /// exit status stays the guest's.
    pub fn write(&self, mem: &GuestMemory, regs: &GuestRegs, signal: i32) {
        // SAFETY: getpid has no preconditions.
        let name = format!("core.solo5-hvt.{}", unsafe { libc::getpid() });
        warn(format_args!("dumpcore: dumping guest core to: {}/{name}", self.dir_name));
        match self.write_file(mem, regs, signal).and_then(|pages| self.link(&name).map(|()| pages)) {
            Ok((dumped, total)) => warn(format_args!("dumpcore: dumped {dumped} pages of total {total} pages")),
            Err(e) => {
                warn(format_args!("dumpcore: {e}"));
                warn("dumpcore: error(s) dumping core, file may be incomplete");
            }
        }
    }

    fn pwrite(&self, bytes: &[u8], offset: u64) -> Result<(), String> {
        let mut done = 0;
        while done < bytes.len() {
            // SAFETY: writing from a live slice to our own file.
            let n = unsafe {
                libc::pwrite64(
                    self.file.as_raw_fd(),
                    bytes[done..].as_ptr().cast(),
                    bytes.len() - done,
                    (offset + done as u64) as i64,
                )
            };
            if n <= 0 {
                let e = if n < 0 { strerror(&os_error()) } else { "short write".into() };
                return Err(format!("Error writing core file at offset {}: {e}", offset + done as u64));
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Headers, note, then every resident page of guest memory; returns
    /// (pages written, pages in all).
    fn write_file(&self, mem: &GuestMemory, regs: &GuestRegs, signal: i32) -> Result<(usize, usize), String> {
        let size = mem.alloc_size();
        let head = headers(size, regs, signal);
        self.pwrite(&head, 0)?;
        let page = 4096u64;
        let pages = (size / page) as usize;
        let base = mem.host_ptr(0, size).ok_or("guest memory is not mapped")?;
        let mut resident = vec![0u8; pages];
        // SAFETY: base..base+size is our own page-aligned mapping; the
        // vector has one byte per page.
        if unsafe { libc::mincore(base.cast(), size as usize, resident.as_mut_ptr()) } != 0 {
            return Err(format!("mincore() failed: {}", strerror(&os_error())));
        }
        // Pages mapped PROT_NONE (an image's segment without permissions)
        // cannot be copied from: they stay holes, read as zeros.
        for (start, end) in mem.unreadable() {
            let (first, last) = ((start / page) as usize, end.div_ceil(page) as usize);
            resident[first.min(pages)..last.min(pages)].fill(0);
        }
        let mut dumped = 0;
        let mut i = 0;
        while i < pages {
            if resident[i] & 1 == 0 {
                i += 1;
                continue;
            }
            // Runs of resident pages go out in one write.
            let start = i;
            while i < pages && resident[i] & 1 == 1 {
                i += 1;
            }
            let off = start as u64 * page;
            let len = (i - start) as u64 * page;
            // SAFETY: [off, off+len) lies inside the mapping (i <= pages);
            // the guest is stopped, and a byte copy of memory the guest may
            // have changed is harmless.
            let bytes = unsafe { std::slice::from_raw_parts(base.add(off as usize), len as usize) };
            self.pwrite(bytes, LOAD_OFFSET + off)?;
            dumped += i - start;
        }
        // SAFETY: our own file; the size covers the whole PT_LOAD.
        if unsafe { libc::ftruncate(self.file.as_raw_fd(), (LOAD_OFFSET + size) as i64) } != 0 {
            return Err(format!("Error sizing core file: {}", strerror(&os_error())));
        }
        Ok((dumped, pages))
    }

    /// Gives the unnamed file its name (`linkat` through `/proc/self/fd`,
    /// which needs no privilege, unlike `AT_EMPTY_PATH`).
    fn link(&self, name: &str) -> Result<(), String> {
        let from = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd())).map_err(|e| e.to_string())?;
        let to = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: NUL-terminated paths; checked.
        let r = unsafe {
            libc::linkat(libc::AT_FDCWD, from.as_ptr(), self.dir.as_raw_fd(), to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if r != 0 {
            return Err(format!("open({name}): {}", strerror(&os_error())));
        }
        Ok(())
    }
}

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// `sizeof(prstatus_t)` on x86-64 Linux, and where `pr_reg` starts in it.
const PRSTATUS_SIZE: usize = 336;
const PR_REG: usize = 112;
const NOTE_NAME: &[u8; 8] = b"CORE\0\0\0\0";
const NOTE_SIZE: usize = 12 + NOTE_NAME.len() + PRSTATUS_SIZE;
/// Guest memory starts on a page boundary of the file.
const LOAD_OFFSET: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;

/// The ELF header, the two program headers and the note, for a guest of
/// `mem_size` bytes.
pub fn headers(mem_size: u64, regs: &GuestRegs, signal: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(EHDR_SIZE + 2 * PHDR_SIZE + NOTE_SIZE);
    let u16 = |b: &mut Vec<u8>, v: u16| b.extend_from_slice(&v.to_le_bytes());
    let u32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let u64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
    // e_ident: ELF64, little-endian, version 1, OSABI standalone (as Solo5).
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 255, 0, 0, 0, 0, 0, 0, 0, 0]);
    u16(&mut b, 4); // ET_CORE
    u16(&mut b, 62); // EM_X86_64
    u32(&mut b, 1); // EV_CURRENT
    u64(&mut b, 0); // e_entry
    u64(&mut b, EHDR_SIZE as u64); // e_phoff
    u64(&mut b, 0); // e_shoff
    u32(&mut b, 0); // e_flags
    u16(&mut b, EHDR_SIZE as u16);
    u16(&mut b, PHDR_SIZE as u16);
    u16(&mut b, 2); // e_phnum
    u16(&mut b, 0); // e_shentsize
    u16(&mut b, 0); // e_shnum
    u16(&mut b, 0); // e_shstrndx
    let note_offset = (EHDR_SIZE + 2 * PHDR_SIZE) as u64;
    for (kind, flags, offset, size, align) in
        [(PT_NOTE, 0, note_offset, NOTE_SIZE as u64, 4), (PT_LOAD, 7, LOAD_OFFSET, mem_size, 4096)]
    {
        u32(&mut b, kind);
        u32(&mut b, flags);
        u64(&mut b, offset);
        u64(&mut b, 0); // p_vaddr: guest memory is identity-mapped
        u64(&mut b, 0); // p_paddr
        u64(&mut b, size); // p_filesz
        u64(&mut b, size); // p_memsz
        u64(&mut b, align);
    }
    u32(&mut b, 5); // n_namesz: "CORE" and its NUL
    u32(&mut b, PRSTATUS_SIZE as u32);
    u32(&mut b, NT_PRSTATUS);
    b.extend_from_slice(NOTE_NAME);
    b.extend_from_slice(&prstatus(regs, signal));
    b
}

/// Linux's `prstatus_t`: the signal (`pr_cursig`, at 12) and the registers
/// (`pr_reg`, a `struct user_regs_struct`, at 112); nothing else matters
/// to a debugger of a single-threaded guest.
pub fn prstatus(g: &GuestRegs, signal: i32) -> [u8; PRSTATUS_SIZE] {
    let mut p = [0u8; PRSTATUS_SIZE];
    p[0..4].copy_from_slice(&signal.to_le_bytes()); // pr_info.si_signo
    p[12..14].copy_from_slice(&(signal as u16).to_le_bytes());
    let r = &g.regs;
    let [cs, ss, ds, es, fs, gs] = g.seg.map(u64::from);
    let words = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax: not in a system call
        r.rip,
        cs,
        r.rflags,
        r.rsp,
        ss,
        g.fs_base,
        g.gs_base,
        ds,
        es,
        fs,
        gs,
    ];
    for (i, w) in words.iter().enumerate() {
        p[PR_REG + i * 8..PR_REG + i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_regs;

    #[test]
    fn the_headers_are_an_elf_core_with_a_note_and_memory() {
        let g = GuestRegs {
            regs: kvm_regs { rip: 0x10_1234, rsp: 0x3f_fff0, rbp: 0x55, ..Default::default() },
            seg: [0x23, 0x1b, 0, 0, 0, 0],
            ..Default::default()
        };
        let h = headers(32 << 20, &g, 11);
        assert_eq!(h.len(), EHDR_SIZE + 2 * PHDR_SIZE + NOTE_SIZE);
        assert!(h.len() as u64 <= LOAD_OFFSET);
        assert_eq!(&h[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([h[16], h[17]]), 4);
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        // Second program header: PT_LOAD of 32 MiB at file offset 4096.
        let ph = EHDR_SIZE + PHDR_SIZE;
        assert_eq!(u32::from_le_bytes(h[ph..ph + 4].try_into().unwrap()), PT_LOAD);
        assert_eq!((word(ph + 8), word(ph + 32)), (LOAD_OFFSET, 32 << 20));
        // The note's registers: rip is the 17th word of pr_reg, rsp the 20th.
        let reg = EHDR_SIZE + 2 * PHDR_SIZE + 12 + 8 + PR_REG;
        assert_eq!((word(reg + 16 * 8), word(reg + 19 * 8), word(reg + 4 * 8)), (0x10_1234, 0x3f_fff0, 0x55));
        assert_eq!(word(reg + 17 * 8), 0x23);
    }

    #[test]
    fn options() {
        assert_eq!(option("--dumpcore=/tmp"), Some("/tmp"));
        assert_eq!(option("--dumpcore"), None);
        assert!(matches!(DumpCore::open("/nonexistent/dir"), Err(Exit::Fatal(m)) if m.contains("cannot open dir")));
    }
}
