//! Tables read first in place of a join or a correlated subquery that the shards cannot answer
//! on their own: an outer join keeping every row of a side that reads no sharded table
//! (SQLAlchemy's `joinedload` under a LIMIT), a join of two sharded tables not on their shard
//! keys (Django's `select_related` across keys), and a subquery correlated not by its table's
//! shard key (Django's `Subquery(OuterRef)` across keys). The table's rows that can matter run
//! first over every shard and take its place under its name, written in as a derived table
//! (see `pull_up`), so the statement runs whole on one shard. Pure: text in, texts out.

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::analyze::Walk;
use super::derived::{put_placeholder, res_target, select_of, select_star, ROWS, TAKEN};
use super::pull_up::{read_columns, PullUp, PLACEHOLDER};
use super::set_op_branches::deparse as select_deparse;
use crate::sql_text::deparse;

/// An outer join keeping every row of a side that reads no sharded table while matching a
/// sharded table directly, ON an equality of one of the table's columns with a column of the
/// kept side: SQLAlchemy's `joinedload` of a collection under a LIMIT, once its limited derived
/// table has run first (`FROM (SELECT * FROM unnest(…)) AS anon_1 LEFT OUTER JOIN entry AS
/// entry_1 ON anon_1.id = entry_1.account_id`). Each shard would answer every kept row, so the
/// table's rows that can match — `entry_1.account_id IN (SELECT anon_1.id FROM <the kept
/// side>)`, the ON clause's other conditions left to the statement — run first (over every
/// shard, concatenated), and take the table's place under its name: the statement then reads
/// no sharded table and runs whole on one shard, its outer join Postgres's own.
pub fn outer_join_matched(sql: &str, reads_sharded: &dyn Fn(&str) -> bool) -> Option<PullUp> {
    replace_taken(sql, reads_sharded, |select, version, reads| {
        select
            .from_clause
            .iter_mut()
            .find_map(|item| take_matched(item, version, reads))
    })
}

/// The plain SELECT `sql` with the table `take` picks in its FROM clause (given the SELECT, the
/// parse's version and which FROM items read sharded tables; it answers the query reading the
/// table's rows and the name they take, leaving [`TAKEN`]'s marker in its place) read first
/// and written in under that name: the columns the statement reads of it (a whole-row
/// reference keeps them all) are what comes back.
fn replace_taken(
    sql: &str,
    reads_sharded: &dyn Fn(&str) -> bool,
    take: impl FnOnce(
        &mut pb::SelectStmt,
        i32,
        &dyn Fn(&pb::Node) -> Option<bool>,
    ) -> Option<(String, String)>,
) -> Option<PullUp> {
    let mut parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let version = parsed.version;
    let [raw] = parsed.stmts.as_mut_slice() else {
        return None;
    };
    let stmt = raw.stmt.as_deref_mut()?.node.as_mut()?;
    let NodeEnum::SelectStmt(select) = stmt else {
        return None;
    };
    if !plain_read(select) {
        return None;
    }
    let reads = |item: &pb::Node| item_reads_sharded(item, version, reads_sharded);
    let (inner, name) = take(select, version, &reads)?;
    let columns = read_columns(Walk::new([stmt.to_ref()]), &[&name]);
    put_placeholder(stmt);
    let outer = deparse(parsed)?;
    (outer.matches(PLACEHOLDER).count() == 1)
        .then(|| PullUp::replacing(inner, outer, ROWS, columns))
}

