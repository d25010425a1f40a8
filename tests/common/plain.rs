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

/// An application probe (`tests/python/probe_diff.py` on `probe`: a script of `tests/python` or
/// a built program's path, then its known gaps as `STEP=SQLSTATE`) run through a proxy sharding `sharded` (table, key column, key type)
/// and copying `reference` whole, and against a plain database `plain_name`; then
/// [`ProbeRun::assert_placed`] checks where the rows went.
pub struct ProbeRun {
    pub proxy: pgshard::server::RunningProxy,
    pub plain: String,
    pub out: super::script::ScriptOutput,
}

/// Starts the proxy and the plain database, and runs `probe` through both.
pub async fn run_probe(
    cluster: &TestCluster,
    sharded: &[(&str, &str, KeyType)],
    reference: &[&str],
    plain_name: &str,
    probe: &[&str],
) -> ProbeRun {
    let tables: Vec<(&str, &str)> = sharded.iter().map(|&(t, k, _)| (t, k)).collect();
    let proxy = proxy::start_proxy_placing(&cluster.info, &tables, reference).await;
    let plain = plain_database(cluster, plain_name).await;
    let out = super::script::run_script(
        "python/probe_diff.py",
        probe,
        &[
            ("PGSHARD_URL", &proxy::app_url(&proxy)),
            ("PLAIN_URL", &plain),
        ],
    )
    .await;
    ProbeRun { proxy, plain, out }
}

impl ProbeRun {
    /// Asserts every `sharded` table's rows sit on their owner shards, as many as in the plain
    /// database; then stops the proxy.
    pub async fn assert_placed(self, cluster: &TestCluster, sharded: &[(&str, &str, KeyType)]) {
        let map = self.proxy.proxy.map.current();
        for &(table, key, key_type) in sharded {
            placed_as_in_plain(cluster, &map, &self.plain, table, (key, key_type)).await;
        }
        self.proxy.stop().await;
    }
}
