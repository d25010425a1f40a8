//! Python drivers with their defaults against a multi-shard cluster, in the extended protocol:
//! psycopg 3 (keyless reads and writes with parameters, executemany, pipeline mode, prepared
//! multi-row INSERTs, transactions over two shards, errors in a pipeline) and asyncpg
//! (Parse/Describe/Flush then Bind/Execute/Sync for keys on every shard, executemany,
//! transactions). One cluster serves every check; each check is a section of
//! `tests/python/drivers_check.py`, run in its own process.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::plain::{placed_as_in_plain, plain_database};
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::router::Strategy;
use tokio::process::Command;

/// Keys the checks use: each check has its own `WINDOW` keys from `FIRST_KEY` on, so keyless
/// statements over its window see only its rows.
const FIRST_KEY: i64 = 7_000_000;
const WINDOW: i64 = 400;

const SECTIONS: &[&str] = &[
    "psycopg_keyless_read",
    "psycopg_keyless_write",
    "psycopg_broadcast",
    "psycopg_executemany",
    "psycopg_pipeline",
    "psycopg_pipeline_error",
    "psycopg_pipeline_cte_and_null_keys",
    "psycopg_transaction_two_shards",
    "psycopg_multirow_returning",
    "psycopg_insert_without_columns",
    "psycopg_default_values",
    "asyncpg_fetchval_every_shard",
    "asyncpg_fetchval_in_transaction",
    "asyncpg_recovers_after_errors",
    "asyncpg_keyless_read",
    "asyncpg_interval_merge",
    "asyncpg_executemany",
    "asyncpg_multirow_returning",
    "asyncpg_insert_without_columns",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_work_across_shards() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.reference_tables = vec!["countries".into()];
    })
    .await;
    let map = proxy.proxy.map.current();
    let owners: Vec<u32> = (FIRST_KEY..FIRST_KEY + WINDOW * SECTIONS.len() as i64)
        .map(|k| map.shard_for(k))
        .collect();
    let shards: BTreeMap<u32, String> = cluster
        .info
        .shard_ids()
        .into_iter()
        .map(|id| (id, cluster.info.shard_url(id).expect("shard url")))
        .collect();
    let setup = serde_json::json!({
        "proxy": proxy::app_url(&proxy),
        "shards": shards,
        "first_key": FIRST_KEY,
        "window": WINDOW,
        "owners": owners,
    });
    let setup_file = cluster.info.dir.join("drivers.json");
    std::fs::write(&setup_file, setup.to_string()).expect("write the setup file");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/drivers_check.py");
    let mut failed = Vec::new();
    for (i, section) in SECTIONS.iter().enumerate() {
        if let Ok(only) = std::env::var("DRIVERS_ONLY") {
            if !only.split(',').any(|o| o == *section) {
                continue;
            }
        }
        let out = Command::new("python3")
            .arg(script)
            .arg(&setup_file)
            .arg(section)
            .arg(i.to_string())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stdout.contains(&format!("{section} passed")) {
            failed.push(format!("--- {section}:\n{stdout}\n{stderr}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} driver checks failed:\n{}",
        failed.len(),
        SECTIONS.len(),
        failed.join("\n")
    );
    // Every row the checks left sits on the shard the map gives its key.
    let placed = proxy::assert_users_placed(&cluster.info, &map, FIRST_KEY).await;
    assert!(placed > 0, "the checks left no rows to check");
    proxy.stop().await;
}

/// psycopg 3 and asyncpg used directly as applications use them
/// (`tests/python/driver_probe.py`), through pgshard and against one plain Postgres database,
/// step by step: statement_timeout and a cancel from another thread (57014) with the session
/// going on, COPY in (text rows with arrays, jsonb and uuid; binary, rolled back then committed;
/// into a text-keyed table) and out (binary rows, a merged `COPY (query)`), a COPY failing on a
/// duplicate key, LISTEN/NOTIFY read with `notifies()`, asyncpg's query timeout,
/// `copy_records_to_table`, `copy_from_query` and `copy_from_table`, and `SELECT pg_notify(…)`
/// in a block that also wrote on other shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_drivers_answer_as_one_postgres() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy =
        proxy::start_proxy_sharding(&cluster.info, &[("dp_event", "id"), ("dp_label", "code")])
            .await;
    let plain = plain_database(&cluster, "plain_probe").await;
    let out = common::script::run_script(
        "python/probe_diff.py",
        &["driver_probe.py"],
        &[
            ("PGSHARD_URL", &proxy::app_url(&proxy)),
            ("PLAIN_URL", &plain),
        ],
    )
    .await;
    assert_eq!(
        out.lines(),
        [
            "same setup",
            "same statement_timeout",
            "same statement_timeout_autocommit_keyed",
            "same cancel_from_thread",
            "same copy_in_text_rows",
            "same copy_in_binary_rollback",
            "same copy_in_text_key",
            "same copy_out_binary_rows",
            "same copy_error_recovers",
            "same listen_notify",
            // `SELECT pg_notify(…)` in a block that also wrote on other shards: kept to COMMIT.
            "same pg_notify_in_block_over_shards",
            "same asyncpg_steps",
        ],
        "{}",
        out.stderr
    );
    // The COPYs' rows sit on their owner shards, as many as in plain Postgres.
    let map = proxy.proxy.map.current();
    for (table, key, key_type) in [
        ("dp_event", "id", pgshard::router::KeyType::Int),
        ("dp_label", "code", pgshard::router::KeyType::Text),
    ] {
        placed_as_in_plain(&cluster, &map, &plain, table, (key, key_type)).await;
    }
    proxy.stop().await;
}
