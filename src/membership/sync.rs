//! Follows the catalog's topology in a running proxy: each new version is diffed against the one
//! applied, and pools, topology entries, monitors and the router's shard list follow — no restart,
//! and sessions on other servers never notice.

use std::sync::Arc;

use super::diff::diff;
use crate::backend::monitor::{self, Monitors};
use crate::catalog::{merge_shards, CatalogTopology, TopologyHandle};
use crate::config::ShardConfig;
use crate::proxy::Proxy;

/// Starts following `catalog` (the watcher's handle); what is applied shows in `proxy.shards`.
/// `configured` is the config file's `[[shards]]`: how this proxy reaches the shards it lists.
pub fn start(
    proxy: Arc<Proxy>,
    monitors: Arc<Monitors>,
    catalog: TopologyHandle,
    configured: Vec<ShardConfig>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = catalog.subscribe();
    tokio::spawn(async move {
        loop {
            let next = rx.borrow_and_update().clone();
            apply(&proxy, &monitors, &configured, &next).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Brings this proxy to `next` (nothing when it is not newer than what is applied).
async fn apply(
    proxy: &Proxy,
    monitors: &Monitors,
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
