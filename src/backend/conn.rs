//! One raw connection to a Postgres server. Frames are read and written as bytes; only the
//! messages that change the connection's state (ReadyForQuery, ParameterStatus, errors) are decoded.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::prepared_lru::PreparedNames;
use super::tls::{ServerTls, StartTlsError};
use super::topology::Lsn;
use crate::config::ShardConfig;
use crate::socket::Socket;
use crate::wire::backend::{self as be, ErrorFields, TxStatus};
use crate::wire::frame::{split_frame, Frame, PROTOCOL_V3};
use crate::wire::frontend;

/// Largest message accepted from a server (DataRows can be large, up to Postgres's 1 GB limit).
const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Why a server connection failed; every variant means the connection must not be reused, except
/// `Server`, which is an ordinary SQL error the server reported on a healthy connection.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to shard {shard} at {addr}: {source}")]
    Connect {
        shard: u32,
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to shard {shard} at {addr}")]
    ConnectTimeout { shard: u32, addr: String },
    #[error("shard {shard}: {source}")]
    Tls { shard: u32, source: StartTlsError },
    #[error("shard {shard} refused login: {message}")]
    Login { shard: u32, message: String },
    #[error("lost connection to shard {shard}: {source}")]
    Io { shard: u32, source: std::io::Error },
    #[error("shard {shard} closed the connection")]
    Closed { shard: u32 },
    #[error("shard {shard} sent a malformed message: {detail}")]
    Protocol { shard: u32, detail: String },
    /// The server ended the connection with a FATAL (or PANIC) error, e.g. 57P01 after
    /// `pg_terminate_backend` or a shutdown: only this server connection is gone.
    #[error("shard {shard} closed the connection: {}", .fields.message)]
    Terminated { shard: u32, fields: ErrorFields },
    #[error("shard {shard}: {}", .fields.message)]
    Server { shard: u32, fields: ErrorFields },
}

/// Where to send a CancelRequest for the query a server connection is running, and how (the
/// cancel connection is protected like the one it cancels).
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: std::sync::Arc<str>,
    pub pid: i32,
    pub secret: i32,
    pub tls: ServerTls,
}

impl PartialEq for CancelTarget {
    fn eq(&self, other: &Self) -> bool {
        (&self.addr, self.pid, self.secret) == (&other.addr, other.pid, other.secret)
    }
}

impl Eq for CancelTarget {}

/// A logged-in server connection and what the proxy knows about its state.
pub struct ServerConn {
    stream: Socket,
    tls: ServerTls,
    rbuf: BytesMut,
    wbuf: BytesMut,
    pub shard: u32,
    /// Which of the shard's servers this is (0: the configured primary, 1..: replicas).
    pub server: u16,
    pub addr: std::sync::Arc<str>,
    pub pid: i32,
    pub secret: i32,
    /// Parameters the server reported (ParameterStatus), kept current.
    pub params: HashMap<String, String>,
    /// Server-side prepared statement names that exist on this connection, least recently used
    /// first (capped by `pool.max_prepared_statements`).
    pub prepared: PreparedNames,
    /// Session settings applied on this connection on top of its login defaults (name → SQL value).
    pub applied: BTreeMap<String, String>,
    /// True when `applied` cannot be trusted (a rolled-back SET): the next user resets everything.
    pub settings_unknown: bool,
    /// Transaction status of the last ReadyForQuery.
    pub status: TxStatus,
    /// False while a request is in flight; a connection is only reusable when this is true.
    pub synced: bool,
    /// The proxy bounded lock waits in the open transaction (a block across shards): a lock
    /// timeout there stands for a deadlock no one shard can see.
    pub proxy_lock_timeout: bool,
    /// Set-up owed to the server before the next request (a shard joining a block: its BEGIN,
    /// SET LOCALs, savepoints): sent in the same write as that request, so it costs no round trip.
    setup: DeferredSetup,
    /// A statement of the open transaction may have written: its command tag is not one of a
    /// statement that only reads. A hint (a SELECT may call a function that writes): a one-phase
    /// commit asks Postgres before trusting it.
    pub wrote: bool,
    /// Set by a session in `lsn` read-your-writes mode before a commit the proxy runs itself
    /// (`commit_silently`): the WAL position is asked for in the same write as the commit.
    pub want_commit_lsn: bool,
    /// The primary's WAL position read right after this connection's last `commit_silently`
    /// that asked for it: at or past that commit.
    pub commit_lsn: Option<Lsn>,
    /// A position question was queued and its answer not read yet: the connection is not in
    /// sync, whatever ReadyForQuery came before it (one left unread would answer the next user).
    probe_pending: bool,
}

