//! The byte stream of a connection pgshard holds, to a client or to a server: plain TCP, TLS
//! over it once negotiated, or a Unix-domain socket to a server on the same host. One type for
//! both directions, so framing code does not care.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// A connection's socket.
pub enum Socket {
    Plain(TcpStream),
    /// TLS as a server (to a client) or as a client (to a Postgres server).
    Tls(Box<TlsStream<TcpStream>>),
    /// To a Postgres server on this host through its socket directory (see `unix_socket_path`).
    Unix(UnixStream),
    /// The socket was handed to a TLS handshake that failed; reads see EOF, writes fail.
    Gone,
}

impl Socket {
    /// True when nothing waits to be read and the peer has not closed, checked without waiting.
    /// What it finds is consumed, so only a connection thrown away on `false` may be probed.
    pub fn idle_and_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// True once TLS is in use.
    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }

    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Socket::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(s) => s.is_write_vectored(),
            Socket::Tls(s) => s.is_write_vectored(),
            Socket::Unix(s) => s.is_write_vectored(),
            Socket::Gone => false,
        }
    }
}

/// For a server address `host:port` whose host is a directory (it starts with `/`, as libpq
/// reads a host), the path of the server's Unix-domain socket there; `None` for a network host.
pub fn unix_socket_path(addr: &str) -> Option<PathBuf> {
    if !addr.starts_with('/') {
        return None;
    }
    let (dir, port) = addr.rsplit_once(':')?;
    Some(Path::new(dir).join(format!(".s.PGSQL.{port}")))
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the TLS handshake failed")
}

/// Every certificate of a PEM file (at least one), or why not.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::unix_socket_path;
    use std::path::PathBuf;

    #[test]
    fn socket_directories_name_the_server_socket_and_network_hosts_do_not() {
        for (addr, want) in [
            (
                "/var/run/postgresql:5432",
                Some("/var/run/postgresql/.s.PGSQL.5432"),
            ),
            ("/tmp/shard 0:6001", Some("/tmp/shard 0/.s.PGSQL.6001")),
            ("127.0.0.1:5432", None),
            ("db.example:5432", None),
            ("/no-port", None),
        ] {
            assert_eq!(unix_socket_path(addr), want.map(PathBuf::from), "{addr}");
        }
    }
}
