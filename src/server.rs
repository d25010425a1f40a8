//! Starting and stopping a proxy: catalog, id generator, shard checks, pools, monitors, listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::metrics::ReplicaMetrics;
use crate::backend::monitor::{self, MonitorContext, Monitors};
use crate::backend::topology::Topology;
use crate::backend::{ServerTls, ShardPools};
use crate::catalog::{self, CatalogHandle, PrimaryRecords};
use crate::config::Config;
use crate::exec::cancel::CancelRegistry;
use crate::frontend::listener::accept_loop;
use crate::ids::IdGenerator;
use crate::live::{fixed_changes, Live, LiveSettings, Phase};
use crate::proxy::Proxy;
use crate::router::Router;
use crate::telemetry::endpoint::{self, MetricsEndpoint};
use crate::txn::{self, Coordinator, DecisionLog};

/// Connections of the two-phase commit decision log to the catalog.
const DECISION_LOG_CONNECTIONS: usize = 2;

/// How long sessions get to roll back and leave once the shutdown timeout has passed.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// Polls `done` until it holds (true) or the deadline passes (false).
async fn wait_until(deadline: tokio::time::Instant, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy running in this process.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    /// Where `/metrics` is served, when `[metrics]` is configured.
    pub metrics_addr: Option<SocketAddr>,
    metrics: Option<MetricsEndpoint>,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    catalog: CatalogHandle,
    recovery: Arc<crate::membership::sync::FollowingRecovery>,
    monitors: Arc<Monitors>,
    /// Follows the catalog's topology (shards and replicas added or dropped).
    topology_sync: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// Applies a re-read config file: the live part (logins, client limits, timeouts) takes
    /// effect, and the keys that cannot change while running are returned, unapplied. A file
    /// whose client roles are superusers on a shard (see [`crate::backend::privileges`]) changes
    /// nothing: the error names the roles and the fix.
    pub async fn reload(&self, new: &Config) -> Result<Vec<String>, String> {
        crate::backend::privileges::check_all(new, &self.proxy.server_tls).await?;
        if new.pool.size > self.proxy.pools.size() {
            // The new size must fit every shard in use, as at start-up.
            for shard in &self.proxy.shards.current().shards {
                crate::membership::checks::check_at_start(new, shard, &self.proxy.server_tls)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let fixed = fixed_changes(&self.proxy.config, new);
        self.proxy.live.set(LiveSettings::from_config(new));
        self.proxy.pools.resize(new.pool.size);
        Ok(fixed)
    }

    /// Shuts down gracefully: stops accepting, ends idle sessions at once (57P01), lets sessions
    /// inside a transaction block finish it for up to `timeout`, then ends the rest (their blocks
    /// are rolled back, running statements cancelled) and stops.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy.phase.send(Phase::Draining);
        let deadline = tokio::time::Instant::now() + timeout;
        let live = self.proxy.live.clone();
        let drained = wait_until(deadline, || live.clients() == 0).await;
        if !drained {
            tracing::warn!(
                clients = live.clients(),
                "shutdown timeout reached: ending the remaining sessions"
            );
            let _ = self.proxy.phase.send(Phase::Closing);
            self.proxy.cancels.cancel_all().await;
            let grace = tokio::time::Instant::now() + CLOSING_GRACE;
            wait_until(grace, || live.clients() == 0).await;
        }
        self.stop().await;
    }

    /// Stops accepting clients and stops the catalog task and the monitors. Sessions in progress
    /// end with their clients.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        if let Some(metrics) = self.metrics {
            metrics.stopped().await;
        }
        self.recovery.stop();
        self.proxy.rebalance.stop();
        self.topology_sync.abort();
        self.monitors.stop().await;
        self.catalog.shutdown();
    }
}

/// Raises the soft open-files limit to the hard limit: every client and every server connection
/// is a file descriptor, and the common soft default (1024) is below `max_clients` alone.
fn raise_open_files_limit(config: &Config) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open files limit");
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
            tracing::info!(
                from = before,
                to = limit.rlim_cur,
                "raised the open files limit to its hard limit"
            );
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open files limit");
            limit.rlim_cur = before;
        }
    }
    let servers: usize = config.shards.iter().map(|s| 1 + s.replicas.len()).sum();
    let needed = config.proxy.max_clients + config.pool.size * servers + 64;
    if config.proxy.max_clients > 0 && (limit.rlim_cur as u128) < needed as u128 {
        tracing::warn!(
            open_files = limit.rlim_cur,
            needed,
            "the open files limit is below proxy.max_clients plus the pools: clients will be refused before max_clients"
        );
    }
}

