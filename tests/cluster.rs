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
        locale: pgshard::cluster::DEFAULT_LOCALE.into(),
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
