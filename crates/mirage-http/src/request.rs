//! Requests: the head parsed by httparse, checked against the limits, and
//! the framing of the body decoded (RFC 9112).
//!
//! Everything here reads bytes a remote peer chose:
//!
//! * [`parse`] reads a request head from the start of a buffer: partial,
//!   complete with its [`Framing`], or refused with the status to answer.
//! * [`chunk_size`] and [`trailers`] decode the framing of a chunked body
//!   a piece at a time, so that the server never needs a whole chunk in
//!   its read buffer.
//!
//! # Panics
//!
//! None of these functions panics, whatever the bytes: every index is a
//! position found in the same buffer or checked against its length, sizes
//! are parsed with checked arithmetic, and a number too large for its type
//! is a refusal (413 for a body or chunk size, 400 otherwise). The server's
//! state machine built on them (`server.rs`) does not panic on any byte
//! stream either: it answers a status and closes, or closes quietly. The
//! unit tests here and in `server.rs`, and the randomized stream tests
//! there, hold both to it.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::SocketAddr;

/// A request, its body read.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method as sent (`GET`, `HEAD`, …).
    pub method: String,
    /// The request target as sent (`/a/b?q`).
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The header fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, decoded from its framing.
    pub body: Vec<u8>,
    /// Where the request came from.
    pub peer: SocketAddr,
    /// When its head arrived, in seconds since the epoch by the server's
    /// wall clock: "now" for conditional requests (a date later than it
    /// is not believed).
    pub received: u64,
}

