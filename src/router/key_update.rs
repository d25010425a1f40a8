//! An UPDATE that sets a table's shard key to one value: Django's `save()` writes every column
//! of the row, the shard key of a table sharded by a foreign key (a tenant id) among them, with
//! the value it already has (`UPDATE orders SET customer_id = $1, amount = $2 WHERE id = $3`).
//! When the WHERE clause already pins the key to that value (`… AND customer_id = $1`) no row
//! moves and the statement routes by it ([`keeps_key`]). Otherwise pgshard first counts, over
//! every shard, the rows the statement matches whose key is not that value ([`KeyGuard`]): none,
//! and the statement runs on the value's shard with the key pinned in its WHERE clause; some,
//! and it is refused (those rows would have to move to another shard). Pure: text in, texts out.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::set_op_branches::deparse as select_deparse;
use crate::sql_text::{deparse, quote_ident};

/// The count run first and the keyed statement it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGuard {
    /// `SELECT count(*) FROM t WHERE (<where>) AND t.key IS DISTINCT FROM <value>`.
    pub inner: String,
    /// The statement with `AND t.key = <value>` added to its WHERE clause.
    keyed: String,
    table: String,
    key: String,
}

/// Why a keyed UPDATE cannot run: rows it matches would move to another shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("UPDATE of shard key {table}.{key} would change the key of {rows} matching row(s) and move them to another shard, which is not supported")]
pub struct KeyMoves {
    pub table: String,
    pub key: String,
    pub rows: String,
}

impl KeyGuard {
    /// The statement to run once the count is in: `count` is the merged `count(*)`'s text.
    pub fn splice(&self, count: &str) -> Result<String, KeyMoves> {
        if count == "0" {
            return Ok(self.keyed.clone());
        }
        Err(KeyMoves {
            table: self.table.clone(),
            key: self.key.clone(),
            rows: count.to_string(),
        })
    }
}

/// The UPDATE `sql` setting `key` to a constant or parameter, without FROM or WITH: the count
/// to run first. None for anything else (which stays refused).
pub fn find(sql: &str, key: &str) -> Option<KeyGuard> {
    let parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let version = parsed.version;
    let [raw] = parsed.stmts.as_slice() else {
        return None;
    };
    let NodeEnum::UpdateStmt(u) = raw.stmt.as_deref()?.node.as_ref()? else {
        return None;
    };
    if u.with_clause.is_some() || !u.from_clause.is_empty() {
        return None;
    }
    let rel = u.relation.as_ref()?;
    let value = set_value(u, key)?;
    let value_text = expression_text(version, value)?;
    let qualifier = rel
        .alias
        .as_ref()
        .map_or(rel.relname.as_str(), |a| a.aliasname.as_str());
    let column = format!("{}.{}", quote_ident(qualifier), quote_ident(key));
    let relation_text = relation_text(version, rel)?;
    let matched = match &u.where_clause {
        Some(w) => format!("({}) AND ", expression_text(version, w)?),
        None => String::new(),
    };
    let inner = format!(
        "SELECT count(*) FROM {relation_text} WHERE {matched}{column} IS DISTINCT FROM {value_text}"
    );
    let keyed_where = where_node(&format!("{matched}{column} = {value_text}"))?;
    let unchanged = where_node(&quote_ident(key))?;
    let mut tree = parsed.clone();
    if let Some(NodeEnum::UpdateStmt(u)) = tree
        .stmts
        .first_mut()
        .and_then(|r| r.stmt.as_deref_mut())
        .and_then(|s| s.node.as_mut())
    {
        u.where_clause = Some(Box::new(keyed_where));
        // Every row it matches has the value already: the key is set to itself, which the
        // analysis knows moves nothing (a literal in the simple protocol is a parameter there).
        for target in &mut u.target_list {
            if let Some(NodeEnum::ResTarget(rt)) = target.node.as_mut() {
                if rt.name == key {
                    rt.val = Some(Box::new(unchanged.clone()));
                }
            }
        }
    }
    Some(KeyGuard {
        inner,
        keyed: deparse(tree)?,
        table: rel.relname.clone(),
        key: key.to_string(),
    })
}

