//! Sharded tables outside `public`, one cluster for the binary: `billing.invoices` (bigint key)
//! and `billing.accounts` (text key, so its key type must be read from the shards under its
//! schema) are configured by qualified name, while an unsharded `public.invoices` of the same
//! name lives on the first shard. Keyed writes and reads, named qualified or unqualified under
//! `SET search_path`, `SET LOCAL`, `set_config` and the startup option, in the simple and the
//! extended protocol, COPY and generated keys, land on the shard `sql_owned_by` names; the
//! unsharded table is never confused with the sharded one, and neither a cached route nor a
//! prepared statement carries one search_path's table over to another. `pgshard verify` checks
//! the schema-qualified tables; psycopg does the same with its defaults.

mod common;

use std::collections::BTreeMap;

use common::placement::owned_rows;
use common::plain::plain_database;
use common::proxy::{self, connect_url};
use common::script::run_script;
use common::TestCluster;
use futures_util::{pin_mut, SinkExt};
use pgshard::config::schemas::{ShardedSchemaConfig, TenantsConfig};
use pgshard::config::ShardedTableConfig;
use pgshard::router::{KeyType, ShardKey, ShardMap, Strategy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows every shard but the first holds in its own (unsharded, never read) `public.invoices`:
/// a statement that reached them would see `n = DECOY`.
const DECOY: i32 = 999;
/// Rows of the real unsharded `public.invoices` on the first shard: ids 1..=PUBLIC_ROWS, `n = -id`.
const PUBLIC_ROWS: i64 = 7;

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// The only value of a one-row, one-column simple query.
async fn simple_value(c: &Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Creates the schema, the sharded tables and the decoy `public.invoices` on every shard.
async fn create_tables(cluster: &TestCluster, first: u32) {
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        direct
            .batch_execute(
                "CREATE SCHEMA billing; GRANT USAGE, CREATE ON SCHEMA billing TO app; \
                 CREATE TABLE billing.invoices (id bigint PRIMARY KEY, n int, note text); \
                 CREATE TABLE billing.accounts (name text PRIMARY KEY, n int); \
                 GRANT ALL ON ALL TABLES IN SCHEMA billing TO app; \
                 CREATE TABLE public.invoices (id bigint PRIMARY KEY, n int)",
            )
            .await
            .unwrap_or_else(|e| panic!("tables on shard {id}: {e}"));
        let fill = if id == first {
            format!(
                "INSERT INTO public.invoices SELECT i, -i FROM generate_series(1, {PUBLIC_ROWS}) i"
            )
        } else {
            format!("INSERT INTO public.invoices SELECT i, {DECOY} FROM generate_series(1, 1000) i")
        };
        direct.batch_execute(&fill).await.unwrap();
    }
}

fn tables() -> Vec<ShardedTableConfig> {
    vec![
        ShardedTableConfig {
            name: "billing.invoices".into(),
            key: "id".into(),
            key_type: None,
        },
        ShardedTableConfig {
            name: "billing.accounts".into(),
            key: "name".into(),
            key_type: None,
        },
    ]
}

/// Every row of `table` on each shard is one `sql_owned_by` gives that shard; the rows per shard.
async fn assert_placed(
    cluster: &TestCluster,
    map: &ShardMap,
    table: &str,
    key: &str,
    ty: KeyType,
) -> Vec<i64> {
    let mut counts = Vec::new();
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        counts.push(owned_rows(&direct, map, table, (key, ty), id).await);
    }
    counts
}

/// Keyed writes of `billing.invoices` ids `from..to`, half qualified and half unqualified under
/// `SET search_path = billing`, in both protocols; then keyed reads of each.
async fn keyed_writes_and_reads(c: &Client, from: i64, to: i64) {
    c.batch_execute("RESET search_path").await.unwrap();
    let mid = (from + to) / 2;
    for id in from..mid {
        if id % 2 == 0 {
            c.batch_execute(&format!(
                "INSERT INTO billing.invoices (id, n) VALUES ({id}, {})",
                id % 1000
            ))
            .await
            .unwrap();
        } else {
            let n = (id % 1000) as i32;
            c.execute(
                "INSERT INTO billing.invoices (id, n) VALUES ($1, $2)",
                &[&id, &n],
            )
            .await
            .unwrap();
        }
    }
    c.batch_execute("SET search_path = billing").await.unwrap();
    for id in mid..to {
        if id % 2 == 0 {
            c.batch_execute(&format!(
                "INSERT INTO invoices (id, n) VALUES ({id}, {})",
                id % 1000
            ))
            .await
            .unwrap();
        } else {
            let n = (id % 1000) as i32;
            c.execute("INSERT INTO invoices (id, n) VALUES ($1, $2)", &[&id, &n])
                .await
                .unwrap();
        }
    }
    for id in (from..to).step_by(7) {
        let want = (id % 1000).to_string();
        let got = simple_value(c, &format!("SELECT n FROM invoices WHERE id = {id}")).await;
        assert_eq!(got, want, "unqualified simple read of {id}");
        let row = c
            .query_one("SELECT n FROM invoices WHERE id = $1", &[&id])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0).to_string(),
            want,
            "unqualified read of {id}"
        );
    }
    c.batch_execute("RESET search_path").await.unwrap();
    for id in (from..to).step_by(11) {
        let row = c
            .query_one("SELECT n FROM billing.invoices WHERE id = $1", &[&id])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            (id % 1000) as i32,
            "qualified read of {id}"
        );
    }
}

