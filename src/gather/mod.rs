//! Scatter-gather: running one request on several shards in parallel and merging their answers
//! into the one answer a single Postgres would give.

pub mod collation;
pub mod merge;
pub mod merged;
pub mod scatter;
pub mod text_order;
