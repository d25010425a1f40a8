//! The session's side of proxy-served cursors (see `exec::cursor`): DECLARE over several shards,
//! FETCH and MOVE of the rows this session holds.

use crate::backend::ServerConn;
use crate::exec::binary_rows;
use crate::exec::cursor::{scatter_shards, Fetched, Keep};
use crate::exec::exchange::{Expect, Step};
use crate::exec::merged::BoundMerge;
use crate::frontend::session::{merge_for_simple, refusal, End, Session, Target};
use crate::router::cursor::{Declare, Motion};
use crate::router::literals::LiteralParams;
use crate::router::Route;
use crate::router::StatementFacts;
use crate::session::cursors::{Materialized, Place};
use crate::wire::backend::{self as be, ErrorFields};
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;
use bytes::Bytes;

impl Session {
    /// Runs the read `text` (of `facts`) on `target`'s shards, merged by `bound`, and keeps its
    /// rows in the proxy instead of sending them to the client: a cursor pgshard serves, or a
    /// subquery it runs first. `what` names it in errors. `Ok(Err)` is an error for the client.
    pub async fn run_kept(
        &mut self,
        text: &str,
        facts: &[StatementFacts],
        target: Target,
        bound: Option<BoundMerge>,
        what: &str,
    ) -> Result<Result<(Frame, Vec<Bytes>), ErrorFields>, End> {
        let query = |text: &str| {
            vec![Step::Send {
                frame: fe::query(text),
                expect: Expect::Query,
                forward: true,
            }]
        };
        self.run_kept_with(text, facts, target, bound, what, query)
            .await
    }

    /// `run_kept` whose steps for each shard `make` builds from the text that shard runs (the
    /// fenced form while a rebalancing job fences it): a subquery run first with Bind
    /// parameters sends Parse/Bind/Describe/Execute instead of a Query.
    pub async fn run_kept_with(
        &mut self,
        text: &str,
        facts: &[StatementFacts],
        target: Target,
        bound: Option<BoundMerge>,
        what: &str,
        make: impl Fn(&str) -> Vec<Step>,
    ) -> Result<Result<(Frame, Vec<Bytes>), ErrorFields>, End> {
        let fenced = match self.fence_texts(text, facts, &target) {
            Ok(f) => f,
            Err(fields) => return Ok(Err(fields)),
        };
        let steps = |conn: &ServerConn| {
            let text = fenced
                .as_ref()
                .and_then(|f| f.get(&conn.shard))
                .map_or(text, String::as_str);
            make(text)
        };
        let shards = match target {
            Target::Single(shard) => vec![shard],
            Target::Scatter(shards) | Target::Broadcast(shards) => shards,
        };
        self.route_reads(&shards, facts).await;
        let mut keep = Keep::default();
        let end = self
            .run_scatter_to(shards, steps, bound, Some(&mut keep))
            .await?;
        if let Some(fields) = end.failure {
            return Ok(Err(fields));
        }
        Ok(keep.held(what))
    }

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
        let (facts, literals) = proxy.router.analyze_simple_in(query, &self.search_path());
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
        if let Err(fields) = self.choose_group_names(facts.first()).await {
            return Ok(Err(fields));
        }
        let (text, bound) = match merge_for_simple(&facts, &literals, &self.group_plans) {
            Ok(Some((text, bound))) => (text, Some(bound)),
            Ok(None) => (query.to_string(), None),
            Err(fields) => return Ok(Err(fields)),
        };
        let target = Target::Scatter(shards);
        let what = format!("cursor \"{}\"", declare.name);
        let held = self.run_kept(&text, &facts, target, bound, &what).await?;
        let cursor = match held {
            Ok((description, rows)) => Materialized::new(description, rows),
            Err(fields) => return Ok(Err(fields)),
        };
        self.state
            .cursors
            .declare(&declare.name, Place::Proxy(cursor));
        if declare.hold {
            self.state.cursors.hold(&declare.name);
        }
        Ok(Ok(()))
    }

    /// Why this session cannot open `declare` over several shards, if it cannot.
    pub(crate) fn declare_refusal(&self, declare: &Declare) -> Option<ErrorFields> {
        // The merged rows are read whole at DECLARE: a WITH HOLD cursor needs no block, and
        // nothing of it stays on the shards.
        if !declare.hold && self.state.txn.as_ref().is_none_or(|t| t.implicit) {
            return Some(ErrorFields::error(
                "25P01",
                "DECLARE CURSOR can only be used in transaction blocks",
            ));
        }
        if self.state.cursors.exists(&declare.name) {
            return Some(ErrorFields::error(
                "42P03",
                format!("cursor \"{}\" already exists", declare.name),
            ));
        }
        let missing = if declare.scroll {
            Some("SCROLL (pgshard serves such a cursor forward only: declare it without SCROLL)")
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
        let Some(cursor) = self.state.cursors.served(name) else {
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

    /// `rows` FETCHed from a proxy-served cursor (text, under `description`) in the result
    /// `formats` the client bound, turned into them by a shard (see `exec::binary_rows`).
    /// `Ok(Err)` is an error for the client.
    pub async fn rows_in_formats(
        &mut self,
        description: &Frame,
        rows: Vec<Frame>,
        formats: &[i16],
    ) -> Result<Result<Vec<Frame>, ErrorFields>, End> {
        let digits = self.state.settings.get("extra_float_digits");
        if binary_rows::would_round_floats(description, formats, digits.map(String::as_str)) {
            return Ok(Err(refusal(
                "FETCH in binary format of a float column from a cursor that spans several shards needs extra_float_digits of 1 or more (pgshard holds the cursor's rows as text, rounded below that)",
            )
            .with_hint("RESET extra_float_digits, or fetch that column in text format")));
        }
        let steps = match binary_rows::steps(description, &rows, formats) {
            Ok(steps) => steps,
            Err(e @ binary_rows::BinaryRowsError::FormatCount { .. }) => {
                return Ok(Err(ErrorFields::error("08P01", e.to_string())))
            }
            Err(e) => return Ok(Err(ErrorFields::error("XX000", e.to_string()))),
        };
        if steps.is_empty() {
            return Ok(Ok(rows));
        }
        let shard = self.fallback_shard();
        let kept = self
            .run_kept_with(
                "",
                &[],
                Target::Single(shard),
                None,
                "a FETCH in binary format",
                move |_| steps.clone(),
            )
            .await?;
        Ok(kept.map(|(_, bodies)| binary_rows::data_rows(bodies)))
    }

    /// The RowDescription of proxy-served cursor `name`, if there is one.
    pub fn merged_description(&mut self, name: &str) -> Option<Frame> {
        self.state
            .cursors
            .served(name)
            .map(|c| c.description.clone())
    }
}
