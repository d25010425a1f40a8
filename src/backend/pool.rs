//! Pools of server connections, one per shard (deadpool with our own manager). A connection that
//! is not idle and in sync when it comes back is dropped, never handed to another client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};

use super::conn::{BackendError, ServerConn};
use super::topology::{ServerId, Topology};
use crate::config::{Config, ServerAuthConfig, ShardConfig};

/// Creates and checks server connections for one server of one shard.
pub struct ServerManager {
    shard: ShardConfig,
    server: u16,
    address: String,
    auth: ServerAuthConfig,
    connect_timeout: Duration,
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
            self.connect_timeout,
        )
        .await
    }

    async fn recycle(&self, conn: &mut ServerConn, _: &Metrics) -> RecycleResult<BackendError> {
        if conn.reusable() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "connection was returned in an unknown state",
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
    /// Builds (empty) pools for every server in the config; connections open on first use.
    pub fn new(config: &Config, topology: Arc<Topology>) -> Result<Arc<ShardPools>, String> {
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
                    connect_timeout: config.pool.connect_timeout(),
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

    /// A connection to `shard`'s current primary, waiting up to the checkout timeout.
    pub async fn get(&self, shard: u32) -> Result<PooledConn, CheckoutError> {
        let primary = self
            .topology
            .primary(shard)
            .ok_or(CheckoutError::UnknownShard(shard))?;
        self.get_server(primary).await
    }

    /// A connection to one particular server, waiting up to the checkout timeout.
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
        pool.timeout_get(&timeouts).await.map_err(|e| match e {
            PoolError::Timeout(_) => CheckoutError::Timeout(shard),
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

    /// Drops a connection instead of returning it to the pool.
    pub fn discard(conn: PooledConn) {
        let _ = Object::take(conn);
    }
}
