//! The on-disk layout of a cluster directory and its `cluster.json` state file:
//!
//! ```text
//! DIR/template/      initdb output, never started; copied for every instance
//! DIR/catalog/       the catalog instance's data directory (also its unix socket directory)
//! DIR/shard0/ …      one data directory per shard primary
//! DIR/shard0r1/ …    one per streaming replica (`shard{id}r{n}`, n from 1), from pg_basebackup
//! DIR/cluster.json   which instances exist and on which ports (written before they start)
//! DIR/pgshard.toml   a proxy config pointing at them
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::router::Strategy;

/// The instance that holds the catalog database.
pub const CATALOG_INSTANCE: &str = "catalog";
/// The file recording the cluster's instances.
pub const STATE_FILE: &str = "cluster.json";
/// The generated proxy configuration.
pub const CONFIG_FILE: &str = "pgshard.toml";
/// The initdb output all instances are copied from.
pub const TEMPLATE_DIR: &str = "template";
/// Unix socket paths are limited to 107 bytes by the kernel (`sun_path`).
const MAX_SOCKET_PATH: usize = 107;

/// What an instance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shard's primary, holding database `app`.
    Primary,
    /// The catalog instance, holding database `catalog`.
    Catalog,
    /// A streaming replica of a shard's primary (a hot standby: read-only).
    Replica,
}

/// One Postgres instance of the cluster, as recorded in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub name: String,
    /// The shard id, `None` for the catalog.
    pub shard: Option<u32>,
    pub role: Role,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// A replica's primary: the instance it was copied from and streams from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
}

impl InstanceInfo {
    /// The database the bootstrap creates on this instance.
    pub fn database(&self) -> &'static str {
        match self.role {
            // The catalog's replica (no shard) holds the catalog's database.
            Role::Replica if self.shard.is_none() => "catalog",
            Role::Primary | Role::Replica => "app",
            Role::Catalog => "catalog",
        }
    }

    /// The server log written by `pg_ctl -l`.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }
}

/// The contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Random, written into every shard's identity row so a server of another cluster is recognised.
    pub cluster_id: String,
    /// The strategy of shard map version 1.
    #[serde(flatten)]
    pub strategy: Strategy,
    pub instances: Vec<InstanceInfo>,
    /// `recovery_min_apply_delay` every replica is created with (`None`: replay at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_delay_ms: Option<u64>,
    /// Primaries commit once any one of their replicas has flushed the commit.
    #[serde(default)]
    pub sync_any_one: bool,
}

impl ClusterState {
    /// Reads `DIR/cluster.json`; `Ok(None)` when the directory holds no cluster yet.
    pub fn load(dir: &Path) -> Result<Option<ClusterState>, ClusterError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ClusterError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ClusterError::State {
                path,
                message: e.to_string(),
            })
    }

    /// Like [`ClusterState::load`], but a missing cluster is an error (for down/status).
    pub fn load_existing(dir: &Path) -> Result<ClusterState, ClusterError> {
        ClusterState::load(dir)?.ok_or_else(|| ClusterError::State {
            path: dir.join(STATE_FILE),
            message: "not found; run `pgshard cluster up` first".into(),
        })
    }

    /// Writes `DIR/cluster.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), ClusterError> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| ClusterError::State {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &text)
    }

    /// The instance with this name.
    pub fn instance(&self, name: &str) -> Result<&InstanceInfo, ClusterError> {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| ClusterError::NoInstance(name.to_string()))
    }
}

/// Writes a file by renaming a sibling temp file over it, so readers never see half a file.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), ClusterError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .map_err(|e| ClusterError::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| ClusterError::io(format!("cannot rename to {}", path.display()), e))
}

/// The name of shard `shard`'s primary.
pub fn primary_name(shard: u32) -> String {
    format!("shard{shard}")
}

/// The name of shard `shard`'s `n`-th replica (from 1); also its `application_name` on the primary.
pub fn replica_name(shard: u32, n: u32) -> String {
    format!("shard{shard}r{n}")
}

