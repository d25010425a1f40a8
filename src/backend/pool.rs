//! Pools of server connections, one per server and server role (deadpool with our own manager):
//! a client's session checks out only connections that logged in as its own role, and pgshard's
//! control plane has small pools of its own. A connection that is not idle and in sync when it
//! comes back is dropped, never handed to another client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};

use super::conn::{BackendError, ServerConn};
use super::parking::PoolParking;
use super::prepared_lru::PreparedNames;
use super::tls::ServerTls;
use super::topology::{ServerId, Topology};
use crate::config::{Config, ControlPlaneConfig, ServerAuthConfig, ShardConfig, UserConfig};

/// Connections of a control-plane pool per server (retries of COMMIT/ROLLBACK PREPARED).
pub const CONTROL_POOL_SIZE: usize = 2;

/// Who a pool's connections log in as: a role and, when configured, its password (`None`: as
/// [`crate::config::server_password`] falls back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLogin {
    pub role: Arc<str>,
    password: Option<Arc<str>>,
}

impl ServerLogin {
    /// The server login of `user`, one of `users`: its role, with the `server_password` of the
    /// first entry running as that role that gives one (the config refuses entries giving
    /// different ones).
    pub fn for_user(users: &[UserConfig], user: &UserConfig) -> ServerLogin {
        let role = user.server_role();
        let password = user.server_password.as_deref().or_else(|| {
            users
                .iter()
                .filter(|u| u.server_role() == role)
                .find_map(|u| u.server_password.as_deref())
        });
        ServerLogin {
            role: role.into(),
            password: password.map(Into::into),
        }
    }
}

/// What a pool is for: a client role's sessions, or pgshard's own control plane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PoolKey {
    server: ServerId,
    role: Arc<str>,
    control: bool,
}

/// Creates and checks server connections for one server of one shard, logged in as one role.
pub struct ServerManager {
    shard: ShardConfig,
    server: u16,
    address: String,
    role: Arc<str>,
    /// The role's configured password (a reload may change it); resolved against the shard's
    /// login at connect time.
    password: Mutex<Option<Arc<str>>>,
    auth: ServerAuthConfig,
    tls: ServerTls,
    connect_timeout: Duration,
    /// Connections created before this instant are closed when they come back (the server
    /// stopped being where the shard's traffic goes).
    drained_at: Mutex<Option<Instant>>,
    /// Set with `drained_at`: a pool never drained (nearly all) checks no lock on each recycle.
    drained: AtomicBool,
    /// Server-side prepared statements one connection keeps (0: no limit).
    max_prepared: usize,
    /// Server-side prepared statements held by this pool's connections, together.
    prepared: Arc<AtomicUsize>,
    /// Connections parked with clients between their transactions, and checkouts waiting.
    pub(super) parking: PoolParking,
}

impl ServerManager {
    /// The server this pool's connections go to.
    pub(super) fn server_id(&self) -> ServerId {
        ServerId {
            shard: self.shard.id,
            index: self.server,
        }
    }

    /// Whether a connection created at `created` goes to a server drained since (it is closed
    /// when it comes back, never handed out again).
    pub(super) fn drained_since(&self, created: Instant) -> bool {
        // A pool never drained (nearly all) takes no lock.
        self.drained.load(Ordering::Acquire)
            && self
                .drained_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|d| created <= d)
    }
}

impl managed::Manager for ServerManager {
    /// Boxed: a pooled connection is moved many times between the pool's slots, a checkout and
    /// the session's map of held connections, and the connection itself is hundreds of bytes.
    type Type = Box<ServerConn>;
    type Error = BackendError;

    async fn create(&self) -> Result<Box<ServerConn>, BackendError> {
        let explicit = self
            .password
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let password = crate::config::server_password(
            &self.role,
            explicit.as_deref(),
            &self.shard,
            &self.auth,
        );
        let mut conn = ServerConn::connect(
            &self.shard,
            self.server,
            self.address.clone(),
            (&self.role, password),
            (&self.tls, self.connect_timeout),
            &[],
        )
        .await?;
        conn.prepared = PreparedNames::new(self.max_prepared, self.prepared.clone());
        Ok(Box::new(conn))
    }

