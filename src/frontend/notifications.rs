//! LISTEN, UNLISTEN and NOTIFY under transaction pooling, without pinning the client: the
//! proxy's [`Hub`](crate::notify::Hub) listens on the channel shard for every client, and the
//! session hands a listening client its notifications between requests, as Postgres does (never
//! inside another answer or an open block; at once while the client is idle). Inside a block,
//! NOTIFY (and LISTEN/UNLISTEN) wait for COMMIT ([`crate::notify::pending`]).

use super::session::Session;
use crate::notify::pending::{Action, Pending};
use crate::notify::{ClientHandle, Notification, Target};
use crate::router::LocalCommand;
use crate::wire::backend::{self as be, ErrorFields, TxStatus};

/// Postgres's limit on a NOTIFY payload (bytes, exclusive).
const MAX_PAYLOAD: usize = 8000;

/// A session's side of LISTEN/NOTIFY.
#[derive(Default)]
pub struct SessionNotify {
    /// Registered with the hub on the first LISTEN.
    client: Option<ClientHandle>,
    /// What the open block does at COMMIT.
    pub pending: Pending,
    /// What a block that just committed left to do.
    committed: Vec<Action>,
}

impl SessionNotify {
    /// The next notification for this client (never, while it listens on nothing).
    pub async fn next(&mut self) -> Option<Notification> {
        match &mut self.client {
            Some(c) => c.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The block ended: keep its actions if it committed.
    pub fn block_ended(&mut self, committed: bool) {
        let actions = self.pending.finish(committed);
        self.committed.extend(actions);
    }
}

impl Session {
    fn notify_target(&self) -> Target {
        Target {
            config: self.proxy.config.clone(),
            topology: self.proxy.topology.clone(),
            tls: self.proxy.server_tls.clone(),
            shard: self.proxy.first_shard,
        }
    }

    /// Answers a statement the proxy handles itself: LISTEN/UNLISTEN/NOTIFY here, the others
    /// by [`Session::local_command`]. An error is the caller's to send.
    pub async fn run_local(
        &mut self,
        local: &LocalCommand,
        describe: bool,
        binary: bool,
    ) -> Result<(), ErrorFields> {
        let action = match local {
            LocalCommand::Listen { channel } => Action::Listen(channel.clone()),
            LocalCommand::Unlisten { channel } => Action::Unlisten(channel.clone()),
            LocalCommand::Notify { channel, payload } => Action::Notify {
                channel: channel.clone(),
                payload: payload.clone(),
            },
            other => {
                self.local_command(other, describe, binary);
                return Ok(());
            }
        };
        self.notify_action(action).await
    }

    async fn notify_action(&mut self, action: Action) -> Result<(), ErrorFields> {
        if self.status() == TxStatus::Failed {
            return Err(ErrorFields::error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let tag = match &action {
            Action::Listen(_) => "LISTEN",
            Action::Unlisten(_) => "UNLISTEN",
            Action::Notify { payload, .. } => {
                if payload.len() >= MAX_PAYLOAD {
                    return Err(ErrorFields::error("22023", "payload string too long"));
                }
                "NOTIFY"
            }
        };
        let in_block = self.state.txn.as_ref().is_some_and(|t| !t.implicit);
        if in_block {
            self.notify.pending.push(action);
        } else {
            self.apply(action, true).await?;
        }
        self.io.push(&be::command_complete(tag));
        Ok(())
    }

    /// Does one action now; `wait`: a NOTIFY answers once the channel shard ran it.
    async fn apply(&mut self, action: Action, wait: bool) -> Result<(), ErrorFields> {
        let target = self.notify_target();
        match action {
            Action::Listen(channel) => {
                let hub = self.proxy.notify.clone();
                let client = self.notify.client.get_or_insert_with(|| hub.register());
                client.listen(&channel, || target).await
            }
            Action::Unlisten(channel) => {
                if let Some(client) = &self.notify.client {
                    client.unlisten(channel.as_deref());
                }
                Ok(())
            }
            Action::Notify { channel, payload } => {
                self.proxy
                    .notify
                    .notify(vec![(channel, payload)], wait, || target)
                    .await
            }
        }
    }

    /// After a request: what a block that committed left to do — its LISTEN/UNLISTENs, and its
    /// NOTIFYs sent on the channel shard in one transaction, in order.
    pub async fn settle_notify(&mut self) {
        if self.notify.committed.is_empty() {
            return;
        }
        let actions = std::mem::take(&mut self.notify.committed);
        let mut notes = Vec::new();
        for action in actions {
            match action {
                Action::Notify { channel, payload } => notes.push((channel, payload)),
                other => {
                    if let Err(e) = self.apply(other, true).await {
                        tracing::warn!(message = %e.message, "LISTEN at COMMIT failed");
                    }
                }
            }
        }
        let target = self.notify_target();
        if let Err(e) = self.proxy.notify.notify(notes, true, || target).await {
            tracing::warn!(message = %e.message, "NOTIFY of a committed block failed");
            let warning = ErrorFields {
                severity: "WARNING".into(),
                ..ErrorFields::error(
                    &e.code,
                    format!(
                        "the transaction committed, but its NOTIFYs were not sent: {}",
                        e.message
                    ),
                )
            };
            self.io.push(&warning.to_notice());
        }
    }
}
