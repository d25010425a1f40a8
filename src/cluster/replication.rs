//! Streaming replicas of the shard primaries: copying a primary with `pg_basebackup -R`, making the
//! copy a hot standby that streams under its own `application_name`, waiting until it streams,
//! quorum commit (`ANY 1`), replay delay, and promotion for failover tests.

use std::time::{Duration, Instant};

use super::binaries::PgBinaries;
use super::bootstrap::connect;
use super::instance::{self, REPLICATION_PASSWORD, REPLICATION_USER};
use super::layout::InstanceInfo;
use super::os_user::RunAs;
use super::ClusterError;
use crate::sql_text::quote_literal;

/// How long a replica may take to start streaming, a promotion to finish, or a setting to apply.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often those conditions are checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Settings a replica must not inherit from its primary's `postgresql.auto.conf`: its own upstream
/// is written anew, and a quorum naming its siblings would stall its commits once promoted.
const NOT_INHERITED: [&str; 2] = ["primary_conninfo", "synchronous_standby_names"];

/// How a replica connects to its primary: over loopback TCP as the replication role (pg_hba allows
/// replication connections from 127.0.0.1), named `app_name` in `pg_stat_replication`.
pub fn primary_conninfo(primary: &InstanceInfo, app_name: &str) -> String {
    format!(
        "host={} port={} user={REPLICATION_USER} password={REPLICATION_PASSWORD} application_name={app_name}",
        primary.host, primary.port
    )
}

/// The replica's `postgresql.auto.conf`: the primary's, minus [`NOT_INHERITED`], plus its own
/// `primary_conninfo` (pg_basebackup -R wrote one without an `application_name`).
pub fn replica_auto_conf(primary_auto_conf: &str, conninfo: &str) -> String {
    let mut out = String::new();
    for line in primary_auto_conf.lines() {
        let key = line
            .split(['=', ' ', '\t'])
            .find(|s| !s.is_empty())
            .unwrap_or("");
        if !NOT_INHERITED.contains(&key) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!("primary_conninfo = {}\n", quote_literal(conninfo)));
    out
}

/// The replica-only settings appended to its `instance.conf`.
pub fn replica_settings(apply_delay_ms: Option<u64>) -> String {
    let mut conf = String::from("hot_standby = on\nhot_standby_feedback = on\n");
    if let Some(ms) = apply_delay_ms {
        conf.push_str(&format!("recovery_min_apply_delay = '{ms}ms'\n"));
    }
    conf
}

/// `ANY 1 (a, b, …)`: a commit waits for whichever replica flushes it first.
pub fn any_one(replica_names: &[&str]) -> String {
    format!("ANY 1 ({})", replica_names.join(", "))
}

/// Makes `replica` a copy of `primary` (which must be running) with `pg_basebackup -R -X stream`,
/// configured to stream from it as `application_name = <replica name>`. The copy goes to a temp
/// name first, so an interrupted backup is never mistaken for a replica. Does nothing if the
/// replica's data directory already exists.
pub async fn create_replica(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    primary: &InstanceInfo,
    replica: &InstanceInfo,
    replicas: u32,
    apply_delay_ms: Option<u64>,
) -> Result<(), ClusterError> {
    if replica.data_dir.join("PG_VERSION").is_file() {
        return Ok(());
    }
    let tmp = replica.data_dir.with_extension("copying");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| ClusterError::io(format!("cannot remove {}", tmp.display()), e))?;
    }
    let mut cmd = tokio::process::Command::new(bins.program("pg_basebackup"));
    cmd.arg("-D")
        .arg(&tmp)
        .arg("-d")
        .arg(format!(
            "host={} port={} user={REPLICATION_USER} password={REPLICATION_PASSWORD}",
            primary.host, primary.port
        ))
        // -R: standby.signal + primary_conninfo; fast checkpoint: the default spreads it over minutes.
        .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
        .arg("--no-manifest");
    if let Some(parent) = replica.data_dir.parent() {
        cmd.current_dir(parent);
    }
    instance::run(
        &format!("pg_basebackup of {} for {}", primary.name, replica.name),
        cmd,
        run_as,
    )
    .await?;

    // The copy carries the primary's port, socket directory and log; give it its own.
    let mut conf = instance::instance_conf(replica, replicas);
    conf.push_str(&replica_settings(apply_delay_ms));
    instance::write_instance_conf(run_as, &tmp, &conf)?;
    let auto_path = tmp.join("postgresql.auto.conf");
    let auto = std::fs::read_to_string(&auto_path)
        .map_err(|e| ClusterError::io(format!("cannot read {}", auto_path.display()), e))?;
    let auto = replica_auto_conf(&auto, &primary_conninfo(primary, &replica.name));
    std::fs::write(&auto_path, auto)
        .map_err(|e| ClusterError::io(format!("cannot write {}", auto_path.display()), e))?;
    let log = tmp.join("server.log");
    if log.exists() {
        std::fs::remove_file(&log)
            .map_err(|e| ClusterError::io(format!("cannot remove {}", log.display()), e))?;
    }
    std::fs::rename(&tmp, &replica.data_dir).map_err(|e| {
        ClusterError::io(
            format!("cannot rename to {}", replica.data_dir.display()),
            e,
        )
    })
}

