//! block on Solo5: the device is the manifest's "storage".
#![no_std]
#![no_main]

use mirage_solo5 as solo5;

solo5::manifest!(block "storage");
solo5::main!(start);

fn start(si: &solo5::StartInfo) -> i32 {
    if let Err(code) = solo5::dev::boot("block", si.cmdline, &[]) {
        return code;
    }
    let disk = match solo5::dev::Block::acquire("storage") {
        Ok(d) => d,
        Err(e) => {
            solo5::println!("block: cannot acquire block device storage: {e}");
            return 1;
        }
    };
    solo5::dev::run(block::start(solo5::dev::Console, disk))
}
