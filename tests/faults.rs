//! Fault injection against real Postgres: a shard killed mid-load (`pg_ctl stop -m immediate`),
//! server connections terminated under the proxy (`pg_terminate_backend`), and a shard behind a
//! fault-injecting TCP relay that black-holes, drops or delays its traffic. Clients of the other
//! shards must not notice; clients of the failed shard get a clear error promptly instead of a
//! hang; traffic recovers when the shard returns, without restarting the proxy; no acknowledged
//! row is lost, no prepared transaction is left behind, no broken server connection is reused.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{self, start_proxy_with};
use common::relay::{Fault, Relay};
use common::TestCluster;
use pgshard::cluster::{self, ClusterInfo, StopMode};
use pgshard::config::Config;
use pgshard::router::{ShardMap, Strategy};
use tokio_postgres::types::ToSql;

const CONNECT_TIMEOUT_MS: u64 = 1_000;
const QUERY_TIMEOUT_MS: u64 = 2_000;
/// How long after the query timeout the proxy gives up on servers that ignore the cancel.
const CANCEL_GRACE: Duration = pgshard::frontend::session_limits::CANCEL_GRACE;
/// Slack for a loaded 2-core test machine on top of every promised bound.
const MARGIN: Duration = Duration::from_secs(2);
const POOL_SIZE: usize = 4;

/// Short timeouts, a small pool (so reuse is exercised), fast two-phase-commit recovery.
fn fault_settings(config: &mut Config) {
    config.pool.size = POOL_SIZE;
    config.pool.connect_timeout_ms = CONNECT_TIMEOUT_MS;
    config.pool.checkout_timeout_ms = 3_000;
    config.proxy.query_timeout_ms = QUERY_TIMEOUT_MS;
    config.transactions.in_doubt_grace_ms = 500;
    config.transactions.recovery_interval_ms = 200;
    config.replicas.monitor_interval_ms = 100;
}

/// Polls `check` until it returns true or `deadline` passes.
async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

/// Keys owned by `shard`, from `start` on.
fn keys_on(map: &ShardMap, shard: u32, start: i64) -> impl Iterator<Item = i64> + '_ {
    (start..).filter(move |k| map.shard_for(*k) == shard)
}

/// SQLSTATE, severity and message of a failed statement.
fn describe(e: &tokio_postgres::Error) -> (String, String, String) {
    match e.as_db_error() {
        Some(db) => (
            db.code().code().to_string(),
            db.severity().to_string(),
            db.message().to_string(),
        ),
        None => ("none".into(), "none".into(), e.to_string()),
    }
}

/// True for the errors a client of a lost shard may get: connection failures (08xxx) and the
/// server shutting down (57P0x).
fn is_connection_error(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P0")
}

/// One failed statement of a load client.
#[derive(Debug, Clone)]
struct Failure {
    code: String,
    severity: String,
    message: String,
    took: Duration,
}

/// What a load client did.
#[derive(Default)]
struct Tally {
    /// Keys whose INSERT was acknowledged, with when.
    acked: Vec<(i64, Instant)>,
    failures: Vec<Failure>,
    /// Duration of each successful INSERT.
    latencies: Vec<Duration>,
}

