//! Server-side client authentication: the proxy plays the Postgres server for SCRAM-SHA-256
//! (RFC 5802 / RFC 7677, without channel binding), md5 and trust. It stops short of
//! AuthenticationOk so that the caller decides what follows (ParameterStatus, BackendKeyData, …).
//!
//! Nothing here logs a password, a proof or a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{is_md5_hash, AuthMethod, UserConfig};
use crate::wire::backend::{authentication, ErrorFields};
use crate::wire::frame::{split_frame, Frame};
use crate::wire::frontend::PASSWORD;

use crate::wire::backend::{
    AUTH_MD5 as AUTH_MD5_PASSWORD, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL,
};

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Iterations of verifiers the proxy derives itself, as Postgres does by default.
pub const SCRAM_ITERATIONS: u32 = 4096;
/// Random bytes of the server's part of the SCRAM nonce (Postgres uses 18, i.e. 24 base64 chars).
const SERVER_NONCE_LEN: usize = 18;
/// Largest authentication message accepted: real ones are a few hundred bytes, so a client cannot
/// make the proxy buffer much before it has proved who it is.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

/// Why a client could not log in. The caller turns it into a FATAL ErrorResponse.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password, unknown user, or an unusable stored secret: deliberately indistinguishable.
    #[error("password authentication failed for user \"{user}\"")]
    Failed { user: String },
    /// The client broke the protocol (malformed or unexpected message).
    #[error("{0}")]
    Protocol(String),
    /// The connection failed or closed during the exchange.
    #[error("connection lost during authentication: {0}")]
    Io(#[from] std::io::Error),
}

impl AuthError {
    /// The SQLSTATE the client should see.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::Failed { .. } => "28P01",
            AuthError::Protocol(_) => "08P01",
            AuthError::Io(_) => "08006",
        }
    }

    /// The message text of the FATAL error sent to the client.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The FATAL ErrorResponse fields to send (meaningless for `Io`, where nobody is listening).
    pub fn to_error_fields(&self) -> ErrorFields {
        ErrorFields::fatal(self.sqlstate(), self.message())
    }

    fn protocol(message: impl Into<String>) -> AuthError {
        AuthError::Protocol(message.into())
    }
}

/// A SCRAM-SHA-256 secret as Postgres stores it: enough to check a proof, not to log in elsewhere.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs and panics.
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts), the
    /// format of `pg_authid.rolpassword`, so verifiers can be copied from a real server.
    pub fn parse(text: &str) -> Option<ScramVerifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
        let salt = BASE64.decode(salt).ok().filter(|s| !s.is_empty())?;
        let stored_key = BASE64.decode(stored).ok()?.try_into().ok()?;
        let server_key = BASE64.decode(server).ok()?.try_into().ok()?;
        Some(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// The `pg_authid.rolpassword` text form that `parse` reads.
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    /// Derives a verifier from a plain password with a fresh random salt and 4096 iterations.
    /// Uses postgres-protocol's derivation so SASLprep normalisation matches what clients do.
    pub fn from_password(password: &str) -> ScramVerifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The library's output is always in the format `parse` reads; the fallback only guards
        // against a future format change, and can never authenticate anyone.
        ScramVerifier::parse(&text).unwrap_or_else(|| ScramVerifier::mock("", &[0; 32]))
    }

    /// A verifier for a user that does not exist: same shape as a real one and stable per name,
    /// so that neither the flow nor the salt reveals whether the user exists.
    fn mock(user: &str, secret: &[u8; 32]) -> ScramVerifier {
        let salt = hmac_sha256(secret, &[b"salt\0", user.as_bytes()].concat());
        let stored_key = hmac_sha256(secret, &[b"stored\0", user.as_bytes()].concat());
        let server_key = hmac_sha256(secret, &[b"server\0", user.as_bytes()].concat());
        ScramVerifier {
            iterations: SCRAM_ITERATIONS,
            salt: salt[..16].to_vec(),
            stored_key,
            server_key,
        }
    }
}

