//! One request/response exchange with one server connection: the messages to send, what each one's
//! answer looks like, and which answers reach the client. Prepared statements under transaction
//! pooling need this bookkeeping: the proxy injects Parse messages the client never sent (their
//! answers are swallowed) and answers some client messages itself (synthetic replies, in order).

use bytes::Bytes;

use crate::backend::{BackendError, ServerConn};
use crate::wire::backend::{self as be, ErrorFields, TxStatus};
use crate::wire::frame::Frame;
use crate::wire::frontend::{self as fe, Execute, Target};

/// The answer a sent message gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete; registers the server-side statement name on success.
    Parse {
        register: Option<String>,
    },
    Bind,
    /// ParameterDescription then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// Rows and a CommandComplete, EmptyQueryResponse or PortalSuspended (COPY possible).
    Execute,
    Close,
    /// CloseComplete for a statement the proxy closes to stay within its cap; forgets the name.
    CloseStatement {
        unregister: String,
    },
    /// ReadyForQuery.
    Sync,
    /// No answer.
    Flush,
    /// A simple Query: everything up to ReadyForQuery.
    Query,
}

/// One step of an exchange.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send `frame`; forward its answer to the client only when `forward`.
    Send {
        frame: Frame,
        expect: Expect,
        forward: bool,
    },
    /// Reply to the client without asking the server (skipped after an error, as the server would).
    Synthetic(Frame),
}

impl Step {
    /// `frame` sent with its answer passed on to the sink.
    pub fn forwarded(frame: Frame, expect: Expect) -> Step {
        Step::Send {
            frame,
            expect,
            forward: true,
        }
    }

    /// Describe of the unnamed portal, its answer passed on: a proxy-built query's description.
    pub fn describe_unnamed_portal() -> Step {
        Step::forwarded(
            Target {
                kind: b'P',
                name: String::new(),
            }
            .encode(fe::DESCRIBE),
            Expect::DescribePortal,
        )
    }

    /// Execute of the unnamed portal for all its rows, its answer passed on.
    pub fn execute_unnamed_portal() -> Step {
        Step::forwarded(
            Execute {
                portal: String::new(),
                max_rows: 0,
            }
            .encode(),
            Expect::Execute,
        )
    }
}

/// Where the answers go: the client itself, or a merge of several shards.
pub trait FrameSink {
    /// Passes one frame on.
    fn send(
        &mut self,
        frame: Frame,
    ) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
    /// Serves a COPY FROM STDIN the server just asked for: relays the client's CopyData until
    /// CopyDone or CopyFail.
    fn copy_in(
        &mut self,
        conn: &mut ServerConn,
    ) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
}

/// Why an exchange stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("client connection lost")]
    ClientGone,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Backend(Box<BackendError>),
}

impl From<BackendError> for SinkError {
    fn from(e: BackendError) -> SinkError {
        SinkError::Backend(Box::new(e))
    }
}

/// What the exchange saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// CommandComplete tags, in order (one, inline, for the usual single statement: no list
    /// allocated per request).
    pub tags: smallvec::SmallVec<[String; 1]>,
    /// The first error the server reported.
    pub error: Option<ErrorFields>,
    /// Status of the last ReadyForQuery, if one was read.
    pub status: Option<TxStatus>,
}

fn unexpected(conn: &ServerConn, tag: u8, expect: &Expect) -> SinkError {
    SinkError::from(BackendError::Protocol {
        shard: conn.shard,
        detail: format!(
            "unexpected message '{}' while waiting for {expect:?}",
            tag as char
        ),
    })
}

/// Sends every step's message, then reads the answers in order and passes them to `sink`.
pub async fn run<S: FrameSink>(
    conn: &mut ServerConn,
    steps: Vec<Step>,
    sink: &mut S,
) -> Result<Outcome, SinkError> {
    run_then(conn, steps, sink, false).await
}

/// Like `run`; with `lsn_probe`, the WAL position question rides in the same write behind the
/// steps (which must end with a Sync or a simple Query), and the caller reads its answer with
/// `ServerConn::read_lsn_probe` after this returns `Ok`.
pub async fn run_then<S: FrameSink>(
    conn: &mut ServerConn,
    mut steps: Vec<Step>,
    sink: &mut S,
    lsn_probe: bool,
) -> Result<Outcome, SinkError> {
    super::prepared_cap::add_evictions(conn, &mut steps);
    for step in &steps {
        if let Step::Send { frame, .. } = step {
            conn.queue(frame);
        }
    }
    if lsn_probe {
        conn.queue_lsn_probe();
    }
    conn.flush().await?;
    let mut outcome = Outcome::default();
    let mut failed = false;
    for step in steps {
        match step {
            Step::Synthetic(frame) => {
                if !failed {
                    sink.send(frame).await?;
                }
            }
            Step::Send {
                expect, forward, ..
            } => {
                if failed && expect != Expect::Sync && expect != Expect::Query {
                    continue;
                }
                if expect == Expect::Flush {
                    continue;
                }
                if !read_answer(conn, &expect, forward, sink, &mut outcome).await? {
                    failed = true;
                }
            }
        }
    }
    Ok(outcome)
}

