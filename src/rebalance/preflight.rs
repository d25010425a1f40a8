//! Checks before a job creates anything, so it fails with a clear message instead of half-way:
//! logical WAL on the sources, the shard key in every moving table's replica identity (Postgres
//! refuses UPDATE/DELETE on a published table whose row filter names other columns), enough
//! replication slots, WAL senders and logical replication workers for what the job will use —
//! and the destination's schema and reference rows, copied from a shard that has them. A
//! tenant's move also needs its schema on the source, a replica identity on each of its tables,
//! and the schema's definition (tables, indexes, constraints, sequences) created on the
//! destination from the source's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::Client;

use super::jobs::Job;
use super::shards::connect;
use super::RebalanceError;
use crate::config::Config;
use crate::sql_text::quote_ident as ident;

async fn setting(client: &Client, shard: u32, name: &str) -> Result<i64, RebalanceError> {
    let v: String = client
        .query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
        .await
        .map_err(RebalanceError::shard(shard))?
        .get(0);
    v.parse().map_err(|_| {
        RebalanceError::Config(format!(
            "shard {shard}: setting {name} = `{v}` is not a number"
        ))
    })
}

async fn count(client: &Client, shard: u32, sql: &str) -> Result<i64, RebalanceError> {
    Ok(client
        .query_one(sql, &[])
        .await
        .map_err(RebalanceError::shard(shard))?
        .get(0))
}

/// Runs every check; the first failure is the job's error. The shards are checked at once
/// (sources, then destinations): one after another, their logins and round trips were a fixed
/// cost of every job before its first row moved.
///
/// `conns` are open connections to some of the shards (the runner's), used instead of new
/// logins.
pub async fn check(
    config: &Config,
    job: &Job,
    conns: &HashMap<u32, Arc<Client>>,
) -> Result<(), RebalanceError> {
    let mut dests_of: BTreeMap<u32, i64> = BTreeMap::new();
    let mut sources_of: BTreeMap<u32, i64> = BTreeMap::new();
    for s in &job.steps {
        *dests_of.entry(s.source).or_default() += 1;
        *sources_of.entry(s.dest).or_default() += 1;
    }
    let sources = dests_of
        .iter()
        .map(|(&source, &dests)| check_source(config, conns, source, dests));
    for r in futures_util::future::join_all(sources).await {
        r?;
    }
    let template = *dests_of.keys().next().unwrap_or(&0);
    let dests = sources_of
        .iter()
        .map(|(&dest, &sources)| check_destination(config, conns, dest, sources, template));
    for r in futures_util::future::join_all(dests).await {
        r?;
    }
    for m in &job.plan.moves {
        if let Some(schema) = &m.schema {
            prepare_tenant(config, schema, m.source, m.dest).await?;
        }
    }
    Ok(())
}

/// A tenant's move: the schema exists on `source` with a replica identity on every table, and
/// `dest` gets its definition (an empty copy left by an interrupted earlier try is replaced; one
/// holding rows is refused, never overwritten).
async fn prepare_tenant(
    config: &Config,
    schema: &str,
    source: u32,
    dest: u32,
) -> Result<(), RebalanceError> {
    let src = connect(config, source).await?;
    if !super::tenant::exists(&src, source, schema).await? {
        return Err(RebalanceError::UnknownSchema(schema.to_string()));
    }
    let bare = super::tenant::without_identity(&src, source, schema).await?;
    if !bare.is_empty() {
        return Err(RebalanceError::Refused(format!(
            "tables {} of tenant schema {schema} have no primary key or replica identity, so Postgres would refuse their UPDATE and DELETE while they are copied; add a primary key or run ALTER TABLE … REPLICA IDENTITY FULL",
            bare.join(", ")
        )));
    }
    let d = connect(config, dest).await?;
    if super::tenant::exists(&d, dest, schema).await? {
        let rows = super::tenant::rows(&d, dest, schema).await?;
        if rows > 0 {
            return Err(RebalanceError::Refused(format!(
                "schema {schema} already exists on shard {dest} and holds {rows} row(s); drop it there before moving the tenant"
            )));
        }
        super::tenant::drop_copy(&d, dest, schema).await?;
    }
    let definition = dump_schema(config, source, "-n", &[schema.to_string()]).await?;
    d.batch_execute(&format!("{definition}\nRESET ALL;"))
        .await
        .map_err(RebalanceError::shard(dest))?;
    tracing::info!(
        shard = dest,
        from = source,
        schema,
        "copied the tenant schema's definition to the destination"
    );
    Ok(())
}

