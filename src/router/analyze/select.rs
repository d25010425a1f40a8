//! SELECT (and VALUES, TABLE): its tables and key, whether answering it from several shards
//! needs a merge and how, and `SELECT pgshard.next_id()`, which the proxy answers itself. A
//! SELECT whose only FROM item is a row-local derived table is analysed over that table's query.

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::scan::{node, scan_walk, str_of, Scan};
use super::tables::{strip_casts, tables_and_key, Ctx};
use super::walk::Walk;
use super::{Flow, LocalCommand, NotifyArg, Refused, ShardedTables, StatementFacts, StatementKind};

pub(super) fn merge_construct(s: &pb::SelectStmt) -> Option<String> {
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
    if let Some(notify) = pg_notify_select(s) {
        facts.local = Some(notify);
        return Flow::Finished;
    }
    if s.into_clause.is_some() {
        facts.is_write = true;
    }
    facts.locks_rows = !s.locking_clause.is_empty();
    if let Some(op) = set_op_name(s.op) {
        // Tables of the arms are not at the top level: any sharded one is refused below unless
        // the whole statement only reads unsharded tables.
        let mut ctx = Ctx::new(tables);
        tables_and_key(&mut ctx, scan, None, facts);
        if facts.sharded {
            facts.refuse = Some(Refused::SetOperation { op });
            facts.needs_merge = Some(op.to_string());
        } else {
            facts.refuse = ctx.refuse;
        }
        return Flow::Common;
    }
    if over_row_local_derived(s, tables, scan, facts)
        || super::write_cte::over_write_cte(s, tables, facts)
    {
        return Flow::Common;
    }
    let mut ctx = Ctx::new(tables);
    ctx.select = Some(s);
    for item in &s.from_clause {
        ctx.add_from_item(item);
    }
    ctx.correlated_scopes.extend(s.target_list.iter());
    tables_and_key(&mut ctx, scan, s.where_clause.as_deref(), facts);
    facts.refuse = facts.refuse.take().or(ctx.refuse.take());
    if facts.sharded {
        facts.needs_merge = merge_construct(s);
        if facts.needs_merge.is_some() && facts.refuse.is_none() {
            let is_key = |n: &pb::Node| ctx.is_placed_key(n);
            facts.merge =
                Some(crate::router::merge_plan::plan(s, &is_key).map(std::sync::Arc::new));
        }
    }
    Flow::Common
}

/// A SELECT whose only FROM item is a row-local derived table (see [`row_local_core`]), as
/// ORMs count (`SELECT count(*) FROM (SELECT … FROM users WHERE …) AS anon_1`): every row of
/// the derived table comes from one shard's rows, so each shard runs the whole statement over
/// its own rows and the outer query merges as over a table. Its tables, co-location and key
/// are those of the derived table's query; its merge is the outer query's plan. `false` (the
/// facts untouched) when anything is refused or the merge cannot be planned: the derived table
/// is then run first and its rows written back (`router::derived`), which is exact for any
/// query.
fn over_row_local_derived(
    s: &pb::SelectStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> bool {
    let Some(core) = row_local_core(s, scan) else {
        return false;
    };
    let mut ctx = Ctx::new(tables);
    for item in &core.from_clause {
        ctx.add_from_item(item);
    }
    ctx.correlated_scopes.extend(core.target_list.iter());
    let mut derived = facts.clone();
    tables_and_key(&mut ctx, scan, core.where_clause.as_deref(), &mut derived);
    if !derived.sharded || derived.refuse.is_some() || ctx.refuse.is_some() {
        return false;
    }
    derived.needs_merge = merge_construct(s);
    if derived.needs_merge.is_some() {
        let is_key = |n: &pb::Node| derived_key(n, s, core, &ctx);
        match crate::router::merge_plan::plan(s, &is_key) {
            Ok(plan) => derived.merge = Some(Ok(std::sync::Arc::new(plan))),
            Err(_) => return false,
        }
    }
    *facts = derived;
    true
}

/// The query of the single derived table (not LATERAL) that is the whole FROM of `s`.
fn derived_of(s: &pb::SelectStmt) -> Option<&pb::SelectStmt> {
    let [item] = s.from_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::RangeSubselect(r)) = item.node.as_ref() else {
        return None;
    };
    if r.lateral {
        return None;
    }
    match r.subquery.as_deref()?.node.as_ref()? {
        NodeEnum::SelectStmt(q) => Some(q),
        _ => None,
    }
}

