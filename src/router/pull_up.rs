//! Keyless reads of one sharded table that the merge cannot reproduce: window functions,
//! DISTINCT ON, `string_agg`/`array_agg`/`json_agg`, `bool_and`, `stddev`, ordered-set
//! aggregates, … pgshard reads the table's rows that match the WHERE clause first (from every
//! shard, concatenated), then runs the statement itself on one shard over those rows, written
//! in place of the table as `unnest('{…}'::type[], …) AS t(columns)`: every function, frame,
//! ordering and rounding is Postgres's own. The rows pass through the proxy, so this is for
//! reads whose matching rows fit its run-first limit. Pure: text in, texts out.

use std::collections::BTreeSet;

use pg_query::protobuf as pb;
use pg_query::{NodeEnum, NodeRef};

use super::cte::rows_as_unnest_of;
use super::set_op_branches::{deparse as branch_deparse, whole_reads_nothing};
use super::subquery_first::SpliceError;
use crate::sql_text::deparse;

/// A read whose merge over several shards is impossible (a construct the merge cannot
/// reproduce): the statements a pull-up is for, when they reach several shards.
pub fn unmergeable(f: &super::StatementFacts) -> bool {
    let merge_refused =
        matches!(f.merge, Some(Err(_))) || (f.needs_merge.is_some() && f.merge.is_none());
    merge_refused && f.refuse.is_none() && !f.is_write && f.hint.is_none()
}

/// The pull-up of a refused read of one table inside derived tables (a window function
/// filtered outside it, refused as a subquery over a sharded table): over the table's rows
/// read first the statement runs as it is.
/// Only when the innermost query, the one reading the table, cannot be merged over several
/// shards (`unmergeable` says so of its text): otherwise the derived tables run first, which
/// reads fewer rows (`SELECT count(*) FROM (SELECT 1 FROM t LIMIT 7) c` reads 7 per shard).
pub fn through_derived(
    f: &super::StatementFacts,
    sql: &str,
    unmergeable: &dyn Fn(&str) -> bool,
) -> Option<PullUp> {
    if f.refuse.is_none() || !f.sharded || f.is_write {
        return None;
    }
    find(sql).filter(|p| p.innermost.as_deref().is_some_and(unmergeable))
}

/// The name the statement's table takes in the rewritten text, until the rows replace it.
pub(super) const PLACEHOLDER: &str = "pgshard_pulled_rows";

/// A statement to run over rows read first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullUp {
    /// What runs first: `SELECT * FROM table [alias] WHERE …` (the statement's `$n` kept).
    pub inner: String,
    /// The statement with its table replaced by [`PLACEHOLDER`] and its WHERE gone (the rows
    /// read first already match it).
    outer: String,
    /// The name the rows take: the table's alias, or its name.
    name: String,
    /// The columns the statement reads (by name), when it does not read whole rows: the
    /// others are left out of the rows written back (they may be of a type pgshard cannot
    /// write back, and need not be).
    columns: Option<BTreeSet<String>>,
    /// The query reading the table when it is inside derived tables, not the statement's own.
    innermost: Option<String>,
}

