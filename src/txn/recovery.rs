//! Settles in-doubt `pgshard_*` prepared transactions: those a coordinator left behind when it
//! crashed between PREPARE and COMMIT PREPARED, or whose shard was away. Runs at start-up and
//! periodically. A transaction with a logged decision gets it; one without a decision that is older
//! than the grace time (and not being committed by this proxy) is decided 'abort' — the log's
//! first-writer-wins rule means a coordinator that is still alive either got its 'commit' in first
//! or learns that its transaction was rolled back. Never both.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::decision_log::Decision;
use super::two_phase::{finish_sql, Coordinator};
use super::TxnError;
use crate::backend::topology::Topology;
use crate::backend::ServerTls;
use crate::config::{Config, ShardConfig};

/// Decisions whose transaction is gone everywhere are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub committed: usize,
    pub rolled_back: usize,
    /// Younger than the grace time, or being committed by this proxy right now.
    pub left_in_doubt: usize,
    /// Shards that could not be checked.
    pub unreachable: Vec<u32>,
}

/// The control-plane connections recovery passes keep, one per shard: a login (SCRAM) on every
/// pass would be most of what an idle proxy does.
#[derive(Default)]
pub struct Connections(HashMap<u32, (String, tokio_postgres::Client)>);

impl Connections {
    /// The kept connection to `shard` at `address`, or a new one when there is none, it closed,
    /// or the shard's primary moved.
    async fn get(
        &mut self,
        (config, tls): (&Config, &ServerTls),
        shard: &ShardConfig,
        address: &str,
    ) -> Result<&tokio_postgres::Client, TxnError> {
        let usable = self
            .0
            .get(&shard.id)
            .is_some_and(|(at, client)| at == address && !client.is_closed());
        let kept = match self.0.entry(shard.id) {
            Entry::Occupied(e) if usable => e.into_mut(),
            Entry::Occupied(mut e) => {
                e.insert((
                    address.to_string(),
                    connect(config, tls, shard, address).await?,
                ));
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert((
                address.to_string(),
                connect(config, tls, shard, address).await?,
            )),
        };
        Ok(&kept.1)
    }

    /// Drops the connection to `shard` (after an error on it).
    fn forget(&mut self, shard: u32) {
        self.0.remove(&shard);
    }
}

/// Checks every shard once, connecting to each as `tls` says.
pub async fn resolve_once(
    config: &Config,
    coordinator: &Arc<Coordinator>,
    topology: &Topology,
    tls: &ServerTls,
) -> RecoveryReport {
    resolve_with(
        config,
        coordinator,
        topology,
        tls,
        &mut Connections::default(),
    )
    .await
}

/// [`resolve_once`] over kept connections.
async fn resolve_with(
    config: &Config,
    coordinator: &Arc<Coordinator>,
    topology: &Topology,
    tls: &ServerTls,
    connections: &mut Connections,
) -> RecoveryReport {
    let grace = Duration::from_millis(config.transactions.in_doubt_grace_ms);
    let mut report = RecoveryReport::default();
    let mut still_prepared = Vec::new();
    for shard in &config.shards {
        // Prepared transactions live on the shard's current primary (after a failover, the
        // promoted replica).
        let address = topology
            .primary(shard.id)
            .and_then(|id| topology.server(id))
            .map(|s| s.address)
            .unwrap_or_else(|| shard.address());
        let client = match connections.get((config, tls), shard, &address).await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(shard = shard.id, error = %e, "in-doubt check skipped a shard");
                report.unreachable.push(shard.id);
                continue;
            }
        };
        let resolved = resolve_shard(client, shard, coordinator, grace, &mut report);
        match resolved.await {
            Ok(mut left) => still_prepared.append(&mut left),
            Err(e) => {
                connections.forget(shard.id);
                tracing::debug!(shard = shard.id, error = %e, "in-doubt check skipped a shard");
                report.unreachable.push(shard.id);
            }
        }
    }
    if report.unreachable.is_empty() {
        if let Err(e) = coordinator
            .log
            .forget_finished(&still_prepared, FORGET_AFTER)
            .await
        {
            tracing::debug!(error = %e, "could not prune the decision log");
        }
    }
    if report.committed + report.rolled_back > 0 {
        tracing::info!(
            committed = report.committed,
            rolled_back = report.rolled_back,
            "settled in-doubt transactions"
        );
    }
    report
}

/// Settles one shard's prepared transactions; returns the ids it left prepared.
async fn resolve_shard(
    client: &tokio_postgres::Client,
    shard: &ShardConfig,
    coordinator: &Arc<Coordinator>,
    grace: Duration,
    report: &mut RecoveryReport,
) -> Result<Vec<String>, TxnError> {
    let rows = client
        .query(
            "SELECT gid, extract(epoch FROM now() - prepared)::float8
             FROM pg_prepared_xacts
             WHERE gid LIKE 'pgshard\\_%' AND database = current_database()",
            &[],
        )
        .await?;
    let mut left = Vec::new();
    for row in rows {
        let gid: String = row.get(0);
        let age = Duration::from_secs_f64(row.get::<_, f64>(1).max(0.0));
        let decision = match coordinator.log.lookup(&gid).await? {
            Some(d) => d,
            None if age < grace || coordinator.is_in_flight(&gid) => {
                report.left_in_doubt += 1;
                left.push(gid);
                continue;
            }
            None => {
                coordinator
                    .log
                    .decide(&gid, Decision::Abort, &[shard.id], u16::MAX)
                    .await?
            }
        };
        match client.batch_execute(&finish_sql(&gid, decision)).await {
            Ok(()) => match decision {
                Decision::Commit => report.committed += 1,
                Decision::Abort => report.rolled_back += 1,
            },
            // Finished meanwhile by its coordinator.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => {
                left.push(gid);
                return Err(e.into());
            }
        }
    }
    Ok(left)
}

async fn connect(
    config: &Config,
    tls: &ServerTls,
    shard: &ShardConfig,
    address: &str,
) -> Result<tokio_postgres::Client, TxnError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .unwrap_or((shard.host.as_str(), shard.port));
    // The control-plane login: finishing another role's prepared transaction needs a superuser.
    let (user, password) = config.control_login(shard);
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(port)
        .dbname(&shard.database)
        .user(user)
        .application_name("pgshard-recovery")
        .connect_timeout(config.pool.connect_timeout());
    if let Some(pw) = password {
        pg.password(pw);
    }
    let (client, connection) = tls.connect(&pg).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs a pass now and then every `recovery_interval_ms` until the proxy stops.
pub fn start(
    config: Arc<Config>,
    coordinator: Arc<Coordinator>,
    topology: Arc<Topology>,
    tls: ServerTls,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_millis(config.transactions.recovery_interval_ms.max(100));
        let mut connections = Connections::default();
        loop {
            resolve_with(&config, &coordinator, &topology, &tls, &mut connections).await;
            tokio::time::sleep(every).await;
        }
    })
}
