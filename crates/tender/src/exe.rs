//! Reading a unikernel: its bytes, its ABI note and its manifest.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use solo5_abi::mft::{self, MftEntry};
use solo5_abi::note::{
    ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE, ABI1_NOTE_TYPE, AbiTarget, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE, MFT1_NOTE_TYPE,
};

use crate::{Exit, fatal, strerror};

/// No executable can usefully be larger than the largest guest memory.
const MAX_FILE_SIZE: u64 = solo5_abi::hvt::GUEST_MAX_MEM_SIZE;

/// A unikernel read from disk, its notes checked.
#[derive(Debug)]
pub struct Executable {
    /// The path as given, for messages.
    pub name: String,
    /// The whole file.
    pub bytes: FileBytes,
    /// The validated manifest entries.
    pub manifest: Vec<MftEntry>,
}

/// The bytes of an executable: the file mapped read-only where it can be
/// (a regular file), else read into memory. Mapping it lets the tender
/// copy each segment straight from the page cache into guest memory; reading
/// it whole first cost a tender that lives a millisecond a fifth of its
/// page faults.
#[derive(Debug)]
pub enum FileBytes {
    /// A private, read-only mapping of the whole file, and the file (kept
    /// open so that parts of it can be mapped again into guest memory).
    Mapped { ptr: NonNull<u8>, len: usize, file: std::fs::File },
    /// The file's contents (a pipe, an empty file).
    Read(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping is `len` readable bytes, private and
            // read-only, alive until drop; nothing writes to it.
            FileBytes::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
            FileBytes::Read(v) => v,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileBytes::Mapped { ptr, len, .. } = self {
            // SAFETY: the mapping was made by map() with this length and no
            // slice of it outlives self.
            unsafe { libc::munmap(ptr.as_ptr().cast(), *len) };
        }
    }
}

impl FileBytes {
    /// The regular file the bytes are mapped from, if they are.
    pub fn file(&self) -> Option<&std::fs::File> {
        match self {
            FileBytes::Mapped { file, .. } => Some(file),
            FileBytes::Read(_) => None,
        }
    }
}

/// Maps `len` bytes of `file` read-only, if it can be.
fn map(file: std::fs::File, len: u64) -> Result<FileBytes, std::fs::File> {
    let Some(len) = usize::try_from(len).ok().filter(|&l| l > 0) else { return Err(file) };
    // SAFETY: a private read-only mapping of an open file at an address of
    // the kernel's choice affects no existing memory; the result is checked.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
    match NonNull::new(p.cast::<u8>()) {
        Some(ptr) if p != libc::MAP_FAILED => Ok(FileBytes::Mapped { ptr, len, file }),
        _ => Err(file),
    }
}

/// Reads the file at `path`.
pub fn read(path: &OsStr) -> Result<(String, FileBytes), Exit> {
    let name = path.to_string_lossy().into_owned();
    let mut file = std::fs::File::open(path).map_err(|e| fatal!("{name}: Could not open: {}", strerror(&e)))?;
    let meta = file.metadata().map_err(|e| fatal!("{name}: Could not read: {}", strerror(&e)))?;
    let len = meta.len();
    if len > MAX_FILE_SIZE {
        return Err(fatal!("{name}: invalid executable: file is {len} bytes, more than any guest memory"));
    }
    if meta.is_file() {
        match map(file, len) {
            Ok(bytes) => return Ok((name, bytes)),
            Err(f) => file = f,
        }
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).map_err(|e| fatal!("{name}: Could not read: {}", strerror(&e)))?;
    Ok((name, FileBytes::Read(bytes)))
}

/// The ABI note's target and version.
pub fn abi(name: &str, bytes: &[u8]) -> Result<(u32, u32), Exit> {
    let note = solo5_elf::load_note(bytes, ABI1_NOTE_TYPE, ABI1_NOTE_ALIGN, ABI1_NOTE_MAX_SIZE)
        .map_err(|e| fatal!("{name}: {e}"))?
        .ok_or_else(|| fatal!("{name}: No Solo5 ABI information found in executable"))?;
    // load_note returned at least one byte; the ABI1 content is 16 bytes,
    // and a shorter note reads as zeros, which matches no target.
    let mut info = [0u8; 8];
    let n = note.len().min(8);
    info[..n].copy_from_slice(&note[..n]);
    let target = u32::from_le_bytes([info[0], info[1], info[2], info[3]]);
    let version = u32::from_le_bytes([info[4], info[5], info[6], info[7]]);
    Ok((target, version))
}

/// The validated manifest.
pub fn manifest(name: &str, bytes: &[u8]) -> Result<Vec<MftEntry>, Exit> {
    let note = solo5_elf::load_note(bytes, MFT1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_MAX_SIZE)
        .map_err(|e| fatal!("{name}: {e}"))?
        .ok_or_else(|| fatal!("{name}: No Solo5 manifest found in executable"))?;
    // Read, not validated in place: the note may sit at any file offset, as
    // Solo5, which copies it out first, allows.
    mft::read(note).map(|m| m.entries().to_vec()).map_err(|_| fatal!("{name}: Solo5 manifest is invalid"))
}

/// Reads a unikernel for `target` and checks its ABI note and manifest, in
/// the order and with the messages of Solo5's tenders.
pub fn open(path: &OsStr, target: AbiTarget, abi_version: u32) -> Result<Executable, Exit> {
    let (name, bytes) = read(path)?;
    let (t, v) = abi(&name, &bytes)?;
    if t != target as u32 {
        return Err(fatal!("{name}: Executable is not for the solo5-{} target", AbiTarget::name_of(target as u32)));
    }
    if v != abi_version {
        return Err(fatal!("{name}: Executable requests unsupported ABI version {v}"));
    }
    let manifest = manifest(&name, &bytes)?;
    Ok(Executable { name, bytes, manifest })
}
