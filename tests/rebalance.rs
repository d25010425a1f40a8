//! Online rebalancing against real Postgres: `pgshard verify` and `rebalance plan` on a cluster
//! whose map leaves one shard empty; then adding that shard under continuous writes through two
//! proxies, with an audit of every acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::jobs::{job_state, newest_job, wait_job_done, wait_job_end};
use common::process::eventually_within;
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::rebalance::Target;
use pgshard::router::{ShardMap, Strategy};

/// Publishes a map over `shards` (leaving the cluster's other shards empty).
async fn publish(info: &ClusterInfo, strategy: Strategy, shards: &[u32]) -> ShardMap {
    let mut catalog = proxy::catalog(info).await;
    let map = ShardMap::uniform(0, strategy, shards);
    let version = pgshard::catalog::publish_map(&mut catalog, &map)
        .await
        .expect("publish a map");
    ShardMap { version, ..map }
}

fn pgshard(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshard"))
        .args(args)
        .output()
        .expect("run pgshard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_misplaced_rows_and_plan_estimates_moves() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;
    let map = publish(info, Strategy::Hash, &[0, 1]).await;
    let running = start_proxy_with(info, |c| c.rebalance.run_jobs = false).await;
    let client = proxy::connect(&running).await;
    map_loaded(&running, map.version).await;
    for k in 1..=400i64 {
        client
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, $2)",
                &[&k, &format!("u{k}")],
            )
            .await
            .unwrap();
    }
    let config = info.config_path.to_str().unwrap();
    let (ok, out) = pgshard(&["verify", "--config", config]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: every row sits"), "{out}");

    // A row on a shard the map does not name for it.
    let misplaced = (1000..)
        .find(|k| map.shard_for(*k) == 0)
        .expect("a key of shard 0");
    proxy::shard(info, 1)
        .await
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'stray')",
            &[&misplaced],
        )
        .await
        .unwrap();
    let (ok, out) = pgshard(&["verify", "--config", config]);
    assert!(!ok, "verify must fail: {out}");
    assert!(
        out.contains("MISPLACED: shard 1 users: 1 row(s)") && out.contains(&misplaced.to_string()),
        "{out}"
    );
    proxy::shard(info, 1)
        .await
        .execute("DELETE FROM users WHERE user_id = $1", &[&misplaced])
        .await
        .unwrap();

    // The plan's estimates are the rows whose owner changes, counted on each source.
    let plan = pgshard::rebalance::plan(&map, &Target::AddShard(2)).unwrap();
    let mut expected: BTreeMap<u32, i64> = BTreeMap::new();
    for k in 1..=400i64 {
        if let Some(m) = plan.move_of(k) {
            *expected.entry(m.source).or_default() += 1;
        }
    }
    let (ok, out) = pgshard(&["rebalance", "plan", "--config", config, "add-shard", "2"]);
    assert!(ok, "{out}");
    for (source, rows) in &expected {
        let line = format!("shard {source:>3} → shard {:>3}: ~{rows} row(s)", 2);
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    let total: i64 = expected.values().sum();
    assert!(
        out.contains(&format!("total: {total} row(s) move")),
        "{out}"
    );
    let (ok, out) = pgshard(&["rebalance", "plan", "--config", config, "add-shard", "9"]);
    assert!(!ok && out.contains("shard 9 is not registered"), "{out}");

    // Evening out by row counts: 600 more users on shard 0 leave it with about four times what
    // shard 1 has; the job moves the top slice of shard 0's hash range until both hold half.
    let mut skewed = 0;
    for k in 10_000i64.. {
        if skewed == 600 {
            break;
        }
        if map.shard_for(k) == 0 {
            client
                .execute(
                    "INSERT INTO users (user_id, name) VALUES ($1, 'skew')",
                    &[&k],
                )
                .await
                .unwrap();
            skewed += 1;
        }
    }
    let (ok, out) = pgshard(&["rebalance", "plan", "--config", config, "even-out"]);
    assert!(ok, "{out}");
    assert!(out.contains("plan: even out by row counts"), "{out}");
    assert!(out.contains("shard   0 → shard   1"), "{out}");
    let (ok, out) = pgshard(&["rebalance", "start", "--config", config, "even-out"]);
    assert!(ok, "{out}");
    let job_id = newest_job(info).await;
    // Creating the source's slot waits for the transactions open there, an in-doubt prepared one
    // included: the job says which, and goes on once they end.
    let blocker = proxy::shard(info, 0).await;
    blocker
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .unwrap();
    let in_doubt = proxy::shard(info, 0).await;
    in_doubt
        .batch_execute(
            "BEGIN; INSERT INTO users (user_id, name) VALUES (-1, 'in doubt'); \
             PREPARE TRANSACTION 'pgshard_test_in_doubt'",
        )
        .await
        .unwrap();
    let blocker_pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let runner = start_proxy_with(info, |c| c.rebalance.slot_timeout_ms = 500).await;
    eventually_within(
        Duration::from_secs(60),
        "the job names what its slot waits for",
        || async {
            job_state(info, job_id).await.error.is_some_and(|e| {
                e.contains("waited 500 ms")
                    && e.contains(&format!("pid {blocker_pid}"))
                    && e.contains("pgshard_test_in_doubt")
            })
        },
    )
    .await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    in_doubt
        .batch_execute("ROLLBACK PREPARED 'pgshard_test_in_doubt'")
        .await
        .unwrap();
    wait_job_done(info, job_id).await;
    let mut counts = Vec::new();
    for shard in [0, 1] {
        let n: i64 = proxy::shard(info, shard)
            .await
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        counts.push(n);
    }
    assert_eq!(counts[0] + counts[1], 1000, "{counts:?}");
    assert!((counts[0] - counts[1]).abs() <= 2, "not even: {counts:?}");
    let (ok, out) = pgshard(&["verify", "--config", config]);
    assert!(ok, "{out}");

    // A source whose replica identity lacks the shard key would make Postgres refuse clients'
    // UPDATE and DELETE once its rows are published with a row filter: the job fails its checks
    // before it publishes anything, and clients go on writing.
    let shard0 = proxy::shard(info, 0).await;
    shard0
        .batch_execute("ALTER TABLE users REPLICA IDENTITY NOTHING")
        .await
        .unwrap();
    let (ok, out) = pgshard(&["rebalance", "start", "--config", config, "add-shard", "2"]);
    assert!(ok, "{out}");
    let job = wait_job_end(info, newest_job(info).await, Duration::from_secs(60)).await;
    assert_eq!(job.state, pgshard::rebalance::jobs::JobState::Failed);
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("replica identity does not include the shard key user_id"),
        "{error}"
    );
    for shard in 0..3 {
        assert_eq!(replication_objects(info, shard).await, (0, 0, 0));
    }
    let updated = client
        .execute("UPDATE users SET name = 'after' WHERE user_id <= 400", &[])
        .await
        .unwrap();
    assert_eq!(updated, 400);
    shard0
        .batch_execute("ALTER TABLE users REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    runner.stop().await;
    running.stop().await;
}

