//! One Postgres instance's life cycle: initdb of the template, copying it, configuring, starting and
//! stopping with pg_ctl, and checking its health. Every program runs as [`RunAs`] when we are root.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::binaries::PgBinaries;
use super::layout::InstanceInfo;
use super::os_user::RunAs;
use super::ClusterError;

/// How long a health probe may take before the instance counts as unhealthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The superuser the bootstrap creates on every instance: pgshard's control plane (monitors,
/// checks, two-phase commit recovery, rebalancing, the catalog) and the operator's login. Clients
/// never run as it.
pub const ADMIN_USER: &str = "pgshard";
/// Password of [`ADMIN_USER`]; a local dev cluster, so a well-known one.
pub const ADMIN_PASSWORD: &str = "pgshard";
/// The application role the bootstrap creates on every shard: no superuser, owner of the demo
/// schema (`public` and its `users` table); the client `app` runs as it.
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`].
pub const APP_PASSWORD: &str = "app";
/// The role replicas stream from their primary with (REPLICATION, nothing else).
pub const REPLICATION_USER: &str = "replicator";
/// Password of [`REPLICATION_USER`].
pub const REPLICATION_PASSWORD: &str = "replicator";

/// The settings shared by every instance, appended to the template's postgresql.conf.
///
/// `fsync = off` trades crash safety for speed: this cluster is for tests and demos, and a power
/// loss may corrupt it. Never copy this setting to a real deployment. `synchronous_commit` stays
/// on: a server killed with `-m immediate` (fault tests) must keep every commit it acknowledged,
/// and with fsync off a commit's WAL flush is only a write to the OS.
const COMMON_CONF: &str = "
# --- pgshard local cluster (tests and demo; NOT for production: fsync is off) ---
listen_addresses = '127.0.0.1'
shared_buffers = 32MB
max_connections = 100
fsync = off
full_page_writes = off
wal_level = logical
max_prepared_transactions = 100
max_replication_slots = 20
max_wal_senders = 20
max_logical_replication_workers = 24
max_sync_workers_per_subscription = 2
max_worker_processes = 32
# Logical replication workers (rebalancing) are launched and retried at this interval: 5 s by
# default, which makes every step of a job wait seconds before its copy starts.
wal_retrieve_retry_interval = 200ms
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
include_if_exists = 'instance.conf'
";

const HBA_CONF: &str = "\
# pgshard local cluster: trust on the unix socket (inside the data directory), passwords over TCP.
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

/// The first TCP rule of an instance that requires TLS: plain TCP logins are refused outright.
const HBA_TLS_ONLY: &str = "hostnossl all all 127.0.0.1/32 reject\n";

/// Runs a program (as `run_as` if given) and turns a failure into an error carrying its output.
pub async fn run(
    what: &str,
    mut cmd: tokio::process::Command,
    run_as: Option<RunAs>,
) -> Result<std::process::Output, ClusterError> {
    if let Some(user) = run_as {
        user.apply(&mut cmd);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| ClusterError::io(format!("cannot run {what}"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if output.is_empty() {
            output = stdout.trim().to_string();
        }
        Err(ClusterError::Command {
            what: what.to_string(),
            status: out.status.to_string(),
            output,
        })
    }
}

/// Creates the template data directory with initdb (UTF8 in `locale`, trust locally, SCRAM over
/// TCP) and writes the shared configuration. Does nothing if it already exists.
pub async fn init_template(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    template: &Path,
    locale: &str,
) -> Result<(), ClusterError> {
    if template.join("PG_VERSION").is_file() && template.join("pg_hba.conf").is_file() {
        return Ok(());
    }
    if template.exists() {
        // A half-finished initdb from an interrupted run: start over.
        std::fs::remove_dir_all(template).map_err(|e| {
            ClusterError::io(format!("cannot remove stale {}", template.display()), e)
        })?;
    }
    let mut cmd = tokio::process::Command::new(bins.program("initdb"));
    cmd.arg("-D")
        .arg(template)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            // 1 MiB WAL segments instead of 16: every instance is a copy, and bytes copied are time.
            "--wal-segsize=1",
        ])
        .arg(format!("--locale={locale}"))
        .env("LC_ALL", "C");
    if let Some(parent) = template.parent() {
        cmd.current_dir(parent);
    }
    run("initdb", cmd, run_as).await?;
    append_file(&template.join("postgresql.conf"), COMMON_CONF)?;
    std::fs::write(template.join("pg_hba.conf"), HBA_CONF)
        .map_err(|e| ClusterError::io("cannot write pg_hba.conf", e))?;
    Ok(())
}

fn append_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| ClusterError::io(format!("cannot open {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| ClusterError::io(format!("cannot write {}", path.display()), e))
}

/// WAL a primary keeps for replicas that fall behind (one stopped for a while in a test): enough to
/// catch up without replication slots, which would keep WAL forever for a replica that is gone.
const WAL_KEEP: &str = "64MB";

/// WAL senders (and slots) an instance needs with `replicas` replicas per primary: one per
/// streaming replica plus two per concurrent `pg_basebackup -X stream`, with room to spare. A
/// standby must allow at least as many as its primary, so every instance gets the same number.
pub fn wal_senders(replicas: u32) -> u32 {
    20u32.max(4 + 3 * replicas)
}

/// The instance's own settings (`instance.conf`, included by the shared postgresql.conf): its port,
/// its socket directory and the replication capacity every instance of the cluster shares.
pub fn instance_conf(inst: &InstanceInfo, replicas: u32) -> String {
    let senders = wal_senders(replicas);
    format!(
        "port = {}\nunix_socket_directories = '{}'\nmax_wal_senders = {senders}\n\
         max_replication_slots = {senders}\nwal_keep_size = '{WAL_KEEP}'\n",
        inst.port,
        inst.data_dir.display()
    )
}

/// Writes `instance.conf` into a data directory, owned by the server's OS user.
pub fn write_instance_conf(
    run_as: Option<RunAs>,
    data_dir: &Path,
    conf: &str,
) -> Result<(), ClusterError> {
    let conf_path = data_dir.join("instance.conf");
    std::fs::write(&conf_path, conf)
        .map_err(|e| ClusterError::io(format!("cannot write {}", conf_path.display()), e))?;
    if let Some(user) = run_as {
        user.chown(&conf_path)?;
    }
    Ok(())
}

/// Copies the template into the instance's data directory (via a temp name, so an interrupted copy
/// is never mistaken for an instance) and writes its own port and socket directory. Does nothing
/// if the data directory already exists.
pub async fn create_from_template(
    run_as: Option<RunAs>,
    template: &Path,
    inst: &InstanceInfo,
    replicas: u32,
) -> Result<(), ClusterError> {
    if inst.data_dir.join("PG_VERSION").is_file() {
        return Ok(());
    }
    let tmp = inst.data_dir.with_extension("copying");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| ClusterError::io(format!("cannot remove {}", tmp.display()), e))?;
    }
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a").arg(template).arg(&tmp);
    run(
        &format!("copying the template for {}", inst.name),
        cmd,
        run_as,
    )
    .await?;
    write_instance_conf(run_as, &tmp, &instance_conf(inst, replicas))?;
    std::fs::rename(&tmp, &inst.data_dir)
        .map_err(|e| ClusterError::io(format!("cannot rename to {}", inst.data_dir.display()), e))
}

/// Whether a postmaster is running on this data directory (`pg_ctl status`).
pub async fn is_running(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    inst: &InstanceInfo,
) -> Result<bool, ClusterError> {
    let mut cmd = tokio::process::Command::new(bins.program("pg_ctl"));
    cmd.arg("status").arg("-D").arg(&inst.data_dir);
    if let Some(user) = run_as {
        user.apply(&mut cmd);
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| ClusterError::io("cannot run pg_ctl status", e))?;
    Ok(status.success())
}

/// Starts the instance and waits until it accepts connections; a no-op if it is already running.
/// On failure the error carries the end of the server log, where Postgres says why.
pub async fn start(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    inst: &InstanceInfo,
) -> Result<(), ClusterError> {
    if is_running(bins, run_as, inst).await? {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new(bins.program("pg_ctl"));
    cmd.arg("start")
        .arg("-w")
        .args(["-t", "60"])
        .arg("-D")
        .arg(&inst.data_dir)
        .arg("-l")
        .arg(inst.log_file())
        .current_dir(&inst.data_dir);
    match run(&format!("starting {}", inst.name), cmd, run_as).await {
        Ok(_) => Ok(()),
        Err(ClusterError::Command {
            what,
            status,
            output,
        }) => Err(ClusterError::Command {
            what,
            status,
            output: format!(
                "{output}\n--- last lines of {} ---\n{}",
                inst.log_file().display(),
                log_tail(&inst.log_file(), 10)
            ),
        }),
        Err(e) => Err(e),
    }
}

/// The last `lines` lines of a log file (empty if unreadable), for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How `pg_ctl stop` shuts an instance down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit cleanly.
    Fast,
    /// Exit at once, like a crash; recovery runs at the next start.
    Immediate,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Stops the instance; a no-op if it is not running.
pub async fn stop(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    inst: &InstanceInfo,
    mode: StopMode,
) -> Result<(), ClusterError> {
    if !is_running(bins, run_as, inst).await? {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new(bins.program("pg_ctl"));
    cmd.arg("stop")
        .arg("-w")
        .args(["-m", mode.arg()])
        .arg("-D")
        .arg(&inst.data_dir);
    run(&format!("stopping {}", inst.name), cmd, run_as)
        .await
        .map(|_| ())
}

/// Stops the instance synchronously and immediately, ignoring errors: for `Drop` impls, where no
/// runtime may be available and nothing can be reported anyway.
pub fn stop_now(bins: &PgBinaries, run_as: Option<RunAs>, inst: &InstanceInfo) {
    if !inst.data_dir.join("postmaster.pid").exists() {
        return;
    }
    let mut cmd = std::process::Command::new(bins.program("pg_ctl"));
    cmd.arg("stop")
        .args(["-m", "immediate", "-w", "-D"])
        .arg(&inst.data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(user) = run_as {
        user.apply_std(&mut cmd);
    }
    let _ = cmd.status();
}

/// Turns TLS on with `cert`/`key` (copied into the data directory) and makes pg_hba refuse plain
/// TCP logins, then reloads the running instance and waits until a plain login is refused.
pub async fn require_tls(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    inst: &InstanceInfo,
    cert: &Path,
    key: &Path,
) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
        let to = inst.data_dir.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| ClusterError::io(format!("cannot copy {}", from.display()), e))?;
        // Postgres refuses a key that others may read.
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ClusterError::io(format!("cannot chmod {}", to.display()), e))?;
        if let Some(user) = run_as {
            user.chown(&to)?;
        }
    }
    append_file(
        &inst.data_dir.join("instance.conf"),
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
    )?;
    let hba = HBA_CONF.replacen("host ", &format!("{HBA_TLS_ONLY}host "), 1);
    std::fs::write(inst.data_dir.join("pg_hba.conf"), hba)
        .map_err(|e| ClusterError::io("cannot write pg_hba.conf", e))?;
    let mut cmd = tokio::process::Command::new(bins.program("pg_ctl"));
    cmd.arg("reload").arg("-D").arg(&inst.data_dir);
    run(&format!("reloading {}", inst.name), cmd, run_as).await?;
    // The postmaster applies pg_hba.conf and the TLS settings in one reload: once a plain login
    // is refused, TLS is on too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut config = admin_login(inst);
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Err(e)
                if e.as_db_error()
                    .is_some_and(|d| d.message().contains("no encryption")) =>
            {
                return Ok(())
            }
            _ if std::time::Instant::now() >= deadline => {
                return Err(ClusterError::Command {
                    what: format!("requiring TLS on {}", inst.name),
                    status: "timed out".into(),
                    output: "plain TCP logins were still accepted 10 s after the reload".into(),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The admin user's login to the instance over TCP, giving up after [`HEALTH_TIMEOUT`].
fn admin_login(inst: &InstanceInfo) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&inst.host)
        .port(inst.port)
        .user(ADMIN_USER)
        .password(ADMIN_PASSWORD)
        .dbname(inst.database())
        .connect_timeout(HEALTH_TIMEOUT);
    config
}

/// The postmaster's pid from `postmaster.pid`, if the file exists (it can be stale after a crash).
pub fn read_pid(inst: &InstanceInfo) -> Option<u32> {
    let text = std::fs::read_to_string(inst.data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether the instance answers a query over TCP as the admin user within two seconds — the same
/// path the proxy takes, so "healthy" means "the proxy can use it" — and if so, whether it is in
/// recovery (a standby): `None` when unhealthy.
pub async fn probe(inst: &InstanceInfo) -> Option<bool> {
    let config = admin_login(inst);
    let check = async {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.ok()?;
        let task = tokio::spawn(conn);
        let in_recovery = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()
            .and_then(|row| row.try_get::<_, bool>(0).ok());
        drop(client);
        let _ = task.await;
        in_recovery
    };
    tokio::time::timeout(HEALTH_TIMEOUT, check)
        .await
        .ok()
        .flatten()
}
