//! Prometheus metrics over HTTP: a known workload through the proxy (keyed reads over both
//! protocols, a keyless count, a cross-shard transaction, a duplicate key) must move the counters
//! it touches by at least what it did, and the endpoint answers only `GET /metrics`.

mod common;

use std::collections::HashMap;

use common::proxy::{connect, start_proxy_with};
use common::TestCluster;
use pgshard::config::MetricsConfig;
use pgshard::router::Strategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Keyed reads sent with each protocol.
const READS: usize = 10;

/// One plain HTTP/1.1 GET; returns the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// Samples by `name{labels}` (as the text writes them).
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("a sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            };
            (key.to_string(), value)
        })
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    parse(&body)
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_moves_the_counters() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.metrics = Some(MetricsConfig {
            listen: "127.0.0.1:0".into(),
            allow_remote: false,
        });
    })
    .await;
    let addr = proxy.metrics_addr.expect("metrics are configured");
    assert!(addr.ip().is_loopback());
    let before = scrape(addr).await;

    let map = proxy.proxy.map.current();
    let a = 1_i64;
    let b = (2..10_000)
        .find(|k| map.shard_for(*k) != map.shard_for(a))
        .expect("a key on the other shard");
    let client = connect(&proxy).await;
    client
        .simple_query(&format!(
            "INSERT INTO users (user_id, name) VALUES ({a}, 'a'), ({b}, 'b')"
        ))
        .await
        .expect("a split insert (simple protocol)");
    for i in 0..READS {
        let key = if i % 2 == 0 { a } else { b };
        client
            .query("SELECT name FROM users WHERE user_id = $1", &[&key])
            .await
            .expect("keyed select (extended)");
        client
            .simple_query(&format!("SELECT name FROM users WHERE user_id = {key}"))
            .await
            .expect("keyed select (simple)");
    }
    let count = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("keyless count");
    assert_eq!(count.get::<_, i64>(0), 2);
    client
        .batch_execute(&format!(
            "BEGIN; UPDATE users SET name = 'x' WHERE user_id = {a}; UPDATE users SET name = 'y' WHERE user_id = {b}; COMMIT"
        ))
        .await
        .expect("a query string whose block spans two shards runs statement by statement");
    let refused = client
        .simple_query(
            "WITH d AS (DELETE FROM users WHERE false RETURNING *) SELECT * FROM d JOIN users USING (user_id)",
        )
        .await
        .expect_err("a data-modifying CTE read beside a sharded table is refused");
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("0A000"),
        "{refused}"
    );
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("UPDATE users SET name = 'x' WHERE user_id = $1", &[&a])
        .await
        .unwrap();
    client
        .execute("UPDATE users SET name = 'y' WHERE user_id = $1", &[&b])
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.expect("2PC commit");
    let duplicate = client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'again')",
            &[&a],
        )
        .await
        .expect_err("a duplicate key");
    assert_eq!(
        duplicate.as_db_error().map(|e| e.code().code()),
        Some("23505")
    );

    let after = scrape(addr).await;
    let moved = |key: &str| value(&after, key) - value(&before, key);
    // Reads of both protocols, the two single-shard updates; the split insert separately.
    let single = moved("pgshard_queries_total{route=\"single\"}");
    assert!(single >= (2 * READS + 2) as f64, "single moved {single}");
    assert!(
        moved("pgshard_query_duration_seconds_count{route=\"single\"}") >= (2 * READS + 2) as f64
    );
    assert!(moved("pgshard_queries_total{route=\"split_insert\"}") >= 1.0);
    assert!(moved("pgshard_queries_total{route=\"scatter\"}") >= 1.0);
    assert!(moved("pgshard_queries_total{route=\"two_phase_commit\"}") >= 1.0);
    assert!(moved("pgshard_query_duration_seconds_sum{route=\"scatter\"}") > 0.0);
    // The duplicate key is the workload's only class-23 error.
    assert_eq!(moved("pgshard_errors_total{class=\"23\"}"), 1.0);
    // The refused data-modifying CTE is pgshard's own 0A000.
    assert!(moved("pgshard_errors_total{class=\"0A\"}") >= 1.0);
    assert!(moved("pgshard_client_connections_accepted_total") >= 1.0);
    assert!(value(&after, "pgshard_client_connections") >= 1.0);
    assert!(moved("pgshard_pool_wait_seconds_count") >= (2 * READS) as f64);
    assert_eq!(
        value(&after, "pgshard_pool_wait_seconds_bucket{le=\"+Inf\"}"),
        value(&after, "pgshard_pool_wait_seconds_count")
    );
    for shard in cluster.info.shard_ids() {
        let labels = format!("{{shard=\"{shard}\",server=\"0\"}}");
        assert!(value(&after, &format!("pgshard_server_connections{labels}")) >= 1.0);
        assert!(value(&after, &format!("pgshard_server_connections_max{labels}")) >= 1.0);
        assert!(after.contains_key(&format!("pgshard_server_reads_total{labels}")));
    }
    assert!(after.contains_key("pgshard_lsn_wait_seconds_count"));
    assert!(after.contains_key("pgshard_failovers_total"));

    // Closing the client brings the gauge back down.
    drop(client);
    let mut open = value(&after, "pgshard_client_connections");
    for _ in 0..100 {
        open = value(&scrape(addr).await, "pgshard_client_connections");
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0.0, "the client connection gauge returns to zero");

    let (status, _) = http_get(addr, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    proxy.stop().await;
}