/// What the writers were told succeeded, per key: the name it holds, or None once deleted.
type Audit = BTreeMap<i64, Option<String>>;

/// True when a write touched exactly one row; otherwise records why not in `errors`.
fn one_row(done: Result<u64, tokio_postgres::Error>, what: &str, errors: &mut Vec<String>) -> bool {
    match done {
        Ok(1) => true,
        Ok(other) => {
            errors.push(format!("{what} touched {other} rows"));
            false
        }
        Err(e) => {
            // The server's own words (SQLSTATE and message), not only "db error".
            let detail = e
                .as_db_error()
                .map(|d| format!("{} {}", d.code().code(), d.message()));
            errors.push(format!("{what}: {e} {}", detail.unwrap_or_default()));
            false
        }
    }
}

/// One writer: inserts new users, renames and deletes its own, and sometimes renames two of them
/// in one transaction (two shards: two-phase commit), through `url` until `stop`.
async fn writer(
    url: String,
    id: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Audit, Vec<String>) {
    let client = proxy::connect_url(&url).await.expect("writer connects");
    let mut audit = Audit::new();
    let mut errors = Vec::new();
    let mut live: Vec<i64> = Vec::new();
    let mut n = 0i64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let key = id * 1_000_000 + n;
        let name = format!("w{id}-{n}");
        match client
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, $2)",
                &[&key, &name],
            )
            .await
        {
            Ok(_) => {
                audit.insert(key, Some(name));
                live.push(key);
            }
            Err(e) => errors.push(format!("insert {key}: {e}")),
        }
        if n % 3 == 0 && live.len() > 2 {
            let k = live[(n as usize * 7) % live.len()];
            let name = format!("w{id}-{n}-renamed");
            let done = client
                .execute(
                    "UPDATE users SET name = $1 WHERE user_id = $2",
                    &[&name, &k],
                )
                .await;
            one_row(done, &format!("update {k}"), &mut errors).then(|| audit.insert(k, Some(name)));
        }
        if n % 7 == 0 && live.len() > 4 {
            let k = live.remove((n as usize * 13) % live.len());
            let done = client
                .execute("DELETE FROM users WHERE user_id = $1", &[&k])
                .await;
            one_row(done, &format!("delete {k}"), &mut errors).then(|| audit.insert(k, None));
        }
        if n % 5 == 0 && live.len() > 2 {
            // A keyless write (by name, not key) as a prepared statement: it reaches every shard,
            // so while rows are on two shards the fence is all that keeps it from applying twice.
            let k = live[(n as usize * 3) % live.len()];
            if let Some(Some(old)) = audit.get(&k).cloned() {
                let name = format!("w{id}-{n}-byname");
                let done = client
                    .execute("UPDATE users SET name = $1 WHERE name = $2", &[&name, &old])
                    .await;
                one_row(done, &format!("update by name {old}"), &mut errors)
                    .then(|| audit.insert(k, Some(name)));
            }
        }
        if n % 11 == 0 && live.len() > 4 {
            let (a, b) = (live[0], live[live.len() - 1]);
            let (name_a, name_b) = (format!("w{id}-{n}-tx-a"), format!("w{id}-{n}-tx-b"));
            let r: Result<(), tokio_postgres::Error> = async {
                client.batch_execute("BEGIN").await?;
                client
                    .execute(
                        "UPDATE users SET name = $1 WHERE user_id = $2",
                        &[&name_a, &a],
                    )
                    .await?;
                client
                    .execute(
                        "UPDATE users SET name = $1 WHERE user_id = $2",
                        &[&name_b, &b],
                    )
                    .await?;
                client.batch_execute("COMMIT").await
            }
            .await;
            match r {
                Ok(()) => {
                    audit.insert(a, Some(name_a));
                    audit.insert(b, Some(name_b));
                }
                Err(e) => {
                    errors.push(format!("transaction on {a} and {b}: {e}"));
                    let _ = client.batch_execute("ROLLBACK").await;
                }
            }
        }
    }
    (audit, errors)
}

