//! The session's side of an UNNEST insert that omits the shard key (see
//! `router::unnest_keys`): count its rows from the client's arrays, take that many generated
//! keys, add them as a key array, and run it as an UNNEST insert split by key, whose RETURNING
//! rows come back in the client's row order.

use std::sync::Arc;

use super::session::{refusal, End, Session};
use crate::router::literals::{Literal, LiteralParams};
use crate::router::params::{BindParams, ParamSource};
use crate::router::split_insert::{rows_by_shard_key, ShardRows};
use crate::router::unnest_keys::{add_key, formats_plus_text, key_array_text, rows};
use crate::router::{Route, ShardKey, ShardMap, StatementFacts};
use crate::session::Prepared;
use crate::wire::backend::ErrorFields;
use crate::wire::frontend::Bind;

/// The table, key column and row count of an UNNEST insert that needs generated keys; `None`
/// for any other statement (or arrays that cannot be read: the insert then fails on them).
pub fn keys_needed(
    facts: &[StatementFacts],
    params: &dyn ParamSource,
) -> Option<(String, String, usize)> {
    let [f] = facts else { return None };
    let args = f.unnest_keyless.as_ref()?;
    let (table, key) = f.shard_key.clone()?;
    Some((table, key, rows(args, params).ok()?))
}

/// Adds `more` to the keys a request needs, per table.
pub fn add_needed(needed: &mut Vec<(String, String, usize)>, more: (String, String, usize)) {
    match needed.iter_mut().find(|(t, _, _)| *t == more.0) {
        Some(entry) => entry.2 += more.2,
        None => needed.push(more),
    }
}

/// Rows by shard for `keys`; no rows at all still run once, on the first shard, so the client
/// gets the statement's own answer (`INSERT 0 0`, and the RETURNING columns when described).
fn plan_for(keys: &[ShardKey], map: &ShardMap, first_shard: u32) -> Vec<ShardRows> {
    let plan = rows_by_shard_key(keys, map);
    if plan.is_empty() {
        let shard = map.shards().first().copied().unwrap_or(first_shard);
        return vec![ShardRows {
            shard,
            rows: Vec::new(),
        }];
    }
    plan
}

/// The keys made for one UNNEST insert and how they are spliced in.
struct GeneratedKeys {
    /// The shard key column added to the column list.
    column: String,
    /// `bigint[]` or `uuid[]`: the key array's cast.
    array_type: String,
    keys: Vec<ShardKey>,
    overriding: bool,
}

impl Session {
    /// Generated keys for `facts`' table: its key column, `rows` keys (integers or UUIDv7s),
    /// the array cast they are spliced in with, and whether the INSERT needs
    /// `OVERRIDING SYSTEM VALUE`.
    fn unnest_keys(
        &mut self,
        facts: &StatementFacts,
        rows: usize,
    ) -> Result<GeneratedKeys, ErrorFields> {
        let Some((table, key)) = facts.shard_key.clone() else {
            return Err(refusal(
                "an UNNEST insert without the shard key names no sharded table",
            ));
        };
        let keys = self.take_new_key_values(&table, rows)?;
        Ok(GeneratedKeys {
            column: key,
            array_type: format!("{}[]", facts.key_type.sql_name()),
            keys: keys.keys,
            overriding: keys.overriding,
        })
    }

    /// Runs a simple-protocol UNNEST insert that omits the shard key (`facts`, with its
    /// extracted `literals`): its keys are reserved, spliced in as an array literal, and the
    /// rows split by them.
    pub async fn run_unnest_keyless_simple(
        &mut self,
        sql: &str,
        facts: &StatementFacts,
        literals: &[Literal],
    ) -> Result<(), End> {
        let params = LiteralParams(literals);
        let prepared = match keys_needed(std::slice::from_ref(facts), &params) {
            Some(needed) => {
                let rows = needed.2;
                self.reserve_keys(vec![needed]).await;
                self.keyed_simple_text(sql, facts, rows)
            }
            None => {
                let args = facts.unnest_keyless.as_deref().unwrap_or_default();
                Err(match rows(args, &params) {
                    Err(e) => refusal(e.to_string()),
                    Ok(_) => {
                        refusal("an UNNEST insert without the shard key names no sharded table")
                    }
                })
            }
        };
        match prepared {
            Ok((text, unnest, plan)) => self.run_unnest_insert_simple(&text, &unnest, &plan).await,
            Err(fields) => {
                self.reply_error(fields);
                Ok(())
            }
        }
    }

    fn keyed_simple_text(
        &mut self,
        sql: &str,
        facts: &StatementFacts,
        rows: usize,
    ) -> Result<
        (
            String,
            crate::router::unnest_insert::UnnestInsert,
            Vec<ShardRows>,
        ),
        ErrorFields,
    > {
        let new = self.unnest_keys(facts, rows)?;
        let arg = format!("'{}'::{}", key_array_text(&new.keys), new.array_type);
        let text =
            add_key(sql, &new.column, &arg, new.overriding).map_err(|e| refusal(e.to_string()))?;
        let (keyed, _) = self
            .proxy
            .router
            .analyze_simple_in(&text, &self.search_path());
        let unnest = keyed
            .first()
            .and_then(|f| f.unnest.clone())
            .ok_or_else(|| {
                refusal("the UNNEST insert with generated keys is not an UNNEST insert")
            })?;
        let map = self.proxy.map.current();
        Ok((
            text,
            unnest,
            plan_for(&new.keys, &map, self.proxy.first_shard),
        ))
    }

    /// An extended-protocol Bind of an UNNEST insert that omits the shard key: the statement
    /// with a key array parameter added (`$n+1`, text), the Bind carrying the generated keys
    /// (reserved for the batch), and the split of the rows by them.
    pub fn bind_unnest_keyless(
        &mut self,
        bind: &Bind,
        statement: &Prepared,
        map: &ShardMap,
    ) -> Result<(Bind, Arc<Prepared>, Route), ErrorFields> {
        let Some(facts) = statement.facts.first() else {
            return Err(refusal("an UNNEST insert without its statement"));
        };
        let args = facts.unnest_keyless.as_deref().unwrap_or_default();
        let params = BindParams {
            values: &bind.params,
            formats: &bind.param_formats,
            types: &statement.param_types,
        };
        let rows = rows(args, &params).map_err(|e| refusal(e.to_string()))?;
        let new = self.unnest_keys(facts, rows)?;
        let n = bind.params.len();
        let arg = format!("${}::{}", n + 1, new.array_type);
        let sql = add_key(&statement.sql, &new.column, &arg, new.overriding)
            .map_err(|e| refusal(e.to_string()))?;
        let keyed = self
            .proxy
            .router
            .analyze_prepared_in(&sql, &self.search_path());
        if keyed.first().and_then(|f| f.unnest.as_ref()).is_none() {
            return Err(refusal(
                "the UNNEST insert with generated keys is not an UNNEST insert",
            ));
        }
        let mut param_types = statement.param_types.clone();
        param_types.resize(n, 0);
        param_types.push(0);
        let mut bound = bind.clone();
        bound.param_formats = formats_plus_text(&bind.param_formats, n);
        bound
            .params
            .push(Some(bytes::Bytes::from(key_array_text(&new.keys))));
        let prepared = Arc::new(Prepared {
            sql,
            param_types,
            facts: keyed,
            server_name: String::new(),
        });
        let plan = plan_for(&new.keys, map, self.proxy.first_shard);
        Ok((bound, prepared, Route::SplitInsert(plan)))
    }
}
