//! Arrays as Postgres orders them (`array_cmp`): element by element in storage order (NULL
//! after any value, two NULLs equal), each element as its type compares; when one array is a
//! prefix of the other, the one with fewer elements first, then fewer dimensions, then the
//! smaller dimension lengths, then the smaller lower bounds. Read from the text Postgres writes
//! (`{1,2}`, `{{"a b",NULL}}`, `[0:1]={5,6}`) or the binary form, for arrays of the element
//! types the merge compares.

use std::cmp::Ordering;

use bytes::Bytes;
use fallible_iterator::FallibleIterator;

use super::collate::TextOrder;
use super::value::{compare_in, ColumnType, Value, FORMAT_BINARY, FORMAT_TEXT};
use super::MergeError;

/// Nesting beyond Postgres's limit of 6 dimensions is malformed.
const MAX_DIMS: usize = 6;

/// The element type of each array type the merge reads (`pg_type.typelem`).
pub fn element_type(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => 16,   // bool
        1001 => 17,   // bytea
        1002 => 18,   // "char"
        1003 => 19,   // name
        1005 => 21,   // int2
        1007 => 23,   // int4
        1009 => 25,   // text
        1014 => 1042, // bpchar
        1015 => 1043, // varchar
        1016 => 20,   // int8
        1021 => 700,  // float4
        1022 => 701,  // float8
        1028 => 26,   // oid
        1040 => 829,  // macaddr
        1041 => 869,  // inet
        651 => 650,   // cidr
        1115 => 1114, // timestamp
        1182 => 1082, // date
        1183 => 1083, // time
        1185 => 1184, // timestamptz
        1187 => 1186, // interval
        1231 => 1700, // numeric
        1270 => 1266, // timetz
        2951 => 2950, // uuid
        3807 => 3802, // jsonb
        _ => return None,
    })
}

/// True for arrays whose elements compare in a collation (text, varchar, bpchar).
pub fn collatable(array_oid: u32) -> bool {
    matches!(array_oid, 1009 | 1014 | 1015)
}

/// One array: its dimensions (length, lower bound) and elements in storage order.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayValue {
    dims: Vec<(i32, i32)>,
    elements: Vec<Value>,
}

fn invalid(detail: String) -> MergeError {
    MergeError::InvalidValue {
        type_name: "array",
        detail,
    }
}

impl ArrayValue {
    /// `array_cmp`, elements compared with `text` for their text.
    pub fn compare(&self, other: &ArrayValue, text: &TextOrder) -> Ordering {
        for (a, b) in self.elements.iter().zip(&other.elements) {
            // compare_in sorts NULL after every value and two NULLs equal, as array_cmp does.
            let order = compare_in(a, b, text);
            if order != Ordering::Equal {
                return order;
            }
        }
        let lens = |d: &[(i32, i32)]| d.iter().map(|x| x.0).collect::<Vec<_>>();
        let bounds = |d: &[(i32, i32)]| d.iter().map(|x| x.1).collect::<Vec<_>>();
        self.elements
            .len()
            .cmp(&other.elements.len())
            .then(self.dims.len().cmp(&other.dims.len()))
            .then_with(|| lens(&self.dims).cmp(&lens(&other.dims)))
            .then_with(|| bounds(&self.dims).cmp(&bounds(&other.dims)))
    }

    /// Bytes equal exactly for arrays `=` calls equal (same shape, equal elements).
    pub fn canonical_key(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(self.dims.len() as u32).to_be_bytes());
        for (len, lower) in &self.dims {
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&lower.to_be_bytes());
        }
        for e in &self.elements {
            let key = e.canonical_key();
            v.extend_from_slice(&(key.len() as u64).to_be_bytes());
            v.extend_from_slice(&key);
        }
        v
    }
}

