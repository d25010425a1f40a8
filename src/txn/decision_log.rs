//! The two-phase-commit decision log in the catalog (`txn_decisions`). The decision for a global
//! transaction id is written once: the first writer wins, whether it is the coordinator deciding
//! to commit or recovery deciding to abort an abandoned transaction.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};

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

impl managed::Manager for CatalogManager {
    type Type = tokio_postgres::Client;
    type Error = TxnError;

    async fn create(&self) -> Result<tokio_postgres::Client, TxnError> {
        let connecting = self.tls.connect_url(&self.url);
        let (client, connection) = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| TxnError::Log("timed out connecting to the catalog".into()))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "decision log connection ended");
            }
        });
        Ok(client)
    }

    async fn recycle(
        &self,
        client: &mut tokio_postgres::Client,
        _: &Metrics,
    ) -> RecycleResult<TxnError> {
        if client.is_closed() {
            Err(RecycleError::message("catalog connection closed"))
        } else {
            Ok(())
        }
    }
}

/// A small pool of catalog connections writing and reading decisions.
pub struct DecisionLog {
    pool: Pool<CatalogManager>,
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
        Ok(DecisionLog { pool })
    }

    async fn client(&self) -> Result<managed::Object<CatalogManager>, TxnError> {
        self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(b) => b,
            other => TxnError::Log(format!("no catalog connection: {other}")),
        })
    }

    /// Records `decision` for `gid` unless one is already recorded; returns the one that stands.
    pub async fn decide(
        &self,
        gid: &str,
        decision: Decision,
        participants: &[u32],
        coordinator: u16,
    ) -> Result<Decision, TxnError> {
        let client = self.client().await?;
        let shards: Vec<i32> = participants.iter().map(|&s| s as i32).collect();
        let inserted = client
            .query_opt(
                "INSERT INTO txn_decisions (gid, decision, participants, coordinator)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (gid) DO NOTHING RETURNING decision",
                &[&gid, &decision.as_str(), &shards, &(coordinator as i32)],
            )
            .await?;
        if inserted.is_some() {
            return Ok(decision);
        }
        // Someone decided first; a fresh statement sees their committed row.
        let row = client
            .query_one("SELECT decision FROM txn_decisions WHERE gid = $1", &[&gid])
            .await?;
        Decision::parse(row.get(0))
    }

    /// The decision recorded for `gid`, if any.
    pub async fn lookup(&self, gid: &str) -> Result<Option<Decision>, TxnError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT decision FROM txn_decisions WHERE gid = $1", &[&gid])
            .await?;
        row.map(|r| Decision::parse(r.get(0))).transpose()
    }

    /// Forgets a transaction every participant has finished.
    pub async fn forget(&self, gid: &str) -> Result<(), TxnError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM txn_decisions WHERE gid = $1", &[&gid])
            .await?;
        Ok(())
    }

    /// Forgets decisions older than `age` whose transaction no shard still holds prepared.
    pub async fn forget_finished(
        &self,
        still_prepared: &[String],
        age: Duration,
    ) -> Result<u64, TxnError> {
        let client = self.client().await?;
        let seconds = age.as_secs_f64();
        let n = client
            .execute(
                "DELETE FROM txn_decisions
                 WHERE decided_at < now() - make_interval(secs => $1) AND gid <> ALL($2)",
                &[&seconds, &still_prepared],
            )
            .await?;
        Ok(n)
    }
}