/// Reads one message's answer; false when the server reported an error.
async fn read_answer<S: FrameSink>(
    conn: &mut ServerConn,
    expect: &Expect,
    forward: bool,
    sink: &mut S,
    outcome: &mut Outcome,
) -> Result<bool, SinkError> {
    let mut ok = true;
    let mut described = false;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            be::NOTICE_RESPONSE | be::PARAMETER_STATUS | be::NOTIFICATION => {
                sink.send(frame).await?;
                continue;
            }
            be::ERROR_RESPONSE => {
                let (frame, fields) =
                    crate::txn::deadlock::as_deadlock(frame, conn.proxy_lock_timeout);
                if let Some(fields) = fields.as_ref().filter(|f| ends_connection(f)) {
                    // Only this server connection ends: the session reports an ERROR instead
                    // of passing on a FATAL that would end the client's session too.
                    conn.synced = false;
                    return Err(SinkError::from(BackendError::Terminated {
                        shard: conn.shard,
                        fields: fields.clone(),
                    }));
                }
                if outcome.error.is_none() {
                    outcome.error = fields;
                }
                sink.send(frame).await?;
                if *expect != Expect::Query {
                    return Ok(false);
                }
                ok = false;
                continue;
            }
            _ => {}
        }
        let done = match expect {
            Expect::Parse { register } => {
                if frame.tag != be::PARSE_COMPLETE {
                    return Err(unexpected(conn, frame.tag, expect));
                }
                if let Some(name) = register {
                    conn.prepared.insert(name.clone());
                }
                true
            }
            Expect::Bind => check(conn, &frame, be::BIND_COMPLETE, expect)?,
            Expect::Close => check(conn, &frame, be::CLOSE_COMPLETE, expect)?,
            Expect::CloseStatement { unregister } => {
                let done = check(conn, &frame, be::CLOSE_COMPLETE, expect)?;
                conn.prepared.remove(unregister);
                done
            }
            Expect::DescribeStatement if !described => {
                check(conn, &frame, be::PARAMETER_DESCRIPTION, expect)?;
                described = true;
                false
            }
            Expect::DescribeStatement | Expect::DescribePortal => match frame.tag {
                be::ROW_DESCRIPTION | be::NO_DATA => true,
                tag => return Err(unexpected(conn, tag, expect)),
            },
            Expect::Execute => match frame.tag {
                be::DATA_ROW | be::COPY_OUT_RESPONSE | be::COPY_DATA | be::COPY_DONE => false,
                be::COMMAND_COMPLETE => {
                    record_tag(&frame.body, outcome);
                    true
                }
                be::EMPTY_QUERY | be::PORTAL_SUSPENDED => true,
                be::COPY_IN_RESPONSE => {
                    sink.send(frame).await?;
                    sink.copy_in(conn).await?;
                    continue;
                }
                tag => return Err(unexpected(conn, tag, expect)),
            },
            Expect::Sync => {
                if frame.tag != be::READY_FOR_QUERY {
                    return Err(unexpected(conn, frame.tag, expect));
                }
                outcome.status = Some(conn.status);
                true
            }
            Expect::Query => match frame.tag {
                be::READY_FOR_QUERY => {
                    outcome.status = Some(conn.status);
                    sink.send(frame).await?;
                    return Ok(ok);
                }
                be::COMMAND_COMPLETE => {
                    record_tag(&frame.body, outcome);
                    false
                }
                be::COPY_IN_RESPONSE | be::COPY_BOTH_RESPONSE => {
                    sink.send(frame).await?;
                    sink.copy_in(conn).await?;
                    continue;
                }
                _ => false,
            },
            Expect::Flush => true,
        };
        if forward {
            sink.send(frame).await?;
        }
        if done {
            return Ok(ok);
        }
    }
}

/// A FATAL or PANIC from a server: it closes the connection after sending it.
fn ends_connection(fields: &ErrorFields) -> bool {
    matches!(&*fields.severity, "FATAL" | "PANIC")
}

fn check(conn: &ServerConn, frame: &Frame, tag: u8, expect: &Expect) -> Result<bool, SinkError> {
    if frame.tag == tag {
        Ok(true)
    } else {
        Err(unexpected(conn, frame.tag, expect))
    }
}

fn record_tag(body: &Bytes, outcome: &mut Outcome) {
    if let Ok(tag) = be::decode_command_complete(body) {
        outcome.tags.push(tag.to_string());
    }
}
