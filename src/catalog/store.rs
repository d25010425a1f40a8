//! Reading and writing the catalog tables (see sql/catalog.sql).

use super::CatalogError;
use crate::router::{KeyRange, ShardMap, Strategy};

/// The newest shard map version, or `None` when the catalog has none.
pub async fn load_map(client: &tokio_postgres::Client) -> Result<Option<ShardMap>, CatalogError> {
    let Some(head) = client
        .query_opt(
            "SELECT version, strategy, modulus FROM shard_map_versions ORDER BY version DESC LIMIT 1",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let version: i64 = head.get(0);
    let strategy_name: String = head.get(1);
    let modulus: Option<i64> = head.get(2);
    let strategy = match (strategy_name.as_str(), modulus) {
        ("range", _) => Strategy::Range,
        ("hash", _) => Strategy::Hash,
        ("modulo", Some(modulus)) => Strategy::Modulo { modulus },
        (other, _) => {
            return Err(CatalogError::InvalidMap {
                version,
                reason: format!("unknown strategy `{other}` or missing modulus"),
            })
        }
    };
    let rows = client
        .query(
            "SELECT range_lower, range_upper, shard_id FROM shard_map WHERE version = $1",
            &[&version],
        )
        .await?;
    let ranges = rows
        .iter()
        .map(|r| KeyRange {
            lower: r.get(0),
            upper: r.get(1),
            shard: r.get::<_, i32>(2) as u32,
        })
        .collect();
    ShardMap::new(version, strategy, ranges)
        .map(Some)
        .map_err(|e| CatalogError::InvalidMap {
            version,
            reason: e.to_string(),
        })
}

/// Stores `map` as a new version (one more than the newest; `map.version` is ignored), in one
/// transaction; the catalog's trigger announces it. Returns the new version.
pub async fn publish_map(
    client: &mut tokio_postgres::Client,
    map: &ShardMap,
) -> Result<i64, CatalogError> {
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE shard_map_versions IN EXCLUSIVE MODE")
        .await?;
    let version: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) + 1 FROM shard_map_versions",
            &[],
        )
        .await?
        .get(0);
    let (name, modulus) = match map.strategy {
        Strategy::Range => ("range", None),
        Strategy::Hash => ("hash", None),
        Strategy::Modulo { modulus } => ("modulo", Some(modulus)),
    };
    tx.execute(
        "INSERT INTO shard_map_versions (version, strategy, modulus) VALUES ($1, $2, $3)",
        &[&version, &name, &modulus],
    )
    .await?;
    let insert = tx
        .prepare("INSERT INTO shard_map (version, range_lower, range_upper, shard_id) VALUES ($1, $2, $3, $4)")
        .await?;
    for r in &map.ranges {
        tx.execute(&insert, &[&version, &r.lower, &r.upper, &(r.shard as i32)])
            .await?;
    }
    tx.commit().await?;
    Ok(version)
}

/// Registers this proxy and returns its node id for the id generator (unique among the last
/// 1024 registrations).
pub async fn register_proxy(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<u16, CatalogError> {
    let row = client
        .query_one(
            "INSERT INTO proxies (node_id, name) VALUES (nextval('proxy_node_id_seq'), $1)
             ON CONFLICT (node_id) DO UPDATE SET name = EXCLUDED.name, started_at = now(), last_seen = now()
             RETURNING node_id",
            &[&name],
        )
        .await?;
    Ok(row.get::<_, i32>(0) as u16)
}
