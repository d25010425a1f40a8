//! One client session after startup: reads messages, routes each statement, runs it on the shard
//! connections it needs, and keeps the session's settings, transaction and prepared statements
//! consistent under transaction pooling.

use std::sync::Arc;

use bytes::Bytes;

use super::client_io::ClientIo;
use super::session_limits::Next;
use crate::backend::pool::ServerLogin;
use crate::backend::session_state::sync_sql;
use crate::backend::HeldConns;
use crate::backend::ShardPools;
use crate::config::PoolMode;
use crate::exec::cancel::{set_active, ActiveTargets};
use crate::exec::exchange::{self, Expect, Outcome, SinkError, Step};
use crate::planner::batch::open_shard_after;
use crate::planner::rules::apply_cursor_effects;
use crate::planner::{Ending, GivenKeys, Plan, Planned, Request, Statement};
use crate::proxy::Proxy;
pub use crate::refusal::{aborted, backend_error_fields, refusal};
use crate::refusal::{checkout_error, Refusal};
use crate::router::{LocalCommand, Route, StatementFacts, StatementKind};
use crate::session::sql_prepare::{may_be_sql_prepare, SqlPrepareAction};
use crate::telemetry::QueryTimer;
use crate::txn::control::{self, BlockView, ControlAction, ControlStatement};
use crate::wire::backend::{self as be, ErrorFields, TxStatus};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;

pub use crate::session::Prepared;
use crate::session::{SessionState, SettingEffect};

pub use crate::txn::Txn;

pub use crate::planner::Target;

/// Pins the future `make` returns in a box allocated first, so that it is written straight into
/// the heap: `Box::pin(fut)` builds a future on the stack and then copies all of it (a request's
/// future is kilobytes, most of it not yet in use), once per message.
#[inline(always)]
fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Why the session loop must stop.
pub enum End {
    ClientGone,
}

pub struct Session {
    pub proxy: Arc<Proxy>,
    pub io: ClientIo,
    pub user: String,
    /// The role (and password) this client's server connections log in as.
    pub server_login: ServerLogin,
    /// Settings, block, statements, portals, cursors, read-your-writes: the plain data.
    pub state: SessionState,
    pub held: HeldConns,
    /// Connections of finished transactions kept for the next one while nobody else waits for
    /// them (see `backend::parking`).
    pub parked: crate::backend::parking::Parked,
    /// Extended-protocol messages buffered until Sync or Flush.
    pub batch: Vec<Frame>,
    /// The client statements the batch being run parsed, in order: those whose Parse was not
    /// answered with ParseComplete are forgotten afterwards, as Postgres never created them.
    pub batch_parses: Vec<(String, Arc<Prepared>)>,
    pub cancel: ActiveTargets,
    /// Where requests that any shard can answer go when no connection is held: the shard that
    /// answered at login.
    pub any_shard: u32,
    /// Held from a request's start until the session is outside any transaction: a rebalancing
    /// cut-over waits for these.
    pub hold_pass: Option<crate::admin::gate::RequestPass>,
    /// Generated keys reserved for the request being planned.
    pub reserved_keys: super::generated_keys::ReservedKeys,
    /// Server connections kept past transactions for session state (see `session_pins`).
    pub pins: super::session_pins::Pins,
    /// LISTEN channels and the NOTIFYs an open block sends at COMMIT (see `notifications`).
    pub notify: super::notifications::SessionNotify,
    /// The batch's Parse texts, analyzed once (see `batch_analysis`).
    pub batch_analysis: super::batch_analysis::BatchAnalysis,
    /// Merge plans chosen by the tables' columns for GROUP BY names (see `run::group_names`).
    pub group_plans: crate::exec::table_columns::ChosenPlans,
}

impl Session {
    /// Serves the client until it leaves. Boxed: the future holds a pointer, not a second copy of
    /// the session next to the one its caller moved it out of.
    pub async fn run(mut self: Box<Self>) {
        let mut phase = self.proxy.phase.subscribe();
        loop {
            if !self.io.out.is_empty()
                && !self.io.has_buffered_frame()
                && self.io.flush().await.is_err()
            {
                break;
            }
            let frame = match self.next_frame(&mut phase).await {
                Next::Frame(f) => f,
                Next::Closed => break,
                Next::End(fields) => {
                    self.io.push_error(&fields);
                    let _ = self.io.flush().await;
                    break;
                }
            };
            // A message buffered for the next Sync or Flush is all its serving would do: the
            // rest of `serve` (gates, timers, settling connections) runs for the Sync or Flush,
            // and after this message would find what it left after the previous one.
            if matches!(
                frame.tag,
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE
            ) {
                if !self.state.skip_until_sync {
                    self.batch.push(frame);
                }
                continue;
            }
            // Boxed: a waiting client's task does not carry the (large) state of a request, only
            // what waiting for the next message needs.
            if !boxed_in_place(|| self.serve(frame)).await {
                break;
            }
        }
        boxed_in_place(|| self.close()).await;
    }

