//! Session features under transaction pooling: session advisory locks, temporary tables and
//! WITH HOLD cursors keep (pin) the client's server connection only while the server holds them,
//! then the connection goes back to the pool. One 4-shard cluster behind a proxy with 2 server
//! connections per shard, so a pin that outlives its reason shows up as a pool that runs dry.
//! Driven with tokio-postgres (simple and extended protocol) and psql.

mod common;

use common::process::eventually;
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::config::{AuthMethod, MetricsConfig, UserConfig};
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_PASSWORD: &str = "admin-secret";

struct Setup {
    cluster: TestCluster,
    proxy: RunningProxy,
}

/// The cluster and proxy all cases share, one after the other (one test, so the cluster is
/// stopped when it ends): 2 server connections per shard, a short checkout timeout.
async fn setup() -> Setup {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |config| {
        config.pool.size = 2;
        config.pool.checkout_timeout_ms = 1_500;
        config.metrics = Some(MetricsConfig {
            listen: "127.0.0.1:0".into(),
            allow_remote: false,
        });
        config.users.push(UserConfig {
            admin: true,
            ..UserConfig::new("admin", Some(ADMIN_PASSWORD), AuthMethod::ScramSha256)
        });
    })
    .await;
    let client = proxy::connect(&proxy).await;
    let values: Vec<String> = (1..=40)
        .map(|i| format!("({i}, 'u{i:02}', 'u{i}@example.com')"))
        .collect();
    client
        .batch_execute(&format!(
            "INSERT INTO users (user_id, name, email) VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("seed users");
    Setup { cluster, proxy }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_and_releases_connections() {
    let s = setup().await;
    advisory_locks_pin_until_every_lock_is_released(&s).await;
    temporary_tables_pin_until_dropped(&s).await;
    with_hold_cursors_pin_until_closed(&s).await;
    psql_session_and_show_clients(&s).await;
    set_config_is_tracked_like_set(&s).await;
    pins_are_counted_by_reason(&s).await;
}

/// The first column of every row of a simple query, as text.
async fn column(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

async fn one(client: &Client, sql: &str) -> String {
    let rows = column(client, sql).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows[0].clone()
}

/// The pin reasons of every connected client that has any, sorted.
fn pinned(proxy: &RunningProxy) -> Vec<String> {
    let mut v: Vec<String> = proxy
        .proxy
        .admin
        .clients
        .list()
        .into_iter()
        .map(|c| c.pinned)
        .filter(|p| !p.is_empty())
        .collect();
    v.sort();
    v
}

/// Advisory locks the designated shard (the first, where unsharded tables live) holds.
async fn advisory_locks_on_first_shard(s: &Setup) -> i64 {
    let direct = proxy::shard(&s.cluster.info, 0).await;
    direct
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
            &[],
        )
        .await
        .expect("read pg_locks")
        .get(0)
}

async fn advisory_locks_pin_until_every_lock_is_released(s: &Setup) {
    let a = proxy::connect(&s.proxy).await;
    let b = proxy::connect(&s.proxy).await;
    let c = proxy::connect(&s.proxy).await;
    assert!(pinned(&s.proxy).is_empty());

    // Simple protocol; re-entrant: two locks on one key.
    assert_eq!(one(&a, "SELECT pg_advisory_lock(42)").await, "");
    assert_eq!(one(&a, "SELECT pg_try_advisory_lock(42)").await, "t");
    assert_eq!(pinned(&s.proxy), ["advisory_lock"]);
    assert_eq!(advisory_locks_on_first_shard(s).await, 1);
    // Another client, on another server connection, sees the lock: it lives on one shard.
    assert_eq!(one(&b, "SELECT pg_try_advisory_lock(42)").await, "f");
    assert_eq!(pinned(&s.proxy), ["advisory_lock"]);
    // Sharded reads and writes go on while pinned.
    assert_eq!(
        one(&a, "SELECT name FROM users WHERE user_id = 7").await,
        "u07"
    );
    assert_eq!(one(&a, "SELECT count(*) FROM users").await, "40");

    // B takes a lock of its own too: both connections of the first shard are pinned, so C must
    // wait for one, and gives up after the checkout timeout.
    assert_eq!(one(&b, "SELECT pg_try_advisory_lock(43)").await, "t");
    assert_eq!(pinned(&s.proxy), ["advisory_lock", "advisory_lock"]);
    let err = c
        .simple_query("SELECT pg_try_advisory_lock(42)")
        .await
        .expect_err("no free connection to the first shard");
    let db = err.as_db_error().expect("a server error");
    assert!(
        db.message()
            .contains("timed out waiting for a free server connection"),
        "{db:?}"
    );

    // One unlock of two: still held, still pinned.
    assert_eq!(one(&a, "SELECT pg_advisory_unlock(42)").await, "t");
    assert_eq!(pinned(&s.proxy), ["advisory_lock", "advisory_lock"]);
    // Extended protocol: the second unlock, with a parameter, ends A's pin.
    let row = a
        .query_one("SELECT pg_advisory_unlock($1)", &[&42i64])
        .await
        .expect("unlock");
    assert!(row.get::<_, bool>(0));
    assert_eq!(pinned(&s.proxy), ["advisory_lock"]);
    // Not held any more: false, as in Postgres (and a warning).
    let row = a
        .query_one("SELECT pg_advisory_unlock($1)", &[&42i64])
        .await
        .expect("unlock");
    assert!(!row.get::<_, bool>(0));

    // A's connection went back to the pool, without its lock: C gets it and the lock.
    assert_eq!(one(&c, "SELECT pg_try_advisory_lock(42)").await, "t");
    assert_eq!(one(&c, "SELECT pg_advisory_unlock_all()").await, "");
    assert_eq!(one(&b, "SELECT pg_advisory_unlock(43)").await, "t");
    assert!(pinned(&s.proxy).is_empty());
    assert_eq!(advisory_locks_on_first_shard(s).await, 0);

    // Extended protocol, shared lock with two int keys, in and out of a transaction block.
    a.query("SELECT pg_advisory_lock_shared($1, $2)", &[&1i32, &2i32])
        .await
        .expect("shared lock");
    assert_eq!(pinned(&s.proxy), ["advisory_lock"]);
    let row = b
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&1i32, &2i32])
        .await
        .expect("try lock");
    assert!(!row.get::<_, bool>(0), "the exclusive lock conflicts");
    a.batch_execute("BEGIN").await.expect("begin");
    a.query("SELECT pg_advisory_unlock_shared($1, $2)", &[&1i32, &2i32])
        .await
        .expect("unlock shared");
    a.batch_execute("COMMIT").await.expect("commit");
    assert!(pinned(&s.proxy).is_empty());

    // A transaction-level lock: on the designated shard, no pin past its block.
    let mut tx_client = proxy::connect(&s.proxy).await;
    let tx = tx_client.transaction().await.expect("begin");
    tx.query("SELECT pg_advisory_xact_lock($1)", &[&99i64])
        .await
        .expect("xact lock");
    assert_eq!(one(&b, "SELECT pg_try_advisory_lock(99)").await, "f");
    tx.commit().await.expect("commit");
    assert!(pinned(&s.proxy).is_empty());
    assert_eq!(one(&b, "SELECT pg_try_advisory_lock(99)").await, "t");
    assert_eq!(one(&b, "SELECT pg_advisory_unlock(99)").await, "t");

    // A client that leaves while pinned: its connection is closed, not handed on with the lock.
    let d = proxy::connect(&s.proxy).await;
    assert_eq!(one(&d, "SELECT pg_advisory_lock(77)").await, "");
    drop(d);
    eventually("the leaving client's lock is gone", || async {
        one(&b, "SELECT pg_try_advisory_lock(77)").await == "t"
    })
    .await;
    assert_eq!(one(&b, "SELECT pg_advisory_unlock(77)").await, "t");
    eventually("no pinned client is left", || async {
        pinned(&s.proxy).is_empty()
    })
    .await;
    assert_eq!(advisory_locks_on_first_shard(s).await, 0);
}

