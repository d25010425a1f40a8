//! Writes that reach several shards, checked directly on the shards: keyless UPDATE/DELETE,
//! multi-row INSERTs split per shard (RETURNING in VALUES order), reference tables (reads from
//! any shard, writes and DDL on all), DDL and maintenance on every shard, and atomicity when one
//! shard fails.

mod common;

use common::proxy::{self, connect, start_proxy_with};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::config::ShardedTableConfig;
use pgshard::router::{ShardKey, ShardMap, Strategy};
use tokio_postgres::{Client, SimpleQueryMessage};

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// Rows (first column) and the command's row count of a simple query.
async fn simple(c: &Client, sql: &str) -> Result<(Vec<String>, u64), tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    let mut rows = Vec::new();
    let mut count = None;
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(r.get(0).unwrap_or("NULL").to_string()),
            SimpleQueryMessage::CommandComplete(n) => count = Some(n),
            _ => {}
        }
    }
    Ok((rows, count.expect("a CommandComplete")))
}

/// One integer per shard, from the same query run directly on each.
async fn per_shard(info: &ClusterInfo, sql: &str) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for id in info.shard_ids() {
        let c = proxy::shard(info, id).await;
        let n: i64 = c.query_one(sql, &[]).await.expect(sql).get(0);
        out.push((id, n));
    }
    out
}

/// The sum over the shards of one integer, from the same query run directly on each.
async fn summed(info: &ClusterInfo, sql: &str) -> i64 {
    per_shard(info, sql).await.iter().map(|(_, n)| n).sum()
}

