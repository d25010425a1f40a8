//! The session's side of the planner: builds the [`Context`] it plans in (configuration, the
//! user's scatter right, the shard for requests any shard answers) and calls
//! [`crate::planner::plan`] for a simple Query or an extended batch. No routing rule lives here.

use smallvec::SmallVec;

use super::extended::Msg;
use super::run::lookup::ResolvedClaim;
use super::session::{Prepared, Session};
use crate::planner::{self, rules, Context, GivenKeys, Messages, Planned, Request, Statement};
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
    pub(super) fn context<'a>(
        &'a self,
        map: &'a ShardMap,
        fallback: &'a dyn Fn() -> u32,
    ) -> Context<'a> {
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
    pub fn plan_request(&self, request: &Request, map: &ShardMap) -> Result<Planned, Refusal> {
        let fallback = || self.fallback_shard();
        let first_try = request
            .statements
            .first()
            .is_some_and(|st| st.keys.is_none());
        if first_try && request.ending == planner::Ending::Query {
            if let Some(first) = request.statements.first() {
                self.proxy.compat.record_simple(first.sql);
            }
        }
        let cx = self.context(map, &fallback);
        planner::plan(request, &self.state, &cx)
    }

    /// Plans an extended batch: `msgs` as decoded (`routes`: each one's own route), `binds` the
    /// Binds the planner routes, with what I/O found for them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_batch_request(
        &self,
        msgs: &[Msg],
        routes: &[Option<Route>],
        binds: &[BindFacts],
        claims: &[ResolvedClaim],
        ending: planner::Ending,
        failed_before: bool,
        map: &ShardMap,
    ) -> Result<Planned, Refusal> {
        // Each routed Bind's statement and parameters (a Bind the frontend decoded, so present).
        let bound = |b: &BindFacts| match msgs.get(b.message) {
            Some(Msg::Bind {
                bind, statement, ..
            }) => Some((bind, statement)),
            _ => None,
        };
        // Kept inline for the usual batch of one or two Binds: no allocation per batch.
        let params: SmallVec<[BindParams; 2]> = binds
            .iter()
            .filter_map(bound)
            .map(|(bind, statement)| BindParams {
                values: &bind.params,
                formats: &bind.param_formats,
                types: &statement.param_types,
            })
            .collect();
        let statements = binds
            .iter()
            .filter_map(|b| Some((b, bound(b)?.1)))
            .zip(&params)
            .filter_map(|((b, statement), params)| {
                Some(Statement {
                    sql: &statement.sql,
                    facts: statement.facts.first()?,
                    params,
                    looked_up: b.looked_up.clone(),
                    keys: b.keys.clone(),
                })
            })
            .collect();
        let indices: SmallVec<[usize; 2]> = binds.iter().map(|b| b.message).collect();
        let request = Request {
            statements,
            ending,
            messages: Some(Messages {
                msgs,
                routes,
                binds: &indices,
                failed_before,
                claims: !claims.is_empty(),
                block: self.block_view(),
            }),
        };
        self.plan_request(&request, map)
    }

    /// What a Bind the planner routes needs found with I/O first: where a lookup places it (the
    /// table of an index it names, a looked-up column), the values it claims, and generated
    /// keys for an INSERT that omits its shard key. `message`: its index in the batch;
    /// `claims_before`: the batch's claims before it.
    pub(super) async fn bind_facts(
        &mut self,
        statement: &Prepared,
        bind: &Bind,
        message: usize,
        claims_before: usize,
    ) -> Result<(BindFacts, Vec<ResolvedClaim>), ErrorFields> {
        let looked_up = self.looked_up_route_of_bind(statement, bind).await?;
        let claims = self.lookup_claims_of_bind(statement, bind)?;
        let keys = match statement.facts.first() {
            Some(f) if rules::bind_needs_keys(&self.state, f, looked_up.is_some()) => {
                Some(self.given_keys(f)?)
            }
            _ => None,
        };
        let params = BindParams {
            values: &bind.params,
            formats: &bind.param_formats,
            types: &statement.param_types,
        };
        self.proxy.compat.record_bound(&statement.sql, &params);
        let facts = BindFacts {
            message,
            looked_up,
            keys,
            claims_before,
        };
        Ok((facts, claims))
    }
}

/// A Bind of a batch that the planner routes, with what the frontend found for it with I/O.
pub(super) struct BindFacts {
    /// Its index in the batch's messages.
    pub message: usize,
    /// Where a lookup places it.
    pub looked_up: Option<Route>,
    /// Generated keys reserved for it.
    pub keys: Option<GivenKeys>,
    /// How many claims the batch's Binds before it made.
    pub claims_before: usize,
}
