//! DDL and maintenance: which statements change schema, the tables DROP and COMMENT name as
//! plain lists, and the rule that what lives on every shard (sharded and reference tables) is
//! changed on every shard alike.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::scan::{node, str_of, Scan};
use super::tables::{self, first_everywhere_table, first_local_table};
use super::{analyze_stmt, Flow, Refused, ShardedTables, StatementFacts, StatementKind};

/// Functions whose value differs from one server to the next: a reference table written with
/// them would hold different rows on each shard.
const SERVER_DEPENDENT: &[&str] = &[
    "random",
    "random_normal",
    "setseed",
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "nextval",
    "currval",
    "lastval",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "txid_current",
    "pg_current_xact_id",
    "pg_backend_pid",
    "inet_server_addr",
    "inet_server_port",
];

/// Statements that change every shard alike (DDL and maintenance of tables that live on every
/// shard, writes to reference tables): sets `every_shard`, or refuses what cannot be the same on
/// every shard.
pub(super) fn every_shard_rules(
    stmt: &NodeEnum,
    scan: &Scan,
    tables: &ShardedTables,
    facts: &mut StatementFacts,
) {
    let maintenance = matches!(
        stmt,
        NodeEnum::VacuumStmt(_) | NodeEnum::ClusterStmt(_) | NodeEnum::ReindexStmt(_)
    );
    let everywhere = first_everywhere_table(scan, tables);
    let local = first_local_table(scan, tables);
    if facts.kind == StatementKind::Ddl && database_wide_object(stmt) {
        // Types, functions, extensions and schemas: sharded tables and the statements run on
        // every shard use them, so every shard gets them (a composite type's name reads as a
        // table's here, and is not one).
        facts.every_shard = true;
        return;
    }
    if facts.kind == StatementKind::Ddl || maintenance {
        match (everywhere, local) {
            (Some(e), Some(l)) => {
                let refusal =
                    derived_from_sharded(stmt, scan, tables).unwrap_or(Refused::MixedPlacement {
                        everywhere: e,
                        local: l,
                    });
                facts.refuse.get_or_insert(refusal);
            }
            (Some(_), None) => facts.every_shard = true,
            // VACUUM, ANALYZE, CLUSTER or REINDEX of the whole database: every shard's.
            (None, None) if maintenance && scan.relations.is_empty() => facts.every_shard = true,
            _ => {}
        }
        return;
    }
    let Some((_, target)) = scan
        .dml_targets
        .iter()
        .find(|(schema, name)| tables.is_reference(schema, name))
    else {
        return;
    };
    let why = if facts.sharded {
        facts.shard_key.as_ref().map(|(t, _)| {
            format!("it also names sharded table {t}, so every shard would write different rows")
        })
    } else if let Some(l) = local {
        Some(format!(
            "it also names {l}, which lives only on the first shard"
        ))
    } else if facts.unsharded {
        Some("it reads system catalogs, which differ between shards".to_string())
    } else if scan.sql_value_function {
        Some("CURRENT_TIMESTAMP and similar values differ between shards".to_string())
    } else {
        scan.funcs
            .iter()
            .find(|f| {
                (f.name.len() == 1 || f.name[0] == "pg_catalog")
                    && SERVER_DEPENDENT.contains(&f.last())
            })
            .map(|f| format!("{}() gives each shard a different value", f.last()))
    };
    match why {
        Some(why) => {
            facts.refuse.get_or_insert(Refused::ReferenceWrite {
                table: target.clone(),
                why,
            });
        }
        None => facts.every_shard = true,
    }
}

