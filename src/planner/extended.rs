//! Which path an extended-protocol batch takes, decided from what the frontend gathered about it
//! (its messages resolved, each Bind routed after its lookups): the whole chain of decisions in
//! one pure function, so the frontend only matches on the answer. The routing itself is
//! [`plan_batch`]'s, which shares `combine` with the simple protocol's planner.

use crate::router::StatementFacts;
use crate::session::SessionState;
use crate::txn::control::{BlockView, ControlStatement};

use super::batch::{plan_batch, Batch, BatchPlan};
use super::control_statement;

/// What the frontend learnt of a batch besides what [`Batch`] carries.
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

/// Plans an extended batch (see the module doc). `batch.failed_before`: a message was refused
/// while resolving (the paths that would run statements are then not taken).
pub fn plan_extended(
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
