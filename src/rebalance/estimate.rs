//! Row estimates of a plan's moves: counts of the moving rows on each source, through the same
//! predicate the publication's row filter uses — exact for `rebalance plan`, from a sample of a
//! big table for `rebalance start`. Every move is counted at once (the sources are different
//! servers; one after another was most of `rebalance start`'s time).

use super::shards::connect;
use super::{Move, Plan, RebalanceError};
use crate::config::Config;

/// How closely [`rows_per_move`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// Every moving row: `rebalance plan`, read by an operator deciding whether to move.
    Exact,
    /// About [`SAMPLE_ROWS`] rows of each table read (a `TABLESAMPLE` of its pages), the
    /// moving ones scaled up: `rebalance start`, whose count only sizes the progress of a job.
    /// Counting every row there was most of the time between the command and the first row
    /// copied; the copy reports the exact count when it is done.
    Sampled,
}

/// Rows a sampled count reads from a table; smaller tables are counted exactly.
pub const SAMPLE_ROWS: f64 = 5_000.0;

/// The `TABLESAMPLE SYSTEM` percentage that reads about [`SAMPLE_ROWS`] rows of a table
/// Postgres believes holds `reltuples` rows, or `None` when counting every row is as cheap
/// (a small table, or one never analyzed: `reltuples` -1).
pub fn sample_percent(reltuples: f64) -> Option<f64> {
    (reltuples > 2.0 * SAMPLE_ROWS).then(|| 100.0 * SAMPLE_ROWS / reltuples)
}

/// Rows each move carries (summed over the sharded tables), in the order of `plan.moves`.
pub async fn rows_per_move(
    config: &Config,
    plan: &Plan,
    counting: Counting,
) -> Result<Vec<i64>, RebalanceError> {
    let counts = plan
        .moves
        .iter()
        .map(|m| rows_of_move(config, plan, m, counting));
    futures_util::future::join_all(counts)
        .await
        .into_iter()
        .collect()
}

/// The moving rows of one move, summed over the sharded tables.
async fn rows_of_move(
    config: &Config,
    plan: &Plan,
    m: &Move,
    counting: Counting,
) -> Result<i64, RebalanceError> {
    let client = connect(config, m.source).await?;
    if let Some(schema) = &m.schema {
        return super::tenant::rows(&client, m.source, schema).await;
    }
    let mut rows = 0i64;
    for table in &config.sharded_tables {
        let name = crate::router::names::quote_config_name(&table.name);
        // Whether the table exists and how many rows Postgres believes it holds, in one look.
        let Some(row) = client
            .query_opt(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)",
                &[&name],
            )
            .await
            .map_err(RebalanceError::shard(m.source))?
        else {
            continue;
        };
        let reltuples: f32 = row.get(0);
        // The key type as start-up resolved it, else as the shard's catalog says (the CLI's
        // config may not name it): a uuid or text key hashes with its own function.
        let key_type = match table.key_type {
            Some(t) => t,
            None => crate::backend::key_types::key_type_on(&client, table, &plan.from.strategy)
                .await
                .map_err(RebalanceError::Config)?,
        };
        let percent = match counting {
            Counting::Exact => None,
            Counting::Sampled => sample_percent(f64::from(reltuples)),
        };
        let predicate = plan.predicate_typed(&table.key, key_type, m);
        let sql = match percent {
            None => format!("SELECT count(*) FROM {name} WHERE {predicate}"),
            Some(p) => format!(
                "SELECT round(count(*) * 100.0 / {p})::bigint FROM {name} TABLESAMPLE SYSTEM ({p}) \
                 WHERE {predicate}"
            ),
        };
        let n: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(RebalanceError::shard(m.source))?
            .get(0);
        rows += n;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_unanalyzed_tables_are_counted_whole() {
        assert_eq!(sample_percent(-1.0), None);
        assert_eq!(sample_percent(0.0), None);
        assert_eq!(sample_percent(2.0 * SAMPLE_ROWS), None);
    }

    #[test]
    fn big_tables_are_sampled_down_to_about_sample_rows() {
        let p = sample_percent(1_000_000.0).expect("sampled");
        assert!((p - 0.5).abs() < 1e-9, "{p}");
        let p = sample_percent(100_000.0).expect("sampled");
        assert!((p * 100_000.0 / 100.0 - SAMPLE_ROWS).abs() < 1e-6, "{p}");
    }
}
