//! The monitors: per shard, a round every `monitor_interval_ms` in which every server's own task
//! samples it at the same moment (role, WAL position, timeline, health); then the shard's task
//! computes replica lag against the primary's position from that round, decides roles and
//! failover (`failover::decide`), records a new primary in the catalog with a compare-and-set, and
//! publishes the round to the topology in one update (which wakes readers waiting for a replica).
//!
//! A server that is slow or unreachable never holds up the others: a round waits for its answers
//! only until the round's deadline, and a server keeps its previous state until it answers.
//! While someone waits on the shard's state (`Topology::want_fresh_samples`: statements held for
//! a new primary) the shard is sampled every `FAST_INTERVAL` instead. Reads waiting for a replica
//! to replay their writes ask the replica itself (`frontend::read_routing`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::failover::{self, Observed, Recorded, ShardView};
use super::metrics::ReplicaMetrics;
use super::pool::ShardPools;
use super::probe::{Probe, Sample};
use super::tls::ServerTls;
use super::topology::{Lsn, Role, ServerId, ServerState, Topology};
use crate::catalog::{PrimaryRecord, PrimaryRecords};
use crate::config::{Config, ShardConfig};

/// The sampling interval of a shard while sessions wait for one of its replicas.
pub const FAST_INTERVAL: Duration = Duration::from_millis(5);

/// The running monitors of every shard; shards the topology adds or changes get theirs (re)started.
pub struct Monitors {
    shutdown: watch::Sender<bool>,
    ctx: MonitorContext,
    tasks: std::sync::Mutex<std::collections::BTreeMap<u32, tokio::task::JoinHandle<()>>>,
}

impl Monitors {
    /// Stops every monitor (and closes their connections).
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks.values() {
            task.abort();
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }

    /// Starts `shard`'s monitor over its servers as given, replacing the one running.
    pub fn restart_shard(&self, shard: ShardConfig) {
        let id = shard.id;
        let task = tokio::spawn(run_shard(
            self.ctx.clone(),
            shard,
            self.shutdown.subscribe(),
        ));
        if let Some(old) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, task)
        {
            old.abort();
        }
    }

    /// Stops `shard`'s monitor (the shard left the topology).
    pub fn stop_shard(&self, shard: u32) {
        if let Some(old) = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard)
        {
            old.abort();
        }
    }

    /// What the monitors share.
    pub fn context(&self) -> &MonitorContext {
        &self.ctx
    }
}

/// What the monitors share.
#[derive(Clone)]
pub struct MonitorContext {
    pub config: Arc<Config>,
    pub topology: Arc<Topology>,
    pub pools: Arc<ShardPools>,
    pub records: Arc<PrimaryRecords>,
    pub metrics: Arc<ReplicaMetrics>,
    /// How monitor connections reach the servers (`[server_tls]`).
    pub tls: ServerTls,
}

/// Routes writes to the primaries the catalog records (read once, before any client arrives).
pub async fn adopt_recorded_primaries(ctx: &MonitorContext) {
    adopt_recorded_primaries_of(ctx, &ctx.config.shards).await
}

