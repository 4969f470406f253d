//! Protocol Buffers' wire format, as much as containerd's shim API needs:
//! varints, length-delimited fields and fixed-width fields skipped. The
//! messages are few and small (a task's id, paths, a pid, an exit
//! status), so they are written and read by hand here, field number by
//! field number as containerd's `.proto` files give them, rather than
//! generated: the shim that speaks them serves every container of a
//! namespace and should cost little memory.
//!
//! Reading is where a hostile or broken peer is met: every length is
//! checked against what is left, varints are at most ten bytes, and an
//! unknown field is skipped, as Protocol Buffers requires.

/// A field's wire type.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A message being written.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    fn key(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.buf, (u64::from(field) << 3) | u64::from(wire));
    }

    /// A varint field (`uint32`, `uint64`, `int64`, `bool`, an enum);
    /// zero, the default, is not written, as proto3 does.
    pub fn uint(&mut self, field: u32, v: u64) -> &mut Writer {
        if v != 0 {
            self.key(field, VARINT);
            put_varint(&mut self.buf, v);
        }
        self
    }

    /// An `int32` or `int64` field: negative values are ten-byte varints.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Writer {
        self.uint(field, v as u64)
    }

    pub fn bool(&mut self, field: u32, v: bool) -> &mut Writer {
        self.uint(field, u64::from(v))
    }

    /// A `bytes` field; empty is not written.
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Writer {
        if !v.is_empty() {
            self.key(field, LEN);
            put_varint(&mut self.buf, v.len() as u64);
            self.buf.extend_from_slice(v);
        }
        self
    }

    pub fn string(&mut self, field: u32, v: &str) -> &mut Writer {
        self.bytes(field, v.as_bytes())
    }

    /// A repeated `string` or `bytes` field's element, written even when
    /// empty (it counts).
    pub fn repeated(&mut self, field: u32, v: &[u8]) -> &mut Writer {
        self.key(field, LEN);
        put_varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// An embedded message, written even when empty (a present message
    /// differs from an absent one).
    pub fn message(&mut self, field: u32, m: &Writer) -> &mut Writer {
        self.repeated(field, &m.buf)
    }

    pub fn finish(&self) -> Vec<u8> {
        self.buf.clone()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed protobuf message: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// A field's value as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// A fixed-width field, which no message here uses: skipped.
    Fixed,
}

impl<'a> Value<'a> {
    pub fn uint(self) -> Result<u64, Malformed> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(Malformed("a number field is not a varint")),
        }
    }

    pub fn bytes(self) -> Result<&'a [u8], Malformed> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(Malformed("a string, bytes or message field is not length-delimited")),
        }
    }

    pub fn string(self) -> Result<String, Malformed> {
        std::str::from_utf8(self.bytes()?).map(str::to_owned).map_err(|_| Malformed("a string field is not UTF-8"))
    }
}

/// The fields of a message, in order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(message: &'a [u8]) -> Reader<'a> {
        Reader { rest: message }
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.rest.split_first().ok_or(Malformed("a varint runs past the end"))?;
            self.rest = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed("a varint is longer than ten bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Malformed> {
        if n > self.rest.len() as u64 {
            return Err(Malformed("a field runs past the end"));
        }
        let (b, rest) = self.rest.split_at(n as usize);
        self.rest = rest;
        Ok(b)
    }

    /// The next field: its number and value; `None` at the end.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, Malformed> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| Malformed("a field number is too large"))?;
        if field == 0 {
            return Err(Malformed("field number 0"));
        }
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            LEN => {
                let n = self.varint()?;
                Value::Bytes(self.take(n)?)
            }
            FIXED64 => {
                self.take(8)?;
                Value::Fixed
            }
            FIXED32 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(Malformed("an unknown wire type")),
        };
        Ok(Some((field, value)))
    }
}

/// `google.protobuf.Timestamp` {seconds = 1, nanos = 2} of `t`.
pub fn timestamp(t: std::time::SystemTime) -> Writer {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut w = Writer::new();
    w.int(1, d.as_secs() as i64).int(2, i64::from(d.subsec_nanos()));
    w
}

/// `google.protobuf.Any` {type_url = 1, value = 2}.
pub fn any(type_url: &str, value: &Writer) -> Writer {
    let mut w = Writer::new();
    w.string(1, type_url).bytes(2, &value.buf);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written() {
        let mut inner = Writer::new();
        inner.string(1, "overlay").repeated(4, b"lowerdir=/a").repeated(4, b"");
        let mut w = Writer::new();
        w.string(1, "web").uint(3, 300).int(4, -1).bool(5, true).message(6, &inner).uint(7, 0);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.next_field().unwrap(), Some((1, Value::Bytes(b"web"))));
        assert_eq!(r.next_field().unwrap(), Some((3, Value::Varint(300))));
        assert_eq!(r.next_field().unwrap(), Some((4, Value::Varint(u64::MAX))));
        assert_eq!(r.next_field().unwrap(), Some((5, Value::Varint(1))));
        let (6, Value::Bytes(m)) = r.next_field().unwrap().unwrap() else { panic!("no message") };
        // Zero is the default and not written.
        assert_eq!(r.next_field().unwrap(), None);
        let mut r = Reader::new(m);
        assert_eq!(r.next_field().unwrap().unwrap().1.string().unwrap(), "overlay");
        assert_eq!(r.next_field().unwrap(), Some((4, Value::Bytes(b"lowerdir=/a"))));
        assert_eq!(r.next_field().unwrap(), Some((4, Value::Bytes(b""))));
        assert_eq!(r.next_field().unwrap(), None);
    }

    #[test]
    fn a_known_encoding() {
        // Field 1 = 150 is 08 96 01 (the Protocol Buffers documentation's
        // example); field 2 = "testing" is 12 07 74 65 73 74 69 6e 67.
        let mut w = Writer::new();
        w.uint(1, 150).string(2, "testing");
        assert_eq!(w.finish(), b"\x08\x96\x01\x12\x07testing");
    }

    #[test]
    fn malformed_input_is_refused_not_trusted() {
        for bad in [
            &b"\x0a\x05abc"[..],                                 // length past the end
            b"\x08",                                             // varint cut short
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", // eleven-byte varint
            b"\x0b",                                             // wire type 3 (groups)
            b"\x00\x01",                                         // field 0
            b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\x7f",         // huge length
        ] {
            let mut r = Reader::new(bad);
            let mut result = Ok(None);
            for _ in 0..4 {
                result = r.next_field();
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{bad:?} read as {result:?}");
        }
        // Fixed-width fields are skipped.
        let mut r = Reader::new(b"\x09\x01\x02\x03\x04\x05\x06\x07\x08\x15\x01\x02\x03\x04\x18\x01");
        assert_eq!(r.next_field().unwrap(), Some((1, Value::Fixed)));
        assert_eq!(r.next_field().unwrap(), Some((2, Value::Fixed)));
        assert_eq!(r.next_field().unwrap(), Some((3, Value::Varint(1))));
    }
}
