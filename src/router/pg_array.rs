//! One-dimensional Postgres arrays as parameter values: decoded into their elements and encoded
//! again, in the text format (`{1,"a b",NULL}`) and the binary format, so an array sent by a
//! client can be split into one array per shard in the format the client used. Pure; malformed
//! input is an error, never a panic. The binary format is read and written with
//! `postgres-protocol`'s array functions.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::types::{array_from_sql, array_to_sql, ArrayDimension};
use postgres_protocol::IsNull;

/// Why an array value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArrayError {
    #[error("malformed array literal: {0}")]
    Text(&'static str),
    #[error("malformed binary array: {0}")]
    Binary(String),
    #[error("a multidimensional array cannot be split between shards")]
    MultiDimensional,
}

/// How an array value was written, so its parts can be written the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayFormat {
    Text,
    /// Binary, with the element type's OID.
    Binary {
        element_type: u32,
    },
}

/// An array's elements (`None` is NULL): text elements as UTF-8 bytes, binary ones as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub format: ArrayFormat,
    pub elements: Vec<Option<Vec<u8>>>,
}

/// Decodes a one-dimensional array sent in text (`binary` false) or binary format.
pub fn decode(value: &[u8], binary: bool) -> Result<Decoded, ArrayError> {
    if binary {
        decode_binary(value)
    } else {
        let text = std::str::from_utf8(value).map_err(|_| ArrayError::Text("not valid UTF-8"))?;
        Ok(Decoded {
            format: ArrayFormat::Text,
            elements: decode_text(text)?
                .into_iter()
                .map(|e| e.map(String::into_bytes))
                .collect(),
        })
    }
}

/// Encodes elements as one array in `format`.
pub fn encode(format: ArrayFormat, elements: &[Option<&[u8]>]) -> Vec<u8> {
    match format {
        ArrayFormat::Text => encode_text(elements).into_bytes(),
        ArrayFormat::Binary { element_type } => encode_binary(element_type, elements),
    }
}

fn decode_binary(value: &[u8]) -> Result<Decoded, ArrayError> {
    let bad = |e: Box<dyn std::error::Error + Sync + Send>| ArrayError::Binary(e.to_string());
    let array = array_from_sql(value).map_err(bad)?;
    let dims: Vec<ArrayDimension> = array.dimensions().collect().map_err(bad)?;
    if dims.len() > 1 {
        return Err(ArrayError::MultiDimensional);
    }
    let elements: Vec<Option<Vec<u8>>> = array
        .values()
        .map(|v| Ok(v.map(<[u8]>::to_vec)))
        .collect()
        .map_err(bad)?;
    Ok(Decoded {
        format: ArrayFormat::Binary {
            element_type: array.element_type(),
        },
        elements,
    })
}

