//! Declares the most devices a manifest holds (63 block devices), after
//! Solo5's test_mft_maxdevices, and acquires the first and the last.
#![no_std]
#![no_main]

extern crate alloc;

use mirage_solo5::{self as solo5, block::Block};

solo5::manifest!(
    block "storage0", block "storage1", block "storage2", block "storage3", block "storage4",
    block "storage5", block "storage6", block "storage7", block "storage8", block "storage9",
    block "storage10", block "storage11", block "storage12", block "storage13", block "storage14",
    block "storage15", block "storage16", block "storage17", block "storage18", block "storage19",
    block "storage20", block "storage21", block "storage22", block "storage23", block "storage24",
    block "storage25", block "storage26", block "storage27", block "storage28", block "storage29",
    block "storage30", block "storage31", block "storage32", block "storage33", block "storage34",
    block "storage35", block "storage36", block "storage37", block "storage38", block "storage39",
    block "storage40", block "storage41", block "storage42", block "storage43", block "storage44",
    block "storage45", block "storage46", block "storage47", block "storage48", block "storage49",
    block "storage50", block "storage51", block "storage52", block "storage53", block "storage54",
    block "storage55", block "storage56", block "storage57", block "storage58", block "storage59",
    block "storage60", block "storage61", block "storage62",
);
solo5::main!(start);

fn start(_si: &solo5::StartInfo) -> i32 {
    for name in ["storage0", "storage62"] {
        match Block::acquire(name) {
            Ok(b) => {
                // The whole device in one request: as runs where the tender
                // granted them, a block a call where it did not (on spt the
                // filter of a manifest this large cannot hold runs for
                // every device, and must say so in the grant).
                let mut buf = alloc::vec![0u8; b.info().capacity as usize];
                if let Err(e) = b.read(0, &mut buf) {
                    solo5::println!("FAILURE: reading {name} whole: {e}");
                    return 1;
                }
                solo5::println!("{name}: handle {}, {} bytes", b.handle(), b.info().capacity)
            }
            Err(e) => {
                solo5::println!("FAILURE: acquire {name}: {e}");
                return 1;
            }
        }
    }
    solo5::println!("SUCCESS");
    0
}
