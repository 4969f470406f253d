//! Linux tap devices, as the tenders and the unix target attach them.
//!
//! The interface must already exist and be up: opening `/dev/net/tun` would
//! otherwise create a new, unconfigured device, which is never what the user
//! meant. Frames are read and written whole, without the packet-information
//! header (`IFF_NO_PI`), and GRO/GSO are turned off so that the host never
//! hands the guest a frame larger than its MTU, unless the guest asks for
//! receive offload on a tap with virtio-net headers ([`receive_offload`]).

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `IFNAMSIZ`.
pub const IFNAMSIZ: usize = 16;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
pub use solo5_abi::vnet::{RX_OFFLOAD_FLAGS, TUNSETOFFLOAD};
const ETHTOOL_SGSO: u32 = 0x0000_0024;
const ETHTOOL_SGRO: u32 = 0x0000_002c;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; IFNAMSIZ],
    // The union of ifreq: flags, mtu or a data pointer.
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq { name: [0; IFNAMSIZ], data: [0; 24] };
        for (d, s) in r.name.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        r
    }
    fn name(&self) -> String {
        // SAFETY: name is NUL-terminated: at most IFNAMSIZ - 1 bytes were
        // copied in, and the kernel writes a NUL-terminated name.
        unsafe { CStr::from_ptr(self.name.as_ptr()) }.to_string_lossy().into_owned()
    }
    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }
    fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }
}

fn ioctl(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is the pointer
    // given, to a live object of the size the kernel expects (struct ifreq).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Flags of interface `name`, or `ENOENT` if there is none.
fn interface_flags(sock: &OwnedFd, name: &str) -> io::Result<i16> {
    let mut req = IfReq::new(name);
    match ioctl(sock, libc::SIOCGIFFLAGS, &mut req as *mut IfReq as *mut libc::c_void) {
        Ok(()) => Ok(req.short()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        Err(e) => Err(e),
    }
}

fn mtu_of(sock: &OwnedFd, name: &str) -> io::Result<u16> {
    let mut req = IfReq::new(name);
    ioctl(sock, libc::SIOCGIFMTU, &mut req as *mut IfReq as *mut libc::c_void)?;
    u16::try_from(req.int()).map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))
}

fn disable_offloads(sock: &OwnedFd, name: &str) {
    for cmd in [ETHTOOL_SGRO, ETHTOOL_SGSO] {
        let mut value: [u32; 2] = [cmd, 0];
        let mut req = IfReq::new(name);
        req.data[..8].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
        // Best effort, as Solo5: a device without the knob keeps working.
        let _ = ioctl(sock, libc::SIOCETHTOOL, &mut req as *mut IfReq as *mut libc::c_void);
    }
}

fn set_offload(fd: &impl AsRawFd, flags: u64) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value, not a pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD as libc::c_ulong, flags as libc::c_ulong) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Asks the kernel for whole frames with complete checksums on a tap
/// with virtio-net headers: no partial checksums, no GSO packets.
fn no_offload_to_guest(fd: &impl AsRawFd) -> io::Result<()> {
    set_offload(fd, 0)
}

/// Receive offload on tap `fd`, opened with virtio-net headers: the
/// kernel may then hand over, behind its header, one TCP segment of up to
/// 64 KiB ([`VNET_MAX_RECEIVED`]) where it would have cut it to the MTU,
/// and may leave a checksum partial where the frame never left the host
/// (`TUNSETOFFLOAD` with `TUN_F_CSUM`, `TUN_F_TSO4` and `TUN_F_TSO6`, as a
/// virtio-net device that negotiated `GUEST_CSUM` and `GUEST_TSO4/6`).
/// The caller reads every frame with a buffer of that size, and trusts
/// checksums only as the header says ([`vnet_checksum_valid`]).
pub fn receive_offload(fd: &impl AsRawFd) -> io::Result<()> {
    set_offload(fd, RX_OFFLOAD_FLAGS)
}

