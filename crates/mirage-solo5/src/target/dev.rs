//! The device traits of `mirage-devices` on Solo5, and the runtime's
//! platform: what a unikernel generic over the traits is wired to on hvt
//! and spt.
//!
//! ```text
//! mirage_solo5::manifest!(net "service");
//! mirage_solo5::main!(start);
//! fn start(si: &mirage_solo5::StartInfo) -> i32 {
//!     let args = match mirage_solo5::dev::boot("hello", si.cmdline, &[]) { Ok(a) => a, Err(c) => return c };
//!     mirage_solo5::dev::run(async move { app::start(mirage_solo5::dev::Console).await })
//! }
//! ```

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use mirage_devices::block::{self as dblock, BlockInfo};
use mirage_devices::net::{self as dnet, MacAddr, NetInfo, RxMeta, Stats};
use mirage_devices::time::Timestamp;
use mirage_runtime::args::{Arg, Args, split_cmdline};
use mirage_runtime::logger::Sink;
use mirage_runtime::{Interest, Outcome, Platform, Source, io};

use super::{Global, block, console, net, time};

/// The executor's platform: the monotonic clock and `solo5_yield`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo5Platform;

impl Platform for Solo5Platform {
    fn now(&self) -> u64 {
        time::monotonic()
    }

    fn clock(&self) -> Option<fn() -> u64> {
        Some(time::monotonic)
    }

    fn wait(&mut self, deadline: Option<u64>, io: &[(Source, Interest)], ready: &mut dyn FnMut(Source, Interest)) {
        let set = super::yield_until(deadline.unwrap_or(u64::MAX));
        for &(s, i) in io {
            if i == Interest::Read && set.contains(s.0) {
                ready(s, i);
            }
        }
    }
}

fn console_line(s: &str) {
    console::write(s.as_bytes());
}

/// Parses the command line of `program` against `specs` and sets up
/// logging; on `--help` or a bad argument, prints and returns the exit
/// status (0 or 64).
pub fn boot(program: &str, cmdline: &str, specs: &[Arg]) -> Result<Args, i32> {
    let sink = Sink { write: console_line, wall: Some(time::wall) };
    mirage_runtime::memory::set_heap_probe(super::heap::in_use);
    mirage_runtime::memory::set_heap_size(super::heap::size());
    let argv = match split_cmdline(cmdline) {
        Ok(a) => a,
        Err(e) => {
            console_line(&alloc::format!("{program}: {e}\n"));
            return Err(e.exit_status());
        }
    };
    mirage_runtime::boot_with(program, specs, &argv, sink, &[crate::cmdline::HELP])
}

/// Runs `start` to completion; its exit status.
pub fn run<F: core::future::Future>(start: F) -> i32
where
    F::Output: Outcome,
{
    mirage_runtime::run(&mut Solo5Platform, start).exit_code()
}

/// The console.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl mirage_devices::console::Console for Console {
    async fn write(&self, bytes: &[u8]) -> Result<(), mirage_devices::console::Error> {
        console::write(bytes);
        Ok(())
    }
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl mirage_devices::time::WallClock for WallClock {
    fn now(&self) -> Timestamp {
        Timestamp(time::wall())
    }
}

/// A network interface of the manifest.
///
/// Where the tender granted a virtio-net header (our spt tender), the TCP
/// checksums of what is sent are left for the host's kernel to complete
/// ([`dnet::Net::checksum_offload`]).
#[derive(Debug)]
pub struct Net {
    raw: net::Net,
    info: NetInfo,
    rx: Vec<u8>,
    tx: Vec<u8>,
    stats: Stats,
}

impl Net {
    /// Acquires the interface named `name` in the manifest.
    pub fn acquire(name: &str) -> Result<Net, crate::Error> {
        let raw = net::Net::acquire(name)?;
        let i = raw.info();
        let info = NetInfo::new(MacAddr(i.mac), i.mtu);
        // Room for a segment the host cuts, where it does.
        let tx = vec![0; raw.segmentation_offload().max(info.max_frame())];
        Ok(Net { raw, info, rx: vec![0; info.max_frame()], tx, stats: Stats::default() })
    }
}

