//! The extended query protocol: messages buffered until Sync (or Flush) form one batch; the batch is
//! routed by its Bind parameters, and client statement names are mapped to server-side names so
//! prepared statements keep working whichever pooled connection runs them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use super::batch_portals::BatchPortals;
use super::planning::BindFacts;
use super::session::{aborted, needs_atomic_scatter, End, Prepared, Session, Target};
use crate::backend::ServerConn;
use crate::exec::copy_in::CopyProtocol;
use crate::exec::exchange::{Expect, Step};
use crate::exec::unnest_insert::UnnestBatch;
use crate::fast_hash::FastSet;
use crate::planner::batch::{footing, Footing};
use crate::planner::extended::rejected_by_failed_block;
use crate::planner::messages::lone_unnest_insert;
use crate::planner::rules::apply_cursor_effects;
use crate::planner::served::served_portals;
use crate::planner::{Ending, Plan, Planned};
use crate::refusal::Refusal;
use crate::router::params::BindParams;
use crate::router::{LocalCommand, NotifyArg, Route, StatementFacts, StatementKind};
use crate::telemetry::QueryTimer;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Execute, Parse, Target as NamedTarget};

pub(super) use crate::planner::messages::Msg;

/// The server-side name of a named client statement: a digest of its text and parameter types, so
/// every client preparing the same statement shares one server-side statement per connection.
pub fn server_statement_name(sql: &str, param_types: &[u32]) -> String {
    let mut h = Sha256::new();
    h.update(sql.as_bytes());
    for t in param_types {
        h.update(t.to_be_bytes());
    }
    let digest = h.finalize();
    let mut name = String::with_capacity(40);
    name.push_str("pgshard_");
    for b in &digest[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// The statement a Bind names (its body: portal, then statement, as C strings), read without
/// decoding the rest.
pub(crate) fn bind_statement_name(body: &[u8]) -> Option<&str> {
    let portal_end = body.iter().position(|b| *b == 0)?;
    let rest = &body[portal_end + 1..];
    let end = rest.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Statements whose batch must reserve generated keys first, or that change a table's columns.
fn needs_keys(facts: &[StatementFacts]) -> bool {
    facts.iter().any(|f| {
        f.missing_key_rows.is_some() || f.unnest_keyless.is_some() || f.kind == StatementKind::Ddl
    })
}

fn is_local(facts: &[StatementFacts]) -> bool {
    facts.first().is_some_and(|f| f.local.is_some())
}

fn statement_missing(name: &str) -> ErrorFields {
    if name.is_empty() {
        ErrorFields::error("26000", "unnamed prepared statement does not exist")
    } else {
        ErrorFields::error(
            "26000",
            format!("prepared statement \"{name}\" does not exist"),
        )
    }
}

impl Session {
    /// Handles a batch ended by Sync (`sync`) or Flush. A named statement exists once its Parse
    /// was answered: a Parse the server rejected, or one skipped after an earlier error or never
    /// sent because the batch was refused, leaves its name free for the next Parse.
    pub async fn extended_batch(&mut self, sync: bool) -> Result<(), End> {
        let answered_before = self.io.parse_completes();
        self.batch_parses.clear();
        if self.list_batch_insert_columns(sync).await? {
            return Ok(());
        }
        if self.batch_may_need_keys() {
            let frames = std::mem::take(&mut self.batch);
            self.reserve_keys_for_batch(&frames).await;
            self.batch = frames;
        }
        if self.before_batch(sync).await? {
            return Ok(());
        }
        let result = self.run_extended_batch(sync).await;
        let answered =
            usize::try_from(self.io.parse_completes() - answered_before).unwrap_or(usize::MAX);
        for (name, prepared) in std::mem::take(&mut self.batch_parses)
            .into_iter()
            .skip(answered)
        {
            if self
                .state
                .statements
                .get(&name)
                .is_some_and(|p| Arc::ptr_eq(p, &prepared))
            {
                self.state.statements.remove(&name);
            }
        }
        result
    }

    /// False when no message of the batch can need generated keys (or change a table's columns):
    /// Binds of known statements, and Parses of texts, that name their keys, as a prepared
    /// statement's re-execution or an unnamed statement's Parse/Bind sends them. Spares decoding
    /// every Parse and Bind once more per batch.
    fn batch_may_need_keys(&self) -> bool {
        self.batch.iter().any(|frame| match frame.tag {
            // Analyzed once per batch (`analyze_parsed` remembers it for the routing after).
            fe::PARSE => fe::parse_texts(&frame.body)
                .map_or(true, |(_, query)| needs_keys(&self.analyze_parsed(query))),
            fe::BIND => bind_statement_name(&frame.body)
                .and_then(|name| self.state.statements.get(name))
                .is_none_or(|st| needs_keys(&st.facts)),
            _ => false,
        })
    }

    /// Answers the batch with `fields` alone: the rest of it up to Sync is skipped, as a server
    /// skips what follows an error.
    pub(super) async fn refuse_batch(
        &mut self,
        fields: impl Into<ErrorFields>,
        sync: bool,
    ) -> Result<(), End> {
        self.push_error_in_batch(fields);
        self.state.skip_until_sync = !sync;
        if sync {
            return self.finish_open_batch().await;
        }
        Ok(())
    }

    async fn run_extended_batch(&mut self, sync: bool) -> Result<(), End> {
        let mut frames = std::mem::take(&mut self.batch);
        let proxy = self.proxy.clone();
        let map = proxy.map.current();
        let mut msgs = Vec::with_capacity(frames.len());
        // Each message's own route (`None`: routed by the planner, or with its Bind).
        let mut decoded_routes: Vec<Option<Route>> = Vec::with_capacity(frames.len());
        // The Binds the planner routes: their message index, lookup route and reserved keys.
        let mut binds: Vec<BindFacts> = Vec::new();
        let mut portal_statements = BatchPortals::default();
        let mut error: Option<ErrorFields> = None;
        let mut claims = Vec::new();
        for frame in frames.drain(..) {
            match self.resolve(&frame, &mut portal_statements) {
                Ok(Some((msg, route, is_local_stmt))) => {
                    if let (
                        Msg::Bind {
                            bind, statement, ..
                        },
                        false,
                        None,
                    ) = (&msg, is_local_stmt, &route)
                    {
                        match self
                            .bind_facts(statement, bind, msgs.len(), claims.len())
                            .await
                        {
                            Ok((facts, c)) => {
                                binds.push(facts);
                                claims.extend(c);
                            }
                            Err(fields) => {
                                error = Some(fields);
                                break;
                            }
                        }
                    }
                    decoded_routes.push(route);
                    msgs.push(msg);
                }
                Ok(None) => {}
                Err(fields) => {
                    error = Some(fields);
                    break;
                }
            }
        }
        // The emptied list keeps its room for the next batch: no allocation per batch for the
        // first message (a long pipeline's room goes, not kept by an idle client).
        if self.batch.is_empty() && frames.capacity() <= 8 {
            self.batch = frames;
        }
        let rejected = self.block_failed()
            && rejected_by_failed_block(
                true,
                crate::planner::messages::executed(&msgs)
                    .statements
                    .iter()
                    .map(|st| (st.sql.as_str(), st.facts.first())),
            );
        if rejected {
            msgs.clear();
            decoded_routes.clear();
            binds.clear();
            claims.clear();
            error = Some(aborted());
        }
        let ending = if sync { Ending::Sync } else { Ending::Flush };
        let planned = loop {
            let planned = self.plan_batch_request(
                &msgs,
                &decoded_routes,
                &binds,
                &claims,
                ending,
                error.is_some(),
                &map,
            );
            match planned {
                Ok(Planned {
                    plan: Plan::FailedAt { message, refusal },
                    ..
                }) => {
                    // The messages before the Bind that could not be routed run; then its error.
                    msgs.truncate(message);
                    decoded_routes.truncate(message);
                    let kept = binds.iter().take_while(|b| b.message < message).count();
                    if let Some(first_dropped) = binds.get(kept) {
                        claims.truncate(first_dropped.claims_before);
                    }
                    binds.truncate(kept);
                    error = Some(refusal.into());
                }
                other => break other,
            }
        };
        let mut planned = match planned {
            Ok(p) => p,
            Err(refusal) => return self.refuse_batch(refusal, sync).await,
        };
        apply_cursor_effects(&mut self.state, &planned.cursor_effects);
        for (b, text) in binds.iter().zip(planned.rewritten.iter_mut()) {
            if let Some(Msg::Bind { rewritten, .. }) = msgs.get_mut(b.message) {
                *rewritten = text.take();
            }
        }
        let msg_routes = std::mem::take(&mut planned.message_routes);
        let target = match planned.plan {
            Plan::Claims => {
                return self
                    .run_batch_with_claims(msgs, msg_routes, claims, sync)
                    .await
            }
            Plan::HeldPortal => return self.run_pipeline(msgs, msg_routes, error, sync).await,
            Plan::ServedCursor => {
                let (ours, others) = {
                    let fallback = || self.fallback_shard();
                    let cx = self.context(&map, &fallback);
                    let served = served_portals(&msgs, &self.state, &cx);
                    served.map_or_else(Default::default, |s| (s.ours, s.others))
                };
                return self.cursor_batch(&msgs, &ours, others, sync).await;
            }
            Plan::CopyIn => {
                return self
                    .copy_batch(&msgs, &portal_statements, error, sync, None)
                    .await
            }
            Plan::NeedsKeys => {
                let lost = ErrorFields::error("XX000", "generated keys were not reserved");
                return self.refuse_batch(lost, sync).await;
            }
            Plan::Empty | Plan::Local(_) | Plan::FailedAt { .. } => {
                if let Some(fields) = error {
                    self.push_error_in_batch(fields);
                    self.state.skip_until_sync = !sync;
                }
                if sync {
                    return self.finish_open_batch().await;
                }
                return Ok(());
            }
            Plan::SplitInsert { rows, unnest } => {
                let (Some(shape), Some(unnest)) = (lone_unnest_insert(&msgs), unnest) else {
                    let lost = ErrorFields::error("XX000", "an UNNEST insert lost its plan");
                    return self.refuse_batch(lost, sync).await;
                };
                let batch = UnnestBatch {
                    sql: &shape.statement.sql,
                    param_types: &shape.statement.param_types,
                    bind: shape.bind,
                    parsed: shape.parsed,
                    describe: shape.describe,
                };
                return self.run_unnest_insert_extended(batch, &unnest, &rows).await;
            }
            Plan::LocalBatch => {
                self.answer_locally(&msgs, &portal_statements, error, sync)
                    .await;
                return Ok(());
            }
            Plan::InTurn => return self.run_pipeline(msgs, msg_routes, error, sync).await,
            Plan::Run(target) => target,
            Plan::CopyOut(shards) => Target::Scatter(shards),
            Plan::RaiseOn { shard, refusal } => {
                // Statements of this implicit transaction already ran on `shard`: the shard
                // itself raises the refusal, so it rolls them back as Postgres would.
                let mut steps = raise_steps(&refusal.into());
                steps.push(batch_end(sync));
                self.run_single(shard, true, |_| steps).await?;
                self.state.skip_until_sync = !sync;
                return Ok(());
            }
        };
        let ran = crate::planner::messages::executed(&msgs);
        let executes = ran.executes;
        let executed = ran.statements;
        // The facts of the executed statements; borrowed for the usual one (no clone per Bind).
        let several: Vec<StatementFacts>;
        let all_facts: &[StatementFacts] = match executed.as_slice() {
            [one] => one.facts.get(..1).unwrap_or_default(),
            many => {
                several = many
                    .iter()
                    .filter_map(|st| st.facts.first().cloned())
                    .collect();
                &several
            }
        };
        let needed: smallvec::SmallVec<[Route; 2]> =
            crate::planner::messages::needed_routes(&msg_routes)
                .cloned()
                .collect();
        let tail_error = error.clone();
        let merge = match &target {
            Target::Scatter(_) => match merge_for_batch(&msgs, &self.group_plans) {
                Ok(m) => m,
                Err(fields) => {
                    return self.refuse_batch(fields, sync).await;
                }
            },
            Target::Single(_) | Target::Broadcast(_) => None,
        };
        let merge_steps = merge.as_ref().map(|(m, _)| m);
        // Statement texts need looking at only while a rebalancing job fences shards.
        let fences = if self.proxy.rebalance.fence().is_some() {
            match self.fence_statement_texts(
                &fenceable_texts(&msgs, merge_steps),
                all_facts,
                &target,
            ) {
                Ok(f) => f,
                Err(fields) => return self.refuse_batch(fields, sync).await,
            }
        } else {
            None
        };
        let binds = msgs.iter().any(|m| matches!(m, Msg::Bind { .. }));
        let Footing { join_txn, settle } = footing(ending, executes, &needed, binds, &self.state);
        let build = |conn: &ServerConn| {
            let fence = fences.as_ref().and_then(|f| f.get(&conn.shard));
            let mut steps = build_steps(&msgs, conn, tail_error.as_ref(), sync, merge_steps, fence);
            if settle {
                steps.pop();
                steps.push(quiet_sync());
            }
            steps
        };
        let _timed = (executes > 0).then(|| QueryTimer::start(target.route_kind()));
        match target {
            Target::Single(shard) => {
                for msg in &msgs {
                    if let Msg::Bind { bind, .. } = msg {
                        self.state.portals.insert(bind.portal.clone(), shard);
                    }
                }
                if sync && executes > 0 {
                    self.route_reads(&[shard], all_facts).await;
                }
                let autocommit = self.state.txn.is_none() && self.state.open_batch_shard.is_none();
                if sync {
                    self.ask_commit_position(shard, autocommit, all_facts);
                }
                let outcome = self.run_single_read(shard, join_txn, build).await?;
                if let Some(outcome) = outcome {
                    if sync {
                        self.note_autocommit_write(shard, autocommit, all_facts, &outcome);
                    }
                    if outcome.error.is_some() {
                        self.state.batch_failed(!sync, join_txn);
                    }
                    self.after_statements(all_facts, &outcome, Some(shard));
                    let ran = completed_statements(
                        executed.len(),
                        executes,
                        outcome.error.is_some(),
                        outcome.tags.len(),
                    );
                    let ran = &executed[..ran];
                    let open =
                        since_block_end(ran.iter().map(|st| st.facts.first().map(|f| &f.kind)));
                    for st in &ran[open..] {
                        if let Some(f) = st.facts.first() {
                            self.note_block_statement(&st.sql, f);
                        }
                    }
                }
            }
            Target::Scatter(shards) => {
                if all_facts
                    .iter()
                    .any(|f| matches!(f.kind, StatementKind::Copy { .. }))
                {
                    return self
                        .copy_batch(&msgs, &portal_statements, error, sync, Some(shards))
                        .await;
                }
                let bound = merge.as_ref().map(|(_, b)| b.clone());
                let atomic = all_facts.iter().any(needs_atomic_scatter);
                self.route_reads(&shards, all_facts).await;
                if let Some(first) = executed.first() {
                    self.before_rollback_to(&first.sql, first.facts.first());
                }
                let ok = self
                    .run_scatter_request(shards, atomic, build, bound)
                    .await?;
                if ok {
                    let open = since_block_end(
                        executed.iter().map(|st| st.facts.first().map(|f| &f.kind)),
                    );
                    for st in &executed[open..] {
                        if let Some(f) = st.facts.first() {
                            self.note_block_statement(&st.sql, f);
                        }
                    }
                }
            }
            Target::Broadcast(shards) => {
                self.run_broadcast(shards, all_facts, build).await?;
            }
        }
        if error.is_some() && !sync {
            self.state.skip_until_sync = true;
        }
        Ok(())
    }

    /// A batch executing a COPY that spans shards (`scatter`: the shards of a COPY TO; `None`: a
    /// COPY FROM STDIN split by key). The proxy answers Parse/Bind/Describe/Close itself and runs
    /// the COPY with the simple protocol on the shards.
    async fn copy_batch(
        &mut self,
        msgs: &[Msg],
        portal_statements: &BatchPortals,
        error: Option<ErrorFields>,
        sync: bool,
        scatter: Option<Vec<u32>>,
    ) -> Result<(), End> {
        let executes: Vec<&Execute> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Execute(e) => Some(e),
                _ => None,
            })
            .collect();
        let statement = executes
            .first()
            .and_then(|e| portal_statements.get(&e.portal).cloned());
        let alone = executes.len() == 1
            && matches!(msgs.last(), Some(Msg::Execute(_)))
            && self.state.open_batch_shard.is_none();
        let statement = match (statement, error) {
            (Some(st), None) if alone => st,
            (_, error) => {
                // Nothing runs: an error found while resolving the batch (or a block already
                // failed) is reported as it is; anything else is a batch pgshard cannot split.
                return self.refuse_batch(error.unwrap_or_else(|| Refusal::unsupported(
                    "a COPY that spans shards must be the only statement executed in its batch: send Parse/Bind/Execute of the COPY, then Sync",
                ).into()), sync).await;
            }
        };
        for msg in msgs {
            match msg {
                Msg::Parse(..) => self.io.push(&be::parse_complete()),
                Msg::Bind { .. } => self.io.push(&be::bind_complete()),
                Msg::DescribeStatement(st) => {
                    self.io.push(&parameter_description(&st.param_types));
                    self.io.push(&be::no_data());
                }
                Msg::DescribePortal(_) => self.io.push(&be::no_data()),
                Msg::CloseStatement | Msg::ClosePortal(_) => self.io.push(&be::close_complete()),
                Msg::Execute(_) => {}
            }
        }
        let Some(facts) = statement.facts.first() else {
            return Ok(());
        };
        let protocol = CopyProtocol::Extended { sync };
        match scatter {
            None => self.copy_in_sharded(&statement.sql, facts, protocol).await,
            Some(shards) => {
                self.copy_out_sharded(&statement.sql, facts, shards, protocol)
                    .await
            }
        }
    }

    /// Answers the Sync of a batch that had nothing left to run.
    pub async fn finish_open_batch(&mut self) -> Result<(), End> {
        if self.state.txn.as_ref().is_some_and(|t| t.implicit) {
            // A pipeline that Flush left open over several shards ends at this Sync.
            if let Some(fields) = self.finish_implicit_block(true).await? {
                self.push_error_in_batch(fields);
            }
            let status = self.status();
            self.io.push(&be::ready_for_query(status));
            return Ok(());
        }
        if let Some(shard) = self.state.open_batch_shard {
            let steps = vec![Step::Send {
                frame: fe::sync(),
                expect: Expect::Sync,
                forward: true,
            }];
            self.run_single(shard, true, |_| steps).await?;
            return Ok(());
        }
        let status = self.status();
        self.io.push(&be::ready_for_query(status));
        Ok(())
    }

    /// Decodes one message and works out its route. `Ok(None)` for messages with nothing to do.
    fn resolve(
        &mut self,
        frame: &Frame,
        portal_statements: &mut BatchPortals,
    ) -> Result<Option<(Msg, Option<Route>, bool)>, ErrorFields> {
        let malformed =
            |e: crate::wire::read::DecodeError| ErrorFields::error("08P01", e.to_string());
        match frame.tag {
            fe::PARSE => {
                let parse = Parse::decode(&frame.body).map_err(malformed)?;
                if !parse.name.is_empty() && self.state.statements.contains_key(&parse.name) {
                    return Err(ErrorFields::error(
                        "42P05",
                        format!("prepared statement \"{}\" already exists", parse.name),
                    ));
                }
                let facts = self.analyze_parsed(&parse.query);
                if self.names_after_path_change(&parse.query, &facts) {
                    return Err(Refusal::unsupported(
                        super::search_path::NAMES_AFTER_PATH_CHANGE_IN_BATCH,
                    )
                    .into());
                }
                if facts.len() > 1 {
                    return Err(ErrorFields::error(
                        "42601",
                        "cannot insert multiple commands into a prepared statement",
                    ));
                }
                let server_name = if parse.name.is_empty() {
                    String::new()
                } else {
                    server_statement_name(&parse.query, &parse.param_types)
                };
                let local = is_local(&facts);
                // A tenant schema's tables exist on its shard only: Describe them there, and
                // refuse at Parse what no one shard can describe.
                if let Some(why) = facts.first().and_then(crate::router::schemas::refusal) {
                    return Err(Refusal::unsupported(why).into());
                }
                let parse_route = match facts.first().and_then(|f| f.schema_shard) {
                    Some(shard) => Route::Single(shard),
                    None => Route::Any,
                };
                let prepared = Arc::new(Prepared {
                    sql: parse.query.clone(),
                    param_types: parse.param_types.clone(),
                    facts,
                    server_name,
                });
                self.state
                    .statements
                    .insert(parse.name.clone(), prepared.clone());
                self.batch_parses
                    .push((parse.name.clone(), prepared.clone()));
                Ok(Some((
                    Msg::Parse(parse, prepared),
                    Some(parse_route),
                    local,
                )))
            }
            fe::BIND => {
                let bind = Bind::decode(&frame.body).map_err(malformed)?;
                let mut statement = self
                    .state
                    .statements
                    .get(&bind.statement)
                    .cloned()
                    .ok_or_else(|| statement_missing(&bind.statement))?;
                if let Some(bound) = super::bound_set_config::bind_set_config(&statement, &bind)? {
                    statement = bound;
                }
                self.rebind_held(&bind.portal)?;
                portal_statements.insert(bind.portal.clone(), statement.clone());
                let Some(facts) = statement.facts.first() else {
                    return Ok(Some((
                        Msg::Bind {
                            bind,
                            statement,
                            rewritten: None,
                        },
                        Some(Route::Any),
                        false,
                    )));
                };
                if facts.local.is_some() {
                    return Ok(Some((
                        Msg::Bind {
                            bind,
                            statement,
                            rewritten: None,
                        },
                        None,
                        true,
                    )));
                }
                if let Some(fields) = self.pin_or_refuse(std::slice::from_ref(facts)) {
                    return Err(fields);
                }
                // An UNNEST insert that needs generated keys gets them here (its Bind and
                // statement change); every other Bind is routed once the lookups it may need
                // are made (`bind_route`).
                if facts.unnest_keyless.is_some() && !self.route_hint_applies(facts) {
                    let map = self.proxy.map.current();
                    let (keyed, with_keys, route) =
                        self.bind_unnest_keyless(&bind, &statement, &map)?;
                    return Ok(Some((
                        Msg::Bind {
                            bind: keyed,
                            statement: with_keys,
                            rewritten: None,
                        },
                        Some(route),
                        false,
                    )));
                }
                Ok(Some((
                    Msg::Bind {
                        bind,
                        statement,
                        rewritten: None,
                    },
                    None,
                    false,
                )))
            }
            fe::DESCRIBE => {
                let target = NamedTarget::decode(&frame.body, "Describe").map_err(malformed)?;
                if target.kind == b'S' {
                    let statement = self
                        .state
                        .statements
                        .get(&target.name)
                        .cloned()
                        .ok_or_else(|| statement_missing(&target.name))?;
                    let local = is_local(&statement.facts);
                    Ok(Some((
                        Msg::DescribeStatement(statement),
                        Some(Route::Any),
                        local,
                    )))
                } else {
                    let route = self.portal_route(&target.name, portal_statements);
                    Ok(Some((Msg::DescribePortal(target), route, false)))
                }
            }
            fe::EXECUTE => {
                let execute = Execute::decode(&frame.body).map_err(malformed)?;
                let route = self.portal_route(&execute.portal, portal_statements);
                Ok(Some((Msg::Execute(execute), route, false)))
            }
            fe::CLOSE => {
                let target = NamedTarget::decode(&frame.body, "Close").map_err(malformed)?;
                if target.kind == b'S' {
                    self.state.statements.remove(&target.name);
                    Ok(Some((Msg::CloseStatement, Some(Route::Any), false)))
                } else {
                    // Closing a portal the proxy holds frees it; any shard answers the Close
                    // (pgjdbc sends it together with the next statement).
                    let route = if portal_statements.contains_key(&target.name) {
                        None
                    } else if self.state.cursors.served(&target.name).is_some() {
                        self.state.cursors.close(&target.name);
                        Some(Route::Any)
                    } else {
                        self.portal_route(&target.name, portal_statements)
                    };
                    Ok(Some((Msg::ClosePortal(target), route, false)))
                }
            }
            _ => Ok(None),
        }
    }

    /// Where a Describe, Execute or Close of `portal` runs (see
    /// [`crate::planner::batch::portal_route`]).
    fn portal_route(&self, portal: &str, portal_statements: &BatchPortals) -> Option<Route> {
        crate::planner::batch::portal_route(
            &self.state,
            portal,
            portal_statements.contains_key(portal),
        )
    }

    /// Answers a batch of pgshard's own commands or deferred transaction control without a server.
    pub(super) async fn answer_locally(
        &mut self,
        msgs: &[Msg],
        portal_statements: &BatchPortals,
        mut error: Option<ErrorFields>,
        sync: bool,
    ) {
        let mut binary_portals: HashMap<&str, bool> = HashMap::new();
        // Each portal's Bind and statement: `SELECT pg_notify($1, $2)` reads its values.
        let mut bound: HashMap<&str, (&Bind, &Prepared)> = HashMap::new();
        for msg in msgs {
            match msg {
                Msg::Parse(..) => self.io.push(&be::parse_complete()),
                Msg::Bind {
                    bind, statement, ..
                } => {
                    binary_portals.insert(
                        bind.portal.as_str(),
                        bind.result_formats.first() == Some(&1),
                    );
                    bound.insert(bind.portal.as_str(), (bind, statement));
                    self.io.push(&be::bind_complete());
                }
                Msg::DescribeStatement(st) if is_local(&st.facts) || st.facts.is_empty() => {
                    self.io.push(&parameter_description(&local_param_types(
                        &st.facts,
                        &st.param_types,
                    )));
                    self.io.push(&local_row_description(&st.facts));
                }
                Msg::DescribeStatement(st) => {
                    // A statement for the shards beside the BEGIN that opens its block
                    // (pgjdbc describes before it binds): described by a shard, as a Parse and
                    // Describe alone are.
                    match self.describe_on_a_shard(st).await {
                        Ok(true) => {}
                        Ok(false) => {
                            self.state.batch_failed(!sync, false);
                            if sync {
                                let status = self.status();
                                self.io.push(&be::ready_for_query(status));
                            }
                            return;
                        }
                        Err(_) => return,
                    }
                }
                Msg::DescribePortal(t) => {
                    let facts = portal_statements
                        .get(&t.name)
                        .map(|st| st.facts.clone())
                        .unwrap_or_else(|| Arc::from(Vec::new()));
                    self.io.push(&local_row_description(&facts));
                }
                Msg::Execute(e) => {
                    let Some(st) = portal_statements.get(&e.portal).cloned() else {
                        self.push_error_in_batch(ErrorFields::error(
                            "34000",
                            format!("portal \"{}\" does not exist", e.portal),
                        ));
                        break;
                    };
                    let Some(facts) = st.facts.first() else {
                        self.io.push(&be::empty_query_response());
                        continue;
                    };
                    if let Some(local) = &facts.local {
                        let binary = binary_portals
                            .get(e.portal.as_str())
                            .copied()
                            .unwrap_or(false);
                        let local = match bound.get(e.portal.as_str()) {
                            Some((bind, statement)) => {
                                let params = BindParams {
                                    values: &bind.params,
                                    formats: &bind.param_formats,
                                    types: &statement.param_types,
                                };
                                crate::frontend::notifications::with_values(local, &params)
                            }
                            None => Ok(local.clone()),
                        };
                        let ran = match local {
                            Ok(local) => self.run_local(&local, false, binary).await,
                            Err(fields) => Err(fields),
                        };
                        if let Err(fields) = ran {
                            error = Some(fields);
                            break;
                        }
                    } else {
                        match facts.kind {
                            StatementKind::Begin => {
                                self.state.open_block(&st.sql);
                                self.io.push(&be::command_complete("BEGIN"));
                            }
                            _ => {
                                let chain = crate::txn::statement::chains(&st.sql)
                                    .then(|| self.txn_begin_sql());
                                let commit = facts.kind == StatementKind::Commit;
                                match self.end_block(commit).await {
                                    Ok(end) => self.io.push(&be::command_complete(end.tag())),
                                    Err(fields) => {
                                        self.push_error_in_batch(fields);
                                        break;
                                    }
                                }
                                if let Some(begin) = chain {
                                    self.state.open_block(&begin);
                                }
                            }
                        }
                    }
                }
                Msg::CloseStatement | Msg::ClosePortal(_) => self.io.push(&be::close_complete()),
            }
        }
        if let Some(fields) = error {
            self.push_error_in_batch(fields);
            self.state.skip_until_sync = !sync;
        }
        if sync {
            let status = self.status();
            self.io.push(&be::ready_for_query(status));
        }
    }
}

impl Session {
    /// Describes `st` on the shard any statement goes to (inside the block on one it holds),
    /// its ParameterDescription and RowDescription or NoData passed on. `Ok(false)` when the
    /// shard answered an error (passed on as well); `Err` when the client is gone.
    async fn describe_on_a_shard(&mut self, st: &Arc<Prepared>) -> Result<bool, End> {
        let shard = self.fallback_shard();
        let parse = Parse {
            name: String::new(),
            query: st.sql.clone(),
            param_types: st.param_types.clone(),
        };
        let steps = vec![
            Step::Send {
                frame: parse.encode(),
                expect: Expect::Parse { register: None },
                forward: false,
            },
            Step::forwarded(
                NamedTarget {
                    kind: b'S',
                    name: String::new(),
                }
                .encode(fe::DESCRIBE),
                Expect::DescribeStatement,
            ),
            quiet_sync(),
        ];
        let outcome = self.run_single(shard, false, |_| steps).await?;
        Ok(outcome.is_some_and(|o| o.error.is_none()))
    }
}

/// How a batch's Bind changes when the statement runs on several shards with a merge: it binds a
/// rewritten statement (prepared under its own server-side name) whose hidden columns need
/// result format codes, and the merge needs the result's description even if the client did not
/// ask for it.
#[derive(Clone)]
pub(super) struct MergeSteps {
    sql: String,
    server_name: String,
    hidden: usize,
    inject_describe: bool,
}

/// The merge of a batch that runs on several shards, from its one Bind; `None` when rows are
/// only concatenated.
pub(super) fn merge_for_batch(
    msgs: &[Msg],
    chosen: &crate::exec::table_columns::ChosenPlans,
) -> Result<Option<(MergeSteps, crate::exec::merged::BoundMerge)>, ErrorFields> {
    let Some((bind, statement)) = msgs.iter().find_map(|m| match m {
        Msg::Bind {
            bind, statement, ..
        } => Some((bind, statement)),
        _ => None,
    }) else {
        return Ok(None);
    };
    let Some(Ok(plan)) = statement.facts.first().and_then(|f| f.merge.as_ref()) else {
        return Ok(None);
    };
    let plan = &chosen.plan(plan)?;
    let describes = msgs
        .iter()
        .any(|m| matches!(m, Msg::DescribePortal(t) if t.name == bind.portal));
    let params = BindParams {
        values: &bind.params,
        formats: &bind.param_formats,
        types: &statement.param_types,
    };
    let bound = crate::exec::merged::BoundMerge::new(plan.clone(), &params, describes)?;
    let sql = plan.shard_sql.with_placeholders();
    let server_name = server_statement_name(&sql, &statement.param_types);
    Ok(Some((
        MergeSteps {
            sql,
            server_name,
            hidden: plan.hidden,
            inject_describe: !describes,
        },
        bound,
    )))
}

/// The server-bound steps of a batch for one connection, given what it has prepared already.
pub(super) fn build_steps(
    msgs: &[Msg],
    conn: &ServerConn,
    tail_error: Option<&ErrorFields>,
    sync: bool,
    merge: Option<&MergeSteps>,
    fence: Option<&HashMap<String, String>>,
) -> Vec<Step> {
    let fenced = |st: &Arc<Prepared>| fenced_statement(st, fence);
    let mut steps = Vec::with_capacity(msgs.len() + 2);
    let mut unnamed_ready = false;
    let send = |frame: Frame, expect: Expect, forward: bool| Step::Send {
        frame,
        expect,
        forward,
    };
    let mut parsed: FastSet<String> = FastSet::default();
    for msg in msgs {
        match msg {
            Msg::Parse(p, st) => {
                let st = fenced(st);
                if st.server_name.is_empty() {
                    let p = Parse {
                        name: String::new(),
                        query: st.sql.clone(),
                        param_types: p.param_types.clone(),
                    };
                    steps.push(send(p.encode(), Expect::Parse { register: None }, true));
                    unnamed_ready = true;
                } else if conn.prepared.contains(&st.server_name)
                    || parsed.contains(&st.server_name)
                {
                    steps.push(Step::Synthetic(be::parse_complete()));
                } else {
                    let renamed = Parse {
                        name: st.server_name.clone(),
                        query: st.sql.clone(),
                        param_types: p.param_types.clone(),
                    };
                    steps.push(send(
                        renamed.encode(),
                        Expect::Parse {
                            register: Some(st.server_name.clone()),
                        },
                        true,
                    ));
                    parsed.insert(st.server_name.clone());
                }
            }
            Msg::Bind {
                bind,
                statement,
                rewritten,
            } => {
                if let Some(m) = merge {
                    let mut bind = bind.clone();
                    let m = fenced_merge_steps(m, fence, &statement.param_types);
                    if !conn.prepared.contains(&m.server_name) && !parsed.contains(&m.server_name) {
                        steps.push(send(
                            Parse {
                                name: m.server_name.clone(),
                                query: m.sql.clone(),
                                param_types: statement.param_types.clone(),
                            }
                            .encode(),
                            Expect::Parse {
                                register: Some(m.server_name.clone()),
                            },
                            false,
                        ));
                        parsed.insert(m.server_name.clone());
                    }
                    bind.statement = m.server_name.clone();
                    if bind.result_formats.len() > 1 {
                        bind.result_formats.extend(std::iter::repeat_n(0, m.hidden));
                    }
                    let portal = NamedTarget {
                        kind: b'P',
                        name: bind.portal.clone(),
                    };
                    steps.push(send(bind.encode(), Expect::Bind, true));
                    if m.inject_describe {
                        steps.push(send(
                            portal.encode(fe::DESCRIBE),
                            Expect::DescribePortal,
                            true,
                        ));
                    }
                    continue;
                }
                if let Some(sql) = rewritten {
                    steps.push(send(
                        Parse {
                            name: String::new(),
                            query: sql.clone(),
                            param_types: statement.param_types.clone(),
                        }
                        .encode(),
                        Expect::Parse { register: None },
                        false,
                    ));
                    unnamed_ready = false;
                    steps.push(send(bind.encode_for(""), Expect::Bind, true));
                } else {
                    let statement = fenced(statement);
                    ensure_prepared(
                        conn,
                        &statement,
                        &mut steps,
                        &mut parsed,
                        &mut unnamed_ready,
                    );
                    steps.push(send(
                        bind.encode_for(&statement.server_name),
                        Expect::Bind,
                        true,
                    ));
                }
            }
            Msg::DescribeStatement(st) => {
                let st = fenced(st);
                ensure_prepared(conn, &st, &mut steps, &mut parsed, &mut unnamed_ready);
                let t = NamedTarget {
                    kind: b'S',
                    name: st.server_name.clone(),
                };
                steps.push(send(
                    t.encode(fe::DESCRIBE),
                    Expect::DescribeStatement,
                    true,
                ));
            }
            Msg::DescribePortal(t) => {
                steps.push(send(t.encode(fe::DESCRIBE), Expect::DescribePortal, true));
            }
            Msg::Execute(e) => steps.push(send(e.encode(), Expect::Execute, true)),
            Msg::CloseStatement => steps.push(Step::Synthetic(be::close_complete())),
            Msg::ClosePortal(t) => steps.push(send(t.encode(fe::CLOSE), Expect::Close, true)),
        }
    }
    if let Some(fields) = tail_error {
        // Raised by the server, so the work before it in this implicit transaction rolls back.
        steps.extend(raise_steps(fields));
    }
    steps.push(batch_end(sync));
    steps
}

/// A Sync whose ReadyForQuery the client does not see: it ends one shard's part of a request
/// (a unit of a pipeline, or a Parse/Describe under Flush), not the client's.
pub(super) fn quiet_sync() -> Step {
    Step::Send {
        frame: fe::sync(),
        expect: Expect::Sync,
        forward: false,
    }
}

/// How many of a batch's executed statements (those bound in it, in Execute order) ran to
/// completion on the one shard that ran it, so that the savepoints and SET LOCALs among them are
/// replayed on shards joining the block later (pgjdbc sends `BEGIN` and `SAVEPOINT` of
/// `setSavepoint()` in one batch). Without an error, all of them. After an error, those before
/// it: each completed Execute answered one CommandComplete (`tags`), which counts statements only
/// when every Execute of the batch runs a statement bound in it; otherwise none is taken.
fn completed_statements(statements: usize, executes: usize, failed: bool, tags: usize) -> usize {
    if !failed {
        statements
    } else if executes == statements {
        tags.min(statements)
    } else {
        0
    }
}

/// Where the statements of the block open after a batch start: after its last COMMIT or ROLLBACK
/// (a savepoint of a block that ended in the batch is not the next block's).
fn since_block_end<'a>(kinds: impl Iterator<Item = Option<&'a StatementKind>>) -> usize {
    let mut start = 0;
    for (i, kind) in kinds.enumerate() {
        if matches!(kind, Some(StatementKind::Commit | StatementKind::Rollback)) {
            start = i + 1;
        }
    }
    start
}

