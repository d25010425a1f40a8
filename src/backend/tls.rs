//! TLS to Postgres servers, from `[server_tls]`: the rustls client configuration (built once at
//! start-up), the SSLRequest exchange that raw server connections and cancel requests begin with,
//! and the tokio-postgres connector the control plane uses, so that both paths check servers
//! alike.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::{TlsConnector, TlsStream};

use crate::config::{ServerTlsConfig, ServerTlsMode};
use crate::socket::{read_pem_certs, Socket};
use crate::wire::frame::SSL_REQUEST;

/// Why `[server_tls]` could not be used; each names the key and the file.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("server_tls.ca_file: cannot use {path} as a CA file: {message}")]
    Ca { path: String, message: String },
    #[error("server_tls.client_cert: cannot read certificate file {path}: {message}")]
    ClientCert { path: String, message: String },
    #[error("server_tls.client_key: cannot read private key file {path}: {message}")]
    ClientKey { path: String, message: String },
    #[error("server_tls: {0}")]
    Setup(String),
}

/// Why TLS could not be started on a new server connection.
#[derive(Debug, thiserror::Error)]
pub enum StartTlsError {
    #[error("server {addr} refused TLS but server_tls.mode = \"{mode}\"")]
    Refused { addr: String, mode: &'static str },
    #[error("server {addr} answered the SSLRequest with byte 0x{byte:02X}, not S or N")]
    Unexpected { addr: String, byte: u8 },
    #[error("`{host}` (from {addr}) is not a valid server name for TLS")]
    Name { addr: String, host: String },
    #[error("TLS to server {addr} failed: {source}")]
    Handshake { addr: String, source: io::Error },
}

/// The control plane's connection type (tokio-postgres over [`ServerTls`]).
pub type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// How every connection to a Postgres server is protected; cheap to clone (shared config).
#[derive(Clone)]
pub struct ServerTls {
    mode: ServerTlsMode,
    connector: TlsConnector,
    make: MakeRustlsConnect,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode.name())
            .finish()
    }
}

impl ServerTls {
    /// Plain TCP to every server (no `[server_tls]`). The rustls config it carries is never
    /// used: tokio-postgres is told `sslmode=disable` and raw connections stay plain.
    pub fn disabled() -> Result<ServerTls, ServerTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerTlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(&provider)))
            .with_no_client_auth();
        Ok(ServerTls::from_client_config(
            ServerTlsMode::Disable,
            config,
        ))
    }

    /// Builds the client configuration `[server_tls]` describes; absent means disabled.
    pub fn load(config: Option<&ServerTlsConfig>) -> Result<ServerTls, ServerTlsError> {
        let Some(config) = config.filter(|c| c.mode != ServerTlsMode::Disable) else {
            return ServerTls::disabled();
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match config.mode {
            ServerTlsMode::Disable | ServerTlsMode::Require => {
                Arc::new(AnyCertificate::new(&provider))
            }
            ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
                let path = config
                    .ca_file
                    .as_deref()
                    .ok_or_else(|| ServerTlsError::Ca {
                        path: "(none)".into(),
                        message: "verify modes need a CA file".into(),
                    })?;
                let webpki = webpki_verifier(path, &provider)?;
                if config.mode == ServerTlsMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerTlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let certs = read_pem_certs(cert).map_err(|message| ServerTlsError::ClientCert {
                    path: cert.display().to_string(),
                    message,
                })?;
                let key_der =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| ServerTlsError::ClientKey {
                        path: key.display().to_string(),
                        message: e.to_string(),
                    })?;
                builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                    ServerTlsError::ClientKey {
                        path: key.display().to_string(),
                        message: format!("does not fit server_tls.client_cert: {e}"),
                    }
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(ServerTls::from_client_config(config.mode, client))
    }

    fn from_client_config(mode: ServerTlsMode, config: rustls::ClientConfig) -> ServerTls {
        let config = Arc::new(config);
        ServerTls {
            mode,
            connector: TlsConnector::from(config.clone()),
            make: MakeRustlsConnect::new((*config).clone()),
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// tokio-postgres's `sslmode` for this mode: certificate checks are the connector's job.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            ServerTlsMode::Disable => SslMode::Disable,
            _ => SslMode::Require,
        }
    }

    /// Connects tokio-postgres with this TLS setting (its `sslmode` replaced by ours). A server
    /// named by its socket directory is reached without TLS, as libpq does: Postgres offers none
    /// over a Unix-domain socket.
    pub async fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        let mut pg = pg.clone();
        let local = !pg.get_hosts().is_empty()
            && pg
                .get_hosts()
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        pg.ssl_mode(if local {
            SslMode::Disable
        } else {
            self.ssl_mode()
        });
        pg.connect(self.make.clone()).await
    }

    /// [`ServerTls::connect`] to a libpq-style URL (the catalog's). A URL naming several hosts
    /// (a catalog primary and its replicas) connects to the writable one, as libpq's
    /// `target_session_attrs=read-write` does, whatever the URL says.
    pub async fn connect_url(
        &self,
        url: &str,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        self.connect(&writable_catalog(url.parse()?)).await
    }

    /// Turns a fresh TCP connection to `addr` (`host:port`) into the socket the server protocol
    /// runs over: as it is when disabled, else SSLRequest and a TLS handshake checked against
    /// the host. A server that answers `N` is an error, never a fallback to plain TCP.
    pub async fn start(&self, mut tcp: TcpStream, addr: &str) -> Result<Socket, StartTlsError> {
        if self.mode == ServerTlsMode::Disable {
            return Ok(Socket::Plain(tcp));
        }
        let io_error = |source| StartTlsError::Handshake {
            addr: addr.to_string(),
            source,
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
        tcp.write_all(&request).await.map_err(io_error)?;
        // Exactly one byte: anything after an `S` belongs to the TLS handshake.
        let answer = tcp.read_u8().await.map_err(io_error)?;
        match answer {
            b'S' => {}
            b'N' => {
                return Err(StartTlsError::Refused {
                    addr: addr.to_string(),
                    mode: self.mode.name(),
                })
            }
            byte => {
                return Err(StartTlsError::Unexpected {
                    addr: addr.to_string(),
                    byte,
                })
            }
        }
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_string()).map_err(|_| StartTlsError::Name {
            addr: addr.to_string(),
            host: host.to_string(),
        })?;
        let stream = self.connector.connect(name, tcp).await.map_err(io_error)?;
        Ok(Socket::Tls(Box::new(TlsStream::Client(stream))))
    }
}

