//! Puts the schema into freshly started instances: the roles (the control plane's superuser, the
//! application's role `app` and the replication role), the databases, the SQL files, each shard's
//! identity row and the catalog's first shard map. Everything here is idempotent, so
//! `cluster up` on an existing directory re-runs it harmlessly.
//!
//! Connections go over the instance's unix socket, where pg_hba trusts local users: the admin role
//! does not exist yet on a fresh instance, so there is no password to use over TCP.

use tokio_postgres::{Client, NoTls};

use super::instance::{
    ADMIN_PASSWORD, ADMIN_USER, APP_PASSWORD, APP_USER, REPLICATION_PASSWORD, REPLICATION_USER,
};
use super::layout::{InstanceInfo, Role};
use super::ClusterError;
use crate::router::Strategy;

const SHARD_SQL: &str = include_str!("../../sql/shard.sql");
const APP_SQL: &str = include_str!("../../sql/app.sql");

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
    topology: &[crate::config::ShardConfig],
) -> Result<(), ClusterError> {
    let db = inst.database();
    let ctx = |what: &str| format!("{} on {}", what, inst.name);
    {
        let su = connect(inst, "postgres", "postgres").await?;
        // The control plane's superuser everywhere; on shards also the application's role (no
        // superuser); on shards and the catalog the role replicas stream with.
        let mut roles = vec![(ADMIN_USER, "LOGIN SUPERUSER", ADMIN_PASSWORD)];
        if inst.role == Role::Primary {
            roles.push((
                APP_USER,
                "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION",
                APP_PASSWORD,
            ));
        }
        if matches!(inst.role, Role::Primary | Role::Catalog) {
            roles.push((
                REPLICATION_USER,
                "LOGIN REPLICATION NOSUPERUSER",
                REPLICATION_PASSWORD,
            ));
        }
        for (role, attributes, password) in roles {
            let has_role = su
                .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
                .await
                .map_err(|e| ClusterError::pg(ctx(&format!("looking up role {role}")), e))?
                .is_some();
            if !has_role {
                su.batch_execute(&format!(
                    "CREATE ROLE {role} {attributes} PASSWORD '{password}'"
                ))
                .await
                .map_err(|e| ClusterError::pg(ctx(&format!("creating role {role}")), e))?;
            }
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
            // The demo schema belongs to the application's role: `public` and what app.sql
            // creates in it (as that role).
            client
                .batch_execute(&format!(
                    "ALTER SCHEMA public OWNER TO {APP_USER}; SET ROLE {APP_USER};\n{APP_SQL}\nRESET ROLE;"
                ))
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
            let mut client = client;
            crate::catalog::init(&mut client, strategy, shard_ids)
                .await
                .map_err(|source| ClusterError::Catalog {
                    context: ctx("applying sql/catalog.sql and writing shard map version 1"),
                    source,
                })?;
            crate::catalog::seed_topology(&mut client, topology)
                .await
                .map_err(|source| ClusterError::Catalog {
                    context: ctx("registering the shards in the catalog's topology"),
                    source,
                })?;
        }
    }
    Ok(())
}
