//! The planner: where the statements of one request run, decided from their routes and the
//! session's state alone (pure, no socket, no server), the same way for a simple Query and an
//! extended-protocol batch. Refusals are typed ([`Refusal`]).

pub mod batch;
pub mod extended;
pub mod held;
pub mod messages;
pub mod plan;
pub mod request;
pub mod rules;
pub mod served;
pub mod units;

pub use plan::{Plan, Planned};
pub use request::{Ending, GivenKeys, Messages, Request, Statement};
pub use rules::{plan, Context};

use std::borrow::Borrow;

use crate::refusal::Refusal;
use crate::router::{Route, StatementFacts, StatementKind};
use crate::session::SessionState;
use crate::telemetry::RouteKind;
use crate::txn::control::ControlStatement;

/// Where a request runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Single(u32),
    Scatter(Vec<u32>),
    /// Every shard changes alike; one answer (see `exec::broadcast`).
    Broadcast(Vec<u32>),
}

impl Target {
    /// The `route` label of the query metrics.
    pub fn route_kind(&self) -> RouteKind {
        match self {
            Target::Single(_) => RouteKind::Single,
            Target::Scatter(_) => RouteKind::Scatter,
            Target::Broadcast(_) => RouteKind::Broadcast,
        }
    }
}

/// Combines the routes of the statements of one request into where it runs. `fallback` gives
/// the shard for a request any shard can answer, when neither the statements, the Flush-opened
/// transaction nor the block name one (called only then: it may look at the topology).
pub fn combine<F: Borrow<StatementFacts>>(
    routes: &[Route],
    facts: &[F],
    state: &SessionState,
    fallback: impl FnOnce() -> u32,
) -> Result<Target, Refusal> {
    let mut single: Option<u32> = None;
    let mut scatter: Option<&Vec<u32>> = None;
    for route in routes {
        match route {
            Route::Refuse(message) => return Err(Refusal::of_route(message.as_str())),
            Route::SplitInsert(plan) => {
                return Err(Refusal::unsupported(format!(
                    "a multi-row INSERT whose rows belong to {} shards is split only when sent on its own as a simple query; with prepared statements (extended protocol) or together with other statements, insert each shard's rows in a statement of their own",
                    plan.len()
                )))
            }
            Route::Broadcast(v) => {
                if routes.len() > 1 {
                    return Err(Refusal::unsupported(
                        "a statement that changes every shard (DDL, a reference table write, VACUUM) must be sent on its own, not together with other statements",
                    ));
                }
                return Ok(Target::Broadcast(v.clone()));
            }
            Route::Single(s) => {
                if let Some(prev) = single.filter(|p| p != s) {
                    return Err(Refusal::unsupported(format!(
                        "statements sent together in one request need shards {prev} and {s}: send them separately (inside BEGIN … COMMIT they still commit together)"
                    )));
                }
                single = Some(*s);
            }
            Route::Any => {}
            Route::Scatter(v) => {
                if routes.len() > 1 {
                    return Err(Refusal::unsupported(
                        "a statement that runs on several shards must be sent on its own, not together with other statements",
                    ));
                }
                scatter = Some(v);
            }
        }
    }
    if let Some(shards) = scatter {
        if state.open_batch_shard.is_some() {
            return Err(Refusal::unsupported(
                "a statement without a shard key cannot join an implicit transaction that a Flush left open on one shard: send Sync first",
            ));
        }
        return Ok(Target::Scatter(shards.clone()));
    }
    // Savepoints and SET LOCAL belong to every shard of a block that spans several.
    let participants = state.txn.as_ref().map(|t| t.participants.as_slice());
    let participants = participants.unwrap_or_default();
    if participants.len() > 1
        && facts.iter().any(|f| {
            matches!(
                f.borrow().kind,
                StatementKind::Savepoint | StatementKind::SetLocal
            )
        })
    {
        return Ok(Target::Scatter(participants.to_vec()));
    }
    let bound = state.open_batch_shard;
    let shard = single
        .or(bound)
        .or_else(|| participants.first().copied())
        .unwrap_or_else(fallback);
    if let Some(b) = bound.filter(|b| *b != shard) {
        return Err(Refusal::unsupported(format!(
            "an implicit transaction that a Flush left open runs on shard {b} and the statement needs shard {shard}: send Sync first, or use BEGIN … COMMIT, which may span shards"
        )));
    }
    Ok(Target::Single(shard))
}