/// The question asked on a primary's connection right behind a commit, in the same write: its
/// answer is at or past the commit (the commit was acknowledged before it ran).
pub const COMMIT_LSN_QUERY: &str = "SELECT pg_current_wal_lsn()";

impl ServerConn {
    /// Connects to server `server` of `shard` at `addr` (over TLS when `tls` says so), logs in as
    /// `login` (role and password) and reads the server's start-up messages up to the first
    /// ReadyForQuery.
    /// Connects to the shard's primary as a logical replication connection (start-up parameter
    /// `replication=database`): it accepts replication commands such as `CREATE_REPLICATION_SLOT`
    /// besides SQL. tokio-postgres has no such connection; rebalancing needs one to create a
    /// slot together with the snapshot its initial copy reads.
    pub async fn connect_replication(
        shard: &ShardConfig,
        login: (&str, Option<&str>),
        tls: &ServerTls,
        timeout: Duration,
    ) -> Result<ServerConn, BackendError> {
        let extra = [("replication", "database")];
        Self::connect(shard, 0, shard.address(), login, (tls, timeout), &extra).await
    }

    /// Connects to server `server` of `shard` at `addr` (over TLS when `tls` says so, giving up
    /// after `timeout`), logs in as `login` (role and password) with the start-up parameters
    /// `extra` besides user, database and encoding, and reads the server's start-up messages up
    /// to the first ReadyForQuery.
    pub async fn connect(
        shard: &ShardConfig,
        server: u16,
        addr: String,
        login: (&str, Option<&str>),
        (tls, timeout): (&ServerTls, Duration),
        extra: &[(&str, &str)],
    ) -> Result<ServerConn, BackendError> {
        let stream = match crate::socket::unix_socket_path(&addr) {
            // A server on this host through its socket directory: no TCP stack on either side,
            // and no TLS (as libpq, which never negotiates it over a Unix-domain socket).
            Some(path) => match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
                Err(_) => {
                    return Err(BackendError::ConnectTimeout {
                        shard: shard.id,
                        addr,
                    })
                }
                Ok(Err(source)) => {
                    return Err(BackendError::Connect {
                        shard: shard.id,
                        addr,
                        source,
                    })
                }
                Ok(Ok(s)) => Socket::Unix(s),
            },
            None => open_tcp(shard.id, addr.clone(), tls, timeout).await?,
        };
        let mut conn = ServerConn {
            stream,
            tls: tls.clone(),
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(4 * 1024),
            shard: shard.id,
            server,
            addr: addr.into(),
            pid: 0,
            secret: 0,
            params: HashMap::new(),
            prepared: PreparedNames::default(),
            applied: BTreeMap::new(),
            settings_unknown: false,
            status: TxStatus::Idle,
            synced: false,
            proxy_lock_timeout: false,
            setup: DeferredSetup::default(),
            wrote: false,
            want_commit_lsn: false,
            commit_lsn: None,
            probe_pending: false,
        };
        let (user, password) = login;
        let login = conn.login(user, &shard.database, password, extra);
        match tokio::time::timeout(timeout, login).await {
            Err(_) => Err(BackendError::ConnectTimeout {
                shard: shard.id,
                addr: conn.addr.to_string(),
            }),
            Ok(r) => r.map(|_| conn),
        }
    }

    async fn login(
        &mut self,
        user: &str,
        database: &str,
        password: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<(), BackendError> {
        let mut body = BytesMut::new();
        body.put_u32(PROTOCOL_V3);
        let fixed = [
            ("user", user),
            ("database", database),
            ("client_encoding", "UTF8"),
        ];
        for &(k, v) in fixed.iter().chain(extra) {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut packet = BytesMut::with_capacity(body.len() + 4);
        packet.put_i32(body.len() as i32 + 4);
        packet.put_slice(&body);
        let shard = self.shard;
        self.stream
            .write_all(&packet)
            .await
            .map_err(|source| BackendError::Io { shard, source })?;
        super::auth::login(&mut self.stream, &mut self.rbuf, user, password)
            .await
            .map_err(|e| match e {
                // The connection broke (reset, closed) rather than the server refusing us.
                super::auth::BackendAuthError::Io(source) => BackendError::Io { shard, source },
                e => BackendError::Login {
                    shard,
                    message: e.to_string(),
                },
            })?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                be::READY_FOR_QUERY => {
                    self.synced = true;
                    return Ok(());
                }
                be::ERROR_RESPONSE => {
                    let fields =
                        ErrorFields::decode(&frame.body).map_err(|e| BackendError::Protocol {
                            shard,
                            detail: e.to_string(),
                        })?;
                    return Err(BackendError::Login {
                        shard,
                        message: fields.message,
                    });
                }
                be::BACKEND_KEY_DATA => {
                    let (pid, secret) = be::decode_backend_key_data(&frame.body).map_err(|e| {
                        BackendError::Protocol {
                            shard,
                            detail: e.to_string(),
                        }
                    })?;
                    self.pid = pid;
                    self.secret = secret;
                }
                _ => {}
            }
        }
    }

    /// Reads the next frame of the request in flight, keeping `params` and `status` current. The
    /// answers of a deferred set-up sent in front of it are read here and not returned; when the
    /// set-up failed, the request's first error (the 25P02 its failure caused) is replaced by the
    /// set-up's own.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            let frame = self.read_server_frame().await?;
            if !self.setup.answers_pending {
                if frame.tag == be::ERROR_RESPONSE {
                    if let Some(error) = self.setup.error.take() {
                        return Ok(error);
                    }
                } else if frame.tag == be::READY_FOR_QUERY {
                    self.setup.error = None;
                }
                return Ok(frame);
            }
            match frame.tag {
                be::ERROR_RESPONSE if self.setup.error.is_none() => {
                    tracing::debug!(shard = self.shard, "a deferred transaction set-up failed");
                    self.setup.error = Some(frame);
                }
                be::READY_FOR_QUERY => {
                    // The request sent behind the set-up is still in flight.
                    self.setup.answers_pending = false;
                    self.synced = false;
                }
                _ => {}
            }
        }
    }

    async fn read_server_frame(&mut self) -> Result<Frame, BackendError> {
        let shard = self.shard;
        loop {
            match split_frame(&mut self.rbuf, MAX_SERVER_MESSAGE) {
                Ok(Some(frame)) => {
                    self.observe(&frame)?;
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(BackendError::Protocol {
                        shard,
                        detail: e.to_string(),
                    })
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|source| BackendError::Io { shard, source })?;
            if n == 0 {
                return Err(BackendError::Closed { shard });
            }
        }
    }

    fn observe(&mut self, frame: &Frame) -> Result<(), BackendError> {
        let shard = self.shard;
        let protocol = |e: crate::wire::read::DecodeError| BackendError::Protocol {
            shard,
            detail: e.to_string(),
        };
        match frame.tag {
            be::READY_FOR_QUERY => {
                self.status = be::decode_ready_for_query(&frame.body).map_err(protocol)?;
                self.synced = !self.probe_pending;
                if self.status == TxStatus::Idle {
                    self.proxy_lock_timeout = false;
                    self.wrote = false;
                }
            }
            be::COMMAND_COMPLETE if !self.wrote => self.wrote = !tag_only_reads(&frame.body),
            be::PARAMETER_STATUS => {
                let (k, v) = be::decode_parameter_status(&frame.body).map_err(protocol)?;
                self.params.insert(k, v);
            }
            _ => {}
        }
        Ok(())
    }

    /// Queues a frame to send; nothing is written until `flush`.
    pub fn queue(&mut self, frame: &Frame) {
        self.queue_setup();
        self.synced = false;
        frame.encode(&mut self.wbuf);
    }

    /// Queues already-framed bytes.
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.queue_setup();
        self.synced = false;
        self.wbuf.extend_from_slice(bytes);
    }

    /// Owes `sql` (simple protocol, its results discarded) to the server before the next request,
    /// in the same write. Only on a connection with nothing in flight (else returns false and
    /// defers nothing): the set-up's answers must come first.
    pub fn defer(&mut self, sql: &str) -> bool {
        if !self.synced {
            return false;
        }
        match &mut self.setup.sql {
            Some(owed) => {
                owed.push(';');
                owed.push_str(sql);
            }
            None => self.setup.sql = Some(sql.to_string()),
        }
        true
    }

    /// Forgets a set-up not sent yet (the block it was for ended); true if there was one.
    pub fn drop_deferred(&mut self) -> bool {
        self.setup.sql.take().is_some()
    }

    fn queue_setup(&mut self) {
        if let Some(sql) = self.setup.sql.take() {
            frontend::query(&sql).encode(&mut self.wbuf);
            self.setup.answers_pending = true;
            self.setup.error = None;
        }
    }

    /// Bytes queued but not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), BackendError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let shard = self.shard;
        // Written from the buffer in place and then cleared, so the buffer's memory is reused as
        // it is (a split made it shared and the next message's reserve had to win it back). The
        // guard clears it however the write ends, a cancelled one too: nothing is sent twice.
        let out = ClearOnDrop(&mut self.wbuf);
        self.stream
            .write_all(out.0)
            .await
            .map_err(|source| BackendError::Io { shard, source })
    }

    /// Runs `sql` (simple protocol) and discards its results; an SQL error becomes `Server`.
    pub async fn run_silently(&mut self, sql: &str) -> Result<(), BackendError> {
        self.query_text(sql).await.map(|_| ())
    }

    /// Runs `sql` (simple protocol) and returns the first column of its first row as text, for
    /// the proxy's own one-value questions (`pg_current_wal_lsn()`).
    pub async fn query_text(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        Ok(self
            .query_row(sql)
            .await?
            .and_then(|row| row.into_iter().next().flatten()))
    }

    /// Runs `sql` (simple protocol) and returns every column of its first row as text (`None`
    /// for null), or `None` without rows: for answers of several columns (a replication slot's
    /// name, position and snapshot).
    pub async fn query_row(
        &mut self,
        sql: &str,
    ) -> Result<Option<Vec<Option<String>>>, BackendError> {
        self.queue(&frontend::query(sql));
        self.flush().await?;
        self.read_row_answer().await
    }

    /// Runs a commit (`COMMIT`, `COMMIT PREPARED …`) like `run_silently`; when `want_commit_lsn`
    /// is set, also asks for the WAL position in the same write and keeps it in `commit_lsn`
    /// (left `None` if the commit failed or the answer was not an LSN).
    pub async fn commit_silently(&mut self, sql: &str) -> Result<(), BackendError> {
        if !std::mem::take(&mut self.want_commit_lsn) {
            return self.run_silently(sql).await;
        }
        self.commit_lsn = None;
        self.queue(&frontend::query(sql));
        self.queue_lsn_probe();
        self.flush().await?;
        let committed = self.read_row_answer().await;
        if let Err(e) = &committed {
            if !matches!(e, BackendError::Server { .. }) {
                return committed.map(|_| ());
            }
        }
        let lsn = self.read_lsn_probe().await?;
        if committed.is_ok() {
            self.commit_lsn = lsn;
        }
        committed.map(|_| ())
    }

    /// Queues `COMMIT_LSN_QUERY` behind what is queued; its answer is read with
    /// `read_lsn_probe` once every earlier answer was read.
    pub fn queue_lsn_probe(&mut self) {
        self.queue(&frontend::query(COMMIT_LSN_QUERY));
        self.probe_pending = true;
    }

    /// Reads the answer to `queue_lsn_probe`: the position, or `None` when the server refused
    /// (a replica, a failed block); `Err` only when the connection failed.
    pub async fn read_lsn_probe(&mut self) -> Result<Option<Lsn>, BackendError> {
        let answer = self.read_row_answer().await;
        if !matches!(answer, Ok(_) | Err(BackendError::Server { .. })) {
            return answer.map(|_| None);
        }
        // Its ReadyForQuery was the last one owed.
        self.probe_pending = false;
        self.synced = true;
        match answer {
            Ok(row) => Ok(row
                .and_then(|r| r.into_iter().next().flatten())
                .and_then(|text| Lsn::parse(&text))),
            Err(BackendError::Server { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads one simple Query's answer up to its ReadyForQuery: the first row's columns as text.
    async fn read_row_answer(&mut self) -> Result<Option<Vec<Option<String>>>, BackendError> {
        let mut error = None;
        let mut value = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                be::DATA_ROW if value.is_none() => {
                    value =
                        Some(
                            text_columns(&frame.body).ok_or_else(|| BackendError::Protocol {
                                shard: self.shard,
                                detail: "malformed DataRow".into(),
                            })?,
                        );
                }
                be::ERROR_RESPONSE if error.is_none() => {
                    error = ErrorFields::decode(&frame.body).ok();
                }
                be::READY_FOR_QUERY => break,
                be::COPY_IN_RESPONSE | be::COPY_BOTH_RESPONSE => {
                    return Err(BackendError::Protocol {
                        shard: self.shard,
                        detail: "unexpected COPY in an internal statement".into(),
                    })
                }
                _ => {}
            }
        }
        match error {
            Some(fields) => Err(BackendError::Server {
                shard: self.shard,
                fields,
            }),
            None => Ok(value),
        }
    }

    /// Where a cancel request for this connection's query goes.
    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr.clone(),
            pid: self.pid,
            secret: self.secret,
            tls: self.tls.clone(),
        }
    }

    /// After a request ran here, before the connection goes back to the pool: a client's
    /// `DISCARD ALL` (its command tag) deallocated every prepared statement on the server and
    /// reset its settings, so neither is known to be there any more (otherwise the next client
    /// would Bind statements that no longer exist: 26000).
    pub fn after_tags(&mut self, tags: &[String]) {
        if tags.iter().any(|t| t == "DISCARD ALL") {
            self.prepared.clear();
            self.settings_unknown = true;
        }
    }

    /// True when the connection may be handed to another client as it is.
    pub fn reusable(&self) -> bool {
        self.synced && self.status == TxStatus::Idle
    }

    /// False when an idle connection has something waiting on its socket: the server closed it,
    /// or sent a message nobody asked for (a FATAL after `pg_terminate_backend`, the notice of an
    /// immediate shutdown). Such a connection is dead or dying and must not be handed out.
    /// Checked without waiting: a socket with nothing to read is taken to be open.
    pub fn idle_and_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        // End of stream, or unsolicited bytes: either way the session on it is over.
        self.stream.idle_and_open()
    }
}

