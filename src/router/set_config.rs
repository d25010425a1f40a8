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

/// What a statement's `set_config` calls do to the session: `Ok((name, SQL value))` for the one
/// session-level call of a `SELECT set_config('name', 'value', false)`; `Err` names a call the
/// proxy cannot follow; `None` when the statement makes no session-level call.
pub fn session_setting(stmt: &NodeEnum) -> Option<Result<(String, String), String>> {
    let calls = calls_in(stmt);
    let mut session = Vec::new();
    for call in &calls {
        match read_call(call) {
            Call::Local => {}
            Call::LocalSearchPath => return Some(Err(LOCAL_SEARCH_PATH.into())),
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

/// One argument of a `set_config` call whose value comes with the Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A constant (`'TimeZone'`, `false`), as text.
    Const(String),
    /// `$n`, possibly inside a cast.
    Param(usize),
}

/// `SELECT set_config(name, value, is_local)` alone, with `$n` among its arguments (psycopg 3
/// with server-side binding: `SELECT set_config('TimeZone', $1, false)`): what to read from the
/// Bind to know the setting it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundCall {
    pub name: Arg,
    pub value: Arg,
    pub is_local: Arg,
}

/// The [`BoundCall`] of a statement whose only `set_config` call takes parameters; `None` for
/// any other statement.
pub fn bound_call(stmt: &NodeEnum) -> Option<BoundCall> {
    let calls = calls_in(stmt);
    let [args] = calls.as_slice() else {
        return None;
    };
    let [name, value, is_local] = args.as_slice() else {
        return None;
    };
    if !is_plain_select(stmt) {
        return None;
    }
    let arg = |n: &pb::Node| -> Option<Arg> {
        if let Some(p) = param_of(n) {
            return Some(Arg::Param(p));
        }
        match constant(n)? {
            Val::Sval(s) => Some(Arg::Const(s.sval.clone())),
            Val::Boolval(b) => Some(Arg::Const(b.boolval.to_string())),
            _ => None,
        }
    };
    let call = BoundCall {
        name: arg(name)?,
        value: arg(value)?,
        is_local: arg(is_local)?,
    };
    [&call.name, &call.value, &call.is_local]
        .iter()
        .any(|a| matches!(a, Arg::Param(_)))
        .then_some(call)
}

/// `$n`, through casts.
fn param_of(n: &pb::Node) -> Option<usize> {
    match n.node.as_ref()? {
        NodeEnum::ParamRef(p) => usize::try_from(p.number).ok().filter(|n| *n > 0),
        NodeEnum::TypeCast(t) => param_of(t.arg.as_deref()?),
        _ => None,
    }
}

/// The setting a [`BoundCall`] makes with these Bind values: `Ok(Some((name, SQL value)))` for a
/// session-level call, `Ok(None)` for a transaction-local one; `Err` names what cannot be read.
pub fn resolve(
    call: &BoundCall,
    params: &dyn super::params::ParamSource,
) -> Result<Option<(String, String)>, String> {
    let read = |a: &Arg, what: &str| -> Result<String, String> {
        match a {
            Arg::Const(c) => Ok(c.clone()),
            Arg::Param(n) => {
                let raw = params
                    .raw(*n)
                    .ok_or_else(|| format!("set_config() {what} ${n} has no value in the Bind"))?;
                let bytes = raw
                    .value
                    .ok_or_else(|| format!("set_config() with a NULL {what} (${n})"))?;
                let declared = params.declared_type(*n);
                // Binary text-like values are their UTF-8 bytes; a binary bool is one byte.
                if raw.binary && what == "is_local" && bytes.len() == 1 {
                    return Ok((bytes[0] != 0).to_string());
                }
                if raw.binary && !matches!(declared, 0 | 19 | 25 | 1042 | 1043) {
                    return Err(format!(
                        "set_config() {what} ${n} sent in binary as type {declared}"
                    ));
                }
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| format!("set_config() {what} ${n} is not UTF-8"))
            }
        }
    };
    let is_local = read(&call.is_local, "is_local")?;
    let name = read(&call.name, "name")?.to_lowercase();
    match is_local.to_lowercase().as_str() {
        "t" | "true" | "on" | "yes" | "1" if name == SEARCH_PATH => {
            return Err(LOCAL_SEARCH_PATH.into())
        }
        "t" | "true" | "on" | "yes" | "1" => return Ok(None),
        "f" | "false" | "off" | "no" | "0" => {}
        other => return Err(format!("set_config() is_local {other:?} is not a boolean")),
    }
    let value = read(&call.value, "value")?;
    let sql = super::names::string_setting_sql(&name, &value);
    Ok(Some((name, sql)))
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

const SEARCH_PATH: &str = "search_path";

/// Why a transaction-local `set_config` of the search_path is refused.
pub const LOCAL_SEARCH_PATH: &str =
    "set_config('search_path', …, true) (use SET LOCAL search_path, which pgshard follows)";

enum Call {
    /// `is_local` is the constant true: the setting ends with the transaction.
    Local,
    /// The same for the search_path, which decides what table names mean: not followed.
    LocalSearchPath,
    Session(String, String),
    Unknown,
}

fn read_call(args: &[pb::Node]) -> Call {
    let [name, value, local] = args else {
        return Call::Unknown;
    };
    let local_call = || match constant(name) {
        Some(Val::Sval(n)) if n.sval.eq_ignore_ascii_case(SEARCH_PATH) => Call::LocalSearchPath,
        _ => Call::Local,
    };
    match constant(local) {
        Some(Val::Boolval(b)) if b.boolval => return local_call(),
        Some(Val::Boolval(_)) => {}
        Some(Val::Sval(s)) if matches!(s.sval.to_lowercase().as_str(), "t" | "true" | "on") => {
            return local_call()
        }
        Some(Val::Sval(s)) if matches!(s.sval.to_lowercase().as_str(), "f" | "false" | "off") => {}
        _ => return Call::Unknown,
    }
    match (constant(name), constant(value)) {
        (Some(Val::Sval(n)), Some(Val::Sval(v))) => {
            let name = n.sval.to_lowercase();
            let sql = super::names::string_setting_sql(&name, &v.sval);
            Call::Session(name, sql)
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
                && s.target_list.iter().filter(|t| !is_setting_read(t)).count() == 1
        }
        _ => false,
    }
}

/// A select-list item that only reads: a constant, or `current_setting('name')` (asyncpg reads
/// `jit` beside the `set_config('jit', 'off', false)` it sends before introspecting types).
fn is_setting_read(target: &pb::Node) -> bool {
    fn reads(n: &pb::Node) -> bool {
        match n.node.as_ref() {
            Some(NodeEnum::AConst(_)) => true,
            Some(NodeEnum::TypeCast(c)) => c.arg.as_deref().is_some_and(reads),
            Some(NodeEnum::FuncCall(f)) => {
                matches!(
                    name_parts(f).as_slice(),
                    ["current_setting"] | ["pg_catalog", "current_setting"]
                ) && f
                    .args
                    .iter()
                    .all(|a| matches!(a.node, Some(NodeEnum::AConst(_))))
            }
            _ => false,
        }
    }
    match target.node.as_ref() {
        Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref().is_some_and(reads),
        _ => false,
    }
}

/// A function's name as written, one string per part (`pg_catalog`, `set_config`).
pub(crate) fn name_parts(f: &pb::FuncCall) -> Vec<&str> {
    f.funcname
        .iter()
        .filter_map(|p| match p.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The argument lists of every call of `set_config` / `pg_catalog.set_config` in the statement.
fn calls_in(stmt: &NodeEnum) -> Vec<Vec<pb::Node>> {
    let mut out = Vec::new();
    for (node, _depth, _context, _) in stmt.nodes() {
        if let pg_query::NodeRef::FuncCall(f) = node {
            if matches!(
                name_parts(f).as_slice(),
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
    use crate::router::params::BindParams;
    use bytes::Bytes;

    fn call(sql: &str) -> Option<BoundCall> {
        let parsed = pg_query::parse(sql, 0).expect("parses");
        let stmt = parsed.protobuf.stmts[0]
            .stmt
            .as_ref()
            .and_then(|n| n.node.clone())
            .expect("a statement");
        bound_call(&stmt)
    }

    #[test]
    fn reads_set_config_calls_bound_to_parameters() {
        let django = call("SELECT set_config('TimeZone', $1, false)").expect("bound");
        assert_eq!(
            django,
            BoundCall {
                name: Arg::Const("TimeZone".into()),
                value: Arg::Param(1),
                is_local: Arg::Const("false".into()),
            }
        );
        let values = [Some(Bytes::from_static(b"Europe/Paris"))];
        for formats in [&[][..], &[1][..]] {
            let p = BindParams {
                values: &values,
                formats,
                types: &[],
            };
            assert_eq!(
                resolve(&django, &p),
                Ok(Some(("timezone".into(), "'Europe/Paris'".into())))
            );
        }
        let all = call("select pg_catalog.set_config($1::text, $2::text, $3::boolean)").unwrap();
        let values = [
            Some(Bytes::from_static(b"app.who")),
            Some(Bytes::from_static(b"o'brien")),
            Some(Bytes::from_static(&[0])),
        ];
        let p = BindParams {
            values: &values,
            formats: &[0, 0, 1],
            types: &[],
        };
        assert_eq!(
            resolve(&all, &p),
            Ok(Some(("app.who".into(), "'o''brien'".into())))
        );
        let local = [
            Some(Bytes::from_static(b"app.who")),
            Some(Bytes::from_static(b"x")),
            Some(Bytes::from_static(b"true")),
        ];
        let p = BindParams {
            values: &local,
            formats: &[],
            types: &[],
        };
        assert_eq!(resolve(&all, &p), Ok(None));
        let null = [None];
        let p = BindParams {
            values: &null,
            formats: &[],
            types: &[],
        };
        assert!(resolve(&django, &p).is_err());
        let int4 = [Some(Bytes::from_static(&[0, 0, 0, 5]))];
        let p = BindParams {
            values: &int4,
            formats: &[1],
            types: &[23],
        };
        assert!(resolve(&django, &p).is_err());
        for sql in [
            "SELECT set_config('a', 'b', false)",
            "SELECT set_config('a', $1, false) FROM t",
            "SELECT set_config('a', $1, false), now()",
            "SELECT set_config('a', upper($1), false)",
            "SELECT set_config('a', $1)",
        ] {
            assert_eq!(call(sql), None, "{sql}");
        }
    }

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
            // asyncpg, before introspecting types.
            (
                "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new",
                ok("jit", "'off'"),
            ),
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
            "SELECT now(), set_config('a', 'b', false)",
            "SELECT current_setting(x), set_config('a', 'b', false)",
            "SELECT set_config('a', NULL, false)",
            "SELECT set_config('a', 'b')",
        ] {
            assert!(matches!(setting(sql), Some(Err(_))), "{sql}");
        }
    }
}