/// A statement as transaction control sees it (`sql` tells ROLLBACK TO from other savepoint
/// statements).
pub fn control_statement(sql: &str, f: &StatementFacts) -> ControlStatement {
    match &f.kind {
        StatementKind::Begin => ControlStatement::Begin,
        StatementKind::Commit => ControlStatement::Commit,
        StatementKind::Rollback => ControlStatement::Rollback,
        StatementKind::Savepoint => match crate::txn::statement::savepoint_op(sql) {
            Some(crate::txn::statement::SavepointOp::RollbackTo(_)) => ControlStatement::RollbackTo,
            _ => ControlStatement::Savepoint,
        },
        StatementKind::Set { .. } | StatementKind::SetLocal => ControlStatement::Setting,
        _ => ControlStatement::Other,
    }
}

/// Statements that end or structure a block.
pub fn is_block_control(f: &StatementFacts) -> bool {
    matches!(
        f.kind,
        StatementKind::Begin
            | StatementKind::Commit
            | StatementKind::Rollback
            | StatementKind::Savepoint
    )
}

/// A string that carries COMMIT, ROLLBACK or a savepoint statement together with statements for
/// a shard the open block has not reached would end the block on that shard alone, leaving the
/// others open or lost: refused, as for a block that already spans shards.
pub fn block_control_elsewhere<F: Borrow<StatementFacts>>(
    facts: &[F],
    target: &Target,
    state: &SessionState,
) -> Option<Refusal> {
    if facts.len() < 2 || !facts.iter().any(|f| is_block_control(f.borrow())) {
        return None;
    }
    let txn = state.txn.as_ref()?;
    let reaches_others = match target {
        Target::Single(shard) => txn.participants.iter().any(|p| p != shard),
        _ => !txn.participants.is_empty(),
    };
    reaches_others.then(|| {
        Refusal::unsupported(
            "this request would end a transaction block on some of its shards only: send COMMIT, ROLLBACK and savepoint statements on their own, not together with statements for another shard",
        )
    })
}

