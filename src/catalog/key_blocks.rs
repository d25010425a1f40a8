//! The catalog's side of generated narrow keys: one row per table with the next unallocated id, so
//! every proxy takes disjoint blocks (see `ids::blocks`), across restarts too.

use std::time::Duration;

use super::lazy_client::LazyClient;
use super::CatalogError;
use crate::backend::ServerTls;

/// Allocates blocks of ids from the catalog's `key_blocks` table.
pub struct KeyBlocks {
    client: LazyClient,
}

impl KeyBlocks {
    /// Connects on first use: a proxy whose clients never omit a narrow key never asks.
    pub fn new(url: &str, tls: &ServerTls, timeout: Duration) -> KeyBlocks {
        KeyBlocks {
            client: LazyClient::new(url, tls, timeout),
        }
    }

    /// Reserves `len` consecutive ids of `table` for this proxy; returns the first. The first block
    /// of a table starts at 1.
    pub async fn allocate(&self, table: &str, len: i64) -> Result<i64, CatalogError> {
        let rows = self
            .client
            .query(
                "INSERT INTO key_blocks AS k (table_name, next_value) VALUES ($1::text, 1 + $2::bigint)
                 ON CONFLICT (table_name) DO UPDATE SET next_value = k.next_value + $2::bigint
                 RETURNING next_value - $2::bigint",
                &[&table, &len],
            )
            .await?;
        rows.first()
            .and_then(|r| r.try_get::<_, i64>(0).ok())
            .ok_or(CatalogError::Timeout)
    }
}
