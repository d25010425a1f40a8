//! The column names of tables, read from a shard's catalog (`pg_attribute`) when a merge plan's
//! GROUP BY names depend on them (see `router::group_names`) or an INSERT lists no columns (see
//! `router::insert_columns`), and remembered per table and search_path for
//! [`collation::REFRESH_AFTER`], as the collations merges compare are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::collation::REFRESH_AFTER;
use crate::refusal::refusal;
use crate::router::merge_plan::{MergePlan, PlanChoice, TableName};
use crate::sql_text::{quote_ident, quote_literal};
use crate::wire::backend::ErrorFields;

type Cache = Mutex<HashMap<String, (Arc<[String]>, Instant)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The table as Postgres reads a `regclass`: each part quoted, unqualified names left to the
/// connection's search_path.
fn regclass(t: &TableName) -> String {
    match &t.schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&t.name)),
        None => quote_ident(&t.name),
    }
}

/// Which of a table's columns are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Every column a query can name, system columns included (Postgres groups by `xmin` as by
    /// any column), in no particular order.
    Named,
    /// The columns an INSERT without a column list fills, in their order (`attnum`).
    Insertable,
}

/// The cache key of a table named `t` under a search_path whose `cache_key` is `path`.
pub fn key(read: Read, path: &str, t: &TableName) -> String {
    format!("{read:?}\u{0}{path}\u{0}{}", regclass(t))
}

/// The columns remembered for `key`, while fresh.
pub fn cached(key: &str) -> Option<Arc<[String]>> {
    let c = cache().lock().ok()?;
    let (cols, at) = c.get(key)?;
    (at.elapsed() < REFRESH_AFTER).then(|| cols.clone())
}

/// Remembers a table's columns.
pub fn remember(key: String, columns: Arc<[String]>) {
    if let Ok(mut c) = cache().lock() {
        c.insert(key, (columns, Instant::now()));
    }
}

/// Forgets everything read (after DDL the proxy ran).
pub fn forget() {
    if let Ok(mut c) = cache().lock() {
        c.clear();
    }
}

/// One query reading the `read` columns of `tables`: rows of (position in `tables`, column name),
/// each table's in column order. A table that does not exist has no rows; the statement then
/// fails on the shards as it would on one Postgres.
pub fn query(read: Read, tables: &[TableName]) -> String {
    let values: Vec<String> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| format!("({i}, {})", quote_literal(&regclass(t))))
        .collect();
    format!(
        "SELECT t.i::text, a.attname::text FROM (VALUES {}) AS t(i, n) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(t.n) \
         AND NOT a.attisdropped{} ORDER BY t.i, a.attnum",
        values.join(", "),
        match read {
            Read::Named => "",
            Read::Insertable => " AND a.attnum > 0",
        }
    )
}

/// Each table's columns from the rows of [`query`]; `None` if a row is malformed.
pub fn parse(tables: usize, rows: &[Vec<String>]) -> Option<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); tables];
    for r in rows {
        let [i, name] = r.as_slice() else {
            return None;
        };
        out.get_mut(i.parse::<usize>().ok()?)?.push(name.clone());
    }
    Some(out)
}

/// The plans chosen for the statements of the request being run whose GROUP BY names needed
/// the catalog, by the plan the analysis gave (the same `Arc`).
#[derive(Debug, Default)]
pub struct ChosenPlans(Vec<(Arc<MergePlan>, PlanChoice)>);

/// Plans remembered at most (a pipeline's statements); the oldest go first.
const CHOSEN_CAP: usize = 16;

impl ChosenPlans {
    /// Notes the plan to run for `asked`.
    pub fn note(&mut self, asked: &Arc<MergePlan>, chosen: PlanChoice) {
        self.0.retain(|(p, _)| !Arc::ptr_eq(p, asked));
        if self.0.len() >= CHOSEN_CAP {
            drop(self.0.remove(0));
        }
        self.0.push((asked.clone(), chosen));
    }

    /// The plan to run for `plan`: itself unless its GROUP BY names needed the catalog, then
    /// the one noted for it; refused (0A000) when that plan cannot merge the statement or
    /// nothing was noted (a path that did not read the catalog).
    pub fn plan(&self, plan: &Arc<MergePlan>) -> Result<Arc<MergePlan>, ErrorFields> {
        let Some(choice) = &plan.group_names else {
            return Ok(plan.clone());
        };
        let refuse = |what: &str| {
            refusal(format!(
                "{what} over several shards is not supported; add a condition on the shard key to reach one shard"
            ))
        };
        match self.0.iter().find(|(p, _)| Arc::ptr_eq(p, plan)) {
            Some((_, Ok(chosen))) => Ok(chosen.clone()),
            Some((_, Err(what))) => Err(refuse(what)),
            None => Err(refuse(&format!(
                "GROUP BY {} here (pgshard did not read whether they are table columns)",
                choice.names.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_rows() {
        let tables = [
            TableName {
                schema: Some("App".into()),
                name: "t".into(),
            },
            TableName {
                schema: None,
                name: "it's".into(),
            },
        ];
        let q = query(Read::Named, &tables);
        assert!(q.contains("(0, '\"App\".t'), (1, '\"it''s\"')"), "{q}");
        assert!(!q.contains("attnum > 0"), "{q}");
        assert!(query(Read::Insertable, &tables).contains("attnum > 0 ORDER BY t.i, a.attnum"));
        let row = |i: &str, n: &str| vec![i.to_string(), n.to_string()];
        assert_eq!(
            parse(2, &[row("0", "a"), row("1", "b"), row("0", "xmin")]),
            Some(vec![
                vec!["a".to_string(), "xmin".to_string()],
                vec!["b".to_string()]
            ])
        );
        assert_eq!(parse(1, &[row("1", "a")]), None);
        assert_eq!(parse(1, &[vec!["0".into()]]), None);
        assert_eq!(parse(2, &[]), Some(vec![vec![], vec![]]));
        assert_ne!(
            key(Read::Named, "a\u{0}", &tables[0]),
            key(Read::Named, "b\u{0}", &tables[0])
        );
        assert_ne!(
            key(Read::Named, "a", &tables[0]),
            key(Read::Insertable, "a", &tables[0])
        );
    }
}
