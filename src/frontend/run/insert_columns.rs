//! The session's side of `router::insert_columns`: an INSERT into a sharded table that names no
//! columns gets its table's columns written in (read from a shard's catalog, or the cache), so
//! its shard key is found where Postgres puts the value, and then runs as if the client had
//! listed them.

use crate::exec::table_columns::Read;
use crate::frontend::session::Session;
use crate::router::analyze::Refused;
use crate::router::insert_columns::{
    defaults_as_values, unlisted_insert, with_column_list, RowWidth,
};
use crate::router::StatementFacts;
use crate::wire::backend::ErrorFields;

impl Session {
    /// `sql` with its column list written in, when its one statement (`facts`) is an INSERT into
    /// a sharded table refused only for naming no columns; `Ok(None)` for any other statement,
    /// or when the rows' width is not known (`SELECT *` of a join, a source table that does not
    /// exist). `SELECT * FROM u` gives as many values as `u` has columns; `DEFAULT VALUES` is
    /// written as one other column's `DEFAULT`, the key left to pgshard.
    pub async fn list_insert_columns(
        &mut self,
        sql: &str,
        facts: &[StatementFacts],
    ) -> Result<Option<String>, ErrorFields> {
        let [f] = facts else { return Ok(None) };
        let Some(Refused::InsertWithoutColumns { key, .. }) = &f.refuse else {
            return Ok(None);
        };
        let Some(insert) = unlisted_insert(sql) else {
            return Ok(None);
        };
        let mut tables = vec![insert.table];
        if let RowWidth::ColumnsOf(source) = &insert.values {
            tables.push(source.clone());
        }
        let columns = self
            .table_columns(Read::Insertable, &tables, "an INSERT without a column list")
            .await?;
        let values = match insert.values {
            RowWidth::Values(n) => n,
            RowWidth::ColumnsOf(_) => columns.get(1).map_or(0, |c| c.len()),
            RowWidth::Defaults => {
                // Another column's default stands for the row; the key is then given by
                // pgshard, as for any INSERT that leaves it out.
                let other = columns
                    .first()
                    .and_then(|cols| cols.iter().find(|c| !c.eq_ignore_ascii_case(key)));
                return Ok(other.and_then(|c| defaults_as_values(sql, c)));
            }
        };
        Ok(columns
            .first()
            .and_then(|cols| with_column_list(sql, values, cols)))
    }
}
