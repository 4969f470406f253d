//! One host holds at most `max_connections_per_host` connections: more
//! from it are closed at once and counted, while another host is served;
//! as its connections end, it may open others.

mod common;

use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use common::{Clock, Listener, exchange, run, status};
use mirage_devices::kv::{Key, KvRw};
use mirage_http::{Limits, Static, Stats, serve};
use mirage_kv::Mem;
use mirage_runtime::spawn;

const WINDOW: usize = 4096;
const GREEDY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

async fn settle() {
    mirage_runtime::time::sleep(Duration::from_millis(1)).await;
}

/// A server of 20 connections, `per_host` a host, its page "hello".
async fn server(per_host: usize) -> (Listener, Rc<Stats>) {
    let kv = Mem::new(Clock);
    kv.set(&Key::parse("/index.html").unwrap(), b"hello").await.unwrap();
    let handler = Rc::new(Static::new(Rc::new(kv)));
    let limits = Rc::new(Limits {
        max_connections: 20,
        max_connections_per_host: per_host,
        idle_timeout: Duration::from_secs(600),
        header_timeout: Duration::from_secs(600),
        ..Limits::default()
    });
    let stats = Rc::new(Stats::default());
    let listener = Listener::default();
    drop(spawn(serve(listener.clone(), handler, limits, Rc::new(Clock), stats.clone())));
    (listener, stats)
}

#[test]
fn one_host_holds_at_most_its_share_of_connections() {
    run(async {
        let (listener, stats) = server(5).await;
        // The greedy host opens 8 idle connections: 5 are held, 3 closed
        // at once.
        let mut held: Vec<_> = (0..8).map(|_| listener.connect_from(GREEDY, WINDOW)).collect();
        settle().await;
        assert_eq!((stats.open.get(), stats.refused_host.get()), (5, 3));
        let closed = held.iter().filter(|c| c.at_end()).count();
        assert_eq!(closed, 3, "the refused connections are closed");
        // Another host is served.
        let got = exchange(listener.connect_from(OTHER, WINDOW), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(status(&got), 200);
        // The greedy host's connections end (one request each, then a
        // close): it may open as many again.
        for c in held.drain(..).filter(|c| !c.at_end()) {
            let got = exchange(c, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
            assert_eq!(status(&got), 200);
        }
        settle().await;
        assert_eq!(stats.open.get(), 0);
        let again: Vec<_> = (0..5).map(|_| listener.connect_from(GREEDY, WINDOW)).collect();
        settle().await;
        assert_eq!((stats.open.get(), stats.refused_host.get()), (5, 3));
        drop(again);
    });
}

#[test]
fn no_share_means_no_limit_but_the_servers() {
    run(async {
        let (listener, stats) = server(0).await;
        let held: Vec<_> = (0..25).map(|_| listener.connect_from(GREEDY, WINDOW)).collect();
        settle().await;
        assert_eq!((stats.open.get(), stats.refused.get(), stats.refused_host.get()), (20, 5, 0));
        drop(held);
    });
}
