//! INSERT, UPDATE, DELETE, MERGE and COPY: the target table and its key values (one per
//! INSERT row), keys pgshard must generate, and the writes it cannot do exactly.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::scan::{node, Scan};
use super::tables;
use super::tables::{is_null_constant, key_value, tables_and_key, Ctx};
use super::{analyze_stmt, Flow, KeyFacts, Refused, ShardedTables, StatementFacts, StatementKind};

/// The facts of an INSERT.
pub(super) fn analyze_insert(
    i: &pb::InsertStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Insert;
    facts.is_write = true;
    facts.returns_no_rows = i
        .returning_clause
        .as_ref()
        .is_none_or(|r| r.exprs.is_empty());
    let Some(rel) = &i.relation else { return };
    let mut ctx = Ctx::new(tables);
    let target = ctx.add_range_var(rel);
    // Source tables (INSERT … SELECT) are not at the top level.
    tables_and_key(&mut ctx, scan, None, facts);
    facts.refuse = ctx.refuse;
    let Some(key) = ctx.refs[target].key.clone() else {
        return;
    };
    let t = ctx.refs[target].name.clone();
    if let Some(oc) = &i.on_conflict_clause {
        let sets_key = oc.target_list.iter().any(|n| match n.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.name.eq_ignore_ascii_case(&key),
            _ => false,
        });
        if sets_key {
            facts.refuse = Some(Refused::OnConflictUpdatesKey { table: t, key });
            return;
        }
        let updates_where =
            oc.action == pb::OnConflictAction::OnconflictUpdate as i32 && oc.where_clause.is_some();
        if updates_where && !facts.returns_no_rows {
            let target_has_key = oc.infer.as_ref().is_some_and(|infer| {
                infer.index_elems.iter().any(|e| match e.node.as_ref() {
                    Some(NodeEnum::IndexElem(ie)) => ie.name.eq_ignore_ascii_case(&key),
                    _ => false,
                })
            });
            facts.conflict_update_where = Some(target_has_key);
        }
    }
    if i.cols.is_empty() {
        facts.refuse = Some(Refused::InsertWithoutColumns { table: t, key });
        return;
    }
    let pos = i.cols.iter().position(|n| match n.node.as_ref() {
        Some(NodeEnum::ResTarget(rt)) => rt.name.eq_ignore_ascii_case(&key),
        _ => false,
    });
    let rows: Option<&Vec<pb::Node>> = match node(&i.select_stmt) {
        Some(NodeEnum::SelectStmt(s))
            if !s.values_lists.is_empty() && s.op == pb::SetOperation::SetopNone as i32 =>
        {
            Some(&s.values_lists)
        }
        _ => None,
    };
    let Some(rows) = rows else {
        if crate::router::unnest_insert::unnest_args(i).is_none() {
            // The rows of `INSERT … SELECT` are known once the SELECT has run: pgshard runs
            // it first and writes its rows in as arrays (`router::insert_select`).
            if i.with_clause.is_none()
                && facts
                    .refuse
                    .as_ref()
                    .is_none_or(Refused::liftable_by_running_subqueries_first)
            {
                facts.refuse = Some(Refused::InsertSelect { table: t });
            }
            return;
        }
        if pos.is_none() {
            facts.unnest_keyless = crate::router::unnest_insert::unnest_args(i);
        }
        let unnest = pos.and_then(|pos| crate::router::unnest_insert::detect(i, pos));
        if let Some(param) = unnest.as_ref().and_then(|u| u.key_param()) {
            facts.key = KeyFacts::ArrayParam(param);
            facts.unnest = unnest;
        }
        return;
    };
    let Some(pos) = pos else {
        facts.missing_key_rows = Some(rows.len());
        return;
    };
    let key_items = rows.iter().map(|row| match row.node.as_ref() {
        Some(NodeEnum::List(l)) => l.items.get(pos),
        _ => None,
    });
    let uuid_key = tables.key_type_of(&rel.schemaname.to_lowercase(), &rel.relname.to_lowercase())
        == crate::router::KeyType::Uuid;
    if uuid_key
        && key_items
            .clone()
            .all(|item| item.is_some_and(is_random_uuid_call))
    {
        // The keys are random: pgshard draws them, as for a key the column list leaves out.
        facts.missing_key_rows = Some(rows.len());
        facts.random_uuid_keys = true;
        return;
    }
    let mut vals = Vec::with_capacity(rows.len());
    for row in rows {
        let item = match row.node.as_ref() {
            Some(NodeEnum::List(l)) => l.items.get(pos),
            _ => None,
        };
        if item.is_some_and(is_null_constant) {
            facts.refuse = Some(Refused::NullShardKey { table: t, key });
            return;
        }
        match item.and_then(key_value) {
            Some(v) => vals.push(v),
            None => return,
        }
    }
    facts.key = KeyFacts::Values(vals);
}