    async fn recycle(
        &self,
        conn: &mut Box<ServerConn>,
        m: &Metrics,
    ) -> RecycleResult<BackendError> {
        // Set-up owed for a block that ended before anything went out.
        conn.drop_deferred();
        if self.drained_since(m.created) {
            Err(RecycleError::message(
                "connection to a server that is no longer used",
            ))
        } else if conn.reusable() && conn.idle_and_open() {
            Ok(())
        } else {
            Err(RecycleError::message(
                "connection was returned in an unknown state, or its server closed it",
            ))
        }
    }
}

/// A checked-out server connection; dropping it returns it to its pool.
pub type PooledConn = Object<ServerManager>;

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no shard with id {0}")]
    UnknownShard(u32),
    #[error("timed out waiting for a free connection to shard {0}")]
    Timeout(u32),
    #[error(transparent)]
    Backend(Box<BackendError>),
    /// The shard's primary is down, or no server of it can be trusted with writes.
    #[error("shard {shard} has no reachable primary ({detail})")]
    NoPrimary { shard: u32, detail: String },
    #[error("connection pool of shard {shard} failed: {message}")]
    Pool { shard: u32, message: String },
}

/// One pool's state, for status views.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub server: ServerId,
    /// The role its connections log in as.
    pub role: String,
    /// A control-plane pool (pgshard's own work), not a client role's.
    pub control: bool,
    pub status: deadpool::Status,
    /// Server-side prepared statements its connections hold, together.
    pub prepared: usize,
}

/// The pools of every server of every shard, per server role.
pub struct ShardPools {
    pools: RwLock<crate::fast_hash::FastMap<PoolKey, Pool<ServerManager>>>,
    /// Every server: its shard's config and its address (the catalog's topology may change it).
    servers: RwLock<HashMap<ServerId, (ShardConfig, String)>>,
    auth: ServerAuthConfig,
    control_plane: Option<ControlPlaneConfig>,
    tls: ServerTls,
    connect_timeout: Duration,
    /// Connections of each client pool (`pool.size`; a reload may change it).
    size: AtomicUsize,
    max_prepared: usize,
    topology: Arc<Topology>,
    checkout_timeout: Duration,
    /// How long a checkout waits for a shard's new primary (`pool.failover_buffer_ms`).
    failover_buffer: Duration,
    /// Checkouts held for a new primary, by outcome.
    pub buffered: super::failover_buffer::BufferStats,
}

impl ShardPools {
    /// Builds (empty) pools for every server in the config and every server role of its
    /// `[[users]]`; connections open on first use, over TLS when `tls` says so. Pools of roles
    /// that a reload adds are built on their first checkout.
    pub fn new(
        config: &Config,
        topology: Arc<Topology>,
        tls: &ServerTls,
    ) -> Result<Arc<ShardPools>, String> {
        let mut servers = HashMap::new();
        for shard in &config.shards {
            servers.extend(shard_servers(shard));
        }
        let pools = ShardPools {
            pools: RwLock::new(Default::default()),
            servers: RwLock::new(servers),
            auth: config.server_auth.clone(),
            control_plane: config.control_plane.clone(),
            tls: tls.clone(),
            connect_timeout: config.pool.connect_timeout(),
            size: AtomicUsize::new(config.pool.size),
            max_prepared: config.pool.max_prepared_statements,
            topology,
            checkout_timeout: config.pool.checkout_timeout(),
            failover_buffer: config.pool.failover_buffer(),
            buffered: Default::default(),
        };
        let mut logins: Vec<ServerLogin> = Vec::new();
        for user in &config.users {
            let login = ServerLogin::for_user(&config.users, user);
            if !logins.iter().any(|l| l.role == login.role) {
                logins.push(login);
            }
        }
        let ids: Vec<ServerId> = pools
            .servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for id in ids {
            for login in &logins {
                pools.pool(id, &login.role, login.password.as_ref(), false)?;
            }
        }
        Ok(Arc::new(pools))
    }