async fn index_count(info: &ClusterInfo, name: &str) -> Vec<i64> {
    per_shard(
        info,
        &format!("SELECT count(*) FROM pg_indexes WHERE indexname = '{name}'"),
    )
    .await
    .into_iter()
    .map(|(_, n)| n)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_shard_they_need() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let info = &cluster.info;
    let proxy = start_proxy_with(info, |c| {
        c.reference_tables = vec!["countries".into()];
        c.sharded_tables.push(ShardedTableConfig {
            name: "entries".into(),
            key: "owner_id".into(),
            key_type: None,
        });
    })
    .await;
    let map = proxy.proxy.map.current();
    let c = connect(&proxy).await;
    let shards = info.shard_ids().len();

    // Reference table: created, written and read on every shard, answered once.
    let (_, n) = simple(
        &c,
        "CREATE TABLE countries (code text PRIMARY KEY, name text)",
    )
    .await
    .expect("create reference table");
    assert_eq!(n, 0);
    let (rows, n) = simple(
        &c,
        "INSERT INTO countries (code, name) VALUES ('fr', 'France'), ('de', 'Germany') RETURNING code",
    )
    .await
    .expect("insert into reference table");
    assert_eq!(rows, ["fr", "de"]);
    assert_eq!(n, 2);
    for (id, n) in per_shard(info, "SELECT count(*) FROM countries").await {
        assert_eq!(n, 2, "countries on shard {id}");
    }
    let (_, n) = simple(
        &c,
        "UPDATE countries SET name = 'Deutschland' WHERE code = 'de'",
    )
    .await
    .expect("update reference table");
    assert_eq!(n, 1);
    for (id, n) in per_shard(
        info,
        "SELECT count(*) FROM countries WHERE name = 'Deutschland'",
    )
    .await
    {
        assert_eq!(n, 1, "updated copy on shard {id}");
    }
    let row = c
        .query_one("SELECT count(*) FROM countries", &[])
        .await
        .expect("read a reference table from any shard");
    assert_eq!(row.get::<_, i64>(0), 2);
    let e = c
        .batch_execute("INSERT INTO countries (code, name) VALUES ('it', now()::text)")
        .await
        .expect_err("a server-dependent value in a reference write is refused");
    assert_eq!(code(&e), "0A000");

    // Multi-row INSERT split per shard, RETURNING in VALUES order.
    let keys: Vec<i64> = (1..=20).rev().collect();
    let values: Vec<String> = keys
        .iter()
        .map(|k| format!("({k}, 'user {k}', 'fr')"))
        .collect();
    let (rows, n) = simple(
        &c,
        &format!(
            "INSERT INTO users (user_id, name, email) VALUES {} RETURNING user_id, name",
            values.join(", ")
        ),
    )
    .await
    .expect("split insert");
    assert_eq!(n, 20);
    let want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    assert_eq!(rows, want, "RETURNING follows VALUES order");
    let owners: std::collections::BTreeSet<u32> = keys.iter().map(|&k| map.shard_for(k)).collect();
    assert!(owners.len() > 2, "the keys span several shards");
    for &k in &keys {
        for id in info.shard_ids() {
            let direct = proxy::shard(info, id).await;
            let n: i64 = direct
                .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&k])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                n,
                i64::from(id == map.shard_for(k)),
                "user {k} on shard {id}"
            );
        }
    }
    // Generated keys on several shards are split the same way.
    let (rows, n) = simple(
        &c,
        "INSERT INTO users (name) VALUES ('g1'), ('g2'), ('g3'), ('g4'), ('g5'), ('g6'), ('g7'), ('g8') RETURNING user_id",
    )
    .await
    .expect("insert with generated keys");
    assert_eq!((rows.len(), n), (8, 8));
    for k in &rows {
        let k: i64 = k.parse().unwrap();
        let direct = proxy::shard(info, map.shard_for(k)).await;
        let n: i64 = direct
            .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&k])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "generated key {k} on its shard");
    }
    simple(&c, "DELETE FROM users WHERE name LIKE 'g%'")
        .await
        .expect("keyless delete");
    // A NULL shard key is Postgres's not-null violation (23502), however the row carries it:
    // a literal, a parameter bound in text or binary, an element of an UNNEST key array. No row
    // of such a statement lands anywhere, and in a block it fails the block as Postgres does.
    let null_keys = [
        "INSERT INTO users (user_id, name) VALUES (NULL, 'n1')".to_string(),
        "INSERT INTO users (user_id, name) VALUES (201, 'n1'), (NULL::bigint, 'n2')".to_string(),
    ];
    for sql in &null_keys {
        let e = simple(&c, sql).await.expect_err(sql);
        assert_eq!(code(&e), "23502", "{sql}: {e}");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(
            db.message(),
            r#"null value in column "user_id" of relation "users" violates not-null constraint"#
        );
    }
    let none: Option<i64> = None;
    let e = c
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, $2)",
            &[&none, &"n3"],
        )
        .await
        .expect_err("binary NULL key");
    assert_eq!(code(&e), "23502", "{e}");
    let text_none: Option<&str> = None;
    let e = c
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1::text::bigint, 'n4'), (202, 'n5')",
            &[&text_none],
        )
        .await
        .expect_err("text NULL key");
    assert_eq!(code(&e), "23502", "{e}");
    let keys: Vec<Option<i64>> = vec![Some(203), None, Some(204)];
    let names = vec!["n6", "n7", "n8"];
    let e = c
        .execute(
            "INSERT INTO users (user_id, name) SELECT * FROM unnest($1::bigint[], $2::text[])",
            &[&keys, &names],
        )
        .await
        .expect_err("NULL in the UNNEST key array");
    assert_eq!(code(&e), "23502", "{e}");
    c.batch_execute("BEGIN").await.unwrap();
    simple(&c, "INSERT INTO users (user_id, name) VALUES (205, 'n9')")
        .await
        .expect("insert in the block");
    let e = c
        .execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'n10')",
            &[&none],
        )
        .await
        .expect_err("NULL key in a block");
    assert_eq!(code(&e), "23502", "{e}");
    let e = simple(&c, "SELECT 1").await.expect_err("the block failed");
    assert_eq!(code(&e), "25P02", "{e}");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let landed: i64 = summed(
        info,
        "SELECT count(*) FROM users WHERE name LIKE 'n%' OR user_id BETWEEN 201 AND 205",
    )
    .await;
    assert_eq!(landed, 0, "rows of refused or rolled back inserts landed");
    // A SELECT over its one keyless UPDATE or DELETE CTE runs whole on every shard, merged as
    // over a table; its shards commit together.
    simple(
        &c,
        "INSERT INTO users (user_id, name) SELECT g, CASE WHEN g % 3 = 0 THEN 'cte-old' ELSE 'cte-new' END FROM generate_series(301, 360) g",
    )
    .await
    .expect("rows for the CTE writes");
    let old: Vec<i64> = (301..=360).filter(|g| g % 3 == 0).collect();
    let (rows, _) = simple(
        &c,
        "WITH d AS (DELETE FROM users WHERE name = 'cte-old' RETURNING *) SELECT count(*) FROM d",
    )
    .await
    .expect("count of a keyless delete");
    assert_eq!(rows, vec![old.len().to_string()]);
    let left: i64 = summed(
        info,
        "SELECT count(*) FROM users WHERE user_id BETWEEN 301 AND 360",
    )
    .await;
    assert_eq!(left, 60 - old.len() as i64);
    // The extended protocol, a binary parameter, ORDER BY and LIMIT over the returned rows.
    let touched: Vec<i64> = c
        .query(
            "WITH d AS (UPDATE users SET email = 'cte' WHERE name = $1 AND user_id % 7 = 0 RETURNING user_id) \
             SELECT user_id FROM d ORDER BY user_id DESC LIMIT 3",
            &[&"cte-new"],
        )
        .await
        .expect("update through a CTE")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sevens: Vec<i64> = (301..=360)
        .rev()
        .filter(|g| g % 3 != 0 && g % 7 == 0)
        .collect();
    assert_eq!(touched, sevens[..3]);
    let emailed: i64 = summed(info, "SELECT count(*) FROM users WHERE email = 'cte'").await;
    assert_eq!(
        emailed,
        sevens.len() as i64,
        "the LIMIT does not stop the write"
    );
    // One shard failing fails every shard: nothing of the write stays.
    let e = simple(
        &c,
        "WITH d AS (UPDATE users SET email = CASE WHEN user_id = 302 THEN (1 / (user_id - 302))::text ELSE 'half' END \
         WHERE name = 'cte-new' RETURNING 1) SELECT count(*) FROM d",
    )
    .await
    .expect_err("division by zero on one shard");
    assert_eq!(code(&e), "22012", "{e}");
    let half: i64 = summed(info, "SELECT count(*) FROM users WHERE email = 'half'").await;
    assert_eq!(half, 0, "a shard kept its part of a failed write");
    // In a block: the block sees it, and ROLLBACK undoes it everywhere.
    c.batch_execute("BEGIN").await.unwrap();
    let (rows, _) = simple(
        &c,
        "WITH d AS (DELETE FROM users WHERE name = 'cte-new' RETURNING user_id) SELECT count(*), max(user_id) FROM d",
    )
    .await
    .expect("delete in a block");
    let new_count = 60 - old.len();
    assert_eq!(rows, vec![new_count.to_string()]);
    c.batch_execute("ROLLBACK").await.unwrap();
    let back: i64 = summed(info, "SELECT count(*) FROM users WHERE name = 'cte-new'").await;
    assert_eq!(back, new_count as i64);
    simple(&c, "DELETE FROM users WHERE user_id BETWEEN 301 AND 360")
        .await
        .expect("clean up");
    // A duplicate key on one shard fails the whole INSERT: no shard keeps its rows.
    let e = c
        .batch_execute("INSERT INTO users (user_id, name) VALUES (101, 'a'), (102, 'b'), (103, 'c'), (104, 'd'), (5, 'dup')")
        .await
        .expect_err("duplicate key");
    assert_eq!(code(&e), "23505");
    let left: i64 = summed(info, "SELECT count(*) FROM users WHERE user_id > 100").await;
    assert_eq!(left, 0, "the split INSERT rolled back everywhere");
    // Prepared (extended protocol) multi-row INSERTs spanning shards are split the same way,
    // each shard getting its own parameters, RETURNING in VALUES order.
    let a = 1001i64;
    let b = (1002..2000i64)
        .find(|k| map.shard_for(*k) != map.shard_for(a))
        .unwrap();
    let rows = c
        .query(
            "INSERT INTO users (user_id, name) VALUES ($1, $3), ($2, 'y') RETURNING user_id, name",
            &[&b, &a, &"x"],
        )
        .await
        .expect("extended-protocol split");
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(b, "x".to_string()), (a, "y".to_string())]);
    for (k, name) in [(a, "y"), (b, "x")] {
        let direct = proxy::shard(info, map.shard_for(k)).await;
        let found: Vec<String> = direct
            .query("SELECT name FROM users WHERE user_id = $1", &[&k])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(found, vec![name.to_string()], "key {k} on its shard");
    }
    let n = c
        .execute("DELETE FROM users WHERE user_id IN ($1, $2)", &[&a, &b])
        .await
        .expect("prepared delete over two shards");
    assert_eq!(n, 2);
    // ON CONFLICT DO NOTHING with RETURNING (Rails' insert_all) over several shards: the rows
    // inserted come back in VALUES order, the conflicting ones (with a row already there or an
    // earlier row of the same statement) skipped, as in one Postgres; both protocols.
    let sql = "INSERT INTO users (user_id, name) VALUES (201, 'n1'), (3, 'dup'), (202, 'n2'), (201, 'again'), (17, 'dup'), (203, 'n3') ON CONFLICT DO NOTHING RETURNING user_id, name";
    let (rows, n) = simple(&c, sql).await.expect(sql);
    assert_eq!(
        (rows, n),
        (vec!["201".into(), "202".into(), "203".into()], 3),
        "{sql}"
    );
    let sql = "INSERT INTO users (user_id, name) VALUES ($1, 'e1'), ($2, $4), ($3, 'e2'), ($1, $4) ON CONFLICT (user_id) DO NOTHING RETURNING user_id, name";
    let rows = c
        .query(sql, &[&301i64, &5i64, &302i64, &"dup"])
        .await
        .expect(sql);
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![(301, "e1".to_string()), (302, "e2".to_string())],
        "{sql}"
    );
    let names: Vec<String> = c
        .query(
            "SELECT name FROM users WHERE user_id IN (3, 5, 17, 201, 202, 203, 301, 302) ORDER BY user_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        ["user 3", "user 5", "user 17", "n1", "n2", "n3", "e1", "e2"]
    );
    simple(&c, "DELETE FROM users WHERE user_id > 200")
        .await
        .expect("delete the inserted rows");

    // Reads joining the sharded table with the reference table.
    let row = c
        .query_one(
            "SELECT c.name FROM users u JOIN countries c ON c.code = u.email WHERE u.user_id = 7",
            &[],
        )
        .await
        .expect("join with a reference table");
    assert_eq!(row.get::<_, String>(0), "France");

    // Keyless and multi-key UPDATE/DELETE.
    let (_, n) = simple(
        &c,
        "UPDATE users SET name = 'renamed' WHERE name LIKE 'user %'",
    )
    .await
    .expect("keyless update");
    assert_eq!(n, 20);
    let renamed: i64 = summed(info, "SELECT count(*) FROM users WHERE name = 'renamed'").await;
    assert_eq!(renamed, 20);
    let (_, n) = simple(
        &c,
        "UPDATE users SET name = 'few' WHERE user_id IN (1, 2, 3, 4, 5)",
    )
    .await
    .expect("multi-key update");
    assert_eq!(n, 5);
    let (mut rows, n) = simple(&c, "DELETE FROM users WHERE user_id > 15 RETURNING user_id")
        .await
        .expect("keyless delete with RETURNING");
    rows.sort_by_key(|r| r.parse::<i64>().unwrap());
    assert_eq!(
        (rows, n),
        (
            vec!["16", "17", "18", "19", "20"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
            5
        )
    );
    assert_eq!(proxy::count_users_directly(info).await, 15);

    // DDL fan-out: every shard gets the index, atomically.
    simple(&c, "CREATE INDEX users_name_idx ON users (name)")
        .await
        .expect("create index");
    assert_eq!(index_count(info, "users_name_idx").await, vec![1; shards]);
    // One shard already has the name: the statement fails and no shard keeps it.
    let third = info.shard_ids()[3];
    proxy::shard(info, third)
        .await
        .batch_execute("CREATE INDEX users_email_idx ON users (email)")
        .await
        .unwrap();
    let e = c
        .batch_execute("CREATE INDEX users_email_idx ON users (email)")
        .await
        .expect_err("the name exists on one shard");
    assert_eq!(code(&e), "42P07");
    let counts = index_count(info, "users_email_idx").await;
    assert_eq!(
        counts.iter().sum::<i64>(),
        1,
        "only the pre-existing index: {counts:?}"
    );
    proxy::shard(info, third)
        .await
        .batch_execute("DROP INDEX users_email_idx")
        .await
        .unwrap();
    // Statements that refuse transaction blocks run on each shard on their own.
    simple(
        &c,
        "CREATE INDEX CONCURRENTLY users_email_idx ON users (email)",
    )
    .await
    .expect("create index concurrently");
    assert_eq!(index_count(info, "users_email_idx").await, vec![1; shards]);
    simple(&c, "VACUUM ANALYZE users").await.expect("vacuum");
    c.execute("DROP INDEX users_name_idx", &[])
        .await
        .expect("drop index through the extended protocol");
    assert_eq!(index_count(info, "users_name_idx").await, vec![0; shards]);
    simple(&c, "TRUNCATE users").await.expect("truncate");
    assert_eq!(proxy::count_users_directly(info).await, 0);

    // INSERTs that name no columns: the table's columns are read from the catalog and written
    // in, so each row goes where its key (the first column) says, in both protocols.
    let (_, n) = simple(&c, "INSERT INTO users VALUES (301, 'u301', 'e301')")
        .await
        .expect("one row, no column list");
    assert_eq!(n, 1);
    let (rows, n) = simple(
        &c,
        "INSERT INTO users VALUES (302, 'u302'), (303, 'u303'), (304, 'u304') RETURNING user_id",
    )
    .await
    .expect("rows of several shards, no column list");
    assert_eq!(
        (rows, n),
        (vec!["302".into(), "303".into(), "304".into()], 3)
    );
    let (_, n) = simple(
        &c,
        "INSERT INTO users SELECT g, 'g' || g FROM generate_series(305, 312) g",
    )
    .await
    .expect("INSERT … SELECT, no column list");
    assert_eq!(n, 8);
    for (key, name) in [(313_i64, "bound"), (314, "bound too")] {
        let n = c
            .execute("INSERT INTO users VALUES ($1, $2)", &[&key, &name])
            .await
            .expect("bound parameters, no column list");
        assert_eq!(n, 1);
    }
    for key in 301..=314_i64 {
        let owner = map.shard_for(key);
        for id in info.shard_ids() {
            let n: i64 = proxy::shard(info, id)
                .await
                .query_one("SELECT count(*) FROM users WHERE user_id = $1", &[&key])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, i64::from(id == owner), "user {key} on shard {id}");
        }
    }
    let row = c
        .query_one("SELECT name, email FROM users WHERE user_id = 301", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("u301".to_string(), "e301".to_string())
    );
    // A column added in a block is seen by the block, and gone after its ROLLBACK.
    c.batch_execute("BEGIN; ALTER TABLE users ADD COLUMN nick text")
        .await
        .expect("DDL in a block");
    c.execute(
        "INSERT INTO users VALUES ($1, 'n', 'e', now(), 'nick')",
        &[&315_i64],
    )
    .await
    .expect("the block's new column is listed");
    c.batch_execute("ROLLBACK").await.unwrap();
    let e = c
        .batch_execute("INSERT INTO users VALUES (316, 'n', 'e', now(), 'nick')")
        .await
        .expect_err("more values than columns");
    assert_eq!(code(&e), "42601");
    // DEFAULT VALUES (an ORM creating a row with every default): the key is given by pgshard,
    // as for any INSERT that leaves it out; the row lands on that key's shard.
    let (rows, _) = simple(&c, "INSERT INTO users DEFAULT VALUES RETURNING user_id")
        .await
        .expect("DEFAULT VALUES, simple");
    let mut generated: Vec<i64> = rows.iter().map(|r| r.parse().unwrap()).collect();
    let row = c
        .query_one(
            "INSERT INTO users DEFAULT VALUES RETURNING user_id, name",
            &[],
        )
        .await
        .expect("DEFAULT VALUES, extended");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    generated.push(row.get(0));
    assert_eq!(generated.len(), 2);
    for key in &generated {
        let n: i64 = proxy::shard(info, map.shard_for(*key))
            .await
            .query_one(
                "SELECT count(*) FROM users WHERE user_id = $1 AND name IS NULL",
                &[key],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "generated key {key} on its shard");
    }
    c.execute("DELETE FROM users WHERE user_id = ANY($1)", &[&generated])
        .await
        .unwrap();
    // `SELECT *` of one table gives as many values as that table has columns.
    let (_, n) = simple(&c, "INSERT INTO users SELECT * FROM users WHERE false")
        .await
        .expect("SELECT * of one table, no column list");
    assert_eq!(n, 0);
    c.batch_execute(
        "CREATE TABLE users_copy (user_id bigint, name text, email text, \
         created_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO users_copy VALUES (320, 'c320', 'copied'), (321, 'c321', 'copied')",
    )
    .await
    .expect("an unsharded table, filled without a column list");
    let (_, n) = simple(&c, "INSERT INTO users SELECT * FROM users_copy")
        .await
        .expect("SELECT * of an unsharded table into the sharded one");
    assert_eq!(n, 2);
    for key in [320_i64, 321] {
        let row = proxy::shard(info, map.shard_for(key))
            .await
            .query_one("SELECT name, email FROM users WHERE user_id = $1", &[&key])
            .await
            .expect("the copied row on its key's shard");
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            (format!("c{key}"), "copied".to_string())
        );
    }
    c.batch_execute("DROP TABLE users_copy; DELETE FROM users WHERE user_id IN (320, 321)")
        .await
        .unwrap();
    let e = c
        .batch_execute("INSERT INTO users SELECT * FROM users WHERE user_id = 301")
        .await
        .expect_err("the same key again");
    assert_eq!(code(&e), "23505");
    let e = c
        .batch_execute(
            "INSERT INTO users SELECT * FROM users u JOIN countries c ON c.code = u.email",
        )
        .await
        .expect_err("a row width pgshard cannot know without reading two tables");
    assert_eq!(code(&e), "0A000");
    assert_eq!(summed(info, "SELECT count(*) FROM users").await, 14);
    reference_row_locks(info, &proxy, &map).await;
    ordered_claims_lock_what_they_return(&proxy).await;
    conditional_upserts_return_their_rows(info, &proxy).await;
    updates_writing_the_key_it_has(info, &proxy).await;
    simple(&c, "DROP TABLE countries")
        .await
        .expect("drop reference table");
    for (id, n) in per_shard(
        info,
        "SELECT count(*) FROM pg_tables WHERE tablename = 'countries'",
    )
    .await
    {
        assert_eq!(n, 0, "countries dropped on shard {id}");
    }
}