/// Under `item`, the first LEFT or RIGHT join whose matched side is a sharded table (by
/// `reads`) and whose kept side reads none and has no LATERAL item, ON `t.col = k.col`
/// (`k` a FROM item of the kept side): the query reading the table's rows that can match and
/// the name they take; the table is replaced by [`TAKEN`]'s marker.
fn take_matched(
    item: &mut pb::Node,
    version: i32,
    reads: &dyn Fn(&pb::Node) -> Option<bool>,
) -> Option<(String, String)> {
    let NodeEnum::JoinExpr(j) = item.node.as_mut()? else {
        return None;
    };
    let found = match pb::JoinType::try_from(j.jointype) {
        Ok(pb::JoinType::JoinLeft | pb::JoinType::JoinRight)
            if j.alias.is_none() && !j.is_natural && j.using_clause.is_empty() =>
        {
            let left = j.jointype == pb::JoinType::JoinLeft as i32;
            let (kept, matched) = if left {
                (j.larg.as_deref(), j.rarg.as_deref())
            } else {
                (j.rarg.as_deref(), j.larg.as_deref())
            };
            matched_rows(kept?, matched?, j.quals.as_deref()?, version, reads)
        }
        _ => None,
    };
    if let Some((inner, name)) = found {
        let left = j.jointype == pb::JoinType::JoinLeft as i32;
        let slot = if left { &mut j.rarg } else { &mut j.larg };
        *slot = Some(taken_as(&name));
        return Some((inner, name));
    }
    let left = j
        .larg
        .as_deref_mut()
        .and_then(|l| take_matched(l, version, reads));
    left.or_else(|| {
        j.rarg
            .as_deref_mut()
            .and_then(|r| take_matched(r, version, reads))
    })
}

/// The query reading `matched`'s rows that can match a row of `kept` under `quals`, and the
/// name they take, when `matched` is a sharded table and `kept` reads none.
fn matched_rows(
    kept: &pb::Node,
    matched: &pb::Node,
    quals: &pb::Node,
    version: i32,
    reads: &dyn Fn(&pb::Node) -> Option<bool>,
) -> Option<(String, String)> {
    let NodeEnum::RangeVar(table) = matched.node.as_ref()? else {
        return None;
    };
    let name = match &table.alias {
        Some(a) if a.colnames.is_empty() => a.aliasname.clone(),
        Some(_) => return None,
        // `schema.table.column` would not name the rows.
        None if table.schemaname.is_empty() => table.relname.clone(),
        None => return None,
    };
    let lateral = Walk::new([kept.node.as_ref()?.to_ref()]).any(|n| match n {
        NodeRef::RangeSubselect(r) => r.lateral,
        NodeRef::RangeFunction(r) => r.lateral,
        _ => false,
    });
    if lateral || !reads(matched)? || reads(kept)? {
        return None;
    }
    let mut kept_names = Vec::new();
    qualifiers(kept, &mut kept_names);
    let conjuncts: Vec<&pb::Node> = match quals.node.as_ref()? {
        NodeEnum::BoolExpr(b) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
            b.args.iter().collect()
        }
        _ => vec![quals],
    };
    let (own, other) = conjuncts
        .into_iter()
        .find_map(|c| equated_columns(c, &name, &kept_names))?;
    let restriction = pb::SubLink {
        sub_link_type: pb::SubLinkType::AnySublink as i32,
        testexpr: Some(Box::new(own.clone())),
        subselect: Some(Box::new(pb::Node {
            node: Some(NodeEnum::SelectStmt(Box::new(pb::SelectStmt {
                target_list: vec![res_target(other.clone())],
                from_clause: vec![kept.clone()],
                limit_option: pb::LimitOption::Default as i32,
                op: pb::SetOperation::SetopNone as i32,
                ..Default::default()
            }))),
        })),
        location: -1,
        ..Default::default()
    };
    let inner = pb::SelectStmt {
        target_list: select_star(),
        from_clause: vec![matched.clone()],
        where_clause: Some(Box::new(pb::Node {
            node: Some(NodeEnum::SubLink(Box::new(restriction))),
        })),
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    Some((select_deparse(version, inner)?, name))
}

