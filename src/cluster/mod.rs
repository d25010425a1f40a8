//! A local development cluster of real Postgres instances (initdb/pg_ctl) for the demo and tests:
//! one catalog instance plus one primary per shard, each on its own loopback port, all copied from
//! a single initdb so that bringing up ten shards takes seconds. Optionally every primary gets
//! streaming replicas (pg_basebackup), asynchronous unless asked for quorum commit.
//!
//! As root, every Postgres program runs as the `postgres` OS user (Postgres refuses root); the
//! cluster directory is handed to that user. Instances run with `fsync = off`: fast, and not crash
//! safe — this is for tests and demos only.

mod binaries;
mod bootstrap;
mod error;
mod instance;
mod layout;
mod os_user;
mod proxy_config;
mod replication;

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::future::{join_all, try_join_all};
use serde::Serialize;

pub use binaries::PgBinaries;
pub use error::ClusterError;
pub use instance::{StopMode, ADMIN_PASSWORD, ADMIN_USER};
pub use layout::{
    ClusterState, InstanceInfo, Role, CATALOG_INSTANCE, CATALOG_REPLICA, CONFIG_FILE, STATE_FILE,
};
pub use os_user::RunAs;
pub use proxy_config::proxy_config;

use crate::router::Strategy;

/// The directory `pgshard cluster` uses when none is given.
pub const DEFAULT_DIR: &str = "pgshard-cluster";
/// Where the generated proxy config makes the proxy listen unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";

/// What to bring up. Only used for a new directory (besides `listen`): an existing cluster keeps
/// the shards, ports and strategy recorded in its `cluster.json`.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster directory (created if missing).
    pub dir: PathBuf,
    /// Number of shard primaries.
    pub shards: u32,
    /// 0 picks free loopback ports; otherwise the catalog gets this port and shard `i` the port
    /// `base_port + 1 + i`.
    pub base_port: u16,
    /// Strategy of shard map version 1. For modulo the modulus is always the number of shards, so
    /// that every remainder has an owner.
    pub strategy: Strategy,
    /// The proxy listen address written into `pgshard.toml`.
    pub listen: String,
    /// Streaming replicas per shard primary (`shard{id}r1..`), asynchronous by default.
    pub replicas: u32,
    /// `recovery_min_apply_delay` of every replica: real, deterministic replication lag.
    pub apply_delay_ms: Option<u64>,
    /// `synchronous_standby_names = 'ANY 1 (…)'` on every primary: a commit waits for the fastest
    /// replica only. Needs two or more replicas (with one it would be fully synchronous).
    pub sync_any_one: bool,
    /// The locale of every instance's databases (initdb `--locale`): it decides how text sorts.
    /// [`DEFAULT_LOCALE`] unless a test needs another collation.
    pub locale: String,
    /// A streaming replica of the catalog (`catalogr1`), synchronous: a catalog commit (a 2PC
    /// decision) is acknowledged once the replica has it, so promoting the replica loses none.
    pub catalog_replica: bool,
}

/// The locale clusters are created with: C, so text sorts bytewise.
pub const DEFAULT_LOCALE: &str = "C";

impl ClusterSpec {
    /// Ten shards, free ports, hash strategy, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            dir: dir.into(),
            shards: 10,
            base_port: 0,
            strategy: Strategy::Hash,
            listen: DEFAULT_LISTEN.into(),
            replicas: 0,
            apply_delay_ms: None,
            sync_any_one: false,
            locale: DEFAULT_LOCALE.into(),
            catalog_replica: false,
        }
    }

    /// Refuses combinations that cannot be built as asked.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.shards == 0 {
            return Err(ClusterError::Spec(
                "a cluster needs at least one shard".into(),
            ));
        }
        if self.sync_any_one && self.replicas < 2 {
            return Err(ClusterError::Spec(format!(
                "--sync-any-one needs at least 2 replicas per shard, got {}: with one replica \
                 `ANY 1 (…)` would make every commit wait for that replica (fully synchronous), so \
                 one slow or stopped replica would stall all commits",
                self.replicas
            )));
        }
        if self.apply_delay_ms.is_some() && self.replicas == 0 {
            return Err(ClusterError::Spec(
                "--apply-delay-ms delays replay on replicas, but --replicas is 0".into(),
            ));
        }
        Ok(())
    }
}

