//! `COPY <sharded table> TO STDOUT` and `COPY (SELECT …) TO STDOUT` over several shards: one
//! CopyOutResponse, every shard's rows, one CopyDone and `COPY <sum>`. A binary stream keeps one
//! file header (the first shard's) and one trailer; a HEADER line comes from the first shard only.
//! Shards are read one after the other (all start at once), so the output is each shard's rows in
//! turn, as a concatenating scatter would give them.

use bytes::Bytes;

use super::copy_in::CopyProtocol;
use super::copy_split::{BINARY_SIGNATURE, BINARY_TRAILER};
use crate::backend::{BackendError, ShardPools};
use crate::exec::cancel::set_active;
use crate::exec::exchange::FrameSink;
use crate::frontend::session::{backend_error_fields, refusal, End, Session};
use crate::router::copy_facts::{CopyFacts, CopyFormat};
use crate::router::StatementFacts;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;

/// The binary file header Postgres writes (signature, no flags, no extension).
fn binary_header() -> Vec<u8> {
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

impl Session {
    /// Runs a COPY TO STDOUT on `shards` and answers the client as one Postgres would.
    pub async fn copy_out_sharded(
        &mut self,
        sql: &str,
        facts: &StatementFacts,
        shards: Vec<u32>,
        protocol: CopyProtocol,
    ) -> Result<(), End> {
        let Some(copy) = facts.copy.as_deref().cloned() else {
            self.copy_out_failed(
                refusal("COPY without readable options cannot be merged from several shards"),
                protocol,
            );
            return Ok(());
        };
        if let Some(construct) = &facts.needs_merge {
            self.copy_out_failed(
                refusal(format!(
                    "COPY of a query with {construct} over several shards is not supported yet; add a condition on the shard key to reach one shard"
                )),
                protocol,
            );
            return Ok(());
        }
        for shard in &shards {
            if let Err(fields) = self.ensure_conn(*shard, true).await {
                self.copy_out_failed(fields, protocol);
                self.release_idle();
                return Ok(());
            }
        }
        let mut failure: Option<ErrorFields> = None;
        let mut targets = Vec::new();
        for shard in &shards {
            if let Some(conn) = self.held.get_mut(shard) {
                targets.push(conn.cancel_target());
                conn.queue(&fe::query(sql));
                if let Err(e) = conn.flush().await {
                    failure.get_or_insert(self.drop_conn(*shard, e));
                }
            }
        }
        set_active(&self.cancel, targets);
        let mut total = 0u64;
        let mut responded = false;
        let mut client_gone = false;
        // Binary: the file header goes out in front of the first row.
        let mut header = (copy.format == CopyFormat::Binary).then(binary_header);
        for (i, shard) in shards.iter().enumerate() {
            let mut filter = OutFilter::new(&copy, i == 0);
            let result = self
                .read_copy_out(
                    *shard,
                    &mut filter,
                    &mut failure,
                    &mut responded,
                    &mut header,
                    &mut client_gone,
                )
                .await;
            match result {
                Ok(n) => total += n,
                Err(e) => {
                    let fields = self.drop_conn(*shard, e);
                    failure.get_or_insert(fields);
                }
            }
        }
        set_active(&self.cancel, Vec::new());
        if client_gone {
            return Err(End::ClientGone);
        }
        match failure {
            Some(fields) => self.copy_out_failed(fields, protocol),
            None => {
                let mut end = Vec::with_capacity(3);
                if copy.format == CopyFormat::Binary {
                    let mut last = header.take().unwrap_or_default();
                    last.extend_from_slice(BINARY_TRAILER);
                    end.push(Frame::new(be::COPY_DATA, Bytes::from(last)));
                }
                end.push(Frame::new(be::COPY_DONE, Bytes::new()));
                end.push(be::command_complete(&format!("COPY {total}")));
                for f in end {
                    self.io.push(&f);
                }
                if protocol != (CopyProtocol::Extended { sync: false }) {
                    let status = self.status();
                    self.io.push(&be::ready_for_query(status));
                }
            }
        }
        self.release_idle();
        Ok(())
    }

    /// Reads one shard's answer to the COPY through ReadyForQuery, passing its rows on while
    /// nothing failed; returns its row count.
    async fn read_copy_out(
        &mut self,
        shard: u32,
        filter: &mut OutFilter,
        failure: &mut Option<ErrorFields>,
        responded: &mut bool,
        header: &mut Option<Vec<u8>>,
        client_gone: &mut bool,
    ) -> Result<u64, BackendError> {
        let Some(conn) = self.held.get_mut(&shard) else {
            return Ok(0);
        };
        let mut rows = 0;
        loop {
            let frame = conn.read_frame().await?;
            let pass = failure.is_none() && !*client_gone;
            let forward = match frame.tag {
                be::COPY_OUT_RESPONSE => {
                    let first = !*responded;
                    *responded = true;
                    first && pass
                }
                be::COPY_DATA => {
                    if let Some(out) = filter.take(&frame.body).filter(|_| pass) {
                        let out = match header.take() {
                            Some(mut h) => {
                                h.extend_from_slice(&out);
                                h
                            }
                            None => out,
                        };
                        let frame = Frame::new(be::COPY_DATA, Bytes::from(out));
                        if self.io.send(frame).await.is_err() {
                            *client_gone = true;
                        }
                    }
                    false
                }
                be::COPY_DONE => {
                    if let Err(detail) = filter.end() {
                        failure.get_or_insert(ErrorFields::error("XX000", detail));
                    }
                    false
                }
                be::COMMAND_COMPLETE => {
                    if let Ok(tag) = be::decode_command_complete(&frame.body) {
                        rows = tag
                            .strip_prefix("COPY ")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                    }
                    false
                }
                be::ERROR_RESPONSE => {
                    failure.get_or_insert_with(|| {
                        ErrorFields::decode(&frame.body).unwrap_or_else(|_| {
                            ErrorFields::error("XX000", "malformed error from a shard")
                        })
                    });
                    false
                }
                be::READY_FOR_QUERY => return Ok(rows),
                be::NOTICE_RESPONSE => pass,
                _ => false,
            };
            if forward && self.io.send(frame).await.is_err() {
                *client_gone = true;
            }
        }
    }

    /// Reports a failed COPY TO the way Postgres would for the protocol in use.
    fn copy_out_failed(&mut self, fields: ErrorFields, protocol: CopyProtocol) {
        match protocol {
            CopyProtocol::Simple => self.reply_error(fields),
            CopyProtocol::Extended { sync } => {
                self.push_error_in_batch(fields);
                if sync {
                    let status = self.status();
                    self.io.push(&be::ready_for_query(status));
                } else {
                    self.skip_until_sync = true;
                }
            }
        }
    }

    fn drop_conn(&mut self, shard: u32, e: BackendError) -> ErrorFields {
        tracing::warn!(shard, error = %e, "server connection failed during COPY TO");
        if let Some(conn) = self.held.remove(&shard) {
            ShardPools::discard(conn);
        }
        backend_error_fields(&e)
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