/// The pull-up of `sql`, when it is one SELECT (no set operation, WITH, locking clause or
/// INTO) whose only relation, anywhere in it, is one table in FROM without column aliases —
/// its own FROM, or that of the innermost of derived tables nested one in another's FROM
/// (Django's filter on a window function: `SELECT … FROM (SELECT * FROM (SELECT …, rank()
/// OVER (…) AS qual0 FROM t) qualify WHERE qual0 = 1) qualify_mask`), whose WHERE is then
/// the one read first; or a `COPY (query) TO …` (see [`super::derived::copy_query`]).
pub fn find(sql: &str) -> Option<PullUp> {
    if let Some(copy) = super::derived::copy_query(sql) {
        return Some(copy);
    }
    let mut parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let parsed_version = parsed.version;
    let [raw] = parsed.stmts.as_mut_slice() else {
        return None;
    };
    let stmt = raw.stmt.as_deref_mut()?;
    let relations = stmt
        .node
        .as_ref()?
        .nodes()
        .iter()
        .filter(|(x, ..)| matches!(x, NodeRef::RangeVar(_)))
        .count();
    let Some(NodeEnum::SelectStmt(top)) = stmt.node.as_mut() else {
        return None;
    };
    if relations != 1 || top.into_clause.is_some() {
        return None;
    }
    let through_derived = from_derived(top);
    let select = innermost(top)?;
    let innermost = if through_derived {
        Some(branch_deparse(parsed_version, select.clone())?)
    } else {
        None
    };
    let [from] = select.from_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::RangeVar(table)) = from.node.as_ref() else {
        return None;
    };
    if !table.inh || table.alias.as_ref().is_some_and(|a| !a.colnames.is_empty()) {
        return None;
    }
    let table = table.clone();
    let name = table
        .alias
        .as_ref()
        .map_or_else(|| table.relname.clone(), |a| a.aliasname.clone());
    let where_clause = select.where_clause.take();
    let inner = pb::SelectStmt {
        target_list: vec![star()],
        from_clause: vec![pb::Node {
            node: Some(NodeEnum::RangeVar(table.clone())),
        }],
        where_clause,
        limit_option: pb::LimitOption::Default as i32,
        op: pb::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    select.from_clause = vec![placeholder()];
    let columns = read_columns(
        super::analyze::Walk::new([NodeRef::SelectStmt(select)]),
        &[&name, &table.relname],
    );
    let version = parsed.version;
    let outer = deparse(parsed)?;
    let inner = branch_deparse(version, inner)?;
    // The placeholder must be found exactly once in the text it is replaced in.
    (outer.matches(PLACEHOLDER).count() == 1).then_some(PullUp {
        inner,
        outer,
        name,
        columns,
        innermost,
    })
}

/// The query of `s` whose FROM is the table: `s` itself, or the query of the derived table
/// (not LATERAL) that is the whole FROM of `s`, and so on down. Each level is one plain SELECT:
/// no set operation, WITH or locking clause.
fn innermost(s: &mut pb::SelectStmt) -> Option<&mut pb::SelectStmt> {
    let plain = s.op == pb::SetOperation::SetopNone as i32
        && s.with_clause.is_none()
        && s.locking_clause.is_empty();
    if !plain {
        return None;
    }
    if !from_derived(s) {
        return Some(s);
    }
    let Some(NodeEnum::RangeSubselect(r)) = s.from_clause.first_mut()?.node.as_mut() else {
        return None;
    };
    match r.subquery.as_deref_mut()?.node.as_mut()? {
        NodeEnum::SelectStmt(q) => innermost(q),
        _ => None,
    }
}

/// Whether the whole FROM of `s` is one derived table, not LATERAL.
fn from_derived(s: &pb::SelectStmt) -> bool {
    match s.from_clause.as_slice() {
        [pb::Node {
            node: Some(NodeEnum::RangeSubselect(r)),
        }] => !r.lateral,
        _ => false,
    }
}

/// The names of the columns a statement (`nodes`: every node of it, without the part whose
/// rows are written back) may read of those rows: the last name of each column reference.
/// `None` when it may read whole rows: a `*`, or a reference ending in one of `row_names` (the
/// rows' name: `row_to_json(u)`).
pub(super) fn read_columns<'a>(
    nodes: impl Iterator<Item = NodeRef<'a>>,
    row_names: &[&str],
) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for n in nodes {
        let NodeRef::ColumnRef(c) = n else {
            continue;
        };
        let last = match c.fields.last()?.node.as_ref()? {
            NodeEnum::String(s) => s.sval.as_str(),
            _ => return None,
        };
        if row_names.contains(&last) {
            return None;
        }
        out.insert(last.to_string());
    }
    Some(out)
}

