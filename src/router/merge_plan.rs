//! Merge plans for keyless SELECTs: how to rewrite the statement each shard runs and how the proxy
//! combines the shards' rows into exactly what one Postgres holding all the rows would return.
//! Pure and computed once per statement shape (cached with its facts).
//!
//! The shard statement keeps the client's output columns first (an `avg` becomes a `sum` of the
//! same name and a hidden `count`) and appends hidden columns: sort keys and group keys that are
//! not output columns, partial aggregates used by HAVING or ORDER BY, and anchors that keep every
//! `$n` referenced with the type Postgres infers for it in the client's statement.

use pg_query::protobuf as pb;
use pg_query::protobuf::a_const::Val;
use pg_query::NodeEnum;
use pg_query::NodeRef;

use std::sync::Arc;

use super::analyze::Walk;
use super::facts::AGGREGATES;
use super::final_projection::{self, input_ref, FinalProjection};
use super::group_names;
use super::literals::Literal;

/// A column of the shards' rows. Hidden columns are always the last ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColRef {
    /// The column at this position among the client's output columns.
    Output(usize),
    /// The k-th hidden column.
    Hidden(usize),
}

impl ColRef {
    /// The index in a shard row of `total` columns of which `hidden` are hidden.
    pub fn index(self, total: usize, hidden: usize) -> Option<usize> {
        let visible = total.checked_sub(hidden)?;
        match self {
            ColRef::Output(i) if i < visible => Some(i),
            ColRef::Output(_) => None,
            ColRef::Hidden(k) if k < hidden => Some(visible + k),
            ColRef::Hidden(_) => None,
        }
    }
}

/// A LIMIT or OFFSET value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Const(i64),
    /// `LIMIT NULL` / `LIMIT ALL`: no limit.
    Null,
    Param(usize),
}

/// One ORDER BY key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSortKey {
    pub column: ColRef,
    pub descending: bool,
    pub nulls_first: bool,
}

/// An aggregate the proxy combines from the shards' partial values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Min,
    Max,
    /// `avg(x)`: the column holds `sum(x)`, `count` holds `count(x)`.
    Avg {
        count: ColRef,
    },
    /// The column holds each shard's array of distinct values (`array_agg(DISTINCT x)`);
    /// merged by concatenation, aggregated by the final projection.
    Concat,
}

/// One combined aggregate: its function and the column holding the shards' partial values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanAgg {
    pub func: AggFunc,
    pub column: ColRef,
}

/// A comparison operator of HAVING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The constant side of a HAVING comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A literal, as text (decoded as the compared column's type).
    Text(String),
    Null,
    /// The client's `$number`. A simple-protocol literal is decoded as the compared column's
    /// type (as Postgres types an unknown literal); a bound value is read from the hidden
    /// column `typed`, where the shards return it as Postgres types it in the condition, so its
    /// format and declared type (an int2 beside a bigint count, a float8) are Postgres's own.
    Param {
        number: usize,
        typed: ColRef,
    },
}

/// A HAVING condition the proxy evaluates over merged groups (SQL three-valued logic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Having {
    And(Vec<Having>),
    Or(Vec<Having>),
    Not(Box<Having>),
    Cmp {
        column: ColRef,
        op: CmpOp,
        value: Operand,
    },
    IsNull {
        column: ColRef,
        negated: bool,
    },
}

/// How rows combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanKind {
    /// Plain rows: a k-way merge on the sort keys (none: any order), then OFFSET/LIMIT.
    Rows,
    /// Groups: GROUP BY, aggregates or DISTINCT, combined in memory, then HAVING, sort,
    /// OFFSET/LIMIT.
    Groups {
        /// Group key columns; `None` means every output column (SELECT DISTINCT).
        keys: Option<Vec<ColRef>>,
        aggs: Vec<PlanAgg>,
        having: Option<Having>,
    },
}

/// The shard statement as text pieces and `$n` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Param(usize),
}

impl SqlTemplate {
    /// The template of a text whose `$n` are placeholders.
    pub(crate) fn from_sql(sql: &str) -> Result<SqlTemplate, String> {
        let scan = pg_query::scan(sql).map_err(|e| format!("rewritten statement: {e}"))?;
        let mut pieces = Vec::new();
        let mut copied = 0usize;
        for t in &scan.tokens {
            if t.token != pb::Token::Param as i32 {
                continue;
            }
            let (start, end) = (t.start as usize, t.end as usize);
            let n: usize = sql
                .get(start + 1..end)
                .and_then(|d| d.parse().ok())
                .ok_or("rewritten statement: bad parameter token")?;
            pieces.push(Piece::Text(sql[copied..start].to_string()));
            pieces.push(Piece::Param(n));
            copied = end;
        }
        pieces.push(Piece::Text(sql[copied..].to_string()));
        Ok(SqlTemplate { pieces })
    }

    /// The text with `$n` placeholders (extended protocol).
    pub fn with_placeholders(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Param(n) => format!("${n}"),
            })
            .collect()
    }

    /// The text with each `$n` replaced by what `param` says.
    pub fn render(&self, param: &mut dyn FnMut(usize) -> String) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Param(n) => param(*n),
            })
            .collect()
    }

    /// The `$n` the text references, each once, in order of first use.
    pub fn params(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for p in &self.pieces {
            if let Piece::Param(n) = p {
                if !out.contains(n) {
                    out.push(*n);
                }
            }
        }
        out
    }

    /// The text with the simple protocol's extracted literals put back; `None` when a `$n` has
    /// no literal.
    pub fn with_literals(&self, literals: &[Literal]) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Param(n) => out.push_str(&literals.get(n.checked_sub(1)?)?.to_sql()),
            }
        }
        Some(out)
    }
}

/// Everything the proxy needs to run a keyless SELECT on several shards and merge the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    /// What each shard runs.
    pub shard_sql: SqlTemplate,
    /// Number of hidden columns at the end of each shard row.
    pub hidden: usize,
    pub kind: PlanKind,
    pub sort: Vec<PlanSortKey>,
    pub limit: Option<Bound>,
    pub offset: Option<Bound>,
    /// Output positions holding an `avg` (the shards return a `sum` there).
    pub avg_outputs: Vec<usize>,
    /// Where the text the merge compares comes from, to check its collation.
    pub collation: CollationUse,
    /// Output columns that are expressions over aggregates, computed by one shard over the
    /// merged values.
    pub finish: Option<FinalProjection>,
    /// GROUP BY names that are output column names and may also be columns of the statement's
    /// tables: when set, this plan is not run as it is, [`GroupNameChoice::choose`] gives the
    /// one to run once the tables' columns are read.
    pub group_names: Option<Arc<GroupNameChoice>>,
    /// Rows asked of the shards one after another, each for what is still wanted, not all at
    /// once: a locking read with a LIMIT and no ORDER BY (see `analyze::lock_limit`).
    pub fill_in_turn: bool,
    /// A locking read with an ORDER BY and a LIMIT: inside a block, each shard first learns
    /// its share of the ordered answer, then locks only those rows (see `exec::lock_share`).
    pub lock_shares: bool,
}

/// A plan to run, or `Err` naming what cannot be merged.
pub type PlanChoice = Result<Arc<MergePlan>, String>;

/// Most GROUP BY names a plan leaves to the catalog (a plan each way for each: 2^n plans).
pub const MAX_GROUP_QUESTIONS: usize = 3;

/// The plans of a statement whose bare GROUP BY names mean an input column if a table of its
/// FROM list has one by that name, and the output column of that name otherwise (Postgres's
/// rule for GROUP BY; see `router::group_names`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNameChoice {
    /// The names in question.
    pub names: Vec<String>,
    /// The tables whose columns decide.
    pub tables: Vec<TableName>,
    /// The plan for each answer: bit `i` of the index is set when `names[i]` is an output
    /// column (no table has such a column); `Err` names what cannot be merged that way.
    variants: Vec<PlanChoice>,
}

impl GroupNameChoice {
    /// The plan to run, given each table's columns (`None`: not known, refused).
    pub fn choose<'a>(&self, columns: &dyn Fn(&TableName) -> Option<&'a [String]>) -> PlanChoice {
        let mut known = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            match columns(t) {
                Some(c) => known.push(c),
                None => {
                    let name = match &t.schema {
                        Some(schema) => format!("{schema}.{}", t.name),
                        None => t.name.clone(),
                    };
                    return Err(format!(
                        "GROUP BY {} without the column names of table {name}",
                        self.names.join(", ")
                    ));
                }
            }
        }
        let mut mask = 0usize;
        for (i, name) in self.names.iter().enumerate() {
            if !known.iter().any(|cols| cols.iter().any(|c| c == name)) {
                mask |= 1 << i;
            }
        }
        self.variants
            .get(mask)
            .cloned()
            .unwrap_or_else(|| Err("internal: no plan for these GROUP BY names".into()))
    }
}

/// A table (or view) named somewhere in the statement, as written (without quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

/// The table columns behind every value the merge compares. The shards sort text of a column
/// declared with its own `COLLATE` (or of an expression over it) in that collation, and the
/// merge must then refuse rather than compare in the database's: the proxy matches these names
/// against the columns each shard's catalog lists with a non-default collation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollationUse {
    /// Columns the merge orders (ORDER BY keys, min/max, HAVING comparisons), each with the
    /// names of the columns its expression reads; `None` when they cannot be told (a `*`, or a
    /// subquery, CTE or function in FROM whose output columns have names of their own).
    pub ordered: Vec<(ColRef, Option<Vec<String>>)>,
    /// Names of the columns read by what the merge groups on (GROUP BY keys, DISTINCT), whose
    /// equality must be byte equality; `None` when they cannot be told.
    pub grouped: Option<Vec<String>>,
    /// Every table named in the statement (FROM, joins, subqueries).
    pub tables: Vec<TableName>,
    /// The types anything compared is cast to: a domain declared with a collation gives text
    /// that collation.
    pub casts: Vec<String>,
    /// The `count`/`sum`/`avg(DISTINCT …)` values merged as arrays: the final query judges
    /// their distinctness in the database's default collation, so theirs must be deterministic.
    pub distinct: Vec<DistinctUse>,
}

/// The argument of a `f(DISTINCT x)` whose distinct values the shards send as an array, traced
/// back to what gives its text a collation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinctUse {
    /// The hidden column holding each shard's `array_agg(DISTINCT x)`.
    pub column: ColRef,
    /// The aggregate's name, for messages.
    pub func: String,
    /// Where `x`'s collation comes from.
    pub source: CollationSource,
}

/// What decides the collation of an expression, as far as the proxy can tell from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollationSource {
    /// `x COLLATE c` at the top: exactly collation `c` (its last name part).
    Explicit(String),
    /// Anything else: possibly any collation it names in a COLLATE, any of the columns it
    /// reads (`None`: any column of the statement's tables) and any type it casts to.
    Derived {
        collates: Vec<String>,
        reads: Option<Vec<String>>,
        casts: Vec<String>,
    },
}

/// Aggregates the merge can combine.
fn agg_func_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "count" => "count",
        "sum" => "sum",
        "min" => "min",
        "max" => "max",
        "avg" => "avg",
        _ => return None,
    })
}

fn str_of(n: &pb::Node) -> Option<&str> {
    match n.node.as_ref()? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// The lowercased name of a built-in function call (`f` or `pg_catalog.f`).
fn builtin_name(f: &pb::FuncCall) -> Option<String> {
    let parts: Vec<String> = f
        .funcname
        .iter()
        .map(|p| str_of(p).map(str::to_lowercase))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [n] => Some(n.clone()),
        [s, n] if s == "pg_catalog" => Some(n.clone()),
        _ => None,
    }
}

