//! The session's side of `[[lookups]]` (see `config/lookups.rs`, `router::lookup`,
//! `exec::lookup`): a read that pins a looked-up column asks the lookup table where its rows live
//! and runs there; a write that gives rows a value of it claims the value in the lookup table, in
//! the write's own transaction (two-phase commit when the lookup row lives on another shard).

use crate::config::lookups::LookupConfig;
use crate::exec::exchange::{Expect, Step};
use crate::exec::lookup as sql;
use crate::frontend::session::{refusal, Session};
use crate::router::facts::KeyValue;
use crate::router::lookup::{self, Claim, Target};
use crate::router::names::split_config_name;
use crate::router::{KeyType, ParamSource, Route, ShardKey, StatementFacts, StatementKind};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frontend as fe;

/// One configured lookup with what running it needs.
struct Looked {
    config: LookupConfig,
    target: Target,
    /// The base table's shard-key type.
    key_type: KeyType,
    /// The looked-up column's type (the lookup table's key type).
    value_type: KeyType,
}

/// A claim with its values read: `value` goes to the row keyed `key`.
pub struct ResolvedClaim {
    lookup: usize,
    value: ShardKey,
    key: ShardKey,
}

fn resolve(v: &KeyValue, ty: KeyType, params: &dyn ParamSource) -> Option<ShardKey> {
    match v {
        KeyValue::Const(i) => ty.parse_text(&i.to_string()),
        KeyValue::Text(t) => ty.parse_text(t),
        KeyValue::Param(n) => params.key(*n, ty),
    }
}

/// True when `v` is a `$n` bound to NULL.
fn is_null(v: &KeyValue, params: &dyn ParamSource) -> bool {
    match v {
        KeyValue::Param(n) => params.raw(*n).is_some_and(|r| r.value.is_none()),
        _ => false,
    }
}

fn answer_error(shard: u32) -> ErrorFields {
    ErrorFields::error(
        "XX000",
        format!("shard {shard} answered a lookup with a malformed row"),
    )
}

impl Session {
    /// The configured lookups, with their key types as resolved at start-up.
    fn lookups(&self) -> Vec<Looked> {
        let config = &self.proxy.config;
        let type_of = |name: &str| {
            config
                .sharded_tables
                .iter()
                .find(|t| split_config_name(&t.name) == split_config_name(name))
                .map(|t| (t.key.clone(), t.key_type.unwrap_or_default()))
        };
        config
            .lookups
            .iter()
            .filter_map(|l| {
                let (key, key_type) = type_of(&l.table)?;
                let (_, value_type) = type_of(&l.lookup_table())?;
                Some(Looked {
                    target: Target::new(&l.table, &l.column, &key),
                    config: l.clone(),
                    key_type,
                    value_type,
                })
            })
            .collect()
    }

    /// Where a keyless read of a looked-up column runs: the shards the lookup rows of its values
    /// name; `None` (the read scatters as before) when it is not such a read or a value has no
    /// lookup row. The lookup is read inside the client's block on the shards it holds.
    pub async fn lookup_route(
        &mut self,
        sql_text: &str,
        facts: Option<&StatementFacts>,
        params: &(dyn ParamSource + Sync),
    ) -> Result<Option<Route>, ErrorFields> {
        let Some(facts) = facts else {
            return Ok(None);
        };
        if self.proxy.config.lookups.is_empty()
            || facts.kind != StatementKind::Select
            || facts.key_values_named()
            || facts.refuse.is_some()
            || facts.hint.is_some()
            || facts.schema_shard.is_some()
            || facts.cursor.is_some()
            || facts.local.is_some()
            || facts.unsharded
            || facts.reference
            || self.state.open_batch_shard.is_some()
            || self.route_hint_applies(facts)
        {
            return Ok(None);
        }
        let Some((table, _)) = facts.shard_key.as_ref() else {
            return Ok(None);
        };
        let lookups = self.lookups();
        let Some((looked, read)) = lookups
            .iter()
            .filter(|l| &l.config.display_table() == table)
            .find_map(|l| lookup::read(sql_text, &l.target).map(|r| (l, r)))
        else {
            return Ok(None);
        };
        let values: Option<Vec<ShardKey>> = read
            .values
            .iter()
            .map(|v| resolve(v, looked.value_type, params))
            .collect();
        let Some(values) = values else {
            return Ok(None);
        };
        let map = self.proxy.map.current();
        let mut by_shard: std::collections::BTreeMap<u32, Vec<ShardKey>> = Default::default();
        for v in values {
            by_shard.entry(map.shard_of(&v)).or_default().push(v);
        }
        let shards: Vec<u32> = by_shard.keys().copied().collect();
        for &shard in &shards {
            self.ensure_conn(shard, false).await?;
        }
        let table_sql = looked.config.lookup_table_sql();
        let answers = self
            .run_collected(&shards, |conn| {
                let values = by_shard.get(&conn.shard).cloned().unwrap_or_default();
                vec![Step::Send {
                    frame: fe::query(&sql::read_sql(&table_sql, &values)),
                    expect: Expect::Query,
                    forward: true,
                }]
            })
            .await;
        self.release_idle();
        let mut found = 0usize;
        let mut targets = std::collections::BTreeSet::new();
        for answer in &answers {
            if let Some(e) = answer.error() {
                return Err(e);
            }
            for frame in answer.frames.iter().filter(|f| f.tag == be::DATA_ROW) {
                let cols =
                    sql::text_columns(&frame.body).ok_or_else(|| answer_error(answer.shard))?;
                let key = cols
                    .get(1)
                    .and_then(|k| looked.key_type.parse_text(k))
                    .ok_or_else(|| answer_error(answer.shard))?;
                found += 1;
                targets.insert(map.shard_of(&key));
            }
        }
        let distinct: std::collections::HashSet<&ShardKey> = by_shard.values().flatten().collect();
        if found < distinct.len() {
            // A value without a lookup row (written before the lookup existed, or by another
            // writer): only a scatter is sure to find its rows.
            return Ok(None);
        }
        Ok(Some(match targets.len() {
            1 => Route::Single(targets.into_iter().next().unwrap_or(self.proxy.first_shard)),
            _ => Route::Scatter(targets.into_iter().collect()),
        }))
    }

