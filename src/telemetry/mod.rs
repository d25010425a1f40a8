//! Prometheus metrics: event counters and histograms recorded through the `metrics` facade from
//! tiny hooks in the data path (`record`), the proxy's own state rendered at each scrape
//! (`snapshot_text`), and the HTTP endpoint Prometheus scrapes (`endpoint`).

pub mod endpoint;
pub mod hot_histogram;
pub mod record;
pub mod snapshot_text;

pub use record::{ClientConnection, QueryTimer, RouteKind};

/// Client connections open now (gauge).
pub const CLIENT_CONNECTIONS: &str = "pgshard_client_connections";
/// Client connections accepted since start.
pub const CLIENT_CONNECTIONS_TOTAL: &str = "pgshard_client_connections_accepted_total";
/// Statements (or extended-protocol batches) run, by route kind.
pub const QUERIES_TOTAL: &str = "pgshard_queries_total";
/// Time from routing a statement to its last answer queued for the client, by route kind.
pub const QUERY_DURATION: &str = "pgshard_query_duration_seconds";
/// ErrorResponses sent to clients, by SQLSTATE class (the code's first two characters).
pub const ERRORS_TOTAL: &str = "pgshard_errors_total";
/// Times a client became pinned to a server connection (transaction pooling), by reason.
pub const SESSION_PINS_TOTAL: &str = "pgshard_session_pins_total";
/// Statements held while their shard had no primary, by outcome (`resumed`, `expired`).
pub const FAILOVER_BUFFERED_TOTAL: &str = "pgshard_failover_buffered_total";
/// Time spent waiting for a server connection from a pool.
pub const POOL_WAIT: &str = "pgshard_pool_wait_seconds";

/// Upper bounds (seconds) of the query-duration buckets.
pub const QUERY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the pool-wait buckets.
pub const POOL_WAIT_BUCKETS: [f64; 12] = [
    0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];
/// Cut-over holds of rebalancing jobs, as this proxy held new requests.
pub const REBALANCE_HOLD: &str = "pgshard_rebalance_hold_seconds";
/// Rows a rebalancing step has on its destination so far.
pub const REBALANCE_ROWS_COPIED: &str = "pgshard_rebalance_rows_copied";
/// Bytes of WAL a rebalancing step's destination is behind its source.
pub const REBALANCE_LAG_BYTES: &str = "pgshard_rebalance_lag_bytes";