/// An expression's shape, to compare expressions regardless of where they sit in the text:
/// its deparsed SQL (the tree's Debug text if deparsing fails).
fn shape(n: &pb::Node) -> String {
    NodeEnum::SelectStmt(Box::new(pb::SelectStmt {
        target_list: vec![res_target("", n.clone())],
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    }))
    .deparse(pg_query::DeparseOptions::default())
    .unwrap_or_else(|_| format!("{n:?}"))
}

/// The first aggregate or window function of `n`'s own query level (not of its subqueries), by
/// name.
fn contains_agg(n: &pb::Node) -> Option<String> {
    Walk::of(n).this_level().find_map(|x| {
        let NodeRef::FuncCall(f) = x else {
            return None;
        };
        let last = f
            .funcname
            .last()
            .and_then(|p| match p.node.as_ref() {
                Some(NodeEnum::String(s)) => Some(s.sval.to_lowercase()),
                _ => None,
            })
            .unwrap_or_default();
        if f.over.is_some() {
            return Some(format!("window function {last}()"));
        }
        (f.agg_star
            || f.agg_distinct
            || f.agg_within_group
            || f.agg_filter.is_some()
            || AGGREGATES.contains(&last.as_str()))
        .then(|| format!("aggregate {last}()"))
    })
}

/// A constant or a parameter, cast or not: the same value whichever shard evaluates it.
fn is_constant(n: &pb::Node) -> bool {
    match n.node.as_ref() {
        Some(NodeEnum::AConst(_)) | Some(NodeEnum::ParamRef(_)) => true,
        Some(NodeEnum::TypeCast(c)) => c.arg.as_deref().is_some_and(is_constant),
        _ => false,
    }
}

/// Built-in functions that give one value per statement (immutable or stable in Postgres).
const ONCE_PER_STATEMENT: &[&str] = &[
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "current_database",
    "current_schema",
    "current_setting",
    "version",
    "pg_typeof",
    "lower",
    "upper",
    "length",
    "char_length",
    "concat",
    "concat_ws",
    "substr",
    "substring",
    "replace",
    "trim",
    "btrim",
    "lpad",
    "rpad",
    "format",
    "to_char",
    "date_trunc",
    "date_part",
    "extract",
    "make_date",
    "abs",
    "round",
    "trunc",
    "floor",
    "ceil",
    "greatest",
    "least",
];

/// Why a column-free expression beside aggregates cannot be computed once by the final query:
/// it reads a column (each shard's own rows) or calls a function not known to give one value
/// per statement (`random()`, `nextval()`, `clock_timestamp()`, a user's function).
fn not_once_per_statement(n: &pb::Node) -> Option<String> {
    for x in Walk::of(n) {
        match x {
            NodeRef::ColumnRef(_) => return Some("a column that is not an aggregate".into()),
            NodeRef::FuncCall(f) => match builtin_name(f) {
                Some(name) if ONCE_PER_STATEMENT.contains(&name.as_str()) => {}
                _ => {
                    let name: Vec<&str> = f.funcname.iter().filter_map(str_of).collect();
                    return Some(format!(
                        "{}() beside aggregates over several shards",
                        name.join(".")
                    ));
                }
            },
            _ => {}
        }
    }
    None
}

/// Functions whose value is fixed per transaction or per server: each shard gives its own,
/// where one Postgres gives the same value to every row of a statement.
const PER_SHARD_VALUES: &[&str] = &[
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_backend_pid",
    "inet_server_addr",
    "inet_server_port",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_current_wal_lsn",
];

/// The first call in `n` whose value each shard computes for itself (`now()`,
/// `CURRENT_TIMESTAMP`, `pg_backend_pid()`), as the client wrote it.
pub(crate) fn per_shard_value(n: &pb::Node) -> Option<String> {
    use pb::SqlValueFunctionOp as Op;
    Walk::of(n).find_map(|x| match x {
        NodeRef::FuncCall(f) => builtin_name(f)
            .filter(|name| PER_SHARD_VALUES.contains(&name.as_str()))
            .map(|name| format!("{name}()")),
        NodeRef::SqlvalueFunction(f) => match Op::try_from(f.op).ok()? {
            Op::SvfopCurrentDate => Some("CURRENT_DATE".into()),
            Op::SvfopCurrentTime | Op::SvfopCurrentTimeN => Some("CURRENT_TIME".into()),
            Op::SvfopCurrentTimestamp | Op::SvfopCurrentTimestampN => {
                Some("CURRENT_TIMESTAMP".into())
            }
            Op::SvfopLocaltime | Op::SvfopLocaltimeN => Some("LOCALTIME".into()),
            Op::SvfopLocaltimestamp | Op::SvfopLocaltimestampN => Some("LOCALTIMESTAMP".into()),
            _ => None,
        },
        _ => None,
    })
}

/// True when a target, HAVING or ORDER BY of `s` holds a value each shard computes for itself
/// (see [`per_shard_value`]).
fn has_per_shard_value(s: &pb::SelectStmt) -> bool {
    let sorts = s
        .sort_clause
        .iter()
        .filter_map(|item| match item.node.as_ref() {
            Some(NodeEnum::SortBy(sb)) => sb.node.as_deref(),
            _ => None,
        });
    let targets = s.target_list.iter().filter_map(|t| match t.node.as_ref() {
        Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
        _ => None,
    });
    targets
        .chain(s.having_clause.as_deref())
        .chain(sorts)
        .any(|n| per_shard_value(n).is_some())
}

fn contains_param(n: &pb::Node) -> bool {
    Walk::of(n).any(|x| matches!(x, NodeRef::ParamRef(_)))
}

fn contains_collate(n: &pb::Node) -> bool {
    Walk::of(n).any(|x| matches!(x, NodeRef::CollateClause(_)))
}

fn node(n: NodeEnum) -> pb::Node {
    pb::Node { node: Some(n) }
}

fn string_node(s: &str) -> pb::Node {
    node(NodeEnum::String(pb::String { sval: s.into() }))
}

fn res_target(name: &str, val: pb::Node) -> pb::Node {
    node(NodeEnum::ResTarget(Box::new(pb::ResTarget {
        name: name.into(),
        indirection: Vec::new(),
        val: Some(Box::new(val)),
        location: -1,
    })))
}

/// The first target expression of `SELECT <expr>`, parsed.
fn parse_expr(sql_expr: &str) -> Result<pb::Node, String> {
    let parsed = pg_query::parse(&format!("SELECT {sql_expr}"), 0).map_err(|e| e.to_string())?;
    let stmt = parsed
        .protobuf
        .stmts
        .first()
        .and_then(|s| s.stmt.as_deref())
        .and_then(|s| s.node.as_ref());
    if let Some(NodeEnum::SelectStmt(s)) = stmt {
        if let Some(NodeEnum::ResTarget(rt)) = s.target_list.first().and_then(|t| t.node.as_ref()) {
            if let Some(v) = rt.val.as_deref() {
                return Ok(v.clone());
            }
        }
    }
    Err("internal: cannot build expression".into())
}

/// `(expr)::int8`, `expr` as the client wrote it: a `$n` keeps the client's own cast, so the
/// server types the parameter as the client's Describe saw it (`LIMIT $1::integer`, sent by
/// asyncpg as a 4-byte binary value, must not become an int8 parameter).
fn as_int8(expr: &pb::Node) -> Result<pb::Node, String> {
    let mut cast = parse_expr("NULL::int8")?;
    match cast.node.as_mut() {
        Some(NodeEnum::TypeCast(tc)) => tc.arg = Some(Box::new(expr.clone())),
        _ => return Err("internal: cannot build expression".into()),
    }
    Ok(cast)
}

/// `(limit)::int8 + (offset)::int8`: the rows each shard must return for a merged LIMIT/OFFSET.
fn int8_sum(limit: &pb::Node, offset: &pb::Node) -> Result<pb::Node, String> {
    let mut sum = parse_expr("1 + 1")?;
    match sum.node.as_mut() {
        Some(NodeEnum::AExpr(e)) => {
            e.lexpr = Some(Box::new(as_int8(limit)?));
            e.rexpr = Some(Box::new(as_int8(offset)?));
        }
        _ => return Err("internal: cannot build expression".into()),
    }
    Ok(sum)
}

/// LIMIT / OFFSET operand: a constant, NULL/ALL, or `$n` (possibly cast).
fn bound_of(n: &pb::Node, what: &str) -> Result<Bound, String> {
    let mut cur = n;
    while let Some(NodeEnum::TypeCast(tc)) = cur.node.as_ref() {
        match tc.arg.as_deref() {
            Some(a) => cur = a,
            None => break,
        }
    }
    match cur.node.as_ref() {
        Some(NodeEnum::AConst(c)) if c.isnull => Ok(Bound::Null),
        Some(NodeEnum::AConst(c)) => match c.val.as_ref() {
            Some(Val::Ival(i)) => Ok(Bound::Const(i.ival as i64)),
            Some(Val::Fval(f)) => f
                .fval
                .parse::<i64>()
                .map(Bound::Const)
                .map_err(|_| format!("{what} with a non-integer value")),
            _ => Err(format!("{what} with a non-integer value")),
        },
        Some(NodeEnum::ParamRef(p)) if p.number > 0 => Ok(Bound::Param(p.number as usize)),
        _ => Err(format!("{what} with an expression")),
    }
}

/// One aggregate call the merge can combine.
struct AggCall<'a> {
    call: &'a pb::FuncCall,
    name: &'static str,
}

fn agg_call(n: &pb::Node) -> Option<AggCall<'_>> {
    let NodeEnum::FuncCall(f) = n.node.as_ref()? else {
        return None;
    };
    if f.over.is_some() {
        return None;
    }
    let name = agg_func_name(&builtin_name(f)?)?;
    Some(AggCall { call: f, name })
}

/// Builds the plan state for one statement.
struct Builder<'a> {
    is_key: &'a dyn Fn(&pb::Node) -> bool,
    grouped_by_key: bool,
    /// The client's targets (rewritten) and the hidden ones, of the shard statement.
    targets: Vec<pb::Node>,
    hidden_targets: Vec<pb::Node>,
    visible: usize,
    hidden: usize,
    /// Shape of each client target expression (None for `*` or after it).
    target_shapes: Vec<Option<String>>,
    target_names: Vec<String>,
    aggs: Vec<PlanAgg>,
    /// Shape of the original aggregate call of each entry in `aggs`.
    agg_shapes: Vec<String>,
    avg_outputs: Vec<usize>,
    /// Shapes of the GROUP BY expressions (a final expression may read them).
    group_shapes: Vec<String>,
    /// The final projection: its input columns, its targets and the outputs they compute.
    final_inputs: Vec<ColRef>,
    final_targets: Vec<pb::Node>,
    final_outputs: Vec<usize>,
    /// Arrays of distinct values already pushed down, by the shape of their `array_agg` call.
    concat_shapes: Vec<(String, ColRef)>,
    /// Each such array's column, the first aggregate reading it and its argument.
    concat_args: Vec<(ColRef, &'static str, pb::Node)>,
}

