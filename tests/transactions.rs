//! Transactions that span shards, against real Postgres: atomic commit and rollback, savepoints
//! replayed on shards that join late, two-phase commit under concurrent transfers and cross-shard
//! deadlocks, and recovery after the proxy is killed or a shard stops between PREPARE and COMMIT
//! PREPARED.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::eventually_within;
use common::proxy::{self, connect, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::{self, ClusterInfo, StopMode};
use pgshard::config::{Config, ShardedTableConfig};
use pgshard::router::{ShardMap, Strategy};

const SHARDS: u32 = 10;
const START_BALANCE: i64 = 1_000;

/// Adds the `accounts` table (sharded by user_id) to every shard and to the config.
async fn create_accounts(info: &ClusterInfo) {
    for id in info.shard_ids() {
        proxy::shard(info, id)
            .await
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS accounts (user_id bigint PRIMARY KEY, balance bigint NOT NULL)",
            )
            .await
            .expect("create accounts");
    }
}

fn with_accounts(config: &mut Config) {
    config.sharded_tables.push(ShardedTableConfig {
        name: "accounts".into(),
        key: "user_id".into(),
        key_type: None,
    });
    config.transactions.cross_shard_lock_timeout_ms = 300;
    config.transactions.in_doubt_grace_ms = 500;
    config.transactions.recovery_interval_ms = 200;
}

/// Two keys that live on different shards under `map`, starting the search at `from`.
fn keys_on_two_shards(map: &ShardMap, from: i64) -> (i64, i64) {
    let a = from;
    let b = (from + 1..from + 10_000)
        .find(|k| map.shard_for(*k) != map.shard_for(a))
        .expect("some key lands elsewhere");
    (a, b)
}

/// Every prepared transaction left on any shard.
async fn prepared_everywhere(info: &ClusterInfo) -> Vec<String> {
    let mut all = Vec::new();
    for id in info.shard_ids() {
        let Ok(url) = info.shard_url(id).ok_or(()) else {
            continue;
        };
        let Ok(client) = proxy::connect_url(&url).await else {
            continue;
        };
        for row in client
            .query("SELECT gid FROM pg_prepared_xacts", &[])
            .await
            .expect("read pg_prepared_xacts")
        {
            all.push(row.get::<_, String>(0));
        }
    }
    all
}