/// A reader of every user without the key, in turn as a simple query and as a prepared statement
/// merged in key order: no user_id may ever come back twice.
async fn reader(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>) {
    let client = proxy::connect_url(&url).await.expect("reader connects");
    let (mut reads, mut errors) = (0u64, Vec::new());
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let ids: Result<Vec<i64>, String> = if reads % 2 == 0 {
            client
                .simple_query("SELECT user_id FROM users")
                .await
                .map(|msgs| {
                    msgs.iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0).and_then(|v| v.parse().ok())
                            }
                            _ => None,
                        })
                        .collect()
                })
                .map_err(|e| format!("keyless read: {e}"))
        } else {
            client
                .query("SELECT user_id FROM users ORDER BY user_id", &[])
                .await
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .map_err(|e| format!("keyless prepared read: {e}"))
        };
        match ids {
            Ok(ids) => {
                let mut seen = std::collections::HashSet::new();
                for id in &ids {
                    if !seen.insert(*id) {
                        errors.push(format!("user {id} read twice"));
                    }
                }
                if reads % 2 == 1 && !ids.windows(2).all(|w| w[0] < w[1]) {
                    errors.push("an ORDER BY read came back out of order".into());
                }
                reads += 1;
            }
            Err(e) => errors.push(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (reads, errors)
}

/// Inserts users 1..=n through a proxy and returns them as acknowledged.
async fn seed_users(through: &pgshard::server::RunningProxy, n: i64) -> Audit {
    let seed = proxy::connect(through).await;
    let mut audit = Audit::new();
    for k in 1..=n {
        let name = format!("seed{k}");
        seed.execute(
            "INSERT INTO users (user_id, name) VALUES ($1, $2)",
            &[&k, &name],
        )
        .await
        .unwrap();
        audit.insert(k, Some(name));
    }
    audit
}

/// Every acknowledged write is there exactly once, on the shard `map` names, and no row nobody
/// acknowledged exists. Returns the rows found.
async fn check_audit(
    info: &ClusterInfo,
    audit: &Audit,
    map: &ShardMap,
) -> BTreeMap<i64, Vec<(u32, Option<String>)>> {
    let (rows, total) = rows_by_key(info).await;
    for (key, copies) in &rows {
        assert_eq!(
            copies.len(),
            1,
            "user {key} is on several shards: {copies:?}"
        );
        assert_eq!(copies[0].0, map.shard_for(*key), "user {key} misplaced");
    }
    for (key, expected) in audit {
        let found = rows.get(key).map(|c| c[0].1.clone());
        match expected {
            Some(name) => assert_eq!(found, Some(Some(name.clone())), "user {key}"),
            None => assert_eq!(found, None, "deleted user {key} is back"),
        }
    }
    assert_eq!(
        total,
        audit.values().filter(|v| v.is_some()).count() as i64,
        "rows nobody acknowledged exist"
    );
    rows
}

/// Every row of every shard, read directly: key → (shard, name).
async fn rows_by_key(info: &ClusterInfo) -> (BTreeMap<i64, Vec<(u32, Option<String>)>>, i64) {
    let mut all: BTreeMap<i64, Vec<(u32, Option<String>)>> = BTreeMap::new();
    let mut total = 0;
    for shard in info.shard_ids() {
        let c = proxy::shard(info, shard).await;
        for r in c
            .query("SELECT user_id, name FROM users", &[])
            .await
            .unwrap()
        {
            all.entry(r.get(0)).or_default().push((shard, r.get(1)));
            total += 1;
        }
    }
    (all, total)
}

/// Waits until `proxy` routes with map `version`.
async fn map_loaded(proxy: &pgshard::server::RunningProxy, version: i64) {
    eventually_within(
        Duration::from_secs(10),
        "the proxy loads the map",
        || async { proxy.proxy.map.current().version == version },
    )
    .await;
}

/// Runs `target` on a cluster of `cluster_shards` shards whose first map is `strategy` over
/// `map_shards`, under continuous writes and keyless reads through two proxies, and checks the
/// audit afterwards and that the new map covers `final_shards`.
async fn move_under_load(
    cluster_shards: u32,
    strategy: Strategy,
    map_shards: &[u32],
    target: Target,
    final_shards: &[u32],
) {
    let cluster = TestCluster::start(cluster_shards, strategy).await;
    let info = &cluster.info;
    let map = publish(info, strategy, map_shards).await;
    // A reference table on the shards of the map: a new shard gets its definition and rows.
    for shard in map.shards() {
        proxy::shard(info, shard)
            .await
            .batch_execute(
                "CREATE TABLE countries (code text PRIMARY KEY, name text); \
                 INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan'), ('pe', 'Peru')",
            )
            .await
            .unwrap();
    }
    let with_countries = |c: &mut pgshard::config::Config| {
        c.reference_tables = vec!["countries".into()];
    };
    let proxies = [
        start_proxy_with(info, with_countries).await,
        start_proxy_with(info, |c| {
            with_countries(c);
            c.proxy.node_name = "second".into();
        })
        .await,
    ];
    for p in &proxies {
        eventually_within(
            Duration::from_secs(10),
            "the proxies load the map",
            || async { p.proxy.map.current().version == map.version },
        )
        .await;
    }
    let mut audit = seed_users(&proxies[0], 600).await;

    for new_shard in final_shards.iter().filter(|s| !map.shards().contains(s)) {
        // A new shard without the table: the job gives it the definition from a source.
        proxy::shard(info, *new_shard)
            .await
            .batch_execute("DROP TABLE users")
            .await
            .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=4i64)
        .map(|id| {
            let url = proxy::app_url(&proxies[(id % 2) as usize]);
            tokio::spawn(writer(url, id, stop.clone()))
        })
        .collect();
    let readers: Vec<_> = proxies
        .iter()
        .map(|p| tokio::spawn(reader(proxy::app_url(p), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let config = pgshard::config::Config::load(&info.config_path).unwrap();
    let job_id = pgshard::rebalance::cli::create_job(&config, &target)
        .await
        .expect("the job is created");
    let started = Instant::now();
    let job = wait_job_done(info, job_id).await;
    // Writes go on against the new map for a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut errors = Vec::new();
    for w in writers {
        let (a, e) = w.await.unwrap();
        audit.extend(a);
        errors.extend(e);
    }
    let mut reads = 0;
    for r in readers {
        let (n, e) = r.await.unwrap();
        reads += n;
        errors.extend(e);
    }
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(reads > 0);

    let new_map = proxies[0].proxy.map.current();
    assert_eq!(Some(new_map.version), job.new_version);
    assert_eq!(new_map.shards(), final_shards);
    assert_eq!(
        *new_map,
        ShardMap {
            version: new_map.version,
            ..job.plan.to.clone()
        },
        "{target}"
    );
    let rows = check_audit(info, &audit, &new_map).await;
    for new_shard in final_shards.iter().filter(|s| !map.shards().contains(s)) {
        let countries: Vec<String> = proxy::shard(info, *new_shard)
            .await
            .query("SELECT code FROM countries ORDER BY code", &[])
            .await
            .expect("the new shard has the reference table")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(countries, ["fr", "jp", "pe"], "shard {new_shard}");
    }
    let moved: i64 = job.steps.iter().map(|s| s.rows_deleted).sum();
    assert!(moved > 0, "nothing moved: {:?}", job.steps);
    let changed = rows
        .iter()
        .filter(|(k, c)| map.shard_for(**k) != c[0].0)
        .count();
    assert!(changed > 0, "no surviving row changed shard");
    let (ok, out) = pgshard(&["verify", "--config", info.config_path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = pgshard(&[
        "rebalance",
        "status",
        "--config",
        info.config_path.to_str().unwrap(),
        &job_id.to_string(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("job {job_id} done")), "{out}");
    assert_eq!(out.matches("verified").count(), job.steps.len(), "{out}");
    eprintln!(
        "{target}: moved {moved} rows in {:?}; longest hold {:?} ms (runner), proxies {} / {} ms; {reads} keyless reads",
        started.elapsed(),
        job.longest_hold_ms,
        proxies[0].proxy.rebalance.stats().longest_ms,
        proxies[1].proxy.rebalance.stats().longest_ms
    );
    for p in proxies {
        p.stop().await;
    }
}

/// A uuid key written as text, as drivers send theirs: deterministic per writer and count.
fn uuid_key(writer: u64, n: u64) -> String {
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ writer;
    format!(
        "{writer:08x}-{:04x}-4{:03x}-8000-{:012x}",
        n & 0xffff,
        (n >> 16) & 0xfff,
        x & 0xffff_ffff_ffff
    )
}

/// One writer of the uuid-keyed table: inserts rows, changes and deletes some of its own,
/// through `url` until `stop`; returns what was acknowledged (key → note, None once deleted).
async fn uuid_writer(
    url: String,
    id: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (BTreeMap<String, Option<String>>, Vec<String>) {
    use common::params::TextParam;
    let client = proxy::connect_url(&url).await.expect("writer connects");
    let (mut audit, mut errors, mut live) = (BTreeMap::new(), Vec::new(), Vec::new());
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        n += 1;
        let (key, note) = (uuid_key(id, n), format!("w{id}-{n}"));
        let done = client
            .execute(
                "INSERT INTO items (id, n, note) VALUES ($1::uuid, $2, $3)",
                &[&TextParam(key.clone()), &(n as i64), &note],
            )
            .await;
        if one_row(done, &format!("insert {key}"), &mut errors) {
            audit.insert(key.clone(), Some(note));
            live.push(key);
        }
        if n.is_multiple_of(3) && live.len() > 2 {
            let k = live[(n as usize * 7) % live.len()].clone();
            let note = format!("w{id}-{n}-changed");
            let done = client
                .execute(
                    "UPDATE items SET note = $1 WHERE id = $2::uuid",
                    &[&note, &TextParam(k.clone())],
                )
                .await;
            if one_row(done, &format!("update {k}"), &mut errors) {
                audit.insert(k, Some(note));
            }
        }
        if n.is_multiple_of(7) && live.len() > 4 {
            let k = live.remove((n as usize * 13) % live.len());
            let done = client
                .execute(
                    "DELETE FROM items WHERE id = $1::uuid",
                    &[&TextParam(k.clone())],
                )
                .await;
            if one_row(done, &format!("delete {k}"), &mut errors) {
                audit.insert(k, None);
            }
        }
    }
    (audit, errors)
}

/// Issue 15: a uuid-keyed table moves to a new shard under concurrent writers; afterwards every
/// acknowledged row is there exactly once, every row sits on the shard `sql_owned_by` names under
/// the new map, and the counts agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_shard_moves_a_uuid_keyed_table_under_writes() {
    use pgshard::config::ShardedTableConfig;
    use pgshard::router::KeyType;
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;
    let map = publish(info, Strategy::Hash, &[0, 1]).await;
    // The table exists before the proxy starts: it reads the key type from the shards.
    for shard in info.shard_ids() {
        proxy::shard(info, shard)
            .await
            .batch_execute(
                "CREATE TABLE items (id uuid PRIMARY KEY, n bigint NOT NULL, note text NOT NULL, seq bigserial)",
            )
            .await
            .unwrap();
    }
    let running = start_proxy_with(info, |c| {
        c.sharded_tables.push(ShardedTableConfig {
            name: "items".into(),
            key: "id".into(),
            key_type: None,
        })
    })
    .await;
    map_loaded(&running, map.version).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=3u64)
        .map(|id| tokio::spawn(uuid_writer(proxy::app_url(&running), id, stop.clone())))
        .collect();
    // Rows to move before the job starts.
    eventually_within(
        Duration::from_secs(30),
        "the writers insert rows",
        || async {
            proxy::shard(info, 0)
                .await
                .query_one("SELECT count(*) FROM items", &[])
                .await
                .map(|r| r.get::<_, i64>(0) > 150)
                .unwrap_or(false)
        },
    )
    .await;
    let config = pgshard::config::Config::load(&info.config_path).unwrap();
    let job_id = pgshard::rebalance::cli::create_job(&config, &Target::AddShard(2))
        .await
        .expect("the job is created");
    let job = wait_job_done(info, job_id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut audit, mut errors) = (BTreeMap::new(), Vec::new());
    for w in writers {
        let (a, e) = w.await.unwrap();
        audit.extend(a);
        errors.extend(e);
    }
    assert!(errors.is_empty(), "writers saw errors: {errors:?}");

    let new_map = running.proxy.map.current();
    assert_eq!(Some(new_map.version), job.new_version);
    assert_eq!(new_map.shards(), [0, 1, 2]);
    // The new shard numbers the table's sequence in its own range (the table was made there by
    // hand, numbering as one Postgres would).
    let range: (i64, i64) = proxy::shard(info, 2)
        .await
        .query_one(
            "SELECT seqmin, seqmax FROM pg_sequence WHERE seqrelid = 'items_seq_seq'::regclass",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("read the new shard's sequence");
    assert_eq!(range, ((2 << 48) + 1, 3 << 48), "shard 2's sequence range");
    let mut found: BTreeMap<String, Vec<(u32, String)>> = BTreeMap::new();
    for shard in info.shard_ids() {
        let owned = new_map.sql_owned_by_typed("id", KeyType::Uuid, shard);
        for r in proxy::shard(info, shard)
            .await
            .query(
                &format!("SELECT id::text, note, coalesce({owned}, false) FROM items"),
                &[],
            )
            .await
            .unwrap()
        {
            let (key, note, owns): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
            assert!(
                owns,
                "row {key} on shard {shard}, which sql_owned_by does not name"
            );
            found.entry(key).or_default().push((shard, note));
        }
    }
    let moved = found.values().filter(|c| c[0].0 == 2).count();
    assert!(moved > 0, "no row moved to the new shard");
    for (key, copies) in &found {
        assert_eq!(
            copies.len(),
            1,
            "row {key} is on several shards: {copies:?}"
        );
    }
    for (key, expected) in &audit {
        let note = found.get(key).map(|c| c[0].1.clone());
        assert_eq!(note, expected.clone(), "row {key}");
    }
    let live = audit.values().filter(|v| v.is_some()).count() as i64;
    assert_eq!(found.len() as i64, live, "rows nobody acknowledged exist");
    let through_proxy: i64 = proxy::connect(&running)
        .await
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(through_proxy, live);
    eprintln!(
        "uuid table: {live} rows, {moved} on the new shard; longest hold {:?} ms",
        job.longest_hold_ms
    );
    running.stop().await;
}

/// The first ten shards: the map every load test starts from.
const TEN: [u32; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
/// Ten shards and shard 10, the one they grow to.
const ELEVEN: [u32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_shard_under_writes_through_two_proxies_loses_and_duplicates_nothing() {
    move_under_load(11, Strategy::Hash, &TEN, Target::AddShard(10), &ELEVEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splitting_a_range_under_writes_loses_and_duplicates_nothing() {
    // Every key the test writes is below i64::MAX / 10, on shard 0: move a slice of it to 10.
    let target = Target::MoveRange {
        lower: Some(500),
        upper: Some(3_000_000),
        to: 10,
    };
    move_under_load(11, Strategy::Range, &TEN, target, &ELEVEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_modulo_to_hash_under_writes_loses_and_duplicates_nothing() {
    move_under_load(
        10,
        Strategy::Modulo { modulus: 10 },
        &TEN,
        Target::ModuloToHash,
        &TEN,
    )
    .await;
}

/// Replication objects the job left on a shard: (publications, subscriptions, slots).
async fn replication_objects(info: &ClusterInfo, shard: u32) -> (i64, i64, i64) {
    let c = proxy::shard(info, shard).await;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pgshard%'), \
                    (SELECT count(*) FROM pg_subscription WHERE subname LIKE 'pgshard%'), \
                    (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_delays_the_cut_over_and_a_cancelled_job_leaves_nothing_behind() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;
    let map = publish(info, Strategy::Hash, &[0, 1]).await;
    let running = start_proxy_with(info, |c| {
        c.rebalance.hold_timeout_ms = 300;
        c.users.push(pgshard::config::UserConfig {
            admin: true,
            ..pgshard::config::UserConfig::new(
                "admin",
                Some("secret"),
                pgshard::config::AuthMethod::ScramSha256,
            )
        });
    })
    .await;
    map_loaded(&running, map.version).await;
    let client = proxy::connect(&running).await;
    for k in 1..=1500i64 {
        client
            .execute("INSERT INTO users (user_id, name) VALUES ($1, 'u')", &[&k])
            .await
            .unwrap();
    }
    // A transaction left open on the proxy: every cut-over attempt must wait for it, give up
    // after hold_timeout_ms and release the hold on the old map.
    let idle = proxy::connect(&running).await;
    idle.batch_execute("BEGIN").await.unwrap();
    idle.query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap();

    let admin_url = format!(
        "postgres://admin:secret@127.0.0.1:{}/pgshard?sslmode=disable",
        running.addr.port()
    );
    let admin = proxy::connect_url(&admin_url).await.unwrap();
    admin.simple_query("REBALANCE add-shard 2").await.unwrap();
    let job_id = newest_job(info).await;
    eventually_within(
        Duration::from_secs(60),
        "a cut-over attempt gives up",
        || async {
            let job = job_state(info, job_id).await;
            job.cutover_attempts >= 2 && job.state == pgshard::rebalance::jobs::JobState::Cutover
        },
    )
    .await;
    // A hold stops only work on the keys the job moves: while an attempt holds the gate, a write
    // to a key that stays where it is runs, and one to a moving key waits at the gate.
    let target = job_state(info, job_id).await.plan.to;
    let staying = (1..=1500i64)
        .find(|k| map.shard_for(*k) == target.shard_for(*k))
        .unwrap();
    let moving = (1..=1500i64)
        .find(|k| map.shard_for(*k) != target.shard_for(*k))
        .unwrap();
    let gate = running.proxy.rebalance.gate.clone();
    eventually_within(
        Duration::from_secs(60),
        "a write to a staying key runs during a hold",
        || async {
            let before = gate.status();
            if !before.paused {
                return false;
            }
            client
                .execute(
                    "UPDATE users SET name = 'u' WHERE user_id = $1",
                    &[&staying],
                )
                .await
                .unwrap();
            let after = gate.status();
            after.paused && after.pauses == before.pauses
        },
    )
    .await;
    eventually_within(
        Duration::from_secs(60),
        "a write to a moving key waits for the hold",
        || async {
            if !gate.status().paused {
                return false;
            }
            let writer = proxy::connect(&running).await;
            let write = tokio::spawn(async move {
                writer
                    .execute("UPDATE users SET name = 'u' WHERE user_id = $1", &[&moving])
                    .await
            });
            loop {
                if gate.status().waiting >= 1 {
                    let done = tokio::time::timeout(Duration::from_secs(30), write)
                        .await
                        .expect("the held write runs once the attempt gives up");
                    assert_eq!(done.unwrap().unwrap(), 1);
                    return true;
                }
                if write.is_finished() {
                    // The attempt gave up before the write reached the gate: try the next one.
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    let copied: i64 = proxy::shard(info, 2)
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(copied > 0, "the destination holds the copy");
    // Keyless reads still count every row once, simple or prepared (the prepared ones in their
    // fenced form on the fenced shards, merged); what cannot be fenced is refused, naming the job.
    let n = client
        .simple_query("SELECT count(*) FROM users")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
    assert_eq!(n.as_deref(), Some("1500"));
    let counted: i64 = client
        .query_one("SELECT count(*) FROM users WHERE name = $1", &[&"u"])
        .await
        .expect("a keyless prepared count")
        .get(0);
    assert_eq!(counted, 1500);
    let ids: Vec<i64> = client
        .query(
            "SELECT user_id FROM users ORDER BY user_id LIMIT 5 OFFSET 100",
            &[],
        )
        .await
        .expect("a keyless prepared read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![101, 102, 103, 104, 105]);
    let touched = client
        .execute("UPDATE users SET name = 'u' WHERE name = $1", &[&"u"])
        .await
        .expect("a keyless prepared write");
    assert_eq!(touched, 1500, "a keyless write applies once per row");
    let message = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string())
    };
    let ddl = client
        .simple_query("ALTER TABLE users ADD COLUMN nickname text")
        .await
        .expect_err("DDL on a moving table is refused");
    assert!(
        message(&ddl).contains(&format!("rebalancing job {job_id}")),
        "{ddl:?}"
    );
    let shown = admin.simple_query("SHOW JOBS").await.unwrap();
    let steps = shown
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(steps, 2, "one row per step");

    admin
        .simple_query(&format!("CANCEL JOB {job_id}"))
        .await
        .unwrap();
    let job = wait_job_end(info, job_id, Duration::from_secs(60)).await;
    assert_eq!(job.state, pgshard::rebalance::jobs::JobState::Cancelled);
    assert_eq!(job.new_version, None);
    assert!(job.steps.iter().all(|s| s.state == "rolled_back"));
    // The open transaction was never disturbed.
    idle.batch_execute("COMMIT").await.unwrap();
    assert_eq!(running.proxy.map.current().version, map.version);
    for shard in 0..3 {
        assert_eq!(
            replication_objects(info, shard).await,
            (0, 0, 0),
            "shard {shard} keeps replication objects"
        );
    }
    let left: i64 = proxy::shard(info, 2)
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the partial copy is removed");
    assert_eq!(proxy::count_users_directly(info).await, 1500);
    let (ok, out) = pgshard(&["verify", "--config", info.config_path.to_str().unwrap()]);
    assert!(ok, "{out}");

    // A copy that does not match its source is never switched to: a row changed behind the
    // job's back on the destination fails the cut-over's checksum, and the job rolls back. An
    // open transaction keeps the cut-over from happening before the row is changed.
    idle.batch_execute("BEGIN").await.unwrap();
    idle.query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap();
    admin.simple_query("REBALANCE add-shard 2").await.unwrap();
    let tampered_job = newest_job(info).await;
    let dest = proxy::shard(info, 2).await;
    eventually_within(
        Duration::from_secs(60),
        "the moving row reaches the destination",
        || async {
            dest.execute(
                "UPDATE users SET name = 'tampered' WHERE user_id = $1",
                &[&moving],
            )
            .await
            .unwrap()
                == 1
        },
    )
    .await;
    idle.batch_execute("COMMIT").await.unwrap();
    let job = wait_job_end(info, tampered_job, Duration::from_secs(60)).await;
    assert_eq!(job.state, pgshard::rebalance::jobs::JobState::Cancelled);
    let error = job.error.unwrap_or_default();
    assert!(error.contains("does not match the source"), "{error}");
    assert_eq!(running.proxy.map.current().version, map.version);
    let left: i64 = dest
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the mismatched copy is removed");
    assert_eq!(proxy::count_users_directly(info).await, 1500);
    // After the job, DDL goes through again.
    client
        .simple_query("ALTER TABLE users ADD COLUMN nickname text")
        .await
        .unwrap();
    running.stop().await;
}

/// A pgshard process the test can kill -9.
struct ProxyProcess {
    child: std::process::Child,
    port: u16,
}

impl ProxyProcess {
    /// Starts `pgshard serve` on a copy of the cluster's config that runs jobs, with short
    /// leases so another start takes a killed one's job over quickly.
    async fn start(info: &ClusterInfo, dir: &std::path::Path) -> ProxyProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut config = pgshard::config::Config::load(&info.config_path).unwrap();
        config.proxy.listen = format!("127.0.0.1:{port}");
        config.proxy.node_name = "runner".into();
        config.catalog.poll_interval_ms = 300;
        config.rebalance.lease_ms = 1500;
        config.rebalance.slot_timeout_ms = 60_000;
        let path = dir.join(format!("runner-{port}.toml"));
        std::fs::write(&path, config.to_toml()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgshard"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgshard");
        let url = format!("postgres://app:app@127.0.0.1:{port}/app?sslmode=disable");
        eventually_within(Duration::from_secs(30), "pgshard accepts clients", || {
            let url = url.clone();
            async move { proxy::connect_url(&url).await.is_ok() }
        })
        .await;
        ProxyProcess { child, port }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL pgshard");
        let _ = self.child.wait();
        let _ = self.port;
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_during_copy_or_cut_over_is_taken_over_and_the_audit_holds() {
    let cluster = TestCluster::start(11, Strategy::Hash).await;
    let info = &cluster.info;
    let dir = tempfile::tempdir().unwrap();
    let map = publish(info, Strategy::Hash, &TEN).await;
    // The runner is a process of its own; the clients' proxy only fences and holds.
    let runner = ProxyProcess::start(info, dir.path()).await;
    let clients_proxy = start_proxy_with(info, |c| {
        c.rebalance.run_jobs = false;
        c.rebalance.hold_timeout_ms = 1000;
        c.rebalance.lease_ms = 1500;
    })
    .await;
    eventually_within(
        Duration::from_secs(10),
        "the proxy loads the map",
        || async { clients_proxy.proxy.map.current().version == map.version },
    )
    .await;
    let mut audit = seed_users(&clients_proxy, 800).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=3i64)
        .map(|id| tokio::spawn(writer(proxy::app_url(&clients_proxy), id, stop.clone())))
        .collect();
    let reader_task = tokio::spawn(reader(proxy::app_url(&clients_proxy), stop.clone()));
    let config = pgshard::config::Config::load(&info.config_path).unwrap();

    // 1. Killed during the copy: an open transaction on shard 1 keeps the slot of its step from
    //    being created, so the job is caught mid-copy.
    let blocker = proxy::shard(info, 1).await;
    blocker
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .unwrap();
    let job_a = pgshard::rebalance::cli::create_job(&config, &Target::AddShard(10))
        .await
        .unwrap();
    eventually_within(Duration::from_secs(60), "step 0 copies", || async {
        let job = job_state(info, job_a).await;
        job.state == pgshard::rebalance::jobs::JobState::Copying
            && job.steps[0].state != "pending"
            && job.steps[1].state == "pending"
    })
    .await;
    runner.kill();
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let runner = ProxyProcess::start(info, dir.path()).await;
    wait_job_done(info, job_a).await;

    // 2. Killed during the cut-over: a transaction left open on the clients' proxy makes every
    //    attempt wait with the hold requested; the runner dies in that window.
    let idle = proxy::connect(&clients_proxy).await;
    idle.batch_execute("BEGIN").await.unwrap();
    // Keyless: it reaches the shard being drained, so it holds a pass whatever the fence says.
    idle.query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap();
    let job_b = pgshard::rebalance::cli::create_job(&config, &Target::Drain(10))
        .await
        .unwrap();
    let catalog = proxy::catalog(info).await;
    eventually_within(Duration::from_secs(60), "a hold is requested", || async {
        catalog
            .query_opt(
                "SELECT 1 FROM rebalance_holds WHERE job_id = $1 AND released_at IS NULL \
                 AND abandoned_by IS NULL",
                &[&job_b],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    runner.kill();
    idle.batch_execute("COMMIT").await.unwrap();
    let _runner = ProxyProcess::start(info, dir.path()).await;
    let job = wait_job_done(info, job_b).await;
    let mut errors =
        stop_writers_after_switch(&clients_proxy, &job, &stop, writers, &mut audit).await;
    errors.extend(reader_task.await.unwrap().1);
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");

    let final_map = clients_proxy.proxy.map.current();
    assert_eq!(final_map.shards(), TEN);
    check_audit(info, &audit, &final_map).await;
    nothing_left_and_verified(info).await;
    clients_proxy.stop().await;
}

/// Waits until `proxy` runs on the map `job` switched to, lets the writers go on a moment, stops
/// them and adds what they wrote to `audit`; returns the errors they saw.
async fn stop_writers_after_switch(
    proxy: &pgshard::server::RunningProxy,
    job: &pgshard::rebalance::jobs::Job,
    stop: &std::sync::atomic::AtomicBool,
    writers: Vec<tokio::task::JoinHandle<(Audit, Vec<String>)>>,
    audit: &mut Audit,
) -> Vec<String> {
    eventually_within(
        Duration::from_secs(10),
        "the proxy loads the final map",
        || async { Some(proxy.proxy.map.current().version) == job.new_version },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut errors = Vec::new();
    for w in writers {
        let (a, e) = w.await.unwrap();
        audit.extend(a);
        errors.extend(e);
    }
    errors
}

/// No shard keeps a replication object of a job, and `pgshard verify` finds every row on its
/// shard.
async fn nothing_left_and_verified(info: &ClusterInfo) {
    for shard in ELEVEN {
        assert_eq!(
            replication_objects(info, shard).await,
            (0, 0, 0),
            "shard {shard} keeps replication objects"
        );
    }
    let (ok, out) = pgshard(&["verify", "--config", info.config_path.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// A runner that died between creating a step's slot and committing its copy leaves the slot,
/// idle, with no subscription and no rows on the destination; the slot's snapshot died with it.
/// The next runner starts that step's copy again from a new slot, under writes: the job
/// finishes, every acknowledged write is in exactly one place, and nothing of it stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_interrupted_after_its_slot_starts_again_from_a_new_slot() {
    let cluster = TestCluster::start(11, Strategy::Hash).await;
    let info = &cluster.info;
    let map = publish(info, Strategy::Hash, &TEN).await;
    let clients_proxy = start_proxy_with(info, |c| c.rebalance.run_jobs = false).await;
    eventually_within(
        Duration::from_secs(10),
        "the proxy loads the map",
        || async { clients_proxy.proxy.map.current().version == map.version },
    )
    .await;
    let mut audit = seed_users(&clients_proxy, 600).await;
    let config = pgshard::config::Config::load(&info.config_path).unwrap();
    let job = pgshard::rebalance::cli::create_job(&config, &Target::AddShard(10))
        .await
        .unwrap();
    let step = job_state(info, job).await.steps[0].clone();
    let source = proxy::shard(info, step.source).await;
    source
        .query_one(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("pgshard_j{job}_s{}", step.no)],
        )
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=3i64)
        .map(|id| tokio::spawn(writer(proxy::app_url(&clients_proxy), id, stop.clone())))
        .collect();
    let runner = start_proxy_with(info, |_| {}).await;
    let done = wait_job_done(info, job).await;
    let errors = stop_writers_after_switch(&clients_proxy, &done, &stop, writers, &mut audit).await;
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    let final_map = clients_proxy.proxy.map.current();
    assert_eq!(final_map.shards(), ELEVEN);
    check_audit(info, &audit, &final_map).await;
    nothing_left_and_verified(info).await;
    runner.stop().await;
    clients_proxy.stop().await;
}

/// A new shard that lacks a sharded table gets its definition and what the table uses (an enum
/// type, a domain, a function in a default: `pg_dump -t` leaves those out), then its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shard_gets_the_types_and_functions_its_tables_use() {
    use pgshard::config::ShardedTableConfig;
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let info = &cluster.info;
    let map = publish(info, Strategy::Hash, &[0, 1]).await;
    for shard in [0, 1] {
        proxy::shard(info, shard)
            .await
            .batch_execute(
                "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
                 CREATE DOMAIN posint AS integer CHECK (VALUE > 0); \
                 CREATE FUNCTION default_note() RETURNS text LANGUAGE sql IMMUTABLE \
                   AS $$SELECT 'noted'$$; \
                 CREATE TABLE moods (id bigint PRIMARY KEY, mood mood NOT NULL, \
                   score posint, note text DEFAULT default_note()); \
                 ALTER TABLE moods OWNER TO app",
            )
            .await
            .unwrap();
    }
    let running = start_proxy_with(info, |c| {
        c.sharded_tables.push(ShardedTableConfig {
            name: "moods".into(),
            key: "id".into(),
            key_type: None,
        })
    })
    .await;
    map_loaded(&running, map.version).await;
    let c = proxy::connect(&running).await;
    let rows: Vec<String> = (1..=200).map(|i| format!("({i}, 'happy', {i})")).collect();
    c.batch_execute(&format!(
        "INSERT INTO moods (id, mood, score) VALUES {}",
        rows.join(", ")
    ))
    .await
    .expect("insert rows");
    let config = pgshard::config::Config::load(&info.config_path).unwrap();
    let job_id = pgshard::rebalance::cli::create_job(&config, &Target::AddShard(2))
        .await
        .expect("the job is created");
    wait_job_done(info, job_id).await;
    let on_new: i64 = proxy::shard(info, 2)
        .await
        .query_one(
            "SELECT count(*) FROM moods WHERE mood = 'happy' AND note = 'noted'",
            &[],
        )
        .await
        .expect("the new shard has the table and its types")
        .get(0);
    assert!(on_new > 0, "no rows moved to the new shard");
    let total: i64 = c
        .query_one("SELECT count(*) FROM moods WHERE note = 'noted'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 200);
    // The new shard's rows take the types' rules and the default, as the others do.
    let key = (1..10_000i64)
        .find(|k| running.proxy.map.current().shard_for(*k) == 2 && *k > 200)
        .expect("a key of shard 2");
    c.execute("INSERT INTO moods (id, mood) VALUES ($1, 'ok')", &[&key])
        .await
        .expect("insert on the new shard");
    let bad = c
        .execute(
            "INSERT INTO moods (id, mood, score) VALUES ($1, 'ok', -1)",
            &[&(key + 1)],
        )
        .await;
    assert!(bad.is_err(), "the domain's check holds everywhere");
    running.stop().await;
}
