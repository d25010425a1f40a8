//! `REBALANCE move-schema`: a tenant schema with two tables (a foreign key, an index, serial ids)
//! moves whole to another shard while clients write to it and read from it through pgshard with
//! the extended protocol; afterwards every row is on the new shard exactly once, none is left on
//! the old one, the same connections reach the new shard, and SHOW SCHEMAS shows the placement.
//! Refusals: an unknown schema (3F000), a schema that is not a tenant, the shard it is on.
//! New tenants (`[tenants] schema_prefix`): `CREATE SCHEMA` places them on the shard with the
//! fewest tenants, and is refused while a job runs.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::answers::simple_rows;
use common::jobs::{job_state, newest_job, wait_job_done, wait_job_end};
use common::process::eventually_within;
use common::proxy::{self, connect_url};
use common::TestCluster;
use pgshard::config::schemas::ShardedSchemaConfig;
use pgshard::router::Strategy;
use tokio_postgres::Client;

/// Rows of an admin command's result, as text (NULL as "").
async fn rows(c: &Client, sql: &str) -> Vec<Vec<String>> {
    simple_rows(c, sql)
        .await
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
        .collect()
}

/// What one writer had acknowledged: account ids and entry ids.
#[derive(Default)]
struct Acked {
    accounts: Vec<i64>,
    entries: Vec<i64>,
    errors: Vec<String>,
}

/// Writes an account and an entry of it, then reads the entry back, in a loop until `stop`;
/// every statement through the extended protocol with parameters.
async fn write_until(c: &Client, writer: i32, stop: &AtomicBool, acked: &mut Acked) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let step = async {
            let account: i64 = c
                .query_one(
                    "INSERT INTO tenant_a.accounts (name) VALUES ($1) RETURNING id",
                    &[&format!("w{writer}-{n}")],
                )
                .await?
                .get(0);
            acked.accounts.push(account);
            let entry: i64 = c
                .query_one(
                    "INSERT INTO tenant_a.entries (account_id, amount) VALUES ($1, $2) RETURNING id",
                    &[&account, &n],
                )
                .await?
                .get(0);
            acked.entries.push(entry);
            let seen: i64 = c
                .query_one(
                    "SELECT count(*) FROM tenant_a.entries WHERE account_id = $1 AND amount = $2",
                    &[&account, &n],
                )
                .await?
                .get(0);
            Ok::<_, tokio_postgres::Error>(seen)
        };
        match step.await {
            Ok(1) => {}
            Ok(seen) => acked
                .errors
                .push(format!("writer {writer}: read {seen} entries of write {n}")),
            Err(e) => acked.errors.push(format!("writer {writer}: {e:?}")),
        }
    }
}

/// The body of note 1 of tenant_b, read through pgshard.
async fn note(c: &Client) -> String {
    c.query_one("SELECT body FROM tenant_b.notes WHERE id = $1", &[&1i32])
        .await
        .unwrap()
        .get(0)
}

