//! One cut-over attempt. Before the hold: start a change watch on every shard of the job, wait
//! until each destination has replayed its source up to then, and compare the moving rows on
//! both sides by aggregates of their hashes per bucket of key (see `compare`). Then ask every live proxy to hold (catalog
//! `rebalance_holds`), wait for all of them to acknowledge (a live proxy that does not is a
//! failed attempt, never ignored), wait until each destination has confirmed the source's
//! current WAL position, re-compare only the rows that differed or changed since (so the hold
//! does not grow with the rows moved), then — in one catalog transaction — publish the new map,
//! release the hold with its version and move the job to clean-up. Any failure releases the hold
//! on the old map; the runner tries again later.
//!
//! A tenant schema's move (`move-schema`) has no keys to watch: under the hold (which stops only
//! that tenant's statements) it compares count and checksum of each of the schema's tables on
//! both sides and sets the destination's sequences to the source's before publishing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::compare::{self, StepRows};
use super::copy::name;
use super::jobs::Job;
use super::pgoutput::ChangedKeys;
use super::shards::connect;
use super::{tenant, watch, RebalanceError};
use crate::config::Config;

/// How recently a proxy must have been seen to count as live (and be waited for).
pub const LIVE_WINDOW_MS: i64 = 3_000;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The map switched; the hold lasted this long.
    Switched { version: i64, hold_ms: i64 },
    /// Released on the old map; try again later.
    Retry(String),
    /// The job cannot finish (the map changed under it, the copy does not match).
    Fail(String),
}

/// Runs one attempt for `job` (state `cutover`).
pub async fn attempt(
    config: &Config,
    catalog: &mut Client,
    job: &Job,
    owner: &str,
) -> Result<Attempt, RebalanceError> {
    // Connections first: the hold should not include logins.
    let mut clients: BTreeMap<u32, Client> = BTreeMap::new();
    for shard in job.shards() {
        clients.insert(shard, connect(config, shard).await?);
    }
    let outcome = watched(config, catalog, job, owner, &clients).await;
    for (shard, client) in &clients {
        if let Err(e) = watch::stop(client, job.id, *shard).await {
            tracing::warn!(job = job.id, shard, error = %e, "cannot drop the cut-over watch; clean-up drops it");
        }
    }
    outcome
}

/// Reads changes on every shard's watch into `changed` (all shards at once).
async fn drain_all(
    config: &Config,
    clients: &BTreeMap<u32, Client>,
    job: &Job,
    changed: &mut BTreeMap<u32, ChangedKeys>,
) -> Result<(), RebalanceError> {
    let reads = changed.iter_mut().filter_map(|(shard, into)| {
        let client = clients.get(shard)?;
        Some(watch::drain(config, client, job.id, *shard, into))
    });
    for r in futures_util::future::join_all(reads).await {
        r?;
    }
    Ok(())
}

