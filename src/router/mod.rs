//! The router: turns one statement (SQL text plus parameter values) and the current shard map into a
//! route — which shards run it and how their answers combine. Pure: no sockets, no servers.

pub mod cache;
pub mod copy_facts;
pub mod facts;
pub mod literals;
pub mod merge_plan;
pub mod params;
pub mod rewrite;
pub mod shard_map;

pub use facts::{LocalCommand, StatementFacts, StatementKind};
pub use params::ParamSource;
pub use shard_map::{KeyRange, ShardMap, ShardMapError, Strategy};

/// Where one statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Exactly one shard: the key is known, or only unsharded tables are named (the first shard).
    Single(u32),
    /// Every listed shard runs it and the rows are concatenated (keyless read, or an IN list spanning
    /// several shards). Always sorted, never empty, at least two entries.
    Scatter(Vec<u32>),
    /// Any shard can answer: no table is named (`SELECT 1`, `SET`, `SHOW`, transaction control).
    Any,
    /// Refused with SQLSTATE 0A000 and this message, naming what is missing.
    Refuse(String),
}

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::ShardedTableConfig;
use cache::RouteCache;
use facts::{KeyFacts, KeyValue, ShardedTables};
use literals::Literal;

/// Cache-key prefixes, so texts of different origins never collide.
const SIMPLE_PREFIX: &str = "s:";
const ORIGINAL_PREFIX: &str = "o:";
const PREPARED_PREFIX: &str = "p:";

/// Statement analysis (cached) and the routing decision.
pub struct Router {
    tables: ShardedTables,
    cache: RouteCache,
}

impl Router {
    pub fn new(tables: &[ShardedTableConfig], cache_size: usize) -> Router {
        Router {
            tables: ShardedTables::new(tables),
            cache: RouteCache::new(cache_size),
        }
    }

    /// The sharded tables this router knows.
    pub fn tables(&self) -> &ShardedTables {
        &self.tables
    }

    /// (hits, misses) of the facts cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// Facts of a simple-protocol query string, with the literals that stand for `$n` in them
    /// (pass them as [`literals::LiteralParams`]).
    pub fn analyze_simple(&self, sql: &str) -> (Arc<[StatementFacts]>, Vec<Literal>) {
        let norm = literals::normalize(sql);
        let key = format!("{SIMPLE_PREFIX}{}", norm.text);
        if let Some(f) = self.cache.get(&key) {
            if !needs_original(&f) || norm.literals.is_empty() {
                return (f, norm.literals);
            }
        } else {
            let f: Arc<[StatementFacts]> = facts::analyze(&norm.text, &self.tables).into();
            self.cache.put(key, f.clone());
            if !needs_original(&f) || norm.literals.is_empty() {
                return (f, norm.literals);
            }
        }
        // The normalized text does not parse (`interval '1 day'` became `interval $1`), or it is a
        // utility statement whose values matter as text (`SET x = '5s'`, pgshard's own commands):
        // use the original text, without literals.
        let okey = format!("{ORIGINAL_PREFIX}{sql}");
        let f = self
            .cache
            .get_or_insert_with(&okey, || facts::analyze(sql, &self.tables));
        (f, Vec::new())
    }

    /// Facts of a prepared statement's exact text (its `$n` are Bind parameters).
    pub fn analyze_prepared(&self, sql: &str) -> Arc<[StatementFacts]> {
        let key = format!("{PREPARED_PREFIX}{sql}");
        self.cache
            .get_or_insert_with(&key, || facts::analyze(sql, &self.tables))
    }