/// The instances of a fresh cluster: the catalog, then `shard0..shard{n-1}`, then the replicas
/// `shard0r1..shard0r{R}, shard1r1, …`. With `base_port` 0 the ports are free loopback ports
/// picked now; otherwise they are consecutive from `base_port` in that order (the catalog gets
/// `base_port`, shard `i` gets `base_port + 1 + i`).
pub fn plan_instances(
    dir: &Path,
    shards: u32,
    replicas: u32,
    base_port: u16,
) -> Result<Vec<InstanceInfo>, ClusterError> {
    let count = 1 + shards as usize * (1 + replicas as usize);
    let ports = if base_port == 0 {
        free_ports(count)?
    } else {
        (0..count)
            .map(|i| {
                u16::try_from(base_port as usize + i).map_err(|_| ClusterError::Layout {
                    path: dir.to_path_buf(),
                    message: format!(
                        "base port {base_port} + {} instances exceeds 65535",
                        count - 1
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut roles = Vec::with_capacity(count);
    roles.push((CATALOG_INSTANCE.to_string(), None, Role::Catalog, None));
    for id in 0..shards {
        roles.push((primary_name(id), Some(id), Role::Primary, None));
    }
    for id in 0..shards {
        for n in 1..=replicas {
            roles.push((
                replica_name(id, n),
                Some(id),
                Role::Replica,
                Some(primary_name(id)),
            ));
        }
    }
    let mut instances = Vec::with_capacity(count);
    for ((name, shard, role, primary), port) in roles.into_iter().zip(ports) {
        let data_dir = dir.join(&name);
        check_socket_path(&data_dir, port)?;
        instances.push(InstanceInfo {
            name,
            shard,
            role,
            host: "127.0.0.1".into(),
            port,
            data_dir,
            primary,
        });
    }
    Ok(instances)
}

/// The name of the catalog's streaming replica; also its `application_name` on the catalog.
pub const CATALOG_REPLICA: &str = "catalogr1";

/// The catalog's streaming replica, on a free loopback port none of `taken` uses (or the port
/// after the highest taken one when ports are fixed, `base_port` not 0).
pub fn plan_catalog_replica(
    dir: &Path,
    taken: &[InstanceInfo],
    base_port: u16,
) -> Result<InstanceInfo, ClusterError> {
    let port = if base_port == 0 {
        let mut port = None;
        for _ in 0..16 {
            let candidate = free_ports(1)?[0];
            if taken.iter().all(|i| i.port != candidate) {
                port = Some(candidate);
                break;
            }
        }
        port.ok_or_else(|| ClusterError::Layout {
            path: dir.to_path_buf(),
            message: "cannot find a free loopback port for the catalog replica".into(),
        })?
    } else {
        let highest = taken.iter().map(|i| i.port).max().unwrap_or(base_port);
        highest.checked_add(1).ok_or_else(|| ClusterError::Layout {
            path: dir.to_path_buf(),
            message: "no port left above 65535 for the catalog replica".into(),
        })?
    };
    let data_dir = dir.join(CATALOG_REPLICA);
    check_socket_path(&data_dir, port)?;
    Ok(InstanceInfo {
        name: CATALOG_REPLICA.into(),
        shard: None,
        role: Role::Replica,
        host: "127.0.0.1".into(),
        port,
        data_dir,
        primary: Some(CATALOG_INSTANCE.into()),
    })
}

/// The instances of one more shard `id` (its primary `shard{id}`, then `replicas` replicas) on
/// free loopback ports: what `cluster add-shard` creates.
pub fn plan_shard(dir: &Path, id: u32, replicas: u32) -> Result<Vec<InstanceInfo>, ClusterError> {
    let ports = free_ports(1 + replicas as usize)?;
    let names = std::iter::once((primary_name(id), Role::Primary, None)).chain(
        (1..=replicas).map(|n| (replica_name(id, n), Role::Replica, Some(primary_name(id)))),
    );
    names
        .zip(ports)
        .map(|((name, role, primary), port)| {
            let data_dir = dir.join(&name);
            check_socket_path(&data_dir, port)?;
            Ok(InstanceInfo {
                name,
                shard: Some(id),
                role,
                host: "127.0.0.1".into(),
                port,
                data_dir,
                primary,
            })
        })
        .collect()
}

/// Postgres puts its unix socket in the data directory; a too-long path fails at start with a cryptic
/// error, so refuse it up front.
fn check_socket_path(data_dir: &Path, port: u16) -> Result<(), ClusterError> {
    let socket = data_dir.join(format!(".s.PGSQL.{port}"));
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ClusterError::Layout {
            path: data_dir.to_path_buf(),
            message: format!(
                "socket path {} is {len} bytes, the limit is {MAX_SOCKET_PATH}; use a shorter --dir",
                socket.display()
            ),
        });
    }
    Ok(())
}

/// Distinct free loopback ports: all listeners are held until every port is chosen, so the same port
/// is never returned twice.
fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    for _ in 0..count {
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| ClusterError::io("cannot find a free loopback port", e))?;
        let port = l
            .local_addr()
            .map_err(|e| ClusterError::io("cannot read a listener's port", e))?
            .port();
        ports.push(port);
        listeners.push(l);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_ports_start_with_the_catalog() {
        let plan = plan_instances(Path::new("/tmp/x"), 3, 0, 7000).unwrap();
        let names: Vec<_> = plan
            .iter()
            .map(|i| (i.name.as_str(), i.shard, i.port))
            .collect();
        assert_eq!(
            names,
            vec![
                ("catalog", None, 7000),
                ("shard0", Some(0), 7001),
                ("shard1", Some(1), 7002),
                ("shard2", Some(2), 7003)
            ]
        );
    }

    #[test]
    fn replicas_follow_the_primaries() {
        let plan = plan_instances(Path::new("/tmp/x"), 2, 2, 7000).unwrap();
        let names: Vec<_> = plan
            .iter()
            .map(|i| {
                (
                    i.name.as_str(),
                    i.shard,
                    i.role,
                    i.port,
                    i.primary.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("catalog", None, Role::Catalog, 7000, None),
                ("shard0", Some(0), Role::Primary, 7001, None),
                ("shard1", Some(1), Role::Primary, 7002, None),
                ("shard0r1", Some(0), Role::Replica, 7003, Some("shard0")),
                ("shard0r2", Some(0), Role::Replica, 7004, Some("shard0")),
                ("shard1r1", Some(1), Role::Replica, 7005, Some("shard1")),
                ("shard1r2", Some(1), Role::Replica, 7006, Some("shard1")),
            ]
        );
    }

    #[test]
    fn old_state_files_without_replicas_still_load() {
        let text = r#"{"cluster_id":"abc","strategy":"hash","instances":[{"name":"catalog",
            "shard":null,"role":"catalog","host":"127.0.0.1","port":7000,"data_dir":"/tmp/x/catalog"}]}"#;
        let state: ClusterState = serde_json::from_str(text).unwrap();
        assert_eq!(state.instances[0].primary, None);
        assert!(!state.sync_any_one);
        assert_eq!(state.apply_delay_ms, None);
    }

    #[test]
    fn one_more_shard_brings_its_replicas() {
        let plan = plan_shard(Path::new("/tmp/x"), 10, 2).unwrap();
        let names: Vec<_> = plan
            .iter()
            .map(|i| (i.name.as_str(), i.shard, i.role, i.primary.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("shard10", Some(10), Role::Primary, None),
                ("shard10r1", Some(10), Role::Replica, Some("shard10")),
                ("shard10r2", Some(10), Role::Replica, Some("shard10")),
            ]
        );
        assert_eq!(plan[1].data_dir, Path::new("/tmp/x/shard10r1"));
    }

    #[test]
    fn the_catalog_replica_follows_the_others_and_holds_the_catalog() {
        let plan = plan_instances(Path::new("/tmp/x"), 2, 1, 7000).unwrap();
        let replica = plan_catalog_replica(Path::new("/tmp/x"), &plan, 7000).unwrap();
        assert_eq!(replica.port, 7005);
        assert_eq!(replica.role, Role::Replica);
        assert_eq!(replica.shard, None);
        assert_eq!(replica.primary.as_deref(), Some(CATALOG_INSTANCE));
        assert_eq!(replica.database(), "catalog");
        let free = plan_catalog_replica(Path::new("/tmp/x"), &plan, 0).unwrap();
        assert!(plan.iter().all(|i| i.port != free.port));
    }

    #[test]
    fn free_ports_are_distinct() {
        let plan = plan_instances(Path::new("/tmp/x"), 5, 1, 0).unwrap();
        let mut ports: Vec<_> = plan.iter().map(|i| i.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 11);
    }

    #[test]
    fn long_directories_are_refused() {
        let long = format!("/tmp/{}", "d".repeat(100));
        let err = plan_instances(Path::new(&long), 1, 0, 7000).unwrap_err();
        assert!(err.to_string().contains("shorter --dir"), "{err}");
    }

    #[test]
    fn state_round_trips() {
        let state = ClusterState {
            cluster_id: "abc".into(),
            strategy: Strategy::Modulo { modulus: 3 },
            instances: plan_instances(Path::new("/tmp/x"), 1, 1, 7000).unwrap(),
            apply_delay_ms: Some(200),
            sync_any_one: false,
        };
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains("\"role\":\"catalog\""), "{text}");
        assert!(text.contains("\"primary\":\"shard0\""), "{text}");
        let back: ClusterState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
    }
}