/// The attempt with its watches started: the comparison before the hold, then the hold.
async fn watched(
    config: &Config,
    catalog: &mut Client,
    job: &Job,
    owner: &str,
    clients: &BTreeMap<u32, Client>,
) -> Result<Attempt, RebalanceError> {
    let slot_timeout = Duration::from_millis(config.rebalance.slot_timeout_ms);
    if moves_tenants(job) {
        // Nothing to compare row by row before the hold: the hold compares whole tables.
        let since = Instant::now();
        if let Some(attempt) = all_caught_up(clients, job, since, slot_timeout).await? {
            return Ok(attempt);
        }
        return hold(
            config,
            catalog,
            job,
            owner,
            clients,
            (&mut [], &mut BTreeMap::new()),
        )
        .await;
    }
    let starts = clients
        .iter()
        .map(|(shard, client)| watch::start(config, client, job, *shard, slot_timeout));
    for r in futures_util::future::join_all(starts).await {
        r?;
    }
    // Every destination has replayed what its source committed before the watches began, so a
    // row neither watch reports afterwards is final on both sides when it is read.
    let since = Instant::now();
    if let Some(attempt) = all_caught_up(clients, job, since, slot_timeout).await? {
        return Ok(attempt);
    }
    let scan_started = Instant::now();
    let mut steps = compare::scan(config, clients, job).await?;
    let mut changed: BTreeMap<u32, ChangedKeys> = clients
        .keys()
        .map(|s| (*s, ChangedKeys::default()))
        .collect();
    // Catch up once more outside the hold: re-read what changed during the scan, so the hold
    // re-reads only what changes from here on (a difference now may still be in flight).
    drain_all(config, clients, job, &mut changed).await?;
    compare::recheck(clients, &mut steps, &changed).await?;
    for c in changed.values_mut() {
        c.tables.clear();
    }
    tracing::info!(
        job = job.id,
        caught_up_ms = (scan_started - since).as_millis() as u64,
        compared_ms = scan_started.elapsed().as_millis() as u64,
        "cut-over: compared before the hold"
    );
    hold(
        config,
        catalog,
        job,
        owner,
        clients,
        (&mut steps, &mut changed),
    )
    .await
}

/// True when the job moves tenant schemas (and then nothing else).
fn moves_tenants(job: &Job) -> bool {
    job.plan.moves.iter().any(|m| m.schema.is_some())
}

/// Asks every proxy to hold and runs [`held`]; releases on the old map unless it switched.
async fn hold(
    config: &Config,
    catalog: &mut Client,
    job: &Job,
    owner: &str,
    clients: &BTreeMap<u32, Client>,
    (steps, changed): (&mut [StepRows], &mut BTreeMap<u32, ChangedKeys>),
) -> Result<Attempt, RebalanceError> {
    let cat = RebalanceError::Catalog;
    let hold_id: i64 = catalog
        .query_one(
            "INSERT INTO rebalance_holds (job_id) VALUES ($1) RETURNING hold_id",
            &[&job.id],
        )
        .await
        .map_err(cat)?
        .get(0);
    let started = Instant::now();
    let outcome = held(
        config,
        catalog,
        job,
        owner,
        (hold_id, started),
        clients,
        (steps, changed),
    )
    .await;
    match outcome {
        Ok(Attempt::Switched { version, hold_ms }) => Ok(Attempt::Switched { version, hold_ms }),
        other => {
            // Release on the old map (a no-op if a proxy abandoned it already).
            catalog
                .execute(
                    "UPDATE rebalance_holds SET released_at = now() WHERE hold_id = $1 AND released_at IS NULL",
                    &[&hold_id],
                )
                .await
                .map_err(cat)?;
            other
        }
    }
}

