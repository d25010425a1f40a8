//! The router: turns one statement (SQL text plus parameter values) and the current shard map into a
//! route — which shards run it and how their answers combine. Pure: no sockets, no servers.

pub mod cache;
pub mod facts;
pub mod literals;
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
            if !is_unparsed(&f) || norm.literals.is_empty() {
                return (f, norm.literals);
            }
        } else {
            let f: Arc<[StatementFacts]> = facts::analyze(&norm.text, &self.tables).into();
            self.cache.put(key, f.clone());
            if !is_unparsed(&f) || norm.literals.is_empty() {
                return (f, norm.literals);
            }
        }
        // The normalized text does not parse (`interval '1 day'` became `interval $1`): use the
        // original text, without literals.
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
                    Route::Refuse(format!(
                        "{construct} over several shards is not supported yet; add a condition on {table}.{key} to reach one shard"
                    ))
                } else {
                    Route::Scatter(many.to_vec())
                }
            }
        }
    }
}

fn is_unparsed(f: &[StatementFacts]) -> bool {
    f.len() == 1 && f[0].kind == StatementKind::Unparsed
}
