//! An extended-protocol batch up to Sync whose statements need different shards (a pipeline,
//! executemany, a prepared multi-row INSERT split by key). As in Postgres, everything up to the
//! Sync is one implicit transaction: the batch runs unit by unit (see `planner::units`), in message
//! order, each unit on its own shard(s) inside one block — the client's block when one is open,
//! else an implicit block that commits at the Sync (two-phase when several shards joined) or rolls
//! back everywhere. After an error nothing more runs, and the client gets ReadyForQuery at Sync.

use super::extended::{build_steps, fenceable_texts, merge_for_batch, Msg};
use super::session::{End, Session, Target};
use crate::backend::ServerConn;
use crate::exec::exchange::Step;
use crate::planner::units::{
    finish_pipeline, flush_adoption, plan_pipeline, plan_unit, FlushAdoption, PipelineFinish,
    UnitPlan, UnitPortals,
};
use crate::planner::Ending;
use crate::router::Route;
use crate::wire::backend::{self as be, ErrorFields, TxStatus};

pub(super) use crate::planner::units::UnitEnd;

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
        let plan = plan_pipeline(&msgs, &routes, &self.state);
        if let Some(refusal) = plan.refusal {
            return self.refuse_pipeline(refusal, sync).await;
        }
        if let Err(fields) = self.adopt_flush_shard().await {
            return self.refuse_pipeline(fields, sync).await;
        }
        let mut units = plan.units;
        if plan.begins && !units.is_empty() {
            let first = units.remove(0);
            let unit = &msgs[first];
            let mut bound = super::batch_portals::BatchPortals::default();
            for msg in unit {
                if let Msg::Bind {
                    bind, statement, ..
                } = msg
                {
                    bound.insert(bind.portal.clone(), statement.clone());
                }
            }
            self.answer_locally(unit, &bound, None, false).await;
        }
        let _timed = crate::telemetry::QueryTimer::start(crate::telemetry::RouteKind::Scatter);
        let already_open = self.state.txn.as_ref().is_some_and(|t| t.implicit);
        let opened = !already_open && !plan.lone_read && self.begin_implicit_block();
        if let (true, true, Some(t)) = (opened, sync && plan.reads_only, self.state.txn.as_mut()) {
            // Nothing to make atomic: each shard commits on its own, without two phases.
            t.read_only = true;
        }
        let own = already_open || opened;
        let mut portals = UnitPortals::default();
        let mut end = UnitEnd::Ran;
        for range in units {
            let (unit, unit_routes) = (&msgs[range.clone()], &routes[range]);
            end = self.run_unit(unit, unit_routes, &mut portals).await?;
            if end != UnitEnd::Ran {
                break;
            }
        }
        if let (UnitEnd::Ran, Some(fields)) = (end, error) {
            self.push_error_in_batch(fields);
            end = UnitEnd::Failed;
        }
        let ending = if sync { Ending::Sync } else { Ending::Flush };
        match finish_pipeline(end, ending, own) {
            PipelineFinish::StayOpen => {}
            PipelineFinish::RollBack { skip_until_sync } => {
                self.finish_implicit_block(false).await?;
                self.state.skip_until_sync = skip_until_sync;
            }
            PipelineFinish::AtSync {
                end_block,
                ready_for_query,
            } => {
                if let Some(commit) = end_block {
                    if let Some(fields) = self.finish_implicit_block(commit).await? {
                        self.push_error_in_batch(fields);
                    }
                }
                self.release_idle();
                if ready_for_query {
                    let status = self.status();
                    self.io.push(&be::ready_for_query(status));
                }
            }
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
        let shard = match flush_adoption(&self.state) {
            FlushAdoption::Nothing => return Ok(()),
            FlushAdoption::InBlock => {
                self.state.open_batch_shard = None;
                return Ok(());
            }
            FlushAdoption::Begin(shard) => {
                self.state.open_batch_shard = None;
                shard
            }
        };
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
        portals: &mut UnitPortals,
    ) -> Result<UnitEnd, End> {
        let fallback = || self.fallback_shard();
        let allow_scatter = self.allow_scatter();
        let (target, facts) =
            match plan_unit(unit, routes, portals, &self.state, allow_scatter, fallback) {
                UnitPlan::Held => return self.held_unit(unit, routes).await,
                UnitPlan::Split(rows) => return self.run_split_unit(unit, &rows).await,
                UnitPlan::Refuse(refusal) => {
                    self.push_error_in_batch(refusal);
                    return Ok(UnitEnd::Failed);
                }
                UnitPlan::Run { target, facts } => (target, facts),
            };
        if let Target::Single(shard) = target {
            for p in unit.iter().filter_map(Msg::bound_portal) {
                self.state.portals.insert(p.to_string(), shard);
            }
        }
        let merge = match &target {
            Target::Scatter(_) => match merge_for_batch(unit, &self.group_plans) {
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
                let answers = self.run_lead_first(&shards, build).await;
                let mut verdict = crate::exec::broadcast::judge(&answers, false);
                if matches!(verdict, crate::exec::broadcast::Verdict::Agreed(_)) {
                    if let Some(fields) = self.number_sequences(&shards, &facts).await {
                        verdict = crate::exec::broadcast::Verdict::Failed(fields);
                    }
                }
                match verdict {
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
