//! What ends or interrupts a session from outside its own requests: the proxy shutting down, the
//! idle-in-transaction timeout, and the query timeout (a watchdog that cancels the request on its
//! servers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::client_io::ClientReadError;
use super::session::Session;
use crate::backend::ShardPools;
use crate::exec::cancel::{cancel_active, ActiveTargets};
use crate::live::Phase;
use crate::wire::backend::{ErrorFields, TxStatus};
use crate::wire::frame::{Frame, FrameError};
use crate::wire::frontend as fe;

/// What the session loop does next.
pub enum Next {
    Frame(Frame),
    /// The client closed the connection.
    Closed,
    /// The session ends with this FATAL error.
    End(ErrorFields),
}

fn admin_shutdown() -> ErrorFields {
    ErrorFields::fatal(
        "57P01",
        "terminating connection due to administrator command",
    )
}

impl Session {
    /// True while the client holds server state between requests: an open transaction block or
    /// an implicit transaction a Flush left open.
    fn in_transaction(&self) -> bool {
        self.status() != TxStatus::Idle || self.state.open_batch_shard.is_some()
    }

    /// Waits for the client's next message, unless the proxy is shutting down or the client sits
    /// idle inside a transaction block for too long.
    pub async fn next_frame(&mut self, phase: &mut watch::Receiver<Phase>) -> Next {
        loop {
            let in_txn = self.in_transaction();
            let between_requests = !in_txn && self.batch.is_empty();
            match *phase.borrow_and_update() {
                Phase::Closing => return Next::End(admin_shutdown()),
                Phase::Draining if between_requests => return Next::End(admin_shutdown()),
                _ => {}
            }
            // The rest of a pipeline (Bind, Execute, Sync behind a Parse) is read already: it
            // needs no wait, so no timers or wake-ups are armed for it.
            if self.io.has_buffered_frame() {
                return next_of(self.io.read_frame().await);
            }
            let idle_limit = in_txn
                .then(|| self.proxy.live.get().idle_in_transaction_timeout)
                .flatten();
            let idle_timer = async {
                match idle_limit {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let note = tokio::select! {
                read = self.io.read_frame() => return next_of(read),
                Ok(()) = phase.changed() => continue,
                // A listening client idle outside any block gets its notifications at once.
                Some(note) = self.notify.next(), if between_requests => note,
                _ = idle_timer => {
                    tracing::info!(user = %self.user, "client idle in transaction too long: disconnected");
                    return Next::End(ErrorFields::fatal(
                        "25P03",
                        "terminating connection due to idle-in-transaction timeout",
                    ).with_hint("pgshard's proxy.idle_in_transaction_timeout_ms limit was reached"));
                }
            };
            self.io.push(&note.frame());
            if self.io.flush().await.is_err() {
                return Next::Closed;
            }
        }
    }

    /// Starts the query timeout's watchdog for a message that runs a request, if a timeout is set.
    pub fn start_query_timer(&self, tag: u8) -> Option<QueryTimer> {
        if !matches!(tag, fe::QUERY | fe::SYNC | fe::FLUSH) {
            return None;
        }
        let limit = self.proxy.live.get().query_timeout?;
        self.io.timed_out.store(false, Ordering::Release);
        let fired = self.io.timed_out.clone();
        let active = self.cancel.clone();
        let abandon = Arc::new(Notify::new());
        let give_up = abandon.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            fired.store(true, Ordering::Release);
            // The request may be between servers (checking one out): cancel once it has some.
            while !has_targets(&active) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The cancel request may itself be lost (a server cut off the network): it runs on
            // its own while the grace period counts.
            tokio::spawn(async move { cancel_active(&active).await });
            tokio::time::sleep(CANCEL_GRACE).await;
            give_up.notify_one();
        });
        Some(QueryTimer {
            task,
            fired: self.io.timed_out.clone(),
            abandon,
        })
    }
}

fn has_targets(active: &ActiveTargets) -> bool {
    !active.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
}

/// What one read from the client gives the session loop.
fn next_of(read: Result<Option<Frame>, ClientReadError>) -> Next {
    match read {
        Ok(Some(frame)) => Next::Frame(frame),
        Ok(None) => Next::Closed,
        Err(e) => Next::End(read_error(&e)),
    }
}

/// The FATAL error for a message the client should not have sent (or not finished).
fn read_error(e: &ClientReadError) -> ErrorFields {
    if let ClientReadError::Stalled(_) = e {
        tracing::info!("client stalled in the middle of a message: disconnected");
        return ErrorFields::fatal(
            "08P01",
            "timed out waiting for the rest of a message from the client",
        )
        .with_hint("pgshard's proxy.message_timeout_ms limit was reached");
    }
    let fields = ErrorFields::fatal("08P01", format!("invalid message from client: {e}"));
    match e {
        ClientReadError::Frame(FrameError::TooLarge { .. }) => {
            fields.with_hint("raise proxy.max_message_size in the pgshard config to allow it")
        }
        _ => fields,
    }
}

/// How long a request may go on after its query timeout fired and its servers were sent a cancel
/// request, before the session stops waiting for those servers and closes its connections to them.
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// The query timeout's watchdog for one request; dropping it (the request ended) disarms it.
pub struct QueryTimer {
    task: JoinHandle<()>,
    fired: Arc<AtomicBool>,
    /// Notified when the servers did not answer the cancel within [`CANCEL_GRACE`].
    pub abandon: Arc<Notify>,
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        self.task.abort();
        self.fired.store(false, Ordering::Release);
    }
}

impl Session {
    /// The query timeout fired and the servers did not answer the cancel request within
    /// [`CANCEL_GRACE`] (a server that hangs, a network that swallows packets): the request
    /// stops waiting for them. Connections it left mid-exchange are closed, an open transaction
    /// block can only roll back, and the client gets 57014.
    pub async fn abandon_request(&mut self, tag: u8) {
        let stuck: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, c)| !c.synced)
            .map(|(s, _)| *s)
            .collect();
        for shard in &stuck {
            if let Some(conn) = self.held.remove(shard) {
                ShardPools::discard(conn);
            }
        }
        tracing::warn!(user = %self.user, shards = ?stuck, "request abandoned: its servers did not answer the cancel request after the query timeout");
        if self.state.txn.as_ref().is_some_and(|t| t.implicit) {
            // Ignoring the outcome: the statement reports the timeout whatever the rollback did.
            let _ = self.finish_implicit_block(false).await;
        } else if let Some(t) = &mut self.state.txn {
            // Shards whose connection is gone lost their part of the block (as in `run_single`).
            let held = &self.held;
            t.participants.retain(|p| held.contains_key(p));
            t.refused = true;
        }
        self.state.open_batch_shard = None;
        self.batch.clear();
        let which = if stuck.is_empty() {
            "its shards".to_string()
        } else {
            let names: Vec<String> = stuck.iter().map(|s| format!("shard {s}")).collect();
            names.join(", ")
        };
        let fields = ErrorFields::error("57014", "canceling statement due to statement timeout")
            .with_detail(format!(
                "{which} did not answer the cancel request within {} ms; pgshard closed its connections to them",
                CANCEL_GRACE.as_millis()
            ));
        if tag == fe::FLUSH {
            // The client's Sync gets the ReadyForQuery.
            self.state.skip_until_sync = true;
            self.push_error_in_batch(fields);
        } else {
            self.state.skip_until_sync = false;
            self.reply_error(fields);
        }
    }
}