/// `(own, other)` when `n` is `a = b` of two qualified columns, one of the rows named `name`
/// and the other of one of `kept` (the qualifiers of the kept side's FROM items).
fn equated_columns<'a>(
    n: &'a pb::Node,
    name: &str,
    kept: &[String],
) -> Option<(&'a pb::Node, &'a pb::Node)> {
    let NodeEnum::AExpr(e) = n.node.as_ref()? else {
        return None;
    };
    let is_eq = e.kind == pb::AExprKind::AexprOp as i32
        && matches!(e.name.as_slice(), [op] if matches!(op.node.as_ref(), Some(NodeEnum::String(s)) if s.sval == "="));
    if !is_eq {
        return None;
    }
    let (l, r) = (e.lexpr.as_deref()?, e.rexpr.as_deref()?);
    let qualifier = |c: &pb::Node| match c.node.as_ref() {
        Some(NodeEnum::ColumnRef(cr)) => match cr.fields.as_slice() {
            [q, col] if matches!(col.node.as_ref(), Some(NodeEnum::String(_))) => {
                match q.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    };
    let (ql, qr) = (qualifier(l)?, qualifier(r)?);
    if ql == name && ql != qr && kept.contains(&qr) {
        Some((l, r))
    } else if qr == name && ql != qr && kept.contains(&ql) {
        Some((r, l))
    } else {
        None
    }
}

/// A join of two sharded tables that are not co-located (Django's `select_related` of a foreign
/// key to a table sharded by another key: `FROM review INNER JOIN customer ON
/// (review.customer_id = customer.id)`): the joined table — the right side of an INNER or LEFT
/// join, the left of a RIGHT join — is read first (over every shard; for an INNER join only its
/// rows matching the statement's WHERE conditions on it alone) and takes its place under its
/// name, so every row of the other side meets all the rows it can join with on its own shard.
pub fn not_colocated_join(sql: &str, reads_sharded: &dyn Fn(&str) -> bool) -> Option<PullUp> {
    replace_taken(sql, reads_sharded, |select, version, reads| {
        let conjuncts: Vec<pb::Node> = match select.where_clause.as_deref() {
            None => Vec::new(),
            Some(w) => match w.node.as_ref() {
                Some(NodeEnum::BoolExpr(b)) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
                    b.args.clone()
                }
                _ => vec![w.clone()],
            },
        };
        select
            .from_clause
            .iter_mut()
            .find_map(|item| take_joined(item, version, reads, &conjuncts))
    })
}

/// Under `item`, the first INNER, LEFT or RIGHT join ON a condition, both of whose sides read
/// sharded tables and whose joined side is a table: the query reading that table's rows and the
/// name they take; the table is replaced by [`TAKEN`]'s marker.
fn take_joined(
    item: &mut pb::Node,
    version: i32,
    reads: &dyn Fn(&pb::Node) -> Option<bool>,
    conjuncts: &[pb::Node],
) -> Option<(String, String)> {
    let NodeEnum::JoinExpr(j) = item.node.as_mut()? else {
        return None;
    };
    let kind = pb::JoinType::try_from(j.jointype).ok()?;
    let right = matches!(kind, pb::JoinType::JoinInner | pb::JoinType::JoinLeft);
    let plain =
        j.alias.is_none() && !j.is_natural && j.using_clause.is_empty() && j.quals.is_some();
    let found = if plain && (right || kind == pb::JoinType::JoinRight) {
        let (other, joined) = if right {
            (j.larg.as_deref(), j.rarg.as_deref())
        } else {
            (j.rarg.as_deref(), j.larg.as_deref())
        };
        let where_ = if kind == pb::JoinType::JoinInner {
            conjuncts
        } else {
            &[]
        };
        joined_rows(other?, joined?, version, reads, where_)
    } else {
        None
    };
    if let Some((inner, name)) = found {
        let slot = if right { &mut j.rarg } else { &mut j.larg };
        *slot = Some(taken_as(&name));
        return Some((inner, name));
    }
    let left = j
        .larg
        .as_deref_mut()
        .and_then(|l| take_joined(l, version, reads, conjuncts));
    left.or_else(|| {
        j.rarg
            .as_deref_mut()
            .and_then(|r| take_joined(r, version, reads, conjuncts))
    })
}

/// `SELECT * FROM joined [WHERE …]` and the name its rows take, when `joined` is a sharded
/// table and `other` reads one; `conjuncts`: the statement's WHERE conditions (of an INNER
/// join), of which those reading only `joined`'s columns, qualified, and no subquery go along.
fn joined_rows(
    other: &pb::Node,
    joined: &pb::Node,
    version: i32,
    reads: &dyn Fn(&pb::Node) -> Option<bool>,
    conjuncts: &[pb::Node],
) -> Option<(String, String)> {
    let NodeEnum::RangeVar(table) = joined.node.as_ref()? else {
        return None;
    };
    let name = match &table.alias {
        Some(a) if a.colnames.is_empty() => a.aliasname.clone(),
        Some(_) => return None,
        None if table.schemaname.is_empty() => table.relname.clone(),
        None => return None,
    };
    if !reads(joined)? || !reads(other)? {
        return None;
    }
    Some((own_rows(joined, &name, conjuncts, version)?, name))
}

/// Volatile functions a WHERE condition may call, whose two runs could answer differently.
const VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "nextval",
    "setval",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v4",
];

