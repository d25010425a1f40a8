//! Decoding the columns a merge sorts, groups or aggregates on into values that compare the way
//! Postgres compares them, whichever wire format (text or binary) the shard used.

use std::cmp::Ordering;

use bytes::Bytes;

use super::collate::TextOrder;
use super::datetime::{parse_date_text, parse_time_text, parse_timestamp_text, parse_timetz_text};
use super::inet::Inet;
use super::numeric::Numeric;
use super::MergeError;

// Type OIDs from pg_type, fixed since they are in Postgres's bootstrap catalog.
/// OID of `bool`.
pub const BOOL_OID: u32 = 16;
/// OID of `name` (catalog identifiers).
pub const NAME_OID: u32 = 19;
/// OID of `int8`.
pub const INT8_OID: u32 = 20;
/// OID of `int2`.
pub const INT2_OID: u32 = 21;
/// OID of `int4`.
pub const INT4_OID: u32 = 23;
/// OID of `text`.
pub const TEXT_OID: u32 = 25;
/// OID of `float4`.
pub const FLOAT4_OID: u32 = 700;
/// OID of `float8`.
pub const FLOAT8_OID: u32 = 701;
/// OID of `bpchar` (`char(n)`).
pub const BPCHAR_OID: u32 = 1042;
/// OID of `varchar`.
pub const VARCHAR_OID: u32 = 1043;
/// OID of `date`.
pub const DATE_OID: u32 = 1082;
/// OID of `timestamp` (without time zone).
pub const TIMESTAMP_OID: u32 = 1114;
/// OID of `timestamptz`.
pub const TIMESTAMPTZ_OID: u32 = 1184;
/// OID of `numeric`.
pub const NUMERIC_OID: u32 = 1700;
/// OID of `uuid`.
pub const UUID_OID: u32 = 2950;
/// OID of `bytea`.
pub const BYTEA_OID: u32 = 17;
/// OID of `interval`.
pub const INTERVAL_OID: u32 = 1186;
/// OID of `"char"` (one byte, compared unsigned).
pub const CHAR_OID: u32 = 18;
/// OID of `oid`.
pub const OID_OID: u32 = 26;
/// OID of `time` (without time zone).
pub const TIME_OID: u32 = 1083;
/// OID of `timetz`.
pub const TIMETZ_OID: u32 = 1266;
/// OID of `inet`.
pub const INET_OID: u32 = 869;
/// OID of `cidr`.
pub const CIDR_OID: u32 = 650;
/// OID of `macaddr`.
pub const MACADDR_OID: u32 = 829;
/// OID of `jsonb`.
pub const JSONB_OID: u32 = 3802;

/// Format code of text values in RowDescription.
pub const FORMAT_TEXT: i16 = 0;
/// Format code of binary values in RowDescription.
pub const FORMAT_BINARY: i16 = 1;

/// What a merge needs to know about one result column, taken from RowDescription: its type
/// and the format the shards send it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnType {
    /// The column's type OID (RowDescription's data type OID).
    pub oid: u32,
    /// 0 text, 1 binary (RowDescription's format code).
    pub format: i16,
}

/// A decoded column value. Integers of all widths share one variant (and floats likewise)
/// because the merge only ever compares values of one column with each other.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL; where it sorts is the sort key's choice.
    Null,
    Bool(bool),
    /// int2, int4 and int8.
    Int(i64),
    /// float4 values are widened exactly to f64.
    Float(f64),
    Numeric(Numeric),
    /// text, varchar, name and bpchar (bpchar without its trailing spaces); compared bytewise
    /// by [`compare`], in a collation by [`compare_in`].
    Text(Bytes),
    /// Days since 2000-01-01; infinities are `i32::MAX` / `i32::MIN`.
    Date(i32),
    /// Microseconds since 2000-01-01 (UTC for timestamptz); infinities are `i64::MAX` / `MIN`.
    Timestamp(i64),
    /// The 16 bytes; byte order is Postgres's uuid order.
    Uuid([u8; 16]),
    /// An interval's span in microseconds (see [`super::interval::span`]): intervals Postgres
    /// calls equal (`'1 mon'`, `'30 days'`) have one span.
    Interval(i128),
    /// A bytea's bytes; Postgres orders them as memcmp, a prefix first. Also a macaddr's six
    /// bytes, which compare the same way.
    Bytea(Bytes),
    /// A `timetz`: the instant in UTC (microseconds since midnight plus the zone) first, then
    /// the zone in seconds west of UTC, as `timetz_cmp` orders them.
    TimeTz {
        utc: i64,
        zone: i32,
    },
    /// An `inet` or `cidr` (see [`super::inet`]).
    Inet(Inet),
    /// A `jsonb` value as its token stream (see [`super::jsonb`]); its strings compare in the
    /// database collation.
    Jsonb(Vec<super::jsonb::Token>),
    /// An array of a type the merge compares (see [`super::array`]).
    Array(Box<super::array::ArrayValue>),
}