    /// The pool of `server` for `role`, built if missing; a changed password (a reload) is kept
    /// for the connections it opens from now on.
    fn pool(
        &self,
        server: ServerId,
        role: &Arc<str>,
        password: Option<&Arc<str>>,
        control: bool,
    ) -> Result<Pool<ServerManager>, String> {
        let key = PoolKey {
            server,
            role: role.clone(),
            control,
        };
        let existing = self
            .pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(pool) = existing {
            if password.is_some() {
                let mut known = pool
                    .manager()
                    .password
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if known.as_ref() != password {
                    *known = password.cloned();
                }
            }
            return Ok(pool);
        }
        let (shard, address) = self
            .servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&server)
            .cloned()
            .ok_or_else(|| format!("no server {server}"))?;
        let manager = ServerManager {
            shard,
            server: server.index,
            address,
            role: role.clone(),
            password: Mutex::new(password.cloned()),
            auth: self.auth.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            drained_at: Mutex::new(None),
            drained: AtomicBool::new(false),
            max_prepared: self.max_prepared,
            prepared: Arc::new(AtomicUsize::new(0)),
            parking: PoolParking::default(),
        };
        let size = if control {
            CONTROL_POOL_SIZE
        } else {
            self.size.load(Ordering::Relaxed)
        };
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("cannot build the pool of {server} for role {role}: {e}"))?;
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        Ok(pools.entry(key).or_insert(pool).clone())
    }

    /// A connection to `shard`'s current primary logged in as `login`, waiting up to the checkout
    /// timeout. A primary that cannot be connected to (within the connect timeout), or none, is
    /// `NoPrimary` — once the failover buffer has passed without a new one.
    pub async fn get_as(
        &self,
        login: &ServerLogin,
        shard: u32,
    ) -> Result<PooledConn, CheckoutError> {
        match self.primary(shard) {
            Ok(primary) => self.get_server_as(login, primary).await,
            Err(first) => self.hold_for_primary(login, shard, first).await,
        }
    }

    /// A connection to one particular server logged in as `login`, waiting up to the checkout
    /// timeout. When that server is its shard's primary and cannot be connected to, the checkout
    /// waits for a new primary (the failover buffer) and connects there, else fails `NoPrimary`.
    pub async fn get_server_as(
        &self,
        login: &ServerLogin,
        id: ServerId,
    ) -> Result<PooledConn, CheckoutError> {
        let pool = self
            .pool(id, &login.role, login.password.as_ref(), false)
            .map_err(|_| CheckoutError::UnknownShard(id.shard))?;
        match self.checkout(&pool, id).await {
            Err(first) if super::failover_buffer::holds(&first) => {
                self.hold_for_primary(login, id.shard, first).await
            }
            got => got,
        }
    }

    /// One checkout from `shard`'s primary as it stands now, no waiting for a new one.
    async fn primary_once(
        &self,
        login: &ServerLogin,
        shard: u32,
    ) -> Result<PooledConn, CheckoutError> {
        let primary = self.primary(shard)?;
        let pool = self
            .pool(primary, &login.role, login.password.as_ref(), false)
            .map_err(|_| CheckoutError::UnknownShard(shard))?;
        self.checkout(&pool, primary).await
    }

    /// After `first` found `shard` without a reachable primary: waits for a new one (see
    /// [`super::failover_buffer`]).
    async fn hold_for_primary(
        &self,
        login: &ServerLogin,
        shard: u32,
        first: CheckoutError,
    ) -> Result<PooledConn, CheckoutError> {
        let (topology, limit) = (&self.topology, self.failover_buffer);
        super::failover_buffer::hold(topology, shard, limit, &self.buffered, first, || {
            self.primary_once(login, shard)
        })
        .await
    }

    /// A connection to `shard`'s current primary as pgshard's control-plane login
    /// (`[control_plane]`, else the shard's `[server_auth]` login): for work no client does, such
    /// as finishing a prepared transaction whose coordinator's connection failed.
    pub async fn get_control(&self, shard: u32) -> Result<PooledConn, CheckoutError> {
        let primary = self.primary(shard)?;
        let (role, password) = {
            let servers = self.servers.read().unwrap_or_else(|p| p.into_inner());
            let (shard_config, _) = servers
                .get(&primary)
                .ok_or(CheckoutError::UnknownShard(shard))?;
            match &self.control_plane {
                Some(cp) => (cp.user.clone(), cp.password.clone()),
                None => (
                    shard_config.login_user(&self.auth).to_string(),
                    shard_config.login_password(&self.auth).map(str::to_string),
                ),
            }
        };
        let pool = self
            .pool(
                primary,
                &Arc::from(role.as_str()),
                password.map(Arc::from).as_ref(),
                true,
            )
            .map_err(|_| CheckoutError::UnknownShard(shard))?;
        self.checkout(&pool, primary).await
    }

    fn primary(&self, shard: u32) -> Result<ServerId, CheckoutError> {
        match self.topology.primary(shard) {
            Some(primary) => Ok(primary),
            None if self
                .servers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&ServerId { shard, index: 0 }) =>
            {
                Err(CheckoutError::NoPrimary {
                    shard,
                    detail: "no server of it is trusted with writes; see the topology".into(),
                })
            }
            None => Err(CheckoutError::UnknownShard(shard)),
        }
    }

    async fn checkout(
        &self,
        pool: &Pool<ServerManager>,
        id: ServerId,
    ) -> Result<PooledConn, CheckoutError> {
        let shard = id.shard;
        let timeouts = |wait| managed::Timeouts {
            wait: Some(wait),
            create: None,
            recycle: None,
        };
        // The clock is read only when the wait is recorded (metrics on).
        let started = crate::telemetry::record::pool_waits_recorded().then(Instant::now);
        // No idle connection in the pool but one parked with a client: that one, not a new
        // server connection (parked connections are only checked for when some are parked).
        let parking = &pool.manager().parking;
        if parking.parked() > 0 && pool.status().available == 0 {
            parking.reclaim_one();
        }
        // A free slot is taken without arming a timer (a wait of zero only tries); the timed
        // wait is for a pool that is full.
        let got = match pool.timeout_get(&timeouts(Duration::ZERO)).await {
            Err(PoolError::Timeout(managed::TimeoutType::Wait)) => {
                // Full: a connection parked with a client between its transactions comes back
                // for this checkout, and none parks while it waits.
                let _waiting = parking.wait();
                pool.timeout_get(&timeouts(self.checkout_timeout)).await
            }
            got => got,
        };
        if let Some(started) = started {
            crate::telemetry::record::pool_waited(started.elapsed());
        }
        got.map_err(|e| match e {
            PoolError::Timeout(_) => CheckoutError::Timeout(shard),
            PoolError::Backend(
                b @ (BackendError::Connect { .. } | BackendError::ConnectTimeout { .. }),
            ) if self.topology.primary(shard) == Some(id) => CheckoutError::NoPrimary {
                shard,
                detail: b.to_string(),
            },
            PoolError::Backend(b) => CheckoutError::Backend(Box::new(b)),
            other => CheckoutError::Pool {
                shard,
                message: other.to_string(),
            },
        })
    }

    /// Size and availability per server, all its pools added up, for metrics.
    pub fn status(&self) -> Vec<(ServerId, deadpool::Status)> {
        let mut per_server: std::collections::BTreeMap<ServerId, deadpool::Status> =
            std::collections::BTreeMap::new();
        for p in self.pool_status() {
            let sum = per_server.entry(p.server).or_insert(deadpool::Status {
                max_size: 0,
                size: 0,
                available: 0,
                waiting: 0,
            });
            sum.max_size += p.status.max_size;
            sum.size += p.status.size;
            sum.available += p.status.available;
            sum.waiting += p.status.waiting;
        }
        per_server.into_iter().collect()
    }

    /// Every pool: its server, role and state, ordered by server, then role.
    pub fn pool_status(&self) -> Vec<PoolStatus> {
        let pools = self.pools.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = pools
            .iter()
            .map(|(key, pool)| {
                let mut status = pool.status();
                // A connection parked with a client is idle: any checkout can have it.
                status.available =
                    (status.available + pool.manager().parking.parked()).min(status.size);
                PoolStatus {
                    server: key.server,
                    role: key.role.to_string(),
                    control: key.control,
                    status,
                    prepared: pool.manager().prepared.load(Ordering::Relaxed),
                }
            })
            .collect();
        v.sort_by(|a, b| (a.server, a.control, &a.role).cmp(&(b.server, b.control, &b.role)));
        v
    }

    /// Closes `server`'s idle connections and those in use as they come back, in the pools of
    /// every role: writes no longer go there (failover, fencing).
    pub fn drain(&self, server: ServerId) {
        let pools: Vec<Pool<ServerManager>> = self
            .pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(key, _)| key.server == server)
            .map(|(_, pool)| pool.clone())
            .collect();
        let mut closed = 0;
        for pool in pools {
            *pool
                .manager()
                .drained_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            pool.manager().drained.store(true, Ordering::Release);
            pool.manager().parking.release_all();
            closed += pool.retain(|_, _| false).removed.len();
        }
        tracing::info!(%server, closed, "drained the pools of a server writes no longer go to");
    }

    /// Makes `shard`'s servers those of `config` (a shard added to or changed in the catalog's
    /// topology): a server at a new address gets new pools, with the roles every other server
    /// has pools for; pools of servers that left or moved are closed.
    pub fn set_shard(&self, config: &ShardConfig) {
        let new = shard_servers(config);
        let stale: Vec<ServerId> = {
            let mut servers = self.servers.write().unwrap_or_else(|p| p.into_inner());
            let stale = servers
                .iter()
                .filter(|(id, (_, address))| {
                    id.shard == config.id && new.get(id).is_none_or(|(_, a)| a != address)
                })
                .map(|(id, _)| *id)
                .collect();
            servers.extend(new.iter().map(|(id, v)| (*id, v.clone())));
            servers.retain(|id, _| id.shard != config.id || new.contains_key(id));
            stale
        };
        self.close_pools(|id| stale.contains(&id));
        let logins: Vec<(Arc<str>, Option<Arc<str>>)> = {
            let pools = self.pools.read().unwrap_or_else(|p| p.into_inner());
            let mut logins: Vec<_> = pools
                .iter()
                .filter(|(key, _)| !key.control)
                .map(|(key, pool)| {
                    let password = pool
                        .manager()
                        .password
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    (key.role.clone(), password)
                })
                .collect();
            logins.sort();
            logins.dedup_by(|a, b| a.0 == b.0);
            logins
        };
        for id in new.keys() {
            for (role, password) in &logins {
                if let Err(e) = self.pool(*id, role, password.as_ref(), false) {
                    tracing::warn!(server = %id, error = %e, "cannot build a pool");
                }
            }
        }
    }

    /// Connections of each client pool now.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Gives every client pool `size` connections at most (a reload changed `pool.size`); a
    /// smaller pool closes its surplus idle connections and the rest as they come back.
    pub fn resize(&self, size: usize) {
        self.size.store(size, Ordering::Relaxed);
        for (key, pool) in self.pools.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if !key.control {
                pool.manager().parking.release_all();
                pool.resize(size);
            }
        }
    }

    /// Forgets `shard` and closes every pool of its servers (dropped from the topology).
    pub fn remove_shard(&self, shard: u32) {
        self.servers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| id.shard != shard);
        self.close_pools(|id| id.shard == shard);
    }

    /// Removes and closes the pools of the servers `which` picks: waiting checkouts fail, and
    /// connections in use are dropped when they come back.
    fn close_pools(&self, which: impl Fn(ServerId) -> bool) {
        let mut closed = Vec::new();
        self.pools
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, pool| {
                let keep = !which(key.server);
                if !keep {
                    closed.push((key.server, pool.clone()));
                }
                keep
            });
        for (server, pool) in closed {
            pool.manager().parking.release_all();
            pool.close();
            tracing::info!(%server, "closed the pool of a server that left the topology");
        }
    }

    /// Drops a connection instead of returning it to the pool.
    pub fn discard(conn: PooledConn) {
        let _ = Object::take(conn);
    }
}

