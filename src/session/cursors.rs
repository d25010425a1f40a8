//! The cursors a client has open in its transaction block and where each lives: on one shard
//! (its FETCH/MOVE/CLOSE go there) or in the proxy (a cursor over several shards, whose merged
//! rows the proxy holds and serves forward only). Plain data: no socket, no server.
//!
//! Lifetime follows Postgres: a cursor lives until CLOSE, the end of the block (COMMIT or
//! ROLLBACK), or a ROLLBACK TO a savepoint set before its DECLARE; a `WITH HOLD` cursor whose
//! transaction committed lives on until CLOSE (its shard connection stays pinned meanwhile, see
//! `session_pins`).

use bytes::Bytes;

use crate::router::cursor::{CursorOp, Motion};
use crate::router::{Route, StatementFacts};
use crate::txn::statement::SavepointOp;
use crate::wire::frame::Frame;

/// Where one cursor's rows come from.
#[derive(Debug)]
pub enum Place {
    /// Declared on this shard: its statements run there.
    Shard(u32),
    /// Declared over several shards: the proxy serves it.
    Proxy(Materialized),
}

/// A merged result held for a proxy-served cursor, and how far the client has read it.
#[derive(Debug)]
pub struct Materialized {
    /// The RowDescription of the merged result (text format).
    pub description: Frame,
    /// DataRow bodies in merged order.
    rows: Vec<Bytes>,
    /// Postgres's portal position: 0 before the first row, k on row k, `len + 1` after the last.
    position: usize,
}

impl Materialized {
    /// A cursor positioned before its first row.
    pub fn new(description: Frame, rows: Vec<Bytes>) -> Materialized {
        Materialized {
            description,
            rows,
            position: 0,
        }
    }

    /// Moves forward as FETCH/MOVE `motion` does and returns the rows passed over (what FETCH
    /// returns; MOVE reports their number). `Err` names a motion a forward-only cursor lacks.
    pub fn advance(&mut self, motion: &Motion) -> Result<&[Bytes], &'static str> {
        let len = self.rows.len();
        let p = self.position;
        let want = match motion {
            Motion::Backward(what) => return Err(what),
            Motion::Forward(0) => {
                // The current row, if the cursor stands on one; the position stays.
                let range = if (1..=len).contains(&p) {
                    p - 1..p
                } else {
                    0..0
                };
                return Ok(&self.rows[range]);
            }
            Motion::Forward(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            Motion::All => usize::MAX,
        };
        let start = p.min(len);
        let end = start.saturating_add(want).min(len);
        self.position = match p.checked_add(want) {
            Some(next) if next <= len => next,
            _ => len + 1,
        };
        Ok(&self.rows[start..end])
    }
}

#[derive(Debug)]
struct Open {
    name: String,
    place: Place,
    /// Order of creation among cursors and savepoints, for ROLLBACK TO.
    born: u64,
    hold: Hold,
}

/// Whether a cursor outlives its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Gone at the end of the block.
    No,
    /// `WITH HOLD`, its transaction still open: kept if it commits.
    Pending,
    /// `WITH HOLD`, its transaction committed: lives until CLOSE.
    Kept,
}

/// What a cursor statement changes among the open cursors once it is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A DECLARE on one shard.
    Declare {
        name: String,
        shard: u32,
        hold: bool,
    },
    /// CLOSE of a cursor on a shard.
    Close(String),
    /// CLOSE ALL, every cursor being on one shard.
    CloseAll,
}

/// The client's open cursors and the savepoints that scope them.
#[derive(Debug, Default)]
pub struct Cursors {
    open: Vec<Open>,
    savepoints: Vec<(String, u64)>,
    clock: u64,
}

impl Cursors {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn find(&self, name: &str) -> Option<&Open> {
        self.open.iter().find(|o| o.name == name)
    }

