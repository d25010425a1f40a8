//! Is this server the shard it claims to be, and can pgshard use it? The same questions at
//! start-up (where an unreachable shard is only a warning: it may come back) and when a server is
//! registered (where every answer must be yes before the catalog lists it).

use tokio_postgres::Client;

use super::MembershipError;
use crate::backend::privileges::{check_login, check_on};
use crate::backend::ServerTls;
use crate::config::{Config, ReplicaConfig, ShardConfig};

/// Connections pgshard itself needs on each shard beyond its client pools: checks, a monitor,
/// recovery, and its control-plane pool.
pub const CONTROL_CONNECTIONS: usize = 2 + crate::backend::pool::CONTROL_POOL_SIZE;

/// What one server says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// `pgshard_meta.identity`'s shard id (`None`: the table is empty).
    pub identity: Option<i32>,
    pub max_connections: i32,
    pub superuser_reserved_connections: i32,
    pub max_prepared_transactions: i32,
    pub in_recovery: bool,
    /// Sharded and reference tables of the config that the server does not have.
    pub missing_tables: Vec<String>,
}

/// Why a server cannot serve as `shard` (pure; `strict` for a registration, where settings that
/// only degrade a shard are refused too). `Ok` carries warnings.
pub fn judge(
    config: &Config,
    shard: u32,
    address: &str,
    facts: &ServerFacts,
    strict: bool,
) -> Result<Vec<String>, String> {
    match facts.identity {
        Some(id) if i64::from(id) == i64::from(shard) => {}
        Some(id) => {
            return Err(format!(
                "the server at {address} identifies as shard {id}, not shard {shard}"
            ))
        }
        None => {
            return Err(format!(
                "shard {shard} at {address} has an empty pgshard_meta.identity table: insert its identity row"
            ))
        }
    }
    let mut warnings = Vec::new();
    if facts.max_prepared_transactions == 0 {
        let m = format!("shard {shard} at {address} has max_prepared_transactions = 0: transactions that write to this shard and another would fail to commit");
        if strict {
            return Err(m);
        }
        warnings.push(m);
    }
    if strict && !facts.missing_tables.is_empty() {
        return Err(format!(
            "shard {shard} at {address} lacks the table(s) {}: create the schema first",
            facts.missing_tables.join(", ")
        ));
    }
    // A pool per server role clients run as.
    let roles = config.data_roles().len().max(1);
    let needed = config.pool.size * config.pool.proxies * roles + CONTROL_CONNECTIONS;
    let available = (facts.max_connections - facts.superuser_reserved_connections).max(0) as usize;
    if needed > available {
        return Err(format!(
            "pool.size ({}) x pool.proxies ({}) x {roles} client role(s) + {CONTROL_CONNECTIONS} control connections = {needed} exceeds what shard {shard} allows: max_connections ({}) - superuser_reserved_connections ({}) = {available}",
            config.pool.size,
            config.pool.proxies,
            facts.max_connections,
            facts.superuser_reserved_connections,
        ));
    }
    Ok(warnings)
}

