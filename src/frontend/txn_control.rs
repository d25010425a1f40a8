//! How a session's transaction block spans shards: shards join it as statements reach them (with
//! the block's BEGIN options and open savepoints replayed), and it ends with a plain COMMIT on one
//! shard or two-phase commit on several. Also the implicit blocks the proxy opens so that one
//! statement touching several shards commits atomically.

use super::session::{backend_error_fields, Session};
use crate::backend::{PooledConn, ShardPools};
use crate::router::{StatementFacts, StatementKind};
use crate::txn::statement::savepoint_op;
use crate::txn::{CommitFailure, Txn};
use crate::wire::backend::{ErrorFields, TxStatus};

/// How a block ended, for the client's command tag.
pub enum BlockEnd {
    Committed,
    RolledBack,
}

impl BlockEnd {
    pub fn tag(&self) -> &'static str {
        match self {
            BlockEnd::Committed => "COMMIT",
            BlockEnd::RolledBack => "ROLLBACK",
        }
    }
}

impl Session {
    /// Opens an implicit transaction block when none is open, so that work on several shards
    /// commits atomically; returns true if it opened one (the caller then calls
    /// `finish_implicit_block`).
    pub fn begin_implicit_block(&mut self) -> bool {
        if self.state.txn.is_some() {
            return false;
        }
        self.state.txn = Some(Txn::implicit());
        true
    }

    /// Ends the implicit block opened by `begin_implicit_block`: commits (two-phase when more than
    /// one shard joined) if `commit`, else rolls back. Returns the error the client must get when
    /// the commit failed (the client has not been told). A no-op when the open block is the
    /// client's own. Pass `commit = false` when the statement already reported an error.
    pub async fn finish_implicit_block(
        &mut self,
        commit: bool,
    ) -> Result<Option<ErrorFields>, super::session::End> {
        if !self.state.txn.as_ref().is_some_and(|t| t.implicit) {
            return Ok(None);
        }
        let outcome = if commit {
            match self.commit_participants().await {
                Ok(BlockEnd::Committed) => None,
                Ok(BlockEnd::RolledBack) => Some(ErrorFields::error(
                    "25P02",
                    "the statement failed on a shard, so nothing was committed",
                )),
                Err(fields) => Some(fields),
            }
        } else {
            self.rollback_participants().await;
            None
        };
        if commit && outcome.is_none() {
            for shard in self.block_shards() {
                self.state.reads.wrote(shard);
            }
        }
        self.state.txn = None;
        self.state.portals.clear();
        self.release_idle();
        Ok(outcome)
    }

    /// The open block's BEGIN text, for a block chained to it.
    pub fn txn_begin_sql(&self) -> String {
        self.state
            .txn
            .as_ref()
            .map(|t| t.begin_sql().to_string())
            .unwrap_or_else(|| "BEGIN".into())
    }

    /// True when the open block is aborted (a refused statement, or an error on one of its
    /// shards): only ROLLBACK, COMMIT or ROLLBACK TO SAVEPOINT may follow.
    pub fn block_failed(&self) -> bool {
        self.state.txn.is_some() && self.status() == TxStatus::Failed
    }

    /// True when the open block has reached more than one shard.
    pub fn block_is_distributed(&self) -> bool {
        self.state.txn.as_ref().is_some_and(|t| t.distributed())
    }

    /// Ends the client's block on every shard it reached: COMMIT (two-phase when several) or
    /// ROLLBACK. The block is closed afterwards whatever happened.
    pub async fn end_block(&mut self, commit: bool) -> Result<BlockEnd, ErrorFields> {
        let refused = self.state.txn.as_ref().is_some_and(|t| t.refused);
        let result = if commit && !refused {
            self.commit_participants().await
        } else {
            self.rollback_participants().await;
            Ok(BlockEnd::RolledBack)
        };
        let rolled_back = !matches!(result, Ok(BlockEnd::Committed));
        self.end_transaction(rolled_back);
        self.release_idle();
        result
    }