/// [`adopt_recorded_primaries`] for some shards (ones the topology just added).
pub async fn adopt_recorded_primaries_of(ctx: &MonitorContext, shards: &[ShardConfig]) {
    match ctx.records.load_all().await {
        Ok(rows) => {
            for shard in shards {
                if let Some(row) = rows.get(&shard.id) {
                    let recorded = resolve(shard, row);
                    apply_primary(
                        ctx,
                        shard.id,
                        recorded.index,
                        "recorded in the catalog",
                        false,
                    );
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the recorded shard primaries; routing writes to the configured ones until the monitors reach the catalog")
        }
    }
}

/// Starts one monitor per shard (and one sampling task per server).
pub fn start(ctx: MonitorContext) -> Monitors {
    let monitors = Monitors {
        shutdown: watch::channel(false).0,
        ctx: ctx.clone(),
        tasks: Default::default(),
    };
    for shard in ctx.config.shards.clone() {
        monitors.restart_shard(shard);
    }
    monitors
}

/// A server's address as the config names it, by index.
fn addresses(shard: &ShardConfig) -> Vec<(String, u16)> {
    std::iter::once((shard.host.clone(), shard.port))
        .chain(shard.replicas.iter().map(|r| (r.host.clone(), r.port)))
        .collect()
}

/// The catalog row of `shard`, with its address looked up among the configured servers.
fn resolve(shard: &ShardConfig, row: &PrimaryRecord) -> Recorded {
    let index = addresses(shard)
        .iter()
        .position(|(h, p)| format!("{h}:{p}") == row.address)
        .map(|i| i as u16);
    if index.is_none() {
        tracing::error!(shard = shard.id, address = %row.address, "the catalog records a primary that this proxy's config does not list; every proxy must name the servers alike");
    }
    Recorded {
        index,
        timeline: row.timeline,
    }
}

/// Points `shard`'s writes at `index` (or nowhere), closing pooled connections to the server
/// they leave; `failover` counts it in the metrics.
fn apply_primary(ctx: &MonitorContext, shard: u32, index: Option<u16>, why: &str, failover: bool) {
    let old = ctx.topology.primary(shard);
    let new = index.map(|index| ServerId { shard, index });
    if old == new {
        return;
    }
    match new {
        Some(id) => {
            tracing::warn!(shard, from = ?old.map(|o| o.index), to = id.index, "shard primary changed ({why})");
            ctx.topology.set_primary(id);
        }
        None => {
            tracing::error!(
                shard,
                "no server of the shard is trusted with writes ({why})"
            );
            ctx.topology.clear_primary(shard);
        }
    }
    if let Some(old) = old {
        ctx.pools.drain(old);
    }
    if failover {
        ctx.metrics.failover();
    }
}

/// A sample result from a server task: (server index, round, outcome).
type Report = (u16, u64, Result<Sample, String>);

/// One server's task: samples whenever its shard starts a round.
async fn run_server(
    mut probe: Probe,
    index: u16,
    mut rounds: watch::Receiver<u64>,
    out: mpsc::Sender<Report>,
) {
    while rounds.changed().await.is_ok() {
        let round = *rounds.borrow_and_update();
        let outcome = probe.sample().await.map_err(|e| e.to_string());
        if out.send((index, round, outcome)).await.is_err() {
            return;
        }
    }
}

/// What the shard's task remembers of one server between rounds.
#[derive(Default, Clone)]
struct Known {
    /// The last successful sample.
    last: Option<Sample>,
    healthy: bool,
    error: Option<String>,
    /// The last time its replay position was at (or past) the primary's.
    caught_up_at: Option<Instant>,
    role: Option<Role>,
    lag_bytes: Option<u64>,
    lag_ms: Option<u64>,
}

async fn run_shard(ctx: MonitorContext, shard: ShardConfig, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(ctx.config.replicas.monitor_interval_ms.max(1));
    let fast = FAST_INTERVAL.min(interval);
    let timeout = ctx.config.pool.connect_timeout();
    let catalog_poll = Duration::from_millis(ctx.config.catalog.poll_interval_ms.max(100));
    let servers = addresses(&shard);
    let (rounds_tx, rounds_rx) = watch::channel(0u64);
    let (reports_tx, mut reports) = mpsc::channel::<Report>(servers.len() * 4);
    let mut server_tasks = JoinSet::new();
    for (index, (host, port)) in servers.iter().enumerate() {
        let id = ServerId {
            shard: shard.id,
            index: index as u16,
        };
        let probe = Probe::new(
            &shard,
            ctx.config.control_login(&shard),
            id,
            host,
            *port,
            &ctx.tls,
            timeout,
        );
        server_tasks.spawn(run_server(
            probe,
            id.index,
            rounds_rx.clone(),
            reports_tx.clone(),
        ));
    }
    drop(reports_tx);
    let Some(interest) = ctx.topology.sample_interest(shard.id) else {
        return;
    };
    let mut known = vec![Known::default(); servers.len()];
    let mut recorded: Option<Recorded> = None;
    let mut catalog_read_at: Option<Instant> = None;
    let mut catalog_failing = false;
    let mut round = 0u64;
    let mut wait = interval;
    loop {
        round += 1;
        let _ = rounds_tx.send(round);
        // A round waits this long for slow servers; they report in a later round.
        let deadline = tokio::time::Instant::now() + wait.max(Duration::from_millis(20));
        let mut answered = 0;
        while answered < servers.len() {
            tokio::select! {
                report = reports.recv() => {
                    let Some((index, r, outcome)) = report else { return };
                    if r == round {
                        answered += 1;
                    }
                    if let Some(k) = known.get_mut(index as usize) {
                        note(k, outcome, ServerId { shard: shard.id, index });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.changed() => return,
            }
        }

        // The catalog's row: at start, on a slow poll, and whenever this proxy wants to change it.
        if catalog_read_at.is_none_or(|t| t.elapsed() >= catalog_poll) {
            match ctx.records.load_all().await {
                Ok(rows) => {
                    recorded = rows.get(&shard.id).map(|row| resolve(&shard, row));
                    catalog_read_at = Some(Instant::now());
                    catalog_failing = false;
                }
                Err(e) => {
                    if !catalog_failing {
                        tracing::warn!(shard = shard.id, error = %e, "monitor cannot read the recorded primary; keeping the last one");
                        catalog_failing = true;
                    }
                    catalog_read_at = Some(Instant::now());
                }
            }
        }

        let decision = decide(&ctx, &shard, &known, recorded);
        let decision = match decision.record {
            Some((index, timeline)) => {
                let (host, port) = &servers[index as usize];
                match ctx
                    .records
                    .compare_and_set(shard.id, &format!("{host}:{port}"), timeline)
                    .await
                {
                    Ok(row) => {
                        recorded = row.map(|row| resolve(&shard, &row));
                        catalog_read_at = Some(Instant::now());
                        if recorded
                            .is_some_and(|r| r.index == Some(index) && r.timeline == timeline)
                        {
                            tracing::info!(
                                shard = shard.id,
                                server = index,
                                timeline,
                                "recorded the shard's primary in the catalog"
                            );
                        }
                        decide(&ctx, &shard, &known, recorded)
                    }
                    Err(e) => {
                        if !catalog_failing {
                            tracing::warn!(shard = shard.id, server = index, timeline, error = %e, "cannot record the shard's primary in the catalog; writes stay where they are");
                            catalog_failing = true;
                        }
                        decision
                    }
                }
            }
            None => decision,
        };
        let target = match recorded {
            Some(r) => r.index,
            None => ctx.topology.primary(shard.id).map(|p| p.index),
        };
        // The catalog stays authoritative; a recorded server this proxy fences would be a bug.
        let target = target.filter(|i| !matches!(decision.roles.get(i), Some(Role::Fenced { .. })));
        if recorded.is_some() {
            apply_primary(
                &ctx,
                shard.id,
                target,
                "the catalog records another primary",
                true,
            );
        }
        for (index, role) in &decision.roles {
            if let Some(k) = known.get_mut(*index as usize) {
                if let Role::Fenced { reason } = role {
                    if k.role.as_ref() != Some(role) {
                        tracing::error!(shard = shard.id, server = index, %reason, "fenced a server");
                    }
                }
                k.role = Some(role.clone());
            }
        }
        measure_lag(&mut known, target);
        publish(&ctx, &shard, &known);

        wait = if interest.wanted() { fast } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = interest.arrived.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Takes in one server's sample outcome.
fn note(k: &mut Known, outcome: Result<Sample, String>, id: ServerId) {
    match outcome {
        Ok(sample) => {
            if !k.healthy && k.error.is_some() {
                tracing::info!(server = %id, "server answers again");
            }
            k.last = Some(sample);
            k.healthy = true;
            k.error = None;
        }
        Err(e) => {
            if k.healthy || k.error.is_none() {
                tracing::warn!(server = %id, error = %e, "server does not answer its monitor");
            }
            k.healthy = false;
            k.error = Some(e);
        }
    }
}

fn decide(
    ctx: &MonitorContext,
    shard: &ShardConfig,
    known: &[Known],
    recorded: Option<Recorded>,
) -> failover::Decision {
    let view = ShardView {
        recorded,
        current: ctx.topology.primary(shard.id).map(|p| p.index).unwrap_or(0),
        servers: known
            .iter()
            .enumerate()
            .map(|(i, k)| Observed {
                index: i as u16,
                healthy: k.healthy,
                in_recovery: k.last.map(|s| s.in_recovery),
                timeline: k.last.and_then(|s| s.timeline),
            })
            .collect(),
    };
    let servers = addresses(shard);
    failover::decide(&view, |i| match servers.get(i as usize) {
        Some((h, p)) => format!("server {i} ({h}:{p})"),
        None => format!("server {i}"),
    })
}

/// Replica lag against the primary's position: in bytes against the primary's latest sample
/// (this round's when it answered; its last known one while it is down, which it cannot have
/// moved past); in time only when behind in bytes (an idle primary would otherwise look
/// infinitely far ahead), as the smaller of two upper bounds — since the last replayed commit,
/// and since the replica was last seen caught up.
fn measure_lag(known: &mut [Known], primary: Option<u16>) {
    let primary_lsn: Option<Lsn> = primary
        .and_then(|p| known.get(p as usize))
        .and_then(|k| k.last)
        .filter(|s| !s.in_recovery)
        .and_then(|s| s.lsn);
    for (i, k) in known.iter_mut().enumerate() {
        let replica = k.role == Some(Role::Replica) && Some(i as u16) != primary;
        let (bytes, ms) = match (replica, primary_lsn, k.last) {
            (true, Some(p), Some(s)) => lag(p, &s, k.caught_up_at),
            _ => (None, None),
        };
        if bytes == Some(0) && k.healthy {
            k.caught_up_at = k.last.map(|s| s.at);
        }
        k.lag_bytes = bytes;
        k.lag_ms = ms;
    }
}

/// One replica's lag (bytes, ms) behind `primary_lsn`; see `measure_lag`.
pub fn lag(
    primary_lsn: Lsn,
    replica: &Sample,
    caught_up_at: Option<Instant>,
) -> (Option<u64>, Option<u64>) {
    let Some(replayed) = replica.lsn else {
        return (None, None);
    };
    let bytes = primary_lsn.0.saturating_sub(replayed.0);
    if bytes == 0 {
        return (Some(0), Some(0));
    }
    let since_caught_up = caught_up_at.map(|t| {
        u64::try_from(replica.at.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
    });
    let ms = match (replica.replay_delay_ms, since_caught_up) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (Some(bytes), ms)
}

/// Publishes the round's states of every server of the shard at once.
fn publish(ctx: &MonitorContext, shard: &ShardConfig, known: &[Known]) {
    let states = addresses(shard)
        .into_iter()
        .zip(known)
        .enumerate()
        .map(|(i, ((host, port), k))| ServerState {
            id: ServerId {
                shard: shard.id,
                index: i as u16,
            },
            address: format!("{host}:{port}"),
            role: k.role.clone().unwrap_or(Role::Unknown),
            healthy: k.healthy,
            timeline: k.last.and_then(|s| s.timeline).unwrap_or(0),
            lsn: k.last.and_then(|s| s.lsn),
            lag_bytes: k.lag_bytes,
            lag_ms: k.lag_ms,
            sampled_at: k.last.map(|s| s.at),
        })
        .collect();
    ctx.topology.update_shard(shard.id, states);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(lsn: u64, delay: Option<u64>, at: Instant) -> Sample {
        Sample {
            in_recovery: true,
            lsn: Some(Lsn(lsn)),
            timeline: Some(1),
            replay_delay_ms: delay,
            at,
        }
    }

    #[test]
    fn a_caught_up_replica_has_no_lag_even_when_the_primary_is_idle() {
        let now = Instant::now();
        assert_eq!(
            lag(Lsn(500), &replica(500, Some(3_600_000), now), None),
            (Some(0), Some(0))
        );
        // Sampled a moment after the primary, the replica may be ahead.
        assert_eq!(
            lag(Lsn(500), &replica(520, Some(10), now), None),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn time_lag_is_the_smaller_upper_bound() {
        let start = Instant::now();
        let now = start + Duration::from_millis(300);
        // Idle for an hour, then one record the replica has not replayed yet: it was caught up
        // 300 ms ago, so it is at most 300 ms behind.
        assert_eq!(
            lag(Lsn(600), &replica(500, Some(3_600_000), now), Some(start)),
            (Some(100), Some(300))
        );
        // Busy primary: the last replayed commit is 4 ms old.
        assert_eq!(
            lag(Lsn(600), &replica(500, Some(4), now), Some(start)),
            (Some(100), Some(4))
        );
        assert_eq!(
            lag(Lsn(600), &replica(500, None, now), None),
            (Some(100), None)
        );
    }

    #[test]
    fn a_replica_that_replayed_nothing_has_unknown_lag() {
        let mut s = replica(0, None, Instant::now());
        s.lsn = None;
        assert_eq!(lag(Lsn(600), &s, None), (None, None));
    }
}
