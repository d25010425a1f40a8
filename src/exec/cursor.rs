//! Cursors over several shards, served by the proxy: DECLARE runs the cursor's query on every
//! shard with the usual scatter + merge and keeps the merged rows; FETCH and MOVE read them
//! forward, CLOSE drops them.
//!
//! The merged result is held in memory, up to [`CURSOR_CAP_BYTES`] of row data; a larger one
//! is refused (54000) rather than truncated. Streaming from per-shard cursors would bound memory
//! for any size, but needs every merge (ORDER BY, LIMIT, GROUP BY, DISTINCT, aggregates) to
//! work incrementally across requests; holding the merged rows reuses the one merge path every
//! other scatter read takes, so a cursor gives exactly the rows its SELECT would.

use bytes::Bytes;

use crate::backend::ServerConn;
use crate::exec::exchange::{FrameSink, SinkError};
use crate::refusal::Refusal;
use crate::router::Route;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;

/// Most row data (DataRow bytes) a proxy-served cursor holds.
pub const CURSOR_CAP_BYTES: usize = 64 * 1024 * 1024;

/// Keeps a merged answer: its description, its rows up to the cap, its first error. Shared by
/// cursors and by portals read a piece at a time (`frontend::held_portals`).
#[derive(Default)]
pub struct Keep {
    description: Option<Frame>,
    rows: Vec<Bytes>,
    bytes: usize,
    overflow: bool,
    error: Option<Frame>,
}

/// The shards of a cursor's query routed over several shards, or the error its route gives.
pub fn scatter_shards(route: Route) -> Result<Vec<u32>, ErrorFields> {
    match route {
        Route::Scatter(shards) => Ok(shards),
        Route::Refuse(message) => Err(Refusal::of_route(message).into()),
        _ => Err(ErrorFields::error(
            "XX000",
            "a cursor over several shards has a query that reaches one",
        )),
    }
}

impl Keep {
    /// The kept answer as rows to serve (its RowDescription and DataRow bodies), or the error the
    /// client gets instead: the shards' first error, the cap exceeded (54000; `what` names the
    /// cursor or portal), or no description.
    pub fn held(self, what: &str) -> Result<(Frame, Vec<Bytes>), ErrorFields> {
        if let Some(frame) = self.error {
            return Err(ErrorFields::decode(&frame.body).unwrap_or_else(|_| {
                ErrorFields::error("XX000", "a shard sent a malformed error")
            }));
        }
        if self.overflow {
            return Err(ErrorFields::error(
                "54000",
                format!(
                    "{what} spans several shards and its merged rows exceed the {} MiB pgshard holds for it",
                    CURSOR_CAP_BYTES >> 20
                ),
            )
            .with_hint("add a condition on the shard key so it reaches one shard, or read the rows in keyed pages (WHERE key > last ORDER BY key LIMIT n)"));
        }
        let Some(description) = self.description else {
            return Err(ErrorFields::error(
                "XX000",
                format!("the shards sent no row description for {what}"),
            ));
        };
        Ok((description, self.rows))
    }
}

impl FrameSink for Keep {
    async fn send(&mut self, frame: Frame) -> Result<(), SinkError> {
        match frame.tag {
            be::ROW_DESCRIPTION if self.description.is_none() => self.description = Some(frame),
            be::DATA_ROW => {
                self.bytes = self.bytes.saturating_add(frame.body.len());
                if self.bytes > CURSOR_CAP_BYTES {
                    // Read on to the end so the shards finish; nothing more is kept.
                    self.overflow = true;
                    self.rows = Vec::new();
                } else if !self.overflow {
                    self.rows.push(frame.body);
                }
            }
            be::ERROR_RESPONSE if self.error.is_none() => self.error = Some(frame),
            _ => {}
        }
        Ok(())
    }

    async fn copy_in(&mut self, _conn: &mut ServerConn) -> Result<(), SinkError> {
        Err(SinkError::Refused("COPY cannot run inside a cursor".into()))
    }
}

/// What a FETCH or MOVE of a proxy-served cursor answers.
pub struct Fetched {
    /// The cursor's RowDescription (FETCH only; the simple protocol sends it first).
    pub description: Option<Frame>,
    /// DataRows (FETCH only).
    pub rows: Vec<Frame>,
    /// `FETCH n` or `MOVE n`.
    pub complete: Frame,
}
