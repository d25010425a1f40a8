//! Client side of the proxy: listener, startup, authentication and the client session.

pub mod auth;
pub mod bound_set_config;
pub mod client_io;
pub mod cursor_requests;
pub mod extended;
pub mod fencing;
pub mod generated_keys;
pub mod held_portals;
pub mod hold_scope;
pub mod listener;
pub mod login_guard;
pub mod notifications;
pub mod pipeline;
pub mod planning;
pub mod read_routing;
pub mod route_hints;
pub mod run;
pub mod scatter_policy;
pub mod session;
pub mod session_limits;
pub mod session_pins;
pub mod split_bind;
pub mod startup;
pub mod tls;
pub mod txn_control;
pub mod unnest_keys;