/// The first branch of `sql`'s UNION, INTERSECT or EXCEPT that reads sharded tables
/// (`reads_sharded` says which texts do): that branch runs first (keyed, or merged over every
/// shard) and its rows take its place, `SELECT * FROM unnest(…) AS pgshard_branch(columns)`;
/// once no branch reads a sharded table, the whole set operation runs on one shard, as Postgres
/// runs it. `None` when `sql` is no such set operation, or its ORDER BY or LIMIT reads more
/// than output columns and constants.
pub fn set_operation_branch(sql: &str, reads_sharded: impl Fn(&str) -> bool) -> Option<PullUp> {
    let mut parsed = pg_query::parse(sql, 0).ok()?.protobuf;
    let version = parsed.version;
    let [raw] = parsed.stmts.as_mut_slice() else {
        return None;
    };
    let Some(NodeEnum::SelectStmt(top)) = raw.stmt.as_deref_mut()?.node.as_mut() else {
        return None;
    };
    if top.op == pb::SetOperation::SetopNone as i32 || !whole_reads_nothing(top) {
        return None;
    }
    let with = top.with_clause.clone();
    let reads = |leaf: &pb::SelectStmt| {
        let mut alone = leaf.clone();
        if alone.with_clause.is_none() {
            alone.with_clause = with.clone();
        }
        branch_deparse(version, alone).filter(|text| reads_sharded(text))
    };
    let inner = take_branch(top, &reads)?;
    let outer = deparse(parsed)?;
    (outer.matches(PLACEHOLDER).count() == 1).then(|| PullUp {
        inner,
        outer,
        name: "pgshard_branch".into(),
        // A set operation matches its branches' columns by position: all of them.
        columns: None,
        innermost: None,
    })
}

/// Replaces the first leaf of the set operation `s` for which `reads` gives its text by
/// `SELECT * FROM` [`PLACEHOLDER`], returning that text.
fn take_branch(
    s: &mut pb::SelectStmt,
    reads: &dyn Fn(&pb::SelectStmt) -> Option<String>,
) -> Option<String> {
    if s.op == pb::SetOperation::SetopNone as i32 {
        let text = reads(s)?;
        *s = pb::SelectStmt {
            target_list: vec![star()],
            from_clause: vec![placeholder()],
            limit_option: pb::LimitOption::Default as i32,
            op: pb::SetOperation::SetopNone as i32,
            ..Default::default()
        };
        return Some(text);
    }
    for arm in [&mut s.larg, &mut s.rarg].into_iter().flatten() {
        if let Some(text) = take_branch(arm, reads) {
            return Some(text);
        }
    }
    None
}

fn placeholder() -> pb::Node {
    pb::Node {
        node: Some(NodeEnum::RangeVar(pb::RangeVar {
            relname: PLACEHOLDER.into(),
            inh: true,
            relpersistence: "p".into(),
            location: -1,
            ..Default::default()
        })),
    }
}

fn star() -> pb::Node {
    pb::Node {
        node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
            val: Some(Box::new(pb::Node {
                node: Some(NodeEnum::ColumnRef(pb::ColumnRef {
                    fields: vec![pb::Node {
                        node: Some(NodeEnum::AStar(pb::AStar {})),
                    }],
                    location: -1,
                })),
            })),
            location: -1,
            ..Default::default()
        }))),
    }
}

impl PullUp {
    /// Rows to read first by running `inner`, written into `outer` in place of its one
    /// [`PLACEHOLDER`] as a FROM item named `name`, with only `columns` (all: `None`).
    pub(super) fn replacing(
        inner: String,
        outer: String,
        name: &str,
        columns: Option<BTreeSet<String>>,
    ) -> PullUp {
        PullUp {
            inner,
            outer,
            name: name.to_string(),
            columns,
            innermost: None,
        }
    }

