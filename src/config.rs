//! The proxy's TOML configuration: parsed with serde, unknown keys rejected, then validated so that
//! every mistake names the key and the file before anything starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod lookups;
mod redact;
pub mod schemas;
mod secrets;

pub use redact::{mask_url, MASK};

/// Why a configuration could not be used; every variant names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole configuration of one proxy process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tables copied whole to every shard (small lookup tables such as `countries`): reads go to any
    /// one shard, writes and DDL to all of them in one atomic transaction. Listed first so the TOML
    /// writer emits this plain array before any table.
    #[serde(default)]
    pub reference_tables: Vec<String>,
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Login hardening: the delay before a failed login is answered, the per-address limit.
    #[serde(default)]
    pub auth: AuthConfig,
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    pub server_auth: ServerAuthConfig,
    pub shards: Vec<ShardConfig>,
    #[serde(default)]
    pub sharded_tables: Vec<ShardedTableConfig>,
    /// Schemas placed whole on one shard each (schema-based sharding, see `config/schemas.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sharded_schemas: Vec<schemas::ShardedSchemaConfig>,
    /// Which new schemas are tenants, placed by pgshard when created (see `config/schemas.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<schemas::TenantsConfig>,
    /// Unique secondary columns read through a lookup table (see `config/lookups.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<lookups::LookupConfig>,
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default)]
    pub transactions: TransactionsConfig,
    #[serde(default)]
    pub replicas: ReplicasConfig,
    /// The Prometheus endpoint; absent means no metrics are collected or served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// TLS for clients; absent means SSLRequest is answered `N` and direct TLS is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// TLS to the Postgres servers (shards, replicas, catalog); absent means plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls: Option<ServerTlsConfig>,
    /// The privileged credential of control-plane work on shards (monitors, start-up checks,
    /// two-phase commit recovery, publications, subscriptions and replication slots of
    /// rebalancing); absent means `[server_auth]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneConfig>,
    /// Bounds of online rebalancing jobs.
    #[serde(default)]
    pub rebalance: RebalanceConfig,
    /// The compatibility report (`SHOW COMPAT`); absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat: Option<CompatConfig>,
}

/// `[compat]`: run every statement on the one configured shard as it is, and report what each
/// would do over `shards` shards (see `compat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatConfig {
    /// How many shards the report imagines.
    pub shards: u32,
    /// Distinct statements kept; the least recently seen give way.
    #[serde(default = "default_compat_statements")]
    pub max_statements: usize,
}

fn default_compat_statements() -> usize {
    10_000
}

/// A separate login for privileged shard operations: CREATE SUBSCRIPTION needs a superuser (on
/// Postgres 15), and so does finishing another role's prepared transaction; clients never run as
/// it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
}

/// Timeouts and sizes of rebalancing jobs (see README, "Rebalancing").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceConfig {
    /// How long creating a replication slot may wait for the source's open transactions.
    #[serde(default = "default_slot_timeout_ms")]
    pub slot_timeout_ms: u64,
    /// How long a cut-over may wait for in-flight transactions before it releases the hold on
    /// the old map and retries later.
    #[serde(default = "default_hold_timeout_ms")]
    pub hold_timeout_ms: u64,
    /// How long a job's lease lasts without renewal; a proxy killed while running a job loses it
    /// after this, and the next proxy resumes the job.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Rows a clean-up statement reads (and at most deletes): the page range it covers holds
    /// about this many, by the table's statistics.
    #[serde(default = "default_delete_batch")]
    pub delete_batch: i64,
    /// Whether this proxy runs rebalancing jobs it finds in the catalog.
    #[serde(default = "default_true")]
    pub run_jobs: bool,
    /// Steps of a job that copy, compare or clean up at once: each is a busy server process
    /// beside the clients' (fewer spread the same work over more time, and copy slower).
    #[serde(default = "default_steps_at_once")]
    pub steps_at_once: usize,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            slot_timeout_ms: default_slot_timeout_ms(),
            hold_timeout_ms: default_hold_timeout_ms(),
            lease_ms: default_lease_ms(),
            delete_batch: default_delete_batch(),
            run_jobs: true,
            steps_at_once: default_steps_at_once(),
        }
    }
}

