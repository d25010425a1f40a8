//! Before a merge whose GROUP BY names may be an output column's or a table's column (see
//! `router::group_names`): the tables' columns, from the cache or one catalog read on a shard,
//! choose the plan the merge runs, as Postgres's rule chooses what it groups by.

use crate::exec::table_columns::Read;
use crate::frontend::session::Session;
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
        let columns = self
            .table_columns(
                Read::Named,
                &choice.tables,
                "GROUP BY an output column's name",
            )
            .await?;
        let chosen = choice.choose(&|t| {
            let i = choice.tables.iter().position(|x| x == t)?;
            columns.get(i).map(|c| &c[..])
        });
        self.group_plans.note(plan, chosen);
        Ok(())
    }
}
