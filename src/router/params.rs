//! Values of `$n` placeholders: Bind parameters (text or binary) in the extended protocol, extracted
//! literals in the simple protocol. The router asks for integers only.

/// Something that can say what integer `$n` (1-based) holds.
pub trait ParamSource {
    /// The integer value of `$n`; `None` when it is NULL, missing, or not an integer.
    fn int(&self, n: usize) -> Option<i64>;
    /// The elements of an integer array `$n`; `None` when it is NULL, missing, not an array of
    /// integers, or contains a NULL.
    fn int_array(&self, n: usize) -> Option<Vec<i64>>;
    /// The raw value of `$n` for merges that compare it with a column (HAVING) or need to tell
    /// NULL from a bad value (LIMIT): `Some(RawParam)` when `$n` exists.
    fn raw(&self, _n: usize) -> Option<RawParam> {
        None
    }
    /// `$n` as SQL text to splice into a statement the proxy builds (the simple protocol's
    /// extracted literals, which keep the type Postgres gives the literal as written); `None`
    /// when `$n` is a bound parameter.
    fn sql_literal(&self, _n: usize) -> Option<String> {
        None
    }
    /// The type OID the client declared for `$n` (0: unspecified), to bind its value again.
    fn declared_type(&self, _n: usize) -> u32 {
        0
    }
    /// `$n` as a shard key of type `ty`; `None` when NULL, missing or not of that type.
    fn key(&self, n: usize, ty: KeyType) -> Option<ShardKey> {
        if ty == KeyType::Int {
            return self.int(n).map(ShardKey::Int);
        }
        let raw = self.raw(n)?;
        let value = raw.value?;
        if raw.binary {
            ty.parse_binary(&value)
        } else {
            ty.parse_text(std::str::from_utf8(&value).ok()?)
        }
    }
    /// The elements of an array `$n` as shard keys of type `ty`; `None` when NULL, missing, not
    /// a one-dimensional array of that type, or holding a NULL.
    fn key_array(&self, n: usize, ty: KeyType) -> Option<Vec<ShardKey>> {
        if ty == KeyType::Int {
            return self
                .int_array(n)
                .map(|v| v.into_iter().map(ShardKey::Int).collect());
        }
        let raw = self.raw(n)?;
        let decoded = crate::router::pg_array::decode(&raw.value?, raw.binary).ok()?;
        decoded
            .elements
            .iter()
            .map(|e| {
                let e = e.as_deref()?;
                if raw.binary {
                    ty.parse_binary(e)
                } else {
                    ty.parse_text(std::str::from_utf8(e).ok()?)
                }
            })
            .collect()
    }
}

use crate::router::key_type::{KeyType, ShardKey};

/// One parameter value as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawParam {
    /// The bytes; `None` is NULL.
    pub value: Option<bytes::Bytes>,
    /// True when sent in binary format.
    pub binary: bool,
}

/// No parameters at all.
pub struct NoParams;

impl ParamSource for NoParams {
    fn int(&self, _n: usize) -> Option<i64> {
        None
    }
    fn int_array(&self, _n: usize) -> Option<Vec<i64>> {
        None
    }
}

/// Type OIDs the router understands in binary format.
const INT8_OID: u32 = 20;
const INT2_OID: u32 = 21;
const INT4_OID: u32 = 23;
const TEXT_OID: u32 = 25;
const VARCHAR_OID: u32 = 1043;

/// The parameters of one Bind message.
pub struct BindParams<'a> {
    /// Parameter values; `None` is NULL.
    pub values: &'a [Option<bytes::Bytes>],
    /// Format codes as in Bind: no entry = all text, one entry = applies to all, else one per parameter.
    pub formats: &'a [i16],
    /// Parameter type OIDs from Parse; may be shorter than `values`, 0 = unspecified.
    pub types: &'a [u32],
}

impl BindParams<'_> {
    fn value(&self, n: usize) -> Option<(&[u8], bool, u32)> {
        let i = n.checked_sub(1)?;
        let v = self.values.get(i)?.as_deref()?;
        let format = match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => *self.formats.get(i)?,
        };
        let oid = self.types.get(i).copied().unwrap_or(0);
        Some((v, format == 1, oid))
    }
}

