//! Derived tables over sharded tables: `SELECT count(*) FROM (SELECT … FROM users …) AS anon_1`
//! (SQLAlchemy's `Query.count()`, Rails' `count` of a limited relation, Django's `count()` of a
//! distinct or sliced queryset). A subquery in FROM that is not LATERAL cannot see the rest of
//! its statement, so it means the same whatever the statement does around it: pgshard runs it
//! first on its own (keyed, or over every shard and merged exactly) and writes its rows in its
//! place, `(SELECT * FROM unnest(…) AS pgshard_derived(columns)) AS anon_1`, as for a CTE.
//! Only the columns the statement reads of it are written back. Pure: text in, texts out.
//!
//! A SELECT over a *row-local* derived table (every row of it computed from one shard's rows:
//! no aggregate, DISTINCT, LIMIT, … inside) never gets here: it runs whole on each shard and
//! its outer query is merged as over a table (see `analyze::select::over_row_local_derived`),
//! so its rows never pass through the proxy. This is for the others, and for statements whose
//! outer query the merge cannot reproduce.

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::analyze::Walk;
use super::pull_up::{read_columns, PullUp, PLACEHOLDER};
use super::set_op_branches::deparse as select_deparse;
use super::subquery_first::cte_names;
use crate::sql_text::deparse;

/// The name the derived table's rows take inside its parentheses.
pub(super) const ROWS: &str = "pgshard_derived";

/// The first derived table in the FROM of `sql` (one SELECT, UPDATE … FROM or DELETE … USING;
/// joins included) whose query reads sharded tables (`reads_sharded` says which texts do) and
/// names none of the statement's CTEs: what runs first, and the statement its rows go into.
pub fn find(sql: &str, reads_sharded: &dyn Fn(&str) -> bool) -> Option<PullUp> {
    let mut parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let version = parsed.version;
    let [raw] = parsed.stmts.as_mut_slice() else {
        return None;
    };
    let stmt = raw.stmt.as_deref_mut()?.node.as_mut()?;
    let (from, with) = match stmt {
        NodeEnum::SelectStmt(s) if s.op == pb::SetOperation::SetopNone as i32 => {
            (&mut s.from_clause, s.with_clause.as_ref())
        }
        NodeEnum::UpdateStmt(u) => (&mut u.from_clause, u.with_clause.as_ref()),
        NodeEnum::DeleteStmt(d) => (&mut d.using_clause, d.with_clause.as_ref()),
        _ => return None,
    };
    let ctes = cte_names(with);
    let usable = |q: &pb::SelectStmt| {
        let names_cte = Walk::new([NodeRef::SelectStmt(q)]).any(
            |n| matches!(n, NodeRef::RangeVar(rv) if rv.schemaname.is_empty() && ctes.contains(&rv.relname)),
        );
        if names_cte {
            return None;
        }
        select_deparse(version, q.clone()).filter(|text| reads_sharded(text))
    };
    let taken = from.iter_mut().find_map(|item| take(item, &usable))?;
    // The columns the statement reads of the derived table, its query gone.
    let columns = if taken.renamed {
        None
    } else {
        read_columns(Walk::new([stmt.to_ref()]), &[&taken.alias])
    };
    put_placeholder(stmt);
    let outer = deparse(parsed)?;
    (outer.matches(PLACEHOLDER).count() == 1)
        .then(|| PullUp::replacing(taken.inner, outer, ROWS, columns))
}

/// `COPY (query) TO …` whose query reaches several shards and cannot be gathered by
/// concatenating their COPY streams (an ORDER BY, aggregates, a LIMIT): the query runs first
/// (keyed, or merged as any read), and the COPY runs on one shard over its rows, in their order,
/// with its own options (format, header, delimiters) applied by Postgres.
pub fn copy_query(sql: &str) -> Option<PullUp> {
    let mut parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let version = parsed.version;
    let [raw] = parsed.stmts.as_mut_slice() else {
        return None;
    };
    let Some(NodeEnum::CopyStmt(copy)) = raw.stmt.as_deref_mut()?.node.as_mut() else {
        return None;
    };
    if copy.is_from {
        return None;
    }
    let Some(NodeEnum::SelectStmt(query)) = copy.query.as_deref()?.node.as_ref() else {
        return None;
    };
    let inner = select_deparse(version, (**query).clone())?;
    copy.query = Some(Box::new(select_of(PLACEHOLDER, true)));
    let outer = deparse(parsed)?;
    (outer.matches(PLACEHOLDER).count() == 1).then(|| PullUp::replacing(inner, outer, ROWS, None))
}

pub(super) fn res_target(val: pb::Node) -> pb::Node {
    pb::Node {
        node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
            val: Some(Box::new(val)),
            location: -1,
            ..Default::default()
        }))),
    }
}

