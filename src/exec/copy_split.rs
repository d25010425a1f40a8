//! Splitting a `COPY … FROM STDIN` stream into rows and reading each row's shard key, so the rows
//! of one COPY can go to the shards that own them. Pure: bytes in, `(key, row bytes)` out. Knows the
//! three formats Postgres accepts (text, CSV, binary) well enough to find row boundaries (rows
//! span CopyData messages; CSV quoted fields hold newlines; binary tuples carry their own lengths)
//! and to decode one field; every other field passes through untouched for the shard to parse.

use bytes::{Buf, BytesMut};

use crate::router::copy_facts::CopyFacts;
pub use crate::router::copy_facts::CopyFormat;
use crate::router::{KeyType, ShardKey};

/// How to read one COPY stream: its format and options, and which field holds the shard key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSpec {
    pub format: CopyFormat,
    /// Field separator (text: tab, CSV: comma by default).
    pub delimiter: u8,
    /// The string that stands for NULL (text: `\N`, CSV: empty by default).
    pub null: Vec<u8>,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character (the quote by default).
    pub escape: u8,
    /// The first line is a header (text and CSV).
    pub header: bool,
    /// Position of the shard key among the COPY's fields (0-based).
    pub key_index: usize,
    /// The key column's type, which says how its field is read.
    pub key_type: KeyType,
    /// Name of the key column, for error messages.
    pub key_name: String,
    /// CSV `FORCE_NOT_NULL` names the key: an unquoted null string is an empty string.
    pub key_force_not_null: bool,
    /// CSV `FORCE_NULL` names the key: a quoted null string is NULL too.
    pub key_force_null: bool,
}

impl SplitSpec {
    /// The spec a COPY statement's options describe, with the key `key_name` at `key_index`.
    pub fn from_facts(facts: &CopyFacts, key_index: usize, key_name: &str) -> SplitSpec {
        let mut spec = SplitSpec::defaults(facts.format, key_index, key_name);
        if let Some(d) = facts.delimiter {
            spec.delimiter = d;
        }
        if let Some(n) = &facts.null {
            spec.null = n.as_bytes().to_vec();
        }
        if let Some(q) = facts.quote {
            spec.quote = q;
            spec.escape = q;
        }
        if let Some(e) = facts.escape {
            spec.escape = e;
        }
        spec.header = facts.header && facts.format != CopyFormat::Binary;
        spec.key_force_not_null = facts.force_not_null.contains(key_name);
        spec.key_force_null = facts.force_null.contains(key_name);
        spec
    }

    /// The same spec for a key column of type `key_type`.
    pub fn with_key_type(mut self, key_type: KeyType) -> SplitSpec {
        self.key_type = key_type;
        self
    }

    /// Postgres's defaults for `format`, with the key at `key_index`.
    pub fn defaults(format: CopyFormat, key_index: usize, key_name: &str) -> SplitSpec {
        SplitSpec {
            format,
            delimiter: if format == CopyFormat::Csv {
                b','
            } else {
                b'\t'
            },
            null: if format == CopyFormat::Csv {
                Vec::new()
            } else {
                b"\\N".to_vec()
            },
            quote: b'"',
            escape: b'"',
            header: false,
            key_index,
            key_type: KeyType::Int,
            key_name: key_name.to_string(),
            key_force_not_null: false,
            key_force_null: false,
        }
    }
}

/// Why a COPY stream cannot be split; the whole COPY fails with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("null value in column \"{column}\" of COPY line {line}: the shard key must not be null, pgshard cannot place the row")]
    NullKey { column: String, line: u64 },
    #[error("invalid input syntax for type {type_name}: \"{value}\" (shard key column \"{column}\", COPY line {line})")]
    BadKey {
        type_name: &'static str,
        column: String,
        value: String,
        line: u64,
    },
    #[error("missing data for column \"{column}\" (the shard key) in COPY line {line}")]
    MissingKey { column: String, line: u64 },
    #[error("invalid COPY data: {detail}")]
    Format { detail: String },
}

impl SplitError {
    /// The SQLSTATE Postgres uses for the same problem.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SplitError::NullKey { .. } => "23502",
            SplitError::BadKey { .. } => "22P02",
            SplitError::MissingKey { .. } | SplitError::Format { .. } => "22P04",
        }
    }
}

/// The 11-byte signature that starts a binary COPY stream.
pub const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// The binary trailer: a field count of -1.
pub const BINARY_TRAILER: &[u8; 2] = &[0xff, 0xff];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Nl,
    Cr,
    CrNl,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::Nl => b"\n",
            Eol::Cr => b"\r",
            Eol::CrNl => b"\r\n",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the header line (text/CSV with HEADER) or the binary file header.
    Header,
    Rows,
    /// The end-of-data marker (`\.` or the binary trailer) was read.
    Ended,
}

