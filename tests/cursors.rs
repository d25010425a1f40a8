//! Cursors through pgshard: a cursor on one shard keeps its FETCH/MOVE/CLOSE there, a cursor over
//! several shards is served by the proxy from the merged rows (forward only). One 4-shard cluster,
//! driven with tokio-postgres (simple protocol), psql (including its FETCH_COUNT cursors) and
//! psycopg 3 named cursors. Rows: users 1..200 named u001..u200.

mod common;

use common::process::run_output as run;
use common::proxy::{self, start_proxy};
use common::TestCluster;
use pgshard::router::Strategy;
use tokio::process::Command;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The rows (first column, as text) and the command-complete count of a simple query.
async fn rows(client: &Client, sql: &str) -> (Vec<String>, u64) {
    let out = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut values = Vec::new();
    let mut count = None;
    for m in out {
        match m {
            SimpleQueryMessage::Row(r) => values.push(r.get(0).unwrap_or("NULL").to_string()),
            SimpleQueryMessage::CommandComplete(n) => count = Some(n),
            _ => {}
        }
    }
    (values, count.expect("a command tag"))
}

fn ids(range: impl Iterator<Item = i64>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// The SQLSTATE and message of a statement that must fail.
async fn failure(client: &Client, sql: &str) -> (SqlState, String) {
    let e = client
        .simple_query(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql} succeeded"));
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.code().clone(), db.message().to_string())
}