/// An integer in text form (surrounding blanks allowed).
fn parse_int_text(b: &[u8]) -> Option<i64> {
    // The usual key, digits with at most a sign, read straight from the bytes: no UTF-8 check,
    // trim or `str::parse` per Bind. Anything else (blanks, a value out of range) goes the long
    // way, which decides exactly as before.
    if let Some(v) = parse_plain_decimal(b) {
        return Some(v);
    }
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// `b` as a decimal integer when it is only ASCII digits after an optional sign, at most 18 of
/// them (no i64 overflows); `None` for anything else, which the caller reads the long way.
fn parse_plain_decimal(b: &[u8]) -> Option<i64> {
    let (negative, digits) = match b.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v: i64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(d - b'0');
    }
    Some(if negative { -v } else { v })
}

/// A signed big-endian integer of 2, 4 or 8 bytes.
fn parse_int_binary(b: &[u8]) -> Option<i64> {
    match b.len() {
        8 => Some(i64::from_be_bytes(b.try_into().ok()?)),
        4 => Some(i32::from_be_bytes(b.try_into().ok()?) as i64),
        2 => Some(i16::from_be_bytes(b.try_into().ok()?) as i64),
        _ => None,
    }
}

/// A one-dimensional integer array in text form: `{1,2,3}` (no NULLs).
pub(crate) fn parse_int_array_text(t: &str) -> Option<Vec<i64>> {
    let inner = t.trim().strip_prefix('{')?.strip_suffix('}')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|e| {
            let e = e.trim();
            let e = e
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(e);
            e.trim().parse::<i64>().ok()
        })
        .collect()
}

/// A one-dimensional int2/int4/int8 array in Postgres's binary array format (no NULLs).
fn parse_int_array_binary(b: &[u8]) -> Option<Vec<i64>> {
    let i32_at = |off: usize| -> Option<i32> {
        Some(i32::from_be_bytes(b.get(off..off + 4)?.try_into().ok()?))
    };
    let ndim = i32_at(0)?;
    let _has_null = i32_at(4)?;
    let elem_oid = i32_at(8)? as u32;
    if ndim == 0 {
        return Some(Vec::new());
    }
    if ndim != 1 || !matches!(elem_oid, INT8_OID | INT4_OID | INT2_OID) {
        return None;
    }
    let count = usize::try_from(i32_at(12)?).ok()?;
    let mut off = 20; // past the dimension and its lower bound
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = i32_at(off)?;
        off += 4;
        let len = usize::try_from(len).ok()?; // -1 (NULL) fails here
        out.push(parse_int_binary(b.get(off..off + len)?)?);
        off += len;
    }
    if off != b.len() {
        return None;
    }
    Some(out)
}

