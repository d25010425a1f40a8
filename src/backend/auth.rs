//! Client-side authentication to a Postgres server: after the caller has sent the StartupMessage,
//! answer the server's Authentication requests (cleartext, md5, SCRAM-SHA-256) until
//! AuthenticationOk. The SCRAM and md5 computations come from `postgres-protocol`.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::backend::{
    ErrorFields, AUTHENTICATION, ERROR_RESPONSE, NEGOTIATE_PROTOCOL_VERSION, NOTICE_RESPONSE,
};
use crate::wire::frame::{split_frame, Frame};
use crate::wire::frontend::PASSWORD;

use crate::wire::backend::{
    AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL,
};

/// Largest message accepted before login completes (errors and SASL messages are small).
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

/// Why the proxy could not log into a server.
#[derive(Debug, thiserror::Error)]
pub enum BackendAuthError {
    /// The server sent an ErrorResponse (wrong password, unknown role or database, too many
    /// connections, …); its SQLSTATE and text are kept so they can be reported as they are.
    #[error("server refused login for user \"{user}\": {message} (SQLSTATE {code})")]
    Server {
        user: String,
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("server asks for a password for user \"{user}\", but none is configured")]
    PasswordRequired { user: String },
    #[error("server requested an authentication method pgshard does not support: {0}")]
    Unsupported(String),
    /// SCRAM failed on our side, e.g. the server's signature was wrong (it does not know the
    /// password, so it is not the server we meant to reach).
    #[error("SCRAM authentication with the server failed: {0}")]
    Scram(String),
    #[error("protocol error while logging into the server: {0}")]
    Protocol(String),
    #[error("connection to the server failed during login: {0}")]
    Io(#[from] std::io::Error),
}

impl BackendAuthError {
    /// The SQLSTATE to report to a client: the server's own for `Server`, else a connection one.
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendAuthError::Server { code, .. } => code,
            BackendAuthError::PasswordRequired { .. } => "28P01",
            BackendAuthError::Unsupported(_) => "28000",
            BackendAuthError::Scram(_) => "28000",
            BackendAuthError::Protocol(_) => "08P01",
            BackendAuthError::Io(_) => "08006",
        }
    }
}

