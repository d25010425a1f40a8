//! The facts of a statement text an extended batch parses, analyzed once per batch: generated
//! keys, subqueries run first, the cut-over hold and routing each ask for them (three analyses
//! of one Parse per batch before, each building its route-cache key). Emptied when the batch
//! ends, so nothing outlives the search_path and catalog it was analyzed under.

use std::sync::{Arc, Mutex};

use super::session::Session;
use crate::router::names::SearchPath;
use crate::router::StatementFacts;

/// The last text analyzed in the batch being served.
#[derive(Default)]
pub struct BatchAnalysis(Mutex<Option<Analyzed>>);

struct Analyzed {
    sql: String,
    path: Arc<SearchPath>,
    facts: Arc<[StatementFacts]>,
}

impl BatchAnalysis {
    /// The facts of `sql` under `path`: the last analysis when it was of this text under this
    /// very path, else `analyze`'s (remembered in its place).
    pub fn get_or(
        &self,
        sql: &str,
        path: Arc<SearchPath>,
        analyze: impl FnOnce(&str, &SearchPath) -> Arc<[StatementFacts]>,
    ) -> Arc<[StatementFacts]> {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = last.as_ref() {
            if a.sql == sql && Arc::ptr_eq(&a.path, &path) {
                return a.facts.clone();
            }
        }
        let facts = analyze(sql, &path);
        *last = Some(Analyzed {
            sql: sql.to_string(),
            path,
            facts: facts.clone(),
        });
        facts
    }

    /// Forgets the last analysis (the batch ended).
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Session {
    /// The facts of a Parse's text in the batch being served (see [`BatchAnalysis`]).
    pub fn analyze_parsed(&self, sql: &str) -> Arc<[StatementFacts]> {
        let router = &self.proxy.router;
        self.batch_analysis
            .get_or(sql, self.search_path(), |sql, path| {
                router.analyze_prepared_in(sql, path)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_analysis_per_text_and_path() {
        let memo = BatchAnalysis::default();
        let (path, other) = (
            Arc::new(SearchPath::default()),
            Arc::new(SearchPath::default()),
        );
        let calls = std::cell::Cell::new(0);
        let analyze = |sql: &str, path: &Arc<SearchPath>| {
            memo.get_or(sql, path.clone(), |_, _| {
                calls.set(calls.get() + 1);
                Arc::from(Vec::new())
            });
            calls.get()
        };
        assert_eq!(analyze("SELECT 1", &path), 1);
        assert_eq!(analyze("SELECT 1", &path), 1);
        assert_eq!(analyze("SELECT 2", &path), 2);
        // Another search_path (even an equal one) is analyzed anew.
        assert_eq!(analyze("SELECT 2", &other), 3);
        assert_eq!(analyze("SELECT 2", &other), 3);
        memo.clear();
        assert_eq!(analyze("SELECT 2", &other), 4);
    }
}