/// A shard's servers by id: its primary as server 0, its replicas from 1.
fn shard_servers(shard: &ShardConfig) -> HashMap<ServerId, (ShardConfig, String)> {
    std::iter::once(shard.address())
        .chain(shard.replicas.iter().map(|r| r.address()))
        .enumerate()
        .map(|(index, address)| {
            let id = ServerId {
                shard: shard.id,
                index: index as u16,
            };
            (id, (shard.clone(), address))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMethod;

    #[test]
    fn a_login_runs_as_its_server_role_with_the_password_given_for_that_role() {
        let mut users = vec![
            UserConfig::new("app", Some("a"), AuthMethod::ScramSha256),
            UserConfig::new("web", Some("w"), AuthMethod::ScramSha256),
            UserConfig::new("report", Some("r"), AuthMethod::Md5),
        ];
        users[0].server_password = Some("app-on-shards".into());
        users[1].server_user = Some("app".into());
        let web = ServerLogin::for_user(&users, &users[1]);
        assert_eq!(&*web.role, "app");
        assert_eq!(web.password.as_deref(), Some("app-on-shards"));
        assert_eq!(ServerLogin::for_user(&users, &users[0]), web);
        let report = ServerLogin::for_user(&users, &users[2]);
        assert_eq!(
            (&*report.role, report.password.as_deref()),
            ("report", None)
        );
    }
}
