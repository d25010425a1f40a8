//! SQLAlchemy 2's "insertmanyvalues" with keys the database generates sends
//! `INSERT INTO t (a, b) SELECT p0::T, p1::U FROM (VALUES ($1::T, $2::U, 0), ($3::T, $4::U, 1))
//! AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING t.id`, so that RETURNING comes
//! back in the order of its rows. That is exactly the multi-row `INSERT INTO t (a, b) VALUES
//! ($1::T::T, $2::U::U), (…) RETURNING t.id`, which pgshard gives keys, splits by shard and
//! answers in the client's row order. Pure: text in, text out.

use pg_query::protobuf::{self as pb, a_const};
use pg_query::NodeEnum;

use super::insert_rewrite::{rewrite_insert, values_source};

/// `sql` as a multi-row `INSERT … VALUES`, when it is an INSERT of a SELECT that only picks
/// (and casts) the columns of a VALUES list of constants and parameters, ordered by a column
/// holding ascending integers: the rows then go in as listed. `None` for anything else.
pub fn as_values(sql: &str) -> Option<String> {
    rewrite_insert(sql, "order", |insert| {
        if insert.with_clause.is_some() {
            return None;
        }
        let Some(NodeEnum::SelectStmt(select)) = insert.select_stmt.as_deref()?.node.as_ref()
        else {
            return None;
        };
        insert.select_stmt = Some(values_source(rows(select)?));
        Some(())
    })
}

