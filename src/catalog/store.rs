//! Reading and writing the catalog tables (see sql/catalog.sql).

use std::collections::BTreeMap;

use super::CatalogError;
use crate::router::{KeyRange, ShardMap, Strategy};

/// The newest shard map version, or `None` when the catalog has none.
pub async fn load_map(client: &tokio_postgres::Client) -> Result<Option<ShardMap>, CatalogError> {
    let Some(head) = client
        .query_opt(
            "SELECT max(version) FROM shard_map_versions HAVING count(*) > 0",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    load_map_at(client, head.get(0)).await.map(Some)
}

/// Shard map `version` (its ranges and tenant placements).
async fn load_map_at<C: tokio_postgres::GenericClient>(
    client: &C,
    version: i64,
) -> Result<ShardMap, CatalogError> {
    let head = client
        .query_one(
            "SELECT strategy, modulus FROM shard_map_versions WHERE version = $1",
            &[&version],
        )
        .await?;
    let strategy_name: String = head.get(0);
    let modulus: Option<i64> = head.get(1);
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
    let tenants = client
        .query(
            "SELECT schema_name, shard_id FROM shard_map_tenants WHERE version = $1",
            &[&version],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1) as u32))
        .collect();
    ShardMap::new(version, strategy, ranges)
        .map(|m| m.with_tenants(tenants))
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
    let version = newest_version_locked(&tx).await?.unwrap_or(0) + 1;
    insert_version(&tx, version, map).await?;
    tx.commit().await?;
    Ok(version)
}

/// Inside the caller's transaction, stores `map` as the version after `expected_newest` — or
/// returns the newest version found when another map was published since (nothing is stored).
pub async fn publish_map_after(
    tx: &tokio_postgres::Transaction<'_>,
    map: &ShardMap,
    expected_newest: i64,
) -> Result<Result<i64, i64>, CatalogError> {
    let newest = newest_version_locked(tx).await?.unwrap_or(0);
    if newest != expected_newest {
        return Ok(Err(newest));
    }
    insert_version(tx, newest + 1, map).await?;
    Ok(Ok(newest + 1))
}

/// What [`publish_first_map`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMap {
    /// The catalog had no map; this version (1) was published.
    Published(i64),
    /// The catalog already held maps up to this version and was left alone: the map belongs to
    /// whoever wrote it (an earlier init, the rebalancer).
    Existing(i64),
}

/// Stores `map` as version 1 if the catalog holds no map yet. The check and the insert happen under
/// one table lock, so two callers racing on an empty catalog publish exactly one map.
pub async fn publish_first_map(
    client: &mut tokio_postgres::Client,
    map: &ShardMap,
) -> Result<FirstMap, CatalogError> {
    let tx = client.transaction().await?;
    if let Some(newest) = newest_version_locked(&tx).await? {
        tx.commit().await?;
        return Ok(FirstMap::Existing(newest));
    }
    insert_version(&tx, 1, map).await?;
    tx.commit().await?;
    Ok(FirstMap::Published(1))
}