/// The Sync or Flush that ends a batch.
fn batch_end(sync: bool) -> Step {
    if sync {
        Step::Send {
            frame: fe::sync(),
            expect: Expect::Sync,
            forward: true,
        }
    } else {
        Step::Send {
            frame: Frame::new(fe::FLUSH, bytes::Bytes::new()),
            expect: Expect::Flush,
            forward: true,
        }
    }
}

/// Steps that make the server raise `fields` as its own error (an anonymous DO block): the
/// client sees one error and the server aborts the transaction the error belongs to.
fn raise_steps(fields: &ErrorFields) -> Vec<Step> {
    let quote = |text: &str| text.replace("$pgshard$", "").replace('\'', "''");
    let mut raise = format!(
        "RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'",
        quote(&fields.code),
        quote(&fields.message)
    );
    if let Some(hint) = &fields.hint {
        raise.push_str(&format!(", HINT = '{}'", quote(hint)));
    }
    let parse = Parse {
        name: String::new(),
        query: format!("DO $pgshard$BEGIN {raise}; END$pgshard$"),
        param_types: Vec::new(),
    };
    let bind = Bind {
        portal: String::new(),
        statement: String::new(),
        param_formats: Vec::new(),
        params: Vec::new(),
        result_formats: Vec::new(),
    };
    let execute = Execute {
        portal: String::new(),
        max_rows: 0,
    };
    vec![
        Step::Send {
            frame: parse.encode(),
            expect: Expect::Parse { register: None },
            forward: false,
        },
        Step::Send {
            frame: bind.encode(),
            expect: Expect::Bind,
            forward: false,
        },
        Step::Send {
            frame: execute.encode(),
            expect: Expect::Execute,
            forward: true,
        },
    ]
}

