//! Runs rebalancing jobs inside a proxy: claims an unfinished job's lease in the catalog (so a
//! killed proxy's job is taken up by the next proxy that starts, or by the same one restarted),
//! renews it, and drives the job through its states — preflight, copy and catch-up, cut-over,
//! clean-up — or rolls it back when cancelled. Every transition is a conditional update of the
//! job row, so a cancel from another proxy is never overwritten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::copy;
use super::cutover::{self, Attempt, LIVE_WINDOW_MS};
use super::jobs::{self, Job, JobState};
use super::shards::{catalog, connect};
use super::{initial_copy, preflight, RebalanceError};
use crate::config::Config;

/// Starts the runner loop of one proxy, on a thread of its own
/// ([`super::background`]); the returned task stands for it.
pub fn start(config: Arc<Config>, node_id: u16) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let owner = format!(
        "{}#{node_id}@{}",
        config.proxy.node_name,
        std::process::id()
    );
    super::background::spawn("pgshard-rebalance", move || async move {
        let poll = Duration::from_millis(config.catalog.poll_interval_ms.min(1000));
        // One catalog connection for the polls while it lives (a login — SCRAM's key derivation
        // — every poll was most of an idle proxy's CPU), LISTENing for announcements: a new job
        // starts at once instead of at the next poll.
        let mut kept: Option<Kept> = None;
        loop {
            if let Err(e) = run_once(&config, &owner, &mut kept).await {
                tracing::warn!(error = %e, "rebalancing runner");
            }
            match kept.as_mut() {
                Some(k) => {
                    tokio::select! {
                        n = k.announced.recv() => if n.is_none() { kept = None; },
                        _ = tokio::time::sleep(poll) => {}
                    }
                    if let Some(k) = kept.as_mut() {
                        while k.announced.try_recv().is_ok() {}
                    }
                }
                None => tokio::time::sleep(poll).await,
            }
        }
    })
}

