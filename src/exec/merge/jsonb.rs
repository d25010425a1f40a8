//! `jsonb` values as Postgres orders them (`compareJsonbContainers`): both values are walked as
//! the token streams Postgres's iterator yields (a container's start with its size, object keys
//! in storage order, scalars, ends) and the first difference decides. A container's size counts
//! before its contents (`[9] < [1, 1]`), a top-level scalar sorts before a one-element array and
//! after an empty one, kinds order null < string < number < boolean < array < object, strings
//! (keys too) compare in the database collation, numbers as numeric (`1.0` equals `1.00`).
//! Read from the text Postgres writes (keys already in storage order) or the binary form
//! (a version byte, then that text).

use std::cmp::Ordering;

use super::collate::TextOrder;
use super::numeric::Numeric;
use super::MergeError;

/// Nesting deeper than this is refused rather than walked (Postgres allows deeper, rarely seen).
const MAX_DEPTH: usize = 256;

/// One token of a jsonb value, as Postgres's iterator yields it.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// An array's start; `raw` for the pseudo-array holding a top-level scalar.
    BeginArray {
        raw: bool,
        len: usize,
    },
    BeginObject {
        len: usize,
    },
    Key(Vec<u8>),
    Scalar(Scalar),
    End,
}

/// A scalar inside a jsonb value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    String(Vec<u8>),
    Number(Numeric),
    Bool(bool),
}

/// Postgres's `JsonbValue` type codes, which order values of different kinds.
fn kind(t: &Token) -> u8 {
    match t {
        Token::Scalar(Scalar::Null) => 0,
        Token::Key(_) | Token::Scalar(Scalar::String(_)) => 1,
        Token::Scalar(Scalar::Number(_)) => 2,
        Token::Scalar(Scalar::Bool(_)) => 3,
        Token::BeginArray { .. } => 0x10,
        Token::BeginObject { .. } => 0x11,
        Token::End => 0xff,
    }
}

/// The token kinds Postgres's iterator distinguishes (`WJB_*`): values of one kind compare by
/// content, of different kinds by [`kind`].
fn step(t: &Token) -> u8 {
    match t {
        Token::BeginArray { .. } => 0,
        Token::BeginObject { .. } => 1,
        Token::Key(_) => 2,
        Token::Scalar(_) => 3,
        Token::End => 4,
    }
}