impl Request {
    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The value of the first field named `name`, if it is text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| core::str::from_utf8(v).ok()).map(str::trim)
    }

    /// Every value of the fields named `name`, comma-separated lists split.
    pub fn header_list<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| core::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query of the target, after `?`.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// Whether the client asked to keep the connection open: HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let mut close = false;
        let mut keep = false;
        for token in self.header_list("connection") {
            close |= token.eq_ignore_ascii_case("close");
            keep |= token.eq_ignore_ascii_case("keep-alive");
        }
        if self.version >= 1 { !close } else { keep && !close }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length: n` (0 when neither field is present).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a head cannot be served; each maps to a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400: malformed.
    BadRequest,
    /// 413: the body is larger than allowed.
    TooLarge,
    /// 414: the target is longer than allowed.
    UriTooLong,
    /// 431: too many header fields, or too many bytes of them.
    HeadersTooLarge,
    /// 505: a version other than HTTP/1.x.
    Version,
    /// 501: a transfer coding other than chunked.
    NotImplemented,
}

impl Refusal {
    pub(crate) fn status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::TooLarge => 413,
            Refusal::UriTooLong => 414,
            Refusal::HeadersTooLarge => 431,
            Refusal::Version => 505,
            Refusal::NotImplemented => 501,
        }
    }
}

/// The outcome of parsing what has arrived so far.
#[derive(Debug)]
pub(crate) enum Head {
    /// More bytes are needed.
    Partial,
    /// A complete head of `len` bytes, and how its body is framed.
    Complete { request: Request, len: usize, framing: Framing },
}

/// Whether the request line (the first non-empty line) of `buf` is well
/// formed but names a version we do not speak (`HTTP/2.0`, `HTTP/1.2`): 505
/// rather than 400. A line of more than three parts (a space inside the
/// target) is malformed, whatever its last word.
fn is_other_version(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if method.is_empty() || target.is_empty() {
        return false;
    }
    match version.strip_prefix(b"HTTP/") {
        Some([major]) => major.is_ascii_digit(),
        Some([major, b'.', minor]) => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    }
}

/// Parses the head at the start of `buf`.
pub(crate) fn parse(buf: &[u8], limits: &crate::Limits, peer: SocketAddr) -> Result<Head, Refusal> {
    let mut fields = alloc::vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // Refuse as early as the bytes allow: a request line longer than
            // a target may be, or a head larger than the limit.
            let line_end = buf.iter().position(|&b| b == b'\n');
            if line_end.unwrap_or(buf.len()) > limits.max_uri.saturating_add(32) {
                return Err(Refusal::UriTooLong);
            }
            if buf.len() > limits.max_header_bytes {
                return Err(Refusal::HeadersTooLarge);
            }
            return Ok(Head::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadersTooLarge),
        Err(httparse::Error::Version) if is_other_version(buf) => return Err(Refusal::Version),
        Err(_) => return Err(Refusal::BadRequest),
    };
    if len > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Refusal::BadRequest);
    };
    if target.len() > limits.max_uri {
        return Err(Refusal::UriTooLong);
    }
    let request = Request {
        method: method.into(),
        target: target.into(),
        version,
        headers: req.headers.iter().map(|h| (String::from(h.name), h.value.to_vec())).collect(),
        body: Vec::new(),
        peer,
        received: 0,
    };
    let framing = framing(&request, limits)?;
    // RFC 9112 section 3.2: an HTTP/1.1 request without Host, and any
    // request with more than one Host or an invalid one, is refused.
    let mut hosts = request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("host"));
    match (hosts.next(), hosts.next()) {
        (None, _) if version == 1 => return Err(Refusal::BadRequest),
        (Some((_, value)), None) if !valid_host(value) => return Err(Refusal::BadRequest),
        (Some(_), Some(_)) => return Err(Refusal::BadRequest),
        _ => {}
    }
    Ok(Head::Complete { request, len, framing })
}

/// Whether `value` is a valid Host field value: `uri-host [ ":" port ]`
/// (RFC 9110 section 7.2, RFC 3986 section 3.2.2), empty allowed. The host
/// is a bracketed IP literal or a reg-name (unreserved characters,
/// sub-delims and percent escapes), which also covers IPv4 addresses; so
/// spaces, `/`, `@` and the like are refused.
fn valid_host(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let unreserved_or_sub_delim = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
    let (host_ok, rest) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else { return false };
        let inside = &literal[..end];
        (!inside.is_empty() && inside.iter().all(|&b| unreserved_or_sub_delim(b) || b == b':'), &literal[end + 1..])
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let host = &value[..end];
        let mut ok = true;
        let mut i = 0;
        while ok && i < host.len() {
            if host[i] == b'%' {
                ok = host.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                i += 3;
            } else {
                ok = unreserved_or_sub_delim(host[i]);
                i += 1;
            }
        }
        (ok, &value[end..])
    };
    let port_ok = match rest {
        [] => true,
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    host_ok && port_ok
}

/// The framing of the body (RFC 9112 section 6.3), refusing what could
/// be read two ways: both fields, or Content-Length values that differ.
fn framing(request: &Request, limits: &crate::Limits) -> Result<Framing, Refusal> {
    // The fields that frame the body in visible ASCII, spaces and tabs
    // only, each Content-Length element a number: a value another parser
    // might read otherwise (a proxy that drops a field it cannot decode,
    // or trims other whitespace) would let the two disagree on where the
    // body ends, and smuggle a request past the proxy.
    for (name, value) in &request.headers {
        let framing = name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding");
        if framing && !value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(Refusal::BadRequest);
        }
        if name.eq_ignore_ascii_case("content-length")
            && value
                .split(|&b| b == b',')
                .any(|e| !e.trim_ascii().iter().all(u8::is_ascii_digit) || e.trim_ascii().is_empty())
        {
            return Err(Refusal::BadRequest);
        }
    }
    let codings: Vec<&str> = request.header_list("transfer-encoding").collect();
    let has_te = request.header("transfer-encoding").is_some();
    let mut length: Option<u64> = None;
    for v in request.header_list("content-length") {
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::BadRequest);
        }
        let n: u64 = v.parse().map_err(|_| Refusal::BadRequest)?;
        if length.is_some_and(|l| l != n) {
            return Err(Refusal::BadRequest);
        }
        length = Some(n);
    }
    if request.header("content-length").is_some() && length.is_none() {
        return Err(Refusal::BadRequest);
    }
    if has_te {
        if length.is_some() || request.version == 0 {
            return Err(Refusal::BadRequest);
        }
        match codings.as_slice() {
            [c] if c.eq_ignore_ascii_case("chunked") => return Ok(Framing::Chunked),
            [.., last] if last.eq_ignore_ascii_case("chunked") => return Err(Refusal::NotImplemented),
            _ => return Err(Refusal::BadRequest),
        }
    }
    let n = length.unwrap_or(0);
    if n > limits.max_body {
        return Err(Refusal::TooLarge);
    }
    Ok(Framing::Length(n))
}

/// A chunk's size line (RFC 9112 section 7.1), decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkLine {
    /// More bytes are needed.
    Partial,
    /// A chunk of `size` bytes follows the `len` bytes of its line; size 0
    /// is the last chunk, which trailer fields follow.
    Size { size: u64, len: usize },
}

/// The longest chunk size line we read, extensions included.
const MAX_CHUNK_LINE: usize = 1024;

/// The most bytes of trailer fields we read (and drop).
const MAX_TRAILERS: usize = 8 * 1024;

/// The value of the hexadecimal digits `digits`; `None` if it exceeds
/// `max` (leading zeros are allowed, however many).
fn hex_at_most(digits: &[u8], max: u64) -> Option<u64> {
    let mut n: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16)?;
        n = n.checked_mul(16)?.checked_add(u64::from(v))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// Decodes the chunk size line at the start of `buf`. A chunk larger than
/// `allowance` (what the body may still grow by) is refused with 413 as
/// soon as its size is known, before its data arrives.
pub(crate) fn chunk_size(buf: &[u8], allowance: u64) -> Result<ChunkLine, Refusal> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if hex_at_most(&buf[..digits], allowance).is_none() {
        return Err(Refusal::TooLarge);
    }
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_CHUNK_LINE { Err(Refusal::BadRequest) } else { Ok(ChunkLine::Partial) };
    };
    if nl >= MAX_CHUNK_LINE {
        return Err(Refusal::BadRequest);
    }
    let line = buf[..nl].strip_suffix(b"\r").ok_or(Refusal::BadRequest)?;
    // After the digits: optional whitespace (BWS), then extensions.
    let after = &line[digits..];
    let ws = after.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    if digits == 0 || !(after.len() == ws || after[ws] == b';') {
        return Err(Refusal::BadRequest);
    }
    let size = hex_at_most(&line[..digits], allowance).ok_or(Refusal::TooLarge)?;
    Ok(ChunkLine::Size { size, len: nl + 1 })
}

/// Finds the end of the trailer section at the start of `buf` (after the
/// last chunk): the bytes up to and including its empty line, or `None`
/// if more are needed. The fields are read and dropped.
pub(crate) fn trailers(buf: &[u8]) -> Result<Option<usize>, Refusal> {
    let mut at = 0;
    while let Some(rel) = buf[at..].iter().position(|&b| b == b'\n') {
        let line = &buf[at..at + rel];
        at += rel + 1;
        if at > MAX_TRAILERS {
            return Err(Refusal::HeadersTooLarge);
        }
        if line == b"\r" || line.is_empty() {
            return Ok(Some(at));
        }
    }
    if buf.len() > MAX_TRAILERS { Err(Refusal::HeadersTooLarge) } else { Ok(None) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn peer() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 5000))
    }

    fn status(text: &[u8]) -> Result<Framing, u16> {
        match parse(text, &Limits::default(), peer()) {
            Ok(Head::Complete { framing, .. }) => Ok(framing),
            Ok(Head::Partial) => Err(0),
            Err(r) => Err(r.status()),
        }
    }

    #[test]
    fn heads_and_their_framing() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(Framing::Length(0)));
        assert_eq!(status(b"\r\nGET / HTTP/1.0\r\n\r\n"), Ok(Framing::Length(0)));
        assert_eq!(status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"), Ok(Framing::Length(5)));
        assert_eq!(status(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), Ok(Framing::Chunked));
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n"), Err(0));
    }

    #[test]
    fn refusals() {
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), Err(400), "no Host");
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), Err(505));
        assert_eq!(status(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), Err(505));
        assert_eq!(status(b"GET / HTTX/1.1\r\nHost: a\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), Err(400));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(400)
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), Err(501));
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n"), Err(413));
        let long = [b"GET /".as_slice(), &[b'a'; 9000], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        assert_eq!(status(&long), Err(414));
        assert_eq!(status(&long[..8500]), Err(414), "refused before the line ends");
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(alloc::format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), Err(431));
        let big = [b"GET / HTTP/1.1\r\nHost: a\r\nX: ".as_slice(), &[b'b'; 20000]].concat();
        assert_eq!(status(&big), Err(431));
        assert_eq!(status(b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(400));
    }

    #[test]
    fn framing_fields_that_another_parser_could_read_otherwise_are_refused() {
        let head = |fields: &[u8]| [b"POST / HTTP/1.1\r\nHost: a\r\n".as_slice(), fields, b"\r\n"].concat();
        // A Transfer-Encoding a proxy could drop as undecodable, or trim.
        assert_eq!(status(&head(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: \x80gzip\r\n")), Err(400));
        assert_eq!(status(&head(b"Transfer-Encoding: chunked\xc2\xa0\r\n")), Err(400));
        // A Content-Length beside one that is not a number.
        assert_eq!(status(&head(b"Content-Length: 5\r\nContent-Length: \xff\r\n")), Err(400));
        assert_eq!(status(&head(b"Content-Length: 5,,5\r\n")), Err(400));
        assert_eq!(status(&head(b"Content-Length: 5, x\r\n")), Err(400));
        // What stays allowed: copies of one length, spaces and tabs.
        assert_eq!(status(&head(b"Content-Length: 5, 5\r\n")), Ok(Framing::Length(5)));
        assert_eq!(status(&head(b"Transfer-Encoding:\tchunked \r\n")), Ok(Framing::Chunked));
    }

    #[test]
    fn a_space_in_the_target_is_malformed_not_another_version() {
        assert_eq!(status(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET /a b HTTP/2.0\r\nHost: a\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET  HTTP/1.1\r\nHost: a\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / HTTP/3\r\nHost: a\r\n\r\n"), Err(505));
    }

    #[test]
    fn host_once_and_valid() {
        for host in ["a", "a:80", "example.com", "10.0.0.2:8080", "[::1]", "[fe80::1]:80", "x%41y", "", "a-b_c~d", "a:"]
        {
            let text = alloc::format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(status(text.as_bytes()), Ok(Framing::Length(0)), "{host:?}");
        }
        for host in ["a b", "a/b", "u@b", "a:b", "a:80:80", "[::1", "[]", "x%4", "a\\b", "a?b", "a#b", "[::1]x"] {
            let text = alloc::format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(status(text.as_bytes()), Err(400), "{host:?}");
            let text = alloc::format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
            assert_eq!(status(text.as_bytes()), Err(400), "HTTP/1.0 {host:?}");
        }
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), Err(400), "the same Host twice");
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), Err(400), "two Hosts");
        assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), Err(400), "two Hosts in HTTP/1.0");
    }

    #[test]
    fn chunk_lines() {
        let max = 1 << 20;
        assert_eq!(chunk_size(b"5\r\nhello\r\n", max), Ok(ChunkLine::Size { size: 5, len: 3 }));
        assert_eq!(chunk_size(b"5;ext=1\r\nhel", max), Ok(ChunkLine::Size { size: 5, len: 9 }));
        assert_eq!(chunk_size(b"5 ;ext=1\r\n", max), Ok(ChunkLine::Size { size: 5, len: 10 }));
        assert_eq!(chunk_size(b"A\r\n", max), Ok(ChunkLine::Size { size: 10, len: 3 }));
        assert_eq!(chunk_size(b"00000000000000000000001\r\n", max), Ok(ChunkLine::Size { size: 1, len: 25 }));
        assert_eq!(chunk_size(b"0\r\n\r\n", max), Ok(ChunkLine::Size { size: 0, len: 3 }));
        assert_eq!(chunk_size(b"5;ext", max), Ok(ChunkLine::Partial));
        assert_eq!(chunk_size(b"", max), Ok(ChunkLine::Partial));
        assert_eq!(chunk_size(b"zz\r\n", max), Err(Refusal::BadRequest));
        assert_eq!(chunk_size(b"\r\n", max), Err(Refusal::BadRequest));
        assert_eq!(chunk_size(b"5x\r\n", max), Err(Refusal::BadRequest));
        assert_eq!(chunk_size(b"5\n", max), Err(Refusal::BadRequest));
        assert_eq!(chunk_size(&[b';'; 2000], max), Err(Refusal::BadRequest), "a line that never ends");
        // A size beyond what the body may still hold is refused as soon as
        // it is read, before its data, even before its line ends.
        assert_eq!(chunk_size(b"fffffffffffffff\r\n", max), Err(Refusal::TooLarge));
        assert_eq!(chunk_size(b"fffffffffffffffffffffffffff\r\n", max), Err(Refusal::TooLarge));
        assert_eq!(chunk_size(b"fffffffffffffff", max), Err(Refusal::TooLarge));
        assert_eq!(chunk_size(b"100001\r\n", max), Err(Refusal::TooLarge));
        assert_eq!(chunk_size(b"100000\r\n", max), Ok(ChunkLine::Size { size: max, len: 8 }));
        assert_eq!(chunk_size(b"1\r\n", 0), Err(Refusal::TooLarge));
    }

    #[test]
    fn trailer_sections() {
        assert_eq!(trailers(b"\r\n"), Ok(Some(2)));
        assert_eq!(trailers(b"\n"), Ok(Some(1)));
        assert_eq!(trailers(b"X-T: 1\r\n\r\nGET"), Ok(Some(10)));
        assert_eq!(trailers(b"X-T: 1\r\n"), Ok(None));
        assert_eq!(trailers(b""), Ok(None));
        let long = [b"X: ".as_slice(), &[b'a'; 9000]].concat();
        assert_eq!(trailers(&long), Err(Refusal::HeadersTooLarge));
        let many: Vec<u8> = (0..2000).flat_map(|_| *b"X: 1\r\n").collect();
        assert_eq!(trailers(&many), Err(Refusal::HeadersTooLarge));
    }

    /// Random bytes, and random mutations of good heads, never panic the
    /// parsers (the panic contract in the module doc).
    #[test]
    fn no_input_panics() {
        let good: [&[u8]; 3] = [
            b"GET /a?b HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"\r\nGET / HTTP/1.0\r\n\r\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let limits = Limits { max_uri: 64, max_header_bytes: 256, max_headers: 8, ..Limits::default() };
        for i in 0..20_000 {
            let mut text: Vec<u8> =
                if i % 4 == 0 { (0..next() % 300).map(|_| next() as u8).collect() } else { good[i % 3].to_vec() };
            for _ in 0..next() % 6 {
                if text.is_empty() {
                    break;
                }
                let at = (next() as usize) % text.len();
                match next() % 4 {
                    0 => text[at] = next() as u8,
                    1 => drop(text.remove(at)),
                    2 => text.insert(at, b"\r\n :;[]%0fF"[(next() % 11) as usize]),
                    _ => text.truncate(at),
                }
            }
            let _ = parse(&text, &limits, peer());
            let _ = parse(&text, &Limits::default(), peer());
            for from in [0, text.len() / 3, text.len() / 2] {
                let _ = chunk_size(&text[from..], next() % 100_000);
                let _ = trailers(&text[from..]);
            }
        }
    }
}