/// A running cluster: where it lives, its instances, and the proxy config generated for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub dir: PathBuf,
    pub cluster_id: String,
    pub instances: Vec<InstanceInfo>,
    pub config_path: PathBuf,
}

impl ClusterInfo {
    /// Reads the description of an existing cluster directory without touching its instances.
    pub fn load(dir: &Path) -> Result<ClusterInfo, ClusterError> {
        let dir = absolute(dir)?;
        let state = ClusterState::load_existing(&dir)?;
        Ok(ClusterInfo::from_state(dir, state))
    }

    fn from_state(dir: PathBuf, state: ClusterState) -> ClusterInfo {
        ClusterInfo {
            config_path: dir.join(CONFIG_FILE),
            dir,
            cluster_id: state.cluster_id,
            instances: state.instances,
        }
    }

    /// The catalog instance.
    pub fn catalog(&self) -> Option<&InstanceInfo> {
        self.instances.iter().find(|i| i.role == Role::Catalog)
    }

    /// The shard primaries (as created), in shard id order.
    pub fn shards(&self) -> Vec<&InstanceInfo> {
        let mut shards: Vec<_> = self
            .instances
            .iter()
            .filter(|i| i.role == Role::Primary)
            .collect();
        shards.sort_by_key(|i| i.shard);
        shards
    }

    /// Shard `id`'s replicas in server-index order (`shard{id}r1` is server 1).
    pub fn replicas(&self, id: u32) -> Vec<&InstanceInfo> {
        self.instances
            .iter()
            .filter(|i| i.role == Role::Replica && i.shard == Some(id))
            .collect()
    }

    /// The instance with this name.
    pub fn instance(&self, name: &str) -> Option<&InstanceInfo> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// `postgres://pgshard:pgshard@127.0.0.1:PORT/DB` of any instance (DB: `app` or `catalog`).
    pub fn instance_url(&self, name: &str) -> Option<String> {
        self.instance(name).map(|i| {
            format!(
                "postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@{}:{}/{}",
                i.host,
                i.port,
                i.database()
            )
        })
    }

    /// `postgres://pgshard:pgshard@127.0.0.1:PORT/catalog`, listing the catalog's replica after
    /// its primary when it has one (pgshard connects to whichever is writable).
    pub fn catalog_url(&self) -> String {
        proxy_config::catalog_url(&self.instances)
    }

    /// `postgres://pgshard:pgshard@127.0.0.1:PORT/app` of shard `id`'s primary (as created).
    pub fn shard_url(&self, id: u32) -> Option<String> {
        self.instances
            .iter()
            .find(|i| i.shard == Some(id) && i.role == Role::Primary)
            .and_then(|i| self.instance_url(&i.name))
    }

    /// The shard primaries' ports, in shard id order.
    pub fn shard_ports(&self) -> Vec<u16> {
        self.shards().iter().map(|i| i.port).collect()
    }

    /// The shard ids, ascending.
    pub fn shard_ids(&self) -> Vec<u32> {
        self.shards().iter().filter_map(|i| i.shard).collect()
    }
}

/// One instance's state as `pgshard cluster status --json` reports it (scripts rely on these keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub shard: Option<u32>,
    /// The role the instance was created with (a promoted replica stays `replica` here; see
    /// `in_recovery`).
    pub role: Role,
    /// A replica's primary (the instance it was copied from), `None` otherwise.
    pub primary: Option<String>,
    pub host: String,
    pub port: u16,
    /// The postmaster's pid, if `postmaster.pid` names a live process.
    pub pid: Option<u32>,
    /// Answers a query over TCP as the admin user within 2 s.
    pub healthy: bool,
    /// `pg_is_in_recovery()`: true on a standby; `None` when not healthy.
    pub in_recovery: Option<bool>,
}

