//! The errors pgshard reports on its own account, as one typed enum: what it refuses to do (so a
//! client never gets a plausible but wrong answer), a failed block, a server connection it could
//! not get or lost. Below every layer that answers clients (planner, exec, frontend), so each
//! builds its ErrorResponses the same way.

use crate::backend::pool::CheckoutError;
use crate::backend::BackendError;
use crate::wire::backend::ErrorFields;

/// Between a refusal's message and its hint in a route's text (as psql prints a hint).
pub const HINT_SEPARATOR: &str = "\nHINT:  ";

/// Why pgshard answers with an error of its own; each variant has one SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 0A000: pgshard cannot do this exactly as one Postgres would; the message names what is
    /// missing, the hint how to get there.
    #[error("{message}")]
    Unsupported {
        message: String,
        hint: Option<String>,
    },
    /// 25P02: a statement sent inside a failed transaction block.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    Aborted,
    /// 53300: every pooled connection to the shard stayed busy for the checkout timeout.
    #[error("timed out waiting for a free server connection to shard {shard}")]
    PoolTimeout { shard: u32 },
    /// 08001: a server connection could not be opened.
    #[error("{0}")]
    CannotConnect(String),
    /// 08006: a server connection failed, or the shard has no server to take it.
    #[error("{0}")]
    ConnectionFailure(String),
    /// 22023: a `/* pgshard: … */` routing hint that names no shard or key pgshard can use.
    #[error("{0}")]
    InvalidHint(String),
    /// 23502: an INSERT row whose shard key is NULL, which no shard can hold.
    #[error("{message}")]
    NullShardKey {
        message: String,
        hint: Option<String>,
    },
}

impl Refusal {
    /// A 0A000 refusal without a hint.
    pub fn unsupported(message: impl Into<String>) -> Refusal {
        Refusal::Unsupported {
            message: message.into(),
            hint: None,
        }
    }

    /// The refusal of a statement the router refused: a bad routing hint, or what pgshard cannot
    /// do exactly.
    /// A route's text may carry a hint after [`HINT_SEPARATOR`].
    pub fn of_route(message: impl Into<String>) -> Refusal {
        let message = message.into();
        if message.starts_with(crate::router::hint::INVALID_HINT) {
            return Refusal::InvalidHint(message);
        }
        let (text, hint) = match message.split_once(HINT_SEPARATOR) {
            Some((m, h)) => (m.to_string(), Some(h.to_string())),
            None => (message, None),
        };
        if text.starts_with(crate::router::analyze::NULL_KEY_PREFIX) {
            return Refusal::NullShardKey {
                message: text,
                hint,
            };
        }
        Refusal::Unsupported {
            message: text,
            hint,
        }
    }

    /// The SQLSTATE the client sees.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::Unsupported { .. } => "0A000",
            Refusal::Aborted => "25P02",
            Refusal::PoolTimeout { .. } => "53300",
            Refusal::CannotConnect(_) => "08001",
            Refusal::ConnectionFailure(_) => "08006",
            Refusal::InvalidHint(_) => "22023",
            Refusal::NullShardKey { .. } => "23502",
        }
    }

    /// What the client can do instead, when pgshard knows.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Refusal::Unsupported { hint, .. } | Refusal::NullShardKey { hint, .. } => {
                hint.as_deref()
            }
            _ => None,
        }
    }
}

impl From<Refusal> for ErrorFields {
    fn from(r: Refusal) -> ErrorFields {
        let fields = ErrorFields::error(r.sqlstate(), r.to_string());
        match r.hint() {
            Some(hint) => fields.with_hint(hint),
            None => fields,
        }
    }
}

/// A 0A000 ErrorResponse naming what pgshard does not support.
pub fn refusal(message: impl Into<String>) -> ErrorFields {
    Refusal::unsupported(message).into()
}

/// 25P02, as Postgres says it.
pub fn aborted() -> ErrorFields {
    Refusal::Aborted.into()
}

/// How a failed pool checkout is reported to the client.
pub fn checkout_error(e: CheckoutError) -> ErrorFields {
    match e {
        CheckoutError::Timeout(shard) => Refusal::PoolTimeout { shard }.into(),
        CheckoutError::Backend(b) => backend_error_fields(&b),
        e @ CheckoutError::NoPrimary { .. } => Refusal::ConnectionFailure(e.to_string()).into(),
        other => Refusal::CannotConnect(other.to_string()).into(),
    }
}

/// How a server-side failure is reported to the client: a shard's own error as it sent it,
/// otherwise the connection failure.
pub fn backend_error_fields(e: &BackendError) -> ErrorFields {
    use crate::backend::BackendError as B;
    match e {
        B::Server { fields, .. } => fields.clone(),
        B::Terminated { shard, fields } => ErrorFields {
            severity: "ERROR".into(),
            message: format!("shard {shard}: {}", fields.message),
            detail: Some(format!(
                "the server closed pgshard's connection to shard {shard}; this session goes on, and its next statement uses a new connection (work of an open transaction block on that shard is lost)"
            )),
            ..fields.clone()
        },
        B::Connect { .. } | B::ConnectTimeout { .. } | B::Tls { .. } | B::Login { .. } => {
            Refusal::CannotConnect(e.to_string()).into()
        }
        _ => Refusal::ConnectionFailure(e.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_sqlstate_message_and_hint() {
        let cases: [(Refusal, &str, &str, Option<&str>); 5] = [
            (
                Refusal::Unsupported {
                    message: "no".into(),
                    hint: Some("key it".into()),
                },
                "0A000",
                "no",
                Some("key it"),
            ),
            (
                Refusal::Aborted,
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
                None,
            ),
            (
                Refusal::PoolTimeout { shard: 3 },
                "53300",
                "timed out waiting for a free server connection to shard 3",
                None,
            ),
            (Refusal::CannotConnect("down".into()), "08001", "down", None),
            (
                Refusal::ConnectionFailure("lost".into()),
                "08006",
                "lost",
                None,
            ),
        ];
        for (refusal, code, message, hint) in cases {
            let fields = ErrorFields::from(refusal);
            assert_eq!(&*fields.severity, "ERROR");
            assert_eq!(fields.code, code);
            assert_eq!(fields.message, message);
            assert_eq!(fields.hint.as_deref(), hint);
        }
    }

    #[test]
    fn checkout_errors_map_to_their_sqlstates() {
        assert_eq!(checkout_error(CheckoutError::Timeout(2)).code, "53300");
        let no_primary = CheckoutError::NoPrimary {
            shard: 1,
            detail: "down".into(),
        };
        assert_eq!(checkout_error(no_primary).code, "08006");
        assert_eq!(checkout_error(CheckoutError::UnknownShard(9)).code, "08001");
    }
}
