//! Recognises the statements a `[[lookups]]` column changes or can route (see
//! `config/lookups.rs`): a one-table SELECT whose WHERE pins the looked-up column (`= v`,
//! `IN (…)`), and the INSERTs and UPDATEs that give rows a value of it, with each value and its
//! row's shard key. Pure: it reads the parse tree of the statement's text, not the cached facts,
//! so the route cache stays as it is for every other statement.

use pg_query::protobuf::{self as pb, a_const::Val};
use pg_query::NodeEnum;

use super::facts::KeyValue;
use crate::router::names::split_config_name;

/// A value of the looked-up column or of the shard key, as the statement gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    /// A constant or `$n` (see [`KeyValue`]).
    Value(KeyValue),
    /// `NULL`: no lookup row (NULLs are never equal, so never looked up).
    Null,
}

/// One looked-up column as the recognisers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `(schema, table)` of the base table, lowercased.
    pub table: (String, String),
    pub column: String,
    /// The base table's shard key column.
    pub key: String,
}

impl Target {
    /// A target from the configured names.
    pub fn new(table: &str, column: &str, key: &str) -> Target {
        Target {
            table: split_config_name(table),
            column: column.to_lowercase(),
            key: key.to_lowercase(),
        }
    }

    fn names(&self, rv: &pb::RangeVar) -> bool {
        rv.relname == self.table.1 && (rv.schemaname.is_empty() || rv.schemaname == self.table.0)
    }
}

/// A read the lookup can route: the values of the column the WHERE clause pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub values: Vec<KeyValue>,
}

/// One lookup row a write must claim: `value` now belongs to the row with shard key `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub value: KeyValue,
    pub key: KeyValue,
}

fn strip_casts(mut n: &pb::Node) -> &pb::Node {
    while let Some(NodeEnum::TypeCast(tc)) = n.node.as_ref() {
        match tc.arg.as_deref() {
            Some(a) => n = a,
            None => break,
        }
    }
    n
}

/// A constant, `$n` or NULL; `None` for anything computed.
fn given(n: &pb::Node) -> Option<Given> {
    match strip_casts(n).node.as_ref()? {
        NodeEnum::ParamRef(p) => usize::try_from(p.number)
            .ok()
            .filter(|&n| n > 0)
            .map(|n| Given::Value(KeyValue::Param(n))),
        NodeEnum::AConst(c) if c.isnull => Some(Given::Null),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            Val::Sval(s) => Some(Given::Value(KeyValue::Text(s.sval.clone()))),
            Val::Ival(i) => Some(Given::Value(KeyValue::Const(i64::from(i.ival)))),
            Val::Fval(f) => f
                .fval
                .trim()
                .parse()
                .ok()
                .map(|v| Given::Value(KeyValue::Const(v))),
            _ => None,
        },
        _ => None,
    }
}

fn value_of(n: &pb::Node) -> Option<KeyValue> {
    match given(n)? {
        Given::Value(v) => Some(v),
        Given::Null => None,
    }
}

/// True when `n` is a reference to `column` (bare or qualified).
fn is_column(n: &pb::Node, column: &str) -> bool {
    match strip_casts(n).node.as_ref() {
        Some(NodeEnum::ColumnRef(c)) => matches!(
            c.fields.last().and_then(|f| f.node.as_ref()),
            Some(NodeEnum::String(s)) if s.sval == column
        ),
        _ => false,
    }
}

fn op_is(e: &pb::AExpr, op: &str) -> bool {
    match e.name.as_slice() {
        [n] | [_, n] => matches!(n.node.as_ref(), Some(NodeEnum::String(s)) if s.sval == op),
        _ => false,
    }
}

fn conjuncts<'n>(n: &'n pb::Node, out: &mut Vec<&'n pb::Node>) {
    match n.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
            for a in &b.args {
                conjuncts(a, out);
            }
        }
        Some(_) => out.push(n),
        None => {}
    }
}

/// The values a top-level conjunct of `filter` pins `column` to (`= v`, `v = column`,
/// `IN (v, …)`).
fn pinned(filter: &pb::Node, column: &str) -> Option<Vec<KeyValue>> {
    let mut parts = Vec::new();
    conjuncts(filter, &mut parts);
    parts.into_iter().find_map(|c| {
        let NodeEnum::AExpr(e) = c.node.as_ref()? else {
            return None;
        };
        let (l, r) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
        if e.kind == pb::AExprKind::AexprOp as i32 && op_is(e, "=") {
            if is_column(l, column) {
                return value_of(r).map(|v| vec![v]);
            }
            if is_column(r, column) {
                return value_of(l).map(|v| vec![v]);
            }
            None
        } else if e.kind == pb::AExprKind::AexprIn as i32 && op_is(e, "=") && is_column(l, column) {
            let NodeEnum::List(list) = r.node.as_ref()? else {
                return None;
            };
            list.items.iter().map(value_of).collect()
        } else {
            None
        }
    })
}