fn invalid(type_name: &'static str, detail: impl Into<String>) -> MergeError {
    MergeError::InvalidValue {
        type_name,
        detail: detail.into(),
    }
}

fn fixed<const N: usize>(b: &[u8], type_name: &'static str) -> Result<[u8; N], MergeError> {
    b.try_into().map_err(|_| {
        invalid(
            type_name,
            format!("binary value of {} bytes, expected {N}", b.len()),
        )
    })
}

fn utf8<'a>(b: &'a [u8], type_name: &'static str) -> Result<&'a str, MergeError> {
    std::str::from_utf8(b).map_err(|_| invalid(type_name, "text value is not UTF-8"))
}

fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        BOOL_OID => "bool",
        NAME_OID => "name",
        INT8_OID => "int8",
        INT2_OID => "int2",
        INT4_OID => "int4",
        TEXT_OID => "text",
        FLOAT4_OID => "float4",
        FLOAT8_OID => "float8",
        BPCHAR_OID => "bpchar",
        VARCHAR_OID => "varchar",
        DATE_OID => "date",
        TIMESTAMP_OID => "timestamp",
        TIMESTAMPTZ_OID => "timestamptz",
        NUMERIC_OID => "numeric",
        UUID_OID => "uuid",
        BYTEA_OID => "bytea",
        INTERVAL_OID => "interval",
        TIME_OID => "time",
        TIMETZ_OID => "timetz",
        CHAR_OID => "char",
        OID_OID => "oid",
        INET_OID => "inet",
        CIDR_OID => "cidr",
        MACADDR_OID => "macaddr",
        JSONB_OID => "jsonb",
        oid if super::array::element_type(oid).is_some() => "array",
        _ => return None,
    })
}

impl ColumnType {
    /// A column of `oid` in `format` (0 text, 1 binary).
    pub fn new(oid: u32, format: i16) -> ColumnType {
        ColumnType { oid, format }
    }

    /// Refuses, up front, a column the merge could not decode, so a query is rejected before
    /// any row is read rather than half-way through.
    pub fn check(&self) -> Result<(), MergeError> {
        type_name(self.oid).ok_or(MergeError::UnsupportedType { oid: self.oid })?;
        if self.format != FORMAT_TEXT && self.format != FORMAT_BINARY {
            return Err(invalid(
                "format code",
                format!("{} is neither 0 nor 1", self.format),
            ));
        }
        Ok(())
    }

    /// Decodes one column (`None` is SQL NULL).
    pub fn decode(&self, raw: Option<&Bytes>) -> Result<Value, MergeError> {
        let name = type_name(self.oid).ok_or(MergeError::UnsupportedType { oid: self.oid })?;
        let Some(raw) = raw else {
            return Ok(Value::Null);
        };
        let b: &[u8] = raw;
        match self.format {
            FORMAT_BINARY => self.decode_binary(raw, name),
            FORMAT_TEXT => self.decode_text(raw, b, name),
            other => Err(invalid(name, format!("unknown format code {other}"))),
        }
    }

