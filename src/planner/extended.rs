//! How [`super::plan`] plans an extended-protocol batch: each Bind routed by the same rule as a
//! simple Query's statements ([`statement_route`]), then the path the batch takes, decided from
//! its messages — the whole chain of decisions here, so the frontend only matches on the
//! [`Plan`]. Where it runs is [`plan_batch`]'s, which shares `combine` with the simple protocol.

use std::borrow::Cow;

use smallvec::SmallVec;

use crate::refusal::Refusal;
use crate::router::{Route, StatementFacts};
use crate::session::SessionState;
use crate::txn::control::{BlockView, ControlStatement};

use super::batch::{plan_batch, Batch, BatchPlan};
use super::control_statement;
use super::messages::{carries_local, executed, lone_unnest_insert, Msg};
use super::plan::{Plan, Planned};
use super::request::{Messages, Request};
use super::rules::{bind_needs_keys, is_sharded_copy_in, statement_route, Context};
use super::served::served_portals;

/// Plans an extended batch: routes its Binds (`request.statements`), then decides its path.
pub(super) fn plan_messages(
    request: &Request,
    messages: &Messages,
    state: &SessionState,
    cx: &Context,
) -> Result<Planned, Refusal> {
    let mut planned = Planned {
        message_routes: messages.routes.to_vec(),
        ..Planned::default()
    };
    for (st, &at) in request.statements.iter().zip(messages.binds) {
        if st.keys.is_none() && bind_needs_keys(state, st.facts, st.looked_up.is_some()) {
            planned.plan = Plan::NeedsKeys;
            return Ok(planned);
        }
        match statement_route(st, state, cx, st.keys.as_ref(), &planned.cursor_effects) {
            Ok(routed) => {
                if let Some(slot) = planned.message_routes.get_mut(at) {
                    *slot = Some(routed.route.clone());
                }
                planned.routes.push(routed.route);
                planned.rewritten.push(routed.rewritten);
                planned.cursor_effects.extend(routed.cursor);
            }
            Err(refusal) => {
                planned.plan = Plan::FailedAt {
                    message: at,
                    refusal,
                };
                return Ok(planned);
            }
        }
    }
    let msgs = messages.msgs;
    let ran = executed(msgs);
    let facts: Cow<[StatementFacts]> = match ran.statements.as_slice() {
        [one] => Cow::Borrowed(one.facts.get(..1).unwrap_or_default()),
        many => Cow::Owned(
            many.iter()
                .filter_map(|st| st.facts.first().cloned())
                .collect(),
        ),
    };
    let control = match ran.statements.as_slice() {
        [one] => one.facts.first().map(|f| control_statement(&one.sql, f)),
        _ => None,
    };
    // Parse and Describe of a statement any shard can answer add nothing to where it runs; nor
    // does closing a portal beside the COMMIT or ROLLBACK that ends its block (pgjdbc closes a
    // fetch-size read's portal in the COMMIT's Sync): the block's end closes every portal.
    let ends_block = matches!(
        control,
        Some(ControlStatement::Commit | ControlStatement::Rollback)
    );
    let needed: SmallVec<[Route; 2]> = planned
        .message_routes
        .iter()
        .zip(msgs)
        .filter(|(_, msg)| !(ends_block && matches!(msg, Msg::ClosePortal(_))))
        .filter_map(|(route, _)| route.as_ref())
        .filter(|r| **r != Route::Any)
        .cloned()
        .collect();
    let batch = Batch {
        needed: &needed,
        facts: &facts,
        control,
        local: carries_local(msgs),
        executes: ran.executes,
        row_limit: ran.row_limit,
        failed_before: messages.failed_before,
        ending: request.ending,
        allow_scatter: cx.allow_scatter,
    };
    let ok = !messages.failed_before;
    let unnest = lone_unnest_insert(msgs).and_then(|shape| {
        let rows = planned
            .message_routes
            .iter()
            .flatten()
            .find_map(|r| match r {
                Route::SplitInsert(rows) => Some(rows),
                _ => None,
            })?;
        Some((shape.statement.facts.first()?.unnest.clone()?, rows.clone()))
    });
    let gathered = Gathered {
        claims: messages.claims,
        held_portal: ok && super::held::binds_held_portal(msgs, &planned.message_routes),
        served_cursor: ok && !messages.claims && served_portals(msgs, state, cx).is_some(),
        copy_in: facts.iter().any(is_sharded_copy_in),
        empty: msgs.is_empty(),
        unnest: unnest.is_some(),
    };
    let fallback = || (cx.fallback)();
    planned.plan = match plan_extended(&gathered, &batch, state, messages.block, fallback) {
        Outcome::Claims => Plan::Claims,
        Outcome::HeldPortal => Plan::HeldPortal,
        Outcome::ServedCursor => Plan::ServedCursor,
        Outcome::CopyIn => Plan::CopyIn,
        Outcome::Nothing => Plan::Empty,
        Outcome::UnnestInsert => match unnest {
            Some((unnest, rows)) => Plan::SplitInsert {
                rows,
                unnest: Some(unnest),
            },
            None => Plan::Empty,
        },
        Outcome::Batch(BatchPlan::Local) => Plan::LocalBatch,
        Outcome::Batch(BatchPlan::Units) => Plan::InTurn,
        Outcome::Batch(BatchPlan::Run(target)) => Plan::Run(target),
        Outcome::Batch(BatchPlan::Refuse {
            refusal,
            raise_on: Some(shard),
        }) => Plan::RaiseOn { shard, refusal },
        Outcome::Batch(BatchPlan::Refuse { refusal, .. }) => return Err(refusal),
    };
    Ok(planned)
}

