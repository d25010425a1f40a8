//! The topology in the catalog (sql/catalog.sql `topology_*`): which shards exist, where their
//! primaries and replicas are, under a version that only grows. The first proxy seeds it from its
//! `[[shards]]`; afterwards it is the truth, and a config listing other servers gets a warning
//! naming the difference (the catalog wins). Secrets never go to the catalog: a shard's
//! `user`/`password` override stays in the config of the proxy that has one.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use super::CatalogError;
use crate::config::{Config, ReplicaConfig, ShardConfig};

/// The channel the catalog's trigger announces topology changes on.
pub const TOPOLOGY_CHANNEL: &str = "pgshard_topology";

/// One version of the topology: every shard in id order, replicas in registration order.
#[derive(Clone)]
pub struct CatalogTopology {
    pub version: i64,
    pub shards: Vec<ShardConfig>,
}

impl CatalogTopology {
    /// The shard with this id.
    pub fn shard(&self, id: u32) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.id == id)
    }
}

/// One change an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyChange {
    AddShard {
        id: u32,
        host: String,
        port: u16,
        database: String,
    },
    DropShard(u32),
    AddReplica {
        shard: u32,
        host: String,
        port: u16,
    },
    DropReplica {
        shard: u32,
        host: String,
        port: u16,
    },
}

impl std::fmt::Display for TopologyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyChange::AddShard {
                id,
                host,
                port,
                database,
            } => write!(f, "add shard {id} at {host}:{port}/{database}"),
            TopologyChange::DropShard(id) => write!(f, "drop shard {id}"),
            TopologyChange::AddReplica { shard, host, port } => {
                write!(f, "add replica {host}:{port} to shard {shard}")
            }
            TopologyChange::DropReplica { shard, host, port } => {
                write!(f, "drop replica {host}:{port} of shard {shard}")
            }
        }
    }
}

/// The newest topology, or `None` while the catalog holds none (no proxy has seeded it yet).
pub async fn load_topology(client: &Client) -> Result<Option<CatalogTopology>, CatalogError> {
    let Some(version) = client
        .query_one("SELECT max(version) FROM topology_versions", &[])
        .await?
        .get::<_, Option<i64>>(0)
    else {
        return Ok(None);
    };
    read_rows(client, version).await.map(Some)
}

async fn read_rows(
    client: &(impl tokio_postgres::GenericClient + Sync),
    version: i64,
) -> Result<CatalogTopology, CatalogError> {
    let rows = client
        .query(
            "SELECT shard_id, host, port, database FROM topology_shards ORDER BY shard_id",
            &[],
        )
        .await?;
    let mut shards: Vec<ShardConfig> = rows
        .iter()
        .map(|r| ShardConfig {
            id: r.get::<_, i32>(0) as u32,
            host: r.get(1),
            port: r.get::<_, i32>(2) as u16,
            database: r.get(3),
            user: None,
            password: None,
            replicas: Vec::new(),
        })
        .collect();
    let replicas = client
        .query(
            "SELECT shard_id, host, port FROM topology_replicas ORDER BY added_version, host, port",
            &[],
        )
        .await?;
    for r in &replicas {
        let id = r.get::<_, i32>(0) as u32;
        if let Some(shard) = shards.iter_mut().find(|s| s.id == id) {
            shard.replicas.push(ReplicaConfig {
                host: r.get(1),
                port: r.get::<_, i32>(2) as u16,
            });
        }
    }
    Ok(CatalogTopology { version, shards })
}

/// What [`seed_topology`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeded {
    /// The catalog had no topology; the config's shards became version 1.
    Seeded(i64),
    /// The catalog already had one (this version) and was left alone.
    Existing(i64),
}

/// Stores `shards` as topology version 1 unless the catalog already has a topology (check and
/// insert under one lock, so racing proxies seed once).
pub async fn seed_topology(
    client: &mut Client,
    shards: &[ShardConfig],
) -> Result<Seeded, CatalogError> {
    let tx = client.transaction().await?;
    if let Some(version) = newest_locked(&tx).await? {
        tx.commit().await?;
        return Ok(Seeded::Existing(version));
    }
    insert_version(&tx, 1, "seeded from [[shards]]").await?;
    for s in shards {
        insert_shard(&tx, s.id, &s.host, s.port, &s.database, 1).await?;
        for r in &s.replicas {
            insert_replica(&tx, s.id, &r.host, r.port, 1).await?;
        }
    }
    tx.commit().await?;
    Ok(Seeded::Seeded(1))
}

