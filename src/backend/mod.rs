//! Server side of the proxy: raw server connections and their pools.

pub mod auth;
pub mod conn;
pub mod pool;
pub mod session_state;
pub mod topology;

pub use conn::{BackendError, CancelTarget, ServerConn};
pub use pool::{PooledConn, ShardPools};