fn encode_binary(element_type: u32, elements: &[Option<&[u8]>]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let dims = (!elements.is_empty()).then(|| ArrayDimension {
        len: i32::try_from(elements.len()).unwrap_or(i32::MAX),
        lower_bound: 1,
    });
    let written = array_to_sql(
        dims,
        element_type,
        elements.iter(),
        |e, buf| match e {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        &mut buf,
    );
    // Only elements over 2 GiB can fail to encode; their array could not have been received.
    debug_assert!(written.is_ok());
    buf.to_vec()
}

fn is_array_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

/// The elements of a one-dimensional array in text format, as Postgres's `array_in` reads it:
/// optional `[lower:upper]=` bounds, double-quoted elements with backslash escapes, unquoted
/// elements trimmed of blanks, unquoted `NULL` (any case) for NULL.
pub fn decode_text(text: &str) -> Result<Vec<Option<String>>, ArrayError> {
    let mut chars = text.trim_start_matches(is_array_space).chars().peekable();
    if chars.peek() == Some(&'[') {
        let mut dims = 0;
        while chars.peek() == Some(&'[') {
            chars.next();
            dims += 1;
            loop {
                match chars.next() {
                    Some(']') => break,
                    Some(c) if c.is_ascii_digit() || c == ':' || c == '-' || c == '+' => {}
                    _ => return Err(ArrayError::Text("bad array dimensions")),
                }
            }
        }
        if dims > 1 {
            return Err(ArrayError::MultiDimensional);
        }
        while chars.peek().is_some_and(|c| is_array_space(*c)) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ArrayError::Text(
                "array dimensions must be followed by \"=\"",
            ));
        }
        while chars.peek().is_some_and(|c| is_array_space(*c)) {
            chars.next();
        }
    }
    if chars.next() != Some('{') {
        return Err(ArrayError::Text("array value must start with \"{\""));
    }
    let mut out = Vec::new();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.peek().is_some_and(|c| is_array_space(*c)) {
            chars.next();
        }
    };
    skip_space(&mut chars);
    if chars.peek() == Some(&'}') {
        chars.next();
    } else {
        loop {
            skip_space(&mut chars);
            match chars.peek() {
                Some('{') => return Err(ArrayError::MultiDimensional),
                Some('"') => {
                    chars.next();
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            Some('\\') => match chars.next() {
                                Some(c) => s.push(c),
                                None => return Err(ArrayError::Text("unexpected end of input")),
                            },
                            Some('"') => break,
                            Some(c) => s.push(c),
                            None => return Err(ArrayError::Text("unterminated quoted element")),
                        }
                    }
                    skip_space(&mut chars);
                    out.push(Some(s));
                }
                _ => {
                    let mut s = String::new();
                    // Length of `s` up to its last character that is not an unescaped blank.
                    let mut kept = 0;
                    let mut escaped = false;
                    loop {
                        match chars.peek() {
                            Some(',') | Some('}') => break,
                            Some('"') | Some('{') => {
                                return Err(ArrayError::Text("unexpected \" or { in an element"))
                            }
                            Some('\\') => {
                                chars.next();
                                match chars.next() {
                                    Some(c) => s.push(c),
                                    None => {
                                        return Err(ArrayError::Text("unexpected end of input"))
                                    }
                                }
                                kept = s.len();
                                escaped = true;
                            }
                            Some(&c) => {
                                chars.next();
                                s.push(c);
                                if !is_array_space(c) {
                                    kept = s.len();
                                }
                            }
                            None => return Err(ArrayError::Text("unexpected end of input")),
                        }
                    }
                    s.truncate(kept);
                    if s.is_empty() && !escaped {
                        return Err(ArrayError::Text("empty element"));
                    }
                    if !escaped && s.eq_ignore_ascii_case("null") {
                        out.push(None);
                    } else {
                        out.push(Some(s));
                    }
                }
            }
            match chars.next() {
                Some(',') => {}
                Some('}') => break,
                _ => return Err(ArrayError::Text("expected \",\" or \"}\"")),
            }
        }
    }
    if chars.any(|c| !is_array_space(c)) {
        return Err(ArrayError::Text("junk after closing \"}\""));
    }
    Ok(out)
}