/// Answers the server's authentication requests on `stream` as `user` until AuthenticationOk.
/// `buf` holds bytes already read from the server; everything after AuthenticationOk
/// (ParameterStatus, BackendKeyData, ReadyForQuery) is left in it unread.
pub async fn login<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    password: Option<&str>,
) -> Result<(), BackendAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let need_password = || match password {
        Some(p) => Ok(p),
        None => Err(BackendAuthError::PasswordRequired {
            user: user.to_string(),
        }),
    };
    let mut scram: Option<ScramSha256> = None;
    // Set once the server proved it knows the password (SASLFinal verified).
    let mut scram_done = false;
    loop {
        let frame = read_frame(stream, buf).await?;
        match frame.tag {
            AUTHENTICATION => {}
            ERROR_RESPONSE => {
                let fields = ErrorFields::decode(&frame.body)
                    .map_err(|e| BackendAuthError::Protocol(e.to_string()))?;
                return Err(BackendAuthError::Server {
                    user: user.to_string(),
                    code: fields.code,
                    message: fields.message,
                    detail: fields.detail,
                    hint: fields.hint,
                });
            }
            // Harmless before AuthenticationOk: a notice, or the server saying it speaks an
            // older minor version / ignores unknown `_pq_` options.
            NOTICE_RESPONSE | NEGOTIATE_PROTOCOL_VERSION => continue,
            other => {
                return Err(BackendAuthError::Protocol(format!(
                    "unexpected message type 0x{other:02x} during authentication"
                )))
            }
        }
        let body = &frame.body;
        if body.len() < 4 {
            return Err(BackendAuthError::Protocol(
                "authentication message without a code".into(),
            ));
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let payload = &body[4..];
        match code {
            AUTH_OK => {
                if scram.is_some() && !scram_done {
                    return Err(BackendAuthError::Scram(
                        "server ended SCRAM authentication without proving it knows the password"
                            .into(),
                    ));
                }
                return Ok(());
            }
            AUTH_CLEARTEXT => {
                let p = need_password()?;
                let mut b = BytesMut::with_capacity(p.len() + 1);
                b.put_slice(p.as_bytes());
                b.put_u8(0);
                send(stream, PASSWORD, b.freeze()).await?;
            }
            AUTH_MD5 => {
                let p = need_password()?;
                let salt: [u8; 4] = payload.try_into().map_err(|_| {
                    BackendAuthError::Protocol("md5 request must carry a 4-byte salt".into())
                })?;
                let hash = md5_hash(user.as_bytes(), p.as_bytes(), salt);
                let mut b = BytesMut::with_capacity(hash.len() + 1);
                b.put_slice(hash.as_bytes());
                b.put_u8(0);
                send(stream, PASSWORD, b.freeze()).await?;
            }
            AUTH_SASL => {
                if scram.is_some() {
                    return Err(BackendAuthError::Protocol(
                        "server restarted SASL authentication".into(),
                    ));
                }
                let offers_scram = payload
                    .split(|&b| b == 0)
                    .any(|m| m == SCRAM_SHA_256.as_bytes());
                if !offers_scram {
                    let offered: Vec<String> = payload
                        .split(|&b| b == 0)
                        .filter(|m| !m.is_empty())
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect();
                    return Err(BackendAuthError::Unsupported(format!(
                        "SASL mechanisms {offered:?} (pgshard supports SCRAM-SHA-256 without channel binding)"
                    )));
                }
                let p = need_password()?;
                let client = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                let data = client.message();
                let mut b = BytesMut::with_capacity(SCRAM_SHA_256.len() + 5 + data.len());
                b.put_slice(SCRAM_SHA_256.as_bytes());
                b.put_u8(0);
                b.put_i32(data.len() as i32);
                b.put_slice(data);
                send(stream, PASSWORD, b.freeze()).await?;
                scram = Some(client);
            }
            AUTH_SASL_CONTINUE => {
                let client = scram.as_mut().ok_or_else(|| {
                    BackendAuthError::Protocol("SASLContinue before SASL was started".into())
                })?;
                client
                    .update(payload)
                    .map_err(|e| BackendAuthError::Scram(e.to_string()))?;
                send(stream, PASSWORD, Bytes::copy_from_slice(client.message())).await?;
            }
            AUTH_SASL_FINAL => {
                let client = scram.as_mut().ok_or_else(|| {
                    BackendAuthError::Protocol("SASLFinal before SASL was started".into())
                })?;
                client
                    .finish(payload)
                    .map_err(|e| BackendAuthError::Scram(e.to_string()))?;
                scram_done = true;
            }
            2 => return Err(BackendAuthError::Unsupported("Kerberos V5".into())),
            7 | 8 => return Err(BackendAuthError::Unsupported("GSSAPI".into())),
            9 => return Err(BackendAuthError::Unsupported("SSPI".into())),
            other => {
                return Err(BackendAuthError::Unsupported(format!(
                    "authentication request code {other}"
                )))
            }
        }
    }
}

async fn read_frame<S>(stream: &mut S, buf: &mut BytesMut) -> Result<Frame, BackendAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match split_frame(buf, MAX_LOGIN_MESSAGE) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(BackendAuthError::Protocol(e.to_string())),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendAuthError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection during authentication",
            )));
        }
    }
}