/// True when the UPDATE `u` leaves every row's `key` as it is: it sets the key to itself
/// (`SET k = k`), or to the very value its WHERE clause pins the key to (`SET k = $1 … WHERE …
/// AND k = $1`).
pub fn keeps_key(u: &pb::UpdateStmt, key: &str) -> bool {
    let Some(rel) = &u.relation else { return false };
    let names = [
        Some(rel.relname.as_str()),
        rel.alias.as_ref().map(|a| a.aliasname.as_str()),
    ];
    let names_key = |c: &pb::Node| match c.node.as_ref() {
        Some(NodeEnum::ColumnRef(c)) => {
            let parts: Vec<&str> = c
                .fields
                .iter()
                .filter_map(|f| match f.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            match parts.as_slice() {
                [k] => *k == key,
                [q, k] => *k == key && names.contains(&Some(*q)),
                _ => false,
            }
        }
        _ => false,
    };
    // `SET k = k` (what a checked key update becomes) leaves every row's key as it is.
    let assignments: Vec<&pb::Node> = u
        .target_list
        .iter()
        .filter_map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) if rt.name == key && rt.indirection.is_empty() => {
                rt.val.as_deref()
            }
            _ => None,
        })
        .collect();
    if let [only] = assignments.as_slice() {
        if names_key(only) {
            return true;
        }
    }
    let Some(value) = set_value(u, key) else {
        return false;
    };
    let pins = |n: &pb::Node| -> bool {
        let Some(NodeEnum::AExpr(e)) = n.node.as_ref() else {
            return false;
        };
        let is_eq = e.kind == pb::AExprKind::AexprOp as i32
            && matches!(e.name.as_slice(), [op] if matches!(op.node.as_ref(), Some(NodeEnum::String(s)) if s.sval == "="));
        let (Some(l), Some(r)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else {
            return false;
        };
        is_eq && ((names_key(l) && same_value(r, value)) || (names_key(r) && same_value(l, value)))
    };
    match u.where_clause.as_deref().and_then(|w| w.node.as_ref()) {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
            b.args.iter().any(pins)
        }
        Some(_) => u.where_clause.as_deref().is_some_and(pins),
        None => false,
    }
}

/// The same constant, parameter or cast of one, wherever each was written.
fn same_value(a: &pb::Node, b: &pb::Node) -> bool {
    match (a.node.as_ref(), b.node.as_ref()) {
        (Some(NodeEnum::AConst(x)), Some(NodeEnum::AConst(y))) => {
            x.isnull == y.isnull && x.val == y.val
        }
        (Some(NodeEnum::ParamRef(x)), Some(NodeEnum::ParamRef(y))) => x.number == y.number,
        (Some(NodeEnum::TypeCast(x)), Some(NodeEnum::TypeCast(y))) => {
            fn names(c: &pb::TypeCast) -> Option<(Vec<&str>, usize, usize)> {
                c.type_name.as_ref().map(|t| {
                    let names: Vec<&str> = t
                        .names
                        .iter()
                        .filter_map(|n| match n.node.as_ref() {
                            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                            _ => None,
                        })
                        .collect();
                    (names, t.typmods.len(), t.array_bounds.len())
                })
            }
            names(x) == names(y)
                && x.type_name.as_ref().is_some_and(|t| t.typmods.is_empty())
                && match (x.arg.as_deref(), y.arg.as_deref()) {
                    (Some(p), Some(q)) => same_value(p, q),
                    _ => false,
                }
        }
        _ => false,
    }
}

/// The value `u` sets `key` to, when it is one value for every row: a constant other than
/// NULL or a parameter, possibly cast.
fn set_value<'a>(u: &'a pb::UpdateStmt, key: &str) -> Option<&'a pb::Node> {
    let mut found = None;
    for target in &u.target_list {
        let Some(NodeEnum::ResTarget(rt)) = target.node.as_ref() else {
            return None;
        };
        if rt.name == key {
            if found.is_some() || !rt.indirection.is_empty() {
                return None;
            }
            found = rt.val.as_deref();
        }
    }
    let value = found?;
    one_value(value).then_some(value)
}

fn one_value(n: &pb::Node) -> bool {
    match n.node.as_ref() {
        Some(NodeEnum::AConst(c)) => !c.isnull,
        Some(NodeEnum::ParamRef(_)) => true,
        Some(NodeEnum::TypeCast(c)) => c.arg.as_deref().is_some_and(one_value),
        _ => false,
    }
}

/// An expression's text, as the deparser writes it (`SELECT <expr>` less its keyword).
fn expression_text(version: i32, n: &pb::Node) -> Option<String> {
    let select = pb::SelectStmt {
        target_list: vec![target(n.clone())],
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    let text = select_deparse(version, select)?;
    text.strip_prefix("SELECT ").map(str::to_string)
}

/// A relation's text with its alias (`ONLY s.t AS a`).
fn relation_text(version: i32, rel: &pb::RangeVar) -> Option<String> {
    let one = pb::Node {
        node: Some(NodeEnum::AConst(pb::AConst {
            val: Some(pb::a_const::Val::Ival(pb::Integer { ival: 1 })),
            ..Default::default()
        })),
    };
    let select = pb::SelectStmt {
        target_list: vec![target(one)],
        from_clause: vec![pb::Node {
            node: Some(NodeEnum::RangeVar(rel.clone())),
        }],
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    let text = select_deparse(version, select)?;
    text.strip_prefix("SELECT 1 FROM ").map(str::to_string)
}

fn target(value: pb::Node) -> pb::Node {
    pb::Node {
        node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
            val: Some(Box::new(value)),
            ..Default::default()
        }))),
    }
}

