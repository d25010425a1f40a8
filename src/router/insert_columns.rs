//! The column lists of INSERTs, read from and written into their parse trees: the target and
//! listed columns of a multi-row `INSERT … VALUES` (what a split INSERT must be told about the
//! columns it leaves to their defaults), and the list an INSERT into a sharded table that names
//! no columns is given — the first columns of its table, which Postgres fills in order — so that
//! its shard key is found where Postgres puts it.

use pg_query::protobuf as pb;
use pg_query::NodeEnum;

use super::insert_rewrite::{read_insert, rewrite_insert, values_source};
use super::merge_plan::TableName;
use crate::sql_text::quote_ident;

/// An `INSERT INTO t (a, b) VALUES …` as far as its columns go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuesInsert {
    /// The target as Postgres reads a `regclass` (each part quoted where needed), so a lookup
    /// resolves it under the session's search_path exactly as the INSERT does.
    pub table: String,
    /// The listed columns, as Postgres names them.
    pub columns: Vec<String>,
}

/// `sql`'s target and column list when it is one INSERT with a column list and a VALUES list;
/// `None` for anything else (no column list, INSERT … SELECT, several statements).
pub fn values_insert(sql: &str) -> Option<ValuesInsert> {
    read_insert(sql, values_insert_of)
}

