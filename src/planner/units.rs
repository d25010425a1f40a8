//! How an extended-protocol batch up to Sync is cut into units when its statements need different
//! shards: each unit is one Execute with the Parse/Bind/Describe sent before it, so each is routed
//! by its own parameters and run in message order; what follows the last Execute is a unit of its
//! own (it executes nothing).

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use crate::router::split_insert::ShardRows;
use crate::router::{Route, StatementFacts, StatementKind};
use crate::session::SessionState;

use super::held::{binds_held_portal, executes_held_portal};
use super::messages::{bound_facts, executed_facts, Msg};
use super::{combine, Ending, Target};
use crate::refusal::Refusal;

/// A statement that changes data or the schema: over several shards it must be atomic (two
/// phases), and the proxy never holds its rows.
pub fn needs_atomic_scatter(f: &StatementFacts) -> bool {
    f.is_write || f.kind == StatementKind::Ddl
}

/// How a batch that runs unit by unit starts (see `frontend::pipeline`).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelinePlan {
    /// The units, in message order (see [`split_units`]).
    pub units: Vec<Range<usize>>,
    /// The first unit is a BEGIN (pgjdbc sends it with the batch it starts): the proxy opens
    /// the client's block with it, and the rest joins that block.
    pub begins: bool,
    /// What pgshard cannot run in this pipeline: refused before any of it runs.
    pub refusal: Option<Refusal>,
    /// It only reads: each shard may commit on its own, without two phases.
    pub reads_only: bool,
    /// One statement that only reads: it needs no block of its own.
    pub lone_read: bool,
}

/// Plans a batch that runs unit by unit (`routes`: each message's route, `None` for one routed
/// by its portal's Bind).
pub fn plan_pipeline(msgs: &[Msg], routes: &[Option<Route>], state: &SessionState) -> PipelinePlan {
    let is_execute: Vec<bool> = msgs.iter().map(|m| matches!(m, Msg::Execute(_))).collect();
    let units = split_units(&is_execute);
    let first = units.first().filter(|_| state.txn.is_none());
    let begins = first.is_some_and(|r| {
        matches!(
            executed_facts(&msgs[r.clone()]).as_slice(),
            [StatementFacts {
                kind: StatementKind::Begin,
                ..
            }]
        )
    });
    let rest = match (begins, first) {
        (true, Some(r)) => r.end,
        _ => 0,
    };
    let refusal = pipeline_refusal(bound_facts(&msgs[rest..]));
    let reads_only = !routes
        .iter()
        .any(|r| matches!(r, Some(Route::SplitInsert(_))))
        && !executed_facts(msgs).iter().any(needs_atomic_scatter);
    let lone_read = reads_only && is_execute.iter().filter(|e| **e).count() < 2;
    PipelinePlan {
        units,
        begins,
        refusal,
        reads_only,
        lone_read,
    }
}

/// What becomes of the implicit transaction a Flush left open on one shard when the next batch
/// runs unit by unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushAdoption {
    /// No Flush left one open.
    Nothing,
    /// Inside the client's block: the shard is one of the block's; nothing to do but forget it.
    InBlock,
    /// Outside a block: BEGIN on the shard turns its implicit transaction into the pipeline's
    /// block (keeping what ran in it), which then commits with the other shards (two phases).
    Begin(u32),
}

/// How a pipeline takes over the shard a Flush left an implicit transaction open on.
pub fn flush_adoption(state: &SessionState) -> FlushAdoption {
    match (state.open_batch_shard, &state.txn) {
        (None, _) => FlushAdoption::Nothing,
        (Some(_), Some(_)) => FlushAdoption::InBlock,
        (Some(shard), None) => FlushAdoption::Begin(shard),
    }
}

/// Portals bound by earlier units of one pipeline, and the shard each lives on (`None`: several).
#[derive(Debug, Default)]
pub struct UnitPortals(HashMap<String, Option<u32>>);

/// How one unit of a pipeline runs.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitPlan {
    /// It binds or executes portals the proxy holds: the proxy answers it (see
    /// `frontend::held_portals`).
    Held,
    /// A multi-row INSERT whose rows split between shards.
    Split(Vec<ShardRows>),
    /// On one target; `facts`: the statements it executes.
    Run {
        target: Target,
        facts: Vec<StatementFacts>,
    },
    /// Refused: the pipeline stops here, as after an error.
    Refuse(Refusal),
}