/// A source of `dests` steps: logical WAL, the key in each table's replica identity, free slots
/// and WAL senders.
async fn check_source(
    config: &Config,
    conns: &HashMap<u32, Arc<Client>>,
    source: u32,
    dests: i64,
) -> Result<(), RebalanceError> {
    let c = open(config, conns, source).await?;
    let wal: String = c
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(RebalanceError::shard(source))?
        .get(0);
    if wal != "logical" {
        return Err(RebalanceError::Refused(format!(
            "shard {source} runs with wal_level = {wal}; rebalancing copies rows with logical replication: set wal_level = logical and restart it"
        )));
    }
    for t in &config.sharded_tables {
        replica_identity(&c, source, &t.name, &t.key).await?;
    }
    // Each step needs its slot and, during the initial copy, a table-sync slot and sender.
    let need = 2 * dests;
    let slots = setting(&c, source, "max_replication_slots").await?
        - count(&c, source, "SELECT count(*) FROM pg_replication_slots").await?;
    let senders = setting(&c, source, "max_wal_senders").await?
        - count(&c, source, "SELECT count(*) FROM pg_stat_replication").await?;
    if slots < need {
        return Err(RebalanceError::Refused(format!(
            "shard {source} has {slots} free replication slot(s) and this job needs {need} there: raise max_replication_slots (restart needed)"
        )));
    }
    if senders < need {
        return Err(RebalanceError::Refused(format!(
            "shard {source} has {senders} free WAL sender(s) and this job needs {need} there: raise max_wal_senders (restart needed)"
        )));
    }
    Ok(())
}

/// A destination of `sources` steps: free logical replication workers, then its schema and
/// reference rows from `template`.
async fn check_destination(
    config: &Config,
    conns: &HashMap<u32, Arc<Client>>,
    dest: u32,
    sources: i64,
    template: u32,
) -> Result<(), RebalanceError> {
    let c = open(config, conns, dest).await?;
    let need = sources + 1;
    let workers = setting(&c, dest, "max_logical_replication_workers").await?
        - count(
            &c,
            dest,
            "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL",
        )
        .await?;
    if workers < need {
        return Err(RebalanceError::Refused(format!(
            "shard {dest} has {workers} free logical replication worker(s) and this job needs {need} there: raise max_logical_replication_workers and max_worker_processes (restart needed)"
        )));
    }
    let processes = setting(&c, dest, "max_worker_processes").await?;
    if processes < need + 2 {
        return Err(RebalanceError::Refused(format!(
            "shard {dest} allows {processes} background worker(s) and this job needs at least {} there: raise max_worker_processes (restart needed)",
            need + 2
        )));
    }
    prepare_destination(config, &c, dest, template).await
}

/// `shard`'s connection in `conns` while it is open, else a new one.
async fn open(
    config: &Config,
    conns: &HashMap<u32, Arc<Client>>,
    shard: u32,
) -> Result<Arc<Client>, RebalanceError> {
    match conns.get(&shard).filter(|c| !c.is_closed()) {
        Some(c) => Ok(c.clone()),
        None => Ok(Arc::new(connect(config, shard).await?)),
    }
}

/// The shard key must be in the replica identity (or the identity is FULL).
async fn replica_identity(
    c: &Client,
    shard: u32,
    table: &str,
    key: &str,
) -> Result<(), RebalanceError> {
    let row = c
        .query_opt(
            "SELECT c.relreplident::text, EXISTS ( \
                 SELECT 1 FROM pg_index i JOIN pg_attribute a \
                   ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = c.oid AND a.attname = $2 \
                   AND ((c.relreplident = 'd' AND i.indisprimary) \
                     OR (c.relreplident = 'i' AND i.indisreplident))) \
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&table, &key],
        )
        .await
        .map_err(RebalanceError::shard(shard))?;
    match row {
        None => Ok(()),
        Some(r) => {
            let (ident_kind, has_key): (String, bool) = (r.get(0), r.get(1));
            if ident_kind == "f" || has_key {
                Ok(())
            } else {
                Err(RebalanceError::Refused(format!(
                    "table {table} on shard {shard}: its replica identity does not include the shard key {key}, so Postgres would refuse UPDATE and DELETE while its rows are published with a row filter; make {key} part of the primary key or run ALTER TABLE {table} REPLICA IDENTITY FULL"
                )))
            }
        }
    }
}

