//! How an extended-protocol batch up to Sync is cut into units when its statements need different
//! shards: each unit is one Execute with the Parse/Bind/Describe sent before it, so each is routed
//! by its own parameters and run in message order; what follows the last Execute is a unit of its
//! own (it executes nothing).

use std::collections::BTreeSet;
use std::ops::Range;

use crate::router::{Route, StatementFacts, StatementKind};
use crate::session::SessionState;

use super::{Ending, Target};
use crate::refusal::Refusal;

/// True when an extended batch runs unit by unit (see `frontend::pipeline`) rather than as one
/// request on one target: a pipeline a Flush already left open goes on that way, and so does a
/// batch one target cannot serve, or one leaving the shard a Flush left a transaction open on.
/// `needed`: the routes of its messages other than `Route::Any`.
pub fn runs_unit_by_unit(
    needed: &[Route],
    executes: usize,
    row_limit: bool,
    ending: Ending,
    state: &SessionState,
) -> bool {
    let pipeline_open = state.txn.as_ref().is_some_and(|t| t.implicit);
    pipeline_open
        || needs_units(needed, executes, row_limit)
        || several_shards_before_sync(needed, executes, ending != Ending::Flush)
        || state
            .open_batch_shard
            .is_some_and(|b| leaves_shard(needed, b))
}

/// The refusal of an extended batch planned as one request over several shards (`target`) that
/// cannot run that way: a scatter or broadcast runs one Execute without a row limit, then Sync,
/// with nothing refused before it (`failed_before`).
pub fn whole_batch_refusal(
    target: &Target,
    executes: usize,
    row_limit: bool,
    failed_before: bool,
    ending: Ending,
) -> Option<Refusal> {
    let alone = executes == 1 && !row_limit && !failed_before && ending != Ending::Flush;
    match target {
        _ if alone => None,
        Target::Single(_) => None,
        Target::Scatter(_) => Some(Refusal::unsupported(
            "a statement without a shard key runs on every shard; send it with one Execute (no row limit) followed by Sync",
        )),
        Target::Broadcast(_) => Some(Refusal::unsupported(
            "a statement that changes every shard must be sent with one Execute (no row limit) followed by Sync",
        )),
    }
}

/// What pgshard cannot run inside a pipeline that spans shards (`facts`: its bound statements),
/// as the refusal to give.
pub fn pipeline_refusal<'a>(
    facts: impl IntoIterator<Item = &'a StatementFacts>,
) -> Option<Refusal> {
    let facts: Vec<&StatementFacts> = facts.into_iter().collect();
    let message = if facts.iter().any(|f| {
        matches!(
            f.kind,
            StatementKind::Begin | StatementKind::Commit | StatementKind::Rollback
        )
    }) {
        "BEGIN, COMMIT and ROLLBACK must not share a Sync with statements for different shards: send them with a Sync of their own"
    } else if facts
        .iter()
        .any(|f| matches!(f.kind, StatementKind::Copy { .. }))
    {
        "a COPY must not share a Sync with statements for different shards: send it with a Sync of its own"
    } else if facts.iter().any(|f| f.no_transaction_block) {
        "a statement that cannot run inside a transaction block must not share a Sync with statements for different shards"
    } else {
        return None;
    };
    Some(Refusal::unsupported(message))
}