/// Object kinds that are not tables but that tables and queries use: they must exist on every
/// shard alike.
const DATABASE_WIDE: &[pb::ObjectType] = &[
    pb::ObjectType::ObjectType,
    pb::ObjectType::ObjectDomain,
    pb::ObjectType::ObjectFunction,
    pb::ObjectType::ObjectProcedure,
    pb::ObjectType::ObjectRoutine,
    pb::ObjectType::ObjectAggregate,
    pb::ObjectType::ObjectExtension,
    pb::ObjectType::ObjectSchema,
    pb::ObjectType::ObjectCollation,
    pb::ObjectType::ObjectOperator,
    pb::ObjectType::ObjectOpclass,
    pb::ObjectType::ObjectOpfamily,
    pb::ObjectType::ObjectCast,
    pb::ObjectType::ObjectConversion,
    pb::ObjectType::ObjectTransform,
    pb::ObjectType::ObjectTsconfiguration,
    pb::ObjectType::ObjectTsdictionary,
    pb::ObjectType::ObjectTsparser,
    pb::ObjectType::ObjectTstemplate,
];

/// True for DDL that makes, changes or drops a database-wide object of [`DATABASE_WIDE`]'s
/// kinds (a `CREATE SCHEMA` that also creates tables in it is not: those tables live on the
/// first shard).
fn database_wide_object(stmt: &NodeEnum) -> bool {
    let of_kind = |t: i32| DATABASE_WIDE.iter().any(|k| *k as i32 == t);
    match stmt {
        NodeEnum::CreateEnumStmt(_)
        | NodeEnum::AlterEnumStmt(_)
        | NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateRangeStmt(_)
        | NodeEnum::CreateDomainStmt(_)
        | NodeEnum::AlterDomainStmt(_)
        | NodeEnum::DefineStmt(_)
        | NodeEnum::AlterTypeStmt(_)
        | NodeEnum::CreateFunctionStmt(_)
        | NodeEnum::AlterFunctionStmt(_)
        | NodeEnum::CreateExtensionStmt(_)
        | NodeEnum::AlterExtensionStmt(_)
        | NodeEnum::AlterExtensionContentsStmt(_)
        | NodeEnum::CreateCastStmt(_)
        | NodeEnum::CreateConversionStmt(_)
        | NodeEnum::CreateOpClassStmt(_)
        | NodeEnum::CreateOpFamilyStmt(_)
        | NodeEnum::AlterOpFamilyStmt(_)
        | NodeEnum::AlterOperatorStmt(_)
        | NodeEnum::CreateTransformStmt(_)
        | NodeEnum::AlterTsdictionaryStmt(_)
        | NodeEnum::AlterTsconfigurationStmt(_)
        | NodeEnum::AlterCollationStmt(_) => true,
        NodeEnum::CreateSchemaStmt(c) => c.schema_elts.is_empty(),
        NodeEnum::DropStmt(d) => of_kind(d.remove_type),
        NodeEnum::RenameStmt(r) => of_kind(r.rename_type),
        NodeEnum::AlterOwnerStmt(a) => of_kind(a.object_type),
        NodeEnum::AlterObjectSchemaStmt(a) => of_kind(a.object_type),
        NodeEnum::CommentStmt(c) => of_kind(c.objtype),
        NodeEnum::GrantStmt(g) => {
            g.targtype == pb::GrantTargetType::AclTargetObject as i32 && of_kind(g.objtype)
        }
        _ => false,
    }
}