/// Five keys that live on the shard of `user_id = 1`, and one key on another shard.
async fn keys(cluster: &TestCluster) -> (Vec<i64>, i64) {
    let mut mine = Vec::new();
    let mut other = None;
    for shard in 0..4 {
        let direct = proxy::shard(&cluster.info, shard).await;
        let held: Vec<i64> = direct
            .query("SELECT user_id FROM users ORDER BY user_id LIMIT 5", &[])
            .await
            .expect("direct read")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if held.first() == Some(&1) {
            mine = held;
        } else if other.is_none() {
            other = held.first().copied();
        }
    }
    (mine, other.expect("rows on a second shard"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_on_one_shard_and_across_shards() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let client = proxy::connect(&proxy).await;
    let values: Vec<String> = (1..=200)
        .map(|i| format!("({i}, 'u{i:03}', 'u{i}@example.com')"))
        .collect();
    client
        .batch_execute(&format!(
            "INSERT INTO users (user_id, name, email) VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("insert users");
    client
        .batch_execute("CREATE TABLE cursor_notes (n int); INSERT INTO cursor_notes SELECT generate_series(1, 9)")
        .await
        .expect("unsharded table");
    let (local, elsewhere) = keys(&cluster).await;
    assert_eq!(local.len(), 5);

    // A cursor on one shard, in a block that started on another: its statements follow it.
    client.batch_execute("BEGIN").await.expect("begin");
    rows(
        &client,
        &format!("SELECT name FROM users WHERE user_id = {elsewhere}"),
    )
    .await;
    let list = ids(local.iter().copied()).join(", ");
    rows(
        &client,
        &format!("DECLARE k CURSOR FOR SELECT user_id FROM users WHERE user_id IN ({list}) ORDER BY user_id"),
    )
    .await;
    assert_eq!(
        rows(&client, "FETCH 2 FROM k").await,
        (ids(local[..2].iter().copied()), 2)
    );
    assert_eq!(rows(&client, "MOVE 1 IN k").await.1, 1);
    assert_eq!(
        rows(&client, "FETCH ALL FROM k").await,
        (ids(local[3..].iter().copied()), 2)
    );
    rows(&client, "CLOSE k").await;
    let (code, _) = failure(&client, "FETCH 1 FROM k").await;
    assert_eq!(code, SqlState::INVALID_CURSOR_NAME);
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // An unsharded table's cursor lives on its shard.
    client.batch_execute("BEGIN").await.expect("begin");
    rows(
        &client,
        &format!("SELECT name FROM users WHERE user_id = {elsewhere}"),
    )
    .await;
    rows(
        &client,
        "DECLARE n CURSOR FOR SELECT n FROM cursor_notes ORDER BY n",
    )
    .await;
    assert_eq!(
        rows(&client, "FETCH FORWARD 4 FROM n").await,
        (ids(1..=4), 4)
    );
    client.batch_execute("COMMIT").await.expect("commit");

    // A cursor over every shard, served by the proxy in ORDER BY order.
    client.batch_execute("BEGIN").await.expect("begin");
    rows(
        &client,
        "DECLARE m CURSOR FOR SELECT user_id, name FROM users ORDER BY user_id",
    )
    .await;
    let first = client.simple_query("FETCH 3 FROM m").await.expect("fetch");
    let described = first.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(
            r.columns()
                .iter()
                .map(|c| c.name().to_string())
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    assert_eq!(
        described,
        Some(vec!["user_id".to_string(), "name".to_string()])
    );
    assert_eq!(rows(&client, "FETCH 3 FROM m").await, (ids(4..=6), 3));
    assert_eq!(
        rows(&client, "FETCH FORWARD 10 FROM m").await,
        (ids(7..=16), 10)
    );
    assert_eq!(rows(&client, "MOVE FORWARD 50 IN m").await, (vec![], 50));
    assert_eq!(rows(&client, "FETCH NEXT FROM m").await, (ids(67..=67), 1));
    assert_eq!(
        rows(&client, "FETCH FORWARD 0 FROM m").await,
        (ids(67..=67), 1)
    );
    assert_eq!(
        rows(&client, "FETCH ALL FROM m").await,
        (ids(68..=200), 133)
    );
    assert_eq!(rows(&client, "FETCH 1 FROM m").await, (vec![], 0));
    // Merged aggregates and several proxy cursors at once.
    rows(&client, "DECLARE g CURSOR FOR SELECT count(*) FROM users").await;
    rows(
        &client,
        "DECLARE d CURSOR FOR SELECT user_id FROM users ORDER BY user_id DESC LIMIT 4",
    )
    .await;
    assert_eq!(
        rows(&client, "FETCH ALL FROM g").await,
        (vec!["200".to_string()], 1)
    );
    assert_eq!(
        rows(&client, "FETCH 10 FROM d").await,
        (ids((197..=200).rev()), 4)
    );
    rows(&client, "CLOSE m").await;
    let (code, _) = failure(&client, "FETCH 1 FROM m").await;
    assert_eq!(code, SqlState::INVALID_CURSOR_NAME);
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // The end of the block closes the cursors; ROLLBACK TO closes those declared after it.
    client.batch_execute("BEGIN").await.expect("begin");
    rows(
        &client,
        "DECLARE e CURSOR FOR SELECT user_id FROM users ORDER BY user_id",
    )
    .await;
    client.batch_execute("COMMIT").await.expect("commit");
    client.batch_execute("BEGIN").await.expect("begin");
    let (code, _) = failure(&client, "FETCH 1 FROM e").await;
    assert_eq!(code, SqlState::INVALID_CURSOR_NAME);
    client.batch_execute("ROLLBACK").await.expect("rollback");
    client.batch_execute("BEGIN").await.expect("begin");
    rows(
        &client,
        "DECLARE kept CURSOR FOR SELECT user_id FROM users ORDER BY user_id",
    )
    .await;
    client
        .batch_execute("SAVEPOINT s")
        .await
        .expect("savepoint");
    rows(
        &client,
        "DECLARE gone CURSOR FOR SELECT user_id FROM users ORDER BY user_id",
    )
    .await;
    assert_eq!(rows(&client, "FETCH 1 FROM gone").await, (ids(1..=1), 1));
    client
        .batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .expect("rollback to");
    let (code, _) = failure(&client, "FETCH 1 FROM gone").await;
    assert_eq!(code, SqlState::INVALID_CURSOR_NAME);
    client
        .batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .expect("rollback to");
    assert_eq!(rows(&client, "FETCH 2 FROM kept").await, (ids(1..=2), 2));
    client.batch_execute("COMMIT").await.expect("commit");

    // What a forward-only proxy cursor refuses, naming it.
    let refused = [
        (
            "DECLARE s SCROLL CURSOR FOR SELECT user_id FROM users",
            "SCROLL",
        ),
        ("FETCH PRIOR FROM f", "BACKWARD or PRIOR"),
        ("FETCH ABSOLUTE 3 FROM f", "ABSOLUTE"),
        ("MOVE BACKWARD 1 IN f", "BACKWARD"),
    ];
    for (sql, names) in refused {
        client.batch_execute("BEGIN").await.expect("begin");
        rows(
            &client,
            "DECLARE f CURSOR FOR SELECT user_id FROM users ORDER BY user_id",
        )
        .await;
        let (code, message) = failure(&client, sql).await;
        assert_eq!(code, SqlState::FEATURE_NOT_SUPPORTED, "{sql}: {message}");
        assert!(message.contains(names), "{sql}: {message}");
        client.batch_execute("ROLLBACK").await.expect("rollback");
    }
    let (code, _) = failure(&client, "DECLARE o CURSOR FOR SELECT user_id FROM users").await;
    assert_eq!(code, SqlState::NO_ACTIVE_SQL_TRANSACTION);

    // psql: a script with cursors, and FETCH_COUNT, which reads every query through a cursor.
    let script = r#"
\set ON_ERROR_STOP 1
BEGIN;
DECLARE c CURSOR FOR SELECT user_id, name FROM users ORDER BY user_id DESC;
FETCH 3 FROM c;
MOVE 5 IN c;
FETCH FORWARD 2 FROM c;
CLOSE c;
COMMIT;
\set FETCH_COUNT 7
SELECT 'fc:' || user_id FROM users ORDER BY user_id;
"#;
    let (lines, out) = proxy::psql_script(&cluster.info, &proxy, "cursors.sql", script).await;
    let fetched: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("|u"))
        .collect();
    assert_eq!(
        fetched,
        ["200|u200", "199|u199", "198|u198", "192|u192", "191|u191"],
        "{out}"
    );
    let counted: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("fc:"))
        .map(str::to_string)
        .collect();
    assert_eq!(counted, ids(1..=200), "{out}");

    // psycopg 3 named cursors.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/cursor_check.py");
    let (ok, out, err) = run(Command::new("python3")
        .arg(script)
        .arg(proxy::app_url(&proxy))
        .arg(elsewhere.to_string()))
    .await;
    assert!(ok, "psycopg cursor check failed:\n{out}\n{err}");
    assert!(out.contains("cursor check passed"), "{out}");

    // Portals read a piece at a time over every shard: tokio-postgres binds a portal and executes
    // it with a row limit (binary results), part after part.
    let mut portals = proxy::connect(&proxy).await;
    let tx = portals.transaction().await.expect("begin");
    let sql = "SELECT user_id, name FROM users WHERE user_id > $1 ORDER BY user_id";
    for limit in [7, 40] {
        let portal = tx.bind(sql, &[&0i64]).await.expect("bind over every shard");
        let mut seen: Vec<i64> = Vec::new();
        let mut parts = 0;
        loop {
            let part = tx.query_portal(&portal, limit).await.expect("execute part");
            parts += 1;
            for r in &part {
                let (id, name): (i64, &str) = (r.get(0), r.get(1));
                assert_eq!(name, format!("u{id:03}"));
                seen.push(id);
            }
            if part.len() < limit as usize {
                break;
            }
            assert!(parts <= 200, "the portal never ended");
        }
        assert_eq!(seen, (1..=200).collect::<Vec<i64>>(), "limit {limit}");
        // 200 rows in parts of 40 end with an empty part, as Postgres's portal does.
        assert_eq!(parts, 200 / limit + 1, "limit {limit}");
    }
    let portal = tx.bind(sql, &[&190i64]).await.expect("bind");
    let first = tx.query_portal(&portal, 3).await.expect("first part");
    let got: Vec<i64> = first.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, [191, 192, 193]);
    drop(portal);
    tx.commit().await.expect("commit");
    let count: i64 = portals
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("usable after commit")
        .get(0);
    assert_eq!(count, 200);

    // asyncpg cursors inside a transaction: iteration and fetch(n).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/portal_check.py");
    let (ok, out, err) = run(Command::new("python3")
        .arg(script)
        .arg(proxy::app_url(&proxy)))
    .await;
    assert!(ok, "asyncpg portal check failed:\n{out}\n{err}");
    assert!(out.contains("portal check passed"), "{out}");
    proxy.stop().await;
}
