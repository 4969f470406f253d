//! Attaching host resources to the devices a manifest declares.
//!
//! The tender keeps its own copy of the manifest, fills in each attached
//! entry (`attached`, host descriptor, capacity and sector size, MAC and
//! MTU) and gives that copy to the guest. Handles are manifest indices, so
//! the guest names a device by its index and the tender looks it up here.

use std::os::fd::{AsRawFd, OwnedFd};

use solo5_abi::mft::{self, MftEntry, MftType};

use crate::cli::device_option;
use crate::{Exit, block, fatal, strerror, warn};

/// `PATH_MAX`: the longest block device path accepted.
const PATH_MAX: usize = 4096;
/// The longest interface argument accepted (`%19s`).
const IFACE_MAX: usize = 19;

/// The manifest being attached, with the host resources behind it.
#[derive(Debug)]
pub struct Devices {
    /// The tender's copy of the manifest.
    pub entries: Vec<MftEntry>,
    /// The host descriptor of each attached entry.
    pub fds: Vec<Option<OwnedFd>>,
    /// For a block device granted flushes (`--block-dsync:`), its file
    /// opened without `O_DSYNC` (see [`block::attach`]).
    pub flush_fds: Vec<Option<OwnedFd>>,
    /// Whether taps are opened with a virtio-net header for guests whose
    /// image asks ([`MftEntry::net_vnet_hdr`]): spt, whose guest reads and
    /// writes the tap itself.
    pub offer_vnet_hdr: bool,
    /// Whether taps are opened with a virtio-net header that the tender
    /// itself writes and reads (hvt), whatever the image asks.
    pub tender_vnet_hdr: bool,
    /// Whether each entry's tap carries virtio-net headers.
    pub vnet: Vec<bool>,
    /// Whether each entry's receive offload was turned on, once the guest
    /// asked (hvt): the ioctl takes the host's network-wide lock, and a
    /// guest asking again and again gets the first answer.
    pub rx_offload: Vec<Option<bool>>,
}

/// The outcome of offering an option to a module.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// The option was this module's and is done.
    Yes,
    /// The option is not this module's, or was refused after a warning.
    No,
}

impl Devices {
    /// Starts from a validated manifest.
    pub fn new(entries: Vec<MftEntry>) -> Devices {
        let fds = entries.iter().map(|_| None).collect();
        let flush_fds = entries.iter().map(|_| None).collect();
        let vnet = entries.iter().map(|_| false).collect();
        let rx_offload = entries.iter().map(|_| None).collect();
        Devices { entries, fds, flush_fds, offer_vnet_hdr: false, tender_vnet_hdr: false, vnet, rx_offload }
    }

    fn lookup(&self, name: &str, mtype: MftType) -> Option<usize> {
        let i = mft::find_by_name(&self.entries, name, mtype);
        if i.is_none() {
            warn(format_args!("Resource not declared in manifest: '{name}'"));
        }
        i
    }

