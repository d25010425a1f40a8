//! Shards and replicas joining and leaving a running system: a server is checked (reachable with
//! the configured login, its identity row, settings, the configured tables), then registered in
//! the catalog's topology under a new version; every proxy follows within a second (`sync`).
//! Used by `pgshard shard …`, the admin console's ADD/DROP SHARD/REPLICA and
//! `pgshard cluster add-shard`.

pub mod checks;
pub mod diff;
pub mod local;
pub mod sync;

use crate::backend::{ServerTls, ServerTlsError};
use crate::catalog::{self, CatalogError, TopologyChange};
use crate::config::{Config, ReplicaConfig, ShardConfig};

/// Why a server could not be registered or removed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot reach {address} with the configured server login: {reason}")]
    Unreachable { address: String, reason: String },
    /// The server is not fit to serve as asked.
    #[error("{0}")]
    Check(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Tls(#[from] ServerTlsError),
}

impl MembershipError {
    /// The SQLSTATE the admin console answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MembershipError::Unreachable { .. } => "08001",
            MembershipError::Check(_) | MembershipError::Catalog(CatalogError::Refused(_)) => {
                "55000"
            }
            MembershipError::Catalog(_) => "08006",
            MembershipError::Tls(_) => "08001",
        }
    }
}

/// Checks the server a change adds, then records the change as a new topology version (seeding
/// the topology from `config`'s `[[shards]]` when the catalog has none yet). Returns the version.
pub async fn register(config: &Config, change: &TopologyChange) -> Result<i64, MembershipError> {
    let tls = ServerTls::load(config.server_tls.as_ref())?;
    let (mut client, connection) = tls
        .connect_url(&config.catalog.url)
        .await
        .map_err(CatalogError::Connect)?;
    let task = tokio::spawn(connection);
    let outcome = register_with(&mut client, config, &tls, change).await;
    drop(client);
    let _ = task.await;
    outcome
}

async fn register_with(
    client: &mut tokio_postgres::Client,
    config: &Config,
    tls: &ServerTls,
    change: &TopologyChange,
) -> Result<i64, MembershipError> {
    catalog::seed_topology(client, &config.shards).await?;
    let current = catalog::load_topology(client)
        .await?
        .ok_or_else(|| CatalogError::Refused("the catalog has no topology".into()))?;
    catalog::topology_refusals(&current, change)?;
    let config = catalog::with_topology(config, Some(&current));
    match change {
        TopologyChange::AddShard {
            id,
            host,
            port,
            database,
        } => {
            let configured = config.shard(*id);
            let shard = ShardConfig {
                id: *id,
                host: host.clone(),
                port: *port,
                database: database.clone(),
                user: configured.and_then(|s| s.user.clone()),
                password: configured.and_then(|s| s.password.clone()),
                replicas: Vec::new(),
            };
            checks::check_new_shard(&config, &shard, tls).await?;
        }
        TopologyChange::AddReplica { shard, host, port } => {
            let Some(primary) = config.shard(*shard) else {
                return Err(CatalogError::Refused(format!("there is no shard {shard}")).into());
            };
            let replica = ReplicaConfig {
                host: host.clone(),
                port: *port,
            };
            checks::check_new_replica(&config, primary, &replica, tls).await?;
        }
        TopologyChange::DropShard(_) | TopologyChange::DropReplica { .. } => {}
    }
    let version = catalog::apply_change(client, change).await?;
    tracing::info!(version, %change, "topology changed");
    Ok(version)
}
