//! The final projection of a merged aggregate query: output columns that are expressions over
//! aggregates (`coalesce(sum(x), 0)`, `sum(x) / NULLIF(count(*), 0)`, `round(avg(x), 2)`,
//! `count(DISTINCT c)`, casts) are not computed by the proxy. The shards return the plain
//! partial aggregates, the proxy merges them, and one shard then evaluates the expressions over
//! the merged values (passed as typed parameters), so every operator, cast and rounding is
//! Postgres's own. This module rewrites such an expression into the text of that final query
//! and names its column as Postgres would (pure).

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::merge_plan::{ColRef, SqlTemplate};

/// What the final query computes and from which merged columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalProjection {
    /// Output positions the final query computes, in its column order.
    pub outputs: Vec<usize>,
    /// The merged columns the final query reads, as its input columns `c0, c1, …`.
    pub inputs: Vec<ColRef>,
    /// `SELECT <expressions> ` over `pgshard_m.c<j>`, with the client's `$n` as parameters;
    /// the executor appends the FROM clause holding the merged values.
    pub select: SqlTemplate,
}

/// The alias of the merged values in the final query, `pgshard_m(c0, c1, …)`.
pub const INPUTS_ALIAS: &str = "pgshard_m";

/// Decides, for one node of an expression, whether it is replaced whole (an aggregate call
/// becomes a reference to a merged value) or the walk descends into it.
pub type Leaf<'a> = dyn FnMut(&pb::Node) -> Result<Option<pb::Node>, String> + 'a;

/// The reference to the final query's input column `j`.
pub fn input_ref(j: usize) -> pb::Node {
    let field = |s: &str| pb::Node {
        node: Some(NodeEnum::String(pb::String { sval: s.into() })),
    };
    pb::Node {
        node: Some(NodeEnum::ColumnRef(pb::ColumnRef {
            fields: vec![field(INPUTS_ALIAS), field(&format!("c{j}"))],
            location: -1,
        })),
    }
}

fn sub(b: &mut Option<Box<pb::Node>>, leaf: &mut Leaf) -> Result<(), String> {
    if let Some(n) = b.as_deref() {
        *b = Some(Box::new(rewrite(n, leaf)?));
    }
    Ok(())
}

fn each(v: &mut [pb::Node], leaf: &mut Leaf) -> Result<(), String> {
    for n in v.iter_mut() {
        *n = rewrite(n, leaf)?;
    }
    Ok(())
}

/// What a node is, for a refusal.
fn construct(n: &NodeEnum) -> String {
    match n {
        NodeEnum::SubLink(_) => "a subquery".into(),
        NodeEnum::ColumnRef(_) => "a column outside an aggregate".into(),
        // The node type's name, as pg_query spells it (`XmlExpr`, `SubLink`, …).
        other => format!("{:?}", other.to_ref())
            .split('(')
            .next()
            .unwrap_or("this construct")
            .to_string(),
    }
}