    /// Serves one client message and what follows it (pins settled, idle connections returned,
    /// writes published); false when the session ends.
    async fn serve(&mut self, frame: Frame) -> bool {
        // Replica choices belong to one request.
        self.state.reads.servers.clear();
        if matches!(frame.tag, fe::QUERY | fe::FLUSH | fe::SYNC) {
            self.follow_search_path();
            self.place_new_tenants(&frame).await;
        }
        // A PAUSE from the admin console holds new requests here; open transactions go on.
        let _pass = match frame.tag {
            fe::QUERY | fe::FLUSH | fe::SYNC => {
                let in_txn = self.state.txn.is_some() || self.state.open_batch_shard.is_some();
                Some(self.proxy.admin.gate.enter(in_txn).await)
            }
            _ => None,
        };
        // A cut-over hold waits here for new work on the keys it moves; an open transaction
        // keeps its pass.
        if self.hold_pass.is_none()
            && matches!(frame.tag, fe::QUERY | fe::FLUSH | fe::SYNC)
            && self.needs_hold_pass(&frame)
        {
            self.hold_pass = Some(self.proxy.rebalance.gate.enter(false).await);
        }
        // What was analyzed before the gates may predate a cut-over (a schema's shard moves).
        self.batch_analysis.clear();
        let timer = self.start_query_timer(frame.tag);
        let abandon = timer.as_ref().map(|t| t.abandon.clone());
        let tag = frame.tag;
        // Boxed on its own: `serve` stays small, and the request's future (kilobytes) is built in
        // its box rather than copied there once per message.
        let request = boxed_in_place(|| self.dispatch(frame));
        let result = match abandon {
            None => request.await,
            Some(abandon) => {
                let finished = tokio::select! {
                    r = request => Some(r),
                    () = abandon.notified() => None,
                };
                match finished {
                    Some(r) => r,
                    None => {
                        self.abandon_request(tag).await;
                        Ok(())
                    }
                }
            }
        };
        drop(timer);
        self.batch_analysis.clear();
        if let Err(End::ClientGone) = result {
            return false;
        }
        self.after_names_changed().await;
        if self.state.txn.is_none() && self.state.open_batch_shard.is_none() {
            self.hold_pass = None;
        }
        // Whatever path served the request (a scatter read leaves its connections held), an
        // idle client holds no server connection in transaction pooling, but those pinned.
        if self.settle_pins().await.is_err() {
            return false;
        }
        self.release_idle();
        self.publish_writes().await;
        self.settle_notify().await;
        true
    }

