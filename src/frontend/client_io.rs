//! The client's socket: framed reads with a size limit, and buffered writes flushed at the points
//! where the client waits for an answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::tls::ClientStream;
use crate::backend::ServerConn;
use crate::exec::exchange::{FrameSink, SinkError};
use crate::live::LiveSettings;
use crate::socket::Socket;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::{split_frame, Frame, FrameError};
use crate::wire::frontend as fe;

/// SQLSTATE of a cancelled statement.
const QUERY_CANCELED: &str = "57014";

/// Write buffer size at which output is flushed even mid-result.
const FLUSH_AT: usize = 32 * 1024;

/// The most a written-out buffer may keep for the next answer: an idle client (most of them,
/// with thousands connected) holds no more than this, and a large result's buffer goes back to
/// the allocator once written.
const OUT_KEEP: usize = 2 * 1024;

/// Output buffer an answer starts in: most answers fit, and glibc hands out (and takes back) a
/// block this small from its per-thread cache, where a larger one costs a trip through its
/// arena each way.
const OUT_START: usize = 1024;

/// The most read-buffer capacity a client waiting for its next message keeps, and what it gets
/// instead when it had more.
const IN_KEEP: usize = 8 * 1024;
const IN_START: usize = 1024;

/// Why reading from the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message was started but not finished within `proxy.message_timeout_ms`.
    #[error("the rest of a message did not arrive within {} ms", .0.as_millis())]
    Stalled(Duration),
}

/// A connected client after startup.
pub struct ClientIo {
    pub stream: ClientStream,
    pub rbuf: BytesMut,
    pub out: BytesMut,
    pub max_message: usize,
    /// How long the rest of a started message may take (`None`: no limit).
    message_timeout: Option<Duration>,
    /// When the first bytes of the message being read arrived.
    partial_since: Option<Instant>,
    /// How many times output was written to the socket (see `mark`).
    flushes: u64,
    /// ParseCompletes queued for the client so far: a client's statement name exists only once
    /// its Parse was answered (see `Session::extended_batch`).
    parse_completes: u64,
    /// Set when the query timeout cancelled the current request: the servers' "canceling
    /// statement due to user request" is reported as the timeout it was.
    pub timed_out: Arc<AtomicBool>,
    /// ErrorResponses queued so far: how a caller running statements in turn learns one failed.
    errors: u64,
    /// ReadyForQuery frames are dropped while set: statements a simple Query runs in turn answer
    /// with one ReadyForQuery at the end, as Postgres does.
    pub hold_ready: bool,
}

/// A point in the output, to take back what was queued after it if none of it was sent.
#[derive(Debug, Clone, Copy)]
pub struct OutputMark {
    flushes: u64,
    len: usize,
    parse_completes: u64,
}

impl ClientIo {
    /// Wraps a logged-in client's socket (with the bytes already read from it) under the
    /// message size and time limits in force now.
    pub fn new(stream: ClientStream, rbuf: BytesMut, limits: &LiveSettings) -> ClientIo {
        trim_after_churn();
        ClientIo {
            stream,
            rbuf,
            out: BytesMut::new(),
            max_message: limits.max_message_size,
            message_timeout: limits.message_timeout,
            partial_since: None,
            flushes: 0,
            parse_completes: 0,
            timed_out: Arc::default(),
            errors: 0,
            hold_ready: false,
        }
    }

    /// Marks the output so far; a failed attempt after it can be taken back (`rewind`).
    pub fn mark(&self) -> OutputMark {
        OutputMark {
            flushes: self.flushes,
            len: self.out.len(),
            parse_completes: self.parse_completes,
        }
    }

    /// Drops what was queued after `mark`; false (and nothing dropped) when some of it already
    /// reached the client.
    pub fn rewind(&mut self, mark: OutputMark) -> bool {
        if self.flushes != mark.flushes || self.out.len() < mark.len {
            return false;
        }
        self.out.truncate(mark.len);
        self.parse_completes = mark.parse_completes;
        true
    }

    /// How many ParseCompletes the client has been sent (queued output included).
    pub fn parse_completes(&self) -> u64 {
        self.parse_completes
    }