/// True for the command tag (a CommandComplete body) of a statement that only reads, or only
/// changes the transaction's own state.
fn tag_only_reads(body: &[u8]) -> bool {
    const COUNTED: [&[u8]; 3] = [b"SELECT ", b"FETCH ", b"MOVE "];
    const EXACT: [&[u8]; 11] = [
        b"SHOW",
        b"BEGIN",
        b"START TRANSACTION",
        b"SET",
        b"RESET",
        b"SAVEPOINT",
        b"RELEASE",
        b"ROLLBACK",
        b"DECLARE CURSOR",
        b"CLOSE CURSOR",
        b"CLOSE CURSOR ALL",
    ];
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    COUNTED.iter().any(|t| tag.starts_with(t)) || EXACT.contains(&tag)
}

/// Empties the write buffer it guards when dropped.
struct ClearOnDrop<'a>(&'a mut BytesMut);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// A set-up statement the proxy owes a server, sent in front of the next request.
#[derive(Default)]
struct DeferredSetup {
    /// Not sent yet.
    sql: Option<String>,
    /// Sent; its answers (up to its ReadyForQuery) are still to be read.
    answers_pending: bool,
    /// Its ErrorResponse, given to the request behind it in place of that request's own error.
    error: Option<Frame>,
}

/// The longest a cancel request may take, connecting and sending included.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

