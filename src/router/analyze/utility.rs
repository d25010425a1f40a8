//! Utility statements: transaction control, SET/SHOW/RESET/DISCARD, LISTEN/NOTIFY, PREPARE,
//! cursors, EXPLAIN, DO/CALL; what binds a session to its server connection; and which
//! statements Postgres refuses inside a transaction block.

use pg_query::protobuf as pb;
use pg_query::protobuf::a_const::Val;
use pg_query::NodeEnum;

use super::scan::{node, Scan, SESSION_LOCKS, XACT_LOCKS};
use super::tables;
use super::{
    analyze_stmt, Flow, LocalCommand, Refused, SessionPin, ShardedTables, StatementFacts,
    StatementKind,
};
use crate::sql_text::quote_literal;

/// True when Postgres refuses the statement inside a transaction block.
pub(super) fn refuses_transaction_block(stmt: &NodeEnum, scan: &Scan) -> bool {
    let option_named = |options: &[pb::Node], wanted: &str| {
        options.iter().any(|o| match o.node.as_ref() {
            Some(NodeEnum::DefElem(d)) => {
                d.defname.eq_ignore_ascii_case(wanted)
                    && !matches!(node(&d.arg), Some(NodeEnum::Boolean(b)) if !b.boolval)
                    && !matches!(
                        node(&d.arg),
                        Some(NodeEnum::String(s)) if matches!(s.sval.to_lowercase().as_str(), "false" | "off" | "0")
                    )
                    && !matches!(
                        node(&d.arg),
                        Some(NodeEnum::AConst(c)) if matches!(c.val, Some(Val::Ival(pb::Integer { ival: 0 })))
                    )
            }
            _ => false,
        })
    };
    match stmt {
        NodeEnum::VacuumStmt(v) => v.is_vacuumcmd,
        NodeEnum::ReindexStmt(r) => {
            option_named(&r.params, "concurrently")
                || r.kind == pb::ReindexObjectType::ReindexObjectSchema as i32
                || r.kind == pb::ReindexObjectType::ReindexObjectSystem as i32
                || r.kind == pb::ReindexObjectType::ReindexObjectDatabase as i32
        }
        NodeEnum::ClusterStmt(c) => c.relation.is_none(),
        NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::DropTableSpaceStmt(_)
        | NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::AlterSubscriptionStmt(_)
        | NodeEnum::DropSubscriptionStmt(_) => true,
        NodeEnum::AlterDatabaseStmt(a) => option_named(&a.options, "tablespace"),
        _ => scan.concurrent,
    }
}

/// The value of `SET name = …` as SQL text (`None` when an argument is not a plain constant) and
/// as unquoted text.
fn set_value(args: &[pb::Node]) -> Option<(String, String)> {
    let mut sql = Vec::new();
    let mut plain = Vec::new();
    for a in args {
        let c = match a.node.as_ref()? {
            NodeEnum::AConst(c) => c,
            _ => return None,
        };
        let (s, p) = match c.val.as_ref()? {
            Val::Ival(i) => (i.ival.to_string(), i.ival.to_string()),
            Val::Fval(f) => (f.fval.clone(), f.fval.clone()),
            Val::Sval(s) => (quote_literal(&s.sval), s.sval.clone()),
            Val::Boolval(b) => (b.boolval.to_string(), b.boolval.to_string()),
            _ => return None,
        };
        sql.push(s);
        plain.push(p);
    }
    Some((sql.join(", "), plain.join(", ")))
}

/// The name of a `pgshard.` setting without its prefix.
pub(super) fn proxy_name(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    lower.strip_prefix("pgshard.").map(str::to_string)
}

