//! Which portals the proxy holds: a plain read bound over several shards and read a piece at a
//! time (`Execute(portal, n)` repeated, or executed by a later request) is run once, merged, and
//! served from the proxy (see `frontend::held_portals`). Pure: decided from the batch's messages,
//! their routes and the session's cursors.

use crate::router::{Route, StatementFacts, StatementKind};
use crate::session::cursors::Cursors;

use super::messages::Msg;
use super::units::needs_atomic_scatter;

/// True when portal `portal`, just bound, is read a piece at a time: the first of the later
/// Executes of it (`(portal, max_rows)` in message order) has a row limit, or none executes it
/// here (it is executed by a later request). A statement read whole in this request is not held.
pub fn read_in_pieces<'a>(
    portal: &str,
    executes: impl IntoIterator<Item = (&'a str, i32)>,
) -> bool {
    executes
        .into_iter()
        .find(|(p, _)| *p == portal)
        .is_none_or(|(_, max_rows)| max_rows > 0)
}

/// A statement whose merged rows the proxy may hold for a portal: a plain read.
pub fn holdable(f: &StatementFacts) -> bool {
    !needs_atomic_scatter(f)
        && f.cursor.is_none()
        && f.local.is_none()
        && !matches!(f.kind, StatementKind::Copy { .. })
}

/// The shards of the Bind at `msgs[i]` (routed `routes[i]`) when the proxy holds its portal: a
/// plain read bound over several shards and read a piece at a time.
pub fn held_bind<'r>(msgs: &[Msg], routes: &'r [Option<Route>], i: usize) -> Option<&'r [u32]> {
    let (
        Some(Msg::Bind {
            bind, statement, ..
        }),
        Some(Some(Route::Scatter(shards))),
    ) = (msgs.get(i), routes.get(i))
    else {
        return None;
    };
    if !statement.facts.first().is_some_and(holdable) {
        return None;
    }
    let executes = msgs[i + 1..].iter().filter_map(|m| match m {
        Msg::Execute(e) => Some((e.portal.as_str(), e.max_rows)),
        _ => None,
    });
    read_in_pieces(&bind.portal, executes).then_some(shards.as_slice())
}

/// True when a batch (or one unit of it) binds a portal the proxy holds.
pub fn binds_held_portal(msgs: &[Msg], routes: &[Option<Route>]) -> bool {
    (0..msgs.len()).any(|i| held_bind(msgs, routes, i).is_some())
}

/// True when `msgs` execute a portal the proxy holds (bound by an earlier request).
pub fn executes_held_portal(msgs: &[Msg], cursors: &Cursors) -> bool {
    msgs.iter().any(|m| match m {
        Msg::Execute(e) => cursors.is_served(&e.portal),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::messages::build::*;
    use crate::session::cursors::{Materialized, Place};

    /// A portal, the Executes after its Bind, and whether it is held.
    type Case = (&'static str, Vec<(&'static str, i32)>, bool);

    #[test]
    fn a_portal_is_held_when_its_first_execute_has_a_limit_or_comes_later() {
        let cases: Vec<Case> = vec![
            ("p", vec![], true),
            ("p", vec![("p", 10)], true),
            ("p", vec![("p", 0)], false),
            ("p", vec![("q", 0)], true),
            ("p", vec![("q", 0), ("p", 0), ("p", 5)], false),
            ("p", vec![("p", 5), ("p", 0)], true),
            ("", vec![("", 1)], true),
            ("", vec![("", 0)], false),
        ];
        for (portal, executes, want) in cases {
            assert_eq!(
                read_in_pieces(portal, executes.iter().copied()),
                want,
                "{portal} {executes:?}"
            );
        }
    }

    #[test]
    fn plain_reads_over_several_shards_read_in_pieces_are_held() {
        let read = "SELECT * FROM users WHERE user_id > $1";
        let write = "UPDATE users SET name = 'x' WHERE user_id > $1";
        let scatter = Some(Route::Scatter(vec![1, 2]));
        // (statement, the Bind's route, the Execute's row limit, held)
        let cases = [
            (read, scatter.clone(), 10, true),
            (read, scatter.clone(), 0, false),
            (read, Some(Route::Single(1)), 10, false),
            (write, scatter.clone(), 10, false),
            ("COPY users TO STDOUT", scatter.clone(), 10, false),
        ];
        for (sql, route, max_rows, want) in cases {
            let msgs = [bind("", sql), execute("", max_rows)];
            let routes = [route.clone(), None];
            let got = held_bind(&msgs, &routes, 0);
            assert_eq!(got.is_some(), want, "{sql} {route:?} {max_rows}");
            assert_eq!(binds_held_portal(&msgs, &routes), want, "{sql}");
        }
        // A Bind with no Execute here: executed by a later request, held.
        let msgs = [bind("c", read)];
        assert_eq!(held_bind(&msgs, &[scatter], 0), Some(&[1, 2][..]));
        // A later request executing it is answered from the held rows.
        let mut cursors = Cursors::default();
        let later = [execute("c", 10)];
        assert!(!executes_held_portal(&later, &cursors));
        let rows = Materialized::new(crate::wire::backend::no_data(), Vec::new());
        cursors.declare("c", Place::Proxy(rows));
        assert!(executes_held_portal(&later, &cursors));
        assert!(!executes_held_portal(&[execute("d", 10)], &cursors));
    }
}
