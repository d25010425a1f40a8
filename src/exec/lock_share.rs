//! A locking read with an ORDER BY and a LIMIT over several shards, inside a transaction block
//! (`SELECT … ORDER BY priority LIMIT 1 FOR UPDATE SKIP LOCKED`, a job queue's claim). One
//! Postgres locks the rows it reads up to the LIMIT (OFFSET's too); each shard, given the same
//! statement, would lock up to LIMIT + OFFSET rows of its own while the merge answers with
//! LIMIT of them, and the block would hold locks on rows nobody took until it ends (other
//! workers skip or wait on them). So the statement runs twice, in parallel on every shard:
//!
//! 1. after a savepoint, as written; the merge of the answers (sent nowhere) says how many of
//!    each shard's rows the ordered answer uses (a prefix of that shard's rows);
//! 2. back to the savepoint (which releases the locks step 1 took), then again on each shard
//!    that has a share, its Execute limited to that share; these rows are the answer.
//!
//! A row another worker takes between the two steps is skipped (SKIP LOCKED) or waited for,
//! as on one Postgres; the rows returned are the rows locked. When step 1 fails on a shard,
//! its answers go to the client as they came (the block is failed, as it would be).

use tokio::sync::mpsc;

use super::collation::{self, ShardText};
use super::exchange::{self, Expect, FrameSink, SinkError, Step};
use super::in_turn::{self, Kept};
use super::merged::{self, BoundMerge};
use super::readers::AbortOnDrop;
use super::scatter::ScatterResult;
use crate::backend::{PooledConn, ServerConn, ShardPools};
use crate::refusal::backend_error_fields;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Execute, Parse};

/// The savepoint step 1 runs after; released in step 2.
const SAVEPOINT: &str = "pgshard_lock_share";

/// Whether `steps` can run in two steps: one statement execution (see [`in_turn::limited`])
/// whose Execute asks for every row (a client's own row limit would cut step 1's answer).
pub fn applies(steps: &[Step]) -> bool {
    let own_limit = steps.iter().any(|s| {
        matches!(s, Step::Send { frame, .. } if frame.tag == fe::EXECUTE
            && Execute::decode(&frame.body).map_or(true, |e| e.max_rows != 0))
    });
    !own_limit && in_turn::limited(steps, 1).is_some()
}

/// `steps` for step 2: a named statement step 1 prepared is not prepared again (its
/// ParseComplete, when the client asked for it, is the proxy's own).
fn again(steps: &[Step]) -> Vec<Step> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Send {
                frame,
                expect: Expect::Parse { .. },
                forward,
            } if Parse::decode(&frame.body).is_ok_and(|p| !p.name.is_empty()) => {
                forward.then(|| Step::Synthetic(be::parse_complete()))
            }
            other => Some(other.clone()),
        })
        .collect()
}

/// A simple Query the proxy sends ahead of the statement, its answer kept from the client.
fn control(sql: &str) -> Step {
    Step::Send {
        frame: fe::query(sql),
        expect: Expect::Query,
        forward: false,
    }
}

/// One shard's answer to a step: the control query's answer dropped (its error kept), the
/// statement's frames kept for the merge as a shard's turn keeps them.
#[derive(Default)]
struct Answer {
    control_done: bool,
    control_error: Option<ErrorFields>,
    kept: Kept,
}

impl FrameSink for Answer {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        if self.control_done {
            return self.kept.send(frame).await;
        }
        match frame.tag {
            be::READY_FOR_QUERY => self.control_done = true,
            be::ERROR_RESPONSE if self.control_error.is_none() => {
                self.control_error = Some(
                    ErrorFields::decode(&frame.body)
                        .unwrap_or_else(|_| ErrorFields::error("XX000", "a savepoint failed")),
                );
            }
            _ => {}
        }
        Ok(())
    }

    async fn copy_in(&mut self, conn: &mut ServerConn) -> Result<(), SinkError> {
        self.kept.copy_in(conn).await
    }
}

