//! The server and the static handler over flows in memory: what a client
//! sends, and exactly what it gets back.

mod common;

use std::rc::Rc;

use common::{Clock, End, NOW, header, pair, run, status};
use mirage_devices::flow::{self, Flow};
use mirage_devices::kv::{Key, KvRw};
use mirage_http::{Limits, Static, Stats, format_http_date, serve_connection};
use mirage_kv::Mem;
use mirage_runtime::time::now;

/// The site: a file at the root and a directory with an index.
async fn site() -> Rc<Mem<Clock>> {
    let kv = Mem::new(Clock);
    kv.set(&Key::parse("/index.html").unwrap(), b"<h1>home</h1>").await.unwrap();
    kv.set(&Key::parse("/docs/index.html").unwrap(), b"<h1>docs</h1>").await.unwrap();
    Rc::new(kv)
}

/// Serves one connection on which `request` is sent; what comes back
/// until the server closes (the client does not close first), and how
/// long the server took in simulated seconds.
fn ask_with(request: &[u8], limits: Limits) -> (Vec<u8>, u64) {
    run(async {
        let handler = Static::new(site().await);
        let (mut client, server) = pair(1 << 20);
        let stats = Stats::default();
        let started = now();
        let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
        let asking = async {
            client.write_all(request).await.unwrap();
            client.read_to_end(1 << 20).await
        };
        let ((), got) = mirage_runtime::join(serving, asking).await;
        (got, now().saturating_duration_since(started).as_secs())
    })
}

fn ask(request: &[u8]) -> Vec<u8> {
    ask_with(request, Limits::default()).0
}

#[test]
fn a_directory_through_a_double_slash_is_redirected_on_this_host() {
    let got = ask(b"GET //docs HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&got), 301);
    assert_eq!(header(&got, "Location").as_deref(), Some("/docs/"));
    for (target, location) in [
        ("///docs", "/docs/"),
        ("//docs?x=//y", "/docs/?x=//y"),
        ("/docs", "/docs/"),
        ("/docs//", ""),
        ("http://a//docs", "/docs/"),
    ] {
        let got = ask(format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes());
        if location.is_empty() {
            assert_eq!(status(&got), 200, "{target}");
        } else {
            assert_eq!(status(&got), 301, "{target}");
            assert_eq!(header(&got, "Location").as_deref(), Some(location), "{target}");
        }
    }
}

#[test]
fn a_chunk_larger_than_the_body_may_be_is_refused_at_once() {
    let limits = Limits { max_body: 4096, ..Limits::default() };
    for size in ["fffffffffffffff", "1001", "ffffffffffffffffffffffffffffffff"] {
        // The chunk's data never comes; the client keeps the connection.
        let request = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc");
        let (got, took) = ask_with(request.as_bytes(), limits.clone());
        assert_eq!(status(&got), 413, "{size}");
        assert_eq!(took, 2, "{size}: answered at once, then lingered 2 s for the client to read it");
    }
    // A body of chunks that together pass the limit: 413 at the chunk
    // that would.
    let request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n";
    let mut request = request.to_vec();
    request.extend_from_slice(&[b'x'; 0x800]);
    request.extend_from_slice(b"\r\n801\r\n");
    let (got, _) = ask_with(&request, limits.clone());
    assert_eq!(status(&got), 413);
    // Up to the limit exactly, in pieces, with extensions and trailers, is
    // a request like any other (here refused for its method).
    let mut request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    request.extend_from_slice(b"800;a=b\r\n");
    request.extend_from_slice(&[b'x'; 0x800]);
    request.extend_from_slice(b"\r\n0800\r\n");
    request.extend_from_slice(&[b'y'; 0x800]);
    request.extend_from_slice(b"\r\n0\r\nT: 1\r\n\r\n");
    let (got, _) = ask_with(&request, limits);
    assert_eq!(status(&got), 405);
}

#[test]
fn if_modified_since_in_the_future_is_ignored() {
    let head = |since: u64| {
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: {}\r\nConnection: close\r\n\r\n",
            format_http_date(since)
        )
    };
    // The file was modified at NOW (the store's clock), and it is NOW.
    assert_eq!(status(&ask(head(NOW).as_bytes())), 304);
    assert_eq!(status(&ask(head(NOW - 1).as_bytes())), 200, "modified since");
    let got = ask(head(NOW + 86_400).as_bytes());
    assert_eq!(status(&got), 200, "a date later than the server's clock is not believed");
    assert!(got.ends_with(b"<h1>home</h1>"));
}

