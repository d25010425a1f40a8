//! The session's side of [`crate::ids::sequence_values`]: before a multi-row INSERT is split
//! between shards, the sequence columns it leaves to their defaults get values drawn in row
//! order from one shard, so RETURNING gives ids in the order of the rows, as one Postgres does.

use std::sync::Arc;

use super::session::{backend_error_fields, Session};
use crate::ids::sequence_values::{self, SequenceColumn};
use crate::router::insert_columns::values_insert;
use crate::router::rewrite::insert_with_key_literals;
use crate::router::split_insert::ShardRows;
use crate::wire::backend::ErrorFields;

impl Session {
    /// `sql` (a multi-row INSERT … VALUES split by `plan`) with its omitted sequence columns
    /// written into every row; `None` when it omits none (or is not of that shape), and then it
    /// is split as it is. The values are drawn on the first shard of the split, on the
    /// connection the split uses, so the lookup sees what the client's block sees.
    pub(super) async fn number_split_rows(
        &mut self,
        sql: &str,
        plan: &[ShardRows],
    ) -> Result<Option<String>, ErrorFields> {
        let (Some(first), true) = (plan.first(), plan.len() > 1) else {
            return Ok(None);
        };
        let Some(insert) = values_insert(sql) else {
            return Ok(None);
        };
        let rows: usize = plan.iter().map(|p| p.rows.len()).sum();
        let shard = first.shard;
        let columns = self.sequence_columns(shard, &insert.table).await?;
        let omitted = sequence_values::omitted(&columns, &insert.columns);
        if omitted.is_empty() {
            return Ok(None);
        }
        let mut text = sql.to_string();
        for column in omitted {
            let answer = self
                .ask_shard(shard, &sequence_values::draw_sql(&column.sequence, rows))
                .await?
                .unwrap_or_default();
            let values = sequence_values::parse_drawn(&column.sequence, &answer, rows)
                .map_err(|e| ErrorFields::error("XX000", e.to_string()))?;
            let literals: Vec<String> = values.iter().map(i64::to_string).collect();
            text =
                insert_with_key_literals(&text, &column.column, &literals, column.always_identity)
                    .map_err(|e| super::session::refusal(e.to_string()))?;
        }
        Ok(Some(text))
    }

    /// `table`'s sequence columns under the session's search_path, looked up on `shard` the
    /// first time (a table that does not exist there has none, and is asked about again).
    async fn sequence_columns(
        &mut self,
        shard: u32,
        table: &str,
    ) -> Result<Arc<[SequenceColumn]>, ErrorFields> {
        let key = format!("{}|{table}", self.search_path().cache_key());
        if let Some(columns) = self.proxy.keys.sequence_columns(&key) {
            return Ok(columns);
        }
        let Some(answer) = self
            .ask_shard(shard, &sequence_values::lookup_sql(table))
            .await?
        else {
            return Ok(Arc::from(Vec::new()));
        };
        let columns: Arc<[SequenceColumn]> = sequence_values::parse_lookup(&answer).into();
        self.proxy
            .keys
            .remember_sequence_columns(&key, columns.clone());
        Ok(columns)
    }

    /// One value from `shard`, on the session's connection to it (in the client's block when
    /// one is open, with the session's settings).
    async fn ask_shard(&mut self, shard: u32, sql: &str) -> Result<Option<String>, ErrorFields> {
        self.ensure_conn(shard, true).await?;
        let Some(conn) = self.held.get_mut(&shard) else {
            return Err(ErrorFields::error("XX000", "server connection vanished"));
        };
        conn.query_text(sql)
            .await
            .map_err(|e| backend_error_fields(&e))
    }
}
