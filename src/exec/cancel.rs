//! Cancel requests: each client gets pgshard's own BackendKeyData; a CancelRequest carrying it is
//! forwarded only to the server connections running that client's query at that moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::CancelTarget;

/// The server connections one client is using right now.
pub type ActiveTargets = Arc<Mutex<Vec<CancelTarget>>>;

/// Every connected client's cancel key.
#[derive(Default)]
pub struct CancelRegistry {
    clients: Mutex<HashMap<(i32, i32), ActiveTargets>>,
}

impl CancelRegistry {
    /// Gives a new client a unique (pid, secret) key.
    pub fn register(&self) -> (i32, i32, ActiveTargets) {
        let targets = ActiveTargets::default();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            if pid != 0 && !clients.contains_key(&(pid, secret)) {
                clients.insert((pid, secret), targets.clone());
                return (pid, secret, targets);
            }
        }
    }

    /// Forgets a client that disconnected.
    pub fn unregister(&self, pid: i32, secret: i32) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.remove(&(pid, secret));
    }

    /// Cancels whatever the client with this key is running; unknown keys are ignored, as
    /// Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let targets: Vec<CancelTarget> = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match clients.get(&(pid, secret)) {
                Some(t) => t.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                None => return,
            }
        };
        for target in targets {
            if let Err(e) = target.cancel().await {
                tracing::warn!(addr = %target.addr, error = %e, "cancel request to server failed");
            }
        }
    }
}

impl CancelRegistry {
    /// Cancels what every client is running (shutdown after its timeout).
    pub async fn cancel_all(&self) {
        let targets: Vec<CancelTarget> = {
            let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            clients
                .values()
                .flat_map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .collect()
        };
        for target in targets {
            let _ = target.cancel().await;
        }
    }
}

/// Cancels what one client is running now.
pub async fn cancel_active(active: &ActiveTargets) {
    let targets = active.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for target in targets {
        if let Err(e) = target.cancel().await {
            tracing::warn!(addr = %target.addr, error = %e, "cancel request to server failed");
        }
    }
}

/// Replaces the set of servers a client is using.
pub fn set_active(active: &ActiveTargets, targets: Vec<CancelTarget>) {
    *active.lock().unwrap_or_else(|p| p.into_inner()) = targets;
}