/// Whether `n` reads columns, every one qualified by `name`, and holds no subquery and no
/// call of a [`VOLATILE`] function.
fn reads_only(n: &pb::Node, name: &str) -> bool {
    let Some(node) = n.node.as_ref() else {
        return false;
    };
    let mut columns = 0;
    let mut other = false;
    for x in Walk::new([node.to_ref()]) {
        match x {
            NodeRef::SubLink(_) => other = true,
            // Run twice (first, then in the statement), a volatile call could differ.
            NodeRef::FuncCall(f) => {
                other |= f.funcname.iter().any(|n| {
                    matches!(n.node.as_ref(), Some(NodeEnum::String(s)) if VOLATILE.contains(&s.sval.as_str()))
                })
            }
            NodeRef::ColumnRef(c) => {
                columns += 1;
                let qualified = matches!(c.fields.as_slice(), [q, col]
                    if matches!(q.node.as_ref(), Some(NodeEnum::String(s)) if s.sval == name)
                        && matches!(col.node.as_ref(), Some(NodeEnum::String(_))));
                other |= !qualified;
            }
            _ => {}
        }
    }
    columns > 0 && !other
}

/// A correlated subquery over a sharded table that is not correlated by its shard key, as a
/// select-list item or a WHERE condition (Django's `annotate(x=Subquery(Review.objects.filter(
/// customer=OuterRef('pk'))…[:1]))` over reviews sharded by another key, SQLAlchemy's
/// `~exists().where(Note.account_id == Account.id)`): the table's rows — those matching the
/// subquery's own WHERE conditions that read only it — are read first (over every shard) and
/// take its place in the subquery's FROM under its name, so every shard answers the subquery for
/// its outer rows over all the rows it can see.
pub fn correlated_subquery_table(
    sql: &str,
    reads_sharded: &dyn Fn(&str) -> bool,
) -> Option<PullUp> {
    let mut parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let version = parsed.version;
    let [raw] = parsed.stmts.as_mut_slice() else {
        return None;
    };
    let stmt = raw.stmt.as_deref_mut()?.node.as_mut()?;
    let columns_of =
        |name: &str, stmt: &NodeEnum| read_columns(Walk::new([stmt.to_ref()]), &[name]);
    let NodeEnum::SelectStmt(select) = stmt else {
        return None;
    };
    if select.op != pb::SetOperation::SetopNone as i32
        || select.with_clause.is_some()
        || !select.locking_clause.is_empty()
    {
        return None;
    }
    let reads = |item: &pb::Node| item_reads_sharded(item, version, reads_sharded);
    // The select list's items and WHERE's conditions (under AND and NOT) that are subqueries.
    let mut slots: Vec<&mut pb::Node> = Vec::new();
    for item in select.target_list.iter_mut() {
        if let Some(NodeEnum::ResTarget(r)) = item.node.as_mut() {
            if let Some(v) = r.val.as_deref_mut() {
                slots.push(v);
            }
        }
    }
    if let Some(w) = select.where_clause.as_deref_mut() {
        conditions(w, &mut slots);
    }
    let mut found = None;
    for slot in slots {
        let Some(NodeEnum::SubLink(link)) = slot.node.as_mut() else {
            continue;
        };
        let Some(NodeEnum::SelectStmt(sub)) =
            link.subselect.as_deref_mut().and_then(|s| s.node.as_mut())
        else {
            continue;
        };
        if sub.op != pb::SetOperation::SetopNone as i32 || sub.with_clause.is_some() {
            continue;
        }
        let sub_conjuncts: Vec<pb::Node> = match sub.where_clause.as_deref() {
            None => Vec::new(),
            Some(w) => match w.node.as_ref() {
                Some(NodeEnum::BoolExpr(b)) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
                    b.args.clone()
                }
                _ => vec![w.clone()],
            },
        };
        for item in sub.from_clause.iter_mut() {
            let Some(NodeEnum::RangeVar(_)) = item.node.as_ref() else {
                continue;
            };
            if reads(item) != Some(true) {
                continue;
            }
            let Some((inner, name)) = table_rows(item, version, &sub_conjuncts) else {
                continue;
            };
            *item = pb::Node {
                node: Some(NodeEnum::RangeSubselect(Box::new(pb::RangeSubselect {
                    lateral: false,
                    subquery: Some(Box::new(select_of(TAKEN, false))),
                    alias: Some(pb::Alias {
                        aliasname: name.clone(),
                        colnames: Vec::new(),
                    }),
                }))),
            };
            found = Some((inner, name));
            break;
        }
        if found.is_some() {
            break;
        }
    }
    let (inner, name) = found?;
    let columns = columns_of(&name, stmt);
    let text = deparse(parsed)?;
    let marker = select_deparse(
        version,
        match select_of(TAKEN, false).node {
            Some(NodeEnum::SelectStmt(s)) => *s,
            _ => return None,
        },
    )?;
    let placeholder = select_deparse(
        version,
        match select_of(PLACEHOLDER, true).node {
            Some(NodeEnum::SelectStmt(s)) => *s,
            _ => return None,
        },
    )?;
    (text.matches(&marker).count() == 1).then(|| {
        PullUp::replacing(
            inner,
            text.replacen(&marker, &placeholder, 1),
            ROWS,
            columns,
        )
    })
}

