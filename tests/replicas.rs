//! Reads over real streaming replicas with a real replay delay: read-your-writes in each mode
//! (`off` must show stale reads, so the test can fail; `pin` and `lsn` must show none), the causal
//! token carried to a second connection and to a read pipelined behind the write, the position
//! learned on the committing connection in the same write (every way of committing), and reads
//! that keep working while a replica stops.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{app_url, connect, connect_url, start_proxy_with};
use common::TestCluster;
use pgshard::backend::topology::{Role, ServerId};
use pgshard::cluster::{self, ClusterInfo, StopMode};
use pgshard::config::{Config, ReadFrom, ReadYourWrites};
use pgshard::server::RunningProxy;
use pgshard::session::causal_token::CausalToken;

const CLIENTS: i64 = 20;
const PAIRS_PER_CLIENT: i64 = 100;

fn replicas_mode(mode: ReadYourWrites) -> impl FnOnce(&mut Config) {
    replicas_mode_waiting(mode, 3_000)
}

/// `replicas_mode` with reads in `lsn` mode waiting up to `wait_ms` for their replica.
fn replicas_mode_waiting(mode: ReadYourWrites, wait_ms: u64) -> impl FnOnce(&mut Config) {
    move |config| {
        config.replicas.read_from = ReadFrom::Replicas;
        config.replicas.read_your_writes = mode;
        config.replicas.monitor_interval_ms = 20;
        config.replicas.lsn_wait_timeout_ms = wait_ms;
        config.replicas.pin_window_ms = 2_000;
        config.pool.size = 30;
    }
}

/// Reads the proxy sent to replicas so far.
fn replica_reads(proxy: &RunningProxy) -> u64 {
    let topology = &proxy.proxy.topology;
    let replicas: Vec<ServerId> = topology
        .all()
        .iter()
        .filter(|s| s.role == Role::Replica)
        .map(|s| s.id)
        .collect();
    let metrics = proxy.proxy.replica_metrics.snapshot(topology);
    metrics
        .reads
        .iter()
        .filter(|(id, _)| replicas.contains(id))
        .map(|(_, n)| n)
        .sum()
}

/// A read that takes row locks never goes to a replica (a standby refuses it with 25006):
/// keyed and keyless, in both protocols, the replicas serve none of them, while the same reads
/// without the lock go to replicas (so the check can fail).
async fn locking_reads_stay_on_primaries(proxy: &RunningProxy) {
    let client = connect(proxy).await;
    let locking = [
        "SELECT name FROM users WHERE user_id = 19999 FOR UPDATE",
        "SELECT name FROM users WHERE name = 'nobody' FOR SHARE SKIP LOCKED",
    ];
    let before = replica_reads(proxy);
    for sql in locking {
        client
            .simple_query(sql)
            .await
            .expect("locking read, simple");
        client
            .query(sql, &[])
            .await
            .expect("locking read, extended");
    }
    assert_eq!(
        replica_reads(proxy),
        before,
        "a locking read went to a replica"
    );
    for sql in locking {
        let plain = sql.split(" FOR ").next().expect("the read");
        client.query(plain, &[]).await.expect("plain read");
    }
    assert!(
        replica_reads(proxy) > before,
        "plain reads stayed on primaries"
    );
}

/// Waits until the monitors have seen a readable replica of every shard.
async fn replicas_known(proxy: &RunningProxy) {
    let topology = &proxy.proxy.topology;
    let shards: Vec<u32> = proxy.proxy.config.shards.iter().map(|s| s.id).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shards
        .iter()
        .all(|s| !topology.readable_replicas(*s, 0, 0, None).is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "monitors never reported the replicas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What write-then-read pairs saw.
#[derive(Debug, Default)]
struct Tally {
    pairs: u64,
    stale: u64,
    on_replica: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.pairs += other.pairs;
        self.stale += other.stale;
        self.on_replica += other.on_replica;
    }
    fn replica_share(&self) -> f64 {
        self.on_replica as f64 / self.pairs.max(1) as f64
    }
}

/// How a client reads back what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadBack {
    /// On the same connection, once the write was answered.
    After,
    /// On the same connection, pipelined behind the write (tokio-postgres sends both before
    /// reading either answer: two Syncs in one go).
    Pipelined,
    /// Through a second connection that adopted the writer's causal token.
    Second,
}