/// Whether the shard holds schema tenant_a (1) or not (0).
async fn on_dest(c: &Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_a'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The ids of a tenant table on one shard.
async fn ids(c: &Client, table: &str) -> Vec<i64> {
    c.query(&format!("SELECT id FROM tenant_a.{table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_schema_moves_online_and_clients_follow_it() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let shards = info.shard_ids();
    let (from, to) = (shards[0], shards[1]);
    let running = proxy::start_proxy_with(info, |config| {
        config.sharded_schemas = vec![ShardedSchemaConfig {
            name: "tenant_a".into(),
            shard: from,
        }];
        // A cancelled job's slot gives up waiting for a transaction soon.
        config.rebalance.slot_timeout_ms = 500;
        config.tenants = Some(pgshard::config::schemas::TenantsConfig {
            schema_prefix: "tenant_".into(),
        });
        config.users.push(proxy::admin_user("secret"));
    })
    .await;
    for id in &shards {
        proxy::shard(info, *id)
            .await
            .batch_execute("GRANT CREATE ON DATABASE app TO app")
            .await
            .unwrap();
    }
    let c = proxy::connect(&running).await;
    c.batch_execute(
        "CREATE SCHEMA tenant_a;
         CREATE TABLE tenant_a.accounts (id bigserial PRIMARY KEY, name text NOT NULL);
         CREATE TABLE tenant_a.entries (id bigserial PRIMARY KEY,
             account_id bigint NOT NULL REFERENCES tenant_a.accounts (id), amount int NOT NULL);
         CREATE INDEX entries_account ON tenant_a.entries (account_id)",
    )
    .await
    .unwrap();
    for i in 0..200i32 {
        let account: i64 = c
            .query_one(
                "INSERT INTO tenant_a.accounts (name) VALUES ($1) RETURNING id",
                &[&format!("seed-{i}")],
            )
            .await
            .unwrap()
            .get(0);
        for a in 0..3i32 {
            c.execute(
                "INSERT INTO tenant_a.entries (account_id, amount) VALUES ($1, $2)",
                &[&account, &a],
            )
            .await
            .unwrap();
        }
    }
    let (src, dst) = (proxy::shard(info, from).await, proxy::shard(info, to).await);
    let seed_accounts = ids(&src, "accounts").await;
    let seed_entries = ids(&src, "entries").await;
    assert_eq!((seed_accounts.len(), seed_entries.len()), (200, 600));
    assert_eq!(
        on_dest(&dst).await,
        0,
        "the tenant lives on shard {from} only"
    );

    let admin = connect_url(&format!(
        "postgres://admin:secret@127.0.0.1:{}/pgshard?sslmode=disable",
        running.addr.port()
    ))
    .await
    .unwrap();
    assert_eq!(
        rows(&admin, "SHOW SCHEMAS").await,
        vec![vec![
            running.proxy.map.current().version.to_string(),
            "tenant_a".to_string(),
            from.to_string()
        ]]
    );
    // Refused before any job.
    let refusal = |sql: &'static str| {
        let admin = &admin;
        async move {
            let e = admin.simple_query(sql).await.expect_err(sql);
            let db = e.as_db_error().expect("a server error").clone();
            (db.code().code().to_string(), db.message().to_string())
        }
    };
    let (code, message) = refusal("REBALANCE move-schema nope 1").await;
    assert_eq!(code, "3F000", "{message}");
    assert!(
        message.contains("schema \"nope\" does not exist"),
        "{message}"
    );
    let same = format!("REBALANCE move-schema tenant_a {from}");
    let e = admin.simple_query(&same).await.expect_err("same shard");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("already lives on shard"), "{db:?}");
    let (code, message) = refusal("REBALANCE move-schema public 1").await;
    assert!(
        code == "55000" && message.contains("not a tenant schema"),
        "{code} {message}"
    );
    let (_, message) = refusal("REBALANCE move-schema tenant_a 9").await;
    assert!(message.contains("shard 9 is not registered"), "{message}");

    // Two clients write and read the tenant throughout the move, on connections opened before.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let client = proxy::connect(&running).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Acked::default();
            write_until(&client, w, &stop, &mut acked).await;
            (client, acked)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin
        .simple_query(&format!("REBALANCE move-schema tenant_a {to}"))
        .await
        .unwrap_or_else(|e| panic!("move-schema: {e:?}"));
    let job_id = newest_job(info).await;
    // A new tenant cannot be placed while a job runs (the job publishes the map it planned).
    let e = c
        .batch_execute("CREATE SCHEMA tenant_z")
        .await
        .expect_err("no new tenant during a job");
    let db = e.as_db_error().expect("a server error");
    assert!(
        db.code().code() == "0A000" && db.message().contains("new tenant"),
        "{db:?}"
    );
    // A second job while this one runs is refused as for every job.
    let (code, message) = refusal("REBALANCE move-schema tenant_a 1").await;
    assert!(
        code == "55000" && message.contains("still"),
        "{code} {message}"
    );
    let started = Instant::now();
    let job = wait_job_done(info, job_id).await;
    let version = job.new_version.expect("the job published a map");
    assert!(running.proxy.map.current().version >= version);
    assert_eq!(
        running.proxy.map.current().tenant_shard("tenant_a"),
        Some(to)
    );
    // The writers go on a while on the new placement, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut accounts: Vec<i64> = seed_accounts.clone();
    let mut entries: Vec<i64> = seed_entries.clone();
    let mut clients = Vec::new();
    for w in writers {
        let (client, acked) = w.await.unwrap();
        assert!(acked.errors.is_empty(), "{:?}", acked.errors);
        assert!(!acked.entries.is_empty());
        accounts.extend(acked.accounts);
        entries.extend(acked.entries);
        clients.push(client);
    }
    eprintln!(
        "move-schema: {} writes acknowledged during the test, longest hold {:?} ms, job took {} ms",
        entries.len() - seed_entries.len(),
        job.longest_hold_ms,
        started.elapsed().as_millis()
    );
    accounts.sort_unstable();
    entries.sort_unstable();
    assert_eq!(
        accounts.iter().collect::<BTreeSet<_>>().len(),
        accounts.len()
    );

    // Every acknowledged row on the new shard exactly once, none left on the old one.
    assert_eq!(ids(&dst, "accounts").await, accounts);
    assert_eq!(ids(&dst, "entries").await, entries);
    assert_eq!(on_dest(&src).await, 0, "the source copy is dropped");
    // The foreign key and the index came along.
    let definition = rows(
        &dst,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'tenant_a.entries'::regclass AND contype = 'f' \
         UNION ALL SELECT indexname FROM pg_indexes WHERE schemaname = 'tenant_a' AND indexname = 'entries_account'",
    )
    .await;
    assert_eq!(definition.len(), 2, "{definition:?}");

    // The same connections, never reconnected, now reach the new shard; serial ids go on.
    let port = info
        .shards()
        .iter()
        .find(|s| s.shard == Some(to))
        .expect("the destination")
        .port;
    for client in &clients {
        let served: i32 = client
            .query_one(
                "SELECT inet_server_port() FROM tenant_a.accounts WHERE id = $1",
                &[&accounts[0]],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(served, i32::from(port));
        let id: i64 = client
            .query_one(
                "INSERT INTO tenant_a.accounts (name) VALUES ($1) RETURNING id",
                &[&"after"],
            )
            .await
            .unwrap()
            .get(0);
        assert!(id > *accounts.last().unwrap(), "{id}");
    }
    assert_eq!(
        rows(&admin, "SHOW SCHEMAS").await,
        vec![vec![
            running.proxy.map.current().version.to_string(),
            "tenant_a".to_string(),
            to.to_string()
        ]]
    );
    let jobs = rows(&admin, "SHOW JOBS").await;
    assert!(
        jobs.iter().any(|r| r[0] == job_id.to_string()
            && r[1] == "done"
            && r[2] == format!("move schema tenant_a to shard {to}")
            && r[6] == "verified"),
        "{jobs:?}"
    );
    // Now on `to`, moving it there again is refused.
    let e = admin
        .simple_query(&format!("REBALANCE move-schema tenant_a {to}"))
        .await
        .expect_err("already moved");
    assert!(format!("{e:?}").contains("already lives on shard"), "{e:?}");

    // New tenants: each goes to the shard with the fewest tenants (ties: the lowest id), placed
    // before its CREATE SCHEMA runs; a schema without the prefix stays an ordinary one.
    let (low, high) = (from.min(to), from.max(to));
    let fewest = if to == low { high } else { low };
    c.batch_execute("CREATE SCHEMA tenant_b").await.unwrap();
    c.batch_execute("CREATE TABLE tenant_b.notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO tenant_b.notes VALUES ($1, $2)",
        &[&1i32, &"hello"],
    )
    .await
    .unwrap();
    assert_eq!(note(&c).await, "hello");
    c.batch_execute("CREATE SCHEMA tenant_c").await.unwrap();
    // Through the extended protocol too: the third new tenant evens the shards out.
    c.execute("CREATE SCHEMA tenant_d", &[]).await.unwrap();
    for (schema, shard) in [("tenant_b", fewest), ("tenant_c", low), ("tenant_d", high)] {
        for id in &shards {
            let n: i64 = proxy::shard(info, *id)
                .await
                .query_one(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
                    &[&schema],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, i64::from(*id == shard), "{schema} on shard {id}");
        }
    }
    let version = running.proxy.map.current().version.to_string();
    assert_eq!(
        rows(&admin, "SHOW SCHEMAS").await,
        [
            ("tenant_a", to),
            ("tenant_b", fewest),
            ("tenant_c", low),
            ("tenant_d", high)
        ]
        .map(|(s, n)| vec![version.clone(), s.to_string(), n.to_string()])
        .to_vec()
    );

    // A move cancelled while it copies (a transaction left open on the source keeps its slot
    // from being created) leaves the tenant where it was, whole, and drops the destination's copy.
    let other = if fewest == low { high } else { low };
    let blocker = proxy::shard(info, fewest).await;
    blocker
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    admin
        .simple_query(&format!("REBALANCE move-schema tenant_b {other}"))
        .await
        .unwrap();
    let cancelled = newest_job(info).await;
    eventually_within(Duration::from_secs(60), "the job copies", || async {
        job_state(info, cancelled).await.state == pgshard::rebalance::jobs::JobState::Copying
    })
    .await;
    let on = |id: u32| async move {
        proxy::shard(info, id)
            .await
            .query_one(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_b'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(
        on(other).await,
        1,
        "the destination holds the definition while copying"
    );
    admin
        .simple_query(&format!("CANCEL JOB {cancelled}"))
        .await
        .unwrap();
    let job = wait_job_end(info, cancelled, Duration::from_secs(60)).await;
    assert_eq!(
        job.state,
        pgshard::rebalance::jobs::JobState::Cancelled,
        "{:?}",
        job.error
    );
    assert_eq!((on(fewest).await, on(other).await), (1, 0));
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        running.proxy.map.current().tenant_shard("tenant_b"),
        Some(fewest)
    );
    assert_eq!(note(&c).await, "hello");
}