/// Injects a Parse (answer swallowed) when the connection lacks the statement a Bind or Describe
/// names.
/// The texts of a batch's statements on sharded tables (and of its merge rewrite): what a fence
/// may have to restrict on the shards it covers.
pub(super) fn fenceable_texts<'a>(msgs: &'a [Msg], merge: Option<&'a MergeSteps>) -> Vec<&'a str> {
    let mut texts: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Parse(_, st) | Msg::Bind { statement: st, .. } | Msg::DescribeStatement(st) => {
                Some(st)
            }
            _ => None,
        })
        .filter(|st| st.facts.iter().any(|f| f.sharded))
        .map(|st| st.sql.as_str())
        .collect();
    texts.extend(merge.map(|m| m.sql.as_str()));
    texts
}

/// The statement a fenced shard runs in place of `st`: its fenced text, under a server-side name
/// of its own (so the unfenced form prepared earlier on the same connection is not reused).
fn fenced_statement(st: &Arc<Prepared>, fence: Option<&HashMap<String, String>>) -> Arc<Prepared> {
    let Some(sql) = fence.and_then(|f| f.get(&st.sql)) else {
        return st.clone();
    };
    Arc::new(Prepared {
        sql: sql.clone(),
        param_types: st.param_types.clone(),
        facts: st.facts.clone(),
        server_name: if st.server_name.is_empty() {
            String::new()
        } else {
            server_statement_name(sql, &st.param_types)
        },
    })
}