impl Builder<'_> {
    /// The final query's input index of a merged column.
    fn final_input(&mut self, c: ColRef) -> usize {
        match self.final_inputs.iter().position(|x| *x == c) {
            Some(j) => j,
            None => {
                self.final_inputs.push(c);
                self.final_inputs.len() - 1
            }
        }
    }

    /// One node of an expression over aggregates: an aggregate call becomes the merged value
    /// (a `count`/`sum`/`avg(DISTINCT …)` that per-shard partials cannot give becomes the
    /// aggregate over the merged distinct values of each shard), a grouped expression its
    /// group's value; anything else is walked into.
    fn final_leaf(&mut self, n: &pb::Node) -> Result<Option<pb::Node>, String> {
        if let Some(a) = agg_call(n) {
            self.check_call(&a)?;
            if a.call.agg_distinct && !self.distinct_exact(&a) {
                let mut arr = a.call.clone();
                arr.funcname = vec![string_node("array_agg")];
                let arr = node(NodeEnum::FuncCall(Box::new(arr)));
                let key = shape(&arr);
                let col = match self.concat_shapes.iter().find(|(k, _)| *k == key) {
                    Some((_, c)) => *c,
                    None => {
                        let c = self.add_hidden(arr);
                        self.aggs.push(PlanAgg {
                            func: AggFunc::Concat,
                            column: c,
                        });
                        // Never matched by HAVING or ORDER BY: those refuse this call first.
                        self.agg_shapes.push(String::new());
                        self.concat_shapes.push((key, c));
                        if let Some(arg) = a.call.args.first() {
                            self.concat_args.push((c, a.name, arg.clone()));
                        }
                        c
                    }
                };
                let j = self.final_input(col);
                let sql = format!(
                    "(SELECT {}(DISTINCT pgshard_d.v) FROM unnest({}.c{j}) AS pgshard_d(v))",
                    a.name,
                    final_projection::INPUTS_ALIAS
                );
                return parse_expr(&sql).map(Some);
            }
            let col = self.agg_column(&a, n)?;
            return Ok(Some(input_ref(self.final_input(col))));
        }
        if let Some(NodeEnum::FuncCall(f)) = n.node.as_ref() {
            let name = builtin_name(f).unwrap_or_default();
            if f.over.is_some() {
                return Err(format!("window function {name}()"));
            }
            if AGGREGATES.contains(&name.as_str()) || f.agg_star || f.agg_distinct {
                return Err(format!("aggregate {name}()"));
            }
        }
        let constant = matches!(
            n.node.as_ref(),
            Some(NodeEnum::AConst(_)) | Some(NodeEnum::ParamRef(_))
        );
        if !constant && contains_agg(n).is_none() && self.group_shapes.contains(&shape(n)) {
            let col = self.expr_column(n);
            return Ok(Some(input_ref(self.final_input(col))));
        }
        Ok(None)
    }

    /// Output `i`, written `v` and named `name` (or as Postgres would), computed by the final
    /// query; returns the shards' target in its place: a NULL of the expression's type, not
    /// evaluated, its `$n` still referenced and typed as the client's.
    fn final_target(&mut self, i: usize, name: &str, v: &pb::Node) -> Result<pb::Node, String> {
        let computed = final_projection::rewrite(v, &mut |n| self.final_leaf(n))?;
        let name = if name.is_empty() {
            final_projection::column_name(v)
        } else {
            name.to_string()
        };
        self.final_targets.push(res_target(&name, computed));
        self.final_outputs.push(i);
        unevaluated(v).map(|u| res_target(&name, u))
    }

    fn add_hidden(&mut self, expr: pb::Node) -> ColRef {
        let k = self.hidden;
        self.hidden_targets
            .push(res_target(&format!("pgshard_hidden_{k}"), expr));
        self.hidden += 1;
        ColRef::Hidden(k)
    }

    fn check_agg(&self, a: &AggCall) -> Result<(), String> {
        self.check_call(a)?;
        if a.call.agg_distinct && !self.distinct_exact(a) {
            return Err(format!(
                "{}(DISTINCT …) in HAVING or ORDER BY on a column other than the shard key (pgshard computes it only in the select list)",
                a.name
            ));
        }
        Ok(())
    }

    /// True when combining the shards' own `f(DISTINCT x)` gives the exact answer: min/max,
    /// and count/sum/avg whose groups (or counted values) each live on one shard.
    fn distinct_exact(&self, a: &AggCall) -> bool {
        match a.name {
            "min" | "max" => true,
            "count" => self.grouped_by_key || a.call.args.first().is_some_and(|x| (self.is_key)(x)),
            _ => self.grouped_by_key,
        }
    }

    /// The checks every aggregate call passes, DISTINCT aside.
    fn check_call(&self, a: &AggCall) -> Result<(), String> {
        let f = a.call;
        let what = format!("aggregate {}()", a.name);
        if !f.agg_order.is_empty() {
            return Err(format!("{what} with ORDER BY inside"));
        }
        if f.agg_within_group || f.func_variadic {
            return Err(format!("{what} with WITHIN GROUP or VARIADIC"));
        }
        if f.agg_star != f.args.is_empty() || f.args.len() > 1 {
            return Err(format!("{what} with these arguments"));
        }
        if f.agg_star && a.name != "count" {
            return Err(format!("{what} with *"));
        }
        if let Some(inner) = f.args.iter().find_map(contains_agg) {
            return Err(format!("{inner} inside {what}"));
        }
        if f.agg_distinct && f.agg_star {
            return Err(format!("{what} with DISTINCT *"));
        }
        // The distinct values of a row would be gathered as an array of records, which reads
        // back only with a column definition list.
        let row = |n: &pb::Node| matches!(n.node, Some(NodeEnum::RowExpr(_)));
        if f.agg_distinct && f.args.iter().any(row) {
            return Err(format!("{what} with DISTINCT of a row"));
        }
        Ok(())
    }

    /// `sum(…)`/`count(…)` with the arguments, DISTINCT and FILTER of an `avg(…)` call.
    fn renamed_call(f: &pb::FuncCall, name: &str) -> pb::Node {
        let mut c = f.clone();
        c.funcname = vec![string_node(name)];
        node(NodeEnum::FuncCall(Box::new(c)))
    }

    /// The column of an aggregate used by HAVING or ORDER BY: an existing one, or a new hidden one.
    fn agg_column(&mut self, a: &AggCall, expr: &pb::Node) -> Result<ColRef, String> {
        self.check_agg(a)?;
        let s = shape(expr);
        if let Some(i) = self.agg_shapes.iter().position(|x| *x == s) {
            return Ok(self.aggs[i].column);
        }
        let plan = if a.name == "avg" {
            let sum = self.add_hidden(Self::renamed_call(a.call, "sum"));
            let count = self.add_hidden(Self::renamed_call(a.call, "count"));
            PlanAgg {
                func: AggFunc::Avg { count },
                column: sum,
            }
        } else {
            let col = self.add_hidden(expr.clone());
            PlanAgg {
                func: simple_func(a.name),
                column: col,
            }
        };
        self.aggs.push(plan);
        self.agg_shapes.push(s);
        Ok(plan.column)
    }

    /// The column of a non-aggregate expression: an output column with the same expression, or
    /// a new hidden one.
    fn expr_column(&mut self, expr: &pb::Node) -> ColRef {
        let s = shape(expr);
        if let Some(i) = self
            .target_shapes
            .iter()
            .position(|t| t.as_ref() == Some(&s))
        {
            return ColRef::Output(i);
        }
        self.add_hidden(expr.clone())
    }

    /// ORDER BY item → column: a position, an output column name, an output expression, an
    /// aggregate (grouped queries), else a hidden column.
    fn sort_column(&mut self, expr: &pb::Node, grouped: bool) -> Result<ColRef, String> {
        if contains_collate(expr) {
            return Err("ORDER BY … COLLATE".into());
        }
        match expr.node.as_ref() {
            Some(NodeEnum::AConst(c)) => {
                if let Some(Val::Ival(i)) = c.val.as_ref() {
                    if i.ival >= 1 {
                        return Ok(ColRef::Output(i.ival as usize - 1));
                    }
                }
                return Err("ORDER BY a constant".into());
            }
            Some(NodeEnum::ColumnRef(cr)) if cr.fields.len() == 1 => {
                if let Some(name) = cr.fields.first().and_then(str_of) {
                    let name = name.to_string();
                    if let Some(i) = self.target_names.iter().position(|n| *n == name) {
                        return match self.target_shapes.get(i) {
                            Some(Some(_)) => Ok(ColRef::Output(i)),
                            _ => Err("ORDER BY an output column named after *".into()),
                        };
                    }
                }
            }
            _ => {}
        }
        if grouped {
            let s = shape(expr);
            if let Some(i) = self
                .target_shapes
                .iter()
                .position(|t| t.as_ref() == Some(&s))
            {
                return Ok(ColRef::Output(i));
            }
            if let Some(a) = agg_call(expr) {
                return self.agg_column(&a, expr);
            }
        }
        if let Some(what) = contains_agg(expr) {
            if grouped || what.starts_with("window") {
                return Err(format!("ORDER BY an expression over {what}"));
            }
        }
        Ok(self.expr_column(expr))
    }

    fn having(&mut self, n: &pb::Node) -> Result<Having, String> {
        let unsupported = || {
            "HAVING condition other than comparisons of aggregates or grouped columns with constants"
                .to_string()
        };
        match n.node.as_ref() {
            Some(NodeEnum::BoolExpr(b)) => {
                let args = b
                    .args
                    .iter()
                    .map(|a| self.having(a))
                    .collect::<Result<Vec<_>, _>>()?;
                match b.boolop {
                    x if x == pb::BoolExprType::AndExpr as i32 => Ok(Having::And(args)),
                    x if x == pb::BoolExprType::OrExpr as i32 => Ok(Having::Or(args)),
                    x if x == pb::BoolExprType::NotExpr as i32 && args.len() == 1 => Ok(
                        Having::Not(Box::new(args.into_iter().next().ok_or_else(unsupported)?)),
                    ),
                    _ => Err(unsupported()),
                }
            }
            Some(NodeEnum::NullTest(t)) => {
                let arg = t.arg.as_deref().ok_or_else(unsupported)?;
                let column = self.having_side(arg)?.ok_or_else(unsupported)?;
                Ok(Having::IsNull {
                    column,
                    negated: t.nulltesttype == pb::NullTestType::IsNotNull as i32,
                })
            }
            Some(NodeEnum::AExpr(e)) if e.kind == pb::AExprKind::AexprOp as i32 => {
                let op = match e.name.as_slice() {
                    [o] => str_of(o),
                    _ => None,
                };
                let op = match op {
                    Some("=") => CmpOp::Eq,
                    Some("<>") | Some("!=") => CmpOp::Ne,
                    Some("<") => CmpOp::Lt,
                    Some("<=") => CmpOp::Le,
                    Some(">") => CmpOp::Gt,
                    Some(">=") => CmpOp::Ge,
                    _ => return Err(unsupported()),
                };
                let (l, r) = (
                    e.lexpr.as_deref().ok_or_else(unsupported)?,
                    e.rexpr.as_deref().ok_or_else(unsupported)?,
                );
                if let (Some(value), false) = (operand(r), operand(l).is_some()) {
                    let column = self.having_side(l)?.ok_or_else(unsupported)?;
                    let value = self.typed_operand(value, r);
                    return Ok(Having::Cmp { column, op, value });
                }
                if let (Some(value), false) = (operand(l), operand(r).is_some()) {
                    let column = self.having_side(r)?.ok_or_else(unsupported)?;
                    let value = self.typed_operand(value, l);
                    let op = match op {
                        CmpOp::Lt => CmpOp::Gt,
                        CmpOp::Le => CmpOp::Ge,
                        CmpOp::Gt => CmpOp::Lt,
                        CmpOp::Ge => CmpOp::Le,
                        o => o,
                    };
                    return Ok(Having::Cmp { column, op, value });
                }
                Err(unsupported())
            }
            _ => Err(unsupported()),
        }
    }

    /// The operand as the merge reads it; a `$n` gets the hidden column that returns its value
    /// as the shards type it.
    fn typed_operand(&mut self, value: Constant, written: &pb::Node) -> Operand {
        match value {
            Constant::Text(t) => Operand::Text(t),
            Constant::Null => Operand::Null,
            Constant::Param(number) => Operand::Param {
                number,
                typed: self.add_hidden(written.clone()),
            },
        }
    }

    /// A HAVING operand that is an aggregate or a grouped expression.
    fn having_side(&mut self, n: &pb::Node) -> Result<Option<ColRef>, String> {
        if let Some(a) = agg_call(n) {
            return self.agg_column(&a, n).map(Some);
        }
        if contains_agg(n).is_some() || contains_param(n) || operand(n).is_some() {
            return Ok(None);
        }
        Ok(Some(self.expr_column(n)))
    }
}

