//! Preparing a catalog database for its first proxy: the schema of `sql/catalog.sql` and shard map
//! version 1, an even split of the key space over the configured shards. `pgshard cluster up` does
//! this for the local cluster, `pgshard catalog init` for any other catalog (the one-shot service
//! of docker-compose.yml). Both steps are idempotent: a catalog that already holds a map keeps it.

use tokio_postgres::Client;

use super::{publish_first_map, CatalogError, FirstMap};
use crate::backend::ServerTls;
use crate::router::{ShardMap, Strategy};

/// The catalog's schema, applied as it is (every statement in it is idempotent).
pub const CATALOG_SQL: &str = include_str!("../../sql/catalog.sql");

/// Creates or updates the catalog tables, then publishes version 1 of a uniform map over
/// `shard_ids` unless the catalog already holds a map. For modulo the modulus is the number of
/// shards, so that every remainder has an owner.
pub async fn init(
    client: &mut Client,
    strategy: Strategy,
    shard_ids: &[u32],
) -> Result<FirstMap, CatalogError> {
    if shard_ids.is_empty() {
        return Err(CatalogError::NoShards);
    }
    client.batch_execute(CATALOG_SQL).await?;
    let map = ShardMap::uniform(1, strategy, shard_ids);
    publish_first_map(client, &map).await
}

/// [`init`] on a new connection to the catalog at `url`, protected as `tls` says.
pub async fn init_url(
    url: &str,
    tls: &ServerTls,
    strategy: Strategy,
    shard_ids: &[u32],
) -> Result<FirstMap, CatalogError> {
    let (mut client, connection) = tls.connect_url(url).await.map_err(CatalogError::Connect)?;
    let conn_task = tokio::spawn(connection);
    let outcome = init(&mut client, strategy, shard_ids).await;
    drop(client);
    let _ = conn_task.await;
    outcome
}
