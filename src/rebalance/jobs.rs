//! Job and step rows in the catalog (sql/catalog.sql): creating a job from a plan, claiming and
//! renewing its lease, recording each step's state and progress, and reading them back — enough
//! for any proxy to resume or roll back a job from the rows alone.

use std::time::Duration;

use tokio_postgres::Client;

use super::plan::{moves_between, Plan};
use super::RebalanceError;
use crate::router::ShardMap;

/// A job's state (`rebalance_jobs.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Copying,
    Cutover,
    Cleanup,
    Done,
    Cancelling,
    Cancelled,
    Failed,
}

impl JobState {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Copying => "copying",
            JobState::Cutover => "cutover",
            JobState::Cleanup => "cleanup",
            JobState::Done => "done",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "pending" => JobState::Pending,
            "copying" => JobState::Copying,
            "cutover" => JobState::Cutover,
            "cleanup" => JobState::Cleanup,
            "done" => JobState::Done,
            "cancelling" => JobState::Cancelling,
            "cancelled" => JobState::Cancelled,
            _ => JobState::Failed,
        }
    }

    /// True once the job can do nothing more.
    pub fn ended(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Cancelled | JobState::Failed
        )
    }

    /// True while moving rows may sit on a shard that does not own them: from the first copied
    /// row until clean-up (or a rollback) has removed them.
    pub fn fenced(self) -> bool {
        matches!(
            self,
            JobState::Copying | JobState::Cutover | JobState::Cleanup | JobState::Cancelling
        )
    }
}

/// One step: the keys moving from `source` to `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub no: i32,
    pub source: u32,
    pub dest: u32,
    pub state: String,
    pub rows_estimated: Option<i64>,
    pub rows_copied: i64,
    pub lag_bytes: Option<i64>,
    pub rows_deleted: i64,
    pub checksum: Option<String>,
}

/// A job as the catalog holds it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub target: String,
    pub state: JobState,
    pub plan: Plan,
    pub new_version: Option<i64>,
    pub cutover_attempts: i32,
    pub longest_hold_ms: Option<i64>,
    pub error: Option<String>,
    pub lease_owner: Option<String>,
    pub steps: Vec<Step>,
}

impl Job {
    /// Every shard a step reads from or writes to.
    pub fn shards(&self) -> Vec<u32> {
        let mut s: Vec<u32> = self
            .steps
            .iter()
            .flat_map(|st| [st.source, st.dest])
            .collect();
        s.sort_unstable();
        s.dedup();
        s
    }
}

fn cat(e: tokio_postgres::Error) -> RebalanceError {
    RebalanceError::Catalog(e)
}

fn map_json(map: &ShardMap) -> String {
    serde_json::to_string(map).unwrap_or_default()
}

fn map_from_json(text: &str) -> Result<ShardMap, RebalanceError> {
    let m: ShardMap = serde_json::from_str(text)
        .map_err(|e| RebalanceError::Config(format!("catalog holds an unreadable map: {e}")))?;
    ShardMap::new(m.version, m.strategy, m.ranges)
        .map(|map| map.with_tenants(m.tenants))
        .map_err(|e| RebalanceError::Config(format!("catalog holds an invalid map: {e}")))
}

/// Records a planned job and its steps (state `pending`); fails when another job is active.
pub async fn create(
    client: &mut Client,
    target: &str,
    plan: &Plan,
    estimates: &[i64],
) -> Result<i64, RebalanceError> {
    let tx = client.transaction().await.map_err(cat)?;
    let active = tx
        .query_opt(
            "SELECT job_id, state FROM rebalance_jobs WHERE state NOT IN ('done', 'cancelled', 'failed')",
            &[],
        )
        .await
        .map_err(cat)?;
    if let Some(row) = active {
        let (id, state): (i64, String) = (row.get(0), row.get(1));
        return Err(RebalanceError::Refused(format!(
            "rebalancing job {id} is still {state}; wait for it or cancel it (CANCEL JOB {id})"
        )));
    }
    let row = tx
        .query_one(
            "INSERT INTO rebalance_jobs (target, from_version, from_map, target_map) \
             VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb) RETURNING job_id",
            &[
                &target,
                &plan.from.version,
                &map_json(&plan.from),
                &map_json(&plan.to),
            ],
        )
        .await
        .map_err(cat)?;
    let id: i64 = row.get(0);
    // Every step in one statement: a round trip per step was most of the job's creation.
    let nos: Vec<i32> = (0..plan.moves.len() as i32).collect();
    let sources: Vec<i32> = plan.moves.iter().map(|m| m.source as i32).collect();
    let dests: Vec<i32> = plan.moves.iter().map(|m| m.dest as i32).collect();
    let rows: Vec<Option<i64>> = (0..plan.moves.len())
        .map(|i| estimates.get(i).copied())
        .collect();
    tx.execute(
        "INSERT INTO rebalance_steps (job_id, step_no, source_shard, dest_shard, rows_estimated) \
         SELECT $1, * FROM unnest($2::int[], $3::int[], $4::int[], $5::int8[])",
        &[&id, &nos, &sources, &dests, &rows],
    )
    .await
    .map_err(cat)?;
    tx.commit().await.map_err(cat)?;
    Ok(id)
}

