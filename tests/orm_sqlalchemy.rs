//! SQLAlchemy 2 + alembic with psycopg 3 and asyncpg, with their defaults, through pgshard in
//! front of 10 shards: `tests/python/orm_sqlalchemy.py` migrates up and down with alembic
//! (`alembic_version` and `sa_region` are unsharded and live on the first shard), then works on
//! `sa_customer` and `sa_order`, configured sharded by their id (pgshard generates the keys the
//! ORM's flush leaves out).

mod common;

use common::plain::{placed_as_in_plain, plain_database};
use common::proxy::{self, start_proxy_with};
use common::script::run_script;
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::{KeyType, Strategy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_and_alembic_run_unchanged() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| {
        for table in ["sa_customer", "sa_order"] {
            c.sharded_tables.push(ShardedTableConfig {
                name: table.into(),
                key: "id".into(),
                key_type: None,
            });
        }
        c.sharded_tables.push(ShardedTableConfig {
            name: "sa_line".into(),
            key: "customer_id".into(),
            key_type: None,
        });
    })
    .await;
    let url = proxy::app_url(&proxy);
    let out = run_script(
        "python/orm_sqlalchemy.py",
        &[],
        &[("PGSHARD_URL", &url), ("PGSHARD_DRIVER", "psycopg")],
    )
    .await;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "migrate",
            "orm_flush",
            "get_by_pk",
            "serial_ids_beside_the_key",
            "keyless",
            "aggregates",
            "subqueries",
            "update_delete",
            "transactions",
            "async_engine",
            "drivers_direct",
        ],
        "{stderr}"
    );

    // Sharded rows are spread over the shards (the six customers one transaction moved among
    // them); the unsharded tables sit on the first shard only.
    let (mut customers, mut orders, mut holding, mut moved_on) = (0, 0, 0, 0);
    let mut unsharded_on = Vec::new();
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let row = direct
            .query_one(
                "SELECT (SELECT count(*) FROM sa_customer), (SELECT count(*) FROM sa_order), \
                 (SELECT count(*) FROM sa_customer WHERE region = 'moved'), \
                 to_regclass('alembic_version') IS NOT NULL AND to_regclass('sa_region') IS NOT NULL",
                &[],
            )
            .await
            .expect("every shard has the tables");
        let (c, o, m): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        customers += c;
        orders += o;
        holding += i64::from(o > 0);
        moved_on += i64::from(m > 0);
        if row.get::<_, bool>(3) {
            unsharded_on.push(id);
        }
    }
    assert_eq!((customers, orders), (12, 24));
    assert!(holding > 1, "the orders landed on {holding} shard(s)");
    assert!(
        moved_on > 1,
        "the transaction's customers sit on {moved_on} shard(s)"
    );
    assert_eq!(unsharded_on, [proxy.proxy.first_shard]);
}

/// Application-style SQLAlchemy calls (`tests/python/sqlalchemy_probe.py`: selectinload,
/// joinedload with and without LIMIT, subqueryload, `on_conflict_do_update` with RETURNING,
/// insertmanyvalues sorted by parameter order, `Session.merge`, `yield_per`, `stream_results`,
/// savepoints, `with_for_update(nowait=True)`, the async engine on asyncpg) run through pgshard
/// and against one plain Postgres database; every step must answer the same, and every row
/// must sit on the shard that owns its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_application_answers_as_one_postgres() {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = proxy::start_proxy_sharding(
        &cluster.info,
        &[
            ("sp_account", "id"),
            ("sp_entry", "account_id"),
            ("sp_note", "id"),
        ],
    )
    .await;
    let plain = plain_database(&cluster, "plain_probe").await;
    let out = run_script(
        "python/probe_diff.py",
        &["sqlalchemy_probe.py"],
        &[
            ("PGSHARD_URL", &proxy::app_url(&proxy)),
            ("PLAIN_URL", &plain),
        ],
    )
    .await;
    assert_eq!(
        out.lines(),
        [
            "same setup",
            "same selectin_same_key",
            "same selectin_other_key",
            "same joined_same_key",
            "same joined_keyless",
            // joinedload of a collection under LIMIT: the limited derived table runs first,
            // then the entries it can match, and the outer join runs on one shard.
            "same joined_with_limit",
            // Correlated subqueries over notes, sharded by a uuid, not by the account's key.
            "same exists_other_key",
            "same subquery_load",
            "same upsert_returning",
            // Rows over several shards, ON CONFLICT (id) DO UPDATE … WHERE and RETURNING: one
            // INSERT per row on each shard.
            "same upsert_where_returning_rows_over_shards",
            "same upsert_executemany_returning",
            "same insert_many_sorted",
            "same session_merge",
            "same yield_per",
            "same stream_results",
            "same core_update_returning",
            "same orm_bulk_update",
            "same aggregate_filter_and_window",
            "same jsonb_ops",
            "same savepoint_nested",
            "same for_update_nowait",
            "same async_engine",
        ],
        "{}",
        out.stderr
    );

    // What the probe left through pgshard: as many rows as in plain Postgres, each on the shard
    // that owns its key, over several shards.
    let map = proxy.proxy.map.current();
    for (table, key, key_type) in [
        ("sp_account", "id", KeyType::Int),
        ("sp_entry", "account_id", KeyType::Int),
        ("sp_note", "id", KeyType::Uuid),
    ] {
        let holding = placed_as_in_plain(&cluster, &map, &plain, table, (key, key_type)).await;
        assert!(holding > 1, "{table} sits on {holding} shard(s)");
    }
    proxy.stop().await;
}