/// Statements the proxy would have to split further: refused until it can.
pub fn needs_splitting<F: Borrow<StatementFacts>>(facts: &[F]) -> Option<Refusal> {
    (facts.len() > 1 && facts.iter().any(|f| f.borrow().missing_key_rows.is_some())).then(|| {
        Refusal::unsupported(
            "an INSERT that omits the shard key must be sent on its own so pgshard can give it keys",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardedTableConfig;
    use crate::router::literals::LiteralParams;
    use crate::router::{Router, ShardMap, Strategy};
    use crate::txn::Txn;

    const FALLBACK: u32 = 99;

    struct World {
        router: Router,
        map: ShardMap,
    }

    impl World {
        fn new() -> World {
            World {
                router: Router::new(
                    &[ShardedTableConfig {
                        name: "users".into(),
                        key: "user_id".into(),
                        key_type: None,
                    }],
                    100,
                ),
                map: ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3]),
            }
        }

        /// The facts and routes of a simple Query.
        fn request(&self, sql: &str) -> (Vec<StatementFacts>, Vec<Route>) {
            let (facts, literals) = self.router.analyze_simple(sql);
            let routes = facts
                .iter()
                .map(|f| {
                    self.router
                        .route(f, &LiteralParams(&literals), &self.map, 1)
                })
                .collect();
            (facts.to_vec(), routes)
        }

        fn plan(&self, sql: &str, state: &SessionState) -> Result<Target, Refusal> {
            let (facts, routes) = self.request(sql);
            combine(&routes, &facts, state, || FALLBACK)
        }

        /// Two keys of `users` that live on different shards, and their shards.
        fn keys_on_two_shards(&self) -> [(i64, u32); 2] {
            let shard = |k: i64| match self
                .request(&format!("SELECT * FROM users WHERE user_id = {k}"))
                .1[..]
            {
                [Route::Single(s)] => s,
                ref other => panic!("key {k} routed to {other:?}"),
            };
            let first = (1, shard(1));
            let second = (2..1000)
                .map(|k| (k, shard(k)))
                .find(|(_, s)| *s != first.1)
                .expect("a key on another shard");
            [first, second]
        }
    }

    /// A session inside `BEGIN` that has joined `participants` (shared with the rules' tests).
    pub(super) fn in_block(participants: &[u32]) -> SessionState {
        let mut state = SessionState {
            txn: Some(Txn::explicit("BEGIN")),
            ..SessionState::default()
        };
        for &p in participants {
            state.joined_on(p);
        }
        state
    }

    /// The block of a test session as transaction control sees it (none refused or failed).
    pub(super) fn block_of(state: &SessionState) -> crate::txn::control::BlockView {
        crate::txn::control::BlockView {
            open: state.txn.is_some(),
            bound: state
                .txn
                .as_ref()
                .is_some_and(|t| !t.participants.is_empty()),
            distributed: state.txn.as_ref().is_some_and(|t| t.distributed()),
            ..Default::default()
        }
    }

    /// A session whose implicit transaction a Flush left open on `shard`.
    pub(super) fn flush_open_on(shard: u32) -> SessionState {
        SessionState {
            open_batch_shard: Some(shard),
            ..SessionState::default()
        }
    }

    #[test]
    fn requests_combine_into_one_target_or_a_refusal() {
        let w = World::new();
        let [(a, sa), (b, sb)] = w.keys_on_two_shards();
        let key = |k: i64| format!("SELECT * FROM users WHERE user_id = {k}");
        // (request, session, where it runs, or the start of the refusal's message)
        let cases: Vec<(String, SessionState, Result<Target, &str>)> = vec![
            ("SELECT 1".into(), SessionState::default(), Ok(Target::Single(FALLBACK))),
            (key(a), SessionState::default(), Ok(Target::Single(sa))),
            (
                format!("{}; {}", key(a), key(a)),
                SessionState::default(),
                Ok(Target::Single(sa)),
            ),
            (
                format!("{}; {}", key(a), key(b)),
                SessionState::default(),
                Err("statements sent together in one request need shards"),
            ),
            (
                "SELECT * FROM users".into(),
                SessionState::default(),
                Ok(Target::Scatter(vec![1, 2, 3])),
            ),
            (
                "SELECT * FROM users; SELECT 1".into(),
                SessionState::default(),
                Err("a statement that runs on several shards must be sent on its own"),
            ),
            (
                "CREATE TABLE t (a int)".into(),
                SessionState::default(),
                Ok(Target::Single(1)),
            ),
            (
                "ALTER TABLE users ADD COLUMN c int".into(),
                SessionState::default(),
                Ok(Target::Broadcast(vec![1, 2, 3])),
            ),
            (
                "ALTER TABLE users ADD COLUMN c int; SELECT 1".into(),
                SessionState::default(),
                Err("a statement that changes every shard"),
            ),
            (
                "INSERT INTO users (user_id, name) VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e'), (6, 'f')".into(),
                SessionState::default(),
                Err("a multi-row INSERT whose rows belong to"),
            ),
            ("SELECT 1".into(), in_block(&[sb]), Ok(Target::Single(sb))),
            (
                "SAVEPOINT s".into(),
                in_block(&[sa, sb]),
                Ok(Target::Scatter(vec![sa, sb])),
            ),
            ("SAVEPOINT s".into(), in_block(&[sb]), Ok(Target::Single(sb))),
            ("SELECT 1".into(), flush_open_on(sb), Ok(Target::Single(sb))),
            (key(b), flush_open_on(sb), Ok(Target::Single(sb))),
            (
                key(a),
                flush_open_on(sb),
                Err("an implicit transaction that a Flush left open runs on shard"),
            ),
            (
                "SELECT * FROM users".into(),
                flush_open_on(sb),
                Err("a statement without a shard key cannot join"),
            ),
        ];
        for (sql, state, expected) in cases {
            let got = w.plan(&sql, &state);
            match (&got, &expected) {
                (Ok(t), Ok(e)) => assert_eq!(t, e, "{sql}"),
                (Err(r), Err(prefix)) => {
                    assert_eq!(r.sqlstate(), "0A000", "{sql}");
                    assert!(r.to_string().starts_with(prefix), "{sql}: {r}");
                }
                _ => panic!("{sql}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn block_control_with_statements_for_other_shards_is_refused() {
        let w = World::new();
        let [(a, sa), (b, sb)] = w.keys_on_two_shards();
        let write = |k: i64| format!("UPDATE users SET name = 'x' WHERE user_id = {k}");
        // (request, shards the block reached, refused)
        let cases = [
            (format!("{}; COMMIT", write(a)), vec![sa], false),
            (format!("{}; COMMIT", write(b)), vec![sa], true),
            (format!("{}; ROLLBACK", write(a)), vec![sa, sb], true),
            (format!("{}; {}", write(b), write(b)), vec![sa], false),
            ("COMMIT".to_string(), vec![sa, sb], false),
            (format!("{}; COMMIT", write(b)), vec![], false),
        ];
        for (sql, participants, refused) in cases {
            let state = in_block(&participants);
            let (facts, routes) = w.request(&sql);
            let target = combine(&routes, &facts, &state, || FALLBACK).expect(&sql);
            let got = block_control_elsewhere(&facts, &target, &state);
            assert_eq!(got.is_some(), refused, "{sql} {participants:?}");
        }
    }

    #[test]
    fn inserts_that_need_keys_go_alone() {
        let w = World::new();
        // (request, refused)
        let cases = [
            ("INSERT INTO users (name) VALUES ('a')", false),
            ("INSERT INTO users (name) VALUES ('a'); SELECT 1", true),
            (
                "INSERT INTO users (user_id, name) VALUES (1, 'a'); SELECT 1",
                false,
            ),
        ];
        for (sql, refused) in cases {
            let (facts, _) = w.request(sql);
            assert_eq!(needs_splitting(&facts).is_some(), refused, "{sql}");
        }
    }
}
