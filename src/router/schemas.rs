//! Schema-based sharding: a statement that names tables of a tenant schema (`[[sharded_schemas]]`),
//! qualified or through a search_path that resolves to it, runs whole on that tenant's shard.
//! Statements that would need two tenants on different shards, or a tenant with sharded or
//! unsharded tables (which live elsewhere), are refused: their join cannot be answered by one
//! Postgres.

use std::collections::{BTreeMap, HashSet};

use pg_query::{NodeEnum, NodeRef};

use super::facts::Refused;
use super::names::ShardedTables;
use super::StatementFacts;

/// How one table name of a statement resolves for tenant placement.
enum Named {
    /// In this schema (a tenant's or not).
    Schema(String),
    /// Unqualified, not known in the tenant schema that comes first on the path, while other
    /// schemas follow it there: Postgres may take it from any of them.
    Unknown { name: String, tenant: String },
}

fn is_system(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema" || schema.starts_with("pg_")
}

/// Where [`placement`] puts a statement.
#[derive(Debug, PartialEq)]
enum Placement {
    /// It names no tenant: routed as if there were none.
    Elsewhere,
    /// It reads only the system catalogs and reference tables (or no relation at all): it
    /// answers about the tenant it
    /// names in a value, else about the session's current tenant (first on the path), so it runs
    /// on that tenant's shard — where its relations are visible (`pg_table_is_visible`,
    /// `current_schema()`, `information_schema` of the tenant).
    Catalog,
    /// It names these tenants, all on this shard.
    Tenants(u32, Vec<String>),
}

/// Marks each statement of `sql` that names a tenant schema with its shard, or refuses it.
pub fn place(sql: &str, tables: &ShardedTables, facts: &mut [StatementFacts]) {
    if !tables.has_tenants() {
        return;
    }
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return;
    };
    let stmts: Vec<&NodeEnum> = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| raw.stmt.as_ref()?.node.as_ref())
        .collect();
    if stmts.len() != facts.len() {
        return;
    }
    for (stmt, f) in stmts.into_iter().zip(facts.iter_mut()) {
        if f.local.is_some() {
            continue;
        }
        match (placement(stmt, tables), &f.refuse) {
            (Ok(Placement::Tenants(shard, tenants)), None) => {
                f.schema_shard = Some(shard);
                f.tenants = tenants;
            }
            // A routing hint of its own says where it runs.
            (Ok(Placement::Catalog), None) if f.hint.is_none() && asks_about_schemas(stmt, f) => {
                if let Some((tenant, shard)) = tenant_in_constants(stmt, tables) {
                    // Written in the statement (pgjdbc's DatabaseMetaData, a prepared text).
                    f.schema_shard = Some(shard);
                    f.tenants = vec![tenant];
                    continue;
                }
                f.catalog_params = Some(params_of(stmt));
                if let Some(first) = tables.path_first() {
                    if let Some(shard) = tables.tenant_shard(first) {
                        f.schema_shard = Some(shard);
                        f.tenants = vec![first.to_lowercase()];
                    }
                }
            }
            (Err(why), None) => f.refuse = Some(Refused::TenantSchema(why)),
            // Refused already (a tenant's table joined with a sharded one reads as a join with
            // an unsharded table): the tenant's reason names what is missing, and a Parse can
            // be refused at once, unless running a subquery first may still lift the refusal.
            (Err(why), Some(r))
                if !r.liftable_by_running_subqueries_first() || !has_subquery(stmt) =>
            {
                f.refuse = Some(Refused::TenantSchema(why))
            }
            _ => {}
        }
    }
}

/// The schemas `CREATE SCHEMA` statements of `sql` create (lowercase): a new tenant among them is
/// placed before the statement runs.
pub fn created_schemas(sql: &str) -> Vec<String> {
    if !sql.to_ascii_lowercase().contains("schema") {
        return Vec::new();
    }
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Vec::new();
    };
    parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| match raw.stmt.as_ref()?.node.as_ref()? {
            NodeEnum::CreateSchemaStmt(c) if !c.schemaname.is_empty() => {
                Some(c.schemaname.to_lowercase())
            }
            _ => None,
        })
        .collect()
}

