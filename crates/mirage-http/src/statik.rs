//! Static files from a key-value store: `index.html` for directories,
//! media types, validators (ETag, Last-Modified), conditional GET, and
//! single byte ranges.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;

use mirage_devices::flow::{self, Flow};
use mirage_devices::kv::{self, Key, Kind, KvRo};

use crate::server::{Body, Handler, Response};
use crate::{Request, format_http_date, mime_type, parse_http_date};

/// Serves the values of a store as files: `GET /a/b.html` is the value of
/// key `/a/b.html`; a dictionary is served by its `index.html`.
#[derive(Debug)]
pub struct Static<K> {
    kv: Rc<K>,
}

impl<K> Static<K> {
    /// Serves `kv`.
    pub fn new(kv: Rc<K>) -> Static<K> {
        Static { kv }
    }
}

/// Bodies of at most this many bytes are read whole before the head is
/// written, and go out with it.
const SMALL: u64 = 32 * 1024;

/// Larger bodies are read and written in pieces of this size. A piece is
/// copied into the connection's send buffer right after it is read, while
/// it is still in the processor's cache: 16 KiB pieces cost 20 to 30% less
/// processor time per 1 MiB response than 64 KiB ones with 64 connections
/// (BENCHMARKS.md), and no more with one.
const PIECE: usize = 16 * 1024;

