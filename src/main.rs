//! The `pgshard` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pgshard::cluster::{self, ClusterSpec};
use pgshard::router::Strategy;

/// mimalloc instead of glibc's malloc: a proxied statement allocates a few dozen short-lived
/// buffers, and glibc's malloc and free took about a seventh of the proxy's instructions.
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc through its plain entry points wherever they already give the alignment asked for:
/// its aligned entry points, which the `mimalloc` crate calls for every allocation, cost several
/// times as many instructions.
struct Mimalloc;

/// The alignment every mimalloc block has, whatever its size: block sizes are whole machine
/// words, and a page's first block is aligned to 16.
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

fn plain(layout: std::alloc::Layout) -> bool {
    layout.align() <= PLAIN_ALIGN
}

// SAFETY: every block comes from mimalloc and goes back to it; the plain entry points are used
// only where they guarantee the layout's alignment, the aligned ones otherwise.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if plain(layout) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if plain(layout) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        let new = std::alloc::Layout::from_size_align_unchecked(new_size, layout.align());
        if plain(layout) && plain(new) {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

/// A sharding proxy for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgshard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with a config file until SIGINT or SIGTERM.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Bring up a local cluster and the proxy in front of it; Ctrl-C stops everything.
    Demo {
        #[arg(long, default_value = "./pgshard-demo")]
        dir: PathBuf,
        /// Port the proxy listens on (127.0.0.1).
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Number of shards (only for a new demo directory).
        #[arg(long, default_value_t = 10)]
        shards: u32,
        /// Strategy of the first shard map (only for a new demo directory).
        #[arg(long, value_enum, default_value_t = StrategyArg::Hash)]
        strategy: StrategyArg,
        /// Shard pgbench's tables as config/pgbench.toml does, so `pgbench -i` and the built-in
        /// TPC-B script run through the proxy.
        #[arg(long)]
        pgbench: bool,
        #[command(flatten)]
        replicas: ReplicaArgs,
    },
    /// Manage a local cluster of Postgres instances (catalog + shards) for tests and the demo.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Prepare the catalog database named in a config file.
    Catalog {
        #[command(subcommand)]
        action: CatalogCommand,
    },
    /// Prove that every row of every sharded table sits on the shard the current map names;
    /// exits non-zero and lists samples when some do not.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Lookup tables of `[[lookups]]` columns.
    Lookup {
        #[command(subcommand)]
        action: LookupCommand,
    },
    /// Plan, start, watch and cancel online rebalancing jobs.
    Rebalance {
        #[command(subcommand)]
        action: RebalanceCommand,
    },
    /// Register or remove shards in the catalog's topology; running proxies follow within a
    /// second, without a restart.
    Shard {
        #[command(subcommand)]
        action: ShardCommand,
    },
    /// Register or remove a shard's streaming replicas in the catalog's topology.
    Replica {
        #[command(subcommand)]
        action: ReplicaCommand,
    },
    /// The compatibility report of a proxy running with `[compat]`.
    Compat {
        #[command(subcommand)]
        action: CompatCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CompatCommand {
    /// Print what each statement seen so far would do over the configured shards (SHOW COMPAT
    /// of the running proxy's admin console).
    Report {
        #[arg(long, short)]
        config: PathBuf,
        /// An admin user (default: the config's first `admin = true` user).
        #[arg(long)]
        user: Option<String>,
        /// Its password (default: $PGPASSWORD).
        #[arg(long)]
        password: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ShardCommand {
    /// Check a server (reachable with the configured login, identity row, settings, tables) and
    /// register it as shard ID.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        id: u32,
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u16,
        /// Defaults to the database of the config's first shard.
        #[arg(long)]
        database: Option<String>,
    },
    /// Remove shard ID from the topology (refused while the shard map gives it ranges).
    Drop {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        id: u32,
    },
}

#[derive(Debug, Subcommand)]
enum ReplicaCommand {
    /// Check a streaming standby of shard SHARD and register it.
    Add(ReplicaServer),
    /// Remove a replica of shard SHARD from the topology.
    Drop(ReplicaServer),
}

#[derive(Debug, Subcommand)]
enum RebalanceCommand {
    /// Print the moves a target needs (source → destination, row estimates) without starting.
    /// TARGET: add-shard N | drain N | move LOWER UPPER N (- for unbounded) | move-key KEY N |
    /// move-schema SCHEMA N |
    /// even-out | modulo-to-hash.
    Plan {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        target: Vec<String>,
    },
    /// Record a job for the target; a running proxy runs it (copy, catch-up, cut-over, clean-up).
    Start {
        #[arg(long, short)]
        config: PathBuf,
        /// Follow the job's progress until it ends.
        #[arg(long)]
        wait: bool,
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        target: Vec<String>,
    },
    /// Show the newest jobs (or one) with every step's progress.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Redraw until the job ends.
        #[arg(long)]
        follow: bool,
        job: Option<i64>,
    },
    /// Cancel a job that has not switched the map yet: its copies are removed.
    Cancel {
        #[arg(long, short)]
        config: PathBuf,
        job: i64,
    },
}

/// One replica of one shard.
#[derive(Debug, Args)]
struct ReplicaServer {
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    shard: u32,
    #[arg(long)]
    host: String,
    #[arg(long)]
    port: u16,
}

#[derive(Debug, Subcommand)]
enum LookupCommand {
    /// Fill the lookup tables for rows written before them (creates missing ones); prints
    /// progress; exits non-zero when a value is held by two rows.
    Backfill {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Apply the catalog schema and publish shard map version 1 (an even split over the config's
    /// shards) unless the catalog already holds a map.
    Init {
        #[arg(long, short)]
        config: PathBuf,
        /// Strategy of shard map version 1.
        #[arg(long, value_enum, default_value_t = StrategyArg::Hash)]
        strategy: StrategyArg,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create (first time) and start the cluster, then write DIR/pgshard.toml.
    Up {
        #[arg(long, default_value = cluster::DEFAULT_DIR)]
        dir: PathBuf,
        /// Number of shards (only for a new cluster).
        #[arg(long, default_value_t = 10)]
        shards: u32,
        /// First port (catalog); shard i gets base+1+i. 0 picks free ports.
        #[arg(long, default_value_t = 0)]
        base_port: u16,
        /// Strategy of shard map version 1 (only for a new cluster).
        #[arg(long, value_enum, default_value_t = StrategyArg::Hash)]
        strategy: StrategyArg,
        /// Proxy listen address written into pgshard.toml.
        #[arg(long, default_value = cluster::DEFAULT_LISTEN)]
        listen: String,
        #[command(flatten)]
        replicas: ReplicaArgs,
    },
    /// Stop every instance of the cluster.
    Down {
        #[arg(long, default_value = cluster::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Create, start and register one more shard (with as many replicas as the others have);
    /// running proxies open pools to it without a restart.
    AddShard {
        #[arg(long, default_value = cluster::DEFAULT_DIR)]
        dir: PathBuf,
        /// Streaming replicas of the new shard (default: as many as the other shards have).
        #[arg(long)]
        replicas: Option<u32>,
    },
    /// Show every instance: port, pid, health.
    Status {
        #[arg(long, default_value = cluster::DEFAULT_DIR)]
        dir: PathBuf,
        /// Print a JSON array (keys: name, shard, role, primary, host, port, pid, healthy,
        /// in_recovery).
        #[arg(long)]
        json: bool,
    },
}

/// Streaming replicas of the local cluster (only for a new cluster directory).
#[derive(Debug, Clone, Copy, Args)]
struct ReplicaArgs {
    /// Streaming replicas per shard (pg_basebackup; asynchronous unless --sync-any-one).
    #[arg(long, default_value_t = 0)]
    replicas: u32,
    /// recovery_min_apply_delay on every replica, in milliseconds: real, deterministic lag.
    #[arg(long, value_name = "MS")]
    apply_delay_ms: Option<u64>,
    /// synchronous_standby_names = 'ANY 1 (…)' on every primary: a commit waits for the fastest
    /// replica only. Needs --replicas 2 or more.
    #[arg(long)]
    sync_any_one: bool,
    /// A synchronous streaming replica of the catalog (`catalogr1`), promotable without losing
    /// a 2PC decision; the proxy config lists both catalog servers.
    #[arg(long)]
    catalog_replica: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    Range,
    Hash,
    Modulo,
}

impl StrategyArg {
    fn strategy(self, shards: u32) -> Strategy {
        match self {
            StrategyArg::Range => Strategy::Range,
            StrategyArg::Hash => Strategy::Hash,
            StrategyArg::Modulo => Strategy::Modulo {
                modulus: i64::from(shards),
            },
        }
    }
}

/// Changes the log filter of the running process (a config's `proxy.log_level`).
type LogHandle = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

static LOG_HANDLE: std::sync::OnceLock<LogHandle> = std::sync::OnceLock::new();

/// The filter set in the environment (`PGSHARD_LOG`, else `RUST_LOG`), which overrides the config.
fn env_log_filter() -> Option<String> {
    ["PGSHARD_LOG", "RUST_LOG"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

fn init_tracing() {
    let filter = env_log_filter()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter_reloading();
    let handle = builder.reload_handle();
    let _ = LOG_HANDLE.set(Box::new(move |f| {
        handle.reload(f).map_err(|e| e.to_string())
    }));
    builder.init();
}

/// Applies a config's log level unless the environment sets one.
fn apply_log_level(level: &str) {
    if env_log_filter().is_some() {
        return;
    }
    match (
        LOG_HANDLE.get(),
        tracing_subscriber::EnvFilter::try_new(level),
    ) {
        (Some(handle), Ok(filter)) => {
            if let Err(e) = handle(filter) {
                tracing::warn!(error = %e, "cannot change the log level");
            }
        }
        (_, Err(e)) => tracing::warn!(level, error = %e, "invalid log level"),
        (None, _) => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `pgshard cluster status | head` closing the pipe early is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a line to stdout, returning write errors (a closed pipe) instead of panicking like println!.
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)?
    };
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Cluster { action } => cluster_command(action).await,
        Command::Catalog { action } => catalog_command(action).await,
        Command::Serve { config } => serve(config).await,
        Command::Verify { config } => {
            let config = pgshard::config::Config::load(&config)?;
            let clean =
                pgshard::rebalance::cli::verify_command(&config, &mut std::io::stdout().lock())
                    .await?;
            if !clean {
                anyhow::bail!("misplaced rows found");
            }
            Ok(())
        }
        Command::Lookup {
            action: LookupCommand::Backfill { config },
        } => {
            let config = pgshard::config::Config::load(&config)?;
            let out = &mut std::io::stdout();
            if !pgshard::rebalance::lookup_backfill::backfill_command(&config, out).await? {
                anyhow::bail!("duplicate values found");
            }
            Ok(())
        }
        Command::Rebalance { action } => rebalance_command(action).await,
        Command::Shard { action } => topology_command(ShardOrReplica::Shard(action)).await,
        Command::Replica { action } => topology_command(ShardOrReplica::Replica(action)).await,
        Command::Compat {
            action:
                CompatCommand::Report {
                    config,
                    user,
                    password,
                },
        } => {
            let config = pgshard::config::Config::load(&config)?;
            let password = password.or_else(|| std::env::var("PGPASSWORD").ok());
            let text =
                pgshard::compat::report::fetch(&config, user.as_deref(), password.as_deref())
                    .await?;
            out!("{}", text.trim_end());
            Ok(())
        }
        Command::Demo {
            dir,
            port,
            shards,
            strategy,
            pgbench,
            replicas,
        } => demo(dir, port, shards, strategy, pgbench, replicas).await,
    }
}

/// Waits for SIGINT or SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = pgshard::config::Config::load(&path)?;
    apply_log_level(&config.proxy.log_level);
    let mut hangup = signal(SignalKind::hangup())?;
    let running = pgshard::server::start(config).await?;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => {
                r?;
                break;
            }
            _ = hangup.recv() => reload(&running, &path).await,
        }
    }
    let timeout = running.proxy.live.get().shutdown_timeout;
    tracing::info!(
        timeout_ms = timeout.as_millis() as u64,
        clients = running.proxy.live.clients(),
        "stopping: no new clients; open transactions may finish"
    );
    running.shutdown(timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-reads the config file and applies what can change while running. An invalid file
/// changes nothing.
async fn reload(running: &pgshard::server::RunningProxy, path: &std::path::Path) {
    let config = match pgshard::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; nothing changed");
            return;
        }
    };
    let fixed = match running.reload(&config).await {
        Ok(fixed) => fixed,
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; nothing changed");
            return;
        }
    };
    for key in fixed {
        tracing::warn!(key = %key, "config reload: this key cannot change while pgshard runs; the old value stays until a restart");
    }
    apply_log_level(&config.proxy.log_level);
    tracing::info!(path = %path.display(), "config reloaded");
}

async fn catalog_command(action: CatalogCommand) -> anyhow::Result<()> {
    match action {
        CatalogCommand::Init { config, strategy } => {
            let config = pgshard::config::Config::load(&config)?;
            let tls = pgshard::backend::ServerTls::load(config.server_tls.as_ref())?;
            let shard_ids: Vec<u32> = config.shards.iter().map(|s| s.id).collect();
            let strategy = strategy.strategy(shard_ids.len() as u32);
            match pgshard::catalog::init_url(&config.catalog.url, &tls, strategy, &shard_ids)
                .await?
            {
                pgshard::catalog::FirstMap::Published(version) => out!(
                    "catalog ready: published shard map version {version} ({} over {} shards)",
                    strategy.name(),
                    shard_ids.len()
                ),
                pgshard::catalog::FirstMap::Existing(version) => out!(
                    "catalog ready: it already holds shard map version {version}; left unchanged"
                ),
            }
            Ok(())
        }
    }
}

async fn rebalance_command(action: RebalanceCommand) -> anyhow::Result<()> {
    match action {
        RebalanceCommand::Plan { config, target } => {
            let config = pgshard::config::Config::load(&config)?;
            pgshard::rebalance::cli::plan_command(&config, &target, &mut std::io::stdout().lock())
                .await
        }
        RebalanceCommand::Start {
            config,
            wait,
            target,
        } => {
            let config = pgshard::config::Config::load(&config)?;
            let mut stdout = std::io::stdout();
            let id = pgshard::rebalance::cli::start_command(&config, &target, &mut stdout).await?;
            if wait {
                pgshard::rebalance::cli::status_command(&config, Some(id), true, &mut stdout)
                    .await?;
            }
            Ok(())
        }
        RebalanceCommand::Status {
            config,
            follow,
            job,
        } => {
            let config = pgshard::config::Config::load(&config)?;
            pgshard::rebalance::cli::status_command(&config, job, follow, &mut std::io::stdout())
                .await
        }
        RebalanceCommand::Cancel { config, job } => {
            let config = pgshard::config::Config::load(&config)?;
            pgshard::rebalance::cli::cancel_command(&config, job, &mut std::io::stdout()).await
        }
    }
}

/// The table lists `pgshard demo --pgbench` uses.
const PGBENCH_CONFIG: &str = include_str!("../config/pgbench.toml");

async fn demo(
    dir: PathBuf,
    port: u16,
    shards: u32,
    strategy: StrategyArg,
    pgbench: bool,
    replicas: ReplicaArgs,
) -> anyhow::Result<()> {
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()?.join(dir)
    };
    let listen = format!("127.0.0.1:{port}");
    let spec = ClusterSpec {
        dir,
        shards,
        base_port: 0,
        strategy: strategy.strategy(shards),
        listen: listen.clone(),
        replicas: replicas.replicas,
        apply_delay_ms: replicas.apply_delay_ms,
        sync_any_one: replicas.sync_any_one,
        catalog_replica: replicas.catalog_replica,
        locale: cluster::DEFAULT_LOCALE.into(),
    };
    let info = cluster::up(&spec).await?;
    let mut config = pgshard::config::Config::load(&info.config_path)?;
    if pgbench {
        let tables = pgshard::config::Config::from_toml(
            PGBENCH_CONFIG,
            std::path::Path::new("config/pgbench.toml"),
        )?;
        config.sharded_tables = tables.sharded_tables;
        config.reference_tables = tables.reference_tables;
    }
    let running = match pgshard::server::start(config).await {
        Ok(r) => r,
        Err(e) => {
            let _ = cluster::down(&info.dir).await;
            return Err(e);
        }
    };
    let replica_count = info
        .instances
        .iter()
        .filter(|i| i.role == cluster::Role::Replica)
        .count();
    out!(
        "pgshard demo: {} shards ({replica_count} replicas) behind 127.0.0.1:{port} (cluster in {})",
        info.shard_ids().len(),
        info.dir.display()
    );
    out!("  psql \"postgres://app:app@127.0.0.1:{port}/app\"");
    if pgbench {
        out!("  PGPASSWORD=app pgbench -i -s 10 -h 127.0.0.1 -p {port} -U app app");
        out!("  PGPASSWORD=app pgbench -c 8 -j 2 -T 30 -h 127.0.0.1 -p {port} -U app app");
    }
    out!("Ctrl-C stops the proxy and the cluster.");
    stop_signal().await?;
    out!("stopping");
    running.stop().await;
    cluster::down(&info.dir).await?;
    Ok(())
}

enum ShardOrReplica {
    Shard(ShardCommand),
    Replica(ReplicaCommand),
}

async fn topology_command(action: ShardOrReplica) -> anyhow::Result<()> {
    use pgshard::catalog::TopologyChange;
    let (path, change) = match action {
        ShardOrReplica::Shard(ShardCommand::Add {
            config,
            id,
            host,
            port,
            database,
        }) => {
            let database = match database {
                Some(d) => d,
                None => pgshard::config::Config::load(&config)?
                    .shards
                    .first()
                    .map(|s| s.database.clone())
                    .ok_or_else(|| anyhow::anyhow!("give --database: the config lists no shard"))?,
            };
            let change = TopologyChange::AddShard {
                id,
                host,
                port,
                database,
            };
            (config, change)
        }
        ShardOrReplica::Shard(ShardCommand::Drop { config, id }) => {
            (config, TopologyChange::DropShard(id))
        }
        ShardOrReplica::Replica(ReplicaCommand::Add(r)) => (
            r.config,
            TopologyChange::AddReplica {
                shard: r.shard,
                host: r.host,
                port: r.port,
            },
        ),
        ShardOrReplica::Replica(ReplicaCommand::Drop(r)) => (
            r.config,
            TopologyChange::DropReplica {
                shard: r.shard,
                host: r.host,
                port: r.port,
            },
        ),
    };
    let config = pgshard::config::Config::load(&path)?;
    let version = pgshard::membership::register(&config, &change).await?;
    out!("topology version {version}: {change}");
    Ok(())
}

async fn cluster_command(action: ClusterCommand) -> anyhow::Result<()> {
    match action {
        ClusterCommand::AddShard { dir, replicas } => {
            let added = pgshard::membership::local::add_local_shard(&dir, replicas).await?;
            out!(
                "shard {} added to {} (topology version {})",
                added.shard,
                added.info.dir.display(),
                added.version
            );
            if let Some(url) = added.info.shard_url(added.shard) {
                out!("  shard {}: {url}", added.shard);
            }
            for replica in added.info.replicas(added.shard) {
                if let Some(url) = added.info.instance_url(&replica.name) {
                    out!("    replica {}: {url}", replica.name);
                }
            }
            Ok(())
        }
        ClusterCommand::Up {
            dir,
            shards,
            base_port,
            strategy,
            listen,
            replicas,
        } => {
            let spec = ClusterSpec {
                dir,
                shards,
                base_port,
                strategy: strategy.strategy(shards),
                listen,
                replicas: replicas.replicas,
                apply_delay_ms: replicas.apply_delay_ms,
                sync_any_one: replicas.sync_any_one,
                catalog_replica: replicas.catalog_replica,
                locale: cluster::DEFAULT_LOCALE.into(),
            };
            let info = cluster::up(&spec).await?;
            out!("cluster up in {}", info.dir.display());
            out!("  catalog: {}", info.catalog_url());
            for id in info.shard_ids() {
                if let Some(url) = info.shard_url(id) {
                    out!("  shard {id}: {url}");
                }
                for replica in info.replicas(id) {
                    if let Some(url) = info.instance_url(&replica.name) {
                        out!("    replica {}: {url}", replica.name);
                    }
                }
            }
            out!("  proxy config: {}", info.config_path.display());
            Ok(())
        }
        ClusterCommand::Down { dir } => Ok(cluster::down(&dir).await?),
        ClusterCommand::Status { dir, json } => {
            let statuses = cluster::status(&dir).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                out!(
                    "{:<10} {:>5} {:<8} {:<8} {:<15} {:>5} {:>8} healthy",
                    "name",
                    "shard",
                    "role",
                    "primary",
                    "host",
                    "port",
                    "pid"
                );
                for s in &statuses {
                    let shard = s.shard.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                    let pid = s.pid.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                    let role = serde_json::to_value(s.role)?;
                    // A promoted replica still says `replica` in cluster.json; show what it is now.
                    let role = match (s.role, s.in_recovery) {
                        (cluster::Role::Replica, Some(false)) => "promoted",
                        _ => role.as_str().unwrap_or_default(),
                    };
                    out!(
                        "{:<10} {:>5} {:<8} {:<8} {:<15} {:>5} {:>8} {}",
                        s.name,
                        shard,
                        role,
                        s.primary.as_deref().unwrap_or("-"),
                        s.host,
                        s.port,
                        pid,
                        if s.healthy { "yes" } else { "NO" }
                    );
                }
            }
            Ok(())
        }
    }
}
