//! Uncorrelated subqueries that run first: `expr IN (SELECT col FROM …)`, `expr NOT IN (…)`,
//! `expr op ANY|ALL (…)` as a condition of WHERE, and scalar subqueries `(SELECT col …)` and
//! `EXISTS (SELECT …)` anywhere in a SELECT, UPDATE or DELETE, when the subquery names no relation of the queries
//! around it. Such a subquery means the same whatever row of the outer query asks, so pgshard
//! runs it on its own (keyed or scattered, merged) and writes its result into the outer text:
//! a typed array for `IN`/`ANY`/`ALL`, a typed constant for a scalar subquery, `true` or `false`
//! for EXISTS (whose subquery runs with `LIMIT 1` when it has no limit of its own). The outer
//! statement then routes by key as usual. Pure: parse tree and byte offsets in, text out.

use pg_query::protobuf::{self as pb, Token};
use pg_query::{NodeEnum, NodeRef};
use std::collections::BTreeSet;

use crate::router::cte;
use crate::router::StatementFacts;
use crate::sql_text::{quote_escaped_literal, quote_ident};

/// What pgshard runs before a statement refused for reading sharded tables in a subquery or a
/// CTE: the subquery or CTE, whose result it then writes into the statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFirst {
    Subquery(First),
    Cte(cte::CteFirst),
    /// The rows of the statement's one table, for a read the merge cannot reproduce.
    PullUp(crate::router::pull_up::PullUp),
    /// The rows an UPDATE setting the shard key to one value would move (see `key_update`).
    KeyGuard(crate::router::key_update::KeyGuard),
}

impl RunFirst {
    /// The text to run on its own.
    pub fn inner(&self) -> &str {
        match self {
            RunFirst::Subquery(f) => &f.inner,
            RunFirst::Cte(c) => &c.inner,
            RunFirst::PullUp(p) => &p.inner,
            RunFirst::KeyGuard(g) => &g.inner,
        }
    }

    /// `outer` with the result (RowDescription body, DataRow bodies in text format) in place.
    pub fn splice<B: AsRef<[u8]>>(
        &self,
        outer: &str,
        description: &[u8],
        rows: &[B],
    ) -> Result<String, SpliceError> {
        match self {
            RunFirst::Subquery(f) => f.splice(outer, description, rows),
            RunFirst::Cte(c) => c.splice(outer, description, rows),
            RunFirst::PullUp(p) => p.splice(description, rows),
            RunFirst::KeyGuard(g) => {
                let count = match rows {
                    [row] => match cte::values(row.as_ref()).as_deref() {
                        Some([Some(v)]) => std::str::from_utf8(v)
                            .map_err(|_| SpliceError::Malformed)?
                            .to_string(),
                        _ => return Err(SpliceError::Malformed),
                    },
                    _ => return Err(SpliceError::Malformed),
                };
                g.splice(&count).map_err(SpliceError::KeyMoves)
            }
        }
    }
}

/// The next thing to run first for `sql`: its first CTE over sharded tables (`reads_sharded`
/// says which texts read one), else its innermost uncorrelated subquery; `params`: `$n` may
/// appear (a prepared statement's, bound when it runs). `Err` is a refusal's message (a
/// recursive or data-modifying CTE over sharded tables).
pub fn next(
    sql: &str,
    params: bool,
    reads_sharded: impl Fn(&str) -> bool,
) -> Result<Option<RunFirst>, String> {
    if let Some(rows) = crate::router::insert_select::find(sql) {
        return Ok(Some(RunFirst::Cte(rows)));
    }
    match cte::find(sql, &reads_sharded) {
        cte::Found::Run(c) => Ok(Some(RunFirst::Cte(c))),
        cte::Found::Refuse(message) => Err(message),
        cte::Found::Nothing => {
            if let Some(branch) = crate::router::pull_up::set_operation_branch(sql, &reads_sharded)
            {
                return Ok(Some(RunFirst::PullUp(branch)));
            }
            if let Some(derived) = crate::router::derived::find(sql, &reads_sharded) {
                return Ok(Some(RunFirst::PullUp(derived)));
            }
            if let Some(matched) =
                crate::router::tables_first::outer_join_matched(sql, &reads_sharded)
            {
                return Ok(Some(RunFirst::PullUp(matched)));
            }
            if let Some(joined) =
                crate::router::tables_first::not_colocated_join(sql, &reads_sharded)
            {
                return Ok(Some(RunFirst::PullUp(joined)));
            }
            if let Some(first) = find_in(sql, params) {
                return Ok(Some(RunFirst::Subquery(first)));
            }
            Ok(
                crate::router::tables_first::correlated_subquery_table(sql, &reads_sharded)
                    .map(RunFirst::PullUp),
            )
        }
    }
}