/// Rewrites an expression over aggregates: `leaf` replaces the nodes it knows (aggregate calls,
/// grouped columns); the walk descends through operators, function calls, casts, COALESCE,
/// NULLIF, GREATEST/LEAST, CASE, IS [NOT] NULL and boolean logic, and refuses anything else
/// with the construct's name.
pub fn rewrite(n: &pb::Node, leaf: &mut Leaf) -> Result<pb::Node, String> {
    if let Some(r) = leaf(n)? {
        return Ok(r);
    }
    let mut out = n.clone();
    let Some(inner) = out.node.as_mut() else {
        return Ok(out);
    };
    match inner {
        NodeEnum::AConst(_) | NodeEnum::ParamRef(_) | NodeEnum::SqlvalueFunction(_) => {}
        NodeEnum::FuncCall(f) => {
            if f.over.is_some()
                || f.agg_star
                || f.agg_distinct
                || f.agg_filter.is_some()
                || !f.agg_order.is_empty()
            {
                return Err("an aggregate pgshard cannot merge in an expression".into());
            }
            each(&mut f.args, leaf)?;
        }
        NodeEnum::AExpr(e) => {
            sub(&mut e.lexpr, leaf)?;
            sub(&mut e.rexpr, leaf)?;
        }
        NodeEnum::List(l) => each(&mut l.items, leaf)?,
        NodeEnum::TypeCast(t) => sub(&mut t.arg, leaf)?,
        NodeEnum::CoalesceExpr(c) => each(&mut c.args, leaf)?,
        NodeEnum::MinMaxExpr(m) => each(&mut m.args, leaf)?,
        NodeEnum::NullTest(t) => sub(&mut t.arg, leaf)?,
        NodeEnum::BooleanTest(t) => sub(&mut t.arg, leaf)?,
        NodeEnum::BoolExpr(b) => each(&mut b.args, leaf)?,
        NodeEnum::CaseExpr(c) => {
            sub(&mut c.arg, leaf)?;
            each(&mut c.args, leaf)?;
            sub(&mut c.defresult, leaf)?;
        }
        NodeEnum::CaseWhen(w) => {
            sub(&mut w.expr, leaf)?;
            sub(&mut w.result, leaf)?;
        }
        other => {
            return Err(format!(
                "{} in an expression over aggregates",
                construct(other)
            ))
        }
    }
    Ok(out)
}