async fn temporary_tables_pin_until_dropped(s: &Setup) {
    let a = proxy::connect(&s.proxy).await;
    let b = proxy::connect(&s.proxy).await;

    a.batch_execute("CREATE TEMP TABLE scratch (a int, note text)")
        .await
        .expect("create temp");
    assert_eq!(pinned(&s.proxy), ["temp_table"]);
    a.batch_execute("INSERT INTO scratch VALUES (1, 'one'), (2, 'two')")
        .await
        .expect("insert");
    // Extended protocol, text and binary parameters.
    let rows = a
        .query("SELECT note FROM scratch WHERE a = $1", &[&2i32])
        .await
        .expect("read temp");
    assert_eq!(rows[0].get::<_, String>(0), "two");
    a.execute("INSERT INTO scratch VALUES ($1, $2)", &[&3i32, &"three"])
        .await
        .expect("insert with params");
    assert_eq!(one(&a, "SELECT count(*) FROM scratch").await, "3");
    // Another client does not see it (nor get A's connection).
    let err = b
        .simple_query("SELECT count(*) FROM scratch")
        .await
        .expect_err("temp tables are private");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("42P01"),
        "{err}"
    );
    // A rolled-back DROP keeps it.
    a.batch_execute("BEGIN; DROP TABLE scratch; ROLLBACK")
        .await
        .expect("drop rolled back");
    assert_eq!(pinned(&s.proxy), ["temp_table"]);
    assert_eq!(one(&a, "SELECT count(*) FROM scratch").await, "3");
    a.batch_execute("DROP TABLE scratch").await.expect("drop");
    assert!(pinned(&s.proxy).is_empty());

    // SELECT … INTO TEMP, then DISCARD TEMP.
    a.batch_execute("SELECT 5 AS five INTO TEMP fives")
        .await
        .expect("select into temp");
    assert_eq!(pinned(&s.proxy), ["temp_table"]);
    assert_eq!(one(&a, "SELECT five FROM fives").await, "5");
    a.batch_execute("DISCARD TEMP").await.expect("discard temp");
    assert!(pinned(&s.proxy).is_empty());

    // ON COMMIT DROP: no pin once the block ends.
    a.batch_execute(
        "BEGIN; CREATE TEMP TABLE gone (a int) ON COMMIT DROP; INSERT INTO gone VALUES (1); COMMIT",
    )
    .await
    .expect("on commit drop");
    assert!(pinned(&s.proxy).is_empty());

    // DISCARD ALL ends everything.
    a.batch_execute("CREATE TEMPORARY TABLE t2 (a int)")
        .await
        .expect("create temporary");
    assert_eq!(one(&a, "SELECT pg_advisory_lock(5)").await, "");
    assert_eq!(pinned(&s.proxy), ["advisory_lock,temp_table"]);
    a.batch_execute("DISCARD ALL").await.expect("discard all");
    assert!(pinned(&s.proxy).is_empty());
    assert_eq!(one(&b, "SELECT pg_try_advisory_lock(5)").await, "t");
    assert_eq!(one(&b, "SELECT pg_advisory_unlock(5)").await, "t");
}

