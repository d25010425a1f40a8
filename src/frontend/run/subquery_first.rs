//! The session's side of `router::subquery_first`: a statement refused only because of an
//! uncorrelated subquery over sharded tables gets that subquery run first, on the connections
//! this session holds (inside a block, in the block), and its result written into the text.

use std::sync::Arc;

use bytes::Bytes;

use crate::frontend::session::{merge_for_simple, refusal, End, Session, Target};
use crate::refusal::Refusal;
use crate::router::facts::StatementFacts;
use crate::router::literals::{Literal, LiteralParams};
use crate::router::subquery_first::{find, First};
use crate::router::Route;
use crate::wire::backend::ErrorFields;
use crate::wire::frontend as fe;

/// Most subqueries one statement gets run first (nested ones count one each).
const MAX_RUN_FIRST: usize = 16;

/// Whether the statement's refusal is one running a subquery first can lift: a subquery over
/// a sharded table, or a join with an unsharded table (a subquery over one).
fn liftable(facts: &[StatementFacts]) -> bool {
    match facts {
        [f] => f.refuse.as_deref().is_some_and(|r| {
            r.starts_with("subquery over sharded table") || r.starts_with("join of sharded table")
        }),
        _ => false,
    }
}

impl Session {
    /// The simple-protocol analysis of `sql`, after running first the uncorrelated subqueries
    /// that make it refused, rewriting `sql` and `body` to carry their results. `Ok(None)` when
    /// a subquery failed: the client has its error and ReadyForQuery.
    pub async fn analyze_running_subqueries_first(
        &mut self,
        sql: &mut String,
        body: &mut Bytes,
    ) -> Result<Option<(Arc<[StatementFacts]>, Vec<Literal>)>, End> {
        let proxy = self.proxy.clone();
        for _ in 0..MAX_RUN_FIRST {
            let (facts, literals) = proxy.router.analyze_simple_in(sql, &self.search_path());
            // A failed block answers its aborted error on the normal path.
            if !liftable(&facts) || self.state.txn.as_ref().is_some_and(|t| t.refused) {
                return Ok(Some((facts, literals)));
            }
            let Some(first) = find(sql) else {
                return Ok(Some((facts, literals)));
            };
            match self.run_first(&first, sql).await? {
                Ok(text) => {
                    *body = fe::query(&text).body;
                    *sql = text;
                }
                Err(fields) => {
                    self.reply_error(fields);
                    return Ok(None);
                }
            }
        }
        Ok(Some(
            proxy.router.analyze_simple_in(sql, &self.search_path()),
        ))
    }

    /// Runs `first`'s subquery (keyed, scattered and merged, or on the first shard) and returns
    /// `outer` with its result in place, or the error the client gets.
    async fn run_first(
        &mut self,
        first: &First,
        outer: &str,
    ) -> Result<Result<String, ErrorFields>, End> {
        let proxy = self.proxy.clone();
        let (facts, literals) = proxy
            .router
            .analyze_simple_in(&first.inner, &self.search_path());
        let map = proxy.map.current();
        let route = match facts.as_ref() {
            [f] => proxy
                .router
                .route(f, &LiteralParams(&literals), &map, proxy.first_shard),
            _ => Route::Refuse("a subquery must be one statement".into()),
        };
        let (shards, scatter) = match route {
            Route::Single(s) => (vec![s], false),
            Route::Any => (vec![proxy.first_shard], false),
            Route::Scatter(shards) => (shards, true),
            Route::Refuse(message) => return Ok(Err(Refusal::of_route(message).into())),
            _ => {
                return Ok(Err(refusal(
                    "a subquery pgshard runs first must be a plain SELECT",
                )))
            }
        };
        let (text, bound) = if scatter {
            match merge_for_simple(&facts, &literals) {
                Ok(Some((text, bound))) => (text, Some(bound)),
                Ok(None) => (first.inner.clone(), None),
                Err(fields) => return Ok(Err(fields)),
            }
        } else {
            (first.inner.clone(), None)
        };
        let target = match shards.as_slice() {
            [one] => Target::Single(*one),
            _ => Target::Scatter(shards.clone()),
        };
        let held = self
            .run_kept(
                &text,
                &facts,
                target,
                bound,
                "a subquery pgshard runs first",
            )
            .await?;
        let (description, rows) = match held {
            Ok(held) => held,
            Err(fields) => return Ok(Err(fields)),
        };
        Ok(first
            .splice(outer, &description.body, &rows)
            .map_err(|e| ErrorFields::error(e.code(), e.to_string())))
    }
}