/// Whether the statement's refusal is one running a subquery first can lift: a subquery over
/// a sharded table, or a join with an unsharded table (a subquery over one).
pub fn liftable(facts: &[StatementFacts]) -> bool {
    match facts {
        [f] => f
            .refuse
            .as_ref()
            .is_some_and(crate::router::facts::Refused::liftable_by_running_subqueries_first),
        _ => false,
    }
}

/// One subquery to run first, and where its result goes in the outer text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct First {
    /// The subquery's own text (without its parentheses), to run on its own.
    pub inner: String,
    /// Byte range of the outer text its result replaces.
    start: usize,
    end: usize,
    use_: Use,
}

/// How the result replaces the subquery.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Use {
    /// `op ANY (array)` or `op ALL (array)` replaces `IN (…)`, `NOT IN (…)`, `op ANY|ALL (…)`.
    Array { op: String, all: bool },
    /// A parenthesised constant replaces `(SELECT …)`; `alias`: it is a whole item of a select
    /// list without a name, which Postgres names after the subquery's column, so the constant
    /// gets that name.
    Scalar { alias: bool },
    /// `true` or `false` replaces `EXISTS (…)`; `alias`: a whole unnamed select-list item,
    /// which Postgres names `exists`.
    Exists { alias: bool },
}

/// Why the result of a subquery run first cannot be written into the outer statement; each is
/// what Postgres itself says, or a refusal naming what is missing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpliceError {
    #[error("subquery must return only one column")]
    Columns,
    #[error("more than one row returned by a subquery used as an expression")]
    MoreThanOneRow,
    #[error("pgshard runs part of this statement first (a subquery, CTE or SELECT over sharded tables, or the rows of a read it cannot merge) and writes its rows back in, which it cannot do for values of type OID {0}; cast the column to a built-in type (integers, numeric, float, bool, text, name, \"char\", bytea, json, jsonb, uuid, date, time, timetz, timestamp, timestamptz, interval, inet, cidr, macaddr, or an array of one)")]
    Type(u32),
    #[error("pgshard runs this IN/ANY/ALL subquery over sharded tables first and writes its values back as one array, which it cannot do for values that are arrays themselves (type OID {0}); compare with a scalar subquery or an EXISTS instead")]
    ArrayOfArrays(u32),
    #[error("a CTE over sharded tables is run first by pgshard, which does not support CTEs without columns")]
    NoColumns,
    #[error("malformed answer from a shard")]
    Malformed,
    #[error("{0}")]
    KeyMoves(crate::router::key_update::KeyMoves),
}

impl SpliceError {
    /// The SQLSTATE Postgres gives (0A000 for what pgshard refuses).
    pub fn code(&self) -> &'static str {
        match self {
            SpliceError::Columns => "42601",
            SpliceError::MoreThanOneRow => "21000",
            SpliceError::Type(_)
            | SpliceError::ArrayOfArrays(_)
            | SpliceError::NoColumns
            | SpliceError::KeyMoves(_) => "0A000",
            SpliceError::Malformed => "XX000",
        }
    }
}

/// The first subquery of `sql` to run on its own: one containing no other such subquery, so
/// nested ones run innermost first. `None` when `sql` is not one SELECT/UPDATE/DELETE, or has
/// none (correlated subqueries, row comparisons and `ARRAY(…)` are left as they are).
pub fn find(sql: &str) -> Option<First> {
    find_in(sql, false)
}

