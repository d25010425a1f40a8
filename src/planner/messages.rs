//! An extended-protocol batch (up to Sync or Flush) as the planner sees it: its decoded
//! messages, each Bind with the statement it binds and its parameter values and formats, and the
//! route each message resolved to. The frontend decodes the frames; the planner routes each Bind
//! (through [`super::rules::statement_route`], the rule a simple Query's statements follow) and
//! decides everything from there on — one target or unit by unit, where each unit runs, which
//! portals the proxy holds — over these, purely.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::router::{Route, StatementFacts};
use crate::session::Prepared;
use crate::wire::frontend::{Bind, Execute, Parse, Target as NamedTarget};

/// One decoded message of a batch, with what the proxy resolved for it.
pub enum Msg {
    Parse(Parse, Arc<Prepared>),
    Bind {
        bind: Bind,
        statement: Arc<Prepared>,
        /// The INSERT text with generated keys, when the statement omits the shard key.
        rewritten: Option<String>,
    },
    DescribeStatement(Arc<Prepared>),
    DescribePortal(NamedTarget),
    Execute(Execute),
    CloseStatement,
    ClosePortal(NamedTarget),
}

impl Msg {
    /// The portal a Describe, Execute or Close of a portal names.
    pub fn portal(&self) -> Option<&str> {
        match self {
            Msg::Execute(e) => Some(e.portal.as_str()),
            Msg::DescribePortal(t) | Msg::ClosePortal(t) => Some(t.name.as_str()),
            _ => None,
        }
    }

    /// The portal a Bind binds.
    pub fn bound_portal(&self) -> Option<&str> {
        match self {
            Msg::Bind { bind, .. } => Some(bind.portal.as_str()),
            _ => None,
        }
    }
}

