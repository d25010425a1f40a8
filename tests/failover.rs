//! Failover: a shard's primary dies, an operator promotes its replica, and the proxy finds the new
//! primary by its timeline, records it in the catalog and sends the shard's writes there; clients
//! of the other shards notice nothing. The old primary, started again as a primary on its old
//! timeline, is fenced.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::backend::topology::{Role, ServerId, Topology};
use pgshard::cluster::{self, StopMode};
use pgshard::router::Strategy;

/// Waits (on the topology's change notifications, not on a timer) until `cond` holds; panics
/// after `limit`. Returns how long it took.
async fn wait_for(
    topology: &Topology,
    shard: u32,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Topology) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut changes = topology.watch(shard).expect("shard exists");
    loop {
        if cond(topology) {
            return start.elapsed();
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!(
                "timed out after {limit:?} waiting for {what}; topology: {:#?}",
                topology.servers_of(shard)
            ),
        }
    }
}

fn role(topology: &Topology, shard: u32, index: u16) -> (Role, bool) {
    let s = topology
        .server(ServerId { shard, index })
        .expect("server exists");
    (s.role, s.healthy)
}

/// Keys owned by `shard`, from `start` on.
fn keys_on(
    map: &pgshard::router::ShardMap,
    shard: u32,
    start: i64,
) -> impl Iterator<Item = i64> + '_ {
    (start..).filter(move |k| map.shard_for(*k) == shard)
}

/// A client writing and reading keys of one shard until told to stop; every error is counted.
struct Load {
    ops: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_load(
    url: String,
    map: Arc<pgshard::router::ShardMap>,
    shard: u32,
    stop: Arc<AtomicBool>,
) -> Load {
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (o, e) = (ops.clone(), errors.clone());
    let task = tokio::spawn(async move {
        let client = proxy::connect_url(&url)
            .await
            .expect("load client connects");
        // Bounded: at most 100k statements or two minutes, whichever comes first.
        let until = Instant::now() + Duration::from_secs(120);
        let keys: Vec<i64> = keys_on(&map, shard, 1_000_000 * (i64::from(shard) + 1))
            .take(50_000)
            .collect();
        for key in keys {
            if stop.load(Ordering::Acquire) || Instant::now() > until {
                break;
            }
            let result = async {
                client
                    .execute(
                        "INSERT INTO users (user_id, name) VALUES ($1, 'load')",
                        &[&key],
                    )
                    .await?;
                client
                    .query_one("SELECT name FROM users WHERE user_id = $1", &[&key])
                    .await
            }
            .await;
            match result {
                Ok(_) => {
                    o.fetch_add(2, Ordering::Relaxed);
                }
                Err(err) => e.lock().unwrap().push(format!("key {key}: {err}")),
            }
        }
    });
    Load { ops, errors, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_writes_and_the_old_primary_is_fenced() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 3;
        spec.replicas = 1;
        spec.strategy = Strategy::Hash;
    })
    .await;
    let info = &cluster.info;
    let proxy = start_proxy_with(info, |c| {
        c.replicas.monitor_interval_ms = 50;
        c.pool.connect_timeout_ms = 1_000;
        c.pool.checkout_timeout_ms = 2_000;
        // Writes fail at once while no primary is found (tests/failover_buffer.rs holds them).
        c.pool.failover_buffer_ms = 0;
    })
    .await;
    let topology = proxy.proxy.topology.clone();
    let map = proxy.proxy.map.current();
    let old = info.instance("shard1").expect("shard1").clone();
    let new = info.instance("shard1r1").expect("shard1r1").clone();

