//! TLS to clients: the acceptor built from the configured certificate, and the client socket,
//! which is plain TCP until the client asks for TLS (SSLRequest, or a direct TLS ClientHello).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsStream};

use crate::config::{TlsConfig, TlsMode};
use crate::socket::Socket;

/// The ALPN protocol name PostgreSQL 17 clients offer (and require for direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The first byte of a TLS handshake record: a client starting TLS without an SSLRequest.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why the configured certificate or key could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.cert: cannot read certificate file {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("tls.key: cannot read private key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("tls: certificate {cert} and key {key} cannot be used together: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// What the listener needs to offer clients TLS.
pub struct ClientTls {
    acceptor: TlsAcceptor,
    /// True when clients without TLS are refused (`mode = "require"`).
    pub required: bool,
}

impl ClientTls {
    /// Reads the certificate chain and key named in `[tls]` and builds the acceptor.
    pub fn load(config: &TlsConfig) -> Result<ClientTls, TlsSetupError> {
        let certs = read_certs(&config.cert)?;
        let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsSetupError::Key {
            path: config.key.clone(),
            message: e.to_string(),
        })?;
        let pair_error = |source| TlsSetupError::Pair {
            cert: config.cert.clone(),
            key: config.key.clone(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pair_error)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(pair_error)?;
        server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(ClientTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            required: config.mode == TlsMode::Require,
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    crate::socket::read_pem_certs(path).map_err(|message| TlsSetupError::Cert {
        path: path.to_path_buf(),
        message,
    })
}

/// A client's socket: plain TCP until the client asks for TLS.
pub type ClientStream = Socket;

impl Socket {
    /// True when the client's first byte starts a TLS record (direct TLS, PostgreSQL 17 style);
    /// nothing is consumed.
    pub async fn starts_with_tls(&self) -> io::Result<bool> {
        let Socket::Plain(tcp) = self else {
            return Ok(false);
        };
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await?;
        Ok(n == 1 && first[0] == TLS_HANDSHAKE_RECORD)
    }

    /// Runs the TLS handshake as a server on a plain socket; on failure the stream is `Gone`.
    pub async fn start_tls(&mut self, tls: &ClientTls) -> io::Result<()> {
        let tcp = match std::mem::replace(self, Socket::Gone) {
            Socket::Plain(tcp) => tcp,
            other => {
                *self = other;
                return Err(io::Error::other("TLS is already in use"));
            }
        };
        let stream = tls.acceptor.accept(tcp).await?;
        *self = Socket::Tls(Box::new(TlsStream::Server(stream)));
        Ok(())
    }
}
