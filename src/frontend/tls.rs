//! TLS to clients: the acceptor built from the configured certificate, and the client socket,
//! which is plain TCP until the client asks for TLS (SSLRequest, or a direct TLS ClientHello).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsConfig, TlsMode};

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
    let error = |message: String| TlsSetupError::Cert {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// A client's socket: plain TCP, or TLS over it once negotiated.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// The socket was handed to a TLS handshake that failed; reads see EOF, writes fail.
    Gone,
}

impl ClientStream {
    /// True once TLS is in use.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// True when the client's first byte starts a TLS record (direct TLS, PostgreSQL 17 style);
    /// nothing is consumed.
    pub async fn starts_with_tls(&self) -> io::Result<bool> {
        let ClientStream::Plain(tcp) = self else {
            return Ok(false);
        };
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await?;
        Ok(n == 1 && first[0] == TLS_HANDSHAKE_RECORD)
    }

    /// Runs the TLS handshake on a plain socket; on failure the stream is `Gone`.
    pub async fn start_tls(&mut self, tls: &ClientTls) -> io::Result<()> {
        let tcp = match std::mem::replace(self, ClientStream::Gone) {
            ClientStream::Plain(tcp) => tcp,
            other => {
                *self = other;
                return Err(io::Error::other("TLS is already in use"));
            }
        };
        let stream = tls.acceptor.accept(tcp).await?;
        *self = ClientStream::Tls(Box::new(stream));
        Ok(())
    }

    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Gone => false,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the client's TLS handshake failed",
    )
}
