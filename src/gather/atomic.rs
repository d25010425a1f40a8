//! The transaction block a request that changes several shards runs in: the client's own block
//! when one is open, otherwise an implicit block opened for the request and ended with it.
//!
//! Until the session's two-phase commit lands, an implicit block is a BEGIN on each shard and a
//! COMMIT on each (atomic per shard, not across shards), and a client block may only span the one
//! shard it already runs on. `open_write_block` / `close_write_block` are the only places that
//! change when `Session::begin_implicit_block` / `finish_implicit_block` arrive.

use crate::frontend::session::{backend_error_fields, refusal, End, Session};
use crate::wire::backend::ErrorFields;

/// Whose block a request runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Opened for this request; ended by `close_write_block`.
    Own,
    /// The client's transaction block (or an extended-protocol batch still open).
    Client,
}

impl Session {
    /// Holds a connection to each of `shards`, all inside one block.
    pub async fn open_write_block(&mut self, shards: &[u32]) -> Result<Block, ErrorFields> {
        let client_block = self.txn.is_some() || self.open_batch_shard.is_some();
        if client_block {
            let bound = self
                .txn
                .as_ref()
                .and_then(|t| t.shard)
                .or(self.open_batch_shard);
            let fits = match bound {
                Some(b) => shards == [b],
                None => shards.len() == 1,
            };
            if !fits {
                return Err(refusal(format!(
                    "this statement changes {} shards, and inside a transaction block that needs two-phase commit, which is not supported yet: run it outside the block",
                    shards.len()
                )));
            }
            for &shard in shards {
                self.ensure_conn(shard, true).await?;
            }
            return Ok(Block::Client);
        }
        for &shard in shards {
            self.ensure_conn(shard, false).await?;
            let Some(conn) = self.held.get_mut(&shard) else {
                return Err(ErrorFields::error("XX000", "server connection vanished"));
            };
            if let Err(e) = conn.run_silently("BEGIN").await {
                let fields = backend_error_fields(&e);
                self.rollback_own(shards).await;
                return Err(fields);
            }
        }
        Ok(Block::Own)
    }

    /// Ends the block of `open_write_block`: commits or rolls back an own block (a client block is
    /// left to the client). Returns the error the client must get when the commit failed.
    pub async fn close_write_block(
        &mut self,
        block: Block,
        shards: &[u32],
        commit: bool,
    ) -> Result<Option<ErrorFields>, End> {
        if block == Block::Client {
            return Ok(None);
        }
        if !commit {
            self.rollback_own(shards).await;
            return Ok(None);
        }
        let mut failure = None;
        for &shard in shards {
            let Some(conn) = self.held.get_mut(&shard) else {
                failure.get_or_insert(ErrorFields::error(
                    "08006",
                    format!("lost the connection to shard {shard} before COMMIT"),
                ));
                continue;
            };
            let sql = if failure.is_none() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            if let Err(e) = conn.run_silently(sql).await {
                failure.get_or_insert(backend_error_fields(&e));
                if let Some(conn) = self.held.remove(&shard) {
                    crate::backend::ShardPools::discard(conn);
                }
            }
        }
        self.release_idle();
        Ok(failure)
    }

    /// Rolls back an own block on every shard still held, dropping connections that fail.
    async fn rollback_own(&mut self, shards: &[u32]) {
        for &shard in shards {
            if let Some(conn) = self.held.get_mut(&shard) {
                if conn.status != crate::wire::backend::TxStatus::Idle
                    && conn.run_silently("ROLLBACK").await.is_err()
                {
                    if let Some(conn) = self.held.remove(&shard) {
                        crate::backend::ShardPools::discard(conn);
                    }
                }
            }
        }
        self.release_idle();
    }
}
