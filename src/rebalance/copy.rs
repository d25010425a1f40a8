//! Copy and catch-up of one step over Postgres logical replication: a publication on the source
//! whose row filter is the step's predicate (inserts, updates and deletes only: a published
//! TRUNCATE ignores row filters), a slot created with a bounded wait, a subscription on the
//! destination, progress measured from the source; and the matching clean-up (drop subscription,
//! slots, publication; delete rows in batches) for both finishing and rolling back. Every
//! operation is idempotent, so a resumed job simply runs it again.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::Client;

use super::jobs::{Job, Step};
use super::shards::{conninfo, shard_config, table_exists};
use super::{Move, RebalanceError};
use crate::config::Config;
use crate::sql_text::{quote_ident as ident, quote_literal as literal};

/// The publication, slot and subscription name of a step.
pub fn name(job: i64, step: i32) -> String {
    format!("pgshard_j{job}_s{step}")
}

/// The plan's move a step carries out.
pub fn step_move<'a>(job: &'a Job, step: &Step) -> Result<&'a Move, RebalanceError> {
    job.plan
        .moves
        .get(step.no as usize)
        .filter(|m| m.source == step.source && m.dest == step.dest)
        .ok_or_else(|| {
            RebalanceError::Config(format!(
                "job {} step {} ({} → {}) does not match its plan",
                job.id, step.no, step.source, step.dest
            ))
        })
}

/// (table as SQL, schema-qualified; key; predicate) for every sharded table.
pub fn predicates(config: &Config, job: &Job, m: &Move) -> Vec<(String, String, String)> {
    config
        .sharded_tables
        .iter()
        .map(|t| {
            let key_type = t.key_type.unwrap_or_default();
            let predicate = job.plan.predicate_typed(&t.key, key_type, m);
            (
                crate::router::names::quote_config_name(&t.name),
                t.key.clone(),
                predicate,
            )
        })
        .collect()
}

async fn exists(
    client: &Client,
    shard: u32,
    sql: &str,
    name: &str,
) -> Result<bool, RebalanceError> {
    Ok(client
        .query_opt(sql, &[&name])
        .await
        .map_err(RebalanceError::shard(shard))?
        .is_some())
}

/// Creates the step's publication on the source unless it exists.
pub async fn ensure_publication(
    config: &Config,
    source: &Client,
    job: &Job,
    step: &Step,
) -> Result<(), RebalanceError> {
    let pubname = name(job.id, step.no);
    if exists(
        source,
        step.source,
        "SELECT 1 FROM pg_publication WHERE pubname = $1",
        &pubname,
    )
    .await?
    {
        return Ok(());
    }
    let m = step_move(job, step)?;
    if let Some(schema) = &m.schema {
        // A tenant's tables, all their rows (and tables the schema gains meanwhile).
        return source
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLES IN SCHEMA {} WITH (publish = 'insert, update, delete')",
                ident(&pubname),
                ident(schema)
            ))
            .await
            .map_err(RebalanceError::shard(step.source));
    }
    let mut tables = Vec::new();
    for (table, _, pred) in predicates(config, job, m) {
        if table_exists(source, step.source, &table).await? {
            tables.push(format!("TABLE {table} WHERE ({pred})"));
        }
    }
    let sql = if tables.is_empty() {
        format!(
            "CREATE PUBLICATION {} WITH (publish = 'insert, update, delete')",
            ident(&pubname)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR {} WITH (publish = 'insert, update, delete')",
            ident(&pubname),
            tables.join(", ")
        )
    };
    source
        .batch_execute(&sql)
        .await
        .map_err(RebalanceError::shard(step.source))
}

