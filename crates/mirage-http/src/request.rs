//! Requests: the head parsed by httparse, checked against the limits, and
//! the body read by its framing (RFC 9112).

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

/// Whether the request line (the first non-empty line) of `buf` names a
/// version we do not speak (`HTTP/2.0`, `HTTP/1.2`): 505 rather than 400.
fn is_other_version(buf: &[u8]) -> bool {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(version) = line.rsplit(|&b| b == b' ').next() else { return false };
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
            if line_end.unwrap_or(buf.len()) > limits.max_uri + 32 {
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
    };
    let framing = framing(&request, limits)?;
    if version == 1 && request.header("host").is_none() {
        // RFC 9112 section 3.2: an HTTP/1.1 request without Host is refused.
        return Err(Refusal::BadRequest);
    }
    Ok(Head::Complete { request, len, framing })
}

/// The framing of the body (RFC 9112 section 6.3), refusing what could
/// be read two ways: both fields, or Content-Length values that differ.
fn framing(request: &Request, limits: &crate::Limits) -> Result<Framing, Refusal> {
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

/// One step of decoding a chunked body from `buf`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// More bytes are needed.
    Partial,
    /// `len` bytes of framing consumed, carrying `data` (`start..end` of
    /// `buf`); an empty range is the last chunk, trailers included.
    Data { start: usize, end: usize, len: usize, last: bool },
}

/// Decodes the chunk at the start of `buf` (RFC 9112 section 7.1).
pub(crate) fn chunk(buf: &[u8]) -> Result<Chunk, Refusal> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > 1024 { Err(Refusal::BadRequest) } else { Ok(Chunk::Partial) };
    };
    let line = buf[..nl].strip_suffix(b"\r").ok_or(Refusal::BadRequest)?;
    let size_text = line.split(|&b| b == b';').next().unwrap_or(b"");
    let size_text = core::str::from_utf8(size_text).map_err(|_| Refusal::BadRequest)?.trim_end_matches([' ', '\t']);
    if size_text.is_empty() || size_text.len() > 15 || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::BadRequest);
    }
    let size = usize::from_str_radix(size_text, 16).map_err(|_| Refusal::BadRequest)?;
    let start = nl + 1;
    if size == 0 {
        // Trailer fields until an empty line; they are read and dropped.
        let mut at = start;
        loop {
            let Some(rel) = buf[at..].iter().position(|&b| b == b'\n') else {
                return if buf.len() - start > 8192 { Err(Refusal::HeadersTooLarge) } else { Ok(Chunk::Partial) };
            };
            let line = &buf[at..at + rel];
            at += rel + 1;
            if line == b"\r" || line.is_empty() {
                return Ok(Chunk::Data { start, end: start, len: at, last: true });
            }
        }
    }
    let end = start.checked_add(size).ok_or(Refusal::TooLarge)?;
    if buf.len() < end + 2 {
        return Ok(Chunk::Partial);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(Refusal::BadRequest);
    }
    Ok(Chunk::Data { start, end, len: end + 2, last: false })
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
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(400));
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
    fn chunks() {
        assert_eq!(chunk(b"5\r\nhello\r\n"), Ok(Chunk::Data { start: 3, end: 8, len: 10, last: false }));
        assert_eq!(chunk(b"5;ext=1\r\nhel"), Ok(Chunk::Partial));
        assert_eq!(chunk(b"0\r\n\r\n"), Ok(Chunk::Data { start: 3, end: 3, len: 5, last: true }));
        assert_eq!(chunk(b"0\r\nX-T: 1\r\n\r\n"), Ok(Chunk::Data { start: 3, end: 3, len: 13, last: true }));
        assert_eq!(chunk(b"0\r\nX-T: 1\r\n"), Ok(Chunk::Partial));
        assert_eq!(chunk(b"zz\r\n"), Err(Refusal::BadRequest));
        assert_eq!(chunk(b"5\r\nhelloXX"), Err(Refusal::BadRequest));
        assert_eq!(chunk(b"fffffffffffffffffff\r\n"), Err(Refusal::BadRequest));
    }
}
