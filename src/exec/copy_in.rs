//! `COPY <sharded table> FROM STDIN` across shards: the client's CopyData stream is split into
//! rows (`copy_split`), each row goes to the COPY of the shard its key maps to, and all of it
//! commits or rolls back together (one implicit transaction block, two-phase when several shards
//! took rows). The first shard of the map opens its COPY up front, so the client gets Postgres's
//! own CopyInResponse (or error) before sending data; the others start their COPY when their first
//! row comes (all of them join the transaction block up front).
//!
//! Here: the steps on one server connection (start, finish, abort a COPY); the session's side
//! (the block, the client's stream, the answer) is `frontend::run::copy_in`.

use bytes::BytesMut;

use crate::backend::{BackendError, ServerConn};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;

/// How the client sent the COPY, which decides how its end is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyProtocol {
    /// A simple Query: the answer ends with ReadyForQuery.
    Simple,
    /// Parse/Bind/Execute; `sync` when the batch ended with Sync (which, once the COPY started,
    /// Postgres ignores: the client sends another Sync after CopyDone).
    Extended { sync: bool },
}

/// The text of a CopyFail message.
pub fn fe_cstr(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

pub fn copy_fail(message: &str) -> Frame {
    let mut b = BytesMut::with_capacity(message.len() + 1);
    b.extend_from_slice(message.as_bytes());
    b.extend_from_slice(&[0]);
    Frame::new(fe::COPY_FAIL, b.freeze())
}

/// Sends the COPY statement and reads up to its CopyInResponse, passing notices to `notice`; an SQL error (read through
/// ReadyForQuery) comes back as `Ok(Err(..))`.
pub async fn start_copy(
    conn: &mut ServerConn,
    sql: &str,
    notice: &mut impl FnMut(&Frame),
) -> Result<Result<Frame, ErrorFields>, BackendError> {
    conn.queue(&fe::query(sql));
    conn.flush().await?;
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            be::COPY_IN_RESPONSE => return Ok(Ok(frame)),
            be::NOTICE_RESPONSE => notice(&frame),
            be::ERROR_RESPONSE => {
                error.get_or_insert_with(|| decode_error(&frame.body));
            }
            be::READY_FOR_QUERY => {
                return Ok(Err(error.unwrap_or_else(|| {
                    ErrorFields::error("XX000", "the shard did not start the COPY")
                })))
            }
            _ => {}
        }
    }
}

/// Reads a shard's answer to CopyDone or CopyFail up to ReadyForQuery (notices to `notice`): its
/// row count or its error.
pub async fn finish_copy(
    conn: &mut ServerConn,
    notice: &mut impl FnMut(&Frame),
) -> Result<Result<u64, ErrorFields>, BackendError> {
    let mut rows = 0;
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            be::COMMAND_COMPLETE => {
                if let Ok(tag) = be::decode_command_complete(&frame.body) {
                    rows = tag
                        .strip_prefix("COPY ")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
            be::NOTICE_RESPONSE => notice(&frame),
            be::ERROR_RESPONSE => {
                error.get_or_insert_with(|| decode_error(&frame.body));
            }
            be::READY_FOR_QUERY => {
                return Ok(match error {
                    Some(e) => Err(e),
                    None => Ok(rows),
                })
            }
            _ => {}
        }
    }
}

fn decode_error(body: &[u8]) -> ErrorFields {
    ErrorFields::decode(body)
        .unwrap_or_else(|_| ErrorFields::error("XX000", "malformed error from a shard"))
}

/// Runs a query and returns its first column as text (NULLs skipped); an SQL error comes back as
/// `Ok(Err(..))`.
pub async fn first_column(
    conn: &mut ServerConn,
    sql: &str,
) -> Result<Result<Vec<String>, ErrorFields>, BackendError> {
    conn.queue(&fe::query(sql));
    conn.flush().await?;
    let mut values = Vec::new();
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag {
            be::DATA_ROW => {
                if let Some(v) = data_row_first(&frame.body) {
                    values.push(v);
                }
            }
            be::ERROR_RESPONSE => {
                error.get_or_insert_with(|| decode_error(&frame.body));
            }
            be::READY_FOR_QUERY => {
                return Ok(match error {
                    Some(e) => Err(e),
                    None => Ok(values),
                })
            }
            be::COPY_IN_RESPONSE | be::COPY_OUT_RESPONSE | be::COPY_BOTH_RESPONSE => {
                return Err(BackendError::Protocol {
                    shard: conn.shard,
                    detail: "unexpected COPY in an internal statement".into(),
                })
            }
            _ => {}
        }
    }
}

/// The first value of a DataRow, as text.
fn data_row_first(body: &[u8]) -> Option<String> {
    let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if count < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    if len < 0 {
        return None;
    }
    let value = body.get(6..6 + len as usize)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_first_value() {
        let row = be::data_row(&[Some("user_id"), Some("x")]);
        assert_eq!(data_row_first(&row.body).as_deref(), Some("user_id"));
        let row = be::data_row(&[None]);
        assert_eq!(data_row_first(&row.body), None);
        assert_eq!(data_row_first(&[0, 1, 0, 0, 0, 9, b'a']), None);
        assert_eq!(data_row_first(&[]), None);
    }

    #[test]
    fn copy_fail_text() {
        let f = copy_fail("stop");
        assert_eq!(fe_cstr(&f.body), "stop");
        assert_eq!(fe_cstr(b"no terminator"), "no terminator");
    }
}
