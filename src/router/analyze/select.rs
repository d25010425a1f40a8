//! SELECT (and VALUES, TABLE): its tables and key, whether answering it from several shards
//! needs a merge and how, and `SELECT pgshard.next_id()`, which the proxy answers itself.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::scan::{node, scan_walk, str_of, Scan};
use super::tables::{tables_and_key, Ctx};
use super::walk::Walk;
use super::{Flow, LocalCommand, Refused, ShardedTables, StatementFacts, StatementKind};

fn merge_construct(s: &pb::SelectStmt) -> Option<String> {
    if !s.sort_clause.is_empty() {
        return Some("ORDER BY".into());
    }
    if s.limit_count.is_some() {
        return Some("LIMIT".into());
    }
    if s.limit_offset.is_some() {
        return Some("OFFSET".into());
    }
    // Aggregates of subqueries are their own, not this statement's.
    let mut scan = scan_walk(Walk::of_list(&s.target_list).this_level());
    if let Some(h) = &s.having_clause {
        let hs = scan_walk(Walk::of(h).this_level());
        scan.funcs.extend(hs.funcs);
    }
    if let Some(f) = scan.funcs.iter().find(|f| f.aggregate && !f.window) {
        return Some(format!("aggregate {}()", f.last()));
    }
    if !s.group_clause.is_empty() {
        return Some("GROUP BY".into());
    }
    if s.having_clause.is_some() {
        return Some("HAVING".into());
    }
    if !s.distinct_clause.is_empty() {
        return Some("DISTINCT".into());
    }
    if scan.funcs.iter().any(|f| f.window) || !s.window_clause.is_empty() {
        return Some("window function".into());
    }
    None
}

fn set_op_name(op: i32) -> Option<&'static str> {
    match op {
        x if x == pb::SetOperation::SetopUnion as i32 => Some("UNION"),
        x if x == pb::SetOperation::SetopIntersect as i32 => Some("INTERSECT"),
        x if x == pb::SetOperation::SetopExcept as i32 => Some("EXCEPT"),
        _ => None,
    }
}

