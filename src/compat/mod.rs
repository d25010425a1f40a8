//! The compatibility report: a proxy in front of one existing, unsharded database runs every
//! statement there unchanged, and records per normalized statement what it *would* do under the
//! configured sharded tables over `[compat] shards` shards — one shard, scatter, broadcast, or
//! refused with the construct Postgres cannot be matched on and a suggested rewrite — with
//! counts and when it was last seen. A team runs its test suite through it before moving.
//!
//! The evaluation is the planner's own pure routing ([`Router::route`]) under a synthetic hash
//! map of that many shards, with a router of its own, so the data path's answer never depends
//! on it. Memory is bounded: the least recently seen statements give way past
//! `[compat] max_statements`.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::SystemTime;

use lru::LruCache;

pub mod report;

use crate::config::{CompatConfig, Config, PoolMode};
use crate::router::analyze::Refused;
use crate::router::literals::LiteralParams;
use crate::router::params::ParamSource;
use crate::router::{cte, subquery_first, Route, Router, ShardMap, StatementFacts, Strategy};

/// What a statement would do over the hypothetical shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answered by pgshard itself (`SET pgshard.*`, LISTEN, `pgshard.next_id()`).
    Proxy,
    /// Exactly one shard (its keys, or any shard for a statement on no sharded table).
    Single,
    /// Several shards, results merged.
    Scatter,
    /// Every shard alike (DDL, reference tables).
    Broadcast,
    /// A multi-row INSERT split between shards.
    SplitInsert,
    /// An uncorrelated subquery or a CTE over sharded tables runs first, then the statement
    /// with its result routes by key (two steps: their shards are known only at run time).
    RunFirst,
    /// Refused: what is missing, and a rewrite that avoids it where one is known.
    Refused {
        message: String,
        suggestion: Option<&'static str>,
    },
}

impl Verdict {
    /// The route's name in the report.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Proxy => "proxy",
            Verdict::Single => "single",
            Verdict::Scatter => "scatter",
            Verdict::Broadcast => "broadcast",
            Verdict::SplitInsert => "split_insert",
            Verdict::RunFirst => "run_first",
            Verdict::Refused { .. } => "refused",
        }
    }
}

/// Rewrites that avoid a refusal, by a phrase of its message.
const SUGGESTIONS: &[(&str, &str)] = &[
    ("join", "join sharded tables on their shard keys (co-located), or list the other table in reference_tables"),
    ("subquery", "correlate the subquery with the outer sharded table by shard key, or run it first and pass its result as a parameter (= ANY($1))"),
    ("cte", "inline the CTE, or run it first and pass its result as a parameter"),
    ("update of the shard key", "delete the row and insert it with its new key"),
    ("on conflict do update of shard key", "delete the row and insert it with its new key"),
    ("explicit column list", "name the columns, the shard key among them"),
    ("needs a server connection", "avoid session state, or run this client with pool.mode = \"session\""),
    ("over several shards", "add a condition on the shard key so the statement reaches one shard"),
];

/// The suggestion for a refusal message, if one is known.
pub fn suggest(message: &str) -> Option<&'static str> {
    let lower = message.to_lowercase();
    SUGGESTIONS
        .iter()
        .find(|(phrase, _)| lower.contains(phrase))
        .map(|(_, s)| *s)
}