/// The per-process cache of verifiers derived from plain-text passwords: deriving one costs 4096
/// HMAC rounds and a fresh salt each time would make every login's salt differ.
#[derive(Default)]
pub struct Verifiers {
    by_user: Mutex<HashMap<String, (String, Arc<ScramVerifier>)>>,
}

impl Verifiers {
    /// The cache shared by all sessions of this process.
    pub fn global() -> &'static Verifiers {
        static GLOBAL: OnceLock<Verifiers> = OnceLock::new();
        GLOBAL.get_or_init(Verifiers::default)
    }

    /// The verifier for `user` with this plain `password`; re-derived if the password changed.
    pub fn for_password(&self, user: &str, password: &str) -> Arc<ScramVerifier> {
        {
            let cache = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((cached_password, verifier)) = cache.get(user) {
                if constant_time_eq(cached_password.as_bytes(), password.as_bytes()) {
                    return verifier.clone();
                }
            }
        }
        // Derive outside the lock: 4096 rounds should not stall other logins.
        let verifier = Arc::new(ScramVerifier::from_password(password));
        let mut cache = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache
            .entry(user.to_string())
            .or_insert_with(|| (password.to_string(), verifier.clone()));
        if entry.0 != password {
            *entry = (password.to_string(), verifier.clone());
        }
        entry.1.clone()
    }
}

/// Per-process secret behind mock verifiers, so their salts cannot be precomputed.
fn mock_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        rand::fill(&mut s[..]);
        s
    })
}

/// Authenticates the client on `stream` as `user_name`; `user` is its config entry, `None` if the
/// name is unknown. `buf` holds bytes already read from the client; bytes read past the exchange
/// stay in it. Does not send AuthenticationOk: on `Ok` the caller does.
pub async fn authenticate<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user_name: &str,
    user: Option<&UserConfig>,
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = || AuthError::Failed {
        user: user_name.to_string(),
    };
    let Some(user) = user else {
        let mock = ScramVerifier::mock(user_name, mock_secret());
        scram_exchange(stream, buf, &mock).await?;
        return Err(failed());
    };
    match user.auth {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Md5 => {
            let Some(password) = user.password.as_deref() else {
                return Err(failed());
            };
            md5_exchange(stream, buf, user_name, password).await
        }
        AuthMethod::ScramSha256 => {
            let verifier = match user.password.as_deref() {
                Some(p) if p.starts_with("SCRAM-SHA-256$") => match ScramVerifier::parse(p) {
                    Some(v) => Some(Arc::new(v)),
                    None => {
                        tracing::warn!(user = user_name, "stored SCRAM verifier is malformed");
                        None
                    }
                },
                Some(p) if is_md5_hash(p) => {
                    tracing::warn!(user = user_name, "an md5 hash cannot check SCRAM logins");
                    None
                }
                Some(p) => Some(Verifiers::global().for_password(user_name, p)),
                None => None,
            };
            match verifier {
                Some(v) => {
                    if scram_exchange(stream, buf, &v).await? {
                        Ok(())
                    } else {
                        Err(failed())
                    }
                }
                None => {
                    // Same flow as a wrong password, so the client learns nothing more.
                    let mock = ScramVerifier::mock(user_name, mock_secret());
                    scram_exchange(stream, buf, &mock).await?;
                    Err(failed())
                }
            }
        }
    }
}

/// Runs the md5 challenge; `password` is plain text or `md5` + md5(password + user).
async fn md5_exchange<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    user_name: &str,
    password: &str,
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut salt = [0u8; 4];
    rand::fill(&mut salt[..]);
    send(stream, authentication(AUTH_MD5_PASSWORD, &salt)).await?;
    let body = read_password_message(stream, buf).await?;
    let answer = cstr_body(&body, "password message")?;
    let inner = if is_md5_hash(password) {
        password[3..].to_ascii_lowercase()
    } else {
        hex(&Md5::digest(
            [password.as_bytes(), user_name.as_bytes()].concat(),
        ))
    };
    let expected = format!(
        "md5{}",
        hex(&Md5::digest([inner.as_bytes(), &salt[..]].concat()))
    );
    if constant_time_eq(answer, expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Failed {
            user: user_name.to_string(),
        })
    }
}

