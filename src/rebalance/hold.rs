//! The proxy's side of rebalancing: the fence (which shards may hold rows they do not own, so
//! keyless statements there get ownership conditions) and the cut-over hold (new requests wait,
//! open transactions finish, the proxy acknowledges in the catalog, and after the release loads
//! the new map before letting the held requests go). A task per proxy follows the catalog.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::admin::gate::PauseGate;
use crate::catalog::{load_map, MapHandle};
use crate::config::Config;
use crate::router::ShardMap;

/// The catalog channel job, step and hold changes are announced on.
pub const CHANNEL: &str = "pgshard_rebalance";

/// Shards whose keyless statements must be fenced while job `job` runs, and the map the job
/// switches to (a cut-over hold stops only requests whose keys it moves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveFence {
    pub job: i64,
    pub shards: BTreeSet<u32>,
    pub target: Arc<ShardMap>,
}

impl From<super::jobs::JobFence> for ActiveFence {
    fn from(f: super::jobs::JobFence) -> ActiveFence {
        ActiveFence {
            job: f.job,
            shards: f.shards.into_iter().collect(),
            target: Arc::new(f.target),
        }
    }
}

/// Hold durations this proxy saw (SHOW JOBS, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldStats {
    pub holds: u64,
    pub abandoned: u64,
    pub longest_ms: u64,
    pub last_ms: u64,
}

