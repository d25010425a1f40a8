//! Messages a client sends: decoded where the proxy must understand them (to route and to rename
//! prepared statements), and re-encoded only when a name changes.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::Frame;
use super::read::{BodyReader, DecodeError};

pub const QUERY: u8 = b'Q';
pub const PARSE: u8 = b'P';
pub const BIND: u8 = b'B';
pub const DESCRIBE: u8 = b'D';
pub const EXECUTE: u8 = b'E';
pub const CLOSE: u8 = b'C';
pub const SYNC: u8 = b'S';
pub const FLUSH: u8 = b'H';
pub const TERMINATE: u8 = b'X';
pub const PASSWORD: u8 = b'p';
pub const COPY_DATA: u8 = b'd';
pub const COPY_DONE: u8 = b'c';
pub const COPY_FAIL: u8 = b'f';
pub const FUNCTION_CALL: u8 = b'F';

/// The SQL text of a simple Query message.
pub fn decode_query(body: &[u8]) -> Result<&str, DecodeError> {
    let mut r = BodyReader::new(body, "Query");
    let sql = r.cstr_bytes()?;
    std::str::from_utf8(sql).map_err(|_| DecodeError {
        message: "Query",
        detail: "invalid UTF-8",
    })
}

/// A Parse's statement name and query text, read in place: the questions a batch asks of every
/// Parse before it is run (does it need keys, a rewrite, a subquery run first?) cost no copies.
/// Only the two texts are checked; `Parse::decode` still judges the whole message.
pub fn parse_texts(body: &[u8]) -> Result<(&str, &str), DecodeError> {
    let mut r = BodyReader::new(body, "Parse");
    let invalid = |_| DecodeError {
        message: "Parse",
        detail: "invalid UTF-8",
    };
    let name = std::str::from_utf8(r.cstr_bytes()?).map_err(invalid)?;
    let query = std::str::from_utf8(r.cstr_bytes()?).map_err(invalid)?;
    Ok((name, query))
}

/// A Parse message: prepare `query` as statement `name` ("" is the unnamed statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: String,
    pub query: String,
    pub param_types: Vec<u32>,
}

impl Parse {
    pub fn decode(body: &[u8]) -> Result<Parse, DecodeError> {
        let mut r = BodyReader::new(body, "Parse");
        let name = r.cstr()?;
        let query = r.cstr()?;
        let n = r.i16()?;
        if n < 0 {
            return Err(DecodeError {
                message: "Parse",
                detail: "negative parameter count",
            });
        }
        let mut param_types = Vec::with_capacity(n as usize);
        for _ in 0..n {
            param_types.push(r.u32()?);
        }
        r.finish()?;
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }

    pub fn encode(&self) -> Frame {
        let mut b = BytesMut::with_capacity(self.name.len() + self.query.len() + 8);
        put_cstr(&mut b, &self.name);
        put_cstr(&mut b, &self.query);
        b.put_i16(self.param_types.len() as i16);
        for t in &self.param_types {
            b.put_u32(*t);
        }
        Frame::new(PARSE, b.freeze())
    }
}

/// A Bind message. Parameter values stay as slices of the original body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: String,
    pub statement: String,
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<i16>,
}

impl Bind {
    pub fn decode(body: &Bytes) -> Result<Bind, DecodeError> {
        let mut r = BodyReader::new(body, "Bind");
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let param_formats = read_i16_list(&mut r)?;
        let n = r.i16()?;
        if n < 0 {
            return Err(DecodeError {
                message: "Bind",
                detail: "negative parameter count",
            });
        }
        let mut params = Vec::with_capacity(n as usize);
        for _ in 0..n {
            params.push(r.value(body)?);
        }
        let result_formats = read_i16_list(&mut r)?;
        r.finish()?;
        if param_formats.len() > 1 && param_formats.len() != params.len() {
            return Err(DecodeError {
                message: "Bind",
                detail: "parameter format count does not match parameter count",
            });
        }
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format code (0 text, 1 binary) of parameter `i`.
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(i).copied().unwrap_or(0),
        }
    }

    pub fn encode(&self) -> Frame {
        self.encode_for(&self.statement)
    }

    /// The Bind as sent for the server-side statement `statement`: the proxy renames client
    /// statements, and this spares cloning the values to do it.
    pub fn encode_for(&self, statement: &str) -> Frame {
        let values: usize = self
            .params
            .iter()
            .map(|p| 4 + p.as_ref().map_or(0, |v| v.len()))
            .sum();
        let len = self.portal.len()
            + statement.len()
            + 8
            + 2 * (self.param_formats.len() + self.result_formats.len())
            + values;
        let mut b = BytesMut::with_capacity(len);
        put_cstr(&mut b, &self.portal);
        put_cstr(&mut b, statement);
        b.put_i16(self.param_formats.len() as i16);
        for f in &self.param_formats {
            b.put_i16(*f);
        }
        b.put_i16(self.params.len() as i16);
        for p in &self.params {
            match p {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(self.result_formats.len() as i16);
        for f in &self.result_formats {
            b.put_i16(*f);
        }
        Frame::new(BIND, b.freeze())
    }
}

fn read_i16_list(r: &mut BodyReader<'_>) -> Result<Vec<i16>, DecodeError> {
    let n = r.i16()?;
    if n < 0 {
        return Err(DecodeError {
            message: "Bind",
            detail: "negative format count",
        });
    }
    (0..n).map(|_| r.i16()).collect()
}

/// Describe or Close: a kind byte (`S` statement, `P` portal) and a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: u8,
    pub name: String,
}

