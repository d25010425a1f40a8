//! Execution: running a request on pooled server connections (one shard, or several in parallel
//! with their answers merged into the one answer a single Postgres would give) and writing the
//! answers to a `FrameSink`.

pub mod binary_rows;
pub mod broadcast;
pub mod cancel;
pub mod collation;
pub mod collect;
pub mod copy_in;
pub mod copy_out;
pub mod copy_split;
pub mod cursor;
pub mod distinct_collation;
pub mod exchange;
pub mod final_query;
pub mod in_turn;
pub mod index_owner;
pub mod lock_share;
pub mod lookup;
pub mod merge;
pub mod merged;
pub mod prepared_cap;
pub mod readers;
pub mod scatter;
pub mod split_insert;
pub mod table_columns;
pub mod text_order;
pub mod unnest_insert;
