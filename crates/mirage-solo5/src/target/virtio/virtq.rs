//! virtio-net and virtio-blk over the legacy PCI interface (virtio 0.9.5,
//! "virtio PCI legacy"): registers in I/O BAR 0, split virtqueues at a
//! page frame the guest gives.
//!
//! Guest memory is identity-mapped, so the addresses the device is given
//! are the guest's pointers. Only a net device's receive queue asks for
//! interrupts, which end a waiting guest's halt (see `super::poll`); the
//! guest looks at the used rings when it reads, writes or waits. Queues and buffers come from the heap, so they are set up on a
//! device's first use, when the heap exists; the devices are reset and
//! their features agreed at boot.

extern crate alloc;

use core::sync::atomic::{Ordering, fence};

use super::pci::{DEVICE_BLK, DEVICE_NET, MAX_DEVICES, Scan};
use super::{EXITS, Global, inb, inl, inw, outb, outl, outw};
use crate::Error;

// Legacy register offsets in BAR 0.
const HOST_FEATURES: u16 = 0x00;
const GUEST_FEATURES: u16 = 0x04;
const QUEUE_PFN: u16 = 0x08;
const QUEUE_SIZE: u16 = 0x0c;
const QUEUE_SEL: u16 = 0x0e;
const QUEUE_NOTIFY: u16 = 0x10;
const STATUS: u16 = 0x12;
/// Reading it acknowledges the device's interrupt (and lowers INTx).
const ISR: u16 = 0x13;
/// Device-specific configuration (no MSI-X: the guest never enables it).
const CONFIG: u16 = 0x14;

const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FAILED: u8 = 0x80;

const NET_F_MAC: u32 = 1 << 5;
const BLK_F_BLK_SIZE: u32 = 1 << 6;
const BLK_F_FLUSH: u32 = 1 << 9;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// `struct virtio_net_hdr` without mergeable buffers: 10 bytes before each
/// frame, all zero on transmit (no offloads are agreed).
const NET_HDR: usize = 10;
/// One frame buffer: the header and an Ethernet frame of a 1500-byte MTU.
const NET_BUF: usize = 1536;
const NET_MTU_FRAME: usize = 1514;

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split virtqueue in the legacy layout: descriptors, then the available
/// ring, then (page-aligned) the used ring, in one zeroed allocation.
struct Virtq {
    io: u16,
    sel: u16,
    n: u16,
    base: *mut u8,
    used_off: usize,
    avail_idx: u16,
    last_used: u16,
}

fn align_page(x: usize) -> usize {
    (x + 4095) & !4095
}

impl Virtq {
    /// Sets up queue `sel` of the device at `io`, which interrupts when it
    /// returns buffers if `interrupts`; None if it has none.
    fn new(io: u16, sel: u16, interrupts: bool) -> Option<Virtq> {
        // SAFETY: the device's own registers.
        let n = unsafe {
            outw(io + QUEUE_SEL, sel);
            inw(io + QUEUE_SIZE)
        };
        if n == 0 || !n.is_power_of_two() {
            return None;
        }
        let nu = n as usize;
        let used_off = align_page(16 * nu + 6 + 2 * nu);
        let size = used_off + align_page(6 + 8 * nu);
        let base = zeroed(size, 4096)?;
        let q = Virtq { io, sel, n, base, used_off, avail_idx: 0, last_used: 0 };
        // SAFETY: the avail ring's flags, in the allocation; then the
        // device's registers: the ring is given by page frame (below 4 GiB
        // times 4 KiB, as all guest memory is).
        unsafe {
            (q.base.add(16 * nu) as *mut u16).write_volatile(if interrupts { 0 } else { AVAIL_F_NO_INTERRUPT });
            outw(io + QUEUE_SEL, sel);
            outl(io + QUEUE_PFN, (base as usize >> 12) as u32);
        }
        Some(q)
    }

    fn desc(&self, i: u16) -> *mut Desc {
        // SAFETY: i < n: within the descriptor table.
        unsafe { (self.base as *mut Desc).add((i % self.n) as usize) }
    }

    fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        // SAFETY: a descriptor of this queue that the device does not own
        // (the caller only sets free ones).
        unsafe { self.desc(i).write_volatile(Desc { addr, len, flags, next }) }
    }

    /// Makes the chain at `head` available (without notifying).
    fn push(&mut self, head: u16) {
        let nu = self.n as usize;
        // SAFETY: the avail ring's entry and index, in the allocation. The
        // fences keep the device from seeing the index before the entry and
        // the descriptors.
        unsafe {
            let ring = self.base.add(16 * nu + 4) as *mut u16;
            ring.add((self.avail_idx % self.n) as usize).write_volatile(head);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            (self.base.add(16 * nu + 2) as *mut u16).write_volatile(self.avail_idx);
            fence(Ordering::SeqCst);
        }
    }

    /// Tells the device there is new work, unless it asked not to be told.
    fn notify(&self) {
        // SAFETY: the used ring's flags, in the allocation.
        let flags = unsafe { (self.base.add(self.used_off) as *const u16).read_volatile() };
        if flags & USED_F_NO_NOTIFY == 0 {
            EXITS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the device's notify register.
            unsafe { outw(self.io + QUEUE_NOTIFY, self.sel) };
        }
    }

    fn has_used(&self) -> bool {
        // SAFETY: the used ring's index, in the allocation.
        let idx = unsafe { (self.base.add(self.used_off + 2) as *const u16).read_volatile() };
        idx != self.last_used
    }

    /// The next completed chain: its head and the bytes the device wrote.
    fn pop_used(&mut self) -> Option<(u16, u32)> {
        if !self.has_used() {
            return None;
        }
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's element, in the allocation, which the
        // device wrote before it moved the index.
        let (id, len) = unsafe {
            let e = self.base.add(self.used_off + 4 + 8 * (self.last_used % self.n) as usize) as *const u32;
            (e.read_volatile(), e.add(1).read_volatile())
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id as u16, len))
    }
}

fn zeroed(size: usize, align: usize) -> Option<*mut u8> {
    let layout = core::alloc::Layout::from_size_align(size, align).ok()?;
    // SAFETY: a non-zero size; the memory is the device's for the guest's
    // life and never freed.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    (!p.is_null()).then_some(p)
}

/// Resets the device, acknowledges it, and agrees on `wanted` of its
/// features; the features agreed.
fn negotiate(io: u16, wanted: u32) -> u32 {
    // SAFETY: the device's own registers.
    unsafe {
        outb(io + STATUS, 0);
        outb(io + STATUS, S_ACK);
        outb(io + STATUS, S_ACK | S_DRIVER);
        let f = inl(io + HOST_FEATURES) & wanted;
        outl(io + GUEST_FEATURES, f);
        f
    }
}

fn driver_ok(io: u16, ok: bool) {
    // SAFETY: the device's status register.
    unsafe { outb(io + STATUS, if ok { S_ACK | S_DRIVER | S_DRIVER_OK } else { S_FAILED }) };
}

struct NetQueues {
    rx: Virtq,
    tx: Virtq,
    rx_bufs: *mut u8,
    tx_bufs: *mut u8,
    /// Transmit descriptors not in the device's hands.
    tx_free: alloc::vec::Vec<u16>,
}

struct NetDev {
    io: u16,
    /// Its interrupt line, when it has one.
    irq: Option<u8>,
    /// The manifest index of the entry it serves.
    handle: u64,
    /// Set up on first use; None before, or if it failed.
    q: Option<NetQueues>,
    failed: bool,
}

struct BlkDev {
    io: u16,
    q: Option<(Virtq, *mut u8)>,
    failed: bool,
}

static NETS: Global<[Option<NetDev>; MAX_DEVICES]> = Global::new([const { None }; MAX_DEVICES]);
static BLKS: Global<[Option<BlkDev>; MAX_DEVICES]> = Global::new([const { None }; MAX_DEVICES]);

/// Takes the `n`th virtio-net device for the `n`th net entry; its MAC.
pub(super) fn net_attach(scan: &Scan, n: usize, handle: u64) -> Option<[u8; 6]> {
    let found = scan.nth(DEVICE_NET, n).filter(|_| n < MAX_DEVICES)?;
    let io = found.io;
    let f = negotiate(io, NET_F_MAC);
    let mut mac = [0u8; 6];
    if f & NET_F_MAC != 0 {
        for (i, b) in mac.iter_mut().enumerate() {
            // SAFETY: the device's configuration space.
            *b = unsafe { inb(io + CONFIG + i as u16) };
        }
    } else {
        // A locally administered address from the slot order.
        mac = [0x02, 0, 0, 0, 0, n as u8 + 1];
    }
    NETS.with(|d| d[n] = Some(NetDev { io, irq: found.irq, handle, q: None, failed: false }));
    Some(mac)
}