/// What the planner learnt of a batch's messages besides what [`Batch`] carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gathered {
    /// Writes of a looked-up column claim their values first.
    pub claims: bool,
    /// A portal read a piece at a time over several shards.
    pub held_portal: bool,
    /// It touches a cursor (or held portal) the proxy serves.
    pub served_cursor: bool,
    /// It executes a COPY FROM STDIN into a sharded table.
    pub copy_in: bool,
    /// No message of it is left to send to a server.
    pub empty: bool,
    /// It runs exactly one UNNEST insert whose rows split between shards.
    pub unnest: bool,
}

/// The path a batch takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Claim the lookup values in the batch's block, then run it.
    Claims,
    /// Run unit by unit with the several-shard portal held by the proxy.
    HeldPortal,
    /// Answered by the proxy's served cursors.
    ServedCursor,
    /// COPY FROM STDIN split by key.
    CopyIn,
    /// Nothing to send: answer the batch's error (if any) and its end.
    Nothing,
    /// The UNNEST insert split into one insert per shard.
    UnnestInsert,
    /// Everything else, as [`plan_batch`] decides.
    Batch(BatchPlan),
}

/// True when a failed block rejects the batch: it executes something other than COMMIT,
/// ROLLBACK or ROLLBACK TO (`executed`: each executed statement's text and facts).
pub fn rejected_by_failed_block<'a>(
    block_failed: bool,
    executed: impl IntoIterator<Item = (&'a str, Option<&'a StatementFacts>)>,
) -> bool {
    block_failed
        && !executed.into_iter().all(|(sql, f)| {
            f.is_some_and(|f| {
                matches!(
                    control_statement(sql, f),
                    ControlStatement::Commit
                        | ControlStatement::Rollback
                        | ControlStatement::RollbackTo
                )
            })
        })
}

/// The path of an extended batch (see the module doc). `batch.failed_before`: a message was
/// refused while resolving (the paths that would run statements are then not taken).
pub(super) fn plan_extended(
    gathered: &Gathered,
    batch: &Batch,
    state: &SessionState,
    block: BlockView,
    fallback: impl FnOnce() -> u32,
) -> Outcome {
    let ok = !batch.failed_before;
    if ok && gathered.claims {
        return Outcome::Claims;
    }
    if ok && gathered.held_portal {
        return Outcome::HeldPortal;
    }
    if ok && gathered.served_cursor {
        return Outcome::ServedCursor;
    }
    if gathered.copy_in {
        return Outcome::CopyIn;
    }
    if gathered.empty {
        return Outcome::Nothing;
    }
    if ok
        && gathered.unnest
        && batch.ending == super::Ending::Sync
        && state.open_batch_shard.is_none()
        && !batch.local
    {
        return Outcome::UnnestInsert;
    }
    Outcome::Batch(plan_batch(batch, state, block, fallback))
}

#[cfg(test)]
#[path = "extended_tests.rs"]
mod tests;
