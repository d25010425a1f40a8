//! The proxy's state at scrape time in Prometheus text format: replica routing counters and
//! lag from `ReplicaMetrics`, and pool sizes per server. Rendered from a snapshot rather than
//! kept in the recorder, so each value is exact and belongs to this proxy.

use std::fmt::Write;

use crate::backend::metrics::MetricsSnapshot;
use crate::backend::topology::ServerId;

/// One server's pool at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGauges {
    pub server: ServerId,
    /// Open connections (idle and in use).
    pub open: usize,
    /// Open connections not in use.
    pub idle: usize,
    /// The pool's size limit.
    pub max: usize,
    /// Checkouts waiting for a connection.
    pub waiting: usize,
}

/// A pool gauge family: name, help, and the value it reads.
type PoolFamily = (&'static str, &'static str, fn(&PoolGauges) -> usize);

/// Builds one metric family at a time: HELP and TYPE lines, then samples.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

fn server_labels(id: ServerId) -> String {
    format!("shard=\"{}\",server=\"{}\"", id.shard, id.index)
}

/// `+Inf` as Prometheus spells it, other bounds as plain numbers.
fn bound(le: f64) -> String {
    if le.is_infinite() {
        "+Inf".to_string()
    } else {
        le.to_string()
    }
}

/// The text of every scrape-time family.
pub fn render(snapshot: &MetricsSnapshot, pools: &[PoolGauges]) -> String {
    let mut t = Text { out: String::new() };
    t.family(
        "pgshard_server_reads_total",
        "counter",
        "Reads (statements outside a writing transaction) served, per server (server 0 is the configured primary).",
    );
    for (id, n) in &snapshot.reads {
        t.sample("pgshard_server_reads_total", &server_labels(*id), n);
    }
    t.family(
        "pgshard_lsn_wait_seconds",
        "histogram",
        "Time reads waited for a replica to replay the session's own writes.",
    );
    for (le, n) in &snapshot.lsn_wait_buckets {
        t.sample(
            "pgshard_lsn_wait_seconds_bucket",
            &format!("le=\"{}\"", bound(*le)),
            n,
        );
    }
    t.sample(
        "pgshard_lsn_wait_seconds_sum",
        "",
        snapshot.lsn_wait_seconds_sum,
    );
    t.sample(
        "pgshard_lsn_wait_seconds_count",
        "",
        snapshot.lsn_waits_total,
    );
    t.family(
        "pgshard_primary_fallbacks_total",
        "counter",
        "Reads that could have gone to a replica but went to the primary.",
    );
    t.sample(
        "pgshard_primary_fallbacks_total",
        "",
        snapshot.primary_fallbacks_total,
    );
    t.family(
        "pgshard_failovers_total",
        "counter",
        "Times a shard's writes moved to a newly promoted primary.",
    );
    t.sample("pgshard_failovers_total", "", snapshot.failovers_total);
    t.family(
        "pgshard_fenced_servers",
        "gauge",
        "Servers fenced off (a former primary that must not take writes).",
    );
    t.sample("pgshard_fenced_servers", "", snapshot.fenced_servers);
    t.family(
        "pgshard_replica_lag_bytes",
        "gauge",
        "WAL bytes a replica has yet to replay (replicas whose lag is known).",
    );
    for (id, lag) in &snapshot.replica_lag_bytes {
        if let Some(lag) = lag {
            t.sample("pgshard_replica_lag_bytes", &server_labels(*id), lag);
        }
    }
    t.family(
        "pgshard_replica_lag_seconds",
        "gauge",
        "Replay delay of a replica (replicas whose lag is known).",
    );
    for (id, lag) in &snapshot.replica_lag_ms {
        if let Some(ms) = lag {
            let secs = *ms as f64 / 1000.0;
            t.sample("pgshard_replica_lag_seconds", &server_labels(*id), secs);
        }
    }
    let pool_families: [PoolFamily; 4] = [
        (
            "pgshard_server_connections",
            "Open server connections of the pool, idle and in use.",
            |p| p.open,
        ),
        (
            "pgshard_server_connections_idle",
            "Open server connections not in use.",
            |p| p.idle,
        ),
        (
            "pgshard_server_connections_max",
            "The pool's size limit.",
            |p| p.max,
        ),
        (
            "pgshard_pool_waiting",
            "Checkouts waiting for a server connection now.",
            |p| p.waiting,
        ),
    ];
    for (name, help, value) in pool_families {
        t.family(name, "gauge", help);
        for pool in pools {
            t.sample(name, &server_labels(pool.server), value(pool));
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let primary = ServerId { shard: 3, index: 0 };
        let replica = ServerId { shard: 3, index: 1 };
        let snapshot = MetricsSnapshot {
            reads: vec![(primary, 5), (replica, 7)],
            lsn_waits_total: 2,
            lsn_wait_seconds_sum: 0.5,
            lsn_wait_buckets: vec![(0.1, 1), (f64::INFINITY, 2)],
            primary_fallbacks_total: 1,
            failovers_total: 0,
            replica_lag_bytes: vec![(replica, Some(100))],
            replica_lag_ms: vec![(replica, None)],
            fenced_servers: 0,
        };
        let pools = [PoolGauges {
            server: primary,
            open: 4,
            idle: 3,
            max: 10,
            waiting: 0,
        }];
        let text = render(&snapshot, &pools);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE pgshard_server_reads_total counter",
            "pgshard_server_reads_total{shard=\"3\",server=\"1\"} 7",
            "pgshard_lsn_wait_seconds_bucket{le=\"0.1\"} 1",
            "pgshard_lsn_wait_seconds_bucket{le=\"+Inf\"} 2",
            "pgshard_lsn_wait_seconds_sum 0.5",
            "pgshard_lsn_wait_seconds_count 2",
            "pgshard_primary_fallbacks_total 1",
            "pgshard_replica_lag_bytes{shard=\"3\",server=\"1\"} 100",
            "pgshard_server_connections{shard=\"3\",server=\"0\"} 4",
            "pgshard_server_connections_idle{shard=\"3\",server=\"0\"} 3",
            "pgshard_server_connections_max{shard=\"3\",server=\"0\"} 10",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        // Unknown lag is left out, not reported as zero.
        assert!(!text.contains("pgshard_replica_lag_seconds{"));
    }
}