/// A body: in memory, or a range of a value read as it is written.
#[derive(Debug)]
pub enum StaticBody<K> {
    /// In memory.
    Bytes(Vec<u8>),
    /// `len` bytes of `key` from `offset`.
    Value {
        /// The store.
        kv: Rc<K>,
        /// The value.
        key: Key,
        /// Where the body starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

impl<K: KvRo> Body for StaticBody<K> {
    fn len(&self) -> u64 {
        match self {
            StaticBody::Bytes(b) => b.len() as u64,
            StaticBody::Value { len, .. } => *len,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            StaticBody::Bytes(b) => Some(b),
            StaticBody::Value { .. } => None,
        }
    }

    fn buffer(&self) -> usize {
        match self {
            StaticBody::Value { kv, key, len, .. } if kv.value_in_memory(key).is_none() => {
                PIECE.min(usize::try_from(*len).unwrap_or(usize::MAX))
            }
            _ => 0,
        }
    }

    async fn write_to<F: Flow>(&mut self, flow: &mut F) -> Result<(), flow::Error> {
        match self {
            StaticBody::Bytes(b) => flow.write_all(b).await,
            StaticBody::Value { kv, key, offset, len } => {
                if let Some(data) = kv.value_in_memory(key) {
                    // Compiled in: written to the connection from where it
                    // lies, one copy fewer than through a piece.
                    let range = usize::try_from(*offset).ok().zip(usize::try_from(*offset + *len).ok());
                    let Some(body) = range.and_then(|(a, b)| data.get(a..b)) else {
                        return Err(flow::Error::Io);
                    };
                    return flow.write_all(body).await;
                }
                let mut piece =
                    buffer(PIECE.min(*len as usize), MIN_PIECE.min(*len as usize)).ok_or(flow::Error::Io)?;
                let mut at = *offset;
                let end = *offset + *len;
                while at < end {
                    let want = ((end - at) as usize).min(piece.len());
                    let n = kv.get_partial(key, at, &mut piece[..want]).await.map_err(|_| flow::Error::Io)?;
                    if n == 0 {
                        // The value shrank under us: the promised length
                        // cannot be kept, so the connection must end.
                        return Err(flow::Error::Io);
                    }
                    flow.write_all(&piece[..n]).await?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }
}

/// A zeroed buffer of `len` bytes, within the memory budget; when memory
/// is short, a smaller one down to `min` bytes, or `None`.
fn buffer(len: usize, min: usize) -> Option<Vec<u8>> {
    let mut want = len;
    loop {
        let mut v = Vec::new();
        if mirage_runtime::memory::may_hold(want) && v.try_reserve_exact(want).is_ok() {
            v.resize(want, 0);
            return Some(v);
        }
        if want <= min {
            log::warn!(target: "http", "no memory for a buffer of {want} bytes: memory budget reached");
            return None;
        }
        want = (want / 4).max(min);
    }
}

/// The smallest piece a value is read and written in.
const MIN_PIECE: usize = 4 * 1024;

/// The `Location` of a directory reached without its trailing `/`: the
/// path with it, and its query. Runs of `/` are made one, and `\` is
/// escaped, so that the location is always a path on this host: a
/// browser reads `//host/` (or `/\host/`) as another host.
fn directory_location(path: &str, query: Option<&str>) -> String {
    let mut location = String::with_capacity(path.len() + 2);
    for c in path.chars() {
        match c {
            '/' if location.ends_with('/') => {}
            '\\' => location.push_str("%5C"),
            c => location.push(c),
        }
    }
    if !location.ends_with('/') {
        location.push('/');
    }
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    location
}

fn text<K>(status: u16) -> Response<StaticBody<K>> {
    let body = format!("{status} {}\n", crate::reason(status));
    Response::new(status, StaticBody::Bytes(body.into_bytes())).with("Content-Type", "text/plain; charset=utf-8")
}

/// Decodes `%XX` escapes; `None` for a bad escape, an encoded NUL or
/// text that is not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(core::str::from_utf8(hex).ok()?, 16).ok()?;
            if v == 0 {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A byte range of a value of `size` bytes, as asked by a `Range` field.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// Serve the whole value (no range, or one we do not honour).
    Whole,
    /// `start..=end`.
    Part(u64, u64),
    /// No byte of the range exists: 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n`. A set of several ranges is
/// served whole, as RFC 9110 allows.
fn range(field: &str, size: u64) -> Range {
    let Some(spec) = field.trim().strip_prefix("bytes=") else { return Range::Whole };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Whole };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) { None } else { s.parse().ok() }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Range::Whole,
        (true, false) => match num(b) {
            Some(0) => Range::Unsatisfiable,
            Some(n) if size > 0 => Range::Part(size.saturating_sub(n), size - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (false, _) => {
            let Some(start) = num(a) else { return Range::Whole };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(e) if e >= start => e,
                    _ => return Range::Whole,
                }
            };
            if start >= size { Range::Unsatisfiable } else { Range::Part(start, end.min(size - 1)) }
        }
    }
}

/// Whether `tag` is in the `If-None-Match` list (weak comparison).
fn etag_matches(list: &str, tag: &str) -> bool {
    let bare = |t: &str| -> String { String::from(t.trim().trim_start_matches("W/")) };
    list.split(',').any(|t| t.trim() == "*" || bare(t) == bare(tag))
}

impl<K: KvRo> Handler for Static<K> {
    type Body = StaticBody<K>;

    async fn handle(&self, request: &Request) -> Response<StaticBody<K>> {
        let get = request.method == "GET";
        if !get && request.method != "HEAD" {
            return text(405).with("Allow", "GET, HEAD");
        }
        let mut path = request.path();
        // The absolute form (`GET http://host/a HTTP/1.1`) names the path
        // after the authority.
        for scheme in ["http://", "https://"] {
            if let Some(rest) = path.strip_prefix(scheme) {
                path = rest.find('/').map_or("/", |i| &rest[i..]);
            }
        }
        if !path.starts_with('/') {
            return text(400);
        }
        let Some(decoded) = percent_decode(path) else { return text(400) };
        let Ok(mut key) = Key::parse(&decoded) else { return text(400) };
        match self.kv.exists(&key).await {
            Ok(Some(Kind::Value)) => {}
            Ok(Some(Kind::Dictionary)) => {
                if !decoded.ends_with('/') {
                    // As other servers do: a directory's URL ends with `/`,
                    // so that its relative links resolve inside it.
                    return text(301).with("Location", directory_location(path, request.query()));
                }
                key = match key.join("index.html") {
                    Ok(k) => k,
                    Err(_) => return text(404),
                };
                if !matches!(self.kv.exists(&key).await, Ok(Some(Kind::Value))) {
                    return text(404);
                }
            }
            Ok(None) | Err(kv::Error::NotFound | kv::Error::InvalidKey | kv::Error::DictionaryExpected) => {
                return text(404);
            }
            Err(e) => {
                log::warn!(target: "http", "{key}: {e}");
                return text(500);
            }
        }
        let (size, modified) = match (self.kv.size(&key).await, self.kv.last_modified(&key).await) {
            (Ok(s), Ok(m)) => (s, m.as_secs()),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!(target: "http", "{key}: {e}");
                return text(500);
            }
        };
        let etag = format!("\"{modified:x}-{size:x}\"");
        let last_modified = format_http_date(modified);
        let validators =
            |r: Response<StaticBody<K>>| r.with("ETag", etag.clone()).with("Last-Modified", last_modified.clone());

        // Conditional requests (RFC 9110 section 13.2.2): If-None-Match
        // wins over If-Modified-Since, and a date later than the server's
        // clock is ignored (section 13.1.3).
        let not_modified = match request.header_str("if-none-match") {
            Some(list) => etag_matches(list, &etag),
            None => request
                .header_str("if-modified-since")
                .and_then(parse_http_date)
                .is_some_and(|since| modified <= since && since <= request.received),
        };
        if not_modified {
            return validators(Response::new(304, StaticBody::Bytes(Vec::new())));
        }

        let mut part = match request.header_str("range") {
            Some(r) if get => range(r, size),
            _ => Range::Whole,
        };
        if let Some(cond) = request.header_str("if-range") {
            // A range of a representation that changed is not wanted.
            let same = if cond.starts_with('"') { cond == etag } else { parse_http_date(cond) == Some(modified) };
            if !same {
                part = Range::Whole;
            }
        }
        let (status, offset, len) = match part {
            Range::Whole => (200, 0, size),
            Range::Part(a, b) => (206, a, b - a + 1),
            Range::Unsatisfiable => return text(416).with("Content-Range", format!("bytes */{size}")),
        };
        // Held for the peer until it takes it: within the budget. Without
        // room for it, the body is streamed, and the server claims its
        // buffer, shedding larger holders (downloads stalled longest) if
        // need be.
        let small = if len <= SMALL && get { buffer(len as usize, len as usize) } else { None };
        let body = if let Some(mut data) = small {
            match self.kv.get_partial(&key, offset, &mut data).await {
                Ok(n) if n == data.len() => StaticBody::Bytes(data),
                Ok(_) => return text(500),
                Err(e) => {
                    log::warn!(target: "http", "{key}: {e}");
                    return text(500);
                }
            }
        } else {
            StaticBody::Value { kv: self.kv.clone(), key: key.clone(), offset, len }
        };
        let mut r = validators(Response::new(status, body))
            .with("Content-Type", mime_type(key.as_str()))
            .with("Accept-Ranges", "bytes");
        if status == 206 {
            r = r.with("Content-Range", format!("bytes {offset}-{}/{size}", offset + len - 1));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Range::Part(0, 9));
        assert_eq!(range("bytes=90-", 100), Range::Part(90, 99));
        assert_eq!(range("bytes=90-1000", 100), Range::Part(90, 99));
        assert_eq!(range("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(range("bytes=-1000", 100), Range::Part(0, 99));
        assert_eq!(range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(range("bytes=9-1", 100), Range::Whole);
        assert_eq!(range("items=0-1", 100), Range::Whole);
        assert_eq!(range("bytes=x-1", 100), Range::Whole);
        assert_eq!(range("bytes=-5", 0), Range::Unsatisfiable);
    }

    #[test]
    fn decoding_and_validators() {
        assert_eq!(percent_decode("/a%20b/%C3%A9").as_deref(), Some("/a b/é"));
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/a%00"), None);
        assert_eq!(percent_decode("/%ff"), None);
        assert!(etag_matches("\"a\", W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"a\"", "\"b\""));
    }
}