/// Where the scan of the row at the front of the buffer stands, so a row arriving in many pieces
/// is scanned once.
#[derive(Debug, Default, Clone)]
struct Scan {
    pos: usize,
    in_quote: bool,
    last_was_esc: bool,
    backslash: bool,
    /// Binary: the tuple's field count, once read.
    fields: Option<usize>,
    /// Binary: fields of the tuple walked so far.
    field_no: usize,
    /// Binary: the key, once its field was read.
    key: Option<ShardKey>,
}

/// A complete row found by the scanner.
enum Found {
    /// Bytes `..content` are the row, `..end` with its line end.
    Row { content: usize, end: usize },
    /// The end-of-data marker; `content` bytes before it form a last row when not empty.
    Marker { content: usize },
}

/// Splits one COPY stream incrementally. Feed it each CopyData payload in order, then call
/// `finish` at CopyDone. Memory is bounded by the largest row plus one payload.
pub struct CopySplitter {
    spec: SplitSpec,
    buf: BytesMut,
    stage: Stage,
    eol: Option<Eol>,
    scan: Scan,
    prelude: Vec<u8>,
    /// Rows read so far, the header included (for error messages, like Postgres's line numbers).
    line: u64,
    rows: u64,
}

impl CopySplitter {
    pub fn new(spec: SplitSpec) -> CopySplitter {
        let stage = if spec.header || spec.format == CopyFormat::Binary {
            Stage::Header
        } else {
            Stage::Rows
        };
        CopySplitter {
            spec,
            buf: BytesMut::new(),
            stage,
            eol: None,
            scan: Scan::default(),
            prelude: Vec::new(),
            line: 0,
            rows: 0,
        }
    }

    /// What every shard's COPY must receive before its first row: the header line (text/CSV
    /// with HEADER, so each shard skips or checks it as Postgres would) or the binary file header.
    /// Complete once the first row was emitted or `finish` returned.
    pub fn prelude(&self) -> &[u8] {
        &self.prelude
    }