pub(super) fn select_star() -> Vec<pb::Node> {
    vec![res_target(pb::Node {
        node: Some(NodeEnum::ColumnRef(pb::ColumnRef {
            fields: vec![pb::Node {
                node: Some(NodeEnum::AStar(pb::AStar {})),
            }],
            location: -1,
        })),
    })]
}

/// A derived table taken out of its statement.
struct Taken {
    /// Its query's text.
    inner: String,
    /// Its alias (a derived table must have one before PostgreSQL 16; `""` without).
    alias: String,
    /// Its alias renames its columns (`AS x(a, b)`): they are written back by position, all.
    renamed: bool,
}

/// The query of the first usable derived table under `item` (a FROM item), replaced by
/// `SELECT FROM` [`TAKEN`] (reading no column) until the placeholder goes in.
fn take(item: &mut pb::Node, usable: &dyn Fn(&pb::SelectStmt) -> Option<String>) -> Option<Taken> {
    match item.node.as_mut()? {
        NodeEnum::RangeSubselect(r) if !r.lateral => {
            let Some(NodeEnum::SelectStmt(q)) = r.subquery.as_deref()?.node.as_ref() else {
                return None;
            };
            let inner = usable(q)?;
            let (alias, renamed) = r.alias.as_ref().map_or((String::new(), false), |a| {
                (a.aliasname.clone(), !a.colnames.is_empty())
            });
            r.subquery = Some(Box::new(select_of(TAKEN, false)));
            Some(Taken {
                inner,
                alias,
                renamed,
            })
        }
        NodeEnum::JoinExpr(j) => {
            let left = j.larg.as_deref_mut().and_then(|l| take(l, usable));
            left.or_else(|| j.rarg.as_deref_mut().and_then(|r| take(r, usable)))
        }
        _ => None,
    }
}

/// The name of the relation that marks the taken query while the statement's columns are read.
pub(super) const TAKEN: &str = "pgshard_derived_taken";

/// `SELECT * FROM name`, or without `star` `SELECT FROM name` (which reads no column).
pub(super) fn select_of(name: &str, star: bool) -> pb::Node {
    let all = pb::Node {
        node: Some(NodeEnum::ColumnRef(pb::ColumnRef {
            fields: vec![pb::Node {
                node: Some(NodeEnum::AStar(pb::AStar {})),
            }],
            location: -1,
        })),
    };
    pb::Node {
        node: Some(NodeEnum::SelectStmt(Box::new(pb::SelectStmt {
            target_list: [pb::Node {
                node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
                    val: Some(Box::new(all)),
                    location: -1,
                    ..Default::default()
                }))),
            }]
            .into_iter()
            .filter(|_| star)
            .collect(),
            from_clause: vec![pb::Node {
                node: Some(NodeEnum::RangeVar(pb::RangeVar {
                    relname: name.into(),
                    inh: true,
                    relpersistence: "p".into(),
                    location: -1,
                    ..Default::default()
                })),
            }],
            limit_option: pb::LimitOption::Default as i32,
            op: pb::SetOperation::SetopNone as i32,
            ..Default::default()
        }))),
    }
}

/// Replaces the marker relation by [`PLACEHOLDER`], where the rows go.
pub(super) fn put_placeholder(stmt: &mut NodeEnum) {
    let from = match stmt {
        NodeEnum::SelectStmt(s) => &mut s.from_clause,
        NodeEnum::UpdateStmt(u) => &mut u.from_clause,
        NodeEnum::DeleteStmt(d) => &mut d.using_clause,
        _ => return,
    };
    for item in from.iter_mut() {
        mark(item);
    }
}