fn values_insert_of(insert: &pb::InsertStmt) -> Option<ValuesInsert> {
    let Some(NodeEnum::SelectStmt(select)) = insert.select_stmt.as_ref()?.node.as_ref() else {
        return None;
    };
    if select.values_lists.is_empty() || insert.cols.is_empty() {
        return None;
    }
    let relation = insert.relation.as_ref()?;
    let table = [
        &relation.catalogname,
        &relation.schemaname,
        &relation.relname,
    ]
    .into_iter()
    .filter(|part| !part.is_empty())
    .map(|part| quote_ident(part))
    .collect::<Vec<_>>()
    .join(".");
    let columns = insert
        .cols
        .iter()
        .map(|c| match c.node.as_ref() {
            Some(NodeEnum::ResTarget(t)) => Some(t.name.clone()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    Some(ValuesInsert { table, columns })
}

/// An INSERT that names no columns: its target, and how many values each of its rows gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlistedInsert {
    pub table: TableName,
    /// The values of a row.
    pub values: RowWidth,
    /// How many rows its VALUES list has; `None` for an INSERT … SELECT.
    pub rows: Option<usize>,
}

/// How many values each row of an INSERT gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWidth {
    /// The length of its VALUES rows, or of its SELECT's target list.
    Values(usize),
    /// As many as the table's columns: `SELECT * FROM table` (or `table.*`), one table in FROM.
    ColumnsOf(TableName),
    /// `DEFAULT VALUES`: one row of every column's default.
    Defaults,
}

/// `sql` as an [`UnlistedInsert`] when it is one INSERT without a column list whose rows give a
/// known number of values: VALUES rows all of one length, or a SELECT (the first of a set
/// operation) listing its outputs without `*`, or `*` of its one table. `None` otherwise
/// (`DEFAULT VALUES`, `*` of a join).
pub fn unlisted_insert(sql: &str) -> Option<UnlistedInsert> {
    read_insert(sql, unlisted_insert_of)
}

fn unlisted_insert_of(insert: &pb::InsertStmt) -> Option<UnlistedInsert> {
    if !insert.cols.is_empty() {
        return None;
    }
    let Some(source) = insert.select_stmt.as_ref() else {
        return Some(UnlistedInsert {
            table: table_name(insert.relation.as_ref()?),
            values: RowWidth::Defaults,
            rows: Some(1),
        });
    };
    let Some(NodeEnum::SelectStmt(select)) = source.node.as_ref() else {
        return None;
    };
    let values = row_width(select)?;
    let rows = (select.op == pb::SetOperation::SetopNone as i32 && !select.values_lists.is_empty())
        .then_some(select.values_lists.len());
    Some(UnlistedInsert {
        table: table_name(insert.relation.as_ref()?),
        values,
        rows,
    })
}

fn table_name(relation: &pb::RangeVar) -> TableName {
    TableName {
        schema: (!relation.schemaname.is_empty()).then(|| relation.schemaname.clone()),
        name: relation.relname.clone(),
    }
}

/// How many values each row of `select` gives, when its text says.
fn row_width(select: &pb::SelectStmt) -> Option<RowWidth> {
    if select.op != pb::SetOperation::SetopNone as i32 {
        return row_width(select.larg.as_deref()?);
    }
    if !select.values_lists.is_empty() {
        let mut widths = select
            .values_lists
            .iter()
            .map(|row| match row.node.as_ref() {
                Some(NodeEnum::List(l)) => Some(l.items.len()),
                _ => None,
            });
        let first = widths.next()??;
        return widths
            .all(|w| w == Some(first))
            .then_some(RowWidth::Values(first));
    }
    let stars: Vec<Option<&pb::ColumnRef>> = select
        .target_list
        .iter()
        .map(|t| match t.node.as_ref() {
            Some(NodeEnum::ResTarget(rt)) => {
                match rt.val.as_deref().and_then(|v| v.node.as_ref()) {
                    Some(NodeEnum::ColumnRef(c))
                        if c.fields
                            .iter()
                            .any(|f| matches!(f.node, Some(NodeEnum::AStar(_)))) =>
                    {
                        Some(c)
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    match stars.as_slice() {
        [] => None,
        [Some(star)] => star_of_one_table(star, select).map(RowWidth::ColumnsOf),
        many if many.iter().all(Option::is_none) => Some(RowWidth::Values(many.len())),
        _ => None,
    }
}

/// The one table of `select`'s FROM whose every column `star` (`*` or `t.*`) stands for.
fn star_of_one_table(star: &pb::ColumnRef, select: &pb::SelectStmt) -> Option<TableName> {
    let [from] = select.from_clause.as_slice() else {
        return None;
    };
    let Some(NodeEnum::RangeVar(rv)) = from.node.as_ref() else {
        return None;
    };
    let visible = rv
        .alias
        .as_ref()
        .map_or(rv.relname.as_str(), |a| a.aliasname.as_str());
    match star.fields.as_slice() {
        [_] => {}
        [qualifier, _] => match qualifier.node.as_ref() {
            Some(NodeEnum::String(q)) if q.sval == visible => {}
            _ => return None,
        },
        _ => return None,
    }
    Some(table_name(rv))
}

/// `sql` (an [`UnlistedInsert`] giving `values` values a row) with its column list written in:
/// the first `values` of `columns`, the table's columns in order, or all of them when a row gives
/// more (Postgres then raises its own error). `None` when `sql` lists columns already or the
/// table has none.
pub fn with_column_list(sql: &str, values: usize, columns: &[String]) -> Option<String> {
    let listed = columns.get(..values.min(columns.len()))?;
    if listed.is_empty() {
        return None;
    }
    rewrite_insert(sql, "insert", |insert| {
        if !insert.cols.is_empty() {
            return None;
        }
        insert.cols = listed
            .iter()
            .map(|name| pb::Node {
                node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
                    name: name.clone(),
                    ..Default::default()
                }))),
            })
            .collect();
        Some(())
    })
}

/// `sql`, an `INSERT INTO t DEFAULT VALUES`, as `INSERT INTO t (column) VALUES (DEFAULT)`: the
/// same row, written so that the shard key can be left out (and given by pgshard) when `column`
/// is another column. `None` for any other statement.
pub fn defaults_as_values(sql: &str, column: &str) -> Option<String> {
    rewrite_insert(sql, "default", |insert| {
        if !insert.cols.is_empty() || insert.select_stmt.is_some() {
            return None;
        }
        insert.cols = vec![pb::Node {
            node: Some(NodeEnum::ResTarget(Box::new(pb::ResTarget {
                name: column.to_string(),
                ..Default::default()
            }))),
        }];
        let row = pb::Node {
            node: Some(NodeEnum::List(pb::List {
                items: vec![pb::Node {
                    node: Some(NodeEnum::SetToDefault(Box::default())),
                }],
            })),
        };
        insert.select_stmt = Some(values_source(vec![row]));
        Some(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_inserts_and_their_row_widths() {
        type Want<'a> = Option<(Option<&'a str>, &'a str, usize, Option<usize>)>;
        // (usize::MAX: the width of table `u`)
        let table: &[(&str, Want)] = &[
            (
                "INSERT INTO t VALUES (1, 'a')",
                Some((None, "t", 2, Some(1))),
            ),
            (
                "insert into app.\"T\" values ($1, $2, $3), ($4, $5, $6) returning *",
                Some((Some("app"), "T", 3, Some(2))),
            ),
            (
                "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 3) g",
                Some((None, "t", 2, None)),
            ),
            (
                "INSERT INTO t SELECT 1, 2 UNION ALL SELECT 3, 4",
                Some((None, "t", 2, None)),
            ),
            (
                "WITH s AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM s",
                Some((None, "t", 1, None)),
            ),
            (
                "INSERT INTO t VALUES (1) ON CONFLICT (id) DO NOTHING",
                Some((None, "t", 1, Some(1))),
            ),
            ("INSERT INTO t VALUES (1, 2), (3)", None),
            (
                "INSERT INTO t SELECT * FROM u WHERE a > 1",
                Some((None, "t", usize::MAX, None)),
            ),
            (
                "INSERT INTO t SELECT x.* FROM u AS x",
                Some((None, "t", usize::MAX, None)),
            ),
            ("INSERT INTO t SELECT u.* FROM u AS x", None),
            ("INSERT INTO t SELECT *, 1 FROM u", None),
            ("INSERT INTO t SELECT * FROM u, v", None),
            ("INSERT INTO t SELECT * FROM u JOIN v USING (id)", None),
            (
                "INSERT INTO t DEFAULT VALUES",
                Some((None, "t", usize::MAX - 1, Some(1))),
            ),
            ("INSERT INTO t (a) VALUES (1)", None),
            ("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", None),
            ("SELECT 1", None),
        ];
        for (sql, want) in table {
            let want = want.map(|(schema, name, values, rows)| UnlistedInsert {
                table: TableName {
                    schema: schema.map(String::from),
                    name: name.to_string(),
                },
                values: if values == usize::MAX - 1 {
                    RowWidth::Defaults
                } else if values == usize::MAX {
                    RowWidth::ColumnsOf(TableName {
                        schema: None,
                        name: "u".into(),
                    })
                } else {
                    RowWidth::Values(values)
                },
                rows,
            });
            assert_eq!(unlisted_insert(sql), want, "{sql}");
        }
    }

    #[test]
    fn column_lists_written_in() {
        let columns: Vec<String> = ["id", "user", "Name", "note"]
            .into_iter()
            .map(String::from)
            .collect();
        let out = with_column_list(
            "INSERT INTO t VALUES ($1, $2, $3) RETURNING id",
            3,
            &columns,
        )
        .expect("rewritten");
        assert_eq!(
            out,
            r#"INSERT INTO t (id, "user", "Name") VALUES ($1, $2, $3) RETURNING id"#
        );
        let all =
            with_column_list("INSERT INTO t SELECT 1, 2, 3, 4, 5", 5, &columns).expect("rewritten");
        assert!(
            all.starts_with(r#"INSERT INTO t (id, "user", "Name", note) SELECT"#),
            "{all}"
        );
        assert_eq!(
            with_column_list("INSERT INTO t (a) VALUES (1)", 1, &columns),
            None
        );
        assert_eq!(with_column_list("INSERT INTO t VALUES (1)", 1, &[]), None);
        assert_eq!(with_column_list("SELECT 1", 1, &columns), None);
    }

    #[test]
    fn default_values_written_as_one_default() {
        assert_eq!(
            defaults_as_values("INSERT INTO t DEFAULT VALUES RETURNING id", "Name").as_deref(),
            Some(r#"INSERT INTO t ("Name") VALUES (DEFAULT) RETURNING id"#)
        );
        assert_eq!(defaults_as_values("INSERT INTO t VALUES (1)", "a"), None);
        assert_eq!(
            defaults_as_values("INSERT INTO t (a) VALUES (DEFAULT)", "a"),
            None
        );
    }

    #[test]
    fn reads_target_and_columns() {
        let table = [
            (
                "INSERT INTO sa_line (customer_id, qty) VALUES ($1, $2), ($3, $4) RETURNING id",
                Some(("sa_line", vec!["customer_id", "qty"])),
            ),
            (
                r#"INSERT INTO app."Line" AS l ("Qty", customer_id) VALUES (1, 2)"#,
                Some((r#"app."Line""#, vec!["Qty", "customer_id"])),
            ),
            ("INSERT INTO t VALUES (1, 2)", None),
            ("INSERT INTO t (a) SELECT 1", None),
            ("INSERT INTO t (a) VALUES (1); SELECT 1", None),
            ("SELECT 1", None),
            ("INSERT INTO", None),
        ];
        for (sql, want) in table {
            let want = want.map(|(table, columns)| ValuesInsert {
                table: table.to_string(),
                columns: columns.into_iter().map(String::from).collect(),
            });
            assert_eq!(values_insert(sql), want, "{sql}");
        }
    }
}
