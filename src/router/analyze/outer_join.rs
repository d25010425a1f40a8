//! An outer join that keeps every row of a side no shard owns (a function, VALUES, a reference
//! table) while matching a sharded table: each shard answers every kept row, NULL-extended
//! where its match lives on another shard. As plain rows that is wrong, but grouped over the
//! kept side with aggregates that skip NULLs over the matched side only (an ORM's
//! `annotate(Count('orders'))` of a reference table), every shard's NULL-extended rows add
//! nothing and the merge of the groups is exact. Pure: parse trees in, a verdict out.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::scan::str_of;

/// Aggregates that skip NULL inputs and merge exactly over shards.
const NULL_SKIPPING: [&str; 8] = [
    "count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every",
];

/// How each FROM item of a join side may be named in a column reference (its alias, else its
/// table's name), lowercased.
pub(super) fn qualifiers(n: &pb::Node, out: &mut Vec<String>) {
    let alias_of = |a: Option<&pb::Alias>| a.map(|a| a.aliasname.to_lowercase());
    match n.node.as_ref() {
        Some(NodeEnum::RangeVar(rv)) => {
            out.push(alias_of(rv.alias.as_ref()).unwrap_or_else(|| rv.relname.to_lowercase()))
        }
        Some(NodeEnum::RangeFunction(f)) => out.extend(alias_of(f.alias.as_ref())),
        Some(NodeEnum::RangeSubselect(r)) => out.extend(alias_of(r.alias.as_ref())),
        Some(NodeEnum::JoinExpr(j)) => {
            for side in [j.larg.as_deref(), j.rarg.as_deref()].into_iter().flatten() {
                qualifiers(side, out);
            }
        }
        _ => {}
    }
}

/// Whether `s`, whose FROM keeps every row of the items named `kept` while matching the
/// sharded items named `matched`, merges exactly over shards: it collapses rows (GROUP BY or
/// aggregates, no DISTINCT or window), reads kept columns only outside aggregates and in WHERE,
/// and matched columns only inside [`NULL_SKIPPING`] aggregates (not `count(*)`), every column
/// qualified.
pub(super) fn merges_exactly(s: &pb::SelectStmt, kept: &[String], matched: &[String]) -> bool {
    let collapses = !s.group_clause.is_empty() || has_aggregate(&s.target_list);
    if !collapses || !s.distinct_clause.is_empty() || !s.window_clause.is_empty() {
        return false;
    }
    let sides = Sides { kept, matched };
    let outside = |n: &pb::Node| sides.check(n, false);
    s.target_list.iter().all(outside)
        && s.group_clause.iter().all(outside)
        && s.sort_clause.iter().all(outside)
        && s.having_clause.as_deref().is_none_or(outside)
        && s.where_clause.as_deref().is_none_or(outside)
}

fn has_aggregate(list: &[pb::Node]) -> bool {
    list.iter().any(|n| {
        let inner = match n.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
            _ => Some(n),
        };
        matches!(inner.and_then(|n| n.node.as_ref()), Some(NodeEnum::FuncCall(f)) if aggregate_name(f).is_some())
    })
}

/// The function's name when it is one of [`NULL_SKIPPING`] (unqualified or in pg_catalog).
fn aggregate_name(f: &pb::FuncCall) -> Option<&'static str> {
    let name = match f.funcname.as_slice() {
        [n] => str_of(n)?,
        [schema, n] if str_of(schema) == Some("pg_catalog") => str_of(n)?,
        _ => return None,
    };
    NULL_SKIPPING
        .into_iter()
        .find(|a| a.eq_ignore_ascii_case(name))
}

struct Sides<'a> {
    kept: &'a [String],
    matched: &'a [String],
}

