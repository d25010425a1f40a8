//! The state every client session shares: configuration, router, shard map, pools, id generator
//! and cancel keys.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::metrics::ReplicaMetrics;
use crate::backend::topology::Topology;
use crate::backend::ShardPools;
use crate::catalog::MapHandle;
use crate::config::Config;
use crate::exec::cancel::CancelRegistry;
use crate::ids::IdGenerator;
use crate::router::Router;
use crate::txn::Coordinator;

/// Shared by all sessions of one proxy process.
pub struct Proxy {
    pub config: Arc<Config>,
    pub router: Router,
    pub map: MapHandle,
    pub pools: Arc<ShardPools>,
    pub ids: IdGenerator,
    /// Key column types and catalog id blocks, for INSERTs that omit a narrow shard key.
    pub keys: crate::frontend::generated_keys::KeySources,
    pub cancels: CancelRegistry,
    /// Where tables that are not sharded live (the first shard of the config).
    pub first_shard: u32,
    /// ParameterStatus values of a real shard, reported to clients at startup.
    pub server_params: std::sync::RwLock<HashMap<String, String>>,
    /// Commits transactions that span shards.
    pub coordinator: Arc<Coordinator>,
    /// Every server's role, health and position, as the monitors last saw them.
    pub topology: Arc<Topology>,
    /// Reads per server, LSN waits, fallbacks to the primary, failovers (bumped by sessions and
    /// monitors; lag and fenced gauges come from the topology).
    pub replica_metrics: Arc<ReplicaMetrics>,
    /// Logins, client limits and timeouts: what a SIGHUP may change.
    pub live: Arc<crate::live::Live>,
    /// Running, draining or closing: sessions watch it between requests.
    pub phase: crate::live::PhaseSender,
    /// Connected clients, request counters and the PAUSE gate (the admin console's view).
    pub admin: crate::admin::AdminState,
    /// Recent failed logins per client address (`auth.max_failed_logins_per_minute`).
    pub login_failures: crate::frontend::login_guard::LoginFailures,
    /// TLS for clients, when `[tls]` is configured.
    pub client_tls: Option<crate::frontend::tls::ClientTls>,
    /// How pgshard's own connections to shards and the catalog are protected (`[server_tls]`).
    pub server_tls: crate::backend::ServerTls,
    /// Rebalancing: the fence on keyless statements and the cut-over hold.
    pub rebalance: Arc<crate::rebalance::hold::ProxyRebalance>,
    /// The catalog's topology as this proxy has applied it (pools, monitors, router).
    pub shards: crate::catalog::TopologyHandle,
    /// Listening clients and the one LISTEN connection to the channel shard.
    pub notify: crate::notify::Hub,
    /// What statements would do over more shards (`[compat]`, `SHOW COMPAT`).
    pub compat: crate::compat::Compat,
}
