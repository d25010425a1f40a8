//! Statements pgshard routes by looking further than their text: utility statements naming an
//! index (run where the index's table lives), types and functions (every shard), and `INSERT … SELECT * FROM UNNEST(arrays)` into a
//! sharded table (the arrays split per shard). Through psql and the simple protocol, through
//! tokio-postgres (extended protocol, binary parameters) and psycopg 3 (extended protocol, text
//! parameters). One cluster for the whole binary: the scenarios run in order in one test.

mod common;

use common::process::run_output as run;
use common::proxy::{self, connect, start_proxy};
use common::TestCluster;
use pgshard::cluster::ClusterInfo;
use pgshard::router::Strategy;
use tokio::process::Command;
use tokio_postgres::Client;

/// Runs `sql` with psql (simple protocol), stopping at the first error.
async fn psql(url: &str, sql: &str) -> (bool, String, String) {
    run(Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]))
    .await
}

/// The same query's first column, run directly on every shard, in shard order.
async fn on_each_shard(info: &ClusterInfo, sql: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for id in info.shard_ids() {
        let c = proxy::shard(info, id).await;
        let rows = c.simple_query(sql).await.expect(sql);
        let first = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        });
        out.push(first.flatten());
    }
    out
}

/// Whether index `name` exists, per shard.
async fn index_on_shards(info: &ClusterInfo, name: &str) -> Vec<bool> {
    on_each_shard(
        info,
        &format!("SELECT count(*)::text FROM pg_class WHERE relname = '{name}' AND relkind = 'i'"),
    )
    .await
    .into_iter()
    .map(|n| n.as_deref() == Some("1"))
    .collect()
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

async fn index_statements_run_where_the_table_lives(info: &ClusterInfo, url: &str, c: &Client) {
    let shards = info.shard_ids().len();
    let first_only: Vec<bool> = (0..shards).map(|i| i == 0).collect();
    let everywhere = vec![true; shards];
    let nowhere = vec![false; shards];

    // An unsharded table and its index live on the first shard only.
    c.batch_execute("CREATE TABLE logs (id int, note text); CREATE INDEX logs_id_ix ON logs (id)")
        .await
        .expect("create unsharded table and index");
    assert_eq!(index_on_shards(info, "logs_id_ix").await, first_only);
    // ALTER INDEX, COMMENT ON INDEX, REINDEX INDEX and DROP INDEX reach that shard only (psql:
    // simple protocol). Sent to every shard, the others would answer 42704.
    for sql in [
        "ALTER INDEX logs_id_ix RENAME TO logs_ix",
        "ALTER INDEX logs_ix SET (fillfactor = 80)",
        "COMMENT ON INDEX logs_ix IS 'unsharded'",
        "REINDEX INDEX logs_ix",
    ] {
        let (ok, out, err) = psql(url, sql).await;
        assert!(ok, "{sql}: {err}\n{out}");
    }
    assert_eq!(index_on_shards(info, "logs_ix").await, first_only);
    assert_eq!(
        on_each_shard(
            info,
            "SELECT obj_description(to_regclass('logs_ix'), 'pg_class')"
        )
        .await[0]
            .as_deref(),
        Some("unsharded")
    );
    let (ok, out, err) = psql(url, "DROP INDEX logs_ix").await;
    assert!(ok, "DROP INDEX of an unsharded table's index: {err}\n{out}");
    assert_eq!(index_on_shards(info, "logs_ix").await, nowhere);

    // An index of a sharded table is on every shard; ALTER/COMMENT reach them all.
    c.batch_execute("CREATE INDEX users_name_ix ON users (name)")
        .await
        .expect("create index on sharded table");
    assert_eq!(index_on_shards(info, "users_name_ix").await, everywhere);
    c.batch_execute("ALTER INDEX users_name_ix RENAME TO users_name_ix2")
        .await
        .expect("rename index of sharded table");
    assert_eq!(index_on_shards(info, "users_name_ix2").await, everywhere);
    assert_eq!(index_on_shards(info, "users_name_ix").await, nowhere);
    c.batch_execute("COMMENT ON INDEX public.users_name_ix2 IS 'sharded'")
        .await
        .expect("comment on index of sharded table");
    assert_eq!(
        on_each_shard(
            info,
            "SELECT obj_description(to_regclass('users_name_ix2'), 'pg_class')"
        )
        .await,
        vec![Some("sharded".to_string()); shards]
    );

    // Extended protocol (tokio-postgres prepares every statement).
    c.batch_execute("CREATE INDEX logs_note_ix ON logs (note)")
        .await
        .expect("create second unsharded index");
    c.execute("ALTER INDEX logs_note_ix RENAME TO logs_note_ix2", &[])
        .await
        .expect("extended ALTER INDEX of an unsharded table's index");
    c.execute("REINDEX INDEX users_name_ix2", &[])
        .await
        .expect("extended REINDEX INDEX of a sharded table's index");
    c.execute("DROP INDEX logs_note_ix2", &[])
        .await
        .expect("extended DROP INDEX of an unsharded table's index");
    c.execute("DROP INDEX users_name_ix2", &[])
        .await
        .expect("extended DROP INDEX of a sharded table's index");
    assert_eq!(index_on_shards(info, "logs_note_ix2").await, nowhere);
    assert_eq!(index_on_shards(info, "users_name_ix2").await, nowhere);

    // Inside a block: the index created earlier in the same block is found.
    c.batch_execute(
        "BEGIN; CREATE INDEX logs_tx_ix ON logs (note); DROP INDEX logs_tx_ix; CREATE INDEX logs_kept_ix ON logs (id); COMMIT",
    )
    .await
    .expect("create and drop an index in one block");
    assert_eq!(index_on_shards(info, "logs_tx_ix").await, nowhere);
    assert_eq!(index_on_shards(info, "logs_kept_ix").await, first_only);

    // Indexes of tables on every shard and of the first shard's tables together: refused.
    c.batch_execute("CREATE INDEX users_email_ix ON users (email)")
        .await
        .expect("create index on sharded table");
    let e = c
        .batch_execute("DROP INDEX users_email_ix, logs_kept_ix")
        .await
        .expect_err("indexes living on different shards in one DROP");
    assert_eq!(code(&e), "0A000", "{e}");
    assert_eq!(index_on_shards(info, "users_email_ix").await, everywhere);
    assert_eq!(index_on_shards(info, "logs_kept_ix").await, first_only);

    // An index that exists nowhere: Postgres's own answers.
    let (ok, out, err) = psql(url, "DROP INDEX IF EXISTS no_such_ix").await;
    assert!(ok, "DROP INDEX IF EXISTS of a missing index: {err}\n{out}");
    assert_eq!(
        err.matches("NOTICE:  index \"no_such_ix\" does not exist, skipping")
            .count(),
        1,
        "one NOTICE, as from one Postgres: {err}"
    );
    let e = c
        .batch_execute("DROP INDEX no_such_ix")
        .await
        .expect_err("DROP INDEX of a missing index");
    assert_eq!(code(&e), "42704", "{e}");
    // The session goes on.
    c.batch_execute("DROP INDEX users_email_ix")
        .await
        .expect("drop index of sharded table");
    assert_eq!(index_on_shards(info, "users_email_ix").await, nowhere);
}

/// Asserts that every key in `keys` sits on the shard the map gives it, and on no other shard.
/// A view (or CREATE TABLE … AS) over a sharded table would hold one shard's rows: refused with
/// a message naming the view and the table, in both protocols, and created nowhere.
async fn views_over_sharded_tables_are_refused_by_name(info: &ClusterInfo, c: &Client) {
    for (sql, names) in [
        (
            "CREATE VIEW users_view AS SELECT user_id, name FROM users",
            "CREATE VIEW users_view over sharded table users",
        ),
        (
            "CREATE TABLE users_copy AS SELECT * FROM users",
            "CREATE TABLE … AS users_copy over sharded table users",
        ),
    ] {
        let simple = c.batch_execute(sql).await.expect_err(sql);
        let extended = c.execute(sql, &[]).await.expect_err(sql);
        for e in [simple, extended] {
            assert_eq!(code(&e), "0A000", "{sql}: {e}");
            let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
            assert!(message.contains(names), "{sql}: {message}");
        }
    }
    for relation in ["users_view", "users_copy"] {
        let found = on_each_shard(info, &format!("SELECT to_regclass('{relation}')::text")).await;
        assert!(
            found.iter().all(Option::is_none),
            "{relation} created on a shard: {found:?}"
        );
    }
}

async fn keys_on_their_shards(info: &ClusterInfo, map: &pgshard::router::ShardMap, keys: &[i64]) {
    let list = keys
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut seen = 0;
    for id in info.shard_ids() {
        let c = proxy::shard(info, id).await;
        let rows = c
            .query(
                &format!("SELECT user_id FROM users WHERE user_id IN ({list})"),
                &[],
            )
            .await
            .expect("read a shard directly");
        for r in rows {
            let k: i64 = r.get(0);
            assert_eq!(map.shard_for(k), id, "key {k} is on shard {id}");
            seen += 1;
        }
    }
    assert_eq!(seen, keys.len(), "every key inserted exactly once");
}

async fn unnest_inserts_split_per_shard(
    info: &ClusterInfo,
    url: &str,
    c: &Client,
    map: &pgshard::router::ShardMap,
) {
    // Simple protocol (psql): literal arrays, RETURNING in array order.
    let keys: Vec<i64> = (500..516).collect();
    assert!(
        keys.iter()
            .map(|k| map.shard_for(*k))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "the keys must span shards"
    );
    let key_list = keys
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let names = keys
        .iter()
        .map(|k| {
            if k % 5 == 0 {
                "NULL".to_string()
            } else {
                format!("\"n {k}, ü\"")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "INSERT INTO users (user_id, name) SELECT * FROM UNNEST('{{{key_list}}}'::bigint[], '{{{names}}}'::text[]) RETURNING user_id, coalesce(name, '-')"
    );
    let (ok, out, err) = psql(url, &sql).await;
    assert!(ok, "simple-protocol UNNEST insert: {err}\n{out}");
    let want: Vec<String> = keys
        .iter()
        .map(|k| {
            if k % 5 == 0 {
                format!("{k}|-")
            } else {
                format!("{k}|n {k}, ü")
            }
        })
        .collect();
    let got: Vec<&str> = out.lines().filter(|l| l.contains('|')).collect();
    assert_eq!(got, want, "{out}");
    assert!(out.contains("INSERT 0 16"), "{out}");
    keys_on_their_shards(info, map, &keys).await;

    // Extended protocol with binary parameters (tokio-postgres), NULL elements included.
    let keys: Vec<i64> = (600..620).collect();
    let names: Vec<Option<String>> = keys
        .iter()
        .map(|k| (k % 3 != 0).then(|| format!("名前 {k}")))
        .collect();
    let rows = c
        .query(
            "INSERT INTO users (user_id, name) SELECT * FROM UNNEST($1::bigint[], $2::text[]) RETURNING user_id, name",
            &[&keys, &names],
        )
        .await
        .expect("extended UNNEST insert with binary arrays");
    let got: Vec<(i64, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(i64, Option<String>)> = keys.iter().copied().zip(names.clone()).collect();
    assert_eq!(got, want);
    keys_on_their_shards(info, map, &keys).await;
    // Without RETURNING: the count over all shards.
    let keys: Vec<i64> = (700..710).collect();
    let n = c
        .execute(
            "INSERT INTO users (user_id, name) SELECT * FROM UNNEST($1::int8[], $2::text[])",
            &[&keys, &vec!["x"; 10]],
        )
        .await
        .expect("UNNEST insert without RETURNING");
    assert_eq!(n, 10);
    keys_on_their_shards(info, map, &keys).await;
    // A duplicate key on one shard rolls every shard back.
    let e = c
        .execute(
            "INSERT INTO users (user_id, name) SELECT * FROM UNNEST($1::int8[], $2::text[])",
            &[&vec![800i64, 801, 802, 803, 700], &vec!["y"; 5]],
        )
        .await
        .expect_err("duplicate key");
    assert_eq!(code(&e), "23505", "{e}");
    let left = c
        .query_one(
            "SELECT count(*) FROM users WHERE user_id BETWEEN 800 AND 803",
            &[],
        )
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(left, 0);
    // A key array shorter than another is padded with NULL keys, as UNNEST pads it: Postgres's
    // not-null violation, and nothing half inserted.
    let e = c
        .execute(
            "INSERT INTO users (user_id, name) SELECT * FROM UNNEST($1::int8[], $2::text[])",
            &[&vec![900i64, 901, 902], &vec!["a", "b", "c", "d"]],
        )
        .await
        .expect_err("name array longer than the keys");
    assert_eq!(code(&e), "23502", "{e}");
    let left = c
        .query_one(
            "SELECT count(*) FROM users WHERE user_id BETWEEN 900 AND 902",
            &[],
        )
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(left, 0);

    // psycopg 3 (Django 5.2 bulk_create's statement), text and binary arrays.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/unnest_check.py");
    let (ok, out, err) = run(Command::new("python3").arg(script).arg(url).arg("1000")).await;
    assert!(ok, "psycopg UNNEST check failed:\n{out}\n{err}");
    assert!(out.contains("unnest check passed"), "{out}");
    let keys: Vec<i64> = (1000..1012).chain(1100..1112).collect();
    keys_on_their_shards(info, map, &keys).await;
}

/// How many shards hold an object, by a count query run on each.
async fn shards_holding(info: &ClusterInfo, count_sql: &str) -> usize {
    on_each_shard(info, count_sql)
        .await
        .iter()
        .filter(|n| n.as_deref() == Some("1"))
        .count()
}

/// Types, domains and functions exist on every shard, whatever protocol creates them: sharded
/// tables use them as column types, and scattered statements call them on every shard.
async fn types_and_functions_reach_every_shard(info: &ClusterInfo, url: &str, c: &Client) {
    let shards = info.shard_ids().len();
    let objects = [
        "SELECT count(*)::text FROM pg_type WHERE typname = 'mood'",
        "SELECT count(*)::text FROM pg_type WHERE typname = 'posint'",
        "SELECT count(*)::text FROM pg_proc WHERE proname = 'shout'",
    ];
    c.batch_execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        .await
        .expect("create an enum type (simple protocol)");
    c.execute("CREATE DOMAIN posint AS integer CHECK (VALUE > 0)", &[])
        .await
        .expect("create a domain (extended protocol)");
    let (ok, out, err) = psql(
        url,
        "CREATE FUNCTION shout(text) RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT upper($1)$$",
    )
    .await;
    assert!(ok, "create function: {err}\n{out}");
    for sql in objects {
        assert_eq!(shards_holding(info, sql).await, shards, "{sql}");
    }
    // A sharded table takes them as column types on every shard, and a scattered read calls
    // the function on every shard.
    c.batch_execute("ALTER TABLE users ADD COLUMN mood mood, ADD COLUMN score posint")
        .await
        .expect("sharded table columns of the new types");
    c.execute("ALTER TYPE mood ADD VALUE 'great'", &[])
        .await
        .expect("alter the enum type");
    for key in 501..=512i64 {
        c.execute(
            "INSERT INTO users (user_id, name, email, mood, score) \
             VALUES ($1, 'typed', 't@x', 'great', $2::integer)",
            &[&key, &(key as i32)],
        )
        .await
        .expect("insert typed rows");
    }
    let rows = c
        .query(
            "SELECT shout(mood::text), count(*) FROM users WHERE user_id BETWEEN 501 AND 512 \
             GROUP BY 1",
            &[],
        )
        .await
        .expect("scattered read calling the function");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].get::<_, String>(0), rows[0].get::<_, i64>(1)),
        ("GREAT".to_string(), 12)
    );
    let bad = c
        .execute(
            "INSERT INTO users (user_id, name, email, score) VALUES (513, 'x', 'x', -1)",
            &[],
        )
        .await
        .expect_err("the domain's check holds on the row's shard");
    assert_eq!(code(&bad), "23514");
    // Dropping them reaches every shard too.
    c.batch_execute(
        "DELETE FROM users WHERE user_id BETWEEN 501 AND 512; \
         ALTER TABLE users DROP COLUMN mood, DROP COLUMN score; \
         DROP TYPE mood; DROP DOMAIN posint; DROP FUNCTION shout(text)",
    )
    .await
    .expect("drop the columns, types and function");
    for sql in objects {
        assert_eq!(shards_holding(info, sql).await, 0, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utility_statements_and_unnest_inserts_route_by_what_the_shards_hold() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let info = &cluster.info;
    let proxy = start_proxy(info).await;
    let url = proxy::app_url(&proxy);
    let c = connect(&proxy).await;

    index_statements_run_where_the_table_lives(info, &url, &c).await;
    views_over_sharded_tables_are_refused_by_name(info, &c).await;
    types_and_functions_reach_every_shard(info, &url, &c).await;
    let map = proxy.proxy.map.current();
    unnest_inserts_split_per_shard(info, &url, &c, &map).await;

    proxy.stop().await;
}
