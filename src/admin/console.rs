//! An admin console session: a small simple-query loop that answers the console's commands.
//! The extended protocol is refused (psql uses simple queries).

use std::sync::Arc;
use std::time::Duration;

use super::command::{self, Command};
use super::views;
use crate::frontend::client_io::ClientIo;
use crate::proxy::Proxy;
use crate::wire::backend::{self as be, ErrorFields, TxStatus};
use crate::wire::frontend as fe;

/// How long PAUSE waits for running requests before it gives up.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

/// ParameterStatus values sent when no shard has been seen yet.
const DEFAULT_PARAMS: [(&str, &str); 7] = [
    ("server_version", "15.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
];

/// Serves an admin who has logged in (AuthenticationOk already sent) until it leaves.
pub async fn serve(proxy: Arc<Proxy>, mut io: ClientIo, user: &str, pid: i32, secret: i32) {
    let mut params: std::collections::BTreeMap<String, String> = DEFAULT_PARAMS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(shared) = proxy.server_params.read() {
        for (k, v) in shared.iter() {
            params.insert(k.clone(), v.clone());
        }
    }
    params.insert("application_name".into(), "pgshard admin".into());
    params.insert("session_authorization".into(), user.to_string());
    params.insert("is_superuser".into(), "off".into());
    for (name, value) in &params {
        io.push(&be::parameter_status(name, value));
    }
    io.push(&be::backend_key_data(pid, secret));
    io.push(&be::ready_for_query(TxStatus::Idle));
    let mut skip_until_sync = false;
    loop {
        if io.flush().await.is_err() {
            return;
        }
        let frame = match io.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                io.push_error(&ErrorFields::fatal(
                    "08P01",
                    format!("invalid message from client: {e}"),
                ));
                let _ = io.flush().await;
                return;
            }
        };
        match frame.tag {
            fe::QUERY => {
                let text = String::from_utf8_lossy(&frame.body);
                let text = text.trim_end_matches('\0');
                run_query(&proxy, &mut io, text).await;
                io.push(&be::ready_for_query(TxStatus::Idle));
            }
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::CLOSE | fe::FLUSH => {
                if !skip_until_sync {
                    io.push_error(&ErrorFields::error(
                        "0A000",
                        "the pgshard admin console does not support the extended query protocol; send its commands as simple queries (as psql does)",
                    ));
                    skip_until_sync = true;
                }
            }
            fe::SYNC => {
                skip_until_sync = false;
                io.push(&be::ready_for_query(TxStatus::Idle));
            }
            fe::TERMINATE => return,
            _ => {
                io.push_error(&ErrorFields::error(
                    "0A000",
                    format!(
                        "the pgshard admin console does not support message type {}",
                        frame.tag
                    ),
                ));
                io.push(&be::ready_for_query(TxStatus::Idle));
            }
        }
    }
}

/// Runs every command of one query; the first error ends it.
async fn run_query(proxy: &Proxy, io: &mut ClientIo, text: &str) {
    let commands = match command::parse(text) {
        Ok(c) => c,
        Err(fields) => {
            io.push_error(&fields);
            return;
        }
    };
    if commands.is_empty() {
        io.push(&be::empty_query_response());
        return;
    }
    for command in commands {
        if let Err(fields) = run_command(proxy, io, command).await {
            io.push_error(&fields);
            return;
        }
    }
}