/// The facts of the statements `msgs` execute, in Execute order (an Execute of a portal bound
/// elsewhere adds nothing).
pub fn executed_facts(msgs: &[Msg]) -> Vec<StatementFacts> {
    let mut bound: HashMap<&str, &StatementFacts> = HashMap::new();
    let mut out = Vec::new();
    for msg in msgs {
        match msg {
            Msg::Bind {
                bind, statement, ..
            } => {
                if let Some(f) = statement.facts.first() {
                    bound.insert(bind.portal.as_str(), f);
                }
            }
            Msg::Execute(e) => {
                if let Some(f) = bound.get(e.portal.as_str()) {
                    out.push((*f).clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// What a batch executes.
pub struct Executed<'m> {
    /// The statements its Executes run (portals bound in this batch), in Execute order (most
    /// batches run one or two: kept inline, no allocation per batch).
    pub statements: SmallVec<[&'m Arc<Prepared>; 2]>,
    /// How many Executes it has.
    pub executes: usize,
    /// An Execute has a row limit that matters (a statement that answers no rows ignores it;
    /// a portal bound earlier is taken to answer rows).
    pub row_limit: bool,
}

/// What `msgs` execute (see [`Executed`]).
pub fn executed(msgs: &[Msg]) -> Executed<'_> {
    let mut out = Executed {
        statements: SmallVec::new(),
        executes: 0,
        row_limit: false,
    };
    for (i, msg) in msgs.iter().enumerate() {
        if let Msg::Execute(e) = msg {
            out.executes += 1;
            // The portal's latest Bind before this Execute (batches are short: no map).
            let statement = msgs[..i].iter().rev().find_map(|m| match m {
                Msg::Bind {
                    bind, statement, ..
                } if bind.portal == e.portal => Some(statement),
                _ => None,
            });
            let no_rows = statement
                .and_then(|st| st.facts.first())
                .is_some_and(|f| f.returns_no_rows);
            out.row_limit |= e.max_rows > 0 && !no_rows;
            out.statements.extend(statement);
        }
    }
    out
}

/// True when a message of `msgs` carries one of pgshard's own commands (its Parse, Bind or
/// statement Describe).
pub fn carries_local(msgs: &[Msg]) -> bool {
    let local = |st: &Prepared| st.facts.first().is_some_and(|f| f.local.is_some());
    msgs.iter().any(|msg| match msg {
        Msg::Parse(_, st) | Msg::DescribeStatement(st) => local(st),
        Msg::Bind { statement, .. } => local(statement),
        _ => false,
    })
}

/// A batch that runs exactly one UNNEST insert (Parse?, Bind, Describe portal?, one Execute
/// without a row limit): what the client sent, for splitting its arrays.
pub struct UnnestShape<'m> {
    pub bind: &'m Bind,
    pub statement: &'m Arc<Prepared>,
    /// The client sent the Parse in this batch.
    pub parsed: bool,
    /// The client described the portal.
    pub describe: bool,
}

/// The batch's UNNEST insert when `msgs` have the shape of [`UnnestShape`].
pub fn lone_unnest_insert(msgs: &[Msg]) -> Option<UnnestShape<'_>> {
    let (mut parsed, mut describe, mut bound, mut executes) = (false, false, None, 0);
    for m in msgs {
        match m {
            Msg::Parse(..) => parsed = true,
            Msg::Bind {
                bind,
                statement,
                rewritten: None,
            } if bound.is_none() => bound = Some((bind, statement)),
            Msg::DescribePortal(_) => describe = true,
            Msg::Execute(e) if e.max_rows == 0 => executes += 1,
            _ => return None,
        }
    }
    let (bind, statement) = bound?;
    statement.facts.first()?.unnest.as_ref()?;
    (executes == 1).then_some(UnnestShape {
        bind,
        statement,
        parsed,
        describe,
    })
}

/// The facts of the statements `msgs` bind, in order.
pub fn bound_facts(msgs: &[Msg]) -> impl Iterator<Item = &StatementFacts> {
    msgs.iter().filter_map(|msg| match msg {
        Msg::Bind { statement, .. } => statement.facts.first(),
        _ => None,
    })
}

/// The routes of `msgs` that say where they run (not a Bind-routed portal message, not one any
/// shard answers).
pub fn needed_routes(routes: &[Option<Route>]) -> impl Iterator<Item = &Route> {
    routes.iter().flatten().filter(|r| **r != Route::Any)
}

/// Builders of batches for the planner's table tests.
#[cfg(test)]
pub(crate) mod build {
    use super::*;
    use crate::config::ShardedTableConfig;
    use crate::router::Router;

    /// `users` sharded by `user_id`.
    pub fn router() -> Router {
        Router::new(
            &[ShardedTableConfig {
                name: "users".into(),
                key: "user_id".into(),
                key_type: None,
            }],
            10,
        )
    }

    /// A prepared statement of `sql`.
    pub fn prepared(sql: &str) -> Arc<Prepared> {
        Arc::new(Prepared {
            sql: sql.into(),
            param_types: Vec::new(),
            facts: router().analyze_prepared(sql),
            server_name: String::new(),
        })
    }

    pub fn parse(sql: &str) -> Msg {
        Msg::Parse(
            Parse {
                name: String::new(),
                query: sql.into(),
                param_types: Vec::new(),
            },
            prepared(sql),
        )
    }

    pub fn bind(portal: &str, sql: &str) -> Msg {
        Msg::Bind {
            bind: Bind {
                portal: portal.into(),
                statement: String::new(),
                param_formats: Vec::new(),
                params: Vec::new(),
                result_formats: Vec::new(),
            },
            statement: prepared(sql),
            rewritten: None,
        }
    }

    pub fn describe_portal(portal: &str) -> Msg {
        Msg::DescribePortal(NamedTarget {
            kind: b'P',
            name: portal.into(),
        })
    }

    pub fn execute(portal: &str, max_rows: i32) -> Msg {
        Msg::Execute(Execute {
            portal: portal.into(),
            max_rows,
        })
    }

    pub fn close_portal(portal: &str) -> Msg {
        Msg::ClosePortal(NamedTarget {
            kind: b'P',
            name: portal.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn executed_facts_follow_the_executes_of_portals_bound_here() {
        let select = "SELECT * FROM users WHERE user_id = $1";
        let update = "UPDATE users SET name = 'x' WHERE user_id = $1";
        // (messages, kinds executed)
        let cases: Vec<(Vec<Msg>, usize)> = vec![
            (vec![parse(select), bind("", select), execute("", 0)], 1),
            (
                vec![
                    bind("a", select),
                    bind("b", update),
                    execute("b", 0),
                    execute("a", 0),
                ],
                2,
            ),
            (vec![execute("elsewhere", 0)], 0),
            (vec![bind("", select)], 0),
        ];
        for (msgs, want) in cases {
            assert_eq!(executed_facts(&msgs).len(), want);
        }
        let msgs = [bind("a", select), bind("b", update), execute("b", 0)];
        assert!(executed_facts(&msgs)[0].is_write);
        assert_eq!(bound_facts(&msgs).count(), 2);
        assert_eq!(msgs[2].portal(), Some("b"));
        assert_eq!(msgs[0].bound_portal(), Some("a"));
        let routes = [None, Some(Route::Any), Some(Route::Single(3))];
        assert_eq!(
            needed_routes(&routes).collect::<Vec<_>>(),
            [&Route::Single(3)]
        );
    }
}