/// The facts of SET / RESET.
pub(super) fn analyze_variable_set(v: &pb::VariableSetStmt, facts: &mut StatementFacts) {
    let kind = v.kind;
    let name = v.name.to_lowercase();
    if kind == pb::VariableSetKind::VarResetAll as i32 {
        facts.kind = StatementKind::ResetAll;
        return;
    }
    if let Some(p) = proxy_name(&name) {
        facts.kind = StatementKind::Other;
        let value = if kind == pb::VariableSetKind::VarReset as i32 {
            None
        } else {
            set_value(&v.args).map(|(_, plain)| plain)
        };
        facts.local = Some(if v.is_local {
            LocalCommand::SetProxyLocal { name: p, value }
        } else {
            LocalCommand::SetProxy { name: p, value }
        });
        return;
    }
    if v.is_local || name == "transaction" {
        facts.kind = StatementKind::SetLocal;
        return;
    }
    if kind == pb::VariableSetKind::VarReset as i32 {
        facts.kind = StatementKind::Set { name, value: None };
    } else if kind == pb::VariableSetKind::VarSetDefault as i32 {
        facts.kind = StatementKind::Set {
            name,
            value: Some("DEFAULT".into()),
        };
    } else if kind == pb::VariableSetKind::VarSetValue as i32 {
        match set_value(&v.args) {
            Some((sql, _)) => {
                facts.kind = StatementKind::Set {
                    name,
                    value: Some(sql),
                }
            }
            None => {
                facts.kind = StatementKind::Other;
                facts.session_bound = Some(format!("SET {name} with a non-constant value"));
            }
        }
    } else if let Some((name, value)) = session_characteristic(v) {
        // pgjdbc's setTransactionIsolation, and so Spring's and HikariCP's: one setting,
        // replayed by value like any SET.
        facts.kind = StatementKind::Set {
            name: name.into(),
            value: Some(value),
        };
    } else {
        // SET … FROM CURRENT, several SESSION CHARACTERISTICS at once: not replayable by value.
        facts.kind = StatementKind::Other;
        facts.session_bound = Some(format!("SET {name}"));
    }
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION <one mode>` as the one setting it sets, exactly
/// as Postgres sets it (`default_transaction_isolation`, `…_read_only`, `…_deferrable`) with
/// its value as SQL text; `None` for several modes or anything else.
fn session_characteristic(v: &pb::VariableSetStmt) -> Option<(&'static str, String)> {
    if v.kind != pb::VariableSetKind::VarSetMulti as i32
        || !v.name.eq_ignore_ascii_case("session characteristics")
    {
        return None;
    }
    let [mode] = v.args.as_slice() else {
        return None;
    };
    let Some(NodeEnum::DefElem(d)) = mode.node.as_ref() else {
        return None;
    };
    let Some(NodeEnum::AConst(c)) = node(&d.arg) else {
        return None;
    };
    let flag = |on: bool| if on { "on" } else { "off" }.to_string();
    let value = match (d.defname.as_str(), c.val.as_ref()?) {
        ("transaction_isolation", Val::Sval(s)) => quote_literal(&s.sval),
        ("transaction_read_only" | "transaction_deferrable", Val::Ival(i)) => flag(i.ival != 0),
        ("transaction_read_only" | "transaction_deferrable", Val::Boolval(b)) => flag(b.boolval),
        _ => return None,
    };
    let name = match d.defname.as_str() {
        "transaction_isolation" => "default_transaction_isolation",
        "transaction_read_only" => "default_transaction_read_only",
        _ => "default_transaction_deferrable",
    };
    Some((name, value))
}

/// The facts of `EXPLAIN query`: the query's, less what EXPLAIN does not do (merge its output,
/// write unless ANALYZE). `None` without a query.
pub(super) fn analyze_explain(
    e: &pb::ExplainStmt,
    tables: &ShardedTables,
) -> Option<StatementFacts> {
    let analyze = e.options.iter().any(|o| match o.node.as_ref() {
        Some(NodeEnum::DefElem(d)) => {
            d.defname.eq_ignore_ascii_case("analyze")
                && !matches!(
                    node(&d.arg),
                    Some(NodeEnum::String(s)) if matches!(s.sval.to_lowercase().as_str(), "false" | "off" | "0")
                )
                && !matches!(node(&d.arg), Some(NodeEnum::Boolean(b)) if !b.boolval)
        }
        _ => false,
    });
    if let Some(q) = node(&e.query) {
        let mut inner = analyze_stmt(q, tables);
        // EXPLAIN output cannot be merged.
        inner.merge = None;
        if !analyze {
            inner.is_write = false;
            inner.every_shard = false;
        }
        if inner.local.is_some() {
            inner.local = None;
            inner.refuse = Some(Refused::NextIdElsewhere);
        }
        return Some(inner);
    }
    None
}

/// The facts of a utility statement (transaction control, SET, SHOW, DISCARD, LISTEN/NOTIFY,
/// PREPARE/EXECUTE/DEALLOCATE, cursors, DO, CALL); `None` for any other statement.
pub(super) fn analyze_utility(
    stmt: &NodeEnum,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> Option<Flow> {
    match stmt {
        NodeEnum::TransactionStmt(t) => {
            use pb::TransactionStmtKind as K;
            facts.kind = match t.kind {
                k if k == K::TransStmtBegin as i32 || k == K::TransStmtStart as i32 => {
                    StatementKind::Begin
                }
                k if k == K::TransStmtCommit as i32 => StatementKind::Commit,
                k if k == K::TransStmtRollback as i32 => StatementKind::Rollback,
                k if k == K::TransStmtSavepoint as i32
                    || k == K::TransStmtRelease as i32
                    || k == K::TransStmtRollbackTo as i32 =>
                {
                    StatementKind::Savepoint
                }
                _ => StatementKind::Other,
            };
            // Transaction control answers no rows: an Execute's row limit (pgjdbc sends its
            // SAVEPOINT, RELEASE and ROLLBACK TO with a limit of 1) changes nothing.
            facts.returns_no_rows = true;
            return Some(Flow::Finished);
        }
        NodeEnum::VariableSetStmt(v) => {
            analyze_variable_set(v, facts);
            facts.returns_no_rows = true;
            return Some(Flow::Finished);
        }
        NodeEnum::VariableShowStmt(v) => {
            let name = v.name.to_lowercase();
            match proxy_name(&name) {
                Some(p) => facts.local = Some(LocalCommand::ShowProxy { name: p }),
                None => facts.kind = StatementKind::Show { name },
            }
            return Some(Flow::Finished);
        }
        NodeEnum::DiscardStmt(d) => {
            facts.kind = StatementKind::Discard {
                all: d.target == pg_query::protobuf::DiscardMode::DiscardAll as i32,
            };
            return Some(Flow::Finished);
        }
        NodeEnum::ListenStmt(l) => {
            facts.local = Some(LocalCommand::Listen {
                channel: l.conditionname.clone(),
            });
            return Some(Flow::Finished);
        }
        NodeEnum::UnlistenStmt(u) => {
            let channel = (!u.conditionname.is_empty()).then(|| u.conditionname.clone());
            facts.local = Some(LocalCommand::Unlisten { channel });
            return Some(Flow::Finished);
        }
        NodeEnum::NotifyStmt(n) => {
            facts.local = Some(LocalCommand::Notify {
                channel: n.conditionname.clone(),
                payload: n.payload.clone(),
            });
            return Some(Flow::Finished);
        }
        NodeEnum::DeallocateStmt(d) if d.isall => {
            facts.local = Some(LocalCommand::DeallocateAll);
            return Some(Flow::Finished);
        }
        NodeEnum::PrepareStmt(_) | NodeEnum::ExecuteStmt(_) | NodeEnum::DeallocateStmt(_) => {
            facts.session_bound = Some("SQL-level PREPARE".into());
            if let NodeEnum::PrepareStmt(p) = stmt {
                if let Some(q) = node(&p.query) {
                    let inner = analyze_stmt(q, tables);
                    facts.sharded = inner.sharded;
                    facts.unsharded = inner.unsharded;
                    facts.refuse = inner.refuse;
                    facts.is_write = inner.is_write;
                }
            }
        }
        NodeEnum::DeclareCursorStmt(d) => {
            // Over several shards the session serves the cursor itself (see frontend::cursors).
            facts.cursor = crate::router::cursor::cursor_op(stmt);
            if let Some(q) = node(&d.query) {
                let inner = analyze_stmt(q, tables);
                facts.sharded = inner.sharded;
                facts.unsharded = inner.unsharded;
                facts.key = inner.key;
                facts.refuse = inner.refuse;
                facts.shard_key = inner.shard_key;
                facts.key_type = inner.key_type;
            }
            // CURSOR_OPT_HOLD
            if d.options & 0x0020 != 0 {
                facts.pin = Some(SessionPin::HoldCursor);
            }
        }
        NodeEnum::FetchStmt(_) | NodeEnum::ClosePortalStmt(_) => {
            facts.cursor = crate::router::cursor::cursor_op(stmt);
        }
        NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_) => {
            // Unknown effects: run where unsharded tables live.
            facts.is_write = true;
            facts.unsharded = true;
            tables::mark_tables(scan, tables, facts);
        }
        _ => return None,
    }
    Some(Flow::Common)
}

/// What any statement may leave on its server connection or needs of one shard: nested writes,
/// temporary tables, advisory locks, `pg_notify`, `set_config`.
pub(super) fn session_effects(stmt: &NodeEnum, scan: &Scan, facts: &mut StatementFacts) {
    if scan.nested_dml {
        facts.is_write = true;
    }
    if scan.temp {
        facts.pin = Some(SessionPin::TempTable);
    }
    let advisory = |locks: &[&str]| {
        scan.funcs.iter().any(|f| {
            f.name.len() <= 2
                && locks.contains(&f.last())
                && (f.name.len() == 1 || f.name[0] == "pg_catalog")
        })
    };
    if advisory(SESSION_LOCKS) {
        facts.pin.get_or_insert(SessionPin::AdvisoryLock);
    }
    if advisory(&["pg_notify"]) {
        // Notifications meet their listeners on the channel shard (see `notify`).
        facts.unsharded = true;
        facts.is_write = true;
    }
    if advisory(SESSION_LOCKS) || advisory(XACT_LOCKS) {
        // Every client of every proxy must see the same locks: they live on the shard of the
        // unsharded tables.
        facts.unsharded = true;
    }
    if scan.funcs.iter().any(|f| f.last() == "set_config") {
        facts.set_config = crate::router::set_config::session_setting(stmt);
        if let (Some(Err(_)), Some(call)) = (
            &facts.set_config,
            crate::router::set_config::bound_call(stmt),
        ) {
            // Read from the Bind's values (see `frontend::bound_set_config`).
            facts.set_config = None;
            facts.set_config_bound = Some(call);
        }
        if let Some(Err(what)) = &facts.set_config {
            facts.session_bound = Some(what.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::NotifyArg;

    #[test]
    fn hints_of_each_statement() {
        use crate::router::hint::Hint;
        let f = analyze(
            "/* pgshard: shard=2 */ select f(1); select 2; -- x\n/* pgshard: key='a;b' */ select g()",
            &tables(),
        );
        let hints: Vec<_> = f.iter().map(|f| f.hint.clone()).collect();
        assert_eq!(
            hints,
            vec![
                Some(Ok(Hint::Shard(2))),
                None,
                Some(Ok(Hint::Key("a;b".into(), None)))
            ]
        );
    }

    #[test]
    fn session_statements() {
        assert_eq!(
            one("set search_path = a, \"B\"").kind,
            StatementKind::Set {
                name: "search_path".into(),
                value: Some("'a', 'B'".into())
            }
        );
        assert_eq!(
            one("SET SESSION statement_timeout TO 5").kind,
            StatementKind::Set {
                name: "statement_timeout".into(),
                value: Some("5".into())
            }
        );
        assert_eq!(
            one("set time zone 'UTC'").kind,
            StatementKind::Set {
                name: "timezone".into(),
                value: Some("'UTC'".into())
            }
        );
        assert_eq!(
            one("set local work_mem = '1MB'").kind,
            StatementKind::SetLocal
        );
        assert_eq!(
            one("set transaction isolation level serializable").kind,
            StatementKind::SetLocal
        );
        assert_eq!(
            one("reset work_mem").kind,
            StatementKind::Set {
                name: "work_mem".into(),
                value: None
            }
        );
        assert_eq!(one("reset all").kind, StatementKind::ResetAll);
        assert_eq!(
            one("show work_mem").kind,
            StatementKind::Show {
                name: "work_mem".into()
            }
        );
        assert_eq!(
            one("discard all").kind,
            StatementKind::Discard { all: true }
        );
        for other in ["discard plans", "discard sequences", "discard temp"] {
            assert_eq!(one(other).kind, StatementKind::Discard { all: false });
        }
        assert_eq!(one("savepoint a").kind, StatementKind::Savepoint);
        assert_eq!(
            one("rollback to savepoint a").kind,
            StatementKind::Savepoint
        );
        assert_eq!(one("rollback").kind, StatementKind::Rollback);
        assert_eq!(one("start transaction").kind, StatementKind::Begin);
        assert_eq!(one("commit and chain").kind, StatementKind::Commit);
    }

    /// pgjdbc sends the statements it expects no rows from with a row limit of 1; these answer
    /// none, so the limit changes nothing wherever they run.
    #[test]
    fn transaction_control_and_set_answer_no_rows() {
        for sql in [
            "savepoint a",
            "release savepoint a",
            "rollback to savepoint a",
            "begin",
            "commit",
            "rollback",
            "set work_mem = '8MB'",
            "set local lock_timeout = 10",
            "set session characteristics as transaction isolation level serializable",
            "reset all",
        ] {
            assert!(one(sql).returns_no_rows, "{sql}");
        }
        assert!(!one("show work_mem").returns_no_rows);
    }

    /// pgjdbc's `setTransactionIsolation` outside a transaction sends `SET SESSION
    /// CHARACTERISTICS …`: the one setting Postgres sets for it, replayed like any SET; several
    /// modes at once stay bound to the session.
    #[test]
    fn session_characteristics_are_the_settings_they_set() {
        let set = |name: &str, value: &str| StatementKind::Set {
            name: name.into(),
            value: Some(value.into()),
        };
        let cases = [
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                set("default_transaction_isolation", "'serializable'"),
            ),
            (
                "set session characteristics as transaction isolation level read committed",
                set("default_transaction_isolation", "'read committed'"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                set("default_transaction_isolation", "'repeatable read'"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                set("default_transaction_read_only", "on"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                set("default_transaction_read_only", "off"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE",
                set("default_transaction_deferrable", "on"),
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION NOT DEFERRABLE",
                set("default_transaction_deferrable", "off"),
            ),
        ];
        for (sql, kind) in cases {
            let facts = one(sql);
            assert_eq!(facts.kind, kind, "{sql}");
            assert_eq!(facts.session_bound, None, "{sql}");
        }
        let several = one(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        );
        assert_eq!(several.kind, StatementKind::Other);
        assert!(several.session_bound.is_some());
    }

    #[test]
    fn local_commands() {
        assert_eq!(
            one("SET pgshard.causal_token = 'abc'").local,
            Some(LocalCommand::SetProxy {
                name: "causal_token".into(),
                value: Some("abc".into())
            })
        );
        assert_eq!(
            one("SET LOCAL pgshard.shard = 3").local,
            Some(LocalCommand::SetProxyLocal {
                name: "shard".into(),
                value: Some("3".into())
            })
        );
        assert_eq!(
            one("set pgshard.key to 'acme'").local,
            Some(LocalCommand::SetProxy {
                name: "key".into(),
                value: Some("acme".into())
            })
        );
        assert_eq!(
            one("reset PGSHARD.read_mode").local,
            Some(LocalCommand::SetProxy {
                name: "read_mode".into(),
                value: None
            })
        );
        assert_eq!(
            one("show pgshard.causal_token").local,
            Some(LocalCommand::ShowProxy {
                name: "causal_token".into()
            })
        );
        assert_eq!(
            one("select pgshard.next_id()").local,
            Some(LocalCommand::NextId)
        );
        assert_eq!(
            one("SELECT PGSHARD.NEXT_ID();").local,
            Some(LocalCommand::NextId)
        );
        for (sql, want) in [
            (
                "LISTEN Jobs",
                LocalCommand::Listen {
                    channel: "jobs".into(),
                },
            ),
            (
                "listen \"Jobs\"",
                LocalCommand::Listen {
                    channel: "Jobs".into(),
                },
            ),
            (
                "UNLISTEN jobs",
                LocalCommand::Unlisten {
                    channel: Some("jobs".into()),
                },
            ),
            ("UNLISTEN *", LocalCommand::Unlisten { channel: None }),
            (
                "NOTIFY jobs, 'it''s done'",
                LocalCommand::Notify {
                    channel: "jobs".into(),
                    payload: "it's done".into(),
                },
            ),
            (
                "NOTIFY jobs",
                LocalCommand::Notify {
                    channel: "jobs".into(),
                    payload: String::new(),
                },
            ),
        ] {
            assert_eq!(one(sql).local, Some(want), "{sql}");
        }
        // A bare pg_notify of constants or parameters is the proxy's, as NOTIFY is; any other
        // use of it runs on the channel shard.
        for (sql, channel, payload, column) in [
            (
                "SELECT pg_notify('jobs', 'x')",
                NotifyArg::Text("jobs".into()),
                NotifyArg::Text("x".into()),
                "pg_notify",
            ),
            (
                "select pg_catalog.pg_notify($1::text, $2) as sent",
                NotifyArg::Param(1),
                NotifyArg::Param(2),
                "sent",
            ),
            (
                "SELECT pg_notify($1, NULL)",
                NotifyArg::Param(1),
                NotifyArg::Null,
                "pg_notify",
            ),
        ] {
            let want = LocalCommand::PgNotify {
                channel,
                payload,
                column: column.into(),
            };
            assert_eq!(one(sql).local, Some(want), "{sql}");
        }
        for sql in [
            "SELECT pg_notify('jobs', name) FROM users",
            "SELECT pg_notify('jobs', 'x'), 1",
            "SELECT pg_notify($1, $2::int::text)",
            "SELECT pg_notify($1 || 'x', $2)",
        ] {
            let f = one(sql);
            assert!(f.unsharded && f.is_write && f.local.is_none(), "{sql}");
        }
        refused(
            "select pgshard.next_id(), 1",
            "only supported as SELECT pgshard.next_id()",
        );
        refused(
            "insert into users (user_id) values (pgshard.next_id())",
            "pgshard.next_id()",
        );
    }

    #[test]
    fn statements_refused_in_a_transaction_block() {
        let ntb = |sql: &str| one(sql).no_transaction_block;
        for sql in [
            "create index concurrently on users (name)",
            "drop index concurrently users_name",
            "reindex (concurrently) table users",
            "reindex table concurrently users",
            "reindex database app",
            "reindex schema public",
            "reindex system app",
            "vacuum",
            "vacuum analyze pgbench_accounts",
            "vacuum (verbose) users",
            "create database x",
            "drop database x",
            "alter system set work_mem = '1MB'",
            "cluster",
            "create tablespace t location '/tmp'",
            "drop tablespace t",
            "alter table parent detach partition child concurrently",
            "alter database app set tablespace t",
            "create subscription s connection 'x' publication p",
            "drop subscription s",
        ] {
            assert!(ntb(sql), "{sql}");
        }
        for sql in [
            "create index on users (name)",
            "drop index users_name",
            "reindex table users",
            "reindex (concurrently false) table users",
            "analyze users",
            "analyze",
            "cluster users using users_pkey",
            "alter database app set work_mem = '1MB'",
            "select 1",
            "truncate users",
            "alter table parent detach partition child",
        ] {
            assert!(!ntb(sql), "{sql}");
        }
    }
}