fn default_slot_timeout_ms() -> u64 {
    30_000
}
fn default_hold_timeout_ms() -> u64 {
    2_000
}
fn default_lease_ms() -> u64 {
    10_000
}
fn default_delete_batch() -> i64 {
    5_000
}
fn default_steps_at_once() -> usize {
    16
}
fn default_true() -> bool {
    true
}

/// How pgshard protects and checks its own connections to Postgres servers, with libpq's
/// `sslmode` meanings so that operators can reason about it the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    #[serde(default)]
    pub mode: ServerTlsMode,
    /// PEM file with the certificate authorities a server's certificate must chain to
    /// (required by `verify-ca` and `verify-full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to servers that ask for a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
}

/// Whether server connections use TLS and what is checked (libpq's `sslmode` values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted; the server's certificate is not checked.
    Require,
    /// Encrypted; the certificate must chain to `ca_file`.
    VerifyCa,
    /// Encrypted; the certificate must chain to `ca_file` and name the host connected to.
    VerifyFull,
}

impl ServerTlsMode {
    /// The value as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// The certificate clients see and whether they must use TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Whether a client may log in without TLS.
    #[serde(default)]
    pub mode: TlsMode,
}

/// Whether clients must use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// TLS when the client asks for it, plain otherwise.
    #[default]
    Allow,
    /// A client that logs in without TLS is refused (FATAL 28000).
    Require,
}

/// Where Prometheus scrapes `/metrics`. The endpoint has no authentication, so it listens on a
/// loopback address unless `allow_remote` says the network around it is private (a container
/// network).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP endpoint, e.g. `127.0.0.1:9930`.
    pub listen: String,
    /// Permits a non-loopback `listen` (e.g. `0.0.0.0:9930` inside docker compose).
    #[serde(default)]
    pub allow_remote: bool,
}

/// Where the proxy listens and which logical database it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `host:port` the client listener binds to.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The database name clients put in their connection string.
    #[serde(default = "default_database")]
    pub database: String,
    /// A name for this proxy in the catalog's list of live proxies.
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Largest message a client may send, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Clients connected at once; the next one is refused with 53300 (0: no limit).
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Log filter (`info`, `debug`, `pgshard=debug,warn`…); `PGSHARD_LOG` or `RUST_LOG` override it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// On SIGTERM, how long a client inside a transaction block may take to finish it before it
    /// is disconnected and its block rolled back.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// A client idle inside a transaction block longer than this is disconnected with 25P03 and
    /// its block rolled back (0: no limit).
    #[serde(default)]
    pub idle_in_transaction_timeout_ms: u64,
    /// A request running longer than this is cancelled on its servers with 57014 (0: no limit).
    #[serde(default)]
    pub query_timeout_ms: u64,
    /// From connecting to being logged in (startup packet and password exchange); a client that
    /// takes longer is disconnected with 08P01 and holds no client slot any more.
    #[serde(default = "default_login_timeout_ms")]
    pub login_timeout_ms: u64,
    /// Once the first byte of a client's message has arrived, the rest must follow within this
    /// long, or the client is disconnected with 08P01 (0: no limit).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
}

/// How failed logins are slowed down and limited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A failed password check is answered only after this long (the session waits without
    /// blocking anyone else), which slows down guessing.
    #[serde(default = "default_failed_login_delay_ms")]
    pub failed_login_delay_ms: u64,
    /// Failed logins one client address may have in a minute; beyond it, every login from that
    /// address is refused with 28000 until the minute is over (0: no limit).
    #[serde(default = "default_max_failed_logins_per_minute")]
    pub max_failed_logins_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            failed_login_delay_ms: default_failed_login_delay_ms(),
            max_failed_logins_per_minute: default_max_failed_logins_per_minute(),
        }
    }
}

fn default_failed_login_delay_ms() -> u64 {
    500
}
fn default_max_failed_logins_per_minute() -> u32 {
    20
}
fn default_login_timeout_ms() -> u64 {
    // As Postgres's authentication_timeout and PgBouncer's client_login_timeout: in a storm,
    // clients busy hashing their own SCRAM proofs take seconds.
    60_000
}
fn default_message_timeout_ms() -> u64 {
    30_000
}

