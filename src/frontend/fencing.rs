//! Requests reaching shards a rebalancing job fences (they may hold moving rows they do not own):
//! statements get ownership conditions per shard (`router::fence`) — a simple query is rewritten
//! per shard, a prepared statement is prepared in its fenced form on the fenced shards. What cannot
//! be fenced exactly — keyless COPY, DDL on sharded tables, shapes the fence cannot reach — is
//! refused with 0A000 naming the job, never answered with rows counted twice.

use std::collections::HashMap;

use super::session::{refusal, Session, Target};
use crate::router::facts::KeyFacts;
use crate::router::fence::Fence;
use crate::router::{StatementFacts, StatementKind};
use crate::wire::backend::ErrorFields;

/// A statement text → its fenced form on one shard (texts a fence leaves alone are absent).
pub type FencedTexts = HashMap<String, String>;

/// Shards of `target` that need a fence for these statements, with the job fencing them.
fn fenced_shards(session: &Session, facts: &[StatementFacts], target: &Target) -> (Vec<u32>, i64) {
    let Some(fence) = session.proxy.rebalance.fence() else {
        return (Vec::new(), 0);
    };
    if !facts.iter().any(|f| f.sharded) {
        return (Vec::new(), fence.job);
    }
    let shards: &[u32] = match target {
        // One shard reached by its keys owns every row those keys name.
        Target::Single(_)
            if facts
                .iter()
                .filter(|f| f.sharded)
                .all(|f| !matches!(f.key, KeyFacts::Unknown)) =>
        {
            &[]
        }
        Target::Single(s) => std::slice::from_ref(s),
        Target::Scatter(v) | Target::Broadcast(v) => v,
    };
    (
        shards
            .iter()
            .copied()
            .filter(|s| fence.shards.contains(s))
            .collect(),
        fence.job,
    )
}

impl Session {
    /// Per-shard texts of a simple-protocol request whose statements need fencing on some of the
    /// target's shards (None when none does), or the refusal when they cannot be fenced.
    pub fn fence_texts(
        &self,
        sql: &str,
        facts: &[StatementFacts],
        target: &Target,
    ) -> Result<Option<HashMap<u32, String>>, ErrorFields> {
        let Some(per_shard) = self.fence_statement_texts(&[sql], facts, target)? else {
            return Ok(None);
        };
        Ok(Some(
            per_shard
                .into_iter()
                .map(|(shard, mut fenced)| {
                    let text = fenced.remove(sql).unwrap_or_else(|| sql.to_string());
                    (shard, text)
                })
                .collect(),
        ))
    }

    /// For each fenced shard of the target, the fenced text of every one of `texts` that a fence
    /// changes (None when no shard needs a fence), or the refusal when one cannot be fenced.
    /// Extended-protocol statements use it per statement text: a fenced shard prepares the fenced
    /// text under its own server-side name, so one client statement runs exactly on every shard.
    pub fn fence_statement_texts(
        &self,
        texts: &[&str],
        facts: &[StatementFacts],
        target: &Target,
    ) -> Result<Option<HashMap<u32, FencedTexts>>, ErrorFields> {
        let (shards, job) = fenced_shards(self, facts, target);
        if shards.is_empty() {
            return Ok(None);
        }
        if let Some(fields) = unfenceable(facts, job) {
            return Err(fields);
        }
        let map = self.proxy.map.current();
        let tables = &self.proxy.router.tables_in(&self.search_path());
        let mut per_shard = HashMap::with_capacity(shards.len());
        for shard in shards {
            let fence = Fence {
                tables,
                map: &map,
                shard,
            };
            let mut fenced_texts = HashMap::new();
            for text in texts {
                if fenced_texts.contains_key(*text) {
                    continue;
                }
                let fenced = fence.apply(text).map_err(|why| {
                    refusal(format!(
                        "rebalancing job {job} is moving rows of sharded tables, and this statement cannot be restricted to the rows each shard owns: {why}; name the shard key, or retry when the job has finished"
                    ))
                })?;
                if fenced != *text {
                    fenced_texts.insert(text.to_string(), fenced);
                }
            }
            per_shard.insert(shard, fenced_texts);
        }
        Ok(Some(per_shard))
    }
}

/// Statement kinds no fence can make exact.
fn unfenceable(facts: &[StatementFacts], job: i64) -> Option<ErrorFields> {
    facts.iter().filter(|f| f.sharded).find_map(|f| match f.kind {
        StatementKind::Ddl => Some(refusal(format!(
            "DDL on sharded tables is refused while rebalancing job {job} moves their rows (logical replication does not carry DDL); retry when the job has finished, or cancel it with CANCEL JOB {job}"
        ))),
        StatementKind::Copy { .. } => Some(refusal(format!(
            "COPY of a sharded table without its shard key is refused while rebalancing job {job} moves rows; retry when the job has finished"
        ))),
        _ => None,
    })
}