    /// Runs one client message: a request, or a message buffered for the next Sync/Flush.
    /// `End::ClientGone` also stands for Terminate and for a message that ends the session.
    async fn dispatch(&mut self, frame: Frame) -> Result<(), End> {
        match frame.tag {
            fe::QUERY => {
                // Extended messages before it run first, as a server runs messages in order
                // (pgjdbc's autosave sends SAVEPOINT as a Query right after a buffered BEGIN);
                // if they fail, the Query is skipped with the rest up to Sync, as there.
                if !self.batch.is_empty() && !self.state.skip_until_sync {
                    self.extended_batch(false).await?;
                    if self.state.skip_until_sync {
                        return Ok(());
                    }
                }
                self.state.skip_until_sync = false;
                self.simple_query(frame.body).await
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE => {
                if !self.state.skip_until_sync {
                    self.batch.push(frame);
                }
                Ok(())
            }
            fe::FLUSH => {
                if self.state.skip_until_sync {
                    Ok(())
                } else {
                    self.extended_batch(false).await
                }
            }
            fe::SYNC => {
                let r = if self.state.skip_until_sync {
                    self.state.skip_until_sync = false;
                    self.batch.clear();
                    self.finish_open_batch().await
                } else {
                    self.extended_batch(true).await
                };
                self.end_implicit_portals();
                r
            }
            fe::TERMINATE => Err(End::ClientGone),
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => Ok(()),
            fe::FUNCTION_CALL => {
                self.reply_error(Refusal::unsupported(
                    "the fast-path function call protocol is not supported by pgshard; call the function in a SELECT",
                ));
                Ok(())
            }
            other => {
                let fields =
                    ErrorFields::fatal("08P01", format!("invalid frontend message type {}", other));
                self.io.push_error(&fields);
                let _ = self.io.flush().await;
                Err(End::ClientGone)
            }
        }
    }

    /// Returns or discards server connections when the client leaves.
    async fn close(&mut self) {
        self.unpin_on_close();
        let held = std::mem::take(&mut self.held);
        for (_, mut conn) in held {
            if conn.synced && conn.status != TxStatus::Idle {
                if conn.run_silently("ROLLBACK").await.is_ok() && conn.reusable() {
                    continue;
                }
                ShardPools::discard(conn);
            } else if !conn.reusable() {
                ShardPools::discard(conn);
            }
        }
    }

    /// Transaction status to report in a ReadyForQuery the proxy writes itself.
    pub fn status(&self) -> TxStatus {
        match &self.state.txn {
            None => TxStatus::Idle,
            Some(t) if t.refused => TxStatus::Failed,
            Some(t) => {
                let failed = t.participants.iter().any(|s| {
                    self.held
                        .get(s)
                        .is_some_and(|c| c.status == TxStatus::Failed)
                });
                if failed {
                    TxStatus::Failed
                } else if t.implicit {
                    TxStatus::Idle
                } else {
                    TxStatus::InTransaction
                }
            }
        }
    }

    /// Sends an error and ReadyForQuery; inside a transaction block the block is now failed.
    pub fn reply_error(&mut self, fields: impl Into<ErrorFields>) {
        let fields = fields.into();
        self.io.push_error(&fields);
        if let Some(txn) = &mut self.state.txn {
            txn.refused = true;
        }
        let status = self.status();
        self.io.push(&be::ready_for_query(status));
    }

    /// An error without ReadyForQuery (extended protocol: the Sync answers later).
    pub fn push_error_in_batch(&mut self, fields: impl Into<ErrorFields>) {
        let fields = fields.into();
        self.io.push_error(&fields);
        if let Some(txn) = &mut self.state.txn {
            txn.refused = true;
        }
    }

    /// Answers one simple Query (with its ReadyForQuery, unless the statements of a string
    /// run in turn hold it back).
    pub async fn simple_query(&mut self, body: Bytes) -> Result<(), End> {
        let sql = match fe::decode_query(&body) {
            Ok(s) => s.to_string(),
            Err(_) => {
                self.reply_error(ErrorFields::error(
                    "22021",
                    "invalid byte sequence for encoding \"UTF8\" in query text",
                ));
                return Ok(());
            }
        };
        let (sql, body) = match self.sql_prepare(&sql) {
            Some(None) => (sql, body),
            // An EXECUTE: the statement it stands for is what the servers get.
            Some(Some(run)) => {
                let body = fe::query(&run).body;
                (run, body)
            }
            None => return Ok(()),
        };
        let proxy = self.proxy.clone();
        let (mut sql, mut body) = (sql, body);
        let Some((facts, literals)) = self
            .analyze_running_subqueries_first(&mut sql, &mut body)
            .await?
        else {
            return Ok(());
        };
        if facts.is_empty() {
            self.io.push(&be::empty_query_response());
            let status = self.status();
            self.io.push(&be::ready_for_query(status));
            return Ok(());
        }
        self.note_names_changed(facts.iter());
        let local = facts.iter().any(|f| f.local.is_some());
        if !local {
            if let Some(done) = self.transaction_shortcut(&sql, &facts).await? {
                return Ok(done);
            }
        }
        // Writes of a looked-up column claim their values first (see `run::lookup`).
        if self.lookup_writes_simple(&sql, &facts).await? {
            return Ok(());
        }
        // Statements naming an index run where its table lives (the catalogs say: I/O); a
        // keyless read of a looked-up column where the lookup says.
        let mut looked_up = Vec::with_capacity(facts.len());
        for f in facts.iter() {
            let none = crate::router::params::NoParams;
            match self.looked_up_route(&sql, Some(f), &none).await {
                Ok(route) => looked_up.push(route),
                Err(fields) => {
                    self.reply_error(fields);
                    return Ok(());
                }
            }
        }
        let map = proxy.map.current();
        let params = crate::router::literals::LiteralParams(&literals);
        // Django's bulk_create without keys: an UNNEST insert that needs generated keys runs on
        // its own path (its rows are counted from the arrays, then split by the new keys).
        if let [only] = &facts[..] {
            if only.unnest_keyless.is_some() && !self.route_hint_applies(only) {
                return self.run_unnest_keyless_simple(&sql, only, &literals).await;
            }
        }
        let mut request = Request {
            statements: facts
                .iter()
                .zip(looked_up)
                .map(|(f, looked_up)| Statement {
                    sql: &sql,
                    facts: f,
                    params: &params,
                    looked_up,
                    keys: None,
                })
                .collect(),
            ending: Ending::Query,
            messages: None,
        };
        let mut planned = self.plan_request(&request, &map);
        if let (
            Ok(Planned {
                plan: Plan::NeedsKeys,
                ..
            }),
            [only],
        ) = (&planned, &facts[..])
        {
            self.reserve_keys_for(&facts).await;
            let keys = match self.given_keys(only) {
                Ok(keys) => keys,
                Err(fields) => {
                    self.reply_error(fields);
                    return Ok(());
                }
            };
            if let Some(st) = request.statements.first_mut() {
                st.keys = Some(keys);
            }
            planned = self.plan_request(&request, &map);
        }
        drop(request);
        let mut planned = match planned {
            Ok(p) => p,
            Err(refusal) => {
                self.reply_error(refusal);
                return Ok(());
            }
        };
        if let Plan::InTurn = planned.plan {
            return self.run_in_turn(&sql, facts.len()).await;
        }
        if let Plan::Local(local) = &planned.plan {
            let local = crate::frontend::notifications::with_values(local, &params);
            let ran = match local {
                Ok(local) => self.run_local(&local, true, false).await,
                Err(fields) => Err(fields),
            };
            if let Err(fields) = ran {
                self.push_error_in_batch(fields);
            }
            let status = self.status();
            self.io.push(&be::ready_for_query(status));
            return Ok(());
        }
        if self.proxy.config.pool.mode != PoolMode::Session {
            self.pins.note(&facts);
        }
        apply_cursor_effects(&mut self.state, &planned.cursor_effects);
        let (sql, rewritten) = match planned.rewritten_text() {
            Some(text) => (text, true),
            None => (sql, false),
        };
        let target = match planned.plan {
            Plan::Empty
            | Plan::Local(_)
            | Plan::NeedsKeys
            | Plan::InTurn
            | Plan::LocalBatch
            | Plan::Claims
            | Plan::HeldPortal
            | Plan::RaiseOn { .. }
            | Plan::FailedAt { .. } => {
                // Planned above, or a batch's: nothing to run.
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
                return Ok(());
            }
            Plan::ServedCursor => return self.serve_cursor_query(&sql, &facts).await,
            Plan::CopyIn => {
                let protocol = crate::exec::copy_in::CopyProtocol::Simple;
                return self.copy_in_sharded(&sql, &facts[0], protocol).await;
            }
            Plan::SplitInsert { rows, unnest } => {
                if let Some(unnest) = unnest {
                    return self.run_unnest_insert_simple(&sql, &unnest, &rows).await;
                }
                return self.run_split_insert(&sql, &rows).await;
            }
            Plan::CopyOut(shards) => {
                if let Err(fields) =
                    self.fence_texts(&sql, &facts, &Target::Scatter(shards.clone()))
                {
                    self.reply_error(fields);
                    return Ok(());
                }
                let protocol = crate::exec::copy_in::CopyProtocol::Simple;
                return self
                    .copy_out_sharded(&sql, &facts[0], shards, protocol)
                    .await;
            }
            Plan::Run(target) => target,
        };
        // Shards a rebalancing job fences get the statement restricted to the rows they own.
        let fenced = match &target {
            Target::Scatter(_) => None,
            _ => match self.fence_texts(&sql, &facts, &target) {
                Ok(f) => f,
                Err(fields) => {
                    self.reply_error(fields);
                    return Ok(());
                }
            },
        };
        // Forward the client's own bytes unless the text was rewritten.
        let frame = if rewritten {
            fe::query(&sql)
        } else {
            Frame::new(fe::QUERY, body.clone())
        };
        let steps = |conn: &crate::backend::ServerConn| {
            let frame = match fenced.as_ref().and_then(|f| f.get(&conn.shard)) {
                Some(text) => fe::query(text),
                None => frame.clone(),
            };
            vec![Step::Send {
                frame,
                expect: Expect::Query,
                forward: true,
            }]
        };
        let _timed = QueryTimer::start(target.route_kind());
        match target {
            Target::Single(shard) => {
                self.route_reads(&[shard], &facts).await;
                let autocommit = self.state.txn.is_none();
                self.ask_commit_position(shard, autocommit, &facts);
                let outcome = self.run_single_read(shard, true, steps).await?;
                if let Some(outcome) = outcome {
                    self.note_autocommit_write(shard, autocommit, &facts, &outcome);
                    self.after_statements(&facts, &outcome, Some(shard));
                    if let ([only], None) = (&facts[..], &outcome.error) {
                        self.note_block_statement(&sql, only);
                    }
                }
            }
            Target::Scatter(shards) => {
                let merge = match merge_for_simple(&facts, &literals, &self.group_plans) {
                    Ok(m) => m,
                    Err(fields) => {
                        self.reply_error(fields);
                        return Ok(());
                    }
                };
                let (frame, bound, text) = match merge {
                    Some((merged, bound)) => (fe::query(&merged), Some(bound), merged),
                    None => (frame, None, sql.clone()),
                };
                let target = Target::Scatter(shards.clone());
                let fenced = match self.fence_texts(&text, &facts, &target) {
                    Ok(f) => f,
                    Err(fields) => {
                        self.reply_error(fields);
                        return Ok(());
                    }
                };
                let steps = |conn: &crate::backend::ServerConn| {
                    let frame = match fenced.as_ref().and_then(|f| f.get(&conn.shard)) {
                        Some(text) => fe::query(text),
                        None => frame.clone(),
                    };
                    vec![Step::Send {
                        frame,
                        expect: Expect::Query,
                        forward: true,
                    }]
                };
                let atomic = facts.iter().any(needs_atomic_scatter);
                self.route_reads(&shards, &facts).await;
                if let [only] = &facts[..] {
                    self.before_rollback_to(&sql, Some(only));
                }
                let ok = self
                    .run_scatter_request(shards, atomic, steps, bound)
                    .await?;
                if let ([only], true) = (&facts[..], ok) {
                    self.note_block_statement(&sql, only);
                }
            }
            Target::Broadcast(shards) => self.run_broadcast(shards, &facts, steps).await?,
        }
        Ok(())
    }

    /// BEGIN/COMMIT/ROLLBACK the proxy answers without a server: a BEGIN waits for the first
    /// statement to know its shard. What to do is `txn::control::decide`'s call.
    async fn transaction_shortcut(
        &mut self,
        sql: &str,
        facts: &[StatementFacts],
    ) -> Result<Option<()>, End> {
        let block = self.block_view();
        let [only] = facts else {
            let first = facts
                .first()
                .map(|f| control_statement(sql, f))
                .unwrap_or(ControlStatement::Other);
            match control::decide_many(block, first) {
                None => return Ok(None),
                Some(ControlAction::SendOnItsOwn) => self.reply_error(Refusal::unsupported(
                    "this transaction is aborted and spans several shards or had a statement refused by pgshard: send COMMIT, ROLLBACK or ROLLBACK TO SAVEPOINT on its own, not together with other statements",
                )),
                Some(_) => self.reply_error(Refusal::Aborted),
            }
            return Ok(Some(()));
        };
        match control::decide(block, control_statement(sql, only)) {
            ControlAction::Route => Ok(None),
            ControlAction::OpenBlock => {
                self.state.open_block(sql);
                self.io.push(&be::command_complete("BEGIN"));
                self.io.push(&be::ready_for_query(TxStatus::InTransaction));
                Ok(Some(()))
            }
            ControlAction::WarnAlreadyInProgress => {
                self.io.push(
                    &ErrorFields {
                        severity: "WARNING".into(),
                        ..ErrorFields::error("25001", "there is already a transaction in progress")
                    }
                    .to_notice(),
                );
                self.io.push(&be::command_complete("BEGIN"));
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
                Ok(Some(()))
            }
            ControlAction::WarnNoTransaction => {
                self.io.push(
                    &ErrorFields {
                        severity: "WARNING".into(),
                        ..ErrorFields::error("25P01", "there is no transaction in progress")
                    }
                    .to_notice(),
                );
                let tag = if only.kind == StatementKind::Commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                self.io.push(&be::command_complete(tag));
                self.io.push(&be::ready_for_query(TxStatus::Idle));
                Ok(Some(()))
            }
            ControlAction::EndInProxy => {
                let chain = crate::txn::statement::chains(sql).then(|| self.txn_begin_sql());
                match self.end_block(only.kind == StatementKind::Commit).await {
                    Ok(end) => self.io.push(&be::command_complete(end.tag())),
                    Err(fields) => {
                        self.reply_error(fields);
                        return Ok(Some(()));
                    }
                }
                if let Some(begin) = chain {
                    self.state.open_block(&begin);
                }
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
                Ok(Some(()))
            }
            ControlAction::Remember if only.local.is_none() => {
                // Nothing has run yet: the block remembers the statement and every shard it
                // reaches replays it after BEGIN (a session SET reaches shards as settings).
                self.note_block_statement(sql, only);
                let tag = match &only.kind {
                    StatementKind::Savepoint => savepoint_tag(sql),
                    StatementKind::Set { value: None, .. } => "RESET",
                    _ => "SET",
                };
                if let StatementKind::Set { .. } = &only.kind {
                    let outcome = Outcome::default();
                    self.after_statements(facts, &outcome, None);
                    for conn in self.held.values_mut() {
                        conn.settings_unknown = true;
                    }
                }
                self.io.push(&be::command_complete(tag));
                self.io.push(&be::ready_for_query(TxStatus::InTransaction));
                Ok(Some(()))
            }
            ControlAction::Remember => Ok(None),
            ControlAction::RefuseAborted | ControlAction::SendOnItsOwn => {
                self.reply_error(aborted());
                Ok(Some(()))
            }
        }
    }

    /// The open block as transaction control sees it.
    pub fn block_view(&self) -> BlockView {
        match &self.state.txn {
            None => BlockView::default(),
            Some(t) => BlockView {
                open: true,
                bound: !t.participants.is_empty(),
                distributed: t.distributed(),
                refused: t.refused,
                failed: self.status() == TxStatus::Failed,
            },
        }
    }

    /// Closes the transaction block; a rollback also rolls back the settings changed inside it.
    pub fn end_transaction(&mut self, rolled_back: bool) {
        self.notify.block_ended(!rolled_back);
        if self.state.close_block(rolled_back) {
            for conn in self.held.values_mut() {
                conn.settings_unknown = true;
            }
        }
    }

    /// Answers a SQL PREPARE or DEALLOCATE (transaction pooling) and gives back what runs in its
    /// place: `Some(None)` the statement itself, `Some(Some(s))` the one an EXECUTE stands
    /// for; `None` once answered.
    fn sql_prepare(&mut self, sql: &str) -> Option<Option<String>> {
        if self.proxy.config.pool.mode == PoolMode::Session || !may_be_sql_prepare(sql) {
            return Some(None);
        }
        let statements = &self.state.statements;
        let action = match self
            .state
            .sql_statements
            .handle(sql, |n| statements.contains_key(n))
        {
            None => return Some(None),
            Some(action) => action,
        };
        if self.state.txn.as_ref().is_some_and(|t| t.refused) {
            self.reply_error(aborted());
            return None;
        }
        match action {
            Ok(SqlPrepareAction::Run(statement)) => Some(Some(statement)),
            Ok(SqlPrepareAction::Done(tag)) => {
                self.io.push(&be::command_complete(tag));
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
                None
            }
            Ok(SqlPrepareAction::Forget(name)) => {
                self.state.statements.remove(&name);
                self.io.push(&be::command_complete("DEALLOCATE"));
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
                None
            }
            Err(fields) => {
                self.reply_error(fields);
                None
            }
        }
    }

    /// Answers a statement the proxy handles itself (no ReadyForQuery); `describe` adds the
    /// RowDescription (simple protocol).
    pub fn local_command(&mut self, local: &LocalCommand, describe: bool, binary: bool) {
        if self.route_hint_command(local, describe) {
            return;
        }
        match local {
            LocalCommand::SetProxy { name, value } if name == "causal_token" => {
                match value {
                    Some(v) => {
                        if let Err(fields) = self.adopt_token(v) {
                            self.io.push_error(&fields);
                            return;
                        }
                    }
                    None => self.state.reads.token = Default::default(),
                }
                self.io.push(&be::command_complete(if value.is_some() {
                    "SET"
                } else {
                    "RESET"
                }));
            }
            LocalCommand::ShowProxy { name } if name == "causal_token" => {
                let text = self.state.reads.token.to_string();
                if describe {
                    self.io
                        .push(&be::row_description(&[("causal_token", be::TEXT_OID)]));
                }
                self.io.push(&be::data_row(&[Some(text.as_str())]));
                self.io.push(&be::command_complete("SHOW"));
            }
            LocalCommand::SetProxy { name, value } => {
                match value {
                    Some(v) => {
                        self.state.proxy_settings.insert(name.clone(), v.clone());
                    }
                    None => {
                        self.state.proxy_settings.remove(name);
                    }
                }
                self.io.push(&be::command_complete(if value.is_some() {
                    "SET"
                } else {
                    "RESET"
                }));
            }
            LocalCommand::ShowProxy { name } => {
                match self.state.proxy_settings.get(name).cloned() {
                    Some(v) => {
                        if describe {
                            self.io
                                .push(&be::row_description(&[(name.as_str(), be::TEXT_OID)]));
                        }
                        self.io.push(&be::data_row(&[Some(v.as_str())]));
                        self.io.push(&be::command_complete("SHOW"));
                    }
                    None => self.io.push_error(&ErrorFields::error(
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    )),
                }
            }
            // Answered by `route_hint_command` above.
            LocalCommand::SetProxyLocal { .. } => {}
            LocalCommand::DeallocateAll => {
                self.state.statements.clear();
                self.state.sql_statements.clear();
                self.io.push(&be::command_complete("DEALLOCATE ALL"));
            }
            // Answered by `run_local` (see `notifications`).
            LocalCommand::Listen { .. }
            | LocalCommand::Unlisten { .. }
            | LocalCommand::Notify { .. }
            | LocalCommand::PgNotify { .. } => {}
            LocalCommand::NextId => {
                let id = self.proxy.ids.next_id();
                if describe {
                    self.io
                        .push(&be::row_description(&[("next_id", be::INT8_OID)]));
                }
                if binary {
                    self.io
                        .push(&be::data_row_bytes(&[Some(&id.to_be_bytes()[..])]));
                } else {
                    self.io
                        .push(&be::data_row(&[Some(id.to_string().as_str())]));
                }
                self.io.push(&be::command_complete("SELECT 1"));
            }
        }
    }

    /// The generated keys reserved for an INSERT that omits its shard key.
    pub(super) fn given_keys(&mut self, facts: &StatementFacts) -> Result<GivenKeys, ErrorFields> {
        let rows = facts.missing_key_rows.unwrap_or(0);
        let table = facts
            .shard_key
            .as_ref()
            .map(|(t, _)| t.as_str())
            .unwrap_or("");
        if facts.random_uuid_keys {
            // The INSERT calls gen_random_uuid(): version-4 UUIDs, as Postgres would make.
            return Ok(GivenKeys {
                keys: (0..rows)
                    .map(|_| crate::router::ShardKey::Uuid(crate::ids::random_uuid_v4()))
                    .collect(),
                overriding: false,
            });
        }
        let keys = self.take_new_key_values(table, rows)?;
        Ok(GivenKeys {
            keys: keys.keys,
            overriding: keys.overriding,
        })
    }

    /// Where a request runs ([`crate::planner::combine`] on this session's state).
    pub fn combine(
        &self,
        routes: &[Route],
        facts: &[StatementFacts],
    ) -> Result<Target, ErrorFields> {
        self.scatter_policy(routes, facts)?;
        let fallback = || self.fallback_shard();
        crate::planner::combine(routes, facts, &self.state, fallback).map_err(ErrorFields::from)
    }

    /// Where a statement that any shard can answer goes: a shard the request already holds a
    /// connection to, else the answering shard.
    pub(super) fn fallback_shard(&self) -> u32 {
        self.held
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.answering_shard())
    }

