//! pgshard: a sharding proxy for PostgreSQL. Clients speak the ordinary wire protocol to it; it routes
//! every statement by its shard key to the shards that own it.

pub mod admin;
pub mod backend;
pub mod catalog;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod exec;
pub mod fast_hash;
pub mod frontend;
/// Fuzz-target entry points into private decoders (`fuzz/`); not part of the proxy.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ids;
pub mod live;
pub mod membership;
pub mod notify;
pub mod planner;
pub mod proxy;
pub mod rebalance;
pub mod refusal;
pub mod router;
pub mod server;
pub mod session;
pub mod socket;
pub mod sql_text;
pub mod telemetry;
pub mod txn;
pub mod wire;

/// The database name that reaches the admin console instead of the shards.
pub const ADMIN_DATABASE: &str = "pgshard";
