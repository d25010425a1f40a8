//! `[[lookups]]` (issue 15, part 6; scenario S2): `users.email` gets a lookup table kept by
//! pgshard in the write's transaction, and `WHERE email = …` reads it and reaches one shard.
//! One cluster of three hash shards for the binary. Writes through the simple and the extended
//! protocol (tokio-postgres) and psycopg 3 with its defaults; each read is checked against the
//! row written, and "one shard" is proven on the shards themselves: inside a block, only the
//! shard the read reached holds a lock on `users` (a scatter locks it on all three, which the
//! test also shows). Rolled-back and failed writes leave no lookup row; a duplicate email is a
//! unique violation; UPDATE of the email and DELETE keep reads right; writes pgshard cannot
//! follow are refused with 0A000; `pgshard lookup backfill` fills rows written around pgshard.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::proxy::{self, connect_url};
use common::script::run_script;
use common::TestCluster;
use pgshard::config::lookups::LookupConfig;
use pgshard::router::{ShardKey, ShardMap, Strategy};
use tokio_postgres::{Client, SimpleQueryMessage};

const LOOKUP: &str = "pgshard_lookup_users_email";

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn users_lookup() -> LookupConfig {
    LookupConfig {
        table: "users".into(),
        column: "email".into(),
    }
}

struct World {
    cluster: TestCluster,
    shards: BTreeMap<u32, Client>,
    map: ShardMap,
}

impl World {
    /// The key the lookup row of `email` names, read on every shard directly; `None` when no
    /// shard has one. Asserts the row sits on the shard the map gives the email.
    async fn lookup_key(&self, email: &str) -> Option<i64> {
        let home = self.map.shard_of(&ShardKey::Text(email.into()));
        let mut found = None;
        for (id, c) in &self.shards {
            let rows = c
                .query(
                    &format!("SELECT key FROM {LOOKUP} WHERE value = $1"),
                    &[&email],
                )
                .await
                .expect("read the lookup");
            if let Some(r) = rows.first() {
                assert_eq!(*id, home, "lookup row of {email} on shard {id}, not {home}");
                found = Some(r.get::<_, i64>(0));
            }
        }
        found
    }

    /// The shards where some other backend holds a lock on `users`.
    async fn shards_locking_users(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (id, c) in &self.shards {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'users'::regclass AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .expect("read pg_locks")
                .get(0);
            if n > 0 {
                out.push(*id);
            }
        }
        out
    }
}

/// `(user_id, name)` of the rows `sql` (a simple query) returns.
async fn simple_rows(c: &Client, sql: &str) -> Vec<(i64, String)> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).and_then(|v| v.parse().ok()).unwrap_or(-1),
                r.get(1).unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .collect()
}

