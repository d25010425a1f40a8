//! Before a merge whose GROUP BY names may be an output column's or a table's column (see
//! `router::group_names`): the tables' columns, from the cache or one catalog read on a shard,
//! choose the plan the merge runs, as Postgres's rule chooses what it groups by.

use std::sync::Arc;

use crate::exec::table_columns;
use crate::frontend::session::{refusal, Session};
use crate::router::StatementFacts;
use crate::wire::backend::ErrorFields;

impl Session {
    /// Notes in `group_plans` the merge plan to run for a statement whose plan leaves GROUP BY
    /// names to its tables' columns; nothing for any other statement. A read inside the
    /// client's block (on a shard it holds it sees the block's own DDL) is used but not kept
    /// for other sessions.
    pub async fn choose_group_names(
        &mut self,
        facts: Option<&StatementFacts>,
    ) -> Result<(), ErrorFields> {
        let Some(Some(Ok(plan))) = facts.map(|f| f.merge.as_ref()) else {
            return Ok(());
        };
        let Some(choice) = plan.group_names.clone() else {
            return Ok(());
        };
        let path = self.search_path();
        let keys: Vec<String> = choice
            .tables
            .iter()
            .map(|t| table_columns::key(path.cache_key(), t))
            .collect();
        let mut columns: Vec<Option<Arc<[String]>>> =
            keys.iter().map(|k| table_columns::cached(k)).collect();
        let missing: Vec<usize> = (0..columns.len())
            .filter(|&i| columns[i].is_none())
            .collect();
        if !missing.is_empty() {
            if self.state.open_batch_shard.is_some() {
                return Err(refusal(
                    "GROUP BY an output column's name cannot join an implicit transaction that a Flush left open: send Sync first",
                ));
            }
            let tables: Vec<_> = missing.iter().map(|&i| choice.tables[i].clone()).collect();
            let shard = self.answering_shard();
            let rows = self
                .lookup_exchange(shard, false, &table_columns::query(&tables))
                .await;
            self.release_idle();
            let read = table_columns::parse(tables.len(), &rows?).ok_or_else(|| {
                ErrorFields::error("XX000", "malformed answer to the table columns query")
            })?;
            let keep = self.state.txn.is_none();
            for (&i, cols) in missing.iter().zip(read) {
                let cols: Arc<[String]> = cols.into();
                if keep {
                    table_columns::remember(keys[i].clone(), cols.clone());
                }
                columns[i] = Some(cols);
            }
        }
        let chosen = choice.choose(&|t| {
            let i = choice.tables.iter().position(|x| x == t)?;
            columns.get(i)?.as_deref()
        });
        self.group_plans.note(plan, chosen);
        Ok(())
    }
}
