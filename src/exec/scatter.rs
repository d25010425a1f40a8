//! Parallel execution with a concatenating merge: the first shard's descriptions, every shard's
//! rows as they arrive, one CommandComplete with the summed row count, one ReadyForQuery.

use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;

use super::collation;
use super::merged::{self, BoundMerge};
use super::readers::AbortOnDrop;
use crate::backend::{PooledConn, ServerConn, ShardPools};
use crate::exec::exchange::{self, FrameSink, SinkError, Step};
use crate::refusal::backend_error_fields;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;

/// Frames buffered per shard before its reader waits for the merge (bounds memory).
const CHANNEL_DEPTH: usize = 64;

/// Passes a shard's answers to the merge.
struct ChannelSink(mpsc::Sender<Frame>);

impl FrameSink for ChannelSink {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        self.0.send(frame).await.map_err(|_| SinkError::ClientGone)
    }

    async fn copy_in(&mut self, _conn: &mut ServerConn) -> Result<(), SinkError> {
        Err(SinkError::Refused(
            "COPY FROM STDIN cannot run on several shards at once".into(),
        ))
    }
}

/// What a scatter left behind.
pub struct ScatterResult {
    /// Connections still usable, to keep or return to the pool.
    pub conns: Vec<PooledConn>,
    /// A failure the client has not been told about yet (it gets an error and ReadyForQuery).
    pub failure: Option<ErrorFields>,
    pub client_gone: bool,
    /// The merged CommandComplete (or EmptyQueryResponse), held back so the caller can first
    /// commit an implicit transaction: like Postgres, a statement whose commit fails reports
    /// only the error.
    pub complete: Option<Frame>,
    /// The lead shard's ReadyForQuery; the caller decides what status the client sees.
    pub ready: Option<Frame>,
}

