//! Cursor statements (DECLARE, FETCH, MOVE, CLOSE) as the session needs them: which cursor, and
//! how far a FETCH or MOVE goes. Pure: parsed from `pg_query` nodes and the statement text.

use pg_query::protobuf::{self as pb, FetchDirection, Token};

/// `CURSOR_OPT_*` bits of `DeclareCursorStmt.options` (PostgreSQL's parsenodes.h).
const OPT_BINARY: i32 = 0x0001;
const OPT_SCROLL: i32 = 0x0002;
const OPT_HOLD: i32 = 0x0020;

/// A statement that opens, reads or closes a cursor, so the session can keep it where the
/// cursor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorOp {
    Declare(Declare),
    /// FETCH (`is_move` false) or MOVE.
    Fetch {
        name: String,
        motion: Motion,
        is_move: bool,
    },
    /// CLOSE name; `None` for CLOSE ALL.
    Close {
        name: Option<String>,
    },
}

/// `DECLARE name [BINARY] [SCROLL] CURSOR [WITH HOLD] FOR query`: what a proxy-served cursor
/// must refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declare {
    pub name: String,
    pub binary: bool,
    pub scroll: bool,
    pub hold: bool,
}

/// How far a FETCH or MOVE goes, as far as a forward-only cursor can serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Motion {
    /// FETCH n, NEXT, FORWARD n; `0` (FORWARD 0, RELATIVE 0) re-reads the current row.
    Forward(u64),
    /// FETCH ALL, FORWARD ALL.
    All,
    /// A motion only a scrollable cursor serves: names it for the refusal.
    Backward(&'static str),
}

/// `FETCH_ALL` in PostgreSQL: LONG_MAX.
const FETCH_ALL: i64 = i64::MAX;

/// The cursor operation of a DECLARE, FETCH/MOVE or CLOSE statement.
pub fn cursor_op(stmt: &pg_query::NodeEnum) -> Option<CursorOp> {
    use pg_query::NodeEnum as N;
    match stmt {
        N::DeclareCursorStmt(d) => Some(CursorOp::Declare(Declare {
            name: d.portalname.clone(),
            binary: d.options & OPT_BINARY != 0,
            scroll: d.options & OPT_SCROLL != 0,
            hold: d.options & OPT_HOLD != 0,
        })),
        N::FetchStmt(f) => Some(CursorOp::Fetch {
            name: f.portalname.clone(),
            motion: motion(f),
            is_move: f.ismove,
        }),
        N::ClosePortalStmt(c) => Some(CursorOp::Close {
            name: (!c.portalname.is_empty()).then(|| c.portalname.clone()),
        }),
        _ => None,
    }
}

fn motion(f: &pb::FetchStmt) -> Motion {
    match FetchDirection::try_from(f.direction) {
        Ok(FetchDirection::FetchForward) if f.how_many == FETCH_ALL => Motion::All,
        Ok(FetchDirection::FetchForward) => match u64::try_from(f.how_many) {
            Ok(n) => Motion::Forward(n),
            Err(_) => Motion::Backward("a negative count (backward)"),
        },
        Ok(FetchDirection::FetchRelative) if f.how_many == 0 => Motion::Forward(0),
        Ok(FetchDirection::FetchRelative) => Motion::Backward("RELATIVE"),
        Ok(FetchDirection::FetchBackward) => Motion::Backward("BACKWARD or PRIOR"),
        Ok(FetchDirection::FetchAbsolute) => Motion::Backward("ABSOLUTE, FIRST or LAST"),
        _ => Motion::Backward("this direction"),
    }
}