/// Runs a whole SCRAM-SHA-256 exchange against `verifier`. Returns whether the client's proof was
/// right (`Ok(false)` for a wrong password); protocol violations are errors. On success the
/// AuthenticationSASLFinal with the server signature has been sent.
async fn scram_exchange<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    verifier: &ScramVerifier,
) -> Result<bool, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut mechanisms = BytesMut::new();
    mechanisms.put_slice(SCRAM_SHA_256.as_bytes());
    mechanisms.put_u8(0);
    mechanisms.put_u8(0);
    send(stream, authentication(AUTH_SASL, &mechanisms)).await?;

    let initial = read_password_message(stream, buf).await?;
    let client_first = parse_sasl_initial_response(&initial)?;
    let first = parse_client_first(client_first)?;

    let mut server_random = [0u8; SERVER_NONCE_LEN];
    rand::fill(&mut server_random[..]);
    let nonce = format!("{}{}", first.client_nonce, BASE64.encode(server_random));
    let server_first = format!(
        "r={nonce},s={},i={}",
        BASE64.encode(&verifier.salt),
        verifier.iterations
    );
    send(
        stream,
        authentication(AUTH_SASL_CONTINUE, server_first.as_bytes()),
    )
    .await?;

    let response = read_password_message(stream, buf).await?;
    let final_msg = parse_client_final(&response, first.gs2_header, &nonce)?;

    let auth_message = format!(
        "{},{},{}",
        first.bare, server_first, final_msg.without_proof
    );
    let client_signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
    let mut client_key = [0u8; 32];
    for (k, (p, s)) in client_key
        .iter_mut()
        .zip(final_msg.proof.iter().zip(client_signature.iter()))
    {
        *k = p ^ s;
    }
    let computed_stored: [u8; 32] = Sha256::digest(client_key).into();
    if !constant_time_eq(&computed_stored, &verifier.stored_key) {
        return Ok(false);
    }
    let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
    let server_final = format!("v={}", BASE64.encode(server_signature));
    send(
        stream,
        authentication(AUTH_SASL_FINAL, server_final.as_bytes()),
    )
    .await?;
    Ok(true)
}

/// The parts of client-first-message the rest of the exchange needs.
pub(crate) struct ClientFirst<'a> {
    /// The gs2 header exactly as sent (`n,,` or `y,,`): client-final must echo it in `c=`.
    pub(crate) gs2_header: &'a str,
    /// client-first-message-bare, part of the AuthMessage.
    pub(crate) bare: &'a str,
    pub(crate) client_nonce: &'a str,
}