/// `find`; with `params`, the subqueries may use a prepared statement's `$n`, which the caller
/// binds when it runs them (their values do not depend on an outer row).
fn find_in(sql: &str, params: bool) -> Option<First> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let stmt = raw.stmt.as_ref()?.node.as_ref()?;
    let with = match stmt {
        NodeEnum::SelectStmt(s) => s.with_clause.as_ref(),
        NodeEnum::UpdateStmt(s) => s.with_clause.as_ref(),
        NodeEnum::DeleteStmt(s) => s.with_clause.as_ref(),
        _ => return None,
    };
    // The statement's CTEs: a subquery naming one cannot run on its own.
    let ctes = cte_names(with);
    let scan = pg_query::scan(sql).ok()?;
    let nodes = stmt.nodes();
    // Subqueries that are a whole unnamed item of a select list, by location.
    let named_after: BTreeSet<i32> = nodes
        .iter()
        .filter_map(|(n, _, _, _)| match n {
            NodeRef::ResTarget(t) if t.name.is_empty() => match t.val.as_deref()?.node.as_ref()? {
                NodeEnum::SubLink(link) => Some(link.location),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut found: Vec<First> = Vec::new();
    for (n, _, _, _) in nodes {
        // Conditions of every WHERE (the statement's and its subqueries').
        let where_clause = match n {
            NodeRef::SelectStmt(s) => s.where_clause.as_deref(),
            NodeRef::UpdateStmt(s) => s.where_clause.as_deref(),
            NodeRef::DeleteStmt(s) => s.where_clause.as_deref(),
            NodeRef::SubLink(link) => {
                let alias = named_after.contains(&link.location);
                let use_ = if link.sub_link_type == pb::SubLinkType::ExprSublink as i32 {
                    Some(Use::Scalar { alias })
                } else if link.sub_link_type == pb::SubLinkType::ExistsSublink as i32 {
                    Some(Use::Exists { alias })
                } else {
                    None
                };
                if let Some(f) = use_.and_then(|u| scalar(sql, &scan.tokens, link, params, u)) {
                    found.push(f);
                }
                None
            }
            _ => None,
        };
        if let Some(w) = where_clause {
            conditions(sql, &scan.tokens, w, params, &mut found);
        }
    }
    if !ctes.is_empty() {
        found.retain(|f| !names_any(&f.inner, &ctes));
    }
    let contains = |a: &First, b: &First| a != b && a.start <= b.start && b.end <= a.end;
    found
        .iter()
        .find(|f| !found.iter().any(|g| contains(f, g)))
        .cloned()
}

/// The names of the CTEs a WITH clause defines.
pub(crate) fn cte_names(with: Option<&pb::WithClause>) -> BTreeSet<String> {
    with.iter()
        .flat_map(|w| &w.ctes)
        .filter_map(|c| match c.node.as_ref() {
            Some(NodeEnum::CommonTableExpr(c)) => Some(c.ctename.clone()),
            _ => None,
        })
        .collect()
}

/// Whether `sql` (or what does not parse) reads a relation named as one of `names`, unqualified.
fn names_any(sql: &str, names: &BTreeSet<String>) -> bool {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return true;
    };
    parsed.protobuf.nodes().iter().any(|(n, _, _, _)| {
        matches!(n, NodeRef::RangeVar(rv) if rv.schemaname.is_empty() && names.contains(&rv.relname))
    })
}

/// The `IN`/`ANY`/`ALL` subqueries that are a whole operand of WHERE's AND/OR/NOT: there the
/// array comparison that replaces them groups exactly as they did.
fn conditions(
    sql: &str,
    tokens: &[pb::ScanToken],
    n: &pb::Node,
    params: bool,
    out: &mut Vec<First>,
) {
    match n.node.as_ref() {
        Some(NodeEnum::BoolExpr(b)) => {
            for a in &b.args {
                conditions(sql, tokens, a, params, out);
            }
        }
        Some(NodeEnum::SubLink(link)) => {
            if let Some(f) = quantified(sql, tokens, link, params) {
                out.push(f);
            }
        }
        _ => {}
    }
}

fn quantified(
    sql: &str,
    tokens: &[pb::ScanToken],
    link: &pb::SubLink,
    params: bool,
) -> Option<First> {
    let all = if link.sub_link_type == pb::SubLinkType::AnySublink as i32 {
        false
    } else if link.sub_link_type == pb::SubLinkType::AllSublink as i32 {
        true
    } else {
        return None;
    };
    // `(a, b) IN (SELECT a, b …)` compares rows.
    if let Some(NodeEnum::RowExpr(_)) = link.testexpr.as_deref().and_then(|t| t.node.as_ref()) {
        return None;
    }
    let at = usize::try_from(link.location).ok()?;
    let (op, all) = match link.oper_name.as_slice() {
        // IN, or NOT IN (whose SubLink starts at its NOT): NOT (x = ANY) is x <> ALL.
        [] => {
            let not = sql.get(at..at + 3)?.eq_ignore_ascii_case("not");
            (if not { "<>" } else { "=" }.to_string(), not)
        }
        [name] => match name.node.as_ref()? {
            NodeEnum::String(s) if !s.sval.is_empty() => (s.sval.clone(), all),
            _ => return None,
        },
        _ => return None,
    };
    let (inner, end) = subselect(sql, tokens, link, at, params)?;
    Some(First {
        inner,
        start: at,
        end,
        use_: Use::Array { op, all },
    })
}

/// A scalar subquery (`(SELECT …)`, replaced by its value) or an `EXISTS (SELECT …)` (replaced
/// by true or false), when it is uncorrelated.
fn scalar(
    sql: &str,
    tokens: &[pb::ScanToken],
    link: &pb::SubLink,
    params: bool,
    use_: Use,
) -> Option<First> {
    let at = usize::try_from(link.location).ok()?;
    let exists = matches!(use_, Use::Exists { .. });
    if exists && !sql.get(at..at + 6)?.eq_ignore_ascii_case("exists") {
        return None;
    }
    let (mut inner, end) = subselect(sql, tokens, link, at, params)?;
    // One row answers EXISTS: the rest need not be read, unless the subquery limits itself.
    if let (true, Some(NodeEnum::SelectStmt(s))) =
        (exists, link.subselect.as_deref()?.node.as_ref())
    {
        if s.limit_count.is_none() && s.limit_offset.is_none() && s.locking_clause.is_empty() {
            inner.push_str(" LIMIT 1");
        }
    }
    Some(First {
        inner,
        start: at,
        end,
        use_,
    })
}

/// The subquery's text and the end of its closing parenthesis, when it is uncorrelated.
fn subselect(
    sql: &str,
    tokens: &[pb::ScanToken],
    link: &pb::SubLink,
    at: usize,
    params: bool,
) -> Option<(String, usize)> {
    let select = link.subselect.as_deref()?.node.as_ref()?;
    if !matches!(select, NodeEnum::SelectStmt(_)) || !uncorrelated(select, params) {
        return None;
    }
    let open = tokens.iter().position(|t| {
        usize::try_from(t.start).is_ok_and(|s| s >= at) && t.token == Token::Ascii40 as i32
    })?;
    let mut depth = 0usize;
    for t in &tokens[open..] {
        if t.token == Token::Ascii40 as i32 {
            depth += 1;
        } else if t.token == Token::Ascii41 as i32 {
            depth -= 1;
            if depth == 0 {
                let from = usize::try_from(tokens[open].end).ok()?;
                let to = usize::try_from(t.start).ok()?;
                let end = usize::try_from(t.end).ok()?;
                let inner = sql.get(from..to)?.trim();
                // `((SELECT …))`: the inner text keeps its own parentheses, which is fine.
                return Some((inner.to_string(), end));
            }
        }
    }
    None
}

/// No column of `select` is qualified by a name its own FROM clauses (at any depth) do not
/// define, and it has no parameters unless `params` allows them: its result does not depend on
/// an outer row. (An unqualified name Postgres would resolve to an outer column makes the
/// subquery fail when it runs on its own: an error, never a different answer.)
fn uncorrelated(select: &NodeEnum, params: bool) -> bool {
    let nodes = select.nodes();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for (n, _, _, _) in &nodes {
        match n {
            NodeRef::RangeVar(rv) => {
                names.insert(rv.relname.clone());
                if let Some(a) = &rv.alias {
                    names.insert(a.aliasname.clone());
                }
            }
            NodeRef::RangeSubselect(r) => {
                if let Some(a) = &r.alias {
                    names.insert(a.aliasname.clone());
                }
            }
            NodeRef::RangeFunction(r) => {
                if let Some(a) = &r.alias {
                    names.insert(a.aliasname.clone());
                }
            }
            NodeRef::JoinExpr(j) => {
                if let Some(a) = &j.alias {
                    names.insert(a.aliasname.clone());
                }
            }
            NodeRef::CommonTableExpr(c) => {
                names.insert(c.ctename.clone());
            }
            _ => {}
        }
    }
    nodes.iter().all(|(n, _, _, _)| match n {
        NodeRef::ParamRef(_) => params,
        NodeRef::ColumnRef(c) => {
            let parts: Vec<Option<&str>> = c
                .fields
                .iter()
                .map(|f| match f.node.as_ref() {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            match parts.len() {
                0 | 1 => true,
                k => parts[k - 2].is_some_and(|q| names.contains(q)),
            }
        }
        _ => true,
    })
}

/// A type Postgres reads back exactly from its text output, by OID: the cast written into the
/// outer statement.
pub(crate) fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        16 => "bool",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        1043 => "varchar",
        1082 => "date",
        1114 => "timestamp",
        1184 => "timestamptz",
        1700 => "numeric",
        2950 => "uuid",
        17 => "bytea",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        1042 => "bpchar",
        1083 => "time",
        1186 => "interval",
        3802 => "jsonb",
        19 => "name",
        18 => "\"char\"",
        1266 => "timetz",
        869 => "inet",
        650 => "cidr",
        829 => "macaddr",
        _ => return None,
    })
}

