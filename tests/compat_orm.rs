//! The compatibility report over an ORM's own statements: `pgshard serve` (the binary) with
//! `[compat] shards = 10` and `shop_order` configured sharded by `id`, in front of one unsharded
//! database, runs the Django suite (`tests/python/django_check.py`, psycopg 3, unchanged: migrate
//! with the contrib apps, CRUD, aggregates, subqueries, `.iterator()`); then `pgshard compat
//! report --config F` (the binary) prints the report. Every statement Django sent is in it, and
//! each has the route its shape calls for: a primary-key lookup one shard, a keyless filter a
//! scatter, DDL of the sharded table every shard, the contrib tables (unsharded) one shard,
//! `pk__in=Subquery(…)` a subquery run first, DDL and writes of the reference table `shop_plan`
//! every shard; none is refused.

mod common;

use std::collections::BTreeMap;

use common::process::{free_port, run_output, write_config, ProxyProcess};
use common::proxy::APP_PASSWORD;
use common::script::run_script;
use common::TestCluster;
use pgshard::config::{AuthMethod, CompatConfig, ShardedTableConfig, UserConfig};
use pgshard::router::Strategy;
use tokio::process::Command;

/// One row of the printed report.
#[derive(Debug)]
struct Row {
    statement: String,
    route: String,
    count: u64,
    single: u64,
    multi: u64,
    refused: u64,
    refusal: String,
}

/// The report as `pgshard compat report` prints it, by fingerprint.
fn parse_report(text: &str) -> BTreeMap<String, Row> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("a header")
        .split(" | ")
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "fingerprint",
            "statement",
            "route",
            "count",
            "single",
            "multi",
            "refused",
            "refusal",
            "suggestion",
            "last_seen"
        ]
    );
    let number = |s: &str| s.trim().parse::<u64>().expect("a count");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            assert_eq!(cells.len(), 10, "one statement a line: {line}");
            assert!(!cells[9].trim().is_empty(), "last_seen: {line}");
            (
                cells[0].trim().to_string(),
                Row {
                    statement: cells[1].trim().to_string(),
                    route: cells[2].trim().to_string(),
                    count: number(cells[3]),
                    single: number(cells[4]),
                    multi: number(cells[5]),
                    refused: number(cells[6]),
                    refusal: cells[7].trim().to_string(),
                },
            )
        })
        .collect()
}

/// The route a normalized Django statement over `shop_order` (sharded by `id`) and the contrib
/// tables (unsharded) must get over ten shards, by its shape; `None` where the shape alone does
/// not say (INSERTs: one row or several, keyed or generated; cursors).
fn expected_route(statement: &str) -> Option<&'static str> {
    let sharded = statement.contains("\"shop_order\"");
    let reference = statement.contains("\"shop_plan\"");
    let verb = statement
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_uppercase();
    let ddl = ["CREATE", "ALTER", "DROP"].contains(&verb.as_str());
    if ddl {
        return Some(if sharded || reference {
            "broadcast"
        } else {
            "single"
        });
    }
    if !["SELECT", "UPDATE", "DELETE"].contains(&verb.as_str()) {
        return None;
    }
    if reference && verb != "SELECT" {
        // Writes to a reference table change every shard alike.
        return Some("broadcast");
    }
    if !sharded {
        // auth_*, django_*: unsharded tables live on the first shard; a read of a reference
        // table needs any one shard.
        return Some("single");
    }
    if statement.contains("\"shop_order\".\"id\" IN (SELECT") || statement.contains(" OVER (") {
        // A subquery run first; a window function's table read first (Django's filter on one
        // wraps it in derived tables).
        return Some("run_first");
    }
    let condition = statement.split_once(" WHERE ").map_or("", |(_, w)| w);
    let by_pk = condition
        .strip_prefix("\"shop_order\".\"id\" ")
        .and_then(|rest| {
            let rest = rest.strip_prefix("= ").or_else(|| {
                rest.strip_prefix("IN (")
                    .and_then(|r| r.split_once(')').map(|(_, after)| after))
                    .map(|after| after.trim_start())
            })?;
            // `$n`, then nothing but LIMIT / FOR UPDATE.
            let rest = rest
                .trim_start_matches('$')
                .trim_start_matches(|c: char| c.is_ascii_digit());
            let tail = rest.trim();
            (tail.is_empty() || tail.starts_with("LIMIT") || tail.starts_with("FOR UPDATE"))
                .then_some(())
        })
        .is_some();
    if by_pk && !condition.contains(" IN ($1, ") {
        return Some("single");
    }
    if !condition.contains("\"id\"") && !statement.contains("(SELECT") {
        return Some("scatter");
    }
    None
}

