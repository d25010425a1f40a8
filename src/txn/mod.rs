//! Transactions across shards: the state of a client's block, savepoint tracking, the two-phase
//! commit coordinator with its decision log in the catalog, and recovery of in-doubt transactions.

pub mod block;
pub mod control;
pub mod deadlock;
pub mod decision_log;
pub mod recovery;
pub mod statement;
pub mod two_phase;

pub use block::Txn;
pub use decision_log::{Decision, DecisionLog};
pub use two_phase::{CommitFailure, Coordinator};

/// Failures of the transaction control plane (catalog or shard connections it opens itself).
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("{0}")]
    Log(String),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}