/// The facts of a SELECT (not `SELECT pgshard.next_id()`).
pub(super) fn analyze_select(
    s: &pb::SelectStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> Flow {
    facts.kind = StatementKind::Select;
    if is_next_id_select(s) {
        facts.local = Some(LocalCommand::NextId);
        return Flow::Finished;
    }
    if s.into_clause.is_some() {
        facts.is_write = true;
    }
    if let Some(op) = set_op_name(s.op) {
        // Tables of the arms are not at the top level: any sharded one is refused below unless
        // the whole statement only reads unsharded tables.
        let mut ctx = Ctx {
            tables,
            refs: Vec::new(),
            quals: Vec::new(),
            using: Vec::new(),
            laterals: Vec::new(),
            correlated_scopes: Vec::new(),
            refuse: None,
        };
        tables_and_key(&mut ctx, scan, None, facts);
        if facts.sharded {
            facts.refuse = Some(Refused::SetOperation { op });
            facts.needs_merge = Some(op.to_string());
        } else {
            facts.refuse = ctx.refuse;
        }
        return Flow::Common;
    }
    let mut ctx = Ctx::new(tables);
    for item in &s.from_clause {
        ctx.add_from_item(item);
    }
    ctx.correlated_scopes.extend(s.target_list.iter());
    tables_and_key(&mut ctx, scan, s.where_clause.as_deref(), facts);
    facts.refuse = facts.refuse.take().or(ctx.refuse.take());
    if facts.sharded {
        facts.needs_merge = merge_construct(s);
        if facts.needs_merge.is_some() && facts.refuse.is_none() {
            let is_key = |n: &pb::Node| ctx.key_column(n).is_some();
            facts.merge =
                Some(crate::router::merge_plan::plan(s, &is_key).map(std::sync::Arc::new));
        }
    }
    Flow::Common
}

/// True for `SELECT pgshard.next_id()` and nothing more.
fn is_next_id_select(s: &pb::SelectStmt) -> bool {
    if s.target_list.len() != 1
        || !s.from_clause.is_empty()
        || s.where_clause.is_some()
        || !s.group_clause.is_empty()
        || s.having_clause.is_some()
        || !s.sort_clause.is_empty()
        || s.limit_count.is_some()
        || s.limit_offset.is_some()
        || !s.distinct_clause.is_empty()
        || s.with_clause.is_some()
        || s.into_clause.is_some()
        || !s.locking_clause.is_empty()
        || !s.values_lists.is_empty()
        || s.op != pb::SetOperation::SetopNone as i32
    {
        return false;
    }
    let Some(NodeEnum::ResTarget(rt)) = s.target_list[0].node.as_ref() else {
        return false;
    };
    let Some(NodeEnum::FuncCall(f)) = node(&rt.val) else {
        return false;
    };
    let name: Vec<String> = f
        .funcname
        .iter()
        .filter_map(str_of)
        .map(str::to_lowercase)
        .collect();
    name == ["pgshard", "next_id"]
        && f.args.is_empty()
        && !f.agg_star
        && !f.agg_distinct
        && f.over.is_none()
        && f.agg_filter.is_none()
        && rt.indirection.is_empty()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn pgbench_statements() {
        let f = one("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;");
        assert_eq!(f.kind, StatementKind::Select);
        assert!(f.sharded && !f.unsharded && !f.is_write);
        assert_eq!(f.key, vals(&[Const(4242)]));
        assert_eq!(f.needs_merge, None);
        let f = one("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        assert_eq!(f.key, vals(&[Param(1)]));
        let f = one("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2");
        assert_eq!(f.kind, StatementKind::Update);
        assert!(f.is_write);
        assert_eq!(f.key, vals(&[Param(2)]));
        let f = one("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)");
        assert_eq!(f.key, vals(&[Param(3)]));
        assert!(f.is_write);
        let f = one("UPDATE pgbench_tellers SET tbalance = tbalance + 5 WHERE tid = 3");
        assert!(!f.sharded && f.unsharded);
        assert_eq!(one("BEGIN").kind, StatementKind::Begin);
        assert_eq!(one("END").kind, StatementKind::Commit);
    }

    #[test]
    fn psql_catalog_query() {
        let f = one("SELECT n.nspname as \"Schema\", c.relname as \"Name\" FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','') ORDER BY 1,2;");
        assert!(!f.sharded && f.unsharded);
        assert_eq!(f.refuse, None);
        assert_eq!(f.needs_merge, None);
        let f = one("SELECT 1");
        assert!(!f.sharded && !f.unsharded);
    }

    #[test]
    fn where_keys() {
        assert_eq!(
            one("select * from users where user_id = -5").key,
            vals(&[Const(-5)])
        );
        assert_eq!(
            one("select * from users where 7 = user_id and x > 1").key,
            vals(&[Const(7)])
        );
        assert_eq!(
            one("select * from users u where u.user_id = $1::bigint").key,
            vals(&[Param(1)])
        );
        assert_eq!(
            one("select * from users where users.user_id = '5'::int8").key,
            vals(&[Text("5".into())])
        );
        assert_eq!(
            one("select * from users where user_id in (1, $2, 3)").key,
            vals(&[Const(1), Param(2), Const(3)])
        );
        assert_eq!(
            one("select * from users where user_id = any($1)").key,
            KeyFacts::ArrayParam(1)
        );
        assert_eq!(
            one("select * from users where user_id = any('{1,2}')").key,
            vals(&[Text("1".into()), Text("2".into())])
        );
        assert_eq!(
            one("select * from users where user_id = any('{\"a b\",c}'::text[])").key,
            vals(&[Text("a b".into()), Text("c".into())])
        );
        assert_eq!(
            one("select * from users where user_id = any('{a,NULL}')").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("select * from users where user_id = 1 or user_id = 2").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("select * from users where user_id not in (1, 2)").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("select * from users where user_id > 5").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("select * from users where user_id = -$1").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("select * from users where other.user_id = 5").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("select * from users where user_id = 9223372036854775807").key,
            vals(&[Const(i64::MAX)])
        );
        assert_eq!(
            one("select * from users where user_id = -9223372036854775808").key,
            vals(&[Const(i64::MIN)])
        );
        assert_eq!(
            one("select * from users where user_id = 1 and (a = 1 or b = 2)").key,
            vals(&[Const(1)])
        );
        assert_eq!(one("select * from users").key, KeyFacts::Unknown);
    }

    #[test]
    fn joins() {
        let f =
            one("select * from users u join orders o on o.user_id = u.user_id where u.user_id = 5");
        assert_eq!(f.refuse, None);
        assert_eq!(f.key, vals(&[Const(5)]));
        let f = one("select * from users join orders using (user_id)");
        assert_eq!(f.refuse, None);
        let f = one("select * from users u, orders o where u.user_id = o.user_id");
        assert_eq!(f.refuse, None);
        assert_eq!(f.key, KeyFacts::Unknown);
        refused(
            "select * from users u join orders o on o.id = u.user_id",
            "join of sharded tables users and orders",
        );
        refused("select * from users u, orders o", "not co-located");
        refused(
            "select * from users u join countries c on c.id = u.country_id",
            "sharded table users with unsharded table countries",
        );
        let f = one("select * from users u join pg_catalog.pg_class c on true where u.user_id = 1");
        assert_eq!(f.refuse, None);
    }

    #[test]
    fn correlated_subqueries_on_the_shard_key_run_on_each_shard() {
        for sql in [
            "select * from users u where exists (select 1 from orders o where o.user_id = u.user_id)",
            "select * from users u where u.user_id = 3 and not exists (select 1 from orders o where o.user_id = u.user_id and o.total > 5)",
            "select * from users where name = 'a' and exists (select 1 from orders where orders.user_id = users.user_id)",
            "select u.user_id from users u where 10 < (select sum(total) from orders o where u.user_id = o.user_id)",
            "select * from users u where exists (select 1 from orders o join orders p on p.user_id = o.user_id where o.user_id = u.user_id and p.user_id = u.user_id)",
            "select * from users u where u.email in (select o.note from orders o where o.user_id = u.user_id)",
            "update users u set name = 'x' where exists (select 1 from orders o where o.user_id = u.user_id)",
            "delete from users u where not exists (select 1 from orders o where o.user_id = u.user_id)",
            "select (select count(*) from orders o where o.user_id = u.user_id) from users u",
            "select u.name, (select sum(total) from orders o where o.user_id = u.user_id) as spent from users u where u.user_id = 4 order by 2",
            "select u.user_id, x.total from users u, lateral (select total from orders o where o.user_id = u.user_id order by total desc limit 1) x",
            "select u.user_id, x.n from users u cross join lateral (select count(*) n from orders o where o.user_id = u.user_id) x where u.user_id = 3",
            "select u.user_id, x.total from users u left join lateral (select total from orders o where o.user_id = u.user_id limit 2) x on true",
        ] {
            let f = one(sql);
            assert_eq!(f.refuse, None, "{sql}");
            assert!(f.sharded, "{sql}");
        }
        let f = one("select * from users u where u.user_id = 7 and exists (select 1 from orders o where o.user_id = u.user_id)");
        assert!(f.key_values_named(), "routed by the outer key");
        for sql in [
            // Not on the key, uncorrelated, correlated under OR, through a non-key column.
            "select * from users u where exists (select 1 from orders o where o.total = u.user_id)",
            "select * from users u where exists (select 1 from orders o where o.user_id = 5)",
            "select * from users u where exists (select 1 from orders o where o.user_id = u.user_id or o.total > 1)",
            "select * from users u where exists (select 1 from orders o where o.user_id = u.email)",
            // A second inner table not correlated, a nested subquery, a subquery in the select list.
            "select * from users u where exists (select 1 from orders o, orders p where o.user_id = u.user_id)",
            "select * from users u where exists (select 1 from orders o where o.user_id = u.user_id and o.total in (select total from orders))",
            "select (select count(*) from orders o where o.total = u.user_id) from users u",
            "select * from users u where exists (select 1 from orders o left join orders p on p.user_id = o.user_id where o.user_id = u.user_id)",
            // LATERAL not correlated by key, or not LATERAL at all.
            "select * from users u, lateral (select total from orders o where o.total = u.user_id) x",
            "select * from users u, lateral (select total from orders o order by total limit 1) x",
            "select * from users u, (select total from orders o) x",
        ] {
            let f = one(sql);
            assert!(
                matches!(f.refuse, Some(Refused::SubqueryOverSharded { .. })),
                "{sql}: {:?}",
                f.refuse
            );
        }
    }

    #[test]
    fn subqueries_and_ctes() {
        refused(
            "select * from users where user_id in (select user_id from orders)",
            "subquery over sharded table orders",
        );
        refused(
            "with x as (select * from users) select * from x",
            "subquery over sharded table users",
        );
        refused(
            "select * from (select * from users) s",
            "subquery over sharded table users",
        );
        let f = one("with x as (select 1 as a) select * from users, x where user_id = 1");
        assert_eq!(f.refuse, None);
        let f = one("with x as (select * from countries) select * from x");
        assert!(!f.sharded && f.unsharded);
        let f = one("with d as (delete from logs returning *) select * from d");
        assert!(f.is_write);
        refused("select * from users union select * from users", "UNION");
        let f = one("select 1 union all select 2");
        assert_eq!(f.refuse, None);
    }

    #[test]
    fn merges_needed() {
        let m = |sql: &str| one(sql).needs_merge;
        assert_eq!(
            m("select * from users order by name"),
            Some("ORDER BY".into())
        );
        assert_eq!(m("select * from users limit 5"), Some("LIMIT".into()));
        assert_eq!(m("select * from users offset 5"), Some("OFFSET".into()));
        assert_eq!(
            m("select count(*) from users"),
            Some("aggregate count()".into())
        );
        assert_eq!(
            m("select max(user_id) from users"),
            Some("aggregate max()".into())
        );
        assert_eq!(
            m("select name from users group by name"),
            Some("GROUP BY".into())
        );
        assert_eq!(
            m("select distinct name from users"),
            Some("DISTINCT".into())
        );
        assert_eq!(
            m("select row_number() over () from users"),
            Some("window function".into())
        );
        assert_eq!(m("select * from users for update"), None);
        assert_eq!(m("select * from users"), None);
        assert_eq!(m("select count(*) from pg_class"), None);
    }
}
