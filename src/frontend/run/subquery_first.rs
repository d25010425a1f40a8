//! The session's side of `router::subquery_first` and `router::cte`: a statement refused only
//! because of an uncorrelated subquery or a read-only CTE over sharded tables gets that subquery
//! or CTE run first, on the connections this session holds (inside a block, in the block), and
//! its result written into the text.

use std::sync::Arc;

use bytes::Bytes;

use crate::frontend::session::{merge_for_simple, refusal, End, Session, Target};
use crate::refusal::Refusal;
use crate::router::analyze::Refused;
use crate::router::array_constructors::unnest_arrays_as_literals;
use crate::router::cte;
use crate::router::facts::StatementFacts;
use crate::router::key_update;
use crate::router::literals::{Literal, LiteralParams};
use crate::router::ordered_values_insert::as_values;
use crate::router::params::ParamSource;
use crate::router::pull_up;
pub(crate) use crate::router::subquery_first::liftable;
use crate::router::subquery_first::{next, RunFirst};
use crate::router::Route;
use crate::wire::backend::ErrorFields;
use crate::wire::frame::Frame;
use crate::wire::frontend as fe;

/// Most subqueries one statement gets run first (nested ones count one each).
const MAX_RUN_FIRST: usize = 16;

impl Session {
    /// The simple-protocol analysis of `sql`, after running first the uncorrelated subqueries
    /// and CTEs that make it refused, rewriting `sql` and `body` to carry their results (and
    /// an INSERT of rows ordered from a VALUES list written as those VALUES, an UNNEST INSERT's
    /// array constructors of constants written as array literals, an INSERT that names no
    /// columns given its table's). `Ok(None)` when
    /// a subquery failed: the client has its error and ReadyForQuery.
    pub async fn analyze_running_subqueries_first(
        &mut self,
        sql: &mut String,
        body: &mut Bytes,
    ) -> Result<Option<(Arc<[StatementFacts]>, Vec<Literal>)>, End> {
        if let Some(text) = as_values(sql).or_else(|| unnest_arrays_as_literals(sql)) {
            *body = fe::query(&text).body;
            *sql = text;
        }
        let proxy = self.proxy.clone();
        let mut columns_listed = false;
        for _ in 0..MAX_RUN_FIRST {
            let (facts, literals) = proxy.router.analyze_simple_in(sql, &self.search_path());
            if self.state.txn.as_ref().is_some_and(|t| t.refused) {
                return Ok(Some((facts, literals)));
            }
            if !columns_listed {
                columns_listed = true;
                match self.list_insert_columns(sql, &facts).await {
                    Ok(Some(text)) => {
                        *body = fe::query(&text).body;
                        *sql = text;
                        continue;
                    }
                    Ok(None) => {}
                    Err(fields) => {
                        self.reply_error(fields);
                        return Ok(None);
                    }
                }
            }
            if let Some(whole) = self.whole_on_one_shard(sql, &facts, None) {
                return Ok(Some((whole, literals)));
            }
            let pulled = self.pull_up_of(sql, &facts, &LiteralParams(&literals));
            // A failed block answers its aborted error on the normal path.
            if !liftable(&facts) && pulled.is_none() {
                return Ok(Some((facts, literals)));
            }
            let next = match pulled {
                Some(pull) => Ok(Some(pull)),
                None => self.next_run_first(sql, false),
            };
            let first = match next {
                Ok(Some(first)) => first,
                Ok(None) => return Ok(Some((facts, literals))),
                Err(fields) => {
                    self.reply_error(fields);
                    return Ok(None);
                }
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

    /// The facts of a refused statement with a WITH whose every sharded reference is keyed to
    /// one shard: it runs there whole, in one snapshot, instead of its CTEs running first.
    /// `bound`: a Bind's parameters for the statement's `$n` (else its literals are read).
    pub(crate) fn whole_on_one_shard(
        &self,
        sql: &str,
        facts: &[StatementFacts],
        bound: Option<&dyn ParamSource>,
    ) -> Option<Arc<[StatementFacts]>> {
        let [f] = facts else { return None };
        f.refuse.as_ref()?;
        let proxy = &self.proxy;
        let map = proxy.map.current();
        let path = self.search_path();
        let shard = cte::one_shard(sql, |text| {
            let route = |facts: &[StatementFacts], params: &dyn ParamSource| match facts {
                [f] => proxy.router.route(f, params, &map, proxy.first_shard),
                _ => Route::Refuse(String::new()),
            };
            match bound {
                Some(params) => route(&proxy.router.analyze_prepared_in(text, &path), params),
                None => {
                    let (facts, literals) = proxy.router.analyze_simple_in(text, &path);
                    route(&facts, &LiteralParams(&literals))
                }
            }
        })?;
        cte::run_whole(f, shard).map(|whole| Arc::from(vec![whole]))
    }

    /// Runs `first`'s subquery (keyed, scattered and merged, or on the first shard) and returns
    /// `outer` with its result in place, or the error the client gets.
    async fn run_first(
        &mut self,
        first: &RunFirst,
        outer: &str,
    ) -> Result<Result<String, ErrorFields>, End> {
        let proxy = self.proxy.clone();
        let (facts, literals) = proxy
            .router
            .analyze_simple_in(first.inner(), &self.search_path());
        let (target, scatter) = match self.first_target(&facts, &LiteralParams(&literals)) {
            Ok(t) => t,
            Err(fields) => return Ok(Err(fields)),
        };
        if let Err(fields) = self.choose_group_names(facts.first()).await {
            return Ok(Err(fields));
        }
        let (text, bound) = if scatter {
            match merge_for_simple(&facts, &literals, &self.group_plans) {
                Ok(Some((text, bound))) => (text, Some(bound)),
                Ok(None) => (first.inner().to_string(), None),
                Err(fields) => return Ok(Err(fields)),
            }
        } else {
            (first.inner().to_string(), None)
        };
        let held = self.run_kept(&text, &facts, target, bound, FIRST).await?;
        Ok(splice_held(first, outer, held))
    }

    /// The next subquery or CTE of `sql` to run first (`params`: a prepared statement's, whose
    /// subqueries may use its parameters), or the refusal of a CTE pgshard cannot run first.
    pub(crate) fn next_run_first(
        &self,
        sql: &str,
        params: bool,
    ) -> Result<Option<RunFirst>, ErrorFields> {
        let router = &self.proxy.router;
        let path = self.search_path();
        // An UPDATE setting the shard key to one value: the rows it would move, counted first.
        // (The simple protocol's analysis reads its literals as parameters, so a key pinned
        // by the WHERE clause to the value it is set to is only seen refused there.)
        let key_refused = |facts: &[StatementFacts]| match facts {
            [f] => match &f.refuse {
                Some(Refused::UpdateOfKey { key, .. }) => Some(key.clone()),
                _ => None,
            },
            _ => None,
        };
        let key = key_refused(&router.analyze_prepared_in(sql, &path)).or_else(|| {
            (!params)
                .then(|| key_refused(&router.analyze_simple_in(sql, &path).0))
                .flatten()
        });
        if let Some(key) = key {
            return Ok(key_update::find(sql, &key).map(RunFirst::KeyGuard));
        }
        let reads_sharded = |text: &str| {
            router
                .analyze_prepared_in(text, &path)
                .iter()
                .any(|f| f.sharded)
        };
        next(sql, params, reads_sharded).map_err(refusal)
    }

    /// For a read of one sharded table that the merge cannot reproduce over the shards it
    /// reaches (a window function, DISTINCT ON, `string_agg`, …): its rows to read first, the
    /// statement then running over them on one shard (see `router::pull_up`).
    pub(crate) fn pull_up_of(
        &self,
        sql: &str,
        facts: &[StatementFacts],
        params: &dyn ParamSource,
    ) -> Option<RunFirst> {
        let [f] = facts else { return None };
        if self.block_failed() {
            return None;
        }
        if f.refuse.is_some() {
            let path = self.search_path();
            let unmergeable = |text: &str| {
                let facts = self.proxy.router.analyze_prepared_in(text, &path);
                matches!(&facts[..], [g] if pull_up::unmergeable(g))
            };
            return pull_up::through_derived(f, sql, &unmergeable).map(RunFirst::PullUp);
        }
        if !pull_up::unmergeable(f) {
            return None;
        }
        let proxy = &self.proxy;
        let map = proxy.map.current();
        if !matches!(
            proxy.router.route(f, params, &map, proxy.first_shard),
            Route::Refuse(_)
        ) {
            return None;
        }
        pull_up::find(sql).map(RunFirst::PullUp)
    }

    /// Where a subquery run first goes (keyed, scattered, or the first shard for unsharded
    /// tables), and whether it is scattered (merged).
    pub(crate) fn first_target(
        &self,
        facts: &[StatementFacts],
        params: &dyn ParamSource,
    ) -> Result<(Target, bool), ErrorFields> {
        let proxy = &self.proxy;
        let map = proxy.map.current();
        let route = match facts {
            [f] => proxy.router.route(f, params, &map, proxy.first_shard),
            _ => Route::Refuse("a subquery must be one statement".into()),
        };
        match route {
            Route::Single(s) => Ok((Target::Single(s), false)),
            Route::Any => Ok((Target::Single(proxy.first_shard), false)),
            Route::Scatter(shards) => Ok((Target::Scatter(shards), true)),
            Route::Refuse(message) => Err(Refusal::of_route(message).into()),
            _ => Err(refusal(
                "a subquery pgshard runs first must be a plain SELECT",
            )),
        }
    }
}

/// How errors name a subquery run first.
pub(crate) const FIRST: &str = "a part of the statement pgshard runs first (a subquery, a CTE, or the rows of a read it cannot merge)";

/// A subquery run first on its own cannot see the outer query's columns: an unknown column
/// there is most likely one of them (a correlated subquery). Postgres's error stays; its hint
/// says so.
fn name_outer_columns(mut fields: ErrorFields) -> ErrorFields {
    if fields.code == "42703" && fields.hint.is_none() {
        fields.hint = Some(format!(
            "{FIRST} ran on its own; if the column belongs to the outer query (a correlated subquery), correlate the subquery with a sharded table by its shard key, or pass the outer values as an array parameter (= ANY($1))"
        ));
    }
    fields
}

/// `outer` with `first`'s kept answer in place, or the error the client gets.
pub(crate) fn splice_held(
    first: &RunFirst,
    outer: &str,
    held: Result<(Frame, Vec<Bytes>), ErrorFields>,
) -> Result<String, ErrorFields> {
    let (description, rows) = held.map_err(name_outer_columns)?;
    first
        .splice(outer, &description.body, &rows)
        .map_err(|e| ErrorFields::error(e.code(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_column_in_a_subquery_run_first_gets_a_hint() {
        let hinted = name_outer_columns(ErrorFields::error("42703", "column \"g\" does not exist"));
        assert_eq!(hinted.code, "42703");
        assert!(hinted.hint.is_some_and(|h| h.contains("correlated")));
        let other = name_outer_columns(ErrorFields::error("22012", "division by zero"));
        assert_eq!(other.hint, None);
        let mut own = ErrorFields::error("42703", "column \"x\" does not exist");
        own.hint = Some("Perhaps you meant to reference the column \"t.y\".".into());
        assert_eq!(name_outer_columns(own.clone()).hint, own.hint);
    }
}