/// What the statement `sql` (analyzed as `facts`; `bound`: its `$n` are a Bind's parameters,
/// else extracted literals) would do under `map`, as the data path decides it: a refused
/// statement with a WITH whose every sharded reference is on one shard runs whole there, one
/// whose refusal running a subquery or CTE first lifts runs it first (pure).
pub fn judge(
    router: &Router,
    map: &ShardMap,
    sql: &str,
    facts: &StatementFacts,
    params: &dyn ParamSource,
    bound: bool,
) -> Verdict {
    if matches!(facts.refuse, Some(Refused::InsertWithoutColumns { .. })) {
        // The session writes the table's columns in (read from the catalog), and the INSERT
        // then goes where its keys say.
        if let Some(insert) = crate::router::insert_columns::unlisted_insert(sql) {
            return match insert.rows {
                Some(1) => Verdict::Single,
                Some(_) => Verdict::SplitInsert,
                None => Verdict::RunFirst,
            };
        }
    }
    if facts.unnest_keyless.is_some() && facts.refuse.is_none() {
        // `INSERT … SELECT * FROM UNNEST(…)` without the key: the session generates a key per
        // row and splits the rows over the shards.
        return Verdict::SplitInsert;
    }
    if facts.missing_key_rows.is_some_and(|rows| rows > 1) && facts.refuse.is_none() {
        // A multi-row VALUES without the key: the session generates a key per row, and the rows
        // go where their keys hash, several shards.
        return Verdict::SplitInsert;
    }
    if facts.refuse.is_some() && facts.local.is_none() {
        let first = map.shards().first().copied().unwrap_or(0);
        let part_route = |text: &str| {
            let (facts, literals) = if bound {
                (router.analyze_prepared(text), Vec::new())
            } else {
                router.analyze_simple(text)
            };
            let literal_params = LiteralParams(&literals);
            let part_params: &dyn ParamSource = if bound { params } else { &literal_params };
            match &facts[..] {
                [f] => router.route(f, part_params, map, first),
                _ => Route::Refuse(String::new()),
            }
        };
        if let Some(whole) =
            cte::one_shard(sql, part_route).and_then(|shard| cte::run_whole(facts, shard))
        {
            return evaluate(router, map, &whole, params);
        }
        let reads_sharded = |text: &str| router.analyze_prepared(text).iter().any(|f| f.sharded);
        if subquery_first::liftable(std::slice::from_ref(facts))
            && matches!(subquery_first::next(sql, bound, reads_sharded), Ok(Some(_)))
        {
            return Verdict::RunFirst;
        }
        let unmergeable = |text: &str| matches!(&router.analyze_prepared(text)[..], [g] if crate::router::pull_up::unmergeable(g));
        if crate::router::pull_up::through_derived(facts, sql, &unmergeable).is_some() {
            return Verdict::RunFirst;
        }
    }
    if crate::router::pull_up::unmergeable(facts) && crate::router::pull_up::find(sql).is_some() {
        // A read the merge cannot reproduce over several shards: its table's rows are read
        // first and the statement runs over them.
        let first = map.shards().first().copied().unwrap_or(0);
        if matches!(router.route(facts, params, map, first), Route::Refuse(_)) {
            return Verdict::RunFirst;
        }
    }
    evaluate(router, map, facts, params)
}

/// What `facts` with `params` would do under `map` (pure).
pub fn evaluate(
    router: &Router,
    map: &ShardMap,
    facts: &StatementFacts,
    params: &dyn ParamSource,
) -> Verdict {
    if facts.local.is_some() {
        return Verdict::Proxy;
    }
    if let Some(refusal) = crate::planner::rules::session_bound([facts], PoolMode::Transaction) {
        let message = refusal.to_string();
        return Verdict::Refused {
            suggestion: suggest(&message),
            message,
        };
    }
    let first = map.shards().first().copied().unwrap_or(0);
    match router.route(facts, params, map, first) {
        Route::Single(_) | Route::Any => Verdict::Single,
        Route::Scatter(_) => Verdict::Scatter,
        Route::Broadcast(_) => Verdict::Broadcast,
        Route::SplitInsert(_) => Verdict::SplitInsert,
        Route::Refuse(message) => Verdict::Refused {
            suggestion: suggest(&message),
            message,
        },
    }
}

/// One normalized statement in the report.
#[derive(Debug, Clone)]
pub struct Entry {
    /// pg_query's fingerprint (hex): the same for every literal value and spacing.
    pub fingerprint: String,
    /// The statement with its literals replaced by `$n`.
    pub statement: String,
    /// What it would do, as last seen.
    pub verdict: Verdict,
    pub count: u64,
    /// Of `count`, how many would reach one shard, several, every shard, or be refused (a
    /// statement's keys decide, so one shape may differ from call to call).
    pub single: u64,
    pub multi: u64,
    pub refused: u64,
    pub last_seen: SystemTime,
}

/// The recorder of a proxy with `[compat]` set.
pub struct Recorder {
    router: Router,
    map: ShardMap,
    entries: Mutex<LruCache<String, Entry>>,
}

/// The proxy's report: off unless `[compat]` is configured.
#[derive(Default)]
pub struct Compat {
    recorder: Option<Recorder>,
}

