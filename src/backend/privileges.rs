//! Least privilege on the data path: at start-up and on every reload, each role clients run as on
//! the shards (their `[[users]]` entries' `server_user`) is looked up on every shard, and one that
//! is a superuser, can become one (SET ROLE), or is a member of a role that reaches the server's
//! programs or files is refused — unless `[server_auth] allow_superuser_clients = true` says so.
//! The lookup runs as pgshard's control-plane login; roles that do not exist are only warned about
//! (their clients get the server's own login error).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::backend::ServerTls;
use crate::config::{Config, ShardConfig, UserConfig};

/// Predefined roles whose members reach the server's host: programs, and files to write or read.
pub const HOST_ROLES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_write_server_files",
    "pg_read_server_files",
];

/// What a shard says about one data-path role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRights {
    pub role: String,
    pub exists: bool,
    pub superuser: bool,
    /// Superuser roles it is a member of (SET ROLE makes it one).
    pub superuser_roles: Vec<String>,
    /// Members of these of [`HOST_ROLES`].
    pub host_roles: Vec<String>,
}

/// Looks the roles up on the server `client` is connected to.
pub async fn role_rights(
    client: &Client,
    roles: &[String],
) -> Result<Vec<RoleRights>, tokio_postgres::Error> {
    let host_roles: Vec<String> = HOST_ROLES.iter().map(|r| r.to_string()).collect();
    let rows = client
        .query(
            "SELECT u.name,
                    r.oid IS NOT NULL,
                    coalesce(r.rolsuper, false),
                    coalesce((SELECT array_agg(s.rolname::text ORDER BY s.rolname)
                              FROM pg_roles s
                              WHERE s.rolsuper AND s.oid <> r.oid
                                AND pg_has_role(r.oid, s.oid, 'MEMBER')), '{}'),
                    coalesce((SELECT array_agg(h ORDER BY h)
                              FROM unnest($2::text[]) AS h
                              WHERE EXISTS (SELECT 1 FROM pg_roles p WHERE p.rolname = h)
                                AND pg_has_role(r.oid, h::name, 'MEMBER')), '{}')
             FROM unnest($1::text[]) AS u(name)
             LEFT JOIN pg_roles r ON r.rolname = u.name
             ORDER BY u.name",
            &[&roles, &host_roles],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| RoleRights {
            role: row.get(0),
            exists: row.get(1),
            superuser: row.get(2),
            superuser_roles: row.get(3),
            host_roles: row.get(4),
        })
        .collect())
}

/// The `[[users]]` entries running as each server role.
fn users_by_role(users: &[UserConfig]) -> BTreeMap<&str, Vec<&str>> {
    let mut by_role: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for user in users {
        by_role
            .entry(user.server_role())
            .or_default()
            .push(user.name.as_str());
    }
    by_role
}

/// What a shard's answer means: `(errors, warnings)`, each naming the role, the clients running
/// as it and the fix.
pub fn judge(
    shard: u32,
    users: &[UserConfig],
    rights: &[RoleRights],
) -> (Vec<String>, Vec<String>) {
    let by_role = users_by_role(users);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    const ALLOW: &str = "or, to accept clients with these rights, set allow_superuser_clients = true in [server_auth]";
    for r in rights {
        let names = by_role.get(r.role.as_str()).cloned().unwrap_or_default();
        let listed = names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        // "the client `app` runs" / "the clients `app`, `web` run"
        let clients = if names.len() == 1 {
            format!("the client {listed} runs")
        } else {
            format!("the clients {listed} run")
        };
        let role = &r.role;
        if !r.exists {
            warnings.push(format!(
                "role `{role}` does not exist on shard {shard}: {clients} as it, and cannot log in there until it does (CREATE ROLE \"{role}\" LOGIN PASSWORD '…' on every shard, with the grants they need; or name an existing role in server_user)"
            ));
            continue;
        }
        let reach = "through pgshard they could run programs on the shard's host (COPY … TO PROGRAM), read and write its files, change server settings and end other roles' sessions";
        if r.superuser {
            errors.push(format!(
                "role `{role}` is a superuser on shard {shard}, and {clients} as it: {reach}. Give them a role without superuser: ALTER ROLE \"{role}\" NOSUPERUSER on every shard, or a role of their own in [[users]] server_user and server_password; {ALLOW}"
            ));
            continue;
        }
        if !r.superuser_roles.is_empty() {
            let names = r.superuser_roles.join(", ");
            errors.push(format!(
                "role `{role}` is a member of the superuser role(s) {names} on shard {shard} (SET ROLE makes it a superuser), and {clients} as it: {reach}. REVOKE {names} FROM \"{role}\" on every shard; {ALLOW}"
            ));
        }
        if !r.host_roles.is_empty() {
            let names = r.host_roles.join(", ");
            errors.push(format!(
                "role `{role}` is a member of {names} on shard {shard}, and {clients} as it: through pgshard they could run programs on, or read and write the files of, the shard's host. REVOKE {names} FROM \"{role}\" on every shard; {ALLOW}"
            ));
        }
    }
    (errors, warnings)
}

