//! Rails ActiveRecord (Debian's ruby-activerecord and ruby-pg) with its defaults through pgshard
//! in front of 10 shards: `tests/ruby/orm_rails.rb` runs a migration under ActiveRecord's
//! advisory lock, CRUD by key, transactions over two shards, keyless queries, `insert_all` over
//! several shards, savepoints (`create_or_find_by`, `requires_new`) and locking (`lock_version`,
//! `lock!`, `with_lock`) in blocks over several shards, and `find_each` / `in_batches`; the table
//! it creates is configured sharded by its `id`.

mod common;

use common::proxy::{self, start_proxy_with};
use common::script::run_script;
use common::TestCluster;
use pgshard::config::ShardedTableConfig;
use pgshard::router::Strategy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_activerecord_runs_unchanged() {
    let cluster = TestCluster::start(10, Strategy::Hash).await;
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.sharded_tables.push(ShardedTableConfig {
            name: "rails_orders".into(),
            key: "id".into(),
            key_type: None,
        });
    })
    .await;
    let out = run_script("ruby/orm_rails.rb", &[&proxy::app_url(&proxy)], &[]).await;
    let stderr = &out.stderr;
    assert_eq!(
        out.lines(),
        [
            "migrated",
            "crud",
            "transactions",
            "keyless",
            "insert_all",
            "savepoints",
            "locking",
            "batches",
            "ok"
        ],
        "{stderr}"
    );

    // The rows are spread over the shards; ActiveRecord's own tables sit on the first shard.
    let mut total = 0;
    let mut holding = 0;
    let mut migrations_on = Vec::new();
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let n: i64 = direct
            .query_one("SELECT count(*) FROM rails_orders", &[])
            .await
            .expect("every shard has the table")
            .get(0);
        total += n;
        holding += i64::from(n > 0);
        let has_migrations: bool = direct
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .expect("look for schema_migrations")
            .get(0);
        if has_migrations {
            migrations_on.push(id);
        }
        let locks: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
                &[],
            )
            .await
            .expect("read pg_locks")
            .get(0);
        assert_eq!(locks, 0, "shard {id} still holds an advisory lock");
    }
    assert_eq!(total, 19);
    assert!(holding > 1, "the orders landed on {holding} shard(s)");
    assert_eq!(migrations_on, [proxy.proxy.first_shard]);
}
