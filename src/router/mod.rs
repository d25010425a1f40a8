//! The router: turns one statement (SQL text plus parameter values) and the current shard map into a
//! route — which shards run it and how their answers combine. Pure: no sockets, no servers.

pub mod analyze;
pub mod array_constructors;
pub mod cache;
pub mod copy_facts;
pub mod cte;
pub mod cursor;
pub mod derived;
pub mod tables_first;
/// The statement facts under the name the rest of the crate reads them by.
pub use analyze as facts;
pub mod fence;
pub mod final_projection;
pub mod group_names;
pub mod hint;
pub mod index_owner;
pub mod insert_columns;
pub mod insert_rewrite;
pub mod insert_select;
pub mod key_type;
pub mod key_update;
pub mod literals;
pub mod lookup;
pub mod merge_plan;
pub mod names;
pub mod ordered_values_insert;
pub mod params;
pub mod pg_array;
pub mod pg_hash;
pub mod pull_up;
pub mod rewrite;
pub mod scatter_guard;
pub mod schemas;
pub mod set_config;
pub mod set_op_branches;
pub mod shard_map;
pub mod split_insert;
pub mod split_params;
pub mod subquery;
pub mod subquery_first;
pub mod unnest_insert;
pub mod unnest_keys;

pub use facts::{LocalCommand, NotifyArg, StatementFacts, StatementKind};
pub use key_type::{KeyType, ShardKey};
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
    /// Any shard can answer: no table is named (`SELECT 1`, `SET`, `SHOW`, transaction control),
    /// or only reference tables are read.
    Any,
    /// Every listed shard runs the statement to change them all alike (DDL and maintenance of
    /// sharded or reference tables, writes to reference tables): their answers agree, and the
    /// client gets one of them. Sorted, never empty.
    Broadcast(Vec<u32>),
    /// A multi-row INSERT whose rows belong to several shards: each shard gets the rows it owns,
    /// listed by their position in VALUES. Sorted by shard, at least two entries.
    SplitInsert(Vec<split_insert::ShardRows>),
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

/// A route-cache key: kind, search_path scope, SQL text, in one allocation of the right size.
fn cache_key(prefix: &str, scope: &str, sql: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + scope.len() + sql.len());
    key.push_str(prefix);
    key.push_str(scope);
    key.push_str(sql);
    key
}

/// Statement analysis (cached) and the routing decision.
pub struct Router {
    /// Replaced when pgshard learns a key type it could not read at start-up (the table was
    /// created later).
    tables: std::sync::RwLock<ShardedTables>,
    /// What the shards' catalogs hold under the configured tables' names in other schemas.
    shadows: std::sync::RwLock<Arc<names::Shadows>>,
    /// Tenant schemas and their shards, as the current shard map places them.
    tenants: std::sync::RwLock<Arc<names::Tenants>>,
    cache: RouteCache,
    /// Every configured shard: statements that change every shard reach these even when the map
    /// gives them no keys yet.
    all_shards: std::sync::RwLock<Vec<u32>>,
}

impl Router {
    /// A router for these sharded tables (no reference tables, shards taken from the map).
    pub fn new(tables: &[ShardedTableConfig], cache_size: usize) -> Router {
        Router {
            tables: std::sync::RwLock::new(ShardedTables::new(tables)),
            shadows: Default::default(),
            tenants: Default::default(),
            cache: RouteCache::new(cache_size),
            all_shards: Default::default(),
        }
    }

    /// The router a configuration describes: its sharded and reference tables and its shards.
    pub fn from_config(config: &crate::config::Config) -> Router {
        Router::new(&config.sharded_tables, config.router.cache_size)
            .with_reference_tables(&config.reference_tables)
            .with_schemas(&config.sharded_schemas)
            .with_tenant_prefix(config.tenants.as_ref().map(|t| t.schema_prefix.as_str()))
            .with_shards(config.shards.iter().map(|s| s.id).collect())
    }

    /// Adds reference tables (copied to every shard). Call before the first statement: cached
    /// facts depend on the table lists.
    pub fn with_reference_tables(mut self, names: &[String]) -> Router {
        let tables = self.tables();
        *self.tables_mut() = tables.with_reference(names);
        self
    }

    /// Adds tenant schemas, each placed whole on one shard. Call before the first statement.
    pub fn with_schemas(
        mut self,
        schemas: &[crate::config::schemas::ShardedSchemaConfig],
    ) -> Router {
        let tables = self.tables().with_schemas(schemas);
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = tables.tenants().clone();
        *self.tables_mut() = tables;
        self
    }

    /// Names new tenants by `[tenants] schema_prefix`: their `CREATE SCHEMA` is refused until
    /// pgshard has placed them. Call before the first statement.
    pub fn with_tenant_prefix(mut self, prefix: Option<&str>) -> Router {
        let tables = self.tables();
        *self.tables_mut() = tables.with_tenant_prefix(prefix);
        self
    }

    /// Sets the configured shards, which statements changing every shard must reach.
    pub fn with_shards(self, shards: Vec<u32>) -> Router {
        self.set_shards(shards);
        self
    }

    /// Replaces the shards statements changing every shard must reach (the topology changed).
    pub fn set_shards(&self, mut shards: Vec<u32>) {
        shards.sort_unstable();
        shards.dedup();
        *self.all_shards.write().unwrap_or_else(|p| p.into_inner()) = shards;
    }

    /// Every shard: the configured ones and any the map names.
    fn every_shard(&self, map: &ShardMap) -> Vec<u32> {
        let mut all: BTreeSet<u32> = self
            .all_shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        all.extend(map.shards());
        all.into_iter().collect()
    }