fn absolute(dir: &Path) -> Result<PathBuf, ClusterError> {
    std::path::absolute(dir)
        .map_err(|e| ClusterError::io(format!("cannot resolve {}", dir.display()), e))
}

fn random_cluster_id() -> Result<String, ClusterError> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ClusterError::io("cannot read /dev/urandom for a cluster id", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Brings the cluster up: initdb once, copy per instance, start all in parallel, bootstrap roles,
/// databases and schemas, take each replica from its bootstrapped primary and wait until it
/// streams, write `cluster.json` and `pgshard.toml`. On an existing directory it starts what is
/// stopped and re-applies the (idempotent) bootstrap.
pub async fn up(spec: &ClusterSpec) -> Result<ClusterInfo, ClusterError> {
    let started = Instant::now();
    spec.validate()?;
    let dir = absolute(&spec.dir)?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| ClusterError::io(format!("cannot create {}", dir.display()), e))?;
    let bins = PgBinaries::find()?;
    let run_as = RunAs::detect()?;
    if let Some(user) = run_as {
        user.check_reachable(&dir)?;
        user.chown(&dir)?;
    }

    let state = match ClusterState::load(&dir)? {
        Some(state) => {
            let shards = state
                .instances
                .iter()
                .filter(|i| i.role == Role::Primary)
                .count();
            let replicas = replicas_per_shard(&state.instances);
            if shards != spec.shards as usize || replicas != spec.replicas {
                tracing::warn!(
                    existing_shards = shards,
                    existing_replicas = replicas,
                    requested_shards = spec.shards,
                    requested_replicas = spec.replicas,
                    "cluster already exists; keeping its shards and replicas"
                );
            }
            state
        }
        None => {
            let strategy = match spec.strategy {
                Strategy::Modulo { .. } => Strategy::Modulo {
                    modulus: i64::from(spec.shards),
                },
                s => s,
            };
            let mut instances =
                layout::plan_instances(&dir, spec.shards, spec.replicas, spec.base_port)?;
            if spec.catalog_replica {
                let replica = layout::plan_catalog_replica(&dir, &instances, spec.base_port)?;
                instances.push(replica);
            }
            let state = ClusterState {
                cluster_id: random_cluster_id()?,
                strategy,
                instances,
                apply_delay_ms: spec.apply_delay_ms,
                sync_any_one: spec.sync_any_one,
            };
            // Recorded before anything starts, so `down` can stop a half-started cluster.
            state.save(&dir)?;
            state
        }
    };

    let template = dir.join(layout::TEMPLATE_DIR);
    if state
        .instances
        .iter()
        .any(|i| i.role != Role::Replica && !i.data_dir.join("PG_VERSION").is_file())
    {
        instance::init_template(&bins, run_as, &template, &spec.locale).await?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "template ready"
        );
    }

    let replicas = replicas_per_shard(&state.instances);
    let mut shard_ids: Vec<u32> = state
        .instances
        .iter()
        .filter(|i| i.role == Role::Primary)
        .filter_map(|i| i.shard)
        .collect();
    shard_ids.sort_unstable();
    let ctx = UpContext {
        bins: &bins,
        run_as,
        template: &template,
        state: &state,
        shard_ids: &shard_ids,
        replicas,
    };
    // Each shard goes copy → start → bootstrap → replicas on its own, so one instance's disk work
    // overlaps another's SQL instead of waiting at a barrier between phases.
    try_join_all(
        state
            .instances
            .iter()
            .filter(|i| i.role != Role::Replica)
            .map(|inst| ctx.bring_up(inst)),
    )
    .await?;

    let info = ClusterInfo::from_state(dir, state);
    let config = proxy_config(&info.instances, &spec.listen);
    layout::write_atomic(&info.config_path, &config.to_toml())?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        config = %info.config_path.display(),
        catalog = %info.catalog_url(),
        "cluster up"
    );
    Ok(info)
}

/// The most replicas any shard has.
fn replicas_per_shard(instances: &[InstanceInfo]) -> u32 {
    let mut per_shard = std::collections::BTreeMap::<u32, u32>::new();
    for inst in instances.iter().filter(|i| i.role == Role::Replica) {
        if let Some(id) = inst.shard {
            *per_shard.entry(id).or_default() += 1;
        }
    }
    per_shard.into_values().max().unwrap_or(0)
}

