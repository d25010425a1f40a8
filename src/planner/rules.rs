//! `plan`: one request's statements, the session's state and the shard map in, what exec must do
//! out, or a typed refusal. The one set of routing rules both protocols use; pure (what needs
//! I/O — the catalog's owner of an index, reserved generated keys — comes in as data).

use smallvec::SmallVec;

use crate::config::{PoolMode, ShardedTableConfig};
use crate::refusal::Refusal;
use crate::router::{Route, Router, ShardMap, StatementFacts, StatementKind};
use crate::session::cursors::Effect;
use crate::session::SessionState;

use super::plan::{Plan, Planned};
use super::request::{Ending, GivenKeys, Request, Statement};
use super::{block_control_elsewhere, combine, is_block_control, needs_splitting};

/// What the planner reads besides the request and the session: the proxy's configuration and
/// the shard map of this request.
pub struct Context<'a> {
    pub router: &'a Router,
    pub map: &'a ShardMap,
    /// Where statements on no sharded table go when nothing else decides (DDL, a DECLARE).
    pub first_shard: u32,
    pub pool_mode: PoolMode,
    pub sharded_tables: &'a [ShardedTableConfig],
    /// The user may run statements that reach several shards (`[[users]] allow_scatter`).
    pub allow_scatter: bool,
    /// The shard for a request any shard can answer (called only then: it may look at the
    /// topology).
    pub fallback: &'a dyn Fn() -> u32,
}

/// Plans a request, a simple Query or an extended batch: the one entry point both protocols
/// use. A lone INSERT that omits its shard key plans as [`Plan::NeedsKeys`] until the frontend
/// reserved its keys ([`Statement::keys`]).
pub fn plan(request: &Request, state: &SessionState, cx: &Context) -> Result<Planned, Refusal> {
    if let Some(messages) = &request.messages {
        return super::extended::plan_messages(request, messages, state, cx);
    }
    let facts: Vec<&StatementFacts> = request.statements.iter().map(|s| s.facts).collect();
    let mut planned = Planned::default();
    if facts.is_empty() {
        return Ok(planned);
    }
    if let Some(local) = facts.iter().find_map(|f| f.local.clone()) {
        if facts.len() > 1 {
            return in_turn(request, Refusal::unsupported(
                "pgshard's own commands (SET/SHOW pgshard.*, pgshard.next_id()) must be sent on their own",
            ));
        }
        if state.txn.as_ref().is_some_and(|t| t.refused) {
            return Err(Refusal::Aborted);
        }
        planned.plan = Plan::Local(local);
        return Ok(planned);
    }
    if facts.len() > 1
        && state.txn.as_ref().is_some_and(|t| t.distributed())
        && facts.iter().any(|f| is_block_control(f))
    {
        return in_turn(request, Refusal::unsupported(
            "this transaction spans several shards: send BEGIN, COMMIT, ROLLBACK and savepoint statements on their own, not together with other statements",
        ));
    }
    if let Some(refusal) = session_bound(facts.iter().copied(), cx.pool_mode) {
        return Err(refusal);
    }
    let mut routes: SmallVec<[Route; 2]> = SmallVec::with_capacity(facts.len());
    let mut served = false;
    let mut rewritten: SmallVec<[Option<String>; 2]> = SmallVec::with_capacity(facts.len());
    for st in &request.statements {
        let routed = statement_route(st, state, cx, st.keys.as_ref(), &planned.cursor_effects)?;
        served |= st.facts.cursor.is_some() && state.cursors.serves(st.facts, &routed.route);
        planned.cursor_effects.extend(routed.cursor);
        rewritten.push(routed.rewritten);
        routes.push(routed.route);
    }
    if served {
        if facts.len() > 1 {
            return in_turn(request, Refusal::unsupported(
                "a statement on a cursor that spans several shards (served by pgshard) must be sent on its own, not together with other statements",
            ));
        }
        planned.routes = routes;
        planned.plan = Plan::ServedCursor;
        return Ok(planned);
    }
    if facts.iter().any(|f| is_sharded_copy_in(f)) {
        if facts.len() > 1 {
            return Err(Refusal::unsupported(
                "a COPY FROM STDIN into a sharded table must be sent on its own",
            ));
        }
        planned.routes = routes;
        planned.plan = Plan::CopyIn;
        return Ok(planned);
    }
    if let Some(refusal) = needs_splitting(&facts) {
        return in_turn(request, refusal);
    }
    if let [only] = request.statements.as_slice() {
        if only.facts.missing_key_rows.is_some()
            && only.keys.is_none()
            && !hint_applies(state, only.facts)
        {
            planned.plan = Plan::NeedsKeys;
            return Ok(planned);
        }
    }
    planned.rewritten = rewritten;
    if !cx.allow_scatter {
        let owned: Vec<StatementFacts> = facts.iter().map(|f| (*f).clone()).collect();
        if let Some(message) = crate::router::scatter_guard::refuse_scatter(&routes, &owned) {
            return Err(Refusal::unsupported(message));
        }
    }
    if let [Route::SplitInsert(rows)] = routes.as_slice() {
        planned.plan = Plan::SplitInsert {
            rows: rows.clone(),
            unnest: facts[0].unnest.clone(),
        };
        planned.routes = routes;
        return Ok(planned);
    }
    if let Some(Route::Refuse(message)) = routes.iter().find(|r| matches!(r, Route::Refuse(_))) {
        return Err(Refusal::of_route(message.as_str()));
    }
    let target = match combine(&routes, &facts, state, cx.fallback) {
        Ok(target) => target,
        Err(refusal) => return in_turn(request, refusal),
    };
    if let Some(refusal) = block_control_elsewhere(&facts, &target, state) {
        return in_turn(request, refusal);
    }
    planned.plan = match target {
        super::Target::Scatter(shards)
            if matches!(
                facts.as_slice(),
                [StatementFacts {
                    kind: StatementKind::Copy { .. },
                    ..
                }]
            ) =>
        {
            Plan::CopyOut(shards)
        }
        target => Plan::Run(target),
    };
    planned.routes = routes;
    Ok(planned)
}