impl Compat {
    /// The report `config` asks for (none without `[compat]`).
    pub fn new(config: &Config) -> Compat {
        let Some(CompatConfig {
            shards,
            max_statements,
        }) = config.compat.clone()
        else {
            return Compat::default();
        };
        let ids: Vec<u32> = (0..shards.max(1)).collect();
        let router = Router::new(&config.sharded_tables, config.router.cache_size)
            .with_reference_tables(&config.reference_tables)
            .with_shards(ids.clone());
        let cap = NonZeroUsize::new(max_statements.max(1)).unwrap_or(NonZeroUsize::MIN);
        Compat {
            recorder: Some(Recorder {
                router,
                map: ShardMap::uniform(1, Strategy::Hash, &ids),
                entries: Mutex::new(LruCache::new(cap)),
            }),
        }
    }

    /// True when statements are recorded.
    pub fn enabled(&self) -> bool {
        self.recorder.is_some()
    }

    /// Records the statements of a simple Query (literals written in).
    pub fn record_simple(&self, sql: &str) {
        let Some(r) = &self.recorder else { return };
        let pieces = pg_query::split_with_parser(sql).unwrap_or_else(|_| vec![sql]);
        for piece in pieces {
            let (facts, literals) = r.router.analyze_simple(piece);
            for f in facts.iter() {
                r.note(
                    piece,
                    judge(
                        &r.router,
                        &r.map,
                        piece,
                        f,
                        &LiteralParams(&literals),
                        false,
                    ),
                );
            }
        }
    }

    /// Records one bound statement of the extended protocol.
    pub fn record_bound(&self, sql: &str, params: &dyn ParamSource) {
        let Some(r) = &self.recorder else { return };
        let facts = r.router.analyze_prepared(sql);
        for f in facts.iter() {
            r.note(sql, judge(&r.router, &r.map, sql, f, params, true));
        }
    }