#[test]
fn statement_shapes_have_their_routes() {
    let cases = [
        ("SELECT \"shop_order\".\"id\" FROM \"shop_order\" WHERE \"shop_order\".\"id\" = $1 LIMIT $2", Some("single")),
        ("DELETE FROM \"shop_order\" WHERE \"shop_order\".\"id\" IN ($1)", Some("single")),
        ("DELETE FROM \"shop_order\" WHERE \"shop_order\".\"id\" IN ($1, $2)", None),
        ("UPDATE \"shop_order\" SET \"amount\" = $1 WHERE \"shop_order\".\"customer\" = $2", Some("scatter")),
        ("SELECT COUNT(*) AS \"__count\" FROM \"shop_order\"", Some("scatter")),
        ("SELECT \"shop_order\".\"amount\" FROM \"shop_order\" WHERE \"shop_order\".\"id\" IN (SELECT U0.\"id\" FROM \"shop_order\" U0 WHERE U0.\"amount\" > $1)", Some("run_first")),
        ("CREATE TABLE \"shop_order\" (\"id\" bigint)", Some("broadcast")),
        ("SELECT \"auth_user\".\"id\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = $1", Some("single")),
        ("INSERT INTO \"shop_order\" (\"customer\") VALUES ($1)", None),
        ("CREATE TABLE \"shop_plan\" (\"id\" bigint)", Some("broadcast")),
        ("DELETE FROM \"shop_plan\"", Some("broadcast")),
        ("SELECT \"shop_plan\".\"id\" FROM \"shop_plan\"", Some("single")),
    ];
    for (statement, want) in cases {
        assert_eq!(expected_route(statement), want, "{statement}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_routes_every_statement_of_the_django_suite() {
    let cluster = TestCluster::start(1, Strategy::Hash).await;
    let port = free_port();
    let path = write_config(&cluster.info, "compat-orm.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
        c.compat = Some(CompatConfig {
            shards: 10,
            max_statements: 10_000,
        });
        c.sharded_tables.push(ShardedTableConfig {
            name: "shop_order".into(),
            key: "id".into(),
            key_type: None,
        });
        c.reference_tables.push("shop_plan".into());
        c.users.push(UserConfig {
            admin: true,
            ..UserConfig::new("admin", None, AuthMethod::Trust)
        });
    });
    let url = format!("postgres://app:{APP_PASSWORD}@127.0.0.1:{port}/app?sslmode=disable");
    let running = ProxyProcess::start(&path, &url).await;

    let log = cluster.info.dir.join("compat-orm-statements.jsonl");
    let log_arg = log.display().to_string();
    run_script(
        "python/django_check.py",
        &[],
        &[("PGSHARD_URL", &url), ("PGSHARD_SQL_LOG", &log_arg)],
    )
    .await;

    let (ok, text, err) = run_output(
        Command::new(env!("CARGO_BIN_EXE_pgshard"))
            .args(["compat", "report", "--config"])
            .arg(&path),
    )
    .await;
    assert!(ok, "pgshard compat report failed: {err}");
    let report = parse_report(&text);

    // Every statement Django sent (transaction control aside) is in the report.
    let sent: Vec<String> = std::fs::read_to_string(&log)
        .expect("the statement log")
        .lines()
        .map(|l| serde_json::from_str::<String>(l).expect("one JSON string a line"))
        .collect();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for sql in &sent {
        let verb = sql.split_whitespace().next().unwrap_or("").to_uppercase();
        if !["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER"].contains(&verb.as_str()) {
            continue;
        }
        let fingerprint = pg_query::fingerprint(sql, 0, 0)
            .expect("Django's SQL parses")
            .hex;
        if !report.contains_key(&fingerprint) {
            wrong.push(format!("not in the report: {sql} ({fingerprint})"));
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} statements logged");

    // Each statement has the route its shape calls for; none is refused.
    let mut routes: BTreeMap<&str, usize> = BTreeMap::new();
    for (fingerprint, row) in &report {
        if row.count != row.single + row.multi + row.refused {
            wrong.push(format!("counts do not add up: {fingerprint} {row:?}"));
        }
        if row.route == "refused" || row.refused > 0 || !row.refusal.is_empty() {
            wrong.push(format!("refused over ten shards: {row:?}"));
        }
        if let Some(want) = expected_route(&row.statement) {
            if row.route != want {
                wrong.push(format!("expected {want}: {row:?}"));
            }
            *routes.entry(want).or_default() += 1;
        }
    }
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));
    for route in ["single", "scatter", "broadcast", "run_first"] {
        assert!(
            routes.get(route).is_some_and(|n| *n > 0),
            "no {route} statement checked: {routes:?}\n{text}"
        );
    }
    // A pk lookup ran many times with different pks: one entry, every call on one shard.
    let lookups = report
        .values()
        .filter(|r| r.route == "single" && r.statement.contains("\"shop_order\".\"id\" = $1"))
        .map(|r| r.single)
        .max()
        .unwrap_or(0);
    assert!(lookups > 5, "pk lookups fold into one statement: {text}");

    // Without a running proxy the command fails, saying why.
    drop(running);
    let (ok, _, err) = run_output(
        Command::new(env!("CARGO_BIN_EXE_pgshard"))
            .args(["compat", "report", "--config"])
            .arg(&path),
    )
    .await;
    assert!(!ok, "compat report without a proxy must fail");
    assert!(!err.trim().is_empty(), "an error message");
}