/// A request of several statements that cannot run together: a simple Query's run in turn
/// ([`Plan::InTurn`]); an extended batch's are refused with `refusal`.
fn in_turn(request: &Request, refusal: Refusal) -> Result<Planned, Refusal> {
    if request.ending != Ending::Query || request.statements.len() < 2 {
        return Err(refusal);
    }
    Ok(Planned {
        plan: Plan::InTurn,
        ..Planned::default()
    })
}

/// Where one statement runs, as far as it alone decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub route: Route,
    /// The text to send instead (an INSERT given generated keys).
    pub rewritten: Option<String>,
    /// What it changes among the open cursors.
    pub cursor: Option<Effect>,
}

/// The route of one statement: the lookup's when the frontend made one, else the generated
/// keys' for an INSERT that omits its shard key, else the router's from its parameters; a cursor
/// statement then goes where its cursor lives (`pending`: cursor changes of the request's
/// earlier statements). A Bind of the extended protocol is routed with this alone.
pub fn statement_route(
    st: &Statement,
    state: &SessionState,
    cx: &Context,
    keys: Option<&GivenKeys>,
    pending: &[Effect],
) -> Result<Routed, Refusal> {
    let (mut route, rewritten) = match (&st.looked_up, keys) {
        (Some(route), _) => (route.clone(), None),
        (None, Some(keys)) if st.facts.missing_key_rows.is_some() => {
            let key = st.facts.shard_key.as_ref().map(|(_, k)| k.as_str());
            if let Some((table, key)) = &st.facts.shard_key {
                let why =
                    crate::router::conflict_update_where_split(st.facts, &keys.keys, table, key);
                if let Some(why) = why {
                    return Err(Refusal::unsupported(why));
                }
            }
            let (text, route) = keyed_insert(st.sql, keys, cx.map, key, st.facts.random_uuid_keys)?;
            (route, Some(text))
        }
        (None, _) => match catalog_in_block(cx, state, st) {
            Some(shard) => (Route::Single(shard), None),
            None => (
                cx.router.route_hinted(
                    st.facts,
                    state.route_hints.current(),
                    st.params,
                    cx.map,
                    cx.first_shard,
                ),
                None,
            ),
        },
    };
    let mut cursor = None;
    if st.facts.cursor.is_some() {
        let (placed, effect) = state
            .cursors
            .place(st.facts, &route, cx.first_shard, pending);
        route = placed;
        cursor = effect;
    }
    Ok(Routed {
        route,
        rewritten,
        cursor,
    })
}

/// A catalog query of a tenant deployment inside a block that reached one shard, naming no
/// tenant in its values: that shard, whose catalogs the block has been reading (SQLAlchemy's
/// inspector looks a tenant's table up by schema name, then its constraints by the table's OID,
/// in one transaction; the OID means nothing on another shard).
fn catalog_in_block(cx: &Context, state: &SessionState, st: &Statement) -> Option<u32> {
    st.facts.catalog_params.as_ref()?;
    if state.route_hints.current().is_some() {
        return None;
    }
    let [shard] = state.txn.as_ref()?.participants.as_slice() else {
        return None;
    };
    match cx.router.tenant_asked_about(st.facts, st.params, cx.map) {
        Some(_) => None,
        None => Some(*shard),
    }
}

/// True when a Bind of `facts` needs generated keys reserved before it can be routed: an INSERT
/// that omits its shard key, unless a lookup (`looked_up`) or a routing hint places it.
pub fn bind_needs_keys(state: &SessionState, facts: &StatementFacts, looked_up: bool) -> bool {
    facts.missing_key_rows.is_some() && !looked_up && !hint_applies(state, facts)
}

/// True when a routing hint (the statement's comment, or the session's `SET pgshard.shard|key`)
/// applies to `facts`: paths that place rows by key themselves (generated keys, COPY) then leave
/// the statement to the router, which refuses the hint rather than ignore it.
pub fn hint_applies(state: &SessionState, facts: &StatementFacts) -> bool {
    facts.hint.is_some()
        || (state.route_hints.current().is_some()
            && crate::router::hint::session_hint_applies(facts))
}

