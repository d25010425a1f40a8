//! What a bare name in GROUP BY means. Postgres (SQL92's rule, `findTargetlistEntrySQL92`) takes
//! `GROUP BY x` as the input column `x` (a column of a FROM item of the same query level) when
//! one exists, and only otherwise as the output column named `x`. The shards resolve the name
//! themselves, but the merge groups again and must know which of the two they grouped by: a
//! table's columns are only in the shards' catalog, so a name that may be either becomes a
//! question the session answers with a catalog read before the statement runs. Pure.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::final_projection::column_name;
use super::merge_plan::TableName;

/// The GROUP BY names of a statement that are output column names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupNames {
    /// Names no FROM item can have as a column: output columns.
    pub outputs: Vec<String>,
    /// Names no FROM item whose columns the statement itself lists has: output columns unless
    /// one of `tables` has a column of that name.
    pub questions: Vec<String>,
    /// The tables of the statement's FROM list (this query level), as written.
    pub tables: Vec<TableName>,
}

/// The columns one FROM item gives, as far as the statement's text tells.
enum Item {
    /// These names and no others.
    Known(Vec<String>),
    /// A table (or view): only the catalog knows.
    Table(TableName),
    /// Nobody can tell from here; what it is, for messages.
    Unknown(String),
}

fn sval(n: &pb::Node) -> Option<&str> {
    match n.node.as_ref()? {
        NodeEnum::String(s) => Some(&s.sval),
        _ => None,
    }
}

/// The name of an output column as Postgres gives it (`None` for `*`).
fn target_name(rt: &pb::ResTarget) -> Option<String> {
    if !rt.name.is_empty() {
        return Some(rt.name.clone());
    }
    let v = rt.val.as_deref()?;
    if let Some(NodeEnum::ColumnRef(c)) = v.node.as_ref() {
        if c.fields
            .last()
            .is_some_and(|f| matches!(f.node, Some(NodeEnum::AStar(_))))
        {
            return None;
        }
    }
    Some(column_name(v))
}

/// The output column names of a SELECT list, `None` where a `*` leaves them to the catalog.
pub fn output_names(targets: &[pb::Node]) -> Vec<Option<String>> {
    targets
        .iter()
        .map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => target_name(rt),
            _ => None,
        })
        .collect()
}

/// The column names of a query used as a FROM item or CTE; `None` when they cannot be told.
fn query_names(q: &pb::Node) -> Option<Vec<String>> {
    match q.node.as_ref()? {
        NodeEnum::SelectStmt(s) if s.op != pb::SetOperation::SetopNone as i32 => {
            query_names(&pb::Node {
                node: Some(NodeEnum::SelectStmt(s.larg.clone()?)),
            })
        }
        NodeEnum::SelectStmt(s) if !s.values_lists.is_empty() => {
            let width = match s.values_lists.first()?.node.as_ref()? {
                NodeEnum::List(l) => l.items.len(),
                _ => return None,
            };
            Some((1..=width).map(|i| format!("column{i}")).collect())
        }
        NodeEnum::SelectStmt(s) => output_names(&s.target_list).into_iter().collect(),
        _ => None,
    }
}

/// `names` with their first columns renamed by an alias's column list.
fn renamed(names: Option<Vec<String>>, alias: Option<&pb::Alias>) -> Option<Vec<String>> {
    let colnames: Vec<&str> = alias
        .map(|a| a.colnames.iter().filter_map(sval).collect())
        .unwrap_or_default();
    let mut names = names?;
    for (i, c) in colnames.into_iter().enumerate() {
        match names.get_mut(i) {
            Some(n) => *n = c.to_string(),
            None => return None,
        }
    }
    Some(names)
}

