//! Tables' columns as the session sees them: from the proxy-wide cache, or one catalog read on a
//! shard the session may use (inside a block, the block's own, so its DDL is seen).

use std::sync::Arc;

use crate::exec::table_columns::{self, Read};
use crate::frontend::session::{refusal, Session};
use crate::router::merge_plan::TableName;
use crate::wire::backend::ErrorFields;

impl Session {
    /// The `read` columns of each of `tables`, in their order (empty for a table that does not
    /// exist). What is read inside a block is used but not kept for other sessions; `what` names
    /// the statement's need in the refusal when a Flush left an implicit transaction open.
    pub async fn table_columns(
        &mut self,
        read: Read,
        tables: &[TableName],
        what: &str,
    ) -> Result<Vec<Arc<[String]>>, ErrorFields> {
        let path = self.search_path();
        let keys: Vec<String> = tables
            .iter()
            .map(|t| table_columns::key(read, path.cache_key(), t))
            .collect();
        let mut columns: Vec<Option<Arc<[String]>>> =
            keys.iter().map(|k| table_columns::cached(k)).collect();
        let missing: Vec<usize> = (0..columns.len())
            .filter(|&i| columns[i].is_none())
            .collect();
        if !missing.is_empty() {
            if self.state.open_batch_shard.is_some() {
                return Err(refusal(format!(
                    "{what} cannot join an implicit transaction that a Flush left open: send Sync first"
                )));
            }
            let asked: Vec<TableName> = missing.iter().map(|&i| tables[i].clone()).collect();
            let shard = self.answering_shard();
            let rows = self
                .lookup_exchange(shard, false, &table_columns::query(read, &asked))
                .await;
            self.release_idle();
            let read_back = table_columns::parse(asked.len(), &rows?).ok_or_else(|| {
                ErrorFields::error("XX000", "malformed answer to the table columns query")
            })?;
            let keep = self.state.txn.is_none();
            for (&i, cols) in missing.iter().zip(read_back) {
                let cols: Arc<[String]> = cols.into();
                if keep {
                    table_columns::remember(keys[i].clone(), cols.clone());
                }
                columns[i] = Some(cols);
            }
        }
        Ok(columns.into_iter().flatten().collect())
    }
}
