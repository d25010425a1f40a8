//! Portals over several shards read a piece at a time: `Execute(portal, n)` repeated until
//! CommandComplete (pgjdbc's fetch size, asyncpg and tokio-postgres cursors), and DECLARE CURSOR
//! with Bind parameters. The proxy runs the bound statement once through the usual scatter +
//! merge, holds the merged rows as a proxy-served cursor (`exec::cursor`, same cap), and serves
//! each Execute from them. A held portal lives as Postgres's does: until Close, the next Bind of
//! its (unnamed) name, or the end of its transaction (COMMIT/ROLLBACK, or the Sync of an implicit
//! one).

use std::sync::Arc;

use super::extended::{build_steps, fenceable_texts, merge_for_batch, server_statement_name, Msg};
use super::pipeline::UnitEnd;
use super::session::{refusal, End, Prepared, Session, Target};
use crate::backend::ServerConn;
use crate::exec::cursor::{scatter_shards, Keep};
use crate::planner::held::held_bind;
use crate::refusal::Refusal;
use crate::router::cursor::{Declare, Motion};
use crate::router::params::BindParams;
use crate::router::{Route, StatementFacts};
use crate::wire::backend::{self as be, ErrorFields, TxStatus};
use crate::wire::frame::Frame;
use crate::wire::frontend::{Bind, Execute, Target as NamedTarget};

use crate::session::cursors::{Materialized, Place};

/// What a unit that works on held portals may not contain.
fn not_alone() -> Refusal {
    Refusal::unsupported("a portal read a piece at a time over several shards (held by pgshard) must be bound and executed with its own messages, not together with other statements")
}

impl Session {
    /// Answers one unit of a pipeline that binds or executes held portals: the proxy answers every
    /// message itself, running the bound statement on the shards at its Bind.
    pub(super) async fn held_unit(
        &mut self,
        unit: &[Msg],
        routes: &[Option<Route>],
    ) -> Result<UnitEnd, End> {
        for (i, msg) in unit.iter().enumerate() {
            let answered = match msg {
                Msg::Parse(..) => {
                    self.io.push(&be::parse_complete());
                    Ok(())
                }
                Msg::Bind {
                    bind, statement, ..
                } => match held_bind(unit, routes, i) {
                    Some(shards) => self.hold_portal(bind, statement, shards.to_vec()).await?,
                    None => Err(not_alone().into()),
                },
                Msg::DescribePortal(t) => {
                    let described = self.merged_description(&t.name);
                    self.io.push(&described.unwrap_or_else(be::no_data));
                    Ok(())
                }
                Msg::Execute(e) => self.execute_held(e),
                Msg::CloseStatement => {
                    self.io.push(&be::close_complete());
                    Ok(())
                }
                Msg::ClosePortal(t) => {
                    self.state.cursors.close(&t.name);
                    self.io.push(&be::close_complete());
                    Ok(())
                }
                Msg::DescribeStatement(_) => Err(refusal(
                    "Describe of a statement together with a portal read a piece at a time over several shards is not supported; describe it in a request of its own",
                )),
            };
            if let Err(fields) = answered {
                self.push_error_in_batch(fields);
                return Ok(UnitEnd::Failed);
            }
        }
        Ok(UnitEnd::Ran)
    }

    /// Runs `statement` bound by `bind` on `shards`, holds its merged rows under the Bind's portal
    /// and answers BindComplete.
    async fn hold_portal(
        &mut self,
        bind: &Bind,
        statement: &Arc<Prepared>,
        shards: Vec<u32>,
    ) -> Result<Result<(), ErrorFields>, End> {
        let what = format!("portal \"{}\"", bind.portal);
        let held = match self.run_held(bind, statement, shards, &what).await? {
            Ok(m) => m,
            Err(fields) => return Ok(Err(fields)),
        };
        self.state.cursors.close(&bind.portal);
        self.state.cursors.declare(&bind.portal, Place::Proxy(held));
        self.io.push(&be::bind_complete());
        Ok(Ok(()))
    }

    /// Runs `statement` with `bind`'s parameters and result formats on `shards` (scatter + merge)
    /// and returns its merged rows; `what` names the portal or cursor in errors.
    async fn run_held(
        &mut self,
        bind: &Bind,
        statement: &Arc<Prepared>,
        shards: Vec<u32>,
        what: &str,
    ) -> Result<Result<Materialized, ErrorFields>, End> {
        if self.status() == TxStatus::Failed {
            return Ok(Err(super::session::aborted()));
        }
        // On the shards the statement runs whole, in their unnamed portal.
        let msgs = [
            Msg::Bind {
                bind: Bind {
                    portal: String::new(),
                    ..bind.clone()
                },
                statement: statement.clone(),
                rewritten: None,
            },
            Msg::DescribePortal(NamedTarget {
                kind: b'P',
                name: String::new(),
            }),
            Msg::Execute(Execute {
                portal: String::new(),
                max_rows: 0,
            }),
        ];
        let facts: Vec<StatementFacts> = statement.facts.iter().cloned().collect();
        let merge = match merge_for_batch(&msgs, &self.group_plans) {
            Ok(m) => m,
            Err(fields) => return Ok(Err(fields)),
        };
        let merge_steps = merge.as_ref().map(|(m, _)| m);
        let fences = if self.proxy.rebalance.fence().is_some() {
            match self.fence_statement_texts(
                &fenceable_texts(&msgs, merge_steps),
                &facts,
                &Target::Scatter(shards.clone()),
            ) {
                Ok(f) => f,
                Err(fields) => return Ok(Err(fields)),
            }
        } else {
            None
        };
        let build = |conn: &ServerConn| {
            let fence = fences.as_ref().and_then(|f| f.get(&conn.shard));
            build_steps(&msgs, conn, None, true, merge_steps, fence)
        };
        self.route_reads(&shards, &facts).await;
        let mut keep = Keep::default();
        let bound = merge.as_ref().map(|(_, b)| b.clone());
        let end = self
            .run_scatter_to(shards, build, bound, Some(&mut keep))
            .await?;
        if let Some(fields) = end.failure {
            return Ok(Err(fields));
        }
        Ok(keep
            .held(what)
            .map(|(description, rows)| Materialized::new(description, rows)))
    }

