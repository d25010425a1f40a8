//! Clients that misbehave, against real Postgres: silent and half-sent logins and messages are
//! closed after their timeouts, clients vanishing mid-COPY or mid-transaction leave no rows and no
//! busy server behind, random cancels stop exactly their own query, and a storm of a thousand
//! clients logs in (the ones over `max_clients` get a clean 53300).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::eventually;
use common::proxy::{self, start_proxy_with};
use common::raw::{message, query, startup_message, RawClient};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::router::Strategy;
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;

/// Sum of an integer query's answer over every shard, asked directly.
async fn sum_over_shards(info: &ClusterInfo, sql: &str) -> i64 {
    let mut total = 0;
    for id in info.shard_ids() {
        let c = proxy::shard(info, id).await;
        total += c.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0);
    }
    total
}

/// Server backends still inside a transaction block or a COPY.
async fn busy_servers(info: &ClusterInfo) -> i64 {
    sum_over_shards(
        info,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() \
         AND (state LIKE 'idle in transaction%' OR (state = 'active' AND query ILIKE 'copy%'))",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_logins_and_messages_are_closed_and_others_go_on() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let running = start_proxy_with(&cluster.info, |c| {
        c.proxy.login_timeout_ms = 800;
        c.proxy.message_timeout_ms = 800;
    })
    .await;
    let addr = running.addr;
    let live = running.proxy.live.clone();

    // Silent, half a startup packet, and stopped in the middle of the password exchange.
    let started = Instant::now();
    let mut silent = RawClient::connect(addr).await;
    let mut half = RawClient::connect(addr).await;
    half.send(&startup_message("app")[..6]).await;
    let mut mid_auth = RawClient::connect(addr).await;
    mid_auth.send(&startup_message("app")).await;
    let (tag, _) = mid_auth.read().await.expect("an authentication request");
    assert_eq!(tag, b'R');
    eventually("the client in the password exchange holds a slot", || {
        let n = live.clients();
        async move { n == 1 }
    })
    .await;
    // Logged in, then a message whose rest never comes.
    let mut partial = RawClient::login(addr, "trusted").await;
    let q = query("SELECT 1");
    partial.send(&q[..7]).await;
    let partial_started = Instant::now();

    // Meanwhile a well-behaved client is served.
    let client = proxy::connect(&running).await;
    for _ in 0..5 {
        client.simple_query("SELECT 1").await.unwrap();
    }

    let login_timeout = Some((
        "08P01".to_string(),
        "timed out waiting for the client to log in".to_string(),
    ));
    for (what, stalled) in [
        ("silent", &mut silent),
        ("half a startup packet", &mut half),
        ("mid-authentication", &mut mid_auth),
    ] {
        let (error, closed) = stalled.closed_within(Duration::from_secs(10)).await;
        assert!(closed, "{what}: the proxy closes the connection");
        assert_eq!(error, login_timeout, "{what}");
        assert!(started.elapsed() >= Duration::from_millis(750), "{what}");
    }
    let (error, closed) = partial.closed_within(Duration::from_secs(10)).await;
    assert!(closed, "a stalled message ends the session");
    assert_eq!(
        error,
        Some((
            "08P01".to_string(),
            "timed out waiting for the rest of a message from the client".to_string()
        ))
    );
    assert!(partial_started.elapsed() >= Duration::from_millis(750));

    // No slot is held by any of them; the idle (not stalled) client is still fine.
    eventually("only the well-behaved client holds a slot", || {
        let n = live.clients();
        async move { n == 1 }
    })
    .await;
    let rows = client.simple_query("SELECT 1").await.unwrap();
    assert!(!rows.is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_copy_or_mid_transaction_leave_nothing_behind() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let running = start_proxy_with(info, |c| c.pool.size = 2).await;
    let addr = running.addr;

    // Mid-transaction: a row inserted inside an open block, then the socket closes.
    let mut txn = RawClient::login(addr, "trusted").await;
    txn.send(&query("BEGIN")).await;
    txn.until_ready().await;
    txn.send(&query(
        "INSERT INTO users (user_id, name) VALUES (9100, 'vanished')",
    ))
    .await;
    let answer = txn.until_ready().await;
    assert!(answer.iter().any(|(t, _)| *t == b'C'), "{answer:?}");
    assert_eq!(answer.last(), Some(&(b'Z', b"T".to_vec())), "in a block");
    drop(txn);

    // Mid-COPY: thousands of rows reach the shards' COPY, then the socket closes.
    let mut copy = RawClient::login(addr, "trusted").await;
    copy.send(&query("COPY users (user_id, name) FROM STDIN"))
        .await;
    let (tag, _) = copy.read().await.expect("CopyInResponse");
    assert_eq!(tag, b'G');
    let rows: String = (20_000..30_000)
        .map(|i| format!("{i}\tcopy{i}\n"))
        .collect();
    for chunk in rows.as_bytes().chunks(8192) {
        copy.send(&message(b'd', chunk)).await;
    }
    eventually("copied rows reach a shard", || async {
        sum_over_shards(
            info,
            "SELECT coalesce(sum(tuples_processed), 0)::bigint FROM pg_stat_progress_copy",
        )
        .await
            > 0
    })
    .await;
    drop(copy);

    eventually("no server is left in a transaction or a COPY", || async {
        busy_servers(info).await == 0
    })
    .await;
    assert_eq!(
        proxy::count_users_directly(info).await,
        0,
        "nothing was kept"
    );

    // The pool still works: more clients than server connections, each in its own block.
    let url = proxy::app_url(&running);
    let mut clients = JoinSet::new();
    for i in 0..8i64 {
        let url = url.clone();
        clients.spawn(async move {
            let c = proxy::connect_url(&url).await.expect("connect");
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO users (user_id, name) VALUES ({}, 'after'); COMMIT",
                40_000 + i
            ))
            .await
            .expect("a block after the disconnects");
            let n: i64 = c
                .query_one("SELECT count(*) FROM users", &[])
                .await
                .expect("count")
                .get(0);
            assert!(n >= 1);
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    assert_eq!(proxy::count_users_directly(info).await, 8);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancels_stop_only_their_own_query() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let running = start_proxy_with(info, |_| {}).await;
    // The cluster's pool holds 10 connections per shard: every query gets one at once.
    const CLIENTS: usize = 8;
    const SLEEP: &str = "SELECT pg_sleep(3)";
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(Arc::new(proxy::connect(&running).await));
    }
    let mut queries = Vec::new();
    for c in &clients {
        let c = c.clone();
        queries.push(tokio::spawn(async move {
            let started = Instant::now();
            (c.simple_query(SLEEP).await, started.elapsed())
        }));
    }
    eventually("every query runs on a server", || async {
        sum_over_shards(
            info,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{SLEEP}'"),
        )
        .await
            == CLIENTS as i64
    })
    .await;

    // A random half is cancelled (at least one, never all), plus a cancel with a made-up key.
    let mut cancelled = vec![false; CLIENTS];
    while cancelled.iter().all(|c| *c) || !cancelled.iter().any(|c| *c) {
        for c in cancelled.iter_mut() {
            *c = rand::random::<bool>();
        }
    }
    let mut bogus = RawClient::connect(running.addr).await;
    let mut cancel_request = 16i32.to_be_bytes().to_vec();
    cancel_request.extend_from_slice(&80877102i32.to_be_bytes());
    cancel_request.extend_from_slice(&rand::random::<i32>().to_be_bytes());
    cancel_request.extend_from_slice(&rand::random::<i32>().to_be_bytes());
    bogus.send(&cancel_request).await;
    let mut cancels = JoinSet::new();
    for (c, _) in clients.iter().zip(&cancelled).filter(|(_, x)| **x) {
        let token = c.cancel_token();
        cancels.spawn(async move { token.cancel_query(tokio_postgres::NoTls).await });
    }
    while let Some(done) = cancels.join_next().await {
        done.expect("cancel task").expect("cancel request sent");
    }

    for (i, handle) in queries.into_iter().enumerate() {
        let (result, took) = handle.await.expect("query task");
        if cancelled[i] {
            let err = result.expect_err("a cancelled query fails");
            assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
            assert!(took < Duration::from_millis(2900), "client {i}: {took:?}");
        } else {
            result.unwrap_or_else(|e| panic!("client {i} was not cancelled, but: {e}"));
            assert!(took >= Duration::from_secs(3), "client {i}: {took:?}");
        }
    }

    // Every session and the pool stay healthy: more requests at once than server connections.
    let mut after = JoinSet::new();
    for c in clients.iter().cycle().take(CLIENTS * 3) {
        let c = c.clone();
        after.spawn(async move { c.simple_query("SELECT count(*) FROM users").await });
    }
    while let Some(done) = after.join_next().await {
        done.expect("task").expect("a query after the cancels");
    }
    running.stop().await;
}

