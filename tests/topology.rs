//! Growing a running system: a local cluster gets one more shard (`pgshard cluster add-shard`)
//! while two proxies sharing the catalog serve clients that keep writing; both proxies open pools
//! to it within a second, without a restart, `REBALANCE add-shard` moves keys onto it, and not one
//! client statement fails. The topology commands refuse what would break the shards.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{eventually_within, run_output};
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::backend::topology::Role;
use pgshard::cluster::ClusterInfo;
use pgshard::config::{AuthMethod, Config, UserConfig};
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;

const ADMIN_PASSWORD: &str = "adminpw";

async fn start(info: &ClusterInfo, run_jobs: bool) -> RunningProxy {
    start_proxy_with(info, |config: &mut Config| {
        config.rebalance.run_jobs = run_jobs;
        // In-doubt recovery runs often, so the test sees it reach the new shard.
        config.transactions.recovery_interval_ms = 300;
        config.transactions.in_doubt_grace_ms = 3_000;
        config.users.push(UserConfig {
            admin: true,
            ..UserConfig::new("admin", Some(ADMIN_PASSWORD), AuthMethod::ScramSha256)
        });
    })
    .await
}

/// The admin console of `proxy` (simple protocol only, as psql uses it).
async fn admin(proxy: &RunningProxy) -> tokio_postgres::Client {
    proxy::connect_url(&format!(
        "postgres://admin:{ADMIN_PASSWORD}@127.0.0.1:{}/pgshard?sslmode=disable",
        proxy.addr.port()
    ))
    .await
    .expect("connect to the admin console")
}

/// The SQLSTATE and message of an admin command that must fail.
async fn refused(console: &tokio_postgres::Client, command: &str) -> (String, String) {
    let e = console
        .simple_query(command)
        .await
        .expect_err(&format!("{command} must be refused"));
    let db = e.as_db_error().expect("a server error");
    (db.code().code().to_string(), db.message().to_string())
}

