//! The catalog survives its primary's loss: with a synchronous streaming replica listed in
//! `[catalog] url`, cross-shard transfers keep running through the proxy while the catalog
//! primary is killed and its replica promoted. Afterwards every transfer is all-or-nothing, each
//! acknowledged one applied exactly once, nothing stays prepared, and new transfers commit.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::eventually_within;
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::{self, ClusterInfo, StopMode, CATALOG_REPLICA};
use pgshard::config::ShardedTableConfig;
use pgshard::router::{ShardMap, Strategy};

const START_BALANCE: i64 = 1_000_000;
const WORKERS: usize = 4;

/// One worker's transfers: acknowledged ones, and failed ones (which may or may not have
/// committed, but never in half).
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Two keys on different shards, the `n`-th such pair.
fn pair(map: &ShardMap, n: usize) -> (i64, i64) {
    let a = 1_000 * (n as i64 + 1);
    let b = (a + 1..a + 1_000)
        .find(|k| map.shard_for(*k) != map.shard_for(a))
        .expect("some key lands on another shard");
    (a, b)
}

/// Whether a failed transfer's error is one the client can act on: the commit's outcome is
/// unknown (40003), the connection failed (08xxx), or it was rolled back (40000).
fn clear_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code == "40003" || code == "40000" || code.starts_with("08")
        }
        None => e.is_closed(),
    }
}

/// Moves 1 from `a` to `b`, again and again, until `stop`; simple protocol (one query string) or
/// extended (a transaction with bound parameters).
async fn transfers(
    url: String,
    (a, b): (i64, i64),
    extended: bool,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut client = proxy::connect_url(&url).await.expect("worker connects");
    while !stop.load(Ordering::Acquire) {
        let result = if extended {
            async {
                let tx = client.transaction().await?;
                tx.execute(
                    "UPDATE accounts SET balance = balance - 1 WHERE user_id = $1",
                    &[&a],
                )
                .await?;
                tx.execute(
                    "UPDATE accounts SET balance = balance + 1 WHERE user_id = $1",
                    &[&b],
                )
                .await?;
                tx.commit().await
            }
            .await
        } else {
            // One simple Query message per statement.
            async {
                client.batch_execute("BEGIN").await?;
                client
                    .batch_execute(&format!(
                        "UPDATE accounts SET balance = balance - 1 WHERE user_id = {a}"
                    ))
                    .await?;
                client
                    .batch_execute(&format!(
                        "UPDATE accounts SET balance = balance + 1 WHERE user_id = {b}"
                    ))
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await
        };
        match result {
            Ok(()) => {
                tally.acked.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::AcqRel);
                let clear = clear_error(&e);
                tally.errors.lock().unwrap().push(format!(
                    "{} ({:?}, clear: {clear})",
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string()),
                    e.code().map(|c| c.code().to_string())
                ));
                if client.is_closed() {
                    client = proxy::connect_url(&url).await.expect("worker reconnects");
                } else {
                    let _ = client.batch_execute("ROLLBACK").await;
                }
            }
        }
    }
}

async fn balance(info: &ClusterInfo, map: &ShardMap, key: i64) -> i64 {
    proxy::shard(info, map.shard_for(key))
        .await
        .query_one("SELECT balance FROM accounts WHERE user_id = $1", &[&key])
        .await
        .expect("read a balance directly")
        .get(0)
}