/// Balance of `user_id`, read straight from the shard the map names.
async fn balance_directly(info: &ClusterInfo, map: &ShardMap, user_id: i64) -> Option<i64> {
    let client = proxy::shard(info, map.shard_for(user_id)).await;
    client
        .query_opt(
            "SELECT balance FROM accounts WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .expect("read balance")
        .map(|r| r.get(0))
}

async fn total_directly(info: &ClusterInfo) -> i64 {
    let mut total = 0;
    for id in info.shard_ids() {
        let row = proxy::shard(info, id)
            .await
            .query_one(
                "SELECT coalesce(sum(balance), 0)::bigint FROM accounts",
                &[],
            )
            .await
            .expect("sum balances");
        total += row.get::<_, i64>(0);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_spanning_shards_commit_or_roll_back_everywhere() {
    let cluster = TestCluster::start(SHARDS, Strategy::Hash).await;
    let info = &cluster.info;
    create_accounts(info).await;
    let proxy = start_proxy_with(info, with_accounts).await;
    let map = proxy.proxy.map.current();
    let client = connect(&proxy).await;

    // COMMIT: both rows appear, each on its own shard, and nothing stays prepared.
    let (a, b) = keys_on_two_shards(&map, 1);
    query_strings_span_shards(info, &proxy, &client, &map).await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 10)",
            &[&a],
        )
        .await
        .unwrap();
    client
        .simple_query(&format!(
            "INSERT INTO accounts (user_id, balance) VALUES ({b}, 20)"
        ))
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(balance_directly(info, &map, a).await, Some(10));
    assert_eq!(balance_directly(info, &map, b).await, Some(20));
    assert!(prepared_everywhere(info).await.is_empty());

    // A block on one shard, then "INSERT for another shard; COMMIT" in one string: the INSERT
    // joins the block and COMMIT commits both shards (two-phase).
    let (e, f) = keys_on_two_shards(&map, 50);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 5)",
            &[&e],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO accounts (user_id, balance) VALUES ({f}, 6); COMMIT"
        ))
        .await
        .expect("COMMIT together with another shard's statement");
    assert_eq!(balance_directly(info, &map, e).await, Some(5));
    assert_eq!(balance_directly(info, &map, f).await, Some(6));
    assert!(prepared_everywhere(info).await.is_empty());

    // ROLLBACK: neither row.
    let (c, d) = keys_on_two_shards(&map, 100);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 1)",
            &[&c],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 1)",
            &[&d],
        )
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(balance_directly(info, &map, c).await, None);
    assert_eq!(balance_directly(info, &map, d).await, None);

    // An error on one shard: COMMIT turns into ROLLBACK on every shard, as in Postgres.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 1)",
            &[&c],
        )
        .await
        .unwrap();
    let dup = client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 1)",
            &[&a],
        )
        .await
        .expect_err("duplicate key");
    assert_eq!(dup.code().map(|c| c.code()), Some("23505"));
    let aborted = client
        .execute("SELECT 1 FROM accounts WHERE user_id = $1", &[&b])
        .await
        .expect_err("the block is aborted");
    assert_eq!(aborted.code().map(|c| c.code()), Some("25P02"));
    let tags = client.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(
            tags.last(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(0))
        ),
        "COMMIT of a failed block completes"
    );
    assert_eq!(balance_directly(info, &map, c).await, None);

    // Savepoints: a shard that joins after SAVEPOINT gets it too, so ROLLBACK TO undoes its work.
    let (e, f) = keys_on_two_shards(&map, 1_000);
    let g = (f + 1..f + 10_000)
        .find(|k| map.shard_for(*k) == map.shard_for(f))
        .unwrap();
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 5)",
            &[&e],
        )
        .await
        .unwrap();
    client.batch_execute("SAVEPOINT s1").await.unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 6)",
            &[&f],
        )
        .await
        .unwrap();
    let level: String = client
        .query_one(
            "SELECT current_setting('transaction_isolation') FROM accounts WHERE user_id = $1",
            &[&f],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        level, "repeatable read",
        "the late shard got BEGIN's options"
    );
    client
        .batch_execute("ROLLBACK TO SAVEPOINT s1")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (user_id, balance) VALUES ($1, 7)",
            &[&g],
        )
        .await
        .unwrap();
    client.batch_execute("RELEASE s1").await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(balance_directly(info, &map, e).await, Some(5));
    assert_eq!(balance_directly(info, &map, f).await, None);
    assert_eq!(balance_directly(info, &map, g).await, Some(7));

    // Extended protocol through a driver transaction.
    let (h, i) = keys_on_two_shards(&map, 5_000);
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO accounts (user_id, balance) VALUES ($1, 1)",
        &[&h],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO accounts (user_id, balance) VALUES ($1, 2)",
        &[&i],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balance_directly(info, &map, h).await, Some(1));
    assert_eq!(balance_directly(info, &map, i).await, Some(2));
    assert!(prepared_everywhere(info).await.is_empty());
    proxy.stop().await;
}

