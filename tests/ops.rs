//! Process behaviour against real Postgres: SIGHUP reloads what can change live and reports the
//! rest, SIGTERM drains sessions and exits 0, the client limit, the idle-in-transaction timeout and
//! the query timeout.

mod common;

use std::time::{Duration, Instant};

use common::process::{eventually, free_port, write_config, ProxyProcess, WAIT};
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::router::Strategy;
use tokio_postgres::error::SqlState;

fn url(port: u16, password: &str) -> String {
    format!("postgres://app:{password}@127.0.0.1:{port}/app?sslmode=disable")
}

/// A connection whose driver task reports how the connection ended (an unsolicited FATAL error
/// surfaces there).
async fn connect_watched(
    url: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to pgshard");
    (client, tokio::spawn(connection))
}

/// The SQLSTATE the connection ended with.
async fn ended_with(
    handle: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> Option<SqlState> {
    let result = tokio::time::timeout(WAIT, handle)
        .await
        .expect("the connection ends in time")
        .expect("the driver task does not panic");
    result.err().and_then(|e| e.code().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_live_settings_reports_fixed_ones_and_ignores_an_invalid_file() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let port = free_port();
    let other_port = free_port();
    let path = write_config(info, "ops-hup.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
    });
    let running = ProxyProcess::start(&path, &url(port, "app")).await;

    // A new password and a new listen address: the first applies, the second is reported.
    write_config(info, "ops-hup.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{other_port}");
        c.users[0].password = Some("fresh".into());
    });
    running.signal(libc::SIGHUP);
    running.wait_logged("config reloaded", 1).await;
    let fixed = running.logged("cannot change while pgshard runs");
    assert!(
        fixed.iter().any(|l| l.contains("proxy.listen")),
        "{fixed:?}"
    );
    assert_eq!(fixed.len(), 1, "only proxy.listen changed: {fixed:?}");
    let client = proxy::connect_url(&url(port, "fresh"))
        .await
        .expect("the new password works on the old address");
    client.simple_query("SELECT 1").await.unwrap();
    let err = proxy::connect_url(&url(port, "app"))
        .await
        .expect_err("the old password no longer works");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    assert!(
        proxy::connect_url(&url(other_port, "fresh")).await.is_err(),
        "the new address is not served before a restart"
    );

    // An invalid file (the password back to `app`, and a bad limit) changes nothing.
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = text
        .replace("\"fresh\"", "\"app\"")
        .replace("max_message_size = 67108864", "max_message_size = 10");
    assert_ne!(bad, text);
    std::fs::write(&path, bad).unwrap();
    running.signal(libc::SIGHUP);
    running.wait_logged("config reload failed", 1).await;
    assert!(
        running.logged("config reload failed")[0].contains("proxy.max_message_size"),
        "{:?}",
        running.logged("config reload failed")
    );
    assert!(proxy::connect_url(&url(port, "fresh")).await.is_ok());
    assert!(proxy::connect_url(&url(port, "app")).await.is_err());
    assert_eq!(running.logged("config reloaded").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_clients_lets_open_blocks_commit_then_exits() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let port = free_port();
    let path = write_config(info, "ops-term.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
        c.proxy.shutdown_timeout_ms = 20_000;
    });
    let mut running = ProxyProcess::start(&path, &url(port, "app")).await;
    let (idle, idle_conn) = connect_watched(&url(port, "app")).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let (busy, busy_conn) = connect_watched(&url(port, "app")).await;
    busy.batch_execute("BEGIN; INSERT INTO users (user_id, name) VALUES (7001, 'drain')")
        .await
        .unwrap();

    running.signal(libc::SIGTERM);
    assert_eq!(ended_with(idle_conn).await, Some(SqlState::ADMIN_SHUTDOWN));
    eventually("new clients are refused", || async {
        proxy::connect_url(&url(port, "app")).await.is_err()
    })
    .await;
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "a block is still open"
    );
    busy.batch_execute("INSERT INTO users (user_id, name) VALUES (7002, 'drain')")
        .await
        .expect("an open block goes on during the drain");
    busy.batch_execute("COMMIT")
        .await
        .expect("the block commits");
    assert_eq!(ended_with(busy_conn).await, Some(SqlState::ADMIN_SHUTDOWN));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "pgshard did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(proxy::count_users_directly(info).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_rolls_back_a_block_that_does_not_finish() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let port = free_port();
    let path = write_config(info, "ops-term2.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
        c.proxy.shutdown_timeout_ms = 300;
    });
    let mut running = ProxyProcess::start(&path, &url(port, "app")).await;
    let (busy, busy_conn) = connect_watched(&url(port, "app")).await;
    busy.batch_execute("BEGIN; INSERT INTO users (user_id, name) VALUES (7003, 'late')")
        .await
        .unwrap();
    running.signal(libc::SIGTERM);
    assert_eq!(ended_with(busy_conn).await, Some(SqlState::ADMIN_SHUTDOWN));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "pgshard did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(proxy::count_users_directly(info).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_idle_in_transaction_and_query_timeouts() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let running = start_proxy_with(info, |c| {
        c.proxy.max_clients = 2;
        c.proxy.idle_in_transaction_timeout_ms = 400;
        c.proxy.query_timeout_ms = 500;
        c.proxy.max_message_size = 4096;
    })
    .await;
    let app = proxy::app_url(&running);

    // max_clients + 1 is refused; a freed slot admits the next client.
    let first = proxy::connect_url(&app).await.unwrap();
    let (second, second_conn) = connect_watched(&app).await;
    let err = proxy::connect_url(&app)
        .await
        .expect_err("a third client is one too many");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert_eq!(message.as_deref(), Some("sorry, too many clients already"));
    drop(first);
    let deadline = Instant::now() + WAIT;
    let third = loop {
        if let Ok(client) = proxy::connect_url(&app).await {
            break client;
        }
        assert!(Instant::now() < deadline, "a freed slot admits a client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A client idle inside a block past the limit is disconnected; its row is rolled back.
    second
        .batch_execute("BEGIN; INSERT INTO users (user_id, name) VALUES (7004, 'stuck')")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        ended_with(second_conn).await,
        Some(SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT)
    );
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert_eq!(proxy::count_users_directly(info).await, 0);
    // Idle outside a block is fine.
    third.simple_query("SELECT 1").await.unwrap();

    // A request over the query timeout is cancelled with 57014, quickly.
    let started = Instant::now();
    let err = third
        .simple_query("SELECT pg_sleep(5)")
        .await
        .expect_err("the query timeout cancels pg_sleep");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert_eq!(
        message.as_deref(),
        Some("canceling statement due to statement timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The session and its server connection stay usable.
    third.simple_query("SELECT 1").await.unwrap();

    // A message over max_message_size ends the session with an error naming the limit.
    let big = format!("SELECT '{}'", "x".repeat(5000));
    let err = third
        .simple_query(&big)
        .await
        .expect_err("the message is too large");
    assert_eq!(err.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("exceeds the limit of 4096 bytes")),
        "{message:?}"
    );
    running.stop().await;
}