async fn send<S>(stream: &mut S, tag: u8, body: Bytes) -> Result<(), BackendAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&Frame::new(tag, body).to_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthMethod, UserConfig};
    use crate::frontend::auth::authenticate;
    use crate::wire::backend::{authentication, authentication_ok, ready_for_query, TxStatus};

    /// Plays a server with the proxy's own client-auth implementation, then sends
    /// AuthenticationOk and ReadyForQuery; returns login's result and the bytes left in its buffer.
    async fn against_server(
        auth: AuthMethod,
        stored: &str,
        password: Option<&str>,
    ) -> (Result<(), BackendAuthError>, BytesMut) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let config = UserConfig {
            name: "app".into(),
            password: Some(stored.to_string()),
            auth,
            admin: false,
            server_user: None,
            server_password: None,
            allow_scatter: true,
        };
        let server_task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            match authenticate(&mut server, &mut buf, "app", Some(&config)).await {
                Ok(()) => {
                    let mut out = BytesMut::new();
                    authentication_ok().encode(&mut out);
                    ready_for_query(TxStatus::Idle).encode(&mut out);
                    server.write_all(&out).await.unwrap();
                }
                Err(e) => {
                    let _ = server
                        .write_all(&e.to_error_fields().to_frame().to_bytes())
                        .await;
                }
            }
            server
        });
        let mut buf = BytesMut::new();
        let r = login(&mut client, &mut buf, "app", password).await;
        if r.is_err() {
            // The server may still wait for a password we chose not to send.
            drop(client);
            let _ = server_task.await;
            return (r, buf);
        }
        let _server = server_task.await.unwrap();
        // Let the rest arrive so the test can check it was not consumed.
        if r.is_ok() {
            while buf.is_empty() {
                client.read_buf(&mut buf).await.unwrap();
            }
        }
        (r, buf)
    }

    #[tokio::test]
    async fn scram_login_leaves_later_messages_unread() {
        let (r, buf) = against_server(AuthMethod::ScramSha256, "pw", Some("pw")).await;
        r.unwrap();
        assert_eq!(&buf[..], &ready_for_query(TxStatus::Idle).to_bytes()[..]);
    }

    #[tokio::test]
    async fn md5_login() {
        let (r, _) = against_server(AuthMethod::Md5, "pw", Some("pw")).await;
        r.unwrap();
        let (r, _) = against_server(AuthMethod::Md5, "pw", Some("bad")).await;
        let e = r.unwrap_err();
        assert_eq!(e.sqlstate(), "28P01");
        assert!(
            e.to_string().contains("password authentication failed"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn wrong_scram_password_reports_the_server_error() {
        let (r, _) = against_server(AuthMethod::ScramSha256, "pw", Some("bad")).await;
        match r.unwrap_err() {
            BackendAuthError::Server { code, message, .. } => {
                assert_eq!(code, "28P01");
                assert_eq!(message, "password authentication failed for user \"app\"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_password_is_reported() {
        let (r, _) = against_server(AuthMethod::Md5, "pw", None).await;
        assert!(matches!(
            r.unwrap_err(),
            BackendAuthError::PasswordRequired { .. }
        ));
    }

    /// Feeds canned server messages to login and returns its result and what it sent.
    async fn scripted(
        messages: Vec<Frame>,
        password: Option<&str>,
    ) -> (Result<(), BackendAuthError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut out = BytesMut::new();
        for m in messages {
            m.encode(&mut out);
        }
        server.write_all(&out).await.unwrap();
        // End of the script: login sees EOF instead of waiting forever.
        server.shutdown().await.unwrap();
        let mut buf = BytesMut::new();
        let r = login(&mut client, &mut buf, "app", password).await;
        drop(client);
        let mut sent = Vec::new();
        server.read_to_end(&mut sent).await.unwrap();
        (r, sent)
    }

    #[tokio::test]
    async fn cleartext_and_trust() {
        let (r, sent) = scripted(
            vec![authentication(3, b""), authentication_ok()],
            Some("pw"),
        )
        .await;
        r.unwrap();
        assert_eq!(sent, Frame::new(b'p', &b"pw\0"[..]).to_bytes().to_vec());
        let (r, sent) = scripted(vec![authentication_ok()], None).await;
        r.unwrap();
        assert!(sent.is_empty());
    }

    #[tokio::test]
    async fn bad_server_messages_are_errors_not_panics() {
        let cases = vec![
            vec![Frame::new(b'R', &b"\0\0"[..])],
            vec![authentication(5, b"\0\0")],
            vec![authentication(11, b"r=x")],
            vec![authentication(12, b"v=x")],
            vec![authentication(10, b"SCRAM-SHA-256-PLUS\0\0")],
            vec![
                authentication(10, b"SCRAM-SHA-256\0\0"),
                authentication(11, b"garbage"),
            ],
            vec![
                authentication(10, b"SCRAM-SHA-256\0\0"),
                authentication_ok(),
            ],
            vec![authentication(7, b"")],
            vec![Frame::new(b'Z', &b"I"[..])],
            vec![Frame::new(b'E', &b"Cxx"[..])],
            vec![],
        ];
        for case in cases {
            let (r, _) = scripted(case.clone(), Some("pw")).await;
            assert!(r.is_err(), "{case:?}");
        }
    }

    #[tokio::test]
    async fn server_error_keeps_sqlstate() {
        let err = ErrorFields::fatal("3D000", "database \"nope\" does not exist").to_frame();
        let (r, _) = scripted(vec![err], Some("pw")).await;
        let e = r.unwrap_err();
        assert_eq!(e.sqlstate(), "3D000");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
