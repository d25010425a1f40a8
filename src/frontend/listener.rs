//! Accepting clients: the handshake, authentication, and the session's first server contact
//! (startup settings are checked on a real shard, whose ParameterStatus values the client gets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::tls::ClientStream;
use tokio::sync::watch;

use super::client_io::ClientIo;
use super::session::Session;
use super::startup::{read_opening, Opening};
use crate::admin::clients::ClientInfo;
use crate::backend::pool::ServerLogin;
use crate::backend::session_state::startup_settings;
use crate::live::{ClientSlot, Phase};
use crate::proxy::Proxy;
use crate::session::SessionState;
use crate::telemetry::ClientConnection;
use crate::wire::backend::{self as be, ErrorFields, TxStatus};

/// Accepts clients until `shutdown` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        let _counted = ClientConnection::open();
                        handle_client(proxy, stream, peer).await
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

async fn fatal(stream: &mut ClientStream, fields: ErrorFields) {
    crate::telemetry::record::error_sent(&fields.code);
    let _ = stream.write_all(&fields.to_frame().to_bytes()).await;
    let _ = stream.flush().await;
}

async fn handle_client(proxy: Arc<Proxy>, stream: TcpStream, peer: SocketAddr) {
    // Boxed, and freed before the session runs: the login's state (SCRAM, startup parameters,
    // the first server contact) must not stay in every idle client's task.
    let opened = Box::pin(open_session(&proxy, stream, peer)).await;
    if let Some(Opened {
        session,
        pid,
        secret,
        _listed,
        _slot,
    }) = opened
    {
        session.run().await;
        proxy.cancels.unregister(pid, secret);
    }
}

/// A logged-in client's session, ready to run, with what it holds until it ends.
struct Opened {
    /// Boxed: the task's state keeps the value it was moved out of next to the running session's
    /// (one more copy of a kilobyte-sized struct per idle client).
    session: Box<Session>,
    pid: i32,
    secret: i32,
    _listed: crate::admin::clients::ClientEntry,
    _slot: ClientSlot,
}