    /// Execute of a held portal: its next `max_rows` rows (all when 0), then PortalSuspended
    /// when the limit was reached, else CommandComplete with the rows of this Execute, as
    /// Postgres reports a portal run in pieces.
    pub(super) fn execute_held(&mut self, e: &Execute) -> Result<(), ErrorFields> {
        if self.status() == TxStatus::Failed {
            return Err(super::session::aborted());
        }
        let Some(portal) = self.state.cursors.served(&e.portal) else {
            return Err(ErrorFields::error(
                "34000",
                format!("portal \"{}\" does not exist", e.portal),
            ));
        };
        let limit = usize::try_from(e.max_rows).unwrap_or(0);
        let motion = match limit {
            0 => Motion::All,
            n => Motion::Forward(n as u64),
        };
        let rows: Vec<Frame> = match portal.advance(&motion) {
            Ok(rows) => rows
                .iter()
                .map(|r| Frame::new(be::DATA_ROW, r.clone()))
                .collect(),
            Err(what) => return Err(refusal(format!("{what} on a held portal"))),
        };
        let count = rows.len();
        for row in &rows {
            self.io.push(row);
        }
        if limit > 0 && count == limit {
            self.io
                .push(&Frame::new(be::PORTAL_SUSPENDED, bytes::Bytes::new()));
        } else {
            self.io
                .push(&be::command_complete(&format!("SELECT {count}")));
        }
        Ok(())
    }

    /// DECLARE `declare` CURSOR FOR `query` with Bind parameters, over several shards: the
    /// shards run `query` with the Bind's values (text results, as a cursor's FETCH gives) and
    /// the proxy holds the merged rows as the cursor's.
    pub(super) async fn declare_bound(
        &mut self,
        declare: &Declare,
        query: &str,
        bind: &Bind,
        param_types: &[u32],
    ) -> Result<Result<(), ErrorFields>, End> {
        if let Some(fields) = self.declare_refusal(declare) {
            return Ok(Err(fields));
        }
        let proxy = self.proxy.clone();
        let facts = proxy.router.analyze_prepared_in(query, &self.search_path());
        let route = match facts.as_ref() {
            [f] => {
                let params = BindParams {
                    values: &bind.params,
                    formats: &bind.param_formats,
                    types: param_types,
                };
                let map = proxy.map.current();
                let hint = self.state.route_hints.current();
                let first = proxy.first_shard;
                proxy.router.route_hinted(f, hint, &params, &map, first)
            }
            _ => Route::Refuse("a cursor's query must be one statement".into()),
        };
        let shards = match scatter_shards(route) {
            Ok(shards) => shards,
            Err(fields) => return Ok(Err(fields)),
        };
        let statement = Arc::new(Prepared {
            sql: query.to_string(),
            param_types: param_types.to_vec(),
            facts,
            server_name: server_statement_name(query, param_types),
        });
        let text = Bind {
            result_formats: Vec::new(),
            ..bind.clone()
        };
        let what = format!("cursor \"{}\"", declare.name);
        let held = match self.run_held(&text, &statement, shards, &what).await? {
            Ok(m) => m,
            Err(fields) => return Ok(Err(fields)),
        };
        self.state
            .cursors
            .declare(&declare.name, Place::Proxy(held));
        if declare.hold {
            self.state.cursors.hold(&declare.name);
        }
        Ok(Ok(()))
    }

    /// At a Sync outside a transaction block: the implicit transaction ended, and with it the
    /// portals the proxy held in it.
    pub fn end_implicit_portals(&mut self) {
        if self.state.txn.is_none() {
            self.state.cursors.drop_served();
        }
    }

    /// A Bind naming a portal the proxy holds: the unnamed portal is replaced (dropped here), a
    /// named one must be closed first, as in Postgres.
    pub(super) fn rebind_held(&mut self, portal: &str) -> Result<(), ErrorFields> {
        if self.state.cursors.served(portal).is_none() {
            return Ok(());
        }
        if portal.is_empty() {
            self.state.cursors.close(portal);
            return Ok(());
        }
        Err(ErrorFields::error(
            "42P03",
            format!("portal \"{portal}\" already exists"),
        ))
    }
}
