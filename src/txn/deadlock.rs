//! A deadlock between shards is invisible to each of them, so a block that spans shards runs with
//! a bounded `lock_timeout` (`transactions.cross_shard_lock_timeout_ms`). When that bound ends a
//! lock wait, the client is told what it means for it: the transaction was chosen to break a
//! possible deadlock and should be retried — SQLSTATE 40P01, which every driver and ORM already
//! retries as Postgres's own deadlock error — instead of 55P03, which applications treat as a
//! NOWAIT failure they asked for.

use crate::wire::backend::ErrorFields;
use crate::wire::frame::Frame;

/// Postgres's `lock_not_available`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// Postgres's `deadlock_detected`.
const DEADLOCK_DETECTED: &str = "40P01";

/// The ErrorResponse `frame` as the client must see it, with its decoded fields: a lock timeout
/// the proxy set (`proxy_bound`) becomes a deadlock error; anything else is left as it came.
pub fn as_deadlock(frame: Frame, proxy_bound: bool) -> (Frame, Option<ErrorFields>) {
    let fields = ErrorFields::decode(&frame.body).ok();
    match fields {
        Some(f) if proxy_bound && is_lock_timeout(&f) => {
            let fields = deadlock(f);
            (fields.to_frame(), Some(fields))
        }
        other => (frame, other),
    }
}

fn is_lock_timeout(f: &ErrorFields) -> bool {
    f.code == LOCK_NOT_AVAILABLE && f.message.contains("lock timeout")
}

fn deadlock(f: ErrorFields) -> ErrorFields {
    ErrorFields {
        code: DEADLOCK_DETECTED.into(),
        message: "deadlock detected".into(),
        detail: Some(format!(
            "A transaction spanning several shards waited for a lock longer than pgshard allows such transactions (transactions.cross_shard_lock_timeout_ms); a deadlock across shards is invisible to each shard. The shard said: {}",
            f.message
        )),
        hint: Some("Retry the transaction.".into()),
        ..f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(code: &str, message: &str) -> Frame {
        ErrorFields::error(code, message).to_frame()
    }

    #[test]
    fn only_a_lock_timeout_the_proxy_set_becomes_a_deadlock() {
        let table = [
            (
                "55P03",
                "canceling statement due to lock timeout",
                true,
                "40P01",
            ),
            (
                "55P03",
                "canceling statement due to lock timeout",
                false,
                "55P03",
            ),
            // NOWAIT: the client's own choice.
            (
                "55P03",
                "could not obtain lock on row in relation \"t\"",
                true,
                "55P03",
            ),
            (
                "23505",
                "duplicate key value violates unique constraint",
                true,
                "23505",
            ),
        ];
        for (code, message, bound, want) in table {
            let (out, fields) = as_deadlock(frame(code, message), bound);
            let decoded = ErrorFields::decode(&out.body).expect("an ErrorResponse");
            assert_eq!(decoded.code, want, "{code} {message} {bound}");
            assert_eq!(fields.map(|f| f.code), Some(want.to_string()));
        }
    }
}
