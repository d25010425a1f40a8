//! Pools of server connections, one per shard (deadpool with our own manager). A connection that
//! is not idle and in sync when it comes back is dropped, never handed to another client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};

use super::conn::{BackendError, ServerConn};
use super::tls::ServerTls;
use super::topology::{ServerId, Topology};
use crate::config::{Config, ServerAuthConfig, ShardConfig};

/// Creates and checks server connections for one server of one shard.
pub struct ServerManager {
    shard: ShardConfig,
    server: u16,
    address: String,
    auth: ServerAuthConfig,
    tls: ServerTls,
    connect_timeout: Duration,
    /// Connections created before this instant are closed when they come back (the server
    /// stopped being where the shard's traffic goes).
    drained_at: Mutex<Option<Instant>>,
}

impl managed::Manager for ServerManager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        ServerConn::connect(
            &self.shard,
            self.server,
            self.address.clone(),
            &self.auth,
            &self.tls,
            self.connect_timeout,
        )
        .await
    }

    async fn recycle(&self, conn: &mut ServerConn, m: &Metrics) -> RecycleResult<BackendError> {
        let drained_at = *self.drained_at.lock().unwrap_or_else(|p| p.into_inner());
        if drained_at.is_some_and(|d| m.created <= d) {
            Err(RecycleError::message(
                "connection to a server that is no longer used",
            ))
        } else if conn.reusable() && conn.idle_and_open() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "connection was returned in an unknown state, or its server closed it",
            ))
        }
    }
}

/// A checked-out server connection; dropping it returns it to its pool.
pub type PooledConn = Object<ServerManager>;

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no shard with id {0}")]
    UnknownShard(u32),
    #[error("timed out waiting for a free connection to shard {0}")]
    Timeout(u32),
    #[error(transparent)]
    Backend(BackendError),
    /// The shard's primary is down, or no server of it can be trusted with writes.
    #[error("shard {shard} has no reachable primary ({detail})")]
    NoPrimary { shard: u32, detail: String },
    #[error("connection pool of shard {shard} failed: {message}")]
    Pool { shard: u32, message: String },
}

/// The pools of every server of every shard.
pub struct ShardPools {
    pools: HashMap<ServerId, Pool<ServerManager>>,
    topology: Arc<Topology>,
    checkout_timeout: Duration,
}

impl ShardPools {
    /// Builds (empty) pools for every server in the config; connections open on first use, over
    /// TLS when `tls` says so.
    pub fn new(
        config: &Config,
        topology: Arc<Topology>,
        tls: &ServerTls,
    ) -> Result<Arc<ShardPools>, String> {
        let mut pools = HashMap::new();
        for shard in &config.shards {
            let addresses =
                std::iter::once(shard.address()).chain(shard.replicas.iter().map(|r| r.address()));
            for (index, address) in addresses.enumerate() {
                let id = ServerId {
                    shard: shard.id,
                    index: index as u16,
                };
                let manager = ServerManager {
                    shard: shard.clone(),
                    server: id.index,
                    address,
                    auth: config.server_auth.clone(),
                    tls: tls.clone(),
                    connect_timeout: config.pool.connect_timeout(),
                    drained_at: Mutex::new(None),
                };
                let pool = Pool::builder(manager)
                    .max_size(config.pool.size)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| format!("cannot build the pool of {id}: {e}"))?;
                pools.insert(id, pool);
            }
        }
        Ok(Arc::new(ShardPools {
            pools,
            topology,
            checkout_timeout: config.pool.checkout_timeout(),
        }))
    }

    /// A connection to `shard`'s current primary, waiting up to the checkout timeout. A primary
    /// that cannot be connected to (within the connect timeout), or none, is `NoPrimary`.
    pub async fn get(&self, shard: u32) -> Result<PooledConn, CheckoutError> {
        let Some(primary) = self.topology.primary(shard) else {
            if self.pools.contains_key(&ServerId { shard, index: 0 }) {
                return Err(CheckoutError::NoPrimary {
                    shard,
                    detail: "no server of it is trusted with writes; see the topology".into(),
                });
            }
            return Err(CheckoutError::UnknownShard(shard));
        };
        self.get_server(primary).await
    }

    /// A connection to one particular server, waiting up to the checkout timeout. When that
    /// server is its shard's primary and cannot be connected to, the error is `NoPrimary`.
    pub async fn get_server(&self, id: ServerId) -> Result<PooledConn, CheckoutError> {
        let shard = id.shard;
        let pool = self
            .pools
            .get(&id)
            .ok_or(CheckoutError::UnknownShard(shard))?;
        let timeouts = managed::Timeouts {
            wait: Some(self.checkout_timeout),
            create: None,
            recycle: None,
        };
        let started = std::time::Instant::now();
        let got = pool.timeout_get(&timeouts).await;
        crate::telemetry::record::pool_waited(started.elapsed());
        got.map_err(|e| match e {
            PoolError::Timeout(_) => CheckoutError::Timeout(shard),
            PoolError::Backend(
                b @ (BackendError::Connect { .. } | BackendError::ConnectTimeout { .. }),
            ) if self.topology.primary(shard) == Some(id) => CheckoutError::NoPrimary {
                shard,
                detail: b.to_string(),
            },
            PoolError::Backend(b) => CheckoutError::Backend(b),
            other => CheckoutError::Pool {
                shard,
                message: other.to_string(),
            },
        })
    }

    /// Size and availability per server, for status views.
    pub fn status(&self) -> Vec<(ServerId, deadpool::Status)> {
        let mut v: Vec<_> = self.pools.iter().map(|(id, p)| (*id, p.status())).collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Closes `server`'s idle connections and those in use as they come back: writes no longer
    /// go there (failover, fencing).
    pub fn drain(&self, server: ServerId) {
        let Some(pool) = self.pools.get(&server) else {
            return;
        };
        *pool
            .manager()
            .drained_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let removed = pool.retain(|_, _| false);
        tracing::info!(%server, closed = removed.removed.len(), "drained the pool of a server writes no longer go to");
    }

    /// Drops a connection instead of returning it to the pool.
    pub fn discard(conn: PooledConn) {
        let _ = Object::take(conn);
    }
}
