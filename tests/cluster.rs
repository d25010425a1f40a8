//! Brings up real clusters and checks what `cluster up` promises: shards with identities and a
//! map, and streaming replicas (asynchronous, delayed, quorum-committed, promotable).

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use common::TestCluster;
use pgshard::cluster::{self, ClusterSpec, InstanceStatus, StopMode};
use pgshard::router::Strategy;

/// Upper bound for anything the tests wait for (replication catching up, a commit completing).
const WAIT: Duration = Duration::from_secs(30);

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
        for key in [
            "name",
            "shard",
            "role",
            "primary",
            "host",
            "port",
            "pid",
            "healthy",
            "in_recovery",
        ] {
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
    let mut spec = ClusterSpec::new(&info.dir);
    spec.shards = 3;
    spec.listen = "127.0.0.1:0".into();
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

/// Polls `check` every 20 ms until it is true; panics after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn has_user(client: &tokio_postgres::Client, id: i64) -> bool {
    client
        .query_opt("SELECT 1 FROM users WHERE user_id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

async fn insert_user(client: &tokio_postgres::Client, id: i64) {
    client
        .execute("INSERT INTO users (user_id, name) VALUES ($1, 'r')", &[&id])
        .await
        .unwrap();
}

async fn in_recovery(client: &tokio_postgres::Client) -> bool {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn status_of(dir: &std::path::Path, name: &str) -> InstanceStatus {
    cluster::status(dir)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_streams_from_its_primary_and_can_be_promoted() {
    let cluster = TestCluster::start_with(|spec| spec.replicas = 1).await;
    let info = &cluster.info;
    let dir = &info.dir;

    let statuses = cluster::status(dir).await.unwrap();
    let rows: Vec<_> = statuses
        .iter()
        .map(|s| {
            let role = serde_json::to_value(s.role).unwrap();
            (
                s.name.as_str(),
                role.as_str().unwrap().to_string(),
                s.primary.as_deref(),
                s.in_recovery,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("catalog", "catalog".to_string(), None, Some(false)),
            ("shard0", "primary".to_string(), None, Some(false)),
            ("shard1", "primary".to_string(), None, Some(false)),
            (
                "shard0r1",
                "replica".to_string(),
                Some("shard0"),
                Some(true)
            ),
            (
                "shard1r1",
                "replica".to_string(),
                Some("shard1"),
                Some(true)
            ),
        ]
    );

    // The proxy config lists each shard's replica as its server 1.
    let config = pgshard::config::Config::load(&info.config_path).unwrap();
    for id in 0..2 {
        let replica = info.instance(&format!("shard{id}r1")).unwrap();
        let listed: Vec<_> = config
            .shard(id)
            .unwrap()
            .replicas
            .iter()
            .map(|r| r.address())
            .collect();
        assert_eq!(listed, vec![format!("127.0.0.1:{}", replica.port)]);
    }

    for id in 0..2 {
        let primary = cluster.connect(&format!("shard{id}")).await;
        let rows = primary
            .query(
                "SELECT application_name, state FROM pg_stat_replication",
                &[],
            )
            .await
            .unwrap();
        let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            seen,
            vec![(format!("shard{id}r1"), "streaming".to_string())]
        );
    }

    // A row written on the primary shows up on its replica, which itself refuses writes.
    let shard0 = cluster.connect("shard0").await;
    let replica = cluster.connect("shard0r1").await;
    let identity: i32 = replica
        .query_one("SELECT shard_id FROM pgshard_meta.identity", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, 0);
    insert_user(&shard0, 1).await;
    eventually("row 1 on shard0r1", || has_user(&replica, 1)).await;
    let err = replica
        .execute("INSERT INTO users (user_id) VALUES (99)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );

    // Only replicas can be promoted.
    let err = cluster::promote(dir, "shard1").await.unwrap_err();
    assert!(err.to_string().contains("only a replica"), "{err}");

    // Failover: the primary goes away, the replica takes over and accepts writes.
    cluster::stop_instance(dir, "shard0", StopMode::Fast)
        .await
        .unwrap();
    cluster::promote(dir, "shard0r1").await.unwrap();
    assert!(!in_recovery(&replica).await);
    insert_user(&replica, 2).await;
    assert_eq!(status_of(dir, "shard0r1").await.in_recovery, Some(false));

    // The old primary starts again as a primary of its own (the cluster does not rewind it).
    cluster::start_instance(dir, "shard0").await.unwrap();
    let old = cluster.connect("shard0").await;
    assert!(!in_recovery(&old).await);
    assert!(has_user(&old, 1).await);
    assert!(!has_user(&old, 2).await);
    insert_user(&old, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_replicas_lag_and_quorum_commit_needs_only_one() {
    let cluster = TestCluster::start_with(|spec| {
        spec.replicas = 2;
        spec.sync_any_one = true;
        spec.apply_delay_ms = Some(200);
    })
    .await;
    let dir = &cluster.info.dir;

    for id in 0..2 {
        let primary = cluster.connect(&format!("shard{id}")).await;
        let names: String = primary
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(names, format!("ANY 1 (shard{id}r1, shard{id}r2)"));
        let states = primary
            .query(
                "SELECT application_name, sync_state FROM pg_stat_replication \
                 ORDER BY application_name",
                &[],
            )
            .await
            .unwrap();
        let seen: Vec<(String, String)> = states.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            seen,
            vec![
                (format!("shard{id}r1"), "quorum".to_string()),
                (format!("shard{id}r2"), "quorum".to_string()),
            ]
        );
    }

    // Replay waits 200 ms past the commit: the row cannot appear on the replica any sooner.
    let shard1 = cluster.connect("shard1").await;
    let r1 = cluster.connect("shard1r1").await;
    let before = Instant::now();
    insert_user(&shard1, 10).await;
    let present_at_once = has_user(&r1, 10).await;
    if before.elapsed() < Duration::from_millis(200) {
        assert!(!present_at_once, "replayed before the apply delay passed");
    }
    eventually("row 10 on shard1r1", || has_user(&r1, 10)).await;
    let lag = before.elapsed();
    assert!(lag >= Duration::from_millis(200), "lag {lag:?}");

    // One slow replica: only shard1r2 gets a longer delay.
    cluster::set_apply_delay(dir, "shard1r2", 1000)
        .await
        .unwrap();
    let r2 = cluster.connect("shard1r2").await;
    let before = Instant::now();
    insert_user(&shard1, 11).await;
    eventually("row 11 on shard1r1", || has_user(&r1, 11)).await;
    eventually("row 11 on shard1r2", || has_user(&r2, 11)).await;
    let lag = before.elapsed();
    assert!(lag >= Duration::from_millis(1000), "lag {lag:?}");
    let err = cluster::set_apply_delay(dir, "shard1", 5)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only replicas"), "{err}");

    // With one replica stopped, commits still succeed: the other one acknowledges them.
    let shard0 = cluster.connect("shard0").await;
    cluster::stop_instance(dir, "shard0r2", StopMode::Fast)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, insert_user(&shard0, 20))
        .await
        .expect("a commit with one of two replicas running");

    // With both stopped a commit waits for a replica — it is semi-synchronous, not asynchronous —
    // and completes once one comes back.
    cluster::stop_instance(dir, "shard0r1", StopMode::Fast)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { insert_user(&shard0, 21).await });
    let watcher = cluster.connect("shard0").await;
    eventually("a commit waiting for synchronous replication", || async {
        watcher
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(!waiting.is_finished());
    cluster::start_instance(dir, "shard0r2").await.unwrap();
    tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the commit completes once a replica is back")
        .unwrap();
}

#[tokio::test]
async fn quorum_commit_with_one_replica_is_refused() {
    let tmp = tempfile::Builder::new()
        .prefix("pgshard-test-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().join("c");
    let mut spec = ClusterSpec::new(&dir);
    spec.shards = 2;
    spec.replicas = 1;
    spec.sync_any_one = true;
    let err = cluster::up(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("--sync-any-one needs at least 2 replicas"),
        "{err}"
    );
    assert!(err.contains("fully synchronous"), "{err}");
    assert!(!dir.exists(), "nothing is created for a refused spec");
}
