//! The two-phase-commit coordinator: PREPARE TRANSACTION on every participant, the decision logged
//! in the catalog, then COMMIT PREPARED — retried in the background until every shard has it, so
//! the client's COMMIT returns as soon as the decision is durable.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;

use super::decision_log::{Decision, DecisionLog};
use crate::backend::{BackendError, PooledConn, ShardPools};
use crate::wire::backend::{ErrorFields, TxStatus};

/// Backoff bounds for COMMIT/ROLLBACK PREPARED retries on a shard that is away.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs the commit of transactions that span shards; one per proxy.
pub struct Coordinator {
    pub log: DecisionLog,
    pools: Arc<ShardPools>,
    node_id: u16,
    /// Global ids this proxy is committing right now: recovery leaves them alone.
    in_flight: Mutex<HashSet<String>>,
}

/// Why a distributed commit did not commit; the message is what the client is told.
#[derive(Debug)]
pub enum CommitFailure {
    /// Nothing was committed anywhere.
    RolledBack(ErrorFields),
    /// The decision could not be logged; recovery will settle the transaction one way on every
    /// shard, but the client cannot be told which.
    Unknown(ErrorFields),
}

impl CommitFailure {
    /// The error for the client.
    pub fn fields(self) -> ErrorFields {
        match self {
            CommitFailure::RolledBack(f) | CommitFailure::Unknown(f) => f,
        }
    }
}