/// Each client updates its own row and reads it back at once (see `ReadBack`).
async fn write_then_read(proxy: &RunningProxy, how: ReadBack, pairs: i64) -> Tally {
    let second = how == ReadBack::Second;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let writer = connect(proxy).await;
        let reader = if second {
            Some(connect(proxy).await)
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let key = 10_000 + c;
            writer
                .execute(
                    "INSERT INTO users (user_id, name) VALUES ($1, 'start') ON CONFLICT (user_id) DO NOTHING",
                    &[&key],
                )
                .await
                .expect("seed row");
            let mut tally = Tally::default();
            for i in 0..pairs {
                let value = format!("{c}-{i}-{how:?}");
                if how == ReadBack::Pipelined {
                    let (wrote, row) = futures_util::future::join(
                        writer.execute(
                            "UPDATE users SET name = $2 WHERE user_id = $1",
                            &[&key, &value],
                        ),
                        writer.query_opt(
                            "SELECT name, pg_is_in_recovery() FROM users WHERE user_id = $1",
                            &[&key],
                        ),
                    )
                    .await;
                    wrote.expect("pipelined write");
                    let (name, replica): (String, bool) = match row.expect("pipelined read") {
                        Some(row) => (row.get(0), row.get(1)),
                        None => (String::new(), true),
                    };
                    tally.pairs += 1;
                    tally.stale += u64::from(name != value);
                    tally.on_replica += u64::from(replica);
                    continue;
                }
                writer
                    .execute(
                        "UPDATE users SET name = $2 WHERE user_id = $1",
                        &[&key, &value],
                    )
                    .await
                    .expect("write");
                let reader = match &reader {
                    Some(r) => {
                        let token = match writer
                            .simple_query("SHOW pgshard.causal_token")
                            .await
                            .expect("show token")
                            .into_iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(row) => {
                                    row.get(0).map(str::to_string)
                                }
                                _ => None,
                            }) {
                            Some(t) => t,
                            None => panic!("SHOW pgshard.causal_token returned no row"),
                        };
                        r.batch_execute(&format!("SET pgshard.causal_token = '{token}'"))
                            .await
                            .expect("adopt token");
                        r
                    }
                    None => &writer,
                };
                // A replica that has not replayed the seeding INSERT yet has no row at all.
                let row = reader
                    .query_opt(
                        "SELECT name, pg_is_in_recovery() FROM users WHERE user_id = $1",
                        &[&key],
                    )
                    .await
                    .expect("read");
                let (name, replica): (String, bool) = match row {
                    Some(row) => (row.get(0), row.get(1)),
                    None => (String::new(), true),
                };
                tally.pairs += 1;
                tally.stale += u64::from(name != value);
                tally.on_replica += u64::from(replica);
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.add(&t.await.expect("client task"));
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_holds_in_pin_and_lsn_modes_and_not_in_off() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 3;
        spec.replicas = 1;
        spec.apply_delay_ms = Some(100);
    })
    .await;
    // The last run: lsn without waiting (the default), where a read whose replica is behind goes
    // to the primary at once.
    for (mode, wait_ms) in [
        (ReadYourWrites::Off, 3_000),
        (ReadYourWrites::Pin, 3_000),
        (ReadYourWrites::Lsn, 3_000),
        (ReadYourWrites::Lsn, 0),
    ] {
        let proxy = start_proxy_with(&cluster.info, replicas_mode_waiting(mode, wait_ms)).await;
        replicas_known(&proxy).await;
        let started = Instant::now();
        let same = write_then_read(&proxy, ReadBack::After, PAIRS_PER_CLIENT).await;
        let elapsed = started.elapsed();
        eprintln!(
            "{mode:?} (wait {wait_ms} ms): {} pairs on one connection in {elapsed:?}: {} stale, {:.0}% of reads on replicas",
            same.pairs,
            same.stale,
            100.0 * same.replica_share()
        );
        assert_eq!(same.pairs, (CLIENTS * PAIRS_PER_CLIENT) as u64);
        match mode {
            ReadYourWrites::Off => {
                assert!(same.stale > 0, "with no promise, reads right after writes must show stale data on a 100 ms delayed replica");
            }
            ReadYourWrites::Pin => {
                assert_eq!(same.stale, 0, "pin mode read stale data");
            }
            ReadYourWrites::Lsn if wait_ms > 0 => {
                assert_eq!(same.stale, 0, "lsn mode read stale data");
                assert!(
                    same.replica_share() > 0.5,
                    "lsn mode should still read mostly from replicas, got {:.0}%",
                    100.0 * same.replica_share()
                );
            }
            ReadYourWrites::Lsn => {
                assert_eq!(same.stale, 0, "lsn mode without waiting read stale data");
                assert!(
                    same.replica_share() < 0.5,
                    "a replica 100 ms behind must not serve reads right after writes without a wait, got {:.0}%",
                    100.0 * same.replica_share()
                );
            }
        }
        if mode != ReadYourWrites::Pin {
            let other = write_then_read(&proxy, ReadBack::Second, PAIRS_PER_CLIENT / 4).await;
            eprintln!(
                "{mode:?}: {} pairs through a second connection with the token: {} stale, {:.0}% on replicas",
                other.pairs,
                other.stale,
                100.0 * other.replica_share()
            );
            if mode == ReadYourWrites::Lsn {
                assert_eq!(other.stale, 0, "the token did not carry the write");
            } else {
                assert!(
                    other.stale > 0,
                    "off mode must show stale reads on a second connection"
                );
            }
        }
        if mode == ReadYourWrites::Lsn && wait_ms > 0 {
            let piped = write_then_read(&proxy, ReadBack::Pipelined, PAIRS_PER_CLIENT / 4).await;
            eprintln!(
                "{mode:?}: {} pairs with the read pipelined behind the write: {} stale, {:.0}% on replicas",
                piped.pairs,
                piped.stale,
                100.0 * piped.replica_share()
            );
            assert_eq!(
                piped.stale, 0,
                "a read pipelined behind a write read stale data"
            );
            positions_ride_on_the_commit(&proxy, &cluster.info).await;
        }
        proxy.stop().await;
    }
}