/// True for statements that change the schema or privileges (CREATE, ALTER, DROP and their
/// kin: TRUNCATE, GRANT, COMMENT, REINDEX, …).
pub(super) fn is_ddl(stmt: &NodeEnum) -> bool {
    matches!(
        stmt,
        NodeEnum::CreateSchemaStmt(_)
            | NodeEnum::AlterTableStmt(_)
            | NodeEnum::AlterCollationStmt(_)
            | NodeEnum::AlterDomainStmt(_)
            | NodeEnum::AlterDefaultPrivilegesStmt(_)
            | NodeEnum::CreateStmt(_)
            | NodeEnum::CreateTableSpaceStmt(_)
            | NodeEnum::DropTableSpaceStmt(_)
            | NodeEnum::AlterTableSpaceOptionsStmt(_)
            | NodeEnum::AlterTableMoveAllStmt(_)
            | NodeEnum::CreateExtensionStmt(_)
            | NodeEnum::AlterExtensionStmt(_)
            | NodeEnum::AlterExtensionContentsStmt(_)
            | NodeEnum::CreateFdwStmt(_)
            | NodeEnum::AlterFdwStmt(_)
            | NodeEnum::CreateForeignServerStmt(_)
            | NodeEnum::AlterForeignServerStmt(_)
            | NodeEnum::CreateForeignTableStmt(_)
            | NodeEnum::CreateUserMappingStmt(_)
            | NodeEnum::AlterUserMappingStmt(_)
            | NodeEnum::DropUserMappingStmt(_)
            | NodeEnum::CreatePolicyStmt(_)
            | NodeEnum::AlterPolicyStmt(_)
            | NodeEnum::CreateAmStmt(_)
            | NodeEnum::CreateTrigStmt(_)
            | NodeEnum::CreateEventTrigStmt(_)
            | NodeEnum::AlterEventTrigStmt(_)
            | NodeEnum::CreatePlangStmt(_)
            | NodeEnum::CreateRoleStmt(_)
            | NodeEnum::AlterRoleStmt(_)
            | NodeEnum::AlterRoleSetStmt(_)
            | NodeEnum::DropRoleStmt(_)
            | NodeEnum::CreateSeqStmt(_)
            | NodeEnum::AlterSeqStmt(_)
            | NodeEnum::CreateDomainStmt(_)
            | NodeEnum::CreateOpClassStmt(_)
            | NodeEnum::CreateOpFamilyStmt(_)
            | NodeEnum::AlterOpFamilyStmt(_)
            | NodeEnum::DropStmt(_)
            | NodeEnum::CreateStatsStmt(_)
            | NodeEnum::AlterStatsStmt(_)
            | NodeEnum::CreateFunctionStmt(_)
            | NodeEnum::AlterFunctionStmt(_)
            | NodeEnum::AlterObjectDependsStmt(_)
            | NodeEnum::AlterObjectSchemaStmt(_)
            | NodeEnum::AlterOwnerStmt(_)
            | NodeEnum::AlterOperatorStmt(_)
            | NodeEnum::AlterTypeStmt(_)
            | NodeEnum::CreateEnumStmt(_)
            | NodeEnum::CreateRangeStmt(_)
            | NodeEnum::AlterEnumStmt(_)
            | NodeEnum::CreatedbStmt(_)
            | NodeEnum::AlterDatabaseStmt(_)
            | NodeEnum::AlterDatabaseRefreshCollStmt(_)
            | NodeEnum::AlterDatabaseSetStmt(_)
            | NodeEnum::DropdbStmt(_)
            | NodeEnum::AlterSystemStmt(_)
            | NodeEnum::CreateTableAsStmt(_)
            | NodeEnum::CreateConversionStmt(_)
            | NodeEnum::CreateCastStmt(_)
            | NodeEnum::CreateTransformStmt(_)
            | NodeEnum::DropOwnedStmt(_)
            | NodeEnum::AlterTsdictionaryStmt(_)
            | NodeEnum::AlterTsconfigurationStmt(_)
            | NodeEnum::CreatePublicationStmt(_)
            | NodeEnum::AlterPublicationStmt(_)
            | NodeEnum::CreateSubscriptionStmt(_)
            | NodeEnum::AlterSubscriptionStmt(_)
            | NodeEnum::DropSubscriptionStmt(_)
            | NodeEnum::TruncateStmt(_)
            | NodeEnum::CommentStmt(_)
            | NodeEnum::GrantStmt(_)
            | NodeEnum::GrantRoleStmt(_)
            | NodeEnum::IndexStmt(_)
            | NodeEnum::ViewStmt(_)
            | NodeEnum::RenameStmt(_)
            | NodeEnum::RuleStmt(_)
            | NodeEnum::CompositeTypeStmt(_)
            | NodeEnum::DefineStmt(_)
            | NodeEnum::SecLabelStmt(_)
            | NodeEnum::ReindexStmt(_)
            | NodeEnum::RefreshMatViewStmt(_)
            | NodeEnum::ClusterStmt(_)
            | NodeEnum::ImportForeignSchemaStmt(_)
            | NodeEnum::ReassignOwnedStmt(_)
    )
}

