//! Reads over real streaming replicas with a real replay delay: read-your-writes in each mode
//! (`off` must show stale reads, so the test can fail; `pin` and `lsn` must show none), the causal
//! token carried to a second connection, and reads that keep working while a replica stops.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{connect, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::{self, StopMode};
use pgshard::config::{Config, ReadFrom, ReadYourWrites};
use pgshard::server::RunningProxy;

const CLIENTS: i64 = 20;
const PAIRS_PER_CLIENT: i64 = 100;

fn replicas_mode(mode: ReadYourWrites) -> impl FnOnce(&mut Config) {
    move |config| {
        config.replicas.read_from = ReadFrom::Replicas;
        config.replicas.read_your_writes = mode;
        config.replicas.monitor_interval_ms = 20;
        config.replicas.lsn_wait_timeout_ms = 3_000;
        config.replicas.pin_window_ms = 2_000;
        config.pool.size = 30;
    }
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

/// Each client updates its own row and reads it back at once — through the same connection, or
/// (with `second`) through another one that adopted the writer's causal token.
async fn write_then_read(proxy: &RunningProxy, second: bool, pairs: i64) -> Tally {
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
                let value = format!("{c}-{i}-{second}");
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
    for mode in [
        ReadYourWrites::Off,
        ReadYourWrites::Pin,
        ReadYourWrites::Lsn,
    ] {
        let proxy = start_proxy_with(&cluster.info, replicas_mode(mode)).await;
        replicas_known(&proxy).await;
        let started = Instant::now();
        let same = write_then_read(&proxy, false, PAIRS_PER_CLIENT).await;
        let elapsed = started.elapsed();
        eprintln!(
            "{mode:?}: {} pairs on one connection in {elapsed:?}: {} stale, {:.0}% of reads on replicas",
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
            ReadYourWrites::Lsn => {
                assert_eq!(same.stale, 0, "lsn mode read stale data");
                assert!(
                    same.replica_share() > 0.5,
                    "lsn mode should still read mostly from replicas, got {:.0}%",
                    100.0 * same.replica_share()
                );
            }
        }
        if mode != ReadYourWrites::Pin {
            let other = write_then_read(&proxy, true, PAIRS_PER_CLIENT / 4).await;
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
        proxy.stop().await;
    }
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
