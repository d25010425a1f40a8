//! The session's side of a broadcast (see `exec::broadcast`): the block the shards run in, the
//! connections it checks out, and the one answer the client gets from the shards' verdict.

use crate::backend::ServerConn;
use crate::exec::broadcast::{judge, Verdict};
use crate::exec::collect::Collected;
use crate::exec::exchange::{Expect, Step};
use crate::frontend::session::{End, Session};
use crate::ids::sequence_ranges;
use crate::router::{StatementFacts, StatementKind};
use crate::wire::backend::ErrorFields;
use crate::wire::backend::{self as be};
use crate::wire::frontend as fe;

impl Session {
    /// Runs `steps` on every shard of `shards` (sorted, first = the one whose answer the client
    /// gets) and answers the client, ReadyForQuery included when the steps end the request.
    pub async fn run_broadcast(
        &mut self,
        shards: Vec<u32>,
        facts: &[StatementFacts],
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Result<(), End> {
        // DDL may change the collation of a column merges compare, or which columns a table has
        // (what GROUP BY names mean): have them read again
        // (DDL in a transaction block commits later; the cache's refresh interval covers that).
        let ddl = facts.iter().any(|f| f.kind == StatementKind::Ddl);
        if facts.iter().any(|f| f.no_transaction_block) {
            let r = self.run_broadcast_outside_block(shards, steps).await;
            if ddl {
                crate::exec::collation::forget();
                crate::exec::table_columns::forget();
            }
            return r;
        }
        let block = match self.open_write_block(&shards).await {
            Ok(b) => b,
            Err(fields) => {
                self.reply_error(fields);
                return Ok(());
            }
        };
        let answers = self.run_lead_first(&shards, steps).await;
        let verdict = match judge(&answers, false) {
            Verdict::Agreed(frames) => match self.number_sequences(&shards, facts).await {
                Some(fields) => Verdict::Failed(fields),
                None => Verdict::Agreed(frames),
            },
            failed => failed,
        };
        match verdict {
            Verdict::Agreed(frames) => match self.close_write_block(block, true).await? {
                Some(fields) => self.reply_error(fields),
                None => {
                    for frame in &frames {
                        self.io.push(frame);
                    }
                    let status = self.status();
                    self.io.push(&be::ready_for_query(status));
                }
            },
            Verdict::Failed(fields) => {
                self.close_write_block(block, false).await?;
                self.reply_error(fields);
            }
        }
        if ddl {
            crate::exec::collation::forget();
            crate::exec::table_columns::forget();
        }
        self.release_idle();
        Ok(())
    }

    /// Runs a broadcast inside a block on the lead shard (the first of `shards`) and, once it
    /// succeeded, on the others in parallel. Every writer of a reference table thus takes its row
    /// locks on the lead shard first: two blocks updating one row queue there, as on one
    /// Postgres, instead of each winning the row on some shards and waiting on the others until
    /// the cross-shard lock timeout ends one of them (40P01). When the lead fails, the others do
    /// not run (the block rolls back, or is failed, either way).
    pub async fn run_lead_first(
        &mut self,
        shards: &[u32],
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Vec<Collected> {
        let Some((lead, rest)) = shards.split_first() else {
            return Vec::new();
        };
        let mut answers = self.run_collected(&[*lead], &steps).await;
        if rest.is_empty() || answers.iter().any(|a| a.error().is_some()) {
            return answers;
        }
        answers.extend(self.run_collected(rest, &steps).await);
        answers
    }

    /// Puts the sequences of the sharded tables `facts` create or change into each shard's own
    /// range ([`crate::ids::sequence_ranges`]), on the connections that just ran the DDL and in
    /// its block, so they commit or roll back with it. The first shard's error, if any.
    pub async fn number_sequences(
        &mut self,
        shards: &[u32],
        facts: &[StatementFacts],
    ) -> Option<ErrorFields> {
        let tables: Vec<&str> = facts
            .iter()
            .filter_map(|f| f.numbered_table.as_deref())
            .collect();
        if tables.is_empty() {
            return None;
        }
        let answers = self
            .run_collected(shards, |conn| {
                let sql: Vec<String> = tables
                    .iter()
                    .map(|t| sequence_ranges::align_sql(t, conn.shard))
                    .collect();
                vec![Step::Send {
                    frame: fe::query(&sql.join(";\n")),
                    expect: Expect::Query,
                    forward: false,
                }]
            })
            .await;
        answers.iter().find_map(|a| a.error())
    }

    async fn run_broadcast_outside_block(
        &mut self,
        shards: Vec<u32>,
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Result<(), End> {
        if self.state.txn.is_some() || self.state.open_batch_shard.is_some() {
            // Postgres itself reports that the statement cannot run inside a transaction block,
            // from the shard the block runs on.
            let shard = self
                .block_shards()
                .first()
                .copied()
                .or(self.state.open_batch_shard)
                .or_else(|| shards.first().copied())
                .unwrap_or(self.any_shard);
            self.run_single(shard, true, steps).await?;
            return Ok(());
        }
        for &shard in &shards {
            if let Err(fields) = self.ensure_conn(shard, false).await {
                self.reply_error(fields);
                self.release_idle();
                return Ok(());
            }
        }
        let answers = self.run_collected(&shards, steps).await;
        match judge(&answers, true) {
            Verdict::Agreed(frames) => {
                for frame in &frames {
                    self.io.push(frame);
                }
                let status = self.status();
                self.io.push(&be::ready_for_query(status));
            }
            Verdict::Failed(fields) => self.reply_error(fields),
        }
        self.release_idle();
        Ok(())
    }
}
