//! Running a statement that must change every shard alike (DDL and maintenance of sharded and
//! reference tables, writes to reference tables): all shards run it in parallel inside one block,
//! their command tags must agree, and the client gets the first shard's answer once — not one
//! notice or row count per shard.
//!
//! Statements Postgres refuses inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, …)
//! run on each shard on their own; when some shards fail, the error says which ones applied it.

use crate::backend::ServerConn;
use crate::exec::collect::Collected;
use crate::exec::exchange::Step;
use crate::frontend::session::{End, Session};
use crate::router::{StatementFacts, StatementKind};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;

/// What the shards' answers add up to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every shard succeeded with the same tags: the lead shard's frames, ReadyForQuery removed.
    Agreed(Vec<Frame>),
    /// A shard failed or the shards disagree: the error for the client.
    Failed(ErrorFields),
}

/// Judges the answers of a statement run on every shard. `outside_block` lists, on failure,
/// which shards applied the statement anyway (nothing rolls them back).
pub fn judge(answers: &[Collected], outside_block: bool) -> Verdict {
    let failed: Vec<(u32, ErrorFields)> = answers
        .iter()
        .filter_map(|a| a.error().map(|e| (a.shard, e)))
        .collect();
    if let Some((_, first)) = failed.first() {
        let mut fields = first.clone();
        if outside_block {
            let applied: Vec<String> = answers
                .iter()
                .filter(|a| a.error().is_none())
                .map(|a| a.shard.to_string())
                .collect();
            let failed_list: Vec<String> = failed.iter().map(|(s, _)| s.to_string()).collect();
            let applied = if applied.is_empty() {
                "no shard".to_string()
            } else {
                format!("shards {}", applied.join(", "))
            };
            fields.detail = Some(format!(
                "The statement runs outside a transaction block on every shard: applied on {applied}; failed on shards {}.",
                failed_list.join(", ")
            ));
        }
        return Verdict::Failed(fields);
    }
    let tags = |a: &Collected| {
        a.outcome
            .as_ref()
            .map(|o| o.tags.clone())
            .unwrap_or_default()
    };
    let Some(lead) = answers.first() else {
        return Verdict::Failed(ErrorFields::error("XX000", "no shard ran the statement"));
    };
    let lead_tags = tags(lead);
    if let Some(other) = answers.iter().find(|a| tags(a) != lead_tags) {
        return Verdict::Failed(ErrorFields::error(
            "XX000",
            format!(
                "shards disagree on a statement that must change every shard alike: shard {} reported {:?}, shard {} reported {:?}; the copies of a reference table differ",
                lead.shard,
                lead_tags,
                other.shard,
                tags(other)
            ),
        ));
    }
    Verdict::Agreed(
        lead.frames
            .iter()
            .filter(|f| f.tag != be::READY_FOR_QUERY)
            .cloned()
            .collect(),
    )
}

impl Session {
    /// Runs `steps` on every shard of `shards` (sorted, first = the one whose answer the client
    /// gets) and answers the client, ReadyForQuery included when the steps end the request.
    pub async fn run_broadcast(
        &mut self,
        shards: Vec<u32>,
        facts: &[StatementFacts],
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Result<(), End> {
        // DDL may change the collation of a column merges compare: have them read it again
        // (DDL in a transaction block commits later; the cache's refresh interval covers that).
        let ddl = facts.iter().any(|f| f.kind == StatementKind::Ddl);
        if facts.iter().any(|f| f.no_transaction_block) {
            let r = self.run_broadcast_outside_block(shards, steps).await;
            if ddl {
                super::collation::forget();
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
        let answers = self.run_collected(&shards, steps).await;
        match judge(&answers, false) {
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
            super::collation::forget();
        }
        self.release_idle();
        Ok(())
    }

    async fn run_broadcast_outside_block(
        &mut self,
        shards: Vec<u32>,
        steps: impl Fn(&ServerConn) -> Vec<Step>,
    ) -> Result<(), End> {
        if self.txn.is_some() || self.open_batch_shard.is_some() {
            // Postgres itself reports that the statement cannot run inside a transaction block,
            // from the shard the block runs on.
            let shard = self
                .block_shards()
                .first()
                .copied()
                .or(self.open_batch_shard)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::exchange::Outcome;

    fn ok(shard: u32, tag: &str, notice: bool) -> Collected {
        let mut frames = Vec::new();
        if notice {
            frames.push(
                ErrorFields {
                    severity: "NOTICE".into(),
                    ..ErrorFields::error("00000", "table \"t\" does not exist, skipping")
                }
                .to_notice(),
            );
        }
        frames.push(be::command_complete(tag));
        frames.push(be::ready_for_query(be::TxStatus::InTransaction));
        Collected {
            shard,
            frames,
            outcome: Ok(Outcome {
                tags: vec![tag.to_string()],
                ..Outcome::default()
            }),
        }
    }

    fn failed(shard: u32) -> Collected {
        Collected {
            shard,
            frames: Vec::new(),
            outcome: Ok(Outcome {
                error: Some(ErrorFields::error("42P07", "relation \"i\" already exists")),
                ..Outcome::default()
            }),
        }
    }

    #[test]
    fn agreeing_shards_give_one_answer() {
        let answers = [ok(1, "DROP TABLE", true), ok(2, "DROP TABLE", true)];
        let Verdict::Agreed(frames) = judge(&answers, false) else {
            panic!()
        };
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].tag, be::NOTICE_RESPONSE);
        assert_eq!(frames[1], be::command_complete("DROP TABLE"));
    }

    #[test]
    fn disagreeing_counts_fail() {
        let answers = [ok(1, "UPDATE 2", false), ok(2, "UPDATE 3", false)];
        let Verdict::Failed(e) = judge(&answers, false) else {
            panic!()
        };
        assert!(e.message.contains("shards disagree"), "{}", e.message);
    }

    #[test]
    fn failures_outside_a_block_name_the_shards() {
        let answers = [ok(1, "CREATE INDEX", false), failed(2), failed(3)];
        let Verdict::Failed(e) = judge(&answers, true) else {
            panic!()
        };
        assert_eq!(e.code, "42P07");
        assert_eq!(
            e.detail.as_deref(),
            Some("The statement runs outside a transaction block on every shard: applied on shards 1; failed on shards 2, 3.")
        );
        let Verdict::Failed(e) = judge(&answers, false) else {
            panic!()
        };
        assert_eq!(e.detail, None);
    }
}