fn item(n: &pb::Node, ctes: &[&pb::CommonTableExpr]) -> Vec<Item> {
    let unknown = |what: &str| vec![Item::Unknown(what.to_string())];
    let known = |names: Option<Vec<String>>, what: &str| match names {
        Some(n) => vec![Item::Known(n)],
        None => unknown(what),
    };
    match n.node.as_ref() {
        Some(NodeEnum::RangeVar(rv)) => {
            let alias = rv.alias.as_ref();
            let cte = ctes
                .iter()
                .find(|c| rv.schemaname.is_empty() && c.ctename == rv.relname);
            if let Some(cte) = cte {
                let names = cte.ctequery.as_deref().and_then(query_names);
                let names = renamed(
                    names,
                    Some(&pb::Alias {
                        aliasname: String::new(),
                        colnames: cte.aliascolnames.clone(),
                    }),
                );
                return known(renamed(names, alias), &format!("CTE {}", rv.relname));
            }
            if alias.is_some_and(|a| !a.colnames.is_empty()) {
                return unknown(&format!("table {} with column aliases", rv.relname));
            }
            vec![Item::Table(TableName {
                schema: Some(rv.schemaname.clone()).filter(|s| !s.is_empty()),
                name: rv.relname.clone(),
            })]
        }
        Some(NodeEnum::RangeSubselect(r)) => {
            let names = r.subquery.as_deref().and_then(query_names);
            known(renamed(names, r.alias.as_ref()), "a subquery")
        }
        Some(NodeEnum::RangeFunction(f)) if !f.coldeflist.is_empty() => {
            let mut names: Vec<String> = f
                .coldeflist
                .iter()
                .filter_map(|c| match c.node.as_ref() {
                    Some(NodeEnum::ColumnDef(d)) => Some(d.colname.clone()),
                    _ => None,
                })
                .collect();
            if f.ordinality {
                names.push("ordinality".into());
            }
            known(renamed(Some(names), f.alias.as_ref()), "a function")
        }
        Some(NodeEnum::RangeFunction(_)) => unknown("a function"),
        Some(NodeEnum::RangeTableSample(t)) => match t.relation.as_deref() {
            Some(r) => item(r, ctes),
            None => unknown("TABLESAMPLE"),
        },
        Some(NodeEnum::JoinExpr(j)) => {
            if j.alias.as_ref().is_some_and(|a| !a.colnames.is_empty()) {
                return unknown("a join with column aliases");
            }
            let mut out = Vec::new();
            for side in [j.larg.as_deref(), j.rarg.as_deref()].into_iter().flatten() {
                out.extend(item(side, ctes));
            }
            out
        }
        _ => unknown("a table function"),
    }
}

/// True when an output column named `name` is something other than a column reference ending
/// in `name`: only then may grouping by the output column differ from grouping by the input
/// column of that name (`SELECT g … GROUP BY g` is the same either way).
fn names_another_value(targets: &[pb::Node], outputs: &[Option<String>], name: &str) -> bool {
    targets.iter().zip(outputs).any(|(t, o)| {
        if o.as_deref() != Some(name) {
            return false;
        }
        let val = match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => rt.val.as_deref(),
            _ => None,
        };
        match val.and_then(|v| v.node.as_ref()) {
            Some(NodeEnum::ColumnRef(c)) => c.fields.last().and_then(sval) != Some(name),
            _ => true,
        }
    })
}

