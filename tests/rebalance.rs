//! Online rebalancing against real Postgres: `pgshard verify` and `rebalance plan` on a cluster
//! whose map leaves one shard empty; then adding that shard under continuous writes through two
//! proxies, with an audit of every acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::rebalance::Target;
use pgshard::router::{ShardMap, Strategy};

/// Publishes a map over `shards` (leaving the cluster's other shards empty).
async fn publish(info: &ClusterInfo, strategy: Strategy, shards: &[u32]) -> ShardMap {
    let mut catalog = proxy::catalog(info).await;
    let map = ShardMap::uniform(0, strategy, shards);
    let version = pgshard::catalog::publish_map(&mut catalog, &map)
        .await
        .expect("publish a map");
    ShardMap { version, ..map }
}

fn pgshard(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshard"))
        .args(args)
        .output()
        .expect("run pgshard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `check` every 50 ms until it holds, failing after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_misplaced_rows_and_plan_estimates_moves() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;
    let map = publish(info, Strategy::Hash, &[0, 1]).await;
    let running = start_proxy_with(info, |c| c.rebalance.run_jobs = false).await;
    let client = proxy::connect(&running).await;
    eventually(Duration::from_secs(10), "the proxy loads the map", || async {
        running.proxy.map.current().version == map.version
    })
    .await;
    for k in 1..=400i64 {
        client
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, $2)",
                &[&k, &format!("u{k}")],
            )
            .await
            .unwrap();
    }
    let config = info.config_path.to_str().unwrap();
    let (ok, out) = pgshard(&["verify", "--config", config]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: every row sits"), "{out}");

    // A row on a shard the map does not name for it.
    let misplaced = (1000..)
        .find(|k| map.shard_for(*k) == 0)
        .expect("a key of shard 0");
    proxy::shard(info, 1)
        .await
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'stray')",
            &[&misplaced],
        )
        .await
        .unwrap();
    let (ok, out) = pgshard(&["verify", "--config", config]);
    assert!(!ok, "verify must fail: {out}");
    assert!(
        out.contains(&format!("MISPLACED: shard 1 users: 1 row(s)"))
            && out.contains(&misplaced.to_string()),
        "{out}"
    );
    proxy::shard(info, 1)
        .await
        .execute("DELETE FROM users WHERE user_id = $1", &[&misplaced])
        .await
        .unwrap();

    // The plan's estimates are the rows whose owner changes, counted on each source.
    let plan = pgshard::rebalance::plan(&map, &Target::AddShard(2)).unwrap();
    let mut expected: BTreeMap<u32, i64> = BTreeMap::new();
    for k in 1..=400i64 {
        if let Some(m) = plan.move_of(k) {
            *expected.entry(m.source).or_default() += 1;
        }
    }
    let (ok, out) = pgshard(&["rebalance", "plan", "--config", config, "add-shard", "2"]);
    assert!(ok, "{out}");
    for (source, rows) in &expected {
        let line = format!("shard {source:>3} → shard {:>3}: ~{rows} row(s)", 2);
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    let total: i64 = expected.values().sum();
    assert!(out.contains(&format!("total: {total} row(s) move")), "{out}");
    let (ok, out) = pgshard(&["rebalance", "plan", "--config", config, "add-shard", "9"]);
    assert!(!ok && out.contains("shard 9 is not in the config"), "{out}");
    running.stop().await;
}
