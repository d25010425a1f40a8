//! Subqueries over sharded tables through pgshard: a subquery in WHERE correlated with the outer
//! table by shard key (`EXISTS`, `NOT EXISTS`, `IN`, a scalar comparison) runs whole on each
//! shard, keyed or scattered and merged, in the simple and extended protocols, in and out of a
//! block, as do a LATERAL subquery in FROM and a scalar subquery in the output columns
//! correlated the same way; uncorrelated ones, and read-only CTEs, run first (both protocols, parameters in text
//! and binary) and their result is written into the statement; other subqueries over sharded
//! tables, derived tables in FROM (`SELECT count(*) FROM (SELECT … FROM users …) AS anon_1`) run
//! whole on each shard when every row of theirs comes from one shard's rows, the outer query
//! merged (compared with one Postgres holding every row), else first the same way; other subqueries over sharded
//! tables, recursive CTEs and data-modifying CTEs read with other tables stay refused with 0A000 unless keyed to
//! one shard, as set operations are unless every branch is keyed to one shard. Four shards;
//! users 1..=40, and two orders (totals i and 2i) for each user i not divisible by 3.

mod common;

use common::answers::{extended_answer, simple_rows};
use common::params::TextParam;
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::Strategy;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The rows of a simple query, each as its columns' text joined by '|'.
async fn rows(c: &Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

fn has_orders(i: i64) -> bool {
    i % 3 != 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlated_subqueries_on_the_shard_key_run_on_each_shard() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |config| {
        config.sharded_tables.push(ShardedTableConfig {
            name: "orders".into(),
            key: "user_id".into(),
            key_type: None,
        });
        config.reference_tables.push("buckets".into());
    })
    .await;
    let c = proxy::connect(&proxy).await;
    c.batch_execute("CREATE TABLE orders (order_id bigint, user_id bigint, total int)")
        .await
        .expect("create orders");
    let users: Vec<String> = (1..=40)
        .map(|i| format!("({i}, 'u{i:02}', 'u{i}@example.com')"))
        .collect();
    c.batch_execute(&format!(
        "INSERT INTO users (user_id, name, email) VALUES {}",
        users.join(", ")
    ))
    .await
    .expect("seed users");
    let orders: Vec<String> = (1..=40i64)
        .filter(|i| has_orders(*i))
        .flat_map(|i| {
            [
                format!("({}, {i}, {i})", i * 10),
                format!("({}, {i}, {})", i * 10 + 1, 2 * i),
            ]
        })
        .collect();
    c.batch_execute(&format!(
        "INSERT INTO orders (order_id, user_id, total) VALUES {}",
        orders.join(", ")
    ))
    .await
    .expect("seed orders");

    // Scattered and merged (ORDER BY), simple protocol.
    let want: Vec<String> = (1..=40i64)
        .filter(|i| has_orders(*i) && 2 * i > 50)
        .map(|i| i.to_string())
        .collect();
    let sql = "SELECT u.user_id FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id AND o.total > 50) ORDER BY 1";
    assert_eq!(rows(&c, sql).await, want, "{sql}");
    // The same in the extended protocol with a binary parameter inside the subquery.
    let got: Vec<String> = c
        .query(
            "SELECT u.user_id FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id AND o.total > $1) ORDER BY 1",
            &[&50i32],
        )
        .await
        .expect("extended EXISTS")
        .iter()
        .map(|r| r.get::<_, i64>(0).to_string())
        .collect();
    assert_eq!(got, want);
    // NOT EXISTS under an aggregate over every shard.
    let none = (1..=40i64).filter(|i| !has_orders(*i)).count();
    assert_eq!(
        rows(
            &c,
            "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id)"
        )
        .await,
        [none.to_string()]
    );
    // Keyed by the outer key: a scalar subquery compared in WHERE, and IN.
    for i in [1i64, 2, 3, 17, 40] {
        let got = c
            .query(
                "SELECT u.name FROM users u WHERE u.user_id = $1 AND (SELECT sum(total) FROM orders o WHERE o.user_id = u.user_id) = $2",
                &[&i, &(3 * i)],
            )
            .await
            .expect("keyed scalar subquery");
        assert_eq!(got.len(), usize::from(has_orders(i)), "user {i}");
        let got = c
            .query(
                "SELECT u.user_id FROM users u WHERE u.user_id = $1 AND u.user_id IN (SELECT o.user_id FROM orders o WHERE o.user_id = u.user_id)",
                &[&i],
            )
            .await
            .expect("keyed IN subquery");
        assert_eq!(got.len(), usize::from(has_orders(i)), "user {i}");
    }
    // A LATERAL subquery correlated by shard key: each user's largest order, scattered and
    // merged (ORDER BY, LIMIT) in the simple protocol, keyed in the extended one; LEFT JOIN
    // LATERAL keeps the users without orders.
    let want: Vec<String> = (1..=40i64)
        .filter(|i| has_orders(*i))
        .map(|i| format!("{i}|{}", 2 * i))
        .take(5)
        .collect();
    let sql = "SELECT u.user_id, x.total FROM users u, LATERAL (SELECT total FROM orders o WHERE o.user_id = u.user_id ORDER BY total DESC LIMIT 1) x ORDER BY 1 LIMIT 5";
    assert_eq!(rows(&c, sql).await, want, "{sql}");
    for i in [2i64, 3] {
        let got: Vec<(i64, Option<i32>)> = c
            .query(
                "SELECT u.user_id, x.total FROM users u LEFT JOIN LATERAL (SELECT total FROM orders o WHERE o.user_id = u.user_id ORDER BY total LIMIT 1) x ON true WHERE u.user_id = $1",
                &[&i],
            )
            .await
            .expect("keyed LEFT JOIN LATERAL")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let total = has_orders(i).then_some(i as i32);
        assert_eq!(got, [(i, total)], "user {i}");
    }
    // A scalar subquery in the output columns correlated by shard key (SQLAlchemy's
    // `column_property(select(func.count()).where(...).scalar_subquery())`, Django's
    // `annotate(n=Subquery(...))`): scattered and ordered by it, summed over every shard, keyed.
    let mut spent: Vec<(i64, i64)> = (1..=40i64)
        .map(|i| (i, if has_orders(i) { 3 * i } else { 0 }))
        .collect();
    spent.sort_by_key(|&(i, total)| (std::cmp::Reverse(total), i));
    let want: Vec<String> = spent
        .iter()
        .take(3)
        .map(|(i, total)| format!("{i}|{total}"))
        .collect();
    let sql = "SELECT u.user_id, coalesce((SELECT sum(o.total) FROM orders o WHERE o.user_id = u.user_id), 0) AS spent FROM users u ORDER BY spent DESC, u.user_id LIMIT 3";
    assert_eq!(rows(&c, sql).await, want, "{sql}");
    let orders_total = (1..=40i64).filter(|i| has_orders(*i)).count() * 2;
    let got: i64 = c
        .query_one(
            "SELECT sum((SELECT count(*) FROM orders o WHERE o.user_id = u.user_id))::bigint FROM users u WHERE u.user_id > $1",
            &[&0i64],
        )
        .await
        .expect("sum of a correlated count")
        .get(0);
    assert_eq!(got, orders_total as i64);
    for i in [3i64, 4] {
        let got: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM orders o WHERE o.user_id = u.user_id) FROM users u WHERE u.user_id = $1",
                &[&i],
            )
            .await
            .expect("keyed correlated count")
            .get(0);
        assert_eq!(got, if has_orders(i) { 2 } else { 0 }, "user {i}");
    }
    // In a block: an UPDATE with a correlated NOT EXISTS over every shard, read back in the
    // block, then rolled back.
    c.batch_execute("BEGIN").await.expect("begin");
    let n = c
        .execute(
            "UPDATE users u SET name = 'no orders' WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id)",
            &[],
        )
        .await
        .expect("UPDATE with NOT EXISTS");
    assert_eq!(n, none as u64);
    assert_eq!(
        rows(&c, "SELECT count(*) FROM users WHERE name = 'no orders'").await,
        [none.to_string()]
    );
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        rows(&c, "SELECT count(*) FROM users WHERE name = 'no orders'").await,
        ["0"]
    );
    uncorrelated_subqueries_run_first(&c).await;
    uncorrelated_subqueries_with_parameters(&c).await;
    ctes_over_sharded_tables(&c).await;
    derived_tables_run_first(&c).await;
    derived_tables_run_on_each_shard(&c, &cluster.info).await;
    ctes_keyed_to_one_shard(&c, &cluster.info).await;
    set_operations_keyed_to_one_shard(&c, &cluster.info).await;
    insert_select_runs_its_select_first(&c).await;
    // Correlated, but not by key, as a WHERE condition: the subquery's table is read first,
    // and each shard answers for its users over all of it.
    let sql = "SELECT count(*) FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.total = u.user_id)";
    let same = "SELECT count(*) FROM users u WHERE u.user_id IN (SELECT o.total FROM orders o)";
    assert_eq!(rows(&c, sql).await, rows(&c, same).await, "{sql}");
    // Inside another expression: refused, naming the table.
    let sql = "SELECT sum((SELECT count(*) FROM orders o WHERE o.total = u.user_id)) FROM users u";
    let e = c.simple_query(sql).await.expect_err(sql);
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000", "{sql}");
    assert!(
        db.message().contains("subquery over sharded table"),
        "{sql}: {}",
        db.message()
    );
    // The way around it comes as the ErrorResponse's hint, not inside the message.
    assert!(!db.message().contains("HINT"), "{}", db.message());
    assert!(
        db.hint().is_some_and(|h| h.contains("= ANY($1)")),
        "{sql}: {:?}",
        db.hint()
    );
    proxy.stop().await;
}

