//! Scatter-gather: running one request on several shards in parallel and merging their answers
//! into the one answer a single Postgres would give.

pub mod atomic;
pub mod broadcast;
pub mod collation;
pub mod collect;
pub mod copy_in;
pub mod copy_out;
pub mod copy_split;
pub mod cursor;
pub mod distinct_collation;
pub mod final_query;
pub mod index_owner;
pub mod merge;
pub mod merged;
pub mod readers;
pub mod scatter;
pub mod split_insert;
pub mod text_order;
pub mod unnest_insert;