    /// The shard for a request any shard can answer (a Parse or Describe, a reference table
    /// read, `SELECT 1`): the one that answered at login, unless its monitor last found its
    /// primary down — then the first shard of the map whose primary answered, so clients of the
    /// other shards can still prepare their statements.
    pub(super) fn answering_shard(&self) -> u32 {
        let topology = &self.proxy.topology;
        let down = |shard: u32| {
            topology
                .primary(shard)
                .and_then(|id| topology.server(id))
                .is_some_and(|s| s.sampled_at.is_some() && !s.healthy)
        };
        if !down(self.any_shard) {
            return self.any_shard;
        }
        self.proxy
            .map
            .current()
            .shards()
            .into_iter()
            .find(|s| !down(*s))
            .unwrap_or(self.any_shard)
    }

    /// Makes sure a connection to `shard` is held, in sync with the session's settings, and inside
    /// the client's transaction block if one is open.
    pub async fn ensure_conn(&mut self, shard: u32, join_txn: bool) -> Result<(), ErrorFields> {
        let want = match self.state.reads.servers.get(&shard) {
            Some(id) => Some(*id),
            None => self.proxy.topology.primary(shard),
        };
        let in_block = self.state.txn.as_ref().is_some_and(|t| t.has(shard));
        if let (Some(want), Some(conn)) = (want, self.held.get(&shard)) {
            // A held connection to another server of the shard (a replica read before, or the
            // primary before a failover) goes back unless a block still needs it.
            if conn.server != want.index
                && !in_block
                && conn.reusable()
                && self.pinned_conn_may_go(shard)
            {
                self.held.remove(&shard);
            }
        }
        if !self.held.contains_key(&shard) {
            // The connection this client parked after its last transaction, if it still has
            // it; else one from the pool.
            let conn = match want.and_then(|id| self.parked.unpark(id)) {
                Some(conn) => conn,
                None => match want {
                    Some(id) => self.proxy.pools.get_server_as(&self.server_login, id).await,
                    None => self.proxy.pools.get_as(&self.server_login, shard).await,
                }
                .map_err(checkout_error)?,
            };
            self.held.insert(shard, conn);
        }
        let Some(conn) = self.held.get_mut(&shard) else {
            return Err(ErrorFields::error("XX000", "server connection vanished"));
        };
        if !in_block {
            // A BEGIN owed for a block that ended before anything went out.
            conn.drop_deferred();
        }
        if let Some(sql) = sync_sql(&conn.applied, &self.state.settings, conn.settings_unknown) {
            if let Err(e) = conn.run_silently(&sql).await {
                let fields = backend_error_fields(&e);
                if let Some(conn) = self.held.remove(&shard) {
                    ShardPools::discard(conn);
                }
                return Err(fields);
            }
            conn.applied = self.state.settings.clone();
            conn.settings_unknown = false;
        }
        if join_txn {
            self.join_block(shard).await?;
        }
        Ok(())
    }

