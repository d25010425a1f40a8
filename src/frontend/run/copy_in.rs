//! The session's side of a split `COPY … FROM STDIN` (see `exec::copy_in`): the implicit block,
//! the client's CopyData relayed to each shard's COPY, the answer when it ends.

use crate::backend::{BackendError, ShardPools};
use crate::exec::cancel::set_active;
use crate::exec::copy_in::{
    copy_fail, fe_cstr, finish_copy, first_column, start_copy, CopyProtocol,
};
use crate::exec::copy_split::{CopySplitter, SplitError, SplitSpec};
use crate::frontend::session::{backend_error_fields, refusal, End, Session};
use crate::router::copy_facts::encoding_is_ascii_safe;
use crate::router::{ShardMap, StatementFacts};
use crate::sql_text::{quote_ident, quote_literal};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;
use bytes::BytesMut;
use std::collections::BTreeMap;

/// Rows buffered per shard before they go out as one CopyData message.
const BATCH: usize = 64 * 1024;

/// How a split COPY ended badly.
enum CopyInError {
    /// Before the client was put in COPY mode.
    Before(ErrorFields),
    /// After CopyInResponse: the client is still sending data, which the session ignores.
    During(ErrorFields),
    ClientGone,
}

/// What the statement says about splitting its rows.
struct Plan {
    spec: SplitSpec,
    /// False until the key's position is known (no column list: the table's column order).
    keyed: bool,
    table: Option<(String, String)>,
}

/// One shard's side of the COPY.
#[derive(Default)]
struct ShardCopy {
    open: bool,
    /// The prelude (header) went out.
    started: bool,
    pending: BytesMut,
}

fn open_shards(shards: &BTreeMap<u32, ShardCopy>) -> Vec<u32> {
    shards
        .iter()
        .filter(|(_, s)| s.open)
        .map(|(id, _)| *id)
        .collect()
}

impl Session {
    /// Runs a `COPY … FROM STDIN` into a sharded table, answering the client as Postgres would.
    pub async fn copy_in_sharded(
        &mut self,
        sql: &str,
        facts: &StatementFacts,
        protocol: CopyProtocol,
    ) -> Result<(), End> {
        let _timed = crate::telemetry::QueryTimer::start(crate::telemetry::RouteKind::CopyIn);
        let plan = match self.copy_in_checks(facts) {
            Ok(p) => p,
            Err(fields) => {
                self.copy_in_failed(CopyInError::Before(fields), protocol);
                return Ok(());
            }
        };
        let map = self.proxy.map.current();
        let lead = map
            .shards()
            .first()
            .copied()
            .unwrap_or(self.proxy.first_shard);
        self.begin_implicit_block();
        let result = self.copy_in_run(sql, plan, &map, lead).await;
        set_active(&self.cancel, Vec::new());
        match result {
            Ok(total) => match self.finish_implicit_block(true).await? {
                None => {
                    self.io
                        .push(&be::command_complete(&format!("COPY {total}")));
                    if protocol == CopyProtocol::Simple {
                        let status = self.status();
                        self.io.push(&be::ready_for_query(status));
                    }
                }
                Some(fields) => self.copy_in_failed(CopyInError::During(fields), protocol),
            },
            Err(e) => {
                let gone = matches!(e, CopyInError::ClientGone);
                self.finish_implicit_block(false).await?;
                if gone {
                    return Err(End::ClientGone);
                }
                self.copy_in_failed(e, protocol);
            }
        }
        self.release_idle();
        Ok(())
    }