    /// The lookup claims of the writes of `sql_text`, their values read from `params`; `Err`
    /// (a refusal) for a write pgshard cannot keep the lookup right for.
    pub fn lookup_claims(
        &self,
        sql_text: &str,
        facts: &[StatementFacts],
        params: &(dyn ParamSource + Sync),
    ) -> Result<Vec<ResolvedClaim>, ErrorFields> {
        if self.proxy.config.lookups.is_empty()
            || !facts.iter().any(|f| {
                f.sharded
                    && matches!(
                        f.kind,
                        StatementKind::Insert
                            | StatementKind::Update
                            | StatementKind::Copy { .. }
                            | StatementKind::Other
                    )
            })
        {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (i, looked) in self.lookups().iter().enumerate() {
            let claims = lookup::claims(sql_text, &looked.target).map_err(refusal)?;
            for Claim { value, key } in claims {
                let claim_value = value.clone();
                let value = resolve(&value, looked.value_type, params);
                let key = resolve(&key, looked.key_type, params);
                match (value, key) {
                    (Some(value), Some(key)) => out.push(ResolvedClaim { lookup: i, value, key }),
                    // A NULL value has no lookup row.
                    (None, _) if is_null(&claim_value, params) => {}
                    _ => {
                        return Err(refusal(format!(
                            "a write of {}.{} whose value or {} pgshard cannot read (pgshard keeps the lookup of {}.{})",
                            looked.config.table, looked.config.column, looked.target.key, looked.config.table, looked.config.column
                        )))
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Session {
    /// The route a frontend lookup gives a statement: the index owner's (a statement naming an
    /// index), else the `[[lookups]]` one (a keyless read of a looked-up column).
    pub async fn looked_up_route(
        &mut self,
        sql_text: &str,
        facts: Option<&StatementFacts>,
        params: &(dyn ParamSource + Sync),
    ) -> Result<Option<Route>, ErrorFields> {
        self.choose_group_names(facts).await?;
        match self.index_owner_route_of(facts).await? {
            Some(route) => Ok(Some(route)),
            None => self.lookup_route(sql_text, facts, params).await,
        }
    }

    /// Runs `sql_text` on `shard` alone (on the held connection), its answer collected.
    pub(in crate::frontend) async fn lookup_exchange(
        &mut self,
        shard: u32,
        join_txn: bool,
        sql_text: &str,
    ) -> Result<Vec<Vec<String>>, ErrorFields> {
        self.ensure_conn(shard, join_txn).await?;
        let frame = fe::query(sql_text);
        let mut answers = self
            .run_collected(&[shard], |_| {
                vec![Step::Send {
                    frame: frame.clone(),
                    expect: Expect::Query,
                    forward: true,
                }]
            })
            .await;
        let answer = answers
            .pop()
            .ok_or_else(|| ErrorFields::error("XX000", "server connection vanished"))?;
        if let Some(e) = answer.error() {
            return Err(e);
        }
        answer
            .frames
            .iter()
            .filter(|f| f.tag == be::DATA_ROW)
            .map(|f| sql::text_columns(&f.body).ok_or_else(|| answer_error(shard)))
            .collect()
    }

    /// Claims each value for its row in the open block (the caller opened one): the lookup row
    /// is inserted, kept, or moved from a row that no longer holds the value; a value another
    /// row holds is a unique violation, as a unique index on one Postgres reports it.
    pub async fn run_lookup_claims(&mut self, claims: &[ResolvedClaim]) -> Result<(), ErrorFields> {
        let lookups = self.lookups();
        let mut seen = std::collections::HashMap::new();
        for c in claims {
            if let Some(prev) = seen.insert((c.lookup, c.value.clone()), c.key.clone()) {
                if prev != c.key {
                    let l = &lookups[c.lookup];
                    return Err(sql::duplicate(
                        &l.config.lookup_table(),
                        &l.target.column,
                        &value_text(&c.value),
                    ));
                }
            }
        }
        let map = self.proxy.map.current();
        for c in claims {
            let Some(l) = lookups.get(c.lookup) else {
                continue;
            };
            let table = l.config.lookup_table_sql();
            let home = map.shard_of(&c.value);
            let old = self
                .lookup_exchange(home, true, &sql::claim_sql(&table, &c.value, &c.key))
                .await?;
            let Some(old) = old.first().and_then(|r| r.first()) else {
                continue;
            };
            let old = l
                .key_type
                .parse_text(old)
                .ok_or_else(|| answer_error(home))?;
            if old == c.key {
                continue;
            }
            let base = crate::router::names::quote_config_name(&l.config.table);
            let holds = sql::holds_sql(&base, &l.target.key, &l.target.column, &old, &c.value);
            if !self
                .lookup_exchange(map.shard_of(&old), false, &holds)
                .await?
                .is_empty()
            {
                return Err(sql::duplicate(
                    &l.config.lookup_table(),
                    &l.target.column,
                    &value_text(&c.value),
                ));
            }
            self.lookup_exchange(home, true, &sql::move_sql(&table, &c.value, &c.key))
                .await?;
        }
        self.release_idle();
        Ok(())
    }

    /// The simple-protocol side: claims the lookup values the statements of `sql_text` write,
    /// then lets them run. Outside a block they run in turn inside an implicit one (each claims
    /// its values first), which commits with two phases when the lookup rows live elsewhere.
    /// True when the client has its answer.
    pub async fn lookup_writes_simple(
        &mut self,
        sql_text: &str,
        facts: &[StatementFacts],
    ) -> Result<bool, super::super::session::End> {
        let claims = match self.lookup_claims(sql_text, facts, &crate::router::params::NoParams) {
            Ok(c) => c,
            Err(fields) => {
                self.reply_error(fields);
                return Ok(true);
            }
        };
        if claims.is_empty() || self.block_failed() {
            return Ok(false);
        }
        if self.state.txn.is_none() {
            self.run_in_turn(sql_text, facts.len()).await?;
            return Ok(true);
        }
        if let Err(fields) = self.run_lookup_claims(&claims).await {
            self.reply_error(fields);
            return Ok(true);
        }
        Ok(false)
    }
}

/// A value as a unique violation's detail writes it.
fn value_text(v: &ShardKey) -> String {
    match v {
        ShardKey::Int(i) => i.to_string(),
        ShardKey::Uuid(u) => crate::router::key_type::format_uuid(u),
        ShardKey::Text(t) => t.clone(),
    }
}

impl Session {
    /// The lookup claims of one Bind (its statement's writes, its parameter values).
    pub(in crate::frontend) fn lookup_claims_of_bind(
        &self,
        statement: &crate::session::Prepared,
        bind: &crate::wire::frontend::Bind,
    ) -> Result<Vec<ResolvedClaim>, ErrorFields> {
        let params = crate::router::params::BindParams {
            values: &bind.params,
            formats: &bind.param_formats,
            types: &statement.param_types,
        };
        self.lookup_claims(&statement.sql, &statement.facts, &params)
    }

    /// [`Session::looked_up_route`] of one Bind.
    pub(in crate::frontend) async fn looked_up_route_of_bind(
        &mut self,
        statement: &crate::session::Prepared,
        bind: &crate::wire::frontend::Bind,
    ) -> Result<Option<Route>, ErrorFields> {
        let params = crate::router::params::BindParams {
            values: &bind.params,
            formats: &bind.param_formats,
            types: &statement.param_types,
        };
        let facts = statement.facts.first();
        self.looked_up_route(&statement.sql, facts, &params).await
    }

    /// The extended-protocol side: claims the batch's lookup values in its block (the client's,
    /// or an implicit one that commits at the Sync, two-phase when several shards joined), then
    /// runs the batch unit by unit inside it.
    pub(in crate::frontend) async fn run_batch_with_claims(
        &mut self,
        msgs: Vec<crate::frontend::extended::Msg>,
        routes: Vec<Option<Route>>,
        claims: Vec<ResolvedClaim>,
        sync: bool,
    ) -> Result<(), super::super::session::End> {
        if self.state.open_batch_shard.is_some() {
            let fields = refusal(
                "a write of a looked-up column cannot join an implicit transaction that a Flush left open on one shard: send Sync first",
            );
            return self.refuse_batch(fields, sync).await;
        }
        let opened = self.begin_implicit_block();
        if let Err(fields) = self.run_lookup_claims(&claims).await {
            if opened {
                self.finish_implicit_block(false).await?;
            }
            return self.refuse_batch(fields, sync).await;
        }
        self.run_pipeline(msgs, routes, None, sync).await
    }
}