    /// Runs steps on one shard, the answers going straight to the client. `None` when the request
    /// could not run (the client already has the error).
    pub async fn run_single(
        &mut self,
        shard: u32,
        join_txn: bool,
        steps: impl FnOnce(&crate::backend::ServerConn) -> Vec<Step>,
    ) -> Result<Option<Outcome>, End> {
        let want_probe = std::mem::take(&mut self.state.reads.commit_probe);
        if let Err(fields) = self.ensure_conn(shard, join_txn).await {
            self.reply_error(fields);
            return Ok(None);
        }
        let Some(conn) = self.held.get_mut(&shard) else {
            return Ok(None);
        };
        let steps = steps(conn);
        let ending = steps_ending(&steps);
        // lsn mode: the commit's position rides behind a request that commits a write.
        let probe = want_probe && ends_with_status(&steps);
        set_active(&self.cancel, vec![conn.cancel_target()]);
        let mut result = exchange::run_then(conn, steps, &mut self.io, probe).await;
        if probe {
            result = match result {
                Ok(outcome) => {
                    let lsn = match conn.read_lsn_probe().await {
                        Ok(lsn) => lsn,
                        Err(e) => {
                            tracing::debug!(shard, error = %e, "no WAL position after a commit");
                            conn.synced = false;
                            None
                        }
                    };
                    // Only a request that left no block open committed.
                    let committed = outcome.status == Some(TxStatus::Idle);
                    self.state.reads.probed(shard, lsn.filter(|_| committed));
                    Ok(outcome)
                }
                Err(e) => {
                    // Its answer was not read: the connection cannot be reused.
                    conn.synced = false;
                    Err(e)
                }
            };
        }
        set_active(&self.cancel, Vec::new());
        match result {
            Ok(outcome) => {
                if let Some(conn) = self.held.get_mut(&shard) {
                    conn.after_tags(&outcome.tags);
                }
                self.state.open_batch_shard = open_shard_after(ending, shard);
                if self.state.open_batch_shard.is_none() {
                    self.track_transaction(shard, &outcome);
                }
                self.release_idle();
                Ok(Some(outcome))
            }
            Err(SinkError::ClientGone) => Err(End::ClientGone),
            Err(SinkError::Refused(message)) => {
                self.reply_error(Refusal::unsupported(message));
                Ok(None)
            }
            Err(SinkError::Backend(e)) => {
                if let Some(conn) = self.held.remove(&shard) {
                    ShardPools::discard(conn);
                }
                tracing::warn!(shard, error = %e, "server connection failed");
                match &mut self.state.txn {
                    // The client's own block, or other shards still holding the block's work: it
                    // can only roll back now (a later COMMIT must not report success).
                    Some(t) if !t.implicit || t.participants.iter().any(|p| *p != shard) => {
                        // The shard's part of the block died with the connection; a statement
                        // that reaches the shard again must not take a new connection's idle
                        // status for the end of the block.
                        t.participants.retain(|p| *p != shard);
                        t.refused = true
                    }
                    _ => self.state.txn = None,
                }
                self.state.open_batch_shard = None;
                self.state.skip_until_sync = false;
                self.reply_error(backend_error_fields(&e));
                Ok(None)
            }
        }
    }