/// `tap_attach`: opens tap interface `ifname` (or the already open tap
/// descriptor `@N`), returning it non-blocking, with the interface's MTU.
/// Frames are plain Ethernet frames, as Solo5 reads and writes them.
pub fn attach(ifname: &str) -> io::Result<(OwnedFd, u16)> {
    match attach_with(ifname, false)? {
        (fd, mtu, false) => Ok((fd, mtu)),
        // An inherited descriptor opened with virtio-net headers: every
        // frame would carry one the caller does not expect.
        (_, _, true) => Err(io::Error::from_raw_os_error(libc::EPROTO)),
    }
}

pub use solo5_abi::vnet::{
    VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VNET_MAX_RECEIVED, VNET_MAX_SEGMENTED, VNET_MIN_SEGMENT, vnet_checksum_valid,
    vnet_hdr, vnet_hdr_for, vnet_hdr_segmented,
};

/// Reads one frame from tap `fd` into the `len` bytes at `buf`, behind its
/// virtio-net header if the tap has them (`with_hdr`; the header is
/// dropped). `read(2)`'s answer: the frame's length (a read without a
/// whole header gives 0), or -1 with `errno` set.
///
/// # Safety
///
/// `buf` is valid for writes of `len` bytes (the kernel writes there).
pub unsafe fn read_frame(fd: i32, with_hdr: bool, buf: *mut u8, len: usize) -> isize {
    // SAFETY: the caller's promise on buf and len.
    unsafe { read_frame_flags(fd, with_hdr, buf, len) }.0
}

/// As [`read_frame`], with the flags of the frame's header (0 without
/// one): `VIRTIO_NET_HDR_F_NEEDS_CSUM` and `VIRTIO_NET_HDR_F_DATA_VALID`
/// ([`vnet_checksum_valid`]). The length is never more than `len`: a
/// frame longer than the buffer is cut, and a cut frame's own lengths
/// then say so to whoever parses it.
///
/// # Safety
///
/// As [`read_frame`].
pub unsafe fn read_frame_flags(fd: i32, with_hdr: bool, buf: *mut u8, len: usize) -> (isize, u8) {
    if !with_hdr {
        // SAFETY: the caller's promise on buf and len.
        let n = unsafe { libc::read(fd, buf.cast(), len) };
        return (n.min(len as isize), 0);
    }
    let mut hdr = [0u8; VNET_HDR_LEN];
    let iov = [
        libc::iovec { iov_base: hdr.as_mut_ptr().cast(), iov_len: hdr.len() },
        libc::iovec { iov_base: buf.cast(), iov_len: len },
    ];
    // SAFETY: readv(2) writes at most each vector's length: into hdr, and
    // into buf by the caller's promise.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
    if n < 0 {
        return (n, 0);
    }
    ((n as usize).saturating_sub(VNET_HDR_LEN).min(len) as isize, hdr[0])
}

/// Writes the `len` bytes at `frame` to tap `fd`, behind a virtio-net
/// header if the tap has them (`with_hdr`): `hdr` ([`vnet_hdr`],
/// [`vnet_hdr_segmented`]; ignored without headers). The frame's bytes
/// written, or -1 with `errno` set.
///
/// # Safety
///
/// `frame` is valid for reads of `len` bytes.
pub unsafe fn write_frame(fd: i32, with_hdr: bool, hdr: [u8; VNET_HDR_LEN], frame: *const u8, len: usize) -> isize {
    if !with_hdr {
        // SAFETY: the caller's promise on frame and len.
        return unsafe { libc::write(fd, frame.cast(), len) };
    }
    let mut hdr = hdr;
    let iov = [
        libc::iovec { iov_base: hdr.as_mut_ptr().cast(), iov_len: hdr.len() },
        libc::iovec { iov_base: frame as *mut libc::c_void, iov_len: len },
    ];
    // SAFETY: writev(2) only reads the buffers the vectors name: hdr, and
    // frame by the caller's promise.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 { n } else { (n as usize).saturating_sub(VNET_HDR_LEN) as isize }
}

