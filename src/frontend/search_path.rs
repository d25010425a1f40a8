//! The session's search_path as the router sees it: every analysis of the client's SQL resolves
//! unqualified table names under it, and statements the client prepared under another path are
//! analysed again when it changes (Postgres re-plans them too).

use std::sync::Arc;

use super::session::Session;
use crate::router::names::SearchPath;
use crate::session::Prepared;

/// Why a Parse naming tables after a Parse that changes the search_path in the same extended
/// batch (a pipeline) is refused.
pub const NAMES_AFTER_PATH_CHANGE_IN_BATCH: &str = "a statement naming tables after a change of search_path in the same pipeline (send Sync after the change: pgshard resolves table names before the batch runs)";

impl Session {
    /// For a Parse of `sql` (analysed as `facts`) in the batch being served: true when an earlier
    /// Parse of the batch changes the search_path so that `sql` would name other tables than
    /// the analysis (under the path before the change) found. Its Parse would also be prepared
    /// on a shard whose server has not run the change yet (psycopg's pipeline: `SET search_path
    /// TO tenant_b, public`, then `SELECT … FROM orders`: 42P01, or the rows of the table the
    /// old path names). A change whose new path cannot be told refuses every table name.
    pub fn names_after_path_change(
        &self,
        sql: &str,
        facts: &[crate::router::StatementFacts],
    ) -> bool {
        let names_tables = facts
            .iter()
            .any(|f| f.sharded || f.reference || f.unsharded || f.schema_shard.is_some());
        if !names_tables || self.batch_parses.is_empty() {
            return false;
        }
        let role = &self.server_login.role;
        self.batch_parses.iter().any(|(_, p)| {
            p.facts.iter().any(|f| {
                if !crate::router::names::changes_search_path(f, &p.sql) {
                    return false;
                }
                let new_path = match &f.kind {
                    crate::router::StatementKind::Set { value: Some(v), .. } => {
                        SearchPath::from_setting(v, role)
                    }
                    crate::router::StatementKind::SetLocal => {
                        crate::session::search_path::local_search_path(&p.sql)
                            .and_then(|v| SearchPath::from_setting(&v, role))
                    }
                    _ => None,
                };
                match new_path {
                    Some(path) => self.proxy.router.analyze_prepared_in(sql, &path)[..] != *facts,
                    None => true,
                }
            })
        })
    }

    /// The search_path the client's next statement runs under.
    pub fn search_path(&self) -> Arc<SearchPath> {
        self.state.search_path(&self.server_login.role)
    }

    /// Before DDL runs: which schemas hold which tables may change with it.
    pub fn note_names_changed<'a>(
        &mut self,
        facts: impl IntoIterator<Item = &'a crate::router::StatementFacts>,
    ) {
        if facts
            .into_iter()
            .any(|f| f.kind == crate::router::StatementKind::Ddl)
        {
            self.state.names_changed = true;
        }
    }

    /// After a request: once the session is outside any block, reads again which schemas hold
    /// the configured tables' names when its DDL may have changed that (and forgets the table
    /// columns merges read).
    pub async fn after_names_changed(&mut self) {
        if !self.state.names_changed || self.state.txn.is_some() {
            return;
        }
        self.state.names_changed = false;
        // A block's DDL is seen by others from its COMMIT on: table columns read (and cached)
        // by other sessions in the meantime are read again.
        crate::exec::table_columns::forget();
        let proxy = &self.proxy;
        let tables = proxy.router.tables();
        let shadows = crate::backend::shadows::read(
            &proxy.config,
            &proxy.server_tls,
            &tables.names(),
            &proxy.router.tenant_schemas(),
        )
        .await;
        proxy.router.set_shadows(shadows);
        let strategy = proxy.map.current().strategy;
        let learnt =
            crate::backend::key_types::learn(&proxy.config, &strategy, &proxy.server_tls).await;
        if proxy.router.set_key_types(&learnt) {
            tracing::info!("key types read again from the shards after DDL: {learnt:?}");
        }
    }

    /// Before a request: when the search_path changed since the client's prepared statements
    /// were analysed, analyses them again under the new one, so a statement prepared for
    /// `billing.invoices` does not route `public.invoices` by its key (or the other way round).
    pub fn follow_search_path(&mut self) {
        let path = self.search_path();
        if self
            .state
            .prepared_under
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &path) || **p == *path)
        {
            return;
        }
        let router = &self.proxy.router;
        for prepared in self.state.statements.values_mut() {
            let facts = router.analyze_prepared_in(&prepared.sql, &path);
            if facts != prepared.facts {
                *prepared = Arc::new(Prepared {
                    sql: prepared.sql.clone(),
                    param_types: prepared.param_types.clone(),
                    facts,
                    server_name: prepared.server_name.clone(),
                });
            }
        }
        self.state.prepared_under = Some(path);
    }
}
