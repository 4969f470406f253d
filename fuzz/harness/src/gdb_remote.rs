//! The GDB server's side of the wire (`tender::hvt::gdb`), as a hostile
//! client drives it: packet framing, checksums and acknowledgements
//! (`Wire::recv`), the request parser, and the bounds of memory requests
//! against a small guest memory.

use std::io::{self, Cursor, Read, Write};
use std::sync::OnceLock;

use tender::hvt::gdb::{MAX_PACKET, Request, Wire, parse, read_mem, write_mem};
use tender::hvt::memory::GuestMemory;

/// What the client sends (the input) and what the server answers.
struct Pipe {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.input.read(b)
    }
}

impl Write for Pipe {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        // The server only acknowledges while it receives.
        assert!(b.iter().all(|&c| c == b'+' || c == b'-'), "the server wrote {b:?} while receiving");
        self.output.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const MEM: u64 = 2 << 20;

fn memory() -> &'static GuestMemory {
    static MEM_: OnceLock<GuestMemory> = OnceLock::new();
    MEM_.get_or_init(|| GuestMemory::new(MEM).expect("2 MiB of guest memory"))
}

/// Every packet of the input, each parsed and, if it names memory, served
/// against 2 MiB of guest memory: a request inside it and small enough for
/// a reply succeeds, any other fails, and nothing panics.
pub fn run(data: &[u8]) {
    let mut wire = Wire::new(Pipe { input: Cursor::new(data.to_vec()), output: Vec::new() });
    while let Ok(packet) = wire.recv() {
        assert!(packet.len() <= MAX_PACKET, "a packet of {} bytes was taken", packet.len());
        let fits = |addr: u64, len: u64| addr.checked_add(len).is_some_and(|end| end <= MEM);
        match parse(&packet) {
            Request::ReadMem(addr, len) => {
                let got = read_mem(memory(), addr, len);
                assert_eq!(got.is_some(), fits(addr, len) && len <= (MAX_PACKET / 2) as u64, "m{addr:x},{len:x}");
                if let Some(bytes) = got {
                    assert_eq!(bytes.len() as u64, len);
                }
            }
            Request::WriteMem(addr, bytes) => {
                // Writes go to the low 64 KiB only, so that the memory the
                // reads see stays small and the run repeatable.
                let addr = addr % 0x1_0000;
                assert_eq!(write_mem(memory(), addr, &bytes), fits(addr, bytes.len() as u64));
            }
            _ => {}
        }
    }
    // Each packet taken was acknowledged once, each refused once.
    let acks = wire_output(wire);
    assert!(acks.iter().all(|&c| c == b'+' || c == b'-'));
}

fn wire_output(wire: Wire<Pipe>) -> Vec<u8> {
    wire.into_inner().output
}
