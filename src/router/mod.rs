//! The router: turns one statement (SQL text plus parameter values) and the current shard map into a
//! route — which shards run it and how their answers combine. Pure: no sockets, no servers.

pub mod cache;
pub mod facts;
pub mod literals;
pub mod params;
pub mod rewrite;
pub mod shard_map;

pub use facts::{LocalCommand, StatementFacts, StatementKind};
pub use params::ParamSource;
pub use shard_map::{KeyRange, ShardMap, ShardMapError, Strategy};

/// Where one statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Exactly one shard: the key is known, or only unsharded tables are named (the first shard).
    Single(u32),
    /// Every listed shard runs it and the rows are concatenated (keyless read, or an IN list spanning
    /// several shards). Always sorted, never empty, at least two entries.
    Scatter(Vec<u32>),
    /// Any shard can answer: no table is named (`SELECT 1`, `SET`, `SHOW`, transaction control).
    Any,
    /// Refused with SQLSTATE 0A000 and this message, naming what is missing.
    Refuse(String),
}
