//! kv-server: a key-value service over HTTP/1.1. `GET /kv/KEY` answers the
//! value (or, for a dictionary, its entries one a line, `/` after a
//! dictionary's), `PUT /kv/KEY` stores the request body, `DELETE /kv/KEY`
//! removes the value or dictionary. A change is answered only once the
//! store has it on its device, so a value a client saw acknowledged
//! survives the unikernel being killed.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use mirage_devices::console::Console;
use mirage_devices::kv::{self, Key, Kind, KvRw};
use mirage_devices::stack::{self, Stack};
use mirage_devices::time::WallClock;
use mirage_http::{Handler, Limits, Request, Response, Stats};

/// Connections a listener keeps waiting for acceptance.
const BACKLOG: usize = 64;

/// Answers requests from a store.
struct Service<K> {
    store: K,
}

fn text(status: u16, body: impl Into<String>) -> Response<Vec<u8>> {
    let mut b: Vec<u8> = body.into().into_bytes();
    b.push(b'\n');
    Response::new(status, b).with("Content-Type", "text/plain; charset=utf-8")
}

/// The status of a store error, with what it means.
fn failure(e: kv::Error) -> Response<Vec<u8>> {
    let status = match e {
        kv::Error::NotFound => 404,
        kv::Error::InvalidKey => 400,
        kv::Error::ValueExpected | kv::Error::DictionaryExpected | kv::Error::AlreadyPresent => 409,
        kv::Error::NoSpace => 507,
        _ => 500,
    };
    text(status, format!("{e}"))
}

impl<K: KvRw> Service<K> {
    async fn get(&self, key: &Key) -> Response<Vec<u8>> {
        match self.store.exists(key).await {
            Ok(Some(Kind::Value)) => match self.store.get(key).await {
                Ok(v) => Response::new(200, v).with("Content-Type", "application/octet-stream"),
                Err(e) => failure(e),
            },
            Ok(Some(Kind::Dictionary)) => match self.store.list(key).await {
                Ok(entries) => {
                    let mut body = String::new();
                    for (k, kind) in entries {
                        body.push_str(k.basename());
                        if kind == Kind::Dictionary {
                            body.push('/');
                        }
                        body.push('\n');
                    }
                    Response::new(200, body.into_bytes()).with("Content-Type", "text/plain; charset=utf-8")
                }
                Err(e) => failure(e),
            },
            Ok(None) => failure(kv::Error::NotFound),
            Err(e) => failure(e),
        }
    }
}

impl<K: KvRw> Handler for Service<K> {
    type Body = Vec<u8>;

    async fn handle(&self, request: &Request) -> Response<Vec<u8>> {
        let path = request.target.split(['?', '#']).next().unwrap_or("");
        let Some(rest) = path.strip_prefix("/kv/").or(if path == "/kv" { Some("") } else { None }) else {
            return text(404, "the store is under /kv/");
        };
        let key = match Key::parse(rest) {
            Ok(k) => k,
            Err(e) => return failure(e),
        };
        match request.method.as_str() {
            "GET" | "HEAD" => self.get(&key).await,
            "PUT" if key.is_root() => text(409, "PUT names a key: /kv/KEY"),
            "PUT" => match self.store.set(&key, &request.body).await {
                Ok(()) => Response::new(204, Vec::new()),
                Err(e) => failure(e),
            },
            "DELETE" => match self.store.remove(&key).await {
                Ok(()) => Response::new(204, Vec::new()),
                Err(e) => failure(e),
            },
            _ => text(405, "use GET, PUT or DELETE").with("Allow", "GET, HEAD, PUT, DELETE"),
        }
    }
}

/// The unikernel: serves `data` on TCP port `port` until the stack fails.
pub async fn start<S, K, W>(
    console: impl Console,
    stack: S,
    data: K,
    clock: W,
    port: u16,
    max_body: u64,
) -> Result<(), stack::Error>
where
    S: Stack,
    S::Flow: 'static,
    K: KvRw + 'static,
    W: WallClock + 'static,
{
    let listener = stack.listen(port, BACKLOG).await?;
    let addr = match stack.ipv4() {
        Some((a, _)) => format!("http://{a}:{port}/kv/"),
        None => format!("port {port}"),
    };
    let _ = console.log(&format!("kv-server: serving on {addr}")).await;
    let limits = Limits { max_body, idle_timeout: Duration::from_secs(60), ..Limits::default() };
    let handler = Rc::new(Service { store: data });
    Err(mirage_http::serve(listener, handler, Rc::new(limits), Rc::new(clock), Rc::new(Stats::default())).await)
}