/// The merge rewrite a fenced shard runs: fenced like any statement.
fn fenced_merge_steps(
    m: &MergeSteps,
    fence: Option<&HashMap<String, String>>,
    param_types: &[u32],
) -> MergeSteps {
    let Some(sql) = fence.and_then(|f| f.get(&m.sql)) else {
        return m.clone();
    };
    MergeSteps {
        sql: sql.clone(),
        server_name: server_statement_name(sql, param_types),
        hidden: m.hidden,
        inject_describe: m.inject_describe,
    }
}

fn ensure_prepared(
    conn: &ServerConn,
    st: &Prepared,
    steps: &mut Vec<Step>,
    parsed: &mut FastSet<String>,
    unnamed_ready: &mut bool,
) {
    let inject = |name: &str, register: Option<String>| Step::Send {
        frame: Parse {
            name: name.to_string(),
            query: st.sql.clone(),
            param_types: st.param_types.clone(),
        }
        .encode(),
        expect: Expect::Parse { register },
        forward: false,
    };
    if st.server_name.is_empty() {
        if !*unnamed_ready {
            steps.push(inject("", None));
            *unnamed_ready = true;
        }
    } else if !conn.prepared.contains(&st.server_name) && !parsed.contains(&st.server_name) {
        steps.push(inject(&st.server_name, Some(st.server_name.clone())));
        parsed.insert(st.server_name.clone());
    }
}