/// Runs each connection's steps in parallel and merges the answers into `client`: by the merge
/// plan when one is given, else by concatenation.
pub async fn run(
    work: Vec<(PooledConn, Vec<Step>)>,
    client: &mut impl FrameSink,
    plan: Option<BoundMerge>,
) -> ScatterResult {
    let in_turn = plan.as_ref().and_then(|p| {
        let wanted = p.rows_wanted().filter(|_| p.plan.fill_in_turn)?;
        let ask = i32::try_from(wanted).ok()?;
        work.iter()
            .all(|(_, steps)| super::in_turn::limited(steps, ask).is_some())
            .then_some(wanted)
    });
    let plan = match (in_turn, plan) {
        (Some(wanted), Some(plan)) => return super::in_turn::run(work, client, plan, wanted).await,
        (_, plan) => plan,
    };
    let shard_count = work.len();
    let mut receivers = Vec::with_capacity(shard_count);
    let mut tasks = Vec::with_capacity(shard_count);
    let mut collation_rx = Vec::with_capacity(shard_count);
    let wants_collation = plan.is_some();
    let mut shard_ids = Vec::with_capacity(shard_count);
    let mut readers = AbortOnDrop::default();
    for (mut conn, steps) in work {
        shard_ids.push(conn.shard);
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let (ctx, crx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(async move {
            if wants_collation {
                match collation::of(&mut conn).await {
                    Ok(c) => {
                        let _ = ctx.send(c);
                    }
                    Err(e) => return (conn, Err(SinkError::from(e))),
                }
            }
            let mut sink = ChannelSink(tx);
            let result = exchange::run(&mut conn, steps, &mut sink).await;
            (conn, result)
        }));
        if let Some(task) = tasks.last() {
            readers.watch(task);
        }
        receivers.push(rx);
        collation_rx.push(crx);
    }
    if let Some(plan) = plan {
        let mut collations = Vec::with_capacity(shard_count);
        for (c, &shard) in collation_rx.into_iter().zip(&shard_ids) {
            collations.push(c.await.unwrap_or(collation::ShardText {
                shard,
                collation: None,
                client_encoding: None,
            }));
        }
        let mut outcome = merged::run(receivers, &plan, &collations, client).await;
        let (mut conns, mut failure, mut gone) = join(tasks).await;
        if let Some(pending) = outcome.pending.take() {
            // One more round trip: a shard computes the expressions over the merged values.
            let lead = shard_ids.first().copied();
            let conn = conns.iter_mut().find(|c| Some(c.shard) == lead);
            match conn {
                Some(conn) if failure.is_none() && !gone && outcome.failure.is_none() => {
                    let done = merged::finish_pending(*pending, conn, client).await;
                    outcome.complete = done.complete;
                    failure = failure.or(done.failure);
                    gone |= done.client_gone;
                }
                Some(_) => {}
                None => {
                    failure.get_or_insert(ErrorFields::error(
                        "08006",
                        "the shard that was to finish the aggregates lost its connection",
                    ));
                }
            }
        }
        let failure = failure.or(outcome.failure);
        return ScatterResult {
            conns,
            complete: if failure.is_none() {
                outcome.complete
            } else {
                None
            },
            ready: if failure.is_none() {
                outcome.ready
            } else {
                None
            },
            failure,
            client_gone: gone || outcome.client_gone,
        };
    }
    let mut merge = Merge::default();
    let mut client_gone = false;
    // The first shard's descriptions (ParseComplete, RowDescription, …) go out before any row.
    let mut stash = None;
    if let Some(lead) = receivers.first_mut() {
        while let Some(frame) = lead.recv().await {
            if is_description(frame.tag) {
                if client.send(frame).await.is_err() {
                    client_gone = true;
                    break;
                }
            } else {
                stash = Some(frame);
                break;
            }
        }
    }
    let streams = receivers.into_iter().enumerate().map(|(i, rx)| {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) })
            .map(move |f| (i, f))
            .boxed()
    });
    let mut merged = stream::select_all(streams);
    if let Some(frame) = stash {
        if merge.take(0, frame, client).await.is_err() {
            client_gone = true;
        }
    }
    while let Some((i, frame)) = merged.next().await {
        if !client_gone && merge.take(i, frame, client).await.is_err() {
            client_gone = true;
        }
    }
    let (conns, failure, gone) = join(tasks).await;
    client_gone |= gone;
    let (complete, ready) = if failure.is_none() && !client_gone {
        merge.finish(shard_count)
    } else {
        (None, None)
    };
    ScatterResult {
        conns,
        failure,
        client_gone,
        complete,
        ready,
    }
}

type ShardTask = tokio::task::JoinHandle<(PooledConn, Result<exchange::Outcome, SinkError>)>;

/// Waits for the shard readers: the connections still usable, the first failure, and whether
/// the client went away.
async fn join(tasks: Vec<ShardTask>) -> (Vec<PooledConn>, Option<ErrorFields>, bool) {
    let mut conns = Vec::with_capacity(tasks.len());
    let mut client_gone = false;
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok((conn, Ok(_))) => conns.push(conn),
            Ok((conn, Err(e))) => {
                ShardPools::discard(conn);
                match e {
                    SinkError::ClientGone => client_gone = true,
                    SinkError::Refused(message) => {
                        failure.get_or_insert(ErrorFields::error("0A000", message));
                    }
                    SinkError::Backend(b) => {
                        failure.get_or_insert(backend_error_fields(&b));
                    }
                }
            }
            Err(join) => {
                failure.get_or_insert(ErrorFields::error(
                    "XX000",
                    format!("a shard reader failed: {join}"),
                ));
            }
        }
    }
    (conns, failure, client_gone)
}

/// Messages that describe rather than answer: taken from the first shard only.
fn is_description(tag: u8) -> bool {
    matches!(
        tag,
        be::PARSE_COMPLETE
            | be::BIND_COMPLETE
            | be::PARAMETER_DESCRIPTION
            | be::ROW_DESCRIPTION
            | be::NO_DATA
            | be::CLOSE_COMPLETE
            | be::PARAMETER_STATUS
    )
}