/// Plans one unit of a pipeline: where it runs, from its messages' routes (`None`: routed by a
/// portal, which lives where an earlier unit of the pipeline bound it) and the session's state.
/// Records where the unit's portals are bound in `portals`.
pub fn plan_unit(
    unit: &[Msg],
    routes: &[Option<Route>],
    portals: &mut UnitPortals,
    state: &SessionState,
    allow_scatter: bool,
    fallback: impl FnOnce() -> u32,
) -> UnitPlan {
    if binds_held_portal(unit, routes) || executes_held_portal(unit, &state.cursors) {
        return UnitPlan::Held;
    }
    let binds: Vec<&str> = unit.iter().filter_map(Msg::bound_portal).collect();
    let mut needed = Vec::new();
    for (msg, route) in unit.iter().zip(routes) {
        match route {
            Some(Route::Any) => {}
            Some(r) => needed.push(r.clone()),
            None => {
                let Some(portal) = msg.portal().filter(|p| !binds.contains(p)) else {
                    continue;
                };
                match portals.0.get(portal) {
                    Some(Some(shard)) => needed.push(Route::Single(*shard)),
                    Some(None) => {
                        return UnitPlan::Refuse(Refusal::unsupported(format!(
                            "portal \"{portal}\" runs on several shards: execute it right after its Bind"
                        )))
                    }
                    None => {}
                }
            }
        }
    }
    if let Some(rows) = needed.iter().find_map(|r| match r {
        Route::SplitInsert(rows) => Some(rows),
        _ => None,
    }) {
        if needed.len() > 1 {
            return UnitPlan::Refuse(Refusal::unsupported(
                "a multi-row INSERT split between shards must be executed right after its own Bind",
            ));
        }
        for p in &binds {
            portals.0.insert(p.to_string(), None);
        }
        return UnitPlan::Split(rows.clone());
    }
    let facts = executed_facts(unit);
    if !allow_scatter {
        if let Some(message) = crate::router::scatter_guard::refuse_scatter(&needed, &facts) {
            return UnitPlan::Refuse(Refusal::unsupported(message));
        }
    }
    let target = match combine(&needed, &facts, state, fallback) {
        Ok(target) => target,
        Err(refusal) => return UnitPlan::Refuse(refusal),
    };
    let where_bound = match &target {
        Target::Single(shard) => Some(*shard),
        _ => None,
    };
    for p in &binds {
        portals.0.insert(p.to_string(), where_bound);
    }
    // A write without RETURNING runs whole whatever its Execute's row limit.
    let no_rows = !facts.is_empty() && facts.iter().all(|f| f.returns_no_rows);
    let partial = !no_rows
        && unit
            .iter()
            .any(|m| matches!(m, Msg::Execute(e) if e.max_rows > 0));
    if partial && where_bound.is_none() {
        // Reads over several shards with a row limit are held (see `held`).
        return UnitPlan::Refuse(Refusal::unsupported(
            "a statement that changes several shards must be executed without a row limit",
        ));
    }
    UnitPlan::Run { target, facts }
}

/// How one unit of a pipeline ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitEnd {
    /// It ran; the next unit may follow.
    Ran,
    /// It failed and the client has the error (not yet ReadyForQuery).
    Failed,
    /// It failed and the client already has the error and a ReadyForQuery.
    Answered,
}

/// What ends a pipeline once its units ran (or one failed and the rest was skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineFinish {
    /// Flush, everything ran: the implicit transaction stays open for the next batch.
    StayOpen,
    /// Flush after a failure: the implicit block rolls back now and, as a server does after
    /// an error, the rest up to Sync is skipped (`skip_until_sync`; not when the client already
    /// has its ReadyForQuery).
    RollBack { skip_until_sync: bool },
    /// Sync: the pipeline's own block ends (`end_block`: commit when true, roll back when
    /// false), then ReadyForQuery unless the client already has it.
    AtSync {
        end_block: Option<bool>,
        ready_for_query: bool,
    },
}

