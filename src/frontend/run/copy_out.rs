//! The session's side of `COPY … TO STDOUT` over several shards (see `exec::copy_out`): the
//! connections it reads in turn and the one COPY stream the client gets.

use crate::backend::{BackendError, ShardPools};
use crate::exec::cancel::set_active;
use crate::exec::copy_in::CopyProtocol;
use crate::exec::copy_out::{binary_header, OutFilter};
use crate::exec::copy_split::BINARY_TRAILER;
use crate::exec::exchange::FrameSink;
use crate::frontend::session::{backend_error_fields, refusal, End, Session};
use crate::router::copy_facts::CopyFormat;
use crate::router::StatementFacts;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;
use bytes::Bytes;

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
                    self.state.skip_until_sync = true;
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
