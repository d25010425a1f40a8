//! What an extended batch needs before it is routed: statement texts pgshard writes in a form it
//! can route (SQLAlchemy's ordered INSERT … SELECT … FROM (VALUES …) as plain VALUES), and
//! subqueries or CTEs over sharded tables its Bind needs run first.

use crate::frontend::session::{End, Session};
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
}