/// Elements written as a text-format array, quoted where `array_in` needs it.
pub fn encode_text(elements: &[Option<&[u8]>]) -> String {
    let mut out = String::from("{");
    for (i, e) in elements.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let Some(bytes) = e else {
            out.push_str("NULL");
            continue;
        };
        let s = String::from_utf8_lossy(bytes);
        let quote = s.is_empty()
            || s.eq_ignore_ascii_case("null")
            || s.chars()
                .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || is_array_space(c));
        if quote {
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&s);
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn text_arrays_decode_like_array_in() {
        for (input, want) in [
            ("{}", vec![]),
            (" { } ", vec![]),
            ("{1,2,3}", vec![s("1"), s("2"), s("3")]),
            ("{ 1 , -2 ,3 }", vec![s("1"), s("-2"), s("3")]),
            ("{NULL,null,\"NULL\"}", vec![None, None, s("NULL")]),
            ("{\"a b\",\"\",\"x,y\"}", vec![s("a b"), s(""), s("x,y")]),
            (
                r#"{"q\"uote","back\\slash"}"#,
                vec![s("q\"uote"), s("back\\slash")],
            ),
            (r"{a\,b,c\ }", vec![s("a,b"), s("c ")]),
            (
                "{héllo,日本語,\"ß x\"}",
                vec![s("héllo"), s("日本語"), s("ß x")],
            ),
            ("{a b}", vec![s("a b")]),
            ("[1:2]={7,8}", vec![s("7"), s("8")]),
            ("[0:0] = {x}", vec![s("x")]),
        ] {
            assert_eq!(decode_text(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn malformed_text_arrays_are_errors() {
        for input in [
            "",
            "1,2",
            "{1,2",
            "{1,,2}",
            "{\"a}",
            "{a\"b}",
            "{1,2}x",
            "{a\\",
            "[1:2]{1,2}",
            "[x]={1}",
            "{,}",
        ] {
            assert!(
                matches!(decode_text(input), Err(ArrayError::Text(_))),
                "{input}: {:?}",
                decode_text(input)
            );
        }
        assert_eq!(
            decode_text("{{1,2},{3,4}}"),
            Err(ArrayError::MultiDimensional)
        );
        assert_eq!(
            decode_text("[1:2][1:1]={{1},{2}}"),
            Err(ArrayError::MultiDimensional)
        );
        assert!(matches!(decode(b"{\xff}", false), Err(ArrayError::Text(_))));
    }

    #[test]
    fn text_round_trips_through_encode() {
        let cases: Vec<Vec<Option<&str>>> = vec![
            vec![],
            vec![Some("1"), None, Some("3")],
            vec![Some(""), Some("NULL"), Some("a b"), Some("{}"), Some("x,y")],
            vec![
                Some("q\"uote"),
                Some("back\\slash"),
                Some(" lead"),
                Some("tab\t"),
            ],
            vec![Some("日本語"), Some("ß")],
        ];
        for elems in cases {
            let bytes: Vec<Option<&[u8]>> = elems.iter().map(|e| e.map(str::as_bytes)).collect();
            let text = encode_text(&bytes);
            let back = decode_text(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let want: Vec<Option<String>> = elems.iter().map(|e| e.map(str::to_string)).collect();
            assert_eq!(back, want, "{text}");
        }
        assert_eq!(
            encode_text(&[Some(b"a"), None, Some(b"b c")]),
            "{a,NULL,\"b c\"}"
        );
    }

    fn int8_array(elems: &[Option<i64>]) -> Vec<u8> {
        let bytes: Vec<Option<[u8; 8]>> = elems.iter().map(|e| e.map(i64::to_be_bytes)).collect();
        let refs: Vec<Option<&[u8]>> = bytes.iter().map(|b| b.as_ref().map(|b| &b[..])).collect();
        encode_binary(20, &refs)
    }

    #[test]
    fn binary_arrays_round_trip_with_nulls() {
        let raw = int8_array(&[Some(1), None, Some(-5)]);
        let d = decode(&raw, true).unwrap();
        assert_eq!(d.format, ArrayFormat::Binary { element_type: 20 });
        assert_eq!(
            d.elements,
            vec![
                Some(1i64.to_be_bytes().to_vec()),
                None,
                Some((-5i64).to_be_bytes().to_vec())
            ]
        );
        let refs: Vec<Option<&[u8]>> = d.elements.iter().map(|e| e.as_deref()).collect();
        assert_eq!(encode(d.format, &refs), raw);
        // Empty arrays have no dimension.
        let empty = encode_binary(25, &[]);
        assert_eq!(
            decode(&empty, true).unwrap(),
            Decoded {
                format: ArrayFormat::Binary { element_type: 25 },
                elements: vec![]
            }
        );
        // Text elements as sent.
        let t = encode_binary(25, &[Some("日本".as_bytes()), Some(b"")]);
        assert_eq!(
            decode(&t, true).unwrap().elements,
            vec![Some("日本".as_bytes().to_vec()), Some(vec![])]
        );
    }

    #[test]
    fn malformed_binary_arrays_are_errors() {
        let good = int8_array(&[Some(1), Some(2)]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut], true).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long, true).is_err());
        let mut neg = good.clone();
        neg[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(decode(&neg, true).is_err());
        // Two dimensions.
        let mut two = Vec::new();
        for v in [2i32, 0, 20, 1, 1, 1, 1, 8] {
            two.extend_from_slice(&v.to_be_bytes());
        }
        two.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(decode(&two, true), Err(ArrayError::MultiDimensional));
    }
}