    /// What must hold before any shard is asked, and how to split the rows.
    fn copy_in_checks(&self, facts: &StatementFacts) -> Result<Plan, ErrorFields> {
        let Some(copy) = facts.copy.as_deref() else {
            return Err(refusal(
                "COPY without readable options cannot be split between shards",
            ));
        };
        let Some((table, key)) = facts.shard_key.clone() else {
            return Err(refusal(
                "COPY into a sharded table without a known shard key",
            ));
        };
        if let Some(why) = facts
            .refuse
            .as_ref()
            .map(ToString::to_string)
            .or(copy.unsupported.clone())
        {
            return Err(refusal(why));
        }
        if self.route_hint_applies(facts) {
            return Err(refusal(
                "a routing hint cannot apply to COPY FROM STDIN into a sharded table: pgshard places its rows by key; remove the hint (RESET pgshard.shard, RESET pgshard.key)",
            ));
        }
        let encoding = self
            .state
            .settings
            .get("client_encoding")
            .or_else(|| self.state.startup_settings.get("client_encoding"));
        if let Some(enc) = encoding.filter(|e| !encoding_is_ascii_safe(e.trim_matches('\''))) {
            return Err(refusal(format!(
                "COPY across shards with client_encoding {enc} (whose characters may contain ASCII bytes) is not supported; use UTF8"
            )));
        }
        let plan = |index: usize, keyed: bool| Plan {
            spec: SplitSpec::from_facts(copy, index, &key).with_key_type(facts.key_type),
            keyed,
            table: copy.table.clone(),
        };
        match &copy.columns {
            Some(columns) => match columns.iter().position(|c| *c == key) {
                Some(i) => Ok(plan(i, true)),
                None => Err(refusal(format!(
                    "COPY into {table} must include the shard key column {key} in its column list: pgshard places each row by its key"
                ))),
            },
            None => Ok(plan(usize::MAX, false)),
        }
    }

    /// Reports a failed COPY the way Postgres would for the protocol in use.
    fn copy_in_failed(&mut self, e: CopyInError, protocol: CopyProtocol) {
        let (fields, before) = match e {
            CopyInError::Before(f) => (f, true),
            CopyInError::During(f) => (f, false),
            CopyInError::ClientGone => return,
        };
        match protocol {
            CopyProtocol::Simple => self.reply_error(fields),
            CopyProtocol::Extended { sync } => {
                self.push_error_in_batch(fields);
                if before && sync {
                    // The batch's own Sync was not swallowed by a COPY: it answers now.
                    let status = self.status();
                    self.io.push(&be::ready_for_query(status));
                } else {
                    self.state.skip_until_sync = true;
                }
            }
        }
    }