/// Creates a `pgoutput` logical slot on `shard` (a step's on its source, a cut-over's watch),
/// waiting at most `timeout` for the open transactions Postgres waits for; on timeout says which
/// ones.
pub async fn ensure_slot(
    source: &Client,
    shard: u32,
    slot: &str,
    timeout: Duration,
) -> Result<(), RebalanceError> {
    if exists(
        source,
        shard,
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
        slot,
    )
    .await?
    {
        return Ok(());
    }
    source
        .batch_execute(&format!(
            "SET statement_timeout = {}",
            timeout.as_millis().max(1)
        ))
        .await
        .map_err(RebalanceError::shard(shard))?;
    let created = source
        .query_one(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await;
    let _ = source.batch_execute("SET statement_timeout = 0").await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
            Err(slot_wait_error(source, shard, slot, timeout).await)
        }
        Err(e) => Err(RebalanceError::Shard { shard, source: e }),
    }
}

/// How many times a publication's drop is tried when it meets a lock timeout or deadlock with
/// the shard's writers.
const DROP_PUBLICATION_TRIES: usize = 5;

/// The statement that drops publication `name`, its tables locked against writes meanwhile:
/// Postgres 15 fails a write that runs while a publication of its table is being dropped with
/// `XX000 cache lookup failed for publication` (seen under load through the proxy). Writers wait
/// the few milliseconds the drop takes instead; tables are locked in name order.
fn drop_publication_sql(name: &str) -> String {
    let lit = literal(name);
    format!(
        "DO $pgshard$ DECLARE t record; BEGIN \
         SET LOCAL lock_timeout = '2s'; \
         FOR t IN SELECT format('%I.%I', schemaname, tablename) AS q FROM pg_catalog.pg_publication_tables \
         WHERE pubname = {lit} ORDER BY 1 LOOP \
         EXECUTE 'LOCK TABLE ' || t.q || ' IN SHARE ROW EXCLUSIVE MODE'; END LOOP; \
         EXECUTE 'DROP PUBLICATION IF EXISTS ' || quote_ident({lit}); END $pgshard$"
    )
}

/// Drops publication `name` on `shard` (see [`drop_publication_sql`]). Safe to repeat.
pub async fn drop_publication(
    client: &Client,
    shard: u32,
    name: &str,
) -> Result<(), RebalanceError> {
    let sql = drop_publication_sql(name);
    let mut tries = 0;
    loop {
        tries += 1;
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) if tries < DROP_PUBLICATION_TRIES && lock_conflict(&e) => continue,
            Err(e) => return Err(RebalanceError::shard(shard)(e)),
        }
    }
}

/// True for a lock timeout or a deadlock: worth trying again.
fn lock_conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
            || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Drops `slot` on `shard` unless it is missing or in use.
pub async fn drop_idle_slot(client: &Client, shard: u32, slot: &str) -> Result<(), RebalanceError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await
        .map_err(RebalanceError::shard(shard))?;
    Ok(())
}

