//! Starting pgshard in the test process on top of a test cluster, and connecting to it.

use pgshard::cluster::ClusterInfo;
use pgshard::config::{AuthMethod, Config, UserConfig};
use pgshard::server::RunningProxy;

/// The password of the demo user `app`.
pub const APP_PASSWORD: &str = "app";

/// Starts a proxy for the cluster on a free loopback port. Besides `app` (SCRAM), it knows
/// `trusted` (trust) and `md5user` (md5, password `md5pass`); all three run as the shards' role
/// `app` (no superuser), as the demo's config says.
pub async fn start_proxy(info: &ClusterInfo) -> RunningProxy {
    start_proxy_with(info, |_| {}).await
}

/// A proxy that also shards `tables` (name, key column; the key's type read from the catalog).
pub async fn start_proxy_sharding(info: &ClusterInfo, tables: &[(&str, &str)]) -> RunningProxy {
    start_proxy_placing(info, tables, &[]).await
}

/// A proxy that also shards `tables` (as `start_proxy_sharding`) and copies `reference` tables
/// to every shard.
pub async fn start_proxy_placing(
    info: &ClusterInfo,
    tables: &[(&str, &str)],
    reference: &[&str],
) -> RunningProxy {
    start_proxy_with(info, |c| {
        for (table, key) in tables {
            c.sharded_tables.push(pgshard::config::ShardedTableConfig {
                name: (*table).into(),
                key: (*key).into(),
                key_type: None,
            });
        }
        c.reference_tables
            .extend(reference.iter().map(|name| (*name).to_string()));
    })
    .await
}

/// Like `start_proxy`, with a chance to change the config first.
pub async fn start_proxy_with(
    info: &ClusterInfo,
    change: impl FnOnce(&mut Config),
) -> RunningProxy {
    let mut config = Config::load(&info.config_path).expect("the cluster wrote a valid config");
    config.proxy.listen = "127.0.0.1:0".into();
    config.catalog.poll_interval_ms = 500;
    config
        .users
        .push(as_app(UserConfig::new("trusted", None, AuthMethod::Trust)));
    config.users.push(as_app(UserConfig::new(
        "md5user",
        Some("md5pass"),
        AuthMethod::Md5,
    )));
    change(&mut config);
    pgshard::server::start(config)
        .await
        .expect("pgshard starts")
}

/// The admin console's user `admin` with this password (SCRAM).
pub fn admin_user(password: &str) -> UserConfig {
    UserConfig {
        admin: true,
        ..UserConfig::new("admin", Some(password), AuthMethod::ScramSha256)
    }
}

/// `user` running as the shards' application role `app` (the demo's), not as a role of its own.
pub fn as_app(mut user: UserConfig) -> UserConfig {
    user.server_user = Some("app".into());
    user.server_password = Some(APP_PASSWORD.into());
    user
}

/// A libpq URL for the proxy.
pub fn url(proxy: &RunningProxy, user: &str, password: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/app?sslmode=disable",
        proxy.addr.port()
    )
}

/// The demo user's URL.
pub fn app_url(proxy: &RunningProxy) -> String {
    url(proxy, "app", APP_PASSWORD)
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect_url(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The demo user through the proxy.
pub async fn connect(proxy: &RunningProxy) -> tokio_postgres::Client {
    connect_url(&app_url(proxy))
        .await
        .expect("connect to pgshard as app")
}

/// A direct connection to one shard, bypassing the proxy.
pub async fn shard(info: &ClusterInfo, id: u32) -> tokio_postgres::Client {
    let url = info.shard_url(id).expect("shard exists");
    connect_url(&url).await.expect("connect to shard directly")
}

/// A direct connection to the catalog.
pub async fn catalog(info: &ClusterInfo) -> tokio_postgres::Client {
    connect_url(&info.catalog_url())
        .await
        .expect("connect to the catalog")
}

/// Total `users` rows over all shards, counted directly.
pub async fn count_users_directly(info: &ClusterInfo) -> i64 {
    let mut total = 0;
    for id in info.shard_ids() {
        let c = shard(info, id).await;
        let row = c
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .expect("count on shard");
        total += row.get::<_, i64>(0);
    }
    total
}

/// Points the proxy's entry for `shard` at `addr` (a fault-injecting relay in front of it) instead
/// of the shard itself.
pub fn route_shard_through(config: &mut Config, shard: u32, addr: std::net::SocketAddr) {
    let entry = config
        .shards
        .iter_mut()
        .find(|s| s.id == shard)
        .unwrap_or_else(|| panic!("no shard {shard} in the config"));
    entry.host = addr.ip().to_string();
    entry.port = addr.port();
}

/// Runs `script` with psql through the proxy (`-X -A -t`, written next to the cluster as
/// `name`); panics when psql fails. Returns the non-empty output lines, trimmed, and the output.
pub async fn psql_script(
    info: &ClusterInfo,
    proxy: &RunningProxy,
    name: &str,
    script: &str,
) -> (Vec<String>, String) {
    let file = info.dir.join(name);
    std::fs::write(&file, script).expect("write psql script");
    let (ok, out, err) = super::process::run_output(
        tokio::process::Command::new("psql")
            .arg(app_url(proxy))
            .args(["-X", "-A", "-t", "-f"])
            .arg(&file),
    )
    .await;
    assert!(ok, "psql failed: {err}\n{out}");
    let lines = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    (lines, out)
}

/// Asserts that every `users` row with a key of at least `from_key` sits on the shard `map` gives
/// its key, reading each shard directly; returns how many rows were checked.
pub async fn assert_users_placed(
    info: &ClusterInfo,
    map: &pgshard::router::ShardMap,
    from_key: i64,
) -> usize {
    let mut seen = 0;
    for id in info.shard_ids() {
        let rows = shard(info, id)
            .await
            .query(
                "SELECT user_id FROM users WHERE user_id >= $1",
                &[&from_key],
            )
            .await
            .expect("read a shard directly");
        for row in rows {
            let key: i64 = row.get(0);
            assert_eq!(map.shard_for(key), id, "key {key} sits on shard {id}");
            seen += 1;
        }
    }
    seen
}
