//! Running statements on several shards in parallel and keeping each shard's whole answer, for
//! the requests whose answers must be compared or reordered before the client sees any of them
//! (writes split by row, statements broadcast to every shard). Their answers are as small as the
//! statements themselves, so holding them is cheap.

use super::readers::AbortOnDrop;
use crate::backend::{HeldConns, PooledConn, ServerConn, ShardPools};

use crate::exec::cancel::{set_active, ActiveTargets};
use crate::exec::exchange::{self, FrameSink, Outcome, SinkError, Step};
use crate::refusal::backend_error_fields;
use crate::wire::backend::ErrorFields;
use crate::wire::frame::Frame;

/// Keeps every frame a shard sends.
#[derive(Default)]
struct Keep(Vec<Frame>);

impl FrameSink for Keep {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        self.0.push(frame);
        Ok(())
    }

    async fn copy_in(&mut self, _conn: &mut ServerConn) -> Result<(), SinkError> {
        Err(SinkError::Refused(
            "COPY FROM STDIN cannot run on several shards at once".into(),
        ))
    }
}

/// One shard's complete answer.
pub struct Collected {
    pub shard: u32,
    /// Every frame the shard sent, in order.
    pub frames: Vec<Frame>,
    /// What the exchange saw; an `Err` means the connection was lost or refused mid-way (it has
    /// been discarded) and is reported as an error the client has not seen.
    pub outcome: Result<Outcome, ErrorFields>,
}

impl Collected {
    /// The first error of this shard: a server error, or the failure of the exchange.
    pub fn error(&self) -> Option<ErrorFields> {
        match &self.outcome {
            Ok(o) => o.error.clone(),
            Err(e) => Some(e.clone()),
        }
    }
}

/// Runs `steps(conn)` on the connection `held` for every shard in `shards` (the caller checked
/// them out) in parallel and returns each shard's answer in `shards` order. Connections whose
/// exchange failed are discarded; the others stay in `held`. `cancel` names them meanwhile.
pub async fn run_collected(
    held: &mut HeldConns,
    cancel: &ActiveTargets,
    shards: &[u32],
    steps: impl Fn(&ServerConn) -> Vec<Step>,
) -> Vec<Collected> {
    let mut tasks = Vec::with_capacity(shards.len());
    let mut missing = Vec::new();
    let mut targets = Vec::with_capacity(shards.len());
    let mut readers = AbortOnDrop::default();
    for &shard in shards {
        let Some(mut conn) = held.remove(&shard) else {
            missing.push(shard);
            continue;
        };
        targets.push(conn.cancel_target());
        let steps = steps(&conn);
        let task = tokio::spawn(async move {
            let mut sink = Keep::default();
            let result = exchange::run(&mut conn, steps, &mut sink).await;
            (conn, sink.0, result)
        });
        readers.watch(&task);
        tasks.push(task);
    }
    set_active(cancel, targets);
    let mut out = Vec::with_capacity(shards.len());
    for (task, &shard) in tasks
        .into_iter()
        .zip(shards.iter().filter(|s| !missing.contains(s)))
    {
        match task.await {
            Ok((conn, frames, result)) => {
                let outcome = match result {
                    Ok(o) => {
                        held.insert(shard, conn);
                        Ok(o)
                    }
                    Err(e) => {
                        discard(conn);
                        Err(sink_error(e))
                    }
                };
                out.push(Collected {
                    shard,
                    frames,
                    outcome,
                });
            }
            Err(join) => out.push(Collected {
                shard,
                frames: Vec::new(),
                outcome: Err(ErrorFields::error(
                    "XX000",
                    format!("the reader of shard {shard} failed: {join}"),
                )),
            }),
        }
    }
    set_active(cancel, Vec::new());
    for shard in missing {
        out.push(Collected {
            shard,
            frames: Vec::new(),
            outcome: Err(ErrorFields::error(
                "XX000",
                format!("no server connection is held for shard {shard}"),
            )),
        });
    }
    out
}

fn discard(conn: PooledConn) {
    ShardPools::discard(conn);
}

fn sink_error(e: SinkError) -> ErrorFields {
    match e {
        SinkError::ClientGone => ErrorFields::error("08006", "client connection lost"),
        SinkError::Refused(message) => ErrorFields::error("0A000", message),
        SinkError::Backend(b) => backend_error_fields(&b),
    }
}
