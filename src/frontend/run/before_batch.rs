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
            let Ok(parse) = Parse::decode(&frame.body) else {
                continue;
            };
            if let Some(query) = as_values(&parse.query) {
                *frame = Parse { query, ..parse }.encode();
            }
        }
        self.bind_subqueries_first(sync).await
    }
}
