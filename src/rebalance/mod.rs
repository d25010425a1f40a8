//! Online rebalancing: planning a job (pure), verifying placement, and running jobs — copy and
//! catch-up over logical replication, a short cut-over under a hold, clean-up — with every step
//! recorded in the catalog so a restarted proxy resumes or rolls back.

pub mod admin;
pub mod background;
pub mod cli;
pub mod compare;
pub mod copy;
pub mod cutover;
pub mod estimate;
pub mod even;
pub mod hold;
pub mod initial_copy;
pub mod jobs;
pub mod lookup_backfill;
pub mod pgoutput;
pub mod plan;
pub mod preflight;
pub mod runner;
pub mod shards;
pub mod tenant;
pub mod verify;
pub mod watch;

pub use plan::{plan, Move, Plan, PlanError, Target};

/// Why a rebalancing operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    #[error("{0}")]
    Config(String),
    #[error("shard {shard}: {}", pg_message(source))]
    Shard {
        shard: u32,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("catalog: {}", pg_message(.0))]
    Catalog(#[source] tokio_postgres::Error),
    #[error(transparent)]
    CatalogState(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Refused(String),
    /// `move-schema` of a schema no shard holds (SQLSTATE 3F000, as Postgres says it).
    #[error("schema \"{0}\" does not exist")]
    UnknownSchema(String),
    #[error(transparent)]
    ServerTls(#[from] crate::backend::ServerTlsError),
    /// A shard's replication connection (the proxy's own protocol code, not tokio-postgres);
    /// the error names the shard.
    #[error("replication connection: {1}")]
    Backend(u32, #[source] Box<crate::backend::conn::BackendError>),
}

/// A Postgres error with the server's message (tokio-postgres displays only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl RebalanceError {
    /// Wraps a shard's query error.
    pub fn shard(shard: u32) -> impl FnOnce(tokio_postgres::Error) -> RebalanceError {
        move |source| RebalanceError::Shard { shard, source }
    }
}

/// Runs `futures` with at most `at_once` of them in flight (`rebalance.steps_at_once`: each is a
/// busy server process beside the clients'); their outputs in the order they finish.
pub(crate) async fn at_most<F: std::future::Future>(
    at_once: usize,
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(futures)
        .buffer_unordered(at_once.max(1))
        .collect()
        .await
}
