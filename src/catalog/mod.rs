//! The catalog database: shard map loading and reload, the list of live proxies.