/// Why creating `slot` on `shard` did not finish within `timeout`: the transactions open there
/// (Postgres waits for them), including prepared ones in doubt.
pub async fn slot_wait_error(
    source: &Client,
    shard: u32,
    slot: &str,
    timeout: Duration,
) -> RebalanceError {
    let open: Vec<String> = source
        .query(
            "SELECT format('pid %s (%s since %s)', pid, state, xact_start) FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start LIMIT 5",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    let prepared: Vec<String> = source
        .query(
            "SELECT gid FROM pg_prepared_xacts ORDER BY prepared LIMIT 5",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    RebalanceError::Refused(format!(
        "creating replication slot {slot} on shard {} waited {} ms for the transactions open on it to end \
         (open: [{}]; prepared, in doubt: [{}]); will retry",
        shard,
        timeout.as_millis(),
        open.join(", "),
        prepared.join(", ")
    ))
}

/// Creates the step's subscription on the destination unless it exists (the slot exists), with
/// Postgres's own initial copy (a tenant's tables).
pub async fn ensure_subscription(
    config: &Config,
    dest: &Client,
    job: &Job,
    step: &Step,
) -> Result<(), RebalanceError> {
    if subscription_exists(dest, job, step).await? {
        return Ok(());
    }
    dest.batch_execute(&subscription_sql(config, job, step, true)?)
        .await
        .map_err(RebalanceError::shard(step.dest))
}

/// Whether the step's subscription exists on its destination (`dest`).
pub async fn subscription_exists(
    dest: &Client,
    job: &Job,
    step: &Step,
) -> Result<bool, RebalanceError> {
    exists(
        dest,
        step.dest,
        "SELECT 1 FROM pg_subscription WHERE subname = $1",
        &name(job.id, step.no),
    )
    .await
}

/// The step's `CREATE SUBSCRIPTION` on the existing slot; `copy_data` when Postgres copies the
/// rows first, false when they were copied already. Its commits flush locally, so the source
/// learns at once how far the destination is (a cut-over waits for that) instead of after the
/// next background WAL flush.
pub fn subscription_sql(
    config: &Config,
    job: &Job,
    step: &Step,
    copy_data: bool,
) -> Result<String, RebalanceError> {
    let n = name(job.id, step.no);
    let source = shard_config(config, step.source)?;
    Ok(format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} \
         WITH (create_slot = false, slot_name = {}, copy_data = {copy_data}, enabled = true, \
         synchronous_commit = 'local')",
        ident(&n),
        literal(&conninfo(config, source)),
        ident(&n),
        literal(&n)
    ))
}

/// A step's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Every table's initial copy is done and the subscription streams.
    pub synced: bool,
    /// Moving rows on the destination.
    pub rows: i64,
    /// WAL bytes between the source's current position and what the destination confirmed.
    pub lag_bytes: Option<i64>,
}

/// Measures a step: sync state and rows copied on the destination, lag from the source's slot.
pub async fn progress(
    source: &Client,
    dest: &Client,
    job: &Job,
    step: &Step,
) -> Result<Progress, RebalanceError> {
    let n = name(job.id, step.no);
    let row = dest
        .query_one(
            "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r'), count(*) \
             FROM pg_subscription s LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid \
             WHERE s.subname = $1",
            &[&n],
        )
        .await
        .map_err(RebalanceError::shard(step.dest))?;
    let (pending, _total): (i64, i64) = (row.get(0), row.get(1));
    let lag: Option<i64> = source
        .query_opt(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&n],
        )
        .await
        .map_err(RebalanceError::shard(step.source))?
        .and_then(|r| r.get(0));
    let synced = pending == 0 && lag.is_some();
    // Counting the moving rows would scan the destination's tables (per row, per step, while
    // other steps still copy): the copy workers' own counters instead, and the highest seen.
    // The cut-over's comparison records the exact count.
    let copying: i64 = dest
        .query_one(
            "SELECT coalesce(sum(p.tuples_processed), 0)::bigint FROM pg_stat_subscription s \
             JOIN pg_stat_progress_copy p ON p.pid = s.pid WHERE s.subname = $1",
            &[&n],
        )
        .await
        .map_err(RebalanceError::shard(step.dest))?
        .get(0);
    let rows = copying.max(step.rows_copied);
    Ok(Progress {
        synced,
        rows,
        lag_bytes: lag,
    })
}