    /// True when no cursor (nor portal the proxy holds) is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// True when a cursor of this name is open.
    pub fn exists(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// Records a cursor; false (nothing changed) when the name is taken.
    pub fn declare(&mut self, name: &str, place: Place) -> bool {
        if self.exists(name) {
            return false;
        }
        let born = self.tick();
        self.open.push(Open {
            name: name.to_string(),
            place,
            born,
            hold: Hold::No,
        });
        true
    }

    /// Marks cursor `name` (just declared) `WITH HOLD`: it outlives its transaction if that
    /// commits.
    pub fn hold(&mut self, name: &str) {
        if let Some(o) = self.open.iter_mut().find(|o| o.name == name) {
            o.hold = Hold::Pending;
        }
    }

    /// Keeps of the held cursors on `shard` only those the server still has (`names`: its
    /// holdable cursors, as pg_cursors lists them).
    pub fn held_on_shard(&mut self, shard: u32, names: &[String]) {
        self.open.retain(|o| {
            o.hold == Hold::No
                || !matches!(o.place, Place::Shard(s) if s == shard)
                || names.contains(&o.name)
        });
    }

    /// True when a WITH HOLD cursor is open.
    pub fn any_held(&self) -> bool {
        self.open.iter().any(|o| o.hold != Hold::No)
    }

    /// The shard a cursor lives on, when it lives on one.
    pub fn shard_of(&self, name: &str) -> Option<u32> {
        match self.find(name)?.place {
            Place::Shard(s) => Some(s),
            Place::Proxy(_) => None,
        }
    }

    /// True when the proxy serves the cursor (or holds the portal) of this name.
    pub fn is_served(&self, name: &str) -> bool {
        self.find(name)
            .is_some_and(|o| matches!(o.place, Place::Proxy(_)))
    }

    /// The proxy-served cursor of this name.
    pub fn served(&mut self, name: &str) -> Option<&mut Materialized> {
        self.open
            .iter_mut()
            .find(|o| o.name == name)
            .and_then(|o| match &mut o.place {
                Place::Proxy(m) => Some(m),
                Place::Shard(_) => None,
            })
    }

    /// Forgets a cursor (CLOSE); false when none had that name.
    pub fn close(&mut self, name: &str) -> bool {
        let before = self.open.len();
        self.open.retain(|o| o.name != name);
        self.open.len() != before
    }

    /// The end of the block: every cursor and savepoint is gone, except WITH HOLD cursors
    /// declared in a block that committed (or before it).
    pub fn end_block(&mut self, rolled_back: bool) {
        self.open.retain_mut(|o| match o.hold {
            Hold::No => false,
            Hold::Kept => true,
            Hold::Pending if rolled_back => false,
            Hold::Pending => {
                o.hold = Hold::Kept;
                true
            }
        });
        self.savepoints.clear();
    }

    /// Follows SAVEPOINT, RELEASE and ROLLBACK TO: a rollback to a savepoint closes the cursors
    /// declared after it.
    pub fn savepoint(&mut self, op: &SavepointOp) {
        match op {
            SavepointOp::Define(name) => {
                let at = self.tick();
                self.savepoints.push((name.clone(), at));
            }
            SavepointOp::Release(name) => {
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.savepoints.truncate(i);
                }
            }
            SavepointOp::RollbackTo(name) => {
                if let Some(i) = self.savepoints.iter().rposition(|(n, _)| n == name) {
                    let at = self.savepoints[i].1;
                    self.savepoints.truncate(i + 1);
                    self.open.retain(|o| o.born < at);
                }
            }
        }
    }

    /// Keeps a cursor statement where its cursor lives (`route` as the router decided it):
    /// a DECLARE on one shard is recorded there (one naming no table goes to `first_shard`),
    /// FETCH/MOVE/CLOSE of it follow it. Statements on proxy-served cursors and a DECLARE over
    /// several shards keep their route: `serves` picks them out.
    pub fn route(&mut self, facts: &StatementFacts, route: &mut Route, first_shard: u32) {
        let (placed, effect) = self.place(facts, route, first_shard, &[]);
        *route = placed;
        if let Some(effect) = &effect {
            self.apply(effect);
        }
    }