    fn decode_binary(&self, raw: &Bytes, name: &'static str) -> Result<Value, MergeError> {
        let b: &[u8] = raw;
        Ok(match self.oid {
            BOOL_OID => match b {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                _ => return Err(invalid(name, "binary bool must be one byte 0 or 1")),
            },
            INT2_OID => Value::Int(i16::from_be_bytes(fixed(b, name)?) as i64),
            INT4_OID => Value::Int(i32::from_be_bytes(fixed(b, name)?) as i64),
            INT8_OID => Value::Int(i64::from_be_bytes(fixed(b, name)?)),
            FLOAT4_OID => Value::Float(f32::from_be_bytes(fixed(b, name)?) as f64),
            FLOAT8_OID => Value::Float(f64::from_be_bytes(fixed(b, name)?)),
            NUMERIC_OID => Value::Numeric(Numeric::decode_binary(b)?),
            TEXT_OID | VARCHAR_OID | NAME_OID => Value::Text(raw.clone()),
            BPCHAR_OID => Value::Text(trim_bpchar(raw)),
            DATE_OID => Value::Date(i32::from_be_bytes(fixed(b, name)?)),
            TIMESTAMP_OID | TIMESTAMPTZ_OID => {
                Value::Timestamp(i64::from_be_bytes(fixed(b, name)?))
            }
            UUID_OID => Value::Uuid(fixed(b, name)?),
            BYTEA_OID => Value::Bytea(raw.clone()),
            INTERVAL_OID => Value::Interval(super::interval::decode_binary(b)?),
            // `time` is microseconds since midnight; `"char"` and `oid` compare unsigned.
            TIME_OID => Value::Int(i64::from_be_bytes(fixed(b, name)?)),
            CHAR_OID => Value::Int(i64::from(u8::from_be_bytes(fixed(b, name)?))),
            OID_OID => Value::Int(i64::from(u32::from_be_bytes(fixed(b, name)?))),
            TIMETZ_OID => {
                let time = i64::from_be_bytes(fixed(b.get(..8).unwrap_or(b), name)?);
                let zone = i32::from_be_bytes(fixed(b.get(8..).unwrap_or(b), name)?);
                time_tz(time, zone)
            }
            INET_OID | CIDR_OID => Value::Inet(super::inet::decode_binary(b)?),
            MACADDR_OID => Value::Bytea(Bytes::copy_from_slice(&fixed::<6>(b, name)?)),
            JSONB_OID => Value::Jsonb(super::jsonb::decode_binary(b)?),
            oid if super::array::element_type(oid).is_some() => {
                Value::Array(Box::new(super::array::decode(oid, FORMAT_BINARY, b)?))
            }
            oid => return Err(MergeError::UnsupportedType { oid }),
        })
    }

    fn decode_text(&self, raw: &Bytes, b: &[u8], name: &'static str) -> Result<Value, MergeError> {
        Ok(match self.oid {
            BOOL_OID => match b {
                b"t" => Value::Bool(true),
                b"f" => Value::Bool(false),
                _ => return Err(invalid(name, "text bool must be t or f")),
            },
            INT2_OID | INT4_OID | INT8_OID => Value::Int(
                utf8(b, name)?
                    .parse::<i64>()
                    .map_err(|e| invalid(name, format!("{:?}: {e}", String::from_utf8_lossy(b))))?,
            ),
            // float4 text is the shortest string that reads back as the same f32: parse it as
            // f32 so the value is exactly the shard's.
            FLOAT4_OID => Value::Float(parse_float(b, name)? as f32 as f64),
            FLOAT8_OID => Value::Float(parse_float(b, name)?),
            NUMERIC_OID => Value::Numeric(Numeric::parse_text(b)?),
            TEXT_OID | VARCHAR_OID | NAME_OID => Value::Text(raw.clone()),
            BPCHAR_OID => Value::Text(trim_bpchar(raw)),
            DATE_OID => Value::Date(parse_date_text(b)?),
            TIMESTAMP_OID => Value::Timestamp(parse_timestamp_text(b, false)?),
            TIMESTAMPTZ_OID => Value::Timestamp(parse_timestamp_text(b, true)?),
            UUID_OID => Value::Uuid(parse_uuid(b)?),
            BYTEA_OID => Value::Bytea(parse_bytea(b)?),
            INTERVAL_OID => Value::Interval(super::interval::parse_text(b)?),
            TIME_OID => Value::Int(parse_time_text(b)?),
            CHAR_OID => Value::Int(i64::from(parse_char(b)?)),
            OID_OID => Value::Int(
                utf8(b, name)?
                    .parse::<u32>()
                    .map_err(|e| invalid(name, format!("{:?}: {e}", String::from_utf8_lossy(b))))?
                    .into(),
            ),
            TIMETZ_OID => {
                let (time, zone) = parse_timetz_text(b)?;
                time_tz(time, zone)
            }
            INET_OID | CIDR_OID => Value::Inet(super::inet::parse_text(b)?),
            MACADDR_OID => Value::Bytea(parse_macaddr(b)?),
            JSONB_OID => Value::Jsonb(super::jsonb::parse_text(b)?),
            oid if super::array::element_type(oid).is_some() => {
                Value::Array(Box::new(super::array::decode(oid, FORMAT_TEXT, b)?))
            }
            oid => return Err(MergeError::UnsupportedType { oid }),
        })
    }
}

/// A timetz as `timetz_cmp` compares it: the UTC instant, then the zone.
fn time_tz(time: i64, zone_west: i32) -> Value {
    Value::TimeTz {
        utc: time + i64::from(zone_west) * 1_000_000,
        zone: zone_west,
    }
}