/// Applies one change as a new version, or refuses it (unknown or duplicate shard or server, a
/// shard that still owns ranges, a replica that is its shard's recorded primary). Returns the new
/// version; the trigger announces it.
pub async fn apply_change(
    client: &mut Client,
    change: &TopologyChange,
) -> Result<i64, CatalogError> {
    let tx = client.transaction().await?;
    let newest = newest_locked(&tx).await?.ok_or_else(|| {
        CatalogError::Refused("the catalog holds no topology yet: start a proxy first, or run `pgshard shard add` with the config that seeds it".into())
    })?;
    let current = read_rows(&tx, newest).await?;
    let version = newest + 1;
    refuse_conflicts(&current, change)?;
    match change {
        TopologyChange::AddShard {
            id,
            host,
            port,
            database,
        } => insert_shard(&tx, *id, host, *port, database, version).await?,
        TopologyChange::DropShard(id) => {
            let owned = tx
                .query_one(
                    "SELECT count(*), max(version) FROM shard_map
                      WHERE version = (SELECT max(version) FROM shard_map_versions) AND shard_id = $1",
                    &[&(*id as i32)],
                )
                .await?;
            let ranges: i64 = owned.get(0);
            if ranges > 0 {
                return Err(CatalogError::Refused(format!(
                    "shard {id} owns {ranges} range(s) of shard map version {}: move its keys away first (REBALANCE drain {id})",
                    owned.get::<_, Option<i64>>(1).unwrap_or_default()
                )));
            }
            let busy = tx
                .query_opt(
                    "SELECT job_id FROM rebalance_jobs WHERE state NOT IN ('done', 'cancelled', 'failed')
                       AND EXISTS (SELECT 1 FROM rebalance_steps s WHERE s.job_id = rebalance_jobs.job_id
                                   AND $1 IN (s.source_shard, s.dest_shard))",
                    &[&(*id as i32)],
                )
                .await?;
            if let Some(job) = busy {
                return Err(CatalogError::Refused(format!(
                    "shard {id} takes part in rebalancing job {}: wait for it to end or cancel it",
                    job.get::<_, i64>(0)
                )));
            }
            tx.execute(
                "DELETE FROM topology_shards WHERE shard_id = $1",
                &[&(*id as i32)],
            )
            .await?;
        }
        TopologyChange::AddReplica { shard, host, port } => {
            insert_replica(&tx, *shard, host, *port, version).await?
        }
        TopologyChange::DropReplica { shard, host, port } => {
            let address = format!("{host}:{port}");
            let recorded = tx
                .query_opt(
                    "SELECT 1 FROM shard_primaries WHERE shard_id = $1 AND address = $2",
                    &[&(*shard as i32), &address],
                )
                .await?;
            if recorded.is_some() {
                return Err(CatalogError::Refused(format!(
                    "{address} is shard {shard}'s primary now (it was promoted): it cannot be dropped as a replica"
                )));
            }
            tx.execute(
                "DELETE FROM topology_replicas WHERE shard_id = $1 AND host = $2 AND port = $3",
                &[&(*shard as i32), host, &i32::from(*port)],
            )
            .await?;
        }
    }
    insert_version(&tx, version, &change.to_string()).await?;
    tx.commit().await?;
    Ok(version)
}

/// The refusals that need only the current rows (pure).
pub fn refuse_conflicts(
    current: &CatalogTopology,
    change: &TopologyChange,
) -> Result<(), CatalogError> {
    let refused = |m: String| Err(CatalogError::Refused(m));
    let registered = |host: &str, port: u16| {
        current.shards.iter().find_map(|s| {
            let primary = s.host == host && s.port == port;
            let replica = s.replicas.iter().any(|r| r.host == host && r.port == port);
            (primary || replica).then_some(s.id)
        })
    };
    match change {
        TopologyChange::AddShard { id, host, port, .. } => {
            if current.shard(*id).is_some() {
                return refused(format!("shard {id} is registered already"));
            }
            if let Some(other) = registered(host, *port) {
                return refused(format!(
                    "{host}:{port} is registered already as a server of shard {other}"
                ));
            }
        }
        TopologyChange::DropShard(id) => {
            if current.shard(*id).is_none() {
                return refused(format!("there is no shard {id}"));
            }
            if current.shards.len() == 1 {
                return refused(format!("shard {id} is the only shard"));
            }
        }
        TopologyChange::AddReplica { shard, host, port } => {
            if current.shard(*shard).is_none() {
                return refused(format!("there is no shard {shard}"));
            }
            if let Some(other) = registered(host, *port) {
                return refused(format!(
                    "{host}:{port} is registered already as a server of shard {other}"
                ));
            }
        }
        TopologyChange::DropReplica { shard, host, port } => {
            let known = current.shard(*shard).is_some_and(|s| {
                s.replicas
                    .iter()
                    .any(|r| r.host == *host && r.port == *port)
            });
            if !known {
                return refused(format!("shard {shard} has no replica {host}:{port}"));
            }
        }
    }
    Ok(())
}

