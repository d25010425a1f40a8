//! The transaction block a request that changes several shards runs in: the client's own block
//! when one is open (the shards join it), otherwise an implicit block opened for the request and
//! ended with it (two-phase commit when more than one shard joined).

use crate::frontend::session::{refusal, End, Session};
use crate::wire::backend::ErrorFields;

/// Whose block a request runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Opened for this request; ended by `close_write_block`.
    Own,
    /// The client's transaction block.
    Client,
}

impl Session {
    /// Holds a connection to each of `shards`, all inside one block.
    pub async fn open_write_block(&mut self, shards: &[u32]) -> Result<Block, ErrorFields> {
        if let Some(b) = self.state.open_batch_shard.filter(|b| shards != [*b]) {
            return Err(refusal(format!(
                "an implicit transaction that a Flush left open runs on shard {b}, and this statement changes {} shards: send Sync first, or use BEGIN … COMMIT, which may span shards",
                shards.len()
            )));
        }
        let block = if self.begin_implicit_block() {
            Block::Own
        } else {
            Block::Client
        };
        for &shard in shards {
            if let Err(fields) = self.ensure_conn(shard, true).await {
                if block == Block::Own {
                    // Nothing ran yet: a rollback cannot lose the client anything.
                    let _ = self.finish_implicit_block(false).await;
                }
                return Err(fields);
            }
        }
        Ok(block)
    }

    /// Ends the block of `open_write_block`: commits or rolls back an own block (a client block
    /// is left to the client). Returns the error the client must get when the commit failed.
    pub async fn close_write_block(
        &mut self,
        block: Block,
        commit: bool,
    ) -> Result<Option<ErrorFields>, End> {
        match block {
            Block::Client => Ok(None),
            Block::Own => self.finish_implicit_block(commit).await,
        }
    }
}
