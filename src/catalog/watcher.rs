//! Keeps the shard map current: LISTEN for the catalog's announcements, re-read on a slow poll too
//! (a NOTIFY can be missed), reconnect with backoff, and keep routing with the map in hand while
//! the catalog is away.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use super::topology::{load_topology, seed_topology, TopologyHandle, TOPOLOGY_CHANNEL};
use super::{load_map, register_proxy, CatalogError, MapHandle};
use crate::backend::ServerTls;
use crate::config::{CatalogConfig, ShardConfig};

/// The channel the catalog's trigger notifies on.
pub const MAP_CHANNEL: &str = "pgshard_shard_map";

/// The running catalog client.
pub struct CatalogHandle {
    pub map: MapHandle,
    /// The shards and servers the catalog lists.
    pub topology: TopologyHandle,
    /// This proxy's node id for the id generator.
    pub node_id: u16,
    task: tokio::task::JoinHandle<()>,
}

impl CatalogHandle {
    /// Stops watching the catalog.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

/// A catalog connection and the notifications it receives (`None` once the connection is gone).
type Watched = (Client, mpsc::UnboundedReceiver<()>);

async fn connect(url: &str, tls: &ServerTls) -> Result<Watched, CatalogError> {
    let (client, rx, _reader) = listen(tls, url, &[MAP_CHANNEL, TOPOLOGY_CHANNEL])
        .await
        .map_err(CatalogError::Connect)?;
    Ok((client, rx))
}

/// A catalog connection LISTENing on `channels`, the receiver their notifications arrive on (one
/// `()` each; closed when the connection ends) and the task reading them (abort it when done).
/// One way for the map watcher and the rebalancer to hear the catalog's announcements.
pub async fn listen(
    tls: &ServerTls,
    url: &str,
    channels: &[&str],
) -> Result<
    (
        Client,
        mpsc::UnboundedReceiver<()>,
        tokio::task::JoinHandle<()>,
    ),
    tokio_postgres::Error,
> {
    let (client, mut connection) = tls.connect_url(url).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "catalog connection ended");
                    return;
                }
            }
        }
    });
    let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
    if let Err(e) = client.batch_execute(&sql).await {
        reader.abort();
        return Err(e);
    }
    Ok((client, rx, reader))
}

/// Connects, registers this proxy, loads the map (after adding the config's tenant `schemas` it
/// does not place yet) and the topology (seeding it from `shards`, the config's, when the catalog
/// has none), and starts watching for new versions of both.
/// Catalog connections are protected like server connections (`tls`, from `[server_tls]`).
pub async fn start(
    config: &CatalogConfig,
    node_name: &str,
    tls: &ServerTls,
    shards: &[ShardConfig],
    schemas: &[crate::config::schemas::ShardedSchemaConfig],
) -> Result<CatalogHandle, CatalogError> {
    let (mut client, rx) = connect(&config.url, tls).await?;
    super::seed_tenants(&mut client, schemas).await?;
    // The map first: a proxy that cannot start must not leave a row in `proxies`.
    let map = load_map(&client).await?.ok_or(CatalogError::NoMap)?;
    seed_topology(&mut client, shards).await?;
    let topology = TopologyHandle::new(
        load_topology(&client)
            .await?
            .ok_or_else(|| CatalogError::Refused("the catalog lost its topology".into()))?,
    );
    let node_id = register_proxy(&client, node_name).await?;
    let handle = MapHandle::new(map);
    let task = tokio::spawn(watch(
        config.url.clone(),
        tls.clone(),
        Duration::from_millis(config.poll_interval_ms),
        (handle.clone(), topology.clone()),
        node_id,
        Some((client, rx)),
    ));
    Ok(CatalogHandle {
        map: handle,
        topology,
        node_id,
        task,
    })
}

async fn watch(
    url: String,
    tls: ServerTls,
    poll: Duration,
    handles: (MapHandle, TopologyHandle),
    node_id: u16,
    mut watched: Option<Watched>,
) {
    let (handle, topology) = &handles;
    let mut backoff = Duration::from_millis(100);
    let mut in_outage = false;
    loop {
        let Some((client, notifications)) = watched.as_mut() else {
            match connect(&url, &tls).await {
                Ok(w) => {
                    if in_outage {
                        tracing::info!("catalog reachable again");
                        in_outage = false;
                    }
                    backoff = Duration::from_millis(100);
                    watched = Some(w);
                    // Re-read at once: a new version may have been announced while we were away.
                    if let Some((client, _)) = watched.as_ref() {
                        reload(client, handle, topology).await;
                    }
                }
                Err(e) => {
                    if !in_outage {
                        tracing::warn!(
                            error = %e,
                            version = handle.current().version,
                            "catalog unreachable, routing with shard map version {}",
                            handle.current().version
                        );
                        in_outage = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let lost = tokio::select! {
            note = notifications.recv() => note.is_none(),
            _ = tokio::time::sleep(poll) => {
                // A server that can no longer write (demoted to a standby after a failover)
                // announces nothing any more: connect again, to the writable one.
                let seen = client
                    .execute("UPDATE proxies SET last_seen = now() WHERE node_id = $1", &[&i32::from(node_id)])
                    .await;
                if let Err(e) = &seen {
                    tracing::warn!(error = %e, "catalog connection cannot write; reconnecting");
                }
                seen.is_err()
            }
        };
        if lost || client.is_closed() {
            watched = None;
            continue;
        }
        reload(client, handle, topology).await;
    }
}

async fn reload(client: &Client, handle: &MapHandle, topology: &TopologyHandle) {
    match load_topology(client).await {
        Ok(Some(t)) => {
            topology.install(t);
        }
        Ok(None) => tracing::warn!("catalog has no topology; keeping the current one"),
        Err(e) => tracing::warn!(error = %e, "cannot read the topology; keeping the current one"),
    }
    match load_map(client).await {
        Ok(Some(map)) => {
            handle.install(map);
        }
        Ok(None) => tracing::warn!("catalog has no shard map; keeping the current one"),
        Err(e) => tracing::warn!(error = %e, "cannot read the shard map; keeping the current one"),
    }
}
