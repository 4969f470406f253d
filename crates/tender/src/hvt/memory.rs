//! Guest memory, and the one checked path from a guest address to the host.
//!
//! An address the guest gives is a [`Gpa`]: untrusted until checked. The
//! only ways from a `Gpa` to host memory are [`GuestMemory::readable`],
//! [`GuestMemory::writable`] and the typed [`GuestMemory::read_obj`] /
//! [`GuestMemory::arg`], which return checked slices rather than raw
//! pointers. Each applies Solo5's bounds rule (`HVT_CHECKED_GPA_P`: the
//! range starts and ends strictly inside the guest's memory, the net ring
//! excluded, no overflow) and, for writes, the protections the tender gave
//! the guest's memory: the image's read-only segments (text, rodata, notes)
//! are read-only on the host too, so a host write there would kill the
//! tender with SIGSEGV, and low memory (below `HVT_GUEST_MIN_BASE`: the
//! tender's GDT and page tables, the boot information, manifest and command
//! line) is the tender's own. A failed check is the guest's fault and ends
//! it with Solo5's "Invalid guest access" message and status 1.

use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use zerocopy::{FromBytes, IntoBytes};

/// A guest-physical address, as the guest gave it: nothing is known of it
/// until [`GuestMemory`] has checked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gpa(pub u64);

/// A guest address range that failed a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidAccess {
    /// The guest address.
    pub gpa: u64,
    /// The length.
    pub len: u64,
}

impl std::fmt::Display for InvalidAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Invalid guest access: gpa=0x{:x}, sz={}", self.gpa, self.len)
    }
}

/// A checked range of guest memory the host may read.
#[derive(Debug)]
pub struct GuestSlice<'m> {
    ptr: NonNull<u8>,
    len: usize,
    _mem: PhantomData<&'m GuestMemory>,
}

impl GuestSlice<'_> {
    /// The host address of the range, for a system call that reads it
    /// (`write(2)`, `pwrite(2)`). The range is mapped and readable for as
    /// long as the slice lives; the guest may change it meanwhile.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the range's first bytes into `out`, as many as both hold: a
    /// snapshot to look at (headers), which the guest cannot change under
    /// the reader. How many were copied.
    pub fn copy_prefix(&self, out: &mut [u8]) -> usize {
        let n = self.len.min(out.len());
        // SAFETY: the range's first n bytes are mapped and readable while
        // the slice lives, and `out` is a distinct host buffer of at least
        // n bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), n) };
        n
    }
}

/// A checked range of guest memory the host may write.
#[derive(Debug)]
pub struct GuestSliceMut<'m> {
    ptr: NonNull<u8>,
    len: usize,
    _mem: PhantomData<&'m GuestMemory>,
}

impl GuestSliceMut<'_> {
    /// The host address of the range, for a system call that fills it
    /// (`read(2)`, `pread(2)`). The range is mapped and writable for as long
    /// as the slice lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `bytes` to the start of the range; false if they do not fit.
    pub fn copy_from(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.len {
            return false;
        }
        // SAFETY: the range is mapped and writable (checked when the slice
        // was made) and holds bytes.len() bytes; host memory in `bytes`
        // cannot overlap guest memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr(), bytes.len()) };
        true
    }
}

/// A hypercall's argument struct, checked readable and writable: the
/// hypercalls with results read their arguments and write the results back
/// through it.
#[derive(Debug)]
pub struct GuestArg<'m, T> {
    slice: GuestSliceMut<'m>,
    _t: PhantomData<T>,
}

impl<T: FromBytes + IntoBytes + zerocopy::Immutable> GuestArg<'_, T> {
    /// Reads the struct as the guest left it.
    pub fn get(&self) -> T {
        // SAFETY: the slice covers size_of::<T>() mapped, readable bytes; T
        // accepts any bytes; read_unaligned copes with a misaligned pointer.
        unsafe { self.slice.ptr.as_ptr().cast::<T>().read_unaligned() }
    }

    /// Writes the struct back.
    pub fn set(&mut self, value: &T) {
        // Cannot fail: the slice was made for exactly one T.
        let _ = self.slice.copy_from(value.as_bytes());
    }
}

