//! An extended-protocol batch up to Sync whose statements need different shards (a pipeline,
//! executemany, a prepared multi-row INSERT split by key). As in Postgres, everything up to the
//! Sync is one implicit transaction: the batch runs unit by unit (see `planner::units`), in message
//! order, each unit on its own shard(s) inside one block — the client's block when one is open,
//! else an implicit block that commits at the Sync (two-phase when several shards joined) or rolls
//! back everywhere. After an error nothing more runs, and the client gets ReadyForQuery at Sync.

use std::collections::HashMap;

use super::extended::{build_steps, fenceable_texts, merge_for_batch, Msg};
use super::session::{needs_atomic_scatter, End, Session, Target};
use crate::backend::ServerConn;
use crate::exec::exchange::Step;
use crate::planner::units::split_units;
use crate::refusal::Refusal;
use crate::router::{Route, StatementFacts, StatementKind};
use crate::wire::backend::{self as be, ErrorFields, TxStatus};

/// How one unit ended.
pub(super) enum UnitEnd {
    /// It ran; the next unit may follow.
    Ran,
    /// It failed and the client has the error (not yet ReadyForQuery).
    Failed,
    /// It failed and the client already has the error and a ReadyForQuery.
    Answered,
}

/// The statements a unit executes.
fn executed_facts(unit: &[Msg]) -> Vec<StatementFacts> {
    let mut bound: HashMap<&str, &StatementFacts> = HashMap::new();
    let mut out = Vec::new();
    for msg in unit {
        match msg {
            Msg::Bind {
                bind, statement, ..
            } => {
                if let Some(f) = statement.facts.first() {
                    bound.insert(bind.portal.as_str(), f);
                }
            }
            Msg::Execute(e) => {
                if let Some(f) = bound.get(e.portal.as_str()) {
                    out.push((*f).clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// What pgshard cannot run inside a pipeline that spans shards, as the refusal to give.
fn unsupported(msgs: &[Msg]) -> Option<Refusal> {
    let facts = msgs.iter().filter_map(|msg| match msg {
        Msg::Bind { statement, .. } => statement.facts.first(),
        _ => None,
    });
    crate::planner::units::pipeline_refusal(facts)
}

/// The portal a message names, for messages that use a portal.
fn portal_of(msg: &Msg) -> Option<&str> {
    match msg {
        Msg::Execute(e) => Some(e.portal.as_str()),
        Msg::DescribePortal(t) | Msg::ClosePortal(t) => Some(t.name.as_str()),
        _ => None,
    }
}

impl Session {
    /// Runs a batch unit by unit. At Sync (`sync`) the implicit block ends and the client gets
    /// ReadyForQuery; at Flush it stays open for the next batch, unless a unit failed: then it
    /// rolls back now and the rest up to Sync is skipped.
    pub(super) async fn run_pipeline(
        &mut self,
        msgs: Vec<Msg>,
        routes: Vec<Option<Route>>,
        error: Option<ErrorFields>,
        sync: bool,
    ) -> Result<(), End> {
        let is_execute: Vec<bool> = msgs.iter().map(|m| matches!(m, Msg::Execute(_))).collect();
        let mut units = split_units(&is_execute);
        // A BEGIN first (pgjdbc sends it with the batch it starts) opens the client's block,
        // which the rest then joins.
        let begins = units.first().is_some_and(|r| {
            self.state.txn.is_none()
                && matches!(
                    executed_facts(&msgs[r.clone()]).as_slice(),
                    [StatementFacts {
                        kind: StatementKind::Begin,
                        ..
                    }]
                )
        });
        let rest = match (begins, units.first()) {
            (true, Some(r)) => r.end,
            _ => 0,
        };
        if let Some(fields) = unsupported(&msgs[rest..]) {
            return self.refuse_pipeline(fields, sync).await;
        }
        if let Err(fields) = self.adopt_flush_shard().await {
            return self.refuse_pipeline(fields, sync).await;
        }
        if begins {
            let unit = &msgs[..rest];
            let mut bound = HashMap::new();
            for msg in unit {
                if let Msg::Bind {
                    bind, statement, ..
                } = msg
                {
                    bound.insert(bind.portal.clone(), statement.clone());
                }
            }
            self.answer_locally(unit, &bound, None, false).await;
            units.remove(0);
        }
        let _timed = crate::telemetry::QueryTimer::start(crate::telemetry::RouteKind::Scatter);
        let reads_only = !routes
            .iter()
            .any(|r| matches!(r, Some(Route::SplitInsert(_))))
            && !executed_facts(&msgs).iter().any(needs_atomic_scatter);
        // One statement that only reads needs no block of its own.
        let lone_read = reads_only && is_execute.iter().filter(|e| **e).count() < 2;
        let already_open = self.state.txn.as_ref().is_some_and(|t| t.implicit);
        let opened = !already_open && !lone_read && self.begin_implicit_block();
        if let (true, true, Some(t)) = (opened, sync && reads_only, self.state.txn.as_mut()) {
            // Nothing to make atomic: each shard commits on its own, without two phases.
            t.read_only = true;
        }
        let own = already_open || opened;
        // Portals bound by an earlier unit of this batch: the shard it ran on (`None`: several).
        let mut bound_here: HashMap<String, Option<u32>> = HashMap::new();
        let mut end = UnitEnd::Ran;
        for range in units {
            let (unit, unit_routes) = (&msgs[range.clone()], &routes[range]);
            end = self.run_unit(unit, unit_routes, &mut bound_here).await?;
            if !matches!(end, UnitEnd::Ran) {
                break;
            }
        }
        if let (UnitEnd::Ran, Some(fields)) = (&end, error) {
            self.push_error_in_batch(fields);
            end = UnitEnd::Failed;
        }
        let ok = matches!(end, UnitEnd::Ran);
        if !sync {
            if !ok {
                // As a server does after an error: skip to the Sync, whose answer says Idle
                // (unless the client already got its ReadyForQuery).
                self.finish_implicit_block(false).await?;
                self.state.skip_until_sync = !matches!(end, UnitEnd::Answered);
            }
            return Ok(());
        }
        if own {
            if let Some(fields) = self.finish_implicit_block(ok).await? {
                self.push_error_in_batch(fields);
            }
        }
        self.release_idle();
        if !matches!(end, UnitEnd::Answered) {
            let status = self.status();
            self.io.push(&be::ready_for_query(status));
        }
        Ok(())
    }

    /// Refuses a whole batch before any of it runs.
    async fn refuse_pipeline(
        &mut self,
        fields: impl Into<ErrorFields>,
        sync: bool,
    ) -> Result<(), End> {
        if self.state.txn.as_ref().is_some_and(|t| t.implicit) {
            self.finish_implicit_block(false).await?;
        }
        self.refuse_batch(fields, sync).await
    }

    /// Takes over the implicit transaction a Flush left open on one shard (`open_batch_shard`)
    /// into the pipeline's block: outside a client block, BEGIN turns the shard's implicit
    /// transaction into a block (keeping what ran in it), which then commits with the others.
    async fn adopt_flush_shard(&mut self) -> Result<(), ErrorFields> {
        let Some(shard) = self.state.open_batch_shard.take() else {
            return Ok(());
        };
        if self.state.txn.is_some() {
            return Ok(());
        }
        let Some(conn) = self.held.get_mut(&shard) else {
            return Err(ErrorFields::error("XX000", "server connection vanished"));
        };
        if let Err(e) = conn.run_silently("BEGIN").await {
            return Err(super::session::backend_error_fields(&e));
        }
        let mut txn = crate::txn::Txn::implicit();
        txn.participants.push(shard);
        self.state.txn = Some(txn);
        Ok(())
    }

    /// Runs one unit inside the pipeline's block.
    async fn run_unit(
        &mut self,
        unit: &[Msg],
        routes: &[Option<Route>],
        bound_here: &mut HashMap<String, Option<u32>>,
    ) -> Result<UnitEnd, End> {
        if super::held_portals::binds_held_portal(unit, routes) || self.executes_held_portal(unit) {
            return self.held_unit(unit, routes).await;
        }
        let facts = executed_facts(unit);
        let binds: Vec<&str> = unit
            .iter()
            .filter_map(|m| match m {
                Msg::Bind { bind, .. } => Some(bind.portal.as_str()),
                _ => None,
            })
            .collect();
        let mut needed = Vec::new();
        for (msg, route) in unit.iter().zip(routes) {
            match route {
                Some(Route::Any) => {}
                Some(r) => needed.push(r.clone()),
                None => {
                    let Some(portal) = portal_of(msg).filter(|p| !binds.contains(p)) else {
                        continue;
                    };
                    match bound_here.get(portal) {
                        Some(Some(shard)) => needed.push(Route::Single(*shard)),
                        Some(None) => {
                            self.push_error_in_batch(Refusal::unsupported(format!(
                                "portal \"{portal}\" runs on several shards: execute it right after its Bind"
                            )));
                            return Ok(UnitEnd::Failed);
                        }
                        None => {}
                    }
                }
            }
        }
        if let Some(plan) = needed.iter().find_map(|r| match r {
            Route::SplitInsert(plan) => Some(plan.clone()),
            _ => None,
        }) {
            if needed.len() > 1 {
                self.push_error_in_batch(Refusal::unsupported(
                    "a multi-row INSERT split between shards must be executed right after its own Bind",
                ));
                return Ok(UnitEnd::Failed);
            }
            for p in &binds {
                bound_here.insert(p.to_string(), None);
            }
            return self.run_split_unit(unit, &plan).await;
        }
        let target = match self.combine(&needed, &facts) {
            Ok(t) => t,
            Err(fields) => {
                self.push_error_in_batch(fields);
                return Ok(UnitEnd::Failed);
            }
        };
        let where_bound = match &target {
            Target::Single(shard) => Some(*shard),
            _ => None,
        };
        for p in &binds {
            bound_here.insert(p.to_string(), where_bound);
            if let Some(shard) = where_bound {
                self.state.portals.insert(p.to_string(), shard);
            }
        }
        let merge = match &target {
            Target::Scatter(_) => match merge_for_batch(unit) {
                Ok(m) => m,
                Err(fields) => {
                    self.push_error_in_batch(fields);
                    return Ok(UnitEnd::Failed);
                }
            },
            _ => None,
        };
        let merge_steps = merge.as_ref().map(|(m, _)| m);
        let fences = if self.proxy.rebalance.fence().is_some() {
            match self.fence_statement_texts(&fenceable_texts(unit, merge_steps), &facts, &target) {
                Ok(f) => f,
                Err(fields) => {
                    self.push_error_in_batch(fields);
                    return Ok(UnitEnd::Failed);
                }
            }
        } else {
            None
        };
        // Each shard's part ends with a Sync inside the block (joined with BEGIN), so the block
        // stays open; its ReadyForQuery is not the client's (merges keep it to themselves).
        let quiet = matches!(target, Target::Single(_));
        let partial = unit
            .iter()
            .any(|m| matches!(m, Msg::Execute(e) if e.max_rows > 0));
        if partial && !matches!(target, Target::Single(_)) {
            // Reads over several shards with a row limit are held (see `held_portals`).
            self.push_error_in_batch(Refusal::unsupported(
                "a statement that changes several shards must be executed without a row limit",
            ));
            return Ok(UnitEnd::Failed);
        }
        let build = |conn: &ServerConn| -> Vec<Step> {
            let fence = fences.as_ref().and_then(|f| f.get(&conn.shard));
            let mut steps = build_steps(unit, conn, None, true, merge_steps, fence);
            if let (true, Some(Step::Send { forward, .. })) = (quiet, steps.last_mut()) {
                *forward = false;
            }
            steps
        };
        match target {
            Target::Single(shard) => {
                if let Err(fields) = self.ensure_conn(shard, true).await {
                    self.push_error_in_batch(fields);
                    return Ok(UnitEnd::Failed);
                }
                let Some(outcome) = self.run_single(shard, true, build).await? else {
                    return Ok(UnitEnd::Answered);
                };
                self.after_statements(&facts, &outcome, Some(shard));
                if outcome.error.is_some() {
                    return Ok(UnitEnd::Failed);
                }
                if let [only] = &facts[..] {
                    if let Some(st) = unit.iter().find_map(|m| match m {
                        Msg::Bind { statement, .. } => Some(statement),
                        _ => None,
                    }) {
                        self.note_block_statement(&st.sql, only);
                    }
                }
                Ok(UnitEnd::Ran)
            }
            Target::Scatter(shards) => {
                let bound = merge.as_ref().map(|(_, b)| b.clone());
                let end = self.run_scatter(shards, build, bound).await?;
                if let Some(fields) = end.failure {
                    self.push_error_in_batch(fields);
                    return Ok(UnitEnd::Failed);
                }
                // A shard's error already went to the client through the merge.
                if self.status() == TxStatus::Failed {
                    return Ok(UnitEnd::Failed);
                }
                if let Some(complete) = end.complete {
                    self.io.push(&complete);
                }
                Ok(UnitEnd::Ran)
            }
            Target::Broadcast(shards) => {
                for &shard in &shards {
                    if let Err(fields) = self.ensure_conn(shard, true).await {
                        self.push_error_in_batch(fields);
                        return Ok(UnitEnd::Failed);
                    }
                }
                let answers = self.run_collected(&shards, build).await;
                match crate::exec::broadcast::judge(&answers, false) {
                    crate::exec::broadcast::Verdict::Agreed(frames) => {
                        for frame in &frames {
                            self.io.push(frame);
                        }
                        Ok(UnitEnd::Ran)
                    }
                    crate::exec::broadcast::Verdict::Failed(fields) => {
                        self.push_error_in_batch(fields);
                        Ok(UnitEnd::Failed)
                    }
                }
            }
        }
    }
}
