//! The two-phase-commit decision log in the catalog (`txn_decisions`). The decision for a global
//! transaction id is written once: the first writer wins, whether it is the coordinator deciding
//! to commit or recovery deciding to abort an abandoned transaction.
//!
//! Decisions of concurrent transactions are group-committed: while every catalog connection is
//! busy writing, decisions queue, and the next free one writes all of them in one statement (one
//! catalog commit); each transaction is told its own outcome once that statement is durable.
//! Forgetting finished transactions is batched the same way, off every client's path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::Type;

use super::TxnError;
use crate::backend::ServerTls;

/// The outcome of a global transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }

    fn parse(s: &str) -> Result<Decision, TxnError> {
        match s {
            "commit" => Ok(Decision::Commit),
            "abort" => Ok(Decision::Abort),
            other => Err(TxnError::Log(format!("unknown decision `{other}`"))),
        }
    }
}

/// Opens catalog connections for the log.
pub struct CatalogManager {
    url: String,
    tls: ServerTls,
    connect_timeout: Duration,
}

/// A catalog connection of the log, with the decision INSERT once prepared on it.
pub struct CatalogConn {
    client: tokio_postgres::Client,
    /// Prepared on first use: every later decision is one Bind/Execute round trip, parsed and
    /// planned by the catalog once per connection instead of once per batch.
    decide: Option<tokio_postgres::Statement>,
}

impl std::ops::Deref for CatalogConn {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

/// Inserts a batch's decisions where none stands yet and returns those it inserted.
const DECIDE_SQL: &str = "INSERT INTO txn_decisions (gid, decision, participants, coordinator)
     SELECT g, d, p::integer[], c
     FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[]) AS t(g, d, p, c)
     ON CONFLICT (gid) DO NOTHING RETURNING gid, decision";

impl CatalogConn {
    /// The decision INSERT, prepared on this connection the first time.
    async fn decide_statement(&mut self) -> Result<tokio_postgres::Statement, TxnError> {
        if let Some(statement) = &self.decide {
            return Ok(statement.clone());
        }
        let types = [
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::INT4_ARRAY,
        ];
        let statement = self.client.prepare_typed(DECIDE_SQL, &types).await?;
        self.decide = Some(statement.clone());
        Ok(statement)
    }
}

impl managed::Manager for CatalogManager {
    type Type = CatalogConn;
    type Error = TxnError;

    async fn create(&self) -> Result<CatalogConn, TxnError> {
        let connecting = self.tls.connect_url(&self.url);
        let (client, connection) = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| TxnError::Log("timed out connecting to the catalog".into()))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "decision log connection ended");
            }
        });
        Ok(CatalogConn {
            client,
            decide: None,
        })
    }

    async fn recycle(&self, client: &mut CatalogConn, _: &Metrics) -> RecycleResult<TxnError> {
        if client.is_closed() {
            Err(RecycleError::message("catalog connection closed"))
        } else {
            Ok(())
        }
    }
}

/// The sender of the task in `slot`, spawning it (`task(receiver)`) when none runs.
fn running<T, F>(
    slot: &Mutex<Option<mpsc::UnboundedSender<T>>>,
    task: impl FnOnce(mpsc::UnboundedReceiver<T>) -> F,
) -> mpsc::UnboundedSender<T>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    match slot.as_ref() {
        Some(tx) if !tx.is_closed() => tx.clone(),
        _ => {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(task(rx));
            *slot = Some(tx.clone());
            tx
        }
    }
}

async fn catalog_client(
    pool: &Pool<CatalogManager>,
) -> Result<managed::Object<CatalogManager>, TxnError> {
    pool.get().await.map_err(|e| match e {
        managed::PoolError::Backend(b) => b,
        other => TxnError::Log(format!("no catalog connection: {other}")),
    })
}

/// The group-commit writer: up to the pool's size of batches are written at once (so a lone
/// decision never waits for another's), and each batch is everything that queued while no
/// connection was free.
async fn write_decisions(
    pool: Pool<CatalogManager>,
    mut queue: mpsc::UnboundedReceiver<DecideRequest>,
) {
    let writers = Arc::new(Semaphore::new(pool.status().max_size.max(1)));
    loop {
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let result = write_with_retries(&pool, &batch).await;
            drop(permit);
            for request in batch {
                let outcome = match &result {
                    Ok(standing) => standing
                        .iter()
                        .find(|(gid, _)| *gid == request.gid)
                        .map(|(_, d)| *d)
                        .ok_or_else(|| format!("no decision recorded for {}", request.gid)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = request.outcome.send(outcome);
            }
        });
    }
}