/// Starts a proxy: loads the shard map, checks every shard, binds the listener.
pub async fn start(mut config: Config) -> anyhow::Result<RunningProxy> {
    // A config built in code gets its lookup tables as a loaded one does.
    crate::config::lookups::expand(&mut config);
    raise_open_files_limit(&config);
    let config = Arc::new(config);
    // Built once: every server and catalog connection of this proxy shares it.
    let server_tls = ServerTls::load(config.server_tls.as_ref())?;
    let catalog = catalog::start(
        &config.catalog,
        &config.proxy.node_name,
        &server_tls,
        &config.shards,
        &config.sharded_schemas,
    )
    .await
    .context("cannot start the catalog client")?;
    // The catalog's topology says which shards exist; the config's [[shards]] seeded it.
    let configured = config.shards.clone();
    let config = Arc::new(catalog::with_topology(
        &config,
        Some(&catalog.topology.current()),
    ));
    let ids = IdGenerator::new(catalog.node_id).context("bad proxy node id")?;
    for shard in &config.shards {
        crate::membership::checks::check_at_start(&config, shard, &server_tls).await?;
    }
    crate::backend::lookup_tables::ensure(&config, &server_tls)
        .await
        .map_err(anyhow::Error::msg)?;
    let key_tables =
        crate::backend::key_types::resolve(&config, &catalog.map.current(), &server_tls).await;
    let config = Arc::new(Config {
        sharded_tables: key_tables.map_err(anyhow::Error::msg)?,
        ..(*config).clone()
    });
    let topology = Topology::new(&config);
    let pools =
        ShardPools::new(&config, topology.clone(), &server_tls).map_err(anyhow::Error::msg)?;
    let replica_metrics = Arc::new(ReplicaMetrics::new(&config));
    let monitor_ctx = MonitorContext {
        config: config.clone(),
        topology: topology.clone(),
        pools: pools.clone(),
        records: Arc::new(PrimaryRecords::new(
            &config.catalog.url,
            &server_tls,
            config.pool.connect_timeout(),
        )),
        metrics: replica_metrics.clone(),
        tls: server_tls.clone(),
    };
    // Writes go to the primaries every proxy agreed on, not to the configured ones, from the
    // first client on.
    monitor::adopt_recorded_primaries(&monitor_ctx).await;
    let monitors = Arc::new(monitor::start(monitor_ctx));
    // Under `[compat]` the one database answers every statement as it is: the data path knows
    // no sharded table, and the report judges statements with a router of its own.
    let router = match &config.compat {
        Some(_) => Router::new(&[], config.router.cache_size)
            .with_shards(config.shards.iter().map(|s| s.id).collect()),
        None => Router::from_config(&config),
    };
    if config.compat.is_none() {
        // Tenants the catalog places (new tenants by `[tenants]` among them) hold relations too.
        router.follow_tenants(&catalog.map.current());
        router.set_shadows(
            crate::backend::shadows::read(
                &config,
                &server_tls,
                &router.tables().names(),
                &router.tenant_schemas(),
            )
            .await,
        );
    }
    let first_shard = config.shards[0].id;
    let log = DecisionLog::new(
        &config.catalog.url,
        &server_tls,
        DECISION_LOG_CONNECTIONS,
        config.pool.connect_timeout(),
    )?;
    let coordinator = Arc::new(Coordinator::new(log, pools.clone(), catalog.node_id));
    // Transactions a previous run left in doubt are settled before clients arrive.
    txn::recovery::resolve_once(&config, &coordinator, &topology, &server_tls).await;
    let recovery = Arc::new(crate::membership::sync::FollowingRecovery::start(
        config.clone(),
        coordinator.clone(),
        topology.clone(),
        server_tls.clone(),
    ));
    let client_tls = config
        .tls
        .as_ref()
        .map(crate::frontend::tls::ClientTls::load)
        .transpose()?;
    // A job may be moving rows: keyless statements are fenced from the first client on.
    let rebalance = Arc::new(crate::rebalance::hold::ProxyRebalance::default());
    crate::rebalance::hold::load_fence(&config, &rebalance)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read rebalancing jobs from the catalog: {e}"))?;
    let listener = TcpListener::bind(&config.proxy.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.proxy.listen))?;
    let addr = listener.local_addr()?;
    let proxy = Arc::new(Proxy {
        config: config.clone(),
        router,
        map: catalog.map.clone(),
        pools,
        ids,
        keys: crate::frontend::generated_keys::KeySources::new(catalog::KeyBlocks::new(
            &config.catalog.url,
            &server_tls,
            config.pool.connect_timeout(),
        )),
        cancels: CancelRegistry::default(),
        first_shard,
        server_params: Default::default(),
        coordinator,
        topology,
        replica_metrics,
        live: Arc::new(Live::new(LiveSettings::from_config(&config))),
        phase: watch::channel(Phase::Running).0,
        admin: Default::default(),
        login_failures: Default::default(),
        client_tls,
        server_tls: server_tls.clone(),
        rebalance: rebalance.clone(),
        shards: catalog::TopologyHandle::new(catalog::CatalogTopology {
            version: catalog.topology.current().version,
            shards: config.shards.clone(),
        }),
        notify: Default::default(),
        compat: crate::compat::Compat::new(&config),
    });
    // Tenant placements come from the shard map: the router follows every version installed.
    if config.compat.is_none() {
        let weak = Arc::downgrade(&proxy);
        proxy.map.on_install(move |map| {
            if let Some(p) = weak.upgrade() {
                p.router.follow_tenants(map);
            }
        });
    }
    let topology_sync = crate::membership::sync::start(
        proxy.clone(),
        monitors.clone(),
        recovery.clone(),
        catalog.topology.clone(),
        configured,
    );
    rebalance.keep(crate::rebalance::hold::start(
        config.clone(),
        rebalance.clone(),
        catalog.map.clone(),
        catalog.node_id,
        server_tls.clone(),
    ));
    if config.rebalance.run_jobs {
        rebalance.keep(crate::rebalance::runner::start(
            config.clone(),
            catalog.node_id,
        )?);
    }
    let (shutdown, rx) = watch::channel(false);
    let metrics = match &config.metrics {
        Some(m) => Some(endpoint::start(m, proxy.clone(), rx.clone()).await?),
        None => None,
    };
    let accept = tokio::spawn(accept_loop(listener, proxy.clone(), rx));
    tracing::info!(%addr, shards = config.shards.len(), map_version = proxy.map.current().version, "pgshard listening");
    Ok(RunningProxy {
        addr,
        proxy,
        metrics_addr: metrics.as_ref().map(|m| m.addr),
        metrics,
        shutdown,
        accept,
        catalog,
        recovery,
        monitors,
        topology_sync,
    })
}
