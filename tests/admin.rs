//! The admin console through psql: every SHOW against known state, RELOAD, PAUSE/RESUME ordering,
//! and a non-admin user being refused.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::config::{AuthMethod, UserConfig};
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;
use tokio::process::Command;

const ADMIN_PASSWORD: &str = "adminpw";

async fn start(cluster: &TestCluster) -> RunningProxy {
    start_proxy_with(&cluster.info, |config| {
        config.users.push(UserConfig {
            admin: true,
            ..UserConfig::new("admin", Some(ADMIN_PASSWORD), AuthMethod::ScramSha256)
        });
    })
    .await
}

fn admin_url(proxy: &RunningProxy) -> String {
    format!(
        "postgres://admin:{ADMIN_PASSWORD}@127.0.0.1:{}/pgshard?sslmode=disable",
        proxy.addr.port()
    )
}

/// Runs psql with `args` and `command`; (success, stdout, stderr).
async fn psql(url: &str, args: &[&str], command: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-v", "VERBOSITY=verbose"])
        .args(args)
        .args(["-c", command])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Rows of an admin command in unaligned tuples-only output, split on `|`.
async fn rows(proxy: &RunningProxy, command: &str) -> Vec<Vec<String>> {
    let (ok, out, err) = psql(&admin_url(proxy), &["-A", "-t"], command).await;
    assert!(ok, "{command} failed: {err}");
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Polls an admin command until `done` holds for its rows (monitors and sessions move on their
/// own schedule); panics after 20 s.
async fn rows_when(
    proxy: &RunningProxy,
    command: &str,
    done: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = rows(proxy, command).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{command} never got there: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_state_and_refuses_non_admins() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 2;
        spec.strategy = Strategy::Hash;
        spec.replicas = 1;
    })
    .await;
    let proxy = start(&cluster).await;
    let app = proxy::connect(&proxy).await;
    app.query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap();

    // SHOW SHARDS: every shard id, with its primary.
    let shards = rows(&proxy, "SHOW SHARDS").await;
    let ids: Vec<u32> = shards.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(ids, cluster.info.shard_ids());
    for r in &shards {
        assert_eq!(r[1], "app");
        assert!(r[2].starts_with("127.0.0.1:"), "{r:?}");
        assert_eq!(r[4], "2", "primary and one replica: {r:?}");
    }

    // SHOW SHARD_MAP: version 1 of a hash map, ranges covering both shards.
    let map = rows(&proxy, "show shard_map;").await;
    assert!(!map.is_empty());
    assert!(map
        .iter()
        .all(|r| r[0] == "1" && r[1] == "hash" && r[2].is_empty()));
    let mut owners: Vec<&str> = map.iter().map(|r| r[5].as_str()).collect();
    owners.dedup();
    owners.sort();
    owners.dedup();
    assert_eq!(owners, ["0", "1"]);

    // SHOW SERVERS: each shard's primary and its replica, once the monitors have sampled them.
    let servers = rows_when(&proxy, "SHOW SERVERS", |r| {
        r.len() == 4 && r.iter().all(|s| s[3] != "unknown")
    })
    .await;
    for shard in ["0", "1"] {
        let of: Vec<&Vec<String>> = servers.iter().filter(|s| s[0] == shard).collect();
        assert_eq!(of.len(), 2, "{servers:?}");
        assert_eq!((of[0][1].as_str(), of[0][3].as_str()), ("0", "primary"));
        assert_eq!((of[1][1].as_str(), of[1][3].as_str()), ("1", "replica"));
        for s in of {
            assert_eq!(s[4], "t", "healthy: {s:?}");
            assert_eq!(s[5], "f", "fenced: {s:?}");
        }
    }
    // Default aligned output has the headers.
    let (ok, out, err) = psql(&admin_url(&proxy), &[], "SHOW SERVERS").await;
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    for column in [
        "shard_id",
        "role",
        "healthy",
        "fenced",
        "lag_bytes",
        "lag_ms",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(out.contains("(4 rows)"), "{out}");

    // SHOW POOLS: a pool per server, sized from the config.
    let pools = rows(&proxy, "SHOW POOLS").await;
    let size = proxy.proxy.config.pool.size.to_string();
    for shard in ["0", "1"] {
        assert!(
            pools
                .iter()
                .any(|p| p[0] == shard && p[1] == "0" && p[4] == size),
            "{pools:?}"
        );
    }
    assert!(pools.iter().all(|p| p[3] == "transaction"));

    // SHOW CLIENTS: the app client and the admin session itself.
    let clients = rows(&proxy, "SHOW CLIENTS").await;
    assert!(
        clients.iter().any(|c| c[1] == "app" && c[2] == "app"),
        "{clients:?}"
    );
    assert!(
        clients.iter().any(|c| c[1] == "admin" && c[2] == "pgshard"),
        "{clients:?}"
    );

    // SHOW STATS: one row for the served database, counting the app client's request.
    let stats = rows(&proxy, "SHOW STATS").await;
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0][0], "app");
    assert!(stats[0][4].parse::<u64>().unwrap() >= 1, "{stats:?}");
    assert_eq!(stats[0][6], "f", "not paused");
    assert_eq!(stats[0][13], "1", "map version");

    // SHOW CONFIG: keys and values, no password in sight.
    let config = rows(&proxy, "SHOW CONFIG").await;
    let value = |key: &str| {
        config
            .iter()
            .find(|r| r[0] == key)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("no {key} in {config:?}"))
    };
    assert_eq!(value("proxy.database"), "app");
    assert_eq!(value("replicas.read_from"), "primary");
    let admin_index = config
        .iter()
        .find(|r| r[1] == "admin" && r[0].ends_with(".name"))
        .map(|r| r[0].trim_end_matches(".name").to_string())
        .unwrap();
    assert_eq!(value(&format!("{admin_index}.password")), "********");
    assert_eq!(value(&format!("{admin_index}.admin")), "true");
    assert!(config.iter().all(|r| !r[1].contains(ADMIN_PASSWORD)));
    assert!(value("catalog.url").contains("********"));

    let version = rows(&proxy, "SHOW VERSION").await;
    assert_eq!(
        version,
        [[format!("pgshard {}", env!("CARGO_PKG_VERSION"))]]
    );

    // RELOAD re-reads the shard map.
    let (ok, _, err) = psql(&admin_url(&proxy), &["-A", "-t"], "RELOAD").await;
    assert!(ok, "{err}");
    assert!(err.contains("shard map version 1 is current"), "{err}");

    // Unknown commands and SQL are refused with the list of commands.
    let (ok, _, err) = psql(&admin_url(&proxy), &[], "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("0A000"), "{err}");
    assert!(err.contains("SHOW SHARD_MAP"), "{err}");

    // A non-admin user is refused after authenticating, with SQLSTATE 42501.
    let app_admin = format!(
        "postgres://app:{}@127.0.0.1:{}/pgshard?sslmode=disable",
        proxy::APP_PASSWORD,
        proxy.addr.port()
    );
    let (ok, _, err) = psql(&app_admin, &[], "SHOW SHARDS").await;
    assert!(!ok);
    assert!(
        err.contains("may not use the pgshard admin console"),
        "{err}"
    );
    let refused = proxy::connect_url(&app_admin).await.expect_err("refused");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // A wrong admin password is still a password failure, not a console refusal.
    let wrong = format!(
        "postgres://admin:nope@127.0.0.1:{}/pgshard?sslmode=disable",
        proxy.addr.port()
    );
    let refused = proxy::connect_url(&wrong).await.expect_err("refused");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_running_requests_and_holds_new_ones() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start(&cluster).await;
    let url = admin_url(&proxy);

    // A request in flight: PAUSE returns only after it has finished.
    let slow = proxy::connect(&proxy).await;
    let (slow_tx, mut slow_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let r = slow.simple_query("SELECT pg_sleep(2)").await;
        let _ = slow_tx.send(r.is_ok());
    });
    rows_when(&proxy, "SHOW STATS", |r| r[0][5] == "1").await;
    let (ok, _, err) = psql(&url, &[], "PAUSE").await;
    assert!(ok, "{err}");
    // The proxy finished the request before PAUSE returned; its client may read the answer a
    // moment later, so that side is awaited rather than polled.
    let stats = rows(&proxy, "SHOW STATS").await;
    assert_eq!(
        stats[0][5], "0",
        "PAUSE returned while a request was running"
    );
    let slow_done = tokio::time::timeout(Duration::from_secs(10), slow_rx.recv())
        .await
        .expect("the running request finished");
    assert_eq!(slow_done, Some(true), "the running request succeeded");

    // While paused, a new request waits at the gate until RESUME.
    let held = proxy::connect(&proxy).await;
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let r = held.query_one("SELECT 41 + 1", &[]).await;
        let _ = held_tx.send(r.map(|row| row.get::<_, i32>(0)).ok());
    });
    let stats = rows_when(&proxy, "SHOW STATS", |r| r[0][7] == "1").await;
    assert_eq!(stats[0][6], "t", "paused");
    assert!(held_rx.try_recv().is_err(), "a request ran while paused");
    let (ok, _, err) = psql(&url, &[], "resume;").await;
    assert!(ok, "{err}");
    let answer = tokio::time::timeout(Duration::from_secs(10), held_rx.recv())
        .await
        .expect("the held request ran after RESUME");
    assert_eq!(answer, Some(Some(42)));

    // RESUME when not paused is an error.
    let (ok, _, err) = psql(&url, &[], "RESUME").await;
    assert!(!ok);
    assert!(err.contains("not paused"), "{err}");
    proxy.stop().await;
}