async fn by_email(c: &Client, email: &str) -> Vec<(i64, String)> {
    c.query(
        "SELECT user_id, name FROM users WHERE email = $1",
        &[&email],
    )
    .await
    .unwrap_or_else(|e| panic!("read {email}: {e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Reads `email` inside a block, through both protocols, and returns the shards holding a
/// lock on `users` while the block is open.
async fn shards_reached(w: &World, c: &Client, email: &str) -> Vec<u32> {
    c.batch_execute("BEGIN").await.expect("BEGIN");
    let _ = by_email(c, email).await;
    let _ = simple_rows(
        c,
        &format!("SELECT user_id, name FROM users WHERE email = '{email}'"),
    )
    .await;
    let reached = w.shards_locking_users().await;
    c.batch_execute("COMMIT").await.expect("COMMIT");
    reached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_route_reads_by_email_to_one_shard_and_stay_right() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let mut shards = BTreeMap::new();
    // `users (user_id bigint PRIMARY KEY, name text, email text, created_at …)` comes with the
    // cluster (sql/app.sql).
    for id in cluster.info.shard_ids() {
        shards.insert(id, proxy::shard(&cluster.info, id).await);
    }
    let catalog = proxy::catalog(&cluster.info).await;
    let map = pgshard::catalog::load_map(&catalog)
        .await
        .expect("load the map")
        .expect("a map");
    // A row written before pgshard kept the lookup: only the backfill finds it.
    let old_owner = map.shard_of(&ShardKey::Int(5000));
    shards[&old_owner]
        .batch_execute("INSERT INTO users (user_id, name, email) VALUES (5000, 'old', 'old@x')")
        .await
        .expect("insert directly");
    // More of them than one backfill batch on each shard.
    for (id, c) in &shards {
        let rows: Vec<String> = (6000..10_000i64)
            .filter(|&k| map.shard_of(&ShardKey::Int(k)) == *id)
            .map(|k| format!("({k}, 'bulk', 'bulk{k}@x')"))
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO users (user_id, name, email) VALUES {}",
            rows.join(", ")
        ))
        .await
        .expect("insert bulk rows directly");
    }
    let w = World {
        cluster,
        shards,
        map,
    };
    let running = proxy::start_proxy_with(&w.cluster.info, |config| {
        config.lookups.push(users_lookup());
    })
    .await;
    for (id, c) in &w.shards {
        let exists: bool = c
            .query_one(&format!("SELECT to_regclass('{LOOKUP}') IS NOT NULL"), &[])
            .await
            .expect("regclass")
            .get(0);
        assert!(exists, "pgshard created the lookup table on shard {id}");
    }
    let c = connect_url(&proxy::app_url(&running))
        .await
        .expect("connect");

    // Writes: simple and extended protocol; many lookup rows live on another shard than
    // their user (two-phase commit).
    let mut cross = 0;
    for k in 1..=40i64 {
        let email = format!("u{k}@x");
        if k % 2 == 0 {
            c.simple_query(&format!(
                "INSERT INTO users (user_id, name, email) VALUES ({k}, 'n{k}', '{email}')"
            ))
            .await
            .unwrap_or_else(|e| panic!("simple insert {k}: {e}"));
        } else {
            c.execute(
                "INSERT INTO users (user_id, name, email) VALUES ($1, $2, $3)",
                &[&k, &format!("n{k}"), &email],
            )
            .await
            .unwrap_or_else(|e| panic!("extended insert {k}: {e}"));
        }
        assert_eq!(w.lookup_key(&email).await, Some(k), "lookup of {email}");
        if w.map.shard_of(&ShardKey::Text(email)) != w.map.shard_of(&ShardKey::Int(k)) {
            cross += 1;
        }
    }
    assert!(cross > 10, "only {cross} lookup rows on another shard");
    // A multi-row INSERT claims each row's email; a NULL email has none.
    c.simple_query(
        "INSERT INTO users (user_id, name, email) VALUES (41, 'n41', 'u41@x'), (42, 'n42', NULL), (43, 'n43', 'u43@x')",
    )
    .await
    .expect("multi-row insert");
    assert_eq!(w.lookup_key("u41@x").await, Some(41));
    assert_eq!(w.lookup_key("u43@x").await, Some(43));

    // Reads by email find the row, and reach only its shard.
    for k in [1i64, 2, 7, 20, 33, 41] {
        let email = format!("u{k}@x");
        let want = vec![(k, format!("n{k}"))];
        assert_eq!(by_email(&c, &email).await, want, "extended read {email}");
        let simple = format!("SELECT user_id, name FROM users WHERE email = '{email}'");
        assert_eq!(simple_rows(&c, &simple).await, want, "simple read {email}");
        let owner = w.map.shard_of(&ShardKey::Int(k));
        assert_eq!(shards_reached(&w, &c, &email).await, vec![owner], "{email}");
    }
    let both = simple_rows(
        &c,
        "SELECT user_id, name FROM users WHERE email IN ('u3@x', 'u4@x') ORDER BY user_id",
    )
    .await;
    assert_eq!(both, vec![(3, "n3".into()), (4, "n4".into())]);
    // The measure can fail: a keyless read without a lookup reaches every shard.
    c.batch_execute("BEGIN").await.expect("BEGIN");
    c.simple_query("SELECT count(*) FROM users WHERE name = 'n1'")
        .await
        .expect("scatter");
    assert_eq!(w.shards_locking_users().await.len(), 3);
    c.batch_execute("COMMIT").await.expect("COMMIT");

    // Rolled back or failed writes leave no lookup row.
    c.batch_execute("BEGIN").await.expect("BEGIN");
    c.execute(
        "INSERT INTO users (user_id, name, email) VALUES ($1, 'r', $2)",
        &[&100i64, &"rolled@x"],
    )
    .await
    .expect("insert in block");
    c.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    assert_eq!(w.lookup_key("rolled@x").await, None);
    assert!(by_email(&c, "rolled@x").await.is_empty());
    let e = c
        .simple_query("INSERT INTO users (user_id, name, email) VALUES (1, 'again', 'new@x')")
        .await
        .expect_err("user_id 1 exists");
    assert_eq!(sqlstate(&e), "23505", "{e}");
    assert_eq!(
        w.lookup_key("new@x").await,
        None,
        "failed insert left a lookup row"
    );

    // A duplicate email is a unique violation, in both protocols, and nothing is written.
    let e = c
        .simple_query("INSERT INTO users (user_id, name, email) VALUES (200, 'dup', 'u1@x')")
        .await
        .expect_err("duplicate email");
    assert_eq!(sqlstate(&e), "23505", "{e}");
    let e = c
        .execute(
            "INSERT INTO users (user_id, name, email) VALUES ($1, 'dup', $2)",
            &[&201i64, &"u2@x"],
        )
        .await
        .expect_err("duplicate email");
    assert_eq!(sqlstate(&e), "23505", "{e}");
    let e = c
        .simple_query(
            "INSERT INTO users (user_id, name, email) VALUES (202, 'a', 'twice@x'), (203, 'b', 'twice@x')",
        )
        .await
        .expect_err("duplicate email in one statement");
    assert_eq!(sqlstate(&e), "23505", "{e}");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM users WHERE user_id >= 200 AND user_id < 300",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(w.lookup_key("twice@x").await, None);

    // UPDATE of the email (keyed) moves it; the old value reads empty and can be taken again.
    c.execute(
        "UPDATE users SET email = $1 WHERE user_id = $2",
        &[&"moved@x", &1i64],
    )
    .await
    .expect("update email");
    assert_eq!(w.lookup_key("moved@x").await, Some(1));
    assert_eq!(by_email(&c, "moved@x").await, vec![(1, "n1".into())]);
    assert!(by_email(&c, "u1@x").await.is_empty());
    c.simple_query("INSERT INTO users (user_id, name, email) VALUES (300, 'taker', 'u1@x')")
        .await
        .expect("take a freed email");
    assert_eq!(by_email(&c, "u1@x").await, vec![(300, "taker".into())]);
    // DELETE leaves a stale lookup row that reads empty and gives way to the next owner.
    c.simple_query("DELETE FROM users WHERE user_id = 2")
        .await
        .expect("delete");
    assert!(by_email(&c, "u2@x").await.is_empty());
    c.execute(
        "INSERT INTO users (user_id, name, email) VALUES ($1, 'next', $2)",
        &[&301i64, &"u2@x"],
    )
    .await
    .expect("take a deleted email");
    assert_eq!(by_email(&c, "u2@x").await, vec![(301, "next".into())]);

    // Writes pgshard cannot keep the lookup right for are refused.
    for sql in [
        "UPDATE users SET email = lower(email) WHERE user_id = 3",
        "UPDATE users SET email = 'x@x' WHERE name = 'n3'",
        "INSERT INTO users (user_id, name, email) VALUES (400, 'c', 'c@x') ON CONFLICT DO NOTHING",
        "INSERT INTO users (name, email) VALUES ('c', 'c@x')",
        "COPY users FROM STDIN",
    ] {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
    }
    // Writes that do not touch the email are not.
    c.simple_query("UPDATE users SET name = 'renamed' WHERE email = 'u3@x'")
        .await
        .expect("update another column");
    assert_eq!(by_email(&c, "u3@x").await, vec![(3, "renamed".into())]);

    // The row written around pgshard is found by a scatter before the backfill…
    assert_eq!(by_email(&c, "old@x").await, vec![(5000, "old".into())]);
    assert_eq!(w.lookup_key("old@x").await, None);
    let mut config = pgshard::config::Config::load(&w.cluster.info.config_path).expect("config");
    config.lookups.push(users_lookup());
    let path = w.cluster.info.dir.join("lookups.toml");
    std::fs::write(&path, config.to_toml()).expect("write config");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshard"))
        .args(["lookup", "backfill", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run pgshard lookup backfill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("backfill done") && stdout.contains("shard"),
        "backfill: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …and through the lookup after it, on its shard alone.
    assert_eq!(w.lookup_key("old@x").await, Some(5000));
    assert_eq!(by_email(&c, "old@x").await, vec![(5000, "old".into())]);
    assert_eq!(shards_reached(&w, &c, "old@x").await, vec![old_owner]);
    // The invariant, checked whole on the shards: every row with an email has its key in the
    // email's lookup row, which sits on the email's shard.
    let mut lookup = std::collections::HashMap::new();
    for (id, s) in &w.shards {
        for r in s
            .query(&format!("SELECT value, key FROM {LOOKUP}"), &[])
            .await
            .expect("read lookup rows")
        {
            let (value, key): (String, i64) = (r.get(0), r.get(1));
            assert_eq!(w.map.shard_of(&ShardKey::Text(value.clone())), *id);
            lookup.insert(value, key);
        }
    }
    let mut rows = 0;
    for s in w.shards.values() {
        for r in s
            .query(
                "SELECT email, user_id FROM users WHERE email IS NOT NULL",
                &[],
            )
            .await
            .expect("read users")
        {
            let (email, key): (String, i64) = (r.get(0), r.get(1));
            assert_eq!(lookup.get(&email), Some(&key), "lookup of {email}");
            rows += 1;
        }
    }
    assert!(rows > 4000, "{rows} rows checked");

    psycopg_checks(&w, &running).await;
    running.stop().await;
}

/// psycopg 3 with its defaults: execute and executemany writes, reads by email past the
/// prepare threshold, a rolled-back block, a duplicate email.
async fn psycopg_checks(w: &World, running: &pgshard::server::RunningProxy) {
    let setup = serde_json::json!({ "proxy": proxy::app_url(running) });
    let setup_file = w.cluster.info.dir.join("lookups.json");
    std::fs::write(&setup_file, setup.to_string()).expect("write the setup file");
    let setup_arg = setup_file.display().to_string();
    let out = run_script("python/lookups_check.py", &[&setup_arg], &[]).await;
    assert!(out.stdout.contains("lookups passed"), "{}", out.stdout);
    for k in 1000..1020i64 {
        assert_eq!(w.lookup_key(&format!("py{k}@x")).await, Some(k), "py{k}");
    }
    assert_eq!(w.lookup_key("pyrolled@x").await, None);
}
