//! How an extended-protocol batch (up to Sync or Flush) runs, decided from what its messages need
//! and the session's state: answered by the proxy itself, run unit by unit, or run as one request
//! on one target; or refused. Pure: the frontend gathers the inputs (each Bind's route after its
//! lookups, the executed statements' facts, the block as transaction control sees it) and
//! executes the answer.

use crate::refusal::Refusal;
use crate::router::{Route, StatementFacts, StatementKind};
use crate::session::SessionState;
use crate::txn::control::{self, BlockView, ControlAction, ControlStatement};

use super::units::{runs_unit_by_unit, whole_batch_refusal};
use super::{combine, Ending, Target};

/// What the planner needs to know of a batch.
pub struct Batch<'a> {
    /// The routes of its messages other than `Route::Any` (Parse and Describe of a statement any
    /// shard answers add nothing).
    pub needed: &'a [Route],
    /// The facts of the statements it executes.
    pub facts: &'a [StatementFacts],
    /// Its one executed statement, as transaction control sees it (`None` for no statement or
    /// several).
    pub control: Option<ControlStatement>,
    /// It carries one of pgshard's own commands.
    pub local: bool,
    /// How many Executes it has, and whether one has a row limit.
    pub executes: usize,
    pub row_limit: bool,
    /// A message of it was refused before any ran (the rest is skipped).
    pub failed_before: bool,
    pub ending: Ending,
    /// The user may run statements that reach several shards.
    pub allow_scatter: bool,
}

/// How a batch runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchPlan {
    /// pgshard's own commands, or transaction control the proxy answers without a server.
    Local,
    /// Unit by unit, each Execute with what precedes it (see `frontend::pipeline`).
    Units,
    /// As one request on one target.
    Run(Target),
    /// Refused. `raise_on`: the shard a Flush left the batch's implicit transaction open on;
    /// that shard raises the error, so the statements it already ran roll back as in Postgres.
    Refuse {
        refusal: Refusal,
        raise_on: Option<u32>,
    },
}

/// Plans a batch (see the module doc). `fallback`: the shard for a batch any shard can answer.
pub fn plan_batch(
    batch: &Batch,
    state: &SessionState,
    block: BlockView,
    fallback: impl FnOnce() -> u32,
) -> BatchPlan {
    if batch.local || deferred_transaction_control(batch.control, block) {
        if !batch.needed.is_empty() {
            return BatchPlan::Refuse {
                refusal: Refusal::unsupported(
                    "pgshard's own commands (SET/SHOW pgshard.*, LISTEN, NOTIFY, SELECT pg_notify(…) of values) and transaction control must not share a Sync with statements that need a shard: send them with a Sync of their own",
                ),
                raise_on: None,
            };
        }
        return BatchPlan::Local;
    }
    if runs_unit_by_unit(
        batch.needed,
        batch.executes,
        batch.row_limit,
        batch.ending,
        state,
    ) {
        return BatchPlan::Units;
    }
    let refuse = |refusal| BatchPlan::Refuse {
        refusal,
        raise_on: state.open_batch_shard,
    };
    if !batch.allow_scatter {
        if let Some(message) =
            crate::router::scatter_guard::refuse_scatter(batch.needed, batch.facts)
        {
            return refuse(Refusal::unsupported(message));
        }
    }
    let target = match combine(batch.needed, batch.facts, state, fallback) {
        Ok(target) => target,
        Err(refusal) => return refuse(refusal),
    };
    // A COPY TO over several shards is answered by the proxy, whatever else the batch holds.
    let copy = batch
        .facts
        .iter()
        .any(|f| matches!(f.kind, StatementKind::Copy { .. }));
    if matches!(target, Target::Broadcast(_)) || (matches!(target, Target::Scatter(_)) && !copy) {
        if let Some(refusal) = whole_batch_refusal(
            &target,
            batch.executes,
            batch.row_limit,
            batch.failed_before,
            batch.ending,
        ) {
            return BatchPlan::Refuse {
                refusal,
                raise_on: None,
            };
        }
    }
    BatchPlan::Run(target)
}

/// What running a batch on its one target asks of the shard's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footing {
    /// It executes statements, or needs a particular shard: it runs in the shard's transaction
    /// (the block's, the one a Flush left open, or an implicit one). Describing statements
    /// needs none.
    pub join_txn: bool,
    /// A Flush after Parse/Describe alone binds nothing: the shard that answered ends its
    /// implicit transaction with a Sync the client does not see (a Bind's portal would not
    /// survive it), so the next batch may run on any shard.
    pub settle: bool,
}

/// The footing of a batch (`executes`: how many Executes it has; `needed`: its routes other
/// than `Route::Any`; `binds`: it has a Bind).
pub fn footing(
    ending: Ending,
    executes: usize,
    needed: &[Route],
    binds: bool,
    state: &SessionState,
) -> Footing {
    let join_txn = executes > 0 || !needed.is_empty();
    let settle = ending == Ending::Flush && !join_txn && state.open_batch_shard.is_none() && !binds;
    Footing { join_txn, settle }
}