/// The SQLSTATE of a failed request.
fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Simple Query strings of several statements that reach several shards (psql -c, scripts):
/// their statements run in turn as one transaction, the client's block or an implicit one that
/// commits with two phases at the end; an error skips the rest and commits nothing.
async fn query_strings_span_shards(
    info: &ClusterInfo,
    proxy: &pgshard::server::RunningProxy,
    client: &tokio_postgres::Client,
    map: &ShardMap,
) {
    let (a, b) = keys_on_two_shards(map, 20_000);
    let insert = format!(
        "INSERT INTO accounts (user_id, balance) VALUES ({a}, 10); INSERT INTO accounts (user_id, balance) VALUES ({b}, 20)"
    );
    client
        .batch_execute(&insert)
        .await
        .expect("two shards, no BEGIN");
    assert_eq!(balance_directly(info, map, a).await, Some(10));
    assert_eq!(balance_directly(info, map, b).await, Some(20));
    let update = |x: i64, y: i64| {
        format!(
            "UPDATE accounts SET balance = balance + {x} WHERE user_id = {a}; UPDATE accounts SET balance = balance + {y} WHERE user_id = {b}"
        )
    };
    let messages = client
        .simple_query(&format!("BEGIN; {}; COMMIT", update(1, 2)))
        .await
        .expect("BEGIN; two shards; COMMIT");
    let counts: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(counts, [0, 1, 1, 0], "one CommandComplete per statement");
    assert_eq!(balance_directly(info, map, a).await, Some(11));
    assert_eq!(balance_directly(info, map, b).await, Some(22));
    assert!(prepared_everywhere(info).await.is_empty());

    // A failure in the middle: nothing of the string is committed, on either shard.
    let failing = format!(
        "UPDATE accounts SET balance = 0 WHERE user_id = {a}; SELECT 1/0 FROM accounts WHERE user_id = {b}; UPDATE accounts SET balance = 0 WHERE user_id = {b}"
    );
    let err = client.batch_execute(&failing).await.expect_err("1/0");
    assert_eq!(code(&err), Some("22012"), "{err}");
    let failing = format!(
        "{}; INSERT INTO accounts (user_id, balance) VALUES ({a}, 0)",
        update(100, 100)
    );
    let err = client.batch_execute(&failing).await.expect_err("duplicate");
    assert_eq!(code(&err), Some("23505"), "{err}");
    assert_eq!(balance_directly(info, map, a).await, Some(11));
    assert_eq!(balance_directly(info, map, b).await, Some(22));
    let ok: String = client
        .query_one("SELECT 'usable'::text", &[])
        .await
        .expect("no block is left open")
        .get(0);
    assert_eq!(ok, "usable");

    // Inside BEGIN the error leaves the block aborted, as in Postgres, until ROLLBACK.
    let err = client
        .batch_execute(&format!(
            "BEGIN; {}; SELECT 1/0 FROM accounts WHERE user_id = {a}; COMMIT",
            update(100, 100)
        ))
        .await
        .expect_err("1/0 in a block");
    assert_eq!(code(&err), Some("22012"), "{err}");
    let aborted = client.batch_execute("SELECT 1").await.expect_err("aborted");
    assert_eq!(code(&aborted), Some("25P02"), "{aborted}");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(balance_directly(info, map, a).await, Some(11));
    assert_eq!(balance_directly(info, map, b).await, Some(22));

    // SET LOCAL in an implicit multi-statement transaction holds on every shard it reaches,
    // and only there.
    let rows = client
        .simple_query(&format!(
            "SET LOCAL statement_timeout = '7s'; SELECT current_setting('statement_timeout') FROM accounts WHERE user_id = {a}; SELECT current_setting('statement_timeout') FROM accounts WHERE user_id = {b}"
        ))
        .await
        .expect("SET LOCAL, then two shards");
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["7s", "7s"]);
    let after: String = client
        .query_one(
            "SELECT current_setting('statement_timeout') FROM accounts WHERE user_id = $1",
            &[&b],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, "0", "SET LOCAL ended with the string's transaction");

    // psql -c sends the whole string as one Query.
    let script = format!("BEGIN; {}; COMMIT", update(1000, 2000));
    let (ok, out, err) = common::process::run_output(
        tokio::process::Command::new("psql")
            .arg(proxy::app_url(proxy))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(&script),
    )
    .await;
    assert!(ok, "psql -c: {err}\n{out}");
    assert_eq!(balance_directly(info, map, a).await, Some(1011));
    assert_eq!(balance_directly(info, map, b).await, Some(2022));
    let script = format!(
        "{}; SELECT 1/0 FROM accounts WHERE user_id = {b}",
        update(1, 1)
    );
    let (ok, _, err) = common::process::run_output(
        tokio::process::Command::new("psql")
            .arg(proxy::app_url(proxy))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(&script),
    )
    .await;
    assert!(!ok && err.contains("division by zero"), "{err}");
    assert_eq!(balance_directly(info, map, a).await, Some(1011));
    assert_eq!(balance_directly(info, map, b).await, Some(2022));
    assert!(prepared_everywhere(info).await.is_empty());
}