/// Host protections of a range of guest memory, as the tender set them.
#[derive(Debug, Clone, Copy)]
struct Protected {
    start: u64,
    end: u64,
    read: bool,
    write: bool,
}

/// The guest's RAM: one anonymous shared mapping, registered with KVM as
/// memory slot 0 at guest address 0.
#[derive(Debug)]
pub struct GuestMemory {
    base: NonNull<u8>,
    alloc_size: usize,
    /// The part the guest may name in hypercalls: all of it, or up to the
    /// net ring once it is reserved.
    guest_size: AtomicU64,
    /// Ranges the host may not write (or read) on the guest's behalf. Set
    /// while the tender loads the guest, read on every hypercall; a handful
    /// of entries.
    protected: RwLock<Vec<Protected>>,
}

// SAFETY: the mapping is plain memory owned by this struct for its whole
// life; all access goes through raw pointers with explicit bounds checks, and
// the concurrent users (the vCPU thread and the net I/O thread) coordinate
// through the guest's own protocol, as with any shared-memory device.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes of zeroed memory. Low memory (below
    /// `HVT_GUEST_MIN_BASE`) is the tender's: the guest may name it for the
    /// host to read, never to write.
    pub fn new(size: u64) -> io::Result<GuestMemory> {
        let alloc_size = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: an anonymous mapping at an address of the kernel's choice
        // affects no existing memory; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                alloc_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let low = Protected { start: 0, end: solo5_abi::hvt::GUEST_MIN_BASE, read: true, write: false };
        Ok(GuestMemory { base, alloc_size, guest_size: AtomicU64::new(size), protected: RwLock::new(vec![low]) })
    }

    /// Host address of guest address 0.
    pub fn host_base(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// The size of the mapping.
    pub fn alloc_size(&self) -> u64 {
        self.alloc_size as u64
    }

    /// The memory the guest may address in hypercalls.
    pub fn guest_size(&self) -> u64 {
        self.guest_size.load(Ordering::Relaxed)
    }

    /// Excludes everything from `size` upwards (the net ring) from
    /// hypercall arguments.
    pub fn set_guest_size(&self, size: u64) {
        assert!(size <= self.alloc_size as u64);
        self.guest_size.store(size, Ordering::Relaxed);
    }

    /// Solo5's check: `gpa < size`, no overflow, and `gpa + len < size`
    /// (strict, so a range ending exactly at the top is refused); then that
    /// no byte of the range lies where the host may not `write` (or, for a
    /// read, may not read). Returns the host pointer to `gpa`.
    fn check(&self, gpa: Gpa, len: u64, write: bool) -> Result<NonNull<u8>, InvalidAccess> {
        let bad = InvalidAccess { gpa: gpa.0, len };
        let size = self.guest_size();
        let end = match gpa.0.checked_add(len) {
            Some(end) if gpa.0 < size && end < size => end,
            _ => return Err(bad),
        };
        // A poisoned lock only means a panic elsewhere; the list is intact.
        let protected = self.protected.read().unwrap_or_else(|e| e.into_inner());
        let denied = protected
            .iter()
            .any(|p| p.start < end.max(gpa.0 + 1) && gpa.0 < p.end && !(if write { p.write } else { p.read }));
        if denied {
            return Err(bad);
        }
        // SAFETY: gpa < size <= alloc_size, so the offset stays inside the
        // mapping, and a pointer into a live mapping is not null.
        Ok(unsafe { NonNull::new_unchecked(self.base.as_ptr().add(gpa.0 as usize)) })
    }

    /// The ranges the host may not read at all (`PROT_NONE` segments of the
    /// image), as `(start, end)`.
    pub fn unreadable(&self) -> Vec<(u64, u64)> {
        let protected = self.protected.read().unwrap_or_else(|e| e.into_inner());
        protected.iter().filter(|p| !p.read).map(|p| (p.start, p.end)).collect()
    }

    /// `len` bytes at `gpa` for the host to read on the guest's behalf.
    pub fn readable(&self, gpa: Gpa, len: u64) -> Result<GuestSlice<'_>, InvalidAccess> {
        let ptr = self.check(gpa, len, false)?;
        Ok(GuestSlice { ptr, len: len as usize, _mem: PhantomData })
    }

    /// `len` bytes at `gpa` for the host to write on the guest's behalf.
    pub fn writable(&self, gpa: Gpa, len: u64) -> Result<GuestSliceMut<'_>, InvalidAccess> {
        let ptr = self.check(gpa, len, true)?;
        Ok(GuestSliceMut { ptr, len: len as usize, _mem: PhantomData })
    }

    /// Reads a `T` at `gpa` (an argument the host only reads).
    pub fn read_obj<T: FromBytes>(&self, gpa: Gpa) -> Result<T, InvalidAccess> {
        let s = self.readable(gpa, std::mem::size_of::<T>() as u64)?;
        // SAFETY: the slice covers size_of::<T>() mapped, readable bytes; T
        // accepts any bytes; read_unaligned copes with a guest that passes a
        // misaligned pointer.
        Ok(unsafe { s.as_ptr().cast::<T>().read_unaligned() })
    }

    /// The argument struct `T` at `gpa`, which the host reads and then
    /// writes results into: checked for both before anything is done.
    pub fn arg<T: FromBytes + IntoBytes + zerocopy::Immutable>(
        &self,
        gpa: Gpa,
    ) -> Result<GuestArg<'_, T>, InvalidAccess> {
        let slice = self.writable(gpa, std::mem::size_of::<T>() as u64)?;
        Ok(GuestArg { slice, _t: PhantomData })
    }

    /// Copies `bytes` to `gpa` while loading the guest. The caller has
    /// checked the range against the whole mapping (the ELF load plan).
    pub fn load(&self, gpa: u64, bytes: &[u8]) -> Result<(), InvalidAccess> {
        let end = gpa.checked_add(bytes.len() as u64).ok_or(InvalidAccess { gpa, len: bytes.len() as u64 })?;
        if end > self.alloc_size as u64 {
            return Err(InvalidAccess { gpa, len: bytes.len() as u64 });
        }
        // SAFETY: [gpa, end) is inside the mapping (checked above) and cannot
        // overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(gpa as usize), bytes.len()) };
        Ok(())
    }

    /// Maps `len` bytes of `file` from `offset` over guest memory at `gpa`
    /// while loading the guest ([`crate::map_file_at`]): pages shared with
    /// every other mapping of the file (the page cache's), where a copy
    /// would give each guest its own.
    pub fn map_file(&self, gpa: u64, len: u64, file: &std::fs::File, offset: u64) -> io::Result<()> {
        let p = self.host_ptr(gpa, len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: [gpa, gpa + len) lies inside our own mapping (host_ptr
        // checked it); the guest has not run yet.
        unsafe { crate::map_file_at(p, len, file, offset) }
    }

    /// Host pointer to `gpa` for the tender's own structures (page tables,
    /// boot info, the ring), with the whole mapping as bound.
    pub fn host_ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        // SAFETY: the offset is inside the mapping (checked just before).
        (end <= self.alloc_size as u64).then(|| unsafe { self.base.as_ptr().add(gpa as usize) })
    }

    /// Changes the host protection of `[start, end)`, and remembers it so
    /// that the host never reads or writes there on the guest's behalf
    /// beyond what `prot` allows.
    pub fn protect(&self, start: u64, end: u64, prot: i32) -> io::Result<()> {
        let p = self
            .host_ptr(start, end.saturating_sub(start))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the range is inside our own mapping; changing its
        // protection affects only guest memory.
        if unsafe { libc::mprotect(p.cast(), (end - start) as usize, prot) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read, write) = (prot & libc::PROT_READ != 0, prot & libc::PROT_WRITE != 0);
        if !(read && write) {
            let mut protected = self.protected.write().unwrap_or_else(|e| e.into_inner());
            protected.push(Protected { start, end, read, write });
        }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in new() with this size and is not
        // referenced after drop.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.alloc_size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_is_solo5s() {
        let m = GuestMemory::new(4 << 20).unwrap();
        let size = 4u64 << 20;
        assert!(m.readable(Gpa(0), 0).is_ok());
        assert!(m.readable(Gpa(size - 2), 1).is_ok());
        assert!(m.writable(Gpa(size - 2), 1).is_ok());
        assert!(m.readable(Gpa(size - 1), 1).is_err(), "ending exactly at the top is refused");
        assert!(m.readable(Gpa(size), 0).is_err());
        assert!(m.readable(Gpa(1), u64::MAX).is_err(), "overflow");
        assert!(m.writable(Gpa(0x20_0000), u64::MAX - 0x10_0000).is_err(), "wrapping");
        assert!(m.readable(Gpa(u64::MAX), 1).is_err());
        m.set_guest_size(2 << 20);
        assert!(m.readable(Gpa((2 << 20) - 8), 8).is_err(), "the ring is excluded");
        assert_eq!(InvalidAccess { gpa: 0x10, len: 3 }.to_string(), "Invalid guest access: gpa=0x10, sz=3");
    }

    #[test]
    fn objects_round_trip() {
        let m = GuestMemory::new(2 << 20).unwrap();
        let v = solo5_abi::hvt::HcPuts { data: 0x1234, len: 7 };
        let mut a = m.arg::<solo5_abi::hvt::HcPuts>(Gpa(0x10_3001)).unwrap();
        a.set(&v);
        let r: solo5_abi::hvt::HcPuts = m.read_obj(Gpa(0x10_3001)).unwrap();
        assert_eq!((r.data, r.len), (0x1234, 7));
        assert_eq!(a.get().data, 0x1234);
        assert!(m.read_obj::<solo5_abi::hvt::HcPuts>(Gpa((2 << 20) - 16)).is_err());
        assert!(m.load((2 << 20) - 1, &[1, 2]).is_err());
    }

    #[test]
    fn the_host_never_writes_where_the_guest_may_not() {
        let m = GuestMemory::new(4 << 20).unwrap();
        // Low memory: the tender's tables and the boot information.
        assert!(m.writable(Gpa(0), 8).is_err(), "the zero page");
        assert!(m.writable(Gpa(0x2000), 8).is_err(), "the page tables");
        assert!(m.arg::<solo5_abi::hvt::HcWalltime>(Gpa(0x10000)).is_err(), "the boot information");
        assert!(m.writable(Gpa(0xf_fff8), 16).is_err(), "straddling the start of the image");
        assert!(m.readable(Gpa(0x10000), 56).is_ok(), "the host may read it");
        assert!(m.writable(Gpa(0x10_0000), 16).is_ok());
        // A read-only segment (text) between writable ones.
        m.protect(0x10_1000, 0x10_3000, libc::PROT_READ).unwrap();
        assert!(m.writable(Gpa(0x10_1000), 1).is_err());
        assert!(m.writable(Gpa(0x10_2fff), 1).is_err(), "the last byte");
        assert!(m.writable(Gpa(0x10_0ff8), 16).is_err(), "straddling its start");
        assert!(m.writable(Gpa(0x10_2ff8), 16).is_err(), "straddling its end");
        assert!(m.writable(Gpa(0x10_0000), 0x10_0000).is_err(), "covering it");
        assert!(m.writable(Gpa(0x10_0ff8), 8).is_ok(), "ending at its start");
        assert!(m.writable(Gpa(0x10_3000), 8).is_ok(), "starting at its end");
        assert!(m.writable(Gpa(0x10_1800), 0).is_err(), "an empty range inside it");
        assert!(m.readable(Gpa(0x10_1000), 0x2000).is_ok());
        // A segment with no access at all cannot even be read.
        m.protect(0x10_4000, 0x10_5000, libc::PROT_NONE).unwrap();
        assert!(m.readable(Gpa(0x10_4800), 8).is_err());
        assert!(m.read_obj::<u64>(Gpa(0x10_3ffc)).is_err());
    }
}