#[derive(Default)]
struct Merge {
    rows: u64,
    completes: usize,
    tag_word: Option<String>,
    /// The shards' tags carry no row count (SAVEPOINT, ROLLBACK, SET): neither does the merged one.
    uncounted: bool,
    error_sent: bool,
    ready: Option<Frame>,
    empty: Option<Frame>,
}

impl Merge {
    async fn take(
        &mut self,
        shard: usize,
        frame: Frame,
        client: &mut impl FrameSink,
    ) -> Result<(), SinkError> {
        match frame.tag {
            be::DATA_ROW | be::NOTICE_RESPONSE | be::NOTIFICATION => client.send(frame).await,
            be::COMMAND_COMPLETE => {
                self.completes += 1;
                if let Ok(tag) = be::decode_command_complete(&frame.body) {
                    let (word, count) = split_tag(tag);
                    match count {
                        Some(n) => self.rows += n,
                        None => self.uncounted = true,
                    }
                    self.tag_word.get_or_insert(word);
                }
                Ok(())
            }
            be::ERROR_RESPONSE => {
                if !self.error_sent {
                    self.error_sent = true;
                    client.send(frame).await?;
                }
                Ok(())
            }
            be::READY_FOR_QUERY => {
                if shard == 0 {
                    self.ready = Some(frame);
                }
                Ok(())
            }
            be::EMPTY_QUERY => {
                if shard == 0 {
                    self.empty = Some(frame);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The closing frames: (CommandComplete or EmptyQueryResponse, ReadyForQuery).
    fn finish(self, shards: usize) -> (Option<Frame>, Option<Frame>) {
        let mut complete = None;
        if !self.error_sent {
            if let Some(empty) = self.empty {
                complete = Some(empty);
            } else if self.completes == shards {
                let word = self.tag_word.unwrap_or_else(|| "SELECT".into());
                complete = Some(be::command_complete(&if self.uncounted {
                    word
                } else {
                    format!("{word} {}", self.rows)
                }));
            }
        }
        (complete, self.ready)
    }
}

/// `SELECT 12` → ("SELECT", Some(12)); `ROLLBACK` → ("ROLLBACK", None).
fn split_tag(tag: &str) -> (String, Option<u64>) {
    match tag.rsplit_once(' ') {
        Some((word, n)) => match n.parse() {
            Ok(count) => (word.to_string(), Some(count)),
            Err(_) => (tag.to_string(), None),
        },
        None => (tag.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::{split_tag, Merge};
    use crate::wire::backend as be;

    #[test]
    fn merged_tags_carry_a_count_only_when_the_shards_do() {
        // (the shards' tag word, counted, rows) → the client's tag
        let cases = [
            ("SELECT", false, 7, "SELECT 7"),
            ("UPDATE", false, 0, "UPDATE 0"),
            ("ROLLBACK", true, 0, "ROLLBACK"),
            ("SAVEPOINT", true, 0, "SAVEPOINT"),
            ("RELEASE", true, 0, "RELEASE"),
        ];
        for (word, uncounted, rows, want) in cases {
            let merge = Merge {
                rows,
                completes: 3,
                tag_word: Some(word.into()),
                uncounted,
                ..Merge::default()
            };
            let (complete, _) = merge.finish(3);
            let complete = complete.expect("every shard completed");
            assert_eq!(
                be::decode_command_complete(&complete.body).ok(),
                Some(want),
                "{word}"
            );
        }
    }

    #[test]
    fn command_tags_split_into_word_and_count() {
        assert_eq!(split_tag("SELECT 12"), ("SELECT".to_string(), Some(12)));
        assert_eq!(split_tag("INSERT 0 3"), ("INSERT 0".to_string(), Some(3)));
        assert_eq!(split_tag("SHOW"), ("SHOW".to_string(), None));
        assert_eq!(split_tag("SAVEPOINT"), ("SAVEPOINT".to_string(), None));
        assert_eq!(split_tag("ROLLBACK"), ("ROLLBACK".to_string(), None));
        assert_eq!(split_tag("SET"), ("SET".to_string(), None));
    }
}