/// The innermost query of `s`'s derived tables when `s` (one SELECT) reads only a row-local
/// derived table, itself possibly over row-local derived tables: the query whose FROM holds
/// the tables, and every relation of the statement (`scan`) sits in it.
fn row_local_core<'a>(s: &'a pb::SelectStmt, scan: &Scan) -> Option<&'a pb::SelectStmt> {
    if s.with_clause.is_some() || s.into_clause.is_some() || !s.locking_clause.is_empty() {
        return None;
    }
    let mut core = derived_of(s)?;
    let unordered = one_row_of_aggregates(s);
    loop {
        if !row_local(core, unordered) {
            return None;
        }
        match derived_of(core) {
            Some(inner) => core = inner,
            None => break,
        }
    }
    let inside = scan_walk(Walk::new([NodeRef::SelectStmt(core)]));
    (inside.relations.len() == scan.relations.len()).then_some(core)
}

/// Whether every row of `q` is computed from one row (or one joined row) of its FROM: no
/// aggregate, GROUP BY, HAVING, DISTINCT, window function, LIMIT/OFFSET, set operation, CTE or
/// locking clause, and no output column each shard computes for itself (`now()`), which one
/// Postgres computes once. An ORDER BY is allowed only when `unordered`: the statement around
/// it answers one row of aggregates, which the order of its input does not change (the merge
/// refuses the aggregates it would change: `string_agg`, `array_agg`, …).
fn row_local(q: &pb::SelectStmt, unordered: bool) -> bool {
    let plain = q.op == pb::SetOperation::SetopNone as i32
        && q.with_clause.is_none()
        && q.into_clause.is_none()
        && q.locking_clause.is_empty()
        && q.values_lists.is_empty();
    if !plain {
        return false;
    }
    if !q.sort_clause.is_empty() {
        let sorted_by = scan_walk(Walk::of_list(&q.sort_clause).this_level());
        if !unordered || sorted_by.funcs.iter().any(|f| f.aggregate || f.window) {
            return false;
        }
    }
    let unsorted = pb::SelectStmt {
        sort_clause: Vec::new(),
        ..q.clone()
    };
    merge_construct(&unsorted).is_none()
        && !q
            .target_list
            .iter()
            .any(|t| crate::router::merge_plan::per_shard_value(t).is_some())
}

/// Whether `s` answers one row of aggregates: aggregates (or HAVING) without GROUP BY,
/// DISTINCT or window functions.
fn one_row_of_aggregates(s: &pb::SelectStmt) -> bool {
    let funcs = scan_walk(Walk::of_list(&s.target_list).this_level()).funcs;
    s.group_clause.is_empty()
        && s.distinct_clause.is_empty()
        && s.window_clause.is_empty()
        && !funcs.iter().any(|f| f.window)
        && (s.having_clause.is_some() || funcs.iter().any(|f| f.aggregate))
}

/// Whether `n`, an expression of `s`, is a shard key of the tables of `s`'s derived table
/// `core` (`ctx`: its analysis): a column of the derived table (by name, its alias renaming
/// none) that is one output column of `core` naming a key column. Only for a derived table
/// directly under `s`; `false` when it cannot be told (see [`Ctx::is_placed_key`]).
fn derived_key(n: &pb::Node, s: &pb::SelectStmt, core: &pb::SelectStmt, ctx: &Ctx) -> bool {
    if !derived_of(s).is_some_and(|d| std::ptr::eq(d, core)) {
        return false;
    }
    let Some(NodeEnum::RangeSubselect(r)) = s.from_clause.first().and_then(|i| i.node.as_ref())
    else {
        return false;
    };
    let alias = r.alias.as_ref();
    if alias.is_some_and(|a| !a.colnames.is_empty()) {
        return false;
    }
    let Some(NodeEnum::ColumnRef(cr)) = strip_casts(n).node.as_ref() else {
        return false;
    };
    let column = match cr.fields.as_slice() {
        [c] => str_of(c),
        [q, c] if alias.is_some_and(|a| Some(a.aliasname.as_str()) == str_of(q)) => str_of(c),
        _ => None,
    };
    let Some(column) = column else {
        return false;
    };
    let mut named = Vec::new();
    for t in &core.target_list {
        let Some(NodeEnum::ResTarget(rt)) = t.node.as_ref() else {
            return false;
        };
        let Some(val) = rt.val.as_deref() else {
            return false;
        };
        let name = match val.node.as_ref() {
            _ if !rt.name.is_empty() => Some(rt.name.as_str()),
            Some(NodeEnum::ColumnRef(c)) => match c.fields.last().and_then(|f| f.node.as_ref()) {
                Some(NodeEnum::AStar(_)) => return false,
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            },
            _ => None,
        };
        if name == Some(column) {
            named.push(val);
        }
    }
    matches!(named.as_slice(), [val] if ctx.is_placed_key(val))
}