/// What every instance's bring-up needs from [`up`].
struct UpContext<'a> {
    bins: &'a PgBinaries,
    run_as: Option<RunAs>,
    template: &'a Path,
    state: &'a ClusterState,
    shard_ids: &'a [u32],
    replicas: u32,
}

impl UpContext<'_> {
    /// Brings up the catalog, or a shard primary followed by its replicas.
    async fn bring_up(&self, inst: &InstanceInfo) -> Result<(), ClusterError> {
        let (bins, run_as) = (self.bins, self.run_as);
        instance::create_from_template(run_as, self.template, inst, self.replicas).await?;
        instance::start(bins, run_as, inst).await?;
        let replicas: Vec<&InstanceInfo> = self
            .state
            .instances
            .iter()
            .filter(|i| i.role == Role::Replica && i.primary.as_deref() == Some(&inst.name))
            .collect();
        // Replicas that already exist run before the bootstrap: with quorum commit on, its commits
        // wait for one of them.
        try_join_all(
            replicas
                .iter()
                .filter(|r| r.data_dir.join("PG_VERSION").is_file())
                .map(|r| instance::start(bins, run_as, r)),
        )
        .await?;
        bootstrap::bootstrap(
            inst,
            &self.state.cluster_id,
            self.state.strategy,
            self.shard_ids,
            &proxy_config(&self.state.instances, DEFAULT_LISTEN).shards,
        )
        .await?;
        if replicas.is_empty() {
            return Ok(());
        }
        let catalog = inst.role == Role::Catalog;
        // Taken after the bootstrap, so every replica starts with the schema and identity row.
        try_join_all(replicas.iter().map(|r| async {
            replication::create_replica(
                bins,
                run_as,
                inst,
                r,
                self.replicas,
                // The catalog's replica replays at once: it must be promotable without loss.
                self.state.apply_delay_ms.filter(|_| !catalog),
            )
            .await?;
            instance::start(bins, run_as, r).await?;
            replication::wait_streaming(inst, r).await
        }))
        .await?;
        if catalog || self.state.sync_any_one {
            // The catalog's one replica this way is fully synchronous: an acknowledged decision
            // survives the catalog primary's loss.
            let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
            replication::set_sync_any_one(inst, &names).await?;
        }
        Ok(())
    }
}

/// Creates and starts one more shard in the cluster in `dir` — id one above the highest, with
/// `replicas` streaming replicas (`None`: as many as the other shards have) — bootstrapped like
/// the others (schema, identity row). Registering it with the proxies is the caller's business
/// ([`crate::membership::local`]). Returns the cluster with the new instances and the new
/// shard's id.
pub async fn add_shard(
    dir: &Path,
    replicas: Option<u32>,
) -> Result<(ClusterInfo, u32), ClusterError> {
    let dir = absolute(dir)?;
    let mut state = ClusterState::load_existing(&dir)?;
    let bins = PgBinaries::find()?;
    let run_as = RunAs::detect()?;
    let id = state
        .instances
        .iter()
        .filter_map(|i| i.shard)
        .max()
        .map_or(0, |m| m + 1);
    let replicas = new_shard_replicas(&state, replicas)?;
    let new = layout::plan_shard(&dir, id, replicas)?;
    let primary = new[0].clone();
    state.instances.extend(new);
    // Recorded before anything starts, so `down` stops it even if the rest fails.
    state.save(&dir)?;
    let template = dir.join(layout::TEMPLATE_DIR);
    instance::init_template(&bins, run_as, &template, DEFAULT_LOCALE).await?;
    let mut shard_ids: Vec<u32> = state.instances.iter().filter_map(|i| i.shard).collect();
    shard_ids.sort_unstable();
    shard_ids.dedup();
    let ctx = UpContext {
        bins: &bins,
        run_as,
        template: &template,
        state: &state,
        shard_ids: &shard_ids,
        replicas,
    };
    ctx.bring_up(&primary).await?;
    tracing::info!(
        shard = id,
        replicas,
        port = primary.port,
        "shard added to the cluster"
    );
    Ok((ClusterInfo::from_state(dir, state), id))
}

