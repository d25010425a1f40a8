//! The catalog database: the versioned shard map (loaded at start, reloaded on NOTIFY, on a slow
//! poll and after reconnecting), the list of live proxies that hands out id-generator node ids, and
//! the primary each shard agreed on, and the topology (which shards and servers exist).

mod init;
mod key_blocks;
mod lazy_client;
mod map_handle;
mod primaries;
mod store;
mod topology;
mod watcher;

pub use init::{init, init_url, CATALOG_SQL};
pub use key_blocks::KeyBlocks;
pub use map_handle::MapHandle;
pub use primaries::{PrimaryRecord, PrimaryRecords};
pub use store::{
    fewest_tenants, load_map, place_tenant, publish_first_map, publish_map, publish_map_after,
    register_proxy, seed_tenants, FirstMap,
};
#[cfg(test)]
pub use topology::test_shard;
pub use topology::{
    apply_change, effective_config, load_topology, merge_shards,
    refuse_conflicts as topology_refusals, seed_topology, with_topology, CatalogTopology, Seeded,
    TopologyChange, TopologyHandle, TOPOLOGY_CHANNEL,
};
pub use watcher::{listen, start, CatalogHandle};

/// Why the catalog could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect to the catalog: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("catalog query failed: {0}")]
    Query(#[source] tokio_postgres::Error),
    /// A table this pgshard reads is missing: the catalog was made by an older one.
    #[error("the catalog's schema is older than this pgshard ({0}); run `pgshard catalog init` against it, which adds what is missing and keeps the shard map")]
    Outdated(String),
    #[error("timed out talking to the catalog")]
    Timeout,
    #[error("catalog has no shard map; run `pgshard catalog init` or `pgshard cluster up`")]
    NoMap,
    #[error("a shard map needs at least one shard; the config lists none")]
    NoShards,
    /// A topology change that would leave the shards inconsistent.
    #[error("{0}")]
    Refused(String),
    #[error("catalog holds an invalid shard map version {version}: {reason}")]
    InvalidMap { version: i64, reason: String },
}

impl From<tokio_postgres::Error> for CatalogError {
    fn from(e: tokio_postgres::Error) -> CatalogError {
        match e.as_db_error() {
            Some(db) if *db.code() == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
                CatalogError::Outdated(db.message().to_string())
            }
            _ => CatalogError::Query(e),
        }
    }
}