/// The SQLSTATE of the error `sql` gets in the simple protocol.
async fn error_code(c: &Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.expect_err(sql);
    e.as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not an ErrorResponse: {e:?}"))
        .code()
        .code()
        .to_string()
}

/// Uncorrelated subqueries over sharded tables (simple protocol): run first over every shard,
/// their result written into the outer statement, which then routes as usual.
async fn uncorrelated_subqueries_run_first(c: &Client) {
    // IN over rows on several shards; the outer query scattered and ordered.
    let want: Vec<String> = (1..=40i64)
        .filter(|i| has_orders(*i) && 2 * i > 70)
        .map(|i| i.to_string())
        .collect();
    assert!(want.len() > 1);
    let sql = "SELECT user_id FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total > 70) ORDER BY 1";
    assert_eq!(rows(c, sql).await, want, "{sql}");
    // NOT IN.
    let none = (1..=40i64).filter(|i| !has_orders(*i)).count();
    let sql = "SELECT count(*) FROM users WHERE user_id NOT IN (SELECT user_id FROM orders)";
    assert_eq!(rows(c, sql).await, [none.to_string()], "{sql}");
    // A scalar subquery compared in WHERE: the outer statement is then keyed.
    let sql = "SELECT name FROM users WHERE user_id = (SELECT max(user_id) FROM orders)";
    assert_eq!(rows(c, sql).await, ["u40"], "{sql}");
    // Scalar subqueries in the select list.
    let total: i64 = (1..=40i64).filter(|i| has_orders(*i)).map(|i| 3 * i).sum();
    let sql = "SELECT (SELECT sum(total) FROM orders), (SELECT count(*) FROM users)";
    assert_eq!(rows(c, sql).await, [format!("{total}|40")], "{sql}");
    // Empty results: IN of nothing, and a scalar subquery without a row is NULL.
    for sql in [
        "SELECT count(*) FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total > 1000)",
        "SELECT count(*) FROM users WHERE user_id = (SELECT user_id FROM orders WHERE total > 1000)",
    ] {
        assert_eq!(rows(c, sql).await, ["0"], "{sql}");
    }
    let sql = "SELECT count(*) FROM users WHERE user_id NOT IN (SELECT user_id FROM orders WHERE total > 1000)";
    assert_eq!(rows(c, sql).await, ["40"], "{sql}");
    // Text with a quote and a backslash comes back the same, whatever standard_conforming_strings.
    c.batch_execute(r"UPDATE users SET name = E'o''k\\x' WHERE user_id = 7")
        .await
        .expect("odd name");
    for scs in ["on", "off"] {
        c.batch_execute(&format!("SET standard_conforming_strings = {scs}"))
            .await
            .expect("set standard_conforming_strings");
        for sql in [
            "SELECT user_id FROM users WHERE name IN (SELECT name FROM users WHERE user_id = 7)",
            "SELECT user_id FROM users WHERE name = (SELECT name FROM users WHERE user_id = 7)",
        ] {
            assert_eq!(rows(c, sql).await, ["7"], "{sql} ({scs})");
        }
    }
    c.batch_execute(
        "RESET standard_conforming_strings; UPDATE users SET name = 'u7' WHERE user_id = 7",
    )
    .await
    .expect("reset");
    // More than one row for a scalar subquery: Postgres's error.
    let sql = "SELECT * FROM users WHERE user_id = (SELECT user_id FROM orders WHERE total > 70)";
    assert_eq!(error_code(c, sql).await, "21000", "{sql}");
    // Two columns for IN: Postgres's error.
    let sql = "SELECT * FROM users WHERE user_id IN (SELECT * FROM orders)";
    assert_eq!(error_code(c, sql).await, "42601", "{sql}");
    // In a block: the subquery sees the block's own uncommitted writes, and a DELETE whose
    // subquery ran first deletes them; all rolled back.
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute(
        "INSERT INTO orders (order_id, user_id, total) VALUES (9001, 3, 500), (9002, 6, 600)",
    )
    .await
    .expect("insert in block");
    let sql = "SELECT user_id FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total >= 500) ORDER BY 1";
    assert_eq!(rows(c, sql).await, ["3", "6"], "{sql}");
    let sql = "DELETE FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total >= 500)";
    let done = c.simple_query(sql).await.expect(sql);
    assert!(
        done.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(2))),
        "{sql}: {done:?}"
    );
    assert_eq!(rows(c, "SELECT count(*) FROM users").await, ["38"]);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(rows(c, "SELECT count(*) FROM users").await, ["40"]);
    let sql = "SELECT count(*) FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total >= 500)";
    assert_eq!(rows(c, sql).await, ["0"], "{sql}");
}