/// The unsharded `public.invoices` answers unqualified names under `public`, the sharded one
/// under `billing`, however often the same texts alternate (route cache, prepared statements).
async fn paths_do_not_leak(c: &Client, sharded_rows: i64) {
    let total = "SELECT count(*) FROM invoices";
    let by_id = "SELECT n FROM invoices WHERE id = $1";
    for _ in 0..3 {
        c.batch_execute("SET search_path = public").await.unwrap();
        assert_eq!(
            count(c, total).await,
            PUBLIC_ROWS,
            "public.invoices (extended)"
        );
        assert_eq!(
            simple_value(c, total).await,
            PUBLIC_ROWS.to_string(),
            "public.invoices (simple)"
        );
        let row = c.query_one(by_id, &[&5i64]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), -5, "public.invoices by id");
        c.batch_execute("SET search_path = billing, public")
            .await
            .unwrap();
        assert_eq!(
            count(c, total).await,
            sharded_rows,
            "billing.invoices (extended)"
        );
        assert_eq!(
            simple_value(c, total).await,
            sharded_rows.to_string(),
            "billing.invoices (simple)"
        );
        let row = c.query_one(by_id, &[&5i64]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 5, "billing.invoices by id");
    }
    // `public` first: Postgres takes public.invoices even though billing holds one too.
    c.batch_execute("SET search_path = public, billing")
        .await
        .unwrap();
    assert_eq!(count(c, total).await, PUBLIC_ROWS);
    // A statement prepared under one path runs under the path in force when it executes.
    c.batch_execute("SET search_path = billing").await.unwrap();
    let prepared = c.prepare(by_id).await.unwrap();
    assert_eq!(
        c.query_one(&prepared, &[&5i64])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    c.batch_execute("SET search_path = public").await.unwrap();
    assert_eq!(
        c.query_one(&prepared, &[&5i64])
            .await
            .unwrap()
            .get::<_, i32>(0),
        -5
    );
    c.batch_execute("SET search_path = billing").await.unwrap();
    assert_eq!(
        c.query_one(&prepared, &[&5i64])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    // set_config, SET LOCAL and a rolled-back SET.
    c.batch_execute("RESET search_path").await.unwrap();
    c.batch_execute("SELECT set_config('search_path', 'billing, public', false)")
        .await
        .unwrap();
    assert_eq!(count(c, total).await, sharded_rows, "after set_config");
    c.batch_execute("RESET search_path").await.unwrap();
    let e = c
        .batch_execute("BEGIN; SET LOCAL search_path = billing")
        .await
        .expect_err("SET LOCAL search_path with another statement");
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET LOCAL search_path = billing")
        .await
        .unwrap();
    assert_eq!(count(c, total).await, sharded_rows, "under SET LOCAL");
    let row = c.query_one(by_id, &[&5i64]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 5, "keyed under SET LOCAL");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count(c, total).await, PUBLIC_ROWS, "after the block");
    c.batch_execute("BEGIN; SET search_path = billing; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(
        count(c, total).await,
        PUBLIC_ROWS,
        "after a rolled-back SET"
    );
    // What pgshard cannot follow is refused, not misrouted.
    let e = c
        .simple_query("SET search_path = billing; SELECT count(*) FROM invoices")
        .await
        .expect_err("names after a path change in one query string");
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    c.batch_execute("RESET search_path").await.unwrap();
    let e = c
        .batch_execute("BEGIN; SELECT set_config('search_path', 'billing', true)")
        .await
        .expect_err("a transaction-local set_config of the search_path");
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
}