/// Checks the data-path roles of `users` on the server `client` is connected to (shard `shard`):
/// an error lists every refusal unless `allow` is set; warnings are logged.
pub async fn check_on(
    client: &Client,
    shard: u32,
    users: &[UserConfig],
    allow: bool,
) -> Result<(), String> {
    let roles = crate::config::data_roles(users);
    let rights = role_rights(client, &roles)
        .await
        .map_err(|e| format!("cannot look up the client roles on shard {shard}: {e}"))?;
    let (errors, warnings) = judge(shard, users, &rights);
    for w in warnings {
        tracing::warn!(shard, "{w}");
    }
    if errors.is_empty() {
        return Ok(());
    }
    if allow {
        for e in errors {
            tracing::warn!(shard, "allow_superuser_clients = true accepts this: {e}");
        }
        return Ok(());
    }
    Err(errors.join("\n"))
}

/// Connects to `shard` as the control-plane login (primary first, then its replicas: roles are
/// the same on all of them).
async fn control_client(
    config: &Config,
    shard: &ShardConfig,
    tls: &ServerTls,
) -> Result<Client, String> {
    let (user, password) = config.control_login(shard);
    let mut last = String::new();
    let servers = std::iter::once((shard.host.clone(), shard.port))
        .chain(shard.replicas.iter().map(|r| (r.host.clone(), r.port)));
    for (host, port) in servers {
        let pg = check_login(config, &host, port, &shard.database, user, password);
        match tls.connect(&pg).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(client);
            }
            Err(e) => last = format!("{host}:{port}: {e}"),
        }
    }
    Err(last)
}

/// Checks the data-path roles of `config` on every shard that answers (a reload: `config` is the
/// new file). Unreachable shards are skipped with a warning: they are checked at the next start.
pub async fn check_all(config: &Config, tls: &ServerTls) -> Result<(), String> {
    let allow = config.server_auth.allow_superuser_clients;
    let checks = config.shards.iter().map(|shard| async move {
        match control_client(config, shard, tls).await {
            Ok(client) => check_on(&client, shard.id, &config.users, allow).await,
            Err(e) => {
                tracing::warn!(shard = shard.id, error = %e, "cannot check the client roles of an unreachable shard");
                Ok(())
            }
        }
    });
    let errors: Vec<String> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// The connection settings of pgshard's start-up and reload checks on one server.
pub fn check_login(
    config: &Config,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
    password: Option<&str>,
) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(port)
        .dbname(database)
        .user(user)
        .application_name("pgshard-check")
        .connect_timeout(config.pool.connect_timeout());
    if let Some(p) = password {
        pg.password(p);
    }
    pg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMethod;

    fn rights(role: &str) -> RoleRights {
        RoleRights {
            role: role.into(),
            exists: true,
            superuser: false,
            superuser_roles: vec![],
            host_roles: vec![],
        }
    }

    #[test]
    fn superusers_and_host_roles_are_refused_naming_role_clients_and_fix() {
        let mut users = vec![
            UserConfig::new("app", Some("x"), AuthMethod::ScramSha256),
            UserConfig::new("web", Some("x"), AuthMethod::ScramSha256),
            UserConfig::new("report", Some("x"), AuthMethod::ScramSha256),
        ];
        users[1].server_user = Some("app".into());
        let mut app = rights("app");
        app.superuser = true;
        let mut report = rights("report");
        report.host_roles = vec!["pg_read_server_files".into()];
        let (errors, warnings) = judge(3, &users, &[app, report]);
        assert!(warnings.is_empty());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("role `app` is a superuser on shard 3"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("the clients `app`, `web` run as it"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("the client `report` runs as it"),
            "{}",
            errors[1]
        );
        assert!(
            errors[0].contains("ALTER ROLE \"app\" NOSUPERUSER"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("allow_superuser_clients = true"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("REVOKE pg_read_server_files FROM \"report\""),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn membership_of_a_superuser_role_is_refused_and_missing_roles_only_warned() {
        let users = vec![
            UserConfig::new("app", Some("x"), AuthMethod::ScramSha256),
            UserConfig::new("ghost", Some("x"), AuthMethod::ScramSha256),
        ];
        let mut app = rights("app");
        app.superuser_roles = vec!["postgres".into()];
        let mut ghost = rights("ghost");
        ghost.exists = false;
        let (errors, warnings) = judge(0, &users, &[app, ghost]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("REVOKE postgres FROM \"app\""),
            "{}",
            errors[0]
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("role `ghost` does not exist on shard 0"));
        let (errors, _) = judge(0, &users, &[rights("app")]);
        assert!(errors.is_empty());
    }
}
