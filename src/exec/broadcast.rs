//! Running a statement that must change every shard alike (DDL and maintenance of sharded and
//! reference tables, writes to reference tables): all shards run it in parallel inside one block,
//! their command tags must agree, and the client gets the first shard's answer once — not one
//! notice or row count per shard.
//!
//! Statements Postgres refuses inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, …)
//! run on each shard on their own; when some shards fail, the error says which ones applied it.

use crate::exec::collect::Collected;
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
                tags: smallvec::smallvec![tag.to_string()],
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