    /// Where one statement runs. `first_shard` is where unsharded tables live.
    pub fn route(
        &self,
        facts: &StatementFacts,
        params: &dyn ParamSource,
        map: &ShardMap,
        first_shard: u32,
    ) -> Route {
        if facts.local.is_some() {
            return Route::Any;
        }
        if let Some(msg) = &facts.refuse {
            return Route::Refuse(msg.clone());
        }
        if facts.kind == StatementKind::Unparsed {
            return Route::Single(first_shard);
        }
        if !facts.sharded {
            if facts.unsharded || facts.kind == StatementKind::Ddl {
                return Route::Single(first_shard);
            }
            return Route::Any;
        }
        if facts.missing_key_rows.is_some() {
            // The caller generates ids for the rows and routes each.
            return Route::Any;
        }
        if facts.kind == (StatementKind::Copy { from_stdin: true }) {
            // The caller splits the rows by key.
            return Route::Any;
        }
        let keys: Option<Vec<i64>> = match &facts.key {
            KeyFacts::Unknown => None,
            KeyFacts::Values(vals) => vals
                .iter()
                .map(|v| match v {
                    KeyValue::Const(c) => Some(*c),
                    KeyValue::Param(n) => params.int(*n),
                })
                .collect(),
            KeyFacts::ArrayParam(n) => params.int_array(*n),
        };
        let shards: Vec<u32> = match &keys {
            Some(keys) => keys
                .iter()
                .map(|&k| map.shard_for(k))
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect(),
            None => map.shards(),
        };
        let (table, key) = facts
            .shard_key
            .clone()
            .unwrap_or_else(|| ("a sharded table".to_string(), "shard key".to_string()));
        match shards.as_slice() {
            // An empty key list (`= ANY('{}')`) matches nothing: any one shard answers that.
            [] => Route::Single(map.shards().first().copied().unwrap_or(first_shard)),
            [one] => Route::Single(*one),
            many => {
                let n = many.len();
                if facts.kind == StatementKind::Ddl {
                    Route::Refuse(format!(
                        "DDL on sharded table {table} must run on all {n} shards, which needs a distributed transaction that this version does not support"
                    ))
                } else if facts.is_write {
                    let why = if keys.is_none() {
                        format!(" (no condition on {table}.{key} found)")
                    } else {
                        String::new()
                    };
                    Route::Refuse(format!(
                        "write touching {n} shards needs a distributed transaction, which this version does not support; name one {key} per statement{why}"
                    ))
                } else if let Some(construct) = &facts.needs_merge {
                    match &facts.merge {
                        Some(Ok(_)) => Route::Scatter(many.to_vec()),
                        Some(Err(what)) => Route::Refuse(format!(
                            "{what} over several shards is not supported; add a condition on {table}.{key} to reach one shard"
                        )),
                        None => Route::Refuse(format!(
                            "{construct} over several shards is not supported yet; add a condition on {table}.{key} to reach one shard"
                        )),
                    }
                } else {
                    Route::Scatter(many.to_vec())
                }
            }
        }
    }
}

/// True when facts of a normalized text cannot stand for the original. A merge plan needs the
/// original too: `ORDER BY 2` and `GROUP BY 1` must not become `$n`.
fn needs_original(facts: &[StatementFacts]) -> bool {
    facts.iter().any(|f| {
        f.local.is_some()
            || f.merge.is_some()
            || !matches!(
                f.kind,
                StatementKind::Select
                    | StatementKind::Insert
                    | StatementKind::Update
                    | StatementKind::Delete
            )
    })
}

#[cfg(test)]
mod tests {
    use super::literals::LiteralParams;
    use super::params::{BindParams, NoParams};
    use super::*;

    fn router() -> Router {
        Router::new(
            &[
                ShardedTableConfig {
                    name: "users".into(),
                    key: "user_id".into(),
                },
                ShardedTableConfig {
                    name: "pgbench_accounts".into(),
                    key: "aid".into(),
                },
            ],
            100,
        )
    }