    /// Updates the transaction block from the status the server reported.
    fn track_transaction(&mut self, shard: u32, outcome: &Outcome) {
        match outcome.status {
            Some(TxStatus::Idle) => {
                // A transaction whose BEGIN is still pending has not reached this shard.
                let ours = self.state.txn.as_ref().is_some_and(|t| t.has(shard));
                if ours && !self.block_is_distributed() {
                    let rolled_back = outcome.error.is_some()
                        || outcome.tags.last().is_some_and(|t| t == "ROLLBACK");
                    self.end_transaction(rolled_back);
                } else if ours {
                    // One shard left a block that spans several: the rest can only roll back.
                    if let Some(t) = &mut self.state.txn {
                        t.participants.retain(|p| *p != shard);
                        t.refused = true;
                    }
                }
                self.state.portals.clear();
                self.state.cursors.end_block(
                    outcome.error.is_some() || outcome.tags.last().is_some_and(|t| t == "ROLLBACK"),
                );
            }
            Some(TxStatus::InTransaction) | Some(TxStatus::Failed) => {
                self.state.joined_on(shard);
                if let Some(txn) = &mut self.state.txn {
                    // Only ROLLBACK TO SAVEPOINT rescues a block the proxy refused a statement in.
                    if outcome.tags.last().is_some_and(|t| t == "ROLLBACK") {
                        txn.refused = false;
                    }
                }
            }
            None => {}
        }
    }

