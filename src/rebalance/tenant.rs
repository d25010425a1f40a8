//! A tenant schema's tables on one shard, as a `move-schema` job reads and changes them: whether
//! the schema exists, its tables and rows, a checksum the cut-over compares on both sides, its
//! sequences (logical replication does not carry them), and dropping the copy a job leaves.

use tokio_postgres::Client;

use super::RebalanceError;
use crate::sql_text::{quote_ident as ident, quote_literal as literal};

/// Whether schema `schema` exists on the shard.
pub async fn exists(client: &Client, shard: u32, schema: &str) -> Result<bool, RebalanceError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(RebalanceError::shard(shard))?
        .get(0))
}

/// The schema's tables (names, sorted), as SQL `schema.table`.
pub async fn tables(
    client: &Client,
    shard: u32,
    schema: &str,
) -> Result<Vec<String>, RebalanceError> {
    Ok(relnames(client, shard, schema, "true")
        .await?
        .iter()
        .map(|t| format!("{}.{}", ident(schema), ident(t)))
        .collect())
}

/// Tables of the schema whose UPDATE and DELETE Postgres would refuse once they are published:
/// no primary key, no replica identity index and not `REPLICA IDENTITY FULL`.
pub async fn without_identity(
    client: &Client,
    shard: u32,
    schema: &str,
) -> Result<Vec<String>, RebalanceError> {
    relnames(
        client,
        shard,
        schema,
        "c.relreplident <> 'f' AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
           AND ((c.relreplident = 'd' AND i.indisprimary) \
             OR (c.relreplident = 'i' AND i.indisreplident)))",
    )
    .await
}

/// Names of the schema's tables (`pg_class c`) for which `condition` holds, sorted.
async fn relnames(
    client: &Client,
    shard: u32,
    schema: &str,
    condition: &str,
) -> Result<Vec<String>, RebalanceError> {
    Ok(client
        .query(
            &format!(
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind = 'r' AND {condition} ORDER BY 1"
            ),
            &[&schema],
        )
        .await
        .map_err(RebalanceError::shard(shard))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// (table, rows, checksum of the rows' text) for every table of the schema, sorted by table.
pub async fn checksums(
    client: &Client,
    shard: u32,
    schema: &str,
) -> Result<Vec<(String, i64, i64)>, RebalanceError> {
    let mut out = Vec::new();
    for table in tables(client, shard, schema).await? {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(hashtext(x::text)::bigint), 0)::bigint FROM {table} x"
                ),
                &[],
            )
            .await
            .map_err(RebalanceError::shard(shard))?;
        out.push((table, row.get(0), row.get(1)));
    }
    Ok(out)
}

/// Rows of every table of the schema (0 when the schema is missing).
pub async fn rows(client: &Client, shard: u32, schema: &str) -> Result<i64, RebalanceError> {
    Ok(checksums(client, shard, schema)
        .await?
        .iter()
        .map(|(_, n, _)| n)
        .sum())
}

/// Sets each sequence of the schema on `dest` to its value on `source` (run while the tenant's
/// statements are held, so neither moves meanwhile).
pub async fn copy_sequences(
    (source, source_id): (&Client, u32),
    (dest, dest_id): (&Client, u32),
    schema: &str,
) -> Result<(), RebalanceError> {
    let values = source
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences \
             WHERE schemaname = $1 AND last_value IS NOT NULL",
            &[&schema],
        )
        .await
        .map_err(RebalanceError::shard(source_id))?;
    for v in values {
        let (name, value): (&str, i64) = (v.get(0), v.get(1));
        let sequence = format!("{}.{}", ident(schema), ident(name));
        dest.execute(
            &format!("SELECT setval({}, $1, true)", literal(&sequence)),
            &[&value],
        )
        .await
        .map_err(RebalanceError::shard(dest_id))?;
    }
    Ok(())
}

/// Drops the schema and everything in it on the shard (a finished job's source, a rolled-back
/// job's destination); returns how many rows went with it.
pub async fn drop_copy(client: &Client, shard: u32, schema: &str) -> Result<i64, RebalanceError> {
    let rows = rows(client, shard, schema).await?;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)))
        .await
        .map_err(RebalanceError::shard(shard))?;
    Ok(rows)
}