/// Decodes an array of `array_oid` in `format` (text or binary).
pub fn decode(array_oid: u32, format: i16, raw: &[u8]) -> Result<ArrayValue, MergeError> {
    let element = element_type(array_oid).ok_or(MergeError::UnsupportedType { oid: array_oid })?;
    let element_type = ColumnType::new(element, format);
    let decode_element = |e: Option<&[u8]>| match e {
        None => Ok(Value::Null),
        Some(b) => element_type.decode(Some(&Bytes::copy_from_slice(b))),
    };
    if format == FORMAT_BINARY {
        let array = postgres_protocol::types::array_from_sql(raw)
            .map_err(|e| invalid(format!("binary array: {e}")))?;
        if array.element_type() != element {
            return Err(invalid(format!(
                "element type {} in an array of type {array_oid}",
                array.element_type()
            )));
        }
        let dims: Vec<(i32, i32)> = array
            .dimensions()
            .map(|d| Ok((d.len, d.lower_bound)))
            .collect()
            .map_err(|e| invalid(format!("binary array: {e}")))?;
        let raw_elements: Vec<Option<&[u8]>> = array
            .values()
            .collect()
            .map_err(|e| invalid(format!("binary array: {e}")))?;
        let elements = raw_elements
            .into_iter()
            .map(decode_element)
            .collect::<Result<_, _>>()?;
        return Ok(ArrayValue { dims, elements });
    }
    if format != FORMAT_TEXT {
        return Err(invalid(format!("unknown format code {format}")));
    }
    let parsed = parse_text(raw)?;
    let elements = parsed
        .elements
        .iter()
        .map(|e| decode_element(e.as_deref()))
        .collect::<Result<_, _>>()?;
    Ok(ArrayValue {
        dims: parsed.dims,
        elements,
    })
}

/// An array's text split into its shape and element texts (`None` for NULL).
struct ParsedText {
    dims: Vec<(i32, i32)>,
    elements: Vec<Option<Vec<u8>>>,
}

/// `array_out`'s text: an optional `[lower:upper]…=` prefix, then nested braces whose elements
/// are unquoted, `NULL`, or double-quoted with backslash escapes.
fn parse_text(s: &[u8]) -> Result<ParsedText, MergeError> {
    let bad = |why: &str| invalid(format!("{:?}: {why}", String::from_utf8_lossy(s)));
    let mut pos = 0;
    let mut bounds: Vec<(i64, i64)> = Vec::new();
    while s.get(pos) == Some(&b'[') {
        let close = s[pos..]
            .iter()
            .position(|c| *c == b']')
            .ok_or_else(|| bad("unclosed bounds"))?;
        let inside = std::str::from_utf8(&s[pos + 1..pos + close]).map_err(|_| bad("bounds"))?;
        let (lo, hi) = inside.split_once(':').ok_or_else(|| bad("bounds"))?;
        let lo: i64 = lo.parse().map_err(|_| bad("bounds"))?;
        let hi: i64 = hi.parse().map_err(|_| bad("bounds"))?;
        bounds.push((lo, hi));
        pos += close + 1;
    }
    if !bounds.is_empty() {
        if s.get(pos) != Some(&b'=') {
            return Err(bad("bounds without '='"));
        }
        pos += 1;
    }
    // Lengths seen at each depth; every sub-array of one depth must have the same length.
    let mut lens: Vec<Option<usize>> = Vec::new();
    let mut elements = Vec::new();
    let mut p = Walker { s, pos };
    p.array(0, &mut lens, &mut elements).map_err(&bad)?;
    if p.pos != s.len() {
        return Err(bad("text after the array"));
    }
    let lens: Vec<usize> = lens.into_iter().map(|l| l.unwrap_or(0)).collect();
    if elements.is_empty() {
        return Ok(ParsedText {
            dims: Vec::new(),
            elements,
        });
    }
    if !bounds.is_empty() && bounds.len() != lens.len() {
        return Err(bad("bounds do not match the dimensions"));
    }
    let mut dims = Vec::with_capacity(lens.len());
    for (i, len) in lens.iter().enumerate() {
        let len = i32::try_from(*len).map_err(|_| bad("too long"))?;
        let lower = match bounds.get(i) {
            Some((lo, hi)) if hi - lo + 1 == i64::from(len) => {
                i32::try_from(*lo).map_err(|_| bad("bounds"))?
            }
            Some(_) => return Err(bad("bounds do not match the dimensions")),
            None => 1,
        };
        dims.push((len, lower));
    }
    Ok(ParsedText { dims, elements })
}

