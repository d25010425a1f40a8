//! The `shard_primaries` table: which server every proxy sends a shard's writes to, and on which
//! timeline. A new primary replaces the row only with a higher timeline (compare-and-set), so two
//! proxies that discover a failover at the same moment cannot record different primaries.

use std::collections::BTreeMap;
use std::time::Duration;

use super::lazy_client::LazyClient;
use super::CatalogError;
use crate::backend::ServerTls;

/// One shard's agreed primary as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRecord {
    pub shard: u32,
    /// `host:port`, as the proxies' configs name the server.
    pub address: String,
    pub timeline: u32,
}

/// The monitors' reads and compare-and-sets, on a catalog client made on first use.
pub struct PrimaryRecords {
    client: LazyClient,
}

impl PrimaryRecords {
    /// Connects on first use, so a catalog outage does not stop the monitors.
    pub fn new(url: &str, tls: &ServerTls, connect_timeout: Duration) -> PrimaryRecords {
        PrimaryRecords {
            client: LazyClient::new(url, tls, connect_timeout),
        }
    }

    /// Every shard's row.
    pub async fn load_all(&self) -> Result<BTreeMap<u32, PrimaryRecord>, CatalogError> {
        let rows = self
            .client
            .query(
                "SELECT shard_id, address, timeline FROM shard_primaries",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(record_from_row)
            .map(|r| (r.shard, r))
            .collect())
    }

    /// Records `address` as `shard`'s primary on `timeline` if the shard has no row yet or its
    /// row's timeline is lower; returns the row as it stands afterwards (ours if we won).
    pub async fn compare_and_set(
        &self,
        shard: u32,
        address: &str,
        timeline: u32,
    ) -> Result<Option<PrimaryRecord>, CatalogError> {
        let shard_id = shard as i32;
        let timeline = i64::from(timeline);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&shard_id, &address, &timeline];
        let rows = self
            .client
            .query(
                "WITH attempt AS (
                         INSERT INTO shard_primaries AS p (shard_id, address, timeline)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (shard_id) DO UPDATE
                             SET address = EXCLUDED.address, timeline = EXCLUDED.timeline,
                                 recorded_at = now()
                             WHERE p.timeline < EXCLUDED.timeline
                         RETURNING shard_id, address, timeline)
                     SELECT shard_id, address, timeline FROM attempt
                     UNION ALL
                     SELECT shard_id, address, timeline FROM shard_primaries
                     WHERE shard_id = $1 AND NOT EXISTS (SELECT 1 FROM attempt)",
                &params,
            )
            .await?;
        Ok(rows.iter().find_map(record_from_row))
    }
}

fn record_from_row(row: &tokio_postgres::Row) -> Option<PrimaryRecord> {
    let shard: i32 = row.try_get(0).ok()?;
    let address: String = row.try_get(1).ok()?;
    let timeline: i64 = row.try_get(2).ok()?;
    Some(PrimaryRecord {
        shard: u32::try_from(shard).ok()?,
        address,
        timeline: u32::try_from(timeline).ok()?,
    })
}