/// The WHERE clause of `SELECT 1 WHERE <condition>`.
fn where_node(condition: &str) -> Option<pb::Node> {
    let parsed = pg_query::parse(&format!("SELECT 1 WHERE {condition}"), 0)
        .ok()?
        .protobuf;
    let raw = parsed.stmts.into_iter().next()?;
    match raw.stmt?.node? {
        NodeEnum::SelectStmt(s) => s.where_clause.map(|w| *w),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(sql: &str) -> pb::UpdateStmt {
        let parsed = pg_query::parse(sql, 0).unwrap().protobuf;
        match parsed.stmts[0]
            .stmt
            .as_deref()
            .unwrap()
            .node
            .clone()
            .unwrap()
        {
            NodeEnum::UpdateStmt(u) => *u,
            _ => panic!("not an UPDATE"),
        }
    }

    /// Django's save(): every column set, the key to a parameter, the row found by its id.
    #[test]
    fn counts_rows_that_would_move_then_pins_the_key() {
        let g = find(
            "UPDATE \"shop_order\" SET \"customer_id\" = $1, \"amount\" = $2 WHERE \"shop_order\".\"id\" = $3",
            "customer_id",
        )
        .unwrap();
        assert_eq!(
            g.inner,
            "SELECT count(*) FROM shop_order WHERE (shop_order.id = $3) AND shop_order.customer_id IS DISTINCT FROM $1"
        );
        assert_eq!(
            g.splice("0").unwrap(),
            "UPDATE shop_order SET customer_id = customer_id, amount = $2 WHERE shop_order.id = $3 AND shop_order.customer_id = $1"
        );
        assert_eq!(
            g.splice("2").unwrap_err().to_string(),
            "UPDATE of shard key shop_order.customer_id would change the key of 2 matching row(s) and move them to another shard, which is not supported"
        );
        let g = find("UPDATE s.t AS x SET k = '7'::bigint, v = v + 1", "k").unwrap();
        assert_eq!(
            g.inner,
            "SELECT count(*) FROM s.t x WHERE x.k IS DISTINCT FROM '7'::bigint"
        );
        assert_eq!(
            g.splice("0").unwrap(),
            "UPDATE s.t x SET k = k, v = v + 1 WHERE x.k = '7'::bigint"
        );
    }

    /// A value that may differ by row, NULL, FROM, WITH, or a key set twice: no guard.
    #[test]
    fn other_key_updates_stay_refused() {
        for sql in [
            "UPDATE t SET k = k + 1 WHERE id = 1",
            "UPDATE t SET k = NULL WHERE id = 1",
            "UPDATE t SET k = u.k FROM u WHERE t.id = u.id",
            "WITH x AS (SELECT 1) UPDATE t SET k = 1",
            "UPDATE t SET k = 1, k = 2",
            "UPDATE t SET (k, v) = (1, 2)",
            "SELECT 1",
        ] {
            assert!(find(sql, "k").is_none(), "{sql}");
        }
    }

    #[test]
    fn a_key_pinned_to_its_new_value_is_kept() {
        for sql in [
            "UPDATE t SET k = $1, v = $2 WHERE id = $3 AND k = $1",
            "UPDATE t SET k = 7 WHERE t.k = 7",
            "UPDATE t AS a SET k = 7, v = 1 WHERE 7 = a.k AND v > 0",
            "UPDATE t SET k = '7'::int8 WHERE k = '7'::int8",
            "UPDATE t SET k = k, v = 1 WHERE id = $1 AND k = $2",
            "UPDATE t AS a SET k = a.k",
        ] {
            assert!(keeps_key(&update(sql), "k"), "{sql}");
        }
        for sql in [
            "UPDATE t SET k = $1 WHERE id = $3",
            "UPDATE t SET k = $1 WHERE k = $2",
            "UPDATE t SET k = 7 WHERE k = 7 OR id = 1",
            "UPDATE t SET k = 7 WHERE u.k = 7",
            "UPDATE t SET k = k + 1 WHERE k = k + 1",
            "UPDATE t SET k = v WHERE id = 1",
            "UPDATE t SET k = u.k WHERE id = 1",
        ] {
            assert!(!keeps_key(&update(sql), "k"), "{sql}");
        }
    }
}