async fn newest_locked(tx: &Transaction<'_>) -> Result<Option<i64>, CatalogError> {
    tx.batch_execute("LOCK TABLE topology_versions IN EXCLUSIVE MODE")
        .await?;
    Ok(tx
        .query_one("SELECT max(version) FROM topology_versions", &[])
        .await?
        .get(0))
}

async fn insert_version(
    tx: &Transaction<'_>,
    version: i64,
    change: &str,
) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT INTO topology_versions (version, change) VALUES ($1, $2)",
        &[&version, &change],
    )
    .await?;
    Ok(())
}

async fn insert_shard(
    tx: &Transaction<'_>,
    id: u32,
    host: &str,
    port: u16,
    database: &str,
    version: i64,
) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT INTO topology_shards (shard_id, host, port, database, added_version) VALUES ($1, $2, $3, $4, $5)",
        &[&(id as i32), &host, &i32::from(port), &database, &version],
    )
    .await?;
    Ok(())
}

async fn insert_replica(
    tx: &Transaction<'_>,
    shard: u32,
    host: &str,
    port: u16,
    version: i64,
) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT INTO topology_replicas (shard_id, host, port, added_version) VALUES ($1, $2, $3, $4)",
        &[&(shard as i32), &host, &i32::from(port), &version],
    )
    .await?;
    Ok(())
}

/// The shards a proxy runs with. The catalog says which shards exist; a shard the config lists
/// is reached as the config says (its entry is how this proxy reaches it: another host name, a
/// relay — and a fixed topology stays supported), one only the catalog lists as the catalog
/// says. Every difference between the two lists gets a warning naming it.
pub fn merge_shards(
    configured: &[ShardConfig],
    catalog: &CatalogTopology,
) -> (Vec<ShardConfig>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut merged = Vec::with_capacity(catalog.shards.len());
    for shard in &catalog.shards {
        match configured.iter().find(|c| c.id == shard.id) {
            Some(c) => {
                let (ours, theirs) = (servers(c), servers(shard));
                if c.database != shard.database || ours != theirs {
                    warnings.push(format!(
                        "shard {}: the config lists {} (database {}), the catalog (topology version {}) {} (database {}); this proxy uses the config's",
                        shard.id,
                        ours.join(", "),
                        c.database,
                        catalog.version,
                        theirs.join(", "),
                        shard.database
                    ));
                }
                merged.push(c.clone());
            }
            None => merged.push(shard.clone()),
        }
    }
    for c in configured {
        if catalog.shard(c.id).is_none() {
            warnings.push(format!(
                "shard {} ({}) is in the config's [[shards]] but not registered in the catalog (topology version {}); this proxy uses it",
                c.id,
                c.address(),
                catalog.version
            ));
            merged.push(c.clone());
        }
    }
    merged.sort_by_key(|s| s.id);
    (merged, warnings)
}

/// Every server's `host:port` of a shard, primary first.
fn servers(shard: &ShardConfig) -> Vec<String> {
    std::iter::once(shard.address())
        .chain(shard.replicas.iter().map(ReplicaConfig::address))
        .collect()
}

/// `config` with its shards replaced by the catalog's (see [`merge_shards`]; warnings are
/// logged). A catalog without a topology leaves the config as it is.
pub fn with_topology(config: &Config, topology: Option<&CatalogTopology>) -> Config {
    let mut config = config.clone();
    if let Some(topology) = topology {
        let (shards, warnings) = merge_shards(&config.shards, topology);
        for w in warnings {
            tracing::warn!("{w}");
        }
        config.shards = shards;
    }
    config
}

/// The config as the catalog at `config.catalog.url` says the topology is now (for the commands
/// that run once: verify, rebalance, shard add).
pub async fn effective_config(
    config: &Config,
    tls: &crate::backend::ServerTls,
) -> Result<Config, CatalogError> {
    let (client, connection) = tls
        .connect_url(&config.catalog.url)
        .await
        .map_err(CatalogError::Connect)?;
    let task = tokio::spawn(connection);
    let loaded = load_topology(&client).await;
    drop(client);
    let _ = task.await;
    Ok(with_topology(config, loaded?.as_ref()))
}

/// The topology every part of a running proxy follows; receivers wake on each newer version.
#[derive(Clone)]
pub struct TopologyHandle(Arc<watch::Sender<Arc<CatalogTopology>>>);

impl TopologyHandle {
    pub fn new(topology: CatalogTopology) -> TopologyHandle {
        TopologyHandle(Arc::new(watch::channel(Arc::new(topology)).0))
    }

    /// The topology in force now.
    pub fn current(&self) -> Arc<CatalogTopology> {
        self.0.borrow().clone()
    }