/// True for a call of `gen_random_uuid()` (or `pg_catalog.gen_random_uuid()`), nothing around it.
pub(crate) fn is_random_uuid_call(n: &pb::Node) -> bool {
    let Some(NodeEnum::FuncCall(f)) = n.node.as_ref() else {
        return false;
    };
    matches!(
        crate::router::set_config::name_parts(f).as_slice(),
        ["gen_random_uuid"] | ["pg_catalog", "gen_random_uuid"]
    ) && f.args.is_empty()
        && f.agg_order.is_empty()
        && f.agg_filter.is_none()
        && f.over.is_none()
        && !f.agg_star
        && !f.agg_distinct
        && !f.func_variadic
}

/// The facts of an UPDATE.
pub(super) fn analyze_update(
    u: &pb::UpdateStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Update;
    facts.is_write = true;
    facts.returns_no_rows = u
        .returning_clause
        .as_ref()
        .is_none_or(|r| r.exprs.is_empty());
    let Some(rel) = &u.relation else { return };
    let mut ctx = Ctx::new(tables);
    let target = ctx.add_range_var(rel);
    for item in &u.from_clause {
        ctx.add_from_item(item);
    }
    if let Some(key) = ctx.refs[target].key.clone() {
        let sets_key = u.target_list.iter().any(|n| match n.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.name.eq_ignore_ascii_case(&key),
            _ => false,
        });
        // Setting the key to the value the WHERE clause pins it to moves no row.
        if sets_key && !crate::router::key_update::keeps_key(u, &key) {
            let t = &ctx.refs[target].name;
            ctx.refuse(Refused::UpdateOfKey {
                table: t.clone(),
                key,
            });
        }
    }
    tables_and_key(&mut ctx, scan, u.where_clause.as_deref(), facts);
    facts.refuse = ctx.refuse;
}

/// The facts of a DELETE.
pub(super) fn analyze_delete(
    d: &pb::DeleteStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Delete;
    facts.is_write = true;
    facts.returns_no_rows = d
        .returning_clause
        .as_ref()
        .is_none_or(|r| r.exprs.is_empty());
    let Some(rel) = &d.relation else { return };
    let mut ctx = Ctx::new(tables);
    ctx.add_range_var(rel);
    for item in &d.using_clause {
        ctx.add_from_item(item);
    }
    tables_and_key(&mut ctx, scan, d.where_clause.as_deref(), facts);
    facts.refuse = ctx.refuse;
}