/// How long a decision write keeps trying while the catalog is away (its primary lost, a replica
/// being promoted): the participants stay prepared meanwhile, and the client waits.
const DECISION_RETRY_FOR: Duration = Duration::from_secs(10);
/// First pause between decision write attempts (doubling, at most [`DECISION_RETRY_MAX`]).
const DECISION_RETRY_FIRST: Duration = Duration::from_millis(50);
const DECISION_RETRY_MAX: Duration = Duration::from_millis(1_000);

/// [`write_batch`] again (on a fresh connection, to whichever catalog server is writable now)
/// while the failure is the catalog's connection or a server that cannot write, for up to
/// [`DECISION_RETRY_FOR`]. Writing again is safe: a decision that did land before the failure
/// stands, and the retry reads it back.
async fn write_with_retries(
    pool: &Pool<CatalogManager>,
    batch: &[DecideRequest],
) -> Result<Vec<(String, Decision)>, TxnError> {
    let deadline = tokio::time::Instant::now() + DECISION_RETRY_FOR;
    let mut pause = DECISION_RETRY_FIRST;
    loop {
        match write_batch(pool, batch).await {
            Err(e) if catalog_away(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "decision write failed; retrying on the catalog's writable server");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(DECISION_RETRY_MAX);
            }
            outcome => return outcome,
        }
    }
}

/// The failure is the catalog server's, not the statement's: no connection, a connection lost,
/// a server shutting down or starting, or one that became a read-only standby.
fn catalog_away(e: &TxnError) -> bool {
    match e {
        TxnError::Log(_) => true,
        TxnError::Postgres(pg) => match pg.code() {
            None => true,
            Some(code) => {
                let code = code.code();
                code.starts_with("08") || code.starts_with("57P") || code == "25006"
            }
        },
    }
}

/// Inserts the batch's decisions where none stands yet; returns the decision that stands for
/// each gid (its own, or the one someone recorded first). A connection that failed is not
/// returned to the pool: it may lead to a server that is no longer the catalog's primary.
async fn write_batch(
    pool: &Pool<CatalogManager>,
    batch: &[DecideRequest],
) -> Result<Vec<(String, Decision)>, TxnError> {
    let mut client = catalog_client(pool).await?;
    let written = write_batch_on(&mut client, batch).await;
    if written.is_err() {
        let _ = managed::Object::take(client);
    }
    written
}

async fn write_batch_on(
    client: &mut CatalogConn,
    batch: &[DecideRequest],
) -> Result<Vec<(String, Decision)>, TxnError> {
    let gids: Vec<&str> = batch.iter().map(|r| r.gid.as_str()).collect();
    let decisions: Vec<&str> = batch.iter().map(|r| r.decision.as_str()).collect();
    let participants: Vec<String> = batch
        .iter()
        .map(|r| {
            let list: Vec<String> = r.participants.iter().map(u32::to_string).collect();
            format!("{{{}}}", list.join(","))
        })
        .collect();
    let coordinators: Vec<i32> = batch.iter().map(|r| r.coordinator as i32).collect();
    // One round trip: Bind and Execute of the statement prepared on this connection. A
    // coordinator that dies with its INSERT sent but waiting (the log locked) may still have its
    // decision land afterwards: safe, every participant was prepared before it was sent.
    let decide = client.decide_statement().await?;
    let inserted = client
        .query(&decide, &[&gids, &decisions, &participants, &coordinators])
        .await?;
    let mut standing = Vec::with_capacity(batch.len());
    for row in &inserted {
        standing.push((row.get::<_, String>(0), Decision::parse(row.get(1))?));
    }
    if standing.len() < batch.len() {
        // Someone decided first for some: a fresh statement sees their committed rows.
        let missing: Vec<&str> = gids
            .iter()
            .copied()
            .filter(|g| !standing.iter().any(|(s, _)| s == g))
            .collect();
        let rows = client
            .query_typed(
                "SELECT gid, decision FROM txn_decisions WHERE gid = ANY($1)",
                &[(&missing, Type::TEXT_ARRAY)],
            )
            .await?;
        for row in &rows {
            standing.push((row.get::<_, String>(0), Decision::parse(row.get(1))?));
        }
    }
    Ok(standing)
}

/// The pause after each DELETE of finished decisions: what finishes meanwhile is deleted in the
/// next batch, so a busy proxy deletes many decisions per catalog statement, not one (forgetting
/// is off every client's path; recovery forgets what a stopped proxy left).
const FORGET_PAUSE: Duration = Duration::from_millis(20);