/// Logs the client in and checks its settings on a shard; `None` when the client is done
/// (refused, or an admin console client that was served).
async fn open_session(proxy: &Arc<Proxy>, stream: TcpStream, peer: SocketAddr) -> Option<Opened> {
    let _ = stream.set_nodelay(true);
    let mut stream = ClientStream::Plain(stream);
    let mut buf = BytesMut::with_capacity(1024);
    let live = proxy.live.get();
    let login = login(proxy, &mut stream, &mut buf, peer);
    let (params, user, database, slot) = match tokio::time::timeout(live.login_timeout, login).await
    {
        Ok(Ok(v)) => v,
        Ok(Err(Refused::Answered)) => return None,
        Ok(Err(Refused::AfterDelay(fields))) => {
            // Outside the login timeout and without a client slot: the delay only slows the
            // client down.
            tokio::time::sleep(live.failed_login_delay).await;
            fatal(&mut stream, fields).await;
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "client did not log in within proxy.login_timeout_ms");
            fatal(
                &mut stream,
                ErrorFields::fatal("08P01", "timed out waiting for the client to log in")
                    .with_hint("pgshard's proxy.login_timeout_ms limit was reached"),
            )
            .await;
            return None;
        }
    };
    // The role this client's statements run as on the shards, fixed for the whole session.
    let server_login = match live.user(&user) {
        Some(entry) => ServerLogin::for_user(&live.users, entry),
        None => {
            let entry = crate::config::UserConfig::new(&user, None, Default::default());
            ServerLogin::for_user(&[], &entry)
        }
    };
    drop(live);
    let (pid, secret, active) = proxy.cancels.register();
    let listed = proxy.admin.clients.register(ClientInfo {
        pid,
        user: user.clone(),
        database: database.clone(),
        address: Some(peer),
        connected_at: SystemTime::now(),
        pinned: String::new(),
    });
    if database == crate::ADMIN_DATABASE {
        let io = ClientIo::new(stream, buf, &proxy.live.get());
        crate::admin::console::serve(proxy.clone(), io, &user, pid, secret).await;
        proxy.cancels.unregister(pid, secret);
        return None;
    }
    let settings = startup_settings(&params);
    let mut session = Session {
        proxy: proxy.clone(),
        io: ClientIo::new(stream, buf, &proxy.live.get()),
        user: user.clone(),
        server_login,
        state: SessionState::new(settings),
        held: Default::default(),
        parked: Default::default(),
        batch_parses: Vec::new(),
        batch: Vec::new(),
        cancel: active,
        any_shard: proxy.first_shard,
        hold_pass: None,
        reserved_keys: Default::default(),
        pins: super::session_pins::Pins::for_client(pid),
        notify: Default::default(),
        batch_analysis: Default::default(),
        group_plans: Default::default(),
    };
    // The client's startup settings are tried on a real shard, the first one that answers: one
    // shard being down must not keep clients of the others out.
    let mut order: Vec<u32> = proxy.config.shards.iter().map(|s| s.id).collect();
    order.sort_by_key(|id| *id != proxy.first_shard);
    let mut checked_on = None;
    let mut last_error = None;
    for shard in order {
        match session.ensure_conn(shard, false).await {
            Ok(()) => {
                checked_on = Some(shard);
                break;
            }
            Err(fields) if unreachable(&fields) => last_error = Some(fields),
            Err(fields) => {
                last_error = Some(fields);
                break;
            }
        }
    }
    let Some(first) = checked_on else {
        let fields = last_error.unwrap_or_else(|| ErrorFields::error("08001", "no shard answers"));
        let fields = ErrorFields {
            severity: "FATAL".into(),
            ..fields
        };
        session.io.push_error(&fields);
        let _ = session.io.flush().await;
        proxy.cancels.unregister(pid, secret);
        return None;
    };
    session.any_shard = first;
    let mut server_params = session
        .held
        .get(&first)
        .map(|c| c.params.clone())
        .unwrap_or_default();
    if let Ok(mut shared) = proxy.server_params.write() {
        if shared.is_empty() {
            *shared = server_params.clone();
        }
    }
    server_params.insert("session_authorization".into(), user);
    // `is_superuser` stays what the server said for this client's own role.
    server_params
        .entry("is_superuser".into())
        .or_insert_with(|| "off".into());
    let mut names: Vec<_> = server_params.keys().cloned().collect();
    names.sort();
    for name in names {
        if let Some(value) = server_params.get(&name) {
            session.io.push(&be::parameter_status(&name, value));
        }
    }
    session.io.push(&be::backend_key_data(pid, secret));
    session.io.push(&be::ready_for_query(TxStatus::Idle));
    session.release_idle();
    if session.io.flush().await.is_err() {
        proxy.cancels.unregister(pid, secret);
        return None;
    }
    Some(Opened {
        session: Box::new(session),
        pid,
        secret,
        _listed: listed,
        _slot: slot,
    })
}

/// True for errors that say a shard could not be reached (as opposed to a setting it rejected).
fn unreachable(fields: &ErrorFields) -> bool {
    fields.code.starts_with("08") || fields.code == "53300"
}

/// A login that did not succeed.
enum Refused {
    /// The client got its answer (or is gone).
    Answered,
    /// A failed password check: the error goes out after `auth.failed_login_delay_ms`.
    AfterDelay(ErrorFields),
}

/// What a successful login hands the session: the startup parameters, the user, the database
/// (the served one or the admin console's) and the client slot.
type LoggedIn = (Vec<(String, String)>, String, String, ClientSlot);