/// Sorts the statement's bare GROUP BY names that are output column names into outputs and
/// questions. `Err` names what is missing when a FROM item whose columns nobody can tell here
/// may hold such a name.
pub fn resolve(s: &pb::SelectStmt) -> Result<GroupNames, String> {
    let mut out = GroupNames::default();
    let outputs = output_names(&s.target_list);
    let names: Vec<&str> = s
        .group_clause
        .iter()
        .filter_map(|g| match g.node.as_ref() {
            Some(NodeEnum::ColumnRef(c)) => match c.fields.as_slice() {
                [f] => sval(f),
                _ => None,
            },
            _ => None,
        })
        .filter(|n| names_another_value(&s.target_list, &outputs, n))
        .collect();
    if names.is_empty() {
        return Ok(out);
    }
    let ctes: Vec<&pb::CommonTableExpr> = s
        .with_clause
        .iter()
        .flat_map(|w| &w.ctes)
        .filter_map(|c| match c.node.as_ref() {
            Some(NodeEnum::CommonTableExpr(c)) => Some(&**c),
            _ => None,
        })
        .collect();
    let items: Vec<Item> = s.from_clause.iter().flat_map(|n| item(n, &ctes)).collect();
    for t in &items {
        if let Item::Table(t) = t {
            if !out.tables.contains(t) {
                out.tables.push(t.clone());
            }
        }
    }
    for name in names {
        let input = items
            .iter()
            .any(|i| matches!(i, Item::Known(cols) if cols.iter().any(|c| c == name)));
        if input || out.outputs.iter().chain(&out.questions).any(|n| n == name) {
            continue;
        }
        if let Some(Item::Unknown(what)) = items.iter().find(|i| matches!(i, Item::Unknown(_))) {
            return Err(format!(
                "GROUP BY {name}, an output column's name, with {what} in FROM whose column names pgshard cannot tell (Postgres groups by an input column of that name if there is one)"
            ));
        }
        if out.tables.is_empty() {
            out.outputs.push(name.to_string());
        } else {
            out.questions.push(name.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(sql: &str) -> pb::SelectStmt {
        let parsed = pg_query::parse(sql, 0).unwrap();
        match parsed.protobuf.stmts[0]
            .stmt
            .as_deref()
            .unwrap()
            .node
            .as_ref()
        {
            Some(NodeEnum::SelectStmt(s)) => (**s).clone(),
            _ => panic!("{sql}"),
        }
    }

    fn names_of(sql: &str) -> Result<GroupNames, String> {
        resolve(&select(sql))
    }

    fn table(schema: Option<&str>, name: &str) -> TableName {
        TableName {
            schema: schema.map(str::to_string),
            name: name.into(),
        }
    }

    #[test]
    fn bare_names_are_inputs_outputs_or_questions() {
        let t = || vec![table(None, "t")];
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (statement, outputs, questions, tables)
        type Case = (&'static str, Vec<String>, Vec<String>, Vec<TableName>);
        let cases: Vec<Case> = vec![
            // A table: only its catalog says whether it has a column `grp`.
            (
                "SELECT g AS grp, count(*) FROM t GROUP BY grp",
                v(&[]),
                v(&["grp"]),
                t(),
            ),
            (
                "SELECT lower(name) AS name, count(*) FROM app.t GROUP BY name",
                v(&[]),
                v(&["name"]),
                vec![table(Some("app"), "t")],
            ),
            // An implicit output name counts as Postgres gives it.
            (
                "SELECT lower(name), count(*) FROM t GROUP BY lower",
                v(&[]),
                v(&["lower"]),
                t(),
            ),
            // A name that is no output column's: an input column (or the shard's error); an
            // output column that is that column reads the same either way.
            ("SELECT g, count(*) FROM t GROUP BY g", v(&[]), v(&[]), vec![]),
            (
                "SELECT t.g, t.h AS k FROM t GROUP BY g, h, k",
                v(&[]),
                v(&["k"]),
                t(),
            ),
            ("SELECT count(*) FROM t GROUP BY x", v(&[]), v(&[]), vec![]),
            // Qualified names, positions and expressions are never output names.
            (
                "SELECT g AS grp FROM t GROUP BY t.grp, 1, grp || 'x'",
                v(&[]),
                v(&[]),
                vec![],
            ),
            // Subqueries and CTEs list their columns.
            (
                "SELECT s.g AS grp, count(*) FROM (SELECT g FROM t) s GROUP BY grp",
                v(&["grp"]),
                v(&[]),
                vec![],
            ),
            (
                "SELECT s.g AS grp, count(*) FROM (SELECT g, h AS grp FROM t) s GROUP BY grp",
                v(&[]),
                v(&[]),
                vec![],
            ),
            (
                "SELECT s.g AS grp, count(*) FROM (SELECT g, h FROM t) s(x, grp) GROUP BY grp",
                v(&[]),
                v(&[]),
                vec![],
            ),
            (
                "WITH c AS (SELECT g FROM t) SELECT g AS grp, count(*) FROM c GROUP BY grp",
                v(&["grp"]),
                v(&[]),
                vec![],
            ),
            (
                "WITH c(grp) AS (SELECT g FROM t) SELECT grp * 2 AS grp FROM c GROUP BY grp",
                v(&[]),
                v(&[]),
                vec![],
            ),
            (
                "SELECT u.v AS grp, count(*) FROM t, LATERAL unnest(t.a) AS u(v int) GROUP BY grp",
                v(&[]),
                v(&["grp"]),
                t(),
            ),
            // A join: the subquery's columns are known, the table's are a question.
            (
                "SELECT t.g AS grp, count(*) FROM t JOIN (SELECT 1 AS k) s ON s.k = t.id GROUP BY grp",
                v(&[]),
                v(&["grp"]),
                t(),
            ),
            (
                "SELECT t.g AS grp, count(*) FROM t JOIN (SELECT 1 AS grp) s ON true GROUP BY grp",
                v(&[]),
                v(&[]),
                vec![],
            ),
        ];
        for (sql, outputs, questions, tables) in cases {
            let g = names_of(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(g.outputs, outputs, "{sql}");
            assert_eq!(g.questions, questions, "{sql}");
            if !questions.is_empty() {
                assert_eq!(g.tables, tables, "{sql}");
            }
        }
    }

    #[test]
    fn unknown_columns_with_an_output_name_are_refused() {
        for (sql, want) in [
            (
                "SELECT f AS grp, count(*) FROM t, generate_series(1, 3) f GROUP BY grp",
                "a function",
            ),
            (
                "SELECT s.g AS grp, count(*) FROM (SELECT * FROM t) s GROUP BY grp",
                "a subquery",
            ),
            (
                "SELECT x.g AS grp, count(*) FROM t AS x(a, b) GROUP BY grp",
                "column aliases",
            ),
        ] {
            let e = names_of(sql).unwrap_err();
            assert!(e.contains(want) && e.contains("GROUP BY grp"), "{sql}: {e}");
        }
        // Unknown columns do not matter when the name is no output column's, or when a FROM
        // item that lists its columns has it.
        assert!(names_of("SELECT g, count(*) FROM t, generate_series(1, 3) f GROUP BY g").is_ok());
        assert!(names_of(
            "SELECT f AS grp FROM t, generate_series(1, 3) f, (SELECT 1 AS grp) s GROUP BY grp"
        )
        .is_ok_and(|g| g.questions.is_empty() && g.outputs.is_empty()));
    }
}