/// Splits a SASLInitialResponse body: mechanism name, then Int32 length and the data.
pub(crate) fn parse_sasl_initial_response(body: &[u8]) -> Result<&str, AuthError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| AuthError::protocol("malformed SASLInitialResponse: no mechanism name"))?;
    let mechanism = &body[..nul];
    if mechanism == SCRAM_SHA_256_PLUS.as_bytes() {
        return Err(AuthError::protocol(
            "channel binding is not supported by pgshard; use SCRAM-SHA-256 without channel binding",
        ));
    }
    if mechanism != SCRAM_SHA_256.as_bytes() {
        return Err(AuthError::protocol(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let mut rest = &body[nul + 1..];
    if rest.len() < 4 {
        return Err(AuthError::protocol(
            "malformed SASLInitialResponse: missing length",
        ));
    }
    let len = rest.get_i32();
    if len < 0 || len as usize != rest.len() {
        return Err(AuthError::protocol(
            "malformed SASLInitialResponse: length does not match the data",
        ));
    }
    std::str::from_utf8(rest)
        .map_err(|_| AuthError::protocol("malformed SCRAM message: invalid UTF-8"))
}

/// Parses `gs2-header client-first-message-bare`.
pub(crate) fn parse_client_first(msg: &str) -> Result<ClientFirst<'_>, AuthError> {
    let malformed = |what: &str| AuthError::protocol(format!("malformed SCRAM message: {what}"));
    let (flag, rest) = msg
        .split_once(',')
        .ok_or_else(|| malformed("missing gs2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(AuthError::protocol(
                "channel binding is not supported by pgshard; connect with channel_binding=disable",
            ))
        }
        _ => return Err(malformed("unexpected channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| malformed("missing gs2 header"))?;
    if !authzid.is_empty() {
        return Err(AuthError::protocol(
            "client uses authorization identity, but it is not supported",
        ));
    }
    let gs2_header = &msg[..flag.len() + 2];
    let mut attrs = bare.split(',');
    // The user name is ignored, as Postgres does: the startup message's user is authoritative.
    let user = attrs.next().unwrap_or("");
    if user.starts_with("m=") {
        return Err(AuthError::protocol(
            "client requires an unsupported SCRAM extension",
        ));
    }
    if !user.starts_with("n=") {
        return Err(malformed("expected attribute \"n\""));
    }
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed("expected attribute \"r\""))?;
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed("invalid nonce"));
    }
    Ok(ClientFirst {
        gs2_header,
        bare,
        client_nonce: nonce,
    })
}

pub(crate) struct ClientFinal<'a> {
    without_proof: &'a str,
    proof: [u8; 32],
}

/// Parses client-final-message and checks the echoed channel binding and nonce.
pub(crate) fn parse_client_final<'a>(
    body: &'a [u8],
    gs2_header: &str,
    nonce: &str,
) -> Result<ClientFinal<'a>, AuthError> {
    let malformed = |what: &str| AuthError::protocol(format!("malformed SCRAM message: {what}"));
    let msg = std::str::from_utf8(body).map_err(|_| malformed("invalid UTF-8"))?;
    let proof_at = msg
        .rfind(",p=")
        .ok_or_else(|| malformed("expected attribute \"p\""))?;
    let without_proof = &msg[..proof_at];
    let proof_b64 = &msg[proof_at + 3..];
    let mut attrs = without_proof.split(',');
    let binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or_else(|| malformed("expected attribute \"c\""))?;
    let binding = BASE64
        .decode(binding)
        .map_err(|_| malformed("invalid channel binding data"))?;
    if binding != gs2_header.as_bytes() {
        return Err(AuthError::protocol("SCRAM channel binding check failed"));
    }
    let echoed = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed("expected attribute \"r\""))?;
    if echoed != nonce {
        return Err(AuthError::protocol("SCRAM nonce mismatch"));
    }
    let proof: [u8; 32] = BASE64
        .decode(proof_b64)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| malformed("invalid client proof"))?;
    Ok(ClientFinal {
        without_proof,
        proof,
    })
}

/// Reads the next message, which must be a password-family message (`p`), and returns its body.
async fn read_password_message<S>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = read_frame(stream, buf).await?;
    if frame.tag != PASSWORD {
        return Err(AuthError::protocol(format!(
            "expected password response, got message type {}",
            printable_tag(frame.tag)
        )));
    }
    Ok(frame.body)
}

async fn read_frame<S>(stream: &mut S, buf: &mut BytesMut) -> Result<Frame, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match split_frame(buf, MAX_AUTH_MESSAGE) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => {
                return Err(AuthError::protocol(format!(
                    "invalid authentication message: {e}"
                )))
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(AuthError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client closed the connection",
            )));
        }
    }
}

async fn send<S>(stream: &mut S, frame: Frame) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&frame.to_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