const JOB_COLUMNS: &str = "job_id, target, state, from_map::text, target_map::text, new_version, \
     cutover_attempts, longest_hold_ms, error, lease_owner";

/// Reads one job and its steps.
pub async fn load(client: &Client, id: i64) -> Result<Option<Job>, RebalanceError> {
    let Some(row) = client
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM rebalance_jobs WHERE job_id = $1"),
            &[&id],
        )
        .await
        .map_err(cat)?
    else {
        return Ok(None);
    };
    let from = map_from_json(row.get::<_, &str>(3))?;
    let to = map_from_json(row.get::<_, &str>(4))?;
    let moves = moves_between(&from, &to);
    let steps = client
        .query(
            "SELECT step_no, source_shard, dest_shard, state, rows_estimated, rows_copied, lag_bytes, \
                    rows_deleted, checksum \
             FROM rebalance_steps WHERE job_id = $1 ORDER BY step_no",
            &[&id],
        )
        .await
        .map_err(cat)?
        .iter()
        .map(|r| Step {
            no: r.get(0),
            source: r.get::<_, i32>(1) as u32,
            dest: r.get::<_, i32>(2) as u32,
            state: r.get(3),
            rows_estimated: r.get(4),
            rows_copied: r.get(5),
            lag_bytes: r.get(6),
            rows_deleted: r.get(7),
            checksum: r.get(8),
        })
        .collect();
    Ok(Some(Job {
        id: row.get(0),
        target: row.get(1),
        state: JobState::parse(row.get(2)),
        plan: Plan { from, to, moves },
        new_version: row.get(5),
        cutover_attempts: row.get(6),
        longest_hold_ms: row.get(7),
        error: row.get(8),
        lease_owner: row.get(9),
        steps,
    }))
}

/// Every job, newest first (at most `limit`).
pub async fn list(client: &Client, limit: i64) -> Result<Vec<Job>, RebalanceError> {
    let ids: Vec<i64> = client
        .query(
            "SELECT job_id FROM rebalance_jobs ORDER BY job_id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(cat)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(j) = load(client, id).await? {
            jobs.push(j);
        }
    }
    Ok(jobs)
}

/// Takes the lease of an unfinished job whose lease is free or expired (or already ours).
pub async fn claim(
    client: &Client,
    owner: &str,
    lease: Duration,
) -> Result<Option<i64>, RebalanceError> {
    let ms = lease.as_millis() as f64;
    Ok(client
        .query_opt(
            "UPDATE rebalance_jobs SET lease_owner = $1, \
                 lease_expires = now() + $2 * interval '1 millisecond', updated_at = now() \
             WHERE job_id = (SELECT job_id FROM rebalance_jobs \
                 WHERE state NOT IN ('done', 'cancelled', 'failed') \
                   AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires < now()) \
                 ORDER BY job_id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING job_id",
            &[&owner, &ms],
        )
        .await
        .map_err(cat)?
        .map(|r| r.get(0)))
}

/// Extends our lease; false when another proxy has taken the job (ours expired).
pub async fn renew(
    client: &Client,
    id: i64,
    owner: &str,
    lease: Duration,
) -> Result<bool, RebalanceError> {
    let ms = lease.as_millis() as f64;
    Ok(client
        .execute(
            "UPDATE rebalance_jobs SET lease_expires = now() + $3 * interval '1 millisecond' \
             WHERE job_id = $1 AND lease_owner = $2",
            &[&id, &owner, &ms],
        )
        .await
        .map_err(cat)?
        == 1)
}