/// `CASE WHEN false THEN <expr> END`: a NULL of the expression's type, its aggregates and
/// operators never evaluated.
fn unevaluated(expr: &pb::Node) -> Result<pb::Node, String> {
    let mut case = parse_expr("CASE WHEN false THEN NULL END")?;
    if let Some(NodeEnum::CaseExpr(c)) = case.node.as_mut() {
        if let Some(NodeEnum::CaseWhen(w)) = c.args.first_mut().and_then(|a| a.node.as_mut()) {
            w.result = Some(Box::new(expr.clone()));
            return Ok(case);
        }
    }
    Err("internal: cannot build CASE".into())
}

/// A HAVING constant as written: a literal, NULL or `$n`.
enum Constant {
    Text(String),
    Null,
    Param(usize),
}

/// A HAVING constant: a literal, NULL or `$n`.
fn operand(n: &pb::Node) -> Option<Constant> {
    match n.node.as_ref()? {
        NodeEnum::AConst(c) if c.isnull => Some(Constant::Null),
        NodeEnum::AConst(c) => Some(Constant::Text(match c.val.as_ref()? {
            Val::Ival(i) => i.ival.to_string(),
            Val::Fval(f) => f.fval.clone(),
            Val::Sval(s) => s.sval.clone(),
            Val::Boolval(b) => if b.boolval { "t" } else { "f" }.to_string(),
            Val::Bsval(_) => return None,
        })),
        NodeEnum::ParamRef(p) if p.number > 0 => Some(Constant::Param(p.number as usize)),
        _ => None,
    }
}

fn simple_func(name: &str) -> AggFunc {
    match name {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "min" => AggFunc::Min,
        _ => AggFunc::Max,
    }
}

fn is_star(rt: &pb::ResTarget) -> bool {
    match rt.val.as_deref().and_then(|v| v.node.as_ref()) {
        Some(NodeEnum::ColumnRef(c)) => c
            .fields
            .last()
            .is_some_and(|f| matches!(f.node, Some(NodeEnum::AStar(_)))),
        _ => false,
    }
}

/// The names of the columns an expression reads (the last part of each column reference);
/// `None` if it reads a whole row (`t.*`).
fn columns_read(n: &pb::Node) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for x in Walk::of(n) {
        if let NodeRef::ColumnRef(cr) = x {
            out.push(cr.fields.last().and_then(str_sval)?.to_string());
        }
    }
    Some(out)
}

