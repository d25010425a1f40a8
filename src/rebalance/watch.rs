//! A cut-over's change watch on one shard: a publication over the moving rows of every step that
//! touches the shard and a `pgoutput` slot read with SQL, so the cut-over learns which keys
//! changed on either side since it compared them before the hold, and re-compares only those
//! inside the hold. Dropped after every attempt and at clean-up or roll-back.

use std::time::Duration;

use tokio_postgres::Client;

use super::copy::{drop_idle_slot, drop_publication, ensure_slot, predicates, step_move};
use super::jobs::Job;
use super::pgoutput::{decode, ChangedKeys};
use super::shards::table_exists;
use super::RebalanceError;
use crate::config::Config;
use crate::router::names::quote_config_name;
use crate::sql_text::quote_ident as ident;

/// The watch publication and slot name of `job` on `shard`.
pub fn name(job: i64, shard: u32) -> String {
    format!("pgshard_j{job}_w{shard}")
}

/// (table, key column) of every sharded table: what a watch collects keys of.
pub fn watched(config: &Config) -> Vec<(String, String)> {
    config
        .sharded_tables
        .iter()
        .map(|t| (t.name.clone(), t.key.clone()))
        .collect()
}

/// Starts a fresh watch on `shard`: from the slot's creation on, every insert, update, delete
/// or truncate of a moving row of a step on this shard is recorded.
pub async fn start(
    config: &Config,
    client: &Client,
    job: &Job,
    shard: u32,
    timeout: Duration,
) -> Result<(), RebalanceError> {
    stop(client, job.id, shard).await?;
    let mut tables = Vec::new();
    for t in &config.sharded_tables {
        if !table_exists(client, shard, &t.name).await? {
            continue;
        }
        let mut preds = Vec::new();
        for step in job
            .steps
            .iter()
            .filter(|s| s.source == shard || s.dest == shard)
        {
            let m = step_move(job, step)?;
            if let Some((_, _, p)) = predicates(config, job, m)
                .into_iter()
                .find(|(table, _, _)| *table == quote_config_name(&t.name))
            {
                preds.push(format!("({p})"));
            }
        }
        if !preds.is_empty() {
            tables.push(format!(
                "TABLE {} WHERE ({})",
                quote_config_name(&t.name),
                preds.join(" OR ")
            ));
        }
    }
    let n = name(job.id, shard);
    let sql = if tables.is_empty() {
        format!(
            "CREATE PUBLICATION {} WITH (publish = 'insert, update, delete, truncate')",
            ident(&n)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR {} WITH (publish = 'insert, update, delete, truncate')",
            ident(&n),
            tables.join(", ")
        )
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(RebalanceError::shard(shard))?;
    ensure_slot(client, shard, &n, timeout).await
}

/// Reads (and consumes) what the watch on `shard` recorded since the last read into `into`.
pub async fn drain(
    config: &Config,
    client: &Client,
    job: i64,
    shard: u32,
    into: &mut ChangedKeys,
) -> Result<(), RebalanceError> {
    let n = name(job, shard);
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&n, &n],
        )
        .await
        .map_err(RebalanceError::shard(shard))?;
    let watched = watched(config);
    for row in rows {
        let data: &[u8] = row.get(0);
        match decode(data) {
            Ok(m) => into.feed(m, &watched),
            Err(e) => {
                tracing::warn!(shard, error = %e, "cut-over watch: unreadable change; comparing whole tables");
                for (t, _) in &watched {
                    into.tables.entry(t.clone()).or_default().unknown = true;
                }
            }
        }
    }
    Ok(())
}

/// Drops the watch on `shard` (slot and publication). Safe to repeat.
pub async fn stop(client: &Client, job: i64, shard: u32) -> Result<(), RebalanceError> {
    let n = name(job, shard);
    drop_idle_slot(client, shard, &n).await?;
    drop_publication(client, shard, &n).await
}