/// Polls `check` until it returns `Some`, at most [`WAIT_TIMEOUT`]; `what` and `detail` (called on
/// timeout) make the error.
async fn wait_until<T, F, Fut>(
    what: &str,
    mut check: F,
    detail: impl FnOnce() -> String,
) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ClusterError>>,
{
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: what.to_string(),
                seconds: WAIT_TIMEOUT.as_secs(),
                detail: detail(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn log_detail(inst: &InstanceInfo) -> String {
    format!(
        "\n--- last lines of {} ---\n{}",
        inst.log_file().display(),
        instance::log_tail(&inst.log_file(), 10)
    )
}

/// Waits until `primary`'s `pg_stat_replication` shows `replica` (by `application_name`) streaming.
pub async fn wait_streaming(
    primary: &InstanceInfo,
    replica: &InstanceInfo,
) -> Result<(), ClusterError> {
    let client = connect(primary, "postgres", "postgres").await?;
    let context = format!("reading pg_stat_replication on {}", primary.name);
    wait_until(
        &format!("{} streaming from {}", replica.name, primary.name),
        || async {
            let row = client
                .query_opt(
                    "SELECT 1 FROM pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming'",
                    &[&replica.name],
                )
                .await
                .map_err(|e| ClusterError::pg(context.clone(), e))?;
            Ok(row.map(|_| ()))
        },
        || log_detail(replica),
    )
    .await
}

/// `ALTER SYSTEM SET name = value` and a reload, then waits until a new session's
/// `pg_settings.setting` (the value in the parameter's base unit, e.g. `200` for `'200ms'`) is
/// `expected`: from then on the postmaster has re-read its config and signalled every process,
/// the startup (replay) process included.
pub async fn set_and_reload(
    inst: &InstanceInfo,
    name: &str,
    value: &str,
    expected: &str,
) -> Result<(), ClusterError> {
    let ctx = |what: &str| format!("{what} {name} on {}", inst.name);
    {
        let client = connect(inst, "postgres", "postgres").await?;
        client
            .batch_execute(&format!(
                "ALTER SYSTEM SET {name} = {}",
                quote_literal(value)
            ))
            .await
            .map_err(|e| ClusterError::pg(ctx("setting"), e))?;
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| ClusterError::pg(ctx("reloading after setting"), e))?;
    }
    wait_until(
        &format!(
            "{name} = {} taking effect on {}",
            quote_literal(value),
            inst.name
        ),
        || async {
            let client = connect(inst, "postgres", "postgres").await?;
            let setting: String = client
                .query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
                .await
                .map_err(|e| ClusterError::pg(ctx("reading"), e))?
                .get(0);
            Ok((setting == expected).then_some(()))
        },
        || log_detail(inst),
    )
    .await
}

/// Sets `recovery_min_apply_delay` on a replica and waits until it is in effect.
pub async fn set_apply_delay(replica: &InstanceInfo, ms: u64) -> Result<(), ClusterError> {
    set_and_reload(
        replica,
        "recovery_min_apply_delay",
        &format!("{ms}ms"),
        &ms.to_string(),
    )
    .await
}

/// Makes `primary` wait at commit for any one of `replica_names` (quorum commit), and waits until
/// every replica's WAL sender has re-read its config: `pg_stat_replication` shows all of them as
/// `quorum`, and commits count their acknowledgements.
pub async fn set_sync_any_one(
    primary: &InstanceInfo,
    replica_names: &[&str],
) -> Result<(), ClusterError> {
    let value = any_one(replica_names);
    set_and_reload(primary, "synchronous_standby_names", &value, &value).await?;
    let client = connect(primary, "postgres", "postgres").await?;
    let context = format!("reading pg_stat_replication on {}", primary.name);
    let names: Vec<String> = replica_names.iter().map(|n| n.to_string()).collect();
    let expected = names.len() as i64;
    wait_until(
        &format!("quorum commit over {value} on {}", primary.name),
        || async {
            let quorum: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = ANY($1) AND sync_state = 'quorum'",
                    &[&names],
                )
                .await
                .map_err(|e| ClusterError::pg(context.clone(), e))?
                .get(0);
            Ok((quorum == expected).then_some(()))
        },
        || log_detail(primary),
    )
    .await
}