/// The conditions of a WHERE under AND and NOT, into `out`.
fn conditions<'a>(n: &'a mut pb::Node, out: &mut Vec<&'a mut pb::Node>) {
    let nested = matches!(n.node.as_ref(), Some(NodeEnum::BoolExpr(b))
        if b.boolop == pb::BoolExprType::AndExpr as i32 || b.boolop == pb::BoolExprType::NotExpr as i32);
    if !nested {
        out.push(n);
        return;
    }
    if let Some(NodeEnum::BoolExpr(b)) = n.node.as_mut() {
        for a in b.args.iter_mut() {
            conditions(a, out);
        }
    }
}

/// `SELECT * FROM table [WHERE …]` and the name its rows take, with the `conjuncts` that read
/// only the table's columns (qualified by that name), no subquery and no volatile call.
fn table_rows(table: &pb::Node, version: i32, conjuncts: &[pb::Node]) -> Option<(String, String)> {
    let NodeEnum::RangeVar(rv) = table.node.as_ref()? else {
        return None;
    };
    let name = match &rv.alias {
        Some(a) if a.colnames.is_empty() => a.aliasname.clone(),
        Some(_) => return None,
        None if rv.schemaname.is_empty() => rv.relname.clone(),
        None => return None,
    };
    Some((own_rows(table, &name, conjuncts, version)?, name))
}