/// The facts of a MERGE: refused on sharded tables.
pub(super) fn analyze_merge(
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> Flow {
    facts.is_write = true;
    tables::mark_tables(scan, tables, facts);
    if facts.sharded {
        facts.refuse = Some(Refused::MergeOnSharded);
    }
    Flow::Common
}

/// The facts of a COPY, and of the query of `COPY (query) TO`.
pub(super) fn analyze_copy(
    c: &pb::CopyStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> Flow {
    facts.kind = StatementKind::Copy {
        from_stdin: c.is_from && !c.is_program && c.filename.is_empty(),
    };
    facts.is_write = c.is_from;
    facts.copy = Some(Box::new(crate::router::copy_facts::analyze(c)));
    tables::mark_tables(scan, tables, facts);
    if c.is_from && (c.is_program || !c.filename.is_empty()) && facts.sharded {
        // Rows read on a shard's host never pass through pgshard, so nothing splits them.
        facts.refuse = Some(Refused::CopyFromServer);
    }
    if let Some(rel) = c.relation.as_ref().filter(|_| c.is_from) {
        if tables.is_reference(&rel.schemaname, &rel.relname) {
            facts.refuse = Some(Refused::CopyIntoReference {
                table: rel.relname.to_lowercase(),
            });
        }
    }
    if let Some(q) = node(&c.query) {
        let inner = analyze_stmt(q, tables);
        facts.key = inner.key;
        facts.refuse = inner.refuse;
        facts.needs_merge = inner.needs_merge;
        facts.is_write |= inner.is_write;
    }
    Flow::Common
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    /// `gen_random_uuid()` as every row's key of a uuid-keyed table: keys pgshard draws, as for a
    /// key left out; anywhere else, or for a key of another type, the key stays unknown.
    #[test]
    fn random_uuid_keys() {
        let cfg = ShardedTableConfig {
            name: "events".into(),
            key: "id".into(),
            key_type: Some(crate::router::KeyType::Uuid),
        };
        let uuid_tables = ShardedTables::new(&[cfg]);
        let on = |sql: &str| analyze(sql, &uuid_tables).remove(0);
        for (sql, rows) in [
            ("insert into events (id, kind) values (gen_random_uuid(), $1) returning id", 1),
            ("insert into events (kind, ID) values ('a', pg_catalog.gen_random_uuid()), ('b', gen_random_uuid())", 2),
        ] {
            let f = on(sql);
            assert_eq!((f.missing_key_rows, f.random_uuid_keys), (Some(rows), true), "{sql}");
        }
        for sql in [
            "insert into events (id, kind) values (gen_random_uuid(), 'a'), ($1, 'b')",
            "insert into events (id, kind) values (gen_random_uuid()::text::uuid, 'a')",
            "insert into events (id, kind) values (my.gen_random_uuid(), 'a')",
            "insert into events (id, kind) values ($1, gen_random_uuid()::text)",
        ] {
            let f = on(sql);
            assert_eq!(
                (f.missing_key_rows, f.random_uuid_keys),
                (None, false),
                "{sql}"
            );
        }
        // An integer key given as gen_random_uuid() fails on the shard, as in Postgres.
        let f = one("insert into users (user_id) values (gen_random_uuid())");
        assert_eq!((f.missing_key_rows, f.key), (None, KeyFacts::Unknown));
    }

    #[test]
    fn inserts() {
        let f = one(
            "insert into users (user_id, name) values (1, 'a'), ($1, 'b'), (-3, 'c') returning *",
        );
        assert_eq!(f.key, vals(&[Const(1), Param(1), Const(-3)]));
        assert!(f.is_write && f.sharded);
        assert_eq!(
            one("insert into users (user_id) values (default)").key,
            KeyFacts::Unknown
        );
        assert_eq!(
            one("insert into users (user_id) values (1), (now())").key,
            KeyFacts::Unknown
        );
        let f = one("insert into users (name) values ('a'), ('b')");
        assert_eq!(f.missing_key_rows, Some(2));
        assert_eq!(f.key, KeyFacts::Unknown);
        refused(
            "insert into users values (1, 'a')",
            "explicit column list naming user_id",
        );
        // INSERT … SELECT: the SELECT runs first (`router::insert_select`).
        for sql in [
            "insert into users (user_id, name) select 1, 'x'",
            "insert into users (user_id, name) select id, name from staging",
            "insert into users (user_id, name) select user_id + 1, name from users",
        ] {
            let f = one(sql);
            assert_eq!(f.key, KeyFacts::Unknown, "{sql}");
            assert_eq!(
                f.refuse,
                Some(Refused::InsertSelect {
                    table: "users".into()
                }),
                "{sql}"
            );
        }
        refused("insert into users (user_id, name) values (1, 'a') on conflict (user_id) do update set user_id = excluded.user_id", "shard key users.user_id");
        let f = one("insert into users (user_id, name) values (1, 'a') on conflict (user_id) do update set name = excluded.name");
        assert_eq!(f.refuse, None);
        assert_eq!(f.key, vals(&[Const(1)]));
        let f = one("insert into logs (msg) values ('x')");
        assert!(f.unsharded && !f.sharded && f.is_write);
    }

    #[test]
    fn updates_and_deletes() {
        refused(
            "update users set user_id = 5 where user_id = 1",
            "UPDATE of shard key users.user_id",
        );
        let f = one("delete from users where user_id = $1");
        assert_eq!(f.kind, StatementKind::Delete);
        assert_eq!(f.key, vals(&[Param(1)]));
        let f = one("delete from users");
        assert!(f.is_write && f.sharded);
        assert_eq!(f.key, KeyFacts::Unknown);
        let f = one("update users u set name = 'x' from orders o where o.user_id = u.user_id and u.user_id = 3");
        assert_eq!(f.refuse, None);
        assert_eq!(f.key, vals(&[Const(3)]));
    }

    #[test]
    fn copy_explain_unparsed_multi() {
        let f = one("copy users (user_id, name) from stdin");
        assert_eq!(f.kind, StatementKind::Copy { from_stdin: true });
        assert!(f.is_write && f.sharded);
        let f = one("copy users to stdout");
        assert_eq!(f.kind, StatementKind::Copy { from_stdin: false });
        assert!(!f.is_write);
        let f = one("explain select * from users where user_id = 1");
        assert_eq!(f.key, vals(&[Const(1)]));
        assert!(!one("explain delete from users where user_id = 1").is_write);
        assert!(one("explain analyze delete from users where user_id = 1").is_write);
        assert_eq!(
            analyze("selec 1", &tables())[0].kind,
            StatementKind::Unparsed
        );
        let v = analyze(
            "begin; select * from users where user_id = 1; commit",
            &tables(),
        );
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].key, vals(&[Const(1)]));
        assert_eq!(v[2].kind, StatementKind::Commit);
    }
}
