//! pgbench's own initialisation and built-in TPC-B script through pgshard, with pgbench's tables
//! sharded as config/pgbench.toml shards them. `pgbench -i` drops, creates, truncates, loads (COPY)
//! and alters the tables through the proxy; each TPC-B transaction touches up to four shards. The
//! balances must add up exactly afterwards, read directly from the shards.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::config::Config;
use pgshard::router::Strategy;
use tokio::process::Command;

async fn pgbench(port: u16, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("pgbench")
        .env("PGPASSWORD", proxy::APP_PASSWORD)
        .args(["-h", "127.0.0.1", "-U", "app", "-p"])
        .arg(port.to_string())
        .args(args)
        .arg("app")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run pgbench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sum of one integer query over every shard, read directly.
async fn sum_over_shards(info: &ClusterInfo, sql: &str) -> i64 {
    let mut total = 0;
    for id in info.shard_ids() {
        let c = proxy::shard(info, id).await;
        total += c.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_and_tpcb_keep_balances_consistent() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let info = &cluster.info;
    let tables = Config::from_toml(
        include_str!("../config/pgbench.toml"),
        Path::new("config/pgbench.toml"),
    )
    .expect("config/pgbench.toml is valid");
    let proxy = start_proxy_with(info, |c| {
        c.sharded_tables = tables.sharded_tables.clone();
        c.reference_tables = tables.reference_tables.clone();
    })
    .await;
    let port = proxy.addr.port();
    let map = proxy.proxy.map.current();

    let (ok, out, err) = pgbench(port, &["-i", "-s", "2"]).await;
    assert!(ok, "pgbench -i failed: {err}\n{out}");
    assert_eq!(
        sum_over_shards(info, "SELECT count(*) FROM pgbench_accounts").await,
        200_000
    );
    assert_eq!(
        sum_over_shards(info, "SELECT count(*) FROM pgbench_tellers").await,
        20
    );
    assert_eq!(
        sum_over_shards(info, "SELECT count(*) FROM pgbench_branches").await,
        2
    );
    // Every row sits on the shard that owns its key, and every shard has the primary keys.
    for (table, key) in [
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
    ] {
        for id in info.shard_ids() {
            let c = proxy::shard(info, id).await;
            let stray: i64 = c
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {table} WHERE NOT ({})",
                        map.sql_owned_by(&format!("{key}::bigint"), id)
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(stray, 0, "{table} rows on shard {id} that belong elsewhere");
            let pk: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_indexes WHERE indexname = $1",
                    &[&format!("{table}_pkey")],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(pk, 1, "{table}_pkey on shard {id}");
        }
    }

    let (ok, out, err) = pgbench(port, &["-c", "4", "-j", "2", "-t", "200"]).await;
    assert!(ok, "pgbench TPC-B failed: {err}\n{out}");
    assert!(
        out.contains("number of transactions actually processed: 800/800"),
        "{out}"
    );
    assert!(out.contains("number of failed transactions: 0 "), "{out}");

    let accounts = sum_over_shards(
        info,
        "SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts",
    )
    .await;
    let branches = sum_over_shards(
        info,
        "SELECT coalesce(sum(bbalance), 0)::bigint FROM pgbench_branches",
    )
    .await;
    let tellers = sum_over_shards(
        info,
        "SELECT coalesce(sum(tbalance), 0)::bigint FROM pgbench_tellers",
    )
    .await;
    let history = sum_over_shards(
        info,
        "SELECT coalesce(sum(delta), 0)::bigint FROM pgbench_history",
    )
    .await;
    let moves = sum_over_shards(info, "SELECT count(*) FROM pgbench_history").await;
    assert_eq!(moves, 800, "one history row per transaction");
    assert_eq!(
        (accounts, branches, tellers),
        (history, history, history),
        "balances add up"
    );
}