/// Tables that DROP and COMMENT name as lists of strings rather than as RangeVars.
pub(super) fn named_objects(stmt: &NodeEnum, scan: &mut Scan) {
    let table_like = |t: i32| {
        t == pb::ObjectType::ObjectTable as i32
            || t == pb::ObjectType::ObjectView as i32
            || t == pb::ObjectType::ObjectMatview as i32
            || t == pb::ObjectType::ObjectForeignTable as i32
    };
    let mut push = |n: &pb::Node| {
        let parts: Vec<String> = match n.node.as_ref() {
            Some(NodeEnum::List(l)) => l
                .items
                .iter()
                .filter_map(str_of)
                .map(str::to_lowercase)
                .collect(),
            _ => return,
        };
        match parts.as_slice() {
            [name] => scan.relations.push((String::new(), name.clone())),
            [.., schema, name] => scan.relations.push((schema.clone(), name.clone())),
            [] => {}
        }
    };
    match stmt {
        NodeEnum::DropStmt(d) if table_like(d.remove_type) => d.objects.iter().for_each(push),
        NodeEnum::CommentStmt(c) if table_like(c.objtype) => {
            if let Some(o) = c.object.as_deref() {
                push(o);
            }
        }
        _ => {}
    }
}

/// DROP/ALTER/COMMENT ON/REINDEX of indexes named without their table: routed by the index's
/// table, which the session looks up; every shard until then. True when `stmt` is one.
pub(super) fn names_indexes(stmt: &NodeEnum, scan: &Scan, facts: &mut StatementFacts) -> bool {
    let indexes = crate::router::index_owner::named_indexes(stmt);
    if indexes.is_empty() {
        return false;
    }
    facts.kind = StatementKind::Ddl;
    facts.is_write = true;
    facts.returns_no_rows = true;
    facts.every_shard = true;
    facts.no_transaction_block = super::utility::refuses_transaction_block(stmt, scan);
    facts.indexes = indexes;
    true
}

/// A view, materialized view or CREATE TABLE … AS whose query reads a sharded table: named as
/// such, since the generic "names tables of both placements" reads oddly for a new relation.
fn derived_from_sharded(stmt: &NodeEnum, scan: &Scan, tables: &ShardedTables) -> Option<Refused> {
    let (what, name) = match stmt {
        NodeEnum::ViewStmt(v) => ("CREATE VIEW", v.view.as_ref()?.relname.clone()),
        NodeEnum::CreateTableAsStmt(c) => {
            let what = if c.objtype == pb::ObjectType::ObjectMatview as i32 {
                "CREATE MATERIALIZED VIEW"
            } else {
                "CREATE TABLE … AS"
            };
            (what, c.into.as_ref()?.rel.as_ref()?.relname.clone())
        }
        _ => return None,
    };
    let table = scan
        .relations
        .iter()
        .filter(|(schema, name)| !(schema.is_empty() && scan.ctes.contains(name)))
        .find(|(schema, name)| tables.key_of(schema, name).is_some())
        .map(|(_, name)| name.clone())?;
    Some(Refused::DerivedFromSharded { what, name, table })
}