/// The first column of each row of an extended-protocol query, as text.
/// Asserts `sql` (simple protocol) is pgshard's 0A000 refusal whose message names `what`.
async fn refused_with(c: &Client, sql: &str, what: &str) {
    let e = c.simple_query(sql).await.expect_err(sql);
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000", "{sql}");
    assert!(db.message().contains(what), "{sql}: {}", db.message());
}

async fn ext_rows(c: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    c.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| match r.columns()[0].type_() {
            &Type::INT8 => r.get::<_, i64>(0).to_string(),
            &Type::TEXT | &Type::VARCHAR => r.get::<_, String>(0),
            other => panic!("{sql}: column of type {other}"),
        })
        .collect()
}

/// Uncorrelated subqueries whose text uses the statement's parameters, in the extended
/// protocol: run first with the parameters they use (binary as tokio-postgres sends them, and
/// text as psycopg does), the Bind pointed at the statement with their result written in.
async fn uncorrelated_subqueries_with_parameters(c: &Client) {
    let over = |t: i64| -> Vec<String> {
        (1..=40i64)
            .filter(|i| has_orders(*i) && 2 * i > t)
            .map(|i| i.to_string())
            .collect()
    };
    let sql = "SELECT user_id FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total > $1) ORDER BY 1";
    assert_eq!(ext_rows(c, sql, &[&70i32]).await, over(70), "{sql}");
    assert_eq!(ext_rows(c, sql, &[&60i32]).await, over(60), "{sql} again");
    // The same prepared once, bound with a text parameter.
    let st = c.prepare(sql).await.expect("prepare");
    let got: Vec<i64> = c
        .query(&st, &[&TextParam("74".into())])
        .await
        .expect("text parameter")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got.iter().map(i64::to_string).collect::<Vec<_>>(), over(74));
    // Parameters of the outer statement and of the subquery, numbered across both; NOT IN.
    let sql = "SELECT name FROM users WHERE name <> $1 AND user_id NOT IN (SELECT user_id FROM orders WHERE total > $2) AND user_id < $3 ORDER BY 1";
    let want: Vec<String> = (1..10i64)
        .filter(|i| !(has_orders(*i) && 2 * i > 4) && *i != 2)
        .map(|i| format!("u{i:02}"))
        .collect();
    assert_eq!(
        ext_rows(c, sql, &[&"u02", &4i32, &10i64]).await,
        want,
        "{sql}"
    );
    // A scalar subquery: the outer statement is then keyed; nested subqueries, innermost first.
    let sql =
        "SELECT name FROM users WHERE user_id = (SELECT max(user_id) FROM orders WHERE total < $1)";
    assert_eq!(ext_rows(c, sql, &[&30i32]).await, ["u29"], "{sql}");
    let sql = "SELECT count(*) FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total IN (SELECT total FROM orders WHERE user_id = $1))";
    // Totals 5 and 10: user 5 (5, 10) and user 10 (10, 20).
    assert_eq!(ext_rows(c, sql, &[&5i64]).await, ["2"], "{sql}");
    // Postgres's errors, and the session goes on.
    let sql = "SELECT * FROM users WHERE user_id = (SELECT user_id FROM orders WHERE total > $1)";
    let e = c.query(sql, &[&70i32]).await.expect_err(sql);
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("21000"),
        "{sql}"
    );
    let sql = "SELECT count(*) FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total > $1::int)";
    let e = c
        .query(sql, &[&TextParam("x".into())])
        .await
        .expect_err(sql);
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22P02"));
    assert_eq!(rows(c, "SELECT count(*) FROM users").await, ["40"]);
    // Uncorrelated EXISTS (SQLAlchemy's `select(exists().where(…))`): run first, keyed or
    // scattered, and answered as Postgres names it; a keyed parameter and a keyless filter.
    let sql = "SELECT EXISTS (SELECT 1 FROM orders WHERE user_id = $1)";
    for (user, want) in [(4i64, true), (3, false), (6, false), (40, true)] {
        let row = c.query_one(sql, &[&user]).await.expect(sql);
        assert_eq!(row.columns()[0].name(), "exists");
        assert_eq!(
            row.get::<_, bool>(0),
            want && has_orders(user),
            "{sql} {user}"
        );
    }
    let sql = "SELECT NOT EXISTS (SELECT * FROM orders WHERE total > $1) AS none";
    for (total, want) in [(79i32, false), (80, true)] {
        let row = c.query_one(sql, &[&total]).await.expect(sql);
        assert_eq!(row.get::<_, bool>(0), want, "{sql} {total}");
    }
    assert_eq!(
        rows(
            c,
            "SELECT count(*) FROM users WHERE user_id < 5 AND EXISTS (SELECT 1 FROM orders WHERE total > 79)"
        )
        .await,
        ["4"]
    );
    // In a block: the subquery sees the block's own write.
    c.batch_execute("BEGIN; INSERT INTO orders (order_id, user_id, total) VALUES (9001, 3, 500)")
        .await
        .expect("insert in block");
    let sql =
        "SELECT user_id FROM users WHERE user_id IN (SELECT user_id FROM orders WHERE total >= $1)";
    assert_eq!(ext_rows(c, sql, &[&500i32]).await, ["3"], "{sql}");
    c.batch_execute("ROLLBACK").await.expect("rollback");
}