/// Every table named in the statement, and whether a FROM item has output columns of its own
/// (subquery, function, CTE), whose names say nothing about the tables' columns.
fn tables_of(s: &pb::SelectStmt) -> (Vec<TableName>, bool) {
    let mut out = Vec::new();
    let mut opaque = false;
    for x in Walk::new([NodeRef::SelectStmt(s)]) {
        match x {
            NodeRef::RangeVar(rv) => {
                let t = TableName {
                    schema: Some(rv.schemaname.clone()).filter(|s| !s.is_empty()),
                    name: rv.relname.clone(),
                };
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            NodeRef::RangeSubselect(_)
            | NodeRef::RangeFunction(_)
            | NodeRef::RangeTableFunc(_)
            | NodeRef::CommonTableExpr(_)
            | NodeRef::JsonTable(_) => opaque = true,
            _ => {}
        }
    }
    (out, opaque)
}

/// Traces what the merge compares back to table columns (see [`CollationUse`]); refuses an
/// explicit COLLATE in any of it, since the merge compares in the shards' default collations.
fn collation_use(
    s: &pb::SelectStmt,
    targets: &[pb::Node],
    hidden: &[pb::Node],
    kind: &PlanKind,
    sort: &[PlanSortKey],
) -> Result<CollationUse, String> {
    let (tables, opaque) = tables_of(s);
    let first_star = targets.iter().position(|t| match t.node.as_ref() {
        Some(NodeEnum::ResTarget(rt)) => is_star(rt),
        _ => false,
    });
    let expr = |c: ColRef| -> Option<&pb::Node> {
        let t = match c {
            ColRef::Output(i) if first_star.is_some_and(|st| st <= i) => return None,
            ColRef::Output(i) => targets.get(i)?,
            ColRef::Hidden(k) => hidden.get(k)?,
        };
        match t.node.as_ref()? {
            NodeEnum::ResTarget(rt) => rt.val.as_deref(),
            _ => None,
        }
    };
    let casts = std::cell::RefCell::new(Vec::new());
    let reads = |c: ColRef| -> Result<Option<Vec<String>>, String> {
        let Some(e) = expr(c) else { return Ok(None) };
        if contains_collate(e) {
            return Err(
                "COLLATE in an expression the merge compares (ORDER BY, GROUP BY, DISTINCT, min/max or HAVING)"
                    .into(),
            );
        }
        casts.borrow_mut().extend(casts_in(e));
        Ok(if opaque { None } else { columns_read(e) })
    };
    let mut ordered = Vec::new();
    for k in sort {
        ordered.push((k.column, reads(k.column)?));
    }
    let mut grouped = Some(Vec::new());
    let mut add_group = |r: Option<Vec<String>>| match (&mut grouped, r) {
        (Some(g), Some(r)) => g.extend(r),
        (g, _) => *g = None,
    };
    if let PlanKind::Groups { keys, aggs, having } = kind {
        for a in aggs {
            if matches!(a.func, AggFunc::Min | AggFunc::Max) {
                ordered.push((a.column, reads(a.column)?));
            }
        }
        if let Some(h) = having {
            let mut cols = Vec::new();
            having_compared(h, &mut cols);
            for c in cols {
                ordered.push((c, reads(c)?));
            }
        }
        match keys {
            Some(keys) => {
                for k in keys {
                    add_group(reads(*k)?);
                }
            }
            None => {
                if first_star.is_some() {
                    add_group(None);
                }
                for i in 0..targets.len() {
                    add_group(reads(ColRef::Output(i))?);
                }
            }
        }
    }
    let mut seen = Vec::new();
    ordered.retain(|(c, _)| {
        let first = !seen.contains(c);
        seen.push(*c);
        first
    });
    let mut casts = casts.into_inner();
    casts.sort();
    casts.dedup();
    Ok(CollationUse {
        ordered,
        grouped,
        tables,
        casts,
        distinct: Vec::new(),
    })
}

/// The collation names in the COLLATE clauses of an expression (last name part).
fn collates_in(n: &pb::Node) -> Vec<String> {
    Walk::of(n)
        .filter_map(|x| match x {
            NodeRef::CollateClause(c) => c.collname.last().and_then(str_sval).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// The text of a `String` node.
fn str_sval(n: &pb::Node) -> Option<&str> {
    match n.node.as_ref()? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// Where the collation of a DISTINCT aggregate's argument `arg` comes from; `opaque` when the
/// FROM list has items whose column names say nothing about the tables' columns.
fn distinct_use(column: ColRef, func: &str, arg: &pb::Node, opaque: bool) -> DistinctUse {
    let source = match arg.node.as_ref() {
        Some(NodeEnum::CollateClause(c)) => match c.collname.last().and_then(str_of) {
            Some(name) => CollationSource::Explicit(name.to_string()),
            None => CollationSource::Derived {
                collates: collates_in(arg),
                reads: None,
                casts: casts_in(arg),
            },
        },
        _ => CollationSource::Derived {
            collates: collates_in(arg),
            reads: if opaque { None } else { columns_read(arg) },
            casts: casts_in(arg),
        },
    };
    DistinctUse {
        column,
        func: func.to_string(),
        source,
    }
}

/// The names of the types an expression casts to (`x::t`, `t 'literal'`, `CAST(x AS t)`).
fn casts_in(n: &pb::Node) -> Vec<String> {
    Walk::of(n)
        .filter_map(|x| match x {
            NodeRef::TypeCast(c) => c
                .type_name
                .as_ref()
                .and_then(|t| t.names.last())
                .and_then(str_sval)
                .map(str::to_string),
            _ => None,
        })
        .collect()
}

/// The columns HAVING compares with constants (IS NULL compares nothing).
fn having_compared(h: &Having, out: &mut Vec<ColRef>) {
    match h {
        Having::And(v) | Having::Or(v) => v.iter().for_each(|x| having_compared(x, out)),
        Having::Not(x) => having_compared(x, out),
        Having::Cmp { column, .. } => out.push(*column),
        Having::IsNull { .. } => {}
    }
}

/// The merge plan of a single-table (or co-located) SELECT that needs more than concatenation;
/// `Err` names the construct that cannot be merged exactly. `is_key` says whether an expression
/// is a sharded table's shard key column.
pub fn plan(s: &pb::SelectStmt, is_key: &dyn Fn(&pb::Node) -> bool) -> Result<MergePlan, String> {
    let g = group_names::resolve(s)?;
    if g.questions.is_empty() {
        return plan_with(s, is_key, &g.outputs);
    }
    if g.questions.len() > MAX_GROUP_QUESTIONS {
        return Err(format!(
            "GROUP BY more than {MAX_GROUP_QUESTIONS} names that are both output column names and possibly table columns"
        ));
    }
    let variants: Vec<PlanChoice> = (0..1usize << g.questions.len())
        .map(|mask| {
            let mut outputs = g.outputs.clone();
            outputs.extend(
                g.questions
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, n)| n.clone()),
            );
            plan_with(s, is_key, &outputs).map(Arc::new)
        })
        .collect();
    // Any plan of the set carries the choice; its own contents are never run.
    let mut carrier = match variants.iter().find_map(|v| v.as_ref().ok()) {
        Some(p) => (**p).clone(),
        None => return variants[0].clone().map(|p| (*p).clone()),
    };
    carrier.group_names = Some(Arc::new(GroupNameChoice {
        names: g.questions,
        tables: g.tables,
        variants,
    }));
    Ok(carrier)
}

/// [`plan`] with the bare GROUP BY names in `outputs` taken as output column names.
fn plan_with(
    s: &pb::SelectStmt,
    is_key: &dyn Fn(&pb::Node) -> bool,
    outputs: &[String],
) -> Result<MergePlan, String> {
    if !s.window_clause.is_empty() {
        return Err("window function".into());
    }
    if s.group_distinct {
        return Err("GROUP BY DISTINCT".into());
    }
    if s.limit_option == pb::LimitOption::WithTies as i32 {
        return Err("FETCH … WITH TIES".into());
    }
    if !s.values_lists.is_empty() {
        return Err("VALUES".into());
    }
    let distinct = !s.distinct_clause.is_empty();
    if s.distinct_clause.iter().any(|d| d.node.is_some()) {
        return Err("DISTINCT ON".into());
    }
    for g in &s.group_clause {
        if matches!(g.node, Some(NodeEnum::GroupingSet(_))) {
            return Err("GROUPING SETS, ROLLUP or CUBE".into());
        }
    }
    let mut stmt = s.clone();
    // The output column each GROUP BY item names, by position or (`outputs`) by name.
    let output_names = group_names::output_names(&s.target_list);
    let group_output = |g: &pb::Node| -> Option<usize> {
        match g.node.as_ref() {
            Some(NodeEnum::AConst(c)) => match c.val.as_ref() {
                Some(Val::Ival(i)) if i.ival >= 1 && (i.ival as usize) <= s.target_list.len() => {
                    Some(i.ival as usize - 1)
                }
                _ => None,
            },
            Some(NodeEnum::ColumnRef(cr)) => match cr.fields.as_slice() {
                [f] => {
                    let name = str_of(f).filter(|n| outputs.iter().any(|o| o.as_str() == *n))?;
                    output_names.iter().position(|o| o.as_deref() == Some(name))
                }
                _ => None,
            },
            _ => None,
        }
    };
    let grouped_by_key = s
        .group_clause
        .iter()
        .filter(|&g| !matches!(g.node, Some(NodeEnum::ColumnRef(_))) || group_output(g).is_none())
        .any(is_key);
    let mut b = Builder {
        is_key,
        grouped_by_key,
        targets: Vec::new(),
        hidden_targets: Vec::new(),
        visible: s.target_list.len(),
        hidden: 0,
        target_shapes: Vec::new(),
        target_names: Vec::new(),
        aggs: Vec::new(),
        agg_shapes: Vec::new(),
        avg_outputs: Vec::new(),
        group_shapes: Vec::new(),
        final_inputs: Vec::new(),
        final_targets: Vec::new(),
        final_outputs: Vec::new(),
        concat_shapes: Vec::new(),
        concat_args: Vec::new(),
    };
    // Is this an aggregate query?
    let mut has_agg = !s.group_clause.is_empty() || s.having_clause.is_some();
    let mut seen_star = false;
    for t in &s.target_list {
        let Some(NodeEnum::ResTarget(rt)) = t.node.as_ref() else {
            return Err("unexpected target".into());
        };
        if let Some(what) = rt.val.as_deref().and_then(contains_agg) {
            if what.starts_with("window") {
                return Err(what);
            }
            has_agg = true;
        }
        seen_star |= is_star(rt);
        b.target_shapes.push(if seen_star {
            None
        } else {
            rt.val.as_deref().map(shape)
        });
        // ORDER BY a bare name means the output column of that name first, and an unaliased
        // output column has the name Postgres figures for it: `id::text` is named `id`, so
        // `SELECT id::text … ORDER BY id` sorts by the text. (After a `*`, left to the shards.)
        let name = match rt.val.as_deref() {
            Some(v) if rt.name.is_empty() && !seen_star => {
                crate::router::final_projection::column_name(v)
            }
            _ => rt.name.clone(),
        };
        b.target_names.push(name);
    }
    for sb in &s.sort_clause {
        if let Some(NodeEnum::SortBy(sb)) = sb.node.as_ref() {
            if let Some(w) = sb.node.as_deref().and_then(contains_agg) {
                if w.starts_with("window") {
                    return Err(w);
                }
                has_agg = true;
            }
        }
    }
    // Grouped by a shard key: every group lives on one shard, whose own aggregates (of any
    // kind), HAVING and all, are final. The shards run the whole statement; the proxy merges
    // their groups in ORDER BY order and applies LIMIT/OFFSET, as for plain rows. A value each
    // shard would compute for itself (`now()`) keeps the merge, which computes it once.
    let pushed_down = has_agg && !distinct && grouped_by_key && !has_per_shard_value(s);
    let has_agg = has_agg && !pushed_down;
    if distinct && has_agg {
        return Err("SELECT DISTINCT with GROUP BY or aggregates".into());
    }
    let grouped = has_agg || distinct;
    if grouped && seen_star && !distinct {
        return Err("SELECT * with GROUP BY or aggregates".into());
    }
    for g in &s.group_clause {
        let by_position = match (g.node.as_ref(), group_output(g)) {
            (_, Some(i)) => b.target_shapes.get(i).cloned().flatten(),
            (Some(NodeEnum::AConst(_)), None) => None,
            _ => Some(shape(g)),
        };
        b.group_shapes.extend(by_position);
    }
    // Output columns.
    for (i, t) in s.target_list.iter().enumerate() {
        let Some(NodeEnum::ResTarget(rt)) = t.node.as_ref() else {
            continue;
        };
        let val = rt.val.as_deref();
        let mut out = t.clone();
        if has_agg {
            let plain = val
                .and_then(agg_call)
                .filter(|a| !a.call.agg_distinct || b.distinct_exact(a));
            if let Some(a) = plain {
                b.check_agg(&a)?;
                let v = val.ok_or("target without a value")?;
                if a.name == "avg" {
                    let name = if rt.name.is_empty() { "avg" } else { &rt.name };
                    out = res_target(name, Builder::renamed_call(a.call, "sum"));
                    let count = b.add_hidden(Builder::renamed_call(a.call, "count"));
                    b.aggs.push(PlanAgg {
                        func: AggFunc::Avg { count },
                        column: ColRef::Output(i),
                    });
                    b.avg_outputs.push(i);
                } else {
                    b.aggs.push(PlanAgg {
                        func: simple_func(a.name),
                        column: ColRef::Output(i),
                    });
                }
                b.agg_shapes.push(shape(v));
            } else if let Some(v) = val.filter(|v| contains_agg(v).is_some()) {
                out = b.final_target(i, &rt.name, v)?;
            } else if s.group_clause.is_empty() && !val.is_some_and(is_constant) {
                // A constant or parameter is the same in every shard's one row: passed through.
                // Another column-free expression (`now()`, `'a' || 1`) is computed once by the
                // final query, as Postgres computes it once for its one row.
                let v = val.ok_or("target without a value")?;
                if let Some(why) = not_once_per_statement(v) {
                    return Err(format!("{why} in an aggregate query without GROUP BY"));
                }
                out = b.final_target(i, &rt.name, v)?;
            } else if let Some(what) = val.and_then(per_shard_value) {
                // With GROUP BY, each shard would give its own value to its own groups: the
                // final query computes it once for all, reading the group keys it needs from
                // the merged rows.
                let v = val.ok_or("target without a value")?;
                out = b
                    .final_target(i, &rt.name, v)
                    .map_err(|e| format!("{what} over several shards with {e}"))?;
            }
        } else if distinct {
            if let Some(what) = val.and_then(per_shard_value) {
                return Err(format!("SELECT DISTINCT of {what} over several shards"));
            }
        }
        b.targets.push(out);
    }
    // GROUP BY keys (the merge's own grouping; none when the shards' groups are final).
    let mut keys = Vec::new();
    for g in s.group_clause.iter().filter(|_| grouped) {
        let col = match (g.node.as_ref(), group_output(g)) {
            (_, Some(i)) => {
                let target = s.target_list.get(i).and_then(|t| match t.node.as_ref() {
                    Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
                    _ => None,
                });
                if let Some(what) = target.and_then(per_shard_value) {
                    return Err(format!("GROUP BY {what} over several shards"));
                }
                ColRef::Output(i)
            }
            (Some(NodeEnum::AConst(_)), None) => {
                return Err("GROUP BY a constant that is not an output column position".into())
            }
            _ => {
                if contains_param(g) {
                    return Err("GROUP BY a parameter".into());
                }
                if let Some(what) = per_shard_value(g) {
                    return Err(format!("GROUP BY {what} over several shards"));
                }
                b.expr_column(g)
            }
        };
        keys.push(col);
    }
    // HAVING, then ORDER BY.
    let having = match s.having_clause.as_deref().filter(|_| grouped) {
        Some(h) => {
            // Keeps the condition's `$n` typed as in the client's statement: first in the
            // target list, so the hidden `$n` columns of `having` take the types it gives them.
            b.add_hidden(h.clone());
            Some(b.having(h)?)
        }
        None => None,
    };
    let mut sort = Vec::new();
    for item in &s.sort_clause {
        let Some(NodeEnum::SortBy(sb)) = item.node.as_ref() else {
            return Err("unexpected ORDER BY item".into());
        };
        if !sb.use_op.is_empty() || sb.sortby_dir == pb::SortByDir::SortbyUsing as i32 {
            return Err("ORDER BY … USING".into());
        }
        let expr = sb.node.as_deref().ok_or("ORDER BY without expression")?;
        if grouped && contains_param(expr) {
            return Err("ORDER BY a parameter in a grouped query".into());
        }
        let column = b.sort_column(expr, grouped)?;
        let descending = sb.sortby_dir == pb::SortByDir::SortbyDesc as i32;
        let nulls_first = match sb.sortby_nulls {
            x if x == pb::SortByNulls::SortbyNullsFirst as i32 => true,
            x if x == pb::SortByNulls::SortbyNullsLast as i32 => false,
            _ => descending,
        };
        sort.push(PlanSortKey {
            column,
            descending,
            nulls_first,
        });
    }
    // LIMIT / OFFSET.
    let limit = s
        .limit_count
        .as_deref()
        .map(|n| bound_of(n, "LIMIT"))
        .transpose()?;
    let offset = s
        .limit_offset
        .as_deref()
        .map(|n| bound_of(n, "OFFSET"))
        .transpose()?;
    stmt.limit_offset = None;
    if grouped {
        stmt.limit_count = None;
        stmt.limit_option = pb::LimitOption::Default as i32;
        stmt.sort_clause.clear();
        stmt.having_clause = None;
    } else if let (Some(l), Some(o)) = (s.limit_count.as_deref(), s.limit_offset.as_deref()) {
        stmt.limit_count = Some(Box::new(int8_sum(l, o)?));
    }
    // `$n` no longer in the shard statement's LIMIT/OFFSET stay referenced, typed as Postgres
    // types them there (bigint).
    let pushed_params: Vec<usize> = if grouped {
        Vec::new()
    } else {
        [limit, if limit.is_some() { offset } else { None }]
            .into_iter()
            .flatten()
            .filter_map(|b| match b {
                Bound::Param(n) => Some(n),
                _ => None,
            })
            .collect()
    };
    let bounds = [
        (limit, s.limit_count.as_deref()),
        (offset, s.limit_offset.as_deref()),
    ];
    for (bnd, written) in bounds {
        if let (Some(Bound::Param(n)), Some(written)) = (bnd, written) {
            if !pushed_params.contains(&n) {
                b.add_hidden(as_int8(written)?);
            }
        }
    }
    if b.visible == 0 {
        return Err("a SELECT without output columns".into());
    }
    let kind = if grouped {
        PlanKind::Groups {
            keys: if distinct { None } else { Some(keys) },
            aggs: b.aggs.clone(),
            having,
        }
    } else {
        PlanKind::Rows
    };
    let mut collation = collation_use(s, &b.targets, &b.hidden_targets, &kind, &sort)?;
    let opaque = tables_of(s).1;
    collation.distinct = b
        .concat_args
        .iter()
        .map(|(c, f, arg)| distinct_use(*c, f, arg, opaque))
        .collect();
    let finish = if b.final_targets.is_empty() {
        None
    } else {
        let select = pb::SelectStmt {
            target_list: std::mem::take(&mut b.final_targets),
            limit_option: pb::LimitOption::Default as i32,
            op: pb::SetOperation::SetopNone as i32,
            ..Default::default()
        };
        let sql = NodeEnum::SelectStmt(Box::new(select))
            .deparse(pg_query::DeparseOptions::default())
            .map_err(|e| format!("an expression over aggregates pgshard cannot rewrite ({e})"))?;
        Some(FinalProjection {
            outputs: b.final_outputs.clone(),
            inputs: b.final_inputs.clone(),
            select: SqlTemplate::from_sql(&sql)?,
        })
    };
    // Grouped by an output column's name, the shards group by its position: exactly what the
    // merge groups by, even should a table gain a column of that name before they run it. A
    // name output columns of different values share stays, for the shards to refuse as
    // Postgres does.
    for g in stmt.group_clause.iter_mut() {
        let Some(NodeEnum::ColumnRef(cr)) = g.node.as_ref() else {
            continue;
        };
        let (Some(i), [f]) = (group_output(g), cr.fields.as_slice()) else {
            continue;
        };
        let name = str_of(f);
        let mut shapes = output_names
            .iter()
            .zip(&b.target_shapes)
            .filter(|(o, _)| o.as_deref() == name)
            .map(|(_, shape)| shape);
        let first = shapes.next().cloned().flatten();
        if first.is_some() && shapes.all(|sh| *sh == first) {
            *g = node(NodeEnum::AConst(pb::AConst {
                isnull: false,
                location: -1,
                val: Some(Val::Ival(pb::Integer {
                    ival: i32::try_from(i + 1).map_err(|_| "GROUP BY position")?,
                })),
            }));
        }
    }
    stmt.target_list = b.targets;
    stmt.target_list.append(&mut b.hidden_targets);
    let fill_in_turn =
        matches!(kind, PlanKind::Rows) && super::analyze::lock_limit::fills_in_turn(s);
    let lock_shares = matches!(kind, PlanKind::Rows) && super::analyze::lock_limit::locks_shares(s);
    let sql = NodeEnum::SelectStmt(Box::new(stmt))
        .deparse(pg_query::DeparseOptions::default())
        .map_err(|e| format!("a statement pgshard cannot rewrite ({e})"))?;
    Ok(MergePlan {
        shard_sql: SqlTemplate::from_sql(&sql)?,
        hidden: b.hidden,
        kind,
        sort,
        limit,
        offset,
        avg_outputs: b.avg_outputs,
        collation,
        finish,
        group_names: None,
        fill_in_turn,
        lock_shares,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_sql(sql: &str) -> Result<MergePlan, String> {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().unwrap();
        let Some(NodeEnum::SelectStmt(s)) = stmt.node.as_ref() else {
            panic!()
        };
        let is_key = |n: &pb::Node| {
            matches!(n.node.as_ref(), Some(NodeEnum::ColumnRef(c))
                if c.fields.last().and_then(str_of) == Some("user_id"))
        };
        plan(s, &is_key)
    }

    #[test]
    fn locking_reads_with_a_limit_and_no_order_fill_from_the_shards_in_turn() {
        let fills = |sql: &str| plan_sql(sql).unwrap().fill_in_turn;
        assert!(fills("SELECT id FROM users LIMIT 5 FOR UPDATE SKIP LOCKED"));
        assert!(fills(
            "SELECT id FROM users WHERE name = $1 LIMIT $2 OFFSET 1 FOR UPDATE"
        ));
        assert!(!fills(
            "SELECT id FROM users ORDER BY id LIMIT 5 FOR UPDATE SKIP LOCKED"
        ));
        assert!(!fills("SELECT id FROM users LIMIT 5"));
        let shares = |sql: &str| plan_sql(sql).unwrap().lock_shares;
        assert!(shares(
            "SELECT id FROM users ORDER BY id LIMIT 5 FOR UPDATE SKIP LOCKED"
        ));
        assert!(!shares("SELECT id FROM users LIMIT 5 FOR UPDATE"));
        assert!(!shares("SELECT id FROM users ORDER BY id LIMIT 5"));
    }

    #[test]
    fn order_by_with_hidden_key_and_limit_offset() {
        let p = plan_sql("SELECT name FROM users ORDER BY created_at DESC, 1 LIMIT 10 OFFSET 5")
            .unwrap();
        assert_eq!(p.kind, PlanKind::Rows);
        assert_eq!(p.hidden, 1);
        assert_eq!(
            p.sort,
            vec![
                PlanSortKey {
                    column: ColRef::Hidden(0),
                    descending: true,
                    nulls_first: true
                },
                PlanSortKey {
                    column: ColRef::Output(0),
                    descending: false,
                    nulls_first: false
                }
            ]
        );
        assert_eq!(p.limit, Some(Bound::Const(10)));
        assert_eq!(p.offset, Some(Bound::Const(5)));
        let sql = p.shard_sql.with_placeholders();
        assert_eq!(
            sql,
            "SELECT name, created_at AS pgshard_hidden_0 FROM users ORDER BY created_at DESC, 1 LIMIT 10::int8 + 5::int8"
        );
    }

    /// A bare ORDER BY name is the output column Postgres names so, aliased or not: a cast
    /// keeps its argument's name (`id::text` is `id`), so the merge sorts by the text the
    /// shards sorted by, not by the table's column.
    #[test]
    fn order_by_the_implicit_name_of_an_output_column() {
        for (sql, hidden) in [
            ("SELECT id::text FROM users ORDER BY id LIMIT 3", 0),
            (
                "SELECT name, created_at::date FROM users ORDER BY created_at",
                0,
            ),
            ("SELECT CAST(u.id AS text) FROM users u ORDER BY id DESC", 0),
            ("SELECT lower(name) FROM users ORDER BY lower", 0),
        ] {
            let p = plan_sql(sql).unwrap();
            assert_eq!(p.hidden, hidden, "{sql}");
            let want = if sql.starts_with("SELECT name") { 1 } else { 0 };
            assert_eq!(p.sort[0].column, ColRef::Output(want), "{sql}");
        }
        // A qualified name, or an expression, is the table's column.
        for sql in [
            "SELECT u.id::text FROM users u ORDER BY u.id LIMIT 3",
            "SELECT id::text FROM users ORDER BY id + 0 LIMIT 3",
        ] {
            let p = plan_sql(sql).unwrap();
            assert_eq!(
                (p.hidden, &p.sort[0].column),
                (1, &ColRef::Hidden(0)),
                "{sql}"
            );
        }
    }

    #[test]
    fn params_in_limit_stay_referenced() {
        let p = plan_sql("SELECT * FROM users ORDER BY name LIMIT $1 OFFSET $2").unwrap();
        let sql = p.shard_sql.with_placeholders();
        assert!(sql.contains("LIMIT $1::int8 + $2::int8"), "{sql}");
        let filled = p
            .shard_sql
            .with_literals(&[Literal::Number("3".into()), Literal::Number("-1".into())])
            .unwrap();
        assert!(filled.contains("LIMIT 3::int8 + (-1)::int8"), "{filled}");
        let p = plan_sql("SELECT * FROM users ORDER BY name OFFSET $1").unwrap();
        assert!(p
            .shard_sql
            .with_placeholders()
            .contains("$1::int8 AS pgshard_hidden_1"));
        let p = plan_sql("SELECT count(*) FROM users LIMIT $1").unwrap();
        assert!(p
            .shard_sql
            .with_placeholders()
            .contains("$1::int8 AS pgshard_hidden_0"));
        assert!(!p.shard_sql.with_placeholders().contains("LIMIT"));
    }

    #[test]
    fn groups_of_a_shard_key_are_final_on_their_shard() {
        // (statement, the merge only merges rows: the shards' groups are final)
        let cases = [
            ("SELECT user_id, array_agg(x ORDER BY x) FROM users GROUP BY user_id", true),
            (
                "SELECT user_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY x), bool_and(x > 0) FROM users GROUP BY user_id HAVING stddev(x) > 1 ORDER BY sum(x) DESC LIMIT 3",
                true,
            ),
            ("SELECT u.user_id, string_agg(name, ',' ORDER BY name) FROM users u GROUP BY u.user_id, g ORDER BY 1", true),
            // Not by the key: the merge combines each group's parts.
            ("SELECT g, count(*) FROM users GROUP BY g", false),
            // now() is computed once, by the merge.
            ("SELECT user_id, count(*), now() FROM users GROUP BY user_id", false),
            // DISTINCT over the groups needs the merge.
            ("SELECT DISTINCT count(*) FROM users GROUP BY user_id", false),
        ];
        for (sql, pushed) in cases {
            let got = plan_sql(sql);
            match (&got, pushed) {
                (Ok(p), true) => {
                    assert_eq!(p.kind, PlanKind::Rows, "{sql}");
                    let shard = p.shard_sql.with_placeholders();
                    assert!(shard.contains("GROUP BY"), "{sql}: {shard}");
                    if sql.contains("HAVING") {
                        assert!(shard.contains("HAVING"), "{sql}: {shard}");
                        assert!(shard.contains("LIMIT 3"), "{sql}: {shard}");
                        assert_eq!(p.sort.len(), 1, "{sql}");
                        assert_eq!(p.limit, Some(Bound::Const(3)), "{sql}");
                    }
                }
                (Ok(p), false) => assert_ne!(p.kind, PlanKind::Rows, "{sql}"),
                (Err(_), false) => {}
                (Err(e), true) => panic!("{sql}: {e}"),
            }
        }
    }

    #[test]
    fn params_in_limit_keep_the_clients_cast() {
        // The server must type `$n` as the client's Describe did (asyncpg sends `$1::INTEGER`
        // as 4 binary bytes): the cast stays inside the int8 one.
        let cases = [
            "SELECT count(*) FROM users LIMIT $1::INTEGER",
            "SELECT DISTINCT user_id FROM users ORDER BY user_id LIMIT $1::INTEGER OFFSET $2::INTEGER",
            "SELECT name FROM users ORDER BY name LIMIT $1::int4 OFFSET $2::int4",
        ];
        for sql in cases {
            let shard = plan_sql(sql).unwrap().shard_sql.with_placeholders();
            assert!(shard.contains("$1::int"), "{sql}: {shard}");
            assert!(!shard.contains("$1::int8"), "{sql}: {shard}");
            assert!(!shard.contains("$2::int8"), "{sql}: {shard}");
        }
    }

    #[test]
    fn aggregates_avg_having_and_order() {
        let p = plan_sql(
            "SELECT g, avg(x), count(*) AS n FROM users GROUP BY g HAVING sum(x) > 10 AND count(*) <> $1 ORDER BY avg(x) DESC, max(y)",
        )
        .unwrap();
        let PlanKind::Groups { keys, aggs, having } = &p.kind else {
            panic!()
        };
        assert_eq!(keys.as_deref(), Some(&[ColRef::Output(0)][..]));
        assert_eq!(
            aggs[0],
            PlanAgg {
                func: AggFunc::Avg {
                    count: ColRef::Hidden(0)
                },
                column: ColRef::Output(1)
            }
        );
        assert_eq!(aggs[1].func, AggFunc::Count);
        assert_eq!(aggs[2].func, AggFunc::Sum);
        assert_eq!(aggs[3].func, AggFunc::Max);
        assert_eq!(p.avg_outputs, vec![1]);
        let Some(Having::And(parts)) = having else {
            panic!()
        };
        assert_eq!(
            parts[1],
            Having::Cmp {
                column: ColRef::Output(2),
                op: CmpOp::Ne,
                value: Operand::Param {
                    number: 1,
                    typed: ColRef::Hidden(3)
                }
            }
        );
        assert_eq!(p.sort[0].column, ColRef::Output(1));
        let sql = p.shard_sql.with_placeholders();
        assert!(sql.starts_with("SELECT g, sum(x) AS avg, count(*) AS n, count(x) AS pgshard_hidden_0, sum(x) > 10 AND count(*) <> $1 AS pgshard_hidden_1, sum(x) AS pgshard_hidden_2, $1 AS pgshard_hidden_3"), "{sql}");
        assert!(!sql.contains("HAVING") && !sql.contains("ORDER"), "{sql}");
    }

    #[test]
    fn refusals_name_the_construct() {
        for (sql, want) in [
            (
                "SELECT g FROM users GROUP BY g ORDER BY count(DISTINCT name)",
                "count(DISTINCT …) in HAVING or ORDER BY",
            ),
            (
                "SELECT count(*) + (SELECT 1) FROM users",
                "a subquery in an expression over aggregates",
            ),
            (
                "SELECT count(DISTINCT (name, g)) FROM users",
                "aggregate count() with DISTINCT of a row",
            ),
            (
                "SELECT g, count(*) + x FROM users GROUP BY g",
                "a column outside an aggregate",
            ),
            (
                "SELECT coalesce(string_agg(name, ','), '') FROM users",
                "aggregate string_agg()",
            ),
            (
                "SELECT string_agg(name, ',') FROM users",
                "aggregate string_agg()",
            ),
            (
                "SELECT name, row_number() OVER () FROM users",
                "window function",
            ),
            ("SELECT DISTINCT ON (name) name FROM users", "DISTINCT ON"),
            (
                "SELECT name FROM users ORDER BY name COLLATE \"C\"",
                "COLLATE",
            ),
            ("SELECT g FROM users GROUP BY ROLLUP (g)", "ROLLUP"),
            (
                "SELECT g FROM users GROUP BY g HAVING count(*) > sum(x)",
                "HAVING",
            ),
            (
                "SELECT * FROM users LIMIT 2 + 3",
                "LIMIT with an expression",
            ),
            (
                "SELECT count(*), name FROM users",
                "a column that is not an aggregate",
            ),
            (
                "SELECT count(*), random() FROM users",
                "random() beside aggregates",
            ),
            (
                "SELECT count(*), nextval('s') FROM users",
                "nextval() beside aggregates",
            ),
            (
                "SELECT sum(x), clock_timestamp() - now() FROM users",
                "clock_timestamp() beside aggregates",
            ),
            (
                "SELECT count(*), upper(name) || 'x' FROM users",
                "a column that is not an aggregate",
            ),
            (
                "SELECT count(*), my_schema.f(1) FROM users",
                "my_schema.f() beside aggregates",
            ),
            ("SELECT count(*), (SELECT 1) FROM users", "subquery"),
        ] {
            let e = plan_sql(sql).unwrap_err();
            assert!(e.contains(want), "{sql}: {e}");
        }
        // Constants and parameters beside aggregates pass through from a shard's row.
        for sql in [
            "SELECT count(*), 0 FROM users",
            "SELECT $1::int, sum(x), NULL FROM users",
        ] {
            assert!(plan_sql(sql).is_ok(), "{sql}");
        }
        // Other column-free expressions of one value per statement: computed once by the
        // final query, the shards returning an unevaluated NULL in their place.
        for (sql, outputs) in [
            ("SELECT count(*), now() FROM users", vec![1]),
            (
                "SELECT sum(x), current_date, 'label' || 1 AS l FROM users",
                vec![1, 2],
            ),
            (
                "SELECT current_user, lower('A') || $1, count(*) FROM users",
                vec![0, 1],
            ),
        ] {
            let p = plan_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let f = p.finish.as_ref().expect(sql);
            assert_eq!(f.outputs, outputs, "{sql}");
            assert!(f.inputs.is_empty(), "{sql}");
        }
        // With GROUP BY, a value each shard computes for itself is computed once by the final
        // query (reading the group keys it needs from the merged rows), or refused.
        for (sql, outputs, inputs) in [
            (
                "SELECT g, count(*), now() FROM users GROUP BY g",
                vec![2],
                0,
            ),
            (
                "SELECT g, g || CURRENT_TIMESTAMP::text AS t, sum(x) FROM users GROUP BY g",
                vec![1],
                1,
            ),
        ] {
            let p = plan_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let f = p.finish.as_ref().expect(sql);
            assert_eq!(f.outputs, outputs, "{sql}");
            assert_eq!(f.inputs.len(), inputs, "{sql}");
        }
        for (sql, want) in [
            (
                "SELECT g, name || now()::text, count(*) FROM users GROUP BY g, user_id",
                "now() over several shards with a column outside an aggregate",
            ),
            (
                "SELECT date_trunc('day', now()), count(*) FROM users GROUP BY 1",
                "GROUP BY now()",
            ),
            (
                "SELECT count(*) FROM users GROUP BY g, pg_backend_pid()",
                "GROUP BY pg_backend_pid()",
            ),
            (
                "SELECT DISTINCT g, LOCALTIMESTAMP FROM users",
                "DISTINCT of LOCALTIMESTAMP",
            ),
        ] {
            let e = plan_sql(sql).unwrap_err();
            assert!(e.contains(want), "{sql}: {e}");
        }
        // Values that are the same on every shard still run there.
        assert!(
            plan_sql("SELECT g, lower(g), count(*) FROM users GROUP BY g")
                .is_ok_and(|p| p.finish.is_none())
        );
        assert!(plan_sql("SELECT count(DISTINCT user_id) FROM users").is_ok());
        assert!(
            plan_sql("SELECT user_id, count(DISTINCT name) FROM users GROUP BY user_id").is_ok()
        );
    }

    #[test]
    fn compared_values_are_traced_to_columns() {
        let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let p = plan_sql(
            "SELECT lower(u.name) AS n, min(nick), count(*) FROM users u JOIN orders o ON o.user_id = u.user_id GROUP BY 1, o.g HAVING max(code) > 'm' ORDER BY n DESC",
        )
        .unwrap();
        let c = &p.collation;
        assert_eq!(
            c.tables,
            vec![
                TableName {
                    schema: None,
                    name: "users".into()
                },
                TableName {
                    schema: None,
                    name: "orders".into()
                }
            ]
        );
        assert_eq!(
            c.ordered,
            vec![
                (ColRef::Output(0), names(&["name"])),
                (ColRef::Output(1), names(&["nick"])),
                (ColRef::Hidden(2), names(&["code"])),
            ]
        );
        assert_eq!(c.grouped, names(&["name", "g"]));
        assert!(c.casts.is_empty());
        let p = plan_sql("SELECT id FROM users ORDER BY name::code_t, CAST(n AS pg_catalog.varchar(3)), id::text")
            .unwrap();
        assert_eq!(p.collation.casts, ["code_t", "text", "varchar"]);

        let p = plan_sql("SELECT * FROM app.users ORDER BY 2, name").unwrap();
        assert_eq!(p.collation.ordered[0], (ColRef::Output(1), None));
        assert_eq!(
            p.collation.ordered[1],
            (ColRef::Hidden(0), names(&["name"]))
        );
        assert_eq!(p.collation.tables[0].schema.as_deref(), Some("app"));
        assert_eq!(p.collation.grouped, Some(vec![]));
        let p = plan_sql("SELECT DISTINCT * FROM users").unwrap();
        assert_eq!(p.collation.grouped, None);
        // A subquery's output names say nothing about its tables' columns.
        let p = plan_sql("SELECT n FROM (SELECT name AS n FROM users) s ORDER BY n").unwrap();
        assert_eq!(p.collation.ordered, vec![(ColRef::Output(0), None)]);
        assert_eq!(p.collation.tables[0].name, "users");
    }

    #[test]
    fn collate_in_any_compared_expression_is_refused() {
        for sql in [
            "SELECT name COLLATE \"C\" AS n FROM users ORDER BY n",
            "SELECT min(name COLLATE \"C\") FROM users",
            "SELECT g FROM users GROUP BY g HAVING max(name COLLATE \"C\") > 'a'",
            "SELECT DISTINCT name COLLATE \"C\" FROM users",
            "SELECT g COLLATE \"C\", count(*) FROM users GROUP BY 1",
        ] {
            let e = plan_sql(sql).unwrap_err();
            assert!(e.contains("COLLATE"), "{sql}: {e}");
        }
        // COLLATE elsewhere changes nothing the merge compares.
        assert!(
            plan_sql("SELECT name FROM users WHERE name COLLATE \"C\" > 'a' ORDER BY id").is_ok()
        );
    }

    #[test]
    fn expressions_over_aggregates_get_a_final_projection() {
        // (statement, shard statement, final SELECT list)
        for (sql, shard, fin) in [
            (
                "SELECT coalesce(sum(x), 0) FROM t",
                "SELECT CASE WHEN false THEN COALESCE(sum(x), 0) END AS \"coalesce\", sum(x) AS pgshard_hidden_0 FROM t",
                "SELECT COALESCE(pgshard_m.c0, 0) AS \"coalesce\"",
            ),
            (
                "SELECT g, sum(x) / NULLIF(count(*), 0) AS r FROM t GROUP BY g ORDER BY r LIMIT 3",
                "SELECT g, CASE WHEN false THEN sum(x) / NULLIF(count(*), 0) END AS r, sum(x) AS pgshard_hidden_0, count(*) AS pgshard_hidden_1 FROM t GROUP BY g",
                "SELECT pgshard_m.c0 / NULLIF(pgshard_m.c1, 0) AS r",
            ),
            (
                "SELECT round(avg(x), 2), sum(x)::int FROM t",
                "SELECT CASE WHEN false THEN round(avg(x), 2) END AS round, CASE WHEN false THEN sum(x)::int END AS sum, sum(x) AS pgshard_hidden_0, count(x) AS pgshard_hidden_1, sum(x) AS pgshard_hidden_2 FROM t",
                "SELECT round(pgshard_m.c0, 2) AS round, pgshard_m.c1::int AS sum",
            ),
            (
                "SELECT max(x) - min(x), count(*) FILTER (WHERE x > 0) FROM t",
                "SELECT CASE WHEN false THEN max(x) - min(x) END AS \"?column?\", count(*) FILTER (WHERE x > 0), max(x) AS pgshard_hidden_0, min(x) AS pgshard_hidden_1 FROM t",
                "SELECT pgshard_m.c0 - pgshard_m.c1 AS \"?column?\"",
            ),
            (
                "SELECT g, count(DISTINCT v), sum(DISTINCT v) FILTER (WHERE v > $1) FROM t GROUP BY g",
                "SELECT g, CASE WHEN false THEN count(DISTINCT v) END AS count, CASE WHEN false THEN sum(DISTINCT v) FILTER (WHERE v > $1) END AS sum, array_agg(DISTINCT v) AS pgshard_hidden_0, array_agg(DISTINCT v) FILTER (WHERE v > $1) AS pgshard_hidden_1 FROM t GROUP BY g",
                "SELECT (SELECT count(DISTINCT pgshard_d.v) FROM unnest(pgshard_m.c0) pgshard_d(v)) AS count, (SELECT sum(DISTINCT pgshard_d.v) FROM unnest(pgshard_m.c1) pgshard_d(v)) AS sum",
            ),
            (
                "SELECT g, g * 10 + count(*) FROM t GROUP BY g",
                "SELECT g, CASE WHEN false THEN g * 10 + count(*) END AS \"?column?\", count(*) AS pgshard_hidden_0 FROM t GROUP BY g",
                "SELECT pgshard_m.c0 * 10 + pgshard_m.c1 AS \"?column?\"",
            ),
        ] {
            let p = plan_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(p.shard_sql.with_placeholders(), shard, "{sql}");
            let f = p.finish.as_ref().unwrap();
            assert_eq!(f.select.with_placeholders(), fin, "{sql}");
        }
        let p =
            plan_sql("SELECT g, coalesce(sum(x), $1) AS s FROM t GROUP BY g ORDER BY s").unwrap();
        let f = p.finish.unwrap();
        assert_eq!(f.outputs, vec![1]);
        assert_eq!(f.inputs, vec![ColRef::Hidden(0)]);
        assert_eq!(f.select.params(), vec![1]);
        assert_eq!(p.sort[0].column, ColRef::Output(1));
        // Plain aggregates need no final projection; FILTER goes to the shards as written.
        let p = plan_sql("SELECT count(*) FILTER (WHERE x > 1), sum(x) FROM t").unwrap();
        assert!(p.finish.is_none());
        assert!(p
            .shard_sql
            .with_placeholders()
            .starts_with("SELECT count(*) FILTER (WHERE x > 1), sum(x)"));
    }

    #[test]
    fn distinct_uses_all_output_columns() {
        let p = plan_sql("SELECT DISTINCT a, b FROM users ORDER BY b").unwrap();
        assert!(matches!(p.kind, PlanKind::Groups { keys: None, .. }));
        assert_eq!(p.sort[0].column, ColRef::Output(1));
    }

    #[test]
    fn distinct_aggregates_record_where_their_collation_comes_from() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let derived =
            |collates: &[&str], reads: Option<&[&str]>, casts: &[&str]| CollationSource::Derived {
                collates: v(collates),
                reads: reads.map(v),
                casts: v(casts),
            };
        // (statement, the DISTINCT uses: aggregate name and collation source)
        let cases: Vec<(&str, Vec<(&str, CollationSource)>)> = vec![
            (
                "SELECT count(DISTINCT email) FROM t",
                vec![("count", derived(&[], Some(&["email"]), &[]))],
            ),
            (
                "SELECT count(DISTINCT lower(t.email)), sum(DISTINCT n) FROM t",
                vec![
                    ("count", derived(&[], Some(&["email"]), &[])),
                    ("sum", derived(&[], Some(&["n"]), &[])),
                ],
            ),
            (
                "SELECT count(DISTINCT name COLLATE public.ci) FROM t",
                vec![("count", CollationSource::Explicit("ci".into()))],
            ),
            (
                "SELECT count(DISTINCT lower(name COLLATE \"ci\") || x::ci_text) FROM t",
                vec![(
                    "count",
                    derived(&["ci"], Some(&["name", "x"]), &["ci_text"]),
                )],
            ),
            (
                "SELECT avg(DISTINCT n), count(DISTINCT n) + 1 AS c FROM (SELECT n FROM t) s",
                vec![("avg", derived(&[], None, &[]))],
            ),
            // Exact per shard: no merged array, nothing to check.
            (
                "SELECT count(DISTINCT user_id), min(DISTINCT email) FROM t",
                vec![],
            ),
            (
                "SELECT g, count(DISTINCT email) FROM t GROUP BY user_id, g",
                vec![],
            ),
        ];
        for (sql, want) in cases {
            let p = plan_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let got: Vec<(&str, CollationSource)> = p
                .collation
                .distinct
                .iter()
                .map(|d| (d.func.as_str(), d.source.clone()))
                .collect();
            assert_eq!(got, want, "{sql}");
            let aggs = match &p.kind {
                PlanKind::Groups { aggs, .. } => aggs.clone(),
                PlanKind::Rows => vec![],
            };
            for d in &p.collation.distinct {
                assert!(
                    aggs.iter()
                        .any(|a| a.column == d.column && a.func == AggFunc::Concat),
                    "{sql}: {d:?} names the merged array"
                );
            }
        }
    }

    #[test]
    fn group_by_an_output_name_is_chosen_by_the_tables_columns() {
        let cols = |c: &'static [&'static str]| -> Vec<String> {
            c.iter().map(|s| s.to_string()).collect()
        };
        // (statement, t's columns, shard statement, group keys, hidden columns)
        type Case = (&'static str, Vec<String>, &'static str, Vec<ColRef>, usize);
        let cases: Vec<Case> = vec![
            // No column `grp`: the output column, no hidden column.
            (
                "SELECT g AS grp, count(*) FROM t GROUP BY grp ORDER BY grp",
                cols(&["g", "x"]),
                "SELECT g AS grp, count(*) FROM t GROUP BY 1",
                vec![ColRef::Output(0)],
                0,
            ),
            // A column `grp`: the input column wins, as a hidden column.
            (
                "SELECT g AS grp, count(*) FROM t GROUP BY grp ORDER BY grp",
                cols(&["g", "grp"]),
                "SELECT g AS grp, count(*), grp AS pgshard_hidden_0 FROM t GROUP BY grp",
                vec![ColRef::Hidden(0)],
                1,
            ),
            (
                "SELECT lower(name) AS name, count(*) FROM t GROUP BY name",
                cols(&["name"]),
                "SELECT lower(name) AS name, count(*), name AS pgshard_hidden_0 FROM t GROUP BY name",
                vec![ColRef::Hidden(0)],
                1,
            ),
            (
                "SELECT date_trunc('day', ts) AS day, sum(x) FROM t GROUP BY day HAVING sum(x) > 1 ORDER BY day",
                cols(&["ts", "x"]),
                "SELECT date_trunc('day', ts) AS day, sum(x), sum(x) > 1 AS pgshard_hidden_0 FROM t GROUP BY 1",
                vec![ColRef::Output(0)],
                1,
            ),
            // System columns are input columns too.
            (
                "SELECT g AS xmin, count(*) FROM t GROUP BY xmin",
                cols(&["g", "xmin"]),
                "SELECT g AS xmin, count(*), xmin AS pgshard_hidden_0 FROM t GROUP BY xmin",
                vec![ColRef::Hidden(0)],
                1,
            ),
        ];
        for (sql, columns, shard, keys, hidden) in cases {
            let p = plan_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let choice = p.group_names.as_ref().expect(sql);
            assert_eq!(
                choice.tables,
                vec![TableName {
                    schema: None,
                    name: "t".into()
                }],
                "{sql}"
            );
            let chosen = choice
                .choose(&|_| Some(columns.as_slice()))
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(chosen.shard_sql.with_placeholders(), shard, "{sql}");
            assert_eq!(chosen.hidden, hidden, "{sql}");
            assert!(chosen.group_names.is_none(), "{sql}");
            match &chosen.kind {
                PlanKind::Groups { keys: k, .. } => assert_eq!(k.as_ref(), Some(&keys), "{sql}"),
                PlanKind::Rows => panic!("{sql}"),
            }
            // Unread columns: refused, naming the table.
            let e = choice.choose(&|_| None).unwrap_err();
            assert!(e.contains("column names of table t"), "{sql}: {e}");
        }
        // The output column's expression is grouped: an expression over it and aggregates
        // reads the group's value; grouped by an input column instead, it is refused.
        let p = plan_sql("SELECT g AS grp, g * 10 + count(*) AS v FROM t GROUP BY grp ORDER BY v")
            .unwrap();
        let choice = p.group_names.as_ref().unwrap();
        let g_only = cols(&["g"]);
        let chosen = choice.choose(&|_| Some(g_only.as_slice())).unwrap();
        assert_eq!(
            chosen.finish.as_ref().map(|f| f.inputs.clone()),
            Some(vec![ColRef::Output(0), ColRef::Hidden(0)])
        );
        let with_grp = cols(&["g", "grp"]);
        assert!(choice.choose(&|_| Some(with_grp.as_slice())).is_err());
        // Two names in question: each decided by itself.
        let p =
            plan_sql("SELECT a + 1 AS p, b || 'x' AS q, count(*) FROM t GROUP BY p, q").unwrap();
        let choice = p.group_names.as_ref().unwrap();
        assert_eq!(choice.names, ["p", "q"]);
        let only_q = cols(&["a", "b", "q"]);
        let chosen = choice.choose(&|_| Some(only_q.as_slice())).unwrap();
        match &chosen.kind {
            PlanKind::Groups { keys, .. } => {
                assert_eq!(
                    keys.as_deref(),
                    Some(&[ColRef::Output(0), ColRef::Hidden(0)][..])
                )
            }
            PlanKind::Rows => panic!(),
        }
        // Output columns sharing the name: the same value is grouped by position, different
        // ones keep the name for the shards to refuse (Postgres: GROUP BY "x" is ambiguous).
        let none = cols(&["a", "b"]);
        for (sql, shard) in [
            (
                "SELECT a + 1 AS x, a + 1 AS x, count(*) FROM t GROUP BY x",
                "SELECT a + 1 AS x, a + 1 AS x, count(*) FROM t GROUP BY 1",
            ),
            (
                "SELECT a + 1 AS x, b + 1 AS x, count(*) FROM t GROUP BY x",
                "SELECT a + 1 AS x, b + 1 AS x, count(*) FROM t GROUP BY x",
            ),
        ] {
            let p = plan_sql(sql).unwrap();
            let chosen = p
                .group_names
                .as_ref()
                .unwrap()
                .choose(&|_| Some(none.as_slice()))
                .unwrap();
            assert_eq!(chosen.shard_sql.with_placeholders(), shard, "{sql}");
        }
        // Known from the statement: no question.
        let p =
            plan_sql("SELECT s.g AS grp, count(*) FROM (SELECT g FROM t) s GROUP BY grp").unwrap();
        assert!(p.group_names.is_none());
        assert!(
            matches!(&p.kind, PlanKind::Groups { keys: Some(k), .. } if k == &[ColRef::Output(0)])
        );
        assert_eq!(p.hidden, 0);
        // An output alias of the shard key is no key: the merge groups (exactly) by it.
        let p = plan_sql(
            "SELECT s.user_id AS uid, count(*) FROM (SELECT user_id FROM users) s GROUP BY uid",
        )
        .unwrap();
        assert!(
            matches!(&p.kind, PlanKind::Groups { keys: Some(k), .. } if k == &[ColRef::Output(0)])
        );
        // A name that is a plain output column of that name asks nothing.
        assert!(plan_sql("SELECT g, count(*) FROM t GROUP BY g")
            .unwrap()
            .group_names
            .is_none());
        let e = plan_sql("SELECT f AS grp, count(*) FROM t, generate_series(1, 2) f GROUP BY grp")
            .unwrap_err();
        assert!(e.contains("a function in FROM"), "{e}");
    }
}