async fn with_hold_cursors_pin_until_closed(s: &Setup) {
    let a = proxy::connect(&s.proxy).await;

    // On one shard (keyed), declared outside a block: the server holds it, the connection stays.
    a.batch_execute(
        "DECLARE one_user CURSOR WITH HOLD FOR SELECT name FROM users WHERE user_id = 3",
    )
    .await
    .expect("declare with hold");
    assert_eq!(pinned(&s.proxy), ["hold_cursor"]);
    assert_eq!(column(&a, "FETCH 5 FROM one_user").await, ["u03"]);
    a.batch_execute("CLOSE one_user").await.expect("close");
    assert!(pinned(&s.proxy).is_empty());

    // Declared in a block that commits (extended protocol, a parameter), closed with CLOSE ALL.
    a.batch_execute("BEGIN").await.expect("begin");
    a.execute(
        "DECLARE kept CURSOR WITH HOLD FOR SELECT user_id FROM users WHERE user_id = $1",
        &[&9i64],
    )
    .await
    .expect("declare with a parameter");
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(pinned(&s.proxy), ["hold_cursor"]);
    assert_eq!(column(&a, "FETCH ALL FROM kept").await, ["9"]);
    a.batch_execute("CLOSE ALL").await.expect("close all");
    assert!(pinned(&s.proxy).is_empty());

    // Declared in a block that rolls back: gone, no pin.
    a.batch_execute("BEGIN; DECLARE dropped CURSOR WITH HOLD FOR SELECT name FROM users WHERE user_id = 3; ROLLBACK")
        .await
        .expect("rolled back");
    assert!(pinned(&s.proxy).is_empty());
    let err = a
        .simple_query("FETCH 1 FROM dropped")
        .await
        .expect_err("the cursor is gone");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("34000"));

    // Over several shards: pgshard holds the merged rows, so no server connection stays.
    a.batch_execute(
        "DECLARE everyone CURSOR WITH HOLD FOR SELECT user_id FROM users ORDER BY user_id",
    )
    .await
    .expect("declare over shards");
    assert!(pinned(&s.proxy).is_empty());
    assert_eq!(column(&a, "FETCH 3 FROM everyone").await, ["1", "2", "3"]);
    assert_eq!(column(&a, "FETCH 2 FROM everyone").await, ["4", "5"]);
    a.batch_execute("CLOSE everyone").await.expect("close");

    // Over several shards in a block: the rows outlive its COMMIT, not its ROLLBACK.
    a.batch_execute("BEGIN").await.expect("begin");
    a.batch_execute(
        "DECLARE late CURSOR WITH HOLD FOR SELECT user_id FROM users ORDER BY user_id DESC",
    )
    .await
    .expect("declare in a block");
    assert_eq!(column(&a, "FETCH 1 FROM late").await, ["40"]);
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(column(&a, "FETCH 1 FROM late").await, ["39"]);
    a.batch_execute("CLOSE late").await.expect("close");
    a.batch_execute("BEGIN").await.expect("begin");
    a.batch_execute(
        "DECLARE undone CURSOR WITH HOLD FOR SELECT user_id FROM users ORDER BY user_id",
    )
    .await
    .expect("declare in a block");
    a.batch_execute("ROLLBACK").await.expect("rollback");
    let err = a
        .simple_query("FETCH 1 FROM undone")
        .await
        .expect_err("the cursor is gone");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("34000"));
    assert!(pinned(&s.proxy).is_empty());
}