/// Rows of an admin command, as text.
async fn rows(console: &tokio_postgres::Client, command: &str) -> Vec<Vec<String>> {
    console
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn pgshard(args: &[&str]) -> (bool, String) {
    let (ok, out, err) =
        run_output(tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshard")).args(args)).await;
    (ok, format!("{out}{err}"))
}

/// What the writers were told: per key, the name it holds.
type Audit = BTreeMap<i64, String>;

/// One client kept for the whole test: keyed inserts and updates, alternately in the extended
/// protocol (binary parameters) and the simple protocol, each read back by key.
async fn writer(
    client: tokio_postgres::Client,
    id: i64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> (Audit, Vec<String>, tokio_postgres::Client) {
    let mut audit = Audit::new();
    let mut errors = Vec::new();
    let mut n = 0i64;
    let mut seed = id as u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = id * 1_000_000 + n;
        let name = format!("w{id}-{n}");
        let wrote = if n % 2 == 0 {
            client
                .execute(
                    "INSERT INTO users (user_id, name) VALUES ($1, $2)",
                    &[&key, &name],
                )
                .await
                .map(|_| ())
        } else {
            client
                .simple_query(&format!(
                    "INSERT INTO users (user_id, name) VALUES ({key}, '{name}')"
                ))
                .await
                .map(|_| ())
        };
        match wrote {
            Ok(()) => {
                audit.insert(key, name);
            }
            Err(e) => errors.push(format!("insert {key}: {e}")),
        }
        if n % 3 == 0 {
            // An earlier key of this writer, renamed: it may sit on a moving range.
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let k = id * 1_000_000 + 1 + ((seed >> 33) % n as u64) as i64;
            if let Some(held) = audit.get_mut(&k) {
                let renamed = format!("w{id}-{n}-renamed");
                match client
                    .execute(
                        "UPDATE users SET name = $1 WHERE user_id = $2",
                        &[&renamed, &k],
                    )
                    .await
                {
                    Ok(1) => *held = renamed,
                    Ok(other) => errors.push(format!("update {k} touched {other} rows")),
                    Err(e) => errors.push(format!("update {k}: {e}")),
                }
            }
        }
        if n % 11 == 0 && n > 2 {
            // Two keys in one transaction block: across shards it commits with 2PC.
            let (a, b) = (key - 1, key - 2);
            let (name_a, name_b) = (format!("w{id}-{n}-a"), format!("w{id}-{n}-b"));
            let block: Result<(), tokio_postgres::Error> = async {
                client.batch_execute("BEGIN").await?;
                for (k, name) in [(a, &name_a), (b, &name_b)] {
                    client
                        .execute("UPDATE users SET name = $1 WHERE user_id = $2", &[name, &k])
                        .await?;
                }
                client.batch_execute("COMMIT").await
            }
            .await;
            match block {
                Ok(()) => {
                    for (k, name) in [(a, name_a), (b, name_b)] {
                        if let Some(held) = audit.get_mut(&k) {
                            *held = name;
                        }
                    }
                }
                Err(e) => errors.push(format!("transaction on {a} and {b}: {e}")),
            }
        }
        match client
            .query_opt("SELECT name FROM users WHERE user_id = $1", &[&key])
            .await
        {
            Ok(Some(row)) if audit.get(&key).map(String::as_str) == Some(row.get(0)) => {}
            Ok(other) => errors.push(format!(
                "read {key}: {:?}",
                other.map(|r| r.get::<_, String>(0))
            )),
            Err(e) if audit.contains_key(&key) => errors.push(format!("read {key}: {e}")),
            Err(_) => {}
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    (audit, errors, client)
}

/// Every `users` row, read on each shard directly: key → (shard, name).
async fn rows_by_key(info: &ClusterInfo) -> BTreeMap<i64, Vec<(u32, String)>> {
    let mut all: BTreeMap<i64, Vec<(u32, String)>> = BTreeMap::new();
    for id in info.shard_ids() {
        for row in proxy::shard(info, id)
            .await
            .query("SELECT user_id, name FROM users", &[])
            .await
            .expect("read a shard directly")
        {
            all.entry(row.get(0)).or_default().push((id, row.get(1)));
        }
    }
    all
}

/// The proxy has applied a topology where `shard` has `servers` servers, and has client pools to
/// each of them and to no other server of it.
fn has_pools(proxy: &RunningProxy, shard: u32, servers: usize) -> bool {
    let applied = proxy
        .proxy
        .shards
        .current()
        .shard(shard)
        .map_or(0, |s| 1 + s.replicas.len());
    let mut pooled: Vec<u16> = proxy
        .proxy
        .pools
        .pool_status()
        .iter()
        .filter(|p| p.server.shard == shard && !p.control)
        .map(|p| p.server.index)
        .collect();
    pooled.dedup();
    applied == servers && pooled == (0..servers as u16).collect::<Vec<_>>()
}

/// Stops the writers when the test ends, also when it fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_to_a_running_cluster_takes_keys_without_a_client_noticing() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 2;
        spec.strategy = Strategy::Hash;
        spec.replicas = 1;
    })
    .await;
    let info = &cluster.info;
    let runner = start(info, true).await;
    let second = start(info, false).await;
    let console = admin(&runner).await;
    let other_console = admin(&second).await;

    // Clients on both proxies, connected once for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_writers = StopOnDrop(stop.clone());
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (i, p) in [&runner, &second, &runner, &second].into_iter().enumerate() {
        let client = proxy::connect(p).await;
        writers.push(tokio::spawn(writer(
            client,
            i as i64 + 1,
            stop.clone(),
            done.clone(),
        )));
    }
    eventually_within(Duration::from_secs(30), "the writers get going", || async {
        done.load(Ordering::SeqCst) >= 100
    })
    .await;

    // One more shard, created and registered while the clients write.
    let dir = info.dir.to_str().unwrap();
    let (ok, out) = pgshard(&["cluster", "add-shard", "--dir", dir]).await;
    assert!(ok, "{out}");
    let added_at = Instant::now();
    assert!(out.contains("shard 2 added"), "{out}");
    let grown = ClusterInfo::load(&info.dir).unwrap();
    assert_eq!(grown.shard_ids(), [0, 1, 2]);
    // Both proxies open pools to it within a second, without a restart.
    eventually_within(
        Duration::from_secs(1).saturating_sub(added_at.elapsed()),
        "both proxies have pools to shard 2",
        || async { has_pools(&runner, 2, 2) && has_pools(&second, 2, 2) },
    )
    .await;
    // The new shard's replica is monitored like the others.
    eventually_within(
        Duration::from_secs(10),
        "shard 2's replica is seen streaming",
        || async {
            second
                .proxy
                .topology
                .servers_of(2)
                .iter()
                .any(|s| s.id.index == 1 && s.healthy && s.role == Role::Replica)
        },
    )
    .await;
    let shards = rows(&other_console, "SHOW SHARDS").await;
    let listed: Vec<&str> = shards.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(listed, ["0", "1", "2"], "{shards:?}");
    let version: i64 = shards[2][7].parse().unwrap();
    assert!(version >= 2, "{shards:?}");
    assert_eq!(shards[2][6], "0", "no ranges yet: {shards:?}");
    assert_eq!(shards[2][4], "2", "primary and replica: {shards:?}");

    // In-doubt recovery covers the new shard: a prepared transaction nobody decided is rolled back.
    let shard2 = proxy::shard(&grown, 2).await;
    shard2
        .batch_execute(
            "BEGIN; INSERT INTO users (user_id, name) VALUES (-1, 'orphan'); \
             PREPARE TRANSACTION 'pgshard_test_orphan'",
        )
        .await
        .unwrap();
    eventually_within(
        Duration::from_secs(30),
        "the orphan is rolled back",
        || async {
            shard2
                .query_opt(
                    "SELECT 1 FROM pg_prepared_xacts WHERE gid = 'pgshard_test_orphan'",
                    &[],
                )
                .await
                .unwrap()
                .is_none()
        },
    )
    .await;

    // A replica leaves and comes back: every proxy closes and reopens its pools.
    let replica = grown.replicas(2)[0].port;
    rows(&console, &format!("DROP REPLICA 2 127.0.0.1 {replica}")).await;
    eventually_within(
        Duration::from_secs(1),
        "the replica's pools close",
        || async { has_pools(&runner, 2, 1) && has_pools(&second, 2, 1) },
    )
    .await;
    rows(
        &other_console,
        &format!("ADD REPLICA 2 127.0.0.1 {replica}"),
    )
    .await;
    eventually_within(
        Duration::from_secs(1),
        "the replica's pools reopen",
        || async { has_pools(&runner, 2, 2) && has_pools(&second, 2, 2) },
    )
    .await;

    // What would break the shards is refused, with the reason.
    let (code, message) = refused(&console, "DROP SHARD 0").await;
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("shard 0 owns"), "{message}");
    let port = grown.shards()[2].port;
    let (code, message) = refused(&console, &format!("ADD SHARD 3 127.0.0.1 {port}")).await;
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("registered already"), "{message}");
    let shard0_port = grown.shards()[0].port;
    let (code, message) =
        refused(&console, &format!("ADD REPLICA 2 127.0.0.1 {shard0_port}")).await;
    assert_eq!(code, "55000", "{message}");
    let (code, message) = refused(&console, "ADD SHARD 7 127.0.0.1 1").await;
    assert_eq!(code, "08001", "{message}");

    // Keys move onto it while the clients keep writing.
    console
        .simple_query("REBALANCE add-shard 2")
        .await
        .expect("REBALANCE add-shard 2");
    let job: i64 = proxy::catalog(info)
        .await
        .query_one("SELECT max(job_id) FROM rebalance_jobs", &[])
        .await
        .unwrap()
        .get(0);
    let catalog = proxy::catalog(info).await;
    eventually_within(Duration::from_secs(120), "the job ends", || async {
        let state: String = catalog
            .query_one(
                "SELECT state FROM rebalance_jobs WHERE job_id = $1",
                &[&job],
            )
            .await
            .unwrap()
            .get(0);
        ["done", "failed", "cancelled"].contains(&state.as_str())
    })
    .await;
    let (state, error): (String, Option<String>) = {
        let r = catalog
            .query_one(
                "SELECT state, error FROM rebalance_jobs WHERE job_id = $1",
                &[&job],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state, "done", "{error:?}");
    // A little more writing on the new map, then stop.
    let after = done.load(Ordering::SeqCst);
    eventually_within(
        Duration::from_secs(30),
        "writes go on after the move",
        || async { done.load(Ordering::SeqCst) >= after + 100 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut audit = Audit::new();
    let mut clients = Vec::new();
    for w in writers {
        let (a, errors, client) = w.await.unwrap();
        assert!(errors.is_empty(), "client statements failed: {errors:?}");
        audit.extend(a);
        clients.push(client);
    }
    assert!(
        clients.iter().all(|c| !c.is_closed()),
        "no client was disconnected"
    );

    // Nothing lost, nothing twice, every row where the map says, and on the new shard too.
    let map = runner.proxy.map.current();
    assert_eq!(second.proxy.map.current().version, map.version);
    let found = rows_by_key(&grown).await;
    let mut on_new = 0;
    for (key, name) in &audit {
        let copies = found.get(key).cloned().unwrap_or_default();
        assert_eq!(copies.len(), 1, "key {key}: {copies:?}");
        assert_eq!(&copies[0].1, name, "key {key}");
        assert_eq!(copies[0].0, map.shard_for(*key), "key {key} misplaced");
        on_new += usize::from(copies[0].0 == 2);
    }
    assert_eq!(found.len(), audit.len(), "rows nobody wrote");
    assert!(on_new > 0, "no key moved to shard 2");
    let config = grown.config_path.to_str().unwrap();
    let (ok, out) = pgshard(&["verify", "--config", config]).await;
    assert!(ok, "{out}");
    assert!(out.contains("shard   2 users"), "{out}");

    // Now it owns ranges, the new shard cannot be dropped either (the CLI says so too).
    let (ok, out) = pgshard(&["shard", "drop", "--config", config, "--id", "2"]).await;
    assert!(!ok && out.contains("shard 2 owns"), "{out}");

    // pool.size changes on reload, for the new shard's pools too; one that does not fit is refused.
    let mut config = Config::load(&grown.config_path).unwrap();
    config.pool.size = 3;
    let fixed = runner.reload(&config).await.expect("a smaller pool.size");
    assert!(!fixed.contains(&"pool.size".to_string()), "{fixed:?}");
    let client_pools: Vec<usize> = runner
        .proxy
        .pools
        .pool_status()
        .iter()
        .filter(|p| !p.control)
        .map(|p| p.status.max_size)
        .collect();
    assert!(
        client_pools.len() >= 6 && client_pools.iter().all(|m| *m == 3),
        "{client_pools:?}"
    );
    config.pool.size = 10_000;
    let e = runner
        .reload(&config)
        .await
        .expect_err("too big a pool.size");
    assert!(e.contains("max_connections"), "{e}");

    drop(clients);
    second.stop().await;
    runner.stop().await;
}