    /// [`Cursors::route`] without changing anything: the statement's route and what running it
    /// changes. `pending`: the changes of the request's earlier statements, not yet applied.
    pub fn place(
        &self,
        facts: &StatementFacts,
        route: &Route,
        first_shard: u32,
        pending: &[Effect],
    ) -> (Route, Option<Effect>) {
        let unchanged = (route.clone(), None);
        let Some(op) = &facts.cursor else {
            return unchanged;
        };
        let open = self.view(pending);
        let shard_of = |name: &str| {
            open.iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, place)| *place)
        };
        match op {
            CursorOp::Declare(d) => {
                let shard = match route {
                    Route::Single(s) => *s,
                    Route::Any => first_shard,
                    _ => return unchanged,
                };
                if open.iter().any(|(n, _)| *n == d.name) {
                    return (
                        Route::Refuse(format!("cursor \"{}\" already exists", d.name)),
                        None,
                    );
                }
                let effect = Effect::Declare {
                    name: d.name.clone(),
                    shard,
                    hold: d.hold,
                };
                (Route::Single(shard), Some(effect))
            }
            CursorOp::Fetch { name, .. } => match shard_of(name) {
                Some(s) => (Route::Single(s), None),
                None => unchanged,
            },
            CursorOp::Close { name: Some(name) } => match shard_of(name) {
                Some(s) => (Route::Single(s), Some(Effect::Close(name.clone()))),
                None => unchanged,
            },
            CursorOp::Close { name: None } => {
                let mut shards: Vec<u32> = open.iter().filter_map(|(_, place)| *place).collect();
                shards.sort_unstable();
                shards.dedup();
                let proxied = open.iter().any(|(_, place)| place.is_none());
                match (shards.as_slice(), proxied) {
                    // Nothing open, or only proxy-served cursors (`serves` takes those).
                    ([], _) => unchanged,
                    ([one], false) => (Route::Single(*one), Some(Effect::CloseAll)),
                    _ => (
                        Route::Refuse(
                            "CLOSE ALL with cursors on several shards is not supported; close each cursor by name".into(),
                        ),
                        None,
                    ),
                }
            }
        }
    }

    /// The open cursors, by name, with their shard (`None`: served by the proxy), once
    /// `pending` is applied.
    fn view(&self, pending: &[Effect]) -> Vec<(String, Option<u32>)> {
        let mut open: Vec<(String, Option<u32>)> = self
            .open
            .iter()
            .map(|o| {
                let place = match o.place {
                    Place::Shard(s) => Some(s),
                    Place::Proxy(_) => None,
                };
                (o.name.clone(), place)
            })
            .collect();
        for effect in pending {
            match effect {
                Effect::Declare { name, shard, .. } => open.push((name.clone(), Some(*shard))),
                Effect::Close(name) => open.retain(|(n, _)| n != name),
                Effect::CloseAll => open.clear(),
            }
        }
        open
    }

    /// Records what a cursor statement [`Cursors::place`]d changes.
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Declare { name, shard, hold } => {
                if self.declare(name, Place::Shard(*shard)) && *hold {
                    self.hold(name);
                }
            }
            Effect::Close(name) => {
                self.close(name);
            }
            Effect::CloseAll => self.close_all(),
        }
    }

    /// True when the proxy answers this statement itself: a DECLARE routed to several shards, or
    /// FETCH/MOVE/CLOSE of a proxy-served cursor (CLOSE ALL when only such cursors are open).
    pub fn serves(&self, facts: &StatementFacts, route: &Route) -> bool {
        match &facts.cursor {
            Some(CursorOp::Declare(_)) => matches!(route, Route::Scatter(_)),
            Some(CursorOp::Fetch { name, .. }) | Some(CursorOp::Close { name: Some(name) }) => self
                .find(name)
                .is_some_and(|o| matches!(o.place, Place::Proxy(_))),
            Some(CursorOp::Close { name: None }) => {
                !self.open.is_empty()
                    && self.open.iter().all(|o| matches!(o.place, Place::Proxy(_)))
            }
            None => false,
        }
    }

    /// The end of an implicit transaction: the portals the proxy held in it are gone (cursors
    /// on a shard outside a block are WITH HOLD ones, which stay).
    pub fn drop_served(&mut self) {
        self.open
            .retain(|o| matches!(o.place, Place::Shard(_)) || o.hold != Hold::No);
    }

    /// CLOSE ALL: every cursor is gone, the savepoints stay.
    pub fn close_all(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::cursor::Declare;
    use crate::router::StatementKind;
    use crate::wire::backend as be;

    fn rows(n: usize) -> Materialized {
        let rows = (0..n).map(|i| Bytes::from(vec![i as u8])).collect();
        Materialized::new(be::command_complete("x"), rows)
    }

    fn ids(r: Result<&[Bytes], &'static str>) -> Result<Vec<u8>, &'static str> {
        r.map(|rows| rows.iter().map(|b| b[0]).collect())
    }

    #[test]
    fn forward_motions_follow_postgres_positions() {
        use Motion::*;
        // (motions applied in order, rows each returns)
        type Read = Result<Vec<u8>, &'static str>;
        let cases: Vec<(Vec<Motion>, Vec<Read>)> = vec![
            (
                vec![Forward(2), Forward(2), Forward(2), Forward(1)],
                vec![Ok(vec![0, 1]), Ok(vec![2, 3]), Ok(vec![4]), Ok(vec![])],
            ),
            (vec![All, All], vec![Ok(vec![0, 1, 2, 3, 4]), Ok(vec![])]),
            (
                vec![Forward(0), Forward(3), Forward(0), All, Forward(0)],
                vec![
                    Ok(vec![]),
                    Ok(vec![0, 1, 2]),
                    Ok(vec![2]),
                    Ok(vec![3, 4]),
                    Ok(vec![]),
                ],
            ),
            (
                vec![Forward(5), Forward(1), Forward(u64::MAX)],
                vec![Ok(vec![0, 1, 2, 3, 4]), Ok(vec![]), Ok(vec![])],
            ),
            (
                vec![Forward(1), Backward("BACKWARD or PRIOR"), Forward(1)],
                vec![Ok(vec![0]), Err("BACKWARD or PRIOR"), Ok(vec![1])],
            ),
        ];
        for (motions, want) in cases {
            let mut m = rows(5);
            let got: Vec<_> = motions.iter().map(|mo| ids(m.advance(mo))).collect();
            assert_eq!(got, want, "{motions:?}");
        }
        let mut empty = rows(0);
        assert_eq!(ids(empty.advance(&Motion::Forward(3))), Ok(vec![]));
        assert_eq!(ids(empty.advance(&Motion::All)), Ok(vec![]));
    }

    fn facts(op: CursorOp) -> StatementFacts {
        let mut f = StatementFacts::plain(StatementKind::Other);
        f.cursor = Some(op);
        f
    }

    fn declare(name: &str) -> StatementFacts {
        facts(CursorOp::Declare(Declare {
            name: name.into(),
            binary: false,
            scroll: false,
            hold: false,
        }))
    }

    fn fetch(name: &str) -> StatementFacts {
        facts(CursorOp::Fetch {
            name: name.into(),
            motion: Motion::Forward(1),
            is_move: false,
        })
    }

    fn close(name: Option<&str>) -> StatementFacts {
        facts(CursorOp::Close {
            name: name.map(str::to_string),
        })
    }

    fn routed(c: &mut Cursors, f: &StatementFacts, route: Route) -> Route {
        let mut r = route;
        c.route(f, &mut r, 0);
        r
    }

    #[test]
    fn statements_follow_their_cursor() {
        let mut c = Cursors::default();
        let cases: Vec<(StatementFacts, Route, Route)> = vec![
            (declare("a"), Route::Single(3), Route::Single(3)),
            (declare("b"), Route::Any, Route::Single(0)),
            (fetch("a"), Route::Any, Route::Single(3)),
            (fetch("b"), Route::Any, Route::Single(0)),
            (fetch("unknown"), Route::Any, Route::Any),
            (
                declare("a"),
                Route::Single(1),
                Route::Refuse("cursor \"a\" already exists".into()),
            ),
            (
                declare("m"),
                Route::Scatter(vec![0, 1]),
                Route::Scatter(vec![0, 1]),
            ),
            (close(Some("a")), Route::Any, Route::Single(3)),
            (fetch("a"), Route::Any, Route::Any),
            (close(Some("b")), Route::Any, Route::Single(0)),
            (close(None), Route::Any, Route::Any),
        ];
        for (f, route, want) in cases {
            assert_eq!(routed(&mut c, &f, route), want, "{:?}", f.cursor);
        }
    }

    #[test]
    fn proxy_cursors_are_served_by_the_proxy() {
        let mut c = Cursors::default();
        let scatter = Route::Scatter(vec![0, 1]);
        assert!(c.serves(&declare("m"), &scatter));
        assert!(!c.serves(&declare("m"), &Route::Single(1)));
        assert!(c.declare("m", Place::Proxy(rows(2))));
        assert!(c.serves(&fetch("m"), &Route::Any));
        assert!(c.serves(&close(Some("m")), &Route::Any));
        assert!(c.serves(&close(None), &Route::Any));
        assert!(!c.serves(&fetch("x"), &Route::Any));
        assert!(c.served("m").is_some());
        c.declare("s", Place::Shard(2));
        assert!(!c.serves(&close(None), &Route::Any));
        assert_eq!(
            routed(&mut c, &close(None), Route::Any),
            Route::Refuse(
                "CLOSE ALL with cursors on several shards is not supported; close each cursor by name"
                    .into()
            )
        );
        assert!(c.close("m"));
        assert!(!c.close("m"));
        assert_eq!(routed(&mut c, &close(None), Route::Any), Route::Single(2));
        assert!(!c.exists("s"));
    }

    #[test]
    fn rollback_to_closes_cursors_declared_after_the_savepoint() {
        let sp = |s: &str| s.to_string();
        let mut c = Cursors::default();
        c.declare("before", Place::Shard(1));
        c.savepoint(&SavepointOp::Define(sp("a")));
        c.declare("after_a", Place::Shard(1));
        c.savepoint(&SavepointOp::Define(sp("b")));
        c.declare("after_b", Place::Proxy(rows(1)));
        c.savepoint(&SavepointOp::RollbackTo(sp("b")));
        assert!(c.exists("after_a") && !c.exists("after_b"));
        // The savepoint survives its rollback; a second one closes what came since.
        c.declare("again", Place::Shard(2));
        c.savepoint(&SavepointOp::RollbackTo(sp("b")));
        assert!(!c.exists("again"));
        c.savepoint(&SavepointOp::Release(sp("b")));
        c.savepoint(&SavepointOp::RollbackTo(sp("b")));
        assert!(c.exists("after_a"));
        c.savepoint(&SavepointOp::RollbackTo(sp("a")));
        assert!(c.exists("before") && !c.exists("after_a"));
        c.end_block(false);
        assert!(!c.exists("before"));
    }

    #[test]
    fn hold_cursors_outlive_a_committed_block_only() {
        // (declared WITH HOLD, block rolled back) → still open afterwards
        for (hold, rolled_back, open_after) in [
            (false, false, false),
            (false, true, false),
            (true, false, true),
            (true, true, false),
        ] {
            let mut c = Cursors::default();
            c.declare("c", Place::Shard(1));
            if hold {
                c.hold("c");
            }
            assert_eq!(c.any_held(), hold);
            c.end_block(rolled_back);
            assert_eq!(c.exists("c"), open_after, "{hold} {rolled_back}");
            // A later block's rollback keeps a cursor its own commit kept.
            c.end_block(true);
            assert_eq!(c.exists("c"), open_after, "{hold} {rolled_back}");
        }
        let mut c = Cursors::default();
        c.declare("a", Place::Shard(1));
        c.hold("a");
        c.declare("b", Place::Shard(2));
        c.hold("b");
        c.declare("m", Place::Proxy(rows(2)));
        c.hold("m");
        c.end_block(false);
        c.drop_served();
        // The server of shard 1 no longer has "a" (closed in a function, say).
        c.held_on_shard(1, &[]);
        c.held_on_shard(2, &["b".to_string()]);
        assert!(!c.exists("a") && c.exists("b") && c.served("m").is_some());
    }
}