/// COPY into the sharded table, qualified and under the search_path.
async fn copy_in(c: &Client, sql: &str, rows: impl Iterator<Item = i64>) -> u64 {
    let data: String = rows.map(|id| format!("{id}\t{}\n", id % 1000)).collect();
    let sink = c.copy_in(sql).await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    sink.finish().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_in_any_schema_route_by_their_key_under_the_search_path() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    let first = cluster.info.shard_ids()[0];
    create_tables(&cluster, first).await;
    let ids = cluster.info.shard_ids();
    let tenants = [
        ("tenant_a", ids[1]),
        ("tenant_b", ids[2]),
        ("tenant_c", ids[1]),
    ];
    let running = proxy::start_proxy_with(&cluster.info, |config| {
        config.sharded_tables.extend(tables());
        config.sharded_schemas = tenants
            .iter()
            .map(|&(name, shard)| ShardedSchemaConfig {
                name: name.into(),
                shard,
            })
            .collect();
    })
    .await;
    let url = proxy::app_url(&running);
    let c = connect_url(&url).await.unwrap();
    let map = running.proxy.map.current();

    keyed_writes_and_reads(&c, 1, 401).await;
    // COPY, qualified and unqualified.
    assert_eq!(
        copy_in(&c, "COPY billing.invoices (id, n) FROM STDIN", 401..501).await,
        100
    );
    c.batch_execute("SET search_path = billing").await.unwrap();
    assert_eq!(
        copy_in(&c, "COPY invoices (id, n) FROM STDIN", 501..601).await,
        100
    );
    // A generated key for an INSERT that omits it, on the schema-qualified table.
    c.batch_execute("RESET search_path").await.unwrap();
    let generated: i64 = c
        .query_one(
            "INSERT INTO billing.invoices (n, note) VALUES (7, 'generated') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = c
        .query_one(
            "SELECT note FROM billing.invoices WHERE id = $1",
            &[&generated],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "generated");
    let counts = assert_placed(&cluster, &map, "billing.invoices", "id", KeyType::Int).await;
    assert_eq!(counts.iter().sum::<i64>(), 601, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 100), "{counts:?}");
    // The decoys were never touched: unsharded public.invoices is only on the first shard.
    for id in cluster
        .info
        .shard_ids()
        .into_iter()
        .filter(|&id| id != first)
    {
        let direct = proxy::shard(&cluster.info, id).await;
        let decoys = count(
            &direct,
            "SELECT count(*) FROM public.invoices WHERE n = 999",
        )
        .await;
        assert_eq!(decoys, 1000, "shard {id}'s public.invoices");
    }

    paths_do_not_leak(&c, 601).await;

    // A text key read from the shards under its schema: hashed as Postgres hashes text.
    let names: Vec<String> = (0..300).map(|i| format!("acct-{i}")).collect();
    c.batch_execute("SET search_path = billing").await.unwrap();
    for (i, name) in names.iter().enumerate() {
        let n = i as i32;
        c.execute(
            "INSERT INTO accounts (name, n) VALUES ($1, $2)",
            &[name, &n],
        )
        .await
        .unwrap();
    }
    let counts = assert_placed(&cluster, &map, "billing.accounts", "name", KeyType::Text).await;
    assert_eq!(counts.iter().sum::<i64>(), 300, "{counts:?}");
    for name in names.iter().step_by(13) {
        let owner = map.shard_of(&ShardKey::Text(name.clone()));
        let direct = proxy::shard(&cluster.info, owner).await;
        let there = count(
            &direct,
            &format!("SELECT count(*) FROM billing.accounts WHERE name = '{name}'"),
        )
        .await;
        assert_eq!(there, 1, "{name} on shard {owner}");
    }

    // The search_path given at connection start.
    let startup = connect_url(&format!("{url}&options=-c%20search_path%3Dbilling,public"))
        .await
        .unwrap();
    assert_eq!(count(&startup, "SELECT count(*) FROM invoices").await, 601);
    let row = startup
        .query_one("SELECT n FROM invoices WHERE id = $1", &[&5i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);

    // `pgshard verify` checks the schema-qualified tables.
    let mut config = running.proxy.config.as_ref().clone();
    config.sharded_tables = tables();
    let report = pgshard::rebalance::verify::verify(&config, &map)
        .await
        .expect("verify runs");
    assert!(report.clean(), "{report:?}");
    let verified: i64 = report
        .counted
        .iter()
        .filter(|(_, t, _)| t == "billing.invoices")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(verified, 601, "{report:?}");

    psycopg_checks(&cluster, &running, &map).await;
    tenant_schemas(&cluster, &c, &tenants).await;
    running.stop().await;
}

/// psycopg 3 with its defaults: keyed writes and reads of `billing.invoices` through
/// `SET search_path`, prepared after a few executions, switching paths.
async fn psycopg_checks(
    cluster: &TestCluster,
    running: &pgshard::server::RunningProxy,
    map: &ShardMap,
) {
    let keys: Vec<i64> = (10_000..10_060).collect();
    let owners: Vec<u32> = keys.iter().map(|&k| map.shard_for(k)).collect();
    let shards: BTreeMap<u32, String> = cluster
        .info
        .shard_ids()
        .into_iter()
        .map(|id| (id, cluster.info.shard_url(id).expect("shard url")))
        .collect();
    let setup = serde_json::json!({
        "proxy": proxy::app_url(running),
        "shards": shards,
        "keys": keys,
        "owners": owners,
        "public_rows": PUBLIC_ROWS,
    });
    let setup_file = cluster.info.dir.join("schemas.json");
    std::fs::write(&setup_file, setup.to_string()).expect("write the setup file");
    let setup_arg = setup_file.display().to_string();
    let out = run_script("python/schemas_check.py", &[&setup_arg], &[]).await;
    assert!(out.stdout.contains("schemas passed"), "{}", out.stdout);
}

/// Lets the application role create schemas (tenants) on every shard.
async fn grant_create_schema(cluster: &TestCluster) {
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        direct
            .batch_execute("GRANT CREATE ON DATABASE app TO app")
            .await
            .unwrap();
    }
}