impl Coordinator {
    pub fn new(log: DecisionLog, pools: Arc<ShardPools>, node_id: u16) -> Coordinator {
        Coordinator {
            log,
            pools,
            node_id,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// True while this proxy is committing `gid`.
    pub fn is_in_flight(&self, gid: &str) -> bool {
        self.in_flight
            .lock()
            .map(|set| set.contains(gid))
            .unwrap_or(false)
    }

    fn track(&self, gid: &str, on: bool) {
        if let Ok(mut set) = self.in_flight.lock() {
            if on {
                set.insert(gid.to_string());
            } else {
                set.remove(gid);
            }
        }
    }

    /// Commits the transaction open on `conns` (one per participant shard) atomically. `unique`
    /// makes the global id unique within this proxy (a fresh id from the generator).
    pub async fn commit(
        self: &Arc<Self>,
        conns: &mut [&mut PooledConn],
        unique: i64,
    ) -> Result<(), CommitFailure> {
        let gid = format!("pgshard_{}_{}", self.node_id, unique);
        let _timed =
            crate::telemetry::QueryTimer::start(crate::telemetry::RouteKind::TwoPhaseCommit);
        self.track(&gid, true);
        let result = self.commit_tracked(&gid, conns).await;
        self.track(&gid, false);
        result
    }

    async fn commit_tracked(
        self: &Arc<Self>,
        gid: &str,
        conns: &mut [&mut PooledConn],
    ) -> Result<(), CommitFailure> {
        // A participant whose transaction already failed cannot commit: roll everything back.
        if let Some(failed) = conns.iter().find(|c| c.status == TxStatus::Failed) {
            let shard = failed.shard;
            rollback_open(conns).await;
            return Err(CommitFailure::RolledBack(ErrorFields::error(
                "25P02",
                format!("the transaction failed on shard {shard} and was rolled back"),
            )));
        }
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        // Round one: participants that seem to have only read confirm it (Postgres assigned
        // their transaction no id); the others prepare, unless at most one of them wrote (it may
        // then commit in one phase).
        let writers = conns.iter().filter(|c| c.wrote).count();
        let prepare_now = writers > 1;
        let round_one = join_all(conns.iter_mut().map(|c| {
            let prepare = &prepare;
            async move {
                if !c.wrote {
                    match wrote_nothing(c).await {
                        Ok(true) => Ok(Role::Reader),
                        Ok(false) => {
                            c.wrote = true;
                            Ok(Role::Writer)
                        }
                        Err(e) => Err(e),
                    }
                } else if prepare_now {
                    c.run_silently(prepare).await.map(|()| Role::Prepared)
                } else {
                    Ok(Role::Writer)
                }
            }
        }))
        .await;
        let failure = round_one
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(prepare_error);
        // A participant that failed is undone like one still in its transaction.
        let mut roles: Vec<Role> = round_one
            .into_iter()
            .map(|r| r.unwrap_or(Role::Writer))
            .collect();
        if let Some(fields) = failure {
            self.undo(gid, conns, &roles).await;
            return Err(CommitFailure::RolledBack(fields));
        }
        let open_writers = roles.iter().filter(|r| **r == Role::Writer).count();
        if open_writers <= 1 && !roles.contains(&Role::Prepared) {
            return one_phase(conns).await;
        }
        // Round two: participants that wrote and are not prepared yet.
        if open_writers > 0 {
            let prepared = join_all(
                conns
                    .iter_mut()
                    .zip(&roles)
                    .filter(|(_, r)| **r == Role::Writer)
                    .map(|(c, _)| c.run_silently(&prepare)),
            )
            .await;
            let failure = prepared
                .iter()
                .find_map(|r| r.as_ref().err())
                .map(prepare_error);
            let mut results = prepared.into_iter();
            for role in roles.iter_mut().filter(|r| **r == Role::Writer) {
                if results.next().is_some_and(|r| r.is_ok()) {
                    *role = Role::Prepared;
                }
            }
            if let Some(fields) = failure {
                self.undo(gid, conns, &roles).await;
                return Err(CommitFailure::RolledBack(fields));
            }
        }
        let participants: Vec<u32> = conns
            .iter()
            .zip(&roles)
            .filter(|(_, r)| **r == Role::Prepared)
            .map(|(c, _)| c.shard)
            .collect();
        let mut prepared: Vec<&mut PooledConn> = Vec::with_capacity(participants.len());
        let mut readers: Vec<&mut PooledConn> = Vec::new();
        for (conn, role) in conns.iter_mut().zip(&roles) {
            match role {
                Role::Prepared => prepared.push(conn),
                _ => readers.push(conn),
            }
        }
        // The decision, while the readers end their transactions (nothing to keep there).
        let (decided, _) = futures_util::future::join(
            self.log
                .decide(gid, Decision::Commit, &participants, self.node_id),
            end_readers(&mut readers),
        )
        .await;
        match decided {
            Ok(Decision::Commit) => {}
            Ok(Decision::Abort) => {
                self.finish_everywhere(gid, Decision::Abort, &mut prepared)
                    .await;
                return Err(CommitFailure::RolledBack(ErrorFields::error(
                    "40000",
                    "the transaction was rolled back: recovery presumed it abandoned while it waited to commit",
                )));
            }
            Err(e) => {
                tracing::error!(gid, error = %e, "cannot log a commit decision; recovery will settle it");
                return Err(CommitFailure::Unknown(ErrorFields::error(
                    "40003",
                    format!(
                        "cannot record the commit decision in the catalog ({e}); transaction {gid} will be committed or rolled back on every shard alike by recovery"
                    ),
                )));
            }
        }
        // Phase two: the client is told COMMIT now, whatever the shards do next.
        self.finish_everywhere(gid, Decision::Commit, &mut prepared)
            .await;
        Ok(())
    }

    /// Ends a commit that failed before any decision: prepared participants roll back their
    /// prepared transaction, the others their open one.
    async fn undo(&self, gid: &str, conns: &mut [&mut PooledConn], roles: &[Role]) {
        let rollback = format!("ROLLBACK PREPARED '{gid}'");
        for (i, conn) in conns.iter_mut().enumerate() {
            let undo = if roles.get(i) == Some(&Role::Prepared) {
                conn.run_silently(&rollback).await
            } else if conn.status != TxStatus::Idle {
                conn.run_silently("ROLLBACK").await
            } else {
                Ok(())
            };
            if let Err(e) = undo {
                // Left prepared without a decision: recovery aborts it after the grace time.
                tracing::warn!(gid, shard = conn.shard, error = %e, "could not undo a prepared transaction");
            }
        }
    }

    /// Applies `decision` on every participant; shards that fail get a background retry.
    async fn finish_everywhere(
        self: &Arc<Self>,
        gid: &str,
        decision: Decision,
        conns: &mut [&mut PooledConn],
    ) {
        let sql = finish_sql(gid, decision);
        // `commit_silently`: a session that asked learns each shard's position behind it.
        let results = join_all(conns.iter_mut().map(|c| c.commit_silently(&sql))).await;
        let pending: Vec<u32> = conns
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.as_ref().is_err_and(|e| !already_finished(e)))
            .map(|(c, _)| c.shard)
            .collect();
        if pending.is_empty() {
            // Every shard has it: forgotten in the next batch, no task of its own.
            self.log.forget_later(gid.to_string());
            return;
        }
        let me = self.clone();
        let gid = gid.to_string();
        tokio::spawn(async move {
            let retries = pending
                .iter()
                .map(|&shard| me.finish_with_retries(&gid, decision, shard));
            join_all(retries).await;
            me.log.forget_later(gid);
        });
    }

    /// Runs COMMIT/ROLLBACK PREPARED on `shard` until it succeeds or the transaction is gone.
    pub async fn finish_with_retries(&self, gid: &str, decision: Decision, shard: u32) {
        let sql = finish_sql(gid, decision);
        let mut delay = RETRY_FIRST;
        let mut warned = false;
        loop {
            // As the control-plane login: finishing another role's prepared transaction needs
            // a superuser, and the client that prepared it may be gone.
            match self.pools.get_control(shard).await {
                Ok(mut conn) => match conn.run_silently(&sql).await {
                    Ok(()) => return,
                    Err(e) if already_finished(&e) => return,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(gid, shard, error = %e, "finishing a prepared transaction failed; retrying");
                            warned = true;
                        }
                        ShardPools::discard(conn);
                    }
                },
                Err(e) => {
                    if !warned {
                        tracing::warn!(gid, shard, error = %e, "shard unreachable while finishing a prepared transaction; retrying");
                        warned = true;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// What a participant is in a commit once asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// It wrote nothing (Postgres confirmed): it commits in one phase.
    Reader,
    /// It wrote and is still in its transaction.
    Writer,
    /// Its transaction is prepared under the global id.
    Prepared,
}

/// Asks a participant whether its transaction wrote nothing: no transaction id was assigned.
async fn wrote_nothing(conn: &mut PooledConn) -> Result<bool, BackendError> {
    let answer = conn
        .query_text("SELECT pg_current_xact_id_if_assigned() IS NULL")
        .await?;
    Ok(answer.as_deref() == Some("t"))
}

/// Commits a transaction in which at most one participant wrote: plain COMMIT everywhere (the
/// others wrote nothing, so their commit cannot disagree with the writer's).
async fn one_phase(conns: &mut [&mut PooledConn]) -> Result<(), CommitFailure> {
    let results = join_all(conns.iter_mut().map(|c| async move {
        let wrote = c.wrote;
        (wrote, c.shard, c.commit_silently("COMMIT").await)
    }))
    .await;
    let mut outcome = Ok(());
    for (wrote, shard, result) in results {
        match result {
            // Only the writer's COMMIT decides; the others had nothing to lose.
            Err(e) if wrote => {
                tracing::debug!(shard, error = %e, "one-phase commit failed");
                outcome = Err(match e {
                    BackendError::Server { fields, .. } => CommitFailure::RolledBack(fields),
                    other => CommitFailure::Unknown(ErrorFields::error(
                        "08007",
                        format!("shard {shard} failed during COMMIT, so whether the transaction committed is unknown: {other}"),
                    )),
                });
            }
            Err(e) => {
                tracing::debug!(shard, error = %e, "commit of a participant that only read failed")
            }
            Ok(()) => {}
        }
    }
    outcome
}

/// Ends the transactions of participants that wrote nothing.
async fn end_readers(readers: &mut [&mut PooledConn]) {
    let ended = join_all(readers.iter_mut().map(|c| c.commit_silently("COMMIT"))).await;
    for (conn, result) in readers.iter().zip(ended) {
        if let Err(e) = result {
            tracing::debug!(shard = conn.shard, error = %e, "commit of a participant that only read failed");
        }
    }
}

/// COMMIT PREPARED or ROLLBACK PREPARED of `gid`.
pub fn finish_sql(gid: &str, decision: Decision) -> String {
    match decision {
        Decision::Commit => format!("COMMIT PREPARED '{gid}'"),
        Decision::Abort => format!("ROLLBACK PREPARED '{gid}'"),
    }
}

/// The prepared transaction no longer exists there: someone (recovery) finished it.
fn already_finished(e: &BackendError) -> bool {
    matches!(e, BackendError::Server { fields, .. } if fields.code == "42704")
}

/// Rolls back every participant that still has an open transaction.
async fn rollback_open(conns: &mut [&mut PooledConn]) {
    for conn in conns.iter_mut() {
        if conn.status != TxStatus::Idle {
            if let Err(e) = conn.run_silently("ROLLBACK").await {
                tracing::debug!(shard = conn.shard, error = %e, "rollback failed");
            }
        }
    }
}

fn prepare_error(e: &BackendError) -> ErrorFields {
    match e {
        BackendError::Server { fields, .. } => fields.clone(),
        other => ErrorFields::error(
            "08006",
            format!("a shard failed while preparing to commit, so nothing was committed: {other}"),
        ),
    }
}