/// As [`write_frame`] to a tap with headers, for a frame whose first
/// bytes are `head` (a copy of its headers, which `hdr` was made from) and
/// whose `rest_len` other bytes are at `rest`: the host then cuts and sums
/// the headers `hdr` describes, whatever the memory at `rest` holds by
/// the time it is read. The frame's bytes written, or -1 with `errno` set.
///
/// # Safety
///
/// `rest` is valid for reads of `rest_len` bytes.
pub unsafe fn write_frame_headed(
    fd: i32,
    hdr: [u8; VNET_HDR_LEN],
    head: &[u8],
    rest: *const u8,
    rest_len: usize,
) -> isize {
    let mut hdr = hdr;
    let iov = [
        libc::iovec { iov_base: hdr.as_mut_ptr().cast(), iov_len: hdr.len() },
        libc::iovec { iov_base: head.as_ptr() as *mut libc::c_void, iov_len: head.len() },
        libc::iovec { iov_base: rest as *mut libc::c_void, iov_len: rest_len },
    ];
    // SAFETY: writev(2) only reads the buffers the vectors name: hdr, head,
    // and rest by the caller's promise.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 3) };
    if n < 0 { n } else { (n as usize).saturating_sub(VNET_HDR_LEN) as isize }
}

/// As [`attach`]; with `vnet_hdr`, the tap is opened with a virtio-net
/// header before each frame (`IFF_VNET_HDR`), so that frames sent may
/// leave their TCP or UDP checksum for the host's kernel to complete
/// ([`vnet_hdr`]). No offload is asked for the other way (`TUNSETOFFLOAD`
/// with no flags) until the reader asks ([`receive_offload`]): the kernel
/// completes the checksums of what it sends and never sends a frame
/// larger than the MTU, so received headers carry nothing to act on. The
/// answer says whether frames carry the header: an inherited descriptor
/// (`@N`) carries it when its opener asked for it.
pub fn attach_with(ifname: &str, vnet_hdr: bool) -> io::Result<(OwnedFd, u16, bool)> {
    let sock = control_socket()?;
    if let Some(num) = ifname.strip_prefix('@') {
        // An inherited descriptor (as a parent such as albatross passes
        // one). Solo5 v0.12.1 documents this form but fails to read the MTU;
        // here it works.
        let fd: i32 = num.parse().map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: F_GETFL/F_SETFL on an arbitrary number only fail (EBADF)
        // if it is not an open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was handed to this process to own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq::new("");
        ioctl(&owned, TUNGETIFF, &mut req as *mut IfReq as *mut libc::c_void)?;
        let name = req.name();
        let has_hdr = req.short() & IFF_VNET_HDR != 0;
        let mtu = mtu_of(&sock, &name)?;
        disable_offloads(&sock, &name);
        if has_hdr {
            no_offload_to_guest(&owned)?;
        }
        return Ok((owned, mtu, has_hdr));
    }
    if ifname.len() >= IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let flags = interface_flags(&sock, ifname)?;
    if flags & (libc::IFF_UP | libc::IFF_RUNNING) as i16 == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENETDOWN));
    }
    let tun = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open("/dev/net/tun")?;
    let mut req = IfReq::new(ifname);
    let flags = IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&tun, TUNSETIFF, &mut req as *mut IfReq as *mut libc::c_void)?;
    if req.name() != ifname {
        // E.g. a name with "%d": the kernel made a new device instead.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mtu = mtu_of(&sock, ifname)?;
    disable_offloads(&sock, ifname);
    if vnet_hdr {
        no_offload_to_guest(&tun)?;
    }
    Ok((OwnedFd::from(tun), mtu, vnet_hdr))
}

/// `tap_attach_genmac`: a random locally administered unicast MAC address.
pub fn generate_mac() -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    File::open("/dev/urandom")?.read_exact(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// Parses `xx:xx:xx:xx:xx:xx` (one or two hex digits per byte).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:0B:c:ff"), Some([2, 0, 10, 11, 12, 255]));
        for bad in
            ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "02:00:00:00:00:zz", "002:00:00:00:00:00", "02::00:00:00:00"]
        {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let m = generate_mac().unwrap();
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn attach_errors() {
        assert_eq!(attach("a-name-that-is-too-long").unwrap_err().raw_os_error(), Some(libc::ENAMETOOLONG));
        assert_eq!(attach("nosuchtap0").unwrap_err().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(attach("@x").unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
