//! PAUSE/RESUME: a proxy-wide gate every session passes before it starts a request. While paused,
//! new requests wait at the gate; requests already running, and statements of transactions already
//! open, go on, so a pause never strands a transaction holding locks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The gate and its counters.
#[derive(Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    /// Wakes sessions waiting at the gate (RESUME).
    resumed: Notify,
    /// Wakes a PAUSE waiting for the last running request.
    idle: Notify,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    in_flight: usize,
    waiting: usize,
    requests_total: u64,
    pauses: u64,
}

/// A snapshot of the gate for SHOW STATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateStatus {
    pub paused: bool,
    /// Requests running now.
    pub in_flight: usize,
    /// Requests held at the gate by a PAUSE.
    pub waiting: usize,
    /// Requests started since the proxy started.
    pub requests_total: u64,
    /// Pauses begun since the proxy started (tells one pause from the next).
    pub pauses: u64,
}

/// Held while one request runs; dropping it lets a waiting PAUSE see the request end.
pub struct RequestPass {
    gate: Arc<PauseGate>,
}

/// Why a PAUSE gave up (the proxy is left unpaused).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("PAUSE gave up after {waited_ms} ms with {in_flight} request(s) still running; pgshard is not paused")]
pub struct PauseTimeout {
    pub waited_ms: u128,
    pub in_flight: usize,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request in flight; its pass ends it.
    fn admit(self: &Arc<Self>, s: &mut GateState) -> RequestPass {
        s.in_flight += 1;
        s.requests_total += 1;
        RequestPass { gate: self.clone() }
    }

    /// Waits while the proxy is paused, then counts a request in flight until the pass drops.
    /// `in_transaction` requests pass at once: their transaction is already running.
    pub async fn enter(self: &Arc<Self>, in_transaction: bool) -> RequestPass {
        // Not paused (nearly always): pass without registering for a RESUME; only a request
        // that may wait needs the registration made before it looks at the state.
        {
            let mut s = self.lock();
            if in_transaction || !s.paused {
                return self.admit(&mut s);
            }
        }
        let mut counted_waiting = false;
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            {
                let mut s = self.lock();
                if in_transaction || !s.paused {
                    if counted_waiting {
                        s.waiting -= 1;
                    }
                    return self.admit(&mut s);
                }
                if !counted_waiting {
                    s.waiting += 1;
                    counted_waiting = true;
                }
            }
            resumed.await;
        }
    }

    /// Holds new requests, then waits until none is running. On timeout the pause is undone.
    pub async fn pause(&self, timeout: Duration) -> Result<(), PauseTimeout> {
        {
            let mut s = self.lock();
            s.paused = true;
            s.pauses += 1;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.lock().in_flight == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let in_flight = {
                    let mut s = self.lock();
                    s.paused = false;
                    s.in_flight
                };
                self.resumed.notify_waiters();
                return Err(PauseTimeout {
                    waited_ms: started.elapsed().as_millis(),
                    in_flight,
                });
            }
        }
    }

    /// Lets held and new requests run again; false if the proxy was not paused.
    pub fn resume(&self) -> bool {
        let was = std::mem::replace(&mut self.lock().paused, false);
        self.resumed.notify_waiters();
        was
    }

    /// The gate's state now.
    pub fn status(&self) -> GateStatus {
        let s = self.lock();
        GateStatus {
            paused: s.paused,
            in_flight: s.in_flight,
            waiting: s.waiting,
            requests_total: s.requests_total,
            pauses: s.pauses,
        }
    }
}

impl Drop for RequestPass {
    fn drop(&mut self) {
        let idle = {
            let mut s = self.gate.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            s.in_flight == 0
        };
        if idle {
            self.gate.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_holds_new_requests_until_resume() {
        let gate = Arc::new(PauseGate::default());
        gate.pause(Duration::from_secs(1)).await.unwrap();
        let g = gate.clone();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let held = tokio::spawn(async move {
            let pass = g.enter(false).await;
            let _ = tx.send(());
            drop(pass);
        });
        while gate.status().waiting == 0 {
            tokio::task::yield_now().await;
        }
        assert!(rx.try_recv().is_err(), "a request passed a paused gate");
        // A statement of an open transaction still runs.
        drop(gate.enter(true).await);
        assert!(gate.resume());
        held.await.unwrap();
        assert_eq!(
            gate.status(),
            GateStatus {
                paused: false,
                in_flight: 0,
                waiting: 0,
                requests_total: 2,
                pauses: 1,
            }
        );
        assert!(!gate.resume());
    }

    #[tokio::test]
    async fn pause_waits_for_running_requests() {
        let gate = Arc::new(PauseGate::default());
        let pass = gate.enter(false).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let g = gate.clone();
        let pausing = tokio::spawn(async move {
            let r = g.pause(Duration::from_secs(5)).await;
            let _ = tx.send(());
            r
        });
        while !gate.status().paused {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        drop(pass);
        rx.await.unwrap();
        assert_eq!(pausing.await.unwrap(), Ok(()));
        assert!(gate.status().paused);
    }

    #[tokio::test]
    async fn pause_times_out_and_undoes_itself() {
        let gate = Arc::new(PauseGate::default());
        let _pass = gate.enter(false).await;
        let err = gate.pause(Duration::from_millis(20)).await.unwrap_err();
        assert_eq!(err.in_flight, 1);
        assert!(!gate.status().paused);
    }
}