/// Takes the `n`th virtio-blk device for the `n`th block entry; its
/// capacity in bytes, block size and whether it can flush.
pub(super) fn blk_attach(scan: &Scan, n: usize) -> Option<(u64, u16, bool)> {
    let found = scan.nth(DEVICE_BLK, n).filter(|_| n < MAX_DEVICES)?;
    let io = found.io;
    let f = negotiate(io, BLK_F_BLK_SIZE | BLK_F_FLUSH);
    // SAFETY: the device's configuration space: capacity in 512-byte
    // sectors, then (with BLK_SIZE) the block size at byte 20.
    let (sectors, bs) = unsafe {
        let lo = inl(io + CONFIG) as u64;
        let hi = inl(io + CONFIG + 4) as u64;
        let bs = if f & BLK_F_BLK_SIZE != 0 { inl(io + CONFIG + 20) } else { 512 };
        ((hi << 32) | lo, bs)
    };
    // The manifest holds a 16-bit block size.
    let bs = if (512..=32768).contains(&bs) && bs.is_power_of_two() { bs as u16 } else { 512 };
    BLKS.with(|d| d[n] = Some(BlkDev { io, q: None, failed: false }));
    Some((sectors * 512, bs, f & BLK_F_FLUSH != 0))
}

/// Sets up a net device's queues: every receive buffer posted.
fn net_setup(io: u16) -> Option<NetQueues> {
    // Only the receive queue interrupts: that is what a waiting guest
    // waits for. Transmitted buffers are taken back when the next is sent.
    let mut rx = Virtq::new(io, 0, true)?;
    let tx = Virtq::new(io, 1, false)?;
    let rx_bufs = zeroed(rx.n as usize * NET_BUF, 4096)?;
    let tx_bufs = zeroed(tx.n as usize * NET_BUF, 4096)?;
    for i in 0..rx.n {
        rx.set_desc(i, rx_bufs as u64 + i as u64 * NET_BUF as u64, NET_BUF as u32, DESC_F_WRITE, 0);
        rx.push(i);
    }
    let tx_free = (0..tx.n).collect();
    driver_ok(io, true);
    rx.notify();
    Some(NetQueues { rx, tx, rx_bufs, tx_bufs, tx_free })
}

/// Runs `f` on net device `n`, set up first if it is not yet.
fn with_net<R>(n: usize, f: impl FnOnce(&mut NetQueues) -> R) -> Result<R, Error> {
    NETS.with(|d| {
        let dev = d.get_mut(n).and_then(|d| d.as_mut()).ok_or(Error::Invalid)?;
        if dev.q.is_none() && !dev.failed {
            dev.q = net_setup(dev.io);
            dev.failed = dev.q.is_none();
            if dev.failed {
                driver_ok(dev.io, false);
            }
        }
        dev.q.as_mut().map(f).ok_or(Error::Unspecified)
    })
}

/// The handles of the net devices with a frame waiting (the set
/// `solo5_yield` returns). Sets up devices not yet used, so that frames
/// can arrive before the first read.
pub(super) fn net_ready() -> u64 {
    let mut set = 0;
    for n in 0..MAX_DEVICES {
        match NETS.with(|d| d[n].as_ref().map(|d| d.handle)) {
            Some(h) if with_net(n, |q| q.rx.has_used()).unwrap_or(false) => set |= 1 << h,
            Some(_) => {}
            None => break,
        }
    }
    set
}

/// The interrupt lines of the net devices, as a mask of 8259 IRQs; None
/// if one of them has none (the guest must then poll).
pub(super) fn net_irqs() -> Option<u16> {
    NETS.with(|d| {
        let mut mask = 0u16;
        for dev in d.iter().flatten() {
            mask |= 1 << dev.irq?;
        }
        Some(mask)
    })
}

/// Acknowledges every net device's interrupt (reading its ISR lowers its
/// INTx line, which would otherwise wake the guest again at once).
pub(super) fn net_ack() {
    NETS.with(|d| {
        for dev in d.iter().flatten() {
            // SAFETY: the device's ISR register.
            unsafe { inb(dev.io + ISR) };
        }
    });
}