    /// In transaction pooling, gives back connections once no transaction needs them.
    pub fn release_idle(&mut self) {
        if self.proxy.config.pool.mode == PoolMode::Session || self.state.open_batch_shard.is_some()
        {
            return;
        }
        if self.held.is_empty() {
            // Nothing to return (most requests end here twice): no lists built, and a map
            // emptied elsewhere lets its node go.
            self.held = HeldConns::default();
            return;
        }
        let block = self.state.txn.as_ref().map(|t| &t.participants);
        if block.is_some_and(|shards| shards.is_empty()) {
            // A BEGIN is pending: keep what we have for the first statement.
            return;
        }
        // No list of shards built (this runs twice per request): the map holds a connection or
        // two, searched again after each removal.
        let pins = &self.pins;
        let goes = |s: &u32| !block.is_some_and(|b| b.contains(s)) && !pins.keeps(*s);
        loop {
            let next = self.held.keys().copied().find(|s| goes(s));
            let Some(shard) = next else {
                break;
            };
            if let Some(conn) = self.held.remove(&shard) {
                if !conn.reusable() {
                    ShardPools::discard(conn);
                } else if let Err(conn) = self.parked.park(conn) {
                    drop(conn);
                }
            }
        }
        if self.held.is_empty() {
            // A map emptied by removals keeps its node (room for eleven connections, kilobytes):
            // an idle client holds none.
            self.held = HeldConns::default();
        }
    }

    /// Records the effect of successful SET/RESET/DISCARD statements on the session's settings.
    /// `ran_on` is the shard that ran them (`None` when the proxy answered itself).
    pub fn after_statements(
        &mut self,
        facts: &[StatementFacts],
        outcome: &Outcome,
        ran_on: Option<u32>,
    ) {
        if outcome.error.is_some() {
            return;
        }
        // Settings changed inside a block that the same request rolls back are undone.
        let mut block_start = None;
        for f in facts {
            let kind = crate::router::set_config::as_set(f);
            match self.state.record_setting(&kind, &mut block_start) {
                SettingEffect::Unchanged => {}
                SettingEffect::Restored => {
                    for conn in self.held.values_mut() {
                        conn.settings_unknown = true;
                    }
                }
                SettingEffect::Set { name, value } => {
                    // The server now holds exactly what it was told (RESET → its default);
                    // other shards catch up when next used.
                    for (_, conn) in self.held.iter_mut().filter(|(s, _)| Some(**s) == ran_on) {
                        match value {
                            Some(v) => {
                                conn.applied.insert(name.to_string(), v.to_string());
                            }
                            None => {
                                conn.applied.remove(name);
                            }
                        }
                    }
                }
                SettingEffect::ResetAll { discard } => {
                    for conn in self.held.values_mut() {
                        conn.settings_unknown = true;
                        if discard {
                            conn.prepared.clear();
                        }
                    }
                }
            }
        }
    }

    /// Runs a request on several shards and finishes it for the client (closing frames and
    /// ReadyForQuery). `atomic`: outside a block, the shards run it inside an implicit block
    /// that commits on all of them or none. Returns true when it succeeded everywhere.
    pub async fn run_scatter_request(
        &mut self,
        shards: Vec<u32>,
        atomic: bool,
        steps: impl Fn(&crate::backend::ServerConn) -> Vec<Step>,
        merge: Option<crate::exec::merged::BoundMerge>,
    ) -> Result<bool, End> {
        let implicit = atomic && shards.len() > 1 && self.begin_implicit_block();
        let end = self.run_scatter(shards, steps, merge).await?;
        if let Some(fields) = end.failure {
            if implicit {
                self.finish_implicit_block(false).await?;
            }
            self.reply_error(fields);
            return Ok(false);
        }
        // A shard's error already went to the client through the merge.
        let failed = self.status() == TxStatus::Failed;
        if implicit {
            if let Some(fields) = self.finish_implicit_block(!failed).await? {
                self.reply_error(fields);
                return Ok(false);
            }
        }
        if let Some(complete) = end.complete.filter(|_| !failed) {
            self.io.push(&complete);
        }
        let status = self.status();
        self.io.push(&be::ready_for_query(status));
        Ok(!failed)
    }

