//! LISTEN/NOTIFY under transaction pooling, across proxies: two proxies over one 3-shard
//! cluster; clients LISTEN on one and NOTIFY (statement, `pg_notify` in the simple and the
//! extended protocol, inside blocks that commit or roll back, with savepoints) through the other.
//! Notifications arrive in order with their payloads, never from a rolled-back block, and stop
//! after UNLISTEN. The channel shard (the first shard) sees them too, directly.

mod common;

use std::time::Duration;

use common::process::eventually;
use common::proxy::{self, start_proxy};
use common::script::run_script;
use common::TestCluster;
use futures_util::StreamExt;
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

type Notes = mpsc::UnboundedReceiver<(String, String)>;

/// A client of `url` whose notifications arrive on the receiver as `(channel, payload)`.
async fn listener(url: &str) -> (Client, Notes) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    (client, rx)
}

/// The payloads that arrive on `channel` up to and including `last`.
async fn payloads_until(notes: &mut Notes, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), notes.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification {last:?} after {got:?}"))
            .expect("the listener's connection is open");
        got.push(next.1.clone());
        if next.1 == last {
            return got;
        }
    }
}

/// A key of `users` on a shard other than `not_on`.
fn key_elsewhere(proxy: &RunningProxy, not_on: u32) -> i64 {
    let map = proxy.proxy.map.current();
    (1..1000)
        .find(|k| map.shard_for(*k) != not_on)
        .expect("a key on another shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_cross_proxies_in_order_and_only_when_committed() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let a = start_proxy(&cluster.info).await;
    let b = start_proxy(&cluster.info).await;
    let first = a.proxy.first_shard;

    let (listen_a, mut on_a) = listener(&proxy::app_url(&a)).await;
    listen_a
        .batch_execute("LISTEN jobs")
        .await
        .expect("LISTEN (simple)");
    // LISTEN in the extended protocol, on the sender's own proxy.
    let (listen_b, mut on_b) = listener(&proxy::app_url(&b)).await;
    listen_b
        .execute("LISTEN jobs", &[])
        .await
        .expect("LISTEN (extended)");
    // The channel shard itself, bypassing the proxies.
    let (direct, mut on_shard) = listener(&cluster.info.shard_url(first).expect("url")).await;
    direct
        .batch_execute("LISTEN jobs")
        .await
        .expect("LISTEN on the shard");

    let sender = proxy::connect(&b).await;
    let key = key_elsewhere(&b, first);
    sender
        .batch_execute(&format!(
            "INSERT INTO users (user_id, name, email) VALUES ({key}, 'n', 'n@example.com')"
        ))
        .await
        .expect("seed");
    sender
        .batch_execute("NOTIFY jobs, 'one'")
        .await
        .expect("NOTIFY");
    sender
        .batch_execute("SELECT pg_notify('jobs', 'two')")
        .await
        .expect("pg_notify (simple)");
    sender
        .execute("SELECT pg_notify($1, $2)", &[&"jobs", &"three"])
        .await
        .expect("pg_notify (extended)");
    sender
        .execute("NOTIFY jobs, 'four'", &[])
        .await
        .expect("NOTIFY (extended)");
    // A block on another shard: the NOTIFY waits for COMMIT.
    sender
        .batch_execute(&format!(
            "BEGIN; UPDATE users SET name = 'm' WHERE user_id = {key}"
        ))
        .await
        .expect("block");
    sender
        .batch_execute("NOTIFY jobs, 'five'")
        .await
        .expect("NOTIFY in a block");
    sender.batch_execute("COMMIT").await.expect("COMMIT");
    // Rolled back: never delivered; a savepoint rolled back drops what followed it.
    sender.batch_execute("BEGIN").await.unwrap();
    sender.batch_execute("NOTIFY jobs, 'never'").await.unwrap();
    sender.batch_execute("ROLLBACK").await.unwrap();
    sender.batch_execute("BEGIN").await.unwrap();
    sender.batch_execute("NOTIFY jobs, 'six'").await.unwrap();
    sender.batch_execute("SAVEPOINT s").await.unwrap();
    sender
        .batch_execute("NOTIFY jobs, 'never either'")
        .await
        .unwrap();
    sender
        .batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .unwrap();
    sender.batch_execute("COMMIT").await.unwrap();
    // A block on the channel shard only: pg_notify joins it.
    sender.batch_execute("BEGIN").await.unwrap();
    sender
        .batch_execute("SELECT pg_notify('jobs', 'seven')")
        .await
        .expect("pg_notify in a block");
    sender.batch_execute("COMMIT").await.unwrap();
    // A block that wrote on two shards (it commits in two phases, which a shard that ran NOTIFY
    // refuses): pg_notify waits for COMMIT like NOTIFY, in both protocols, and answers its one
    // row of void; rolled back, it is never delivered.
    let map = b.proxy.map.current();
    let key_on_first = (1..1000i64)
        .find(|k| map.shard_for(*k) == first)
        .expect("a key on the channel shard");
    for (commit, payloads) in [(true, ["eight", "nine"]), (false, ["never", "never"])] {
        sender.batch_execute("BEGIN").await.unwrap();
        for k in [key, key_on_first] {
            sender
                .execute("UPDATE users SET name = 'w' WHERE user_id = $1", &[&k])
                .await
                .expect("a write on each shard");
        }
        let row = sender
            .query_one("SELECT pg_notify($1, $2)", &[&"jobs", &payloads[0]])
            .await
            .expect("pg_notify (extended) in a block over two shards");
        assert_eq!(row.columns()[0].name(), "pg_notify");
        assert_eq!(row.columns()[0].type_().name(), "void");
        let msgs = sender
            .simple_query(&format!(
                "SELECT pg_notify('jobs', '{}') AS sent",
                payloads[1]
            ))
            .await
            .expect("pg_notify (simple) in a block over two shards");
        let row = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get("sent").map(str::to_string)),
            _ => None,
        });
        assert_eq!(row, Some(Some(String::new())), "one row, its void empty");
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        sender.batch_execute(end).await.expect(end);
    }
    let e = sender
        .batch_execute("SELECT pg_notify('', 'x')")
        .await
        .expect_err("an empty channel name");
    assert_eq!(e.code().map(|c| c.code()), Some("22023"));
    sender.batch_execute("NOTIFY jobs, 'end'").await.unwrap();

    let want = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "end",
    ];
    assert_eq!(payloads_until(&mut on_a, "end").await, want, "proxy a");
    assert_eq!(payloads_until(&mut on_b, "end").await, want, "proxy b");
    assert_eq!(
        payloads_until(&mut on_shard, "end").await,
        want,
        "the shard"
    );

    // UNLISTEN stops delivery: after it, only the other channel's marker arrives.
    listen_a
        .batch_execute("UNLISTEN jobs")
        .await
        .expect("UNLISTEN");
    listen_a
        .batch_execute("LISTEN marks")
        .await
        .expect("LISTEN");
    sender
        .batch_execute("NOTIFY jobs, 'not for a'")
        .await
        .unwrap();
    sender.batch_execute("NOTIFY marks, 'mark'").await.unwrap();
    assert_eq!(payloads_until(&mut on_a, "mark").await, ["mark"]);
    assert_eq!(payloads_until(&mut on_b, "not for a").await, ["not for a"]);

    // A client that leaves takes its channels with it.
    drop(listen_a);
    drop(listen_b);
    let hub = a.proxy.notify.clone();
    eventually("proxy a listens on nothing", || {
        let hub = hub.clone();
        async move { hub.summary().1.is_empty() }
    })
    .await;
    // The drivers' own APIs: psycopg 3 `notifies()`, asyncpg `add_listener`.
    let out = run_script(
        "python/notify_check.py",
        &[&proxy::app_url(&a), &proxy::app_url(&b)],
        &[],
    )
    .await;
    assert!(out.stdout.contains("notify passed"), "{}", out.stdout);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_errors_are_postgres_errors_and_the_session_goes_on() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let p = start_proxy(&cluster.info).await;
    let c = proxy::connect(&p).await;
    let long = "x".repeat(8000);
    let err = c
        .batch_execute(&format!("NOTIFY jobs, '{long}'"))
        .await
        .expect_err("too long");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    c.batch_execute("BEGIN").await.unwrap();
    let err = c
        .batch_execute(&format!("NOTIFY jobs, '{long}'"))
        .await
        .expect_err("too long in a block");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // UNLISTEN of a channel never listened to is fine, as in Postgres.
    c.batch_execute("UNLISTEN nothing").await.unwrap();
    c.batch_execute("UNLISTEN *").await.unwrap();
    let rows = c.query("SELECT 1", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    p.stop().await;
}