/// True for `SELECT pgshard.next_id()` and nothing more.
/// The one function call a bare `SELECT f(…) [AS name]` makes (no FROM, WHERE, …, a plain
/// call), its lower-cased name parts and the column name it answers under.
fn lone_call(s: &pb::SelectStmt) -> Option<(&pb::FuncCall, Vec<String>, String)> {
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
        return None;
    }
    let Some(NodeEnum::ResTarget(rt)) = s.target_list[0].node.as_ref() else {
        return None;
    };
    let Some(NodeEnum::FuncCall(f)) = node(&rt.val) else {
        return None;
    };
    let plain = !f.agg_star
        && !f.agg_distinct
        && f.over.is_none()
        && f.agg_filter.is_none()
        && f.agg_order.is_empty()
        && rt.indirection.is_empty();
    if !plain {
        return None;
    }
    let name: Vec<String> = f
        .funcname
        .iter()
        .filter_map(str_of)
        .map(str::to_lowercase)
        .collect();
    let column = match rt.name.as_str() {
        "" => name.last().cloned().unwrap_or_default(),
        alias => alias.to_string(),
    };
    Some((f, name, column))
}

fn is_next_id_select(s: &pb::SelectStmt) -> bool {
    lone_call(s).is_some_and(|(f, name, _)| name == ["pgshard", "next_id"] && f.args.is_empty())
}

/// `SELECT pg_notify(channel, payload)` with each argument a string constant or a parameter
/// (psycopg's way to NOTIFY with values): the proxy queues it as it queues NOTIFY, so a block
/// over several shards can still commit (a shard that ran NOTIFY cannot PREPARE).
fn pg_notify_select(s: &pb::SelectStmt) -> Option<LocalCommand> {
    let (f, name, column) = lone_call(s)?;
    let named =
        matches!(name.as_slice(), [n] if n == "pg_notify") || name == ["pg_catalog", "pg_notify"];
    let [channel, payload] = f.args.as_slice() else {
        return None;
    };
    if !named {
        return None;
    }
    Some(LocalCommand::PgNotify {
        channel: notify_arg(channel)?,
        payload: notify_arg(payload)?,
        column,
    })
}