fn mark(item: &mut pb::Node) {
    match item.node.as_mut() {
        Some(NodeEnum::RangeSubselect(r)) => {
            let marked = matches!(
                r.subquery.as_deref().and_then(|q| q.node.as_ref()),
                Some(NodeEnum::SelectStmt(s)) if s.from_clause.iter().any(|f| matches!(f.node.as_ref(), Some(NodeEnum::RangeVar(rv)) if rv.relname == TAKEN))
            );
            if marked {
                r.subquery = Some(Box::new(select_of(PLACEHOLDER, true)));
            }
        }
        Some(NodeEnum::JoinExpr(j)) => {
            if let Some(l) = j.larg.as_deref_mut() {
                mark(l);
            }
            if let Some(r) = j.rarg.as_deref_mut() {
                mark(r);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::router::pull_up::tests::desc;

    pub(crate) fn sharded(text: &str) -> bool {
        text.contains("users") || text.contains("orders")
    }

    pub(crate) fn row(vals: &[&str]) -> Vec<u8> {
        let vals: Vec<Option<&str>> = vals.iter().map(|v| Some(*v)).collect();
        crate::router::pull_up::tests::row(&vals)
    }

    #[test]
    fn derived_tables_over_sharded_tables_run_first() {
        // SQLAlchemy's Query.count(): no column of the derived table is read, one is kept.
        let sql = "SELECT count(*) AS count_1 FROM (SELECT users.user_id AS users_user_id, users.name AS users_name FROM users WHERE users.name LIKE $1) AS anon_1";
        let p = find(sql, &sharded).expect("found");
        assert_eq!(
            p.inner,
            "SELECT users.user_id AS users_user_id, users.name AS users_name FROM users WHERE users.name LIKE $1"
        );
        let d = desc(&[("users_user_id", 20), ("users_name", 25)]);
        assert_eq!(
            p.splice(&d, &[row(&["1", "a"]), row(&["2", "b"])]).unwrap(),
            "SELECT count(*) AS count_1 FROM (SELECT * FROM unnest(E'{1,2}'::int8[]) AS pgshard_derived(users_user_id)) anon_1"
        );
        // Joined, read by name; the other side stays as it is.
        let sql = "SELECT u.name, x.n FROM users u JOIN (SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id) x ON x.customer_id = u.user_id";
        let p = find(sql, &sharded).expect("found");
        assert_eq!(
            p.inner,
            "SELECT customer_id, count(*) AS n FROM orders GROUP BY customer_id"
        );
        let d = desc(&[("customer_id", 20), ("n", 20)]);
        assert_eq!(
            p.splice(&d, &[row(&["7", "3"])]).unwrap(),
            "SELECT u.name, x.n FROM users u JOIN (SELECT * FROM unnest(E'{7}'::int8[], E'{3}'::int8[]) AS pgshard_derived(customer_id, n)) x ON x.customer_id = u.user_id"
        );
        // Renamed columns and whole rows keep every column.
        for sql in [
            "SELECT a FROM (SELECT customer_id, 1 FROM orders) s(a, b)",
            "SELECT * FROM (SELECT customer_id, id FROM orders) s",
            "SELECT row_to_json(s) FROM (SELECT customer_id, id FROM orders) s",
        ] {
            let p = find(sql, &sharded).expect(sql);
            let d = desc(&[("customer_id", 20), ("id", 20)]);
            let got = p.splice(&d, &[row(&["7", "3"])]).unwrap();
            assert!(
                got.contains("AS pgshard_derived(customer_id, id)"),
                "{sql}: {got}"
            );
        }
        // UPDATE … FROM and DELETE … USING.
        let sql = "UPDATE users SET name = s.n FROM (SELECT customer_id, max(status) AS n FROM orders GROUP BY 1) s WHERE s.customer_id = users.user_id";
        assert!(find(sql, &sharded).is_some());
        let sql = "DELETE FROM users USING (SELECT DISTINCT customer_id FROM orders) s WHERE s.customer_id = users.user_id";
        assert!(find(sql, &sharded).is_some());
    }

    #[test]
    fn copy_of_a_query_runs_its_query_first() {
        let sql = "COPY (SELECT user_id, name FROM users ORDER BY name LIMIT 3) TO STDOUT WITH (FORMAT csv, HEADER)";
        let p = copy_query(sql).expect("found");
        assert_eq!(
            p.inner,
            "SELECT user_id, name FROM users ORDER BY name LIMIT 3"
        );
        let d = desc(&[("user_id", 20), ("name", 25)]);
        assert_eq!(
            p.splice(&d, &[row(&["2", "a"]), row(&["1", "b"])]).unwrap(),
            "COPY (SELECT * FROM unnest(E'{2,1}'::int8[], E'{a,b}'::text[]) AS pgshard_derived(user_id, name)) TO STDOUT WITH (FORMAT CSV, HEADER)"
        );
        for sql in ["COPY users TO STDOUT", "COPY users FROM STDIN", "SELECT 1"] {
            assert_eq!(copy_query(sql), None, "{sql}");
        }
    }

    #[test]
    fn other_shapes_are_left_alone() {
        for sql in [
            // Nothing sharded in it.
            "SELECT * FROM (SELECT 1) s",
            "SELECT * FROM (SELECT * FROM countries) s",
            // LATERAL sees the row beside it.
            "SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.customer_id = u.user_id) x",
            // Names one of the statement's CTEs.
            "WITH c AS (SELECT 1 AS k) SELECT * FROM (SELECT * FROM orders JOIN c ON c.k = orders.id) s",
            // Not in the FROM of the statement itself.
            "SELECT * FROM users WHERE user_id IN (SELECT customer_id FROM (SELECT customer_id FROM orders) s)",
            "SELECT 1 UNION SELECT * FROM (SELECT customer_id FROM orders) s",
            "INSERT INTO users (user_id) SELECT customer_id FROM (SELECT customer_id FROM orders) s",
        ] {
            assert_eq!(find(sql, &sharded), None, "{sql}");
        }
    }
}
