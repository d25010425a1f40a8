//! TLS to clients: psql and tokio-postgres over SSLRequest and direct TLS, a certificate the
//! clients verify, `mode = "require"` refusing plain logins, and no `[tls]` answering `N`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use common::proxy::{self, start_proxy_with, APP_PASSWORD};
use common::TestCluster;
use pgshard::config::{TlsConfig, TlsMode};
use pgshard::router::Strategy;
use pgshard::server::RunningProxy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::process::Command;
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
