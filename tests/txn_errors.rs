//! A transaction block whose statement failed ends with ROLLBACK (or COMMIT, which rolls back) as
//! in Postgres, whatever kind of block it was: not yet bound to a shard, on one shard, on several,
//! after a refusal by the proxy or an error from a server, in both protocols, and through psql,
//! psycopg 3 and asyncpg. One cluster serves the whole binary.

mod common;

use std::process::Stdio;

use common::proxy::{self, start_proxy};
use common::script::run_script;
use common::TestCluster;
use pgshard::router::{ShardMap, Strategy};
use tokio_postgres::Client;

/// Which protocol a scenario speaks.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Simple,
    Extended,
}

/// Runs `sql` in `protocol` and returns the SQLSTATE of its error, or `None` on success.
async fn run(c: &Client, protocol: Protocol, sql: &str) -> Option<String> {
    let result = match protocol {
        Protocol::Simple => c.batch_execute(sql).await,
        Protocol::Extended => c.execute(sql, &[]).await.map(|_| ()),
    };
    result.err().map(|e| {
        e.code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

/// Two keys on different shards.
fn keys_on_two_shards(map: &ShardMap, from: i64) -> (i64, i64) {
    let b = (from + 1..from + 10_000)
        .find(|k| map.shard_for(*k) != map.shard_for(from))
        .expect("some key lands elsewhere");
    (from, b)
}

async fn exists(c: &Client, key: i64) -> bool {
    c.query_opt("SELECT 1 FROM users WHERE user_id = $1", &[&key])
        .await
        .expect("read through the proxy")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_block_ends_with_rollback_in_every_shape() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let map = proxy.proxy.map.current();
    let c = proxy::connect(&proxy).await;
    c.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .expect("an unsharded table");
    c.batch_execute("INSERT INTO users (user_id, name) VALUES (1, 'one')")
        .await
        .unwrap();

    // (first statement of the block, the SQLSTATE it fails with)
    let failing_first = [
        ("SELECT nope", "42703"),
        ("SELECT 1/0 FROM users WHERE user_id = 1", "22012"),
        ("SELECT 1/0 FROM notes", "22012"),
        ("SELECT 1/0 FROM users", "22012"),
        // Refused by the proxy (an update of the shard key): nothing reached a shard.
        ("UPDATE users SET user_id = 5 WHERE user_id = 1", "0A000"),
    ];
    for protocol in [Protocol::Simple, Protocol::Extended] {
        for end in ["ROLLBACK", "COMMIT", "ABORT"] {
            for (first, code) in failing_first {
                let what = format!("{protocol:?}: BEGIN; {first}; {end}");
                assert_eq!(run(&c, protocol, "BEGIN").await, None, "{what}");
                assert_eq!(
                    run(&c, protocol, first).await.as_deref(),
                    Some(code),
                    "{what}"
                );
                assert_eq!(
                    run(&c, protocol, "SELECT 1").await.as_deref(),
                    Some("25P02"),
                    "{what}: the block is aborted until it ends"
                );
                assert_eq!(
                    run(&c, protocol, end).await,
                    None,
                    "{what} must end the block"
                );
                let after: String = c
                    .query_one("SELECT 'after'::text", &[])
                    .await
                    .unwrap_or_else(|e| panic!("{what}: the session is usable: {e}"))
                    .get(0);
                assert_eq!(after, "after");
            }
        }
    }

    // A block that reached two shards, then failed: ROLLBACK undoes both.
    let (a, b) = keys_on_two_shards(&map, 1_000);
    for protocol in [Protocol::Simple, Protocol::Extended] {
        run(&c, protocol, "BEGIN").await;
        for key in [a, b] {
            let insert = format!("INSERT INTO users (user_id, name) VALUES ({key}, 'x')");
            assert_eq!(run(&c, protocol, &insert).await, None, "{protocol:?}");
        }
        let err = run(
            &c,
            protocol,
            &format!("SELECT nope FROM users WHERE user_id = {b}"),
        )
        .await;
        assert_eq!(err.as_deref(), Some("42703"));
        assert_eq!(run(&c, protocol, "ROLLBACK").await, None, "{protocol:?}");
        assert!(!exists(&c, a).await && !exists(&c, b).await, "{protocol:?}");
    }

    // ROLLBACK TO SAVEPOINT after an error, on one shard and on two; the block then commits.
    for protocol in [Protocol::Simple, Protocol::Extended] {
        for (first, second) in [(a, a + 1_000_000), (a, b)] {
            let what = format!("{protocol:?} savepoint, keys {first} and {second}");
            run(&c, protocol, "BEGIN").await;
            let ins = |k: i64| format!("INSERT INTO users (user_id, name) VALUES ({k}, 'sp')");
            assert_eq!(run(&c, protocol, &ins(first)).await, None, "{what}");
            assert_eq!(run(&c, protocol, "SAVEPOINT s").await, None, "{what}");
            let dup = run(&c, protocol, &ins(first)).await;
            assert_eq!(dup.as_deref(), Some("23505"), "{what}");
            assert_eq!(
                run(&c, protocol, "ROLLBACK TO SAVEPOINT s").await,
                None,
                "{what}"
            );
            assert_eq!(run(&c, protocol, &ins(second)).await, None, "{what}");
            assert_eq!(run(&c, protocol, "COMMIT").await, None, "{what}");
            assert!(
                exists(&c, first).await && exists(&c, second).await,
                "{what}"
            );
            c.execute(
                "DELETE FROM users WHERE user_id = ANY($1)",
                &[&vec![first, second]],
            )
            .await
            .unwrap();
        }
        // The savepoint is the block's first statement, before any shard: it is replayed where
        // the block lands, so ROLLBACK TO after the failed first statement rescues the block.
        run(&c, protocol, "BEGIN").await;
        assert_eq!(run(&c, protocol, "SAVEPOINT s").await, None);
        assert_eq!(
            run(
                &c,
                protocol,
                "INSERT INTO users (user_id, name) VALUES (1, 'dup')"
            )
            .await
            .as_deref(),
            Some("23505")
        );
        assert_eq!(run(&c, protocol, "ROLLBACK TO SAVEPOINT s").await, None);
        assert_eq!(
            run(
                &c,
                protocol,
                &format!("INSERT INTO users (user_id, name) VALUES ({a}, 'ok')")
            )
            .await,
            None
        );
        assert_eq!(run(&c, protocol, "COMMIT").await, None);
        assert!(exists(&c, a).await, "{protocol:?}");
        c.execute("DELETE FROM users WHERE user_id = $1", &[&a])
            .await
            .unwrap();
        // A SAVEPOINT after the error is refused, as Postgres refuses it.
        run(&c, protocol, "BEGIN").await;
        assert_eq!(
            run(&c, protocol, "SELECT nope").await.as_deref(),
            Some("42703")
        );
        assert_eq!(
            run(&c, protocol, "SAVEPOINT t").await.as_deref(),
            Some("25P02"),
            "{protocol:?}: SAVEPOINT in an aborted block"
        );
        assert_eq!(run(&c, protocol, "ROLLBACK").await, None);
    }

    // Several statements in one simple query after an error: ROLLBACK first ends the block and
    // the rest runs, as in Postgres.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.batch_execute("SELECT nope").await.is_err());
    let rows = c
        .simple_query("ROLLBACK; SELECT 'again'")
        .await
        .expect("ROLLBACK; SELECT in one string");
    assert!(rows.iter().any(|m| matches!(
        m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("again")
    )));

    // psql, as a person types it.
    let script = cluster.info.dir.join("rollback.sql");
    std::fs::write(
        &script,
        "BEGIN;\nSELECT nope;\nROLLBACK;\nSELECT 'after-' || 'rollback';\nBEGIN;\nSELECT 1/0 FROM users WHERE user_id = 1;\nROLLBACK;\nSELECT 'again-' || 'fine';\n",
    )
    .unwrap();
    let out = tokio::process::Command::new("psql")
        .arg(proxy::app_url(&proxy))
        .args(["-X", "-A", "-t", "-f"])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("after-rollback") && stdout.contains("again-fine"),
        "{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("is aborted"), "{stderr}");
    assert_eq!(stderr.matches("ERROR").count(), 2, "{stderr}");

    // psycopg 3 and asyncpg, with their defaults.
    let (a, b) = keys_on_two_shards(&map, 50_000);
    run_script(
        "python/txn_errors.py",
        &[&proxy::app_url(&proxy), &a.to_string(), &b.to_string()],
        &[],
    )
    .await;
    proxy.stop().await;
}