/// Row locks on a reference table behave as on one Postgres for blocks that started on different
/// shards: a job claim (`… LIMIT 1 FOR UPDATE SKIP LOCKED`) of a second worker skips the row the
/// first one holds, and an UPDATE takes the row on the lead shard before it touches any other
/// copy, so a second writer queues there instead of deadlocking across shards.
async fn reference_row_locks(
    info: &ClusterInfo,
    proxy: &pgshard::server::RunningProxy,
    map: &ShardMap,
) {
    let lead = info.shard_ids().into_iter().min().expect("shards");
    let shard_of = |k: i64| map.shard_of(&ShardKey::Int(k));
    let key_a = (1..1000)
        .find(|k| shard_of(*k) != lead)
        .expect("a key off the lead");
    let key_b = (1..1000)
        .find(|k| ![lead, shard_of(key_a)].contains(&shard_of(*k)))
        .expect("a key on a third shard");
    let setup = connect(proxy).await;
    setup
        .batch_execute(
            "DELETE FROM countries; INSERT INTO countries (code, name) SELECT 'j' || g, 'new' FROM generate_series(1, 5) g",
        )
        .await
        .expect("jobs in the reference table");
    let claim =
        "SELECT code FROM countries WHERE name = $1 ORDER BY code LIMIT 1 FOR UPDATE SKIP LOCKED";
    let (a, b) = (connect(proxy).await, connect(proxy).await);
    for (worker, key) in [(&a, key_a), (&b, key_b)] {
        worker.batch_execute("BEGIN").await.unwrap();
        worker
            .query("SELECT count(*) FROM users WHERE user_id = $1", &[&key])
            .await
            .expect("the block starts on the key's shard");
    }
    let first: String = a.query_one(claim, &[&"new"]).await.expect("claim").get(0);
    let second: String = b.query_one(claim, &[&"new"]).await.expect("claim").get(0);
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("j1", "j2"),
        "the second worker skips the row the first holds"
    );
    b.batch_execute("ROLLBACK").await.unwrap();

    // A writer queued behind a lock on the lead shard has not touched the other copies.
    let holder = proxy::shard(info, lead).await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM countries WHERE code = 'j5' FOR UPDATE")
        .await
        .unwrap();
    let update = a.execute(
        "UPDATE countries SET name = 'taken' WHERE code = $1",
        &[&"j5"],
    );
    let observe = async {
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE countries SET name = ''taken''%'";
        let mut waited = false;
        // Outside a block: inside one, pg_stat_activity keeps its first snapshot.
        let watcher = proxy::shard(info, lead).await;
        // Up to 30 s on a loaded machine.
        for _ in 0..3000 {
            let n: i64 = watcher.query_one(waiting, &[]).await.unwrap().get(0);
            if n == 1 {
                waited = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(waited, "the UPDATE waits for the row on the lead shard");
        for id in info.shard_ids().into_iter().filter(|id| *id != lead) {
            let other = proxy::shard(info, id).await;
            other
                .batch_execute(
                    "BEGIN; SELECT 1 FROM countries WHERE code = 'j5' FOR UPDATE NOWAIT; ROLLBACK",
                )
                .await
                .unwrap_or_else(|e| {
                    panic!("shard {id}: the row is free while the lead's is taken: {e}")
                });
        }
        holder.batch_execute("COMMIT").await.unwrap();
    };
    let (updated, ()) = tokio::join!(update, observe);
    assert_eq!(updated.expect("the UPDATE once the lead's row is free"), 1);
    a.batch_execute("COMMIT").await.expect("commit");
    for (id, n) in per_shard(
        info,
        "SELECT count(*) FROM countries WHERE name = 'taken' AND code = 'j5'",
    )
    .await
    {
        assert_eq!(n, 1, "the update on shard {id}");
    }
}

/// A job claim over every shard with an ORDER BY (`… ORDER BY k LIMIT n FOR UPDATE SKIP LOCKED`)
/// locks, in a block, the rows it returns and no others (OFFSET's rows too, as one Postgres), so
/// a second worker finds every other row; in both protocols, a named prepared statement included.
async fn ordered_claims_lock_what_they_return(proxy: &pgshard::server::RunningProxy) {
    let setup = connect(proxy).await;
    setup
        .batch_execute(
            "INSERT INTO users (user_id, name) SELECT g, 'job' FROM generate_series(1001, 1030) g",
        )
        .await
        .expect("jobs over every shard");
    let (a, b) = (connect(proxy).await, connect(proxy).await);
    let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<i64>>();
    let free = || async {
        b.batch_execute("BEGIN").await.unwrap();
        let rows = b
            .query(
                "SELECT user_id FROM users WHERE name = $1 ORDER BY user_id LIMIT 40 FOR UPDATE SKIP LOCKED",
                &[&"job"],
            )
            .await
            .expect("second worker's claim");
        b.batch_execute("ROLLBACK").await.unwrap();
        ids(rows)
    };
    a.batch_execute("BEGIN").await.unwrap();
    let claim = a
        .prepare("SELECT user_id FROM users WHERE name = $1 ORDER BY user_id LIMIT $2 FOR UPDATE SKIP LOCKED")
        .await
        .expect("prepare the claim");
    let got = ids(a.query(&claim, &[&"job", &2i64]).await.expect("claim"));
    assert_eq!(got, [1001, 1002]);
    assert_eq!(
        free().await,
        (1003..=1030).collect::<Vec<i64>>(),
        "only the two claimed rows are locked"
    );
    // The block's own locks are not skipped (as on one Postgres); one more row is locked.
    let got = ids(a
        .query(&claim, &[&"job", &3i64])
        .await
        .expect("claim again"));
    assert_eq!(got, [1001, 1002, 1003], "the named statement runs again");
    // OFFSET's rows are locked too; the simple protocol alike.
    let msgs = a
        .simple_query("SELECT user_id FROM users WHERE name = 'job' ORDER BY user_id DESC LIMIT 2 OFFSET 1 FOR UPDATE")
        .await
        .expect("simple claim with OFFSET");
    let got: Vec<i64> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    assert_eq!(got, [1029, 1028]);
    assert_eq!(
        free().await,
        (1004..=1027).collect::<Vec<i64>>(),
        "rows 1001-1003 and 1028-1030 locked"
    );
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(free().await.len(), 30, "the commit released them");
    setup
        .batch_execute("DELETE FROM users WHERE name = 'job'")
        .await
        .unwrap();
}

/// `INSERT … ON CONFLICT (key) DO UPDATE … WHERE … RETURNING` over several shards (SQLAlchemy's
/// `on_conflict_do_update(where=…)`) returns the rows one Postgres returns — inserted, or updated
/// where the WHERE held — in VALUES order, in both protocols; a conflict target without the key,
/// or a key given twice, is refused.
async fn conditional_upserts_return_their_rows(
    info: &ClusterInfo,
    proxy: &pgshard::server::RunningProxy,
) {
    let c = connect(proxy).await;
    c.batch_execute(
        "INSERT INTO users (user_id, name) SELECT g, 'm' FROM generate_series(2001, 2006) g",
    )
    .await
    .expect("rows to upsert over");
    let upsert = "INSERT INTO users (user_id, name) VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8) ON CONFLICT (user_id) DO UPDATE SET name = excluded.name WHERE users.name < excluded.name RETURNING user_id, name";
    let rows = c
        .query(
            upsert,
            &[
                &2001i64, &"t", &2002i64, &"a", &2010i64, &"x", &2003i64, &"z",
            ],
        )
        .await
        .expect("extended upsert");
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [(2001, "t".into()), (2010, "x".into()), (2003, "z".into())],
        "updated where the WHERE held, inserted, in VALUES order"
    );
    let msgs = c
        .simple_query("INSERT INTO users (user_id, name) VALUES (2004, 'a'), (2005, 'q'), (2006, 'b') ON CONFLICT (user_id) DO UPDATE SET name = excluded.name WHERE users.name < excluded.name RETURNING user_id")
        .await
        .expect("simple upsert");
    let got: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["2005"], "only 'q' sorts after 'm'");
    let count = |name: &str| {
        format!(
            "SELECT count(*) FROM users WHERE user_id BETWEEN 2001 AND 2010 AND name = '{name}'"
        )
    };
    assert_eq!(
        summed(info, &count("m")).await,
        3,
        "2002, 2004 and 2006 kept"
    );
    assert_eq!(summed(info, &count("x")).await, 1, "2010 inserted once");
    for (sql, why) in [
        ("INSERT INTO users (user_id, name) VALUES (2001, 'a'), (2002, 'b') ON CONFLICT (name) DO UPDATE SET name = 'c' WHERE users.name < 'z' RETURNING user_id", "a conflict target without the key"),
        ("INSERT INTO users (user_id, name) VALUES (2001, 'a'), (2002, 'b'), (2001, 'c') ON CONFLICT (user_id) DO UPDATE SET name = 'c' WHERE users.name < 'z' RETURNING user_id", "a key given twice"),
    ] {
        let e = c.batch_execute(sql).await.expect_err(why);
        assert_eq!(code(&e), "0A000", "{why}");
    }
    c.batch_execute("DELETE FROM users WHERE user_id BETWEEN 2001 AND 2010")
        .await
        .unwrap();
}