    /// Installs `topology` if its version is newer; true if it was.
    pub fn install(&self, topology: CatalogTopology) -> bool {
        self.0.send_if_modified(|current| {
            if topology.version <= current.version {
                return false;
            }
            *current = Arc::new(topology.clone());
            true
        })
    }

    /// Wakes on every installed version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogTopology>> {
        self.0.subscribe()
    }
}

/// A loopback shard for table tests: database `app`, replicas on `replicas`.
#[cfg(test)]
pub fn test_shard(id: u32, port: u16, replicas: &[u16]) -> ShardConfig {
    ShardConfig {
        id,
        host: "127.0.0.1".into(),
        port,
        database: "app".into(),
        user: None,
        password: None,
        replicas: replicas
            .iter()
            .map(|p| ReplicaConfig {
                host: "127.0.0.1".into(),
                port: *p,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_shard as shard;

    fn topo(shards: Vec<ShardConfig>) -> CatalogTopology {
        CatalogTopology { version: 4, shards }
    }

    #[test]
    fn the_catalog_adds_shards_and_every_difference_is_named() {
        let mut configured = vec![
            shard(0, 7001, &[]),
            shard(1, 7002, &[7102]),
            shard(5, 7005, &[]),
        ];
        configured[0].password = Some("secret".into());
        let catalog = topo(vec![
            shard(0, 7001, &[]),
            shard(1, 7002, &[]),
            shard(10, 7010, &[7110]),
        ]);
        let (merged, warnings) = merge_shards(&configured, &catalog);
        let ids: Vec<u32> = merged.iter().map(|s| s.id).collect();
        assert_eq!(ids, [0, 1, 5, 10]);
        assert_eq!(merged[0].password.as_deref(), Some("secret"));
        assert_eq!(
            servers(&merged[1]),
            ["127.0.0.1:7002", "127.0.0.1:7102"],
            "the config reaches shard 1"
        );
        assert_eq!(servers(&merged[3]), ["127.0.0.1:7010", "127.0.0.1:7110"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("shard 1") && warnings[0].contains("127.0.0.1:7102"));
        assert!(warnings[1].contains("shard 5") && warnings[1].contains("not registered"));
    }

    #[test]
    fn identical_lists_merge_silently() {
        let configured = vec![shard(0, 7001, &[7101])];
        let (merged, warnings) = merge_shards(&configured, &topo(configured.clone()));
        assert_eq!(merged.len(), 1);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn conflicting_changes_are_refused_before_touching_the_catalog() {
        let current = topo(vec![shard(0, 7001, &[7101]), shard(1, 7002, &[])]);
        let add = |id, port| TopologyChange::AddShard {
            id,
            host: "127.0.0.1".into(),
            port,
            database: "app".into(),
        };
        let replica = |shard, port| TopologyChange::AddReplica {
            shard,
            host: "127.0.0.1".into(),
            port,
        };
        let drop_replica = |shard, port| TopologyChange::DropReplica {
            shard,
            host: "127.0.0.1".into(),
            port,
        };
        let cases: Vec<(TopologyChange, Option<&str>)> = vec![
            (add(2, 7003), None),
            (add(1, 7003), Some("registered already")),
            (add(2, 7101), Some("server of shard 0")),
            (TopologyChange::DropShard(1), None),
            (TopologyChange::DropShard(7), Some("no shard 7")),
            (replica(1, 7201), None),
            (replica(3, 7201), Some("no shard 3")),
            (replica(1, 7001), Some("server of shard 0")),
            (drop_replica(0, 7101), None),
            (drop_replica(1, 7101), Some("no replica")),
        ];
        for (change, refusal) in cases {
            let got = refuse_conflicts(&current, &change);
            match refusal {
                None => assert!(got.is_ok(), "{change}: {got:?}"),
                Some(text) => {
                    let e = got.expect_err(&change.to_string()).to_string();
                    assert!(e.contains(text), "{change}: {e}");
                }
            }
        }
        let single = topo(vec![shard(0, 7001, &[])]);
        assert!(refuse_conflicts(&single, &TopologyChange::DropShard(0)).is_err());
    }

    #[test]
    fn only_newer_topologies_are_installed() {
        let handle = TopologyHandle::new(topo(vec![shard(0, 7001, &[])]));
        let mut rx = handle.subscribe();
        rx.mark_unchanged();
        let mut older = topo(vec![]);
        older.version = 3;
        assert!(!handle.install(older));
        assert!(!rx.has_changed().unwrap());
        let mut newer = topo(vec![shard(0, 7001, &[]), shard(1, 7002, &[])]);
        newer.version = 5;
        assert!(handle.install(newer));
        assert!(rx.has_changed().unwrap());
        assert_eq!(handle.current().shards.len(), 2);
    }
}
