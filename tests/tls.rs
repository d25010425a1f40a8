//! TLS to clients: psql and tokio-postgres over SSLRequest and direct TLS, a certificate the
//! clients verify, `mode = "require"` refusing plain logins, and no `[tls]` answering `N`.
//! TLS to servers (`[server_tls]`): shards and catalog that refuse plain TCP, reached with
//! verify-full, verify-ca and require; a certificate from an unknown CA and one for another
//! name are refused with a clear error while the proxy keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use common::proxy::{self, start_proxy_with, APP_PASSWORD};
use common::TestCluster;
use std::time::{Duration, Instant};

use pgshard::backend::ServerTls;
use pgshard::config::{ServerTlsConfig, ServerTlsMode, TlsConfig, TlsMode};
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::process::Command;
use tokio_postgres::config::SslMode;
use tokio_postgres::config::SslNegotiation;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A self-signed certificate for localhost / 127.0.0.1 and its key, made by the openssl CLI.
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "2"])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

async fn start(cluster: &TestCluster, tls: Option<TlsConfig>) -> RunningProxy {
    start_proxy_with(&cluster.info, |config| config.tls = tls).await
}

/// Runs psql against the proxy with a libpq connection string; (success, stdout, stderr).
async fn psql(conninfo: &str, command: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-c", command])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn conninfo(proxy: &RunningProxy, extra: &str) -> String {
    format!(
        "host=localhost port={} user=app password={APP_PASSWORD} dbname=app {extra}",
        proxy.addr.port()
    )
}

/// A rustls client trusting only `cert`, offering ALPN `postgresql` when `alpn`.
fn connector(cert: &Path, alpn: bool) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    MakeRustlsConnect::new(config)
}

async fn connect_tls(
    proxy: &RunningProxy,
    cert: &Path,
    alpn: bool,
    negotiation: SslNegotiation,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .port(proxy.addr.port())
        .user("app")
        .password(APP_PASSWORD)
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .ssl_negotiation(negotiation);
    let (client, conn) = config.connect(connector(cert, alpn)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_use_tls_when_configured() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());

    // Without [tls]: SSLRequest is answered N, so sslmode=require fails and plain works.
    let plain = start(&cluster, None).await;
    let (ok, _, err) = psql(&conninfo(&plain, "sslmode=require"), "SELECT 1").await;
    assert!(!ok && err.contains("does not support SSL"), "{err}");
    let (ok, out, err) = psql(&conninfo(&plain, "sslmode=disable"), "SELECT 1").await;
    assert!(ok && out.trim() == "1", "{out} {err}");

    let allow = start(
        &cluster,
        Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            mode: TlsMode::Allow,
        }),
    )
    .await;

    // psql verifying the certificate against its name.
    let verify = format!("sslmode=verify-full sslrootcert={}", cert.display());
    let (ok, out, err) = psql(&conninfo(&allow, &verify), "\\conninfo").await;
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");
    let (ok, out, err) = psql(&conninfo(&allow, &verify), "SELECT count(*) FROM users").await;
    assert!(ok && out.trim().parse::<i64>().is_ok(), "{out} {err}");
    // A client that does not ask for TLS is still served in allow mode.
    let (ok, out, err) = psql(&conninfo(&allow, "sslmode=disable"), "\\conninfo").await;
    assert!(ok && !out.contains("SSL connection"), "{out} {err}");

    // tokio-postgres over SSLRequest, with and without ALPN.
    for alpn in [false, true] {
        let client = connect_tls(&allow, &cert, alpn, SslNegotiation::Postgres)
            .await
            .unwrap_or_else(|e| panic!("tls connect (alpn {alpn}): {e:?}"));
        let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    }
    // Direct TLS (PostgreSQL 17 style) needs ALPN postgresql.
    let client = connect_tls(&allow, &cert, true, SslNegotiation::Direct)
        .await
        .expect("direct tls with alpn");
    let row = client
        .query_one("SELECT 'direct'::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "direct");
    let Err(err) = connect_tls(&allow, &cert, false, SslNegotiation::Direct).await else {
        panic!("direct tls without alpn was accepted");
    };
    let db = err.as_db_error().expect("an error response over TLS");
    assert_eq!(db.code().code(), "08P01", "{db}");

    // mode = "require": plain logins get 28000, TLS ones work.
    let require = start(
        &cluster,
        Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            mode: TlsMode::Require,
        }),
    )
    .await;
    let (ok, _, err) = psql(&conninfo(&require, "sslmode=disable"), "SELECT 1").await;
    assert!(!ok && err.contains("pgshard requires SSL"), "{err}");
    let Err(err) = proxy::connect_url(&proxy::app_url(&require)).await else {
        panic!("a plain login was accepted in require mode");
    };
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
    let (ok, out, err) = psql(&conninfo(&require, &verify), "SELECT 1").await;
    assert!(ok && out.trim() == "1", "{out} {err}");
    let client = connect_tls(&require, &cert, true, SslNegotiation::Postgres)
        .await
        .expect("tls login in require mode");
    client.simple_query("SELECT 1").await.unwrap();

    // [server_tls] against servers without TLS: an `N` answer is an error, never plain TCP.
    let require = server_tls(ServerTlsMode::Require, None);
    let tls = ServerTls::load(require.as_ref()).unwrap();
    let addr = format!("127.0.0.1:{}", cluster.info.shard_ports()[0]);
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let err = tls.start(tcp, &addr).await.err().expect("N is refused");
    let message = err.to_string();
    assert!(
        message.contains(&addr)
            && message.contains("refused TLS but server_tls.mode = \"require\""),
        "{message}"
    );
    let mut config = pgshard::config::Config::load(&cluster.info.config_path).unwrap();
    config.proxy.listen = "127.0.0.1:0".into();
    config.server_tls = require;
    let err = pgshard::server::start(config)
        .await
        .err()
        .expect("a catalog without TLS is not used in plain");
    assert!(
        format!("{err:#}").contains("does not support TLS"),
        "{err:#}"
    );
}