/// Promotes a replica (`pg_ctl promote`) and waits until `pg_is_in_recovery()` is false.
pub async fn promote(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    replica: &InstanceInfo,
) -> Result<(), ClusterError> {
    let mut cmd = tokio::process::Command::new(bins.program("pg_ctl"));
    cmd.arg("promote")
        .args(["-w", "-t", "60", "-D"])
        .arg(&replica.data_dir);
    instance::run(&format!("promoting {}", replica.name), cmd, run_as).await?;
    let client = connect(replica, "postgres", "postgres").await?;
    let context = format!("reading pg_is_in_recovery() on {}", replica.name);
    wait_until(
        &format!("promotion of {}", replica.name),
        || async {
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| ClusterError::pg(context.clone(), e))?
                .get(0);
            Ok((!in_recovery).then_some(()))
        },
        || log_detail(replica),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::layout::plan_instances;
    use std::path::Path;

    #[test]
    fn conninfo_names_the_replica() {
        let plan = plan_instances(Path::new("/tmp/c"), 1, 1, 7000).unwrap();
        assert_eq!(
            primary_conninfo(&plan[1], "shard0r1"),
            "host=127.0.0.1 port=7001 user=replicator password=replicator application_name=shard0r1"
        );
    }

    #[test]
    fn auto_conf_drops_inherited_upstream_and_quorum() {
        let primary = "# Do not edit this file manually!\n\
                       synchronous_standby_names = 'ANY 1 (shard0r1, shard0r2)'\n\
                       work_mem = '8MB'\n\
                       primary_conninfo = 'user=pgshard host=127.0.0.1 port=7001'\n";
        let replica = replica_auto_conf(primary, "host=127.0.0.1 application_name=shard0r2");
        assert_eq!(
            replica,
            "# Do not edit this file manually!\n\
             work_mem = '8MB'\n\
             primary_conninfo = 'host=127.0.0.1 application_name=shard0r2'\n"
        );
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn replica_settings_carry_the_delay() {
        assert!(!replica_settings(None).contains("recovery_min_apply_delay"));
        assert!(replica_settings(Some(200)).contains("recovery_min_apply_delay = '200ms'"));
        assert!(replica_settings(None).contains("hot_standby_feedback = on"));
    }

    #[test]
    fn quorum_of_any_one() {
        assert_eq!(
            any_one(&["shard0r1", "shard0r2"]),
            "ANY 1 (shard0r1, shard0r2)"
        );
    }
}
