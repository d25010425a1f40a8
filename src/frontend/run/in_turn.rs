//! A simple Query of several statements that cannot run as one string on one shard: its
//! statements run in turn, as Postgres runs a query string. They form one transaction: the
//! client's block when one is open (or a BEGIN in the string opens it), otherwise an implicit
//! block the proxy opens and commits after the last statement (two-phase when several shards
//! joined). The first error skips the rest of the string and rolls the implicit block back
//! everywhere; a client block is left aborted, as in Postgres. One ReadyForQuery ends it all.

use std::future::Future;
use std::pin::Pin;

use crate::frontend::session::{End, Session};
use crate::refusal::Refusal;
use crate::router::StatementKind;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frontend as fe;

/// What became of the statements of the string.
enum Ran {
    /// All of them ran.
    Done,
    /// One failed (the client has its error); the rest were skipped.
    Failed,
}

impl Session {
    /// Runs the statements of `sql` one after another (see the module doc). `count`: how many
    /// statements the router found in it. Boxed with its `Send` stated: each statement goes
    /// through `simple_query` again, which is what called this.
    pub fn run_in_turn<'a>(
        &'a mut self,
        sql: &'a str,
        count: usize,
    ) -> Pin<Box<dyn Future<Output = Result<(), End>> + Send + 'a>> {
        Box::pin(self.in_turn(sql, count))
    }

    async fn in_turn(&mut self, sql: &str, count: usize) -> Result<(), End> {
        let texts: Vec<String> = match pg_query::split_with_parser(sql) {
            Ok(texts) if texts.len() == count => texts.into_iter().map(str::to_string).collect(),
            _ => {
                self.reply_error(Refusal::unsupported(
                    "these statements reach several shards and pgshard could not split the query string into its statements: send them one at a time",
                ));
                return Ok(());
            }
        };
        let hold = std::mem::replace(&mut self.io.hold_ready, true);
        let ran = self.each_statement(&texts).await;
        self.io.hold_ready = hold;
        let ran = ran?;
        let own = self.state.txn.as_ref().is_some_and(|t| t.implicit);
        if own {
            let commit = matches!(ran, Ran::Done);
            match self.end_block(commit).await {
                Ok(crate::frontend::txn_control::BlockEnd::RolledBack) if commit => {
                    self.io.push_error(&ErrorFields::error(
                        "40000",
                        "a statement failed on a shard, so nothing was committed",
                    ));
                }
                Ok(_) => {}
                Err(fields) if commit => self.io.push_error(&fields),
                Err(_) => {}
            }
        }
        let status = self.status();
        self.io.push(&be::ready_for_query(status));
        Ok(())
    }

    /// Runs each statement as a Query of its own, inside the string's transaction, until one
    /// fails.
    async fn each_statement(&mut self, texts: &[String]) -> Result<Ran, End> {
        for text in texts {
            let kind = {
                let (facts, _) = self
                    .proxy
                    .router
                    .analyze_simple_in(text, &self.search_path());
                facts.first().map(|f| f.kind.clone())
            };
            let implicit_open = self.state.txn.as_ref().is_some_and(|t| t.implicit);
            match kind {
                // A BEGIN inside the string's implicit transaction makes it the client's block.
                Some(StatementKind::Begin) if implicit_open => {
                    if let Some(txn) = self.state.txn.as_mut() {
                        txn.implicit = false;
                    }
                    self.io.push(&be::command_complete("BEGIN"));
                    continue;
                }
                Some(StatementKind::Begin | StatementKind::Commit | StatementKind::Rollback) => {}
                _ if self.state.txn.is_none() => {
                    self.state.open_block("BEGIN");
                    if let Some(txn) = self.state.txn.as_mut() {
                        txn.implicit = true;
                    }
                }
                _ => {}
            }
            let errors = self.io.errors();
            self.simple_query(fe::query(text).body).await?;
            if self.io.errors() > errors {
                return Ok(Ran::Failed);
            }
        }
        Ok(Ran::Done)
    }
}