    /// The report, most frequent first.
    pub fn report(&self) -> Vec<Entry> {
        let Some(r) = &self.recorder else {
            return Vec::new();
        };
        let mut rows: Vec<Entry> = r.lock().iter().map(|(_, e)| e.clone()).collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.statement.cmp(&b.statement)));
        rows
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note(&self, sql: &str, verdict: Verdict) {
        let fingerprint = pg_query::fingerprint(sql, 0, 0)
            .map(|f| f.hex)
            .unwrap_or_else(|_| format!("unparsed:{}", sql.len()));
        let now = SystemTime::now();
        let mut entries = self.lock();
        let entry = match entries.get_mut(&fingerprint) {
            Some(e) => e,
            None => {
                let statement = pg_query::normalize(sql)
                    .unwrap_or_else(|_| sql.to_string())
                    .trim()
                    .to_string();
                entries.push(
                    fingerprint.clone(),
                    Entry {
                        fingerprint: fingerprint.clone(),
                        statement,
                        verdict: verdict.clone(),
                        count: 0,
                        single: 0,
                        multi: 0,
                        refused: 0,
                        last_seen: now,
                    },
                );
                match entries.get_mut(&fingerprint) {
                    Some(e) => e,
                    None => return,
                }
            }
        };
        entry.count += 1;
        match &verdict {
            Verdict::Proxy | Verdict::Single => entry.single += 1,
            Verdict::Refused { .. } => entry.refused += 1,
            _ => entry.multi += 1,
        }
        entry.verdict = verdict;
        entry.last_seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardedTableConfig;

    fn recorder(max: usize) -> Compat {
        let tables = [
            ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            },
            ShardedTableConfig {
                name: "orders".into(),
                key: "order_id".into(),
                key_type: None,
            },
        ];
        let ids: Vec<u32> = (0..10).collect();
        Compat {
            recorder: Some(Recorder {
                router: Router::new(&tables, 100).with_shards(ids.clone()),
                map: ShardMap::uniform(1, Strategy::Hash, &ids),
                entries: Mutex::new(LruCache::new(
                    NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN),
                )),
            }),
        }
    }

    #[test]
    fn statements_are_judged_under_ten_shards() {
        let c = recorder(100);
        // (statement, route label, a phrase of the refusal)
        let cases = [
            ("SELECT * FROM users WHERE user_id = 7", "single", None),
            (
                "SELECT name FROM users WHERE email = 'a@b'",
                "scatter",
                None,
            ),
            (
                "UPDATE users SET name = 'x' WHERE email = 'a@b'",
                "scatter",
                None,
            ),
            ("CREATE INDEX ON users (email)", "broadcast", None),
            ("CREATE TABLE notes (id int)", "single", None),
            (
                "SELECT * FROM users u, orders o WHERE o.order_id = u.user_id + 1",
                "refused",
                Some("join"),
            ),
            ("SET pgshard.shard = 1", "proxy", None),
            // Keys generated by the session, rows split over the shards.
            (
                "INSERT INTO orders (v) SELECT * FROM unnest('{1,2,3}'::int[])",
                "split_insert",
                None,
            ),
            // A multi-row VALUES without the key (SQLAlchemy's insertmanyvalues, psycopg2's
            // executemany): keys generated per row, rows split over the shards.
            (
                "INSERT INTO orders (v) VALUES (1), (2), (3) RETURNING order_id",
                "split_insert",
                None,
            ),
            // With the keys: split by them.
            (
                "INSERT INTO orders (order_id, v) VALUES (1, 1), (2, 2), (3, 3)",
                "split_insert",
                None,
            ),
            // Run first by the data path; keyed to one shard throughout, run whole there.
            (
                "SELECT name FROM users WHERE user_id IN (SELECT order_id FROM orders WHERE v > 1)",
                "run_first",
                None,
            ),
            (
                "WITH o AS (SELECT v FROM orders WHERE order_id = 3) SELECT sum(v) FROM o",
                "single",
                None,
            ),
            (
                "WITH o AS (SELECT v FROM orders) SELECT sum(v) FROM o",
                "run_first",
                None,
            ),
            // Reads the merge cannot reproduce: one table's rows read first; set operations
            // branch by branch; INSERT … SELECT with its SELECT first.
            (
                "SELECT name, rank() OVER (ORDER BY name) FROM users",
                "run_first",
                None,
            ),
            (
                "SELECT rank() OVER (ORDER BY name) FROM users WHERE user_id = 3",
                "single",
                None,
            ),
            (
                "SELECT name FROM users UNION SELECT 'x' FROM orders",
                "run_first",
                None,
            ),
            (
                "INSERT INTO orders (order_id, v) SELECT user_id, 1 FROM users",
                "run_first",
                None,
            ),
            (
                "SELECT string_agg(u.name, ',') FROM users u JOIN orders o ON o.order_id = u.user_id",
                "refused",
                Some("string_agg"),
            ),
            ("INSERT INTO orders VALUES (7, 1)", "single", None),
            ("INSERT INTO orders VALUES (7, 1), (8, 2)", "split_insert", None),
            ("INSERT INTO orders SELECT user_id, 1 FROM users", "run_first", None),
            ("INSERT INTO orders SELECT * FROM users", "run_first", None),
            (
                "INSERT INTO orders SELECT * FROM users u JOIN items i ON i.id = u.user_id",
                "refused",
                Some("explicit column list"),
            ),
        ];
        for (sql, label, phrase) in cases {
            c.record_simple(sql);
            let fp = pg_query::fingerprint(sql, 0, 0).unwrap().hex;
            let e = c
                .report()
                .into_iter()
                .find(|e| e.fingerprint == fp)
                .unwrap();
            assert_eq!(e.verdict.label(), label, "{sql}: {:?}", e.verdict);
            if let (
                Some(p),
                Verdict::Refused {
                    message,
                    suggestion,
                },
            ) = (phrase, &e.verdict)
            {
                assert!(message.to_lowercase().contains(p), "{sql}: {message}");
                assert!(suggestion.is_some(), "{sql}");
            }
        }
    }

    #[test]
    fn literals_fold_into_one_entry_and_memory_is_bounded() {
        let c = recorder(2);
        c.record_simple("SELECT * FROM users WHERE user_id = 1");
        c.record_simple("select * from users where user_id = 2; SELECT 1");
        let rows = c.report();
        assert_eq!(rows[0].count, 2);
        assert_eq!(rows[0].statement, "SELECT * FROM users WHERE user_id = $1");
        c.record_simple("SELECT 2 + 2");
        c.record_simple("SELECT name FROM users");
        assert_eq!(c.report().len(), 2);
    }
}
