//! Statements pgshard routes by looking further than their text: utility statements naming an
//! index (run where the index's table lives), and `INSERT … SELECT * FROM UNNEST(arrays)` into a
//! sharded table (the arrays split per shard). Through psql and the simple protocol, through
//! tokio-postgres (extended protocol, binary parameters) and psycopg 3 (extended protocol, text
//! parameters). One cluster for the whole binary: the scenarios run in order in one test.

mod common;

use std::process::Stdio;

use common::proxy::{self, connect, start_proxy};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::router::Strategy;
use tokio::process::Command;
use tokio_postgres::Client;

async fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `sql` with psql (simple protocol), stopping at the first error.
async fn psql(url: &str, sql: &str) -> (bool, String, String) {
    run(Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]))
    .await
}

/// The same query's first column, run directly on every shard, in shard order.
async fn on_each_shard(info: &ClusterInfo, sql: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for id in info.shard_ids() {
        let c = proxy::shard(info, id).await;
        let rows = c.simple_query(sql).await.expect(sql);
        let first = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        });
        out.push(first.flatten());
    }
    out
}

/// Whether index `name` exists, per shard.
async fn index_on_shards(info: &ClusterInfo, name: &str) -> Vec<bool> {
    on_each_shard(
        info,
        &format!("SELECT count(*)::text FROM pg_class WHERE relname = '{name}' AND relkind = 'i'"),
    )
    .await
    .into_iter()
    .map(|n| n.as_deref() == Some("1"))
    .collect()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

async fn index_statements_run_where_the_table_lives(info: &ClusterInfo, url: &str, c: &Client) {
    let shards = info.shard_ids().len();
    let first_only: Vec<bool> = (0..shards).map(|i| i == 0).collect();
    let everywhere = vec![true; shards];
    let nowhere = vec![false; shards];

    // An unsharded table and its index live on the first shard only.
    c.batch_execute("CREATE TABLE logs (id int, note text); CREATE INDEX logs_id_ix ON logs (id)")
        .await
        .expect("create unsharded table and index");
    assert_eq!(index_on_shards(info, "logs_id_ix").await, first_only);
    // ALTER INDEX, COMMENT ON INDEX, REINDEX INDEX and DROP INDEX reach that shard only (psql:
    // simple protocol). Sent to every shard, the others would answer 42704.
    for sql in [
        "ALTER INDEX logs_id_ix RENAME TO logs_ix",
        "ALTER INDEX logs_ix SET (fillfactor = 80)",
        "COMMENT ON INDEX logs_ix IS 'unsharded'",
        "REINDEX INDEX logs_ix",
    ] {
        let (ok, out, err) = psql(url, sql).await;
        assert!(ok, "{sql}: {err}\n{out}");
    }
    assert_eq!(index_on_shards(info, "logs_ix").await, first_only);
    assert_eq!(
        on_each_shard(
            info,
            "SELECT obj_description(to_regclass('logs_ix'), 'pg_class')"
        )
        .await[0]
            .as_deref(),
        Some("unsharded")
    );
    let (ok, out, err) = psql(url, "DROP INDEX logs_ix").await;
    assert!(ok, "DROP INDEX of an unsharded table's index: {err}\n{out}");
    assert_eq!(index_on_shards(info, "logs_ix").await, nowhere);

    // An index of a sharded table is on every shard; ALTER/COMMENT reach them all.
    c.batch_execute("CREATE INDEX users_name_ix ON users (name)")
        .await
        .expect("create index on sharded table");
    assert_eq!(index_on_shards(info, "users_name_ix").await, everywhere);
    c.batch_execute("ALTER INDEX users_name_ix RENAME TO users_name_ix2")
        .await
        .expect("rename index of sharded table");
    assert_eq!(index_on_shards(info, "users_name_ix2").await, everywhere);
    assert_eq!(index_on_shards(info, "users_name_ix").await, nowhere);
    c.batch_execute("COMMENT ON INDEX public.users_name_ix2 IS 'sharded'")
        .await
        .expect("comment on index of sharded table");
    assert_eq!(
        on_each_shard(
            info,
            "SELECT obj_description(to_regclass('users_name_ix2'), 'pg_class')"
        )
        .await,
        vec![Some("sharded".to_string()); shards]
    );

    // Extended protocol (tokio-postgres prepares every statement).
    c.batch_execute("CREATE INDEX logs_note_ix ON logs (note)")
        .await
        .expect("create second unsharded index");
    c.execute("ALTER INDEX logs_note_ix RENAME TO logs_note_ix2", &[])
        .await
        .expect("extended ALTER INDEX of an unsharded table's index");
    c.execute("REINDEX INDEX users_name_ix2", &[])
        .await
        .expect("extended REINDEX INDEX of a sharded table's index");
    c.execute("DROP INDEX logs_note_ix2", &[])
        .await
        .expect("extended DROP INDEX of an unsharded table's index");
    c.execute("DROP INDEX users_name_ix2", &[])
        .await
        .expect("extended DROP INDEX of a sharded table's index");
    assert_eq!(index_on_shards(info, "logs_note_ix2").await, nowhere);
    assert_eq!(index_on_shards(info, "users_name_ix2").await, nowhere);

    // Inside a block: the index created earlier in the same block is found.
    c.batch_execute(
        "BEGIN; CREATE INDEX logs_tx_ix ON logs (note); DROP INDEX logs_tx_ix; CREATE INDEX logs_kept_ix ON logs (id); COMMIT",
    )
    .await
    .expect("create and drop an index in one block");
    assert_eq!(index_on_shards(info, "logs_tx_ix").await, nowhere);
    assert_eq!(index_on_shards(info, "logs_kept_ix").await, first_only);

    // Indexes of tables on every shard and of the first shard's tables together: refused.
    c.batch_execute("CREATE INDEX users_email_ix ON users (email)")
        .await
        .expect("create index on sharded table");
    let e = c
        .batch_execute("DROP INDEX users_email_ix, logs_kept_ix")
        .await
        .expect_err("indexes living on different shards in one DROP");
    assert_eq!(code(&e), "0A000", "{e}");
    assert_eq!(index_on_shards(info, "users_email_ix").await, everywhere);
    assert_eq!(index_on_shards(info, "logs_kept_ix").await, first_only);

    // An index that exists nowhere: Postgres's own answers.
    let (ok, out, err) = psql(url, "DROP INDEX IF EXISTS no_such_ix").await;
    assert!(ok, "DROP INDEX IF EXISTS of a missing index: {err}\n{out}");
    assert_eq!(
        err.matches("NOTICE:  index \"no_such_ix\" does not exist, skipping")
            .count(),
        1,
        "one NOTICE, as from one Postgres: {err}"
    );
    let e = c
        .batch_execute("DROP INDEX no_such_ix")
        .await
        .expect_err("DROP INDEX of a missing index");
    assert_eq!(code(&e), "42704", "{e}");
    // The session goes on.
    c.batch_execute("DROP INDEX users_email_ix")
        .await
        .expect("drop index of sharded table");
    assert_eq!(index_on_shards(info, "users_email_ix").await, nowhere);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utility_statements_and_unnest_inserts_route_by_what_the_shards_hold() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let info = &cluster.info;
    let proxy = start_proxy(info).await;
    let url = proxy::app_url(&proxy);
    let c = connect(&proxy).await;

    index_statements_run_where_the_table_lives(info, &url, &c).await;

    proxy.stop().await;
}