/// A statement whose CTEs and body are all keyed to one shard runs there whole, as one
/// statement: `statement_timestamp()` read in the CTE equals the one read in the body (a CTE
/// run first is a statement of its own, with a later timestamp for the body), both protocols;
/// keyed to two shards, the CTE runs first and the timestamps differ. A data-modifying CTE
/// keyed to one shard runs there (refused when not keyed).
/// Where each user lives, read from the shards directly.
async fn shard_of_users(
    info: &pgshard::cluster::ClusterInfo,
) -> std::collections::BTreeMap<i64, u32> {
    let mut shard_of = std::collections::BTreeMap::new();
    for id in info.shard_ids() {
        let direct = proxy::shard(info, id).await;
        for r in direct
            .query("SELECT user_id FROM users", &[])
            .await
            .expect("users on a shard")
        {
            shard_of.insert(r.get::<_, i64>(0), id);
        }
    }
    shard_of
}

async fn ctes_keyed_to_one_shard(c: &Client, info: &pgshard::cluster::ClusterInfo) {
    let shard_of = shard_of_users(info).await;
    let one_statement = "WITH o AS (SELECT statement_timestamp() AS t FROM orders WHERE user_id = 5) SELECT bool_and(o.t = statement_timestamp()), count(*) FROM o, users u WHERE u.user_id = {k}";
    let mut apart = 0;
    for k in [5i64, 1, 2, 4, 7, 8, 10, 11, 13, 14, 16] {
        let same = shard_of[&5] == shard_of[&k];
        apart += usize::from(!same);
        let sql = one_statement.replace("{k}", &k.to_string());
        assert_eq!(
            rows(c, &sql).await,
            [format!("{}|2", if same { "t" } else { "f" })],
            "{sql}"
        );
        let got = c
            .query_one(
                "WITH o AS (SELECT statement_timestamp() AS t FROM orders WHERE user_id = $1) SELECT bool_and(o.t = statement_timestamp()), count(*) FROM o, users u WHERE u.user_id = $2",
                &[&5i64, &k],
            )
            .await
            .expect("extended keyed CTE");
        assert_eq!(
            (got.get::<_, bool>(0), got.get::<_, i64>(1)),
            (same, 2),
            "extended, user {k}"
        );
    }
    assert!(apart > 0, "some users live on another shard than user 5");
    // A data-modifying CTE keyed to one shard (rolled back).
    c.batch_execute("BEGIN").await.expect("begin");
    let sql =
        "WITH d AS (DELETE FROM orders WHERE user_id = 7 RETURNING total) SELECT sum(total) FROM d";
    assert_eq!(rows(c, sql).await, ["21"], "{sql}");
    assert_eq!(
        rows(c, "SELECT count(*) FROM orders WHERE user_id = 7").await,
        ["0"]
    );
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        rows(c, "SELECT count(*) FROM orders WHERE user_id = 7").await,
        ["2"]
    );
}

/// `WITH` over sharded tables: a read-only CTE runs first (keyed or scattered and merged), its
/// rows written into the statement as typed arrays; recursive and data-modifying CTEs over
/// sharded tables are refused, named. Both protocols.
async fn ctes_over_sharded_tables(c: &Client) {
    let big: Vec<(i64, i64)> = (1..=40i64)
        .filter(|i| has_orders(*i) && 2 * i > 60)
        .map(|i| (i, 2 * i))
        .collect();
    // A CTE over every shard, joined with a sharded table; the outer statement scattered.
    let sql = "WITH big AS (SELECT user_id, total FROM orders WHERE total > 60) SELECT u.name || ':' || b.total FROM users u JOIN big b ON b.user_id = u.user_id ORDER BY b.total";
    let want: Vec<String> = big.iter().map(|(i, t)| format!("u{i:02}:{t}")).collect();
    assert_eq!(rows(c, sql).await, want, "{sql}");
    // Merged aggregates in the CTE, a column list, MATERIALIZED; the outer runs on any shard.
    let total: i64 = (1..=40i64).filter(|i| has_orders(*i)).map(|i| 3 * i).sum();
    let n = (1..=40i64).filter(|i| has_orders(*i)).count() * 2;
    let sql = "WITH t (n, s) AS MATERIALIZED (SELECT count(*), sum(total) FROM orders) SELECT n, s, s / n FROM t";
    assert_eq!(
        rows(c, sql).await,
        [format!("{n}|{total}|{}", total / n as i64)],
        "{sql}"
    );
    // Keyed CTE; the second CTE reads the first; no rows.
    let sql = "WITH o AS (SELECT total FROM orders WHERE user_id = 5) SELECT sum(total) FROM o";
    assert_eq!(rows(c, sql).await, ["15"], "{sql}");
    let sql = "WITH a AS (SELECT user_id FROM orders WHERE total > 70), b AS (SELECT name FROM users WHERE user_id IN (SELECT user_id FROM a)) SELECT count(*) FROM b";
    let n70 = (1..=40i64).filter(|i| has_orders(*i) && 2 * i > 70).count();
    assert_eq!(rows(c, sql).await, [n70.to_string()], "{sql}");
    let sql = "WITH nothing AS (SELECT user_id, total FROM orders WHERE total > 1000) SELECT count(*) FROM nothing";
    assert_eq!(rows(c, sql).await, ["0"], "{sql}");
    // Extended protocol with a parameter in the CTE and one in the outer statement.
    let sql = "WITH big AS (SELECT user_id FROM orders WHERE total > $1) SELECT name FROM users WHERE user_id IN (SELECT user_id FROM big) AND name <> $2 ORDER BY 1";
    let want: Vec<String> = big
        .iter()
        .filter(|(i, _)| *i != 31)
        .map(|(i, _)| format!("u{i:02}"))
        .collect();
    assert_eq!(ext_rows(c, sql, &[&60i32, &"u31"]).await, want, "{sql}");
    let st = c
        .prepare("WITH s AS (SELECT sum(total) AS s FROM orders WHERE total < $1) SELECT s FROM s")
        .await
        .expect("prepare");
    let got: i64 = c
        .query_one(&st, &[&TextParam("10".into())])
        .await
        .expect("text parameter")
        .get(0);
    let want: i64 = (1..=40i64)
        .filter(|i| has_orders(*i))
        .flat_map(|i| [i, 2 * i])
        .filter(|t| *t < 10)
        .sum();
    assert_eq!(got, want);
    // Refused, named: recursion over sharded tables, and a data-modifying CTE whose rows the
    // statement reads together with another table (only a SELECT over the CTE alone runs whole
    // on each shard).
    for (sql, what) in [
        (
            "WITH RECURSIVE r AS (SELECT user_id FROM orders UNION SELECT user_id + 1 FROM r WHERE user_id < 3) SELECT count(*) FROM r",
            "WITH RECURSIVE over sharded tables",
        ),
        (
            "WITH d AS (DELETE FROM orders WHERE total > 1000 RETURNING *) SELECT count(*) FROM d JOIN users USING (user_id)",
            "data-modifying CTE d over sharded tables",
        ),
    ] {
        refused_with(c, sql, what).await;
    }
    assert_eq!(
        rows(c, "SELECT count(*) FROM orders").await,
        [n.to_string()]
    );
}

