//! ttrpc, the small RPC protocol containerd speaks to its shims over a
//! Unix socket: gRPC's messages without HTTP/2. Each message is a 10-byte
//! header (the payload's length and the stream's id, both big-endian
//! `u32`, then a type byte and a flags byte) and a protobuf payload: a
//! `Request` (service, method, the call's own message, a timeout,
//! metadata) on an odd stream id the client picks, and a `Response`
//! (a `google.rpc.Status`, the reply's message) on the same id. Calls on
//! one connection may be answered out of order; the shim answers a
//! `Wait` only when the task exits.

use std::io::{Read, Write};

use crate::proto::{Malformed, Reader, Writer};

/// The header's size.
pub const HEADER: usize = 10;
/// The largest payload accepted, ttrpc's own limit (4 MiB).
pub const MAX_MESSAGE: u32 = 4 << 20;
/// Message types.
pub const REQUEST: u8 = 1;
pub const RESPONSE: u8 = 2;

/// gRPC status codes used here (google.golang.org/grpc/codes).
pub mod code {
    pub const OK: i32 = 0;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// One message read off a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u32,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Why a connection cannot go on.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// A message larger than [`MAX_MESSAGE`]: the stream cannot be
    /// resynchronised, so the connection is dropped.
    TooLarge(u32),
    Malformed(Malformed),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::TooLarge(n) => write!(f, "a ttrpc message of {n} bytes, over the {MAX_MESSAGE}-byte limit"),
            Error::Malformed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Malformed> for Error {
    fn from(e: Malformed) -> Error {
        Error::Malformed(e)
    }
}

/// Reads one message; `None` at a clean end of the connection.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, Error> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > MAX_MESSAGE {
        return Err(Error::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { stream, kind: h[8], payload }))
}

/// Writes one message as a single `write` where the writer allows, so
/// that writers sharing a connection under a lock never interleave.
pub fn write_frame(w: &mut impl Write, stream: u32, kind: u8, payload: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(payload.len()).ok().filter(|&n| n <= MAX_MESSAGE).ok_or(Error::TooLarge(u32::MAX))?;
    let mut m = Vec::with_capacity(HEADER + payload.len());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&stream.to_be_bytes());
    m.push(kind);
    m.push(0);
    m.extend_from_slice(payload);
    w.write_all(&m)?;
    w.flush()?;
    Ok(())
}

/// A call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub service: String,
    pub method: String,
    pub payload: Vec<u8>,
    pub timeout_nano: i64,
}

impl Request {
    /// `ttrpc.Request`: service = 1, method = 2, payload = 3,
    /// timeout_nano = 4, metadata = 5 (ignored).
    pub fn decode(b: &[u8]) -> Result<Request, Malformed> {
        let mut req = Request::default();
        let mut r = Reader::new(b);
        while let Some((field, v)) = r.next_field()? {
            match field {
                1 => req.service = v.string()?,
                2 => req.method = v.string()?,
                3 => req.payload = v.bytes()?.to_vec(),
                4 => req.timeout_nano = v.uint()? as i64,
                _ => {}
            }
        }
        Ok(req)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.string(1, &self.service).string(2, &self.method).bytes(3, &self.payload).int(4, self.timeout_nano);
        w.into_bytes()
    }
}

/// An answer: the reply's message, or a gRPC status code and message.
pub type Reply = Result<Vec<u8>, (i32, String)>;

/// `ttrpc.Response`: status = 1 (`google.rpc.Status`: code = 1, message
/// = 2), payload = 2.
pub fn encode_response(reply: &Reply) -> Vec<u8> {
    let mut status = Writer::new();
    let mut w = Writer::new();
    match reply {
        Ok(payload) => {
            w.message(1, &status).bytes(2, payload);
        }
        Err((code, message)) => {
            status.int(1, i64::from(*code)).string(2, message);
            w.message(1, &status);
        }
    }
    w.into_bytes()
}

pub fn decode_response(b: &[u8]) -> Result<Reply, Malformed> {
    let (mut code, mut message, mut payload) = (0i32, String::new(), Vec::new());
    let mut r = Reader::new(b);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => {
                let mut s = Reader::new(v.bytes()?);
                while let Some((f, v)) = s.next_field()? {
                    match f {
                        1 => code = v.uint()? as i32,
                        2 => message = v.string()?,
                        _ => {}
                    }
                }
            }
            2 => payload = v.bytes()?.to_vec(),
            _ => {}
        }
    }
    Ok(if code == code::OK { Ok(payload) } else { Err((code, message)) })
}

/// Makes one call on a fresh connection and reads its answer (the shim's
/// events to containerd, a few a task's life).
pub fn call(conn: &mut (impl Read + Write), service: &str, method: &str, payload: Vec<u8>) -> Result<Reply, Error> {
    let req = Request { service: service.into(), method: method.into(), payload, timeout_nano: 0 };
    write_frame(conn, 1, REQUEST, &req.encode())?;
    loop {
        match read_frame(conn)? {
            None => return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Some(f) if f.stream == 1 && f.kind == RESPONSE => return Ok(decode_response(&f.payload)?),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_and_its_answer_round_trip() {
        let req = Request {
            service: "containerd.task.v2.Task".into(),
            method: "State".into(),
            payload: vec![10, 1, b'a'],
            timeout_nano: 5,
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, 3, REQUEST, &req.encode()).unwrap();
        assert_eq!(&wire[..HEADER], &[0, 0, 0, (wire.len() - HEADER) as u8, 0, 0, 0, 3, REQUEST, 0]);
        let f = read_frame(&mut &wire[..]).unwrap().unwrap();
        assert_eq!((f.stream, f.kind), (3, REQUEST));
        assert_eq!(Request::decode(&f.payload).unwrap(), req);
        for reply in [Ok(vec![8, 42]), Ok(vec![]), Err((code::NOT_FOUND, "no task web".to_string()))] {
            assert_eq!(decode_response(&encode_response(&reply)).unwrap(), reply);
        }
    }

    #[test]
    fn oversized_and_truncated_messages_are_refused() {
        let mut huge = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, REQUEST, 0];
        assert!(matches!(read_frame(&mut &huge[..]), Err(Error::TooLarge(_))));
        huge[..4].copy_from_slice(&100u32.to_be_bytes());
        huge.extend_from_slice(&[0; 10]);
        assert!(matches!(read_frame(&mut &huge[..]), Err(Error::Io(_))));
        assert!(matches!(read_frame(&mut &huge[..5]), Err(Error::Io(_))));
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
    }
}