/// Deletes finished transactions' decisions, everything queued at once, at most once per
/// [`FORGET_PAUSE`].
async fn forget_decisions(pool: Pool<CatalogManager>, mut queue: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let deleted = match catalog_client(&pool).await {
            Ok(client) => {
                let deleted = client
                    .execute_typed(
                        "DELETE FROM txn_decisions WHERE gid = ANY($1)",
                        &[(&batch, Type::TEXT_ARRAY)],
                    )
                    .await
                    .map_err(TxnError::from);
                if deleted.is_err() {
                    let _ = managed::Object::take(client);
                }
                deleted
            }
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            tracing::debug!(error = %e, "decisions kept; recovery will forget them");
        }
        batch.clear();
        tokio::time::sleep(FORGET_PAUSE).await;
    }
}

/// A small pool of catalog connections writing and reading decisions.
pub struct DecisionLog {
    pool: Pool<CatalogManager>,
    /// The group-commit writer, started on first use (inside the runtime) and again if its
    /// runtime went away.
    writer: Mutex<Option<mpsc::UnboundedSender<DecideRequest>>>,
    /// The batching forgetter, started like the writer.
    forgetter: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

/// Most decisions one catalog statement writes.
const MAX_BATCH: usize = 256;

/// One transaction's decision waiting for the group writer.
struct DecideRequest {
    gid: String,
    decision: Decision,
    participants: Vec<u32>,
    coordinator: u16,
    outcome: oneshot::Sender<Result<Decision, String>>,
}

impl DecisionLog {
    /// Connections open on first use, so a catalog outage at start-up does not stop the proxy.
    pub fn new(
        url: &str,
        tls: &ServerTls,
        size: usize,
        connect_timeout: Duration,
    ) -> Result<DecisionLog, TxnError> {
        let manager = CatalogManager {
            url: url.to_string(),
            tls: tls.clone(),
            connect_timeout,
        };
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| TxnError::Log(format!("cannot build the decision log pool: {e}")))?;
        Ok(DecisionLog {
            pool,
            writer: Mutex::new(None),
            forgetter: Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<managed::Object<CatalogManager>, TxnError> {
        catalog_client(&self.pool).await
    }

    /// Records `decision` for `gid` unless one is already recorded; returns the one that stands.
    /// Durable in the catalog when it returns; written together with the decisions of other
    /// transactions deciding at the same time.
    pub async fn decide(
        &self,
        gid: &str,
        decision: Decision,
        participants: &[u32],
        coordinator: u16,
    ) -> Result<Decision, TxnError> {
        let (outcome, answer) = oneshot::channel();
        let request = DecideRequest {
            gid: gid.to_string(),
            decision,
            participants: participants.to_vec(),
            coordinator,
            outcome,
        };
        running(&self.writer, |rx| write_decisions(self.pool.clone(), rx))
            .send(request)
            .map_err(|_| TxnError::Log("the decision writer stopped".into()))?;
        answer
            .await
            .map_err(|_| TxnError::Log("the decision writer stopped".into()))?
            .map_err(TxnError::Log)
    }

    /// The decision recorded for `gid`, if any.
    pub async fn lookup(&self, gid: &str) -> Result<Option<Decision>, TxnError> {
        let client = self.client().await?;
        let row = match client
            .query_typed_opt(
                "SELECT decision FROM txn_decisions WHERE gid = $1",
                &[(&gid, Type::TEXT)],
            )
            .await
        {
            Ok(row) => row,
            Err(e) => {
                let _ = managed::Object::take(client);
                return Err(e.into());
            }
        };
        row.map(|r| Decision::parse(r.get(0))).transpose()
    }

    /// Forgets a transaction every participant has finished, in a batch with others soon after;
    /// a decision left behind (the catalog away) is forgotten by recovery later.
    pub fn forget_later(&self, gid: String) {
        let _ = running(&self.forgetter, |rx| {
            forget_decisions(self.pool.clone(), rx)
        })
        .send(gid);
    }

    /// Forgets decisions older than `age` whose transaction no shard still holds prepared.
    pub async fn forget_finished(
        &self,
        still_prepared: &[String],
        age: Duration,
    ) -> Result<u64, TxnError> {
        let client = self.client().await?;
        let seconds = age.as_secs_f64();
        let deleted = client
            .execute(
                "DELETE FROM txn_decisions
                 WHERE decided_at < now() - make_interval(secs => $1) AND gid <> ALL($2)",
                &[&seconds, &still_prepared],
            )
            .await;
        if deleted.is_err() {
            let _ = managed::Object::take(client);
        }
        Ok(deleted?)
    }
}
