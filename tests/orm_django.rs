//! Django 5.2 with psycopg 3 (and psycopg2) and its defaults through pgshard in front of 10 shards:
//! `tests/python/django_check.py` migrates with the contrib apps (their tables are unsharded and
//! live on the first shard), then works on a model whose table is configured sharded by its id,
//! `bulk_create` without pks included (pgshard generates the keys).

mod common;

use common::plain::{placed_as_in_plain, plain_database};
use common::proxy::{self, start_proxy_with};
use common::script::run_script;
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::{KeyType, Strategy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_runs_unchanged() {
    django_suite("psycopg", false).await;
}

/// The same application with `OPTIONS={'server_side_binding': True}`: psycopg 3 sends every
/// statement with its parameters bound on the server, `set_config('TimeZone', $1, false)` at
/// connect included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_runs_unchanged_with_server_side_binding() {
    django_suite("psycopg", true).await;
}

/// The same application on psycopg2, which interpolates every parameter on the client and
/// writes `bulk_create`'s lists as `ARRAY[…]` constructors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_runs_unchanged_on_psycopg2() {
    django_suite("psycopg2", false).await;
}

/// `driver`: the Python driver Django runs on, `psycopg` (3) or `psycopg2`.
async fn django_suite(driver: &str, server_side_binding: bool) {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.sharded_tables.push(ShardedTableConfig {
            name: "shop_order".into(),
            key: "id".into(),
            key_type: None,
        });
        c.reference_tables.push("shop_plan".into());
    })
    .await;
    let url = proxy::app_url(&proxy);
    let out = run_script(
        "python/django_check.py",
        &[],
        &[
            ("PGSHARD_URL", &url),
            ("PGSHARD_DJANGO_DRIVER", driver),
            (
                "PGSHARD_SERVER_SIDE_BINDING",
                if server_side_binding { "1" } else { "0" },
            ),
        ],
    )
    .await;
    let stderr = &out.stderr;
    assert_eq!(
        out.lines(),
        [
            "migrate",
            "contrib_auth",
            "crud_by_pk",
            "keyless",
            "aggregates",
            "subqueries",
            "bulk_create_with_keys",
            "atomic_across_shards",
            "select_for_update",
            "job_queue",
            "iterator",
            "bulk_create_without_keys",
        ],
        "{stderr}"
    );

    // The orders are spread over the shards; the contrib tables sit on the first shard only.
    let mut total = 0;
    let mut holding = 0;
    let mut generated_holding = 0;
    let mut auth_on = Vec::new();
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let n: i64 = direct
            .query_one("SELECT count(*) FROM shop_order", &[])
            .await
            .expect("every shard has the table")
            .get(0);
        total += n;
        holding += i64::from(n > 0);
        let generated: i64 = direct
            .query_one(
                "SELECT count(*) FROM shop_order WHERE customer = 'gen'",
                &[],
            )
            .await
            .expect("count bulk_create's rows")
            .get(0);
        generated_holding += i64::from(generated > 0);
        let has_auth: bool = direct
            .query_one("SELECT to_regclass('auth_user') IS NOT NULL", &[])
            .await
            .expect("look for auth_user")
            .get(0);
        if has_auth {
            auth_on.push(id);
        }
    }
    assert_eq!(total, 19 + 30);
    assert!(holding > 1, "the orders landed on {holding} shard(s)");
    assert!(
        generated_holding > 1,
        "bulk_create's rows landed on {generated_holding} shard(s)"
    );
    assert_eq!(auth_on, [proxy.proxy.first_shard]);

    // The same correlated EXISTS over an unsharded table that is not a reference table (a
    // contrib table, on the first shard only) is refused, saying how to make it work.
    let client = proxy::connect(&proxy).await;
    let err = client
        .query(
            "SELECT count(*) FROM shop_order WHERE EXISTS (SELECT 1 FROM django_content_type U0 \
             WHERE U0.model = shop_order.customer LIMIT 1)",
            &[],
        )
        .await
        .expect_err("EXISTS over a table on the first shard only");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "0A000", "{db}");
    assert!(
        db.message().contains("django_content_type") && db.message().contains("reference_tables"),
        "{db}"
    );
}

/// Application-style Django calls (`tests/python/django_probe.py`) through pgshard and against one
/// plain Postgres database, step by step: select_related and prefetch_related over tables sharded
/// by the same key, by a uuid and by a text key, get_or_create/update_or_create, bulk_create with
/// update_conflicts and ignore_conflicts, bulk_update, F(), Case/When, aggregates with filter=Q,
/// values().annotate(), Subquery(OuterRef), distinct(field), JSONField and ArrayField lookups,
/// Paginator, dates()/datetimes() in a non-UTC TIME_ZONE, nested atomic blocks whose inner block
/// fails, select_for_update(nowait=True) (55P03, then 25P02), union/only/defer, select_related
/// and filters across tables sharded by different keys, a Subquery(OuterRef) across them.
async fn django_probe(server_side_binding: bool) {
    let cluster = TestCluster::start(4, Strategy::Hash).await;
    let proxy = proxy::start_proxy_sharding(
        &cluster.info,
        &[
            ("probe_customer", "id"),
            ("probe_order", "customer_id"),
            ("probe_sku", "code"),
            ("probe_review", "id"),
        ],
    )
    .await;
    let plain = plain_database(&cluster, "plain_probe").await;
    let binding = if server_side_binding { "1" } else { "0" };
    let out = run_script(
        "python/probe_diff.py",
        &["django_probe.py"],
        &[
            ("PGSHARD_URL", &proxy::app_url(&proxy)),
            ("PLAIN_URL", &plain),
            ("PGSHARD_SERVER_SIDE_BINDING", binding),
        ],
    )
    .await;
    let lines = out.lines();
    // select_related_other_key and reverse_and_m2m_style_filters join tables sharded by
    // different keys: the joined table is read first; subquery_other_key's correlated
    // subquery reads its table first.
    let known: [&str; 0] = [];
    assert_eq!(lines.len(), 39, "{}\n{}", out.stdout, out.stderr);
    for line in &lines {
        let (verdict, step) = line.split_once(' ').expect("verdict and step");
        let want = if known.contains(&step) {
            "known"
        } else {
            "same"
        };
        assert_eq!(verdict, want, "{step}\n{}", out.stderr);
    }

    // Every row the probe left through pgshard sits on its owner shard, as many as in plain
    // Postgres, over several shards.
    let map = proxy.proxy.map.current();
    for (table, key, key_type) in [
        ("probe_customer", "id", KeyType::Int),
        ("probe_order", "customer_id", KeyType::Int),
        ("probe_sku", "code", KeyType::Text),
        ("probe_review", "id", KeyType::Uuid),
    ] {
        let holding = placed_as_in_plain(&cluster, &map, &plain, table, (key, key_type)).await;
        assert!(holding > 1, "{table} sits on {holding} shard(s)");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_application_answers_as_one_postgres() {
    django_probe(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_application_answers_as_one_postgres_with_server_side_binding() {
    django_probe(true).await;
}