/// Where a Describe, Execute or Close of `portal` runs: `None` for a portal bound in this batch
/// (`bound_here`: it goes with its Bind); one from an earlier batch, or a cursor declared in
/// SQL, lives where it was bound or declared; any shard answers for an unknown one (its error).
pub fn portal_route(state: &SessionState, portal: &str, bound_here: bool) -> Option<Route> {
    if bound_here {
        return None;
    }
    Some(match state.portals.get(portal).copied() {
        Some(shard) => Route::Single(shard),
        None => state
            .cursors
            .shard_of(portal)
            .map_or(Route::Any, Route::Single),
    })
}

/// True when the batch's one statement only opens a block, or ends one that the proxy must end
/// itself (no shard has it, it spans shards, or the proxy refused a statement in it).
pub fn deferred_transaction_control(control: Option<ControlStatement>, block: BlockView) -> bool {
    let Some(kind) = control else {
        return false;
    };
    matches!(
        kind,
        ControlStatement::Begin | ControlStatement::Commit | ControlStatement::Rollback
    ) && matches!(
        control::decide(block, kind),
        ControlAction::OpenBlock | ControlAction::EndInProxy
    )
}

/// The shard whose implicit transaction stays open after a request ran on `shard` and ended with
/// `ending`: a Flush leaves it open there (asyncpg's Parse/Bind/Execute then Flush), so the next
/// batch must run on that shard; a Sync or a simple Query ends it, the server's status then
/// settling the transaction.
pub fn open_shard_after(ending: Ending, shard: u32) -> Option<u32> {
    match ending {
        Ending::Flush => Some(shard),
        Ending::Sync | Ending::Query => None,
    }
}