    async fn copy_in_run(
        &mut self,
        sql: &str,
        plan: Plan,
        map: &ShardMap,
        lead: u32,
    ) -> Result<u64, CopyInError> {
        let Plan {
            mut spec,
            keyed,
            table,
        } = plan;
        // Every shard joins the block before any COPY starts: joining sends statements to the
        // shards already in the block, which they cannot take while in COPY mode.
        for shard in map.shards() {
            self.ensure_conn(shard, true)
                .await
                .map_err(CopyInError::Before)?;
        }
        if !keyed {
            let table = self.copy_table_columns(table, lead).await?;
            spec.key_index = table
                .iter()
                .position(|c| *c == spec.key_name)
                .ok_or_else(|| {
                    CopyInError::Before(refusal(format!(
                        "the table has no column {} (its shard key), so pgshard cannot place its rows",
                        spec.key_name
                    )))
                })?;
        }
        let response = self.open_shard_copy(lead, sql).await.map_err(|e| match e {
            CopyInError::During(f) => CopyInError::Before(f),
            other => other,
        })?;
        self.io.push(&response);
        if self.io.flush().await.is_err() {
            self.abort_copies(&[lead], "client disconnected during COPY")
                .await;
            return Err(CopyInError::ClientGone);
        }
        let mut shards: BTreeMap<u32, ShardCopy> = BTreeMap::new();
        shards.insert(
            lead,
            ShardCopy {
                open: true,
                ..ShardCopy::default()
            },
        );
        let mut splitter = CopySplitter::new(spec);
        loop {
            let frame = match self.io.read_frame().await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => {
                    let open = open_shards(&shards);
                    self.abort_copies(&open, "client disconnected during COPY")
                        .await;
                    return Err(CopyInError::ClientGone);
                }
            };
            match frame.tag {
                fe::COPY_DATA => {
                    let fed = splitter.feed(&frame.body, |key, row| {
                        shards
                            .entry(map.shard_of(&key))
                            .or_default()
                            .pending
                            .extend_from_slice(row);
                    });
                    if let Err(e) = fed {
                        return Err(self.split_failed(&shards, e).await);
                    }
                    self.ship(&mut shards, &splitter, sql, false).await?;
                }
                fe::COPY_DONE => {
                    let done = splitter.finish(|key, row| {
                        shards
                            .entry(map.shard_of(&key))
                            .or_default()
                            .pending
                            .extend_from_slice(row);
                    });
                    if let Err(e) = done {
                        return Err(self.split_failed(&shards, e).await);
                    }
                    self.ship(&mut shards, &splitter, sql, true).await?;
                    return self.end_copies(&open_shards(&shards)).await;
                }
                fe::COPY_FAIL => {
                    let open = open_shards(&shards);
                    let message = fe_cstr(&frame.body);
                    let first = self.abort_copies(&open, &message).await;
                    return Err(CopyInError::During(first.unwrap_or_else(|| {
                        ErrorFields::error("57014", format!("COPY from stdin failed: {message}"))
                    })));
                }
                fe::FLUSH | fe::SYNC => {}
                other => {
                    let fields = ErrorFields::error(
                        "08P01",
                        format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                    );
                    self.abort_copies(&open_shards(&shards), &fields.message)
                        .await;
                    return Err(CopyInError::During(fields));
                }
            }
        }
    }

    /// The columns a COPY without a column list reads, in order (the table's non-generated
    /// columns), asked of a shard's catalog.
    async fn copy_table_columns(
        &mut self,
        table: Option<(String, String)>,
        shard: u32,
    ) -> Result<Vec<String>, CopyInError> {
        let Some((schema, name)) = table else {
            return Err(CopyInError::Before(refusal(
                "COPY FROM STDIN without a table cannot be split between shards",
            )));
        };
        let regclass = if schema.is_empty() {
            quote_ident(&name)
        } else {
            format!("{}.{}", quote_ident(&schema), quote_ident(&name))
        };
        let query = format!(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            quote_literal(&regclass)
        );
        let Some(conn) = self.held.get_mut(&shard) else {
            return Err(CopyInError::Before(ErrorFields::error(
                "XX000",
                "server connection vanished",
            )));
        };
        match first_column(conn, &query).await {
            Ok(Ok(names)) => Ok(names),
            Ok(Err(fields)) => Err(CopyInError::Before(fields)),
            Err(e) => Err(CopyInError::Before(self.lost(shard, e))),
        }
    }

    /// Starts the COPY on `shard` (joining it to the open transaction block) and returns its
    /// CopyInResponse.
    async fn open_shard_copy(&mut self, shard: u32, sql: &str) -> Result<Frame, CopyInError> {
        self.ensure_conn(shard, true)
            .await
            .map_err(CopyInError::During)?;
        let Some(conn) = self.held.get_mut(&shard) else {
            return Err(CopyInError::During(ErrorFields::error(
                "XX000",
                "server connection vanished",
            )));
        };
        self.cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.cancel_target());
        match start_copy(conn, sql, &mut |f: &Frame| self.io.push(f)).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(fields)) => Err(CopyInError::During(fields)),
            Err(e) => Err(CopyInError::During(self.lost(shard, e))),
        }
    }

    /// Sends buffered rows: every shard's when `all`, else only full batches. Opens the COPY of a
    /// shard that gets its first row.
    async fn ship(
        &mut self,
        shards: &mut BTreeMap<u32, ShardCopy>,
        splitter: &CopySplitter,
        sql: &str,
        all: bool,
    ) -> Result<(), CopyInError> {
        let ids: Vec<u32> = shards.keys().copied().collect();
        for shard in ids {
            let Some(state) = shards.get_mut(&shard) else {
                continue;
            };
            let due =
                state.pending.len() >= BATCH || (all && (state.open || !state.pending.is_empty()));
            if !due {
                continue;
            }
            if !state.open {
                if let Err(e) = self.open_shard_copy(shard, sql).await {
                    let mut open = open_shards(shards);
                    open.retain(|s| *s != shard);
                    let reason = match &e {
                        CopyInError::During(f) | CopyInError::Before(f) => f.message.clone(),
                        CopyInError::ClientGone => "client disconnected".into(),
                    };
                    self.abort_copies(&open, &reason).await;
                    return Err(e);
                }
            }
            let Some(state) = shards.get_mut(&shard) else {
                continue;
            };
            state.open = true;
            let mut frames = Vec::with_capacity(3);
            if !state.started {
                state.started = true;
                if !splitter.prelude().is_empty() {
                    frames.push(Frame::new(
                        fe::COPY_DATA,
                        bytes::Bytes::copy_from_slice(splitter.prelude()),
                    ));
                }
            }
            if !state.pending.is_empty() {
                frames.push(Frame::new(fe::COPY_DATA, state.pending.split().freeze()));
            }
            if all && !splitter.postlude().is_empty() {
                frames.push(Frame::new(
                    fe::COPY_DATA,
                    bytes::Bytes::from_static(splitter.postlude()),
                ));
            }
            let Some(conn) = self.held.get_mut(&shard) else {
                continue;
            };
            for f in &frames {
                conn.queue(f);
            }
            if all || conn.queued_bytes() >= BATCH {
                if let Err(e) = conn.flush().await {
                    let fields = self.lost(shard, e);
                    let mut open = open_shards(shards);
                    open.retain(|s| *s != shard);
                    self.abort_copies(&open, &fields.message).await;
                    return Err(CopyInError::During(fields));
                }
            }
        }
        Ok(())
    }

    /// Ends every shard's COPY and sums their row counts; the first error fails the whole COPY.
    async fn end_copies(&mut self, open: &[u32]) -> Result<u64, CopyInError> {
        for shard in open {
            if let Some(conn) = self.held.get_mut(shard) {
                conn.queue(&Frame::new(fe::COPY_DONE, bytes::Bytes::new()));
            }
        }
        let mut total = 0u64;
        let mut failure: Option<ErrorFields> = None;
        for shard in open {
            let Some(conn) = self.held.get_mut(shard) else {
                continue;
            };
            let result = match conn.flush().await {
                Ok(()) => finish_copy(conn, &mut |f: &Frame| self.io.push(f)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(Ok(n)) => total += n,
                Ok(Err(fields)) => {
                    failure.get_or_insert(fields);
                }
                Err(e) => {
                    let fields = self.lost(*shard, e);
                    failure.get_or_insert(fields);
                }
            }
        }
        match failure {
            Some(fields) => Err(CopyInError::During(fields)),
            None => Ok(total),
        }
    }

    /// Fails every open COPY with CopyFail; returns the first error a shard reported.
    async fn abort_copies(&mut self, open: &[u32], reason: &str) -> Option<ErrorFields> {
        let mut first = None;
        for shard in open {
            let Some(conn) = self.held.get_mut(shard) else {
                continue;
            };
            conn.queue(&copy_fail(reason));
            let result = match conn.flush().await {
                Ok(()) => finish_copy(conn, &mut |f: &Frame| self.io.push(f)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(Err(fields)) => {
                    first.get_or_insert(fields);
                }
                Ok(Ok(_)) => {}
                Err(e) => {
                    self.lost(*shard, e);
                }
            }
        }
        first
    }

    async fn split_failed(
        &mut self,
        shards: &BTreeMap<u32, ShardCopy>,
        e: SplitError,
    ) -> CopyInError {
        let fields = ErrorFields::error(e.sqlstate(), e.to_string());
        self.abort_copies(&open_shards(shards), &fields.message)
            .await;
        CopyInError::During(fields)
    }

    /// Drops a server connection that failed mid-COPY; returns what the client is told.
    fn lost(&mut self, shard: u32, e: BackendError) -> ErrorFields {
        tracing::warn!(shard, error = %e, "server connection failed during COPY");
        if let Some(conn) = self.held.remove(&shard) {
            ShardPools::discard(conn);
        }
        backend_error_fields(&e)
    }
}
