//! `COPY <sharded table> TO STDOUT` and `COPY (SELECT …) TO STDOUT` over several shards: one
//! CopyOutResponse, every shard's rows, one CopyDone and `COPY <sum>`. A binary stream keeps one
//! file header (the first shard's) and one trailer; a HEADER line comes from the first shard only.
//! Shards are read one after the other (all start at once), so the output is each shard's rows in
//! turn, as a concatenating scatter would give them.

use super::copy_split::{BINARY_SIGNATURE, BINARY_TRAILER};
use crate::router::copy_facts::{CopyFacts, CopyFormat};

/// The binary file header Postgres writes (signature, no flags, no extension).
pub fn binary_header() -> Vec<u8> {
    let mut h = BINARY_SIGNATURE.to_vec();
    h.extend_from_slice(&[0; 8]);
    h
}

/// Rewrites one shard's COPY TO stream so the streams of all shards concatenate into one. Message
/// boundaries are kept (Postgres sends one row per CopyData and drivers rely on it): binary
/// streams lose their file header and trailer (the merge writes one of each, the header in front
/// of the first row as Postgres does), text/CSV streams after the first lose their HEADER line.
#[derive(Debug)]
pub struct OutFilter {
    format: CopyFormat,
    quote: u8,
    escape: Option<u8>,
    /// Text/CSV: still inside the header line to drop.
    in_header: bool,
    in_quote: bool,
    last_was_esc: bool,
    /// Binary: the file header read so far, while it is being dropped.
    header_bytes: Vec<u8>,
    drop_header: bool,
    trailer_seen: bool,
}

impl OutFilter {
    /// The filter for one shard; `first` keeps the HEADER line of text/CSV.
    pub fn new(facts: &CopyFacts, first: bool) -> OutFilter {
        let quote = facts.quote.unwrap_or(b'"');
        let escape = facts.escape.filter(|e| *e != quote);
        OutFilter {
            format: facts.format,
            quote,
            escape,
            in_header: !first && facts.header && facts.format != CopyFormat::Binary,
            in_quote: false,
            last_was_esc: false,
            header_bytes: Vec::new(),
            drop_header: facts.format == CopyFormat::Binary,
            trailer_seen: false,
        }
    }

    /// The part of one CopyData payload to pass on as one message, if any.
    pub fn take(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let out = match self.format {
            CopyFormat::Binary => self.take_binary(data),
            _ => self.take_text(data),
        };
        (!out.is_empty()).then(|| out.to_vec())
    }

    fn take_text<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        if !self.in_header {
            return data;
        }
        let csv = self.format == CopyFormat::Csv;
        for (i, &c) in data.iter().enumerate() {
            if csv {
                if self.in_quote && Some(c) == self.escape {
                    self.last_was_esc = !self.last_was_esc;
                }
                if c == self.quote && !self.last_was_esc {
                    self.in_quote = !self.in_quote;
                }
                if Some(c) != self.escape {
                    self.last_was_esc = false;
                }
            }
            if c == b'\n' && !self.in_quote {
                self.in_header = false;
                return &data[i + 1..];
            }
        }
        &[]
    }

    fn take_binary<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let mut data = data;
        let need = |h: &[u8]| {
            if h.len() < 19 {
                19
            } else {
                19usize.saturating_add(u32::from_be_bytes([h[15], h[16], h[17], h[18]]) as usize)
            }
        };
        while self.drop_header && !data.is_empty() {
            let want = need(&self.header_bytes) - self.header_bytes.len();
            let n = want.min(data.len());
            self.header_bytes.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header_bytes.len() == need(&self.header_bytes) {
                self.drop_header = false;
            }
        }
        if data == BINARY_TRAILER {
            self.trailer_seen = true;
            return &[];
        }
        data
    }

    /// At the shard's CopyDone: checks its stream was shaped as Postgres shapes one.
    pub fn end(&self) -> Result<(), String> {
        if self.format != CopyFormat::Binary {
            return Ok(());
        }
        if self.drop_header || self.header_bytes.get(..11) != Some(&BINARY_SIGNATURE[..]) {
            return Err("a shard's binary COPY stream has no valid header".into());
        }
        if !self.trailer_seen {
            return Err("a shard's binary COPY stream did not end with a trailer".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(format: CopyFormat, header: bool) -> CopyFacts {
        CopyFacts {
            table: Some((String::new(), "users".into())),
            columns: None,
            format,
            delimiter: None,
            null: None,
            header,
            quote: None,
            escape: None,
            force_not_null: Default::default(),
            force_null: Default::default(),
            unsupported: None,
        }
    }

    fn run(filter: &mut OutFilter, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        pieces.iter().filter_map(|p| filter.take(p)).collect()
    }

    #[test]
    fn csv_header_only_from_the_first_shard() {
        let f = facts(CopyFormat::Csv, true);
        let mut first = OutFilter::new(&f, true);
        assert_eq!(
            run(&mut first, &[b"user_id,name\n", b"1,a\n"]),
            vec![b"user_id,name\n".to_vec(), b"1,a\n".to_vec()]
        );
        let mut other = OutFilter::new(&f, false);
        assert_eq!(
            run(&mut other, &[b"user_id,na", b"me\n", b"2,\"b\nc\"\n"]),
            vec![b"2,\"b\nc\"\n".to_vec()]
        );
        // A quoted header with a newline in a column name is one line.
        let mut other = OutFilter::new(&f, false);
        assert_eq!(
            run(&mut other, &[b"\"we\nird\",x\n3,d\n"]),
            vec![b"3,d\n".to_vec()]
        );
        let mut plain = OutFilter::new(&facts(CopyFormat::Text, false), false);
        assert_eq!(run(&mut plain, &[b"1\ta\n"]), vec![b"1\ta\n".to_vec()]);
    }

    #[test]
    fn binary_drops_header_and_trailer_keeping_rows_whole() {
        let f = facts(CopyFormat::Binary, false);
        let row_a: &[u8] = b"\x00\x01\x00\x00\x00\x01A";
        let row_b: &[u8] = b"\x00\x01\x00\x00\x00\x01B";
        let mut first_msg = binary_header();
        first_msg.extend_from_slice(row_a);
        for first in [true, false] {
            let mut filter = OutFilter::new(&f, first);
            let out = run(&mut filter, &[&first_msg, row_b, BINARY_TRAILER]);
            assert_eq!(out, vec![row_a.to_vec(), row_b.to_vec()]);
            assert!(filter.end().is_ok());
        }
        // No rows: header and trailer in one message.
        let mut empty = binary_header();
        empty.extend_from_slice(BINARY_TRAILER);
        let mut filter = OutFilter::new(&f, false);
        assert!(run(&mut filter, &[&empty]).is_empty());
        assert!(filter.end().is_ok());
        // A header split over messages, and a stream cut short.
        let mut filter = OutFilter::new(&f, false);
        let out = run(
            &mut filter,
            &[&first_msg[..5], &first_msg[5..19], &first_msg[19..]],
        );
        assert_eq!(out, vec![row_a.to_vec()]);
        assert!(filter.end().is_err());
        let mut filter = OutFilter::new(&f, false);
        run(&mut filter, &[b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0"]);
        assert!(filter.end().is_err());
    }
}