    /// Runs steps on several shards in parallel and merges the answers for the client; the
    /// closing CommandComplete comes back to the caller, which sends it and ReadyForQuery.
    pub async fn run_scatter(
        &mut self,
        shards: Vec<u32>,
        steps: impl Fn(&crate::backend::ServerConn) -> Vec<Step>,
        merge: Option<crate::exec::merged::BoundMerge>,
    ) -> Result<ScatterEnd, End> {
        self.run_scatter_to::<ClientIo>(shards, steps, merge, None)
            .await
    }

    /// `run_scatter` whose merged answer goes to `sink` instead of the client when one is given
    /// (a cursor the proxy serves keeps it).
    pub async fn run_scatter_to<S: exchange::FrameSink + Send>(
        &mut self,
        shards: Vec<u32>,
        steps: impl Fn(&crate::backend::ServerConn) -> Vec<Step>,
        merge: Option<crate::exec::merged::BoundMerge>,
        sink: Option<&mut S>,
    ) -> Result<ScatterEnd, End> {
        for shard in &shards {
            if let Err(fields) = self.ensure_conn(*shard, true).await {
                return Ok(ScatterEnd {
                    failure: Some(fields),
                    complete: None,
                });
            }
        }
        let mut work = Vec::with_capacity(shards.len());
        for shard in &shards {
            if let Some(conn) = self.held.remove(shard) {
                let s = steps(&conn);
                work.push((conn, s));
            }
        }
        set_active(
            &self.cancel,
            work.iter().map(|(c, _)| c.cancel_target()).collect(),
        );
        // An ordered locking read with a LIMIT, in a block: each shard locks only its share.
        let shares = merge.as_ref().and_then(|m| {
            let wanted = m.rows_wanted().filter(|_| m.plan.lock_shares)?;
            let in_block = self.state.txn.is_some() && self.state.open_batch_shard.is_none();
            let two_steps = in_block
                && work.len() > 1
                && work
                    .iter()
                    .all(|(_, s)| crate::exec::lock_share::applies(s));
            two_steps.then_some(wanted)
        });
        let result = match (shares, merge, sink) {
            (Some(wanted), Some(merge), Some(sink)) => {
                crate::exec::lock_share::run(work, sink, merge, wanted).await
            }
            (Some(wanted), Some(merge), None) => {
                crate::exec::lock_share::run(work, &mut self.io, merge, wanted).await
            }
            (_, merge, Some(sink)) => crate::exec::scatter::run(work, sink, merge).await,
            (_, merge, None) => crate::exec::scatter::run(work, &mut self.io, merge).await,
        };
        set_active(&self.cancel, Vec::new());
        for conn in result.conns {
            self.held.insert(conn.shard, conn);
        }
        if result.client_gone {
            return Err(End::ClientGone);
        }
        if result.failure.is_some() {
            if let Some(t) = &mut self.state.txn {
                // A shard of the block lost its connection.
                if !t.implicit && t.participants.iter().any(|p| !self.held.contains_key(p)) {
                    let held = &self.held;
                    t.participants.retain(|p| held.contains_key(p));
                    t.refused = true;
                }
            }
        }
        Ok(ScatterEnd {
            failure: result.failure,
            complete: result.complete,
        })
    }
}

/// What a scatter left for its caller to finish.
pub struct ScatterEnd {
    /// A failure the client has not been told about.
    pub failure: Option<ErrorFields>,
    /// The merged CommandComplete, not yet sent.
    pub complete: Option<Frame>,
}

pub use crate::planner::control_statement;
pub use crate::planner::units::needs_atomic_scatter;

/// The merge of a simple-protocol statement that runs on several shards: the rewritten text (its
/// literals put back) and the plan bound to them; `None` when rows are only concatenated.
pub(crate) fn merge_for_simple(
    facts: &[StatementFacts],
    literals: &[crate::router::literals::Literal],
    chosen: &crate::exec::table_columns::ChosenPlans,
) -> Result<Option<(String, crate::exec::merged::BoundMerge)>, ErrorFields> {
    let [f] = facts else { return Ok(None) };
    let Some(Ok(plan)) = &f.merge else {
        return Ok(None);
    };
    let plan = &chosen.plan(plan)?;
    let sql = plan.shard_sql.with_literals(literals).ok_or_else(|| {
        ErrorFields::error("XX000", "a rewritten statement lost one of its literals")
    })?;
    let params = crate::router::literals::LiteralParams(literals);
    let bound = crate::exec::merged::BoundMerge::new(plan.clone(), &params, true)?;
    Ok(Some((sql, bound)))
}

/// The command tag of a savepoint statement, from its first words.
fn savepoint_tag(sql: &str) -> &'static str {
    let lower = sql.trim_start().to_ascii_lowercase();
    if lower.starts_with("release") {
        "RELEASE"
    } else if lower.starts_with("rollback") {
        "ROLLBACK"
    } else {
        "SAVEPOINT"
    }
}

pub use crate::planner::rules::is_sharded_copy_in;

/// True when the last step asks for a ReadyForQuery (a Sync or a simple Query): nothing of the
/// request is still open on the server afterwards.
fn ends_with_status(steps: &[Step]) -> bool {
    matches!(
        steps.last(),
        Some(Step::Send {
            expect: Expect::Sync | Expect::Query,
            ..
        })
    )
}

/// How a run's steps end: with a simple Query's or a Sync's ReadyForQuery, or (no status asked
/// for) under a Flush.
fn steps_ending(steps: &[Step]) -> Ending {
    let status = steps.iter().find_map(|s| match s {
        Step::Send {
            expect: expect @ (Expect::Sync | Expect::Query),
            ..
        } => Some(expect),
        _ => None,
    });
    match status {
        Some(Expect::Query) => Ending::Query,
        Some(_) => Ending::Sync,
        None => Ending::Flush,
    }
}
