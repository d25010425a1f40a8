//! One plain Postgres to compare pgshard with: a database of its own on the first shard's
//! server, reached directly (same server version, no proxy in between), and the check that
//! what an application left through pgshard sits on the owner shards, as many rows as there.

use pgshard::router::{KeyType, ShardMap};

use super::placement::owned_rows;
use super::proxy;
use super::TestCluster;

/// Creates database `name` on the first shard's server; its URL.
pub async fn plain_database(cluster: &TestCluster, name: &str) -> String {
    let first = cluster.info.shard_ids()[0];
    let direct = proxy::shard(&cluster.info, first).await;
    direct
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create the plain database");
    let url = cluster.info.shard_url(first).expect("shard url");
    let (server, _db) = url.rsplit_once('/').expect("a database in the url");
    format!("{server}/{name}?sslmode=disable")
}

/// Asserts that the rows of `table` (sharded by `key`) sit on the shards owning their keys and
/// number as many as in the plain database at `plain_url`; how many shards hold some.
pub async fn placed_as_in_plain(
    cluster: &TestCluster,
    map: &ShardMap,
    plain_url: &str,
    table: &str,
    key: (&str, KeyType),
) -> i64 {
    let mut total = 0;
    let mut holding = 0;
    for id in cluster.info.shard_ids() {
        let direct = proxy::shard(&cluster.info, id).await;
        let n = owned_rows(&direct, map, table, key, id).await;
        total += n;
        holding += i64::from(n > 0);
    }
    let plain = proxy::connect_url(plain_url)
        .await
        .expect("connect to plain");
    let want: i64 = plain
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count in plain")
        .get(0);
    assert_eq!(total, want, "{table}");
    holding
}
