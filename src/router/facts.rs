//! Parser facts: what one parsed statement means for routing (which tables, which key values, is it
//! a write, does it need a merge, does it bind the session). Computed once per statement shape.

/// What kind of statement this is, as far as the session and the router care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE, and EXPLAIN of those.
    Select,
    Insert,
    Update,
    Delete,
    /// COPY; `from_stdin` is true for COPY … FROM STDIN.
    Copy {
        from_stdin: bool,
    },
    /// BEGIN / START TRANSACTION (the original text is replayed on each shard it reaches).
    Begin,
    /// COMMIT / END (also COMMIT AND CHAIN).
    Commit,
    /// ROLLBACK / ABORT (not ROLLBACK TO SAVEPOINT).
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO SAVEPOINT.
    Savepoint,
    /// A session-level `SET name = …` (value as SQL text to replay) or `RESET name` (value `None`).
    Set {
        name: String,
        value: Option<String>,
    },
    /// `SET LOCAL …`, `SET TRANSACTION …`: transaction-scoped, nothing to remember.
    SetLocal,
    /// `RESET ALL`.
    ResetAll,
    /// `SHOW name`.
    Show {
        name: String,
    },
    /// `DISCARD …`.
    Discard,
    /// CREATE/ALTER/DROP and other DDL.
    Ddl,
    /// The text did not parse; the first shard reports the exact syntax error.
    Unparsed,
    /// Anything else (utility commands, CALL, DO, …).
    Other,
}

/// A statement the proxy answers itself, never sent to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalCommand {
    /// `SET pgshard.name = value` (value unquoted) or `RESET pgshard.name` (value `None`).
    SetProxy { name: String, value: Option<String> },
    /// `SET LOCAL pgshard.name = value`: for the open block only.
    SetProxyLocal { name: String, value: Option<String> },
    /// `SHOW pgshard.name`.
    ShowProxy { name: String },
    /// `SELECT pgshard.next_id()`.
    NextId,
    /// `DEALLOCATE ALL`: the client's prepared statements live in the proxy (server-side ones
    /// are shared under digest names), so forgetting them is all of it. psycopg sends it after
    /// every rollback once it prepared a statement.
    DeallocateAll,
    /// `LISTEN channel`: the proxy's listening connection carries it (see `notify`).
    Listen { channel: String },
    /// `UNLISTEN channel`, or `UNLISTEN *` (`None`).
    Unlisten { channel: Option<String> },
    /// `NOTIFY channel [, 'payload']`: run on the channel shard, at COMMIT inside a block.
    Notify { channel: String, payload: String },
}

/// Where a shard-key value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// An integer constant written in the statement.
    Const(i64),
    /// A string constant written in the statement (`'…'`, `'…'::uuid`): read as the key's type.
    Text(String),
    /// `$n` (1-based): a Bind parameter, or in the simple protocol the n-th extracted literal.
    Param(usize),
}

/// What the statement's WHERE clause (or INSERT rows) pins the shard key to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFacts {
    /// No usable condition on the key: every shard may hold matching rows.
    Unknown,
    /// The key is one of these values (`=`, `IN (…)`, one per INSERT row in VALUES order).
    Values(Vec<KeyValue>),
    /// `key = ANY($n)` with an array parameter.
    ArrayParam(usize),
}

/// Everything the router and the session need to know about one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    pub kind: StatementKind,
    /// True when a sharded table is named anywhere in the statement.
    pub sharded: bool,
    /// True when a table that is not sharded (user table or catalog) is named.
    pub unsharded: bool,
    /// The shard key values, when the statement pins them.
    pub key: KeyFacts,
    /// True when the statement may modify data (INSERT/UPDATE/DELETE/COPY FROM/DDL, data-modifying CTEs,
    /// SELECT … FOR UPDATE counts as a read).
    pub is_write: bool,
    /// Set when the statement binds the client to one server connection for the rest of its session
    /// (LISTEN, session advisory locks, temporary tables, WITH HOLD cursors, PREPARE): names the feature.
    pub session_bound: Option<String>,
    /// Set when the statement can never be answered exactly across shards (a join of sharded tables that
    /// is not co-located, a subquery over a sharded table, an UPDATE of the shard key): names what is missing.
    pub refuse: Option<String>,
    /// Set when running on several shards would need more than concatenation (ORDER BY, LIMIT/OFFSET,
    /// aggregates, GROUP BY, DISTINCT, window functions, …): names the construct.
    pub needs_merge: Option<String>,
    /// For a SELECT with `needs_merge`: how to run it on several shards and merge the answers
    /// exactly, or the construct that cannot be merged exactly.
    pub merge: Option<Result<std::sync::Arc<crate::router::merge_plan::MergePlan>, String>>,
    /// For an INSERT into a sharded table whose column list omits the key: the number of VALUES rows
    /// that need generated ids.
    pub missing_key_rows: Option<usize>,
    /// Set when the proxy answers the statement itself.
    pub local: Option<LocalCommand>,
    /// The first sharded table the statement names and its shard key column, `(table, key)`, so
    /// refusals can name them.
    pub shard_key: Option<(String, String)>,
    /// The type of that table's shard key, which says how its key values are read and hashed.
    pub key_type: crate::router::KeyType,
    /// A leading `/* pgshard: … */` routing hint, or why it is malformed.
    pub hint: Option<Result<super::hint::Hint, String>>,
    /// For COPY: its table, column list, format and options.
    pub copy: Option<Box<super::copy_facts::CopyFacts>>,
    /// True when a reference table (copied whole to every shard) is named.
    pub reference: bool,
    /// True when the statement must change every shard the same way and any one shard's answer is
    /// the answer: DDL or maintenance of sharded or reference tables, writes to reference tables,
    /// VACUUM/ANALYZE/CLUSTER/REINDEX of the whole database.
    pub every_shard: bool,
    /// True when Postgres refuses the statement inside a transaction block (CREATE/DROP INDEX
    /// CONCURRENTLY, REINDEX CONCURRENTLY, VACUUM, CREATE/DROP DATABASE, ALTER SYSTEM, CLUSTER of
    /// the whole database, …): it must run on each shard outside any block, never under two-phase
    /// commit.
    pub no_transaction_block: bool,
    /// The indexes a DROP/ALTER/COMMENT ON/REINDEX INDEX names without naming their table: the
    /// session looks their tables up on the shards and routes by them.
    pub indexes: Vec<super::index_owner::IndexName>,
    /// For `INSERT … SELECT * FROM UNNEST($a, …)` into a sharded table: its array parameters,
    /// split per shard by the key's array (`key` is then `ArrayParam`).
    pub unnest: Option<super::unnest_insert::UnnestInsert>,
    /// For `INSERT … SELECT * FROM UNNEST($a, …)` into a sharded table whose column list omits
    /// the key: the `$n` of each UNNEST argument; the session adds a key array of generated keys.
    pub unnest_keyless: Option<Vec<usize>>,
    /// For DECLARE, FETCH, MOVE and CLOSE: the cursor and what is done with it, so the session
    /// keeps a cursor's statements where it lives.
    pub cursor: Option<super::cursor::CursorOp>,
    /// Set when the statement may leave state on its server connection that outlives the
    /// transaction (see `frontend::session_pins`): the session keeps that connection until it
    /// has checked.
    pub pin: Option<SessionPin>,
    /// For `SELECT set_config('name', 'value', false)`: the setting it makes, `(name, SQL
    /// value)`, tracked like SET; `Err` names a session-level call pgshard cannot follow.
    pub set_config: Option<Result<(String, String), String>>,
    /// For `SELECT set_config(…)` whose arguments come with the Bind: what to read there; the
    /// session turns it into `set_config` when it binds the statement.
    pub set_config_bound: Option<super::set_config::BoundCall>,
}