    /// What every shard's COPY must receive after its last row (the binary trailer).
    pub fn postlude(&self) -> &'static [u8] {
        if self.spec.format == CopyFormat::Binary {
            BINARY_TRAILER
        } else {
            b""
        }
    }

    /// Data rows emitted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Takes one CopyData payload; calls `emit(key, row bytes)` for every row it completes.
    pub fn feed<F: FnMut(ShardKey, &[u8])>(
        &mut self,
        data: &[u8],
        emit: F,
    ) -> Result<(), SplitError> {
        if self.stage == Stage::Ended {
            if self.spec.format == CopyFormat::Binary && !data.is_empty() {
                return Err(format_error("received copy data after EOF marker"));
            }
            // Postgres ignores whatever follows `\.`.
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        self.drain(false, emit)
    }

    /// Ends the stream (CopyDone): a last row without a line end is still a row.
    pub fn finish<F: FnMut(ShardKey, &[u8])>(&mut self, emit: F) -> Result<(), SplitError> {
        if self.stage == Stage::Ended {
            return Ok(());
        }
        self.drain(true, emit)?;
        if self.spec.format == CopyFormat::Binary {
            return match self.stage {
                Stage::Header => Err(format_error("COPY file signature not recognized")),
                _ if !self.buf.is_empty() => Err(format_error("unexpected EOF in COPY data")),
                _ => Ok(()),
            };
        }
        if self.scan.in_quote {
            return Err(format_error("unterminated CSV quoted field"));
        }
        Ok(())
    }

    fn drain<F: FnMut(ShardKey, &[u8])>(
        &mut self,
        last: bool,
        mut emit: F,
    ) -> Result<(), SplitError> {
        if self.spec.format == CopyFormat::Binary {
            return self.drain_binary(emit);
        }
        while self.stage != Stage::Ended {
            let Some(found) = self.scan_line(last) else {
                return Ok(());
            };
            self.line += 1;
            let (content, end, marker) = match found {
                Found::Row { content, end } => (content, end, false),
                Found::Marker { content } => (content, content, true),
            };
            if marker && content == 0 {
                self.stage = Stage::Ended;
                self.buf.clear();
                return Ok(());
            }
            let row = &self.buf[..end];
            if self.stage == Stage::Header {
                self.prelude.extend_from_slice(row);
                if marker {
                    self.prelude
                        .extend_from_slice(self.eol.unwrap_or(Eol::Nl).bytes());
                }
                self.stage = Stage::Rows;
            } else {
                let key = self.key_of(&row[..content])?;
                self.rows += 1;
                if marker {
                    let mut with_eol = row.to_vec();
                    with_eol.extend_from_slice(self.eol.unwrap_or(Eol::Nl).bytes());
                    emit(key, &with_eol);
                } else {
                    emit(key, row);
                }
            }
            if marker {
                self.stage = Stage::Ended;
                self.buf.clear();
                return Ok(());
            }
            self.buf.advance(end);
            self.scan = Scan::default();
        }
        Ok(())
    }

    /// Finds the end of the text/CSV row at the front of the buffer, resuming an earlier scan.
    fn scan_line(&mut self, last: bool) -> Option<Found> {
        let csv = self.spec.format == CopyFormat::Csv;
        let quote = self.spec.quote;
        // Like Postgres: an escape equal to the quote is no escape, the quote just toggles.
        let escape = (self.spec.escape != quote).then_some(self.spec.escape);
        let data = &self.buf[..];
        let s = &mut self.scan;
        while s.pos < data.len() {
            let c = data[s.pos];
            if !csv {
                if s.backslash {
                    s.backslash = false;
                    if c == b'.' {
                        // `\.` ends the data; what precedes it on its line is a last row.
                        return Some(Found::Marker { content: s.pos - 1 });
                    }
                    s.pos += 1;
                    continue;
                }
                if c == b'\\' {
                    s.backslash = true;
                    s.pos += 1;
                    continue;
                }
            } else {
                if s.pos == 0 && c == b'\\' && !s.in_quote {
                    // `\.` alone on a line ends CSV data.
                    match data.get(1) {
                        None if !last => return None,
                        Some(b'.') => match data.get(2) {
                            None if !last => return None,
                            None | Some(b'\r') | Some(b'\n') => {
                                return Some(Found::Marker { content: 0 })
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                }
                if s.in_quote && Some(c) == escape {
                    s.last_was_esc = !s.last_was_esc;
                }
                if c == quote && !s.last_was_esc {
                    s.in_quote = !s.in_quote;
                }
                if Some(c) != escape {
                    s.last_was_esc = false;
                }
                if s.in_quote {
                    s.pos += 1;
                    continue;
                }
            }
            match (c, self.eol) {
                (b'\n', None) | (b'\n', Some(Eol::Nl)) => {
                    self.eol = Some(Eol::Nl);
                    return Some(Found::Row {
                        content: s.pos,
                        end: s.pos + 1,
                    });
                }
                (b'\r', None) | (b'\r', Some(Eol::CrNl)) => match data.get(s.pos + 1) {
                    None if !last => return None,
                    Some(b'\n') => {
                        self.eol = Some(Eol::CrNl);
                        return Some(Found::Row {
                            content: s.pos,
                            end: s.pos + 2,
                        });
                    }
                    _ if self.eol.is_none() => {
                        self.eol = Some(Eol::Cr);
                        return Some(Found::Row {
                            content: s.pos,
                            end: s.pos + 1,
                        });
                    }
                    _ => {}
                },
                (b'\r', Some(Eol::Cr)) => {
                    return Some(Found::Row {
                        content: s.pos,
                        end: s.pos + 1,
                    })
                }
                _ => {}
            }
            s.pos += 1;
        }
        if last && !data.is_empty() {
            if !csv && s.backslash {
                // A lone backslash at the very end: the shard reports it; keep the bytes.
                s.backslash = false;
            }
            if csv && s.in_quote {
                return None;
            }
            return Some(Found::Row {
                content: data.len(),
                end: data.len(),
            });
        }
        None
    }

    /// The shard key of one text/CSV row (without its line end).
    fn key_of(&self, row: &[u8]) -> Result<ShardKey, SplitError> {
        let field = match self.spec.format {
            CopyFormat::Csv => csv_field(row, &self.spec),
            _ => text_field(row, &self.spec),
        };
        let Some(field) = field else {
            return Err(SplitError::MissingKey {
                column: self.spec.key_name.clone(),
                line: self.line,
            });
        };
        let Some(value) = field else {
            return Err(SplitError::NullKey {
                column: self.spec.key_name.clone(),
                line: self.line,
            });
        };
        let key = match self.spec.key_type {
            KeyType::Int => parse_int8(&value).map(ShardKey::Int),
            ty => std::str::from_utf8(&value)
                .ok()
                .and_then(|t| ty.parse_text(t)),
        };
        key.ok_or_else(|| SplitError::BadKey {
            type_name: self.spec.key_type.sql_name(),
            column: self.spec.key_name.clone(),
            value: String::from_utf8_lossy(&value).into_owned(),
            line: self.line,
        })
    }

    fn drain_binary<F: FnMut(ShardKey, &[u8])>(&mut self, mut emit: F) -> Result<(), SplitError> {
        if self.stage == Stage::Header {
            if self.buf.len() < 19 {
                if !BINARY_SIGNATURE.starts_with(&self.buf[..self.buf.len().min(11)]) {
                    return Err(format_error("COPY file signature not recognized"));
                }
                return Ok(());
            }
            if &self.buf[..11] != BINARY_SIGNATURE {
                return Err(format_error("COPY file signature not recognized"));
            }
            let ext = be_u32(&self.buf[15..19]) as usize;
            let Some(total) = 19usize.checked_add(ext) else {
                return Err(format_error("invalid COPY file header (wrong length)"));
            };
            if self.buf.len() < total {
                return Ok(());
            }
            self.prelude = self.buf[..total].to_vec();
            self.buf.advance(total);
            self.stage = Stage::Rows;
        }
        while self.stage == Stage::Rows {
            let data = &self.buf[..];
            let s = &mut self.scan;
            let count = match s.fields {
                Some(n) => n,
                None => {
                    if data.len() < 2 {
                        return Ok(());
                    }
                    let n = i16::from_be_bytes([data[0], data[1]]);
                    if n == -1 {
                        self.stage = Stage::Ended;
                        if data.len() > 2 {
                            return Err(format_error("received copy data after EOF marker"));
                        }
                        self.buf.clear();
                        return Ok(());
                    }
                    if n < 0 {
                        return Err(format_error(&format!("invalid field count {n}")));
                    }
                    self.line += 1;
                    s.fields = Some(n as usize);
                    s.pos = 2;
                    n as usize
                }
            };
            while s.field_no < count {
                if data.len() < s.pos + 4 {
                    return Ok(());
                }
                let len = i32::from_be_bytes([
                    data[s.pos],
                    data[s.pos + 1],
                    data[s.pos + 2],
                    data[s.pos + 3],
                ]);
                if len < -1 {
                    return Err(format_error("invalid field size"));
                }
                let size = len.max(0) as usize;
                if data.len() - (s.pos + 4) < size {
                    return Ok(());
                }
                if s.field_no == self.spec.key_index {
                    let value = &data[s.pos + 4..s.pos + 4 + size];
                    s.key = Some(binary_key(len, value, &self.spec, self.line)?);
                }
                s.pos += 4 + size;
                s.field_no += 1;
            }
            let Some(key) = s.key.take() else {
                return Err(SplitError::MissingKey {
                    column: self.spec.key_name.clone(),
                    line: self.line,
                });
            };
            let end = s.pos;
            self.rows += 1;
            emit(key, &data[..end]);
            self.buf.advance(end);
            self.scan = Scan::default();
        }
        Ok(())
    }
}

fn format_error(detail: &str) -> SplitError {
    SplitError::Format {
        detail: detail.to_string(),
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A binary key field: int8, int4 or int2 by its length; 16 uuid bytes; UTF-8 text.
fn binary_key(len: i32, value: &[u8], spec: &SplitSpec, line: u64) -> Result<ShardKey, SplitError> {
    if len == -1 {
        return Err(SplitError::NullKey {
            column: spec.key_name.clone(),
            line,
        });
    }
    spec.key_type
        .parse_binary(value)
        .ok_or_else(|| SplitError::BadKey {
            type_name: spec.key_type.sql_name(),
            column: spec.key_name.clone(),
            value: format!("binary value of {len} bytes"),
            line,
        })
}

/// Parses an integer the way Postgres's int8 input does (surrounding whitespace, a sign, decimal
/// digits).
pub fn parse_int8(text: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(text).ok()?;
    let s = s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    if s.is_empty() || s.starts_with("+-") || s.starts_with("-+") {
        return None;
    }
    s.parse().ok()
}

/// Field `spec.key_index` of a text-format row: `None` when the row is shorter, `Some(None)` for
/// NULL, else the de-escaped value.
fn text_field(row: &[u8], spec: &SplitSpec) -> Option<Option<Vec<u8>>> {
    let mut field = 0usize;
    let mut start = 0usize;
    let mut i = 0usize;
    while i <= row.len() {
        if i == row.len() || row[i] == spec.delimiter {
            if field == spec.key_index {
                let raw = &row[start..i];
                if raw == spec.null.as_slice() {
                    return Some(None);
                }
                return Some(Some(text_unescape(raw)));
            }
            field += 1;
            start = i + 1;
            i += 1;
            continue;
        }
        if row[i] == b'\\' {
            i += 2;
            if i > row.len() {
                i = row.len();
            }
            continue;
        }
        i += 1;
    }
    None
}

/// Undoes text-format backslash escapes.
fn text_unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' || i >= raw.len() {
            out.push(c);
            continue;
        }
        let e = raw[i];
        i += 1;
        match e {
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            other => out.push(other),
        }
    }
    out
}

/// Field `spec.key_index` of a CSV row, like `text_field`.
fn csv_field(row: &[u8], spec: &SplitSpec) -> Option<Option<Vec<u8>>> {
    let mut field = 0usize;
    let mut i = 0usize;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut saw_quote = false;
        let mut in_quote = false;
        while i < row.len() {
            let c = row[i];
            if in_quote {
                if c == spec.escape
                    && matches!(row.get(i + 1), Some(n) if *n == spec.escape || *n == spec.quote)
                {
                    value.push(row[i + 1]);
                    i += 2;
                    continue;
                }
                if c == spec.quote {
                    in_quote = false;
                } else {
                    value.push(c);
                }
                i += 1;
                continue;
            }
            if c == spec.delimiter {
                break;
            }
            if c == spec.quote {
                saw_quote = true;
                in_quote = true;
            } else {
                value.push(c);
            }
            i += 1;
        }
        if field == spec.key_index {
            let raw = &row[start..i];
            let null_raw = !saw_quote && raw == spec.null.as_slice() && !spec.key_force_not_null;
            let null_quoted = saw_quote && spec.key_force_null && value == spec.null;
            if null_raw || null_quoted {
                return Some(None);
            }
            return Some(Some(value));
        }
        if i >= row.len() {
            return None;
        }
        field += 1;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (key, row) pairs and the prelude.
    type Split = (Vec<(ShardKey, Vec<u8>)>, Vec<u8>);

    /// Feeds `input` in pieces of `step` bytes; returns (key, row) pairs and the prelude.
    fn split(spec: &SplitSpec, input: &[u8], step: usize) -> Result<Split, SplitError> {
        let mut s = CopySplitter::new(spec.clone());
        let mut rows = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            s.feed(chunk, |k, r| rows.push((k, r.to_vec())))?;
        }
        s.finish(|k, r| rows.push((k, r.to_vec())))?;
        assert_eq!(s.rows(), rows.len() as u64);
        Ok((rows, s.prelude().to_vec()))
    }

    /// Splits at every chunk size from 1 to the whole input and checks all agree.
    fn split_all_ways(spec: &SplitSpec, input: &[u8]) -> Result<Split, SplitError> {
        let whole = split(spec, input, input.len().max(1));
        for step in 1..input.len().min(40) {
            assert_eq!(split(spec, input, step), whole, "chunk size {step}");
        }
        whole
    }

    fn keys(rows: &[(ShardKey, Vec<u8>)]) -> Vec<i64> {
        rows.iter().filter_map(|(k, _)| k.as_int()).collect()
    }

    fn text(key_index: usize) -> SplitSpec {
        SplitSpec::defaults(CopyFormat::Text, key_index, "user_id")
    }

    fn csv(key_index: usize) -> SplitSpec {
        SplitSpec::defaults(CopyFormat::Csv, key_index, "user_id")
    }

    #[test]
    fn text_rows_keep_their_bytes() {
        let input = b"1\tada\n22\tbob\\tby\n-3\t\\N\n";
        let (rows, prelude) = split_all_ways(&text(0), input).unwrap();
        assert_eq!(keys(&rows), vec![1, 22, -3]);
        assert_eq!(rows[1].1, b"22\tbob\\tby\n".to_vec());
        assert!(prelude.is_empty());
        let joined: Vec<u8> = rows.iter().flat_map(|(_, r)| r.clone()).collect();
        assert_eq!(joined, input.to_vec());
    }

    #[test]
    fn text_key_in_any_column_with_escapes() {
        let input = b"a\\tb\t7\tz\nx\\\ty\t 8 \tz\nq\t\\061\\x32\tz\n";
        let (rows, _) = split_all_ways(&text(1), input).unwrap();
        // An escaped delimiter does not split; octal and hex escapes are decoded; spaces trimmed.
        assert_eq!(keys(&rows), vec![7, 8, 12]);
    }

    #[test]
    fn text_escaped_newline_stays_in_the_row() {
        let input = b"1\tline\\\nnext\n2\tb\n";
        let (rows, _) = split_all_ways(&text(0), input).unwrap();
        assert_eq!(keys(&rows), vec![1, 2]);
        assert_eq!(rows[0].1, b"1\tline\\\nnext\n".to_vec());
    }

    #[test]
    fn text_custom_delimiter_and_null() {
        let mut spec = text(1);
        spec.delimiter = b'|';
        spec.null = b"NULL".to_vec();
        let (rows, _) = split_all_ways(&spec, b"a|5\nb|6|\\N\n").unwrap();
        assert_eq!(keys(&rows), vec![5, 6]);
        let err = split(&spec, b"a|5\nb|NULL\n", 100).unwrap_err();
        assert!(
            matches!(err, SplitError::NullKey { line: 2, .. }),
            "{err:?}"
        );
        assert_eq!(err.sqlstate(), "23502");
        // With a custom null string, \N is not NULL (and not a number).
        let err = split(&spec, b"b|\\N\n", 100).unwrap_err();
        assert_eq!(err.sqlstate(), "22P02");
    }

    #[test]
    fn text_null_bad_and_missing_keys_fail() {
        let err = split(&text(0), b"1\ta\n\\N\tb\n", 100).unwrap_err();
        assert_eq!(
            err,
            SplitError::NullKey {
                column: "user_id".into(),
                line: 2
            }
        );
        let err = split(&text(0), b"1\ta\nabc\tb\n", 100).unwrap_err();
        assert!(matches!(err, SplitError::BadKey { ref value, line: 2, .. } if value == "abc"));
        for bad in [
            &b"\tb\n"[..],
            b"1.5\tb\n",
            b"99999999999999999999\tx\n",
            b"+-1\tx\n",
        ] {
            assert_eq!(split(&text(0), bad, 100).unwrap_err().sqlstate(), "22P02");
        }
        let err = split(&text(2), b"1\ta\n", 100).unwrap_err();
        assert!(matches!(err, SplitError::MissingKey { line: 1, .. }));
        assert_eq!(err.sqlstate(), "22P04");
    }

    #[test]
    fn text_extreme_keys() {
        let input = format!("{}\tx\n{}\ty\n+4\tz\n", i64::MIN, i64::MAX);
        let (rows, _) = split_all_ways(&text(0), input.as_bytes()).unwrap();
        assert_eq!(keys(&rows), vec![i64::MIN, i64::MAX, 4]);
    }

    #[test]
    fn text_end_marker_stops_the_data() {
        let (rows, _) = split_all_ways(&text(0), b"1\ta\n\\.\n2\tb\n").unwrap();
        assert_eq!(keys(&rows), vec![1]);
        // Data before `\.` on the same line is a last row, given a line end.
        let (rows, _) = split_all_ways(&text(0), b"1\ta\n2\tb\\.\n3\n").unwrap();
        assert_eq!(keys(&rows), vec![1, 2]);
        assert_eq!(rows[1].1, b"2\tb\n".to_vec());
        // An escaped backslash before a period is data.
        let (rows, _) = split_all_ways(&text(0), b"1\t\\\\.\n2\n").unwrap();
        assert_eq!(keys(&rows), vec![1, 2]);
        // Whatever follows the marker, even in later payloads, is ignored.
        let mut s = CopySplitter::new(text(0));
        let mut n = 0;
        s.feed(b"5\n\\.\n", |_, _| n += 1).unwrap();
        s.feed(b"not a number\n", |_, _| n += 1).unwrap();
        s.finish(|_, _| n += 1).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn last_row_without_line_end() {
        let (rows, _) = split_all_ways(&text(0), b"1\ta\n2\tb").unwrap();
        assert_eq!(keys(&rows), vec![1, 2]);
        assert_eq!(rows[1].1, b"2\tb".to_vec());
        let (rows, _) = split_all_ways(&text(0), b"").unwrap();
        assert!(rows.is_empty());
    }

    #[test]
    fn crlf_and_cr_line_ends() {
        let (rows, _) = split_all_ways(&text(0), b"1\ta\r\n2\tb\r\n").unwrap();
        assert_eq!(keys(&rows), vec![1, 2]);
        assert_eq!(rows[0].1, b"1\ta\r\n".to_vec());
        let (rows, _) = split_all_ways(&text(0), b"1\ta\r2\tb\r3").unwrap();
        assert_eq!(keys(&rows), vec![1, 2, 3]);
        let (rows, _) = split_all_ways(&csv(0), b"1,\"a\r\nb\"\r\n2,c\r\n").unwrap();
        assert_eq!(keys(&rows), vec![1, 2]);
    }

    #[test]
    fn header_is_kept_as_prelude() {
        let mut spec = csv(1);
        spec.header = true;
        let input = b"name,user_id\nada,1\n\"b,\"\"o\"\"\nb\",2\n";
        let (rows, prelude) = split_all_ways(&spec, input).unwrap();
        assert_eq!(prelude, b"name,user_id\n".to_vec());
        assert_eq!(keys(&rows), vec![1, 2]);
        assert_eq!(rows[1].1, b"\"b,\"\"o\"\"\nb\",2\n".to_vec());
        let mut spec = text(0);
        spec.header = true;
        let (rows, prelude) = split_all_ways(&spec, b"user_id\tname\n3\tx\n").unwrap();
        assert_eq!(prelude, b"user_id\tname\n".to_vec());
        assert_eq!(keys(&rows), vec![3]);
        // A header alone is no row.
        let (rows, prelude) = split_all_ways(&spec, b"user_id\tname\n").unwrap();
        assert!(rows.is_empty());
        assert_eq!(prelude, b"user_id\tname\n".to_vec());
    }

    #[test]
    fn csv_quoted_fields() {
        let input = b"\"1\",\"multi\nline, with comma\"\n\" 2 \",x\n3,\"\"\"quoted\"\"\"\n";
        let (rows, _) = split_all_ways(&csv(0), input).unwrap();
        assert_eq!(keys(&rows), vec![1, 2, 3]);
        let (rows, _) = split_all_ways(&csv(1), b"\"a\nb\",10\n,11\n\"x,\"\"\",12\n").unwrap();
        assert_eq!(keys(&rows), vec![10, 11, 12]);
    }

    #[test]
    fn csv_nulls_and_forcing() {
        // Unquoted empty is NULL; quoted empty is an empty string (not a number).
        let err = split(&csv(0), b"1,a\n,b\n", 100).unwrap_err();
        assert!(matches!(err, SplitError::NullKey { line: 2, .. }));
        let err = split(&csv(0), b"\"\",b\n", 100).unwrap_err();
        assert_eq!(err.sqlstate(), "22P02");
        let mut spec = csv(0);
        spec.key_force_not_null = true;
        assert_eq!(split(&spec, b",b\n", 100).unwrap_err().sqlstate(), "22P02");
        let mut spec = csv(0);
        spec.null = b"NA".to_vec();
        spec.key_force_null = true;
        assert_eq!(
            split(&spec, b"\"NA\",b\n", 100).unwrap_err().sqlstate(),
            "23502"
        );
        spec.key_force_null = false;
        assert_eq!(
            split(&spec, b"\"NA\",b\n", 100).unwrap_err().sqlstate(),
            "22P02"
        );
    }

    #[test]
    fn csv_distinct_escape_and_quote() {
        let mut spec = csv(1);
        spec.quote = b'\'';
        spec.escape = b'\\';
        spec.delimiter = b';';
        let input = b"'it\\'s; \n fine';4\n'back\\\\';5\n";
        let (rows, _) = split_all_ways(&spec, input).unwrap();
        assert_eq!(keys(&rows), vec![4, 5]);
    }

    #[test]
    fn csv_end_marker_and_unterminated_quote() {
        let (rows, _) = split_all_ways(&csv(0), b"1,a\n\\.\n2,b\n").unwrap();
        assert_eq!(keys(&rows), vec![1]);
        let (rows, _) = split_all_ways(&csv(0), b"1,a\n\\.").unwrap();
        assert_eq!(keys(&rows), vec![1]);
        // Inside quotes, `\.` is data.
        let (rows, _) = split_all_ways(&csv(1), b"\"x\n\\.\n\",7\n").unwrap();
        assert_eq!(keys(&rows), vec![7]);
        let err = split(&csv(0), b"1,\"open\n", 100).unwrap_err();
        assert_eq!(err.sqlstate(), "22P04");
    }

    fn binary_stream(rows: &[Vec<Option<Vec<u8>>>], trailer: bool) -> Vec<u8> {
        let mut out = BINARY_SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in row {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                }
            }
        }
        if trailer {
            out.extend_from_slice(BINARY_TRAILER);
        }
        out
    }

    #[test]
    fn binary_rows_by_key_width() {
        let input = binary_stream(
            &[
                vec![Some(7i64.to_be_bytes().to_vec()), Some(b"ada".to_vec())],
                vec![Some((-9i32).to_be_bytes().to_vec()), None],
                vec![Some(300i16.to_be_bytes().to_vec()), Some(Vec::new())],
            ],
            true,
        );
        let (rows, prelude) =
            split_all_ways(&SplitSpec::defaults(CopyFormat::Binary, 0, "k"), &input).unwrap();
        assert_eq!(keys(&rows), vec![7, -9, 300]);
        assert_eq!(prelude.len(), 23);
        // Header, rows and trailer put back together are the input.
        let mut again = prelude.clone();
        for (_, r) in &rows {
            again.extend_from_slice(r);
        }
        again.extend_from_slice(BINARY_TRAILER);
        assert_eq!(again, input);
        // The trailer is optional at the end of the stream.
        let input = binary_stream(&[vec![Some(5i64.to_be_bytes().to_vec())]], false);
        let (rows, _) =
            split_all_ways(&SplitSpec::defaults(CopyFormat::Binary, 0, "k"), &input).unwrap();
        assert_eq!(keys(&rows), vec![5]);
    }

    #[test]
    fn binary_key_in_second_field() {
        let input = binary_stream(
            &[vec![
                Some(b"x".to_vec()),
                Some(42i64.to_be_bytes().to_vec()),
            ]],
            true,
        );
        let (rows, _) =
            split_all_ways(&SplitSpec::defaults(CopyFormat::Binary, 1, "k"), &input).unwrap();
        assert_eq!(keys(&rows), vec![42]);
    }

    #[test]
    fn binary_errors() {
        let spec = SplitSpec::defaults(CopyFormat::Binary, 0, "k");
        let null = binary_stream(&[vec![None]], true);
        assert_eq!(split(&spec, &null, 7).unwrap_err().sqlstate(), "23502");
        let odd = binary_stream(&[vec![Some(vec![1, 2, 3])]], true);
        assert_eq!(split(&spec, &odd, 7).unwrap_err().sqlstate(), "22P02");
        let short = binary_stream(&[vec![]], true);
        assert!(matches!(
            split(&spec, &short, 7).unwrap_err(),
            SplitError::MissingKey { .. }
        ));
        assert!(matches!(
            split(&spec, b"PGCOPX\n\xff\r\n\0", 3).unwrap_err(),
            SplitError::Format { .. }
        ));
        assert!(matches!(
            split(&spec, b"PGCOPY\n", 3).unwrap_err(),
            SplitError::Format { .. }
        ));
        let mut after = binary_stream(&[], true);
        after.push(0);
        assert!(split(&spec, &after, 100).is_err());
        let mut truncated = binary_stream(&[vec![Some(1i64.to_be_bytes().to_vec())]], false);
        truncated.pop();
        assert!(matches!(
            split(&spec, &truncated, 5).unwrap_err(),
            SplitError::Format { .. }
        ));
        let mut negative = binary_stream(&[], false);
        negative.extend_from_slice(&1i16.to_be_bytes());
        negative.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(split(&spec, &negative, 100).is_err());
    }

    #[test]
    fn malformed_input_never_panics() {
        // Pseudo-random bytes in every format and chunking: errors are fine, panics are not.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..300 {
            let mut input = Vec::new();
            if round % 3 == 0 {
                input.extend_from_slice(BINARY_SIGNATURE);
            }
            for _ in 0..(round % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = (x % 256) as u8;
                input.push(match b % 8 {
                    0 => b'\n',
                    1 => b'\\',
                    2 => b'"',
                    3 => b',',
                    4 => b'\t',
                    5 => b'0' + (b % 10),
                    _ => b,
                });
            }
            for format in [CopyFormat::Text, CopyFormat::Csv, CopyFormat::Binary] {
                let mut spec = SplitSpec::defaults(format, round % 3, "k");
                spec.header = round % 2 == 0;
                for step in [1, 3, 64] {
                    let _ = split(&spec, &input, step);
                }
            }
        }
    }

    #[test]
    fn uuid_and_text_keys_in_every_format() {
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let ub = crate::router::key_type::parse_uuid(u).unwrap();
        let text_in = format!("{u}\tx\n{}\ty\n", u.to_uppercase());
        let (rows, _) =
            split_all_ways(&text(0).with_key_type(KeyType::Uuid), text_in.as_bytes()).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            vec![ShardKey::Uuid(ub), ShardKey::Uuid(ub)]
        );
        let (rows, _) = split_all_ways(
            &csv(1).with_key_type(KeyType::Text),
            "1,\"a, b\"\n2,plain\n3,tab\\tnot escaped\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            ["a, b", "plain", "tab\\tnot escaped"].map(|t| ShardKey::Text(t.into()))
        );
        // Text format unescapes the field before hashing it.
        let (rows, _) =
            split_all_ways(&text(0).with_key_type(KeyType::Text), b"a\\tb\t1\n").unwrap();
        assert_eq!(rows[0].0, ShardKey::Text("a\tb".into()));
        let err = split_all_ways(&text(0).with_key_type(KeyType::Uuid), b"nope\t1\n").unwrap_err();
        assert_eq!(err.sqlstate(), "22P02");
        assert!(err.to_string().contains("type uuid"), "{err}");
        // Binary: 16 uuid bytes, UTF-8 text.
        let mut bin = BINARY_SIGNATURE.to_vec();
        bin.extend_from_slice(&[0; 8]);
        for (field, value) in [(&ub[..], 1u8), (&ub[..], 2)] {
            bin.extend_from_slice(&2i16.to_be_bytes());
            bin.extend_from_slice(&(field.len() as i32).to_be_bytes());
            bin.extend_from_slice(field);
            bin.extend_from_slice(&1i32.to_be_bytes());
            bin.push(value);
        }
        bin.extend_from_slice(BINARY_TRAILER);
        let spec = SplitSpec::defaults(CopyFormat::Binary, 0, "id").with_key_type(KeyType::Uuid);
        let (rows, _) = split_all_ways(&spec, &bin).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.0 == ShardKey::Uuid(ub)));
        let spec = spec.with_key_type(KeyType::Text);
        // The uuid's bytes are not UTF-8, so not a text key.
        let err = split_all_ways(&spec, &bin).unwrap_err();
        assert!(err.to_string().contains("type text"), "{err}");
    }
}
