//! A chunked body of tiny chunks costs what its bytes cost: the server
//! grows the body by doubling, not chunk by chunk, and moves each byte of
//! its read buffer once, not once a chunk. Counted with an allocator that
//! counts reallocations (tests/counting; the one test in this binary, so
//! that no other moves the count).

mod common;
mod counting;

use common::{Clock, pair, run, status};
use counting::{Counting, reallocs};
use mirage_devices::flow::Flow;
use mirage_http::{Limits, Static, Stats, serve_connection};
use mirage_kv::Mem;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_body_of_one_byte_chunks_grows_by_doubling() {
    // 256 KiB of body in chunks of one byte each (6 bytes on the wire a
    // byte), then the end; refused for its method once read whole.
    const BODY: usize = 256 * 1024;
    let mut request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..BODY {
        request.extend_from_slice(b"1\r\nx\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let limits = Limits { max_body: BODY as u64, ..Limits::default() };
    let before = reallocs();
    let got = run(async {
        let handler = Static::new(std::rc::Rc::new(Mem::new(Clock)));
        let (mut client, server) = pair(64 * 1024);
        let stats = Stats::default();
        let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
        let asking = async {
            client.write_all(&request).await.unwrap();
            client.read_to_end(1 << 20).await
        };
        mirage_runtime::join(serving, asking).await.1
    });
    let reallocs = reallocs() - before;
    assert_eq!(status(&got), 405, "the body was read whole, and the method refused");
    // Doubling from the first chunk to 256 KiB is 18 or so; growing by
    // what each chunk declared was one a chunk, 262,144.
    assert!(reallocs < 200, "{reallocs} reallocations for a body of {BODY} one-byte chunks");
}
