//! `pgshard lookup backfill`: fills the `[[lookups]]` tables for rows that existed before the
//! lookup did (or were written around pgshard), shard by shard in key order, batch by batch,
//! printing progress. A value whose lookup row names another key is moved only when that key's
//! row no longer holds the value (as a write's claim does); a value two rows hold is reported as
//! a duplicate and the command fails, since the column is not unique and reads through the lookup
//! would be wrong.

use std::collections::BTreeMap;
use std::io::Write;

use tokio_postgres::Client;

use super::shards::connect;
use super::RebalanceError;
use crate::config::lookups::{LookupConfig, KEY_COLUMN, VALUE_COLUMN};
use crate::config::Config;
use crate::router::names::{quote_config_name, split_config_name};
use crate::router::{KeyType, ShardKey, ShardMap};
use crate::sql_text::{quote_ident, quote_literal};

/// Rows read from a base shard per batch.
const BATCH: i64 = 1000;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backfill {
    /// Base rows read.
    pub rows: u64,
    /// Lookup rows inserted or moved.
    pub written: u64,
    /// Values held by two rows, as `table.column = value`.
    pub duplicates: Vec<String>,
}

fn key_type_of(config: &Config, name: &str) -> KeyType {
    config
        .sharded_tables
        .iter()
        .find(|t| split_config_name(&t.name) == split_config_name(name))
        .and_then(|t| t.key_type)
        .unwrap_or_default()
}

/// Backfills every lookup of `config` under `map`; progress lines go to `out`.
pub async fn backfill(
    config: &Config,
    map: &ShardMap,
    out: &mut (impl Write + Send),
) -> Result<Backfill, RebalanceError> {
    let mut clients = BTreeMap::new();
    for shard in &config.shards {
        clients.insert(shard.id, connect(config, shard.id).await?);
    }
    let mut done = Backfill::default();
    for l in &config.lookups {
        let base = config
            .sharded_tables
            .iter()
            .find(|t| split_config_name(&t.name) == split_config_name(&l.table))
            .ok_or_else(|| RebalanceError::Config(format!("{} is not sharded", l.table)))?;
        for (&shard, client) in &clients {
            let before = done.rows;
            backfill_shard(
                config, map, l, &base.key, shard, client, &clients, &mut done,
            )
            .await?;
            let _ = writeln!(
                out,
                "lookup {}.{}: shard {shard}: {} row(s) read, {} lookup row(s) written so far",
                l.table,
                l.column,
                done.rows - before,
                done.written
            );
        }
    }
    Ok(done)
}

