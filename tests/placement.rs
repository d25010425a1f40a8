//! Placement and the shard map: for every strategy, rows inserted through pgshard sit exactly on
//! the shard the map assigns them, as computed in SQL on the shards themselves; a map changed in
//! the catalog is picked up by a connected client's next statement.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{self, start_proxy};
use common::TestCluster;
use pgshard::router::{ShardMap, Strategy};
use rand::RngExt;

const ROWS: usize = 10_000;

/// Publishes a map in the catalog and waits until the proxy routes with it.
async fn switch_map(
    cluster: &TestCluster,
    proxy: &pgshard::server::RunningProxy,
    strategy: Strategy,
) -> ShardMap {
    let mut catalog = proxy::catalog(&cluster.info).await;
    let map = ShardMap::uniform(0, strategy, &cluster.info.shard_ids());
    let version = pgshard::catalog::publish_map(&mut catalog, &map)
        .await
        .expect("publish a new map version");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.proxy.map.current().version < version {
        assert!(
            Instant::now() < deadline,
            "the proxy never loaded map version {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let current = proxy.proxy.map.current();
    assert_eq!(current.strategy, strategy);
    (*current).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_places_rows_where_sql_says() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let client = proxy::connect(&proxy).await;
    let insert = client
        .prepare("INSERT INTO users (user_id, name) VALUES ($1, 'p')")
        .await
        .unwrap();
    let mut rng = rand::rng();
    for strategy in [
        Strategy::Range,
        Strategy::Hash,
        Strategy::Modulo { modulus: 10 },
    ] {
        for id in cluster.info.shard_ids() {
            proxy::shard(&cluster.info, id)
                .await
                .batch_execute("TRUNCATE users")
                .await
                .unwrap();
        }
        // The client stays connected while the map changes under it.
        let map = switch_map(&cluster, &proxy, strategy).await;
        let mut keys = std::collections::BTreeSet::new();
        while keys.len() < ROWS {
            keys.insert(rng.random_range(0..i64::MAX));
        }
        for (i, key) in keys.iter().enumerate() {
            if i % 2 == 0 {
                client
                    .batch_execute(&format!(
                        "INSERT INTO users (user_id, name) VALUES ({key}, 'p')"
                    ))
                    .await
                    .unwrap();
            } else {
                client.execute(&insert, &[key]).await.unwrap();
            }
        }
        let mut total = 0i64;
        for id in cluster.info.shard_ids() {
            let shard = proxy::shard(&cluster.info, id).await;
            let owned = map.sql_owned_by("user_id", id);
            let row = shard
                .query_one(
                    &format!("SELECT count(*), count(*) FILTER (WHERE NOT ({owned})) FROM users"),
                    &[],
                )
                .await
                .unwrap();
            let (count, misplaced): (i64, i64) = (row.get(0), row.get(1));
            let expected = keys.iter().filter(|k| map.shard_for(**k) == id).count() as i64;
            assert_eq!(
                misplaced, 0,
                "{strategy:?}: shard {id} holds rows it does not own"
            );
            assert_eq!(count, expected, "{strategy:?}: shard {id} row count");
            total += count;
        }
        assert_eq!(total, ROWS as i64, "{strategy:?}: every row exactly once");
        // The router and the SQL twin agree on the points themselves.
        let shard0 = proxy::shard(&cluster.info, cluster.info.shard_ids()[0]).await;
        for key in keys.iter().take(200) {
            let point: i64 = shard0
                .query_one(
                    &format!(
                        "SELECT {} FROM (VALUES ($1::int8)) AS v(k)",
                        map.sql_point_expr("k")
                    ),
                    &[key],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(point, map.point(*key), "{strategy:?}: point of {key}");
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_map_version_moves_routing_for_the_next_statement() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let client = proxy::connect(&proxy).await;
    let ids = cluster.info.shard_ids();
    // Everything on the last shard: one range over the whole space.
    let last = *ids.last().unwrap();
    let mut catalog = proxy::catalog(&cluster.info).await;
    let all_on_last = ShardMap::new(
        0,
        Strategy::Range,
        vec![pgshard::router::KeyRange {
            lower: None,
            upper: None,
            shard: last,
        }],
    )
    .unwrap();
    let before = proxy.proxy.map.current().version;
    let version = pgshard::catalog::publish_map(&mut catalog, &all_on_last)
        .await
        .unwrap();
    assert!(version > before);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.proxy.map.current().version != version {
        assert!(
            Instant::now() < deadline,
            "map version {version} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for key in 1..=20i64 {
        client
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, 'moved')",
                &[&key],
            )
            .await
            .unwrap();
    }
    let on_last: i64 = proxy::shard(&cluster.info, last)
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_last, 20);
    assert_eq!(proxy::count_users_directly(&cluster.info).await, 20);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_goes_on_while_the_catalog_is_down_and_reloads_after() {
    use pgshard::cluster::{self, StopMode, CATALOG_INSTANCE};
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let client = proxy::connect(&proxy).await;
    let version = proxy.proxy.map.current().version;
    cluster::stop_instance(&cluster.info.dir, CATALOG_INSTANCE, StopMode::Immediate)
        .await
        .expect("stop the catalog");
    for key in 1..=50i64 {
        client
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, 'while down')",
                &[&key],
            )
            .await
            .expect("routing works without the catalog");
    }
    assert_eq!(proxy.proxy.map.current().version, version);
    assert_eq!(proxy::count_users_directly(&cluster.info).await, 50);
    cluster::start_instance(&cluster.info.dir, CATALOG_INSTANCE)
        .await
        .expect("start the catalog again");
    // A version published after the outage reaches the proxy through its reconnect.
    let map = switch_map(&cluster, &proxy, Strategy::Range).await;
    assert!(map.version > version);
    let key = 77i64;
    client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'after')",
            &[&key],
        )
        .await
        .unwrap();
    let owner = proxy::shard(&cluster.info, map.shard_for(key)).await;
    let n = owner
        .query("SELECT 1 FROM users WHERE user_id = 77", &[])
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1);
    proxy.stop().await;
}
