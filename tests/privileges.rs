//! Least privilege against real shards, in the demo's configuration (`cluster up`'s roles and
//! generated config): every client runs on the shards as its own role, never as pgshard's
//! superuser. Postgres itself refuses `app` what would reach the shard's host, pgshard's own data
//! or other roles (42501) and nothing changes; two roles see their own grants; row-level security
//! keyed on `current_user` filters through the proxy as it does directly; `pg_stat_activity` names
//! the client's role; `SET ROLE` does not outlive its session on a pooled connection; broadcast
//! DDL runs as the client's role; and a data-path role that is a superuser (or may run programs)
//! is refused at start-up and on SIGHUP unless `allow_superuser_clients = true`.

mod common;

use std::time::Duration;

use common::process::{free_port, write_config, ProxyProcess};
use common::proxy::{self, start_proxy_with};
use common::TestCluster;
use pgshard::config::{AuthMethod, Config, ShardedTableConfig, UserConfig};
use pgshard::router::Strategy;
use tokio_postgres::error::SqlState;

/// A client of the proxy logging in as `user` (password = name), as `application_name`.
async fn client_as(port: u16, user: &str, application_name: &str) -> tokio_postgres::Client {
    let url = format!(
        "postgres://{user}:{user}@127.0.0.1:{port}/app?sslmode=disable&application_name={application_name}"
    );
    proxy::connect_url(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to pgshard as {user}: {e}"))
}

/// A direct connection to shard `id` as `user` (password = name).
async fn direct_as(
    cluster: &TestCluster,
    id: u32,
    user: &str,
    app: &str,
) -> tokio_postgres::Client {
    let port = cluster.info.shards()[id as usize].port;
    let url = format!(
        "postgres://{user}:{user}@127.0.0.1:{port}/app?sslmode=disable&application_name={app}"
    );
    proxy::connect_url(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to shard {id} as {user}: {e}"))
}

/// The SQLSTATE and message of a failed statement.
fn failure(
    r: Result<impl std::fmt::Debug, tokio_postgres::Error>,
    what: &str,
) -> (SqlState, String) {
    let e = r.expect_err(what);
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {e}"));
    (db.code().clone(), db.message().to_string())
}

/// Fails unless `r` is Postgres's own 42501 (insufficient privilege).
fn refused_42501(r: Result<impl std::fmt::Debug, tokio_postgres::Error>, what: &str) {
    let (code, message) = failure(r, what);
    assert_eq!(code, SqlState::INSUFFICIENT_PRIVILEGE, "{what}: {message}");
}

/// Runs `sql` on every shard directly (as the superuser) and returns the first column of each
/// answer, in shard order.
async fn on_every_shard(cluster: &TestCluster, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for id in cluster.info.shard_ids() {
        let row = proxy::shard(&cluster.info, id)
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} on shard {id}: {e}"));
        out.push(row.get(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_act_as_their_own_roles_and_postgres_refuses_app_what_it_may_not_do() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    // A read-only reporting role next to the application's, on every shard, and a role `app` may
    // SET ROLE to.
    for id in info.shard_ids() {
        proxy::shard(info, id)
            .await
            .batch_execute(
                "CREATE ROLE reporting LOGIN PASSWORD 'reporting'; \
                 GRANT SELECT ON users TO reporting; \
                 CREATE ROLE auditor NOLOGIN; \
                 GRANT auditor TO app",
            )
            .await
            .unwrap();
    }
    let running = start_proxy_with(info, |c| {
        c.pool.size = 2;
        c.sharded_tables.push(ShardedTableConfig {
            name: "docs".into(),
            key: "id".into(),
            key_type: None,
        });
        c.users.push(UserConfig {
            server_password: Some("reporting".into()),
            ..UserConfig::new("reporting", Some("reporting"), AuthMethod::ScramSha256)
        });
    })
    .await;
    let port = running.addr.port();
    let map = running.proxy.map.current();
    let app = client_as(port, "app", "priv-app").await;
    let reporting = client_as(port, "reporting", "priv-reporting").await;

    // Each client is its own role on the shards, and no superuser.
    for (client, role) in [(&app, "app"), (&reporting, "reporting")] {
        for _ in 0..4 {
            let row = client
                .query_one(
                    "SELECT current_user::text, session_user::text, \
                     (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                    &[],
                )
                .await
                .unwrap();
            let (current, session, superuser): (String, String, bool) =
                (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                (current.as_str(), session.as_str(), superuser),
                (role, role, false)
            );
        }
    }

    // pg_stat_activity on the shard that served a keyed read names the client's role.
    let key = 4242i64;
    let shard = map.shard_for(key);
    reporting
        .query("SELECT name FROM users WHERE user_id = $1", &[&key])
        .await
        .unwrap();
    let seen: std::collections::BTreeSet<String> = proxy::shard(info, shard)
        .await
        .query(
            "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'priv-reporting'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["reporting"],
        "pg_stat_activity on shard {shard}"
    );

    // Two roles, two sets of rights: reporting reads but cannot write; app writes.
    for k in 1..=20i64 {
        app.execute(
            "INSERT INTO users (user_id, name) VALUES ($1, 'row')",
            &[&k],
        )
        .await
        .unwrap();
    }
    let total: i64 = reporting
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 20);
    refused_42501(
        reporting
            .execute(
                "INSERT INTO users (user_id, name) VALUES ($1, 'no')",
                &[&99i64],
            )
            .await,
        "reporting inserts",
    );
    refused_42501(
        reporting.execute("DELETE FROM users", &[]).await,
        "reporting deletes everything",
    );
    refused_42501(
        reporting
            .simple_query("UPDATE users SET name = 'x' WHERE user_id = 1")
            .await,
        "reporting updates",
    );
    assert_eq!(proxy::count_users_directly(info).await, 20);

    // Broadcast DDL runs as the client's role: reporting owns nothing, so the first shard's 42501
    // comes back and no shard has the index.
    refused_42501(
        reporting
            .simple_query("CREATE INDEX users_by_name ON users (name)")
            .await,
        "reporting creates an index on every shard",
    );
    refused_42501(
        reporting.simple_query("DROP TABLE users").await,
        "reporting drops a sharded table",
    );
    assert_eq!(
        on_every_shard(
            &cluster,
            "SELECT (count(*) FILTER (WHERE indexname = 'users_by_name'))::text FROM pg_indexes"
        )
        .await,
        ["0", "0"]
    );

    // What app may not do: Postgres's own 42501, and nothing changes anywhere.
    let escaped = info.dir.join("escaped-from-copy");
    let program = format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", escaped.display());
    refused_42501(app.simple_query(&program).await, "COPY … TO PROGRAM");
    refused_42501(
        app.batch_execute("COPY users TO PROGRAM 'cat > /dev/null'")
            .await,
        "COPY users TO PROGRAM",
    );
    assert!(!escaped.exists(), "a program ran on a shard's host");
    app.batch_execute("CREATE TABLE app_lines (line text)")
        .await
        .expect("app creates a table of its own");
    refused_42501(
        app.batch_execute("COPY app_lines FROM '/etc/passwd'").await,
        "COPY … FROM a server file",
    );
    let lines: i64 = app
        .query_one("SELECT count(*) FROM app_lines", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(lines, 0);
    // A sharded table cannot be loaded from a server file by anyone: pgshard says why.
    let copy_error = app
        .batch_execute("COPY users FROM '/etc/passwd'")
        .await
        .expect_err("COPY sharded FROM a server file");
    let copy_error = copy_error
        .as_db_error()
        .unwrap_or_else(|| panic!("COPY sharded FROM a server file: {copy_error}"));
    assert_eq!(
        copy_error.code(),
        &SqlState::FEATURE_NOT_SUPPORTED,
        "{copy_error:?}"
    );
    assert!(
        copy_error.hint().is_some_and(|h| h.contains("FROM STDIN")),
        "the refusal's hint names COPY FROM STDIN: {copy_error:?}"
    );
    refused_42501(
        app.batch_execute("ALTER SYSTEM SET work_mem = '64MB'")
            .await,
        "ALTER SYSTEM",
    );
    refused_42501(
        app.batch_execute("CREATE ROLE intruder SUPERUSER").await,
        "CREATE ROLE",
    );
    refused_42501(
        app.batch_execute("CREATE ROLE intruder").await,
        "CREATE ROLE",
    );
    refused_42501(
        app.execute("UPDATE pgshard_meta.identity SET shard_id = $1", &[&7i32])
            .await,
        "updating pgshard_meta",
    );
    refused_42501(
        app.batch_execute("INSERT INTO pgshard_meta.identity VALUES (9, 'x', false)")
            .await,
        "inserting into pgshard_meta",
    );
    refused_42501(
        app.batch_execute("DROP TABLE pgshard_meta.identity").await,
        "dropping pgshard_meta",
    );
    refused_42501(
        app.query("SELECT * FROM pgshard_meta.identity", &[]).await,
        "reading pgshard_meta",
    );
    refused_42501(
        app.batch_execute("SET SESSION AUTHORIZATION pgshard").await,
        "SET SESSION AUTHORIZATION",
    );
    refused_42501(
        app.batch_execute("SET ROLE pgshard").await,
        "SET ROLE to the superuser",
    );
    // Another role's session on every shard (reporting's, and pgshard's own monitors): app cannot
    // end them.
    let mut victims = Vec::new();
    for id in info.shard_ids() {
        victims.push(direct_as(&cluster, id, "reporting", "priv-victim").await);
    }
    refused_42501(
        app.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&"priv-victim"],
        )
        .await,
        "terminating reporting's session",
    );
    refused_42501(
        app.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pgshard'",
            &[],
        )
        .await,
        "terminating pgshard's sessions",
    );
    for victim in &victims {
        victim
            .simple_query("SELECT 1")
            .await
            .expect("the other role's session lives on");
    }
    for (what, sql, expected) in [
        (
            "the settings file",
            "SELECT count(*)::text FROM pg_file_settings WHERE name = 'work_mem'",
            "0",
        ),
        (
            "the roles",
            "SELECT count(*)::text FROM pg_roles WHERE rolname = 'intruder'",
            "0",
        ),
    ] {
        assert_eq!(
            on_every_shard(&cluster, sql).await,
            [expected, expected],
            "{what}"
        );
    }
    let identities =
        on_every_shard(&cluster, "SELECT shard_id::text FROM pgshard_meta.identity").await;
    assert_eq!(identities, ["0", "1"]);

    // Row-level security keyed on current_user: through the proxy as directly.
    app.batch_execute("CREATE TABLE docs (id bigint PRIMARY KEY, owner text NOT NULL, body text)")
        .await
        .expect("app creates a sharded table on every shard");
    assert_eq!(
        on_every_shard(
            &cluster,
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'docs'"
        )
        .await,
        ["app", "app"],
        "broadcast DDL ran as app"
    );
    for id in info.shard_ids() {
        direct_as(&cluster, id, "app", "priv-setup")
            .await
            .batch_execute(
                "ALTER TABLE docs ENABLE ROW LEVEL SECURITY; \
                 CREATE POLICY own_rows ON docs USING (owner = current_user); \
                 GRANT SELECT ON docs TO reporting",
            )
            .await
            .unwrap();
    }
    for id in 1..=30i64 {
        let owner = if id % 3 == 0 { "reporting" } else { "someone" };
        app.execute(
            "INSERT INTO docs (id, owner, body) VALUES ($1, $2, 'b')",
            &[&id, &owner],
        )
        .await
        .unwrap();
    }
    let through_proxy: Vec<i64> = reporting
        .query("SELECT id FROM docs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut directly = Vec::new();
    for id in info.shard_ids() {
        for row in direct_as(&cluster, id, "reporting", "priv-direct")
            .await
            .query("SELECT id FROM docs", &[])
            .await
            .unwrap()
        {
            directly.push(row.get::<_, i64>(0));
        }
    }
    directly.sort_unstable();
    assert_eq!(through_proxy, (1..=10).map(|i| i * 3).collect::<Vec<_>>());
    assert_eq!(through_proxy, directly);
    let owned: i64 = app
        .query_one("SELECT count(*) FROM docs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 30, "the table's owner is not subject to its policy");

    // SET ROLE lasts for its session, not for the pooled connection it ran on.
    let switcher = client_as(port, "app", "priv-switch").await;
    switcher.batch_execute("SET ROLE auditor").await.unwrap();
    for _ in 0..3 {
        let who: String = switcher
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "auditor");
    }
    drop(switcher);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..6 {
        let c = client_as(port, "app", "priv-next").await;
        for _ in 0..3 {
            let who: String = c
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                who, "app",
                "a pooled connection kept another session's SET ROLE"
            );
        }
    }
}

/// The cluster's config plus a client `boss` running as the superuser `pgshard`.
fn with_superuser_client(c: &mut Config) {
    c.users.push(UserConfig {
        server_user: Some("pgshard".into()),
        ..UserConfig::new("boss", Some("boss"), AuthMethod::ScramSha256)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superuser_data_path_roles_are_refused_at_start_up_and_on_sighup_unless_allowed() {
    let cluster = TestCluster::start(1, Strategy::Hash).await;
    let info = &cluster.info;

    // At start-up: a superuser, and a role that may run programs on the host.
    let mut config = Config::load(&info.config_path).unwrap();
    config.proxy.listen = "127.0.0.1:0".into();
    with_superuser_client(&mut config);
    let err = pgshard::server::start(config.clone())
        .await
        .err()
        .expect("a superuser client role is refused")
        .to_string();
    for needle in [
        "role `pgshard` is a superuser on shard 0",
        "the client `boss` runs as it",
        "ALTER ROLE \"pgshard\" NOSUPERUSER",
        "allow_superuser_clients = true",
    ] {
        assert!(err.contains(needle), "`{needle}` in: {err}");
    }
    proxy::shard(info, 0)
        .await
        .batch_execute(
            "CREATE ROLE runner LOGIN PASSWORD 'runner'; GRANT pg_execute_server_program TO runner",
        )
        .await
        .unwrap();
    let mut runner = Config::load(&info.config_path).unwrap();
    runner.proxy.listen = "127.0.0.1:0".into();
    runner.users.push(UserConfig {
        server_password: Some("runner".into()),
        ..UserConfig::new("runner", Some("runner"), AuthMethod::ScramSha256)
    });
    let err = pgshard::server::start(runner)
        .await
        .err()
        .expect("a role that may run programs is refused")
        .to_string();
    assert!(
        err.contains("role `runner` is a member of pg_execute_server_program")
            && err.contains("REVOKE pg_execute_server_program FROM \"runner\""),
        "{err}"
    );

    // Allowed explicitly: it starts, and the client is what it was configured to be.
    config.server_auth.allow_superuser_clients = true;
    let allowed = pgshard::server::start(config)
        .await
        .expect("allow_superuser_clients = true accepts it");
    let boss = proxy::connect_url(&proxy::url(&allowed, "boss", "boss"))
        .await
        .unwrap();
    let superuser: bool = boss
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(superuser);
    drop(boss);
    allowed.stop().await;

    // On SIGHUP: a file that adds a superuser client changes nothing, and says why.
    let port = free_port();
    let path = write_config(info, "privileges-hup.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
    });
    let app_url = format!("postgres://app:app@127.0.0.1:{port}/app?sslmode=disable");
    let running = ProxyProcess::start(&path, &app_url).await;
    write_config(info, "privileges-hup.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
        with_superuser_client(c);
    });
    running.signal(libc::SIGHUP);
    running.wait_logged("config reload refused", 1).await;
    let refused = running.logged("config reload refused").join("\n");
    assert!(
        refused.contains("role `pgshard` is a superuser on shard 0"),
        "{refused}"
    );
    let boss_url = format!("postgres://boss:boss@127.0.0.1:{port}/app?sslmode=disable");
    assert!(
        proxy::connect_url(&boss_url).await.is_err(),
        "the refused file's client cannot log in"
    );
    // The same file with the superuser allowed is applied.
    write_config(info, "privileges-hup.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
        with_superuser_client(c);
        c.server_auth.allow_superuser_clients = true;
    });
    running.signal(libc::SIGHUP);
    running.wait_logged("config reloaded", 1).await;
    assert!(running
        .logged("cannot change while pgshard runs")
        .is_empty());
    proxy::connect_url(&boss_url)
        .await
        .expect("allowed on reload")
        .simple_query("SELECT 1")
        .await
        .unwrap();
}