fn printable_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// The NUL-terminated string that is the whole body.
pub(crate) fn cstr_body<'a>(body: &'a [u8], what: &str) -> Result<&'a [u8], AuthError> {
    match body.split_last() {
        Some((0, s)) if !s.contains(&0) => Ok(s),
        _ => Err(AuthError::protocol(format!("malformed {what}"))),
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so this never fails; the fallback keeps it panic-free anyway.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use tokio::io::DuplexStream;

    fn user(auth: AuthMethod, password: Option<&str>) -> UserConfig {
        UserConfig {
            name: "alice".into(),
            password: password.map(str::to_string),
            auth,
            admin: false,
            server_user: None,
            server_password: None,
            allow_scatter: true,
        }
    }

    /// Reads one Authentication message from the proxy: (code, payload).
    async fn read_auth(client: &mut DuplexStream, buf: &mut BytesMut) -> (i32, Vec<u8>) {
        loop {
            if let Some(f) = split_frame(buf, 1 << 20).unwrap() {
                assert_eq!(f.tag, b'R');
                let code = i32::from_be_bytes([f.body[0], f.body[1], f.body[2], f.body[3]]);
                return (code, f.body[4..].to_vec());
            }
            assert!(client.read_buf(buf).await.unwrap() > 0, "server closed");
        }
    }

    async fn write_p(client: &mut DuplexStream, body: &[u8]) {
        client
            .write_all(&Frame::new(PASSWORD, body.to_vec()).to_bytes())
            .await
            .unwrap();
    }

    fn initial_response(data: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_slice(b"SCRAM-SHA-256\0");
        b.put_i32(data.len() as i32);
        b.put_slice(data);
        b.to_vec()
    }

    /// Plays a SCRAM client with the real postgres-protocol implementation. Returns whether the
    /// server's final message verified (None if the server sent no SASLFinal).
    async fn scram_client(mut client: DuplexStream, password: &str) -> Option<bool> {
        let mut buf = BytesMut::new();
        let (code, payload) = read_auth(&mut client, &mut buf).await;
        assert_eq!(code, 10);
        assert_eq!(payload, b"SCRAM-SHA-256\0\0");
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        write_p(&mut client, &initial_response(scram.message())).await;
        let (code, payload) = read_auth(&mut client, &mut buf).await;
        assert_eq!(code, 11);
        scram.update(&payload).unwrap();
        write_p(&mut client, scram.message()).await;
        // Trailing bytes the server must leave in its buffer.
        client.write_all(b"Q\0\0\0\x0dselect 1\0").await.unwrap();
        loop {
            if let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
                let code = i32::from_be_bytes([f.body[0], f.body[1], f.body[2], f.body[3]]);
                assert_eq!(code, 12);
                return Some(scram.finish(&f.body[4..]).is_ok());
            }
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn run_scram(
        user_name: &str,
        config: Option<UserConfig>,
        password: &str,
    ) -> (Result<(), AuthError>, Option<bool>, BytesMut) {
        let (client, mut server) = tokio::io::duplex(4096);
        let name = user_name.to_string();
        let server_task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let r = authenticate(&mut server, &mut buf, &name, config.as_ref()).await;
            drop(server);
            (r, buf)
        });
        let client_result = scram_client(client, password).await;
        let (r, buf) = server_task.await.unwrap();
        (r, client_result, buf)
    }

    #[tokio::test]
    async fn scram_with_plain_password() {
        let u = user(AuthMethod::ScramSha256, Some("s3cret"));
        let (r, client, buf) = run_scram("alice", Some(u.clone()), "s3cret").await;
        r.unwrap();
        assert_eq!(client, Some(true), "server signature must verify");
        // Bytes beyond the exchange stay in the buffer (maybe partially read).
        assert!(b"Q\0\0\0\x0dselect 1\0".starts_with(&buf));
        // A second login reuses the cached verifier and still works.
        let (r, _, _) = run_scram("alice", Some(u), "s3cret").await;
        r.unwrap();
    }

    #[tokio::test]
    async fn scram_with_stored_verifier() {
        let verifier = postgres_protocol::password::scram_sha_256(b"hunter2");
        let u = user(AuthMethod::ScramSha256, Some(&verifier));
        let (r, client, _) = run_scram("alice", Some(u), "hunter2").await;
        r.unwrap();
        assert_eq!(client, Some(true));
    }

    #[tokio::test]
    async fn scram_with_wrong_password_fails() {
        let u = user(AuthMethod::ScramSha256, Some("s3cret"));
        let (r, client, _) = run_scram("alice", Some(u), "wrong").await;
        let e = r.unwrap_err();
        assert!(matches!(e, AuthError::Failed { .. }));
        assert_eq!(e.sqlstate(), "28P01");
        assert_eq!(
            e.message(),
            "password authentication failed for user \"alice\""
        );
        assert_eq!(client, None);
    }

    #[tokio::test]
    async fn unknown_user_fails_like_a_wrong_password() {
        let (r, client, _) = run_scram("mallory", None, "anything").await;
        let e = r.unwrap_err();
        assert_eq!(
            e.message(),
            "password authentication failed for user \"mallory\""
        );
        assert_eq!(e.sqlstate(), "28P01");
        assert_eq!(client, None);
        // The fake salt is stable per name, like a real user's.
        let a = ScramVerifier::mock("mallory", mock_secret());
        let b = ScramVerifier::mock("mallory", mock_secret());
        let c = ScramVerifier::mock("eve", mock_secret());
        assert_eq!(a, b);
        assert_ne!(a.salt, c.salt);
        assert_eq!(a.salt.len(), 16);
    }

    async fn run_md5(
        config: UserConfig,
        answer: impl FnOnce([u8; 4]) -> String,
    ) -> Result<(), AuthError> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let server_task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            authenticate(&mut server, &mut buf, "alice", Some(&config)).await
        });
        let mut buf = BytesMut::new();
        let (code, payload) = read_auth(&mut client, &mut buf).await;
        assert_eq!(code, 5);
        let salt: [u8; 4] = payload.try_into().unwrap();
        let mut body = answer(salt).into_bytes();
        body.push(0);
        write_p(&mut client, &body).await;
        server_task.await.unwrap()
    }

    #[tokio::test]
    async fn md5_right_and_wrong() {
        use postgres_protocol::authentication::md5_hash;
        let plain = user(AuthMethod::Md5, Some("pw"));
        run_md5(plain.clone(), |s| md5_hash(b"alice", b"pw", s))
            .await
            .unwrap();
        let e = run_md5(plain, |s| md5_hash(b"alice", b"nope", s))
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Failed { .. }));
        let hashed = user(
            AuthMethod::Md5,
            Some(&postgres_protocol::password::md5(b"pw", "alice")),
        );
        run_md5(hashed, |s| md5_hash(b"alice", b"pw", s))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn trust_sends_nothing() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::from(&b"leftover"[..]);
        authenticate(
            &mut server,
            &mut buf,
            "alice",
            Some(&user(AuthMethod::Trust, None)),
        )
        .await
        .unwrap();
        assert_eq!(&buf[..], b"leftover");
        drop(server);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
    }

    /// Sends `initial` (a raw SASLInitialResponse body), optionally followed by `final_msg`, and
    /// returns the server's result.
    async fn scram_with_raw(initial: Vec<u8>, final_msg: Option<Vec<u8>>) -> Result<(), AuthError> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let u = user(AuthMethod::ScramSha256, Some("pw"));
        let server_task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            authenticate(&mut server, &mut buf, "alice", Some(&u)).await
        });
        let mut buf = BytesMut::new();
        read_auth(&mut client, &mut buf).await;
        write_p(&mut client, &initial).await;
        if let Some(f) = final_msg {
            let (code, payload) = read_auth(&mut client, &mut buf).await;
            assert_eq!(code, 11);
            let nonce = std::str::from_utf8(&payload)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_string();
            let f = String::from_utf8(f)
                .unwrap()
                .replace("{nonce}", &nonce[2..]);
            write_p(&mut client, f.as_bytes()).await;
        }
        let r = server_task.await.unwrap();
        drop(client);
        r
    }

    #[tokio::test]
    async fn malformed_sasl_messages_are_protocol_errors() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"SCRAM-SHA-256".to_vec(),
            b"SCRAM-SHA-256\0".to_vec(),
            b"SCRAM-SHA-256\0\0\0\0\x05n,,".to_vec(),
            b"SCRAM-SHA-256\0\xff\xff\xff\xff".to_vec(),
            b"MD5\0\0\0\0\0".to_vec(),
            initial_response(b"p=tls-server-end-point,,n=,r=abc"),
            initial_response(b"n,a=bob,n=,r=abc"),
            initial_response(b"x,,n=,r=abc"),
            initial_response(b"n,,"),
            initial_response(b"n,,n=,"),
            initial_response(b"n,,m=ext,n=,r=abc"),
            initial_response(b"n,,n=,r="),
            initial_response(b"n,,n=,r=a\x01b"),
            initial_response(b"n,,n=,r=\xff\xfe"),
        ];
        for case in cases {
            let e = scram_with_raw(case.clone(), None).await.unwrap_err();
            assert!(matches!(e, AuthError::Protocol(_)), "{case:?}: {e:?}");
            assert_eq!(e.sqlstate(), "08P01");
        }
        let e = scram_with_raw(b"SCRAM-SHA-256-PLUS\0\0\0\0\x03abc".to_vec(), None)
            .await
            .unwrap_err();
        assert!(e.message().contains("channel binding"), "{e}");

        let first = initial_response(b"n,,n=,r=clientnonce");
        let finals: Vec<&[u8]> = vec![
            b"",
            b"c=biws,r={nonce}",
            b"c=biws,r=othernonce,p=AAAA",
            b"c=eSws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            b"c=!!!,r={nonce},p=AAAA",
            b"r={nonce},p=AAAA",
            b"c=biws,r={nonce},p=notbase64!",
            b"c=biws,r={nonce},p=AAAA",
        ];
        for f in finals {
            let e = scram_with_raw(first.clone(), Some(f.to_vec()))
                .await
                .unwrap_err();
            assert!(matches!(e, AuthError::Protocol(_)), "{f:?}: {e:?}");
        }
        // A well-formed message with a wrong proof is a failed login, not a protocol error.
        let e = scram_with_raw(
            first,
            Some(b"c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec()),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AuthError::Failed { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn wrong_message_type_or_eof_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let u = user(AuthMethod::Md5, Some("pw"));
        let t = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            authenticate(&mut server, &mut buf, "alice", Some(&u)).await
        });
        client
            .write_all(&Frame::new(b'X', Vec::new()).to_bytes())
            .await
            .unwrap();
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(e, AuthError::Protocol(_)), "{e:?}");

        let (client, mut server) = tokio::io::duplex(4096);
        drop(client);
        let mut buf = BytesMut::new();
        let e = authenticate(
            &mut server,
            &mut buf,
            "alice",
            Some(&user(AuthMethod::Md5, Some("pw"))),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AuthError::Io(_)), "{e:?}");
    }

    #[test]
    fn verifier_parsing() {
        let v = postgres_protocol::password::scram_sha_256(b"x");
        let parsed = ScramVerifier::parse(&v).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        assert!(!format!("{parsed:?}").contains("stored"));
        assert_eq!(parsed.to_text(), v);
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$0:AAAA$",
            "SCRAM-SHA-256$x:AAAA$a:b",
            "md5abc",
        ] {
            assert!(ScramVerifier::parse(bad).is_none(), "{bad}");
        }
    }
}
