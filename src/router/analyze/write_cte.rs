//! A SELECT that reads only the rows of its one data-modifying CTE over a sharded table, as
//! applications purge or touch rows and report them in one statement: `WITH d AS (DELETE FROM
//! events WHERE at < $1 RETURNING *) SELECT count(*) FROM d`. The UPDATE or DELETE changes each
//! shard's own rows and returns only them, so every shard runs the whole statement over its own
//! rows and the outer SELECT merges as over a table; the write's shards commit together, as for
//! the UPDATE or DELETE alone. Anything else with a data-modifying CTE over sharded tables stays
//! refused (`router::cte`).

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::scan::scan_walk;
use super::select::merge_construct;
use super::walk::Walk;
use super::write::{analyze_delete, analyze_update};
use super::{ShardedTables, StatementFacts, StatementKind};

/// The facts of `s` when it is a SELECT over its one UPDATE or DELETE CTE of a sharded table
/// (see the module doc): those of the write (tables, key, refusal, a write), with the SELECT's
/// kind and its merge. `false` (facts untouched) for any other statement.
pub(super) fn over_write_cte(
    s: &pb::SelectStmt,
    tables: &ShardedTables,
    facts: &mut StatementFacts,
) -> bool {
    let Some((name, write)) = lone_write_cte(s) else {
        return false;
    };
    // The SELECT around it reads the CTE once and nothing else (no table, no second look at
    // the CTE in a subquery, whose rows would be each shard's alone).
    let outer = pb::SelectStmt {
        with_clause: None,
        ..s.clone()
    };
    let outer_scan = scan_walk(Walk::new([NodeRef::SelectStmt(&outer)]));
    if outer_scan.relations != [(String::new(), name.to_lowercase())] {
        return false;
    }
    let write_scan = scan_walk(Walk::new([write.to_ref()]));
    if !write_scan.ctes.is_empty() {
        return false;
    }
    let mut written = facts.clone();
    match write {
        NodeEnum::UpdateStmt(u) => analyze_update(u, tables, &write_scan, &mut written),
        NodeEnum::DeleteStmt(d) => analyze_delete(d, tables, &write_scan, &mut written),
        _ => return false,
    }
    if !written.sharded || written.returns_no_rows {
        return false;
    }
    written.kind = StatementKind::Select;
    written.write_in_cte = true;
    written.returns_no_rows = false;
    written.needs_merge = merge_construct(s);
    if written.needs_merge.is_some() && written.refuse.is_none() {
        // The CTE's columns are not known to be keys: grouped and counted values merge whole.
        written.merge =
            Some(crate::router::merge_plan::plan(s, &|_| false).map(std::sync::Arc::new));
    }
    *facts = written;
    true
}

/// The name and the UPDATE or DELETE of `s`'s WITH when `s` is a plain SELECT whose only FROM
/// item is that CTE, with no other CTE, no set operation, no locking clause and no INTO.
fn lone_write_cte(s: &pb::SelectStmt) -> Option<(&str, &NodeEnum)> {
    let with = s.with_clause.as_ref()?;
    let plain = !with.recursive
        && s.op == pb::SetOperation::SetopNone as i32
        && s.into_clause.is_none()
        && s.locking_clause.is_empty()
        && s.values_lists.is_empty();
    let ([cte], [from]) = (with.ctes.as_slice(), s.from_clause.as_slice()) else {
        return None;
    };
    if !plain {
        return None;
    }
    let Some(NodeEnum::CommonTableExpr(cte)) = cte.node.as_ref() else {
        return None;
    };
    let Some(NodeEnum::RangeVar(rv)) = from.node.as_ref() else {
        return None;
    };
    if !rv.schemaname.is_empty() || rv.relname != cte.ctename {
        return None;
    }
    let write = cte.ctequery.as_deref()?.node.as_ref()?;
    matches!(write, NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_))
        .then_some((cte.ctename.as_str(), write))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    /// (statement, runs whole on each shard as a write over its CTE)
    const CASES: &[(&str, bool)] = &[
        ("with d as (delete from users where name = 'x' returning *) select count(*) from d", true),
        ("with d as (update users set name = 'y' where name = 'x' returning user_id) select user_id from d order by user_id limit 3", true),
        ("with d as (delete from users where user_id = 5 returning *) select * from d", true),
        ("with d as (delete from orders o using users u where o.user_id = u.user_id and u.name = 'x' returning o.*) select count(*) from d", true),
        // The SELECT reads something besides the CTE's rows, or the CTE twice.
        ("with d as (delete from users where name = 'x' returning *) select count(*) from d, orders", false),
        ("with d as (delete from users where name = 'x' returning user_id) select * from d where user_id in (select user_id from orders)", false),
        ("with d as (delete from users where name = 'x' returning user_id) select * from d where user_id > (select avg(user_id) from d)", false),
        // Not one UPDATE or DELETE CTE.
        ("with d as (insert into users (user_id) values (1), (2) returning *) select count(*) from d", false),
        ("with a as (select 1), d as (delete from users where name = 'x' returning *) select count(*) from d", false),
        ("with d as (delete from users where name = 'x') select 1", false),
        ("with d as (delete from users where name = 'x' returning *) select count(*) from d union all select 1", false),
    ];

    #[test]
    fn writes_in_a_cte_that_run_whole_on_each_shard() {
        for (sql, whole) in CASES {
            let f = one(sql);
            assert_eq!(f.write_in_cte, *whole, "{sql}: {f:?}");
            if *whole {
                assert!(
                    f.is_write && f.sharded && f.refuse.is_none(),
                    "{sql}: {f:?}"
                );
                assert_eq!(f.kind, StatementKind::Select, "{sql}");
                assert!(
                    f.needs_merge.is_none() || matches!(f.merge, Some(Ok(_))),
                    "{sql}: {f:?}"
                );
            }
        }
        // The key of the write's WHERE routes it.
        assert_eq!(
            one("with d as (delete from users where user_id = 5 returning *) select * from d").key,
            vals(&[Const(5)])
        );
        // The write's own refusal stays.
        refused(
            "with d as (update users set user_id = 7 where name = 'x' returning *) select count(*) from d",
            "UPDATE of shard key",
        );
    }
}
