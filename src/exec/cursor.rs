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
use crate::exec::exchange::{Expect, FrameSink, SinkError, Step};
use crate::frontend::cursors::{Materialized, Place};
use crate::frontend::session::{merge_for_simple, refusal, End, Session, Target};
use crate::router::cursor::{Declare, Motion};
use crate::router::literals::LiteralParams;
use crate::router::Route;
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;

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
        Route::Refuse(message) => Err(refusal(message)),
        _ => Err(ErrorFields::error(
            "XX000",
            "a cursor over several shards has a query that reaches one",
        )),
    }
}

impl Keep {
    /// The kept answer as rows to serve, or the error the client gets instead: the shards'
    /// first error, the cap exceeded (54000; `what` names the cursor or portal), or no
    /// description.
    pub fn held(self, what: &str) -> Result<Materialized, ErrorFields> {
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
        Ok(Materialized::new(description, self.rows))
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

impl Session {
    /// Opens cursor `declare` over the shards `query` reaches, holding its merged rows. `Ok(Err)`
    /// is an error for the client (the block is then failed, as in Postgres).
    pub async fn declare_merged(
        &mut self,
        declare: &Declare,
        query: &str,
    ) -> Result<Result<(), ErrorFields>, End> {
        if let Some(fields) = self.declare_refusal(declare) {
            return Ok(Err(fields));
        }
        let proxy = self.proxy.clone();
        let (facts, literals) = proxy.router.analyze_simple(query);
        let map = proxy.map.current();
        let route = match facts.as_ref() {
            [f] => proxy
                .router
                .route(f, &LiteralParams(&literals), &map, proxy.first_shard),
            _ => Route::Refuse("a cursor's query must be one statement".into()),
        };
        let shards = match scatter_shards(route) {
            Ok(shards) => shards,
            Err(fields) => return Ok(Err(fields)),
        };
        let (text, bound) = match merge_for_simple(&facts, &literals) {
            Ok(Some((text, bound))) => (text, Some(bound)),
            Ok(None) => (query.to_string(), None),
            Err(fields) => return Ok(Err(fields)),
        };
        let fenced = match self.fence_texts(&text, &facts, &Target::Scatter(shards.clone())) {
            Ok(f) => f,
            Err(fields) => return Ok(Err(fields)),
        };
        let steps = |conn: &ServerConn| {
            let text = fenced
                .as_ref()
                .and_then(|f| f.get(&conn.shard))
                .unwrap_or(&text);
            vec![Step::Send {
                frame: fe::query(text),
                expect: Expect::Query,
                forward: true,
            }]
        };
        self.route_reads(&shards, &facts).await;
        let mut keep = Keep::default();
        let end = self
            .run_scatter_to(shards, steps, bound, Some(&mut keep))
            .await?;
        if let Some(fields) = end.failure {
            return Ok(Err(fields));
        }
        let cursor = match keep.held(&format!("cursor \"{}\"", declare.name)) {
            Ok(c) => c,
            Err(fields) => return Ok(Err(fields)),
        };
        self.cursors.declare(&declare.name, Place::Proxy(cursor));
        Ok(Ok(()))
    }

    /// Why this session cannot open `declare` over several shards, if it cannot.
    pub(crate) fn declare_refusal(&self, declare: &Declare) -> Option<ErrorFields> {
        if self.txn.as_ref().is_none_or(|t| t.implicit) {
            return Some(ErrorFields::error(
                "25P01",
                "DECLARE CURSOR can only be used in transaction blocks",
            ));
        }
        if self.cursors.exists(&declare.name) {
            return Some(ErrorFields::error(
                "42P03",
                format!("cursor \"{}\" already exists", declare.name),
            ));
        }
        let missing = if declare.scroll {
            Some("SCROLL (pgshard serves such a cursor forward only: declare it without SCROLL)")
        } else if declare.hold {
            Some("WITH HOLD")
        } else if declare.binary {
            Some("BINARY")
        } else {
            None
        };
        missing.map(|what| {
            refusal(format!(
                "a cursor over several shards is served by pgshard, which does not support {what}"
            ))
            .with_hint("add a condition on the shard key so the cursor reaches one shard")
        })
    }

    /// FETCH (`is_move` false) or MOVE on proxy-served cursor `name`.
    pub fn fetch_merged(
        &mut self,
        name: &str,
        motion: &Motion,
        is_move: bool,
    ) -> Result<Fetched, ErrorFields> {
        let Some(cursor) = self.cursors.served(name) else {
            return Err(ErrorFields::error(
                "34000",
                format!("cursor \"{name}\" does not exist"),
            ));
        };
        let verb = if is_move { "MOVE" } else { "FETCH" };
        let rows = cursor.advance(motion).map_err(|what| {
            refusal(format!(
                "{verb} {what} on cursor \"{name}\" is not supported: it spans several shards and pgshard serves it forward only (NEXT, FORWARD n, FORWARD ALL)"
            ))
        })?;
        let count = rows.len();
        let rows = if is_move {
            Vec::new()
        } else {
            rows.iter()
                .map(|r| Frame::new(be::DATA_ROW, r.clone()))
                .collect()
        };
        Ok(Fetched {
            description: (!is_move).then(|| cursor.description.clone()),
            rows,
            complete: be::command_complete(&format!("{verb} {count}")),
        })
    }

    /// The RowDescription of proxy-served cursor `name`, if there is one.
    pub fn merged_description(&mut self, name: &str) -> Option<Frame> {
        self.cursors.served(name).map(|c| c.description.clone())
    }
}