/// The handshake and authentication.
async fn login(
    proxy: &Proxy,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Result<LoggedIn, Refused> {
    let opening = match read_opening(stream, buf, proxy.client_tls.as_ref()).await {
        Ok(opening) => opening,
        Err(e) => {
            tracing::debug!(error = %e, "client handshake failed");
            return Err(Refused::Answered);
        }
    };
    let (params, user, database) = match opening {
        Opening::Cancel { pid, secret } => {
            proxy.cancels.cancel(pid, secret).await;
            return Err(Refused::Answered);
        }
        Opening::Closed => return Err(Refused::Answered),
        Opening::Session {
            params,
            user,
            database,
        } => (params, user, database),
    };
    if proxy.client_tls.as_ref().is_some_and(|t| t.required) && !stream.is_tls() {
        fatal(
            stream,
            ErrorFields::fatal("28000", "pgshard requires SSL")
                .with_hint("connect with sslmode=require (or verify-ca / verify-full)"),
        )
        .await;
        return Err(Refused::Answered);
    }
    let live = proxy.live.get();
    let limit = live.max_failed_logins_per_minute;
    if let Some(left) = proxy
        .login_failures
        .refused_for(peer.ip(), limit, Instant::now())
    {
        tracing::warn!(user = %user, address = %peer.ip(), "login refused: too many failed logins from this address");
        fatal(
            stream,
            ErrorFields::fatal(
                "28000",
                format!("too many failed login attempts from {}", peer.ip()),
            )
            .with_hint(format!(
                "pgshard's auth.max_failed_logins_per_minute limit ({limit}) is reached; try again in {} s",
                left.as_secs().max(1)
            )),
        )
        .await;
        return Err(Refused::Answered);
    }
    let Some(slot) = proxy.live.admit() else {
        tracing::warn!(user = %user, max_clients = proxy.live.get().max_clients, "client refused: too many clients");
        fatal(
            stream,
            ErrorFields::fatal("53300", "sorry, too many clients already")
                .with_hint("pgshard's proxy.max_clients limit is reached"),
        )
        .await;
        return Err(Refused::Answered);
    };
    if *proxy.phase.borrow() != Phase::Running {
        fatal(
            stream,
            ErrorFields::fatal("57P03", "the database system is shutting down"),
        )
        .await;
        return Err(Refused::Answered);
    }
    if let Err(e) = super::auth::authenticate(stream, buf, &user, live.user(&user)).await {
        tracing::info!(user = %user, address = %peer.ip(), sqlstate = e.sqlstate(), "client login failed");
        if matches!(e, super::auth::AuthError::Failed { .. }) {
            proxy
                .login_failures
                .record_failure(peer.ip(), Instant::now());
            drop(slot);
            return Err(Refused::AfterDelay(e.to_error_fields()));
        }
        fatal(stream, e.to_error_fields()).await;
        return Err(Refused::Answered);
    }
    if database == crate::ADMIN_DATABASE && !live.user(&user).is_some_and(|u| u.admin) {
        tracing::info!(user = %user, "refused a non-admin user the admin console");
        fatal(
            stream,
            ErrorFields::fatal(
                "42501",
                format!("permission denied: user \"{user}\" may not use the pgshard admin console"),
            )
            .with_hint("the admin console is for users with admin = true in [[users]]"),
        )
        .await;
        return Err(Refused::Answered);
    }
    if database != proxy.config.proxy.database && database != crate::ADMIN_DATABASE {
        fatal(
            stream,
            ErrorFields::fatal("3D000", format!("database \"{database}\" does not exist"))
                .with_hint(format!(
                    "this pgshard serves database \"{}\"",
                    proxy.config.proxy.database
                )),
        )
        .await;
        return Err(Refused::Answered);
    }
    if stream
        .write_all(&be::authentication_ok().to_bytes())
        .await
        .is_err()
    {
        return Err(Refused::Answered);
    }
    Ok((params, user, database, slot))
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    /// The size of the future an async fn of three arguments returns.
    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    /// An idle client's task is this future: with thousands of clients, every kilobyte in it is
    /// megabytes. It held the session twice (4.7 KB in a debug build) when the session was moved
    /// out of the login's result into the running future.
    #[test]
    fn an_idle_clients_task_holds_no_copy_of_the_session() {
        let task = future_size(super::handle_client as fn(_, _, _) -> _);
        let session = size_of::<super::Session>();
        assert!(
            task < session + 512,
            "client task {task} bytes, session {session} bytes"
        );
    }
}