async fn prepared_anywhere(info: &ClusterInfo) -> Vec<String> {
    let mut all = Vec::new();
    for id in info.shard_ids() {
        let rows = proxy::shard(info, id)
            .await
            .query("SELECT gid FROM pg_prepared_xacts", &[])
            .await
            .expect("read pg_prepared_xacts");
        all.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    all
}

/// Polls until every worker has `more` acknowledged transfers beyond `base`; fails with every
/// worker's tally and errors after `limit`.
async fn wait_acked(tallies: &[Arc<Tally>], base: &[u64], more: u64, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let now = acked(tallies);
        if now.iter().zip(base).all(|(n, b)| *n >= b + more) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let errors: Vec<Vec<String>> = tallies
                .iter()
                .map(|t| t.errors.lock().unwrap().iter().take(5).cloned().collect())
                .collect();
            panic!("workers acknowledged {now:?} (from {base:?}, wanted {more} more); errors: {errors:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn acked(tallies: &[Arc<Tally>]) -> Vec<u64> {
    tallies
        .iter()
        .map(|t| t.acked.load(Ordering::Acquire))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_stay_atomic_when_the_catalog_primary_is_lost_and_its_replica_promoted() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 2;
        spec.strategy = Strategy::Hash;
        spec.catalog_replica = true;
    })
    .await;
    let info = &cluster.info;
    assert!(
        info.catalog_url().contains(','),
        "the proxy config lists both catalog servers: {}",
        info.catalog_url()
    );
    // The catalog commits synchronously to its replica: an acknowledged decision is on both.
    let catalog = cluster.connect("catalog").await;
    let sync: String = catalog
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .expect("read synchronous_standby_names")
        .get(0);
    assert!(
        sync.contains(CATALOG_REPLICA),
        "synchronous_standby_names = {sync}"
    );
    drop(catalog);

    for id in info.shard_ids() {
        proxy::shard(info, id)
            .await
            .batch_execute(
                "CREATE TABLE accounts (user_id bigint PRIMARY KEY, balance bigint NOT NULL)",
            )
            .await
            .expect("create accounts");
    }
    let running = start_proxy_with(info, |c| {
        c.sharded_tables.push(ShardedTableConfig {
            name: "accounts".into(),
            key: "user_id".into(),
            key_type: None,
        });
        c.transactions.in_doubt_grace_ms = 500;
        c.transactions.recovery_interval_ms = 200;
        c.pool.connect_timeout_ms = 1_000;
    })
    .await;
    let map = running.proxy.map.current();
    let pairs: Vec<(i64, i64)> = (0..WORKERS).map(|n| pair(&map, n)).collect();
    let setup = proxy::connect(&running).await;
    for &(a, b) in &pairs {
        for key in [a, b] {
            setup
                .execute(
                    "INSERT INTO accounts (user_id, balance) VALUES ($1, $2)",
                    &[&key, &START_BALANCE],
                )
                .await
                .expect("open an account");
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Tally>> = (0..WORKERS).map(|_| Arc::default()).collect();
    let workers: Vec<_> = pairs
        .iter()
        .zip(&tallies)
        .enumerate()
        .map(|(n, (&keys, tally))| {
            tokio::spawn(transfers(
                proxy::app_url(&running),
                keys,
                n % 2 == 1,
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();
    wait_acked(&tallies, &[0; WORKERS], 20, Duration::from_secs(30)).await;

    // The catalog primary dies mid-run; the operator promotes its replica.
    cluster::stop_instance(&info.dir, "catalog", StopMode::Immediate)
        .await
        .expect("kill the catalog primary");
    cluster::promote(&info.dir, CATALOG_REPLICA)
        .await
        .expect("promote the catalog replica");
    let at_promotion = acked(&tallies);

    // New transfers commit, in both protocols, on every worker.
    wait_acked(&tallies, &at_promotion, 20, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Release);
    for worker in workers {
        worker.await.expect("worker finished");
    }

    // Nothing stays prepared: recovery settles what the loss left in doubt, on the new catalog.
    eventually_within(
        Duration::from_secs(30),
        "no shard holds a prepared transaction",
        || {
            let info = info.clone();
            async move { prepared_anywhere(&info).await.is_empty() }
        },
    )
    .await;

    for ((n, &(a, b)), tally) in pairs.iter().enumerate().zip(&tallies) {
        let errors = tally.errors.lock().unwrap().clone();
        assert!(
            errors.iter().all(|e| e.ends_with("clear: true)")),
            "worker {n}: failures without a clear error: {errors:?}"
        );
        let (from, to) = (balance(info, &map, a).await, balance(info, &map, b).await);
        // All-or-nothing: whatever left `a` arrived at `b`.
        assert_eq!(from + to, 2 * START_BALANCE, "worker {n}: {from} + {to}");
        // Every acknowledged transfer applied exactly once; a failed one at most once.
        let moved = (START_BALANCE - from) as u64;
        let acked = tally.acked.load(Ordering::Acquire);
        let failed = tally.failed.load(Ordering::Acquire);
        eprintln!("worker {n}: {acked} acknowledged, {failed} failed, {moved} moved; {errors:?}");
        assert!(
            acked <= moved && moved <= acked + failed,
            "worker {n}: moved {moved}, acknowledged {acked}, failed {failed} ({errors:?})"
        );
    }

    // The proxy writes to the promoted catalog: a decision it logs now is there.
    let mut client = proxy::connect(&running).await;
    let tx = client.transaction().await.expect("BEGIN");
    for (key, delta) in [(pairs[0].0, -5i64), (pairs[0].1, 5)] {
        tx.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE user_id = $1",
            &[&key, &delta],
        )
        .await
        .expect("update after recovery");
    }
    tx.commit()
        .await
        .expect("a transfer after recovery commits");
    assert_eq!(
        balance(info, &map, pairs[0].0).await + balance(info, &map, pairs[0].1).await,
        2 * START_BALANCE
    );
    running.stop().await;
}