async fn psql_session_and_show_clients(s: &Setup) {
    let script = "\
SELECT pg_advisory_lock(1234);
CREATE TEMP TABLE notes (id int, body text);
INSERT INTO notes VALUES (1, 'kept');
SELECT body FROM notes;
\\! psql -X -A -t -c 'SHOW CLIENTS' ADMIN_URL | cut -d'|' -f2,6 | grep -v '^admin'
SELECT pg_advisory_unlock(1234);
DROP TABLE notes;
\\! psql -X -A -t -c 'SHOW CLIENTS' ADMIN_URL | cut -d'|' -f2,6 | grep -v '^admin'
";
    let admin_url = format!(
        "postgres://admin:{ADMIN_PASSWORD}@127.0.0.1:{}/pgshard?sslmode=disable",
        s.proxy.addr.port()
    );
    let (lines, out) = proxy::psql_script(
        &s.cluster.info,
        &s.proxy,
        "pins.sql",
        &script.replace("ADMIN_URL", &admin_url),
    )
    .await;
    assert_eq!(
        lines,
        [
            "CREATE TABLE",
            "INSERT 0 1",
            "kept",
            "app|advisory_lock,temp_table",
            "t",
            "DROP TABLE",
            "app|"
        ],
        "{out}"
    );
    assert!(pinned(&s.proxy).is_empty());
}

