//! Finding virtio devices: a scan of PCI bus 0's configuration space
//! through the legacy ports 0xCF8/0xCFC (QEMU's PC machines put every
//! device given with `-device` there unless told otherwise).

use super::{inl, outl};

/// Red Hat's vendor ID, which every virtio PCI device has.
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional (legacy-capable) device IDs.
pub(super) const DEVICE_NET: u16 = 0x1000;
pub(super) const DEVICE_BLK: u16 = 0x1001;

/// The most devices of each kind the guest drives.
pub(super) const MAX_DEVICES: usize = 8;

/// A legacy virtio device: its kind and the I/O port base of its BAR 0.
#[derive(Clone, Copy, Debug)]
pub(super) struct Found {
    pub device: u16,
    pub io: u16,
    /// The legacy interrupt line the firmware routed INTx to (an 8259
    /// IRQ), if any.
    pub irq: Option<u8>,
}

/// The virtio devices on bus 0, in slot order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scan {
    pub devices: [Option<Found>; 2 * MAX_DEVICES],
}

impl Scan {
    /// The `n`th device of kind `device`.
    pub fn nth(&self, device: u16, n: usize) -> Option<Found> {
        self.devices.iter().flatten().filter(|f| f.device == device).nth(n).copied()
    }
}

fn address(slot: u32, func: u32, offset: u32) -> u32 {
    0x8000_0000 | (slot << 11) | (func << 8) | (offset & 0xfc)
}

fn read32(slot: u32, func: u32, offset: u32) -> u32 {
    // SAFETY: the PCI configuration ports; no memory is touched.
    unsafe {
        outl(0xcf8, address(slot, func, offset));
        inl(0xcfc)
    }
}

fn write32(slot: u32, func: u32, offset: u32, v: u32) {
    // SAFETY: as read32; the caller writes only the command register.
    unsafe {
        outl(0xcf8, address(slot, func, offset));
        outl(0xcfc, v);
    }
}

/// Scans bus 0 and turns on I/O decoding and bus mastering for each virtio
/// device with an I/O BAR 0 (a legacy interface). A modern-only virtio
/// device (ID 0x1040 and up) has none and is left out.
pub(super) fn scan() -> Scan {
    let mut out = Scan { devices: [None; 2 * MAX_DEVICES] };
    let mut k = 0;
    for slot in 0..32 {
        let id = read32(slot, 0, 0);
        let funcs = if read32(slot, 0, 0x0c) & 0x0080_0000 != 0 { 8 } else { 1 };
        if id & 0xffff == 0xffff {
            continue;
        }
        for func in 0..funcs {
            let id = read32(slot, func, 0);
            let (vendor, device) = (id as u16, (id >> 16) as u16);
            if vendor != VIRTIO_VENDOR || !(device == DEVICE_NET || device == DEVICE_BLK) {
                continue;
            }
            let bar0 = read32(slot, func, 0x10);
            if bar0 & 1 == 0 || k == out.devices.len() {
                continue;
            }
            let cmd = read32(slot, func, 0x04);
            write32(slot, func, 0x04, (cmd & 0xffff) | 0x5);
            // Interrupt line (byte 0x3c) and pin (0x3d): no pin, or a line
            // the firmware left unset (0xff), means no interrupt.
            let int = read32(slot, func, 0x3c);
            let (line, pin) = (int as u8, (int >> 8) as u8);
            let irq = (pin != 0 && line < 16).then_some(line);
            out.devices[k] = Some(Found { device, io: (bar0 & !3) as u16, irq });
            k += 1;
        }
    }
    out
}