impl dnet::Net for Net {
    fn info(&self) -> NetInfo {
        self.info
    }

    fn try_recv<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, dnet::Error> {
        self.try_recv_meta(|frame, _| f(frame))
    }

    fn try_recv_meta<R>(&mut self, f: impl FnOnce(&mut [u8], RxMeta) -> R) -> Result<Option<R>, dnet::Error> {
        // Lent where it was read (hvt's ring), one copy fewer.
        let mut f = Some(f);
        let lent = self
            .raw
            .read_lent(self.rx.len(), |frame, flags| f.take().map(|f| f(frame, RxMeta::from_vnet_flags(flags))));
        match lent {
            Some(Ok((n, r))) => {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += n as u64;
                return Ok(r);
            }
            Some(Err(crate::Error::Again)) => return Ok(None),
            Some(Err(_)) => return Err(dnet::Error::Io),
            None => {}
        }
        // `f` is still here: it is taken only where a frame was lent.
        let Some(f) = f else { return Err(dnet::Error::Io) };
        let mut rx = core::mem::take(&mut self.rx);
        let got = self.try_recv_into(&mut rx);
        let r = got.map(|got| got.map(|(n, meta)| f(&mut rx[..n], meta)));
        self.rx = rx;
        r
    }

    fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<(usize, RxMeta)>, dnet::Error> {
        match self.raw.read_meta(buf) {
            Ok((n, flags)) => {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += n as u64;
                Ok(Some((n, RxMeta::from_vnet_flags(flags))))
            }
            Err(crate::Error::Again) => Ok(None),
            Err(_) => Err(dnet::Error::Io),
        }
    }

    fn receive_offload(&mut self) -> usize {
        // Room first: once the host hands over long frames, a shorter
        // buffer would cut them.
        let want = solo5_abi::vnet::VNET_MAX_RECEIVED.max(self.rx.len());
        let Some(rx) = mirage_runtime::memory::zeroed(want) else { return 0 };
        if self.raw.rx_offload().is_err() {
            return 0;
        }
        // The old buffer holds nothing: frames are read into it one at a
        // time and handed on at once.
        self.rx = rx;
        want
    }

    async fn readable(&mut self) -> Result<(), dnet::Error> {
        io::ready(Source(self.raw.handle()), Interest::Read).await;
        Ok(())
    }

    fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, dnet::Error> {
        if len > self.info.max_frame() {
            return Err(dnet::Error::TooLarge);
        }
        // A frame with no checksum left to the host: send_partial's path.
        self.send_partial(len, |buf| (f(buf), None))
    }

    fn checksum_offload(&self) -> bool {
        self.raw.checksum_offload()
    }

    fn segmentation_offload(&self) -> usize {
        self.raw.segmentation_offload()
    }