/// The catalog's connection settings: with several hosts, only a writable one will do (the
/// others are its standbys).
pub fn writable_catalog(mut pg: tokio_postgres::Config) -> tokio_postgres::Config {
    if pg.get_hosts().len() > 1 {
        pg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    pg
}

/// The host part of `host:port` (`[::1]:5432` → `::1`).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn webpki_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, ServerTlsError> {
    let error = |message: String| ServerTlsError::Ca {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_pem_certs(path).map_err(error)? {
        roots
            .add(cert)
            .map_err(|e| error(format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| error(e.to_string()))?;
    Ok(verifier)
}

/// `require`: any certificate is accepted, but the handshake signatures are still checked, so
/// the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new(provider: &CryptoProvider) -> AnyCertificate {
        AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full WebPKI check, except that the certificate need not name the host.
#[derive(Debug)]
struct ChainOnly(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain, so this error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_with_standbys_is_reached_on_its_writable_host() {
        use tokio_postgres::config::TargetSessionAttrs;
        let one: tokio_postgres::Config = "postgres://u:p@127.0.0.1:7000/catalog".parse().unwrap();
        assert_eq!(
            writable_catalog(one).get_target_session_attrs(),
            TargetSessionAttrs::Any
        );
        let two: tokio_postgres::Config = "postgres://u:p@127.0.0.1:7000,127.0.0.1:7001/catalog"
            .parse()
            .unwrap();
        let two = writable_catalog(two);
        assert_eq!(two.get_hosts().len(), 2);
        assert_eq!(two.get_ports(), [7000, 7001]);
        assert_eq!(
            two.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn host_is_taken_from_the_address() {
        assert_eq!(host_of("127.0.0.1:5432"), "127.0.0.1");
        assert_eq!(host_of("db.example:5432"), "db.example");
        assert_eq!(host_of("[::1]:5432"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn modes_map_to_tokio_postgres_ssl_modes() {
        assert_eq!(ServerTls::disabled().unwrap().ssl_mode(), SslMode::Disable);
        let require = ServerTls::load(Some(&ServerTlsConfig {
            mode: ServerTlsMode::Require,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }))
        .unwrap();
        assert_eq!(require.ssl_mode(), SslMode::Require);
        assert_eq!(require.mode(), ServerTlsMode::Require);
    }

    #[test]
    fn a_missing_ca_file_names_the_key_and_the_file() {
        let err = ServerTls::load(Some(&ServerTlsConfig {
            mode: ServerTlsMode::VerifyFull,
            ca_file: Some("/nonexistent/ca.pem".into()),
            client_cert: None,
            client_key: None,
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server_tls.ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_client_certificate_names_its_key() {
        let err = ServerTls::load(Some(&ServerTlsConfig {
            mode: ServerTlsMode::Require,
            ca_file: None,
            client_cert: Some("/nonexistent/client.pem".into()),
            client_key: Some("/nonexistent/client.key".into()),
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server_tls.client_cert") && err.contains("/nonexistent/client.pem"),
            "{err}"
        );
    }
}
