//! The `pgshard` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use pgshard::cluster::{self, ClusterSpec};
use pgshard::router::Strategy;

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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
        Command::Serve { config } => serve(config).await,
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
    let config = pgshard::config::Config::load(&path)?;
    let running = pgshard::server::start(config).await?;
    stop_signal().await?;
    tracing::info!("stopping");
    running.stop().await;
    Ok(())
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

async fn cluster_command(action: ClusterCommand) -> anyhow::Result<()> {
    match action {
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