/// Schema-based sharding: each tenant schema is created through pgshard on its own shard, and
/// its statements (qualified, or under a search_path that starts with it) run there whole;
/// statements needing two tenants on different shards are refused (a tenant with a sharded
/// table is refused too: see `router::schemas`' table test).
async fn tenant_schemas(cluster: &TestCluster, c: &Client, tenants: &[(&str, u32)]) {
    grant_create_schema(cluster).await;
    c.batch_execute("RESET search_path").await.unwrap();
    for &(tenant, _) in tenants {
        c.batch_execute(&format!("CREATE SCHEMA {tenant}"))
            .await
            .unwrap();
    }
    // Qualified DDL and writes for tenant_a; unqualified ones under the path for the others.
    c.batch_execute("CREATE TABLE tenant_a.orders (id int PRIMARY KEY, who text)")
        .await
        .unwrap();
    for i in 0..20 {
        c.execute("INSERT INTO tenant_a.orders VALUES ($1, 'a')", &[&i])
            .await
            .unwrap();
    }
    for &(tenant, _) in &tenants[1..] {
        c.batch_execute(&format!("SET search_path = {tenant}, public"))
            .await
            .unwrap();
        c.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, who text)")
            .await
            .unwrap();
        for i in 0..10 {
            c.execute("INSERT INTO orders VALUES ($1, $2)", &[&i, &tenant])
                .await
                .unwrap();
        }
        // A join inside the tenant runs on its shard.
        let n = count(c, "SELECT count(*) FROM orders o JOIN orders p USING (id)").await;
        assert_eq!(n, 10, "{tenant}");
        assert_eq!(
            simple_value(c, "SELECT who FROM orders WHERE id = 3").await,
            tenant
        );
    }
    c.batch_execute("RESET search_path").await.unwrap();
    // Each schema and its rows exist on its own shard only.
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        for &(tenant, shard) in tenants {
            let rows: Vec<tokio_postgres::Row> = direct
                .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&tenant])
                .await
                .unwrap();
            assert_eq!(
                rows.len(),
                usize::from(id == shard),
                "{tenant} on shard {id}"
            );
            if id == shard {
                let want = if tenant == "tenant_a" { 20 } else { 10 };
                let n = count(&direct, &format!("SELECT count(*) FROM {tenant}.orders")).await;
                assert_eq!(n, want, "{tenant}.orders on shard {id}");
            }
        }
    }
    assert_eq!(count(c, "SELECT count(*) FROM tenant_a.orders").await, 20);
    // Two tenants on one shard join; on two shards they are refused, naming both.
    let n = count(
        c,
        "SELECT count(*) FROM tenant_a.orders a JOIN tenant_c.orders b USING (id)",
    )
    .await;
    assert_eq!(n, 10);
    let e = c
        .query(
            "SELECT * FROM tenant_a.orders a JOIN tenant_b.orders b USING (id)",
            &[],
        )
        .await
        .expect_err("two tenants on two shards");
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("tenant_a") && msg.contains("tenant_b"),
        "{msg}"
    );
    // A tenant's table with a table sharded by key: refused in both protocols, naming the tenant
    // (not sent to the tenant's shard, where Postgres would answer with another error).
    let mixed = "SELECT count(*) FROM tenant_a.orders o JOIN billing.invoices i USING (id)";
    let extended = c.query(mixed, &[]).await.expect_err("tenant with sharded");
    let simple = c
        .simple_query(mixed)
        .await
        .expect_err("tenant with sharded");
    for e in [extended, simple] {
        assert_eq!(sqlstate(&e), "0A000", "{e}");
        let msg = e.as_db_error().map(|d| d.message()).unwrap_or_default();
        assert!(msg.contains("tenant_a"), "{msg}");
    }
}