/// How many replicas a new shard gets: those asked for, else as many as the most any shard has;
/// with quorum commit on (`--sync-any-one`) at least two, or its commits could hang on one.
fn new_shard_replicas(state: &ClusterState, asked: Option<u32>) -> Result<u32, ClusterError> {
    let replicas = asked.unwrap_or_else(|| replicas_per_shard(&state.instances));
    if state.sync_any_one && replicas < 2 {
        return Err(ClusterError::Spec(format!(
            "the cluster's primaries wait for ANY 1 of their replicas (--sync-any-one): a new \
             shard needs at least 2, not {replicas}"
        )));
    }
    Ok(replicas)
}

/// Rewrites the shards of the cluster's `pgshard.toml` from its instances, keeping every other
/// setting of the file (after `add_shard` has been registered: proxies started from the file
/// then list what the catalog lists).
pub fn write_config_shards(info: &ClusterInfo) -> Result<(), ClusterError> {
    let mut config = crate::config::Config::load(&info.config_path).map_err(|e| {
        ClusterError::Spec(format!("cannot read {}: {e}", info.config_path.display()))
    })?;
    config.shards = proxy_config(&info.instances, &config.proxy.listen).shards;
    layout::write_atomic(&info.config_path, &config.to_toml())
}

/// Stops every instance of the cluster in `dir` (fast shutdown, in parallel). Instances that are
/// not running are skipped.
pub async fn down(dir: &Path) -> Result<(), ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let bins = PgBinaries::find()?;
    let run_as = RunAs::detect()?;
    try_join_all(
        info.instances
            .iter()
            .map(|inst| instance::stop(&bins, run_as, inst, StopMode::Fast)),
    )
    .await?;
    tracing::info!(dir = %info.dir.display(), "cluster down");
    Ok(())
}

/// The state of every instance: pid and whether it answers queries.
pub async fn status(dir: &Path) -> Result<Vec<InstanceStatus>, ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let probes = join_all(info.instances.iter().map(instance::probe)).await;
    Ok(info
        .instances
        .iter()
        .zip(probes)
        .map(|(inst, in_recovery)| InstanceStatus {
            name: inst.name.clone(),
            shard: inst.shard,
            role: inst.role,
            primary: inst.primary.clone(),
            host: inst.host.clone(),
            port: inst.port,
            pid: instance::read_pid(inst).filter(|&pid| process_exists(pid)),
            healthy: in_recovery.is_some(),
            in_recovery,
        })
        .collect())
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Stops one instance (fault tests: a shard going away). `mode` chooses a clean or a crash-like stop.
pub async fn stop_instance(dir: &Path, name: &str, mode: StopMode) -> Result<(), ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let inst = find(&info, name)?;
    instance::stop(&PgBinaries::find()?, RunAs::detect()?, inst, mode).await
}

/// Starts one stopped instance again and waits until it accepts connections.
pub async fn start_instance(dir: &Path, name: &str) -> Result<(), ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let inst = find(&info, name)?;
    instance::start(&PgBinaries::find()?, RunAs::detect()?, inst).await
}

/// Makes one instance require TLS from TCP clients (tests of `[server_tls]`): `cert` and `key`
/// become its server certificate, pg_hba refuses plain TCP logins (the unix socket stays
/// trusted), and the instance is reloaded. Returns once plain logins are refused.
pub async fn require_tls(
    dir: &Path,
    name: &str,
    cert: &Path,
    key: &Path,
) -> Result<(), ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let inst = find(&info, name)?;
    instance::require_tls(&PgBinaries::find()?, RunAs::detect()?, inst, cert, key).await
}

/// Promotes a replica to a primary (failover tests) and waits until it leaves recovery. Its former
/// primary, if started again with [`start_instance`], also runs as a primary: the cluster does not
/// fence or rewind it.
pub async fn promote(dir: &Path, name: &str) -> Result<(), ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let inst = find_replica(&info, name, "only a replica can be promoted")?;
    replication::promote(&PgBinaries::find()?, RunAs::detect()?, inst).await
}

