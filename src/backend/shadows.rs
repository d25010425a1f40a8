//! What the shards' catalogs hold under the configured tables' names: a `public.invoices` beside
//! the sharded `billing.invoices` takes the unqualified name `invoices` for sessions whose
//! search_path lists `public` first, exactly as Postgres resolves it. Read from every shard that
//! answers at start-up, and again after a session's DDL.

use crate::backend::tls::ServerTls;
use crate::config::{Config, ShardConfig};
use crate::router::names::Shadows;

/// The relations (tables, views, materialized views, foreign tables, sequences) named like
/// `names` in every schema but the temporary and toast ones, and every relation of the tenant
/// schemas `$2`.
const SHADOWS_SQL: &str = "SELECT n.nspname::text, c.relname::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE (c.relname = ANY($1) OR n.nspname = ANY($2)) \
     AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
     AND n.nspname !~ '^pg_(temp|toast)'";

/// A control-plane connection to `shard` (its connection task runs until the client is
/// dropped); `None` when the shard does not answer.
pub async fn control_client(
    config: &Config,
    shard: &ShardConfig,
    tls: &ServerTls,
) -> Option<tokio_postgres::Client> {
    let (user, password) = config.control_login(shard);
    let pg = crate::backend::privileges::check_login(
        config,
        &shard.host,
        shard.port,
        &shard.database,
        user,
        password,
    );
    let (client, connection) = tls.connect(&pg).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// The relations named like `names` or in the tenant schemas `tenants` on every shard that
/// answers (shards that do not are skipped, as the other start-up checks do).
pub async fn read(
    config: &Config,
    tls: &ServerTls,
    names: &[String],
    tenants: &[String],
) -> Shadows {
    let mut found = Shadows::new();
    if names.is_empty() && tenants.is_empty() {
        return found;
    }
    for shard in &config.shards {
        let Some(client) = control_client(config, shard, tls).await else {
            continue;
        };
        match client.query(SHADOWS_SQL, &[&names, &tenants]).await {
            Ok(rows) => found.extend(rows.iter().map(|r| (r.get(0), r.get(1)))),
            Err(e) => {
                tracing::warn!(shard = shard.id, error = %e, "cannot read which schemas hold the sharded tables' names")
            }
        }
    }
    found
}