/// Drops the step's subscription (with its slots), any slot left on the source and the
/// publication. Safe to repeat.
pub async fn drop_replication(
    source: &Client,
    dest: &Client,
    job: &Job,
    step: &Step,
) -> Result<(), RebalanceError> {
    let n = name(job.id, step.no);
    let suboid: Option<u32> = dest
        .query_opt("SELECT oid FROM pg_subscription WHERE subname = $1", &[&n])
        .await
        .map_err(RebalanceError::shard(step.dest))?
        .map(|r| r.get(0));
    if suboid.is_some() {
        // A plain DROP also drops the slot and any table-sync slots on the source; if the source
        // cannot be reached that way, detach the slot and drop it below.
        let plain = dest
            .batch_execute(&format!("DROP SUBSCRIPTION IF EXISTS {}", ident(&n)))
            .await;
        if plain.is_err() {
            dest.batch_execute(&format!(
                "ALTER SUBSCRIPTION {0} DISABLE; ALTER SUBSCRIPTION {0} SET (slot_name = NONE); DROP SUBSCRIPTION IF EXISTS {0}",
                ident(&n)
            ))
            .await
            .map_err(RebalanceError::shard(step.dest))?;
        }
    }
    let mut slots = vec![n.clone()];
    if let Some(oid) = suboid {
        let sync: Vec<String> = source
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1",
                &[&format!("pg\\_{oid}\\_sync\\_%")],
            )
            .await
            .map_err(RebalanceError::shard(step.source))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        slots.extend(sync);
    }
    for slot in slots {
        for attempt in 0..50 {
            let r = source
                .query_opt(
                    "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&slot],
                )
                .await
                .map_err(RebalanceError::shard(step.source))?;
            let dropped = source
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                )
                .await;
            let gone = !exists(
                source,
                step.source,
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &slot,
            )
            .await?;
            if gone {
                break;
            }
            if attempt == 49 {
                return Err(RebalanceError::Refused(format!(
                    "replication slot {slot} on shard {} stays active ({:?}, {:?})",
                    step.source,
                    r.is_some(),
                    dropped.err()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop_publication(source, step.source, &n).await?;
    // A cut-over's watches, left behind when its runner died mid-attempt.
    super::watch::stop(source, job.id, step.source).await?;
    super::watch::stop(dest, job.id, step.dest).await
}

/// Deletes the step's rows on `shard` (a tenant's move drops the schema's copy there); returns
/// how many went. Each table is deleted from in one pass over its pages, a range of pages per
/// statement (about `batch` rows' worth, by the table's statistics), so each statement is short
/// and none rescans what an earlier one already cleared: batches by `LIMIT` read the table from
/// its first page each time, over the dead rows of every batch before.
pub async fn delete_rows(
    config: &Config,
    client: &Client,
    shard: u32,
    job: &Job,
    step: &Step,
    batch: i64,
) -> Result<i64, RebalanceError> {
    let m = step_move(job, step)?;
    if let Some(schema) = &m.schema {
        return super::tenant::drop_copy(client, shard, schema).await;
    }
    let mut deleted = 0;
    for (table, _, pred) in predicates(config, job, m) {
        if !table_exists(client, shard, &table).await? {
            continue;
        }
        deleted += delete_by_pages(client, shard, &table, &pred, batch).await?;
    }
    Ok(deleted)
}

/// The table's size in pages and its rows per page (0 when never analyzed).
async fn pages(client: &Client, shard: u32, table: &str) -> Result<(i64, f64), RebalanceError> {
    let row = client
        .query_one(
            "SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint, \
                    CASE WHEN c.relpages > 0 AND c.reltuples > 0 \
                         THEN c.reltuples::float8 / c.relpages ELSE 0 END \
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&table],
        )
        .await
        .map_err(RebalanceError::shard(shard))?;
    Ok((row.get(0), row.get(1)))
}

/// Pages one statement deletes from: about `batch` rows at `per_page` rows a page (rows of an
/// unanalyzed table are taken to be small, 100 a page).
pub fn pages_per_batch(batch: i64, per_page: f64) -> i64 {
    let per_page = if per_page >= 1.0 { per_page } else { 100.0 };
    ((batch as f64 / per_page) as i64).max(1)
}

/// Deletes the rows of `table` matching `pred`, page range by page range (a TID range scan
/// each), up to the table's last page — read again at the end, so pages added meanwhile are
/// covered too.
async fn delete_by_pages(
    client: &Client,
    shard: u32,
    table: &str,
    pred: &str,
    batch: i64,
) -> Result<i64, RebalanceError> {
    let (mut end, per_page) = pages(client, shard, table).await?;
    let span = pages_per_batch(batch, per_page);
    let delete = client
        .prepare(&format!(
            "DELETE FROM {table} WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND ({pred})"
        ))
        .await
        .map_err(RebalanceError::shard(shard))?;
    // Block numbers are 32-bit; the last one is never used.
    const LAST: i64 = u32::MAX as i64;
    let (mut from, mut deleted) = (0i64, 0i64);
    loop {
        if from >= end {
            end = pages(client, shard, table).await?.0;
            if from >= end {
                return Ok(deleted);
            }
        }
        let to = (from + span).min(LAST);
        let n = client
            .execute(&delete, &[&format!("({from},0)"), &format!("({to},0)")])
            .await
            .map_err(RebalanceError::shard(shard))?;
        deleted += n as i64;
        if to >= LAST {
            return Ok(deleted);
        }
        from = to;
    }
}

/// Count and checksum of each table's rows, per table, for one step: what a cut-over compares
/// between source and destination.
pub type StepChecksum = Vec<(String, i64, i64)>;

/// Counts and checksums of the moving rows of several steps on one shard, in one scan per table: the steps' predicates are
/// disjoint on a shard (one source's rows go to one destination each, one destination's come from
/// one source each), so each row is counted for the first step whose predicate holds. Clean-up
/// uses them to prove nothing is left on a source.
pub async fn checksums(
    config: &Config,
    client: &Client,
    shard: u32,
    job: &Job,
    steps: &[&Step],
) -> Result<BTreeMap<i32, StepChecksum>, RebalanceError> {
    let mut out: BTreeMap<i32, StepChecksum> = steps.iter().map(|s| (s.no, Vec::new())).collect();
    for table in &config.sharded_tables {
        let name = crate::router::names::quote_config_name(&table.name);
        if !table_exists(client, shard, &name).await? {
            continue;
        }
        let mut arms = Vec::with_capacity(steps.len());
        for step in steps {
            let key_type = table.key_type.unwrap_or_default();
            let pred = job
                .plan
                .predicate_typed(&table.key, key_type, step_move(job, step)?);
            arms.push(format!("WHEN {pred} THEN {}", step.no));
        }
        let sql = format!(
            "SELECT step, count(*), coalesce(sum(hashtext(r::text)::bigint), 0)::bigint \
             FROM (SELECT CASE {} END AS step, x AS r FROM {} x) moving \
             WHERE step IS NOT NULL GROUP BY step",
            arms.join(" "),
            name
        );
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(RebalanceError::shard(shard))?;
        for sums in out.values_mut() {
            sums.push((table.name.clone(), 0, 0));
        }
        for row in rows {
            let step: i32 = row.get(0);
            if let Some(entry) = out.get_mut(&step).and_then(|v| v.last_mut()) {
                entry.1 = row.get(1);
                entry.2 = row.get(2);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::pages_per_batch;

    #[test]
    fn a_batch_spans_about_its_rows_in_pages() {
        assert_eq!(pages_per_batch(5000, 100.0), 50);
        assert_eq!(pages_per_batch(5000, 61.5), 81);
        // Unanalyzed (0) or huge rows: never less than a page.
        assert_eq!(pages_per_batch(5000, 0.0), 50);
        assert_eq!(pages_per_batch(10, 500.0), 1);
    }
}

#[cfg(test)]
mod drop_publication_tests {
    use super::drop_publication_sql;

    #[test]
    fn the_drop_locks_the_publications_tables_first() {
        let sql = drop_publication_sql("pgshard_o'1");
        assert!(sql.contains("pubname = 'pgshard_o''1'"), "{sql}");
        let lock = sql.find("LOCK TABLE").expect("locks");
        let drop = sql.find("DROP PUBLICATION").expect("drops");
        assert!(lock < drop, "{sql}");
        assert!(sql.contains("quote_ident('pgshard_o''1')"), "{sql}");
    }
}