/// A client login: name, secret and how it is checked.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plain text, a `SCRAM-SHA-256$…` verifier (scram only) or an `md5…` hash (md5 only); or
    /// `env:NAME` / `file:PATH` to read it from there (see [`Config::load`]).
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub auth: AuthMethod,
    /// May log into the admin console (database `pgshard`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// The role this client's statements run as on the shards; absent: the client's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_user: Option<String>,
    /// The password pgshard logs into the shards with as `server_user` (plain text, or `env:` /
    /// `file:`). Absent: `[server_auth]`'s password when `server_user` is `[server_auth]`'s user,
    /// else none (the servers must then let that role in without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_password: Option<String>,
    /// False: every statement of this user that would reach more than one shard is refused
    /// (0A000 naming the table and its missing key), so an application can prove it is keyed.
    #[serde(default = "default_allow_scatter", skip_serializing_if = "is_true")]
    pub allow_scatter: bool,
}

fn default_allow_scatter() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl UserConfig {
    /// A client login `name` with `password`, checked by `auth`, running as its own role.
    pub fn new(name: &str, password: Option<&str>, auth: AuthMethod) -> UserConfig {
        UserConfig {
            name: name.into(),
            password: password.map(str::to_string),
            auth,
            admin: false,
            server_user: None,
            server_password: None,
            allow_scatter: true,
        }
    }

    /// The role this client's statements run as on the shards.
    pub fn server_role(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

/// The catalog database holding the shard map and the list of proxies.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// A libpq-style URL, `postgres://user:password@host:port/db`.
    pub url: String,
    /// How often the map version is re-read even without a NOTIFY.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

/// How server connections are pooled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default)]
    pub mode: PoolMode,
    /// Server connections per shard, per proxy.
    #[serde(default = "default_pool_size")]
    pub size: usize,
    /// How many proxies share the shards: `size * proxies` must fit `max_connections`.
    #[serde(default = "default_proxies")]
    pub proxies: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a client waits for a free server connection before an error.
    #[serde(default = "default_checkout_timeout_ms")]
    pub checkout_timeout_ms: u64,
    /// Server-side prepared statements one server connection keeps (least recently used ones are
    /// closed beyond it; 0: no limit), so drivers preparing every statement cannot grow a
    /// server's memory without bound.
    #[serde(default = "default_max_prepared_statements")]
    pub max_prepared_statements: usize,
    /// While a shard has no reachable primary (a promotion under way), how long a statement
    /// waits for the new one before it fails (0: fail at once).
    #[serde(default = "default_failover_buffer_ms")]
    pub failover_buffer_ms: u64,
}

/// Transaction pooling returns a server connection at the end of each transaction; session pooling
/// keeps it for the client's whole session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Transaction,
    Session,
}

/// pgshard's own login on every shard (per-shard overrides in `[[shards]]`): its monitors, start-up
/// checks and, without `[control_plane]`, its control plane. Clients do not run as it: each runs as
/// its `[[users]]` entry's `server_user`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAuthConfig {
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Lets a client's server role be a superuser, or a member of `pg_execute_server_program`,
    /// `pg_write_server_files` or `pg_read_server_files` (refused at start-up and on SIGHUP
    /// otherwise: such a client could run programs and read or write files on the shards' hosts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_superuser_clients: bool,
}

/// One shard's primary.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub id: u32,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    pub database: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Streaming replicas of this shard, which may serve reads (see `[replicas]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaConfig>,
}

/// One streaming replica of a shard; it logs in like its primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
}

impl ReplicaConfig {
    /// `host:port` of the replica.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Where reads outside a writing transaction may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Always the primary.
    #[default]
    Primary,
    /// A healthy replica within the lag bound, else the primary.
    Replicas,
    /// Any healthy server, primary included.
    Any,
}

/// How a read picks among the servers it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The server that has replayed the most WAL.
    LeastLag,
    Random,
}

/// What a session is promised about reading its own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// No promise: a read right after a write may see older data on a replica.
    Off,
    /// After a write, the session reads from the primary for `pin_window_ms`.
    Pin,
    /// A read goes to a replica only once it has replayed the session's last write.
    #[default]
    Lsn,
}

