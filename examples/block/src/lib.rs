//! block: writes a pattern over the first sectors of a block device, reads
//! it back through the Block trait and checks it, in runs of several sizes.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::vec;

use mirage_devices::block::Block;
use mirage_devices::console::Console;

fn pattern(sector: u64, i: usize) -> u8 {
    (sector as u8).wrapping_mul(17).wrapping_add(i as u8)
}

/// Why the example failed.
#[derive(Debug)]
pub enum Failure {
    /// A block operation failed.
    Block(mirage_devices::block::Error),
    /// Data read back differs from what was written.
    Mismatch(u64),
    /// The console failed.
    Console(mirage_devices::console::Error),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Block(e) => write!(f, "block device: {e}"),
            Failure::Mismatch(s) => write!(f, "sector {s} does not hold what was written"),
            Failure::Console(e) => write!(f, "console: {e}"),
        }
    }
}

/// The unikernel.
pub async fn start(console: impl Console, block: impl Block) -> Result<(), Failure> {
    let info = block.info();
    let ss = info.sector_size as usize;
    let msg = format!("block: {} sectors of {} bytes ({} bytes)", info.sectors, ss, info.capacity());
    console.log(&msg).await.map_err(Failure::Console)?;
    let sectors = info.sectors.min(256);
    let mut sector = 0;
    let mut run = 1u64;
    while sector < sectors {
        let n = run.min(sectors - sector);
        let mut buf = vec![0u8; n as usize * ss];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(sector + (i / ss) as u64, i % ss);
        }
        block.write(sector, &buf).await.map_err(Failure::Block)?;
        sector += n;
        run = if run >= 16 { 1 } else { run * 2 };
    }
    block.flush().await.map_err(Failure::Block)?;
    let mut buf = vec![0u8; ss];
    for s in 0..sectors {
        block.read(s, &mut buf).await.map_err(Failure::Block)?;
        if buf.iter().enumerate().any(|(i, &b)| b != pattern(s, i)) {
            return Err(Failure::Mismatch(s));
        }
    }
    // The last sector is reachable; past it is not.
    block.read(info.sectors - 1, &mut buf).await.map_err(Failure::Block)?;
    if block.read(info.sectors, &mut buf).await != Err(mirage_devices::block::Error::OutOfRange) {
        return Err(Failure::Block(mirage_devices::block::Error::Io));
    }
    let msg = format!("block: wrote and verified {sectors} sectors");
    console.log(&msg).await.map_err(Failure::Console)
}