/// The next frame into `buf`; a frame longer than `buf` is dropped (as a
/// tender drops what the guest has no room for) and the next one read.
pub(super) fn net_read(n: usize, buf: &mut [u8]) -> Result<usize, Error> {
    with_net(n, |q| {
        loop {
            let Some((id, len)) = q.rx.pop_used() else {
                return Err(Error::Again);
            };
            let len = (len as usize).clamp(NET_HDR, NET_BUF) - NET_HDR;
            let fits = len <= buf.len();
            if fits {
                // SAFETY: buffer `id` of the receive area, which the device
                // has handed back; `len` bytes fit both it and `buf`.
                unsafe {
                    let src = q.rx_bufs.add((id % q.rx.n) as usize * NET_BUF + NET_HDR);
                    core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), len);
                }
            }
            q.rx.push(id % q.rx.n);
            q.rx.notify();
            if fits {
                return Ok(len);
            }
        }
    })?
}

pub(super) fn net_write(n: usize, frame: &[u8]) -> Result<(), Error> {
    if frame.len() > NET_MTU_FRAME {
        return Err(Error::Invalid);
    }
    with_net(n, |q| {
        // Take back what the device sent; if every buffer is in flight,
        // wait for the device (it works on its own thread in QEMU).
        let id = loop {
            while let Some((id, _)) = q.tx.pop_used() {
                q.tx_free.push(id % q.tx.n);
            }
            if let Some(id) = q.tx_free.pop() {
                break id;
            }
            core::hint::spin_loop();
        };
        // SAFETY: buffer `id` of the transmit area, not in the device's
        // hands; the header and frame fit NET_BUF.
        unsafe {
            let dst = q.tx_bufs.add(id as usize * NET_BUF);
            core::ptr::write_bytes(dst, 0, NET_HDR);
            core::ptr::copy_nonoverlapping(frame.as_ptr(), dst.add(NET_HDR), frame.len());
            q.tx.set_desc(id, dst as u64, (NET_HDR + frame.len()) as u32, 0, 0);
        }
        q.tx.push(id);
        q.tx.notify();
        Ok(())
    })?
}

/// What a block request does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BlkOp {
    Read = 0,
    Write = 1,
    Flush = 4,
}

/// `struct virtio_blk_outhdr`, then the status byte the device writes.
#[repr(C)]
struct BlkReq {
    kind: u32,
    _reserved: u32,
    sector: u64,
    status: u8,
}

/// One request, waited for: the device's status turned into a result.
/// `buf` is valid for `len` bytes (written for a read, read for a write).
pub(super) fn blk_io(n: usize, op: BlkOp, offset: u64, buf: *mut u8, len: usize) -> Result<(), Error> {
    BLKS.with(|d| {
        let dev = d.get_mut(n).and_then(|d| d.as_mut()).ok_or(Error::Invalid)?;
        if dev.q.is_none() && !dev.failed {
            dev.q =
                Virtq::new(dev.io, 0, false).and_then(|q| zeroed(core::mem::size_of::<BlkReq>(), 16).map(|r| (q, r)));
            dev.failed = dev.q.is_none();
            driver_ok(dev.io, !dev.failed);
        }
        let (q, req) = dev.q.as_mut().ok_or(Error::Unspecified)?;
        let req = *req as *mut BlkReq;
        // SAFETY: the request header is this device's, not in the device's
        // hands between requests (each is waited for).
        unsafe { req.write_volatile(BlkReq { kind: op as u32, _reserved: 0, sector: offset / 512, status: 0xff }) };
        let status = req as u64 + 16;
        q.set_desc(0, req as u64, 16, DESC_F_NEXT, 1);
        if op == BlkOp::Flush {
            q.set_desc(1, status, 1, DESC_F_WRITE, 0);
        } else {
            let flags = if op == BlkOp::Read { DESC_F_WRITE } else { 0 };
            q.set_desc(1, buf as u64, len as u32, flags | DESC_F_NEXT, 2);
            q.set_desc(2, status, 1, DESC_F_WRITE, 0);
        }
        q.push(0);
        q.notify();
        while q.pop_used().is_none() {
            core::hint::spin_loop();
        }
        // SAFETY: the status byte, written by the device before it
        // returned the chain.
        match unsafe { (status as *const u8).read_volatile() } {
            0 => Ok(()),
            2 => Err(Error::Invalid),
            _ => Err(Error::Unspecified),
        }
    })
}