/// Rebalancing state shared by the sessions of one proxy.
#[derive(Default)]
pub struct ProxyRebalance {
    /// Sessions take a pass before a request and keep it while their transaction is open, so a
    /// closed gate holds new work and waits for open transactions.
    pub gate: Arc<PauseGate>,
    fence: RwLock<Option<Arc<ActiveFence>>>,
    stats: Mutex<HoldStats>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ProxyRebalance {
    /// The fence in force, if a job is moving rows.
    pub fn fence(&self) -> Option<Arc<ActiveFence>> {
        self.fence.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The job fencing `shard`, if any.
    pub fn fencing(&self, shard: u32) -> Option<i64> {
        self.fence()
            .filter(|f| f.shards.contains(&shard))
            .map(|f| f.job)
    }

    fn set_fence(&self, fence: Option<ActiveFence>) {
        *self.fence.write().unwrap_or_else(|p| p.into_inner()) = fence.map(Arc::new);
    }

    /// Hold statistics so far.
    pub fn stats(&self) -> HoldStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_hold(&self, ms: u64, abandoned: bool) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.holds += 1;
        if abandoned {
            s.abandoned += 1;
        }
        s.last_ms = ms;
        s.longest_ms = s.longest_ms.max(ms);
        crate::telemetry::record::rebalance_hold(ms);
    }

    /// Keeps a background task to abort at [`ProxyRebalance::stop`].
    pub fn keep(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Stops the watch task and any job runner of this proxy.
    pub fn stop(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Reads the fence from the catalog and installs it (before a proxy serves clients).
pub async fn load_fence(config: &Config, state: &ProxyRebalance) -> Result<(), String> {
    let tls =
        crate::backend::ServerTls::load(config.server_tls.as_ref()).map_err(|e| e.to_string())?;
    let (client, conn) = tls
        .connect_url(&config.catalog.url)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let fence = super::jobs::fence(&client)
        .await
        .map_err(|e| e.to_string())?;
    state.set_fence(fence.map(ActiveFence::from));
    drop(client);
    task.abort();
    Ok(())
}

/// A catalog connection LISTENing on [`CHANNEL`], the receiver its announcements arrive on (one
/// `()` each; closed when the connection ends) and the task reading them (abort it when done).
pub async fn listen(
    tls: &crate::backend::ServerTls,
    url: &str,
) -> Result<
    (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        tokio::task::JoinHandle<()>,
    ),
    tokio_postgres::Error,
> {
    crate::catalog::listen(tls, url, &[CHANNEL]).await
}

/// Follows the catalog for one proxy (`node_id`): fence changes and cut-over holds.
pub fn start(
    config: Arc<Config>,
    state: Arc<ProxyRebalance>,
    map: MapHandle,
    node_id: u16,
    tls: crate::backend::ServerTls,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut w = Watcher {
            config,
            tls,
            state,
            map,
            node_id: i32::from(node_id),
            last_hold: 0,
            holding: None,
        };
        loop {
            if let Err(e) = w.follow().await {
                tracing::debug!(error = %e, "rebalance watch: catalog connection lost; reconnecting");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

struct Watcher {
    config: Arc<Config>,
    /// Catalog connections are protected like server connections (`[server_tls]`).
    tls: crate::backend::ServerTls,
    state: Arc<ProxyRebalance>,
    map: MapHandle,
    node_id: i32,
    /// Holds up to this id are handled.
    last_hold: i64,
    /// The hold this proxy is in (its gate closed), and since when.
    holding: Option<(i64, Instant)>,
}

impl Watcher {
    async fn follow(&mut self) -> Result<(), tokio_postgres::Error> {
        let (client, mut rx, conn_task) = listen(&self.tls, &self.config.catalog.url).await?;
        let result = self.run(&client, &mut rx).await;
        conn_task.abort();
        result
    }

    async fn run(
        &mut self,
        client: &Client,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> Result<(), tokio_postgres::Error> {
        // Holds requested before we started are not ours to acknowledge: a proxy that was not
        // live when the runner counted is not waited for.
        if self.last_hold == 0 {
            self.last_hold = client
                .query_one(
                    "SELECT coalesce(max(hold_id), 0) FROM rebalance_holds WHERE released_at IS NOT NULL OR abandoned_by IS NOT NULL",
                    &[],
                )
                .await?
                .get(0);
        }
        let poll = Duration::from_millis(self.config.catalog.poll_interval_ms.min(1000));
        loop {
            client
                .execute(
                    "UPDATE proxies SET last_seen = now() WHERE node_id = $1",
                    &[&self.node_id],
                )
                .await?;
            self.refresh_fence(client).await?;
            self.check_holds(client).await?;
            tokio::select! {
                n = rx.recv() => if n.is_none() { return Ok(()); },
                _ = tokio::time::sleep(poll) => {}
            }
            while rx.try_recv().is_ok() {}
        }
    }

    async fn refresh_fence(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let fence = match super::jobs::fence(client).await {
            Ok(f) => f,
            Err(super::RebalanceError::Catalog(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rebalancing fence");
                return Ok(());
            }
        };
        let job = fence.as_ref().map(|f| f.job);
        self.state.set_fence(fence.map(ActiveFence::from));
        if let Some(job) = job {
            client
                .execute(
                    "UPDATE proxies SET fence_job = greatest(fence_job, $2) WHERE node_id = $1",
                    &[&self.node_id, &job],
                )
                .await?;
        }
        Ok(())
    }

    /// Handles the oldest open hold: close the gate, wait for open transactions (bounded),
    /// acknowledge, wait for the release, load the new map, open the gate. With the catalog gone
    /// mid-hold the gate stays closed (a map that may be stale must not route) and the hold is
    /// taken up again after the reconnect.
    async fn check_holds(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let rb = &self.config.rebalance;
        let (hold_id, started) = match self.holding {
            Some(h) => h,
            None => {
                let Some(row) = client
                    .query_opt(
                        "SELECT hold_id FROM rebalance_holds WHERE hold_id > $1 AND released_at IS NULL \
                         AND abandoned_by IS NULL ORDER BY hold_id LIMIT 1",
                        &[&self.last_hold],
                    )
                    .await?
                else {
                    return Ok(());
                };
                let hold_id: i64 = row.get(0);
                self.last_hold = hold_id;
                let started = Instant::now();
                let drain = Duration::from_millis(rb.hold_timeout_ms);
                if let Err(e) = self.state.gate.pause(drain).await {
                    tracing::warn!(hold_id, error = %e, "cut-over hold: open transactions did not finish; giving up this attempt");
                    client
                        .execute(
                            "UPDATE rebalance_holds SET abandoned_by = $2 WHERE hold_id = $1 AND released_at IS NULL",
                            &[&hold_id, &self.node_id],
                        )
                        .await?;
                    self.state
                        .record_hold(started.elapsed().as_millis() as u64, true);
                    return Ok(());
                }
                self.holding = Some((hold_id, started));
                (hold_id, started)
            }
        };
        client
            .execute(
                "INSERT INTO rebalance_hold_acks (hold_id, node_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&hold_id, &self.node_id],
            )
            .await?;
        let bound = Duration::from_millis(rb.hold_timeout_ms + rb.lease_ms);
        loop {
            let row = client
                .query_one(
                    "SELECT released_at IS NOT NULL, new_version, abandoned_by IS NOT NULL \
                     FROM rebalance_holds WHERE hold_id = $1",
                    &[&hold_id],
                )
                .await?;
            let (released, version, abandoned): (bool, Option<i64>, bool) =
                (row.get(0), row.get(1), row.get(2));
            if released || abandoned {
                if let Some(v) = version.filter(|_| released) {
                    self.load_version(client, v).await?;
                }
                self.state.gate.resume();
                self.holding = None;
                self.state
                    .record_hold(started.elapsed().as_millis() as u64, version.is_none());
                return Ok(());
            }
            if started.elapsed() > bound {
                // The runner went away: release on the old map, unless it published meanwhile
                // (the row lock orders us after its commit).
                let n = client
                    .execute(
                        "UPDATE rebalance_holds SET abandoned_by = $2 WHERE hold_id = $1 AND released_at IS NULL",
                        &[&hold_id, &self.node_id],
                    )
                    .await?;
                if n == 1 {
                    tracing::warn!(
                        hold_id,
                        "cut-over hold outlived its bound; released on the old map"
                    );
                }
                continue;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Loads map versions until `version` is installed.
    async fn load_version(
        &self,
        client: &Client,
        version: i64,
    ) -> Result<(), tokio_postgres::Error> {
        while self.map.current().version < version {
            match load_map(client).await {
                Ok(Some(m)) => {
                    self.map.install(m);
                }
                Ok(None) => {}
                Err(crate::catalog::CatalogError::Query(e)) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "cannot load the new shard map"),
            }
            if self.map.current().version < version {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}
