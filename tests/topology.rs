//! Growing a running system: a local cluster of ten shards gets an eleventh and then a twelfth
//! (`pgshard cluster add-shard`, each with its replica) while two proxies sharing the catalog serve
//! clients that keep writing; both proxies open pools to each new shard within a second, without a
//! restart, `REBALANCE add-shard` moves keys onto it, and not one client statement fails or
//! reconnects. The topology commands refuse what would break the shards.

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

/// The cluster, both proxies and their admin consoles: what each growth step works with.
struct Running<'a> {
    info: &'a ClusterInfo,
    runner: &'a RunningProxy,
    second: &'a RunningProxy,
    console: &'a tokio_postgres::Client,
    other_console: &'a tokio_postgres::Client,
    /// Statements the writers have completed so far.
    done: &'a AtomicU64,
}

/// One growth step under the writers: `pgshard cluster add-shard` creates shard `id` with its
/// replica, both proxies open pools to both within a second, in-doubt recovery and DROP/ADD
/// REPLICA reach it, `REBALANCE add-shard id` gives it keys, and the writers carry on on the new
/// map. Returns the grown cluster.
async fn grow_by_one_shard(run: &Running<'_>, id: u32) -> ClusterInfo {
    let Running {
        info,
        runner,
        second,
        console,
        other_console,
        done,
    } = *run;
    let version_before = runner.proxy.map.current().version;
    let dir = info.dir.to_str().unwrap();
    let (ok, out) = pgshard(&["cluster", "add-shard", "--dir", dir, "--replicas", "1"]).await;
    assert!(ok, "{out}");
    let added_at = Instant::now();
    assert!(out.contains(&format!("shard {id} added")), "{out}");
    let grown = ClusterInfo::load(&info.dir).unwrap();
    assert_eq!(grown.shard_ids(), (0..=id).collect::<Vec<_>>());
    // Both proxies open pools to it and its replica within a second, without a restart.
    eventually_within(
        Duration::from_secs(1).saturating_sub(added_at.elapsed()),
        &format!("both proxies have pools to shard {id}"),
        || async { has_pools(runner, id, 2) && has_pools(second, id, 2) },
    )
    .await;
    // The new shard's replica is monitored like the others.
    eventually_within(
        Duration::from_secs(10),
        &format!("shard {id}'s replica is seen streaming"),
        || async {
            second
                .proxy
                .topology
                .servers_of(id)
                .iter()
                .any(|s| s.id.index == 1 && s.healthy && s.role == Role::Replica)
        },
    )
    .await;
    let shards = rows(other_console, "SHOW SHARDS").await;
    let listed: Vec<String> = shards.iter().map(|r| r[0].clone()).collect();
    let expected: Vec<String> = (0..=id).map(|i| i.to_string()).collect();
    assert_eq!(listed, expected, "{shards:?}");
    let new = &shards[id as usize];
    assert_eq!(new[6], "0", "no ranges yet: {shards:?}");
    assert_eq!(new[4], "2", "primary and replica: {shards:?}");

    // In-doubt recovery covers the new shard: a prepared transaction nobody decided is rolled back.
    let direct = proxy::shard(&grown, id).await;
    let gid = format!("pgshard_test_orphan_{id}");
    direct
        .batch_execute(&format!(
            "BEGIN; INSERT INTO users (user_id, name) VALUES (-1, 'orphan'); \
             PREPARE TRANSACTION '{gid}'"
        ))
        .await
        .unwrap();
    eventually_within(
        Duration::from_secs(30),
        "the orphan is rolled back",
        || async {
            direct
                .query_opt("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1", &[&gid])
                .await
                .unwrap()
                .is_none()
        },
    )
    .await;

    // A replica leaves and comes back: every proxy closes and reopens its pools.
    let replica = grown.replicas(id)[0].port;
    rows(console, &format!("DROP REPLICA {id} 127.0.0.1 {replica}")).await;
    eventually_within(
        Duration::from_secs(1),
        "the replica's pools close",
        || async { has_pools(runner, id, 1) && has_pools(second, id, 1) },
    )
    .await;
    rows(
        other_console,
        &format!("ADD REPLICA {id} 127.0.0.1 {replica}"),
    )
    .await;
    eventually_within(
        Duration::from_secs(1),
        "the replica's pools reopen",
        || async { has_pools(runner, id, 2) && has_pools(second, id, 2) },
    )
    .await;

    // Keys move onto it while the clients keep writing.
    console
        .simple_query(&format!("REBALANCE add-shard {id}"))
        .await
        .unwrap_or_else(|e| panic!("REBALANCE add-shard {id}: {e}"));
    let catalog = proxy::catalog(info).await;
    let job: i64 = catalog
        .query_one("SELECT max(job_id) FROM rebalance_jobs", &[])
        .await
        .unwrap()
        .get(0);
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
    // Both proxies route with the new map, which gives the new shard keys, and it holds rows.
    let map = runner.proxy.map.current();
    assert!(map.version > version_before, "no new map version");
    eventually_within(
        Duration::from_secs(5),
        "the second proxy has the new map",
        || async { second.proxy.map.current().version == map.version },
    )
    .await;
    let held: i64 = direct
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(held > 0, "no key moved to shard {id}");
    // A little more writing on the new map.
    let after = done.load(Ordering::SeqCst);
    eventually_within(
        Duration::from_secs(30),
        "writes go on after the move",
        || async { done.load(Ordering::SeqCst) >= after + 100 },
    )
    .await;
    grown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_shards_grow_to_eleven_and_twelve_without_a_client_noticing() {
    let mut lap = Instant::now();
    let mut timings = Vec::new();
    let mut mark = |what: String| {
        timings.push(format!("{what} {:.1}s", lap.elapsed().as_secs_f64()));
        lap = Instant::now();
    };
    let cluster = TestCluster::start_with(|spec| {
        // Replicas only where the test needs them: on the shards it adds.
        spec.shards = 10;
        spec.strategy = Strategy::Hash;
    })
    .await;
    let info = &cluster.info;
    mark("cluster up".into());
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
    mark("proxies and writers".into());

    // Ten shards become eleven, then twelve, while the clients write.
    let running = Running {
        info,
        runner: &runner,
        second: &second,
        console: &console,
        other_console: &other_console,
        done: &done,
    };
    for id in [10, 11] {
        grow_by_one_shard(&running, id).await;
        mark(format!("shard {id} added"));
    }
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

    // Nothing lost, nothing twice, every row where the map says, and on both new shards too.
    let grown = ClusterInfo::load(&info.dir).unwrap();
    let map = runner.proxy.map.current();
    assert_eq!(second.proxy.map.current().version, map.version);
    let found = rows_by_key(&grown).await;
    let mut on_new = BTreeMap::<u32, usize>::new();
    for (key, name) in &audit {
        let copies = found.get(key).cloned().unwrap_or_default();
        assert_eq!(copies.len(), 1, "key {key}: {copies:?}");
        assert_eq!(&copies[0].1, name, "key {key}");
        assert_eq!(copies[0].0, map.shard_for(*key), "key {key} misplaced");
        *on_new.entry(copies[0].0).or_default() += 1;
    }
    assert_eq!(found.len(), audit.len(), "rows nobody wrote");
    for id in [10, 11] {
        assert!(
            on_new.contains_key(&id),
            "no written key on shard {id}: {on_new:?}"
        );
    }
    let config = grown.config_path.to_str().unwrap();
    let (ok, out) = pgshard(&["verify", "--config", config]).await;
    assert!(ok, "{out}");
    assert!(out.contains("shard  11 users"), "{out}");

    // What would break the shards is refused, with the reason.
    let (code, message) = refused(&console, "DROP SHARD 0").await;
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("shard 0 owns"), "{message}");
    let port = grown.shards()[11].port;
    let (code, message) = refused(&console, &format!("ADD SHARD 12 127.0.0.1 {port}")).await;
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("registered already"), "{message}");
    let shard0_port = grown.shards()[0].port;
    let (code, message) =
        refused(&console, &format!("ADD REPLICA 11 127.0.0.1 {shard0_port}")).await;
    assert_eq!(code, "55000", "{message}");
    let (code, message) = refused(&console, "ADD SHARD 20 127.0.0.1 1").await;
    assert_eq!(code, "08001", "{message}");
    // Now it owns ranges, a new shard cannot be dropped either (the CLI says so too).
    let (ok, out) = pgshard(&["shard", "drop", "--config", config, "--id", "11"]).await;
    assert!(!ok && out.contains("shard 11 owns"), "{out}");

    // pool.size changes on reload, for the new shards' pools too; one that does not fit is refused.
    let mut config = Config::load(&grown.config_path).unwrap();
    config.pool.size = 3;
    let fixed = runner.reload(&config).await.expect("a smaller pool.size");
    assert!(!fixed.contains(&"pool.size".to_string()), "{fixed:?}");
    let client_pools: Vec<(u32, usize)> = runner
        .proxy
        .pools
        .pool_status()
        .iter()
        .filter(|p| !p.control)
        .map(|p| (p.server.shard, p.status.max_size))
        .collect();
    assert!(
        client_pools.iter().any(|(s, _)| *s == 11) && client_pools.iter().all(|(_, m)| *m == 3),
        "{client_pools:?}"
    );
    config.pool.size = 10_000;
    let e = runner
        .reload(&config)
        .await
        .expect_err("too big a pool.size");
    assert!(e.contains("max_connections"), "{e}");
    mark("audit and refusals".into());

    drop(clients);
    second.stop().await;
    runner.stop().await;
    mark("proxies stopped".into());

    // The harness stops the instances added since the start too, not only those it started.
    let added: Vec<String> = grown
        .instances
        .iter()
        .filter(|i| i.shard.is_some_and(|s| s >= 10))
        .map(|i| {
            let pid = std::fs::read_to_string(i.data_dir.join("postmaster.pid"))
                .unwrap_or_else(|e| panic!("{} has no postmaster.pid: {e}", i.name));
            format!("/proc/{}", pid.lines().next().unwrap_or_default().trim())
        })
        .collect();
    assert_eq!(added.len(), 4, "{added:?}");
    drop(cluster);
    eventually_within(
        Duration::from_secs(10),
        "the added shards' instances stop with the cluster",
        || async {
            added
                .iter()
                .all(|proc| !std::path::Path::new(proc).exists())
        },
    )
    .await;
    mark("cluster stopped".into());
    println!("growth test: {}", timings.join(", "));
}
