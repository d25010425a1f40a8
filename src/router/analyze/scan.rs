//! The whole-tree scan of one statement: every table, function, CTE name and nested write in
//! it, wherever it sits, so the families' analyses can judge what lies outside the top level.

use std::collections::HashSet;

use pg_query::protobuf as pb;
use pg_query::NodeEnum;
use pg_query::NodeRef;

use super::walk::{concurrent, Walk};

/// Aggregate functions recognised by name (user-defined aggregates are not).
pub(crate) const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "xmlagg",
    "any_value",
    "range_agg",
    "range_intersect_agg",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "grouping",
];

/// Transaction-level advisory locks: no pin, but the same designated shard as session locks.
pub(super) const XACT_LOCKS: &[&str] = &[
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
];

/// Session-level advisory locks: they pin the client to its server connection.
pub(super) const SESSION_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Everything found by walking a whole statement tree (by the typed walk, so no node type is missed).
#[derive(Default)]
pub(super) struct Scan {
    /// (schema, name) of every RangeVar, lowercased.
    pub(super) relations: Vec<(String, String)>,
    pub(super) temp: bool,
    /// Function names, lowercased parts.
    pub(super) funcs: Vec<FuncInfo>,
    pub(super) ctes: HashSet<String>,
    pub(super) nested_dml: bool,
    /// (schema, name) of the target of every INSERT/UPDATE/DELETE/MERGE, nested ones included.
    pub(super) dml_targets: Vec<(String, String)>,
    /// CURRENT_TIMESTAMP, CURRENT_DATE, CURRENT_USER and the like: their value depends on the server.
    pub(super) sql_value_function: bool,
    /// A `concurrent: true` flag anywhere (CREATE/DROP INDEX CONCURRENTLY, DETACH … CONCURRENTLY).
    pub(super) concurrent: bool,
}

pub(super) struct FuncInfo {
    pub(super) name: Vec<String>,
    /// agg_star, DISTINCT, FILTER, WITHIN GROUP or a known aggregate name.
    pub(super) aggregate: bool,
    pub(super) window: bool,
}

impl FuncInfo {
    pub(super) fn last(&self) -> &str {
        self.name.last().map(String::as_str).unwrap_or("")
    }
    pub(super) fn is_next_id(&self) -> bool {
        self.name.len() == 2 && self.name[0] == "pgshard" && self.name[1] == "next_id"
    }
}

fn lower_name(parts: &[pb::Node]) -> Vec<String> {
    parts
        .iter()
        .map(|p| str_of(p).unwrap_or("").to_lowercase())
        .collect()
}

fn scan_one(n: NodeRef<'_>, scan: &mut Scan) {
    if concurrent(n) {
        scan.concurrent = true;
    }
    match n {
        // A RangeVar, wherever it sits (as a Node or as a typed `relation` field).
        NodeRef::RangeVar(rv) => {
            scan.relations
                .push((rv.schemaname.to_lowercase(), rv.relname.to_lowercase()));
            if rv.relpersistence == "t" {
                scan.temp = true;
            }
        }
        NodeRef::FuncCall(f) => {
            let name = lower_name(&f.funcname);
            let last = name.last().cloned().unwrap_or_default();
            let builtin = name.len() == 1 || (name.len() == 2 && name[0] == "pg_catalog");
            let aggregate = f.agg_star
                || f.agg_distinct
                || f.agg_within_group
                || f.agg_filter.is_some()
                || (builtin && AGGREGATES.contains(&last.as_str()));
            scan.funcs.push(FuncInfo {
                name,
                aggregate,
                window: f.over.is_some(),
            });
        }
        NodeRef::CommonTableExpr(c) => {
            scan.ctes.insert(c.ctename.to_lowercase());
        }
        NodeRef::InsertStmt(s) => dml(scan, s.relation.as_ref()),
        NodeRef::UpdateStmt(s) => dml(scan, s.relation.as_ref()),
        NodeRef::DeleteStmt(s) => dml(scan, s.relation.as_ref()),
        NodeRef::MergeStmt(s) => dml(scan, s.relation.as_ref()),
        NodeRef::SqlvalueFunction(_) => scan.sql_value_function = true,
        _ => {}
    }
}

fn dml(scan: &mut Scan, rel: Option<&pb::RangeVar>) {
    scan.nested_dml = true;
    if let Some(rel) = rel {
        scan.dml_targets
            .push((rel.schemaname.to_lowercase(), rel.relname.to_lowercase()));
    }
}

/// The scan of every node the walk yields.
pub(super) fn scan_walk(walk: Walk<'_>) -> Scan {
    let mut scan = Scan::default();
    // `FOR UPDATE OF t` names a FROM item of its query (by its alias), not a relation of its
    // own: counted as one, every locking read with OF looked like a subquery over a table.
    let mut locked: Vec<&pb::RangeVar> = Vec::new();
    walk.for_each(|n| match n {
        NodeRef::LockingClause(lc) => {
            locked.extend(lc.locked_rels.iter().filter_map(|r| match r.node.as_ref() {
                Some(NodeEnum::RangeVar(rv)) => Some(rv),
                _ => None,
            }));
            scan_one(n, &mut scan);
        }
        NodeRef::RangeVar(rv) if locked.iter().any(|l| std::ptr::eq(*l, rv)) => {}
        _ => scan_one(n, &mut scan),
    });
    scan
}

/// True for a catalog relation (`pg_catalog`, `information_schema`, or an unqualified `pg_…`).
pub(super) fn is_catalog(schema: &str, name: &str) -> bool {
    matches!(schema, "pg_catalog" | "information_schema")
        || (schema.is_empty() && name.starts_with("pg_"))
}

/// The node inside an optional boxed child.
pub(super) fn node(n: &Option<Box<pb::Node>>) -> Option<&NodeEnum> {
    n.as_deref().and_then(|n| n.node.as_ref())
}

/// The text of a `String` node.
pub(super) fn str_of(n: &pb::Node) -> Option<&str> {
    match n.node.as_ref()? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}