fn last_string(v: &[pb::Node]) -> Option<String> {
    match v.last()?.node.as_ref()? {
        NodeEnum::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

/// Postgres's FigureColnameInternal: a name and its strength (2: a real name, 1: a type name
/// or "case"), `None` when Postgres says `?column?`.
fn figure(n: &pb::Node) -> Option<(String, u8)> {
    let named = |s: &str| Some((s.to_string(), 2));
    match n.node.as_ref()? {
        NodeEnum::ColumnRef(c) => last_string(&c.fields).map(|s| (s, 2)),
        NodeEnum::AIndirection(i) => match last_string(&i.indirection) {
            Some(s) => Some((s, 2)),
            None => figure(i.arg.as_deref()?),
        },
        NodeEnum::FuncCall(f) => last_string(&f.funcname).map(|s| (s, 2)),
        NodeEnum::AExpr(e) if e.kind == pb::AExprKind::AexprNullif as i32 => named("nullif"),
        NodeEnum::TypeCast(t) => match t.arg.as_deref().and_then(figure) {
            Some((s, 2)) => Some((s, 2)),
            other => match t.type_name.as_ref().and_then(|tn| last_string(&tn.names)) {
                Some(s) => Some((s, 1)),
                None => other,
            },
        },
        NodeEnum::CollateClause(c) => figure(c.arg.as_deref()?),
        NodeEnum::CaseExpr(c) => match c.defresult.as_deref().and_then(figure) {
            Some((s, 2)) => Some((s, 2)),
            _ => Some(("case".into(), 1)),
        },
        NodeEnum::AArrayExpr(_) => named("array"),
        NodeEnum::RowExpr(_) => named("row"),
        NodeEnum::CoalesceExpr(_) => named("coalesce"),
        NodeEnum::MinMaxExpr(m) if m.op == pb::MinMaxOp::IsGreatest as i32 => named("greatest"),
        NodeEnum::MinMaxExpr(_) => named("least"),
        NodeEnum::GroupingFunc(_) => named("grouping"),
        NodeEnum::SqlvalueFunction(f) => named(sql_value_name(f.op)?),
        _ => None,
    }
}

/// The column name of `CURRENT_DATE`, `CURRENT_USER`, … (by `SQLValueFunctionOp`).
fn sql_value_name(op: i32) -> Option<&'static str> {
    use pb::SqlValueFunctionOp as Op;
    Some(match Op::try_from(op).ok()? {
        Op::SvfopCurrentDate => "current_date",
        Op::SvfopCurrentTime | Op::SvfopCurrentTimeN => "current_time",
        Op::SvfopCurrentTimestamp | Op::SvfopCurrentTimestampN => "current_timestamp",
        Op::SvfopLocaltime | Op::SvfopLocaltimeN => "localtime",
        Op::SvfopLocaltimestamp | Op::SvfopLocaltimestampN => "localtimestamp",
        Op::SvfopCurrentRole => "current_role",
        Op::SvfopCurrentUser => "current_user",
        Op::SvfopUser => "user",
        Op::SvfopSessionUser => "session_user",
        Op::SvfopCurrentCatalog => "current_catalog",
        Op::SvfopCurrentSchema => "current_schema",
        Op::SqlvalueFunctionOpUndefined => return None,
    })
}

/// The name Postgres gives an output column written as `n` without an alias.
pub fn column_name(n: &pb::Node) -> String {
    figure(n).map_or_else(|| "?column?".to_string(), |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(sql: &str) -> pb::Node {
        let parsed = pg_query::parse(&format!("SELECT {sql}"), 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().unwrap();
        let Some(NodeEnum::SelectStmt(s)) = stmt.node.as_ref() else {
            panic!()
        };
        let Some(NodeEnum::ResTarget(rt)) = s.target_list[0].node.as_ref() else {
            panic!()
        };
        rt.val.as_deref().unwrap().clone()
    }

    #[test]
    fn names_follow_postgres() {
        for (sql, want) in [
            ("coalesce(sum(x), 0)", "coalesce"),
            ("sum(x) / NULLIF(count(*), 0)", "?column?"),
            ("NULLIF(count(*), 0)", "nullif"),
            ("sum(x)::int", "sum"),
            ("(sum(x) + 1)::int", "int4"),
            ("CAST(count(*) + 1 AS bigint)", "int8"),
            ("round(avg(x), 2)", "round"),
            ("max(x) - min(x)", "?column?"),
            ("CASE WHEN count(*) > 0 THEN 1 END", "case"),
            ("CASE WHEN count(*) > 0 THEN 1 ELSE max(y) END", "max"),
            ("greatest(max(a), 0)", "greatest"),
            ("least(max(a), 0)", "least"),
            ("(sum(x) + 1)::numeric(10, 2)", "numeric"),
            ("current_date", "current_date"),
            ("CURRENT_TIMESTAMP(3)", "current_timestamp"),
            ("current_user", "current_user"),
            ("'label' || 1", "?column?"),
        ] {
            assert_eq!(column_name(&expr(sql)), want, "{sql}");
        }
    }

    #[test]
    fn rewrite_replaces_leaves_and_refuses_the_rest() {
        let mut leaf = |n: &pb::Node| -> Result<Option<pb::Node>, String> {
            Ok(match n.node.as_ref() {
                Some(NodeEnum::FuncCall(f))
                    if last_string(&f.funcname).as_deref() == Some("sum") =>
                {
                    Some(input_ref(0))
                }
                _ => None,
            })
        };
        let out = rewrite(&expr("coalesce(sum(x), 0)::int + $1"), &mut leaf).unwrap();
        let sql = pg_query::NodeEnum::SelectStmt(Box::new(pb::SelectStmt {
            target_list: vec![pb::Node {
                node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
                    val: Some(Box::new(out)),
                    location: -1,
                    ..Default::default()
                }))),
            }],
            limit_option: pb::LimitOption::Default as i32,
            op: pb::SetOperation::SetopNone as i32,
            ..Default::default()
        }))
        .deparse(pg_query::DeparseOptions::default())
        .unwrap();
        assert_eq!(sql, "SELECT COALESCE(pgshard_m.c0, 0)::int + $1");
        let e = rewrite(&expr("sum(x) + (SELECT 1)"), &mut leaf).unwrap_err();
        assert!(e.contains("subquery"), "{e}");
        let e = rewrite(&expr("sum(x) + y"), &mut leaf).unwrap_err();
        assert!(e.contains("column outside an aggregate"), "{e}");
    }
}
