//! One cut-over attempt: ask every live proxy to hold (catalog `rebalance_holds`), wait for all of
//! them to acknowledge (a live proxy that does not is a failed attempt, never ignored), wait until
//! each destination has confirmed the source's current WAL position, compare counts and checksums
//! of the moving rows on both sides, then — in one catalog transaction — publish the new map,
//! release the hold with its version and move the job to clean-up. Any failure releases the hold
//! on the old map; the runner tries again later.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::copy::{checksums, name};
use super::jobs::Job;
use super::shards::connect;
use super::RebalanceError;
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
    let cat = RebalanceError::Catalog;
    // Connections first: the hold should not include logins.
    let mut clients: BTreeMap<u32, Client> = BTreeMap::new();
    for shard in job.shards() {
        clients.insert(shard, connect(config, shard).await?);
    }
    let hold_id: i64 = catalog
        .query_one(
            "INSERT INTO rebalance_holds (job_id) VALUES ($1) RETURNING hold_id",
            &[&job.id],
        )
        .await
        .map_err(cat)?
        .get(0);
    let started = Instant::now();
    let outcome = held(config, catalog, job, owner, hold_id, started, &clients).await;
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
    hold_id: i64,
    started: Instant,
    clients: &BTreeMap<u32, Client>,
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
    // 2. Each destination confirms the source's current position (all steps at once).
    let waits = job
        .steps
        .iter()
        .filter_map(|step| Some((step, clients.get(&step.source)?)))
        .map(|(step, src)| caught_up(src, job, step, started, bound));
    for outcome in futures_util::future::join_all(waits).await {
        if let Some(attempt) = outcome? {
            return Ok(attempt);
        }
    }
    // 3. The moving rows match on both sides: one scan per shard and table, every shard at once.
    let start_scans = |groups: &BTreeMap<u32, Vec<i32>>| {
        let futures: Vec<_> = groups
            .iter()
            .filter_map(|(shard, nos)| {
                let steps: Vec<&super::jobs::Step> =
                    job.steps.iter().filter(|s| nos.contains(&s.no)).collect();
                let client = clients.get(shard)?;
                let shard = *shard;
                Some(async move { checksums(config, client, shard, job, &steps).await })
            })
            .collect();
        futures_util::future::join_all(futures)
    };
    let (sources, dests) = (steps_by(job, |s| s.source), steps_by(job, |s| s.dest));
    let (at_sources, at_dests) = tokio::join!(start_scans(&sources), start_scans(&dests));
    let mut source_sums = BTreeMap::new();
    for r in at_sources {
        source_sums.extend(r?);
    }
    let mut dest_sums = BTreeMap::new();
    for r in at_dests {
        dest_sums.extend(r?);
    }
    for step in &job.steps {
        let (Some(a), Some(b)) = (source_sums.get(&step.no), dest_sums.get(&step.no)) else {
            continue;
        };
        if a != b {
            return Ok(Attempt::Fail(format!(
                "step {} ({} → {}): the copy does not match the source (source {a:?}, destination {b:?})",
                step.no, step.source, step.dest
            )));
        }
        let summary: Vec<String> = a
            .iter()
            .map(|(t, n, sum)| format!("{t}:{n}:{sum}"))
            .collect();
        catalog
            .execute(
                "UPDATE rebalance_steps SET checksum = $3, rows_copied = $4 WHERE job_id = $1 AND step_no = $2",
                &[
                    &job.id,
                    &step.no,
                    &summary.join(" "),
                    &a.iter().map(|(_, n, _)| *n).sum::<i64>(),
                ],
            )
            .await
            .map_err(cat)?;
    }
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

/// The numbers of `job`'s steps, grouped by the shard `side` names (source or destination).
fn steps_by(job: &Job, side: fn(&super::jobs::Step) -> u32) -> BTreeMap<u32, Vec<i32>> {
    let mut groups: BTreeMap<u32, Vec<i32>> = BTreeMap::new();
    for step in &job.steps {
        groups.entry(side(step)).or_default().push(step.no);
    }
    groups
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
