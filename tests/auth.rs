//! Login hardening against a real proxy process: secrets from the environment and from files,
//! an unknown user indistinguishable from a wrong password (same error, same kind of SCRAM
//! challenge), the failed-login delay, the per-address limit on failed logins, and a log that
//! never holds a password or a verifier.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{free_port, write_config, ProxyProcess};
use common::raw::{message, startup_message, RawClient};
use common::TestCluster;
use pgshard::config::{AuthMethod, UserConfig};
use pgshard::router::Strategy;
use tokio_postgres::error::{DbError, SqlState};

const FILE_PASSWORD: &str = "Tr0ub4dor-from-file";
const ENV_PASSWORD: &str = "C0rrect-Horse-from-env";
const VERIFIER_PASSWORD: &str = "Verifier-Pass-42";
const WRONG: &str = "Wr0ng-guess-77";
const DELAY: Duration = Duration::from_millis(400);

fn url(port: u16, user: &str, password: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{port}/app?sslmode=disable")
}

/// Logs in from the loopback address `source` (127.0.0.x), so the proxy sees another client
/// address.
async fn connect_from(
    source: &str,
    proxy: SocketAddr,
    url: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let config: tokio_postgres::Config = url.parse().expect("a valid URL");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind a loopback source address");
    let stream = socket.connect(proxy).await.expect("connect to pgshard");
    let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The failure of a login that must fail, and how long it took.
async fn failed_login(source: &str, proxy: SocketAddr, url: &str) -> (DbError, Duration) {
    let started = Instant::now();
    let err = match connect_from(source, proxy, url).await {
        Ok(_) => panic!("{url} must not log in"),
        Err(e) => e,
    };
    let took = started.elapsed();
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{err:?}"))
        .clone();
    (db, took)
}

/// The salt and iteration count of the SCRAM server-first-message sent for `user`; the exchange
/// is then abandoned (which is not a failed login).
async fn scram_challenge(proxy: SocketAddr, user: &str) -> (String, String) {
    let mut raw = RawClient::connect(proxy).await;
    raw.send(&startup_message(user)).await;
    let (tag, body) = raw.read().await.expect("AuthenticationSASL");
    assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
    let first = b"n,,n=,r=abcdefghijklmnop";
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(first.len() as i32).to_be_bytes());
    initial.extend_from_slice(first);
    raw.send(&message(b'p', &initial)).await;
    let (tag, body) = raw.read().await.expect("AuthenticationSASLContinue");
    assert_eq!((tag, &body[..4]), (b'R', &11i32.to_be_bytes()[..]));
    let text = String::from_utf8(body[4..].to_vec()).unwrap();
    let field = |name: &str| {
        text.split(',')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_string()
    };
    (field("s="), field("i="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_hardened_and_secrets_stay_out_of_the_log() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let info = &cluster.info;
    let port = free_port();
    let verifier = postgres_protocol::password::scram_sha_256(VERIFIER_PASSWORD.as_bytes());
    std::fs::write(info.dir.join("app.secret"), format!("{FILE_PASSWORD}\n")).unwrap();
    let mut server_password = String::new();
    let path = write_config(info, "auth.toml", |c| {
        c.proxy.listen = format!("127.0.0.1:{port}");
        c.proxy.log_level = "pgshard=debug,info".into();
        c.auth.failed_login_delay_ms = DELAY.as_millis() as u64;
        c.auth.max_failed_logins_per_minute = 3;
        std::fs::write(info.dir.join("catalog.url"), &c.catalog.url).unwrap();
        c.catalog.url = "file:catalog.url".into();
        server_password = c.users[0].server_password.clone().unwrap_or_default();
        c.server_auth.password = Some("env:PGSHARD_TEST_CONTROL_PASSWORD".into());
        assert_eq!(c.users[0].name, "app");
        c.users[0].password = Some("file:app.secret".into());
        c.users[0].server_password = Some("env:PGSHARD_TEST_SERVER_PASSWORD".into());
        // Both run as the shards' role `app`, whose password comes from the environment too.
        let as_app = |mut user: UserConfig| {
            user.server_user = Some("app".into());
            user.server_password = Some("env:PGSHARD_TEST_SERVER_PASSWORD".into());
            user
        };
        c.users.push(as_app(UserConfig::new(
            "envuser",
            Some("env:PGSHARD_TEST_ENV_PASSWORD"),
            AuthMethod::ScramSha256,
        )));
        c.users.push(as_app(UserConfig::new(
            "verified",
            Some(&verifier),
            AuthMethod::default(),
        )));
    });
    let running = ProxyProcess::start_with_env(
        &path,
        &url(port, "app", FILE_PASSWORD),
        &[
            ("PGSHARD_TEST_ENV_PASSWORD", ENV_PASSWORD),
            ("PGSHARD_TEST_SERVER_PASSWORD", &server_password),
            (
                "PGSHARD_TEST_CONTROL_PASSWORD",
                pgshard::cluster::ADMIN_PASSWORD,
            ),
        ],
    )
    .await;
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Secrets from a file (app, the catalog URL) and the environment (envuser, the shards).
    for (user, password) in [
        ("app", FILE_PASSWORD),
        ("envuser", ENV_PASSWORD),
        ("verified", VERIFIER_PASSWORD),
    ] {
        let client = connect_from("127.0.0.1", proxy, &url(port, user, password))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        client
            .simple_query("SELECT count(*) FROM users")
            .await
            .unwrap();
    }

    // The challenge does not tell an unknown user from a real one: a stable salt per name, the
    // same iteration count.
    let (ghost_salt, ghost_iterations) = scram_challenge(proxy, "ghost").await;
    let (app_salt, app_iterations) = scram_challenge(proxy, "app").await;
    assert_eq!(scram_challenge(proxy, "ghost").await.0, ghost_salt);
    assert_eq!(scram_challenge(proxy, "app").await.0, app_salt);
    assert_eq!(ghost_iterations, app_iterations);
    assert_eq!(ghost_salt.len(), app_salt.len());
    assert_ne!(ghost_salt, app_salt);

    // A wrong password and an unknown user: the same error, both after the delay.
    let (wrong, wrong_took) = failed_login("127.0.0.1", proxy, &url(port, "app", WRONG)).await;
    let (unknown, unknown_took) =
        failed_login("127.0.0.1", proxy, &url(port, "ghost", WRONG)).await;
    for (e, took) in [(&wrong, wrong_took), (&unknown, unknown_took)] {
        assert_eq!(e.code(), &SqlState::INVALID_PASSWORD, "{e}");
        assert_eq!(e.severity(), "FATAL");
        assert!(e.detail().is_none() && e.hint().is_none(), "{e:?}");
        assert!(took >= DELAY, "the failure comes after the delay: {took:?}");
    }
    assert_eq!(
        wrong.message(),
        "password authentication failed for user \"app\""
    );
    assert_eq!(
        unknown.message(),
        "password authentication failed for user \"ghost\""
    );

    // The delay does not hold anyone else up: while a failure waits out its delay, another
    // client logs in and queries.
    let failing = tokio::spawn(async move {
        failed_login("127.0.0.3", proxy, &url(port, "verified", WRONG)).await;
        Instant::now()
    });
    let other = connect_from("127.0.0.2", proxy, &url(port, "app", FILE_PASSWORD))
        .await
        .expect("another client logs in during the delay");
    other.simple_query("SELECT 1").await.unwrap();
    let other_done = Instant::now();
    assert!(other_done < failing.await.unwrap());

    // A third failure from 127.0.0.1 reaches the limit of 3: even the right password is refused
    // from there, while other addresses log in.
    failed_login("127.0.0.1", proxy, &url(port, "verified", WRONG)).await;
    let (refused, _) = failed_login("127.0.0.1", proxy, &url(port, "app", FILE_PASSWORD)).await;
    assert_eq!(
        refused.code(),
        &SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        "{refused}"
    );
    assert_eq!(
        refused.message(),
        "too many failed login attempts from 127.0.0.1"
    );
    assert!(
        refused
            .hint()
            .is_some_and(|h| h.contains("auth.max_failed_logins_per_minute")),
        "{refused:?}"
    );
    let other = connect_from("127.0.0.2", proxy, &url(port, "envuser", ENV_PASSWORD))
        .await
        .expect("another address is not limited");
    other.simple_query("SELECT 1").await.unwrap();

    // The log saw every failure but no secret.
    assert!(running.logged("client login failed").len() >= 4);
    let log = running.whole_log();
    for secret in [
        FILE_PASSWORD,
        ENV_PASSWORD,
        VERIFIER_PASSWORD,
        WRONG,
        verifier.as_str(),
        "SCRAM-SHA-256$",
    ] {
        assert!(!log.contains(secret), "the log shows `{secret}`");
    }
    if server_password.len() >= 8 {
        assert!(!log.contains(&server_password));
    }
}