/// The first statement of `sql`, parsed; `None` unless the text is exactly one statement.
fn only_statement(sql: &str) -> Option<(pg_query::ParseResult, NodeEnum)> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let stmt = raw.stmt.as_ref()?.node.clone()?;
    Some((parsed, stmt))
}

/// The read `sql` is, when the lookup of `target` can route it: one SELECT of the base table
/// alone (no other table, no subquery over one, no CTE, no set operation) whose WHERE pins the
/// column.
pub fn read(sql: &str, target: &Target) -> Option<Read> {
    let (parsed, stmt) = only_statement(sql)?;
    if parsed.tables().len() != 1 {
        return None;
    }
    let NodeEnum::SelectStmt(s) = stmt else {
        return None;
    };
    if s.op != pb::SetOperation::SetopNone as i32 || s.with_clause.is_some() {
        return None;
    }
    let [from] = s.from_clause.as_slice() else {
        return None;
    };
    match from.node.as_ref()? {
        NodeEnum::RangeVar(rv) if target.names(rv) && rv.inh => {}
        _ => return None,
    }
    let values = pinned(s.where_clause.as_deref()?, &target.column)?;
    (!values.is_empty()).then_some(Read { values })
}

/// What the writes of `sql` (every statement of the string) claim in the lookup of `target`:
/// `Ok(claims)` (empty when they do not touch the column), or `Err` naming what pgshard cannot
/// keep the lookup right for.
pub fn claims(sql: &str, target: &Target) -> Result<Vec<Claim>, String> {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        // The shard reports the syntax error.
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(stmt) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        statement_claims(stmt, target, &mut out)?;
    }
    Ok(out)
}

fn refusal(target: &Target, what: &str) -> String {
    format!(
        "{what} (pgshard keeps the lookup of {}.{} and needs each row's {} and {} as constants or parameters)",
        target.table.1, target.column, target.column, target.key
    )
}

fn statement_claims(stmt: &NodeEnum, t: &Target, out: &mut Vec<Claim>) -> Result<(), String> {
    let names = |rv: &Option<pb::RangeVar>| rv.as_ref().is_some_and(|rv| t.names(rv));
    match stmt {
        NodeEnum::InsertStmt(i) if names(&i.relation) => insert_claims(i, t, out),
        NodeEnum::UpdateStmt(u) if names(&u.relation) => update_claims(u, t, out),
        NodeEnum::CopyStmt(c) if c.is_from && names(&c.relation) => {
            let listed = c.attlist.is_empty()
                || c.attlist.iter().any(
                    |a| matches!(a.node.as_ref(), Some(NodeEnum::String(s)) if s.sval == t.column),
                );
            if listed {
                Err(refusal(t, "COPY FROM into a table with a lookup column"))
            } else {
                Ok(())
            }
        }
        NodeEnum::MergeStmt(m) if names(&m.relation) => {
            Err(refusal(t, "MERGE into a table with a lookup column"))
        }
        _ => Ok(()),
    }
}

fn target_name(n: &pb::Node) -> Option<&str> {
    match n.node.as_ref()? {
        NodeEnum::ResTarget(r) if r.indirection.is_empty() => Some(r.name.as_str()),
        _ => None,
    }
}

fn insert_claims(i: &pb::InsertStmt, t: &Target, out: &mut Vec<Claim>) -> Result<(), String> {
    if i.cols.is_empty() {
        return Err(refusal(t, "an INSERT without a column list"));
    }
    let col = |name: &str| i.cols.iter().position(|c| target_name(c) == Some(name));
    let Some(value_at) = col(&t.column) else {
        return Ok(());
    };
    let Some(key_at) = col(&t.key) else {
        return Err(refusal(
            t,
            &format!("an INSERT that leaves {} to pgshard", t.key),
        ));
    };
    if i.on_conflict_clause.is_some() {
        return Err(refusal(t, "INSERT … ON CONFLICT"));
    }
    let rows = match i.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::SelectStmt(s)) if !s.values_lists.is_empty() && s.with_clause.is_none() => {
            &s.values_lists
        }
        _ => return Err(refusal(t, "an INSERT whose rows are not a VALUES list")),
    };
    for row in rows {
        let Some(NodeEnum::List(items)) = row.node.as_ref() else {
            return Err(refusal(t, "an INSERT whose rows are not a VALUES list"));
        };
        let cell = |at: usize| items.items.get(at).and_then(given);
        match (cell(value_at), cell(key_at)) {
            (Some(Given::Null), _) => {}
            (Some(Given::Value(value)), Some(Given::Value(key))) => out.push(Claim { value, key }),
            _ => return Err(refusal(t, "an INSERT whose values are computed")),
        }
    }
    Ok(())
}

