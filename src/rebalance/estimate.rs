//! Row estimates of a plan's moves: exact counts of the moving rows on each source, through the
//! same predicate the publication's row filter uses. Every move is counted at once (the sources
//! are different servers; one after another was most of `rebalance start`'s time).

use super::shards::connect;
use super::{Move, Plan, RebalanceError};
use crate::config::Config;

/// Rows each move carries (summed over the sharded tables), in the order of `plan.moves`.
pub async fn rows_per_move(config: &Config, plan: &Plan) -> Result<Vec<i64>, RebalanceError> {
    let counts = plan.moves.iter().map(|m| rows_of_move(config, plan, m));
    futures_util::future::join_all(counts)
        .await
        .into_iter()
        .collect()
}

/// The moving rows of one move, summed over the sharded tables.
async fn rows_of_move(config: &Config, plan: &Plan, m: &Move) -> Result<i64, RebalanceError> {
    let client = connect(config, m.source).await?;
    if let Some(schema) = &m.schema {
        return super::tenant::rows(&client, m.source, schema).await;
    }
    let mut rows = 0i64;
    for table in &config.sharded_tables {
        let exists = super::shards::table_exists(
            &client,
            m.source,
            &crate::router::names::quote_config_name(&table.name),
        )
        .await?;
        if !exists {
            continue;
        }
        // The key type as start-up resolved it, else as the shard's catalog says (the CLI's
        // config may not name it): a uuid or text key hashes with its own function.
        let key_type = match table.key_type {
            Some(t) => t,
            None => crate::backend::key_types::key_type_on(&client, table, &plan.from.strategy)
                .await
                .map_err(RebalanceError::Config)?,
        };
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            crate::router::names::quote_config_name(&table.name),
            plan.predicate_typed(&table.key, key_type, m)
        );
        let n: i64 = client
            .query_one(&sql, &[])
            .await
            .map_err(RebalanceError::shard(m.source))?
            .get(0);
        rows += n;
    }
    Ok(rows)
}