#[allow(clippy::too_many_arguments)]
async fn backfill_shard(
    config: &Config,
    map: &ShardMap,
    l: &LookupConfig,
    key: &str,
    shard: u32,
    client: &Client,
    clients: &BTreeMap<u32, Client>,
    done: &mut Backfill,
) -> Result<(), RebalanceError> {
    if !super::shards::table_exists(client, shard, &quote_config_name(&l.table)).await? {
        return Ok(());
    }
    let base = quote_config_name(&l.table);
    let lookup = l.lookup_table_sql();
    let (k, c) = (quote_ident(key), quote_ident(&l.column_name()));
    let key_type = key_type_of(config, &l.table);
    let value_type = key_type_of(config, &l.lookup_table());
    let mut after: Option<String> = None;
    loop {
        let from = after
            .as_ref()
            .map(|a| format!("AND {k} > {}", quote_literal(a)))
            .unwrap_or_default();
        let sql = format!(
            "SELECT {c}::text AS lookup_value, {k}::text AS lookup_key FROM {base} WHERE {c} IS NOT NULL {from} ORDER BY {k} LIMIT {BATCH}"
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(RebalanceError::shard(shard))?;
        if rows.is_empty() {
            return Ok(());
        }
        done.rows += rows.len() as u64;
        let mut by_home: BTreeMap<u32, Vec<(ShardKey, ShardKey)>> = BTreeMap::new();
        for row in &rows {
            let (v, kv): (String, String) = (row.get(0), row.get(1));
            let (Some(value), Some(keyv)) = (value_type.parse_text(&v), key_type.parse_text(&kv))
            else {
                return Err(RebalanceError::Refused(format!(
                    "shard {shard}: {}: cannot read value {v} or key {kv}",
                    l.table
                )));
            };
            by_home
                .entry(map.shard_of(&value))
                .or_default()
                .push((value, keyv));
            after = Some(kv);
        }
        for (home, pairs) in by_home {
            let Some(home_client) = clients.get(&home) else {
                continue;
            };
            for (value, keyv) in pairs {
                let (vl, kl) = (value.sql_literal(), keyv.sql_literal());
                let inserted = home_client
                    .execute(
                        &format!(
                            "INSERT INTO {lookup} ({VALUE_COLUMN}, {KEY_COLUMN}) VALUES ({vl}, {kl}) ON CONFLICT ({VALUE_COLUMN}) DO NOTHING"
                        ),
                        &[],
                    )
                    .await
                    .map_err(RebalanceError::shard(home))?;
                if inserted == 1 {
                    done.written += 1;
                    continue;
                }
                let old: String = home_client
                    .query_one(
                        &format!(
                            "SELECT {KEY_COLUMN}::text FROM {lookup} WHERE {VALUE_COLUMN} = {vl}"
                        ),
                        &[],
                    )
                    .await
                    .map_err(RebalanceError::shard(home))?
                    .get(0);
                let Some(old) = key_type.parse_text(&old) else {
                    continue;
                };
                if old == keyv {
                    continue;
                }
                let owner = map.shard_of(&old);
                let holds = match clients.get(&owner) {
                    Some(oc) => !oc
                        .query(
                            &crate::exec::lookup::holds_sql(
                                &base,
                                key,
                                &l.column_name(),
                                &old,
                                &value,
                            ),
                            &[],
                        )
                        .await
                        .map_err(RebalanceError::shard(owner))?
                        .is_empty(),
                    None => false,
                };
                if holds {
                    done.duplicates.push(format!(
                        "{}.{} = {}",
                        l.table,
                        l.column,
                        quote_literal(&value_text(&value))
                    ));
                    continue;
                }
                home_client
                    .execute(&crate::exec::lookup::move_sql(&lookup, &value, &keyv), &[])
                    .await
                    .map_err(RebalanceError::shard(home))?;
                done.written += 1;
            }
        }
    }
}

fn value_text(v: &ShardKey) -> String {
    match v {
        ShardKey::Int(i) => i.to_string(),
        ShardKey::Uuid(u) => crate::router::key_type::format_uuid(u),
        ShardKey::Text(t) => t.clone(),
    }
}

/// `pgshard lookup backfill --config F`: creates missing lookup tables, backfills them, prints
/// progress and a summary; false when duplicates were found.
pub async fn backfill_command(
    config: &Config,
    out: &mut (impl Write + Send),
) -> anyhow::Result<bool> {
    let config = super::shards::with_registered_shards(config).await?;
    let tls = crate::backend::tls::ServerTls::load(config.server_tls.as_ref())?;
    crate::backend::lookup_tables::ensure(&config, &tls)
        .await
        .map_err(anyhow::Error::msg)?;
    let map = super::cli::current_map(&config).await?;
    let resolved = crate::backend::key_types::resolve(&config, &map, &tls)
        .await
        .map_err(anyhow::Error::msg)?;
    let config = Config {
        sharded_tables: resolved,
        ..config
    };
    let done = backfill(&config, &map, out).await?;
    writeln!(
        out,
        "backfill done: {} row(s) read, {} lookup row(s) written, {} duplicate value(s)",
        done.rows,
        done.written,
        done.duplicates.len()
    )?;
    for d in &done.duplicates {
        writeln!(
            out,
            "DUPLICATE: {d} is held by two rows; the lookup keeps the first"
        )?;
    }
    Ok(done.duplicates.is_empty())
}
