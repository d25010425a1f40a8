//! The runner's own initial copy of a step that moves key ranges. The step's slot is created over
//! a replication connection, which exports the snapshot its consistent point stands for; the
//! moving rows as of that snapshot go from source to destination with one COPY per table; the
//! destination's subscription (no copy of its own) is created in the destination transaction
//! that received them, so it streams exactly what committed after the snapshot.
//!
//! Postgres's own initial copy (`copy_data = true`) does the same per table, with a slot and a
//! worker per table (two at a time per subscription) and a hand-over to the apply worker that
//! waits on the apply worker's naps: most of a small move's time. Because rows and subscription
//! commit together, a step holds both or neither: an interrupted copy is started again from a
//! new slot.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use super::copy::{drop_idle_slot, name, predicates, slot_wait_error, step_move, subscription_sql};
use super::jobs::{Job, Step};
use super::shards::{connect, shard_config, table_exists};
use super::RebalanceError;
use crate::backend::conn::ServerConn;
use crate::backend::ServerTls;
use crate::config::Config;
use crate::sql_text::{quote_ident as ident, quote_literal as literal};

/// Copies the step's rows and creates its subscription (the publication exists, the
/// subscription does not); `source` is a control connection to the step's source. Returns the
/// rows copied. Creating the slot waits at most `timeout` for the source's open transactions.
pub async fn run(
    config: &Config,
    source: &Client,
    job: &Job,
    step: &Step,
    timeout: Duration,
) -> Result<i64, RebalanceError> {
    let m = step_move(job, step)?;
    let slot = name(job.id, step.no);
    // A slot left by an interrupted copy: its snapshot is gone with its connection.
    drop_idle_slot(source, step.source, &slot).await?;
    let shard = shard_config(config, step.source)?;
    let tls = ServerTls::load(config.server_tls.as_ref())?;
    let backend = |e| RebalanceError::Backend(step.source, Box::new(e));
    let mut repl = ServerConn::connect_replication(
        shard,
        config.control_login(shard),
        &tls,
        config.pool.connect_timeout(),
    )
    .await
    .map_err(backend)?;
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
        ident(&slot)
    );
    let create = repl.query_row(&sql);
    let created = match tokio::time::timeout(timeout, create).await {
        Ok(r) => r.map_err(backend)?,
        Err(_) => {
            // The slot is not made yet (Postgres drops it when its session ends).
            let _ = source
                .execute("SELECT pg_terminate_backend($1)", &[&repl.pid])
                .await;
            return Err(slot_wait_error(source, step.source, &slot, timeout).await);
        }
    };
    let snapshot = created
        .and_then(|row| row.into_iter().nth(2).flatten())
        .ok_or_else(|| {
            RebalanceError::Refused(format!(
                "shard {} created slot {slot} without exporting its snapshot",
                step.source
            ))
        })?;
    let src = connect(config, step.source).await?;
    src.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        literal(&snapshot)
    ))
    .await
    .map_err(RebalanceError::shard(step.source))?;
    // The snapshot lives on in `src`'s transaction; the replication session is done.
    drop(repl);
    let dest = connect(config, step.dest).await?;
    // As Postgres's own copy and apply: no triggers (nor foreign-key checks, so tables may come
    // in any order) on the destination's copies, where the role may set that.
    dest.batch_execute(
        "BEGIN; SELECT set_config('session_replication_role', 'replica', true) \
         WHERE current_setting('is_superuser') = 'on'",
    )
    .await
    .map_err(RebalanceError::shard(step.dest))?;
    let mut rows = 0;
    for (table, _, pred) in predicates(config, job, m) {
        if !table_exists(&src, step.source, &table).await? {
            continue;
        }
        let columns = columns(&src, step.source, &table).await?;
        rows += copy_table(
            (&src, step.source),
            (&dest, step.dest),
            &table,
            &columns,
            &pred,
        )
        .await?;
    }
    dest.batch_execute(&subscription_sql(config, job, step, false)?)
        .await
        .map_err(RebalanceError::shard(step.dest))?;
    dest.batch_execute("COMMIT")
        .await
        .map_err(RebalanceError::shard(step.dest))?;
    let _ = src.batch_execute("COMMIT").await;
    Ok(rows)
}

/// The stored columns of `table` on the source, quoted and comma-separated (generated columns
/// are computed again where the rows land).
async fn columns(client: &Client, shard: u32, table: &str) -> Result<String, RebalanceError> {
    Ok(client
        .query_one(
            "SELECT coalesce(string_agg(quote_ident(attname), ', ' ORDER BY attnum), '') \
             FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 \
             AND NOT attisdropped AND attgenerated = ''",
            &[&table],
        )
        .await
        .map_err(RebalanceError::shard(shard))?
        .get(0))
}

/// Streams the rows of `table` matching `pred` from `src` into `dest` (text COPY: the format
/// Postgres's own copy uses, exact for every type); returns how many.
async fn copy_table(
    src: (&Client, u32),
    dest: (&Client, u32),
    table: &str,
    columns: &str,
    pred: &str,
) -> Result<i64, RebalanceError> {
    let n = pipe(
        src,
        dest,
        &format!("COPY (SELECT {columns} FROM {table} WHERE {pred}) TO STDOUT"),
        &format!("COPY {table} ({columns}) FROM STDIN"),
    )
    .await?;
    Ok(n as i64)
}

/// Runs `copy_out` (a `COPY … TO STDOUT`) on `src` and feeds what it sends to `copy_in` (a
/// `COPY … FROM STDIN`) on `dest`; returns the rows `dest` took.
pub async fn pipe(
    (src, source): (&Client, u32),
    (dest, dest_id): (&Client, u32),
    copy_out: &str,
    copy_in: &str,
) -> Result<u64, RebalanceError> {
    let out = src
        .copy_out(copy_out)
        .await
        .map_err(RebalanceError::shard(source))?;
    let sink = dest
        .copy_in::<_, bytes::Bytes>(copy_in)
        .await
        .map_err(RebalanceError::shard(dest_id))?;
    futures_util::pin_mut!(out);
    futures_util::pin_mut!(sink);
    while let Some(chunk) = out.next().await {
        let chunk = chunk.map_err(RebalanceError::shard(source))?;
        sink.feed(chunk)
            .await
            .map_err(RebalanceError::shard(dest_id))?;
    }
    sink.finish().await.map_err(RebalanceError::shard(dest_id))
}