/// Read routing over streaming replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasConfig {
    #[serde(default)]
    pub read_from: ReadFrom,
    #[serde(default)]
    pub balance: Balance,
    /// A replica further behind its primary than this many bytes of WAL serves no reads
    /// (0: no byte bound).
    #[serde(default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// …or than this many milliseconds of replay (0: no time bound).
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    #[serde(default)]
    pub read_your_writes: ReadYourWrites,
    #[serde(default = "default_pin_window_ms")]
    pub pin_window_ms: u64,
    /// How long a read waits for a replica to replay the session's writes before it goes to
    /// the primary. 0 (the default): the replica is asked once, and a replica still behind sends
    /// the read to the primary at once, so no read waits for replay.
    #[serde(default = "default_lsn_wait_timeout_ms")]
    pub lsn_wait_timeout_ms: u64,
    /// How often each server's role, position and health are sampled.
    #[serde(default = "default_monitor_interval_ms")]
    pub monitor_interval_ms: u64,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        ReplicasConfig {
            read_from: ReadFrom::default(),
            balance: Balance::default(),
            max_lag_bytes: default_max_lag_bytes(),
            max_lag_ms: default_max_lag_ms(),
            read_your_writes: ReadYourWrites::default(),
            pin_window_ms: default_pin_window_ms(),
            lsn_wait_timeout_ms: default_lsn_wait_timeout_ms(),
            monitor_interval_ms: default_monitor_interval_ms(),
        }
    }
}

fn default_max_lag_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_lag_ms() -> u64 {
    10_000
}
fn default_pin_window_ms() -> u64 {
    1_000
}
fn default_lsn_wait_timeout_ms() -> u64 {
    0
}
fn default_monitor_interval_ms() -> u64 {
    200
}

/// A table split across shards by one key column.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTableConfig {
    pub name: String,
    pub key: String,
    /// The key column's type (`bigint`, `integer`, `smallint`, `uuid`, `text`, `varchar`): read
    /// from the shards' catalog at start-up and checked against this when given; needed when the
    /// table is created after the proxy starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<crate::router::KeyType>,
}

/// Router tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Entries in the route cache (statement shapes).
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

/// Transactions that span several shards (two-phase commit).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionsConfig {
    /// `lock_timeout` given to every participant once a transaction reaches a second shard:
    /// Postgres sees deadlocks only within one server, so a cross-shard deadlock ends in an error
    /// after this long instead of hanging. 0 leaves the server's setting alone.
    #[serde(default = "default_cross_shard_lock_timeout_ms")]
    pub cross_shard_lock_timeout_ms: u64,
    /// A prepared transaction with no logged decision that is older than this is presumed
    /// abandoned by its coordinator and rolled back by recovery.
    #[serde(default = "default_in_doubt_grace_ms")]
    pub in_doubt_grace_ms: u64,
    /// How often every shard is checked for in-doubt prepared transactions.
    #[serde(default = "default_recovery_interval_ms")]
    pub recovery_interval_ms: u64,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        TransactionsConfig {
            cross_shard_lock_timeout_ms: default_cross_shard_lock_timeout_ms(),
            in_doubt_grace_ms: default_in_doubt_grace_ms(),
            recovery_interval_ms: default_recovery_interval_ms(),
        }
    }
}

