//! Brings up a real three-shard cluster and checks what `cluster up` promises.

mod common;

use std::collections::HashSet;

use common::TestCluster;
use pgshard::router::Strategy;

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_come_up_with_identities_and_a_map() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;

    let statuses = pgshard::cluster::status(&info.dir).await.unwrap();
    let json = serde_json::to_value(&statuses).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        for key in ["name", "shard", "role", "host", "port", "pid", "healthy"] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        assert_eq!(row["healthy"], true, "{row}");
        assert!(row["pid"].is_u64(), "{row}");
    }
    assert_eq!(rows[0]["role"], "catalog");
    assert!(rows[0]["shard"].is_null());
    assert_eq!(rows[1]["role"], "primary");

    let mut ids = HashSet::new();
    for id in info.shard_ids() {
        let client = connect(&info.shard_url(id).unwrap()).await;
        let row = client
            .query_one(
                "SELECT shard_id, cluster_id FROM pgshard_meta.identity",
                &[],
            )
            .await
            .unwrap();
        let shard: i32 = row.get(0);
        let cluster_id: String = row.get(1);
        assert_eq!(shard as u32, id);
        assert_eq!(cluster_id, info.cluster_id);
        ids.insert(shard);
        client
            .simple_query("SELECT count(*) FROM users")
            .await
            .unwrap();
    }
    assert_eq!(ids.len(), 3);

    let catalog = connect(&info.catalog_url()).await;
    let version: i64 = catalog
        .query_one("SELECT max(version) FROM shard_map_versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
    let ranges: i64 = catalog
        .query_one("SELECT count(*) FROM shard_map WHERE version = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ranges, 3);

    let config = pgshard::config::Config::load(&info.config_path).unwrap();
    assert_eq!(config.shards.len(), 3);

    // Idempotent: a second `up` on the same directory keeps everything.
    let spec = pgshard::cluster::ClusterSpec {
        dir: info.dir.clone(),
        shards: 3,
        base_port: 0,
        strategy: Strategy::Hash,
        listen: "127.0.0.1:0".into(),
    };
    let again = pgshard::cluster::up(&spec).await.unwrap();
    assert_eq!(again.instances, info.instances);

    // Stopping and restarting one shard.
    pgshard::cluster::stop_instance(&info.dir, "shard1", pgshard::cluster::StopMode::Fast)
        .await
        .unwrap();
    let statuses = pgshard::cluster::status(&info.dir).await.unwrap();
    assert!(!statuses[2].healthy && statuses[2].pid.is_none());
    pgshard::cluster::start_instance(&info.dir, "shard1")
        .await
        .unwrap();
    let statuses = pgshard::cluster::status(&info.dir).await.unwrap();
    assert!(statuses.iter().all(|s| s.healthy));
}

/// `pgshard catalog init` (what docker-compose.yml runs once before the proxy) on an empty catalog
/// database: it applies the schema and publishes map version 1 over the config's shards; a second
/// run leaves the map alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_init_publishes_the_first_map_once() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let admin = connect(&info.catalog_url()).await;
    admin
        .batch_execute("CREATE DATABASE fresh_catalog")
        .await
        .unwrap();
    let fresh_url = info.catalog_url().replace("/catalog", "/fresh_catalog");
    let mut config = pgshard::config::Config::load(&info.config_path).unwrap();
    config.catalog.url = fresh_url.clone();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pgshard.toml");
    std::fs::write(&config_path, config.to_toml()).unwrap();

    let init = |strategy: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgshard"))
            .args(["catalog", "init", "--strategy", strategy, "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = init("modulo");
    assert!(first.contains("published shard map version 1"), "{first}");
    let second = init("range");
    assert!(
        second.contains("already holds shard map version 1"),
        "{second}"
    );

    let fresh = connect(&fresh_url).await;
    let map = pgshard::catalog::load_map(&fresh).await.unwrap().unwrap();
    let shard_ids: Vec<u32> = info.shard_ids();
    assert_eq!(
        map,
        pgshard::router::ShardMap::uniform(1, Strategy::Modulo { modulus: 2 }, &shard_ids)
    );
    let versions: i64 = fresh
        .query_one("SELECT count(*) FROM shard_map_versions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
}