    /// The block module: `--block:NAME=PATH`, `--block-sector-size:NAME=N`,
    /// and `--block-dsync:NAME=PATH` (not Solo5's: `--block:` with every
    /// write synchronous, see [`block::attach`]).
    pub fn block_option(&mut self, arg: &str) -> Result<Handled, Exit> {
        let dsync = arg.starts_with("--block-dsync:");
        if arg.starts_with("--block:") || dsync {
            let prefix = if dsync { "--block-dsync:" } else { "--block:" };
            let Some((name, path)) = device_option(arg, prefix, PATH_MAX) else {
                return Ok(Handled::No);
            };
            let Some(i) = self.lookup(name, MftType::BlockBasic) else {
                return Ok(Handled::No);
            };
            let a = block::attach(path, dsync)?;
            let e = &mut self.entries[i];
            let block_size = e.block_size();
            e.set_block_basic(a.capacity, block_size);
            e.set_block_flush(a.flush.as_ref().map(|f| f.as_raw_fd()));
            // Runs of 2^k blocks on either descriptor: the spt filter
            // allows them (spt.rs), hvt's hypercalls take any length.
            e.set_block_runs(true);
            e.set_hostfd(a.file.as_raw_fd());
            e.attached = 1;
            self.fds[i] = Some(OwnedFd::from(a.file));
            self.flush_fds[i] = a.flush.map(OwnedFd::from);
            Ok(Handled::Yes)
        } else if arg.starts_with("--block-sector-size:") {
            let Some((name, value)) = device_option(arg, "--block-sector-size:", usize::MAX) else {
                return Ok(Handled::No);
            };
            let digits = value.bytes().take_while(u8::is_ascii_digit).count();
            let Ok(size) = value[..digits].parse::<u64>() else {
                return Ok(Handled::No);
            };
            if !block::valid_block_size(size) {
                warn("Block size must be a multiple of 2 greater than or equal 512");
                return Ok(Handled::No);
            }
            let Some(i) = self.lookup(name, MftType::BlockBasic) else {
                return Ok(Handled::No);
            };
            let e = &mut self.entries[i];
            let capacity = e.block_capacity();
            e.set_block_basic(capacity, size as u16);
            Ok(Handled::Yes)
        } else {
            Ok(Handled::No)
        }
    }

    /// The net module: `--net:NAME=IFACE`, `--net-mac:NAME=MAC`.
    pub fn net_option(&mut self, arg: &str) -> Result<Handled, Exit> {
        if arg.starts_with("--net:") {
            let Some((name, iface)) = device_option(arg, "--net:", IFACE_MAX) else {
                return Ok(Handled::No);
            };
            let Some(i) = self.lookup(name, MftType::NetBasic) else {
                return Ok(Handled::No);
            };
            // Solo5 goes on to "Invalid option" and the usage here; the
            // option was right, the host was not: the error and its fix.
            let guest_reads = self.offer_vnet_hdr && self.entries[i].net_vnet_hdr_wanted();
            let want = guest_reads || self.tender_vnet_hdr;
            let (fd, mtu, vnet) = tap::attach_with(iface, want).map_err(|e| {
                fatal!("Could not attach interface: {iface}: {}\n  fix: {}", strerror(&e), attach_fix(iface, &e))
            })?;
            if vnet && !want {
                // An inherited descriptor opened with headers the guest
                // would take for the start of each frame.
                return Err(fatal!(
                    "Could not attach interface: {iface}: the tap descriptor was opened with IFF_VNET_HDR, which this guest does not read\n  fix: open the tap without IFF_VNET_HDR"
                ));
            }
            let e = &mut self.entries[i];
            let mac = e.net_mac();
            e.set_net_basic(mac, mtu);
            e.set_net_vnet_hdr(vnet && guest_reads);
            // The guest that reads its tap itself may ask for receive
            // offload there (spt's seccomp filter allows the one ioctl).
            e.set_net_rx_offload(vnet && guest_reads);
            self.vnet[i] = vnet;
            e.set_hostfd(fd.as_raw_fd());
            e.attached = 1;
            self.fds[i] = Some(fd);
            Ok(Handled::Yes)
        } else if arg.starts_with("--net-mac:") {
            let Some((name, value)) = device_option(arg, "--net-mac:", usize::MAX) else {
                return Ok(Handled::No);
            };
            let Some(mac) = tap::parse_mac(value) else {
                warn(format_args!("Malformed MAC address for network {name}: '{value}' (expected xx:xx:xx:xx:xx:xx)"));
                return Ok(Handled::No);
            };
            let Some(i) = self.lookup(name, MftType::NetBasic) else {
                return Ok(Handled::No);
            };
            let e = &mut self.entries[i];
            let mtu = e.net_mtu();
            e.set_net_basic(mac, mtu);
            Ok(Handled::Yes)
        } else {
            Ok(Handled::No)
        }
    }

