//! Server side of the proxy: raw server connections and their pools, the monitors that track
//! every server's role and position, failover discovery and fencing.

pub mod auth;
pub mod conn;
pub mod failover;
pub mod failover_buffer;
pub mod held_conns;
pub mod key_types;
pub mod lookup_tables;
pub mod metrics;
pub mod monitor;
pub mod parking;
pub mod pool;
pub mod prepared_lru;
pub mod privileges;
pub mod probe;
pub mod session_state;
pub mod shadows;
pub mod tls;
pub mod topology;

pub use conn::{BackendError, CancelTarget, ServerConn};
pub use held_conns::HeldConns;
pub use pool::{PooledConn, ServerLogin, ShardPools};
pub use tls::{ServerTls, ServerTlsError};