/// One transfer: moves `amount` from `from` to `to` in one block. Errors (deadlock timeouts,
/// serialization) roll back and report false.
async fn transfer(client: &tokio_postgres::Client, from: i64, to: i64, amount: i64) -> bool {
    let steps = async {
        client.batch_execute("BEGIN").await?;
        client
            .execute(
                "UPDATE accounts SET balance = balance - $2 WHERE user_id = $1",
                &[&from, &amount],
            )
            .await?;
        client
            .execute(
                "UPDATE accounts SET balance = balance + $2 WHERE user_id = $1",
                &[&to, &amount],
            )
            .await?;
        client.batch_execute("COMMIT").await
    };
    match steps.await {
        Ok(()) => true,
        Err(e) => {
            let code = e.code().map(|c| c.code().to_string());
            assert!(
                matches!(
                    code.as_deref(),
                    Some("55P03") | Some("40P01") | Some("40001")
                ),
                "a transfer failed with an unexpected error: {e:?}"
            );
            client.batch_execute("ROLLBACK").await.expect("rollback");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_total_and_deadlocks_end_in_errors() {
    let cluster = TestCluster::start(SHARDS, Strategy::Hash).await;
    let info = &cluster.info;
    create_accounts(info).await;
    let proxy = start_proxy_with(info, with_accounts).await;
    let map = proxy.proxy.map.current();
    let setup = connect(&proxy).await;
    let users: Vec<i64> = (1..=20).collect();
    for u in &users {
        setup
            .execute(
                "INSERT INTO accounts (user_id, balance) VALUES ($1, $2)",
                &[u, &START_BALANCE],
            )
            .await
            .unwrap();
    }
    let expected_total = START_BALANCE * users.len() as i64;

    // A deliberate cross-shard deadlock: A→B and B→A at once, each holding its first row.
    let (a, b) = keys_on_two_shards(&map, 1);
    let c1 = connect(&proxy).await;
    let c2 = connect(&proxy).await;
    c1.batch_execute("BEGIN").await.unwrap();
    c2.batch_execute("BEGIN").await.unwrap();
    c1.execute(
        "UPDATE accounts SET balance = balance - 1 WHERE user_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    c2.execute(
        "UPDATE accounts SET balance = balance - 1 WHERE user_id = $1",
        &[&b],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let pb: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&b];
    let pa: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&a];
    let (r1, r2) = tokio::join!(
        c1.execute(
            "UPDATE accounts SET balance = balance + 1 WHERE user_id = $1",
            &pb
        ),
        c2.execute(
            "UPDATE accounts SET balance = balance + 1 WHERE user_id = $1",
            &pa
        ),
    );
    let waited = started.elapsed();
    assert!(
        r1.is_err() || r2.is_err(),
        "a cross-shard deadlock must end in an error"
    );
    for r in [&r1, &r2] {
        if let Err(e) = r {
            // The lock timeout pgshard set breaks it; the client sees what it must do about
            // it: a deadlock, to retry.
            assert_eq!(e.code().map(|c| c.code()), Some("40P01"), "{e:?}");
            let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
            assert!(detail.contains("cross_shard_lock_timeout_ms"), "{e:?}");
        }
    }
    assert!(waited < Duration::from_secs(10), "deadlock took {waited:?}");
    c1.batch_execute("ROLLBACK").await.unwrap();
    c2.batch_execute("ROLLBACK").await.unwrap();

    // Concurrent transfers in both directions between users on different shards.
    let mut tasks = Vec::new();
    for worker in 0..6u64 {
        let client = connect(&proxy).await;
        let users = users.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            for i in 0..40u64 {
                let x = users[((worker * 7 + i * 3) % users.len() as u64) as usize];
                let y = users[((worker * 11 + i * 5 + 1) % users.len() as u64) as usize];
                if x == y {
                    continue;
                }
                let (from, to) = if (worker + i) % 2 == 0 {
                    (x, y)
                } else {
                    (y, x)
                };
                if transfer(&client, from, to, 1 + (i as i64 % 9)).await {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("no client hangs")
            .expect("worker");
    }
    assert!(committed > 0, "some transfers commit");
    assert_eq!(total_directly(info).await, expected_total);
    let mut through_proxy = 0;
    for u in &users {
        let balance: i64 = setup
            .query_one("SELECT balance FROM accounts WHERE user_id = $1", &[u])
            .await
            .unwrap()
            .get(0);
        through_proxy += balance;
    }
    assert_eq!(through_proxy, expected_total);
    assert!(prepared_everywhere(info).await.is_empty());
    proxy.stop().await;
}

/// A pgshard process (so the test can kill -9 it).
struct ProxyProcess {
    child: Child,
    port: u16,
}

impl ProxyProcess {
    async fn start(config_path: &std::path::Path, port: u16) -> ProxyProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_pgshard"))
            .args(["serve", "--config"])
            .arg(config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pgshard");
        let url = format!("postgres://app:app@127.0.0.1:{port}/app");
        eventually_within(Duration::from_secs(30), "pgshard accepts clients", || {
            let url = url.clone();
            async move { proxy::connect_url(&url).await.is_ok() }
        })
        .await;
        ProxyProcess { child, port }
    }

    async fn client(&self) -> tokio_postgres::Client {
        proxy::connect_url(&format!("postgres://app:app@127.0.0.1:{}/app", self.port))
            .await
            .expect("connect to pgshard")
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL pgshard");
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Blocks the decision log: the coordinator's INSERT waits until the returned client rolls back.
async fn lock_decision_log(info: &ClusterInfo) -> tokio_postgres::Client {
    let catalog = proxy::catalog(info).await;
    catalog
        .batch_execute("BEGIN; LOCK TABLE txn_decisions IN EXCLUSIVE MODE")
        .await
        .expect("lock the decision log");
    catalog
}

/// Ends every other client session on the catalog and waits until they are gone: a decision a
/// killed proxy sent but the locked log held back dies with its session.
async fn end_other_catalog_sessions(catalog: &tokio_postgres::Client) {
    catalog
        .batch_execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'",
        )
        .await
        .expect("end the killed proxy's catalog sessions");
}

/// Starts a transfer of 100 from `a` to `b` and returns once both shards hold it prepared
/// (the coordinator is then stuck on the locked decision log).
async fn transfer_until_prepared(
    info: &ClusterInfo,
    client: tokio_postgres::Client,
    a: i64,
    b: i64,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let commit = tokio::spawn(async move {
        client.batch_execute("BEGIN").await?;
        client
            .execute(
                "UPDATE accounts SET balance = balance - 100 WHERE user_id = $1",
                &[&a],
            )
            .await?;
        client
            .execute(
                "UPDATE accounts SET balance = balance + 100 WHERE user_id = $1",
                &[&b],
            )
            .await?;
        client.batch_execute("COMMIT").await
    });
    eventually_within(Duration::from_secs(20), "both shards prepared", || async {
        prepared_everywhere(info).await.len() == 2
    })
    .await;
    commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_transactions_are_settled_after_a_crash_or_a_shard_outage() {
    let cluster = TestCluster::start(SHARDS, Strategy::Hash).await;
    let info = &cluster.info;
    create_accounts(info).await;
    let mut config = Config::load(&info.config_path).unwrap();
    with_accounts(&mut config);
    let port = free_port();
    config.proxy.listen = format!("127.0.0.1:{port}");
    let config_path = info.dir.join("pgshard-2pc.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let map = {
        let catalog = proxy::catalog(info).await;
        pgshard::catalog::load_map(&catalog).await.unwrap().unwrap()
    };
    let (a, b) = keys_on_two_shards(&map, 1);
    let running = ProxyProcess::start(&config_path, port).await;
    let setup = running.client().await;
    for u in [a, b] {
        setup
            .execute(
                "INSERT INTO accounts (user_id, balance) VALUES ($1, $2)",
                &[&u, &START_BALANCE],
            )
            .await
            .unwrap();
    }

    // 1. The proxy dies after PREPARE, before any decision: recovery rolls both shards back.
    //    Its decision INSERT may already wait on the locked log; that catalog session is ended
    //    with it, so no decision lands once the lock is gone.
    let lock = lock_decision_log(info).await;
    let pending = transfer_until_prepared(info, running.client().await, a, b).await;
    running.kill();
    assert!(pending.await.unwrap().is_err(), "the client lost its proxy");
    end_other_catalog_sessions(&lock).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    let running = ProxyProcess::start(&config_path, port).await;
    eventually_within(
        Duration::from_secs(20),
        "recovery settles the in-doubt transaction",
        || async { prepared_everywhere(info).await.is_empty() },
    )
    .await;
    assert_eq!(balance_directly(info, &map, a).await, Some(START_BALANCE));
    assert_eq!(balance_directly(info, &map, b).await, Some(START_BALANCE));

    // 2. One shard stops after PREPARE, and the proxy is killed while it retries COMMIT
    //    PREPARED there: the client got COMMIT, and after the shard and a new proxy come back
    //    the transfer is on both shards.
    let lock = lock_decision_log(info).await;
    let pending = transfer_until_prepared(info, running.client().await, a, b).await;
    let b_name = format!("shard{}", map.shard_for(b));
    cluster::stop_instance(&info.dir, &b_name, StopMode::Immediate)
        .await
        .expect("stop shard");
    lock.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("COMMIT returns once the decision is logged")
        .unwrap()
        .expect("the client is told COMMIT");
    assert_eq!(
        balance_directly(info, &map, a).await,
        Some(START_BALANCE - 100)
    );
    running.kill();
    cluster::start_instance(&info.dir, &b_name)
        .await
        .expect("start shard");
    let _running = ProxyProcess::start(&config_path, port).await;
    eventually_within(
        Duration::from_secs(20),
        "the prepared half is committed",
        || async { prepared_everywhere(info).await.is_empty() },
    )
    .await;
    assert_eq!(
        balance_directly(info, &map, b).await,
        Some(START_BALANCE + 100)
    );
    assert_eq!(total_directly(info).await, 2 * START_BALANCE);
    let gids: BTreeSet<String> = proxy::catalog(info)
        .await
        .query(
            "SELECT gid FROM txn_decisions WHERE decision = 'commit'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        gids.len() <= 1,
        "decisions are forgotten or kept for one transaction: {gids:?}"
    );
}