/// How a pipeline ends: after `end` (the last unit's), at `ending`; `own`: the pipeline opened
/// (or a Flush left open) the implicit block it ran in.
pub fn finish_pipeline(end: UnitEnd, ending: Ending, own: bool) -> PipelineFinish {
    let ok = end == UnitEnd::Ran;
    if ending == Ending::Flush {
        return match ok {
            true => PipelineFinish::StayOpen,
            false => PipelineFinish::RollBack {
                skip_until_sync: end != UnitEnd::Answered,
            },
        };
    }
    PipelineFinish::AtSync {
        end_block: own.then_some(ok),
        ready_for_query: end != UnitEnd::Answered,
    }
}

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
    use crate::planner::batch::{footing, plan_batch, Batch, BatchPlan, Footing};
    use crate::planner::messages::build::*;
    use crate::planner::tests::{flush_open_on, in_block};
    use crate::session::cursors::{Materialized, Place};
    use crate::txn::control::BlockView;

    const KEYED: &str = "SELECT * FROM users WHERE user_id = $1";
    const KEYLESS: &str = "SELECT * FROM users WHERE name = $1";
    const WRITE: &str = "UPDATE users SET name = $2 WHERE user_id = $1";
    const WRITE_RETURNING: &str = "UPDATE users SET name = $2 WHERE user_id = $1 RETURNING name";
    const FALLBACK: u32 = 9;

    fn single(s: u32) -> Option<Route> {
        Some(Route::Single(s))
    }

    /// The target a unit runs on, or the start of its refusal, or "held" / "split".
    fn unit_outcome(
        unit: &[Msg],
        routes: &[Option<Route>],
        portals: &mut UnitPortals,
        state: &SessionState,
    ) -> Result<Target, String> {
        match plan_unit(unit, routes, portals, state, true, || FALLBACK) {
            UnitPlan::Run { target, .. } => Ok(target),
            UnitPlan::Refuse(r) => Err(r.to_string()),
            UnitPlan::Held => Err("held".into()),
            UnitPlan::Split(_) => Err("split".into()),
        }
    }

    /// A unit's messages, their routes, the session, and where it runs or how it is refused.
    type UnitCase = (
        Vec<Msg>,
        Vec<Option<Route>>,
        SessionState,
        Result<Target, &'static str>,
    );

    #[test]
    fn a_unit_runs_where_its_bind_routes_it() {
        let idle = SessionState::default();
        let scatter = Some(Route::Scatter(vec![1, 2, 3]));
        // (messages, their routes, session, where the unit runs or how it is refused)
        let cases: Vec<UnitCase> =
            vec![
            // A keyed Bind: its shard.
            (
                vec![bind("", KEYED), execute("", 0)],
                vec![single(2), None],
                SessionState::default(),
                Ok(Target::Single(2)),
            ),
            // Parse and Describe any shard answers add nothing.
            (
                vec![parse(KEYED), bind("", KEYED), describe_portal(""), execute("", 0)],
                vec![Some(Route::Any), single(4), None, None],
                SessionState::default(),
                Ok(Target::Single(4)),
            ),
            // A keyless Bind: every shard, merged.
            (
                vec![bind("", KEYLESS), execute("", 0)],
                vec![scatter.clone(), None],
                SessionState::default(),
                Ok(Target::Scatter(vec![1, 2, 3])),
            ),
            // A keyless read fetched a piece at a time: held by the proxy.
            (
                vec![bind("", KEYLESS), execute("", 10)],
                vec![scatter.clone(), None],
                SessionState::default(),
                Err("held"),
            ),
            // A keyless write returning rows under a row limit: refused.
            (
                vec![bind("", WRITE_RETURNING), execute("", 10)],
                vec![scatter.clone(), None],
                SessionState::default(),
                Err("a statement that changes several shards must be executed without a row limit"),
            ),
            // Without RETURNING the limit changes nothing (pgjdbc's executeUpdate sends 1).
            (
                vec![bind("", WRITE), execute("", 1)],
                vec![scatter.clone(), None],
                SessionState::default(),
                Ok(Target::Scatter(vec![1, 2, 3])),
            ),
            // Any shard answers: the block's shard inside a block, else the fallback.
            (
                vec![bind("", "SELECT 1"), execute("", 0)],
                vec![Some(Route::Any), None],
                in_block(&[5]),
                Ok(Target::Single(5)),
            ),
            (
                vec![bind("", "SELECT 1"), execute("", 0)],
                vec![Some(Route::Any), None],
                SessionState::default(),
                Ok(Target::Single(FALLBACK)),
            ),
            (
                vec![bind("", KEYED), execute("", 0)],
                vec![Some(Route::Refuse("no".into())), None],
                SessionState::default(),
                Err("no"),
            ),
        ];
        for (i, (unit, routes, state, want)) in cases.into_iter().enumerate() {
            let got = unit_outcome(&unit, &routes, &mut UnitPortals::default(), &state);
            match (&got, &want) {
                (Ok(t), Ok(w)) => assert_eq!(t, w, "case {i}"),
                (Err(m), Err(w)) => assert!(m.starts_with(w), "case {i}: {m}"),
                _ => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
        // A user who may not scatter.
        let unit = [bind("", WRITE), execute("", 0)];
        let routes = [scatter, None];
        let got = plan_unit(
            &unit,
            &routes,
            &mut UnitPortals::default(),
            &idle,
            false,
            || 0,
        );
        assert!(matches!(got, UnitPlan::Refuse(_)), "{got:?}");
    }

    #[test]
    fn a_pipeline_of_binds_over_several_shards_runs_unit_by_unit() {
        let msgs = vec![
            parse(KEYED),
            bind("", KEYED),
            execute("", 0),
            bind("p", KEYED),
            bind("", KEYED),
            execute("", 0),
            execute("p", 0),
            bind("s", KEYLESS),
            execute("s", 0),
            close_portal("p"),
        ];
        let routes = vec![
            Some(Route::Any),
            single(1),
            None,
            single(3),
            single(3),
            None,
            None,
            Some(Route::Scatter(vec![1, 2, 3])),
            None,
            None,
        ];
        let state = SessionState::default();
        let plan = plan_pipeline(&msgs, &routes, &state);
        assert_eq!(plan.units, vec![0..3, 3..6, 6..7, 7..9, 9..10]);
        assert!(!plan.begins && plan.refusal.is_none() && plan.reads_only && !plan.lone_read);
        // Each unit where its Bind says, or where an earlier unit bound its portal.
        let mut portals = UnitPortals::default();
        let got: Vec<Result<Target, String>> = plan
            .units
            .iter()
            .map(|r| unit_outcome(&msgs[r.clone()], &routes[r.clone()], &mut portals, &state))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok(Target::Single(1)),
                Ok(Target::Single(3)),
                Ok(Target::Single(3)),
                Ok(Target::Scatter(vec![1, 2, 3])),
                Ok(Target::Single(3)),
            ]
        );
        // Binds of one unit for two shards: refused as one request would be.
        let msgs = [bind("p", KEYED), bind("", KEYED), execute("", 0)];
        let got = unit_outcome(&msgs, &[single(3), single(2), None], &mut portals, &state);
        assert!(got
            .is_err_and(|m| m.starts_with("statements sent together in one request need shards")));
        // A portal bound in one unit and executed in a later one runs where it was bound; one
        // bound over several shards must be executed right after its Bind.
        let msgs = [
            bind("p", KEYED),
            bind("q", WRITE),
            execute("q", 0),
            execute("p", 0),
        ];
        let routes = [single(3), single(3), None, None];
        let mut portals = UnitPortals::default();
        let plan = plan_pipeline(&msgs, &routes, &state);
        assert!(!plan.reads_only && !plan.lone_read);
        let got: Vec<_> = plan
            .units
            .iter()
            .map(|r| unit_outcome(&msgs[r.clone()], &routes[r.clone()], &mut portals, &state))
            .collect();
        assert_eq!(got, vec![Ok(Target::Single(3)), Ok(Target::Single(3))]);
        let msgs = [bind("w", WRITE), execute("", 0), execute("w", 0)];
        let routes = [Some(Route::Scatter(vec![1, 2])), None, None];
        let mut portals = UnitPortals::default();
        let first = unit_outcome(&msgs[..2], &routes[..2], &mut portals, &state);
        assert_eq!(first, Ok(Target::Scatter(vec![1, 2])));
        let later = unit_outcome(&msgs[2..], &routes[2..], &mut portals, &state);
        assert!(later.is_err_and(|m| m.starts_with("portal \"w\" runs on several shards")));
    }

    #[test]
    fn a_pipeline_opens_with_begin_and_refuses_what_cannot_span_shards() {
        let state = SessionState::default();
        let begin = [
            parse("BEGIN"),
            bind("", "BEGIN"),
            execute("", 0),
            bind("", KEYED),
            execute("", 0),
            bind("", KEYED),
            execute("", 0),
        ];
        let routes = [
            Some(Route::Any),
            Some(Route::Any),
            None,
            single(1),
            None,
            single(2),
            None,
        ];
        let plan = plan_pipeline(&begin, &routes, &state);
        assert!(plan.begins && plan.refusal.is_none(), "{plan:?}");
        // Inside a block the BEGIN is the server's (a warning), not a new block.
        assert!(!plan_pipeline(&begin, &routes, &in_block(&[1])).begins);
        // COMMIT after statements for different shards, COPY, VACUUM: refused before anything.
        for sql in ["COMMIT", "COPY users FROM STDIN", "VACUUM users"] {
            let msgs = [
                bind("", KEYED),
                execute("", 0),
                bind("", sql),
                execute("", 0),
            ];
            let routes = [single(1), None, single(2), None];
            let plan = plan_pipeline(&msgs, &routes, &state);
            assert!(plan.refusal.is_some(), "{sql}");
        }
        // One read alone needs no block of its own.
        let plan = plan_pipeline(&[bind("", KEYLESS), execute("", 10)], &[None, None], &state);
        assert!(plan.lone_read);
    }

    #[test]
    fn a_flush_open_shard_is_taken_over_by_a_bind_for_another_shard() {
        let select = [crate::planner::messages::build::prepared(KEYED).facts[0].clone()];
        let other = [Route::Single(1)];
        let block_view = |state: &SessionState| BlockView {
            open: state.txn.is_some(),
            bound: state
                .txn
                .as_ref()
                .is_some_and(|t| !t.participants.is_empty()),
            ..BlockView::default()
        };
        let batch = Batch {
            needed: &other,
            facts: &select,
            control: None,
            local: false,
            executes: 1,
            row_limit: false,
            failed_before: false,
            ending: Ending::Sync,
            allow_scatter: true,
        };
        // (session: the Flush left shard 2 open, outside or inside a block; the adoption)
        let mut inside = in_block(&[2]);
        inside.open_batch_shard = Some(2);
        let cases = [
            (flush_open_on(2), FlushAdoption::Begin(2)),
            (inside, FlushAdoption::InBlock),
        ];
        for (state, adoption) in cases {
            // The batch leaves the open shard: it runs unit by unit…
            let plan = plan_batch(&batch, &state, block_view(&state), || FALLBACK);
            assert_eq!(plan, BatchPlan::Units);
            // …which first takes the open shard into a block that the next shard joins (two
            // phases at the Sync when they differ).
            assert_eq!(flush_adoption(&state), adoption);
            let adopted = match adoption {
                FlushAdoption::Begin(shard) => {
                    let mut txn = crate::txn::Txn::implicit();
                    txn.participants.push(shard);
                    SessionState {
                        txn: Some(txn),
                        ..SessionState::default()
                    }
                }
                _ => in_block(&[2]),
            };
            let unit = [bind("", KEYED), execute("", 0)];
            let got = unit_outcome(
                &unit,
                &[single(1), None],
                &mut UnitPortals::default(),
                &adopted,
            );
            assert_eq!(got, Ok(Target::Single(1)));
            // A statement any shard answers stays on the block's shard.
            let any = [bind("", "SELECT 1"), execute("", 0)];
            let got = unit_outcome(
                &any,
                &[Some(Route::Any), None],
                &mut UnitPortals::default(),
                &adopted,
            );
            assert_eq!(got, Ok(Target::Single(2)));
        }
        assert_eq!(
            flush_adoption(&SessionState::default()),
            FlushAdoption::Nothing
        );
        // On the open shard itself the batch runs there as one request.
        let same = [Route::Single(2)];
        let on_open = Batch {
            needed: &same,
            ..batch
        };
        let state = flush_open_on(2);
        assert_eq!(
            plan_batch(&on_open, &state, block_view(&state), || FALLBACK),
            BatchPlan::Run(Target::Single(2))
        );
    }

    #[test]
    fn parse_and_describe_under_flush_bind_no_shard() {
        let idle = SessionState::default();
        let settle = |ending, executes, needed: &[Route], binds, state: &SessionState| {
            footing(ending, executes, needed, binds, state)
        };
        // (ending, executes, needed routes, has a Bind, session, footing)
        let cases: Vec<(Ending, usize, Vec<Route>, bool, SessionState, Footing)> = vec![
            // asyncpg's prepare: Parse/Describe/Flush settles the answering shard.
            (
                Ending::Flush,
                0,
                vec![],
                false,
                idle,
                Footing {
                    join_txn: false,
                    settle: true,
                },
            ),
            (
                Ending::Sync,
                0,
                vec![],
                false,
                SessionState::default(),
                Footing {
                    join_txn: false,
                    settle: false,
                },
            ),
            (
                Ending::Flush,
                1,
                vec![Route::Single(1)],
                true,
                SessionState::default(),
                Footing {
                    join_txn: true,
                    settle: false,
                },
            ),
            // A Bind without Execute keeps its portal: no settling Sync.
            (
                Ending::Flush,
                0,
                vec![],
                true,
                SessionState::default(),
                Footing {
                    join_txn: false,
                    settle: false,
                },
            ),
            // A tenant's Parse needs its shard.
            (
                Ending::Flush,
                0,
                vec![Route::Single(3)],
                false,
                SessionState::default(),
                Footing {
                    join_txn: true,
                    settle: false,
                },
            ),
            // A shard already open stays open.
            (
                Ending::Flush,
                0,
                vec![],
                false,
                flush_open_on(2),
                Footing {
                    join_txn: false,
                    settle: false,
                },
            ),
        ];
        for (ending, executes, needed, binds, state, want) in cases {
            assert_eq!(
                settle(ending, executes, &needed, binds, &state),
                want,
                "{ending:?} {executes} {needed:?} {binds}"
            );
        }
    }

    #[test]
    fn an_error_mid_pipeline_skips_to_the_sync() {
        use PipelineFinish::*;
        // (last unit's end, ending, own block, finish)
        let cases = [
            (UnitEnd::Ran, Ending::Flush, true, StayOpen),
            (
                UnitEnd::Failed,
                Ending::Flush,
                true,
                RollBack {
                    skip_until_sync: true,
                },
            ),
            (
                UnitEnd::Answered,
                Ending::Flush,
                true,
                RollBack {
                    skip_until_sync: false,
                },
            ),
            (
                UnitEnd::Ran,
                Ending::Sync,
                true,
                AtSync {
                    end_block: Some(true),
                    ready_for_query: true,
                },
            ),
            (
                UnitEnd::Failed,
                Ending::Sync,
                true,
                AtSync {
                    end_block: Some(false),
                    ready_for_query: true,
                },
            ),
            (
                UnitEnd::Answered,
                Ending::Sync,
                true,
                AtSync {
                    end_block: Some(false),
                    ready_for_query: false,
                },
            ),
            (
                UnitEnd::Ran,
                Ending::Sync,
                false,
                AtSync {
                    end_block: None,
                    ready_for_query: true,
                },
            ),
            (
                UnitEnd::Failed,
                Ending::Sync,
                false,
                AtSync {
                    end_block: None,
                    ready_for_query: true,
                },
            ),
        ];
        for (end, ending, own, want) in cases {
            assert_eq!(
                finish_pipeline(end, ending, own),
                want,
                "{end:?} {ending:?} {own}"
            );
        }
        // A held portal executed by a later request: the proxy answers it.
        let mut state = SessionState::default();
        let later = [execute("c", 10)];
        assert_ne!(
            unit_outcome(&later, &[None], &mut UnitPortals::default(), &state),
            Err("held".into())
        );
        state.cursors.declare(
            "c",
            Place::Proxy(Materialized::new(
                crate::wire::backend::no_data(),
                Vec::new(),
            )),
        );
        assert_eq!(
            unit_outcome(&later, &[None], &mut UnitPortals::default(), &state),
            Err("held".into())
        );
    }
}

#[cfg(test)]
mod rules_tests {
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
