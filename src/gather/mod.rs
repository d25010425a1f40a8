//! Scatter-gather: running one request on several shards in parallel and merging their answers
//! into the one answer a single Postgres would give.

pub mod atomic;
pub mod broadcast;
pub mod collation;
pub mod collect;
pub mod merge;
pub mod merged;
pub mod scatter;
pub mod split_insert;