impl Target {
    pub fn decode(body: &[u8], message: &'static str) -> Result<Target, DecodeError> {
        let mut r = BodyReader::new(body, message);
        let kind = r.u8()?;
        if kind != b'S' && kind != b'P' {
            return Err(DecodeError {
                message,
                detail: "kind must be 'S' or 'P'",
            });
        }
        let name = r.cstr()?;
        r.finish()?;
        Ok(Target { kind, name })
    }

    pub fn encode(&self, tag: u8) -> Frame {
        // The unnamed statement or portal (nearly every Describe a driver sends): a constant
        // body, nothing allocated.
        if self.name.is_empty() {
            match self.kind {
                b'P' => return Frame::new(tag, Bytes::from_static(b"P\0")),
                b'S' => return Frame::new(tag, Bytes::from_static(b"S\0")),
                _ => {}
            }
        }
        let mut b = BytesMut::with_capacity(self.name.len() + 2);
        b.put_u8(self.kind);
        put_cstr(&mut b, &self.name);
        Frame::new(tag, b.freeze())
    }
}

/// An Execute message: run `portal`, returning at most `max_rows` rows (0 = all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub portal: String,
    pub max_rows: i32,
}

impl Execute {
    pub fn decode(body: &[u8]) -> Result<Execute, DecodeError> {
        let mut r = BodyReader::new(body, "Execute");
        let portal = r.cstr()?;
        let max_rows = r.i32()?;
        r.finish()?;
        Ok(Execute { portal, max_rows })
    }

    pub fn encode(&self) -> Frame {
        // The unnamed portal, every row (nearly every Execute a driver sends): a constant body,
        // nothing allocated.
        if self.portal.is_empty() && self.max_rows == 0 {
            return Frame::new(EXECUTE, Bytes::from_static(&[0, 0, 0, 0, 0]));
        }
        let mut b = BytesMut::with_capacity(self.portal.len() + 5);
        put_cstr(&mut b, &self.portal);
        b.put_i32(self.max_rows);
        Frame::new(EXECUTE, b.freeze())
    }
}

/// Encodes a simple Query message.
pub fn query(sql: &str) -> Frame {
    let mut b = BytesMut::with_capacity(sql.len() + 1);
    put_cstr(&mut b, sql);
    Frame::new(QUERY, b.freeze())
}

/// A Sync message.
pub fn sync() -> Frame {
    Frame::new(SYNC, Bytes::new())
}

pub(crate) fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_portal_and_statement_messages_encode_as_any_other() {
        let body = |name: &str, kind: u8| {
            let mut b = BytesMut::new();
            b.put_u8(kind);
            put_cstr(&mut b, name);
            b.freeze()
        };
        for kind in [b'S', b'P'] {
            for name in ["", "p1"] {
                let t = Target {
                    kind,
                    name: name.to_string(),
                };
                let frame = t.encode(DESCRIBE);
                assert_eq!((frame.tag, frame.body), (DESCRIBE, body(name, kind)));
                assert_eq!(Target::decode(&t.encode(CLOSE).body, "Close").unwrap(), t);
            }
        }
        for (portal, max_rows) in [("", 0), ("", 10), ("c1", 0)] {
            let e = Execute {
                portal: portal.to_string(),
                max_rows,
            };
            let mut b = BytesMut::new();
            put_cstr(&mut b, portal);
            b.put_i32(max_rows);
            let frame = e.encode();
            assert_eq!((frame.tag, frame.body), (EXECUTE, b.freeze()));
            assert_eq!(Execute::decode(&e.encode().body).unwrap(), e);
        }
    }

    #[test]
    fn parse_and_bind_round_trip() {
        let p = Parse {
            name: "s1".into(),
            query: "select $1".into(),
            param_types: vec![20],
        };
        assert_eq!(Parse::decode(&p.encode().body).unwrap(), p);
        let b = Bind {
            portal: "".into(),
            statement: "s1".into(),
            param_formats: vec![1],
            params: vec![Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 7])), None],
            result_formats: vec![],
        };
        let enc = b.encode();
        assert_eq!(Bind::decode(&enc.body).unwrap(), b);
        assert_eq!(b.param_format(1), 1);
    }

    #[test]
    fn a_parses_texts_are_read_in_place() {
        let p = Parse {
            name: "s1".into(),
            query: "select $1".into(),
            param_types: vec![20],
        };
        assert_eq!(parse_texts(&p.encode().body), Ok(("s1", "select $1")));
        assert!(parse_texts(b"s1\0select").is_err());
        assert!(parse_texts(b"s1\0\xff\0\0\0").is_err());
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        let p = Parse {
            name: "s1".into(),
            query: "select 1".into(),
            param_types: vec![20, 23],
        }
        .encode();
        for cut in 0..p.body.len() {
            assert!(Parse::decode(&p.body[..cut]).is_err());
        }
        let b = Bind {
            portal: "p".into(),
            statement: "s".into(),
            param_formats: vec![0],
            params: vec![Some(Bytes::from_static(b"42"))],
            result_formats: vec![1],
        }
        .encode();
        for cut in 0..b.body.len() {
            assert!(Bind::decode(&b.body.slice(..cut)).is_err());
        }
        assert!(Target::decode(b"Xname\0", "Describe").is_err());
        assert!(Execute::decode(b"p\0\0\0").is_err());
    }
}