/// The refusal of statements whose session state pgshard cannot keep under transaction pooling
/// (LISTEN, a SET it cannot replay).
pub fn session_bound<'a>(
    facts: impl IntoIterator<Item = &'a StatementFacts>,
    pool_mode: PoolMode,
) -> Option<Refusal> {
    if pool_mode == PoolMode::Session {
        return None;
    }
    let feature = facts.into_iter().find_map(|f| f.session_bound.as_ref())?;
    Some(Refusal::Unsupported {
        message: format!(
            "{feature} needs a server connection for the whole session, but pgshard runs in transaction pooling mode"
        ),
        hint: Some(
            "set pool.mode = \"session\" in the pgshard config, or avoid session-level state".into(),
        ),
    })
}

/// An INSERT that omits the shard key, given generated keys: its new text and route (rows whose
/// keys land on several shards are split like any multi-row INSERT). With `in_place`, the
/// INSERT names the key and gives it as `gen_random_uuid()` in every row: the keys replace
/// those calls.
pub fn keyed_insert(
    sql: &str,
    keys: &GivenKeys,
    map: &ShardMap,
    key: Option<&str>,
    in_place: bool,
) -> Result<(String, Route), Refusal> {
    let key = key.ok_or_else(|| {
        Refusal::unsupported("an INSERT that omits the shard key into a table that is not sharded")
    })?;
    let rows = crate::router::split_insert::rows_by_shard_key(&keys.keys, map);
    let literals: Vec<String> = keys.keys.iter().map(|k| k.sql_literal()).collect();
    let rewritten = if in_place {
        crate::router::rewrite::insert_with_key_calls_replaced(sql, key, &literals)
    } else {
        crate::router::rewrite::insert_with_key_literals(sql, key, &literals, keys.overriding)
    }
    .map_err(|e| Refusal::unsupported(e.to_string()))?;
    match rows.as_slice() {
        [one] => Ok((rewritten, Route::Single(one.shard))),
        _ => Ok((rewritten, Route::SplitInsert(rows))),
    }
}

/// True for a `COPY … FROM STDIN` into a sharded table, whose rows the proxy splits by key.
pub fn is_sharded_copy_in(f: &StatementFacts) -> bool {
    f.sharded && f.kind == (StatementKind::Copy { from_stdin: true })
}