/// The units of a batch whose messages are Executes where `is_execute` says so.
pub fn split_units(is_execute: &[bool]) -> Vec<Range<usize>> {
    let mut units = Vec::new();
    let mut start = 0;
    for (i, &execute) in is_execute.iter().enumerate() {
        if execute {
            units.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < is_execute.len() {
        units.push(start..is_execute.len());
    }
    units
}

/// True when a batch (its routes other than `Route::Any`, how many Executes it has, and whether
/// one of them has a row limit) cannot run as one request on one target: a split INSERT, a row
/// limit over several shards, or several statements that need different shards, several shards
/// each, or every shard.
pub fn needs_units(routes: &[Route], executes: usize, row_limit: bool) -> bool {
    if routes.iter().any(|r| matches!(r, Route::Refuse(_))) {
        // Refused as a whole before anything runs.
        return false;
    }
    if routes.iter().any(|r| matches!(r, Route::SplitInsert(_))) {
        return true;
    }
    if row_limit && routes.iter().any(|r| matches!(r, Route::Scatter(_))) {
        return true;
    }
    if executes < 2 {
        return false;
    }
    let mut singles = BTreeSet::new();
    for r in routes {
        match r {
            Route::Single(s) => {
                singles.insert(*s);
            }
            Route::Scatter(_) | Route::Broadcast(_) => return true,
            _ => {}
        }
    }
    singles.len() > 1
}

/// True when a batch ended by Flush, not Sync, executes a statement that runs on several shards
/// (node-postgres sends Flush before every Sync): its implicit transaction stays open until the
/// Sync, which the unit-by-unit path keeps across shards.
pub fn several_shards_before_sync(routes: &[Route], executes: usize, sync: bool) -> bool {
    !sync
        && executes > 0
        && routes
            .iter()
            .any(|r| matches!(r, Route::Scatter(_) | Route::Broadcast(_)))
}

/// True when a batch (its routes other than `Route::Any`) needs more than `shard`, the shard a
/// Flush left an implicit transaction open on.
pub fn leaves_shard(routes: &[Route], shard: u32) -> bool {
    routes.iter().any(|r| *r != Route::Single(shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatters_and_broadcasts_run_whole_only_alone_before_sync() {
        let scatter = Target::Scatter(vec![0, 1]);
        let broadcast = Target::Broadcast(vec![0, 1]);
        // (target, executes, row limit, failed before, ending, refused)
        let cases = [
            (&scatter, 1, false, false, Ending::Sync, false),
            (&scatter, 2, false, false, Ending::Sync, true),
            (&scatter, 1, true, false, Ending::Sync, true),
            (&scatter, 1, false, true, Ending::Sync, true),
            (&scatter, 1, false, false, Ending::Flush, true),
            (&broadcast, 1, false, false, Ending::Sync, false),
            (&broadcast, 0, false, false, Ending::Sync, true),
            (&Target::Single(3), 2, true, true, Ending::Flush, false),
        ];
        for (target, executes, limit, failed, ending, refused) in cases {
            let got = whole_batch_refusal(target, executes, limit, failed, ending);
            assert_eq!(
                got.is_some(),
                refused,
                "{target:?} {executes} {limit} {failed} {ending:?}"
            );
        }
    }

    #[test]
    fn a_scatter_under_flush_runs_unit_by_unit() {
        let scatter = Route::Scatter(vec![0, 1]);
        let cases = [
            (vec![scatter.clone()], 1, false, true),
            (vec![scatter.clone()], 1, true, false),
            (vec![Route::Broadcast(vec![0, 1])], 1, false, true),
            (vec![Route::Single(3)], 1, false, false),
            // Parse/Describe only: nothing runs yet.
            (vec![scatter], 0, false, false),
        ];
        for (routes, executes, sync, want) in cases {
            assert_eq!(
                several_shards_before_sync(&routes, executes, sync),
                want,
                "{routes:?} {executes} {sync}"
            );
        }
    }
    use crate::router::split_insert::ShardRows;

    #[test]
    fn one_unit_per_execute_with_what_precedes_it() {
        // Which messages are Executes → (start, end) of each unit.
        type Case<'a> = (&'a [bool], &'a [(usize, usize)]);
        let cases: &[Case] = &[
            (&[], &[]),
            // Parse, Bind, Describe, Execute
            (&[false, false, false, true], &[(0, 4)]),
            // Parse, Bind, Execute, Bind, Execute, Bind, Execute
            (
                &[false, false, true, false, true, false, true],
                &[(0, 3), (3, 5), (5, 7)],
            ),
            // … then Close: a unit of its own
            (&[false, true, false], &[(0, 2), (2, 3)]),
            // Parse, Describe only
            (&[false, false], &[(0, 2)]),
            (&[true, true], &[(0, 1), (1, 2)]),
        ];
        for (input, want) in cases {
            let got: Vec<(usize, usize)> = split_units(input)
                .iter()
                .map(|r| (r.start, r.end))
                .collect();
            assert_eq!(got, want.to_vec(), "{input:?}");
        }
    }

    #[test]
    fn units_only_when_one_target_cannot_serve_the_batch() {
        let split = Route::SplitInsert(vec![
            ShardRows {
                shard: 1,
                rows: vec![0],
            },
            ShardRows {
                shard: 2,
                rows: vec![1],
            },
        ]);
        let scatter = Route::Scatter(vec![1, 2]);
        let cases: &[(&[Route], usize, bool, bool)] = &[
            (&[], 0, false, false),
            (&[Route::Single(1)], 1, false, false),
            (&[Route::Single(1)], 1, true, false),
            (&[Route::Single(1), Route::Single(1)], 2, false, false),
            (&[Route::Single(1), Route::Single(2)], 2, false, true),
            // One keyless statement alone runs as one scatter, unless it fetches some rows only.
            (std::slice::from_ref(&scatter), 1, false, false),
            (std::slice::from_ref(&scatter), 1, true, true),
            (&[scatter.clone(), Route::Single(1)], 2, false, true),
            (
                &[Route::Broadcast(vec![1, 2]), Route::Single(1)],
                2,
                false,
                true,
            ),
            (std::slice::from_ref(&split), 1, false, true),
            (
                &[Route::Single(1), Route::Refuse("no".into())],
                2,
                false,
                false,
            ),
        ];
        for (routes, executes, row_limit, want) in cases {
            assert_eq!(
                needs_units(routes, *executes, *row_limit),
                *want,
                "{routes:?} {row_limit}"
            );
        }
    }

    #[test]
    fn a_flush_shard_is_left_by_any_other_target() {
        let cases: &[(&[Route], bool)] = &[
            (&[], false),
            (&[Route::Single(3)], false),
            (&[Route::Single(3), Route::Single(3)], false),
            (&[Route::Single(3), Route::Single(4)], true),
            (&[Route::Scatter(vec![3, 4])], true),
            (&[Route::Broadcast(vec![3, 4])], true),
        ];
        for (routes, want) in cases {
            assert_eq!(leaves_shard(routes, 3), *want, "{routes:?}");
        }
    }
}
