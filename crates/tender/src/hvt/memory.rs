//! Guest memory, and the one checked path from a guest address to the host.
//!
//! Every guest-physical address and length that comes from the guest goes
//! through [`GuestMemory::check`], which applies Solo5's rule
//! (`HVT_CHECKED_GPA_P`): the range must start and end strictly inside the
//! guest's memory, the net ring excluded. A failed check is the guest's
//! fault and ends it with "Invalid guest access".

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use zerocopy::{FromBytes, IntoBytes};

/// A guest address range that failed the bounds check.
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

/// The guest's RAM: one anonymous shared mapping, registered with KVM as
/// memory slot 0 at guest address 0.
#[derive(Debug)]
pub struct GuestMemory {
    base: NonNull<u8>,
    alloc_size: usize,
    /// The part the guest may name in hypercalls: all of it, or up to the
    /// net ring once it is reserved.
    guest_size: AtomicU64,
}

// SAFETY: the mapping is plain memory owned by this struct for its whole
// life; all access goes through raw pointers with explicit bounds checks, and
// the concurrent users (the vCPU thread and the net I/O thread) coordinate
// through the guest's own protocol, as with any shared-memory device.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes of zeroed memory.
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
        Ok(GuestMemory { base, alloc_size, guest_size: AtomicU64::new(size) })
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
    /// (strict, so a range ending exactly at the top is refused). Returns
    /// the host pointer to `gpa`.
    pub fn check(&self, gpa: u64, len: u64) -> Result<*mut u8, InvalidAccess> {
        let size = self.guest_size();
        match gpa.checked_add(len) {
            Some(end) if gpa < size && end < size => {
                // SAFETY: gpa < size <= alloc_size, so the offset stays
                // inside the mapping.
                Ok(unsafe { self.base.as_ptr().add(gpa as usize) })
            }
            _ => Err(InvalidAccess { gpa, len }),
        }
    }

    /// Reads a `T` at `gpa`, checked.
    pub fn read_obj<T: FromBytes>(&self, gpa: u64) -> Result<T, InvalidAccess> {
        let p = self.check(gpa, std::mem::size_of::<T>() as u64)?;
        // SAFETY: check() proved [p, p + size_of::<T>()) is inside the
        // mapping; T: FromBytes accepts any bytes; read_unaligned copes with
        // a guest that passes a misaligned pointer.
        Ok(unsafe { p.cast::<T>().read_unaligned() })
    }

    /// Writes a `T` at `gpa`, checked.
    pub fn write_obj<T: IntoBytes + zerocopy::Immutable>(&self, gpa: u64, value: &T) -> Result<(), InvalidAccess> {
        let bytes = value.as_bytes();
        let p = self.check(gpa, bytes.len() as u64)?;
        // SAFETY: check() proved the destination range is inside the
        // mapping; it cannot overlap `value`, which is host memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        Ok(())
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

    /// Host pointer to `gpa` for the tender's own structures (page tables,
    /// boot info, the ring), with the whole mapping as bound.
    pub fn host_ptr(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        // SAFETY: the offset is inside the mapping (checked just before).
        (end <= self.alloc_size as u64).then(|| unsafe { self.base.as_ptr().add(gpa as usize) })
    }

    /// Changes the host protection of `[start, end)`.
    pub fn protect(&self, start: u64, end: u64, prot: i32) -> io::Result<()> {
        let p = self.host_ptr(start, end.saturating_sub(start)).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the range is inside our own mapping; changing its
        // protection affects only guest memory.
        if unsafe { libc::mprotect(p.cast(), (end - start) as usize, prot) } != 0 {
            return Err(io::Error::last_os_error());
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
        assert!(m.check(0, 0).is_ok());
        assert!(m.check(size - 2, 1).is_ok());
        assert!(m.check(size - 1, 1).is_err(), "ending exactly at the top is refused");
        assert!(m.check(size, 0).is_err());
        assert!(m.check(1, u64::MAX).is_err(), "overflow");
        assert!(m.check(u64::MAX, 1).is_err());
        m.set_guest_size(2 << 20);
        assert!(m.check((2 << 20) - 8, 8).is_err(), "the ring is excluded");
        assert_eq!(InvalidAccess { gpa: 0x10, len: 3 }.to_string(), "Invalid guest access: gpa=0x10, sz=3");
    }

    #[test]
    fn objects_round_trip() {
        let m = GuestMemory::new(2 << 20).unwrap();
        let v = solo5_abi::hvt::HcPuts { data: 0x1234, len: 7 };
        m.write_obj(0x3001, &v).unwrap();
        let r: solo5_abi::hvt::HcPuts = m.read_obj(0x3001).unwrap();
        assert_eq!((r.data, r.len), (0x1234, 7));
        assert!(m.read_obj::<solo5_abi::hvt::HcPuts>((2 << 20) - 16).is_err());
        assert!(m.load((2 << 20) - 1, &[1, 2]).is_err());
    }
}
