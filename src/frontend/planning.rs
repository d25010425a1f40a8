//! The session's side of the planner: builds the [`Context`] it plans in (configuration, the
//! user's scatter right, the shard for requests any shard answers) and calls
//! [`crate::planner::plan`]. No routing rule lives here.

use super::session::{Prepared, Session};
use crate::planner::{self, rules, Context, GivenKeys, Planned, Request, Statement};
use crate::refusal::Refusal;
use crate::router::params::BindParams;
use crate::router::{Route, ShardMap};
use crate::wire::backend::ErrorFields;
use crate::wire::frontend::Bind;

impl Session {
    /// True when this user may run statements that reach several shards.
    pub fn allow_scatter(&self) -> bool {
        self.proxy
            .config
            .users
            .iter()
            .find(|u| u.name == self.user)
            .is_none_or(|u| u.allow_scatter)
    }

    /// The context this session plans in.
    fn context<'a>(&'a self, map: &'a ShardMap, fallback: &'a dyn Fn() -> u32) -> Context<'a> {
        let proxy = &self.proxy;
        Context {
            router: &proxy.router,
            map,
            first_shard: proxy.first_shard,
            pool_mode: proxy.config.pool.mode,
            sharded_tables: &proxy.config.sharded_tables,
            allow_scatter: self.allow_scatter(),
            fallback,
        }
    }

    /// Plans `request` on this session's state (see [`crate::planner::plan`]).
    pub fn plan_request(
        &self,
        request: &Request,
        map: &ShardMap,
        keys: Option<GivenKeys>,
    ) -> Result<Planned, Refusal> {
        let fallback = || self.fallback_shard();
        if keys.is_none() && request.ending == planner::Ending::Query {
            if let Some(first) = request.statements.first() {
                self.proxy.compat.record_simple(first.sql);
            }
        }
        let cx = self.context(map, &fallback);
        planner::plan(request, &self.state, &cx, keys)
    }

    /// The route of one Bind ([`crate::planner::rules::statement_route`]), and the text its
    /// statement becomes (an INSERT given generated keys); the cursor it declares or closes is
    /// recorded. `looked_up`: the index owner's route, when the statement names an index.
    pub fn bind_route(
        &mut self,
        statement: &Prepared,
        bind: &Bind,
        looked_up: Option<Route>,
        map: &ShardMap,
    ) -> Result<(Route, Option<String>), ErrorFields> {
        let Some(facts) = statement.facts.first() else {
            return Ok((Route::Any, None));
        };
        let keys = match rules::bind_needs_keys(&self.state, facts, looked_up.is_some()) {
            true => Some(self.given_keys(facts)?),
            false => None,
        };
        let params = BindParams {
            values: &bind.params,
            formats: &bind.param_formats,
            types: &statement.param_types,
        };
        self.proxy.compat.record_bound(&statement.sql, &params);
        let st = Statement {
            sql: &statement.sql,
            facts,
            params: &params,
            looked_up,
        };
        let fallback = || self.any_shard;
        let cx = self.context(map, &fallback);
        let routed = rules::statement_route(&st, &self.state, &cx, keys.as_ref(), &[])?;
        if let Some(effect) = &routed.cursor {
            self.state.cursors.apply(effect);
        }
        Ok((routed.route, routed.rewritten))
    }
}