/// A `pg_notify` argument the proxy can read: a string constant, NULL, or `$n`, cast to text
/// or not.
fn notify_arg(n: &pb::Node) -> Option<NotifyArg> {
    match n.node.as_ref()? {
        NodeEnum::TypeCast(c) => {
            let ty: Vec<String> = c
                .type_name
                .as_ref()?
                .names
                .iter()
                .filter_map(str_of)
                .map(str::to_lowercase)
                .collect();
            let text = matches!(ty.last().map(String::as_str), Some("text" | "varchar"));
            text.then(|| c.arg.as_deref().and_then(notify_arg))
                .flatten()
        }
        NodeEnum::ParamRef(p) => usize::try_from(p.number).ok().map(NotifyArg::Param),
        NodeEnum::AConst(c) if c.isnull => Some(NotifyArg::Null),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            pb::a_const::Val::Sval(v) => Some(NotifyArg::Text(v.sval.clone())),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn for_update_of_names_from_items_not_relations() {
        // (SQL, its key) — none refused: `OF t` names a FROM item, by its alias when it has one.
        let cases = [
            (
                "SELECT * FROM users WHERE user_id = 5 FOR UPDATE OF users",
                Some(vals(&[Const(5)])),
            ),
            (
                "SELECT u.name FROM users u WHERE name = 'a' FOR UPDATE OF u SKIP LOCKED",
                None,
            ),
            (
                "SELECT u.name FROM users u JOIN orders o ON o.user_id = u.user_id \
                 WHERE u.user_id = $1 FOR UPDATE OF u, o",
                Some(vals(&[Param(1)])),
            ),
            (
                "SELECT name FROM users LIMIT 3 FOR NO KEY UPDATE OF users NOWAIT",
                None,
            ),
        ];
        for (sql, key) in cases {
            let f = one(sql);
            assert!(f.sharded, "{sql}");
            assert!(f.locks_rows && !f.is_write, "{sql}");
            assert_eq!(f.refuse.map(|r| r.to_string()), None, "{sql}");
            if let Some(key) = key {
                assert_eq!(f.key, key, "{sql}");
            }
        }
    }

    #[test]
    fn pgbench_statements() {
        let f = one("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;");
        assert_eq!(f.kind, StatementKind::Select);
        assert!(f.sharded && !f.unsharded && !f.is_write && !f.locks_rows);
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
            "select * from (select distinct * from users) s",
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
    fn outer_joins_keeping_rows_no_shard_holds_are_refused() {
        for sql in [
            "select * from generate_series(1, 3) g left join users u on u.user_id = g",
            "select * from users u right join (values (1), (2)) v(id) on u.user_id = v.id",
            "select * from users u full join generate_series(1, 3) g on u.user_id = g",
            "select * from generate_series(1, 3) g left join users u on u.user_id = g join orders o on o.user_id = u.user_id",
        ] {
            refused(sql, "JOIN) keeping every row of a side that reads no sharded table");
        }
        for sql in [
            "select * from users u left join generate_series(1, 3) g on u.user_id = g",
            "select * from users u left join orders o on o.user_id = u.user_id",
            "select * from generate_series(1, 3) g join users u on u.user_id = g",
            "select * from orders o right join users u on o.user_id = u.user_id",
            // Grouped over the kept side, NULL-skipping aggregates of the matched side: exact.
            "select g.g, count(u.user_id), max(u.name) from generate_series(1, 3) g left join users u on u.user_id = g.g group by g.g",
        ] {
            assert_eq!(one(sql).refuse, None, "{sql}");
        }
        refused(
            "select g.g, count(*) from generate_series(1, 3) g left join users u on u.user_id = g.g group by g.g",
            "JOIN) keeping every row",
        );
    }

    #[test]
    fn row_local_derived_tables_run_on_each_shard() {
        let shard_sql = |f: &StatementFacts| match &f.merge {
            Some(Ok(plan)) => plan.shard_sql.with_placeholders(),
            other => panic!("no merge plan: {other:?}"),
        };
        // SQLAlchemy's Query.count(): the shards count, the proxy sums; no key, every shard.
        let sql = "SELECT count(*) AS count_1 FROM (SELECT users.user_id AS users_user_id, users.name AS users_name FROM users WHERE users.name = $1) AS anon_1";
        let f = one(sql);
        assert_eq!(f.refuse, None);
        assert!(f.sharded && !f.is_write);
        assert_eq!(f.key, KeyFacts::Unknown);
        assert_eq!(f.needs_merge, Some("aggregate count()".into()));
        assert_eq!(shard_sql(&f), sql.replace("AS anon_1", "anon_1"));
        // Keyed inside: one shard, the statement as it is.
        let f = one("SELECT count(*) AS count_1 FROM (SELECT users.user_id AS users_user_id FROM users WHERE users.user_id = $1 AND users.name = $2) AS anon_1");
        assert_eq!(f.refuse, None);
        assert_eq!(f.key, vals(&[Param(1)]));
        // (statement, what each shard runs)
        let cases = [
            // avg: a sum and a hidden count; GROUP BY, ORDER BY and LIMIT merged by the proxy.
            (
                "SELECT s.name, avg(s.total), max(s.total) FROM (SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.user_id WHERE o.total > $1) s GROUP BY s.name ORDER BY 2 DESC LIMIT 3",
                "SELECT s.name, sum(s.total) AS avg, max(s.total), count(s.total) AS pgshard_hidden_0 FROM (SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.user_id WHERE o.total > $1) s GROUP BY s.name",
            ),
            // Plain rows: a k-way merge, LIMIT + OFFSET pushed down.
            (
                "SELECT * FROM (SELECT user_id, name FROM users WHERE name LIKE 'a%') s ORDER BY name LIMIT 5 OFFSET 2",
                "SELECT *, name AS pgshard_hidden_0 FROM (SELECT user_id, name FROM users WHERE name LIKE 'a%') s ORDER BY name LIMIT 5::int8 + 2::int8",
            ),
            // Grouped by the derived table's column that is the shard key: the shards' groups
            // are final, whatever their aggregates.
            (
                "SELECT k, string_agg(n, ',') FROM (SELECT users.user_id AS k, name AS n FROM users) s GROUP BY k",
                "SELECT k, string_agg(n, ',') FROM (SELECT users.user_id AS k, name AS n FROM users) s GROUP BY k",
            ),
            (
                "SELECT k, count(*) FROM (SELECT o.user_id AS k FROM users u JOIN orders o ON o.user_id = u.user_id) s GROUP BY k",
                "SELECT k, count(*) FROM (SELECT o.user_id AS k FROM users u JOIN orders o ON o.user_id = u.user_id) s GROUP BY k",
            ),
            (
                "SELECT count(DISTINCT s.user_id) FROM (SELECT user_id FROM users) AS s",
                "SELECT count(DISTINCT s.user_id) FROM (SELECT user_id FROM users) s",
            ),
            // An ORDER BY under one row of aggregates changes nothing.
            (
                "SELECT count(*) FROM (SELECT name FROM users ORDER BY name) s",
                "SELECT count(*) FROM (SELECT name FROM users ORDER BY name) s",
            ),
            // Nested row-local derived tables.
            (
                "SELECT sum(a) FROM (SELECT a + 1 AS a FROM (SELECT user_id AS a FROM users WHERE name = 'x') x) y",
                "SELECT sum(a) FROM (SELECT a + 1 AS a FROM (SELECT user_id AS a FROM users WHERE name = 'x') x) y",
            ),
            // A subquery correlated by shard key, and a value each shard computes in WHERE (as
            // in a plain scatter).
            (
                "SELECT count(*) FROM (SELECT u.user_id FROM users u WHERE u.name < now()::text AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id)) s",
                "SELECT count(*) FROM (SELECT u.user_id FROM users u WHERE u.name < now()::text AND EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.user_id)) s",
            ),
        ];
        for (sql, shard) in cases {
            let f = one(sql);
            assert_eq!(f.refuse, None, "{sql}");
            assert_eq!(shard_sql(&f), shard, "{sql}");
        }
        // Not the shard key: count(DISTINCT) merges the shards' distinct values.
        let f = one("SELECT count(DISTINCT s.name) FROM (SELECT name FROM users) s");
        assert!(
            shard_sql(&f).contains("array_agg(DISTINCT s.name)"),
            "{f:?}"
        );
        let sql = "SELECT count(DISTINCT s.user_id) FROM (SELECT user_id AS k, name AS user_id FROM users) s";
        assert!(
            shard_sql(&one(sql)).contains("array_agg(DISTINCT s.user_id)"),
            "{sql}"
        );
        let sql =
            "SELECT count(DISTINCT s.k) FROM (SELECT user_id AS k, name AS user_id FROM users) s";
        assert_eq!(shard_sql(&one(sql)), sql, "{sql}");
        // Grouped by the key of a join: each shard's groups are final; by the key of an outer
        // join's nullable side, NULL on every shard: the groups are merged.
        let merged_groups = |sql: &str| match &one(sql).merge {
            Some(Ok(p)) => matches!(p.kind, crate::router::merge_plan::PlanKind::Groups { .. }),
            other => panic!("{sql}: {other:?}"),
        };
        let join = "SELECT k, count(*) FROM (SELECT o.user_id AS k FROM users u JOIN orders o ON o.user_id = u.user_id) s GROUP BY k";
        assert!(!merged_groups(join), "{join}");
        assert!(
            merged_groups(&join.replace(" JOIN", " LEFT JOIN")),
            "{join}"
        );
        // No merge needed: concatenated.
        let f = one("SELECT s.name FROM (SELECT name FROM users WHERE user_id > 3) s");
        assert_eq!((f.refuse, f.needs_merge, f.merge), (None, None, None));
        // Only unsharded or reference tables inside: as before.
        let f = one("SELECT count(*) FROM (SELECT * FROM countries) s");
        assert!(!f.sharded && f.refuse.is_none());
    }

    #[test]
    fn groups_of_an_outer_joins_nullable_key_are_merged() {
        // (statement, each shard's groups are final)
        let cases = [
            ("SELECT u.user_id, count(o.total) FROM users u LEFT JOIN orders o ON o.user_id = u.user_id GROUP BY u.user_id", true),
            // Users without orders: a NULL group on every shard, one in one Postgres.
            ("SELECT o.user_id, count(*) FROM users u LEFT JOIN orders o ON o.user_id = u.user_id GROUP BY o.user_id", false),
            ("SELECT u.user_id, count(*) FROM users u RIGHT JOIN orders o ON o.user_id = u.user_id GROUP BY u.user_id", false),
            ("SELECT o.user_id, count(*) FROM users u RIGHT JOIN orders o ON o.user_id = u.user_id GROUP BY o.user_id", true),
            ("SELECT u.user_id, count(*) FROM users u FULL JOIN orders o ON o.user_id = u.user_id GROUP BY u.user_id", false),
            ("SELECT o.user_id, count(*) FROM users u JOIN (orders o LEFT JOIN orders p ON p.user_id = o.user_id) ON o.user_id = u.user_id GROUP BY o.user_id", true),
            ("SELECT p.user_id, count(*) FROM users u JOIN (orders o LEFT JOIN orders p ON p.user_id = o.user_id) ON o.user_id = u.user_id GROUP BY p.user_id", false),
            ("SELECT p.user_id, count(*) FROM users u LEFT JOIN (orders o JOIN orders p ON p.user_id = o.user_id) ON o.user_id = u.user_id GROUP BY p.user_id", false),
        ];
        for (sql, pushed_down) in cases {
            let f = one(sql);
            assert_eq!(f.refuse, None, "{sql}");
            let Some(Ok(plan)) = &f.merge else {
                panic!("{sql}: {:?}", f.merge)
            };
            let merged = matches!(
                plan.kind,
                crate::router::merge_plan::PlanKind::Groups { .. }
            );
            assert_eq!(!merged, pushed_down, "{sql}");
        }
    }

    #[test]
    fn other_derived_tables_are_run_first() {
        // Refused as a subquery over a sharded table, which `router::derived` lifts by running
        // the derived table first (exact for any query).
        for sql in [
            // Not row-local inside.
            "SELECT count(*) FROM (SELECT DISTINCT name FROM users) s",
            "SELECT count(*) FROM (SELECT name FROM users LIMIT 7) s",
            "SELECT count(*) FROM (SELECT name FROM users OFFSET 1) s",
            "SELECT count(*) FROM (SELECT name FROM users ORDER BY name FETCH FIRST 3 ROWS WITH TIES) s",
            "SELECT count(*) FROM (SELECT user_id, count(*) FROM orders GROUP BY user_id) s",
            "SELECT count(*) FROM (SELECT max(total) AS m FROM orders) s",
            "SELECT count(*) FROM (SELECT name FROM users HAVING true) s",
            "SELECT count(*) FROM (SELECT row_number() OVER () AS r FROM users) s",
            "SELECT count(*) FROM (SELECT user_id FROM users UNION SELECT user_id FROM orders) s",
            "SELECT count(*) FROM (WITH c AS (SELECT user_id FROM users) SELECT * FROM c) s",
            "SELECT max(t) FROM (SELECT now() AS t FROM users) s",
            "SELECT count(*) FROM (SELECT name FROM users FOR UPDATE) s",
            "SELECT count(*) FROM (SELECT name FROM users ORDER BY count(*)) s",
            // An ORDER BY whose order the outer rows may keep.
            "SELECT * FROM (SELECT name FROM users ORDER BY name) s",
            "SELECT name, count(*) FROM (SELECT name FROM users ORDER BY name) s GROUP BY name",
            // Nested, not row-local below.
            "SELECT count(*) FROM (SELECT a FROM (SELECT DISTINCT user_id AS a FROM users) x) y",
            // The outer query merges what the merge cannot: string_agg over several shards.
            "SELECT string_agg(name, ',') FROM (SELECT name FROM users) s",
            // Joins the proxy refuses, and other relations of the outer query.
            "SELECT count(*) FROM (SELECT u.name FROM users u JOIN orders o ON o.total = u.user_id) s",
            "SELECT count(*) FROM (SELECT name FROM users) s WHERE s.name IN (SELECT name FROM users)",
            "SELECT count(*) FROM (SELECT name FROM users) s JOIN orders o ON true",
        ] {
            let f = one(sql);
            assert!(
                matches!(f.refuse, Some(Refused::SubqueryOverSharded { .. })),
                "{sql}: {:?}",
                f.refuse
            );
        }
        // A LATERAL one sees the rows beside it; one joined with a table is not the whole FROM.
        refused(
            "SELECT * FROM users u, LATERAL (SELECT total FROM orders o WHERE o.total = u.user_id) x",
            "subquery over sharded table orders",
        );
        refused(
            "SELECT * FROM users u JOIN (SELECT user_id FROM orders) x ON x.user_id = u.user_id",
            "subquery over sharded table orders",
        );
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
