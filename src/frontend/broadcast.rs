//! Statements that must reach every shard but that Postgres refuses inside a transaction block
//! (CREATE INDEX CONCURRENTLY, VACUUM, …): no two-phase commit can make them atomic, so they run
//! on each shard on its own, and when some shards fail the client learns exactly which shards
//! applied the statement and which did not.

use super::exchange::{self, Expect, FrameSink, SinkError, Step};
use super::session::{backend_error_fields, End, Session};
use crate::backend::{ServerConn, ShardPools};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;

/// Keeps a shard's answers instead of forwarding them.
#[derive(Default)]
struct Collect(Vec<Frame>);

impl FrameSink for Collect {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        self.0.push(frame);
        Ok(())
    }

    async fn copy_in(&mut self, _conn: &mut ServerConn) -> Result<(), SinkError> {
        Err(SinkError::Refused(
            "COPY cannot be sent to every shard outside a transaction".into(),
        ))
    }
}

/// What one shard did with the statement.
enum ShardResult {
    Applied { notices: Vec<Frame>, tag: Frame },
    Failed(ErrorFields),
}

/// The client's error when some shards failed: the first failure, with which shards applied it.
pub fn partial_failure(first: &ErrorFields, applied: &[u32], failed: &[u32]) -> ErrorFields {
    let list = |v: &[u32]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    let mut fields = first.clone();
    fields.detail = Some(format!(
        "This statement cannot run inside a transaction, so each shard ran it on its own. Applied on shards: {}. Failed on shards: {}.",
        list(applied),
        list(failed)
    ));
    fields.hint = Some(
        "fix the cause and run it again on the shards that failed; an index a failed CREATE INDEX CONCURRENTLY left INVALID must be dropped first".into(),
    );
    fields
}

impl Session {
    /// Runs `query` (a simple-protocol Query frame) on every shard in `shards`, one shard at a
    /// time, each outside any transaction block, and answers the client.
    pub async fn run_on_each_shard(&mut self, shards: Vec<u32>, query: Frame) -> Result<(), End> {
        if self.txn.is_some() {
            self.reply_error(ErrorFields::error(
                "25001",
                "this statement cannot run inside a transaction block",
            ));
            return Ok(());
        }
        let mut results = Vec::with_capacity(shards.len());
        for &shard in &shards {
            results.push((shard, self.run_alone(shard, &query).await));
        }
        self.release_idle();
        let applied: Vec<u32> = results
            .iter()
            .filter(|(_, r)| matches!(r, ShardResult::Applied { .. }))
            .map(|(s, _)| *s)
            .collect();
        let failed: Vec<u32> = results
            .iter()
            .filter(|(_, r)| matches!(r, ShardResult::Failed(_)))
            .map(|(s, _)| *s)
            .collect();
        let first_error = results.iter().find_map(|(_, r)| match r {
            ShardResult::Failed(f) => Some(f.clone()),
            ShardResult::Applied { .. } => None,
        });
        if let Some(first) = first_error {
            let fields = if applied.is_empty() {
                first
            } else {
                partial_failure(&first, &applied, &failed)
            };
            self.reply_error(fields);
            return Ok(());
        }
        let mut tag = None;
        for (_, result) in results {
            if let ShardResult::Applied { notices, tag: t } = result {
                for n in notices {
                    self.io.push(&n);
                }
                tag.get_or_insert(t);
            }
        }
        if let Some(tag) = tag {
            self.io.push(&tag);
        }
        let status = self.status();
        self.io.push(&be::ready_for_query(status));
        Ok(())
    }

    async fn run_alone(&mut self, shard: u32, query: &Frame) -> ShardResult {
        if let Err(fields) = self.ensure_conn(shard, false).await {
            return ShardResult::Failed(fields);
        }
        let Some(conn) = self.held.get_mut(&shard) else {
            return ShardResult::Failed(ErrorFields::error("XX000", "server connection vanished"));
        };
        let steps = vec![Step::Send {
            frame: query.clone(),
            expect: Expect::Query,
            forward: true,
        }];
        let mut sink = Collect::default();
        match exchange::run(conn, steps, &mut sink).await {
            Ok(outcome) => {
                if let Some(error) = outcome.error {
                    return ShardResult::Failed(error);
                }
                let mut notices = Vec::new();
                let mut tag = None;
                for frame in sink.0 {
                    match frame.tag {
                        be::NOTICE_RESPONSE => notices.push(frame),
                        be::COMMAND_COMPLETE => tag = Some(frame),
                        _ => {}
                    }
                }
                ShardResult::Applied {
                    notices,
                    tag: tag.unwrap_or_else(|| be::command_complete("")),
                }
            }
            Err(e) => {
                if let Some(conn) = self.held.remove(&shard) {
                    ShardPools::discard(conn);
                }
                match e {
                    SinkError::Backend(b) => ShardResult::Failed(backend_error_fields(&b)),
                    SinkError::Refused(m) => ShardResult::Failed(ErrorFields::error("0A000", m)),
                    SinkError::ClientGone => {
                        ShardResult::Failed(ErrorFields::error("08006", "client connection lost"))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_failures_name_the_shards_on_each_side() {
        let first = ErrorFields::error("53100", "could not extend file");
        let f = partial_failure(&first, &[0, 2], &[1]);
        assert_eq!(f.code, "53100");
        assert_eq!(f.message, "could not extend file");
        let detail = f.detail.unwrap();
        assert!(detail.contains("Applied on shards: 0, 2."), "{detail}");
        assert!(detail.contains("Failed on shards: 1."), "{detail}");
        assert_eq!(
            partial_failure(&first, &[], &[0]).detail.unwrap(),
            "This statement cannot run inside a transaction, so each shard ran it on its own. Applied on shards: none. Failed on shards: 0."
        );
    }
}