    // Before: shard 1's configured primary is primary on timeline 1, recorded in the catalog.
    wait_for(
        &topology,
        1,
        "shard 1 sampled",
        Duration::from_secs(10),
        |t| role(t, 1, 0) == (Role::Primary, true) && role(t, 1, 1) == (Role::Replica, true),
    )
    .await;
    let catalog = proxy::catalog(info).await;
    let recorded = |catalog: tokio_postgres::Client| async move {
        let row = catalog
            .query_opt(
                "SELECT address, timeline FROM shard_primaries WHERE shard_id = 1",
                &[],
            )
            .await
            .expect("read shard_primaries");
        (
            catalog,
            row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))),
        )
    };
    let (catalog, row) = recorded(catalog).await;
    assert_eq!(row, Some((format!("{}:{}", old.host, old.port), 1)));

    let writer = proxy::connect(&proxy).await;
    let mut shard1_keys = keys_on(&map, 1, 1);
    let key = shard1_keys.next().unwrap();
    writer
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'before')",
            &[&key],
        )
        .await
        .expect("write to shard 1 before the failover");

    // Load on shards 0 and 2 for the whole failover.
    let stop = Arc::new(AtomicBool::new(false));
    let url = proxy::app_url(&proxy);
    let loads: Vec<Load> = [0u32, 2]
        .into_iter()
        .map(|s| start_load(url.clone(), map.clone(), s, stop.clone()))
        .collect();

    // The primary dies: shard 1's writes fail at once with a connection-class error.
    cluster::stop_instance(&info.dir, "shard1", StopMode::Immediate)
        .await
        .expect("stop shard1");
    let stopped_at = Instant::now();
    wait_for(
        &topology,
        1,
        "shard 1's primary seen down",
        Duration::from_secs(10),
        |t| !role(t, 1, 0).1,
    )
    .await;
    for _ in 0..2 {
        let key = shard1_keys.next().unwrap();
        let asked = Instant::now();
        let err = writer
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, 'down')",
                &[&key],
            )
            .await
            .expect_err("no primary, no write");
        let db = err.as_db_error().expect("an error from the proxy");
        assert!(
            db.code().code().starts_with("08") || db.code().code() == "57P01",
            "{db:?}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "took {:?}",
            asked.elapsed()
        );
        if db.message().contains("no reachable primary") {
            assert_eq!(db.code().code(), "08006");
        }
    }
    let err = writer
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'down')",
            &[&shard1_keys.next().unwrap()],
        )
        .await
        .expect_err("no primary, no write");
    let db = err.as_db_error().expect("an error from the proxy");
    assert_eq!(db.code().code(), "08006");
    assert!(
        db.message().contains("shard 1 has no reachable primary"),
        "{}",
        db.message()
    );

    // An operator promotes the replica; the proxy finds it and records it. Times count from the
    // promote call (it returns once the replica left recovery; the monitor may see that first).
    let watcher = {
        let topology = topology.clone();
        tokio::spawn(async move {
            wait_for(
                &topology,
                1,
                "writes moved to shard1r1",
                Duration::from_secs(15),
                |t| t.primary(1) == Some(ServerId { shard: 1, index: 1 }),
            )
            .await;
            Instant::now()
        })
    };
    let promoted_at = Instant::now();
    cluster::promote(&info.dir, "shard1r1")
        .await
        .expect("promote shard1r1");
    let promote_took = promoted_at.elapsed();
    let switch = watcher.await.expect("watcher") - promoted_at;
    let key = shard1_keys.next().unwrap();
    writer
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'after')",
            &[&key],
        )
        .await
        .expect("write to shard 1 after the failover");
    let writable_after_promote = promoted_at.elapsed();
    eprintln!(
        "failover: primary stopped → promote called {:?}; promote call took {promote_took:?}; promote called → writes routed {switch:?}, → first write done {writable_after_promote:?}",
        promoted_at - stopped_at
    );
    assert!(writable_after_promote < Duration::from_secs(5));
    let (catalog, row) = recorded(catalog).await;
    assert_eq!(row, Some((format!("{}:{}", new.host, new.port), 2)));
    assert_eq!(role(&topology, 1, 1), (Role::Primary, true));

    // The old primary comes back, still a primary on timeline 1: fenced.
    cluster::start_instance(&info.dir, "shard1")
        .await
        .expect("start the old primary again");
    wait_for(
        &topology,
        1,
        "the old primary fenced",
        Duration::from_secs(10),
        |t| matches!(role(t, 1, 0), (Role::Fenced { .. }, true)),
    )
    .await;
    let Role::Fenced { reason } = role(&topology, 1, 0).0 else {
        unreachable!()
    };
    eprintln!("old primary fenced: {reason}");
    assert!(
        reason.contains("timeline 1") && reason.contains("timeline 2"),
        "{reason}"
    );
    let key = shard1_keys.next().unwrap();
    writer
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'fenced')",
            &[&key],
        )
        .await
        .expect("write to shard 1 with the old primary back");
    let on = |name: &'static str| {
        let url = info.instance_url(name).expect("instance");
        async move {
            let c = proxy::connect_url(&url).await.expect("connect directly");
            c.query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&key])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(on("shard1r1").await, 1, "the write went to the new primary");
    assert_eq!(on("shard1").await, 0, "the fenced old primary got no write");
    let (_catalog, row) = recorded(catalog).await;
    assert_eq!(row, Some((format!("{}:{}", new.host, new.port), 2)));
    assert_eq!(topology.primary(1), Some(ServerId { shard: 1, index: 1 }));

    // The other shards' clients saw nothing.
    stop.store(true, Ordering::Release);
    for (load, shard) in loads.into_iter().zip([0, 2]) {
        load.task.await.expect("load task");
        let errors = load.errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "shard {shard} clients saw errors: {errors:?}"
        );
        let ops = load.ops.load(Ordering::Relaxed);
        assert!(ops > 20, "shard {shard} load ran only {ops} statements");
        eprintln!("shard {shard}: {ops} statements without an error during the failover");
    }

    let metrics = proxy.proxy.replica_metrics.snapshot(&topology);
    assert_eq!(metrics.failovers_total, 1);
    assert_eq!(metrics.fenced_servers, 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_or_stopped_replica_leaves_read_routing_and_comes_back() {
    let cluster = TestCluster::start_with(|spec| {
        spec.shards = 2;
        spec.replicas = 1;
        spec.strategy = Strategy::Hash;
    })
    .await;
    let info = &cluster.info;
    let max_lag_ms = 300;
    let proxy = start_proxy_with(info, |c| {
        c.replicas.monitor_interval_ms = 50;
        c.replicas.max_lag_bytes = 0;
        c.replicas.max_lag_ms = max_lag_ms;
        c.pool.connect_timeout_ms = 1_000;
    })
    .await;
    let topology = proxy.proxy.topology.clone();
    let map = proxy.proxy.map.current();
    let replica = ServerId { shard: 0, index: 1 };
    let readable = move |t: &Topology| {
        t.readable_replicas(0, 0, max_lag_ms, None)
            .iter()
            .any(|s| s.id == replica)
    };
    wait_for(
        &topology,
        0,
        "the replica readable",
        Duration::from_secs(10),
        |t| readable(t) && t.server(replica).is_some_and(|s| s.lag_bytes == Some(0)),
    )
    .await;

    // Replay held back: the replica falls behind the primary's position, in bytes at once and in
    // time past the bound, and leaves read routing.
    cluster::set_apply_delay(&info.dir, "shard0r1", 1_500)
        .await
        .expect("delay replay");
    let client = proxy::connect(&proxy).await;
    let key = keys_on(&map, 0, 1).next().unwrap();
    client
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'lag')",
            &[&key],
        )
        .await
        .expect("write to shard 0");
    let primary_lsn = topology
        .server(ServerId { shard: 0, index: 0 })
        .and_then(|s| s.lsn);
    wait_for(
        &topology,
        0,
        "the replica behind in bytes",
        Duration::from_secs(5),
        |t| {
            t.server(replica)
                .is_some_and(|s| s.lag_bytes.is_some_and(|b| b > 0))
        },
    )
    .await;
    wait_for(
        &topology,
        0,
        "the lagging replica left read routing",
        Duration::from_secs(5),
        |t| !readable(t),
    )
    .await;
    let lagging = topology.server(replica).unwrap();
    assert!(lagging.healthy, "{lagging:?}");
    assert!(
        lagging.lag_ms.is_some_and(|ms| ms > max_lag_ms),
        "{lagging:?}"
    );
    eprintln!(
        "lagging replica: {:?} bytes, {:?} ms behind",
        lagging.lag_bytes, lagging.lag_ms
    );
    // Once the delay has passed it replays the write and serves reads again.
    wait_for(
        &topology,
        0,
        "the replica caught up",
        Duration::from_secs(10),
        |t| readable(t) && t.server(replica).is_some_and(|s| s.lag_bytes == Some(0)),
    )
    .await;
    let caught_up = topology.server(replica).unwrap();
    assert!(
        caught_up.lsn >= primary_lsn,
        "{caught_up:?} vs {primary_lsn:?}"
    );
    assert_eq!(caught_up.lag_ms, Some(0));

    // A replica that stops answering leaves read routing; started again, it comes back.
    cluster::set_apply_delay(&info.dir, "shard0r1", 0)
        .await
        .expect("no replay delay");
    cluster::stop_instance(&info.dir, "shard0r1", StopMode::Immediate)
        .await
        .expect("stop the replica");
    wait_for(
        &topology,
        0,
        "the stopped replica unhealthy",
        Duration::from_secs(5),
        |t| !readable(t) && t.server(replica).is_some_and(|s| !s.healthy),
    )
    .await;
    cluster::start_instance(&info.dir, "shard0r1")
        .await
        .expect("start the replica");
    wait_for(
        &topology,
        0,
        "the restarted replica readable",
        Duration::from_secs(10),
        |t| readable(t),
    )
    .await;
    assert_eq!(
        topology.server(replica).map(|s| (s.role, s.healthy)),
        Some((Role::Replica, true))
    );
    // Lag and health never fence anything.
    assert_eq!(
        proxy
            .proxy
            .replica_metrics
            .snapshot(&topology)
            .fenced_servers,
        0
    );
    proxy.stop().await;
}