    /// Indices of attached entries of type `mtype`.
    pub fn attached(&self, mtype: MftType) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().enumerate().filter(move |(_, e)| e.mtype == mtype as u32 && e.attached != 0).map(|(i, _)| i)
    }

    /// The block module's setup: default sector size, capacity checks.
    pub fn setup_block(&mut self) -> Result<(), Exit> {
        for i in self.attached(MftType::BlockBasic).collect::<Vec<_>>() {
            let e = &mut self.entries[i];
            if e.block_size() == 0 {
                let capacity = e.block_capacity();
                e.set_block_basic(capacity, block::DEFAULT_BLOCK_SIZE);
            }
            // A size the image's manifest gave (without
            // --block-sector-size, whose value is checked as it is read):
            // Solo5 asserts on it; the filter's bounds need a power of two.
            if !block::valid_block_size(u64::from(e.block_size())) {
                return Err(fatal!(
                    "{}: the image's manifest sets a sector size of {} bytes: it must be a power of two from 512 to 32768 (give --block-sector-size:{}=N, or rebuild the image)",
                    e.name_str(),
                    e.block_size(),
                    e.name_str()
                ));
            }
            block::check_capacity(e.name_str(), e.block_capacity(), e.block_size())?;
        }
        Ok(())
    }

    /// The net module's setup: a random MAC for interfaces without one.
    pub fn setup_net(&mut self) -> Result<(), Exit> {
        for i in self.attached(MftType::NetBasic).collect::<Vec<_>>() {
            let e = &mut self.entries[i];
            if e.net_mac() == [0; 6] {
                let mac = tap::generate_mac().map_err(|e| fatal!("Could not open /dev/urandom: {}", strerror(&e)))?;
                let mtu = e.net_mtu();
                e.set_net_basic(mac, mtu);
            }
        }
        Ok(())
    }

    /// Every declared device must be attached.
    pub fn check_all_attached(&self) -> Result<(), Exit> {
        let mut fail = false;
        for e in &self.entries {
            if e.mtype >= MftType::ReservedFirst as u32 || e.attached != 0 {
                continue;
            }
            warn(format_args!(
                "Device '{}' of type {} declared but not attached.",
                e.name_str(),
                MftType::name_of(e.mtype)
            ));
            fail = true;
        }
        if fail {
            return Err(fatal!("All declared devices must be attached. See --help for syntax."));
        }
        Ok(())
    }

    /// The manifest copy as the guest sees it.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        use zerocopy::IntoBytes;
        let header = mft::MftHeader { version: mft::MFT_VERSION, entries: self.entries.len() as u32 };
        let mut out = header.as_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(e.as_bytes());
        }
        out
    }

    /// The descriptor through which block device `handle`'s flushes go,
    /// if it was granted them.
    pub fn flush_fd(&self, handle: u64) -> Option<i32> {
        mft::get_by_index(&self.entries, handle, MftType::BlockBasic)?;
        Some(self.flush_fds.get(handle as usize)?.as_ref()?.as_raw_fd())
    }

    /// Whether any network interface is attached.
    pub fn has_net(&self) -> bool {
        self.attached(MftType::NetBasic).next().is_some()
    }

    /// Whether any block device is attached.
    pub fn has_block(&self) -> bool {
        self.attached(MftType::BlockBasic).next().is_some()
    }

    /// The attached entry at `handle` of type `mtype`, with its descriptor.
    pub fn get(&self, handle: u64, mtype: MftType) -> Option<(&MftEntry, i32)> {
        let e = mft::get_by_index(&self.entries, handle, mtype)?;
        let fd = self.fds.get(handle as usize)?.as_ref()?.as_raw_fd();
        Some((e, fd))
    }
}