/// Sets one replica's `recovery_min_apply_delay` (e.g. one slow replica among several) and waits
/// until its replay process uses it.
pub async fn set_apply_delay(dir: &Path, name: &str, ms: u64) -> Result<(), ClusterError> {
    let info = ClusterInfo::load(dir)?;
    let inst = find_replica(&info, name, "only replicas delay their replay")?;
    replication::set_apply_delay(inst, ms).await
}

fn find_replica<'a>(
    info: &'a ClusterInfo,
    name: &str,
    message: &str,
) -> Result<&'a InstanceInfo, ClusterError> {
    let inst = find(info, name)?;
    if inst.role != Role::Replica {
        return Err(ClusterError::WrongRole {
            name: name.to_string(),
            role: format!("{:?}", inst.role).to_lowercase(),
            message: message.to_string(),
        });
    }
    Ok(inst)
}

fn find<'a>(info: &'a ClusterInfo, name: &str) -> Result<&'a InstanceInfo, ClusterError> {
    info.instances
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| ClusterError::NoInstance(name.to_string()))
}

/// Stops every instance immediately and synchronously, ignoring errors: for `Drop` of test
/// harnesses, which may run outside (or while tearing down) an async runtime.
pub fn stop_now(info: &ClusterInfo) {
    let Ok(bins) = PgBinaries::find() else {
        return;
    };
    let run_as = RunAs::detect().ok().flatten();
    std::thread::scope(|s| {
        for inst in &info.instances {
            let bins = &bins;
            s.spawn(move || instance::stop_now(bins, run_as, inst));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_that_cannot_be_built_are_refused() {
        let mut spec = ClusterSpec::new("/tmp/x");
        assert!(spec.validate().is_ok());
        spec.sync_any_one = true;
        spec.replicas = 1;
        assert!(spec.validate().is_err());
        spec.replicas = 2;
        assert!(spec.validate().is_ok());
        spec.sync_any_one = false;
        spec.replicas = 0;
        spec.apply_delay_ms = Some(10);
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("--replicas is 0"), "{err}");
        spec.apply_delay_ms = None;
        spec.shards = 0;
        assert!(spec.validate().is_err());
    }

    #[test]
    fn replicas_are_counted_per_shard() {
        let plan = layout::plan_instances(Path::new("/tmp/x"), 3, 2, 7000).unwrap();
        assert_eq!(replicas_per_shard(&plan), 2);
        let plan = layout::plan_instances(Path::new("/tmp/x"), 3, 0, 7000).unwrap();
        assert_eq!(replicas_per_shard(&plan), 0);
    }

    #[test]
    fn a_new_shard_gets_the_replicas_asked_for_or_as_many_as_the_others() {
        let state = |replicas, sync_any_one| ClusterState {
            cluster_id: "c".into(),
            strategy: Strategy::Hash,
            instances: layout::plan_instances(Path::new("/tmp/x"), 3, replicas, 7000).unwrap(),
            apply_delay_ms: None,
            sync_any_one,
        };
        // (replicas of the others, quorum commit, asked for) → replicas, or the refusal's words
        type Case = (u32, bool, Option<u32>, Result<u32, &'static str>);
        let cases: [Case; 6] = [
            (0, false, None, Ok(0)),
            (1, false, None, Ok(1)),
            (0, false, Some(1), Ok(1)),
            (2, false, Some(0), Ok(0)),
            (2, true, None, Ok(2)),
            (2, true, Some(1), Err("at least 2, not 1")),
        ];
        for (others, sync, asked, expected) in cases {
            let got = new_shard_replicas(&state(others, sync), asked).map_err(|e| e.to_string());
            match expected {
                Ok(n) => assert_eq!(got, Ok(n), "{others} {sync} {asked:?}"),
                Err(words) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(words)),
                    "{others} {sync} {asked:?}: {got:?}"
                ),
            }
        }
    }
}
