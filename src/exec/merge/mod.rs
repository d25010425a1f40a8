//! The merge engine of scatter-gather: pure functions that turn the rows several shards returned
//! into the rows one Postgres would have returned (ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY).
//!
//! Nothing here touches sockets: callers feed DataRow bodies in and get DataRow bodies out. Only the
//! columns that are sorted on or aggregated are decoded; every other column is passed through as
//! the very bytes the shard sent.

pub mod aggregate;
pub mod array;
pub mod array_concat;
pub mod collate;
pub mod datetime;
pub mod inet;
pub mod interval;
pub mod interval_sum;
pub mod jsonb;
pub mod numeric;
pub mod row;
pub mod sort;
pub mod value;

pub use aggregate::{AggKind, AggSpec, GroupedAggregate, OutputColumn};
pub use numeric::Numeric;
pub use row::{build_row, split_row};
pub use sort::{sort_rows, KWayMerge, SortKey};

pub use collate::TextOrder;
pub use value::{compare, compare_in, ColumnType, Value};

/// Why a merge could not be done. Each message names what was wrong so that the proxy can refuse
/// with a clear error instead of sending a plausible but wrong answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The merge does not know how to decode or compare this type.
    #[error("cannot merge values of type OID {oid}: type not supported by the merge engine")]
    UnsupportedType { oid: u32 },
    /// A value's bytes are not a valid encoding of its type.
    #[error("invalid {type_name} value: {detail}")]
    InvalidValue {
        type_name: &'static str,
        detail: String,
    },
    /// A DataRow body is truncated, has trailing bytes or a bad length.
    #[error("malformed DataRow: {0}")]
    MalformedRow(&'static str),
    /// A row refers to a column it does not have.
    #[error("DataRow has {actual} columns, column {wanted} was expected")]
    MissingColumn { wanted: usize, actual: usize },
    /// A value is in an output style the merge does not read (an interval in an
    /// `IntervalStyle` other than `postgres`): refused rather than misread.
    #[error("{type_name} value {detail}")]
    UnsupportedStyle {
        type_name: &'static str,
        detail: String,
    },
    /// A row or finish came for a shard the merge was not set up with.
    #[error("shard index {shard} out of range (merge has {shards} inputs)")]
    NoSuchShard { shard: usize, shards: usize },
    /// A shard's rows were not in the merge's order (a different collation or a bad rewrite):
    /// merging them would give a wrongly ordered result.
    #[error("rows from shard {shard} are not sorted as the merge expects")]
    UnsortedInput { shard: usize },
    /// A row arrived for a shard after it was declared finished.
    #[error("row for shard {shard} after its end")]
    RowAfterFinish { shard: usize },
    /// The merge was set up inconsistently (a bug in the caller's rewrite, not in the data).
    #[error("invalid merge plan: {0}")]
    InvalidPlan(&'static str),
    /// GROUP BY produced more groups than the proxy is willing to hold in memory.
    #[error("GROUP BY merge exceeds {cap} groups")]
    TooManyGroups { cap: usize },
    /// An aggregate result does not fit its type (Postgres would raise the same).
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    /// A partial aggregate column had a type the combine step cannot use.
    #[error("aggregate {agg} cannot combine partial values of type OID {oid}")]
    BadPartial { agg: &'static str, oid: u32 },
}
