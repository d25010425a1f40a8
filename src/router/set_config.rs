//! `SELECT set_config(name, value, false)` changes a session setting as `SET name = value` does
//! (Django with psycopg 3 sets its time zone this way). Under transaction pooling the proxy must
//! know it, to replay it on the client's next server connection and undo it before the
//! connection serves another client: the call is read here into the setting it makes, or into
//! the reason it cannot be followed (arguments only known when it runs).

use std::borrow::Cow;

use pg_query::protobuf::a_const::Val;
use pg_query::protobuf::{self as pb};
use pg_query::NodeEnum;

use super::facts::{StatementFacts, StatementKind};
use crate::sql_text::quote_literal;

/// What a statement's `set_config` calls do to the session: `Ok((name, SQL value))` for the one
/// session-level call of a `SELECT set_config('name', 'value', false)`; `Err` names a call the
/// proxy cannot follow; `None` when the statement makes no session-level call.
pub fn session_setting(stmt: &NodeEnum) -> Option<Result<(String, String), String>> {
    let calls = calls_in(stmt);
    let mut session = Vec::new();
    for call in &calls {
        match read_call(call) {
            Call::Local => {}
            Call::Session(name, value) => session.push((name, value)),
            Call::Unknown => return Some(Err(
                "set_config() whose arguments are not constants (a setting pgshard cannot replay)"
                    .into(),
            )),
        }
    }
    match session.as_slice() {
        [] => None,
        [one] if calls.len() == 1 && is_plain_select(stmt) => Some(Ok(one.clone())),
        _ => Some(Err(
            "set_config(…, false) other than alone in SELECT set_config('name', 'value', false)"
                .into(),
        )),
    }
}

/// The kind the session's settings bookkeeping sees: a tracked `set_config` counts as its SET.
pub fn as_set(f: &StatementFacts) -> Cow<'_, StatementKind> {
    match &f.set_config {
        Some(Ok((name, value))) => Cow::Owned(StatementKind::Set {
            name: name.clone(),
            value: Some(value.clone()),
        }),
        _ => Cow::Borrowed(&f.kind),
    }
}

enum Call {
    /// `is_local` is the constant true: the setting ends with the transaction.
    Local,
    Session(String, String),
    Unknown,
}

fn read_call(args: &[pb::Node]) -> Call {
    let [name, value, local] = args else {
        return Call::Unknown;
    };
    match constant(local) {
        Some(Val::Boolval(b)) if b.boolval => return Call::Local,
        Some(Val::Boolval(_)) => {}
        Some(Val::Sval(s)) if matches!(s.sval.to_lowercase().as_str(), "t" | "true" | "on") => {
            return Call::Local
        }
        Some(Val::Sval(s)) if matches!(s.sval.to_lowercase().as_str(), "f" | "false" | "off") => {}
        _ => return Call::Unknown,
    }
    match (constant(name), constant(value)) {
        (Some(Val::Sval(n)), Some(Val::Sval(v))) => {
            Call::Session(n.sval.to_lowercase(), quote_literal(&v.sval))
        }
        _ => Call::Unknown,
    }
}

/// A constant argument, through a cast (`'UTC'::text`).
fn constant(n: &pb::Node) -> Option<&Val> {
    match n.node.as_ref()? {
        NodeEnum::AConst(c) if !c.isnull => c.val.as_ref(),
        NodeEnum::TypeCast(t) => constant(t.arg.as_deref()?),
        _ => None,
    }
}

/// `SELECT …` with no FROM, WHERE or set operation: the call runs exactly once.
fn is_plain_select(stmt: &NodeEnum) -> bool {
    match stmt {
        NodeEnum::SelectStmt(s) => {
            s.from_clause.is_empty()
                && s.where_clause.is_none()
                && s.larg.is_none()
                && s.with_clause.is_none()
                && s.target_list.len() == 1
        }
        _ => false,
    }
}

/// The argument lists of every call of `set_config` / `pg_catalog.set_config` in the statement.
fn calls_in(stmt: &NodeEnum) -> Vec<Vec<pb::Node>> {
    let mut out = Vec::new();
    for (node, _depth, _context, _) in stmt.nodes() {
        if let pg_query::NodeRef::FuncCall(f) = node {
            let name: Vec<&str> = f
                .funcname
                .iter()
                .filter_map(|p| match p.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            if matches!(
                name.as_slice(),
                ["set_config"] | ["pg_catalog", "set_config"]
            ) {
                out.push(f.args.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(sql: &str) -> Option<Result<(String, String), String>> {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.clone())
            .expect("a statement");
        session_setting(&stmt)
    }

    #[test]
    fn reads_session_level_set_config_calls() {
        let ok = |n: &str, v: &str| Some(Ok((n.to_string(), v.to_string())));
        for (sql, want) in [
            (
                "SELECT set_config('TimeZone', 'UTC', false)",
                ok("timezone", "'UTC'"),
            ),
            (
                "select pg_catalog.set_config('app.user', 'o''brien'::text, 'f')",
                ok("app.user", "'o''brien'"),
            ),
            ("SELECT set_config('app.user', 'x', true)", None),
            ("SELECT 1", None),
            ("SELECT upper('set_config')", None),
        ] {
            assert_eq!(setting(sql), want, "{sql}");
        }
        for sql in [
            "SELECT set_config($1, $2, false)",
            "SELECT set_config('a', 'b', $1)",
            "SELECT set_config('a', b, false) FROM t",
            "SELECT set_config('a', 'b', false) FROM t",
            "SELECT set_config('a', 'b', false), set_config('c', 'd', false)",
            "SELECT set_config('a', NULL, false)",
            "SELECT set_config('a', 'b')",
        ] {
            assert!(matches!(setting(sql), Some(Err(_))), "{sql}");
        }
    }
}
