//! The session's side of a split multi-row INSERT (see `exec::split_insert`): the block, the
//! per-shard INSERTs on this session's connections, the one answer the client gets.

use crate::exec::exchange::{Expect, Step};
use crate::exec::split_insert::{assemble, SplitReply};
use crate::frontend::session::{refusal, End, Session};
use crate::router::split_insert::{split, ShardInsert, ShardRows};
use crate::wire::backend::{self as be};
use crate::wire::frontend as fe;
use std::collections::HashMap;

impl Session {
    /// Runs the simple-protocol INSERT `sql` split by `plan`, atomically, and answers the client
    /// (ReadyForQuery included).
    pub async fn run_split_insert(&mut self, sql: &str, plan: &[ShardRows]) -> Result<(), End> {
        let numbered = match self.number_split_rows(sql, plan).await {
            Ok(n) => n,
            Err(fields) => {
                self.reply_error(fields);
                return Ok(());
            }
        };
        let parts = match split(numbered.as_deref().unwrap_or(sql), plan) {
            Ok(p) => p,
            Err(e) => {
                self.reply_error(refusal(e.to_string()));
                return Ok(());
            }
        };
        self.run_split_queries(&parts).await
    }

    /// Runs each part's text as a simple query on its shard, as one atomic INSERT.
    pub async fn run_split_queries(&mut self, parts: &[ShardInsert]) -> Result<(), End> {
        let texts: HashMap<u32, Vec<Step>> = parts
            .iter()
            .map(|p| {
                let step = Step::Send {
                    frame: fe::query(&p.sql),
                    expect: Expect::Query,
                    forward: true,
                };
                (p.shard, vec![step])
            })
            .collect();
        let reply = SplitReply {
            head: Vec::new(),
            describe: false,
        };
        self.run_split_parts(parts, texts, reply).await
    }

    /// Runs each part's `steps` on its shard in parallel inside one block (two-phase commit
    /// when the block is the proxy's own), and answers the client as one INSERT: `reply.head`,
    /// the RETURNING rows in the client's row order, `INSERT 0 <total>`, ReadyForQuery.
    pub async fn run_split_parts(
        &mut self,
        parts: &[ShardInsert],
        steps: HashMap<u32, Vec<Step>>,
        reply: SplitReply,
    ) -> Result<(), End> {
        let _timed = crate::telemetry::QueryTimer::start(crate::telemetry::RouteKind::SplitInsert);
        let shards: Vec<u32> = parts.iter().map(|p| p.shard).collect();
        let block = match self.open_write_block(&shards).await {
            Ok(b) => b,
            Err(fields) => {
                self.reply_error(fields);
                return Ok(());
            }
        };
        let answers = self
            .run_collected(&shards, |conn| {
                steps.get(&conn.shard).cloned().unwrap_or_default()
            })
            .await;
        match assemble(parts, &answers) {
            Ok(done) => match self.close_write_block(block, true).await? {
                Some(fields) => self.reply_error(fields),
                None => {
                    for frame in &reply.head {
                        self.io.push(frame);
                    }
                    let described = done.frames.iter().any(|f| f.tag == be::ROW_DESCRIPTION);
                    if reply.describe && !described {
                        self.io.push(&be::no_data());
                    }
                    for frame in &done.frames {
                        self.io.push(frame);
                    }
                    self.io.push(&be::command_complete(&format!(
                        "INSERT 0 {}",
                        done.inserted
                    )));
                    let status = self.status();
                    self.io.push(&be::ready_for_query(status));
                }
            },
            Err(fields) => {
                self.close_write_block(block, false).await?;
                self.reply_error(fields);
            }
        }
        self.release_idle();
        Ok(())
    }
}
