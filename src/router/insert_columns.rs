//! The target table and listed columns of a multi-row `INSERT … VALUES`, read from its parse
//! tree: what a split INSERT must be told about the columns it leaves to their defaults.

use pg_query::NodeEnum;

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
    let parsed = pg_query::parse(sql, 0).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else {
        return None;
    };
    let Some(NodeEnum::InsertStmt(insert)) = raw.stmt.as_ref()?.node.as_ref() else {
        return None;
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