/// The cursor changes of a plan, for the session to record once it is planned.
pub fn apply_cursor_effects(state: &mut SessionState, effects: &[Effect]) {
    for effect in effects {
        state.cursors.apply(effect);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::messages::Msg;
    use crate::planner::tests::{flush_open_on, in_block};
    use crate::planner::{Ending, Messages, Statement, Target};
    use crate::router::literals::LiteralParams;
    use crate::router::params::BindParams;
    use crate::router::Strategy;
    use bytes::Bytes;

    const FALLBACK: u32 = 99;
    const INT8: u32 = 20;

    /// Parse, Bind (of `values`, all text or all binary) and Execute of `statement`: how a
    /// driver sends one statement.
    fn batch_of(
        statement: &std::sync::Arc<crate::session::Prepared>,
        values: Vec<Option<Bytes>>,
        binary: bool,
    ) -> Vec<Msg> {
        use crate::wire::frontend::{Bind, Execute, Parse};
        vec![
            Msg::Parse(
                Parse {
                    name: String::new(),
                    query: statement.sql.clone(),
                    param_types: statement.param_types.clone(),
                },
                statement.clone(),
            ),
            Msg::Bind {
                bind: Bind {
                    portal: String::new(),
                    statement: String::new(),
                    param_formats: vec![i16::from(binary)],
                    params: values,
                    result_formats: Vec::new(),
                },
                statement: statement.clone(),
                rewritten: None,
            },
            Msg::Execute(Execute {
                portal: String::new(),
                max_rows: 0,
            }),
        ]
    }

    struct World {
        router: Router,
        map: ShardMap,
        tables: Vec<ShardedTableConfig>,
    }

    /// A statement's parameters as one protocol sends them.
    #[derive(Clone, Copy, Debug)]
    enum Via {
        /// A simple Query with the values written in.
        Simple,
        /// Parse/Bind/Execute, values in text format.
        Text,
        /// Parse/Bind/Execute, values in binary format.
        Binary,
    }

    /// A tenant deployment's catalog query: where the tenant its value names lives; else, inside a
    /// block on one shard, there (the OIDs the block's earlier catalog reads found are that
    /// shard's); else where catalogs are read.
    #[test]
    fn catalog_queries_follow_the_tenant_named_then_the_block() {
        let tenants = [crate::config::schemas::ShardedSchemaConfig {
            name: "tenant_a".into(),
            shard: 3,
        }];
        let w = World {
            router: Router::new(&[], 100).with_schemas(&tenants),
            ..World::new()
        };
        let fallback = || FALLBACK;
        let cx = w.cx(true, &fallback);
        let route = |sql: &str, state: &SessionState| {
            let (facts, literals) = w.router.analyze_simple(sql);
            let params = LiteralParams(&literals);
            let st = Statement {
                sql,
                facts: &facts[0],
                params: &params,
                looked_up: None,
                keys: None,
            };
            statement_route(&st, state, &cx, None, &[])
                .expect("routed")
                .route
        };
        let by_oid = "SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid IN (16510)";
        let by_name = "SELECT oid FROM pg_class WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'tenant_a')";
        let idle = SessionState::default();
        let cases = [
            (by_oid, &idle, Route::Single(1)),
            (by_oid, &in_block(&[2]), Route::Single(2)),
            (by_oid, &in_block(&[2, 3]), Route::Single(1)),
            (by_name, &idle, Route::Single(3)),
            (by_name, &in_block(&[2]), Route::Single(3)),
            // Not a catalog query: an unsharded table stays on the first shard.
            (
                "SELECT count(*) FROM users",
                &in_block(&[2]),
                Route::Single(1),
            ),
        ];
        for (sql, state, want) in cases {
            assert_eq!(route(sql, state), want, "{sql}");
        }
    }

    #[test]
    fn a_bind_omitting_its_key_needs_keys_unless_placed_otherwise() {
        let router = crate::planner::messages::build::router();
        let insert = &router.analyze_prepared("INSERT INTO users (name) VALUES ($1)")[0];
        let keyed =
            &router.analyze_prepared("INSERT INTO users (user_id, name) VALUES ($1, $2)")[0];
        let hinted = &router
            .analyze_prepared("/* pgshard: shard=1 */ INSERT INTO users (name) VALUES ($1)")[0];
        assert!(hinted.hint.is_some());
        let idle = SessionState::default();
        // (facts, a lookup placed it, needs keys)
        let cases = [
            (insert, false, true),
            (insert, true, false),
            (keyed, false, false),
            (hinted, false, false),
        ];
        for (facts, looked_up, want) in cases {
            assert_eq!(bind_needs_keys(&idle, facts, looked_up), want, "{facts:?}");
        }
    }

    impl World {
        fn new() -> World {
            let tables = vec![ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            }];
            World {
                router: Router::new(&tables, 100),
                map: ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3]),
                tables,
            }
        }

        fn cx<'a>(&'a self, allow_scatter: bool, fallback: &'a dyn Fn() -> u32) -> Context<'a> {
            Context {
                router: &self.router,
                map: &self.map,
                first_shard: 1,
                pool_mode: PoolMode::Transaction,
                sharded_tables: &self.tables,
                allow_scatter,
                fallback,
            }
        }

        /// Plans `template` (`$n` for each of `values`) sent `via` one protocol, ended by
        /// `ending`.
        fn plan_via(
            &self,
            template: &str,
            values: &[i64],
            via: Via,
            ending: Ending,
            state: &SessionState,
        ) -> Result<Planned, Refusal> {
            let fallback = || FALLBACK;
            let cx = self.cx(true, &fallback);
            match via {
                Via::Simple => {
                    let mut sql = template.to_string();
                    for (i, v) in values.iter().enumerate().rev() {
                        sql = sql.replace(&format!("${}", i + 1), &v.to_string());
                    }
                    let (facts, literals) = self.router.analyze_simple(&sql);
                    let params = LiteralParams(&literals);
                    let request = Request {
                        statements: facts
                            .iter()
                            .map(|f| Statement {
                                sql: &sql,
                                facts: f,
                                params: &params,
                                looked_up: None,
                                keys: None,
                            })
                            .collect(),
                        ending,
                        messages: None,
                    };
                    plan(&request, state, &cx)
                }
                Via::Text | Via::Binary => {
                    let binary = matches!(via, Via::Binary);
                    let encoded: Vec<Option<Bytes>> = values
                        .iter()
                        .map(|v| {
                            Some(if binary {
                                Bytes::copy_from_slice(&v.to_be_bytes())
                            } else {
                                Bytes::from(v.to_string())
                            })
                        })
                        .collect();
                    let statement = std::sync::Arc::new(crate::session::Prepared {
                        sql: template.into(),
                        param_types: vec![INT8; values.len()],
                        facts: self.router.analyze_prepared(template),
                        server_name: String::new(),
                    });
                    let msgs = batch_of(&statement, encoded, binary);
                    let Msg::Bind { bind, .. } = &msgs[1] else {
                        unreachable!("the batch's second message is its Bind")
                    };
                    let params = BindParams {
                        values: &bind.params,
                        formats: &bind.param_formats,
                        types: &statement.param_types,
                    };
                    // A Bind of a statement without facts (empty) or of pgshard's own command
                    // is answered without routing, as the frontend decodes it.
                    let routed = statement.facts.first().filter(|f| f.local.is_none());
                    let bind_route = statement.facts.is_empty().then_some(Route::Any);
                    let routes = [Some(Route::Any), bind_route, None];
                    let binds: Vec<usize> = routed.iter().map(|_| 1).collect();
                    let request = Request {
                        statements: routed
                            .iter()
                            .map(|f| Statement {
                                sql: template,
                                facts: f,
                                params: &params,
                                looked_up: None,
                                keys: None,
                            })
                            .collect(),
                        ending,
                        messages: Some(Messages {
                            msgs: &msgs,
                            routes: &routes,
                            binds: &binds,
                            failed_before: false,
                            claims: false,
                            block: crate::planner::tests::block_of(state),
                        }),
                    };
                    plan(&request, state, &cx)
                }
            }
        }

        /// A key of `users` on each of two different shards.
        fn keys_on_two_shards(&self) -> [(i64, u32); 2] {
            let shard = |k: i64| match self.plan_via(
                "SELECT * FROM users WHERE user_id = $1",
                &[k],
                Via::Simple,
                Ending::Query,
                &SessionState::default(),
            ) {
                Ok(Planned {
                    plan: Plan::Run(Target::Single(s)),
                    ..
                }) => s,
                other => panic!("key {k} planned as {other:?}"),
            };
            let first = (1, shard(1));
            let second = (2..1000)
                .map(|k| (k, shard(k)))
                .find(|(_, s)| *s != first.1)
                .expect("a key on another shard");
            [first, second]
        }
    }

    /// What a plan came to, for comparing: the plan, or the refusal's SQLSTATE and message.
    fn outcome(p: Result<Planned, Refusal>) -> Result<Plan, (String, String)> {
        p.map(|p| p.plan)
            .map_err(|r| (r.sqlstate().to_string(), r.to_string()))
    }

    /// True when a statement sent alone in a batch (`extended`) takes the path it takes in a
    /// simple Query (`simple`): the same plan, or the batch's form of it — its rows split unit
    /// by unit, pgshard's own commands answered for the batch, a COPY TO run on every shard.
    fn same_path(
        simple: &Result<Plan, (String, String)>,
        extended: &Result<Plan, (String, String)>,
    ) -> bool {
        match (simple, extended) {
            (Ok(Plan::SplitInsert { unnest: None, .. }), Ok(Plan::InTurn))
            | (Ok(Plan::Local(_)), Ok(Plan::LocalBatch)) => true,
            (Ok(Plan::CopyOut(a)), Ok(Plan::Run(Target::Scatter(b)))) => a == b,
            _ => simple == extended,
        }
    }

    /// (statement, its values, how the request ends, session, the plan, or the start of the
    /// refusal's message)
    type Case<'a> = (
        &'a str,
        Vec<i64>,
        Ending,
        SessionState,
        Result<Plan, &'a str>,
    );

    #[test]
    fn both_protocols_plan_alike() {
        let w = World::new();
        let [(a, sa), (b, sb)] = w.keys_on_two_shards();
        let keyed = "SELECT * FROM users WHERE user_id = $1";
        let split = "INSERT INTO users (user_id, name) VALUES ($1, 'x'), ($2, 'y')";
        // (statement, its values, how the request ends, session, the plan, or the start of the
        // refusal's message)
        let cases: Vec<Case> = vec![
            (
                keyed,
                vec![a],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Single(sa))),
            ),
            (
                keyed,
                vec![b],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Single(sb))),
            ),
            (
                "SELECT * FROM users WHERE user_id > $1",
                vec![a],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Scatter(vec![1, 2, 3]))),
            ),
            (
                "UPDATE users SET name = 'x' WHERE user_id > $1",
                vec![a],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Scatter(vec![1, 2, 3]))),
            ),
            (
                "ALTER TABLE users ADD COLUMN c int",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Broadcast(vec![1, 2, 3]))),
            ),
            (
                split,
                vec![a, b],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::SplitInsert {
                    rows: crate::router::split_insert::rows_by_shard(&[a, b], &w.map),
                    unnest: None,
                }),
            ),
            (
                split,
                vec![a, a],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Single(sa))),
            ),
            (
                "SELECT 1",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Run(Target::Single(FALLBACK))),
            ),
            // In a block: keyless statements go where the block is; keyed ones where their key is.
            (
                "SELECT 1",
                vec![],
                Ending::Sync,
                in_block(&[sb]),
                Ok(Plan::Run(Target::Single(sb))),
            ),
            (
                keyed,
                vec![a],
                Ending::Sync,
                in_block(&[sb]),
                Ok(Plan::Run(Target::Single(sa))),
            ),
            (
                "SELECT * FROM users WHERE user_id > $1",
                vec![a],
                Ending::Sync,
                in_block(&[sb]),
                Ok(Plan::Run(Target::Scatter(vec![1, 2, 3]))),
            ),
            // A Flush left an implicit transaction open on a shard.
            (
                "SELECT 1",
                vec![],
                Ending::Flush,
                flush_open_on(sb),
                Ok(Plan::Run(Target::Single(sb))),
            ),
            (
                keyed,
                vec![b],
                Ending::Flush,
                flush_open_on(sb),
                Ok(Plan::Run(Target::Single(sb))),
            ),
            (
                keyed,
                vec![a],
                Ending::Flush,
                flush_open_on(sb),
                Err("an implicit transaction that a Flush left open runs on shard"),
            ),
            (
                "SELECT * FROM users WHERE user_id > $1",
                vec![a],
                Ending::Flush,
                flush_open_on(sb),
                Err("a statement without a shard key cannot join"),
            ),
            (
                "SELECT pgshard.next_id()",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Local(crate::router::LocalCommand::NextId)),
            ),
            (
                "COPY users FROM STDIN",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::CopyIn),
            ),
            (
                "COPY users TO STDOUT",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::CopyOut(vec![1, 2, 3])),
            ),
            (
                "INSERT INTO users (name) VALUES ('a')",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::NeedsKeys),
            ),
            (
                "LISTEN jobs",
                vec![],
                Ending::Sync,
                SessionState::default(),
                Ok(Plan::Local(crate::router::LocalCommand::Listen {
                    channel: "jobs".into(),
                })),
            ),
            (
                "DECLARE c CURSOR FOR SELECT * FROM users WHERE user_id > $1",
                vec![a],
                Ending::Sync,
                in_block(&[]),
                Ok(Plan::ServedCursor),
            ),
            (
                "DECLARE c CURSOR FOR SELECT * FROM users WHERE user_id = $1",
                vec![a],
                Ending::Sync,
                in_block(&[]),
                Ok(Plan::Run(Target::Single(sa))),
            ),
        ];
        for (sql, values, ending, state, expected) in cases {
            let simple = outcome(w.plan_via(sql, &values, Via::Simple, Ending::Query, &state));
            for via in [Via::Text, Via::Binary] {
                let extended = outcome(w.plan_via(sql, &values, via, ending, &state));
                // A batch leaving the shard a Flush left a transaction open on goes on unit by
                // unit: the pipeline keeps one implicit transaction across shards until Sync.
                let pipelined = ending == Ending::Flush && extended == Ok(Plan::InTurn);
                assert!(
                    pipelined || same_path(&simple, &extended),
                    "{sql} {values:?} via {via:?}: {extended:?}, simple {simple:?}"
                );
            }
            match (&simple, &expected) {
                (Ok(p), Ok(e)) => assert_eq!(p, e, "{sql} {values:?}"),
                (Err((state, message)), Err(prefix)) => {
                    assert!(state == "0A000", "{sql}: {state} {message}");
                    assert!(message.starts_with(prefix), "{sql}: {message}");
                }
                _ => panic!("{sql} {values:?}: got {simple:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn requests_of_several_statements() {
        let w = World::new();
        let [(a, sa), (b, _)] = w.keys_on_two_shards();
        let key = |k: i64| format!("SELECT * FROM users WHERE user_id = {k}");
        // (request, session, plan, or the start of the refusal's message)
        let cases: Vec<(String, SessionState, Result<Plan, &str>)> = vec![
            (
                format!("{}; {}", key(a), key(a)),
                SessionState::default(),
                Ok(Plan::Run(Target::Single(sa))),
            ),
            (
                format!("{}; {}", key(a), key(b)),
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            (
                "SELECT pgshard.next_id(); SELECT 1".into(),
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            (
                format!("{}; COMMIT", key(a)),
                in_block(&[sa, sa + 100]),
                Ok(Plan::InTurn),
            ),
            (
                "INSERT INTO users (name) VALUES ('a'); SELECT 1".into(),
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            (
                "COPY users FROM STDIN; SELECT 1".into(),
                SessionState::default(),
                Err("a COPY FROM STDIN into a sharded table must be sent on its own"),
            ),
            (
                "DECLARE c CURSOR FOR SELECT * FROM users; SELECT 1".into(),
                in_block(&[]),
                Ok(Plan::InTurn),
            ),
            (
                format!("BEGIN; UPDATE users SET name = 'x' WHERE user_id = {a}; UPDATE users SET name = 'y' WHERE user_id = {b}; COMMIT"),
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            (
                format!("SET LOCAL statement_timeout = '1s'; {}; {}", key(a), key(b)),
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            (
                format!("{}; ALTER TABLE users ADD COLUMN c int", key(a)),
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            (
                format!("{}; UPDATE users SET user_id = 5 WHERE user_id = {b}", key(a)),
                SessionState::default(),
                Err("UPDATE of shard key"),
            ),
        ];
        for (sql, state, expected) in cases {
            let got = outcome(w.plan_via(&sql, &[], Via::Simple, Ending::Query, &state));
            match (&got, &expected) {
                (Ok(p), Ok(e)) => assert_eq!(p, e, "{sql}"),
                (Err((code, message)), Err(prefix)) => {
                    assert_eq!(code, "0A000", "{sql}: {message}");
                    assert!(message.starts_with(prefix), "{sql}: {message}");
                }
                _ => panic!("{sql}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn lookups_keys_and_policy_come_in_as_data() {
        let w = World::new();
        let fallback = || FALLBACK;
        let state = SessionState::default();
        let plan_one =
            |sql: &str, cx: &Context, looked_up: Option<Route>, keys: Option<GivenKeys>| {
                let (facts, literals) = w.router.analyze_simple(sql);
                let params = LiteralParams(&literals);
                let request = Request {
                    statements: smallvec::smallvec![Statement {
                        sql,
                        facts: &facts[0],
                        params: &params,
                        looked_up,
                        keys,
                    }],
                    ending: Ending::Query,
                    messages: None,
                };
                plan(&request, &state, cx)
            };
        let cx = w.cx(true, &fallback);
        // The catalog named the index's table: its shard decides.
        let got = plan_one("DROP INDEX ix", &cx, Some(Route::Single(2)), None).map(|p| p.plan);
        assert_eq!(got, Ok(Plan::Run(Target::Single(2))));
        // Generated keys: the text gets them, the rows go where the keys live.
        let keys = GivenKeys {
            keys: vec![crate::router::ShardKey::Int(7)],
            overriding: false,
        };
        let shard = w.map.shard_for(7);
        let got = plan_one(
            "INSERT INTO users (name) VALUES ('a')",
            &cx,
            None,
            Some(keys),
        )
        .expect("planned");
        assert_eq!(got.plan, Plan::Run(Target::Single(shard)));
        assert!(got.rewritten[0].as_ref().is_some_and(|t| t.contains('7')));
        // A user who may not scatter.
        let strict = w.cx(false, &fallback);
        let got = plan_one("SELECT * FROM users", &strict, None, None);
        assert!(matches!(got, Err(Refusal::Unsupported { .. })), "{got:?}");
        let got = plan_one("SELECT * FROM users WHERE user_id = 1", &strict, None, None);
        assert!(got.is_ok(), "{got:?}");
    }

    #[test]
    fn cursor_statements_follow_their_cursor_within_a_request() {
        let w = World::new();
        let [(a, sa), _] = w.keys_on_two_shards();
        let sql = format!(
            "DECLARE c CURSOR FOR SELECT * FROM users WHERE user_id = {a}; FETCH 1 FROM c; CLOSE c; DECLARE c CURSOR FOR SELECT * FROM users WHERE user_id = {a}"
        );
        let got = w
            .plan_via(&sql, &[], Via::Simple, Ending::Query, &in_block(&[]))
            .expect("planned");
        assert_eq!(got.plan, Plan::Run(Target::Single(sa)));
        assert_eq!(got.routes[1], Route::Single(sa));
        assert_eq!(got.cursor_effects.len(), 3, "{:?}", got.cursor_effects);
        let mut state = in_block(&[]);
        apply_cursor_effects(&mut state, &got.cursor_effects);
        assert_eq!(state.cursors.shard_of("c"), Some(sa));
    }

    /// A statement prepared from `sql`, its parameters `int8`.
    fn prepared(w: &World, sql: &str, params: usize) -> std::sync::Arc<crate::session::Prepared> {
        std::sync::Arc::new(crate::session::Prepared {
            sql: sql.into(),
            param_types: vec![INT8; params],
            facts: w.router.analyze_prepared(sql),
            server_name: String::new(),
        })
    }

    /// A Bind of `statement` to `portal` with `values` in text format.
    fn bind(
        portal: &str,
        statement: &std::sync::Arc<crate::session::Prepared>,
        values: &[i64],
    ) -> Msg {
        Msg::Bind {
            bind: crate::wire::frontend::Bind {
                portal: portal.into(),
                statement: String::new(),
                param_formats: Vec::new(),
                params: values
                    .iter()
                    .map(|v| Some(Bytes::from(v.to_string())))
                    .collect(),
                result_formats: Vec::new(),
            },
            statement: statement.clone(),
            rewritten: None,
        }
    }

    fn execute(portal: &str, max_rows: i32) -> Msg {
        Msg::Execute(crate::wire::frontend::Execute {
            portal: portal.into(),
            max_rows,
        })
    }

    impl World {
        /// Plans the batch `msgs` as the frontend hands it over: every Bind routed by the
        /// planner, with `keys` reserved for the Bind at that message index.
        fn plan_batch(
            &self,
            msgs: &[Msg],
            keys: &[(usize, GivenKeys)],
            claims: bool,
            ending: Ending,
            state: &SessionState,
        ) -> Result<Planned, Refusal> {
            let fallback = || FALLBACK;
            let cx = self.cx(true, &fallback);
            let bound: Vec<(
                usize,
                &crate::wire::frontend::Bind,
                &crate::session::Prepared,
            )> = msgs
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match m {
                    Msg::Bind {
                        bind, statement, ..
                    } => Some((i, bind, statement.as_ref())),
                    _ => None,
                })
                .collect();
            let params: Vec<BindParams> = bound
                .iter()
                .map(|(_, bind, st)| BindParams {
                    values: &bind.params,
                    formats: &bind.param_formats,
                    types: &st.param_types,
                })
                .collect();
            let statements = bound
                .iter()
                .zip(&params)
                .map(|((i, _, st), params)| Statement {
                    sql: &st.sql,
                    facts: &st.facts[0],
                    params,
                    looked_up: None,
                    keys: keys.iter().find(|(at, _)| at == i).map(|(_, k)| k.clone()),
                })
                .collect();
            let routes: Vec<Option<Route>> = msgs
                .iter()
                .map(|m| match m {
                    Msg::Parse(..) | Msg::DescribeStatement(_) | Msg::CloseStatement => {
                        Some(Route::Any)
                    }
                    Msg::Bind { .. } => None,
                    _ => m
                        .portal()
                        .filter(|p| !bound.iter().any(|(_, b, _)| b.portal == *p))
                        .map(|p| super::super::batch::portal_route(state, p, false))
                        .unwrap_or(None),
                })
                .collect();
            let binds: Vec<usize> = bound.iter().map(|(i, _, _)| *i).collect();
            let request = Request {
                statements,
                ending,
                messages: Some(Messages {
                    msgs,
                    routes: &routes,
                    binds: &binds,
                    failed_before: false,
                    claims,
                    block: crate::planner::tests::block_of(state),
                }),
            };
            plan(&request, state, &cx)
        }
    }

    #[test]
    fn a_batch_plans_as_a_whole() {
        let w = World::new();
        let [(a, sa), (b, sb)] = w.keys_on_two_shards();
        let keyed = prepared(&w, "SELECT * FROM users WHERE user_id = $1", 1);
        let keyless = prepared(&w, "SELECT * FROM users WHERE user_id > $1", 1);
        let update = prepared(&w, "UPDATE users SET name = 'x' WHERE user_id = $1", 1);
        let keyless_insert = prepared(&w, "INSERT INTO users (name) VALUES ($1)", 1);
        let declare = prepared(
            &w,
            "DECLARE c CURSOR FOR SELECT * FROM users WHERE user_id > $1",
            1,
        );
        let idle = SessionState::default();
        let one_key = GivenKeys {
            keys: vec![crate::router::ShardKey::Int(7)],
            overriding: false,
        };
        // More keys than rows: the INSERT cannot be given them.
        let two_keys = GivenKeys {
            keys: vec![
                crate::router::ShardKey::Int(7),
                crate::router::ShardKey::Int(8),
            ],
            overriding: false,
        };
        // (messages, generated keys by message, claims, session, the plan or a refusal's start)
        type BatchCase = (
            Vec<Msg>,
            Vec<(usize, GivenKeys)>,
            bool,
            SessionState,
            Result<Plan, &'static str>,
        );
        let cases: Vec<BatchCase> = vec![
            // Two keyed statements for one shard: one request there.
            (
                vec![
                    bind("", &keyed, &[a]),
                    execute("", 0),
                    bind("", &update, &[a]),
                    execute("", 0),
                ],
                vec![],
                false,
                SessionState::default(),
                Ok(Plan::Run(Target::Single(sa))),
            ),
            // A pipeline over two shards: unit by unit, in one implicit transaction.
            (
                vec![
                    bind("", &keyed, &[a]),
                    execute("", 0),
                    bind("", &update, &[b]),
                    execute("", 0),
                ],
                vec![],
                false,
                SessionState::default(),
                Ok(Plan::InTurn),
            ),
            // A keyless read read a piece at a time: the proxy holds its portal.
            (
                vec![bind("p", &keyless, &[a]), execute("p", 10)],
                vec![],
                false,
                SessionState::default(),
                Ok(Plan::HeldPortal),
            ),
            // Writes of a looked-up column claim first.
            (
                vec![bind("", &update, &[a]), execute("", 0)],
                vec![],
                true,
                SessionState::default(),
                Ok(Plan::Claims),
            ),
            // A DECLARE over several shards: the proxy serves the cursor.
            (
                vec![bind("", &declare, &[a]), execute("", 0)],
                vec![],
                false,
                in_block(&[]),
                Ok(Plan::ServedCursor),
            ),
            // The second Bind cannot be routed: the first runs, then its error.
            (
                vec![
                    bind("", &keyed, &[a]),
                    execute("", 0),
                    bind("", &keyless_insert, &[b]),
                    execute("", 0),
                ],
                vec![(2, two_keys)],
                false,
                SessionState::default(),
                Err("INSERT has 1 VALUES rows but 2 generated keys"),
            ),
            // An INSERT without its key and no keys reserved: the frontend reserves them first.
            (
                vec![
                    bind(
                        "",
                        &prepared(&w, "INSERT INTO users (name) VALUES ($1)", 1),
                        &[a],
                    ),
                    execute("", 0),
                ],
                vec![],
                false,
                SessionState::default(),
                Ok(Plan::NeedsKeys),
            ),
        ];
        for (msgs, keys, claims, state, expected) in cases {
            let got = w.plan_batch(&msgs, &keys, claims, Ending::Sync, &state);
            let got = match got {
                Ok(Planned {
                    plan: Plan::FailedAt { message, refusal },
                    ..
                }) => {
                    assert_eq!(message, 2, "the failing Bind's index");
                    Err(refusal)
                }
                other => other,
            };
            match (outcome(got), &expected) {
                (Ok(p), Ok(e)) => assert_eq!(&p, e, "{expected:?}"),
                (Err((_, message)), Err(prefix)) => {
                    assert!(message.starts_with(prefix), "{message}")
                }
                (got, _) => panic!("got {got:?}, expected {expected:?}"),
            }
        }
        // Each Bind's route reaches its messages; the Execute goes with its Bind.
        let msgs = [
            bind("", &keyed, &[a]),
            execute("", 0),
            bind("", &update, &[b]),
            execute("", 0),
        ];
        let got = w
            .plan_batch(&msgs, &[], false, Ending::Sync, &idle)
            .expect("planned");
        assert_eq!(
            got.routes.as_slice(),
            [Route::Single(sa), Route::Single(sb)]
        );
        assert_eq!(
            got.message_routes,
            [Some(Route::Single(sa)), None, Some(Route::Single(sb)), None]
        );
        // Generated keys rewrite the Bind's statement and place it.
        let insert = prepared(&w, "INSERT INTO users (name) VALUES ($1)", 1);
        let msgs = [bind("", &insert, &[0]), execute("", 0)];
        let got = w
            .plan_batch(&msgs, &[(0, one_key)], false, Ending::Sync, &idle)
            .expect("planned");
        assert_eq!(got.plan, Plan::Run(Target::Single(w.map.shard_for(7))));
        assert!(got.rewritten[0].as_ref().is_some_and(|t| t.contains('7')));
    }
}
