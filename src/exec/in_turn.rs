//! A scatter whose shards are asked one after another, each for the rows still wanted (the
//! plan's `fill_in_turn`: a locking read with a LIMIT and no ORDER BY, see
//! `router::analyze::lock_limit`). Each shard's Execute carries the rows still wanted as its
//! row limit, so its executor stops pulling — and locking — rows there; a shard is not asked
//! once enough rows came. A simple Query is sent as the Parse, Bind, Describe, Execute and
//! Sync it means, whose ParseComplete and BindComplete stay in the proxy. The rows then go
//! through the usual merge (OFFSET, LIMIT) as if the shards had answered at once.

use tokio::sync::mpsc;

use super::collation::{self, ShardText};
use super::exchange::{self, Expect, FrameSink, SinkError, Step};
use super::merged::{self, BoundMerge};
use super::readers::AbortOnDrop;
use super::scatter::ScatterResult;
use crate::backend::{PooledConn, ServerConn, ShardPools};
use crate::refusal::backend_error_fields;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Bind, Execute, Parse, Target};

/// `steps` asking for at most `max_rows` rows: its one Execute limited (a client's own smaller
/// limit kept), or its one simple Query sent as an extended batch with that limit. `None` when
/// the steps hold no single statement execution this can limit.
pub fn limited(steps: &[Step], max_rows: i32) -> Option<Vec<Step>> {
    let runs: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            matches!(s, Step::Send { frame, .. } if frame.tag == fe::EXECUTE || frame.tag == fe::QUERY)
        })
        .map(|(i, _)| i)
        .collect();
    let [at] = runs.as_slice() else {
        return None;
    };
    let Step::Send {
        frame,
        expect,
        forward,
    } = &steps[*at]
    else {
        return None;
    };
    let mut out: Vec<Step> = steps[..*at].to_vec();
    match (frame.tag, expect) {
        (fe::EXECUTE, Expect::Execute) => {
            let execute = Execute::decode(&frame.body).ok()?;
            let max_rows = match execute.max_rows {
                0 => max_rows,
                own => own.min(max_rows),
            };
            out.push(Step::Send {
                frame: Execute {
                    portal: execute.portal,
                    max_rows,
                }
                .encode(),
                expect: Expect::Execute,
                forward: *forward,
            });
        }
        (fe::QUERY, Expect::Query) if *forward => {
            let sql = fe::decode_query(&frame.body).ok()?;
            let quiet = |frame: Frame, expect: Expect| Step::Send {
                frame,
                expect,
                forward: false,
            };
            out.push(quiet(
                Parse {
                    name: String::new(),
                    query: sql.to_string(),
                    param_types: Vec::new(),
                }
                .encode(),
                Expect::Parse { register: None },
            ));
            out.push(quiet(
                Bind {
                    portal: String::new(),
                    statement: String::new(),
                    param_formats: Vec::new(),
                    params: Vec::new(),
                    result_formats: Vec::new(),
                }
                .encode(),
                Expect::Bind,
            ));
            out.push(Step::forwarded(
                Target {
                    kind: b'P',
                    name: String::new(),
                }
                .encode(fe::DESCRIBE),
                Expect::DescribePortal,
            ));
            out.push(Step::forwarded(
                Execute {
                    portal: String::new(),
                    max_rows,
                }
                .encode(),
                Expect::Execute,
            ));
            out.push(Step::forwarded(fe::sync(), Expect::Sync));
        }
        _ => return None,
    }
    out.extend_from_slice(&steps[at + 1..]);
    Some(out)
}

/// Keeps one shard's answer for the merge, counting its rows; a PortalSuspended (the row
/// limit reached) becomes the CommandComplete the merge expects.
#[derive(Default)]
pub(super) struct Kept {
    pub(super) frames: Vec<Frame>,
    rows: u64,
}

impl FrameSink for Kept {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        match frame.tag {
            be::DATA_ROW => self.rows += 1,
            be::PORTAL_SUSPENDED => {
                self.frames
                    .push(be::command_complete(&format!("SELECT {}", self.rows)));
                return Ok(());
            }
            _ => {}
        }
        self.frames.push(frame);
        Ok(())
    }

    async fn copy_in(&mut self, _conn: &mut ServerConn) -> Result<(), SinkError> {
        Err(SinkError::Refused(
            "COPY FROM STDIN cannot run in a read of several shards".into(),
        ))
    }
}

/// One shard's turn, run in a task the caller aborts should it stop waiting (its connection
/// is then closed, not pooled mid-exchange).
type Turn = (PooledConn, Result<(ShardText, Kept), SinkError>);

async fn turn(mut conn: PooledConn, steps: Vec<Step>) -> Turn {
    let text = match collation::of(&mut conn).await {
        Ok(t) => t,
        Err(e) => return (conn, Err(SinkError::from(e))),
    };
    let mut kept = Kept::default();
    let result = exchange::run(&mut conn, steps, &mut kept).await;
    (conn, result.map(|_| (text, kept)))
}