/// A client inserting keys of one shard one by one through the proxy until told to stop.
struct Writer {
    shard: u32,
    tally: Arc<Mutex<Tally>>,
    client: Arc<tokio_postgres::Client>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_writer(
    url: &str,
    map: Arc<ShardMap>,
    shard: u32,
    first_key: i64,
    stop: Arc<AtomicBool>,
) -> Writer {
    let client = Arc::new(proxy::connect_url(url).await.expect("writer connects"));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (c, t) = (client.clone(), tally.clone());
    let task = tokio::spawn(async move {
        // Bounded: at most 20k inserts or a minute.
        let until = Instant::now() + Duration::from_secs(60);
        let keys: Vec<i64> = keys_on(&map, shard, first_key).take(20_000).collect();
        for key in keys {
            if stop.load(Ordering::Acquire) || Instant::now() > until {
                break;
            }
            let started = Instant::now();
            let result = c
                .execute(
                    "INSERT INTO users (user_id, name) VALUES ($1, 'fault')",
                    &[&key],
                )
                .await;
            let took = started.elapsed();
            let failed = match result {
                Ok(_) => {
                    let mut tally = t.lock().unwrap();
                    tally.acked.push((key, Instant::now()));
                    tally.latencies.push(took);
                    false
                }
                Err(e) => {
                    let (code, severity, message) = describe(&e);
                    t.lock().unwrap().failures.push(Failure {
                        code,
                        severity,
                        message,
                        took,
                    });
                    true
                }
            };
            if failed {
                // A client that just saw its shard fail backs off a little, like a real one.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    Writer {
        shard,
        tally,
        client,
        task,
    }
}

/// Keys of `keys` that are not on `shard`, checked directly on the shard.
async fn missing_on_shard(info: &ClusterInfo, shard: u32, keys: &[i64]) -> Vec<i64> {
    let client = proxy::shard(info, shard).await;
    let rows = client
        .query(
            "SELECT k FROM unnest($1::bigint[]) AS k WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = k)",
            &[&keys],
        )
        .await
        .expect("look the keys up on the shard");
    rows.iter().map(|r| r.get(0)).collect()
}

/// Every prepared transaction left on any shard that answers.
async fn prepared_everywhere(info: &ClusterInfo) -> Vec<String> {
    let mut all = Vec::new();
    for id in info.shard_ids() {
        let Some(url) = info.shard_url(id) else {
            continue;
        };
        let Ok(client) = proxy::connect_url(&url).await else {
            continue;
        };
        if let Ok(rows) = client.query("SELECT gid FROM pg_prepared_xacts", &[]).await {
            all.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
    }
    all
}

fn p99(samples: &mut [Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_fails_only_its_own_clients_and_comes_back() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let info = &cluster.info;
    let running = start_proxy_with(info, fault_settings).await;
    let url = proxy::app_url(&running);
    let map = running.proxy.map.current();
    let victim = 1u32;
    let victim_name = format!("shard{victim}");

    // A block that wrote on two shards, one of them the victim, left open across the crash.
    let block = proxy::connect(&running).await;
    let (safe_key, lost_key) = (
        keys_on(&map, 0, 9_000_000).next().unwrap(),
        keys_on(&map, victim, 9_000_000).next().unwrap(),
    );
    block.batch_execute("BEGIN").await.unwrap();
    for key in [safe_key, lost_key] {
        block
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, '2pc')",
                &[&key],
            )
            .await
            .expect("insert inside the block");
    }

    // Two writers per shard.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for shard in info.shard_ids() {
        for w in 0..2i64 {
            let first = 1_000_000 * (i64::from(shard) * 2 + w + 1);
            writers.push(start_writer(&url, map.clone(), shard, first, stop.clone()).await);
        }
    }
    let acked = |writers: &[Writer], shard: u32| -> usize {
        writers
            .iter()
            .filter(|w| w.shard == shard)
            .map(|w| w.tally.lock().unwrap().acked.len())
            .sum()
    };
    wait_until("every writer to insert", Duration::from_secs(20), || {
        let ok = info.shard_ids().iter().all(|s| acked(&writers, *s) >= 20);
        async move { ok }
    })
    .await;

    // Kill the victim mid-load.
    let killed_at = Instant::now();
    cluster::stop_instance(&info.dir, &victim_name, StopMode::Immediate)
        .await
        .expect("kill the victim");
    let healthy_before: BTreeMap<u32, usize> = info
        .shard_ids()
        .into_iter()
        .filter(|s| *s != victim)
        .map(|s| (s, acked(&writers, s)))
        .collect();
    wait_until(
        "every victim writer to see an error",
        Duration::from_secs(10),
        || {
            let all = writers
                .iter()
                .filter(|w| w.shard == victim)
                .all(|w| !w.tally.lock().unwrap().failures.is_empty());
            async move { all }
        },
    )
    .await;

    // While it is down: a scatter and the two-shard block's COMMIT fail with a clear error.
    let other = proxy::connect(&running).await;
    let scatter = other
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect_err("a scatter over a dead shard fails");
    let (code, _, message) = describe(&scatter);
    assert!(is_connection_error(&code), "scatter: {code} {message}");
    assert!(message.contains(&format!("shard {victim}")), "{message}");
    let commit = block
        .batch_execute("COMMIT")
        .await
        .expect_err("a block on a dead shard cannot commit");
    let (code, _, message) = describe(&commit);
    assert!(is_connection_error(&code), "commit: {code} {message}");
    assert!(!block.is_closed(), "the block's client keeps its session");

    // The healthy shards keep going while the victim is down.
    wait_until(
        "healthy shards to make progress during the outage",
        Duration::from_secs(10),
        || {
            let moved = healthy_before
                .iter()
                .all(|(s, before)| acked(&writers, *s) >= before + 20);
            async move { moved }
        },
    )
    .await;

    // Back up: traffic to it recovers without restarting the proxy.
    cluster::start_instance(&info.dir, &victim_name)
        .await
        .expect("restart the victim");
    let restarted_at = Instant::now();
    wait_until(
        "every victim writer to insert again",
        Duration::from_secs(30),
        || {
            let all = writers.iter().filter(|w| w.shard == victim).all(|w| {
                w.tally
                    .lock()
                    .unwrap()
                    .acked
                    .iter()
                    .any(|(_, at)| *at > restarted_at)
            });
            async move { all }
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    for w in &mut writers {
        (&mut w.task).await.expect("writer task");
    }

    let mut healthy_latency = Vec::new();
    for w in &writers {
        let tally = w.tally.lock().unwrap();
        assert!(
            !w.client.is_closed(),
            "a writer of shard {} lost its session",
            w.shard
        );
        if w.shard != victim {
            assert!(
                tally.failures.is_empty(),
                "a writer of healthy shard {} saw errors: {:?}",
                w.shard,
                tally.failures
            );
            healthy_latency.extend(tally.latencies.iter().copied());
            continue;
        }
        for f in &tally.failures {
            assert!(
                is_connection_error(&f.code),
                "victim writer error is not a connection error: {f:?}"
            );
            assert_eq!(f.severity, "ERROR", "an ERROR, not a FATAL: {f:?}");
            assert!(
                f.message.contains(&format!("shard {victim}")),
                "the error names the shard: {f:?}"
            );
            assert!(
                f.took < Duration::from_millis(CONNECT_TIMEOUT_MS) + MARGIN,
                "the error came promptly: {f:?}"
            );
        }
    }
    let outage = restarted_at - killed_at;
    eprintln!(
        "kill: outage {outage:?}, healthy-shard insert p99 over the run {:?}",
        p99(&mut healthy_latency)
    );

    // No acknowledged insert is lost.
    for shard in info.shard_ids() {
        let keys: Vec<i64> = writers
            .iter()
            .filter(|w| w.shard == shard)
            .flat_map(|w| {
                let t = w.tally.lock().unwrap();
                t.acked.iter().map(|(k, _)| *k).collect::<Vec<_>>()
            })
            .collect();
        assert!(!keys.is_empty());
        let missing = missing_on_shard(info, shard, &keys).await;
        assert!(
            missing.is_empty(),
            "shard {shard} lost acknowledged keys: {missing:?}"
        );
    }

    // The failed block left nothing behind: no row, no prepared transaction once recovery ran.
    wait_until(
        "no prepared transaction on any shard",
        Duration::from_secs(15),
        || async { prepared_everywhere(info).await.is_empty() },
    )
    .await;
    assert!(missing_on_shard(info, 0, &[safe_key]).await == vec![safe_key]);
    assert!(missing_on_shard(info, victim, &[lost_key]).await == vec![lost_key]);
    // The block's client goes on.
    let n: i64 = block
        .query_one(
            "SELECT count(*) FROM users WHERE user_id = $1",
            &[&safe_key],
        )
        .await
        .expect("the block's session is usable")
        .get(0);
    assert_eq!(n, 0);

    terminated_connections_do_not_end_client_sessions(&running, info, &map).await;
    a_dead_login_shard_does_not_stop_others_preparing(&running, info, &map).await;
}

/// Statements any shard can answer (a Parse and Describe, `SELECT 1`) go to the shard a session
/// logged in through; once its monitor finds that shard down they go to another, so clients of
/// the other shards can still prepare.
async fn a_dead_login_shard_does_not_stop_others_preparing(
    running: &pgshard::server::RunningProxy,
    info: &ClusterInfo,
    map: &ShardMap,
) {
    // Sessions log in through the first shard that answers: shard 0 while it is up.
    let client = proxy::connect(running).await;
    let key = keys_on(map, 2, 7_000_000).next().unwrap();
    client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'on two')",
            &[&key],
        )
        .await
        .unwrap();
    cluster::stop_instance(&info.dir, "shard0", StopMode::Immediate)
        .await
        .expect("stop shard 0");
    wait_until(
        "a statement to prepare while the login shard is down",
        Duration::from_secs(15),
        || async {
            client
                .prepare("SELECT name FROM users WHERE user_id = $1")
                .await
                .is_ok()
        },
    )
    .await;
    let statement = client
        .prepare("SELECT name FROM users WHERE user_id = $1")
        .await
        .expect("prepare with shard 0 down");
    let name: String = client
        .query_one(&statement, &[&key])
        .await
        .expect("a key of shard 2")
        .get(0);
    assert_eq!(name, "on two");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    cluster::start_instance(&info.dir, "shard0")
        .await
        .expect("restart shard 0");
}

/// `pg_terminate_backend` on the proxy's server connections: idle pooled ones are not handed
/// out again, a statement running on one gets an ERROR (not a FATAL that would end the client's
/// session), and an open block on it can only roll back.
async fn terminated_connections_do_not_end_client_sessions(
    running: &pgshard::server::RunningProxy,
    info: &ClusterInfo,
    map: &ShardMap,
) {
    let shard = 0u32;
    let key = keys_on(map, shard, 8_000_000).next().unwrap();
    let client = proxy::connect(running).await;
    client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'x')",
            &[&key],
        )
        .await
        .unwrap();
    // Fill the pool with idle connections, then terminate them all.
    let mut others = Vec::new();
    for _ in 0..POOL_SIZE {
        others.push(proxy::connect(running).await);
    }
    let params: [&(dyn ToSql + Sync); 1] = [&key];
    let busy = others.iter().map(|c| {
        c.query_one(
            "SELECT user_id, pg_sleep(0.1) FROM users WHERE user_id = $1",
            &params,
        )
    });
    for r in futures_util::future::join_all(busy).await {
        r.expect("warm-up query");
    }
    let direct = proxy::shard(info, shard).await;
    // The proxy's pooled connections, and only those: other pgshard connections (2PC recovery,
    // monitors) may come and go meanwhile, so the wait is for these pids to be gone.
    let pids: Vec<i32> = direct
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = 'app' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let killed: i64 = direct
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM unnest($1::int4[]) AS pid",
            &[&pids],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "terminated the proxy's server connections");
    wait_until(
        "the terminated backends to exit",
        Duration::from_secs(20),
        || async {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                    &[&pids],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        },
    )
    .await;
    // More statements than the pool holds: none gets a dead connection.
    for i in 0..3 * POOL_SIZE {
        let c = &others[i % others.len()];
        c.query_one("SELECT name FROM users WHERE user_id = $1", &[&key])
            .await
            .unwrap_or_else(|e| panic!("statement {i} after the terminations: {e}"));
    }

