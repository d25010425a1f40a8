//! `pgshard cluster add-shard`: one more shard for a local cluster — created, started,
//! bootstrapped, registered with its replicas, and written into the cluster's `pgshard.toml`.

use std::path::Path;

use super::{register, MembershipError};
use crate::catalog::TopologyChange;
use crate::cluster::{self, ClusterInfo};
use crate::config::Config;

/// What [`add_local_shard`] did.
#[derive(Debug, Clone)]
pub struct LocalShard {
    pub info: ClusterInfo,
    pub shard: u32,
    /// The topology version that lists the shard and all its replicas.
    pub version: i64,
}

/// Grows the cluster in `dir` by one shard with `replicas` replicas (`None`: as many as its
/// other shards have) and registers it; running proxies open pools to it without a restart.
pub async fn add_local_shard(
    dir: &Path,
    replicas: Option<u32>,
) -> Result<LocalShard, MembershipError> {
    // The file as it was: it seeds the catalog's topology if no proxy has yet.
    let config_path = ClusterInfo::load(dir)
        .map_err(|e| MembershipError::Check(e.to_string()))?
        .config_path;
    let config = Config::load(&config_path).map_err(|e| MembershipError::Check(e.to_string()))?;
    let (info, shard) = cluster::add_shard(dir, replicas)
        .await
        .map_err(|e| MembershipError::Check(format!("cannot create the shard: {e}")))?;
    let primary = info
        .shards()
        .into_iter()
        .find(|i| i.shard == Some(shard))
        .cloned()
        .ok_or_else(|| MembershipError::Check(format!("shard {shard} was not created")))?;
    let mut version = register(
        &config,
        &TopologyChange::AddShard {
            id: shard,
            host: primary.host.clone(),
            port: primary.port,
            database: primary.database().to_string(),
        },
    )
    .await?;
    for replica in info.replicas(shard) {
        version = register(
            &config,
            &TopologyChange::AddReplica {
                shard,
                host: replica.host.clone(),
                port: replica.port,
            },
        )
        .await?;
    }
    cluster::write_config_shards(&info).map_err(|e| MembershipError::Check(e.to_string()))?;
    Ok(LocalShard {
        info,
        shard,
        version,
    })
}