    /// Commits the open block's participants; a failed participant turns the commit into a
    /// rollback, as COMMIT of a failed block does in Postgres.
    async fn commit_participants(&mut self) -> Result<BlockEnd, ErrorFields> {
        let participants = self
            .state
            .txn
            .as_ref()
            .map(|t| t.participants.clone())
            .unwrap_or_default();
        if participants.iter().any(|s| !self.held.contains_key(s)) {
            self.rollback_participants().await;
            return Err(ErrorFields::error(
                "08006",
                "a shard of this transaction lost its connection, so the transaction was rolled back",
            ));
        }
        let participants = self.settle_owed_setups(participants);
        let failed = participants.iter().any(|s| {
            self.held
                .get(s)
                .is_some_and(|c| c.status == TxStatus::Failed)
        });
        if failed {
            self.rollback_participants().await;
            return Ok(BlockEnd::RolledBack);
        }
        let read_only = self.state.txn.as_ref().is_some_and(|t| t.read_only);
        if read_only && participants.len() > 1 {
            // Nothing was written, so nothing needs two phases (and replicas cannot prepare).
            for shard in &participants {
                if let Some(conn) = self.held.get_mut(shard) {
                    if let Err(e) = conn.run_silently("COMMIT").await {
                        tracing::debug!(shard, error = %e, "commit of a read-only block failed");
                    }
                }
            }
            self.discard_broken();
            return Ok(BlockEnd::Committed);
        }
        match participants.as_slice() {
            [] => Ok(BlockEnd::Committed),
            [only] => {
                self.ask_commit_positions(&participants);
                let Some(conn) = self.held.get_mut(only) else {
                    return Ok(BlockEnd::Committed);
                };
                let committed = conn.commit_silently("COMMIT").await;
                self.take_commit_positions(&participants);
                let Some(conn) = self.held.get_mut(only) else {
                    return Ok(BlockEnd::Committed);
                };
                match committed {
                    Ok(()) => Ok(BlockEnd::Committed),
                    Err(e) => {
                        let fields = backend_error_fields(&e);
                        if !conn.reusable() {
                            if let Some(conn) = self.held.remove(only) {
                                ShardPools::discard(conn);
                            }
                        }
                        Err(fields)
                    }
                }
            }
            _ => {
                let unique = self.proxy.ids.next_id();
                let coordinator = self.proxy.coordinator.clone();
                self.ask_commit_positions(&participants);
                let mut conns: Vec<&mut PooledConn> = self
                    .held
                    .iter_mut()
                    .filter(|(s, _)| participants.contains(s))
                    .map(|(_, c)| c)
                    .collect();
                let result = coordinator.commit(&mut conns, unique).await;
                self.take_commit_positions(&participants);
                self.discard_broken();
                match result {
                    Ok(()) => Ok(BlockEnd::Committed),
                    Err(CommitFailure::RolledBack(f)) | Err(CommitFailure::Unknown(f)) => Err(f),
                }
            }
        }
    }

    /// Rolls back the open block on every shard it reached.
    async fn rollback_participants(&mut self) {
        let participants = self
            .state
            .txn
            .as_ref()
            .map(|t| t.participants.clone())
            .unwrap_or_default();
        for shard in participants {
            let Some(conn) = self.held.get_mut(&shard) else {
                continue;
            };
            conn.drop_deferred();
            if conn.synced && conn.status == TxStatus::Idle {
                continue;
            }
            if conn.run_silently("ROLLBACK").await.is_err() || !conn.reusable() {
                if let Some(conn) = self.held.remove(&shard) {
                    ShardPools::discard(conn);
                }
            }
        }
    }

    /// The participants that ran something: one whose BEGIN is still owed (nothing was sent
    /// there) leaves the block as it is. Set-up still owed to the others is moot at the end.
    fn settle_owed_setups(&mut self, participants: Vec<u32>) -> Vec<u32> {
        participants
            .into_iter()
            .filter(|shard| {
                self.held.get_mut(shard).is_none_or(|conn| {
                    let owed = conn.drop_deferred();
                    !(owed && conn.synced && conn.status == TxStatus::Idle)
                })
            })
            .collect()
    }