/// The steps of `tests/python/tenant_probe.py`, in order.
const TENANT_PROBE_STEPS: usize = 28;

/// A schema-per-tenant application (`tests/python/tenant_probe.py`, psycopg 3 and asyncpg with
/// their defaults, SQLAlchemy's inspector) through pgshard and against one plain Postgres
/// database, step by step: tenants created by `CREATE SCHEMA tenant_…` under `[tenants]` and
/// migrated one by one under their search_path (CREATE TABLE, then CREATE INDEX and a foreign key
/// naming the new table: refused before pgshard read a new tenant's relations), the tenant
/// switched per request (SET, SET LOCAL in blocks, prepared statements, asyncpg's startup
/// `search_path` and its pool), `RESET ALL` / `DISCARD ALL` / `DISCARD PLANS` from pools (a
/// `DISCARD ALL` left the proxy believing the connection still held its prepared statements:
/// 26000 for the next client), the catalog queries ORMs run per tenant (Django's table list under
/// the tenant's path, SQLAlchemy's inspector and information_schema naming the tenant, whether a
/// tenant exists, `current_schema()`: all read the first shard's catalogs before), sequences and
/// `::regclass` of the current tenant, COPY under the tenant's path, a block over three tenants
/// (committed, and rolled back on a duplicate key), a `SET search_path` undone by ROLLBACK and by
/// ROLLBACK TO SAVEPOINT (pgshard kept routing to the undone tenant), GRANT / ALTER DEFAULT
/// PRIVILEGES / COMMENT on a tenant schema, ALTER TABLE … RENAME, CREATE SEQUENCE and CREATE
/// FUNCTION under the tenant's path (all ran on the first shard: 3F000 / 42P01), and uuid and
/// text keys in text and binary parameters, arrays, upserts and keyless merges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_application_answers_as_one_postgres() {
    let cluster = TestCluster::start(3, Strategy::Hash).await;
    grant_create_schema(&cluster).await;
    let running = proxy::start_proxy_with(&cluster.info, |config| {
        config.sharded_tables.extend([
            ShardedTableConfig {
                name: "tp_account".into(),
                key: "id".into(),
                key_type: Some(KeyType::Uuid),
            },
            ShardedTableConfig {
                name: "tp_doc".into(),
                key: "slug".into(),
                key_type: Some(KeyType::Text),
            },
        ]);
        config.reference_tables = vec!["tp_plan".into()];
        config.tenants = Some(TenantsConfig {
            schema_prefix: "tenant_".into(),
        });
    })
    .await;
    let plain = plain_database(&cluster, "plain_tenants").await;
    let out = run_script(
        "python/probe_diff.py",
        &["tenant_probe.py", "pipeline_path_change=0A000"],
        &[
            ("PGSHARD_URL", &proxy::app_url(&running)),
            ("PLAIN_URL", &plain),
        ],
    )
    .await;
    let lines = out.lines();
    assert_eq!(
        lines.len(),
        TENANT_PROBE_STEPS,
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // A tenant switched inside a pipeline is refused (before: the statements after the SET were
    // prepared under the previous path, on its shard: 42P01, or another table's rows).
    for line in &lines {
        let known = *line == "known pipeline_path_change";
        assert!(known || line.starts_with("same "), "{line}\n{}", out.stderr);
    }
    // The four tenants were spread over every shard, each schema on its shard only.
    let mut holding = BTreeMap::new();
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let n = count(
            &direct,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'",
        )
        .await;
        holding.insert(id, n);
    }
    assert_eq!(holding.values().sum::<i64>(), 4, "{holding:?}");
    assert!(holding.values().all(|&n| n > 0), "{holding:?}");
    running.stop().await;
}