impl ParamSource for BindParams<'_> {
    fn declared_type(&self, n: usize) -> u32 {
        n.checked_sub(1)
            .and_then(|i| self.types.get(i).copied())
            .unwrap_or(0)
    }

    fn int(&self, n: usize) -> Option<i64> {
        let (v, binary, oid) = self.value(n)?;
        if !binary {
            return parse_int_text(v);
        }
        match oid {
            0 | INT8_OID | INT4_OID | INT2_OID => {
                let want = match oid {
                    INT8_OID => Some(8),
                    INT4_OID => Some(4),
                    INT2_OID => Some(2),
                    _ => None,
                };
                if want.is_some_and(|w| w != v.len()) {
                    return None;
                }
                parse_int_binary(v)
            }
            TEXT_OID | VARCHAR_OID => parse_int_text(v),
            _ => None,
        }
    }

    fn raw(&self, n: usize) -> Option<RawParam> {
        let i = n.checked_sub(1)?;
        let value = self.values.get(i)?.clone();
        let format = match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => *self.formats.get(i)?,
        };
        Some(RawParam {
            value,
            binary: format == 1,
        })
    }

    fn int_array(&self, n: usize) -> Option<Vec<i64>> {
        let (v, binary, _oid) = self.value(n)?;
        if binary {
            parse_int_array_binary(v)
        } else {
            parse_int_array_text(std::str::from_utf8(v).ok()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn text_integers_read_fast_agree_with_the_long_way() {
        let long_way = |t: &str| t.trim().parse::<i64>().ok();
        for t in [
            "0",
            "7",
            "-7",
            "+7",
            "123456789012",
            "999999999999999999",
            "-999999999999999999",
            "1000000000000000000",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            " 42",
            "42 ",
            "",
            "-",
            "+",
            "4x",
            "1_000",
            "0x10",
            "--1",
            "١٢",
        ] {
            assert_eq!(parse_int_text(t.as_bytes()), long_way(t), "{t:?}");
        }
        assert_eq!(parse_plain_decimal(b"1000000000000000000"), None);
        assert_eq!(parse_plain_decimal(b"-000123"), Some(-123));
    }

    fn b(v: &[u8]) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(v))
    }

    fn bin_array(oid: u32, elems: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&(elems.iter().any(|e| e.is_none()) as i32).to_be_bytes());
        out.extend_from_slice(&oid.to_be_bytes());
        out.extend_from_slice(&(elems.len() as i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for e in elems {
            match e {
                Some(d) => {
                    out.extend_from_slice(&(d.len() as i32).to_be_bytes());
                    out.extend_from_slice(d);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn text_params() {
        let values = [b(b" 42 "), b(b"-7"), None, b(b"4.5"), b(b"{1, 2,3}")];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(p.int(1), Some(42));
        assert_eq!(p.int(2), Some(-7));
        assert_eq!(p.int(3), None);
        assert_eq!(p.int(4), None);
        assert_eq!(p.int(6), None);
        assert_eq!(p.int(0), None);
        assert_eq!(p.int_array(5), Some(vec![1, 2, 3]));
        assert_eq!(p.int_array(1), None);
        assert_eq!(NoParams.int(1), None);
    }

    #[test]
    fn binary_params() {
        let values = [
            b(&(-5i64).to_be_bytes()),
            b(&7i32.to_be_bytes()),
            b(&3i16.to_be_bytes()),
            b(&[1, 2, 3]),
            b(b"12"),
        ];
        let p = BindParams {
            values: &values,
            formats: &[1],
            types: &[20],
        };
        assert_eq!(p.int(1), Some(-5));
        assert_eq!(p.int(2), Some(7));
        assert_eq!(p.int(3), Some(3));
        assert_eq!(p.int(4), None);
        // int8 declared but 4 bytes sent: wrong
        let p2 = BindParams {
            values: &values[1..],
            formats: &[1],
            types: &[20],
        };
        assert_eq!(p2.int(1), None);
        // mixed formats, text type in binary
        let p3 = BindParams {
            values: &values,
            formats: &[1, 1, 0, 1, 1],
            types: &[0, 0, 0, 0, 25],
        };
        assert_eq!(p3.int(3), None); // binary bytes read as text
        assert_eq!(p3.int(5), Some(12));
        let p4 = BindParams {
            values: &values,
            formats: &[1],
            types: &[1700],
        };
        assert_eq!(p4.int(1), None);
    }

    #[test]
    fn binary_arrays() {
        let a8 = bin_array(
            20,
            &[
                Some(1i64.to_be_bytes().to_vec()),
                Some((-2i64).to_be_bytes().to_vec()),
            ],
        );
        let a4 = bin_array(23, &[Some(9i32.to_be_bytes().to_vec())]);
        let with_null = bin_array(20, &[Some(1i64.to_be_bytes().to_vec()), None]);
        let text_elems = bin_array(25, &[Some(b"1".to_vec())]);
        let mut empty = Vec::new();
        empty.extend_from_slice(&0i32.to_be_bytes());
        empty.extend_from_slice(&0i32.to_be_bytes());
        empty.extend_from_slice(&20u32.to_be_bytes());
        let values = [
            b(&a8),
            b(&a4),
            b(&with_null),
            b(&text_elems),
            b(&empty),
            b(&a8[..10]),
        ];
        let p = BindParams {
            values: &values,
            formats: &[1],
            types: &[],
        };
        assert_eq!(p.int_array(1), Some(vec![1, -2]));
        assert_eq!(p.int_array(2), Some(vec![9]));
        assert_eq!(p.int_array(3), None);
        assert_eq!(p.int_array(4), None);
        assert_eq!(p.int_array(5), Some(vec![]));
        assert_eq!(p.int_array(6), None);
        assert_eq!(parse_int_array_text("{1,NULL}"), None);
        assert_eq!(parse_int_array_text("{}"), Some(vec![]));
        assert_eq!(parse_int_array_text("{\"3\"}"), Some(vec![3]));
    }
}