    fn send_partial<R>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> (R, Option<dnet::PartialChecksum>),
    ) -> Result<R, dnet::Error> {
        if len > self.tx.len() {
            return Err(dnet::Error::TooLarge);
        }
        // A frame longer than the MTU goes out only as a segment the host
        // cuts.
        let max_frame = self.info.max_frame();
        let too_large =
            |partial: &Option<dnet::PartialChecksum>| len > max_frame && partial.is_none_or(|p| p.segment == 0);
        let (mut f, mut refused) = (Some(f), false);
        let r = match self.raw.write_in_place(len, |buf| {
            let Some(f) = f.take() else { return Err(crate::Error::Invalid) };
            let (r, partial) = f(buf);
            refused = too_large(&partial);
            if refused {
                return Err(crate::Error::Invalid);
            }
            Ok((r, partial.map(|p| (p.start, p.offset, p.segment))))
        }) {
            Some(_) if refused => return Err(dnet::Error::TooLarge),
            Some(done) => done.map_err(|_| dnet::Error::Io)?,
            None => {
                // The frame was not written in place: f is still here.
                let Some(f) = f else { return Err(dnet::Error::Io) };
                let frame = &mut self.tx[..len];
                let (r, partial) = f(frame);
                if too_large(&partial) {
                    return Err(dnet::Error::TooLarge);
                }
                let partial = partial.map(|p| (p.start, p.offset, p.segment));
                self.raw.write_partial(frame, partial).map_err(|_| dnet::Error::Io)?;
                r
            }
        };
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(r)
    }

    fn send_frame(&mut self, frame: &mut [u8], partial: Option<dnet::PartialChecksum>) -> Result<(), dnet::Error> {
        let len = frame.len();
        // As send_partial: a frame longer than the MTU goes out only as a
        // segment the host cuts.
        if len > self.tx.len() || (len > self.info.max_frame() && partial.is_none_or(|p| p.segment == 0)) {
            return Err(dnet::Error::TooLarge);
        }
        // Written from where it lies: on hvt a frame lent from a posted
        // buffer is sent in place, any other is copied into the ring.
        self.raw.write_partial(frame, partial.map(|p| (p.start, p.offset, p.segment))).map_err(|_| dnet::Error::Io)?;
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        Ok(())
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

/// A block device of the manifest.
#[derive(Debug)]
pub struct Block {
    raw: block::Block,
    info: BlockInfo,
}

impl Block {
    /// Acquires the device named `name` in the manifest.
    pub fn acquire(name: &str) -> Result<Block, crate::Error> {
        let raw = block::Block::acquire(name)?;
        let i = raw.info();
        Ok(Block { raw, info: BlockInfo::new(i.block_size as u32, i.capacity / i.block_size, false) })
    }

    /// Whether the tender granted flushes (our tenders' `--block-dsync:`):
    /// without them a flush returns at once, and a write is done when it
    /// is in the host's page cache (Solo5's semantics).
    pub fn flushes(&self) -> bool {
        self.raw.flushes()
    }
}

fn block_err(e: crate::Error) -> dblock::Error {
    match e {
        crate::Error::Invalid => dblock::Error::OutOfRange,
        _ => dblock::Error::Io,
    }
}

/// The most bytes one block request carries, so that a huge read or write
/// does not hold the guest in one hypercall for long.
const MAX_RUN: usize = 1 << 20;

impl dblock::Block for Block {
    fn info(&self) -> BlockInfo {
        self.info
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), dblock::Error> {
        self.info.check(sector, buf.len())?;
        let ss = self.info.sector_size as u64;
        for (i, chunk) in buf.chunks_mut(MAX_RUN).enumerate() {
            self.raw.read(sector * ss + (i * MAX_RUN) as u64, chunk).map_err(block_err)?;
        }
        Ok(())
    }

    async fn write(&self, sector: u64, data: &[u8]) -> Result<(), dblock::Error> {
        self.info.check(sector, data.len())?;
        let ss = self.info.sector_size as u64;
        for (i, chunk) in data.chunks(MAX_RUN).enumerate() {
            self.raw.write(sector * ss + (i * MAX_RUN) as u64, chunk).map_err(block_err)?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), dblock::Error> {
        // A write is in the host's page cache when it returns (Solo5's
        // semantics); with our tenders' grant (`--block-dsync:`) this
        // puts the writes before it on the disk.
        self.raw.flush().map_err(block_err)
    }

    async fn write_and_flush(&self, sector: u64, data: &[u8]) -> Result<(), dblock::Error> {
        if data.len() > MAX_RUN {
            self.write(sector, data).await?;
            return self.flush().await;
        }
        self.info.check(sector, data.len())?;
        let ss = self.info.sector_size as u64;
        self.raw.write_and_flush(sector * ss, data).map_err(block_err)
    }
}

/// A cryptographically secure generator: ChaCha20, seeded at first use from
/// the CPU's RDSEED (or RDRAND) and the TSC, reseeded from the CPU every
/// [`RESEED_BYTES`] of output or [`RESEED_NS`] of time (as MirageOS's
/// Fortuna reseeds from its entropy pools), and rekeyed after every draw,
/// so that a later capture of its state reveals no earlier output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

/// Output between two reseeds.
pub const RESEED_BYTES: u64 = 1 << 20;
/// Time between two reseeds (one minute).
pub const RESEED_NS: u64 = 60_000_000_000;

struct Csprng {
    rng: rand_chacha::ChaCha20Rng,
    /// Bytes drawn since the last reseed.
    drawn: u64,
    /// Monotonic time of the last reseed.
    seeded_at: u64,
}

static RNG: Global<Option<Csprng>> = Global::new(None);

fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, 0)
}

