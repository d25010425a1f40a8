//! The hooks the data path calls. Each is a few atomic operations on the process-wide recorder, or
//! for the families recorded on every statement on pgshard's own fixed-bucket histograms (a no-op
//! when metrics are off: no recorder is installed then).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::hot_histogram::DurationHistogram;
use super::{
    CLIENT_CONNECTIONS, CLIENT_CONNECTIONS_TOTAL, ERRORS_TOTAL, FAILOVER_BUFFERED_TOTAL, POOL_WAIT,
    POOL_WAIT_BUCKETS, QUERIES_TOTAL, QUERY_BUCKETS, QUERY_DURATION, REBALANCE_HOLD,
    REBALANCE_LAG_BYTES, REBALANCE_ROWS_COPIED, SESSION_PINS_TOTAL,
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

/// Set once the global recorder is installed; until then (and in a process without one) the
/// hooks record nothing, as the facade's no-op recorder would.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Per route kind (indexed by `RouteKind as usize`): the duration histogram of its queries, whose
/// count is also the kind's query counter (both moved together on every query).
static QUERIES: [DurationHistogram<{ QUERY_BUCKETS.len() }>; RouteKind::ALL.len()] =
    [const { DurationHistogram::new(&QUERY_BUCKETS) }; RouteKind::ALL.len()];

/// Checkouts from server pools, by how long they took.
static POOL_WAITS: DurationHistogram<{ POOL_WAIT_BUCKETS.len() }> =
    DurationHistogram::new(&POOL_WAIT_BUCKETS);

/// Called right after the global recorder is installed.
pub(super) fn recorder_installed() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// True once metrics are recorded (the recorder is installed).
fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The per-statement families (query counter and duration by route kind, pool waits) in
/// Prometheus's text format, for the scrape; a family or route kind appears once something was
/// recorded in it.
pub fn hot_text() -> String {
    let mut out = String::new();
    let kinds = || {
        RouteKind::ALL
            .iter()
            .zip(&QUERIES)
            .filter(|(_, h)| h.count() > 0)
    };
    if kinds().next().is_some() {
        out.push_str(&format!(
            "# HELP {QUERIES_TOTAL} Statements (or extended-protocol batches) run, by route kind.\n\
             # TYPE {QUERIES_TOTAL} counter\n"
        ));
        for (kind, h) in kinds() {
            out.push_str(&format!(
                "{QUERIES_TOTAL}{{route=\"{}\"}} {}\n",
                kind.label(),
                h.count()
            ));
        }
        out.push_str(&format!(
            "# HELP {QUERY_DURATION} Time from routing a statement to its last answer queued for \
             the client, by route kind.\n# TYPE {QUERY_DURATION} histogram\n"
        ));
        for (kind, h) in kinds() {
            h.render(
                QUERY_DURATION,
                &format!("route=\"{}\"", kind.label()),
                &mut out,
            );
        }
    }
    if POOL_WAITS.count() > 0 {
        out.push_str(&format!(
            "# HELP {POOL_WAIT} Time spent waiting for a server connection from a pool.\n\
             # TYPE {POOL_WAIT} histogram\n"
        ));
        POOL_WAITS.render(POOL_WAIT, "", &mut out);
    }
    out
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
        if !enabled() {
            return;
        }
        if let Some(h) = QUERIES.get(self.route as usize) {
            h.record(self.started.elapsed());
        }
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

/// A checkout from a server pool took `waited` (whether or not it got a connection); a
/// connection a client kept between its transactions counts as a checkout that took none.
pub fn pool_waited(waited: Duration) {
    if enabled() {
        POOL_WAITS.record(waited);
    }
}

/// True when checkouts are timed (metrics are on): a caller skips reading the clock otherwise.
pub fn pool_waits_recorded() -> bool {
    enabled()
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