async fn run_command(
    proxy: &Proxy,
    io: &mut ClientIo,
    command: Command,
) -> Result<(), ErrorFields> {
    match command {
        Command::Show(view) => {
            for frame in views::show(proxy, view).frames() {
                io.push(&frame);
            }
        }
        Command::Reload => {
            let (version, installed) = reload_map(proxy).await?;
            let note = if installed {
                format!("installed shard map version {version}")
            } else {
                format!("shard map version {version} is current")
            };
            let notice = ErrorFields {
                severity: "NOTICE".into(),
                ..ErrorFields::error("00000", note)
            };
            io.push(&notice.to_notice());
            io.push(&be::command_complete("RELOAD"));
        }
        Command::Pause => {
            proxy
                .admin
                .gate
                .pause(PAUSE_TIMEOUT)
                .await
                .map_err(|e| ErrorFields::error("55000", e.to_string()))?;
            tracing::info!("admin console: paused");
            io.push(&be::command_complete("PAUSE"));
        }
        Command::Jobs => {
            for frame in crate::rebalance::admin::show_jobs(proxy).await?.frames() {
                io.push(&frame);
            }
        }
        Command::Rebalance(target) => {
            let id = crate::rebalance::admin::rebalance(proxy, &target).await?;
            let notice = ErrorFields {
                severity: "NOTICE".into(),
                ..ErrorFields::error("00000", format!("rebalancing job {id} created: {target}"))
            };
            io.push(&notice.to_notice());
            io.push(&be::command_complete("REBALANCE"));
        }
        Command::CancelJob(id) => {
            let state = crate::rebalance::admin::cancel(proxy, id).await?;
            let notice = ErrorFields {
                severity: "NOTICE".into(),
                ..ErrorFields::error("00000", format!("rebalancing job {id}: {state}"))
            };
            io.push(&notice.to_notice());
            io.push(&be::command_complete("CANCEL JOB"));
        }
        Command::Topology(change) => {
            let tag = change.tag();
            let (version, change) = topology_change(proxy, change).await?;
            let notice = ErrorFields {
                severity: "NOTICE".into(),
                ..ErrorFields::error("00000", format!("topology version {version}: {change}"))
            };
            io.push(&notice.to_notice());
            io.push(&be::command_complete(tag));
        }
        Command::Resume => {
            if !proxy.admin.gate.resume() {
                return Err(ErrorFields::error("55000", "pgshard is not paused"));
            }
            tracing::info!("admin console: resumed");
            io.push(&be::command_complete("RESUME"));
        }
    }
    Ok(())
}

/// Checks and records a topology change, then waits (briefly) until this proxy has applied it,
/// so the answer means its pools are there.
async fn topology_change(
    proxy: &Proxy,
    command: command::TopologyCommand,
) -> Result<(i64, crate::catalog::TopologyChange), ErrorFields> {
    let change = match command {
        command::TopologyCommand::AddShard {
            id,
            host,
            port,
            database,
        } => crate::catalog::TopologyChange::AddShard {
            id,
            host,
            port,
            database: database.unwrap_or_else(|| {
                proxy.shards.current().shards.first().map_or_else(
                    || proxy.config.proxy.database.clone(),
                    |s| s.database.clone(),
                )
            }),
        },
        command::TopologyCommand::Other(change) => change,
    };
    let version = crate::membership::register(&proxy.config, &change)
        .await
        .map_err(|e| ErrorFields::error(e.sqlstate(), e.to_string()))?;
    tracing::info!(version, %change, "admin console: topology changed");
    let mut applied = proxy.shards.subscribe();
    let _ = tokio::time::timeout(
        TOPOLOGY_APPLY_WAIT,
        applied.wait_for(|t| t.version >= version),
    )
    .await;
    Ok((version, change))
}

/// How long a topology command waits for this proxy to apply its change.
const TOPOLOGY_APPLY_WAIT: Duration = Duration::from_secs(5);

/// Reads the newest shard map from the catalog now and installs it if it is newer; returns the
/// version in use afterwards and whether it changed.
async fn reload_map(proxy: &Proxy) -> Result<(i64, bool), ErrorFields> {
    let unreachable =
        |e: String| ErrorFields::error("08001", format!("cannot reach the catalog: {e}"));
    let connect = proxy.server_tls.connect_url(&proxy.config.catalog.url);
    let (client, connection) = tokio::time::timeout(proxy.config.pool.connect_timeout(), connect)
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let task = tokio::spawn(connection);
    let loaded = crate::catalog::load_map(&client).await;
    drop(client);
    let _ = task.await;
    let map = loaded
        .map_err(|e| ErrorFields::error("XX000", format!("cannot read the shard map: {e}")))?
        .ok_or_else(|| ErrorFields::error("55000", "the catalog has no shard map"))?;
    let installed = proxy.map.install(map);
    tracing::info!(
        version = proxy.map.current().version,
        installed,
        "admin console: RELOAD"
    );
    Ok((proxy.map.current().version, installed))
}
