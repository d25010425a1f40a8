//! `pgshard verify`: proves, with SQL on every shard, that every row of every sharded table sits
//! on the shard the current map names, and lists what does not.

use super::shards::connect;
use super::RebalanceError;
use crate::config::Config;
use crate::router::ShardMap;
use crate::sql_text::quote_ident as ident;

/// Misplaced rows of one table on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    pub shard: u32,
    pub table: String,
    pub count: i64,
    /// Up to five keys, smallest first, as text.
    pub samples: Vec<String>,
}

/// What [`verify`] found: rows counted per shard and every misplacement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// (shard, table, rows) for every table found.
    pub counted: Vec<(u32, String, i64)>,
    pub misplaced: Vec<Misplaced>,
}

impl Report {
    /// True when no row is on a shard the map does not name for it.
    pub fn clean(&self) -> bool {
        self.misplaced.is_empty()
    }
}

/// Checks every configured shard (also those the map gives no keys: all their rows are misplaced)
/// against `map`. A table missing on a shard holds no rows there.
pub async fn verify(config: &Config, map: &ShardMap) -> Result<Report, RebalanceError> {
    let mut report = Report::default();
    for shard in &config.shards {
        let client = connect(config, shard.id).await?;
        for table in &config.sharded_tables {
            let exists = super::shards::table_exists(
                &client,
                shard.id,
                &crate::router::names::quote_config_name(&table.name),
            )
            .await?;
            if !exists {
                continue;
            }
            let key_type = crate::backend::key_types::key_type_on(&client, table, &map.strategy)
                .await
                .map_err(RebalanceError::Refused)?;
            let owned = map.sql_owned_by_typed(&table.key, key_type, shard.id);
            let t = crate::router::names::quote_config_name(&table.name);
            let key = ident(&table.key);
            let sql = format!(
                "SELECT (SELECT count(*) FROM {t}), \
                        (SELECT count(*) FROM {t} WHERE NOT coalesce({owned}, false)), \
                        ARRAY(SELECT {key}::text FROM {t} WHERE NOT coalesce({owned}, false) \
                              ORDER BY {key} LIMIT 5)"
            );
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| RebalanceError::Shard {
                    shard: shard.id,
                    source: e,
                })?;
            let (total, bad): (i64, i64) = (row.get(0), row.get(1));
            report.counted.push((shard.id, table.name.clone(), total));
            if bad > 0 {
                report.misplaced.push(Misplaced {
                    shard: shard.id,
                    table: table.name.clone(),
                    count: bad,
                    samples: row.get(2),
                });
            }
        }
    }
    Ok(report)
}
