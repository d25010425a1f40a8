//! The admin console: psql to the database `pgshard` as a user with `admin = true` gets PgBouncer
//! style SHOW commands, RELOAD (of the shard map) and PAUSE/RESUME.

pub mod clients;
pub mod command;
pub mod console;
pub mod gate;
pub mod result_set;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

/// The proxy-wide state the console reports on and controls.
pub struct AdminState {
    /// When the proxy started (SHOW STATS uptime).
    pub started: Instant,
    /// Connected clients and logins since start.
    pub clients: Arc<clients::ClientRegistry>,
    /// PAUSE/RESUME, and the request counters.
    pub gate: Arc<gate::PauseGate>,
}

impl Default for AdminState {
    fn default() -> Self {
        AdminState {
            started: Instant::now(),
            clients: Default::default(),
            gate: Default::default(),
        }
    }
}