/// Session state that binds a client to its server connection past the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionPin {
    /// A session-level advisory lock (`pg_advisory_lock` and friends).
    AdvisoryLock,
    /// A temporary table (or other temporary relation).
    TempTable,
    /// A cursor declared `WITH HOLD`.
    HoldCursor,
}

impl SessionPin {
    /// The reason's name in SHOW CLIENTS and the pin metric's `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            SessionPin::AdvisoryLock => "advisory_lock",
            SessionPin::TempTable => "temp_table",
            SessionPin::HoldCursor => "hold_cursor",
        }
    }
}

impl StatementFacts {
    /// True when the statement names its shard-key values (`=`, `IN`, `= ANY`, INSERT rows).
    pub fn key_values_named(&self) -> bool {
        !matches!(self.key, KeyFacts::Unknown)
    }

    /// Facts for a statement that names no table and needs nothing special.
    pub fn plain(kind: StatementKind) -> StatementFacts {
        StatementFacts {
            kind,
            sharded: false,
            unsharded: false,
            key: KeyFacts::Unknown,
            is_write: false,
            session_bound: None,
            refuse: None,
            needs_merge: None,
            merge: None,
            missing_key_rows: None,
            local: None,
            shard_key: None,
            key_type: crate::router::KeyType::Int,
            hint: None,
            copy: None,
            reference: false,
            every_shard: false,
            no_transaction_block: false,
            indexes: Vec::new(),
            unnest: None,
            unnest_keyless: None,
            pin: None,
            set_config: None,
            set_config_bound: None,
            cursor: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------------------------

use std::collections::{HashMap, HashSet};

use pg_query::protobuf as pb;
use pg_query::protobuf::a_const::Val;

use crate::sql_text::quote_literal;
use pg_query::NodeEnum;
use serde_json::Value;

use crate::config::ShardedTableConfig;

/// The sharded tables of the configuration (lowercased table name → lowercased key column) and
/// its reference tables (lowercased names).
#[derive(Debug, Clone, Default)]
pub struct ShardedTables {
    keys: HashMap<String, String>,
    types: HashMap<String, crate::router::KeyType>,
    reference: HashSet<String>,
}

impl ShardedTables {
    pub fn new(tables: &[ShardedTableConfig]) -> ShardedTables {
        let name_of = |t: &ShardedTableConfig| {
            let name = t.name.to_lowercase();
            name.strip_prefix("public.").unwrap_or(&name).to_string()
        };
        let keys = tables
            .iter()
            .map(|t| (name_of(t), t.key.to_lowercase()))
            .collect();
        let types = tables
            .iter()
            .map(|t| (name_of(t), t.key_type.unwrap_or_default()))
            .collect();
        ShardedTables {
            keys,
            types,
            reference: HashSet::new(),
        }
    }

    /// The same tables plus these reference tables (names as in the config, `public.` optional).
    pub fn with_reference(mut self, names: &[String]) -> ShardedTables {
        self.reference = names
            .iter()
            .map(|n| {
                let name = n.to_lowercase();
                name.strip_prefix("public.").unwrap_or(&name).to_string()
            })
            .collect();
        self
    }

    /// True when the table `schema.name` is a reference table (schema empty or `public`).
    pub fn is_reference(&self, schema: &str, name: &str) -> bool {
        (schema.is_empty() || schema.eq_ignore_ascii_case("public"))
            && self.reference.contains(&name.to_lowercase())
    }

    /// The key type every sharded table shares, if they all share one (for a key hint on a
    /// statement that names no sharded table).
    pub fn common_key_type(&self) -> Option<crate::router::KeyType> {
        let mut types = self.types.values();
        let first = types.next().copied().unwrap_or_default();
        types.all(|&t| t == first).then_some(first)
    }

    /// The type of a sharded table's key (integer when unknown).
    pub fn key_type_of(&self, name: &str) -> crate::router::KeyType {
        self.types
            .get(&name.to_lowercase())
            .copied()
            .unwrap_or_default()
    }

    /// The key column of the table `schema.name` when it is sharded (schema empty or `public`).
    pub fn key_of(&self, schema: &str, name: &str) -> Option<&str> {
        if !(schema.is_empty() || schema.eq_ignore_ascii_case("public")) {
            return None;
        }
        self.keys.get(&name.to_lowercase()).map(String::as_str)
    }
}

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
const XACT_LOCKS: &[&str] = &[
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
];

const SESSION_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Everything found by walking a whole statement tree (as JSON, so no node type is missed).
#[derive(Default)]
struct Scan {
    /// (schema, name) of every RangeVar, lowercased.
    relations: Vec<(String, String)>,
    temp: bool,
    /// Function names, lowercased parts.
    funcs: Vec<FuncInfo>,
    ctes: HashSet<String>,
    nested_dml: bool,
    /// (schema, name) of the target of every INSERT/UPDATE/DELETE/MERGE, nested ones included.
    dml_targets: Vec<(String, String)>,
    /// CURRENT_TIMESTAMP, CURRENT_DATE, CURRENT_USER and the like: their value depends on the server.
    sql_value_function: bool,
    /// A `concurrent: true` flag anywhere (CREATE/DROP INDEX CONCURRENTLY, DETACH … CONCURRENTLY).
    concurrent: bool,
}

struct FuncInfo {
    name: Vec<String>,
    /// agg_star, DISTINCT, FILTER, WITHIN GROUP or a known aggregate name.
    aggregate: bool,
    window: bool,
}

impl FuncInfo {
    fn last(&self) -> &str {
        self.name.last().map(String::as_str).unwrap_or("")
    }
    fn is_next_id(&self) -> bool {
        self.name.len() == 2 && self.name[0] == "pgshard" && self.name[1] == "next_id"
    }
}

fn json_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn json_true(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn json_present(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

fn scan_value(v: &Value, scan: &mut Scan) {
    match v {
        Value::Object(map) => {
            // A RangeVar, wherever it sits (as a Node or as a typed `relation` field).
            if map.contains_key("relname") && map.contains_key("relpersistence") {
                scan.relations.push((
                    json_str(v, "schemaname").to_lowercase(),
                    json_str(v, "relname").to_lowercase(),
                ));
                if json_str(v, "relpersistence") == "t" {
                    scan.temp = true;
                }
            }
            for (k, child) in map {
                match k.as_str() {
                    "FuncCall" => {
                        let name: Vec<String> = child
                            .get("funcname")
                            .and_then(Value::as_array)
                            .map(|parts| {
                                parts
                                    .iter()
                                    .map(|p| {
                                        p.pointer("/node/String/sval")
                                            .and_then(Value::as_str)
                                            .unwrap_or("")
                                            .to_lowercase()
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let last = name.last().cloned().unwrap_or_default();
                        let builtin =
                            name.len() == 1 || (name.len() == 2 && name[0] == "pg_catalog");
                        let aggregate = json_true(child, "agg_star")
                            || json_true(child, "agg_distinct")
                            || json_true(child, "agg_within_group")
                            || json_present(child, "agg_filter")
                            || (builtin && AGGREGATES.contains(&last.as_str()));
                        scan.funcs.push(FuncInfo {
                            name,
                            aggregate,
                            window: json_present(child, "over"),
                        });
                    }
                    "CommonTableExpr" => {
                        scan.ctes.insert(json_str(child, "ctename").to_lowercase());
                    }
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                        scan.nested_dml = true;
                        if let Some(rel) = child.get("relation") {
                            scan.dml_targets.push((
                                json_str(rel, "schemaname").to_lowercase(),
                                json_str(rel, "relname").to_lowercase(),
                            ));
                        }
                    }
                    "SqlvalueFunction" | "SQLValueFunction" => scan.sql_value_function = true,
                    "concurrent" if child.as_bool() == Some(true) => scan.concurrent = true,
                    _ => {}
                }
                scan_value(child, scan);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| scan_value(i, scan)),
        _ => {}
    }
}

fn scan_node<T: serde::Serialize>(node: &T) -> Scan {
    let mut scan = Scan::default();
    if let Ok(v) = serde_json::to_value(node) {
        scan_value(&v, &mut scan);
    }
    scan
}

fn is_catalog(schema: &str, name: &str) -> bool {
    matches!(schema, "pg_catalog" | "information_schema")
        || (schema.is_empty() && name.starts_with("pg_"))
}

fn node(n: &Option<Box<pb::Node>>) -> Option<&NodeEnum> {
    n.as_deref().and_then(|n| n.node.as_ref())
}

fn str_of(n: &pb::Node) -> Option<&str> {
    match n.node.as_ref()? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// A table named in the top level of a statement (FROM, JOIN, target of a write).
#[derive(Debug, Clone)]
struct TableRef {
    name: String,
    /// The alias, or the table name when there is none (how columns are qualified).
    refname: String,
    key: Option<String>,
}

/// The state of analysing one statement.
struct Ctx<'a> {
    tables: &'a ShardedTables,
    refs: Vec<TableRef>,
    /// Equality conditions from JOIN … ON / WHERE / USING, as pairs of (qualifier, column).
    quals: Vec<&'a pb::Node>,
    using: Vec<(usize, Vec<usize>, Vec<String>)>,
    refuse: Option<String>,
}

impl<'a> Ctx<'a> {
    fn new(tables: &'a ShardedTables) -> Ctx<'a> {
        Ctx {
            tables,
            refs: Vec::new(),
            quals: Vec::new(),
            using: Vec::new(),
            refuse: None,
        }
    }
}

impl<'a> Ctx<'a> {
    fn refuse(&mut self, msg: String) {
        if self.refuse.is_none() {
            self.refuse = Some(msg);
        }
    }

    fn add_range_var(&mut self, rv: &pb::RangeVar) -> usize {
        let name = rv.relname.to_lowercase();
        let schema = rv.schemaname.to_lowercase();
        let key = self.tables.key_of(&schema, &name).map(str::to_string);
        let refname = rv
            .alias
            .as_ref()
            .map(|a| a.aliasname.to_lowercase())
            .unwrap_or_else(|| name.clone());
        self.refs.push(TableRef { name, refname, key });
        self.refs.len() - 1
    }

    /// Walks one FROM item; returns the indexes of the table refs it contains.
    fn add_from_item(&mut self, item: &'a pb::Node) -> Vec<usize> {
        match item.node.as_ref() {
            Some(NodeEnum::RangeVar(rv)) => vec![self.add_range_var(rv)],
            Some(NodeEnum::JoinExpr(j)) => {
                let left = j
                    .larg
                    .as_deref()
                    .map(|n| self.add_from_item(n))
                    .unwrap_or_default();
                let right = j
                    .rarg
                    .as_deref()
                    .map(|n| self.add_from_item(n))
                    .unwrap_or_default();
                if let Some(q) = j.quals.as_deref() {
                    self.quals.push(q);
                }
                let cols: Vec<String> = j
                    .using_clause
                    .iter()
                    .filter_map(str_of)
                    .map(str::to_lowercase)
                    .collect();
                if !cols.is_empty() {
                    for &r in &right {
                        self.using.push((r, left.clone(), cols.clone()));
                    }
                }
                left.into_iter().chain(right).collect()
            }
            // Subqueries and functions: their tables are found by the whole-tree scan.
            _ => Vec::new(),
        }
    }

    /// Which table ref a column reference names, if it is `[qualifier.]column` of a known ref.
    fn column_ref(&self, n: &pb::Node) -> Option<(usize, String)> {
        let cr = match n.node.as_ref()? {
            NodeEnum::ColumnRef(c) => c,
            _ => return None,
        };
        let parts: Vec<&str> = cr.fields.iter().map(str_of).collect::<Option<_>>()?;
        match parts.as_slice() {
            [col] => {
                // Unqualified: only unambiguous with exactly one table at the top level.
                if self.refs.len() == 1 {
                    Some((0, col.to_lowercase()))
                } else {
                    None
                }
            }
            [qual, col] | [_, qual, col] => {
                let qual = qual.to_lowercase();
                let mut found = self
                    .refs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.refname == qual);
                let (i, _) = found.next()?;
                if found.next().is_some() {
                    return None;
                }
                Some((i, col.to_lowercase()))
            }
            _ => None,
        }
    }

    /// The ref whose shard key `n` is.
    fn key_column(&self, n: &pb::Node) -> Option<usize> {
        let (i, col) = self.column_ref(strip_casts(n))?;
        (self.refs[i].key.as_deref() == Some(col.as_str())).then_some(i)
    }
}

fn strip_casts(mut n: &pb::Node) -> &pb::Node {
    while let Some(NodeEnum::TypeCast(tc)) = n.node.as_ref() {
        match tc.arg.as_deref() {
            Some(a) => n = a,
            None => break,
        }
    }
    n
}

pub(super) fn op_name(e: &pb::AExpr) -> Option<&str> {
    match e.name.as_slice() {
        [n] => str_of(n),
        [schema, n] if str_of(schema) == Some("pg_catalog") => str_of(n),
        _ => None,
    }
}

/// A constant or `$n` usable as a key value.
fn key_value(n: &pb::Node) -> Option<KeyValue> {
    let n = strip_casts(n);
    match n.node.as_ref()? {
        NodeEnum::ParamRef(p) => usize::try_from(p.number)
            .ok()
            .filter(|&n| n > 0)
            .map(KeyValue::Param),
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            Val::Sval(s) if !c.isnull => Some(KeyValue::Text(s.sval.clone())),
            _ => const_int(c, false).map(KeyValue::Const),
        },
        NodeEnum::AExpr(e)
            if e.kind == pb::AExprKind::AexprOp as i32
                && op_name(e) == Some("-")
                && e.lexpr.is_none() =>
        {
            match node(&e.rexpr) {
                Some(NodeEnum::AConst(c)) => const_int(c, true).map(KeyValue::Const),
                _ => None,
            }
        }
        _ => None,
    }
}

fn const_int(c: &pb::AConst, negate: bool) -> Option<i64> {
    if c.isnull {
        return None;
    }
    let v: i128 = match c.val.as_ref()? {
        Val::Ival(i) => i.ival as i128,
        Val::Fval(f) => f.fval.trim().parse().ok()?,
        Val::Sval(s) => s.sval.trim().parse().ok()?,
        _ => return None,
    };
    let v = if negate { -v } else { v };
    i64::try_from(v).ok()
}

/// The top-level AND conjuncts of a condition.
pub(super) fn conjuncts<'n>(n: &'n pb::Node, out: &mut Vec<&'n pb::Node>) {
    match n.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) if b.boolop == pb::BoolExprType::AndExpr as i32 => {
            for a in &b.args {
                conjuncts(a, out);
            }
        }
        Some(_) => out.push(n),
        None => {}
    }
}

/// What one conjunct says about a key: (ref index, key facts).
fn conjunct_key(ctx: &Ctx, c: &pb::Node) -> Option<(usize, KeyFacts)> {
    let e = match c.node.as_ref()? {
        NodeEnum::AExpr(e) => e,
        _ => return None,
    };
    if op_name(e) != Some("=") {
        return None;
    }
    let l = e.lexpr.as_deref()?;
    let r = e.rexpr.as_deref()?;
    let kind = e.kind;
    if kind == pb::AExprKind::AexprOp as i32 {
        if let Some(i) = ctx.key_column(l) {
            return key_value(r).map(|v| (i, KeyFacts::Values(vec![v])));
        }
        if let Some(i) = ctx.key_column(r) {
            return key_value(l).map(|v| (i, KeyFacts::Values(vec![v])));
        }
        None
    } else if kind == pb::AExprKind::AexprIn as i32 {
        let i = ctx.key_column(l)?;
        let items = match r.node.as_ref()? {
            NodeEnum::List(list) => &list.items,
            _ => return None,
        };
        let vals: Option<Vec<KeyValue>> = items.iter().map(key_value).collect();
        vals.map(|v| (i, KeyFacts::Values(v)))
    } else if kind == pb::AExprKind::AexprOpAny as i32 {
        let i = ctx.key_column(l)?;
        let r = strip_casts(r);
        match r.node.as_ref()? {
            NodeEnum::ParamRef(p) => usize::try_from(p.number)
                .ok()
                .filter(|&n| n > 0)
                .map(|n| (i, KeyFacts::ArrayParam(n))),
            NodeEnum::AArrayExpr(a) => {
                let vals: Option<Vec<KeyValue>> = a.elements.iter().map(key_value).collect();
                vals.map(|v| (i, KeyFacts::Values(v)))
            }
            NodeEnum::AConst(c) => match c.val.as_ref()? {
                Val::Sval(s) => crate::router::pg_array::decode_text(&s.sval)
                    .ok()?
                    .into_iter()
                    .map(|e| e.map(KeyValue::Text))
                    .collect::<Option<Vec<_>>>()
                    .map(|v| (i, KeyFacts::Values(v))),
                _ => None,
            },
            _ => None,
        }
    } else {
        None
    }
}

/// Pairs of refs whose keys a conjunct equates (`a.key = b.key`).
fn key_equality(ctx: &Ctx, c: &pb::Node) -> Option<(usize, usize)> {
    let e = match c.node.as_ref()? {
        NodeEnum::AExpr(e) if e.kind == pb::AExprKind::AexprOp as i32 => e,
        _ => return None,
    };
    if op_name(e) != Some("=") {
        return None;
    }
    let a = ctx.key_column(e.lexpr.as_deref()?)?;
    let b = ctx.key_column(e.rexpr.as_deref()?)?;
    Some((a, b))
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Checks the top-level tables (co-location, mixing) and finds the key from `where_clause`.
/// `scan` is the scan of the whole statement, for tables outside the top level.
fn tables_and_key(
    ctx: &mut Ctx,
    scan: &Scan,
    where_clause: Option<&pb::Node>,
    facts: &mut StatementFacts,
) {
    // Tables anywhere in the statement.
    let mut all_sharded: Vec<String> = Vec::new();
    let mut user_unsharded: Option<String> = None;
    for (schema, name) in &scan.relations {
        if schema.is_empty() && scan.ctes.contains(name) {
            continue;
        }
        if let Some(key) = ctx.tables.key_of(schema, name) {
            facts.sharded = true;
            if facts.shard_key.is_none() {
                facts.shard_key = Some((name.clone(), key.to_string()));
                facts.key_type = ctx.tables.key_type_of(name);
            }
            all_sharded.push(name.clone());
        } else if ctx.tables.is_reference(schema, name) {
            // A full copy on every shard: joins with anything local to a shard.
            facts.reference = true;
        } else {
            facts.unsharded = true;
            if !is_catalog(schema, name) && user_unsharded.is_none() {
                user_unsharded = Some(name.clone());
            }
        }
    }
    if !facts.sharded {
        return;
    }
    if let Some(u) = user_unsharded {
        let t = all_sharded[0].clone();
        ctx.refuse(format!(
            "join of sharded table {t} with unsharded table {u} (unsharded tables live only on the first shard)"
        ));
        return;
    }
    // Subqueries in WHERE correlated with the outer tables by shard key run whole on each shard.
    if let Some(w) = where_clause {
        let outer: Vec<super::subquery::OuterRef> = ctx
            .refs
            .iter()
            .map(|r| super::subquery::OuterRef {
                refname: &r.refname,
                key: r.key.as_deref(),
            })
            .collect();
        for t in super::subquery::pushed_down_tables(w, &outer, ctx.tables) {
            if let Some(p) = all_sharded.iter().position(|x| *x == t) {
                all_sharded.swap_remove(p);
            }
        }
    }
    // Sharded tables outside the top level (subqueries, CTEs, set-operation arms handled by caller).
    let mut top: Vec<String> = ctx
        .refs
        .iter()
        .filter(|r| r.key.is_some())
        .map(|r| r.name.clone())
        .collect();
    for t in &all_sharded {
        match top.iter().position(|x| x == t) {
            Some(p) => {
                top.swap_remove(p);
            }
            None => {
                ctx.refuse(format!(
                    "subquery over sharded table {t} is not supported unless it is in WHERE and correlated with an outer sharded table by shard key (inner.key = outer.key); run it first and pass its values as an array parameter (= ANY($1))"
                ));
                return;
            }
        }
    }
    // Co-location of the sharded tables at the top level.
    let sharded_refs: Vec<usize> = (0..ctx.refs.len())
        .filter(|&i| ctx.refs[i].key.is_some())
        .collect();
    let mut conds: Vec<&pb::Node> = Vec::new();
    for q in ctx.quals.clone() {
        conjuncts(q, &mut conds);
    }
    if let Some(w) = where_clause {
        conjuncts(w, &mut conds);
    }
    let mut parent: Vec<usize> = (0..ctx.refs.len()).collect();
    if sharded_refs.len() > 1 {
        for c in &conds {
            if let Some((a, b)) = key_equality(ctx, c) {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                parent[ra] = rb;
            }
        }
        for (r, left, cols) in ctx.using.clone() {
            let Some(rkey) = ctx.refs[r].key.clone() else {
                continue;
            };
            if !cols.contains(&rkey) {
                continue;
            }
            for l in left {
                if ctx.refs[l].key.as_deref() == Some(rkey.as_str()) {
                    let (ra, rb) = (find(&mut parent, l), find(&mut parent, r));
                    parent[ra] = rb;
                }
            }
        }
        let root = find(&mut parent, sharded_refs[0]);
        for &i in &sharded_refs[1..] {
            if find(&mut parent, i) != root {
                let (a, b) = (
                    ctx.refs[sharded_refs[0]].name.clone(),
                    ctx.refs[i].name.clone(),
                );
                ctx.refuse(format!(
                    "join of sharded tables {a} and {b} that is not on their shard keys (not co-located)"
                ));
                return;
            }
        }
    }
    // The key: the first WHERE conjunct that pins a sharded ref's key (all refs are co-located).
    if let Some(w) = where_clause {
        let mut cs = Vec::new();
        conjuncts(w, &mut cs);
        for c in cs {
            if let Some((_, k)) = conjunct_key(ctx, c) {
                facts.key = k;
                break;
            }
        }
    }
}

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
    let mut scan = scan_node(&s.target_list);
    if let Some(h) = &s.having_clause {
        let hs = scan_node(h);
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

fn analyze_select(
    s: &pb::SelectStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Select;
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
            refuse: None,
        };
        tables_and_key(&mut ctx, scan, None, facts);
        if facts.sharded {
            facts.refuse = Some(format!("{op} over sharded tables is not supported yet"));
            facts.needs_merge = Some(op.to_string());
        } else {
            facts.refuse = ctx.refuse;
        }
        return;
    }
    let mut ctx = Ctx::new(tables);
    for item in &s.from_clause {
        ctx.add_from_item(item);
    }
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
}

fn analyze_insert(
    i: &pb::InsertStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Insert;
    facts.is_write = true;
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
            facts.refuse = Some(format!(
                "ON CONFLICT DO UPDATE of shard key {t}.{key} is not supported; delete and insert the row instead"
            ));
            return;
        }
    }
    if i.cols.is_empty() {
        facts.refuse = Some(format!(
            "INSERT into sharded table {t} needs an explicit column list naming {key}"
        ));
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
        if pos.is_none() {
            facts.unnest_keyless = super::unnest_insert::unnest_args(i);
        }
        let unnest = pos.and_then(|pos| super::unnest_insert::detect(i, pos));
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
    let mut vals = Vec::with_capacity(rows.len());
    for row in rows {
        let item = match row.node.as_ref() {
            Some(NodeEnum::List(l)) => l.items.get(pos),
            _ => None,
        };
        match item.and_then(key_value) {
            Some(v) => vals.push(v),
            None => return,
        }
    }
    facts.key = KeyFacts::Values(vals);
}

fn analyze_update(
    u: &pb::UpdateStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Update;
    facts.is_write = true;
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
        if sets_key {
            let t = &ctx.refs[target].name;
            ctx.refuse(format!(
                "UPDATE of shard key {t}.{key} is not supported; delete and insert the row instead"
            ));
        }
    }
    tables_and_key(&mut ctx, scan, u.where_clause.as_deref(), facts);
    facts.refuse = ctx.refuse;
}

fn analyze_delete(
    d: &pb::DeleteStmt,
    tables: &ShardedTables,
    scan: &Scan,
    facts: &mut StatementFacts,
) {
    facts.kind = StatementKind::Delete;
    facts.is_write = true;
    let Some(rel) = &d.relation else { return };
    let mut ctx = Ctx::new(tables);
    ctx.add_range_var(rel);
    for item in &d.using_clause {
        ctx.add_from_item(item);
    }
    tables_and_key(&mut ctx, scan, d.where_clause.as_deref(), facts);
    facts.refuse = ctx.refuse;
}

/// Marks the tables of a statement without top-level analysis (DDL, COPY, utility commands).
fn mark_tables(scan: &Scan, tables: &ShardedTables, facts: &mut StatementFacts) {
    for (schema, name) in &scan.relations {
        if schema.is_empty() && scan.ctes.contains(name) {
            continue;
        }
        if let Some(key) = tables.key_of(schema, name) {
            facts.sharded = true;
            if facts.shard_key.is_none() {
                facts.shard_key = Some((name.clone(), key.to_string()));
                facts.key_type = tables.key_type_of(name);
            }
        } else if tables.is_reference(schema, name) {
            facts.reference = true;
        } else {
            facts.unsharded = true;
        }
    }
}

/// The first table named that is neither sharded, nor a reference table, nor a catalog: one that
/// lives only on the first shard.
fn first_local_table(scan: &Scan, tables: &ShardedTables) -> Option<String> {
    scan.relations
        .iter()
        .filter(|(schema, name)| !(schema.is_empty() && scan.ctes.contains(name)))
        .find(|(schema, name)| {
            tables.key_of(schema, name).is_none()
                && !tables.is_reference(schema, name)
                && !is_catalog(schema, name)
        })
        .map(|(_, name)| name.clone())
}

/// The first table named that is sharded or a reference table (lives on every shard).
fn first_everywhere_table(scan: &Scan, tables: &ShardedTables) -> Option<String> {
    scan.relations
        .iter()
        .filter(|(schema, name)| !(schema.is_empty() && scan.ctes.contains(name)))
        .find(|(schema, name)| {
            tables.key_of(schema, name).is_some() || tables.is_reference(schema, name)
        })
        .map(|(_, name)| name.clone())
}

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
fn every_shard_rules(
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
    if facts.kind == StatementKind::Ddl || maintenance {
        match (everywhere, local) {
            (Some(e), Some(l)) => {
                facts.refuse.get_or_insert(format!(
                    "a statement naming {e}, which lives on every shard, and {l}, which lives only on the first shard, cannot run on one set of shards; send one statement for each"
                ));
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
            facts.refuse.get_or_insert(format!(
                "write to reference table {target} must write the same rows on every shard, and {why}"
            ));
        }
        None => facts.every_shard = true,
    }
}

/// True when Postgres refuses the statement inside a transaction block.
fn refuses_transaction_block(stmt: &NodeEnum, scan: &Scan) -> bool {
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

fn proxy_name(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    lower.strip_prefix("pgshard.").map(str::to_string)
}

fn analyze_variable_set(v: &pb::VariableSetStmt, facts: &mut StatementFacts) {
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
    } else {
        // SET … FROM CURRENT, SET SESSION CHARACTERISTICS …: not replayable by value.
        facts.kind = StatementKind::Other;
        facts.session_bound = Some(format!("SET {name}"));
    }
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

/// The JSON key of a statement node: its type name, e.g. `CreateStmt`.
fn node_type_name(n: &NodeEnum) -> String {
    match serde_json::to_value(n) {
        Ok(Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

fn is_ddl(type_name: &str) -> bool {
    type_name.starts_with("Create")
        || type_name.starts_with("Alter")
        || type_name.starts_with("Drop")
        || matches!(
            type_name,
            "TruncateStmt"
                | "CommentStmt"
                | "GrantStmt"
                | "GrantRoleStmt"
                | "IndexStmt"
                | "ViewStmt"
                | "RenameStmt"
                | "RuleStmt"
                | "CompositeTypeStmt"
                | "DefineStmt"
                | "SecLabelStmt"
                | "ReindexStmt"
                | "RefreshMatViewStmt"
                | "ClusterStmt"
                | "ImportForeignSchemaStmt"
                | "ReassignOwnedStmt"
        )
}

/// Tables that DROP and COMMENT name as lists of strings rather than as RangeVars.
fn named_objects(stmt: &NodeEnum, scan: &mut Scan) {
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

fn analyze_stmt(stmt: &NodeEnum, tables: &ShardedTables) -> StatementFacts {
    let mut facts = StatementFacts::plain(StatementKind::Other);
    let mut scan = scan_node(stmt);
    named_objects(stmt, &mut scan);
    let indexes = super::index_owner::named_indexes(stmt);
    if !indexes.is_empty() {
        // Routed by the index's table, which the session looks up; every shard until then.
        facts.kind = StatementKind::Ddl;
        facts.is_write = true;
        facts.every_shard = true;
        facts.no_transaction_block = refuses_transaction_block(stmt, &scan);
        facts.indexes = indexes;
        return facts;
    }
    match stmt {
        NodeEnum::SelectStmt(s) => {
            if is_next_id_select(s) {
                facts.kind = StatementKind::Select;
                facts.local = Some(LocalCommand::NextId);
                return facts;
            }
            analyze_select(s, tables, &scan, &mut facts);
        }
        NodeEnum::InsertStmt(i) => analyze_insert(i, tables, &scan, &mut facts),
        NodeEnum::UpdateStmt(u) => analyze_update(u, tables, &scan, &mut facts),
        NodeEnum::DeleteStmt(d) => analyze_delete(d, tables, &scan, &mut facts),
        NodeEnum::MergeStmt(_) => {
            facts.is_write = true;
            mark_tables(&scan, tables, &mut facts);
            if facts.sharded {
                facts.refuse = Some("MERGE on a sharded table is not supported".into());
            }
        }
        NodeEnum::CopyStmt(c) => {
            facts.kind = StatementKind::Copy {
                from_stdin: c.is_from && !c.is_program && c.filename.is_empty(),
            };
            facts.is_write = c.is_from;
            facts.copy = Some(Box::new(super::copy_facts::analyze(c)));
            mark_tables(&scan, tables, &mut facts);
            if c.is_from && (c.is_program || !c.filename.is_empty()) && facts.sharded {
                // Rows read on a shard's host never pass through pgshard, so nothing splits them.
                facts.refuse = Some(
                    "COPY FROM a file or program on the server cannot load a sharded table: pgshard splits rows by key as they pass through it; use COPY … FROM STDIN (psql's \\copy)".into(),
                );
            }
            if let Some(rel) = c.relation.as_ref().filter(|_| c.is_from) {
                if tables.is_reference(&rel.schemaname, &rel.relname) {
                    facts.refuse = Some(format!(
                        "COPY FROM into reference table {} is not supported yet; use INSERT, which writes every shard",
                        rel.relname.to_lowercase()
                    ));
                }
            }
            if let Some(q) = node(&c.query) {
                let inner = analyze_stmt(q, tables);
                facts.key = inner.key;
                facts.refuse = inner.refuse;
                facts.needs_merge = inner.needs_merge;
                facts.is_write |= inner.is_write;
            }
        }
        NodeEnum::ExplainStmt(e) => {
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
                    inner.refuse = Some(
                        "pgshard.next_id() is only supported as SELECT pgshard.next_id()".into(),
                    );
                }
                return inner;
            }
        }
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
            return facts;
        }
        NodeEnum::VariableSetStmt(v) => {
            analyze_variable_set(v, &mut facts);
            return facts;
        }
        NodeEnum::VariableShowStmt(v) => {
            let name = v.name.to_lowercase();
            match proxy_name(&name) {
                Some(p) => facts.local = Some(LocalCommand::ShowProxy { name: p }),
                None => facts.kind = StatementKind::Show { name },
            }
            return facts;
        }
        NodeEnum::DiscardStmt(_) => {
            facts.kind = StatementKind::Discard;
            return facts;
        }
        NodeEnum::ListenStmt(l) => {
            facts.local = Some(LocalCommand::Listen {
                channel: l.conditionname.clone(),
            });
            return facts;
        }
        NodeEnum::UnlistenStmt(u) => {
            let channel = (!u.conditionname.is_empty()).then(|| u.conditionname.clone());
            facts.local = Some(LocalCommand::Unlisten { channel });
            return facts;
        }
        NodeEnum::NotifyStmt(n) => {
            facts.local = Some(LocalCommand::Notify {
                channel: n.conditionname.clone(),
                payload: n.payload.clone(),
            });
            return facts;
        }
        NodeEnum::DeallocateStmt(d) if d.isall => {
            facts.local = Some(LocalCommand::DeallocateAll);
            return facts;
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
            facts.cursor = super::cursor::cursor_op(stmt);
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
        NodeEnum::CreateTableAsStmt(c) => {
            facts.kind = StatementKind::Ddl;
            facts.is_write = true;
            mark_tables(&scan, tables, &mut facts);
            if let Some(q) = node(&c.query) {
                let inner = analyze_stmt(q, tables);
                facts.refuse = inner.refuse;
            }
        }
        NodeEnum::FetchStmt(_) | NodeEnum::ClosePortalStmt(_) => {
            facts.cursor = super::cursor::cursor_op(stmt);
        }
        NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_) => {
            // Unknown effects: run where unsharded tables live.
            facts.is_write = true;
            facts.unsharded = true;
            mark_tables(&scan, tables, &mut facts);
        }
        other => {
            let ty = node_type_name(other);
            mark_tables(&scan, tables, &mut facts);
            if is_ddl(&ty) {
                facts.kind = StatementKind::Ddl;
                facts.is_write = true;
            }
        }
    }
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
        facts.set_config = super::set_config::session_setting(stmt);
        if let (Some(Err(_)), Some(call)) = (&facts.set_config, super::set_config::bound_call(stmt))
        {
            // Read from the Bind's values (see `frontend::bound_set_config`).
            facts.set_config = None;
            facts.set_config_bound = Some(call);
        }
        if let Some(Err(what)) = &facts.set_config {
            facts.session_bound = Some(what.clone());
        }
    }
    if scan.funcs.iter().any(FuncInfo::is_next_id) {
        facts.refuse =
            Some("pgshard.next_id() is only supported as SELECT pgshard.next_id()".into());
    }
    facts.no_transaction_block = refuses_transaction_block(stmt, &scan);
    every_shard_rules(stmt, &scan, tables, &mut facts);
    facts
}

/// The facts of every statement in `sql` (one per statement); `Unparsed` when it does not parse.
/// The text of one statement of `sql` with the comments before it: from the end of the
/// previous statement (past its `;`), as the parser's statement location starts at the first
/// token.
fn leading_text(sql: &str, previous_end: usize) -> Option<&str> {
    let text = sql.get(previous_end..)?;
    Some(text.strip_prefix(';').unwrap_or(text))
}

/// Where a statement of `sql` ends (its `;` not included).
fn statement_end(sql: &str, raw: &pb::RawStmt) -> usize {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    match usize::try_from(raw.stmt_len).unwrap_or(0) {
        0 => sql.len(),
        len => start + len,
    }
}

pub fn analyze(sql: &str, tables: &ShardedTables) -> Vec<StatementFacts> {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(p) => p,
        Err(_) => return vec![StatementFacts::plain(StatementKind::Unparsed)],
    };
    let mut previous_end = 0;
    let out: Vec<StatementFacts> = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| {
            let lead = leading_text(sql, previous_end);
            previous_end = statement_end(sql, raw);
            let mut facts = analyze_stmt(node(&raw.stmt)?, tables);
            facts.hint = lead.and_then(super::hint::leading_hint);
            Some(facts)
        })
        .collect();
    if out.is_empty() {
        // Only comments or semicolons: nothing to route.
        return vec![StatementFacts::plain(StatementKind::Other)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> ShardedTables {
        let cfg = |name: &str, key: &str| ShardedTableConfig {
            name: name.into(),
            key: key.into(),
            key_type: None,
        };
        ShardedTables::new(&[
            cfg("users", "user_id"),
            cfg("orders", "user_id"),
            cfg("public.pgbench_accounts", "aid"),
            cfg("pgbench_history", "aid"),
        ])
    }

    fn one(sql: &str) -> StatementFacts {
        let mut v = analyze(sql, &tables());
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0)
    }

    fn vals(v: &[KeyValue]) -> KeyFacts {
        KeyFacts::Values(v.to_vec())
    }
    use KeyValue::{Const, Param, Text};

    fn refused(sql: &str, needle: &str) {
        let f = one(sql);
        let msg = f.refuse.unwrap_or_else(|| panic!("not refused: {sql}"));
        assert!(msg.contains(needle), "{sql}: {msg}");
        assert!(
            msg.chars().next().is_some_and(|c| !c.is_ascii_uppercase()
                || msg.starts_with("INSERT")
                || msg.starts_with("UPDATE")
                || msg.starts_with("ON CONFLICT")
                || msg.starts_with("MERGE")
                || msg.starts_with("UNION")),
            "{msg}"
        );
    }

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
        let f = one("insert into users (user_id, name) select 1, 'x'");
        assert_eq!(f.key, KeyFacts::Unknown);
        assert_eq!(f.refuse, None);
        refused(
            "insert into users (user_id, name) select id, name from staging",
            "unsharded table staging",
        );
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
            "select (select count(*) from orders o where o.user_id = u.user_id) from users u",
            "select * from users u where exists (select 1 from orders o left join orders p on p.user_id = o.user_id where o.user_id = u.user_id)",
        ] {
            let f = one(sql);
            assert!(
                f.refuse.as_deref().is_some_and(|r| r.contains("subquery over sharded table")),
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
        assert_eq!(one("discard all").kind, StatementKind::Discard);
        assert_eq!(one("savepoint a").kind, StatementKind::Savepoint);
        assert_eq!(
            one("rollback to savepoint a").kind,
            StatementKind::Savepoint
        );
        assert_eq!(one("rollback").kind, StatementKind::Rollback);
        assert_eq!(one("start transaction").kind, StatementKind::Begin);
        assert_eq!(one("commit and chain").kind, StatementKind::Commit);
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
        let notify = one("SELECT pg_notify('jobs', 'x')");
        assert!(notify.unsharded && notify.is_write && notify.local.is_none());
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
        assert!(!f("create function f() returns int as 'select 1' language sql").every_shard);
        assert!(f("drop table users, logs")
            .refuse
            .is_some_and(|m| m.contains("send one statement for each")));
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
