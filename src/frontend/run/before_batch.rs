//! What an extended batch needs before it is routed: statement texts pgshard writes in a form it
//! can route (SQLAlchemy's ordered INSERT … SELECT … FROM (VALUES …) as plain VALUES, an INSERT
//! that names no columns with its table's, before its keys are reserved), and subqueries or CTEs
//! over sharded tables its Bind needs run first.

use crate::frontend::session::{End, Session};
use crate::router::analyze::Refused;
use crate::router::ordered_values_insert::as_values;
use crate::wire::frontend::{self as fe, Parse};

impl Session {
    /// Rewrites the batch's Parse messages and runs what its Bind needs first. `Ok(true)` when
    /// the batch is answered already (something run first failed).
    pub async fn before_batch(&mut self, sync: bool) -> Result<bool, End> {
        for frame in self.batch.iter_mut().filter(|f| f.tag == fe::PARSE) {
            // Read in place: most texts are not rewritten, and need no decoded copy.
            let Some(query) = fe::parse_texts(&frame.body)
                .ok()
                .and_then(|(_, query)| as_values(query))
            else {
                continue;
            };
            let Ok(parse) = Parse::decode(&frame.body) else {
                continue;
            };
            *frame = Parse { query, ..parse }.encode();
        }
        self.bind_subqueries_first(sync).await
    }

    /// Writes the column list into each Parse of an INSERT into a sharded table that names no
    /// columns (see `run::insert_columns`), before keys are reserved for the batch (a row that
    /// stops short of the key, or `DEFAULT VALUES`, then leaves it to pgshard). `Ok(true)` when
    /// the batch is answered already (the catalog read failed: its error, then ReadyForQuery).
    pub async fn list_batch_insert_columns(&mut self, sync: bool) -> Result<bool, End> {
        let unlisted: Vec<(usize, String)> = self
            .batch
            .iter()
            .enumerate()
            .filter(|(_, f)| f.tag == fe::PARSE)
            .filter_map(|(at, f)| Some((at, fe::parse_texts(&f.body).ok()?.1)))
            .filter(|(_, query)| {
                self.analyze_parsed(query)
                    .iter()
                    .any(|f| matches!(f.refuse, Some(Refused::InsertWithoutColumns { .. })))
            })
            .map(|(at, query)| (at, query.to_string()))
            .collect();
        for (at, query) in unlisted {
            let facts = self.analyze_parsed(&query);
            let listed = match self.list_insert_columns(&query, &facts).await {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(fields) => {
                    self.batch.clear();
                    self.refuse_batch(fields, sync).await?;
                    return Ok(true);
                }
            };
            let Some(frame) = self.batch.get_mut(at) else {
                continue;
            };
            if let Ok(parse) = Parse::decode(&frame.body) {
                *frame = Parse {
                    query: listed,
                    ..parse
                }
                .encode();
            }
        }
        Ok(false)
    }
}
