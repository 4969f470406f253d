//! The allocator's zeroed blocks: `heap`.
//!
//! First 32 MiB of zeroed 64 KiB buffers, none of them read or written,
//! then a pause of 2 s in which the test reads the tender's resident
//! memory (the host should not have backed them). Then churn: zeroed
//! blocks of many sizes, each checked to be all zeros before it is filled
//! with a pattern, some freed, some grown, so that later ones are carved
//! from memory earlier ones wrote; the first 32 MiB are checked then, and
//! last the heap is filled with zeroed blocks, each checked.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use mirage_solo5 as solo5;

solo5::manifest!();
solo5::main!(start);

fn start(_si: &solo5::StartInfo) -> i32 {
    let untouched: Vec<Vec<u8>> = (0..512).map(|_| vec![0u8; 64 * 1024]).collect();
    solo5::println!("heap: 32 MiB allocated");
    let deadline = solo5::time::monotonic() + 2_000_000_000;
    while solo5::time::monotonic() < deadline {
        solo5::yield_until(deadline);
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut checked = 0usize;
    for round in 0..4000 {
        let size = match next() % 4 {
            0 => (next() % 64) as usize + 1,
            1 => (next() % 4096) as usize + 1,
            2 => (next() % 70_000) as usize + 1,
            _ => (next() % 300_000) as usize + 1,
        };
        let mut v = vec![0u8; size];
        if let Some(i) = v.iter().position(|&b| b != 0) {
            solo5::println!("FAILURE: round {round}: byte {i} of a zeroed block of {size} is {:#x}", v[i]);
            return 1;
        }
        checked += size;
        v.fill(0xa5);
        match next() % 3 {
            0 => drop(v),
            1 => {
                v.resize(size + (next() % 100_000) as usize, 0x5a);
                live.push(v);
            }
            _ => live.push(v),
        }
        if live.len() > 64 {
            let i = (next() as usize) % live.len();
            live.swap_remove(i);
        }
    }
    drop(live);
    for (n, b) in untouched.iter().enumerate() {
        if b.iter().any(|&x| x != 0) {
            solo5::println!("FAILURE: untouched buffer {n} is not zero");
            return 1;
        }
    }
    drop(untouched);
    // Last, zeroed blocks (fallible) until the heap is full, so that the
    // last ones lie against its end, where talc keeps a gap's footer.
    let mut filled = Vec::with_capacity(4096);
    let mut size = 1 << 20;
    while size >= 64 && filled.len() < filled.capacity() {
        match mirage_runtime::memory::zeroed(size + (next() % 4096) as usize) {
            Some(b) => {
                if let Some(i) = b.iter().position(|&x| x != 0) {
                    solo5::println!("FAILURE: byte {i} of a zeroed block of {} near the heap's end is not zero", b.len());
                    return 1;
                }
                checked += b.len();
                filled.push(b);
            }
            None => size /= 2,
        }
    }
    solo5::println!("heap: {checked} bytes of zeroed blocks checked, the heap filled; SUCCESS");
    0
}