    fn maps() -> Vec<ShardMap> {
        vec![
            ShardMap::uniform(1, Strategy::Range, &[1, 2, 3]),
            ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3]),
            ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[1, 2, 3]),
        ]
    }

    fn route_sql(r: &Router, sql: &str, map: &ShardMap) -> Route {
        let (facts, lits) = r.analyze_simple(sql);
        assert_eq!(facts.len(), 1);
        r.route(&facts[0], &LiteralParams(&lits), map, 1)
    }

    #[test]
    fn single_key_each_strategy() {
        let r = router();
        for map in maps() {
            for k in [0i64, 1, 2, 42, 4242, -7, i64::MAX] {
                let got = route_sql(
                    &r,
                    &format!("select * from users where user_id = {k}"),
                    &map,
                );
                assert_eq!(
                    got,
                    Route::Single(map.shard_for(k)),
                    "{:?} {k}",
                    map.strategy
                );
            }
        }
        // Range maps are not modulo: small keys all land on the first shard.
        let range = &maps()[0];
        assert_eq!(
            route_sql(&r, "select * from users where user_id = 2", range),
            Route::Single(1)
        );
        let modulo = &maps()[2];
        assert_eq!(
            route_sql(&r, "select * from users where user_id = 2", modulo),
            Route::Single(3)
        );
        assert_eq!(
            route_sql(&r, "select * from users where user_id = -1", modulo),
            Route::Single(3)
        );
        let hash = &maps()[1];
        assert_eq!(
            route_sql(&r, "select * from users where user_id = 5", hash),
            Route::Single(1) // hashint8extended(5, 0) < i64::MIN / 3
        );
    }

    #[test]
    fn scatter_and_refusals() {
        let r = router();
        let modulo = &maps()[2];
        assert_eq!(
            route_sql(&r, "select * from users", modulo),
            Route::Scatter(vec![1, 2, 3])
        );
        assert_eq!(
            route_sql(&r, "select * from users where user_id in (3, 4, 6)", modulo),
            Route::Scatter(vec![1, 2])
        );
        assert_eq!(
            route_sql(&r, "select count(*) from users", modulo),
            Route::Scatter(vec![1, 2, 3])
        );
        let Route::Refuse(m) = route_sql(&r, "select string_agg(name, ',') from users", modulo)
        else {
            panic!()
        };
        assert!(
            m.starts_with("aggregate string_agg() over several shards"),
            "{m}"
        );
        assert!(m.contains("users.user_id"), "{m}");
        let Route::Refuse(m) = route_sql(&r, "explain select count(*) from users", modulo) else {
            panic!()
        };
        assert!(
            m.starts_with("aggregate count() over several shards"),
            "{m}"
        );
        let Route::Refuse(m) = route_sql(&r, "delete from users where name = 'x'", modulo) else {
            panic!()
        };
        assert!(m.starts_with("write touching 3 shards"), "{m}");
        assert!(m.contains("name one user_id per statement"), "{m}");
        let Route::Refuse(m) =
            route_sql(&r, "update users set n = 1 where user_id in (1, 2)", modulo)
        else {
            panic!()
        };
        assert!(m.starts_with("write touching 2 shards"), "{m}");
        assert_eq!(
            route_sql(&r, "select count(*) from users where user_id = 3", modulo),
            Route::Single(1)
        );
        let Route::Refuse(m) =
            route_sql(&r, "update users set user_id = 1 where user_id = 2", modulo)
        else {
            panic!()
        };
        assert!(m.contains("users.user_id"));
        let Route::Refuse(m) = route_sql(&r, "create index on users (name)", modulo) else {
            panic!()
        };
        assert!(m.contains("users"));
    }

    #[test]
    fn unsharded_and_local() {
        let r = router();
        let map = &maps()[1];
        assert_eq!(route_sql(&r, "select 1", map), Route::Any);
        assert_eq!(route_sql(&r, "set work_mem = '4MB'", map), Route::Any);
        assert_eq!(route_sql(&r, "begin", map), Route::Any);
        assert_eq!(
            route_sql(&r, "select * from pg_catalog.pg_class", map),
            Route::Single(1)
        );
        assert_eq!(
            route_sql(&r, "select * from countries", map),
            Route::Single(1)
        );
        assert_eq!(route_sql(&r, "selec 1", map), Route::Single(1));
        assert_eq!(route_sql(&r, "select pgshard.next_id()", map), Route::Any);
        assert_eq!(
            route_sql(&r, "insert into users (name) values ('a')", map),
            Route::Any
        );
        assert_eq!(
            route_sql(
                &r,
                "create function f() returns int as 'select 1' language sql",
                map
            ),
            Route::Single(1)
        );
    }

    #[test]
    fn params_and_prepared() {
        let r = router();
        let map = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[1, 2, 3]);
        let facts = r.analyze_prepared("select * from users where user_id = $1");
        let values = [Some(bytes::Bytes::from_static(b"4"))];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(r.route(&facts[0], &p, &map, 1), Route::Single(2));
        // Missing parameter: unknown key, so a keyless read.
        assert_eq!(
            r.route(&facts[0], &NoParams, &map, 1),
            Route::Scatter(vec![1, 2, 3])
        );
        let facts = r.analyze_prepared("select * from users where user_id = any($1)");
        let values = [Some(bytes::Bytes::from_static(b"{3,6}"))];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(r.route(&facts[0], &p, &map, 1), Route::Single(1));
        let values = [Some(bytes::Bytes::from_static(b"{}"))];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(r.route(&facts[0], &p, &map, 1), Route::Single(1));
    }

    #[test]
    fn simple_protocol_cache() {
        let r = router();
        let map = ShardMap::uniform(1, Strategy::Hash, &[1, 2]);
        for k in [1, 2, 3, 4242] {
            let got = route_sql(
                &r,
                &format!("SELECT abalance FROM pgbench_accounts WHERE aid = {k};"),
                &map,
            );
            assert_eq!(got, Route::Single(map.shard_for(k)));
        }
        assert_eq!(r.cache_stats(), (3, 1));
        // Whether or not the normalized text parses, the key resolves to the literal.
        for k in [5i64, 6] {
            let sql = format!(
                "select * from users where user_id = {k} and t > now() - interval '1 day' and d = date '2020-01-01'"
            );
            assert_eq!(route_sql(&r, &sql, &map), Route::Single(map.shard_for(k)));
        }
        // Real syntax errors stay Unparsed.
        let (f, _) = r.analyze_simple("selec 1");
        assert_eq!(f[0].kind, StatementKind::Unparsed);
    }
}
