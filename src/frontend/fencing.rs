//! Requests reaching shards a rebalancing job fences (they may hold moving rows they do not own):
//! simple-protocol statements get ownership conditions per shard (`router::fence`); what cannot
//! be fenced exactly — extended-protocol statements, keyless COPY, DDL on sharded tables — is
//! refused with 0A000 naming the job, never answered with rows counted twice.

use std::collections::HashMap;

use super::session::{refusal, Session, Target};
use crate::router::facts::KeyFacts;
use crate::router::fence::Fence;
use crate::router::{StatementFacts, StatementKind};
use crate::wire::backend::ErrorFields;

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
        let (shards, job) = fenced_shards(self, facts, target);
        if shards.is_empty() {
            return Ok(None);
        }
        if let Some(fields) = unfenceable(facts, job) {
            return Err(fields);
        }
        let map = self.proxy.map.current();
        let tables = &self.proxy.config.sharded_tables;
        let mut texts = HashMap::with_capacity(shards.len());
        for shard in shards {
            let fenced = Fence {
                tables,
                map: &map,
                shard,
            }
            .apply(sql)
            .map_err(|why| {
                refusal(format!(
                    "rebalancing job {job} is moving rows of sharded tables, and this statement cannot be restricted to the rows each shard owns: {why}; name the shard key, or retry when the job has finished"
                ))
            })?;
            texts.insert(shard, fenced);
        }
        Ok(Some(texts))
    }

    /// The refusal for an extended-protocol request that would need a fence (its statement text
    /// is prepared once for every shard, so it cannot differ per shard).
    pub fn fence_refusal(&self, facts: &[StatementFacts], target: &Target) -> Option<ErrorFields> {
        let (shards, job) = fenced_shards(self, facts, target);
        if shards.is_empty() {
            return None;
        }
        Some(unfenceable(facts, job).unwrap_or_else(|| {
            refusal(format!(
                "rebalancing job {job} is moving rows of sharded tables: a prepared statement without its shard key cannot be restricted to the rows each shard owns; send it as a simple query, name the shard key, or retry when the job has finished"
            ))
        }))
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
