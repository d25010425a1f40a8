//! Puts the schema into freshly started instances: the admin role, the databases, the SQL files,
//! each shard's identity row and the catalog's first shard map. Everything here is idempotent, so
//! `cluster up` on an existing directory re-runs it harmlessly.
//!
//! Connections go over the instance's unix socket, where pg_hba trusts local users: the admin role
//! does not exist yet on a fresh instance, so there is no password to use over TCP.

use tokio_postgres::{Client, NoTls};

use super::instance::{ADMIN_PASSWORD, ADMIN_USER};
use super::layout::{InstanceInfo, Role};
use super::ClusterError;
use crate::router::{ShardMap, Strategy};

const SHARD_SQL: &str = include_str!("../../sql/shard.sql");
const APP_SQL: &str = include_str!("../../sql/app.sql");
const CATALOG_SQL: &str = include_str!("../../sql/catalog.sql");

/// A connection over the instance's unix socket, where local users are trusted.
pub(super) async fn connect(
    inst: &InstanceInfo,
    user: &str,
    db: &str,
) -> Result<Client, ClusterError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&inst.data_dir)
        .port(inst.port)
        .user(user)
        .dbname(db)
        .application_name("pgshard-cluster");
    let (client, conn) = config.connect(NoTls).await.map_err(|e| {
        ClusterError::pg(
            format!("cannot connect to {} database {db} as {user}", inst.name),
            e,
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "bootstrap connection ended");
        }
    });
    Ok(client)
}

/// Creates the admin role and the instance's database, then its schema (and identity row or
/// first shard map).
pub async fn bootstrap(
    inst: &InstanceInfo,
    cluster_id: &str,
    strategy: Strategy,
    shard_ids: &[u32],
) -> Result<(), ClusterError> {
    let db = inst.database();
    let ctx = |what: &str| format!("{} on {}", what, inst.name);
    {
        let su = connect(inst, "postgres", "postgres").await?;
        let has_role = su
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&ADMIN_USER])
            .await
            .map_err(|e| ClusterError::pg(ctx("looking up the admin role"), e))?
            .is_some();
        if !has_role {
            su.batch_execute(&format!(
                "CREATE ROLE {ADMIN_USER} LOGIN SUPERUSER PASSWORD '{ADMIN_PASSWORD}'"
            ))
            .await
            .map_err(|e| ClusterError::pg(ctx("creating the admin role"), e))?;
        }
        let has_db = su
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
            .await
            .map_err(|e| ClusterError::pg(ctx("looking up the database"), e))?
            .is_some();
        if !has_db {
            // FILE_COPY: copying template1's files is cheaper than WAL-logging them (the default), and
            // the checkpoint it forces costs nothing with fsync off.
            su.batch_execute(&format!(
                "CREATE DATABASE {db} OWNER {ADMIN_USER} STRATEGY = FILE_COPY"
            ))
            .await
            .map_err(|e| ClusterError::pg(ctx(&format!("creating database {db}")), e))?;
        }
    }
    let client = connect(inst, ADMIN_USER, db).await?;
    match (inst.role, inst.shard) {
        (Role::Primary, Some(shard)) => {
            client
                .batch_execute(SHARD_SQL)
                .await
                .map_err(|e| ClusterError::pg(ctx("applying sql/shard.sql"), e))?;
            client
                .batch_execute(APP_SQL)
                .await
                .map_err(|e| ClusterError::pg(ctx("applying sql/app.sql"), e))?;
            client
                .execute(
                    "INSERT INTO pgshard_meta.identity (shard_id, cluster_id) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                    &[&(shard as i32), &cluster_id],
                )
                .await
                .map_err(|e| ClusterError::pg(ctx("writing the identity row"), e))?;
        }
        _ => {
            client
                .batch_execute(CATALOG_SQL)
                .await
                .map_err(|e| ClusterError::pg(ctx("applying sql/catalog.sql"), e))?;
            insert_first_map(client, strategy, shard_ids)
                .await
                .map_err(|source| ClusterError::Catalog {
                    context: ctx("writing shard map version 1"),
                    source,
                })?;
        }
    }
    Ok(())
}

/// Writes version 1 of the uniform map, unless the catalog already holds any version (then the map
/// belongs to whoever wrote it, e.g. the rebalancer, and must not be touched).
async fn insert_first_map(
    mut client: Client,
    strategy: Strategy,
    shard_ids: &[u32],
) -> Result<(), crate::catalog::CatalogError> {
    let existing = client
        .query_opt("SELECT 1 FROM shard_map_versions LIMIT 1", &[])
        .await?;
    if existing.is_none() {
        let map = ShardMap::uniform(1, strategy, shard_ids);
        crate::catalog::publish_map(&mut client, &map).await?;
    }
    Ok(())
}