type Ran = (PooledConn, Result<(Option<ShardText>, Answer), SinkError>);

async fn run_step(mut conn: PooledConn, steps: Vec<Step>, read_collation: bool) -> Ran {
    let text = if read_collation {
        match collation::of(&mut conn).await {
            Ok(t) => Some(t),
            Err(e) => return (conn, Err(SinkError::from(e))),
        }
    } else {
        None
    };
    let mut answer = Answer::default();
    let result = exchange::run(&mut conn, steps, &mut answer).await;
    (conn, result.map(|_| (text, answer)))
}

/// Runs one step on every connection in parallel; answers in `work` order.
async fn run_all(work: Vec<(PooledConn, Vec<Step>)>, read_collation: bool) -> Vec<Ran> {
    let mut readers = AbortOnDrop::default();
    let mut tasks = Vec::with_capacity(work.len());
    let mut shards = Vec::with_capacity(work.len());
    for (conn, steps) in work {
        shards.push(conn.shard);
        let task = tokio::spawn(run_step(conn, steps, read_collation));
        readers.watch(&task);
        tasks.push(task);
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut lost = Vec::new();
    for (task, shard) in tasks.into_iter().zip(shards) {
        match task.await {
            Ok(ran) => out.push(ran),
            Err(join) => lost.push((shard, join.to_string())),
        }
    }
    // A reader that panicked took its connection with it: the caller reports the failure
    // through the first answer it still has.
    if let Some((shard, why)) = lost.into_iter().next() {
        if let Some((_, result)) = out.first_mut() {
            *result = Err(SinkError::Refused(format!(
                "the reader of shard {shard} failed: {why}"
            )));
        }
    }
    out
}

/// Each shard's answer to a step, with the collation read in step 1.
type Answers = Vec<(Option<ShardText>, Answer)>;

/// Splits what a step left: the usable connections, the answers, or the failure to report.
fn settle(ran: Vec<Ran>) -> (Vec<PooledConn>, Result<Answers, Failed>) {
    let mut conns = Vec::with_capacity(ran.len());
    let mut answers = Vec::with_capacity(ran.len());
    let mut failed = None;
    for (conn, result) in ran {
        match result {
            Ok(a) => {
                conns.push(conn);
                answers.push(a);
            }
            Err(e) => {
                ShardPools::discard(conn);
                failed.get_or_insert(match e {
                    SinkError::ClientGone => Failed::ClientGone,
                    SinkError::Refused(m) => Failed::Error(ErrorFields::error("0A000", m)),
                    SinkError::Backend(b) => Failed::Error(backend_error_fields(&b)),
                });
            }
        }
    }
    match failed {
        Some(f) => (conns, Err(f)),
        None => (conns, Ok(answers)),
    }
}

enum Failed {
    ClientGone,
    Error(ErrorFields),
}

fn failed(conns: Vec<PooledConn>, f: Failed) -> ScatterResult {
    let (failure, client_gone) = match f {
        Failed::ClientGone => (None, true),
        Failed::Error(e) => (Some(e), false),
    };
    ScatterResult {
        conns,
        failure,
        client_gone,
        complete: None,
        ready: None,
    }
}

/// Swallows the merge of step 1, which only counts.
struct Nowhere;

impl FrameSink for Nowhere {
    async fn send(&mut self, _frame: Frame) -> Result<(), SinkError> {
        Ok(())
    }

    async fn copy_in(&mut self, _conn: &mut ServerConn) -> Result<(), SinkError> {
        Err(SinkError::Refused("no COPY in a locking read".into()))
    }
}

fn channels(answers: &[Vec<Frame>]) -> Vec<mpsc::Receiver<Frame>> {
    answers
        .iter()
        .map(|frames| {
            let (tx, rx) = mpsc::channel(frames.len().max(1));
            for f in frames {
                // The channel holds them all: it was made as deep as their count.
                let _ = tx.try_send(f.clone());
            }
            rx
        })
        .collect()
}

/// Merges `answers` into `client` as any scatter's.
async fn answer(
    conns: Vec<PooledConn>,
    answers: &[Vec<Frame>],
    texts: &[ShardText],
    plan: &BoundMerge,
    client: &mut impl FrameSink,
) -> ScatterResult {
    let outcome = merged::run(channels(answers), plan, texts, client).await;
    ScatterResult {
        conns,
        complete: outcome.complete.filter(|_| outcome.failure.is_none()),
        ready: outcome.ready.filter(|_| outcome.failure.is_none()),
        failure: outcome.failure,
        client_gone: outcome.client_gone,
    }
}

/// Runs `work` (every shard's steps passed [`applies`]) in the two steps of the module doc and
/// merges the second's answers into `client`. `wanted` is LIMIT + OFFSET.
pub async fn run(
    work: Vec<(PooledConn, Vec<Step>)>,
    client: &mut impl FrameSink,
    plan: BoundMerge,
    wanted: u64,
) -> ScatterResult {
    let ask = i32::try_from(wanted).unwrap_or(i32::MAX);
    let mut statements = Vec::with_capacity(work.len());
    let mut first = Vec::with_capacity(work.len());
    for (conn, steps) in work {
        let mut with_savepoint = vec![control(&format!("SAVEPOINT {SAVEPOINT}"))];
        // Every shard need not give more than LIMIT + OFFSET rows (it would not anyway).
        with_savepoint.extend(in_turn::limited(&steps, ask).unwrap_or_else(|| steps.clone()));
        statements.push(steps);
        first.push((conn, with_savepoint));
    }
    let (conns, settled) = settle(run_all(first, true).await);
    let answers = match settled {
        Ok(a) => a,
        Err(f) => return failed(conns, f),
    };
    let texts: Vec<ShardText> = answers.iter().filter_map(|(t, _)| t.clone()).collect();
    let (firsts, control_errors): (Vec<Vec<Frame>>, Vec<Option<ErrorFields>>) = answers
        .into_iter()
        .map(|(_, a)| (a.kept.frames, a.control_error))
        .unzip();
    if let Some(e) = control_errors.into_iter().flatten().next() {
        return failed(conns, Failed::Error(e));
    }
    let counted = merged::run(channels(&firsts), &plan, &texts, &mut Nowhere).await;
    let errored = firsts
        .iter()
        .any(|f| f.iter().any(|f| f.tag == be::ERROR_RESPONSE));
    if errored || counted.failure.is_some() || counted.taken.len() != conns.len() {
        // Step 1's answers are the answer: a shard's error, or a merge that does not count.
        return answer(conns, &firsts, &texts, &plan, client).await;
    }
    let mut plans = Vec::with_capacity(conns.len());
    for (steps, &share) in statements.iter().zip(&counted.taken) {
        let mut s = vec![control(&format!(
            "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
        ))];
        if share > 0 {
            let ask = i32::try_from(share).unwrap_or(i32::MAX);
            // `applies` held for these steps, and `again` keeps their one execution.
            let Some(limited) = in_turn::limited(&again(steps), ask) else {
                return failed(
                    conns,
                    Failed::Error(ErrorFields::error(
                        "XX000",
                        "a locking read lost its execution between its two steps",
                    )),
                );
            };
            s.extend(limited);
        }
        plans.push(s);
    }
    let second = conns.into_iter().zip(plans).collect();
    let (conns, settled) = settle(run_all(second, false).await);
    let answers = match settled {
        Ok(a) => a,
        Err(f) => return failed(conns, f),
    };
    let mut finals = Vec::with_capacity(answers.len());
    for ((_, a), (first, &share)) in answers
        .into_iter()
        .zip(firsts.into_iter().zip(&counted.taken))
    {
        if let Some(e) = a.control_error {
            return failed(conns, Failed::Error(e));
        }
        if share > 0 {
            finals.push(a.kept.frames);
        } else {
            // Nothing of this shard is in the answer: its description, no rows.
            finals.push(without_rows(first));
        }
    }
    answer(conns, &finals, &texts, &plan, client).await
}

/// A shard's answer with its rows taken out (its count 0).
fn without_rows(frames: Vec<Frame>) -> Vec<Frame> {
    frames
        .into_iter()
        .filter(|f| f.tag != be::DATA_ROW)
        .map(|f| match f.tag {
            be::COMMAND_COMPLETE => be::command_complete("SELECT 0"),
            _ => f,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frontend::Bind;

    fn parse(name: &str) -> Step {
        Step::forwarded(
            Parse {
                name: name.into(),
                query: "SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE".into(),
                param_types: vec![],
            }
            .encode(),
            Expect::Parse {
                register: (!name.is_empty()).then(|| name.to_string()),
            },
        )
    }

    fn bind() -> Step {
        Step::forwarded(
            Bind {
                portal: String::new(),
                statement: "s1".into(),
                param_formats: vec![],
                params: vec![],
                result_formats: vec![],
            }
            .encode(),
            Expect::Bind,
        )
    }

    fn execute(max_rows: i32) -> Step {
        Step::forwarded(
            Execute {
                portal: String::new(),
                max_rows,
            }
            .encode(),
            Expect::Execute,
        )
    }

    fn sync() -> Step {
        Step::forwarded(fe::sync(), Expect::Sync)
    }

    fn tags(steps: &[Step]) -> Vec<u8> {
        steps
            .iter()
            .map(|s| match s {
                Step::Send { frame, .. } | Step::Synthetic(frame) => frame.tag,
            })
            .collect()
    }

    #[test]
    fn only_one_execution_asking_for_every_row_runs_in_two_steps() {
        assert!(applies(&[parse("s1"), bind(), execute(0), sync()]));
        assert!(applies(&[Step::Send {
            frame: fe::query("SELECT 1 ORDER BY 1 LIMIT 1 FOR UPDATE"),
            expect: Expect::Query,
            forward: true,
        }]));
        // The client's own row limit (a cursor's fetch size) cuts step 1's answer.
        assert!(!applies(&[bind(), execute(10), sync()]));
        // Two executions (a pipeline).
        assert!(!applies(&[bind(), execute(0), bind(), execute(0), sync()]));
    }

    #[test]
    fn step_two_does_not_prepare_a_named_statement_again() {
        let steps = [parse("s1"), bind(), execute(0), sync()];
        let out = again(&steps);
        assert_eq!(
            tags(&out),
            [be::PARSE_COMPLETE, fe::BIND, fe::EXECUTE, fe::SYNC]
        );
        assert!(matches!(out[0], Step::Synthetic(_)));
        // The unnamed statement is parsed again; a Parse the client did not see stays unseen.
        let unnamed = [parse(""), bind(), execute(0), sync()];
        assert_eq!(tags(&again(&unnamed)), tags(&unnamed));
        let quiet = Step::Send {
            frame: Parse {
                name: "s2".into(),
                query: "SELECT 1".into(),
                param_types: vec![],
            }
            .encode(),
            expect: Expect::Parse {
                register: Some("s2".into()),
            },
            forward: false,
        };
        assert_eq!(
            tags(&again(&[quiet, bind(), execute(0), sync()])),
            [fe::BIND, fe::EXECUTE, fe::SYNC]
        );
    }

    #[test]
    fn a_shard_without_a_share_answers_its_description_and_no_rows() {
        let frames = vec![
            be::parse_complete(),
            Frame::new(be::DATA_ROW, bytes::Bytes::from_static(&[0, 0])),
            be::command_complete("SELECT 1"),
        ];
        let out = without_rows(frames);
        assert_eq!(
            out.iter().map(|f| f.tag).collect::<Vec<_>>(),
            [be::PARSE_COMPLETE, be::COMMAND_COMPLETE]
        );
        assert_eq!(
            be::decode_command_complete(&out[1].body).unwrap(),
            "SELECT 0"
        );
    }
}