    /// The shard a statement that changes every shard runs on first (the lowest id): writes to a
    /// reference table take their row locks there before anywhere else, so concurrent writers of
    /// one row wait for each other on that shard instead of deadlocking across shards.
    pub fn lead_shard(&self, map: &ShardMap) -> Option<u32> {
        self.every_shard(map).first().copied()
    }

    /// The sharded tables this router knows.
    pub fn tables(&self) -> ShardedTables {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tables_mut(&mut self) -> &mut ShardedTables {
        self.tables.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes key types read from the shards' catalogs (configured names): statements analysed
    /// with the old types are dropped from the cache. True when a type changed.
    pub fn set_key_types(&self, types: &[(String, KeyType)]) -> bool {
        let mut tables = self.tables.write().unwrap_or_else(|p| p.into_inner());
        let Some(updated) = tables.with_key_types(types) else {
            return false;
        };
        *tables = updated;
        self.cache.clear();
        true
    }

    /// (hits, misses) of the facts cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.stats()
    }

    /// Facts of a simple-protocol query string, with the literals that stand for `$n` in them
    /// (pass them as [`literals::LiteralParams`]), for a session on the default search_path.
    pub fn analyze_simple(&self, sql: &str) -> (Arc<[StatementFacts]>, Vec<Literal>) {
        self.analyze_simple_in(sql, &names::SearchPath::default())
    }

    /// [`Router::analyze_simple`] for a session whose unqualified table names resolve with
    /// `path`: facts are cached per path, so a route for `invoices` under one search_path never
    /// serves another.
    pub fn analyze_simple_in(
        &self,
        sql: &str,
        path: &names::SearchPath,
    ) -> (Arc<[StatementFacts]>, Vec<Literal>) {
        let scope = path.cache_key();
        // The key is the normalized text behind its kind and scope, written in one buffer.
        let literals::Normalized {
            text: key,
            literals,
        } = literals::normalize_after(&[SIMPLE_PREFIX, scope], sql);
        let text_at = SIMPLE_PREFIX.len() + scope.len();
        if let Some(f) = self.cache.get(&key) {
            if !needs_original(&f) || literals.is_empty() {
                return (f, literals);
            }
        } else {
            let text = key.get(text_at..).unwrap_or_default();
            let f: Arc<[StatementFacts]> = self.analyze_in(text, path).into();
            self.cache.put(key, f.clone());
            if !needs_original(&f) || literals.is_empty() {
                return (f, literals);
            }
        }
        // The normalized text does not parse (`interval '1 day'` became `interval $1`), or it is a
        // utility statement whose values matter as text (`SET x = '5s'`, pgshard's own commands):
        // use the original text, without literals.
        let okey = cache_key(ORIGINAL_PREFIX, scope, sql);
        let f = self
            .cache
            .get_or_insert_with(&okey, || self.analyze_in(sql, path));
        (f, Vec::new())
    }

    /// Facts of a prepared statement's exact text (its `$n` are Bind parameters), for a session
    /// on the default search_path.
    pub fn analyze_prepared(&self, sql: &str) -> Arc<[StatementFacts]> {
        self.analyze_prepared_in(sql, &names::SearchPath::default())
    }

    /// [`Router::analyze_prepared`] under the session's search_path.
    pub fn analyze_prepared_in(
        &self,
        sql: &str,
        path: &names::SearchPath,
    ) -> Arc<[StatementFacts]> {
        let key = cache_key(PREPARED_PREFIX, path.cache_key(), sql);
        self.cache
            .get_or_insert_with(&key, || self.analyze_in(sql, path))
    }

    /// Where one statement runs. `first_shard` is where unsharded tables live.
    /// The shard-key values a statement pins, with its parameters filled in; `None` when it pins
    /// none (or a value is not of the key's type), so every shard may hold its rows.
    pub fn key_values(facts: &StatementFacts, params: &dyn ParamSource) -> Option<Vec<ShardKey>> {
        let ty = facts.key_type;
        match &facts.key {
            KeyFacts::Unknown => None,
            KeyFacts::Values(vals) => vals
                .iter()
                .map(|v| Router::key_value(v, ty, params))
                .collect(),
            KeyFacts::ArrayParam(n) => params.key_array(*n, ty),
        }
    }

    /// One shard-key value of a statement as a key of type `ty`, its parameter filled in; `None`
    /// when it is not of that type (or NULL).
    fn key_value(v: &KeyValue, ty: KeyType, params: &dyn ParamSource) -> Option<ShardKey> {
        match v {
            KeyValue::Const(c) => match ty {
                KeyType::Int => Some(ShardKey::Int(*c)),
                // `text_key = 5` is Postgres's error to report; `uuid_key = 5` too.
                _ => None,
            },
            KeyValue::Text(t) => ty.parse_text(t),
            KeyValue::Param(n) => params.key(*n, ty),
        }
    }

    /// The route of a statement with a routing hint: the hinted shard, unless the hint is
    /// malformed, names an unknown shard, contradicts the statement's own key, or the statement
    /// must reach every shard or places its rows by key itself.
    fn hinted_route(
        &self,
        facts: &StatementFacts,
        hint: &Result<hint::Hint, String>,
        params: &dyn ParamSource,
        map: &ShardMap,
    ) -> Route {
        let hint = match hint {
            Ok(h) => h,
            Err(message) => return Route::Refuse(message.clone()),
        };
        if facts.every_shard
            || facts.missing_key_rows.is_some()
            || facts.unnest_keyless.is_some()
            || facts.kind == (StatementKind::Copy { from_stdin: true })
        {
            return Route::Refuse(
                "a routing hint cannot apply to a statement that must change every shard (DDL, a reference table write) or whose rows pgshard places by key (COPY FROM STDIN, INSERT with generated keys); remove the hint".into(),
            );
        }
        let hinted = match hint {
            hint::Hint::Shard(s) => *s,
            hint::Hint::Key(text, cast) => {
                let key_type = match cast {
                    Some(t) => Some(*t),
                    None if facts.sharded => Some(facts.key_type),
                    None => self.tables().common_key_type(),
                };
                let Some(key_type) = key_type else {
                    return Route::Refuse(hint::invalid(
                        "key= is ambiguous for a statement that names no sharded table when the sharded tables have keys of different types; name the type (key='…'::uuid) or use shard=N",
                    ));
                };
                let Some(key) = key_type.parse_text(text) else {
                    return Route::Refuse(hint::invalid(format!(
                        "key \"{text}\" is not a valid {} key",
                        key_type.name()
                    )));
                };
                if !map.places(&key) {
                    return Route::Refuse(format!(
                        "the {} shard map cannot place {} keys; {} keys need the hash strategy",
                        map.strategy.name(),
                        key_type.name(),
                        key_type.name()
                    ));
                }
                map.shard_of(&key)
            }
        };
        let keyed: Option<Vec<u32>> = Router::key_values(facts, params)
            .map(|keys| keys.iter().map(|k| map.shard_of(k)).collect());
        match hint::apply(hinted, keyed.as_deref(), &self.every_shard(map)) {
            Ok(shard) => Route::Single(shard),
            Err(message) => Route::Refuse(message),
        }
    }

    /// [`Router::route`] under the session's routing hint (`SET pgshard.shard` / `pgshard.key`):
    /// it applies like a `/* pgshard: … */` comment to every statement that reads or writes, and a
    /// statement's own comment hint comes first. Transaction control and settings are not routed.
    pub fn route_hinted(
        &self,
        facts: &StatementFacts,
        session_hint: Option<&hint::Hint>,
        params: &dyn ParamSource,
        map: &ShardMap,
        first_shard: u32,
    ) -> Route {
        match session_hint {
            Some(h) if hint::session_hint_applies(facts) && facts.schema_shard.is_none() => {
                self.hinted_route(facts, &Ok(h.clone()), params, map)
            }
            _ => self.route(facts, params, map, first_shard),
        }
    }

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
        if let Some(why) = &facts.refuse {
            return Route::Refuse(why.route_text());
        }
        if let Some(shard) = self.tenant_asked_about(facts, params, map) {
            return Route::Single(shard);
        }
        if let Some(shard) = facts.schema_shard {
            return match schemas::route(facts, shard, map) {
                Ok(shard) => Route::Single(shard),
                Err(why) => Route::Refuse(why),
            };
        }
        if let Some(hint) = &facts.hint {
            return self.hinted_route(facts, hint, params, map);
        }
        if facts.kind == StatementKind::Unparsed {
            return Route::Single(first_shard);
        }
        if facts.every_shard {
            let all = self.every_shard(map);
            if all.is_empty() {
                return Route::Single(first_shard);
            }
            return Route::Broadcast(all);
        }
        if !facts.sharded {
            // Reference tables are read from any shard; anything else that is named, created or
            // written lives on the first shard.
            if facts.unsharded || facts.is_write || facts.kind == StatementKind::Ddl {
                return Route::Single(first_shard);
            }
            if facts.locks_rows {
                // Row locks on a reference table are taken where its writes take theirs first
                // (the lead shard, see `lead_shard`), so two blocks that started on different
                // shards still queue for one row instead of each locking its own copy.
                return Route::Single(self.lead_shard(map).unwrap_or(first_shard));
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
        // One key value that the map places (a Bind's `= $1`, a one-row INSERT: the hot path):
        // its shard, with no list of keys built. Anything else is decided below.
        if let KeyFacts::Values(vals) = &facts.key {
            if let [one] = vals.as_slice() {
                if let Some(key) = Router::key_value(one, facts.key_type, params) {
                    if map.places(&key) {
                        return Route::Single(map.shard_of(&key));
                    }
                }
            }
        }
        let keys = Router::key_values(facts, params);
        if let Some(k) = keys.iter().flatten().find(|k| !map.places(k)) {
            return Route::Refuse(format!(
                "the {} shard map cannot place {} key {k:?}; {} keys need the hash strategy",
                map.strategy.name(),
                facts.key_type.name(),
                facts.key_type.name()
            ));
        }
        // One key (a Bind's `= $1`, the hot path): its shard, with no set to build.
        if let Some([one]) = keys.as_deref() {
            return Route::Single(map.shard_of(one));
        }
        let shards: Vec<u32> = match &keys {
            Some(keys) => keys
                .iter()
                .map(|k| map.shard_of(k))
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect(),
            None => map.shards(),
        };
        let (table, key) = facts
            .shard_key
            .as_ref()
            .map_or(("a sharded table", "shard key"), |(t, k)| {
                (t.as_str(), k.as_str())
            });
        match shards.as_slice() {
            // An empty key list (`= ANY('{}')`) matches nothing: any one shard answers that.
            [] => Route::Single(map.shards().first().copied().unwrap_or(first_shard)),
            [one] => Route::Single(*one),
            many => {
                let n = many.len();
                if facts.kind == StatementKind::Ddl {
                    // DDL naming a sharded table is `every_shard`; this is a safety net.
                    Route::Refuse(format!(
                        "DDL on sharded table {table} cannot be routed to {n} shards"
                    ))
                } else if facts.is_write {
                    write_route(facts, keys.as_deref(), many, map, table, key, params)
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

/// Where a write whose rows may sit on several shards (`many`) runs. UPDATE and DELETE run on each
/// of those shards (the session makes that atomic); a multi-row INSERT is split by row; anything
/// else is refused.
fn write_route(
    facts: &StatementFacts,
    keys: Option<&[ShardKey]>,
    many: &[u32],
    map: &ShardMap,
    table: &str,
    key: &str,
    params: &dyn ParamSource,
) -> Route {
    let n = many.len();
    match (&facts.kind, keys) {
        (StatementKind::Update | StatementKind::Delete, _) => Route::Scatter(many.to_vec()),
        (StatementKind::Select, _) if facts.write_in_cte => Route::Scatter(many.to_vec()),
        (StatementKind::Insert, _) if null_key_param(facts, params) => Route::Refuse(
            analyze::Refused::NullShardKey {
                table: table.to_string(),
                key: key.to_string(),
            }
            .route_text(),
        ),
        (StatementKind::Insert, Some(keys)) => {
            match conflict_update_where_split(facts, keys, table, key) {
                Some(why) => Route::Refuse(why),
                None => Route::SplitInsert(split_insert::rows_by_shard_key(keys, map)),
            }
        }
        // A uuid key given as a constant or parameter that is no uuid (pgshard reads uuids as
        // Postgres's uuid_in does): Postgres's input error (22P02; 42804 for a number), which
        // any one shard reports as one Postgres would, before writing anything.
        (StatementKind::Insert, None)
            if facts.key_type == KeyType::Uuid && matches!(facts.key, KeyFacts::Values(_)) =>
        {
            many.first().map_or(Route::Any, |&shard| Route::Single(shard))
        }
        (StatementKind::Insert, None) => Route::Refuse(format!(
            "INSERT into sharded table {table} whose rows' {key} values are not all constants or parameters (INSERT … SELECT, DEFAULT, expressions) cannot be routed to its rows' shards; insert with VALUES naming {key}"
        )),
        _ => {
            let why = if keys.is_none() {
                format!(" (no condition on {table}.{key} found)")
            } else {
                String::new()
            };
            Route::Refuse(format!(
                "this write touches {n} shards in a way pgshard cannot split; name one {key} per statement{why}"
            ))
        }
    }
}

/// Why an `INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING` cannot be split one row at a
/// time (see `split_insert::split`): its conflict target must name the shard key and its rows'
/// keys must differ. `None` for any other INSERT, or one that can.
pub fn conflict_update_where_split(
    facts: &StatementFacts,
    keys: &[ShardKey],
    table: &str,
    key: &str,
) -> Option<String> {
    match facts.conflict_update_where? {
        false => Some(format!(
            "INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING over several shards needs a conflict target that names {table}.{key} (ON CONFLICT ({key}, …)); insert the rows of each shard separately"
        )),
        true if keys.iter().collect::<std::collections::HashSet<_>>().len() < keys.len() => Some(format!(
            "INSERT … ON CONFLICT … DO UPDATE … WHERE … RETURNING over several shards with two rows of the same {table}.{key}: one Postgres fails it (a row cannot be affected twice); give each row its own key"
        )),
        true => None,
    }
}

/// True when an INSERT row's shard key is NULL in `params`: a key `$n` bound to NULL, or an
/// UNNEST insert whose key array holds a NULL element or is shorter than another array (UNNEST
/// pads it with NULLs).
fn null_key_param(facts: &StatementFacts, params: &dyn ParamSource) -> bool {
    let elements = |n: usize| -> Option<Vec<Option<Vec<u8>>>> {
        let raw = params.raw(n)?;
        Some(pg_array::decode(&raw.value?, raw.binary).ok()?.elements)
    };
    match &facts.key {
        KeyFacts::Values(vals) => vals.iter().any(|v| {
            matches!(v, KeyValue::Param(n) if params.raw(*n).is_some_and(|r| r.value.is_none()))
        }),
        KeyFacts::ArrayParam(n) => {
            let Some(keys) = elements(*n) else {
                return false;
            };
            let longest = facts.unnest.as_ref().map_or(0, |u| {
                u.params
                    .iter()
                    .filter_map(|&p| elements(p).map(|e| e.len()))
                    .max()
                    .unwrap_or(0)
            });
            keys.iter().any(Option::is_none) || keys.len() < longest
        }
        KeyFacts::Unknown => false,
    }
}

/// True when facts of a normalized text cannot stand for the original. A merge plan needs the
/// original too: `ORDER BY 2` and `GROUP BY 1` must not become `$n`.
fn needs_original(facts: &[StatementFacts]) -> bool {
    facts.iter().any(|f| {
        f.local.is_some()
            || f.merge.is_some()
            || f.set_config.is_some()
            || f.set_config_bound.is_some()
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
    use crate::refusal::Refusal;

    fn router() -> Router {
        Router::new(
            &[
                ShardedTableConfig {
                    name: "users".into(),
                    key: "user_id".into(),
                    key_type: None,
                },
                ShardedTableConfig {
                    name: "pgbench_accounts".into(),
                    key: "aid".into(),
                    key_type: None,
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
        assert!(m.contains("users.user_id"), "{m}");
        assert_eq!(
            route_sql(&r, "delete from users where name = 'x'", modulo),
            Route::Scatter(vec![1, 2, 3])
        );
        assert_eq!(
            route_sql(&r, "update users set n = 1 where user_id in (1, 2)", modulo),
            Route::Scatter(vec![2, 3])
        );
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
        assert_eq!(
            route_sql(&r, "create index on users (name)", modulo),
            Route::Broadcast(vec![1, 2, 3])
        );
    }

    #[test]
    fn what_pgbench_sends() {
        let r = Router::new(
            &[
                ("pgbench_accounts", "aid"),
                ("pgbench_branches", "bid"),
                ("pgbench_tellers", "tid"),
                ("pgbench_history", "aid"),
            ]
            .map(|(name, key)| ShardedTableConfig {
                name: name.into(),
                key: key.into(),
                key_type: None,
            }),
            100,
        );
        let map = &maps()[1];
        let all = Route::Broadcast(vec![1, 2, 3]);
        let ntb = |sql: &str| r.analyze_simple(sql).0[0].no_transaction_block;
        // pgbench -i (PostgreSQL 15).
        for sql in [
            "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))",
            "create table pgbench_accounts(aid    int not null,bid int,abalance int,filler char(84)) with (fillfactor=100)",
            "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            "alter table pgbench_branches add primary key (bid)",
            "vacuum analyze pgbench_accounts",
            // the TPC-B run's preparation
            "vacuum pgbench_branches",
            "truncate pgbench_history",
        ] {
            assert_eq!(route_sql(&r, sql, map), all, "{sql}");
        }
        assert!(ntb("vacuum analyze pgbench_accounts"));
        assert!(!ntb("truncate pgbench_history"));
        // COPY rows are split by the caller.
        assert_eq!(
            route_sql(&r, "copy pgbench_accounts from stdin with (freeze on)", map),
            Route::Any
        );
        // TPC-B: one shard per statement.
        for (sql, key) in [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -4000 WHERE aid = 77;",
                77,
            ),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 77;", 77),
            (
                "UPDATE pgbench_tellers SET tbalance = tbalance + -4000 WHERE tid = 7;",
                7,
            ),
            (
                "UPDATE pgbench_branches SET bbalance = bbalance + -4000 WHERE bid = 2;",
                2,
            ),
            (
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 2, 77, -4000, CURRENT_TIMESTAMP);",
                77,
            ),
        ] {
            assert_eq!(
                route_sql(&r, sql, map),
                Route::Single(map.shard_for(key)),
                "{sql}"
            );
        }
    }

    fn with_reference() -> Router {
        router()
            .with_reference_tables(&["countries".to_string(), "public.Currencies".to_string()])
            .with_shards(vec![4, 1, 2, 3])
    }

    #[test]
    fn keyless_and_multi_key_writes() {
        let r = router();
        let modulo = &maps()[2];
        for sql in [
            "delete from users",
            "update users set name = 'x' where name = 'y' returning *",
            "update users set name = 'x' where user_id > 5",
            "delete from users where user_id = any('{1,2,3}')",
        ] {
            assert_eq!(
                route_sql(&r, sql, modulo),
                Route::Scatter(vec![1, 2, 3]),
                "{sql}"
            );
        }
        // Keys on one shard stay single-shard.
        assert_eq!(
            route_sql(&r, "delete from users where user_id in (3, 6)", modulo),
            Route::Single(1)
        );
        // Bind parameters decide at Bind time.
        let facts = r.analyze_prepared("update users set n = 0 where user_id = any($1)");
        let values = [Some(bytes::Bytes::from_static(b"{1,4,3}"))];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert_eq!(
            r.route(&facts[0], &p, modulo, 1),
            Route::Scatter(vec![1, 2])
        );
        // Still refused: a new key value, and inserts whose keys are not known per row.
        let Route::Refuse(m) = route_sql(&r, "update users set user_id = 7", modulo) else {
            panic!()
        };
        assert!(m.contains("UPDATE of shard key users.user_id"), "{m}");
        let Route::Refuse(m) = route_sql(
            &r,
            "insert into users (user_id, name) select 1, 'x'",
            modulo,
        ) else {
            panic!()
        };
        assert!(m.contains("from a SELECT"), "{m}");
    }

    #[test]
    fn multi_row_insert_is_split_by_shard() {
        use split_insert::ShardRows;
        let r = router();
        let modulo = &maps()[2];
        let got = route_sql(
            &r,
            "insert into users (user_id, name) values (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd') returning user_id",
            modulo,
        );
        assert_eq!(
            got,
            Route::SplitInsert(vec![
                ShardRows {
                    shard: 1,
                    rows: vec![2]
                },
                ShardRows {
                    shard: 2,
                    rows: vec![0, 3]
                },
                ShardRows {
                    shard: 3,
                    rows: vec![1]
                },
            ])
        );
        assert_eq!(
            route_sql(
                &r,
                "insert into users (user_id, name) values (1, 'a'), (4, 'b')",
                modulo
            ),
            Route::Single(2)
        );
        // Parameters of a prepared multi-row INSERT resolve at Bind.
        let facts = r.analyze_prepared("insert into users (user_id) values ($1), ($2)");
        let values = [
            Some(bytes::Bytes::from_static(b"3")),
            Some(bytes::Bytes::from_static(b"5")),
        ];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert!(matches!(
            r.route(&facts[0], &p, modulo, 1),
            Route::SplitInsert(plan) if plan.len() == 2
        ));
    }

    #[test]
    fn conflict_update_where_returning_splits_only_by_distinct_keys_in_the_target() {
        let r = router();
        let modulo = &maps()[2];
        let split = |sql: &str| matches!(route_sql(&r, sql, modulo), Route::SplitInsert(_));
        let refused = |sql: &str, needle: &str| match route_sql(&r, sql, modulo) {
            Route::Refuse(m) => assert!(m.contains(needle), "{sql}: {m}"),
            other => panic!("{sql}: {other:?}"),
        };
        let upsert = "insert into users (user_id, n) values (1, 1), (2, 2) on conflict";
        assert!(split(&format!(
            "{upsert} (user_id) do update set n = excluded.n where users.n < excluded.n returning user_id"
        )));
        assert!(split(&format!(
            "{upsert} (name, user_id) do update set n = 0 where users.n > 0 returning *"
        )));
        // Without RETURNING or WHERE, every row is answered for.
        assert!(split(&format!(
            "{upsert} (name) do update set n = 0 where users.n > 0"
        )));
        assert!(split(&format!(
            "{upsert} (name) do update set n = 0 returning *"
        )));
        refused(
            &format!("{upsert} (name) do update set n = 0 where users.n > 0 returning *"),
            "names users.user_id",
        );
        refused(
            &format!("{upsert} on constraint users_pkey do update set n = 0 where users.n > 0 returning *"),
            "names users.user_id",
        );
        refused(
            "insert into users (user_id, n) values (1, 1), (2, 2), (1, 3) on conflict (user_id) do update set n = 0 where users.n > 0 returning *",
            "two rows of the same users.user_id",
        );
    }

    #[test]
    fn ddl_goes_to_every_shard() {
        let r = with_reference();
        let map = &maps()[1];
        let all = Route::Broadcast(vec![1, 2, 3, 4]);
        for sql in [
            "create table users (user_id bigint primary key, name text)",
            "create index concurrently users_name on users (name)",
            "drop table if exists pgbench_accounts, users",
            "alter table pgbench_accounts add primary key (aid)",
            "truncate users, pgbench_accounts",
            "vacuum analyze users",
            "vacuum",
            "analyze",
            "create table countries (code text primary key)",
            "alter table orders_unknown_fk_ok add constraint c foreign key (x) references countries",
        ] {
            let want = if sql.contains("orders_unknown") {
                None
            } else {
                Some(all.clone())
            };
            let got = route_sql(&r, sql, map);
            match want {
                Some(w) => assert_eq!(got, w, "{sql}"),
                None => assert!(matches!(got, Route::Refuse(_)), "{sql}: {got:?}"),
            }
        }
        let Route::Refuse(m) = route_sql(&r, "drop table users, logs", map) else {
            panic!()
        };
        assert!(m.contains("users") && m.contains("logs"), "{m}");
        // Tables the config does not name live on the first shard.
        assert_eq!(
            route_sql(&r, "create table logs (id int)", map),
            Route::Single(1)
        );
        assert_eq!(route_sql(&r, "vacuum logs", map), Route::Single(1));
        // Without configured shards, the map's shards.
        assert_eq!(
            route_sql(&router(), "truncate users", map),
            Route::Broadcast(vec![1, 2, 3])
        );
    }

    #[test]
    fn reference_tables() {
        let r = with_reference();
        let map = &maps()[2];
        let all = Route::Broadcast(vec![1, 2, 3, 4]);
        // Reads: any shard, or the sharded table's shards.
        assert_eq!(route_sql(&r, "select * from countries", map), Route::Any);
        assert_eq!(
            route_sql(&r, "select count(*) from Currencies order by 1", map),
            Route::Any
        );
        assert_eq!(
            route_sql(
                &r,
                "select * from users u join countries c on c.code = u.country where u.user_id = 4",
                map
            ),
            Route::Single(2)
        );
        assert_eq!(
            route_sql(
                &r,
                "select * from users where country in (select code from countries)",
                map
            ),
            Route::Scatter(vec![1, 2, 3])
        );
        assert_eq!(
            route_sql(
                &r,
                "select * from countries c join logs l on l.c = c.code",
                map
            ),
            Route::Single(1)
        );
        // Writes: every shard.
        for sql in [
            "insert into countries (code, name) values ('fr', 'France'), ('de', 'Germany')",
            "update countries set name = 'x' where code = 'fr' returning *",
            "delete from public.countries",
            "insert into countries (code) values ('x') on conflict (code) do nothing",
            "with d as (delete from countries returning code) select * from d",
        ] {
            assert_eq!(route_sql(&r, sql, map), all, "{sql}");
        }
        // Writes that would differ between shards are refused.
        for (sql, needle) in [
            ("insert into countries select * from logs", "logs"),
            (
                "update countries set n = (select count(*) from users)",
                "sharded table users",
            ),
            (
                "insert into countries (code, t) values ('x', now())",
                "now()",
            ),
            (
                "insert into countries (code, t) values ('x', current_timestamp)",
                "CURRENT_TIMESTAMP",
            ),
            ("update countries set id = nextval('s')", "nextval()"),
            ("copy countries from stdin", "COPY FROM"),
        ] {
            let Route::Refuse(m) = route_sql(&r, sql, map) else {
                panic!("{sql}")
            };
            assert!(m.contains(needle), "{sql}: {m}");
        }
        // A sharded write reading a reference table routes by its key.
        assert_eq!(
            route_sql(
                &r,
                "update users u set country = c.code from countries c where u.user_id = 3 and c.name = 'x'",
                map
            ),
            Route::Single(1)
        );
        // Reads that lock rows take them on the lead shard, where writes lock first.
        for sql in [
            "select * from countries where code = 'fr' for update",
            "select code from countries order by code limit 1 for update skip locked",
            "select * from countries for share nowait",
        ] {
            assert_eq!(route_sql(&r, sql, map), Route::Single(1), "{sql}");
            // The lead shard, not where unsharded tables live.
            let (facts, lits) = r.analyze_simple(sql);
            let lead = r.route(&facts[0], &LiteralParams(&lits), map, 3);
            assert_eq!(lead, Route::Single(1), "{sql}");
        }
        // EXPLAIN of a reference write only plans.
        assert_eq!(
            route_sql(&r, "explain delete from countries", map),
            Route::Any
        );
        // New tables made from reference tables live on the first shard.
        assert_eq!(
            route_sql(&r, "select * into newt from countries", map),
            Route::Single(1)
        );
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
        // Functions and types are used on every shard, so every shard gets them.
        assert_eq!(
            route_sql(
                &r,
                "create function f() returns int as 'select 1' language sql",
                map
            ),
            Route::Broadcast(vec![1, 2, 3])
        );
        assert_eq!(route_sql(&r, "create sequence s", map), Route::Single(1));
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

    /// A NULL shard key in an INSERT row is Postgres's not-null violation (23502), written
    /// literally, bound as a parameter, or inside (or padded onto) an UNNEST key array; a row
    /// whose key is an expression stays the 0A000 refusal.
    #[test]
    fn null_insert_keys_are_not_null_violations() {
        let r = router();
        let map = ShardMap::uniform(1, Strategy::Modulo { modulus: 0 }, &[1, 2, 3]);
        let is_null_violation = |route: Route| match route {
            Route::Refuse(text) => Refusal::of_route(text).sqlstate() == "23502",
            _ => false,
        };
        for sql in [
            "insert into users (user_id, name) values (null, 'x')",
            "insert into users (user_id, name) values (NULL::bigint, 'x')",
            "insert into users (user_id, name) values (1, 'a'), (null, 'b')",
        ] {
            let got = route_sql(&r, sql, &map);
            let Route::Refuse(text) = &got else {
                panic!("{sql}: {got:?}");
            };
            assert_eq!(
                text.split(crate::refusal::HINT_SEPARATOR).next(),
                Some(
                    r#"null value in column "user_id" of relation "users" violates not-null constraint"#
                ),
                "{sql}"
            );
            assert!(is_null_violation(got), "{sql}");
        }
        let bind = |sql: &str, values: &[Option<bytes::Bytes>]| {
            let facts = r.analyze_prepared(sql);
            let p = BindParams {
                values,
                formats: &[],
                types: &[],
            };
            r.route(&facts[0], &p, &map, 1)
        };
        let text = |s: &'static str| Some(bytes::Bytes::from_static(s.as_bytes()));
        let values = "insert into users (user_id, name) values ($1, $2)";
        assert!(is_null_violation(bind(values, &[None, text("x")])));
        assert_eq!(bind(values, &[text("4"), None]), Route::Single(2));
        let two_rows = "insert into users (user_id, name) values ($1, 'a'), ($2, 'b')";
        assert!(is_null_violation(bind(two_rows, &[text("1"), None])));
        let unnest =
            "insert into users (user_id, name) select * from unnest($1::bigint[], $2::text[])";
        assert!(is_null_violation(bind(
            unnest,
            &[text("{1,NULL}"), text("{a,b}")]
        )));
        // A shorter key array is padded with NULLs: on one shard Postgres reports it itself.
        assert!(is_null_violation(bind(
            unnest,
            &[text("{1,2}"), text("{a,b,c}")]
        )));
        assert_eq!(
            bind(unnest, &[text("{1}"), text("{a,b}")]),
            Route::Single(2)
        );
        assert!(matches!(
            bind(unnest, &[text("{1,2}"), text("{a,NULL}")]),
            Route::SplitInsert(_)
        ));
        // An expression as the key is still not routable: 0A000.
        let got = route_sql(
            &r,
            "insert into users (user_id, name) values (1 + 1, 'x'), (3, 'y')",
            &map,
        );
        assert!(matches!(&got, Route::Refuse(_)) && !is_null_violation(got));
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

    fn typed_router() -> Router {
        Router::new(
            &[
                ("accounts", "id", KeyType::Uuid),
                ("tenants", "name", KeyType::Text),
            ]
            .map(|(name, key, ty)| ShardedTableConfig {
                name: name.into(),
                key: key.into(),
                key_type: Some(ty),
            }),
            100,
        )
    }

    #[test]
    fn uuid_and_text_keys_route_by_their_postgres_hash() {
        let r = typed_router();
        let map = ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3, 4]);
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let ub = key_type::parse_uuid(u).unwrap();
        let on = |k: ShardKey| Route::Single(map.shard_of(&k));
        let uk = on(ShardKey::Uuid(ub));
        // Literals in every spelling Postgres accepts, cast or not.
        for sql in [
            format!("select * from accounts where id = '{u}'"),
            format!("select * from accounts where id = '{u}'::uuid"),
            format!(
                "select * from accounts where id = '{{{}}}'",
                u.to_uppercase()
            ),
            format!("select * from accounts where id = '{}'", u.replace('-', "")),
            format!("select * from accounts where id in ('{u}')"),
            format!("select * from accounts where id = any('{{{u}}}')"),
        ] {
            assert_eq!(route_sql(&r, &sql, &map), uk, "{sql}");
        }
        assert_eq!(
            route_sql(&r, "select * from tenants where name = 'abc'", &map),
            on(ShardKey::Text("abc".into()))
        );
        // Bind parameters: text and binary uuid, text and binary text, arrays of both.
        let facts = r.analyze_prepared("select * from accounts where id = $1");
        for (value, format) in [(u.as_bytes().to_vec(), 0i16), (ub.to_vec(), 1)] {
            let values = [Some(bytes::Bytes::from(value))];
            let p = BindParams {
                values: &values,
                formats: &[format],
                types: &[],
            };
            assert_eq!(r.route(&facts[0], &p, &map, 1), uk);
        }
        let facts = r.analyze_prepared("select * from tenants where name = $1");
        for format in [0i16, 1] {
            let values = [Some(bytes::Bytes::from_static("Grüße".as_bytes()))];
            let p = BindParams {
                values: &values,
                formats: &[format],
                types: &[],
            };
            assert_eq!(
                r.route(&facts[0], &p, &map, 1),
                on(ShardKey::Text("Grüße".into()))
            );
        }
        let names: Vec<String> = (0..40).map(|i| format!("tenant-{i}")).collect();
        let want: Vec<u32> = names
            .iter()
            .map(|n| map.shard_of(&ShardKey::Text(n.clone())))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        assert!(want.len() > 1);
        let facts = r.analyze_prepared("select * from tenants where name = any($1)");
        let elems: Vec<Option<&[u8]>> = names.iter().map(|n| Some(n.as_bytes())).collect();
        for format in [
            pg_array::ArrayFormat::Text,
            pg_array::ArrayFormat::Binary { element_type: 25 },
        ] {
            let values = [Some(bytes::Bytes::from(pg_array::encode(format, &elems)))];
            let binary = matches!(format, pg_array::ArrayFormat::Binary { .. });
            let p = BindParams {
                values: &values,
                formats: &[binary as i16],
                types: &[],
            };
            assert_eq!(
                r.route(&facts[0], &p, &map, 1),
                Route::Scatter(want.clone())
            );
        }
        // A multi-row INSERT is split by each row's hash.
        let sql = format!(
            "insert into tenants (name) values {}",
            names
                .iter()
                .map(|n| format!("('{n}')"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Route::SplitInsert(plan) = route_sql(&r, &sql, &map) else {
            panic!("not split")
        };
        for part in plan {
            for row in part.rows {
                assert_eq!(
                    map.shard_of(&ShardKey::Text(names[row].clone())),
                    part.shard
                );
            }
        }
        // Not a uuid: no key, so a keyless read (Postgres reports the bad input).
        assert_eq!(
            route_sql(&r, "select * from accounts where id = 'nope'", &map),
            Route::Scatter(vec![1, 2, 3, 4])
        );
        // An INSERT of a key that is no uuid (a literal, a number, a parameter, in any row): one
        // shard reports Postgres's input error; an expression stays refused.
        for sql in [
            "insert into accounts (id) values ('nope')",
            "insert into accounts (id) values (5)",
            &format!("insert into accounts (id) values ('{u}'), ('nope')"),
        ] {
            assert_eq!(route_sql(&r, sql, &map), Route::Single(1), "{sql}");
        }
        let facts = r.analyze_prepared("insert into accounts (id, n) values ($1, $2)");
        let values = [Some(bytes::Bytes::from_static(b"not-a-uuid")), None];
        let p = BindParams {
            values: &values,
            formats: &[0],
            types: &[],
        };
        assert_eq!(r.route(&facts[0], &p, &map, 1), Route::Single(1));
        assert!(matches!(
            route_sql(
                &r,
                "insert into accounts (id) values (md5('x')::uuid)",
                &map
            ),
            Route::Refuse(_)
        ));
    }

    #[test]
    fn uuid_keys_on_a_range_map_are_refused() {
        let r = typed_router();
        let map = ShardMap::uniform(1, Strategy::Range, &[1, 2]);
        let Route::Refuse(m) = route_sql(
            &r,
            "select * from accounts where id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            &map,
        ) else {
            panic!("not refused")
        };
        assert!(m.contains("uuid keys need the hash strategy"), "{m}");
    }

    #[test]
    fn routing_hints_in_the_leading_comment() {
        let r = router().with_shards(vec![1, 2, 3]);
        let map = ShardMap::uniform(1, Strategy::Hash, &[1, 2, 3]);
        // A function call names no table: without a hint it goes to any shard.
        assert_eq!(route_sql(&r, "select account_total(42)", &map), Route::Any);
        assert_eq!(
            route_sql(&r, "/* pgshard: shard=3 */ select account_total(42)", &map),
            Route::Single(3)
        );
        assert_eq!(
            route_sql(&r, "/* pgshard: key=42 */ select account_total(42)", &map),
            Route::Single(map.shard_for(42))
        );
        // A view over a sharded table (unknown to the router) goes where the hint says.
        assert_eq!(
            route_sql(
                &r,
                "/* pgshard: key=7 */ select * from user_totals where uid = 7",
                &map
            ),
            Route::Single(map.shard_for(7))
        );
        // A hint that agrees with the statement's key is fine; one that contradicts it is not.
        let own = map.shard_for(5);
        assert_eq!(
            route_sql(
                &r,
                &format!("/* pgshard: shard={own} */ select * from users where user_id = 5"),
                &map
            ),
            Route::Single(own)
        );
        let other = [1, 2, 3].into_iter().find(|&s| s != own).unwrap();
        let Route::Refuse(m) = route_sql(
            &r,
            &format!("/* pgshard: shard={other} */ select * from users where user_id = 5"),
            &map,
        ) else {
            panic!("a contradicting hint must be refused")
        };
        assert!(m.contains("statement's own key is on shard"), "{m}");
        assert_eq!(
            crate::refusal::Refusal::of_route(m.as_str()).sqlstate(),
            "22023"
        );
        // Extended protocol: the key is a parameter, checked at Bind.
        let facts = r.analyze_prepared(&format!(
            "/* pgshard: shard={other} */ select * from users where user_id = $1"
        ));
        let values = [Some(bytes::Bytes::from_static(b"5"))];
        let p = BindParams {
            values: &values,
            formats: &[],
            types: &[],
        };
        assert!(matches!(r.route(&facts[0], &p, &map, 1), Route::Refuse(_)));
        // Unknown shards and malformed hints: 22023.
        for sql in [
            "/* pgshard: shard=9 */ select f()",
            "/* pgshard: shard=x */ select f()",
            "/* pgshard: key=abc */ select f()",
        ] {
            let Route::Refuse(m) = route_sql(&r, sql, &map) else {
                panic!("{sql} must be refused")
            };
            assert_eq!(
                crate::refusal::Refusal::of_route(m.as_str()).sqlstate(),
                "22023",
                "{sql}: {m}"
            );
        }
        // DDL must reach every shard: a hint cannot narrow it.
        assert!(matches!(
            route_sql(
                &r,
                "/* pgshard: shard=1 */ create index on users (name)",
                &map
            ),
            Route::Refuse(_)
        ));
        // Typed keys: a uuid hint on a uuid-keyed deployment.
        let t = Router::new(
            &[ShardedTableConfig {
                name: "accounts".into(),
                key: "id".into(),
                key_type: Some(KeyType::Uuid),
            }],
            10,
        )
        .with_shards(vec![1, 2, 3]);
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(
            route_sql(
                &t,
                &format!("/* pgshard: key='{u}'::uuid */ select f()"),
                &map
            ),
            Route::Single(map.shard_of(&ShardKey::Uuid(key_type::parse_uuid(u).unwrap())))
        );
    }
}