    /// The next message, or `None` when the client closed the connection. Once part of a
    /// message has arrived, the rest must follow within the message timeout (a client that
    /// stalls mid-message gets `Stalled`). Cancel-safe: a partial message stays buffered.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ClientReadError> {
        self.read_frame_in(false).await
    }

    /// `read_frame`; `streaming` (COPY FROM STDIN data) keeps the read buffer between messages.
    async fn read_frame_in(&mut self, streaming: bool) -> Result<Option<Frame>, ClientReadError> {
        loop {
            if let Some(frame) = split_frame(&mut self.rbuf, self.max_message)? {
                self.partial_since = None;
                return Ok(Some(frame));
            }
            if self.rbuf.is_empty() && !streaming {
                self.wait_idle().await?;
            }
            let deadline = match self.message_timeout {
                Some(limit) if !self.rbuf.is_empty() => Some((
                    *self.partial_since.get_or_insert_with(Instant::now) + limit,
                    limit,
                )),
                _ => None,
            };
            let read = self.stream.read_buf(&mut self.rbuf);
            let n = match deadline {
                Some((at, limit)) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| ClientReadError::Stalled(limit))??,
                None => read.await?,
            };
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Waits, between messages, until the client sends more. A plain-TCP client holds no
    /// buffers meanwhile (with thousands of idle clients, their buffers were most of the proxy's
    /// memory); a TLS client keeps a small read buffer (its socket may be readable before a
    /// message is).
    async fn wait_idle(&mut self) -> std::io::Result<()> {
        if let Socket::Plain(tcp) = &self.stream {
            if self.rbuf.capacity() != 0 {
                self.rbuf = BytesMut::new();
            }
            if self.out.is_empty() && self.out.capacity() != 0 {
                self.out = BytesMut::new();
            }
            tcp.readable().await?;
            self.rbuf.reserve(IN_START);
        } else if self.rbuf.capacity() > IN_KEEP {
            // Waiting for a new message after a large one: do not hold its buffer.
            self.rbuf = BytesMut::with_capacity(IN_START);
        }
        Ok(())
    }

    /// True when a complete message is already buffered (so the client is not waiting on us).
    pub fn has_buffered_frame(&self) -> bool {
        self.rbuf.len() >= 5 && {
            let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
            len >= 4 && self.rbuf.len() > len as usize
        }
    }

    /// How many ErrorResponses the client has been sent (queued output included).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Queues a frame for the client.
    pub fn push(&mut self, frame: &Frame) {
        if self.hold_ready && frame.tag == be::READY_FOR_QUERY {
            return;
        }
        count_error(frame);
        if frame.tag == be::ERROR_RESPONSE {
            self.errors += 1;
        }
        if frame.tag == be::PARSE_COMPLETE {
            self.parse_completes += 1;
        }
        if self.out.capacity() == 0 {
            self.out.reserve(OUT_START);
        }
        if frame.tag == be::ERROR_RESPONSE && self.timed_out.load(Ordering::Acquire) {
            if let Ok(mut fields) = ErrorFields::decode(&frame.body) {
                if fields.code == QUERY_CANCELED {
                    fields.message = "canceling statement due to statement timeout".into();
                    fields.hint = Some("pgshard's proxy.query_timeout_ms limit was reached".into());
                    fields.to_frame().encode(&mut self.out);
                    return;
                }
            }
        }
        frame.encode(&mut self.out);
    }

    /// Queues an ErrorResponse.
    pub fn push_error(&mut self, fields: &ErrorFields) {
        self.push(&fields.to_frame());
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Taken whole, not split: a split makes the buffer shared, which allocates.
        let mut out = std::mem::take(&mut self.out);
        self.flushes += 1;
        let written = self.stream.write_all(&out).await;
        if out.capacity() <= OUT_KEEP {
            // Written out (or failed): the same buffer takes the next answer.
            out.clear();
            self.out = out;
        }
        written
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        trim_after_churn();
    }
}

/// Schedules one `malloc_trim` shortly after clients come or go. Logins and logouts free
/// memory (handshakes, buffers, finished sessions) that glibc keeps in its per-thread arenas; with
/// thousands of idle clients that kept memory was a large part of the proxy's resident size.
fn trim_after_churn() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// How long after a login or logout the trim runs: a burst of them is followed by one
        /// trim, not one each.
        const TRIM_DELAY: Duration = Duration::from_millis(500);
        /// Set while a trim is scheduled.
        static TRIM_SCHEDULED: AtomicBool = AtomicBool::new(false);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if TRIM_SCHEDULED.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(async {
            tokio::time::sleep(TRIM_DELAY).await;
            TRIM_SCHEDULED.store(false, Ordering::Release);
            // SAFETY: malloc_trim only returns free heap memory to the system; it takes the
            // allocator's own locks and touches no memory in use.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        });
    }
}

impl FrameSink for ClientIo {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        self.push(&frame);
        if self.out.len() >= FLUSH_AT {
            self.flush().await.map_err(|_| SinkError::ClientGone)?;
        }
        Ok(())
    }

    async fn copy_in(&mut self, conn: &mut ServerConn) -> Result<(), SinkError> {
        self.flush().await.map_err(|_| SinkError::ClientGone)?;
        loop {
            let frame = match self.read_frame_in(true).await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => {
                    // The client vanished mid-COPY: abort the COPY so the server rolls it back.
                    conn.queue(&copy_fail("client disconnected during COPY"));
                    let _ = conn.flush().await;
                    return Err(SinkError::ClientGone);
                }
            };
            match frame.tag {
                fe::COPY_DATA => {
                    conn.queue(&frame);
                    if conn.queued_bytes() >= FLUSH_AT {
                        conn.flush().await?;
                    }
                }
                fe::COPY_DONE | fe::COPY_FAIL => {
                    conn.queue(&frame);
                    conn.flush().await?;
                    return Ok(());
                }
                fe::FLUSH | fe::SYNC => {}
                other => {
                    let msg =
                        format!("unexpected message type 0x{other:02X} during COPY from stdin");
                    conn.queue(&copy_fail(&msg));
                    conn.flush().await?;
                    return Ok(());
                }
            }
        }
    }
}

/// Every ErrorResponse to the client passes `push` or `send`: counted there by SQLSTATE class.
fn count_error(frame: &Frame) {
    if frame.tag == be::ERROR_RESPONSE {
        crate::telemetry::record::error_frame_sent(&frame.body);
    }
}

fn copy_fail(message: &str) -> Frame {
    let mut b = BytesMut::with_capacity(message.len() + 1);
    b.extend_from_slice(message.as_bytes());
    b.extend_from_slice(&[0]);
    Frame::new(fe::COPY_FAIL, b.freeze())
}
