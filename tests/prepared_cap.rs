//! Prepared statements under transaction pooling, on one cluster: a proxy keeping at most 5
//! server-side statements per server connection (one connection per shard, so `SHOW POOLS`'
//! `prepared` count is that connection's) still answers a client that prepares 20 statements
//! and cycles through them; and SQL `PREPARE` / `EXECUTE` / `DEALLOCATE` work without pinning.

mod common;

use common::proxy::{connect, start_proxy_with};
use common::TestCluster;
use pgshard::config::{AuthMethod, UserConfig};
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;
use tokio_postgres::SimpleQueryMessage;

const ADMIN_PASSWORD: &str = "adminpw";
const CAP: usize = 5;

async fn start(cluster: &TestCluster) -> RunningProxy {
    start_proxy_with(&cluster.info, |config| {
        config.pool.size = 1;
        config.pool.max_prepared_statements = CAP;
        config.users.push(UserConfig {
            admin: true,
            ..UserConfig::new("admin", Some(ADMIN_PASSWORD), AuthMethod::ScramSha256)
        });
    })
    .await
}

/// `prepared` of every pool of `role` in `SHOW POOLS`.
async fn prepared_counts(proxy: &RunningProxy, role: &str) -> Vec<i64> {
    let url = format!(
        "postgres://admin:{ADMIN_PASSWORD}@127.0.0.1:{}/pgshard?sslmode=disable",
        proxy.addr.port()
    );
    let admin = common::proxy::connect_url(&url)
        .await
        .expect("admin console");
    let rows: Vec<_> = admin
        .simple_query("SHOW POOLS")
        .await
        .expect("SHOW POOLS")
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let prepared_at = rows
        .first()
        .and_then(|r| r.columns().iter().position(|c| c.name() == "prepared"))
        .expect("SHOW POOLS has a prepared column");
    rows.iter()
        .filter(|r| r.get("server_role") == Some(role) && r.get("control") == Some("f"))
        .map(|r| {
            r.get(prepared_at)
                .and_then(|v| v.parse().ok())
                .expect("prepared is a number")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_stay_within_the_cap_and_sql_prepare_works() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let proxy = start(&cluster).await;
    let client = connect(&proxy).await;
    let values: Vec<String> = (1..=12).map(|k| format!("({k}, 'u{k}')")).collect();
    client
        .batch_execute(&format!(
            "INSERT INTO users (user_id, name) VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("seed users");

    // 20 distinct statements, prepared once by the client, run over and over on the same keys.
    let mut statements = Vec::new();
    for i in 0..20i32 {
        let sql = format!("SELECT user_id, name, {i}::int AS n FROM users WHERE user_id = $1");
        statements.push(client.prepare(&sql).await.expect("prepare"));
    }
    for round in 0..3 {
        for (i, st) in statements.iter().enumerate() {
            for key in [1i64, 2, 7, 12] {
                let row = client
                    .query_one(st, &[&key])
                    .await
                    .unwrap_or_else(|e| panic!("round {round}, statement {i}, key {key}: {e}"));
                assert_eq!(row.get::<_, i64>(0), key);
                assert_eq!(row.get::<_, String>(1), format!("u{key}"));
                assert_eq!(row.get::<_, i32>(2), i as i32);
            }
        }
    }
    let counts = prepared_counts(&proxy, "app").await;
    assert!(!counts.is_empty(), "no pools of role app");
    assert!(
        counts.iter().all(|&c| c as usize <= CAP),
        "a server connection holds more than {CAP} statements: {counts:?}"
    );
    assert!(
        counts.iter().any(|&c| c as usize == CAP),
        "the cap was never reached: {counts:?}"
    );

    sql_prepare(&client).await;
    // One server connection per shard, and this client is idle after keyless reads: in
    // transaction pooling it holds none of them, so another client (and psql below) gets them
    // while it stays connected.
    client
        .simple_query("SELECT user_id FROM users WHERE user_id <= 3 ORDER BY user_id")
        .await
        .expect("a keyless read");
    let other = connect(&proxy).await;
    let rows = simple(&other, "SELECT count(*) FROM users").await;
    assert_eq!(
        rows,
        Ok(vec!["12".to_string()]),
        "an idle client must not hold connections"
    );

    // psql, one statement at a time; keyless EXECUTE is scattered and merged.
    let script = "PREPARE byid(bigint) AS SELECT name FROM users WHERE user_id = $1;\n\
                  EXECUTE byid(7);\n\
                  PREPARE total AS SELECT count(*) FROM users WHERE user_id > $1;\n\
                  EXECUTE total(2);\n\
                  DEALLOCATE byid;\n\
                  DEALLOCATE ALL;\n";
    let (lines, _) = common::proxy::psql_script(&cluster.info, &proxy, "prep.sql", script).await;
    assert_eq!(
        lines,
        [
            "PREPARE",
            "u7",
            "PREPARE",
            "10",
            "DEALLOCATE",
            "DEALLOCATE ALL"
        ]
    );
}

/// Rows (first column) of a simple query, or its SQLSTATE.
async fn simple(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
                _ => None,
            })
            .collect()),
        Err(e) => Err(e.code().map(|c| c.code().to_string()).unwrap_or_default()),
    }
}

/// SQL PREPARE / EXECUTE / DEALLOCATE through the simple protocol, with Postgres's errors.
async fn sql_prepare(client: &tokio_postgres::Client) {
    let ok = |v: &[&str]| Ok(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let cases: &[(&str, Result<Vec<String>, String>)] = &[
        (
            "PREPARE one(bigint) AS SELECT name FROM users WHERE user_id = $1",
            ok(&[]),
        ),
        ("EXECUTE one(12)", ok(&["u12"])),
        ("EXECUTE one(1)", ok(&["u1"])),
        (
            "PREPARE keyless AS SELECT user_id FROM users WHERE user_id <= $1 ORDER BY user_id",
            ok(&[]),
        ),
        ("EXECUTE keyless(3)", ok(&["1", "2", "3"])),
        ("PREPARE one AS SELECT 1", Err("42P05".into())),
        ("EXECUTE nothing(1)", Err("26000".into())),
        ("EXECUTE one(1, 2)", Err("42601".into())),
        ("BEGIN", ok(&[])),
        ("EXECUTE one(2)", ok(&["u2"])),
        ("EXECUTE keyless(2)", ok(&["1", "2"])),
        ("COMMIT", ok(&[])),
        ("DEALLOCATE one", ok(&[])),
        ("EXECUTE one(1)", Err("26000".into())),
        ("DEALLOCATE one", Err("26000".into())),
        ("EXECUTE keyless(1)", ok(&["1"])),
        ("DEALLOCATE ALL", ok(&[])),
        ("EXECUTE keyless(1)", Err("26000".into())),
    ];
    for (sql, want) in cases {
        assert_eq!(&simple(client, sql).await, want, "{sql}");
    }
}