/// The query of `DECLARE … CURSOR … FOR query`: the text after the FOR that follows CURSOR.
/// `None` when `sql` is not one DECLARE.
pub fn declared_query(sql: &str) -> Option<&str> {
    let scan = pg_query::scan(sql).ok()?;
    let mut tokens = scan.tokens.iter();
    tokens.by_ref().find(|t| t.token == Token::Cursor as i32)?;
    let for_token = tokens.find(|t| t.token == Token::For as i32)?;
    let start = usize::try_from(for_token.end).ok()?;
    let query = sql.get(start..)?.trim();
    let query = query.trim_end_matches(';').trim_end();
    (!query.is_empty()).then_some(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(sql: &str) -> Option<CursorOp> {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
            .expect("one statement")
            .clone();
        cursor_op(&stmt)
    }

    fn fetch(name: &str, motion: Motion, is_move: bool) -> Option<CursorOp> {
        Some(CursorOp::Fetch {
            name: name.into(),
            motion,
            is_move,
        })
    }

    #[test]
    fn reads_cursor_statements() {
        let declare = |name: &str, binary, scroll, hold| {
            Some(CursorOp::Declare(Declare {
                name: name.into(),
                binary,
                scroll,
                hold,
            }))
        };
        let cases: Vec<(&str, Option<CursorOp>)> = vec![
            (
                "DECLARE c CURSOR FOR SELECT 1",
                declare("c", false, false, false),
            ),
            (
                "declare \"Big\" binary scroll cursor with hold for select 1",
                declare("Big", true, true, true),
            ),
            (
                "DECLARE c NO SCROLL CURSOR FOR SELECT 1",
                declare("c", false, false, false),
            ),
            ("FETCH 5 FROM c", fetch("c", Motion::Forward(5), false)),
            ("FETCH NEXT c", fetch("c", Motion::Forward(1), false)),
            ("FETCH c", fetch("c", Motion::Forward(1), false)),
            ("FETCH ALL IN c", fetch("c", Motion::All, false)),
            (
                "FETCH FORWARD 7 FROM c",
                fetch("c", Motion::Forward(7), false),
            ),
            ("FETCH FORWARD ALL FROM c", fetch("c", Motion::All, false)),
            (
                "FETCH FORWARD 0 FROM c",
                fetch("c", Motion::Forward(0), false),
            ),
            (
                "FETCH RELATIVE 0 FROM c",
                fetch("c", Motion::Forward(0), false),
            ),
            ("MOVE 3 IN c", fetch("c", Motion::Forward(3), true)),
            ("MOVE FORWARD ALL FROM c", fetch("c", Motion::All, true)),
            (
                "FETCH PRIOR FROM c",
                fetch("c", Motion::Backward("BACKWARD or PRIOR"), false),
            ),
            (
                "FETCH BACKWARD 2 FROM c",
                fetch("c", Motion::Backward("BACKWARD or PRIOR"), false),
            ),
            (
                "FETCH -1 FROM c",
                fetch("c", Motion::Backward("a negative count (backward)"), false),
            ),
            (
                "FETCH ABSOLUTE 3 FROM c",
                fetch("c", Motion::Backward("ABSOLUTE, FIRST or LAST"), false),
            ),
            (
                "FETCH LAST FROM c",
                fetch("c", Motion::Backward("ABSOLUTE, FIRST or LAST"), false),
            ),
            (
                "MOVE RELATIVE 2 FROM c",
                fetch("c", Motion::Backward("RELATIVE"), true),
            ),
            (
                "CLOSE c",
                Some(CursorOp::Close {
                    name: Some("c".into()),
                }),
            ),
            ("CLOSE ALL", Some(CursorOp::Close { name: None })),
            ("SELECT 1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(op(sql), want, "{sql}");
        }
    }

    #[test]
    fn finds_the_declared_query() {
        let cases = [
            (
                "DECLARE c CURSOR FOR SELECT * FROM users ORDER BY user_id",
                Some("SELECT * FROM users ORDER BY user_id"),
            ),
            (
                "declare \"for\" no scroll cursor without hold for select 'for' ;",
                Some("select 'for'"),
            ),
            (
                "DECLARE c CURSOR WITH HOLD FOR\n  VALUES (1)",
                Some("VALUES (1)"),
            ),
            ("SELECT 1", None),
            ("DECLARE c CURSOR FOR", None),
        ];
        for (sql, want) in cases {
            assert_eq!(declared_query(sql), want, "{sql}");
        }
    }
}