/// Locks the version table against other publishers for the rest of `tx` and returns its newest
/// version.
async fn newest_version_locked(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<Option<i64>, CatalogError> {
    tx.batch_execute("LOCK TABLE shard_map_versions IN EXCLUSIVE MODE")
        .await?;
    Ok(tx
        .query_one("SELECT max(version) FROM shard_map_versions", &[])
        .await?
        .get(0))
}

async fn insert_version(
    tx: &tokio_postgres::Transaction<'_>,
    version: i64,
    map: &ShardMap,
) -> Result<(), CatalogError> {
    let modulus = match map.strategy {
        Strategy::Modulo { modulus } => Some(modulus),
        Strategy::Range | Strategy::Hash => None,
    };
    tx.execute(
        "INSERT INTO shard_map_versions (version, strategy, modulus) VALUES ($1, $2, $3)",
        &[&version, &map.strategy.name(), &modulus],
    )
    .await?;
    let insert = tx
        .prepare("INSERT INTO shard_map (version, range_lower, range_upper, shard_id) VALUES ($1, $2, $3, $4)")
        .await?;
    for r in &map.ranges {
        tx.execute(&insert, &[&version, &r.lower, &r.upper, &(r.shard as i32)])
            .await?;
    }
    for (schema, shard) in &map.tenants {
        tx.execute(
            "INSERT INTO shard_map_tenants (version, schema_name, shard_id) VALUES ($1, $2, $3)",
            &[&version, schema, &(*shard as i32)],
        )
        .await?;
    }
    Ok(())
}

/// Publishes a map version that adds the tenant schemas of `[[sharded_schemas]]` the newest map
/// does not list yet, each on its configured shard; schemas the catalog places already keep
/// their shard (the config's is only the initial placement). While a rebalancing job runs nothing
/// is published (its cut-over publishes the map it planned from; the router routes an unlisted
/// tenant by the config meanwhile). Returns the newest version.
pub async fn seed_tenants(
    client: &mut tokio_postgres::Client,
    schemas: &[crate::config::schemas::ShardedSchemaConfig],
) -> Result<Option<i64>, CatalogError> {
    if schemas.is_empty() {
        return Ok(None);
    }
    let tx = client.transaction().await?;
    let Some(newest) = newest_version_locked(&tx).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    let map = load_map_at(&tx, newest).await?;
    let mut tenants = map.tenants.clone();
    for s in schemas {
        tenants.entry(s.name.to_lowercase()).or_insert(s.shard);
    }
    if tenants == map.tenants || active_job(&tx).await?.is_some() {
        tx.commit().await?;
        return Ok(Some(newest));
    }
    insert_version(&tx, newest + 1, &map.with_tenants(tenants)).await?;
    tx.commit().await?;
    Ok(Some(newest + 1))
}

/// A rebalancing job that has not ended, if any.
async fn active_job(tx: &tokio_postgres::Transaction<'_>) -> Result<Option<i64>, CatalogError> {
    Ok(tx
        .query_opt(
            "SELECT job_id FROM rebalance_jobs WHERE state NOT IN ('done', 'cancelled', 'failed') LIMIT 1",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// The shard a new tenant goes to: among `shards`, the one holding the fewest tenants in
/// `tenants`, the lowest id on a tie. `None` without shards.
pub fn fewest_tenants(tenants: &BTreeMap<String, u32>, shards: &[u32]) -> Option<u32> {
    shards
        .iter()
        .map(|&s| (tenants.values().filter(|&&t| t == s).count(), s))
        .min()
        .map(|(_, s)| s)
}

/// Places tenant `schema` if the newest map does not: publishes a version adding it on the shard
/// of `shards` with the fewest tenants ([`fewest_tenants`]). Returns the newest map, which places
/// it. Refused while a rebalancing job runs (its cut-over publishes the map it planned from).
pub async fn place_tenant(
    client: &mut tokio_postgres::Client,
    schema: &str,
    shards: &[u32],
) -> Result<ShardMap, CatalogError> {
    let schema = schema.to_lowercase();
    let tx = client.transaction().await?;
    let newest = newest_version_locked(&tx)
        .await?
        .ok_or(CatalogError::NoMap)?;
    let map = load_map_at(&tx, newest).await?;
    if map.tenant_shard(&schema).is_some() {
        tx.commit().await?;
        return Ok(map);
    }
    if let Some(job) = active_job(&tx).await? {
        return Err(CatalogError::Refused(format!(
            "rebalancing job {job} is running; new tenant {schema} can be placed once it ends"
        )));
    }
    let shard = fewest_tenants(&map.tenants, shards).ok_or(CatalogError::NoShards)?;
    let mut tenants = map.tenants.clone();
    tenants.insert(schema, shard);
    let map = ShardMap {
        version: newest + 1,
        ..map.with_tenants(tenants)
    };
    insert_version(&tx, map.version, &map).await?;
    tx.commit().await?;
    Ok(map)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tenant_goes_to_the_shard_with_the_fewest() {
        let placed = |p: &[(&str, u32)]| -> BTreeMap<String, u32> {
            p.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        // (placed tenants, shards, chosen)
        type Case<'a> = (&'a [(&'a str, u32)], &'a [u32], Option<u32>);
        let cases: &[Case] = &[
            (&[], &[3, 1, 2], Some(1)),
            (&[("a", 1)], &[1, 2, 3], Some(2)),
            (&[("a", 1), ("b", 2)], &[1, 2, 3], Some(3)),
            (&[("a", 1), ("b", 2), ("c", 3)], &[3, 2, 1], Some(1)),
            (&[("a", 1), ("b", 1), ("c", 2)], &[1, 2], Some(2)),
            // A tenant on a shard that is gone counts for none.
            (&[("a", 7), ("b", 1)], &[1, 2], Some(2)),
            (&[("a", 1)], &[], None),
        ];
        for (tenants, shards, want) in cases {
            assert_eq!(
                fewest_tenants(&placed(tenants), shards),
                *want,
                "{tenants:?} {shards:?}"
            );
        }
    }
}