    /// The statement over the rows read first (`description`: their RowDescription body;
    /// `rows`: their DataRow bodies, text format), to run on any one shard.
    pub fn splice<B: AsRef<[u8]>>(
        &self,
        description: &[u8],
        rows: &[B],
    ) -> Result<String, SpliceError> {
        let keep = |column: &str| self.columns.as_ref().is_none_or(|c| c.contains(column));
        let from = rows_as_unnest_of(&self.name, description, rows, &keep)?;
        Ok(self.outer.replacen(PLACEHOLDER, &from, 1))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A RowDescription body of text columns (name, type OID).
    pub(crate) fn desc(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, oid) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&[0; 6]);
            b.extend_from_slice(&oid.to_be_bytes());
            b.extend_from_slice(&[0, 8, 255, 255, 255, 255, 0, 0]);
        }
        b
    }

    /// A DataRow body of text values (`None`: NULL).
    pub(crate) fn row(vals: &[Option<&str>]) -> Vec<u8> {
        let mut b = (vals.len() as i16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn one_table_reads_are_pulled_up_with_their_where() {
        let p = find("SELECT user_id, rank() OVER (ORDER BY name) FROM users u WHERE u.user_id > $1 ORDER BY 2").unwrap();
        assert_eq!(p.inner, "SELECT * FROM users u WHERE u.user_id > $1");
        let got = p
            .splice(
                &desc(&[("user_id", 20), ("name", 25)]),
                &[row(&[Some("1"), Some("a")]), row(&[Some("2"), None])],
            )
            .unwrap();
        assert_eq!(
            got,
            "SELECT user_id, rank() OVER (ORDER BY name) FROM unnest(E'{1,2}'::int8[], E'{a,NULL}'::text[]) AS u(user_id, name) ORDER BY 2"
        );
        let p = find(
            "select distinct on (note) note, string_agg(x, ',') from public.orders group by note",
        )
        .unwrap();
        assert_eq!(p.inner, "SELECT * FROM public.orders");
        assert_eq!(p.name, "orders");
    }

    #[test]
    fn a_table_inside_derived_tables_is_pulled_up_with_the_innermost_where() {
        let sql = "SELECT c FROM (SELECT * FROM (SELECT c, rank() OVER (ORDER BY a) AS r FROM t WHERE a > $1) q WHERE r = 1) m";
        let p = find(sql).unwrap();
        assert_eq!(p.inner, "SELECT * FROM t WHERE a > $1");
        assert_eq!(
            p.innermost.as_deref(),
            Some("SELECT c, rank() OVER (ORDER BY a) AS r FROM t WHERE a > $1")
        );
        assert_eq!(
            p.splice(&desc(&[("a", 20), ("c", 25)]), &[row(&[Some("5"), Some("x")])])
                .unwrap(),
            "SELECT c FROM (SELECT * FROM (SELECT c, rank() OVER (ORDER BY a) AS r FROM unnest(E'{5}'::int8[], E'{x}'::text[]) AS t(a, c)) q WHERE r = 1) m"
        );
        // Refused only as a subquery: pulled up when the innermost query cannot be merged,
        // not when it can (its derived table then runs first, reading fewer rows).
        let refused = crate::router::StatementFacts {
            refuse: Some(crate::router::facts::Refused::SubqueryOverSharded { table: "t".into() }),
            sharded: true,
            ..crate::router::StatementFacts::plain(crate::router::StatementKind::Select)
        };
        assert!(through_derived(&refused, sql, &|text| text.contains("rank()")).is_some());
        assert!(through_derived(&refused, sql, &|_| false).is_none());
        let limited = "SELECT count(*) FROM (SELECT 1 FROM t LIMIT 7) c";
        assert!(through_derived(&refused, limited, &|_| false).is_none());
        // Not through derived tables, a LATERAL one, or with a second relation.
        for sql in [
            "SELECT rank() OVER (ORDER BY a) FROM t",
            "SELECT * FROM LATERAL (SELECT a FROM t) x",
            "SELECT * FROM (SELECT a FROM t) x WHERE a IN (SELECT b FROM u)",
        ] {
            assert!(find(sql).is_none_or(|p| p.innermost.is_none()), "{sql}");
        }
    }

    /// Only the columns the statement reads are written back (the WHERE already ran), so a
    /// column of a type pgshard cannot write back (here `point`, OID 600) is no obstacle unless
    /// read; arrays come back as the text of each array, cast.
    #[test]
    fn only_the_columns_read_are_written_back() {
        let description = desc(&[("id", 20), ("g", 23), ("ip", 600), ("arr", 1007), ("t", 25)]);
        let rows = [row(&[
            Some("1"),
            Some("2"),
            Some("(1,2)"),
            Some("{1,2}"),
            Some("a"),
        ])];
        let p = find(
            "SELECT g, string_agg(t, ',' ORDER BY id) FILTER (WHERE g > 0) FROM agg WHERE ip <-> point '(0,0)' < 5 GROUP BY g",
        )
        .unwrap();
        assert_eq!(
            p.splice(&description, &rows).unwrap(),
            "SELECT g, string_agg(t, ',' ORDER BY id) FILTER (WHERE g > 0) FROM unnest(E'{1}'::int8[], E'{2}'::int4[], E'{a}'::text[]) AS agg(id, g, t) GROUP BY g"
        );
        let p = find("SELECT DISTINCT ON (g) g, a.arr FROM agg a ORDER BY g, id").unwrap();
        assert_eq!(
            p.splice(&description, &rows).unwrap(),
            "SELECT DISTINCT ON (g) g, a.arr FROM (SELECT c1 AS id, c2 AS g, c3::int4[] AS arr FROM unnest(E'{1}'::int8[], E'{2}'::int4[], E'{\"{1,2}\"}'::text[]) AS a(c1, c2, c3)) AS a ORDER BY g, id"
        );
        // No column read: one is kept, so the rows are still counted.
        let p = find("SELECT string_agg('x', ',') FROM agg").unwrap();
        assert!(p
            .splice(&description, &rows)
            .unwrap()
            .contains("unnest(E'{1}'::int8[]) AS agg(id)"));
        // Whole rows: every column, and the one pgshard cannot write back is refused.
        for sql in [
            "SELECT *, rank() OVER (ORDER BY id) FROM agg",
            "SELECT DISTINCT ON (g) row_to_json(a) FROM agg a ORDER BY g",
            "SELECT string_agg(agg::text, ',') FROM agg",
            "SELECT a.*, rank() OVER (ORDER BY id) FROM agg a",
            "SELECT DISTINCT ON (g) g, ip FROM agg ORDER BY g",
        ] {
            let p = find(sql).unwrap();
            assert_eq!(
                p.splice(&description, &rows),
                Err(SpliceError::Type(600)),
                "{sql}"
            );
        }
    }

    #[test]
    fn set_operation_branches_over_sharded_tables_run_first_one_at_a_time() {
        let sharded = |t: &str| t.contains("users") || t.contains("orders");
        let sql = "SELECT user_id FROM users WHERE name = $1 UNION ALL SELECT 7 UNION SELECT user_id FROM orders ORDER BY 1 LIMIT 3";
        let p = set_operation_branch(sql, sharded).unwrap();
        assert_eq!(p.inner, "SELECT user_id FROM users WHERE name = $1");
        let once = p
            .splice(&desc(&[("user_id", 20)]), &[row(&[Some("4")])])
            .unwrap();
        assert_eq!(
            once,
            "(SELECT * FROM unnest(E'{4}'::int8[]) AS pgshard_branch(user_id) UNION ALL SELECT 7) UNION SELECT user_id FROM orders ORDER BY 1 LIMIT 3"
        );
        let p = set_operation_branch(&once, sharded).unwrap();
        assert_eq!(p.inner, "SELECT user_id FROM orders");
        let twice = p
            .splice(&desc(&[("user_id", 20)]), &[] as &[Vec<u8>])
            .unwrap();
        assert_eq!(set_operation_branch(&twice, sharded), None);
        for sql in [
            "SELECT user_id FROM users",
            "SELECT a FROM users UNION SELECT b FROM orders ORDER BY lower(a)",
            "SELECT 1 UNION SELECT 2",
        ] {
            assert_eq!(set_operation_branch(sql, sharded), None, "{sql}");
        }
    }

    #[test]
    fn other_shapes_are_not_pulled_up() {
        for sql in [
            "SELECT * FROM users u JOIN orders o ON o.user_id = u.user_id",
            "SELECT * FROM users WHERE user_id IN (SELECT user_id FROM orders)",
            "SELECT (SELECT count(*) FROM orders), name FROM users",
            "SELECT * FROM users u(a, b)",
            "SELECT * FROM ONLY users",
            "SELECT * FROM users FOR UPDATE",
            "WITH x AS (SELECT 1) SELECT * FROM users",
            "SELECT 1 UNION SELECT user_id FROM users",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT 1",
            "UPDATE users SET name = 'x'",
        ] {
            assert_eq!(find(sql), None, "{sql}");
        }
    }
}