fn update_claims(u: &pb::UpdateStmt, t: &Target, out: &mut Vec<Claim>) -> Result<(), String> {
    let set = u.target_list.iter().find_map(|n| match n.node.as_ref() {
        Some(NodeEnum::ResTarget(r)) if r.name == t.column => Some(r),
        _ => None,
    });
    let Some(set) = set else {
        return Ok(());
    };
    if !u.from_clause.is_empty() || u.with_clause.is_some() || !set.indirection.is_empty() {
        return Err(refusal(
            t,
            "an UPDATE of the lookup column with FROM or WITH",
        ));
    }
    let value = match set.val.as_deref().and_then(given) {
        Some(Given::Null) => return Ok(()),
        Some(Given::Value(v)) => v,
        None => {
            return Err(refusal(
                t,
                "an UPDATE that computes the new value of the lookup column",
            ))
        }
    };
    let keys = u
        .where_clause
        .as_deref()
        .and_then(|w| pinned(w, &t.key))
        .unwrap_or_default();
    match keys.as_slice() {
        [key] => {
            out.push(Claim {
                value,
                key: key.clone(),
            });
            Ok(())
        }
        _ => Err(refusal(
            t,
            &format!(
                "an UPDATE of the lookup column whose WHERE does not name one {}",
                t.key
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Target {
        Target::new("users", "email", "user_id")
    }

    fn text(s: &str) -> KeyValue {
        KeyValue::Text(s.into())
    }

    #[test]
    fn reads_the_lookup_can_route() {
        let t = users();
        let r = |sql: &str| read(sql, &t).map(|r| r.values);
        assert_eq!(
            r("SELECT * FROM users WHERE email = 'a@x'"),
            Some(vec![text("a@x")])
        );
        assert_eq!(
            r("SELECT name FROM public.users u WHERE u.email = $1 AND name <> ''"),
            Some(vec![KeyValue::Param(1)])
        );
        assert_eq!(
            r("SELECT 1 FROM users WHERE $2::text = email"),
            Some(vec![KeyValue::Param(2)])
        );
        assert_eq!(
            r("SELECT * FROM users WHERE email IN ('a', 'b')"),
            Some(vec![text("a"), text("b")])
        );
        for sql in [
            "SELECT * FROM users WHERE email = 'a' OR name = 'b'",
            "SELECT * FROM users WHERE lower(email) = 'a'",
            "SELECT * FROM users WHERE email = 'a' AND user_id IN (SELECT user_id FROM orders)",
            "SELECT * FROM users u JOIN orders o USING (user_id) WHERE email = 'a'",
            "SELECT * FROM users WHERE email = 'a' UNION SELECT * FROM users",
            "SELECT * FROM ONLY users WHERE email = 'a'",
            "SELECT * FROM other.users WHERE email = 'a'",
            "SELECT * FROM users WHERE email = 'a'; SELECT 1",
            "SELECT * FROM users WHERE email LIKE 'a%'",
            "SELECT * FROM users WHERE email = NULL",
        ] {
            assert_eq!(r(sql), None, "{sql}");
        }
    }

    #[test]
    fn claims_of_writes() {
        let t = users();
        let c = |sql: &str| claims(sql, &t);
        assert_eq!(
            c("INSERT INTO users (user_id, email) VALUES (1, 'a'), (2, NULL), ($1, $2)"),
            Ok(vec![
                Claim {
                    value: text("a"),
                    key: KeyValue::Const(1)
                },
                Claim {
                    value: KeyValue::Param(2),
                    key: KeyValue::Param(1)
                },
            ])
        );
        assert_eq!(
            c("INSERT INTO users (user_id, name) VALUES (1, 'x')"),
            Ok(vec![])
        );
        assert_eq!(
            c("UPDATE users SET email = 'b' WHERE user_id = 7"),
            Ok(vec![Claim {
                value: text("b"),
                key: KeyValue::Const(7)
            }])
        );
        assert_eq!(
            c("UPDATE users SET name = 'b' WHERE email = 'a'"),
            Ok(vec![])
        );
        assert_eq!(c("DELETE FROM users WHERE email = 'a'"), Ok(vec![]));
        assert_eq!(c("COPY users (user_id, name) FROM STDIN"), Ok(vec![]));
        for sql in [
            "INSERT INTO users VALUES (1, 'a')",
            "INSERT INTO users (email) VALUES ('a')",
            "INSERT INTO users (user_id, email) VALUES (1, lower('A'))",
            "INSERT INTO users (user_id, email) SELECT 1, 'a'",
            "INSERT INTO users (user_id, email) VALUES (1, 'a') ON CONFLICT DO NOTHING",
            "UPDATE users SET email = 'b' WHERE name = 'x'",
            "UPDATE users SET email = 'b' WHERE user_id IN (1, 2)",
            "UPDATE users SET email = lower(email) WHERE user_id = 1",
            "COPY users FROM STDIN",
            "MERGE INTO users u USING other o ON u.user_id = o.id WHEN MATCHED THEN DELETE",
        ] {
            assert!(c(sql).is_err(), "{sql}");
        }
    }
}