impl Sides<'_> {
    /// Whether every column `n` reads is of the kept side (`in_aggregate` false) or of the
    /// matched side (true), through the expression forms an ORM writes; anything else is no.
    fn check(&self, n: &pb::Node, in_aggregate: bool) -> bool {
        let all = |list: &[pb::Node], inside: bool| list.iter().all(|x| self.check(x, inside));
        let opt = |x: Option<&pb::Node>, inside: bool| x.is_none_or(|x| self.check(x, inside));
        match n.node.as_ref() {
            None => true,
            Some(NodeEnum::ColumnRef(c)) => {
                let parts: Option<Vec<&str>> = c.fields.iter().map(str_of).collect();
                let Some([.., qualifier, _]) = parts.as_deref() else {
                    return false;
                };
                let side = if in_aggregate {
                    self.matched
                } else {
                    self.kept
                };
                side.iter().any(|q| q.eq_ignore_ascii_case(qualifier))
            }
            Some(NodeEnum::AConst(_)) | Some(NodeEnum::ParamRef(_)) => true,
            Some(NodeEnum::ResTarget(rt)) => opt(rt.val.as_deref(), in_aggregate),
            Some(NodeEnum::SortBy(sb)) => opt(sb.node.as_deref(), in_aggregate),
            Some(NodeEnum::TypeCast(tc)) => opt(tc.arg.as_deref(), in_aggregate),
            Some(NodeEnum::AExpr(e)) => {
                opt(e.lexpr.as_deref(), in_aggregate) && opt(e.rexpr.as_deref(), in_aggregate)
            }
            Some(NodeEnum::BoolExpr(b)) => all(&b.args, in_aggregate),
            Some(NodeEnum::NullTest(t)) => opt(t.arg.as_deref(), in_aggregate),
            Some(NodeEnum::CoalesceExpr(c)) => all(&c.args, in_aggregate),
            Some(NodeEnum::List(l)) => all(&l.items, in_aggregate),
            Some(NodeEnum::FuncCall(f)) => match aggregate_name(f) {
                // No aggregate inside an aggregate; count(*) counts NULL-extended rows.
                Some(_) if in_aggregate || f.agg_star || f.over.is_some() => false,
                Some(_) => {
                    f.agg_order.is_empty()
                        && !f.agg_within_group
                        && all(&f.args, true)
                        && opt(f.agg_filter.as_deref(), true)
                }
                None => f.over.is_none() && f.agg_order.is_empty() && all(&f.args, in_aggregate),
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(sql: &str) -> pb::SelectStmt {
        let parsed = pg_query::parse(sql, 0).expect("parses").protobuf;
        match parsed.stmts[0].stmt.as_ref().and_then(|s| s.node.clone()) {
            Some(NodeEnum::SelectStmt(s)) => *s,
            other => panic!("not a select: {other:?}"),
        }
    }

    #[test]
    fn grouped_aggregates_of_the_matched_side_merge_exactly() {
        let kept = ["c".to_string()];
        let matched = ["o".to_string()];
        let cases = [
            ("select c.id, count(o.id) from countries c left join orders o on o.country = c.id group by c.id", true),
            ("select c.id, c.name, sum(o.total), max(o.total) from countries c left join orders o on o.country = c.id where c.name <> $1 group by c.id, c.name having count(o.id) > 0 order by count(o.id) desc, c.id", true),
            ("select count(o.id) filter (where o.total > 3) from countries c left join orders o on o.country = c.id", true),
            ("select c.id, coalesce(sum(o.total), 0)::int from countries c left join orders o on o.country = c.id group by 1", true),
            // count(*) counts each shard's NULL-extended row.
            ("select c.id, count(*) from countries c left join orders o on o.country = c.id group by c.id", false),
            // Plain rows, kept columns in an aggregate, matched columns outside, WHERE on the
            // matched side, unqualified columns, DISTINCT, array_agg (keeps NULLs).
            ("select c.id, o.id from countries c left join orders o on o.country = c.id", false),
            ("select count(c.id) from countries c left join orders o on o.country = c.id", false),
            ("select o.status, count(o.id) from countries c left join orders o on o.country = c.id group by o.status", false),
            ("select c.id, count(o.id) from countries c left join orders o on o.country = c.id where o.total is null group by c.id", false),
            ("select id, count(o.id) from countries c left join orders o on o.country = c.id group by id", false),
            ("select distinct c.id, count(o.id) from countries c left join orders o on o.country = c.id group by c.id", false),
            ("select c.id, array_agg(o.id) from countries c left join orders o on o.country = c.id group by c.id", false),
        ];
        for (sql, exact) in cases {
            assert_eq!(
                merges_exactly(&select(sql), &kept, &matched),
                exact,
                "{sql}"
            );
        }
    }

    #[test]
    fn qualifiers_name_each_item_of_a_side() {
        let s = select(
            "select 1 from countries c join regions on true, generate_series(1, 3) g, (select 1) x",
        );
        let mut out = Vec::new();
        for item in &s.from_clause {
            qualifiers(item, &mut out);
        }
        assert_eq!(out, ["c", "regions", "g", "x"]);
    }
}