async fn held(
    config: &Config,
    catalog: &mut Client,
    job: &Job,
    owner: &str,
    (hold_id, started): (i64, Instant),
    clients: &BTreeMap<u32, Client>,
    (steps, changed): (&mut [StepRows], &mut BTreeMap<u32, ChangedKeys>),
) -> Result<Attempt, RebalanceError> {
    let cat = RebalanceError::Catalog;
    let bound = Duration::from_millis(config.rebalance.hold_timeout_ms);
    // 1. Every live proxy acknowledges.
    loop {
        let row = catalog
            .query_one(
                "SELECT ARRAY(SELECT node_id FROM proxies \
                              WHERE last_seen > now() - $2 * interval '1 millisecond' ORDER BY node_id), \
                        ARRAY(SELECT node_id FROM rebalance_hold_acks WHERE hold_id = $1), \
                        (SELECT abandoned_by FROM rebalance_holds WHERE hold_id = $1)",
                &[&hold_id, &(LIVE_WINDOW_MS as f64)],
            )
            .await
            .map_err(cat)?;
        let live: Vec<i32> = row.get(0);
        let acks: BTreeSet<i32> = row.get::<_, Vec<i32>>(1).into_iter().collect();
        let abandoned: Option<i32> = row.get(2);
        if let Some(p) = abandoned {
            return Ok(Attempt::Retry(format!(
                "proxy {p} could not let its open transactions finish in {} ms",
                bound.as_millis()
            )));
        }
        let missing: Vec<i32> = live.into_iter().filter(|p| !acks.contains(p)).collect();
        if missing.is_empty() {
            break;
        }
        if started.elapsed() > bound + Duration::from_millis(1000) {
            return Ok(Attempt::Retry(format!(
                "live proxies {missing:?} did not acknowledge the hold"
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let acked_ms = started.elapsed().as_millis() as u64;
    // 2. Each destination confirms the source's current position (all steps at once).
    if let Some(attempt) = all_caught_up(clients, job, started, bound).await? {
        return Ok(attempt);
    }
    let caught_up_ms = started.elapsed().as_millis() as u64;
    // 3. The moving rows match on both sides: only what differed before the hold or changed
    //    since is read again.
    drain_all(config, clients, job, changed).await?;
    let drained_ms = started.elapsed().as_millis() as u64;
    let keys: usize = changed
        .values()
        .flat_map(|c| c.tables.values())
        .map(|t| t.keys.len())
        .sum();
    if let Some(why) = compare::recheck(clients, steps, changed).await? {
        return Ok(Attempt::Fail(why));
    }
    let tenants = match tenants_match(clients, job).await? {
        Ok(rows) => rows,
        Err(why) => return Ok(Attempt::Fail(why)),
    };
    tracing::info!(
        job = job.id,
        acked_ms,
        caught_up_ms,
        drained_ms,
        compared_ms = started.elapsed().as_millis() as u64,
        changed_keys = keys,
        "cut-over hold: compared"
    );
    // 4. Publish, release and advance in one transaction.
    let tx = catalog.transaction().await.map_err(cat)?;
    let row = tx
        .query_one(
            "SELECT abandoned_by FROM rebalance_holds WHERE hold_id = $1 FOR UPDATE",
            &[&hold_id],
        )
        .await
        .map_err(cat)?;
    if let Some(p) = row.get::<_, Option<i32>>(0) {
        return Ok(Attempt::Retry(format!("proxy {p} gave up holding")));
    }
    // Every step's checksum and count in one statement: one round trip each was a measurable
    // part of the hold for a job with many steps.
    let (mut nos, mut sums, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (no, summary, rows) in &tenants {
        nos.push(*no);
        sums.push(summary.clone());
        counts.push(*rows);
    }
    for step in steps.iter() {
        let (summary, rows) = step.summary();
        nos.push(step.no);
        sums.push(summary);
        counts.push(rows);
    }
    if !nos.is_empty() {
        tx.execute(
            "UPDATE rebalance_steps s SET checksum = u.checksum, rows_copied = u.rows \
             FROM unnest($2::int[], $3::text[], $4::bigint[]) AS u(step_no, checksum, rows) \
             WHERE s.job_id = $1 AND s.step_no = u.step_no",
            &[&job.id, &nos, &sums, &counts],
        )
        .await
        .map_err(cat)?;
    }
    let version = match crate::catalog::publish_map_after(&tx, &job.plan.to, job.plan.from.version)
        .await?
    {
        Ok(v) => v,
        Err(newest) => {
            return Ok(Attempt::Fail(format!(
                "the shard map changed under the job: it started from version {} and the catalog now holds {newest}",
                job.plan.from.version
            )))
        }
    };
    let hold_ms = started.elapsed().as_millis() as i64;
    tx.execute(
        "UPDATE rebalance_holds SET released_at = now(), new_version = $2 WHERE hold_id = $1",
        &[&hold_id, &version],
    )
    .await
    .map_err(cat)?;
    let n = tx
        .execute(
            "UPDATE rebalance_jobs SET state = 'cleanup', new_version = $3, updated_at = now(), \
                 longest_hold_ms = greatest(coalesce(longest_hold_ms, 0), $4) \
             WHERE job_id = $1 AND lease_owner = $2 AND state = 'cutover'",
            &[&job.id, &owner, &version, &hold_ms],
        )
        .await
        .map_err(cat)?;
    if n != 1 {
        // Cancelled meanwhile (or the lease is gone): publish nothing.
        return Ok(Attempt::Retry(
            "the job was cancelled or lost its lease during the cut-over".into(),
        ));
    }
    tx.execute(
        "UPDATE rebalance_steps SET state = 'cut_over', updated_at = now() WHERE job_id = $1",
        &[&job.id],
    )
    .await
    .map_err(cat)?;
    tx.commit().await.map_err(cat)?;
    Ok(Attempt::Switched { version, hold_ms })
}

/// Under the hold, with every destination caught up: each tenant schema a step moves holds the
/// same tables with the same rows on both sides (count and checksum per table), and the
/// destination's sequences are set to the source's. Per step: (step, checksum summary, rows), or
/// why the copies differ.
async fn tenants_match(
    clients: &BTreeMap<u32, Client>,
    job: &Job,
) -> Result<Result<Vec<(i32, String, i64)>, String>, RebalanceError> {
    let mut out = Vec::new();
    for step in &job.steps {
        let m = super::copy::step_move(job, step)?;
        let Some(schema) = &m.schema else {
            continue;
        };
        let (Some(src), Some(dst)) = (clients.get(&step.source), clients.get(&step.dest)) else {
            continue;
        };
        let (a, b) = futures_util::future::join(
            tenant::checksums(src, step.source, schema),
            tenant::checksums(dst, step.dest, schema),
        )
        .await;
        let (a, b) = (a?, b?);
        if a != b {
            return Ok(Err(format!(
                "tenant schema {schema}: shard {} holds {a:?} but shard {} holds {b:?} after catching up",
                step.source, step.dest
            )));
        }
        tenant::copy_sequences((src, step.source), (dst, step.dest), schema).await?;
        let summary: Vec<String> = a.iter().map(|(t, n, h)| format!("{t}:{n}:{h}")).collect();
        out.push((
            step.no,
            summary.join(","),
            a.iter().map(|(_, n, _)| n).sum(),
        ));
    }
    Ok(Ok(out))
}

/// [`caught_up`] for every step at once; the first step that ends the attempt ends it.
async fn all_caught_up(
    clients: &BTreeMap<u32, Client>,
    job: &Job,
    started: Instant,
    bound: Duration,
) -> Result<Option<Attempt>, RebalanceError> {
    let waits = job
        .steps
        .iter()
        .filter_map(|step| Some((step, clients.get(&step.source)?)))
        .map(|(step, src)| caught_up(src, job, step, started, bound));
    for outcome in futures_util::future::join_all(waits).await {
        if let Some(attempt) = outcome? {
            return Ok(Some(attempt));
        }
    }
    Ok(None)
}

/// Waits until the destination of `step` has confirmed its source's WAL position as of now;
/// `Some` ends the attempt (the slot is gone, or the bound passed).
async fn caught_up(
    src: &Client,
    job: &Job,
    step: &super::jobs::Step,
    started: Instant,
    bound: Duration,
) -> Result<Option<Attempt>, RebalanceError> {
    let slot = name(job.id, step.no);
    let lsn: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(RebalanceError::shard(step.source))?
        .get(0);
    loop {
        let caught: Option<bool> = src
            .query_opt(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&lsn, &slot],
            )
            .await
            .map_err(RebalanceError::shard(step.source))?
            .and_then(|r| r.get(0));
        match caught {
            Some(true) => return Ok(None),
            None => {
                return Ok(Some(Attempt::Fail(format!(
                    "replication slot {slot} is missing on shard {}",
                    step.source
                ))))
            }
            Some(false) => {}
        }
        if started.elapsed() > bound {
            return Ok(Some(Attempt::Retry(format!(
                "shard {} did not replay shard {}'s position {lsn} in time",
                step.dest, step.source
            ))));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
