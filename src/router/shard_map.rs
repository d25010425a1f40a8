//! The shard map: an ordered list of `[lower, upper) → shard` ranges over a key space. The three
//! strategies differ only in how a key becomes a point in that space, so routing, rebalancing and
//! verification share one code path, and each strategy has an SQL twin that shards evaluate.

use serde::{Deserialize, Serialize};

/// How a key becomes a point of the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "strategy")]
pub enum Strategy {
    /// The point is the key itself.
    Range,
    /// The point is `hashint8extended(key, 0)`, Postgres's own 64-bit hash.
    Hash,
    /// The point is `key mod modulus` in `[0, modulus)` (Euclidean remainder).
    Modulo { modulus: i64 },
}

/// One slice of the key space: points `p` with `lower <= p < upper`; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    pub lower: Option<i64>,
    pub upper: Option<i64>,
    pub shard: u32,
}

/// Why a list of ranges is not a valid map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardMapError {
    #[error("shard map has no ranges")]
    Empty,
    #[error("shard map ranges must be sorted, contiguous and cover the whole key space: {0}")]
    Coverage(String),
    #[error("modulo strategy needs a modulus of at least 1, got {0}")]
    BadModulus(i64),
}

/// A versioned map from keys to shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub version: i64,
    pub strategy: Strategy,
    pub ranges: Vec<KeyRange>,
}