/// Shares its fixtures with the extended planner's tests.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::planner::tests::{block_of, flush_open_on, in_block};

    pub(in crate::planner) const FALLBACK: u32 = 9;

    /// The facts of `sql` (`users` sharded by `user_id`).
    pub(in crate::planner) fn facts(sql: &str) -> StatementFacts {
        let tables = [crate::config::ShardedTableConfig {
            name: "users".into(),
            key: "user_id".into(),
            key_type: None,
        }];
        crate::router::Router::new(&tables, 10).analyze_prepared(sql)[0].clone()
    }

    /// A batch of one Execute per route, ended by Sync.
    pub(in crate::planner) fn batch<'a>(
        needed: &'a [Route],
        facts: &'a [StatementFacts],
    ) -> Batch<'a> {
        Batch {
            needed,
            facts,
            control: None,
            local: false,
            executes: needed.len(),
            row_limit: false,
            failed_before: false,
            ending: Ending::Sync,
            allow_scatter: true,
        }
    }

    fn refused(plan: &BatchPlan) -> Option<(String, Option<u32>)> {
        match plan {
            BatchPlan::Refuse { refusal, raise_on } => Some((refusal.to_string(), *raise_on)),
            _ => None,
        }
    }

    #[test]
    fn batches_run_locally_unit_by_unit_or_on_one_target() {
        let select = [facts("SELECT * FROM users WHERE user_id = $1")];
        let two_selects = [select[0].clone(), select[0].clone()];
        let update = [facts("UPDATE users SET name = 'x' WHERE user_id > $1")];
        let copy = [facts("COPY users TO STDOUT")];
        let one = [Route::Single(2)];
        let same = [Route::Single(2), Route::Single(2)];
        let two = [Route::Single(1), Route::Single(2)];
        let scatter = [Route::Scatter(vec![1, 2, 3])];
        let broadcast = [Route::Broadcast(vec![1, 2, 3])];
        let none: [Route; 0] = [];
        let idle = SessionState::default();
        let plan =
            |b: &Batch, state: &SessionState| plan_batch(b, state, block_of(state), || FALLBACK);
        // Keyed statements: their shard; two statements on one shard run together.
        assert_eq!(
            plan(&batch(&one, &select), &idle),
            BatchPlan::Run(Target::Single(2))
        );
        assert_eq!(
            plan(&batch(&same, &two_selects), &idle),
            BatchPlan::Run(Target::Single(2))
        );
        // Parse/Describe only (asyncpg's prepare): any shard, no transaction bound.
        let describe = Batch {
            executes: 0,
            ending: Ending::Flush,
            ..batch(&none, &[])
        };
        assert_eq!(
            plan(&describe, &idle),
            BatchPlan::Run(Target::Single(FALLBACK))
        );
        // Inside a block on shard 3, a batch any shard answers joins the block's shard.
        assert_eq!(
            plan(&batch(&none, &select), &in_block(&[3])),
            BatchPlan::Run(Target::Single(3))
        );
        // Statements for two shards in one Sync (executemany, pipeline mode): unit by unit.
        assert_eq!(plan(&batch(&two, &two_selects), &idle), BatchPlan::Units);
        // A batch that leaves the shard a Flush left open: unit by unit too.
        assert_eq!(
            plan(&batch(&[Route::Single(1)], &select), &flush_open_on(2)),
            BatchPlan::Units
        );
        // A keyless statement on its own before Sync: scattered; under a row limit or with a
        // Flush: unit by unit.
        assert_eq!(
            plan(&batch(&scatter, &update), &idle),
            BatchPlan::Run(Target::Scatter(vec![1, 2, 3]))
        );
        let limited = Batch {
            row_limit: true,
            ..batch(&scatter, &select)
        };
        assert_eq!(plan(&limited, &idle), BatchPlan::Units);
        let flushed = Batch {
            ending: Ending::Flush,
            ..batch(&scatter, &select)
        };
        assert_eq!(plan(&flushed, &idle), BatchPlan::Units);
        // After a refused message the scatter cannot run as the whole batch.
        let after_error = Batch {
            failed_before: true,
            ..batch(&scatter, &select)
        };
        assert!(refused(&plan(&after_error, &idle)).is_some());
        // A COPY TO over every shard is the proxy's to answer, whatever the batch's shape.
        let copy_after_error = Batch {
            failed_before: true,
            ..batch(&scatter, &copy)
        };
        assert_eq!(
            plan(&copy_after_error, &idle),
            BatchPlan::Run(Target::Scatter(vec![1, 2, 3]))
        );
        assert_eq!(
            plan(&batch(&broadcast, &select), &idle),
            BatchPlan::Run(Target::Broadcast(vec![1, 2, 3]))
        );
        // A user who may not scatter.
        let strict = Batch {
            allow_scatter: false,
            ..batch(&scatter, &update)
        };
        assert!(refused(&plan(&strict, &idle)).is_some());
    }

    #[test]
    fn transaction_control_and_own_commands_are_answered_by_the_proxy() {
        let none: [Route; 0] = [];
        let idle = SessionState::default();
        let control = |c: ControlStatement| Batch {
            control: Some(c),
            ..batch(&none, &[])
        };
        let closed = BlockView::default();
        let open_unbound = BlockView {
            open: true,
            ..BlockView::default()
        };
        let distributed = BlockView {
            open: true,
            bound: true,
            distributed: true,
            ..BlockView::default()
        };
        let on_one = BlockView {
            open: true,
            bound: true,
            ..BlockView::default()
        };
        // (statement, block, answered by the proxy)
        let cases = [
            (ControlStatement::Begin, closed, true),
            (ControlStatement::Commit, open_unbound, true),
            (ControlStatement::Commit, distributed, true),
            (ControlStatement::Rollback, distributed, true),
            // A block on one shard ends there.
            (ControlStatement::Commit, on_one, false),
            (ControlStatement::Other, closed, false),
        ];
        for (statement, block, local) in cases {
            let got = plan_batch(&control(statement), &idle, block, || FALLBACK);
            assert_eq!(
                got == BatchPlan::Local,
                local,
                "{statement:?} {block:?}: {got:?}"
            );
        }
        // Own commands with a statement that needs a shard: refused as a whole.
        let keyed = [Route::Single(1)];
        let mixed = Batch {
            local: true,
            ..batch(&keyed, &[])
        };
        let got = plan_batch(&mixed, &idle, closed, || FALLBACK);
        assert!(
            refused(&got).is_some_and(|(m, _)| m.starts_with("pgshard's own commands")),
            "{got:?}"
        );
    }

    #[test]
    fn portals_run_where_they_were_bound() {
        let mut state = SessionState::default();
        state.portals.insert("p".into(), 4);
        // (portal, bound in this batch, route)
        let cases = [
            ("p", true, None),
            ("p", false, Some(Route::Single(4))),
            ("unknown", false, Some(Route::Any)),
            ("", true, None),
        ];
        for (portal, bound_here, want) in cases {
            assert_eq!(portal_route(&state, portal, bound_here), want, "{portal}");
        }
    }

    #[test]
    fn refused_routes_refuse_the_batch_unless_a_flush_left_a_shard_open() {
        let update = [facts("UPDATE users SET name = 'x' WHERE user_id > $1")];
        let refuse = [Route::Refuse("no".into())];
        let got = plan_batch(
            &batch(&refuse, &update),
            &SessionState::default(),
            BlockView::default(),
            || FALLBACK,
        );
        assert_eq!(refused(&got), Some(("no".to_string(), None)));
        // Under a Flush that left shard 2 open, unit by unit, which refuses it on that shard.
        let scatter = [Route::Scatter(vec![1, 2])];
        for needed in [&scatter[..], &refuse[..]] {
            let got = plan_batch(
                &batch(needed, &update),
                &flush_open_on(2),
                BlockView::default(),
                || FALLBACK,
            );
            assert_eq!(got, BatchPlan::Units, "{needed:?}");
        }
    }

    #[test]
    fn only_a_flush_leaves_the_shard_it_ran_on_open() {
        let cases = [
            (Ending::Flush, 3, Some(3)),
            (Ending::Flush, 0, Some(0)),
            (Ending::Sync, 3, None),
            (Ending::Query, 3, None),
        ];
        for (ending, shard, want) in cases {
            assert_eq!(
                open_shard_after(ending, shard),
                want,
                "{ending:?} on {shard}"
            );
        }
    }
}
