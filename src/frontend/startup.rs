//! The start of a client connection: SSL/GSS refusal, cancel requests, the StartupMessage,
//! protocol negotiation and authentication.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{ClientStream, ClientTls, ALPN_POSTGRESQL};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::{split_startup, StartupFrame};

/// What the first packets of a connection asked for.
pub enum Opening {
    /// A session: the StartupMessage's parameters and the user and database named.
    Session {
        params: Vec<(String, String)>,
        user: String,
        database: String,
    },
    /// A cancel request (already answered by closing).
    Cancel { pid: i32, secret: i32 },
    /// The client went away or sent garbage (already answered).
    Closed,
}

/// Reads the startup-family packets up to the StartupMessage, switching to TLS on the way when
/// `tls` is configured and the client asks (SSLRequest, or a TLS handshake as its first bytes).
pub async fn read_opening(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    tls: Option<&ClientTls>,
) -> std::io::Result<Opening> {
    if let Some(tls) = tls {
        if buf.is_empty() && stream.starts_with_tls().await? {
            stream.start_tls(tls).await?;
            // As PostgreSQL 17: direct TLS is only for clients that name the protocol.
            if stream.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                let err = ErrorFields::fatal(
                    "08P01",
                    "received direct SSL connection request without ALPN protocol negotiation extension",
                );
                let _ = stream.write_all(&err.to_frame().to_bytes()).await;
                let _ = stream.flush().await;
                return Ok(Opening::Closed);
            }
        }
    }
    loop {
        match split_startup(buf) {
            Ok(Some(request @ (StartupFrame::Ssl | StartupFrame::GssEnc))) => {
                if !buf.is_empty() {
                    // Bytes sent after an SSLRequest before our answer: not a conforming client
                    // (and, before TLS, bytes an attacker could have injected).
                    return Ok(Opening::Closed);
                }
                match tls {
                    Some(tls) if matches!(request, StartupFrame::Ssl) && !stream.is_tls() => {
                        stream.write_all(b"S").await?;
                        stream.flush().await?;
                        stream.start_tls(tls).await?;
                    }
                    _ => stream.write_all(b"N").await?,
                }
                continue;
            }
            Ok(Some(StartupFrame::Cancel { pid, secret })) => {
                return Ok(Opening::Cancel { pid, secret })
            }
            Ok(Some(StartupFrame::Startup { version, params })) => {
                return negotiate(stream, version, params).await
            }
            Ok(None) => {}
            Err(e) => {
                let err = ErrorFields::fatal("08P01", e.to_string());
                let _ = stream.write_all(&err.to_frame().to_bytes()).await;
                return Ok(Opening::Closed);
            }
        }
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            return Ok(Opening::Closed);
        }
    }
}

async fn negotiate(
    stream: &mut ClientStream,
    version: u32,
    params: Vec<(String, String)>,
) -> std::io::Result<Opening> {
    let unknown: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if version & 0xffff != 0 || !unknown.is_empty() {
        let frame = be::negotiate_protocol_version(0, &unknown);
        stream.write_all(&frame.to_bytes()).await?;
    }
    let params: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .collect();
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if user.is_empty() {
        let err = ErrorFields::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        );
        stream.write_all(&err.to_frame().to_bytes()).await?;
        return Ok(Opening::Closed);
    }
    if params
        .iter()
        .any(|(k, v)| k == "replication" && v != "false" && v != "0" && v != "off")
    {
        let err = ErrorFields::fatal(
            "0A000",
            "pgshard does not support replication connections; connect to a shard directly",
        );
        stream.write_all(&err.to_frame().to_bytes()).await?;
        return Ok(Opening::Closed);
    }
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(Opening::Session {
        params,
        user,
        database,
    })
}