/// The names that qualify the columns of the FROM items under `n`.
fn qualifiers(n: &pb::Node, out: &mut Vec<String>) {
    let alias = |a: Option<&pb::Alias>| a.map(|a| a.aliasname.clone());
    match n.node.as_ref() {
        Some(NodeEnum::RangeVar(rv)) => {
            out.push(alias(rv.alias.as_ref()).unwrap_or_else(|| rv.relname.clone()))
        }
        Some(NodeEnum::RangeFunction(f)) => out.extend(alias(f.alias.as_ref())),
        Some(NodeEnum::RangeSubselect(r)) => out.extend(alias(r.alias.as_ref())),
        Some(NodeEnum::JoinExpr(j)) => {
            out.extend(alias(j.alias.as_ref()));
            for side in [j.larg.as_deref(), j.rarg.as_deref()].into_iter().flatten() {
                qualifiers(side, out);
            }
        }
        _ => {}
    }
}

/// A SELECT whose FROM items may be read first: no set operation or WITH, and no locking clause
/// (it would lock the table's rows, which rows read first are not).
fn plain_read(select: &pb::SelectStmt) -> bool {
    select.op == pb::SetOperation::SetopNone as i32
        && select.with_clause.is_none()
        && select.locking_clause.is_empty()
}

/// Whether the FROM item `item` reads a sharded table (`reads_sharded` judges its `SELECT *`).
fn item_reads_sharded(
    item: &pb::Node,
    version: i32,
    reads_sharded: &dyn Fn(&str) -> bool,
) -> Option<bool> {
    let probe = pb::SelectStmt {
        target_list: select_star(),
        from_clause: vec![item.clone()],
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    select_deparse(version, probe).map(|text| reads_sharded(&text))
}

/// The query reading `table`'s rows (named `name` in the statement) under those of the
/// statement's WHERE `conjuncts` that read only them.
fn own_rows(table: &pb::Node, name: &str, conjuncts: &[pb::Node], version: i32) -> Option<String> {
    let own: Vec<pb::Node> = conjuncts
        .iter()
        .filter(|c| reads_only(c, name))
        .cloned()
        .collect();
    let where_clause = match own.len() {
        0 => None,
        1 => own.into_iter().next().map(Box::new),
        _ => Some(Box::new(pb::Node {
            node: Some(NodeEnum::BoolExpr(Box::new(pb::BoolExpr {
                boolop: pb::BoolExprType::AndExpr as i32,
                args: own,
                location: -1,
                ..Default::default()
            }))),
        })),
    };
    let inner = pb::SelectStmt {
        target_list: select_star(),
        from_clause: vec![table.clone()],
        where_clause,
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    select_deparse(version, inner)
}

/// The FROM item a table read first leaves behind until the placeholder goes in: [`TAKEN`]'s
/// marker under the table's name.
fn taken_as(name: &str) -> Box<pb::Node> {
    Box::new(pb::Node {
        node: Some(NodeEnum::RangeSubselect(Box::new(pb::RangeSubselect {
            lateral: false,
            subquery: Some(Box::new(select_of(TAKEN, false))),
            alias: Some(pb::Alias {
                aliasname: name.to_string(),
                colnames: Vec::new(),
            }),
        }))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::derived::tests::{row, sharded};
    use crate::router::pull_up::tests::desc;

    #[test]
    fn an_outer_join_matching_a_sharded_table_reads_its_matching_rows_first() {
        // SQLAlchemy's joinedload under a LIMIT, its derived table already run first.
        let sql = "SELECT anon_1.user_id, orders_1.id FROM (SELECT * FROM unnest(E'{7,9}'::int8[]) AS pgshard_derived(user_id)) AS anon_1 LEFT OUTER JOIN orders AS orders_1 ON anon_1.user_id = orders_1.customer_id ORDER BY anon_1.user_id DESC, orders_1.id";
        let p = outer_join_matched(sql, &sharded).expect("found");
        assert_eq!(
            p.inner,
            "SELECT * FROM orders orders_1 WHERE orders_1.customer_id IN (SELECT anon_1.user_id FROM (SELECT * FROM unnest('{7,9}'::int8[]) pgshard_derived(user_id)) anon_1)"
        );
        let d = desc(&[("id", 20), ("customer_id", 20)]);
        assert_eq!(
            p.splice(&d, &[row(&["3", "7"])]).unwrap(),
            "SELECT anon_1.user_id, orders_1.id FROM (SELECT * FROM unnest('{7,9}'::int8[]) pgshard_derived(user_id)) anon_1 LEFT JOIN (SELECT * FROM unnest(E'{3}'::int8[], E'{7}'::int8[]) AS pgshard_derived(id, customer_id)) orders_1 ON anon_1.user_id = orders_1.customer_id ORDER BY anon_1.user_id DESC, orders_1.id"
        );
        // RIGHT JOIN, other conditions in ON, a table without an alias.
        let sql = "SELECT v.k, orders.id FROM orders RIGHT JOIN (VALUES (1), (2)) v(k) ON orders.total > 0 AND v.k = orders.customer_id";
        let p = outer_join_matched(sql, &sharded).expect("found");
        assert_eq!(
            p.inner,
            "SELECT * FROM orders WHERE orders.customer_id IN (SELECT v.k FROM (VALUES (1), (2)) v(k))"
        );
        for sql in [
            // Nothing equates a column of the table with one of the kept side.
            "SELECT * FROM generate_series(1, 3) g LEFT JOIN orders o ON o.customer_id = g",
            "SELECT * FROM generate_series(1, 3) g LEFT JOIN orders o ON o.customer_id > g.g",
            "SELECT * FROM generate_series(1, 3) g LEFT JOIN orders o USING (customer_id)",
            // FULL keeps the table's rows too; the kept side reads a sharded table.
            "SELECT * FROM generate_series(1, 3) g FULL JOIN orders o ON o.customer_id = g.g",
            "SELECT * FROM users u LEFT JOIN orders o ON o.customer_id = u.user_id",
            // A LATERAL item of the kept side may see what is around it.
            "SELECT * FROM (VALUES (1)) v(k) JOIN LATERAL (SELECT v.k AS j) l ON true LEFT JOIN orders o ON o.customer_id = l.j",
            // The matched side is no plain table.
            "SELECT * FROM (VALUES (1)) v(k) LEFT JOIN (orders o JOIN users u ON u.user_id = o.customer_id) ON o.customer_id = v.k",
        ] {
            assert_eq!(outer_join_matched(sql, &sharded), None, "{sql}");
        }
    }

    #[test]
    fn a_join_of_tables_sharded_by_other_keys_reads_the_joined_table_first() {
        // Django's select_related of a foreign key to a table sharded by another key: the
        // joined table's rows matching the WHERE conditions on it alone are read first.
        let sql = "SELECT orders.id, users.name FROM orders INNER JOIN users ON (orders.customer_id = users.name) WHERE (orders.total > $1 AND users.email = $2 AND users.user_id > orders.id) ORDER BY orders.id";
        let p = not_colocated_join(sql, &sharded).expect("found");
        assert_eq!(p.inner, "SELECT * FROM users WHERE users.email = $2");
        let d = desc(&[("name", 25), ("email", 25), ("user_id", 20), ("id", 20)]);
        assert_eq!(
            p.splice(&d, &[row(&["a", "b", "7", "1"])]).unwrap(),
            "SELECT orders.id, users.name FROM orders JOIN (SELECT * FROM unnest(E'{a}'::text[], E'{b}'::text[], E'{7}'::int8[], E'{1}'::int8[]) AS pgshard_derived(name, email, user_id, id)) users ON orders.customer_id = users.name WHERE orders.total > $1 AND users.email = $2 AND users.user_id > orders.id ORDER BY orders.id"
        );
        // LEFT joins take no WHERE condition along; RIGHT joins read their left side first.
        let sql = "SELECT o.id, u.name FROM orders o LEFT JOIN users u ON o.customer_id = u.name WHERE u.email = 'x'";
        let p = not_colocated_join(sql, &sharded).expect("found");
        assert_eq!(p.inner, "SELECT * FROM users u");
        let sql = "SELECT o.id FROM orders o JOIN users u ON o.customer_id = u.name WHERE u.user_id > random() * 10 AND lower(u.email) = 'x'";
        let p = not_colocated_join(sql, &sharded).expect("found");
        assert_eq!(p.inner, "SELECT * FROM users u WHERE lower(u.email) = 'x'");
        let sql = "SELECT o.id FROM users u RIGHT JOIN orders o ON o.customer_id = u.name";
        let p = not_colocated_join(sql, &sharded).expect("found");
        assert_eq!(p.inner, "SELECT * FROM users u");
        for sql in [
            // Locking clauses would leave the joined rows unlocked.
            "SELECT * FROM orders o JOIN users u ON o.customer_id = u.name FOR UPDATE",
            // USING, a side reading no sharded table, a FULL join.
            "SELECT * FROM orders o JOIN users u USING (id)",
            "SELECT * FROM orders o JOIN countries c ON c.id = o.total",
            "SELECT * FROM orders o FULL JOIN users u ON o.customer_id = u.name",
            "SELECT * FROM orders o, users u WHERE o.customer_id = u.name",
        ] {
            assert_eq!(not_colocated_join(sql, &sharded), None, "{sql}");
        }
    }

    #[test]
    fn a_subquery_correlated_not_by_key_reads_its_table_first() {
        // Django's annotate(Subquery(OuterRef)) over a table sharded by another key.
        let sql = "SELECT users.user_id, (SELECT u0.total FROM orders u0 WHERE u0.total > $1 AND u0.customer_id = users.name ORDER BY u0.total DESC LIMIT 1) AS best FROM users";
        let p = correlated_subquery_table(sql, &sharded).expect("found");
        assert_eq!(p.inner, "SELECT * FROM orders u0 WHERE u0.total > $1");
        let d = desc(&[("total", 20), ("customer_id", 25)]);
        assert_eq!(
            p.splice(&d, &[row(&["5", "a"])]).unwrap(),
            "SELECT users.user_id, (SELECT u0.total FROM (SELECT * FROM unnest(E'{5}'::int8[], E'{a}'::text[]) AS pgshard_derived(total, customer_id)) u0 WHERE u0.total > $1 AND u0.customer_id = users.name ORDER BY u0.total DESC LIMIT 1) AS best FROM users"
        );
        // NOT EXISTS under AND in WHERE.
        let sql = "SELECT u.user_id FROM users u WHERE u.user_id > 3 AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = u.name)";
        let p = correlated_subquery_table(sql, &sharded).expect("found");
        assert_eq!(p.inner, "SELECT * FROM orders o");
        for sql in [
            // Inside another expression, or with a locking clause.
            "SELECT sum((SELECT count(*) FROM orders o WHERE o.customer_id = u.name)) FROM users u",
            "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = u.name) FOR UPDATE",
            // Nothing sharded in the subquery.
            "SELECT (SELECT name FROM countries c WHERE c.id = u.user_id) FROM users u",
        ] {
            assert_eq!(correlated_subquery_table(sql, &sharded), None, "{sql}");
        }
    }
}