#[test]
fn unreadable_certificate_or_key_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let missing = dir.path().join("nope.pem");
    let load = |cert: &Path, key: &Path| {
        pgshard::frontend::tls::ClientTls::load(&TlsConfig {
            cert: cert.into(),
            key: key.into(),
            mode: TlsMode::Allow,
        })
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(load(&cert, &key), None);
    let err = load(&missing, &key).expect("missing cert");
    assert!(
        err.contains("tls.cert") && err.contains("nope.pem"),
        "{err}"
    );
    let err = load(&cert, &missing).expect("missing key");
    assert!(err.contains("tls.key") && err.contains("nope.pem"), "{err}");
    // A certificate file given as the key: no private key in it.
    let err = load(&cert, &cert).expect("cert as key");
    assert!(err.contains("tls.key") && err.contains("cert.pem"), "{err}");
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate authority `name` in `dir`: (certificate, key).
fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    openssl(&[
        "req",
        "-x509",
        "-nodes",
        "-days",
        "2",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ]);
    (cert, key)
}

/// A server certificate valid for the IP address 127.0.0.1 only (not for `localhost`), signed
/// by `ca`: (certificate, key).
fn make_server_cert(dir: &Path, name: &str, ca: &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-subj",
        "/CN=pgshard-test-server",
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &csr.to_string_lossy(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr.to_string_lossy(),
        "-CA",
        &ca.0.to_string_lossy(),
        "-CAkey",
        &ca.1.to_string_lossy(),
        "-CAcreateserial",
        "-extfile",
        &ext.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ]);
    (cert, key)
}

fn server_tls(mode: ServerTlsMode, ca_file: Option<&Path>) -> Option<ServerTlsConfig> {
    Some(ServerTlsConfig {
        mode,
        ca_file: ca_file.map(Path::to_path_buf),
        client_cert: None,
        client_key: None,
    })
}