/// The session's causal token, as `SHOW pgshard.causal_token` reports it.
async fn token_of(client: &tokio_postgres::Client) -> CausalToken {
    let text = client
        .simple_query("SHOW pgshard.causal_token")
        .await
        .expect("show token")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("SHOW pgshard.causal_token returned no row"));
    CausalToken::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// In lsn mode, each way of committing learns the primary's position on the very connection that
/// committed, in the same write: afterwards the token covers every written shard, and on each
/// written shard's primary every server connection the session used (found by its
/// application_name) ran the position question last. Asking on another connection, or after the
/// commit's answer on the same one, leaves a write or a COMMIT as some connection's last statement.
async fn positions_ride_on_the_commit(proxy: &RunningProxy, info: &ClusterInfo) {
    let app = "ryw_ride";
    let client = connect_url(&format!("{}&application_name={app}", app_url(proxy)))
        .await
        .expect("connect with an application_name");
    let map = proxy.proxy.map.current();
    let mut keys: Vec<(u32, i64)> = Vec::new();
    for key in 30_000i64.. {
        let shard = map.shard_for(key);
        if !keys.iter().any(|(s, _)| *s == shard) {
            keys.push((shard, key));
        }
        if keys.len() == 2 {
            break;
        }
    }
    let [(s0, k0), (s1, k1)] = keys[..] else {
        panic!("two shards expected")
    };
    for (_, key) in &keys {
        client
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, 'start') ON CONFLICT (user_id) DO NOTHING",
                &[key],
            )
            .await
            .expect("seed row");
    }
    let update = "UPDATE users SET name = name || '.' WHERE user_id = $1";
    type Commit<'a> = (&'a str, Vec<u32>);
    let ways: Vec<Commit> = vec![
        ("simple autocommit", vec![s0]),
        ("extended autocommit", vec![s1]),
        ("extended pipeline of two writes", vec![s0, s1]),
        ("block on one shard", vec![s0]),
        ("block on two shards (two-phase)", vec![s0, s1]),
        ("one statement on two shards", vec![s0, s1]),
    ];
    for (way, shards) in ways {
        let before = token_of(&client).await;
        match way {
            "simple autocommit" => {
                client
                    .simple_query(&format!(
                        "UPDATE users SET name = name || '.' WHERE user_id = {k0}"
                    ))
                    .await
                    .expect("simple write");
            }
            "extended autocommit" => {
                client.execute(update, &[&k1]).await.expect("write");
            }
            "extended pipeline of two writes" => {
                let (a, b) = futures_util::future::join(
                    client.execute(update, &[&k0]),
                    client.execute(update, &[&k1]),
                )
                .await;
                a.expect("pipelined write");
                b.expect("pipelined write");
            }
            "block on one shard" => {
                client.batch_execute("BEGIN").await.expect("begin");
                client.execute(update, &[&k0]).await.expect("write");
                client.batch_execute("COMMIT").await.expect("commit");
            }
            "block on two shards (two-phase)" => {
                client.batch_execute("BEGIN").await.expect("begin");
                client.execute(update, &[&k0]).await.expect("write");
                client.execute(update, &[&k1]).await.expect("write");
                client.batch_execute("COMMIT").await.expect("commit");
            }
            _ => {
                client
                    .execute(
                        "UPDATE users SET name = name || '.' WHERE user_id IN ($1, $2)",
                        &[&k0, &k1],
                    )
                    .await
                    .expect("write on two shards");
            }
        }
        let after = token_of(&client).await;
        for &shard in &shards {
            let was = before.shards.get(&shard).map(|p| p.lsn);
            let now = after.shards.get(&shard).map(|p| p.lsn);
            assert!(
                now.is_some() && now > was,
                "{way}: the token did not advance on shard {shard}: {before} -> {after}"
            );
            let direct = common::proxy::shard(info, shard).await;
            let last: Vec<String> = direct
                .query(
                    "SELECT query FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'client backend'",
                    &[&app],
                )
                .await
                .expect("pg_stat_activity")
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(
                !last.is_empty()
                    && last
                        .iter()
                        .all(|q| q == pgshard::backend::conn::COMMIT_LSN_QUERY),
                "{way}: on shard {shard}, the session's server connections last ran {last:?}"
            );
        }
    }
    // A write that fails leaves the token where it was.
    let before = token_of(&client).await;
    let failed = client
        .execute(
            "UPDATE users SET name = (1 / 0)::text WHERE user_id = $1",
            &[&k0],
        )
        .await;
    assert!(failed.is_err(), "division by zero must fail");
    assert_eq!(
        token_of(&client).await,
        before,
        "a failed write moved the token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_replica_that_stops_or_slows_down() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 2;
        spec.replicas = 2;
    })
    .await;
    let proxy = start_proxy_with(&cluster.info, replicas_mode(ReadYourWrites::Lsn)).await;
    replicas_known(&proxy).await;
    locking_reads_stay_on_primaries(&proxy).await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = {
        let mut tasks = Vec::new();
        for c in 0..8i64 {
            let client = connect(&proxy).await;
            let progress = progress.clone();
            tasks.push(tokio::spawn(async move {
                let key = 20_000 + c;
                client
                    .execute(
                        "INSERT INTO users (user_id, name) VALUES ($1, 'start')",
                        &[&key],
                    )
                    .await
                    .expect("seed row");
                let mut tally = Tally::default();
                for i in 0..150 {
                    let value = format!("{c}-{i}");
                    if i % 3 == 0 {
                        client
                            .execute(
                                "UPDATE users SET name = $2 WHERE user_id = $1",
                                &[&key, &value],
                            )
                            .await
                            .expect("write");
                    }
                    let row = client
                        .query_one(
                            "SELECT name, pg_is_in_recovery() FROM users WHERE user_id = $1",
                            &[&key],
                        )
                        .await
                        .unwrap_or_else(|e| panic!("a read failed while a replica stopped: {e:?}"));
                    let name: String = row.get(0);
                    let expected = format!("{c}-{}", i - i % 3);
                    tally.pairs += 1;
                    tally.stale += u64::from(name != expected);
                    tally.on_replica += u64::from(row.get::<_, bool>(1));
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tally
            }));
        }
        tasks
    };
    // Mid-load (once a quarter of the reads are done): one replica of shard 0 stops hard, one of
    // shard 1 falls far behind.
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster::stop_instance(&cluster.info.dir, "shard0r1", StopMode::Immediate)
        .await
        .expect("stop a replica");
    cluster::set_apply_delay(&cluster.info.dir, "shard1r2", 5_000)
        .await
        .expect("slow a replica");
    let mut total = Tally::default();
    for t in load {
        total.add(&t.await.expect("client task"));
    }
    eprintln!(
        "{} reads while replicas stopped and slowed: {} stale, {:.0}% on replicas",
        total.pairs,
        total.stale,
        100.0 * total.replica_share()
    );
    assert_eq!(total.stale, 0);
    assert!(total.on_replica > 0);
    proxy.stop().await;
}