/// A `"char"`'s text: the byte itself, or `\ooo` octal for bytes past ASCII; empty is 0.
fn parse_char(b: &[u8]) -> Result<u8, MergeError> {
    match b {
        [] => Ok(0),
        [c] => Ok(*c),
        [b'\\', d0 @ b'0'..=b'3', d1 @ b'0'..=b'7', d2 @ b'0'..=b'7'] => {
            Ok((d0 - b'0') * 64 + (d1 - b'0') * 8 + (d2 - b'0'))
        }
        _ => Err(invalid(
            "char",
            format!("{:?} is not one byte", String::from_utf8_lossy(b)),
        )),
    }
}

/// A macaddr's text (`08:00:2b:01:02:03`) as its six bytes.
fn parse_macaddr(b: &[u8]) -> Result<Bytes, MergeError> {
    let bad = || {
        invalid(
            "macaddr",
            format!("{:?} is not a MAC address", String::from_utf8_lossy(b)),
        )
    };
    let text = std::str::from_utf8(b).map_err(|_| bad())?;
    let bytes = text
        .split(':')
        .map(|h| {
            (h.len() == 2)
                .then(|| u8::from_str_radix(h, 16).ok())
                .flatten()
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u8>, MergeError>>()?;
    if bytes.len() != 6 {
        return Err(bad());
    }
    Ok(Bytes::from(bytes))
}

/// bpchar compares as if trailing spaces were absent (`'abc ' = 'abc'`).
fn trim_bpchar(raw: &Bytes) -> Bytes {
    let end = raw.iter().rposition(|b| *b != b' ').map_or(0, |p| p + 1);
    raw.slice(..end)
}

fn parse_float(b: &[u8], name: &'static str) -> Result<f64, MergeError> {
    let s = utf8(b, name)?;
    match s {
        "NaN" => return Ok(f64::NAN),
        "Infinity" => return Ok(f64::INFINITY),
        "-Infinity" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust would also accept "inf" and "nan"; Postgres never prints those.
    if s.bytes()
        .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E')
    {
        return Err(invalid(name, format!("{s:?} is not a number")));
    }
    s.parse::<f64>()
        .map_err(|e| invalid(name, format!("{s:?}: {e}")))
}

/// A bytea's text in either `bytea_output`: `hex` (`\x0aff`) or `escape` (`\ooo` octal
/// escapes and `\\` for a backslash; an escaped value never starts with `\x`).
fn parse_bytea(b: &[u8]) -> Result<Bytes, MergeError> {
    let bad = |why: &str| invalid("bytea", format!("{:?}: {why}", String::from_utf8_lossy(b)));
    if let Some(hex) = b.strip_prefix(b"\\x") {
        if hex.len() % 2 != 0 {
            return Err(bad("odd number of hex digits"));
        }
        let digit = |c: u8| {
            (c as char)
                .to_digit(16)
                .ok_or_else(|| bad("not a hex digit"))
        };
        return hex
            .chunks_exact(2)
            .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
            .collect::<Result<Vec<u8>, MergeError>>()
            .map(Bytes::from);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut rest = b;
    while let Some((&c, tail)) = rest.split_first() {
        if c != b'\\' {
            out.push(c);
            rest = tail;
            continue;
        }
        match tail {
            [b'\\', more @ ..] => {
                out.push(b'\\');
                rest = more;
            }
            [d0 @ b'0'..=b'3', d1 @ b'0'..=b'7', d2 @ b'0'..=b'7', more @ ..] => {
                out.push((d0 - b'0') * 64 + (d1 - b'0') * 8 + (d2 - b'0'));
                rest = more;
            }
            _ => return Err(bad("malformed escape")),
        }
    }
    Ok(Bytes::from(out))
}

fn parse_uuid(b: &[u8]) -> Result<[u8; 16], MergeError> {
    let bad = || {
        invalid(
            "uuid",
            format!("{:?} is not a UUID", String::from_utf8_lossy(b)),
        )
    };
    let hex: Vec<u8> = if b.len() == 36 {
        for (i, c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) != (*c == b'-') {
                return Err(bad());
            }
        }
        b.iter().copied().filter(|c| *c != b'-').collect()
    } else if b.len() == 32 {
        b.to_vec()
    } else {
        return Err(bad());
    };
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

/// Postgres's float ordering: NaN equals NaN and is greater than everything, -0 equals 0.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        // Neither is NaN, so partial_cmp is total here (and treats -0 == 0).
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Orders two values of the same column as Postgres's default btree operator class would (C
/// collation for text). NULL ordering is the sort key's business; here NULL sorts last and
/// values of different kinds (a caller bug) fall back to a fixed kind order.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    compare_in(a, b, &TextOrder::Bytewise)
}

/// [`compare`] with text ordered by `text` (the column's collation).
pub fn compare_in(a: &Value, b: &Value, text: &TextOrder) -> Ordering {
    use Value::*;
    match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Greater,
        (_, Null) => Ordering::Less,
        (Bool(x), Bool(y)) => x.cmp(y),
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => cmp_float(*x, *y),
        (Numeric(x), Numeric(y)) => x.cmp_total(y),
        (Text(x), Text(y)) => text.compare(x, y),
        (Date(x), Date(y)) => x.cmp(y),
        (Timestamp(x), Timestamp(y)) => x.cmp(y),
        (Uuid(x), Uuid(y)) => x.cmp(y),
        (Interval(x), Interval(y)) => x.cmp(y),
        (Bytea(x), Bytea(y)) => x.cmp(y),
        (TimeTz { utc: u1, zone: z1 }, TimeTz { utc: u2, zone: z2 }) => (u1, z1).cmp(&(u2, z2)),
        (Inet(x), Inet(y)) => x.compare(y),
        (Jsonb(x), Jsonb(y)) => super::jsonb::compare(x, y, text),
        (Array(x), Array(y)) => x.compare(y, text),
        _ => kind(a).cmp(&kind(b)),
    }
}

fn kind(v: &Value) -> u8 {
    match v {
        Value::Bool(_) => 0,
        Value::Int(_) => 1,
        Value::Float(_) => 2,
        Value::Numeric(_) => 3,
        Value::Text(_) => 4,
        Value::Date(_) => 5,
        Value::Timestamp(_) => 6,
        Value::Uuid(_) => 7,
        Value::Interval(_) => 9,
        Value::Bytea(_) => 10,
        Value::TimeTz { .. } => 11,
        Value::Inet(_) => 12,
        Value::Jsonb(_) => 13,
        Value::Array(_) => 14,
        Value::Null => 8,
    }
}

impl Value {
    /// Bytes equal exactly for values Postgres's `=` calls equal (so `1.0` and `1.00`, `-0` and
    /// `0`, `'a '` and `'a'` as bpchar group together): the hash key of GROUP BY.
    pub fn canonical_key(&self) -> Vec<u8> {
        let mut v = vec![kind(self)];
        match self {
            Value::Null => {}
            Value::Bool(b) => v.push(*b as u8),
            Value::Int(i) => v.extend_from_slice(&i.to_be_bytes()),
            Value::Float(f) => {
                let f = if *f == 0.0 { 0.0 } else { *f };
                let bits = if f.is_nan() { u64::MAX } else { f.to_bits() };
                v.extend_from_slice(&bits.to_be_bytes());
            }
            Value::Numeric(n) => v.extend_from_slice(&n.canonical_key()),
            Value::Text(t) => v.extend_from_slice(t),
            Value::Date(d) => v.extend_from_slice(&d.to_be_bytes()),
            Value::Timestamp(t) => v.extend_from_slice(&t.to_be_bytes()),
            Value::Uuid(u) => v.extend_from_slice(u),
            Value::Interval(span) => v.extend_from_slice(&span.to_be_bytes()),
            Value::Bytea(b) => v.extend_from_slice(b),
            Value::TimeTz { utc, zone } => {
                v.extend_from_slice(&utc.to_be_bytes());
                v.extend_from_slice(&zone.to_be_bytes());
            }
            Value::Inet(i) => v.extend_from_slice(&i.canonical_key()),
            Value::Jsonb(tokens) => v.extend_from_slice(&super::jsonb::canonical_key(tokens)),
            Value::Array(a) => v.extend_from_slice(&a.canonical_key()),
        }
        v
    }
}

/// Formats a float8 like Postgres 15 with the default `extra_float_digits = 1`: the shortest
/// digits that read back exactly, in exponent form when the decimal exponent is below -4 or
/// at least 15 (`1e+15`, `1.5e-07`).
pub fn format_float8(f: f64) -> String {
    format_shortest(f.is_nan(), f.is_infinite(), f < 0.0, &format!("{f:e}"), 15)
}

/// Formats a float4 like Postgres 15 (exponent form from 1e+06 on: FLT_DIG is 6).
pub fn format_float4(f: f32) -> String {
    format_shortest(f.is_nan(), f.is_infinite(), f < 0.0, &format!("{f:e}"), 6)
}

fn format_shortest(nan: bool, inf: bool, neg: bool, sci: &str, max_fixed_exp: i32) -> String {
    if nan {
        return "NaN".into();
    }
    if inf {
        return if neg { "-Infinity" } else { "Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-7" or "0e0".
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if exp < -4 || exp >= max_fixed_exp {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs());
    }
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}")
    } else {
        let (int, frac) = digits.split_at(int_len);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(oid: u32, s: &str) -> Value {
        ColumnType::new(oid, FORMAT_TEXT)
            .decode(Some(&Bytes::copy_from_slice(s.as_bytes())))
            .unwrap()
    }
    fn bin(oid: u32, b: &[u8]) -> Result<Value, MergeError> {
        ColumnType::new(oid, FORMAT_BINARY).decode(Some(&Bytes::copy_from_slice(b)))
    }

    #[test]
    fn integers_in_both_formats() {
        assert_eq!(text(INT2_OID, "-5"), Value::Int(-5));
        assert_eq!(text(INT8_OID, "9223372036854775807"), Value::Int(i64::MAX));
        assert_eq!(
            bin(INT2_OID, &(-2i16).to_be_bytes()).unwrap(),
            Value::Int(-2)
        );
        assert_eq!(bin(INT4_OID, &7i32.to_be_bytes()).unwrap(), Value::Int(7));
        assert_eq!(
            bin(INT8_OID, &i64::MIN.to_be_bytes()).unwrap(),
            Value::Int(i64::MIN)
        );
        assert!(bin(INT4_OID, &[0, 0, 1]).is_err());
        assert!(ColumnType::new(INT4_OID, 0)
            .decode(Some(&Bytes::from_static(b"12x")))
            .is_err());
    }

    #[test]
    fn nulls_and_unknown_types() {
        assert_eq!(
            ColumnType::new(INT4_OID, 0).decode(None).unwrap(),
            Value::Null
        );
        assert_eq!(
            ColumnType::new(114, 0).decode(None),
            Err(MergeError::UnsupportedType { oid: 114 })
        );
        assert_eq!(
            ColumnType::new(114, 0).check(),
            Err(MergeError::UnsupportedType { oid: 114 })
        );
        assert!(ColumnType::new(INT4_OID, 2).check().is_err());
        assert!(ColumnType::new(INT4_OID, 1).check().is_ok());
    }

    /// time, timetz, "char", oid and macaddr: each list is in Postgres 15's ORDER BY order, and
    /// the binary form decodes to the same values as the text.
    #[test]
    fn times_chars_oids_and_macs_order_like_postgres() {
        let lists: [(u32, &[&str]); 5] = [
            (
                TIME_OID,
                &[
                    "00:00:00",
                    "00:00:00.000001",
                    "13:05:00",
                    "23:59:59.5",
                    "24:00:00",
                ],
            ),
            // 10:00+02 and 08:00+00 are one instant: the zone west of UTC decides.
            (
                TIMETZ_OID,
                &[
                    "10:00:00+02",
                    "08:00:00+00",
                    "08:30:00+00",
                    "07:00:00-05:30",
                ],
            ),
            (CHAR_OID, &["", "A", "Z", "b", "\\200", "\\377"]),
            (OID_OID, &["0", "7", "2147483648", "4294967295"]),
            (
                MACADDR_OID,
                &[
                    "00:00:00:00:00:00",
                    "08:00:2b:01:02:03",
                    "08:00:2b:01:02:ff",
                    "ff:00:00:00:00:00",
                ],
            ),
        ];
        for (oid, sorted) in lists {
            for pair in sorted.windows(2) {
                let (a, b) = (text(oid, pair[0]), text(oid, pair[1]));
                assert_eq!(compare(&a, &b), Ordering::Less, "{oid}: {pair:?}");
            }
        }
        assert_eq!(
            bin(
                TIME_OID,
                &(13 * 3_600_000_000i64 + 5 * 60_000_000).to_be_bytes()
            )
            .unwrap(),
            text(TIME_OID, "13:05:00")
        );
        let mut tz = (10 * 3_600_000_000i64).to_be_bytes().to_vec();
        tz.extend_from_slice(&(-7200i32).to_be_bytes());
        assert_eq!(
            bin(TIMETZ_OID, &tz).unwrap(),
            text(TIMETZ_OID, "10:00:00+02")
        );
        assert!(bin(TIMETZ_OID, &tz[..11]).is_err());
        assert_eq!(bin(CHAR_OID, &[0x80]).unwrap(), text(CHAR_OID, "\\200"));
        assert_eq!(
            bin(OID_OID, &u32::MAX.to_be_bytes()).unwrap(),
            text(OID_OID, "4294967295")
        );
        assert_eq!(
            bin(MACADDR_OID, &[8, 0, 0x2b, 1, 2, 3]).unwrap(),
            text(MACADDR_OID, "08:00:2b:01:02:03")
        );
        for (oid, bad) in [
            (TIME_OID, "25:00:00"),
            (TIMETZ_OID, "10:00:00"),
            (CHAR_OID, "ab"),
            (MACADDR_OID, "08:00:2b"),
        ] {
            assert!(
                ColumnType::new(oid, FORMAT_TEXT)
                    .decode(Some(&Bytes::copy_from_slice(bad.as_bytes())))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn floats_order_like_postgres() {
        let order = [
            "-Infinity",
            "-1.5",
            "0",
            "1e-05",
            "1",
            "1e+300",
            "Infinity",
            "NaN",
        ];
        for (i, a) in order.iter().enumerate() {
            for (j, b) in order.iter().enumerate() {
                assert_eq!(
                    compare(&text(FLOAT8_OID, a), &text(FLOAT8_OID, b)),
                    i.cmp(&j),
                    "{a} {b}"
                );
            }
        }
        assert_eq!(
            compare(&text(FLOAT8_OID, "-0"), &text(FLOAT8_OID, "0")),
            Ordering::Equal
        );
        assert_eq!(
            text(FLOAT8_OID, "-0").canonical_key(),
            text(FLOAT8_OID, "0").canonical_key()
        );
        assert_eq!(
            bin(FLOAT4_OID, &1.5f32.to_be_bytes()).unwrap(),
            text(FLOAT4_OID, "1.5")
        );
        assert_eq!(
            bin(FLOAT4_OID, &0.1f32.to_be_bytes()).unwrap(),
            text(FLOAT4_OID, "0.1")
        );
        assert_eq!(
            bin(FLOAT8_OID, &f64::NAN.to_be_bytes())
                .unwrap()
                .canonical_key(),
            text(FLOAT8_OID, "NaN").canonical_key()
        );
        assert!(ColumnType::new(FLOAT8_OID, 0)
            .decode(Some(&Bytes::from_static(b"inf")))
            .is_err());
    }

    #[test]
    fn float_output_matches_postgres_15() {
        // From `select 1e15::float8, …` on Postgres 15.
        for (f, s) in [
            (1e15, "1e+15"),
            (1e16, "1e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-0.0, "-0"),
            (1e301, "1e+301"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5, "1.5"),
            (100.0, "100"),
            (123456789012345.0, "123456789012345"),
            (-2.25, "-2.25"),
            (0.1f32 as f64, "0.10000000149011612"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(format_float8(f), s);
        }
        for (f, s) in [
            (1e15f32, "1e+15"),
            (1e7, "1e+07"),
            (1e6, "1e+06"),
            (123456789.0, "1.2345679e+08"),
            (0.1 + 0.2, "0.3"),
            (1.0, "1"),
            (99999.0, "99999"),
            (100000.0, "100000"),
            (999999.0, "999999"),
            (1234567.0, "1.234567e+06"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
        ] {
            assert_eq!(format_float4(f), s);
        }
    }

    #[test]
    fn numerics_text_and_binary_agree() {
        let t = text(NUMERIC_OID, "-12.340");
        let b = bin(
            NUMERIC_OID,
            &Numeric::parse_text(b"-12.34")
                .unwrap()
                .encode_binary()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(compare(&t, &b), Ordering::Equal);
        assert_eq!(t.canonical_key(), b.canonical_key());
        assert_eq!(
            compare(&text(NUMERIC_OID, "NaN"), &text(NUMERIC_OID, "Infinity")),
            Ordering::Greater
        );
    }

    #[test]
    fn text_is_bytewise_and_bpchar_ignores_padding() {
        assert_eq!(
            compare(&text(TEXT_OID, "B"), &text(TEXT_OID, "a")),
            Ordering::Less
        );
        assert_eq!(
            compare(&text(TEXT_OID, "ab"), &text(TEXT_OID, "abc")),
            Ordering::Less
        );
        assert_eq!(
            compare(&text(TEXT_OID, "ab "), &text(TEXT_OID, "ab")),
            Ordering::Greater
        );
        assert_eq!(
            compare(&text(BPCHAR_OID, "ab  "), &text(BPCHAR_OID, "ab")),
            Ordering::Equal
        );
        assert_eq!(text(BPCHAR_OID, "   "), Value::Text(Bytes::new()));
        assert_eq!(bin(BPCHAR_OID, b"x ").unwrap(), text(BPCHAR_OID, "x"));
        assert_eq!(
            text(VARCHAR_OID, "é"),
            bin(NAME_OID, "é".as_bytes()).unwrap()
        );
    }

    #[test]
    fn bools() {
        assert_eq!(text(BOOL_OID, "t"), Value::Bool(true));
        assert_eq!(bin(BOOL_OID, &[0]).unwrap(), Value::Bool(false));
        assert!(bin(BOOL_OID, &[2]).is_err());
        assert_eq!(
            compare(&Value::Bool(false), &Value::Bool(true)),
            Ordering::Less
        );
    }

    #[test]
    fn dates_and_timestamps_in_both_formats() {
        assert_eq!(
            text(DATE_OID, "2000-01-02"),
            bin(DATE_OID, &1i32.to_be_bytes()).unwrap()
        );
        assert_eq!(
            text(DATE_OID, "infinity"),
            bin(DATE_OID, &i32::MAX.to_be_bytes()).unwrap()
        );
        assert_eq!(
            text(TIMESTAMPTZ_OID, "2000-01-01 05:30:00+05:30"),
            bin(TIMESTAMPTZ_OID, &0i64.to_be_bytes()).unwrap()
        );
        assert_eq!(
            text(TIMESTAMP_OID, "-infinity"),
            bin(TIMESTAMP_OID, &i64::MIN.to_be_bytes()).unwrap()
        );
        assert_eq!(
            compare(
                &text(TIMESTAMPTZ_OID, "2024-01-01 00:00:00+01"),
                &text(TIMESTAMPTZ_OID, "2023-12-31 23:30:00+00")
            ),
            Ordering::Less
        );
        assert!(ColumnType::new(DATE_OID, 0)
            .decode(Some(&Bytes::from_static(b"01/02/2024")))
            .is_err());
    }

    #[test]
    fn uuids_text_and_binary_agree() {
        let raw: [u8; 16] = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        let b = bin(UUID_OID, &raw).unwrap();
        assert_eq!(text(UUID_OID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), b);
        assert_eq!(text(UUID_OID, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), b);
        assert_eq!(text(UUID_OID, "a0eebc999c0b4ef8bb6d6bb9bd380a11"), b);
        for bad in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(ColumnType::new(UUID_OID, 0)
                .decode(Some(&Bytes::copy_from_slice(bad.as_bytes())))
                .is_err());
        }
        assert!(bin(UUID_OID, &raw[..15]).is_err());
    }

    /// bytea in binary and in both `bytea_output` texts decodes to the same bytes, ordered as
    /// Postgres orders them (memcmp, a prefix first).
    #[test]
    fn bytea_text_binary_and_order() {
        let raw = [0x00u8, 0x5c, 0x7f, 0xff, b'a'];
        let b = bin(BYTEA_OID, &raw).unwrap();
        assert_eq!(text(BYTEA_OID, "\\x005c7fff61"), b);
        assert_eq!(text(BYTEA_OID, "\\x005C7FFF61"), b);
        assert_eq!(text(BYTEA_OID, "\\000\\\\\\177\\377a"), b);
        assert_eq!(text(BYTEA_OID, "\\x"), Value::Bytea(Bytes::new()));
        assert_eq!(text(BYTEA_OID, ""), Value::Bytea(Bytes::new()));
        for bad in ["\\x0", "\\x0g", "\\400", "\\12", "a\\"] {
            assert!(
                ColumnType::new(BYTEA_OID, 0)
                    .decode(Some(&Bytes::copy_from_slice(bad.as_bytes())))
                    .is_err(),
                "{bad}"
            );
        }
        let order = [
            "\\x", "\\x00", "\\x0000", "\\x01", "\\x7f", "\\x80", "\\xff",
        ];
        for pair in order.windows(2) {
            assert_eq!(
                compare(&text(BYTEA_OID, pair[0]), &text(BYTEA_OID, pair[1])),
                Ordering::Less,
                "{pair:?}"
            );
        }
    }

    /// Intervals compare by span in both formats; equal spans group together.
    #[test]
    fn intervals_compare_by_span() {
        let mut one_month = 0i64.to_be_bytes().to_vec();
        one_month.extend_from_slice(&0i32.to_be_bytes());
        one_month.extend_from_slice(&1i32.to_be_bytes());
        let month = bin(INTERVAL_OID, &one_month).unwrap();
        assert_eq!(text(INTERVAL_OID, "30 days"), month);
        assert_eq!(
            month.canonical_key(),
            text(INTERVAL_OID, "1 mon").canonical_key()
        );
        let order = [
            "-1 days +02:00:00",
            "00:00:00",
            "23:59:59.999999",
            "1 day",
            "1 mon 00:00:01",
        ];
        for pair in order.windows(2) {
            assert_eq!(
                compare(&text(INTERVAL_OID, pair[0]), &text(INTERVAL_OID, pair[1])),
                Ordering::Less,
                "{pair:?}"
            );
        }
        assert!(ColumnType::new(INTERVAL_OID, 0)
            .decode(Some(&Bytes::from_static(b"P1D")))
            .is_err());
    }
}