/// `compareJsonbContainers` over two token streams; strings in `text`'s order.
pub fn compare(a: &[Token], b: &[Token], text: &TextOrder) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = if step(x) != step(y) {
            kind(x).cmp(&kind(y))
        } else {
            match (x, y) {
                (Token::End, Token::End) => Ordering::Equal,
                (Token::Key(p), Token::Key(q)) => text.compare(p, q),
                (Token::Scalar(p), Token::Scalar(q)) => compare_scalars(p, q, text),
                (
                    Token::BeginArray { raw: r1, len: n1 },
                    Token::BeginArray { raw: r2, len: n2 },
                ) => {
                    // The size overrides the raw-scalar rule: `[]` sorts before a scalar.
                    if n1 != n2 {
                        n1.cmp(n2)
                    } else if r1 != r2 {
                        if *r1 {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    } else {
                        Ordering::Equal
                    }
                }
                (Token::BeginObject { len: n1 }, Token::BeginObject { len: n2 }) => n1.cmp(n2),
                _ => kind(x).cmp(&kind(y)),
            }
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

fn compare_scalars(a: &Scalar, b: &Scalar, text: &TextOrder) -> Ordering {
    match (a, b) {
        (Scalar::Null, Scalar::Null) => Ordering::Equal,
        (Scalar::String(p), Scalar::String(q)) => text.compare(p, q),
        (Scalar::Number(p), Scalar::Number(q)) => p.cmp_total(q),
        (Scalar::Bool(p), Scalar::Bool(q)) => p.cmp(q),
        (p, q) => kind(&Token::Scalar(p.clone())).cmp(&kind(&Token::Scalar(q.clone()))),
    }
}

/// Bytes equal exactly for values jsonb's `=` calls equal (strings bytewise, which a
/// deterministic collation's equality is; numbers by value).
pub fn canonical_key(tokens: &[Token]) -> Vec<u8> {
    let mut v = Vec::new();
    for t in tokens {
        v.push(step(t));
        v.push(kind(t));
        match t {
            Token::BeginArray { raw, len } => {
                v.push(u8::from(*raw));
                v.extend_from_slice(&(*len as u64).to_be_bytes());
            }
            Token::BeginObject { len } => v.extend_from_slice(&(*len as u64).to_be_bytes()),
            Token::Key(s) | Token::Scalar(Scalar::String(s)) => {
                v.extend_from_slice(&(s.len() as u64).to_be_bytes());
                v.extend_from_slice(s);
            }
            Token::Scalar(Scalar::Number(n)) => {
                let key = n.canonical_key();
                v.extend_from_slice(&(key.len() as u64).to_be_bytes());
                v.extend_from_slice(&key);
            }
            Token::Scalar(Scalar::Bool(b)) => v.push(u8::from(*b)),
            Token::Scalar(Scalar::Null) | Token::End => {}
        }
    }
    v
}

fn invalid(text: &[u8], why: &str) -> MergeError {
    MergeError::InvalidValue {
        type_name: "jsonb",
        detail: format!("{:?}: {why}", String::from_utf8_lossy(text)),
    }
}

/// The binary form: version 1, then the text.
pub fn decode_binary(b: &[u8]) -> Result<Vec<Token>, MergeError> {
    match b.split_first() {
        Some((1, text)) => parse_text(text),
        _ => Err(invalid(b, "not jsonb binary version 1")),
    }
}

/// The text Postgres writes for a jsonb value, as its token stream.
pub fn parse_text(b: &[u8]) -> Result<Vec<Token>, MergeError> {
    let mut p = Parser { s: b, pos: 0 };
    let mut out = Vec::new();
    p.skip_space();
    if matches!(p.peek(), Some(b'[' | b'{')) {
        p.value(&mut out, 0)?;
    } else {
        out.push(Token::BeginArray { raw: true, len: 1 });
        out.push(Token::Scalar(p.scalar()?));
        out.push(Token::End);
    }
    p.skip_space();
    if p.pos != b.len() {
        return Err(invalid(b, "text after the value"));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bad(&self, why: &str) -> MergeError {
        invalid(self.s, why)
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), MergeError> {
        self.skip_space();
        if self.peek() != Some(c) {
            return Err(self.bad("malformed"));
        }
        self.pos += 1;
        Ok(())
    }

    /// A container or scalar inside a container.
    fn value(&mut self, out: &mut Vec<Token>, depth: usize) -> Result<(), MergeError> {
        if depth > MAX_DEPTH {
            return Err(self.bad("nested too deeply"));
        }
        self.skip_space();
        match self.peek() {
            Some(b'[') => {
                self.pos += 1;
                let at = out.len();
                out.push(Token::BeginArray { raw: false, len: 0 });
                let mut len = 0;
                self.skip_space();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                } else {
                    loop {
                        self.value(out, depth + 1)?;
                        len += 1;
                        self.skip_space();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.bad("malformed array")),
                        }
                    }
                }
                out[at] = Token::BeginArray { raw: false, len };
                out.push(Token::End);
            }
            Some(b'{') => {
                self.pos += 1;
                let at = out.len();
                out.push(Token::BeginObject { len: 0 });
                let mut len = 0;
                self.skip_space();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        self.skip_space();
                        let key = self.string()?;
                        out.push(Token::Key(key));
                        self.expect(b':')?;
                        self.value(out, depth + 1)?;
                        len += 1;
                        self.skip_space();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b'}') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.bad("malformed object")),
                        }
                    }
                }
                out[at] = Token::BeginObject { len };
                out.push(Token::End);
            }
            _ => out.push(Token::Scalar(self.scalar()?)),
        }
        Ok(())
    }

    fn scalar(&mut self) -> Result<Scalar, MergeError> {
        self.skip_space();
        let rest = &self.s[self.pos..];
        for (word, value) in [
            (&b"null"[..], Scalar::Null),
            (b"true", Scalar::Bool(true)),
            (b"false", Scalar::Bool(false)),
        ] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        if self.peek() == Some(b'"') {
            return Ok(Scalar::String(self.string()?));
        }
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.bad("not a JSON value"));
        }
        Numeric::parse_text(&self.s[start..self.pos]).map(Scalar::Number)
    }

    /// A JSON string with its escapes resolved, as the UTF-8 bytes Postgres stores.
    fn string(&mut self) -> Result<Vec<u8>, MergeError> {
        if self.peek() != Some(b'"') {
            return Err(self.bad("expected a string"));
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or_else(|| self.bad("unterminated string"))?;
            self.pos += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let e = self.peek().ok_or_else(|| self.bad("unterminated escape"))?;
                    self.pos += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&unit) {
                                // A surrogate pair: `\ud83d\ude00`.
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.bad("lone surrogate"));
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&low) {
                                    return Err(self.bad("lone surrogate"));
                                }
                                0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                            } else {
                                unit
                            };
                            let ch = char::from_u32(code).ok_or_else(|| self.bad("bad \\u"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.bad("unknown escape")),
                    }
                }
                _ => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, MergeError> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.bad("bad \\u escape"))?;
        self.pos += 4;
        Ok(digits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Vec<Token> {
        parse_text(s.as_bytes()).unwrap()
    }

    /// In Postgres 15's ORDER BY order (`SELECT x::jsonb … ORDER BY 1`, C collation).
    #[test]
    fn orders_as_compare_jsonb_containers() {
        let sorted = [
            "[]",
            "null",
            "\"\"",
            "\"a\"",
            "\"b\"",
            "-1",
            "1.0",
            "2",
            "false",
            "true",
            "[null]",
            "[\"z\"]",
            "[1]",
            "[true]",
            "[[]]",
            "[{}]",
            "[1, 1]",
            "[9, \"a\"]",
            "{}",
            "{\"a\": 2}",
            "{\"b\": 1}",
            "{\"a\": [1], \"b\": 0}",
            // Keys as Postgres writes them: shorter keys first.
            "{\"b\": 0, \"aa\": 1}",
        ];
        let mut shuffled: Vec<Vec<Token>> = sorted.iter().rev().map(|s| j(s)).collect();
        shuffled.sort_by(|a, b| compare(a, b, &TextOrder::Bytewise));
        let want: Vec<Vec<Token>> = sorted.iter().map(|s| j(s)).collect();
        assert_eq!(shuffled, want);
    }

    #[test]
    fn equal_values_share_a_key() {
        assert_eq!(canonical_key(&j("1.0")), canonical_key(&j("1.00")));
        assert_ne!(canonical_key(&j("[1]")), canonical_key(&j("1")));
        assert_eq!(
            compare(
                &j("{\"a\": 1.50}"),
                &j("{\"a\": 1.5}"),
                &TextOrder::Bytewise
            ),
            Ordering::Equal
        );
    }

    #[test]
    fn strings_escapes_and_binary() {
        assert_eq!(
            j(r#""a\"b\\c\n\u00e9\ud83d\ude00""#),
            j("\"a\\\"b\\\\c\\n\u{e9}\u{1f600}\"")
        );
        let mut bin = vec![1u8];
        bin.extend_from_slice(br#"{"k": [1, "x"]}"#);
        assert_eq!(decode_binary(&bin).unwrap(), j(r#"{"k": [1, "x"]}"#));
        for bad in ["", "[1,", "{\"a\" 1}", "tru", "\"x", "[1] 2", "\"\\ud800\""] {
            assert!(parse_text(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(decode_binary(b"\x02{}").is_err());
    }
}