/// CREATE TABLE … AS / SELECT INTO: DDL, refused as its query is.
pub(super) fn analyze_create_table_as(
    c: &pb::CreateTableAsStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> Flow {
    facts.kind = StatementKind::Ddl;
    facts.is_write = true;
    tables::mark_tables(scan, tables, facts);
    if let Some(q) = node(&c.query) {
        let inner = analyze_stmt(q, tables);
        facts.refuse = inner.refuse;
    }
    Flow::Common
}

/// Any other statement: DDL when its type says so; its tables are marked either way.
pub(super) fn analyze_other(
    other: &NodeEnum,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) -> Flow {
    tables::mark_tables(scan, tables, facts);
    if is_ddl(other) {
        facts.kind = StatementKind::Ddl;
        facts.is_write = true;
        facts.numbered_table = numbered_table(other, tables);
    }
    Flow::Common
}

/// The sharded table a CREATE TABLE or ALTER TABLE makes or changes, quoted for SQL: its
/// columns may get sequences, which each shard must number in its own range.
fn numbered_table(stmt: &NodeEnum, tables: &ShardedTables) -> Option<String> {
    let relation = match stmt {
        NodeEnum::CreateStmt(c) => c.relation.as_ref()?,
        NodeEnum::AlterTableStmt(a) if a.objtype() == pb::ObjectType::ObjectTable => {
            a.relation.as_ref()?
        }
        _ => return None,
    };
    let (schema, name) = (&relation.schemaname, &relation.relname);
    tables.key_of(schema, name)?;
    let schema = tables.resolve(schema, name)?;
    Some(crate::router::names::quote_qualified(
        &schema,
        &name.to_lowercase(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn session_bound_and_ddl() {
        let sb = |sql: &str| one(sql).session_bound;
        assert_eq!(sb("listen x"), None);
        let pin = |sql: &str| {
            let f = one(sql);
            assert_eq!(f.session_bound, None, "{sql}");
            f.pin
        };
        for (sql, want) in [
            ("select pg_advisory_lock(1)", Some(SessionPin::AdvisoryLock)),
            (
                "select pg_catalog.pg_try_advisory_lock_shared(1, 2)",
                Some(SessionPin::AdvisoryLock),
            ),
            (
                "select pg_advisory_unlock_all()",
                Some(SessionPin::AdvisoryLock),
            ),
            ("select pg_advisory_xact_lock(1)", None),
            ("select myschema.pg_advisory_lock(1)", None),
            ("create temp table t (a int)", Some(SessionPin::TempTable)),
            (
                "create temporary table t (a int)",
                Some(SessionPin::TempTable),
            ),
            ("select 1 as a into temp t", Some(SessionPin::TempTable)),
            (
                "declare c cursor with hold for select 1",
                Some(SessionPin::HoldCursor),
            ),
            ("declare c cursor for select 1", None),
            ("select 1", None),
        ] {
            assert_eq!(pin(sql), want, "{sql}");
        }
        // Advisory locks of both levels live on the designated shard (that of unsharded tables).
        assert!(one("select pg_advisory_lock(1)").unsharded);
        assert!(one("select pg_advisory_xact_lock(1)").unsharded);
        assert!(!one("select 1").unsharded);
        assert_eq!(sb("declare c cursor for select 1"), None);
        assert_eq!(
            sb("prepare p as select 1"),
            Some("SQL-level PREPARE".into())
        );
        assert_eq!(sb("execute p"), Some("SQL-level PREPARE".into()));
        assert_eq!(sb("deallocate p"), Some("SQL-level PREPARE".into()));
        assert_eq!(sb("deallocate all"), None);
        assert_eq!(
            one("DEALLOCATE ALL").local,
            Some(LocalCommand::DeallocateAll)
        );
        let f = one("create table users (user_id bigint primary key)");
        assert_eq!(f.kind, StatementKind::Ddl);
        assert!(f.is_write && f.sharded);
        assert_eq!(one("drop table countries").kind, StatementKind::Ddl);
        assert_eq!(one("truncate users").kind, StatementKind::Ddl);
        assert_eq!(one("create index on users (name)").kind, StatementKind::Ddl);
        assert_eq!(
            one("comment on table users is 'x'").kind,
            StatementKind::Ddl
        );
        assert_eq!(one("grant select on users to bob").kind, StatementKind::Ddl);
        assert!(one("select * into newt from countries").is_write);
    }

    #[test]
    fn reference_and_every_shard_facts() {
        let t = tables().with_reference(&["countries".to_string()]);
        let f = |sql: &str| analyze(sql, &t).remove(0);
        let r = f("select * from countries");
        assert!(r.reference && !r.unsharded && !r.sharded && !r.every_shard);
        let r = f("select * from users u join countries c on c.code = u.cc where u.user_id = 1");
        assert_eq!(r.refuse, None);
        assert_eq!(r.key, vals(&[Const(1)]));
        assert!(f("insert into countries (code) values ('x')").every_shard);
        assert!(f("drop table countries").every_shard);
        assert!(f("drop table users").every_shard);
        assert!(f("comment on table users is 'x'").every_shard);
        assert!(f("drop index users_name").every_shard);
        assert!(f("vacuum").every_shard);
        assert!(!f("vacuum logs").every_shard);
        assert!(!f("drop table logs").every_shard);
        for sql in [
            "create function f() returns int as 'select 1' language sql",
            "create or replace procedure p() language sql as 'select 1'",
            "alter function f() owner to bob",
            "drop function if exists f(int)",
            "create type mood as enum ('sad', 'ok')",
            "alter type mood add value 'happy'",
            "alter type mood rename to feeling",
            "create type pair as (a int, b text)",
            "create type span as range (subtype = int4)",
            "drop type mood",
            "create domain posint as int check (value > 0)",
            "drop domain posint cascade",
            "create extension if not exists citext",
            "drop extension citext",
            "create schema billing",
            "drop schema billing cascade",
            "comment on type mood is 'x'",
            "grant usage on type mood to bob",
            "grant execute on function f() to bob",
            "create aggregate agg (int) (sfunc = int4pl, stype = int)",
            "create collation ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
        ] {
            let facts = f(sql);
            assert!(facts.every_shard && facts.refuse.is_none(), "{sql}");
        }
        for sql in [
            "create schema billing create table invoices (id int)",
            "grant select on all tables in schema public to bob",
            "create sequence s",
            "create view v as select 1",
        ] {
            assert!(!f(sql).every_shard, "{sql}");
        }
        for (sql, what, name) in [
            (
                "create view v as select user_id, name from users",
                "CREATE VIEW",
                "v",
            ),
            (
                "create materialized view mv as select count(*) from users",
                "CREATE MATERIALIZED VIEW",
                "mv",
            ),
            (
                "create table copy_of as select * from users",
                "CREATE TABLE … AS",
                "copy_of",
            ),
        ] {
            assert_eq!(
                f(sql).refuse,
                Some(Refused::DerivedFromSharded {
                    what,
                    name: name.into(),
                    table: "users".into()
                }),
                "{sql}"
            );
        }
        assert_eq!(
            f("drop table users, logs").refuse,
            Some(Refused::MixedPlacement {
                everywhere: "users".into(),
                local: "logs".into()
            })
        );
    }

    #[test]
    fn writes_without_returning_and_ddl_answer_no_rows() {
        for (sql, want) in [
            ("alter table users add column x int", true),
            ("create index on users (name)", true),
            ("drop index users_name", true),
            ("create type mood as enum ('a')", true),
            ("truncate users", true),
            ("update users set name = 'x' where name = 'y'", true),
            ("delete from users where name = 'y'", true),
            ("insert into users (user_id) values (1)", true),
            ("update users set name = 'x' returning user_id", false),
            ("insert into users (user_id) values (1) returning *", false),
            ("select * from users", false),
        ] {
            assert_eq!(one(sql).returns_no_rows, want, "{sql}");
        }
    }

    #[test]
    fn tables_whose_sequences_are_numbered_per_shard() {
        for (sql, want) in [
            (
                "create table orders (id bigserial, user_id bigint)",
                Some("public.orders"),
            ),
            (
                "CREATE TABLE public.Orders (id serial, user_id int)",
                Some("public.orders"),
            ),
            (
                "alter table orders add column n bigserial",
                Some("public.orders"),
            ),
            (
                "alter table users alter column user_id add generated by default as identity",
                Some("public.users"),
            ),
            ("create table countries (id serial)", None),
            ("alter table countries add column n serial", None),
            ("create index on orders (id)", None),
            ("alter index orders_pkey rename to o_pkey", None),
            ("drop table orders", None),
        ] {
            assert_eq!(one(sql).numbered_table.as_deref(), want, "{sql}");
        }
    }
}