fn default_cross_shard_lock_timeout_ms() -> u64 {
    5_000
}
fn default_in_doubt_grace_ms() -> u64 {
    10_000
}
fn default_recovery_interval_ms() -> u64 {
    10_000
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_database() -> String {
    "app".into()
}
fn default_node_name() -> String {
    "pgshard".into()
}
fn default_max_message_size() -> usize {
    64 * 1024 * 1024
}
fn default_max_clients() -> usize {
    1000
}
fn default_log_level() -> String {
    "info".into()
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_poll_interval_ms() -> u64 {
    5_000
}
fn default_pool_size() -> usize {
    20
}
fn default_proxies() -> usize {
    1
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_checkout_timeout_ms() -> u64 {
    10_000
}
fn default_failover_buffer_ms() -> u64 {
    5_000
}
fn default_max_prepared_statements() -> usize {
    2_000
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_cache_size() -> usize {
    10_000
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::default(),
            size: default_pool_size(),
            proxies: default_proxies(),
            connect_timeout_ms: default_connect_timeout_ms(),
            checkout_timeout_ms: default_checkout_timeout_ms(),
            max_prepared_statements: default_max_prepared_statements(),
            failover_buffer_ms: default_failover_buffer_ms(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: default_listen(),
            database: default_database(),
            node_name: default_node_name(),
            max_message_size: default_max_message_size(),
            max_clients: default_max_clients(),
            log_level: default_log_level(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            idle_in_transaction_timeout_ms: 0,
            query_timeout_ms: 0,
            login_timeout_ms: default_login_timeout_ms(),
            message_timeout_ms: default_message_timeout_ms(),
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            cache_size: default_cache_size(),
        }
    }
}

impl PoolConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms)
    }
    pub fn failover_buffer(&self) -> Duration {
        Duration::from_millis(self.failover_buffer_ms)
    }
}

impl ShardConfig {
    /// The user pgshard logs into this shard as.
    pub fn login_user<'a>(&'a self, auth: &'a ServerAuthConfig) -> &'a str {
        self.user.as_deref().unwrap_or(&auth.user)
    }
    /// The password pgshard logs into this shard with, if any.
    pub fn login_password<'a>(&'a self, auth: &'a ServerAuthConfig) -> Option<&'a str> {
        self.password.as_deref().or(auth.password.as_deref())
    }
    /// `host:port` of the shard's primary.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` names the file in error messages, and relative
    /// `file:` secrets are read from its directory. Secret fields (passwords, the catalog URL)
    /// written `env:NAME` or `file:PATH` are replaced by the variable's value or the file's
    /// contents (one trailing newline dropped).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        secrets::resolve(&mut config, path)?;
        config.validate(path)?;
        lookups::expand(&mut config);
        Ok(config)
    }

    /// Serialises the config back to TOML (the demo writes its generated config this way).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.proxy.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "proxy.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:6432",
                    self.proxy.listen
                ),
            ));
        }
        if let Some(compat) = &self.compat {
            if compat.shards == 0 || self.shards.len() != 1 {
                return Err(invalid(
                    "compat.shards",
                    "the compatibility report runs in front of one unsharded database: list exactly one [[shards]] entry and imagine at least one shard".into(),
                ));
            }
        }
        if let Some(metrics) = &self.metrics {
            match metrics.listen.parse::<std::net::SocketAddr>() {
                Err(_) => {
                    return Err(invalid(
                        "metrics.listen",
                        format!(
                            "`{}` is not an address like 127.0.0.1:9930",
                            metrics.listen
                        ),
                    ))
                }
                Ok(addr) if !addr.ip().is_loopback() && !metrics.allow_remote => {
                    return Err(invalid(
                        "metrics.listen",
                        format!(
                            "`{}` is not a loopback address; the metrics endpoint has no authentication, so listen on 127.0.0.1, or set metrics.allow_remote = true when only a private network (a container network) can reach it",
                            metrics.listen
                        ),
                    ))
                }
                Ok(_) => {}
            }
        }
        if self.proxy.database.is_empty() {
            return Err(invalid("proxy.database", "must not be empty".into()));
        }
        if self.proxy.database == crate::ADMIN_DATABASE {
            return Err(invalid(
                "proxy.database",
                format!(
                    "`{}` is reserved for the admin console",
                    crate::ADMIN_DATABASE
                ),
            ));
        }
        if self.proxy.max_message_size < 1024 {
            return Err(invalid(
                "proxy.max_message_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.proxy.login_timeout_ms == 0 {
            return Err(invalid(
                "proxy.login_timeout_ms",
                "must be positive: a client that never logs in must not hold a connection forever"
                    .into(),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.proxy.log_level) {
            return Err(invalid("proxy.log_level", format!("not a log filter: {e}")));
        }
        if self.users.is_empty() {
            return Err(invalid(
                "users",
                "at least one [[users]] entry is needed".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if user.name.is_empty() {
                return Err(invalid(&format!("{key}.name"), "must not be empty".into()));
            }
            if !names.insert(user.name.as_str()) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("user `{}` is listed twice", user.name),
                ));
            }
            match (user.auth, user.password.as_deref()) {
                (AuthMethod::Trust, _) => {}
                (_, None) => {
                    return Err(invalid(
                        &format!("{key}.password"),
                        format!("user `{}` needs a password for {:?} auth", user.name, user.auth),
                    ))
                }
                (AuthMethod::Md5, Some(p)) if p.starts_with("SCRAM-SHA-256$") => {
                    return Err(invalid(
                        &format!("{key}.password"),
                        "a SCRAM verifier cannot check md5 logins; give the plain password or an md5 hash".into(),
                    ))
                }
                (AuthMethod::ScramSha256, Some(p)) if is_md5_hash(p) => {
                    return Err(invalid(
                        &format!("{key}.password"),
                        "an md5 hash cannot check SCRAM logins; give the plain password or a SCRAM-SHA-256 verifier".into(),
                    ))
                }
                _ => {}
            }
            if user.server_user.as_deref() == Some("") {
                return Err(invalid(
                    &format!("{key}.server_user"),
                    "must not be empty (leave it out to run as the client's own name)".into(),
                ));
            }
        }
        for (i, user) in self.users.iter().enumerate() {
            let Some(password) = user.server_password.as_deref() else {
                continue;
            };
            let clash = self.users[..i].iter().find(|other| {
                other.server_role() == user.server_role()
                    && other
                        .server_password
                        .as_deref()
                        .is_some_and(|p| p != password)
            });
            if let Some(other) = clash {
                return Err(invalid(
                    &format!("users[{i}].server_password"),
                    format!(
                        "users `{}` and `{}` both run as server role `{}` with different server_password values: give them the same one",
                        other.name,
                        user.name,
                        user.server_role()
                    ),
                ));
            }
        }
        if !self.catalog.url.starts_with("postgres://")
            && !self.catalog.url.starts_with("postgresql://")
        {
            return Err(invalid(
                "catalog.url",
                "must be a URL like postgres://user:password@127.0.0.1:5432/catalog".into(),
            ));
        }
        if self.catalog.poll_interval_ms == 0 {
            return Err(invalid(
                "catalog.poll_interval_ms",
                "must be positive".into(),
            ));
        }
        if self.pool.size == 0 {
            return Err(invalid("pool.size", "must be at least 1".into()));
        }
        if self.pool.proxies == 0 {
            return Err(invalid("pool.proxies", "must be at least 1".into()));
        }
        if self.shards.is_empty() {
            return Err(invalid(
                "shards",
                "at least one [[shards]] entry is needed".into(),
            ));
        }
        let mut ids = HashSet::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if !ids.insert(shard.id) {
                return Err(invalid(
                    &format!("shards[{i}].id"),
                    format!("shard id {} is listed twice", shard.id),
                ));
            }
        }
        let mut tables = HashSet::new();
        for (i, table) in self.sharded_tables.iter().enumerate() {
            if table.name.is_empty() || table.key.is_empty() {
                return Err(invalid(
                    &format!("sharded_tables[{i}]"),
                    "name and key must not be empty".into(),
                ));
            }
            if !tables.insert(table.name.to_ascii_lowercase()) {
                return Err(invalid(
                    &format!("sharded_tables[{i}].name"),
                    format!("table `{}` is listed twice", table.name),
                ));
            }
        }
        for (i, name) in self.reference_tables.iter().enumerate() {
            let key = format!("reference_tables[{i}]");
            if name.is_empty() {
                return Err(invalid(&key, "must not be empty".into()));
            }
            if !tables.insert(name.to_ascii_lowercase()) {
                return Err(invalid(
                    &key,
                    format!("table `{name}` is listed twice (or is also a sharded table)"),
                ));
            }
        }
        schemas::validate(self, path)?;
        lookups::validate(self, path)?;
        if let Some(cp) = &self.control_plane {
            if cp.user.is_empty() {
                return Err(invalid("control_plane.user", "must not be empty".into()));
            }
        }
        if self.rebalance.steps_at_once < 1 {
            return Err(invalid(
                "rebalance.steps_at_once",
                "must be at least 1".into(),
            ));
        }
        if self.rebalance.delete_batch < 1 {
            return Err(invalid(
                "rebalance.delete_batch",
                "must be at least 1".into(),
            ));
        }
        if self.rebalance.lease_ms < 1000 {
            return Err(invalid(
                "rebalance.lease_ms",
                "must be at least 1000 ms".into(),
            ));
        }
        if self.router.cache_size == 0 {
            return Err(invalid("router.cache_size", "must be at least 1".into()));
        }
        if let Some(tls) = &self.server_tls {
            let verifies = matches!(
                tls.mode,
                ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
            );
            if verifies && tls.ca_file.is_none() {
                return Err(invalid(
                    "server_tls.ca_file",
                    format!(
                        "mode = \"{}\" checks server certificates against a CA: give the PEM file of the CA that signed them",
                        tls.mode.name()
                    ),
                ));
            }
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                let missing = if tls.client_cert.is_none() {
                    "server_tls.client_cert"
                } else {
                    "server_tls.client_key"
                };
                return Err(invalid(
                    missing,
                    "client_cert and client_key go together: give both or neither".into(),
                ));
            }
        }
        Ok(())
    }

    /// The shard config with this id.
    pub fn shard(&self, id: u32) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// The login for privileged control-plane work on `shard`: `[control_plane]`, else the shard's
    /// own login.
    pub fn control_login<'a>(&'a self, shard: &'a ShardConfig) -> (&'a str, Option<&'a str>) {
        match &self.control_plane {
            Some(cp) => (cp.user.as_str(), cp.password.as_deref()),
            None => (
                shard.login_user(&self.server_auth),
                shard.login_password(&self.server_auth),
            ),
        }
    }

    /// The user entry for a login name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The distinct server roles clients run as (the data path's roles), sorted.
    pub fn data_roles(&self) -> Vec<String> {
        data_roles(&self.users)
    }
}