    /// Drops held connections a failure left unusable.
    fn discard_broken(&mut self) {
        let broken: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, c)| !c.synced)
            .map(|(s, _)| *s)
            .collect();
        for shard in broken {
            if let Some(conn) = self.held.remove(&shard) {
                ShardPools::discard(conn);
            }
        }
    }

    /// Makes `shard` a participant of the open block: its BEGIN, SET LOCALs and open savepoints
    /// go out in front of the first statement sent there (no round trip of their own; a failure
    /// among them aborts the block on that shard). A block that now spans shards gets
    /// `lock_timeout` on every participant, so a deadlock between shards (which no single
    /// Postgres can see) ends in an error instead of a hang.
    pub async fn join_block(&mut self, shard: u32) -> Result<(), ErrorFields> {
        let Some(txn) = self.state.txn.as_ref() else {
            return Ok(());
        };
        if txn.has(shard) {
            return Ok(());
        }
        let mut sql = txn.join_sql();
        let lock_timeout = self.cross_shard_lock_timeout();
        let first = txn.first();
        let alone = txn.participants.len() == 1;
        let bound = lock_timeout.as_ref().filter(|_| first.is_some());
        if let Some(timeout) = bound {
            sql.push_str(";SET LOCAL lock_timeout = ");
            sql.push_str(timeout);
        }
        self.owe_setup(shard, &sql).await?;
        if let Some(conn) = self.held.get_mut(&shard) {
            conn.proxy_lock_timeout = bound.is_some();
        }
        if let (Some(timeout), Some(first), true) = (bound, first, alone) {
            // The first participant ran alone so far: it gets the bound now.
            if let Some(conn) = self.held.get_mut(&first) {
                let set = format!("SET LOCAL lock_timeout = {timeout}");
                if conn.defer(&set) {
                    conn.proxy_lock_timeout = true;
                } else {
                    match conn.run_silently(&set).await {
                        Ok(()) => conn.proxy_lock_timeout = true,
                        Err(e) => {
                            tracing::debug!(shard = first, error = %e, "could not bound lock waits")
                        }
                    }
                }
            }
        }
        if let Some(txn) = self.state.txn.as_mut() {
            txn.participants.push(shard);
        }
        Ok(())
    }

    /// Has `sql` run on a joining `shard`'s held connection before its next statement: deferred
    /// into that statement's write when nothing is in flight there, else run now.
    async fn owe_setup(&mut self, shard: u32, sql: &str) -> Result<(), ErrorFields> {
        let Some(conn) = self.held.get_mut(&shard) else {
            return Err(ErrorFields::error("XX000", "server connection vanished"));
        };
        if conn.defer(sql) {
            return Ok(());
        }
        if let Err(e) = conn.run_silently(sql).await {
            let fields = backend_error_fields(&e);
            if let Some(conn) = self.held.remove(&shard) {
                if conn.status != TxStatus::Idle || !conn.synced {
                    ShardPools::discard(conn);
                }
            }
            return Err(fields);
        }
        Ok(())
    }

    /// The `lock_timeout` for blocks that span shards, unless the client chose its own.
    fn cross_shard_lock_timeout(&self) -> Option<String> {
        let ms = self.proxy.config.transactions.cross_shard_lock_timeout_ms;
        if ms == 0 || self.state.settings.contains_key("lock_timeout") {
            return None;
        }
        Some(format!("'{ms}ms'"))
    }

    /// Follows savepoints and SET LOCAL that ran successfully inside the block, so shards that
    /// join later replay them.
    pub fn note_block_statement(&mut self, sql: &str, facts: &StatementFacts) {
        let Some(txn) = self.state.txn.as_mut() else {
            return;
        };
        match facts.kind {
            StatementKind::Savepoint => {
                if let Some(op) = savepoint_op(sql) {
                    if matches!(op, crate::txn::statement::SavepointOp::RollbackTo(_)) {
                        txn.refused = false;
                    }
                    txn.record_savepoint(&op);
                    let before = txn.savepoint_settings(&op, &self.state.settings);
                    self.notify.pending.savepoint(&op);
                    self.state.cursors.savepoint(&op);
                    if let Some(before) = before {
                        // The servers undid the SETs made since: a connection that ran one
                        // still lists it as applied, so the next statement sets the setting
                        // back there (to what the server holds again).
                        self.state.settings = before;
                    }
                }
            }
            StatementKind::SetLocal => txn.record_setting(sql),
            _ => {}
        }
    }

    /// Before a ROLLBACK TO SAVEPOINT runs on the shards of a block: a statement the proxy
    /// refused aborted the block only in the proxy's books, and rolling back to a savepoint
    /// undoes that as it undoes a shard's error. The mark goes first, so that the shards' answers
    /// alone say how the block stands afterwards (one that fails it leaves the block aborted).
    /// Without this a block over several shards stayed aborted after a successful ROLLBACK TO,
    /// and its answer was withheld.
    pub fn before_rollback_to(&mut self, sql: &str, facts: Option<&StatementFacts>) {
        let rolls_back_to = facts.is_some_and(|f| {
            crate::planner::control_statement(sql, f)
                == crate::txn::control::ControlStatement::RollbackTo
        });
        if let (true, Some(txn)) = (rolls_back_to, self.state.txn.as_mut()) {
            txn.refused = false;
        }
    }

    /// Shards whose connections must stay held: every participant of the open block.
    pub fn block_shards(&self) -> Vec<u32> {
        self.state
            .txn
            .as_ref()
            .map(|t| t.participants.clone())
            .unwrap_or_default()
    }
}