/// What to do when tap device `iface` cannot be attached with error `e`.
fn attach_fix(iface: &str, e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::EPROTO) {
        // tap::attach: an inherited descriptor with virtio-net headers.
        return "the tap descriptor carries virtio-net headers (IFF_VNET_HDR), which this tender does not read: open it without them".to_string();
    }
    if let Some(n) = iface.strip_prefix('@') {
        return format!("pass the tender an open tap device as descriptor {n}, or name a tap device: --net:NAME=IFACE");
    }
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV) => {
            format!("create it (as root): ip tuntap add {iface} mode tap && ip link set {iface} up")
        }
        Some(libc::ENETDOWN) => format!("bring it up (as root): ip link set {iface} up"),
        Some(libc::EBUSY) => format!(
            "another process (a unikernel still running?) has {iface} attached: stop it, or attach another tap device"
        ),
        Some(libc::EPERM | libc::EACCES) => {
            format!(
                "run the tender as root, or give the tap device to its user: ip tuntap add {iface} mode tap user $USER"
            )
        }
        Some(libc::ENAMETOOLONG) => "name a tap device of at most 15 characters".to_string(),
        Some(libc::EINVAL) => format!("{iface} is not a tap device: name one (ip tuntap add NAME mode tap)"),
        _ => format!("check the tap device: ip link show {iface}"),
    }
}

pub(crate) const BLOCK_USAGE: &str = "--block:NAME=PATH (attach block device/file at PATH as block storage NAME)\n  [ --block-sector-size:NAME=SECTORSIZE ] (set sector size for block device NAME; must be a power of two greater than or equal 512)\n  [ --block-dsync:NAME=PATH ] (as --block, but each write reaches stable storage before it returns, or each flush for a guest that flushes; not Solo5's)";
pub(crate) const NET_USAGE: &str = "--net:NAME=IFACE | @NN (attach tap at IFACE or at fd @NN as network NAME)\n  [ --net-mac:NAME=HWADDR ] (set HWADDR for network NAME)";

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> Devices {
        Devices::new(vec![
            MftEntry::reserved_first(),
            MftEntry::device("service", MftType::NetBasic),
            MftEntry::device("storage", MftType::BlockBasic),
        ])
    }

    #[test]
    fn block_options() {
        let dir = std::env::temp_dir().join(format!("tender-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 8192]).unwrap();
        let mut d = devices();
        assert!(d.check_all_attached().is_err());
        assert_eq!(d.block_option("--block-sector-size:storage=4096").unwrap(), Handled::Yes);
        assert_eq!(d.block_option(&format!("--block:storage={}", disk.display())).unwrap(), Handled::Yes);
        assert_eq!(d.block_option("--block:service=/x").unwrap(), Handled::No, "service is a NIC");
        assert_eq!(d.block_option("--block:other=/x").unwrap(), Handled::No);
        assert_eq!((d.entries[2].block_flush(), d.flush_fd(2)), (None, None), "Solo5's --block grants no flush");
        assert_eq!(d.block_option(&format!("--block-dsync:storage={}", disk.display())).unwrap(), Handled::Yes);
        let granted = d.flush_fd(2).expect("--block-dsync grants flushes");
        assert_eq!(d.entries[2].block_flush(), Some(granted));
        assert_ne!(Some(granted), d.get(2, MftType::BlockBasic).map(|(_, fd)| fd), "a second, cached descriptor");
        assert_eq!(d.flush_fd(1), None, "not a block device");
        assert_eq!(d.block_option("--block-sector-size:storage=521").unwrap(), Handled::No);
        assert_eq!(d.block_option("--block-sector-size:storage=256").unwrap(), Handled::No);
        assert_eq!(d.block_option("--net:service=tap0").unwrap(), Handled::No);
        d.setup_block().unwrap();
        assert_eq!(d.entries[2].block_size(), 4096);
        assert_eq!(d.entries[2].block_capacity(), 8192);
        assert!(d.get(2, MftType::BlockBasic).is_some());
        assert!(d.get(1, MftType::BlockBasic).is_none());
        assert!(d.get(9, MftType::BlockBasic).is_none());
        // Only the NIC is missing now.
        assert!(d.check_all_attached().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn manifest_copy_round_trips() {
        let d = devices();
        let bytes = d.manifest_bytes();
        assert_eq!(bytes.len(), mft::manifest_size(3));
        assert_eq!(mft::validate(&bytes).unwrap().len(), 3);
    }
}