    // A statement running when its server connection is terminated.
    let sleeper = tokio::spawn({
        let url = proxy::app_url(running);
        async move {
            let c = proxy::connect_url(&url).await.unwrap();
            let r = c
                .query_one(
                    "SELECT user_id, pg_sleep(30) FROM users WHERE user_id = $1",
                    &[&key],
                )
                .await;
            let after = c
                .query_one("SELECT name FROM users WHERE user_id = $1", &[&key])
                .await;
            (r.map(|_| ()), after.map(|_| ()), c.is_closed())
        }
    });
    wait_until("the sleep to start", Duration::from_secs(10), || async {
        let n: i64 = direct
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    })
    .await;
    let (during, after, closed) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the terminated statement returns")
        .unwrap();
    let err = during.expect_err("the terminated statement fails");
    let (code, severity, message) = describe(&err);
    assert_eq!(code, "57P01", "{message}");
    assert_eq!(severity, "ERROR", "{message}");
    assert!(message.contains(&format!("shard {shard}")), "{message}");
    after.expect("the session goes on after its server connection was terminated");
    assert!(!closed);

    // An open block whose server connection is terminated can only roll back.
    let key2 = keys_on(map, shard, 8_100_000).next().unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'x')",
            &[&key2],
        )
        .await
        .unwrap();
    let killed: i64 = direct
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE state = 'idle in transaction' AND datname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let err = client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'y')",
            &[&(key2 + 1)],
        )
        .await
        .expect_err("the block lost its connection");
    // The client may have learnt of the lost connection on the Close it pipelined after the
    // last statement (tokio-postgres ignores that answer): then the block is already aborted.
    let (code, severity, _) = describe(&err);
    assert!(
        (is_connection_error(&code) || code == "25P02") && severity == "ERROR",
        "{code} {severity}"
    );
    let err = client
        .query_one("SELECT 1", &[])
        .await
        .expect_err("the block is aborted");
    assert_eq!(describe(&err).0, "25P02");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(missing_on_shard(info, shard, &[key2]).await, vec![key2]);
    client
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&key])
        .await
        .expect("usable after the rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_cut_off_or_slowed_down_by_the_network() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;
    let cut = 2u32;
    let target = format!("127.0.0.1:{}", info.shard_ports()[cut as usize]);
    let relay = Relay::start(target.parse().unwrap()).await;
    let relay_addr = relay.addr;
    let running = start_proxy_with(info, |config| {
        fault_settings(config);
        proxy::route_shard_through(config, cut, relay_addr);
    })
    .await;
    let url = proxy::app_url(&running);
    let map = running.proxy.map.current();
    let key_of = |shard: u32| keys_on(&map, shard, 5_000_000).next().unwrap();
    let keys: Vec<(u32, i64)> = info.shard_ids().iter().map(|s| (*s, key_of(*s))).collect();
    let setup = proxy::connect(&running).await;
    for (_, key) in &keys {
        setup
            .execute("INSERT INTO users (user_id, name) VALUES ($1, 'n')", &[key])
            .await
            .unwrap();
    }
    let healthy_keys: Vec<i64> = keys
        .iter()
        .filter(|(s, _)| *s != cut)
        .map(|(_, k)| *k)
        .collect();
    let cut_key = key_of(cut);
    let lookup = "SELECT name FROM users WHERE user_id = $1";

    // Healthy-shard clients run throughout and record every error and latency.
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut readers = Vec::new();
    for i in 0..4usize {
        let client = proxy::connect_url(&url).await.unwrap();
        let (stop, samples, errors) = (stop.clone(), samples.clone(), errors.clone());
        let key = healthy_keys[i % healthy_keys.len()];
        readers.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Acquire) && Instant::now() < until {
                let started = Instant::now();
                match client.query_one(lookup, &[&key]).await {
                    Ok(_) => samples.lock().unwrap().push((started, started.elapsed())),
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }
    let since = |from: Instant| -> Vec<Duration> {
        samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, d)| *d)
            .collect()
    };
    let baseline_from = Instant::now();
    wait_until(
        "a baseline of healthy reads",
        Duration::from_secs(20),
        || {
            let n = since(baseline_from).len();
            async move { n >= 200 }
        },
    )
    .await;
    let mut baseline = since(baseline_from);

    // Black hole: the cut-off shard's statements end with a timeout, not a hang.
    relay.set(Fault::BlackHole);
    let victim = proxy::connect(&running).await;
    let started = Instant::now();
    let err = victim
        .query_one(lookup, &[&cut_key])
        .await
        .expect_err("a statement on a black-holed shard fails");
    let took = started.elapsed();
    let (code, severity, message) = describe(&err);
    assert_eq!(code, "57014", "{message}");
    assert_eq!(severity, "ERROR");
    assert!(
        took < Duration::from_millis(QUERY_TIMEOUT_MS) + CANCEL_GRACE + MARGIN,
        "took {took:?}"
    );
    // The session is fine: other shards answer on it.
    victim
        .query_one(lookup, &[&healthy_keys[0]])
        .await
        .expect("the session goes on");
    // A scatter touching the cut-off shard ends the same way.
    let started = Instant::now();
    let err = victim
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect_err("a scatter over a black-holed shard fails");
    // 57014 when a pooled connection took it, 08006 when a new one could not log in.
    let (code, _, message) = describe(&err);
    assert!(
        code == "57014" || is_connection_error(&code),
        "{code} {message}"
    );
    assert!(started.elapsed() < Duration::from_millis(QUERY_TIMEOUT_MS) + CANCEL_GRACE + MARGIN);
    // New server connections cannot log in through the black hole: connect_timeout_ms bounds them.
    let fresh: Vec<_> = (0..POOL_SIZE - 1)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = proxy::connect_url(&url)
                    .await
                    .expect("login via a healthy shard");
                let started = Instant::now();
                let r = c.query_one(lookup, &[&cut_key]).await;
                (r.map(|_| ()), started.elapsed())
            })
        })
        .collect();
    for f in fresh {
        let (r, took) = f.await.unwrap();
        let err = r.expect_err("no answer from a black-holed shard");
        let (code, _, message) = describe(&err);
        // The pool holds no connection to the shard (the stuck one was closed): each statement
        // tries a new one, and the login through the black hole gives up.
        assert!(is_connection_error(&code), "{code} {message}");
        assert!(message.contains(&format!("shard {cut}")), "{message}");
        assert!(
            took < Duration::from_millis(CONNECT_TIMEOUT_MS) + MARGIN,
            "took {took:?}: {message}"
        );
    }

    // Pass again: traffic recovers, and no pooled connection is left broken.
    relay.set(Fault::Pass);
    wait_until(
        "the cut-off shard to answer again",
        Duration::from_secs(20),
        || async { victim.query_one(lookup, &[&cut_key]).await.is_ok() },
    )
    .await;
    let clients: Vec<_> =
        futures_util::future::join_all((0..POOL_SIZE).map(|_| proxy::connect_url(&url)))
            .await
            .into_iter()
            .map(|c| c.unwrap())
            .collect();
    for round in 0..3 {
        let params: [&(dyn ToSql + Sync); 1] = [&cut_key];
        let all = clients.iter().map(|c| c.query_one(lookup, &params));
        for r in futures_util::future::join_all(all).await {
            r.unwrap_or_else(|e| panic!("round {round} after the black hole: {e}"));
        }
    }

    // Drop: connections reset, the error comes at once, and traffic recovers afterwards.
    relay.set(Fault::Drop);
    let started = Instant::now();
    let err = victim
        .query_one(lookup, &[&cut_key])
        .await
        .expect_err("a reset shard fails");
    let (code, _, message) = describe(&err);
    assert!(is_connection_error(&code), "{code} {message}");
    assert!(message.contains(&format!("shard {cut}")), "{message}");
    assert!(started.elapsed() < Duration::from_millis(CONNECT_TIMEOUT_MS) + MARGIN);
    relay.set(Fault::Pass);
    wait_until(
        "the reset shard to answer again",
        Duration::from_secs(20),
        || async { victim.query_one(lookup, &[&cut_key]).await.is_ok() },
    )
    .await;

    // Slow: healthy shards' statements finish while the slow shard's are still pending.
    relay.set(Fault::Delay(Duration::from_millis(400)));
    let slow_from = Instant::now();
    let slow_client = proxy::connect(&running).await;
    let slow_started = Instant::now();
    let slow = tokio::spawn(async move {
        let r = slow_client.query_one(lookup, &[&cut_key]).await;
        (r.map(|_| ()), Instant::now())
    });
    let (slow_result, slow_done) = slow.await.unwrap();
    slow_result.expect("a slow shard still answers");
    let slow_took = slow_done - slow_started;
    let during: Vec<Duration> = samples
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, d)| *at >= slow_started && *at + *d <= slow_done)
        .map(|(_, d)| *d)
        .collect();
    assert!(
        slow_took >= Duration::from_millis(800),
        "the relay delays both directions: {slow_took:?}"
    );
    assert!(
        during.len() >= 10,
        "healthy statements completed while the slow one was pending: {}",
        during.len()
    );
    wait_until(
        "healthy reads during the slowdown",
        Duration::from_secs(20),
        || {
            let n = since(slow_from).len();
            async move { n >= 200 }
        },
    )
    .await;
    let mut slowed = since(slow_from);
    relay.set(Fault::Pass);
    stop.store(true, Ordering::Release);
    for r in readers {
        r.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "healthy-shard clients saw errors: {errors:?}"
    );
    eprintln!(
        "slow shard (+400 ms per chunk): healthy p99 {:?} vs baseline p99 {:?}; slow shard statement {slow_took:?}",
        p99(&mut slowed),
        p99(&mut baseline)
    );
}