/// # Safety
/// The CPU supports RDSEED.
#[target_feature(enable = "rdseed")]
unsafe fn rdseed() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..10 {
        if core::arch::x86_64::_rdseed64_step(&mut v) == 1 {
            return Some(v);
        }
    }
    None
}

/// # Safety
/// The CPU supports RDRAND.
#[target_feature(enable = "rdrand")]
unsafe fn rdrand() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..10 {
        if core::arch::x86_64::_rdrand64_step(&mut v) == 1 {
            return Some(v);
        }
    }
    None
}

fn has_rdseed() -> bool {
    cpuid(0).eax >= 7 && cpuid(7).ebx & (1 << 18) != 0
}

fn has_rdrand() -> bool {
    cpuid(1).ecx & (1 << 30) != 0
}

/// 32 bytes from the CPU's generator, mixed with the TSC and the clock; the
/// number of 8-byte words that came from the hardware.
fn entropy() -> ([u8; 32], usize) {
    let (rdseed_ok, rdrand_ok) = (has_rdseed(), has_rdrand());
    let mut s = [0u8; 32];
    let mut hardware = 0;
    for chunk in s.chunks_mut(8) {
        let hw = if rdseed_ok {
            // SAFETY: the CPU reported RDSEED above.
            unsafe { rdseed() }
        } else {
            None
        }
        .or_else(|| {
            if rdrand_ok {
                // SAFETY: the CPU reported RDRAND above.
                unsafe { rdrand() }
            } else {
                None
            }
        });
        if hw.is_some() {
            hardware += 1;
        }
        // SAFETY: rdtsc has no side effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        let v = hw.unwrap_or(0) ^ tsc.rotate_left(17) ^ time::monotonic();
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    (s, hardware)
}

fn seed() -> Csprng {
    use rand_core::SeedableRng;
    let (s, hardware) = entropy();
    if hardware < 4 {
        log::warn!(target: "mirage", "no hardware random source: random numbers are seeded from clocks only");
    }
    Csprng { rng: rand_chacha::ChaCha20Rng::from_seed(s), drawn: 0, seeded_at: time::monotonic() }
}

impl Csprng {
    fn fill(&mut self, buf: &mut [u8]) {
        use rand_core::{Rng, SeedableRng};
        let now = time::monotonic();
        if self.drawn >= RESEED_BYTES || now.wrapping_sub(self.seeded_at) >= RESEED_NS {
            // The new key is the old generator's output xor fresh entropy:
            // unpredictable if either is.
            let (fresh, _) = entropy();
            let mut key = [0u8; 32];
            self.rng.fill_bytes(&mut key);
            for (k, f) in key.iter_mut().zip(fresh) {
                *k ^= f;
            }
            self.rng = rand_chacha::ChaCha20Rng::from_seed(key);
            self.drawn = 0;
            self.seeded_at = now;
        }
        self.rng.fill_bytes(buf);
        self.drawn = self.drawn.saturating_add(buf.len() as u64);
        // Fast key erasure: the key that made `buf` is gone.
        let mut key = [0u8; 32];
        self.rng.fill_bytes(&mut key);
        self.rng = rand_chacha::ChaCha20Rng::from_seed(key);
    }
}

impl mirage_devices::random::Random for Random {
    fn fill(&self, buf: &mut [u8]) {
        RNG.with(|r| r.get_or_insert_with(seed).fill(buf));
    }

    fn weakness(&self) -> Option<&'static str> {
        if !has_rdseed() && !has_rdrand() {
            return Some(
                "this CPU offers neither RDSEED nor RDRAND; run on a CPU (or a VM whose CPUID passes them through) that has one",
            );
        }
        let (_, hardware) = entropy();
        (hardware < 4).then_some("the CPU's RDSEED/RDRAND failed to deliver entropy")
    }
}