/// Whether a statement [`placement`] found reading only catalogs (or nothing) is one that asks
/// about the session's schemas: a SELECT that names a catalog relation, or names none and changes
/// nothing the session must keep where it is (settings, advisory locks).
fn asks_about_schemas(stmt: &NodeEnum, f: &StatementFacts) -> bool {
    f.kind == super::StatementKind::Select
        && f.pin.is_none()
        && f.set_config.is_none()
        && f.set_config_bound.is_none()
        && !f.is_write
        && !f.locks_rows
        && matches!(stmt, NodeEnum::SelectStmt(_))
}

/// The first string constant of the statement that names a tenant (a LIKE pattern's escaped
/// `\_` read as `_`), with its shard.
fn tenant_in_constants(stmt: &NodeEnum, tables: &ShardedTables) -> Option<(String, u32)> {
    stmt.nodes().into_iter().find_map(|(node, ..)| {
        let NodeRef::AConst(c) = node else {
            return None;
        };
        let Some(pg_query::protobuf::a_const::Val::Sval(s)) = c.val.as_ref() else {
            return None;
        };
        let name = schema_in_value(&s.sval);
        tables
            .tenant_shard(&name)
            .map(|shard| (name.to_lowercase(), shard))
    })
}

/// The schema a catalog query's string value may name: the value itself, a LIKE pattern of it
/// (`tenant\_a`), or the schema of a qualified name (`'tenant_a.orders'` for
/// `pg_total_relation_size`, `has_table_privilege`, `::regclass`; quoted or not).
fn schema_in_value(value: &str) -> String {
    let text = value.replace('\\', "");
    text.split('.')
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// The parameters (`$n`) a statement reads: a catalog query's schema name usually comes as one
/// (the simple protocol's literals become parameters too).
fn params_of(stmt: &NodeEnum) -> Vec<usize> {
    let mut params: Vec<usize> = stmt
        .nodes()
        .into_iter()
        .filter_map(|(node, ..)| match node {
            NodeRef::ParamRef(p) => usize::try_from(p.number).ok().filter(|&n| n > 0),
            _ => None,
        })
        .collect();
    params.sort_unstable();
    params.dedup();
    params
}

/// Whether the statement holds a subquery or CTE (which pgshard may run first).
fn has_subquery(stmt: &NodeEnum) -> bool {
    stmt.nodes().into_iter().any(|(node, ..)| {
        matches!(
            node,
            NodeRef::SubLink(_) | NodeRef::RangeSubselect(_) | NodeRef::CommonTableExpr(_)
        )
    })
}

/// The refusal [`place`] gave the statement, if any: a Parse can be refused at once, as no one
/// shard holds every table such a statement names, so none could describe it.
pub fn refusal(f: &StatementFacts) -> Option<&str> {
    match &f.refuse {
        Some(Refused::TenantSchema(why)) => Some(why),
        _ => None,
    }
}

/// The shard of the tenants a statement names (and those tenants), whether it reads only the
/// catalogs, or why it cannot run on one shard.
fn placement(stmt: &NodeEnum, tables: &ShardedTables) -> Result<Placement, String> {
    let mut ctes = HashSet::new();
    let mut named: Vec<Named> = Vec::new();
    // Catalogs or reference tables named: relations every shard holds.
    let mut catalogs = false;
    // The relation a CREATE TABLE / VIEW / TABLE AS / MATERIALIZED VIEW makes.
    let created = match stmt {
        NodeEnum::CreateStmt(c) => c.relation.as_ref(),
        NodeEnum::ViewStmt(v) => v.view.as_ref(),
        NodeEnum::CreateTableAsStmt(c) => c.into.as_ref().and_then(|i| i.rel.as_ref()),
        _ => None,
    }
    .map(|r| r.relname.to_lowercase());
    for (node, _depth, _context, _) in stmt.nodes() {
        match node {
            NodeRef::CommonTableExpr(c) => {
                ctes.insert(c.ctename.to_lowercase());
            }
            NodeRef::CreateSchemaStmt(c) => {
                if tables.unplaced_tenant(&c.schemaname) {
                    return Err(format!(
                        "schema {} is a new tenant ([tenants] schema_prefix) that pgshard could not place on a shard (the catalog was unreachable or a rebalancing job is running); try again",
                        c.schemaname.to_lowercase()
                    ));
                }
                named.push(Named::Schema(c.schemaname.to_lowercase()))
            }
            _ => {}
        }
    }
    named.extend(schemas_named_by_utility(stmt, tables)?);
    if let NodeEnum::DropStmt(d) = stmt {
        if d.remove_type == pg_query::protobuf::ObjectType::ObjectSchema as i32 {
            for o in &d.objects {
                if let Some(NodeEnum::String(s)) = o.node.as_ref() {
                    named.push(Named::Schema(s.sval.to_lowercase()));
                }
            }
        }
    }
    for (node, _depth, _context, _) in stmt.nodes() {
        let NodeRef::RangeVar(rv) = node else {
            continue;
        };
        let (schema, name) = (rv.schemaname.to_lowercase(), rv.relname.to_lowercase());
        if schema.is_empty() && ctes.contains(&name) {
            continue;
        }
        if tables.is_reference(&schema, &name) {
            // On every shard: read where the statement's other relations are.
            catalogs = true;
            continue;
        }
        if schema.is_empty() && name.starts_with("pg_") && tables.resolve_known("", &name).is_none()
        {
            // pg_catalog comes first on every path unless the path names it later.
            named.push(Named::Schema("pg_catalog".into()));
            continue;
        }
        if schema.is_empty() && created.as_deref() == Some(name.as_str()) {
            // CREATE TABLE puts an unqualified name in the first schema of the path.
            if let Some(first) = tables.path_first() {
                named.push(Named::Schema(first.to_lowercase()));
                continue;
            }
        }
        named.push(tables.resolve_for_tenants(&schema, &name));
    }
    let mut tenants: BTreeMap<String, u32> = BTreeMap::new();
    let mut others: Vec<String> = Vec::new();
    for n in named {
        match n {
            Named::Schema(s) => match tables.tenant_shard(&s) {
                Some(shard) => {
                    tenants.insert(s, shard);
                }
                None if is_system(&s) => catalogs = true,
                None => others.push(s),
            },
            Named::Unknown { name, tenant } => {
                return Err(format!(
                    "table {name} is not known in tenant schema {tenant}, which comes first on the search_path before other schemas (qualify it, or create it through pgshard)"
                ))
            }
        }
    }
    let Some((first_tenant, &shard)) = tenants.iter().next() else {
        let only_catalogs = others.is_empty() && (catalogs || !has_relations(stmt));
        return Ok(if only_catalogs {
            Placement::Catalog
        } else {
            Placement::Elsewhere
        });
    };
    if let Some((other, other_shard)) = tenants.iter().find(|(_, &s)| s != shard) {
        return Err(format!(
            "statement names tenant schemas {first_tenant} (shard {shard}) and {other} (shard {other_shard}), which live on different shards"
        ));
    }
    if !others.is_empty() {
        return Err(format!(
            "statement names tenant schema {first_tenant} (shard {shard}) together with tables outside it, which do not live on that shard alone"
        ));
    }
    Ok(Placement::Tenants(shard, tenants.into_keys().collect()))
}

/// The schemas a utility statement names outside the table names the node walk finds: GRANT …
/// ON SCHEMA / ON ALL … IN SCHEMA, ALTER DEFAULT PRIVILEGES IN SCHEMA, COMMENT ON SCHEMA, the
/// table an ALTER … RENAME names, the schema CREATE SEQUENCE and CREATE FUNCTION create in (the
/// first of the path when unqualified). Renaming a tenant schema is refused: placements are by
/// name.
fn schemas_named_by_utility(stmt: &NodeEnum, tables: &ShardedTables) -> Result<Vec<Named>, String> {
    use pg_query::protobuf::{GrantTargetType, ObjectType};
    let string = |n: &pg_query::protobuf::Node| match n.node.as_ref() {
        Some(NodeEnum::String(s)) => Some(s.sval.to_lowercase()),
        _ => None,
    };
    let schema = ObjectType::ObjectSchema as i32;
    let in_path_first = || tables.path_first().map(|s| Named::Schema(s.to_lowercase()));
    let mut named = Vec::new();
    match stmt {
        NodeEnum::RenameStmt(r) => {
            if r.rename_type == schema && tables.tenant_shard(&r.subname).is_some() {
                return Err(format!(
                    "schema {} is a tenant, placed on its shard by name: it cannot be renamed",
                    r.subname.to_lowercase()
                ));
            }
            if let Some(rv) = &r.relation {
                named.push(tables.resolve_for_tenants(
                    &rv.schemaname.to_lowercase(),
                    &rv.relname.to_lowercase(),
                ));
            }
        }
        NodeEnum::CreateSeqStmt(c) => match &c.sequence {
            Some(rv) if !rv.schemaname.is_empty() => {
                named.push(Named::Schema(rv.schemaname.to_lowercase()))
            }
            Some(_) => named.extend(in_path_first()),
            None => {}
        },
        NodeEnum::CreateFunctionStmt(c) => match c.funcname.as_slice() {
            [one] if string(one).is_some() => named.extend(in_path_first()),
            [s, _] => named.extend(string(s).map(Named::Schema)),
            _ => {}
        },
        NodeEnum::GrantStmt(g)
            if g.objtype == schema
                || g.targtype == GrantTargetType::AclTargetAllInSchema as i32 =>
        {
            named.extend(g.objects.iter().filter_map(string).map(Named::Schema))
        }
        NodeEnum::AlterDefaultPrivilegesStmt(a) => {
            for option in &a.options {
                let Some(NodeEnum::DefElem(d)) = option.node.as_ref() else {
                    continue;
                };
                if d.defname != "schemas" {
                    continue;
                }
                if let Some(NodeEnum::List(l)) = d.arg.as_deref().and_then(|n| n.node.as_ref()) {
                    named.extend(l.items.iter().filter_map(string).map(Named::Schema));
                }
            }
        }
        NodeEnum::CommentStmt(c) if c.objtype == schema => {
            named.extend(c.object.as_deref().and_then(string).map(Named::Schema))
        }
        NodeEnum::DropStmt(d) => {
            let relations = [
                ObjectType::ObjectTable,
                ObjectType::ObjectView,
                ObjectType::ObjectMatview,
                ObjectType::ObjectSequence,
                ObjectType::ObjectForeignTable,
            ]
            .map(|t| t as i32);
            let routines = [
                ObjectType::ObjectFunction,
                ObjectType::ObjectProcedure,
                ObjectType::ObjectRoutine,
            ]
            .map(|t| t as i32);
            for object in &d.objects {
                let parts: Vec<String> = match object.node.as_ref() {
                    Some(NodeEnum::List(l)) if relations.contains(&d.remove_type) => {
                        l.items.iter().filter_map(string).collect()
                    }
                    Some(NodeEnum::ObjectWithArgs(o)) if routines.contains(&d.remove_type) => {
                        o.objname.iter().filter_map(string).collect()
                    }
                    _ => continue,
                };
                match parts.as_slice() {
                    // A table the node walk does not see (DROP names are not RangeVars).
                    [name] if relations.contains(&d.remove_type) => {
                        named.push(tables.resolve_for_tenants("", name))
                    }
                    [_] => named.extend(in_path_first()),
                    [schema, _] => named.push(Named::Schema(schema.clone())),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(named)
}

/// Whether the statement names any relation (a CTE's name included).
fn has_relations(stmt: &NodeEnum) -> bool {
    stmt.nodes()
        .into_iter()
        .any(|(node, ..)| matches!(node, NodeRef::RangeVar(_) | NodeRef::RangeFunction(_)))
}

/// Where a statement naming tenant schemas runs under `map`: their shard there (a statement
/// analysed before a tenant moved follows it), or why not when they now live apart. Tenants the
/// map does not list keep `analysed`, the shard found at analysis.
pub fn route(facts: &StatementFacts, analysed: u32, map: &super::ShardMap) -> Result<u32, String> {
    let mut placed = facts
        .tenants
        .iter()
        .map(|t| (t, map.tenant_shard(t).unwrap_or(analysed)));
    let Some((first, shard)) = placed.next() else {
        return Ok(analysed);
    };
    match placed.find(|(_, s)| *s != shard) {
        None => Ok(shard),
        Some((other, other_shard)) => Err(format!(
            "statement names tenant schemas {first} (shard {shard}) and {other} (shard {other_shard}), which live on different shards"
        )),
    }
}

impl super::Router {
    /// For a catalog query ([`StatementFacts::catalog_params`]): the shard of the first tenant
    /// one of its parameters names (the map in use first, then the placements the router
    /// follows), so `WHERE nspname = $1` with `tenant_a` reads the catalogs where tenant_a lives.
    pub fn tenant_asked_about(
        &self,
        facts: &StatementFacts,
        params: &dyn super::ParamSource,
        map: &super::ShardMap,
    ) -> Option<u32> {
        let catalog_params = facts.catalog_params.as_ref()?;
        if catalog_params.is_empty() {
            return None;
        }
        let followed = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        catalog_params.iter().find_map(|&n| {
            let value = params.raw(n)?.value?;
            let name = schema_in_value(std::str::from_utf8(&value).ok()?);
            map.tenant_shard(&name)
                .or_else(|| followed.get(&name).copied())
        })
    }
}

impl ShardedTables {
    /// For tenant placement: the schema a table name resolves to, as [`ShardedTables::resolve`]
    /// does over every relation known; an unqualified name known nowhere belongs to the first
    /// schema of the path when that schema is a tenant's and the only one.
    fn resolve_for_tenants(&self, schema: &str, name: &str) -> Named {
        if let Some(s) = self.resolve_known(schema, name) {
            return Named::Schema(s);
        }
        match self.path_first() {
            Some(first) if self.tenant_shard(first).is_some() => {
                if self.path_len() == 1 {
                    Named::Schema(first.to_lowercase())
                } else {
                    Named::Unknown {
                        name: name.to_string(),
                        tenant: first.to_string(),
                    }
                }
            }
            // Not a tenant's: an unsharded table (or a missing one, Postgres's error).
            _ => Named::Schema(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schemas::ShardedSchemaConfig;
    use crate::router::names::{SearchPath, Shadows};
    use std::sync::Arc;

    #[test]
    fn tenant_statements_run_on_their_shard() {
        let tenants =
            [("tenant_a", 1), ("tenant_b", 2), ("tenant_c", 1)].map(|(n, s)| ShardedSchemaConfig {
                name: n.into(),
                shard: s,
            });
        let base = ShardedTables::new(&[crate::config::ShardedTableConfig {
            name: "billing.invoices".into(),
            key: "id".into(),
            key_type: None,
        }])
        .with_reference(&["countries".into()])
        .with_schemas(&tenants);
        let shadows: Arc<Shadows> = Arc::new(
            [
                ("tenant_b", "orders"),
                ("tenant_a", "orders"),
                ("public", "plans"),
            ]
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .into_iter()
            .collect(),
        );
        let path = |p: &[&str]| SearchPath::new(p.iter().map(|s| s.to_string()).collect());
        // (path, sql, shard, or the start of the refusal)
        type Case<'a> = (&'a [&'a str], &'a str, Result<Option<u32>, &'a str>);
        let cases: &[Case] = &[
            (&["public"], "SELECT * FROM tenant_a.orders", Ok(Some(1))),
            (
                &["tenant_b", "public"],
                "INSERT INTO orders VALUES ($1)",
                Ok(Some(2)),
            ),
            (
                &["tenant_b", "public"],
                "CREATE TABLE items (id int)",
                Ok(Some(2)),
            ),
            (
                &["tenant_b", "public"],
                "SELECT * FROM items",
                Err("table items is not known"),
            ),
            (&["tenant_b"], "SELECT * FROM items", Ok(Some(2))),
            (&["tenant_b", "public"], "SELECT * FROM plans", Ok(None)),
            (&["public"], "CREATE SCHEMA tenant_c", Ok(Some(1))),
            (&["public"], "DROP SCHEMA tenant_b CASCADE", Ok(Some(2))),
            (
                &["public"],
                "SELECT * FROM tenant_a.orders JOIN tenant_c.orders USING (id)",
                Ok(Some(1)),
            ),
            (
                &["public"],
                "SELECT * FROM tenant_a.orders JOIN tenant_b.orders USING (id)",
                Err("statement names tenant schemas tenant_a (shard 1) and tenant_b (shard 2)"),
            ),
            (
                &["tenant_a"],
                "SELECT * FROM orders JOIN billing.invoices USING (id)",
                Err("statement names tenant schema tenant_a"),
            ),
            (
                &["tenant_a"],
                "SELECT * FROM orders JOIN countries USING (id)",
                Ok(Some(1)),
            ),
            (
                &["tenant_a"],
                "WITH o AS (SELECT 1) SELECT * FROM o, orders",
                Ok(Some(1)),
            ),
            (&["public"], "SELECT * FROM plans", Ok(None)),
            // Utility statements naming a tenant outside table names, or creating in the path's
            // first schema.
            (
                &["tenant_b", "public"],
                "ALTER TABLE orders RENAME TO orders2",
                Ok(Some(2)),
            ),
            (&["tenant_b", "public"], "CREATE SEQUENCE s1", Ok(Some(2))),
            (
                &["tenant_b", "public"],
                "CREATE VIEW recent AS SELECT * FROM orders",
                Ok(Some(2)),
            ),
            (
                &["tenant_b", "public"],
                "CREATE MATERIALIZED VIEW m AS SELECT * FROM orders",
                Ok(Some(2)),
            ),
            (
                &["tenant_b", "public"],
                "CREATE TABLE copy AS SELECT * FROM orders",
                Ok(Some(2)),
            ),
            (&["public"], "CREATE SEQUENCE tenant_a.s1", Ok(Some(1))),
            (
                &["tenant_b", "public"],
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                Ok(Some(2)),
            ),
            (
                &["public"],
                "GRANT USAGE ON SCHEMA tenant_a TO PUBLIC",
                Ok(Some(1)),
            ),
            (
                &["public"],
                "GRANT SELECT ON ALL TABLES IN SCHEMA tenant_b TO PUBLIC",
                Ok(Some(2)),
            ),
            (
                &["public"],
                "ALTER DEFAULT PRIVILEGES IN SCHEMA tenant_b GRANT SELECT ON TABLES TO PUBLIC",
                Ok(Some(2)),
            ),
            (
                &["public"],
                "COMMENT ON SCHEMA tenant_c IS 'c'",
                Ok(Some(1)),
            ),
            (
                &["tenant_b", "public"],
                "DROP TABLE IF EXISTS orders",
                Ok(Some(2)),
            ),
            (&["public"], "DROP VIEW tenant_a.v", Ok(Some(1))),
            (&["tenant_b", "public"], "DROP FUNCTION f()", Ok(Some(2))),
            (
                &["tenant_b", "public"],
                "DROP TABLE orders, billing.invoices",
                Err("statement names tenant schema tenant_b"),
            ),
            (
                &["public"],
                "ALTER SCHEMA tenant_a RENAME TO x",
                Err("schema tenant_a is a tenant"),
            ),
        ];
        for (p, sql, want) in cases {
            let tables = base.resolving(&path(p), &shadows);
            let parsed = pg_query::parse(sql, 0).expect("parses");
            let stmt = parsed.protobuf.stmts[0]
                .stmt
                .as_ref()
                .and_then(|n| n.node.as_ref())
                .expect("a statement");
            let got = placement(stmt, &tables).map(|p| match p {
                Placement::Tenants(shard, _) => Some(shard),
                Placement::Elsewhere | Placement::Catalog => None,
            });
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{p:?} {sql}"),
                (Err(w), Err(g)) => assert!(g.starts_with(w), "{p:?} {sql}: {g}"),
                _ => panic!("{p:?} {sql}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Tenant placements come from the map in use: facts analysed before a tenant moved follow
    /// it, and a router that follows the new map analyses with the new placement.
    #[test]
    fn a_moved_tenant_routes_to_its_shard_in_the_map_in_use() {
        use crate::router::{literals::LiteralParams, Route, ShardMap, Strategy};
        let tenants = [("tenant_a", 1), ("tenant_c", 1)].map(|(n, s)| ShardedSchemaConfig {
            name: n.into(),
            shard: s,
        });
        let router = crate::router::Router::new(&[], 16).with_schemas(&tenants);
        let map = |placed: &[(&str, u32)]| {
            ShardMap::uniform(1, Strategy::Hash, &[1, 2])
                .with_tenants(placed.iter().map(|(s, n)| (s.to_string(), *n)).collect())
        };
        let (old, moved) = (
            map(&[("tenant_a", 1), ("tenant_c", 1)]),
            map(&[("TENANT_A", 2), ("tenant_c", 1)]),
        );
        let route = |sql: &str, m: &ShardMap| {
            let (facts, lits) = router.analyze_simple(sql);
            router.route(&facts[0], &LiteralParams(&lits), m, 1)
        };
        let one = "SELECT * FROM tenant_a.orders WHERE id = 1";
        let both = "SELECT * FROM tenant_a.orders JOIN tenant_c.orders USING (id)";
        assert_eq!(route(one, &old), Route::Single(1));
        assert_eq!(route(both, &old), Route::Single(1));
        assert_eq!(route(one, &moved), Route::Single(2));
        assert!(
            matches!(route(both, &moved), Route::Refuse(ref w) if w.contains("different shards")),
            "{:?}",
            route(both, &moved)
        );
        router.follow_tenants(&moved);
        assert_eq!(router.analyze_simple(one).0[0].schema_shard, Some(2));
        assert_eq!(
            router.analyze_simple("SELECT * FROM tenant_c.orders").0[0].tenants,
            vec!["tenant_c".to_string()]
        );
        // A configured tenant the map does not list keeps its configured shard.
        router.follow_tenants(&map(&[("tenant_a", 2)]));
        let c = router
            .analyze_simple("SELECT * FROM tenant_c.orders WHERE id = 2")
            .0[0]
            .clone();
        assert_eq!(c.schema_shard, Some(1));
    }

    /// Catalog queries ask about a tenant: the one a value names (`nspname = 'tenant_a'`, a
    /// literal or a Bind parameter), else the session's current one (first on its path), so they
    /// run where that tenant's relations are visible; other catalog reads route as before.
    #[test]
    fn catalog_queries_run_where_the_tenant_they_ask_about_lives() {
        use crate::router::{literals::LiteralParams, Route, ShardMap, Strategy};
        let tenants = [("tenant_a", 1), ("tenant_b", 2)].map(|(n, s)| ShardedSchemaConfig {
            name: n.into(),
            shard: s,
        });
        let router = crate::router::Router::new(&[], 16)
            .with_schemas(&tenants)
            .with_reference_tables(&["plans".into()]);
        let map = ShardMap::uniform(1, Strategy::Hash, &[0, 1, 2]);
        let path = |p: &[&str]| SearchPath::new(p.iter().map(|s| s.to_string()).collect());
        let route = |p: &[&str], sql: &str| {
            let (facts, lits) = router.analyze_simple_in(sql, &path(p));
            router.route(&facts[0], &LiteralParams(&lits), &map, 0)
        };
        let django = "SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)";
        let cases: &[(&[&str], &str, Route)] = &[
            (&["tenant_b", "public"], django, Route::Single(2)),
            // Catalogs are read where unsharded tables live, as before.
            (&["public"], django, Route::Single(0)),
            (
                &["tenant_b", "public"],
                "SELECT relname FROM pg_class WHERE relnamespace = 'orders'::regclass",
                Route::Single(2),
            ),
            (
                &["tenant_b", "public"],
                "SELECT current_schema(), current_schemas(false)",
                Route::Single(2),
            ),
            (
                &["tenant_b", "public"],
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tenant_a'",
                Route::Single(1),
            ),
            (
                &["public"],
                "SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_b'",
                Route::Single(2),
            ),
            (
                &["public"],
                "SELECT 1 FROM pg_namespace WHERE nspname = 'elsewhere'",
                Route::Single(0),
            ),
            (&["public"], "SELECT current_schema()", Route::Any),
            // A tenant's function over a reference table.
            (
                &["tenant_b", "public"],
                "SELECT order_count(), name FROM plans",
                Route::Single(2),
            ),
            (
                &["public"],
                "SELECT pg_total_relation_size('tenant_b.orders'), has_table_privilege('\"tenant_b\".\"orders\"', 'SELECT')",
                Route::Single(2),
            ),
            (
                &["tenant_a", "public"],
                "SELECT pg_advisory_lock(1)",
                Route::Single(0),
            ),
        ];
        for (p, sql, want) in cases {
            assert_eq!(&route(p, sql), want, "{p:?} {sql}");
        }
        // A Bind's parameter names the tenant (SQLAlchemy's inspector, django-tenants).
        let prepared = router.analyze_prepared_in(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            &path(&["public"]),
        );
        let value = [crate::router::literals::Literal::Str("tenant_a".into())];
        assert_eq!(
            router.route(&prepared[0], &LiteralParams(&value), &map, 0),
            Route::Single(1)
        );
        // Written into a prepared text (pgjdbc's DatabaseMetaData: a LIKE pattern).
        let written = router.analyze_prepared_in(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'tenant\\_b' AND c.relname LIKE '%'",
            &path(&["tenant_a", "public"]),
        );
        assert_eq!(
            router.route(&written[0], &LiteralParams(&[]), &map, 0),
            Route::Single(2)
        );
    }

    /// `[tenants] schema_prefix`: creating a schema so named is refused until pgshard has placed
    /// it; once placed it runs on its shard. `created_schemas` finds what a request creates.
    #[test]
    fn new_tenants_run_only_once_placed() {
        let router = crate::router::Router::new(&[], 16).with_tenant_prefix(Some("tenant_"));
        let create = |sql: &str| router.analyze_simple(sql).0[0].clone();
        let f = create("CREATE SCHEMA tenant_x");
        assert!(
            matches!(&f.refuse, Some(Refused::TenantSchema(w)) if w.contains("new tenant")),
            "{:?}",
            f.refuse
        );
        assert_eq!(create("CREATE SCHEMA other").refuse, None);
        router.follow_tenants(
            &crate::router::ShardMap::uniform(2, crate::router::Strategy::Hash, &[1, 2])
                .with_tenants([("tenant_x".to_string(), 2)].into_iter().collect()),
        );
        let f = create("CREATE SCHEMA tenant_x");
        assert_eq!((f.refuse.is_none(), f.schema_shard), (true, Some(2)));
        assert_eq!(
            created_schemas("SELECT 1; CREATE SCHEMA Tenant_Y; create schema if not exists b AUTHORIZATION app; DROP SCHEMA c"),
            vec!["tenant_y".to_string(), "b".to_string()]
        );
        assert!(created_schemas("SELECT 'schema'").is_empty());
    }

    /// A statement the analysis refused already gets the tenant's reason when it mixes a tenant
    /// with other tables (so a Parse of it is refused at once), unless a subquery run first may
    /// still lift the refusal.
    #[test]
    fn refused_statements_naming_a_tenant_get_the_tenants_reason() {
        let tenants = [ShardedSchemaConfig {
            name: "tenant_a".into(),
            shard: 1,
        }];
        let router = crate::router::Router::new(
            &[crate::config::ShardedTableConfig {
                name: "billing.invoices".into(),
                key: "id".into(),
                key_type: None,
            }],
            16,
        )
        .with_schemas(&tenants);
        let public = SearchPath::new(vec!["public".into()]);
        let reason = |sql: &str| {
            router.analyze_in(sql, &public)[0]
                .refuse
                .as_ref()
                .map(|r| (matches!(r, Refused::TenantSchema(_)), r.to_string()))
        };
        let joined = reason("SELECT * FROM tenant_a.orders o JOIN billing.invoices i USING (id)")
            .expect("refused");
        assert!(joined.0 && joined.1.contains("tenant_a"), "{joined:?}");
        let lifted =
            reason("SELECT * FROM tenant_a.orders WHERE id IN (SELECT id FROM billing.invoices)")
                .expect("refused");
        assert!(!lifted.0, "{lifted:?}");
        assert_eq!(reason("SELECT * FROM tenant_a.orders"), None);
    }
}
