//! Failover without errors: while a shard's primary is dead and its replica being promoted, the
//! proxy holds the shard's writes (`pool.failover_buffer_ms`) and runs them on the new primary.
//! Clients writing through a real promotion see no error for any statement they started after
//! the primary died; a statement that outlives the buffer fails with 08006.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::eventually_within;
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::backend::topology::ServerId;
use pgshard::cluster::{self, StopMode};
use pgshard::router::{ShardMap, Strategy};

const BUFFER_MS: u64 = 6_000;
const CLIENTS: usize = 3;

/// One write's start, end and outcome.
struct Done {
    started: Instant,
    error: Option<String>,
}

/// Keys of `shard`, from `start` on.
fn keys_on(map: &ShardMap, shard: u32, start: i64) -> impl Iterator<Item = i64> + '_ {
    (start..).filter(move |k| map.shard_for(*k) == shard)
}

/// Writes keys of shard 1 until `stop`, client `n` in the simple protocol when `n` is 0, else
/// with bound parameters (extended protocol); every write's outcome is kept.
fn writer(
    url: String,
    map: Arc<ShardMap>,
    n: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Done>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = proxy::connect_url(&url).await.expect("writer connects");
        let until = Instant::now() + Duration::from_secs(120);
        for key in keys_on(&map, 1, 10_000_000 * (n as i64 + 1)) {
            if stop.load(Ordering::Acquire) || Instant::now() > until {
                break;
            }
            let started = Instant::now();
            let result = if n == 0 {
                client
                    .batch_execute(&format!(
                        "INSERT INTO users (user_id, name) VALUES ({key}, 'simple')"
                    ))
                    .await
            } else {
                client
                    .execute(
                        "INSERT INTO users (user_id, name) VALUES ($1, 'extended')",
                        &[&key],
                    )
                    .await
                    .map(|_| ())
            };
            let error = result.err().map(|e| {
                format!(
                    "key {key}: {} ({:?})",
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string()),
                    e.code().map(|c| c.code().to_string())
                )
            });
            log.lock().unwrap().push(Done { started, error });
            if client.is_closed() {
                client = proxy::connect_url(&url).await.expect("writer reconnects");
            }
        }
    })
}

fn done_since(logs: &[Arc<Mutex<Vec<Done>>>], since: Instant) -> Vec<usize> {
    logs.iter()
        .map(|l| {
            l.lock()
                .unwrap()
                .iter()
                .filter(|d| d.started >= since && d.error.is_none())
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_promoted_replica_instead_of_failing() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 2;
        spec.replicas = 1;
        spec.strategy = Strategy::Hash;
    })
    .await;
    let info = &cluster.info;
    let running = start_proxy_with(info, |c| {
        c.replicas.monitor_interval_ms = 50;
        c.pool.connect_timeout_ms = 1_000;
        c.pool.checkout_timeout_ms = 2_000;
        c.pool.failover_buffer_ms = BUFFER_MS;
    })
    .await;
    let topology = running.proxy.topology.clone();
    let map = running.proxy.map.current();
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Vec<Done>>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let writers: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(n, log)| {
            writer(
                proxy::app_url(&running),
                map.clone(),
                n,
                stop.clone(),
                log.clone(),
            )
        })
        .collect();
    let begun = Instant::now();
    eventually_within(
        Duration::from_secs(30),
        "every writer wrote 10 rows",
        || {
            let ok = done_since(&logs, begun).iter().all(|&n| n >= 10);
            async move { ok }
        },
    )
    .await;

    // Shard 1's primary dies under the writers; the operator promotes its replica.
    cluster::stop_instance(&info.dir, "shard1", StopMode::Immediate)
        .await
        .expect("kill shard 1's primary");
    let died = Instant::now();
    cluster::promote(&info.dir, "shard1r1")
        .await
        .expect("promote shard1r1");
    let new_primary = ServerId { shard: 1, index: 1 };
    eventually_within(Duration::from_secs(10), "writes routed to shard1r1", || {
        let moved = topology.primary(1) == Some(new_primary);
        async move { moved }
    })
    .await;
    let switched = died.elapsed();
    assert!(
        switched < Duration::from_millis(BUFFER_MS),
        "the promotion must finish within the buffer for this test: took {switched:?}"
    );
    let after = Instant::now();
    eventually_within(
        Duration::from_secs(30),
        "every writer wrote 10 rows on the new primary",
        || {
            let ok = done_since(&logs, after).iter().all(|&n| n >= 10);
            async move { ok }
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    for w in writers {
        w.await.expect("writer finished");
    }

    // No statement that started after the primary died failed; some were held and resumed.
    let mut held_over = 0;
    for (n, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        let late: Vec<&String> = log
            .iter()
            .filter(|d| d.started >= died)
            .filter_map(|d| d.error.as_ref())
            .collect();
        assert!(
            late.is_empty(),
            "writer {n}: errors after the primary died: {late:?}"
        );
        held_over += log
            .iter()
            .filter(|d| d.started >= died && d.started < died + switched)
            .count();
        // Statements in flight when it died may fail, with a connection error.
        for e in log.iter().filter_map(|d| d.error.as_ref()) {
            assert!(
                e.contains("Some(\"08") || e.contains("57P"),
                "writer {n}: {e}"
            );
        }
    }
    let resumed = running.proxy.pools.buffered.resumed.load(Ordering::Relaxed);
    eprintln!(
        "failover buffer: promotion routed after {switched:?}; {held_over} writes started between the kill and the switch seen \
         by the test, {resumed} checkouts held and resumed"
    );
    assert!(resumed >= 1, "some writes waited for the new primary");

    // The new primary dies too and nobody promotes anything: a write waits the buffer, then
    // fails with 08006 naming it.
    cluster::stop_instance(&info.dir, "shard1r1", StopMode::Immediate)
        .await
        .expect("kill the new primary");
    let client = proxy::connect(&running).await;
    let key = keys_on(&map, 1, 90_000_000).next().expect("a key");
    let asked = Instant::now();
    let err = client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'too late')",
            &[&key],
        )
        .await
        .expect_err("no primary within the buffer");
    let waited = asked.elapsed();
    let db = err.as_db_error().expect("an error from the proxy");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    assert!(
        db.message().contains("failover_buffer_ms"),
        "{}",
        db.message()
    );
    assert!(
        waited >= Duration::from_millis(BUFFER_MS)
            && waited < Duration::from_millis(BUFFER_MS + 5_000),
        "held {waited:?}"
    );
    assert!(running.proxy.pools.buffered.expired.load(Ordering::Relaxed) >= 1);
    // A shard without the dead one: shard 0 writes on at once.
    let key0 = keys_on(&map, 0, 90_000_000).next().expect("a key");
    client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'other')",
            &[&key0],
        )
        .await
        .expect("shard 0 is unaffected");
    running.stop().await;
}