/// Runs `work` shard after shard until `wanted` rows came (see the module doc), then merges
/// what they answered into `client`. Each `work` item's steps must pass [`limited`].
pub async fn run(
    work: Vec<(PooledConn, Vec<Step>)>,
    client: &mut impl FrameSink,
    plan: BoundMerge,
    wanted: u64,
) -> ScatterResult {
    let mut conns = Vec::with_capacity(work.len());
    let mut answers = Vec::with_capacity(work.len());
    let mut texts = Vec::with_capacity(work.len());
    let mut failure = None;
    let mut client_gone = false;
    let mut remaining = wanted;
    let mut readers = AbortOnDrop::default();
    for (conn, steps) in work {
        let ask = i32::try_from(remaining).unwrap_or(i32::MAX);
        let steps = match limited(&steps, ask) {
            Some(s) if failure.is_none() && (remaining > 0 || answers.is_empty()) => s,
            _ => {
                conns.push(conn);
                continue;
            }
        };
        let task = tokio::spawn(turn(conn, steps));
        readers.watch(&task);
        match task.await {
            Ok((conn, Ok((text, kept)))) => {
                conns.push(conn);
                remaining = remaining.saturating_sub(kept.rows);
                let errored = kept.frames.iter().any(|f| f.tag == be::ERROR_RESPONSE);
                texts.push(text);
                answers.push(kept.frames);
                if errored {
                    // The shard's error reaches the client through the merge; no shard after.
                    remaining = 0;
                }
            }
            Ok((conn, Err(e))) => {
                ShardPools::discard(conn);
                match e {
                    SinkError::ClientGone => client_gone = true,
                    SinkError::Refused(message) => {
                        failure = Some(ErrorFields::error("0A000", message));
                    }
                    SinkError::Backend(b) => failure = Some(backend_error_fields(&b)),
                }
                remaining = 0;
            }
            Err(join) => {
                failure = Some(ErrorFields::error(
                    "XX000",
                    format!("a shard reader failed: {join}"),
                ));
                remaining = 0;
            }
        }
    }
    if failure.is_some() || client_gone {
        return ScatterResult {
            conns,
            failure,
            client_gone,
            complete: None,
            ready: None,
        };
    }
    let receivers = answers
        .into_iter()
        .map(|frames| {
            let (tx, rx) = mpsc::channel(frames.len().max(1));
            for f in frames {
                // The channel holds them all: it was made as deep as their count.
                let _ = tx.try_send(f);
            }
            rx
        })
        .collect();
    let outcome = merged::run(receivers, &plan, &texts, client).await;
    let failure = outcome.failure.or_else(|| {
        outcome.pending.is_some().then(|| {
            ErrorFields::error(
                "0A000",
                "expressions over aggregates in a locking read of several shards",
            )
        })
    });
    ScatterResult {
        conns,
        complete: outcome.complete.filter(|_| failure.is_none()),
        ready: outcome.ready.filter(|_| failure.is_none()),
        failure,
        client_gone: outcome.client_gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(steps: &[Step]) -> Vec<(u8, bool)> {
        steps
            .iter()
            .map(|s| match s {
                Step::Send { frame, forward, .. } => (frame.tag, *forward),
                Step::Synthetic(f) => (f.tag, true),
            })
            .collect()
    }

    fn execute_of(steps: &[Step]) -> Execute {
        steps
            .iter()
            .find_map(|s| match s {
                Step::Send { frame, .. } if frame.tag == fe::EXECUTE => {
                    Execute::decode(&frame.body).ok()
                }
                _ => None,
            })
            .expect("an Execute")
    }

    #[test]
    fn an_execute_asks_for_the_rows_still_wanted() {
        let bind = Step::forwarded(
            Bind {
                portal: "p".into(),
                statement: "s".into(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            }
            .encode(),
            Expect::Bind,
        );
        let exec = |max_rows| {
            Step::forwarded(
                Execute {
                    portal: "p".into(),
                    max_rows,
                }
                .encode(),
                Expect::Execute,
            )
        };
        let sync = Step::forwarded(fe::sync(), Expect::Sync);
        // (the client's row limit, rows still wanted, the limit sent)
        for (own, wanted, sent) in [(0, 5, 5), (0, 1, 1), (3, 5, 3), (9, 5, 5)] {
            let steps = vec![bind.clone(), exec(own), sync.clone()];
            let out = limited(&steps, wanted).expect("limited");
            assert_eq!(tags(&out), tags(&steps));
            let e = execute_of(&out);
            assert_eq!(
                (e.portal.as_str(), e.max_rows),
                ("p", sent),
                "{own} {wanted}"
            );
        }
        // Two executions (a pipeline) are not limited.
        assert!(limited(&[exec(0), exec(0), sync.clone()], 5).is_none());
        assert!(limited(std::slice::from_ref(&sync), 5).is_none());
    }

    #[test]
    fn a_simple_query_becomes_an_extended_batch_with_a_row_limit() {
        let sql = "SELECT id FROM jobs LIMIT 5 FOR UPDATE SKIP LOCKED";
        let steps = vec![Step::Send {
            frame: fe::query(sql),
            expect: Expect::Query,
            forward: true,
        }];
        let out = limited(&steps, 2).expect("limited");
        assert_eq!(
            tags(&out),
            [
                (fe::PARSE, false),
                (fe::BIND, false),
                (fe::DESCRIBE, true),
                (fe::EXECUTE, true),
                (fe::SYNC, true)
            ]
        );
        let Step::Send { frame, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(Parse::decode(&frame.body).unwrap().query, sql);
        assert_eq!(execute_of(&out).max_rows, 2);
    }
}