async fn set_config_is_tracked_like_set(s: &Setup) {
    let a = proxy::connect(&s.proxy).await;
    let b = proxy::connect(&s.proxy).await;
    assert_eq!(
        one(&a, "SELECT set_config('app.tenant', 'acme', false)").await,
        "acme"
    );
    assert!(pinned(&s.proxy).is_empty(), "a setting needs no pin");
    // Every shard A's statements reach has the setting (one row per shard: keys 1..=40).
    let seen = column(
        &a,
        "SELECT DISTINCT current_setting('app.tenant') FROM users",
    )
    .await;
    assert_eq!(seen, ["acme"]);
    // B, on the same pool, never sees it.
    tenant_seen_by_a_only(&a, &b, "acme").await;
    // Rolled back with its block, as SET is.
    a.batch_execute("BEGIN").await.expect("begin");
    one(&a, "SELECT set_config('app.tenant', 'other', false)").await;
    a.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        column(
            &a,
            "SELECT DISTINCT current_setting('app.tenant') FROM users"
        )
        .await,
        ["acme"]
    );
    // Transaction-local: nothing to track.
    a.batch_execute("BEGIN").await.expect("begin");
    a.query("SELECT set_config('app.tenant', $1, true)", &[&"local"])
        .await
        .expect("local set_config with a parameter");
    a.batch_execute("COMMIT").await.expect("commit");
    // A session-level call whose value is a parameter (binary here) is read from the Bind and
    // tracked the same way, on every shard A reaches and never on B's.
    let row = a
        .query_one("SELECT set_config('app.tenant', $1, false)", &[&"bound"])
        .await
        .expect("set_config with a parameter");
    assert_eq!(row.get::<_, String>(0), "bound");
    assert!(pinned(&s.proxy).is_empty(), "a setting needs no pin");
    tenant_seen_by_a_only(&a, &b, "bound").await;
    // All three arguments bound, inside a block that rolls back: undone like SET.
    a.batch_execute("BEGIN").await.expect("begin");
    a.query(
        "SELECT pg_catalog.set_config($1, $2, $3)",
        &[&"app.tenant", &"rolled back", &false],
    )
    .await
    .expect("set_config with three parameters");
    a.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        column(
            &a,
            "SELECT DISTINCT current_setting('app.tenant') FROM users"
        )
        .await,
        ["bound"]
    );
    // A NULL value is refused, naming it; the session goes on.
    let err = a
        .query(
            "SELECT set_config('app.tenant', $1, false)",
            &[&None::<String>],
        )
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(
        db.message().contains("set_config() with a NULL value"),
        "{db:?}"
    );
    // A call pgshard cannot follow at all stays refused.
    let err = a
        .query(
            "SELECT set_config('app.tenant', name, false) FROM users WHERE user_id = $1",
            &[&1i64],
        )
        .await
        .expect_err("refused");
    assert_eq!(
        err.as_db_error().expect("a server error").code().code(),
        "0A000"
    );
}

/// The value of `pgshard_session_pins_total{reason="…"}` on the metrics endpoint (0 before the
/// first pin of that reason).
async fn pins_counted(proxy: &RunningProxy, reason: &str) -> f64 {
    let addr = proxy.metrics_addr.expect("metrics are configured");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("read the answer");
    let sample = format!("pgshard_session_pins_total{{reason=\"{reason}\"}} ");
    raw.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

async fn pins_are_counted_by_reason(s: &Setup) {
    let a = proxy::connect(&s.proxy).await;
    let (temp, locks) = (
        pins_counted(&s.proxy, "temp_table").await,
        pins_counted(&s.proxy, "advisory_lock").await,
    );
    a.batch_execute("CREATE TEMP TABLE counted (a int)")
        .await
        .expect("create temp");
    // A second temp table on the pinned connection is no new pin.
    a.batch_execute("CREATE TEMP TABLE counted_too (a int)")
        .await
        .expect("create temp");
    a.batch_execute("DISCARD TEMP").await.expect("discard");
    assert_eq!(pins_counted(&s.proxy, "temp_table").await, temp + 1.0);
    assert_eq!(pins_counted(&s.proxy, "advisory_lock").await, locks);
}

/// Keyed reads on keys 1..=8 (several shards): client `a` sees `app.tenant = expected`, and `b`,
/// sharing the pool, never sees a value.
async fn tenant_seen_by_a_only(a: &Client, b: &Client, expected: &str) {
    for key in 1..=8i64 {
        let row = a
            .query_one(
                "SELECT current_setting('app.tenant') FROM users WHERE user_id = $1",
                &[&key],
            )
            .await
            .expect("keyed read");
        assert_eq!(row.get::<_, String>(0), expected, "key {key}");
        let row = b
            .query_one(
                "SELECT coalesce(current_setting('app.tenant', true), '') FROM users WHERE user_id = $1",
                &[&key],
            )
            .await
            .expect("keyed read");
        assert_eq!(row.get::<_, String>(0), "", "key {key}");
    }
}