struct Walker<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Walker<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn array(
        &mut self,
        depth: usize,
        lens: &mut Vec<Option<usize>>,
        out: &mut Vec<Option<Vec<u8>>>,
    ) -> Result<(), &'static str> {
        if depth >= MAX_DIMS {
            return Err("more than 6 dimensions");
        }
        if self.peek() != Some(b'{') {
            return Err("expected '{'");
        }
        self.pos += 1;
        if lens.len() <= depth {
            lens.push(None);
        }
        let mut count = 0;
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                if self.peek() == Some(b'{') {
                    self.array(depth + 1, lens, out)?;
                } else {
                    if lens.len() > depth + 1 {
                        return Err("elements beside sub-arrays");
                    }
                    out.push(self.element()?);
                }
                count += 1;
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err("expected ',' or '}'"),
                }
            }
        }
        match lens[depth] {
            None => lens[depth] = Some(count),
            Some(n) if n == count => {}
            Some(_) => return Err("sub-arrays of different lengths"),
        }
        Ok(())
    }

    fn element(&mut self) -> Result<Option<Vec<u8>>, &'static str> {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let mut out = Vec::new();
            loop {
                let c = self.peek().ok_or("unterminated quote")?;
                self.pos += 1;
                match c {
                    b'"' => return Ok(Some(out)),
                    b'\\' => {
                        out.push(self.peek().ok_or("unterminated escape")?);
                        self.pos += 1;
                    }
                    _ => out.push(c),
                }
            }
        }
        let start = self.pos;
        while !matches!(self.peek(), None | Some(b',' | b'}' | b'{' | b'"')) {
            self.pos += 1;
        }
        let text = &self.s[start..self.pos];
        if text.is_empty() {
            return Err("empty element");
        }
        if text.eq_ignore_ascii_case(b"NULL") {
            return Ok(None);
        }
        Ok(Some(text.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int4s(s: &str) -> ArrayValue {
        decode(1007, FORMAT_TEXT, s.as_bytes()).unwrap()
    }

    /// In Postgres 15's ORDER BY order of int4[] (`SELECT x::int[] … ORDER BY 1`).
    #[test]
    fn orders_as_array_cmp() {
        let sorted = [
            "{}",
            "{-1}",
            "{1}",
            "[0:1]={1,2}",
            "{1,2}",
            "{{1,2}}",
            "{1,2,NULL}",
            "{1,3}",
            "{1,NULL}",
            "{2}",
            "{NULL}",
            "{NULL,1}",
        ];
        let mut shuffled: Vec<ArrayValue> = sorted.iter().rev().map(|s| int4s(s)).collect();
        shuffled.sort_by(|a, b| a.compare(b, &TextOrder::Bytewise));
        let want: Vec<ArrayValue> = sorted.iter().map(|s| int4s(s)).collect();
        assert_eq!(shuffled, want);
    }

    #[test]
    fn text_elements_quotes_and_shapes() {
        let a = decode(1009, FORMAT_TEXT, br#"{{"a b","x\"y"},{NULL,"NULL"}}"#).unwrap();
        assert_eq!(a.dims, vec![(2, 1), (2, 1)]);
        assert_eq!(
            a.elements,
            vec![
                Value::Text(Bytes::from_static(b"a b")),
                Value::Text(Bytes::from_static(b"x\"y")),
                Value::Null,
                Value::Text(Bytes::from_static(b"NULL")),
            ]
        );
        assert_eq!(int4s("[-2:-1]={7,8}").dims, vec![(2, -2)]);
        for bad in ["{1", "{{1},{1,2}}", "[1:3]={1,2}", "{1}x", "{,}", "{{1},2}"] {
            assert!(decode(1007, FORMAT_TEXT, bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            decode(1007, FORMAT_TEXT, b"{1}").unwrap().canonical_key(),
            decode(1007, FORMAT_TEXT, b"{1}").unwrap().canonical_key()
        );
        assert_ne!(
            int4s("{1,2}").canonical_key(),
            int4s("[0:1]={1,2}").canonical_key()
        );
    }

    #[test]
    fn binary_matches_text() {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes()); // one dimension
        b.extend_from_slice(&1i32.to_be_bytes()); // has nulls
        b.extend_from_slice(&23u32.to_be_bytes()); // int4
        b.extend_from_slice(&3i32.to_be_bytes()); // length
        b.extend_from_slice(&0i32.to_be_bytes()); // lower bound
        for e in [Some(5i32), None, Some(-6)] {
            match e {
                Some(v) => {
                    b.extend_from_slice(&4i32.to_be_bytes());
                    b.extend_from_slice(&v.to_be_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(
            decode(1007, FORMAT_BINARY, &b).unwrap(),
            int4s("[0:2]={5,NULL,-6}")
        );
        assert!(
            decode(1016, FORMAT_BINARY, &b).is_err(),
            "int4 elements in an int8[]"
        );
    }
}