/// An UPDATE that sets the shard key to the value the row already has — Django's `save()`
/// writes every column, a table's foreign-key shard key among them — runs as on one Postgres,
/// in both protocols and in a block: the rows it would move are counted first over every shard
/// (none), then it runs on the value's shard. One that would move a row is refused, naming the
/// key, and changes nothing; one whose WHERE pins the key to that value routes by it at once.
async fn updates_writing_the_key_it_has(info: &ClusterInfo, proxy: &pgshard::server::RunningProxy) {
    let c = connect(proxy).await;
    c.batch_execute(
        "CREATE TABLE entries (id bigint PRIMARY KEY, owner_id bigint NOT NULL, amount int)",
    )
    .await
    .expect("create entries");
    let rows: Vec<String> = (1..=40).map(|g| format!("({g}, {}, {g})", g % 7)).collect();
    c.batch_execute(&format!(
        "INSERT INTO entries (id, owner_id, amount) VALUES {}",
        rows.join(", ")
    ))
    .await
    .expect("fill entries");
    let (_, n) = simple(
        &c,
        "UPDATE entries SET owner_id = 3, amount = 100 WHERE id = 10",
    )
    .await
    .expect("the key written with its own value (simple protocol)");
    assert_eq!(n, 1);
    let n = c
        .execute(
            "UPDATE entries SET owner_id = $1, amount = $2 WHERE entries.id = $3",
            &[&5i64, &200i32, &12i64],
        )
        .await
        .expect("the key written with its own value (parameters)");
    assert_eq!(n, 1);
    let n = c
        .execute(
            "UPDATE entries SET owner_id = $1, amount = $2 WHERE id = $3",
            &[&5i64, &0i32, &999i64],
        )
        .await
        .expect("no row matched");
    assert_eq!(n, 0);
    let e = c
        .execute(
            "UPDATE entries SET owner_id = $1 WHERE id = $2",
            &[&6i64, &10i64],
        )
        .await
        .expect_err("a key that would change is refused");
    assert_eq!(code(&e), "0A000");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("entries.owner_id") && message.contains("1 matching row"),
        "{message}"
    );
    let (_, n) = simple(
        &c,
        "UPDATE entries SET owner_id = 4, amount = 300 WHERE owner_id = 4 AND id = 11",
    )
    .await
    .expect("a key pinned to its value by the WHERE clause");
    assert_eq!(n, 1);
    // In a block that rolls back: the update is undone like any other.
    c.batch_execute("BEGIN").await.expect("begin");
    let n = c
        .execute(
            "UPDATE entries SET owner_id = $1, amount = $2 WHERE id = $3",
            &[&6i64, &-1i32, &13i64],
        )
        .await
        .expect("in a block");
    assert_eq!(n, 1);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let rows: Vec<(i64, i64, i32)> = c
        .query(
            "SELECT id, owner_id, amount FROM entries WHERE id IN (10, 11, 12, 13) ORDER BY id",
            &[],
        )
        .await
        .expect("read back")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [(10, 3, 100), (11, 4, 300), (12, 5, 200), (13, 6, 13)]
    );
    assert_eq!(summed(info, "SELECT count(*) FROM entries").await, 40);
    c.batch_execute("DROP TABLE entries")
        .await
        .expect("drop entries");
}