/// The VALUES rows the SELECT inserts, in its order.
fn rows(select: &pb::SelectStmt) -> Option<Vec<pb::Node>> {
    let plain = select.distinct_clause.is_empty()
        && select.into_clause.is_none()
        && select.where_clause.is_none()
        && select.group_clause.is_empty()
        && select.having_clause.is_none()
        && select.window_clause.is_empty()
        && select.values_lists.is_empty()
        && select.limit_count.is_none()
        && select.limit_offset.is_none()
        && select.locking_clause.is_empty()
        && select.with_clause.is_none()
        && select.op == pb::SetOperation::SetopNone as i32;
    if !plain {
        return None;
    }
    let [from] = select.from_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::RangeSubselect(sub)) = from.node.as_ref() else {
        return None;
    };
    let alias = sub.alias.as_ref().filter(|_| !sub.lateral)?;
    let names = strings(&alias.colnames)?;
    let Some(NodeEnum::SelectStmt(values)) = sub.subquery.as_deref()?.node.as_ref() else {
        return None;
    };
    let lists: Vec<&[pb::Node]> = values
        .values_lists
        .iter()
        .map(|l| match l.node.as_ref() {
            Some(NodeEnum::List(l)) if l.items.len() == names.len() => Some(l.items.as_slice()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    if lists.is_empty() || values.sort_clause.len() + values.target_list.len() > 0 {
        return None;
    }
    // ORDER BY one column of ascending integers: the rows' own order.
    let [order] = select.sort_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::SortBy(order)) = order.node.as_ref() else {
        return None;
    };
    let default_order = order.sortby_dir == pb::SortByDir::SortbyDefault as i32
        || order.sortby_dir == pb::SortByDir::SortbyAsc as i32;
    if !default_order || !order.use_op.is_empty() {
        return None;
    }
    let by = column(order.node.as_deref()?, &alias.aliasname, &names)?;
    let mut last: Option<i32> = None;
    for row in &lists {
        let n = match row[by].node.as_ref()? {
            NodeEnum::AConst(c) => match &c.val {
                Some(a_const::Val::Ival(i)) => i.ival,
                _ => return None,
            },
            _ => return None,
        };
        if last.is_some_and(|l| l >= n) {
            return None;
        }
        last = Some(n);
    }
    // Each inserted expression is a column of the list, cast or not; a column not cast here is
    // cast in every row (its type is then the same either way).
    let mut picks: Vec<(usize, Option<&pb::TypeName>)> = Vec::new();
    for t in &select.target_list {
        let Some(NodeEnum::ResTarget(t)) = t.node.as_ref() else {
            return None;
        };
        let pick = match t.val.as_deref()?.node.as_ref()? {
            NodeEnum::TypeCast(c) => (
                column(c.arg.as_deref()?, &alias.aliasname, &names)?,
                Some(c.type_name.as_ref()?),
            ),
            _ => (column(t.val.as_deref()?, &alias.aliasname, &names)?, None),
        };
        let typed = |n: &pb::Node| matches!(n.node, Some(NodeEnum::TypeCast(_)));
        if !lists.iter().all(|row| constant(&row[pick.0])) {
            return None;
        }
        if pick.1.is_none() && !lists.iter().all(|row| typed(&row[pick.0])) {
            return None;
        }
        picks.push(pick);
    }
    Some(
        lists
            .iter()
            .map(|row| {
                let items = picks
                    .iter()
                    .map(|(j, cast)| match cast {
                        Some(ty) => pb::Node {
                            node: Some(NodeEnum::TypeCast(Box::new(pb::TypeCast {
                                arg: Some(Box::new(row[*j].clone())),
                                type_name: Some((*ty).clone()),
                                location: -1,
                            }))),
                        },
                        None => row[*j].clone(),
                    })
                    .collect();
                pb::Node {
                    node: Some(NodeEnum::List(pb::List { items })),
                }
            })
            .collect(),
    )
}

/// The index among `names` of the column `n` names (bare, or qualified by `alias`).
fn column(n: &pb::Node, alias: &str, names: &[&str]) -> Option<usize> {
    let Some(NodeEnum::ColumnRef(c)) = n.node.as_ref() else {
        return None;
    };
    let name = match strings(&c.fields)?.as_slice() {
        [name] => *name,
        [q, name] if *q == alias => *name,
        _ => return None,
    };
    names.iter().position(|n| *n == name)
}

/// The names a list of String nodes holds (a column list, a column reference's parts).
fn strings(nodes: &[pb::Node]) -> Option<Vec<&str>> {
    nodes
        .iter()
        .map(|n| match n.node.as_ref() {
            Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// A parameter or a constant, maybe cast: the same value whichever row form holds it.
fn constant(n: &pb::Node) -> bool {
    match n.node.as_ref() {
        Some(NodeEnum::ParamRef(_) | NodeEnum::AConst(_)) => true,
        Some(NodeEnum::TypeCast(c)) => c.arg.as_deref().is_some_and(constant),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlalchemy_insertmanyvalues() {
        let cases = [
            (
                "INSERT INTO sa_customer (name, region) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES ($1::VARCHAR, $2::VARCHAR, 0), ($3::VARCHAR, $4::VARCHAR, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING sa_customer.id, sa_customer.id AS id__1",
                "INSERT INTO sa_customer (name, region) VALUES ($1::varchar::varchar, $2::varchar::varchar), ($3::varchar::varchar, $4::varchar::varchar) RETURNING sa_customer.id, sa_customer.id AS id__1",
            ),
            (
                "insert into t (a, b) select s.p1, p0 from (values ('x'::text, 5::int, 1), ('y'::text, 6::int, 3)) as s(p0, p1, n) order by n",
                "INSERT INTO t (a, b) VALUES (5::int, 'x'::text), (6::int, 'y'::text)",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(as_values(sql).as_deref(), Some(want), "{sql}");
        }
    }

    #[test]
    fn left_alone() {
        for sql in [
            "INSERT INTO t (a) VALUES (1)",
            "INSERT INTO t (a) SELECT p0::int FROM (VALUES (1, 1), (2, 0)) AS v(p0, n) ORDER BY n",
            "INSERT INTO t (a) SELECT p0::int FROM (VALUES (1, 0), (2, 1)) AS v(p0, n) ORDER BY n DESC",
            "INSERT INTO t (a) SELECT p0::int FROM (VALUES (f(), 0)) AS v(p0, n) ORDER BY n",
            "INSERT INTO t (a) SELECT p0 FROM (VALUES (1, 0)) AS v(p0, n) ORDER BY n",
            "INSERT INTO t (a) SELECT p0::int FROM (VALUES (1, 0)) AS v(p0, n) WHERE p0 > 0 ORDER BY n",
            "INSERT INTO t (a) SELECT p0::int FROM (VALUES (1, 0)) AS v(p0, n), u ORDER BY n",
            "INSERT INTO t (a) SELECT id FROM u ORDER BY id",
            "SELECT 1",
        ] {
            assert_eq!(as_values(sql), None, "{sql}");
        }
    }
}
