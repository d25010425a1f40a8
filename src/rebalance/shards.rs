//! Control-plane connections to shards: the privileged `[control_plane]` login, tokio-postgres,
//! one connection per use (jobs are rare and long; pooling buys nothing).

use tokio_postgres::Client;

use crate::backend::ServerTls;

use super::RebalanceError;
use crate::config::{Config, ShardConfig};

/// The shard's config entry, or an error naming the id.
pub fn shard_config(config: &Config, id: u32) -> Result<&ShardConfig, RebalanceError> {
    config.shard(id).ok_or_else(|| {
        RebalanceError::Config(format!(
            "shard {id} is not registered: add it with `pgshard shard add` or ADD SHARD"
        ))
    })
}

/// `config` with the shards the catalog's topology lists now (registered since the config was
/// written, too).
pub async fn with_registered_shards(config: &Config) -> Result<Config, RebalanceError> {
    let tls = ServerTls::load(config.server_tls.as_ref())?;
    Ok(crate::catalog::effective_config(config, &tls).await?)
}

/// A libpq connection string for `shard` with the control-plane login (what a subscription on
/// another shard uses to reach it).
pub fn conninfo(config: &Config, shard: &ShardConfig) -> String {
    let (user, password) = config.control_login(shard);
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut s = format!(
        "host={} port={} dbname={} user={}",
        quote(&shard.host),
        shard.port,
        quote(&shard.database),
        quote(user)
    );
    if let Some(p) = password {
        s.push_str(&format!(" password={}", quote(p)));
    }
    s
}

/// Whether `table` (a quoted, maybe schema-qualified name) exists on the shard `client` is connected to.
pub async fn table_exists(
    client: &Client,
    shard: u32,
    table: &str,
) -> Result<bool, RebalanceError> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(RebalanceError::shard(shard))?
        .get(0))
}

/// Connects to shard `id` as the control-plane login.
pub async fn connect(config: &Config, id: u32) -> Result<Client, RebalanceError> {
    let shard = shard_config(config, id)?;
    let (user, password) = config.control_login(shard);
    let mut pg = tokio_postgres::Config::new();
    pg.host(&shard.host)
        .port(shard.port)
        .dbname(&shard.database)
        .user(user)
        .application_name("pgshard-rebalance")
        .connect_timeout(config.pool.connect_timeout());
    if let Some(p) = password {
        pg.password(p);
    }
    let tls = ServerTls::load(config.server_tls.as_ref())?;
    let (client, conn) = tls.connect(&pg).await.map_err(|e| RebalanceError::Shard {
        shard: id,
        source: e,
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control-plane shard connection ended");
        }
    });
    Ok(client)
}

/// Connects to the catalog.
pub async fn catalog(config: &Config) -> Result<Client, RebalanceError> {
    let tls = ServerTls::load(config.server_tls.as_ref())?;
    let (client, conn) = tls
        .connect_url(&config.catalog.url)
        .await
        .map_err(RebalanceError::Catalog)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control-plane catalog connection ended");
        }
    });
    Ok(client)
}