/// Records a step's state.
pub async fn set_step_state(
    client: &Client,
    id: i64,
    step: i32,
    state: &str,
) -> Result<(), RebalanceError> {
    client
        .execute(
            "UPDATE rebalance_steps SET state = $3, updated_at = now(), \
                 started_at = coalesce(started_at, now()), \
                 finished_at = CASE WHEN $3 IN ('verified', 'rolled_back') THEN now() END \
             WHERE job_id = $1 AND step_no = $2",
            &[&id, &step, &state],
        )
        .await
        .map_err(cat)?;
    Ok(())
}

/// Records a step's progress: rows on the destination and the slot's lag behind the source.
pub async fn set_progress(
    client: &Client,
    id: i64,
    step: i32,
    rows_copied: i64,
    lag_bytes: Option<i64>,
) -> Result<(), RebalanceError> {
    client
        .execute(
            "UPDATE rebalance_steps SET rows_copied = $3, lag_bytes = $4, updated_at = now() \
             WHERE job_id = $1 AND step_no = $2",
            &[&id, &step, &rows_copied, &lag_bytes],
        )
        .await
        .map_err(cat)?;
    Ok(())
}

/// Records what clean-up deleted and the verified checksum.
pub async fn set_cleaned(
    client: &Client,
    id: i64,
    step: i32,
    rows_deleted: i64,
    checksum: Option<&str>,
) -> Result<(), RebalanceError> {
    client
        .execute(
            "UPDATE rebalance_steps SET rows_deleted = $3, checksum = coalesce($4, checksum), \
                 updated_at = now() WHERE job_id = $1 AND step_no = $2",
            &[&id, &step, &rows_deleted, &checksum],
        )
        .await
        .map_err(cat)?;
    Ok(())
}

/// Asks the runner of job `id` to cancel it; refused once the cut-over has switched the map.
pub async fn request_cancel(client: &Client, id: i64) -> Result<String, RebalanceError> {
    let row = client
        .query_opt(
            "UPDATE rebalance_jobs SET state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE 'cancelling' END, \
                 updated_at = now(), \
                 finished_at = CASE WHEN state = 'pending' THEN now() END \
             WHERE job_id = $1 AND state IN ('pending', 'copying', 'cutover') AND new_version IS NULL \
             RETURNING state",
            &[&id],
        )
        .await
        .map_err(cat)?;
    match row {
        Some(r) => Ok(r.get(0)),
        None => {
            let state: Option<String> = client
                .query_opt("SELECT state FROM rebalance_jobs WHERE job_id = $1", &[&id])
                .await
                .map_err(cat)?
                .map(|r| r.get(0));
            Err(RebalanceError::Refused(match state {
                None => format!("no rebalancing job {id}"),
                Some(s) => format!(
                    "rebalancing job {id} is {s}: only a job that has not switched the map yet can be cancelled"
                ),
            }))
        }
    }
}

/// The active job whose moving rows may sit on shards that do not own them: its id, those shards,
/// and the map it switches to.
pub struct JobFence {
    pub job: i64,
    pub shards: Vec<u32>,
    pub target: ShardMap,
}

/// The fence of the active job, if one is moving rows.
pub async fn fence(client: &Client) -> Result<Option<JobFence>, RebalanceError> {
    let rows = client
        .query(
            "SELECT j.job_id, s.source_shard, s.dest_shard, j.target_map::text FROM rebalance_jobs j \
             JOIN rebalance_steps s USING (job_id) \
             WHERE j.state IN ('copying', 'cutover', 'cleanup', 'cancelling') ORDER BY j.job_id",
            &[],
        )
        .await
        .map_err(cat)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let job: i64 = first.get(0);
    let target = map_from_json(first.get::<_, &str>(3))?;
    let mut shards: Vec<u32> = rows
        .iter()
        .filter(|r| r.get::<_, i64>(0) == job)
        .flat_map(|r| [r.get::<_, i32>(1) as u32, r.get::<_, i32>(2) as u32])
        .collect();
    shards.sort_unstable();
    shards.dedup();
    Ok(Some(JobFence {
        job,
        shards,
        target,
    }))
}