/// Connects to one server of `shard` as the control-plane login.
async fn connect(
    config: &Config,
    shard: &ShardConfig,
    host: &str,
    port: u16,
    tls: &ServerTls,
) -> Result<(Client, tokio::task::JoinHandle<()>), MembershipError> {
    let (user, password) = config.control_login(shard);
    let pg = check_login(config, host, port, &shard.database, user, password);
    let (client, connection) =
        tls.connect(&pg)
            .await
            .map_err(|e| MembershipError::Unreachable {
                address: format!("{host}:{port}"),
                reason: e.to_string(),
            })?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// Reads [`ServerFacts`] and checks the client roles' privileges (as start-up does).
async fn inspect(
    config: &Config,
    shard: &ShardConfig,
    client: &Client,
    address: &str,
) -> Result<ServerFacts, MembershipError> {
    let failed = |e: tokio_postgres::Error| {
        MembershipError::Check(format!(
            "shard {} at {address} has no pgshard_meta.identity table (apply sql/shard.sql and insert its identity row): {e}",
            shard.id
        ))
    };
    let row = client
        .query_one(
            "SELECT (SELECT shard_id FROM pgshard_meta.identity),
                    current_setting('max_connections')::int,
                    current_setting('superuser_reserved_connections')::int,
                    current_setting('max_prepared_transactions')::int,
                    pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(failed)?;
    let tables: Vec<String> = config
        .sharded_tables
        .iter()
        .map(|t| crate::router::names::quote_config_name(&t.name))
        .chain(
            config
                .reference_tables
                .iter()
                .map(|t| crate::router::names::quote_config_name(t)),
        )
        .collect();
    let missing = client
        .query(
            "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL ORDER BY t",
            &[&tables],
        )
        .await
        .map_err(|e| MembershipError::Check(format!("shard {} at {address}: {e}", shard.id)))?;
    check_on(
        client,
        shard.id,
        &config.users,
        config.server_auth.allow_superuser_clients,
    )
    .await
    .map_err(MembershipError::Check)?;
    Ok(ServerFacts {
        identity: row.get(0),
        max_connections: row.get(1),
        superuser_reserved_connections: row.get(2),
        max_prepared_transactions: row.get(3),
        in_recovery: row.get(4),
        missing_tables: missing.iter().map(|r| r.get(0)).collect(),
    })
}

/// Start-up: the shard must be the shard the config says and fit the pools; an unreachable
/// shard is only a warning.
pub async fn check_at_start(
    config: &Config,
    shard: &ShardConfig,
    tls: &ServerTls,
) -> Result<(), MembershipError> {
    let (client, task) = match connect(config, shard, &shard.host, shard.port, tls).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(shard = shard.id, addr = %shard.address(), error = %e, "shard unreachable at start-up; it will be used once it answers");
            return Ok(());
        }
    };
    let facts = inspect(config, shard, &client, &shard.address()).await;
    drop(client);
    let _ = task.await;
    for w in
        judge(config, shard.id, &shard.address(), &facts?, false).map_err(MembershipError::Check)?
    {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// Registration of a shard: reachable with the configured login, its identity row, settings
/// (max_prepared_transactions > 0, room for the pools), the configured tables, and a primary.
pub async fn check_new_shard(
    config: &Config,
    shard: &ShardConfig,
    tls: &ServerTls,
) -> Result<(), MembershipError> {
    let (client, task) = connect(config, shard, &shard.host, shard.port, tls).await?;
    let facts = inspect(config, shard, &client, &shard.address()).await;
    drop(client);
    let _ = task.await;
    let facts = facts?;
    if facts.in_recovery {
        return Err(MembershipError::Check(format!(
            "{} is a standby (in recovery): register the shard's primary, and this server with ADD REPLICA",
            shard.address()
        )));
    }
    judge(config, shard.id, &shard.address(), &facts, true).map_err(MembershipError::Check)?;
    Ok(())
}

/// Registration of a replica of `shard`: reachable, in recovery, and a copy of that shard.
pub async fn check_new_replica(
    config: &Config,
    shard: &ShardConfig,
    replica: &ReplicaConfig,
    tls: &ServerTls,
) -> Result<(), MembershipError> {
    let address = replica.address();
    let (client, task) = connect(config, shard, &replica.host, replica.port, tls).await?;
    let facts = inspect(config, shard, &client, &address).await;
    drop(client);
    let _ = task.await;
    let facts = facts?;
    if !facts.in_recovery {
        return Err(MembershipError::Check(format!(
            "{address} is not in recovery: a replica must be a streaming standby of shard {}",
            shard.id
        )));
    }
    judge(config, shard.id, &address, &facts, false).map_err(MembershipError::Check)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[proxy]
[[users]]
name = "app"
auth = "trust"
[catalog]
url = "postgres://u:p@127.0.0.1:7000/catalog"
[server_auth]
user = "u"
[pool]
size = 10
[[shards]]
id = 0
port = 7001
database = "app"
"#;
        Config::from_toml(text, std::path::Path::new("t.toml")).unwrap()
    }

    fn facts() -> ServerFacts {
        ServerFacts {
            identity: Some(10),
            max_connections: 100,
            superuser_reserved_connections: 3,
            max_prepared_transactions: 10,
            in_recovery: false,
            missing_tables: vec![],
        }
    }

    #[test]
    fn servers_are_judged_by_identity_settings_tables_and_room() {
        let c = config();
        type Change = fn(&mut ServerFacts);
        let cases: [(Change, bool, Option<&str>); 7] = [
            (|_| {}, true, None),
            (
                |f| f.identity = Some(3),
                false,
                Some("identifies as shard 3"),
            ),
            (
                |f| f.identity = None,
                false,
                Some("empty pgshard_meta.identity"),
            ),
            (
                |f| f.max_prepared_transactions = 0,
                true,
                Some("max_prepared_transactions = 0"),
            ),
            (
                |f| f.missing_tables = vec!["users".into()],
                true,
                Some("lacks the table(s) users"),
            ),
            (
                |f| f.max_connections = 12,
                false,
                Some("exceeds what shard 10 allows"),
            ),
            (|f| f.missing_tables = vec!["users".into()], false, None),
        ];
        for (i, (change, strict, refusal)) in cases.into_iter().enumerate() {
            let mut f = facts();
            change(&mut f);
            let got = judge(&c, 10, "127.0.0.1:7010", &f, strict);
            match refusal {
                None => assert!(got.is_ok(), "case {i}: {got:?}"),
                Some(text) => {
                    let e = got.expect_err(&format!("case {i}"));
                    assert!(e.contains(text), "case {i}: {e}");
                }
            }
        }
        let mut f = facts();
        f.max_prepared_transactions = 0;
        let warnings = judge(&c, 10, "a", &f, false).unwrap();
        assert_eq!(warnings.len(), 1, "at start-up it only warns");
    }
}