/// The distinct server roles of these users, sorted.
pub fn data_roles(users: &[UserConfig]) -> Vec<String> {
    let roles: std::collections::BTreeSet<&str> =
        users.iter().map(UserConfig::server_role).collect();
    roles.into_iter().map(str::to_string).collect()
}

/// The password pgshard logs into `shard` with as a client's `role`: the user entry's
/// `server_password`, else `[server_auth]`'s (or the shard's override) when `role` is that login's
/// user, else none.
pub fn server_password<'a>(
    role: &str,
    explicit: Option<&'a str>,
    shard: &'a ShardConfig,
    auth: &'a ServerAuthConfig,
) -> Option<&'a str> {
    explicit.or_else(|| {
        (role == shard.login_user(auth))
            .then(|| shard.login_password(auth))
            .flatten()
    })
}

/// Whether a stored password is an md5 hash (`md5` and 32 hex digits) rather than plain text.
pub fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:6432"

[[users]]
name = "app"
password = "app"

[catalog]
url = "postgres://pgshard:pgshard@127.0.0.1:5500/catalog"

[server_auth]
user = "pgshard"
password = "pgshard"

[[shards]]
id = 0
port = 5501
database = "app"

[[sharded_tables]]
name = "users"
key = "user_id"
"#;

    #[test]
    fn parses_a_minimal_config_with_defaults() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
        assert_eq!(c.shards[0].address(), "127.0.0.1:5501");
        assert_eq!(c.proxy.database, "app");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let text = GOOD.replace("[proxy]", "[proxy]\nlisen = \"x\"");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("t.toml"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let text = GOOD.replace("listen = \"127.0.0.1:6432\"", "listen = \"nowhere\"");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.listen"), "{err}");
        let text = GOOD.replace("password = \"app\"\n", "");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("users[0].password"), "{err}");
    }

    #[test]
    fn steps_at_once_defaults_to_sixteen_and_must_be_positive() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(c.rebalance.steps_at_once, 16);
        for (value, ok) in [("0", false), ("1", true), ("3", true)] {
            let text = format!("{GOOD}\n[rebalance]\nsteps_at_once = {value}\n");
            let r = Config::from_toml(&text, Path::new("t.toml"));
            assert_eq!(r.is_ok(), ok, "{value}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("rebalance.steps_at_once"), "{e}");
            }
        }
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../config/pgshard.toml");
        let c = Config::from_toml(text, Path::new("config/pgshard.toml")).unwrap();
        assert_eq!(c.shards.len(), 10);
    }

    #[test]
    fn the_compose_config_is_valid_and_names_the_compose_services() {
        let text = include_str!("../config/compose.toml");
        let c = Config::from_toml(text, Path::new("config/compose.toml")).unwrap();
        assert_eq!(c.shards.len(), 10);
        for (i, shard) in c.shards.iter().enumerate() {
            assert_eq!(shard.id, i as u32);
            assert_eq!(shard.address(), format!("shard{i}:5432"));
        }
        assert!(
            c.catalog.url.contains("@catalog:5432/"),
            "{}",
            c.catalog.url
        );
        assert_eq!(c.proxy.listen, "0.0.0.0:6432");
        let metrics = c.metrics.expect("compose scrapes pgshard:9930");
        assert_eq!(metrics.listen, "0.0.0.0:9930");
    }

    #[test]
    fn metrics_listen_on_loopback_unless_remote_is_allowed() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        assert!(c.metrics.is_none());
        let text = format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9930\"\n");
        let c = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        let again = Config::from_toml(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(
            again.metrics.map(|m| m.listen).as_deref(),
            Some("127.0.0.1:9930")
        );
        let text = format!("{GOOD}\n[metrics]\nlisten = \"[::1]:9930\"\n");
        assert!(Config::from_toml(&text, Path::new("t.toml")).is_ok());
        let text = format!("{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9930\"\n");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.listen"), "{err}");
        assert!(err.contains("allow_remote"), "{err}");
        let text = format!("{GOOD}\n[metrics]\nlisten = \"0.0.0.0:9930\"\nallow_remote = true\n");
        assert!(Config::from_toml(&text, Path::new("t.toml")).is_ok());
        let text = format!("{GOOD}\n[metrics]\nlisten = \"localhost\"\n");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.listen"), "{err}");
    }

    #[test]
    fn tls_section_parses_with_allow_as_the_default_mode() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        assert!(c.tls.is_none());
        let text = format!("{GOOD}\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n");
        let tls = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.mode, TlsMode::Allow);
        assert_eq!(tls.cert, PathBuf::from("c.pem"));
        let text = format!("{text}mode = \"require\"\n");
        let c = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        let again = Config::from_toml(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(again.tls.map(|t| t.mode), Some(TlsMode::Require));
        let text = format!("{GOOD}\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nmode = \"prefer\"\n");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefer"), "{err}");
    }

    #[test]
    fn server_tls_defaults_to_disable_and_verify_modes_need_a_ca() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        assert!(c.server_tls.is_none());
        let text = format!("{GOOD}\n[server_tls]\nmode = \"require\"\n");
        let c = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        let again = Config::from_toml(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(
            again.server_tls.map(|t| t.mode),
            Some(ServerTlsMode::Require)
        );
        for mode in ["verify-ca", "verify-full"] {
            let text = format!("{GOOD}\n[server_tls]\nmode = \"{mode}\"\n");
            let err = Config::from_toml(&text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("server_tls.ca_file") && err.contains(mode),
                "{err}"
            );
            let text = format!("{text}ca_file = \"ca.pem\"\n");
            let tls = Config::from_toml(&text, Path::new("t.toml"))
                .unwrap()
                .server_tls
                .unwrap();
            assert_eq!(tls.mode.name(), mode);
            assert_eq!(tls.ca_file, Some(PathBuf::from("ca.pem")));
        }
        let text = format!("{GOOD}\n[server_tls]\nmode = \"require\"\nclient_cert = \"c.pem\"\n");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server_tls.client_key"), "{err}");
        let text = format!("{GOOD}\n[server_tls]\nmode = \"prefer\"\n");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefer"), "{err}");
    }

    #[test]
    fn the_shipped_pgbench_config_is_valid() {
        let text = include_str!("../config/pgbench.toml");
        let c = Config::from_toml(text, Path::new("config/pgbench.toml")).unwrap();
        let keys: Vec<(&str, &str)> = c
            .sharded_tables
            .iter()
            .map(|t| (t.name.as_str(), t.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("users", "user_id"),
                ("pgbench_accounts", "aid"),
                ("pgbench_branches", "bid"),
                ("pgbench_tellers", "tid"),
                ("pgbench_history", "aid"),
            ]
        );
    }

    #[test]
    fn reference_tables_are_checked() {
        let text = format!("reference_tables = [\"countries\", \"Currencies\"]\n{GOOD}");
        let c = Config::from_toml(&text, Path::new("t.toml")).unwrap();
        assert_eq!(c.reference_tables, ["countries", "Currencies"]);
        let again = Config::from_toml(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(again.reference_tables, c.reference_tables);
        let text = format!("reference_tables = [\"users\"]\n{GOOD}");
        let err = Config::from_toml(&text, Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reference_tables[0]"), "{err}");
        assert!(err.contains("also a sharded table"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::from_toml(GOOD, Path::new("t.toml")).unwrap();
        let again = Config::from_toml(&c.to_toml(), Path::new("t.toml")).unwrap();
        assert_eq!(again.shards.len(), 1);
        assert_eq!(again.sharded_tables[0].key, "user_id");
    }
}