/// Logs `n` clients in at once (trust, so the storm measures connection handling rather than
/// password hashing); each result with how long its login took.
async fn storm(
    url: &str,
    n: usize,
) -> Vec<(
    Result<tokio_postgres::Client, tokio_postgres::Error>,
    Duration,
)> {
    let mut logins = JoinSet::new();
    for _ in 0..n {
        let url = url.to_string();
        logins.spawn(async move {
            let started = Instant::now();
            let result = proxy::connect_url(&url).await;
            (result, started.elapsed())
        });
    }
    let all = async {
        let mut results = Vec::new();
        while let Some(done) = logins.join_next().await {
            results.push(done.expect("login task"));
        }
        results
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("the storm logs in within two minutes")
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_a_thousand_clients_logs_in_and_the_excess_gets_53300() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let running = start_proxy_with(&cluster.info, |c| c.proxy.max_clients = 1100).await;
    let live = running.proxy.live.clone();
    let url = proxy::url(&running, "trusted", "");

    // Below the limit: all thousand log in and query.
    let results = storm(&url, 1000).await;
    let mut took: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
    took.sort();
    eprintln!(
        "login latency of 1000 concurrent clients: p50 {:?}, p99 {:?}",
        percentile(&took, 50),
        percentile(&took, 99)
    );
    let clients: Vec<Arc<tokio_postgres::Client>> = results
        .into_iter()
        .map(|(r, _)| Arc::new(r.expect("every client below max_clients logs in")))
        .collect();
    assert_eq!(live.clients(), 1000);
    let mut queries = JoinSet::new();
    for c in &clients {
        let c = c.clone();
        queries.spawn(async move { c.simple_query("SELECT 1").await });
    }
    while let Some(done) = queries.join_next().await {
        done.expect("task").expect("every client's query succeeds");
    }
    drop(clients);
    eventually("the storm's slots are freed", || {
        let n = live.clients();
        async move { n == 0 }
    })
    .await;

    // Over the limit: a bystander in an open block, then 400 more than the 300 allowed.
    let mut settings = (*live.get()).clone();
    settings.max_clients = 300;
    live.set(settings);
    let bystander = proxy::connect(&running).await;
    bystander
        .batch_execute("BEGIN; INSERT INTO users (user_id, name) VALUES (1, 'bystander')")
        .await
        .unwrap();
    let results = storm(&url, 400).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for (result, _) in results {
        match result {
            Ok(c) => admitted.push(c),
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(admitted.len(), 299, "the slots left beside the bystander");
    assert_eq!(refused, 101);
    for c in &admitted {
        c.simple_query("SELECT 1")
            .await
            .expect("admitted clients work");
    }
    bystander
        .batch_execute("INSERT INTO users (user_id, name) VALUES (2, 'bystander')")
        .await
        .expect("the bystander's block is unaffected");
    bystander.batch_execute("COMMIT").await.expect("it commits");
    assert_eq!(proxy::count_users_directly(&cluster.info).await, 2);
    running.stop().await;
}
