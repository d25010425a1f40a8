//! Client side of the proxy: listener, startup, authentication and the client session.

pub mod auth;