/// The runner's catalog connection and the announcements it receives.
struct Kept {
    client: Client,
    announced: tokio::sync::mpsc::UnboundedReceiver<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Claims one job (if any is free) and drives it until it ends or cannot go on. `kept` is the
/// catalog connection of the previous poll, if it is still open; it is kept for the next one.
async fn run_once(
    config: &Arc<Config>,
    owner: &str,
    kept: &mut Option<Kept>,
) -> Result<(), RebalanceError> {
    let mut k = match kept.take().filter(|k| !k.client.is_closed()) {
        Some(k) => k,
        None => {
            let tls = crate::backend::ServerTls::load(config.server_tls.as_ref())?;
            let (client, announced, reader) = super::hold::listen(&tls, &config.catalog.url)
                .await
                .map_err(RebalanceError::Catalog)?;
            Kept {
                client,
                announced,
                reader,
            }
        }
    };
    let lease = Duration::from_millis(config.rebalance.lease_ms);
    let Some(id) = jobs::claim(&k.client, owner, lease).await? else {
        *kept = Some(k);
        return Ok(());
    };
    let client = &mut k.client;
    tracing::info!(job = id, owner, "running rebalancing job");
    // Shards registered since this proxy started take part too.
    let config = &Arc::new(super::shards::with_registered_shards(config).await?);
    let lost = Arc::new(AtomicBool::new(false));
    let renewal = {
        let (config, owner, lost) = (config.clone(), owner.to_string(), lost.clone());
        tokio::spawn(async move {
            let mut misses = 0;
            loop {
                tokio::time::sleep(lease / 4).await;
                let renewed = match catalog(&config).await {
                    Ok(c) => jobs::renew(&c, id, &owner, lease).await,
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(true) => misses = 0,
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(_) => {
                        misses += 1;
                        if misses >= 3 {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut runner = Runner {
        config,
        owner,
        lost,
        fence_acked: false,
        retry: Duration::from_millis(200),
        conns: HashMap::new(),
    };
    let result = runner.drive(client, id).await;
    renewal.abort();
    if let Err(e) = &result {
        let _ = client
            .execute(
                "UPDATE rebalance_jobs SET error = $2, updated_at = now() WHERE job_id = $1",
                &[&id, &e.to_string()],
            )
            .await;
    }
    *kept = Some(k);
    result
}

struct Runner<'a> {
    config: &'a Arc<Config>,
    owner: &'a str,
    lost: Arc<AtomicBool>,
    fence_acked: bool,
    retry: Duration,
    /// Control-plane connections to shards, reused across the job's loops.
    conns: HashMap<u32, Arc<Client>>,
}

impl Runner<'_> {
    /// A live control-plane connection to `shard`.
    async fn conn(&mut self, shard: u32) -> Result<Arc<Client>, RebalanceError> {
        if let Some(c) = self.conns.get(&shard).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(connect(self.config, shard).await?);
        self.conns.insert(shard, c.clone());
        Ok(c)
    }

    /// Opens the missing connections to `shards` all at once (a login each: one after another
    /// they delayed a job's first copy by a login per source).
    async fn connect_all(
        &mut self,
        shards: impl IntoIterator<Item = u32>,
    ) -> Result<(), RebalanceError> {
        let missing: std::collections::BTreeSet<u32> = shards
            .into_iter()
            .filter(|s| self.conns.get(s).is_none_or(|c| c.is_closed()))
            .collect();
        let config = self.config;
        let logins = missing
            .into_iter()
            .map(|shard| async move { (shard, connect(config, shard).await) });
        for (shard, c) in futures_util::future::join_all(logins).await {
            self.conns.insert(shard, Arc::new(c?));
        }
        Ok(())
    }

    fn check_lease(&self, id: i64) -> Result<(), RebalanceError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(RebalanceError::Refused(format!(
                "lost the lease of rebalancing job {id}"
            )));
        }
        Ok(())
    }

    /// Moves the job from `from` to `to` unless something else (a cancel) changed it first.
    async fn advance(
        &self,
        client: &Client,
        job: &Job,
        to: JobState,
        error: Option<&str>,
    ) -> Result<bool, RebalanceError> {
        let n = client
            .execute(
                "UPDATE rebalance_jobs SET state = $4, error = coalesce($5, error), updated_at = now(), \
                     finished_at = CASE WHEN $4 IN ('done', 'cancelled', 'failed') THEN now() END, \
                     lease_owner = CASE WHEN $4 IN ('done', 'cancelled', 'failed') THEN NULL ELSE lease_owner END, \
                     cutover_attempts = cutover_attempts + CASE WHEN $4 = 'cutover' THEN 0 ELSE 0 END \
                 WHERE job_id = $1 AND lease_owner = $2 AND state = $3",
                &[&job.id, &self.owner, &job.state.as_str(), &to.as_str(), &error],
            )
            .await
            .map_err(RebalanceError::Catalog)?;
        Ok(n == 1)
    }

    async fn drive(&mut self, client: &mut Client, id: i64) -> Result<(), RebalanceError> {
        loop {
            self.check_lease(id)?;
            let job = jobs::load(client, id)
                .await?
                .ok_or_else(|| RebalanceError::Refused(format!("job {id} vanished")))?;
            match job.state {
                JobState::Done | JobState::Cancelled | JobState::Failed => return Ok(()),
                JobState::Pending => {
                    // The job's connections first: the checks use them, then the copy. A shard
                    // that cannot be reached fails the checks below, with their message.
                    let _ = self.connect_all(job.shards()).await;
                    if let Err(e) = preflight::check(self.config, &job, &self.conns).await {
                        tracing::warn!(job = id, error = %e, "rebalancing job failed its checks");
                        self.advance(client, &job, JobState::Failed, Some(&e.to_string()))
                            .await?;
                        return Ok(());
                    }
                    tracing::info!(job = id, "checks passed; copying");
                    self.advance(client, &job, JobState::Copying, None).await?;
                }
                JobState::Copying => {
                    if let Err(e) = self.copying(client, &job).await {
                        self.pause_after(client, &job, &e).await?;
                    }
                }
                JobState::Cutover => {
                    client
                        .execute(
                            "UPDATE rebalance_jobs SET cutover_attempts = cutover_attempts + 1 WHERE job_id = $1",
                            &[&id],
                        )
                        .await
                        .map_err(RebalanceError::Catalog)?;
                    // Holds a previous runner of this job left open are released first.
                    client
                        .execute(
                            "UPDATE rebalance_holds SET released_at = now() WHERE job_id = $1 AND released_at IS NULL",
                            &[&id],
                        )
                        .await
                        .map_err(RebalanceError::Catalog)?;
                    match cutover::attempt(self.config, client, &job, self.owner).await {
                        Ok(Attempt::Switched { version, hold_ms }) => {
                            tracing::info!(
                                job = id,
                                version,
                                hold_ms,
                                "cut-over: new shard map published"
                            );
                        }
                        Ok(Attempt::Retry(why)) => {
                            tracing::warn!(
                                job = id,
                                why,
                                "cut-over attempt released on the old map; retrying"
                            );
                            self.note(client, id, &format!("cut-over retry: {why}"))
                                .await;
                            tokio::time::sleep(self.retry).await;
                            self.retry = (self.retry * 2).min(Duration::from_secs(3));
                        }
                        Ok(Attempt::Fail(why)) => {
                            tracing::error!(job = id, why, "cut-over impossible; rolling back");
                            self.advance(client, &job, JobState::Cancelling, Some(&why))
                                .await?;
                        }
                        Err(e) => self.pause_after(client, &job, &e).await?,
                    }
                }
                JobState::Cleanup => match self.clean_up(client, &job).await {
                    Ok(()) => {
                        self.advance(client, &job, JobState::Done, None).await?;
                        tracing::info!(job = id, "rebalancing job done");
                        return Ok(());
                    }
                    Err(e) => self.pause_after(client, &job, &e).await?,
                },
                JobState::Cancelling => match self.roll_back(client, &job).await {
                    Ok(()) => {
                        self.advance(client, &job, JobState::Cancelled, None)
                            .await?;
                        tracing::info!(job = id, "rebalancing job rolled back");
                        return Ok(());
                    }
                    Err(e) => self.pause_after(client, &job, &e).await?,
                },
            }
        }
    }

    /// Records a transient failure and waits before the next try.
    async fn pause_after(
        &mut self,
        client: &Client,
        job: &Job,
        e: &RebalanceError,
    ) -> Result<(), RebalanceError> {
        tracing::warn!(job = job.id, state = job.state.as_str(), error = %e, "rebalancing step failed; retrying");
        self.note(client, job.id, &e.to_string()).await;
        tokio::time::sleep(self.retry).await;
        self.retry = (self.retry * 2).min(Duration::from_secs(3));
        Ok(())
    }

    async fn note(&self, client: &Client, id: i64, what: &str) {
        let _ = client
            .execute(
                "UPDATE rebalance_jobs SET error = $2, updated_at = now() WHERE job_id = $1",
                &[&id, &what],
            )
            .await;
    }

    /// Until every live proxy fences the job's shards, nothing is copied; then every step gets
    /// its publication, slot and subscription, and progress is recorded until all are synced.
    async fn copying(&mut self, client: &Client, job: &Job) -> Result<(), RebalanceError> {
        if !self.fence_acked {
            let waiting: Vec<i32> = client
                .query_one(
                    "SELECT ARRAY(SELECT node_id FROM proxies \
                       WHERE last_seen > now() - $2 * interval '1 millisecond' AND fence_job < $1)",
                    &[&job.id, &(LIVE_WINDOW_MS as f64)],
                )
                .await
                .map_err(RebalanceError::Catalog)?
                .get(0);
            if !waiting.is_empty() {
                tracing::debug!(
                    job = job.id,
                    ?waiting,
                    "waiting for proxies to fence the moving shards"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Ok(());
            }
            self.fence_acked = true;
        }
        let slot_timeout = Duration::from_millis(self.config.rebalance.slot_timeout_ms);
        let mut all_synced = true;
        // A tenant's tables are copied by Postgres (`copy_data`), one initial copy per source at
        // a time: Postgres names a table-sync slot on the source after the subscription's oid
        // and the destination's system identifier, and shards cloned from one data directory
        // share both, so two destinations syncing from one source at once can take each other's
        // slot and stall. Key ranges are copied by the runner itself (`initial_copy`, no
        // table-sync slots): every step at once.
        let tenants = job.plan.moves.iter().any(|m| m.schema.is_some());
        let mut syncing_sources: std::collections::BTreeSet<u32> = job
            .steps
            .iter()
            .filter(|s| tenants && s.state == "copying")
            .map(|s| s.source)
            .collect();
        // Every step that may start now starts at once: publication, slot and subscription
        // of one step do not wait for another's.
        self.connect_all(job.steps.iter().flat_map(|s| [s.source, s.dest]))
            .await?;
        let mut starting = Vec::new();
        let config = self.config;
        for step in job.steps.iter().filter(|s| s.state == "pending") {
            if !tenants || syncing_sources.insert(step.source) {
                let source = self.conn(step.source).await?;
                let dest_ctl = self.conn(step.dest).await?;
                starting.push(async move {
                    let started = Instant::now();
                    let mut copied = 0;
                    copy::ensure_publication(config, &source, job, step).await?;
                    if tenants {
                        let slot = copy::name(job.id, step.no);
                        copy::ensure_slot(&source, step.source, &slot, slot_timeout).await?;
                        // A connection of the step's own: CREATE SUBSCRIPTION logs in to the
                        // source and reads its publication, and steps sharing a destination
                        // would otherwise create theirs one after another on one connection.
                        let dest = connect(config, step.dest).await?;
                        copy::ensure_subscription(config, &dest, job, step).await?;
                    } else if !copy::subscription_exists(&dest_ctl, job, step).await? {
                        copied =
                            initial_copy::run(config, &source, job, step, slot_timeout).await?;
                        jobs::set_progress(client, job.id, step.no, copied, None).await?;
                        tracing::info!(
                            job = job.id,
                            step = step.no,
                            rows = copied,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "initial copy done; streaming"
                        );
                    }
                    // Recorded at once: a step whose slot waits does not hide the others.
                    jobs::set_step_state(client, job.id, step.no, "copying").await?;
                    tracing::info!(job = job.id, step = step.no, "copy started");
                    Ok::<_, RebalanceError>((step.no, copied))
                });
            } else {
                all_synced = false;
            }
        }
        let mut started = std::collections::BTreeMap::new();
        // At most `steps_at_once` copies run together: each is a busy process on its source and
        // on its destination, beside the clients'.
        for r in super::at_most(config.rebalance.steps_at_once, starting).await {
            let (no, copied) = r?;
            started.insert(no, copied);
        }
        // Progress of every step at once (a job may have a hundred steps; measuring them one
        // after another would delay noticing a finished copy, and with it the next one).
        let mut measured = Vec::new();
        for step in &job.steps {
            if step.state == "pending" && !started.contains_key(&step.no) {
                continue;
            }
            let source = self.conn(step.source).await?;
            let dest = self.conn(step.dest).await?;
            measured.push(async move { (step, copy::progress(&source, &dest, job, step).await) });
        }
        for (step, p) in futures_util::future::join_all(measured).await {
            let mut p = p?;
            // Rows the runner copied itself this round (the step read from the catalog
            // before that does not know them yet).
            p.rows = p.rows.max(started.get(&step.no).copied().unwrap_or(0));
            if (p.rows, p.lag_bytes) != (step.rows_copied, step.lag_bytes) {
                jobs::set_progress(client, job.id, step.no, p.rows, p.lag_bytes).await?;
            }
            crate::telemetry::record::rebalance_progress(job.id, step.no, p.rows, p.lag_bytes);
            if p.synced && step.state != "synced" {
                jobs::set_step_state(client, job.id, step.no, "synced").await?;
            }
            all_synced &= p.synced;
        }
        if all_synced {
            tracing::info!(
                job = job.id,
                "every step copied and streaming; cutting over"
            );
            self.retry = Duration::from_millis(200);
            self.advance(client, job, JobState::Cutover, None).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Drops replication, deletes the moved rows from each source in batches, and proves none
    /// is left there; every step at once (their sources' deletes are independent).
    async fn clean_up(&mut self, client: &Client, job: &Job) -> Result<(), RebalanceError> {
        let started = Instant::now();
        let mut steps = Vec::new();
        for step in job.steps.iter().filter(|s| s.state != "verified") {
            steps.push((
                step,
                self.conn(step.source).await?,
                self.conn(step.dest).await?,
            ));
        }
        let config = self.config;
        let cleaning = steps.into_iter().map(|(step, source, dest)| async move {
            let t0 = Instant::now();
            // A destination connection of the step's own: DROP SUBSCRIPTION waits for the
            // subscription's worker to stop and logs in to the source to drop the slot, and
            // steps sharing a destination (add-shard: all of them) would wait for each other.
            let own = connect(config, step.dest).await;
            let dest = match &own {
                Ok(c) => c,
                Err(_) => &*dest,
            };
            copy::drop_replication(&source, dest, job, step).await?;
            let dropped = t0.elapsed();
            let batch = config.rebalance.delete_batch;
            let deleted = copy::delete_rows(config, &source, step.source, job, step, batch).await?;
            let emptied = t0.elapsed();
            let left = copy::checksums(config, &source, step.source, job, &[step])
                .await?
                .remove(&step.no)
                .unwrap_or_default();
            tracing::info!(
                job = job.id,
                step = step.no,
                deleted,
                dropped_ms = dropped.as_millis() as u64,
                deleted_ms = (emptied - dropped).as_millis() as u64,
                checked_ms = (t0.elapsed() - emptied).as_millis() as u64,
                "step cleaned up"
            );
            if left.iter().any(|(_, n, _)| *n > 0) {
                return Err(RebalanceError::Refused(format!(
                    "step {}: rows still on shard {} after clean-up: {left:?}",
                    step.no, step.source
                )));
            }
            jobs::set_cleaned(client, job.id, step.no, step.rows_deleted + deleted, None).await?;
            jobs::set_step_state(client, job.id, step.no, "verified").await
        });
        // At most `steps_at_once` clean-ups run together, as the copies.
        for r in super::at_most(config.rebalance.steps_at_once, cleaning).await {
            r?;
        }
        tracing::info!(
            job = job.id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "clean-up done"
        );
        Ok(())
    }

    /// Drops replication and removes the partial copies from each destination.
    async fn roll_back(&mut self, client: &Client, job: &Job) -> Result<(), RebalanceError> {
        if job.new_version.is_some() {
            return Err(RebalanceError::Refused(format!(
                "job {} already switched the map to version {:?}; it cannot be rolled back",
                job.id, job.new_version
            )));
        }
        for step in &job.steps {
            if step.state == "rolled_back" {
                continue;
            }
            let source = self.conn(step.source).await?;
            let dest = self.conn(step.dest).await?;
            copy::drop_replication(&source, &dest, job, step).await?;
            let batch = self.config.rebalance.delete_batch;
            copy::delete_rows(self.config, &dest, step.dest, job, step, batch).await?;
            jobs::set_step_state(client, job.id, step.no, "rolled_back").await?;
        }
        Ok(())
    }
}
