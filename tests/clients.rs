//! Real clients through pgshard: a scripted psql session, pgbench in all three query modes, and a
//! driver from another language (Python's psycopg).

mod common;

use common::process::run_output as run;
use common::proxy::{self, start_proxy};
use common::TestCluster;
use pgshard::router::Strategy;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_session_routes_and_describes() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let script = r#"
\set ON_ERROR_STOP 1
INSERT INTO users (user_id, name, email) VALUES (4242, 'Ada', 'ada@example.com');
SELECT name FROM users WHERE user_id = 4242;
INSERT INTO users (name, email) VALUES ('Bob', 'bob@example.com') RETURNING user_id > 0 AS has_id;
BEGIN;
UPDATE users SET name = 'Ada L' WHERE user_id = 4242;
COMMIT;
SELECT 'after:' || name FROM users WHERE user_id = 4242;
SELECT 'id:' || 1 AS marker;
SELECT pgshard.next_id();
\dt
\d users
"#;
    let (lines, out) = proxy::psql_script(&cluster.info, &proxy, "session.sql", script).await;
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert!(lines.contains(&"Ada"), "{out}");
    assert!(lines.contains(&"t"), "{out}");
    assert!(lines.contains(&"after:Ada L"), "{out}");
    let marker = lines
        .iter()
        .position(|l| *l == "id:1")
        .expect("marker line");
    let id: i64 = lines[marker + 1].parse().expect("next_id prints a number");
    assert!(id > 0);
    assert!(
        lines.iter().any(|l| l.starts_with("public|users|table")),
        "\\dt lists users: {out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("user_id|bigint")),
        "\\d users describes it: {out}"
    );
    // Errors come back as psql shows them for Postgres.
    let (ok, _out, err) = run(Command::new("psql").arg(proxy::app_url(&proxy)).args([
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "UPDATE users SET user_id = user_id + 1",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("not supported"), "{err}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_without_failures_in_every_mode() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let script = cluster.info.dir.join("bench.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 1000000)\n\
         SELECT name FROM users WHERE user_id = :id;\n\
         UPDATE users SET email = 'x@example.com' WHERE user_id = :id;\n\
         INSERT INTO users (user_id, name) VALUES (:id, 'pgbench') ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name;\n",
    )
    .unwrap();
    for mode in ["simple", "extended", "prepared"] {
        let (ok, out, err) = run(Command::new("pgbench")
            .env("PGPASSWORD", proxy::APP_PASSWORD)
            .args([
                "-n",
                "-h",
                "127.0.0.1",
                "-U",
                "app",
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                "150",
                "-M",
                mode,
            ])
            .arg("-p")
            .arg(proxy.addr.port().to_string())
            .arg("-f")
            .arg(&script)
            .arg("app"))
        .await;
        assert!(ok, "pgbench -M {mode} failed: {err}\n{out}");
        assert!(
            out.contains("number of transactions actually processed: 600/600"),
            "pgbench -M {mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 "),
            "pgbench -M {mode}: {out}"
        );
    }
    let total = proxy::count_users_directly(&cluster.info).await;
    assert!(total > 0 && total <= 1800, "{total} rows");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_psycopg_driver_works_through_the_proxy() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy(&cluster.info).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/driver_check.py");
    let (ok, out, err) = run(Command::new("python3")
        .arg(script)
        .arg(proxy::app_url(&proxy)))
    .await;
    assert!(ok, "python driver check failed:\n{out}\n{err}");
    assert!(out.contains("driver check passed"), "{out}");
    proxy.stop().await;
}
