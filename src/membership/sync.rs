//! Follows the catalog's topology in a running proxy: each new version is diffed against the one
//! applied, and pools, topology entries, monitors and the router's shard list follow — no restart,
//! and sessions on other servers never notice.

use std::sync::Arc;

use std::sync::Mutex;

use super::diff::diff;
use crate::backend::monitor::{self, Monitors};
use crate::backend::topology::Topology;
use crate::backend::ServerTls;
use crate::catalog::{merge_shards, CatalogTopology, TopologyHandle};
use crate::config::{Config, ShardConfig};
use crate::proxy::Proxy;
use crate::txn::{recovery, Coordinator};

/// The in-doubt recovery loop over the shards in use: restarted with the new list when the
/// topology adds or drops a shard, so prepared transactions left on a new shard are settled too.
pub struct FollowingRecovery {
    config: Arc<Config>,
    coordinator: Arc<Coordinator>,
    topology: Arc<Topology>,
    tls: ServerTls,
    task: Mutex<tokio::task::JoinHandle<()>>,
}

impl FollowingRecovery {
    /// Starts recovery over `config`'s shards.
    pub fn start(
        config: Arc<Config>,
        coordinator: Arc<Coordinator>,
        topology: Arc<Topology>,
        tls: ServerTls,
    ) -> FollowingRecovery {
        let task = recovery::start(
            config.clone(),
            coordinator.clone(),
            topology.clone(),
            tls.clone(),
        );
        FollowingRecovery {
            config,
            coordinator,
            topology,
            tls,
            task: Mutex::new(task),
        }
    }

    /// Restarts the loop over `shards` (it checks them at once, then as often as configured).
    fn follow(&self, shards: &[ShardConfig]) {
        let mut config = (*self.config).clone();
        config.shards = shards.to_vec();
        let task = recovery::start(
            Arc::new(config),
            self.coordinator.clone(),
            self.topology.clone(),
            self.tls.clone(),
        );
        std::mem::replace(
            &mut *self.task.lock().unwrap_or_else(|p| p.into_inner()),
            task,
        )
        .abort();
    }

    /// Stops the loop.
    pub fn stop(&self) {
        self.task.lock().unwrap_or_else(|p| p.into_inner()).abort();
    }
}

/// Starts following `catalog` (the watcher's handle); what is applied shows in `proxy.shards`.
/// `configured` is the config file's `[[shards]]`: how this proxy reaches the shards it lists.
pub fn start(
    proxy: Arc<Proxy>,
    monitors: Arc<Monitors>,
    recovery: Arc<FollowingRecovery>,
    catalog: TopologyHandle,
    configured: Vec<ShardConfig>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = catalog.subscribe();
    tokio::spawn(async move {
        loop {
            let next = rx.borrow_and_update().clone();
            apply(&proxy, (&monitors, &recovery), &configured, &next).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Brings this proxy to `next` (nothing when it is not newer than what is applied).
async fn apply(
    proxy: &Proxy,
    (monitors, recovery): (&Monitors, &FollowingRecovery),
    configured: &[ShardConfig],
    next: &CatalogTopology,
) {
    let applied = proxy.shards.current();
    if next.version <= applied.version {
        return;
    }
    // Differences from the config were reported at start-up.
    let (shards, _) = merge_shards(configured, next);
    let d = diff(&applied.shards, &shards);
    let by_id = |id: u32| shards.iter().find(|s| s.id == id);
    let mut added: Vec<ShardConfig> = Vec::new();
    for id in d.added.iter().chain(&d.changed) {
        let Some(shard) = by_id(*id) else { continue };
        let addresses: Vec<String> = std::iter::once(shard.address())
            .chain(shard.replicas.iter().map(|r| r.address()))
            .collect();
        proxy.topology.set_shard_servers(shard.id, &addresses);
        proxy.pools.set_shard(shard);
        if d.added.contains(id) {
            added.push(shard.clone());
        }
    }
    if !added.is_empty() {
        monitor::adopt_recorded_primaries_of(monitors.context(), &added).await;
    }
    for id in d.added.iter().chain(&d.changed) {
        if let Some(shard) = by_id(*id) {
            monitors.restart_shard(shard.clone());
        }
    }
    for id in &d.removed {
        monitors.stop_shard(*id);
        proxy.pools.remove_shard(*id);
        proxy.topology.remove_shard(*id);
    }
    proxy
        .router
        .set_shards(shards.iter().map(|s| s.id).collect());
    if !d.added.is_empty() || !d.removed.is_empty() || !d.changed.is_empty() {
        recovery.follow(&shards);
    }
    tracing::info!(
        from = applied.version,
        to = next.version,
        added = ?d.added,
        removed = ?d.removed,
        changed = ?d.changed,
        opened = d.opened.len(),
        closed = d.closed.len(),
        "applied a new topology version"
    );
    proxy.shards.install(CatalogTopology {
        version: next.version,
        shards,
    });
}