/// Gives a destination missing sharded or reference tables the schema of `template` (pg_dump
/// --schema-only), puts its sharded tables' sequences into its own range, and fills its empty
/// reference tables from there.
async fn prepare_destination(
    config: &Config,
    dest: &Client,
    dest_id: u32,
    template: u32,
) -> Result<(), RebalanceError> {
    let mut missing = Vec::new();
    for name in config
        .sharded_tables
        .iter()
        .map(|t| t.name.as_str())
        .chain(config.reference_tables.iter().map(String::as_str))
    {
        let name = crate::router::names::quote_config_name(name);
        if !super::shards::table_exists(dest, dest_id, &name).await? {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        // Types, domains, functions and extensions the tables use come first: `pg_dump -t`
        // leaves them out (`-T *.*` dumps everything but relations).
        let objects = dump_schema(config, template, "-T", &["*.*".to_string()]).await?;
        restore_objects(dest, dest_id, &objects).await?;
        let schema = dump_schema(config, template, "-t", &missing).await?;
        // `pg_dump -t` leaves out the schemas the tables are in.
        let schemas: std::collections::BTreeSet<String> = config
            .sharded_tables
            .iter()
            .map(|t| t.name.as_str())
            .chain(config.reference_tables.iter().map(String::as_str))
            .map(|n| crate::router::names::split_config_name(n).0)
            .filter(|s| s != crate::router::names::PUBLIC)
            .collect();
        let create: String = schemas
            .iter()
            .map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};\n", ident(s)))
            .collect();
        // The dump empties search_path for its session; RESET ALL gives the session back.
        dest.batch_execute(&format!("{create}{schema}\nRESET ALL;"))
            .await
            .map_err(RebalanceError::shard(dest_id))?;
        tracing::info!(shard = dest_id, from = template, tables = ?missing, "copied table definitions to the destination");
    }
    // The destination numbers its sharded tables' sequences in its own range: a dump carries
    // the template shard's, and tables made there by hand carry one Postgres's.
    for table in &config.sharded_tables {
        let name = crate::router::names::quote_config_name(&table.name);
        dest.batch_execute(&crate::ids::sequence_ranges::align_sql(&name, dest_id))
            .await
            .map_err(RebalanceError::shard(dest_id))?;
    }
    if config.reference_tables.is_empty() {
        return Ok(());
    }
    let src = connect(config, template).await?;
    for table in &config.reference_tables {
        let t = crate::router::names::quote_config_name(table);
        let empty: bool = dest
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {t})"), &[])
            .await
            .map_err(RebalanceError::shard(dest_id))?
            .get(0);
        if !empty {
            continue;
        }
        super::initial_copy::pipe(
            (&src, template),
            (dest, dest_id),
            &format!("COPY {t} TO STDOUT"),
            &format!("COPY {t} FROM STDIN"),
        )
        .await?;
    }
    Ok(())
}

/// SQLSTATEs of a statement that makes an object the destination already has: a shard set up
/// from the same scripts holds the control plane's schema, and a table dump made it before.
const ALREADY_THERE: &[&str] = &["42P06", "42710", "42723", "42P07"];

/// Runs a dump of non-table objects on the destination one statement at a time, skipping those
/// it already has (and the ownership and comments that follow them apply as well).
async fn restore_objects(dest: &Client, dest_id: u32, dump: &str) -> Result<(), RebalanceError> {
    let statements = pg_query::split_with_parser(dump).map_err(|e| {
        RebalanceError::Config(format!(
            "cannot split the schema dump for shard {dest_id}: {e}"
        ))
    })?;
    for statement in statements {
        match dest.batch_execute(statement).await {
            Ok(()) => {}
            Err(e) if e.code().is_some_and(|c| ALREADY_THERE.contains(&c.code())) => {}
            Err(e) => return Err(RebalanceError::shard(dest_id)(e)),
        }
    }
    dest.batch_execute("RESET ALL")
        .await
        .map_err(RebalanceError::shard(dest_id))
}

/// `pg_dump --schema-only` of some tables (`select` = `-t`) or schemas (`-n`) of a shard (with
/// their indexes, constraints and owned sequences), without psql meta-commands. Owners and grants
/// come along: on the destination the tables belong to the same roles (the application's, not the
/// control plane's) and grant the same rights.
async fn dump_schema(
    config: &Config,
    shard: u32,
    select: &str,
    names: &[String],
) -> Result<String, RebalanceError> {
    let s = super::shards::shard_config(config, shard)?;
    let (user, password) = config.control_login(s);
    let bins = crate::cluster::PgBinaries::find()
        .map_err(|e| RebalanceError::Config(format!("cannot find pg_dump: {e}")))?;
    let mut cmd = tokio::process::Command::new(bins.program("pg_dump"));
    cmd.args(["--schema-only", "--no-publications", "--no-subscriptions"])
        .arg("-h")
        .arg(&s.host)
        .arg("-p")
        .arg(s.port.to_string())
        .arg("-U")
        .arg(user)
        .arg("-d")
        .arg(&s.database);
    for n in names {
        cmd.arg(select).arg(n);
    }
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| RebalanceError::Config(format!("cannot run pg_dump: {e}")))?;
    if !out.status.success() {
        return Err(RebalanceError::Config(format!(
            "pg_dump of shard {shard} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n"))
}
