//! Holding a shard's writes while it has no primary. When a checkout finds the shard's primary
//! gone (a promotion under way), the statement waits — nothing has been sent yet, so nothing is
//! lost by waiting — up to `pool.failover_buffer_ms` for the monitors to find a primary, and then
//! runs there. Only a statement that outlives the buffer fails, with the checkout's error (08006).
//! Statements already sent to the dead primary cannot be replayed: they fail as before. A shard
//! without replicas has nothing to promote: its statements fail at once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::pool::{CheckoutError, PooledConn};
use super::topology::{ServerId, Topology};

/// How often the primary is looked at again while no sample arrives (a monitor slower than this).
const RECHECK: Duration = Duration::from_millis(250);

/// Counts of buffered waits, for metrics and `SHOW POOLS`-style views.
#[derive(Debug, Default)]
pub struct BufferStats {
    /// Checkouts that waited for a new primary and got one.
    pub resumed: AtomicU64,
    /// Checkouts that waited the whole buffer and failed.
    pub expired: AtomicU64,
}

/// Whether a checkout failure is worth holding for: the shard has no reachable primary.
pub fn holds(error: &CheckoutError) -> bool {
    matches!(error, CheckoutError::NoPrimary { .. })
}

/// Whether to try a checkout again now: writes go to another server than the one that failed,
/// or the monitors see that server answering again.
pub fn worth_retrying(failed: Option<ServerId>, now: Option<ServerId>, healthy: bool) -> bool {
    now.is_some() && (now != failed || healthy)
}

/// Runs `attempt` again each time the shard's topology makes it worth it, until it succeeds, fails
/// with anything but "no primary", or `limit` has passed since `first` (the first attempt's error)
/// — then that error, saying how long it was held.
pub async fn hold<F, Fut>(
    topology: &Topology,
    shard: u32,
    limit: Duration,
    stats: &BufferStats,
    first: CheckoutError,
    mut attempt: F,
) -> Result<PooledConn, CheckoutError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<PooledConn, CheckoutError>>,
{
    // Only a shard with a standby can get a new primary; without one, waiting helps nobody.
    if limit.is_zero() || !holds(&first) || topology.servers_of(shard).len() < 2 {
        return Err(first);
    }
    let Some(mut changes) = topology.watch(shard) else {
        return Err(first);
    };
    // The monitor samples fast while someone waits for it.
    let _fresh = topology.want_fresh_samples(shard);
    let started = Instant::now();
    let deadline = started + limit;
    let mut failed = topology.primary(shard);
    let mut last = first;
    tracing::debug!(shard, "no primary; holding the statement for a new one");
    loop {
        let woke =
            tokio::time::timeout_at(deadline.min(Instant::now() + RECHECK), changes.changed());
        if let Ok(Err(_)) = woke.await {
            // The shard was removed.
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        let now = topology.primary(shard);
        let healthy = now
            .and_then(|id| topology.server(id))
            .is_some_and(|s| s.healthy);
        if !worth_retrying(failed, now, healthy) {
            continue;
        }
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(conn)) => {
                stats.resumed.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::record::failover_buffered("resumed");
                tracing::info!(
                    shard,
                    held_ms = started.elapsed().as_millis() as u64,
                    "statement held for a new primary runs on it"
                );
                return Ok(conn);
            }
            Ok(Err(e)) if holds(&e) => {
                failed = now;
                last = e;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    stats.expired.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::record::failover_buffered("expired");
    Err(match last {
        CheckoutError::NoPrimary { shard, detail } => CheckoutError::NoPrimary {
            shard,
            detail: format!(
                "{detail}; held {} ms (pool.failover_buffer_ms) without a new primary",
                started.elapsed().as_millis()
            ),
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_is_retried_once_writes_can_go_somewhere() {
        let old = Some(ServerId { shard: 1, index: 0 });
        let new = Some(ServerId { shard: 1, index: 1 });
        // (failed, primary now, its server healthy) → retry?
        let cases = [
            (old, old, false, false),  // still the dead primary
            (old, old, true, true),    // it answers again (restarted)
            (old, new, false, true),   // promoted replica recorded: try it
            (old, None, false, false), // no server trusted with writes yet
            (None, new, false, true),  // none before, one now
            (None, None, true, false),
        ];
        for (failed, now, healthy, want) in cases {
            assert_eq!(
                worth_retrying(failed, now, healthy),
                want,
                "{failed:?} → {now:?} healthy {healthy}"
            );
        }
    }

    #[test]
    fn only_a_missing_primary_is_held() {
        assert!(holds(&CheckoutError::NoPrimary {
            shard: 1,
            detail: "down".into()
        }));
        assert!(!holds(&CheckoutError::Timeout(1)));
        assert!(!holds(&CheckoutError::UnknownShard(1)));
    }
}