impl CancelTarget {
    /// Sends a CancelRequest for this target on a new connection, giving up after
    /// `CANCEL_TIMEOUT`: a cancel is best effort, and one to a shard that does not answer (cut off,
    /// black-holed) must not keep its task waiting forever.
    pub async fn cancel(&self) -> std::io::Result<()> {
        tokio::time::timeout(CANCEL_TIMEOUT, self.send_cancel())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "cancel request to {} not sent within {} s",
                        self.addr,
                        CANCEL_TIMEOUT.as_secs()
                    ),
                )
            })?
    }

    async fn send_cancel(&self) -> std::io::Result<()> {
        let mut stream = match crate::socket::unix_socket_path(&self.addr) {
            Some(path) => Socket::Unix(UnixStream::connect(path).await?),
            None => {
                let tcp = TcpStream::connect(&*self.addr).await?;
                self.tls
                    .start(tcp, &self.addr)
                    .await
                    .map_err(std::io::Error::other)?
            }
        };
        let mut packet = BytesMut::with_capacity(16);
        packet.put_i32(16);
        packet.put_u32(crate::wire::frame::CANCEL_REQUEST);
        packet.put_i32(self.pid);
        packet.put_i32(self.secret);
        stream.write_all(&packet).await?;
        let mut sink = [0u8; 1];
        // The server closes the connection once it has read the request.
        let _ = stream.read(&mut sink).await;
        Ok(())
    }
}