/// A direct TLS connection (admin user) to an instance, trusting the CAs in `roots`.
async fn direct_tls(cluster: &TestCluster, name: &str, roots: &Path) -> tokio_postgres::Client {
    let inst = cluster.info.instance(name).expect("instance exists");
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(inst.port)
        .user(pgshard::cluster::ADMIN_USER)
        .password(pgshard::cluster::ADMIN_PASSWORD)
        .dbname(inst.database())
        .ssl_mode(SslMode::Require);
    let (client, conn) = config
        .connect(connector(roots, false))
        .await
        .unwrap_or_else(|e| panic!("tls connect to {name}: {e:?}"));
    tokio::spawn(conn);
    client
}

/// The user ids stored on one shard, read directly.
async fn ids_on(cluster: &TestCluster, name: &str, roots: &Path) -> Vec<i64> {
    direct_tls(cluster, name, roots)
        .await
        .query("SELECT user_id FROM users ORDER BY user_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The proxy's answer to a one-row lookup of `id` on a new connection: Ok(name), or the
/// (SQLSTATE, message) of the error at login or at the query.
async fn lookup(proxy: &RunningProxy, id: i64) -> Result<String, (String, String)> {
    let db_error = |e: tokio_postgres::Error| {
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("not a server error: {e:?}"));
        (db.code().code().to_string(), db.message().to_string())
    };
    let client = proxy::connect_url(&proxy::app_url(proxy))
        .await
        .map_err(db_error)?;
    client
        .query_one("SELECT name FROM users WHERE user_id = $1", &[&id])
        .await
        .map(|row| row.get(0))
        .map_err(db_error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_reached_over_verified_tls() {
    let cluster = TestCluster::start(2, Strategy::Hash).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_a = make_ca(dir.path(), "ca-a");
    let ca_b = make_ca(dir.path(), "ca-b");
    let cert_a = make_server_cert(dir.path(), "server-a", &ca_a);
    let cert_b = make_server_cert(dir.path(), "server-b", &ca_b);
    // Both CAs in one file: the catalog and shard0 have certificates from A, shard1 from B.
    let both = dir.path().join("both.pem");
    let bundle = [&ca_a.0, &ca_b.0]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    std::fs::write(&both, bundle).unwrap();
    for (name, (cert, key)) in [
        ("catalog", &cert_a),
        ("shard0", &cert_a),
        ("shard1", &cert_b),
    ] {
        pgshard::cluster::require_tls(&cluster.info.dir, name, cert, key)
            .await
            .unwrap_or_else(|e| panic!("require tls on {name}: {e}"));
    }
    // Nothing may reach a shard over plain TCP any more.
    let err = proxy::connect_url(&format!(
        "{}?sslmode=disable",
        cluster.info.shard_url(0).unwrap()
    ))
    .await
    .expect_err("plain TCP to a shard is refused");
    let message = err.as_db_error().map(|d| d.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("no encryption")),
        "{err:?}"
    );

    // The certificates name 127.0.0.1, not localhost: with the shards configured as localhost,
    // verify-full refuses them and verify-ca (chain only) accepts them.
    let by_name = |mode, ca: &Path| {
        let tls = server_tls(mode, Some(ca));
        move |config: &mut pgshard::config::Config| {
            config.server_tls = tls;
            for shard in &mut config.shards {
                shard.host = "localhost".into();
            }
        }
    };
    let full = start_proxy_with(&cluster.info, by_name(ServerTlsMode::VerifyFull, &both)).await;
    let (code, message) = lookup(&full, 1)
        .await
        .expect_err("a name mismatch is refused");
    assert!(code.starts_with("08"), "{code} {message}");
    assert!(message.contains("not valid for name"), "{message}");
    // The proxy is still up and answers the next client the same way.
    let (code, _) = lookup(&full, 2).await.expect_err("still refused");
    assert!(code.starts_with("08"), "{code}");
    full.stop().await;
    let chain_only = start_proxy_with(&cluster.info, by_name(ServerTlsMode::VerifyCa, &both)).await;
    let c = proxy::connect(&chain_only).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("verify-ca accepts a certificate for another name")
        .get(0);
    assert!(n >= 0);
    chain_only.stop().await;
    // That proxy recorded the primaries as localhost:port; the next ones name them 127.0.0.1.
    direct_tls(&cluster, "catalog", &both)
        .await
        .batch_execute("DELETE FROM shard_primaries")
        .await
        .unwrap();

    // verify-full with the right CAs: single-shard, scatter and two-phase commits all work.
    let proxy = start_proxy_with(&cluster.info, |c| {
        c.server_tls = server_tls(ServerTlsMode::VerifyFull, Some(&both))
    })
    .await;
    let c = proxy::connect(&proxy).await;
    c.execute("INSERT INTO users (user_id, name) VALUES (1, 'one')", &[])
        .await
        .expect("single-shard insert");
    assert_eq!(lookup(&proxy, 1).await, Ok("one".to_string()));
    let values = (2..=40)
        .map(|id| format!("({id}, 'u{id}')"))
        .collect::<Vec<_>>()
        .join(", ");
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!(
        "INSERT INTO users (user_id, name) VALUES {values}"
    ))
    .await
    .unwrap();
    c.batch_execute("COMMIT")
        .await
        .expect("a transaction writing to both shards commits");
    let on0 = ids_on(&cluster, "shard0", &both).await;
    let on1 = ids_on(&cluster, "shard1", &both).await;
    assert!(!on0.is_empty() && !on1.is_empty(), "{on0:?} {on1:?}");
    assert_eq!(on0.len() + on1.len(), 40);
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 40);
    // The proxy's own sessions on each shard (pools of app and pgshard, monitor, recovery) all use TLS.
    for shard in ["shard0", "shard1"] {
        let row = direct_tls(&cluster, shard, &both)
            .await
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.usename IN ('pgshard', 'app') AND a.backend_type = 'client backend'
                   AND a.pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
        assert!(
            tls >= 1 && plain == 0,
            "{shard}: {tls} over TLS, {plain} plain"
        );
    }
    // A cancel request reaches the shard over TLS too.
    let sleeper = proxy::connect(&proxy).await;
    let token = sleeper.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(30)").await });
    let watcher = direct_tls(
        &cluster,
        &format!("shard{}", proxy.proxy.first_shard),
        &both,
    )
    .await;
    common::wait_until_active(&watcher, "SELECT pg_sleep(30)").await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let err = query.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    proxy.stop().await;

    // Only CA A trusted: shard1's certificate (from B) is refused with a clear error, shard0
    // keeps serving through the same proxy.
    let only_a = start_proxy_with(&cluster.info, |c| {
        c.server_tls = server_tls(ServerTlsMode::VerifyFull, Some(&ca_a.0))
    })
    .await;
    let (code, message) = lookup(&only_a, on1[0])
        .await
        .expect_err("an unknown issuer is refused");
    assert!(code.starts_with("08"), "{code} {message}");
    assert!(
        message.contains("certificate") && message.contains("UnknownIssuer"),
        "{message}"
    );
    let expected = if on0[0] == 1 {
        "one".to_string()
    } else {
        format!("u{}", on0[0])
    };
    assert_eq!(lookup(&only_a, on0[0]).await, Ok(expected));
    only_a.stop().await;

    // require: encrypted, no certificate checks (CA B's certificate and all).
    let require = start_proxy_with(&cluster.info, |c| {
        c.server_tls = server_tls(ServerTlsMode::Require, None)
    })
    .await;
    let c = proxy::connect(&require).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .expect("require mode reaches every shard")
        .get(0);
    assert_eq!(n, 40);
    require.stop().await;
}
