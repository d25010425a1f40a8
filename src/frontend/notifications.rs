//! LISTEN, UNLISTEN and NOTIFY under transaction pooling, without pinning the client: the
//! proxy's [`Hub`](crate::notify::Hub) listens on the channel shard for every client, and the
//! session hands a listening client its notifications between requests, as Postgres does (never
//! inside another answer or an open block; at once while the client is idle). Inside a block,
//! NOTIFY (and LISTEN/UNLISTEN) wait for COMMIT ([`crate::notify::pending`]).

use super::session::Session;
use crate::notify::pending::{Action, Pending};
use crate::notify::{ClientHandle, Notification, Target};
use crate::router::{LocalCommand, NotifyArg, ParamSource};
use crate::wire::backend::{self as be, ErrorFields, TxStatus};

/// Postgres's limit on a NOTIFY payload (bytes, exclusive).
const MAX_PAYLOAD: usize = 8000;

/// Postgres's limit on a channel name (NAMEDATALEN, bytes, exclusive).
const MAX_CHANNEL: usize = 64;

/// `local` with the `$n` of a `SELECT pg_notify(…)` replaced by their values (a Bind's, or
/// the simple protocol's literals); any other command as it is.
pub fn with_values(
    local: &LocalCommand,
    params: &dyn ParamSource,
) -> Result<LocalCommand, ErrorFields> {
    let LocalCommand::PgNotify {
        channel,
        payload,
        column,
    } = local
    else {
        return Ok(local.clone());
    };
    let value = |arg: &NotifyArg| -> Result<NotifyArg, ErrorFields> {
        let NotifyArg::Param(n) = arg else {
            return Ok(arg.clone());
        };
        let n = *n;
        if let Some(literal) = params.sql_literal(n) {
            // A number written in the statement: Postgres has no pg_notify taking one.
            if !literal.starts_with('\'') && !literal.starts_with("E'") {
                return Err(ErrorFields::error(
                    "42883",
                    "function pg_notify takes text arguments: quote the channel and the payload",
                ));
            }
        }
        let raw = params
            .raw(n)
            .ok_or_else(|| ErrorFields::error("08P01", format!("no value for parameter ${n}")))?;
        match raw.value {
            None => Ok(NotifyArg::Null),
            Some(bytes) => String::from_utf8(bytes.to_vec())
                .map(NotifyArg::Text)
                .map_err(|_| {
                    ErrorFields::error("22021", "invalid byte sequence for encoding \"UTF8\"")
                }),
        }
    };
    Ok(LocalCommand::PgNotify {
        channel: value(channel)?,
        payload: value(payload)?,
        column: column.clone(),
    })
}

/// A `pg_notify` argument's text once its value is in (`None`: NULL, read as empty).
fn given(arg: &NotifyArg) -> Result<Option<String>, ErrorFields> {
    match arg {
        NotifyArg::Text(t) => Ok(Some(t.clone())),
        NotifyArg::Null => Ok(None),
        NotifyArg::Param(n) => Err(ErrorFields::error(
            "XX000",
            format!("pg_notify's parameter ${n} was not filled in"),
        )),
    }
}

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
    /// A `SELECT pg_notify(…)` must have its `$n` filled in first ([`with_values`]).
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
            LocalCommand::PgNotify {
                channel,
                payload,
                column,
            } => {
                let channel = given(channel)?.unwrap_or_default();
                if channel.is_empty() {
                    return Err(ErrorFields::error("22023", "channel name cannot be empty"));
                }
                if channel.len() >= MAX_CHANNEL {
                    return Err(ErrorFields::error("22023", "channel name too long"));
                }
                let payload = given(payload)?.unwrap_or_default();
                self.notify_action(Action::Notify { channel, payload })
                    .await?;
                // Its answer is one row of `void`, whose text and binary forms are both empty.
                if describe {
                    self.io
                        .push(&be::row_description(&[(column.as_str(), be::VOID_OID)]));
                }
                self.io.push(&be::data_row(&[Some("")]));
                self.io.push(&be::command_complete("SELECT 1"));
                return Ok(());
            }
            other => {
                self.local_command(other, describe, binary);
                return Ok(());
            }
        };
        let tag = self.notify_action(action).await?;
        self.io.push(&be::command_complete(tag));
        Ok(())
    }

    /// Does or queues `action`; its command tag for the caller's answer.
    async fn notify_action(&mut self, action: Action) -> Result<&'static str, ErrorFields> {
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
        Ok(tag)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::literals::{Literal, LiteralParams};
    use crate::router::params::BindParams;

    fn pg_notify(channel: NotifyArg, payload: NotifyArg) -> LocalCommand {
        LocalCommand::PgNotify {
            channel,
            payload,
            column: "pg_notify".into(),
        }
    }

    #[test]
    fn pg_notify_takes_its_values_from_binds_and_literals() {
        let values = [
            Some(bytes::Bytes::from_static(b"jobs")),
            None,
            Some(bytes::Bytes::from_static(&[0xff])),
        ];
        let bound = BindParams {
            values: &values,
            formats: &[1],
            types: &[],
        };
        let (p1, p2, p3) = (
            NotifyArg::Param(1),
            NotifyArg::Param(2),
            NotifyArg::Param(3),
        );
        let text = |t: &str| NotifyArg::Text(t.into());
        assert_eq!(
            with_values(&pg_notify(p1.clone(), p2.clone()), &bound),
            Ok(pg_notify(text("jobs"), NotifyArg::Null))
        );
        assert_eq!(
            with_values(&pg_notify(p1.clone(), p3.clone()), &bound).map_err(|e| e.code),
            Err("22021".to_string())
        );
        assert_eq!(
            with_values(&pg_notify(p1.clone(), NotifyArg::Param(4)), &bound).map_err(|e| e.code),
            Err("08P01".to_string())
        );
        let literals = [Literal::Str("jobs".into()), Literal::Number("5".into())];
        let written = LiteralParams(&literals);
        assert_eq!(
            with_values(&pg_notify(p1.clone(), text("x")), &written),
            Ok(pg_notify(text("jobs"), text("x")))
        );
        assert_eq!(
            with_values(&pg_notify(p1, p2), &written).map_err(|e| e.code),
            Err("42883".to_string()),
            "a number written as the payload"
        );
        // Other commands pass as they are.
        assert_eq!(
            with_values(&LocalCommand::NextId, &written),
            Ok(LocalCommand::NextId)
        );
    }
}