/// Derived tables (subqueries in FROM) over sharded tables, as ORMs write them: run first,
/// keyed or over every shard and merged, their rows written in their place; both protocols, in
/// a block the block's own rows.
async fn derived_tables_run_first(c: &Client) {
    // An outer join keeping every row of a function or VALUES while matching a sharded table
    // directly is refused (each shard would answer every kept row, NULL-extended where the match
    // is elsewhere); the sharded side as a derived table is read first, and is exact.
    for sql in [
        "SELECT g, o.total FROM generate_series(1, 6) g LEFT JOIN orders o ON o.user_id = g",
        "SELECT count(*) FROM users u FULL JOIN generate_series(1, 3) g ON u.user_id = g",
    ] {
        refused_with(c, sql, "JOIN) keeping every row").await;
    }
    // So is the table itself when ON equates its column with a qualified column of the kept
    // side: its rows that can match are read first, and the join runs on one shard.
    let sql = "SELECT v.id || ':' || coalesce(u.name, '-') FROM users u RIGHT JOIN (VALUES (1), (41)) v(id) ON u.user_id = v.id ORDER BY v.id";
    assert_eq!(rows(c, sql).await, ["1:u01", "41:-"], "{sql}");
    // Grouped over the kept side with NULL-skipping aggregates of the sharded side (an ORM's
    // annotate(Count(...)) of a reference table): each shard's NULL-extended rows add nothing,
    // so the merged groups are exact.
    c.batch_execute(
        "CREATE TABLE buckets (id int PRIMARY KEY, label text); \
         INSERT INTO buckets SELECT g, 'b' || g FROM generate_series(1, 7) g",
    )
    .await
    .expect("a reference table");
    let want: Vec<String> = (1..=7i64)
        .map(|b| match has_orders(b) {
            true => format!("b{b}:2:{}", 3 * b),
            false => format!("b{b}:0:-"),
        })
        .collect();
    let sql = "SELECT b.label || ':' || count(o.order_id) || ':' || coalesce(sum(o.total)::text, '-') FROM buckets b LEFT JOIN orders o ON o.user_id = b.id GROUP BY b.id, b.label ORDER BY b.id";
    assert_eq!(rows(c, sql).await, want, "{sql}");
    assert_eq!(ext_rows(c, sql, &[]).await, want, "{sql}");
    // count(*) would count every shard's NULL-extended row, and plain rows would repeat them:
    // the orders that can match are read first instead, and the join runs on one shard.
    let sql = "SELECT b.id || ':' || count(*) FROM buckets b LEFT JOIN orders o ON o.user_id = b.id GROUP BY b.id ORDER BY b.id";
    let want: Vec<String> = (1..=7i64)
        .map(|b| format!("{b}:{}", if has_orders(b) { 2 } else { 1 }))
        .collect();
    assert_eq!(rows(c, sql).await, want, "{sql}");
    assert_eq!(ext_rows(c, sql, &[]).await, want, "{sql}");
    let sql = "SELECT b.id || ':' || coalesce(o.total::text, '-') FROM buckets b LEFT JOIN orders o ON o.user_id = b.id ORDER BY b.id, o.total";
    let want: Vec<String> = (1..=7i64)
        .flat_map(|b| match has_orders(b) {
            true => vec![format!("{b}:{b}"), format!("{b}:{}", 2 * b)],
            false => vec![format!("{b}:-")],
        })
        .collect();
    assert_eq!(rows(c, sql).await, want, "{sql}");
    c.batch_execute("DROP TABLE buckets").await.expect("drop");
    let sql = "SELECT g || ':' || coalesce(u.name, '-') FROM generate_series(39, 42) g LEFT JOIN (SELECT user_id, name FROM users) u ON u.user_id = g ORDER BY g";
    assert_eq!(
        rows(c, sql).await,
        ["39:u39", "40:u40", "41:-", "42:-"],
        "{sql}"
    );
    let sql = "SELECT count(*) FROM generate_series($1::int, 42) g LEFT JOIN (SELECT user_id FROM users) u ON u.user_id = g";
    assert_eq!(ext_rows(c, sql, &[&39i32]).await, ["4"], "{sql}");
    // SQLAlchemy's Query.count(): u10..u19.
    let sql = "SELECT count(*) AS count_1 FROM (SELECT users.user_id AS users_user_id, users.name AS users_name FROM users WHERE users.name LIKE 'u1%') AS anon_1";
    assert_eq!(rows(c, sql).await, ["10"], "{sql}");
    // Rails' count of a limited relation, in both protocols.
    let sql = "SELECT COUNT(*) FROM (SELECT 1 AS one FROM users LIMIT 7) subquery_for_count";
    assert_eq!(rows(c, sql).await, ["7"], "{sql}");
    let sql = "SELECT COUNT(*) FROM (SELECT 1 AS one FROM users LIMIT $1) subquery_for_count";
    assert_eq!(ext_rows(c, sql, &[&7i64]).await, ["7"], "{sql}");
    // Django's count() of a distinct queryset.
    let sql = "SELECT COUNT(*) FROM (SELECT DISTINCT total % 7 AS col1 FROM orders) subquery";
    assert_eq!(rows(c, sql).await, ["7"], "{sql}");
    // Joined with a sharded table, the derived table's aggregates merged over every shard.
    let sql = "SELECT u.name || ':' || x.n FROM users u JOIN (SELECT user_id, sum(total) AS n FROM orders GROUP BY user_id) x ON x.user_id = u.user_id WHERE u.user_id < 6 ORDER BY 1";
    assert_eq!(
        rows(c, sql).await,
        ["u01:3", "u02:6", "u04:12", "u05:15"],
        "{sql}"
    );
    // Parameters inside the derived table and outside it, binary and text.
    let n70 = (1..=40i64).filter(|i| has_orders(*i) && 2 * i > 70).count();
    let sql = "SELECT count(*) FROM (SELECT user_id FROM orders WHERE total > $1) s WHERE s.user_id <> $2";
    assert_eq!(
        ext_rows(c, sql, &[&70i32, &0i64]).await,
        [n70.to_string()],
        "{sql}"
    );
    let got: i64 = c
        .query_one(sql, &[&TextParam("70".into()), &TextParam("0".into())])
        .await
        .expect("text parameters")
        .get(0);
    assert_eq!(got, n70 as i64, "{sql} with text parameters");
    // UPDATE … FROM a derived table in a block: it sees the block's rows; rolled back.
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("INSERT INTO orders (order_id, user_id, total) VALUES (9001, 3, 1000)")
        .await
        .expect("insert in the block");
    let sql = "UPDATE users SET email = 'big' FROM (SELECT user_id FROM orders WHERE total > 70) s WHERE s.user_id = users.user_id";
    let updated = c.execute(sql, &[]).await.expect(sql);
    assert_eq!(updated, n70 as u64 + 1, "{sql}");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        rows(c, "SELECT count(*) FROM users WHERE email = 'big'").await,
        ["0"]
    );
}