/// The element type of an array type pgshard writes back, by OID: a built-in array of a type
/// of [`type_name`].
pub(crate) fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1009 => 25,
        1015 => 1043,
        1014 => 1042,
        1028 => 26,
        199 => 114,
        3807 => 3802,
        1021 => 700,
        1022 => 701,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1231 => 1700,
        2951 => 2950,
        1003 => 19,
        1002 => 18,
        1270 => 1266,
        1041 => 869,
        651 => 650,
        1040 => 829,
        _ => return None,
    })
}

/// The cast a value of `oid` is read back with from its text output: a type of [`type_name`]
/// (`int8`), or an array of one (`int8[]`; its text, `{1,2}` or `[0:1]={1,2}`, reads back with
/// its dimensions and bounds).
pub(crate) fn cast_name(oid: u32) -> Option<String> {
    match type_name(oid) {
        Some(name) => Some(name.to_string()),
        None => type_name(array_element(oid)?).map(|e| format!("{e}[]")),
    }
}

impl First {
    /// `outer` with this subquery replaced by its result: `description` is the RowDescription
    /// body of the subquery's merged answer, `rows` its DataRow bodies (text format).
    pub fn splice<B: AsRef<[u8]>>(
        &self,
        outer: &str,
        description_body: &[u8],
        rows: &[B],
    ) -> Result<String, SpliceError> {
        if let Use::Exists { alias } = self.use_ {
            let value = if rows.is_empty() { "false" } else { "true" };
            let replacement = match alias {
                true => format!("{value} AS {}", quote_ident("exists")),
                false => value.to_string(),
            };
            let before = outer.get(..self.start).ok_or(SpliceError::Malformed)?;
            let after = outer.get(self.end..).ok_or(SpliceError::Malformed)?;
            return Ok(format!("{before}{replacement}{after}"));
        }
        let columns = cte::columns(description_body).ok_or(SpliceError::Malformed)?;
        let [(name, oid)] = columns.as_slice() else {
            return Err(SpliceError::Columns);
        };
        let ty = cast_name(*oid).ok_or(SpliceError::Type(*oid))?;
        let values: Vec<Option<&[u8]>> = rows
            .iter()
            .map(|r| match cte::values(r.as_ref()).as_deref() {
                Some([v]) => Some(*v),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or(SpliceError::Malformed)?;
        let text = |v: &[u8]| {
            std::str::from_utf8(v)
                .map(quote_escaped_literal)
                .map_err(|_| SpliceError::Malformed)
        };
        let replacement = match &self.use_ {
            Use::Scalar { alias } => {
                let value = match values.as_slice() {
                    [] | [None] => format!("(NULL::{ty})"),
                    [Some(v)] => format!("({}::{ty})", text(v)?),
                    _ => return Err(SpliceError::MoreThanOneRow),
                };
                if *alias {
                    format!("{value} AS {}", quote_ident(name))
                } else {
                    value
                }
            }
            // Answered above, whatever its columns.
            Use::Exists { .. } => return Err(SpliceError::Malformed),
            Use::Array { op, all } => {
                // An array of arrays would be one array of more dimensions: compared element
                // by element, not as the subquery's arrays.
                if array_element(*oid).is_some() {
                    return Err(SpliceError::ArrayOfArrays(*oid));
                }
                let array = crate::router::pg_array::encode_text(&values);
                let quantifier = if *all { "ALL" } else { "ANY" };
                format!(
                    "{op} {quantifier} ({}::{ty}[])",
                    quote_escaped_literal(&array)
                )
            }
        };
        let before = outer.get(..self.start).ok_or(SpliceError::Malformed)?;
        let after = outer.get(self.end..).ok_or(SpliceError::Malformed)?;
        Ok(format!("{before}{replacement}{after}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(oid: u32) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend_from_slice(b"id\0");
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&8i16.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    fn row(v: Option<&str>) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
        }
        b
    }

    /// (outer, inner run first, its rows, outer after the splice)
    #[test]
    fn rewrites() {
        let cases: &[(&str, &str, &[Option<&str>], &str)] = &[
            (
                "SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE v > 1)",
                "SELECT id FROM u WHERE v > 1",
                &[Some("1"), Some("7")],
                "SELECT * FROM o WHERE k = ANY (E'{1,7}'::int8[])",
            ),
            (
                "select * from o where k not in (select id from u) and x = 1",
                "select id from u",
                &[Some("1"), None],
                "select * from o where k <> ALL (E'{1,NULL}'::int8[]) and x = 1",
            ),
            (
                "DELETE FROM o WHERE k = ANY (SELECT id FROM u)",
                "SELECT id FROM u",
                &[],
                "DELETE FROM o WHERE k = ANY (E'{}'::int8[])",
            ),
            (
                "UPDATE o SET v = 1 WHERE k = (SELECT max(id) FROM u) OR k < 0",
                "SELECT max(id) FROM u",
                &[Some("9")],
                "UPDATE o SET v = 1 WHERE k = (E'9'::int8) OR k < 0",
            ),
            (
                "SELECT (SELECT sum(x) FROM a) AS s",
                "SELECT sum(x) FROM a",
                &[],
                "SELECT (NULL::int8) AS s",
            ),
            // Named after the subquery's column ("id" in `desc`), as Postgres names it.
            (
                "SELECT 1, (SELECT max(id) FROM a)",
                "SELECT max(id) FROM a",
                &[Some("5")],
                "SELECT 1, (E'5'::int8) AS id",
            ),
            (
                "SELECT (SELECT max(id) FROM a) + 1",
                "SELECT max(id) FROM a",
                &[Some("5")],
                "SELECT (E'5'::int8) + 1",
            ),
            // Innermost first.
            (
                "SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE g IN (SELECT g FROM w))",
                "SELECT g FROM w",
                &[Some("a'b\\c")],
                r#"SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE g = ANY (E'{"a''b\\\\c"}'::int8[]))"#,
            ),
            // A correlated one is left; the uncorrelated one is taken.
            (
                "SELECT * FROM o WHERE EXISTS (SELECT 1 FROM u WHERE u.k = o.k) AND k IN ( SELECT u2.id FROM u u2 )",
                "SELECT u2.id FROM u u2",
                &[Some("3")],
                "SELECT * FROM o WHERE EXISTS (SELECT 1 FROM u WHERE u.k = o.k) AND k = ANY (E'{3}'::int8[])",
            ),
        ];
        for (outer, inner, rows, want) in cases {
            let f = find(outer).unwrap_or_else(|| panic!("none found in {outer}"));
            assert_eq!(f.inner, *inner, "{outer}");
            let rows: Vec<Vec<u8>> = rows.iter().map(|v| row(*v)).collect();
            assert_eq!(f.splice(outer, &desc(20), &rows).as_deref(), Ok(*want));
        }
    }

    #[test]
    fn exists_becomes_a_constant() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "SELECT EXISTS (SELECT * FROM u WHERE k = 5)",
                "SELECT * FROM u WHERE k = 5 LIMIT 1",
                1,
                "SELECT true AS \"exists\"",
            ),
            (
                "SELECT NOT exists(SELECT 1 FROM u) AS gone",
                "SELECT 1 FROM u LIMIT 1",
                0,
                "SELECT NOT false AS gone",
            ),
            (
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM u ORDER BY v LIMIT 3) AND x",
                "SELECT 1 FROM u ORDER BY v LIMIT 3",
                0,
                "SELECT 1 WHERE false AND x",
            ),
            (
                "UPDATE o SET v = 1 WHERE EXISTS (SELECT 1 FROM u UNION SELECT 2 FROM w)",
                "SELECT 1 FROM u UNION SELECT 2 FROM w LIMIT 1",
                1,
                "UPDATE o SET v = 1 WHERE true",
            ),
        ];
        for (outer, inner, rows, want) in cases {
            let f = find(outer).unwrap_or_else(|| panic!("none found in {outer}"));
            assert_eq!(f.inner, *inner, "{outer}");
            let rows: Vec<Vec<u8>> = (0..*rows).map(|_| row(Some("1"))).collect();
            assert_eq!(f.splice(outer, &desc(20), &rows).as_deref(), Ok(*want));
        }
    }

    #[test]
    fn left_alone() {
        for sql in [
            "SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE u.x = o.x)",
            "SELECT * FROM o WHERE (k, v) IN (SELECT id, v FROM u)",
            "SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE id = $1)",
            "WITH c AS (SELECT 1) SELECT * FROM o WHERE k IN (SELECT id FROM c)",
            "WITH c AS (SELECT 1) SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE v IN (SELECT * FROM c))",
            "SELECT * FROM o WHERE k IN (1, 2)",
            "INSERT INTO o SELECT * FROM u WHERE k IN (SELECT id FROM w)",
            "SELECT * FROM o WHERE (k IN (SELECT id FROM u)) = true",
            "SELECT 1; SELECT 2",
        ] {
            assert_eq!(find(sql), None, "{sql}");
        }
    }

    /// A subquery that names none of the statement's CTEs runs first like any.
    #[test]
    fn beside_ctes() {
        let sql = "WITH c AS (SELECT 1) SELECT * FROM c WHERE 1 IN (SELECT id FROM u)";
        assert_eq!(find(sql).map(|f| f.inner), Some("SELECT id FROM u".into()));
    }

    /// A prepared statement's subquery may use its parameters; a plain one may not.
    #[test]
    fn parameters() {
        let sql = "SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE name = $2) AND v > $1";
        assert_eq!(find(sql), None);
        let f = find_in(sql, true).expect("found");
        assert_eq!(f.inner, "SELECT id FROM u WHERE name = $2");
        assert_eq!(
            f.splice(sql, &desc(20), &[row(Some("4"))]).as_deref(),
            Ok("SELECT * FROM o WHERE k = ANY (E'{4}'::int8[]) AND v > $1")
        );
        let correlated = "SELECT * FROM o WHERE k IN (SELECT id FROM u WHERE u.x = o.x AND y = $1)";
        assert_eq!(find_in(correlated, true), None);
    }

    /// A scalar subquery's array comes back with its type; an `IN` list of arrays is refused
    /// (one array of arrays would compare their elements).
    #[test]
    fn arrays() {
        assert_eq!(cast_name(1009).as_deref(), Some("text[]"));
        assert_eq!(cast_name(1016).as_deref(), Some("int8[]"));
        assert_eq!(cast_name(20).as_deref(), Some("int8"));
        assert_eq!(cast_name(869).as_deref(), Some("inet"));
        assert_eq!(cast_name(1270).as_deref(), Some("timetz[]"));
        assert_eq!(cast_name(1002).as_deref(), Some("\"char\"[]"));
        assert_eq!(cast_name(600), None);
        let sql = "SELECT 1, (SELECT tags FROM u ORDER BY k LIMIT 1)";
        let f = find(sql).expect("found");
        assert_eq!(
            f.splice(sql, &desc(1009), &[row(Some("{a,\"b c\"}"))])
                .as_deref(),
            Ok("SELECT 1, (E'{a,\"b c\"}'::text[]) AS id")
        );
        let sql = "SELECT * FROM o WHERE arr IN (SELECT arr FROM u)";
        let f = find(sql).expect("found");
        assert_eq!(
            f.splice(sql, &desc(1007), &[row(Some("{1}"))]),
            Err(SpliceError::ArrayOfArrays(1007))
        );
    }

    #[test]
    fn results_postgres_refuses() {
        let f = find("SELECT * FROM o WHERE k = (SELECT id FROM u)").expect("found");
        let two = [row(Some("1")), row(Some("2"))];
        assert_eq!(
            f.splice("", &desc(20), &two),
            Err(SpliceError::MoreThanOneRow)
        );
        assert_eq!(
            f.splice("", &desc(600), &two[..1]),
            Err(SpliceError::Type(600))
        );
        let mut d = 2i16.to_be_bytes().to_vec();
        d.extend_from_slice(&desc(20)[2..]);
        d.extend_from_slice(&desc(20)[2..]);
        assert_eq!(f.splice("", &d, &two[..0]), Err(SpliceError::Columns));
    }
}
