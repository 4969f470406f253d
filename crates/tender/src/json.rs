//! A small JSON reader that remembers the line of every value, so that
//! `solo5-elftool` can point at the line of a mistake as Solo5's does.
//!
//! Objects keep their keys in order, duplicates included. The parser never
//! panics; deeply nested input is refused rather than recursed into.

/// A JSON value with the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// 1-based line number.
    pub line: usize,
    /// The value.
    pub kind: Kind,
}

/// The kinds of JSON values.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number without fraction or exponent.
    Int(i64),
    /// Any other number.
    Real(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Value>),
    /// An object: keys and values in order.
    Object(Vec<(String, Value)>),
}

impl Kind {
    /// The type name Solo5's elftool prints.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "NULL",
            Kind::Bool(_) => "BOOLEAN",
            Kind::Int(_) => "INTEGER",
            Kind::Real(_) => "REAL",
            Kind::Str(_) => "STRING",
            Kind::Array(_) => "ARRAY",
            Kind::Object(_) => "OBJECT",
        }
    }
}

/// A syntax error and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub what: &'static str,
}

const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

/// Parses a whole document.
pub fn parse(text: &str) -> Result<Value, ParseError> {
    let mut p = Parser { s: text.as_bytes(), i: 0, line: 1 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters after the document"));
    }
    Ok(v)
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError { line: self.line, what }
    }

    fn ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.ws();
        let line = self.line;
        let kind = match self.s.get(self.i) {
            None => return Err(self.err("unexpected end of input")),
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if !self.eat(b"}") {
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.ws();
                        if !self.eat(b":") {
                            return Err(self.err("expected ':' after an object key"));
                        }
                        let v = self.value(depth + 1)?;
                        members.push((key, v));
                        self.ws();
                        if self.eat(b",") {
                            continue;
                        }
                        if self.eat(b"}") {
                            break;
                        }
                        return Err(self.err("expected ',' or '}' in an object"));
                    }
                }
                Kind::Object(members)
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if !self.eat(b"]") {
                    loop {
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        if self.eat(b",") {
                            continue;
                        }
                        if self.eat(b"]") {
                            break;
                        }
                        return Err(self.err("expected ',' or ']' in an array"));
                    }
                }
                Kind::Array(items)
            }
            Some(b'"') => Kind::Str(self.string()?),
            Some(b't') if self.eat(b"true") => Kind::Bool(true),
            Some(b'f') if self.eat(b"false") => Kind::Bool(false),
            Some(b'n') if self.eat(b"null") => Kind::Null,
            Some(c) if *c == b'-' || c.is_ascii_digit() => self.number()?,
            Some(_) => return Err(self.err("unexpected character")),
        };
        Ok(Value { line, kind })
    }

    fn string(&mut self) -> Result<String, ParseError> {
        if !self.eat(b"\"") {
            return Err(self.err("expected a string"));
        }
        let mut out = String::new();
        loop {
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err("bad \\u escape"))?;
                            let code = std::str::from_utf8(hex)
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.err("bad \\u escape"))?;
                            self.i += 4;
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return Err(self.err("bad escape in a string")),
                    });
                }
                b'\n' => return Err(self.err("newline in a string")),
                _ => {
                    // Copy a whole UTF-8 sequence; the input is a &str.
                    let start = self.i - 1;
                    let len = match c {
                        0xF0..=0xF7 => 4,
                        0xE0..=0xEF => 3,
                        0xC0..=0xDF => 2,
                        _ => 1,
                    };
                    let end = (start + len).min(self.s.len());
                    out.push_str(std::str::from_utf8(&self.s[start..end]).unwrap_or("\u{fffd}"));
                    self.i = end;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Kind, ParseError> {
        let start = self.i;
        let mut real = false;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => real = true,
                _ => break,
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("bad number"))?;
        if !real && let Ok(v) = text.parse::<i64>() {
            return Ok(Kind::Int(v));
        }
        text.parse::<f64>().map(Kind::Real).map_err(|_| self.err("bad number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_lines() {
        let v = parse("{\n \"a\": [1, 2.5, \"x\\n\"],\n \"b\": {\"c\": null, \"d\": true}\n}").unwrap();
        let Kind::Object(m) = &v.kind else { panic!() };
        assert_eq!(m[0].0, "a");
        assert_eq!(m[0].1.line, 2);
        assert_eq!(m[1].1.line, 3);
        let Kind::Array(a) = &m[0].1.kind else { panic!() };
        assert_eq!(a[0].kind, Kind::Int(1));
        assert_eq!(a[1].kind, Kind::Real(2.5));
        assert_eq!(a[2].kind, Kind::Str("x\n".into()));
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        for bad in ["", "{", "[1,", "{\"a\" 1}", "\"abc", "tru", "{\"a\":1} x", "[1 2]", "-", "\"\\q\"", "\"\\u12\""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(10_000);
        assert_eq!(parse(&deep).unwrap_err().what, "nested too deeply");
        assert_eq!(parse("{\n\n  x}").unwrap_err().line, 3);
    }
}
