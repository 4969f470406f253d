//! Block device tester, after Solo5's test_blk: writes a pattern to every
//! tenth block of "storage", reads it back, checks the last block, runs of
//! several blocks, and that misaligned, wrong-sized and out-of-range I/O is
//! refused. It flushes after the first pass (a no-op unless the tender
//! granted flushes, as ours do with `--block-dsync:`), so that the rest
//! goes through the path a flushing guest takes, and says which it got.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use mirage_solo5::{self as solo5, Error, block::Block};

solo5::manifest!(block "storage");
solo5::main!(start);

fn fill(buf: &mut [u8], block: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (block as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

fn fail(what: &str) -> i32 {
    solo5::println!("FAILURE: {what}");
    1
}

fn start(_si: &solo5::StartInfo) -> i32 {
    let b = match Block::acquire("storage") {
        Ok(b) => b,
        Err(e) => {
            solo5::println!("FAILURE: acquire storage: {e}");
            return 1;
        }
    };
    if Block::acquire("nosuchdevice").is_ok() {
        return fail("acquired an undeclared device");
    }
    let info = b.info();
    let bs = info.block_size;
    let blocks = info.capacity / bs;
    solo5::println!("storage: {} bytes, {} blocks of {}", info.capacity, blocks, bs);
    let mut wbuf = vec![0u8; bs as usize];
    let mut rbuf = vec![0u8; bs as usize];
    let mut n = 0;
    let mut i = 0;
    while i < blocks {
        fill(&mut wbuf, i);
        if b.write(i * bs, &wbuf).is_err() {
            return fail("write");
        }
        i += 10;
    }
    if b.flush().is_err() {
        return fail("flush");
    }
    solo5::println!("flush: {}", if b.flushes() { "granted" } else { "not granted" });
    let mut i = 0;
    while i < blocks {
        fill(&mut wbuf, i);
        if b.read(i * bs, &mut rbuf).is_err() {
            return fail("read");
        }
        if rbuf != wbuf {
            return fail("data read back differs");
        }
        n += 1;
        i += 10;
    }
    // The last block.
    let last = (blocks - 1) * bs;
    fill(&mut wbuf, 0xff);
    if b.write(last, &wbuf).is_err() || b.read(last, &mut rbuf).is_err() || rbuf != wbuf {
        return fail("last block");
    }
    // A run of blocks in one call.
    if blocks >= 8 {
        let mut run = vec![0u8; 4 * bs as usize];
        fill(&mut run, 7);
        let mut back = vec![0u8; 4 * bs as usize];
        if b.write(2 * bs, &run).is_err() || b.read(2 * bs, &mut back).is_err() || back != run {
            return fail("multi-block run");
        }
    }
    // Runs that are not 2^k blocks, and one over 1 MiB: a guest granted
    // runs on spt splits them into the lengths the filter allows.
    if blocks >= 800 {
        for (at, len) in [(20u64, 7u64), (400, 300)] {
            let mut run = vec![0u8; (len * bs) as usize];
            fill(&mut run, at);
            let mut back = vec![0u8; (len * bs) as usize];
            if b.write(at * bs, &run).is_err() || b.read(at * bs, &mut back).is_err() || back != run {
                solo5::println!("FAILURE: a run of {len} blocks at block {at}");
                return 1;
            }
        }
    }
    // A write and a flush as one request (one exit on hvt with our
    // tender's grant): a pattern of its own at block 31, read back.
    if blocks >= 40 {
        fill(&mut wbuf, 0x5a);
        if b.write_and_flush(31 * bs, &wbuf).is_err() || b.read(31 * bs, &mut rbuf).is_err() || rbuf != wbuf {
            return fail("write and flush");
        }
        if b.write_and_flush(blocks * bs, &wbuf) != Err(Error::Invalid) {
            return fail("a write and flush past the end was not refused");
        }
    }
    // Refused: past the end, misaligned, wrong sizes.
    let bad: [(&str, Result<(), Error>); 6] = [
        ("write past the end", b.write(blocks * bs, &wbuf)),
        ("read past the end", b.read(blocks * bs, &mut rbuf)),
        ("read straddling the end", b.read(last, &mut vec![0u8; 2 * bs as usize])),
        ("misaligned read", b.read(1, &mut rbuf)),
        ("short write", b.write(0, &wbuf[..bs as usize / 2])),
        ("long read", b.read(0, &mut vec![0u8; bs as usize + 1])),
    ];
    for (what, r) in bad {
        if r != Err(Error::Invalid) {
            solo5::println!("FAILURE: {what} was not refused: {r:?}");
            return 1;
        }
    }
    if b.flush().is_err() {
        return fail("second flush");
    }
    solo5::println!("verified {n} blocks");
    solo5::println!("SUCCESS");
    0
}