/// One Postgres holding every row pgshard spreads over the shards: a session on the first
/// shard whose temporary `users` and `orders` (first on its search_path, before the shard's own
/// slice) hold a copy of all the rows, read through pgshard.
async fn one_postgres(c: &Client, info: &pgshard::cluster::ClusterInfo) -> Client {
    let first = *info.shard_ids().first().expect("a shard");
    let plain = proxy::shard(info, first).await;
    for table in ["users", "orders"] {
        plain
            .batch_execute(&format!("CREATE TEMP TABLE {table} (LIKE public.{table})"))
            .await
            .expect("temporary table");
        let literal = |v: Option<String>| {
            v.map_or("NULL".to_string(), |v| {
                format!("'{}'", v.replace('\'', "''"))
            })
        };
        let values: Vec<String> = simple_rows(c, &format!("SELECT * FROM {table}"))
            .await
            .into_iter()
            .map(|r| {
                format!(
                    "({})",
                    r.into_iter().map(literal).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        assert!(!values.is_empty(), "{table} has rows");
        plain
            .batch_execute(&format!(
                "INSERT INTO pg_temp.{table} VALUES {}",
                values.join(", ")
            ))
            .await
            .expect("copy the rows");
    }
    plain
}

/// A derived table whose every row comes from one shard's rows (no aggregate, DISTINCT,
/// LIMIT, … inside) runs whole on each shard (or the one its key names), the outer query
/// merged as over a table: answers equal one Postgres's to the byte, in both protocols
/// (parameters binary and text), in and out of a block. Its rows never pass through pgshard, so
/// a count over more bytes than pgshard holds for a derived table run first is answered, where
/// the same rows behind a LIMIT (run first) are refused.
async fn derived_tables_run_on_each_shard(c: &Client, info: &pgshard::cluster::ClusterInfo) {
    let plain = one_postgres(c, info).await;
    let same = |sql: &'static str| {
        let plain = &plain;
        async move {
            let got = simple_rows(c, sql).await;
            assert!(!got.is_empty(), "{sql}: no rows");
            assert_eq!(got, simple_rows(plain, sql).await, "{sql}");
        }
    };
    for sql in [
        // SQLAlchemy's Query.count() with a filter.
        "SELECT count(*) AS count_1 FROM (SELECT orders.order_id AS orders_order_id, orders.total AS orders_total FROM orders WHERE orders.total > 30) AS anon_1",
        // Aggregates merged from the shards' partial values, over no rows too.
        "SELECT sum(t), avg(t), min(t), max(t), count(DISTINCT t % 7), count(*) FROM (SELECT total AS t FROM orders WHERE user_id > 5) s",
        "SELECT count(*), sum(total), avg(total), max(total) FROM (SELECT total FROM orders WHERE total < 0) s",
        // GROUP BY, ORDER BY and LIMIT in the outer query; a co-located join inside.
        "SELECT s.name, count(*), sum(s.total), avg(s.total) FROM (SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.user_id WHERE u.user_id < 20) s GROUP BY s.name ORDER BY 3 DESC, 1 LIMIT 5",
        "SELECT s.total % 5 AS r, count(*), min(s.total) FROM (SELECT total FROM orders) s GROUP BY 1 HAVING count(*) > 2 ORDER BY 1",
        "SELECT * FROM (SELECT user_id, name FROM users WHERE email LIKE '%1%') s ORDER BY name DESC LIMIT 4 OFFSET 2",
        "SELECT DISTINCT s.t % 4 FROM (SELECT total AS t FROM orders) s ORDER BY 1",
        // Grouped by the shard key: each shard's groups are final, string_agg and all.
        "SELECT k, string_agg(n::text, ',' ORDER BY n) FROM (SELECT user_id AS k, total AS n FROM orders) s GROUP BY k ORDER BY k LIMIT 6",
        // Grouped by the key of an outer join's nullable side: the users without orders are
        // one NULL group (on every shard), as are they over a table.
        "SELECT k, count(*) FROM (SELECT o.user_id AS k FROM users u LEFT JOIN orders o ON o.user_id = u.user_id) s GROUP BY k ORDER BY k NULLS FIRST LIMIT 3",
        "SELECT o.user_id, count(*) FROM users u LEFT JOIN orders o ON o.user_id = u.user_id GROUP BY o.user_id ORDER BY 1 NULLS FIRST LIMIT 3",
        // An ORDER BY inside under one row of aggregates; nested derived tables.
        "SELECT count(*), max(name) FROM (SELECT name FROM users ORDER BY name) s",
        "SELECT sum(a), count(*) FROM (SELECT a * 2 AS a FROM (SELECT user_id AS a FROM users WHERE name > 'u2') x) y",
        // Not row-local inside (DISTINCT, LIMIT): run first as before, as exact.
        "SELECT count(*) FROM (SELECT DISTINCT total % 7 AS d FROM orders) s",
        "SELECT count(*), sum(total) FROM (SELECT total FROM orders ORDER BY total DESC LIMIT 9) s",
    ] {
        same(sql).await;
    }
    // The extended protocol, parameters inside and outside the derived table, binary and text;
    // compared with the count from the known rows as well.
    let count = "SELECT count(*) AS count_1 FROM (SELECT orders.order_id AS orders_order_id, orders.total AS orders_total FROM orders WHERE orders.total > $1 AND orders.user_id <> $2) AS anon_1";
    let totals: Vec<(i64, i64)> = (1..=40i64)
        .filter(|i| has_orders(*i))
        .flat_map(|i| [(i, i), (i, 2 * i)])
        .collect();
    let want = totals.iter().filter(|&&(u, t)| t > 30 && u != 20).count() as i64;
    assert!(want > 0);
    let binary: [&(dyn ToSql + Sync); 2] = [&30i32, &20i64];
    let (t30, t20) = (TextParam("30".into()), TextParam("20".into()));
    let text: [&(dyn ToSql + Sync); 2] = [&t30, &t20];
    for params in [&binary[..], &text[..]] {
        let got = extended_answer(c, count, params).await.expect(count);
        assert_eq!(
            got,
            extended_answer(&plain, count, params).await.expect(count)
        );
        let n: i64 = c.query_one(count, params).await.expect(count).get(0);
        assert_eq!(n, want, "{count}");
    }
    for sql in [
        "SELECT sum(t), avg(t), min(t), max(t) FROM (SELECT total AS t FROM orders WHERE total > $1) s",
        "SELECT s.user_id, count(*), sum(s.total) FROM (SELECT user_id, total FROM orders WHERE total > $1) s GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT 4",
    ] {
        let got = extended_answer(c, sql, &[&25i32]).await.expect(sql);
        assert!(!got.1.is_empty(), "{sql}");
        assert_eq!(got, extended_answer(&plain, sql, &[&25i32]).await.expect(sql), "{sql}");
    }
    // Keyed inside: one shard answers.
    let keyed = "SELECT count(*), sum(total) FROM (SELECT total FROM orders WHERE user_id = $1 AND total > $2) s";
    for user in [1i64, 2, 3, 40] {
        let row = c.query_one(keyed, &[&user, &0i32]).await.expect(keyed);
        let want = if has_orders(user) {
            (2, Some(3 * user))
        } else {
            (0, None)
        };
        assert_eq!(
            (row.get::<_, i64>(0), row.get::<_, Option<i64>>(1)),
            want,
            "user {user}"
        );
    }
    // In a block: the block's own rows (on two shards) are counted; rolled back, they are not.
    c.batch_execute("BEGIN; INSERT INTO orders (order_id, user_id, total) VALUES (9002, 4, 31), (9003, 5, 32), (9004, 20, 33)")
        .await
        .expect("insert in a block");
    let n: i64 = c.query_one(count, &binary).await.expect(count).get(0);
    assert_eq!(n, want + 2, "{count} in a block");
    let n = rows(
        c,
        "SELECT count(*) FROM (SELECT total FROM orders WHERE total > 30 AND user_id <> 20) s",
    )
    .await;
    assert_eq!(n, [(want + 2).to_string()], "in a block, simple protocol");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    let n: i64 = c.query_one(count, &binary).await.expect(count).get(0);
    assert_eq!(n, want, "{count} after the rollback");
    // Two rows of 1 MiB per user, more than pgshard holds for what it runs first: counted on
    // each shard; the same rows behind a LIMIT (not row-local: run first) are refused.
    let big = "SELECT count(*), sum(length(pad)) FROM (SELECT repeat('x', 1048576) AS pad FROM users, generate_series(1, 2) g WHERE users.user_id > $1) s";
    let row = c.query_one(big, &[&0i64]).await.expect(big);
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (80, 80 << 20),
        "{big}"
    );
    let limited = "SELECT count(*), sum(length(pad)) FROM (SELECT repeat('x', 1048576) AS pad FROM users, generate_series(1, 2) g WHERE users.user_id > $1 LIMIT 1000) s";
    let e = c.query_one(limited, &[&0i64]).await.expect_err(limited);
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "54000", "{limited}: {}", db.message());
    assert!(
        db.message().contains("MiB pgshard holds"),
        "{}",
        db.message()
    );
}

