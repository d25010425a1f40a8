//! The catalog database: the versioned shard map (loaded at start, reloaded on NOTIFY, on a slow
//! poll and after reconnecting), the list of live proxies that hands out id-generator node ids, and
//! the primary each shard agreed on.

mod map_handle;
mod primaries;
mod store;
mod watcher;

pub use map_handle::MapHandle;
pub use primaries::{PrimaryRecord, PrimaryRecords};
pub use store::{load_map, publish_map, register_proxy};
pub use watcher::{start, CatalogHandle};

/// Why the catalog could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect to the catalog: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("catalog query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("timed out talking to the catalog")]
    Timeout,
    #[error("catalog has no shard map; run `pgshard cluster up` or insert one")]
    NoMap,
    #[error("catalog holds an invalid shard map version {version}: {reason}")]
    InvalidMap { version: i64, reason: String },
}