pub(super) fn parameter_description(types: &[u32]) -> Frame {
    let mut b = BytesMut::with_capacity(2 + 4 * types.len());
    b.put_i16(types.len() as i16);
    for t in types {
        b.put_u32(*t);
    }
    Frame::new(be::PARAMETER_DESCRIPTION, b.freeze())
}

/// The parameter types a statement the proxy answers itself describes: `pg_notify`'s are text
/// where the client left them unspecified, as Postgres infers them.
fn local_param_types(facts: &[StatementFacts], declared: &[u32]) -> Vec<u32> {
    let Some(LocalCommand::PgNotify {
        channel, payload, ..
    }) = facts.first().and_then(|f| f.local.as_ref())
    else {
        return declared.to_vec();
    };
    let count = [channel, payload]
        .iter()
        .filter_map(|a| match a {
            NotifyArg::Param(n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0)
        .max(declared.len());
    (0..count)
        .map(|i| match declared.get(i).copied().unwrap_or(0) {
            0 => be::TEXT_OID,
            t => t,
        })
        .collect()
}

fn local_row_description(facts: &[StatementFacts]) -> Frame {
    match facts.first().and_then(|f| f.local.as_ref()) {
        Some(LocalCommand::NextId) => be::row_description(&[("next_id", be::INT8_OID)]),
        Some(LocalCommand::PgNotify { column, .. }) => {
            be::row_description(&[(column.as_str(), be::VOID_OID)])
        }
        Some(LocalCommand::ShowProxy { name }) => {
            be::row_description(&[(name.as_str(), be::TEXT_OID)])
        }
        _ => be::no_data(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_noted_for_late_joiners_follow_the_last_block_end() {
        let (begin, savepoint, commit, rollback, other) = (
            StatementKind::Begin,
            StatementKind::Savepoint,
            StatementKind::Commit,
            StatementKind::Rollback,
            StatementKind::Other,
        );
        let cases: &[(&[&StatementKind], usize)] = &[
            (&[&begin, &savepoint], 0),
            (&[&savepoint, &other, &savepoint], 0),
            (&[&begin, &savepoint, &commit, &begin, &savepoint], 3),
            (&[&savepoint, &rollback], 2),
            (&[], 0),
        ];
        for (kinds, want) in cases {
            assert_eq!(
                since_block_end(kinds.iter().map(|k| Some(*k))),
                *want,
                "{kinds:?}"
            );
        }
        assert_eq!(since_block_end([None, Some(&commit), None].into_iter()), 2);
    }

    #[test]
    fn statements_noted_for_late_joiners_are_those_that_completed() {
        // (statements, executes, failed, tags) → statements noted
        let cases = [
            ((2, 2, false, 2), 2), // BEGIN; SAVEPOINT a
            ((1, 1, false, 1), 1),
            ((3, 3, true, 2), 2), // SAVEPOINT a; RELEASE a; INSERT (fails)
            ((3, 3, true, 0), 0), // the first one failed
            ((2, 3, true, 2), 0), // an Execute of a portal bound earlier: tags count it too
            ((2, 2, true, 5), 2),
            ((0, 1, false, 1), 0),
        ];
        for ((statements, executes, failed, tags), want) in cases {
            assert_eq!(
                completed_statements(statements, executes, failed, tags),
                want,
                "{statements} statements, {executes} executes, failed {failed}, {tags} tags"
            );
        }
    }

    #[test]
    fn a_binds_statement_name_is_read_without_decoding_it() {
        let bind = Bind {
            portal: "p".into(),
            statement: "s1".into(),
            param_formats: vec![1],
            params: vec![Some(bytes::Bytes::from_static(b"\0\0\0\x01")), None],
            result_formats: vec![],
        };
        let encoded = bind.encode();
        assert_eq!(bind_statement_name(&encoded.body), Some("s1"));
        assert_eq!(
            Bind::decode(&bind.encode_for("pgshard_x").body)
                .ok()
                .map(|b| b.statement),
            Some("pgshard_x".to_string())
        );
        assert_eq!(bind_statement_name(b"p\0"), None);
        assert_eq!(bind_statement_name(b""), None);
    }
}