/// UNION, INTERSECT and EXCEPT whose every branch is keyed to one shard (or reads no table),
/// a recursive CTE among them, run whole on that shard, in both protocols; branches keyed to
/// different shards stay refused with 0A000.
async fn set_operations_keyed_to_one_shard(c: &Client, info: &pgshard::cluster::ClusterInfo) {
    let shard_of = shard_of_users(info).await;
    let near = *shard_of
        .iter()
        .find(|&(&k, &s)| k != 5 && has_orders(k) && s == shard_of[&5])
        .expect("another user with orders beside user 5")
        .0;
    let far = *shard_of
        .iter()
        .find(|&(_, &s)| s != shard_of[&5])
        .expect("a user on another shard than user 5")
        .0;
    let mut names = vec!["u05".to_string(), format!("u{near:02}")];
    names.sort();
    let union = "SELECT name FROM users WHERE user_id = {a} UNION ALL SELECT name FROM users WHERE user_id = {b} ORDER BY 1";
    let sql = union.replace("{a}", "5").replace("{b}", &near.to_string());
    assert_eq!(rows(c, &sql).await, names, "{sql}");
    let ext = union.replace("{a}", "$1").replace("{b}", "$2");
    assert_eq!(ext_rows(c, &ext, &[&5i64, &near]).await, names, "{ext}");
    // INTERSECT and EXCEPT, a branch reading no table, and LIMIT on the whole.
    let sql = "SELECT user_id FROM orders WHERE user_id = 5 INTERSECT SELECT user_id FROM users WHERE user_id = 5";
    assert_eq!(rows(c, sql).await, ["5"], "{sql}");
    let sql =
        "SELECT total::bigint FROM orders WHERE user_id = $1 EXCEPT SELECT 10 ORDER BY 1 LIMIT 5";
    assert_eq!(ext_rows(c, sql, &[&5i64]).await, ["5"], "{sql}");
    // A recursive CTE whose every branch is keyed to user 5: the recursion runs on its shard,
    // following user 5's orders from total 5 to total 10 (and no further).
    let recursive = "WITH RECURSIVE t (user_id, total, depth) AS (SELECT user_id, total, 1 FROM orders WHERE user_id = {k} AND total = 5 UNION ALL SELECT o.user_id, o.total, t.depth + 1 FROM orders o JOIN t ON o.user_id = t.user_id AND o.total = t.total * 2 WHERE o.user_id = {k}) SELECT format('%s|%s', total, depth) FROM t ORDER BY depth";
    let sql = recursive.replace("{k}", "5");
    assert_eq!(rows(c, &sql).await, ["5|1", "10|2"], "{sql}");
    let ext = recursive.replace("{k}", "$1");
    assert_eq!(ext_rows(c, &ext, &[&5i64]).await, ["5|1", "10|2"], "{ext}");
    // Branches keyed to different shards, or keyless: each branch over sharded tables runs
    // first (keyed, or merged), its rows take its place, and the whole runs as Postgres runs it.
    let names = |ids: &[i64]| -> Vec<String> { ids.iter().map(|i| format!("u{i:02}")).collect() };
    let mut pair = [5, far];
    pair.sort();
    let sql = format!("SELECT name FROM users WHERE user_id = 5 UNION SELECT name FROM users WHERE user_id = {far} ORDER BY 1");
    assert_eq!(rows(c, &sql).await, names(&pair), "{sql}");
    let sql = "SELECT name FROM users WHERE user_id = $1 UNION SELECT name FROM users WHERE user_id = $2 ORDER BY 1";
    assert_eq!(
        ext_rows(c, sql, &[&5i64, &far]).await,
        names(&pair),
        "{sql}"
    );
    let big: Vec<i64> = (36..=40).filter(|i| has_orders(*i)).collect();
    let want: Vec<String> = (1..=5).chain(big).map(|i: i64| i.to_string()).collect();
    let sql = "SELECT user_id FROM users WHERE user_id <= 5 UNION SELECT user_id FROM orders WHERE total > 70 ORDER BY 1";
    assert_eq!(rows(c, sql).await, want, "{sql}");
    let sql = "SELECT user_id FROM users WHERE user_id <= $1 INTERSECT SELECT user_id FROM orders EXCEPT SELECT 2 ORDER BY 1 LIMIT $2";
    let want: Vec<String> = [1i64, 4, 5].iter().map(i64::to_string).collect();
    assert_eq!(ext_rows(c, sql, &[&6i64, &10i64]).await, want, "{sql}");
}