#[test]
fn a_space_inside_the_target_is_a_bad_request() {
    assert_eq!(status(&ask(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n")), 400);
    assert_eq!(status(&ask(b"GET /index.html x HTTP/1.0\r\n\r\n")), 400);
    assert_eq!(status(&ask(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")), 505);
}

#[test]
fn host_must_be_one_and_valid() {
    for host in ["a b", "a/b", "u@b", "a:x"] {
        let got = ask(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert_eq!(status(&got), 400, "{host:?}");
    }
    assert_eq!(status(&ask(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")), 400);
    assert_eq!(status(&ask(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n")), 400);
    assert_eq!(status(&ask(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n")), 200);
}

#[test]
fn pipelined_requests_and_bodies_keep_their_order() {
    let mut request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    request.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n");
    request.extend_from_slice(&[b'z'; 5000]);
    request.extend_from_slice(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    request.extend_from_slice(b"GET /docs/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let got = String::from_utf8(ask(&request)).unwrap();
    let statuses: Vec<&str> = got.match_indices("HTTP/1.1 ").map(|(i, _)| &got[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "405", "405", "200"]);
    assert!(got.ends_with("<h1>docs</h1>"));
}

#[test]
fn expect_continue_then_the_body() {
    run(async {
        let handler = Static::new(site().await);
        let (mut client, server) = pair(1 << 16);
        let limits = Limits::default();
        let stats = Stats::default();
        let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
        let asking = async {
            client.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            let n = client.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
            client.write_all(b"abc").await.unwrap();
            client.read_to_end(1 << 16).await
        };
        let ((), got) = mirage_runtime::join(serving, asking).await;
        assert_eq!(status(&got), 405);
        assert_eq!(stats.responses.get(), 1);
    });
}

#[test]
fn timeouts() {
    let limits = Limits { header_timeout: std::time::Duration::from_secs(3), ..Limits::default() };
    let (got, took) = ask_with(b"GET / HTTP/1.1\r\nHost: a\r\n", limits.clone());
    assert_eq!((status(&got), took), (408, 3 + 2), "a head begun must end in time (then 2 s of lingering)");
    let (got, took) = ask_with(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", limits.clone());
    assert_eq!((status(&got), took), (408, 3 + 2), "so must a body");
    let (got, took) = ask_with(b"", limits.clone());
    assert_eq!((got.len(), took), (0, 3), "a new connection that sends nothing is closed quietly");
    let (got, took) = ask_with(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", limits);
    assert_eq!((status(&got), took), (200, 60), "a connection that was served waits for its next request");
}

/// A new connection's first head is due within the header timeout of the
/// connection's start, whenever its first byte comes: a peer that waits
/// almost to the deadline and then trickles gets no second wait.
#[test]
fn the_first_head_is_due_from_the_connections_start() {
    let limits = Limits { header_timeout: std::time::Duration::from_secs(10), ..Limits::default() };
    let (took, got) = run(async {
        let handler = Static::new(site().await);
        let (mut client, server) = pair(1 << 16);
        let stats = Stats::default();
        let started = now();
        let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
        let asking = async {
            mirage_runtime::time::sleep(std::time::Duration::from_secs(9)).await;
            for b in b"GET / HTTP/1.1\r\nHost: a\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                mirage_runtime::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            client.read_to_end(1 << 16).await
        };
        let ((), got) = mirage_runtime::join(serving, asking).await;
        (now().saturating_duration_since(started).as_secs(), got)
    });
    assert_eq!(status(&got), 408);
    assert_eq!(took, 10 + 2, "408 at the header timeout from the start (then 2 s of lingering)");
}

/// Any byte stream, sent in any pieces, ends the connection with one
/// answer or none, in time; the server never panics (the panic contract
/// of `request.rs`) and never holds a buffer past it.
#[test]
fn random_streams_end_in_time() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: [&[u8]; 12] = [
        b"GET / HTTP/1.1\r\n",
        b"Host: a\r\n",
        b"\r\n",
        b"POST /docs HTTP/1.1\r\n",
        b"Content-Length: 7\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"Connection: close\r\n",
        b"fffff\r\n",
        b"Range: bytes=1-2\r\n",
        b"If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT\r\n",
    ];
    let limits = Limits {
        max_body: 64,
        max_header_bytes: 512,
        max_uri: 64,
        header_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    for _ in 0..400 {
        let mut stream = Vec::new();
        for _ in 0..next() % 12 {
            match next() % 3 {
                0 => stream.extend((0..next() % 40).map(|_| next() as u8)),
                _ => stream.extend_from_slice(pieces[(next() % 12) as usize]),
            }
        }
        let cuts: Vec<usize> = (0..4).map(|_| (next() as usize) % (stream.len() + 1)).collect();
        let stats = run(async {
            let handler = Static::new(site().await);
            let (mut client, server) = pair(256);
            let stats = Stats::default();
            let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
            let asking = async {
                let mut sorted = cuts.clone();
                sorted.sort();
                let mut at = 0;
                for cut in sorted.into_iter().chain([stream.len()]) {
                    if client.write_all(&stream[at..cut]).await.is_err() {
                        break;
                    }
                    at = cut;
                    mirage_runtime::yield_now().await;
                }
                client.read_to_end(1 << 20).await
            };
            let started = now();
            let ((), _) = mirage_runtime::join(serving, asking).await;
            assert!(now().saturating_duration_since(started).as_secs() < 10, "{stream:?}");
            stats
        });
        assert_eq!(stats.held.get(), 0, "{stream:?}");
    }
}

/// A connection whose client never reads gets no more of the server's
/// time than the send timeout, and is reset: its response cut short, what
/// is unsent is not held for a peer that may never read it.
#[test]
fn a_client_that_never_reads_is_reset_after_the_send_timeout() {
    run(async {
        let handler = Static::new(site().await);
        let (mut client, server): (End, End) = pair(64);
        let limits = Limits { send_timeout: std::time::Duration::from_secs(4), ..Limits::default() };
        let stats = Stats::default();
        let started = now();
        let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
        let asking = async {
            client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            client
        };
        let ((), client) = mirage_runtime::join(serving, asking).await;
        assert_eq!(now().saturating_duration_since(started).as_secs(), 4);
        assert_eq!(stats.responses.get(), 0);
        assert_eq!(client.pending(), 0, "the response's first bytes are dropped with the reset");
        let mut client = client;
        assert_eq!(client.read(&mut [0u8; 16]).await, Err(flow::Error::Reset));
    });
}

/// A large file read slowly, but steadily, goes out whole however long it
/// takes: the send timeout is on each write's progress, not on the
/// response (a 64 KiB file read 4 KiB a second takes 16 s, four times
/// the timeout).
#[test]
fn a_slow_reader_that_keeps_reading_gets_the_whole_file() {
    run(async {
        let kv = Mem::new(Clock);
        let file: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        kv.set(&Key::parse("/big.bin").unwrap(), &file).await.unwrap();
        let handler = Static::new(Rc::new(kv));
        let (mut client, server): (End, End) = pair(4096);
        let limits = Limits { send_timeout: std::time::Duration::from_secs(4), ..Limits::default() };
        let stats = Stats::default();
        let started = now();
        let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
        let asking = async {
            client.write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                mirage_runtime::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            got
        };
        let ((), got) = mirage_runtime::join(serving, asking).await;
        assert!(now().saturating_duration_since(started).as_secs() >= 15);
        assert_eq!(status(&got), 200);
        let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        assert!(body == &file[..], "{} bytes of {}", body.len(), file.len());
        assert_eq!(stats.responses.get(), 1);
    });
}

/// A field too long for the head is 431, however the head arrives: whole,
/// or a few bytes at a time (it is parsed again every KiB, and at the
/// limit).
#[test]
fn a_field_too_long_is_431_however_it_arrives() {
    let big = [b"GET / HTTP/1.1\r\nHost: a\r\nX: ".as_slice(), &[b'b'; 20_000]].concat();
    assert_eq!(status(&ask(&big)), 431);
    for piece in [1usize, 7, 1000] {
        let got = run(async {
            let handler = Static::new(site().await);
            let (mut client, server) = pair(1 << 20);
            let stats = Stats::default();
            let limits = Limits::default();
            let serving = serve_connection(server, "10.0.0.1:5000".parse().unwrap(), &handler, &limits, &Clock, &stats);
            let asking = async {
                for chunk in big.chunks(piece) {
                    if client.write_all(chunk).await.is_err() {
                        break;
                    }
                    mirage_runtime::yield_now().await;
                }
                client.read_to_end(1 << 20).await
            };
            mirage_runtime::join(serving, asking).await.1
        });
        assert_eq!(status(&got), 431, "{piece} bytes at a time");
    }
}

/// Bytes that cannot begin a request (a TLS hello on the HTTP port) are
/// 400 at once, not 408 once the head's time is up; so is a line that
/// cannot be a field, as soon as it ends.
#[test]
fn what_cannot_be_a_head_is_400_at_once() {
    let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    // (Within the two seconds the server lingers to deliver the answer,
    // not the 30 of the head's time.)
    let (got, secs) = ask_with(&hello, Limits::default());
    assert!(status(&got) == 400 && secs <= 2, "{} after {secs} s", status(&got));
    let (got, secs) = ask_with(b"GET / HTTP/1.1\r\nHost: a\r\nbad field\r\n", Limits::default());
    assert!(status(&got) == 400 && secs <= 2, "{} after {secs} s", status(&got));
}
