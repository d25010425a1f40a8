//! The proxy configuration a local cluster hands to `pgshard serve`: built as a [`Config`] value and
//! serialised with [`Config::to_toml`], so it always matches what the proxy parses.

use crate::config::{
    AuthMethod, CatalogConfig, Config, ControlPlaneConfig, PoolConfig, ProxyConfig, ReplicaConfig,
    RouterConfig, ServerAuthConfig, ShardConfig, ShardedTableConfig, UserConfig,
};

use super::instance::{ADMIN_PASSWORD, ADMIN_USER, APP_PASSWORD, APP_USER};
use super::layout::{InstanceInfo, Role, CATALOG_INSTANCE};

/// Builds the proxy config for these instances, with the client listener on `listen`. Each shard's
/// replicas are listed in the order of `instances` (`shard{id}r1` first: server index 1).
pub fn proxy_config(instances: &[InstanceInfo], listen: &str) -> Config {
    let shards = instances
        .iter()
        .filter(|i| i.role == Role::Primary)
        .filter_map(|i| {
            i.shard.map(|id| ShardConfig {
                id,
                host: i.host.clone(),
                port: i.port,
                database: "app".into(),
                user: None,
                password: None,
                replicas: instances
                    .iter()
                    .filter(|r| r.role == Role::Replica && r.shard == Some(id))
                    .map(|r| ReplicaConfig {
                        host: r.host.clone(),
                        port: r.port,
                    })
                    .collect(),
            })
        })
        .collect();
    let defaults = ProxyConfig {
        listen: listen.to_string(),
        database: "app".into(),
        node_name: "pgshard".into(),
        ..ProxyConfig::default()
    };
    Config {
        reference_tables: Vec::new(),
        proxy: defaults,
        // The client `app` runs as the shards' role `app`: no superuser, owner of the demo schema.
        users: vec![UserConfig {
            server_password: Some(APP_PASSWORD.into()),
            ..UserConfig::new(APP_USER, Some(APP_PASSWORD), AuthMethod::ScramSha256)
        }],
        auth: Default::default(),
        catalog: CatalogConfig {
            url: catalog_url(instances),
            poll_interval_ms: 5_000,
        },
        pool: PoolConfig {
            size: 10,
            ..PoolConfig::default()
        },
        // pgshard's own login (monitors, checks); [control_plane] below is the same superuser.
        server_auth: ServerAuthConfig {
            user: ADMIN_USER.into(),
            password: Some(ADMIN_PASSWORD.into()),
            allow_superuser_clients: false,
        },
        shards,
        sharded_schemas: Vec::new(),
        tenants: None,
        lookups: Vec::new(),
        sharded_tables: vec![ShardedTableConfig {
            name: "users".into(),
            key: "user_id".into(),
            key_type: None,
        }],
        router: RouterConfig::default(),
        transactions: Default::default(),
        replicas: Default::default(),
        metrics: None,
        tls: None,
        server_tls: None,
        control_plane: Some(ControlPlaneConfig {
            user: ADMIN_USER.into(),
            password: Some(ADMIN_PASSWORD.into()),
        }),
        rebalance: Default::default(),
        compat: None,
    }
}

/// The catalog's URL: its primary, then its replica when it has one (a multi-host URL; pgshard
/// connects to the writable host).
pub fn catalog_url(instances: &[InstanceInfo]) -> String {
    let hosts: Vec<String> = instances
        .iter()
        .filter(|i| {
            i.role == Role::Catalog
                || (i.role == Role::Replica && i.primary.as_deref() == Some(CATALOG_INSTANCE))
        })
        .map(|i| format!("{}:{}", i.host, i.port))
        .collect();
    let hosts = if hosts.is_empty() {
        "127.0.0.1:0".to_string()
    } else {
        hosts.join(",")
    };
    format!("postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@{hosts}/catalog")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::layout::plan_instances;
    use std::path::Path;

    #[test]
    fn generated_config_parses_and_validates() {
        let instances = plan_instances(Path::new("/tmp/c"), 3, 0, 7000).unwrap();
        let text = proxy_config(&instances, "127.0.0.1:6432").to_toml();
        let config = Config::from_toml(&text, Path::new("pgshard.toml")).unwrap();
        assert_eq!(config.shards.len(), 3);
        assert_eq!(config.shard(2).unwrap().port, 7003);
        assert_eq!(
            config.catalog.url,
            "postgres://pgshard:pgshard@127.0.0.1:7000/catalog"
        );
        assert_eq!(config.pool.size, 10);
        assert_eq!(config.data_roles(), ["app"]);
        assert_eq!(config.users[0].server_password.as_deref(), Some("app"));
        assert!(!config.server_auth.allow_superuser_clients);
        assert_eq!(config.control_plane.as_ref().unwrap().user, "pgshard");
        assert!(config.shards.iter().all(|s| s.replicas.is_empty()));
    }

    #[test]
    fn a_catalog_replica_is_listed_after_the_catalog() {
        use crate::cluster::layout::plan_catalog_replica;
        let mut instances = plan_instances(Path::new("/tmp/c"), 2, 1, 7000).unwrap();
        let replica = plan_catalog_replica(Path::new("/tmp/c"), &instances, 7000).unwrap();
        instances.push(replica);
        let text = proxy_config(&instances, "127.0.0.1:6432").to_toml();
        let config = Config::from_toml(&text, Path::new("pgshard.toml")).unwrap();
        assert_eq!(
            config.catalog.url,
            "postgres://pgshard:pgshard@127.0.0.1:7000,127.0.0.1:7005/catalog"
        );
        // The catalog's replica is no shard's replica.
        assert_eq!(config.shard(0).unwrap().replicas.len(), 1);
        assert_eq!(config.shard(1).unwrap().replicas.len(), 1);
    }

    #[test]
    fn replicas_are_listed_in_server_order() {
        let instances = plan_instances(Path::new("/tmp/c"), 2, 2, 7000).unwrap();
        let text = proxy_config(&instances, "127.0.0.1:6432").to_toml();
        let config = Config::from_toml(&text, Path::new("pgshard.toml")).unwrap();
        assert_eq!(config.shards.len(), 2);
        let ports = |id: u32| -> Vec<u16> {
            config
                .shard(id)
                .unwrap()
                .replicas
                .iter()
                .map(|r| r.port)
                .collect()
        };
        assert_eq!(config.shard(0).unwrap().port, 7001);
        assert_eq!(ports(0), vec![7003, 7004]);
        assert_eq!(ports(1), vec![7005, 7006]);
    }
}
