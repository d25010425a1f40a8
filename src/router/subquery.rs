//! Subqueries over sharded tables that each shard can answer on its own: a subquery in WHERE
//! (`EXISTS`, `IN`, `= ANY`, a scalar comparison) whose every sharded table is correlated with
//! the outer query by shard key (`o.user_id = u.user_id`). For each outer row the rows it looks
//! at share that row's key, so they live on that row's shard, and the statement runs whole on
//! each shard (keyed or scattered) exactly as one Postgres would run it. The same holds for a
//! `LATERAL` subquery in FROM correlated the same way. Pure: reading the parse tree.

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::facts::{conjuncts, op_name, ShardedTables};

/// A table of the outer query's top level: how its columns are qualified, and its shard key.
#[derive(Debug, Clone, Copy)]
pub struct OuterRef<'a> {
    pub refname: &'a str,
    pub key: Option<&'a str>,
}

/// A table in a subquery's FROM.
struct InnerRef {
    name: String,
    refname: String,
    key: Option<String>,
}

/// The sharded tables (one entry per occurrence) of the WHERE subqueries that each shard can
/// answer on its own (see the module doc); subqueries of any other shape add nothing, so their
/// tables stay refused.
pub fn pushed_down_tables(
    where_clause: &pb::Node,
    outer: &[OuterRef],
    tables: &ShardedTables,
) -> Vec<String> {
    let Some(top) = where_clause.node.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (n, _, _, _) in top.nodes() {
        let NodeRef::SubLink(link) = n else { continue };
        let Some(NodeEnum::SelectStmt(s)) = link.subselect.as_deref().and_then(|n| n.node.as_ref())
        else {
            continue;
        };
        if let Some(names) = colocated(s, outer, tables) {
            out.extend(names);
        }
    }
    out
}

/// The sharded tables of a `LATERAL` subquery in FROM when each shard can answer it on its own
/// (every one of them correlated by key with a sharded outer table); `None` otherwise.
pub fn lateral_tables(
    s: &pb::SelectStmt,
    outer: &[OuterRef],
    tables: &ShardedTables,
) -> Option<Vec<String>> {
    colocated(s, outer, tables)
}

/// The sharded tables of `s` when every one of them is correlated by key with a sharded outer
/// table; `None` otherwise.
fn colocated(
    s: &pb::SelectStmt,
    outer: &[OuterRef],
    tables: &ShardedTables,
) -> Option<Vec<String>> {
    if s.op != pb::SetOperation::SetopNone as i32 || s.with_clause.is_some() {
        return None;
    }
    let mut refs = Vec::new();
    let mut quals = Vec::new();
    for item in &s.from_clause {
        from_item(item, tables, &mut refs, &mut quals)?;
    }
    // Tables below this level (a nested subquery) are not covered by this analysis.
    let everywhere = NodeEnum::SelectStmt(Box::new(s.clone()))
        .nodes()
        .iter()
        .filter(|(n, _, _, _)| matches!(n, NodeRef::RangeVar(_)))
        .count();
    if everywhere != refs.len() {
        return None;
    }
    let mut conds = Vec::new();
    for q in quals.iter().copied().chain(s.where_clause.as_deref()) {
        conjuncts(q, &mut conds);
    }
    let mut names = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let Some(key) = &r.key else { continue };
        let correlated = conds.iter().any(|c| {
            let Some((a, b)) = equality(c) else {
                return false;
            };
            let inner_key = |(q, col): &(String, String)| {
                refs.iter().position(|x| x.refname == *q) == Some(i) && col == key
            };
            let outer_key = |(q, col): &(String, String)| {
                !refs.iter().any(|x| x.refname == *q)
                    && outer
                        .iter()
                        .any(|o| o.refname == q && o.key == Some(col.as_str()))
            };
            (inner_key(&a) && outer_key(&b)) || (inner_key(&b) && outer_key(&a))
        });
        if !correlated {
            return None;
        }
        names.push(r.name.clone());
    }
    Some(names)
}

/// Collects the tables and join conditions of one FROM item; `None` for anything but tables
/// and joins of tables.
fn from_item<'a>(
    item: &'a pb::Node,
    tables: &ShardedTables,
    refs: &mut Vec<InnerRef>,
    quals: &mut Vec<&'a pb::Node>,
) -> Option<()> {
    match item.node.as_ref()? {
        NodeEnum::RangeVar(rv) => {
            let name = rv.relname.to_lowercase();
            let key = tables
                .key_of(&rv.schemaname.to_lowercase(), &name)
                .map(str::to_string);
            let refname = rv
                .alias
                .as_ref()
                .map(|a| a.aliasname.to_lowercase())
                .unwrap_or_else(|| name.clone());
            refs.push(InnerRef { name, refname, key });
            Some(())
        }
        NodeEnum::JoinExpr(j) => {
            if !j.using_clause.is_empty() || j.is_natural {
                return None;
            }
            from_item(j.larg.as_deref()?, tables, refs, quals)?;
            from_item(j.rarg.as_deref()?, tables, refs, quals)?;
            // Only an inner join's condition restricts the rows on both sides.
            if let Some(q) = j.quals.as_deref() {
                if j.jointype == pb::JoinType::JoinInner as i32 {
                    quals.push(q);
                }
            }
            Some(())
        }
        _ => None,
    }
}

/// `a.x = b.y` with both sides qualified columns: ((qualifier, column), (qualifier, column)).
fn equality(c: &pb::Node) -> Option<((String, String), (String, String))> {
    let NodeEnum::AExpr(e) = c.node.as_ref()? else {
        return None;
    };
    if e.kind != pb::AExprKind::AexprOp as i32 || op_name(e) != Some("=") {
        return None;
    }
    Some((
        qualified(e.lexpr.as_deref()?)?,
        qualified(e.rexpr.as_deref()?)?,
    ))
}

/// `q.col` (lowercased), through parentheses; `None` for anything else.
fn qualified(n: &pb::Node) -> Option<(String, String)> {
    let NodeEnum::ColumnRef(c) = n.node.as_ref()? else {
        return None;
    };
    let parts: Vec<String> = c
        .fields
        .iter()
        .map(|f| match f.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.to_lowercase()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [q, col] => Some((q.clone(), col.clone())),
        [_schema, q, col] => Some((q.clone(), col.clone())),
        _ => None,
    }
}
