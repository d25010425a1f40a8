//! The hooks the data path calls. Each is a few atomic operations on the process-wide recorder
//! (a no-op when metrics are off: no recorder is installed then).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};

use super::{
    CLIENT_CONNECTIONS, CLIENT_CONNECTIONS_TOTAL, ERRORS_TOTAL, FAILOVER_BUFFERED_TOTAL, POOL_WAIT,
    QUERIES_TOTAL, QUERY_DURATION, REBALANCE_HOLD, REBALANCE_LAG_BYTES, REBALANCE_ROWS_COPIED,
    SESSION_PINS_TOTAL,
};

/// How a statement reached the shards: the `route` label of the query metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// One shard.
    Single,
    /// Several shards, answers merged.
    Scatter,
    /// Every shard changed alike (reference tables, DDL).
    Broadcast,
    /// An INSERT whose rows were split by key across shards.
    SplitInsert,
    /// A COPY FROM STDIN split by key across shards.
    CopyIn,
    /// A two-phase commit of a transaction that wrote to several shards.
    TwoPhaseCommit,
}

impl RouteKind {
    /// Every route kind, in declaration order (`self as usize` indexes it).
    const ALL: [RouteKind; 6] = [
        RouteKind::Single,
        RouteKind::Scatter,
        RouteKind::Broadcast,
        RouteKind::SplitInsert,
        RouteKind::CopyIn,
        RouteKind::TwoPhaseCommit,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RouteKind::Single => "single",
            RouteKind::Scatter => "scatter",
            RouteKind::Broadcast => "broadcast",
            RouteKind::SplitInsert => "split_insert",
            RouteKind::CopyIn => "copy_in",
            RouteKind::TwoPhaseCommit => "two_phase_commit",
        }
    }
}

/// Handles of the metrics recorded on every query, each registered with the recorder on its first
/// use (so a family appears once something was recorded in it, as before): looking a metric up by
/// name and labels on each query (hashing its key in the registry) cost more than recording.
struct HotHandles {
    /// Per route kind (indexed by `RouteKind as usize`): its query counter and duration histogram.
    queries: [OnceLock<(Counter, Histogram)>; RouteKind::ALL.len()],
    pool_wait: OnceLock<Histogram>,
}

/// Set once the global recorder is installed; until then (and in a process without one) the
/// hooks record nothing, as the facade's no-op recorder would.
static HOT: OnceLock<HotHandles> = OnceLock::new();

/// Called right after the global recorder is installed.
pub(super) fn recorder_installed() {
    let _ = HOT.set(HotHandles {
        queries: Default::default(),
        pool_wait: OnceLock::new(),
    });
}

/// Counts one query of a route kind and its duration when dropped, however the work ends.
pub struct QueryTimer {
    route: RouteKind,
    started: Instant,
}

impl QueryTimer {
    /// Starts timing a query routed as `route`.
    pub fn start(route: RouteKind) -> QueryTimer {
        QueryTimer {
            route,
            started: Instant::now(),
        }
    }
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        let Some(hot) = HOT.get() else {
            return;
        };
        let Some(slot) = hot.queries.get(self.route as usize) else {
            return;
        };
        let (count, duration) = slot.get_or_init(|| {
            let route = self.route.label();
            (
                metrics::counter!(QUERIES_TOTAL, "route" => route),
                metrics::histogram!(QUERY_DURATION, "route" => route),
            )
        });
        count.increment(1);
        duration.record(self.started.elapsed().as_secs_f64());
    }
}

/// A client became pinned to a server connection for `reason` (a `SessionPin` label).
pub fn session_pinned(reason: &'static str) {
    metrics::counter!(SESSION_PINS_TOTAL, "reason" => reason).increment(1);
}

/// One client connection, counted while it lives.
pub struct ClientConnection(());

impl ClientConnection {
    /// A client connected.
    pub fn open() -> ClientConnection {
        metrics::counter!(CLIENT_CONNECTIONS_TOTAL).increment(1);
        metrics::gauge!(CLIENT_CONNECTIONS).increment(1.0);
        ClientConnection(())
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        metrics::gauge!(CLIENT_CONNECTIONS).decrement(1.0);
    }
}

/// An ErrorResponse with SQLSTATE `code` went to a client.
pub fn error_sent(code: &str) {
    metrics::counter!(ERRORS_TOTAL, "class" => sqlstate_class(code)).increment(1);
}

/// An ErrorResponse frame body (from pgshard or forwarded from a server) went to a client.
pub fn error_frame_sent(body: &[u8]) {
    error_sent(error_code(body).unwrap_or(""));
}

/// A checkout from a server pool took `waited` (whether or not it got a connection).
pub fn pool_waited(waited: Duration) {
    if let Some(hot) = HOT.get() {
        hot.pool_wait
            .get_or_init(|| metrics::histogram!(POOL_WAIT))
            .record(waited.as_secs_f64());
    }
}

/// A statement held for its shard's new primary ran there (`resumed`) or failed (`expired`).
pub fn failover_buffered(outcome: &'static str) {
    metrics::counter!(FAILOVER_BUFFERED_TOTAL, "outcome" => outcome).increment(1);
}

/// A cut-over hold of `ms` milliseconds ended on this proxy.
pub fn rebalance_hold(ms: u64) {
    metrics::histogram!(REBALANCE_HOLD).record(ms as f64 / 1000.0);
}

/// A rebalancing step's progress: rows on the destination and WAL bytes behind the source.
pub fn rebalance_progress(job: i64, step: i32, rows: i64, lag_bytes: Option<i64>) {
    let (job, step) = (job.to_string(), step.to_string());
    metrics::gauge!(REBALANCE_ROWS_COPIED, "job" => job.clone(), "step" => step.clone())
        .set(rows as f64);
    if let Some(lag) = lag_bytes {
        metrics::gauge!(REBALANCE_LAG_BYTES, "job" => job, "step" => step).set(lag as f64);
    }
}

/// The class label of a SQLSTATE: its first two characters, or `unknown` for anything that is not
/// a five-character code of digits and capital letters (a malformed server message must not make
/// new label values).
pub fn sqlstate_class(code: &str) -> String {
    let valid = code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    if valid {
        code[..2].to_string()
    } else {
        "unknown".to_string()
    }
}

/// The `C` (code) field of an ErrorResponse body: fields are a type byte and a NUL-terminated
/// string, ended by a zero byte.
fn error_code(body: &[u8]) -> Option<&str> {
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let end = after.iter().position(|&b| b == 0)?;
        if kind == b'C' {
            return std::str::from_utf8(&after[..end]).ok();
        }
        rest = &after[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::backend::ErrorFields;

    #[test]
    fn code_is_read_from_an_error_body() {
        let frame = ErrorFields::error("23505", "duplicate key").to_frame();
        assert_eq!(error_code(&frame.body), Some("23505"));
        assert_eq!(error_code(b"Mno code\0\0"), None);
        assert_eq!(error_code(b"Cunterminated"), None);
        assert_eq!(error_code(b""), None);
    }

    #[test]
    fn route_kinds_index_their_handles() {
        for (i, kind) in RouteKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?}");
        }
    }

    #[test]
    fn class_is_two_characters_of_a_valid_code() {
        assert_eq!(sqlstate_class("23505"), "23");
        assert_eq!(sqlstate_class("0A000"), "0A");
        assert_eq!(sqlstate_class("2350"), "unknown");
        assert_eq!(sqlstate_class("23\u{e9}05"), "unknown");
        assert_eq!(sqlstate_class("ab123"), "unknown");
    }
}
