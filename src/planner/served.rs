//! Which portals of an extended batch the proxy's served cursors answer: a DECLARE whose Bind
//! reaches several shards, a FETCH/MOVE/CLOSE of such a cursor, a Describe or Close of its
//! portal, an Execute of a portal the proxy holds. Pure: decided from the messages, the router
//! and the session's cursors.

use std::collections::HashMap;
use std::sync::Arc;

use crate::router::cursor::CursorOp;
use crate::router::params::BindParams;
use crate::router::Route;
use crate::session::{Prepared, SessionState};

use super::messages::Msg;
use super::rules::Context;

/// The portals of a batch the proxy serves.
pub struct ServedPortals<'m> {
    /// Portals of this batch bound to statements the proxy serves.
    pub ours: HashMap<&'m str, Arc<Prepared>>,
    /// The batch also executes other portals (refused: such statements come alone).
    pub others: bool,
}

/// The served portals of `msgs`; `None` when the batch touches no cursor or portal the proxy
/// serves.
pub fn served_portals<'m>(
    msgs: &'m [Msg],
    state: &SessionState,
    cx: &Context,
) -> Option<ServedPortals<'m>> {
    // The usual batch: no cursor statement, and no cursor or held portal open.
    let touches_cursor = |m: &Msg| match m {
        Msg::Bind { statement, .. } => statement.facts.first().is_some_and(|f| f.cursor.is_some()),
        _ => false,
    };
    if state.cursors.is_empty() && !msgs.iter().any(touches_cursor) {
        return None;
    }
    let mut served = ServedPortals {
        ours: HashMap::new(),
        others: false,
    };
    let mut involved = false;
    for msg in msgs {
        match msg {
            Msg::Bind {
                bind, statement, ..
            } => {
                let serves = statement.facts.first().is_some_and(|f| {
                    let params = BindParams {
                        values: &bind.params,
                        formats: &bind.param_formats,
                        types: &statement.param_types,
                    };
                    let route = match f.cursor {
                        Some(CursorOp::Declare(_)) => {
                            let hint = state.route_hints.current();
                            cx.router
                                .route_hinted(f, hint, &params, cx.map, cx.first_shard)
                        }
                        _ => Route::Any,
                    };
                    state.cursors.serves(f, &route)
                });
                if serves {
                    served.ours.insert(bind.portal.as_str(), statement.clone());
                    involved = true;
                }
            }
            Msg::DescribePortal(t) | Msg::ClosePortal(t) => {
                involved |= state.cursors.is_served(&t.name);
            }
            Msg::Execute(e) => {
                // An Execute of a portal the proxy holds (see `frontend::held_portals`).
                let held = state.cursors.is_served(&e.portal);
                involved |= held;
                served.others |= !held && !served.ours.contains_key(e.portal.as_str());
            }
            _ => {}
        }
    }
    involved.then_some(served)
}