/// Every column of a DataRow body as text (`None` for null or a value that is not UTF-8), or
/// `None` when the body is malformed.
pub(crate) fn text_columns(body: &[u8]) -> Option<Vec<Option<String>>> {
    let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut at = 2usize;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let bytes = body.get(at..at + len as usize)?;
        at += len as usize;
        out.push(std::str::from_utf8(bytes).ok().map(str::to_string));
    }
    Some(out)
}

/// A TCP connection to `addr` (`host:port`), TLS on top as `tls` says, both within `timeout`.
async fn open_tcp(
    shard: u32,
    addr: String,
    tls: &ServerTls,
    timeout: Duration,
) -> Result<Socket, BackendError> {
    let connect = TcpStream::connect(addr.as_str());
    let stream = match tokio::time::timeout(timeout, connect).await {
        Err(_) => return Err(BackendError::ConnectTimeout { shard, addr }),
        Ok(Err(source)) => {
            return Err(BackendError::Connect {
                shard,
                addr,
                source,
            })
        }
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let stream = match tokio::time::timeout(timeout, tls.start(stream, &addr)).await {
        Err(_) => return Err(BackendError::ConnectTimeout { shard, addr }),
        Ok(Err(source)) => return Err(BackendError::Tls { shard, source }),
        Ok(Ok(s)) => s,
    };
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_columns_as_text() {
        let row = be::data_row(&[Some("slot"), None, Some("00000003-00000002-1")]);
        assert_eq!(
            text_columns(&row.body),
            Some(vec![
                Some("slot".to_string()),
                None,
                Some("00000003-00000002-1".to_string())
            ])
        );
        assert_eq!(text_columns(&row.body[..row.body.len() - 1]), None);
        assert_eq!(text_columns(&[]), None);
    }

    #[test]
    fn command_tags_of_statements_that_only_read() {
        let table: [(&[u8], bool); 10] = [
            (b"SELECT 1\0", true),
            (b"FETCH 10\0", true),
            (b"SHOW\0", true),
            (b"SAVEPOINT\0", true),
            (b"SET\0", true),
            (b"INSERT 0 1\0", false),
            (b"UPDATE 3\0", false),
            (b"COPY 5\0", false),
            (b"SETTLE\0", false),
            (b"CALL\0", false),
        ];
        for (tag, reads) in table {
            assert_eq!(tag_only_reads(tag), reads, "{tag:?}");
        }
    }
}
