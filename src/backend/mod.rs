//! Server side of the proxy: raw server connections and their pools.

pub mod auth;
