//! Counters of read routing over replicas and of failovers, bumped by sessions and monitors
//! without locks; gauges (lag, fenced servers) are read from the topology when a snapshot is
//! taken. The operations work exports a `snapshot()`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::topology::{Role, ServerId, Topology};
use crate::config::Config;

/// Upper bounds (seconds) of the LSN-wait histogram buckets; a last, unbounded bucket follows.
pub const LSN_WAIT_BUCKETS: [f64; 9] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Every counter of replica routing and failover.
pub struct ReplicaMetrics {
    /// Reads served, per server (primaries and replicas alike).
    reads: BTreeMap<ServerId, AtomicU64>,
    lsn_waits: AtomicU64,
    lsn_wait_micros: AtomicU64,
    /// Non-cumulative counts per bucket of `LSN_WAIT_BUCKETS`, plus the unbounded one.
    lsn_wait_buckets: [AtomicU64; LSN_WAIT_BUCKETS.len() + 1],
    primary_fallbacks: AtomicU64,
    failovers: AtomicU64,
}

/// The counters and gauges at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub reads: Vec<(ServerId, u64)>,
    pub lsn_waits_total: u64,
    pub lsn_wait_seconds_sum: f64,
    /// Cumulative (`le`, count) pairs, the last one with `le = +Inf`.
    pub lsn_wait_buckets: Vec<(f64, u64)>,
    pub primary_fallbacks_total: u64,
    pub failovers_total: u64,
    /// Replicas only; `None` while unknown.
    pub replica_lag_bytes: Vec<(ServerId, Option<u64>)>,
    pub replica_lag_ms: Vec<(ServerId, Option<u64>)>,
    pub fenced_servers: u64,
}

impl ReplicaMetrics {
    /// Zeroed counters for every server of the config.
    pub fn new(config: &Config) -> ReplicaMetrics {
        let mut reads = BTreeMap::new();
        for shard in &config.shards {
            for index in 0..=shard.replicas.len() {
                let id = ServerId {
                    shard: shard.id,
                    index: index as u16,
                };
                reads.insert(id, AtomicU64::new(0));
            }
        }
        ReplicaMetrics {
            reads,
            lsn_waits: AtomicU64::new(0),
            lsn_wait_micros: AtomicU64::new(0),
            lsn_wait_buckets: Default::default(),
            primary_fallbacks: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    /// A read (a statement outside a writing transaction) went to `server`.
    pub fn read_served(&self, server: ServerId) {
        if let Some(c) = self.reads.get(&server) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A read waited `waited` for a replica to replay the session's writes (whether or not the
    /// wait succeeded; a wait that gave up also counts a fallback).
    pub fn lsn_waited(&self, waited: Duration) {
        self.lsn_waits.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.lsn_wait_micros.fetch_add(micros, Ordering::Relaxed);
        let secs = waited.as_secs_f64();
        let bucket = LSN_WAIT_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LSN_WAIT_BUCKETS.len());
        self.lsn_wait_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// A read that could have gone to a replica went to the primary (no replica healthy, within
    /// the lag bound, or caught up in time).
    pub fn primary_fallback(&self) {
        self.primary_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// A shard's writes moved to a newly promoted primary.
    pub fn failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, with the gauges read from `topology`.
    pub fn snapshot(&self, topology: &Topology) -> MetricsSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.lsn_wait_buckets.len());
        for (i, count) in self.lsn_wait_buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LSN_WAIT_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((le, cumulative));
        }
        let servers = topology.all();
        let replicas = servers.iter().filter(|s| s.role == Role::Replica);
        MetricsSnapshot {
            reads: self
                .reads
                .iter()
                .map(|(id, c)| (*id, c.load(Ordering::Relaxed)))
                .collect(),
            lsn_waits_total: self.lsn_waits.load(Ordering::Relaxed),
            lsn_wait_seconds_sum: self.lsn_wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
            lsn_wait_buckets: buckets,
            primary_fallbacks_total: self.primary_fallbacks.load(Ordering::Relaxed),
            failovers_total: self.failovers.load(Ordering::Relaxed),
            replica_lag_bytes: replicas.clone().map(|s| (s.id, s.lag_bytes)).collect(),
            replica_lag_ms: replicas.map(|s| (s.id, s.lag_ms)).collect(),
            fenced_servers: servers
                .iter()
                .filter(|s| matches!(s.role, Role::Fenced { .. }))
                .count() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[proxy]
[[users]]
name = "app"
auth = "trust"
[catalog]
url = "postgres://u:p@127.0.0.1:7000/catalog"
[server_auth]
user = "u"
[[shards]]
id = 0
port = 7001
database = "app"
replicas = [{ port = 7101 }]
"#;
        Config::from_toml(text, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn counters_buckets_and_gauges() {
        let config = config();
        let topology = Topology::new(&config);
        let m = ReplicaMetrics::new(&config);
        let replica = ServerId { shard: 0, index: 1 };
        m.read_served(replica);
        m.read_served(replica);
        m.read_served(ServerId { shard: 9, index: 0 });
        m.lsn_waited(Duration::from_micros(1500));
        m.lsn_waited(Duration::from_millis(3));
        m.lsn_waited(Duration::from_secs(2));
        m.primary_fallback();
        let mut s = topology.server(replica).unwrap();
        s.role = Role::Replica;
        s.lag_bytes = Some(42);
        topology.update(s);
        let mut s = topology.server(ServerId { shard: 0, index: 0 }).unwrap();
        s.role = Role::Fenced {
            reason: "test".into(),
        };
        topology.update(s);

        let snap = m.snapshot(&topology);
        assert_eq!(
            snap.reads,
            vec![(ServerId { shard: 0, index: 0 }, 0), (replica, 2)]
        );
        assert_eq!(snap.lsn_waits_total, 3);
        assert!((snap.lsn_wait_seconds_sum - 2.0045).abs() < 1e-9);
        let count_le = |le: f64| snap.lsn_wait_buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(count_le(0.001), 0);
        assert_eq!(count_le(0.002), 1);
        assert_eq!(count_le(0.005), 2);
        assert_eq!(count_le(1.0), 2);
        assert_eq!(count_le(f64::INFINITY), 3);
        assert_eq!(snap.primary_fallbacks_total, 1);
        assert_eq!(snap.replica_lag_bytes, vec![(replica, Some(42))]);
        assert_eq!(snap.fenced_servers, 1);
    }
}