/// How many orders of `total` each user in `keys` has, read by key (on the key's shard): 1 each
/// when every row went to its shard.
async fn keyed_counts(c: &Client, keys: impl Iterator<Item = i64>, total: i32) -> Vec<i64> {
    let mut out = Vec::new();
    for k in keys {
        let row = c
            .query_one(
                "SELECT count(*) FROM orders WHERE user_id = $1 AND total = $2",
                &[&k, &total],
            )
            .await
            .expect("keyed count");
        out.push(row.get(0));
    }
    out
}

/// `INSERT … SELECT` into a sharded table: the SELECT (over sharded tables, or computing the
/// keys) runs first, its rows go each to its key's shard; RETURNING, parameters (binary) and a
/// rolled-back block behave as in one Postgres.
async fn insert_select_runs_its_select_first(c: &Client) {
    // Simple protocol, rows read from every shard.
    let mut got = rows(
        c,
        "INSERT INTO orders (order_id, user_id, total) SELECT user_id + 1000, user_id, 501 FROM users WHERE user_id <= 12 RETURNING user_id",
    )
    .await;
    got.sort_by_key(|k| k.parse::<i64>().unwrap_or(0));
    let want: Vec<String> = (1..=12).map(|i: i64| i.to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(keyed_counts(c, 1..=12, 501).await, vec![1; 12]);
    // Extended protocol, keys computed by the SELECT from bound parameters (a parameter that is
    // a whole output column is typed by its cast: the SELECT runs on its own, where Postgres
    // would type a bare `$1` as text).
    let sql = "INSERT INTO orders (order_id, user_id, total) SELECT g + 2000, g, $1::int FROM generate_series(1, $2) g RETURNING order_id";
    let n = c.execute(sql, &[&502i32, &10i32]).await.expect(sql);
    assert_eq!(n, 10);
    assert_eq!(keyed_counts(c, 1..=10, 502).await, vec![1; 10]);
    // From a sharded table into itself, in a block that rolls back: nothing stays.
    c.batch_execute("BEGIN").await.expect("begin");
    let sql = "INSERT INTO orders (order_id, user_id, total) SELECT order_id + 1000, user_id, total + 2 FROM orders WHERE total = $1";
    assert_eq!(c.execute(sql, &[&501i32]).await.expect(sql), 12);
    assert_eq!(keyed_counts(c, 1..=12, 503).await, vec![1; 12]);
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(keyed_counts(c, 1..=12, 503).await, vec![0; 12]);
    c.batch_execute("DELETE FROM orders WHERE total IN (501, 502)")
        .await
        .expect("clean up");
}
